/*
 * check_model.c: unit tests of lib/model.c: configs and presets, the parameter
 * registry, golden forward/backward against PyTorch (fixtures from
 * tests/gen_fixtures_model.py), a finite-difference gradient check of a whole tiny
 * model with a block hook, freezing, eval/train agreement and determinism.
 */
#include "config.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void *read_fixture(const char *name, size_t want)
{
    size_t size = 0;
    void *p = tu_read_file(tu_fixture(name), &size);
    ck_assert_msg(p != NULL, "cannot read fixture %s", name);
    ck_assert_msg(size == want, "fixture %s has %zu bytes, want %zu", name, size, want);
    return p;
}

static void tiny2d_config(struct emoe_vit_config *c)
{
    struct emoe_error err = {0};
    ck_assert_int_eq(emoe_vit_preset("vit-mini", c, &err), EMOE_OK);
    c->image_size[0] = c->image_size[1] = 8;
    c->patch_size = 4;
    c->in_chans = 3;
    c->embed_dim = 16;
    c->depth = 2;
    c->num_heads = 2;
    c->mlp_dim = 64;
    c->num_classes = 5;
    const float mean[3] = {0.4914f, 0.4822f, 0.4465f}, std[3] = {0.2470f, 0.2435f, 0.2616f};
    for (int i = 0; i < 3; i++) {
        c->mean[i] = mean[i];
        c->std[i] = std[i];
    }
}

static void tiny3d_config(struct emoe_vit_config *c)
{
    struct emoe_error err = {0};
    ck_assert_int_eq(emoe_vit_preset("vit-mini", c, &err), EMOE_OK);
    c->image_ndim = 3;
    c->image_size[0] = c->image_size[1] = c->image_size[2] = 8;
    c->patch_size = 4;
    c->in_chans = 1;
    c->embed_dim = 12;
    c->depth = 2;
    c->num_heads = 3;
    c->mlp_dim = 24;
    c->num_classes = 1;
    c->task = EMOE_TASK_REGRESS;
    c->mean[0] = 0.3f;
    c->std[0] = 1.7f;
}

/* Check per-tensor: |a - b| <= rel * |b| + 1e-5 * max|b| (elementwise, 1e-3 relative). */
static void compare_grads(struct emoe_model *m, const float *want, double rel)
{
    size_t off = 0;
    for (size_t i = 0; i < emoe_model_param_count(m); i++) {
        struct emoe_param *p = emoe_model_param_at(m, i);
        const float *w = want + off;
        off += p->numel;
        if (!p->grad)
            continue;
        double mx = 0.0;
        for (size_t k = 0; k < p->numel; k++)
            mx = fmax(mx, fabs(w[k]));
        for (size_t k = 0; k < p->numel; k++) {
            double d = fabs((double)p->grad[k] - w[k]);
            ck_assert_msg(d <= rel * fabs(w[k]) + 1e-5 * mx + 1e-9,
                          "%s[%zu]: grad %.9g, PyTorch %.9g", p->spec->name, k,
                          (double)p->grad[k], (double)w[k]);
        }
    }
}

struct golden {
    struct emoe_model *m;
    void *input, *targets;
    float *params, *grads, *logits, loss;
    int B, K;
};

static void golden_load(struct golden *g, const char *name, int is3d)
{
    struct emoe_error err = {0};
    struct emoe_vit_config c;
    char f[128];
    if (is3d)
        tiny3d_config(&c);
    else
        tiny2d_config(&c);
    g->B = is3d ? 2 : 3;
    g->K = c.num_classes;
    ck_assert_int_eq(emoe_model_new(&c, NULL, 0, &g->m, &err), EMOE_OK);
    size_t n = emoe_model_numel(g->m);
    snprintf(f, sizeof f, "model_%s_params.f32", name);
    g->params = read_fixture(f, n * 4);
    snprintf(f, sizeof f, "model_%s_grads.f32", name);
    g->grads = read_fixture(f, n * 4);
    snprintf(f, sizeof f, "model_%s_logits.f32", name);
    g->logits = read_fixture(f, (size_t)g->B * g->K * 4);
    snprintf(f, sizeof f, "model_%s_loss.f32", name);
    float *l = read_fixture(f, 4);
    g->loss = *l;
    free(l);
    size_t in = (size_t)g->B * 8 * 8 * (is3d ? 8 : 3);
    snprintf(f, sizeof f, is3d ? "model_%s_input.f32" : "model_%s_input.u8", name);
    g->input = read_fixture(f, in * (is3d ? 4 : 1));
    snprintf(f, sizeof f, is3d ? "model_%s_targets.f32" : "model_%s_targets.i32", name);
    g->targets = read_fixture(f, (size_t)g->B * 4);
    memcpy(emoe_model_params(g->m), g->params, n * 4);
}

static void golden_free(struct golden *g)
{
    emoe_model_free(g->m);
    free(g->input);
    free(g->targets);
    free(g->params);
    free(g->grads);
    free(g->logits);
}

static void golden_run(struct golden *g, int is3d, float smoothing)
{
    struct emoe_error err = {0};
    ck_assert_int_eq(emoe_model_forward(g->m, g->input, is3d ? EMOE_F32 : EMOE_U8, g->B, 1,
                                        &err),
                     EMOE_OK);
    const float *lg = emoe_model_logits(g->m);
    for (int i = 0; i < g->B * g->K; i++)
        ck_assert_msg(fabsf(lg[i] - g->logits[i]) <= 1e-4f, "logit %d: %.7g, PyTorch %.7g", i,
                      (double)lg[i], (double)g->logits[i]);
    double task, loss;
    ck_assert_int_eq(emoe_model_loss(g->m, g->targets, smoothing, &task, &loss, NULL, &err),
                     EMOE_OK);
    ck_assert_msg(fabs(loss - g->loss) <= 1e-5 * fmax(1.0, fabs(g->loss)), "loss %.8g vs %.8g",
                  loss, (double)g->loss);
    emoe_model_zero_grad(g->m);
    ck_assert_int_eq(emoe_model_backward(g->m, &err), EMOE_OK);
}

