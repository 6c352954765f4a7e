/*
 * layers.c: the ViT engine's dense layer kernels as forward/backward pairs on
 * caller-owned buffers: linear, LayerNorm, GELU, patch embedding (2-D and 3-D),
 * class token + position embedding, token gather and position-embedding
 * resampling.  Attention is in attention.c, the losses in loss.c.
 *
 * B = images, T = tokens per image (1 + N), N = patches per image (or rows),
 * D = channels, Din/Dout = linear input/output features, C = image channels,
 * P = patch size, Hi/Wi/Dz = image height/width/depth.
 *
 * Conventions (see emoe.h): outputs first, then inputs, then sizes; backward
 * functions accumulate (+=); NULL gradient pointers are skipped; nothing here
 * allocates.  Matrix work is cblas_sgemm; our own loops are split with
 * emoe_parallel_for into chunks whose results do not depend on the thread count.
 * GELU uses the vectorised erf and exp of nnmath.h.
 */
#include "config.h"
#include "internal.h"
#include "nnmath.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Below this many elements a loop runs on the calling thread. */
#define PAR_MIN_ELEMS 32768
/* Elementwise loops are split into chunks of this many elements (or rows covering it). */
#define CHUNK_ELEMS 16384

/* Rows of width w per work item of a row-wise loop (about CHUNK_ELEMS elements). */
static size_t rows_per_chunk(size_t w)
{
    size_t r = CHUNK_ELEMS / (w ? w : 1);
    return r ? r : 1;
}

/* fn(ctx, i) for i < nitems, on the thread pool when the loop is big enough.  The
 * items, not the threads, decide what is summed in which order. */
static void run(size_t nitems, size_t total_elems, emoe_parallel_fn fn, void *ctx)
{
    if (total_elems < PAR_MIN_ELEMS) {
        for (size_t i = 0; i < nitems; i++)
            fn(ctx, i);
    } else {
        emoe_parallel_for(nitems, fn, ctx);
    }
}

/*
 * Column sums: out[j] += sum_i src[i*stride + j] for j < ncols, the rows summed in
 * order into local accumulators (so the compiler keeps them in registers and
 * vectorises the full 64-column blocks).  Column blocks are the parallel items.
 */
#define COLS 64

#ifdef EMOE_NN_AVX2
/* The full 64-column block with the sums in eight registers (the array version
 * keeps them in memory, one store-to-load round trip per row); same additions in
 * the same order, so the same bits. */
EMOE_NN_AVX2_FN void column_block_sum64_avx2(float *out, const float *src, size_t nrows,
                                             size_t stride)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0;
    __m256 a7 = a0;
    for (size_t i = 0; i < nrows; i++) {
        const float *row = src + i * stride;
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(row));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(row + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(row + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(row + 24));
        a4 = _mm256_add_ps(a4, _mm256_loadu_ps(row + 32));
        a5 = _mm256_add_ps(a5, _mm256_loadu_ps(row + 40));
        a6 = _mm256_add_ps(a6, _mm256_loadu_ps(row + 48));
        a7 = _mm256_add_ps(a7, _mm256_loadu_ps(row + 56));
    }
    __m256 acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
    for (int k = 0; k < 8; k++)
        _mm256_storeu_ps(out + 8 * k, _mm256_add_ps(_mm256_loadu_ps(out + 8 * k), acc[k]));
}
#endif

/* The AVX2 + FMA kernels of nnmath.h and of this file are used when the CPU has
 * them and EMOE_NN_GENERIC (tests: the portable code) is unset or "0". */
static int use_avx2(void)
{
#ifdef EMOE_NN_AVX2
    const char *g = getenv("EMOE_NN_GENERIC");
    return emoe_nn_have_avx2() && !(g && *g && strcmp(g, "0") != 0);
#else
    return 0;
#endif
}

static void column_block_sum(float *out, const float *src, size_t nrows, size_t stride,
                             size_t ncols)
{
#ifdef EMOE_NN_AVX2
    if (ncols == COLS && use_avx2()) {
        column_block_sum64_avx2(out, src, nrows, stride);
        return;
    }
#endif
    float acc[COLS] = {0};
    if (ncols == COLS) {
        for (size_t i = 0; i < nrows; i++) {
            const float *row = src + i * stride;
            for (size_t j = 0; j < COLS; j++)
                acc[j] += row[j];
        }
    } else {
        for (size_t i = 0; i < nrows; i++) {
            const float *row = src + i * stride;
            for (size_t j = 0; j < ncols; j++)
                acc[j] += row[j];
        }
    }
    for (size_t j = 0; j < ncols; j++)
        out[j] += acc[j];
}

struct colsum_ctx {
    float *out;
    const float *src;
    size_t n, o;
};

static void colsum_item(void *vctx, size_t item)
{
    struct colsum_ctx *c = vctx;
    size_t c0 = item * COLS, nc = c->o - c0 < COLS ? c->o - c0 : COLS;
    column_block_sum(c->out + c0, c->src + c0, c->n, c->o, nc);
}

/* out[j] += sum over the n rows of src [n, o] */
static void column_sums_add(float *out, const float *src, size_t n, size_t o)
{
    struct colsum_ctx c = {out, src, n, o};
    run((o + COLS - 1) / COLS, n * o, colsum_item, &c);
}

/* ------------------------------------------------------------------ linear */

struct bias_ctx {
    float *y;
    const float *b;
    size_t n, d, rows;
};

static void bias_fill_item(void *vctx, size_t item)
{
    struct bias_ctx *c = vctx;
    size_t r0 = item * c->rows, r1 = r0 + c->rows < c->n ? r0 + c->rows : c->n;
    for (size_t i = r0; i < r1; i++)
        memcpy(c->y + i * c->d, c->b, c->d * sizeof *c->y);
}

