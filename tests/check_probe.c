/*
 * check_probe.c: unit tests of lib/probe.c: the ridge and nearest-class-mean
 * probes against numpy reference computations (tests/gen_fixtures_viz.py), the
 * seeded few-shot selection, and the protocol loop.
 */
#include "config.h"
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct probe_case {
    int D, K;
    size_t ntrain, ntest, nidx;
    double lambda;
    float *xtrain, *xtest;
    int32_t *ytrain, *ytest, *pred;
    size_t *idx;
    double *w;
    long correct;
};

static void read_floats(FILE *f, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(fscanf(f, "%f", &out[i]), 1);
}

static void read_ints(FILE *f, int32_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(fscanf(f, "%d", &out[i]), 1);
}

static void load_case(const char *name, struct probe_case *c)
{
    FILE *f = fopen(tu_fixture(name), "r");
    ck_assert_msg(f != NULL, "cannot open fixture %s", name);
    ck_assert_int_eq(fscanf(f, "%d %d %zu %zu %zu %lf", &c->D, &c->K, &c->ntrain, &c->ntest,
                            &c->nidx, &c->lambda), 6);
    size_t D = (size_t)c->D, W = (size_t)c->K * (D + 1);
    c->xtrain = malloc(c->ntrain * D * sizeof(float));
    c->xtest = malloc(c->ntest * D * sizeof(float));
    c->ytrain = malloc(c->ntrain * sizeof(int32_t));
    c->ytest = malloc(c->ntest * sizeof(int32_t));
    c->pred = malloc(c->ntest * sizeof(int32_t));
    c->idx = malloc(c->nidx * sizeof(size_t));
    c->w = malloc(W * sizeof(double));
    read_floats(f, c->xtrain, c->ntrain * D);
    read_ints(f, c->ytrain, c->ntrain);
    for (size_t i = 0; i < c->nidx; i++)
        ck_assert_int_eq(fscanf(f, "%zu", &c->idx[i]), 1);
    read_floats(f, c->xtest, c->ntest * D);
    read_ints(f, c->ytest, c->ntest);
    for (size_t i = 0; i < W; i++)
        ck_assert_int_eq(fscanf(f, "%lf", &c->w[i]), 1);
    read_ints(f, c->pred, c->ntest);
    ck_assert_int_eq(fscanf(f, "%ld", &c->correct), 1);
    fclose(f);
}

static void free_case(struct probe_case *c)
{
    free(c->xtrain);
    free(c->xtest);
    free(c->ytrain);
    free(c->ytest);
    free(c->pred);
    free(c->idx);
    free(c->w);
}

/* Fit on the fixture's indices; weights within 1e-4 (relative to the largest), the
 * same predictions and the same number correct. */
static void check_case(const char *name, enum emoe_probe_kind kind)
{
    struct probe_case c;
    struct emoe_error err = {0};
    struct emoe_probe *p = NULL;
    load_case(name, &c);
    ck_assert_int_eq(emoe_probe_fit(kind, c.xtrain, c.ytrain, c.idx, c.nidx, c.D, c.K,
                                    c.lambda, &p, &err), EMOE_OK);
    size_t W = (size_t)c.K * (size_t)(c.D + 1);
    double wmax = 0;
    for (size_t i = 0; i < W; i++)
        wmax = fmax(wmax, fabs(c.w[i]));
    ck_assert(wmax > 0);
    for (size_t i = 0; i < W; i++)
        ck_assert_msg(fabs(p->w[i] - c.w[i]) <= 1e-4 * wmax, "%s: w[%zu] = %.9g, want %.9g",
                      name, i, p->w[i], c.w[i]);
    int32_t *pred = malloc(c.ntest * sizeof *pred);
    ck_assert_int_eq(emoe_probe_predict(p, c.xtest, c.ntest, pred, &err), EMOE_OK);
    long correct = 0;
    for (size_t i = 0; i < c.ntest; i++) {
        ck_assert_msg(pred[i] == c.pred[i], "%s: prediction %zu is %d, want %d", name, i,
                      pred[i], c.pred[i]);
        correct += pred[i] == c.ytest[i];
    }
    ck_assert_int_eq(correct, c.correct);
    free(pred);
    emoe_probe_free(p);
    free_case(&c);
}