START_TEST(test_golden_tiny2d)
{
    struct golden g;
    golden_load(&g, "tiny2d", 0);
    golden_run(&g, 0, 0.1f);
    compare_grads(g.m, g.grads, 1e-3);
    /* evaluation mode gives the same logits */
    struct emoe_error err = {0};
    ck_assert_int_eq(emoe_model_forward(g.m, g.input, EMOE_U8, g.B, 0, &err), EMOE_OK);
    for (int i = 0; i < g.B * g.K; i++)
        ck_assert(fabsf(emoe_model_logits(g.m)[i] - g.logits[i]) <= 1e-4f);
    /* backward after an eval forward is refused */
    tu_assert_error(emoe_model_backward(g.m, &err), err, EMOE_EINVAL, "training forward");
    golden_free(&g);
}
END_TEST

START_TEST(test_golden_tiny3d_regression)
{
    struct golden g;
    golden_load(&g, "tiny3d", 1);
    golden_run(&g, 1, 0.0f);
    compare_grads(g.m, g.grads, 1e-3);
    golden_free(&g);
}
END_TEST

START_TEST(test_golden_threads_agree)
{
    /* the same result with 1 and 2 threads, bit for bit */
    struct golden g;
    golden_load(&g, "tiny2d", 0);
    int old = emoe_threads_get();
    emoe_threads_set(1);
    golden_run(&g, 0, 0.1f);
    size_t n = emoe_model_trainable_numel(g.m);
    float *a = malloc(n * 4);
    memcpy(a, emoe_model_grads(g.m), n * 4);
    emoe_threads_set(2);
    golden_run(&g, 0, 0.1f);
    ck_assert(memcmp(a, emoe_model_grads(g.m), n * 4) == 0);
    emoe_threads_set(old);
    free(a);
    golden_free(&g);
}
END_TEST

/* Freezing: frozen params get no gradient, the others get the same gradient as
 * without freezing (gradients flow through frozen blocks). */
START_TEST(test_freeze_blocks)
{
    struct emoe_error err = {0};
    struct golden g;
    golden_load(&g, "tiny2d", 0);
    size_t count = 0;
    ck_assert_int_eq(emoe_model_set_trainable(g.m, "vit.blocks.1.*", 0, &count, &err), EMOE_OK);
    ck_assert_uint_eq(count, 12);
    ck_assert_ptr_null(emoe_model_param(g.m, "vit.blocks.1.mlp.fc1.weight")->grad);
    ck_assert_ptr_nonnull(emoe_model_param(g.m, "vit.patch_embed.proj.weight")->grad);
    golden_run(&g, 0, 0.1f);
    compare_grads(g.m, g.grads, 1e-3);
    /* freeze everything but the head */
    ck_assert_int_eq(emoe_model_set_trainable(g.m, "vit.*", 0, &count, &err), EMOE_OK);
    ck_assert_int_eq(emoe_model_set_trainable(g.m, "vit.head.*", 1, &count, &err), EMOE_OK);
    ck_assert_uint_eq(count, 2);
    ck_assert_uint_eq(emoe_model_trainable_numel(g.m), 5 * 16 + 5);
    golden_run(&g, 0, 0.1f);
    compare_grads(g.m, g.grads, 1e-3);
    /* nothing trainable: backward is a no-op */
    ck_assert_int_eq(emoe_model_set_trainable(g.m, "*", 0, &count, &err), EMOE_OK);
    ck_assert_ptr_null(emoe_model_grads(g.m));
    golden_run(&g, 0, 0.1f);
    golden_free(&g);
}
END_TEST

/* ---------------------------------------------------------- hook + FD */

/* A toy branch after block `blk`: x <- x + a * tanh(x) on patch tokens, a = extra param
 * "branches.{blk}.alpha"; extra loss 0.5 * w * a^2. */
struct toy {
    struct emoe_model *m;
    int blk;
    float *saved; /* branch input [B, T, D] */
    double w;
    int calls_f, calls_b;
};

static int toy_forward(void *ctx, int block, float *x, int B, int T, int D, int train,
                       struct emoe_error *err)
{
    struct toy *t = ctx;
    t->calls_f++;
    if (block != t->blk)
        return EMOE_OK;
    float a = emoe_model_param(t->m, "branches.1.alpha")->data[0];
    free(t->saved);
    t->saved = malloc((size_t)B * T * D * sizeof(float));
    memcpy(t->saved, x, (size_t)B * T * D * sizeof(float));
    for (int b = 0; b < B; b++)
        for (int i = 1; i < T; i++)
            for (int d = 0; d < D; d++) {
                size_t k = ((size_t)b * T + i) * D + d;
                x[k] += a * tanhf(x[k]);
            }
    return EMOE_OK;
}

static int toy_backward(void *ctx, int block, float *dx, int B, int T, int D,
                        struct emoe_error *err)
{
    struct toy *t = ctx;
    t->calls_b++;
    if (block != t->blk)
        return EMOE_OK;
    struct emoe_param *p = emoe_model_param(t->m, "branches.1.alpha");
    float a = p->data[0];
    double ga = 0.0;
    for (int b = 0; b < B; b++)
        for (int i = 1; i < T; i++)
            for (int d = 0; d < D; d++) {
                size_t k = ((size_t)b * T + i) * D + d;
                float th = tanhf(t->saved[k]);
                ga += (double)dx[k] * th;
                dx[k] *= 1.0f + a * (1.0f - th * th);
            }
    if (p->grad)
        p->grad[0] += (float)(ga + t->w * a);
    return EMOE_OK;
}

static double toy_extra(void *ctx)
{
    struct toy *t = ctx;
    float a = emoe_model_param(t->m, "branches.1.alpha")->data[0];
    return 0.5 * t->w * a * a;
}

static double objective(struct emoe_model *m, const unsigned char *x, const int32_t *y, int B)
{
    struct emoe_error err = {0};
    double loss;
    ck_assert_int_eq(emoe_model_forward(m, x, EMOE_U8, B, 1, &err), EMOE_OK);
    ck_assert_int_eq(emoe_model_loss(m, y, 0.1f, NULL, &loss, NULL, &err), EMOE_OK);
    return loss;
}

