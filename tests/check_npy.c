/*
 * check_npy.c: unit tests of lib/npy.c (.npy read and write).
 *
 * Fixtures (tests/fixtures/npy_*) were written by numpy 1.24 (tests/gen_fixtures_npy.py);
 * element i of a numeric fixture is ((i * 37) % 251 - OFF) * SCALE, see value_ok().
 */
#include "config.h"
#include "testutil.h"
#include "internal.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const codes[] = {"f4", "f8", "f2", "u1", "i1", "i2",
                                    "u2", "i4", "u4", "i8", "u8", "b1"};
static const enum emoe_dtype code_dtypes[] = {EMOE_F32, EMOE_F64, EMOE_F16, EMOE_U8,
                                              EMOE_I8,  EMOE_I16, EMOE_U16, EMOE_I32,
                                              EMOE_U32, EMOE_I64, EMOE_U64, EMOE_BOOL};
#define NCODES (sizeof codes / sizeof codes[0])

/* The generator's VALUES table: OFF and SCALE per dtype. */
static void off_scale(enum emoe_dtype d, int64_t *off, uint64_t *scale)
{
    switch (d) {
    case EMOE_U8: *off = 0; *scale = 1; break;
    case EMOE_I8: *off = 125; *scale = 1; break;
    case EMOE_I16: *off = 125; *scale = 100; break;
    case EMOE_U16: *off = 0; *scale = 200; break;
    case EMOE_I32: *off = 125; *scale = 1000003; break;
    case EMOE_U32: *off = 0; *scale = 17000000; break;
    case EMOE_I64: *off = 125; *scale = 1000000000000000ull; break;
    case EMOE_U64: *off = 0; *scale = 70000000000000000ull; break;
    default: *off = 125; *scale = 0; break; /* floats: 0.25 */
    }
}

/* Does element i of t hold the generator's value? */
static int value_ok(const struct emoe_tensor *t, size_t i)
{
    int64_t off;
    uint64_t scale;
    off_scale(t->dtype, &off, &scale);
    int64_t base = (int64_t)((i * 37) % 251) - off;
    const unsigned char *p = (const unsigned char *)t->data + i * emoe_dtype_size(t->dtype);
    switch (t->dtype) {
    case EMOE_BOOL: return *p == (i % 3 == 0);
    case EMOE_F16: { uint16_t h; memcpy(&h, p, 2); return emoe_f16_to_f32(h) == base * 0.25; }
    case EMOE_F32: { float f; memcpy(&f, p, 4); return f == base * 0.25; }
    case EMOE_F64: { double f; memcpy(&f, p, 8); return f == base * 0.25; }
    case EMOE_U8: return *p == (uint64_t)base * scale;
    case EMOE_I8: return (int8_t)*p == base;
    case EMOE_I16: { int16_t v; memcpy(&v, p, 2); return v == base * (int64_t)scale; }
    case EMOE_U16: { uint16_t v; memcpy(&v, p, 2); return v == (uint64_t)base * scale; }
    case EMOE_I32: { int32_t v; memcpy(&v, p, 4); return v == base * (int64_t)scale; }
    case EMOE_U32: { uint32_t v; memcpy(&v, p, 4); return v == (uint64_t)base * scale; }
    case EMOE_I64: { int64_t v; memcpy(&v, p, 8); return v == base * (int64_t)scale; }
    case EMOE_U64: { uint64_t v; memcpy(&v, p, 8); return v == (uint64_t)base * scale; }
    default: return 0;
    }
}

