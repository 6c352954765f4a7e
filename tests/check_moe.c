/*
 * check_moe.c: unit tests of the MoE branch module (lib/moe.c): block sets and
 * configuration, routing statistics, the eigenbasis from data, and the branches in
 * a model (param specs, the hook, finite differences through a tiny model with
 * branches, statistics over forwards, a reference-named state_dict).
 */
#include "config.h"
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* --------------------------------------------------------- block sets */

static void want_blocks(const char *spec, int depth, const int *want, int nwant)
{
    struct emoe_error err = {0};
    int idx[64], n = -1;
    int rc = emoe_moe_parse_blocks(spec, depth, idx, &n, &err);
    ck_assert_msg(rc == EMOE_OK, "'%s': %s", spec, err.msg);
    ck_assert_int_eq(n, nwant);
    for (int i = 0; i < n; i++)
        ck_assert_int_eq(idx[i], want[i]);
}

START_TEST(test_moe_parse_blocks)
{
    want_blocks("all", 3, (int[]){0, 1, 2}, 3);
    want_blocks("last6", 12, (int[]){6, 7, 8, 9, 10, 11}, 6);
    want_blocks("last6", 4, (int[]){0, 1, 2, 3}, 4);
    want_blocks("last2", 6, (int[]){4, 5}, 2);
    want_blocks("every2", 6, (int[]){1, 3, 5}, 3);
    want_blocks("every3", 7, (int[]){2, 5}, 2);
    want_blocks("5,3,4", 6, (int[]){3, 4, 5}, 3);
    want_blocks("0", 1, (int[]){0}, 1);
}
END_TEST

START_TEST(test_moe_parse_blocks_rejects)
{
    struct emoe_error err = {0};
    int idx[64], n;
    tu_assert_error(emoe_moe_parse_blocks("", 6, idx, &n, &err), err, EMOE_EINVAL, "empty");
    tu_assert_error(emoe_moe_parse_blocks("last0", 6, idx, &n, &err), err, EMOE_EINVAL,
                    "malformed block set 'last0'");
    tu_assert_error(emoe_moe_parse_blocks("lastx", 6, idx, &n, &err), err, EMOE_EINVAL,
                    "malformed");
    tu_assert_error(emoe_moe_parse_blocks("every0", 6, idx, &n, &err), err, EMOE_EINVAL,
                    "malformed");
    tu_assert_error(emoe_moe_parse_blocks("every9", 6, idx, &n, &err), err, EMOE_EINVAL,
                    "selects no block");
    tu_assert_error(emoe_moe_parse_blocks("3,3", 6, idx, &n, &err), err, EMOE_EINVAL,
                    "block 3 twice");
    tu_assert_error(emoe_moe_parse_blocks("2,6", 6, idx, &n, &err), err, EMOE_EINVAL,
                    "block 6 out of range (depth 6)");
    tu_assert_error(emoe_moe_parse_blocks("1,,2", 6, idx, &n, &err), err, EMOE_EINVAL,
                    "malformed");
    tu_assert_error(emoe_moe_parse_blocks("-1", 6, idx, &n, &err), err, EMOE_EINVAL,
                    "malformed");
    tu_assert_error(emoe_moe_parse_blocks("99999999999", 6, idx, &n, &err), err, EMOE_EINVAL,
                    "malformed");
}
END_TEST

START_TEST(test_moe_config_check)
{
    struct emoe_error err = {0};
    struct emoe_moe_config c;
    emoe_moe_config_init(&c);
    ck_assert_int_eq(emoe_moe_config_check(&c, 192, 12, &err), EMOE_OK);
    ck_assert_str_eq(c.blocks, "last6");
    ck_assert_int_eq(c.top_k, 1);
    c.top_k = 9;
    tu_assert_error(emoe_moe_config_check(&c, 192, 12, &err), err, EMOE_EINVAL,
                    "top_k 9 out of range");
    emoe_moe_config_init(&c);
    c.rank = 200;
    tu_assert_error(emoe_moe_config_check(&c, 192, 12, &err), err, EMOE_EINVAL,
                    "rank 200 out of range");
    emoe_moe_config_init(&c);
    c.router = EMOE_ROUTER_SOFTMAX;
    c.load_loss = 0.005f;
    tu_assert_error(emoe_moe_config_check(&c, 192, 12, &err), err, EMOE_EINVAL, "noise");
    emoe_moe_config_init(&c);
    c.router = EMOE_ROUTER_SOFTMAX;
    c.eigen_batches = 2;
    tu_assert_error(emoe_moe_config_check(&c, 192, 12, &err), err, EMOE_EINVAL,
                    "eigen router");
    emoe_moe_config_init(&c);
    strcpy(c.blocks, "last");
    tu_assert_error(emoe_moe_config_check(&c, 192, 12, &err), err, EMOE_EINVAL,
                    "block set 'last'");
    enum emoe_router_kind k;
    ck_assert_int_eq(emoe_router_from_name("ermoe", &k, &err), EMOE_OK);
    ck_assert_int_eq(k, EMOE_ROUTER_ERMOE);
    ck_assert_str_eq(emoe_router_name(EMOE_ROUTER_SOFTMAX), "softmax");
    tu_assert_error(emoe_router_from_name("dense", &k, &err), err, EMOE_EINVAL,
                    "unknown router 'dense'");
    struct emoe_moe_branch *b;
    emoe_moe_config_init(&c);
    c.router = EMOE_ROUTER_NONE;
    tu_assert_error(emoe_moe_branch_new(&c, 16, 0, &b, &err), err, EMOE_EINVAL, "no branch");
    ck_assert_ptr_null(b);
}
END_TEST

/* --------------------------------------------------------- statistics */

