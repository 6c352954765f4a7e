/*
 * router_softmax.c: the V-MoE / Switch baseline router, METHOD.md section 4.
 *
 * Parameter "branches.{i}.router.weight" W [E, D] (no bias).  For routed tokens
 * h [N, D]: logits l = h W^T [N, E]; in training with noise, l~ = l + N(0, (1/E)^2)
 * (else l~ = l), the noise of training forward n of branch i drawn from the Philox
 * stream (seed_derive(seed, "noise"), i + n * 2^32); p = softmax(l~) (tau is not used: the baseline has none).
 * Optional extra losses (weights in the config, 0 = off):
 *   Switch balance   a E sum_e f_e P_e, f_e = share of tokens whose top-1 is e
 *                    (not differentiated), P_e = mean_n p_ne
 *   V-MoE importance w CV(Imp)^2, Imp_e = sum_n p_ne, CV = std/mean (population)
 *   V-MoE load       w CV(Load)^2, Load_e = sum_n Phi((l_ne - thr_ne) / sigma),
 *                    thr_ne = the k-th largest noisy logit among the other experts,
 *                    sigma = 1/E (needs noise; gradients through l_ne and thr_ne)
 *   router z-loss    w mean_n (logsumexp_e l~_ne)^2
 * Capacity and dropping are done by the branch (moe.c).
 */
#include "config.h"
#include "router.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct softmax_state {
    struct moe_slot *w;
    size_t cap;
    float *logits, *noisy;  /* [N, E] clean and noisy logits */
    float *lse;             /* [N] logsumexp of the noisy logits */
    float *thr;             /* [N, E] load threshold */
    int32_t *thr_idx;       /* [N, E] expert whose noisy logit is the threshold, -1: none */
    double *imp, *load, *f; /* [E] each */
};

static int softmax_add_slots(struct emoe_moe_branch *b, struct emoe_error *err)
{
    return moe_add_slot(b, "router.weight", 2, b->E, b->D, INIT_KAIMING, 0.0f, 0, err);
}

static void softmax_free(struct emoe_moe_branch *b)
{
    struct softmax_state *s = b->rstate;
    if (!s)
        return;
    emoe_free_aligned(s->logits);
    emoe_free_aligned(s->noisy);
    emoe_free_aligned(s->lse);
    emoe_free_aligned(s->thr);
    emoe_free_aligned(s->thr_idx);
    free(s->imp);
    free(s);
    b->rstate = NULL;
}

static int softmax_bind(struct emoe_moe_branch *b, struct emoe_error *err)
{
    struct softmax_state *s = calloc(1, sizeof *s);
    if (!s)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    b->rstate = s;
    s->w = moe_find_slot(b, "router.weight");
    s->imp = calloc(3 * (size_t)b->E, sizeof *s->imp);
    if (!s->imp)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    s->load = s->imp + b->E;
    s->f = s->load + b->E;
    return EMOE_OK;
}

/* CV^2 of v [E] (population) and, if grad, d CV^2 / d v_e into grad. */
static double cv2(const double *v, int E, double *grad)
{
    double mu = 0.0, q = 0.0;
    for (int e = 0; e < E; e++) {
        mu += v[e];
        q += v[e] * v[e];
    }
    mu /= E;
    q /= E;
    if (mu <= 0.0) {
        if (grad)
            memset(grad, 0, (size_t)E * sizeof *grad);
        return 0.0;
    }
    if (grad)
        for (int e = 0; e < E; e++)
            grad[e] = 2.0 / (E * mu * mu) * (v[e] - q / mu);
    return q / (mu * mu) - 1.0;
}

#define INV_SQRT2 0.70710678118654752440
#define INV_SQRT_2PI 0.39894228040143267794