/* Fill t with the generator's values. */
static void fill_values(struct emoe_tensor *t)
{
    int64_t off;
    uint64_t scale;
    off_scale(t->dtype, &off, &scale);
    for (size_t i = 0; i < t->nelem; i++) {
        int64_t base = (int64_t)((i * 37) % 251) - off;
        unsigned char *p = (unsigned char *)t->data + i * emoe_dtype_size(t->dtype);
        switch (t->dtype) {
        case EMOE_BOOL: *p = i % 3 == 0; break;
        case EMOE_F16: { uint16_t h = emoe_f32_to_f16((float)(base * 0.25)); memcpy(p, &h, 2); break; }
        case EMOE_F32: { float f = (float)(base * 0.25); memcpy(p, &f, 4); break; }
        case EMOE_F64: { double f = base * 0.25; memcpy(p, &f, 8); break; }
        case EMOE_U8: *p = (unsigned char)base; break;
        case EMOE_I8: *p = (unsigned char)(int8_t)base; break;
        case EMOE_I16: { int16_t v = (int16_t)(base * (int64_t)scale); memcpy(p, &v, 2); break; }
        case EMOE_U16: { uint16_t v = (uint16_t)((uint64_t)base * scale); memcpy(p, &v, 2); break; }
        case EMOE_I32: { int32_t v = (int32_t)(base * (int64_t)scale); memcpy(p, &v, 4); break; }
        case EMOE_U32: { uint32_t v = (uint32_t)((uint64_t)base * scale); memcpy(p, &v, 4); break; }
        case EMOE_I64: { int64_t v = base * (int64_t)scale; memcpy(p, &v, 8); break; }
        case EMOE_U64: { uint64_t v = (uint64_t)base * scale; memcpy(p, &v, 8); break; }
        default: break;
        }
    }
}

static void assert_fixture_values(const char *file, enum emoe_dtype want)
{
    struct emoe_error err = {0};
    struct emoe_tensor *t;
    int rc = emoe_npy_read(tu_fixture(file), &t, &err);
    ck_assert_msg(rc == EMOE_OK, "%s: %s", file, err.msg);
    ck_assert_int_eq(t->dtype, want);
    ck_assert_int_eq(t->ndim, 3);
    ck_assert(t->shape[0] == 2 && t->shape[1] == 3 && t->shape[2] == 4);
    ck_assert_uint_eq(t->nelem, 24);
    for (size_t i = 0; i < t->nelem; i++)
        ck_assert_msg(value_ok(t, i), "%s: element %zu differs", file, i);
    emoe_tensor_free(t);
}

START_TEST(test_npy_reads_every_dtype_order_and_byte_order)
{
    char name[64];
    for (size_t k = 0; k < NCODES; k++) {
        snprintf(name, sizeof name, "npy_%s.npy", codes[k]);
        assert_fixture_values(name, code_dtypes[k]);
        snprintf(name, sizeof name, "npy_%s_fortran.npy", codes[k]);
        assert_fixture_values(name, code_dtypes[k]);
        if (emoe_dtype_size(code_dtypes[k]) > 1) {
            snprintf(name, sizeof name, "npy_%s_be.npy", codes[k]);
            assert_fixture_values(name, code_dtypes[k]);
            snprintf(name, sizeof name, "npy_%s_be_fortran.npy", codes[k]);
            assert_fixture_values(name, code_dtypes[k]);
        }
    }
    assert_fixture_values("npy_v2.npy", EMOE_F32);
    assert_fixture_values("npy_v3.npy", EMOE_F32);
}
END_TEST