void emoe_linear_forward(float *y, const float *x, const float *w, const float *b, int N,
                         int Din, int Dout)
{
    if (N <= 0 || Dout <= 0)
        return;
    if (b) { /* y = b in every row, then the product accumulated onto it */
        struct bias_ctx c = {y, b, (size_t)N, (size_t)Dout, rows_per_chunk((size_t)Dout)};
        run((c.n + c.rows - 1) / c.rows, c.n * c.d, bias_fill_item, &c);
    }
    if (Din <= 0) {
        if (!b)
            memset(y, 0, (size_t)N * Dout * sizeof *y);
        return;
    }
    emoe_sgemm(CblasNoTrans, CblasTrans, N, Dout, Din, 1.0f, x, Din, w, Din,
                b ? 1.0f : 0.0f, y, Dout);
}

void emoe_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                          const float *w, int N, int Din, int Dout)
{
    if (N <= 0 || Dout <= 0)
        return;
    if (dx && Din > 0) /* dx [N,Din] += dy [N,Dout] W [Dout,Din] */
        emoe_sgemm(CblasNoTrans, CblasNoTrans, N, Din, Dout, 1.0f, dy, Dout, w,
                    Din, 1.0f, dx, Din);
    if (dw && Din > 0) /* dw [Dout,Din] += dy^T [Dout,N] x [N,Din] */
        emoe_sgemm(CblasTrans, CblasNoTrans, Dout, Din, N, 1.0f, dy, Dout, x,
                    Din, 1.0f, dw, Din);
    if (db)
        column_sums_add(db, dy, (size_t)N, (size_t)Dout);
}

/* --------------------------------------------------------------- layernorm */

struct ln_ctx {
    float *y, *mean, *rstd, *dx, *dw, *db;
    const float *x, *w, *b, *dy, *cmean, *crstd;
    size_t n, d, rows;
    int avx2; /* rows of a multiple of 8 through the AVX2 + FMA kernels */
};

#ifdef EMOE_NN_AVX2
/* The sum of the 8 lanes, in a fixed order. */
EMOE_NN_AVX2_FN float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* LayerNorm rows r0..r1 of width d (a multiple of 8): lane-wise partial sums. */
EMOE_NN_AVX2_FN void ln_forward_rows_avx2(struct ln_ctx *c, size_t r0, size_t r1)
{
    size_t d = c->d;
    for (size_t i = r0; i < r1; i++) {
        const float *x = c->x + i * d;
        float *y = c->y + i * d;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0;
        size_t j = 0;
        for (; j + 16 <= d; j += 16) {
            s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + j));
            s1 = _mm256_add_ps(s1, _mm256_loadu_ps(x + j + 8));
        }
        if (j < d)
            s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + j));
        float m = hsum8(_mm256_add_ps(s0, s1)) / (float)d;
        __m256 vm = _mm256_set1_ps(m);
        s0 = s1 = _mm256_setzero_ps();
        for (j = 0; j + 16 <= d; j += 16) {
            __m256 t0 = _mm256_sub_ps(_mm256_loadu_ps(x + j), vm);
            __m256 t1 = _mm256_sub_ps(_mm256_loadu_ps(x + j + 8), vm);
            s0 = _mm256_fmadd_ps(t0, t0, s0);
            s1 = _mm256_fmadd_ps(t1, t1, s1);
        }
        if (j < d) {
            __m256 t0 = _mm256_sub_ps(_mm256_loadu_ps(x + j), vm);
            s0 = _mm256_fmadd_ps(t0, t0, s0);
        }
        float v = hsum8(_mm256_add_ps(s0, s1)) / (float)d;
        float r = 1.0f / sqrtf(v + EMOE_LN_EPS);
        __m256 vr = _mm256_set1_ps(r);
        for (j = 0; j < d; j += 8) {
            __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm), vr);
            _mm256_storeu_ps(y + j, _mm256_fmadd_ps(xh, _mm256_loadu_ps(c->w + j),
                                                    _mm256_loadu_ps(c->b + j)));
        }
        c->mean[i] = m;
        c->rstd[i] = r;
    }
}

/* dx rows r0..r1 as ln_backward_dx_item, width a multiple of 8. */
EMOE_NN_AVX2_FN void ln_backward_dx_rows_avx2(struct ln_ctx *c, size_t r0, size_t r1)
{
    size_t d = c->d;
    const float *w = c->w;
    for (size_t i = r0; i < r1; i++) {
        const float *x = c->x + i * d, *dy = c->dy + i * d;
        float *dx = c->dx + i * d;
        __m256 vm = _mm256_set1_ps(c->cmean[i]), vr = _mm256_set1_ps(c->crstd[i]);
        __m256 sg = _mm256_setzero_ps(), sgx = sg;
        for (size_t j = 0; j < d; j += 8) {
            __m256 g = _mm256_mul_ps(_mm256_loadu_ps(dy + j), _mm256_loadu_ps(w + j));
            __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm), vr);
            sg = _mm256_add_ps(sg, g);
            sgx = _mm256_fmadd_ps(g, xh, sgx);
        }
        __m256 msg = _mm256_set1_ps(hsum8(sg) / (float)d);
        __m256 msgx = _mm256_set1_ps(hsum8(sgx) / (float)d);
        for (size_t j = 0; j < d; j += 8) {
            __m256 g = _mm256_mul_ps(_mm256_loadu_ps(dy + j), _mm256_loadu_ps(w + j));
            __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm), vr);
            __m256 t = _mm256_fnmadd_ps(xh, msgx, _mm256_sub_ps(g, msg));
            _mm256_storeu_ps(dx + j, _mm256_fmadd_ps(t, vr, _mm256_loadu_ps(dx + j)));
        }
    }
}

