/*
 * check_image.c: unit tests of lib/image.c: JPEG decoding against libjpeg-turbo's own
 * decode, gray/CMYK colour spaces, DCT-scaled decoding against full-size decode plus
 * resize, corrupt and truncated JPEGs, and the resize/crop arithmetic.
 */
#include "config.h"
#include "testutil.h"

#include <jpeglib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ----------------------------------------------------- test JPEG helpers */

/* Encode pixels [h, w, comps] with libjpeg; in_space JCS_RGB, JCS_GRAYSCALE or JCS_CMYK. */
static unsigned char *encode(const unsigned char *px, int w, int h, int comps,
                             J_COLOR_SPACE in_space, int quality, unsigned long *size)
{
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    unsigned char *buf = NULL;
    *size = 0;
    jpeg_mem_dest(&c, &buf, size);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = comps;
    c.in_color_space = in_space;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, quality, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(px + (size_t)c.next_scanline * w * comps);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    return buf;
}

/* Independent decode with plain libjpeg (default error handling: tests only pass it
 * valid JPEGs). */
static unsigned char *ref_decode(const unsigned char *jpg, unsigned long size,
                                 J_COLOR_SPACE out_space, int denom, int *w, int *h)
{
    struct jpeg_decompress_struct d;
    struct jpeg_error_mgr e;
    d.err = jpeg_std_error(&e);
    jpeg_create_decompress(&d);
    jpeg_mem_src(&d, jpg, size);
    jpeg_read_header(&d, TRUE);
    d.out_color_space = out_space;
    d.scale_num = 1;
    d.scale_denom = (unsigned)denom;
    d.dct_method = JDCT_ISLOW;
    jpeg_start_decompress(&d);
    size_t stride = (size_t)d.output_width * d.output_components;
    unsigned char *p = malloc(stride * d.output_height);
    while (d.output_scanline < d.output_height) {
        JSAMPROW row = p + stride * d.output_scanline;
        jpeg_read_scanlines(&d, &row, 1);
    }
    *w = (int)d.output_width;
    *h = (int)d.output_height;
    jpeg_finish_decompress(&d);
    jpeg_destroy_decompress(&d);
    return p;
}

/* A smooth test picture [h, w, 3]. */
static unsigned char *picture(int w, int h)
{
    unsigned char *p = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            unsigned char *q = p + ((size_t)y * w + x) * 3;
            q[0] = (unsigned char)(255.0 * x / (w - 1));
            q[1] = (unsigned char)(255.0 * y / (h - 1));
            q[2] = (unsigned char)(127.5 + 120 * sin(x * 0.05) * cos(y * 0.04));
        }
    return p;
}

/* ------------------------------------------------------------------ tests */

START_TEST(test_rgb_decode_matches_libjpeg)
{
    struct emoe_error err = {0};
    unsigned char *px = picture(97, 61);
    unsigned long n;
    unsigned char *jpg = encode(px, 97, 61, 3, JCS_RGB, 90, &n);
    int rw, rh;
    unsigned char *ref = ref_decode(jpg, n, JCS_RGB, 1, &rw, &rh);
    struct emoe_jpeg *j;
    ck_assert_int_eq(emoe_jpeg_new(&j, &err), EMOE_OK);
    struct emoe_jpeg_info info;
    ck_assert_int_eq(emoe_jpeg_read_info(j, jpg, n, "a.jpg", &info, &err), EMOE_OK);
    ck_assert_int_eq(info.width, 97);
    ck_assert_int_eq(info.height, 61);
    ck_assert_int_eq(info.components, 3);
    ck_assert_int_eq(info.cmyk, 0);
    unsigned char *got;
    int w, h;
    ck_assert_int_eq(emoe_jpeg_decode(j, jpg, n, "a.jpg", 3, 1, &got, &w, &h, &err), EMOE_OK);
    ck_assert_int_eq(w, rw);
    ck_assert_int_eq(h, rh);
    ck_assert_mem_eq(got, ref, (size_t)w * h * 3);
    free(got);
    free(ref);
    /* the 1/8 DCT scale, against libjpeg's own 1/8 decode */
    ref = ref_decode(jpg, n, JCS_RGB, 8, &rw, &rh);
    ck_assert_int_eq(emoe_jpeg_decode(j, jpg, n, "a.jpg", 3, 8, &got, &w, &h, &err), EMOE_OK);
    ck_assert_int_eq(w, 13); /* ceil(97 / 8) */
    ck_assert_int_eq(h, 8);
    ck_assert_mem_eq(got, ref, (size_t)w * h * 3);
    free(got);
    free(ref);
    emoe_jpeg_free(j);
    free(jpg);
    free(px);
}
END_TEST