START_TEST(test_npy_reads_scalar_1d_empty_rank6)
{
    struct emoe_error err = {0};
    struct emoe_tensor *t;
    ck_assert_int_eq(emoe_npy_read(tu_fixture("npy_scalar.npy"), &t, &err), EMOE_OK);
    ck_assert_int_eq(t->ndim, 0);
    ck_assert_uint_eq(t->nelem, 1);
    ck_assert(((float *)t->data)[0] == 3.5f);
    emoe_tensor_free(t);
    ck_assert_int_eq(emoe_npy_read(tu_fixture("npy_scalar_i8.npy"), &t, &err), EMOE_OK);
    ck_assert(t->dtype == EMOE_I64 && t->ndim == 0 && ((int64_t *)t->data)[0] == -7);
    emoe_tensor_free(t);
    ck_assert_int_eq(emoe_npy_read(tu_fixture("npy_1d.npy"), &t, &err), EMOE_OK);
    ck_assert(t->dtype == EMOE_I32 && t->ndim == 1 && t->shape[0] == 5);
    for (size_t i = 0; i < 5; i++)
        ck_assert(value_ok(t, i));
    emoe_tensor_free(t);
    ck_assert_int_eq(emoe_npy_read(tu_fixture("npy_empty.npy"), &t, &err), EMOE_OK);
    ck_assert(t->ndim == 1 && t->shape[0] == 0 && t->nbytes == 0);
    emoe_tensor_free(t);
    ck_assert_int_eq(emoe_npy_read(tu_fixture("npy_rank6.npy"), &t, &err), EMOE_OK);
    ck_assert_int_eq(t->ndim, 6);
    ck_assert_uint_eq(t->nelem, 12);
    for (size_t i = 0; i < 12; i++)
        ck_assert(value_ok(t, i));
    emoe_tensor_free(t);
}
END_TEST

/* Read a numpy-written C-order file, write it again: identical bytes. */
static void assert_rewrite_identical(const char *file)
{
    struct emoe_error err = {0};
    struct emoe_tensor *t;
    int rc = emoe_npy_read(tu_fixture(file), &t, &err);
    ck_assert_msg(rc == EMOE_OK, "%s: %s", file, err.msg);
    const char *out = tu_tmppath("rewrite.npy");
    ck_assert_int_eq(emoe_npy_write(out, t, &err), EMOE_OK);
    size_t na, nb;
    unsigned char *a = tu_read_file(tu_fixture(file), &na);
    unsigned char *b = tu_read_file(out, &nb);
    ck_assert_msg(na == nb && memcmp(a, b, na) == 0, "%s: written bytes differ from numpy's",
                  file);
    ck_assert_uint_eq(emoe_npy_header(t, NULL, 0) % 64, 0);
    free(a);
    free(b);
    emoe_tensor_free(t);
}

START_TEST(test_npy_writes_byte_identical_to_numpy)
{
    char name[64];
    for (size_t k = 0; k < NCODES; k++) {
        snprintf(name, sizeof name, "npy_%s.npy", codes[k]);
        assert_rewrite_identical(name);
    }
    const char *more[] = {"npy_scalar.npy", "npy_scalar_i8.npy", "npy_1d.npy", "npy_empty.npy",
                          "npy_rank6.npy"};
    for (size_t k = 0; k < sizeof more / sizeof more[0]; k++)
        assert_rewrite_identical(more[k]);
    /* headers of wide shapes: every padding length numpy produces */
    size_t n;
    char *list = tu_read_file(tu_fixture("npy_wide_shapes.txt"), &n);
    list = realloc(list, n + 1);
    list[n] = 0;
    int count = 0;
    for (char *line = strtok(list, "\n"); line; line = strtok(NULL, "\n")) {
        char file[64];
        ck_assert_int_eq(sscanf(line, "%63s", file), 1);
        assert_rewrite_identical(file);
        count++;
    }
    ck_assert_int_gt(count, 10);
    free(list);
}
END_TEST

