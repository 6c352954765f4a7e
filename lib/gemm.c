/*
 * gemm.c: cblas_sgemm on emoe's thread pool.
 *
 * OpenBLAS runs with one thread: its own worker threads, after every threaded
 * call, spin (sched_yield) for a long while, and on a machine whose cores our
 * loops also use they take the CPU from those loops (measured: about a tenth of
 * a ViT training step).  emoe_sgemm instead splits the larger output dimension
 * into one block per pool thread, each a single-threaded cblas_sgemm; on the
 * ViT's shapes that is as fast as OpenBLAS's own threading (bench_layers).
 *
 * Row-major only.  Every element of C is computed by one call over the full K,
 * so the result does not depend on the thread count.
 */
#include "config.h"
#include "internal.h"

#include <cblas.h>

/* Below this many flops a split costs more than it gains. */
#define SPLIT_MIN_FLOPS (1 << 21)
/* Blocks are multiples of this many rows or columns (the kernels' unrolling). */
#define SPLIT_ALIGN 32

struct gemm_ctx {
    CBLAS_TRANSPOSE ta, tb;
    int M, N, K, lda, ldb, ldc, by_rows, block;
    float alpha, beta;
    const float *A, *B;
    float *C;
};

static void gemm_item(void *vctx, size_t item)
{
    const struct gemm_ctx *c = vctx;
    int lo = (int)item * c->block, dim = c->by_rows ? c->M : c->N;
    int n = dim - lo < c->block ? dim - lo : c->block;
    const float *A = c->A, *B = c->B;
    float *C = c->C;
    int M = c->M, N = c->N;
    if (c->by_rows) { /* rows lo.. of C and of op(A) */
        A += c->ta == CblasNoTrans ? (size_t)lo * c->lda : (size_t)lo;
        C += (size_t)lo * c->ldc;
        M = n;
    } else { /* columns lo.. of C and of op(B) */
        B += c->tb == CblasNoTrans ? (size_t)lo : (size_t)lo * c->ldb;
        C += lo;
        N = n;
    }
    cblas_sgemm(CblasRowMajor, c->ta, c->tb, M, N, c->K, c->alpha, A, c->lda, B, c->ldb,
                c->beta, C, c->ldc);
}

void emoe_sgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
                const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return;
    int t = emoe_threads_get();
    int by_rows = M >= N, dim = by_rows ? M : N;
    if (t > 1 && !emoe_in_parallel() && (double)M * N * K * 2.0 >= SPLIT_MIN_FLOPS &&
        dim >= 2 * SPLIT_ALIGN) {
        int block = (dim + t - 1) / t;
        block = (block + SPLIT_ALIGN - 1) / SPLIT_ALIGN * SPLIT_ALIGN;
        struct gemm_ctx c = {ta, tb, M, N, K, lda, ldb, ldc, by_rows, block, alpha, beta,
                             A, B, C};
        emoe_parallel_for((size_t)((dim + block - 1) / block), gemm_item, &c);
        return;
    }
    cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
