/*
 * optim.c: the training parts of the ViT engine that update parameters: AdamW
 * with decoupled weight decay (torch.optim.AdamW's arithmetic), learning-rate
 * schedules and clipping by global norm.
 *
 * The moments are laid out like the model's gradient arena (trainable params
 * only, in registry order).  Updates are elementwise, split into fixed chunks,
 * so results do not depend on the thread count; the global norm is summed per
 * fixed chunk in double and the chunks are added in order.
 */
#include "config.h"
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 16384

struct seg {              /* a run of the gradient arena with one decay setting */
    float *p, *g, *m, *v;
    size_t n;
    int decay;
};

struct emoe_adamw {
    struct emoe_model *model;
    struct emoe_adamw_config c;
    float *m, *v;
    size_t n;
    int64_t step;
    struct seg *segs;
    size_t nsegs;
    /* the step being applied */
    float lr, wd_mul, step_size, bc2_sqrt;
    size_t *chunk_seg, *chunk_off, nchunks;
};

void emoe_adamw_config_init(struct emoe_adamw_config *c)
{
    c->beta1 = 0.9f;
    c->beta2 = 0.999f;
    c->eps = 1e-8f;
    c->weight_decay = 0.05f;
}

void emoe_adamw_free(struct emoe_adamw *o)
{
    if (!o)
        return;
    emoe_free_aligned(o->m);
    emoe_free_aligned(o->v);
    free(o->segs);
    free(o->chunk_seg);
    free(o->chunk_off);
    free(o);
}

int emoe_adamw_new(struct emoe_model *m, const struct emoe_adamw_config *c,
                   struct emoe_adamw **out, struct emoe_error *err)
{
    *out = NULL;
    if (!(c->beta1 >= 0.0f && c->beta1 < 1.0f) || !(c->beta2 >= 0.0f && c->beta2 < 1.0f) ||
        !(c->eps > 0.0f) || !(c->weight_decay >= 0.0f))
        return emoe_error_set(err, EMOE_EINVAL,
                              "adamw: bad settings (beta1 %g, beta2 %g, eps %g, decay %g)",
                              (double)c->beta1, (double)c->beta2, (double)c->eps,
                              (double)c->weight_decay);
    struct emoe_adamw *o = calloc(1, sizeof *o);
    if (!o)
        return emoe_error_set(err, EMOE_ENOMEM, "adamw: out of memory");
    o->model = m;
    o->c = *c;
    o->n = emoe_model_trainable_numel(m);
    size_t np = emoe_model_param_count(m);
    o->segs = calloc(np ? np : 1, sizeof *o->segs);
    if (o->n) {
        o->m = emoe_alloc_aligned(o->n * sizeof(float));
        o->v = emoe_alloc_aligned(o->n * sizeof(float));
    }
    if (!o->segs || (o->n && (!o->m || !o->v)))
        goto nomem;
    if (o->n) {
        memset(o->m, 0, o->n * sizeof(float));
        memset(o->v, 0, o->n * sizeof(float));
    }
    size_t off = 0, nchunks = 0;
    for (size_t i = 0; i < np; i++) {
        struct emoe_param *p = emoe_model_param_at(m, i);
        if (!p->grad || !p->numel)
            continue;
        struct seg *s = &o->segs[o->nsegs++];
        s->p = p->data;
        s->g = p->grad;
        s->m = o->m + off;
        s->v = o->v + off;
        s->n = p->numel;
        s->decay = !(p->spec->flags & EMOE_PARAM_NO_DECAY);
        off += p->numel;
        nchunks += (p->numel + CHUNK - 1) / CHUNK;
    }
    o->chunk_seg = malloc((nchunks ? nchunks : 1) * sizeof *o->chunk_seg);
    o->chunk_off = malloc((nchunks ? nchunks : 1) * sizeof *o->chunk_off);
    if (!o->chunk_seg || !o->chunk_off)
        goto nomem;
    for (size_t s = 0; s < o->nsegs; s++)
        for (size_t k = 0; k < o->segs[s].n; k += CHUNK) {
            o->chunk_seg[o->nchunks] = s;
            o->chunk_off[o->nchunks++] = k;
        }
    *out = o;
    return EMOE_OK;
nomem:
    emoe_adamw_free(o);
    return emoe_error_set(err, EMOE_ENOMEM, "adamw: out of memory");
}

static void adamw_item(void *vctx, size_t item)
{
    struct emoe_adamw *o = vctx;
    const struct seg *s = &o->segs[o->chunk_seg[item]];
    size_t k0 = o->chunk_off[item], k1 = k0 + CHUNK < s->n ? k0 + CHUNK : s->n;
    float b1 = o->c.beta1, b2 = o->c.beta2, eps = o->c.eps;
    float wd_mul = s->decay ? o->wd_mul : 1.0f, step = o->step_size, bc2 = o->bc2_sqrt;
    float *p = s->p, *m = s->m, *v = s->v;
    const float *gr = s->g;
    for (size_t k = k0; k < k1; k++) {
        float gk = gr[k];
        p[k] *= wd_mul;
        m[k] = b1 * m[k] + (1.0f - b1) * gk;
        v[k] = b2 * v[k] + (1.0f - b2) * gk * gk;
        float denom = sqrtf(v[k]) / bc2 + eps;
        p[k] -= step * m[k] / denom;
    }
}

