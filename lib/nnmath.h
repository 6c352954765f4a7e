/*
 * nnmath.h: private vectorised float exp and erf for the layer kernels (layers.c,
 * attention.c).  Not installed.
 *
 * libm's expf and erff are function calls the compiler cannot vectorise, and GELU
 * over [B*T, 4D] and the attention softmax call them millions of times per step.
 * These work on 4 floats at once with GCC/Clang vector extensions (plain SSE2 on
 * x86-64, no special compiler flags) and contain no branches:
 *  - emoe_nn_exp4: relative error below 1.1e-7 for x in [-87, 88]; inputs are
 *    clamped to that range, so exp(-inf) gives 2^-126 instead of 0;
 *  - emoe_nn_erf4: absolute error below 1.6e-7 (libm's erff: 5.4e-8), relative
 *    below 2e-7: |x| < 1 uses the Taylor series x P(x^2) (12 terms), larger |x|
 *    uses erfc(a) = t P(t) exp(-a^2) with t = 1/(1 + 0.3275911 a) (the
 *    substitution of Abramowitz and Stegun 7.1.26) and a degree-7 polynomial
 *    fitted for this file (fit error 1.3e-8 on [0, 4]); erf(|x| >= 4) is 1.
 * (Errors measured against double precision on a grid of step 1e-6 for erf over
 * [-8, 8] and 1e-5 for exp over [-87, 88].)  On this machine erf4 costs about 2.3x
 * less per element than erff.
 * Without vector extensions the kernels use libm instead (EMOE_NN_VECTOR unset).
 * check_layers.c checks both against double precision.
 */
#ifndef EMOE_NNMATH_H
#define EMOE_NNMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define EMOE_NN_VECTOR 1
typedef float emoe_v4f __attribute__((vector_size(16)));
typedef int32_t emoe_v4i __attribute__((vector_size(16)));

/* m ? a : b for a mask m of all-ones / all-zeros lanes */
static inline emoe_v4f emoe_nn_select(emoe_v4i m, emoe_v4f a, emoe_v4f b)
{
    return (emoe_v4f)((m & (emoe_v4i)a) | (~m & (emoe_v4i)b));
}

static inline emoe_v4f emoe_nn_exp4(emoe_v4f x)
{
    const emoe_v4f lo = {-87, -87, -87, -87};
    const emoe_v4f hi = {88, 88, 88, 88};
    x = emoe_nn_select(x < lo, lo, x);
    x = emoe_nn_select(x > hi, hi, x);
    /* x = k ln2 + r, k rounded to nearest (the 1.5 * 2^23 trick), |r| <= ln2 / 2 */
    emoe_v4f kf = x * 1.44269504088896341f + 12582912.0f;
    kf -= 12582912.0f;
    emoe_v4f r = x - kf * 0.693145751953125f; /* ln2 high part: k * hi is exact */
    r -= kf * 1.42860682030941723e-6f;        /* ln2 low part */
    /* exp(r) by its Taylor series to degree 7 (truncation below 1e-8 relative) */
    emoe_v4f p = r * (1.0f / 5040.0f) + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    emoe_v4i k = __builtin_convertvector(kf, emoe_v4i);
    emoe_v4i bits = (k + 127) << 23; /* 2^k, k in [-126, 127] */
    return p * (emoe_v4f)bits;
}

static inline emoe_v4f emoe_nn_erf4(emoe_v4f x)
{
    const emoe_v4i signbit = {INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN};
    const emoe_v4f four = {4, 4, 4, 4};
    const emoe_v4f one = {1, 1, 1, 1};
    emoe_v4i sign = (emoe_v4i)x & signbit;
    emoe_v4f a = (emoe_v4f)((emoe_v4i)x & ~signbit);
    a = emoe_nn_select(a > four, four, a);
    /* |x| < 1: 2/sqrt(pi) sum_n (-1)^n a^(2n+1) / (n! (2n+1)), n = 0..11 */
    emoe_v4f z = a * a;
    emoe_v4f s = z * (-1.0f / 918086400.0f) + 1.0f / 76204800.0f;
    s = s * z - 1.0f / 6894720.0f;
    s = s * z + 1.0f / 685440.0f;
    s = s * z - 1.0f / 75600.0f;
    s = s * z + 1.0f / 9360.0f;
    s = s * z - 1.0f / 1320.0f;
    s = s * z + 1.0f / 216.0f;
    s = s * z - 1.0f / 42.0f;
    s = s * z + 1.0f / 10.0f;
    s = s * z - 1.0f / 3.0f;
    s = s * z + 1.0f;
    s = s * a * 1.12837916709551257f;
    /* larger |x|: 1 - t P(t) exp(-a^2) */
    emoe_v4f t = 1.0f / (a * 0.3275911f + 1.0f);
    emoe_v4f p = t * -2.965611192e-01f + 1.495323828e+00f;
    p = p * t - 2.065708873e+00f;
    p = p * t + 2.018042194e+00f;
    p = p * t - 7.353010518e-01f;
    p = p * t + 4.265347178e-01f;
    p = p * t + 1.576703175e-01f;
    emoe_v4f l = 1.0f - p * t * emoe_nn_exp4(-z);
    emoe_v4f y = emoe_nn_select(a < one, s, l);
    return (emoe_v4f)((emoe_v4i)y | sign);
}

/* Unaligned load and store of 4 floats. */
static inline emoe_v4f emoe_nn_load(const float *p)
{
    emoe_v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void emoe_nn_store(float *p, emoe_v4f v)
{
    memcpy(p, &v, sizeof v);
}
/* Load n < 4 floats into a vector (the rest zero) and store them back. */
static inline emoe_v4f emoe_nn_load_tail(const float *p, size_t n)
{
    emoe_v4f v = {0};
    memcpy(&v, p, n * sizeof *p);
    return v;
}
static inline void emoe_nn_store_tail(float *p, emoe_v4f v, size_t n)
{
    memcpy(p, &v, n * sizeof *p);
}
#endif

#endif
