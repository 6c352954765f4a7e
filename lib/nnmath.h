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

/*
 * AVX2 + FMA versions, 8 floats at once, for x86-64 CPUs that have them (callers
 * check emoe_nn_have_avx2() at run time; the functions carry target attributes,
 * so the file needs no special compiler flags).  The same algorithms as above,
 * with fused multiply-adds, plus the standard normal CDF for GELU:
 *  - emoe_nn_exp8: as emoe_nn_exp4;
 *  - emoe_nn_phi8: Phi(x) = (1 + erf(x / sqrt 2)) / 2 computed from erfc(|x| / sqrt 2)
 *    (the two branches of emoe_nn_erf4), so the lower tail has no cancellation:
 *    absolute error below 1.1e-7 (measured on [-16, 16], step 1e-5), relative
 *    error below 1.2e-6 for x >= -3 and 2.3e-5 for x >= -4 (1 + erf with an
 *    erf accurate to 1.6e-7 has 2.5e-3 there); |x| / sqrt 2 is clamped to 10.
 *    It also returns exp(-x^2 / 2) (relative error below 1.5e-5 for x^2 / 2 <
 *    80, from rounding x^2 / 2), which GELU's derivative needs.
 *    On this machine (Zen 1) GELU through it costs 4.2 ns per element, against
 *    9.5 ns through emoe_nn_erf4 (forward; backward 4.5 against 13).
 * check_layers.c checks both against double precision.
 */
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define EMOE_NN_AVX2 1
#include <immintrin.h>

#define EMOE_NN_AVX2_FN static inline __attribute__((target("avx2,fma")))

static inline int emoe_nn_have_avx2(void)
{
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

EMOE_NN_AVX2_FN __m256 emoe_nn_exp8(__m256 x)
{
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
    const __m256 shift = _mm256_set1_ps(12582912.0f);
    __m256 kf = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), shift);
    kf = _mm256_sub_ps(kf, shift);
    __m256 r = _mm256_fnmadd_ps(kf, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(kf, _mm256_set1_ps(1.42860682030941723e-6f), r);
    __m256 p = _mm256_fmadd_ps(r, _mm256_set1_ps(1.0f / 5040.0f), _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i k = _mm256_cvtps_epi32(kf);
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

/* Phi(x), and exp(-x^2 / 2) in *e. */
EMOE_NN_AVX2_FN __m256 emoe_nn_phi8(__m256 x, __m256 *e)
{
    const __m256 signbit = _mm256_set1_ps(-0.0f);
    __m256 a = _mm256_mul_ps(_mm256_andnot_ps(signbit, x), _mm256_set1_ps(0.70710678118654752f));
    a = _mm256_min_ps(a, _mm256_set1_ps(10.0f));
    __m256 z = _mm256_mul_ps(a, a);
    __m256 ez = emoe_nn_exp8(_mm256_sub_ps(_mm256_setzero_ps(), z));
    /* a < 1: erfc = 1 - a S(z), S the Taylor series of emoe_nn_erf4 */
    __m256 s = _mm256_fmadd_ps(z, _mm256_set1_ps(-1.0f / 918086400.0f),
                               _mm256_set1_ps(1.0f / 76204800.0f));
    s = _mm256_fmadd_ps(s, z, _mm256_set1_ps(-1.0f / 6894720.0f));
    s = _mm256_fmadd_ps(s, z, _mm256_set1_ps(1.0f / 685440.0f));
    s = _mm256_fmadd_ps(s, z, _mm256_set1_ps(-1.0f / 75600.0f));
    s = _mm256_fmadd_ps(s, z, _mm256_set1_ps(1.0f / 9360.0f));
    s = _mm256_fmadd_ps(s, z, _mm256_set1_ps(-1.0f / 1320.0f));
    s = _mm256_fmadd_ps(s, z, _mm256_set1_ps(1.0f / 216.0f));
    s = _mm256_fmadd_ps(s, z, _mm256_set1_ps(-1.0f / 42.0f));
    s = _mm256_fmadd_ps(s, z, _mm256_set1_ps(1.0f / 10.0f));
    s = _mm256_fmadd_ps(s, z, _mm256_set1_ps(-1.0f / 3.0f));
    s = _mm256_fmadd_ps(s, z, _mm256_set1_ps(1.0f));
    s = _mm256_mul_ps(s, _mm256_mul_ps(a, _mm256_set1_ps(1.12837916709551257f)));
    __m256 small = _mm256_sub_ps(_mm256_set1_ps(1.0f), s);
    /* a >= 1: erfc = t P(t) exp(-a^2), the other branch of emoe_nn_erf4 */
    __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f),
                             _mm256_fmadd_ps(a, _mm256_set1_ps(0.3275911f), _mm256_set1_ps(1.0f)));
    __m256 p = _mm256_fmadd_ps(t, _mm256_set1_ps(-2.965611192e-01f),
                               _mm256_set1_ps(1.495323828e+00f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-2.065708873e+00f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(2.018042194e+00f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-7.353010518e-01f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(4.265347178e-01f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.576703175e-01f));
    __m256 large = _mm256_mul_ps(_mm256_mul_ps(p, t), ez);
    __m256 erfc = _mm256_blendv_ps(large, small,
                                   _mm256_cmp_ps(a, _mm256_set1_ps(1.0f), _CMP_LT_OQ));
    __m256 half = _mm256_mul_ps(erfc, _mm256_set1_ps(0.5f));
    /* x < 0: Phi = erfc / 2, else 1 - erfc / 2 */
    __m256 upper = _mm256_sub_ps(_mm256_set1_ps(1.0f), half);
    *e = ez;
    return _mm256_blendv_ps(upper, half, x); /* blendv picks by the sign bit of x */
}
#endif

#endif