START_TEST(test_moe_routing_summary)
{
    struct emoe_routing_summary s;
    int64_t c1[4] = {8, 0, 0, 0};
    emoe_routing_summarize(c1, 4, 10, 2, &s);
    ck_assert_int_eq(s.tokens, 8);
    ck_assert(fabs(s.cv - sqrt(3.0)) < 1e-12);
    ck_assert(fabs(s.entropy) < 1e-12);
    ck_assert(fabs(s.peak - 4.0) < 1e-12);
    ck_assert(s.min_share == 0.0);
    ck_assert(fabs(s.dropped_frac - 0.2) < 1e-12);
    ck_assert_int_eq(s.unused, 3);
    int64_t c2[4] = {5, 5, 5, 5};
    emoe_routing_summarize(c2, 4, 20, 0, &s);
    ck_assert(fabs(s.cv) < 1e-12);
    ck_assert(fabs(s.entropy - 1.0) < 1e-12);
    ck_assert(fabs(s.peak - 1.0) < 1e-12);
    ck_assert(fabs(s.min_share - 0.25) < 1e-12);
    ck_assert_int_eq(s.unused, 0);
    int64_t c3[2] = {3, 1}; /* shares .75/.25: std .25, mean .5 */
    emoe_routing_summarize(c3, 2, 4, 0, &s);
    ck_assert(fabs(s.cv - 0.5) < 1e-12);
    ck_assert(fabs(s.entropy - (-(0.75 * log(0.75) + 0.25 * log(0.25)) / log(2.0))) < 1e-12);
    ck_assert(fabs(s.peak - 1.5) < 1e-12);
}
END_TEST

START_TEST(test_moe_branch_stats_count_tokens)
{
    struct emoe_error err = {0};
    struct emoe_moe_config c;
    emoe_moe_config_init(&c);
    c.experts = 5;
    c.rank = 4;
    c.bottleneck = 6;
    c.seed = 9;
    struct emoe_moe_branch *b;
    ck_assert_int_eq(emoe_moe_branch_new(&c, 12, 2, &b, &err), EMOE_OK);
    float x[3 * 8 * 12];
    struct emoe_rng r;
    emoe_rng_init(&r, 1, 2);
    for (int i = 0; i < 3 * 8 * 12; i++)
        x[i] = emoe_rng_normal(&r);
    ck_assert_int_eq(emoe_moe_branch_forward(b, x, 3, 8, 12, 1, &err), EMOE_OK);
    int64_t counts[5];
    struct emoe_routing_summary s;
    emoe_moe_branch_stats(b, counts, &s);
    ck_assert_int_eq(s.tokens, 3 * 7);
    ck_assert_int_eq(s.assignments, 3 * 7);
    ck_assert_int_eq(s.dropped, 0);
    const int32_t *t1 = emoe_moe_branch_top1(b);
    int64_t want[5] = {0};
    for (int n = 0; n < 21; n++)
        want[t1[n]]++;
    for (int e = 0; e < 5; e++)
        ck_assert_int_eq(counts[e], want[e]);
    /* the backward needs the forward's shape */
    tu_assert_error(emoe_moe_branch_backward(b, x, 2, 8, 12, &err), err, EMOE_EINVAL,
                    "differs from forward");
    tu_assert_error(emoe_moe_branch_forward(b, x, 3, 8, 10, 0, &err), err, EMOE_EINVAL,
                    "width 10, expected 12");
    emoe_moe_branch_free(b);
}
END_TEST

/* The softmax router's noise of training forward n depends only on (seed, branch,
 * n): a branch set to n reproduces it; evaluation forwards do not count. */
static void noisy_forward(struct emoe_moe_branch *b, const float *x, int train, float *p)
{
    struct emoe_error err = {0};
    float y[2 * 5 * 12];
    memcpy(y, x, sizeof y);
    ck_assert_int_eq(emoe_moe_branch_forward(b, y, 2, 5, 12, train, &err), EMOE_OK);
    ck_assert_int_eq(emoe_moe_branch_tokens(b), 8);
    memcpy(p, emoe_moe_branch_probs(b), 8 * 4 * sizeof *p);
}

START_TEST(test_moe_softmax_noise_by_forward)
{
    struct emoe_error err = {0};
    struct emoe_moe_config c;
    emoe_moe_config_init(&c);
    c.router = EMOE_ROUTER_SOFTMAX;
    c.experts = 4;
    c.bottleneck = 6;
    c.noise = 1;
    c.seed = 5;
    struct emoe_moe_branch *a, *b;
    ck_assert_int_eq(emoe_moe_branch_new(&c, 12, 3, &a, &err), EMOE_OK);
    ck_assert_int_eq(emoe_moe_branch_new(&c, 12, 3, &b, &err), EMOE_OK);
    float x[2 * 5 * 12];
    struct emoe_rng r;
    emoe_rng_init(&r, 4, 0);
    for (int i = 0; i < 2 * 5 * 12; i++)
        x[i] = emoe_rng_normal(&r);
    float p[3][32], q[32], clean[32];
    for (int n = 0; n < 3; n++)
        noisy_forward(a, x, 1, p[n]);
    noisy_forward(a, x, 0, clean);
    ck_assert(memcmp(p[0], p[1], sizeof q) != 0);  /* new noise every forward */
    ck_assert(memcmp(p[1], p[2], sizeof q) != 0);
    ck_assert(memcmp(p[0], clean, sizeof q) != 0); /* no noise in evaluation */
    noisy_forward(b, x, 0, q);                     /* does not count */
    ck_assert(memcmp(q, clean, sizeof q) == 0);
    noisy_forward(b, x, 1, q);
    ck_assert(memcmp(q, p[0], sizeof q) == 0);
    emoe_moe_branch_set_train_forwards(b, 2);
    noisy_forward(b, x, 1, q);
    ck_assert(memcmp(q, p[2], sizeof q) == 0);
    emoe_moe_branch_set_train_forwards(b, 1);
    noisy_forward(b, x, 1, q);
    ck_assert(memcmp(q, p[1], sizeof q) == 0);
    noisy_forward(b, x, 1, q);                     /* and it continues from there */
    ck_assert(memcmp(q, p[2], sizeof q) == 0);
    emoe_moe_branch_free(a);
    emoe_moe_branch_free(b);
}
END_TEST

