/*
 * probe.c: few-shot linear probes on fixed features (METHOD.md section 6, the
 * protocol of the ViT paper's few-shot evaluation): seeded per-class selection of
 * the shots (lib/rng.c's Philox shuffle), whitening, a ridge regression on
 * 2*onehot - 1 targets with a constant bias feature (primal or dual form, solved by
 * LAPACK's Cholesky dposv through OpenBLAS), a nearest-class-mean alternative, and
 * the loop over shots and seeds.
 *
 * Dimension letters: n samples, D features per sample, D1 = D + 1 (with the bias
 * feature), K classes, m rows of a prediction chunk.  Everything is computed in
 * double; features come in as float.
 */
#include "config.h"
#include "internal.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* LAPACK (Fortran) from OpenBLAS.  The trailing size_t is the hidden length of the
 * character argument that gfortran-compiled LAPACK expects (as LAPACKE passes it). */
void dposv_(const char *uplo, const int *n, const int *nrhs, double *a, const int *lda,
            double *b, const int *ldb, int *info, size_t uplo_len);

#define PREDICT_CHUNK 256

/* ------------------------------------------------------------ selection */

static int check_labels(const int32_t *y, size_t n, int K, const char *what,
                        struct emoe_error *err)
{
    for (size_t i = 0; i < n; i++)
        if (y[i] < 0 || y[i] >= K)
            return emoe_error_set(err, EMOE_EINVAL, "%s label %ld of sample %zu is outside [0, %d)",
                                  what, (long)y[i], i, K);
    return EMOE_OK;
}

int emoe_fewshot_select(const int32_t *labels, size_t n, int K, int shots, uint64_t seed,
                        size_t *idx, struct emoe_error *err)
{
    if (K <= 0 || shots <= 0)
        return emoe_error_set(err, EMOE_EINVAL, "few-shot selection needs classes and shots "
                              "(got %d classes, %d shots)", K, shots);
    int rc = check_labels(labels, n, K, "training", err);
    if (rc != EMOE_OK)
        return rc;
    size_t *count = calloc((size_t)K, sizeof *count);
    size_t *start = calloc((size_t)K + 1, sizeof *start);
    size_t *order = n ? malloc(n * sizeof *order) : NULL;
    size_t *fill = calloc((size_t)K, sizeof *fill);
    if (!count || !start || !fill || (n && !order)) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory selecting %d shots", shots);
        goto done;
    }
    for (size_t i = 0; i < n; i++)
        count[labels[i]]++;
    for (int c = 0; c < K; c++) {
        if (count[c] < (size_t)shots) {
            rc = emoe_error_set(err, EMOE_ERANGE, "class %d has %zu training samples, fewer "
                                "than %d shots", c, count[c], shots);
            goto done;
        }
        start[c + 1] = start[c] + count[c];
    }
    /* indices of each class in file order, then that class's permutation */
    for (size_t i = 0; i < n; i++)
        order[start[labels[i]] + fill[labels[i]]++] = i;
    for (int c = 0; c < K; c++) {
        emoe_rng_shuffle(order + start[c], count[c], emoe_seed_derive(seed, EMOE_FEWSHOT_TAG),
                         (uint64_t)c);
        memcpy(idx + (size_t)c * (size_t)shots, order + start[c], (size_t)shots * sizeof *idx);
    }
done:
    free(count);
    free(start);
    free(order);
    free(fill);
    return rc;
}

/* ------------------------------------------------------------ probes */

void emoe_probe_free(struct emoe_probe *p)
{
    if (!p)
        return;
    free(p->mean);
    free(p->scale);
    free(p->w);
    free(p);
}

/* Whitened rows (with the bias feature when d1 > D) of x[rows] into out [m, d1]. */
static void whiten(double *out, int d1, const struct emoe_probe *p, const float *x,
                   const size_t *rows, size_t m)
{
    int D = p->dim;
    for (size_t i = 0; i < m; i++) {
        const float *xi = x + (rows ? rows[i] : i) * (size_t)D;
        double *o = out + i * (size_t)d1;
        for (int j = 0; j < D; j++)
            o[j] = ((double)xi[j] - p->mean[j]) * p->scale[j];
        if (d1 > D)
            o[D] = EMOE_PROBE_BIAS;
    }
}

