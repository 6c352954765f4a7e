/*
 * bench_npy_io.c: .npy write and read throughput of libemoe against plain
 * write()/read() of the same bytes, in the same process and folder.
 *
 *   bench/bench_npy_io [DIR [MIB [REPS]]]     (defaults: $TMPDIR or /tmp, 1024, 1)
 *
 * Write: emoe_npy_write (atomic: temporary, fsync, rename, fsync of the folder)
 * against open/write/fsync/close of the same header and data, so both are durable;
 * each starts after sync() and their order alternates between runs.
 * Read: emoe_npy_read (a memory mapping for a file this large) against open/read
 * into a fresh buffer; both then sum every float so every page is really touched.
 * For reference, emoe_npy_read_stream on the same file shows the copying path (a
 * fresh tensor filled by fread, as for small files, pipes and byte-swapped data).
 * Both files were just written, so reads come from the page cache in both cases.
 * The best of REPS runs is reported; the files are deleted at the end.
 */
#include "config.h"
#include "emoe.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_npy_io: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double sum_floats(const float *p, size_t n)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += p[i];
        s1 += p[i + 1];
        s2 += p[i + 2];
        s3 += p[i + 3];
    }
    for (; i < n; i++)
        s0 += p[i];
    return s0 + s1 + s2 + s3;
}

static void write_plain(const char *path, const char *hdr, size_t hl, const void *data, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (fd < 0)
        die(path);
    const char *parts[2] = {hdr, data};
    size_t sizes[2] = {hl, n};
    for (int k = 0; k < 2; k++)
        for (size_t off = 0; off < sizes[k];) {
            ssize_t w = write(fd, parts[k] + off, sizes[k] - off);
            if (w <= 0)
                die("write");
            off += (size_t)w;
        }
    if (fsync(fd) != 0 || close(fd) != 0)
        die("fsync");
}

static double read_plain(const char *path, size_t total, size_t hl)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        die(path);
    char *buf = malloc(total);
    if (!buf)
        die("malloc");
    for (size_t off = 0; off < total;) {
        ssize_t r = read(fd, buf + off, total - off);
        if (r <= 0)
            die("read");
        off += (size_t)r;
    }
    close(fd);
    double s = sum_floats((const float *)(buf + hl), (total - hl) / 4);
    free(buf);
    return s;
}

int main(int argc, char **argv)
{
    const char *tmp = getenv("TMPDIR");
    const char *dir = argc > 1 ? argv[1] : tmp && *tmp ? tmp : "/tmp";
    long mib = argc > 2 ? strtol(argv[2], NULL, 10) : 1024;
    int reps = argc > 3 ? atoi(argv[3]) : 1;
    if (mib <= 0 || reps <= 0) {
        fprintf(stderr, "usage: bench_npy_io [DIR [MIB [REPS]]]\n");
        return 2;
    }
    struct emoe_error err = {0};
    struct emoe_tensor *t;
    int64_t shape[2] = {mib * 1024, 256}; /* mib MiB of float32 */
    if (emoe_tensor_new(EMOE_F32, 2, shape, &t, &err) != EMOE_OK) {
        fprintf(stderr, "bench_npy_io: %s\n", err.msg);
        return 1;
    }
    float *x = t->data;
    for (size_t i = 0; i < t->nelem; i++)
        x[i] = (float)(i % 1000) * 0.001f;
    double want = sum_floats(x, t->nelem);
    char hdr[256];
    size_t hl = emoe_npy_header(t, hdr, sizeof hdr);
    size_t total = hl + t->nbytes;
    char plain[4096], ours[4096];
    snprintf(plain, sizeof plain, "%s/bench_npy_plain.%ld.npy", dir, (long)getpid());
    snprintf(ours, sizeof ours, "%s/bench_npy_emoe.%ld.npy", dir, (long)getpid());

    double best_wp = 1e30, best_we = 1e30, best_rp = 1e30, best_re = 1e30, best_rs = 1e30;
    for (int r = 0; r < reps; r++) {
        /* Writes are timed one after the other from a settled disk (sync first), the
         * order alternating between runs, old files removed first. */
        double wp = 0, we = 0;
        unlink(plain);
        unlink(ours);
        for (int k = 0; k < 2; k++) {
            sync();
            double a0 = now();
            if ((k + r) % 2 == 0) {
                write_plain(plain, hdr, hl, t->data, t->nbytes);
                wp = now() - a0;
            } else {
                if (emoe_npy_write(ours, t, &err) != EMOE_OK) {
                    fprintf(stderr, "bench_npy_io: %s\n", err.msg);
                    return 1;
                }
                we = now() - a0;
            }
        }
        double t2 = now();
        double s = read_plain(plain, total, hl);
        double t3 = now();
        struct emoe_tensor *rt;
        if (emoe_npy_read(ours, &rt, &err) != EMOE_OK) {
            fprintf(stderr, "bench_npy_io: %s\n", err.msg);
            return 1;
        }
        double s2 = sum_floats(rt->data, rt->nelem);
        emoe_tensor_free(rt);
        double t4 = now();
        FILE *f = fopen(ours, "rb");
        if (!f)
            die(ours);
        if (emoe_npy_read_stream(f, ours, &rt, &err) != EMOE_OK) {
            fprintf(stderr, "bench_npy_io: %s\n", err.msg);
            return 1;
        }
        fclose(f);
        double s3 = sum_floats(rt->data, rt->nelem);
        emoe_tensor_free(rt);
        double t5 = now();
        if (s != want || s2 != want || s3 != want) {
            fprintf(stderr, "bench_npy_io: checksum mismatch\n");
            return 1;
        }
        best_wp = wp < best_wp ? wp : best_wp;
        best_we = we < best_we ? we : best_we;
        best_rp = t3 - t2 < best_rp ? t3 - t2 : best_rp;
        best_re = t4 - t3 < best_re ? t4 - t3 : best_re;
        best_rs = t5 - t4 < best_rs ? t5 - t4 : best_rs;
    }
    unlink(plain);
    unlink(ours);
    double mb = (double)total / 1e6;
    printf("bench_npy_io: %.0f MB float32 .npy in %s, best of %d\n", mb, dir, reps);
    printf("write  plain write()+fsync  %8.1f MB/s   emoe_npy_write (atomic) %8.1f MB/s"
           "   ratio %.2f\n", mb / best_wp, mb / best_we, best_wp / best_we);
    printf("read   plain read()+sum     %8.1f MB/s   emoe_npy_read+sum       %8.1f MB/s"
           "   ratio %.2f\n", mb / best_rp, mb / best_re, best_rp / best_re);
    printf("read   (copying path: emoe_npy_read_stream+sum %8.1f MB/s, ratio %.2f to plain)\n",
           mb / best_rs, best_rp / best_rs);
    printf("(reads from the page cache; both sum every float so every page is touched;"
           " emoe_npy_read maps files >= 16 MiB)\n");
    emoe_tensor_free(t);
    return 0;
}