int emoe_adamw_step(struct emoe_adamw *o, double lr, struct emoe_error *err)
{
    if (emoe_model_trainable_numel(o->model) != o->n ||
        (o->n && emoe_model_grads(o->model) != o->segs[0].g))
        return emoe_error_set(err, EMOE_EINVAL,
                              "adamw: the model's trainable params changed after the "
                              "optimizer was made");
    if (!(lr >= 0.0) || !isfinite(lr))
        return emoe_error_set(err, EMOE_EINVAL, "adamw: learning rate %g", lr);
    o->step++;
    double t = (double)o->step;
    double bc1 = 1.0 - pow(o->c.beta1, t), bc2 = 1.0 - pow(o->c.beta2, t);
    o->lr = (float)lr;
    o->wd_mul = (float)(1.0 - lr * o->c.weight_decay);
    o->step_size = (float)(lr / bc1);
    o->bc2_sqrt = (float)sqrt(bc2);
    if (o->nchunks > 1)
        emoe_parallel_for(o->nchunks, adamw_item, o);
    else if (o->nchunks == 1)
        adamw_item(o, 0);
    return EMOE_OK;
}

int64_t emoe_adamw_get_step(const struct emoe_adamw *o)
{
    return o->step;
}

void emoe_adamw_set_step(struct emoe_adamw *o, int64_t step)
{
    o->step = step;
}

float *emoe_adamw_m(struct emoe_adamw *o)
{
    return o->m;
}

float *emoe_adamw_v(struct emoe_adamw *o)
{
    return o->v;
}

size_t emoe_adamw_numel(const struct emoe_adamw *o)
{
    return o->n;
}

/* ------------------------------------------------------------ schedules */

double emoe_lr_at(const struct emoe_lr_schedule *s, int64_t step)
{
    if (step < 0)
        step = 0;
    if (s->warmup > 0 && step < s->warmup)
        return s->lr * (double)(step + 1) / (double)s->warmup;
    if (s->kind == EMOE_LR_CONSTANT || s->total <= s->warmup)
        return s->lr;
    double f = (double)(step - s->warmup) / (double)(s->total - s->warmup);
    if (f > 1.0)
        f = 1.0;
    double k = s->kind == EMOE_LR_COSINE ? 0.5 * (1.0 + cos(3.141592653589793 * f)) : 1.0 - f;
    return s->min_lr + (s->lr - s->min_lr) * k;
}

/* ------------------------------------------------------------- clipping */

struct norm_ctx {
    float *g;
    size_t n;
    double *part;
    float scale;
};

static void sumsq_item(void *vctx, size_t i)
{
    struct norm_ctx *c = vctx;
    size_t s = i * CHUNK, e = s + CHUNK < c->n ? s + CHUNK : c->n;
    double acc = 0.0;
    for (size_t k = s; k < e; k++)
        acc += (double)c->g[k] * c->g[k];
    c->part[i] = acc;
}

static void scale_item(void *vctx, size_t i)
{
    struct norm_ctx *c = vctx;
    size_t s = i * CHUNK, e = s + CHUNK < c->n ? s + CHUNK : c->n;
    for (size_t k = s; k < e; k++)
        c->g[k] *= c->scale;
}

int emoe_clip_grad_norm(float *grads, size_t n, double max_norm, double *norm,
                        struct emoe_error *err)
{
    size_t chunks = (n + CHUNK - 1) / CHUNK;
    double total = 0.0;
    if (chunks) {
        double *part = malloc(chunks * sizeof *part);
        if (!part)
            return emoe_error_set(err, EMOE_ENOMEM, "clip: out of memory");
        struct norm_ctx c = {grads, n, part, 1.0f};
        emoe_parallel_for(chunks, sumsq_item, &c);
        for (size_t i = 0; i < chunks; i++)
            total += part[i];
        free(part);
    }
    double nrm = sqrt(total);
    if (norm)
        *norm = nrm;
    if (!isfinite(nrm))
        return emoe_error_set(err, EMOE_ENUMERIC, "clip: gradient norm is not finite");
    if (max_norm > 0.0 && nrm > max_norm) {
        /* torch.nn.utils.clip_grad_norm_: coefficient max / (norm + 1e-6) */
        struct norm_ctx c = {grads, n, NULL, (float)(max_norm / (nrm + 1e-6))};
        emoe_parallel_for(chunks, scale_item, &c);
    }
    return EMOE_OK;
}
