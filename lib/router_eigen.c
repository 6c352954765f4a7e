/*
 * router_eigen.c: the EMoE eigen router, METHOD.md section 2 (the reference
 * EigenRouter of Belis0811/EMoE, eigen_moe.py / moe_layers.py).
 *
 * Parameters (names under "branches.{i}.router."): gamma [r], masks [E, r],
 * bias [E], basis.Q [D, r], basis.P [D, r], basis.log_lambda [r].
 * For routed tokens h [N, D]:
 *   training only: Q <- qf(Q), P <- qf(P)   (reduced Householder QR, sgeqrf+sorgqr)
 *   z = h Q [N, r];  e_j = z_j^2 / (sum_k z_k^2 + 1e-6)
 *   m = softmax(masks, over experts) [E, r];  s_e = sum_j e_j gamma_j m[e, j] + bias_e
 *   p = softmax(s / tau)
 *   extra loss lambda_ortho (||Q^T Q - I||_F^2 + ||P^T P - I||_F^2)
 * P and log_lambda do not change the output (kept for checkpoint compatibility).
 *
 * Gradients and the retraction: the reference retracts under torch.no_grad() with
 * Q.copy_(qf(Q)), i.e. the parameter is replaced in place and then used; autograd
 * sees Q as a leaf, so the gradient is the one w.r.t. Q as used (no derivative of
 * the QR).  We do exactly that.  The penalty's gradient is 4 lambda Q (Q^T Q - I).
 */
#include "config.h"
#include "router.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ENERGY_EPS 1e-6f

struct eigen_state {
    struct moe_slot *gamma, *masks, *bias, *q, *p, *loglam;
    size_t cap;
    float *z, *en, *ssum;   /* [N, r], [N, r], [N] */
    float *m, *g, *dg;      /* [E, r] each */
    float *gram;            /* [r, r] */
};

static int eigen_add_slots(struct emoe_moe_branch *b, struct emoe_error *err)
{
    int rc = moe_add_slot(b, "router.gamma", 1, b->r, 0, INIT_CONST, 1.0f, 1, err);
    if (!rc)
        rc = moe_add_slot(b, "router.masks", 2, b->E, b->r, INIT_NORMAL, 0.0f, 0, err);
    if (!rc)
        rc = moe_add_slot(b, "router.bias", 1, b->E, 0, INIT_ZERO, 0.0f, 1, err);
    if (!rc)
        rc = moe_add_slot(b, "router.basis.Q", 2, b->D, b->r, INIT_ORTHO, 0.0f, 0, err);
    if (!rc)
        rc = moe_add_slot(b, "router.basis.P", 2, b->D, b->r, INIT_ORTHO, 0.0f, 0, err);
    if (!rc)
        rc = moe_add_slot(b, "router.basis.log_lambda", 1, b->r, 0, INIT_ZERO, 0.0f, 1, err);
    return rc;
}

static void eigen_free(struct emoe_moe_branch *b)
{
    struct eigen_state *s = b->rstate;
    if (!s)
        return;
    emoe_free_aligned(s->z);
    emoe_free_aligned(s->en);
    emoe_free_aligned(s->ssum);
    emoe_free_aligned(s->m);
    free(s);
    b->rstate = NULL;
}

static int eigen_bind(struct emoe_moe_branch *b, struct emoe_error *err)
{
    struct eigen_state *s = calloc(1, sizeof *s);
    if (!s)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    b->rstate = s;
    s->gamma = moe_find_slot(b, "router.gamma");
    s->masks = moe_find_slot(b, "router.masks");
    s->bias = moe_find_slot(b, "router.bias");
    s->q = moe_find_slot(b, "router.basis.Q");
    s->p = moe_find_slot(b, "router.basis.P");
    s->loglam = moe_find_slot(b, "router.basis.log_lambda");
    size_t er = (size_t)b->E * b->r, rr = (size_t)b->r * b->r, c = 0;
    int rc = moe_grow((void **)&s->m, &c, 3 * er + rr, sizeof(float), err);
    if (rc)
        return rc;
    s->g = s->m + er;
    s->dg = s->g + er;
    s->gram = s->dg + er;
    return EMOE_OK;
}

