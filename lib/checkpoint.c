/*
 * checkpoint.c: model checkpoints and training state.
 *
 * Model files are .safetensors with the reference state_dict names and the
 * metadata of METHOD.md section 8.  Loading also accepts the Hub export's "model."
 * prefix, bare timm names (a plain ViT: "blocks.0.norm1.weight" for
 * "vit.blocks.0.norm1.weight") and Google's ViT .npz checkpoints (the
 * Transformer/encoderblock_N/... layout of google-research/vision_transformer,
 * converted as timm's _load_weights does).  A position embedding whose grid
 * differs from the model's is resampled bilinearly, or trilinearly for a volume
 * model (class position kept).  Loading
 * is all or nothing: weights are staged in a copy of the arena and committed only
 * when every tensor was read and checked.
 *
 * The training state (AdamW moments, step, seed, data position) is a separate
 * .safetensors ("adamw.m.<name>", "adamw.v.<name>", metadata state.*), so the model
 * file stays loadable by load_state_dict(strict=True) in the reference code.
 */
#include "config.h"
#include "internal.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ save */

#define META_MAX 64

struct meta_buf {
    struct emoe_kv kv[META_MAX];
    char val[META_MAX][256];
    size_t n;
};

static void meta_set(struct meta_buf *mb, const char *key, const char *value)
{
    for (size_t i = 0; i < mb->n; i++)
        if (strcmp(mb->kv[i].key, key) == 0) {
            mb->kv[i].value = value;
            return;
        }
    if (mb->n < META_MAX) {
        mb->kv[mb->n].key = key;
        mb->kv[mb->n].value = value;
        mb->n++;
    }
}

static void meta_setf(struct meta_buf *mb, const char *key, const char *fmt, ...)
    EMOE_PRINTF(3, 4);
static void meta_setf(struct meta_buf *mb, const char *key, const char *fmt, ...)
{
    if (mb->n >= META_MAX)
        return;
    char *v = mb->val[mb->n];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v, sizeof mb->val[0], fmt, ap);
    va_end(ap);
    meta_set(mb, key, v);
}

static void floats_list(char *buf, size_t size, const float *v, int n)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && len < size; i++)
        len += (size_t)snprintf(buf + len, size - len, "%s%.9g", i ? "," : "", (double)v[i]);
}

/* The config's metadata (METHOD.md section 8) into mb. */
static void config_meta(const struct emoe_vit_config *c, struct meta_buf *mb)
{
    meta_set(mb, "emoe.version", "1");
    const int *s = c->image_size;
    if (c->image_ndim == 3)
        meta_setf(mb, "model.image_size", "%d,%d,%d", s[0], s[1], s[2]);
    else if (s[0] == s[1])
        meta_setf(mb, "model.image_size", "%d", s[0]);
    else
        meta_setf(mb, "model.image_size", "%d,%d", s[0], s[1]);
    meta_setf(mb, "model.patch_size", "%d", c->patch_size);
    meta_setf(mb, "model.in_chans", "%d", c->in_chans);
    meta_setf(mb, "model.embed_dim", "%d", c->embed_dim);
    meta_setf(mb, "model.depth", "%d", c->depth);
    meta_setf(mb, "model.num_heads", "%d", c->num_heads);
    meta_setf(mb, "model.mlp_ratio", "%.9g", (double)c->mlp_dim / c->embed_dim);
    meta_setf(mb, "model.num_classes", "%d", c->num_classes);
    meta_set(mb, "model.task", c->task == EMOE_TASK_REGRESS ? "regress" : "classify");
    char tmp[256];
    floats_list(tmp, sizeof tmp, c->mean, c->in_chans);
    meta_setf(mb, "data.mean", "%s", tmp);
    floats_list(tmp, sizeof tmp, c->std, c->in_chans);
    meta_setf(mb, "data.std", "%s", tmp);
    meta_set(mb, "moe.router", "none");
}

/* Wrap every param (or its moments) as tensors named prefix + name. */
struct wrapped {
    struct emoe_named_tensor *nt;
    struct emoe_tensor **t;
    char **names;
    size_t n;
};

static void wrapped_free(struct wrapped *w)
{
    for (size_t i = 0; i < w->n; i++) {
        emoe_tensor_free(w->t[i]);
        free(w->names[i]);
    }
    free(w->nt);
    free(w->t);
    free(w->names);
    memset(w, 0, sizeof *w);
}

