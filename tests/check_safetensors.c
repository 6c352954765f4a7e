/*
 * check_safetensors.c: unit tests of lib/safetensors.c: byte-identical output
 * with the reference writer (the reference's own test vectors and the fixtures
 * of tests/gen_fixtures_safetensors.py), exact reading, zero-copy views that
 * outlive the file handle, and every malformed-input rule of the reference reader.
 */
#include "config.h"
#include "testutil.h"
#include "internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------- helpers */

/* A file made of the u64 length of header, header, then data; returns its path. */
static const char *make_file(const char *name, const char *header, size_t hlen,
                             const void *data, size_t ndata)
{
    const char *path = tu_tmppath(name);
    unsigned char *buf = malloc(8 + hlen + ndata + 1);
    emoe_store_le64(buf, hlen);
    memcpy(buf + 8, header, hlen);
    if (ndata)
        memcpy(buf + 8 + hlen, data, ndata);
    tu_write_file(path, buf, 8 + hlen + ndata);
    free(buf);
    return path;
}

static const char *make_st(const char *header, size_t ndata)
{
    unsigned char *zeros = calloc(1, ndata + 1);
    const char *p = make_file("bad.safetensors", header, strlen(header), zeros, ndata);
    free(zeros);
    return p;
}

/* Open must fail with code and a message naming the file and containing substr. */
static void expect_bad(const char *path, int code, const char *substr)
{
    struct emoe_error err = {0};
    struct emoe_safetensors *st = (struct emoe_safetensors *)1;
    int rc = emoe_safetensors_open(path, &st, &err);
    ck_assert_msg(st == NULL, "handle not NULL on failure (%s)", substr);
    tu_assert_error(rc, err, code, substr);
    ck_assert_msg(strncmp(err.msg, path, strlen(path)) == 0, "message '%s' does not start with "
                  "the file name", err.msg);
}

static void expect_bad_header(const char *header, size_t ndata, int code, const char *substr)
{
    expect_bad(make_st(header, ndata), code, substr);
}

static struct emoe_safetensors *open_ok(const char *path)
{
    struct emoe_error err = {0};
    struct emoe_safetensors *st = NULL;
    int rc = emoe_safetensors_open(path, &st, &err);
    ck_assert_msg(rc == EMOE_OK, "open %s: %s", path, err.msg);
    return st;
}

static void expect_same_file(const char *got_path, const char *want_path)
{
    size_t ng, nw;
    unsigned char *g = tu_read_file(got_path, &ng);
    unsigned char *w = tu_read_file(want_path, &nw);
    size_t i = 0;
    while (i < ng && i < nw && g[i] == w[i])
        i++;
    ck_assert_msg(ng == nw && i == ng, "%s differs from %s at byte %zu (sizes %zu, %zu)",
                  got_path, want_path, i, ng, nw);
    free(g);
    free(w);
}

static void expect_bytes(const char *path, const void *want, size_t nw)
{
    size_t ng;
    unsigned char *g = tu_read_file(path, &ng);
    ck_assert_msg(ng == nw, "%s: %zu bytes, want %zu", path, ng, nw);
    ck_assert_msg(memcmp(g, want, nw) == 0, "%s: wrong bytes", path);
    free(g);
}

/* ---------------------------------------------- the fixtures' tensors */

/* Mirrors mixed_tensors() in tests/gen_fixtures_safetensors.py. */
#define NMIXED 13
struct mixed {
    struct emoe_tensor *t[NMIXED];
    struct emoe_named_tensor nt[NMIXED];
};

static struct emoe_tensor *mk(enum emoe_dtype dt, int ndim, int64_t d0, int64_t d1, int64_t d2,
                              const void *vals)
{
    int64_t shape[3] = {d0, d1, d2};
    struct emoe_tensor *t;
    struct emoe_error err = {0};
    ck_assert_int_eq(emoe_tensor_new(dt, ndim, shape, &t, &err), EMOE_OK);
    if (t->nbytes)
        memcpy(t->data, vals, t->nbytes);
    return t;
}

