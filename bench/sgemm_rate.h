/*
 * sgemm_rate.h: the reference every benchmark measures against in the same run.
 */
#ifndef EMOE_BENCH_SGEMM_RATE_H
#define EMOE_BENCH_SGEMM_RATE_H

/* cblas_sgemm GFLOP/s on n x n x n, OpenBLAS threaded over emoe_threads_get()
 * threads: one warm-up call, then the best of repeat timed calls. */
double bench_sgemm_gflops(int n, int repeat);

#endif
