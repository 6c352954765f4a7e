/*
 * bench_prep.c: images per second per core of emoe-prep's reader (emoe_prep_read, the
 * whole pipeline: archive, JPEG decoding, resizing, collecting) next to plain
 * libjpeg-turbo decodes of the same JPEGs in the same process.
 *
 *   bench/bench_prep [DATA [REPS [cifar|photos]]]
 *       DATA: $EMOE_SHARED_DATA, else ../shared/data; REPS: runs per figure, the best is
 *       kept (3, at most 12); the last argument runs only one of the two workloads.
 *
 * Workloads (the emoe-prep issue):
 *   - cifar-10-jpg/cifar-10-jpg.zip: all 60,000 small JPEGs (train and test splits),
 *     kept at 32x32, -j 1 and -j 2;
 *   - imagenet-sample-images-subset/imagenet-sample.tar: 200 large photos to 224x224
 *     and to 32x32, -j 1 and -j 2.
 * References, one thread: the same JPEGs, read from the archive into memory first, decoded
 * by libjpeg-turbo (jpeg_mem_src, RGB out, JDCT_ISLOW as emoe uses) at full size and at
 * the 1/8 DCT scale (which still Huffman-decodes every coefficient: the limit for any
 * reader that must look at every image).  emoe_prep_read includes reading the archive
 * (from the page cache after the first run); the plain decodes do not (a reference row
 * shows what libarchive alone takes to read the zip's members).  A third reference, the
 * full-size decode split in chunks over 1 and then 2 threads (nothing serial, no archive),
 * shows the -j 2 scaling the machine itself allows at the time of the run: these CPUs are
 * shared with other jobs, and the -j 2 figures of one minute can differ by a quarter from
 * those of the next.  For the same reason -j 1 and -j 2 are measured in alternating
 * rounds, not one after the other, and the scaling is shown twice: as the ratio of the
 * best -j 2 rate to the best -j 1 rate, and as the median over the rounds of each
 * round's ratio (its -j 1 and -j 2 runs a moment apart, so on a machine as busy for
 * both).  The -j 2 target is judged by the median.  Each figure is shown as images per wall-clock
 * second, per core (divided by j) and per CPU second of all threads (the best run by wall
 * clock); on a machine shared with other jobs the last is the steadier measure of
 * per-core speed.
 * Targets (per core), set by the issue on a machine where libjpeg-turbo decoded the CIFAR
 * JPEGs at 100,000/s and the photos at 635/s, so judged here as ratios to the plain
 * full-size decode of the same run (per CPU second): CIFAR >= 50,000/s -> >= 0.5x, photos
 * to 224 >= 500/s -> >= 0.79x, photos to 32 >= 0.9x the 1/8-scale decode, -j 2 >= 1.8x
 * -j 1 (wall clock: only meaningful on otherwise idle CPUs; the CPU efficiency, -j 2's
 * images per CPU second over -j 1's, is shown next to it).  The bench runs in the
 * environment the tools set up (emoe_tool_init: TZ=UTC when unset, OpenBLAS started
 * without its worker threads).  Exit 0 unless the data cannot be
 * read; the PASS/MISS column is informational.
 */
#include "config.h"
#include "common.h"
#include "emoe.h"

#include <archive.h>
#include <archive_entry.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <jpeglib.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_now(void) /* CPU seconds of all threads of the process */
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A figure: images per wall second (best of the runs) and images per CPU second of that
 * same run (less sensitive to other jobs on a shared machine). */
struct rate {
    double wall, cpu;
};

static void keep_best(struct rate *best, size_t n, double wall, double cpu)
{
    double r = (double)n / wall;
    if (r > best->wall) {
        best->wall = r;
        best->cpu = cpu > 0 ? (double)n / cpu : 0;
    }
}

struct blob {
    unsigned char *data;
    size_t size;
};

struct blobs {
    struct blob *b;
    size_t n, cap;
};

static int is_jpeg_name(const char *name)
{
    size_t n = strlen(name);
    return (n > 4 && strcasecmp(name + n - 4, ".jpg") == 0) ||
           (n > 5 && strcasecmp(name + n - 5, ".jpeg") == 0);
}

