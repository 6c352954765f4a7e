/*
 * check_router.c: unit tests of the routers and the branch (lib/router_*.c,
 * lib/moe.c): finite differences through every router and mode (top-k checked
 * away from ties: a coordinate whose perturbation changes a choice is skipped),
 * the sparse execution against a dense loop, the QR retraction, and the golden
 * fixtures made with PyTorch by tests/gen_fixtures_moe.py.
 */
#include "config.h"
#include "testutil.h"
#include "router.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------- helpers */

/* The slot of a branch parameter by name (the library's lookup is not exported). */
static struct moe_slot *find_slot(struct emoe_moe_branch *b, const char *name)
{
    for (size_t i = 0; i < b->nslots; i++)
        if (strcmp(b->slots[i].name, name) == 0)
            return &b->slots[i];
    ck_abort_msg("no parameter '%s'", name);
    return NULL;
}

static void fill_normal(float *x, size_t n, struct emoe_rng *r, float scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = scale * emoe_rng_normal(r);
}

struct fd_case {
    struct emoe_moe_branch *b;
    float *x0, *x, *R;
    int B, T, D, train;
    struct emoe_rng rng0;   /* noise stream restored before every forward */
    int32_t *choice0;
    size_t nchoice;
};

static double fd_loss(struct fd_case *c, int *same_choices)
{
    struct emoe_error err = {0};
    size_t n = (size_t)c->B * c->T * c->D;
    memcpy(c->x, c->x0, n * sizeof *c->x);
    c->b->rng = c->rng0;
    int rc = emoe_moe_branch_forward(c->b, c->x, c->B, c->T, c->D, c->train, &err);
    ck_assert_msg(rc == EMOE_OK, "forward: %s", err.msg);
    double L = emoe_moe_branch_extra_loss(c->b);
    for (size_t i = 0; i < n; i++)
        L += (double)c->x[i] * c->R[i];
    if (same_choices)
        *same_choices = memcmp(c->choice0, c->b->choice, c->nchoice * sizeof(int32_t)) == 0;
    return L;
}

static int close_enough(double a, double f, double atol, double rtol)
{
    double m = fabs(a) > fabs(f) ? fabs(a) : fabs(f);
    return fabs(a - f) <= atol + rtol * m;
}

/* Checks d(sum(y R) + extra) against central differences for the input and up to
 * `per` coordinates of every parameter. */
static void fd_check(const struct emoe_moe_config *cfg, int B, int T, int D, int train,
                     uint64_t seed, int per)
{
    struct emoe_error err = {0};
    struct fd_case c = {0};
    int rc = emoe_moe_branch_new(cfg, D, 3, &c.b, &err);
    ck_assert_msg(rc == EMOE_OK, "new: %s", err.msg);
    struct emoe_rng r;
    emoe_rng_init(&r, seed, 1);
    size_t n = (size_t)B * T * D;
    c.x0 = malloc(n * sizeof(float));
    c.x = malloc(n * sizeof(float));
    c.R = malloc(n * sizeof(float));
    float *dx = malloc(n * sizeof(float));
    fill_normal(c.x0, n, &r, 1.0f);
    fill_normal(c.R, n, &r, 1.0f);
    c.B = B;
    c.T = T;
    c.D = D;
    c.train = train;
    /* Make every parameter generic: bases slightly off orthonormal (so the ortho
     * penalty has a gradient), alpha and gamma away from 1. */
    for (size_t i = 0; i < emoe_moe_branch_param_count(c.b); i++) {
        float *data;
        int64_t shape[2];
        int nd;
        const char *name = emoe_moe_branch_param(c.b, i, &nd, shape, &data, NULL);
        size_t numel = nd == 0 ? 1 : (size_t)shape[0] * (nd == 2 ? (size_t)shape[1] : 1);
        float s = strstr(name, "basis") ? 0.05f : strstr(name, "bias") ? 0.3f : 0.1f;
        for (size_t j = 0; j < numel; j++)
            data[j] += s * emoe_rng_normal(&r);
    }
    c.rng0 = c.b->rng;
    /* analytic */
    emoe_moe_branch_zero_grad(c.b);
    memcpy(c.x, c.x0, n * sizeof *c.x);
    rc = emoe_moe_branch_forward(c.b, c.x, B, T, D, train, &err);
    ck_assert_msg(rc == EMOE_OK, "forward: %s", err.msg);
    int k;
    emoe_moe_branch_choices(c.b, &k);
    c.nchoice = (size_t)c.b->N * k;
    c.choice0 = malloc(c.nchoice * sizeof(int32_t));
    memcpy(c.choice0, c.b->choice, c.nchoice * sizeof(int32_t));
    memcpy(dx, c.R, n * sizeof *dx);
    rc = emoe_moe_branch_backward(c.b, dx, B, T, D, &err);
    ck_assert_msg(rc == EMOE_OK, "backward: %s", err.msg);

    const double eps = 4e-3, atol = 3e-4, rtol = 2e-2;
    int checked = 0, skipped = 0;
    for (int t = 0; t < per * 2; t++) {
        size_t i = emoe_rng_below(&r, (uint32_t)n);
        float v = c.x0[i];
        int s1, s2;
        c.x0[i] = v + (float)eps;
        double lp = fd_loss(&c, &s1);
        c.x0[i] = v - (float)eps;
        double lm = fd_loss(&c, &s2);
        c.x0[i] = v;
        if (!s1 || !s2) {
            skipped++;
            continue;
        }
        double f = (lp - lm) / (2 * eps);
        ck_assert_msg(close_enough(dx[i], f, atol, rtol), "%s: dx[%zu] %g, fd %g",
                      c.b->ops->name, i, (double)dx[i], f);
        checked++;
    }
    for (size_t p = 0; p < emoe_moe_branch_param_count(c.b); p++) {
        float *data, *grad;
        int64_t shape[2];
        int nd;
        const char *name = emoe_moe_branch_param(c.b, p, &nd, shape, &data, &grad);
        size_t numel = nd == 0 ? 1 : (size_t)shape[0] * (nd == 2 ? (size_t)shape[1] : 1);
        int m = (size_t)per < numel ? per : (int)numel;
        for (int t = 0; t < m; t++) {
            size_t i = (size_t)per < numel ? emoe_rng_below(&r, (uint32_t)numel) : (size_t)t;
            float v = data[i];
            int s1, s2;
            data[i] = v + (float)eps;
            double lp = fd_loss(&c, &s1);
            data[i] = v - (float)eps;
            double lm = fd_loss(&c, &s2);
            data[i] = v;
            if (!s1 || !s2) {
                skipped++;
                continue;
            }
            double f = (lp - lm) / (2 * eps);
            ck_assert_msg(close_enough(grad[i], f, atol, rtol), "%s: %s[%zu] grad %g, fd %g",
                          c.b->ops->name, name, i, (double)grad[i], f);
            checked++;
        }
    }
    ck_assert_msg(checked > 10 * skipped, "%d checked, %d skipped (ties)", checked, skipped);
    free(c.x0);
    free(c.x);
    free(c.R);
    free(dx);
    free(c.choice0);
    emoe_moe_branch_free(c.b);
}