START_TEST(test_probe_ridge_primal_matches_numpy)
{
    check_case("viz_probe_primal.txt", EMOE_PROBE_RIDGE);
}
END_TEST

START_TEST(test_probe_ridge_dual_matches_numpy)
{
    check_case("viz_probe_dual.txt", EMOE_PROBE_RIDGE);
}
END_TEST

START_TEST(test_probe_ncm_matches_numpy)
{
    check_case("viz_probe_ncm.txt", EMOE_PROBE_NCM);
}
END_TEST

/* The selection equals the fixture's (Philox re-implemented in Python), and a
 * larger shot count extends the smaller one. */
START_TEST(test_fewshot_select_matches_reference)
{
    FILE *f = fopen(tu_fixture("viz_fewshot_select.txt"), "r");
    ck_assert(f != NULL);
    size_t n;
    int K;
    ck_assert_int_eq(fscanf(f, "%zu %d", &n, &K), 2);
    int32_t *labels = malloc(n * sizeof *labels);
    read_ints(f, labels, n);
    size_t idx[64], one[3][4];
    int shots, seed, rows = 0;
    struct emoe_error err = {0};
    while (fscanf(f, "%d %d", &shots, &seed) == 2) {
        ck_assert_int_le(shots * K, 64);
        ck_assert_int_eq(emoe_fewshot_select(labels, n, K, shots, (uint64_t)seed, idx, &err),
                         EMOE_OK);
        for (int i = 0; i < shots * K; i++) {
            size_t want;
            ck_assert_int_eq(fscanf(f, "%zu", &want), 1);
            ck_assert_msg(idx[i] == want, "shots %d seed %d: idx[%d] = %zu, want %zu", shots,
                          seed, i, idx[i], want);
            ck_assert_int_eq(labels[idx[i]], i / shots);
        }
        if (shots == 1)
            for (int c = 0; c < K; c++)
                one[seed][c] = idx[c];
        else
            for (int c = 0; c < K; c++)
                ck_assert_uint_eq(idx[c * shots], one[seed][c]);
        rows++;
    }
    ck_assert_int_eq(rows, 6);
    /* different seeds pick different shots */
    ck_assert(memcmp(one[0], one[1], sizeof one[0]) != 0);
    fclose(f);
    free(labels);
}
END_TEST

START_TEST(test_fewshot_select_rejects_too_few)
{
    int32_t labels[6] = {0, 1, 0, 1, 2, 0};
    size_t idx[6];
    struct emoe_error err = {0};
    tu_assert_error(emoe_fewshot_select(labels, 6, 3, 2, 0, idx, &err), err, EMOE_ERANGE,
                    "class 2 has 1 training samples, fewer than 2 shots");
    labels[3] = 7;
    tu_assert_error(emoe_fewshot_select(labels, 6, 3, 1, 0, idx, &err), err, EMOE_EINVAL,
                    "training label 7 of sample 3 is outside [0, 3)");
}
END_TEST

START_TEST(test_probe_rejects_bad_input)
{
    float x[4] = {1, 2, NAN, 4};
    int32_t y[2] = {0, 1};
    struct emoe_probe *p = (struct emoe_probe *)&p;
    struct emoe_error err = {0};
    tu_assert_error(emoe_probe_fit(EMOE_PROBE_RIDGE, x, y, NULL, 2, 2, 2, 1.0, &p, &err), err,
                    EMOE_ENUMERIC, "feature 0 of sample 1 is not finite");
    ck_assert_ptr_null(p);
    x[2] = 3;
    tu_assert_error(emoe_probe_fit(EMOE_PROBE_RIDGE, x, y, NULL, 2, 2, 2, -1.0, &p, &err), err,
                    EMOE_EINVAL, "lambda");
    tu_assert_error(emoe_probe_fit(EMOE_PROBE_RIDGE, x, y, NULL, 2, 2, 1, 1.0, &p, &err), err,
                    EMOE_EINVAL, "label 1 is outside [0, 1)");
    ck_assert_int_eq(emoe_probe_fit(EMOE_PROBE_RIDGE, x, y, NULL, 2, 2, 2, 1.0, &p, &err),
                     EMOE_OK);
    float t[2] = {INFINITY, 0};
    int32_t pred[1];
    tu_assert_error(emoe_probe_predict(p, t, 1, pred, &err), err, EMOE_ENUMERIC,
                    "not finite");
    emoe_probe_free(p);
}
END_TEST