static int wrap_add(struct wrapped *w, const char *prefix, const struct emoe_param_spec *s,
                    float *data, struct emoe_error *err)
{
    size_t len = strlen(prefix) + strlen(s->name) + 1;
    char *name = malloc(len);
    if (!name)
        return emoe_error_set(err, EMOE_ENOMEM, "checkpoint: out of memory");
    snprintf(name, len, "%s%s", prefix, s->name);
    struct emoe_tensor *t;
    int rc = emoe_tensor_wrap(EMOE_F32, s->ndim, s->shape, data, &t, err);
    if (rc) {
        free(name);
        return rc;
    }
    w->names[w->n] = name;
    w->t[w->n] = t;
    w->nt[w->n].name = name;
    w->nt[w->n].tensor = t;
    w->n++;
    return EMOE_OK;
}

static int wrapped_alloc(struct wrapped *w, size_t cap, struct emoe_error *err)
{
    memset(w, 0, sizeof *w);
    if (!cap)
        cap = 1;
    w->nt = calloc(cap, sizeof *w->nt);
    w->t = calloc(cap, sizeof *w->t);
    w->names = calloc(cap, sizeof *w->names);
    if (!w->nt || !w->t || !w->names) {
        wrapped_free(w);
        return emoe_error_set(err, EMOE_ENOMEM, "checkpoint: out of memory");
    }
    return EMOE_OK;
}

int emoe_checkpoint_save(struct emoe_model *m, const char *path, const struct emoe_kv *meta,
                         size_t nmeta, struct emoe_error *err)
{
    struct meta_buf *mb = calloc(1, sizeof *mb);
    if (!mb)
        return emoe_error_set(err, EMOE_ENOMEM, "checkpoint: out of memory");
    config_meta(emoe_model_config(m), mb);
    for (size_t i = 0; i < nmeta; i++)
        meta_set(mb, meta[i].key, meta[i].value);
    if (mb->n >= META_MAX) {
        free(mb);
        return emoe_error_set(err, EMOE_EINVAL, "%s: too many metadata keys", path);
    }
    size_t np = emoe_model_param_count(m);
    struct wrapped w;
    int rc = wrapped_alloc(&w, np, err);
    for (size_t i = 0; !rc && i < np; i++) {
        struct emoe_param *p = emoe_model_param_at(m, i);
        rc = wrap_add(&w, "", p->spec, p->data, err);
    }
    if (!rc)
        rc = emoe_safetensors_write(path, w.nt, w.n, mb->kv, mb->n, err);
    wrapped_free(&w);
    free(mb);
    return rc;
}

/* --------------------------------------------------------------- config */

