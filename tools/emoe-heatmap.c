/*
 * emoe-heatmap: draw the expert x class routing heatmap of a routing tensor
 * (f32 [layers, experts, classes] of top-1 counts, as emoe-eval --routing-out
 * writes it) as PNG, SVG or text.
 *
 *   emoe-heatmap [OPTIONS] ROUTING.npy -o OUT.png|OUT.svg
 *
 * ROUTING.npy "-" reads the tensor from standard input; OUT "-" writes to standard
 * output (then --format says which).  --ascii prints a terminal rendering.
 */
#include "config.h"
#include "common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct options {
    const char *input;
    const char *output;
    int format;         /* 0 from the name, 'p' PNG, 's' SVG */
    int layer;          /* -1 all */
    enum emoe_heatmap_norm normalize;
    const char *classes;
    const char *title;
    int ascii;
    int columns;
};

enum { OPT_ASCII = OPT_TOOL_BASE, OPT_WIDTH };

static void usage(void)
{
    printf("Usage: emoe-heatmap [OPTIONS] ROUTING.npy -o OUT.png|OUT.svg\n"
           "   or: emoe-heatmap [OPTIONS] --ascii ROUTING.npy\n"
           "Draw the expert x class routing heatmap of a routing tensor\n"
           "(f32 [layers, experts, classes], e.g. from emoe-eval --routing-out).\n"
           "\n"
           "  -o, --output FILE     write the picture to FILE (.png or .svg; '-' is stdout)\n"
           "  -f, --format FMT      png or svg (default: from the name of FILE)\n"
           "  -l, --layer L         the layer to draw, or 'all' (default: all, one panel each)\n"
           "  -n, --normalize HOW   none (counts), class (each class sums to 1 over the\n"
           "                        experts) or expert (each expert sums to 1 over the\n"
           "                        classes); default none\n"
           "  -c, --classes FILE    class names for the axis: a dataset .npz (its 'classes'),\n"
           "                        a .npy of strings, or a text file with one name a line\n"
           "  -t, --title TEXT      a title above the map\n"
           "  -a, --ascii           print a terminal rendering on stdout\n"
           "      --width N         columns of the terminal rendering (default: $COLUMNS or 80)\n"
           "  -q, --quiet           print no warnings\n"
           "  -j, --threads N       threads to use (default: all CPUs)\n"
           "  -h, --help            show this help and exit\n"
           "      --version         show version information and exit\n"
           "\n"
           "ROUTING.npy '-' reads standard input:\n"
           "  emoe-eval ... --routing-out - | emoe-heatmap - -o map.png\n"
           "See emoe-heatmap(1).\n");
}