static void small_config(struct emoe_moe_config *c, enum emoe_router_kind k, int top_k)
{
    emoe_moe_config_init(c);
    c->router = k;
    c->experts = 4;
    c->rank = 5;
    c->bottleneck = 7;
    c->top_k = top_k;
    c->tau = 0.8f;
    c->alpha = 0.9f;
    c->lambda_ortho = 0.05f;
    c->seed = 42;
}

/* --------------------------------------------------- finite differences */

START_TEST(test_router_eigen_fd_top1)
{
    struct emoe_moe_config c;
    small_config(&c, EMOE_ROUTER_EIGEN, 1);
    fd_check(&c, 3, 7, 12, 0, 1, 12);
}
END_TEST

START_TEST(test_router_eigen_fd_top2)
{
    struct emoe_moe_config c;
    small_config(&c, EMOE_ROUTER_EIGEN, 2);
    fd_check(&c, 3, 7, 12, 0, 2, 12);
}
END_TEST

START_TEST(test_router_eigen_fd_soft)
{
    struct emoe_moe_config c;
    small_config(&c, EMOE_ROUTER_EIGEN, 0);
    fd_check(&c, 2, 6, 12, 0, 3, 12);
}
END_TEST

START_TEST(test_router_eigen_fd_all_tokens)
{
    struct emoe_moe_config c;
    small_config(&c, EMOE_ROUTER_EIGEN, 1);
    c.patches_only = 0;
    fd_check(&c, 2, 5, 10, 0, 4, 10);
}
END_TEST

START_TEST(test_router_softmax_fd)
{
    struct emoe_moe_config c;
    small_config(&c, EMOE_ROUTER_SOFTMAX, 1);
    fd_check(&c, 3, 7, 12, 0, 5, 12);
    c.top_k = 2;
    fd_check(&c, 3, 7, 12, 0, 6, 12);
}
END_TEST

START_TEST(test_router_softmax_fd_losses)
{
    struct emoe_moe_config c;
    small_config(&c, EMOE_ROUTER_SOFTMAX, 1);
    c.switch_loss = 0.5f;
    c.importance_loss = 0.5f;
    c.z_loss = 0.1f;
    fd_check(&c, 3, 7, 12, 0, 7, 12);
    /* noise and the load loss need training mode; the noise is replayed */
    c.noise = 1;
    c.load_loss = 0.5f;
    fd_check(&c, 3, 7, 12, 1, 8, 12);
    c.top_k = 2;
    fd_check(&c, 3, 7, 12, 1, 9, 12);
}
END_TEST

START_TEST(test_router_softmax_fd_capacity)
{
    struct emoe_moe_config c;
    small_config(&c, EMOE_ROUTER_SOFTMAX, 1);
    c.capacity = 0.5f;
    fd_check(&c, 3, 9, 12, 0, 10, 12);
}
END_TEST

START_TEST(test_router_ermoe_fd)
{
    struct emoe_moe_config c;
    small_config(&c, EMOE_ROUTER_ERMOE, 1);
    fd_check(&c, 3, 7, 12, 0, 11, 10);
    c.top_k = 2;
    fd_check(&c, 3, 7, 12, 0, 12, 10);
    c.top_k = 0;
    fd_check(&c, 2, 5, 12, 0, 13, 10);
    c.top_k = 1;
    c.threshold = 0.5f;
    fd_check(&c, 3, 7, 12, 0, 14, 10);
}
END_TEST