static int parse_int(const char *s, long min, long max, long *out)
{
    if (!s || !*s)
        return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* Comma-separated numbers; returns how many (at most max), -1 on a bad one. */
static int parse_list(const char *s, double *v, int max)
{
    int n = 0;
    while (s && *s) {
        if (n >= max)
            return -1;
        char *end;
        errno = 0;
        double d = strtod(s, &end);
        if (end == s || errno || !isfinite(d))
            return -1;
        v[n++] = d;
        if (*end == ',')
            end++;
        else if (*end)
            return -1;
        s = end;
    }
    return n;
}

static int config_from_meta(const struct emoe_safetensors *st, const char *path,
                            struct emoe_vit_config *c, struct emoe_error *err)
{
    memset(c, 0, sizeof *c);
    static const char *const ikeys[] = {"model.patch_size", "model.in_chans",
                                        "model.embed_dim",  "model.depth",
                                        "model.num_heads",  "model.num_classes"};
    int *ivals[] = {&c->patch_size, &c->in_chans,  &c->embed_dim,
                    &c->depth,      &c->num_heads, &c->num_classes};
    for (size_t i = 0; i < sizeof ikeys / sizeof *ikeys; i++) {
        const char *v = emoe_safetensors_metadata_get(st, ikeys[i]);
        long x;
        if (!v)
            return emoe_error_set(err, EMOE_EFORMAT, "%s: metadata lacks '%s'", path, ikeys[i]);
        if (parse_int(v, 0, 1 << 24, &x))
            return emoe_error_set(err, EMOE_EFORMAT, "%s: metadata '%s': bad value '%s'", path,
                                  ikeys[i], v);
        *ivals[i] = (int)x;
    }
    double d[4];
    const char *v = emoe_safetensors_metadata_get(st, "model.image_size");
    int n = v ? parse_list(v, d, 3) : -1;
    for (int i = 0; i < n; i++) /* in range before the conversions to int below */
        if (!(d[i] >= 0 && d[i] <= (1 << 24)))
            n = -1;
    if (n < 1)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: metadata 'model.image_size': bad value "
                              "'%s'", path, v ? v : "");
    c->image_ndim = n == 3 ? 3 : 2;
    for (int i = 0; i < c->image_ndim; i++)
        c->image_size[i] = (int)d[n == 1 ? 0 : i];
    v = emoe_safetensors_metadata_get(st, "model.mlp_ratio");
    if (v && parse_list(v, d, 1) == 1 && d[0] > 0 && d[0] < 1024 &&
        d[0] * c->embed_dim < INT_MAX)
        c->mlp_dim = (int)lround(d[0] * c->embed_dim);
    else if (v)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: metadata 'model.mlp_ratio': bad value "
                              "'%s'", path, v);
    else
        c->mlp_dim = 4 * c->embed_dim;
    v = emoe_safetensors_metadata_get(st, "model.task");
    if (!v || strcmp(v, "classify") == 0)
        c->task = EMOE_TASK_CLASSIFY;
    else if (strcmp(v, "regress") == 0)
        c->task = EMOE_TASK_REGRESS;
    else
        return emoe_error_set(err, EMOE_EFORMAT, "%s: metadata 'model.task': bad value '%s'",
                              path, v);
    for (int i = 0; i < 4; i++) {
        c->mean[i] = 0.0f;
        c->std[i] = 1.0f;
    }
    static const char *const fkeys[2] = {"data.mean", "data.std"};
    float *fv[2] = {c->mean, c->std};
    for (int k = 0; k < 2; k++) {
        v = emoe_safetensors_metadata_get(st, fkeys[k]);
        if (!v)
            continue;
        n = parse_list(v, d, 4);
        for (int i = 0; i < n; i++) /* representable as float */
            if (!(fabs(d[i]) <= FLT_MAX))
                n = -1;
        if (n != 1 && n != c->in_chans)
            return emoe_error_set(err, EMOE_EFORMAT, "%s: metadata '%s': bad value '%s'", path,
                                  fkeys[k], v);
        for (int i = 0; i < c->in_chans && i < 4; i++)
            fv[k][i] = (float)d[n == 1 ? 0 : i];
    }
    int rc = emoe_vit_config_check(c, err);
    if (rc)
        emoe_error_prefix(err, path);
    return rc;
}

int emoe_checkpoint_read_config(const char *path, struct emoe_vit_config *cfg,
                                struct emoe_error *err)
{
    struct emoe_safetensors *st;
    int rc = emoe_safetensors_open(path, &st, err);
    if (rc)
        return rc;
    rc = config_from_meta(st, path, cfg, err);
    emoe_safetensors_close(st);
    return rc;
}

/* ------------------------------------------------------------------ load */

struct source {
    const char *path;
    struct emoe_safetensors *st;
    struct emoe_npz *z;
};

/* An f32 copy of t (converted when needed); the caller frees it. */
static int as_f32(struct emoe_tensor *t, struct emoe_tensor **out, struct emoe_error *err)
{
    if (t->dtype == EMOE_F32) {
        *out = t;
        return EMOE_OK;
    }
    int rc = emoe_tensor_convert(t, EMOE_F32, out, err);
    emoe_tensor_free(t);
    return rc;
}

/* The tensor for the model name `name` from a safetensors file; ENOTFOUND when absent. */
static int st_find(struct source *s, const char *name, struct emoe_tensor **out,
                   struct emoe_error *err)
{
    char cand[4][160];
    int nc = 0;
    snprintf(cand[nc++], sizeof cand[0], "%s", name);
    snprintf(cand[nc++], sizeof cand[0], "model.%s", name);
    if (strncmp(name, "vit.", 4) == 0) {
        snprintf(cand[nc++], sizeof cand[0], "%s", name + 4);
        snprintf(cand[nc++], sizeof cand[0], "model.%s", name + 4);
    }
    for (int i = 0; i < nc; i++) {
        size_t cnt = emoe_safetensors_count(s->st);
        for (size_t k = 0; k < cnt; k++) {
            if (strcmp(emoe_safetensors_name(s->st, k), cand[i]) != 0)
                continue;
            struct emoe_tensor *t;
            int rc = emoe_safetensors_get(s->st, cand[i], &t, err);
            if (rc)
                return rc;
            return as_f32(t, out, err);
        }
    }
    return emoe_error_set(err, EMOE_ENOTFOUND, "%s: no tensor '%s'", s->path, name);
}