START_TEST(test_finite_difference_whole_model)
{
    struct emoe_error err = {0};
    struct emoe_vit_config c;
    tiny2d_config(&c);
    c.embed_dim = 8;
    c.mlp_dim = 16;
    c.num_classes = 3;
    struct emoe_param_spec extra;
    memset(&extra, 0, sizeof extra);
    strcpy(extra.name, "branches.1.alpha");
    extra.ndim = 0;
    extra.flags = EMOE_PARAM_NO_DECAY;
    struct emoe_model *m;
    ck_assert_int_eq(emoe_model_new(&c, &extra, 1, &m, &err), EMOE_OK);
    emoe_model_init(m, 7);
    /* larger weights than timm's init, so every path matters */
    struct emoe_rng r;
    emoe_rng_init(&r, 99, 0);
    float *P = emoe_model_params(m);
    for (size_t i = 0; i < emoe_model_numel(m); i++)
        P[i] += 0.3f * emoe_rng_normal(&r);
    emoe_model_param(m, "branches.1.alpha")->data[0] = 0.7f;
    struct toy toy = {m, 1, NULL, 0.3, 0, 0};
    struct emoe_block_hook h = {&toy, toy_forward, toy_backward, toy_extra};
    emoe_model_set_block_hook(m, &h);
    enum { B = 2 };
    unsigned char x[B * 8 * 8 * 3];
    for (size_t i = 0; i < sizeof x; i++)
        x[i] = (unsigned char)emoe_rng_below(&r, 256);
    int32_t y[B] = {2, 0};
    objective(m, x, y, B);
    ck_assert_int_eq(toy.calls_f, 2);
    emoe_model_zero_grad(m);
    ck_assert_int_eq(emoe_model_backward(m, &err), EMOE_OK);
    ck_assert_int_eq(toy.calls_b, 2);
    size_t checked = 0;
    for (size_t i = 0; i < emoe_model_param_count(m); i++) {
        struct emoe_param *p = emoe_model_param_at(m, i);
        /* a few entries of every tensor */
        for (size_t k = 0; k < p->numel; k += p->numel / 3 + 1) {
            float keep = p->data[k];
            float hstep = 1e-2f * fmaxf(1.0f, fabsf(keep));
            p->data[k] = keep + hstep;
            double lp = objective(m, x, y, B);
            p->data[k] = keep - hstep;
            double lm = objective(m, x, y, B);
            p->data[k] = keep;
            double fd = (lp - lm) / (2.0 * hstep), an = p->grad[k];
            ck_assert_msg(fabs(fd - an) <= 2e-2 * fmax(fabs(fd), fabs(an)) + 2e-4,
                          "%s[%zu]: analytic %.6g, finite difference %.6g", p->spec->name, k,
                          an, fd);
            checked++;
        }
    }
    ck_assert_uint_gt(checked, 90);
    /* the branch stays trainable when the backbone is frozen, with the same gradient */
    float ga = emoe_model_param(m, "branches.1.alpha")->grad[0];
    size_t cnt;
    ck_assert_int_eq(emoe_model_set_trainable(m, "vit.*", 0, &cnt, &err), EMOE_OK);
    ck_assert_uint_eq(emoe_model_trainable_numel(m), 1);
    objective(m, x, y, B);
    toy.calls_b = 0;
    ck_assert_int_eq(emoe_model_backward(m, &err), EMOE_OK);
    ck_assert_int_eq(toy.calls_b, 1); /* block 0's hook is below every trainable param */
    ck_assert_float_eq_tol(emoe_model_param(m, "branches.1.alpha")->grad[0], ga,
                           1e-5f * fabsf(ga) + 1e-7f);
    /* a fresh model frozen before its first forward keeps fewer activations; same grads */
    struct emoe_model *m2;
    ck_assert_int_eq(emoe_model_new(&c, &extra, 1, &m2, &err), EMOE_OK);
    memcpy(emoe_model_params(m2), emoe_model_params(m), emoe_model_numel(m) * 4);
    ck_assert_int_eq(emoe_model_set_trainable(m2, "vit.blocks.0.*", 0, &cnt, &err), EMOE_OK);
    ck_assert_int_eq(emoe_model_set_trainable(m2, "vit.patch_embed.*", 0, &cnt, &err), EMOE_OK);
    ck_assert_int_eq(emoe_model_set_trainable(m2, "vit.[cp][lo]s*", 0, &cnt, &err), EMOE_OK);
    ck_assert_uint_eq(cnt, 2);
    struct toy toy2 = {m2, 1, NULL, 0.3, 0, 0};
    struct emoe_block_hook h2 = {&toy2, toy_forward, toy_backward, toy_extra};
    emoe_model_set_block_hook(m2, &h2);
    objective(m2, x, y, B);
    ck_assert_int_eq(emoe_model_backward(m2, &err), EMOE_OK);
    ck_assert_float_eq_tol(emoe_model_param(m2, "branches.1.alpha")->grad[0], ga,
                           1e-5f * fabsf(ga) + 1e-7f);
    /* unfreezing more than the forward kept is refused until the next forward */
    ck_assert_int_eq(emoe_model_set_trainable(m2, "*", 1, &cnt, &err), EMOE_OK);
    tu_assert_error(emoe_model_backward(m2, &err), err, EMOE_EINVAL, "changed since");
    objective(m2, x, y, B);
    ck_assert_int_eq(emoe_model_backward(m2, &err), EMOE_OK);
    free(toy2.saved);
    emoe_model_free(m2);
    free(toy.saved);
    emoe_model_free(m);
}
END_TEST

/* -------------------------------------------------------- registry etc */

