/*
 * emoe-prep: turn a real dataset in its original form (CIFAR binaries, MNIST idx,
 * folders and archives of JPEGs, ImageNet tars, NIfTI volumes) into a dataset .npz.
 *
 *   emoe-prep [OPTIONS] -o OUT.npz SOURCE...
 *
 * The work is emoe_prep_read (format detection, decoding, resizing, selections) and
 * emoe_dataset_write (atomic; "-" is stdout).  The tool reports skipped images as
 * "emoe-prep: MEMBER: problem", shows progress on a terminal and ends with a summary
 * line on stderr.  Exit 0 ok, 1 failure (no output file), 2 usage.
 */
#include "config.h"
#include "common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct options {
    struct emoe_prep_options prep;
    const char *output;
    int stats;
    const char **sources;
    size_t nsources;
};

enum {
    OPT_SPLIT = OPT_TOOL_BASE,
    OPT_LABEL,
    OPT_SUBDIR,
    OPT_LABELS,
    OPT_TARGETS,
    OPT_ID_COLUMN,
    OPT_TARGET_COLUMN,
    OPT_CHANNELS,
    OPT_PER_CLASS,
    OPT_SEED,
    OPT_LIMIT,
    OPT_CLASSES,
    OPT_STATS,
    OPT_STRICT,
    OPT_VOLUMES,
};

static void usage(void)
{
    printf("Usage: emoe-prep [OPTIONS] -o OUT.npz SOURCE...\n"
           "Make a dataset .npz (images, labels, classes) from a dataset in its original form.\n"
           "\n"
           "  -o, --output FILE        the .npz to write ('-': standard output)\n"
           "  -f, --format NAME        cifar10, cifar100, mnist, imagefolder, tinyimagenet,\n"
           "                           imagenet, nifti or synthetic (default: from the content)\n"
           "      --split NAME         train, test or val (default: train)\n"
           "      --label fine|coarse  CIFAR-100 labels (default: fine)\n"
           "      --subdir PATH        imagefolder: the folder holding the class folders\n"
           "      --labels FILE        imagenet validation tar: the label file\n"
           "      --targets FILE.csv   nifti: regression targets\n"
           "      --id-column NAME     nifti: the CSV column matched to the volume names\n"
           "      --target-column NAME nifti: the CSV column of the targets\n"
           "  -s, --size N             resize the shorter side to N, centre-crop N x N\n"
           "      --channels 1|3       gray or RGB (default: the format's own)\n"
           "      --per-class K        keep K random images per class (see --seed)\n"
           "      --seed S             seed of --per-class and synthetic (default: 0)\n"
           "      --limit N            keep the first N images\n"
           "      --classes LIST       keep only these comma-separated classes\n"
           "      --volumes            synthetic: 3-D volumes with a regression target\n"
           "      --stats              per-channel mean and std on stderr and in the output\n"
           "      --strict             a corrupt JPEG is an error, not a skipped image\n"
           "  -q, --quiet              print only errors (and --stats)\n"
           "  -j, --threads N          threads to use (default: all CPUs)\n"
           "  -h, --help               show this help and exit\n"
           "      --version            show version information and exit\n"
           "\n"
           "SOURCE is a file, folder or archive; synthetic needs none.  See emoe-prep(1).\n");
}

static size_t parse_size(const char *opt, const char *arg)
{
    return (size_t)emoe_tool_parse_long(opt, arg, 1, 2147483647L);
}