/* dw over a 64-column block, the sums in registers (rows in order). */
EMOE_NN_AVX2_FN void ln_dw_block64_avx2(float *dw, const struct ln_ctx *c, size_t c0)
{
    __m256 acc[8];
    for (int k = 0; k < 8; k++)
        acc[k] = _mm256_setzero_ps();
    for (size_t i = 0; i < c->n; i++) {
        const float *x = c->x + i * c->d + c0, *dy = c->dy + i * c->d + c0;
        __m256 vm = _mm256_set1_ps(c->cmean[i]), vr = _mm256_set1_ps(c->crstd[i]);
        for (int k = 0; k < 8; k++) {
            __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + 8 * k), vm), vr);
            acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(dy + 8 * k), xh, acc[k]);
        }
    }
    for (int k = 0; k < 8; k++)
        _mm256_storeu_ps(dw + 8 * k, _mm256_add_ps(_mm256_loadu_ps(dw + 8 * k), acc[k]));
}
#endif

static void ln_forward_item(void *vctx, size_t item)
{
    struct ln_ctx *c = vctx;
    size_t r0 = item * c->rows, r1 = r0 + c->rows < c->n ? r0 + c->rows : c->n;
    size_t d = c->d;
#ifdef EMOE_NN_AVX2
    if (c->avx2) {
        ln_forward_rows_avx2(c, r0, r1);
        return;
    }
#endif
    for (size_t i = r0; i < r1; i++) {
        const float *x = c->x + i * d;
        float *y = c->y + i * d;
        float s = 0.0f;
        for (size_t j = 0; j < d; j++)
            s += x[j];
        float m = s / (float)d;
        float v = 0.0f;
        for (size_t j = 0; j < d; j++) {
            float t = x[j] - m;
            v += t * t;
        }
        v /= (float)d;
        float r = 1.0f / sqrtf(v + EMOE_LN_EPS);
        for (size_t j = 0; j < d; j++)
            y[j] = (x[j] - m) * r * c->w[j] + c->b[j];
        c->mean[i] = m;
        c->rstd[i] = r;
    }
}

void emoe_layernorm_forward(float *y, float *mean, float *rstd, const float *x,
                            const float *w, const float *b, int N, int D)
{
    if (N <= 0 || D <= 0)
        return;
    struct ln_ctx c = {0};
    c.y = y;
    c.mean = mean;
    c.rstd = rstd;
    c.x = x;
    c.w = w;
    c.b = b;
    c.n = (size_t)N;
    c.d = (size_t)D;
    c.rows = rows_per_chunk(c.d);
    c.avx2 = D % 8 == 0 && use_avx2();
    run((c.n + c.rows - 1) / c.rows, c.n * c.d, ln_forward_item, &c);
}

/* dx, row by row: dx += rstd (g - mean(g) - xhat mean(g xhat)), g = dy w. */
static void ln_backward_dx_item(void *vctx, size_t item)
{
    struct ln_ctx *c = vctx;
    size_t r0 = item * c->rows, r1 = r0 + c->rows < c->n ? r0 + c->rows : c->n;
    size_t d = c->d;
    const float *w = c->w;
#ifdef EMOE_NN_AVX2
    if (c->avx2) {
        ln_backward_dx_rows_avx2(c, r0, r1);
        return;
    }
#endif
    for (size_t i = r0; i < r1; i++) {
        const float *x = c->x + i * d, *dy = c->dy + i * d;
        float *dx = c->dx + i * d;
        float m = c->cmean[i], r = c->crstd[i];
        float sg = 0.0f, sgx = 0.0f;
        for (size_t j = 0; j < d; j++) {
            float g = dy[j] * w[j];
            sg += g;
            sgx += g * (x[j] - m) * r;
        }
        sg /= (float)d;
        sgx /= (float)d;
        for (size_t j = 0; j < d; j++) {
            float xh = (x[j] - m) * r;
            dx[j] += (dy[j] * w[j] - sg - xh * sgx) * r;
        }
    }
}

/* dw, db: columns split over threads, rows in order (deterministic). */
static void ln_backward_dw_item(void *vctx, size_t item)
{
    struct ln_ctx *c = vctx;
    size_t d = c->d, c0 = item * COLS, nc = d - c0 < COLS ? d - c0 : COLS;
    if (c->db)
        column_block_sum(c->db + c0, c->dy + c0, c->n, d, nc);
    if (!c->dw)
        return;
#ifdef EMOE_NN_AVX2
    if (c->avx2 && nc == COLS) {
        ln_dw_block64_avx2(c->dw + c0, c, c0);
        return;
    }
#endif
    float acc[COLS] = {0};
    for (size_t i = 0; i < c->n; i++) {
        const float *x = c->x + i * d + c0, *dy = c->dy + i * d + c0;
        float m = c->cmean[i], r = c->crstd[i];
        if (nc == COLS) {
            for (size_t j = 0; j < COLS; j++)
                acc[j] += dy[j] * ((x[j] - m) * r);
        } else {
            for (size_t j = 0; j < nc; j++)
                acc[j] += dy[j] * ((x[j] - m) * r);
        }
    }
    for (size_t j = 0; j < nc; j++)
        c->dw[c0 + j] += acc[j];
}