START_TEST(test_npy_round_trips_every_dtype)
{
    struct emoe_error err = {0};
    int64_t shapes[3][3] = {{2, 3, 4}, {7, 0, 0}, {0, 0, 0}};
    int ndims[3] = {3, 1, 0};
    ck_assert_int_eq(mkdir(tu_tmppath("rt"), 0777), 0);
    for (int d = 0; d < EMOE_DTYPE_COUNT; d++) {
        for (int s = 0; s < 3; s++) {
            struct emoe_tensor *t, *r;
            ck_assert_int_eq(emoe_tensor_new((enum emoe_dtype)d, ndims[s], shapes[s], &t, &err),
                             EMOE_OK);
            fill_values(t);
            const char *path = tu_tmppath("rt/rt.npy");
            int rc = emoe_npy_write(path, t, &err);
            if (d == EMOE_BF16) {
                tu_assert_error(rc, err, EMOE_EUNSUPPORTED, "no numpy equivalent");
                ck_assert_uint_eq(emoe_npy_header(t, NULL, 0), 0);
                emoe_tensor_free(t);
                continue;
            }
            ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
            ck_assert_int_eq(emoe_npy_read(path, &r, &err), EMOE_OK);
            ck_assert_int_eq(r->dtype, t->dtype);
            ck_assert_int_eq(r->ndim, t->ndim);
            for (int i = 0; i < t->ndim; i++)
                ck_assert(r->shape[i] == t->shape[i]);
            ck_assert_uint_eq(r->nbytes, t->nbytes);
            ck_assert(memcmp(r->data, t->data, t->nbytes) == 0);
            emoe_tensor_free(r);
            emoe_tensor_free(t);
        }
    }
    ck_assert_int_eq(tu_count_dir_entries(tu_tmppath("rt")), 1); /* no temporaries left */
}
END_TEST

/* ------------------------------------------------------------ malformed */

/* A v1 .npy with the given dict text (newline added) and ndata zero data bytes. */
static unsigned char *make_npy(const char *dict, size_t ndata, size_t *size)
{
    size_t dl = strlen(dict);
    size_t total = 10 + dl + 1 + ndata;
    unsigned char *p = calloc(1, total);
    memcpy(p, "\x93NUMPY\x01\x00", 8);
    p[8] = (unsigned char)((dl + 1) & 0xff);
    p[9] = (unsigned char)((dl + 1) >> 8);
    memcpy(p + 10, dict, dl);
    p[10 + dl] = '\n';
    *size = total;
    return p;
}

static void assert_dict_rejected(const char *dict, size_t ndata, int code, const char *substr)
{
    struct emoe_error err = {0};
    struct emoe_tensor *t = (struct emoe_tensor *)1;
    size_t n;
    unsigned char *p = make_npy(dict, ndata, &n);
    int rc = emoe_npy_read_memory(p, n, "m.npy", &t, &err);
    ck_assert_msg(t == NULL, "output not NULL for %s", dict);
    ck_assert_msg(rc == code, "%s: status %d, want %d (%s)", dict, rc, code, err.msg);
    ck_assert_msg(strstr(err.msg, substr) && strncmp(err.msg, "m.npy: ", 7) == 0,
                  "%s: message '%s' lacks '%s'", dict, err.msg, substr);
    /* the same through a file */
    const char *path = tu_tmppath("bad.npy");
    tu_write_file(path, p, n);
    rc = emoe_npy_read(path, &t, &err);
    ck_assert_msg(rc == code && strstr(err.msg, substr) && strstr(err.msg, "bad.npy: "),
                  "file %s: %d %s", dict, rc, err.msg);
    free(p);
}

