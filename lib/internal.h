/*
 * internal.h: private declarations shared by libemoe's modules.  Not installed.
 */
#ifndef EMOE_INTERNAL_H
#define EMOE_INTERNAL_H

#include "emoe.h"

#include <stdatomic.h>

/*
 * Storage behind tensors.  A buffer is heap memory (freed with it), a read-only
 * file mapping (unmapped with it) or borrowed memory (left alone).  Tensors hold a
 * reference; views into one mapping share it.
 */
enum emoe_buffer_kind { EMOE_BUFFER_HEAP, EMOE_BUFFER_MMAP, EMOE_BUFFER_BORROWED };
struct emoe_buffer {
    atomic_int refs;
    enum emoe_buffer_kind kind;
    void *base;
    size_t size;
};

/* A heap buffer of size bytes, 64-byte aligned and zero-filled. */
struct emoe_buffer *emoe_buffer_alloc(size_t size);
/* Map a whole regular file read-only (size 0 gives base NULL). */
int emoe_buffer_map_fd(int fd, const char *name, struct emoe_buffer **out,
                       struct emoe_error *err);
struct emoe_buffer *emoe_buffer_ref(struct emoe_buffer *b);
void emoe_buffer_unref(struct emoe_buffer *b);

/*
 * A tensor whose data is at `data` inside buffer b (a reference is taken).  The
 * shape must already have passed emoe_shape_check().
 */
int emoe_tensor_view(struct emoe_buffer *b, void *data, enum emoe_dtype dtype, int ndim,
                     const int64_t *shape, struct emoe_tensor **out, struct emoe_error *err);

/* Reads exactly n bytes; EMOE_EFORMAT "truncated" on early EOF, EMOE_EIO on error. */
int emoe_read_full(FILE *f, const char *name, void *buf, size_t n, const char *what,
                   struct emoe_error *err);

/* Byte order helpers. */
void emoe_bswap_inplace(void *data, size_t nelem, size_t elsize);
static inline uint64_t emoe_load_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}
static inline uint32_t emoe_load_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint16_t emoe_load_le16(const unsigned char *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}
static inline void emoe_store_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* OpenBLAS's own thread count (emoe keeps it at 1: see gemm.c). */
void emoe_blas_threads_apply(int n);
/* Nonzero inside a work item of emoe_parallel_for (nested loops run serially). */
int emoe_in_parallel(void);

/*
 * C = alpha op(A) op(B) + beta C, row-major, as cblas_sgemm, with the larger
 * output dimension split over the pool's threads (gemm.c).  Inside a parallel
 * loop it is a plain single-threaded call.
 */
#include <cblas.h>
void emoe_sgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
                const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);

#endif
