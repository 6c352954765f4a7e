/*
 * check_optim.c: unit tests of lib/optim.c (AdamW, schedules, clipping), lib/rng.c
 * (Philox4x32-10 and its helpers) and lib/augment.c.
 */
#include "config.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ rng */

START_TEST(test_philox_known_answers)
{
    /* Random123's kat_vectors for philox4x32_10 */
    uint32_t out[4];
    const uint32_t c0[4] = {0, 0, 0, 0}, k0[2] = {0, 0};
    emoe_philox4x32(c0, k0, out);
    ck_assert_uint_eq(out[0], 0x6627e8d5u);
    ck_assert_uint_eq(out[1], 0xe169c58du);
    ck_assert_uint_eq(out[2], 0xbc57ac4cu);
    ck_assert_uint_eq(out[3], 0x9b00dbd8u);
    const uint32_t c1[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
    const uint32_t k1[2] = {0xffffffffu, 0xffffffffu};
    emoe_philox4x32(c1, k1, out);
    ck_assert_uint_eq(out[0], 0x408f276du);
    ck_assert_uint_eq(out[1], 0x41c83b0eu);
    ck_assert_uint_eq(out[2], 0xa20bc7c6u);
    ck_assert_uint_eq(out[3], 0x6d5451fdu);
    const uint32_t c2[4] = {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u};
    const uint32_t k2[2] = {0xa4093822u, 0x299f31d0u};
    emoe_philox4x32(c2, k2, out);
    ck_assert_uint_eq(out[0], 0xd16cfe09u);
    ck_assert_uint_eq(out[1], 0x94fdccebu);
    ck_assert_uint_eq(out[2], 0x5001e420u);
    ck_assert_uint_eq(out[3], 0x24126ea1u);
}
END_TEST

START_TEST(test_rng_streams_and_distributions)
{
    struct emoe_rng a, b;
    emoe_rng_init(&a, 1, 2);
    emoe_rng_init(&b, 1, 2);
    for (int i = 0; i < 10; i++)
        ck_assert_uint_eq(emoe_rng_u32(&a), emoe_rng_u32(&b));
    /* the position is the whole state: a restored generator continues the stream */
    struct emoe_rng c = a;
    ck_assert_uint_eq(emoe_rng_u32(&a), emoe_rng_u32(&c));
    emoe_rng_init(&b, 1, 3);
    emoe_rng_init(&a, 1, 2);
    ck_assert_uint_ne(emoe_rng_u32(&a), emoe_rng_u32(&b));
    double s = 0, s2 = 0, n = 20000;
    int hist[7] = {0};
    emoe_rng_init(&a, 9, 0);
    for (int i = 0; i < (int)n; i++) {
        float u = emoe_rng_uniform(&a);
        ck_assert(u >= 0.0f && u < 1.0f);
        float z = emoe_rng_normal(&a);
        s += z;
        s2 += (double)z * z;
        hist[emoe_rng_below(&a, 7)]++;
    }
    ck_assert_double_lt(fabs(s / n), 0.03);
    ck_assert_double_lt(fabs(s2 / n - 1.0), 0.05);
    for (int i = 0; i < 7; i++)
        ck_assert_int_gt(hist[i], 2500);
    size_t idx[50], seen[50] = {0};
    for (size_t i = 0; i < 50; i++)
        idx[i] = i;
    emoe_rng_shuffle(idx, 50, 3, 0);
    int moved = 0;
    for (size_t i = 0; i < 50; i++) {
        seen[idx[i]]++;
        moved += idx[i] != i;
    }
    for (size_t i = 0; i < 50; i++)
        ck_assert_uint_eq(seen[i], 1);
    ck_assert_int_gt(moved, 30);
    ck_assert_uint_ne(emoe_seed_derive(1, 1), emoe_seed_derive(1, 2));
}
END_TEST

/* ---------------------------------------------------------------- AdamW */

static struct emoe_model *small_model(void)
{
    struct emoe_error err = {0};
    struct emoe_vit_config c;
    ck_assert_int_eq(emoe_vit_preset("vit-micro", &c, &err), EMOE_OK);
    c.image_size[0] = c.image_size[1] = 8;
    c.embed_dim = 8;
    c.num_heads = 2;
    c.depth = 1;
    c.mlp_dim = 8;
    c.num_classes = 3;
    struct emoe_model *m;
    ck_assert_int_eq(emoe_model_new(&c, NULL, 0, &m, &err), EMOE_OK);
    return m;
}

START_TEST(test_adamw_matches_reference)
{
    struct emoe_error err = {0};
    struct emoe_model *m = small_model();
    size_t cnt;
    ck_assert_int_eq(emoe_model_set_trainable(m, "vit.blocks.*", 0, &cnt, &err), EMOE_OK);
    struct emoe_adamw_config ac;
    emoe_adamw_config_init(&ac);
    ac.weight_decay = 0.1f;
    struct emoe_adamw *o;
    ck_assert_int_eq(emoe_adamw_new(m, &ac, &o, &err), EMOE_OK);
    struct emoe_param *w = emoe_model_param(m, "vit.head.weight");  /* decays */
    struct emoe_param *b = emoe_model_param(m, "vit.head.bias");    /* no decay */
    struct emoe_param *fr = emoe_model_param(m, "vit.blocks.0.mlp.fc1.weight"); /* frozen */
    ck_assert_ptr_null(fr->grad);
    float fr0 = fr->data[1];
    double pw = w->data[2], pb = 0.25, mw = 0, vw = 0, mb = 0, vb = 0;
    b->data[1] = 0.25f;
    const double lr = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
    for (int t = 1; t <= 3; t++) {
        emoe_model_zero_grad(m);
        double gw = 0.5 * t - 1.0, gb = 0.3 / t;
        w->grad[2] = (float)gw;
        b->grad[1] = (float)gb;
        ck_assert_int_eq(emoe_adamw_step(o, lr, &err), EMOE_OK);
        double bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
        pw *= 1 - lr * wd;
        mw = b1 * mw + (1 - b1) * gw;
        vw = b2 * vw + (1 - b2) * gw * gw;
        pw -= lr / bc1 * mw / (sqrt(vw) / sqrt(bc2) + eps);
        mb = b1 * mb + (1 - b1) * gb;
        vb = b2 * vb + (1 - b2) * gb * gb;
        pb -= lr / bc1 * mb / (sqrt(vb) / sqrt(bc2) + eps);
        ck_assert_double_eq_tol(w->data[2], pw, 1e-6);
        ck_assert_double_eq_tol(b->data[1], pb, 1e-6);
    }
    ck_assert_int_eq(emoe_adamw_get_step(o), 3);
    ck_assert(fr->data[1] == fr0);
    /* changing what is trainable after making the optimizer is refused */
    ck_assert_int_eq(emoe_model_set_trainable(m, "vit.norm.*", 0, &cnt, &err), EMOE_OK);
    tu_assert_error(emoe_adamw_step(o, lr, &err), err, EMOE_EINVAL, "trainable params changed");
    emoe_adamw_free(o);
    ac.beta1 = 1.0f;
    tu_assert_error(emoe_adamw_new(m, &ac, &o, &err), err, EMOE_EINVAL, "beta1 1");
    ck_assert_ptr_null(o);
    emoe_model_free(m);
}
END_TEST

START_TEST(test_lr_schedules)
{
    struct emoe_lr_schedule s = {EMOE_LR_COSINE, 1.0, 0.1, 10, 110};
    ck_assert_double_eq_tol(emoe_lr_at(&s, 0), 0.1, 1e-12);
    ck_assert_double_eq_tol(emoe_lr_at(&s, 9), 1.0, 1e-12);
    ck_assert_double_eq_tol(emoe_lr_at(&s, 10), 1.0, 1e-12);
    ck_assert_double_eq_tol(emoe_lr_at(&s, 60), 0.55, 1e-12);
    ck_assert_double_eq_tol(emoe_lr_at(&s, 110), 0.1, 1e-12);
    ck_assert_double_eq_tol(emoe_lr_at(&s, 500), 0.1, 1e-12);
    s.kind = EMOE_LR_LINEAR;
    ck_assert_double_eq_tol(emoe_lr_at(&s, 35), 0.1 + 0.9 * 0.75, 1e-12);
    s.kind = EMOE_LR_CONSTANT;
    ck_assert_double_eq_tol(emoe_lr_at(&s, 80), 1.0, 1e-12);
    s.warmup = 0;
    ck_assert_double_eq_tol(emoe_lr_at(&s, 0), 1.0, 1e-12);
}
END_TEST

START_TEST(test_clip_grad_norm)
{
    struct emoe_error err = {0};
    size_t n = 40000;
    float *g = malloc(n * sizeof *g);
    for (size_t i = 0; i < n; i++)
        g[i] = (i % 2) ? 0.01f : -0.01f; /* norm 2 */
    double nrm;
    ck_assert_int_eq(emoe_clip_grad_norm(g, n, 0.0, &nrm, &err), EMOE_OK);
    ck_assert_double_eq_tol(nrm, 2.0, 1e-6);
    ck_assert(g[0] == -0.01f);
    ck_assert_int_eq(emoe_clip_grad_norm(g, n, 1.0, &nrm, &err), EMOE_OK);
    ck_assert_double_eq_tol(nrm, 2.0, 1e-6);
    ck_assert_int_eq(emoe_clip_grad_norm(g, n, 0.0, &nrm, &err), EMOE_OK);
    ck_assert_double_eq_tol(nrm, 1.0, 1e-5);
    g[7] = INFINITY;
    tu_assert_error(emoe_clip_grad_norm(g, n, 1.0, &nrm, &err), err, EMOE_ENUMERIC,
                    "not finite");
    ck_assert(g[0] != 0.0f);
    free(g);
}
END_TEST

/* ------------------------------------------------------------- augment */

START_TEST(test_augment)
{
    struct emoe_error err = {0};
    enum { B = 5, H = 6, W = 7, C = 3 };
    static unsigned char in[B * H * W * C], out[sizeof in], out2[sizeof in];
    for (size_t i = 0; i < sizeof in; i++)
        in[i] = (unsigned char)(i * 37 + 11);
    struct emoe_augment a;
    emoe_augment_init(&a);
    ck_assert_int_eq(emoe_augment_batch(&a, out, in, B, H, W, C, 1, 0, &err), EMOE_OK);
    ck_assert(memcmp(in, out, sizeof in) == 0); /* all off: a copy */
    /* full-scale, square-ratio resized crop of a square image is the identity */
    static unsigned char sq[2 * 8 * 8 * 3], sqo[sizeof sq];
    for (size_t i = 0; i < sizeof sq; i++)
        sq[i] = (unsigned char)(i * 13);
    a.resized_crop = 1;
    a.scale_min = a.scale_max = 1.0f;
    a.ratio_min = a.ratio_max = 1.0f;
    ck_assert_int_eq(emoe_augment_batch(&a, sqo, sq, 2, 8, 8, 3, 1, 0, &err), EMOE_OK);
    ck_assert(memcmp(sq, sqo, sizeof sq) == 0);
    /* flips: every image is itself or its mirror, and both occur */
    emoe_augment_init(&a);
    a.hflip = 1;
    int flipped = 0, kept = 0;
    for (uint64_t step = 0; step < 4; step++) {
        ck_assert_int_eq(emoe_augment_batch(&a, out, in, B, H, W, C, 1, step, &err), EMOE_OK);
        for (int b = 0; b < B; b++) {
            const unsigned char *s = in + (size_t)b * H * W * C, *d = out + (size_t)b * H * W * C;
            int same = memcmp(s, d, (size_t)H * W * C) == 0, mirror = 1;
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++)
                    if (memcmp(d + ((size_t)y * W + x) * C, s + ((size_t)y * W + W - 1 - x) * C,
                               C))
                        mirror = 0;
            ck_assert(same || mirror);
            flipped += mirror;
            kept += same;
        }
    }
    ck_assert_int_gt(flipped, 0);
    ck_assert_int_gt(kept, 0);
    /* padded crop: shifted content with zero borders; same result for 1 and 2 threads */
    emoe_augment_init(&a);
    a.crop_padding = 2;
    a.hflip = 1;
    a.resized_crop = 1;
    int old = emoe_threads_get();
    emoe_threads_set(1);
    ck_assert_int_eq(emoe_augment_batch(&a, out, in, B, H, W, C, 7, 3, &err), EMOE_OK);
    emoe_threads_set(2);
    ck_assert_int_eq(emoe_augment_batch(&a, out2, in, B, H, W, C, 7, 3, &err), EMOE_OK);
    emoe_threads_set(old);
    ck_assert(memcmp(out, out2, sizeof out) == 0);
    ck_assert(memcmp(out, in, sizeof out) != 0);
    a.scale_min = 2.0f;
    tu_assert_error(emoe_augment_batch(&a, out, in, B, H, W, C, 7, 3, &err), err, EMOE_EINVAL,
                    "scale");
    a.scale_min = 0.08f;
    tu_assert_error(emoe_augment_batch(&a, in, in, B, H, W, C, 7, 3, &err), err, EMOE_EINVAL,
                    "must not be the input");
}
END_TEST

