/*
 * emoe-train: train a ViT with an EMoE (or other) routing branch on a dataset .npz.
 *
 *   emoe-train [OPTIONS] -d TRAIN.npz [-v VAL.npz] -o MODEL.safetensors
 *
 * Everything is checked before anything is written; the model is saved atomically
 * with its training state next to it (MODEL.safetensors.state, which also keeps the
 * run's settings as "option.<name>" metadata).  --resume continues exactly from the
 * stored settings; SIGINT/SIGTERM save and exit 130/143.  See emoe-train(1).
 */
#include "config.h"
#include "common.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------ options */

enum {
    O_DATA = 'd',
    O_VAL = 'v',
    O_OUT = 'o',
    O_MODEL = OPT_TOOL_BASE,
    O_EMBED_DIM,
    O_DEPTH,
    O_HEADS,
    O_MLP_RATIO,
    O_PATCH,
    O_TASK,
    O_INIT,
    O_FREEZE,
    O_ROUTER,
    O_EXPERTS,
    O_RANK,
    O_BOTTLENECK,
    O_TOPK,
    O_TAU,
    O_BLOCKS,
    O_ORTHO,
    O_LBL,
    O_IMPORTANCE,
    O_LOADLOSS,
    O_ZLOSS,
    O_CAPACITY,
    O_NOISE,
    O_THRESHOLD,
    O_EIGEN_INIT,
    O_EIGEN_BATCHES,
    O_ROUTE_CLS,
    O_EPOCHS,
    O_MAX_STEPS,
    O_BATCH,
    O_LR,
    O_MIN_LR,
    O_WD,
    O_WARMUP,
    O_SCHEDULE,
    O_CLIP,
    O_SMOOTHING,
    O_SEED,
    O_NO_AUGMENT,
    O_CROP_PADDING,
    O_HFLIP,
    O_NO_HFLIP,
    O_RESIZED_CROP,
    O_CONFIG,
    O_SAVE_EVERY,
    O_BEST,
    O_RESUME,
    O_LOG,
    O_LOG_EVERY,
    O_END
};

static const struct option longopts[] = {
    EMOE_COMMON_LONGOPTS,
    {"data", required_argument, NULL, O_DATA},
    {"val", required_argument, NULL, O_VAL},
    {"output", required_argument, NULL, O_OUT},
    {"model", required_argument, NULL, O_MODEL},
    {"embed-dim", required_argument, NULL, O_EMBED_DIM},
    {"depth", required_argument, NULL, O_DEPTH},
    {"heads", required_argument, NULL, O_HEADS},
    {"mlp-ratio", required_argument, NULL, O_MLP_RATIO},
    {"patch", required_argument, NULL, O_PATCH},
    {"task", required_argument, NULL, O_TASK},
    {"init", required_argument, NULL, O_INIT},
    {"freeze-backbone", no_argument, NULL, O_FREEZE},
    {"router", required_argument, NULL, O_ROUTER},
    {"experts", required_argument, NULL, O_EXPERTS},
    {"rank", required_argument, NULL, O_RANK},
    {"bottleneck", required_argument, NULL, O_BOTTLENECK},
    {"top-k", required_argument, NULL, O_TOPK},
    {"tau", required_argument, NULL, O_TAU},
    {"moe-blocks", required_argument, NULL, O_BLOCKS},
    {"ortho", required_argument, NULL, O_ORTHO},
    {"lbl", required_argument, NULL, O_LBL},
    {"importance-loss", required_argument, NULL, O_IMPORTANCE},
    {"load-loss", required_argument, NULL, O_LOADLOSS},
    {"z-loss", required_argument, NULL, O_ZLOSS},
    {"capacity", required_argument, NULL, O_CAPACITY},
    {"router-noise", no_argument, NULL, O_NOISE},
    {"threshold", required_argument, NULL, O_THRESHOLD},
    {"eigen-init", required_argument, NULL, O_EIGEN_INIT},
    {"eigen-batches", required_argument, NULL, O_EIGEN_BATCHES},
    {"route-cls", no_argument, NULL, O_ROUTE_CLS},
    {"epochs", required_argument, NULL, O_EPOCHS},
    {"max-steps", required_argument, NULL, O_MAX_STEPS},
    {"batch", required_argument, NULL, O_BATCH},
    {"lr", required_argument, NULL, O_LR},
    {"min-lr", required_argument, NULL, O_MIN_LR},
    {"wd", required_argument, NULL, O_WD},
    {"warmup", required_argument, NULL, O_WARMUP},
    {"schedule", required_argument, NULL, O_SCHEDULE},
    {"clip", required_argument, NULL, O_CLIP},
    {"label-smoothing", required_argument, NULL, O_SMOOTHING},
    {"seed", required_argument, NULL, O_SEED},
    {"no-augment", no_argument, NULL, O_NO_AUGMENT},
    {"crop-padding", required_argument, NULL, O_CROP_PADDING},
    {"hflip", no_argument, NULL, O_HFLIP},
    {"no-hflip", no_argument, NULL, O_NO_HFLIP},
    {"resized-crop", no_argument, NULL, O_RESIZED_CROP},
    {"config", required_argument, NULL, O_CONFIG},
    {"save-every", required_argument, NULL, O_SAVE_EVERY},
    {"best", required_argument, NULL, O_BEST},
    {"resume", required_argument, NULL, O_RESUME},
    {"log", required_argument, NULL, O_LOG},
    {"log-every", required_argument, NULL, O_LOG_EVERY},
    {NULL, 0, NULL, 0},
};

struct opts {
    char *data, *val, *out, *model, *init, *config, *best, *resume, *log;
    int embed_dim, depth, heads, patch;
    double mlp_ratio;
    enum emoe_task task;
    int freeze;
    struct emoe_moe_config mc;
    int eigen_data, eigen_batches;
    struct emoe_train_options to;
    int no_augment, crop_padding, hflip, resized_crop;
    unsigned char set[O_END]; /* given on the command line or in the config file */
    unsigned char cmdline[O_END];
    int threads_given;        /* -j on the command line (1) or in the config file (2) */
    char resume_data[128];    /* the resumed run's training data (its fingerprint) */
};

