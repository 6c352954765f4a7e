/*
 * check_layers.c: unit tests of the ViT engine's layer kernels (lib/layers.c,
 * lib/attention.c, lib/loss.c).
 *
 * Three kinds of checks:
 *  - forward against naive double-precision reference loops kept here (the naive
 *    matmul, convolution and attention are the oracles; they never go in lib/);
 *  - every backward against central finite differences of the double-precision
 *    reference forward (objective L = sum(g * f(inputs)) for a random upstream g),
 *    with the analytic gradient accumulated onto a non-zero buffer to check +=;
 *  - golden values from PyTorch 1.13 (tests/gen_fixtures_nn.py, raw float32 files
 *    tests/fixtures/nn_*.f32 whose sizes are asserted here).
 *
 * B images, T tokens, N rows or patches, D channels, H heads, hd = D/H, K classes.
 */
#include "config.h"
#include "testutil.h"
#include "nnmath.h" /* lib/: the private vectorised exp and erf */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* --------------------------------------------------------------- helpers */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double rnd_uniform(void) /* [0, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static float rnd_normal(void)
{
    double u = rnd_uniform() + 1e-12, v = rnd_uniform();
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

static float *fvec(size_t n, float scale) /* random normal * scale */
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    ck_assert(p != NULL);
    for (size_t i = 0; i < n; i++)
        p[i] = rnd_normal() * scale;
    return p;
}

static float *fconst(size_t n, float v)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    ck_assert(p != NULL);
    for (size_t i = 0; i < n; i++)
        p[i] = v;
    return p;
}

static double *dcopy(const float *f, size_t n)
{
    double *p = malloc((n ? n : 1) * sizeof *p);
    ck_assert(p != NULL);
    for (size_t i = 0; i < n; i++)
        p[i] = f[i];
    return p;
}

static double *dzeros(size_t n)
{
    double *p = calloc(n ? n : 1, sizeof *p);
    ck_assert(p != NULL);
    return p;
}

/* A raw little-endian float32 fixture of exactly n values. */
static float *load_f32(const char *name, size_t n)
{
    char file[128];
    snprintf(file, sizeof file, "nn_%s.f32", name);
    size_t size;
    void *p = tu_read_file(tu_fixture(file), &size);
    ck_assert_msg(size == n * sizeof(float), "%s: %zu bytes, want %zu", file, size,
                  n * sizeof(float));
    return p;
}

/* |got - want| <= atol + rtol |want| everywhere. */
static void assert_close(const float *got, const float *want, size_t n, double atol,
                         double rtol, const char *what)
{
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        ck_assert_msg(d <= atol + rtol * fabs(want[i]), "%s[%zu]: got %.8g, want %.8g", what, i,
                      (double)got[i], (double)want[i]);
    }
}

static void assert_close_d(const float *got, const double *want, size_t n, double atol,
                           double rtol, const char *what)
{
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        ck_assert_msg(d <= atol + rtol * fabs(want[i]), "%s[%zu]: got %.8g, want %.8g", what, i,
                      (double)got[i], want[i]);
    }
}

/* The analytic gradient minus the value the buffer held before (backward adds). */
static void subtract(float *g, size_t n, float before)
{
    for (size_t i = 0; i < n; i++)
        g[i] -= before;
}

/*
 * Central differences of obj(ctx) with respect to param[0..n) (double, perturbed in
 * place), compared with the float analytic gradient.  The tolerance is relative,
 * with a floor at a small fraction of the largest gradient: float32 round-off in
 * the analytic value is about 1e-6 relative, the FD truncation error O(h^2).
 */
typedef double (*objective_fn)(void *ctx);

static void fd_check(objective_fn obj, void *ctx, double *param, size_t n,
                     const float *analytic, const char *what)
{
    const double h = 1e-4;
    double *num = dzeros(n);
    double gmax = 0.0;
    for (size_t i = 0; i < n; i++) {
        double keep = param[i];
        param[i] = keep + h;
        double lp = obj(ctx);
        param[i] = keep - h;
        double lm = obj(ctx);
        param[i] = keep;
        num[i] = (lp - lm) / (2 * h);
        if (fabs(num[i]) > gmax)
            gmax = fabs(num[i]);
    }
    ck_assert_msg(gmax > 0.0, "%s: gradient is identically zero (test is vacuous)", what);
    for (size_t i = 0; i < n; i++) {
        double d = fabs(analytic[i] - num[i]);
        ck_assert_msg(d <= 1e-3 * fabs(num[i]) + 1e-4 * gmax + 1e-6,
                      "%s[%zu]: analytic %.8g, finite difference %.8g", what, i,
                      (double)analytic[i], num[i]);
    }
    free(num);
}

/* ------------------------------------------------- double reference layers */

static void ref_linear(double *y, const double *x, const double *w, const double *b, int N,
                       int Din, int Dout)
{
    for (int i = 0; i < N; i++)
        for (int o = 0; o < Dout; o++) {
            double s = b ? b[o] : 0.0;
            for (int k = 0; k < Din; k++)
                s += x[(size_t)i * Din + k] * w[(size_t)o * Din + k];
            y[(size_t)i * Dout + o] = s;
        }
}

static void ref_layernorm(double *y, const double *x, const double *w, const double *b, int N,
                          int D)
{
    for (int i = 0; i < N; i++) {
        const double *r = x + (size_t)i * D;
        double m = 0.0, v = 0.0;
        for (int j = 0; j < D; j++)
            m += r[j];
        m /= D;
        for (int j = 0; j < D; j++)
            v += (r[j] - m) * (r[j] - m);
        v /= D;
        double rs = 1.0 / sqrt(v + 1e-6);
        for (int j = 0; j < D; j++)
            y[(size_t)i * D + j] = (r[j] - m) * rs * w[j] + b[j];
    }
}

static double ref_gelu1(double x)
{
    return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
}

static void ref_attention(double *out, const double *qkv, int B, int T, int D, int H)
{
    int hd = D / H;
    double *s = dzeros((size_t)T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const double *q = qkv + ((size_t)b * T + i) * 3 * D + h * hd;
                double m = -INFINITY, sum = 0.0;
                for (int j = 0; j < T; j++) {
                    const double *k = qkv + ((size_t)b * T + j) * 3 * D + D + h * hd;
                    double dot = 0.0;
                    for (int c = 0; c < hd; c++)
                        dot += q[c] * k[c];
                    s[j] = dot / sqrt((double)hd);
                    if (s[j] > m)
                        m = s[j];
                }
                for (int j = 0; j < T; j++) {
                    s[j] = exp(s[j] - m);
                    sum += s[j];
                }
                for (int c = 0; c < hd; c++) {
                    double acc = 0.0;
                    for (int j = 0; j < T; j++)
                        acc += s[j] / sum * qkv[((size_t)b * T + j) * 3 * D + 2 * D + h * hd + c];
                    out[((size_t)b * T + i) * D + h * hd + c] = acc;
                }
            }
    free(s);
}

/* Direct convolution, kernel = stride = P, on channels-last input; Dz = 0 means 2-D. */
static void ref_patch(double *y, const double *x, const double *w, const double *b, int B,
                      int Dz, int Hi, int Wi, int C, int P, int D)
{
    int is3d = Dz > 0, gz = is3d ? Dz / P : 1, gh = Hi / P, gw = Wi / P, pz_n = is3d ? P : 1;
    int zdim = is3d ? Dz : 1;
    size_t n = 0;
    for (int bb = 0; bb < B; bb++)
        for (int a = 0; a < gz; a++)
            for (int gy = 0; gy < gh; gy++)
                for (int gx = 0; gx < gw; gx++, n++)
                    for (int d = 0; d < D; d++) {
                        double s = b ? b[d] : 0.0;
                        for (int c = 0; c < C; c++)
                            for (int pz = 0; pz < pz_n; pz++)
                                for (int py = 0; py < P; py++)
                                    for (int px = 0; px < P; px++) {
                                        size_t z = (size_t)a * pz_n + pz;
                                        size_t yy = (size_t)gy * P + py, xx = (size_t)gx * P + px;
                                        double xv = x[((((size_t)bb * zdim + z) * Hi + yy) * Wi +
                                                       xx) * C + c];
                                        double wv = w[((((size_t)d * C + c) * pz_n + pz) * P + py) *
                                                      P + px];
                                        s += xv * wv;
                                    }
                        y[n * D + d] = s;
                    }
}

