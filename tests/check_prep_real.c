/*
 * check_prep_real.c: the dataset readers on the real files in $EMOE_SHARED_DATA,
 * compared with independent reads: MNIST against the raw idx bytes (zlib), CIFAR-100
 * against the raw test.bin records (libarchive), JPEG folders against libjpeg-turbo's
 * own full-size decode.  Exits 77 (skipped) when the shared data is absent.
 */
#include "config.h"
#include "testutil.h"

#include <archive.h>
#include <archive_entry.h>
#include <jpeglib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static const char *data_path(const char *rel)
{
    static char buf[4][1024];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tu_shared_data(), rel);
    return buf[k];
}

static unsigned char *gunzip_file(const char *path, size_t *n)
{
    gzFile g = gzopen(path, "rb");
    ck_assert_ptr_nonnull(g);
    size_t cap = 1 << 20, len = 0;
    unsigned char *p = malloc(cap);
    int r;
    while ((r = gzread(g, p + len, (unsigned)(cap - len))) > 0) {
        len += (size_t)r;
        if (len == cap)
            p = realloc(p, cap *= 2);
    }
    ck_assert_int_eq(r, 0);
    gzclose(g);
    *n = len;
    return p;
}

struct member {
    char *name;
    unsigned char *data;
    size_t size;
};

static int cmp_member(const void *a, const void *b)
{
    return strcmp(((const struct member *)a)->name, ((const struct member *)b)->name);
}

/* Members whose name starts with prefix and ends with suffix (case-insensitive), sorted. */
static struct member *read_members(const char *path, const char *prefix, const char *suffix,
                                   size_t *count)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_all(a);
    archive_read_support_format_all(a);
    ck_assert_int_eq(archive_read_open_filename(a, path, 1 << 16), ARCHIVE_OK);
    struct archive_entry *e;
    size_t n = 0, cap = 1024;
    struct member *m = malloc(cap * sizeof *m);
    while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
        const char *name = archive_entry_pathname(e);
        size_t l = strlen(name), sl = strlen(suffix);
        if (archive_entry_filetype(e) != AE_IFREG || strncmp(name, prefix, strlen(prefix)) ||
            l < sl || strcasecmp(name + l - sl, suffix))
            continue;
        if (n == cap)
            m = realloc(m, (cap *= 2) * sizeof *m);
        size_t sz = (size_t)archive_entry_size(e);
        m[n].name = strdup(name);
        m[n].data = malloc(sz ? sz : 1);
        m[n].size = sz;
        ck_assert_int_eq(archive_read_data(a, m[n].data, sz), (la_ssize_t)sz);
        n++;
    }
    archive_read_free(a);
    qsort(m, n, sizeof *m, cmp_member);
    *count = n;
    return m;
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_members(struct member *m, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(m[i].name);
        free(m[i].data);
    }
    free(m);
}

static unsigned char *ref_decode(const unsigned char *jpg, size_t size, int *w, int *h)
{
    struct jpeg_decompress_struct d;
    struct jpeg_error_mgr e;
    d.err = jpeg_std_error(&e);
    jpeg_create_decompress(&d);
    jpeg_mem_src(&d, jpg, (unsigned long)size);
    jpeg_read_header(&d, TRUE);
    d.out_color_space = JCS_RGB;
    d.dct_method = JDCT_ISLOW;
    jpeg_start_decompress(&d);
    size_t stride = (size_t)d.output_width * 3;
    unsigned char *p = malloc(stride * d.output_height);
    while (d.output_scanline < d.output_height) {
        JSAMPROW row = p + stride * d.output_scanline;
        jpeg_read_scanlines(&d, &row, 1);
    }
    *w = (int)d.output_width;
    *h = (int)d.output_height;
    jpeg_finish_decompress(&d);
    jpeg_destroy_decompress(&d);
    return p;
}

