/*
 * model.c: the ViT model of the engine: configuration and presets, the parameter
 * registry (one arena, named views with the checkpoint names of METHOD.md section
 * 8), gradient arena over the trainable params, activation buffers sized per batch
 * size, forward (train or eval), loss, backward, freezing and the block hook where
 * MoE branches run.  The layer math is in layers.c, attention.c and loss.c.
 *
 * Memory plan (B images, T tokens, D channels, M MLP features, BT = B*T rows):
 * in training every block keeps its input x [BT,D], LN1 output, qkv [BT,3D], the
 * attention probabilities [B,H,T,T], the attention output [BT,D], the mid residual
 * [BT,D], the LN2 output and the fc1 output [BT,M] (GELU is recomputed in backward).
 * In evaluation one set of block buffers is reused by every block, and in training
 * so are the blocks below the lowest trainable param (a frozen backbone under MoE
 * branches keeps activations only from the first block whose backward runs).
 *
 * Backward runs from the head down to the lowest "stage" that holds a trainable
 * param (stages: 0 embedding, 1+2i block i, 2+2i the branch after block i,
 * 2*depth+1 the head); frozen params get no weight-gradient GEMM, and the input
 * gradient of the lowest trainable stage is not computed.
 */
#include "config.h"
#include "internal.h"

#include <cblas.h>
#include <fnmatch.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct pinfo {
    struct emoe_param_spec spec;
    struct emoe_param p;
    size_t off;         /* in the parameter arena */
    int trainable;
    int stage;
};

struct block {
    struct emoe_param *n1w, *n1b, *qkvw, *qkvb, *projw, *projb;
    struct emoe_param *n2w, *n2b, *fc1w, *fc1b, *fc2w, *fc2b;
};

/* Saved activations of one block. */
struct bact {
    float *ln1, *m1, *r1, *qkv, *att, *ao, *xmid, *ln2, *m2, *r2, *h;
};

struct emoe_model {
    struct emoe_vit_config cfg;
    int N, T, D, H, M, K, KP; /* patches, tokens, dims, heads, MLP, classes, patch cols */
    uint64_t seed;
    struct pinfo *pi;
    size_t np;
    float *params;
    size_t numel;
    float *grads;
    size_t gnumel;
    struct emoe_param *cls, *pos, *pw, *pb, *nw, *nb, *hw, *hb;
    struct block *blocks;
    struct emoe_block_hook hook;
    int has_hook;
    emoe_grad_reduce_fn reduce;
    void *reduce_ctx;

    /* activations */
    float *act;
    size_t act_floats;
    int cap_b, cap_train;
    int save_from;       /* training: blocks >= this keep their activations */
    int scratch;         /* 1 when ba[0] is a scratch set for the other blocks */
    int fwd_from;        /* save_from of the last training forward */
    int B, last_train;   /* of the last forward */
    float *img, *cols, *patch, **X, *tmp4, *d4, *dD, *dx, *ascr;
    float *ggel; /* training: gelu'(fc1 output) of the block being backpropagated */
    float *clsx, *mf, *rf, *feat, *logits, *dlogits, *dfeat, *dcls;
    struct bact *ba; /* depth sets in training, 1 in evaluation */
};

/* ------------------------------------------------------------------ config */

struct preset {
    const char *name;
    int d, depth, heads, patch, image, classes;
};
static const struct preset presets[] = {
    {"vit-tiny", 192, 12, 3, 16, 224, 1000},   {"vit-small", 384, 12, 6, 16, 224, 1000},
    {"vit-base", 768, 12, 12, 16, 224, 1000},  {"vit-large", 1024, 24, 16, 16, 224, 1000},
    {"vit-huge", 1280, 32, 16, 14, 224, 1000}, {"vit-micro", 128, 6, 4, 4, 32, 10},
    {"vit-mini", 192, 6, 3, 4, 32, 10},
};

int emoe_vit_preset(const char *name, struct emoe_vit_config *cfg, struct emoe_error *err)
{
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++) {
        if (strcmp(presets[i].name, name) != 0)
            continue;
        memset(cfg, 0, sizeof *cfg);
        cfg->image_ndim = 2;
        cfg->image_size[0] = cfg->image_size[1] = presets[i].image;
        cfg->patch_size = presets[i].patch;
        cfg->in_chans = 3;
        cfg->embed_dim = presets[i].d;
        cfg->depth = presets[i].depth;
        cfg->num_heads = presets[i].heads;
        cfg->mlp_dim = 4 * presets[i].d;
        cfg->num_classes = presets[i].classes;
        cfg->task = EMOE_TASK_CLASSIFY;
        for (int c = 0; c < 4; c++) {
            cfg->mean[c] = 0.0f;
            cfg->std[c] = 1.0f;
        }
        return EMOE_OK;
    }
    return emoe_error_set(err, EMOE_EINVAL,
                          "unknown model preset '%s' (vit-tiny, vit-small, vit-base, vit-large, "
                          "vit-huge, vit-micro, vit-mini)",
                          name);
}

#define DIM_MAX 65536