static double dot_fd(const double *g, const double *y, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += g[i] * y[i];
    return s;
}

/* ------------------------------------------------------------------ linear */

struct lin_ctx {
    double *x, *w, *b, *g, *y;
    int n, din, dout;
};

static double lin_obj(void *v)
{
    struct lin_ctx *c = v;
    ref_linear(c->y, c->x, c->w, c->b, c->n, c->din, c->dout);
    return dot_fd(c->g, c->y, (size_t)c->n * c->dout);
}

START_TEST(test_linear_forward_and_gradients)
{
    const int N = 6, Din = 9, Dout = 5;
    float *x = fvec((size_t)N * Din, 1.0f), *w = fvec((size_t)Dout * Din, 0.5f);
    float *b = fvec(Dout, 1.0f), *g = fvec((size_t)N * Dout, 1.0f);
    float *y = fconst((size_t)N * Dout, 99.0f);
    struct lin_ctx c = {dcopy(x, (size_t)N * Din), dcopy(w, (size_t)Dout * Din), dcopy(b, Dout),
                        dcopy(g, (size_t)N * Dout), dzeros((size_t)N * Dout), N, Din, Dout};
    emoe_linear_forward(y, x, w, b, N, Din, Dout);
    lin_obj(&c);
    assert_close_d(y, c.y, (size_t)N * Dout, 1e-5, 1e-5, "linear y");
    /* without bias */
    emoe_linear_forward(y, x, w, NULL, N, Din, Dout);
    ref_linear(c.y, c.x, c.w, NULL, N, Din, Dout);
    assert_close_d(y, c.y, (size_t)N * Dout, 1e-5, 1e-5, "linear y (no bias)");

    float *dx = fconst((size_t)N * Din, 0.5f), *dw = fconst((size_t)Dout * Din, 0.5f);
    float *db = fconst(Dout, 0.5f);
    emoe_linear_backward(dx, dw, db, g, x, w, N, Din, Dout);
    subtract(dx, (size_t)N * Din, 0.5f);
    subtract(dw, (size_t)Dout * Din, 0.5f);
    subtract(db, Dout, 0.5f);
    fd_check(lin_obj, &c, c.x, (size_t)N * Din, dx, "linear dx");
    fd_check(lin_obj, &c, c.w, (size_t)Dout * Din, dw, "linear dw");
    fd_check(lin_obj, &c, c.b, Dout, db, "linear db");

    /* NULL pointers skip: dx alone equals the dx above; dw alone likewise */
    float *dx2 = fconst((size_t)N * Din, 0.0f), *dw2 = fconst((size_t)Dout * Din, 0.0f);
    emoe_linear_backward(dx2, NULL, NULL, g, NULL, w, N, Din, Dout);
    assert_close(dx2, dx, (size_t)N * Din, 1e-6, 1e-6, "linear dx alone");
    emoe_linear_backward(NULL, dw2, NULL, g, x, NULL, N, Din, Dout);
    assert_close(dw2, dw, (size_t)Dout * Din, 1e-6, 1e-6, "linear dw alone");
    free(x), free(w), free(b), free(g), free(y), free(dx), free(dw), free(db), free(dx2),
        free(dw2);
    free(c.x), free(c.w), free(c.b), free(c.g), free(c.y);
}
END_TEST

START_TEST(test_linear_golden)
{
    const int N = 5, Din = 7, Dout = 6;
    float *x = load_f32("linear_x", N * Din), *w = load_f32("linear_w", Dout * Din);
    float *b = load_f32("linear_b", Dout), *ty = load_f32("linear_y", N * Dout);
    float *dy = load_f32("linear_dy", N * Dout), *tdx = load_f32("linear_dx", N * Din);
    float *tdw = load_f32("linear_dw", Dout * Din), *tdb = load_f32("linear_db", Dout);
    float y[30], dx[35] = {0}, dw[42] = {0}, db[6] = {0};
    emoe_linear_forward(y, x, w, b, N, Din, Dout);
    assert_close(y, ty, N * Dout, 1e-5, 1e-5, "linear y");
    emoe_linear_backward(dx, dw, db, dy, x, w, N, Din, Dout);
    assert_close(dx, tdx, N * Din, 1e-5, 1e-3, "linear dx");
    assert_close(dw, tdw, Dout * Din, 1e-5, 1e-3, "linear dw");
    assert_close(db, tdb, Dout, 1e-5, 1e-3, "linear db");
    free(x), free(w), free(b), free(ty), free(dy), free(tdx), free(tdw), free(tdb);
}
END_TEST

/* --------------------------------------------------------------- layernorm */

struct ln_ctx {
    double *x, *w, *b, *g, *y;
    int n, d;
};

static double ln_obj(void *v)
{
    struct ln_ctx *c = v;
    ref_layernorm(c->y, c->x, c->w, c->b, c->n, c->d);
    return dot_fd(c->g, c->y, (size_t)c->n * c->d);
}

START_TEST(test_layernorm_forward_and_gradients)
{
    const int N = 5, D = 12;
    size_t nd = (size_t)N * D;
    float *x = fvec(nd, 2.0f), *w = fvec(D, 0.5f), *b = fvec(D, 0.5f), *g = fvec(nd, 1.0f);
    for (size_t i = 0; i < nd; i++)
        x[i] += 1.5f; /* a non-zero mean */
    for (int j = 0; j < D; j++)
        w[j] += 1.0f;
    float *y = fconst(nd, 0.0f), mean[5], rstd[5];
    struct ln_ctx c = {dcopy(x, nd), dcopy(w, D), dcopy(b, D), dcopy(g, nd), dzeros(nd), N, D};
    emoe_layernorm_forward(y, mean, rstd, x, w, b, N, D);
    ln_obj(&c);
    assert_close_d(y, c.y, nd, 1e-5, 1e-5, "layernorm y");
    float *dx = fconst(nd, -1.0f), *dw = fconst(D, -1.0f), *db = fconst(D, -1.0f);
    emoe_layernorm_backward(dx, dw, db, g, x, w, mean, rstd, N, D);
    subtract(dx, nd, -1.0f);
    subtract(dw, D, -1.0f);
    subtract(db, D, -1.0f);
    fd_check(ln_obj, &c, c.x, nd, dx, "layernorm dx");
    fd_check(ln_obj, &c, c.w, D, dw, "layernorm dw");
    fd_check(ln_obj, &c, c.b, D, db, "layernorm db");
    free(x), free(w), free(b), free(g), free(y), free(dx), free(dw), free(db);
    free(c.x), free(c.w), free(c.b), free(c.g), free(c.y);
}
END_TEST

/* Large enough for the threaded path: forward vs double, and identical results on
 * a repeated run and with 1 or 2 threads. */
START_TEST(test_layernorm_threaded_is_deterministic)
{
    const int N = 700, D = 96;
    size_t nd = (size_t)N * D;
    float *x = fvec(nd, 1.0f), *w = fvec(D, 1.0f), *b = fvec(D, 1.0f), *g = fvec(nd, 1.0f);
    float *y = fconst(nd, 0.0f), *mean = fconst(N, 0), *rstd = fconst(N, 0);
    double *xd = dcopy(x, nd), *wd = dcopy(w, D), *bd = dcopy(b, D), *yd = dzeros(nd);
    float *dx[2], *dw[2], *db[2];
    for (int r = 0; r < 2; r++) {
        emoe_threads_set(r + 1);
        emoe_layernorm_forward(y, mean, rstd, x, w, b, N, D);
        dx[r] = fconst(nd, 0.0f), dw[r] = fconst(D, 0.0f), db[r] = fconst(D, 0.0f);
        emoe_layernorm_backward(dx[r], dw[r], db[r], g, x, w, mean, rstd, N, D);
    }
    ref_layernorm(yd, xd, wd, bd, N, D);
    assert_close_d(y, yd, nd, 1e-5, 1e-5, "layernorm y");
    ck_assert(memcmp(dx[0], dx[1], nd * sizeof(float)) == 0);
    ck_assert(memcmp(dw[0], dw[1], D * sizeof(float)) == 0);
    ck_assert(memcmp(db[0], db[1], D * sizeof(float)) == 0);
    emoe_threads_set(0);
    for (int r = 0; r < 2; r++)
        free(dx[r]), free(dw[r]), free(db[r]);
    free(x), free(w), free(b), free(g), free(y), free(mean), free(rstd);
    free(xd), free(wd), free(bd), free(yd);
}
END_TEST

