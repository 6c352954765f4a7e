/*
 * bench_layers: forward and backward time of every layer kernel at the shapes of
 * one ViT training step (default D 192, T 65 = 1 + 8x8 patches of 32x32x3 images
 * with P 4, H 3, MLP 4D, batch 128, 100 classes), next to cblas_sgemm 2048x2048
 * measured in the same run.  Times are the best of R repetitions after a warm-up.
 * GFLOP/s counts the multiply-adds of the matrix products only (2 flops each).
 *
 *   bench_layers [-j N] [--batch B] [--dim D] [--heads H] [--repeat R]
 */
#include "config.h"
#include "common.h"
#include "sgemm_rate.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int repeat = 10;

static float *buf(size_t n)
{
    float *p = emoe_alloc_aligned(n * sizeof *p);
    if (!p)
        emoe_tool_die("out of memory");
    for (size_t i = 0; i < n; i++)
        p[i] = (float)((i * 2654435761u) % 1000) * 0.002f - 1.0f;
    return p;
}

/* One layer: fwd() and bwd() closures over a context. */
struct bench {
    const char *name;
    void (*fwd)(void *);
    void (*bwd)(void *);
    double flops_fwd, flops_bwd; /* matrix-product flops */
};

static double best_time(void (*fn)(void *), void *ctx)
{
    double best = 1e30;
    for (int r = 0; r <= repeat; r++) {
        double t = emoe_tool_now();
        fn(ctx);
        t = emoe_tool_now() - t;
        if (r > 0 && t < best)
            best = t;
    }
    return best;
}

static double total_ms = 0;

static void report(const struct bench *b, void *ctx)
{
    double tf = best_time(b->fwd, ctx), tb = best_time(b->bwd, ctx);
    total_ms += (tf + tb) * 1e3;
    printf("  %-22s fwd %8.2f ms", b->name, tf * 1e3);
    if (b->flops_fwd > 0)
        printf(" %6.1f GF/s", b->flops_fwd / tf / 1e9);
    else
        printf("            ");
    printf("   bwd %8.2f ms", tb * 1e3);
    if (b->flops_bwd > 0)
        printf(" %6.1f GF/s", b->flops_bwd / tb / 1e9);
    printf("\n");
}

/* ------------------------------------------------------------- the layers */

struct ctx {
    int B, T, D, H, N, Din, Dout, K, img, P, C;
    float *x, *y, *w, *b, *dx, *dw, *db, *mean, *rstd, *att, *scratch, *cols;
    int32_t *labels;
};

static void lin_f(void *v)
{
    struct ctx *c = v;
    emoe_linear_forward(c->y, c->x, c->w, c->b, c->N, c->Din, c->Dout);
}
static void lin_b(void *v)
{
    struct ctx *c = v;
    emoe_linear_backward(c->dx, c->dw, c->db, c->y, c->x, c->w, c->N, c->Din, c->Dout);
}
static void ln_f(void *v)
{
    struct ctx *c = v;
    emoe_layernorm_forward(c->y, c->mean, c->rstd, c->x, c->w, c->b, c->N, c->D);
}
static void ln_b(void *v)
{
    struct ctx *c = v;
    emoe_layernorm_backward(c->dx, c->dw, c->db, c->y, c->x, c->w, c->mean, c->rstd, c->N, c->D);
}
static void gelu_f(void *v)
{
    struct ctx *c = v;
    emoe_gelu_forward(c->y, c->x, (size_t)c->N * c->D);
}
static void gelu_b(void *v)
{
    struct ctx *c = v;
    emoe_gelu_backward(c->dx, c->y, c->x, (size_t)c->N * c->D);
}
static void att_f(void *v)
{
    struct ctx *c = v;
    emoe_attention_forward(c->y, c->att, c->x, c->B, c->T, c->D, c->H);
}
static void att_b(void *v)
{
    struct ctx *c = v;
    emoe_attention_backward(c->dx, c->scratch, c->y, c->x, c->att, c->B, c->T, c->D, c->H);
}
static void patch_f(void *v)
{
    struct ctx *c = v;
    emoe_patch_embed_forward_2d(c->y, c->cols, c->x, c->w, c->b, c->B, c->img, c->img, c->C,
                                c->P, c->D);
}
static void patch_b(void *v)
{
    struct ctx *c = v;
    int n = (c->img / c->P) * (c->img / c->P);
    emoe_patch_embed_backward(c->dw, c->db, c->y, c->cols, c->B * n, c->C * c->P * c->P, c->D);
}
static void embed_f(void *v)
{
    struct ctx *c = v;
    emoe_embed_forward(c->y, c->x, c->w, c->b, c->B, c->T - 1, c->D);
}
static void embed_b(void *v)
{
    struct ctx *c = v;
    emoe_embed_backward(c->dx, c->dw, c->db, c->y, c->B, c->T - 1, c->D);
}
static void xent_f(void *v)
{
    struct ctx *c = v;
    double loss;
    int nc;
    if (emoe_cross_entropy(&loss, NULL, &nc, c->x, c->labels, c->B, c->K, 0.1f, NULL))
        emoe_tool_die("cross-entropy failed");
}
static void xent_b(void *v)
{
    struct ctx *c = v;
    double loss;
    if (emoe_cross_entropy(&loss, c->dx, NULL, c->x, c->labels, c->B, c->K, 0.1f, NULL))
        emoe_tool_die("cross-entropy failed");
}

