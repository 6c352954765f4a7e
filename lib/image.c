/*
 * image.c: JPEG decoding through libjpeg-turbo (from memory, with an error manager
 * that returns instead of exiting), DCT-domain downscaling, and the shorter-side
 * resize (area when shrinking, bilinear when enlarging) plus centre crop that turn
 * any photo into a uint8 [n, n, c] tile.
 */
#include "config.h"
#include "internal.h"

#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include <jerror.h>
#include <jpeglib.h>

/* Decoded images larger than this many pixels are refused (bounds memory). */
#define MAX_PIXELS ((size_t)1 << 28)

/* ------------------------------------------------------------ the decoder */

struct jerr {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
    int corrupt;            /* a warning that means damaged data was seen */
    char warn[JMSG_LENGTH_MAX];
};

struct emoe_jpeg {
    struct jpeg_decompress_struct cinfo;
    struct jerr jerr;
    unsigned char *buf;     /* scratch: the decoded (DCT-scaled) image */
    size_t buf_cap;
    float *rows;            /* scratch: horizontally resized rows */
    size_t rows_cap;
};

static void on_error(j_common_ptr c)
{
    struct jerr *e = (struct jerr *)c->err;
    (*c->err->format_message)(c, e->msg);
    longjmp(e->jb, 1);
}

static void on_message(j_common_ptr c, int level)
{
    struct jerr *e = (struct jerr *)c->err;
    if (level >= 0)
        return; /* trace messages */
    c->err->num_warnings++;
    int code = c->err->msg_code;
    if (!e->corrupt && (code == JWRN_JPEG_EOF || code == JWRN_HIT_MARKER ||
                        code == JWRN_MUST_RESYNC || code == JWRN_HUFF_BAD_CODE ||
                        code == JWRN_NOT_SEQUENTIAL)) {
        e->corrupt = 1;
        (*c->err->format_message)(c, e->warn);
    }
}

static void on_output(j_common_ptr c)
{
    (void)c; /* the library never prints */
}

int emoe_jpeg_new(struct emoe_jpeg **out, struct emoe_error *err)
{
    *out = NULL;
    struct emoe_jpeg *j = calloc(1, sizeof *j);
    if (!j)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    j->cinfo.err = jpeg_std_error(&j->jerr.pub);
    j->jerr.pub.error_exit = on_error;
    j->jerr.pub.emit_message = on_message;
    j->jerr.pub.output_message = on_output;
    if (setjmp(j->jerr.jb)) {
        free(j);
        return emoe_error_set(err, EMOE_ENOMEM, "cannot create a JPEG decoder");
    }
    jpeg_create_decompress(&j->cinfo);
    *out = j;
    return EMOE_OK;
}

void emoe_jpeg_free(struct emoe_jpeg *j)
{
    if (!j)
        return;
    jpeg_destroy_decompress(&j->cinfo);
    free(j->buf);
    free(j->rows);
    free(j);
}

static int grow(void **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = need + need / 4;
    void *q = malloc(n);
    if (!q)
        return -1;
    free(*p);
    *p = q;
    *cap = n;
    return 0;
}

/* The scale denominator in {1, 2, 4, 8} libjpeg will use: the largest whose scaled
 * shorter side is still >= target (1 when target <= 0). */
int emoe_jpeg_pick_scale(int width, int height, int target)
{
    int s = width < height ? width : height;
    if (target <= 0)
        return 1;
    for (int d = 8; d > 1; d /= 2)
        if ((s + d - 1) / d >= target)
            return d;
    return 1;
}

static int fail(struct emoe_jpeg *j, const char *name, int code, const char *what,
                struct emoe_error *err)
{
    jpeg_abort_decompress(&j->cinfo);
    return emoe_error_set(err, code, "%s%s%s", name ? name : "", name ? ": " : "", what);
}

/* CMYK as Adobe writes it (inverted) to RGB or gray, in place (4 -> c bytes per pixel). */
static void cmyk_convert(unsigned char *p, size_t npix, int channels)
{
    unsigned char *o = p;
    if (channels == 3) {
        for (size_t i = 0; i < npix; i++, p += 4, o += 3) {
            unsigned k = p[3];
            unsigned r = (p[0] * k + 127) / 255, g = (p[1] * k + 127) / 255,
                     b = (p[2] * k + 127) / 255;
            o[0] = (unsigned char)r;
            o[1] = (unsigned char)g;
            o[2] = (unsigned char)b;
        }
    } else {
        for (size_t i = 0; i < npix; i++, p += 4, o++) {
            unsigned k = p[3];
            unsigned r = (p[0] * k + 127) / 255, g = (p[1] * k + 127) / 255,
                     b = (p[2] * k + 127) / 255;
            /* ITU-R BT.601 luma, as libjpeg's rgb -> gray (fixed point, 16 bits) */
            *o = (unsigned char)((r * 19595u + g * 38470u + b * 7471u + 32768u) >> 16);
        }
    }
}

