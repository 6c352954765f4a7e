/*
 * check_dataset_read.c: unit tests of lib/dataset_read.c: datasets written with
 * emoe_dataset_write (or member by member with the .npz writer) read back intact,
 * and malformed datasets rejected with messages naming the file and the member.
 */
#include "config.h"
#include "testutil.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static struct emoe_tensor *new_tensor(enum emoe_dtype dt, int ndim, const int64_t *shape)
{
    struct emoe_tensor *t = NULL;
    struct emoe_error err;
    ck_assert_int_eq(emoe_tensor_new(dt, ndim, shape, &t, &err), EMOE_OK);
    return t;
}

/* A u8 [n, 4, 4, 3] image tensor with pixel values from the index. */
static struct emoe_tensor *make_images(int64_t n)
{
    int64_t shape[4] = {n, 4, 4, 3};
    struct emoe_tensor *t = new_tensor(EMOE_U8, 4, shape);
    unsigned char *p = t->data;
    for (size_t i = 0; i < t->nelem; i++)
        p[i] = (unsigned char)(i * 7 % 251);
    return t;
}

START_TEST(test_roundtrip_classify)
{
    struct emoe_dataset d = {0};
    d.images = make_images(5);
    int64_t n = 5;
    d.labels = new_tensor(EMOE_I64, 1, &n);
    int64_t *l = d.labels->data;
    for (int i = 0; i < 5; i++)
        l[i] = i % 3;
    char *names[3] = {"cat", "dog", "b\xc3\xa9te"};
    d.classes = names;
    d.nclasses = 3;
    struct emoe_error err;
    ck_assert_int_eq(emoe_dataset_compute_stats(&d, &err), EMOE_OK);
    const char *path = tu_tmppath("rt.npz");
    ck_assert_int_eq(emoe_dataset_write(path, &d, &err), EMOE_OK);

    struct emoe_dataset *r = NULL;
    ck_assert_msg(emoe_dataset_read(path, &r, &err) == EMOE_OK, "%s", err.msg);
    ck_assert_int_eq(r->images->dtype, EMOE_U8);
    ck_assert_int_eq(r->images->ndim, 4);
    ck_assert_int_eq(r->images->shape[0], 5);
    ck_assert_int_eq(r->images->shape[3], 3);
    ck_assert_mem_eq(r->images->data, d.images->data, d.images->nbytes);
    ck_assert_int_eq(r->labels->dtype, EMOE_I64);
    ck_assert_mem_eq(r->labels->data, d.labels->data, 5 * sizeof(int64_t));
    ck_assert_uint_eq(r->nclasses, 3);
    ck_assert_str_eq(r->classes[2], "b\xc3\xa9te");
    ck_assert_int_eq(r->has_stats, 1);
    ck_assert_int_eq(r->stats_channels, 3);
    for (int k = 0; k < 3; k++) {
        ck_assert_float_eq(r->mean[k], d.mean[k]);
        ck_assert_float_eq(r->std[k], d.std[k]);
    }
    emoe_dataset_free(r);
    emoe_tensor_free(d.images);
    emoe_tensor_free(d.labels);
}
END_TEST

/* The fingerprint: size and shape in words, and a crc32 that sees every image and
 * label byte (the value is zlib's crc32 of the bytes, checked independently). */
START_TEST(test_fingerprint)
{
    struct emoe_dataset d = {0};
    d.images = make_images(5);
    int64_t n = 5;
    d.labels = new_tensor(EMOE_I64, 1, &n);
    char a[128], b[128], want[128];
    emoe_dataset_fingerprint(&d, a, sizeof a);
    uLong crc = crc32(0L, Z_NULL, 0);
    crc = crc32(crc, d.images->data, (uInt)d.images->nbytes);
    crc = crc32(crc, d.labels->data, (uInt)d.labels->nbytes);
    snprintf(want, sizeof want, "5 x u8[4,4,3], crc32 %08lx", (unsigned long)crc);
    ck_assert_str_eq(a, want);
    ((int64_t *)d.labels->data)[4] = 1;             /* one label */
    emoe_dataset_fingerprint(&d, b, sizeof b);
    ck_assert_str_ne(a, b);
    ((int64_t *)d.labels->data)[4] = 0;
    ((unsigned char *)d.images->data)[47] ^= 1;     /* one bit of the last pixel */
    emoe_dataset_fingerprint(&d, b, sizeof b);
    ck_assert_str_ne(a, b);
    emoe_dataset_fingerprint(&d, b, 12);            /* truncated, terminated */
    ck_assert_str_eq(b, "5 x u8[4,4,");
    emoe_tensor_free(d.images);
    emoe_tensor_free(d.labels);
}
END_TEST

