/*
 * check_core.c: unit tests of lib/ core: errors, checked sizes, tensors, dtypes,
 * half floats, atomic files, threads and the BLAS kernel choice.
 */
#include "config.h"
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

START_TEST(test_size_mul_detects_overflow)
{
    size_t r = 7;
    ck_assert_int_eq(emoe_size_mul(&r, SIZE_MAX / 2 + 1, 2), EMOE_ERANGE);
    ck_assert_uint_eq(r, 7);
    ck_assert_int_eq(emoe_size_mul(&r, 1u << 20, 1u << 10), EMOE_OK);
    ck_assert_uint_eq(r, (size_t)1 << 30);
    ck_assert_int_eq(emoe_size_add(&r, SIZE_MAX, 1), EMOE_ERANGE);
}
END_TEST

START_TEST(test_shape_check_rejects_bad_shapes)
{
    struct emoe_error err = {0};
    int64_t neg[2] = {3, -1};
    tu_assert_error(emoe_shape_check(EMOE_F32, 2, neg, NULL, NULL, &err), err, EMOE_ERANGE,
                    "negative");
    int64_t big[3] = {INT64_MAX, INT64_MAX, 2};
    tu_assert_error(emoe_shape_check(EMOE_F32, 3, big, NULL, NULL, &err), err, EMOE_ERANGE,
                    "overflows");
    int64_t s[7] = {1, 1, 1, 1, 1, 1, 1};
    tu_assert_error(emoe_shape_check(EMOE_F32, 7, s, NULL, NULL, &err), err, EMOE_ERANGE,
                    "rank 7");
    size_t n, b;
    int64_t ok[2] = {3, 5};
    ck_assert_int_eq(emoe_shape_check(EMOE_F64, 2, ok, &n, &b, &err), EMOE_OK);
    ck_assert_uint_eq(n, 15);
    ck_assert_uint_eq(b, 120);
    ck_assert_int_eq(emoe_shape_check(EMOE_F64, 0, ok, &n, &b, &err), EMOE_OK);
    ck_assert_uint_eq(n, 1);
}
END_TEST

START_TEST(test_tensor_new_is_aligned_and_zeroed)
{
    struct emoe_error err = {0};
    struct emoe_tensor *t;
    int64_t shape[3] = {3, 5, 7};
    ck_assert_int_eq(emoe_tensor_new(EMOE_F32, 3, shape, &t, &err), EMOE_OK);
    ck_assert_uint_eq((uintptr_t)t->data % 64, 0);
    ck_assert_uint_eq(t->nelem, 105);
    ck_assert_uint_eq(t->nbytes, 420);
    for (size_t i = 0; i < t->nelem; i++)
        ck_assert(((float *)t->data)[i] == 0.0f);
    emoe_tensor_free(t);
    int64_t empty[2] = {0, 4};
    ck_assert_int_eq(emoe_tensor_new(EMOE_U8, 2, empty, &t, &err), EMOE_OK);
    ck_assert_uint_eq(t->nbytes, 0);
    emoe_tensor_free(t);
    emoe_tensor_free(NULL);
}
END_TEST

START_TEST(test_dtype_names_round_trip)
{
    for (int i = 0; i < EMOE_DTYPE_COUNT; i++) {
        enum emoe_dtype d;
        ck_assert_int_eq(emoe_dtype_from_name(emoe_dtype_name((enum emoe_dtype)i), &d), EMOE_OK);
        ck_assert_int_eq(d, i);
        ck_assert_uint_gt(emoe_dtype_size(d), 0);
    }
    enum emoe_dtype d;
    ck_assert_int_eq(emoe_dtype_from_name("F32", &d), EMOE_OK);
    ck_assert_int_eq(d, EMOE_F32);
    ck_assert_int_eq(emoe_dtype_from_name("c64", &d), EMOE_EUNSUPPORTED);
}
END_TEST

