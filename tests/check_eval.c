/*
 * check_eval.c: unit tests of lib/eval.c: a tiny ViT with eigen-routed MoE branches
 * is built and saved in the test, loaded back with emoe_model_load, and evaluated;
 * the metrics are compared with values computed here from emoe_model_logits of the
 * original model (one image per forward), the routing counts with the branches'
 * own top-1 choices, and model/data mismatches are rejected with clear messages.
 */
#include "config.h"
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NIMG 11
#define NCLS 3

static void tiny_vit(struct emoe_vit_config *v, enum emoe_task task)
{
    memset(v, 0, sizeof *v);
    v->image_ndim = 2;
    v->image_size[0] = v->image_size[1] = 8;
    v->patch_size = 4;
    v->in_chans = 3;
    v->embed_dim = 8;
    v->depth = 2;
    v->num_heads = 2;
    v->mlp_dim = 16;
    v->num_classes = task == EMOE_TASK_CLASSIFY ? NCLS : 1;
    v->task = task;
    for (int i = 0; i < 4; i++) {
        v->mean[i] = 0.5f;
        v->std[i] = 0.25f;
    }
}

static void tiny_moe(struct emoe_moe_config *c)
{
    emoe_moe_config_init(c);
    c->router = EMOE_ROUTER_EIGEN;
    c->experts = 3;
    c->rank = 4;
    c->bottleneck = 4;
    strcpy(c->blocks, "0,1");
}

/* A model (with MoE unless router none) with seeded random weights; the head is
 * scaled up so that predictions differ between images. */