/*
 * Decode into j->buf at 1/denom scale with `channels` output channels; sets *w, *h.
 * name is for messages (may be NULL).
 */
static int decode_into_scratch(struct emoe_jpeg *j, const void *data, size_t size,
                               const char *name, int channels, int target, int denom_in,
                               int *w, int *h, struct emoe_error *err)
{
    struct jpeg_decompress_struct *ci = &j->cinfo;
    j->jerr.corrupt = 0;
    if (size == 0)
        return emoe_error_set(err, EMOE_EFORMAT, "%s%sempty JPEG data", name ? name : "",
                              name ? ": " : "");
    if (size > ULONG_MAX)
        return emoe_error_set(err, EMOE_ERANGE, "%s%sJPEG data too large", name ? name : "",
                              name ? ": " : "");
    if (setjmp(j->jerr.jb)) {
        char what[JMSG_LENGTH_MAX + 32];
        snprintf(what, sizeof what, "corrupt JPEG: %s", j->jerr.msg);
        return fail(j, name, EMOE_EFORMAT, what, err);
    }
    jpeg_mem_src(ci, (const unsigned char *)data, (unsigned long)size);
    jpeg_read_header(ci, TRUE);
    int cmyk = ci->jpeg_color_space == JCS_CMYK || ci->jpeg_color_space == JCS_YCCK;
    if (ci->num_components != 1 && ci->num_components != 3 && !cmyk)
        return fail(j, name, EMOE_EUNSUPPORTED, "unsupported JPEG colour space", err);
    if (cmyk)
        ci->out_color_space = JCS_CMYK;
    else
        ci->out_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
    int denom = denom_in > 0 ? denom_in
                             : emoe_jpeg_pick_scale((int)ci->image_width, (int)ci->image_height,
                                                    target);
    ci->scale_num = 1;
    ci->scale_denom = (unsigned)denom;
    ci->dct_method = JDCT_ISLOW;
    jpeg_calc_output_dimensions(ci);
    size_t ow = ci->output_width, oh = ci->output_height, oc = (size_t)ci->output_components;
    size_t npix, nbytes;
    if (emoe_size_mul(&npix, ow, oh) != EMOE_OK || npix > MAX_PIXELS ||
        emoe_size_mul(&nbytes, npix, oc) != EMOE_OK) {
        char what[96];
        snprintf(what, sizeof what, "JPEG of %zux%zu pixels is too large", ow, oh);
        return fail(j, name, EMOE_ERANGE, what, err);
    }
    if (grow((void **)&j->buf, &j->buf_cap, nbytes ? nbytes : 1) != 0)
        return fail(j, name, EMOE_ENOMEM, "out of memory", err);
    jpeg_start_decompress(ci);
    size_t stride = ow * oc;
    while (ci->output_scanline < ci->output_height) {
        JSAMPROW rows[8];
        unsigned n = 0;
        for (; n < 8 && ci->output_scanline + n < ci->output_height; n++)
            rows[n] = j->buf + (size_t)(ci->output_scanline + n) * stride;
        jpeg_read_scanlines(ci, rows, n);
    }
    jpeg_finish_decompress(ci);
    if (j->jerr.corrupt) {
        char what[JMSG_LENGTH_MAX + 32];
        snprintf(what, sizeof what, "corrupt JPEG: %s", j->jerr.warn);
        return fail(j, name, EMOE_EFORMAT, what, err);
    }
    if (cmyk)
        cmyk_convert(j->buf, npix, channels);
    *w = (int)ow;
    *h = (int)oh;
    return EMOE_OK;
}

int emoe_jpeg_read_info(struct emoe_jpeg *j, const void *data, size_t size, const char *name,
                        struct emoe_jpeg_info *info, struct emoe_error *err)
{
    struct jpeg_decompress_struct *ci = &j->cinfo;
    if (size == 0 || size > ULONG_MAX)
        return emoe_error_set(err, EMOE_EFORMAT, "%s%sempty JPEG data", name ? name : "",
                              name ? ": " : "");
    if (setjmp(j->jerr.jb)) {
        char what[JMSG_LENGTH_MAX + 32];
        snprintf(what, sizeof what, "corrupt JPEG: %s", j->jerr.msg);
        return fail(j, name, EMOE_EFORMAT, what, err);
    }
    jpeg_mem_src(ci, (const unsigned char *)data, (unsigned long)size);
    jpeg_read_header(ci, TRUE);
    info->width = (int)ci->image_width;
    info->height = (int)ci->image_height;
    info->components = ci->num_components;
    info->cmyk = ci->jpeg_color_space == JCS_CMYK || ci->jpeg_color_space == JCS_YCCK;
    jpeg_abort_decompress(ci);
    return EMOE_OK;
}

