/*
 * emoe-fewshot: few-shot linear probes (METHOD.md section 6) on pre-logit features.
 *
 *   emoe-fewshot [OPTIONS] -m MODEL --train TRAIN.npz --test TEST.npz
 *   emoe-fewshot [OPTIONS] --train-features F.npy --train-labels L.npy
 *                          --test-features F.npy --test-labels L.npy
 *
 * Prints one row per shot count: the mean and std of top-1 accuracy (in percent)
 * over the seeds, and with -v each seed's.  With -m the features are the model's
 * pre-logits on the two datasets (emoe_eval_features); otherwise they come from
 * .npy files made elsewhere (e.g. emoe-eval --features-out).
 */
#include "config.h"
#include "common.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SHOTS 32

struct options {
    const char *model, *train, *test;
    const char *train_features, *train_labels, *test_features, *test_labels;
    int shots[MAX_SHOTS];
    int nshots;
    int seeds;
    double lambda;
    enum emoe_probe_kind kind;
    int verbose;
};

enum {
    OPT_TRAIN = OPT_TOOL_BASE,
    OPT_TEST,
    OPT_TRAIN_FEATURES,
    OPT_TRAIN_LABELS,
    OPT_TEST_FEATURES,
    OPT_TEST_LABELS,
    OPT_SEEDS,
    OPT_L2,
    OPT_PROBE,
};

static void usage(void)
{
    printf("Usage: emoe-fewshot [OPTIONS] -m MODEL --train TRAIN.npz --test TEST.npz\n"
           "   or: emoe-fewshot [OPTIONS] --train-features F.npy --train-labels L.npy "
           "--test-features F.npy --test-labels L.npy\n"
           "Few-shot linear probes on the pre-logit features of a model (METHOD.md 6).\n"
           "\n"
           "  -m, --model MODEL         the checkpoint (.safetensors) that makes the features\n"
           "      --train FILE          the dataset .npz the shots are drawn from\n"
           "      --test FILE           the dataset .npz to score on (all of it)\n"
           "      --train-features FILE f32 [N, D] features made elsewhere (.npy)\n"
           "      --train-labels FILE   integer [N] labels of those features (.npy)\n"
           "      --test-features FILE  f32 [M, D] test features (.npy)\n"
           "      --test-labels FILE    integer [M] test labels (.npy)\n"
           "  -s, --shots LIST          shots per class, comma-separated (default 1,5,10,25)\n"
           "      --seeds N             seeds 0 .. N-1 for each shot count (default 3)\n"
           "      --l2 LAMBDA           ridge penalty (default 1024 = 2^10)\n"
           "      --probe KIND          ridge (default) or ncm (nearest class mean)\n"
           "  -v, --verbose             add each seed's accuracy to the rows\n"
           "  -q, --quiet               print nothing but the table\n"
           "  -j, --threads N           threads to use (default: all CPUs)\n"
           "  -h, --help                show this help and exit\n"
           "      --version             show version information and exit\n"
           "\n"
           "Output: a header, then per shot count: shots, mean and std (over seeds) of\n"
           "top-1 accuracy in percent, tab-separated.  See emoe-fewshot(1).\n");
}

static void parse_shots(const char *arg, struct options *o)
{
    o->nshots = 0;
    const char *p = arg;
    for (;;) {
        char buf[32];
        size_t n = strcspn(p, ",");
        if (n == 0 || n >= sizeof buf)
            emoe_tool_usage_error("--shots: '%s' is not a list of positive integers", arg);
        if (o->nshots == MAX_SHOTS)
            emoe_tool_usage_error("--shots: more than %d shot counts", MAX_SHOTS);
        memcpy(buf, p, n);
        buf[n] = '\0';
        o->shots[o->nshots++] = (int)emoe_tool_parse_long("--shots", buf, 1, 1000000);
        if (!p[n])
            break;
        p += n + 1;
    }
}

