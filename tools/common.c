/*
 * common.c: the conventions every emoe-* tool follows (see common.h).
 */
#include "config.h"
#include "common.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *emoe_progname = "emoe";
int emoe_quiet = 0;

/* Threads this process runs (Linux's /proc/self/status), or 0 when it cannot tell. */
static long process_threads(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return 0;
    char line[256];
    long n = 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "Threads:", 8) == 0) {
            n = strtol(line + 8, NULL, 10);
            break;
        }
    fclose(f);
    return n;
}

void emoe_tool_init(int argc, char **argv, const char *name)
{
    (void)argc;
    emoe_progname = name;
    /* getopt_long reports bad options under argv[0]: make that "emoe-x", not the
     * path or libtool's wrapper name. */
    if (argv && argv[0])
        argv[0] = (char *)name;
    /* libarchive converts every zip member's time with mktime(), and glibc then
     * re-reads /etc/localtime each time when TZ is unset (about a quarter of the
     * time spent reading the CIFAR-10 zip).  The tools print no local times. */
    setenv("TZ", "UTC", 0);
    /* OpenBLAS reads its environment when it is loaded, before main: what it should
     * have read is set here and the program run again, once for both reasons. */
    int again = 0, set_core = 0;
    const char *core = emoe_blas_preferred_coretype();
    if (core && !getenv("EMOE_BLAS_CORETYPE_AUTO")) {
        /* It chose a slow kernel.  EMOE_BLAS_CORETYPE_AUTO records that emoe (not the
         * user) chose the new one, and guards against a loop if it has no effect. */
        setenv("OPENBLAS_CORETYPE", core, 1);
        setenv("EMOE_BLAS_CORETYPE_AUTO", core, 1);
        again = set_core = 1;
    }
    /* At this point only OpenBLAS can have started threads: its pthread build starts
     * one per further CPU unless OPENBLAS_NUM_THREADS is 1.  emoe never gives them
     * work (it runs OpenBLAS on one thread, see emoe_threads_set), yet each spins for
     * about 0.1 s of CPU after the load, on the CPUs that -j's threads use. */
    const char *nt = getenv("OPENBLAS_NUM_THREADS");
    char *user_nt = nt ? strdup(nt) : NULL;
    if ((!nt || strcmp(nt, "1") != 0) && process_threads() > 1) {
        setenv("OPENBLAS_NUM_THREADS", "1", 1);
        again = 1;
    }
    if (again) {
        execv("/proc/self/exe", argv);
        /* execv failed: carry on as loaded (slower) rather than fail. */
        if (set_core)
            unsetenv("OPENBLAS_CORETYPE");
        if (user_nt)
            setenv("OPENBLAS_NUM_THREADS", user_nt, 1);
        else
            unsetenv("OPENBLAS_NUM_THREADS");
    }
    free(user_nt);
}

static void vmsg(const char *fmt, va_list ap)
{
    fflush(stdout);
    fprintf(stderr, "%s: ", emoe_progname);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

_Noreturn void emoe_tool_fail(const struct emoe_error *err)
{
    fflush(stdout);
    fprintf(stderr, "%s: %s\n", emoe_progname,
            err && err->msg[0] ? err->msg : emoe_strerror(err ? err->code : EMOE_EIO));
    exit(EXIT_FAIL);
}

_Noreturn void emoe_tool_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmsg(fmt, ap);
    va_end(ap);
    exit(EXIT_FAIL);
}

void emoe_tool_warn(const char *fmt, ...)
{
    if (emoe_quiet)
        return;
    va_list ap;
    va_start(ap, fmt);
    vmsg(fmt, ap);
    va_end(ap);
}

_Noreturn void emoe_tool_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmsg(fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try '%s --help' for more information.\n", emoe_progname);
    exit(EXIT_USAGE);
}

int emoe_tool_common_option(int opt, const char *arg, void (*usage)(void))
{
    switch (opt) {
    case OPT_HELP:
        usage();
        if (fflush(stdout) != 0 || ferror(stdout))
            exit(EXIT_FAIL);
        exit(EXIT_OK);
    case OPT_VERSION:
        printf("%s (emoe) %s\n%s\n", emoe_progname, emoe_version(), emoe_version_details());
        if (fflush(stdout) != 0 || ferror(stdout))
            exit(EXIT_FAIL);
        exit(EXIT_OK);
    case OPT_QUIET:
        emoe_quiet = 1;
        return 1;
    case OPT_THREADS:
        emoe_threads_set((int)emoe_tool_parse_long("--threads", arg, 0, 1024));
        return 1;
    case '?':
        /* getopt_long already said what was wrong */
        fprintf(stderr, "Try '%s --help' for more information.\n", emoe_progname);
        exit(EXIT_USAGE);
    default:
        return 0;
    }
}

long emoe_tool_parse_long(const char *opt, const char *arg, long min, long max)
{
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (end == arg || *end != 0)
        emoe_tool_usage_error("%s: '%s' is not an integer", opt, arg);
    if (errno == ERANGE || v < min || v > max)
        emoe_tool_usage_error("%s: %s is outside %ld..%ld", opt, arg, min, max);
    return v;
}

double emoe_tool_parse_double(const char *opt, const char *arg, double min, double max)
{
    char *end;
    errno = 0;
    double v = strtod(arg, &end);
    if (end == arg || *end != 0)
        emoe_tool_usage_error("%s: '%s' is not a number", opt, arg);
    if (errno == ERANGE || !isfinite(v) || v < min || v > max)
        emoe_tool_usage_error("%s: %s is outside %g..%g", opt, arg, min, max);
    return v;
}

double emoe_tool_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void emoe_progress_start(struct emoe_progress *p, const char *label, uint64_t total)
{
    memset(p, 0, sizeof *p);
    p->enabled = !emoe_quiet && isatty(STDERR_FILENO);
    p->label = label;
    p->total = total;
    p->start = emoe_tool_now();
}

void emoe_progress_update(struct emoe_progress *p, uint64_t done, const char *extra)
{
    if (!p->enabled)
        return;
    double t = emoe_tool_now();
    if (t - p->last < 0.1 && (p->total == 0 || done < p->total))
        return;
    p->last = t;
    if (p->total == 0) { /* unknown total: no bar; the caller's text or the count */
        if (extra)
            fprintf(stderr, "\r%s %s\033[K", p->label, extra);
        else
            fprintf(stderr, "\r%s %llu\033[K", p->label, (unsigned long long)done);
        return;
    }
    double frac = p->total ? (double)done / (double)p->total : 0;
    if (frac > 1)
        frac = 1;
    int width = 30, fill = (int)(frac * width);
    char bar[64];
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[width] = 0;
    double el = t - p->start;
    double left = frac > 0 ? el * (1 - frac) / frac : 0;
    fprintf(stderr, "\r%s [%s] %3.0f%% %s%s eta %02d:%02d\033[K", p->label, bar, frac * 100,
            extra ? extra : "", extra ? " " : "", (int)left / 60, (int)left % 60);
}

void emoe_progress_note(struct emoe_progress *p, const char *fmt, ...)
{
    if (!p->enabled)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "\r\033[K");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    p->last = 0; /* redraw the bar at the next update */
}

void emoe_progress_end(struct emoe_progress *p)
{
    if (p->enabled)
        fprintf(stderr, "\r\033[K");
}