START_TEST(test_square_decode_same_size_is_exact)
{
    struct emoe_error err = {0};
    unsigned char *px = picture(32, 32);
    unsigned long n;
    unsigned char *jpg = encode(px, 32, 32, 3, JCS_RGB, 75, &n);
    int rw, rh;
    unsigned char *ref = ref_decode(jpg, n, JCS_RGB, 1, &rw, &rh);
    struct emoe_jpeg *j;
    ck_assert_int_eq(emoe_jpeg_new(&j, &err), EMOE_OK);
    unsigned char out[32 * 32 * 3];
    ck_assert_int_eq(emoe_jpeg_decode_square(j, jpg, n, "x", 3, 32, out, &err), EMOE_OK);
    ck_assert_mem_eq(out, ref, sizeof out);
    /* gray output from a colour JPEG is libjpeg's own luma */
    unsigned char *gref = ref_decode(jpg, n, JCS_GRAYSCALE, 1, &rw, &rh);
    unsigned char g[32 * 32];
    ck_assert_int_eq(emoe_jpeg_decode_square(j, jpg, n, "x", 1, 32, g, &err), EMOE_OK);
    ck_assert_mem_eq(g, gref, sizeof g);
    free(gref);
    emoe_jpeg_free(j);
    free(ref);
    free(jpg);
    free(px);
}
END_TEST

START_TEST(test_grayscale_jpeg)
{
    struct emoe_error err = {0};
    int w = 40, h = 24;
    unsigned char *px = malloc((size_t)w * h);
    for (int i = 0; i < w * h; i++)
        px[i] = (unsigned char)((i % w) * 6);
    unsigned long n;
    unsigned char *jpg = encode(px, w, h, 1, JCS_GRAYSCALE, 95, &n);
    int rw, rh;
    unsigned char *ref = ref_decode(jpg, n, JCS_GRAYSCALE, 1, &rw, &rh);
    struct emoe_jpeg *j;
    ck_assert_int_eq(emoe_jpeg_new(&j, &err), EMOE_OK);
    struct emoe_jpeg_info info;
    ck_assert_int_eq(emoe_jpeg_read_info(j, jpg, n, NULL, &info, &err), EMOE_OK);
    ck_assert_int_eq(info.components, 1);
    unsigned char *got;
    int gw, gh;
    ck_assert_int_eq(emoe_jpeg_decode(j, jpg, n, NULL, 3, 1, &got, &gw, &gh, &err), EMOE_OK);
    for (int i = 0; i < w * h; i++) {
        ck_assert_uint_eq(got[3 * i], ref[i]);
        ck_assert_uint_eq(got[3 * i + 1], ref[i]);
        ck_assert_uint_eq(got[3 * i + 2], ref[i]);
    }
    free(got);
    ck_assert_int_eq(emoe_jpeg_decode(j, jpg, n, NULL, 1, 1, &got, &gw, &gh, &err), EMOE_OK);
    ck_assert_mem_eq(got, ref, (size_t)w * h);
    free(got);
    free(ref);
    emoe_jpeg_free(j);
    free(jpg);
    free(px);
}
END_TEST