/* ERMoE threshold: an expert with c_e < T is not chosen unless none is eligible. */
START_TEST(test_router_ermoe_threshold_eligibility)
{
    struct emoe_error err = {0};
    struct emoe_moe_config c;
    small_config(&c, EMOE_ROUTER_ERMOE, 2);
    c.experts = 5;
    c.rank = 3;
    enum { B = 4, T = 9, D = 12, E = 5, R = 3 };
    struct emoe_moe_branch *b;
    ck_assert_int_eq(emoe_moe_branch_new(&c, D, 0, &b, &err), EMOE_OK);
    float x[B * T * D], x0[B * T * D];
    struct emoe_rng r;
    emoe_rng_init(&r, 4, 4);
    fill_normal(x0, B * T * D, &r, 1.0f);
    /* the cosines c_e(h) of every patch token, computed here */
    static double cs[B * (T - 1)][E];
    double all[B * (T - 1) * E];
    int m = 0;
    for (int n = 0; n < B * (T - 1); n++) {
        const float *h = x0 + ((size_t)(n / (T - 1)) * T + 1 + n % (T - 1)) * D;
        double hn = 0;
        for (int i = 0; i < D; i++)
            hn += (double)h[i] * h[i];
        for (int e = 0; e < E; e++) {
            char name[32];
            snprintf(name, sizeof name, "experts.%d.basis", e);
            const float *bs = find_slot(b, name)->data;
            double a2 = 0;
            for (int j = 0; j < R; j++) {
                double t = 0;
                for (int i = 0; i < D; i++)
                    t += (double)bs[i * R + j] * h[i];
                a2 += t * t;
            }
            cs[n][e] = sqrt(a2) / (sqrt(hn) + 1e-6);
            all[m++] = cs[n][e];
        }
    }
    /* threshold: the 70th percentile, so tokens have 0, 1 or more eligible experts */
    for (int i = 0; i < m; i++)
        for (int j = i + 1; j < m; j++)
            if (all[j] < all[i]) {
                double t = all[i];
                all[i] = all[j];
                all[j] = t;
            }
    b->cfg.threshold = (float)all[m * 7 / 10];
    memcpy(x, x0, sizeof x);
    ck_assert_int_eq(emoe_moe_branch_forward(b, x, B, T, D, 0, &err), EMOE_OK);
    int k, seen[3] = {0};
    const int32_t *ch = emoe_moe_branch_choices(b, &k);
    for (int n = 0; n < B * (T - 1); n++) {
        int nel = 0;
        for (int e = 0; e < E; e++)
            nel += cs[n][e] >= b->cfg.threshold + 1e-6;
        int amb = 0; /* within rounding of the threshold: skip */
        for (int e = 0; e < E; e++)
            amb |= fabs(cs[n][e] - b->cfg.threshold) < 1e-5;
        if (amb)
            continue;
        if (nel == 0) { /* nobody eligible: everyone is */
            ck_assert_int_ge(ch[n * 2], 0);
            ck_assert_int_ge(ch[n * 2 + 1], 0);
            seen[0]++;
        } else if (nel == 1) {
            ck_assert(cs[n][ch[n * 2]] >= b->cfg.threshold);
            ck_assert_int_eq(ch[n * 2 + 1], -1);
            seen[1]++;
        } else {
            ck_assert(cs[n][ch[n * 2]] >= b->cfg.threshold);
            ck_assert(cs[n][ch[n * 2 + 1]] >= b->cfg.threshold);
            seen[2]++;
        }
    }
    ck_assert_msg(seen[0] && seen[1] && seen[2], "cases %d %d %d", seen[0], seen[1], seen[2]);
    emoe_moe_branch_free(b);
}
END_TEST

/* ----------------------------------------------------- sparse vs dense */

static float gelu(float x)
{
    return 0.5f * x * (1.0f + erff(x * 0.70710678f));
}

/* expert e on h [D] into y [D], naive loops */
static void naive_expert(const struct emoe_moe_branch *b, int e, const float *h, float *y)
{
    int D = b->D, F = b->F;
    float *a = malloc((size_t)F * sizeof *a);
    for (int f = 0; f < F; f++) {
        double s = 0;
        for (int d = 0; d < D; d++)
            s += (double)b->down_w[e][(size_t)f * D + d] * h[d];
        a[f] = gelu((float)s);
    }
    for (int d = 0; d < D; d++) {
        double s = 0;
        for (int f = 0; f < F; f++)
            s += (double)b->up_w[e][(size_t)d * F + f] * a[f];
        y[d] = (float)s;
    }
    free(a);
}