int emoe_jpeg_decode(struct emoe_jpeg *j, const void *data, size_t size, const char *name,
                     int channels, int scale_denom, unsigned char **pixels, int *width,
                     int *height, struct emoe_error *err)
{
    *pixels = NULL;
    if (channels != 1 && channels != 3)
        return emoe_error_set(err, EMOE_EINVAL, "channels must be 1 or 3, not %d", channels);
    if (scale_denom != 1 && scale_denom != 2 && scale_denom != 4 && scale_denom != 8)
        return emoe_error_set(err, EMOE_EINVAL, "scale denominator must be 1, 2, 4 or 8");
    int w, h;
    int rc = decode_into_scratch(j, data, size, name, channels, 0, scale_denom, &w, &h, err);
    if (rc != EMOE_OK)
        return rc;
    size_t n = (size_t)w * (size_t)h * (size_t)channels;
    unsigned char *p = malloc(n ? n : 1);
    if (!p)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    memcpy(p, j->buf, n);
    *pixels = p;
    *width = w;
    *height = h;
    return EMOE_OK;
}

/* ----------------------------------------------------------------- resize */

/* Filter taps for one axis: output i (of the crop) reads src[start[i] .. +count[i]) with
 * weights w[i * maxn ..]. */
struct taps {
    int *start, *count;
    float *w;
    int maxn;
};

static void taps_free(struct taps *t)
{
    free(t->start);
    free(t->count);
    free(t->w);
}

/*
 * Taps mapping a source of ext pixels (in stored; ext may be fractional when the source
 * is a DCT-scaled image) to full (resized length), for outputs [offset, offset + n).  Area (box) averaging when shrinking, bilinear (half-pixel
 * centres, edge clamped) when enlarging, identity when equal.
 */
static int taps_make(struct taps *t, int in, double ext, int full, int offset, int n)
{
    double scale = ext / full; /* source pixels per output pixel */
    int maxn = scale > 1.0 ? (int)ceil(scale) + 2 : 2;
    t->maxn = maxn;
    t->start = malloc(sizeof(int) * (size_t)n);
    t->count = malloc(sizeof(int) * (size_t)n);
    t->w = calloc((size_t)n * (size_t)maxn, sizeof(float));
    if (!t->start || !t->count || !t->w) {
        taps_free(t);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        int o = offset + i;
        float *w = t->w + (size_t)i * (size_t)maxn;
        if (ext == (double)full && in == full) {
            t->start[i] = o;
            t->count[i] = 1;
            w[0] = 1.0f;
        } else if (scale > 1.0) {
            double a = o * scale, b = (o + 1) * scale;
            int s = (int)floor(a), e = (int)ceil(b);
            if (e > in)
                e = in;
            if (s < 0)
                s = 0;
            double sum = 0;
            int k = 0;
            for (int x = s; x < e && k < maxn; x++, k++) {
                double lo = x > a ? x : a, hi = x + 1 < b ? x + 1 : b;
                double v = hi > lo ? hi - lo : 0;
                w[k] = (float)v;
                sum += v;
            }
            for (int q = 0; q < k; q++)
                w[q] = (float)(w[q] / sum);
            t->start[i] = s;
            t->count[i] = k;
        } else {
            double c = (o + 0.5) * scale - 0.5;
            if (c < 0)
                c = 0;
            int x0 = (int)floor(c);
            if (x0 > in - 1)
                x0 = in - 1;
            double f = c - x0;
            if (x0 + 1 > in - 1 || f <= 0) {
                t->start[i] = x0;
                t->count[i] = 1;
                w[0] = 1.0f;
            } else {
                t->start[i] = x0;
                t->count[i] = 2;
                w[0] = (float)(1.0 - f);
                w[1] = (float)f;
            }
        }
    }
    return 0;
}

/* The resized size of the shorter side n: the longer side as torchvision's Resize
 * computes it (truncated), and the centre-crop offsets. */
