/*
 * train.c: the training loop of emoe-train (AdamW, LR schedule, clipping,
 * augmentation, validation, atomic checkpoints and exact resume).
 *
 * Data order: epoch e visits the samples in the permutation emoe_rng_shuffle(
 * seed_derive(seed, "data"), stream e); a batch is the next `batch` indices of it
 * (the last batch of an epoch may be smaller).  The training state records the
 * epoch and the position in it, the optimizer step and the seed, and augmentation
 * draws from (seed, step), so a resumed run repeats an uninterrupted one exactly.
 * Regression trains the L1 loss on standardised targets (t - mean) / std (METHOD.md
 * section 7), with mean and std saved in every checkpoint's metadata.
 * The library never prints: progress goes to the caller's log callback.
 */
#include "config.h"
#include "emoe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DATA_TAG 0x64617461ull    /* "data" */
#define AUGMENT_TAG 0x617567ull   /* "aug" */

void emoe_train_options_init(struct emoe_train_options *o)
{
    memset(o, 0, sizeof *o);
    o->epochs = 10;
    o->batch = 128;
    o->lr = 5e-4;
    o->weight_decay = 0.05;
    o->schedule = EMOE_LR_COSINE;
    o->clip = 1.0;
    o->log_every = 50;
    emoe_augment_init(&o->augment);
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Images per sample and checks of a dataset against the model. */
int emoe_train_check_data(struct emoe_model *m, const struct emoe_dataset *d, const char *name,
                          struct emoe_error *err)
{
    const struct emoe_vit_config *c = emoe_model_config(m);
    const struct emoe_tensor *im = d ? d->images : NULL, *lb = d ? d->labels : NULL;
    char a[96], b[96];
    if (!name)
        name = "dataset";
    if (!im || !lb)
        return emoe_error_set(err, EMOE_EINVAL, "%s: no images or labels", name);
    int want_ndim = c->image_ndim + 2;
    if (im->ndim != want_ndim || (im->dtype != EMOE_U8 && im->dtype != EMOE_F32))
        return emoe_error_set(err, EMOE_EFORMAT, "%s: images are %s %s, the model needs %s "
                              "[N, %s, C]", name, emoe_dtype_name(im->dtype),
                              emoe_shape_format(im->ndim, im->shape, a, sizeof a),
                              c->image_ndim == 3 ? "f32" : "u8",
                              c->image_ndim == 3 ? "D, H, W" : "H, W");
    if (lb->ndim != 1 || lb->shape[0] != im->shape[0])
        return emoe_error_set(err, EMOE_EFORMAT, "%s: labels %s do not match %lld images", name,
                              emoe_shape_format(lb->ndim, lb->shape, a, sizeof a),
                              (long long)im->shape[0]);
    if (im->shape[0] < 1)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: no images", name);
    if (im->shape[0] > INT32_MAX)
        return emoe_error_set(err, EMOE_ERANGE, "%s: too many images", name);
    int same = 1;
    for (int i = 0; i < c->image_ndim; i++)
        same &= im->shape[1 + i] == c->image_size[i];
    if (!same) {
        int64_t ms[3];
        for (int i = 0; i < c->image_ndim; i++)
            ms[i] = c->image_size[i];
        return emoe_error_set(err, EMOE_EINVAL, "%s: images are %s, the model takes %s", name,
                              emoe_shape_format(c->image_ndim, im->shape + 1, a, sizeof a),
                              emoe_shape_format(c->image_ndim, ms, b, sizeof b));
    }
    if (im->shape[im->ndim - 1] != c->in_chans)
        return emoe_error_set(err, EMOE_EINVAL, "%s: images have %lld channels, the model takes "
                              "%d", name, (long long)im->shape[im->ndim - 1], c->in_chans);
    if (c->task == EMOE_TASK_REGRESS) {
        if (lb->dtype != EMOE_F32)
            return emoe_error_set(err, EMOE_EINVAL, "%s: labels are %s, regression needs f32 "
                                  "targets", name, emoe_dtype_name(lb->dtype));
        const float *t = lb->data;
        for (size_t i = 0; i < lb->nelem; i++)
            if (!isfinite(t[i]))
                return emoe_error_set(err, EMOE_EFORMAT, "%s: target %zu is not finite", name,
                                      i);
        return EMOE_OK;
    }
    if (lb->dtype != EMOE_I64 && lb->dtype != EMOE_I32)
        return emoe_error_set(err, EMOE_EINVAL, "%s: labels are %s, classification needs "
                              "integer labels (or a regression model)", name,
                              emoe_dtype_name(lb->dtype));
    if (d->nclasses && d->nclasses != (size_t)c->num_classes)
        return emoe_error_set(err, EMOE_EINVAL, "%s: %zu classes, the model has %d", name,
                              d->nclasses, c->num_classes);
    for (size_t i = 0; i < lb->nelem; i++) {
        int64_t v = lb->dtype == EMOE_I64 ? ((const int64_t *)lb->data)[i]
                                          : ((const int32_t *)lb->data)[i];
        if (v < 0 || v >= c->num_classes)
            return emoe_error_set(err, EMOE_EINVAL, "%s: label %lld of image %zu is outside "
                                  "the model's %d classes", name, (long long)v, i,
                                  c->num_classes);
    }
    return EMOE_OK;
}

int emoe_train_target_scale(const struct emoe_dataset *d, struct emoe_target_scale *ts,
                            struct emoe_error *err)
{
    const struct emoe_tensor *lb = d ? d->labels : NULL;
    if (!lb || lb->dtype != EMOE_F32 || lb->nelem == 0)
        return emoe_error_set(err, EMOE_EINVAL, "no regression targets (f32 labels)");
    const float *t = lb->data;
    double sum = 0.0, sq = 0.0;
    for (size_t i = 0; i < lb->nelem; i++) {
        if (!isfinite(t[i]))
            return emoe_error_set(err, EMOE_EINVAL, "target %zu is not finite", i);
        sum += t[i];
    }
    double mean = sum / (double)lb->nelem;
    for (size_t i = 0; i < lb->nelem; i++)
        sq += ((double)t[i] - mean) * ((double)t[i] - mean);
    double sd = sqrt(sq / (double)lb->nelem);
    ts->mean = mean;
    ts->std = isfinite(sd) && sd > 1e-12 * (fabs(mean) + 1.0) ? sd : 1.0;
    return EMOE_OK;
}

/* Batch assembly: samples idx[0..B) of d into x (bytes per sample: sb) and y
 * (regression targets standardised with ts). */
struct batch {
    unsigned char *x, *xaug;
    void *y;              /* int32 [B] or float [B] */
    size_t sample_bytes;
    int cap;
};

static int batch_alloc(struct batch *b, const struct emoe_dataset *d, int B,
                       struct emoe_error *err)
{
    memset(b, 0, sizeof *b);
    const struct emoe_tensor *im = d->images;
    b->sample_bytes = im->nbytes / (size_t)im->shape[0];
    size_t n;
    if (emoe_size_mul(&n, b->sample_bytes, (size_t)B))
        return emoe_error_set(err, EMOE_ERANGE, "batch too large");
    b->x = emoe_alloc_aligned(n);
    b->xaug = emoe_alloc_aligned(n);
    b->y = malloc((size_t)B * 4);
    b->cap = B;
    if (!b->x || !b->xaug || !b->y) {
        emoe_free_aligned(b->x);
        emoe_free_aligned(b->xaug);
        free(b->y);
        memset(b, 0, sizeof *b);
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory for a batch of %d", B);
    }
    return EMOE_OK;
}

static void batch_free(struct batch *b)
{
    emoe_free_aligned(b->x);
    emoe_free_aligned(b->xaug);
    free(b->y);
}

static void batch_fill(struct batch *b, const struct emoe_dataset *d, const size_t *idx, int B,
                       const struct emoe_target_scale *ts)
{
    const struct emoe_tensor *im = d->images, *lb = d->labels;
    for (int i = 0; i < B; i++) {
        size_t s = idx ? idx[i] : (size_t)i;
        memcpy(b->x + (size_t)i * b->sample_bytes,
               (const unsigned char *)im->data + s * b->sample_bytes, b->sample_bytes);
        if (lb->dtype == EMOE_F32)
            ((float *)b->y)[i] = (float)(((double)((const float *)lb->data)[s] - ts->mean) /
                                         ts->std);
        else if (lb->dtype == EMOE_I64)
            ((int32_t *)b->y)[i] = (int32_t)((const int64_t *)lb->data)[s];
        else
            ((int32_t *)b->y)[i] = ((const int32_t *)lb->data)[s];
    }
}

/* Routing statistics of every MoE layer into ev->layers (accumulated since reset). */
static void fill_layers(struct emoe_moe *moe, struct emoe_train_layer *layers, int L,
                        int accumulated)
{
    for (int l = 0; l < L; l++) {
        struct emoe_error e2;
        int64_t counts[4096]; /* emoe_moe_config_check: at most 4096 experts */
        layers[l].block = emoe_moe_layer_block(moe, l);
        memset(&layers[l].routing, 0, sizeof layers[l].routing);
        emoe_moe_layer_stats(moe, l, accumulated, counts, &layers[l].routing, &e2);
        const struct emoe_moe_branch *b = emoe_moe_layer_branch(moe, l);
        layers[l].aux_loss = emoe_moe_branch_extra_loss(b);
        for (int k = 0; k < EMOE_LOSS_TERMS; k++)
            layers[l].loss_terms[k] = emoe_moe_branch_loss_term(b, (enum emoe_loss_term)k);
    }
}

int emoe_train_evaluate(struct emoe_model *m, struct emoe_moe *moe,
                        const struct emoe_dataset *d, int batch,
                        const struct emoe_target_scale *ts,
                        struct emoe_train_metrics *out, struct emoe_error *err)
{
    const struct emoe_vit_config *c = emoe_model_config(m);
    static const struct emoe_target_scale identity = {0.0, 1.0};
    if (!ts)
        ts = &identity;
    memset(out, 0, sizeof *out);
    size_t N = (size_t)d->images->shape[0];
    if (batch < 1)
        batch = 1;
    if ((size_t)batch > N)
        batch = (int)N;
    struct batch b;
    int rc = batch_alloc(&b, d, batch, err);
    if (rc)
        return rc;
    if (moe)
        emoe_moe_stats_reset(moe);
    double loss_sum = 0, abs_sum = 0;
    int64_t top1 = 0, top5 = 0;
    size_t *idx = malloc((size_t)batch * sizeof *idx);
    if (!idx) {
        batch_free(&b);
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    }
    int K = c->num_classes;
    for (size_t s = 0; s < N && !rc; s += (size_t)batch) {
        int B = (int)(N - s < (size_t)batch ? N - s : (size_t)batch);
        for (int i = 0; i < B; i++)
            idx[i] = s + (size_t)i;
        batch_fill(&b, d, idx, B, ts);
        rc = emoe_model_forward(m, b.x, d->images->dtype, B, 0, err);
        double task = 0;
        if (!rc)
            rc = emoe_model_loss(m, b.y, 0.0f, &task, NULL, NULL, err);
        if (rc)
            break;
        loss_sum += task * B;
        const float *lg = emoe_model_logits(m);
        if (c->task == EMOE_TASK_REGRESS) {
            const float *t = (const float *)d->labels->data + s;
            for (int i = 0; i < B; i++)
                abs_sum += fabs(ts->mean + ts->std * (double)lg[i] - (double)t[i]);
            continue;
        }
        if (moe)
            rc = emoe_moe_stats_add_labels(moe, b.y, B, K, err);
        for (int i = 0; i < B; i++) {
            const float *row = lg + (size_t)i * K;
            int label = ((const int32_t *)b.y)[i], above = 0;
            for (int k = 0; k < K; k++)
                if (row[k] > row[label] || (row[k] == row[label] && k < label))
                    above++;
            top1 += above == 0;
            top5 += above < 5;
        }
    }
    free(idx);
    batch_free(&b);
    if (rc)
        return rc;
    out->images = (int64_t)N;
    out->loss = loss_sum / (double)N;
    out->top1 = (double)top1 / (double)N;
    out->top5 = (double)top5 / (double)N;
    out->mae = abs_sum / (double)N;
    if (!isfinite(out->loss))
        return emoe_error_set(err, EMOE_ENUMERIC, "validation loss is not finite");
    return EMOE_OK;
}

struct trainer {
    struct emoe_model *m;
    struct emoe_moe *moe;
    const struct emoe_dataset *train, *val;
    const struct emoe_train_options *o;
    struct emoe_adamw *opt;
    struct emoe_train_state st;
    size_t N, *perm;
    int64_t steps_per_epoch, total;
    struct batch b;
    struct emoe_train_layer *layers;
    int L;
    double best;
    int have_best;
    struct emoe_target_scale ts; /* regression targets (mean 0, std 1 for classification) */
    int saved;              /* out_path holds a checkpoint of this run (or the resumed one) */
};

static void emit(const struct trainer *t, struct emoe_train_event *ev)
{
    if (t->o->log)
        t->o->log(t->o->ctx, ev);
}

static int params_finite(struct emoe_model *m)
{
    const float *p = emoe_model_params(m);
    size_t n = emoe_model_numel(m);
    float acc = 0.0f;
    for (size_t i = 0; i < n; i++)
        acc += p[i] * 0.0f; /* NaN or inf makes it NaN */
    return acc == 0.0f;
}

/*
 * The training state file: what emoe_train_state_save writes (AdamW moments
 * "adamw.m.<name>" / "adamw.v.<name>", metadata state.*), plus the trainable weights
 * as "param.<name>", so the state alone restores a run.
 */
static int write_state(struct trainer *t, struct emoe_error *err)
{
    struct emoe_model *m = t->m;
    size_t np = emoe_model_param_count(m), n = 0, off = 0;
    size_t ntr = emoe_model_trainable_numel(m);
    t->st.step = emoe_adamw_get_step(t->opt);
    struct emoe_named_tensor *nt = calloc(3 * np + 1, sizeof *nt);
    struct emoe_tensor **wr = calloc(3 * np + 1, sizeof *wr);
    char *names = calloc(3 * np + 1, 112);
    int rc = EMOE_OK;
    if (!nt || !wr || !names)
        rc = emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", t->o->state_path);
    float *mm = emoe_adamw_m(t->opt), *vv = emoe_adamw_v(t->opt);
    static const char *const prefix[3] = {"adamw.m.", "adamw.v.", "param."};
    for (size_t i = 0; !rc && i < np; i++) {
        struct emoe_param *p = emoe_model_param_at(m, i);
        if (!p->grad)
            continue;
        if (off + p->numel > ntr) {
            rc = emoe_error_set(err, EMOE_EINVAL, "%s: optimizer does not match the model",
                                t->o->state_path);
            break;
        }
        float *src[3] = {mm + off, vv + off, p->data};
        for (int k = 0; k < 3 && !rc; k++) {
            char *nm = names + n * 112;
            snprintf(nm, 112, "%s%s", prefix[k], p->spec->name);
            rc = emoe_tensor_wrap(EMOE_F32, p->spec->ndim, p->spec->shape, src[k], &wr[n], err);
            if (!rc) {
                nt[n].name = nm;
                nt[n].tensor = wr[n];
                n++;
            }
        }
        off += p->numel;
    }
    char v[4][32];
    snprintf(v[0], sizeof v[0], "%lld", (long long)t->st.step);
    snprintf(v[1], sizeof v[1], "%llu", (unsigned long long)t->st.seed);
    snprintf(v[2], sizeof v[2], "%llu", (unsigned long long)t->st.data_epoch);
    snprintf(v[3], sizeof v[3], "%llu", (unsigned long long)t->st.data_pos);
    size_t nsm = t->o->nstate_meta;
    struct emoe_kv *meta = malloc((5 + nsm) * sizeof *meta);
    if (!meta && !rc)
        rc = emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", t->o->state_path);
    if (!rc) {
        struct emoe_kv base[5] = {{"emoe.version", "1"}, {"state.step", v[0]},
                                  {"state.seed", v[1]}, {"state.data_epoch", v[2]},
                                  {"state.data_pos", v[3]}};
        memcpy(meta, base, sizeof base);
        if (nsm)
            memcpy(meta + 5, t->o->state_meta, nsm * sizeof *meta);
        rc = emoe_safetensors_write(t->o->state_path, nt, n, meta, 5 + nsm, err);
    }
    free(meta);
    for (size_t i = 0; wr && i < n; i++)
        emoe_tensor_free(wr[i]);
    free(wr);
    free(nt);
    free(names);
    return rc;
}

/* Resume: the moments and metadata (emoe_train_state_load), then the weights. */
static int read_state(struct trainer *t, struct emoe_error *err)
{
    const char *path = t->o->state_path;
    int rc = emoe_train_state_load(t->m, t->opt, &t->st, path, err);
    if (rc)
        return rc;
    struct emoe_safetensors *st;
    if ((rc = emoe_safetensors_open(path, &st, err)))
        return rc;
    size_t np = emoe_model_param_count(t->m), ntrain = 0, nstate = 0;
    /* the state holds the weights that trained: exactly the model's trainable ones
     * (another set would continue a different run) */
    for (size_t i = 0; i < np; i++)
        ntrain += emoe_model_param_at(t->m, i)->grad != NULL;
    for (size_t i = 0; i < emoe_safetensors_count(st); i++)
        nstate += strncmp(emoe_safetensors_name(st, i), "param.", 6) == 0;
    if (nstate != ntrain)
        rc = emoe_error_set(err, EMOE_EINVAL, "%s: the run trained %zu weight tensors, the "
                            "model being resumed trains %zu", path, nstate, ntrain);
    /* check all first, then copy: all or nothing */
    for (int pass = 0; pass < 2 && !rc; pass++)
        for (size_t i = 0; i < np && !rc; i++) {
            struct emoe_param *p = emoe_model_param_at(t->m, i);
            if (!p->grad)
                continue;
            char name[128];
            snprintf(name, sizeof name, "param.%s", p->spec->name);
            struct emoe_tensor *x;
            if ((rc = emoe_safetensors_get(st, name, &x, err)))
                break;
            if (x->dtype != EMOE_F32 || x->nelem != p->numel)
                rc = emoe_error_set(err, EMOE_EFORMAT, "%s: tensor '%s' does not match the "
                                    "model", path, name);
            else if (pass == 1)
                memcpy(p->data, x->data, p->numel * sizeof(float));
            emoe_tensor_free(x);
        }
    emoe_safetensors_close(st);
    return rc;
}

/* best: NULL, or the validation score to record as "train.best_score" */
static int save(struct trainer *t, const char *path, int with_state, const double *best,
                struct emoe_error *err)
{
    const struct emoe_train_options *o = t->o;
    size_t n = o->nmeta;
    struct emoe_kv *kv = malloc((n + 4) * sizeof *kv);
    if (!kv)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    if (n)
        memcpy(kv, o->meta, n * sizeof *kv);
    char step[32];
    snprintf(step, sizeof step, "%lld", (long long)emoe_adamw_get_step(t->opt));
    /* the state first: it holds the trainable weights too, so a run killed between
     * the two files resumes from the state alone */
    int rc = with_state ? write_state(t, err) : EMOE_OK;
    if (rc) {
        free(kv);
        return rc;
    }
    kv[n].key = "train.step";
    kv[n].value = step;
    size_t nkv = n + 1;
    char score[40], tmean[40], tstd[40];
    if (best) {
        snprintf(score, sizeof score, "%.17g", *best);
        kv[nkv].key = "train.best_score";
        kv[nkv++].value = score;
    }
    if (emoe_model_config(t->m)->task == EMOE_TASK_REGRESS) {
        snprintf(tmean, sizeof tmean, "%.17g", t->ts.mean);
        snprintf(tstd, sizeof tstd, "%.17g", t->ts.std);
        kv[nkv].key = EMOE_TARGET_MEAN_KEY;
        kv[nkv++].value = tmean;
        kv[nkv].key = EMOE_TARGET_STD_KEY;
        kv[nkv++].value = tstd;
    }
    rc = emoe_checkpoint_save(t->m, path, kv, nkv, err);
    free(kv);
    if (!rc && with_state)
        t->saved = 1;

    if (!rc) {
        struct emoe_train_event ev = {0};
        ev.kind = EMOE_TRAIN_SAVE;
        ev.step = emoe_adamw_get_step(t->opt);
        ev.total_steps = t->total;
        ev.path = path;
        emit(t, &ev);
    }
    return rc;
}

static int validate(struct trainer *t, int epoch, struct emoe_error *err)
{
    const struct emoe_train_options *o = t->o;
    if (!t->val)
        return EMOE_OK;
    struct emoe_train_metrics mt;
    int rc = emoe_train_evaluate(t->m, t->moe, t->val, o->batch, &t->ts, &mt, err);
    if (rc) {
        emoe_error_prefix(err, "validation");
        return rc;
    }
    struct emoe_train_event ev = {0};
    ev.kind = EMOE_TRAIN_EVAL;
    ev.step = emoe_adamw_get_step(t->opt);
    ev.total_steps = t->total;
    ev.epoch = epoch;
    ev.val = mt;
    if (t->moe) {
        fill_layers(t->moe, t->layers, t->L, 1);
        ev.nlayers = t->L;
        ev.layers = t->layers;
        emoe_moe_stats_reset(t->moe);
    }
    int regress = emoe_model_config(t->m)->task == EMOE_TASK_REGRESS;
    double score = regress ? -mt.mae : mt.top1;
    if (o->best_path && (!t->have_best || score > t->best)) {
        t->have_best = 1;
        t->best = score;
        ev.is_best = 1;
    }
    emit(t, &ev);
    if (ev.is_best) {
        rc = save(t, o->best_path, 0, &score, err);
        if (rc)
            return rc;
    }
    return EMOE_OK;
}

/* Non-finite loss: name the step and the term.  saved: a checkpoint exists. */
static int nonfinite(int saved, int64_t step, const char *what, struct emoe_error *err)
{
    return emoe_error_set(err, EMOE_ENUMERIC, "step %lld: %s is not finite; stopped (%s)",
                          (long long)step, what,
                          saved ? "the last checkpoint is kept" : "nothing was saved");
}

/* The first non-finite loss term of the MoE layers' last forward, as "the
 * orthonormality loss of the MoE layer after block 9" into what; 0 when all are
 * finite. */
static int nonfinite_term(const struct trainer *t, char *what, size_t size)
{
    for (int l = 0; l < t->L; l++) {
        const struct emoe_moe_branch *b = emoe_moe_layer_branch(t->moe, l);
        for (int k = 0; k < EMOE_LOSS_TERMS; k++)
            if (!isfinite(emoe_moe_branch_loss_term(b, (enum emoe_loss_term)k))) {
                snprintf(what, size, "the %s of the MoE layer after block %d",
                         emoe_loss_term_description((enum emoe_loss_term)k),
                         emoe_moe_layer_block(t->moe, l));
                return 1;
            }
        if (!isfinite(emoe_moe_branch_extra_loss(b))) {
            snprintf(what, size, "the auxiliary loss of the MoE layer after block %d",
                     emoe_moe_layer_block(t->moe, l));
            return 1;
        }
    }
    return 0;
}

static int train_loop(struct trainer *t, struct emoe_error *err)
{
    const struct emoe_train_options *o = t->o;
    struct emoe_model *m = t->m;
    const struct emoe_dataset *d = t->train;
    const struct emoe_vit_config *c = emoe_model_config(m);
    struct emoe_lr_schedule sch = {o->schedule, o->lr, o->min_lr, o->warmup, t->total};
    uint64_t data_seed = emoe_seed_derive(t->st.seed, DATA_TAG);
    uint64_t aug_seed = emoe_seed_derive(t->st.seed, AUGMENT_TAG);
    int aug = d->images->dtype == EMOE_U8 && c->image_ndim == 2 &&
              (o->augment.crop_padding > 0 || o->augment.resized_crop || o->augment.hflip);
    int rc = EMOE_OK;
    /* Interval accumulators for the step log. */
    double iv_loss = 0, iv_task = 0, iv_time = now_seconds();
    double iv_terms[EMOE_LOSS_TERMS] = {0};
    int64_t iv_images = 0, iv_correct = 0, iv_steps = 0;
    size_t perm_epoch = (size_t)-1;
    int64_t step = emoe_adamw_get_step(t->opt);
    while (step < t->total) {
        if (o->should_stop && o->should_stop(o->ctx)) {
            if ((rc = save(t, o->out_path, 1, NULL, err)))
                return rc;
            return emoe_error_set(err, EMOE_EINTR, "interrupted at step %lld; saved %s",
                                  (long long)step, o->out_path);
        }
        uint64_t epoch = t->st.data_epoch;
        if (perm_epoch != epoch) {
            for (size_t i = 0; i < t->N; i++)
                t->perm[i] = i;
            emoe_rng_shuffle(t->perm, t->N, data_seed, epoch);
            perm_epoch = epoch;
        }
        size_t pos = t->st.data_pos;
        int B = (int)(t->N - pos < (size_t)o->batch ? t->N - pos : (size_t)o->batch);
        batch_fill(&t->b, d, t->perm + pos, B, &t->ts);
        const void *x = t->b.x;
        if (aug) {
            rc = emoe_augment_batch(&o->augment, t->b.xaug, t->b.x, B,
                                    (int)d->images->shape[1], (int)d->images->shape[2],
                                    (int)d->images->shape[3], aug_seed, (uint64_t)step, err);
            if (rc)
                return rc;
            x = t->b.xaug;
        }
        double step_t0 = now_seconds();
        emoe_model_zero_grad(m);
        double task = 0, loss = 0, gnorm = 0;
        int ncorrect = 0;
        rc = emoe_model_forward(m, x, d->images->dtype, B, 1, err);
        if (!rc)
            rc = emoe_model_loss(m, t->b.y, o->label_smoothing, &task, &loss, &ncorrect, err);
        char what[128];
        /* a branch stops the forward (EMOE_ENUMERIC) on a non-finite extra loss */
        if ((rc == EMOE_ENUMERIC || (!rc && !isfinite(loss))) &&
            nonfinite_term(t, what, sizeof what))
            return nonfinite(t->saved, step + 1, what, err);
        if (rc == EMOE_ENUMERIC || (!rc && !isfinite(task)))
            return nonfinite(t->saved, step + 1, "the task loss", err);
        if (rc)
            return rc;
        if (!isfinite(loss))
            return nonfinite(t->saved, step + 1, "the auxiliary (MoE) loss", err);
        if ((rc = emoe_model_backward(m, err)) || (rc = emoe_model_reduce_grads(m, err)))
            return rc;
        rc = emoe_clip_grad_norm(emoe_model_grads(m), emoe_model_trainable_numel(m), o->clip,
                                 &gnorm, err);
        if (rc == EMOE_ENUMERIC)
            return nonfinite(t->saved, step + 1, "the gradient norm", err);
        if (rc)
            return rc;
        double lr = emoe_lr_at(&sch, step);
        if ((rc = emoe_adamw_step(t->opt, lr, err)))
            return rc;
        step = emoe_adamw_get_step(t->opt);
        if (!params_finite(m))
            return nonfinite(t->saved, step, "a parameter after the update", err);
        /* advance the data position */
        t->st.data_pos = pos + (size_t)B;
        int epoch_done = t->st.data_pos >= t->N;
        if (epoch_done) {
            t->st.data_pos = 0;
            t->st.data_epoch = epoch + 1;
        }
        if (o->log) {
            double tnow = now_seconds();
            struct emoe_train_event pe = {0};
            pe.kind = EMOE_TRAIN_PROGRESS;
            pe.step = step;
            pe.total_steps = t->total;
            pe.epoch = (int)epoch;
            pe.epoch_frac = (double)epoch + (epoch_done ? 1.0 : (double)t->st.data_pos / t->N);
            pe.lr = lr;
            pe.loss = loss;
            pe.task_loss = task;
            pe.accuracy = c->task == EMOE_TASK_CLASSIFY ? (double)ncorrect / B : 0;
            pe.images_per_s = tnow > step_t0 ? B / (tnow - step_t0) : 0;
            emit(t, &pe);
        }
        iv_loss += loss;
        iv_task += task;
        for (int l = 0; l < t->L; l++)
            for (int k = 0; k < EMOE_LOSS_TERMS; k++)
                iv_terms[k] += emoe_moe_branch_loss_term(emoe_moe_layer_branch(t->moe, l),
                                                         (enum emoe_loss_term)k);
        iv_images += B;
        iv_correct += ncorrect;
        iv_steps++;
        if (o->log_every > 0 && (step % o->log_every == 0 || step == t->total || epoch_done)) {
            double tnow = now_seconds();
            struct emoe_train_event ev = {0};
            ev.kind = EMOE_TRAIN_STEP;
            ev.step = step;
            ev.total_steps = t->total;
            ev.epoch = (int)epoch;
            ev.epoch_frac = (double)epoch + (epoch_done ? 1.0 : (double)t->st.data_pos / t->N);
            ev.lr = lr;
            ev.loss = iv_loss / iv_steps;
            ev.task_loss = iv_task / iv_steps;
            ev.aux_loss = ev.loss - ev.task_loss;
            for (int k = 0; k < EMOE_LOSS_TERMS; k++)
                ev.loss_terms[k] = iv_terms[k] / iv_steps;
            ev.grad_norm = gnorm;
            ev.accuracy = c->task == EMOE_TASK_CLASSIFY ? (double)iv_correct / iv_images : 0;
            ev.images_per_s = tnow > iv_time ? iv_images / (tnow - iv_time) : 0;
            if (t->moe) {
                fill_layers(t->moe, t->layers, t->L, 1);
                ev.nlayers = t->L;
                ev.layers = t->layers;
                emoe_moe_stats_reset(t->moe);
            }
            emit(t, &ev);
            iv_loss = iv_task = 0;
            memset(iv_terms, 0, sizeof iv_terms);
            iv_images = iv_correct = iv_steps = 0;
            iv_time = now_seconds();
        }
        if (epoch_done || step == t->total) {
            if ((rc = validate(t, (int)epoch + (epoch_done ? 1 : 0), err)))
                return rc;
            iv_time = now_seconds();
        }
        if (o->save_every > 0 && step % o->save_every == 0 && step < t->total) {
            if ((rc = save(t, o->out_path, 1, NULL, err)))
                return rc;
        }
    }
    return save(t, o->out_path, 1, NULL, err);
}

int emoe_train_run(struct emoe_model *m, struct emoe_moe *moe, const struct emoe_dataset *train,
                   const struct emoe_dataset *val, const struct emoe_train_options *o,
                   struct emoe_error *err)
{
    if (!o->out_path || !o->state_path)
        return emoe_error_set(err, EMOE_EINVAL, "no output or state path");
    if (o->batch < 1 || o->epochs < 0 || o->max_steps < 0 || o->lr < 0 || o->warmup < 0 ||
        !(o->clip >= 0) || o->label_smoothing < 0 || o->label_smoothing >= 1)
        return emoe_error_set(err, EMOE_EINVAL, "invalid training options");
    int rc = emoe_train_check_data(m, train, o->train_name, err);
    if (!rc && val)
        rc = emoe_train_check_data(m, val, o->val_name, err);
    if (rc)
        return rc;
    struct trainer t;
    memset(&t, 0, sizeof t);
    t.m = m;
    t.moe = moe;
    t.train = train;
    t.val = val;
    t.o = o;
    t.N = (size_t)train->images->shape[0];
    t.steps_per_epoch = (int64_t)((t.N + (size_t)o->batch - 1) / (size_t)o->batch);
    t.total = o->max_steps > 0 ? o->max_steps : (int64_t)o->epochs * t.steps_per_epoch;
    t.L = moe ? emoe_moe_layers(moe) : 0;
    t.st.seed = o->seed;
    t.ts.mean = 0.0;
    t.ts.std = 1.0;
    if (emoe_model_config(m)->task == EMOE_TASK_REGRESS) {
        if (!o->target_set) {
            rc = emoe_train_target_scale(train, &t.ts, err);
            if (rc) {
                emoe_error_prefix(err, o->train_name ? o->train_name : "training data");
                return rc;
            }
        } else if (!(isfinite(o->target.mean) && isfinite(o->target.std) && o->target.std > 0)) {
            return emoe_error_set(err, EMOE_EINVAL, "invalid target scale (mean %g, std %g)",
                                  o->target.mean, o->target.std);
        } else {
            t.ts = o->target;
        }
    }
    struct emoe_adamw_config ac;
    emoe_adamw_config_init(&ac);
    ac.weight_decay = (float)o->weight_decay;
    if ((rc = emoe_adamw_new(m, &ac, &t.opt, err)))
        return rc;
    t.perm = malloc(t.N * sizeof *t.perm);
    t.layers = calloc((size_t)t.L + 1, sizeof *t.layers);
    if (!t.perm || !t.layers) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = batch_alloc(&t.b, train, o->batch, err)))
        goto done;
    if (o->resume) {
        rc = read_state(&t, err);
        t.saved = 1;
        if (rc)
            goto done;
        if (t.st.data_pos >= t.N) {
            rc = emoe_error_set(err, EMOE_EINVAL, "%s: data position %llu is past the %zu "
                                "training images (a different dataset?)", o->state_path,
                                (unsigned long long)t.st.data_pos, t.N);
            goto done;
        }
        if (o->resume_best_set) {
            t.have_best = 1;
            t.best = o->resume_best;
        }
        /* one training forward per step: the router noise continues where it was */
        if (moe)
            emoe_moe_set_train_forwards(moe, emoe_adamw_get_step(t.opt));
    } else if (moe && o->eigen_init_batches > 0) {
        /* Eigenbasis from data (paper Fig. 1a): the covariance of the branch inputs
         * over the first batches of epoch 0's order, before the first step. */
        size_t *idx = malloc(t.N * sizeof *idx);
        if (!idx) {
            rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
            goto done;
        }
        for (size_t i = 0; i < t.N; i++)
            idx[i] = i;
        emoe_rng_shuffle(idx, t.N, emoe_seed_derive(o->seed, DATA_TAG), 0);
        emoe_moe_cov_begin(moe);
        size_t pos = 0;
        for (int k = 0; k < o->eigen_init_batches && pos < t.N && !rc; k++) {
            int B = (int)(t.N - pos < (size_t)o->batch ? t.N - pos : (size_t)o->batch);
            batch_fill(&t.b, train, idx + pos, B, &t.ts);
            rc = emoe_model_forward(m, t.b.x, train->images->dtype, B, 0, err);
            pos += (size_t)B;
        }
        free(idx);
        if (!rc)
            rc = emoe_moe_cov_end(moe, err);
        if (rc)
            goto done;
        emoe_moe_stats_reset(moe);
    }
    if (moe)
        emoe_moe_stats_reset(moe);
    rc = train_loop(&t, err);
done:
    batch_free(&t.b);
    free(t.perm);
    free(t.layers);
    emoe_adamw_free(t.opt);
    return rc;
}
