/*
 * check_prep.c: unit tests of the dataset readers (lib/prep_*.c, lib/dataset.c) on
 * small files the tests build themselves: idx files (plain and gzip), CIFAR batches
 * (.bin and tar.gz), and image folders as a folder, .tar, .tar.gz, .zip and a tar of
 * per-class tars; corrupt JPEGs, truncated archives and bad layouts.
 */
#define _GNU_SOURCE
#include "config.h"
#include "testutil.h"

#include <archive.h>
#include <archive_entry.h>
#include <jpeglib.h>
#include <locale.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <zlib.h>

/* ------------------------------------------------------------- helpers */

struct blob {
    const char *name;
    const void *data;
    size_t size;
};

/* write_archive under a UTF-8 locale: names are stored as UTF-8 (a zip flags them so,
 * as most zip writers do; a pax tar gives them in 'path' records). */
static int utf8_names;

/* Write an archive of blobs; format "tar", "tgz", "zip" (deflated), "zipstore" (stored;
 * libarchive writes both with data descriptors after the data). */
static void write_archive(const char *path, const char *fmt, const struct blob *b, size_t n)
{
    locale_t u8 = utf8_names ? newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0) : (locale_t)0;
    locale_t old = u8 ? uselocale(u8) : (locale_t)0;
    ck_assert(!utf8_names || u8);
    struct archive *a = archive_write_new();
    if (!strcmp(fmt, "zip") || !strcmp(fmt, "zipstore")) {
        archive_write_set_format_zip(a);
        if (!strcmp(fmt, "zipstore"))
            ck_assert_int_eq(archive_write_set_format_option(a, "zip", "compression", "store"),
                             ARCHIVE_OK);
        if (utf8_names)
            ck_assert_int_eq(archive_write_set_format_option(a, "zip", "hdrcharset", "UTF-8"),
                             ARCHIVE_OK);
    } else {
        archive_write_set_format_pax_restricted(a);
        if (!strcmp(fmt, "tgz"))
            archive_write_add_filter_gzip(a);
    }
    ck_assert_int_eq(archive_write_open_filename(a, path), ARCHIVE_OK);
    for (size_t i = 0; i < n; i++) {
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, b[i].name);
        archive_entry_set_size(e, (la_int64_t)b[i].size);
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_perm(e, 0644);
        ck_assert_int_eq(archive_write_header(a, e), ARCHIVE_OK);
        ck_assert_int_eq(archive_write_data(a, b[i].data, b[i].size), (la_ssize_t)b[i].size);
        archive_entry_free(e);
    }
    ck_assert_int_eq(archive_write_close(a), ARCHIVE_OK);
    archive_write_free(a);
    if (u8) {
        uselocale(old);
        freelocale(u8);
    }
}

static void write_gz(const char *path, const void *data, size_t n)
{
    gzFile g = gzopen(path, "wb");
    ck_assert_ptr_nonnull(g);
    ck_assert_int_eq(gzwrite(g, data, (unsigned)n), (int)n);
    ck_assert_int_eq(gzclose(g), Z_OK);
}

static void truncate_file(const char *path, size_t keep)
{
    size_t n;
    unsigned char *d = tu_read_file(path, &n);
    ck_assert_uint_lt(keep, n);
    tu_write_file(path, d, keep);
    free(d);
}

static unsigned char *encode_jpeg(const unsigned char *px, int w, int h, unsigned long *size)
{
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    unsigned char *buf = NULL;
    *size = 0;
    jpeg_mem_dest(&c, &buf, size);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 90, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(px + (size_t)c.next_scanline * w * 3);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    return buf;
}

/* A w x h JPEG whose colour encodes (cls, k). */
static unsigned char *make_jpeg(int cls, int k, int w, int h, unsigned long *size)
{
    unsigned char *px = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            unsigned char *p = px + ((size_t)y * w + x) * 3;
            p[0] = (unsigned char)(40 * cls + 20);
            p[1] = (unsigned char)(30 * k + 10);
            p[2] = (unsigned char)(x * 4 + y);
        }
    unsigned char *j = encode_jpeg(px, w, h, size);
    free(px);
    return j;
}

static void quiet_warn(void *ctx, const char *msg)
{
    int *n = ctx;
    (*n)++;
    ck_assert_ptr_nonnull(strstr(msg, "corrupt JPEG"));
}

static struct emoe_dataset *prep1(const char *src, struct emoe_prep_options *o,
                                  struct emoe_prep_result *res)
{
    struct emoe_error err = {0};
    struct emoe_dataset *d = NULL;
    int rc = emoe_prep_read(&src, 1, o, &d, res, &err);
    ck_assert_msg(rc == EMOE_OK, "%s: %s", src, err.msg);
    return d;
}

static int64_t label_at(const struct emoe_dataset *d, size_t i)
{
    return ((const int64_t *)d->labels->data)[i];
}

/* ------------------------------------------------------------- MNIST */

static void make_idx(unsigned char **img, size_t *ni, unsigned char **lab, size_t *nl, int n,
                     int r, int c)
{
    *ni = 16 + (size_t)n * r * c;
    *img = malloc(*ni);
    unsigned char hdr[16] = {0, 0, 8, 3, 0, 0, 0, (unsigned char)n, 0, 0, 0, (unsigned char)r,
                             0, 0, 0, (unsigned char)c};
    memcpy(*img, hdr, 16);
    for (size_t i = 16; i < *ni; i++)
        (*img)[i] = (unsigned char)(i * 7);
    *nl = 8 + (size_t)n;
    *lab = malloc(*nl);
    unsigned char lh[8] = {0, 0, 8, 1, 0, 0, 0, (unsigned char)n};
    memcpy(*lab, lh, 8);
    for (int i = 0; i < n; i++)
        (*lab)[8 + i] = (unsigned char)((i * 3) % 10);
}

START_TEST(test_mnist_plain_and_gz)
{
    unsigned char *img, *lab;
    size_t ni, nl;
    make_idx(&img, &ni, &lab, &nl, 12, 5, 5);
    const char *ip = tu_tmppath("train-images-idx3-ubyte");
    const char *lp = tu_tmppath("train-labels-idx1-ubyte");
    tu_write_file(ip, img, ni);
    tu_write_file(lp, lab, nl);
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    struct emoe_prep_result res;
    /* the images file alone: the labels file next to it is found, format detected */
    struct emoe_dataset *d = prep1(ip, &o, &res);
    ck_assert_int_eq(res.format, EMOE_PREP_MNIST);
    ck_assert_int_eq(d->images->ndim, 4);
    ck_assert_int_eq(d->images->shape[0], 12);
    ck_assert_int_eq(d->images->shape[1], 5);
    ck_assert_int_eq(d->images->shape[3], 1);
    ck_assert_mem_eq(d->images->data, img + 16, ni - 16);
    for (int i = 0; i < 12; i++)
        ck_assert_int_eq(label_at(d, i), lab[8 + i]);
    ck_assert_uint_eq(d->nclasses, 10);
    ck_assert_str_eq(d->classes[3], "3");
    emoe_dataset_free(d);
    /* gzip'd, both files given (labels first) */
    const char *igz = tu_tmppath("i.gz"), *lgz = tu_tmppath("l.gz");
    write_gz(igz, img, ni);
    write_gz(lgz, lab, nl);
    const char *both[2] = {lgz, igz};
    struct emoe_error err = {0};
    ck_assert_int_eq(emoe_prep_read(both, 2, &o, &d, &res, &err), EMOE_OK);
    ck_assert_mem_eq(d->images->data, img + 16, ni - 16);
    ck_assert_int_eq(label_at(d, 11), lab[8 + 11]);
    emoe_dataset_free(d);
    /* resized to 10 with 3 channels: shapes, and a constant image stays constant */
    o.size = 10;
    o.channels = 3;
    d = prep1(ip, &o, &res);
    ck_assert_int_eq(d->images->shape[1], 10);
    ck_assert_int_eq(d->images->shape[3], 3);
    unsigned char *p = d->images->data;
    ck_assert_uint_eq(p[0], p[1]);
    ck_assert_uint_eq(p[1], p[2]);
    emoe_dataset_free(d);
    free(img);
    free(lab);
}
END_TEST

/* The label count in an idx header allocates nothing before the labels arrive (was: 4 GB
 * from a 28-byte file; "out of memory" without a file name under a limit) */
START_TEST(test_mnist_header_counts_bounded)
{
    /* at most 1 GiB more address space than now; restored at the end */
    struct rlimit old, lim;
    ck_assert_int_eq(getrlimit(RLIMIT_AS, &old), 0);
    unsigned long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fscanf(f, "%lu", &pages), 1);
    fclose(f);
    lim = old;
    lim.rlim_cur = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + ((rlim_t)1 << 30);
    if (old.rlim_cur != RLIM_INFINITY && old.rlim_cur < lim.rlim_cur)
        lim.rlim_cur = old.rlim_cur;
    ck_assert_int_eq(setrlimit(RLIMIT_AS, &lim), 0);
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    o.format = EMOE_PREP_MNIST;
    struct emoe_error err = {0};
    struct emoe_dataset *d = NULL;
    unsigned char img[16 + 20] = {0, 0, 8, 3, 0xee, 0x6b, 0x28, 0x00, 0, 0, 0, 28, 0, 0, 0, 28};
    unsigned char lab[8 + 20] = {0, 0, 8, 1, 0xee, 0x6b, 0x28, 0x00}; /* 4e9 of each */
    const char *ip = tu_tmppath("h-images-idx3-ubyte"), *lp = tu_tmppath("h-labels-idx1-ubyte");
    tu_write_file(ip, img, sizeof img);
    tu_write_file(lp, lab, sizeof lab);
    int rc = emoe_prep_read(&ip, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT,
                    "h-labels-idx1-ubyte: truncated labels (20 of 4000000000 bytes)");
    ck_assert_ptr_null(d);
    ck_assert_int_eq(setrlimit(RLIMIT_AS, &old), 0);
}
END_TEST

START_TEST(test_mnist_errors)
{
    unsigned char *img, *lab;
    size_t ni, nl;
    make_idx(&img, &ni, &lab, &nl, 6, 4, 4);
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    o.format = EMOE_PREP_MNIST;
    struct emoe_error err = {0};
    struct emoe_dataset *d = (void *)1;
    /* no labels file */
    const char *ip = tu_tmppath("alone-images-idx3-ubyte");
    tu_write_file(ip, img, ni);
    int rc = emoe_prep_read(&ip, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_ENOTFOUND, "missing label file");
    ck_assert_ptr_null(d);
    /* truncated images */
    const char *tp = tu_tmppath("t-images-idx3-ubyte"), *tl = tu_tmppath("t-labels-idx1-ubyte");
    tu_write_file(tp, img, ni - 5);
    tu_write_file(tl, lab, nl);
    rc = emoe_prep_read(&tp, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "t-images-idx3-ubyte: truncated images");
    /* label count differs */
    const char *mp = tu_tmppath("m-images-idx3-ubyte"), *ml = tu_tmppath("m-labels-idx1-ubyte");
    tu_write_file(mp, img, ni);
    lab[7] = 5;
    tu_write_file(ml, lab, nl - 1);
    rc = emoe_prep_read(&mp, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "5 labels for 6 images");
    /* not idx */
    const char *bp = tu_tmppath("bad");
    tu_write_file(bp, "hello there, not idx", 20);
    rc = emoe_prep_read(&bp, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "bad: not an idx1 or idx3");
    /* auto detection of something unknown */
    o.format = EMOE_PREP_AUTO;
    rc = emoe_prep_read(&bp, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "bad: unknown format");
    free(img);
    free(lab);
}
END_TEST