START_TEST(test_registry_names_and_layout)
{
    struct emoe_error err = {0};
    struct emoe_vit_config c;
    ck_assert_int_eq(emoe_vit_preset("vit-mini", &c, &err), EMOE_OK);
    struct emoe_param_spec ex[2];
    memset(ex, 0, sizeof ex);
    strcpy(ex[0].name, "branches.5.experts.0.down.weight");
    ex[0].ndim = 2, ex[0].shape[0] = 4, ex[0].shape[1] = 192;
    strcpy(ex[1].name, "branches.5.experts.1.down.weight");
    ex[1].ndim = 2, ex[1].shape[0] = 4, ex[1].shape[1] = 192;
    struct emoe_model *m;
    ck_assert_int_eq(emoe_model_new(&c, ex, 2, &m, &err), EMOE_OK);
    ck_assert_uint_eq(emoe_model_param_count(m), 4 + 12 * 6 + 4 + 2);
    ck_assert_str_eq(emoe_model_param_at(m, 0)->spec->name, "vit.cls_token");
    ck_assert_str_eq(emoe_model_param_at(m, 2)->spec->name, "vit.patch_embed.proj.weight");
    struct emoe_param *q = emoe_model_param(m, "vit.blocks.3.attn.qkv.weight");
    ck_assert_ptr_nonnull(q);
    ck_assert_int_eq(q->spec->shape[0], 576);
    ck_assert_uint_eq(q->spec->flags, 0);
    ck_assert_uint_eq(emoe_model_param(m, "vit.pos_embed")->spec->flags, EMOE_PARAM_NO_DECAY);
    ck_assert_int_eq(emoe_model_param(m, "vit.pos_embed")->spec->shape[1], 65);
    struct emoe_param *e0 = emoe_model_param(m, "branches.5.experts.0.down.weight");
    struct emoe_param *e1 = emoe_model_param(m, "branches.5.experts.1.down.weight");
    ck_assert_ptr_eq(e0->data + e0->numel, e1->data);      /* contiguous */
    ck_assert_ptr_eq(e0->grad + e0->numel, e1->grad);
    for (size_t i = 0; i < e0->numel; i++)
        ck_assert(e0->data[i] == 0.0f); /* extras are zero */
    ck_assert_ptr_null(emoe_model_param(m, "vit.blocks.6.norm1.weight"));
    /* timm init: LayerNorm 1/0, biases 0, weights with std about .02 */
    ck_assert(emoe_model_param(m, "vit.norm.weight")->data[5] == 1.0f);
    ck_assert(emoe_model_param(m, "vit.blocks.0.mlp.fc1.bias")->data[3] == 0.0f);
    struct emoe_param *w = emoe_model_param(m, "vit.blocks.0.mlp.fc1.weight");
    double s = 0;
    for (size_t i = 0; i < w->numel; i++)
        s += (double)w->data[i] * w->data[i];
    ck_assert_double_eq_tol(sqrt(s / w->numel), 0.02, 0.001);
    ck_assert(fabsf(emoe_model_param(m, "vit.cls_token")->data[0]) < 1e-5f);
    /* FLOPs of the benchmark model: about 366 MFLOP per image */
    ck_assert_double_eq_tol(emoe_vit_flops(&c) / 1e6, 366.0, 1.0);
    emoe_model_free(m);
}
END_TEST

START_TEST(test_config_errors)
{
    struct emoe_error err = {0};
    struct emoe_vit_config c;
    tu_assert_error(emoe_vit_preset("vit-giant", &c, &err), err, EMOE_EINVAL, "'vit-giant'");
    ck_assert_int_eq(emoe_vit_preset("vit-base", &c, &err), EMOE_OK);
    ck_assert_int_eq(c.embed_dim, 768);
    ck_assert_int_eq(emoe_vit_tokens(&c), 197); /* patch 16 on 224 x 224 */
    ck_assert_int_eq(c.num_classes, 1000);
    c.num_heads = 5;
    struct emoe_model *m = (struct emoe_model *)1;
    tu_assert_error(emoe_model_new(&c, NULL, 0, &m, &err), err, EMOE_EINVAL, "5 heads");
    ck_assert_ptr_null(m);
    ck_assert_int_eq(emoe_vit_preset("vit-base", &c, &err), EMOE_OK);
    c.image_size[1] = 30;
    tu_assert_error(emoe_vit_config_check(&c, &err), err, EMOE_EINVAL, "patch size");
    ck_assert_int_eq(emoe_vit_preset("vit-micro", &c, &err), EMOE_OK);
    c.task = EMOE_TASK_REGRESS;
    tu_assert_error(emoe_vit_config_check(&c, &err), err, EMOE_EINVAL, "1 output");
    ck_assert_int_eq(emoe_vit_preset("vit-micro", &c, &err), EMOE_OK);
    struct emoe_param_spec ex;
    memset(&ex, 0, sizeof ex);
    strcpy(ex.name, "vit.norm.weight");
    ex.ndim = 1, ex.shape[0] = 3;
    tu_assert_error(emoe_model_new(&c, &ex, 1, &m, &err), err, EMOE_EINVAL, "duplicate");
    ex.shape[0] = -3;
    strcpy(ex.name, "branches.0.x");
    tu_assert_error(emoe_model_new(&c, &ex, 1, &m, &err), err, EMOE_ERANGE, "branches.0.x");
    ck_assert_int_eq(emoe_model_new(&c, NULL, 0, &m, &err), EMOE_OK);
    unsigned char px[32 * 32 * 3] = {0};
    tu_assert_error(emoe_model_forward(m, px, EMOE_I32, 1, 0, &err), err, EMOE_EINVAL, "i32");
    tu_assert_error(emoe_model_forward(m, px, EMOE_U8, 0, 0, &err), err, EMOE_EINVAL,
                    "batch size 0");
    ck_assert_int_eq(emoe_model_forward(m, px, EMOE_U8, 1, 0, &err), EMOE_OK);
    int32_t bad = 10;
    tu_assert_error(emoe_model_loss(m, &bad, 0.0f, NULL, NULL, NULL, &err), err, EMOE_EINVAL,
                    "label 10");
    emoe_model_free(m);
}
END_TEST