static void usage(void)
{
    printf(
        "Usage: emoe-train [OPTIONS] -d TRAIN.npz [-v VAL.npz] -o MODEL.safetensors\n"
        "Train a Vision Transformer with a mixture-of-experts branch on a dataset.\n"
        "\n"
        "Data and files:\n"
        "  -d, --data FILE          training dataset .npz ('-' reads standard input)\n"
        "  -v, --val FILE           validation dataset .npz (evaluated after every epoch)\n"
        "  -o, --output FILE        the model .safetensors (state in FILE.state)\n"
        "      --config FILE        'key = value' lines named like the long options\n"
        "      --resume MODEL       continue the run saved in MODEL (and MODEL.state, which\n"
        "                           holds its settings: only -d is needed)\n"
        "      --save-every N       also save every N steps\n"
        "      --best FILE          keep the best checkpoint on validation in FILE\n"
        "      --log FILE           JSON Lines log ('-' for standard output)\n"
        "      --log-every N        a step record every N steps (default 50)\n"
        "Model (image size, channels and classes come from the data):\n"
        "      --model PRESET       vit-micro (default), vit-mini, vit-tiny, vit-small, ...\n"
        "      --embed-dim D  --depth N  --heads H  --mlp-ratio R  --patch P\n"
        "      --task classify|regress\n"
        "      --init FILE          start from a checkpoint (emoe, timm, Google ViT .npz)\n"
        "      --freeze-backbone    train only the branches (and a new head)\n"
        "Routing:\n"
        "      --router eigen|ermoe|softmax|none   (default eigen)\n"
        "      --experts E  --rank R  --bottleneck F  --top-k K (0 = soft)  --tau T\n"
        "      --moe-blocks SPEC    last6 (default), lastN, all, everyN or 3,4,5\n"
        "      --ortho W            orthogonality loss weight (default 5e-4)\n"
        "      --lbl W  --importance-loss W  --load-loss W  --z-loss W   (softmax)\n"
        "      --capacity C  --router-noise  --threshold T (ermoe)\n"
        "      --eigen-init data|random  --eigen-batches N   basis from the data covariance\n"
        "      --route-cls          route the class token too\n"
        "Optimisation:\n"
        "      --epochs N (default 10)  --max-steps N  --batch B (default 128)\n"
        "      --lr LR (5e-4)  --min-lr LR (0)  --wd W (0.05)  --warmup N (0)\n"
        "      --schedule constant|cosine|linear (cosine)  --clip N (1; 0 = off)\n"
        "      --label-smoothing E (0)  --seed N (0)\n"
        "      --no-augment  --crop-padding N  --hflip  --no-hflip  --resized-crop\n"
        "  -q, --quiet              no progress bar, no warnings\n"
        "  -j, --threads N          threads to use (default: all CPUs)\n"
        "  -h, --help               show this help and exit\n"
        "      --version            show version information and exit\n"
        "\n"
        "Exit status: 0 done, 1 failure, 2 bad options, 130/143 interrupted (saved).\n"
        "See emoe-train(1).\n");
}

/* where: NULL for the command line, or "FILE:LINE" for the config file. */
static _Noreturn void bad(const char *where, const char *fmt, ...) EMOE_PRINTF(2, 3);
static _Noreturn void bad(const char *where, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (where)
        emoe_tool_usage_error("%s: %s", where, msg);
    emoe_tool_usage_error("%s", msg);
}

static const char *opt_name(int id)
{
    for (const struct option *o = longopts; o->name; o++)
        if (o->val == id)
            return o->name;
    return "?";
}

static double pdouble(const char *where, int id, const char *arg, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(arg, &end);
    if (end == arg || *end || errno || !isfinite(v))
        bad(where, "--%s: '%s' is not a number", opt_name(id), arg);
    if (v < lo || v > hi)
        bad(where, "--%s: %s is out of range (%g to %g)", opt_name(id), arg, lo, hi);
    return v;
}

static long plong(const char *where, int id, const char *arg, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (end == arg || *end || errno)
        bad(where, "--%s: '%s' is not an integer", opt_name(id), arg);
    if (v < lo || v > hi)
        bad(where, "--%s: %s is out of range (%ld to %ld)", opt_name(id), arg, lo, hi);
    return v;
}

static char *dup_arg(char *old, const char *arg)
{
    free(old);
    char *s = strdup(arg);
    if (!s)
        emoe_tool_die("out of memory");
    return s;
}

/* Apply option id with arg (NULL for flags) to o. */
static void apply(struct opts *o, int id, const char *arg, const char *where)
{
    struct emoe_error err = {0};
    switch (id) {
    case O_DATA: o->data = dup_arg(o->data, arg); break;
    case O_VAL: o->val = dup_arg(o->val, arg); break;
    case O_OUT: o->out = dup_arg(o->out, arg); break;
    case O_MODEL: {
        struct emoe_vit_config c;
        if (emoe_vit_preset(arg, &c, &err))
            bad(where, "--model: %s", err.msg);
        o->model = dup_arg(o->model, arg);
        break;
    }
    case O_EMBED_DIM: o->embed_dim = (int)plong(where, id, arg, 1, 65536); break;
    case O_DEPTH: o->depth = (int)plong(where, id, arg, 1, 1024); break;
    case O_HEADS: o->heads = (int)plong(where, id, arg, 1, 1024); break;
    case O_MLP_RATIO: o->mlp_ratio = pdouble(where, id, arg, 1e-3, 1024); break;
    case O_PATCH: o->patch = (int)plong(where, id, arg, 1, 4096); break;
    case O_TASK:
        if (strcmp(arg, "classify") == 0)
            o->task = EMOE_TASK_CLASSIFY;
        else if (strcmp(arg, "regress") == 0)
            o->task = EMOE_TASK_REGRESS;
        else
            bad(where, "--task: '%s' is not classify or regress", arg);
        break;
    case O_INIT: o->init = dup_arg(o->init, arg); break;
    case O_FREEZE: o->freeze = 1; break;
    case O_ROUTER:
        if (emoe_router_from_name(arg, &o->mc.router, &err))
            bad(where, "--router: '%s' is not eigen, ermoe, softmax or none", arg);
        break;
    case O_EXPERTS: o->mc.experts = (int)plong(where, id, arg, 1, 4096); break;
    case O_RANK: o->mc.rank = (int)plong(where, id, arg, 1, 65536); break;
    case O_BOTTLENECK: o->mc.bottleneck = (int)plong(where, id, arg, 1, 65536); break;
    case O_TOPK: o->mc.top_k = (int)plong(where, id, arg, 0, 4096); break;
    case O_TAU: o->mc.tau = (float)pdouble(where, id, arg, 1e-6, 1e6); break;
    case O_BLOCKS: {
        int idx[1024], n;
        if (strlen(arg) >= sizeof o->mc.blocks || emoe_moe_parse_blocks(arg, 1024, idx, &n, &err))
            bad(where, "--moe-blocks: '%s' is not last6, lastN, all, everyN or a list like 3,4,5",
                arg);
        snprintf(o->mc.blocks, sizeof o->mc.blocks, "%s", arg);
        break;
    }
    case O_ORTHO: o->mc.lambda_ortho = (float)pdouble(where, id, arg, 0, 1e6); break;
    case O_LBL: o->mc.switch_loss = (float)pdouble(where, id, arg, 0, 1e6); break;
    case O_IMPORTANCE: o->mc.importance_loss = (float)pdouble(where, id, arg, 0, 1e6); break;
    case O_LOADLOSS: o->mc.load_loss = (float)pdouble(where, id, arg, 0, 1e6); break;
    case O_ZLOSS: o->mc.z_loss = (float)pdouble(where, id, arg, 0, 1e6); break;
    case O_CAPACITY: o->mc.capacity = (float)pdouble(where, id, arg, 0, 1e6); break;
    case O_NOISE: o->mc.noise = 1; break;
    case O_THRESHOLD: o->mc.threshold = (float)pdouble(where, id, arg, -1, 1); break;
    case O_EIGEN_INIT:
        if (strcmp(arg, "data") == 0)
            o->eigen_data = 1;
        else if (strcmp(arg, "random") == 0)
            o->eigen_data = 0;
        else
            bad(where, "--eigen-init: '%s' is not data or random", arg);
        break;
    case O_EIGEN_BATCHES: o->eigen_batches = (int)plong(where, id, arg, 1, 1000000); break;
    case O_ROUTE_CLS: o->mc.patches_only = 0; break;
    case O_EPOCHS: o->to.epochs = (int)plong(where, id, arg, 1, 1000000); break;
    case O_MAX_STEPS: o->to.max_steps = plong(where, id, arg, 1, LONG_MAX); break;
    case O_BATCH: o->to.batch = (int)plong(where, id, arg, 1, 1 << 20); break;
    case O_LR: o->to.lr = pdouble(where, id, arg, 0, 1e30); break;
    case O_MIN_LR: o->to.min_lr = pdouble(where, id, arg, 0, 1e30); break;
    case O_WD: o->to.weight_decay = pdouble(where, id, arg, 0, 1e6); break;
    case O_WARMUP: o->to.warmup = plong(where, id, arg, 0, LONG_MAX); break;
    case O_SCHEDULE:
        if (strcmp(arg, "constant") == 0)
            o->to.schedule = EMOE_LR_CONSTANT;
        else if (strcmp(arg, "cosine") == 0)
            o->to.schedule = EMOE_LR_COSINE;
        else if (strcmp(arg, "linear") == 0)
            o->to.schedule = EMOE_LR_LINEAR;
        else
            bad(where, "--schedule: '%s' is not constant, cosine or linear", arg);
        break;
    case O_CLIP: o->to.clip = pdouble(where, id, arg, 0, 1e30); break;
    case O_SMOOTHING: o->to.label_smoothing = (float)pdouble(where, id, arg, 0, 0.999); break;
    case O_SEED: {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(arg, &end, 10);
        if (!*arg || *end || errno || *arg == '-')
            bad(where, "--seed: '%s' is not a non-negative integer", arg);
        o->to.seed = v;
        break;
    }
    case O_NO_AUGMENT: o->no_augment = 1; break;
    case O_CROP_PADDING: o->crop_padding = (int)plong(where, id, arg, 0, 4096); break;
    case O_HFLIP: o->hflip = 1; break;
    case O_NO_HFLIP: o->hflip = 0; break;
    case O_RESIZED_CROP: o->resized_crop = 1; break;
    case O_CONFIG: o->config = dup_arg(o->config, arg); break;
    case O_SAVE_EVERY: o->to.save_every = plong(where, id, arg, 1, LONG_MAX); break;
    case O_BEST: o->best = dup_arg(o->best, arg); break;
    case O_RESUME: o->resume = dup_arg(o->resume, arg); break;
    case O_LOG: o->log = dup_arg(o->log, arg); break;
    case O_LOG_EVERY: o->to.log_every = (int)plong(where, id, arg, 0, INT_MAX); break;
    default: bad(where, "unexpected option");
    }
}