/* ------------------------------------------------------------- CIFAR */

/* n records; record r of batch b: label (b * 7 + r) % 10, pixels from (b, r). */
static unsigned char *cifar_records(int b, int n, int c100, size_t *size)
{
    size_t rec = c100 ? 3074 : 3073;
    *size = rec * (size_t)n;
    unsigned char *p = malloc(*size);
    for (int r = 0; r < n; r++) {
        unsigned char *q = p + rec * (size_t)r;
        if (c100) {
            q[0] = (unsigned char)((b + r) % 20);
            q[1] = (unsigned char)((b * 13 + r * 7) % 100);
        } else {
            q[0] = (unsigned char)((b * 7 + r) % 10);
        }
        for (int i = 0; i < 3072; i++)
            q[rec - 3072 + i] = (unsigned char)(i * 3 + r * 11 + b * 17);
    }
    return p;
}

/* Check record r of buf (CHW) against image i of d (HWC). */
static void check_cifar_image(const struct emoe_dataset *d, size_t i, const unsigned char *rec,
                              int c100)
{
    const unsigned char *px = rec + (c100 ? 2 : 1);
    const unsigned char *im = (const unsigned char *)d->images->data + i * 3072;
    for (int k = 0; k < 1024; k++)
        for (int c = 0; c < 3; c++)
            ck_assert_uint_eq(im[3 * k + c], px[1024 * c + k]);
}

START_TEST(test_cifar10_archive_and_bins)
{
    size_t n1, n2, nt;
    unsigned char *b1 = cifar_records(1, 5, 0, &n1), *b2 = cifar_records(2, 4, 0, &n2);
    unsigned char *bt = cifar_records(9, 3, 0, &nt);
    const char *meta = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";
    /* archive order: batch 2 before batch 1, names after the batches */
    struct blob bl[] = {
        {"cifar-10-batches-bin/data_batch_2.bin", b2, n2},
        {"cifar-10-batches-bin/test_batch.bin", bt, nt},
        {"cifar-10-batches-bin/data_batch_1.bin", b1, n1},
        {"cifar-10-batches-bin/batches.meta.txt", meta, strlen(meta)},
    };
    const char *tgz = tu_tmppath("cifar-10-binary.tar.gz");
    write_archive(tgz, "tgz", bl, 4);
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    struct emoe_prep_result res;
    struct emoe_dataset *d = prep1(tgz, &o, &res);
    ck_assert_int_eq(res.format, EMOE_PREP_CIFAR10);
    ck_assert_int_eq(d->images->shape[0], 9);
    ck_assert_int_eq(d->images->shape[1], 32);
    /* order: batch 1 records then batch 2 (not archive order) */
    for (int r = 0; r < 5; r++) {
        ck_assert_int_eq(label_at(d, (size_t)r), b1[3073 * r]);
        check_cifar_image(d, (size_t)r, b1 + 3073 * r, 0);
    }
    for (int r = 0; r < 4; r++) {
        ck_assert_int_eq(label_at(d, 5 + (size_t)r), b2[3073 * r]);
        check_cifar_image(d, 5 + (size_t)r, b2 + 3073 * r, 0);
    }
    ck_assert_uint_eq(d->nclasses, 10);
    ck_assert_str_eq(d->classes[0], "airplane");
    ck_assert_str_eq(d->classes[9], "truck");
    emoe_dataset_free(d);
    /* test split */
    o.split = "test";
    d = prep1(tgz, &o, &res);
    ck_assert_int_eq(d->images->shape[0], 3);
    check_cifar_image(d, 2, bt + 3073 * 2, 0);
    emoe_dataset_free(d);
    /* an extracted .bin with batches.meta.txt next to it */
    char dir[512];
    snprintf(dir, sizeof dir, "%s", tu_tmppath("c10"));
    mkdir(dir, 0755);
    char bin[600], mt[600];
    snprintf(bin, sizeof bin, "%s/data_batch_1.bin", dir);
    snprintf(mt, sizeof mt, "%s/batches.meta.txt", dir);
    tu_write_file(bin, b1, n1);
    tu_write_file(mt, meta, strlen(meta));
    o.split = NULL;
    o.format = EMOE_PREP_CIFAR10;
    const char *bp = bin;
    d = prep1(bp, &o, &res);
    ck_assert_int_eq(d->images->shape[0], 5);
    check_cifar_image(d, 4, b1 + 3073 * 4, 0);
    ck_assert_str_eq(d->classes[1], "automobile");
    emoe_dataset_free(d);
    /* gray and 16x16 */
    o.channels = 1;
    o.size = 16;
    d = prep1(bp, &o, &res);
    ck_assert_int_eq(d->images->shape[1], 16);
    ck_assert_int_eq(d->images->shape[3], 1);
    emoe_dataset_free(d);
    free(b1);
    free(b2);
    free(bt);
}
END_TEST

START_TEST(test_cifar10_store_grows)
{
    /* 2,500 images (7.7 MB) outgrow the store's first mappings (2 MiB, then 4 and 8:
     * grown in place or moved to an aligned range); every image survives */
    enum { N = 2500 };
    size_t n;
    unsigned char *b = cifar_records(1, N, 0, &n);
    const char *meta = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n";
    tu_write_file(tu_tmppath("batches.meta.txt"), meta, strlen(meta));
    const char *bin = tu_tmppath("data_batch_1.bin");
    tu_write_file(bin, b, n);
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    o.format = EMOE_PREP_CIFAR10;
    struct emoe_prep_result res;
    struct emoe_dataset *d = prep1(bin, &o, &res);
    ck_assert_int_eq(d->images->shape[0], N);
    int bad = 0; /* counted, then asserted once (a Check assertion per pixel is slow) */
    unsigned char want[3072];
    for (int r = 0; r < N; r++) {
        const unsigned char *rec = b + 3073 * (size_t)r;
        for (int k = 0; k < 1024; k++)
            for (int c = 0; c < 3; c++)
                want[3 * k + c] = rec[1 + 1024 * c + k];
        bad += label_at(d, (size_t)r) != rec[0] ||
               memcmp((const unsigned char *)d->images->data + (size_t)r * 3072, want, 3072);
    }
    ck_assert_int_eq(bad, 0);
    emoe_dataset_free(d);
    free(b);
}
END_TEST

START_TEST(test_cifar100_fine_coarse)
{
    size_t n;
    unsigned char *t = cifar_records(3, 6, 1, &n);
    char fine[2000] = "", coarse[400] = "";
    for (int i = 0; i < 100; i++)
        snprintf(fine + strlen(fine), sizeof fine - strlen(fine), "fine%d\n", i);
    for (int i = 0; i < 20; i++)
        snprintf(coarse + strlen(coarse), sizeof coarse - strlen(coarse), "coarse%d\n", i);
    struct blob bl[] = {
        {"cifar-100-binary/coarse_label_names.txt", coarse, strlen(coarse)},
        {"cifar-100-binary/fine_label_names.txt", fine, strlen(fine)},
        {"cifar-100-binary/test.bin", t, n},
    };
    const char *tgz = tu_tmppath("cifar-100-binary.tar.gz");
    write_archive(tgz, "tgz", bl, 3);
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    o.split = "test";
    struct emoe_prep_result res;
    struct emoe_dataset *d = prep1(tgz, &o, &res);
    ck_assert_int_eq(res.format, EMOE_PREP_CIFAR100);
    ck_assert_int_eq(d->images->shape[0], 6);
    for (int r = 0; r < 6; r++) {
        ck_assert_int_eq(label_at(d, (size_t)r), t[3074 * r + 1]);
        check_cifar_image(d, (size_t)r, t + 3074 * r, 1);
    }
    ck_assert_uint_eq(d->nclasses, 100);
    ck_assert_str_eq(d->classes[42], "fine42");
    emoe_dataset_free(d);
    o.coarse = 1;
    d = prep1(tgz, &o, &res);
    for (int r = 0; r < 6; r++)
        ck_assert_int_eq(label_at(d, (size_t)r), t[3074 * r]);
    ck_assert_uint_eq(d->nclasses, 20);
    ck_assert_str_eq(d->classes[19], "coarse19");
    emoe_dataset_free(d);
    /* train split absent */
    struct emoe_error err = {0};
    o.split = NULL;
    int rc = emoe_prep_read(&tgz, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_ENOTFOUND, "no 'train.bin'");
    free(t);
}
END_TEST

START_TEST(test_cifar_errors)
{
    size_t n;
    unsigned char *t = cifar_records(1, 40, 0, &n);
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    struct emoe_error err = {0};
    struct emoe_dataset *d = NULL;
    /* truncated archive */
    struct blob bl[] = {{"data_batch_1.bin", t, n}};
    const char *tgz = tu_tmppath("trunc.tar.gz");
    write_archive(tgz, "tgz", bl, 1);
    size_t full;
    free(tu_read_file(tgz, &full));
    truncate_file(tgz, full / 2);
    o.format = EMOE_PREP_CIFAR10;
    int rc = emoe_prep_read(&tgz, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "trunc.tar.gz: truncated or corrupt archive");
    ck_assert_ptr_null(d);
    /* a .bin with a partial record */
    const char *bin = tu_tmppath("data_batch_9.bin");
    tu_write_file(bin, t, 3073 * 2 + 100);
    rc = emoe_prep_read(&bin, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "data_batch_9.bin: truncated record 2");
    /* a label out of range */
    t[0] = 12;
    tu_write_file(bin, t, 3073);
    rc = emoe_prep_read(&bin, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "label 12 is not below 10");
    free(t);
}
END_TEST

/* -------------------------------------------------------- image folders */

#define NCLS 3
#define PER 4
static const char *const cls_names[NCLS] = {"zebra", "ant", "mouse"};

struct jset {
    struct blob b[NCLS * PER + 4];
    char names[NCLS * PER + 4][128];
    unsigned char *data[NCLS * PER + 4];
    size_t n;
};

/* JPEGs under prefix/<class>/img<k>.jpg, 40x30 each; listed in reverse name order */
static void make_jset(struct jset *s, const char *prefix, int w, int h)
{
    s->n = 0;
    for (int c = NCLS - 1; c >= 0; c--)
        for (int k = PER - 1; k >= 0; k--) {
            unsigned long sz;
            size_t i = s->n++;
            s->data[i] = make_jpeg(c, k, w, h, &sz);
            snprintf(s->names[i], sizeof s->names[i], "%s%s/img%d.jpg", prefix, cls_names[c], k);
            s->b[i].name = s->names[i];
            s->b[i].data = s->data[i];
            s->b[i].size = sz;
        }
}

static void free_jset(struct jset *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->data[i]);
}

/* Expected: classes sorted (ant, mouse, zebra), images sorted by path within. */
static void check_folder_dataset(const struct emoe_dataset *d, int side)
{
    ck_assert_int_eq(d->images->shape[0], NCLS * PER);
    ck_assert_int_eq(d->images->shape[1], side);
    ck_assert_uint_eq(d->nclasses, 3);
    ck_assert_str_eq(d->classes[0], "ant");
    ck_assert_str_eq(d->classes[1], "mouse");
    ck_assert_str_eq(d->classes[2], "zebra");
    const int orig[3] = {1, 2, 0}; /* index in cls_names of ant, mouse, zebra */
    for (int l = 0; l < 3; l++)
        for (int k = 0; k < PER; k++) {
            size_t i = (size_t)(l * PER + k);
            ck_assert_int_eq(label_at(d, i), l);
            const unsigned char *p =
                (const unsigned char *)d->images->data + i * (size_t)side * side * 3;
            /* the colour code survives JPEG within a few levels */
            ck_assert_int_le(abs(p[0] - (40 * orig[l] + 20)), 6);
            ck_assert_int_le(abs(p[1] - (30 * k + 10)), 6);
        }
}