START_TEST(test_npy_rejects_malformed_headers)
{
    const char *ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
    size_t n;
    unsigned char *p = make_npy(ok, 24, &n);
    struct emoe_error err = {0};
    struct emoe_tensor *t;
    ck_assert_int_eq(emoe_npy_read_memory(p, n, "m.npy", &t, &err), EMOE_OK);
    emoe_tensor_free(t);
    /* other accepted spellings */
    const char *good[] = {
        "{'shape': (2, 3), 'fortran_order': False, 'descr': '<f4'}",
        "{\"descr\":\"<f4\",\"fortran_order\":False,\"shape\":(2,3,)}",
        "{'descr': 'f4', 'fortran_order': False, 'shape': (2L, 3L), }   \t",
        "{'descr': '=f4', 'fortran_order': True, 'shape': (6,), }",
    };
    for (size_t k = 0; k < sizeof good / sizeof good[0]; k++) {
        size_t gn;
        unsigned char *q = make_npy(good[k], 24, &gn);
        int rc = emoe_npy_read_memory(q, gn, "m.npy", &t, &err);
        ck_assert_msg(rc == EMOE_OK, "%s: %s", good[k], err.msg);
        ck_assert_uint_eq(t->nelem, 6);
        emoe_tensor_free(t);
        free(q);
    }
    /* truncated header, bad magic, version, oversized header */
    for (size_t cut = 0; cut < 40; cut += 3) {
        int rc = emoe_npy_read_memory(p, cut, "m.npy", &t, &err);
        tu_assert_error(rc, err, EMOE_EFORMAT, "truncated header");
    }
    unsigned char *q = malloc(n);
    memcpy(q, p, n);
    q[1] = 'X';
    tu_assert_error(emoe_npy_read_memory(q, n, "m.npy", &t, &err), err, EMOE_EFORMAT,
                    "m.npy: not a .npy file (bad magic)");
    memcpy(q, p, n);
    q[6] = 4;
    tu_assert_error(emoe_npy_read_memory(q, n, "m.npy", &t, &err), err, EMOE_EUNSUPPORTED,
                    "unsupported .npy version 4.0");
    memcpy(q, p, n);
    q[8] = 0x20;
    q[9] = 0x4e; /* 20000 */
    tu_assert_error(emoe_npy_read_memory(q, n, "m.npy", &t, &err), err, EMOE_ERANGE,
                    "header length 20000 exceeds the limit of 10000 bytes");
    memcpy(q, p, n);
    q[6] = 2; /* v2 reads a u32 length: 0x... huge */
    q[10] = 0xff;
    q[11] = 0x7f;
    tu_assert_error(emoe_npy_read_memory(q, n, "m.npy", &t, &err), err, EMOE_ERANGE,
                    "exceeds the limit");
    /* truncated data, trailing data */
    tu_assert_error(emoe_npy_read_memory(p, n - 1, "m.npy", &t, &err), err, EMOE_EFORMAT,
                    "m.npy: truncated data (23 of 24 bytes)");
    free(p);
    p = make_npy(ok, 25, &n);
    tu_assert_error(emoe_npy_read_memory(p, n, "m.npy", &t, &err), err, EMOE_EFORMAT,
                    "1 unexpected bytes after the data");
    free(p);
    free(q);

    assert_dict_rejected("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, "
                         "4294967296, 4), }", 0, EMOE_ERANGE, "overflows");
    assert_dict_rejected("{'descr': '<f4', 'fortran_order': False, 'shape': (3, -1), }", 0,
                         EMOE_ERANGE, "negative");
    assert_dict_rejected("{'descr': '<f4', 'fortran_order': False, "
                         "'shape': (99999999999999999999,), }", 0, EMOE_ERANGE, "too large");
    assert_dict_rejected("{'descr': '<f4', 'fortran_order': False, "
                         "'shape': (1, 1, 1, 1, 1, 1, 1), }", 4, EMOE_ERANGE,
                         "rank exceeds the limit of 6");
    /* absurd (but not overflowing) shape: truncated, nothing huge allocated */
    assert_dict_rejected("{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }",
                         16, EMOE_EFORMAT, "truncated data");
    assert_dict_rejected("{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }", 16,
                         EMOE_EUNSUPPORTED, "unsupported dtype '<c8'");
    assert_dict_rejected("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", 16,
                         EMOE_EUNSUPPORTED, "object dtype '|O'");
    assert_dict_rejected("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", 8,
                         EMOE_EUNSUPPORTED, "structured");
    assert_dict_rejected("{'descr': '<f4', 'fortran_order': False, 'shape': (2), }", 8,
                         EMOE_EFORMAT, "trailing comma");
    assert_dict_rejected("{'descr': '<f4', 'fortran_order': False, }", 4, EMOE_EFORMAT,
                         "missing key 'shape'");
    assert_dict_rejected("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, "
                         "'shape': (1,), }", 4, EMOE_EFORMAT, "duplicate key 'descr'");
    assert_dict_rejected("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", 4,
                         EMOE_EFORMAT, "unexpected key 'x'");
    assert_dict_rejected("{'descr': '<f4', 'fortran_order': false, 'shape': (1,), }", 4,
                         EMOE_EFORMAT, "expected True or False");
    assert_dict_rejected("{'descr': '<f4', 'fortran_order': False, 'shape': (1,) ", 4,
                         EMOE_EFORMAT, "expected ',' or '}'");
    assert_dict_rejected("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} x", 4,
                         EMOE_EFORMAT, "unexpected bytes after the dict");
    assert_dict_rejected("{'descr': '<f4, 'fortran_order': False, 'shape': (1,)}", 4,
                         EMOE_EFORMAT, "malformed header");
    assert_dict_rejected("{'descr': '<f4', 'fortran_order': False, 'shape': (1,, 2)}", 4,
                         EMOE_EFORMAT, "expected a dimension");
    assert_dict_rejected("", 0, EMOE_EFORMAT, "malformed header");
    assert_dict_rejected("[]", 0, EMOE_EFORMAT, "expected '{'");
}
END_TEST

