/*
 * check_train.c: unit tests of lib/train.c: a tiny ViT learns the synthetic
 * dataset well above chance with every router, regression on standardised targets
 * (targets 50 +- 10: MAE in the targets' units, scale in the checkpoint), an
 * interrupted and resumed run
 * ends with the same bytes as an uninterrupted one, a stop request saves and
 * returns EMOE_EINTR, a non-finite loss stops with the previous checkpoint
 * intact, and data that does not fit the model is refused with a clear message.
 */
#include "config.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/*
 * A simple separable dataset: 16x16 RGB noise images where class c (of 8) has a
 * bright 4x4 square in patch cell 2c of the 4x4 grid, coloured by the bits of c.  Image i has
 * label i % 8; the noise comes from (seed, i).
 */
static struct emoe_dataset *synthetic(int per_class, uint64_t seed)
{
    struct emoe_dataset *d = calloc(1, sizeof *d);
    ck_assert_ptr_nonnull(d);
    int64_t N = 8 * per_class, ishape[4] = {N, 16, 16, 3};
    struct emoe_error err = {0};
    int rc = emoe_tensor_new(EMOE_U8, 4, ishape, &d->images, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    rc = emoe_tensor_new(EMOE_I64, 1, &N, &d->labels, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    unsigned char *px = d->images->data;
    int64_t *lab = d->labels->data;
    for (int64_t i = 0; i < N; i++) {
        struct emoe_rng r;
        emoe_rng_init(&r, seed, (uint64_t)i);
        int c = (int)(i % 8), cell = 2 * c, gy = cell / 4, gx = cell % 4;
        unsigned char *im = px + i * 16 * 16 * 3;
        for (int k = 0; k < 16 * 16 * 3; k++)
            im[k] = (unsigned char)emoe_rng_below(&r, 96);
        for (int y = 0; y < 4; y++)
            for (int x = 0; x < 4; x++)
                for (int ch = 0; ch < 3; ch++)
                    im[((gy * 4 + y) * 16 + gx * 4 + x) * 3 + ch] = c >> ch & 1 ? 240 : 140;
        lab[i] = c;
    }
    return d;
}

struct net {
    struct emoe_model *m;
    struct emoe_moe *moe;
    struct emoe_moe_config mc;
};

/* z_loss: the softmax router's z-loss weight (0: off, the default). */
static void net_new_z(struct net *n, enum emoe_router_kind router, float z_loss)
{
    struct emoe_vit_config c;
    struct emoe_error err = {0};
    memset(&c, 0, sizeof c);
    c.image_ndim = 2;
    c.image_size[0] = c.image_size[1] = 16;
    c.patch_size = 4;
    c.in_chans = 3;
    c.embed_dim = 32;
    c.depth = 2;
    c.num_heads = 2;
    c.mlp_dim = 64;
    c.num_classes = 8;
    c.task = EMOE_TASK_CLASSIFY;
    for (int i = 0; i < 4; i++) {
        c.mean[i] = 0.5f;
        c.std[i] = 0.25f;
    }
    emoe_moe_config_init(&n->mc);
    n->mc.router = router;
    n->mc.experts = 4;
    n->mc.rank = 8;
    n->mc.bottleneck = 16;
    snprintf(n->mc.blocks, sizeof n->mc.blocks, "all");
    n->mc.z_loss = z_loss;
    struct emoe_param_spec *specs = NULL;
    size_t ns = 0;
    int rc = emoe_moe_param_specs(&n->mc, c.embed_dim, c.depth, &specs, &ns, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    rc = emoe_model_new(&c, specs, ns, &n->m, &err);
    free(specs);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    emoe_model_init(n->m, 1);
    n->moe = NULL;
    if (router != EMOE_ROUTER_NONE) {
        rc = emoe_moe_new(&n->mc, n->m, &n->moe, &err);
        ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    }
}

static void net_new(struct net *n, enum emoe_router_kind router)
{
    net_new_z(n, router, 0.0f);
}

static void net_free(struct net *n)
{
    emoe_moe_free(n->moe);
    emoe_model_free(n->m);
}

static void options(struct emoe_train_options *o, const char *out)
{
    static char state[4200];
    emoe_train_options_init(o);
    o->epochs = 8;
    o->batch = 32;
    o->lr = 3e-3;
    o->warmup = 5;
    o->log_every = 0;
    o->out_path = out;
    snprintf(state, sizeof state, "%.4000s.state", out);
    o->state_path = state;
}

/* ------------------------------------------------------------------ learning */

static void learns(enum emoe_router_kind router)
{
    struct emoe_dataset *tr = synthetic(40, 1), *va = synthetic(16, 2);
    struct net n;
    net_new(&n, router);
    struct emoe_train_options o;
    options(&o, tu_tmppath("learn.safetensors"));
    o.augment.hflip = 1;
    struct emoe_error err = {0};
    int rc = emoe_train_run(n.m, n.moe, tr, va, &o, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    struct emoe_train_metrics mt;
    rc = emoe_train_evaluate(n.m, n.moe, va, 64, NULL, &mt, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    /* chance is 1/8 */
    ck_assert_msg(mt.top1 > 0.5, "%s: validation top-1 %.3f", emoe_router_name(router), mt.top1);
    ck_assert(mt.top5 >= mt.top1);
    ck_assert_int_eq(mt.images, 128);
    /* the checkpoint reloads into a fresh model with the same results */
    struct net n2;
    net_new(&n2, router);
    rc = emoe_checkpoint_load(n2.m, o.out_path, 0, NULL, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    struct emoe_train_metrics mt2;
    rc = emoe_train_evaluate(n2.m, n2.moe, va, 64, NULL, &mt2, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    ck_assert(mt2.top1 == mt.top1);
    net_free(&n2);
    net_free(&n);
    emoe_dataset_free(tr);
    emoe_dataset_free(va);
}

START_TEST(test_learns_none) { learns(EMOE_ROUTER_NONE); }
END_TEST
START_TEST(test_learns_eigen) { learns(EMOE_ROUTER_EIGEN); }
END_TEST
START_TEST(test_learns_ermoe) { learns(EMOE_ROUTER_ERMOE); }
END_TEST
START_TEST(test_learns_softmax) { learns(EMOE_ROUTER_SOFTMAX); }
END_TEST

/* ------------------------------------------------------------------ regression */

/*
 * Volumes f32 [N, 8, 8, 8, 1] of noise plus g times a bright 4^3 cube, g ~ N(0, 1)
 * from (seed, i); the target is 50 + 10 g: a large offset against a spread of 10.
 */
static struct emoe_dataset *volumes(int N, uint64_t seed)
{
    struct emoe_dataset *d = calloc(1, sizeof *d);
    ck_assert_ptr_nonnull(d);
    int64_t ishape[5] = {N, 8, 8, 8, 1}, n = N;
    struct emoe_error err = {0};
    ck_assert_int_eq(emoe_tensor_new(EMOE_F32, 5, ishape, &d->images, &err), EMOE_OK);
    ck_assert_int_eq(emoe_tensor_new(EMOE_F32, 1, &n, &d->labels, &err), EMOE_OK);
    float *v = d->images->data, *t = d->labels->data;
    for (int i = 0; i < N; i++) {
        struct emoe_rng r;
        emoe_rng_init(&r, seed, (uint64_t)i);
        float g = emoe_rng_normal(&r);
        for (int k = 0; k < 512; k++) {
            int z = k / 64, y = k / 8 % 8, x = k % 8;
            v[(size_t)i * 512 + k] = 0.3f * emoe_rng_normal(&r) +
                                     (z >= 2 && z < 6 && y >= 2 && y < 6 && x >= 2 && x < 6
                                          ? g : 0.0f);
        }
        t[i] = 50.0f + 10.0f * g;
    }
    return d;
}

START_TEST(test_regression_standardised)
{
    struct emoe_dataset *tr = volumes(256, 11), *va = volumes(64, 12);
    struct emoe_error err = {0};
    struct emoe_vit_config c;
    memset(&c, 0, sizeof c);
    c.image_ndim = 3;
    c.image_size[0] = c.image_size[1] = c.image_size[2] = 8;
    c.patch_size = 4;
    c.in_chans = 1;
    c.embed_dim = 32;
    c.depth = 2;
    c.num_heads = 2;
    c.mlp_dim = 64;
    c.num_classes = 1;
    c.task = EMOE_TASK_REGRESS;
    c.mean[0] = 0.0f;
    c.std[0] = 1.0f;
    struct emoe_model *m;
    int rc = emoe_model_new(&c, NULL, 0, &m, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    emoe_model_init(m, 1);
    struct emoe_train_options o;
    options(&o, tu_tmppath("regress.safetensors"));
    o.epochs = 6;
    rc = emoe_train_run(m, NULL, tr, va, &o, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);

    /* the scale is the training targets' and is in the checkpoint */
    struct emoe_target_scale want, got;
    ck_assert_int_eq(emoe_train_target_scale(tr, &want, &err), EMOE_OK);
    ck_assert(fabs(want.mean - 50.0) < 2.0 && fabs(want.std - 10.0) < 2.0);
    struct emoe_safetensors *st;
    ck_assert_int_eq(emoe_safetensors_open(o.out_path, &st, &err), EMOE_OK);
    ck_assert_ptr_nonnull(emoe_safetensors_metadata_get(st, "data.target_mean"));
    ck_assert_ptr_nonnull(emoe_safetensors_metadata_get(st, "data.target_std"));
    emoe_safetensors_close(st);
    ck_assert_int_eq(emoe_eval_target_scale(o.out_path, &got, &err), EMOE_OK);
    ck_assert(got.mean == want.mean && got.std == want.std);

    /* validation MAE in the targets' units, well below their spread of 10 */
    struct emoe_train_metrics mt;
    rc = emoe_train_evaluate(m, NULL, va, 64, &got, &mt, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    ck_assert_msg(mt.mae < 3.0, "validation MAE %.3f", mt.mae);
    ck_assert_msg(fabs(mt.loss * got.std - mt.mae) < 1e-3 * mt.mae, "loss %g is the "
                  "standardised L1 (MAE %g)", mt.loss, mt.mae);

    /* emoe_evaluate on the reloaded checkpoint gives the same MAE */
    struct emoe_model *m2;
    struct emoe_moe *moe2;
    ck_assert_int_eq(emoe_model_load(o.out_path, &m2, &moe2, &err), EMOE_OK);
    struct emoe_eval_options eo;
    emoe_eval_options_init(&eo);
    eo.target = got;
    eo.keep_predictions = 1;
    struct emoe_eval_result r;
    rc = emoe_evaluate(m2, moe2, va, &eo, &r, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    ck_assert_msg(fabs(r.mae - mt.mae) < 1e-4 * mt.mae, "MAE %g vs %g", r.mae, mt.mae);
    ck_assert(r.r2 > 0.8);
    ck_assert(fabs(r.score[0] - ((float *)va->labels->data)[0]) < 10.0);
    emoe_eval_result_free(&r);
    /* without the scale (an old checkpoint): the outputs are taken as they are */
    emoe_eval_options_init(&eo);
    rc = emoe_evaluate(m2, moe2, va, &eo, &r, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    ck_assert(r.mae > 30.0);
    emoe_eval_result_free(&r);
    eo.target.std = 0.0;
    tu_assert_error(emoe_evaluate(m2, moe2, va, &eo, &r, &err), err, EMOE_EINVAL,
                    "invalid target scale");
    emoe_moe_free(moe2);
    emoe_model_free(m2);
    emoe_model_free(m);
    emoe_dataset_free(tr);
    emoe_dataset_free(va);
}
END_TEST

/* ------------------------------------------------------------------ resume */

struct stopper {
    int64_t at, seen;
};
static int stop_at(void *ctx)
{
    struct stopper *s = ctx;
    return s->seen >= s->at;
}
static void count_steps(void *ctx, const struct emoe_train_event *ev)
{
    struct stopper *s = ctx;
    if (ev->kind == EMOE_TRAIN_STEP)
        s->seen = ev->step;
}

START_TEST(test_resume_exact)
{
    struct emoe_dataset *tr = synthetic(10, 3), *va = synthetic(4, 4);
    struct emoe_error err = {0};
    char a[4096], b[4096];
    snprintf(a, sizeof a, "%s", tu_tmppath("straight.safetensors"));
    snprintf(b, sizeof b, "%s", tu_tmppath("resumed.safetensors"));
    struct emoe_train_options o;
    /* uninterrupted */
    struct net n;
    net_new(&n, EMOE_ROUTER_EIGEN);
    options(&o, a);
    o.epochs = 3; /* 80 images, batch 32: 3 steps per epoch (32, 32, 16) */
    o.augment.crop_padding = 2;
    o.augment.hflip = 1;
    int rc = emoe_train_run(n.m, n.moe, tr, va, &o, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    net_free(&n);
    /* stopped after step 4 (inside epoch 2), then resumed in a new model */
    net_new(&n, EMOE_ROUTER_EIGEN);
    options(&o, b);
    o.epochs = 3;
    o.augment.crop_padding = 2;
    o.augment.hflip = 1;
    struct stopper s = {4, 0};
    o.log_every = 1;
    o.should_stop = stop_at;
    o.log = count_steps;
    o.ctx = &s;
    rc = emoe_train_run(n.m, n.moe, tr, va, &o, &err);
    tu_assert_error(rc, err, EMOE_EINTR, "interrupted at step 4");
    ck_assert(tu_file_exists(o.state_path));
    net_free(&n);
    net_new(&n, EMOE_ROUTER_EIGEN);
    rc = emoe_checkpoint_load(n.m, b, 0, NULL, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    o.should_stop = NULL;
    o.resume = 1;
    rc = emoe_train_run(n.m, n.moe, tr, va, &o, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    net_free(&n);
    size_t na, nb;
    void *da = tu_read_file(a, &na), *db = tu_read_file(b, &nb);
    ck_assert_uint_eq(na, nb);
    ck_assert_msg(memcmp(da, db, na) == 0, "resumed checkpoint differs");
    free(da);
    free(db);
    char sa[4200], sb[4200];
    snprintf(sa, sizeof sa, "%s.state", a);
    snprintf(sb, sizeof sb, "%s.state", b);
    da = tu_read_file(sa, &na);
    db = tu_read_file(sb, &nb);
    ck_assert_uint_eq(na, nb);
    ck_assert_msg(memcmp(da, db, na) == 0, "resumed state differs");
    free(da);
    free(db);
    emoe_dataset_free(tr);
    emoe_dataset_free(va);
}
END_TEST

/* --------------------------------------------------------------- failures */

START_TEST(test_nonfinite_keeps_checkpoint)
{
    struct emoe_dataset *tr = synthetic(10, 3);
    struct net n;
    net_new(&n, EMOE_ROUTER_SOFTMAX);
    struct emoe_train_options o;
    const char *out = tu_tmppath("nan.safetensors");
    options(&o, out);
    o.lr = 1e30;
    o.warmup = 0;
    o.schedule = EMOE_LR_CONSTANT;
    o.clip = 0;
    o.save_every = 1;
    struct emoe_error err = {0};
    int rc = emoe_train_run(n.m, n.moe, tr, NULL, &o, &err);
    tu_assert_error(rc, err, EMOE_ENUMERIC, "is not finite");
    ck_assert_msg(strstr(err.msg, "step ") == err.msg, "%s", err.msg);
    /* whatever was saved last is a complete, loadable checkpoint */
    if (tu_file_exists(out)) {
        struct net n2;
        net_new(&n2, EMOE_ROUTER_SOFTMAX);
        rc = emoe_checkpoint_load(n2.m, out, 0, NULL, &err);
        ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
        net_free(&n2);
    }
    ck_assert_int_eq(tu_count_dir_entries(tu_tmpdir()) >= 0, 1);
    net_free(&n);
    emoe_dataset_free(tr);
}
END_TEST

/* STEP events: the loss terms (means over the logged steps, summed over the layers)
 * add up to aux_loss, and each layer's to its aux_loss; only the z-loss is on. */
struct term_log {
    int steps;
    double z;
};
static void check_terms(void *ctx, const struct emoe_train_event *ev)
{
    struct term_log *tl = ctx;
    if (ev->kind != EMOE_TRAIN_STEP)
        return;
    tl->steps++;
    double s = 0.0;
    for (int k = 0; k < EMOE_LOSS_TERMS; k++)
        s += ev->loss_terms[k];
    ck_assert_msg(fabs(s - ev->aux_loss) <= 1e-12 + 1e-9 * fabs(ev->aux_loss),
                  "step %lld: terms %.17g, aux_loss %.17g", (long long)ev->step, s, ev->aux_loss);
    for (int k = 0; k < EMOE_LOSS_TERMS; k++)
        if (k != EMOE_LOSS_Z)
            ck_assert(ev->loss_terms[k] == 0.0);
    tl->z += ev->loss_terms[EMOE_LOSS_Z];
    ck_assert_int_eq(ev->nlayers, 2);
    for (int l = 0; l < ev->nlayers; l++) {
        double t = 0.0;
        for (int k = 0; k < EMOE_LOSS_TERMS; k++)
            t += ev->layers[l].loss_terms[k];
        ck_assert(ev->layers[l].loss_terms[EMOE_LOSS_Z] > 0.0);
        ck_assert_msg(t == ev->layers[l].aux_loss, "layer %d: terms %.17g, aux_loss %.17g", l,
                      t, ev->layers[l].aux_loss);
    }
}

START_TEST(test_step_loss_terms)
{
    struct emoe_dataset *tr = synthetic(10, 3);
    struct net n;
    net_new_z(&n, EMOE_ROUTER_SOFTMAX, 1e-2f);
    struct emoe_train_options o;
    options(&o, tu_tmppath("terms.safetensors"));
    struct term_log tl = {0, 0.0};
    o.log_every = 2;
    o.log = check_terms;
    o.ctx = &tl;
    struct emoe_error err = {0};
    int rc = emoe_train_run(n.m, n.moe, tr, NULL, &o, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    ck_assert_int_gt(tl.steps, 0);
    ck_assert(tl.z > 0.0);
    net_free(&n);
    emoe_dataset_free(tr);
}
END_TEST

/* A non-finite MoE loss term stops the run naming the term and the layer. */
START_TEST(test_nonfinite_names_loss_term)
{
    struct emoe_dataset *tr = synthetic(10, 3);
    struct net n;
    net_new_z(&n, EMOE_ROUTER_SOFTMAX, 1e-3f);
    /* an infinite router weight in the second layer: its logits, hence its z-loss,
     * are not finite (the first layer's are) */
    struct emoe_moe_branch *b = emoe_moe_layer_branch(n.moe, 1);
    float *w = NULL;
    for (size_t i = 0; i < emoe_moe_branch_param_count(b); i++) {
        int nd;
        int64_t shape[2];
        float *data, *grad;
        if (strcmp(emoe_moe_branch_param(b, i, &nd, shape, &data, &grad), "router.weight") == 0)
            w = data;
    }
    ck_assert_ptr_nonnull(w);
    for (int d = 0; d < 32; d++)
        w[d] = INFINITY;
    struct emoe_train_options o;
    options(&o, tu_tmppath("nanz.safetensors"));
    struct emoe_error err = {0};
    int rc = emoe_train_run(n.m, n.moe, tr, NULL, &o, &err);
    tu_assert_error(rc, err, EMOE_ENUMERIC, "step 1: the router z-loss of the MoE layer after "
                    "block 1 is not finite; stopped");
    net_free(&n);
    emoe_dataset_free(tr);
}
END_TEST

START_TEST(test_data_mismatch)
{
    struct emoe_prep_options po;
    emoe_prep_options_init(&po);
    po.format = EMOE_PREP_SYNTHETIC;
    po.size = 32;
    po.per_class = 2;
    struct emoe_dataset *d = NULL;
    struct emoe_error err = {0};
    int rc = emoe_prep_read(NULL, 0, &po, &d, NULL, &err);
    ck_assert_msg(rc == EMOE_OK, "%s", err.msg);
    struct net n;
    net_new(&n, EMOE_ROUTER_NONE);
    rc = emoe_train_check_data(n.m, d, "big.npz", &err);
    tu_assert_error(rc, err, EMOE_EINVAL, "big.npz: images are (32, 32), the model takes (16, 16)");
    struct emoe_dataset *ok = synthetic(2, 1);
    ((int64_t *)ok->labels->data)[3] = 9;
    ok->nclasses = 0;
    rc = emoe_train_check_data(n.m, ok, "x.npz", &err);
    tu_assert_error(rc, err, EMOE_EINVAL, "x.npz: label 9 of image 3 is outside");
    ok->nclasses = 10;
    rc = emoe_train_check_data(n.m, ok, "x.npz", &err);
    tu_assert_error(rc, err, EMOE_EINVAL, "x.npz: 10 classes, the model has 8");
    ok->nclasses = 0;
    /* nothing is written when the data does not fit */
    struct emoe_train_options o;
    const char *out = tu_tmppath("never.safetensors");
    options(&o, out);
    rc = emoe_train_run(n.m, n.moe, d, NULL, &o, &err);
    tu_assert_error(rc, err, EMOE_EINVAL, "the model takes (16, 16)");
    ck_assert(!tu_file_exists(out));
    net_free(&n);
    emoe_dataset_free(d);
    emoe_dataset_free(ok);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("train");
    TCase *tc = tcase_create("train");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_learns_none);
    tcase_add_test(tc, test_learns_eigen);
    tcase_add_test(tc, test_learns_ermoe);
    tcase_add_test(tc, test_learns_softmax);
    tcase_add_test(tc, test_regression_standardised);
    tcase_add_test(tc, test_resume_exact);
    tcase_add_test(tc, test_nonfinite_keeps_checkpoint);
    tcase_add_test(tc, test_nonfinite_names_loss_term);
    tcase_add_test(tc, test_step_loss_terms);
    tcase_add_test(tc, test_data_mismatch);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run(suite());
}