static int check_finite(const float *x, const size_t *rows, size_t n, int D,
                        struct emoe_error *err)
{
    for (size_t i = 0; i < n; i++) {
        size_t r = rows ? rows[i] : i;
        for (int j = 0; j < D; j++)
            if (!isfinite(x[r * (size_t)D + j]))
                return emoe_error_set(err, EMOE_ENUMERIC, "feature %d of sample %zu is not "
                                      "finite", j, r);
    }
    return EMOE_OK;
}

/* Sizes of an n x cols double matrix, overflow-checked. */
static int matrix_bytes(size_t rows, size_t cols, size_t *bytes, struct emoe_error *err)
{
    size_t e;
    if (emoe_size_mul(&e, rows, cols) != EMOE_OK || emoe_size_mul(bytes, e, sizeof(double))
        || *bytes > (size_t)1 << 40)
        return emoe_error_set(err, EMOE_ERANGE, "probe matrix of %zu x %zu is too large", rows,
                              cols);
    if (rows > INT32_MAX || cols > INT32_MAX)
        return emoe_error_set(err, EMOE_ERANGE, "probe matrix of %zu x %zu exceeds LAPACK's "
                              "int sizes", rows, cols);
    return EMOE_OK;
}

/* Ridge: w [K, D1] = ((Xa^T Xa + lambda I)^-1 Xa^T Y)^T, or the dual form
 * Xa^T (Xa Xa^T + lambda I)^-1 Y when n < D1. */
static int fit_ridge(struct emoe_probe *p, const double *xa, /* [n, D1] */
                     const int32_t *y, const size_t *rows, size_t n, double lambda,
                     struct emoe_error *err)
{
    int D1 = p->dim + 1, K = p->nclasses, ni = (int)n;
    int dual = n < (size_t)D1;
    size_t g = dual ? n : (size_t)D1, bytes, ybytes;
    int rc = matrix_bytes(g, g, &bytes, err);
    if (rc == EMOE_OK)
        rc = matrix_bytes((size_t)K, n, &ybytes, err);
    if (rc != EMOE_OK)
        return rc;
    double *a = malloc(bytes), *yt = malloc(ybytes), *b = NULL;
    if (!a || !yt) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory fitting a ridge probe");
        goto done;
    }
    /* yt [K, n] = (2 onehot - 1)^T, which LAPACK sees as the column-major Y [n, K] */
    for (int k = 0; k < K; k++)
        for (size_t i = 0; i < n; i++)
            yt[(size_t)k * n + i] = y[rows ? rows[i] : i] == k ? 1.0 : -1.0;
    /* Row-major upper = column-major lower, hence uplo 'L' below. */
    if (dual)
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, ni, D1, 1.0, xa, D1, 0.0, a, ni);
    else
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, D1, ni, 1.0, xa, D1, 0.0, a, D1);
    int gi = (int)g, info = 0;
    for (size_t i = 0; i < g; i++)
        a[i * g + i] += lambda;
    if (dual) {
        /* z = (Xa Xa^T + lambda I)^-1 Y in yt; w [K, D1] = z^T Xa */
        dposv_("L", &gi, &K, a, &gi, yt, &gi, &info, 1);
        if (info == 0)
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, K, D1, ni, 1.0, yt, ni, xa,
                        D1, 0.0, p->w, D1);
    } else {
        /* b [K, D1] = Y^T Xa (column-major Xa^T Y), solved in place into w */
        b = p->w;
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, K, D1, ni, 1.0, yt, ni, xa, D1,
                    0.0, b, D1);
        dposv_("L", &gi, &K, a, &gi, b, &gi, &info, 1);
    }
    if (info != 0)
        rc = emoe_error_set(err, EMOE_ENUMERIC, "ridge system is not positive definite "
                            "(LAPACK dposv info %d; lambda %g)", info, lambda);
done:
    free(a);
    free(yt);
    return rc;
}