static void sparse_matches_dense(enum emoe_router_kind kind, int top_k, float capacity)
{
    struct emoe_error err = {0};
    struct emoe_moe_config c;
    small_config(&c, kind, top_k);
    c.capacity = capacity;
    struct emoe_moe_branch *b;
    ck_assert_int_eq(emoe_moe_branch_new(&c, 16, 0, &b, &err), EMOE_OK);
    int B = 4, T = 11, D = 16;
    size_t n = (size_t)B * T * D;
    float *x = malloc(n * sizeof *x), *x0 = malloc(n * sizeof *x0), *y = malloc(D * sizeof *y);
    struct emoe_rng r;
    emoe_rng_init(&r, 77, 0);
    fill_normal(x0, n, &r, 1.0f);
    memcpy(x, x0, n * sizeof *x);
    ck_assert_int_eq(emoe_moe_branch_forward(b, x, B, T, D, 0, &err), EMOE_OK);
    int N = emoe_moe_branch_tokens(b), k, E = c.experts;
    ck_assert_int_eq(N, B * (T - 1));
    const int32_t *ch = emoe_moe_branch_choices(b, &k);
    const float *p = emoe_moe_branch_probs(b);
    /* rows per expert == the accepted choices of that expert; A <= N k */
    int64_t accepted = 0;
    for (int e = 0; e < E; e++) {
        int64_t rows = b->offset[e + 1] - b->offset[e], want = 0;
        for (int i = 0; i < N * k; i++)
            want += ch[i] == e && b->row[i] >= 0;
        ck_assert_int_eq(rows, want);
        accepted += rows;
        for (int64_t rr = b->offset[e]; rr < b->offset[e + 1]; rr++) {
            int tok = b->row_tok[rr], found = 0;
            for (int j = 0; j < k; j++)
                found |= ch[(size_t)tok * k + j] == e;
            ck_assert_msg(found, "expert %d ran on token %d that did not choose it", e, tok);
        }
    }
    ck_assert_int_eq(accepted, b->A);
    if (capacity > 0.0f)
        ck_assert_int_gt(b->dropped, 0);
    float alpha = b->slots[b->slot_alpha].data[0];
    for (int i = 0; i < B; i++) {
        /* the class token is unchanged */
        for (int d = 0; d < D; d++)
            ck_assert(x[(size_t)i * T * D + d] == x0[(size_t)i * T * D + d]);
        for (int t = 1; t < T; t++) {
            int tok = i * (T - 1) + t - 1;
            const float *h = x0 + ((size_t)i * T + t) * D;
            double want[64] = {0};
            for (int j = 0; j < k; j++) {
                int e = ch[(size_t)tok * k + j];
                if (e < 0 || b->row[(size_t)tok * k + j] < 0)
                    continue;
                naive_expert(b, e, h, y);
                for (int d = 0; d < D; d++)
                    want[d] += (double)p[(size_t)tok * E + e] * y[d];
            }
            for (int d = 0; d < D; d++) {
                float got = x[((size_t)i * T + t) * D + d];
                float w = (float)(h[d] + alpha * want[d]);
                ck_assert_msg(fabsf(got - w) < 1e-5f, "token %d dim %d: %g vs %g", tok, d,
                              (double)got, (double)w);
            }
        }
    }
    free(x);
    free(x0);
    free(y);
    emoe_moe_branch_free(b);
}

START_TEST(test_branch_sparse_matches_dense)
{
    sparse_matches_dense(EMOE_ROUTER_EIGEN, 1, 0.0f);
    sparse_matches_dense(EMOE_ROUTER_EIGEN, 2, 0.0f);
    sparse_matches_dense(EMOE_ROUTER_EIGEN, 0, 0.0f);
    sparse_matches_dense(EMOE_ROUTER_SOFTMAX, 1, 0.0f);
    sparse_matches_dense(EMOE_ROUTER_SOFTMAX, 2, 0.6f);
    sparse_matches_dense(EMOE_ROUTER_ERMOE, 1, 0.0f);
}
END_TEST

START_TEST(test_branch_top_k_ties_lowest_index)
{
    struct emoe_error err = {0};
    struct emoe_moe_config c;
    small_config(&c, EMOE_ROUTER_SOFTMAX, 2);
    struct emoe_moe_branch *b;
    ck_assert_int_eq(emoe_moe_branch_new(&c, 8, 0, &b, &err), EMOE_OK);
    float *w;
    ck_assert_str_eq(emoe_moe_branch_param(b, 1, NULL, NULL, &w, NULL), "router.weight");
    memset(w, 0, 4 * 8 * sizeof *w); /* equal logits: p = 1/4 each */
    float x[2 * 3 * 8];
    for (int i = 0; i < 48; i++)
        x[i] = (float)(i % 5) - 2.0f;
    ck_assert_int_eq(emoe_moe_branch_forward(b, x, 2, 3, 8, 0, &err), EMOE_OK);
    int k;
    const int32_t *ch = emoe_moe_branch_choices(b, &k);
    ck_assert_int_eq(k, 2);
    for (int n = 0; n < emoe_moe_branch_tokens(b); n++) {
        ck_assert_int_eq(ch[2 * n], 0);
        ck_assert_int_eq(ch[2 * n + 1], 1);
    }
    emoe_moe_branch_free(b);
}
END_TEST

START_TEST(test_branch_retraction_orthonormal)
{
    struct emoe_error err = {0};
    struct emoe_moe_config c;
    small_config(&c, EMOE_ROUTER_EIGEN, 1);
    c.rank = 9;
    struct emoe_moe_branch *b;
    ck_assert_int_eq(emoe_moe_branch_new(&c, 24, 0, &b, &err), EMOE_OK);
    struct moe_slot *q = find_slot(b, "router.basis.Q");
    struct emoe_rng r;
    emoe_rng_init(&r, 5, 0);
    fill_normal(q->data, q->numel, &r, 1.0f); /* far from orthonormal */
    float x[2 * 4 * 24];
    fill_normal(x, 2 * 4 * 24, &r, 1.0f);
    ck_assert_int_eq(emoe_moe_branch_forward(b, x, 2, 4, 24, 1, &err), EMOE_OK);
    for (int i = 0; i < 9; i++)
        for (int j = 0; j < 9; j++) {
            double s = 0;
            for (int d = 0; d < 24; d++)
                s += (double)q->data[d * 9 + i] * q->data[d * 9 + j];
            ck_assert_msg(fabs(s - (i == j)) < 1e-5, "Q^T Q [%d, %d] = %g", i, j, s);
        }
    /* the extra loss after retraction is ~0 */
    ck_assert(emoe_moe_branch_extra_loss(b) < 1e-8);
    q->data[3] = NAN;
    tu_assert_error(emoe_moe_branch_forward(b, x, 2, 4, 24, 1, &err), err, EMOE_ENUMERIC,
                    "not finite");
    emoe_moe_branch_free(b);
}
END_TEST

/* ------------------------------------------------------- loss terms */

/* The terms of the extra loss sum to it (in the order the routers add them: ortho;
 * z, importance, load, then Switch after the selection). */