START_TEST(test_cmyk_jpeg)
{
    struct emoe_error err = {0};
    int w = 16, h = 16;
    /* Adobe-style inverted CMYK: with K = 255 the channels are R, G, B */
    unsigned char *px = malloc((size_t)w * h * 4);
    for (int i = 0; i < w * h; i++) {
        px[4 * i] = 200;
        px[4 * i + 1] = 100;
        px[4 * i + 2] = 30;
        px[4 * i + 3] = 255;
    }
    unsigned long n;
    unsigned char *jpg = encode(px, w, h, 4, JCS_CMYK, 100, &n);
    struct emoe_jpeg *j;
    ck_assert_int_eq(emoe_jpeg_new(&j, &err), EMOE_OK);
    struct emoe_jpeg_info info;
    ck_assert_int_eq(emoe_jpeg_read_info(j, jpg, n, NULL, &info, &err), EMOE_OK);
    ck_assert_int_eq(info.cmyk, 1);
    ck_assert_int_eq(info.components, 4);
    unsigned char out[16 * 16 * 3];
    ck_assert_int_eq(emoe_jpeg_decode_square(j, jpg, n, NULL, 3, 16, out, &err), EMOE_OK);
    for (int i = 0; i < w * h; i++) {
        ck_assert_int_le(abs(out[3 * i] - 200), 2);
        ck_assert_int_le(abs(out[3 * i + 1] - 100), 2);
        ck_assert_int_le(abs(out[3 * i + 2] - 30), 2);
    }
    unsigned char g[16 * 16];
    ck_assert_int_eq(emoe_jpeg_decode_square(j, jpg, n, NULL, 1, 16, g, &err), EMOE_OK);
    int want = (int)lround(0.299 * 200 + 0.587 * 100 + 0.114 * 30);
    for (int i = 0; i < w * h; i++)
        ck_assert_int_le(abs(g[i] - want), 2);
    /* half K darkens */
    for (int i = 0; i < w * h; i++)
        px[4 * i + 3] = 128;
    free(jpg);
    jpg = encode(px, w, h, 4, JCS_CMYK, 100, &n);
    ck_assert_int_eq(emoe_jpeg_decode_square(j, jpg, n, NULL, 3, 16, out, &err), EMOE_OK);
    ck_assert_int_le(abs(out[0] - 100), 2);
    ck_assert_int_le(abs(out[1] - 50), 2);
    emoe_jpeg_free(j);
    free(jpg);
    free(px);
}
END_TEST

START_TEST(test_dct_scaled_close_to_full_resize)
{
    struct emoe_error err = {0};
    int w = 400, h = 300;
    unsigned char *px = picture(w, h);
    unsigned long n;
    unsigned char *jpg = encode(px, w, h, 3, JCS_RGB, 92, &n);
    ck_assert_int_eq(emoe_jpeg_pick_scale(w, h, 32), 8);  /* 38 >= 32 */
    ck_assert_int_eq(emoe_jpeg_pick_scale(w, h, 40), 4);  /* 75 >= 40, 38 < 40 */
    ck_assert_int_eq(emoe_jpeg_pick_scale(w, h, 224), 1);
    ck_assert_int_eq(emoe_jpeg_pick_scale(w, h, 150), 2);
    struct emoe_jpeg *j;
    ck_assert_int_eq(emoe_jpeg_new(&j, &err), EMOE_OK);
    unsigned char *full;
    int fw, fh;
    ck_assert_int_eq(emoe_jpeg_decode(j, jpg, n, NULL, 3, 1, &full, &fw, &fh, &err), EMOE_OK);
    const int sizes[] = {32, 40, 100, 224};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        int N = sizes[s];
        unsigned char *a = malloc((size_t)N * N * 3), *b = malloc((size_t)N * N * 3);
        ck_assert_int_eq(emoe_jpeg_decode_square(j, jpg, n, NULL, 3, N, a, &err), EMOE_OK);
        ck_assert_int_eq(emoe_image_resize_crop(full, fw, fh, 3, N, b, &err), EMOE_OK);
        double sum = 0;
        int maxd = 0;
        for (int i = 0; i < N * N * 3; i++) {
            int d = abs(a[i] - b[i]);
            sum += d;
            if (d > maxd)
                maxd = d;
        }
        double mean = sum / (N * N * 3);
        ck_assert_msg(mean < 3.0 && maxd < 24, "size %d: mean diff %.2f, max %d", N, mean, maxd);
        free(a);
        free(b);
    }
    free(full);
    emoe_jpeg_free(j);
    free(jpg);
    free(px);
}
END_TEST