static int npz_member(struct source *s, const char *name, struct emoe_tensor **out,
                      struct emoe_error *err)
{
    for (size_t i = 0; i < emoe_npz_count(s->z); i++)
        if (strcmp(emoe_npz_name(s->z, i), name) == 0) {
            struct emoe_tensor *t;
            int rc = emoe_npz_read(s->z, name, &t, err);
            if (rc)
                return rc;
            return as_f32(t, out, err);
        }
    return emoe_error_set(err, EMOE_ENOTFOUND, "%s: no member '%s'", s->path, name);
}

/* A new f32 tensor of shape (ndim, shape) holding src's values permuted: dst element
 * with index (i0..i3) in the order perm of src's axes; src is [a0, a1, (a2, a3)]. */
static int permuted(const struct emoe_tensor *src, const int *perm, int ndim,
                    const int64_t *dshape, struct emoe_tensor **out, struct emoe_error *err)
{
    int rc = emoe_tensor_new(EMOE_F32, ndim, dshape, out, err);
    if (rc)
        return rc;
    size_t sstr[EMOE_MAX_DIMS];
    sstr[src->ndim - 1] = 1;
    for (int i = src->ndim - 2; i >= 0; i--)
        sstr[i] = sstr[i + 1] * (size_t)src->shape[i + 1];
    const float *s = src->data;
    float *d = (*out)->data;
    size_t n = (*out)->nelem, idx[EMOE_MAX_DIMS] = {0};
    for (size_t k = 0; k < n; k++) {
        size_t off = 0;
        for (int a = 0; a < ndim; a++)
            off += idx[a] * sstr[perm[a]];
        d[k] = s[off];
        for (int a = ndim - 1; a >= 0; a--) {
            if (++idx[a] < (size_t)dshape[a])
                break;
            idx[a] = 0;
        }
    }
    return EMOE_OK;
}

static int shape_is(const struct emoe_tensor *t, int ndim, const int64_t *s)
{
    if (t->ndim != ndim)
        return 0;
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != s[i])
            return 0;
    return 1;
}

static int bad_shape(struct source *s, const char *member, const struct emoe_tensor *t,
                     struct emoe_error *err)
{
    char b[96];
    return emoe_error_set(err, EMOE_EFORMAT, "%s: tensor '%s': unexpected shape %s", s->path,
                          member, emoe_shape_format(t->ndim, t->shape, b, sizeof b));
}

/*
 * Google's layout (timm's _load_weights): embedding/kernel [P,P,C,D] (HWIO), cls,
 * Transformer/posembed_input/pos_embedding, Transformer/encoderblock_N/
 * {LayerNorm_0, MultiHeadDotProductAttention_1/{query,key,value,out}, LayerNorm_2,
 * MlpBlock_3/Dense_{0,1}}, Transformer/encoder_norm, head.
 */