int emoe_probe_fit(enum emoe_probe_kind kind, const float *x, const int32_t *y,
                   const size_t *rows, size_t n, int D, int K, double lambda,
                   struct emoe_probe **out, struct emoe_error *err)
{
    *out = NULL;
    if (kind != EMOE_PROBE_RIDGE && kind != EMOE_PROBE_NCM)
        return emoe_error_set(err, EMOE_EINVAL, "unknown probe kind %d", (int)kind);
    if (n == 0 || D <= 0 || K <= 0 || D == INT32_MAX)
        return emoe_error_set(err, EMOE_EINVAL, "a probe needs samples, features and classes "
                              "(got %zu samples, %d features, %d classes)", n, D, K);
    if (kind == EMOE_PROBE_RIDGE && !(lambda > 0 && isfinite(lambda)))
        return emoe_error_set(err, EMOE_EINVAL, "ridge lambda %g is not a positive number",
                              lambda);
    for (size_t i = 0; i < n; i++) {
        int32_t c = y[rows ? rows[i] : i];
        if (c < 0 || c >= K)
            return emoe_error_set(err, EMOE_EINVAL, "training label %ld is outside [0, %d)",
                                  (long)c, K);
    }
    int rc = check_finite(x, rows, n, D, err);
    if (rc != EMOE_OK)
        return rc;
    int D1 = D + 1;
    size_t xbytes, wbytes;
    rc = matrix_bytes(n, (size_t)D1, &xbytes, err);
    if (rc == EMOE_OK)
        rc = matrix_bytes((size_t)K, (size_t)D1, &wbytes, err);
    if (rc != EMOE_OK)
        return rc;
    struct emoe_probe *p = calloc(1, sizeof *p);
    double *xa = malloc(xbytes);
    if (p) {
        p->mean = calloc((size_t)D, sizeof(double));
        p->scale = calloc((size_t)D, sizeof(double));
        p->w = calloc((size_t)K * (size_t)D1, sizeof(double));
    }
    if (!p || !xa || !p->mean || !p->scale || !p->w) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory fitting a probe on %zu x %d "
                            "features", n, D);
        goto fail;
    }
    p->kind = kind;
    p->dim = D;
    p->nclasses = K;
    /* mean and population std of each feature over the shots (two passes) */
    for (size_t i = 0; i < n; i++) {
        const float *xi = x + (rows ? rows[i] : i) * (size_t)D;
        for (int j = 0; j < D; j++)
            p->mean[j] += xi[j];
    }
    for (int j = 0; j < D; j++)
        p->mean[j] /= (double)n;
    for (size_t i = 0; i < n; i++) {
        const float *xi = x + (rows ? rows[i] : i) * (size_t)D;
        for (int j = 0; j < D; j++) {
            double d = xi[j] - p->mean[j];
            p->scale[j] += d * d;
        }
    }
    for (int j = 0; j < D; j++)
        p->scale[j] = 1.0 / (sqrt(p->scale[j] / (double)n) + EMOE_PROBE_STD_EPS);
    whiten(xa, D1, p, x, rows, n);
    if (kind == EMOE_PROBE_RIDGE) {
        rc = fit_ridge(p, xa, y, rows, n, lambda, err);
    } else {
        /* class means of the whitened features (the bias column is left out) */
        size_t *cnt = calloc((size_t)K, sizeof *cnt);
        if (!cnt) {
            rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory fitting a probe");
            goto fail;
        }
        for (size_t i = 0; i < n; i++) {
            int c = y[rows ? rows[i] : i];
            cnt[c]++;
            for (int j = 0; j < D; j++)
                p->w[(size_t)c * (size_t)D1 + j] += xa[i * (size_t)D1 + j];
        }
        for (int c = 0; c < K && rc == EMOE_OK; c++) {
            if (cnt[c] == 0)
                rc = emoe_error_set(err, EMOE_EINVAL, "class %d has no training sample", c);
            for (int j = 0; j < D && cnt[c]; j++)
                p->w[(size_t)c * (size_t)D1 + j] /= (double)cnt[c];
        }
        free(cnt);
    }
    if (rc != EMOE_OK)
        goto fail;
    free(xa);
    *out = p;
    return EMOE_OK;
fail:
    free(xa);
    emoe_probe_free(p);
    return rc;
}

