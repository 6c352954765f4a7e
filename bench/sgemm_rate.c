/*
 * sgemm_rate.c: cblas_sgemm GFLOP/s, the reference of every benchmark (see sgemm_rate.h).
 */
#include "config.h"
#include "sgemm_rate.h"
#include "common.h"

#include <cblas.h>
#include <unistd.h>

double bench_sgemm_gflops(int n, int repeat)
{
    size_t nn = (size_t)n * (size_t)n;
    float *a = emoe_alloc_aligned(nn * 4), *b = emoe_alloc_aligned(nn * 4),
          *c = emoe_alloc_aligned(nn * 4);
    if (!a || !b || !c)
        emoe_tool_die("out of memory");
    for (size_t i = 0; i < nn; i++) {
        a[i] = (float)(i % 7) * 0.1f;
        b[i] = (float)(i % 5) * 0.1f;
    }
    /* OpenBLAS's own threading with all of emoe's threads (libemoe keeps it at 1) */
    openblas_set_num_threads(emoe_threads_get());
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
    double best = 0;
    for (int r = 0; r < repeat; r++) {
        double t = emoe_tool_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
        t = emoe_tool_now() - t;
        double g = 2.0 * n * n * (double)n / t / 1e9;
        if (g > best)
            best = g;
    }
    openblas_set_num_threads(1);
    usleep(300000); /* OpenBLAS's threads spin for a while after a call: let them sleep */
    emoe_free_aligned(a);
    emoe_free_aligned(b);
    emoe_free_aligned(c);
    return best;
}