static int npz_find(struct source *s, const struct emoe_param_spec *spec,
                    struct emoe_tensor **out, struct emoe_error *err)
{
    const char *name = spec->name;
    char mem[160];
    int blk = -1, used = 0;
    struct emoe_tensor *t = NULL;
    int rc;
    if (strncmp(name, "vit.", 4) != 0)
        return emoe_error_set(err, EMOE_ENOTFOUND, "%s: no tensor for '%s'", s->path, name);
    const char *n = name + 4;
    if (sscanf(n, "blocks.%d.%n", &blk, &used) == 1 && used > 0) {
        const char *r = n + used;
        const char *sub = NULL;
        const char *pre = "Transformer/encoderblock_";
        if (!strcmp(r, "norm1.weight"))
            sub = "LayerNorm_0/scale";
        else if (!strcmp(r, "norm1.bias"))
            sub = "LayerNorm_0/bias";
        else if (!strcmp(r, "norm2.weight"))
            sub = "LayerNorm_2/scale";
        else if (!strcmp(r, "norm2.bias"))
            sub = "LayerNorm_2/bias";
        else if (!strcmp(r, "mlp.fc1.weight"))
            sub = "MlpBlock_3/Dense_0/kernel";
        else if (!strcmp(r, "mlp.fc1.bias"))
            sub = "MlpBlock_3/Dense_0/bias";
        else if (!strcmp(r, "mlp.fc2.weight"))
            sub = "MlpBlock_3/Dense_1/kernel";
        else if (!strcmp(r, "mlp.fc2.bias"))
            sub = "MlpBlock_3/Dense_1/bias";
        if (sub) {
            snprintf(mem, sizeof mem, "%s%d/%s", pre, blk, sub);
            if ((rc = npz_member(s, mem, &t, err)))
                return rc;
            if (strstr(sub, "kernel")) { /* [in, out] -> [out, in] */
                int perm[2] = {1, 0};
                if (t->ndim != 2 || t->shape[1] != spec->shape[0] ||
                    t->shape[0] != spec->shape[1]) {
                    rc = bad_shape(s, mem, t, err);
                } else {
                    rc = permuted(t, perm, 2, spec->shape, out, err);
                }
                emoe_tensor_free(t);
                return rc;
            }
            *out = t;
            return EMOE_OK;
        }
        const char *att = "MultiHeadDotProductAttention_1";
        int64_t D = spec->shape[spec->ndim - 1];
        if (!strcmp(r, "attn.qkv.weight") || !strcmp(r, "attn.qkv.bias")) {
            int is_w = !strcmp(r, "attn.qkv.weight");
            D = is_w ? spec->shape[1] : spec->shape[0] / 3;
            rc = emoe_tensor_new(EMOE_F32, spec->ndim, spec->shape, out, err);
            if (rc)
                return rc;
            static const char *const qkv[3] = {"query", "key", "value"};
            for (int k = 0; k < 3 && !rc; k++) {
                snprintf(mem, sizeof mem, "%s%d/%s/%s/%s", pre, blk, att, qkv[k],
                         is_w ? "kernel" : "bias");
                if ((rc = npz_member(s, mem, &t, err)))
                    break;
                float *dst = (float *)(*out)->data + (size_t)k * D * (is_w ? (size_t)D : 1);
                if (is_w) { /* kernel [D, H, hd] = [in, out]: dst[o, i] = kernel[i, o] */
                    if (t->ndim != 3 || t->shape[0] != D || t->shape[1] * t->shape[2] != D) {
                        rc = bad_shape(s, mem, t, err);
                    } else {
                        const float *k3 = t->data;
                        for (int64_t o = 0; o < D; o++)
                            for (int64_t i = 0; i < D; i++)
                                dst[o * D + i] = k3[i * D + o];
                    }
                } else { /* bias [H, hd] */
                    if (t->ndim != 2 || t->shape[0] * t->shape[1] != D)
                        rc = bad_shape(s, mem, t, err);
                    else
                        memcpy(dst, t->data, (size_t)D * sizeof(float));
                }
                emoe_tensor_free(t);
            }
            if (rc) {
                emoe_tensor_free(*out);
                *out = NULL;
            }
            return rc;
        }
        if (!strcmp(r, "attn.proj.weight")) { /* out/kernel [H, hd, D] = [in, out] */
            snprintf(mem, sizeof mem, "%s%d/%s/out/kernel", pre, blk, att);
            if ((rc = npz_member(s, mem, &t, err)))
                return rc;
            D = spec->shape[0];
            if (t->ndim != 3 || t->shape[0] * t->shape[1] != D || t->shape[2] != D) {
                rc = bad_shape(s, mem, t, err);
            } else {
                rc = emoe_tensor_new(EMOE_F32, 2, spec->shape, out, err);
                if (!rc) {
                    const float *k3 = t->data;
                    float *dst = (*out)->data;
                    for (int64_t o = 0; o < D; o++)
                        for (int64_t i = 0; i < D; i++)
                            dst[o * D + i] = k3[i * D + o];
                }
            }
            emoe_tensor_free(t);
            return rc;
        }
        if (!strcmp(r, "attn.proj.bias")) {
            snprintf(mem, sizeof mem, "%s%d/%s/out/bias", pre, blk, att);
            return npz_member(s, mem, out, err);
        }
        return emoe_error_set(err, EMOE_ENOTFOUND, "%s: no tensor for '%s'", s->path, name);
    }
    if (!strcmp(n, "cls_token"))
        return npz_member(s, "cls", out, err);
    if (!strcmp(n, "pos_embed"))
        return npz_member(s, "Transformer/posembed_input/pos_embedding", out, err);
    if (!strcmp(n, "norm.weight"))
        return npz_member(s, "Transformer/encoder_norm/scale", out, err);
    if (!strcmp(n, "norm.bias"))
        return npz_member(s, "Transformer/encoder_norm/bias", out, err);
    if (!strcmp(n, "patch_embed.proj.bias"))
        return npz_member(s, "embedding/bias", out, err);
    if (!strcmp(n, "head.bias"))
        return npz_member(s, "head/bias", out, err);
    if (!strcmp(n, "head.weight") || !strcmp(n, "patch_embed.proj.weight")) {
        int is_head = !strcmp(n, "head.weight");
        const char *mname = is_head ? "head/kernel" : "embedding/kernel";
        if ((rc = npz_member(s, mname, &t, err)))
            return rc;
        if (is_head) { /* [D, K] -> [K, D] */
            int perm[2] = {1, 0};
            if (t->ndim != 2 || t->shape[0] != spec->shape[1] || t->shape[1] != spec->shape[0])
                rc = bad_shape(s, mname, t, err);
            else
                rc = permuted(t, perm, 2, spec->shape, out, err);
        } else if (spec->ndim == 4) { /* [P, P, C, D] -> [D, C, P, P] */
            int perm[4] = {3, 2, 0, 1};
            if (t->ndim != 4 || t->shape[3] != spec->shape[0] || t->shape[2] != spec->shape[1] ||
                t->shape[0] != spec->shape[2] || t->shape[1] != spec->shape[3])
                rc = bad_shape(s, mname, t, err);
            else
                rc = permuted(t, perm, 4, spec->shape, out, err);
        } else { /* [P, P, P, C, D] -> [D, C, P, P, P] */
            int perm[5] = {4, 3, 0, 1, 2};
            if (t->ndim != 5 || t->shape[4] != spec->shape[0] || t->shape[3] != spec->shape[1] ||
                t->shape[0] != spec->shape[2] || t->shape[1] != spec->shape[3] ||
                t->shape[2] != spec->shape[4])
                rc = bad_shape(s, mname, t, err);
            else
                rc = permuted(t, perm, 5, spec->shape, out, err);
        }
        emoe_tensor_free(t);
        return rc;
    }
    return emoe_error_set(err, EMOE_ENOTFOUND, "%s: no tensor for '%s'", s->path, name);
}