static void opts_free(struct opts *o)
{
    char **s[] = {&o->data, &o->val, &o->out, &o->model, &o->init,
                  &o->config, &o->best, &o->resume, &o->log};
    for (size_t i = 0; i < sizeof s / sizeof *s; i++) {
        free(*s[i]);
        *s[i] = NULL;
    }
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        s[--n] = '\0';
    return s;
}

/* The config file: "key = value" lines (# comments, blank lines); keys are long option
 * names.  Options given on the command line win. */
static void read_config(struct opts *o, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        bad(NULL, "--config: %s: %s", path, strerror(errno));
    char line[4096], where[4200];
    int lineno = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        if (!strchr(line, '\n') && !feof(f))
            bad(where, "line too long");
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *s = trim(line);
        if (!*s)
            continue;
        char *eq = strchr(s, '=');
        char *key = s, *val = NULL;
        if (eq) {
            *eq = '\0';
            val = trim(eq + 1);
        }
        key = trim(key);
        const struct option *opt = NULL;
        for (const struct option *p = longopts; p->name; p++)
            if (strcmp(p->name, key) == 0)
                opt = p;
        if (!opt || opt->val == O_CONFIG || opt->val == OPT_HELP || opt->val == OPT_VERSION)
            bad(where, "unknown key '%s'", key);
        int id = opt->val;
        const char *arg = NULL;
        if (opt->has_arg == required_argument) {
            if (!val || !*val)
                bad(where, "'%s' needs a value", key);
            arg = val;
        } else if (val && *val) {
            if (strcmp(val, "0") == 0 || strcmp(val, "false") == 0 || strcmp(val, "no") == 0)
                continue; /* a flag switched off */
            if (strcmp(val, "1") && strcmp(val, "true") && strcmp(val, "yes"))
                bad(where, "'%s' is a flag: its value must be true or false", key);
        }
        if (id < O_END && o->cmdline[id]) {
            struct opts scratch = *o; /* validate the value, keep the command line's */
            scratch.data = scratch.val = scratch.out = scratch.model = scratch.init = NULL;
            scratch.config = scratch.best = scratch.resume = scratch.log = NULL;
            apply(&scratch, id, arg, where);
            opts_free(&scratch);
            continue;
        }
        if (id == OPT_THREADS && o->threads_given == 1) {
            emoe_tool_parse_long("--threads", arg, 0, 1024); /* the command line wins */
            continue;
        }
        if (id == OPT_THREADS || id == OPT_QUIET) {
            if (id == OPT_THREADS)
                o->threads_given = 2;
            emoe_tool_common_option(id, arg, usage);
            continue;
        }
        apply(o, id, arg, where);
        if (id < O_END)
            o->set[id] = 1;
    }
    if (ferror(f))
        bad(NULL, "--config: %s: read error", path);
    fclose(f);
}

static void parse_options(int argc, char **argv, struct opts *o)
{
    memset(o, 0, sizeof *o);
    emoe_moe_config_init(&o->mc);
    emoe_train_options_init(&o->to);
    o->mlp_ratio = 0;
    o->hflip = 1;
    o->crop_padding = -1;
    o->task = EMOE_TASK_CLASSIFY;
    int c;
    while ((c = getopt_long(argc, argv, EMOE_COMMON_SHORTOPTS "d:v:o:", longopts, NULL)) != -1) {
        if (c == OPT_THREADS)
            o->threads_given = 1;
        if (emoe_tool_common_option(c, optarg, usage))
            continue;
        if (c == '?' || c == ':')
            emoe_tool_usage_error("unexpected option");
        apply(o, c, optarg, NULL);
        if (c < O_END)
            o->set[c] = o->cmdline[c] = 1;
    }
    if (optind < argc)
        emoe_tool_usage_error("unexpected argument '%s' (the data is given with -d)",
                              argv[optind]);
    if (o->config)
        read_config(o, o->config);
    if (!o->data)
        emoe_tool_usage_error("no training data given (-d TRAIN.npz)");
    if (!o->out && !o->resume)
        emoe_tool_usage_error("no output given (-o MODEL.safetensors)");
    if (!o->out)
        o->out = dup_arg(NULL, o->resume);
    if (strcmp(o->out, "-") == 0)
        emoe_tool_usage_error("-o: the model cannot go to standard output (it is saved "
                              "during training)");
    if (o->resume && strcmp(o->resume, o->out) != 0)
        emoe_tool_usage_error("--resume %s and -o %s differ (a run continues in its own file)",
                              o->resume, o->out);
    if (o->resume && o->init)
        emoe_tool_usage_error("--resume and --init cannot be combined");
    if (o->val && strcmp(o->val, "-") == 0 && strcmp(o->data, "-") == 0)
        emoe_tool_usage_error("-d and -v cannot both read standard input");
    if (o->set[O_EIGEN_BATCHES] && !o->eigen_data)
        emoe_tool_usage_error("--eigen-batches needs --eigen-init data");
    if (o->eigen_data && o->mc.router != EMOE_ROUTER_EIGEN)
        emoe_tool_usage_error("--eigen-init data needs --router eigen");
    if (o->to.min_lr > o->to.lr)
        emoe_tool_usage_error("--min-lr %g is above --lr %g", o->to.min_lr, o->to.lr);
    if (o->best && strcmp(o->best, o->out) == 0)
        emoe_tool_usage_error("--best must differ from the output");
}

