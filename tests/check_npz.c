/*
 * check_npz.c: unit tests of lib/npz.c (.npz read and write through libarchive).
 *
 * Fixtures (tests/fixtures/npz_*) were written by numpy 1.24 and Python's zipfile
 * (tests/gen_fixtures_npy.py); element i of a numeric member is
 * ((i * 37) % 251 - OFF) * SCALE as in check_npy.c.
 */
#include "config.h"
#include "testutil.h"
#include "internal.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int64_t ival(size_t i, int64_t off, int64_t scale)
{
    return ((int64_t)((i * 37) % 251) - off) * scale;
}

static const char *const dataset_names[] = {"images", "labels", "classes", "weights",
                                            "half_be", "fort", "scalar"};

/* The members np.savez wrote in the generator. */
static void check_dataset(struct emoe_npz *z)
{
    struct emoe_error err = {0};
    struct emoe_tensor *t;
    ck_assert_uint_eq(emoe_npz_count(z), 7);
    for (size_t i = 0; i < 7; i++)
        ck_assert_str_eq(emoe_npz_name(z, i), dataset_names[i]);
    ck_assert(emoe_npz_name(z, 7) == NULL);

    struct emoe_npy_info info;
    ck_assert_int_eq(emoe_npz_info(z, "images", &info, &err), EMOE_OK);
    ck_assert(info.dtype == EMOE_U8 && info.ndim == 4 && info.nbytes == 96 && !info.is_string);
    ck_assert_int_eq(emoe_npz_info(z, "classes", &info, &err), EMOE_OK);
    ck_assert(info.is_string && info.itemsize == 5 && info.nelem == 2);

    ck_assert_int_eq(emoe_npz_read(z, "images", &t, &err), EMOE_OK);
    ck_assert(t->dtype == EMOE_U8 && t->ndim == 4 && t->shape[0] == 2 && t->shape[3] == 3);
    for (size_t i = 0; i < t->nelem; i++)
        ck_assert_int_eq(((uint8_t *)t->data)[i], ival(i, 0, 1));
    emoe_tensor_free(t);

    ck_assert_int_eq(emoe_npz_read(z, "labels", &t, &err), EMOE_OK);
    ck_assert(t->dtype == EMOE_I64 && t->ndim == 1 && t->shape[0] == 2);
    for (size_t i = 0; i < 2; i++)
        ck_assert(((int64_t *)t->data)[i] == ival(i, 125, 1000000000000000ll));
    emoe_tensor_free(t);

    char **s;
    size_t n;
    ck_assert_int_eq(emoe_npz_read_strings(z, "classes", &s, &n, &err), EMOE_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(s[0], "cat");
    ck_assert_str_eq(s[1], "horse");
    emoe_npy_strings_free(s);

    ck_assert_int_eq(emoe_npz_read(z, "weights", &t, &err), EMOE_OK);
    ck_assert(t->dtype == EMOE_F32 && t->nelem == 24);
    for (size_t i = 0; i < 24; i++)
        ck_assert(((float *)t->data)[i] == ival(i, 125, 1) * 0.25);
    emoe_tensor_free(t);

    ck_assert_int_eq(emoe_npz_read(z, "half_be", &t, &err), EMOE_OK);
    ck_assert(t->dtype == EMOE_F16 && t->nelem == 24);
    for (size_t i = 0; i < 24; i++)
        ck_assert(emoe_f16_to_f32(((uint16_t *)t->data)[i]) == ival(i, 125, 1) * 0.25);
    emoe_tensor_free(t);

    ck_assert_int_eq(emoe_npz_read(z, "fort", &t, &err), EMOE_OK);
    ck_assert(t->dtype == EMOE_I32 && t->ndim == 3 && t->shape[2] == 4);
    for (size_t i = 0; i < 24; i++)
        ck_assert(((int32_t *)t->data)[i] == ival(i, 125, 1000003));
    emoe_tensor_free(t);

    ck_assert_int_eq(emoe_npz_read(z, "scalar", &t, &err), EMOE_OK);
    ck_assert(t->dtype == EMOE_F64 && t->ndim == 0 && ((double *)t->data)[0] == 2.5);
    emoe_tensor_free(t);

    /* a member can be read again; errors name file and member */
    ck_assert_int_eq(emoe_npz_read(z, "images", &t, &err), EMOE_OK);
    emoe_tensor_free(t);
    tu_assert_error(emoe_npz_read(z, "nope", &t, &err), err, EMOE_ENOTFOUND,
                    "member 'nope.npy' not found");
    ck_assert(t == NULL);
    tu_assert_error(emoe_npz_read(z, "classes", &t, &err), err, EMOE_EUNSUPPORTED,
                    "member 'classes.npy': '|S5' is a string array");
    tu_assert_error(emoe_npz_read_strings(z, "labels", &s, &n, &err), err, EMOE_EFORMAT,
                    "member 'labels.npy': dtype i64 is not a '|S<n>' string array");
    ck_assert(s == NULL && n == 0);
    tu_assert_error(emoe_npz_info(z, "nope", &info, &err), err, EMOE_ENOTFOUND, "nope.npy");
}

START_TEST(test_npz_reads_numpy_stored_and_deflated)
{
    const char *files[] = {"npz_stored.npz", "npz_deflated.npz"};
    for (int k = 0; k < 2; k++) {
        struct emoe_error err = {0};
        struct emoe_npz *z;
        int rc = emoe_npz_open(tu_fixture(files[k]), &z, &err);
        ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
        check_dataset(z);
        tu_assert_error(emoe_npz_read(z, "nope", &(struct emoe_tensor *){NULL}, &err), err,
                        EMOE_ENOTFOUND, files[k]);
        emoe_npz_close(z);
    }
    emoe_npz_close(NULL);
}
END_TEST

static void check_images_labels(struct emoe_npz *z)
{
    struct emoe_error err = {0};
    struct emoe_tensor *t;
    ck_assert_uint_eq(emoe_npz_count(z), 2);
    ck_assert_str_eq(emoe_npz_name(z, 0), "images");
    ck_assert_str_eq(emoe_npz_name(z, 1), "labels");
    ck_assert_int_eq(emoe_npz_read(z, "images", &t, &err), EMOE_OK);
    for (size_t i = 0; i < t->nelem; i++)
        ck_assert_int_eq(((uint8_t *)t->data)[i], ival(i, 0, 1));
    emoe_tensor_free(t);
    ck_assert_int_eq(emoe_npz_read(z, "labels", &t, &err), EMOE_OK);
    ck_assert(((int64_t *)t->data)[1] == ival(1, 125, 1000000000000000ll));
    emoe_tensor_free(t);
}

START_TEST(test_npz_reads_zip64_and_data_descriptors)
{
    struct emoe_error err = {0};
    struct emoe_npz *z;
    /* force_zip64 members plus a README.txt that is not an array (ignored) */
    ck_assert_int_eq(emoe_npz_open(tu_fixture("npz_zip64.npz"), &z, &err), EMOE_OK);
    check_images_labels(z);
    emoe_npz_close(z);
    /* written to an unseekable stream: sizes in data descriptors */
    ck_assert_int_eq(emoe_npz_open(tu_fixture("npz_streamed.npz"), &z, &err), EMOE_OK);
    check_images_labels(z);
    emoe_npz_close(z);
}
END_TEST

/* Feed a file through a pipe (it must fit the pipe buffer). */
static FILE *pipe_of(const char *path)
{
    size_t n;
    void *bytes = tu_read_file(path, &n);
    ck_assert(n < 60000);
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    ck_assert(write(fds[1], bytes, n) == (ssize_t)n);
    close(fds[1]);
    free(bytes);
    return fdopen(fds[0], "rb");
}

START_TEST(test_npz_reads_streams_and_stdin)
{
    const char *files[] = {"npz_stored.npz", "npz_deflated.npz"};
    for (int k = 0; k < 2; k++) {
        struct emoe_error err = {0};
        struct emoe_npz *z;
        FILE *f = pipe_of(tu_fixture(files[k]));
        int rc = emoe_npz_open_stream(f, "<pipe>", &z, &err);
        ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
        fclose(f);
        check_dataset(z);
        emoe_npz_close(z);
    }
    struct emoe_error err = {0};
    struct emoe_npz *z;
    FILE *f = pipe_of(tu_fixture("npz_streamed.npz"));
    ck_assert(dup2(fileno(f), 0) == 0);
    fclose(f);
    ck_assert_int_eq(emoe_npz_open("-", &z, &err), EMOE_OK);
    check_images_labels(z);
    /* tensors stay valid after close */
    struct emoe_tensor *t;
    ck_assert_int_eq(emoe_npz_read(z, "images", &t, &err), EMOE_OK);
    emoe_npz_close(z);
    ck_assert_int_eq(((uint8_t *)t->data)[5], ival(5, 0, 1));
    emoe_tensor_free(t);
}
END_TEST

/* ------------------------------------------------------------ writing */

static struct emoe_tensor *make_tensor(enum emoe_dtype d, int ndim, const int64_t *shape)
{
    struct emoe_error err = {0};
    struct emoe_tensor *t;
    ck_assert_int_eq(emoe_tensor_new(d, ndim, shape, &t, &err), EMOE_OK);
    unsigned char *p = t->data;
    for (size_t i = 0; i < t->nbytes; i++)
        p[i] = (unsigned char)(i * 131 + 7 + (size_t)d);
    if (d == EMOE_BOOL)
        for (size_t i = 0; i < t->nbytes; i++)
            p[i] &= 1;
    return t;
}

static void assert_same(const struct emoe_tensor *a, const struct emoe_tensor *b)
{
    ck_assert_int_eq(a->dtype, b->dtype);
    ck_assert_int_eq(a->ndim, b->ndim);
    for (int i = 0; i < a->ndim; i++)
        ck_assert(a->shape[i] == b->shape[i]);
    ck_assert_uint_eq(a->nbytes, b->nbytes);
    ck_assert(memcmp(a->data, b->data, a->nbytes) == 0);
}

START_TEST(test_npz_round_trips_every_dtype)
{
    static const char *const classes[] = {"airplane", "automobile", "", "bird"};
    for (int c = 0; c < 2; c++) {
        struct emoe_error err = {0};
        struct emoe_npz_writer *w;
        const char *path = tu_tmppath(c ? "rt_deflated.npz" : "rt_stored.npz");
        ck_assert_int_eq(emoe_npz_writer_open(path, c ? EMOE_NPZ_DEFLATED : EMOE_NPZ_STORED, &w,
                                              &err), EMOE_OK);
        struct emoe_tensor *ts[EMOE_DTYPE_COUNT];
        int64_t shape[3] = {3, 5, 7};
        for (int d = 0; d < EMOE_DTYPE_COUNT; d++) {
            ts[d] = make_tensor((enum emoe_dtype)d, d % 4, shape);
            int rc = emoe_npz_writer_add(w, emoe_dtype_name((enum emoe_dtype)d), ts[d], &err);
            if (d == EMOE_BF16)
                tu_assert_error(rc, err, EMOE_EUNSUPPORTED, "member 'bf16.npy': dtype bf16");
            else
                ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
        }
        ck_assert_int_eq(emoe_npz_writer_add_strings(w, "classes", classes, 4, &err), EMOE_OK);
        tu_assert_error(emoe_npz_writer_add(w, "f32", ts[EMOE_F32], &err), err, EMOE_EINVAL,
                        "duplicate member 'f32'");
        tu_assert_error(emoe_npz_writer_add(w, "", ts[EMOE_F32], &err), err, EMOE_EINVAL,
                        "invalid member name");
        ck_assert_int_eq(emoe_npz_writer_commit(w, &err), EMOE_OK);

        for (int pass = 0; pass < 2; pass++) { /* from the file, then as a stream */
            struct emoe_npz *z;
            if (pass == 0) {
                ck_assert_int_eq(emoe_npz_open(path, &z, &err), EMOE_OK);
            } else {
                FILE *f = fopen(path, "rb");
                ck_assert_int_eq(emoe_npz_open_stream(f, path, &z, &err), EMOE_OK);
                fclose(f);
            }
            ck_assert_uint_eq(emoe_npz_count(z), EMOE_DTYPE_COUNT); /* less bf16, + classes */
            size_t k = 0;
            for (int d = 0; d < EMOE_DTYPE_COUNT; d++) {
                if (d == EMOE_BF16)
                    continue;
                const char *name = emoe_dtype_name((enum emoe_dtype)d);
                ck_assert_str_eq(emoe_npz_name(z, k++), name);
                struct emoe_tensor *r;
                ck_assert_int_eq(emoe_npz_read(z, name, &r, &err), EMOE_OK);
                assert_same(ts[d], r);
                emoe_tensor_free(r);
            }
            char **s;
            size_t n;
            ck_assert_int_eq(emoe_npz_read_strings(z, "classes", &s, &n, &err), EMOE_OK);
            ck_assert_uint_eq(n, 4);
            for (size_t i = 0; i < n; i++)
                ck_assert_str_eq(s[i], classes[i]);
            emoe_npy_strings_free(s);
            emoe_npz_close(z);
        }
        for (int d = 0; d < EMOE_DTYPE_COUNT; d++)
            emoe_tensor_free(ts[d]);
    }
}
END_TEST

START_TEST(test_npz_writer_empty_stdout_and_abort)
{
    struct emoe_error err = {0};
    struct emoe_npz_writer *w;
    struct emoe_npz *z;
    /* an archive without members */
    const char *path = tu_tmppath("empty.npz");
    ck_assert_int_eq(emoe_npz_writer_open(path, EMOE_NPZ_STORED, &w, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npz_writer_commit(w, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npz_open(path, &z, &err), EMOE_OK);
    ck_assert_uint_eq(emoe_npz_count(z), 0);
    emoe_npz_close(z);
    FILE *f = fopen(path, "rb");
    ck_assert_int_eq(emoe_npz_open_stream(f, path, &z, &err), EMOE_OK);
    ck_assert_uint_eq(emoe_npz_count(z), 0);
    emoe_npz_close(z);
    fclose(f);
    /* abort leaves nothing behind; a failed add makes commit fail */
    const char *gone = tu_tmppath("gone.npz");
    ck_assert_int_eq(emoe_npz_writer_open(gone, EMOE_NPZ_DEFLATED, &w, &err), EMOE_OK);
    emoe_npz_writer_abort(w);
    ck_assert(!tu_file_exists(gone));
    emoe_npz_writer_abort(NULL);
    tu_assert_error(emoe_npz_writer_open(gone, (enum emoe_npz_compression)7, &w, &err), err,
                    EMOE_EINVAL, "unknown compression");
    ck_assert(w == NULL);
    tu_assert_error(emoe_npz_writer_open(tu_tmppath("no/such/dir.npz"), EMOE_NPZ_STORED, &w,
                                         &err), err, EMOE_EIO, "dir.npz");
    /* stdout */
    int64_t shape[2] = {4, 4};
    struct emoe_tensor *t = make_tensor(EMOE_F32, 2, shape), *r;
    const char *out = tu_tmppath("stdout.npz");
    fflush(stdout);
    ck_assert(freopen(out, "wb", stdout) != NULL);
    ck_assert_int_eq(emoe_npz_writer_open("-", EMOE_NPZ_DEFLATED, &w, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npz_writer_add(w, "x", t, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npz_writer_commit(w, &err), EMOE_OK);
    fflush(stdout);
    ck_assert_int_eq(emoe_npz_open(out, &z, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npz_read(z, "x", &r, &err), EMOE_OK);
    assert_same(t, r);
    emoe_tensor_free(r);
    emoe_npz_close(z);
    emoe_tensor_free(t);
}
END_TEST

/* ------------------------------------------------------------ mmap */

START_TEST(test_npz_maps_large_stored_members)
{
    struct emoe_error err = {0};
    int64_t big[1] = {(int64_t)20 << 20}, small[1] = {1000};
    struct emoe_tensor *images = make_tensor(EMOE_U8, 1, big);
    struct emoe_tensor *labels = make_tensor(EMOE_I64, 1, small);
    for (int c = 0; c < 2; c++) {
        const char *path = tu_tmppath("big.npz");
        struct emoe_npz_writer *w;
        ck_assert_int_eq(emoe_npz_writer_open(path, c ? EMOE_NPZ_DEFLATED : EMOE_NPZ_STORED, &w,
                                              &err), EMOE_OK);
        ck_assert_int_eq(emoe_npz_writer_add(w, "labels", labels, &err), EMOE_OK);
        ck_assert_int_eq(emoe_npz_writer_add(w, "images", images, &err), EMOE_OK);
        ck_assert_int_eq(emoe_npz_writer_commit(w, &err), EMOE_OK);
        struct emoe_npz *z;
        struct emoe_tensor *r;
        ck_assert_int_eq(emoe_npz_open(path, &z, &err), EMOE_OK);
        ck_assert_int_eq(emoe_npz_read(z, "images", &r, &err), EMOE_OK);
        ck_assert_int_eq(r->buf->kind, c ? EMOE_BUFFER_HEAP : EMOE_BUFFER_MMAP);
        emoe_npz_close(z); /* the view keeps the mapping */
        assert_same(images, r);
        emoe_tensor_free(r);
    }
    emoe_tensor_free(images);
    emoe_tensor_free(labels);
}
END_TEST

/* ------------------------------------------------------------ malformed */

START_TEST(test_npz_rejects_malformed_archives)
{
    struct emoe_error err = {0};
    struct emoe_npz *z = (struct emoe_npz *)1;
    tu_assert_error(emoe_npz_open(tu_fixture("npz_duplicate.npz"), &z, &err), err, EMOE_EFORMAT,
                    "npz_duplicate.npz: duplicate member 'labels.npy'");
    ck_assert(z == NULL);
    tu_assert_error(emoe_npz_open(tu_fixture("npz_badmember.npz"), &z, &err), err, EMOE_EFORMAT,
                    "npz_badmember.npz: member 'bad.npy': malformed header");
    tu_assert_error(emoe_npz_open(tu_fixture("npz_truncmember.npz"), &z, &err), err,
                    EMOE_EFORMAT, "npz_truncmember.npz: member 'x.npy': truncated data (40 of 80");
    tu_assert_error(emoe_npz_open(tu_fixture("npy_f4.npy"), &z, &err), err, EMOE_EFORMAT,
                    "npy_f4.npy: ");
    tu_assert_error(emoe_npz_open(tu_tmppath("missing.npz"), &z, &err), err, EMOE_EIO,
                    "missing.npz: No such file");
    ck_assert(z == NULL);
    /* the same problems through a stream */
    FILE *f = pipe_of(tu_fixture("npz_duplicate.npz"));
    tu_assert_error(emoe_npz_open_stream(f, "d.npz", &z, &err), err, EMOE_EFORMAT,
                    "d.npz: duplicate member 'labels.npy'");
    fclose(f);
    f = pipe_of(tu_fixture("npz_truncmember.npz"));
    tu_assert_error(emoe_npz_open_stream(f, "d.npz", &z, &err), err, EMOE_EFORMAT,
                    "d.npz: member 'x.npy': truncated data");
    fclose(f);

    /* a truncated archive, and a corrupted byte in a stored member's data */
    size_t n;
    unsigned char *bytes = tu_read_file(tu_fixture("npz_stored.npz"), &n);
    const char *path = tu_tmppath("cut.npz");
    tu_write_file(path, bytes, n / 2);
    ck_assert_int_ne(emoe_npz_open(path, &z, &err), EMOE_OK);
    ck_assert(z == NULL && strstr(err.msg, "cut.npz: ") != NULL);
    f = fopen(path, "rb");
    ck_assert_int_ne(emoe_npz_open_stream(f, path, &z, &err), EMOE_OK);
    ck_assert(z == NULL && strstr(err.msg, "cut.npz") != NULL);
    fclose(f);
    /* the last data byte of images.npy (96 bytes ending just before labels' header) */
    unsigned char *lab = NULL;
    for (size_t i = 4; i + 4 <= n && !lab; i++)
        if (memcmp(bytes + i, "PK\x03\x04", 4) == 0)
            lab = bytes + i;
    ck_assert(lab != NULL);
    lab[-1] ^= 0x55;
    path = tu_tmppath("crc.npz");
    tu_write_file(path, bytes, n);
    ck_assert_int_eq(emoe_npz_open(path, &z, &err), EMOE_OK);
    struct emoe_tensor *t;
    int rc = emoe_npz_read(z, "images", &t, &err);
    ck_assert_int_eq(rc, EMOE_EFORMAT);
    ck_assert_msg(strstr(err.msg, "crc.npz: member 'images.npy': ") != NULL, "%s", err.msg);
    ck_assert(t == NULL);
    ck_assert_int_eq(emoe_npz_read(z, "labels", &t, &err), EMOE_OK); /* others still read */
    emoe_tensor_free(t);
    emoe_npz_close(z);
    free(bytes);
}
END_TEST

static Suite *npz_suite(void)
{
    Suite *s = suite_create("npz");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_npz_reads_numpy_stored_and_deflated);
    tcase_add_test(tc, test_npz_reads_zip64_and_data_descriptors);
    tcase_add_test(tc, test_npz_reads_streams_and_stdin);
    tcase_add_test(tc, test_npz_round_trips_every_dtype);
    tcase_add_test(tc, test_npz_writer_empty_stdout_and_abort);
    suite_add_tcase(s, tc);
    TCase *tm = tcase_create("malformed");
    tcase_add_test(tm, test_npz_rejects_malformed_archives);
    suite_add_tcase(s, tm);
    TCase *tl = tcase_create("limits");
    tcase_set_timeout(tl, 60);
    tcase_add_test(tl, test_npz_maps_large_stored_members);
    suite_add_tcase(s, tl);
    return s;
}

int main(void)
{
    return tu_run(npz_suite());
}