static void mixed_build(struct mixed *m)
{
    float wf32[6];
    for (int i = 0; i < 6; i++)
        wf32[i] = (float)(i - 2) * 0.25f;
    float af32[2] = {1.5f, -0.5f}, alpha = 0.75f, cls[4] = {0, 1, 2, 3};
    uint16_t f16[3] = {0x3C00, 0xC000, 0x3555}, bf16[4] = {0x3F80, 0xBF80, 0x4049, 0};
    int64_t i64[2] = {-5, (int64_t)1 << 40};
    uint8_t u8[5] = {0, 1, 127, 128, 255}, mask[3] = {1, 0, 1};
    double f64[2] = {0.1, -2.5};
    int32_t count = 42, bi32[2] = {-1, 7};
    /* deliberately not in layout order */
    static const char *names[NMIXED] = {"w.f32", "mask", "a.f32", "alpha", "empty", "w.f16",
                                        "w.bf16", "idx.i64", "img.u8", "d.f64", "count",
                                        "b.i32", "vit.cls_token"};
    m->t[0] = mk(EMOE_F32, 2, 2, 3, 0, wf32);
    m->t[1] = mk(EMOE_BOOL, 1, 3, 0, 0, mask);
    m->t[2] = mk(EMOE_F32, 1, 2, 0, 0, af32);
    m->t[3] = mk(EMOE_F32, 0, 0, 0, 0, &alpha);
    m->t[4] = mk(EMOE_F32, 2, 0, 4, 0, NULL);
    m->t[5] = mk(EMOE_F16, 1, 3, 0, 0, f16);
    m->t[6] = mk(EMOE_BF16, 2, 2, 2, 0, bf16);
    m->t[7] = mk(EMOE_I64, 1, 2, 0, 0, i64);
    m->t[8] = mk(EMOE_U8, 1, 5, 0, 0, u8);
    m->t[9] = mk(EMOE_F64, 1, 2, 0, 0, f64);
    m->t[10] = mk(EMOE_I32, 0, 0, 0, 0, &count);
    m->t[11] = mk(EMOE_I32, 1, 2, 0, 0, bi32);
    m->t[12] = mk(EMOE_F32, 3, 1, 1, 4, cls);
    for (int i = 0; i < NMIXED; i++) {
        m->nt[i].name = names[i];
        m->nt[i].tensor = m->t[i];
    }
}

static void mixed_free(struct mixed *m)
{
    for (int i = 0; i < NMIXED; i++)
        emoe_tensor_free(m->t[i]);
}

/* MIXED_META of the generator, given here in another order. */
static const struct emoe_kv mixed_meta[] = {
    {"unicode", "\xc3\xa9\xe6\x97\xa5\xe6\x9c\xac\xf0\x9f\x98\x80"},
    {"escapes", "say \"hi\" \\ a/b\ttab\r\b\f\x01\x1f\x7f end"},
    {"emoe.version", "1"},
    {"empty", ""},
    {"data.classes", "cat\ndog"},
};
#define NMETA (sizeof mixed_meta / sizeof *mixed_meta)

/* The data order the reference writer gives the mixed tensors. */
static const char *const mixed_order[NMIXED] = {
    "idx.i64", "d.f64", "a.f32", "alpha", "empty", "vit.cls_token", "w.f32",
    "b.i32", "count", "w.bf16", "w.f16", "img.u8", "mask"};

static void expect_tensor_eq(const struct emoe_tensor *got, const struct emoe_tensor *want,
                             const char *name)
{
    ck_assert_msg(got->dtype == want->dtype, "%s: dtype %d, want %d", name, got->dtype,
                  want->dtype);
    ck_assert_msg(got->ndim == want->ndim, "%s: rank %d, want %d", name, got->ndim, want->ndim);
    for (int d = 0; d < got->ndim; d++)
        ck_assert_msg(got->shape[d] == want->shape[d], "%s: shape differs", name);
    ck_assert_uint_eq(got->nbytes, want->nbytes);
    if (want->nbytes)
        ck_assert_msg(memcmp(got->data, want->data, want->nbytes) == 0, "%s: data differs",
                      name);
}

/* ----------------------------------------------------------------- tests */

/* The byte strings asserted by the reference's own tests (tensor.rs:
 * test_serialization, test_serialization_forced_alignement, test_empty). */
START_TEST(test_writer_matches_reference_test_vectors)
{
    struct emoe_error err = {0};
    float v[6] = {0, 1, 2, 3, 4, 5};
    int64_t s3[3] = {1, 2, 3}, s4[4] = {1, 1, 2, 3};
    struct emoe_tensor *t;
    ck_assert_int_eq(emoe_tensor_wrap(EMOE_F32, 3, s3, v, &t, &err), EMOE_OK);
    struct emoe_named_tensor nt = {"attn.0", t};
    const char *path = tu_tmppath("ref1.safetensors");
    ck_assert_int_eq(emoe_safetensors_write(path, &nt, 1, NULL, 0, &err), EMOE_OK);
    const char *h1 = "{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}";
    unsigned char want[8 + 72 + 24];
    ck_assert_uint_eq(strlen(h1), 64); /* a multiple of 8: no padding */
    emoe_store_le64(want, 64);
    memcpy(want + 8, h1, 64);
    memcpy(want + 72, v, 24);
    expect_bytes(path, want, 8 + 64 + 24);
    emoe_tensor_free(t);

    ck_assert_int_eq(emoe_tensor_wrap(EMOE_F32, 4, s4, v, &t, &err), EMOE_OK);
    nt.name = "attn0";
    nt.tensor = t;
    ck_assert_int_eq(emoe_safetensors_write(path, &nt, 1, NULL, 0, &err), EMOE_OK);
    const char *h2 = "{\"attn0\":{\"dtype\":\"F32\",\"shape\":[1,1,2,3],\"data_offsets\":[0,24]}}";
    ck_assert_uint_eq(strlen(h2), 65);
    emoe_store_le64(want, 72);
    memcpy(want + 8, h2, 65);
    memset(want + 8 + 65, ' ', 7);
    memcpy(want + 80, v, 24);
    expect_bytes(path, want, 8 + 72 + 24);
    emoe_tensor_free(t);

    /* no tensors, no metadata: 8, "{}" and six spaces */
    ck_assert_int_eq(emoe_safetensors_write(path, NULL, 0, NULL, 0, &err), EMOE_OK);
    expect_bytes(path, "\x08\0\0\0\0\0\0\0{}      ", 16);
    /* no tensors, metadata {"framework": "pt"} */
    struct emoe_kv fw = {"framework", "pt"};
    ck_assert_int_eq(emoe_safetensors_write(path, NULL, 0, &fw, 1, &err), EMOE_OK);
    expect_bytes(path, "\x28\0\0\0\0\0\0\0{\"__metadata__\":{\"framework\":\"pt\"}}     ", 48);
}
END_TEST