static void assert_terms_sum(const struct emoe_moe_branch *b)
{
    static const enum emoe_loss_term order[] = {EMOE_LOSS_ORTHO, EMOE_LOSS_Z,
                                                EMOE_LOSS_IMPORTANCE, EMOE_LOSS_LOAD,
                                                EMOE_LOSS_SWITCH};
    double s = 0.0;
    for (size_t i = 0; i < sizeof order / sizeof *order; i++)
        s += emoe_moe_branch_loss_term(b, order[i]);
    ck_assert_msg(s == emoe_moe_branch_extra_loss(b), "terms sum to %.17g, extra %.17g", s,
                  emoe_moe_branch_extra_loss(b));
}

/* ||Q^T Q - I||_F^2 in double, Q [M, R]. */
static double ortho_penalty_ref(const float *q, int M, int R)
{
    double s = 0.0;
    for (int i = 0; i < R; i++)
        for (int j = 0; j < R; j++) {
            double g = 0.0;
            for (int d = 0; d < M; d++)
                g += (double)q[d * R + i] * q[d * R + j];
            g -= i == j;
            s += g * g;
        }
    return s;
}

START_TEST(test_loss_terms_names)
{
    static const char *names[EMOE_LOSS_TERMS] = {"ortho_loss", "lbl_loss", "importance_loss",
                                                 "load_loss", "z_loss"};
    for (int t = 0; t < EMOE_LOSS_TERMS; t++) {
        ck_assert_str_eq(emoe_loss_term_name((enum emoe_loss_term)t), names[t]);
        ck_assert_ptr_nonnull(emoe_loss_term_description((enum emoe_loss_term)t));
    }
    ck_assert_ptr_null(emoe_loss_term_name((enum emoe_loss_term)EMOE_LOSS_TERMS));
    ck_assert_ptr_null(emoe_loss_term_description((enum emoe_loss_term)-1));
    struct emoe_moe_config c;
    small_config(&c, EMOE_ROUTER_EIGEN, 1);
    ck_assert(emoe_loss_term_active(&c, EMOE_LOSS_ORTHO));
    c.switch_loss = 0.01f; /* not the eigen router's */
    ck_assert(!emoe_loss_term_active(&c, EMOE_LOSS_SWITCH));
    c.lambda_ortho = 0.0f;
    ck_assert(!emoe_loss_term_active(&c, EMOE_LOSS_ORTHO));
    small_config(&c, EMOE_ROUTER_ERMOE, 1);
    ck_assert(emoe_loss_term_active(&c, EMOE_LOSS_ORTHO));
    small_config(&c, EMOE_ROUTER_SOFTMAX, 1);
    for (int t = 0; t < EMOE_LOSS_TERMS; t++)
        ck_assert(!emoe_loss_term_active(&c, (enum emoe_loss_term)t));
    c.switch_loss = c.importance_loss = c.load_loss = c.z_loss = 0.5f;
    ck_assert(!emoe_loss_term_active(&c, EMOE_LOSS_ORTHO));
    for (int t = EMOE_LOSS_SWITCH; t < EMOE_LOSS_TERMS; t++)
        ck_assert(emoe_loss_term_active(&c, (enum emoe_loss_term)t));
    c.router = EMOE_ROUTER_NONE;
    for (int t = 0; t < EMOE_LOSS_TERMS; t++)
        ck_assert(!emoe_loss_term_active(&c, (enum emoe_loss_term)t));
}
END_TEST

START_TEST(test_loss_terms_eigen)
{
    struct emoe_error err = {0};
    struct emoe_moe_config c;
    small_config(&c, EMOE_ROUTER_EIGEN, 1);
    int D = 12;
    struct emoe_moe_branch *b;
    ck_assert_int_eq(emoe_moe_branch_new(&c, D, 0, &b, &err), EMOE_OK);
    struct moe_slot *q = find_slot(b, "router.basis.Q"), *p = find_slot(b, "router.basis.P");
    struct emoe_rng r;
    emoe_rng_init(&r, 11, 0);
    fill_normal(q->data, q->numel, &r, 0.5f); /* not orthonormal: a visible penalty */
    fill_normal(p->data, p->numel, &r, 0.3f);
    float x[2 * 5 * 12];
    fill_normal(x, 2 * 5 * 12, &r, 1.0f);
    /* evaluation: no retraction, the penalty of Q and P as they are */
    ck_assert_int_eq(emoe_moe_branch_forward(b, x, 2, 5, D, 0, &err), EMOE_OK);
    double want = (double)c.lambda_ortho *
                  (ortho_penalty_ref(q->data, D, c.rank) + ortho_penalty_ref(p->data, D, c.rank));
    double got = emoe_moe_branch_loss_term(b, EMOE_LOSS_ORTHO);
    ck_assert_msg(want > 1e-3 && close_enough(got, want, 0, 1e-5), "ortho %.9g, want %.9g",
                  got, want);
    for (int t = EMOE_LOSS_SWITCH; t < EMOE_LOSS_TERMS; t++)
        ck_assert(emoe_moe_branch_loss_term(b, (enum emoe_loss_term)t) == 0.0);
    ck_assert(emoe_moe_branch_loss_term(b, (enum emoe_loss_term)EMOE_LOSS_TERMS) == 0.0);
    assert_terms_sum(b);
    /* a non-finite term is named */
    q->data[3] = NAN;
    tu_assert_error(emoe_moe_branch_forward(b, x, 2, 5, D, 0, &err), err, EMOE_ENUMERIC,
                    "branch 0: the orthonormality loss is not finite");
    emoe_moe_branch_free(b);
}
END_TEST