int emoe_vit_config_check(const struct emoe_vit_config *c, struct emoe_error *err)
{
    if (c->image_ndim != 2 && c->image_ndim != 3)
        return emoe_error_set(err, EMOE_EINVAL, "model: image rank %d (must be 2 or 3)",
                              c->image_ndim);
    if (c->patch_size < 1 || c->patch_size > 1024)
        return emoe_error_set(err, EMOE_EINVAL, "model: patch size %d out of range",
                              c->patch_size);
    for (int i = 0; i < c->image_ndim; i++)
        if (c->image_size[i] < c->patch_size || c->image_size[i] > DIM_MAX ||
            c->image_size[i] % c->patch_size != 0)
            return emoe_error_set(err, EMOE_EINVAL,
                                  "model: image size %d is not a positive multiple of the "
                                  "patch size %d",
                                  c->image_size[i], c->patch_size);
    if (c->in_chans < 1 || c->in_chans > 4)
        return emoe_error_set(err, EMOE_EINVAL, "model: %d input channels (1 to 4)",
                              c->in_chans);
    if (c->embed_dim < 1 || c->embed_dim > DIM_MAX || c->num_heads < 1 ||
        c->embed_dim % c->num_heads != 0)
        return emoe_error_set(err, EMOE_EINVAL,
                              "model: embed dim %d not divisible into %d heads", c->embed_dim,
                              c->num_heads);
    if (c->depth < 0 || c->depth > 1024)
        return emoe_error_set(err, EMOE_EINVAL, "model: depth %d out of range", c->depth);
    if (c->mlp_dim < 1 || c->mlp_dim > 4 * DIM_MAX)
        return emoe_error_set(err, EMOE_EINVAL, "model: MLP dim %d out of range", c->mlp_dim);
    if (c->num_classes < 1 || c->num_classes > 1000000)
        return emoe_error_set(err, EMOE_EINVAL, "model: %d classes out of range",
                              c->num_classes);
    if (c->task == EMOE_TASK_REGRESS && c->num_classes != 1)
        return emoe_error_set(err, EMOE_EINVAL, "model: regression needs 1 output, not %d",
                              c->num_classes);
    if (c->task != EMOE_TASK_CLASSIFY && c->task != EMOE_TASK_REGRESS)
        return emoe_error_set(err, EMOE_EINVAL, "model: unknown task %d", (int)c->task);
    for (int i = 0; i < c->in_chans; i++)
        if (!(c->std[i] > 0.0f) || !isfinite(c->std[i]) || !isfinite(c->mean[i]))
            return emoe_error_set(err, EMOE_EINVAL, "model: bad normalisation of channel %d",
                                  i);
    long long n = 1;
    for (int i = 0; i < c->image_ndim; i++)
        n *= c->image_size[i] / c->patch_size;
    if (n + 1 > 1000000)
        return emoe_error_set(err, EMOE_EINVAL, "model: %lld patches per image is too many", n);
    return EMOE_OK;
}

static int num_patches(const struct emoe_vit_config *c)
{
    int n = 1;
    for (int i = 0; i < c->image_ndim; i++)
        n *= c->image_size[i] / c->patch_size;
    return n;
}

int emoe_vit_tokens(const struct emoe_vit_config *cfg)
{
    return 1 + num_patches(cfg);
}

double emoe_vit_flops(const struct emoe_vit_config *c)
{
    double N = num_patches(c), T = N + 1, D = c->embed_dim, M = c->mlp_dim;
    double KP = c->in_chans * pow(c->patch_size, c->image_ndim);
    double block = 2 * T * D * 3 * D + 4 * T * T * D + 2 * T * D * D + 4 * T * D * M;
    return 2 * N * KP * D + c->depth * block + 2 * D * c->num_classes;
}

/* --------------------------------------------------------------- registry */

static int add_param(struct emoe_model *m, size_t cap, const char *name, int ndim,
                     const int64_t *shape, unsigned flags, int stage, struct emoe_error *err)
{
    if (m->np >= cap)
        return emoe_error_set(err, EMOE_EINVAL, "model: too many params");
    if (strlen(name) >= sizeof m->pi[0].spec.name)
        return emoe_error_set(err, EMOE_EINVAL, "model: param name '%s' too long", name);
    if (ndim < 0 || ndim > EMOE_MAX_DIMS)
        return emoe_error_set(err, EMOE_EINVAL, "model: param '%s' has rank %d", name, ndim);
    for (size_t i = 0; i < m->np; i++)
        if (strcmp(m->pi[i].spec.name, name) == 0)
            return emoe_error_set(err, EMOE_EINVAL, "model: duplicate param '%s'", name);
    struct pinfo *p = &m->pi[m->np];
    memset(p, 0, sizeof *p);
    strcpy(p->spec.name, name);
    p->spec.ndim = ndim;
    memcpy(p->spec.shape, shape, (size_t)ndim * sizeof *shape);
    p->spec.flags = flags;
    size_t numel;
    int rc = emoe_shape_check(EMOE_F32, ndim, shape, &numel, NULL, err);
    if (rc) {
        emoe_error_prefix(err, name);
        return rc;
    }
    p->p.numel = numel;
    p->off = m->numel;
    p->trainable = 1;
    p->stage = stage;
    if (emoe_size_add(&m->numel, m->numel, numel))
        return emoe_error_set(err, EMOE_ERANGE, "model: parameter count overflows");
    m->np++;
    return EMOE_OK;
}

static int add1(struct emoe_model *m, size_t cap, const char *name, int64_t a, unsigned flags,
                int stage, struct emoe_error *err)
{
    int64_t s[1] = {a};
    return add_param(m, cap, name, 1, s, flags, stage, err);
}

static int add2(struct emoe_model *m, size_t cap, const char *name, int64_t a, int64_t b,
                int stage, struct emoe_error *err)
{
    int64_t s[2] = {a, b};
    return add_param(m, cap, name, 2, s, 0, stage, err);
}

/* The stage of an extra param from its name ("branches.{i}." after block i). */
static int extra_stage(const char *name, int depth)
{
    const char *pre = "branches.";
    if (strncmp(name, pre, strlen(pre)) != 0)
        return 0;
    char *end;
    long i = strtol(name + strlen(pre), &end, 10);
    if (end == name + strlen(pre) || *end != '.' || i < 0 || i >= depth)
        return 0;
    return 2 + 2 * (int)i;
}