/* n = r * r (r >= 1) gives r, else -1; n comes from a file (a token count minus one), so
 * it may be -1 or huge. */
static int isqrt_exact(int64_t n)
{
    if (n < 1 || n > ((int64_t)1 << 60))
        return -1;
    int64_t r = (int64_t)llround(sqrt((double)n));
    return r * r == n ? (int)r : -1;
}

static int icbrt_exact(int64_t n)
{
    if (n < 1 || n > ((int64_t)1 << 60))
        return -1;
    int64_t r = (int64_t)llround(cbrt((double)n));
    return r * r * r == n ? (int)r : -1;
}

/* Copy t into dst (spec's shape), resampling a position embedding when needed. */
static int place(struct source *s, struct emoe_model *m, const struct emoe_param_spec *spec,
                 const struct emoe_tensor *t, float *dst, struct emoe_error *err)
{
    size_t numel = 1;
    for (int i = 0; i < spec->ndim; i++)
        numel *= (size_t)spec->shape[i];
    if (t->nelem == numel && (shape_is(t, spec->ndim, spec->shape) ||
                              (spec->ndim == 0 && t->nelem == 1))) {
        memcpy(dst, t->data, numel * sizeof(float));
        return EMOE_OK;
    }
    char b1[96], b2[96];
    emoe_shape_format(t->ndim, t->shape, b1, sizeof b1);
    emoe_shape_format(spec->ndim, spec->shape, b2, sizeof b2);
    const struct emoe_vit_config *c = emoe_model_config(m);
    if (strcmp(spec->name, "vit.pos_embed") == 0 && t->ndim == 3 && t->shape[0] == 1 &&
        t->shape[2] == spec->shape[2] && c->image_ndim == 2) {
        int gi = isqrt_exact(t->shape[1] - 1);
        int gh = c->image_size[0] / c->patch_size, gw = c->image_size[1] / c->patch_size;
        if (gi > 0)
            return emoe_pos_embed_resample(dst, t->data, 1, gi, gi, gh, gw,
                                           (int)spec->shape[2], EMOE_INTERP_BILINEAR, err);
    }
    if (strcmp(spec->name, "vit.pos_embed") == 0 && t->ndim == 3 && t->shape[0] == 1 &&
        t->shape[2] == spec->shape[2] && c->image_ndim == 3) {
        int gi = icbrt_exact(t->shape[1] - 1);
        int gd = c->image_size[0] / c->patch_size, gh = c->image_size[1] / c->patch_size;
        int gw = c->image_size[2] / c->patch_size;
        if (gi > 0)
            return emoe_pos_embed_resample3d(dst, t->data, 1, gi, gi, gi, gd, gh, gw,
                                             (int)spec->shape[2], EMOE_INTERP_BILINEAR, err);
    }
    return emoe_error_set(err, EMOE_EFORMAT, "%s: tensor '%s' has shape %s, the model needs %s",
                          s->path, spec->name, b1, b2);
}