START_TEST(test_layernorm_golden)
{
    const int N = 4, D = 10;
    float *x = load_f32("layernorm_x", N * D), *w = load_f32("layernorm_w", D);
    float *b = load_f32("layernorm_b", D), *ty = load_f32("layernorm_y", N * D);
    float *dy = load_f32("layernorm_dy", N * D), *tdx = load_f32("layernorm_dx", N * D);
    float *tdw = load_f32("layernorm_dw", D), *tdb = load_f32("layernorm_db", D);
    float y[40], mean[4], rstd[4], dx[40] = {0}, dw[10] = {0}, db[10] = {0};
    emoe_layernorm_forward(y, mean, rstd, x, w, b, N, D);
    assert_close(y, ty, N * D, 1e-5, 1e-5, "layernorm y");
    emoe_layernorm_backward(dx, dw, db, dy, x, w, mean, rstd, N, D);
    assert_close(dx, tdx, N * D, 1e-5, 1e-3, "layernorm dx");
    assert_close(dw, tdw, D, 1e-5, 1e-3, "layernorm dw");
    assert_close(db, tdb, D, 1e-5, 1e-3, "layernorm db");
    free(x), free(w), free(b), free(ty), free(dy), free(tdx), free(tdw), free(tdb);
}
END_TEST

/* -------------------------------------------------------------------- GELU */

struct gelu_ctx {
    double *x, *g;
    size_t n;
};

static double gelu_obj(void *v)
{
    struct gelu_ctx *c = v;
    double s = 0.0;
    for (size_t i = 0; i < c->n; i++)
        s += c->g[i] * ref_gelu1(c->x[i]);
    return s;
}

START_TEST(test_gelu_forward_and_gradients)
{
    const size_t n = 200;
    float *x = fvec(n, 2.5f), *g = fvec(n, 1.0f), *y = fconst(n, 0.0f), *dx = fconst(n, 2.0f);
    struct gelu_ctx c = {dcopy(x, n), dcopy(g, n), n};
    emoe_gelu_forward(y, x, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabs(y[i] - ref_gelu1(x[i])) <= 1e-6 + 1e-6 * fabs(y[i]), "gelu y[%zu]", i);
    emoe_gelu_backward(dx, g, x, n);
    subtract(dx, n, 2.0f);
    fd_check(gelu_obj, &c, c.x, n, dx, "gelu dx");
    /* in place */
    emoe_gelu_forward(x, x, n);
    assert_close(x, y, n, 0.0, 0.0, "gelu in place");
    free(x), free(g), free(y), free(dx), free(c.x), free(c.g);
}
END_TEST

/* The kernels' own exp and erf (lib/nnmath.h) against double precision. */
START_TEST(test_nnmath_accuracy)
{
#ifdef EMOE_NN_VECTOR
    double erf_err = 0.0, exp_err = 0.0;
    for (int i = -80000; i <= 80000; i += 4) { /* erf on [-8, 8], step 1e-4 */
        emoe_v4f x = {(float)i * 1e-4f, (float)(i + 1) * 1e-4f, (float)(i + 2) * 1e-4f,
                      (float)(i + 3) * 1e-4f};
        emoe_v4f y = emoe_nn_erf4(x);
        for (int l = 0; l < 4; l++) {
            double e = fabs(y[l] - erf((double)x[l]));
            erf_err = e > erf_err ? e : erf_err;
        }
    }
    for (int i = -86990; i + 3 <= 88000; i += 4) { /* exp on [-87, 88], step 1e-3 */
        emoe_v4f x = {(float)i * 1e-3f, (float)(i + 1) * 1e-3f, (float)(i + 2) * 1e-3f,
                      (float)(i + 3) * 1e-3f};
        emoe_v4f y = emoe_nn_exp4(x);
        for (int l = 0; l < 4; l++) {
            double e = fabs(y[l] / exp((double)x[l]) - 1.0);
            exp_err = e > exp_err ? e : exp_err;
        }
    }
    ck_assert_msg(erf_err < 2e-7, "erf absolute error %g", erf_err);
    ck_assert_msg(exp_err < 1.5e-7, "exp relative error %g", exp_err);
    emoe_v4f special = {-INFINITY, INFINITY, 0.0f, -0.0f};
    emoe_v4f e = emoe_nn_erf4(special);
    ck_assert(e[0] == -1.0f && e[1] == 1.0f && e[2] == 0.0f && e[3] == 0.0f);
    e = emoe_nn_exp4(special);
    ck_assert(e[0] < 1e-37f && e[0] >= 0.0f && e[2] == 1.0f && e[3] == 1.0f);
#else
    ck_assert(erff(0.5f) > 0.52f); /* the kernels use libm */
#endif
}
END_TEST

#ifdef EMOE_NN_AVX2
/* Largest errors of emoe_nn_phi8 (absolute; relative for x >= -3) and of its
 * exp(-x^2/2) (relative, x^2/2 < 80) on [-16, 16], step 1e-4, and of emoe_nn_exp8. */
__attribute__((target("avx2,fma"))) static void avx2_errors(double err[4])
{
    memset(err, 0, 4 * sizeof *err);
    for (int i = -160000; i < 160000; i += 8) {
        float xs[8], ps[8], es[8];
        for (int l = 0; l < 8; l++)
            xs[l] = (float)(i + l) * 1e-4f;
        __m256 e, p = emoe_nn_phi8(_mm256_loadu_ps(xs), &e);
        _mm256_storeu_ps(ps, p);
        _mm256_storeu_ps(es, e);
        for (int l = 0; l < 8; l++) {
            double x = xs[l], ref = 0.5 * erfc(-x / sqrt(2.0)), d = fabs(ps[l] - ref);
            err[0] = d > err[0] ? d : err[0];
            if (x >= -3.0 && d / ref > err[1])
                err[1] = d / ref;
            if (x * x / 2 < 80.0) {
                double r = exp(-x * x / 2), q = fabs(es[l] - r) / r;
                err[2] = q > err[2] ? q : err[2];
            }
        }
    }
    for (int i = -86990; i + 8 <= 88000; i += 8) { /* exp on [-87, 88], step 1e-3 */
        float xs[8], ys[8];
        for (int l = 0; l < 8; l++)
            xs[l] = (float)(i + l) * 1e-3f;
        _mm256_storeu_ps(ys, emoe_nn_exp8(_mm256_loadu_ps(xs)));
        for (int l = 0; l < 8; l++) {
            double q = fabs(ys[l] / exp((double)xs[l]) - 1.0);
            err[3] = q > err[3] ? q : err[3];
        }
    }
    float sp[8] = {-INFINITY, INFINITY, 0.0f, -0.0f, -1e30f, 1e30f, 40.0f, -40.0f}, ps[8];
    __m256 e;
    _mm256_storeu_ps(ps, emoe_nn_phi8(_mm256_loadu_ps(sp), &e));
    ck_assert(ps[0] >= 0.0f && ps[0] < 1e-30f && ps[1] == 1.0f);
    ck_assert(ps[2] == 0.5f && ps[3] == 0.5f);
    ck_assert(ps[4] >= 0.0f && ps[4] < 1e-30f && ps[5] == 1.0f && ps[6] == 1.0f);
    ck_assert(ps[7] >= 0.0f && ps[7] < 1e-30f);
}
#endif