/* Same seed, same threads: identical weights after a few AdamW steps. */
static void train_few(float *out, size_t n)
{
    struct emoe_error err = {0};
    struct emoe_vit_config c;
    tiny2d_config(&c);
    struct emoe_model *m;
    ck_assert_int_eq(emoe_model_new(&c, NULL, 0, &m, &err), EMOE_OK);
    emoe_model_init(m, 42);
    ck_assert_uint_eq(emoe_model_numel(m), n);
    struct emoe_adamw_config ac;
    emoe_adamw_config_init(&ac);
    struct emoe_adamw *o;
    ck_assert_int_eq(emoe_adamw_new(m, &ac, &o, &err), EMOE_OK);
    struct emoe_augment aug;
    emoe_augment_init(&aug);
    aug.crop_padding = 2;
    aug.hflip = 1;
    unsigned char x[4 * 8 * 8 * 3], xa[sizeof x];
    struct emoe_rng r;
    emoe_rng_init(&r, 5, 0);
    for (size_t i = 0; i < sizeof x; i++)
        x[i] = (unsigned char)emoe_rng_below(&r, 256);
    int32_t y[4] = {0, 1, 2, 3};
    struct emoe_lr_schedule s = {EMOE_LR_COSINE, 1e-3, 0.0, 2, 6};
    for (int step = 0; step < 6; step++) {
        ck_assert_int_eq(emoe_augment_batch(&aug, xa, x, 4, 8, 8, 3, 42, (uint64_t)step, &err),
                         EMOE_OK);
        ck_assert_int_eq(emoe_model_forward(m, xa, EMOE_U8, 4, 1, &err), EMOE_OK);
        ck_assert_int_eq(emoe_model_loss(m, y, 0.1f, NULL, NULL, NULL, &err), EMOE_OK);
        emoe_model_zero_grad(m);
        ck_assert_int_eq(emoe_model_backward(m, &err), EMOE_OK);
        ck_assert_int_eq(emoe_model_reduce_grads(m, &err), EMOE_OK);
        ck_assert_int_eq(emoe_clip_grad_norm(emoe_model_grads(m), emoe_model_trainable_numel(m),
                                             1.0, NULL, &err),
                         EMOE_OK);
        ck_assert_int_eq(emoe_adamw_step(o, emoe_lr_at(&s, step), &err), EMOE_OK);
    }
    memcpy(out, emoe_model_params(m), n * 4);
    emoe_adamw_free(o);
    emoe_model_free(m);
}

START_TEST(test_determinism)
{
    size_t n = 7557;
    float *a = malloc(n * 4), *b = malloc(n * 4);
    train_few(a, n);
    train_few(b, n);
    ck_assert(memcmp(a, b, n * 4) == 0);
    free(a);
    free(b);
}
END_TEST

static int reduce_calls;
static int halve(void *ctx, float *g, size_t n, struct emoe_error *err)
{
    (void)ctx;
    reduce_calls++;
    for (size_t i = 0; i < n; i++)
        g[i] *= 0.5f;
    return EMOE_OK;
}

START_TEST(test_grad_reduce_hook)
{
    struct emoe_error err = {0};
    struct golden g;
    golden_load(&g, "tiny2d", 0);
    golden_run(&g, 0, 0.1f);
    emoe_model_set_grad_reduce(g.m, halve, NULL);
    ck_assert_int_eq(emoe_model_reduce_grads(g.m, &err), EMOE_OK);
    ck_assert_int_eq(reduce_calls, 1);
    float want = g.grads[100] * 0.5f;
    ck_assert_float_eq_tol(emoe_model_grads(g.m)[100], want, 1e-3f * fabsf(want) + 1e-6f);
    golden_free(&g);
}
END_TEST

/* ------------------------------------------------------------ checkpoints */

static void expect_golden_logits(struct golden *g)
{
    struct emoe_error err = {0};
    ck_assert_int_eq(emoe_model_forward(g->m, g->input, EMOE_U8, g->B, 0, &err), EMOE_OK);
    for (int i = 0; i < g->B * g->K; i++)
        ck_assert_msg(fabsf(emoe_model_logits(g->m)[i] - g->logits[i]) <= 1e-4f,
                      "logit %d: %.7g, PyTorch %.7g", i, (double)emoe_model_logits(g->m)[i],
                      (double)g->logits[i]);
}

START_TEST(test_checkpoint_save_load_round_trip)
{
    struct emoe_error err = {0};
    struct golden g;
    golden_load(&g, "tiny2d", 0);
    const char *path = tu_tmppath("m.safetensors");
    int before = tu_count_dir_entries(tu_tmpdir());
    struct emoe_kv extra[2] = {{"moe.router", "eigen"}, {"moe.blocks", "1"}};
    ck_assert_int_eq(emoe_checkpoint_save(g.m, path, extra, 2, &err), EMOE_OK);
    ck_assert_int_eq(tu_count_dir_entries(tu_tmpdir()), before + 1); /* no temporary left */
    struct emoe_safetensors *st;
    ck_assert_int_eq(emoe_safetensors_open(path, &st, &err), EMOE_OK);
    ck_assert_str_eq(emoe_safetensors_metadata_get(st, "emoe.version"), "1");
    ck_assert_str_eq(emoe_safetensors_metadata_get(st, "model.image_size"), "8");
    ck_assert_str_eq(emoe_safetensors_metadata_get(st, "model.embed_dim"), "16");
    ck_assert_str_eq(emoe_safetensors_metadata_get(st, "model.mlp_ratio"), "4");
    ck_assert_str_eq(emoe_safetensors_metadata_get(st, "model.task"), "classify");
    ck_assert_str_eq(emoe_safetensors_metadata_get(st, "moe.router"), "eigen");
    ck_assert_str_eq(emoe_safetensors_metadata_get(st, "data.std"),
                     "0.246999994,0.243499994,0.261599988");
    ck_assert_uint_eq(emoe_safetensors_count(st), emoe_model_param_count(g.m));
    emoe_safetensors_close(st);
    struct emoe_vit_config c;
    ck_assert_int_eq(emoe_checkpoint_read_config(path, &c, &err), EMOE_OK);
    ck_assert_int_eq(c.embed_dim, 16);
    ck_assert_int_eq(c.mlp_dim, 64);
    ck_assert_int_eq(c.num_classes, 5);
    ck_assert_int_eq(c.image_size[1], 8);
    ck_assert(c.mean[2] == 0.4465f);
    struct emoe_model *m2;
    ck_assert_int_eq(emoe_model_new(&c, NULL, 0, &m2, &err), EMOE_OK);
    ck_assert_int_eq(emoe_checkpoint_load(m2, path, 0, NULL, &err), EMOE_OK);
    ck_assert(memcmp(emoe_model_params(m2), g.params, emoe_model_numel(m2) * 4) == 0);
    emoe_model_free(m2);
    /* a model with an extra param: missing in the file */
    struct emoe_param_spec ex;
    memset(&ex, 0, sizeof ex);
    strcpy(ex.name, "branches.1.alpha");
    ck_assert_int_eq(emoe_model_new(&c, &ex, 1, &m2, &err), EMOE_OK);
    tu_assert_error(emoe_checkpoint_load(m2, path, 0, NULL, &err), err, EMOE_ENOTFOUND,
                    "'branches.1.alpha'");
    size_t missing = 0;
    ck_assert_int_eq(emoe_checkpoint_load(m2, path, EMOE_LOAD_ALLOW_MISSING, &missing, &err),
                     EMOE_OK);
    ck_assert_uint_eq(missing, 1);
    emoe_model_free(m2);
    /* a different head: refused, or skipped on request */
    c.num_classes = 7;
    ck_assert_int_eq(emoe_model_new(&c, NULL, 0, &m2, &err), EMOE_OK);
    float keep = emoe_model_params(m2)[0];
    tu_assert_error(emoe_checkpoint_load(m2, path, 0, NULL, &err), err, EMOE_EFORMAT,
                    "'vit.head.weight' has shape (5, 16)");
    ck_assert(emoe_model_params(m2)[0] == keep); /* all or nothing */
    ck_assert_int_eq(emoe_checkpoint_load(m2, path, EMOE_LOAD_SKIP_HEAD, NULL, &err), EMOE_OK);
    ck_assert(emoe_model_params(m2)[0] == g.params[0]);
    emoe_model_free(m2);
    tu_assert_error(emoe_checkpoint_load(g.m, tu_fixture("model_tiny2d_logits.f32"), 0, NULL,
                                         &err),
                    err, EMOE_EFORMAT, "not a .safetensors or .npz");
    golden_free(&g);
}
END_TEST

