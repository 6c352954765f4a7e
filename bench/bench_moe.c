/*
 * bench_moe: forward + backward time of one MoE branch with E experts, top-1,
 * against E = 1 on the same tokens (16,384 routed tokens of width 192, rank 32,
 * bottleneck 192 by default).  With sparse execution every token still runs one
 * expert, so the ratio measures what routing and dispatch cost on top of the
 * expert GEMMs.  Target: ratio <= 1.3.
 *
 *   bench_moe [-j N] [--router eigen|softmax|ermoe] [--experts E] [--repeat R]
 */
#include "config.h"
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define B 256
#define T 65 /* class token + 64 patches: 16,384 routed tokens */
#define D 192

struct run {
    struct emoe_moe_branch *b;
    int experts;
    double *t, *tf; /* [repeat] forward+backward and forward seconds */
};

static void setup(struct run *r, enum emoe_router_kind router, int experts, int repeat)
{
    struct emoe_error err = {0};
    struct emoe_moe_config c;
    emoe_moe_config_init(&c);
    c.router = router;
    c.experts = experts;
    c.rank = 32;
    c.bottleneck = 192;
    c.top_k = 1;
    c.seed = 1;
    if (emoe_moe_branch_new(&c, D, 0, &r->b, &err))
        emoe_tool_die("%s", err.msg);
    r->experts = experts;
    r->t = malloc((size_t)repeat * sizeof *r->t);
    r->tf = malloc((size_t)repeat * sizeof *r->tf);
    if (!r->t || !r->tf)
        emoe_tool_die("out of memory");
}

/* One forward(train) + backward; records the times at it (it < 0: warm-up). */
static void step(struct run *r, float *x, float *dx, const float *x0, int it)
{
    struct emoe_error err = {0};
    size_t n = (size_t)B * T * D;
    memcpy(x, x0, n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        dx[i] = 1e-3f * x0[(i * 7) % n];
    emoe_moe_branch_zero_grad(r->b);
    double t0 = emoe_tool_now();
    if (emoe_moe_branch_forward(r->b, x, B, T, D, 1, &err))
        emoe_tool_die("%s", err.msg);
    double t1 = emoe_tool_now();
    if (emoe_moe_branch_backward(r->b, dx, B, T, D, &err))
        emoe_tool_die("%s", err.msg);
    double t2 = emoe_tool_now();
    if (it >= 0) {
        r->t[it] = t2 - t0;
        r->tf[it] = t1 - t0;
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Prints the medians; returns the forward+backward median. */
static double report(struct run *r, enum emoe_router_kind router, int repeat, double *fwd)
{
    qsort(r->t, (size_t)repeat, sizeof *r->t, cmp_double);
    qsort(r->tf, (size_t)repeat, sizeof *r->tf, cmp_double);
    double med = r->t[repeat / 2];
    *fwd = r->tf[repeat / 2];
    int64_t counts[4096];
    struct emoe_routing_summary s;
    emoe_moe_branch_stats(r->b, counts, &s);
    printf("  E %-4d %-8s forward %7.2f ms  forward+backward %7.2f ms  (top-1 CV %.2f, "
           "unused experts %d)\n",
           r->experts, emoe_router_name(router), *fwd * 1e3, med * 1e3, s.cv, s.unused);
    free(r->t);
    free(r->tf);
    emoe_moe_branch_free(r->b);
    return med;
}

int main(int argc, char **argv)
{
    int threads = 0, repeat = 9, experts = 8;
    enum emoe_router_kind router = EMOE_ROUTER_EIGEN;
    for (int i = 1; i < argc; i++) {
        struct emoe_error err = {0};
        if (!strcmp(argv[i], "-j") && i + 1 < argc)
            threads = (int)emoe_tool_parse_long("-j", argv[++i], 0, 1024);
        else if (!strcmp(argv[i], "--repeat") && i + 1 < argc)
            repeat = (int)emoe_tool_parse_long("--repeat", argv[++i], 1, 1000);
        else if (!strcmp(argv[i], "--experts") && i + 1 < argc)
            experts = (int)emoe_tool_parse_long("--experts", argv[++i], 1, 4096);
        else if (!strcmp(argv[i], "--router") && i + 1 < argc) {
            if (emoe_router_from_name(argv[++i], &router, &err) || router == EMOE_ROUTER_NONE)
                emoe_tool_die("%s", err.msg[0] ? err.msg : "router 'none' has no branch");
        } else {
            fprintf(stderr, "usage: bench_moe [-j N] [--router eigen|softmax|ermoe] "
                            "[--experts E] [--repeat R]\n");
            return 2;
        }
    }
    emoe_tool_init(argc, argv, "bench_moe");
    threads = emoe_threads_set(threads);
    printf("bench_moe: one branch, %d routed tokens of width %d, rank 32, bottleneck 192, "
           "top-1, %d threads, median of %d\n", B * (T - 1), D, threads, repeat);
    struct run r1, re;
    setup(&r1, router, 1, repeat);
    setup(&re, router, experts, repeat);
    size_t n = (size_t)B * T * D;
    float *x0 = emoe_alloc_aligned(n * sizeof *x0), *x = emoe_alloc_aligned(n * sizeof *x),
          *dx = emoe_alloc_aligned(n * sizeof *dx);
    if (!x0 || !x || !dx)
        emoe_tool_die("out of memory");
    struct emoe_rng rng;
    emoe_rng_init(&rng, 3, 0);
    for (size_t i = 0; i < n; i++)
        x0[i] = emoe_rng_normal(&rng);
    /* interleaved, alternating the order, so both see the same machine load */
    for (int it = -1; it < repeat; it++) {
        if (it & 1) {
            step(&re, x, dx, x0, it);
            step(&r1, x, dx, x0, it);
        } else {
            step(&r1, x, dx, x0, it);
            step(&re, x, dx, x0, it);
        }
    }
    emoe_free_aligned(x0);
    emoe_free_aligned(x);
    emoe_free_aligned(dx);
    double f1, fe;
    double t1 = report(&r1, router, repeat, &f1);
    double te = report(&re, router, repeat, &fe);
    double ratio = te / t1;
    printf("  ratio E=%d / E=1 (forward+backward) %.2f, forward only %.2f\n", experts, ratio,
           fe / f1);
    printf("  target: <= 1.3: %s\n", ratio <= 1.3 ? "met" : "not met");
    return 0;
}