static int read_head(const char *path, unsigned char *head, size_t *n, struct emoe_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return emoe_error_set(err, EMOE_EIO, "%s: %s", path, strerror(errno));
    *n = fread(head, 1, 16, f);
    fclose(f);
    return EMOE_OK;
}

int emoe_checkpoint_load(struct emoe_model *m, const char *path, unsigned flags,
                         size_t *missing, struct emoe_error *err)
{
    if (missing)
        *missing = 0;
    unsigned char head[16];
    size_t hn = 0;
    int rc = read_head(path, head, &hn, err);
    if (rc)
        return rc;
    struct source s = {path, NULL, NULL};
    enum emoe_file_kind kind = emoe_file_kind_detect(head, hn);
    if (kind == EMOE_FILE_NPZ)
        rc = emoe_npz_open(path, &s.z, err);
    else if (kind == EMOE_FILE_SAFETENSORS)
        rc = emoe_safetensors_open(path, &s.st, err);
    else
        return emoe_error_set(err, EMOE_EFORMAT, "%s: not a .safetensors or .npz checkpoint",
                              path);
    if (rc)
        return rc;
    size_t numel = emoe_model_numel(m), miss = 0;
    float *stage = emoe_alloc_aligned(numel * sizeof(float));
    if (!stage) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    memcpy(stage, emoe_model_params(m), numel * sizeof(float));
    for (size_t i = 0; i < emoe_model_param_count(m); i++) {
        struct emoe_param *p = emoe_model_param_at(m, i);
        if ((flags & EMOE_LOAD_SKIP_HEAD) && strncmp(p->spec->name, "vit.head.", 9) == 0)
            continue;
        struct emoe_tensor *t = NULL;
        rc = s.st ? st_find(&s, p->spec->name, &t, err) : npz_find(&s, p->spec, &t, err);
        if (rc == EMOE_ENOTFOUND && (flags & EMOE_LOAD_ALLOW_MISSING)) {
            miss++;
            rc = EMOE_OK;
            continue;
        }
        if (rc)
            goto done;
        rc = place(&s, m, p->spec, t, stage + (p->data - emoe_model_params(m)), err);
        emoe_tensor_free(t);
        if (rc)
            goto done;
    }
    memcpy(emoe_model_params(m), stage, numel * sizeof(float));
    if (missing)
        *missing = miss;
done:
    emoe_free_aligned(stage);
    emoe_safetensors_close(s.st);
    if (s.z)
        emoe_npz_close(s.z);
    return rc;
}

/* --------------------------------------------------------- training state */

int emoe_train_state_save(struct emoe_model *m, struct emoe_adamw *o,
                          const struct emoe_train_state *s, const char *path,
                          struct emoe_error *err)
{
    size_t np = emoe_model_param_count(m);
    if (emoe_adamw_numel(o) != emoe_model_trainable_numel(m))
        return emoe_error_set(err, EMOE_EINVAL, "%s: optimizer does not match the model", path);
    struct wrapped w;
    int rc = wrapped_alloc(&w, 2 * np, err);
    size_t off = 0;
    float *mm = emoe_adamw_m(o), *vv = emoe_adamw_v(o);
    for (size_t i = 0; !rc && i < np; i++) {
        struct emoe_param *p = emoe_model_param_at(m, i);
        if (!p->grad)
            continue;
        if (off + p->numel > emoe_model_trainable_numel(m)) {
            rc = emoe_error_set(err, EMOE_EINVAL, "%s: optimizer does not match the model",
                                path);
            break;
        }
        rc = wrap_add(&w, "adamw.m.", p->spec, mm + off, err);
        if (!rc)
            rc = wrap_add(&w, "adamw.v.", p->spec, vv + off, err);
        off += p->numel;
    }
    char v[4][32];
    snprintf(v[0], sizeof v[0], "%lld", (long long)emoe_adamw_get_step(o));
    snprintf(v[1], sizeof v[1], "%llu", (unsigned long long)s->seed);
    snprintf(v[2], sizeof v[2], "%llu", (unsigned long long)s->data_epoch);
    snprintf(v[3], sizeof v[3], "%llu", (unsigned long long)s->data_pos);
    struct emoe_kv meta[5] = {{"emoe.version", "1"},        {"state.step", v[0]},
                              {"state.seed", v[1]},         {"state.data_epoch", v[2]},
                              {"state.data_pos", v[3]}};
    if (!rc)
        rc = emoe_safetensors_write(path, w.nt, w.n, meta, 5, err);
    wrapped_free(&w);
    return rc;
}