/* ------------------------------------------------------------ run settings */

/*
 * The optimisation settings of a run, kept in its training state as metadata
 * "option.<long option>" = canonical value, so --resume needs no options: settings
 * not given are taken from the state; a given one must agree, except --epochs and
 * --max-steps (a run may be extended or shortened) and -j (warned: the continuation
 * may then differ in the last bits).
 */
static const int stored_ids[] = {
    O_EPOCHS, O_MAX_STEPS, O_BATCH, O_LR, O_MIN_LR, O_WD, O_WARMUP, O_SCHEDULE, O_CLIP,
    O_SMOOTHING, O_SEED, O_NO_AUGMENT, O_CROP_PADDING, O_HFLIP, O_RESIZED_CROP, O_ORTHO,
    O_LBL, O_IMPORTANCE, O_LOADLOSS, O_ZLOSS, O_CAPACITY, O_NOISE, O_THRESHOLD, O_FREEZE,
};
#define NSTORED (sizeof stored_ids / sizeof *stored_ids)

/* The current value of option id in the stored (round-trip) form. */
static void canon(const struct opts *o, int id, char *buf, size_t size)
{
    static const char *const sched[] = {"constant", "cosine", "linear"};
    switch (id) {
    case O_EPOCHS: snprintf(buf, size, "%d", o->to.epochs); break;
    case O_MAX_STEPS: snprintf(buf, size, "%lld", (long long)o->to.max_steps); break;
    case O_BATCH: snprintf(buf, size, "%d", o->to.batch); break;
    case O_LR: snprintf(buf, size, "%.17g", o->to.lr); break;
    case O_MIN_LR: snprintf(buf, size, "%.17g", o->to.min_lr); break;
    case O_WD: snprintf(buf, size, "%.17g", o->to.weight_decay); break;
    case O_WARMUP: snprintf(buf, size, "%lld", (long long)o->to.warmup); break;
    case O_SCHEDULE:
        snprintf(buf, size, "%s", o->to.schedule == EMOE_LR_CONSTANT ? sched[0]
                                  : o->to.schedule == EMOE_LR_LINEAR ? sched[2] : sched[1]);
        break;
    case O_CLIP: snprintf(buf, size, "%.17g", o->to.clip); break;
    case O_SMOOTHING: snprintf(buf, size, "%.9g", (double)o->to.label_smoothing); break;
    case O_SEED: snprintf(buf, size, "%llu", (unsigned long long)o->to.seed); break;
    case O_NO_AUGMENT: snprintf(buf, size, "%d", o->no_augment); break;
    case O_CROP_PADDING: snprintf(buf, size, "%d", o->crop_padding); break;
    case O_HFLIP: snprintf(buf, size, "%d", o->hflip); break;
    case O_RESIZED_CROP: snprintf(buf, size, "%d", o->resized_crop); break;
    case O_ORTHO: snprintf(buf, size, "%.9g", (double)o->mc.lambda_ortho); break;
    case O_LBL: snprintf(buf, size, "%.9g", (double)o->mc.switch_loss); break;
    case O_IMPORTANCE: snprintf(buf, size, "%.9g", (double)o->mc.importance_loss); break;
    case O_LOADLOSS: snprintf(buf, size, "%.9g", (double)o->mc.load_loss); break;
    case O_ZLOSS: snprintf(buf, size, "%.9g", (double)o->mc.z_loss); break;
    case O_CAPACITY: snprintf(buf, size, "%.9g", (double)o->mc.capacity); break;
    case O_NOISE: snprintf(buf, size, "%d", o->mc.noise); break;
    case O_THRESHOLD: snprintf(buf, size, "%.9g", (double)o->mc.threshold); break;
    case O_FREEZE: snprintf(buf, size, "%d", o->freeze); break;
    default: snprintf(buf, size, "?"); break;
    }
}

static int is_flag(int id)
{
    return id == O_NO_AUGMENT || id == O_HFLIP || id == O_RESIZED_CROP || id == O_NOISE ||
           id == O_FREEZE;
}

/* Set option id from its stored form v ("where" names the state file). */
static void apply_stored(struct opts *o, int id, const char *v, const char *where)
{
    if (is_flag(id) || id == O_CROP_PADDING) {
        char *end;
        errno = 0;
        long x = strtol(v, &end, 10);
        if (!*v || *end || errno || x < (id == O_CROP_PADDING ? -1 : 0) ||
            x > (id == O_CROP_PADDING ? 4096 : 1))
            emoe_tool_die("%s: metadata 'option.%s': bad value '%s'", where, opt_name(id), v);
        int b = (int)x;
        switch (id) {
        case O_NO_AUGMENT: o->no_augment = b; break;
        case O_HFLIP: o->hflip = b; break;
        case O_RESIZED_CROP: o->resized_crop = b; break;
        case O_NOISE: o->mc.noise = b; break;
        case O_FREEZE: o->freeze = b; break;
        default: o->crop_padding = b; break;
        }
        return;
    }
    if (id == O_MAX_STEPS && strcmp(v, "0") == 0) {
        o->to.max_steps = 0; /* the length is in epochs */
        return;
    }
    apply(o, id, v, where);
}

/* The state file's record of the training data (emoe_dataset_fingerprint). */
#define DATA_KEY "run.train_data"

