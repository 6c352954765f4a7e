/*
 * emoe-info: list the tensors of .npy, .npz and .safetensors files.
 *
 *   emoe-info [--stats] [--tsv] [-q] [-j N] FILE...
 *
 * For each tensor: name, dtype, shape, bytes (and with --stats min, max, mean, std);
 * for safetensors also the __metadata__.  "-" reads a .npy from standard input.
 * A file that cannot be read is reported and skipped; the exit status is then 1.
 */
#include "config.h"
#include "common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct options {
    int stats;
    int tsv;
    char **files;
    int nfiles;
};

enum { OPT_STATS = OPT_TOOL_BASE, OPT_TSV };

static void usage(void)
{
    printf("Usage: emoe-info [OPTIONS] FILE...\n"
           "List the tensors of .npy, .npz and .safetensors files.\n"
           "\n"
           "  -s, --stats       add min, max, mean and std of each tensor\n"
           "  -t, --tsv         print one tab-separated row per tensor, with a header\n"
           "  -q, --quiet       print nothing but the listing\n"
           "  -j, --threads N   threads to use (default: all CPUs)\n"
           "  -h, --help        show this help and exit\n"
           "      --version     show version information and exit\n"
           "\n"
           "FILE '-' reads a .npy from standard input.  See emoe-info(1).\n");
}

