/*
 * threads.c: the one thread count shared by OpenBLAS and emoe's own loops, a
 * small persistent thread pool for emoe_parallel_for, and the choice of the
 * OpenBLAS kernel.
 *
 * OpenBLAS always runs with one thread (its pthread build then runs each call in
 * the calling thread); large matrix products are split over this pool instead
 * (gemm.c), so OpenBLAS's worker threads, which spin after each threaded call, never
 * compete with our loops.  (Its pthread build still starts them when it loads, and
 * they spin for about 0.1 s then; the tools start it with OPENBLAS_NUM_THREADS=1,
 * see tools/common.c.)
 */
#define _GNU_SOURCE
#include "config.h"
#include "internal.h"

#include <cblas.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_THREADS 256

static int g_threads = 0;                 /* 0: not set yet */
static _Thread_local int in_parallel = 0; /* nested loops run serially */

int emoe_cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

void emoe_blas_threads_apply(int n)
{
    if (openblas_get_num_threads() != n)
        openblas_set_num_threads(n);
}

int emoe_threads_set(int n)
{
    if (n <= 0)
        n = emoe_cpu_count();
    if (n > MAX_THREADS)
        n = MAX_THREADS;
    g_threads = n;
    emoe_blas_threads_apply(1);
    return n;
}

int emoe_threads_get(void)
{
    if (g_threads == 0)
        emoe_threads_set(0);
    return g_threads;
}

/* ------------------------------------------------------------ the pool */

struct pool {
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    int nworkers;           /* threads started */
    unsigned long gen;      /* bumped per loop */
    int active;             /* workers taking part in this loop */
    int running;            /* workers still in this loop */
    emoe_parallel_fn fn;
    void *ctx;
    size_t n;
    atomic_size_t next;
};
static struct pool P = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
                        PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, NULL, NULL, 0, 0};

static void run_items(void)
{
    size_t i;
    while ((i = atomic_fetch_add(&P.next, 1)) < P.n)
        P.fn(P.ctx, i);
}

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    unsigned long seen = 0;
    in_parallel = 1;
    pthread_mutex_lock(&P.mu);
    for (;;) {
        while (P.gen == seen || id >= P.active)
            {
                if (P.gen != seen)
                    seen = P.gen; /* not needed for this loop */
                pthread_cond_wait(&P.work, &P.mu);
            }
        seen = P.gen;
        pthread_mutex_unlock(&P.mu);
        run_items();
        pthread_mutex_lock(&P.mu);
        if (--P.running == 0)
            pthread_cond_signal(&P.done);
    }
    return NULL;
}

void emoe_parallel_for(size_t n, emoe_parallel_fn fn, void *ctx)
{
    int t = emoe_threads_get();
    if (n == 0)
        return;
    if (t <= 1 || n == 1 || in_parallel) {
        for (size_t i = 0; i < n; i++)
            fn(ctx, i);
        return;
    }
    int want = (size_t)t < n ? t - 1 : (int)n - 1; /* workers besides this thread */
    pthread_mutex_lock(&P.mu);
    while (P.nworkers < want) {
        pthread_t th;
        if (pthread_create(&th, NULL, worker, (void *)(intptr_t)P.nworkers) != 0)
            break;
        pthread_detach(th);
        P.nworkers++;
    }
    if (want > P.nworkers)
        want = P.nworkers;
    P.fn = fn;
    P.ctx = ctx;
    P.n = n;
    atomic_store(&P.next, 0);
    P.active = want;
    P.running = want;
    P.gen++;
    pthread_cond_broadcast(&P.work);
    pthread_mutex_unlock(&P.mu);

    in_parallel = 1;
    run_items();
    in_parallel = 0;

    pthread_mutex_lock(&P.mu);
    while (P.running > 0)
        pthread_cond_wait(&P.done, &P.mu);
    pthread_mutex_unlock(&P.mu);
}

int emoe_in_parallel(void)
{
    return in_parallel;
}

/* ------------------------------------------------------- BLAS kernel */

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
static int cpu_has_avx512(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    if (!(c & (1u << 27))) /* OSXSAVE */
        return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    (void)hi;
    /* XMM, YMM, opmask, ZMM_Hi256, Hi16_ZMM state enabled by the OS */
    if ((lo & 0xe6) != 0xe6)
        return 0;
    if (__get_cpuid_max(0, NULL) < 7)
        return 0;
    __cpuid_count(7, 0, a, b, c, d);
    const unsigned need = (1u << 16) | (1u << 17) | (1u << 28) | (1u << 30) | (1u << 31);
    return (b & need) == need; /* F, DQ, CD, BW, VL: what OpenBLAS's SkylakeX needs */
}
#else
static int cpu_has_avx512(void)
{
    return 0;
}
#endif

const char *emoe_blas_corename(void)
{
    const char *c = openblas_get_corename();
    return c ? c : "unknown";
}

const char *emoe_blas_preferred_coretype(void)
{
    if (getenv("OPENBLAS_CORETYPE"))
        return NULL; /* the user chose */
    /* Testing hook: pretend this kernel is the preferred one (must run on this CPU). */
    const char *test = getenv("EMOE_TEST_PREFER_CORETYPE");
    if (test && *test)
        return strcasecmp(emoe_blas_corename(), test) == 0 ? NULL : test;
    const char *cfg = openblas_get_config();
    if (!cfg || !strstr(cfg, "DYNAMIC_ARCH"))
        return NULL; /* the variable would have no effect */
    if (!cpu_has_avx512())
        return NULL;
    const char *core = emoe_blas_corename();
    static const char *const avx512_cores[] = {"SkylakeX", "Cooperlake", "SapphireRapids"};
    for (size_t i = 0; i < sizeof avx512_cores / sizeof *avx512_cores; i++)
        if (strcasecmp(core, avx512_cores[i]) == 0)
            return NULL;
    return "SkylakeX";
}
