/*
 * bench_vit: training and inference images/s of a small ViT (D 192, depth 6, 3
 * heads, patch 4 on 32x32x3, 10 classes; the vit-mini preset), its achieved
 * GFLOP/s (forward FLOPs from emoe_vit_flops, 3x for a training step) and, in the
 * same run, cblas_sgemm GFLOP/s on 2048 x 2048 (best of 3, before and after the
 * model, averaged); the ratio is the model FLOP utilisation.  Also prints the peak RSS after training.
 *
 *   bench_vit [-j N] [--batch B] [--eval-batch B] [--steps S] [--preset NAME]
 *             [--router eigen|softmax --moe-blocks SPEC --experts E --rank R --bottleneck F]
 *
 * With --router the model carries MoE branches (top-1); the FLOPs then add the
 * routed work actually executed per image: per branch and routed token, the router
 * (eigen: 2 D r for z = Q^T h; softmax: 2 D E) and one expert (4 D F).  The
 * EMoE benchmark of the MoE issue is
 *   bench_vit -j 2 --router eigen --moe-blocks last3 --experts 8 --rank 32 --bottleneck 192
 */
#include "config.h"
#include "common.h"
#include "sgemm_rate.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static void check(int rc, const struct emoe_error *err)
{
    if (rc)
        emoe_tool_fail(err);
}