/* The AVX2 + FMA kernels (used when the CPU has them) against double precision. */
START_TEST(test_nnmath_avx2_accuracy)
{
#ifdef EMOE_NN_AVX2
    if (!emoe_nn_have_avx2()) {
        ck_assert(!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"));
        return;
    }
    double err[4];
    avx2_errors(err);
    ck_assert_msg(err[0] < 1.2e-7, "phi absolute error %g", err[0]);
    ck_assert_msg(err[1] < 1.5e-6, "phi relative error (x >= -3) %g", err[1]);
    ck_assert_msg(err[2] < 2e-5, "exp(-x^2/2) relative error %g", err[2]);
    ck_assert_msg(err[3] < 1.5e-7, "exp8 relative error %g", err[3]);
#else
    ck_assert(erff(0.5f) > 0.52f); /* no AVX2 kernels on this target */
#endif
}
END_TEST

/* GELU forward and backward over n elements against double precision. */
static void check_gelu_against_double(size_t n)
{
    float *x = fvec(n, 3.0f), *g = fvec(n, 1.0f), *y = fconst(n, 0.0f), *dx = fconst(n, 1.0f);
    static const float tails[3] = {-9.0f, 9.0f, -4.5f};
    for (size_t i = 0; i < n && i < 3; i++)
        x[i] = tails[i];
    emoe_gelu_forward(y, x, n);
    emoe_gelu_backward(dx, g, x, n);
    for (size_t i = 0; i < n; i++) {
        double xd = x[i], cdf = 0.5 * (1.0 + erf(xd / sqrt(2.0)));
        double grad = cdf + xd * exp(-0.5 * xd * xd) / sqrt(2.0 * 3.14159265358979324);
        ck_assert_msg(fabs(y[i] - xd * cdf) <= 2e-6 + 2e-6 * fabs(xd), "gelu y[%zu]", i);
        ck_assert_msg(fabs(dx[i] - 1.0 - g[i] * grad) <= 2e-6 + 2e-6 * fabs(g[i]),
                      "gelu dx[%zu]", i);
    }
    /* the fused pass of the model's backward: the same values as forward, and as
     * backward onto zeros */
    float *y2 = fconst(n, 0.0f), *gg = fconst(n, 0.0f), *dx0 = fconst(n, 0.0f);
    float *dx2 = fconst(n, 7.0f);
    emoe_gelu_forward_grad(y2, gg, x, n);
    emoe_gelu_backward(dx0, g, x, n);
    emoe_gelu_backward_mul(dx2, g, gg, n);
    assert_close(y2, y, n, 0.0, 0.0, "gelu forward_grad y");
    assert_close(dx2, dx0, n, 0.0, 0.0, "gelu backward_mul");
    free(y2), free(gg), free(dx0), free(dx2);
    free(x), free(g), free(y), free(dx);
}

/* The portable GELU (EMOE_NN_GENERIC=1 turns the AVX2 kernels off) and the
 * default one agree with double precision, with odd lengths for the tails. */
START_TEST(test_gelu_generic_and_default_paths)
{
    for (int generic = 0; generic < 2; generic++) {
        setenv("EMOE_NN_GENERIC", generic ? "1" : "0", 1);
        check_gelu_against_double(1);
        check_gelu_against_double(13);
        check_gelu_against_double(1003);
    }
    unsetenv("EMOE_NN_GENERIC");
}
END_TEST

/* Sizes above the kernels' threading threshold, with tails: against double. */
START_TEST(test_threaded_elementwise_against_double)
{
    emoe_threads_set(2);
    const size_t n = 50001;
    float *x = fvec(n, 3.0f), *g = fvec(n, 1.0f), *y = fconst(n, 0.0f), *dx = fconst(n, 1.0f);
    emoe_gelu_forward(y, x, n);
    emoe_gelu_backward(dx, g, x, n);
    for (size_t i = 0; i < n; i++) {
        double xd = x[i], cdf = 0.5 * (1.0 + erf(xd / sqrt(2.0)));
        double grad = cdf + xd * exp(-0.5 * xd * xd) / sqrt(2.0 * 3.14159265358979324);
        ck_assert_msg(fabs(y[i] - xd * cdf) <= 2e-6 + 2e-6 * fabs(xd), "gelu y[%zu]", i);
        ck_assert_msg(fabs(dx[i] - 1.0 - g[i] * grad) <= 2e-6 + 2e-6 * fabs(g[i]),
                      "gelu dx[%zu]", i);
    }
    /* linear db column sums and embed dpos sums over many rows */
    const int N = 3001, Dout = 37, B = 50, P = 20, D = 40;
    float *dy = fvec((size_t)N * Dout, 1.0f), *db = fconst(Dout, 0.0f);
    emoe_linear_backward(NULL, NULL, db, dy, NULL, NULL, N, 5, Dout);
    for (int o = 0; o < Dout; o++) {
        double s = 0.0;
        for (int i = 0; i < N; i++)
            s += dy[(size_t)i * Dout + o];
        ck_assert_msg(fabs(db[o] - s) <= 1e-3, "linear db[%d] %g want %g", o, db[o], s);
    }
    size_t nx = (size_t)B * (P + 1) * D;
    float *gx = fvec(nx, 1.0f), *dpos = fconst((size_t)(P + 1) * D, 0.0f);
    float *dcls = fconst(D, 0.0f), *dpatch = fconst((size_t)B * P * D, 0.0f);
    emoe_embed_backward(dpatch, dcls, dpos, gx, B, P, D);
    for (int t = 0; t <= P; t++)
        for (int j = 0; j < D; j++) {
            double s = 0.0;
            for (int b = 0; b < B; b++)
                s += gx[((size_t)b * (P + 1) + t) * D + j];
            ck_assert(fabs(dpos[t * D + j] - s) <= 1e-4);
            if (t == 0)
                ck_assert(fabs(dcls[j] - s) <= 1e-4);
        }
    ck_assert(dpatch[(size_t)B * P * D - 1] == gx[nx - 1]);
    emoe_threads_set(0);
    free(x), free(g), free(y), free(dx), free(dy), free(db), free(gx), free(dpos), free(dcls),
        free(dpatch);
}
END_TEST

START_TEST(test_gelu_golden)
{
    float *x = load_f32("gelu_x", 64), *ty = load_f32("gelu_y", 64);
    float *dy = load_f32("gelu_dy", 64), *tdx = load_f32("gelu_dx", 64);
    float y[64], dx[64] = {0};
    emoe_gelu_forward(y, x, 64);
    assert_close(y, ty, 64, 1e-6, 1e-5, "gelu y");
    emoe_gelu_backward(dx, dy, x, 64);
    assert_close(dx, tdx, 64, 1e-6, 1e-3, "gelu dx");
    free(x), free(ty), free(dy), free(tdx);
}
END_TEST

/* --------------------------------------------------------------- attention */

struct att_ctx {
    double *qkv, *g, *out;
    int b, t, d, h;
};

static double att_obj(void *v)
{
    struct att_ctx *c = v;
    ref_attention(c->out, c->qkv, c->b, c->t, c->d, c->h);
    return dot_fd(c->g, c->out, (size_t)c->b * c->t * c->d);
}

START_TEST(test_attention_forward_and_gradients)
{
    const int B = 2, T = 7, D = 12, H = 3;
    size_t nq = (size_t)B * T * 3 * D, no = (size_t)B * T * D, na = (size_t)B * H * T * T;
    float *qkv = fvec(nq, 1.0f), *g = fvec(no, 1.0f), *out = fconst(no, 0.0f);
    float *att = fconst(na, 0.0f), *scratch = fconst(na, 7.0f), *dqkv = fconst(nq, 0.25f);
    struct att_ctx c = {dcopy(qkv, nq), dcopy(g, no), dzeros(no), B, T, D, H};
    emoe_attention_forward(out, att, qkv, B, T, D, H);
    att_obj(&c);
    assert_close_d(out, c.out, no, 1e-5, 1e-5, "attention out");
    for (size_t r = 0; r < (size_t)B * H * T; r++) { /* probability rows */
        double s = 0.0;
        for (int j = 0; j < T; j++)
            s += att[r * T + j];
        ck_assert_msg(fabs(s - 1.0) < 1e-5, "attention row %zu sums to %g", r, s);
    }
    emoe_attention_backward(dqkv, scratch, g, qkv, att, B, T, D, H);
    subtract(dqkv, nq, 0.25f);
    fd_check(att_obj, &c, c.qkv, nq, dqkv, "attention dqkv");
    free(qkv), free(g), free(out), free(att), free(scratch), free(dqkv);
    free(c.qkv), free(c.g), free(c.out);
}
END_TEST

START_TEST(test_attention_threaded_matches_naive)
{
    const int B = 5, T = 17, D = 32, H = 4;
    size_t nq = (size_t)B * T * 3 * D, no = (size_t)B * T * D, na = (size_t)B * H * T * T;
    float *qkv = fvec(nq, 1.0f), *g = fvec(no, 1.0f);
    float *out = fconst(no, 0.0f), *att = fconst(na, 0.0f), *scratch = fconst(na, 0.0f);
    float *d1 = fconst(nq, 0.0f), *d2 = fconst(nq, 0.0f);
    double *qd = dcopy(qkv, nq), *od = dzeros(no);
    emoe_threads_set(2);
    emoe_attention_forward(out, att, qkv, B, T, D, H);
    ref_attention(od, qd, B, T, D, H);
    assert_close_d(out, od, no, 1e-5, 1e-5, "attention out");
    emoe_attention_backward(d1, scratch, g, qkv, att, B, T, D, H);
    emoe_attention_backward(d2, scratch, g, qkv, att, B, T, D, H);
    ck_assert(memcmp(d1, d2, nq * sizeof(float)) == 0);
    emoe_threads_set(0);
    free(qkv), free(g), free(out), free(att), free(scratch), free(d1), free(d2), free(qd),
        free(od);
}
END_TEST

START_TEST(test_attention_golden)
{
    const int B = 2, T = 5, D = 12, H = 3;
    float *qkv = load_f32("attention_qkv", B * T * 3 * D);
    float *tout = load_f32("attention_out", B * T * D);
    float *dout = load_f32("attention_dout", B * T * D);
    float *tdqkv = load_f32("attention_dqkv", B * T * 3 * D);
    float out[120], att[150], scratch[150], dqkv[360] = {0};
    emoe_attention_forward(out, att, qkv, B, T, D, H);
    assert_close(out, tout, B * T * D, 1e-5, 1e-5, "attention out");
    emoe_attention_backward(dqkv, scratch, dout, qkv, att, B, T, D, H);
    assert_close(dqkv, tdqkv, B * T * 3 * D, 1e-5, 1e-3, "attention dqkv");
    free(qkv), free(tout), free(dout), free(tdqkv);
}
END_TEST

/* --------------------------------------------------------- patch embedding */

struct patch_ctx {
    double *x, *w, *b, *g, *y;
    int bsz, dz, hi, wi, c, p, d;
    size_t ny;
};

static double patch_obj(void *v)
{
    struct patch_ctx *c = v;
    ref_patch(c->y, c->x, c->w, c->b, c->bsz, c->dz, c->hi, c->wi, c->c, c->p, c->d);
    return dot_fd(c->g, c->y, c->ny);
}

/* dz = 0: 2-D */
static void check_patch(int B, int Dz, int Hi, int Wi, int C, int P, int D)
{
    int is3d = Dz > 0;
    size_t nx = (size_t)B * (is3d ? Dz : 1) * Hi * Wi * C;
    size_t K = (size_t)C * P * P * (is3d ? P : 1);
    size_t N = (size_t)(is3d ? Dz / P : 1) * (Hi / P) * (Wi / P);
    size_t ny = (size_t)B * N * D;
    float *x = fvec(nx, 1.0f), *w = fvec((size_t)D * K, 0.3f), *b = fvec(D, 1.0f);
    float *g = fvec(ny, 1.0f), *y = fconst(ny, 0.0f), *cols = fconst((size_t)B * N * K, 0.0f);
    struct patch_ctx c = {dcopy(x, nx), dcopy(w, (size_t)D * K), dcopy(b, D), dcopy(g, ny),
                          dzeros(ny), B, Dz, Hi, Wi, C, P, D, ny};
    if (is3d)
        emoe_patch_embed_forward_3d(y, cols, x, w, b, B, Dz, Hi, Wi, C, P, D);
    else
        emoe_patch_embed_forward_2d(y, cols, x, w, b, B, Hi, Wi, C, P, D);
    patch_obj(&c);
    assert_close_d(y, c.y, ny, 1e-5, 1e-5, is3d ? "patch3d y" : "patch2d y");
    float *dw = fconst((size_t)D * K, 1.0f), *db = fconst(D, 1.0f);
    emoe_patch_embed_backward(dw, db, g, cols, (int)(B * N), (int)K, D);
    subtract(dw, (size_t)D * K, 1.0f);
    subtract(db, D, 1.0f);
    fd_check(patch_obj, &c, c.w, (size_t)D * K, dw, is3d ? "patch3d dw" : "patch2d dw");
    fd_check(patch_obj, &c, c.b, D, db, is3d ? "patch3d db" : "patch2d db");
    free(x), free(w), free(b), free(g), free(y), free(cols), free(dw), free(db);
    free(c.x), free(c.w), free(c.b), free(c.g), free(c.y);
}

START_TEST(test_patch_embed_2d)
{
    check_patch(2, 0, 8, 12, 3, 4, 5);
    check_patch(1, 0, 10, 7, 2, 3, 4); /* remainders dropped */
}
END_TEST

START_TEST(test_patch_embed_3d)
{
    check_patch(2, 4, 6, 4, 1, 2, 3);
    check_patch(1, 5, 4, 4, 2, 2, 4);
}
END_TEST

START_TEST(test_patch_embed_golden)
{
    /* 2-D: B=2 Hi=9 Wi=12 C=3 P=4 D=5, grid 2x3 */
    float *x = load_f32("patch2d_x", 2 * 9 * 12 * 3), *w = load_f32("patch2d_w", 5 * 48);
    float *b = load_f32("patch2d_b", 5), *ty = load_f32("patch2d_y", 2 * 6 * 5);
    float *dy = load_f32("patch2d_dy", 60), *tdw = load_f32("patch2d_dw", 5 * 48);
    float *tdb = load_f32("patch2d_db", 5);
    float y[60], cols[12 * 48], dw[240] = {0}, db[5] = {0};
    emoe_patch_embed_forward_2d(y, cols, x, w, b, 2, 9, 12, 3, 4, 5);
    assert_close(y, ty, 60, 1e-5, 1e-5, "patch2d y");
    emoe_patch_embed_backward(dw, db, dy, cols, 12, 48, 5);
    assert_close(dw, tdw, 240, 1e-5, 1e-3, "patch2d dw");
    assert_close(db, tdb, 5, 1e-5, 1e-3, "patch2d db");
    free(x), free(w), free(b), free(ty), free(dy), free(tdw), free(tdb);

    /* 3-D: B=2 Dz=4 Hi=4 Wi=6 C=2 P=2 D=4, grid 2x2x3 */
    x = load_f32("patch3d_x", 2 * 4 * 4 * 6 * 2), w = load_f32("patch3d_w", 4 * 16);
    b = load_f32("patch3d_b", 4), ty = load_f32("patch3d_y", 2 * 12 * 4);
    dy = load_f32("patch3d_dy", 96), tdw = load_f32("patch3d_dw", 64);
    tdb = load_f32("patch3d_db", 4);
    float y3[96], cols3[24 * 16], dw3[64] = {0}, db3[4] = {0};
    emoe_patch_embed_forward_3d(y3, cols3, x, w, b, 2, 4, 4, 6, 2, 2, 4);
    assert_close(y3, ty, 96, 1e-5, 1e-5, "patch3d y");
    emoe_patch_embed_backward(dw3, db3, dy, cols3, 24, 16, 4);
    assert_close(dw3, tdw, 64, 1e-5, 1e-3, "patch3d dw");
    assert_close(db3, tdb, 4, 1e-5, 1e-3, "patch3d db");
    free(x), free(w), free(b), free(ty), free(dy), free(tdw), free(tdb);
}
END_TEST

/* ---------------------------------------- class token and position embedding */

struct embed_ctx {
    double *patch, *cls, *pos, *g;
    int b, n, d;
};

static double embed_obj(void *v)
{
    struct embed_ctx *c = v;
    double s = 0.0;
    for (int b = 0; b < c->b; b++)
        for (int t = 0; t <= c->n; t++)
            for (int j = 0; j < c->d; j++) {
                double x = (t == 0 ? c->cls[j] : c->patch[((size_t)b * c->n + t - 1) * c->d + j]) +
                           c->pos[(size_t)t * c->d + j];
                s += c->g[((size_t)b * (c->n + 1) + t) * c->d + j] * x;
            }
    return s;
}

START_TEST(test_embed_forward_and_gradients)
{
    const int B = 3, N = 4, D = 5;
    size_t np = (size_t)B * N * D, nx = (size_t)B * (N + 1) * D;
    float *patch = fvec(np, 1.0f), *cls = fvec(D, 1.0f), *pos = fvec((size_t)(N + 1) * D, 1.0f);
    float *g = fvec(nx, 1.0f), *x = fconst(nx, 0.0f);
    emoe_embed_forward(x, patch, cls, pos, B, N, D);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < D; j++) {
            ck_assert(x[(size_t)b * (N + 1) * D + j] == cls[j] + pos[j]);
            ck_assert(x[((size_t)b * (N + 1) + 2) * D + j] ==
                      patch[((size_t)b * N + 1) * D + j] + pos[2 * D + j]);
        }
    float *dpatch = fconst(np, 3.0f), *dcls = fconst(D, 3.0f);
    float *dpos = fconst((size_t)(N + 1) * D, 3.0f);
    emoe_embed_backward(dpatch, dcls, dpos, g, B, N, D);
    subtract(dpatch, np, 3.0f);
    subtract(dcls, D, 3.0f);
    subtract(dpos, (size_t)(N + 1) * D, 3.0f);
    struct embed_ctx c = {dcopy(patch, np), dcopy(cls, D), dcopy(pos, (size_t)(N + 1) * D),
                          dcopy(g, nx), B, N, D};
    fd_check(embed_obj, &c, c.patch, np, dpatch, "embed dpatch");
    fd_check(embed_obj, &c, c.cls, D, dcls, "embed dcls");
    fd_check(embed_obj, &c, c.pos, (size_t)(N + 1) * D, dpos, "embed dpos");
    free(patch), free(cls), free(pos), free(g), free(x), free(dpatch), free(dcls), free(dpos);
    free(c.patch), free(c.cls), free(c.pos), free(c.g);
}
END_TEST