static struct emoe_param *find(struct emoe_model *m, const char *name)
{
    for (size_t i = 0; i < m->np; i++)
        if (strcmp(m->pi[i].spec.name, name) == 0)
            return &m->pi[i].p;
    return NULL;
}

static struct emoe_param *findb(struct emoe_model *m, int i, const char *s)
{
    char name[128];
    snprintf(name, sizeof name, "vit.blocks.%d.%s", i, s);
    return find(m, name);
}

/* Lay out the gradient arena over the trainable params (zeroed). */
static int layout_grads(struct emoe_model *m, struct emoe_error *err)
{
    size_t n = 0;
    for (size_t i = 0; i < m->np; i++)
        if (m->pi[i].trainable)
            n += m->pi[i].p.numel;
    float *g = NULL;
    if (n) {
        size_t bytes;
        if (emoe_size_mul(&bytes, n, sizeof(float)) || !(g = emoe_alloc_aligned(bytes)))
            return emoe_error_set(err, EMOE_ENOMEM, "model: out of memory for %zu gradients",
                                  n);
        memset(g, 0, bytes);
    }
    emoe_free_aligned(m->grads);
    m->grads = g;
    m->gnumel = n;
    size_t off = 0;
    for (size_t i = 0; i < m->np; i++) {
        if (m->pi[i].trainable) {
            m->pi[i].p.grad = g + off;
            off += m->pi[i].p.numel;
        } else {
            m->pi[i].p.grad = NULL;
        }
    }
    return EMOE_OK;
}

int emoe_model_new(const struct emoe_vit_config *cfg, const struct emoe_param_spec *extra,
                   size_t nextra, struct emoe_model **out, struct emoe_error *err)
{
    *out = NULL;
    int rc = emoe_vit_config_check(cfg, err);
    if (rc)
        return rc;
    if (nextra > 1000000)
        return emoe_error_set(err, EMOE_EINVAL, "model: %zu extra params", nextra);
    struct emoe_model *m = calloc(1, sizeof *m);
    if (!m)
        return emoe_error_set(err, EMOE_ENOMEM, "model: out of memory");
    m->cfg = *cfg;
    m->N = num_patches(cfg);
    m->T = m->N + 1;
    m->D = cfg->embed_dim;
    m->H = cfg->num_heads;
    m->M = cfg->mlp_dim;
    m->K = cfg->num_classes;
    m->KP = cfg->in_chans;
    for (int i = 0; i < cfg->image_ndim; i++)
        m->KP *= cfg->patch_size;
    int depth = cfg->depth, D = m->D;
    size_t cap = 8 + 12 * (size_t)depth + nextra;
    m->pi = calloc(cap, sizeof *m->pi);
    m->blocks = calloc(depth ? (size_t)depth : 1, sizeof *m->blocks);
    if (!m->pi || !m->blocks) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "model: out of memory");
        goto fail;
    }
    int64_t s[EMOE_MAX_DIMS];
    s[0] = 1, s[1] = 1, s[2] = D;
    if ((rc = add_param(m, cap, "vit.cls_token", 3, s, EMOE_PARAM_NO_DECAY, 0, err)))
        goto fail;
    s[1] = m->T;
    if ((rc = add_param(m, cap, "vit.pos_embed", 3, s, EMOE_PARAM_NO_DECAY, 0, err)))
        goto fail;
    s[0] = D, s[1] = cfg->in_chans;
    for (int i = 0; i < cfg->image_ndim; i++)
        s[2 + i] = cfg->patch_size;
    if ((rc = add_param(m, cap, "vit.patch_embed.proj.weight", 2 + cfg->image_ndim, s, 0, 0,
                        err)) ||
        (rc = add1(m, cap, "vit.patch_embed.proj.bias", D, EMOE_PARAM_NO_DECAY, 0, err)))
        goto fail;
    for (int i = 0; i < depth; i++) {
        char n[128];
        int st = 1 + 2 * i;
#define NM(x) (snprintf(n, sizeof n, "vit.blocks.%d." x, i), n)
        if ((rc = add1(m, cap, NM("norm1.weight"), D, EMOE_PARAM_NO_DECAY, st, err)) ||
            (rc = add1(m, cap, NM("norm1.bias"), D, EMOE_PARAM_NO_DECAY, st, err)) ||
            (rc = add2(m, cap, NM("attn.qkv.weight"), 3 * D, D, st, err)) ||
            (rc = add1(m, cap, NM("attn.qkv.bias"), 3 * D, EMOE_PARAM_NO_DECAY, st, err)) ||
            (rc = add2(m, cap, NM("attn.proj.weight"), D, D, st, err)) ||
            (rc = add1(m, cap, NM("attn.proj.bias"), D, EMOE_PARAM_NO_DECAY, st, err)) ||
            (rc = add1(m, cap, NM("norm2.weight"), D, EMOE_PARAM_NO_DECAY, st, err)) ||
            (rc = add1(m, cap, NM("norm2.bias"), D, EMOE_PARAM_NO_DECAY, st, err)) ||
            (rc = add2(m, cap, NM("mlp.fc1.weight"), m->M, D, st, err)) ||
            (rc = add1(m, cap, NM("mlp.fc1.bias"), m->M, EMOE_PARAM_NO_DECAY, st, err)) ||
            (rc = add2(m, cap, NM("mlp.fc2.weight"), D, m->M, st, err)) ||
            (rc = add1(m, cap, NM("mlp.fc2.bias"), D, EMOE_PARAM_NO_DECAY, st, err)))
            goto fail;
#undef NM
    }
    int hs = 2 * depth + 1;
    if ((rc = add1(m, cap, "vit.norm.weight", D, EMOE_PARAM_NO_DECAY, hs, err)) ||
        (rc = add1(m, cap, "vit.norm.bias", D, EMOE_PARAM_NO_DECAY, hs, err)) ||
        (rc = add2(m, cap, "vit.head.weight", m->K, D, hs, err)) ||
        (rc = add1(m, cap, "vit.head.bias", m->K, EMOE_PARAM_NO_DECAY, hs, err)))
        goto fail;
    for (size_t i = 0; i < nextra; i++) {
        char name[sizeof extra[i].name + 1];
        memcpy(name, extra[i].name, sizeof extra[i].name);
        name[sizeof extra[i].name] = '\0';
        if ((rc = add_param(m, cap, name, extra[i].ndim, extra[i].shape, extra[i].flags,
                            extra_stage(name, depth), err)))
            goto fail;
    }
    size_t bytes;
    if (emoe_size_mul(&bytes, m->numel, sizeof(float)) ||
        !(m->params = emoe_alloc_aligned(bytes))) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "model: out of memory for %zu parameters",
                            m->numel);
        goto fail;
    }
    memset(m->params, 0, bytes);
    for (size_t i = 0; i < m->np; i++) {
        m->pi[i].p.spec = &m->pi[i].spec;
        m->pi[i].p.data = m->params + m->pi[i].off;
    }
    if ((rc = layout_grads(m, err)))
        goto fail;
    m->cls = find(m, "vit.cls_token");
    m->pos = find(m, "vit.pos_embed");
    m->pw = find(m, "vit.patch_embed.proj.weight");
    m->pb = find(m, "vit.patch_embed.proj.bias");
    m->nw = find(m, "vit.norm.weight");
    m->nb = find(m, "vit.norm.bias");
    m->hw = find(m, "vit.head.weight");
    m->hb = find(m, "vit.head.bias");
    for (int i = 0; i < depth; i++) {
        struct block *b = &m->blocks[i];
        b->n1w = findb(m, i, "norm1.weight");
        b->n1b = findb(m, i, "norm1.bias");
        b->qkvw = findb(m, i, "attn.qkv.weight");
        b->qkvb = findb(m, i, "attn.qkv.bias");
        b->projw = findb(m, i, "attn.proj.weight");
        b->projb = findb(m, i, "attn.proj.bias");
        b->n2w = findb(m, i, "norm2.weight");
        b->n2b = findb(m, i, "norm2.bias");
        b->fc1w = findb(m, i, "mlp.fc1.weight");
        b->fc1b = findb(m, i, "mlp.fc1.bias");
        b->fc2w = findb(m, i, "mlp.fc2.weight");
        b->fc2b = findb(m, i, "mlp.fc2.bias");
    }
    emoe_model_init(m, 0);
    *out = m;
    return EMOE_OK;