/* Resume: take the run's settings from its state file (those it has). */
static void settings_from_state(struct opts *o, const char *state_path)
{
    struct emoe_safetensors *st;
    struct emoe_error err = {0};
    if (access(state_path, R_OK) != 0)
        emoe_tool_die("%s: %s (the training state of %s)", state_path, strerror(errno),
                      o->resume);
    if (emoe_safetensors_open(state_path, &st, &err))
        emoe_tool_fail(&err);
    /* a new length: --epochs or --max-steps given replaces both stored ones */
    int new_length = o->set[O_EPOCHS] || o->set[O_MAX_STEPS];
    for (size_t i = 0; i < NSTORED; i++) {
        int id = stored_ids[i];
        char key[64], have[64];
        snprintf(key, sizeof key, "option.%s", opt_name(id));
        const char *v = emoe_safetensors_metadata_get(st, key);
        if (!v)
            continue; /* an older state: the options decide */
        if ((id == O_EPOCHS || id == O_MAX_STEPS) && new_length)
            continue;
        int given = o->set[id] || (id == O_HFLIP && o->set[O_NO_HFLIP]);
        if (!given) {
            apply_stored(o, id, v, state_path);
            continue;
        }
        canon(o, id, have, sizeof have);
        if (strcmp(have, v) != 0) {
            char stored[64];
            snprintf(stored, sizeof stored, "%s", v);
            emoe_safetensors_close(st); /* v belongs to st */
            if (is_flag(id))
                emoe_tool_usage_error("--%s%s contradicts the run being resumed: %s has "
                                      "%s = %s", id == O_HFLIP && !o->hflip ? "no-" : "",
                                      opt_name(id), state_path, key, stored);
            emoe_tool_usage_error("--%s %s contradicts the run being resumed: %s has %s = %s",
                                  opt_name(id), have, state_path, key, stored);
        }
    }
    const char *fp = emoe_safetensors_metadata_get(st, DATA_KEY);
    if (fp)
        snprintf(o->resume_data, sizeof o->resume_data, "%s", fp);
    const char *v = emoe_safetensors_metadata_get(st, "option.threads");
    if (v) {
        long n = strtol(v, NULL, 10);
        if (!o->threads_given && n > 0 && n <= 1024)
            emoe_threads_set((int)n);
        else if (o->threads_given && n != emoe_threads_get())
            emoe_tool_warn("-j %d differs from the %ld threads of the run being resumed: "
                           "it may not end with the same bytes", emoe_threads_get(), n);
    }
    emoe_safetensors_close(st);
}

/* The run's settings for its state file: kv[NSTORED + 1] pointing into text, then
 * the training data's fingerprint (in data[128]). */
static size_t settings_for_state(const struct opts *o, const struct emoe_dataset *train,
                                 struct emoe_kv *kv, char (*text)[2][64], char *data)
{
    size_t n = 0;
    for (size_t i = 0; i < NSTORED; i++, n++) {
        snprintf(text[n][0], sizeof text[n][0], "option.%s", opt_name(stored_ids[i]));
        canon(o, stored_ids[i], text[n][1], sizeof text[n][1]);
    }
    snprintf(text[n][0], sizeof text[n][0], "option.threads");
    snprintf(text[n][1], sizeof text[n][1], "%d", emoe_threads_get());
    n++;
    for (size_t i = 0; i < n; i++) {
        kv[i].key = text[i][0];
        kv[i].value = text[i][1];
    }
    emoe_dataset_fingerprint(train, data, 128);
    kv[n].key = DATA_KEY;
    kv[n++].value = data;
    return n;
}

/* ------------------------------------------------------------------ model */

struct run {
    struct opts *o;
    struct emoe_dataset *train, *val;
    struct emoe_vit_config cfg;
    struct emoe_model *m;
    struct emoe_moe *moe;
    char state_path[4200];
    FILE *log;
    const char *log_name;
    struct emoe_progress prog;
    struct emoe_json_out json;
    int smooth_n;
    double s_loss, s_acc, s_ips;
};

/* An explicitly set option that disagrees with a checkpoint's configuration. */
static void contradicts(const struct opts *o, int id, int differs, const char *file,
                        const char *have)
{
    if (o->set[id] && differs)
        emoe_tool_usage_error("--%s contradicts %s, whose configuration has %s", opt_name(id),
                              file, have);
}

static int has_emoe_metadata(const char *path)
{
    struct emoe_safetensors *st;
    struct emoe_error err = {0};
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    unsigned char head[16];
    size_t got = fread(head, 1, sizeof head, f);
    fclose(f);
    if (emoe_file_kind_detect(head, got) != EMOE_FILE_SAFETENSORS)
        return 0;
    if (emoe_safetensors_open(path, &st, &err))
        return 0;
    int has = emoe_safetensors_metadata_get(st, "model.embed_dim") != NULL;
    emoe_safetensors_close(st);
    return has;
}

/* The routing configuration of a checkpoint (metadata, or inferred from the branch
 * tensors of a reference state_dict); explicit options must agree with it. */
static void adopt_moe(struct opts *o, struct emoe_moe_config mc, int depth, const char *file,
                      int inferred)
{
    struct emoe_error err = {0};
    char have[192];
    snprintf(have, sizeof have, "router %s", emoe_router_name(mc.router));
    contradicts(o, O_ROUTER, o->mc.router != mc.router, file, have);
    if (mc.router != EMOE_ROUTER_NONE) {
        snprintf(have, sizeof have, "%d experts", mc.experts);
        contradicts(o, O_EXPERTS, o->mc.experts != mc.experts, file, have);
        snprintf(have, sizeof have, "rank %d", mc.rank);
        contradicts(o, O_RANK, o->mc.rank != mc.rank, file, have);
        snprintf(have, sizeof have, "bottleneck %d", mc.bottleneck);
        contradicts(o, O_BOTTLENECK, o->mc.bottleneck != mc.bottleneck, file, have);
        if (inferred) { /* not stored in a bare state_dict: the options decide */
            mc.top_k = o->mc.top_k;
            mc.tau = o->mc.tau;
            mc.patches_only = o->mc.patches_only;
        }
        snprintf(have, sizeof have, "top-k %d", mc.top_k);
        contradicts(o, O_TOPK, o->mc.top_k != mc.top_k, file, have);
        snprintf(have, sizeof have, "tau %g", (double)mc.tau);
        contradicts(o, O_TAU, fabsf(o->mc.tau - mc.tau) > 1e-6f * mc.tau, file, have);
        snprintf(have, sizeof have, "patches only %d", mc.patches_only);
        contradicts(o, O_ROUTE_CLS, o->mc.patches_only != mc.patches_only, file, have);
        if (o->set[O_BLOCKS]) {
            int a[1024], b[1024], na = 0, nb = 0;
            emoe_moe_parse_blocks(o->mc.blocks, depth, a, &na, &err);
            emoe_moe_parse_blocks(mc.blocks, depth, b, &nb, &err);
            snprintf(have, sizeof have, "blocks %s", mc.blocks);
            contradicts(o, O_BLOCKS, na != nb || memcmp(a, b, (size_t)na * sizeof *a), file,
                        have);
        }
    }
    /* training-only settings come from the options */
    mc.lambda_ortho = o->mc.lambda_ortho;
    mc.threshold = o->mc.threshold;
    mc.noise = o->mc.noise;
    mc.switch_loss = o->mc.switch_loss;
    mc.importance_loss = o->mc.importance_loss;
    mc.load_loss = o->mc.load_loss;
    mc.z_loss = o->mc.z_loss;
    mc.capacity = o->mc.capacity;
    o->mc = mc;
}

