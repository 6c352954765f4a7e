/*
 * attention.c: the multi-head self-attention core of the ViT engine, forward and
 * backward.  Attention is the only layer that mixes information across tokens;
 * the qkv and output projections around it are ordinary linears (layers.c).
 *
 * B = images, T = tokens per image, D = channels, H = heads, hd = D/H.
 * qkv [B, T, 3D] holds q (heads in order, hd channels each), then k, then v,
 * as timm's packed qkv weight [3D, D] produces them.
 *
 * Each (image, head) pair is one work item for emoe_parallel_for and does its
 * matrix products with cblas_sgemm on one thread; items write disjoint memory, so
 * the results do not depend on the thread count.
 */
#include "config.h"
#include "internal.h"
#include "nnmath.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct att_ctx {
    float *out, *att, *dqkv, *scratch;
    const float *qkv, *dout, *catt;
    int t, d, h;
    int avx2; /* the AVX2 + FMA softmax kernels */
};

/* As layers.c: AVX2 + FMA when the CPU has them and EMOE_NN_GENERIC is unset or "0". */
static int use_avx2(void)
{
#ifdef EMOE_NN_AVX2
    const char *g = getenv("EMOE_NN_GENERIC");
    return emoe_nn_have_avx2() && !(g && *g && strcmp(g, "0") != 0);
#else
    return 0;
#endif
}

#ifdef EMOE_NN_AVX2
/* softmax_rows with 8 lanes (nnmath.h's emoe_nn_exp8); the tail through a padded
 * vector whose extra lanes are masked out. */