START_TEST(test_imagefolder_layouts_agree)
{
    struct jset s;
    make_jset(&s, "root/", 40, 30);
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    o.size = 24;
    struct emoe_prep_result res;
    const char *fmts[4] = {"tar", "tgz", "zip", "zipstore"};
    const char *files[4] = {"f.tar", "f.tar.gz", "f.zip", "fs.zip"};
    struct emoe_dataset *first = NULL;
    for (int f = 0; f < 4; f++) {
        const char *p = tu_tmppath(files[f]);
        write_archive(p, fmts[f], s.b, s.n);
        struct emoe_dataset *d = prep1(p, &o, &res);
        ck_assert_int_eq(res.format, EMOE_PREP_IMAGEFOLDER);
        ck_assert_uint_eq(res.skipped, 0);
        check_folder_dataset(d, 24);
        if (!first)
            first = d;
        else {
            ck_assert_mem_eq(d->images->data, first->images->data, first->images->nbytes);
            emoe_dataset_free(d);
        }
    }
    /* the same files in a folder */
    char dir[512];
    snprintf(dir, sizeof dir, "%s", tu_tmppath("folder"));
    mkdir(dir, 0755);
    for (int c = 0; c < NCLS; c++) {
        char sub[700];
        snprintf(sub, sizeof sub, "%s/%s", dir, cls_names[c]);
        mkdir(sub, 0755);
    }
    for (size_t i = 0; i < s.n; i++) {
        char p[700];
        snprintf(p, sizeof p, "%s/%s", dir, s.names[i] + 5);
        tu_write_file(p, s.b[i].data, s.b[i].size);
    }
    char notes[700];
    snprintf(notes, sizeof notes, "%s/README.txt", dir);
    tu_write_file(notes, "ignored", 7);
    struct emoe_dataset *d = prep1(dir, &o, &res);
    check_folder_dataset(d, 24);
    ck_assert_mem_eq(d->images->data, first->images->data, first->images->nbytes);
    emoe_dataset_free(d);
    /* thread count does not change anything */
    int t0 = emoe_threads_get();
    emoe_threads_set(1);
    d = prep1(tu_tmppath("f.zip"), &o, &res);
    ck_assert_mem_eq(d->images->data, first->images->data, first->images->nbytes);
    ck_assert_mem_eq(d->labels->data, first->labels->data, first->labels->nbytes);
    emoe_dataset_free(d);
    emoe_threads_set(3);
    d = prep1(tu_tmppath("f.zip"), &o, &res);
    ck_assert_mem_eq(d->images->data, first->images->data, first->images->nbytes);
    emoe_dataset_free(d);
    d = prep1(tu_tmppath("fs.zip"), &o, &res);
    ck_assert_mem_eq(d->images->data, first->images->data, first->images->nbytes);
    emoe_dataset_free(d);
    emoe_threads_set(t0);
    emoe_dataset_free(first);
    free_jset(&s);
}
END_TEST

/* A zip as CIFAR-10's is laid out: the test split first, then many more train members
 * after it.  Read with several threads, the test split's reader runs ahead over the
 * train members while the test images decode, and the train split's reader skips the
 * test members first; both give what one thread gives.  The same zip with 100 other
 * bytes in front (as a self-extracting zip has; read by libarchive's seekable reader, not the streaming one) agrees too. */
START_TEST(test_imagefolder_split_read_ahead)
{
    enum { NTEST = 30, NTRAIN = 600 };
    struct blob *b = calloc(NTEST + NTRAIN, sizeof *b);
    char (*names)[64] = calloc(NTEST + NTRAIN, sizeof *names);
    unsigned char **data = calloc(NTEST + NTRAIN, sizeof *data);
    for (int i = 0; i < NTEST + NTRAIN; i++) {
        int test = i < NTEST, k = test ? i : i - NTEST;
        unsigned long sz;
        data[i] = make_jpeg(k % NCLS, k % 7, 16, 16, &sz);
        snprintf(names[i], sizeof names[i], "c/%s/%s/%04d.jpg", test ? "test" : "train",
                 cls_names[k % NCLS], k);
        b[i] = (struct blob){names[i], data[i], sz};
    }
    const char *z = tu_tmppath("split.zip");
    write_archive(z, "zipstore", b, NTEST + NTRAIN);
    size_t n;
    unsigned char *zd = tu_read_file(z, &n);
    unsigned char *prefixed = malloc(n + 100);
    memset(prefixed, '#', 100);
    memcpy(prefixed + 100, zd, n);
    const char *zs = tu_tmppath("prefixed.zip");
    tu_write_file(zs, prefixed, n + 100);
    free(prefixed);
    free(zd);
    int t0 = emoe_threads_get();
    const char *splits[2] = {"test", "train"};
    const int64_t count[2] = {NTEST, NTRAIN};
    for (int s = 0; s < 2; s++) {
        struct emoe_prep_options o;
        emoe_prep_options_init(&o);
        o.format = EMOE_PREP_IMAGEFOLDER; /* the bytes in front hide the zip from detection */
        o.size = 16;
        o.split = splits[s];
        struct emoe_prep_result res;
        emoe_threads_set(1);
        struct emoe_dataset *one = prep1(z, &o, &res);
        ck_assert_int_eq(one->images->shape[0], count[s]);
        ck_assert_uint_eq(one->nclasses, NCLS);
        const int64_t *lab = one->labels->data;
        for (int64_t i = 1; i < count[s]; i++)
            ck_assert_int_le(lab[i - 1], lab[i]); /* class order */
        for (int t = 2; t <= 3; t++) {
            emoe_threads_set(t);
            const char *srcs[2] = {z, zs};
            for (int v = 0; v < 2; v++) {
                struct emoe_dataset *d = prep1(srcs[v], &o, &res);
                ck_assert_int_eq(d->images->shape[0], count[s]);
                ck_assert_mem_eq(d->images->data, one->images->data, one->images->nbytes);
                ck_assert_mem_eq(d->labels->data, one->labels->data, one->labels->nbytes);
                emoe_dataset_free(d);
            }
        }
        emoe_dataset_free(one);
    }
    emoe_threads_set(t0);
    for (int i = 0; i < NTEST + NTRAIN; i++)
        free(data[i]);
    free(data);
    free(names);
    free(b);
}
END_TEST

START_TEST(test_imagefolder_native_size_and_subdir)
{
    struct jset s;
    make_jset(&s, "top/test/", 16, 16);
    struct jset s2;
    make_jset(&s2, "top/train/", 16, 16);
    struct blob all[2 * NCLS * PER];
    for (size_t i = 0; i < s.n; i++) {
        all[i] = s.b[i];
        all[s.n + i] = s2.b[i];
    }
    const char *p = tu_tmppath("nested.zip");
    write_archive(p, "zip", all, 2 * s.n);
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    o.subdir = "top/test/";
    struct emoe_prep_result res;
    struct emoe_dataset *d = prep1(p, &o, &res);
    check_folder_dataset(d, 16);
    /* native size: pixels are libjpeg's own decode of the member */
    struct emoe_error err = {0};
    struct emoe_jpeg *j;
    ck_assert_int_eq(emoe_jpeg_new(&j, &err), EMOE_OK);
    unsigned char *px;
    int w, h;
    /* image 0 is ant/img0.jpg: cls_names index 1, k 0, stored at s.b[(NCLS-1-1)*PER + PER-1] */
    size_t bi = (size_t)((NCLS - 1 - 1) * PER + PER - 1);
    ck_assert_ptr_nonnull(strstr(s.names[bi], "ant/img0.jpg"));
    ck_assert_int_eq(emoe_jpeg_decode(j, s.b[bi].data, s.b[bi].size, NULL, 3, 1, &px, &w, &h,
                                      &err), EMOE_OK);
    ck_assert_mem_eq(d->images->data, px, 16 * 16 * 3);
    free(px);
    emoe_jpeg_free(j);
    emoe_dataset_free(d);
    /* --split picks the folder named so */
    o.subdir = NULL;
    o.split = "train";
    d = prep1(p, &o, &res);
    check_folder_dataset(d, 16);
    emoe_dataset_free(d);
    /* neither: the common root is top/, whose folders are test and train */
    o.split = NULL;
    d = prep1(p, &o, &res);
    ck_assert_uint_eq(d->nclasses, 2);
    ck_assert_str_eq(d->classes[0], "test");
    ck_assert_str_eq(d->classes[1], "train");
    emoe_dataset_free(d);
    /* a subdir that does not exist */
    o.subdir = "top/nope";
    struct emoe_dataset *dd = NULL;
    int rc = emoe_prep_read(&p, 1, &o, &dd, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "nested.zip: unknown layout: no JPEG images found under "
                    "'top/nope'");
    free_jset(&s);
    free_jset(&s2);
}
END_TEST

START_TEST(test_imagenet_nested_tars)
{
    /* per-class tars inside an outer tar, as the ILSVRC2012 training archive */
    struct jset s;
    make_jset(&s, "", 20, 20);
    struct blob outer[NCLS];
    unsigned char *inner[NCLS];
    char names[NCLS][64];
    for (int c = 0; c < NCLS; c++) {
        struct blob b[PER];
        char bn[PER][64];
        size_t k = 0;
        for (size_t i = 0; i < s.n; i++)
            if (!strncmp(s.names[i], cls_names[c], strlen(cls_names[c]))) {
                snprintf(bn[k], sizeof bn[k], "%s_%s", cls_names[c], strchr(s.names[i], '/') + 1);
                b[k] = s.b[i];
                b[k].name = bn[k];
                k++;
            }
        ck_assert_uint_eq(k, PER);
        const char *ip = tu_tmppath("inner.tar");
        write_archive(ip, "tar", b, PER);
        size_t n;
        inner[c] = tu_read_file(ip, &n);
        snprintf(names[c], sizeof names[c], "%s.tar", cls_names[c]);
        outer[c].name = names[c];
        outer[c].data = inner[c];
        outer[c].size = n;
    }
    const char *p = tu_tmppath("ILSVRC2012_img_train.tar");
    write_archive(p, "tar", outer, NCLS);
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    o.size = 20;
    struct emoe_prep_result res;
    struct emoe_dataset *d = prep1(p, &o, &res);
    ck_assert_int_eq(res.format, EMOE_PREP_IMAGENET);
    check_folder_dataset(d, 20);
    emoe_dataset_free(d);
    for (int c = 0; c < NCLS; c++)
        free(inner[c]);
    free_jset(&s);
}
END_TEST