void emoe_layernorm_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                             const float *w, const float *mean, const float *rstd, int N,
                             int D)
{
    if (N <= 0 || D <= 0)
        return;
    struct ln_ctx c = {0};
    c.dx = dx;
    c.dw = dw;
    c.db = db;
    c.dy = dy;
    c.x = x;
    c.w = w;
    c.cmean = mean;
    c.crstd = rstd;
    c.n = (size_t)N;
    c.d = (size_t)D;
    c.rows = rows_per_chunk(c.d);
    c.avx2 = D % 8 == 0 && use_avx2();
    if (dx)
        run((c.n + c.rows - 1) / c.rows, c.n * c.d, ln_backward_dx_item, &c);
    if (dw || db)
        run((c.d + COLS - 1) / COLS, c.n * c.d, ln_backward_dw_item, &c);
}

/* -------------------------------------------------------------------- GELU */

struct gelu_ctx {
    float *out, *g; /* g: emoe_gelu_forward_grad's derivative */
    const float *x, *dy;
    size_t n;
    int avx2; /* use the AVX2 + FMA kernels */
};

#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

/*
 * With AVX2 + FMA (checked at run time; EMOE_NN_GENERIC=1 in the environment
 * forces the portable code, for the tests): 8 floats at once through
 * nnmath.h's emoe_nn_phi8, gelu(x) = x Phi(x) and gelu'(x) = Phi(x) + x phi(x).
 * The tail (< 8 elements) goes through the same kernel on a padded copy.
 */
#ifdef EMOE_NN_AVX2
EMOE_NN_AVX2_FN void gelu_forward_avx2(float *y, const float *x, size_t n)
{
    size_t i = 0;
    __m256 e;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        _mm256_storeu_ps(y + i, _mm256_mul_ps(v, emoe_nn_phi8(v, &e)));
    }
    if (i < n) {
        float buf[8] = {0};
        memcpy(buf, x + i, (n - i) * sizeof *buf);
        __m256 v = _mm256_loadu_ps(buf);
        _mm256_storeu_ps(buf, _mm256_mul_ps(v, emoe_nn_phi8(v, &e)));
        memcpy(y + i, buf, (n - i) * sizeof *buf);
    }
}

/* dx += dy gelu'(x) */
EMOE_NN_AVX2_FN __m256 gelu_grad8(__m256 v)
{
    __m256 e;
    __m256 cdf = emoe_nn_phi8(v, &e);
    return _mm256_fmadd_ps(_mm256_mul_ps(v, _mm256_set1_ps(INV_SQRT_2PI)), e, cdf);
}

EMOE_NN_AVX2_FN void gelu_backward_avx2(float *dx, const float *dy, const float *x, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = gelu_grad8(_mm256_loadu_ps(x + i));
        _mm256_storeu_ps(dx + i,
                         _mm256_fmadd_ps(_mm256_loadu_ps(dy + i), g, _mm256_loadu_ps(dx + i)));
    }
    if (i < n) {
        float bx[8] = {0}, bdy[8] = {0}, bdx[8] = {0};
        size_t k = n - i;
        memcpy(bx, x + i, k * sizeof *bx);
        memcpy(bdy, dy + i, k * sizeof *bdy);
        memcpy(bdx, dx + i, k * sizeof *bdx);
        __m256 g = gelu_grad8(_mm256_loadu_ps(bx));
        _mm256_storeu_ps(bdx, _mm256_fmadd_ps(_mm256_loadu_ps(bdy), g, _mm256_loadu_ps(bdx)));
        memcpy(dx + i, bdx, k * sizeof *bdx);
    }
}
#endif

static void gelu_forward_item(void *vctx, size_t item)
{
    struct gelu_ctx *c = vctx;
    size_t i = item * CHUNK_ELEMS, i1 = i + CHUNK_ELEMS < c->n ? i + CHUNK_ELEMS : c->n;
#ifdef EMOE_NN_AVX2
    if (c->avx2) {
        gelu_forward_avx2(c->out + i, c->x + i, i1 - i);
        return;
    }
#endif
#ifdef EMOE_NN_VECTOR
    for (; i + 4 <= i1; i += 4) {
        emoe_v4f x = emoe_nn_load(c->x + i);
        emoe_nn_store(c->out + i, 0.5f * x * (1.0f + emoe_nn_erf4(x * INV_SQRT2)));
    }
    if (i < i1) {
        emoe_v4f x = emoe_nn_load_tail(c->x + i, i1 - i);
        emoe_nn_store_tail(c->out + i, 0.5f * x * (1.0f + emoe_nn_erf4(x * INV_SQRT2)), i1 - i);
    }
#else
    for (; i < i1; i++) {
        float x = c->x[i];
        c->out[i] = 0.5f * x * (1.0f + erff(x * INV_SQRT2));
    }
#endif
}

/* d/dx [x Phi(x)] = Phi(x) + x phi(x) */
#ifdef EMOE_NN_VECTOR
static inline emoe_v4f gelu_grad4(emoe_v4f x)
{
    emoe_v4f cdf = 0.5f * (1.0f + emoe_nn_erf4(x * INV_SQRT2));
    emoe_v4f pdf = INV_SQRT_2PI * emoe_nn_exp4(-0.5f * x * x);
    return cdf + x * pdf;
}
#endif