static int softmax_forward(struct emoe_moe_branch *b, int train, struct emoe_error *err)
{
    struct softmax_state *s = b->rstate;
    int N = b->N, D = b->D, E = b->E, k = b->k;
    size_t ne = (size_t)N * E;
    if ((size_t)N > s->cap) {
        size_t c = 0;
        int rc = moe_grow((void **)&s->logits, &c, ne, sizeof(float), err);
        c = 0;
        if (!rc)
            rc = moe_grow((void **)&s->noisy, &c, ne, sizeof(float), err);
        c = 0;
        if (!rc)
            rc = moe_grow((void **)&s->thr, &c, ne, sizeof(float), err);
        c = 0;
        if (!rc)
            rc = moe_grow((void **)&s->thr_idx, &c, ne, sizeof(int32_t), err);
        c = 0;
        if (!rc)
            rc = moe_grow((void **)&s->lse, &c, (size_t)N, sizeof(float), err);
        if (rc)
            return rc;
        s->cap = (size_t)N;
    }
    emoe_linear_forward(s->logits, b->h, s->w->data, NULL, N, D, E);
    int noisy = train && b->cfg.noise;
    float sigma = 1.0f / (float)E;
    if (noisy) {
        /* training forward n reads the stream (key, index + n * 2^32) from its start
         * (b->rng, see emoe_moe_branch_set_train_forwards), then moves to forward n+1:
         * the noise depends on (seed, branch, n) only, so a resumed run repeats it */
        struct emoe_rng rng = b->rng;
        rng.pos = 0;
        for (size_t i = 0; i < ne; i++)
            s->noisy[i] = s->logits[i] + sigma * emoe_rng_normal(&rng);
        b->rng.stream += (uint64_t)1 << 32;
        b->rng.pos = 0;
    } else if (ne) {
        memcpy(s->noisy, s->logits, ne * sizeof *s->noisy);
    }
    moe_softmax_rows(b->p, s->noisy, N, E, 1.0f);
    double zl = 0.0;
    for (int n = 0; n < N; n++) {
        const float *l = s->noisy + (size_t)n * E;
        float mx = l[0];
        for (int e = 1; e < E; e++)
            mx = l[e] > mx ? l[e] : mx;
        double t = 0.0;
        for (int e = 0; e < E; e++)
            t += exp((double)(l[e] - mx));
        s->lse[n] = (float)(mx + log(t));
        zl += (double)s->lse[n] * s->lse[n];
    }
    if (b->cfg.z_loss > 0.0f && N > 0)
        moe_add_loss(b, EMOE_LOSS_Z, b->cfg.z_loss * zl / N);
    if (b->cfg.importance_loss > 0.0f) {
        memset(s->imp, 0, (size_t)E * sizeof *s->imp);
        for (size_t i = 0; i < ne; i++)
            s->imp[i % E] += b->p[i];
        moe_add_loss(b, EMOE_LOSS_IMPORTANCE, b->cfg.importance_loss * cv2(s->imp, E, NULL));
    }
    if (b->cfg.load_loss > 0.0f && noisy && k < E) {
        memset(s->load, 0, (size_t)E * sizeof *s->load);
        int32_t *ord = malloc((size_t)(k + 1) * sizeof *ord);
        if (!ord)
            return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        for (int n = 0; n < N; n++) {
            const float *l = s->noisy + (size_t)n * E;
            /* the k+1 largest noisy logits, ties to the lowest index */
            for (int j = 0; j <= k; j++) {
                int best = -1;
                for (int e = 0; e < E; e++) {
                    int taken = 0;
                    for (int i = 0; i < j; i++)
                        taken |= ord[i] == e;
                    if (!taken && (best < 0 || l[e] > l[best]))
                        best = e;
                }
                ord[j] = best;
            }
            for (int e = 0; e < E; e++) {
                int in = 0;
                for (int j = 0; j < k; j++)
                    in |= ord[j] == e;
                int32_t t = in ? ord[k] : ord[k - 1];
                size_t i = (size_t)n * E + e;
                s->thr_idx[i] = t;
                s->thr[i] = l[t];
                double x = (s->logits[i] - s->thr[i]) / sigma;
                s->load[e] += 0.5 * erfc(-x * INV_SQRT2);
            }
        }
        free(ord);
        moe_add_loss(b, EMOE_LOSS_LOAD, b->cfg.load_loss * cv2(s->load, E, NULL));
    }
    return EMOE_OK;
}

static void softmax_after_select(struct emoe_moe_branch *b)
{
    struct softmax_state *s = b->rstate;
    int N = b->N, E = b->E;
    if (!(b->cfg.switch_loss > 0.0f) || N == 0)
        return;
    memset(s->f, 0, (size_t)E * sizeof *s->f);
    for (int n = 0; n < N; n++)
        s->f[b->top1[n]] += 1.0 / N;
    double l = 0.0;
    for (int n = 0; n < N; n++)
        for (int e = 0; e < E; e++)
            l += s->f[e] * b->p[(size_t)n * E + e] / N;
    moe_add_loss(b, EMOE_LOSS_SWITCH, b->cfg.switch_loss * E * l);
}

static int softmax_backward(struct emoe_moe_branch *b, float *dp, float *dh,
                            struct emoe_error *err)
{
    struct softmax_state *s = b->rstate;
    int N = b->N, D = b->D, E = b->E, k = b->k;
    if (N == 0)
        return EMOE_OK;
    double *g = malloc((size_t)E * sizeof *g);
    if (!g)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    if (b->cfg.switch_loss > 0.0f)
        for (int n = 0; n < N; n++)
            for (int e = 0; e < E; e++)
                dp[(size_t)n * E + e] += (float)(b->cfg.switch_loss * E * s->f[e] / N);
    if (b->cfg.importance_loss > 0.0f) {
        cv2(s->imp, E, g);
        for (int n = 0; n < N; n++)
            for (int e = 0; e < E; e++)
                dp[(size_t)n * E + e] += (float)(b->cfg.importance_loss * g[e]);
    }
    /* through the softmax */
    for (int n = 0; n < N; n++) {
        float *d = dp + (size_t)n * E;
        const float *p = b->p + (size_t)n * E;
        float t = 0.0f;
        for (int e = 0; e < E; e++)
            t += d[e] * p[e];
        for (int e = 0; e < E; e++)
            d[e] = p[e] * (d[e] - t);
        if (b->cfg.z_loss > 0.0f) {
            float c = 2.0f * b->cfg.z_loss * s->lse[n] / (float)N;
            for (int e = 0; e < E; e++)
                d[e] += c * p[e];
        }
    }
    if (b->cfg.load_loss > 0.0f && b->train && b->cfg.noise && k < E) {
        float sigma = 1.0f / (float)E;
        cv2(s->load, E, g);
        for (int n = 0; n < N; n++)
            for (int e = 0; e < E; e++) {
                size_t i = (size_t)n * E + e;
                double x = (s->logits[i] - s->thr[i]) / sigma;
                float v = (float)(b->cfg.load_loss * g[e] * INV_SQRT_2PI * exp(-0.5 * x * x) /
                                  sigma);
                dp[i] += v;
                dp[(size_t)n * E + s->thr_idx[i]] -= v;
            }
    }
    free(g);
    emoe_linear_backward(dh, s->w->grad, NULL, dp, b->h, s->w->data, N, D, E);
    return EMOE_OK;
}

const struct router_ops moe_router_softmax = {
    "softmax",        softmax_add_slots, softmax_bind, softmax_forward,
    softmax_after_select, softmax_backward, NULL,        softmax_free,
};