static void plan(int w, int h, int n, int *fw, int *fh, int *ox, int *oy)
{
    if (w <= h) {
        *fw = n;
        *fh = (int)((double)n * h / w);
    } else {
        *fh = n;
        *fw = (int)((double)n * w / h);
    }
    if (*fw < n)
        *fw = n;
    if (*fh < n)
        *fh = n;
    *ox = (int)lround((*fw - n) / 2.0);
    *oy = (int)lround((*fh - n) / 2.0);
}

/* Horizontal pass over source rows [y0, y1) into float rows of n * C values; C is a
 * constant in each expansion so the channel loops unroll. */
#define HPASS(C)                                                                           \
    for (int y = y0; y < y1; y++) {                                                        \
        const unsigned char *s = src + (size_t)y * (size_t)w * (C);                        \
        float *d = rows + (size_t)(y - y0) * (size_t)n * (C);                              \
        for (int i = 0; i < n; i++) {                                                      \
            const float *wt = tx.w + (size_t)i * (size_t)tx.maxn;                          \
            const unsigned char *p = s + (size_t)tx.start[i] * (C);                        \
            int cnt = tx.count[i];                                                         \
            float a0 = 0, a1 = 0, a2 = 0;                                                  \
            for (int k = 0; k < cnt; k++, p += (C)) {                                      \
                float wk = wt[k];                                                          \
                a0 += wk * p[0];                                                           \
                if ((C) > 1) {                                                             \
                    a1 += wk * p[(C) > 1 ? 1 : 0];                                         \
                    a2 += wk * p[(C) > 2 ? 2 : 0];                                         \
                }                                                                          \
            }                                                                              \
            d[(size_t)i * (C)] = a0;                                                       \
            if ((C) > 1) {                                                                 \
                d[(size_t)i * (C) + ((C) > 1 ? 1 : 0)] = a1;                               \
                d[(size_t)i * (C) + ((C) > 2 ? 2 : 0)] = a2;                               \
            }                                                                              \
        }                                                                                  \
    }

/*
 * One output row of the vertical pass: d[x] = round(sum_k wt[k] * r[k * rowlen + x]),
 * clamped to 0..255, through the accumulator row acc.  SSE2 (x86-64's baseline) four
 * values at a time, scalar elsewhere and for the tail.
 */
static void vpass_row(float *restrict acc, const float *r, size_t rowlen, const float *wt,
                      int cnt, unsigned char *restrict d)
{
    size_t x = 0;
#ifdef __SSE2__
    const __m128 half = _mm_set1_ps(0.5f), w0 = _mm_set1_ps(wt[0]);
    for (; x + 4 <= rowlen; x += 4)
        _mm_storeu_ps(acc + x, _mm_add_ps(_mm_mul_ps(w0, _mm_loadu_ps(r + x)), half));
#endif
    for (; x < rowlen; x++)
        acc[x] = wt[0] * r[x] + 0.5f;
    for (int k = 1; k < cnt; k++) {
        const float *rk = r + (size_t)k * rowlen;
        x = 0;
#ifdef __SSE2__
        const __m128 wk = _mm_set1_ps(wt[k]);
        for (; x + 4 <= rowlen; x += 4)
            _mm_storeu_ps(acc + x, _mm_add_ps(_mm_loadu_ps(acc + x),
                                              _mm_mul_ps(wk, _mm_loadu_ps(rk + x))));
#endif
        for (; x < rowlen; x++)
            acc[x] += wt[k] * rk[x];
    }
    x = 0;
#ifdef __SSE2__
    const __m128 lo = _mm_setzero_ps(), hi = _mm_set1_ps(255.0f);
    for (; x + 16 <= rowlen; x += 16) {
        __m128i a = _mm_cvttps_epi32(_mm_min_ps(_mm_max_ps(_mm_loadu_ps(acc + x), lo), hi));
        __m128i b = _mm_cvttps_epi32(_mm_min_ps(_mm_max_ps(_mm_loadu_ps(acc + x + 4), lo), hi));
        __m128i c = _mm_cvttps_epi32(_mm_min_ps(_mm_max_ps(_mm_loadu_ps(acc + x + 8), lo), hi));
        __m128i e = _mm_cvttps_epi32(_mm_min_ps(_mm_max_ps(_mm_loadu_ps(acc + x + 12), lo), hi));
        _mm_storeu_si128((__m128i *)(void *)(d + x),
                         _mm_packus_epi16(_mm_packs_epi32(a, b), _mm_packs_epi32(c, e)));
    }
#endif
    for (; x < rowlen; x++) {
        float v = acc[x];
        v = v < 0 ? 0 : v;
        v = v > 255 ? 255 : v;
        d[x] = (unsigned char)v;
    }
}