static void parse_options(int argc, char **argv, struct options *o)
{
    static const struct option longopts[] = {
        EMOE_COMMON_LONGOPTS,
        {"output", required_argument, NULL, 'o'},
        {"format", required_argument, NULL, 'f'},
        {"size", required_argument, NULL, 's'},
        {"split", required_argument, NULL, OPT_SPLIT},
        {"label", required_argument, NULL, OPT_LABEL},
        {"subdir", required_argument, NULL, OPT_SUBDIR},
        {"labels", required_argument, NULL, OPT_LABELS},
        {"targets", required_argument, NULL, OPT_TARGETS},
        {"id-column", required_argument, NULL, OPT_ID_COLUMN},
        {"target-column", required_argument, NULL, OPT_TARGET_COLUMN},
        {"channels", required_argument, NULL, OPT_CHANNELS},
        {"per-class", required_argument, NULL, OPT_PER_CLASS},
        {"seed", required_argument, NULL, OPT_SEED},
        {"limit", required_argument, NULL, OPT_LIMIT},
        {"classes", required_argument, NULL, OPT_CLASSES},
        {"stats", no_argument, NULL, OPT_STATS},
        {"strict", no_argument, NULL, OPT_STRICT},
        {"volumes", no_argument, NULL, OPT_VOLUMES},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    struct emoe_prep_options *p = &o->prep;
    emoe_prep_options_init(p);
    int c;
    while ((c = getopt_long(argc, argv, EMOE_COMMON_SHORTOPTS "o:f:s:", longopts, NULL)) != -1) {
        if (emoe_tool_common_option(c, optarg, usage))
            continue;
        switch (c) {
        case 'o': o->output = optarg; break;
        case 'f':
            if (emoe_prep_format_from_name(optarg, &p->format) != EMOE_OK ||
                p->format == EMOE_PREP_AUTO)
                emoe_tool_usage_error("--format: unknown format '%s' (cifar10, cifar100, mnist, "
                                      "imagefolder, tinyimagenet, imagenet, nifti, synthetic)",
                                      optarg);
            break;
        case 's': p->size = (int)emoe_tool_parse_long("--size", optarg, 1, 65536); break;
        case OPT_SPLIT:
            if (strcmp(optarg, "train") && strcmp(optarg, "test") && strcmp(optarg, "val"))
                emoe_tool_usage_error("--split: '%s' is not train, test or val", optarg);
            p->split = optarg;
            break;
        case OPT_LABEL:
            if (strcmp(optarg, "fine") && strcmp(optarg, "coarse"))
                emoe_tool_usage_error("--label: '%s' is not fine or coarse", optarg);
            p->coarse = strcmp(optarg, "coarse") == 0;
            break;
        case OPT_SUBDIR: p->subdir = optarg; break;
        case OPT_LABELS: p->label_file = optarg; break;
        case OPT_TARGETS: p->targets = optarg; break;
        case OPT_ID_COLUMN: p->id_column = optarg; break;
        case OPT_TARGET_COLUMN: p->target_column = optarg; break;
        case OPT_CHANNELS:
            p->channels = (int)emoe_tool_parse_long("--channels", optarg, 1, 3);
            if (p->channels == 2)
                emoe_tool_usage_error("--channels: must be 1 or 3, not 2");
            break;
        case OPT_PER_CLASS: p->per_class = parse_size("--per-class", optarg); break;
        case OPT_SEED: {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (end == optarg || *end || errno == ERANGE || optarg[0] == '-')
                emoe_tool_usage_error("--seed: '%s' is not a non-negative integer", optarg);
            p->seed = (uint64_t)v;
            break;
        }
        case OPT_LIMIT: p->limit = parse_size("--limit", optarg); break;
        case OPT_CLASSES:
            if (!*optarg)
                emoe_tool_usage_error("--classes: empty list");
            p->classes = optarg;
            break;
        case OPT_STATS: o->stats = 1; break;
        case OPT_STRICT: p->strict = 1; break;
        case OPT_VOLUMES: p->volumes = 1; break;
        default: emoe_tool_usage_error("unexpected option");
        }
    }
    if (!o->output)
        emoe_tool_usage_error("no output file given (-o OUT.npz, or -o - for standard output)");
    if (strcmp(o->output, "-") == 0 && isatty(STDOUT_FILENO))
        emoe_tool_die("<stdout>: refusing to write a .npz to a terminal");
    o->sources = (const char **)(argv + optind);
    o->nsources = (size_t)(argc - optind);
    if (o->nsources == 0 && p->format != EMOE_PREP_SYNTHETIC)
        emoe_tool_usage_error("no SOURCE given");
    if (o->nsources > 0 && p->format == EMOE_PREP_SYNTHETIC)
        emoe_tool_usage_error("synthetic takes no SOURCE");
    if (p->volumes && p->format != EMOE_PREP_SYNTHETIC)
        emoe_tool_usage_error("--volumes needs --format synthetic");
    if (p->targets && (!p->id_column || !p->target_column))
        emoe_tool_usage_error("--targets needs --id-column and --target-column");
    if (!p->targets && (p->id_column || p->target_column))
        emoe_tool_usage_error("--id-column and --target-column need --targets");
}

/* Callbacks of emoe_prep_read (called from the calling thread). */
struct report {
    struct emoe_progress bar;
    double last; /* time of the last progress update */
};

static void on_warn(void *ctx, const char *msg)
{
    struct report *r = ctx;
    if (emoe_quiet)
        return;
    if (r->bar.enabled)
        fputs("\r\033[K", stderr);
    fprintf(stderr, "%s: %s\n", emoe_progname, msg);
}

static void on_progress(void *ctx, size_t done, size_t total)
{
    struct report *r = ctx;
    char extra[48];
    if (!r->bar.enabled)
        return;
    if (total)
        r->bar.total = total;
    /* emoe_progress_update throttles only when the total is known */
    double t = emoe_tool_now();
    if (t - r->last < 0.1 && !(total && done >= total))
        return;
    r->last = t;
    snprintf(extra, sizeof extra, "%zu image%s", done, done == 1 ? "" : "s");
    emoe_progress_update(&r->bar, done, extra);
}

static const char *shape_text(const struct emoe_tensor *t, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = 0;
    for (int i = 1; i < t->ndim && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, i > 1 ? "x%lld" : "%lld",
                                 (long long)t->shape[i]);
    return buf;
}

int main(int argc, char **argv)
{
    struct options o;
    emoe_tool_init(argc, argv, "emoe-prep");
    parse_options(argc, argv, &o);

    struct report rep = {.last = 0};
    emoe_progress_start(&rep.bar, "reading", 0);
    o.prep.warn = on_warn;
    o.prep.progress = on_progress;
    o.prep.ctx = &rep;

    struct emoe_error err = {0};
    struct emoe_dataset *d = NULL;
    struct emoe_prep_result res;
    double t0 = emoe_tool_now();
    int rc = emoe_prep_read(o.sources, o.nsources, &o.prep, &d, &res, &err);
    emoe_progress_end(&rep.bar);
    if (rc != EMOE_OK)
        emoe_tool_fail(&err);
    if (o.stats) {
        rc = emoe_dataset_compute_stats(d, &err);
        if (rc != EMOE_OK) {
            emoe_dataset_free(d);
            emoe_tool_fail(&err);
        }
        /* the statistics are the result asked for: printed even with -q */
        fprintf(stderr, "%s: mean", emoe_progname);
        for (int c = 0; c < d->stats_channels; c++)
            fprintf(stderr, " %.6f", (double)d->mean[c]);
        fprintf(stderr, ", std");
        for (int c = 0; c < d->stats_channels; c++)
            fprintf(stderr, " %.6f", (double)d->std[c]);
        fprintf(stderr, "\n");
    }
    rc = emoe_dataset_write(o.output, d, &err);
    if (rc != EMOE_OK) {
        emoe_dataset_free(d);
        emoe_tool_fail(&err);
    }
    double secs = emoe_tool_now() - t0;
    if (!emoe_quiet) {
        char shp[96], cls[48];
        const char *out = strcmp(o.output, "-") ? o.output : "<stdout>";
        if (d->labels->dtype == EMOE_F32)
            snprintf(cls, sizeof cls, "regression");
        else
            snprintf(cls, sizeof cls, "%zu class%s", d->nclasses, d->nclasses == 1 ? "" : "es");
        fprintf(stderr, "%s: %s: %zu %s (%s %s, %s), %zu skipped, %.1f s\n", emoe_progname,
                out, res.images,
                d->images->ndim == 5 ? (res.images == 1 ? "volume" : "volumes")
                                     : (res.images == 1 ? "image" : "images"),
                emoe_prep_format_name(res.format), shape_text(d->images, shp, sizeof shp), cls,
                res.skipped, secs);
    }
    emoe_dataset_free(d);
    return EXIT_OK;
}
