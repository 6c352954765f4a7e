/*
 * mk_eval_fixtures.c: writes the tiny models and datasets the shell tests of
 * emoe-eval and emoe-fewshot (tests/tools/eval.sh, fewshot.sh) run on, using the
 * library itself (built by make check; not installed).
 *
 *   mk_eval_fixtures DIR
 *
 * DIR/moe.safetensors    8x8x3 ViT (D 8, depth 2) with eigen MoE after blocks 0 and 1
 *                        (3 experts), 3 classes
 * DIR/plain.safetensors  the same backbone without MoE
 * DIR/reg.safetensors    the same with MoE and a regression head
 * DIR/test.npz           11 u8 images [11, 8, 8, 3], labels, classes "cat" "dog" "owl"
 * DIR/train.npz          30 images, 10 per class (few-shot training split)
 * DIR/reg.npz            11 images with float32 targets
 * DIR/big.npz            4 images of 16x16 (does not fit the models)
 * DIR/ref-logits.npy     the logits of moe.safetensors on test.npz, one image per
 *                        forward, f32 [11, 3]
 * DIR/train-labels.npy, DIR/test-labels.npy   the labels of train.npz and test.npz
 *
 * It starts as the tools do (emoe_tool_init): where the tools choose another OpenBLAS
 * kernel than the one OpenBLAS picked, ref-logits.npy must come from the same kernel
 * for emoe-eval's logits to be bit-for-bit equal to it.
 */
#include "config.h"
#include "common.h"
#include "emoe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(const struct emoe_error *err)
{
    fprintf(stderr, "mk_eval_fixtures: %s\n", err->msg);
    exit(1);
}

static char *join(const char *dir, const char *name)
{
    static char buf[8][4096];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, sizeof buf[0], "%s/%s", dir, name);
    return p;
}

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
    v->num_classes = task == EMOE_TASK_CLASSIFY ? 3 : 1;
    v->task = task;
    for (int i = 0; i < 4; i++) {
        v->mean[i] = 0.5f;
        v->std[i] = 0.25f;
    }
}

static struct emoe_model *make_model(enum emoe_task task, int with_moe, struct emoe_moe **moe,
                                     const char *path)
{
    struct emoe_error err = {0};
    struct emoe_vit_config v;
    tiny_vit(&v, task);
    struct emoe_moe_config c;
    emoe_moe_config_init(&c);
    c.router = with_moe ? EMOE_ROUTER_EIGEN : EMOE_ROUTER_NONE;
    c.experts = 3;
    c.rank = 4;
    c.bottleneck = 4;
    strcpy(c.blocks, "0,1");
    struct emoe_param_spec *specs = NULL;
    size_t n = 0;
    if (with_moe && emoe_moe_param_specs(&c, v.embed_dim, v.depth, &specs, &n, &err))
        die(&err);
    struct emoe_model *m;
    if (emoe_model_new(&v, specs, n, &m, &err))
        die(&err);
    free(specs);
    emoe_model_init(m, 7);
    *moe = NULL;
    if (with_moe && emoe_moe_new(&c, m, moe, &err))
        die(&err);
    struct emoe_param *hw = emoe_model_param(m, "vit.head.weight");
    for (size_t i = 0; i < hw->numel; i++)
        hw->data[i] *= 100.0f; /* predictions that differ between images */
    struct emoe_moe_meta meta;
    size_t nmeta = 0;
    if (with_moe && emoe_moe_metadata(&c, v.depth, &meta, &nmeta, &err))
        die(&err);
    if (emoe_checkpoint_save(m, path, nmeta ? meta.kv : NULL, nmeta, &err))
        die(&err);
    return m;
}

static struct emoe_dataset *make_data(int n, int size, int regress, uint32_t seed)
{
    struct emoe_error err = {0};
    struct emoe_dataset *d = calloc(1, sizeof *d);
    int64_t shape[4] = {n, size, size, 3}, ln = n;
    if (!d || emoe_tensor_new(EMOE_U8, 4, shape, &d->images, &err))
        die(&err);
    uint32_t s = seed;
    unsigned char *p = d->images->data;
    for (size_t i = 0; i < d->images->nelem; i++) {
        s = s * 1103515245u + 12345u;
        p[i] = (unsigned char)(s >> 24);
    }
    if (emoe_tensor_new(regress ? EMOE_F32 : EMOE_I64, 1, &ln, &d->labels, &err))
        die(&err);
    for (int i = 0; i < n; i++) {
        if (regress)
            ((float *)d->labels->data)[i] = 0.5f * (float)i - 2.0f;
        else
            ((int64_t *)d->labels->data)[i] = i % 3;
    }
    if (!regress) {
        static char *names[3] = {"cat", "dog", "owl"};
        d->classes = names;
        d->nclasses = 3;
    }
    return d;
}

static void write_data(struct emoe_dataset *d, const char *path)
{
    struct emoe_error err = {0};
    if (emoe_dataset_write(path, d, &err))
        die(&err);
}

static void write_labels(const struct emoe_dataset *d, const char *path)
{
    struct emoe_error err = {0};
    if (emoe_npy_write(path, d->labels, &err))
        die(&err);
}

static void free_data(struct emoe_dataset *d)
{
    d->classes = NULL; /* static names */
    d->nclasses = 0;
    emoe_dataset_free(d);
}

int main(int argc, char **argv)
{
    emoe_tool_init(argc, argv, "mk_eval_fixtures");
    if (argc != 2) {
        fprintf(stderr, "usage: mk_eval_fixtures DIR\n");
        return 2;
    }
    const char *dir = argv[1];
    struct emoe_error err = {0};
    struct emoe_moe *moe;
    struct emoe_model *m = make_model(EMOE_TASK_CLASSIFY, 1, &moe, join(dir, "moe.safetensors"));
    struct emoe_dataset *test = make_data(11, 8, 0, 12345);
    write_data(test, join(dir, "test.npz"));
    write_labels(test, join(dir, "test-labels.npy"));
    /* reference logits, one image per forward */
    int64_t shape[2] = {11, 3};
    struct emoe_tensor *ref;
    if (emoe_tensor_new(EMOE_F32, 2, shape, &ref, &err))
        die(&err);
    size_t per = test->images->nbytes / 11;
    for (int i = 0; i < 11; i++) {
        if (emoe_model_forward(m, (const unsigned char *)test->images->data + per * i, EMOE_U8,
                               1, 0, &err))
            die(&err);
        memcpy((float *)ref->data + 3 * i, emoe_model_logits(m), 3 * sizeof(float));
    }
    if (emoe_npy_write(join(dir, "ref-logits.npy"), ref, &err))
        die(&err);
    emoe_tensor_free(ref);
    emoe_moe_free(moe);
    emoe_model_free(m);

    m = make_model(EMOE_TASK_CLASSIFY, 0, &moe, join(dir, "plain.safetensors"));
    emoe_model_free(m);
    m = make_model(EMOE_TASK_REGRESS, 1, &moe, join(dir, "reg.safetensors"));
    emoe_moe_free(moe);
    emoe_model_free(m);

    struct emoe_dataset *train = make_data(30, 8, 0, 777);
    write_data(train, join(dir, "train.npz"));
    write_labels(train, join(dir, "train-labels.npy"));
    struct emoe_dataset *reg = make_data(11, 8, 1, 4242);
    write_data(reg, join(dir, "reg.npz"));
    struct emoe_dataset *big = make_data(4, 16, 0, 99);
    write_data(big, join(dir, "big.npz"));
    free_data(test);
    free_data(train);
    free_data(reg);
    free_data(big);
    return 0;
}