/* Every .jpg/.jpeg member of an archive, into memory. */
static int load_jpegs(const char *path, struct blobs *out)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_all(a);
    archive_read_support_format_all(a);
    if (archive_read_open_filename(a, path, 1 << 16) != ARCHIVE_OK) {
        fprintf(stderr, "bench_prep: %s: %s\n", path, archive_error_string(a));
        archive_read_free(a);
        return -1;
    }
    struct archive_entry *e;
    int r;
    while ((r = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
        const char *name = archive_entry_pathname(e);
        if (!name || archive_entry_filetype(e) != AE_IFREG || !is_jpeg_name(name))
            continue;
        la_int64_t sz = archive_entry_size(e);
        if (sz <= 0 || sz > (64 << 20))
            continue;
        if (out->n == out->cap) {
            out->cap = out->cap ? 2 * out->cap : 1024;
            out->b = realloc(out->b, out->cap * sizeof *out->b);
            if (!out->b)
                abort();
        }
        unsigned char *d = malloc((size_t)sz);
        if (!d)
            abort();
        if (archive_read_data(a, d, (size_t)sz) != sz) {
            fprintf(stderr, "bench_prep: %s: %s: short read\n", path, name);
            free(d);
            r = ARCHIVE_FATAL;
            break;
        }
        out->b[out->n].data = d;
        out->b[out->n].size = (size_t)sz;
        out->n++;
    }
    archive_read_free(a);
    return r == ARCHIVE_EOF ? 0 : -1;
}

static void free_blobs(struct blobs *b)
{
    for (size_t i = 0; i < b->n; i++)
        free(b->b[i].data);
    free(b->b);
    memset(b, 0, sizeof *b);
}

struct jerr {
    struct jpeg_error_mgr mgr;
    jmp_buf jb;
};

static void on_error(j_common_ptr c)
{
    longjmp(((struct jerr *)(void *)c->err)->jb, 1);
}

static void on_message(j_common_ptr c, int level)
{
    (void)c;
    (void)level;
}

struct scratch {
    unsigned char *row;
    size_t cap;
    unsigned long sum;
};

/* One plain decode at 1/denom to RGB rows; 0, or -1 when libjpeg reported an error. */
static int decode_one(struct jpeg_decompress_struct *ci, struct jerr *je, const struct blob *b,
                      int denom, struct scratch *s)
{
    if (setjmp(je->jb)) {
        jpeg_abort_decompress(ci);
        return -1;
    }
    jpeg_mem_src(ci, b->data, (unsigned long)b->size);
    jpeg_read_header(ci, TRUE);
    ci->out_color_space = JCS_RGB;
    ci->scale_num = 1;
    ci->scale_denom = (unsigned)denom;
    ci->dct_method = JDCT_ISLOW;
    jpeg_start_decompress(ci);
    size_t need = (size_t)ci->output_width * (size_t)ci->output_components;
    if (need > s->cap) {
        free(s->row);
        s->row = malloc(need);
        if (!s->row)
            abort();
        s->cap = need;
    }
    while (ci->output_scanline < ci->output_height) {
        JSAMPROW rp = s->row;
        jpeg_read_scanlines(ci, &rp, 1);
    }
    s->sum += s->row[0]; /* so the work cannot be skipped */
    jpeg_finish_decompress(ci);
    return 0;
}

/* Plain libjpeg-turbo decodes of all blobs at 1/denom on one thread: images per second
 * (best of reps); *failed: JPEGs libjpeg rejected. */
static struct rate plain_decode_rate(const struct blobs *b, int denom, int reps, size_t *failed)
{
    struct jpeg_decompress_struct ci;
    struct jerr je;
    ci.err = jpeg_std_error(&je.mgr);
    je.mgr.error_exit = on_error;
    je.mgr.emit_message = on_message;
    jpeg_create_decompress(&ci);
    struct scratch s = {NULL, 0, 0};
    struct rate best = {0, 0};
    for (int r = 0; r < reps; r++) {
        size_t bad = 0;
        double t0 = now(), c0 = cpu_now();
        for (size_t i = 0; i < b->n; i++)
            bad += decode_one(&ci, &je, &b->b[i], denom, &s) != 0;
        keep_best(&best, b->n, now() - t0, cpu_now() - c0);
        *failed = bad;
    }
    jpeg_destroy_decompress(&ci);
    free(s.row);
    return best;
}