/* A position embedding without tokens is a shape error (was: signed overflow in the
 * grid size check, sqrt(-1) squared; seen under UBSan) */
START_TEST(test_checkpoint_empty_pos_embed)
{
    struct emoe_error err = {0};
    struct emoe_vit_config c;
    tiny2d_config(&c);
    struct emoe_model *m;
    ck_assert_int_eq(emoe_model_new(&c, NULL, 0, &m, &err), EMOE_OK);
    int64_t shape[3] = {1, 0, 16};
    struct emoe_tensor *t;
    ck_assert_int_eq(emoe_tensor_new(EMOE_F32, 3, shape, &t, &err), EMOE_OK);
    struct emoe_named_tensor nt = {"vit.pos_embed", t};
    const char *path = tu_tmppath("pos0.safetensors");
    ck_assert_int_eq(emoe_safetensors_write(path, &nt, 1, NULL, 0, &err), EMOE_OK);
    tu_assert_error(emoe_checkpoint_load(m, path, EMOE_LOAD_ALLOW_MISSING, NULL, &err), err,
                    EMOE_EFORMAT, "'vit.pos_embed' has shape (1, 0, 16)");
    c.image_ndim = 3;
    c.image_size[2] = 8;
    c.in_chans = 1;
    emoe_model_free(m);
    ck_assert_int_eq(emoe_model_new(&c, NULL, 0, &m, &err), EMOE_OK);
    tu_assert_error(emoe_checkpoint_load(m, path, EMOE_LOAD_ALLOW_MISSING, NULL, &err), err,
                    EMOE_EFORMAT, "'vit.pos_embed' has shape (1, 0, 16)");
    emoe_model_free(m);
    emoe_tensor_free(t);
}
END_TEST

/* Metadata numbers out of the range of int or float are bad values (was: undefined
 * float-to-int / double-to-float conversions; seen under UBSan) */
