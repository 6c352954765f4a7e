/*
 * emoe-eval: evaluate a model on a dataset (lib/eval.c).
 *
 *   emoe-eval [OPTIONS] -m MODEL DATA.npz
 *
 * Prints the metrics (TSV "metric<TAB>value" lines, or one JSON object with --json):
 * count, top-1, top-5, loss (classification) or MAE, RMSE, R^2 (regression), with
 * --per-class each class's accuracy, and per MoE layer the routing statistics of
 * METHOD.md section 5.  Writes on request the logits, features, routing counts and
 * confusion matrix as .npy, and per-image predictions as TSV on stdout.  DATA "-"
 * reads the dataset from stdin; an .npy output "-" writes to stdout, and then (as with
 * --predictions) the metrics go to stderr.  Everything is read and checked before
 * any output is created; the outputs are committed together at the end.
 */
#include "config.h"
#include "common.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { OUT_LOGITS, OUT_FEATURES, OUT_ROUTING, OUT_CONFUSION, NOUT };
static const char *const out_option[NOUT] = {"--logits-out", "--features-out", "--routing-out",
                                             "--confusion-out"};

struct options {
    const char *model;
    const char *data;
    const char *out[NOUT];
    int batch;
    int json;
    int per_class;
    int predictions;
};

enum {
    OPT_JSON = OPT_TOOL_BASE,
    OPT_TSV,
    OPT_PER_CLASS,
    OPT_PREDICTIONS,
    OPT_LOGITS_OUT,
    OPT_FEATURES_OUT,
    OPT_ROUTING_OUT,
    OPT_CONFUSION_OUT,
};

static void usage(void)
{
    printf("Usage: emoe-eval [OPTIONS] -m MODEL DATA.npz\n"
           "Evaluate a model on a dataset: accuracy and loss (or MAE, RMSE, R^2 for\n"
           "regression) and the routing statistics of every MoE layer.\n"
           "\n"
           "  -m, --model MODEL         the checkpoint (.safetensors)\n"
           "  -b, --batch N             images per forward pass (default 64)\n"
           "      --json                print the metrics as one JSON object\n"
           "      --tsv                 print the metrics as 'metric<TAB>value' lines (default)\n"
           "      --per-class           add the accuracy of every class\n"
           "      --predictions         print index, label, prediction, probability per\n"
           "                            image (TSV) on stdout; the metrics go to stderr\n"
           "      --logits-out FILE     write the logits, f32 [N, K] (.npy)\n"
           "      --features-out FILE   write the pre-logit features, f32 [N, D] (.npy)\n"
           "      --routing-out FILE    write top-1 routing counts by true class,\n"
           "                            f32 [layers, experts, K] (.npy)\n"
           "      --confusion-out FILE  write the confusion matrix, i64 [K, K], row = label,\n"
           "                            column = prediction (.npy)\n"
           "  -q, --quiet               print no progress and no warnings\n"
           "  -j, --threads N           threads to use (default: all CPUs)\n"
           "  -h, --help                show this help and exit\n"
           "      --version             show version information and exit\n"
           "\n"
           "DATA.npz '-' reads standard input.  One output FILE may be '-' (standard output);\n"
           "the metrics then go to standard error:\n"
           "  emoe-eval -m m.safetensors --routing-out - test.npz | emoe-heatmap - -o map.png\n"
           "See emoe-eval(1).\n");
}