START_TEST(test_corrupt_and_truncated_jpeg)
{
    struct emoe_error err = {0};
    unsigned char *px = picture(64, 64);
    unsigned long n;
    unsigned char *jpg = encode(px, 64, 64, 3, JCS_RGB, 90, &n);
    struct emoe_jpeg *j;
    ck_assert_int_eq(emoe_jpeg_new(&j, &err), EMOE_OK);
    unsigned char out[64 * 64 * 3];
    /* truncated in the entropy-coded data */
    int rc = emoe_jpeg_decode_square(j, jpg, n / 2, "cls/t.jpg", 3, 64, out, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "cls/t.jpg: corrupt JPEG");
    /* truncated in the header */
    rc = emoe_jpeg_decode_square(j, jpg, 20, "h.jpg", 3, 64, out, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "h.jpg: corrupt JPEG");
    /* not a JPEG at all */
    rc = emoe_jpeg_decode_square(j, "hello world, not a jpeg", 23, "x.jpg", 3, 64, out, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "x.jpg: corrupt JPEG");
    rc = emoe_jpeg_decode_square(j, "", 0, "e.jpg", 3, 64, out, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "e.jpg: empty JPEG data");
    struct emoe_jpeg_info info;
    rc = emoe_jpeg_read_info(j, jpg, 10, "i.jpg", &info, &err);
    tu_assert_error(rc, err, EMOE_EFORMAT, "i.jpg: corrupt JPEG");
    /* garbage in the scan data */
    unsigned char *bad = malloc(n);
    memcpy(bad, jpg, n);
    for (unsigned long i = n / 3; i < n - 2; i += 7)
        bad[i] = 0xff;
    rc = emoe_jpeg_decode_square(j, bad, n, "g.jpg", 3, 64, out, &err);
    ck_assert_int_ne(rc, EMOE_OK);
    ck_assert_ptr_nonnull(strstr(err.msg, "g.jpg: corrupt JPEG"));
    free(bad);
    /* the decoder is still usable after errors */
    int rw, rh;
    unsigned char *ref = ref_decode(jpg, n, JCS_RGB, 1, &rw, &rh);
    ck_assert_int_eq(emoe_jpeg_decode_square(j, jpg, n, "ok.jpg", 3, 64, out, &err), EMOE_OK);
    ck_assert_mem_eq(out, ref, sizeof out);
    free(ref);
    emoe_jpeg_free(j);
    free(jpg);
    free(px);
}
END_TEST

START_TEST(test_bad_arguments)
{
    struct emoe_error err = {0};
    struct emoe_jpeg *j;
    ck_assert_int_eq(emoe_jpeg_new(&j, &err), EMOE_OK);
    unsigned char out[4];
    tu_assert_error(emoe_jpeg_decode_square(j, "x", 1, NULL, 2, 1, out, &err), err, EMOE_EINVAL,
                    "channels");
    tu_assert_error(emoe_jpeg_decode_square(j, "x", 1, NULL, 3, 0, out, &err), err, EMOE_EINVAL,
                    "output size");
    unsigned char *p;
    int w, h;
    tu_assert_error(emoe_jpeg_decode(j, "x", 1, NULL, 3, 3, &p, &w, &h, &err), err,
                    EMOE_EINVAL, "scale");
    ck_assert_ptr_null(p);
    tu_assert_error(emoe_image_resize_crop(out, 0, 1, 3, 1, out, &err), err, EMOE_EINVAL,
                    "bad resize");
    emoe_jpeg_free(j);
    emoe_jpeg_free(NULL);
}
END_TEST

