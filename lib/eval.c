/*
 * eval.c: evaluation of a model on a dataset (emoe-eval): building the model a
 * checkpoint describes, checking the data against it, and one pass over the data in
 * evaluation mode that accumulates top-1/top-5/loss/confusion (classification) or
 * MAE/RMSE/R^2 (regression, the outputs scaled back to the targets' units with the
 * checkpoint's data.target_mean and data.target_std), the routing statistics of every MoE layer (METHOD.md
 * section 5) and, on request, logits, features and predictions.
 */
#include "config.h"
#include "emoe.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_BATCH 64
#define MAX_EXPERTS 4096 /* emoe_moe_config_check's limit */

int emoe_model_load(const char *path, struct emoe_model **model, struct emoe_moe **moe,
                    struct emoe_error *err)
{
    *model = NULL;
    *moe = NULL;
    struct emoe_vit_config cfg;
    struct emoe_moe_config mc;
    int rc = emoe_checkpoint_read_config(path, &cfg, err);
    if (rc != EMOE_OK)
        return rc;
    rc = emoe_moe_config_from_checkpoint(path, &mc, err);
    if (rc != EMOE_OK)
        return rc;
    struct emoe_param_spec *specs = NULL;
    size_t nspecs = 0;
    if (mc.router != EMOE_ROUTER_NONE) {
        rc = emoe_moe_config_check(&mc, cfg.embed_dim, cfg.depth, err);
        if (rc == EMOE_OK)
            rc = emoe_moe_param_specs(&mc, cfg.embed_dim, cfg.depth, &specs, &nspecs, err);
        if (rc != EMOE_OK) {
            emoe_error_prefix(err, path);
            return rc;
        }
    }
    struct emoe_model *m = NULL;
    struct emoe_moe *b = NULL;
    rc = emoe_model_new(&cfg, specs, nspecs, &m, err);
    free(specs);
    if (rc != EMOE_OK) {
        emoe_error_prefix(err, path);
        return rc;
    }
    if (mc.router != EMOE_ROUTER_NONE) {
        rc = emoe_moe_new(&mc, m, &b, err);
        if (rc != EMOE_OK) {
            emoe_error_prefix(err, path);
            emoe_model_free(m);
            return rc;
        }
    }
    /* after emoe_moe_new, whose initialisation the file's weights then replace */
    rc = emoe_checkpoint_load(m, path, 0, NULL, err);
    if (rc != EMOE_OK) {
        emoe_moe_free(b);
        emoe_model_free(m);
        return rc;
    }
    *model = m;
    *moe = b;
    return EMOE_OK;
}

/* Images of d against the model's input. */
static int check_images(const struct emoe_vit_config *c, const struct emoe_dataset *d,
                        const char *name, struct emoe_error *err)
{
    const struct emoe_tensor *im = d ? d->images : NULL;
    char a[96], b[96];
    if (!im || !d->labels)
        return emoe_error_set(err, EMOE_EINVAL, "%s: no images or labels", name);
    int want = c->image_ndim + 2;
    if (im->ndim != want || (im->dtype != EMOE_U8 && im->dtype != EMOE_F32))
        return emoe_error_set(err, EMOE_EINVAL,
                              "%s: images are %s %s, the model takes %s [N, %s, %d]", name,
                              emoe_dtype_name(im->dtype),
                              emoe_shape_format(im->ndim, im->shape, a, sizeof a),
                              c->image_ndim == 3 ? "f32" : "u8",
                              c->image_ndim == 3 ? "D, H, W" : "H, W", c->in_chans);
    if (im->shape[0] < 1)
        return emoe_error_set(err, EMOE_EINVAL, "%s: no images", name);
    if (im->shape[0] > INT32_MAX)
        return emoe_error_set(err, EMOE_ERANGE, "%s: too many images (%lld)", name,
                              (long long)im->shape[0]);
    int same = 1;
    int64_t ms[3];
    for (int i = 0; i < c->image_ndim; i++) {
        ms[i] = c->image_size[i];
        same &= im->shape[1 + i] == ms[i];
    }
    if (!same)
        return emoe_error_set(err, EMOE_EINVAL, "%s: images are %s, the model takes %s", name,
                              emoe_shape_format(c->image_ndim, im->shape + 1, a, sizeof a),
                              emoe_shape_format(c->image_ndim, ms, b, sizeof b));
    if (im->shape[im->ndim - 1] != c->in_chans)
        return emoe_error_set(err, EMOE_EINVAL,
                              "%s: images have %lld channels, the model takes %d", name,
                              (long long)im->shape[im->ndim - 1], c->in_chans);
    if (d->labels->ndim != 1 || d->labels->shape[0] != im->shape[0])
        return emoe_error_set(err, EMOE_EINVAL, "%s: labels %s do not match %lld images", name,
                              emoe_shape_format(d->labels->ndim, d->labels->shape, a, sizeof a),
                              (long long)im->shape[0]);
    return EMOE_OK;
}