/* The configuration from a checkpoint with emoe metadata; options must agree. */
static void config_from_file(struct run *r, const char *file)
{
    struct opts *o = r->o;
    struct emoe_error err = {0};
    if (emoe_checkpoint_read_config(file, &r->cfg, &err))
        emoe_tool_fail(&err);
    struct emoe_moe_config mc;
    if (emoe_moe_config_from_checkpoint(file, &mc, &err))
        emoe_tool_fail(&err);
    const struct emoe_vit_config *c = &r->cfg;
    char have[192];
    if (o->set[O_MODEL]) {
        struct emoe_vit_config p;
        emoe_vit_preset(o->model, &p, &err);
        snprintf(have, sizeof have, "embed dim %d, depth %d, %d heads", c->embed_dim, c->depth,
                 c->num_heads);
        contradicts(o, O_MODEL, p.embed_dim != c->embed_dim || p.depth != c->depth ||
                    p.num_heads != c->num_heads, file, have);
    }
    snprintf(have, sizeof have, "embed dim %d", c->embed_dim);
    contradicts(o, O_EMBED_DIM, o->embed_dim != c->embed_dim, file, have);
    snprintf(have, sizeof have, "depth %d", c->depth);
    contradicts(o, O_DEPTH, o->depth != c->depth, file, have);
    snprintf(have, sizeof have, "%d heads", c->num_heads);
    contradicts(o, O_HEADS, o->heads != c->num_heads, file, have);
    snprintf(have, sizeof have, "patch %d", c->patch_size);
    contradicts(o, O_PATCH, o->patch != c->patch_size, file, have);
    snprintf(have, sizeof have, "MLP ratio %g", (double)c->mlp_dim / c->embed_dim);
    contradicts(o, O_MLP_RATIO, lround(o->mlp_ratio * c->embed_dim) != c->mlp_dim, file, have);
    snprintf(have, sizeof have, "task %s", c->task == EMOE_TASK_REGRESS ? "regress" : "classify");
    contradicts(o, O_TASK, o->task != c->task, file, have);
    adopt_moe(o, mc, c->depth, file, 0);
}

static void config_from_options(struct run *r)
{
    struct opts *o = r->o;
    struct emoe_error err = {0};
    const struct emoe_tensor *im = r->train->images;
    if (emoe_vit_preset(o->model ? o->model : "vit-micro", &r->cfg, &err))
        emoe_tool_fail(&err);
    struct emoe_vit_config *c = &r->cfg;
    if (o->embed_dim)
        c->embed_dim = o->embed_dim;
    if (o->depth)
        c->depth = o->depth;
    if (o->heads)
        c->num_heads = o->heads;
    if (o->patch)
        c->patch_size = o->patch;
    c->mlp_dim = (int)lround((o->mlp_ratio > 0 ? o->mlp_ratio : 4.0) * c->embed_dim);
    c->image_ndim = im->ndim == 5 ? 3 : 2;
    for (int i = 0; i < c->image_ndim && i + 1 < im->ndim; i++)
        c->image_size[i] = (int)(im->shape[1 + i] > INT_MAX ? INT_MAX : im->shape[1 + i]);
    c->in_chans = (int)(im->shape[im->ndim - 1] > 64 ? 64 : im->shape[im->ndim - 1]);
    c->task = o->task;
    if (o->task == EMOE_TASK_REGRESS) {
        c->num_classes = 1;
    } else if (r->train->nclasses) {
        c->num_classes = (int)r->train->nclasses;
    } else {
        int64_t mx = -1;
        const struct emoe_tensor *lb = r->train->labels;
        for (size_t i = 0; lb->dtype == EMOE_I64 && i < lb->nelem; i++)
            if (((const int64_t *)lb->data)[i] > mx)
                mx = ((const int64_t *)lb->data)[i];
        c->num_classes = (int)(mx + 1 > 1 ? (mx + 1 > 1000000 ? 1000000 : mx + 1) : 1);
    }
    if (r->train->has_stats) {
        for (int i = 0; i < 4; i++) {
            c->mean[i] = r->train->mean[i];
            c->std[i] = r->train->std[i] > 0 ? r->train->std[i] : 1.0f;
        }
    } else if (im->dtype == EMOE_U8) {
        if (emoe_dataset_compute_stats(r->train, &err))
            emoe_tool_fail(&err);
        for (int i = 0; i < 4; i++) {
            c->mean[i] = r->train->mean[i];
            c->std[i] = r->train->std[i] > 0 ? r->train->std[i] : 1.0f;
        }
    }
    if (c->image_ndim == 3)
        c->in_chans = (int)im->shape[4];
    if (emoe_vit_config_check(c, &err))
        emoe_tool_usage_error("the model does not fit the data %s: %s", o->data, err.msg);
}

/* Resume of a --freeze-backbone run: the backbone weights that trained in the first
 * run (a new head, when the starting checkpoint's was left out) are those whose
 * weights the state holds ("param.vit.*"); the resumed run trains them too. */
static void unfreeze_from_state(struct run *r)
{
    struct emoe_safetensors *st;
    struct emoe_error err = {0};
    if (emoe_safetensors_open(r->state_path, &st, &err))
        emoe_tool_fail(&err);
    size_t nt = emoe_safetensors_count(st);
    for (size_t i = 0; i < nt; i++) {
        const char *name = emoe_safetensors_name(st, i);
        size_t n = 0;
        if (strncmp(name, "param.vit.", 10) != 0)
            continue;
        if (emoe_model_set_trainable(r->m, name + 6, 1, &n, &err)) {
            emoe_safetensors_close(st);
            emoe_tool_fail(&err);
        }
    }
    emoe_safetensors_close(st);
}

static void build_model(struct run *r)
{
    struct opts *o = r->o;
    struct emoe_error err = {0};
    const char *from = o->resume ? o->resume : o->init;
    int meta = from && has_emoe_metadata(from);
    if (meta) {
        config_from_file(r, from);
    } else {
        config_from_options(r);
        if (o->mc.router != EMOE_ROUTER_NONE && !o->set[O_RANK] && o->mc.rank > r->cfg.embed_dim)
            o->mc.rank = r->cfg.embed_dim;
        if (o->resume && access(o->resume, F_OK) != 0)
            emoe_tool_die("%s: %s (its training state exists: the run was stopped during "
                          "its first save; start it again without --resume)",
                          o->resume, strerror(errno));
        if (o->resume)
            emoe_tool_die("%s: not an emoe checkpoint (no model metadata)", o->resume);
        /* a reference EMoE state_dict brings its branches: adopt their configuration */
        struct emoe_moe_config mc;
        if (from && emoe_moe_config_from_checkpoint(from, &mc, &err) == EMOE_OK &&
            mc.router != EMOE_ROUTER_NONE)
            adopt_moe(o, mc, r->cfg.depth, from, 1);
    }
    if (o->mc.router != EMOE_ROUTER_NONE &&
        emoe_moe_config_check(&o->mc, r->cfg.embed_dim, r->cfg.depth, &err))
        emoe_tool_usage_error("routing: %s", err.msg);
    struct emoe_param_spec *specs = NULL;
    size_t ns = 0;
    if (emoe_moe_param_specs(&o->mc, r->cfg.embed_dim, r->cfg.depth, &specs, &ns, &err) ||
        emoe_model_new(&r->cfg, specs, ns, &r->m, &err))
        emoe_tool_fail(&err);
    free(specs);
    emoe_model_init(r->m, o->to.seed);
    if (o->mc.router != EMOE_ROUTER_NONE && emoe_moe_new(&o->mc, r->m, &r->moe, &err))
        emoe_tool_fail(&err);
    int head_loaded = 1;
    if (from) {
        unsigned flags = 0;
        if (!meta) {
            /* bare backbone: branches start from their init; a head for other
             * classes is left out */
            flags = EMOE_LOAD_ALLOW_MISSING;
            if (emoe_checkpoint_load(r->m, from, flags, NULL, &err) != EMOE_OK) {
                flags |= EMOE_LOAD_SKIP_HEAD;
                head_loaded = 0;
                if (emoe_checkpoint_load(r->m, from, flags, NULL, &err))
                    emoe_tool_fail(&err);
            }
        } else if (emoe_checkpoint_load(r->m, from, 0, NULL, &err)) {
            emoe_tool_fail(&err);
        }
    }
    if (o->freeze) {
        size_t n;
        if (emoe_model_set_trainable(r->m, "vit.*", 0, &n, &err))
            emoe_tool_fail(&err);
        if (!head_loaded && emoe_model_set_trainable(r->m, "vit.head.*", 1, &n, &err))
            emoe_tool_fail(&err);
        if (o->resume)
            unfreeze_from_state(r);
        if (emoe_model_trainable_numel(r->m) == 0)
            emoe_tool_usage_error("--freeze-backbone with --router none leaves nothing to train");
    }
}