/* Plain decodes (full size) of all blobs in chunks spread over the threads by
 * emoe_parallel_for, one decompressor per chunk: the same work at -j 1 and -j 2 gives
 * the scaling this machine allows a CPU-bound loop with nothing serial, at the time of
 * the run (the CPUs are shared with other jobs). */
struct chunked {
    const struct blobs *b;
    size_t chunk;
    atomic_ulong sum;
};

static void decode_chunk(void *ctx, size_t c)
{
    struct chunked *k = ctx;
    struct jpeg_decompress_struct ci;
    struct jerr je;
    ci.err = jpeg_std_error(&je.mgr);
    je.mgr.error_exit = on_error;
    je.mgr.emit_message = on_message;
    jpeg_create_decompress(&ci);
    struct scratch s = {NULL, 0, 0};
    size_t end = (c + 1) * k->chunk < k->b->n ? (c + 1) * k->chunk : k->b->n;
    for (size_t i = c * k->chunk; i < end; i++)
        (void)decode_one(&ci, &je, &k->b->b[i], 1, &s); /* failures: counted by the 1-thread loop */
    jpeg_destroy_decompress(&ci);
    free(s.row);
    atomic_fetch_add(&k->sum, s.sum);
}

static double chunked_decode_run(const struct blobs *b, size_t chunk, int threads,
                                 struct rate *best)
{
    struct chunked k = {b, chunk, 0};
    emoe_threads_set(threads);
    double t0 = now(), c0 = cpu_now();
    emoe_parallel_for((b->n + chunk - 1) / chunk, decode_chunk, &k);
    double wall = now() - t0;
    keep_best(best, b->n, wall, cpu_now() - c0);
    return wall;
}

/* The -j 2 scaling of one round is its -j 1 time over its -j 2 time, both measured a
 * moment apart; over the rounds, the median.  (The ratio of the two best rates can pair
 * a -j 1 run from a quiet minute with a -j 2 run from a busy one, or the reverse.) */
#define MAX_ROUNDS 64

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* emoe_prep_read of each split in turn on `threads` threads, once; keeps the best rate. */
static double prep_run(const char *path, const char *const *splits, int nsplits, int size,
                       int threads, struct rate *best, size_t *images)
{
    emoe_threads_set(threads);
    size_t total = 0;
    double t0 = now(), c0 = cpu_now();
    for (int s = 0; s < nsplits; s++) {
        struct emoe_prep_options o;
        emoe_prep_options_init(&o);
        o.size = size;
        o.split = splits[s];
        struct emoe_dataset *d = NULL;
        struct emoe_prep_result res;
        struct emoe_error err = {0};
        const char *src[1] = {path};
        if (emoe_prep_read(src, 1, &o, &d, &res, &err) != EMOE_OK) {
            fprintf(stderr, "bench_prep: %s\n", err.msg);
            exit(1);
        }
        total += res.images;
        emoe_dataset_free(d);
    }
    double wall = now() - t0;
    keep_best(best, total, wall, cpu_now() - c0);
    *images = total;
    return wall;
}

/* -j 1 and -j 2 in alternating rounds (this machine's speed drifts from one minute to
 * the next: measured one after the other, a drift would show as scaling); returns the
 * median scaling of the rounds. */
static double prep_rates(const char *path, const char *const *splits, int nsplits, int size,
                         int reps, struct rate *r1, struct rate *r2, size_t *images)
{
    *r1 = (struct rate){0, 0};
    *r2 = (struct rate){0, 0};
    double s[MAX_ROUNDS];
    for (int r = 0; r < reps; r++) {
        double t1 = prep_run(path, splits, nsplits, size, 1, r1, images);
        s[r] = t1 / prep_run(path, splits, nsplits, size, 2, r2, images);
    }
    return median(s, reps);
}