/* The softmax router's z, importance and Switch terms from the branch input, the
 * router weight and the probabilities, in double (no noise: evaluation mode). */
START_TEST(test_loss_terms_softmax)
{
    struct emoe_error err = {0};
    struct emoe_moe_config c;
    small_config(&c, EMOE_ROUTER_SOFTMAX, 1);
    c.switch_loss = 0.5f;
    c.importance_loss = 0.25f;
    c.z_loss = 0.1f;
    int D = 12, E = c.experts;
    struct emoe_moe_branch *b;
    ck_assert_int_eq(emoe_moe_branch_new(&c, D, 2, &b, &err), EMOE_OK);
    struct emoe_rng r;
    emoe_rng_init(&r, 12, 0);
    float x[3 * 7 * 12];
    fill_normal(x, 3 * 7 * 12, &r, 1.0f);
    ck_assert_int_eq(emoe_moe_branch_forward(b, x, 3, 7, D, 0, &err), EMOE_OK);
    const float *W = find_slot(b, "router.weight")->data;
    int N = b->N;
    ck_assert_int_eq(N, 3 * 6); /* the class tokens are not routed */
    double zl = 0.0, f[4] = {0}, P[4] = {0}, imp[4] = {0};
    for (int n = 0; n < N; n++) {
        double l[4], mx = -INFINITY, t = 0.0, pr[4];
        int top = 0;
        for (int e = 0; e < E; e++) {
            l[e] = 0.0;
            for (int d = 0; d < D; d++)
                l[e] += (double)b->h[(size_t)n * D + d] * W[e * D + d];
            mx = l[e] > mx ? l[e] : mx;
        }
        for (int e = 0; e < E; e++)
            t += exp(l[e] - mx);
        zl += (mx + log(t)) * (mx + log(t));
        for (int e = 0; e < E; e++) {
            pr[e] = exp(l[e] - mx) / t;
            top = pr[e] > pr[top] ? e : top;
            P[e] += pr[e] / N;
            imp[e] += pr[e];
        }
        f[top] += 1.0 / N;
    }
    double sw = 0.0, mean = 0.0, var = 0.0;
    for (int e = 0; e < E; e++) {
        sw += f[e] * P[e];
        mean += imp[e] / E;
    }
    for (int e = 0; e < E; e++)
        var += (imp[e] - mean) * (imp[e] - mean) / E;
    double want_z = c.z_loss * zl / N, want_sw = (double)c.switch_loss * E * sw,
           want_imp = c.importance_loss * var / (mean * mean);
    double got_z = emoe_moe_branch_loss_term(b, EMOE_LOSS_Z),
           got_sw = emoe_moe_branch_loss_term(b, EMOE_LOSS_SWITCH),
           got_imp = emoe_moe_branch_loss_term(b, EMOE_LOSS_IMPORTANCE);
    ck_assert_msg(want_z > 0 && close_enough(got_z, want_z, 0, 1e-5), "z %.9g, want %.9g",
                  got_z, want_z);
    ck_assert_msg(want_sw > 0 && close_enough(got_sw, want_sw, 0, 1e-5),
                  "switch %.9g, want %.9g", got_sw, want_sw);
    ck_assert_msg(want_imp > 0 && close_enough(got_imp, want_imp, 1e-9, 1e-4),
                  "importance %.9g, want %.9g", got_imp, want_imp);
    ck_assert(emoe_moe_branch_loss_term(b, EMOE_LOSS_ORTHO) == 0.0);
    ck_assert(emoe_moe_branch_loss_term(b, EMOE_LOSS_LOAD) == 0.0);
    assert_terms_sum(b);
    emoe_moe_branch_free(b);
    /* training with noise: the load term is there too, and all still sum */
    c.noise = 1;
    c.load_loss = 0.5f;
    c.top_k = 2;
    ck_assert_int_eq(emoe_moe_branch_new(&c, D, 2, &b, &err), EMOE_OK);
    ck_assert_int_eq(emoe_moe_branch_forward(b, x, 3, 7, D, 1, &err), EMOE_OK);
    for (int t = EMOE_LOSS_SWITCH; t < EMOE_LOSS_TERMS; t++)
        ck_assert_msg(emoe_moe_branch_loss_term(b, (enum emoe_loss_term)t) > 0.0, "%s is 0",
                      emoe_loss_term_name((enum emoe_loss_term)t));
    assert_terms_sum(b);
    emoe_moe_branch_free(b);
}
END_TEST

/* The same results run after run for a given thread count (chunked loops, fixed
 * summation order).  Across thread counts results may differ in the last bits:
 * OpenBLAS's sgemm itself does on this machine (1 vs 2 threads). */
static void run_threads(int threads, enum emoe_router_kind kind, float *out, float *grads,
                        size_t *ng)
{
    struct emoe_error err = {0};
    emoe_threads_set(threads);
    struct emoe_moe_config c;
    small_config(&c, kind, 2);
    c.experts = 6;
    c.rank = 8;
    c.bottleneck = 24;
    struct emoe_moe_branch *b;
    ck_assert_int_eq(emoe_moe_branch_new(&c, 64, 0, &b, &err), EMOE_OK);
    enum { B = 16, T = 65, D = 64 };
    size_t n = (size_t)B * T * D;
    struct emoe_rng r;
    emoe_rng_init(&r, 8, 8);
    fill_normal(out, n, &r, 1.0f);
    ck_assert_int_eq(emoe_moe_branch_forward(b, out, B, T, D, 1, &err), EMOE_OK);
    float *dx = out + n;
    fill_normal(dx, n, &r, 1.0f);
    emoe_moe_branch_zero_grad(b);
    ck_assert_int_eq(emoe_moe_branch_backward(b, dx, B, T, D, &err), EMOE_OK);
    *ng = 0;
    for (size_t i = 0; i < emoe_moe_branch_param_count(b); i++) {
        float *g;
        int nd;
        int64_t sh[2];
        emoe_moe_branch_param(b, i, &nd, sh, NULL, &g);
        size_t numel = nd == 0 ? 1 : (size_t)sh[0] * (nd == 2 ? (size_t)sh[1] : 1);
        memcpy(grads + *ng, g, numel * sizeof *g);
        *ng += numel;
    }
    emoe_moe_branch_free(b);
}