static void parse_options(int argc, char **argv, struct options *o)
{
    static const struct option longopts[] = {
        EMOE_COMMON_LONGOPTS,
        {"stats", no_argument, NULL, 's'},
        {"tsv", no_argument, NULL, 't'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    int c;
    while ((c = getopt_long(argc, argv, EMOE_COMMON_SHORTOPTS "st", longopts, NULL)) != -1) {
        if (emoe_tool_common_option(c, optarg, usage))
            continue;
        switch (c) {
        case 's': o->stats = 1; break;
        case 't': o->tsv = 1; break;
        default: emoe_tool_usage_error("unexpected option");
        }
    }
    if (optind >= argc)
        emoe_tool_usage_error("no FILE given");
    o->files = argv + optind;
    o->nfiles = argc - optind;
}

/* Shape as "[60000,32,32,3]" (TSV) or "(60000, 32, 32, 3)" (human). */
static void shape_str(int tsv, int ndim, const int64_t *shape, char *buf, size_t size)
{
    if (!tsv) {
        emoe_shape_format(ndim, shape, buf, size);
        return;
    }
    size_t used = 0;
    used += (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, i ? ",%lld" : "%lld",
                                 (long long)shape[i]);
    if (used < size)
        snprintf(buf + used, size - used, "]");
}

/* dtype: emoe's dtype name, or "S<n>" for fixed-width byte strings (no statistics). */
static void print_row(const struct options *o, const char *file, const char *name,
                      const char *dtype, int ndim, const int64_t *shape, size_t nbytes,
                      const struct emoe_tensor *t)
{
    char shp[256];
    shape_str(o->tsv, ndim, shape, shp, sizeof shp);
    if (o->tsv)
        printf("%s\t%s\t%s\t%s\t%zu", file, name, dtype, shp, nbytes);
    else
        printf("  %-40s %-5s %-22s %12zu", name, dtype, shp, nbytes);
    if (o->stats) {
        struct emoe_tensor_stats s;
        struct emoe_error err = {0};
        if (t && emoe_tensor_stats(t, &s, &err) == EMOE_OK)
            printf(o->tsv ? "\t%.9g\t%.9g\t%.9g\t%.9g" : "  %12.6g %12.6g %12.6g %12.6g", s.min,
                   s.max, s.mean, s.std);
        else
            printf(o->tsv ? "\t\t\t\t" : "  (no statistics)");
    }
    putchar('\n');
}

/* The dtype column for a parsed header: "S5" for '|S5' strings. */
static const char *dtype_label(const struct emoe_npy_info *info, char *buf, size_t size)
{
    if (!info->is_string)
        return emoe_dtype_name(info->dtype);
    snprintf(buf, size, "S%zu", info->itemsize);
    return buf;
}

static int info_npy(const struct options *o, const char *path, struct emoe_error *err)
{
    const char *shown = strcmp(path, "-") ? path : "<stdin>";
    struct emoe_tensor *t = NULL;
    struct emoe_npy_info info;
    char label[32];
    if (strcmp(path, "-") != 0) {
        /* Look at the header first: string arrays are listed, not loaded as tensors. */
        unsigned char head[4096];
        FILE *f = fopen(path, "rb");
        if (!f)
            return emoe_error_set(err, EMOE_EIO, "%s: %s", path, strerror(errno));
        size_t got = fread(head, 1, sizeof head, f);
        fclose(f);
        if (emoe_npy_parse_header(head, got, path, &info, err) == EMOE_OK && info.is_string) {
            if (!o->tsv)
                printf("%s: npy, 1 tensor\n", shown);
            print_row(o, shown, "-", dtype_label(&info, label, sizeof label), info.ndim,
                      info.shape, info.nbytes, NULL);
            return EMOE_OK;
        }
    }
    int rc = emoe_npy_read(path, &t, err);
    if (rc != EMOE_OK)
        return rc;
    if (!o->tsv)
        printf("%s: npy, 1 tensor\n", shown);
    print_row(o, shown, "-", emoe_dtype_name(t->dtype), t->ndim, t->shape, t->nbytes, t);
    emoe_tensor_free(t);
    return EMOE_OK;
}

static int info_npz(const struct options *o, const char *path, struct emoe_error *err)
{
    struct emoe_npz *z;
    int rc = emoe_npz_open(path, &z, err);
    if (rc != EMOE_OK)
        return rc;
    size_t n = emoe_npz_count(z);
    if (!o->tsv)
        printf("%s: npz, %zu tensor%s\n", path, n, n == 1 ? "" : "s");
    for (size_t i = 0; i < n && rc == EMOE_OK; i++) {
        const char *name = emoe_npz_name(z, i);
        struct emoe_npy_info info;
        struct emoe_tensor *t = NULL;
        char label[32];
        rc = emoe_npz_info(z, name, &info, err);
        if (rc == EMOE_OK && o->stats && !info.is_string)
            rc = emoe_npz_read(z, name, &t, err);
        if (rc == EMOE_OK)
            print_row(o, path, name, dtype_label(&info, label, sizeof label), info.ndim,
                      info.shape, info.nbytes, t);
        emoe_tensor_free(t);
    }
    emoe_npz_close(z);
    return rc;
}

static int info_safetensors(const struct options *o, const char *path, struct emoe_error *err)
{
    struct emoe_safetensors *st;
    int rc = emoe_safetensors_open(path, &st, err);
    if (rc != EMOE_OK)
        return rc;
    size_t n = emoe_safetensors_count(st), nmeta = emoe_safetensors_metadata_count(st);
    if (!o->tsv)
        printf("%s: safetensors, %zu tensor%s\n", path, n, n == 1 ? "" : "s");
    for (size_t i = 0; i < n && rc == EMOE_OK; i++) {
        struct emoe_tensor *t;
        rc = emoe_safetensors_get(st, emoe_safetensors_name(st, i), &t, err);
        if (rc != EMOE_OK)
            break;
        print_row(o, path, emoe_safetensors_name(st, i), emoe_dtype_name(t->dtype), t->ndim,
                  t->shape, t->nbytes, t);
        emoe_tensor_free(t);
    }
    if (rc == EMOE_OK && nmeta && !o->tsv) {
        printf("  metadata:\n");
        for (size_t i = 0; i < nmeta; i++) {
            const char *v = emoe_safetensors_metadata_value(st, i);
            printf("    %s = ", emoe_safetensors_metadata_key(st, i));
            for (; *v; v++) /* keep one line per key: show newlines as \n */
                if (*v == '\n')
                    fputs("\\n", stdout);
                else
                    putchar(*v);
            putchar('\n');
        }
    }
    emoe_safetensors_close(st);
    return rc;
}

static int info_file(const struct options *o, const char *path, struct emoe_error *err)
{
    if (strcmp(path, "-") == 0)
        return info_npy(o, path, err);
    FILE *f = fopen(path, "rb");
    if (!f)
        return emoe_error_set(err, EMOE_EIO, "%s: %s", path, strerror(errno));
    unsigned char head[16];
    size_t got = fread(head, 1, sizeof head, f);
    fclose(f);
    switch (emoe_file_kind_detect(head, got)) {
    case EMOE_FILE_NPY: return info_npy(o, path, err);
    case EMOE_FILE_NPZ: return info_npz(o, path, err);
    case EMOE_FILE_SAFETENSORS: return info_safetensors(o, path, err);
    default:
        return emoe_error_set(err, EMOE_EFORMAT, "%s: not a .npy, .npz or .safetensors file",
                              path);
    }
}

int main(int argc, char **argv)
{
    struct options o;
    emoe_tool_init(argc, argv, "emoe-info");
    parse_options(argc, argv, &o);
    if (o.tsv)
        printf("file\tname\tdtype\tshape\tbytes%s\n", o.stats ? "\tmin\tmax\tmean\tstd" : "");
    int status = EXIT_OK;
    for (int i = 0; i < o.nfiles; i++) {
        struct emoe_error err = {0};
        if (info_file(&o, o.files[i], &err) != EMOE_OK) {
            fflush(stdout);
            fprintf(stderr, "%s: %s\n", emoe_progname, err.msg);
            status = EXIT_FAIL;
        }
    }
    if (fflush(stdout) != 0 || ferror(stdout))
        emoe_tool_die("<stdout>: write error: %s", strerror(errno));
    return status;
}