START_TEST(test_tinyimagenet)
{
    /* the official layout, three classes of which two have training images */
    unsigned long sz[6];
    unsigned char *j[6];
    for (int i = 0; i < 6; i++)
        j[i] = make_jpeg(i % 3, i, 16, 16, &sz[i]);
    const char *wnids = "n03\nn01\nn02\n";
    const char *words = "n00\tentity\nn01\tcat, puss\nn02\tdog\nn03\treel\nn04\tother\n";
    const char *ann = "val_0.JPEG\tn03\t0\t0\t5\t5\nval_1.JPEG\tn01\t0\t0\t5\t5\n"
                      "val_10.JPEG\tn02\t1\t1\t3\t3\n";
    struct blob b[] = {
        {"tiny-imagenet-200/train/n02/images/n02_0.JPEG", j[0], sz[0]},
        {"tiny-imagenet-200/train/n02/n02_boxes.txt", "x", 1},
        {"tiny-imagenet-200/train/n01/images/n01_1.JPEG", j[1], sz[1]},
        {"tiny-imagenet-200/train/n01/images/n01_0.JPEG", j[2], sz[2]},
        {"tiny-imagenet-200/val/images/val_10.JPEG", j[3], sz[3]},
        {"tiny-imagenet-200/val/images/val_0.JPEG", j[4], sz[4]},
        {"tiny-imagenet-200/val/images/val_1.JPEG", j[5], sz[5]},
        {"tiny-imagenet-200/val/val_annotations.txt", ann, strlen(ann)},
        {"tiny-imagenet-200/wnids.txt", wnids, strlen(wnids)},
        {"tiny-imagenet-200/words.txt", words, strlen(words)},
    };
    const char *p = tu_tmppath("tiny-imagenet-200.zip");
    write_archive(p, "zip", b, 10);
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    struct emoe_prep_result res;
    struct emoe_dataset *d = prep1(p, &o, &res);
    ck_assert_int_eq(res.format, EMOE_PREP_TINYIMAGENET);
    ck_assert_int_eq(d->images->shape[0], 3);
    ck_assert_int_eq(d->images->shape[1], 16);
    ck_assert_uint_eq(d->nclasses, 3);
    ck_assert_str_eq(d->classes[0], "cat, puss");
    ck_assert_str_eq(d->classes[1], "dog");
    ck_assert_str_eq(d->classes[2], "reel");
    /* path order: n01_0, n01_1, n02_0 */
    ck_assert_int_eq(label_at(d, 0), 0);
    ck_assert_int_eq(label_at(d, 1), 0);
    ck_assert_int_eq(label_at(d, 2), 1);
    ck_assert_int_le(abs(((unsigned char *)d->images->data)[1] - (30 * 2 + 10)), 6);
    emoe_dataset_free(d);
    o.split = "val";
    d = prep1(p, &o, &res);
    ck_assert_int_eq(d->images->shape[0], 3);
    /* val_0 (n03), val_1 (n01), val_10 (n02) */
    ck_assert_int_eq(label_at(d, 0), 2);
    ck_assert_int_eq(label_at(d, 1), 0);
    ck_assert_int_eq(label_at(d, 2), 1);
    emoe_dataset_free(d);
    /* a val image without annotation, and no annotations at all */
    b[7].size = strlen(ann) - 30;
    write_archive(p, "zip", b, 10);
    struct emoe_error err = {0};
    int rc = emoe_prep_read(&p, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "no label for 'tiny-imagenet-200/val/images/val_10.JPEG'");
    b[7] = b[9];
    write_archive(p, "zip", b, 9);
    rc = emoe_prep_read(&p, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_ENOTFOUND, "missing label file 'val/val_annotations.txt'");
    for (int i = 0; i < 6; i++)
        free(j[i]);
}
END_TEST

START_TEST(test_utf8_member_names)
{
    /* class folders with non-ASCII names, in a zip that flags its names UTF-8 and in a
     * pax tar: found and named whatever the program's locale (here "C", where libarchive
     * alone gives such members no name at all) */
    unsigned long sz[3];
    unsigned char *j[3];
    for (int i = 0; i < 3; i++)
        j[i] = make_jpeg(i, i, 8, 8, &sz[i]);
    struct blob b[] = {
        {"data/caf\xc3\xa9/0.jpg", j[0], sz[0]},
        {"data/caf\xc3\xa9/1.jpg", j[1], sz[1]},
        {"data/th\xc3\xa9 vert/2.jpg", j[2], sz[2]},
    };
    const char *fmts[2] = {"zipstore", "tar"};
    utf8_names = 1;
    for (int k = 0; k < 2; k++) {
        const char *p = tu_tmppath(k ? "utf8.tar" : "utf8.zip");
        write_archive(p, fmts[k], b, 3);
        struct emoe_prep_options o;
        emoe_prep_options_init(&o);
        struct emoe_prep_result res;
        struct emoe_dataset *d = prep1(p, &o, &res);
        ck_assert_int_eq(res.format, EMOE_PREP_IMAGEFOLDER);
        ck_assert_int_eq(d->images->shape[0], 3);
        ck_assert_uint_eq(d->nclasses, 2);
        ck_assert_str_eq(d->classes[0], "caf\xc3\xa9");
        ck_assert_str_eq(d->classes[1], "th\xc3\xa9 vert");
        ck_assert_int_eq(label_at(d, 2), 1);
        emoe_dataset_free(d);
    }
    utf8_names = 0;
    for (int i = 0; i < 3; i++)
        free(j[i]);
}
END_TEST

START_TEST(test_hidden_and_macos_members)
{
    /* what macOS and notebooks leave next to the images: the "__MACOSX" folder of
     * "._" resource forks (named .jpg, not JPEGs), ".ipynb_checkpoints", ".DS_Store".
     * Skipped in an archive as in a folder: classes cat and dog, two images, none
     * counted as corrupt */
    unsigned long sz[3];
    unsigned char *j[3];
    for (int i = 0; i < 3; i++)
        j[i] = make_jpeg(i, i, 8, 8, &sz[i]);
    static const char fork[] = "\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ";
    struct blob b[] = {
        {"data/cat/1.jpg", j[0], sz[0]},
        {"__MACOSX/data/cat/._1.jpg", fork, sizeof fork},
        {"data/dog/2.jpg", j[1], sz[1]},
        {"data/dog/._2.jpg", fork, sizeof fork},
        {"data/.ipynb_checkpoints/3-checkpoint.jpg", j[2], sz[2]},
        {"data/cat/.DS_Store", fork, sizeof fork},
    };
    const size_t nb = sizeof b / sizeof *b;
    const char *zip = tu_tmppath("mac.zip");
    write_archive(zip, "zip", b, nb);
    char dir[512];
    snprintf(dir, sizeof dir, "%s", tu_tmppath("mac"));
    const char *dirs[] = {"", "/data", "/data/cat", "/data/dog", "/data/.ipynb_checkpoints",
                          "/__MACOSX", "/__MACOSX/data", "/__MACOSX/data/cat"};
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
        char p[600];
        snprintf(p, sizeof p, "%s%s", dir, dirs[i]);
        ck_assert_int_eq(mkdir(p, 0755), 0);
    }
    for (size_t i = 0; i < nb; i++) {
        char p[600];
        snprintf(p, sizeof p, "%s/%s", dir, b[i].name);
        tu_write_file(p, b[i].data, b[i].size);
    }
    const char *srcs[2] = {zip, dir};
    for (int k = 0; k < 2; k++) {
        struct emoe_prep_options o;
        emoe_prep_options_init(&o);
        struct emoe_prep_result res;
        struct emoe_dataset *d = prep1(srcs[k], &o, &res);
        ck_assert_int_eq(d->images->shape[0], 2);
        ck_assert_uint_eq(res.skipped, 0);
        ck_assert_uint_eq(d->nclasses, 2);
        ck_assert_str_eq(d->classes[0], "cat");
        ck_assert_str_eq(d->classes[1], "dog");
        ck_assert_int_eq(label_at(d, 1), 1);
        emoe_dataset_free(d);
    }
    for (int i = 0; i < 3; i++)
        free(j[i]);
}
END_TEST

START_TEST(test_detect_many_members)
{
    /* detection stops early once the names decide the format, except where a later
     * name may still change it: 300 JPEGs in class folders are an imagefolder; the same
     * in tiny-imagenet's 'images' folders with wnids.txt at the end are tiny-imagenet */
    enum { N = 300 };
    unsigned long sz;
    unsigned char *j = make_jpeg(1, 2, 8, 8, &sz);
    const char *wnids = "n01\nn02\n", *words = "n01\tcat\nn02\tdog\n";
    struct blob b[N + 2];
    static char names[N][64];
    for (int tiny = 0; tiny < 2; tiny++) {
        for (int i = 0; i < N; i++) {
            if (tiny)
                snprintf(names[i], sizeof names[i], "t/train/n0%d/images/%03d.JPEG", 1 + i % 2, i);
            else
                snprintf(names[i], sizeof names[i], "f/c%d/%03d.jpg", i % 2, i);
            b[i] = (struct blob){names[i], j, sz};
        }
        b[N] = (struct blob){"t/wnids.txt", wnids, strlen(wnids)};
        b[N + 1] = (struct blob){"t/words.txt", words, strlen(words)};
        const char *p = tu_tmppath(tiny ? "many-tiny.tar" : "many.tar");
        write_archive(p, "tar", b, tiny ? N + 2 : N);
        struct emoe_prep_options o;
        emoe_prep_options_init(&o);
        struct emoe_prep_result res;
        struct emoe_dataset *d = prep1(p, &o, &res);
        ck_assert_int_eq(res.format, tiny ? EMOE_PREP_TINYIMAGENET : EMOE_PREP_IMAGEFOLDER);
        ck_assert_int_eq(d->images->shape[0], N);
        ck_assert_uint_eq(d->nclasses, 2);
        ck_assert_str_eq(d->classes[1], tiny ? "dog" : "c1");
        emoe_dataset_free(d);
    }
    free(j);
}
END_TEST

START_TEST(test_imagenet_val_label_file)
{
    unsigned long sz[4];
    unsigned char *j[4];
    struct blob b[4];
    char names[4][64];
    for (int i = 0; i < 4; i++) {
        j[i] = make_jpeg(i % 3, i, 16, 16, &sz[i]);
        snprintf(names[i], sizeof names[i], "ILSVRC2012_val_%08d.JPEG", 4 - i);
        b[i].name = names[i];
        b[i].data = j[i];
        b[i].size = sz[i];
    }
    const char *p = tu_tmppath("ILSVRC2012_img_val.tar");
    write_archive(p, "tar", b, 4);
    /* images 1..4 get wnids z, a, z, m */
    const char *forms[3] = {
        "ILSVRC2012_val_00000003.JPEG z\nILSVRC2012_val_00000001.JPEG z\n"
        "ILSVRC2012_val_00000002.JPEG a\nILSVRC2012_val_00000004.JPEG m\n",
        "ImageId,PredictionString\nILSVRC2012_val_00000004,m 1 2 3 4\n"
        "ILSVRC2012_val_00000001,z 5 6 7 8 z 1 1 2 2\nILSVRC2012_val_00000002,a 0 0 1 1\n"
        "ILSVRC2012_val_00000003,z 1 1 1 1\n",
        "z\na\nz\nm\n",
    };
    const char *lf = tu_tmppath("val_labels.txt");
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    o.format = EMOE_PREP_IMAGENET;
    o.label_file = lf;
    struct emoe_prep_result res;
    for (int k = 0; k < 3; k++) {
        tu_write_file(lf, forms[k], strlen(forms[k]));
        struct emoe_dataset *d = prep1(p, &o, &res);
        ck_assert_int_eq(d->images->shape[0], 4);
        ck_assert_uint_eq(d->nclasses, 3);
        ck_assert_str_eq(d->classes[0], "a");
        ck_assert_str_eq(d->classes[2], "z");
        /* order: a (img 2), m (img 4), z (img 1, img 3) */
        ck_assert_int_eq(label_at(d, 0), 0);
        ck_assert_int_eq(label_at(d, 1), 1);
        ck_assert_int_eq(label_at(d, 2), 2);
        ck_assert_int_eq(label_at(d, 3), 2);
        /* image 2 is b[2]: class 2 % 3, k 2 */
        ck_assert_int_le(abs(((unsigned char *)d->images->data)[1] - (30 * 2 + 10)), 6);
        emoe_dataset_free(d);
    }
    /* numeric labels are kept as given */
    tu_write_file(lf, "7\n3\n7\n0\n", 8);
    struct emoe_dataset *d = prep1(p, &o, &res);
    ck_assert_int_eq(label_at(d, 0), 7);
    ck_assert_int_eq(label_at(d, 1), 3);
    ck_assert_int_eq(label_at(d, 3), 0);
    ck_assert_ptr_null(d->classes);
    emoe_dataset_free(d);
    /* errors: too few labels, an image without a label, no label file */
    struct emoe_error err = {0};
    tu_write_file(lf, "z\na\n", 4);
    int rc = emoe_prep_read(&p, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "val_labels.txt: 2 labels for 4 images");
    const char *part = "ILSVRC2012_val_00000003.JPEG z\nILSVRC2012_val_00000001.JPEG z\n";
    tu_write_file(lf, part, strlen(part));
    rc = emoe_prep_read(&p, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "val_labels.txt: no label for 'ILSVRC2012_val_0000000");
    o.label_file = tu_tmppath("missing.txt");
    rc = emoe_prep_read(&p, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_ENOTFOUND, "missing.txt");
    o.label_file = NULL;
    rc = emoe_prep_read(&p, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "unknown layout");
    /* not "no JPEG images found": it says a label file is needed, naming the archive */
    tu_assert_error(rc, err, EMOE_EFORMAT, "ILSVRC2012_img_val.tar: unknown layout: 4 JPEG "
                    "images but no class folders; a flat (validation) layout needs a label "
                    "file");
    for (int i = 0; i < 4; i++)
        free(j[i]);
}
END_TEST