START_TEST(test_augment_pad_crop_shift)
{
    struct emoe_error err = {0};
    enum { H = 5, W = 5 };
    unsigned char in[H * W], out[H * W];
    for (int i = 0; i < H * W; i++)
        in[i] = (unsigned char)(100 + i);
    struct emoe_augment a;
    emoe_augment_init(&a);
    a.crop_padding = 1;
    int found_shift = 0;
    for (uint64_t step = 0; step < 20; step++) {
        ck_assert_int_eq(emoe_augment_batch(&a, out, in, 1, H, W, 1, 3, step, &err), EMOE_OK);
        /* find the shift (dy, dx) in [-1, 1]^2 that explains every pixel */
        int ok_any = 0;
        for (int dy = -1; dy <= 1; dy++)
            for (int dx = -1; dx <= 1; dx++) {
                int ok = 1;
                for (int y = 0; y < H; y++)
                    for (int x = 0; x < W; x++) {
                        int sy = y + dy, sx = x + dx;
                        int want = (sy < 0 || sy >= H || sx < 0 || sx >= W) ? 0 : in[sy * W + sx];
                        if (out[y * W + x] != want)
                            ok = 0;
                    }
                if (ok) {
                    ok_any = 1;
                    found_shift |= dy != 0 || dx != 0;
                }
            }
        ck_assert(ok_any);
    }
    ck_assert(found_shift);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("optim");
    TCase *tc = tcase_create("optim");
    tcase_add_test(tc, test_philox_known_answers);
    tcase_add_test(tc, test_rng_streams_and_distributions);
    tcase_add_test(tc, test_adamw_matches_reference);
    tcase_add_test(tc, test_lr_schedules);
    tcase_add_test(tc, test_clip_grad_norm);
    tcase_add_test(tc, test_augment);
    tcase_add_test(tc, test_augment_pad_crop_shift);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run(suite());
}