static struct emoe_dataset *prep(const char *src, const struct emoe_prep_options *o,
                                 struct emoe_prep_result *res)
{
    struct emoe_error err = {0};
    struct emoe_dataset *d = NULL;
    int rc = emoe_prep_read(&src, 1, o, &d, res, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    return d;
}

START_TEST(test_mnist_raw_bytes)
{
    const char *splits[2] = {"test", "train"};
    const char *files[2][2] = {{"mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"},
                               {"mnist/train-images-idx3-ubyte.gz",
                                "mnist/train-labels-idx1-ubyte.gz"}};
    for (int s = 0; s < 2; s++) {
        size_t ni, nl;
        unsigned char *img = gunzip_file(data_path(files[s][0]), &ni);
        unsigned char *lab = gunzip_file(data_path(files[s][1]), &nl);
        struct emoe_prep_options o;
        emoe_prep_options_init(&o);
        o.split = splits[s];
        struct emoe_prep_result res;
        struct emoe_dataset *d = prep(data_path("mnist"), &o, &res);
        ck_assert_int_eq(res.format, EMOE_PREP_MNIST);
        size_t n = s ? 60000 : 10000;
        ck_assert_int_eq(d->images->shape[0], (int64_t)n);
        ck_assert_int_eq(d->images->shape[1], 28);
        ck_assert_int_eq(d->images->shape[2], 28);
        ck_assert_int_eq(d->images->shape[3], 1);
        ck_assert_uint_eq(ni, 16 + n * 784);
        ck_assert_mem_eq(d->images->data, img + 16, n * 784);
        for (size_t i = 0; i < n; i++)
            ck_assert_int_eq(((int64_t *)d->labels->data)[i], lab[8 + i]);
        ck_assert_uint_eq(d->nclasses, 10);
        emoe_dataset_free(d);
        free(img);
        free(lab);
    }
}
END_TEST

static char **lines_of(const unsigned char *t, size_t n, size_t *count)
{
    char **v = calloc(n + 1, sizeof *v);
    size_t k = 0, i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && t[j] != '\n')
            j++;
        size_t e = j;
        while (e > i && (t[e - 1] == '\r' || t[e - 1] == ' '))
            e--;
        if (e > i)
            v[k++] = strndup((const char *)t + i, e - i);
        i = j + 1;
    }
    *count = k;
    return v;
}

START_TEST(test_cifar100_raw_records)
{
    const char *tgz = data_path("cifar-100-split-bins/cifar-100-binary.tar.gz");
    size_t nm;
    struct member *m = read_members(tgz, "cifar-100-binary/", "", &nm);
    const struct member *bin = NULL, *fine = NULL, *coarse = NULL;
    for (size_t i = 0; i < nm; i++) {
        if (strstr(m[i].name, "test.bin"))
            bin = &m[i];
        if (strstr(m[i].name, "fine_label_names.txt"))
            fine = &m[i];
        if (strstr(m[i].name, "coarse_label_names.txt"))
            coarse = &m[i];
    }
    ck_assert(bin && fine && coarse);
    ck_assert_uint_eq(bin->size, 10000 * 3074);
    for (int kind = 0; kind < 2; kind++) {
        struct emoe_prep_options o;
        emoe_prep_options_init(&o);
        o.split = "test";
        o.coarse = kind;
        struct emoe_prep_result res;
        struct emoe_dataset *d = prep(tgz, &o, &res);
        ck_assert_int_eq(res.format, EMOE_PREP_CIFAR100);
        ck_assert_int_eq(d->images->shape[0], 10000);
        const unsigned char *im = d->images->data;
        for (size_t r = 0; r < 10000; r++) {
            const unsigned char *rec = bin->data + r * 3074;
            ck_assert_int_eq(((int64_t *)d->labels->data)[r], rec[kind ? 0 : 1]);
            const unsigned char *px = rec + 2, *q = im + r * 3072;
            for (int k = 0; k < 1024; k++)
                for (int c = 0; c < 3; c++)
                    if (q[3 * k + c] != px[1024 * c + k])
                        ck_abort_msg("record %zu pixel %d channel %d differs", r, k, c);
        }
        size_t nl;
        const struct member *names = kind ? coarse : fine;
        char **l = lines_of(names->data, names->size, &nl);
        ck_assert_uint_eq(d->nclasses, kind ? 20 : 100);
        ck_assert_uint_eq(nl, d->nclasses);
        for (size_t i = 0; i < nl; i++) {
            ck_assert_str_eq(d->classes[i], l[i]);
            free(l[i]);
        }
        free(l);
        emoe_dataset_free(d);
    }
    free_members(m, nm);
}
END_TEST