/* Label i of an integer label tensor (i32 or i64). */
static int64_t label_at(const struct emoe_tensor *t, size_t i)
{
    return t->dtype == EMOE_I64 ? ((const int64_t *)t->data)[i]
                                : ((const int32_t *)t->data)[i];
}

int emoe_eval_check_data(const struct emoe_model *m, const struct emoe_dataset *d,
                         const char *name, struct emoe_error *err)
{
    const struct emoe_vit_config *c = emoe_model_config(m);
    if (!name)
        name = "dataset";
    int rc = check_images(c, d, name, err);
    if (rc != EMOE_OK)
        return rc;
    const struct emoe_tensor *lb = d->labels;
    if (c->task == EMOE_TASK_REGRESS) {
        if (lb->dtype != EMOE_F32)
            return emoe_error_set(err, EMOE_EINVAL,
                                  "%s: labels are %s, the regression model needs f32 targets",
                                  name, emoe_dtype_name(lb->dtype));
        const float *t = lb->data;
        for (size_t i = 0; i < lb->nelem; i++)
            if (!isfinite(t[i]))
                return emoe_error_set(err, EMOE_EINVAL, "%s: target %zu is not finite", name,
                                      i);
        return EMOE_OK;
    }
    if (lb->dtype != EMOE_I64 && lb->dtype != EMOE_I32)
        return emoe_error_set(err, EMOE_EINVAL,
                              "%s: labels are %s, the classifier needs integer labels", name,
                              emoe_dtype_name(lb->dtype));
    if (d->classes && d->nclasses != (size_t)c->num_classes)
        return emoe_error_set(err, EMOE_EINVAL, "%s: %zu classes, the model has %d", name,
                              d->nclasses, c->num_classes);
    for (size_t i = 0; i < lb->nelem; i++) {
        int64_t v = label_at(lb, i);
        if (v < 0 || v >= c->num_classes)
            return emoe_error_set(err, EMOE_EINVAL,
                                  "%s: label %lld of image %zu is outside the model's %d "
                                  "classes",
                                  name, (long long)v, i, c->num_classes);
    }
    return EMOE_OK;
}

void emoe_eval_options_init(struct emoe_eval_options *o)
{
    memset(o, 0, sizeof *o);
    o->batch = DEFAULT_BATCH;
    o->target.mean = 0.0;
    o->target.std = 1.0;
}

static int meta_double(const struct emoe_safetensors *st, const char *path, const char *key,
                       double *out, struct emoe_error *err)
{
    const char *v = emoe_safetensors_metadata_get(st, key);
    char *end;
    errno = 0;
    double x = v ? strtod(v, &end) : 0.0;
    if (!v || !*v || *end || errno || !isfinite(x))
        return emoe_error_set(err, EMOE_EFORMAT, "%s: metadata '%s': '%s' is not a finite "
                              "number", path, key, v ? v : "");
    *out = x;
    return EMOE_OK;
}