START_TEST(test_f16_conversion_is_exact)
{
    /* every finite half converts to float and back unchanged */
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = emoe_f16_to_f32((uint16_t)h);
        if (isnan(f))
            continue;
        ck_assert_msg(emoe_f32_to_f16(f) == h, "half 0x%04x -> %g -> 0x%04x", h, f,
                      emoe_f32_to_f16(f));
    }
    ck_assert(emoe_f16_to_f32(0x3c00) == 1.0f);
    ck_assert(emoe_f16_to_f32(0xc000) == -2.0f);
    ck_assert(emoe_f16_to_f32(0x0001) == ldexpf(1, -24));
    ck_assert(emoe_f32_to_f16(1e6f) == 0x7c00);          /* overflow to inf */
    ck_assert(emoe_f32_to_f16(1.0f + ldexpf(1, -11)) == 0x3c00); /* tie to even */
    ck_assert(emoe_bf16_to_f32(0x3f80) == 1.0f);
}
END_TEST

START_TEST(test_tensor_convert)
{
    struct emoe_error err = {0};
    int32_t v[4] = {-3, 0, 7, 255};
    int64_t shape[1] = {4};
    struct emoe_tensor *t, *f, *u;
    ck_assert_int_eq(emoe_tensor_wrap(EMOE_I32, 1, shape, v, &t, &err), EMOE_OK);
    ck_assert_int_eq(emoe_tensor_convert(t, EMOE_F32, &f, &err), EMOE_OK);
    ck_assert(((float *)f->data)[0] == -3.0f && ((float *)f->data)[3] == 255.0f);
    ck_assert_int_eq(emoe_tensor_convert(f, EMOE_U8, &u, &err), EMOE_OK);
    ck_assert_int_eq(((uint8_t *)u->data)[3], 255);
    emoe_tensor_free(u);
    ((float *)f->data)[1] = NAN;
    tu_assert_error(emoe_tensor_convert(f, EMOE_I64, &u, &err), err, EMOE_ERANGE, "element 1");
    ck_assert_ptr_null(u);
    emoe_tensor_free(f);
    emoe_tensor_free(t);
}
END_TEST

START_TEST(test_stats)
{
    struct emoe_error err = {0};
    float v[5] = {1, 2, 3, 4, NAN};
    int64_t shape[1] = {5};
    struct emoe_tensor *t;
    struct emoe_tensor_stats s;
    ck_assert_int_eq(emoe_tensor_wrap(EMOE_F32, 1, shape, v, &t, &err), EMOE_OK);
    ck_assert_int_eq(emoe_tensor_stats(t, &s, &err), EMOE_OK);
    ck_assert(s.min == 1 && s.max == 4 && s.mean == 2.5);
    ck_assert(fabs(s.std - sqrt(1.25)) < 1e-12);
    ck_assert_uint_eq(s.nonfinite, 1);
    emoe_tensor_free(t);
}
END_TEST

START_TEST(test_atomic_commit_replaces_whole_file)
{
    struct emoe_error err = {0};
    struct emoe_atomic a;
    const char *p = tu_tmppath("atomic.txt");
    tu_write_file(p, "old", 3);
    ck_assert_int_eq(emoe_atomic_open(&a, p, &err), EMOE_OK);
    fputs("new contents", a.f);
    /* until commit, the old file is intact */
    size_t n;
    char *d = tu_read_file(p, &n);
    ck_assert_uint_eq(n, 3);
    free(d);
    ck_assert_int_eq(emoe_atomic_commit(&a, &err), EMOE_OK);
    d = tu_read_file(p, &n);
    ck_assert_uint_eq(n, 12);
    ck_assert(memcmp(d, "new contents", 12) == 0);
    free(d);
}
END_TEST

START_TEST(test_atomic_abort_leaves_target_and_no_temporary)
{
    struct emoe_error err = {0};
    struct emoe_atomic a;
    int before = tu_count_dir_entries(tu_tmpdir());
    const char *p = tu_tmppath("aborted.bin");
    ck_assert_int_eq(emoe_atomic_open(&a, p, &err), EMOE_OK);
    fputs("partial", a.f);
    emoe_atomic_abort(&a);
    ck_assert(!tu_file_exists(p));
    ck_assert_int_eq(tu_count_dir_entries(tu_tmpdir()), before);
}
END_TEST

START_TEST(test_atomic_open_in_missing_folder_fails)
{
    struct emoe_error err = {0};
    struct emoe_atomic a;
    tu_assert_error(emoe_atomic_open(&a, "/nonexistent-dir/x.npy", &err), err, EMOE_EIO,
                    "/nonexistent-dir/x.npy");
}
END_TEST

