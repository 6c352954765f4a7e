/*
 * router_ermoe.c: the ERMoE-style router, METHOD.md section 3 (our interpretation
 * of the ERMoE abstract; no public formula exists).
 *
 * Each expert e owns an orthonormal basis B_e [D, r] (retracted like Q in
 * training), scales s_e [r] and an output map V_e [D, r]:
 *   expert_e(h) = V_e GELU(diag(s_e) B_e^T h)
 *   c_e(h) = ||B_e^T h|| / (||h|| + 1e-6)   (cosine between h and span(B_e))
 *   p = softmax(c / tau); top-k as the branch does; with a threshold T > 0, an
 *   expert with c_e < T is not eligible unless none is.  No balancing loss; the
 *   extra loss is lambda_ortho sum_e ||B_e^T B_e - I||_F^2.
 * Names (ours): "branches.{i}.experts.{e}.basis" [D, r], ".scale" [r],
 * ".out.weight" [D, r].  The branch runs the experts as down = diag(s) B^T
 * [r, D] (built here every forward) and up = V, so dispatch stays sparse.
 */
#include "config.h"
#include "router.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define COS_EPS 1e-6f

struct ermoe_state {
    struct moe_slot **basis, **scale, **out; /* [E] */
    float *wd, *dwd;        /* [E, r, D] effective down weights and their gradient */
    float *gram;            /* [r, r] */
    size_t cap;
    float *a;               /* [E, N, r] B_e^T h for every token */
    float *an, *hn;         /* [N, E] ||B_e^T h||, [N] ||h|| */
    float *da;              /* [N, r] */
};

static int ermoe_add_slots(struct emoe_moe_branch *b, struct emoe_error *err)
{
    char name[64];
    int rc = EMOE_OK;
    b->std_experts = 0;
    b->F = b->r;
    for (int e = 0; e < b->E && !rc; e++) {
        snprintf(name, sizeof name, "experts.%d.basis", e);
        rc = moe_add_slot(b, name, 2, b->D, b->r, INIT_ORTHO, 0.0f, 0, err);
        snprintf(name, sizeof name, "experts.%d.scale", e);
        if (!rc)
            rc = moe_add_slot(b, name, 1, b->r, 0, INIT_CONST, 1.0f, 1, err);
        snprintf(name, sizeof name, "experts.%d.out.weight", e);
        if (!rc)
            rc = moe_add_slot(b, name, 2, b->D, b->r, INIT_KAIMING, 0.0f, 0, err);
    }
    return rc;
}

static void ermoe_free(struct emoe_moe_branch *b)
{
    struct ermoe_state *s = b->rstate;
    if (!s)
        return;
    free(s->basis);
    emoe_free_aligned(s->wd);
    emoe_free_aligned(s->a);
    emoe_free_aligned(s->an);
    emoe_free_aligned(s->hn);
    emoe_free_aligned(s->da);
    free(s);
    b->rstate = NULL;
}

static int ermoe_bind(struct emoe_moe_branch *b, struct emoe_error *err)
{
    struct ermoe_state *s = calloc(1, sizeof *s);
    if (!s)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    b->rstate = s;
    int E = b->E, r = b->r, D = b->D;
    s->basis = calloc(3 * (size_t)E, sizeof *s->basis);
    if (!s->basis)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    s->scale = s->basis + E;
    s->out = s->scale + E;
    size_t rd = (size_t)r * D, c = 0;
    int rc = moe_grow((void **)&s->wd, &c, 2 * E * rd + (size_t)r * r, sizeof(float), err);
    if (rc)
        return rc;
    s->dwd = s->wd + E * rd;
    s->gram = s->dwd + E * rd;
    char name[64];
    for (int e = 0; e < E; e++) {
        snprintf(name, sizeof name, "experts.%d.basis", e);
        s->basis[e] = moe_find_slot(b, name);
        snprintf(name, sizeof name, "experts.%d.scale", e);
        s->scale[e] = moe_find_slot(b, name);
        snprintf(name, sizeof name, "experts.%d.out.weight", e);
        s->out[e] = moe_find_slot(b, name);
        b->down_w[e] = s->wd + e * rd;
        b->down_g[e] = s->dwd + e * rd; /* the out maps are bound by the branch */
    }
    return EMOE_OK;
}