START_TEST(test_writer_matches_python_fixtures)
{
    struct emoe_error err = {0};
    struct mixed m;
    mixed_build(&m);
    const char *path = tu_tmppath("mixed.safetensors");
    ck_assert_int_eq(emoe_safetensors_write(path, m.nt, NMIXED, mixed_meta, NMETA, &err),
                     EMOE_OK);
    expect_same_file(path, tu_fixture("st_mixed.safetensors"));

    /* metadata None (meta NULL) and {} (meta given, nmeta 0) */
    float xv[2] = {1, 2};
    uint8_t yv[3] = {1, 2, 3};
    struct emoe_tensor *x = mk(EMOE_F32, 1, 2, 0, 0, xv), *y = mk(EMOE_U8, 1, 3, 0, 0, yv);
    struct emoe_named_tensor small[2] = {{"y", y}, {"x", x}};
    ck_assert_int_eq(emoe_safetensors_write(path, small, 2, NULL, 0, &err), EMOE_OK);
    expect_same_file(path, tu_fixture("st_nometa.safetensors"));
    ck_assert_int_eq(emoe_safetensors_write(path, small, 2, mixed_meta, 0, &err), EMOE_OK);
    expect_same_file(path, tu_fixture("st_emptymeta.safetensors"));
    ck_assert_int_eq(emoe_safetensors_write(path, NULL, 0, NULL, 0, &err), EMOE_OK);
    expect_same_file(path, tu_fixture("st_notensors.safetensors"));
    emoe_tensor_free(x);
    emoe_tensor_free(y);
    mixed_free(&m);
}
END_TEST

START_TEST(test_reader_reads_fixture_exactly)
{
    struct emoe_error err = {0};
    struct mixed m;
    mixed_build(&m);
    struct emoe_safetensors *st = open_ok(tu_fixture("st_mixed.safetensors"));
    ck_assert_uint_eq(emoe_safetensors_count(st), NMIXED);
    for (size_t i = 0; i < NMIXED; i++)
        ck_assert_str_eq(emoe_safetensors_name(st, i), mixed_order[i]);
    ck_assert_ptr_null(emoe_safetensors_name(st, NMIXED));
    struct emoe_tensor *keep = NULL;
    for (int i = 0; i < NMIXED; i++) {
        struct emoe_tensor *t;
        ck_assert_int_eq(emoe_safetensors_get(st, m.nt[i].name, &t, &err), EMOE_OK);
        expect_tensor_eq(t, m.t[i], m.nt[i].name);
        /* the writer aligns the data: every tensor is a view into the mapping */
        ck_assert_int_eq(t->buf->kind, EMOE_BUFFER_MMAP);
        if (strcmp(m.nt[i].name, "d.f64") == 0)
            keep = t;
        else
            emoe_tensor_free(t);
    }
    /* metadata in header order (sorted by the writer) */
    ck_assert_uint_eq(emoe_safetensors_metadata_count(st), NMETA);
    static const char *keys[NMETA] = {"data.classes", "emoe.version", "empty", "escapes",
                                      "unicode"};
    for (size_t i = 0; i < NMETA; i++) {
        ck_assert_str_eq(emoe_safetensors_metadata_key(st, i), keys[i]);
        const char *want = NULL;
        for (size_t k = 0; k < NMETA; k++)
            if (strcmp(mixed_meta[k].key, keys[i]) == 0)
                want = mixed_meta[k].value;
        ck_assert_str_eq(emoe_safetensors_metadata_value(st, i), want);
    }
    ck_assert_ptr_null(emoe_safetensors_metadata_key(st, NMETA));
    ck_assert_str_eq(emoe_safetensors_metadata_get(st, "escapes"), mixed_meta[1].value);
    ck_assert_ptr_null(emoe_safetensors_metadata_get(st, "nope"));
    struct emoe_tensor *t = (struct emoe_tensor *)1;
    tu_assert_error(emoe_safetensors_get(st, "zz", &t, &err), err, EMOE_ENOTFOUND,
                    "st_mixed.safetensors: no tensor 'zz'");
    ck_assert_ptr_null(t);
    emoe_safetensors_close(st);
    emoe_safetensors_close(NULL);
    /* a view stays valid after close */
    ck_assert(((double *)keep->data)[0] == 0.1 && ((double *)keep->data)[1] == -2.5);
    emoe_tensor_free(keep);
    mixed_free(&m);
}
END_TEST