int emoe_eval_target_scale(const char *path, struct emoe_target_scale *ts,
                           struct emoe_error *err)
{
    struct emoe_safetensors *st;
    int rc = emoe_safetensors_open(path, &st, err);
    if (rc)
        return rc;
    int has_mean = emoe_safetensors_metadata_get(st, EMOE_TARGET_MEAN_KEY) != NULL;
    int has_std = emoe_safetensors_metadata_get(st, EMOE_TARGET_STD_KEY) != NULL;
    struct emoe_target_scale t = {0.0, 1.0};
    if (has_mean != has_std)
        rc = emoe_error_set(err, EMOE_EFORMAT, "%s: metadata has '%s' without '%s'", path,
                            has_mean ? EMOE_TARGET_MEAN_KEY : EMOE_TARGET_STD_KEY,
                            has_mean ? EMOE_TARGET_STD_KEY : EMOE_TARGET_MEAN_KEY);
    else if (has_mean &&
             !(rc = meta_double(st, path, EMOE_TARGET_MEAN_KEY, &t.mean, err)) &&
             !(rc = meta_double(st, path, EMOE_TARGET_STD_KEY, &t.std, err)) && !(t.std > 0))
        rc = emoe_error_set(err, EMOE_EFORMAT, "%s: metadata '%s': %g is not positive", path,
                            EMOE_TARGET_STD_KEY, t.std);
    emoe_safetensors_close(st);
    if (!rc)
        *ts = t;
    return rc;
}

void emoe_eval_result_free(struct emoe_eval_result *r)
{
    if (!r)
        return;
    free(r->class_count);
    free(r->class_correct);
    free(r->confusion);
    free(r->layers);
    emoe_tensor_free(r->routing);
    emoe_tensor_free(r->logits);
    emoe_tensor_free(r->features);
    free(r->pred);
    free(r->score);
    memset(r, 0, sizeof *r);
}

/* Rank of logit y in row z [K]: logits greater, plus equal ones at lower indices. */
static int label_rank(const float *z, int K, int y)
{
    int rank = 0;
    for (int k = 0; k < K; k++)
        rank += z[k] > z[y] || (z[k] == z[y] && k < y);
    return rank;
}

/* Arg max (first maximum) of z [K] and its softmax probability. */
static int argmax_prob(const float *z, int K, float *prob)
{
    int best = 0;
    for (int k = 1; k < K; k++)
        if (z[k] > z[best])
            best = k;
    double s = 0;
    for (int k = 0; k < K; k++)
        s += exp((double)z[k] - (double)z[best]);
    *prob = (float)(1.0 / s);
    return best;
}

struct accum {
    double loss_sum;            /* classify: sum of per-batch mean CE times B */
    double abs_sum, sq_sum, res_sum; /* regress */
};

int emoe_evaluate(struct emoe_model *m, struct emoe_moe *moe, const struct emoe_dataset *d,
                  const struct emoe_eval_options *o, struct emoe_eval_result *r,
                  struct emoe_error *err)
{
    memset(r, 0, sizeof *r);
    struct emoe_eval_options defaults;
    if (!o) {
        emoe_eval_options_init(&defaults);
        o = &defaults;
    }
    const char *name = o->name ? o->name : "dataset";
    int rc = emoe_eval_check_data(m, d, name, err);
    if (rc != EMOE_OK)
        return rc;
    const struct emoe_vit_config *c = emoe_model_config(m);
    const struct emoe_tensor *im = d->images, *lb = d->labels;
    int classify = c->task == EMOE_TASK_CLASSIFY;
    double tmean = o->target.mean, tstd = o->target.std;
    if (!classify && !(isfinite(tmean) && isfinite(tstd) && tstd > 0))
        return emoe_error_set(err, EMOE_EINVAL, "%s: invalid target scale (mean %g, std %g)",
                              name, tmean, tstd);
    int K = c->num_classes, D = c->embed_dim, batch = o->batch > 0 ? o->batch : DEFAULT_BATCH;
    size_t N = (size_t)im->shape[0], sample_bytes = im->nbytes / N;
    if ((size_t)batch > N)
        batch = (int)N;
    int Kr = classify ? K : 1; /* classes of the routing tensor */
    int L = moe ? emoe_moe_layers(moe) : 0;