START_TEST(test_branch_deterministic)
{
    enum { n = 16 * 65 * 64 };
    enum emoe_router_kind kinds[3] = {EMOE_ROUTER_EIGEN, EMOE_ROUTER_SOFTMAX,
                                      EMOE_ROUTER_ERMOE};
    float *o1 = malloc(2 * n * sizeof *o1), *o2 = malloc(2 * n * sizeof *o2);
    float *g1 = malloc(200000 * sizeof *g1), *g2 = malloc(200000 * sizeof *g2);
    for (int k = 0; k < 6; k++) {
        size_t n1, n2;
        int threads = 1 + k / 3;
        run_threads(threads, kinds[k % 3], o1, g1, &n1);
        run_threads(threads, kinds[k % 3], o2, g2, &n2);
        ck_assert_uint_eq(n1, n2);
        ck_assert_msg(memcmp(o1, o2, 2 * n * sizeof *o1) == 0, "%s, %d threads: outputs differ",
                      emoe_router_name(kinds[k % 3]), threads);
        ck_assert_msg(memcmp(g1, g2, n1 * sizeof *g1) == 0,
                      "%s, %d threads: gradients differ", emoe_router_name(kinds[k % 3]),
                      threads);
    }
    emoe_threads_set(0);
    free(o1);
    free(o2);
    free(g1);
    free(g2);
}
END_TEST

/* --------------------------------------------------------- golden files */

struct fixture {
    int n;
    char name[64][64];
    int ndim[64];
    int shape[64][4];
    size_t numel[64];
    float *data[64];
    void *raw;
};

static void fixture_load(struct fixture *f, const char *file)
{
    size_t size;
    unsigned char *p = tu_read_file(tu_fixture(file), &size), *e = p + size, *q = p;
    memset(f, 0, sizeof *f);
    f->raw = p;
    ck_assert(size > 12 && memcmp(p, "EMOEFIX1", 8) == 0);
    q += 8;
    uint32_t cnt;
    memcpy(&cnt, q, 4);
    q += 4;
    ck_assert(cnt <= 64);
    for (uint32_t i = 0; i < cnt; i++) {
        uint32_t len, nd;
        ck_assert(q + 4 <= e);
        memcpy(&len, q, 4);
        q += 4;
        ck_assert(len < 64 && q + len + 4 <= e);
        memcpy(f->name[i], q, len);
        q += len;
        memcpy(&nd, q, 4);
        q += 4;
        ck_assert(nd <= 4 && q + 4 * nd <= e);
        size_t numel = 1;
        for (uint32_t d = 0; d < nd; d++) {
            uint32_t v;
            memcpy(&v, q, 4);
            q += 4;
            f->shape[i][d] = (int)v;
            numel *= v;
        }
        ck_assert(q + 4 * numel <= e);
        f->ndim[i] = (int)nd;
        f->numel[i] = numel;
        f->data[i] = malloc((numel ? numel : 1) * sizeof(float));
        memcpy(f->data[i], q, 4 * numel);
        q += 4 * numel;
    }
    f->n = (int)cnt;
}

static const float *fixture_get(struct fixture *f, const char *name, size_t *numel)
{
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->name[i], name) == 0) {
            if (numel)
                *numel = f->numel[i];
            return f->data[i];
        }
    ck_abort_msg("fixture record '%s' missing", name);
    return NULL;
}

static void fixture_free(struct fixture *f)
{
    for (int i = 0; i < f->n; i++)
        free(f->data[i]);
    free(f->raw);
}