static void row(const char *what, int threads, size_t images, struct rate r, const char *target)
{
    printf("  %-44s %d %6zu %9.0f %9.0f %9.0f  %s\n", what, threads, images, r.wall,
           r.wall / threads, r.cpu, target);
}

/* The chunked plain decode at -j 1 and -j 2 in alternating rounds: its -j 2 row. */
static void plain_scaling_row(const char *what, const struct blobs *b, size_t chunk, int reps)
{
    struct rate p1 = {0, 0}, p2 = {0, 0};
    double s[MAX_ROUNDS];
    for (int r = 0; r < reps; r++) {
        double t1 = chunked_decode_run(b, chunk, 1, &p1);
        s[r] = t1 / chunked_decode_run(b, chunk, 2, &p2);
    }
    char t[128];
    snprintf(t, sizeof t, "(reference) scaling %.2fx (of the best), %.2fx (median of rounds); "
             "cpu eff. %.2f", p2.wall / p1.wall, median(s, reps), p2.cpu / p1.cpu);
    row(what, 2, b->n, p2, t);
}

static const char *verdict(int ok)
{
    return ok ? "PASS" : "MISS";
}

static void loadavg(const char *when)
{
    double l[3];
    FILE *f = fopen("/proc/loadavg", "r");
    if (!f)
        return;
    if (fscanf(f, "%lf %lf %lf", &l[0], &l[1], &l[2]) == 3)
        printf("load average %.2f %.2f %.2f %s\n", l[0], l[1], l[2], when);
    fclose(f);
}