START_TEST(test_reader_accepts_other_writers)
{
    struct emoe_error err = {0};
    /* pretty JSON, odd header length, header order unlike data order, an extra key */
    struct emoe_safetensors *st = open_ok(tu_fixture("st_loose.safetensors"));
    ck_assert_uint_eq(emoe_safetensors_count(st), 2);
    ck_assert_str_eq(emoe_safetensors_name(st, 0), "first");
    ck_assert_str_eq(emoe_safetensors_name(st, 1), "z");
    ck_assert_str_eq(emoe_safetensors_metadata_get(st, "k"), "v");
    struct emoe_tensor *z, *f;
    ck_assert_int_eq(emoe_safetensors_get(st, "z", &z, &err), EMOE_OK);
    ck_assert_int_eq(emoe_safetensors_get(st, "first", &f, &err), EMOE_OK);
    emoe_safetensors_close(st);
    /* misaligned F32 data is copied into aligned memory */
    ck_assert_uint_eq((uintptr_t)z->data % 4, 0);
    ck_assert(((float *)z->data)[0] == 0.5f && ((float *)z->data)[1] == -4.0f);
    ck_assert_int_eq(((uint8_t *)f->data)[0], 9);
    ck_assert_int_eq(((uint8_t *)f->data)[2], 7);
    emoe_tensor_free(z);
    emoe_tensor_free(f);

    /* the reference's reader tests: rank 0, zero-sized, whitespace-padded header */
    const char *path = make_file("r0.safetensors",
                                 "{\"test\":{\"dtype\":\"I32\",\"shape\":[],"
                                 "\"data_offsets\":[0,4]}}",
                                 56, "\x2a\0\0\0", 4);
    st = open_ok(path);
    struct emoe_tensor *t;
    ck_assert_int_eq(emoe_safetensors_get(st, "test", &t, &err), EMOE_OK);
    ck_assert_int_eq(t->ndim, 0);
    ck_assert_uint_eq(t->nelem, 1);
    ck_assert_int_eq(*(int32_t *)t->data, 42);
    emoe_tensor_free(t);
    emoe_safetensors_close(st);
    const char *h = "{\"test\":{\"dtype\":\"I32\",\"shape\":[2,0],\"data_offsets\":[0, 0]}}";
    st = open_ok(make_file("zero.safetensors", h, strlen(h), NULL, 0));
    ck_assert_int_eq(emoe_safetensors_get(st, "test", &t, &err), EMOE_OK);
    ck_assert_uint_eq(t->nbytes, 0);
    ck_assert_int_eq(t->shape[1], 0);
    emoe_tensor_free(t);
    emoe_safetensors_close(st);
    st = open_ok(make_file("ws.safetensors", "{}\r \t\n", 6, NULL, 0));
    ck_assert_uint_eq(emoe_safetensors_count(st), 0);
    ck_assert_uint_eq(emoe_safetensors_metadata_count(st), 0);
    emoe_safetensors_close(st);
    /* "__metadata__": null is no metadata (serde's Option) */
    h = "{\"__metadata__\":null,\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
    st = open_ok(make_file("null.safetensors", h, strlen(h), "x", 1));
    ck_assert_uint_eq(emoe_safetensors_metadata_count(st), 0);
    emoe_safetensors_close(st);
    /* empty tensors may share an offset with their neighbours, in any header order */
    h = "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
        "\"e\":{\"dtype\":\"F64\",\"shape\":[0],\"data_offsets\":[4,4]},"
        "\"a\":{\"dtype\":\"U8\",\"shape\":[0,3],\"data_offsets\":[0,0]}}";
    st = open_ok(make_file("empties.safetensors", h, strlen(h), "abcd", 4));
    ck_assert_str_eq(emoe_safetensors_name(st, 0), "a");
    ck_assert_str_eq(emoe_safetensors_name(st, 1), "b");
    ck_assert_str_eq(emoe_safetensors_name(st, 2), "e");
    emoe_safetensors_close(st);
}
END_TEST

START_TEST(test_round_trip)
{
    struct emoe_error err = {0};
    struct mixed m;
    mixed_build(&m);
    const char *p1 = tu_tmppath("a.safetensors"), *p2 = tu_tmppath("b.safetensors");
    ck_assert_int_eq(emoe_safetensors_write(p1, m.nt, NMIXED, mixed_meta, NMETA, &err), EMOE_OK);
    /* read back, write again from the views: identical file */
    struct emoe_safetensors *st = open_ok(p1);
    struct emoe_tensor *t[NMIXED];
    struct emoe_named_tensor nt[NMIXED];
    struct emoe_kv kv[NMETA];
    for (size_t i = 0; i < NMIXED; i++) {
        nt[i].name = emoe_safetensors_name(st, i);
        ck_assert_int_eq(emoe_safetensors_get(st, nt[i].name, &t[i], &err), EMOE_OK);
        nt[i].tensor = t[i];
    }
    for (size_t i = 0; i < NMETA; i++) {
        kv[i].key = emoe_safetensors_metadata_key(st, i);
        kv[i].value = emoe_safetensors_metadata_value(st, i);
    }
    ck_assert_int_eq(emoe_safetensors_write(p2, nt, NMIXED, kv, NMETA, &err), EMOE_OK);
    expect_same_file(p2, p1);
    /* overwrite the file we are reading from: the old mapping stays intact */
    ck_assert_int_eq(emoe_safetensors_write(p1, nt, 1, NULL, 0, &err), EMOE_OK);
    for (size_t i = 0; i < NMIXED; i++) {
        for (int k = 0; k < NMIXED; k++)
            if (strcmp(m.nt[k].name, nt[i].name) == 0)
                expect_tensor_eq(t[i], m.t[k], nt[i].name);
    }
    emoe_safetensors_close(st);
    for (size_t i = 0; i < NMIXED; i++)
        emoe_tensor_free(t[i]);
    mixed_free(&m);
}
END_TEST