/* -------------------------------------------------- eigenbasis from data */

START_TEST(test_moe_eigenbasis_from_data)
{
    struct emoe_error err = {0};
    struct emoe_moe_config c;
    emoe_moe_config_init(&c);
    c.experts = 3;
    c.rank = 3;
    c.bottleneck = 4;
    enum { D = 10, B = 20, T = 33 };
    struct emoe_moe_branch *b;
    ck_assert_int_eq(emoe_moe_branch_new(&c, D, 0, &b, &err), EMOE_OK);
    tu_assert_error(emoe_moe_branch_cov_apply(b, &err), err, EMOE_EINVAL, "no tokens");
    /* tokens h = sum_j sigma_j g_j u_j + small noise, u_j orthonormal (a rotated basis),
     * sigma 5, 3, 2: the top-3 eigenvectors of H^T H / N are +-u_j in that order. */
    float u[3][D];
    for (int j = 0; j < 3; j++)
        for (int i = 0; i < D; i++)
            u[j][i] = 0.0f;
    float s2 = 1.0f / sqrtf(2.0f);
    u[0][0] = s2, u[0][1] = s2;
    u[1][0] = s2, u[1][1] = -s2;
    u[2][4] = -1.0f;
    const float sig[3] = {5.0f, 3.0f, 2.0f};
    float *x = malloc((size_t)B * T * D * sizeof *x);
    struct emoe_rng r;
    emoe_rng_init(&r, 3, 3);
    for (int n = 0; n < B * T; n++) {
        float *h = x + (size_t)n * D;
        for (int i = 0; i < D; i++)
            h[i] = 0.05f * emoe_rng_normal(&r);
        for (int j = 0; j < 3; j++) {
            float g = sig[j] * emoe_rng_normal(&r);
            for (int i = 0; i < D; i++)
                h[i] += g * u[j][i];
        }
    }
    /* two batches: the second half of the images */
    ck_assert_int_eq(emoe_moe_branch_cov_add(b, x, B / 2, T, D, &err), EMOE_OK);
    ck_assert_int_eq(emoe_moe_branch_cov_add(b, x + (size_t)(B / 2) * T * D, B / 2, T, D, &err),
                     EMOE_OK);
    ck_assert_int_eq(emoe_moe_branch_cov_apply(b, &err), EMOE_OK);
    float *q = NULL;
    for (size_t i = 0; i < emoe_moe_branch_param_count(b); i++) {
        float *d;
        if (!strcmp(emoe_moe_branch_param(b, i, NULL, NULL, &d, NULL), "router.basis.Q"))
            q = d;
    }
    ck_assert_ptr_nonnull(q);
    for (int j = 0; j < 3; j++) {
        double dot = 0.0, nn = 0.0;
        for (int i = 0; i < D; i++) {
            dot += (double)q[i * 3 + j] * u[j][i];
            nn += (double)q[i * 3 + j] * q[i * 3 + j];
        }
        ck_assert_msg(fabs(fabs(dot) - 1.0) < 1e-2, "column %d: |<q, u>| = %g", j, fabs(dot));
        ck_assert(fabs(nn - 1.0) < 1e-5);
        /* sign: the largest-magnitude entry is positive */
        int imax = 0;
        for (int i = 1; i < D; i++)
            if (fabsf(q[i * 3 + j]) > fabsf(q[imax * 3 + j]))
                imax = i;
        ck_assert(q[imax * 3 + j] > 0.0f);
    }
    free(x);
    emoe_moe_branch_free(b);
    c.router = EMOE_ROUTER_SOFTMAX;
    ck_assert_int_eq(emoe_moe_branch_new(&c, D, 0, &b, &err), EMOE_OK);
    float y[2 * 3 * D] = {0};
    tu_assert_error(emoe_moe_branch_cov_add(b, y, 2, 3, D, &err), err, EMOE_EINVAL,
                    "router 'softmax' has no eigenbasis Q");
    emoe_moe_branch_free(b);
}
END_TEST

/* ------------------------------------------------------------ in a model */

/* A tiny model: 8x8x3 images, patch 4 (T 5), D 16, depth 3, 2 heads, 4 classes. */
static void tiny_vit(struct emoe_vit_config *v)
{
    struct emoe_error err = {0};
    ck_assert_int_eq(emoe_vit_preset("vit-micro", v, &err), EMOE_OK);
    v->image_size[0] = v->image_size[1] = 8;
    v->patch_size = 4;
    v->embed_dim = 16;
    v->depth = 3;
    v->num_heads = 2;
    v->mlp_dim = 32;
    v->num_classes = 4;
}

static void tiny_moe(struct emoe_moe_config *c, enum emoe_router_kind k)
{
    emoe_moe_config_init(c);
    c->router = k;
    c->experts = 3;
    c->rank = 4;
    c->bottleneck = 8;
    c->tau = 0.5f;
    c->alpha = 0.7f;
    c->lambda_ortho = 0.01f;
    strcpy(c->blocks, "0,1");
}