fail:
    emoe_model_free(m);
    return rc;
}

static int lowest_stage(const struct emoe_model *m);

/* The first block whose backward runs (depth when none): block i's stage is 1 + 2i. */
static int first_saved_block(const struct emoe_model *m)
{
    int low = lowest_stage(m), depth = m->cfg.depth;
    if (low == INT_MAX)
        return depth;
    return low / 2 < depth ? low / 2 : depth;
}

/* The activation set of block i. */
static struct bact *set_for(struct emoe_model *m, int i, int train)
{
    if (!train || i < m->save_from)
        return &m->ba[0];
    return &m->ba[m->scratch + i - m->save_from];
}

static void free_acts(struct emoe_model *m)
{
    emoe_free_aligned(m->act);
    free(m->X);
    free(m->ba);
    m->act = NULL;
    m->X = NULL;
    m->ba = NULL;
    m->act_floats = 0;
    m->cap_b = 0;
    m->cap_train = 0;
    m->B = 0;
}

void emoe_model_free(struct emoe_model *m)
{
    if (!m)
        return;
    free_acts(m);
    emoe_free_aligned(m->params);
    emoe_free_aligned(m->grads);
    free(m->pi);
    free(m->blocks);
    free(m);
}

const struct emoe_vit_config *emoe_model_config(const struct emoe_model *m)
{
    return &m->cfg;
}

size_t emoe_model_param_count(const struct emoe_model *m)
{
    return m->np;
}

struct emoe_param *emoe_model_param_at(struct emoe_model *m, size_t i)
{
    return i < m->np ? &m->pi[i].p : NULL;
}

struct emoe_param *emoe_model_param(struct emoe_model *m, const char *name)
{
    return find(m, name);
}

size_t emoe_model_numel(const struct emoe_model *m)
{
    return m->numel;
}

size_t emoe_model_trainable_numel(const struct emoe_model *m)
{
    return m->gnumel;
}

float *emoe_model_params(struct emoe_model *m)
{
    return m->params;
}

float *emoe_model_grads(struct emoe_model *m)
{
    return m->grads;
}

uint64_t emoe_model_seed(const struct emoe_model *m)
{
    return m->seed;
}

int emoe_model_set_trainable(struct emoe_model *m, const char *pattern, int trainable,
                             size_t *count, struct emoe_error *err)
{
    size_t n = 0;
    for (size_t i = 0; i < m->np; i++)
        if (fnmatch(pattern, m->pi[i].spec.name, 0) == 0)
            n++;
    if (count)
        *count = n;
    int *old = malloc((m->np ? m->np : 1) * sizeof *old);
    if (!old)
        return emoe_error_set(err, EMOE_ENOMEM, "model: out of memory");
    for (size_t i = 0; i < m->np; i++) {
        old[i] = m->pi[i].trainable;
        if (fnmatch(pattern, m->pi[i].spec.name, 0) == 0)
            m->pi[i].trainable = trainable ? 1 : 0;
    }
    int rc = layout_grads(m, err);
    if (rc)
        for (size_t i = 0; i < m->np; i++)
            m->pi[i].trainable = old[i];
    free(old);
    return rc;
}