START_TEST(test_read_stdin_and_pipe)
{
    struct emoe_error err = {0};
    size_t n;
    void *bytes = tu_read_file(tu_fixture("st_nometa.safetensors"), &n);
    /* a pipe on stdin: read as a stream */
    int fd[2];
    ck_assert_int_eq(pipe(fd), 0);
    ck_assert(write(fd[1], bytes, n) == (ssize_t)n);
    close(fd[1]);
    ck_assert_int_eq(dup2(fd[0], STDIN_FILENO), STDIN_FILENO);
    close(fd[0]);
    struct emoe_safetensors *st = open_ok("-");
    struct emoe_tensor *x;
    ck_assert_int_eq(emoe_safetensors_get(st, "x", &x, &err), EMOE_OK);
    ck_assert(((float *)x->data)[1] == 2.0f);
    emoe_tensor_free(x);
    emoe_safetensors_close(st);
    /* a truncated stream names <stdin> */
    ck_assert_int_eq(pipe(fd), 0);
    ck_assert(write(fd[1], bytes, 20) == 20);
    close(fd[1]);
    dup2(fd[0], STDIN_FILENO);
    close(fd[0]);
    st = (struct emoe_safetensors *)1;
    tu_assert_error(emoe_safetensors_open("-", &st, &err), err, EMOE_EFORMAT,
                    "<stdin>: header length 112 runs past the end of the file (20 bytes)");
    ck_assert_ptr_null(st);
    free(bytes);
}
END_TEST

START_TEST(test_reject_bad_framing)
{
    expect_bad(tu_tmppath("missing.safetensors"), EMOE_ENOTFOUND, "No such file");
    ck_assert_int_eq(mkdir(tu_tmppath("dir.safetensors"), 0700), 0);
    expect_bad(tu_tmppath("dir.safetensors"), EMOE_EINVAL, "is a directory");
    const char *path = tu_tmppath("bad.safetensors");
    tu_write_file(path, "", 0);
    expect_bad(path, EMOE_EFORMAT, "file too small for a safetensors header (0 bytes");
    tu_write_file(path, "\x02\0\0\0\0\0\0", 7);
    expect_bad(path, EMOE_EFORMAT, "(7 bytes, at least 8 needed)");
    /* header length limit, and past the end of the file */
    unsigned char b[64] = {0};
    emoe_store_le64(b, 100000001);
    memcpy(b + 8, "{}", 2);
    tu_write_file(path, b, 16);
    expect_bad(path, EMOE_ERANGE, "header length 100000001 exceeds the limit of 100000000 bytes");
    emoe_store_le64(b, UINT64_MAX);
    tu_write_file(path, b, 16);
    expect_bad(path, EMOE_ERANGE, "exceeds the limit");
    emoe_store_le64(b, 100);
    tu_write_file(path, b, 20);
    expect_bad(path, EMOE_EFORMAT, "header length 100 runs past the end of the file (20 bytes)");
    /* exactly 8 bytes: an empty header is not JSON */
    emoe_store_le64(b, 0);
    tu_write_file(path, b, 8);
    expect_bad(path, EMOE_EFORMAT, "header: invalid JSON at byte 0: unexpected end");
}
END_TEST

START_TEST(test_reject_bad_header)
{
    expect_bad_header("{\"a\":", 0, EMOE_EFORMAT,
                      "bad.safetensors: header: invalid JSON at byte 5");
    expect_bad_header("{\"a\":1}}", 0, EMOE_EFORMAT, "trailing characters");
    expect_bad_header("{\"\xff\":1}", 0, EMOE_EFORMAT, "header is not valid UTF-8 (byte 2)");
    expect_bad_header("{} \xc3", 0, EMOE_EFORMAT, "header is not valid UTF-8 (byte 3)");
    expect_bad_header("[1]", 0, EMOE_EFORMAT, "header is a JSON array, not an object");
    expect_bad_header("\"s\"", 0, EMOE_EFORMAT, "header is a JSON string, not an object");
    expect_bad_header("{\"__metadata__\":{\"a\":\"x\",\"n\":1}}", 0, EMOE_EFORMAT,
                      "metadata 'n' is a JSON number, not a string");
    expect_bad_header("{\"__metadata__\":{\"a\":null}}", 0, EMOE_EFORMAT,
                      "metadata 'a' is a JSON null, not a string");
    expect_bad_header("{\"__metadata__\":{\"a\":[\"x\"]}}", 0, EMOE_EFORMAT,
                      "metadata 'a' is a JSON array");
    expect_bad_header("{\"__metadata__\":\"x\"}", 0, EMOE_EFORMAT,
                      "\"__metadata__\" is a JSON string, not an object");
    expect_bad_header("{\"__metadata__\":{\"a\":\"x\\u0000y\"}}", 0, EMOE_EUNSUPPORTED,
                      "metadata 'a' contains a NUL character");
    expect_bad_header("{\"__metadata__\":{},\"__metadata__\":{}}", 0, EMOE_EFORMAT,
                      "duplicate key '__metadata__'");
    expect_bad_header("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, EMOE_EFORMAT,
                      "duplicate key 'k'");
    /* nesting: the reference's serde_json stops at 128 levels, so do we */
    char deep[700];
    int k = snprintf(deep, sizeof deep,
                     "{\"t\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1],\"x\":");
    memset(deep + k, '[', 200);
    memset(deep + k + 200, ']', 200);
    strcpy(deep + k + 400, "}}");
    expect_bad_header(deep, 1, EMOE_EFORMAT, "nested deeper than 128 levels");
}
END_TEST