START_TEST(test_cifar10_jpeg_zip)
{
    const char *zip = data_path("cifar-10-jpg/cifar-10-jpg.zip");
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    o.size = 32;
    o.subdir = "cifar-10-jpg/test";
    struct emoe_prep_result res;
    struct emoe_dataset *d = prep(zip, &o, &res);
    ck_assert_int_eq(res.format, EMOE_PREP_IMAGEFOLDER);
    ck_assert_uint_eq(res.skipped, 0);
    ck_assert_int_eq(d->images->shape[0], 10000);
    /* independent: every test member decoded by libjpeg at full size, in path order */
    size_t nm;
    struct member *m = read_members(zip, "cifar-10-jpg/test/", ".jpg", &nm);
    ck_assert_uint_eq(nm, 10000);
    size_t nmeta;
    struct member *meta = read_members(zip, "cifar-10-jpg/batches.meta.txt", "", &nmeta);
    ck_assert_uint_eq(nmeta, 1);
    size_t nl;
    char **names = lines_of(meta->data, meta->size, &nl);
    ck_assert_uint_eq(nl, 10);
    ck_assert_uint_eq(d->nclasses, 10);
    for (size_t i = 0; i < nl; i++)
        ck_assert_str_eq(d->classes[i], names[i]);
    for (size_t i = 0; i < nm; i++) {
        int w, h;
        unsigned char *px = ref_decode(m[i].data, m[i].size, &w, &h);
        ck_assert_int_eq(w, 32);
        ck_assert_int_eq(h, 32);
        if (memcmp(px, (unsigned char *)d->images->data + i * 3072, 3072))
            ck_abort_msg("%s differs", m[i].name);
        free(px);
        /* label: the class folder's index in batches.meta.txt */
        const char *cls = m[i].name + strlen("cifar-10-jpg/test/");
        int64_t want = -1;
        for (size_t k = 0; k < nl; k++)
            if (!strncmp(cls, names[k], strlen(names[k])) && cls[strlen(names[k])] == '/')
                want = (int64_t)k;
        ck_assert_int_eq(((int64_t *)d->labels->data)[i], want);
    }
    for (size_t i = 0; i < nl; i++)
        free(names[i]);
    free(names);
    free_members(meta, nmeta);
    free_members(m, nm);
    emoe_dataset_free(d);
}
END_TEST