void emoe_model_set_block_hook(struct emoe_model *m, const struct emoe_block_hook *h)
{
    if (h) {
        m->hook = *h;
        m->has_hook = 1;
    } else {
        memset(&m->hook, 0, sizeof m->hook);
        m->has_hook = 0;
    }
}

void emoe_model_set_grad_reduce(struct emoe_model *m, emoe_grad_reduce_fn fn, void *ctx)
{
    m->reduce = fn;
    m->reduce_ctx = ctx;
}

int emoe_model_reduce_grads(struct emoe_model *m, struct emoe_error *err)
{
    if (!m->reduce || !m->gnumel)
        return EMOE_OK;
    return m->reduce(m->reduce_ctx, m->grads, m->gnumel, err);
}

/* ---------------------------------------------------------------- init */

static float trunc_normal(struct emoe_rng *r, float std)
{
    /* timm's trunc_normal_(std=s) cuts at a=-2, b=2 in absolute units. */
    for (;;) {
        float v = emoe_rng_normal(r) * std;
        if (v >= -2.0f && v <= 2.0f)
            return v;
    }
}

void emoe_model_init(struct emoe_model *m, uint64_t seed)
{
    m->seed = seed;
    uint64_t key = emoe_seed_derive(seed, 0x696e6974 /* "init" */);
    float bound = 1.0f / sqrtf((float)m->KP); /* Conv default: fan_in = C * P^k */
    for (size_t i = 0; i < m->np; i++) {
        struct pinfo *p = &m->pi[i];
        if (strncmp(p->spec.name, "vit.", 4) != 0)
            continue; /* extra params belong to whoever declared them */
        const char *n = p->spec.name + 4;
        float *d = p->p.data;
        size_t cnt = p->p.numel;
        struct emoe_rng r;
        emoe_rng_init(&r, key, i);
        size_t L = strlen(n);
        int is_bias = L > 5 && strcmp(n + L - 5, ".bias") == 0;
        int is_norm = strstr(n, "norm") != NULL;
        if (strcmp(n, "cls_token") == 0) {
            for (size_t j = 0; j < cnt; j++)
                d[j] = emoe_rng_normal(&r) * 1e-6f;
        } else if (strcmp(n, "pos_embed") == 0) {
            for (size_t j = 0; j < cnt; j++)
                d[j] = trunc_normal(&r, 0.02f);
        } else if (strncmp(n, "patch_embed.", 12) == 0) {
            for (size_t j = 0; j < cnt; j++)
                d[j] = (2.0f * emoe_rng_uniform(&r) - 1.0f) * bound;
        } else if (is_norm) {
            for (size_t j = 0; j < cnt; j++)
                d[j] = is_bias ? 0.0f : 1.0f;
        } else if (is_bias) {
            memset(d, 0, cnt * sizeof *d);
        } else {
            for (size_t j = 0; j < cnt; j++)
                d[j] = trunc_normal(&r, 0.02f);
        }
    }
}

/* ---------------------------------------------------------- activations */