#define T(name, dtype, shape, offs) \
    "\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":" offs "}"

START_TEST(test_reject_bad_tensor_entries)
{
    expect_bad_header("{\"a\":[1]}", 0, EMOE_EFORMAT,
                      "tensor 'a': the entry is a JSON array, not an object");
    expect_bad_header("{" T("a", "F33", "[1]", "[0,4]") "}", 4, EMOE_EFORMAT,
                      "tensor 'a': unknown dtype 'F33'");
    expect_bad_header("{" T("a", "f32", "[1]", "[0,4]") "}", 4, EMOE_EFORMAT,
                      "unknown dtype 'f32'");
    expect_bad_header("{" T("a", "F8_E4M3", "[1]", "[0,1]") "}", 1, EMOE_EUNSUPPORTED,
                      "tensor 'a': unsupported dtype 'F8_E4M3'");
    expect_bad_header("{\"a\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, EMOE_EFORMAT,
                      "tensor 'a': missing \"dtype\"");
    expect_bad_header("{\"a\":{\"dtype\":1,\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                      EMOE_EFORMAT, "\"dtype\" is a JSON number, not a string");
    expect_bad_header("{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, EMOE_EFORMAT,
                      "tensor 'a': missing \"shape\"");
    expect_bad_header("{\"a\":{\"dtype\":\"U8\",\"shape\":1,\"data_offsets\":[0,1]}}", 1,
                      EMOE_EFORMAT, "\"shape\" is a JSON number, not an array");
    expect_bad_header("{" T("a", "U8", "[2,-1]", "[0,0]") "}", 0, EMOE_EFORMAT,
                      "tensor 'a': shape element 1 is not a non-negative integer");
    expect_bad_header("{" T("a", "U8", "[1.5]", "[0,1]") "}", 1, EMOE_EFORMAT,
                      "shape element 0 is not a non-negative integer");
    expect_bad_header("{" T("a", "U8", "[1e0]", "[0,1]") "}", 1, EMOE_EFORMAT,
                      "shape element 0 is not");
    expect_bad_header("{" T("a", "U8", "[\"1\"]", "[0,1]") "}", 1, EMOE_EFORMAT,
                      "shape element 0 is not");
    expect_bad_header("{" T("a", "U8", "[9223372036854775808]", "[0,0]") "}", 0, EMOE_EFORMAT,
                      "shape element 0 is not");
    /* the reference's ValidationOverflow cases */
    expect_bad_header("{" T("a", "I32", "[2,9223372036854775807]", "[0,16]") "}", 16,
                      EMOE_ERANGE, "bad.safetensors: tensor 'a': shape");
    expect_bad_header("{" T("a", "U8", "[4294967296,4294967296,2]", "[0,0]") "}", 0,
                      EMOE_ERANGE, "overflows");
    expect_bad_header("{" T("a", "U8", "[1,1,1,1,1,1,1]", "[0,1]") "}", 1, EMOE_EUNSUPPORTED,
                      "tensor 'a': rank 7 is more than emoe supports (6)");
    expect_bad_header("{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, EMOE_EFORMAT,
                      "tensor 'a': missing \"data_offsets\"");
    expect_bad_header("{" T("a", "U8", "[1]", "[1]") "}", 1, EMOE_EFORMAT,
                      "\"data_offsets\" is not [BEGIN, END]");
    expect_bad_header("{" T("a", "U8", "[1]", "[0,1,2]") "}", 1, EMOE_EFORMAT,
                      "\"data_offsets\" is not [BEGIN, END]");
    expect_bad_header("{" T("a", "U8", "[1]", "[-1,0]") "}", 1, EMOE_EFORMAT,
                      "\"data_offsets\" is not [BEGIN, END]");
    expect_bad_header("{" T("a", "U8", "[1]", "[0,1.0]") "}", 1, EMOE_EFORMAT,
                      "\"data_offsets\" is not [BEGIN, END]");
    expect_bad_header("{" T("a", "U8", "[1]", "{}") "}", 1, EMOE_EFORMAT,
                      "\"data_offsets\" is not [BEGIN, END]");
    expect_bad_header("{" T("a\\u0000b", "U8", "[1]", "[0,1]") "}", 1, EMOE_EUNSUPPORTED,
                      "tensor 'a?b': the name contains a NUL character");
    expect_bad_header("{" T("a", "U8", "[1]", "[0,1]") "," T("a", "U8", "[1]", "[1,2]") "}", 2,
                      EMOE_EFORMAT, "bad.safetensors: header: duplicate key 'a' at byte 53");
}
END_TEST