START_TEST(test_imagefolder_corrupt_jpeg)
{
    struct jset s;
    make_jset(&s, "", 24, 24);
    /* ant/img2.jpg truncated, mouse/img1.jpg garbage */
    for (size_t i = 0; i < s.n; i++) {
        if (strstr(s.names[i], "ant/img2.jpg"))
            s.b[i].size /= 2;
        if (strstr(s.names[i], "mouse/img1.jpg"))
            s.b[i].size = 30;
    }
    const char *p = tu_tmppath("bad.tar");
    write_archive(p, "tar", s.b, s.n);
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    o.size = 24;
    int warned = 0;
    o.warn = quiet_warn;
    o.ctx = &warned;
    struct emoe_prep_result res;
    struct emoe_dataset *d = prep1(p, &o, &res);
    ck_assert_uint_eq(res.skipped, 2);
    ck_assert_int_eq(warned, 2);
    ck_assert_int_eq(d->images->shape[0], NCLS * PER - 2);
    ck_assert_uint_eq(res.images, NCLS * PER - 2);
    emoe_dataset_free(d);
    /* strict: an error naming the member */
    o.strict = 1;
    struct emoe_error err = {0};
    d = NULL;
    int rc = emoe_prep_read(&p, 1, &o, &d, &res, &err);
    /* the first bad one in archive order (the archive lists names in reverse) */
    tu_assert_error(rc, err, EMOE_EFORMAT, "bad.tar: member 'mouse/img1.jpg': corrupt JPEG");
    ck_assert_ptr_null(d);
    free_jset(&s);
}
END_TEST

/* A class whose every image is corrupt keeps its name and label: the labels of the
 * other classes must not shift. */
START_TEST(test_imagefolder_class_all_corrupt_keeps_labels)
{
    struct jset s;
    make_jset(&s, "", 24, 24);
    for (size_t i = 0; i < s.n; i++)
        if (strncmp(s.names[i], "ant/", 4) == 0)
            s.b[i].size = 30;
    const char *p = tu_tmppath("allbad.tar");
    write_archive(p, "tar", s.b, s.n);
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    o.size = 24;
    int warned = 0;
    o.warn = quiet_warn;
    o.ctx = &warned;
    struct emoe_prep_result res;
    struct emoe_dataset *d = prep1(p, &o, &res);
    ck_assert_uint_eq(res.skipped, PER);
    ck_assert_uint_eq(d->nclasses, NCLS);
    ck_assert_str_eq(d->classes[0], "ant");
    ck_assert_int_eq(d->images->shape[0], (NCLS - 1) * PER);
    const int64_t *lab = d->labels->data;
    for (int64_t i = 0; i < d->labels->shape[0]; i++)
        ck_assert_int_ge(lab[i], 1); /* nothing is labelled 'ant', the rest keep 1.. */
    ck_assert_int_eq(lab[d->labels->shape[0] - 1], NCLS - 1);
    emoe_dataset_free(d);
    free_jset(&s);
}
END_TEST

/* The central directory entry of member name in zip bytes z (n bytes), or NULL. */
static unsigned char *cd_entry(unsigned char *z, size_t n, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i + 46 + nl <= n; i++)
        if (!memcmp(z + i, "PK\1\2", 4) && (size_t)(z[i + 28] | z[i + 29] << 8) == nl &&
            !memcmp(z + i + 46, name, nl))
            return z + i;
    return NULL;
}

static size_t cd_local_offset(const unsigned char *e)
{
    return (size_t)e[42] | (size_t)e[43] << 8 | (size_t)e[44] << 16 | (size_t)e[45] << 24;
}

/* With a split, a zip is read from its first wanted member to its last, where its
 * central directory says they are: a member the directory does not list, after that
 * stretch, is not read (fails when the whole zip is read); a damaged member inside the
 * stretch still fails the read; a directory whose offset does not hold a local header
 * makes the whole zip read.  Each read gives what the same members in a tar give. */
START_TEST(test_zip_split_reads_its_stretch)
{
    enum { N = 31 };
    struct blob b[N];
    char names[N][64];
    unsigned char *data[N];
    for (int i = 0; i < N; i++) {
        /* train/ant 0-9, test/ant 0-4, test/mouse 0-4, train/mouse 0-9, a text file */
        const char *split = i < 10 || (i >= 20 && i < 30) ? "train" : "test";
        const char *cls = i < 10 || (i >= 10 && i < 15) ? "ant" : "mouse";
        int k = i < 10 ? i : i < 15 ? i - 10 : i < 20 ? i - 15 : i - 20;
        unsigned long sz = 0;
        if (i == N - 1) {
            snprintf(names[i], sizeof names[i], "x/README.txt");
            data[i] = (unsigned char *)strdup("notes");
            sz = 5;
        } else {
            snprintf(names[i], sizeof names[i], "x/%s/%s/%d.jpg", split, cls, k);
            data[i] = make_jpeg(cls[0] == 'm', i, 16, 16, &sz);
        }
        b[i] = (struct blob){names[i], data[i], sz};
    }
    const char *zp = tu_tmppath("sel.zip"), *tp = tu_tmppath("sel.tar");
    write_archive(zp, "zipstore", b, N);
    write_archive(tp, "tar", b, N);
    size_t n;
    unsigned char *z = tu_read_file(zp, &n);
    const char *splits[2] = {"test", "train"};
    struct emoe_dataset *want[2];
    for (int s = 0; s < 2; s++) {
        struct emoe_prep_options o;
        emoe_prep_options_init(&o);
        o.size = 16;
        o.split = splits[s];
        struct emoe_prep_result res;
        want[s] = prep1(tp, &o, &res);
        struct emoe_dataset *d = prep1(zp, &o, &res);
        ck_assert_int_eq(d->images->shape[0], s == 0 ? 10 : 20);
        ck_assert_mem_eq(d->images->data, want[s]->images->data, want[s]->images->nbytes);
        ck_assert_mem_eq(d->labels->data, want[s]->labels->data, want[s]->labels->nbytes);
        emoe_dataset_free(d);
    }
    /* train/mouse/9.jpg made unreadable, even to skip over: after the test split's
     * stretch, inside the train split's */
    unsigned char *e = cd_entry(z, n, "x/train/mouse/9.jpg");
    ck_assert_ptr_nonnull(e);
    unsigned char *bad = malloc(n);
    memcpy(bad, z, n);
    unsigned char *lh = bad + cd_local_offset(e);
    ck_assert_int_eq(lh[6] & 8, 8); /* its sizes follow its data (a data descriptor) */
    lh[8] = 97; /* a compression method libarchive cannot read, so cannot find the end of */
    const char *dp = tu_tmppath("damaged.zip");
    tu_write_file(dp, bad, n);
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    o.size = 16;
    o.split = "test";
    struct emoe_prep_result res;
    struct emoe_dataset *d = prep1(dp, &o, &res);
    ck_assert_mem_eq(d->images->data, want[0]->images->data, want[0]->images->nbytes);
    emoe_dataset_free(d);
    o.split = "train";
    struct emoe_error err = {0};
    d = NULL;
    int rc = emoe_prep_read(&dp, 1, &o, &d, &res, &err);
    ck_assert_int_ne(rc, EMOE_OK);
    ck_assert_ptr_nonnull(strstr(err.msg, "damaged.zip"));
    ck_assert_ptr_null(d);
    /* the central directory puts test/ant/0.jpg one byte off its header: whole zip read */
    memcpy(bad, z, n);
    e = cd_entry(bad, n, "x/test/ant/0.jpg");
    ck_assert_ptr_nonnull(e);
    e[42]++;
    const char *op = tu_tmppath("offset.zip");
    tu_write_file(op, bad, n);
    o.split = "test";
    d = prep1(op, &o, &res);
    ck_assert_mem_eq(d->images->data, want[0]->images->data, want[0]->images->nbytes);
    emoe_dataset_free(d);
    /* a test image after all the others that the central directory does not list (only
     * its local header names it): the directory is the zip's index, as for unzip and
     * Python's zipfile, so the test split is as before */
    struct blob b2[N + 1];
    memcpy(b2, b, sizeof b);
    unsigned long zsz;
    unsigned char *zj = make_jpeg(2, 0, 16, 16, &zsz);
    b2[N] = (struct blob){"x/test/zebra/0.jpg", zj, zsz};
    const char *hp = tu_tmppath("unlisted.zip");
    write_archive(hp, "zipstore", b2, N + 1);
    size_t m;
    unsigned char *u = tu_read_file(hp, &m);
    e = cd_entry(u, m, "x/test/zebra/0.jpg");
    ck_assert_ptr_nonnull(e);
    size_t elen = 46 + (e[28] | e[29] << 8) + (e[30] | e[31] << 8) + (e[32] | e[33] << 8);
    memmove(e, e + elen, (size_t)(u + m - (e + elen)));
    m -= elen;
    unsigned char *end = u + m - 22;
    ck_assert_mem_eq(end, "PK\5\6", 4);
    end[8]--, end[10]--; /* N members listed, not N + 1 */
    uint32_t cds = (uint32_t)(end[12] | end[13] << 8 | end[14] << 16) - (uint32_t)elen;
    end[12] = cds & 255, end[13] = cds >> 8 & 255, end[14] = cds >> 16 & 255;
    tu_write_file(hp, u, m);
    d = prep1(hp, &o, &res);
    ck_assert_uint_eq(d->nclasses, 2);
    ck_assert_mem_eq(d->images->data, want[0]->images->data, want[0]->images->nbytes);
    emoe_dataset_free(d);
    free(u);
    free(zj);
    free(bad);
    free(z);
    for (int s = 0; s < 2; s++)
        emoe_dataset_free(want[s]);
    for (int i = 0; i < N; i++)
        free(data[i]);
}
END_TEST

/* Large JPEGs (photos) are decoded largest first; only the decoding follows that order.
 * Each image's colour says which member it is, the sizes are scrambled against the
 * names, and two members are corrupt: a small one first in the archive, a larger one
 * later (decoded first).  Every thread count gives each image under its own name, the warnings in
 * archive order, and with --strict the first corrupt member in archive order. */
struct warnings {
    char msg[8][256];
    int n;
};

static void keep_warning(void *ctx, const char *msg)
{
    struct warnings *w = ctx;
    ck_assert_int_lt(w->n, 8);
    snprintf(w->msg[w->n++], sizeof w->msg[0], "%s", msg);
}