    r->task = c->task;
    r->count = N;
    r->nclasses = K;
    int64_t *counts = NULL;
    int32_t *ybuf = malloc((size_t)batch * sizeof *ybuf);
    if (!ybuf)
        goto nomem;
    if (classify) {
        r->class_count = calloc((size_t)K, sizeof *r->class_count);
        r->class_correct = calloc((size_t)K, sizeof *r->class_correct);
        if (!r->class_count || !r->class_correct)
            goto nomem;
        size_t kk;
        if (o->keep_confusion && emoe_size_mul(&kk, (size_t)K, (size_t)K) != EMOE_OK) {
            rc = emoe_error_set(err, EMOE_ERANGE, "%s: a confusion matrix of %d classes is "
                                "too large", name, K);
            goto fail;
        }
        if (o->keep_confusion && !(r->confusion = calloc(kk, sizeof *r->confusion)))
            goto nomem;
    }
    int64_t shape[2] = {(int64_t)N, K};
    if (o->keep_logits && (rc = emoe_tensor_new(EMOE_F32, 2, shape, &r->logits, err)))
        goto fail;
    shape[1] = D;
    if (o->keep_features && (rc = emoe_tensor_new(EMOE_F32, 2, shape, &r->features, err)))
        goto fail;
    if (o->keep_predictions) {
        r->score = malloc(N * sizeof *r->score);
        if (!r->score || (classify && !(r->pred = malloc(N * sizeof *r->pred))))
            goto nomem;
    }
    if ((rc = emoe_model_reserve(m, batch, 0, err)))
        goto fail;
    if (moe)
        emoe_moe_stats_reset(moe);

    double target_mean = 0;
    if (!classify) {
        const float *t = lb->data;
        for (size_t i = 0; i < N; i++)
            target_mean += t[i];
        target_mean /= (double)N;
    }
    struct accum acc = {0};
    for (size_t start = 0; start < N; start += (size_t)batch) {
        int B = (int)(N - start < (size_t)batch ? N - start : (size_t)batch);
        const unsigned char *x = (const unsigned char *)im->data + start * sample_bytes;
        if ((rc = emoe_model_forward(m, x, im->dtype, B, 0, err)))
            goto fail;
        const float *z = emoe_model_logits(m), *f = emoe_model_features(m);
        for (size_t i = 0; i < (size_t)B * (size_t)K; i++)
            if (!isfinite(z[i])) {
                rc = emoe_error_set(err, EMOE_ENUMERIC,
                                    "%s: the output for image %zu is not finite", name,
                                    start + i / (size_t)K);
                goto fail;
            }
        for (int b = 0; b < B; b++)
            ybuf[b] = classify ? (int32_t)label_at(lb, start + (size_t)b) : 0;
        if (classify) {
            double loss;
            if ((rc = emoe_cross_entropy(&loss, NULL, NULL, z, ybuf, B, K, 0.0f, err)))
                goto fail;
            acc.loss_sum += loss * B;
            for (int b = 0; b < B; b++) {
                const float *zb = z + (size_t)b * K;
                float prob;
                int p = argmax_prob(zb, K, &prob), y = ybuf[b];
                r->correct1 += p == y;
                r->correct5 += label_rank(zb, K, y) < 5;
                r->class_count[y]++;
                r->class_correct[y] += p == y;
                if (r->confusion)
                    r->confusion[(size_t)y * K + p]++;
                if (o->keep_predictions) {
                    r->pred[start + b] = p;
                    r->score[start + b] = prob;
                }
            }
        } else {
            const float *t = (const float *)lb->data + start;
            for (int b = 0; b < B; b++) {
                double pred = tmean + tstd * (double)z[(size_t)b * K], e = pred - t[b],
                       dm = t[b] - target_mean;
                acc.abs_sum += fabs(e);
                acc.sq_sum += e * e;
                acc.res_sum += dm * dm;
                if (o->keep_predictions)
                    r->score[start + b] = (float)pred;
            }
        }
        if (L > 0 && (rc = emoe_moe_stats_add_labels(moe, ybuf, B, Kr, err)))
            goto fail;
        if (r->logits)
            memcpy((float *)r->logits->data + start * (size_t)K, z,
                   (size_t)B * (size_t)K * sizeof(float));
        if (r->features)
            memcpy((float *)r->features->data + start * (size_t)D, f,
                   (size_t)B * (size_t)D * sizeof(float));
        if (o->progress)
            o->progress(o->ctx, start + (size_t)B, N);
    }
    if (classify) {
        r->loss = acc.loss_sum / (double)N;
        r->top1 = (double)r->correct1 / (double)N;
        r->top5 = (double)r->correct5 / (double)N;
    } else {
        r->mae = acc.abs_sum / (double)N;
        r->rmse = sqrt(acc.sq_sum / (double)N);
        r->r2 = acc.res_sum > 0 ? 1.0 - acc.sq_sum / acc.res_sum : NAN;
        r->loss = r->mae;
    }