static void parse_options(int argc, char **argv, struct options *o)
{
    static const struct option longopts[] = {
        EMOE_COMMON_LONGOPTS,
        {"output", required_argument, NULL, 'o'},
        {"format", required_argument, NULL, 'f'},
        {"layer", required_argument, NULL, 'l'},
        {"normalize", required_argument, NULL, 'n'},
        {"normalise", required_argument, NULL, 'n'},
        {"classes", required_argument, NULL, 'c'},
        {"title", required_argument, NULL, 't'},
        {"ascii", no_argument, NULL, 'a'},
        {"width", required_argument, NULL, OPT_WIDTH},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    o->layer = -1;
    int c;
    while ((c = getopt_long(argc, argv, EMOE_COMMON_SHORTOPTS "o:f:l:n:c:t:a", longopts,
                            NULL)) != -1) {
        if (emoe_tool_common_option(c, optarg, usage))
            continue;
        switch (c) {
        case 'o': o->output = optarg; break;
        case 'f':
            if (strcmp(optarg, "png") == 0)
                o->format = 'p';
            else if (strcmp(optarg, "svg") == 0)
                o->format = 's';
            else
                emoe_tool_usage_error("--format: '%s' is not png or svg", optarg);
            break;
        case 'l':
            o->layer = strcmp(optarg, "all") == 0
                           ? -1 : (int)emoe_tool_parse_long("--layer", optarg, 0, 1000000);
            break;
        case 'n':
            if (strcmp(optarg, "none") == 0)
                o->normalize = EMOE_HEATMAP_NONE;
            else if (strcmp(optarg, "class") == 0)
                o->normalize = EMOE_HEATMAP_CLASS;
            else if (strcmp(optarg, "expert") == 0)
                o->normalize = EMOE_HEATMAP_EXPERT;
            else
                emoe_tool_usage_error("--normalize: '%s' is not none, class or expert", optarg);
            break;
        case 'c': o->classes = optarg; break;
        case 't': o->title = optarg; break;
        case 'a': o->ascii = 1; break;
        case OPT_WIDTH:
            o->columns = (int)emoe_tool_parse_long("--width", optarg, 20, 10000);
            break;
        default: emoe_tool_usage_error("unexpected option");
        }
    }
    if (optind >= argc)
        emoe_tool_usage_error("no ROUTING.npy given");
    if (argc - optind > 1)
        emoe_tool_usage_error("one ROUTING.npy only (got '%s' too)", argv[optind + 1]);
    o->input = argv[optind];
    if (!o->output && !o->ascii)
        emoe_tool_usage_error("no output: give -o OUT.png, -o OUT.svg or --ascii");
    if (o->output && !o->format) {
        size_t n = strlen(o->output);
        if (n >= 4 && strcasecmp(o->output + n - 4, ".png") == 0)
            o->format = 'p';
        else if (n >= 4 && strcasecmp(o->output + n - 4, ".svg") == 0)
            o->format = 's';
        else
            emoe_tool_usage_error("%s: name ends in neither .png nor .svg (use --format)",
                                  o->output);
    }
    if (o->output && o->ascii && strcmp(o->output, "-") == 0)
        emoe_tool_usage_error("--ascii and -o - would both write to standard output");
    if (!o->columns) {
        const char *cols = getenv("COLUMNS");
        long v = cols ? strtol(cols, NULL, 10) : 0;
        o->columns = v >= 20 && v <= 10000 ? (int)v : 80;
    }
}

/* Class names from a dataset .npz, a .npy of strings or a text file (one a line). */
static int read_classes(const char *path, char ***names, size_t *n, char **text,
                        struct emoe_error *err)
{
    *names = NULL;
    *text = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return emoe_error_set(err, EMOE_EIO, "%s: %s", path, strerror(errno));
    unsigned char head[16];
    size_t got = fread(head, 1, sizeof head, f);
    enum emoe_file_kind kind = emoe_file_kind_detect(head, got);
    if (kind == EMOE_FILE_NPZ || kind == EMOE_FILE_NPY) {
        fclose(f);
        if (kind == EMOE_FILE_NPY)
            return emoe_npy_read_strings(path, names, n, err);
        struct emoe_npz *z;
        int rc = emoe_npz_open(path, &z, err);
        if (rc != EMOE_OK)
            return rc;
        rc = emoe_npz_read_strings(z, "classes", names, n, err);
        emoe_npz_close(z);
        return rc;
    }
    /* text: at most 16 MiB, one name a line (a trailing \r is dropped) */
    size_t cap = 1 << 24, len = got;
    char *buf = malloc(cap + 1);
    if (!buf) {
        fclose(f);
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", path);
    }
    memcpy(buf, head, got);
    len += fread(buf + len, 1, cap - len, f);
    int bad = ferror(f), more = fgetc(f) != EOF;
    fclose(f);
    if (bad || more) {
        free(buf);
        return bad ? emoe_error_set(err, EMOE_EIO, "%s: read error", path)
                   : emoe_error_set(err, EMOE_ERANGE, "%s: class names file is larger than "
                                    "16 MiB", path);
    }
    buf[len] = '\0';
    if (memchr(buf, '\0', len)) {
        free(buf);
        return emoe_error_set(err, EMOE_EFORMAT, "%s: not a text file of class names", path);
    }
    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += buf[i] == '\n';
    if (len && buf[len - 1] != '\n')
        lines++;
    char **v = malloc((lines + 1) * sizeof *v);
    if (!v) {
        free(buf);
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", path);
    }
    size_t k = 0;
    for (char *p = buf; k < lines; k++) {
        v[k] = p;
        char *nl = strchr(p, '\n');
        if (nl)
            *nl = '\0';
        size_t l = strlen(p);
        if (l && p[l - 1] == '\r')
            p[l - 1] = '\0';
        p = nl ? nl + 1 : p + l;
    }
    *names = v;
    *n = lines;
    *text = buf;
    return EMOE_OK;
}

int main(int argc, char **argv)
{
    struct options o;
    struct emoe_error err = {0};
    emoe_tool_init(argc, argv, "emoe-heatmap");
    argv[0] = (char *)"emoe-heatmap"; /* getopt_long names the program from argv[0] */
    parse_options(argc, argv, &o);

    /* inputs first: the tensor, then the names */
    struct emoe_tensor *t = NULL;
    const char *shown = strcmp(o.input, "-") ? o.input : "<stdin>";
    if (emoe_npy_read(o.input, &t, &err) != EMOE_OK)
        emoe_tool_fail(&err);
    if (t->dtype != EMOE_F32 && t->dtype != EMOE_BOOL) {
        /* integer, half or double counts are converted */
        struct emoe_tensor *c;
        if (emoe_tensor_convert(t, EMOE_F32, &c, &err) != EMOE_OK)
            emoe_tool_fail(&err);
        emoe_tensor_free(t);
        t = c;
    }
    if (emoe_routing_check(t, shown, &err) != EMOE_OK)
        emoe_tool_fail(&err);
    if (o.layer >= t->shape[0])
        emoe_tool_die("%s: --layer %d, but the routing tensor has %lld layers (0 .. %lld)",
                      shown, o.layer, (long long)t->shape[0], (long long)t->shape[0] - 1);
    char **names = NULL, *text = NULL;
    size_t nnames = 0;
    if (o.classes) {
        if (read_classes(o.classes, &names, &nnames, &text, &err) != EMOE_OK)
            emoe_tool_fail(&err);
        if (nnames != (size_t)t->shape[2])
            emoe_tool_die("%s: %zu class names, but %s has %lld classes", o.classes, nnames,
                          shown, (long long)t->shape[2]);
    }

    struct emoe_heatmap_options ho;
    emoe_heatmap_options_init(&ho);
    ho.layer = o.layer;
    ho.normalize = o.normalize;
    ho.classes = (const char *const *)names;
    ho.nclasses = nnames;
    ho.title = o.title;
    int rc = EMOE_OK;
    if (o.output && o.format == 'p') {
        unsigned char *px;
        int w, h;
        rc = emoe_heatmap_render(t, &ho, &px, &w, &h, &err);
        if (rc == EMOE_OK) {
            rc = emoe_png_write(o.output, px, w, h, 3, &err);
            free(px);
        }
    } else if (o.output) {
        char *svg;
        size_t len;
        rc = emoe_heatmap_svg(t, &ho, &svg, &len, &err);
        if (rc == EMOE_OK) {
            struct emoe_atomic a;
            rc = emoe_atomic_open(&a, o.output, &err);
            if (rc == EMOE_OK) {
                if (fwrite(svg, 1, len, a.f) != len) {
                    rc = emoe_error_set(&err, EMOE_EIO, "%s: write error: %s", o.output,
                                        strerror(errno));
                    emoe_atomic_abort(&a);
                } else {
                    rc = emoe_atomic_commit(&a, &err);
                }
            }
            free(svg);
        }
    }
    if (rc == EMOE_OK && o.ascii) {
        char *txt;
        size_t len;
        rc = emoe_heatmap_ascii(t, &ho, o.columns, &txt, &len, &err);
        if (rc == EMOE_OK) {
            fwrite(txt, 1, len, stdout);
            free(txt);
        }
    }
    if (names && text) {
        free(names);
        free(text);
    } else if (names) {
        emoe_npy_strings_free(names);
    }
    emoe_tensor_free(t);
    if (rc != EMOE_OK)
        emoe_tool_fail(&err);
    if (fflush(stdout) != 0 || ferror(stdout))
        emoe_tool_die("<stdout>: write error: %s", strerror(errno));
    return EXIT_OK;
}