START_TEST(test_imagenet_sample_tar)
{
    const char *tar = data_path("imagenet-sample-images-subset/imagenet-sample.tar");
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    o.size = 224;
    struct emoe_prep_result res;
    struct emoe_dataset *d = prep(tar, &o, &res);
    ck_assert_int_eq(res.format, EMOE_PREP_IMAGEFOLDER);
    ck_assert_uint_eq(res.skipped, 0);
    ck_assert_int_eq(d->images->shape[0], 200);
    ck_assert_int_eq(d->images->shape[1], 224);
    /* class names: the first field of classes.txt, line i = label i */
    size_t n;
    unsigned char *ct = tu_read_file(data_path("imagenet-sample-images-subset/classes.txt"), &n);
    size_t nl;
    char **lines = lines_of(ct, n, &nl);
    ck_assert_uint_eq(nl, 200);
    ck_assert_uint_eq(d->nclasses, 200);
    for (size_t i = 0; i < nl; i++) {
        ck_assert_int_eq(strncmp(lines[i], d->classes[i], 9), 0);
        ck_assert_int_eq(((int64_t *)d->labels->data)[i], (int64_t)i);
        free(lines[i]);
    }
    free(lines);
    free(ct);
    /* pixels: libjpeg's full-size decode, resized by the same resize; exact when no DCT
     * scaling is used (emoe decodes at the smallest M/8, M in {1, 2, 4, 8}, keeping the
     * shorter side s >= 224: full size when ceil(4s/8) < 224), close otherwise */
    size_t nm;
    struct member *m = read_members(tar, "", ".JPEG", &nm);
    ck_assert_uint_eq(nm, 200);
    struct emoe_error err = {0};
    unsigned char *tile = malloc(224 * 224 * 3);
    int exact = 0, nscaled = 0;
    double scaled_sum = 0;
    for (size_t i = 0; i < nm; i++) {
        int w, h;
        unsigned char *px = ref_decode(m[i].data, m[i].size, &w, &h);
        ck_assert_int_eq(emoe_image_resize_crop(px, w, h, 3, 224, tile, &err), EMOE_OK);
        const unsigned char *got = (unsigned char *)d->images->data + i * 224 * 224 * 3;
        int s = w < h ? w : h;
        if ((s * 4 + 7) / 8 < 224) {
            if (memcmp(tile, got, 224 * 224 * 3))
                ck_abort_msg("%s differs from libjpeg + resize", m[i].name);
            exact++;
        } else {
            double sum = 0;
            for (int k = 0; k < 224 * 224 * 3; k++)
                sum += abs(tile[k] - got[k]);
            if (getenv("EMOE_TEST_VERBOSE"))
                fprintf(stderr, "%s %dx%d: mean difference %.2f\n", m[i].name, w, h,
                        sum / (224 * 224 * 3));
            /* DCT scaling drops the frequencies above the new Nyquist where the area
             * filter only damps them: dense textures differ most (about 10 on one photo) */
            ck_assert_msg(sum / (224 * 224 * 3) < 12.0, "%s: mean difference %.2f", m[i].name,
                          sum / (224 * 224 * 3));
            scaled_sum += sum / (224 * 224 * 3);
            nscaled++;
        }
        free(px);
    }
    ck_assert_int_gt(exact, 0);
    ck_assert_int_gt(nscaled, 0);
    if (getenv("EMOE_TEST_VERBOSE"))
        fprintf(stderr, "%d exact, %d DCT-scaled with mean difference %.2f\n", exact, nscaled,
                scaled_sum / nscaled);
    ck_assert_msg(scaled_sum / nscaled < 3.0, "DCT-scaled photos: mean difference %.2f",
                  scaled_sum / nscaled);
    free(tile);
    free_members(m, nm);
    emoe_dataset_free(d);
}
END_TEST