START_TEST(test_embed_golden)
{
    const int B = 2, N = 4, D = 6;
    float *patch = load_f32("embed_patch", B * N * D), *cls = load_f32("embed_cls", D);
    float *pos = load_f32("embed_pos", (N + 1) * D), *tx = load_f32("embed_x", B * (N + 1) * D);
    float *dx = load_f32("embed_dx", B * (N + 1) * D);
    float *tdp = load_f32("embed_dpatch", B * N * D), *tdc = load_f32("embed_dcls", D);
    float *tdpos = load_f32("embed_dpos", (N + 1) * D);
    float x[60], dp[48] = {0}, dc[6] = {0}, dpos[30] = {0};
    emoe_embed_forward(x, patch, cls, pos, B, N, D);
    assert_close(x, tx, 60, 1e-6, 1e-6, "embed x");
    emoe_embed_backward(dp, dc, dpos, dx, B, N, D);
    assert_close(dp, tdp, 48, 1e-6, 1e-5, "embed dpatch");
    assert_close(dc, tdc, 6, 1e-6, 1e-5, "embed dcls");
    assert_close(dpos, tdpos, 30, 1e-6, 1e-5, "embed dpos");
    free(patch), free(cls), free(pos), free(tx), free(dx), free(tdp), free(tdc), free(tdpos);
}
END_TEST