START_TEST(test_imagefolder_large_members_decode_order)
{
    enum { NC = 2, NK = 12, N = NC * NK };
    const char *cls[NC] = {"owl", "bee"};
    struct blob b[N];
    char names[N][32];
    unsigned char *data[N];
    uint32_t r = 12345;
    size_t total = 0;
    for (int i = 0; i < N; i++) {
        int c = i % NC, k = i / NC;
        int w = 128 + 16 * ((k * 5) % NK); /* sizes not in name order */
        unsigned char *px = malloc((size_t)w * w * 3);
        for (size_t p = 0; p < (size_t)w * w; p++) {
            r = r * 1664525u + 1013904223u;
            int noise = (int)(r >> 26) - 32; /* -32..31: hard to compress */
            px[3 * p] = (unsigned char)(60 + 120 * c + noise);
            px[3 * p + 1] = (unsigned char)(40 + 14 * k + noise);
            px[3 * p + 2] = (unsigned char)(128 + noise);
        }
        unsigned long sz;
        data[i] = encode_jpeg(px, w, w, &sz);
        free(px);
        snprintf(names[i], sizeof names[i], "%s/img%02d.jpg", cls[c], k);
        b[i] = (struct blob){names[i], data[i], sz};
        total += sz;
    }
    ck_assert_uint_ge(total / N, 16 << 10); /* large enough to be sorted */
    /* in the first batch (8 members), so sorted together with the rest of it */
    b[1].size = 30;            /* bee/img00.jpg: garbage, small, early */
    b[6].size = b[6].size / 2; /* owl/img03.jpg: truncated, larger, later */
    const char *p = tu_tmppath("photos.tar");
    write_archive(p, "tar", b, N);
    int t0 = emoe_threads_get();
    struct warnings first = {0};
    for (int t = 1; t <= 3; t++) {
        emoe_threads_set(t);
        struct emoe_prep_options o;
        emoe_prep_options_init(&o);
        o.size = 32;
        struct warnings w = {0};
        o.warn = keep_warning;
        o.ctx = &w;
        struct emoe_prep_result res;
        struct emoe_dataset *d = prep1(p, &o, &res);
        ck_assert_uint_eq(res.skipped, 2);
        ck_assert_int_eq(d->images->shape[0], N - 2);
        ck_assert_str_eq(d->classes[0], "bee");
        /* bee/img01.., then owl/img00..: each image's mean colour is its own */
        const unsigned char *px = d->images->data;
        const int64_t *lab = d->labels->data;
        size_t at = 0;
        for (int c = 1; c >= 0; c--)
            for (int k = 0; k < NK; k++) {
                if ((c == 1 && k == 0) || (c == 0 && k == 3))
                    continue; /* the corrupt ones */
                double m[3] = {0, 0, 0};
                for (size_t q = 0; q < 32 * 32; q++)
                    for (int ch = 0; ch < 3; ch++)
                        m[ch] += px[(at * 32 * 32 + q) * 3 + ch] / (32.0 * 32.0);
                ck_assert_msg(fabs(m[0] - (60 + 120 * c)) < 5 && fabs(m[1] - (40 + 14 * k)) < 5,
                              "-j %d: image %zu (%s/img%02d.jpg) has mean colour %.0f %.0f", t,
                              at, cls[c], k, m[0], m[1]);
                ck_assert_int_eq(lab[at], c == 1 ? 0 : 1);
                at++;
            }
        ck_assert_uint_eq(at, N - 2);
        ck_assert_int_eq(w.n, 2);
        ck_assert_ptr_nonnull(strstr(w.msg[0], "member 'bee/img00.jpg'"));
        ck_assert_ptr_nonnull(strstr(w.msg[1], "member 'owl/img03.jpg'"));
        if (t == 1)
            first = w;
        for (int i = 0; i < w.n; i++)
            ck_assert_str_eq(w.msg[i], first.msg[i]);
        emoe_dataset_free(d);
        o.strict = 1;
        o.warn = NULL;
        struct emoe_error err = {0};
        d = NULL;
        int rc = emoe_prep_read(&p, 1, &o, &d, &res, &err);
        tu_assert_error(rc, err, EMOE_EFORMAT, "photos.tar: member 'bee/img00.jpg': corrupt JPEG");
        ck_assert_ptr_null(d);
    }
    emoe_threads_set(t0);
    for (int i = 0; i < N; i++)
        free(data[i]);
}
END_TEST

START_TEST(test_imagefolder_bad_archives)
{
    struct jset s;
    make_jset(&s, "r/", 24, 24);
    const char *p = tu_tmppath("cut.tar.gz");
    write_archive(p, "tgz", s.b, s.n);
    size_t n;
    free(tu_read_file(p, &n));
    truncate_file(p, n * 2 / 3);
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    o.format = EMOE_PREP_IMAGEFOLDER;
    o.size = 24;
    struct emoe_error err = {0};
    struct emoe_dataset *d = NULL;
    int rc = emoe_prep_read(&p, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "cut.tar.gz: truncated or corrupt archive");
    ck_assert_ptr_null(d);
    /* a truncated zip */
    const char *z = tu_tmppath("cut.zip");
    write_archive(z, "zip", s.b, s.n);
    free(tu_read_file(z, &n));
    truncate_file(z, n / 2);
    rc = emoe_prep_read(&z, 1, &o, &d, NULL, &err);
    ck_assert_int_eq(rc, EMOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "cut.zip: "));
    /* a stored zip with a changed byte in a member: an error (libarchive's CRC-32 check),
     * not a dataset with a wrong image */
    const char *bc = tu_tmppath("badcrc.zip");
    write_archive(bc, "zipstore", s.b, s.n);
    unsigned char *zd = tu_read_file(bc, &n);
    unsigned char *hit = memmem(zd, n, s.b[1].data, s.b[1].size);
    ck_assert_ptr_nonnull(hit);
    hit[s.b[1].size / 2] ^= 0x55;
    tu_write_file(bc, zd, n);
    free(zd);
    rc = emoe_prep_read(&bc, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "badcrc.zip: truncated or corrupt archive");
    ck_assert_ptr_null(d);
    /* a stored zip cut where its central directory starts (every member whole): an
     * error, not a dataset of the members before the cut */
    const char *cd = tu_tmppath("nocd.zip");
    write_archive(cd, "zipstore", s.b, s.n);
    zd = tu_read_file(cd, &n);
    unsigned char *dir = NULL;
    for (size_t i = 0; i + 4 <= n; i++)
        if (!memcmp(zd + i, "PK\1\2", 4)) {
            dir = zd + i;
            break;
        }
    ck_assert_ptr_nonnull(dir);
    tu_write_file(cd, zd, (size_t)(dir - zd));
    free(zd);
    rc = emoe_prep_read(&cd, 1, &o, &d, NULL, &err);
    ck_assert_int_eq(rc, EMOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "nocd.zip: "));
    ck_assert_ptr_null(d);
    /* images without class folders */
    struct blob flat[2] = {{"a.jpg", s.b[0].data, s.b[0].size}, {"b.jpg", s.b[1].data,
                                                                 s.b[1].size}};
    const char *fp = tu_tmppath("flat.tar");
    write_archive(fp, "tar", flat, 2);
    rc = emoe_prep_read(&fp, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "flat.tar: unknown layout");
    /* one class folder only: that is the class */
    struct blob one[2] = {{"top/cls/a.jpg", s.b[0].data, s.b[0].size},
                          {"top/cls/b.jpg", s.b[1].data, s.b[1].size}};
    const char *op = tu_tmppath("one.tar");
    write_archive(op, "tar", one, 2);
    rc = emoe_prep_read(&op, 1, &o, &d, NULL, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    ck_assert_uint_eq(d->nclasses, 1);
    ck_assert_str_eq(d->classes[0], "cls");
    emoe_dataset_free(d);
    d = NULL;
    /* native size with differently sized images */
    struct jset s2;
    make_jset(&s2, "r/", 16, 16);
    struct blob mix[2] = {s.b[0], s2.b[1]};
    const char *mp = tu_tmppath("mix.tar");
    write_archive(mp, "tar", mix, 2);
    o.size = 0;
    rc = emoe_prep_read(&mp, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EINVAL, "not 24x24 like the first");
    /* missing source */
    const char *nope = tu_tmppath("nope.zip");
    o.format = EMOE_PREP_AUTO;
    rc = emoe_prep_read(&nope, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_ENOTFOUND, "nope.zip: ");
    free_jset(&s);
    free_jset(&s2);
}
END_TEST

START_TEST(test_selection)
{
    struct jset s;
    make_jset(&s, "", 16, 16);
    const char *p = tu_tmppath("sel.zip");
    write_archive(p, "zip", s.b, s.n);
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    struct emoe_prep_result res;
    /* --classes keeps those, labels in the order given */
    o.classes = "zebra,ant";
    struct emoe_dataset *d = prep1(p, &o, &res);
    ck_assert_int_eq(d->images->shape[0], 2 * PER);
    ck_assert_uint_eq(d->nclasses, 2);
    ck_assert_str_eq(d->classes[0], "zebra");
    ck_assert_str_eq(d->classes[1], "ant");
    ck_assert_int_eq(label_at(d, 0), 0);
    ck_assert_int_eq(label_at(d, PER), 1);
    /* zebra is cls_names[0]: red 20 */
    ck_assert_int_le(abs(((unsigned char *)d->images->data)[0] - 20), 6);
    emoe_dataset_free(d);
    struct emoe_error err = {0};
    o.classes = "zebra,cat";
    int rc = emoe_prep_read(&p, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_ENOTFOUND, "no class 'cat'");
    /* --per-class with a seed: deterministic, K per class, in dataset order */
    o.classes = NULL;
    o.per_class = 2;
    o.seed = 7;
    d = prep1(p, &o, &res);
    struct emoe_dataset *d2 = prep1(p, &o, &res);
    ck_assert_int_eq(d->images->shape[0], 2 * NCLS);
    ck_assert_mem_eq(d->images->data, d2->images->data, d->images->nbytes);
    for (int i = 0; i < 2 * NCLS; i++)
        ck_assert_int_eq(label_at(d, (size_t)i), i / 2);
    emoe_dataset_free(d2);
    int differs = 0;
    for (uint64_t seed = 8; seed < 16 && !differs; seed++) {
        o.seed = seed;
        d2 = prep1(p, &o, &res);
        differs = memcmp(d->images->data, d2->images->data, d->images->nbytes) != 0;
        emoe_dataset_free(d2);
    }
    ck_assert_msg(differs, "the seed changes the choice");
    emoe_dataset_free(d);
    o.per_class = PER + 1;
    rc = emoe_prep_read(&p, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EINVAL, "fewer than --per-class 5");
    /* --limit */
    o.per_class = 0;
    o.limit = 5;
    d = prep1(p, &o, &res);
    ck_assert_int_eq(d->images->shape[0], 5);
    ck_assert_int_eq(label_at(d, 4), 1);
    ck_assert_int_eq(d->labels->shape[0], 5);
    emoe_dataset_free(d);
    free_jset(&s);
}
END_TEST

/* ---------------------------------------------------------------- NIfTI */

static void put16(unsigned char *p, int v, int be)
{
    if (be) {
        p[0] = (unsigned char)(v >> 8);
        p[1] = (unsigned char)v;
    } else {
        p[0] = (unsigned char)v;
        p[1] = (unsigned char)(v >> 8);
    }
}

/* A NIfTI-1 file (.nii, or .nii.gz when gz) of X x Y x Z voxels from vals (x fastest),
 * stored as datatype (2 u8, 4 i16, 16 f32); big-endian when be. */