START_TEST(test_resize_area_and_crop)
{
    struct emoe_error err = {0};
    /* 4x4 gray, 2x2 blocks: area halving gives the block means exactly */
    unsigned char src[16] = {10, 20, 100, 100, 30, 40, 100, 100, 0, 0, 255, 255, 0, 4, 255, 255};
    unsigned char dst[4];
    ck_assert_int_eq(emoe_image_resize_crop(src, 4, 4, 1, 2, dst, &err), EMOE_OK);
    ck_assert_uint_eq(dst[0], 25);
    ck_assert_uint_eq(dst[1], 100);
    ck_assert_uint_eq(dst[2], 1);
    ck_assert_uint_eq(dst[3], 255);
    /* wide image, shorter side already n: a centre crop only */
    unsigned char wide[12] = {0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15};
    ck_assert_int_eq(emoe_image_resize_crop(wide, 6, 2, 1, 2, dst, &err), EMOE_OK);
    ck_assert_uint_eq(dst[0], 2);
    ck_assert_uint_eq(dst[1], 3);
    ck_assert_uint_eq(dst[2], 12);
    ck_assert_uint_eq(dst[3], 13);
    /* a constant colour image stays constant when enlarged and when shrunk */
    unsigned char c3[5 * 7 * 3];
    for (int i = 0; i < 5 * 7; i++) {
        c3[3 * i] = 7;
        c3[3 * i + 1] = 130;
        c3[3 * i + 2] = 250;
    }
    unsigned char big[11 * 11 * 3], small[3 * 3 * 3];
    ck_assert_int_eq(emoe_image_resize_crop(c3, 5, 7, 3, 11, big, &err), EMOE_OK);
    for (int i = 0; i < 11 * 11; i++) {
        ck_assert_uint_eq(big[3 * i], 7);
        ck_assert_uint_eq(big[3 * i + 1], 130);
        ck_assert_uint_eq(big[3 * i + 2], 250);
    }
    ck_assert_int_eq(emoe_image_resize_crop(c3, 5, 7, 3, 3, small, &err), EMOE_OK);
    for (int i = 0; i < 9; i++)
        ck_assert_uint_eq(small[3 * i + 1], 130);
    /* bilinear doubling of a 2-pixel ramp (half-pixel centres, clamped edges) */
    unsigned char ramp[2] = {0, 100}, r4[16];
    ck_assert_int_eq(emoe_image_resize_crop(ramp, 2, 1, 1, 4, r4, &err), EMOE_OK);
    /* 2x1 -> shorter side 1 -> 4: scale 4, width 8, crop columns 2..5 of the 8 */
    ck_assert_uint_eq(r4[0], 13); /* output column 2 of 8: source 0.125 -> 12.5 */
    ck_assert_uint_le(r4[0], r4[1]);
    ck_assert_uint_le(r4[1], r4[2]);
    ck_assert_uint_le(r4[2], r4[3]);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("image");
    TCase *tc = tcase_create("image");
    tcase_add_test(tc, test_rgb_decode_matches_libjpeg);
    tcase_add_test(tc, test_square_decode_same_size_is_exact);
    tcase_add_test(tc, test_grayscale_jpeg);
    tcase_add_test(tc, test_cmyk_jpeg);
    tcase_add_test(tc, test_dct_scaled_close_to_full_resize);
    tcase_add_test(tc, test_corrupt_and_truncated_jpeg);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_resize_area_and_crop);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run(suite());
}