START_TEST(test_tinyimagenet_zip)
{
    const char *zip = data_path("tiny-imagenet-200-subset/tiny-imagenet-200.zip");
    size_t nt;
    struct member *txt = read_members(zip, "tiny-imagenet-200/w", ".txt", &nt);
    ck_assert_uint_eq(nt, 2); /* wnids.txt, words.txt */
    size_t nw;
    char **wn = lines_of(txt[0].data, txt[0].size, &nw);
    ck_assert_uint_eq(nw, 200);
    qsort(wn, nw, sizeof *wn, cmp_cstr);
    for (int split = 0; split < 2; split++) {
        struct emoe_prep_options o;
        emoe_prep_options_init(&o);
        o.size = 64;
        o.split = split ? "val" : "train";
        struct emoe_prep_result res;
        struct emoe_dataset *d = prep(zip, &o, &res);
        ck_assert_int_eq(res.format, EMOE_PREP_TINYIMAGENET);
        ck_assert_uint_eq(res.skipped, 0);
        ck_assert_int_eq(d->images->shape[0], split ? 10000 : 5000);
        ck_assert_uint_eq(d->nclasses, 200);
        /* names: words.txt's text for each sorted wnid */
        for (size_t k = 0; k < nw; k++) {
            char key[16];
            snprintf(key, sizeof key, "%s\t", wn[k]);
            const char *line = strstr((const char *)txt[1].data, key);
            ck_assert_ptr_nonnull(line);
            const char *nm = line + strlen(key);
            size_t len = strcspn(nm, "\r\n");
            ck_assert_uint_eq(strlen(d->classes[k]), len);
            ck_assert_int_eq(strncmp(d->classes[k], nm, len), 0);
        }
        /* pixels and labels against the members, in path order */
        size_t nm;
        struct member *m = read_members(zip, split ? "tiny-imagenet-200/val/images/"
                                                   : "tiny-imagenet-200/train/", ".JPEG", &nm);
        ck_assert_uint_eq(nm, (size_t)d->images->shape[0]);
        size_t na = 0;
        struct member *ann = split ? read_members(zip, "tiny-imagenet-200/val/val_annotations",
                                                  ".txt", &na) : NULL;
        for (size_t i = 0; i < nm; i++) {
            int w, h;
            unsigned char *px = ref_decode(m[i].data, m[i].size, &w, &h);
            ck_assert_int_eq(w, 64);
            if (memcmp(px, (unsigned char *)d->images->data + i * 64 * 64 * 3, 64 * 64 * 3))
                ck_abort_msg("%s differs", m[i].name);
            free(px);
            char wnid[10] = "";
            if (split) {
                char key[64];
                snprintf(key, sizeof key, "%s\t", strrchr(m[i].name, '/') + 1);
                const char *line = strstr((const char *)ann[0].data, key);
                ck_assert_ptr_nonnull(line);
                memcpy(wnid, line + strlen(key), 9);
            } else {
                memcpy(wnid, m[i].name + strlen("tiny-imagenet-200/train/"), 9);
            }
            const char *kp = wnid;
            char **hit = bsearch(&kp, wn, nw, sizeof *wn, cmp_cstr);
            ck_assert_ptr_nonnull(hit);
            ck_assert_int_eq(((int64_t *)d->labels->data)[i], hit - wn);
        }
        if (ann)
            free_members(ann, na);
        free_members(m, nm);
        emoe_dataset_free(d);
    }
    for (size_t k = 0; k < nw; k++)
        free(wn[k]);
    free(wn);
    free_members(txt, nt);
}
END_TEST

/* Independent NIfTI-1 read (little-endian, datatype 2 or 4) of a .nii.gz. */
static double *nifti_raw(const char *path, int *dims)
{
    size_t n;
    unsigned char *b = gunzip_file(path, &n);
    int32_t hs;
    memcpy(&hs, b, 4);
    ck_assert_int_eq(hs, 348);
    int16_t d[8], dt;
    memcpy(d, b + 40, 16);
    memcpy(&dt, b + 70, 2);
    float off, slope, inter;
    memcpy(&off, b + 108, 4);
    memcpy(&slope, b + 112, 4);
    memcpy(&inter, b + 116, 4);
    size_t nv = (size_t)d[1] * d[2] * d[3];
    double *v = malloc(nv * sizeof *v);
    for (size_t i = 0; i < nv; i++) {
        const unsigned char *p = b + (size_t)off + i * (dt == 2 ? 1 : 2);
        int16_t s16;
        memcpy(&s16, p, 2);
        v[i] = dt == 2 ? p[0] : s16;
        if (slope != 0)
            v[i] = v[i] * slope + inter;
    }
    for (int i = 0; i < 3; i++)
        dims[i] = d[i + 1];
    free(b);
    return v;
}

static void check_native_volume(const float *got, double *v, size_t n)
{
    double s = 0, q = 0;
    for (size_t i = 0; i < n; i++)
        s += v[i];
    double m = s / (double)n;
    for (size_t i = 0; i < n; i++)
        q += (v[i] - m) * (v[i] - m);
    double sd = sqrt(q / (double)n);
    for (size_t i = 0; i < n; i++)
        if (fabs(got[i] - (v[i] - m) / sd) > 1e-4)
            ck_abort_msg("voxel %zu: %g vs %g", i, (double)got[i], (v[i] - m) / sd);
}