static void write_nifti1(const char *path, int X, int Y, int Z, const double *vals,
                         int datatype, int be, float slope, float inter, int gz)
{
    int es = datatype == 2 ? 1 : datatype == 4 ? 2 : 4;
    size_t n = (size_t)X * Y * Z, size = 352 + n * (size_t)es;
    unsigned char *b = calloc(1, size);
    unsigned char tmp[4];
    uint32_t u = 348;
    memcpy(b, &u, 4);
    if (be) {
        b[0] = 0; b[1] = 0; b[2] = 1; b[3] = 0x5c;
    }
    put16(b + 40, 3, be);
    put16(b + 42, X, be);
    put16(b + 44, Y, be);
    put16(b + 46, Z, be);
    put16(b + 48, 1, be);
    put16(b + 70, datatype, be);
    put16(b + 72, es * 8, be);
    float f[3] = {352.0f, slope, inter};
    for (int i = 0; i < 3; i++) {
        memcpy(tmp, &f[i], 4);
        for (int k = 0; k < 4; k++)
            b[108 + 4 * i + k] = be ? tmp[3 - k] : tmp[k];
    }
    memcpy(b + 344, "n+1", 4);
    for (size_t i = 0; i < n; i++) {
        unsigned char *p = b + 352 + i * (size_t)es;
        if (datatype == 2) {
            p[0] = (unsigned char)vals[i];
        } else if (datatype == 4) {
            put16(p, (int)vals[i], be);
        } else {
            float v = (float)vals[i];
            memcpy(tmp, &v, 4);
            for (int k = 0; k < 4; k++)
                p[k] = be ? tmp[3 - k] : tmp[k];
        }
    }
    if (gz)
        write_gz(path, b, size);
    else
        tu_write_file(path, b, size);
    free(b);
}

/* z-normalise a copy of v (population std) */
static void znorm(double *v, size_t n)
{
    double s = 0, q = 0;
    for (size_t i = 0; i < n; i++)
        s += v[i];
    double m = s / (double)n;
    for (size_t i = 0; i < n; i++)
        q += (v[i] - m) * (v[i] - m);
    double sd = sqrt(q / (double)n);
    for (size_t i = 0; i < n; i++)
        v[i] = sd > 0 ? (v[i] - m) / sd : v[i] - m;
}

START_TEST(test_nifti_types_and_targets)
{
    int X = 5, Y = 4, Z = 3;
    size_t n = (size_t)X * Y * Z;
    double *v = malloc(n * sizeof *v), *w = malloc(n * sizeof *w);
    for (size_t i = 0; i < n; i++)
        v[i] = (double)((i * 37) % 200);
    char dir[512];
    snprintf(dir, sizeof dir, "%s", tu_tmppath("vols"));
    mkdir(dir, 0755);
    char p1[600], p2[600], p3[600], csv[600];
    snprintf(p1, sizeof p1, "%s/S01-T1.nii.gz", dir);
    snprintf(p2, sizeof p2, "%s/S02_x.nii", dir);
    snprintf(p3, sizeof p3, "%s/S03.nii.gz", dir);
    write_nifti1(p1, X, Y, Z, v, 2, 0, 0.0f, 0.0f, 1);       /* u8, no scaling */
    write_nifti1(p2, X, Y, Z, v, 4, 1, 2.0f, -7.0f, 0);      /* i16 big-endian, scaled */
    write_nifti1(p3, X, Y, Z, v, 16, 0, 1.0f, 0.0f, 1);      /* f32 */
    snprintf(csv, sizeof csv, "%s", tu_tmppath("ages.csv"));
    const char *text = "ID,Age,Sex\nS03,70.5,F\n\"S02\",33.25,M\nS01,21,M\n";
    tu_write_file(csv, text, strlen(text));
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    o.targets = csv;
    o.id_column = "ID";
    o.target_column = "Age";
    struct emoe_prep_result res;
    struct emoe_dataset *d = prep1(dir, &o, &res);
    ck_assert_int_eq(res.format, EMOE_PREP_NIFTI);
    ck_assert_int_eq(d->images->dtype, EMOE_F32);
    ck_assert_int_eq(d->images->ndim, 5);
    ck_assert_int_eq(d->images->shape[0], 3);
    ck_assert_int_eq(d->images->shape[1], Z);
    ck_assert_int_eq(d->images->shape[2], Y);
    ck_assert_int_eq(d->images->shape[3], X);
    ck_assert_int_eq(d->images->shape[4], 1);
    ck_assert_int_eq(d->labels->dtype, EMOE_F32);
    const float *t = d->labels->data;
    ck_assert(t[0] == 21.0f && t[1] == 33.25f && t[2] == 70.5f);
    ck_assert_ptr_null(d->classes);
    /* native size: every volume is its normalised values (scaling does not matter after
     * normalisation for a positive slope, but it is applied) */
    for (int k = 0; k < 3; k++) {
        memcpy(w, v, n * sizeof *w);
        znorm(w, n);
        const float *g = (const float *)d->images->data + (size_t)k * n;
        for (size_t i = 0; i < n; i++)
            ck_assert_msg(fabs(g[i] - w[i]) < 1e-5, "volume %d voxel %zu: %g vs %g", k, i,
                          (double)g[i], w[i]);
    }
    emoe_dataset_free(d);
    /* resampled to 8^3 */
    o.size = 8;
    d = prep1(dir, &o, &res);
    ck_assert_int_eq(d->images->shape[1], 8);
    ck_assert_int_eq(d->images->shape[3], 8);
    struct emoe_tensor_stats st;
    struct emoe_error err = {0};
    ck_assert_int_eq(emoe_tensor_stats(d->images, &st, &err), EMOE_OK);
    ck_assert(fabs(st.mean) < 1e-4 && fabs(st.std - 1.0) < 1e-3);
    emoe_dataset_free(d);
    /* a CSV row without a volume */
    const char *dp = dir;
    const char *t2 = "ID,Age\nS01,1\nS02,2\nS03,3\nS04,4\n";
    tu_write_file(csv, t2, strlen(t2));
    int rc = emoe_prep_read(&dp, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_ENOTFOUND, "ages.csv: row 5: no volume for id 'S04'");
    /* a volume without a target */
    const char *t3 = "ID,Age\nS01,1\nS03,3\n";
    tu_write_file(csv, t3, strlen(t3));
    rc = emoe_prep_read(&dp, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_ENOTFOUND, "S02_x.nii: no target for this volume");
    /* a bad number, a missing column */
    const char *t4 = "ID,Age\nS01,1\nS02,old\nS03,3\n";
    tu_write_file(csv, t4, strlen(t4));
    rc = emoe_prep_read(&dp, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "row 3: 'old' is not a number");
    o.target_column = "Years";
    rc = emoe_prep_read(&dp, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_ENOTFOUND, "ages.csv: no column 'Years'");
    free(v);
    free(w);
}
END_TEST

/* CSV targets are parsed in time linear in the file (was: each field allocated what was
 * left of the file, so a 2 MB row of empty fields took about a minute) */
/* A folder name/ with one volume S01.nii, and options reading targets from csv (Age by
 * ID); the CSV itself is the caller's. */
static void one_volume(const char *name, const char *csvname, char *dir, size_t dn,
                       char *csv, size_t cn, struct emoe_prep_options *o)
{
    double v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    char vol[700];
    snprintf(dir, dn, "%s", tu_tmppath(name));
    mkdir(dir, 0755);
    snprintf(vol, sizeof vol, "%s/S01.nii", dir);
    write_nifti1(vol, 2, 2, 2, v, 4, 0, 0, 0, 0);
    snprintf(csv, cn, "%s", tu_tmppath(csvname));
    emoe_prep_options_init(o);
    o->targets = csv;
    o->id_column = "ID";
    o->target_column = "Age";
}

START_TEST(test_nifti_csv_wide_row)
{
    char dir[512], csv[600];
    struct emoe_prep_options o;
    one_volume("wide", "wide.csv", dir, sizeof dir, csv, sizeof csv, &o);
    size_t commas = 2000000;
    const char *head = "ID,Age\nS01,42";
    size_t hl = strlen(head);
    char *text = malloc(hl + commas + 1);
    memcpy(text, head, hl);
    memset(text + hl, ',', commas);
    text[hl + commas] = '\n';
    tu_write_file(csv, text, hl + commas + 1);
    free(text);
    struct emoe_prep_result res;
    struct emoe_dataset *d = prep1(dir, &o, &res);
    ck_assert_int_eq(d->labels->shape[0], 1);
    ck_assert(((const float *)d->labels->data)[0] == 42.0f);
    emoe_dataset_free(d);
}
END_TEST

/* Repeated ids are found in time n log n (was: a pairwise check, so 100000 distinct ids
 * took minutes) */
START_TEST(test_nifti_csv_many_rows)
{
    char dir[512], csv[600];
    struct emoe_prep_options o;
    one_volume("many", "many.csv", dir, sizeof dir, csv, sizeof csv, &o);
    size_t rows = 100000, len = 0;
    char *text = malloc(32 + rows * 16);
    len += (size_t)sprintf(text, "ID,Age\nS01,1\n");
    for (size_t i = 0; i < rows; i++)
        len += (size_t)sprintf(text + len, "x%zu,2\n", i);
    tu_write_file(csv, text, len);
    free(text);
    const char *dp = dir;
    struct emoe_dataset *d = NULL;
    struct emoe_error err = {0};
    int rc = emoe_prep_read(&dp, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_ENOTFOUND, "many.csv: row 3: no volume for id 'x0'");
    /* repeats: the first repeating row, reported before a later malformed row */
    const char *t2 = "ID,Age\nb,1\nS01,1\na,2\nb,3\nS01,4\na,5\n";
    tu_write_file(csv, t2, strlen(t2));
    rc = emoe_prep_read(&dp, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "many.csv: row 5: id 'b' repeats row 2");
    const char *t3 = "ID,Age\nS01,1\na,2\na,3\nS01,4\nc,old\n";
    tu_write_file(csv, t3, strlen(t3));
    rc = emoe_prep_read(&dp, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "many.csv: row 4: id 'a' repeats row 3");
    const char *t4 = "ID,Age\nS01,1\na,2\nc,old\na,3\n";
    tu_write_file(csv, t4, strlen(t4));
    rc = emoe_prep_read(&dp, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "many.csv: row 4: 'old' is not a number");
}
END_TEST

START_TEST(test_nifti_bad_files)
{
    double v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    const char *p = tu_tmppath("t.nii");
    write_nifti1(p, 2, 2, 2, v, 4, 0, 0, 0, 0);
    size_t n;
    unsigned char *b = tu_read_file(p, &n);
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    o.format = EMOE_PREP_NIFTI;
    struct emoe_error err = {0};
    struct emoe_dataset *d = NULL;
    /* truncated data */
    tu_write_file(p, b, n - 3);
    int rc = emoe_prep_read(&p, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "t.nii: truncated voxel data");
    /* unsupported datatype */
    b[70] = 128; /* RGB24 */
    tu_write_file(p, b, n);
    rc = emoe_prep_read(&p, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EUNSUPPORTED, "unsupported NIfTI datatype 128");
    b[70] = 4;
    /* a 4-D series */
    b[40] = 4;
    b[48] = 3;
    tu_write_file(p, b, n);
    rc = emoe_prep_read(&p, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EUNSUPPORTED, "only 3-D volumes");
    b[40] = 3;
    /* a dimension that is zero */
    b[42] = 0;
    tu_write_file(p, b, n);
    rc = emoe_prep_read(&p, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "bad dim[1] 0");
    b[42] = 2;
    /* not NIfTI */
    b[0] = 7;
    tu_write_file(p, b, n);
    rc = emoe_prep_read(&p, 1, &o, &d, NULL, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "not a NIfTI file");
    ck_assert_ptr_null(d);
    free(b);
}
END_TEST

