/*
 * augment.c: training-time augmentation of uint8 batches [B, H, W, C]: random
 * resized crop (torchvision's RandomResizedCrop parameters, bilinear resampling as
 * torch's interpolate with align_corners=False, no antialiasing), random crop with
 * zero padding (RandomCrop(size, padding)) and horizontal flip with probability 1/2,
 * applied in that order and composed into one coordinate map per image (no
 * intermediate image).  Image i of a call draws from the Philox stream
 * (derive(derive(seed, "augment"), step), i) only, so the result does not depend
 * on the thread count.
 */
#include "config.h"
#include "internal.h"

#include <math.h>
#include <string.h>

void emoe_augment_init(struct emoe_augment *a)
{
    memset(a, 0, sizeof *a);
    a->scale_min = 0.08f;
    a->scale_max = 1.0f;
    a->ratio_min = 3.0f / 4.0f;
    a->ratio_max = 4.0f / 3.0f;
}

struct aug_ctx {
    const struct emoe_augment *a;
    unsigned char *out;
    const unsigned char *in;
    int H, W, C;
    uint64_t key;
};

/* torchvision RandomResizedCrop.get_params: top i, left j, height h, width w. */
static void rrc_params(const struct emoe_augment *a, struct emoe_rng *r, int H, int W, int *i,
                       int *j, int *h, int *w)
{
    double area = (double)H * W;
    double lr0 = log(a->ratio_min), lr1 = log(a->ratio_max);
    for (int t = 0; t < 10; t++) {
        double target = area * (a->scale_min + (a->scale_max - a->scale_min) *
                                                   emoe_rng_uniform_double(r));
        double ar = exp(lr0 + (lr1 - lr0) * emoe_rng_uniform_double(r));
        int ww = (int)lround(sqrt(target * ar)), hh = (int)lround(sqrt(target / ar));
        if (ww > 0 && ww <= W && hh > 0 && hh <= H) {
            *i = (int)emoe_rng_below(r, (uint32_t)(H - hh + 1));
            *j = (int)emoe_rng_below(r, (uint32_t)(W - ww + 1));
            *h = hh;
            *w = ww;
            return;
        }
    }
    double in_ratio = (double)W / H;
    if (in_ratio < a->ratio_min) {
        *w = W;
        *h = (int)lround(W / a->ratio_min);
    } else if (in_ratio > a->ratio_max) {
        *h = H;
        *w = (int)lround(H * a->ratio_max);
    } else {
        *w = W;
        *h = H;
    }
    *i = (H - *h) / 2;
    *j = (W - *w) / 2;
}

/* Source coordinate and weight of output index o for a resize of n_in to n_out. */
static void lin(int o, int n_in, int n_out, int off, int *i0, int *i1, float *l)
{
    float s = ((float)o + 0.5f) * (float)n_in / (float)n_out - 0.5f;
    if (s < 0.0f)
        s = 0.0f;
    int k = (int)s;
    if (k > n_in - 1)
        k = n_in - 1;
    *i0 = off + k;
    *i1 = off + (k + 1 < n_in ? k + 1 : n_in - 1);
    *l = s - (float)k;
}

static void aug_item(void *vctx, size_t b)
{
    struct aug_ctx *c = vctx;
    const struct emoe_augment *a = c->a;
    int H = c->H, W = c->W, C = c->C;
    size_t isz = (size_t)H * W * C;
    const unsigned char *src = c->in + b * isz;
    unsigned char *dst = c->out + b * isz;
    struct emoe_rng r;
    emoe_rng_init(&r, c->key, b);
    int ci = 0, cj = 0, ch = H, cw = W, rrc = a->resized_crop != 0;
    if (rrc)
        rrc_params(a, &r, H, W, &ci, &cj, &ch, &cw);
    int pad = a->crop_padding > 0 ? a->crop_padding : 0, oy = 0, ox = 0;
    if (pad) {
        oy = (int)emoe_rng_below(&r, (uint32_t)(2 * pad + 1)) - pad;
        ox = (int)emoe_rng_below(&r, (uint32_t)(2 * pad + 1)) - pad;
    }
    int flip = a->hflip ? (int)(emoe_rng_u32(&r) >> 31) : 0;
    for (int y = 0; y < H; y++) {
        for (int x = 0; x < W; x++) {
            unsigned char *o = dst + ((size_t)y * W + x) * C;
            int xs = flip ? W - 1 - x : x;
            int yy = y + oy, xx = xs + ox; /* in the resized-crop image */
            if (yy < 0 || yy >= H || xx < 0 || xx >= W) {
                memset(o, 0, (size_t)C);
                continue;
            }
            if (!rrc) {
                memcpy(o, src + ((size_t)yy * W + xx) * C, (size_t)C);
                continue;
            }
            int y0, y1, x0, x1;
            float ly, lx;
            lin(yy, ch, H, ci, &y0, &y1, &ly);
            lin(xx, cw, W, cj, &x0, &x1, &lx);
            const unsigned char *p00 = src + ((size_t)y0 * W + x0) * C;
            const unsigned char *p01 = src + ((size_t)y0 * W + x1) * C;
            const unsigned char *p10 = src + ((size_t)y1 * W + x0) * C;
            const unsigned char *p11 = src + ((size_t)y1 * W + x1) * C;
            for (int k = 0; k < C; k++) {
                float top = p00[k] + (p01[k] - p00[k]) * lx;
                float bot = p10[k] + (p11[k] - p10[k]) * lx;
                float v = top + (bot - top) * ly;
                v = v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v;
                o[k] = (unsigned char)lrintf(v);
            }
        }
    }
}

int emoe_augment_batch(const struct emoe_augment *a, unsigned char *out,
                       const unsigned char *in, int B, int H, int W, int C, uint64_t seed,
                       uint64_t step, struct emoe_error *err)
{
    if (B < 0 || H < 1 || W < 1 || C < 1 || C > 4)
        return emoe_error_set(err, EMOE_EINVAL, "augment: bad batch shape (%d, %d, %d, %d)", B,
                              H, W, C);
    if (a->resized_crop &&
        !(a->scale_min > 0.0f && a->scale_min <= a->scale_max && a->scale_max <= 1.0f &&
          a->ratio_min > 0.0f && a->ratio_min <= a->ratio_max))
        return emoe_error_set(err, EMOE_EINVAL,
                              "augment: bad resized-crop scale (%g, %g) or ratio (%g, %g)",
                              (double)a->scale_min, (double)a->scale_max,
                              (double)a->ratio_min, (double)a->ratio_max);
    if (a->crop_padding < 0 || a->crop_padding > 65536)
        return emoe_error_set(err, EMOE_EINVAL, "augment: crop padding %d", a->crop_padding);
    if (out == in)
        return emoe_error_set(err, EMOE_EINVAL, "augment: output must not be the input");
    struct aug_ctx c = {a, out, in, H, W, C,
                        emoe_seed_derive(emoe_seed_derive(seed, 0x61756736 /* "aug" */), step)};
    emoe_parallel_for((size_t)B, aug_item, &c);
    return EMOE_OK;
}