START_TEST(test_token_gather)
{
    const int B = 3, T = 4, D = 5;
    float *x = fvec((size_t)B * T * D, 1.0f), out[15], dout[15], *dx = fconst(60, 1.0f);
    emoe_token_gather(out, x, B, T, D, 0);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < D; j++) {
            ck_assert(out[b * D + j] == x[(size_t)b * T * D + j]);
            dout[b * D + j] = (float)(b * D + j);
        }
    emoe_token_gather_backward(dx, dout, B, T, D, 2);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < D; j++)
                ck_assert(dx[((size_t)b * T + t) * D + j] ==
                          (t == 2 ? 1.0f + (float)(b * D + j) : 1.0f));
    free(x), free(dx);
}
END_TEST

/* ------------------------------------------- position-embedding resampling */

START_TEST(test_resample_golden)
{
    struct emoe_error err = {0};
    float *in = load_f32("resample_in", 17 * 3);
    static const struct {
        const char *name;
        enum emoe_interp mode;
        int ho, wo;
    } cases[] = {
        {"resample_bilinear_up", EMOE_INTERP_BILINEAR, 6, 5},
        {"resample_bicubic_up", EMOE_INTERP_BICUBIC, 6, 5},
        {"resample_bilinear_down", EMOE_INTERP_BILINEAR, 3, 2},
        {"resample_bicubic_down", EMOE_INTERP_BICUBIC, 3, 2},
        {"resample_bilinear_aa_up", EMOE_INTERP_BILINEAR_AA, 6, 5},
        {"resample_bicubic_aa_up", EMOE_INTERP_BICUBIC_AA, 6, 5},
        {"resample_bilinear_aa_down", EMOE_INTERP_BILINEAR_AA, 3, 2},
        {"resample_bicubic_aa_down", EMOE_INTERP_BICUBIC_AA, 3, 2},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        size_t n = (size_t)(1 + cases[k].ho * cases[k].wo) * 3;
        float *want = load_f32(cases[k].name, n), out[93];
        ck_assert_int_eq(emoe_pos_embed_resample(out, in, 1, 4, 4, cases[k].ho, cases[k].wo, 3,
                                                 cases[k].mode, &err),
                         EMOE_OK);
        assert_close(out, want, n, 1e-5, 1e-5, cases[k].name);
        free(want);
    }
    /* the same grid is a copy */
    for (int mode = 0; mode < 4; mode++) {
        float same[51];
        ck_assert_int_eq(emoe_pos_embed_resample(same, in, 1, 4, 4, 4, 4, 3,
                                                 (enum emoe_interp)mode, &err),
                         EMOE_OK);
        assert_close(same, in, 51, 1e-6, 0.0, "resample identity");
    }
    free(in);
}
END_TEST

/* Where align_corners=False linear interpolation samples input axis of size n for
 * output index o of m: clamped to the grid's first and last positions. */
static double linear_src(int n, int m, int o)
{
    double src = (double)n / m * (o + 0.5) - 0.5;
    return src < 0.0 ? 0.0 : src > n - 1 ? n - 1 : src;
}

/* Trilinear resampling reproduces a linear field at the sampled positions. */
START_TEST(test_resample3d_linear_field)
{
    struct emoe_error err = {0};
    static const int cases[][6] = {{2, 3, 4, 4, 5, 3}, {3, 2, 6, 2, 4, 6}, {2, 2, 2, 4, 4, 4},
                                   {4, 4, 4, 2, 2, 2}, {1, 3, 2, 3, 3, 5}};
    const int D = 2;
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        int di = cases[k][0], hi = cases[k][1], wi = cases[k][2];
        int dO = cases[k][3], ho = cases[k][4], wo = cases[k][5];
        size_t nin = (size_t)(1 + di * hi * wi) * D, nout = (size_t)(1 + dO * ho * wo) * D;
        float *in = fconst(nin, 0.0f), *out = fconst(nout, -1.0f);
        in[0] = 7.0f, in[1] = -3.0f; /* the class position */
        for (int z = 0; z < di; z++)
            for (int y = 0; y < hi; y++)
                for (int x = 0; x < wi; x++)
                    for (int c = 0; c < D; c++)
                        in[(size_t)(1 + (z * hi + y) * wi + x) * D + c] =
                            (float)(0.5 + c - 1.25 * z + 0.75 * y + (c ? -2.0 : 0.5) * x);
        ck_assert_int_eq(emoe_pos_embed_resample3d(out, in, 1, di, hi, wi, dO, ho, wo, D,
                                                   EMOE_INTERP_BILINEAR, &err),
                         EMOE_OK);
        ck_assert(out[0] == 7.0f && out[1] == -3.0f);
        for (int z = 0; z < dO; z++)
            for (int y = 0; y < ho; y++)
                for (int x = 0; x < wo; x++)
                    for (int c = 0; c < D; c++) {
                        double sz = linear_src(di, dO, z), sy = linear_src(hi, ho, y);
                        double sx = linear_src(wi, wo, x);
                        double want = 0.5 + c - 1.25 * sz + 0.75 * sy + (c ? -2.0 : 0.5) * sx;
                        float got = out[(size_t)(1 + (z * ho + y) * wo + x) * D + c];
                        ck_assert_msg(fabs(got - want) <= 1e-5,
                                      "case %zu (%d,%d,%d,%d): %g want %g", k, z, y, x, c, got,
                                      want);
                    }
        free(in), free(out);
    }
}
END_TEST