static void gelu_backward_item(void *vctx, size_t item)
{
    struct gelu_ctx *c = vctx;
    size_t i = item * CHUNK_ELEMS, i1 = i + CHUNK_ELEMS < c->n ? i + CHUNK_ELEMS : c->n;
#ifdef EMOE_NN_AVX2
    if (c->avx2) {
        gelu_backward_avx2(c->out + i, c->dy + i, c->x + i, i1 - i);
        return;
    }
#endif
#ifdef EMOE_NN_VECTOR
    for (; i + 4 <= i1; i += 4) {
        emoe_v4f x = emoe_nn_load(c->x + i);
        emoe_nn_store(c->out + i, emoe_nn_load(c->out + i) +
                                      emoe_nn_load(c->dy + i) * gelu_grad4(x));
    }
    if (i < i1) {
        size_t k = i1 - i;
        emoe_v4f x = emoe_nn_load_tail(c->x + i, k);
        emoe_nn_store_tail(c->out + i, emoe_nn_load_tail(c->out + i, k) +
                                           emoe_nn_load_tail(c->dy + i, k) * gelu_grad4(x),
                           k);
    }
#else
    for (; i < i1; i++) {
        float x = c->x[i];
        float cdf = 0.5f * (1.0f + erff(x * INV_SQRT2));
        float pdf = INV_SQRT_2PI * expf(-0.5f * x * x);
        c->out[i] += c->dy[i] * (cdf + x * pdf);
    }
#endif
}

#ifdef EMOE_NN_AVX2
/* y = x Phi(x), g = Phi(x) + x phi(x) */
EMOE_NN_AVX2_FN void gelu_forward_grad_avx2(float *y, float *g, const float *x, size_t n)
{
    size_t i = 0;
    __m256 e;
    const __m256 c = _mm256_set1_ps(INV_SQRT_2PI);
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i), cdf = emoe_nn_phi8(v, &e);
        _mm256_storeu_ps(y + i, _mm256_mul_ps(v, cdf));
        _mm256_storeu_ps(g + i, _mm256_fmadd_ps(_mm256_mul_ps(v, c), e, cdf));
    }
    if (i < n) {
        float bx[8] = {0}, by[8], bg[8];
        memcpy(bx, x + i, (n - i) * sizeof *bx);
        __m256 v = _mm256_loadu_ps(bx), cdf = emoe_nn_phi8(v, &e);
        _mm256_storeu_ps(by, _mm256_mul_ps(v, cdf));
        _mm256_storeu_ps(bg, _mm256_fmadd_ps(_mm256_mul_ps(v, c), e, cdf));
        memcpy(y + i, by, (n - i) * sizeof *by);
        memcpy(g + i, bg, (n - i) * sizeof *bg);
    }
}
#endif

/* For emoe_gelu_forward_grad: out = y. */
static void gelu_forward_grad_item(void *vctx, size_t item)
{
    struct gelu_ctx *c = vctx;
    size_t i = item * CHUNK_ELEMS, i1 = i + CHUNK_ELEMS < c->n ? i + CHUNK_ELEMS : c->n;
    float *g = c->g;
#ifdef EMOE_NN_AVX2
    if (c->avx2) {
        gelu_forward_grad_avx2(c->out + i, g + i, c->x + i, i1 - i);
        return;
    }
#endif
#ifdef EMOE_NN_VECTOR
    for (; i + 4 <= i1; i += 4) {
        emoe_v4f x = emoe_nn_load(c->x + i);
        emoe_nn_store(g + i, gelu_grad4(x));
        emoe_nn_store(c->out + i, 0.5f * x * (1.0f + emoe_nn_erf4(x * INV_SQRT2)));
    }
    if (i < i1) {
        emoe_v4f x = emoe_nn_load_tail(c->x + i, i1 - i);
        emoe_nn_store_tail(g + i, gelu_grad4(x), i1 - i);
        emoe_nn_store_tail(c->out + i, 0.5f * x * (1.0f + emoe_nn_erf4(x * INV_SQRT2)), i1 - i);
    }
#else
    for (; i < i1; i++) {
        float x = c->x[i];
        float cdf = 0.5f * (1.0f + erff(x * INV_SQRT2));
        g[i] = cdf + x * INV_SQRT_2PI * expf(-0.5f * x * x);
        c->out[i] = x * cdf;
    }
#endif
}

/* For emoe_gelu_backward_mul: out = dx, dy = dy, x = g. */
static void gelu_mul_item(void *vctx, size_t item)
{
    struct gelu_ctx *c = vctx;
    size_t i = item * CHUNK_ELEMS, i1 = i + CHUNK_ELEMS < c->n ? i + CHUNK_ELEMS : c->n;
    for (; i < i1; i++)
        c->out[i] = c->dy[i] * c->x[i];
}

void emoe_gelu_forward(float *y, const float *x, size_t n)
{
    struct gelu_ctx c = {y, NULL, x, NULL, n, use_avx2()};
    run((n + CHUNK_ELEMS - 1) / CHUNK_ELEMS, n, gelu_forward_item, &c);
}

void emoe_gelu_backward(float *dx, const float *dy, const float *x, size_t n)
{
    struct gelu_ctx c = {dx, NULL, x, dy, n, use_avx2()};
    run((n + CHUNK_ELEMS - 1) / CHUNK_ELEMS, n, gelu_backward_item, &c);
}

void emoe_gelu_forward_grad(float *y, float *g, const float *x, size_t n)
{
    struct gelu_ctx c = {y, g, x, NULL, n, use_avx2()};
    run((n + CHUNK_ELEMS - 1) / CHUNK_ELEMS, n, gelu_forward_grad_item, &c);
}

void emoe_gelu_backward_mul(float *dx, const float *dy, const float *g, size_t n)
{
    struct gelu_ctx c = {dx, NULL, g, dy, n, 0};
    run((n + CHUNK_ELEMS - 1) / CHUNK_ELEMS, n, gelu_mul_item, &c);
}

/* --------------------------------------------------------- patch embedding */

struct im2col_ctx {
    float *cols;
    const float *x;
    int dz, hi, wi, c, p;  /* dz = 1 and 2-D patches when is3d is 0 */
    int gz, gh, gw, is3d;
};