/* ------------------------------------------------------------------ logging */

static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
    got_signal = sig;
}

static int should_stop(void *ctx)
{
    (void)ctx;
    return got_signal != 0;
}

/* "ortho_loss": ..., one key for each loss term that is on in this run. */
static void json_loss_terms(struct emoe_json_out *j, const struct emoe_moe_config *mc,
                            const double *terms)
{
    for (int k = 0; k < EMOE_LOSS_TERMS; k++)
        if (emoe_loss_term_active(mc, (enum emoe_loss_term)k)) {
            emoe_json_key(j, emoe_loss_term_name((enum emoe_loss_term)k));
            emoe_json_double(j, terms[k]);
        }
}

static void json_layers(struct emoe_json_out *j, const struct emoe_moe_config *mc,
                        const struct emoe_train_event *ev)
{
    emoe_json_key(j, "layers");
    emoe_json_begin_array(j);
    for (int l = 0; l < ev->nlayers; l++) {
        const struct emoe_train_layer *L = &ev->layers[l];
        emoe_json_begin_object(j);
        emoe_json_key(j, "block");
        emoe_json_int(j, L->block);
        emoe_json_key(j, "tokens");
        emoe_json_int(j, L->routing.tokens);
        emoe_json_key(j, "cv");
        emoe_json_double(j, L->routing.cv);
        emoe_json_key(j, "entropy");
        emoe_json_double(j, L->routing.entropy);
        emoe_json_key(j, "peak");
        emoe_json_double(j, L->routing.peak);
        emoe_json_key(j, "min_share");
        emoe_json_double(j, L->routing.min_share);
        emoe_json_key(j, "dropped");
        emoe_json_double(j, L->routing.dropped_frac);
        emoe_json_key(j, "unused");
        emoe_json_int(j, L->routing.unused);
        emoe_json_key(j, "aux_loss");
        emoe_json_double(j, L->aux_loss);
        json_loss_terms(j, mc, L->loss_terms);
        emoe_json_end_object(j);
    }
    emoe_json_end_array(j);
}

static void on_event(void *ctx, const struct emoe_train_event *ev)
{
    struct run *r = ctx;
    int regress = r->cfg.task == EMOE_TASK_REGRESS;
    if (ev->kind == EMOE_TRAIN_PROGRESS) {
        /* smoothed over recent steps for the bar */
        double a = r->smooth_n < 20 ? 1.0 / ++r->smooth_n : 0.05;
        r->s_loss += a * (ev->loss - r->s_loss);
        r->s_acc += a * (ev->accuracy - r->s_acc);
        r->s_ips += a * (ev->images_per_s - r->s_ips);
        char extra[160];
        if (regress)
            snprintf(extra, sizeof extra, "loss %.4f  %.0f img/s", r->s_loss, r->s_ips);
        else
            snprintf(extra, sizeof extra, "loss %.4f  acc %.1f%%  %.0f img/s", r->s_loss,
                     100 * r->s_acc, r->s_ips);
        emoe_progress_update(&r->prog, (uint64_t)ev->step, extra);
        return;
    }
    if (ev->kind == EMOE_TRAIN_EVAL) {
        if (regress)
            emoe_progress_note(&r->prog, "epoch %d: validation MAE %.4g, loss %.4f%s",
                               ev->epoch, ev->val.mae, ev->val.loss,
                               ev->is_best ? " (best)" : "");
        else
            emoe_progress_note(&r->prog, "epoch %d: validation top-1 %.2f%%, top-5 %.2f%%, "
                               "loss %.4f%s", ev->epoch, 100 * ev->val.top1,
                               100 * ev->val.top5, ev->val.loss, ev->is_best ? " (best)" : "");
    }
    if (!r->log)
        return;
    struct emoe_json_out *j = &r->json;
    emoe_json_begin_object(j);
    emoe_json_key(j, "type");
    emoe_json_string(j, ev->kind == EMOE_TRAIN_STEP ? "step" : ev->kind == EMOE_TRAIN_EVAL
                                                                   ? "eval" : "save");
    emoe_json_key(j, "step");
    emoe_json_int(j, ev->step);
    if (ev->kind == EMOE_TRAIN_STEP) {
        emoe_json_key(j, "epoch");
        emoe_json_double(j, ev->epoch_frac);
        emoe_json_key(j, "lr");
        emoe_json_double(j, ev->lr);
        emoe_json_key(j, "loss");
        emoe_json_double(j, ev->loss);
        emoe_json_key(j, "task_loss");
        emoe_json_double(j, ev->task_loss);
        emoe_json_key(j, "aux_loss");
        emoe_json_double(j, ev->aux_loss);
        if (r->moe)
            json_loss_terms(j, &r->o->mc, ev->loss_terms);
        emoe_json_key(j, "grad_norm");
        emoe_json_double(j, ev->grad_norm);
        if (!regress) {
            emoe_json_key(j, "train_acc");
            emoe_json_double(j, ev->accuracy);
        }
        emoe_json_key(j, "images_per_s");
        emoe_json_double(j, ev->images_per_s);
        json_layers(j, &r->o->mc, ev);
    } else if (ev->kind == EMOE_TRAIN_EVAL) {
        emoe_json_key(j, "epoch");
        emoe_json_int(j, ev->epoch);
        emoe_json_key(j, "val_loss");
        emoe_json_double(j, ev->val.loss);
        if (regress) {
            emoe_json_key(j, "val_mae");
            emoe_json_double(j, ev->val.mae);
        } else {
            emoe_json_key(j, "val_top1");
            emoe_json_double(j, ev->val.top1);
            emoe_json_key(j, "val_top5");
            emoe_json_double(j, ev->val.top5);
        }
        emoe_json_key(j, "best");
        emoe_json_bool(j, ev->is_best);
        json_layers(j, &r->o->mc, ev);
    } else {
        emoe_json_key(j, "path");
        emoe_json_string(j, ev->path);
    }
    emoe_json_end_object(j);
    struct emoe_error err = {0};
    if (emoe_json_out_write_line(j, r->log, r->log_name, &err) || fflush(r->log))
        emoe_tool_warn("%s: cannot write the log", r->log_name);
}