static void parse_options(int argc, char **argv, struct options *o)
{
    static const struct option longopts[] = {
        EMOE_COMMON_LONGOPTS,
        {"model", required_argument, NULL, 'm'},
        {"batch", required_argument, NULL, 'b'},
        {"json", no_argument, NULL, OPT_JSON},
        {"tsv", no_argument, NULL, OPT_TSV},
        {"per-class", no_argument, NULL, OPT_PER_CLASS},
        {"predictions", no_argument, NULL, OPT_PREDICTIONS},
        {"logits-out", required_argument, NULL, OPT_LOGITS_OUT},
        {"features-out", required_argument, NULL, OPT_FEATURES_OUT},
        {"routing-out", required_argument, NULL, OPT_ROUTING_OUT},
        {"confusion-out", required_argument, NULL, OPT_CONFUSION_OUT},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    o->batch = 64;
    int c;
    while ((c = getopt_long(argc, argv, EMOE_COMMON_SHORTOPTS "m:b:", longopts, NULL)) != -1) {
        if (emoe_tool_common_option(c, optarg, usage))
            continue;
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'b': o->batch = (int)emoe_tool_parse_long("--batch", optarg, 1, 65536); break;
        case OPT_JSON: o->json = 1; break;
        case OPT_TSV: o->json = 0; break;
        case OPT_PER_CLASS: o->per_class = 1; break;
        case OPT_PREDICTIONS: o->predictions = 1; break;
        case OPT_LOGITS_OUT: o->out[OUT_LOGITS] = optarg; break;
        case OPT_FEATURES_OUT: o->out[OUT_FEATURES] = optarg; break;
        case OPT_ROUTING_OUT: o->out[OUT_ROUTING] = optarg; break;
        case OPT_CONFUSION_OUT: o->out[OUT_CONFUSION] = optarg; break;
        default: emoe_tool_usage_error("unexpected option");
        }
    }
    if (!o->model)
        emoe_tool_usage_error("no model: give -m MODEL");
    if (strcmp(o->model, "-") == 0)
        emoe_tool_usage_error("-m: the model must be a file, not '-'");
    if (optind >= argc)
        emoe_tool_usage_error("no DATA.npz given");
    if (argc - optind > 1)
        emoe_tool_usage_error("one DATA.npz only (got '%s' too)", argv[optind + 1]);
    o->data = argv[optind];
    /* at most one thing on stdout; no file written twice or over an input */
    const char *std_user = o->predictions ? "--predictions" : NULL;
    for (int i = 0; i < NOUT; i++) {
        if (!o->out[i])
            continue;
        if (strcmp(o->out[i], "-") == 0) {
            if (std_user)
                emoe_tool_usage_error("%s and %s both write to standard output", std_user,
                                      out_option[i]);
            std_user = out_option[i];
            continue;
        }
        if (strcmp(o->out[i], o->model) == 0 || strcmp(o->out[i], o->data) == 0)
            emoe_tool_usage_error("%s: '%s' is an input", out_option[i], o->out[i]);
        for (int j = 0; j < i; j++)
            if (o->out[j] && strcmp(o->out[i], o->out[j]) == 0)
                emoe_tool_usage_error("%s and %s are the same file '%s'", out_option[j],
                                      out_option[i], o->out[i]);
    }
}

/* A class's name for the metrics: the dataset's (tabs and newlines as spaces) or its
 * index. */
static const char *class_name(const struct emoe_dataset *d, int k, char *buf, size_t size)
{
    if (!d->classes || (size_t)k >= d->nclasses) {
        snprintf(buf, size, "%d", k);
        return buf;
    }
    snprintf(buf, size, "%s", d->classes[k]);
    for (char *p = buf; *p; p++)
        if (*p == '\t' || *p == '\n' || *p == '\r')
            *p = ' ';
    return buf;
}

static void class_stats(const struct emoe_eval_result *r, int k, int64_t *count, double *acc)
{
    int64_t n = r->class_count[k];
    *count = n;
    *acc = n ? (double)r->class_correct[k] / (double)n : NAN;
}

static void print_tsv(FILE *f, const struct options *o, const struct emoe_dataset *d,
                      const struct emoe_eval_result *r)
{
    fprintf(f, "metric\tvalue\n");
    fprintf(f, "count\t%zu\n", r->count);
    if (r->task == EMOE_TASK_CLASSIFY) {
        fprintf(f, "top1\t%.6f\ntop5\t%.6f\nloss\t%.6g\n", r->top1, r->top5, r->loss);
        for (int k = 0; o->per_class && k < r->nclasses; k++) {
            char name[256];
            int64_t n;
            double acc;
            class_stats(r, k, &n, &acc);
            fprintf(f, "class.%s.accuracy\t%.6f\n", class_name(d, k, name, sizeof name), acc);
            fprintf(f, "class.%s.count\t%lld\n", class_name(d, k, name, sizeof name),
                    (long long)n);
        }
    } else {
        fprintf(f, "mae\t%.6g\nrmse\t%.6g\nr2\t%.6g\nloss\t%.6g\n", r->mae, r->rmse, r->r2,
                r->loss);
    }
    for (int l = 0; l < r->nlayers; l++) {
        const struct emoe_routing_summary *s = &r->layers[l].routing;
        int b = r->layers[l].block;
        fprintf(f, "routing.%d.experts\t%d\n", b, s->experts);
        fprintf(f, "routing.%d.tokens\t%lld\n", b, (long long)s->tokens);
        fprintf(f, "routing.%d.cv\t%.6f\n", b, s->cv);
        fprintf(f, "routing.%d.entropy\t%.6f\n", b, s->entropy);
        fprintf(f, "routing.%d.peak\t%.6f\n", b, s->peak);
        fprintf(f, "routing.%d.min_share\t%.6f\n", b, s->min_share);
        fprintf(f, "routing.%d.dropped\t%.6f\n", b, s->dropped_frac);
        fprintf(f, "routing.%d.unused\t%d\n", b, s->unused);
    }
}