START_TEST(test_reject_bad_layout)
{
    /* the brief's example message, whole */
    const char *h = "{" T("vit.cls_token", "F32", "[1,1,4]", "[0,12]") "}";
    const char *path = make_st(h, 12);
    struct emoe_error err = {0};
    struct emoe_safetensors *st;
    ck_assert_int_eq(emoe_safetensors_open(path, &st, &err), EMOE_EFORMAT);
    char want[600];
    snprintf(want, sizeof want, "%s: tensor 'vit.cls_token': data_offsets [0, 12] do not match "
             "shape [1, 1, 4] of F32 (16 bytes)", path);
    ck_assert_str_eq(err.msg, want);

    expect_bad_header("{" T("s", "I32", "[]", "[0,8]") "}", 8, EMOE_EFORMAT,
                      "tensor 's': data_offsets [0, 8] do not match shape [] of I32 (4 bytes)");
    /* out of range: the tensors need more data than the file has */
    expect_bad_header("{" T("a", "F32", "[4]", "[0,16]") "}", 8, EMOE_EFORMAT,
                      "truncated: the tensors need 16 bytes of data, the file has 8");
    expect_bad_header("{" T("a", "U8", "[1]", "[9223372036854775806,9223372036854775807]") "}",
                      1, EMOE_EFORMAT, "must begin at 0");
    /* overlapping, gaps, not starting at 0, reversed */
    expect_bad_header("{" T("a", "F32", "[2]", "[0,8]") "," T("b", "F32", "[2]", "[4,12]") "}",
                      12, EMOE_EFORMAT,
                      "tensor 'b': data_offsets [4, 12] overlap tensor 'a' (which ends at 8)");
    expect_bad_header("{" T("a", "F32", "[2]", "[0,8]") "," T("b", "F32", "[2]", "[0,8]") "}",
                      8, EMOE_EFORMAT, "overlap tensor 'a'");
    expect_bad_header("{" T("b", "F32", "[2]", "[12,20]") "," T("a", "F32", "[2]", "[0,8]") "}",
                      20, EMOE_EFORMAT,
                      "tensor 'b': data_offsets [12, 20] leave a gap of 4 bytes after tensor "
                      "'a' (which ends at 8)");
    expect_bad_header("{" T("a", "F32", "[2]", "[4,12]") "}", 12, EMOE_EFORMAT,
                      "tensor 'a': data_offsets [4, 12]: the first tensor in the data buffer "
                      "must begin at 0");
    expect_bad_header("{" T("a", "F32", "[2]", "[0,8]") "," T("b", "U8", "[0]", "[8,0]") "}", 8,
                      EMOE_EFORMAT, "tensor 'b': data_offsets [8, 0] end before they begin");
    /* trailing bytes (a polyglot file) */
    expect_bad_header("{" T("a", "F32", "[2]", "[0,8]") "}", 11, EMOE_EFORMAT,
                      "3 trailing bytes after the tensor data (the tensors end at byte 8 of the "
                      "11-byte data buffer)");
    expect_bad_header("{}", 1, EMOE_EFORMAT, "1 trailing bytes");
    /* the reference's test_json_attack: ten tensors all at [0, 16] */
    char big[2000] = "{";
    for (int i = 0; i < 10; i++) {
        char one[120];
        snprintf(one, sizeof one, "%s\"weight_%d\":{\"dtype\":\"F32\",\"shape\":[2,2],"
                 "\"data_offsets\":[0,16]}", i ? "," : "", i);
        strcat(big, one);
    }
    strcat(big, "}");
    expect_bad_header(big, 16, EMOE_EFORMAT, "overlap tensor 'weight_");
}
END_TEST