int main(int argc, char **argv)
{
    int threads = 0, B = 128, D = 192, H = 3, img = 32, P = 4, C = 3, K = 100;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-j") && i + 1 < argc)
            threads = (int)emoe_tool_parse_long("-j", argv[++i], 0, 1024);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            B = (int)emoe_tool_parse_long("--batch", argv[++i], 1, 4096);
        else if (!strcmp(argv[i], "--dim") && i + 1 < argc)
            D = (int)emoe_tool_parse_long("--dim", argv[++i], 8, 4096);
        else if (!strcmp(argv[i], "--heads") && i + 1 < argc)
            H = (int)emoe_tool_parse_long("--heads", argv[++i], 1, 64);
        else if (!strcmp(argv[i], "--repeat") && i + 1 < argc)
            repeat = (int)emoe_tool_parse_long("--repeat", argv[++i], 1, 1000);
        else {
            fprintf(stderr, "usage: bench_layers [-j N] [--batch B] [--dim D] [--heads H] "
                            "[--repeat R]\n");
            return 2;
        }
    }
    if (D % H)
        emoe_tool_die("--dim %d is not a multiple of --heads %d", D, H);
    emoe_tool_init(argc, argv, "bench_layers");
    threads = emoe_threads_set(threads);
    int T = 1 + (img / P) * (img / P), N = B * T, F = 4 * D;
    printf("bench_layers: B %d, T %d, D %d, H %d, MLP %d, %d threads, OpenBLAS %s, best of %d\n",
           B, T, D, H, F, threads, emoe_blas_corename(), repeat);
    printf("  cblas_sgemm 2048x2048: %.1f GFLOP/s\n", bench_sgemm_gflops(2048, repeat));

    /* one set of buffers big enough for every layer */
    size_t big = (size_t)N * 3 * D;
    if ((size_t)N * F > big)
        big = (size_t)N * F;
    if ((size_t)B * H * T * T > big)
        big = (size_t)B * H * T * T;
    struct ctx c = {0};
    c.x = buf(big), c.y = buf(big), c.dx = buf(big), c.att = buf(big), c.scratch = buf(big);
    c.w = buf((size_t)F * D), c.dw = buf((size_t)F * D), c.b = buf((size_t)T * D);
    c.db = buf((size_t)T * D), c.mean = buf((size_t)N), c.rstd = buf((size_t)N);
    c.cols = buf((size_t)B * T * C * P * P);
    c.labels = malloc((size_t)B * sizeof *c.labels);
    if (!c.labels)
        emoe_tool_die("out of memory");
    for (int i = 0; i < B; i++)
        c.labels[i] = i % K;
    c.B = B, c.T = T, c.D = D, c.H = H, c.N = N, c.K = K, c.img = img, c.P = P, c.C = C;

    static const struct {
        const char *name;
        int din_mult, dout_mult; /* in units of D */
    } lin[] = {{"linear qkv D->3D", 1, 3}, {"linear proj D->D", 1, 1},
               {"linear fc1 D->4D", 1, 4}, {"linear fc2 4D->D", 4, 1}};
    double per_block = 0;
    for (size_t i = 0; i < sizeof lin / sizeof *lin; i++) {
        c.Din = lin[i].din_mult * D, c.Dout = lin[i].dout_mult * D;
        double f = 2.0 * N * (double)c.Din * c.Dout;
        struct bench b = {lin[i].name, lin_f, lin_b, f, 2 * f};
        double before = total_ms;
        report(&b, &c);
        per_block += total_ms - before;
    }
    {
        struct bench b = {"layernorm (x2/block)", ln_f, ln_b, 0, 0};
        double before = total_ms;
        report(&b, &c);
        per_block += 2 * (total_ms - before);
    }
    {
        c.D = F;
        struct bench b = {"gelu [N,4D]", gelu_f, gelu_b, 0, 0};
        double before = total_ms;
        report(&b, &c);
        per_block += total_ms - before;
        c.D = D;
    }
    {
        double f = 2.0 * 2.0 * B * (double)T * T * D; /* q k^T and a v */
        struct bench b = {"attention core", att_f, att_b, f, 2 * f};
        double before = total_ms;
        report(&b, &c);
        per_block += total_ms - before;
    }
    {
        double f = 2.0 * B * (T - 1) * (double)C * P * P * D;
        struct bench b = {"patch embed 2-D", patch_f, patch_b, f, f};
        report(&b, &c);
    }
    {
        struct bench b = {"cls + pos embed", embed_f, embed_b, 0, 0};
        report(&b, &c);
    }
    {
        struct bench b = {"cross-entropy K 100", xent_f, xent_b, 0, 0};
        report(&b, &c);
    }
    printf("  one block (fwd+bwd, 2 layernorms): %.1f ms\n", per_block);
    double block_flops = 3 * (2.0 * N * D * (3.0 * D + D + 2.0 * F) + 4.0 * B * (double)T * T * D);
    printf("  block matrix flops %.2f GFLOP (fwd+bwd): %.1f GFLOP/s effective\n",
           block_flops / 1e9, block_flops / (per_block / 1e3) / 1e9);

    emoe_free_aligned(c.x), emoe_free_aligned(c.y), emoe_free_aligned(c.dx);
    emoe_free_aligned(c.att), emoe_free_aligned(c.scratch), emoe_free_aligned(c.w);
    emoe_free_aligned(c.dw), emoe_free_aligned(c.b), emoe_free_aligned(c.db);
    emoe_free_aligned(c.mean), emoe_free_aligned(c.rstd), emoe_free_aligned(c.cols);
    free(c.labels);
    return 0;
}
