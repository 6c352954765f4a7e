/*
 * prep_synthetic.c: a procedural labelled dataset for demos and tests, deterministic
 * by the seed (each image has its own generator seeded from (seed, index), so the
 * result does not depend on the thread count).
 *   images:  8 classes of shapes and textures with random colours (foreground and
 *            background at least 80 apart in mean level), position, scale (radius
 *            0.22 to 0.35 of the side; stripe periods 0.4 to 0.6 of it) and noise (up
 *            to +-20); uint8 [N, S, S, C].  Sized so that a small ViT learns it within
 *            a minute on 2 cores (the demo: about 0.75 top-1, chance 0.125).
 *   volumes: 3-D "brains" whose target (an age in [20, 80)) widens the ventricles and
 *            thins the cortex; float32 [N, S, S, S, 1], normalised per volume.
 * The number of images: --per-class K per class, else --limit, else 100 per class.
 */
#include "config.h"
#include "data.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const shape_names[] = {"circle",  "square",     "triangle",   "cross",
                                          "ring",    "h-stripes",  "v-stripes",  "checker"};
#define NSHAPES 8

static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

struct rng {
    uint64_t s;
};

static uint64_t rnext(struct rng *r)
{
    return mix(r->s += 0x9e3779b97f4a7c15ull);
}

static double runif(struct rng *r) /* [0, 1) */
{
    return (double)(rnext(r) >> 11) * (1.0 / 9007199254740992.0);
}

struct synth {
    const struct emoe_prep_options *o;
    struct collector *c;
    size_t first;
    int side, channels;
    float *targets;
};

static void make_image(void *ctx, size_t i)
{
    struct synth *sy = ctx;
    struct rng r = {mix(sy->o->seed * 0x100000001b3ull + i + 1)};
    int S = sy->side, C = sy->channels, cls = (int)(i % NSHAPES);
    unsigned char *out = collector_slot(sy->c, sy->first + i);
    double bg[3], fg[3];
    for (;;) {
        double lb = 0, lf = 0;
        for (int k = 0; k < 3; k++) {
            bg[k] = 255 * runif(&r);
            fg[k] = 255 * runif(&r);
            lb += bg[k] / 3;
            lf += fg[k] / 3;
        }
        if (fabs(lb - lf) > 80)
            break;
    }
    double cx = S * (0.3 + 0.4 * runif(&r)), cy = S * (0.3 + 0.4 * runif(&r));
    double rad = S * (0.22 + 0.13 * runif(&r));
    double period = rad * (0.4 + 0.2 * runif(&r));
    double noise = 20 * runif(&r);
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            double dx = x + 0.5 - cx, dy = y + 0.5 - cy;
            double ax = fabs(dx), ay = fabs(dy);
            int in = 0;
            switch (cls) {
            case 0: in = dx * dx + dy * dy < rad * rad; break;
            case 1: in = ax < rad * 0.8 && ay < rad * 0.8; break;
            case 2: in = dy > -rad && dy < rad && ax < (dy + rad) * 0.5; break;
            case 3: in = (ax < rad / 3 && ay < rad) || (ay < rad / 3 && ax < rad); break;
            case 4: {
                double d2 = dx * dx + dy * dy;
                in = d2 < rad * rad && d2 > 0.36 * rad * rad;
                break;
            }
            case 5: in = ax < rad && ay < rad && ((int)floor((dy + rad) / period) & 1); break;
            case 6: in = ax < rad && ay < rad && ((int)floor((dx + rad) / period) & 1); break;
            default:
                in = ax < rad && ay < rad &&
                     (((int)floor((dx + rad) / period) + (int)floor((dy + rad) / period)) & 1);
                break;
            }
            const double *col = in ? fg : bg;
            double n = noise * (2 * runif(&r) - 1);
            unsigned char *p = out + ((size_t)y * S + x) * C;
            if (C == 3) {
                for (int k = 0; k < 3; k++) {
                    double v = col[k] + n;
                    p[k] = (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v + 0.5);
                }
            } else {
                double v = 0.299 * col[0] + 0.587 * col[1] + 0.114 * col[2] + n;
                p[0] = (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v + 0.5);
            }
        }
}