static void square(void *ctx, size_t i)
{
    double *v = ctx;
    v[i] = (double)i * (double)i;
}

START_TEST(test_parallel_for_covers_every_index)
{
    int old = emoe_threads_get();
    ck_assert_int_eq(emoe_threads_set(3), 3);
    for (size_t n = 0; n < 50; n += 7) {
        double v[64];
        for (size_t i = 0; i < 64; i++)
            v[i] = -1;
        emoe_parallel_for(n, square, v);
        for (size_t i = 0; i < n; i++)
            ck_assert(v[i] == (double)i * (double)i);
        ck_assert(v[n] == -1);
    }
    emoe_threads_set(old);
    ck_assert_int_gt(emoe_cpu_count(), 0);
}
END_TEST

START_TEST(test_blas_respects_user_coretype)
{
    setenv("OPENBLAS_CORETYPE", "Haswell", 1);
    ck_assert_ptr_null(emoe_blas_preferred_coretype());
    unsetenv("OPENBLAS_CORETYPE");
    /* the testing hook names a kernel; the current one is never "preferred" again */
    setenv("EMOE_TEST_PREFER_CORETYPE", emoe_blas_corename(), 1);
    ck_assert_ptr_null(emoe_blas_preferred_coretype());
    setenv("EMOE_TEST_PREFER_CORETYPE", "NoSuchCore", 1);
    ck_assert_str_eq(emoe_blas_preferred_coretype(), "NoSuchCore");
    unsetenv("EMOE_TEST_PREFER_CORETYPE");
    ck_assert(strstr(emoe_version_details(), "OpenBLAS") != NULL);
}
END_TEST

START_TEST(test_file_kind_detect)
{
    ck_assert_int_eq(emoe_file_kind_detect("\x93NUMPY\x01\x00", 8), EMOE_FILE_NPY);
    ck_assert_int_eq(emoe_file_kind_detect("PK\x03\x04", 4), EMOE_FILE_NPZ);
    ck_assert_int_eq(emoe_file_kind_detect("\x02\0\0\0\0\0\0\0{}", 10), EMOE_FILE_SAFETENSORS);
    ck_assert_int_eq(emoe_file_kind_detect("hello world", 11), EMOE_FILE_UNKNOWN);
}
END_TEST

START_TEST(test_error_helpers)
{
    struct emoe_error err = {0};
    ck_assert_int_eq(emoe_error_set(&err, EMOE_EFORMAT, "bad %s", "magic"), EMOE_EFORMAT);
    emoe_error_prefix(&err, "x.npy");
    ck_assert_str_eq(err.msg, "x.npy: bad magic");
    ck_assert_int_eq(emoe_error_set(NULL, EMOE_EIO, "ignored"), EMOE_EIO);
    ck_assert_str_eq(emoe_strerror(EMOE_ENOMEM), "out of memory");
}
END_TEST

static Suite *core_suite(void)
{
    Suite *s = suite_create("core");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_size_mul_detects_overflow);
    tcase_add_test(tc, test_shape_check_rejects_bad_shapes);
    tcase_add_test(tc, test_tensor_new_is_aligned_and_zeroed);
    tcase_add_test(tc, test_dtype_names_round_trip);
    tcase_add_test(tc, test_f16_conversion_is_exact);
    tcase_add_test(tc, test_tensor_convert);
    tcase_add_test(tc, test_stats);
    tcase_add_test(tc, test_error_helpers);
    tcase_add_test(tc, test_file_kind_detect);
    suite_add_tcase(s, tc);
    TCase *io = tcase_create("atomic");
    tcase_add_test(io, test_atomic_commit_replaces_whole_file);
    tcase_add_test(io, test_atomic_abort_leaves_target_and_no_temporary);
    tcase_add_test(io, test_atomic_open_in_missing_folder_fails);
    suite_add_tcase(s, io);
    TCase *th = tcase_create("threads");
    tcase_add_test(th, test_parallel_for_covers_every_index);
    tcase_add_test(th, test_blas_respects_user_coretype);
    suite_add_tcase(s, th);
    return s;
}

int main(void)
{
    return tu_run(core_suite());
}