int emoe_model_reserve(struct emoe_model *m, int B, int train, struct emoe_error *err)
{
    train = train ? 1 : 0;
    if (B < 1)
        return emoe_error_set(err, EMOE_EINVAL, "model: batch size %d", B);
    int depth = m->cfg.depth;
    int need_from = train ? first_saved_block(m) : depth;
    if (B <= m->cap_b && (!train || (m->cap_train && need_from >= m->save_from)))
        return EMOE_OK;
    if (B < m->cap_b)
        B = m->cap_b;
    if (m->cap_train) {
        train = 1;
        if (m->save_from < need_from)
            need_from = m->save_from;
    }
    if (!train)
        need_from = depth;
    /* training keeps sets for blocks need_from..depth-1, plus a scratch set for the
     * blocks below (and for evaluation) unless every block keeps its own */
    int scratch = !train || need_from > 0 || depth == 0;
    size_t D = (size_t)m->D, T = (size_t)m->T, M = (size_t)m->M, H = (size_t)m->H;
    size_t K = (size_t)m->K, N = (size_t)m->N, b = (size_t)B;
    size_t in = 1;
    for (int i = 0; i < m->cfg.image_ndim; i++)
        in *= (size_t)m->cfg.image_size[i];
    in *= (size_t)m->cfg.in_chans;
    /* every row count handed to a kernel as int must fit */
    if ((double)B * T * (M > 3 * D ? M : 3 * D) > (double)INT_MAX ||
        (double)B * H * T * T > (double)INT_MAX)
        return emoe_error_set(err, EMOE_ERANGE, "model: batch size %d too large", B);
    size_t bt = b * T;
    size_t nsets = (size_t)scratch + (size_t)(depth - need_from);
    size_t nx = train ? (size_t)m->cfg.depth + 1 : 2;
    size_t per_set = bt * D * 5 + bt * 3 * D + bt * M + b * H * T * T + 4 * bt;
    double total = (double)b * in + (double)b * N * m->KP + (double)b * N * D +
                   (double)nx * bt * D + (double)nsets * per_set + (double)bt * D * 2 +
                   (double)bt * M * (train ? 3 : 2) + (double)b * H * T * T + (double)b * D * 5 +
                   (double)b * 2 + (double)b * K * 2 + 64.0 * 64;
    if (total * sizeof(float) > (double)SIZE_MAX / 2)
        return emoe_error_set(err, EMOE_ERANGE, "model: batch size %d too large", B);
    size_t floats = (size_t)total;
    float *a = emoe_alloc_aligned(floats * sizeof(float));
    float **X = calloc(nx, sizeof *X);
    struct bact *ba = calloc(nsets ? nsets : 1, sizeof *ba);
    if (!a || !X || !ba) {
        emoe_free_aligned(a);
        free(X);
        free(ba);
        return emoe_error_set(err, EMOE_ENOMEM,
                              "model: out of memory for activations (batch %d, %.0f MB)", B,
                              total * 4 / 1e6);
    }
    free_acts(m);
    m->act = a;
    m->act_floats = floats;
    m->X = X;
    m->ba = ba;
    m->cap_b = B;
    m->cap_train = train;
    m->save_from = need_from;
    m->scratch = scratch;
    size_t off = 0;
#define TAKE(n) (off = (off + 15) & ~(size_t)15, off += (n), a + off - (n))
    m->img = TAKE(b * in);
    m->cols = TAKE(b * N * m->KP);
    m->patch = TAKE(b * N * D);
    for (size_t i = 0; i < nx; i++)
        X[i] = TAKE(bt * D);
    for (size_t i = 0; i < nsets; i++) {
        ba[i].ln1 = TAKE(bt * D);
        ba[i].m1 = TAKE(bt);
        ba[i].r1 = TAKE(bt);
        ba[i].qkv = TAKE(bt * 3 * D);
        ba[i].att = TAKE(b * H * T * T);
        ba[i].ao = TAKE(bt * D);
        ba[i].xmid = TAKE(bt * D);
        ba[i].ln2 = TAKE(bt * D);
        ba[i].m2 = TAKE(bt);
        ba[i].r2 = TAKE(bt);
        ba[i].h = TAKE(bt * M);
    }
    m->dD = TAKE(bt * D);
    m->dx = TAKE(bt * D);
    m->tmp4 = TAKE(bt * M);
    m->d4 = TAKE(bt * (M > 3 * D ? M : 3 * D));
    m->ggel = train ? TAKE(bt * M) : NULL;
    m->ascr = TAKE(b * H * T * T);
    m->clsx = TAKE(b * D);
    m->feat = TAKE(b * D);
    m->dfeat = TAKE(b * D);
    m->dcls = TAKE(b * D);
    m->mf = TAKE(b);
    m->rf = TAKE(b);
    m->logits = TAKE(b * K);
    m->dlogits = TAKE(b * K);
#undef TAKE
    if (off > floats) /* the estimate above covers the layout; never expected */
        return emoe_error_set(err, EMOE_ERANGE, "model: activation layout overflow");
    return EMOE_OK;
}

/* -------------------------------------------------------- elementwise */

struct ew_ctx {
    float *out;
    const float *a, *b;
    size_t n;
};
#define EW_CHUNK 32768

static void zero_item(void *vctx, size_t i)
{
    struct ew_ctx *c = vctx;
    size_t s = i * EW_CHUNK, e = s + EW_CHUNK < c->n ? s + EW_CHUNK : c->n;
    memset(c->out + s, 0, (e - s) * sizeof *c->out);
}

/* p[n] = 0, split over the threads when large */
static void vzero(float *p, size_t n)
{
    struct ew_ctx c = {p, NULL, NULL, n};
    size_t items = (n + EW_CHUNK - 1) / EW_CHUNK;
    if (items <= 4)
        memset(p, 0, n * sizeof *p);
    else
        emoe_parallel_for(items, zero_item, &c);
}

struct rows_ctx {
    float *out;
    const float *x, *b;
    size_t n, d, rows;
};

static void add_rows_item(void *vctx, size_t item)
{
    struct rows_ctx *c = vctx;
    size_t r0 = item * c->rows, r1 = r0 + c->rows < c->n ? r0 + c->rows : c->n;
    for (size_t i = r0; i < r1; i++) {
        const float *x = c->x + i * c->d;
        float *o = c->out + i * c->d;
        for (size_t j = 0; j < c->d; j++)
            o[j] = x[j] + c->b[j];
    }
}

/* out [n,d] = x [n,d] + b [d] in every row (out may be x) */
static void add_rows(float *out, const float *x, const float *b, size_t n, size_t d)
{
    struct rows_ctx c = {out, x, b, n, d, EW_CHUNK / (d ? d : 1) ? EW_CHUNK / (d ? d : 1) : 1};
    size_t items = (n + c.rows - 1) / c.rows;
    if (items <= 1)
        add_rows_item(&c, 0);
    else
        emoe_parallel_for(items, add_rows_item, &c);
}

/* y [N,Dout] = x [N,Din] W^T + b + r [N,Dout]: a linear with a residual added, the
 * residual and bias written first and the product accumulated onto them. */
static void linear_residual(float *y, const float *x, const float *w, const float *b,
                            const float *r, int N, int Din, int Dout)
{
    add_rows(y, r, b, (size_t)N, (size_t)Dout);
    emoe_sgemm(CblasNoTrans, CblasTrans, N, Dout, Din, 1.0f, x, Din, w, Din,
                1.0f, y, Dout);
}

/* dx [N,Din] = dy [N,Dout] W [Dout,Din] (overwritten, not accumulated), then the
 * weight and bias gradients as emoe_linear_backward. */
static void linear_backward_set(float *dx, float *dw, float *db, const float *dy,
                                const float *x, const float *w, int N, int Din, int Dout)
{
    if (dx)
        emoe_sgemm(CblasNoTrans, CblasNoTrans, N, Din, Dout, 1.0f, dy, Dout, w,
                    Din, 0.0f, dx, Din);
    emoe_linear_backward(NULL, dw, db, dy, x, w, N, Din, Dout);
}