START_TEST(test_writer_rejects_bad_input)
{
    struct emoe_error err = {0};
    float v[2] = {1, 2};
    int64_t s1[1] = {2};
    struct emoe_tensor *a, *b;
    ck_assert_int_eq(emoe_tensor_wrap(EMOE_F32, 1, s1, v, &a, &err), EMOE_OK);
    ck_assert_int_eq(emoe_tensor_wrap(EMOE_U8, 1, s1, v, &b, &err), EMOE_OK);
    const char *path = tu_tmppath("w.safetensors");
    struct emoe_named_tensor dup[3] = {{"x", a}, {"y", a}, {"x", b}}; /* dtypes differ */
    tu_assert_error(emoe_safetensors_write(path, dup, 3, NULL, 0, &err), err, EMOE_EINVAL,
                    "w.safetensors: tensor name 'x' appears twice");
    struct emoe_named_tensor res = {"__metadata__", a};
    tu_assert_error(emoe_safetensors_write(path, &res, 1, NULL, 0, &err), err, EMOE_EINVAL,
                    "tensor name '__metadata__' is reserved");
    struct emoe_named_tensor bad = {"caf\xe9", a};
    tu_assert_error(emoe_safetensors_write(path, &bad, 1, NULL, 0, &err), err, EMOE_EINVAL,
                    "is not valid UTF-8");
    struct emoe_named_tensor none = {NULL, a};
    tu_assert_error(emoe_safetensors_write(path, &none, 1, NULL, 0, &err), err, EMOE_EINVAL,
                    "tensor 0 has no name");
    struct emoe_named_tensor ok = {"", a}; /* the reference allows an empty name */
    struct emoe_kv kv[2] = {{"k", "1"}, {"k", "2"}};
    tu_assert_error(emoe_safetensors_write(path, &ok, 1, kv, 2, &err), err, EMOE_EINVAL,
                    "metadata key 'k' appears twice");
    struct emoe_kv kb = {"k", "\xff"};
    tu_assert_error(emoe_safetensors_write(path, &ok, 1, &kb, 1, &err), err, EMOE_EINVAL,
                    "metadata 'k' is not valid UTF-8");
    ck_assert(!tu_file_exists(path));
    ck_assert_int_eq(emoe_safetensors_write(path, &ok, 1, NULL, 0, &err), EMOE_OK);
    struct emoe_safetensors *st = open_ok(path);
    ck_assert_str_eq(emoe_safetensors_name(st, 0), "");
    emoe_safetensors_close(st);
    /* a failed write leaves the target alone */
    tu_assert_error(emoe_safetensors_write(tu_tmppath("no/such/dir/x.safetensors"), &ok, 1, NULL,
                                           0, &err),
                    err, EMOE_EIO, "no/such/dir/x.safetensors");
    emoe_tensor_free(a);
    emoe_tensor_free(b);
}
END_TEST

/* Random damage to a good file: every open either succeeds (and every tensor can
 * be read) or fails cleanly with a message naming the file. */
START_TEST(test_mutations_fail_cleanly)
{
    size_t n;
    unsigned char *good = tu_read_file(tu_fixture("st_mixed.safetensors"), &n);
    unsigned char *buf = malloc(n);
    const char *path = tu_tmppath("mut.safetensors");
    uint64_t seed = 12345;
    int opened = 0;
    for (int iter = 0; iter < 2000; iter++) {
        memcpy(buf, good, n);
        size_t len = n;
        int nflip = 1 + iter % 3;
        for (int k = 0; k < nflip; k++) {
            seed = seed * 6364136223846793005u + 1442695040888963407u;
            size_t at = (size_t)(seed >> 33) % (iter % 2 ? 600 : n); /* mostly the header */
            seed = seed * 6364136223846793005u + 1442695040888963407u;
            buf[at] = (unsigned char)(seed >> 56);
        }
        if (iter % 7 == 0)
            len = (size_t)(seed >> 20) % n;
        unlink(path); /* a new file each time: rewriting one in place makes ext4 flush */
        tu_write_file(path, buf, len);
        struct emoe_error err = {0};
        struct emoe_safetensors *st = NULL;
        int rc = emoe_safetensors_open(path, &st, &err);
        if (rc == EMOE_OK) {
            opened++;
            for (size_t i = 0; i < emoe_safetensors_count(st); i++) {
                struct emoe_tensor *t;
                ck_assert_int_eq(emoe_safetensors_get(st, emoe_safetensors_name(st, i), &t, &err),
                                 EMOE_OK);
                volatile unsigned char sink = 0;
                for (size_t b = 0; b < t->nbytes; b++)
                    sink ^= ((unsigned char *)t->data)[b];
                (void)sink;
                emoe_tensor_free(t);
            }
            emoe_safetensors_close(st);
        } else {
            ck_assert_ptr_null(st);
            ck_assert_msg(rc == EMOE_EFORMAT || rc == EMOE_ERANGE || rc == EMOE_EUNSUPPORTED,
                          "status %d: %s", rc, err.msg);
            ck_assert_msg(strncmp(err.msg, path, strlen(path)) == 0, "'%s'", err.msg);
        }
    }
    ck_assert_int_gt(opened, 0); /* flips inside the data leave valid files */
    free(buf);
    free(good);
}
END_TEST

static Suite *safetensors_suite(void)
{
    Suite *s = suite_create("safetensors");
    TCase *w = tcase_create("write");
    tcase_add_test(w, test_writer_matches_reference_test_vectors);
    tcase_add_test(w, test_writer_matches_python_fixtures);
    tcase_add_test(w, test_writer_rejects_bad_input);
    suite_add_tcase(s, w);
    TCase *r = tcase_create("read");
    tcase_add_test(r, test_reader_reads_fixture_exactly);
    tcase_add_test(r, test_reader_accepts_other_writers);
    tcase_add_test(r, test_round_trip);
    tcase_add_test(r, test_read_stdin_and_pipe);
    suite_add_tcase(s, r);
    TCase *m = tcase_create("malformed");
    tcase_set_timeout(m, 60); /* the mutation test writes 2000 files */
    tcase_add_test(m, test_reject_bad_framing);
    tcase_add_test(m, test_reject_bad_header);
    tcase_add_test(m, test_reject_bad_tensor_entries);
    tcase_add_test(m, test_reject_bad_layout);
    tcase_add_test(m, test_mutations_fail_cleanly);
    suite_add_tcase(s, m);
    return s;
}

int main(void)
{
    return tu_run(safetensors_suite());
}