/* One image: cols rows are its patches in grid order, columns (c, [pz,] py, px). */
static void im2col_item(void *vctx, size_t b)
{
    struct im2col_ctx *c = vctx;
    int C = c->c, P = c->p, pz_n = c->is3d ? P : 1;
    size_t K = (size_t)C * P * P * pz_n;
    size_t npatch = (size_t)c->gz * c->gh * c->gw;
    const float *img = c->x + b * (size_t)c->dz * c->hi * c->wi * C;
    float *out = c->cols + b * npatch * K;
    for (int gz = 0; gz < c->gz; gz++)
        for (int gy = 0; gy < c->gh; gy++)
            for (int gx = 0; gx < c->gw; gx++) {
                for (int pz = 0; pz < pz_n; pz++)
                    for (int py = 0; py < P; py++) {
                        size_t z = (size_t)gz * pz_n + pz, y = (size_t)gy * P + py;
                        const float *src = img + ((z * c->hi + y) * c->wi + (size_t)gx * P) * C;
                        /* src[px*C + ch] goes to column ((ch*pz_n + pz)*P + py)*P + px */
                        for (int ch = 0; ch < C; ch++) {
                            float *dst = out + (((size_t)ch * pz_n + pz) * P + py) * P;
                            for (int px = 0; px < P; px++)
                                dst[px] = src[(size_t)px * C + ch];
                        }
                    }
                out += K;
            }
}

void emoe_patch_im2col_2d(float *cols, const float *x, int B, int Hi, int Wi, int C, int P)
{
    if (B <= 0 || P <= 0 || C <= 0)
        return;
    struct im2col_ctx c = {cols, x, 1, Hi, Wi, C, P, 1, Hi / P, Wi / P, 0};
    run((size_t)B, (size_t)B * Hi * Wi * C, im2col_item, &c);
}

void emoe_patch_im2col_3d(float *cols, const float *x, int B, int Dz, int Hi, int Wi, int C,
                          int P)
{
    if (B <= 0 || P <= 0 || C <= 0)
        return;
    struct im2col_ctx c = {cols, x, Dz, Hi, Wi, C, P, Dz / P, Hi / P, Wi / P, 1};
    run((size_t)B, (size_t)B * Dz * Hi * Wi * C, im2col_item, &c);
}

void emoe_patch_embed_forward_2d(float *y, float *cols, const float *x, const float *w,
                                 const float *b, int B, int Hi, int Wi, int C, int P, int D)
{
    if (B <= 0 || P <= 0)
        return;
    emoe_patch_im2col_2d(cols, x, B, Hi, Wi, C, P);
    emoe_linear_forward(y, cols, w, b, B * (Hi / P) * (Wi / P), C * P * P, D);
}

void emoe_patch_embed_forward_3d(float *y, float *cols, const float *x, const float *w,
                                 const float *b, int B, int Dz, int Hi, int Wi, int C, int P,
                                 int D)
{
    if (B <= 0 || P <= 0)
        return;
    emoe_patch_im2col_3d(cols, x, B, Dz, Hi, Wi, C, P);
    emoe_linear_forward(y, cols, w, b, B * (Dz / P) * (Hi / P) * (Wi / P), C * P * P * P, D);
}

void emoe_patch_embed_backward(float *dw, float *db, const float *dy, const float *cols,
                               int BN, int K, int D)
{
    emoe_linear_backward(NULL, dw, db, dy, cols, NULL, BN, K, D);
}

/* ---------------------------------------- class token and position embedding */

struct embed_ctx {
    float *x, *dpatch, *dcls, *dpos;
    const float *patch, *cls, *pos, *dx;
    size_t b, n, d;
};

static void embed_forward_item(void *vctx, size_t b)
{
    struct embed_ctx *c = vctx;
    size_t d = c->d, n = c->n;
    float *x = c->x + b * (n + 1) * d;
    const float *patch = c->patch + b * n * d;
    for (size_t j = 0; j < d; j++)
        x[j] = c->cls[j] + c->pos[j];
    for (size_t i = 0; i < n * d; i++)
        x[d + i] = patch[i] + c->pos[d + i];
}

void emoe_embed_forward(float *x, const float *patch, const float *cls, const float *pos,
                        int B, int N, int D)
{
    if (B <= 0 || D <= 0 || N < 0)
        return;
    struct embed_ctx c = {0};
    c.x = x;
    c.patch = patch;
    c.cls = cls;
    c.pos = pos;
    c.b = (size_t)B;
    c.n = (size_t)N;
    c.d = (size_t)D;
    run(c.b, c.b * (c.n + 1) * c.d, embed_forward_item, &c);
}

/* Item = token t: dpos[t] (and dcls for t = 0) += the sum over images in order;
 * dpatch rows of that token. */
static void embed_backward_item(void *vctx, size_t t)
{
    struct embed_ctx *c = vctx;
    size_t d = c->d, n = c->n, stride = (n + 1) * d;
    const float *g = c->dx + t * d;
    for (size_t c0 = 0; c0 < d; c0 += COLS) {
        size_t nc = d - c0 < COLS ? d - c0 : COLS;
        if (c->dpos)
            column_block_sum(c->dpos + t * d + c0, g + c0, c->b, stride, nc);
        if (t == 0 && c->dcls)
            column_block_sum(c->dcls + c0, g + c0, c->b, stride, nc);
    }
    if (t > 0 && c->dpatch)
        for (size_t b = 0; b < c->b; b++) {
            float *dp = c->dpatch + (b * n + t - 1) * d;
            const float *gb = g + b * stride;
            for (size_t j = 0; j < d; j++)
                dp[j] += gb[j];
        }
}

