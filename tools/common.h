/*
 * common.h: what every emoe-* tool shares (not installed): program name, error
 * and usage reporting with the exit codes 0 ok / 1 failure / 2 usage, checked
 * number parsing, --version, a progress bar on terminals, and the OpenBLAS kernel.
 */
#ifndef EMOE_TOOL_COMMON_H
#define EMOE_TOOL_COMMON_H

#include "emoe.h"

#include <getopt.h>
#include <stdint.h>

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

/* Options every tool takes; tools add their own to the table. */
enum {
    OPT_HELP = 'h',
    OPT_QUIET = 'q',
    OPT_THREADS = 'j',
    OPT_VERSION = 0x100, /* long-only options start here */
    OPT_TOOL_BASE = 0x200,
};
#define EMOE_COMMON_LONGOPTS                                                                   \
    {"help", no_argument, NULL, OPT_HELP}, {"version", no_argument, NULL, OPT_VERSION},        \
        {"quiet", no_argument, NULL, OPT_QUIET}, {"threads", required_argument, NULL, OPT_THREADS}
#define EMOE_COMMON_SHORTOPTS "hqj:"

extern const char *emoe_progname;
extern int emoe_quiet;

/*
 * First call in main: sets the program name and TZ (UTC when unset), and runs the
 * program again (once) with what OpenBLAS should have read when it loaded:
 * OPENBLAS_CORETYPE when it picked a slow kernel for this CPU (see
 * emoe_blas_preferred_coretype; a user's setting is left alone), and
 * OPENBLAS_NUM_THREADS=1 when it started worker threads, which emoe never uses.
 */
void emoe_tool_init(int argc, char **argv, const char *name);

/* Handles -h, --version, -q, -j; returns 1 if opt was one of them.  usage is called
 * for --help (to stdout, exit 0). */
int emoe_tool_common_option(int opt, const char *arg, void (*usage)(void));

/* "emoe-x: message" on stderr and exit 1. */
_Noreturn void emoe_tool_fail(const struct emoe_error *err);
_Noreturn void emoe_tool_die(const char *fmt, ...) EMOE_PRINTF(1, 2);
/* "emoe-x: message" on stderr (a warning, unless --quiet). */
void emoe_tool_warn(const char *fmt, ...) EMOE_PRINTF(1, 2);
/* "emoe-x: message" + "Try 'emoe-x --help' ..." on stderr and exit 2. */
_Noreturn void emoe_tool_usage_error(const char *fmt, ...) EMOE_PRINTF(1, 2);

/* Checked number parsing for option values; a bad value is a usage error naming the
 * option ("--batch: 'abc' is not an integer"). */
long emoe_tool_parse_long(const char *opt, const char *arg, long min, long max);
double emoe_tool_parse_double(const char *opt, const char *arg, double min, double max);

/* Progress on stderr, only when stderr is a terminal and not --quiet. */
struct emoe_progress {
    int enabled;
    const char *label;
    uint64_t total;
    double start, last;
};
void emoe_progress_start(struct emoe_progress *p, const char *label, uint64_t total);
/* extra: optional text shown after the bar (may be NULL). */
void emoe_progress_update(struct emoe_progress *p, uint64_t done, const char *extra);
void emoe_progress_end(struct emoe_progress *p);
/* A line printed above the bar (only when the bar is shown); the bar is redrawn at
 * the next update. */
void emoe_progress_note(struct emoe_progress *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

double emoe_tool_now(void); /* monotonic seconds */

#endif