    if (L > 0) {
        /* E is not exposed by the MoE API but each summary carries it; the count
         * buffer takes the largest E a configuration allows */
        counts = malloc(MAX_EXPERTS * sizeof *counts);
        r->layers = calloc((size_t)L, sizeof *r->layers);
        if (!counts || !r->layers)
            goto nomem;
        r->nlayers = L;
        for (int l = 0; l < L; l++) {
            r->layers[l].block = emoe_moe_layer_block(moe, l);
            if ((rc = emoe_moe_layer_stats(moe, l, 1, counts, &r->layers[l].routing, err)))
                goto fail;
        }
        int E = r->layers[0].routing.experts, kk = 0;
        const float *cc = emoe_moe_class_counts(moe, &kk);
        int64_t rs[3] = {L, E, Kr};
        if ((rc = emoe_tensor_new(EMOE_F32, 3, rs, &r->routing, err)))
            goto fail;
        if (cc && kk == Kr)
            memcpy(r->routing->data, cc, r->routing->nbytes);
    }
    free(ybuf);
    free(counts);
    return EMOE_OK;
nomem:
    rc = emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", name);
fail:
    free(ybuf);
    free(counts);
    emoe_eval_result_free(r);
    return rc;
}

int emoe_eval_features(struct emoe_model *m, const struct emoe_dataset *d, int batch,
                       const char *name, struct emoe_tensor **features, int32_t **labels,
                       struct emoe_error *err)
{
    *features = NULL;
    if (labels)
        *labels = NULL;
    if (!name)
        name = "dataset";
    const struct emoe_vit_config *c = emoe_model_config(m);
    int rc = check_images(c, d, name, err);
    if (rc != EMOE_OK)
        return rc;
    const struct emoe_tensor *im = d->images, *lb = d->labels;
    if (labels && lb->dtype != EMOE_I64 && lb->dtype != EMOE_I32)
        return emoe_error_set(err, EMOE_EINVAL, "%s: labels are %s, not class labels", name,
                              emoe_dtype_name(lb->dtype));
    size_t N = (size_t)im->shape[0], sample_bytes = im->nbytes / N;
    int D = c->embed_dim;
    if (batch <= 0)
        batch = DEFAULT_BATCH;
    if ((size_t)batch > N)
        batch = (int)N;
    int32_t *y = NULL;
    if (labels) {
        y = malloc(N * sizeof *y);
        if (!y)
            return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", name);
        for (size_t i = 0; i < N; i++) {
            int64_t v = label_at(lb, i);
            if (v < 0 || v > INT32_MAX) {
                free(y);
                return emoe_error_set(err, EMOE_EINVAL, "%s: label %lld of image %zu is out "
                                      "of range", name, (long long)v, i);
            }
            y[i] = (int32_t)v;
        }
    }
    struct emoe_tensor *f = NULL;
    int64_t shape[2] = {(int64_t)N, D};
    if ((rc = emoe_tensor_new(EMOE_F32, 2, shape, &f, err)) ||
        (rc = emoe_model_reserve(m, batch, 0, err)))
        goto fail;
    for (size_t start = 0; start < N; start += (size_t)batch) {
        int B = (int)(N - start < (size_t)batch ? N - start : (size_t)batch);
        const unsigned char *x = (const unsigned char *)im->data + start * sample_bytes;
        if ((rc = emoe_model_forward(m, x, im->dtype, B, 0, err)))
            goto fail;
        const float *src = emoe_model_features(m);
        float *dst = (float *)f->data + start * (size_t)D;
        for (size_t i = 0; i < (size_t)B * (size_t)D; i++) {
            if (!isfinite(src[i])) {
                rc = emoe_error_set(err, EMOE_ENUMERIC,
                                    "%s: the features of image %zu are not finite", name,
                                    start + i / (size_t)D);
                goto fail;
            }
            dst[i] = src[i];
        }
    }
    *features = f;
    if (labels)
        *labels = y;
    return EMOE_OK;
fail:
    emoe_tensor_free(f);
    free(y);
    return rc;
}