static int eigen_forward(struct emoe_moe_branch *b, int train, struct emoe_error *err)
{
    struct eigen_state *s = b->rstate;
    int N = b->N, D = b->D, r = b->r, E = b->E, rc;
    if (train) {
        rc = moe_qr_retract(s->q->data, D, r, 0, err);
        if (!rc)
            rc = moe_qr_retract(s->p->data, D, r, 0, err);
        if (rc)
            return rc;
    }
    if ((size_t)N > s->cap) {
        size_t c = 0, nr = (size_t)N * r;
        rc = moe_grow((void **)&s->z, &c, nr, sizeof(float), err);
        c = 0;
        if (!rc)
            rc = moe_grow((void **)&s->en, &c, nr, sizeof(float), err);
        c = 0;
        if (!rc)
            rc = moe_grow((void **)&s->ssum, &c, (size_t)N, sizeof(float), err);
        if (rc)
            return rc;
        s->cap = (size_t)N;
    }
    if (N > 0)
        emoe_sgemm(CblasNoTrans, CblasNoTrans, N, r, D, 1.0f, b->h, D,
                    s->q->data, r, 0.0f, s->z, r);
    for (int n = 0; n < N; n++) {
        const float *z = s->z + (size_t)n * r;
        float *en = s->en + (size_t)n * r, t = 0.0f;
        for (int j = 0; j < r; j++)
            t += z[j] * z[j];
        t += ENERGY_EPS;
        s->ssum[n] = t;
        float inv = 1.0f / t;
        for (int j = 0; j < r; j++)
            en[j] = z[j] * z[j] * inv;
    }
    /* m = softmax over experts of each column of masks; g = gamma * m. */
    for (int j = 0; j < r; j++) {
        float mx = s->masks->data[j];
        for (int e = 1; e < E; e++)
            if (s->masks->data[(size_t)e * r + j] > mx)
                mx = s->masks->data[(size_t)e * r + j];
        float t = 0.0f;
        for (int e = 0; e < E; e++) {
            float v = expf(s->masks->data[(size_t)e * r + j] - mx);
            s->m[(size_t)e * r + j] = v;
            t += v;
        }
        for (int e = 0; e < E; e++) {
            s->m[(size_t)e * r + j] /= t;
            s->g[(size_t)e * r + j] = s->m[(size_t)e * r + j] * s->gamma->data[j];
        }
    }
    /* logits [N, E] = en g^T + bias, into p, then p = softmax(logits / tau). */
    for (int n = 0; n < N; n++)
        memcpy(b->p + (size_t)n * E, s->bias->data, (size_t)E * sizeof(float));
    if (N > 0)
        emoe_sgemm(CblasNoTrans, CblasTrans, N, E, r, 1.0f, s->en, r, s->g, r,
                    1.0f, b->p, E);
    moe_softmax_rows(b->p, b->p, N, E, 1.0f / b->cfg.tau);
    double pen = moe_ortho_penalty(s->q->data, NULL, 0.0f, D, r, s->gram) +
                 moe_ortho_penalty(s->p->data, NULL, 0.0f, D, r, s->gram);
    moe_add_loss(b, EMOE_LOSS_ORTHO, (double)b->cfg.lambda_ortho * pen);
    return EMOE_OK;
}

static int eigen_backward(struct emoe_moe_branch *b, float *dp, float *dh,
                          struct emoe_error *err)
{
    struct eigen_state *s = b->rstate;
    int N = b->N, D = b->D, r = b->r, E = b->E;
    float inv_tau = 1.0f / b->cfg.tau;
    /* dlogits = p (dp - <dp, p>) / tau, in place. */
    for (int n = 0; n < N; n++) {
        float *d = dp + (size_t)n * E;
        const float *p = b->p + (size_t)n * E;
        float t = 0.0f;
        for (int e = 0; e < E; e++)
            t += d[e] * p[e];
        for (int e = 0; e < E; e++)
            d[e] = p[e] * (d[e] - t) * inv_tau;
    }
    if (s->bias->grad)
        for (int n = 0; n < N; n++)
            for (int e = 0; e < E; e++)
                s->bias->grad[e] += dp[(size_t)n * E + e];
    if (N > 0 && (s->gamma->grad || s->masks->grad)) {
        /* dg [E, r] = dlogits^T en */
        emoe_sgemm(CblasTrans, CblasNoTrans, E, r, N, 1.0f, dp, E, s->en, r,
                    0.0f, s->dg, r);
        for (int j = 0; j < r; j++) {
            float dgam = 0.0f, dot = 0.0f;
            for (int e = 0; e < E; e++) {
                float dge = s->dg[(size_t)e * r + j], me = s->m[(size_t)e * r + j];
                dgam += dge * me;
                dot += dge * s->gamma->data[j] * me;
            }
            if (s->gamma->grad)
                s->gamma->grad[j] += dgam;
            if (s->masks->grad)
                for (int e = 0; e < E; e++) {
                    float dm = s->dg[(size_t)e * r + j] * s->gamma->data[j];
                    s->masks->grad[(size_t)e * r + j] += s->m[(size_t)e * r + j] * (dm - dot);
                }
        }
    }
    if (N > 0) {
        /* den [N, r] = dlogits g, then dz = 2 z / S (den - <den, en>), in s->en's place
         * is not possible (en is needed): use z's buffer for dz. */
        float *den = malloc((size_t)N * r * sizeof *den);
        if (!den)
            return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        emoe_sgemm(CblasNoTrans, CblasNoTrans, N, r, E, 1.0f, dp, E, s->g, r,
                    0.0f, den, r);
        for (int n = 0; n < N; n++) {
            float *z = s->z + (size_t)n * r;
            const float *en = s->en + (size_t)n * r, *de = den + (size_t)n * r;
            float t = 0.0f;
            for (int j = 0; j < r; j++)
                t += de[j] * en[j];
            float c = 2.0f / s->ssum[n];
            for (int j = 0; j < r; j++)
                z[j] = c * z[j] * (de[j] - t); /* z is dz from here on */
        }
        free(den);
        if (s->q->grad) /* dQ [D, r] += h^T dz */
            emoe_sgemm(CblasTrans, CblasNoTrans, D, r, N, 1.0f, b->h, D, s->z,
                        r, 1.0f, s->q->grad, r);
        /* dh [N, D] += dz Q^T */
        emoe_sgemm(CblasNoTrans, CblasTrans, N, D, r, 1.0f, s->z, r,
                    s->q->data, r, 1.0f, dh, D);
    }
    float lam = b->cfg.lambda_ortho;
    if (lam != 0.0f) {
        if (s->q->grad)
            moe_ortho_penalty(s->q->data, s->q->grad, lam, D, r, s->gram);
        if (s->p->grad)
            moe_ortho_penalty(s->p->data, s->p->grad, lam, D, r, s->gram);
    }
    return EMOE_OK;
}

const struct router_ops moe_router_eigen = {
    "eigen", eigen_add_slots, eigen_bind, eigen_forward, NULL, eigen_backward, NULL,
    eigen_free,
};