static struct emoe_model *model_with(const struct emoe_moe_config *c,
                                     const struct emoe_vit_config *v, struct emoe_moe **moe)
{
    struct emoe_error err = {0};
    struct emoe_param_spec *specs;
    size_t n;
    ck_assert_int_eq(emoe_moe_param_specs(c, v->embed_dim, v->depth, &specs, &n, &err),
                     EMOE_OK);
    struct emoe_model *m;
    int rc = emoe_model_new(v, specs, n, &m, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    free(specs);
    rc = emoe_moe_new(c, m, moe, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    return m;
}

START_TEST(test_moe_param_specs_names)
{
    struct emoe_error err = {0};
    struct emoe_moe_config c;
    tiny_moe(&c, EMOE_ROUTER_EIGEN);
    struct emoe_param_spec *s;
    size_t n;
    ck_assert_int_eq(emoe_moe_param_specs(&c, 16, 3, &s, &n, &err), EMOE_OK);
    /* per branch: alpha, 6 router tensors, E down + E up */
    ck_assert_uint_eq(n, 2 * (1 + 6 + 2 * 3));
    const char *want[] = {"branches.0.alpha", "branches.0.router.gamma",
                          "branches.0.router.masks", "branches.0.router.bias",
                          "branches.0.router.basis.Q", "branches.0.router.basis.P",
                          "branches.0.router.basis.log_lambda",
                          "branches.0.experts.0.down.weight"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        ck_assert_str_eq(s[i].name, want[i]);
    ck_assert_int_eq(s[0].ndim, 0);
    ck_assert_int_eq(s[2].ndim, 2);
    ck_assert_int_eq(s[2].shape[0], 3);
    ck_assert_int_eq(s[2].shape[1], 4);
    ck_assert_int_eq(s[4].shape[0], 16);
    ck_assert_int_eq(s[4].shape[1], 4);
    ck_assert_str_eq(s[10].name, "branches.0.experts.0.up.weight");
    ck_assert_int_eq(s[10].shape[0], 16);
    ck_assert_int_eq(s[10].shape[1], 8);
    ck_assert_str_eq(s[13].name, "branches.1.alpha");
    free(s);
    c.router = EMOE_ROUTER_SOFTMAX;
    ck_assert_int_eq(emoe_moe_param_specs(&c, 16, 3, &s, &n, &err), EMOE_OK);
    ck_assert_str_eq(s[1].name, "branches.0.router.weight");
    ck_assert_int_eq(s[1].shape[0], 3);
    ck_assert_int_eq(s[1].shape[1], 16);
    free(s);
    c.router = EMOE_ROUTER_NONE;
    ck_assert_int_eq(emoe_moe_param_specs(&c, 16, 3, &s, &n, &err), EMOE_OK);
    ck_assert_uint_eq(n, 0);
    free(s);
    c.router = EMOE_ROUTER_EIGEN;
    strcpy(c.blocks, "3");
    tu_assert_error(emoe_moe_param_specs(&c, 16, 3, &s, &n, &err), err, EMOE_EINVAL,
                    "out of range");
}
END_TEST

START_TEST(test_moe_new_needs_params)
{
    struct emoe_error err = {0};
    struct emoe_vit_config v;
    tiny_vit(&v);
    struct emoe_model *m;
    ck_assert_int_eq(emoe_model_new(&v, NULL, 0, &m, &err), EMOE_OK);
    struct emoe_moe_config c;
    tiny_moe(&c, EMOE_ROUTER_EIGEN);
    struct emoe_moe *moe;
    tu_assert_error(emoe_moe_new(&c, m, &moe, &err), err, EMOE_ENOTFOUND,
                    "model has no parameter 'branches.0.alpha'");
    ck_assert_ptr_null(moe);
    /* router none: a plain ViT, no layers, no hook */
    c.router = EMOE_ROUTER_NONE;
    ck_assert_int_eq(emoe_moe_new(&c, m, &moe, &err), EMOE_OK);
    ck_assert_int_eq(emoe_moe_layers(moe), 0);
    unsigned char img[2 * 8 * 8 * 3] = {0};
    ck_assert_int_eq(emoe_model_forward(m, img, EMOE_U8, 2, 0, &err), EMOE_OK);
    emoe_moe_free(moe);
    emoe_model_free(m);
}
END_TEST

/* Loss of the model on fixed images and labels (train forward: the hook retracts). */
static double model_loss(struct emoe_model *m, const unsigned char *img, const int32_t *y, int B)
{
    struct emoe_error err = {0};
    int rc = emoe_model_forward(m, img, EMOE_U8, B, 1, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    double loss;
    rc = emoe_model_loss(m, y, 0.0f, NULL, &loss, NULL, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    return loss;
}

static void model_fd(enum emoe_router_kind kind, int top_k)
{
    struct emoe_error err = {0};
    struct emoe_vit_config v;
    tiny_vit(&v);
    struct emoe_moe_config c;
    tiny_moe(&c, kind);
    c.top_k = top_k;
    struct emoe_moe *moe;
    struct emoe_model *m = model_with(&c, &v, &moe);
    enum { B = 3 };
    unsigned char img[B * 8 * 8 * 3];
    struct emoe_rng r;
    emoe_rng_init(&r, 21, 0);
    for (size_t i = 0; i < sizeof img; i++)
        img[i] = (unsigned char)emoe_rng_below(&r, 256);
    int32_t y[B] = {0, 3, 1};
    /* move the router params off their init so every path carries gradient */
    for (size_t i = 0; i < emoe_model_param_count(m); i++) {
        struct emoe_param *p = emoe_model_param_at(m, i);
        if (strncmp(p->spec->name, "branches.", 9) == 0 && !strstr(p->spec->name, "basis"))
            for (size_t j = 0; j < p->numel; j++)
                p->data[j] += 0.2f * emoe_rng_normal(&r);
    }
    emoe_model_zero_grad(m);
    model_loss(m, img, y, B);
    /* the choices of the analytic pass, to skip perturbations that change one */
    int L = emoe_moe_layers(moe), k;
    ck_assert_int_eq(L, 2);
    int32_t *ch0[2];
    size_t nch[2];
    for (int l = 0; l < L; l++) {
        struct emoe_moe_branch *b = emoe_moe_layer_branch(moe, l);
        const int32_t *ch = emoe_moe_branch_choices(b, &k);
        nch[l] = (size_t)emoe_moe_branch_tokens(b) * k;
        ch0[l] = malloc(nch[l] * sizeof(int32_t));
        memcpy(ch0[l], ch, nch[l] * sizeof(int32_t));
    }
    ck_assert_int_eq(emoe_model_backward(m, &err), EMOE_OK);
    size_t np = emoe_model_param_count(m);
    float **grads = calloc(np, sizeof *grads);
    for (size_t i = 0; i < np; i++) {
        struct emoe_param *p = emoe_model_param_at(m, i);
        grads[i] = malloc(p->numel * sizeof(float));
        memcpy(grads[i], p->grad, p->numel * sizeof(float));
    }
    const double eps = 5e-3;
    int checked = 0, skipped = 0;
    for (size_t i = 0; i < np; i++) {
        struct emoe_param *p = emoe_model_param_at(m, i);
        const char *name = p->spec->name;
        /* Q, P and the ERMoE bases are retracted by every training forward (FD through
         * the QR is not the gradient as used; check_router tests them in evaluation
         * mode).  Test the
         * branches and a few backbone tensors that sit before or between them. */
        if ((strstr(name, "basis") && !strstr(name, "log_lambda")) ||
            (strncmp(name, "branches.", 9) != 0 && !strstr(name, "blocks.1.mlp.fc2") &&
             !strstr(name, "blocks.0.attn.qkv.weight") && strcmp(name, "vit.pos_embed") != 0))
            continue;
        int per = p->numel < 6 ? (int)p->numel : 6;
        for (int t = 0; t < per; t++) {
            size_t j = (size_t)per < p->numel ? emoe_rng_below(&r, (uint32_t)p->numel) : (size_t)t;
            float v0 = p->data[j];
            int same = 1;
            p->data[j] = v0 + (float)eps;
            double lp = model_loss(m, img, y, B);
            for (int l = 0; l < L; l++)
                same &= !memcmp(ch0[l], emoe_moe_branch_choices(emoe_moe_layer_branch(moe, l),
                                                                NULL), nch[l] * 4);
            p->data[j] = v0 - (float)eps;
            double lm = model_loss(m, img, y, B);
            for (int l = 0; l < L; l++)
                same &= !memcmp(ch0[l], emoe_moe_branch_choices(emoe_moe_layer_branch(moe, l),
                                                                NULL), nch[l] * 4);
            p->data[j] = v0;
            if (!same) {
                skipped++;
                continue;
            }
            double fd = (lp - lm) / (2 * eps), a = grads[i][j];
            double tol = 1.5e-4 + 3e-2 * fmax(fabs(a), fabs(fd));
            ck_assert_msg(fabs(a - fd) <= tol, "%s[%zu]: grad %g, fd %g", name, j, a, fd);
            checked++;
        }
    }
    ck_assert_msg(checked > 40 && checked > 10 * skipped, "%d checked, %d skipped", checked,
                  skipped);
    for (size_t i = 0; i < np; i++)
        free(grads[i]);
    free(grads);
    for (int l = 0; l < L; l++)
        free(ch0[l]);
    emoe_moe_free(moe);
    emoe_model_free(m);
}

START_TEST(test_moe_model_fd_eigen)
{
    model_fd(EMOE_ROUTER_EIGEN, 1);
}
END_TEST

START_TEST(test_moe_model_fd_eigen_soft)
{
    model_fd(EMOE_ROUTER_EIGEN, 0);
}
END_TEST

START_TEST(test_moe_model_fd_softmax)
{
    model_fd(EMOE_ROUTER_SOFTMAX, 2);
}
END_TEST

START_TEST(test_moe_model_fd_ermoe)
{
    model_fd(EMOE_ROUTER_ERMOE, 1);
}
END_TEST

START_TEST(test_moe_model_stats)
{
    struct emoe_error err = {0};
    struct emoe_vit_config v;
    tiny_vit(&v);
    struct emoe_moe_config c;
    tiny_moe(&c, EMOE_ROUTER_EIGEN);
    struct emoe_moe *moe;
    struct emoe_model *m = model_with(&c, &v, &moe);
    enum { B = 5 };
    unsigned char img[B * 8 * 8 * 3];
    for (size_t i = 0; i < sizeof img; i++)
        img[i] = (unsigned char)(i * 37 % 251);
    int32_t y[B] = {0, 1, 2, 3, 1};
    ck_assert_int_eq(emoe_moe_layer_block(moe, 0), 0);
    ck_assert_int_eq(emoe_moe_layer_block(moe, 1), 1);
    ck_assert_int_eq(emoe_moe_layer_block(moe, 2), -1);
    int64_t counts[3], acc[3];
    struct emoe_routing_summary s;
    for (int it = 0; it < 2; it++) {
        ck_assert_int_eq(emoe_model_forward(m, img, EMOE_U8, B, 0, &err), EMOE_OK);
        ck_assert_int_eq(emoe_moe_stats_add_labels(moe, y, B, 4, &err), EMOE_OK);
    }
    for (int l = 0; l < 2; l++) {
        ck_assert_int_eq(emoe_moe_layer_stats(moe, l, 0, counts, &s, &err), EMOE_OK);
        ck_assert_int_eq(s.tokens, B * 4); /* patch tokens only */
        ck_assert_int_eq(emoe_moe_layer_stats(moe, l, 1, acc, &s, &err), EMOE_OK);
        ck_assert_int_eq(s.tokens, 2 * B * 4);
        for (int e = 0; e < 3; e++)
            ck_assert_int_eq(acc[e], 2 * counts[e]); /* same batch twice */
    }
    int K;
    const float *cc = emoe_moe_class_counts(moe, &K);
    ck_assert_int_eq(K, 4);
    for (int l = 0; l < 2; l++) {
        double tot = 0, cls1 = 0;
        for (int e = 0; e < 3; e++)
            for (int k = 0; k < K; k++) {
                tot += cc[((size_t)l * 3 + e) * K + k];
                if (k == 1)
                    cls1 += cc[((size_t)l * 3 + e) * K + k];
            }
        ck_assert(tot == 2 * B * 4);
        ck_assert(cls1 == 2 * 2 * 4); /* two images of class 1 */
    }
    tu_assert_error(emoe_moe_layer_stats(moe, 2, 0, counts, &s, &err), err, EMOE_EINVAL,
                    "layer 2 out of range");
    tu_assert_error(emoe_moe_stats_add_labels(moe, y, B, 5, &err), err, EMOE_EINVAL,
                    "5 classes, expected 4");
    int32_t bad[B] = {0, 1, 7, 3, 1};
    tu_assert_error(emoe_moe_stats_add_labels(moe, bad, B, 4, &err), err, EMOE_EINVAL,
                    "label 7 out of range");
    emoe_moe_stats_reset(moe);
    ck_assert_int_eq(emoe_moe_layer_stats(moe, 0, 1, acc, &s, &err), EMOE_OK);
    ck_assert_int_eq(s.tokens, 0);
    emoe_moe_free(moe);
    emoe_model_free(m);
}
END_TEST

START_TEST(test_moe_model_eigenbasis_from_data)
{
    struct emoe_error err = {0};
    struct emoe_vit_config v;
    tiny_vit(&v);
    struct emoe_moe_config c;
    tiny_moe(&c, EMOE_ROUTER_EIGEN);
    c.eigen_batches = 2;
    struct emoe_moe *moe;
    struct emoe_model *m = model_with(&c, &v, &moe);
    enum { B = 4 };
    unsigned char img[B * 8 * 8 * 3];
    for (size_t i = 0; i < sizeof img; i++)
        img[i] = (unsigned char)(i * 53 % 241);
    struct emoe_param *q = emoe_model_param(m, "branches.1.router.basis.Q");
    struct emoe_param *q0 = emoe_model_param(m, "branches.0.router.basis.Q");
    ck_assert_ptr_nonnull(q);
    ck_assert_ptr_nonnull(q0);
    float before[16 * 4], before0[16 * 4], after1[16 * 4];
    memcpy(before, q->data, sizeof before);
    memcpy(before0, q0->data, sizeof before0);
    /* explicit: two evaluation forwards collect, end sets Q */
    emoe_moe_cov_begin(moe);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(emoe_model_forward(m, img, EMOE_U8, B, 0, &err), EMOE_OK);
    ck_assert_int_eq(emoe_moe_cov_end(moe, &err), EMOE_OK);
    memcpy(after1, q->data, sizeof after1);
    ck_assert(memcmp(before, after1, sizeof before) != 0);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            double s = 0;
            for (int d = 0; d < 16; d++)
                s += (double)after1[d * 4 + i] * after1[d * 4 + j];
            ck_assert(fabs(s - (i == j)) < 1e-5);
        }
    /* automatic (eigen_batches 2): the first two training forwards collect and the
     * basis takes effect at the next forward.  From the same starting point the
     * branch inputs are the same, so Q comes out the same up to column signs (a
     * training forward's retraction may flip them; the output does not change). */
    memcpy(q->data, before, sizeof before);
    memcpy(q0->data, before0, sizeof before0);
    ck_assert_int_eq(emoe_model_forward(m, img, EMOE_U8, B, 1, &err), EMOE_OK);
    ck_assert_int_eq(emoe_model_forward(m, img, EMOE_U8, B, 1, &err), EMOE_OK);
    float mid[16 * 4];
    memcpy(mid, q->data, sizeof mid);
    ck_assert_int_eq(emoe_model_forward(m, img, EMOE_U8, B, 0, &err), EMOE_OK);
    ck_assert(memcmp(mid, q->data, sizeof mid) != 0);
    for (int j = 0; j < 4; j++) {
        double dot = 0;
        for (int d = 0; d < 16; d++)
            dot += (double)q->data[d * 4 + j] * after1[d * 4 + j];
        ck_assert_msg(fabs(fabs(dot) - 1.0) < 1e-3, "column %d: %g", j, dot);
    }
    emoe_moe_free(moe);
    emoe_model_free(m);
}
END_TEST

/* One record of an EMOEFIX1 fixture (format: tests/gen_fixtures_moe.py); malloc'd. */
static float *fixture_record(const char *file, const char *want, size_t *numel)
{
    size_t size;
    unsigned char *p = tu_read_file(tu_fixture(file), &size), *e = p + size, *q = p + 12;
    ck_assert(size > 12 && memcmp(p, "EMOEFIX1", 8) == 0);
    uint32_t cnt, len, nd, v;
    memcpy(&cnt, p + 8, 4);
    for (uint32_t i = 0; i < cnt; i++) {
        ck_assert(q + 4 <= e);
        memcpy(&len, q, 4);
        ck_assert(len < 64 && q + 8 + len <= e);
        char name[64] = {0};
        memcpy(name, q + 4, len);
        q += 4 + len;
        memcpy(&nd, q, 4);
        q += 4;
        size_t n = 1;
        for (uint32_t d = 0; d < nd; d++, q += 4) {
            ck_assert(q + 4 <= e);
            memcpy(&v, q, 4);
            n *= v;
        }
        ck_assert(q + 4 * n <= e);
        if (strcmp(name, want) == 0) {
            float *out = malloc((n ? n : 1) * sizeof *out);
            memcpy(out, q, 4 * n);
            *numel = n;
            free(p);
            return out;
        }
        q += 4 * n;
    }
    free(p);
    ck_abort_msg("%s: no record '%s'", file, want);
    return NULL;
}

/* The backbone of tests/gen_fixtures_model.py's tiny2d case. */
static void tiny2d_vit(struct emoe_vit_config *v)
{
    tiny_vit(v);
    v->depth = 2;
    v->mlp_dim = 64;
    v->num_classes = 5;
    const float mean[3] = {0.4914f, 0.4822f, 0.4465f}, std[3] = {0.2470f, 0.2435f, 0.2616f};
    for (int i = 0; i < 3; i++) {
        v->mean[i] = mean[i];
        v->std[i] = std[i];
    }
}

/* |<a_j, b_j>| for column j of two [16, 4] bases. */
static double col_dot(const float *a, const float *b, int j)
{
    double s = 0;
    for (int d = 0; d < 16; d++)
        s += (double)a[d * 4 + j] * b[d * 4 + j];
    return fabs(s);
}

START_TEST(test_moe_model_eigenbasis_refresh)
{
    struct emoe_error err = {0};
    struct emoe_vit_config v;
    tiny_vit(&v);
    struct emoe_moe_config c;
    tiny_moe(&c, EMOE_ROUTER_EIGEN);
    c.eigen_batches = 1;
    c.eigen_refresh = 2;
    struct emoe_moe *moe;
    struct emoe_model *m = model_with(&c, &v, &moe);
    enum { B = 4 };
    unsigned char a[B * 8 * 8 * 3], bimg[B * 8 * 8 * 3];
    for (size_t i = 0; i < sizeof a; i++) {
        a[i] = (unsigned char)(i * 53 % 241);
        bimg[i] = (unsigned char)((i * i) % 199 + (i % 7) * 8);
    }
    struct emoe_param *q = emoe_model_param(m, "branches.0.router.basis.Q");
    float qa[64], qb[64];
    /* forward 0 collects image set a; forward 1 applies it (then does not collect) */
    ck_assert_int_eq(emoe_model_forward(m, a, EMOE_U8, B, 1, &err), EMOE_OK);
    ck_assert_int_eq(emoe_model_forward(m, bimg, EMOE_U8, B, 1, &err), EMOE_OK);
    memcpy(qa, q->data, sizeof qa);
    /* forward 2 collects set b; forward 3 applies it */
    ck_assert_int_eq(emoe_model_forward(m, bimg, EMOE_U8, B, 1, &err), EMOE_OK);
    for (int j = 0; j < 4; j++) /* not yet refreshed: qa up to signs */
        ck_assert(fabs(col_dot(q->data, qa, j) - 1.0) < 1e-4);
    ck_assert_int_eq(emoe_model_forward(m, a, EMOE_U8, B, 0, &err), EMOE_OK);
    memcpy(qb, q->data, sizeof qb);
    int differs = 0;
    for (int j = 0; j < 4; j++)
        differs |= col_dot(qa, qb, j) < 0.99;
    ck_assert_msg(differs, "the basis was not refreshed from the second image set");
    /* the same as an explicit collection over set b (branch 0 sees the backbone only) */
    emoe_moe_cov_begin(moe);
    ck_assert_int_eq(emoe_model_forward(m, bimg, EMOE_U8, B, 0, &err), EMOE_OK);
    ck_assert_int_eq(emoe_moe_cov_end(moe, &err), EMOE_OK);
    for (int j = 0; j < 4; j++)
        ck_assert(fabs(col_dot(q->data, qb, j) - 1.0) < 1e-4);
    emoe_moe_free(moe);
    emoe_model_free(m);
}
END_TEST

START_TEST(test_moe_reference_state_dict_loads)
{
    struct emoe_error err = {0};
    const char *path = tu_fixture("moe_state_eigen.safetensors");
    struct emoe_moe_config c;
    int rc = emoe_moe_config_from_checkpoint(path, &c, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    /* inferred from the tensors (the reference writes no metadata) */
    ck_assert_int_eq(c.router, EMOE_ROUTER_EIGEN);
    ck_assert_int_eq(c.experts, 3);
    ck_assert_int_eq(c.rank, 4);
    ck_assert_int_eq(c.bottleneck, 8);
    ck_assert_str_eq(c.blocks, "0,1");
    ck_assert_int_eq(c.top_k, 1);
    ck_assert(c.tau == 1.0f);
    ck_assert_int_eq(c.patches_only, 1);
    struct emoe_vit_config v;
    tiny2d_vit(&v);
    struct emoe_moe *moe;
    struct emoe_model *m = model_with(&c, &v, &moe);
    size_t missing = 99;
    rc = emoe_checkpoint_load(m, path, 0, &missing, &err); /* strict: every name */
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    ck_assert_uint_eq(missing, 0);
    size_t ni, nl;
    float *imgf = fixture_record("moe_state_eigen.bin", "images", &ni);
    float *want = fixture_record("moe_state_eigen.bin", "logits", &nl);
    ck_assert_uint_eq(ni, 3 * 8 * 8 * 3);
    ck_assert_uint_eq(nl, 3 * 5);
    unsigned char img[3 * 8 * 8 * 3];
    for (size_t i = 0; i < ni; i++)
        img[i] = (unsigned char)imgf[i];
    rc = emoe_model_forward(m, img, EMOE_U8, 3, 0, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    const float *logits = emoe_model_logits(m);
    for (size_t i = 0; i < nl; i++)
        ck_assert_msg(fabsf(logits[i] - want[i]) <= 1e-4f, "logit %zu: %g, reference %g", i,
                      (double)logits[i], (double)want[i]);
    for (int l = 0; l < 2; l++) {
        char rec[16];
        snprintf(rec, sizeof rec, "top1_%d", l);
        size_t nt;
        float *t1 = fixture_record("moe_state_eigen.bin", rec, &nt);
        struct emoe_moe_branch *b = emoe_moe_layer_branch(moe, l);
        ck_assert_uint_eq(nt, (size_t)emoe_moe_branch_tokens(b));
        for (size_t i = 0; i < nt; i++)
            ck_assert_int_eq(emoe_moe_branch_top1(b)[i], (int)t1[i]);
        free(t1);
    }
    free(imgf);
    free(want);
    emoe_moe_free(moe);
    emoe_model_free(m);
}
END_TEST

START_TEST(test_moe_checkpoint_metadata_roundtrip)
{
    struct emoe_error err = {0};
    struct emoe_vit_config v;
    tiny_vit(&v);
    struct emoe_moe_config c, c2;
    tiny_moe(&c, EMOE_ROUTER_SOFTMAX);
    c.top_k = 2;
    c.tau = 0.25f;
    c.patches_only = 0;
    strcpy(c.blocks, "every2");
    struct emoe_moe *moe;
    struct emoe_model *m = model_with(&c, &v, &moe);
    struct emoe_moe_meta meta;
    size_t n;
    ck_assert_int_eq(emoe_moe_metadata(&c, v.depth, &meta, &n, &err), EMOE_OK);
    ck_assert_uint_eq(n, 8);
    const char *path = tu_tmppath("moe.safetensors");
    int rc = emoe_checkpoint_save(m, path, meta.kv, n, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    rc = emoe_moe_config_from_checkpoint(path, &c2, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    ck_assert_int_eq(c2.router, EMOE_ROUTER_SOFTMAX);
    ck_assert_int_eq(c2.experts, 3);
    ck_assert_int_eq(c2.bottleneck, 8);
    ck_assert_int_eq(c2.top_k, 2);
    ck_assert(c2.tau == 0.25f);
    ck_assert_int_eq(c2.patches_only, 0);
    ck_assert_str_eq(c2.blocks, "1");
    /* and the weights come back into a second model */
    struct emoe_moe *moe2;
    struct emoe_model *m2 = model_with(&c2, &v, &moe2);
    rc = emoe_checkpoint_load(m2, path, 0, NULL, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    struct emoe_param *a = emoe_model_param(m, "branches.1.router.weight"),
                      *b = emoe_model_param(m2, "branches.1.router.weight");
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert(memcmp(a->data, b->data, a->numel * sizeof(float)) == 0);
    emoe_moe_free(moe2);
    emoe_model_free(m2);
    /* no branches: router none */
    struct emoe_model *m3;
    ck_assert_int_eq(emoe_model_new(&v, NULL, 0, &m3, &err), EMOE_OK);
    path = tu_tmppath("plain.safetensors");
    ck_assert_int_eq(emoe_checkpoint_save(m3, path, NULL, 0, &err), EMOE_OK);
    ck_assert_int_eq(emoe_moe_config_from_checkpoint(path, &c2, &err), EMOE_OK);
    ck_assert_int_eq(c2.router, EMOE_ROUTER_NONE);
    emoe_model_free(m3);
    emoe_moe_free(moe);
    emoe_model_free(m);
}
END_TEST

START_TEST(test_moe_frozen_backbone)
{
    struct emoe_error err = {0};
    struct emoe_vit_config v;
    tiny_vit(&v);
    struct emoe_moe_config c;
    tiny_moe(&c, EMOE_ROUTER_EIGEN);
    strcpy(c.blocks, "0,2");
    struct emoe_moe *moe;
    struct emoe_model *m = model_with(&c, &v, &moe);
    size_t count = 0;
    /* the reference recipe: freeze vit.* after the branches exist (grads move) */
    ck_assert_int_eq(emoe_model_set_trainable(m, "vit.*", 0, &count, &err), EMOE_OK);
    ck_assert_uint_gt(count, 0);
    enum { B = 2 };
    unsigned char img[B * 8 * 8 * 3];
    for (size_t i = 0; i < sizeof img; i++)
        img[i] = (unsigned char)(i * 29 % 253);
    int32_t y[B] = {1, 2};
    emoe_model_zero_grad(m);
    ck_assert_int_eq(emoe_model_forward(m, img, EMOE_U8, B, 1, &err), EMOE_OK);
    double loss;
    ck_assert_int_eq(emoe_model_loss(m, y, 0.0f, NULL, &loss, NULL, &err), EMOE_OK);
    ck_assert_int_eq(emoe_model_backward(m, &err), EMOE_OK);
    const char *names[] = {"branches.0.alpha", "branches.0.router.gamma",
                           "branches.0.router.masks", "branches.0.router.basis.Q",
                           "branches.2.router.basis.Q"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        struct emoe_param *p = emoe_model_param(m, names[i]);
        ck_assert_ptr_nonnull(p);
        ck_assert_ptr_nonnull(p->grad);
        double s = 0;
        for (size_t j = 0; j < p->numel; j++)
            s += fabs(p->grad[j]);
        ck_assert_msg(s > 0, "%s has no gradient", names[i]);
    }
    ck_assert_ptr_null(emoe_model_param(m, "vit.pos_embed")->grad);
    /* A branch after the last block changes only patch tokens, which the head never
     * reads: its task gradient is exactly 0 (only the ortho penalty reaches Q). */
    ck_assert(emoe_model_param(m, "branches.2.alpha")->grad[0] == 0.0f);
    emoe_moe_free(moe);
    emoe_model_free(m);
}
END_TEST

static Suite *moe_suite(void)
{
    Suite *s = suite_create("moe");
    TCase *core = tcase_create("core");
    tcase_add_test(core, test_moe_parse_blocks);
    tcase_add_test(core, test_moe_parse_blocks_rejects);
    tcase_add_test(core, test_moe_config_check);
    tcase_add_test(core, test_moe_routing_summary);
    tcase_add_test(core, test_moe_branch_stats_count_tokens);
    tcase_add_test(core, test_moe_softmax_noise_by_forward);
    tcase_add_test(core, test_moe_eigenbasis_from_data);
    suite_add_tcase(s, core);
    TCase *model = tcase_create("model");
    tcase_set_timeout(model, 120);
    tcase_add_test(model, test_moe_param_specs_names);
    tcase_add_test(model, test_moe_new_needs_params);
    tcase_add_test(model, test_moe_model_fd_eigen);
    tcase_add_test(model, test_moe_model_fd_eigen_soft);
    tcase_add_test(model, test_moe_model_fd_softmax);
    tcase_add_test(model, test_moe_model_fd_ermoe);
    tcase_add_test(model, test_moe_model_stats);
    tcase_add_test(model, test_moe_model_eigenbasis_from_data);
    tcase_add_test(model, test_moe_model_eigenbasis_refresh);
    tcase_add_test(model, test_moe_reference_state_dict_loads);
    tcase_add_test(model, test_moe_checkpoint_metadata_roundtrip);
    tcase_add_test(model, test_moe_frozen_backbone);
    suite_add_tcase(s, model);
    return s;
}

int main(void)
{
    return tu_run(moe_suite());
}