/* int32 labels become i64; no classes and no statistics is fine. */
START_TEST(test_int32_labels_no_classes)
{
    struct emoe_error err;
    const char *path = tu_tmppath("i32.npz");
    struct emoe_npz_writer *w;
    ck_assert_int_eq(emoe_npz_writer_open(path, EMOE_NPZ_DEFLATED, &w, &err), EMOE_OK);
    struct emoe_tensor *img = make_images(4);
    int64_t n = 4;
    struct emoe_tensor *lab = new_tensor(EMOE_I32, 1, &n);
    int32_t *l = lab->data;
    l[0] = 0;
    l[1] = 7;
    l[2] = 1000;
    l[3] = 2;
    ck_assert_int_eq(emoe_npz_writer_add(w, "images", img, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npz_writer_add(w, "labels", lab, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npz_writer_commit(w, &err), EMOE_OK);

    struct emoe_dataset *r;
    ck_assert_msg(emoe_dataset_read(path, &r, &err) == EMOE_OK, "%s", err.msg);
    ck_assert_int_eq(r->labels->dtype, EMOE_I64);
    const int64_t *v = r->labels->data;
    ck_assert_int_eq(v[1], 7);
    ck_assert_int_eq(v[2], 1000);
    ck_assert_ptr_null(r->classes);
    ck_assert_int_eq(r->has_stats, 0);
    emoe_dataset_free(r);
    emoe_tensor_free(img);
    emoe_tensor_free(lab);
}
END_TEST

/* f32 volumes [N, D, H, W, 1] with f32 regression targets, read from stdin. */
START_TEST(test_volumes_regression_stdin)
{
    struct emoe_error err;
    struct emoe_dataset d = {0};
    int64_t shape[5] = {2, 4, 4, 4, 1}, n = 2;
    d.images = new_tensor(EMOE_F32, 5, shape);
    float *p = d.images->data;
    for (size_t i = 0; i < d.images->nelem; i++)
        p[i] = (float)i * 0.5f;
    d.labels = new_tensor(EMOE_F32, 1, &n);
    ((float *)d.labels->data)[0] = 31.5f;
    ((float *)d.labels->data)[1] = 70.25f;
    const char *path = tu_tmppath("vol.npz");
    ck_assert_int_eq(emoe_dataset_write(path, &d, &err), EMOE_OK);

    ck_assert_ptr_nonnull(freopen(path, "rb", stdin));
    struct emoe_dataset *r;
    int rc = emoe_dataset_read("-", &r, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    ck_assert_int_eq(r->images->ndim, 5);
    ck_assert_int_eq(r->labels->dtype, EMOE_F32);
    ck_assert_float_eq(((float *)r->labels->data)[1], 70.25f);
    ck_assert_mem_eq(r->images->data, d.images->data, d.images->nbytes);
    emoe_dataset_free(r);
    emoe_tensor_free(d.images);
    emoe_tensor_free(d.labels);
}
END_TEST

/* Write members as given (NULL: left out). */
static const char *write_npz(const char *name, struct emoe_tensor *images,
                             struct emoe_tensor *labels, const char *const *classes,
                             size_t nclasses)
{
    struct emoe_error err;
    const char *path = tu_tmppath(name);
    struct emoe_npz_writer *w;
    ck_assert_int_eq(emoe_npz_writer_open(path, EMOE_NPZ_STORED, &w, &err), EMOE_OK);
    if (images)
        ck_assert_int_eq(emoe_npz_writer_add(w, "images", images, &err), EMOE_OK);
    if (labels)
        ck_assert_int_eq(emoe_npz_writer_add(w, "labels", labels, &err), EMOE_OK);
    if (classes)
        ck_assert_int_eq(emoe_npz_writer_add_strings(w, "classes", classes, nclasses, &err),
                         EMOE_OK);
    ck_assert_int_eq(emoe_npz_writer_commit(w, &err), EMOE_OK);
    return path;
}

static void expect_error(const char *path, int code, const char *substr)
{
    struct emoe_error err;
    struct emoe_dataset *r = (struct emoe_dataset *)1;
    int rc = emoe_dataset_read(path, &r, &err);
    tu_assert_error(rc, err, code, substr);
    ck_assert_ptr_null(r);
    ck_assert_msg(strstr(err.msg, path) != NULL, "message '%s' lacks the file name", err.msg);
}

START_TEST(test_missing_images)
{
    int64_t n = 3;
    struct emoe_tensor *lab = new_tensor(EMOE_I64, 1, &n);
    const char *path = write_npz("noimg.npz", NULL, lab, NULL, 0);
    expect_error(path, EMOE_EFORMAT, "no member 'images'");
    emoe_tensor_free(lab);
}
END_TEST

START_TEST(test_missing_labels)
{
    struct emoe_tensor *img = make_images(3);
    const char *path = write_npz("nolab.npz", img, NULL, NULL, 0);
    expect_error(path, EMOE_EFORMAT, "no member 'labels'");
    emoe_tensor_free(img);
}
END_TEST

START_TEST(test_label_count_mismatch)
{
    int64_t n = 4;
    struct emoe_tensor *img = make_images(3), *lab = new_tensor(EMOE_I64, 1, &n);
    const char *path = write_npz("count.npz", img, lab, NULL, 0);
    expect_error(path, EMOE_EFORMAT, "member 'labels': shape (4,), expected (3,)");
    emoe_tensor_free(img);
    emoe_tensor_free(lab);
}
END_TEST

START_TEST(test_wrong_dtypes)
{
    int64_t n = 3;
    struct emoe_tensor *img = make_images(3), *lab = new_tensor(EMOE_F64, 1, &n);
    const char *path = write_npz("f64lab.npz", img, lab, NULL, 0);
    expect_error(path, EMOE_EFORMAT, "member 'labels': dtype f64");
    emoe_tensor_free(lab);

    int64_t shape[4] = {3, 2, 2, 1};
    struct emoe_tensor *i16 = new_tensor(EMOE_I16, 4, shape);
    lab = new_tensor(EMOE_I64, 1, &n);
    path = write_npz("i16img.npz", i16, lab, NULL, 0);
    expect_error(path, EMOE_EFORMAT, "member 'images': dtype i16");
    emoe_tensor_free(i16);

    int64_t flat[2] = {3, 12};
    struct emoe_tensor *img2 = new_tensor(EMOE_U8, 2, flat);
    path = write_npz("rank2.npz", img2, lab, NULL, 0);
    expect_error(path, EMOE_EFORMAT, "member 'images': shape (3, 12)");
    emoe_tensor_free(img2);

    int64_t six[4] = {3, 2, 2, 6};
    struct emoe_tensor *img6 = new_tensor(EMOE_U8, 4, six);
    path = write_npz("six.npz", img6, lab, NULL, 0);
    expect_error(path, EMOE_EFORMAT, "6 channels");
    emoe_tensor_free(img6);

    /* classes stored as numbers */
    struct emoe_error err;
    path = tu_tmppath("numclasses.npz");
    struct emoe_npz_writer *w;
    ck_assert_int_eq(emoe_npz_writer_open(path, EMOE_NPZ_STORED, &w, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npz_writer_add(w, "images", img, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npz_writer_add(w, "labels", lab, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npz_writer_add(w, "classes", lab, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npz_writer_commit(w, &err), EMOE_OK);
    expect_error(path, EMOE_EFORMAT, "member 'classes': dtype i64");
    emoe_tensor_free(img);
    emoe_tensor_free(lab);
}
END_TEST

START_TEST(test_label_out_of_range)
{
    int64_t n = 3;
    struct emoe_tensor *img = make_images(3), *lab = new_tensor(EMOE_I64, 1, &n);
    int64_t *l = lab->data;
    l[0] = 0;
    l[1] = 2;
    l[2] = 1;
    static const char *const two[2] = {"a", "b"};
    const char *path = write_npz("range.npz", img, lab, two, 2);
    expect_error(path, EMOE_ERANGE, "label 2 at index 1 is not in [0, 2)");
    l[1] = -1;
    path = write_npz("neg.npz", img, lab, NULL, 0);
    expect_error(path, EMOE_ERANGE, "label -1 at index 1 is out of range");
    emoe_tensor_free(img);
    emoe_tensor_free(lab);
}
END_TEST

START_TEST(test_bad_stats_and_targets)
{
    struct emoe_error err;
    int64_t n = 3, c = 3, c2 = 2;
    struct emoe_tensor *img = make_images(3), *lab = new_tensor(EMOE_I64, 1, &n);
    struct emoe_tensor *m3 = new_tensor(EMOE_F32, 1, &c), *m2 = new_tensor(EMOE_F32, 1, &c2);
    const char *path = tu_tmppath("meanonly.npz");
    struct emoe_npz_writer *w;
    ck_assert_int_eq(emoe_npz_writer_open(path, EMOE_NPZ_STORED, &w, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npz_writer_add(w, "images", img, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npz_writer_add(w, "labels", lab, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npz_writer_add(w, "mean", m3, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npz_writer_commit(w, &err), EMOE_OK);
    expect_error(path, EMOE_EFORMAT, "member 'mean' without 'std'");

    path = tu_tmppath("mean2.npz");
    ck_assert_int_eq(emoe_npz_writer_open(path, EMOE_NPZ_STORED, &w, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npz_writer_add(w, "images", img, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npz_writer_add(w, "labels", lab, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npz_writer_add(w, "mean", m2, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npz_writer_add(w, "std", m2, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npz_writer_commit(w, &err), EMOE_OK);
    expect_error(path, EMOE_EFORMAT, "member 'mean': expected float32 [3]");

    struct emoe_tensor *t = new_tensor(EMOE_F32, 1, &n);
    ((float *)t->data)[2] = 0.0f / 0.0f;
    path = write_npz("nan.npz", img, t, NULL, 0);
    expect_error(path, EMOE_EFORMAT, "non-finite target at index 2");
    ((float *)t->data)[2] = 1.0f;
    static const char *const two[2] = {"a", "b"};
    path = write_npz("regcls.npz", img, t, two, 2);
    expect_error(path, EMOE_EFORMAT, "'classes' given with float32");
    emoe_tensor_free(t);
    emoe_tensor_free(img);
    emoe_tensor_free(lab);
    emoe_tensor_free(m3);
    emoe_tensor_free(m2);
}
END_TEST

START_TEST(test_unreadable)
{
    struct emoe_error err;
    struct emoe_dataset *r = (struct emoe_dataset *)1;
    const char *path = tu_tmppath("does-not-exist.npz");
    int rc = emoe_dataset_read(path, &r, &err);
    ck_assert_int_eq(rc, EMOE_EIO);
    ck_assert_ptr_null(r);
    ck_assert_msg(strstr(err.msg, "does-not-exist.npz") != NULL, "%s", err.msg);
    const char *junk = tu_tmppath("junk.npz");
    tu_write_file(junk, "not a zip file at all, really", 29);
    rc = emoe_dataset_read(junk, &r, &err);
    ck_assert_int_eq(rc, EMOE_EFORMAT);
    ck_assert_ptr_null(r);
    ck_assert_msg(strstr(err.msg, "junk.npz") != NULL, "%s", err.msg);
}
END_TEST

static Suite *dataset_read_suite(void)
{
    Suite *s = suite_create("dataset_read");
    TCase *tc = tcase_create("roundtrip");
    tcase_add_test(tc, test_roundtrip_classify);
    tcase_add_test(tc, test_fingerprint);
    tcase_add_test(tc, test_int32_labels_no_classes);
    tcase_add_test(tc, test_volumes_regression_stdin);
    suite_add_tcase(s, tc);
    TCase *bad = tcase_create("malformed");
    tcase_add_test(bad, test_missing_images);
    tcase_add_test(bad, test_missing_labels);
    tcase_add_test(bad, test_label_count_mismatch);
    tcase_add_test(bad, test_wrong_dtypes);
    tcase_add_test(bad, test_label_out_of_range);
    tcase_add_test(bad, test_bad_stats_and_targets);
    tcase_add_test(bad, test_unreadable);
    suite_add_tcase(s, bad);
    return s;
}

int main(void)
{
    return tu_run(dataset_read_suite());
}