static int print_json(FILE *f, const char *fname, const struct options *o,
                      const struct emoe_dataset *d, const struct emoe_eval_result *r,
                      struct emoe_error *err)
{
    struct emoe_json_out j;
    emoe_json_out_init(&j);
    emoe_json_begin_object(&j);
    emoe_json_key(&j, "model");
    emoe_json_string(&j, o->model);
    emoe_json_key(&j, "data");
    emoe_json_string(&j, strcmp(o->data, "-") ? o->data : "<stdin>");
    emoe_json_key(&j, "task");
    emoe_json_string(&j, r->task == EMOE_TASK_CLASSIFY ? "classify" : "regress");
    emoe_json_key(&j, "count");
    emoe_json_uint(&j, r->count);
    if (r->task == EMOE_TASK_CLASSIFY) {
        emoe_json_key(&j, "top1");
        emoe_json_double(&j, r->top1);
        emoe_json_key(&j, "top5");
        emoe_json_double(&j, r->top5);
        emoe_json_key(&j, "loss");
        emoe_json_double(&j, r->loss);
        if (o->per_class) {
            emoe_json_key(&j, "per_class");
            emoe_json_begin_array(&j);
            for (int k = 0; k < r->nclasses; k++) {
                int64_t n;
                double acc;
                class_stats(r, k, &n, &acc);
                emoe_json_begin_object(&j);
                emoe_json_key(&j, "class");
                emoe_json_int(&j, k);
                if (d->classes && (size_t)k < d->nclasses) {
                    emoe_json_key(&j, "name");
                    emoe_json_string(&j, d->classes[k]);
                }
                emoe_json_key(&j, "count");
                emoe_json_int(&j, n);
                emoe_json_key(&j, "accuracy");
                emoe_json_double(&j, acc); /* NaN (no images) is written as null */
                emoe_json_end_object(&j);
            }
            emoe_json_end_array(&j);
        }
    } else {
        emoe_json_key(&j, "mae");
        emoe_json_double(&j, r->mae);
        emoe_json_key(&j, "rmse");
        emoe_json_double(&j, r->rmse);
        emoe_json_key(&j, "r2");
        emoe_json_double(&j, r->r2);
        emoe_json_key(&j, "loss");
        emoe_json_double(&j, r->loss);
    }
    emoe_json_key(&j, "routing");
    emoe_json_begin_array(&j);
    for (int l = 0; l < r->nlayers; l++) {
        const struct emoe_routing_summary *s = &r->layers[l].routing;
        emoe_json_begin_object(&j);
        emoe_json_key(&j, "layer");
        emoe_json_int(&j, l);
        emoe_json_key(&j, "block");
        emoe_json_int(&j, r->layers[l].block);
        emoe_json_key(&j, "experts");
        emoe_json_int(&j, s->experts);
        emoe_json_key(&j, "tokens");
        emoe_json_int(&j, s->tokens);
        emoe_json_key(&j, "cv");
        emoe_json_double(&j, s->cv);
        emoe_json_key(&j, "entropy");
        emoe_json_double(&j, s->entropy);
        emoe_json_key(&j, "peak");
        emoe_json_double(&j, s->peak);
        emoe_json_key(&j, "min_share");
        emoe_json_double(&j, s->min_share);
        emoe_json_key(&j, "dropped");
        emoe_json_double(&j, s->dropped_frac);
        emoe_json_key(&j, "unused");
        emoe_json_int(&j, s->unused);
        emoe_json_end_object(&j);
    }
    emoe_json_end_array(&j);
    emoe_json_end_object(&j);
    int rc = emoe_json_out_write_line(&j, f, fname, err);
    emoe_json_out_free(&j);
    return rc;
}

static void print_predictions(const struct emoe_dataset *d, const struct emoe_eval_result *r)
{
    if (r->task == EMOE_TASK_CLASSIFY) {
        printf("index\tlabel\tprediction\tprobability\n");
        for (size_t i = 0; i < r->count; i++) {
            long long y = d->labels->dtype == EMOE_I64 ? ((const int64_t *)d->labels->data)[i]
                                                       : ((const int32_t *)d->labels->data)[i];
            printf("%zu\t%lld\t%d\t%.6f\n", i, y, (int)r->pred[i], (double)r->score[i]);
        }
    } else {
        printf("index\ttarget\tprediction\n");
        const float *t = d->labels->data;
        for (size_t i = 0; i < r->count; i++)
            printf("%zu\t%.9g\t%.9g\n", i, (double)t[i], (double)r->score[i]);
    }
}

struct progress_ctx {
    struct emoe_progress bar;
};

static void progress(void *ctx, size_t done, size_t total)
{
    (void)total;
    emoe_progress_update(&((struct progress_ctx *)ctx)->bar, done, NULL);
}