int main(int argc, char **argv)
{
    int threads = 0, B = 128, EB = 256, steps = 5;
    const char *preset = "vit-mini";
    struct emoe_moe_config mc;
    emoe_moe_config_init(&mc);
    int use_moe = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-j") && i + 1 < argc)
            threads = (int)emoe_tool_parse_long("-j", argv[++i], 0, 1024);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            B = (int)emoe_tool_parse_long("--batch", argv[++i], 1, 65536);
        else if (!strcmp(argv[i], "--eval-batch") && i + 1 < argc)
            EB = (int)emoe_tool_parse_long("--eval-batch", argv[++i], 1, 65536);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = (int)emoe_tool_parse_long("--steps", argv[++i], 1, 100000);
        else if (!strcmp(argv[i], "--preset") && i + 1 < argc)
            preset = argv[++i];
        else if (!strcmp(argv[i], "--router") && i + 1 < argc) {
            if (emoe_router_from_name(argv[++i], &mc.router, NULL) != EMOE_OK)
                emoe_tool_usage_error("--router: unknown router '%s'", argv[i]);
            use_moe = mc.router != EMOE_ROUTER_NONE;
        } else if (!strcmp(argv[i], "--moe-blocks") && i + 1 < argc)
            snprintf(mc.blocks, sizeof mc.blocks, "%s", argv[++i]);
        else if (!strcmp(argv[i], "--experts") && i + 1 < argc)
            mc.experts = (int)emoe_tool_parse_long("--experts", argv[++i], 1, 1024);
        else if (!strcmp(argv[i], "--rank") && i + 1 < argc)
            mc.rank = (int)emoe_tool_parse_long("--rank", argv[++i], 1, 4096);
        else if (!strcmp(argv[i], "--bottleneck") && i + 1 < argc)
            mc.bottleneck = (int)emoe_tool_parse_long("--bottleneck", argv[++i], 1, 65536);
        else {
            fprintf(stderr, "usage: bench_vit [-j N] [--batch B] [--eval-batch B] [--steps S] "
                            "[--preset NAME] [--router R --moe-blocks S --experts E --rank R "
                            "--bottleneck F]\n");
            return 2;
        }
    }
    emoe_tool_init(argc, argv, "bench_vit");
    threads = emoe_threads_set(threads);
    struct emoe_error err = {0};
    struct emoe_vit_config cfg;
    check(emoe_vit_preset(preset, &cfg, &err), &err);
    struct emoe_model *m;
    struct emoe_param_spec *specs = NULL;
    size_t nspecs = 0;
    struct emoe_moe *moe = NULL;
    double moe_flops = 0;
    int nbranch = 0;
    if (use_moe) {
        check(emoe_moe_config_check(&mc, cfg.embed_dim, cfg.depth, &err), &err);
        check(emoe_moe_param_specs(&mc, cfg.embed_dim, cfg.depth, &specs, &nspecs, &err), &err);
        int idx[256];
        check(emoe_moe_parse_blocks(mc.blocks, cfg.depth, idx, &nbranch, &err), &err);
        double D = cfg.embed_dim, tok = emoe_vit_tokens(&cfg) - (mc.patches_only ? 1 : 0);
        double router = mc.router == EMOE_ROUTER_SOFTMAX ? 2 * D * mc.experts : 2 * D * mc.rank;
        moe_flops = nbranch * tok * (router + 4.0 * D * mc.bottleneck * (mc.top_k ? mc.top_k : mc.experts));
    }
    check(emoe_model_new(&cfg, specs, nspecs, &m, &err), &err);
    emoe_model_init(m, 1);
    if (use_moe)
        check(emoe_moe_new(&mc, m, &moe, &err), &err);
    struct emoe_adamw_config ac;
    emoe_adamw_config_init(&ac);
    struct emoe_adamw *opt;
    check(emoe_adamw_new(m, &ac, &opt, &err), &err);
    int maxb = B > EB ? B : EB;
    size_t isz = (size_t)cfg.image_size[0] * cfg.image_size[1] * cfg.in_chans;
    unsigned char *x = malloc((size_t)maxb * isz);
    int32_t *y = malloc((size_t)maxb * sizeof *y);
    if (!x || !y)
        emoe_tool_die("out of memory");
    struct emoe_rng r;
    emoe_rng_init(&r, 1, 0);
    for (size_t i = 0; i < (size_t)maxb * isz; i++)
        x[i] = (unsigned char)emoe_rng_below(&r, 256);
    for (int i = 0; i < maxb; i++)
        y[i] = (int32_t)emoe_rng_below(&r, (uint32_t)cfg.num_classes);
    double flops = emoe_vit_flops(&cfg) + moe_flops;
    /* sgemm before and after the model runs: on a shared machine the mean of the two is
     * a fairer reference than either */
    double sg0 = bench_sgemm_gflops(2048, 3);

    /* training: forward, loss, backward, clip, AdamW (one warm-up step) */
    check(emoe_model_reserve(m, B, 1, &err), &err);
    double t_fwd = 0, t_bwd = 0, t_opt = 0, t0 = 0;
    for (int s = 0; s <= steps; s++) {
        if (s == 1)
            t0 = emoe_tool_now();
        double a = emoe_tool_now();
        check(emoe_model_forward(m, x, EMOE_U8, B, 1, &err), &err);
        check(emoe_model_loss(m, y, 0.1f, NULL, NULL, NULL, &err), &err);
        double b = emoe_tool_now();
        emoe_model_zero_grad(m);
        check(emoe_model_backward(m, &err), &err);
        double c = emoe_tool_now();
        check(emoe_clip_grad_norm(emoe_model_grads(m), emoe_model_trainable_numel(m), 1.0, NULL,
                                  &err),
              &err);
        check(emoe_adamw_step(opt, 1e-4, &err), &err);
        double d = emoe_tool_now();
        if (s > 0) {
            t_fwd += b - a;
            t_bwd += c - b;
            t_opt += d - c;
        }
    }
    double t_train = emoe_tool_now() - t0;
    double train_ips = (double)steps * B / t_train;
    double train_gf = train_ips * 3 * flops / 1e9;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss_train = ru.ru_maxrss / 1024.0;

    /* inference (a separate model so the training activations are not reused) */
    struct emoe_model *e;
    struct emoe_moe *emoe = NULL;
    check(emoe_model_new(&cfg, specs, nspecs, &e, &err), &err);
    if (use_moe)
        check(emoe_moe_new(&mc, e, &emoe, &err), &err);
    check(emoe_model_reserve(e, EB, 0, &err), &err);
    check(emoe_model_forward(e, x, EMOE_U8, EB, 0, &err), &err);
    double t1 = emoe_tool_now();
    for (int s = 0; s < steps; s++)
        check(emoe_model_forward(e, x, EMOE_U8, EB, 0, &err), &err);
    double t_inf = emoe_tool_now() - t1;
    double inf_ips = (double)steps * EB / t_inf;
    double inf_gf = inf_ips * flops / 1e9;

    double sg1 = bench_sgemm_gflops(2048, 3), sg = 0.5 * (sg0 + sg1);
    printf("bench_vit: %s (D %d, depth %d, heads %d, patch %d, %dx%dx%d, %d classes), -j %d, "
           "BLAS %s\n",
           preset, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.image_size[0],
           cfg.image_size[1], cfg.in_chans, cfg.num_classes, threads, emoe_blas_corename());
    if (use_moe)
        printf("MoE: router %s, %d branches (%s), E %d, r %d, F %d, top-%d\n",
               emoe_router_name(mc.router), nbranch, mc.blocks, mc.experts, mc.rank,
               mc.bottleneck, mc.top_k);
    printf("forward FLOPs per image: %.1f M\n", flops / 1e6);
    printf("training  (batch %d): %.1f images/s, %.1f GFLOP/s (forward %.0f ms, backward %.0f "
           "ms, clip+adamw %.0f ms per step)\n",
           B, train_ips, train_gf, 1e3 * t_fwd / steps, 1e3 * t_bwd / steps,
           1e3 * t_opt / steps);
    printf("inference (batch %d): %.1f images/s, %.1f GFLOP/s\n", EB, inf_ips, inf_gf);
    printf("sgemm 2048x2048: %.1f GFLOP/s (before %.1f, after %.1f)\n", sg, sg0, sg1);
    printf("utilisation: training %.2f, inference %.2f\n", train_gf / sg, inf_gf / sg);
    printf("peak RSS after training: %.0f MB\n", rss_train);
    emoe_moe_free(emoe);
    emoe_model_free(e);
    emoe_adamw_free(opt);
    emoe_moe_free(moe);
    emoe_model_free(m);
    free(specs);
    free(x);
    free(y);
    return 0;
}