START_TEST(test_nifti_ixi_and_mni)
{
    char dir[1024], csv[1024];
    snprintf(dir, sizeof dir, "%s", data_path("ixi-t1-brainage-sample"));
    snprintf(csv, sizeof csv, "%s", data_path("ixi-t1-brainage-sample/IXI_demog_n10.csv"));
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    o.targets = csv;
    o.id_column = "MRID";
    o.target_column = "Age";
    struct emoe_prep_result res;
    struct emoe_dataset *d = prep(dir, &o, &res);
    ck_assert_int_eq(res.format, EMOE_PREP_NIFTI);
    ck_assert_int_eq(d->images->shape[0], 10);
    ck_assert_int_eq(d->images->shape[1], 90);  /* z */
    ck_assert_int_eq(d->images->shape[2], 120); /* y */
    ck_assert_int_eq(d->images->shape[3], 120); /* x */
    /* ages from the CSV, in file-name order (the CSV is in the same order) */
    static const float ages[10] = {38.78f, 46.71f, 34.24f, 24.28f, 24.76f,
                                   24.34f, 23.35f, 50.65f, 31.85f, 25.74f};
    static const char *const ids[10] = {"IXI012-HH-1211", "IXI013-HH-1212", "IXI014-HH-1236",
                                        "IXI015-HH-1258", "IXI033-HH-1259", "IXI034-HH-1260",
                                        "IXI039-HH-1261", "IXI048-HH-1326", "IXI049-HH-1358",
                                        "IXI051-HH-1328"};
    for (int i = 0; i < 10; i++) {
        ck_assert(((float *)d->labels->data)[i] == ages[i]);
        char rel[256];
        snprintf(rel, sizeof rel, "ixi-t1-brainage-sample/%s-T1_ds.nii.gz", ids[i]);
        int dims[3];
        double *v = nifti_raw(data_path(rel), dims);
        ck_assert_int_eq(dims[0], 120);
        ck_assert_int_eq(dims[2], 90);
        check_native_volume((const float *)d->images->data + (size_t)i * 120 * 120 * 90, v,
                            (size_t)120 * 120 * 90);
        free(v);
    }
    emoe_dataset_free(d);
    o.size = 32;
    d = prep(dir, &o, &res);
    ck_assert_int_eq(d->images->shape[1], 32);
    ck_assert_int_eq(d->images->shape[3], 32);
    emoe_dataset_free(d);
    /* MNI152: int16, no CSV */
    emoe_prep_options_init(&o);
    const char *mni = data_path("mni152-template/MNI152_T1_2mm_brain.nii.gz");
    d = prep(mni, &o, &res);
    ck_assert_int_eq(res.format, EMOE_PREP_NIFTI);
    ck_assert_int_eq(d->images->shape[1], 91);
    ck_assert_int_eq(d->images->shape[2], 109);
    ck_assert_int_eq(d->images->shape[3], 91);
    int dims[3];
    double *v = nifti_raw(mni, dims);
    check_native_volume(d->images->data, v, (size_t)91 * 109 * 91);
    free(v);
    emoe_dataset_free(d);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("prep_real");
    TCase *tc = tcase_create("real");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_mnist_raw_bytes);
    tcase_add_test(tc, test_cifar100_raw_records);
    tcase_add_test(tc, test_cifar10_jpeg_zip);
    tcase_add_test(tc, test_imagenet_sample_tar);
    tcase_add_test(tc, test_tinyimagenet_zip);
    tcase_add_test(tc, test_nifti_ixi_and_mni);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (!tu_shared_data()) {
        fprintf(stderr, "check_prep_real: EMOE_SHARED_DATA absent, skipped\n");
        return 77;
    }
    return tu_run(suite());
}