START_TEST(test_checkpoint_config_out_of_range)
{
    struct emoe_error err = {0};
    int64_t shape[1] = {1};
    struct emoe_tensor *t;
    ck_assert_int_eq(emoe_tensor_new(EMOE_F32, 1, shape, &t, &err), EMOE_OK);
    struct emoe_named_tensor nt = {"x", t};
    struct emoe_kv kv[] = {
        {"model.patch_size", "4"}, {"model.in_chans", "1"},     {"model.embed_dim", "16"},
        {"model.depth", "2"},      {"model.num_heads", "2"},    {"model.num_classes", "5"},
        {"model.image_size", "8"}, {"model.mlp_ratio", "4"},    {"data.mean", "0.5"},
    };
    size_t nkv = sizeof kv / sizeof kv[0];
    const char *path = tu_tmppath("cfg.safetensors");
    struct emoe_vit_config c;
    ck_assert_int_eq(emoe_safetensors_write(path, &nt, 1, kv, nkv, &err), EMOE_OK);
    ck_assert_int_eq(emoe_checkpoint_read_config(path, &c, &err), EMOE_OK);
    ck_assert_int_eq(c.image_size[0], 8);
    ck_assert_int_eq(c.mlp_dim, 64);
    ck_assert(c.mean[0] == 0.5f);
    const struct {
        size_t i;
        const char *value, *msg;
    } bad[] = {
        {6, "1e20", "metadata 'model.image_size': bad value '1e20'"},
        {6, "8,-3e9", "metadata 'model.image_size': bad value '8,-3e9'"},
        {8, "1e300", "metadata 'data.mean': bad value '1e300'"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        const char *keep = kv[bad[k].i].value;
        kv[bad[k].i].value = bad[k].value;
        ck_assert_int_eq(emoe_safetensors_write(path, &nt, 1, kv, nkv, &err), EMOE_OK);
        tu_assert_error(emoe_checkpoint_read_config(path, &c, &err), err, EMOE_EFORMAT,
                        bad[k].msg);
        kv[bad[k].i].value = keep;
    }
    emoe_tensor_free(t);
}
END_TEST

START_TEST(test_checkpoint_timm_and_google)
{
    struct emoe_error err = {0};
    struct golden g;
    golden_load(&g, "tiny2d", 0);
    memset(emoe_model_params(g.m), 0, emoe_model_numel(g.m) * 4);
    ck_assert_int_eq(emoe_checkpoint_load(g.m, tu_fixture("model_tiny2d_timm.safetensors"), 0,
                                          NULL, &err),
                     EMOE_OK);
    expect_golden_logits(&g);
    memset(emoe_model_params(g.m), 0, emoe_model_numel(g.m) * 4);
    ck_assert_int_eq(emoe_checkpoint_load(g.m, tu_fixture("model_tiny2d_google.npz"), 0, NULL,
                                          &err),
                     EMOE_OK);
    expect_golden_logits(&g);
    for (size_t i = 0; i < emoe_model_numel(g.m); i++)
        ck_assert_msg(emoe_model_params(g.m)[i] == g.params[i], "param %zu", i);
    golden_free(&g);
}
END_TEST

/* The Hub export's "model." prefix (before "vit." names or bare timm names), F16 data */
START_TEST(test_checkpoint_model_prefix_and_f16)
{
    struct emoe_error err = {0};
    struct golden g;
    golden_load(&g, "tiny2d", 0);
    size_t np = emoe_model_param_count(g.m);
    struct emoe_named_tensor *nt = calloc(np, sizeof *nt);
    struct emoe_tensor **ts = calloc(np, sizeof *ts);
    char(*names)[128] = calloc(np, sizeof *names);
    for (size_t i = 0; i < np; i++) {
        struct emoe_param *p = emoe_model_param_at(g.m, i);
        /* even params: "model.vit.<name>"; odd: "model.<timm name>", stored as F16 */
        snprintf(names[i], sizeof names[i], "model.%s", i % 2 ? p->spec->name + 4 : p->spec->name);
        struct emoe_tensor *w;
        ck_assert_int_eq(emoe_tensor_wrap(EMOE_F32, p->spec->ndim, p->spec->shape, p->data, &w,
                                          &err),
                         EMOE_OK);
        if (i % 2) {
            ck_assert_int_eq(emoe_tensor_convert(w, EMOE_F16, &ts[i], &err), EMOE_OK);
            emoe_tensor_free(w);
        } else {
            ts[i] = w;
        }
        nt[i].name = names[i];
        nt[i].tensor = ts[i];
    }
    const char *path = tu_tmppath("hub.safetensors");
    ck_assert_int_eq(emoe_safetensors_write(path, nt, np, NULL, 0, &err), EMOE_OK);
    for (size_t i = 0; i < np; i++)
        emoe_tensor_free(ts[i]);
    free(ts);
    free(nt);
    free(names);
    memset(emoe_model_params(g.m), 0, emoe_model_numel(g.m) * 4);
    ck_assert_int_eq(emoe_checkpoint_load(g.m, path, 0, NULL, &err), EMOE_OK);
    for (size_t i = 0; i < np; i++) {
        struct emoe_param *p = emoe_model_param_at(g.m, i);
        const float *want = g.params + (p->data - emoe_model_params(g.m));
        for (size_t k = 0; k < p->numel; k++)
            ck_assert_msg(i % 2 ? p->data[k] == emoe_f16_to_f32(emoe_f32_to_f16(want[k]))
                                : p->data[k] == want[k],
                          "%s[%zu]", p->spec->name, k);
    }
    golden_free(&g);
}
END_TEST

START_TEST(test_checkpoint_pos_embed_resampled)
{
    struct emoe_error err = {0};
    struct emoe_vit_config c;
    tiny2d_config(&c);
    c.image_size[0] = c.image_size[1] = 12; /* grid 3x3 instead of 2x2 */
    struct emoe_model *m;
    ck_assert_int_eq(emoe_model_new(&c, NULL, 0, &m, &err), EMOE_OK);
    ck_assert_int_eq(emoe_checkpoint_load(m, tu_fixture("model_tiny2d_timm.safetensors"), 0,
                                          NULL, &err),
                     EMOE_OK);
    float *want = read_fixture("model_tiny2d_pos3x3.f32", 10 * 16 * 4);
    struct emoe_param *pos = emoe_model_param(m, "vit.pos_embed");
    for (size_t i = 0; i < pos->numel; i++)
        ck_assert_float_eq_tol(pos->data[i], want[i], 1e-6f);
    ck_assert_int_eq(emoe_checkpoint_load(m, tu_fixture("model_tiny2d_google.npz"), 0, NULL,
                                          &err),
                     EMOE_OK);
    for (size_t i = 0; i < pos->numel; i++)
        ck_assert_float_eq_tol(pos->data[i], want[i], 1e-6f);
    free(want);
    emoe_model_free(m);
}
END_TEST

/* A volume model's checkpoint with a 2x2x2 patch grid loads into a 4x4x4 model:
 * the position embedding resampled trilinearly (class position kept), the rest copied. */
START_TEST(test_checkpoint_pos_embed_resampled_3d)
{
    struct emoe_error err = {0};
    struct emoe_vit_config c;
    tiny3d_config(&c); /* 8^3 volume, patch 4: grid 2^3 */
    struct emoe_model *small, *big;
    ck_assert_int_eq(emoe_model_new(&c, NULL, 0, &small, &err), EMOE_OK);
    emoe_model_init(small, 5);
    const char *path = tu_tmppath("vol.safetensors");
    ck_assert_int_eq(emoe_checkpoint_save(small, path, NULL, 0, &err), EMOE_OK);
    c.image_size[0] = c.image_size[1] = c.image_size[2] = 16; /* grid 4^3 */
    ck_assert_int_eq(emoe_model_new(&c, NULL, 0, &big, &err), EMOE_OK);
    ck_assert_int_eq(emoe_checkpoint_load(big, path, 0, NULL, &err), EMOE_OK);
    struct emoe_param *ps = emoe_model_param(small, "vit.pos_embed");
    struct emoe_param *pb = emoe_model_param(big, "vit.pos_embed");
    int D = c.embed_dim;
    ck_assert_uint_eq(ps->numel, (size_t)(1 + 8) * D);
    ck_assert_uint_eq(pb->numel, (size_t)(1 + 64) * D);
    float *want = malloc(pb->numel * sizeof *want);
    ck_assert_int_eq(emoe_pos_embed_resample3d(want, ps->data, 1, 2, 2, 2, 4, 4, 4, D,
                                               EMOE_INTERP_BILINEAR, &err),
                     EMOE_OK);
    for (size_t i = 0; i < pb->numel; i++)
        ck_assert_msg(pb->data[i] == want[i], "pos_embed[%zu]", i);
    for (int j = 0; j < D; j++) /* the class position, and a corner (edges repeated) */
        ck_assert(pb->data[j] == ps->data[j] && pb->data[D + j] == ps->data[D + j]);
    for (size_t i = 0; i < emoe_model_param_count(small); i++) {
        struct emoe_param *a = emoe_model_param_at(small, i), *b = emoe_model_param_at(big, i);
        if (a == ps)
            continue;
        ck_assert_uint_eq(a->numel, b->numel);
        ck_assert_msg(memcmp(a->data, b->data, a->numel * sizeof *a->data) == 0, "%s",
                      a->spec->name);
    }
    /* a grid that is not a cube is a shape error */
    c.image_size[0] = 8;
    struct emoe_model *odd;
    ck_assert_int_eq(emoe_model_new(&c, NULL, 0, &odd, &err), EMOE_OK);
    ck_assert_int_eq(emoe_checkpoint_save(odd, tu_tmppath("odd.safetensors"), NULL, 0, &err),
                     EMOE_OK);
    tu_assert_error(emoe_checkpoint_load(big, tu_tmppath("odd.safetensors"), 0, NULL, &err), err,
                    EMOE_EFORMAT, "'vit.pos_embed' has shape");
    free(want);
    emoe_model_free(odd);
    emoe_model_free(small);
    emoe_model_free(big);
}
END_TEST

/* Same seed: two runs write identical bytes; the training state round-trips. */
START_TEST(test_checkpoint_determinism_and_state)
{
    struct emoe_error err = {0};
    size_t n = 7557;
    float *a = malloc(n * 4), *b = malloc(n * 4);
    train_few(a, n);
    train_few(b, n);
    struct emoe_vit_config c;
    tiny2d_config(&c);
    struct emoe_model *m;
    ck_assert_int_eq(emoe_model_new(&c, NULL, 0, &m, &err), EMOE_OK);
    memcpy(emoe_model_params(m), a, n * 4);
    ck_assert_int_eq(emoe_checkpoint_save(m, tu_tmppath("a.safetensors"), NULL, 0, &err),
                     EMOE_OK);
    memcpy(emoe_model_params(m), b, n * 4);
    ck_assert_int_eq(emoe_checkpoint_save(m, tu_tmppath("b.safetensors"), NULL, 0, &err),
                     EMOE_OK);
    size_t sa, sb;
    void *fa = tu_read_file(tu_tmppath("a.safetensors"), &sa);
    void *fb = tu_read_file(tu_tmppath("b.safetensors"), &sb);
    ck_assert_uint_eq(sa, sb);
    ck_assert(memcmp(fa, fb, sa) == 0);
    free(fa);
    free(fb);
    /* training state */
    size_t cnt;
    ck_assert_int_eq(emoe_model_set_trainable(m, "vit.blocks.0.*", 0, &cnt, &err), EMOE_OK);
    struct emoe_adamw_config ac;
    emoe_adamw_config_init(&ac);
    struct emoe_adamw *o, *o2;
    ck_assert_int_eq(emoe_adamw_new(m, &ac, &o, &err), EMOE_OK);
    size_t tn = emoe_model_trainable_numel(m);
    for (size_t i = 0; i < tn; i++) {
        emoe_adamw_m(o)[i] = (float)i * 0.5f;
        emoe_adamw_v(o)[i] = (float)i * 0.25f;
    }
    emoe_adamw_set_step(o, 1234);
    struct emoe_train_state s = {1234, 42, 3, 777}, s2;
    const char *sp = tu_tmppath("a.safetensors.state");
    ck_assert_int_eq(emoe_train_state_save(m, o, &s, sp, &err), EMOE_OK);
    ck_assert_int_eq(emoe_adamw_new(m, &ac, &o2, &err), EMOE_OK);
    ck_assert_int_eq(emoe_train_state_load(m, o2, &s2, sp, &err), EMOE_OK);
    ck_assert_int_eq(emoe_adamw_get_step(o2), 1234);
    ck_assert_int_eq(s2.step, 1234);
    ck_assert_uint_eq(s2.seed, 42);
    ck_assert_uint_eq(s2.data_epoch, 3);
    ck_assert_uint_eq(s2.data_pos, 777);
    ck_assert(memcmp(emoe_adamw_m(o), emoe_adamw_m(o2), tn * 4) == 0);
    ck_assert(memcmp(emoe_adamw_v(o), emoe_adamw_v(o2), tn * 4) == 0);
    struct emoe_safetensors *st;
    ck_assert_int_eq(emoe_safetensors_open(sp, &st, &err), EMOE_OK);
    ck_assert_str_eq(emoe_safetensors_metadata_get(st, "state.step"), "1234");
    emoe_safetensors_close(st);
    emoe_adamw_free(o2);
    /* a model with more trainable params does not match the saved state */
    ck_assert_int_eq(emoe_model_set_trainable(m, "*", 1, &cnt, &err), EMOE_OK);
    ck_assert_int_eq(emoe_adamw_new(m, &ac, &o2, &err), EMOE_OK);
    tu_assert_error(emoe_train_state_load(m, o2, &s2, sp, &err), err, EMOE_ENOTFOUND,
                    "adamw.m.vit.blocks.0.norm1.weight");
    emoe_adamw_free(o2);
    emoe_adamw_free(o);
    emoe_model_free(m);
    free(a);
    free(b);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("model");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_golden_tiny2d);
    tcase_add_test(tc, test_golden_tiny3d_regression);
    tcase_add_test(tc, test_golden_threads_agree);
    tcase_add_test(tc, test_freeze_blocks);
    tcase_add_test(tc, test_finite_difference_whole_model);
    tcase_add_test(tc, test_registry_names_and_layout);
    tcase_add_test(tc, test_config_errors);
    tcase_add_test(tc, test_determinism);
    tcase_add_test(tc, test_grad_reduce_hook);
    tcase_add_test(tc, test_checkpoint_save_load_round_trip);
    tcase_add_test(tc, test_checkpoint_timm_and_google);
    tcase_add_test(tc, test_checkpoint_empty_pos_embed);
    tcase_add_test(tc, test_checkpoint_config_out_of_range);
    tcase_add_test(tc, test_checkpoint_pos_embed_resampled);
    tcase_add_test(tc, test_checkpoint_pos_embed_resampled_3d);
    tcase_add_test(tc, test_checkpoint_model_prefix_and_f16);
    tcase_add_test(tc, test_checkpoint_determinism_and_state);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run(suite());
}