START_TEST(test_npy_rejects_unsupported_fixtures)
{
    struct emoe_error err = {0};
    struct emoe_tensor *t;
    tu_assert_error(emoe_npy_read(tu_fixture("npy_object.npy"), &t, &err), err,
                    EMOE_EUNSUPPORTED, "object dtype '|O'");
    ck_assert(t == NULL);
    tu_assert_error(emoe_npy_read(tu_fixture("npy_structured.npy"), &t, &err), err,
                    EMOE_EUNSUPPORTED, "structured");
    tu_assert_error(emoe_npy_read(tu_fixture("npy_unicode.npy"), &t, &err), err,
                    EMOE_EUNSUPPORTED, "unsupported dtype '<U3'");
    tu_assert_error(emoe_npy_read(tu_fixture("npy_complex.npy"), &t, &err), err,
                    EMOE_EUNSUPPORTED, "unsupported dtype '<c8'");
    tu_assert_error(emoe_npy_read(tu_fixture("npy_strings.npy"), &t, &err), err,
                    EMOE_EUNSUPPORTED, "'|S5' is a string array");
    tu_assert_error(emoe_npy_read(tu_tmppath("missing.npy"), &t, &err), err, EMOE_EIO,
                    "missing.npy: No such file");
    ck_assert(t == NULL);
}
END_TEST

/* ------------------------------------------------------------ strings */