/* ------------------------------------------------------------------ main */

static void check_writable(const char *path)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        slash[slash == dir ? 1 : 0] = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    if (access(dir, W_OK) != 0)
        emoe_tool_die("%s: cannot write in '%s': %s", path, dir, strerror(errno));
}

static double best_score(const char *path)
{
    struct emoe_safetensors *st;
    struct emoe_error err = {0};
    if (access(path, F_OK) != 0 || emoe_safetensors_open(path, &st, &err))
        return NAN;
    const char *v = emoe_safetensors_metadata_get(st, "train.best_score");
    double d = v ? strtod(v, NULL) : NAN;
    emoe_safetensors_close(st);
    return d;
}

int main(int argc, char **argv)
{
    emoe_tool_init(argc, argv, "emoe-train");
    struct opts o;
    parse_options(argc, argv, &o);
    struct run r;
    memset(&r, 0, sizeof r);
    r.o = &o;
    struct emoe_error err = {0};
    snprintf(r.state_path, sizeof r.state_path, "%s.state", o.out);
    if (o.resume)
        settings_from_state(&o, r.state_path);

    /* read and check everything before writing anything; a missing starting
     * checkpoint is reported before the data is read and the model built */
    if (o.init && access(o.init, R_OK) != 0)
        emoe_tool_die("%s: %s", o.init, strerror(errno));
    if (emoe_dataset_read(o.data, &r.train, &err))
        emoe_tool_fail(&err);
    if (o.val && emoe_dataset_read(o.val, &r.val, &err))
        emoe_tool_fail(&err);
    build_model(&r);
    const char *tname = strcmp(o.data, "-") ? o.data : "<stdin>";
    if (o.resume_data[0]) {
        char fp[128];
        emoe_dataset_fingerprint(r.train, fp, sizeof fp);
        if (strcmp(fp, o.resume_data) != 0)
            emoe_tool_die("%s: not the training data of the run being resumed (%s; %s has "
                          "%s)", tname, fp, r.state_path, o.resume_data);
    }
    if (emoe_train_check_data(r.m, r.train, tname, &err))
        emoe_tool_fail(&err);
    if (r.val && emoe_train_check_data(r.m, r.val, strcmp(o.val, "-") ? o.val : "<stdin>", &err))
        emoe_tool_fail(&err);
    check_writable(o.out);
    if (o.best)
        check_writable(o.best);

    struct emoe_train_options *to = &o.to;
    to->out_path = o.out;
    to->state_path = r.state_path;
    to->best_path = o.best;
    to->resume = o.resume != NULL;
    to->train_name = tname;
    to->val_name = o.val;
    if (o.eigen_data)
        to->eigen_init_batches = o.eigen_batches ? o.eigen_batches : 4;
    /* regression: a regression checkpoint keeps its target scale (mean 0, std 1 when
     * it has none); otherwise it comes from the training targets */
    const char *from = o.resume ? o.resume : o.init;
    if (r.cfg.task == EMOE_TASK_REGRESS && from && has_emoe_metadata(from)) {
        if (emoe_eval_target_scale(from, &to->target, &err))
            emoe_tool_fail(&err);
        to->target_set = 1;
    }
    if (to->resume && o.best) {
        double b = best_score(o.best);
        if (isfinite(b)) {
            to->resume_best_set = 1;
            to->resume_best = b;
        }
    }
    int image2d = r.cfg.image_ndim == 2 && r.train->images->dtype == EMOE_U8;
    if (!o.no_augment && image2d) {
        to->augment.crop_padding = o.crop_padding >= 0 ? o.crop_padding
                                                       : r.cfg.image_size[0] / 8;
        to->augment.hflip = o.hflip;
        to->augment.resized_crop = o.resized_crop;
    }
    /* checkpoint metadata: routing and class names */
    struct emoe_moe_meta mm;
    size_t nmm = 0;
    if (emoe_moe_metadata(&o.mc, r.cfg.depth, &mm, &nmm, &err))
        emoe_tool_fail(&err);
    struct emoe_kv kv[10];
    memcpy(kv, mm.kv, nmm * sizeof *kv);
    char *classes = NULL;
    if (r.train->classes && r.train->nclasses) {
        size_t len = 1;
        for (size_t i = 0; i < r.train->nclasses; i++)
            len += strlen(r.train->classes[i]) + 1;
        classes = calloc(1, len);
        if (!classes)
            emoe_tool_die("out of memory");
        for (size_t i = 0; i < r.train->nclasses; i++) {
            if (i)
                strcat(classes, "\n");
            strcat(classes, r.train->classes[i]);
        }
        kv[nmm].key = "data.classes";
        kv[nmm++].value = classes;
    }
    to->meta = kv;
    to->nmeta = nmm;
    struct emoe_kv skv[NSTORED + 2];
    char stext[NSTORED + 1][2][64], sdata[128];
    to->state_meta = skv;
    to->nstate_meta = settings_for_state(&o, r.train, skv, stext, sdata);

    if (o.log) {
        if (strcmp(o.log, "-") == 0) {
            r.log = stdout;
            r.log_name = "<stdout>";
        } else {
            r.log = fopen(o.log, o.resume ? "a" : "w");
            r.log_name = o.log;
            if (!r.log)
                emoe_tool_die("%s: %s", o.log, strerror(errno));
        }
    }
    emoe_json_out_init(&r.json);
    to->log = on_event;
    to->ctx = &r;
    to->should_stop = should_stop;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESETHAND; /* a second signal stops at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    size_t N = (size_t)r.train->images->shape[0];
    int64_t total = to->max_steps > 0
                        ? to->max_steps
                        : (int64_t)to->epochs * (int64_t)((N + (size_t)to->batch - 1) /
                                                          (size_t)to->batch);
    emoe_progress_start(&r.prog, "training", (uint64_t)total);
    int rc = emoe_train_run(r.m, r.moe, r.train, r.val, to, &err);
    emoe_progress_end(&r.prog);
    emoe_json_out_free(&r.json);
    if (r.log && r.log != stdout)
        fclose(r.log);
    else if (r.log && (fflush(stdout) || ferror(stdout)))
        emoe_tool_die("<stdout>: write error");
    free(classes);
    emoe_moe_free(r.moe);
    emoe_model_free(r.m);
    emoe_dataset_free(r.train);
    emoe_dataset_free(r.val);
    if (rc == EMOE_EINTR) {
        int sig = got_signal;
        fprintf(stderr, "%s: %s (%s); resume with --resume %s\n", emoe_progname, err.msg,
                sig == SIGTERM ? "SIGTERM" : "SIGINT", o.out);
        opts_free(&o);
        return 128 + (sig ? sig : SIGINT);
    }
    opts_free(&o);
    if (rc)
        emoe_tool_fail(&err);
    return EXIT_OK;
}