/* ------------------------------------------------------------ forward */

static void normalise_input(struct emoe_model *m, const void *input, enum emoe_dtype dt, int B)
{
    size_t C = (size_t)m->cfg.in_chans, n = (size_t)B * C;
    for (int i = 0; i < m->cfg.image_ndim; i++)
        n *= (size_t)m->cfg.image_size[i];
    float mean[4], std[4];
    for (size_t c = 0; c < C; c++) {
        mean[c] = m->cfg.mean[c];
        std[c] = m->cfg.std[c];
    }
    if (dt == EMOE_U8) {
        const unsigned char *p = input;
        for (size_t i = 0; i < n; i += C)
            for (size_t c = 0; c < C; c++)
                m->img[i + c] = ((float)p[i + c] / 255.0f - mean[c]) / std[c];
    } else {
        const float *p = input;
        for (size_t i = 0; i < n; i += C)
            for (size_t c = 0; c < C; c++)
                m->img[i + c] = (p[i + c] - mean[c]) / std[c];
    }
}

static void block_forward(struct emoe_model *m, const struct block *bk, struct bact *a,
                          const float *x, float *y, int B)
{
    int T = m->T, D = m->D, H = m->H, M = m->M, BT = B * T;
    emoe_layernorm_forward(a->ln1, a->m1, a->r1, x, bk->n1w->data, bk->n1b->data, BT, D);
    emoe_linear_forward(a->qkv, a->ln1, bk->qkvw->data, bk->qkvb->data, BT, D, 3 * D);
    emoe_attention_forward(a->ao, a->att, a->qkv, B, T, D, H);
    linear_residual(a->xmid, a->ao, bk->projw->data, bk->projb->data, x, BT, D, D);
    emoe_layernorm_forward(a->ln2, a->m2, a->r2, a->xmid, bk->n2w->data, bk->n2b->data, BT, D);
    emoe_linear_forward(a->h, a->ln2, bk->fc1w->data, bk->fc1b->data, BT, D, M);
    emoe_gelu_forward(m->tmp4, a->h, (size_t)BT * M);
    linear_residual(y, m->tmp4, bk->fc2w->data, bk->fc2b->data, a->xmid, BT, M, D);
}

int emoe_model_forward(struct emoe_model *m, const void *input, enum emoe_dtype dtype, int B,
                       int train, struct emoe_error *err)
{
    if (dtype != EMOE_U8 && dtype != EMOE_F32)
        return emoe_error_set(err, EMOE_EINVAL, "model: input dtype %s (u8 or f32)",
                              emoe_dtype_name(dtype));
    int rc = emoe_model_reserve(m, B, train, err);
    if (rc)
        return rc;
    train = train ? 1 : 0;
    m->B = B;
    m->last_train = train;
    m->fwd_from = m->save_from;
    int T = m->T, D = m->D, N = m->N, depth = m->cfg.depth;
    const struct emoe_vit_config *c = &m->cfg;
    normalise_input(m, input, dtype, B);
    if (c->image_ndim == 2)
        emoe_patch_embed_forward_2d(m->patch, m->cols, m->img, m->pw->data, m->pb->data, B,
                                    c->image_size[0], c->image_size[1], c->in_chans,
                                    c->patch_size, D);
    else
        emoe_patch_embed_forward_3d(m->patch, m->cols, m->img, m->pw->data, m->pb->data, B,
                                    c->image_size[0], c->image_size[1], c->image_size[2],
                                    c->in_chans, c->patch_size, D);
    emoe_embed_forward(m->X[0], m->patch, m->cls->data, m->pos->data, B, N, D);
    float *x = m->X[0];
    for (int i = 0; i < depth; i++) {
        float *y = train ? m->X[i + 1] : m->X[(i + 1) & 1];
        block_forward(m, &m->blocks[i], set_for(m, i, train), x, y, B);
        if (m->has_hook && m->hook.forward) {
            rc = m->hook.forward(m->hook.ctx, i, y, B, T, D, train, err);
            if (rc)
                return rc;
        }
        x = y;
    }
    emoe_token_gather(m->clsx, x, B, T, D, 0);
    emoe_layernorm_forward(m->feat, m->mf, m->rf, m->clsx, m->nw->data, m->nb->data, B, D);
    emoe_linear_forward(m->logits, m->feat, m->hw->data, m->hb->data, B, D, m->K);
    return EMOE_OK;
}

const float *emoe_model_logits(const struct emoe_model *m)
{
    return m->logits;
}

const float *emoe_model_features(const struct emoe_model *m)
{
    return m->feat;
}

float *emoe_model_dlogits(struct emoe_model *m)
{
    return m->dlogits;
}

int emoe_model_loss(struct emoe_model *m, const void *targets, float smoothing,
                    double *task_loss, double *loss, int *ncorrect, struct emoe_error *err)
{
    if (!m->B)
        return emoe_error_set(err, EMOE_EINVAL, "model: loss before any forward");
    int B = m->B, K = m->K, rc;
    double l = 0.0;
    vzero(m->dlogits, (size_t)B * K);
    if (m->cfg.task == EMOE_TASK_CLASSIFY) {
        rc = emoe_cross_entropy(&l, m->dlogits, ncorrect, m->logits, targets, B, K, smoothing,
                                err);
    } else {
        rc = emoe_l1_loss(&l, m->dlogits, m->logits, targets, (size_t)B, err);
        if (ncorrect)
            *ncorrect = 0;
    }
    if (rc)
        return rc;
    if (task_loss)
        *task_loss = l;
    if (m->has_hook && m->hook.extra_loss)
        l += m->hook.extra_loss(m->hook.ctx);
    if (loss)
        *loss = l;
    return EMOE_OK;
}