int main(int argc, char **argv)
{
    struct options o;
    struct emoe_error err = {0};
    emoe_tool_init(argc, argv, "emoe-eval");
    parse_options(argc, argv, &o);

    /* inputs: model and data, checked against each other */
    struct emoe_model *m;
    struct emoe_moe *moe;
    if (emoe_model_load(o.model, &m, &moe, &err) != EMOE_OK)
        emoe_tool_fail(&err);
    struct emoe_dataset *d;
    if (emoe_dataset_read(o.data, &d, &err) != EMOE_OK)
        emoe_tool_fail(&err);
    const char *dname = strcmp(o.data, "-") ? o.data : "<stdin>";
    if (emoe_eval_check_data(m, d, dname, &err) != EMOE_OK)
        emoe_tool_fail(&err);
    const struct emoe_vit_config *cfg = emoe_model_config(m);
    if (o.out[OUT_ROUTING] && !moe)
        emoe_tool_die("%s: --routing-out: the model has no MoE layers (router 'none')",
                      o.model);
    if (o.out[OUT_CONFUSION] && cfg->task != EMOE_TASK_CLASSIFY)
        emoe_tool_die("%s: --confusion-out: a regression model has no confusion matrix",
                      o.model);
    if (o.per_class && cfg->task != EMOE_TASK_CLASSIFY)
        emoe_tool_warn("%s: --per-class: a regression model has no classes", o.model);

    struct emoe_eval_options eo;
    emoe_eval_options_init(&eo);
    eo.batch = o.batch;
    eo.keep_logits = o.out[OUT_LOGITS] != NULL;
    eo.keep_features = o.out[OUT_FEATURES] != NULL;
    eo.keep_predictions = o.predictions;
    eo.keep_confusion = o.out[OUT_CONFUSION] != NULL;
    eo.name = dname;
    if (cfg->task == EMOE_TASK_REGRESS && emoe_eval_target_scale(o.model, &eo.target, &err))
        emoe_tool_fail(&err);
    struct progress_ctx pc;
    emoe_progress_start(&pc.bar, "evaluating", (uint64_t)d->images->shape[0]);
    eo.progress = progress;
    eo.ctx = &pc;
    struct emoe_eval_result r;
    int rc = emoe_evaluate(m, moe, d, &eo, &r, &err);
    emoe_progress_end(&pc.bar);
    if (rc != EMOE_OK)
        emoe_tool_fail(&err);

    /* outputs: every file opened and written, then all committed */
    struct emoe_tensor *conf = NULL;
    if (o.out[OUT_CONFUSION]) {
        int64_t shape[2] = {r.nclasses, r.nclasses};
        if (emoe_tensor_wrap(EMOE_I64, 2, shape, r.confusion, &conf, &err) != EMOE_OK)
            emoe_tool_fail(&err);
    }
    const struct emoe_tensor *what[NOUT] = {r.logits, r.features, r.routing, conf};
    struct emoe_atomic at[NOUT];
    int opened[NOUT] = {0}, to_stdout = o.predictions;
    /* files first, standard output last (it cannot be taken back) */
    for (int n = 0; n < 2 * NOUT && rc == EMOE_OK; n++) {
        int i = n % NOUT;
        if (!o.out[i] || (strcmp(o.out[i], "-") == 0) != (n >= NOUT))
            continue;
        to_stdout |= n >= NOUT;
        rc = emoe_atomic_open(&at[i], o.out[i], &err);
        if (rc == EMOE_OK) {
            opened[i] = 1;
            rc = emoe_npy_write_stream(at[i].f, o.out[i], what[i], &err);
        }
    }
    for (int n = 0; n < 2 * NOUT && rc == EMOE_OK; n++) {
        int i = n % NOUT;
        if (opened[i] && (strcmp(o.out[i], "-") == 0) == (n >= NOUT)) {
            opened[i] = 0;
            rc = emoe_atomic_commit(&at[i], &err);
        }
    }
    if (rc != EMOE_OK) {
        for (int i = 0; i < NOUT; i++)
            if (opened[i])
                emoe_atomic_abort(&at[i]);
        emoe_tool_fail(&err);
    }
    emoe_tensor_free(conf);

    if (o.predictions)
        print_predictions(d, &r);
    /* the metrics: stdout, or stderr when stdout carries data */
    FILE *mf = to_stdout ? stderr : stdout;
    const char *mname = to_stdout ? "<stderr>" : "<stdout>";
    if (!(to_stdout && emoe_quiet)) {
        if (o.json) {
            if (print_json(mf, mname, &o, d, &r, &err) != EMOE_OK)
                emoe_tool_fail(&err);
        } else {
            print_tsv(mf, &o, d, &r);
        }
    }
    emoe_eval_result_free(&r);
    emoe_dataset_free(d);
    emoe_moe_free(moe);
    emoe_model_free(m);
    if (fflush(stdout) != 0 || ferror(stdout))
        emoe_tool_die("<stdout>: write error: %s", strerror(errno));
    return EXIT_OK;
}