static void parse_options(int argc, char **argv, struct options *o)
{
    static const struct option longopts[] = {
        EMOE_COMMON_LONGOPTS,
        {"model", required_argument, NULL, 'm'},
        {"train", required_argument, NULL, OPT_TRAIN},
        {"test", required_argument, NULL, OPT_TEST},
        {"train-features", required_argument, NULL, OPT_TRAIN_FEATURES},
        {"train-labels", required_argument, NULL, OPT_TRAIN_LABELS},
        {"test-features", required_argument, NULL, OPT_TEST_FEATURES},
        {"test-labels", required_argument, NULL, OPT_TEST_LABELS},
        {"shots", required_argument, NULL, 's'},
        {"seeds", required_argument, NULL, OPT_SEEDS},
        {"l2", required_argument, NULL, OPT_L2},
        {"probe", required_argument, NULL, OPT_PROBE},
        {"verbose", no_argument, NULL, 'v'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    static const int default_shots[4] = {1, 5, 10, 25};
    memcpy(o->shots, default_shots, sizeof default_shots);
    o->nshots = 4;
    o->seeds = 3;
    o->lambda = EMOE_PROBE_LAMBDA;
    o->kind = EMOE_PROBE_RIDGE;
    int c;
    while ((c = getopt_long(argc, argv, EMOE_COMMON_SHORTOPTS "m:s:v", longopts, NULL)) != -1) {
        if (emoe_tool_common_option(c, optarg, usage))
            continue;
        switch (c) {
        case 'm': o->model = optarg; break;
        case OPT_TRAIN: o->train = optarg; break;
        case OPT_TEST: o->test = optarg; break;
        case OPT_TRAIN_FEATURES: o->train_features = optarg; break;
        case OPT_TRAIN_LABELS: o->train_labels = optarg; break;
        case OPT_TEST_FEATURES: o->test_features = optarg; break;
        case OPT_TEST_LABELS: o->test_labels = optarg; break;
        case 's': parse_shots(optarg, o); break;
        case OPT_SEEDS: o->seeds = (int)emoe_tool_parse_long("--seeds", optarg, 1, 10000); break;
        case OPT_L2: o->lambda = emoe_tool_parse_double("--l2", optarg, 1e-12, 1e12); break;
        case OPT_PROBE:
            if (strcmp(optarg, "ridge") == 0)
                o->kind = EMOE_PROBE_RIDGE;
            else if (strcmp(optarg, "ncm") == 0)
                o->kind = EMOE_PROBE_NCM;
            else
                emoe_tool_usage_error("--probe: '%s' is not ridge or ncm", optarg);
            break;
        case 'v': o->verbose = 1; break;
        default: emoe_tool_usage_error("unexpected option");
        }
    }
    if (optind < argc)
        emoe_tool_usage_error("unexpected argument '%s'", argv[optind]);
    int feat = o->train_features || o->train_labels || o->test_features || o->test_labels;
    int model = o->model || o->train || o->test;
    if (feat && model)
        emoe_tool_usage_error("give either -m/--train/--test or the four --*-features/"
                              "--*-labels files, not both");
    if (!feat && !model)
        emoe_tool_usage_error("no input: give -m MODEL --train TRAIN.npz --test TEST.npz or "
                              "the feature files");
    if (feat && !(o->train_features && o->train_labels && o->test_features && o->test_labels))
        emoe_tool_usage_error("feature mode needs all of --train-features, --train-labels, "
                              "--test-features and --test-labels");
    if (model && !(o->model && o->train && o->test))
        emoe_tool_usage_error("model mode needs all of -m MODEL, --train and --test");
    if (model && strcmp(o->model, "-") == 0)
        emoe_tool_usage_error("-m: the model must be a file, not '-'");
    if (model && strcmp(o->train, "-") == 0 && strcmp(o->test, "-") == 0)
        emoe_tool_usage_error("--train and --test cannot both read standard input");
}

/* Features f32 [N, D] (f16, bf16, f64 are converted). */
static struct emoe_tensor *load_features(const char *path)
{
    struct emoe_error err = {0};
    struct emoe_tensor *t;
    if (emoe_npy_read(path, &t, &err) != EMOE_OK)
        emoe_tool_fail(&err);
    char shp[128];
    if (t->ndim != 2 || t->shape[0] == 0 || t->shape[1] == 0 || t->shape[1] >= INT32_MAX)
        emoe_tool_die("%s: features have shape %s, not [samples, features]", path,
                      emoe_shape_format(t->ndim, t->shape, shp, sizeof shp));
    if (t->dtype != EMOE_F32) {
        if (t->dtype != EMOE_F16 && t->dtype != EMOE_BF16 && t->dtype != EMOE_F64)
            emoe_tool_die("%s: features are %s, not floating point", path,
                          emoe_dtype_name(t->dtype));
        struct emoe_tensor *c;
        if (emoe_tensor_convert(t, EMOE_F32, &c, &err) != EMOE_OK)
            emoe_tool_fail(&err);
        emoe_tensor_free(t);
        t = c;
    }
    return t;
}

/* Labels as i32 [N]: any integer dtype, values in [0, 2^31). */
static int32_t *load_labels(const char *path, size_t want, const char *fpath, int *maxlabel)
{
    struct emoe_error err = {0};
    struct emoe_tensor *t;
    if (emoe_npy_read(path, &t, &err) != EMOE_OK)
        emoe_tool_fail(&err);
    char shp[128];
    if (t->ndim != 1)
        emoe_tool_die("%s: labels have shape %s, not [samples]", path,
                      emoe_shape_format(t->ndim, t->shape, shp, sizeof shp));
    if ((size_t)t->shape[0] != want)
        emoe_tool_die("%s: %lld labels for the %zu rows of %s", path, (long long)t->shape[0],
                      want, fpath);
    if (t->dtype == EMOE_F16 || t->dtype == EMOE_BF16 || t->dtype == EMOE_F32
        || t->dtype == EMOE_F64 || t->dtype == EMOE_BOOL)
        emoe_tool_die("%s: labels are %s, not integers", path, emoe_dtype_name(t->dtype));
    struct emoe_tensor *c;
    if (emoe_tensor_convert(t, EMOE_I64, &c, &err) != EMOE_OK)
        emoe_tool_fail(&err);
    emoe_tensor_free(t);
    int32_t *y = malloc((want ? want : 1) * sizeof *y);
    if (!y)
        emoe_tool_die("%s: out of memory", path);
    const int64_t *v = c->data;
    for (size_t i = 0; i < want; i++) {
        if (v[i] < 0 || v[i] > 1000000)
            emoe_tool_die("%s: label %lld of sample %zu is outside [0, 1000000]", path,
                          (long long)v[i], i);
        y[i] = (int32_t)v[i];
        if (y[i] > *maxlabel)
            *maxlabel = y[i];
    }
    emoe_tensor_free(c);
    return y;
}

/* Model form: the pre-logit features and labels of both datasets (lib/eval.c). */
static void model_features(const struct options *o, struct emoe_tensor **xtr, int32_t **ytr,
                           struct emoe_tensor **xte, int32_t **yte, int *Ktr, int *Kte)
{
    struct emoe_error err = {0};
    struct emoe_model *m;
    struct emoe_moe *moe;
    if (emoe_model_load(o->model, &m, &moe, &err) != EMOE_OK)
        emoe_tool_fail(&err);
    const char *paths[2] = {o->train, o->test};
    struct emoe_tensor **x[2] = {xtr, xte};
    int32_t **y[2] = {ytr, yte};
    int *K[2] = {Ktr, Kte};
    for (int s = 0; s < 2; s++) {
        struct emoe_dataset *d;
        const char *name = strcmp(paths[s], "-") ? paths[s] : "<stdin>";
        if (emoe_dataset_read(paths[s], &d, &err) != EMOE_OK)
            emoe_tool_fail(&err);
        if (d->labels->dtype != EMOE_I64)
            emoe_tool_die("%s: labels are %s, the probe needs class labels", name,
                          emoe_dtype_name(d->labels->dtype));
        if (emoe_eval_features(m, d, 64, name, x[s], y[s], &err) != EMOE_OK)
            emoe_tool_fail(&err);
        size_t n = (size_t)(*x[s])->shape[0];
        for (size_t i = 0; i < n; i++) {
            if ((*y[s])[i] > 1000000)
                emoe_tool_die("%s: label %d of image %zu is outside [0, 1000000]", name,
                              (int)(*y[s])[i], i);
            if ((*y[s])[i] > *K[s])
                *K[s] = (*y[s])[i];
        }
        emoe_dataset_free(d);
    }
    emoe_moe_free(moe);
    emoe_model_free(m);
}

struct progress_ctx {
    struct emoe_progress bar;
    uint64_t done;
};

static void progress(void *ctx, int shots, int seed)
{
    struct progress_ctx *p = ctx;
    char extra[64];
    snprintf(extra, sizeof extra, "%d-shot seed %d", shots, seed);
    emoe_progress_update(&p->bar, ++p->done, extra);
}

int main(int argc, char **argv)
{
    struct options o;
    struct emoe_error err = {0};
    emoe_tool_init(argc, argv, "emoe-fewshot");
    argv[0] = (char *)"emoe-fewshot"; /* getopt_long names the program from argv[0] */
    parse_options(argc, argv, &o);
    struct emoe_tensor *xtr, *xte;
    int32_t *ytr, *yte;
    int Ktr = -1, Kte = -1;
    const char *train_name, *test_name; /* for messages */
    if (o.model) {
        model_features(&o, &xtr, &ytr, &xte, &yte, &Ktr, &Kte);
        train_name = o.train;
        test_name = o.test;
    } else {
        xtr = load_features(o.train_features);
        xte = load_features(o.test_features);
        if (xtr->shape[1] != xte->shape[1])
            emoe_tool_die("%s: %lld features per sample, but %s has %lld", o.test_features,
                          (long long)xte->shape[1], o.train_features,
                          (long long)xtr->shape[1]);
        ytr = load_labels(o.train_labels, (size_t)xtr->shape[0], o.train_features, &Ktr);
        yte = load_labels(o.test_labels, (size_t)xte->shape[0], o.test_features, &Kte);
        train_name = o.train_labels;
        test_name = o.test_labels;
    }
    size_t ntr = (size_t)xtr->shape[0], nte = (size_t)xte->shape[0];
    int D = (int)xtr->shape[1];
    int K = Ktr + 1;
    if (Kte >= K)
        emoe_tool_die("%s: test label %d, but the training labels only go up to %d",
                      test_name, Kte, Ktr);

    struct emoe_fewshot_options fo;
    emoe_fewshot_options_init(&fo);
    fo.shots = o.shots;
    fo.nshots = o.nshots;
    fo.seeds = o.seeds;
    fo.lambda = o.lambda;
    fo.kind = o.kind;
    struct progress_ctx pc = {.done = 0};
    emoe_progress_start(&pc.bar, "probing", (uint64_t)o.nshots * (uint64_t)o.seeds);
    fo.progress = progress;
    fo.ctx = &pc;
    double *acc = malloc((size_t)o.nshots * (size_t)o.seeds * sizeof *acc);
    if (!acc)
        emoe_tool_die("out of memory");
    if (o.verbose && o.kind == EMOE_PROBE_RIDGE)
        emoe_tool_warn("%zu training and %zu test samples, %d classes, %d features; ridge "
                       "probe, lambda %g, %d seed%s", ntr, nte, K, D, o.lambda, o.seeds,
                       o.seeds == 1 ? "" : "s");
    else if (o.verbose)
        emoe_tool_warn("%zu training and %zu test samples, %d classes, %d features; "
                       "nearest-class-mean probe, %d seed%s", ntr, nte, K, D, o.seeds,
                       o.seeds == 1 ? "" : "s");
    int rc = emoe_fewshot_run(&fo, xtr->data, ytr, ntr, xte->data, yte, nte, D, K, acc, &err);
    emoe_progress_end(&pc.bar);
    if (rc != EMOE_OK) {
        emoe_error_prefix(&err, train_name);
        emoe_tool_fail(&err);
    }

    printf("shots\tmean\tstd");
    if (o.verbose)
        for (int i = 0; i < o.seeds; i++)
            printf("\tseed%d", i);
    putchar('\n');
    for (int s = 0; s < o.nshots; s++) {
        const double *a = acc + (size_t)s * (size_t)o.seeds;
        double mean = 0, var = 0;
        for (int i = 0; i < o.seeds; i++)
            mean += a[i];
        mean /= o.seeds;
        for (int i = 0; i < o.seeds; i++)
            var += (a[i] - mean) * (a[i] - mean);
        printf("%d\t%.2f\t%.2f", o.shots[s], 100.0 * mean, 100.0 * sqrt(var / o.seeds));
        if (o.verbose)
            for (int i = 0; i < o.seeds; i++)
                printf("\t%.2f", 100.0 * a[i]);
        putchar('\n');
    }
    free(acc);
    free(ytr);
    free(yte);
    emoe_tensor_free(xtr);
    emoe_tensor_free(xte);
    if (fflush(stdout) != 0 || ferror(stdout))
        emoe_tool_die("<stdout>: write error: %s", strerror(errno));
    return EXIT_OK;
}