static struct emoe_model *make_model(const struct emoe_vit_config *v,
                                     const struct emoe_moe_config *c, struct emoe_moe **moe)
{
    struct emoe_error err = {0};
    struct emoe_param_spec *specs = NULL;
    size_t n = 0;
    if (c->router != EMOE_ROUTER_NONE)
        ck_assert_int_eq(emoe_moe_param_specs(c, v->embed_dim, v->depth, &specs, &n, &err),
                         EMOE_OK);
    struct emoe_model *m;
    int rc = emoe_model_new(v, specs, n, &m, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    free(specs);
    emoe_model_init(m, 7);
    *moe = NULL;
    if (c->router != EMOE_ROUTER_NONE) {
        rc = emoe_moe_new(c, m, moe, &err);
        ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    }
    struct emoe_param *hw = emoe_model_param(m, "vit.head.weight");
    ck_assert_ptr_nonnull(hw);
    for (size_t i = 0; i < hw->numel; i++)
        hw->data[i] *= 100.0f;
    struct emoe_param *hb = emoe_model_param(m, "vit.head.bias");
    for (size_t i = 0; i < hb->numel; i++)
        hb->data[i] = 0.1f * (float)i;
    return m;
}

static const char *save_model(struct emoe_model *m, const struct emoe_vit_config *v,
                              const struct emoe_moe_config *c, const char *name)
{
    struct emoe_error err = {0};
    struct emoe_moe_meta meta;
    size_t n = 0;
    if (c->router != EMOE_ROUTER_NONE)
        ck_assert_int_eq(emoe_moe_metadata(c, v->depth, &meta, &n, &err), EMOE_OK);
    const char *path = tu_tmppath(name);
    int rc = emoe_checkpoint_save(m, path, n ? meta.kv : NULL, n, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    return path;
}

/* u8 images [n, size, size, ch] from a simple generator; labels i % NCLS (or
 * regression targets). */
static struct emoe_dataset *make_data(int n, int size, int ch, int regress)
{
    struct emoe_error err = {0};
    struct emoe_dataset *d = calloc(1, sizeof *d);
    int64_t shape[4] = {n, size, size, ch}, ln = n;
    ck_assert_int_eq(emoe_tensor_new(EMOE_U8, 4, shape, &d->images, &err), EMOE_OK);
    uint32_t s = 12345;
    unsigned char *p = d->images->data;
    for (size_t i = 0; i < d->images->nelem; i++) {
        s = s * 1103515245u + 12345u;
        p[i] = (unsigned char)(s >> 24);
    }
    if (regress) {
        ck_assert_int_eq(emoe_tensor_new(EMOE_F32, 1, &ln, &d->labels, &err), EMOE_OK);
        for (int i = 0; i < n; i++)
            ((float *)d->labels->data)[i] = 0.3f * (float)i - 1.0f;
    } else {
        ck_assert_int_eq(emoe_tensor_new(EMOE_I64, 1, &ln, &d->labels, &err), EMOE_OK);
        for (int i = 0; i < n; i++)
            ((int64_t *)d->labels->data)[i] = (i * 7) % NCLS;
    }
    return d;
}

/* Reference values from the original model, one image per forward. */
struct ref {
    float logits[NIMG][NCLS];
    float feat[NIMG][8];
    double routing[2][3][NCLS]; /* [L, E, K] */
};

static void reference(struct emoe_model *m, struct emoe_moe *moe, const struct emoe_dataset *d,
                      struct ref *r)
{
    struct emoe_error err = {0};
    memset(r, 0, sizeof *r);
    const struct emoe_vit_config *c = emoe_model_config(m);
    size_t per = d->images->nbytes / NIMG;
    for (int i = 0; i < NIMG; i++) {
        int rc = emoe_model_forward(m, (const unsigned char *)d->images->data + per * i,
                                    EMOE_U8, 1, 0, &err);
        ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
        memcpy(r->logits[i], emoe_model_logits(m), (size_t)c->num_classes * sizeof(float));
        memcpy(r->feat[i], emoe_model_features(m), 8 * sizeof(float));
        int y = c->task == EMOE_TASK_CLASSIFY ? (int)((int64_t *)d->labels->data)[i] : 0;
        for (int l = 0; moe && l < emoe_moe_layers(moe); l++) {
            struct emoe_moe_branch *b = emoe_moe_layer_branch(moe, l);
            const int32_t *top1 = emoe_moe_branch_top1(b);
            for (int t = 0; t < emoe_moe_branch_tokens(b); t++)
                if (top1[t] >= 0)
                    r->routing[l][top1[t]][y] += 1;
        }
    }
}

static void check_close(double got, double want, double tol, const char *what)
{
    ck_assert_msg(fabs(got - want) <= tol * (1 + fabs(want)), "%s: %.9g, want %.9g", what,
                  got, want);
}

START_TEST(test_eval_classify_matches_hand_computed)
{
    struct emoe_error err = {0};
    struct emoe_vit_config v;
    struct emoe_moe_config c;
    tiny_vit(&v, EMOE_TASK_CLASSIFY);
    tiny_moe(&c);
    struct emoe_moe *moe0;
    struct emoe_model *m0 = make_model(&v, &c, &moe0);
    const char *path = save_model(m0, &v, &c, "cls.safetensors");
    struct emoe_dataset *d = make_data(NIMG, 8, 3, 0);
    struct ref ref;
    reference(m0, moe0, d, &ref);

    struct emoe_model *m;
    struct emoe_moe *moe;
    int rc = emoe_model_load(path, &m, &moe, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    ck_assert_ptr_nonnull(moe);
    ck_assert_int_eq(emoe_moe_layers(moe), 2);
    struct emoe_eval_options o;
    emoe_eval_options_init(&o);
    o.batch = 4; /* 4 + 4 + 3 */
    o.keep_logits = o.keep_features = o.keep_predictions = o.keep_confusion = 1;
    struct emoe_eval_result r;
    rc = emoe_evaluate(m, moe, d, &o, &r, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);

    /* hand-computed metrics from the reference logits */
    int64_t conf[NCLS][NCLS] = {{0}};
    int correct1 = 0, correct5 = 0;
    double loss = 0;
    for (int i = 0; i < NIMG; i++) {
        const float *z = ref.logits[i];
        int y = (int)((int64_t *)d->labels->data)[i], p = 0;
        for (int k = 1; k < NCLS; k++)
            if (z[k] > z[p])
                p = k;
        double mx = z[p], s = 0;
        for (int k = 0; k < NCLS; k++)
            s += exp(z[k] - mx);
        loss += -(z[y] - mx - log(s));
        correct1 += p == y;
        correct5 += 1; /* K = 3 < 5: every label is in the top 5 */
        conf[y][p]++;
        check_close(r.score[i], 1.0 / s, 1e-4, "probability");
        ck_assert_int_eq(r.pred[i], p);
        for (int k = 0; k < NCLS; k++)
            check_close(((float *)r.logits->data)[i * NCLS + k], z[k], 1e-4, "logit");
        for (int k = 0; k < 8; k++)
            check_close(((float *)r.features->data)[i * 8 + k], ref.feat[i][k], 1e-4,
                        "feature");
    }
    ck_assert_msg(correct1 > 0 && correct1 < NIMG, "degenerate test: %d of %d correct",
                  correct1, NIMG);
    ck_assert_uint_eq(r.count, NIMG);
    ck_assert_int_eq(r.nclasses, NCLS);
    ck_assert_int_eq(r.correct1, correct1);
    ck_assert_int_eq(r.correct5, correct5);
    check_close(r.top1, (double)correct1 / NIMG, 1e-12, "top1");
    check_close(r.top5, 1.0, 1e-12, "top5");
    check_close(r.loss, loss / NIMG, 1e-4, "loss");
    for (int y = 0; y < NCLS; y++) {
        int64_t n = 0;
        for (int p = 0; p < NCLS; p++) {
            ck_assert_int_eq(r.confusion[y * NCLS + p], conf[y][p]);
            n += conf[y][p];
        }
        ck_assert_int_eq(r.class_count[y], n);
        ck_assert_int_eq(r.class_correct[y], conf[y][y]);
    }

    /* routing: [L, E, K] counts equal the branches' own top-1 choices per image */
    ck_assert_int_eq(r.nlayers, 2);
    ck_assert_ptr_nonnull(r.routing);
    ck_assert_int_eq(r.routing->ndim, 3);
    ck_assert_int_eq(r.routing->shape[0], 2);
    ck_assert_int_eq(r.routing->shape[1], 3);
    ck_assert_int_eq(r.routing->shape[2], NCLS);
    const float *rt = r.routing->data;
    for (int l = 0; l < 2; l++) {
        double total = 0;
        int64_t per_e[3] = {0};
        for (int e = 0; e < 3; e++)
            for (int k = 0; k < NCLS; k++) {
                float got = rt[(l * 3 + e) * NCLS + k];
                ck_assert_msg(got == (float)ref.routing[l][e][k], "routing[%d,%d,%d] %g want %g",
                              l, e, k, got, ref.routing[l][e][k]);
                total += got;
                per_e[e] += (int64_t)got;
            }
        /* 4 patch tokens per image are routed (the class token is not) */
        ck_assert_msg(total == 4.0 * NIMG, "layer %d: %g tokens", l, total);
        ck_assert_int_eq(r.layers[l].block, l);
        ck_assert_int_eq(r.layers[l].routing.experts, 3);
        ck_assert_int_eq(r.layers[l].routing.tokens, 4 * NIMG);
        struct emoe_routing_summary s;
        emoe_routing_summarize(per_e, 3, r.layers[l].routing.assignments, 0, &s);
        check_close(r.layers[l].routing.cv, s.cv, 1e-12, "cv");
        check_close(r.layers[l].routing.entropy, s.entropy, 1e-12, "entropy");
    }

    /* emoe_eval_features gives the same features and the labels */
    struct emoe_tensor *f;
    int32_t *lab;
    rc = emoe_eval_features(m, d, 5, "d", &f, &lab, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    ck_assert_int_eq(f->shape[0], NIMG);
    ck_assert_int_eq(f->shape[1], 8);
    for (size_t i = 0; i < f->nelem; i++) /* another batch size may round differently */
        check_close(((float *)f->data)[i], ((float *)r.features->data)[i], 1e-5, "feature");
    for (int i = 0; i < NIMG; i++)
        ck_assert_int_eq(lab[i], (int)((int64_t *)d->labels->data)[i]);
    emoe_tensor_free(f);
    free(lab);

    /* evaluating again gives the same (statistics are reset) */
    struct emoe_eval_result r2;
    emoe_eval_options_init(&o);
    rc = emoe_evaluate(m, moe, d, &o, &r2, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    ck_assert_ptr_null(r2.logits);
    ck_assert_ptr_null(r2.pred);
    ck_assert_ptr_null(r2.confusion);
    ck_assert_mem_eq(r2.class_correct, r.class_correct, NCLS * sizeof(int64_t));
    ck_assert_mem_eq(r2.routing->data, r.routing->data, r.routing->nbytes);
    ck_assert_int_eq(r2.correct1, r.correct1);

    emoe_eval_result_free(&r);
    emoe_eval_result_free(&r2);
    ck_assert_ptr_null(r.routing);
    emoe_moe_free(moe);
    emoe_model_free(m);
    emoe_moe_free(moe0);
    emoe_model_free(m0);
    emoe_dataset_free(d);
}
END_TEST

/* top-5 with more classes: rank counting with ties. */
START_TEST(test_eval_top5_plain_vit)
{
    struct emoe_error err = {0};
    struct emoe_vit_config v;
    struct emoe_moe_config c;
    tiny_vit(&v, EMOE_TASK_CLASSIFY);
    v.num_classes = 8;
    emoe_moe_config_init(&c);
    c.router = EMOE_ROUTER_NONE;
    struct emoe_moe *moe0;
    struct emoe_model *m0 = make_model(&v, &c, &moe0);
    ck_assert_ptr_null(moe0);
    const char *path = save_model(m0, &v, &c, "plain.safetensors");
    struct emoe_dataset *d = make_data(NIMG, 8, 3, 0);
    int64_t *y = d->labels->data;
    for (int i = 0; i < NIMG; i++)
        y[i] = (i * 5) % 8;
    struct emoe_model *m;
    struct emoe_moe *moe;
    int rc = emoe_model_load(path, &m, &moe, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    ck_assert_ptr_null(moe);
    struct emoe_eval_options o;
    emoe_eval_options_init(&o);
    o.keep_logits = 1;
    struct emoe_eval_result r;
    rc = emoe_evaluate(m, NULL, d, &o, &r, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    ck_assert_ptr_null(r.routing);
    ck_assert_int_eq(r.nlayers, 0);
    int c5 = 0;
    for (int i = 0; i < NIMG; i++) {
        const float *z = (const float *)r.logits->data + i * 8;
        int above = 0;
        for (int k = 0; k < 8; k++)
            above += z[k] > z[y[i]];
        c5 += above < 5;
    }
    ck_assert_msg(c5 > 0 && c5 < NIMG, "degenerate: %d", c5);
    ck_assert_int_eq(r.correct5, c5);
    emoe_eval_result_free(&r);
    emoe_model_free(m);
    emoe_model_free(m0);
    emoe_dataset_free(d);
}
END_TEST

START_TEST(test_eval_regression)
{
    struct emoe_error err = {0};
    struct emoe_vit_config v;
    struct emoe_moe_config c;
    tiny_vit(&v, EMOE_TASK_REGRESS);
    tiny_moe(&c);
    struct emoe_moe *moe0;
    struct emoe_model *m0 = make_model(&v, &c, &moe0);
    const char *path = save_model(m0, &v, &c, "reg.safetensors");
    struct emoe_dataset *d = make_data(NIMG, 8, 3, 1);
    struct ref ref;
    reference(m0, moe0, d, &ref);
    struct emoe_model *m;
    struct emoe_moe *moe;
    int rc = emoe_model_load(path, &m, &moe, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    struct emoe_eval_options o;
    emoe_eval_options_init(&o);
    o.batch = 3;
    o.keep_predictions = 1;
    struct emoe_eval_result r;
    rc = emoe_evaluate(m, moe, d, &o, &r, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    const float *t = d->labels->data;
    double ae = 0, se = 0, mean = 0, ss = 0;
    for (int i = 0; i < NIMG; i++)
        mean += t[i];
    mean /= NIMG;
    for (int i = 0; i < NIMG; i++) {
        double e = ref.logits[i][0] - t[i];
        ae += fabs(e);
        se += e * e;
        ss += (t[i] - mean) * (t[i] - mean);
        check_close(r.score[i], ref.logits[i][0], 1e-4, "prediction");
    }
    ck_assert_ptr_null(r.pred);
    ck_assert_ptr_null(r.class_count);
    check_close(r.mae, ae / NIMG, 1e-4, "mae");
    check_close(r.loss, ae / NIMG, 1e-4, "loss");
    check_close(r.rmse, sqrt(se / NIMG), 1e-4, "rmse");
    check_close(r.r2, 1 - se / ss, 1e-4, "r2");
    /* routing of a regression model: one "class" */
    ck_assert_int_eq(r.routing->shape[2], 1);
    for (int l = 0; l < 2; l++)
        for (int e = 0; e < 3; e++)
            ck_assert(((float *)r.routing->data)[l * 3 + e] == (float)ref.routing[l][e][0]);
    emoe_eval_result_free(&r);
    /* a target scale: predictions mean + std * output, metrics in the targets' units */
    struct emoe_target_scale ts;
    ck_assert_int_eq(emoe_eval_target_scale(path, &ts, &err), EMOE_OK);
    ck_assert(ts.mean == 0.0 && ts.std == 1.0); /* none in the file */
    o.target.mean = 5.0;
    o.target.std = 2.0;
    rc = emoe_evaluate(m, moe, d, &o, &r, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    ae = se = 0;
    for (int i = 0; i < NIMG; i++) {
        double p = 5.0 + 2.0 * ref.logits[i][0], e = p - t[i];
        ae += fabs(e);
        se += e * e;
        check_close(r.score[i], p, 1e-4, "scaled prediction");
    }
    check_close(r.mae, ae / NIMG, 1e-4, "scaled mae");
    check_close(r.rmse, sqrt(se / NIMG), 1e-4, "scaled rmse");
    check_close(r.r2, 1 - se / ss, 1e-4, "scaled r2");
    emoe_eval_result_free(&r);
    o.target.std = -1.0;
    tu_assert_error(emoe_evaluate(m, moe, d, &o, &r, &err), err, EMOE_EINVAL,
                    "invalid target scale (mean 5, std -1)");
    emoe_moe_free(moe);
    emoe_model_free(m);
    emoe_moe_free(moe0);
    emoe_model_free(m0);
    emoe_dataset_free(d);
}
END_TEST

/* The target scale in a checkpoint's metadata. */
static int scale_of(const char *mean, const char *std, struct emoe_target_scale *ts,
                    struct emoe_error *err)
{
    struct emoe_kv kv[2];
    size_t n = 0;
    if (mean)
        kv[n++] = (struct emoe_kv){"data.target_mean", mean};
    if (std)
        kv[n++] = (struct emoe_kv){"data.target_std", std};
    const char *path = tu_tmppath("scale.safetensors");
    ck_assert_int_eq(emoe_safetensors_write(path, NULL, 0, kv, n, err), EMOE_OK);
    return emoe_eval_target_scale(path, ts, err);
}

START_TEST(test_eval_target_scale)
{
    struct emoe_error err = {0};
    struct emoe_target_scale ts = {7.0, 7.0};
    ck_assert_int_eq(scale_of("49.568030662536621", "17.221543784075621", &ts, &err),
                     EMOE_OK);
    ck_assert(ts.mean == 49.568030662536621 && ts.std == 17.221543784075621);
    ck_assert_int_eq(scale_of(NULL, NULL, &ts, &err), EMOE_OK);
    ck_assert(ts.mean == 0.0 && ts.std == 1.0);
    ts.mean = 3.0;
    tu_assert_error(scale_of("50", NULL, &ts, &err), err, EMOE_EFORMAT,
                    "scale.safetensors: metadata has 'data.target_mean' without "
                    "'data.target_std'");
    ck_assert(ts.mean == 3.0); /* untouched on failure */
    tu_assert_error(scale_of(NULL, "2", &ts, &err), err, EMOE_EFORMAT,
                    "has 'data.target_std' without 'data.target_mean'");
    tu_assert_error(scale_of("50", "ten", &ts, &err), err, EMOE_EFORMAT,
                    "metadata 'data.target_std': 'ten' is not a finite number");
    tu_assert_error(scale_of("nan", "1", &ts, &err), err, EMOE_EFORMAT,
                    "metadata 'data.target_mean': 'nan' is not a finite number");
    tu_assert_error(scale_of("50", "", &ts, &err), err, EMOE_EFORMAT,
                    "'' is not a finite number");
    tu_assert_error(scale_of("50", "0", &ts, &err), err, EMOE_EFORMAT,
                    "metadata 'data.target_std': 0 is not positive");
    tu_assert_error(emoe_eval_target_scale(tu_tmppath("absent.safetensors"), &ts, &err), err,
                    EMOE_ENOTFOUND, "absent.safetensors");
}
END_TEST

/* A 3-D regression model (brain-age style) on f32 volumes [N, 8, 8, 8, 1]. */
START_TEST(test_eval_volumes)
{
    struct emoe_error err = {0};
    struct emoe_vit_config v;
    tiny_vit(&v, EMOE_TASK_REGRESS);
    v.image_ndim = 3;
    v.image_size[2] = 8;
    v.in_chans = 1;
    struct emoe_moe_config c;
    tiny_moe(&c);
    struct emoe_moe *moe0;
    struct emoe_model *m0 = make_model(&v, &c, &moe0);
    const char *path = save_model(m0, &v, &c, "vol.safetensors");
    struct emoe_dataset *d = calloc(1, sizeof *d);
    int64_t shape[5] = {5, 8, 8, 8, 1}, n = 5;
    ck_assert_int_eq(emoe_tensor_new(EMOE_F32, 5, shape, &d->images, &err), EMOE_OK);
    ck_assert_int_eq(emoe_tensor_new(EMOE_F32, 1, &n, &d->labels, &err), EMOE_OK);
    float *x = d->images->data, *t = d->labels->data;
    for (size_t i = 0; i < d->images->nelem; i++)
        x[i] = (float)((i * 37) % 101) / 101.0f;
    for (int i = 0; i < 5; i++)
        t[i] = 20.0f + 10.0f * (float)i;
    float ref[5];
    for (int i = 0; i < 5; i++) {
        int rc = emoe_model_forward(m0, x + (size_t)i * 512, EMOE_F32, 1, 0, &err);
        ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
        ref[i] = emoe_model_logits(m0)[0];
    }
    struct emoe_model *m;
    struct emoe_moe *moe;
    int rc = emoe_model_load(path, &m, &moe, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    struct emoe_eval_options o;
    emoe_eval_options_init(&o);
    o.batch = 2;
    struct emoe_eval_result r;
    rc = emoe_evaluate(m, moe, d, &o, &r, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    double ae = 0;
    for (int i = 0; i < 5; i++)
        ae += fabs((double)ref[i] - t[i]);
    check_close(r.mae, ae / 5, 1e-5, "mae");
    /* 8 patch tokens per volume are routed */
    ck_assert_int_eq(r.layers[0].routing.tokens, 5 * 8);
    emoe_eval_result_free(&r);
    emoe_moe_free(moe);
    emoe_model_free(m);
    emoe_moe_free(moe0);
    emoe_model_free(m0);
    emoe_dataset_free(d);
}
END_TEST

START_TEST(test_eval_rejects_mismatch)
{
    struct emoe_error err = {0};
    struct emoe_vit_config v;
    struct emoe_moe_config c;
    tiny_vit(&v, EMOE_TASK_CLASSIFY);
    emoe_moe_config_init(&c);
    c.router = EMOE_ROUTER_NONE;
    struct emoe_moe *moe;
    struct emoe_model *m = make_model(&v, &c, &moe);
    struct emoe_eval_result r;
    struct emoe_dataset *d = make_data(4, 16, 3, 0);
    int rc = emoe_evaluate(m, NULL, d, NULL, &r, &err);
    tu_assert_error(rc, err, EMOE_EINVAL, "dataset: images are (16, 16), the model takes (8, 8)");
    ck_assert_ptr_null(r.class_count);
    emoe_dataset_free(d);

    d = make_data(4, 8, 1, 0);
    struct emoe_eval_options o;
    emoe_eval_options_init(&o);
    o.name = "t.npz";
    rc = emoe_evaluate(m, NULL, d, &o, &r, &err);
    tu_assert_error(rc, err, EMOE_EINVAL, "t.npz: images have 1 channels, the model takes 3");
    emoe_dataset_free(d);

    d = make_data(4, 8, 3, 0);
    ((int64_t *)d->labels->data)[2] = 5;
    rc = emoe_eval_check_data(m, d, "t.npz", &err);
    tu_assert_error(rc, err, EMOE_EINVAL, "t.npz: label 5 of image 2 is outside the model's 3");
    ((int64_t *)d->labels->data)[2] = 1;
    static char *names[4] = {"a", "b", "c", "d"};
    d->classes = names;
    d->nclasses = 4;
    rc = emoe_eval_check_data(m, d, "t.npz", &err);
    tu_assert_error(rc, err, EMOE_EINVAL, "t.npz: 4 classes, the model has 3");
    d->classes = NULL;
    d->nclasses = 0;
    ck_assert_int_eq(emoe_eval_check_data(m, d, "t.npz", &err), EMOE_OK);
    emoe_dataset_free(d);

    d = make_data(4, 8, 3, 1);
    rc = emoe_eval_check_data(m, d, "t.npz", &err);
    tu_assert_error(rc, err, EMOE_EINVAL, "labels are f32, the classifier needs integer");
    struct emoe_tensor *f = (struct emoe_tensor *)1;
    int32_t *lab = (int32_t *)1;
    rc = emoe_eval_features(m, d, 2, "t.npz", &f, &lab, &err);
    tu_assert_error(rc, err, EMOE_EINVAL, "t.npz: labels are f32, not class labels");
    ck_assert_ptr_null(f);
    ck_assert_ptr_null(lab);
    emoe_dataset_free(d);

    /* f32 images of rank 5 for a 2-D model */
    d = calloc(1, sizeof *d);
    int64_t shape[5] = {2, 8, 8, 8, 1}, n = 2;
    ck_assert_int_eq(emoe_tensor_new(EMOE_F32, 5, shape, &d->images, &err), EMOE_OK);
    ck_assert_int_eq(emoe_tensor_new(EMOE_I64, 1, &n, &d->labels, &err), EMOE_OK);
    rc = emoe_eval_check_data(m, d, "vol.npz", &err);
    tu_assert_error(rc, err, EMOE_EINVAL,
                    "vol.npz: images are f32 (2, 8, 8, 8, 1), the model takes u8 [N, H, W, 3]");
    emoe_dataset_free(d);
    emoe_model_free(m);
}
END_TEST

START_TEST(test_model_load_rejects)
{
    struct emoe_error err = {0};
    struct emoe_model *m = (struct emoe_model *)1;
    struct emoe_moe *moe = (struct emoe_moe *)1;
    const char *path = tu_tmppath("missing.safetensors");
    int rc = emoe_model_load(path, &m, &moe, &err);
    tu_assert_error(rc, err, EMOE_ENOTFOUND, "missing.safetensors: No such file");
    ck_assert_ptr_null(m);
    ck_assert_ptr_null(moe);

    /* a safetensors without the model metadata */
    path = tu_tmppath("bare.safetensors");
    float x[2] = {1, 2};
    int64_t two = 2;
    struct emoe_tensor *t;
    ck_assert_int_eq(emoe_tensor_wrap(EMOE_F32, 1, &two, x, &t, &err), EMOE_OK);
    struct emoe_named_tensor nt = {"w", t};
    ck_assert_int_eq(emoe_safetensors_write(path, &nt, 1, NULL, 0, &err), EMOE_OK);
    emoe_tensor_free(t);
    rc = emoe_model_load(path, &m, &moe, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "bare.safetensors: metadata lacks 'model.");
    ck_assert_ptr_null(m);

    /* metadata says MoE but a branch tensor is missing: the weights of a plain model
     * under MoE metadata */
    struct emoe_vit_config v;
    struct emoe_moe_config c;
    tiny_vit(&v, EMOE_TASK_CLASSIFY);
    tiny_moe(&c);
    emoe_moe_config_init(&c);
    c.router = EMOE_ROUTER_NONE;
    struct emoe_model *m0 = make_model(&v, &c, &moe);
    tiny_moe(&c);
    struct emoe_moe_meta meta;
    size_t n;
    ck_assert_int_eq(emoe_moe_metadata(&c, v.depth, &meta, &n, &err), EMOE_OK);
    path = tu_tmppath("nobranch.safetensors");
    ck_assert_int_eq(emoe_checkpoint_save(m0, path, meta.kv, n, &err), EMOE_OK);
    rc = emoe_model_load(path, &m, &moe, &err);
    ck_assert_int_eq(rc, EMOE_ENOTFOUND);
    ck_assert_msg(strstr(err.msg, "nobranch.safetensors") && strstr(err.msg, "branches.0."),
                  "%s", err.msg);
    ck_assert_ptr_null(m);
    ck_assert_ptr_null(moe);
    emoe_model_free(m0);
}
END_TEST

static Suite *eval_suite(void)
{
    Suite *s = suite_create("eval");
    TCase *tc = tcase_create("metrics");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_eval_classify_matches_hand_computed);
    tcase_add_test(tc, test_eval_top5_plain_vit);
    tcase_add_test(tc, test_eval_regression);
    tcase_add_test(tc, test_eval_target_scale);
    tcase_add_test(tc, test_eval_volumes);
    suite_add_tcase(s, tc);
    TCase *bad = tcase_create("malformed");
    tcase_add_test(bad, test_eval_rejects_mismatch);
    tcase_add_test(bad, test_model_load_rejects);
    suite_add_tcase(s, bad);
    return s;
}

int main(void)
{
    return tu_run(eval_suite());
}