static void make_volume(void *ctx, size_t i)
{
    struct synth *sy = ctx;
    struct rng r = {mix(sy->o->seed * 0x100000001b3ull + i + 1)};
    int S = sy->side;
    float *out = (float *)(void *)collector_slot(sy->c, sy->first + i);
    double age = 20 + 60 * runif(&r);
    double a = (age - 20) / 60; /* 0 .. 1 */
    /* head: an ellipsoid with random proportions and a small random offset */
    double rx = 0.40 * (0.9 + 0.2 * runif(&r)), ry = 0.44 * (0.9 + 0.2 * runif(&r)),
           rz = 0.38 * (0.9 + 0.2 * runif(&r));
    double ox = 0.5 + 0.04 * (runif(&r) - 0.5), oy = 0.5 + 0.04 * (runif(&r) - 0.5),
           oz = 0.5 + 0.04 * (runif(&r) - 0.5);
    double cortex = 0.16 - 0.08 * a;            /* thinner with age */
    double vent = 0.10 + 0.18 * a;              /* wider ventricles with age */
    double noise = 0.05 + 0.05 * runif(&r);
    for (int z = 0; z < S; z++)
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                double px = ((x + 0.5) / S - ox) / rx, py = ((y + 0.5) / S - oy) / ry,
                       pz = ((z + 0.5) / S - oz) / rz;
                double d = sqrt(px * px + py * py + pz * pz);
                double v = 0;
                if (d < 1) {
                    v = d > 1 - cortex ? 0.9 : 0.6;          /* grey then white matter */
                    double vx = px / vent, vy = py / (vent * 0.5), vz = pz / (vent * 0.7);
                    if (vx * vx + vy * vy + vz * vz < 1)
                        v = 0.15;                           /* ventricles (CSF) */
                }
                v += noise * (2 * runif(&r) - 1);
                out[((size_t)z * S + y) * S + x] = (float)v;
            }
    /* normalise per volume, as the NIfTI reader does */
    size_t n = (size_t)S * S * S;
    double s = 0, q = 0;
    for (size_t k = 0; k < n; k++)
        s += out[k];
    double m = s / (double)n;
    for (size_t k = 0; k < n; k++)
        q += (out[k] - m) * (out[k] - m);
    double sd = sqrt(q / (double)n);
    for (size_t k = 0; k < n; k++)
        out[k] = (float)((out[k] - m) / (sd > 0 ? sd : 1));
    sy->targets[i] = (float)age;
}

int prep_read_synthetic(const struct emoe_prep_options *o, struct emoe_dataset **out,
                        struct emoe_error *err)
{
    struct collector c;
    struct synth sy = {o, &c, 0, o->size ? o->size : 32, o->channels ? o->channels : 3, NULL};
    size_t n = o->per_class ? o->per_class * NSHAPES : o->limit ? o->limit : 100 * NSHAPES;
    if (o->volumes) {
        n = o->limit ? o->limit : 100;
        if (sy.side > 512)
            return emoe_error_set(err, EMOE_ERANGE, "synthetic volumes of %d^3 are too large",
                                  sy.side);
    }
    if (o->per_class && n / NSHAPES != o->per_class)
        return emoe_error_set(err, EMOE_ERANGE, "too many images");
    int rc;
    if (o->volumes) {
        int64_t dims[4] = {sy.side, sy.side, sy.side, 1};
        rc = collector_init(&c, EMOE_F32, 4, dims, err);
        c.regression = 1;
    } else {
        int64_t dims[3] = {sy.side, sy.side, sy.channels};
        rc = collector_init(&c, EMOE_U8, 3, dims, err);
    }
    if (rc == EMOE_OK)
        rc = collector_reserve(&c, n, &sy.first, err);
    if (rc == EMOE_OK && o->volumes && !(sy.targets = calloc(n, sizeof *sy.targets)))
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    if (rc != EMOE_OK) {
        collector_free(&c);
        return rc;
    }
    emoe_parallel_for(n, o->volumes ? make_volume : make_image, &sy);
    for (size_t i = 0; rc == EMOE_OK && i < n; i++) {
        struct prep_item *it;
        rc = collector_add(&c, NULL, NULL, i, o->volumes ? 0 : (int64_t)(i % NSHAPES),
                           sy.first + i, &it, err);
        if (rc == EMOE_OK && o->volumes)
            it->target = sy.targets[i];
    }
    free(sy.targets);
    if (rc == EMOE_OK && !o->volumes)
        rc = collector_set_names(&c, (char *const *)shape_names, NSHAPES, err);
    if (rc != EMOE_OK) {
        collector_free(&c);
        return rc;
    }
    return collector_finish(&c, o, out, err);
}