static int ermoe_forward(struct emoe_moe_branch *b, int train, struct emoe_error *err)
{
    struct ermoe_state *s = b->rstate;
    int N = b->N, D = b->D, r = b->r, E = b->E, rc;
    if ((size_t)N > s->cap) {
        size_t c = 0;
        rc = moe_grow((void **)&s->a, &c, (size_t)E * N * r, sizeof(float), err);
        c = 0;
        if (!rc)
            rc = moe_grow((void **)&s->an, &c, (size_t)N * E, sizeof(float), err);
        c = 0;
        if (!rc)
            rc = moe_grow((void **)&s->hn, &c, (size_t)N, sizeof(float), err);
        c = 0;
        if (!rc)
            rc = moe_grow((void **)&s->da, &c, (size_t)N * r, sizeof(float), err);
        if (rc)
            return rc;
        s->cap = (size_t)N;
    }
    double pen = 0.0;
    for (int e = 0; e < E; e++) {
        float *B = s->basis[e]->data, *sc = s->scale[e]->data, *wd = s->wd + (size_t)e * r * D;
        if (train) {
            rc = moe_qr_retract(B, D, r, 0, err);
            if (rc)
                return rc;
        }
        for (int j = 0; j < r; j++)
            for (int i = 0; i < D; i++)
                wd[(size_t)j * D + i] = sc[j] * B[(size_t)i * r + j];
        pen += moe_ortho_penalty(B, NULL, 0.0f, D, r, s->gram);
        if (N > 0)
            emoe_sgemm(CblasNoTrans, CblasNoTrans, N, r, D, 1.0f, b->h, D, B, r,
                        0.0f, s->a + (size_t)e * N * r, r);
    }
    memset(s->dwd, 0, (size_t)E * r * D * sizeof(float));
    moe_add_loss(b, EMOE_LOSS_ORTHO, (double)b->cfg.lambda_ortho * pen);
    float thr = b->cfg.threshold;
    b->use_elig = thr > 0.0f;
    for (int n = 0; n < N; n++) {
        const float *h = b->h + (size_t)n * D;
        float t = 0.0f;
        for (int i = 0; i < D; i++)
            t += h[i] * h[i];
        s->hn[n] = sqrtf(t);
        float *c = b->p + (size_t)n * E; /* scores, turned into p below */
        for (int e = 0; e < E; e++) {
            const float *a = s->a + ((size_t)e * N + n) * r;
            float u = 0.0f;
            for (int j = 0; j < r; j++)
                u += a[j] * a[j];
            s->an[(size_t)n * E + e] = sqrtf(u);
            c[e] = sqrtf(u) / (s->hn[n] + COS_EPS);
            if (b->use_elig)
                b->elig[(size_t)n * E + e] = c[e] >= thr;
        }
    }
    moe_softmax_rows(b->p, b->p, N, E, 1.0f / b->cfg.tau);
    return EMOE_OK;
}

/* dB_e[i, j] += s_j dW[j, i]; ds_j += sum_i dW[j, i] B[i, j]. */
static void ermoe_experts_backward(struct emoe_moe_branch *b)
{
    struct ermoe_state *s = b->rstate;
    int D = b->D, r = b->r;
    for (int e = 0; e < b->E; e++) {
        const float *dw = s->dwd + (size_t)e * r * D, *B = s->basis[e]->data;
        const float *sc = s->scale[e]->data;
        float *dB = s->basis[e]->grad, *ds = s->scale[e]->grad;
        for (int j = 0; j < r; j++) {
            float t = 0.0f;
            for (int i = 0; i < D; i++) {
                float g = dw[(size_t)j * D + i];
                t += g * B[(size_t)i * r + j];
                if (dB)
                    dB[(size_t)i * r + j] += sc[j] * g;
            }
            if (ds)
                ds[j] += t;
        }
    }
}

static int ermoe_backward(struct emoe_moe_branch *b, float *dp, float *dh,
                          struct emoe_error *err)
{
    struct ermoe_state *s = b->rstate;
    int N = b->N, D = b->D, r = b->r, E = b->E;
    float inv_tau = 1.0f / b->cfg.tau;
    /* dc = p (dp - <dp, p>) / tau in place */
    for (int n = 0; n < N; n++) {
        float *d = dp + (size_t)n * E;
        const float *p = b->p + (size_t)n * E;
        float t = 0.0f;
        for (int e = 0; e < E; e++)
            t += d[e] * p[e];
        for (int e = 0; e < E; e++)
            d[e] = p[e] * (d[e] - t) * inv_tau;
    }
    /* d||h||: -sum_e dc_e ||a_e|| / (||h|| + eps)^2 * h / ||h|| */
    for (int n = 0; n < N; n++) {
        float hn = s->hn[n], den = hn + COS_EPS, t = 0.0f;
        if (hn <= 0.0f)
            continue;
        for (int e = 0; e < E; e++)
            t += dp[(size_t)n * E + e] * s->an[(size_t)n * E + e];
        float c = -t / (den * den * hn);
        const float *h = b->h + (size_t)n * D;
        float *g = dh + (size_t)n * D;
        for (int i = 0; i < D; i++)
            g[i] += c * h[i];
    }
    for (int e = 0; e < E && N > 0; e++) {
        const float *a = s->a + (size_t)e * N * r;
        for (int n = 0; n < N; n++) {
            float an = s->an[(size_t)n * E + e];
            float c = an > 0.0f ? dp[(size_t)n * E + e] / (an * (s->hn[n] + COS_EPS)) : 0.0f;
            for (int j = 0; j < r; j++)
                s->da[(size_t)n * r + j] = c * a[(size_t)n * r + j];
        }
        float *B = s->basis[e]->data;
        if (s->basis[e]->grad)
            emoe_sgemm(CblasTrans, CblasNoTrans, D, r, N, 1.0f, b->h, D, s->da,
                        r, 1.0f, s->basis[e]->grad, r);
        emoe_sgemm(CblasNoTrans, CblasTrans, N, D, r, 1.0f, s->da, r, B, r,
                    1.0f, dh, D);
        if (b->cfg.lambda_ortho != 0.0f && s->basis[e]->grad)
            moe_ortho_penalty(B, s->basis[e]->grad, b->cfg.lambda_ortho, D, r, s->gram);
    }
    (void)err;
    return EMOE_OK;
}

const struct router_ops moe_router_ermoe = {
    "ermoe",        ermoe_add_slots, ermoe_bind, ermoe_forward, NULL, ermoe_backward,
    ermoe_experts_backward, ermoe_free,
};
