/*
 * bench_sgemm: cblas_sgemm GFLOP/s on 2048 x 2048 as the emoe tools get it.
 *
 * The tools call emoe_tool_init(), which gives OpenBLAS the fast kernel on CPUs it
 * does not recognise (see emoe_blas_preferred_coretype), and use all CPUs by
 * default.  In the same run the benchmark measures OpenBLAS's own default (a child
 * process started with --raw, which skips emoe_tool_init) and prints the ratio.
 *
 *   bench_sgemm [-j N] [--raw] [--size N] [--repeat R]
 */
#include "config.h"
#include "common.h"
#include "sgemm_rate.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int raw = 0, n = 2048, repeat = 10, threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--raw"))
            raw = 1;
        else if (!strcmp(argv[i], "-j") && i + 1 < argc)
            threads = (int)emoe_tool_parse_long("-j", argv[++i], 0, 1024);
        else if (!strcmp(argv[i], "--size") && i + 1 < argc)
            n = (int)emoe_tool_parse_long("--size", argv[++i], 16, 16384);
        else if (!strcmp(argv[i], "--repeat") && i + 1 < argc)
            repeat = (int)emoe_tool_parse_long("--repeat", argv[++i], 1, 1000);
        else {
            fprintf(stderr, "usage: bench_sgemm [-j N] [--raw] [--size N] [--repeat R]\n");
            return 2;
        }
    }
    if (!raw)
        emoe_tool_init(argc, argv, "bench_sgemm");
    threads = emoe_threads_set(threads);
    double g = bench_sgemm_gflops(n, repeat);
    if (raw) {
        printf("%s %.1f\n", emoe_blas_corename(), g);
        return 0;
    }
    /* OpenBLAS's own choice, in a child that skips emoe_tool_init. */
    char cmd[512], core[64] = "?";
    double g_raw = 0;
    const char *user = getenv("OPENBLAS_CORETYPE"), *autoset = getenv("EMOE_BLAS_CORETYPE_AUTO");
    int chosen_by_emoe = user && autoset && strcmp(user, autoset) == 0;
    snprintf(cmd, sizeof cmd, "%s/proc/%d/exe --raw -j %d --size %d --repeat %d",
             chosen_by_emoe ? "env -u OPENBLAS_CORETYPE " : "", (int)getpid(), threads, n,
             repeat);
    FILE *p = popen(cmd, "r");
    if (!p || fscanf(p, "%63s %lf", core, &g_raw) != 2)
        emoe_tool_die("cannot run the baseline child '%s'", cmd);
    pclose(p);
    printf("bench_sgemm: cblas_sgemm %dx%d, %d threads, best of %d\n", n, n, threads, repeat);
    printf("  OPENBLAS_CORETYPE         %s\n", chosen_by_emoe ? "set by emoe" : user ? "set by the user" : "unset");
    printf("  OpenBLAS default kernel   %-12s %7.1f GFLOP/s\n", core, g_raw);
    printf("  as the emoe tools get it  %-12s %7.1f GFLOP/s\n", emoe_blas_corename(), g);
    printf("  ratio tools/default       %.2f\n", g_raw > 0 ? g / g_raw : 0);
    printf("  target: >= 250 GFLOP/s with 2 threads (on AVX-512 CPUs): %s\n",
           g >= 250 ? "met" : "not met on this CPU");
    return 0;
}