int emoe_probe_predict(const struct emoe_probe *p, const float *x, size_t n, int32_t *pred,
                       struct emoe_error *err)
{
    int D = p->dim, D1 = D + 1, K = p->nclasses;
    int rc = check_finite(x, NULL, n, D, err);
    if (rc != EMOE_OK)
        return rc;
    double *xa = malloc((size_t)PREDICT_CHUNK * (size_t)D1 * sizeof *xa);
    double *s = malloc((size_t)PREDICT_CHUNK * (size_t)K * sizeof *s);
    double *norm = calloc((size_t)K, sizeof *norm);
    if (!xa || !s || !norm) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory predicting with a probe");
        goto done;
    }
    if (p->kind == EMOE_PROBE_NCM)
        for (int c = 0; c < K; c++)
            for (int j = 0; j < D; j++)
                norm[c] += p->w[(size_t)c * (size_t)D1 + j] * p->w[(size_t)c * (size_t)D1 + j];
    for (size_t i0 = 0; i0 < n; i0 += PREDICT_CHUNK) {
        int m = (int)(n - i0 < PREDICT_CHUNK ? n - i0 : PREDICT_CHUNK);
        whiten(xa, D1, p, x + i0 * (size_t)D, NULL, (size_t)m);
        if (p->kind == EMOE_PROBE_NCM) /* the bias feature meets a zero mean entry */
            for (int i = 0; i < m; i++)
                xa[(size_t)i * (size_t)D1 + D] = 0.0;
        /* s [m, K] = xa w^T: ridge logits, or x . mean_c for NCM */
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, K, D1, 1.0, xa, D1, p->w, D1,
                    0.0, s, K);
        for (int i = 0; i < m; i++) {
            const double *si = s + (size_t)i * (size_t)K;
            int best = 0;
            double bv = -INFINITY;
            for (int c = 0; c < K; c++) {
                /* NCM: nearest mean = largest 2 x.m_c - |m_c|^2 */
                double v = p->kind == EMOE_PROBE_NCM ? 2.0 * si[c] - norm[c] : si[c];
                if (v > bv) {
                    bv = v;
                    best = c;
                }
            }
            pred[i0 + (size_t)i] = best;
        }
    }
done:
    free(xa);
    free(s);
    free(norm);
    return rc;
}

/* ------------------------------------------------------------ the protocol */

void emoe_fewshot_options_init(struct emoe_fewshot_options *o)
{
    static const int default_shots[] = {1, 5, 10, 25};
    memset(o, 0, sizeof *o);
    o->shots = default_shots;
    o->nshots = 4;
    o->seeds = 3;
    o->lambda = EMOE_PROBE_LAMBDA;
    o->kind = EMOE_PROBE_RIDGE;
}

int emoe_fewshot_run(const struct emoe_fewshot_options *o, const float *train_x,
                     const int32_t *train_y, size_t ntrain, const float *test_x,
                     const int32_t *test_y, size_t ntest, int D, int K, double *acc,
                     struct emoe_error *err)
{
    if (o->nshots <= 0 || o->seeds <= 0)
        return emoe_error_set(err, EMOE_EINVAL, "few-shot needs shot counts and seeds (got %d "
                              "and %d)", o->nshots, o->seeds);
    if (ntest == 0)
        return emoe_error_set(err, EMOE_EINVAL, "the test split is empty");
    int rc = check_labels(test_y, ntest, K, "test", err);
    if (rc != EMOE_OK)
        return rc;
    int maxshots = 0;
    for (int s = 0; s < o->nshots; s++) {
        if (o->shots[s] <= 0)
            return emoe_error_set(err, EMOE_EINVAL, "shot count %d is not positive",
                                  o->shots[s]);
        if (o->shots[s] > maxshots)
            maxshots = o->shots[s];
    }
    size_t nidx;
    if (emoe_size_mul(&nidx, (size_t)K, (size_t)maxshots) != EMOE_OK || nidx > ntrain)
        return emoe_error_set(err, EMOE_ERANGE, "%d shots of %d classes need more than the "
                              "%zu training samples", maxshots, K, ntrain);
    size_t *idx = malloc(nidx * sizeof *idx);
    int32_t *pred = malloc(ntest * sizeof *pred);
    if (!idx || !pred) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory for a few-shot run");
        goto done;
    }
    for (int s = 0; s < o->nshots && rc == EMOE_OK; s++) {
        for (int seed = 0; seed < o->seeds && rc == EMOE_OK; seed++) {
            int shots = o->shots[s];
            rc = emoe_fewshot_select(train_y, ntrain, K, shots, (uint64_t)seed, idx, err);
            struct emoe_probe *p = NULL;
            if (rc == EMOE_OK)
                rc = emoe_probe_fit(o->kind, train_x, train_y, idx, (size_t)K * (size_t)shots,
                                    D, K, o->lambda, &p, err);
            if (rc == EMOE_OK)
                rc = emoe_probe_predict(p, test_x, ntest, pred, err);
            if (rc == EMOE_OK) {
                size_t correct = 0;
                for (size_t i = 0; i < ntest; i++)
                    correct += pred[i] == test_y[i];
                acc[(size_t)s * (size_t)o->seeds + (size_t)seed] =
                    (double)correct / (double)ntest;
            }
            emoe_probe_free(p);
            if (rc == EMOE_OK && o->progress)
                o->progress(o->ctx, shots, seed);
        }
    }
done:
    free(idx);
    free(pred);
    return rc;
}