/*
 * Resize with scratch rows (may be grown); src [h, w, c] -> dst [n, n, c].  The
 * geometry (resized size, crop offsets) is planned on the original image W x H, of
 * which src is a 1/denom scaled copy, so DCT-scaled and full decodes sample the
 * same regions.
 */
static int resize_crop(const unsigned char *src, int w, int h, int c, int W, int H, int denom,
                       int n, unsigned char *dst, float **rows_p, size_t *rows_cap)
{
    int fw, fh, ox, oy;
    plan(W, H, n, &fw, &fh, &ox, &oy);
    if (denom == 1 && fw == w && fh == h) { /* only a crop */
        for (int y = 0; y < n; y++)
            memcpy(dst + (size_t)y * n * c, src + ((size_t)(y + oy) * w + ox) * c,
                   (size_t)n * c);
        return 0;
    }
    struct taps tx, ty;
    if (taps_make(&tx, w, (double)W / denom, fw, ox, n) != 0)
        return -1;
    if (taps_make(&ty, h, (double)H / denom, fh, oy, n) != 0) {
        taps_free(&tx);
        return -1;
    }
    int y0 = ty.start[0], y1 = ty.start[n - 1] + ty.count[n - 1];
    size_t rowlen = (size_t)n * (size_t)c;
    /* the horizontally resized rows, then one accumulator row */
    size_t need = ((size_t)(y1 - y0) + 1) * rowlen * sizeof(float);
    if (grow((void **)rows_p, rows_cap, need) != 0) {
        taps_free(&tx);
        taps_free(&ty);
        return -1;
    }
    float *rows = *rows_p;
    if (c == 3) {
        HPASS(3)
    } else if (c == 1) {
        HPASS(1)
    } else {
        /* 4 channels (not used by the decoders): two passes of the generic kind */
        for (int y = y0; y < y1; y++) {
            const unsigned char *sr = src + (size_t)y * (size_t)w * 4;
            float *d = rows + (size_t)(y - y0) * rowlen;
            for (int i = 0; i < n; i++) {
                const float *wt = tx.w + (size_t)i * (size_t)tx.maxn;
                const unsigned char *p = sr + (size_t)tx.start[i] * 4;
                float acc[4] = {0, 0, 0, 0};
                for (int k = 0; k < tx.count[i]; k++, p += 4)
                    for (int q = 0; q < 4; q++)
                        acc[q] += wt[k] * p[q];
                memcpy(d + (size_t)i * 4, acc, sizeof acc);
            }
        }
    }
    float *restrict acc = rows + (size_t)(y1 - y0) * rowlen;
    for (int i = 0; i < n; i++) {
        const float *wt = ty.w + (size_t)i * (size_t)ty.maxn;
        const float *r = rows + (size_t)(ty.start[i] - y0) * rowlen;
        unsigned char *restrict d = dst + (size_t)i * rowlen;
        int cnt = ty.count[i];
        vpass_row(acc, r, rowlen, wt, cnt, d);
    }
    taps_free(&tx);
    taps_free(&ty);
    return 0;
}

int emoe_image_resize_crop(const unsigned char *src, int w, int h, int c, int n,
                           unsigned char *dst, struct emoe_error *err)
{
    if (w <= 0 || h <= 0 || n <= 0 || (c != 1 && c != 3 && c != 4))
        return emoe_error_set(err, EMOE_EINVAL, "bad resize arguments (%dx%dx%d to %d)", w, h,
                              c, n);
    float *rows = NULL;
    size_t cap = 0;
    int rc = resize_crop(src, w, h, c, w, h, 1, n, dst, &rows, &cap);
    free(rows);
    if (rc != 0)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    return EMOE_OK;
}

int emoe_jpeg_decode_square(struct emoe_jpeg *j, const void *data, size_t size,
                            const char *name, int channels, int n, unsigned char *out,
                            struct emoe_error *err)
{
    if (channels != 1 && channels != 3)
        return emoe_error_set(err, EMOE_EINVAL, "channels must be 1 or 3, not %d", channels);
    if (n <= 0)
        return emoe_error_set(err, EMOE_EINVAL, "output size must be positive, not %d", n);
    int w, h;
    int rc = decode_into_scratch(j, data, size, name, channels, n, 0, &w, &h, err);
    if (rc != EMOE_OK)
        return rc;
    if (w == n && h == n) {
        memcpy(out, j->buf, (size_t)n * n * channels);
        return EMOE_OK;
    }
    if (resize_crop(j->buf, w, h, channels, (int)j->cinfo.image_width,
                    (int)j->cinfo.image_height, (int)j->cinfo.scale_denom, n, out, &j->rows,
                    &j->rows_cap) != 0)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    return EMOE_OK;
}