/* The protocol on separable clusters: every shot count reaches 100 %, and the
 * same run twice gives the same numbers. */
START_TEST(test_fewshot_run_separable)
{
    enum { K = 3, D = 3, NTR = 90, NTE = 30 };
    float xtr[NTR * D], xte[NTE * D];
    int32_t ytr[NTR], yte[NTE];
    for (int i = 0; i < NTR + NTE; i++) {
        int c = i % K;
        float *row = i < NTR ? xtr + i * D : xte + (i - NTR) * D;
        for (int j = 0; j < D; j++)
            row[j] = (j == c ? 10.0f : 0.0f) + 0.01f * (float)((i * 7 + j * 3) % 11);
        if (i < NTR)
            ytr[i] = c;
        else
            yte[i - NTR] = c;
    }
    struct emoe_fewshot_options o;
    emoe_fewshot_options_init(&o);
    ck_assert_int_eq(o.nshots, 4);
    ck_assert_int_eq(o.seeds, 3);
    ck_assert(o.lambda == 1024.0);
    double acc[12], again[12];
    struct emoe_error err = {0};
    for (int kind = 0; kind < 2; kind++) {
        o.kind = kind ? EMOE_PROBE_NCM : EMOE_PROBE_RIDGE;
        ck_assert_int_eq(emoe_fewshot_run(&o, xtr, ytr, NTR, xte, yte, NTE, D, K, acc, &err),
                         EMOE_OK);
        ck_assert_int_eq(emoe_fewshot_run(&o, xtr, ytr, NTR, xte, yte, NTE, D, K, again, &err),
                         EMOE_OK);
        for (int i = 0; i < 12; i++) {
            ck_assert_msg(acc[i] == 1.0, "kind %d run %d: accuracy %g", kind, i, acc[i]);
            ck_assert(acc[i] == again[i]);
        }
    }
    int shots[1] = {31};
    o.shots = shots;
    o.nshots = 1;
    tu_assert_error(emoe_fewshot_run(&o, xtr, ytr, NTR, xte, yte, NTE, D, K, acc, &err), err,
                    EMOE_ERANGE, "31 shots of 3 classes need more than the 90 training samples");
    yte[4] = 3;
    shots[0] = 1;
    tu_assert_error(emoe_fewshot_run(&o, xtr, ytr, NTR, xte, yte, NTE, D, K, acc, &err), err,
                    EMOE_EINVAL, "test label 3 of sample 4 is outside [0, 3)");
}
END_TEST

static Suite *probe_suite(void)
{
    Suite *s = suite_create("probe");
    TCase *tc = tcase_create("reference");
    tcase_add_test(tc, test_probe_ridge_primal_matches_numpy);
    tcase_add_test(tc, test_probe_ridge_dual_matches_numpy);
    tcase_add_test(tc, test_probe_ncm_matches_numpy);
    tcase_add_test(tc, test_fewshot_select_matches_reference);
    suite_add_tcase(s, tc);
    TCase *pr = tcase_create("protocol");
    tcase_add_test(pr, test_fewshot_run_separable);
    suite_add_tcase(s, pr);
    TCase *bad = tcase_create("malformed");
    tcase_add_test(bad, test_fewshot_select_rejects_too_few);
    tcase_add_test(bad, test_probe_rejects_bad_input);
    suite_add_tcase(s, bad);
    return s;
}

int main(void)
{
    return tu_run(probe_suite());
}