START_TEST(test_dataset_write_npz)
{
    struct jset s;
    make_jset(&s, "", 16, 16);
    const char *p = tu_tmppath("w.zip");
    write_archive(p, "zip", s.b, s.n);
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    struct emoe_prep_result res;
    struct emoe_dataset *d = prep1(p, &o, &res);
    struct emoe_error err = {0};
    ck_assert_int_eq(emoe_dataset_compute_stats(d, &err), EMOE_OK);
    const char *out = tu_tmppath("ds.npz");
    ck_assert_int_eq(emoe_dataset_write(out, d, &err), EMOE_OK);
    struct emoe_npz *z;
    ck_assert_int_eq(emoe_npz_open(out, &z, &err), EMOE_OK);
    struct emoe_tensor *t;
    ck_assert_int_eq(emoe_npz_read(z, "images", &t, &err), EMOE_OK);
    ck_assert_int_eq(t->dtype, EMOE_U8);
    ck_assert_int_eq(t->ndim, 4);
    ck_assert_int_eq(t->shape[0], NCLS * PER);
    ck_assert_int_eq(t->shape[3], 3);
    ck_assert_mem_eq(t->data, d->images->data, d->images->nbytes);
    emoe_tensor_free(t);
    ck_assert_int_eq(emoe_npz_read(z, "labels", &t, &err), EMOE_OK);
    ck_assert_int_eq(t->dtype, EMOE_I64);
    ck_assert_mem_eq(t->data, d->labels->data, d->labels->nbytes);
    emoe_tensor_free(t);
    ck_assert_int_eq(emoe_npz_read(z, "mean", &t, &err), EMOE_OK);
    ck_assert_int_eq(t->dtype, EMOE_F32);
    ck_assert_int_eq(t->shape[0], 3);
    ck_assert(((float *)t->data)[0] == d->mean[0]);
    emoe_tensor_free(t);
    ck_assert_int_eq(emoe_npz_read(z, "std", &t, &err), EMOE_OK);
    ck_assert(((float *)t->data)[2] == d->std[2]);
    emoe_tensor_free(t);
    char **names;
    size_t n;
    ck_assert_int_eq(emoe_npz_read_strings(z, "classes", &names, &n, &err), EMOE_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(names[0], "ant");
    ck_assert_str_eq(names[2], "zebra");
    emoe_npy_strings_free(names);
    emoe_npz_close(z);
    /* a folder that does not exist: an error, nothing written */
    const char *bad = tu_tmppath("no/such/dir/x.npz");
    ck_assert_int_ne(emoe_dataset_write(bad, d, &err), EMOE_OK);
    ck_assert_ptr_nonnull(strstr(err.msg, "x.npz"));
    ck_assert(!tu_file_exists(bad));
    emoe_dataset_free(d);
    free_jset(&s);
}
END_TEST

START_TEST(test_synthetic)
{
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    o.format = EMOE_PREP_SYNTHETIC;
    o.seed = 3;
    o.limit = 40;
    struct emoe_error err = {0};
    struct emoe_dataset *a, *b;
    ck_assert_int_eq(emoe_prep_read(NULL, 0, &o, &a, NULL, &err), EMOE_OK);
    ck_assert_int_eq(a->images->shape[0], 40);
    ck_assert_int_eq(a->images->shape[1], 32);
    ck_assert_int_eq(a->images->shape[3], 3);
    ck_assert_uint_eq(a->nclasses, 8);
    ck_assert_str_eq(a->classes[0], "circle");
    for (int i = 0; i < 40; i++)
        ck_assert_int_eq(label_at(a, (size_t)i), i % 8);
    /* deterministic, and independent of the thread count */
    int t0 = emoe_threads_get();
    emoe_threads_set(1);
    ck_assert_int_eq(emoe_prep_read(NULL, 0, &o, &b, NULL, &err), EMOE_OK);
    emoe_threads_set(t0);
    ck_assert_mem_eq(a->images->data, b->images->data, a->images->nbytes);
    emoe_dataset_free(b);
    o.seed = 4;
    ck_assert_int_eq(emoe_prep_read(NULL, 0, &o, &b, NULL, &err), EMOE_OK);
    ck_assert(memcmp(a->images->data, b->images->data, a->images->nbytes) != 0);
    emoe_dataset_free(b);
    /* not a blank image: some spread in every image */
    for (int i = 0; i < 40; i++) {
        const unsigned char *p = (const unsigned char *)a->images->data + (size_t)i * 32 * 32 * 3;
        int lo = 255, hi = 0;
        for (int k = 0; k < 32 * 32 * 3; k++) {
            lo = p[k] < lo ? p[k] : lo;
            hi = p[k] > hi ? p[k] : hi;
        }
        ck_assert_int_gt(hi - lo, 50);
    }
    emoe_dataset_free(a);
    /* per class, gray, 16 x 16 */
    o.limit = 0;
    o.per_class = 3;
    o.channels = 1;
    o.size = 16;
    ck_assert_int_eq(emoe_prep_read(NULL, 0, &o, &a, NULL, &err), EMOE_OK);
    ck_assert_int_eq(a->images->shape[0], 24);
    ck_assert_int_eq(a->images->shape[3], 1);
    emoe_dataset_free(a);
    /* volumes with an age target */
    emoe_prep_options_init(&o);
    o.format = EMOE_PREP_SYNTHETIC;
    o.volumes = 1;
    o.limit = 6;
    o.size = 12;
    ck_assert_int_eq(emoe_prep_read(NULL, 0, &o, &a, NULL, &err), EMOE_OK);
    ck_assert_int_eq(a->images->dtype, EMOE_F32);
    ck_assert_int_eq(a->images->ndim, 5);
    ck_assert_int_eq(a->images->shape[0], 6);
    ck_assert_int_eq(a->images->shape[3], 12);
    ck_assert_int_eq(a->images->shape[4], 1);
    ck_assert_int_eq(a->labels->dtype, EMOE_F32);
    for (int i = 0; i < 6; i++) {
        float t = ((float *)a->labels->data)[i];
        ck_assert(t >= 20 && t < 80);
    }
    ck_assert_ptr_null(a->classes);
    emoe_dataset_free(a);
}
END_TEST

START_TEST(test_per_class_interleaved_labels)
{
    /* MNIST-like: labels interleaved in file order */
    unsigned char *img, *lab;
    size_t ni, nl;
    make_idx(&img, &ni, &lab, &nl, 40, 4, 4);
    const char *ip = tu_tmppath("pc-images-idx3-ubyte"), *lp = tu_tmppath("pc-labels-idx1-ubyte");
    tu_write_file(ip, img, ni);
    tu_write_file(lp, lab, nl);
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    o.per_class = 2;
    o.seed = 11;
    struct emoe_prep_result res;
    struct emoe_dataset *d = prep1(ip, &o, &res);
    ck_assert_int_eq(d->images->shape[0], 20);
    int count[10] = {0};
    for (int i = 0; i < 20; i++)
        count[label_at(d, (size_t)i)]++;
    for (int k = 0; k < 10; k++)
        ck_assert_int_eq(count[k], 2);
    emoe_dataset_free(d);
    free(img);
    free(lab);
}
END_TEST

START_TEST(test_stats)
{
    struct emoe_error err = {0};
    struct emoe_dataset *d = calloc(1, sizeof *d);
    int64_t shape[4] = {2, 1, 2, 3};
    ck_assert_int_eq(emoe_tensor_new(EMOE_U8, 4, shape, &d->images, &err), EMOE_OK);
    unsigned char v[12] = {0, 255, 10, 255, 255, 10, 0, 255, 10, 255, 255, 10};
    memcpy(d->images->data, v, 12);
    ck_assert_int_eq(emoe_dataset_compute_stats(d, &err), EMOE_OK);
    ck_assert_int_eq(d->stats_channels, 3);
    ck_assert(fabsf(d->mean[0] - 0.5f) < 1e-6f);
    ck_assert(fabsf(d->std[0] - 0.5f) < 1e-6f);
    ck_assert(fabsf(d->mean[1] - 1.0f) < 1e-6f);
    ck_assert(fabsf(d->std[1]) < 1e-6f);
    ck_assert(fabsf(d->mean[2] - 10.0f / 255) < 1e-6f);
    emoe_dataset_free(d);
}
END_TEST

START_TEST(test_options_and_names)
{
    enum emoe_prep_format f;
    ck_assert_int_eq(emoe_prep_format_from_name("cifar100", &f), EMOE_OK);
    ck_assert_int_eq(f, EMOE_PREP_CIFAR100);
    ck_assert_str_eq(emoe_prep_format_name(EMOE_PREP_TINYIMAGENET), "tinyimagenet");
    ck_assert_int_eq(emoe_prep_format_from_name("png", &f), EMOE_EINVAL);
    struct emoe_prep_options o;
    emoe_prep_options_init(&o);
    struct emoe_error err = {0};
    struct emoe_dataset *d = NULL;
    const char *src = "x";
    o.channels = 2;
    tu_assert_error(emoe_prep_read(&src, 1, &o, &d, NULL, &err), err, EMOE_EINVAL, "channels");
    o.channels = 0;
    o.split = "dev";
    tu_assert_error(emoe_prep_read(&src, 1, &o, &d, NULL, &err), err, EMOE_EINVAL, "split");
    o.split = NULL;
    tu_assert_error(emoe_prep_read(&src, 0, &o, &d, NULL, &err), err, EMOE_EINVAL, "no source");
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("prep");
    TCase *tc = tcase_create("prep");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_mnist_plain_and_gz);
    tcase_add_test(tc, test_mnist_errors);
    tcase_add_test(tc, test_mnist_header_counts_bounded);
    tcase_add_test(tc, test_cifar10_archive_and_bins);
    tcase_add_test(tc, test_cifar10_store_grows);
    tcase_add_test(tc, test_cifar100_fine_coarse);
    tcase_add_test(tc, test_cifar_errors);
    tcase_add_test(tc, test_imagefolder_layouts_agree);
    tcase_add_test(tc, test_imagefolder_native_size_and_subdir);
    tcase_add_test(tc, test_imagefolder_split_read_ahead);
    tcase_add_test(tc, test_zip_split_reads_its_stretch);
    tcase_add_test(tc, test_imagenet_nested_tars);
    tcase_add_test(tc, test_tinyimagenet);
    tcase_add_test(tc, test_detect_many_members);
    tcase_add_test(tc, test_hidden_and_macos_members);
    tcase_add_test(tc, test_utf8_member_names);
    tcase_add_test(tc, test_imagenet_val_label_file);
    tcase_add_test(tc, test_imagefolder_corrupt_jpeg);
    tcase_add_test(tc, test_imagefolder_class_all_corrupt_keeps_labels);
    tcase_add_test(tc, test_imagefolder_large_members_decode_order);
    tcase_add_test(tc, test_imagefolder_bad_archives);
    tcase_add_test(tc, test_selection);
    tcase_add_test(tc, test_nifti_types_and_targets);
    tcase_add_test(tc, test_nifti_bad_files);
    tcase_add_test(tc, test_dataset_write_npz);
    tcase_add_test(tc, test_synthetic);
    tcase_add_test(tc, test_per_class_interleaved_labels);
    tcase_add_test(tc, test_stats);
    tcase_add_test(tc, test_options_and_names);
    TCase *tv = tcase_create("csv");
    tcase_set_timeout(tv, 10);
    tcase_add_test(tv, test_nifti_csv_wide_row);
    tcase_add_test(tv, test_nifti_csv_many_rows);
    suite_add_tcase(s, tc);
    suite_add_tcase(s, tv);
    return s;
}

int main(void)
{
    return tu_run(suite());
}