START_TEST(test_npy_strings_read_and_write_like_numpy)
{
    struct emoe_error err = {0};
    char **s;
    size_t n;
    ck_assert_int_eq(emoe_npy_read_strings(tu_fixture("npy_strings.npy"), &s, &n, &err),
                     EMOE_OK);
    ck_assert_uint_eq(n, 4);
    ck_assert_str_eq(s[0], "cat");
    ck_assert_str_eq(s[1], "horse");
    ck_assert_str_eq(s[2], "");
    ck_assert_str_eq(s[3], "ox");
    ck_assert(s[4] == NULL);
    const char *out = tu_tmppath("s.npy");
    ck_assert_int_eq(emoe_npy_write_strings(out, (const char *const *)s, n, &err), EMOE_OK);
    emoe_npy_strings_free(s);
    size_t na, nb;
    unsigned char *a = tu_read_file(tu_fixture("npy_strings.npy"), &na);
    unsigned char *b = tu_read_file(out, &nb);
    ck_assert(na == nb && memcmp(a, b, na) == 0);
    free(a);
    free(b);
    /* empty: numpy writes '|S1' with shape (0,) */
    ck_assert_int_eq(emoe_npy_read_strings(tu_fixture("npy_strings_empty.npy"), &s, &n, &err),
                     EMOE_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(emoe_npy_write_strings(out, (const char *const *)s, 0, &err), EMOE_OK);
    emoe_npy_strings_free(s);
    a = tu_read_file(tu_fixture("npy_strings_empty.npy"), &na);
    b = tu_read_file(out, &nb);
    ck_assert(na == nb && memcmp(a, b, na) == 0);
    free(a);
    free(b);
    /* errors */
    tu_assert_error(emoe_npy_read_strings(tu_fixture("npy_f4.npy"), &s, &n, &err), err,
                    EMOE_EFORMAT, "is not a '|S<n>' string array");
    ck_assert(s == NULL && n == 0);
    size_t sz;
    unsigned char *p = make_npy("{'descr': '|S3', 'fortran_order': False, 'shape': (2,), }", 6,
                                &sz);
    memcpy(p + sz - 6, "a\0bcd\0", 6);
    const char *path = tu_tmppath("nul.npy");
    tu_write_file(path, p, sz);
    tu_assert_error(emoe_npy_read_strings(path, &s, &n, &err), err, EMOE_EFORMAT,
                    "nul.npy: string 0 contains a NUL byte");
    free(p);
    /* zero-width items: a header alone must not stand for 2^58 strings (was: a hang) */
    p = make_npy("{'descr': '|S0', 'fortran_order': False, 'shape': (288230376151711744,), }", 0,
                 &sz);
    path = tu_tmppath("s0.npy");
    tu_write_file(path, p, sz);
    tu_assert_error(emoe_npy_read_strings(path, &s, &n, &err), err, EMOE_EUNSUPPORTED,
                    "s0.npy: unsupported dtype '|S0'");
    ck_assert(s == NULL && n == 0);
    free(p);
}
END_TEST

/* ------------------------------------------------------------ streams */

START_TEST(test_npy_reads_from_pipe_and_stdin)
{
    struct emoe_error err = {0};
    size_t n;
    unsigned char *bytes = tu_read_file(tu_fixture("npy_i4.npy"), &n);
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    /* two arrays back to back (fits in the pipe buffer) */
    ck_assert(write(fds[1], bytes, n) == (ssize_t)n);
    ck_assert(write(fds[1], bytes, n) == (ssize_t)n);
    close(fds[1]);
    FILE *f = fdopen(fds[0], "rb");
    struct emoe_tensor *t;
    for (int k = 0; k < 2; k++) {
        ck_assert_int_eq(emoe_npy_read_stream(f, "<pipe>", &t, &err), EMOE_OK);
        ck_assert_uint_eq(t->nelem, 24);
        for (size_t i = 0; i < 24; i++)
            ck_assert(value_ok(t, i));
        emoe_tensor_free(t);
    }
    tu_assert_error(emoe_npy_read_stream(f, "<pipe>", &t, &err), err, EMOE_EFORMAT,
                    "<pipe>: truncated header (0 of 10 bytes)");
    fclose(f);
    /* "-" is stdin, and must end after the array */
    ck_assert_int_eq(pipe(fds), 0);
    ck_assert(write(fds[1], bytes, n) == (ssize_t)n);
    close(fds[1]);
    ck_assert(dup2(fds[0], 0) == 0);
    close(fds[0]);
    ck_assert_int_eq(emoe_npy_read("-", &t, &err), EMOE_OK);
    ck_assert(value_ok(t, 5));
    emoe_tensor_free(t);
    ck_assert_int_eq(pipe(fds), 0);
    ck_assert(write(fds[1], bytes, n - 3) == (ssize_t)(n - 3));
    close(fds[1]);
    clearerr(stdin);
    ck_assert(dup2(fds[0], 0) == 0);
    close(fds[0]);
    tu_assert_error(emoe_npy_read("-", &t, &err), err, EMOE_EFORMAT,
                    "<stdin>: truncated data (93 of 96 bytes)");
    free(bytes);
}
END_TEST

START_TEST(test_npy_writes_to_stdout)
{
    struct emoe_error err = {0};
    struct emoe_tensor *t;
    ck_assert_int_eq(emoe_npy_read(tu_fixture("npy_f8.npy"), &t, &err), EMOE_OK);
    const char *path = tu_tmppath("stdout.npy");
    fflush(stdout);
    ck_assert(freopen(path, "wb", stdout) != NULL);
    ck_assert_int_eq(emoe_npy_write("-", t, &err), EMOE_OK);
    fflush(stdout);
    size_t na, nb;
    unsigned char *a = tu_read_file(tu_fixture("npy_f8.npy"), &na);
    unsigned char *b = tu_read_file(path, &nb);
    ck_assert(na == nb && memcmp(a, b, na) == 0);
    free(a);
    free(b);
    emoe_tensor_free(t);
}
END_TEST

/* ------------------------------------------------------------ mmap */

START_TEST(test_npy_maps_large_native_files)
{
    struct emoe_error err = {0};
    int64_t shape[2] = {5 << 20, 1}; /* 20 MiB of f32, above the 16 MiB threshold */
    struct emoe_tensor *t, *r;
    ck_assert_int_eq(emoe_tensor_new(EMOE_F32, 2, shape, &t, &err), EMOE_OK);
    for (size_t i = 0; i < t->nelem; i++)
        ((float *)t->data)[i] = (float)i;
    const char *path = tu_tmppath("big.npy");
    ck_assert_int_eq(emoe_npy_write(path, t, &err), EMOE_OK);
    ck_assert_int_eq(emoe_npy_read(path, &r, &err), EMOE_OK);
    ck_assert_int_eq(r->buf->kind, EMOE_BUFFER_MMAP);
    ck_assert_uint_eq(r->nbytes, t->nbytes);
    ck_assert(memcmp(r->data, t->data, t->nbytes) == 0);
    emoe_tensor_free(r);
    /* the same file marked big-endian: mapped, then copied and swapped */
    FILE *f = fopen(path, "r+b");
    char hdr[128];
    ck_assert(fread(hdr, 1, sizeof hdr, f) == sizeof hdr);
    char *d = strstr(hdr + 10, "'<f4'");
    ck_assert(d != NULL);
    fseek(f, d - hdr + 1, SEEK_SET);
    fputc('>', f);
    fclose(f);
    ck_assert_int_eq(emoe_npy_read(path, &r, &err), EMOE_OK);
    ck_assert_int_eq(r->buf->kind, EMOE_BUFFER_HEAP);
    for (size_t i = 0; i < r->nelem; i += 4099) {
        float v = ((float *)t->data)[i];
        emoe_bswap_inplace(&v, 1, 4);
        ck_assert(memcmp(&v, (float *)r->data + i, 4) == 0);
    }
    emoe_tensor_free(r);
    /* a truncated large file */
    ck_assert_int_eq(truncate(path, (off_t)(t->nbytes + 128 - 8)), 0);
    tu_assert_error(emoe_npy_read(path, &r, &err), err, EMOE_EFORMAT, "truncated data");
    emoe_tensor_free(t);
}
END_TEST

static Suite *npy_suite(void)
{
    Suite *s = suite_create("npy");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_npy_reads_every_dtype_order_and_byte_order);
    tcase_add_test(tc, test_npy_reads_scalar_1d_empty_rank6);
    tcase_add_test(tc, test_npy_writes_byte_identical_to_numpy);
    tcase_add_test(tc, test_npy_round_trips_every_dtype);
    tcase_add_test(tc, test_npy_strings_read_and_write_like_numpy);
    tcase_add_test(tc, test_npy_reads_from_pipe_and_stdin);
    tcase_add_test(tc, test_npy_writes_to_stdout);
    suite_add_tcase(s, tc);
    TCase *tm = tcase_create("malformed");
    tcase_add_test(tm, test_npy_rejects_malformed_headers);
    tcase_add_test(tm, test_npy_rejects_unsupported_fixtures);
    suite_add_tcase(s, tm);
    TCase *tl = tcase_create("limits");
    tcase_set_timeout(tl, 60);
    tcase_add_test(tl, test_npy_maps_large_native_files);
    suite_add_tcase(s, tl);
    return s;
}

int main(void)
{
    return tu_run(npy_suite());
}