/* Along each axis the 3-D resampling weights are the 2-D function's: a field
 * constant along one axis resamples as the 2-D grid of the other two. */
START_TEST(test_resample3d_matches_2d_per_axis)
{
    struct emoe_error err = {0};
    const int D = 3, a = 4, b = 3, ao = 6, bo = 2, rep = 3;
    float *g2 = fvec((size_t)(1 + a * b) * D, 1.0f), *o2 = fconst((size_t)(1 + ao * bo) * D, 0);
    ck_assert_int_eq(emoe_pos_embed_resample(o2, g2, 1, a, b, ao, bo, D, EMOE_INTERP_BILINEAR,
                                             &err),
                     EMOE_OK);
    size_t nin = (size_t)(1 + a * b * rep) * D, nout = (size_t)(1 + ao * bo * rep) * D;
    float *in = fconst(nin, 0.0f), *out = fconst(nout, 0.0f);
    /* axis = the constant one (0 depth, 1 height, 2 width), kept at size rep */
    for (int axis = 0; axis < 3; axis++) {
        int si[3], so[3];
        for (int k = 0, j = 0; k < 3; k++) {
            si[k] = k == axis ? rep : j == 0 ? a : b;
            so[k] = k == axis ? rep : j == 0 ? ao : bo;
            j += k != axis;
        }
        memcpy(in, g2, (size_t)D * sizeof *in);
        for (int z = 0; z < si[0]; z++)
            for (int y = 0; y < si[1]; y++)
                for (int x = 0; x < si[2]; x++) {
                    int idx[3] = {z, y, x}, u[2], j = 0;
                    for (int k = 0; k < 3; k++)
                        if (k != axis)
                            u[j++] = idx[k];
                    memcpy(in + (size_t)(1 + (z * si[1] + y) * si[2] + x) * D,
                           g2 + (size_t)(1 + u[0] * b + u[1]) * D, (size_t)D * sizeof *in);
                }
        ck_assert_int_eq(emoe_pos_embed_resample3d(out, in, 1, si[0], si[1], si[2], so[0], so[1],
                                                   so[2], D, EMOE_INTERP_BILINEAR, &err),
                         EMOE_OK);
        for (int z = 0; z < so[0]; z++)
            for (int y = 0; y < so[1]; y++)
                for (int x = 0; x < so[2]; x++) {
                    int idx[3] = {z, y, x}, u[2], j = 0;
                    for (int k = 0; k < 3; k++)
                        if (k != axis)
                            u[j++] = idx[k];
                    const float *got = out + (size_t)(1 + (z * so[1] + y) * so[2] + x) * D;
                    const float *want = o2 + (size_t)(1 + u[0] * bo + u[1]) * D;
                    for (int c = 0; c < D; c++)
                        ck_assert_msg(fabs(got[c] - want[c]) <= 1e-6,
                                      "axis %d at (%d,%d,%d): %g want %g", axis, z, y, x,
                                      got[c], want[c]);
                }
        ck_assert(out[0] == g2[0] && out[D - 1] == g2[D - 1]);
    }
    free(g2), free(o2), free(in), free(out);
}
END_TEST

START_TEST(test_resample_rejects_bad_arguments)
{
    struct emoe_error err = {0};
    float a[8] = {0}, b[8];
    tu_assert_error(emoe_pos_embed_resample(b, a, 1, 0, 2, 1, 1, 1, EMOE_INTERP_BILINEAR, &err),
                    err, EMOE_EINVAL, "bad resample sizes");
    tu_assert_error(emoe_pos_embed_resample(b, a, 0, 1, 1, 1, 1, 1, (enum emoe_interp)7, &err),
                    err, EMOE_EINVAL, "unknown interpolation");
    tu_assert_error(emoe_pos_embed_resample3d(b, a, 1, 1, 0, 1, 1, 1, 1, 1,
                                              EMOE_INTERP_BILINEAR, &err),
                    err, EMOE_EINVAL, "bad resample sizes");
    tu_assert_error(emoe_pos_embed_resample3d(b, a, 0, 1, 1, 1, 1, 1, 1, 1,
                                              EMOE_INTERP_BICUBIC, &err),
                    err, EMOE_EINVAL, "on a 3-D grid (only linear)");
}
END_TEST

/* ------------------------------------------------------------------ losses */

struct xent_ctx {
    double *z;
    const int32_t *labels;
    int b, k;
    double eps;
};

static double xent_obj(void *v)
{
    struct xent_ctx *c = v;
    double total = 0.0;
    for (int b = 0; b < c->b; b++) {
        const double *z = c->z + (size_t)b * c->k;
        double m = z[0], s = 0.0, mean_logp = 0.0;
        for (int k = 1; k < c->k; k++)
            m = z[k] > m ? z[k] : m;
        for (int k = 0; k < c->k; k++)
            s += exp(z[k] - m);
        for (int k = 0; k < c->k; k++)
            mean_logp += (z[k] - m - log(s)) / c->k;
        double nll = -(z[c->labels[b]] - m - log(s));
        total += (1 - c->eps) * nll - c->eps * mean_logp;
    }
    return total / c->b;
}

START_TEST(test_cross_entropy_gradients)
{
    struct emoe_error err = {0};
    const int B = 5, K = 6;
    float *z = fvec((size_t)B * K, 2.0f), *dz = fconst((size_t)B * K, 0.125f);
    int32_t labels[5] = {0, 5, 2, 2, 3};
    double loss;
    int ncorrect = -1;
    ck_assert_int_eq(emoe_cross_entropy(&loss, dz, &ncorrect, z, labels, B, K, 0.2f, &err),
                     EMOE_OK);
    subtract(dz, (size_t)B * K, 0.125f);
    struct xent_ctx c = {dcopy(z, (size_t)B * K), labels, B, K, 0.2f};
    ck_assert_msg(fabs(loss - xent_obj(&c)) < 1e-6, "loss %g, want %g", loss, xent_obj(&c));
    fd_check(xent_obj, &c, c.z, (size_t)B * K, dz, "cross-entropy dlogits");
    int want = 0;
    for (int b = 0; b < B; b++) {
        int arg = 0;
        for (int k = 1; k < K; k++)
            if (z[b * K + k] > z[b * K + arg])
                arg = k;
        want += arg == labels[b];
    }
    ck_assert_int_eq(ncorrect, want);
    free(z), free(dz), free(c.z);
}
END_TEST

START_TEST(test_cross_entropy_label_smoothing_by_hand)
{
    /* p = (1/4, 1/4, 1/2), label 2, eps 0.1:
     * loss = 0.9 ln 2 + 0.1 (ln 4 + ln 4 + ln 2)/3 = ln 2 (0.9 + 1/6);
     * dlogits = p - (eps/3 + 0.9 [k = 2]) */
    struct emoe_error err = {0};
    float z[3] = {0.0f, 0.0f, (float)log(2.0)}, dz[3] = {0};
    int32_t label = 2;
    double loss;
    int nc;
    ck_assert_int_eq(emoe_cross_entropy(&loss, dz, &nc, z, &label, 1, 3, 0.1f, &err), EMOE_OK);
    ck_assert_msg(fabs(loss - log(2.0) * (0.9 + 1.0 / 6.0)) < 1e-6, "loss %.9g", loss);
    ck_assert(fabs(dz[0] - (0.25 - 0.1 / 3)) < 1e-6);
    ck_assert(fabs(dz[1] - (0.25 - 0.1 / 3)) < 1e-6);
    ck_assert(fabs(dz[2] - (0.5 - 0.1 / 3 - 0.9)) < 1e-6);
    ck_assert_int_eq(nc, 1);
}
END_TEST