int main(int argc, char **argv)
{
    const char *data = argc > 1 ? argv[1] : getenv("EMOE_SHARED_DATA");
    if (!data)
        data = "../shared/data";
    int reps = argc > 2 ? atoi(argv[2]) : 3;
    if (reps < 1)
        reps = 1;
    if (reps > MAX_ROUNDS / 5)
        reps = MAX_ROUNDS / 5;
    const char *only = argc > 3 ? argv[3] : "";
    int do_cifar = strcmp(only, "photos") != 0, do_photos = strcmp(only, "cifar") != 0;
    /* the environment every emoe tool runs in (tools/common.c): TZ=UTC when unset (with
     * TZ unset glibc re-stats /etc/localtime in every mktime, which libarchive's zip
     * reader calls for every member) and OpenBLAS without worker threads of its own */
    emoe_tool_init(argc, argv, "bench_prep");
    char cifar[4096], inet[4096];
    snprintf(cifar, sizeof cifar, "%s/cifar-10-jpg/cifar-10-jpg.zip", data);
    snprintf(inet, sizeof inet, "%s/imagenet-sample-images-subset/imagenet-sample.tar", data);
    if (access(cifar, R_OK) != 0 || access(inet, R_OK) != 0) {
        fprintf(stderr, "bench_prep: %s or %s is missing (give the shared data folder)\n",
                cifar, inet);
        return 1;
    }
    printf("bench_prep: %s\n%ld CPUs online; best of %d runs (x5 for the 200 photos)\n",
           emoe_version_details(), sysconf(_SC_NPROCESSORS_ONLN), reps);
    loadavg("at the start (other jobs share these CPUs)");
    const char *nt = getenv("OPENBLAS_NUM_THREADS");
    printf("as the emoe tools run: TZ=%s, OPENBLAS_NUM_THREADS=%s\n", getenv("TZ"),
           nt ? nt : "(unset)");
    printf("columns: images/s (wall clock), images/s per core (wall / j), images per CPU "
           "second (all threads)\nratios use the per-CPU-second figures (other jobs share "
           "the CPUs)\n\n");
    printf("  %-44s %s %6s %9s %9s %9s  %s\n", "workload", "j", "images", "img/s", "/core",
           "/cpu-s", "target (per core)");

    const char *both[2] = {"train", "test"}, *none[1] = {NULL};
    size_t n, bad = 0;
    struct blobs cb = {0}, ib = {0};
    char t[128];

    /* CIFAR-10 JPEG zip: all 60,000 images (train and test) at 32x32 */
    if (!do_cifar)
        goto photos;
    struct rate ar = {0, 0};
    double t0 = now(), c0 = cpu_now();
    if (load_jpegs(cifar, &cb) != 0)
        return 1;
    keep_best(&ar, cb.n, now() - t0, cpu_now() - c0);
    row("cifar zip: libarchive read of the members", 1, cb.n, ar, "(reference, one run)");
    struct rate c_full = plain_decode_rate(&cb, 1, reps, &bad);
    row("cifar zip: libjpeg-turbo decode, full", 1, cb.n, c_full, "(reference)");
    struct rate c8 = plain_decode_rate(&cb, 8, reps, &bad);
    row("cifar zip: libjpeg-turbo decode, 1/8 scale", 1, cb.n, c8, "(reference)");
    plain_scaling_row("cifar zip: libjpeg-turbo decode, full", &cb, 256, reps);
    free_blobs(&cb);
    struct rate c1, c2;
    double cs = prep_rates(cifar, both, 2, 0, reps, &c1, &c2, &n);
    snprintf(t, sizeof t, "%.2fx the full decode, >= 0.5x: %s", c1.cpu / c_full.cpu,
             verdict(c1.cpu >= 0.5 * c_full.cpu));
    row("cifar zip: emoe_prep_read, kept 32x32", 1, n, c1, t);
    snprintf(t, sizeof t, "scaling %.2fx (of the best), %.2fx (median), >= 1.8x: %s; "
             "cpu eff. %.2f", c2.wall / c1.wall, cs, verdict(cs >= 1.8), c2.cpu / c1.cpu);
    row("cifar zip: emoe_prep_read, kept 32x32", 2, n, c2, t);

photos:
    if (!do_photos)
        goto end;

    /* ImageNet sample tar: 200 photos to 224 and to 32 */
    if (load_jpegs(inet, &ib) != 0)
        return 1;
    int ireps = reps * 5; /* 200 images run quickly: more runs for a stable best */
    struct rate i_full = plain_decode_rate(&ib, 1, ireps, &bad);
    row("imagenet tar: libjpeg-turbo decode, full", 1, ib.n, i_full, "(reference)");
    struct rate i8 = plain_decode_rate(&ib, 8, ireps, &bad);
    row("imagenet tar: libjpeg-turbo decode, 1/8 scale", 1, ib.n, i8, "(reference)");
    plain_scaling_row("imagenet tar: libjpeg-turbo decode, full", &ib, 1, ireps);
    free_blobs(&ib);
    struct rate a1, a2, b1, b2;
    double as = prep_rates(inet, none, 1, 224, ireps, &a1, &a2, &n);
    snprintf(t, sizeof t, "%.2fx the full decode, >= 0.79x: %s", a1.cpu / i_full.cpu,
             verdict(a1.cpu >= 0.79 * i_full.cpu));
    row("imagenet tar: emoe_prep_read, to 224x224", 1, n, a1, t);
    snprintf(t, sizeof t, "scaling %.2fx (of the best), %.2fx (median), >= 1.8x: %s; "
             "cpu eff. %.2f", a2.wall / a1.wall, as, verdict(as >= 1.8), a2.cpu / a1.cpu);
    row("imagenet tar: emoe_prep_read, to 224x224", 2, n, a2, t);
    double bs = prep_rates(inet, none, 1, 32, ireps, &b1, &b2, &n);
    snprintf(t, sizeof t, "%.2fx the 1/8 decode, >= 0.9x: %s", b1.cpu / i8.cpu,
             verdict(b1.cpu >= 0.9 * i8.cpu));
    row("imagenet tar: emoe_prep_read, to 32x32", 1, n, b1, t);
    snprintf(t, sizeof t, "scaling %.2fx (of the best), %.2fx (median), >= 1.8x: %s; "
             "cpu eff. %.2f", b2.wall / b1.wall, bs, verdict(bs >= 1.8), b2.cpu / b1.cpu);
    row("imagenet tar: emoe_prep_read, to 32x32", 2, n, b2, t);
    if (bad)
        printf("\n(%zu JPEGs failed to decode in the plain loop)\n", bad);
end:
    printf("\n");
    loadavg("at the end");
    return 0;
}