/* ------------------------------------------------------------ backward */

static float *g(const struct emoe_param *p)
{
    return p->grad;
}

static int lowest_stage(const struct emoe_model *m)
{
    int low = INT_MAX;
    for (size_t i = 0; i < m->np; i++)
        if (m->pi[i].trainable && m->pi[i].p.numel && m->pi[i].stage < low)
            low = m->pi[i].stage;
    return low;
}

/* dx [BT,D]: gradient of the block output in, of its input out (when need_dx). */
static void block_backward(struct emoe_model *m, const struct block *bk, const struct bact *a,
                           const float *x, float *dx, int B, int need_dx)
{
    int T = m->T, D = m->D, H = m->H, M = m->M, BT = B * T;
    size_t nD = (size_t)BT * D, nM = (size_t)BT * M;
    /* MLP: y = xmid + fc2(gelu(fc1(ln2(xmid)))) */
    emoe_gelu_forward_grad(m->tmp4, m->ggel, a->h, nM);
    linear_backward_set(m->d4, g(bk->fc2w), g(bk->fc2b), dx, m->tmp4, bk->fc2w->data, BT, M,
                        D);
    emoe_gelu_backward_mul(m->tmp4, m->d4, m->ggel, nM);
    linear_backward_set(m->dD, g(bk->fc1w), g(bk->fc1b), m->tmp4, a->ln2, bk->fc1w->data, BT,
                        D, M);
    emoe_layernorm_backward(dx, g(bk->n2w), g(bk->n2b), m->dD, a->xmid, bk->n2w->data, a->m2,
                            a->r2, BT, D);
    /* attention: xmid = x + proj(attn(qkv(ln1(x)))) */
    linear_backward_set(m->dD, g(bk->projw), g(bk->projb), dx, a->ao, bk->projw->data, BT, D,
                        D);
    vzero(m->d4, nD * 3);
    emoe_attention_backward(m->d4, m->ascr, m->dD, a->qkv, a->att, B, T, D, H);
    linear_backward_set(need_dx ? m->dD : NULL, g(bk->qkvw), g(bk->qkvb), m->d4, a->ln1,
                        bk->qkvw->data, BT, D, 3 * D);
    if (need_dx || g(bk->n1w) || g(bk->n1b))
        emoe_layernorm_backward(need_dx ? dx : NULL, g(bk->n1w), g(bk->n1b), m->dD, x,
                                bk->n1w->data, a->m1, a->r1, BT, D);
}

int emoe_model_backward(struct emoe_model *m, struct emoe_error *err)
{
    if (!m->B || !m->last_train)
        return emoe_error_set(err, EMOE_EINVAL, "model: backward needs a training forward");
    int B = m->B, T = m->T, D = m->D, N = m->N, depth = m->cfg.depth, rc;
    int low = lowest_stage(m);
    int head = 2 * depth + 1;
    if (low == INT_MAX)
        return EMOE_OK; /* nothing to train */
    if (first_saved_block(m) < m->fwd_from)
        return emoe_error_set(err, EMOE_EINVAL,
                              "model: trainable params changed since the training forward");
    /* head: logits = head(LN(x[:, 0])) */
    int need = head > low;
    if (need)
        vzero(m->dfeat, (size_t)B * D);
    emoe_linear_backward(need ? m->dfeat : NULL, g(m->hw), g(m->hb), m->dlogits, m->feat,
                         m->hw->data, B, D, m->K);
    if (!need) {
        if (g(m->nw) || g(m->nb)) { /* the norm's own grads still need dfeat */
            vzero(m->dfeat, (size_t)B * D);
            emoe_linear_backward(m->dfeat, NULL, NULL, m->dlogits, m->feat, m->hw->data, B, D,
                                 m->K);
            emoe_layernorm_backward(NULL, g(m->nw), g(m->nb), m->dfeat, m->clsx, m->nw->data,
                                    m->mf, m->rf, B, D);
        }
        return EMOE_OK;
    }
    vzero(m->dcls, (size_t)B * D);
    emoe_layernorm_backward(m->dcls, g(m->nw), g(m->nb), m->dfeat, m->clsx, m->nw->data, m->mf,
                            m->rf, B, D);
    vzero(m->dx, (size_t)B * T * D);
    emoe_token_gather_backward(m->dx, m->dcls, B, T, D, 0);
    for (int i = depth - 1; i >= 0; i--) {
        int sb = 1 + 2 * i, sh = 2 + 2 * i;
        if (sh < low)
            break;
        if (m->has_hook && m->hook.backward) {
            rc = m->hook.backward(m->hook.ctx, i, m->dx, B, T, D, err);
            if (rc)
                return rc;
        }
        if (sb < low)
            break;
        block_backward(m, &m->blocks[i], set_for(m, i, 1), m->X[i], m->dx, B, sb > low);
    }
    if (low == 0) {
        float *dpatch = g(m->pw) || g(m->pb) ? m->patch : NULL;
        if (dpatch)
            vzero(dpatch, (size_t)B * N * D); /* the patch output is not needed any more */
        emoe_embed_backward(dpatch, g(m->cls), g(m->pos), m->dx, B, N, D);
        if (dpatch)
            emoe_patch_embed_backward(g(m->pw), g(m->pb), dpatch, m->cols, B * N, m->KP, D);
    }
    return EMOE_OK;
}

void emoe_model_zero_grad(struct emoe_model *m)
{
    if (m->grads)
        vzero(m->grads, m->gnumel);
}