START_TEST(test_cross_entropy_golden)
{
    struct emoe_error err = {0};
    float *z = load_f32("xent_logits", 28), *fl = load_f32("xent_labels", 4);
    float *tl = load_f32("xent_loss", 1), *tdz = load_f32("xent_dlogits", 28);
    float *tnc = load_f32("xent_ncorrect", 1);
    int32_t labels[4];
    for (int i = 0; i < 4; i++)
        labels[i] = (int32_t)fl[i];
    float dz[28] = {0};
    double loss;
    int nc;
    ck_assert_int_eq(emoe_cross_entropy(&loss, dz, &nc, z, labels, 4, 7, 0.1f, &err), EMOE_OK);
    ck_assert_msg(fabs(loss - tl[0]) <= 1e-5 * (1 + fabs(tl[0])), "loss %g want %g", loss,
                  (double)tl[0]);
    assert_close(dz, tdz, 28, 1e-6, 1e-3, "cross-entropy dlogits");
    ck_assert_int_eq(nc, (int)tnc[0]);
    free(z), free(fl), free(tl), free(tdz), free(tnc);
}
END_TEST

START_TEST(test_cross_entropy_rejects_bad_input)
{
    struct emoe_error err = {0};
    float z[4] = {0.0f, 1.0f, 2.0f, 3.0f};
    int32_t bad[2] = {1, 4};
    double loss = -1.0;
    tu_assert_error(emoe_cross_entropy(&loss, NULL, NULL, z, bad, 2, 2, 0.0f, &err), err,
                    EMOE_EINVAL, "label 4 of row 1");
    int32_t ok[2] = {0, 1};
    z[1] = NAN;
    tu_assert_error(emoe_cross_entropy(&loss, NULL, NULL, z, ok, 2, 2, 0.0f, &err), err,
                    EMOE_ENUMERIC, "non-finite logit in row 0");
    z[1] = 1.0f;
    z[3] = INFINITY;
    tu_assert_error(emoe_cross_entropy(&loss, NULL, NULL, z, ok, 2, 2, 0.0f, &err), err,
                    EMOE_ENUMERIC, "non-finite logit in row 1");
    tu_assert_error(emoe_cross_entropy(&loss, NULL, NULL, z, ok, 2, 2, 1.5f, &err), err,
                    EMOE_EINVAL, "label smoothing");
    ck_assert(loss == -1.0);
}
END_TEST

struct reg_ctx {
    double *pred, *target;
    size_t n;
    int l1;
};

static double reg_obj(void *v)
{
    struct reg_ctx *c = v;
    double s = 0.0;
    for (size_t i = 0; i < c->n; i++) {
        double d = c->pred[i] - c->target[i];
        s += c->l1 ? fabs(d) : d * d;
    }
    return s / c->n;
}

START_TEST(test_regression_losses)
{
    struct emoe_error err = {0};
    const size_t n = 9;
    float *p = fvec(n, 1.0f), *t = fvec(n, 1.0f);
    for (size_t i = 0; i < n; i++) /* keep away from the kink of |x| */
        if (fabsf(p[i] - t[i]) < 0.01f)
            p[i] += 0.1f;
    for (int l1 = 0; l1 < 2; l1++) {
        float *dp = fconst(n, 0.5f);
        double loss;
        int rc = l1 ? emoe_l1_loss(&loss, dp, p, t, n, &err)
                    : emoe_mse_loss(&loss, dp, p, t, n, &err);
        ck_assert_int_eq(rc, EMOE_OK);
        subtract(dp, n, 0.5f);
        struct reg_ctx c = {dcopy(p, n), dcopy(t, n), n, l1};
        ck_assert(fabs(loss - reg_obj(&c)) < 1e-6);
        fd_check(reg_obj, &c, c.pred, n, dp, l1 ? "l1 dpred" : "mse dpred");
        free(dp), free(c.pred), free(c.target);
    }
    double loss;
    t[3] = NAN;
    tu_assert_error(emoe_l1_loss(&loss, NULL, p, t, n, &err), err, EMOE_ENUMERIC,
                    "non-finite target at 3");
    tu_assert_error(emoe_mse_loss(&loss, NULL, p, t, 0, &err), err, EMOE_EINVAL, "no values");
    free(p), free(t);
}
END_TEST

START_TEST(test_regression_golden)
{
    struct emoe_error err = {0};
    for (int l1 = 0; l1 < 2; l1++) {
        const char *name = l1 ? "l1" : "mse";
        char f[32];
        snprintf(f, sizeof f, "%s_pred", name);
        float *p = load_f32(f, 6);
        snprintf(f, sizeof f, "%s_target", name);
        float *t = load_f32(f, 6);
        snprintf(f, sizeof f, "%s_loss", name);
        float *tl = load_f32(f, 1);
        snprintf(f, sizeof f, "%s_dpred", name);
        float *tdp = load_f32(f, 6);
        float dp[6] = {0};
        double loss;
        ck_assert_int_eq(l1 ? emoe_l1_loss(&loss, dp, p, t, 6, &err)
                            : emoe_mse_loss(&loss, dp, p, t, 6, &err),
                         EMOE_OK);
        ck_assert_msg(fabs(loss - tl[0]) <= 1e-5 * (1 + fabs(tl[0])), "%s loss", name);
        assert_close(dp, tdp, 6, 1e-6, 1e-4, name);
        ck_assert(p[2] == t[2]); /* the fixture's tie; L1's gradient there is 0 */
        free(p), free(t), free(tl), free(tdp);
    }
}
END_TEST

static Suite *layers_suite(void)
{
    Suite *s = suite_create("layers");
    TCase *tc = tcase_create("gradients");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_linear_forward_and_gradients);
    tcase_add_test(tc, test_layernorm_forward_and_gradients);
    tcase_add_test(tc, test_layernorm_threaded_is_deterministic);
    tcase_add_test(tc, test_gelu_forward_and_gradients);
    tcase_add_test(tc, test_nnmath_accuracy);
    tcase_add_test(tc, test_nnmath_avx2_accuracy);
    tcase_add_test(tc, test_gelu_generic_and_default_paths);
    tcase_add_test(tc, test_threaded_elementwise_against_double);
    tcase_add_test(tc, test_attention_forward_and_gradients);
    tcase_add_test(tc, test_attention_threaded_matches_naive);
    tcase_add_test(tc, test_patch_embed_2d);
    tcase_add_test(tc, test_patch_embed_3d);
    tcase_add_test(tc, test_embed_forward_and_gradients);
    tcase_add_test(tc, test_token_gather);
    tcase_add_test(tc, test_cross_entropy_gradients);
    tcase_add_test(tc, test_cross_entropy_label_smoothing_by_hand);
    tcase_add_test(tc, test_regression_losses);
    suite_add_tcase(s, tc);
    TCase *gold = tcase_create("pytorch");
    tcase_add_test(gold, test_linear_golden);
    tcase_add_test(gold, test_layernorm_golden);
    tcase_add_test(gold, test_gelu_golden);
    tcase_add_test(gold, test_attention_golden);
    tcase_add_test(gold, test_patch_embed_golden);
    tcase_add_test(gold, test_embed_golden);
    tcase_add_test(gold, test_resample_golden);
    tcase_add_test(tc, test_resample3d_linear_field);
    tcase_add_test(tc, test_resample3d_matches_2d_per_axis);
    tcase_add_test(gold, test_cross_entropy_golden);
    tcase_add_test(gold, test_regression_golden);
    suite_add_tcase(s, gold);
    TCase *bad = tcase_create("malformed");
    tcase_add_test(bad, test_resample_rejects_bad_arguments);
    tcase_add_test(bad, test_cross_entropy_rejects_bad_input);
    suite_add_tcase(s, bad);
    return s;
}

int main(void)
{
    return tu_run(layers_suite());
}