void emoe_embed_backward(float *dpatch, float *dcls, float *dpos, const float *dx, int B,
                         int N, int D)
{
    if (B <= 0 || D <= 0 || N < 0)
        return;
    struct embed_ctx c = {0};
    c.dpatch = dpatch;
    c.dcls = dcls;
    c.dpos = dpos;
    c.dx = dx;
    c.b = (size_t)B;
    c.n = (size_t)N;
    c.d = (size_t)D;
    run(c.n + 1, c.b * (c.n + 1) * c.d, embed_backward_item, &c);
}

void emoe_token_gather(float *out, const float *x, int B, int T, int D, int t)
{
    for (int b = 0; b < B; b++)
        memcpy(out + (size_t)b * D, x + ((size_t)b * T + t) * D, (size_t)D * sizeof *out);
}

void emoe_token_gather_backward(float *dx, const float *dout, int B, int T, int D, int t)
{
    for (int b = 0; b < B; b++) {
        float *g = dx + ((size_t)b * T + t) * D;
        const float *s = dout + (size_t)b * D;
        for (int j = 0; j < D; j++)
            g[j] += s[j];
    }
}

/* ------------------------------------------- position-embedding resampling */

/*
 * Source coordinate and weights along one axis, as PyTorch's CPU kernels compute
 * them for align_corners=False with an output size given (scale = in/out, float).
 */
static void linear_coeffs(int in, int out, int o, int *i0, int *i1, float *l0, float *l1)
{
    float scale = (float)in / (float)out;
    float src = scale * ((float)o + 0.5f) - 0.5f;
    if (src < 0.0f)
        src = 0.0f;
    int i = (int)src;
    if (i > in - 1)
        i = in - 1;
    *i0 = i;
    *i1 = i + (i < in - 1 ? 1 : 0);
    *l1 = src - (float)i;
    *l0 = 1.0f - *l1;
}

static float cubic1(float x, float a) /* |x| <= 1 */
{
    return ((a + 2.0f) * x - (a + 3.0f)) * x * x + 1.0f;
}

static float cubic2(float x, float a) /* 1 < |x| < 2 */
{
    return ((a * x - 5.0f * a) * x + 8.0f * a) * x - 4.0f * a;
}

static void cubic_coeffs(int in, int out, int o, int idx[4], float w[4])
{
    const float a = -0.75f;
    float scale = (float)in / (float)out;
    float src = scale * ((float)o + 0.5f) - 0.5f;
    float f = floorf(src);
    int i = (int)f;
    float t = src - f;
    w[0] = cubic2(t + 1.0f, a);
    w[1] = cubic1(t, a);
    w[2] = cubic1(1.0f - t, a);
    w[3] = cubic2(2.0f - t, a);
    for (int k = 0; k < 4; k++) {
        int j = i - 1 + k;
        idx[k] = j < 0 ? 0 : j > in - 1 ? in - 1 : j;
    }
}

/* The antialiasing filters of PyTorch's interpolate(antialias=True). */
static double aa_filter(double x, int cubic)
{
    x = x < 0.0 ? -x : x;
    if (!cubic)
        return x < 1.0 ? 1.0 - x : 0.0;
    const double a = -0.5;
    if (x < 1.0)
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0)
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    return 0.0;
}

/* Input span [*lo, *lo + *n) and unnormalised weights w(j) = filter((j + lo - center
 * + 0.5) * invscale) of output o along one axis; returns the weight total. */
struct aa_axis {
    int lo, n, cubic;
    double center, invscale, total;
};

static void aa_axis_init(struct aa_axis *ax, int in, int out, int o, int cubic)
{
    double scale = (double)in / out;
    double support = (cubic ? 2.0 : 1.0) * (scale >= 1.0 ? scale : 1.0);
    ax->cubic = cubic;
    ax->center = scale * (o + 0.5);
    ax->invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
    long lo = (long)(ax->center - support + 0.5), hi = (long)(ax->center + support + 0.5);
    lo = lo < 0 ? 0 : lo;
    hi = hi > in ? in : hi;
    ax->lo = (int)lo;
    ax->n = (int)(hi - lo);
    ax->total = 0.0;
    for (int j = 0; j < ax->n; j++)
        ax->total += aa_filter((j + ax->lo - ax->center + 0.5) * ax->invscale, cubic);
}

static double aa_weight(const struct aa_axis *ax, int j)
{
    double w = aa_filter((j + ax->lo - ax->center + 0.5) * ax->invscale, ax->cubic);
    return ax->total != 0.0 ? w / ax->total : w;
}