EMOE_NN_AVX2_FN void softmax_rows_avx2(float *a, int rows, int cols)
{
    int full = cols & ~7, k = cols - full;
    const int32_t lanes[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    __m256i tailmask = _mm256_cmpgt_epi32(_mm256_set1_epi32(k),
                                          _mm256_loadu_si256((const __m256i *)lanes));
    for (int i = 0; i < rows; i++) {
        float *r = a + (size_t)i * cols;
        __m256 vmx = _mm256_set1_ps(r[0]);
        int j = 0;
        for (; j < full; j += 8)
            vmx = _mm256_max_ps(vmx, _mm256_loadu_ps(r + j));
        if (k)
            vmx = _mm256_max_ps(vmx, _mm256_blendv_ps(vmx, _mm256_maskload_ps(r + j, tailmask),
                                                      _mm256_castsi256_ps(tailmask)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmx), _mm256_extractf128_ps(vmx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        __m256 m = _mm256_set1_ps(_mm_cvtss_f32(m4));
        __m256 acc = _mm256_setzero_ps();
        for (j = 0; j < full; j += 8) {
            __m256 e = emoe_nn_exp8(_mm256_sub_ps(_mm256_loadu_ps(r + j), m));
            _mm256_storeu_ps(r + j, e);
            acc = _mm256_add_ps(acc, e);
        }
        if (k) {
            __m256 e = emoe_nn_exp8(_mm256_sub_ps(_mm256_maskload_ps(r + j, tailmask), m));
            e = _mm256_and_ps(e, _mm256_castsi256_ps(tailmask));
            _mm256_maskstore_ps(r + j, tailmask, e);
            acc = _mm256_add_ps(acc, e);
        }
        __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
        __m256 inv = _mm256_set1_ps(1.0f / _mm_cvtss_f32(s4));
        for (j = 0; j < full; j += 8)
            _mm256_storeu_ps(r + j, _mm256_mul_ps(_mm256_loadu_ps(r + j), inv));
        if (k)
            _mm256_maskstore_ps(r + j, tailmask,
                                _mm256_mul_ps(_mm256_maskload_ps(r + j, tailmask), inv));
    }
}

/* ds = a (da - sum_j a da), row by row in place in da. */
EMOE_NN_AVX2_FN void softmax_backward_rows_avx2(float *da, const float *a, int rows, int cols)
{
    int full = cols & ~7, k = cols - full;
    const int32_t lanes[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    __m256i tailmask = _mm256_cmpgt_epi32(_mm256_set1_epi32(k),
                                          _mm256_loadu_si256((const __m256i *)lanes));
    for (int i = 0; i < rows; i++) {
        const float *ar = a + (size_t)i * cols;
        float *dr = da + (size_t)i * cols;
        __m256 acc = _mm256_setzero_ps();
        int j = 0;
        for (; j < full; j += 8)
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(ar + j), _mm256_loadu_ps(dr + j), acc);
        if (k)
            acc = _mm256_fmadd_ps(_mm256_maskload_ps(ar + j, tailmask),
                                  _mm256_maskload_ps(dr + j, tailmask), acc);
        __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
        __m256 s = _mm256_set1_ps(_mm_cvtss_f32(s4));
        for (j = 0; j < full; j += 8)
            _mm256_storeu_ps(dr + j, _mm256_mul_ps(_mm256_loadu_ps(ar + j),
                                                   _mm256_sub_ps(_mm256_loadu_ps(dr + j), s)));
        if (k)
            _mm256_maskstore_ps(dr + j, tailmask,
                                _mm256_mul_ps(_mm256_maskload_ps(ar + j, tailmask),
                                              _mm256_sub_ps(_mm256_maskload_ps(dr + j, tailmask),
                                                            s)));
    }
}
#endif

/* Softmax of each row in place (exp through nnmath.h's vectorised emoe_nn_exp4). */
static void softmax_rows(float *a, int rows, int cols, int avx2)
{
#ifdef EMOE_NN_AVX2
    if (avx2) {
        softmax_rows_avx2(a, rows, cols);
        return;
    }
#else
    (void)avx2;
#endif
    for (int i = 0; i < rows; i++) {
        float *r = a + (size_t)i * cols;
        float m = r[0];
        for (int j = 1; j < cols; j++)
            m = r[j] > m ? r[j] : m;
        float s = 0.0f;
        int j = 0;
#ifdef EMOE_NN_VECTOR
        emoe_v4f acc = {0};
        for (; j + 4 <= cols; j += 4) {
            emoe_v4f e = emoe_nn_exp4(emoe_nn_load(r + j) - m);
            emoe_nn_store(r + j, e);
            acc += e;
        }
        if (j < cols) {
            size_t k = (size_t)(cols - j);
            emoe_v4f e = emoe_nn_exp4(emoe_nn_load_tail(r + j, k) - m);
            emoe_nn_store_tail(r + j, e, k);
            for (size_t l = 0; l < k; l++)
                s += e[l];
            j = cols;
        }
        s += (acc[0] + acc[1]) + (acc[2] + acc[3]);
#endif
        for (; j < cols; j++) {
            r[j] = expf(r[j] - m);
            s += r[j];
        }
        float inv = 1.0f / s;
        for (j = 0; j < cols; j++)
            r[j] *= inv;
    }
}

static void att_forward_item(void *vctx, size_t item)
{
    struct att_ctx *c = vctx;
    int T = c->t, D = c->d, H = c->h, hd = D / H;
    size_t b = item / (size_t)H, h = item % (size_t)H;
    const float *q = c->qkv + b * (size_t)T * 3 * D + h * hd;
    const float *k = q + D, *v = q + 2 * D;
    float *a = c->att + item * (size_t)T * T;
    float *o = c->out + b * (size_t)T * D + h * hd;
    float scale = 1.0f / sqrtf((float)hd);
    /* a [T,T] = scale q [T,hd] k^T [hd,T] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, q, 3 * D, k, 3 * D,
                0.0f, a, T);
    softmax_rows(a, T, T, c->avx2);
    /* o [T,hd] = a [T,T] v [T,hd] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, a, T, v, 3 * D,
                0.0f, o, D);
}

void emoe_attention_forward(float *out, float *att, const float *qkv, int B, int T, int D,
                            int H)
{
    if (B <= 0 || T <= 0 || D <= 0 || H <= 0 || D % H != 0)
        return;
    struct att_ctx c = {0};
    c.out = out;
    c.att = att;
    c.qkv = qkv;
    c.t = T;
    c.d = D;
    c.h = H;
    c.avx2 = use_avx2();
    emoe_parallel_for((size_t)B * H, att_forward_item, &c);
}

static void att_backward_item(void *vctx, size_t item)
{
    struct att_ctx *c = vctx;
    int T = c->t, D = c->d, H = c->h, hd = D / H;
    size_t b = item / (size_t)H, h = item % (size_t)H;
    size_t off = b * (size_t)T * 3 * D + h * hd;
    const float *q = c->qkv + off, *k = q + D, *v = q + 2 * D;
    float *dq = c->dqkv + off, *dk = dq + D, *dv = dq + 2 * D;
    const float *a = c->catt + item * (size_t)T * T;
    const float *go = c->dout + b * (size_t)T * D + h * hd;
    float *da = c->scratch + item * (size_t)T * T;
    float scale = 1.0f / sqrtf((float)hd);
    /* da [T,T] = dout [T,hd] v^T [hd,T] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0f, go, D, v, 3 * D, 0.0f,
                da, T);
    /* dv [T,hd] += a^T [T,T] dout [T,hd] */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, a, T, go, D, 1.0f, dv,
                3 * D);
    /* softmax backward in place: ds = a (da - sum_j a da) */
#ifdef EMOE_NN_AVX2
    if (c->avx2)
        softmax_backward_rows_avx2(da, a, T, T);
    else
#endif
    for (int i = 0; i < T; i++) {
        const float *ar = a + (size_t)i * T;
        float *dr = da + (size_t)i * T;
        float s = 0.0f;
        for (int j = 0; j < T; j++)
            s += ar[j] * dr[j];
        for (int j = 0; j < T; j++)
            dr[j] = ar[j] * (dr[j] - s);
    }
    /* dq [T,hd] += scale ds [T,T] k [T,hd];  dk [T,hd] += scale ds^T q */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, scale, da, T, k, 3 * D,
                1.0f, dq, 3 * D);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, scale, da, T, q, 3 * D, 1.0f,
                dk, 3 * D);
}

void emoe_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                             const float *att, int B, int T, int D, int H)
{
    if (B <= 0 || T <= 0 || D <= 0 || H <= 0 || D % H != 0)
        return;
    struct att_ctx c = {0};
    c.dqkv = dqkv;
    c.scratch = scratch;
    c.dout = dout;
    c.qkv = qkv;
    c.catt = att;
    c.t = T;
    c.d = D;
    c.h = H;
    c.avx2 = use_avx2();
    emoe_parallel_for((size_t)B * H, att_backward_item, &c);
}