static int meta_u64(struct emoe_safetensors *st, const char *path, const char *key,
                    uint64_t *out, struct emoe_error *err)
{
    const char *v = emoe_safetensors_metadata_get(st, key);
    if (!v)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: metadata lacks '%s'", path, key);
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (!*v || *end || errno || *v == '-')
        return emoe_error_set(err, EMOE_EFORMAT, "%s: metadata '%s': bad value '%s'", path, key,
                              v);
    *out = x;
    return EMOE_OK;
}

int emoe_train_state_load(struct emoe_model *m, struct emoe_adamw *o,
                          struct emoe_train_state *s, const char *path, struct emoe_error *err)
{
    struct emoe_safetensors *st;
    int rc = emoe_safetensors_open(path, &st, err);
    if (rc)
        return rc;
    uint64_t step = 0;
    struct emoe_train_state ns = {0};
    if ((rc = meta_u64(st, path, "state.step", &step, err)) ||
        (rc = meta_u64(st, path, "state.seed", &ns.seed, err)) ||
        (rc = meta_u64(st, path, "state.data_epoch", &ns.data_epoch, err)) ||
        (rc = meta_u64(st, path, "state.data_pos", &ns.data_pos, err)))
        goto done;
    if (step > INT64_MAX) {
        rc = emoe_error_set(err, EMOE_EFORMAT, "%s: step out of range", path);
        goto done;
    }
    ns.step = (int64_t)step;
    size_t n = emoe_model_trainable_numel(m);
    float *mm = NULL, *vv = NULL;
    if (emoe_adamw_numel(o) != n) {
        rc = emoe_error_set(err, EMOE_EINVAL, "%s: optimizer does not match the model", path);
        goto done;
    }
    if (n) {
        mm = malloc(n * sizeof *mm);
        vv = malloc(n * sizeof *vv);
        if (!mm || !vv) {
            free(mm);
            free(vv);
            rc = emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", path);
            goto done;
        }
    }
    size_t off = 0;
    for (size_t i = 0; !rc && i < emoe_model_param_count(m); i++) {
        struct emoe_param *p = emoe_model_param_at(m, i);
        if (!p->grad)
            continue;
        for (int k = 0; k < 2 && !rc; k++) {
            char name[160];
            snprintf(name, sizeof name, "adamw.%c.%s", k ? 'v' : 'm', p->spec->name);
            struct emoe_tensor *t;
            rc = emoe_safetensors_get(st, name, &t, err);
            if (rc)
                break;
            if (t->dtype != EMOE_F32 || !shape_is(t, p->spec->ndim, p->spec->shape)) {
                char b[96];
                rc = emoe_error_set(err, EMOE_EFORMAT, "%s: tensor '%s': %s %s does not match "
                                    "the model", path, name, emoe_dtype_name(t->dtype),
                                    emoe_shape_format(t->ndim, t->shape, b, sizeof b));
            } else {
                memcpy((k ? vv : mm) + off, t->data, p->numel * sizeof(float));
            }
            emoe_tensor_free(t);
        }
        off += p->numel;
    }
    if (!rc) {
        if (n) {
            memcpy(emoe_adamw_m(o), mm, n * sizeof *mm);
            memcpy(emoe_adamw_v(o), vv, n * sizeof *vv);
        }
        emoe_adamw_set_step(o, ns.step);
        if (s)
            *s = ns;
    }
    free(mm);
    free(vv);
done:
    emoe_safetensors_close(st);
    return rc;
}