static void golden(const char *file)
{
    struct emoe_error err = {0};
    struct fixture f;
    fixture_load(&f, file);
    const float *cfgv = fixture_get(&f, "cfg", NULL);
    struct emoe_moe_config c;
    emoe_moe_config_init(&c);
    c.experts = (int)cfgv[0];
    c.rank = (int)cfgv[1];
    c.bottleneck = (int)cfgv[2];
    c.top_k = (int)cfgv[3];
    c.tau = cfgv[4];
    c.alpha = cfgv[5];
    c.lambda_ortho = cfgv[6];
    int train = cfgv[7] != 0.0f;
    c.patches_only = cfgv[8] != 0.0f;
    int xi = -1;
    for (int i = 0; i < f.n; i++)
        if (!strcmp(f.name[i], "x"))
            xi = i;
    int B = f.shape[xi][0], T = f.shape[xi][1], D = f.shape[xi][2];
    struct emoe_moe_branch *b;
    ck_assert_int_eq(emoe_moe_branch_new(&c, D, 0, &b, &err), EMOE_OK);
    char key[128];
    for (size_t i = 0; i < emoe_moe_branch_param_count(b); i++) {
        float *data;
        const char *name = emoe_moe_branch_param(b, i, NULL, NULL, &data, NULL);
        size_t numel;
        snprintf(key, sizeof key, "param/%s", name);
        const float *v = fixture_get(&f, key, &numel);
        ck_assert_uint_eq(numel, b->slots[i].numel);
        memcpy(data, v, numel * sizeof *data);
    }
    size_t n = (size_t)B * T * D;
    float *x = malloc(n * sizeof *x);
    memcpy(x, fixture_get(&f, "x", NULL), n * sizeof *x);
    emoe_moe_branch_zero_grad(b);
    ck_assert_int_eq(emoe_moe_branch_forward(b, x, B, T, D, train, &err), EMOE_OK);
    const float *y = fixture_get(&f, "y", NULL);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabsf(x[i] - y[i]) <= 1e-4f, "%s: y[%zu] %g, torch %g", file, i,
                      (double)x[i], (double)y[i]);
    size_t nt;
    const float *top1 = fixture_get(&f, "top1", &nt);
    ck_assert_uint_eq(nt, (size_t)emoe_moe_branch_tokens(b));
    const int32_t *t1 = emoe_moe_branch_top1(b);
    for (size_t i = 0; i < nt; i++)
        ck_assert_int_eq(t1[i], (int)top1[i]);
    double extra = fixture_get(&f, "extra", NULL)[0];
    ck_assert_msg(fabs(emoe_moe_branch_extra_loss(b) - extra) <= 1e-4 + 1e-3 * fabs(extra),
                  "%s: extra %g, torch %g", file, emoe_moe_branch_extra_loss(b), extra);
    /* Q and P after the (training) retraction: same QR algorithm, same signs */
    const char *qp[2][2] = {{"router.basis.Q", "Q_after"}, {"router.basis.P", "P_after"}};
    for (int w = 0; w < 2; w++) {
        struct moe_slot *s = find_slot(b, qp[w][0]);
        const float *want = fixture_get(&f, qp[w][1], NULL);
        for (size_t i = 0; i < s->numel; i++)
            ck_assert_msg(fabsf(s->data[i] - want[i]) <= 1e-5f, "%s: %s[%zu] %g, torch %g", file,
                          qp[w][0], i, (double)s->data[i], (double)want[i]);
    }
    memcpy(x, fixture_get(&f, "R", NULL), n * sizeof *x);
    ck_assert_int_eq(emoe_moe_branch_backward(b, x, B, T, D, &err), EMOE_OK);
    const float *dx = fixture_get(&f, "dx", NULL);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabsf(x[i] - dx[i]) <= 1e-3f, "%s: dx[%zu] %g, torch %g", file, i,
                      (double)x[i], (double)dx[i]);
    for (size_t i = 0; i < emoe_moe_branch_param_count(b); i++) {
        float *grad;
        const char *name = emoe_moe_branch_param(b, i, NULL, NULL, NULL, &grad);
        size_t numel;
        snprintf(key, sizeof key, "grad/%s", name);
        const float *g = fixture_get(&f, key, &numel);
        for (size_t j = 0; j < numel; j++)
            ck_assert_msg(fabsf(grad[j] - g[j]) <= 1e-3f * (1.0f + fabsf(g[j])),
                          "%s: grad %s[%zu] %g, torch %g", file, name, j, (double)grad[j],
                          (double)g[j]);
    }
    free(x);
    emoe_moe_branch_free(b);
    fixture_free(&f);
}

START_TEST(test_router_eigen_golden_top1)
{
    golden("moe_eigen_top1.bin");
}
END_TEST

START_TEST(test_router_eigen_golden_top2)
{
    golden("moe_eigen_top2.bin");
}
END_TEST

START_TEST(test_router_eigen_golden_soft)
{
    golden("moe_eigen_soft.bin");
}
END_TEST

START_TEST(test_router_eigen_golden_all_tokens)
{
    golden("moe_eigen_alltok.bin");
}
END_TEST

static Suite *router_suite(void)
{
    Suite *s = suite_create("router");
    TCase *fd = tcase_create("finite differences");
    tcase_set_timeout(fd, 120);
    tcase_add_test(fd, test_router_eigen_fd_top1);
    tcase_add_test(fd, test_router_eigen_fd_top2);
    tcase_add_test(fd, test_router_eigen_fd_soft);
    tcase_add_test(fd, test_router_eigen_fd_all_tokens);
    tcase_add_test(fd, test_router_softmax_fd);
    tcase_add_test(fd, test_router_softmax_fd_losses);
    tcase_add_test(fd, test_router_softmax_fd_capacity);
    tcase_add_test(fd, test_router_ermoe_fd);
    suite_add_tcase(s, fd);
    TCase *core = tcase_create("core");
    tcase_add_test(core, test_branch_sparse_matches_dense);
    tcase_add_test(core, test_branch_top_k_ties_lowest_index);
    tcase_add_test(core, test_branch_retraction_orthonormal);
    tcase_add_test(core, test_branch_deterministic);
    tcase_add_test(core, test_router_ermoe_threshold_eligibility);
    tcase_add_test(core, test_loss_terms_names);
    tcase_add_test(core, test_loss_terms_eigen);
    tcase_add_test(core, test_loss_terms_softmax);
    suite_add_tcase(s, core);
    TCase *gold = tcase_create("golden");
    tcase_add_test(gold, test_router_eigen_golden_top1);
    tcase_add_test(gold, test_router_eigen_golden_top2);
    tcase_add_test(gold, test_router_eigen_golden_soft);
    tcase_add_test(gold, test_router_eigen_golden_all_tokens);
    suite_add_tcase(s, gold);
    return s;
}

int main(void)
{
    return tu_run(router_suite());
}