int emoe_pos_embed_resample(float *out, const float *in, int nprefix, int Hi, int Wi, int Ho,
                            int Wo, int D, enum emoe_interp mode, struct emoe_error *err)
{
    if (nprefix < 0 || Hi <= 0 || Wi <= 0 || Ho <= 0 || Wo <= 0 || D <= 0)
        return emoe_error_set(err, EMOE_EINVAL,
                              "position embedding: bad resample sizes (%d prefix, %dx%d to "
                              "%dx%d, %d channels)",
                              nprefix, Hi, Wi, Ho, Wo, D);
    if (mode != EMOE_INTERP_BILINEAR && mode != EMOE_INTERP_BICUBIC &&
        mode != EMOE_INTERP_BILINEAR_AA && mode != EMOE_INTERP_BICUBIC_AA)
        return emoe_error_set(err, EMOE_EINVAL, "position embedding: unknown interpolation %d",
                              (int)mode);
    size_t d = (size_t)D;
    memcpy(out, in, (size_t)nprefix * d * sizeof *out);
    const float *src = in + (size_t)nprefix * d;
    float *dst = out + (size_t)nprefix * d;
    for (int oy = 0; oy < Ho; oy++)
        for (int ox = 0; ox < Wo; ox++) {
            float *o = dst + ((size_t)oy * Wo + ox) * d;
            if (mode == EMOE_INTERP_BILINEAR) {
                int y0, y1, x0, x1;
                float ly0, ly1, lx0, lx1;
                linear_coeffs(Hi, Ho, oy, &y0, &y1, &ly0, &ly1);
                linear_coeffs(Wi, Wo, ox, &x0, &x1, &lx0, &lx1);
                const float *p00 = src + ((size_t)y0 * Wi + x0) * d;
                const float *p01 = src + ((size_t)y0 * Wi + x1) * d;
                const float *p10 = src + ((size_t)y1 * Wi + x0) * d;
                const float *p11 = src + ((size_t)y1 * Wi + x1) * d;
                for (size_t j = 0; j < d; j++)
                    o[j] = ly0 * (lx0 * p00[j] + lx1 * p01[j]) +
                           ly1 * (lx0 * p10[j] + lx1 * p11[j]);
            } else if (mode == EMOE_INTERP_BILINEAR_AA || mode == EMOE_INTERP_BICUBIC_AA) {
                int cubic = mode == EMOE_INTERP_BICUBIC_AA;
                struct aa_axis ay, ax;
                aa_axis_init(&ay, Hi, Ho, oy, cubic);
                aa_axis_init(&ax, Wi, Wo, ox, cubic);
                memset(o, 0, d * sizeof *o);
                for (int jy = 0; jy < ay.n; jy++) {
                    double wy = aa_weight(&ay, jy);
                    for (int jx = 0; jx < ax.n; jx++) {
                        float w = (float)(wy * aa_weight(&ax, jx));
                        const float *p = src + ((size_t)(ay.lo + jy) * Wi + ax.lo + jx) * d;
                        for (size_t j = 0; j < d; j++)
                            o[j] += w * p[j];
                    }
                }
            } else {
                int iy[4], ix[4];
                float wy[4], wx[4];
                cubic_coeffs(Hi, Ho, oy, iy, wy);
                cubic_coeffs(Wi, Wo, ox, ix, wx);
                for (size_t j = 0; j < d; j++) {
                    float acc = 0.0f;
                    for (int ky = 0; ky < 4; ky++) {
                        const float *row = src + (size_t)iy[ky] * Wi * d;
                        float r = wx[0] * row[(size_t)ix[0] * d + j] +
                                  wx[1] * row[(size_t)ix[1] * d + j] +
                                  wx[2] * row[(size_t)ix[2] * d + j] +
                                  wx[3] * row[(size_t)ix[3] * d + j];
                        acc += wy[ky] * r;
                    }
                    o[j] = acc;
                }
            }
        }
    return EMOE_OK;
}

int emoe_pos_embed_resample3d(float *out, const float *in, int nprefix, int Di, int Hi, int Wi,
                              int Do, int Ho, int Wo, int D, enum emoe_interp mode,
                              struct emoe_error *err)
{
    if (nprefix < 0 || Di <= 0 || Hi <= 0 || Wi <= 0 || Do <= 0 || Ho <= 0 || Wo <= 0 || D <= 0)
        return emoe_error_set(err, EMOE_EINVAL,
                              "position embedding: bad resample sizes (%d prefix, %dx%dx%d to "
                              "%dx%dx%d, %d channels)",
                              nprefix, Di, Hi, Wi, Do, Ho, Wo, D);
    if (mode != EMOE_INTERP_BILINEAR)
        return emoe_error_set(err, EMOE_EINVAL,
                              "position embedding: interpolation %d on a 3-D grid (only "
                              "linear)",
                              (int)mode);
    size_t d = (size_t)D;
    memcpy(out, in, (size_t)nprefix * d * sizeof *out);
    const float *src = in + (size_t)nprefix * d;
    float *dst = out + (size_t)nprefix * d;
    for (int oz = 0; oz < Do; oz++) {
        int z0, z1;
        float lz0, lz1;
        linear_coeffs(Di, Do, oz, &z0, &z1, &lz0, &lz1);
        for (int oy = 0; oy < Ho; oy++) {
            int y0, y1;
            float ly0, ly1;
            linear_coeffs(Hi, Ho, oy, &y0, &y1, &ly0, &ly1);
            for (int ox = 0; ox < Wo; ox++) {
                int x0, x1;
                float lx0, lx1;
                linear_coeffs(Wi, Wo, ox, &x0, &x1, &lx0, &lx1);
                float *o = dst + (((size_t)oz * Ho + oy) * Wo + ox) * d;
#define AT(z, y, x) (src + (((size_t)(z) * Hi + (y)) * Wi + (x)) * d)
                const float *p000 = AT(z0, y0, x0), *p001 = AT(z0, y0, x1);
                const float *p010 = AT(z0, y1, x0), *p011 = AT(z0, y1, x1);
                const float *p100 = AT(z1, y0, x0), *p101 = AT(z1, y0, x1);
                const float *p110 = AT(z1, y1, x0), *p111 = AT(z1, y1, x1);
#undef AT
                for (size_t j = 0; j < d; j++)
                    o[j] = lz0 * (ly0 * (lx0 * p000[j] + lx1 * p001[j]) +
                                  ly1 * (lx0 * p010[j] + lx1 * p011[j])) +
                           lz1 * (ly0 * (lx0 * p100[j] + lx1 * p101[j]) +
                                  ly1 * (lx0 * p110[j] + lx1 * p111[j]));
            }
        }
    }
    return EMOE_OK;
}
