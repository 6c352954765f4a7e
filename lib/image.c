/*
 * image.c: JPEG decoding through libjpeg-turbo (from memory, with an error manager
 * that returns instead of exiting), DCT-domain downscaling, and the shorter-side
 * resize (area when shrinking, bilinear when enlarging) plus centre crop that turn
 * any photo into a uint8 [n, n, c] tile.
 */
#include "config.h"
#include "data.h"

#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_AVX2_PATH 1
#include <immintrin.h>
#define AVX2_FN static __attribute__((target("avx2")))
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

/* The DCT scale M/8 for a target: the smallest M in {1, 2, 4, 8} whose scaled shorter
 * side ceil(s * M / 8) is still >= target, so the decoder does the coarse shrinking and
 * the resize the rest (8: full size, also for small images).  Only these four: they are
 * the scales libjpeg-turbo has SIMD inverse DCTs for; its other M/8 IDCTs are plain C,
 * and decoding the ImageNet sample photos at 5/8 or 6/8 took longer than decoding them
 * at full size (bench_prep, 224 target: 718 against 833 images per CPU second). */
static int pick_scale_num(int width, int height, int target)
{
    long s = width < height ? width : height;
    if (target <= 0)
        return 8;
    for (int m = 1; m < 8; m *= 2)
        if ((s * m + 7) / 8 >= target)
            return m;
    return 8;
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
 * Decode into j->buf with `channels` output channels; sets *w, *h.  The scale is
 * 1/denom_in when denom_in > 0, else M/8 for the target (pick_scale_num).  name is for
 * messages (may be NULL).
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
    if (denom_in > 0) {
        ci->scale_num = 1;
        ci->scale_denom = (unsigned)denom_in;
    } else {
        ci->scale_num = (unsigned)pick_scale_num((int)ci->image_width, (int)ci->image_height,
                                                 target);
        ci->scale_denom = 8;
    }
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

void prep_jpeg_image_size(const struct emoe_jpeg *j, int *w, int *h)
{
    *w = (int)j->cinfo.image_width;
    *h = (int)j->cinfo.image_height;
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

/*
 * Vertical pass: one row of floats acc[0 .. len) = sum_k wt[k] * s[k * stride + x] over
 * cnt source rows of bytes (the crop's column range).  SSE2 (x86-64's baseline) sixteen
 * bytes at a time, scalar elsewhere and for the tail.
 */
static void vpass_row(float *restrict acc, const unsigned char *s, size_t stride, size_t len,
                      const float *wt, int cnt)
{
    size_t x = 0;
#ifdef __SSE2__
    const __m128i zero = _mm_setzero_si128();
    for (; x + 16 <= len; x += 16) {
        __m128 a0 = _mm_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int k = 0; k < cnt; k++) {
            const __m128 wk = _mm_set1_ps(wt[k]);
            __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + (size_t)k * stride
                                                                          + x));
            __m128i lo = _mm_unpacklo_epi8(v, zero), hi = _mm_unpackhi_epi8(v, zero);
            a0 = _mm_add_ps(a0, _mm_mul_ps(wk, _mm_cvtepi32_ps(_mm_unpacklo_epi16(lo, zero))));
            a1 = _mm_add_ps(a1, _mm_mul_ps(wk, _mm_cvtepi32_ps(_mm_unpackhi_epi16(lo, zero))));
            a2 = _mm_add_ps(a2, _mm_mul_ps(wk, _mm_cvtepi32_ps(_mm_unpacklo_epi16(hi, zero))));
            a3 = _mm_add_ps(a3, _mm_mul_ps(wk, _mm_cvtepi32_ps(_mm_unpackhi_epi16(hi, zero))));
        }
        _mm_storeu_ps(acc + x, a0);
        _mm_storeu_ps(acc + x + 4, a1);
        _mm_storeu_ps(acc + x + 8, a2);
        _mm_storeu_ps(acc + x + 12, a3);
    }
#endif
    for (; x < len; x++) {
        float a = 0;
        for (int k = 0; k < cnt; k++)
            a += wt[k] * s[(size_t)k * stride + x];
        acc[x] = a;
    }
}

static unsigned char to_u8(float v)
{
    v += 0.5f;
    v = v < 0 ? 0 : v;
    v = v > 255 ? 255 : v;
    return (unsigned char)v;
}

/* d[x] = round(clamp(f[x], 0, 255)) for x < len; SSE2 sixteen at a time. */
static void floats_to_u8(const float *f, size_t len, unsigned char *restrict d)
{
    size_t x = 0;
#ifdef __SSE2__
    const __m128 lo = _mm_setzero_ps(), hi = _mm_set1_ps(255.0f), half = _mm_set1_ps(0.5f);
    for (; x + 16 <= len; x += 16) {
        __m128i v[4];
        for (int q = 0; q < 4; q++)
            v[q] = _mm_cvttps_epi32(
                _mm_min_ps(_mm_max_ps(_mm_add_ps(_mm_loadu_ps(f + x + 4 * q), half), lo), hi));
        _mm_storeu_si128((__m128i *)(void *)(d + x),
                         _mm_packus_epi16(_mm_packs_epi32(v[0], v[1]),
                                          _mm_packs_epi32(v[2], v[3])));
    }
#endif
    for (; x < len; x++)
        d[x] = to_u8(f[x]);
}

#ifdef HAVE_AVX2_PATH
/* As vpass_row, 32 bytes at a time with AVX2 (no FMA: multiply, then add, in the same
 * order as the SSE2 and scalar code, so every path gives the same bits). */
AVX2_FN void vpass_row_avx2(float *restrict acc, const unsigned char *s, size_t stride,
                            size_t len, const float *wt, int cnt)
{
    size_t x = 0;
    for (; x + 32 <= len; x += 32) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int k = 0; k < cnt; k++) {
            const __m256 wk = _mm256_set1_ps(wt[k]);
            const unsigned char *p = s + (size_t)k * stride + x;
            __m128i v0 = _mm_loadu_si128((const __m128i *)(const void *)p);
            __m128i v1 = _mm_loadu_si128((const __m128i *)(const void *)(p + 16));
            __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v0));
            __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v0, 8)));
            __m256 f2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v1));
            __m256 f3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v1, 8)));
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(wk, f0));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(wk, f1));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(wk, f2));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(wk, f3));
        }
        _mm256_storeu_ps(acc + x, a0);
        _mm256_storeu_ps(acc + x + 8, a1);
        _mm256_storeu_ps(acc + x + 16, a2);
        _mm256_storeu_ps(acc + x + 24, a3);
    }
    for (; x < len; x++) {
        float a = 0;
        for (int k = 0; k < cnt; k++)
            a += wt[k] * s[(size_t)k * stride + x];
        acc[x] = a;
    }
}

/* As floats_to_u8, 32 at a time with AVX2 (the same operations, so the same bytes). */
AVX2_FN void floats_to_u8_avx2(const float *f, size_t len, unsigned char *restrict d)
{
    size_t x = 0;
    const __m256 lo = _mm256_setzero_ps(), hi = _mm256_set1_ps(255.0f),
                 half = _mm256_set1_ps(0.5f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (; x + 32 <= len; x += 32) {
        __m256i v[4];
        for (int q = 0; q < 4; q++)
            v[q] = _mm256_cvttps_epi32(_mm256_min_ps(
                _mm256_max_ps(_mm256_add_ps(_mm256_loadu_ps(f + x + 8 * q), half), lo), hi));
        /* the packs work within 128-bit lanes: 4-byte groups come out as
         * v0a v1a v2a v3a | v0b v1b v2b v3b; the permute restores the order */
        __m256i p = _mm256_packus_epi16(_mm256_packs_epi32(v[0], v[1]),
                                        _mm256_packs_epi32(v[2], v[3]));
        _mm256_storeu_si256((__m256i *)(void *)(d + x), _mm256_permutevar8x32_epi32(p, order));
    }
    for (; x < len; x++)
        d[x] = to_u8(f[x]);
}

static int have_avx2(void)
{
    return __builtin_cpu_supports("avx2");
}
#endif

/*
 * Horizontal pass for 1 or 4 channels (RGB: hpass3_*): output row o [n, c] (floats)
 * from one vertically resized float row r (its column 0 is source column x0).
 */
static void hpass_row(const float *r, int x0, const struct taps *tx, int n, int c,
                      float *restrict o)
{
    for (int i = 0; i < n; i++) {
        const float *wt = tx->w + (size_t)i * (size_t)tx->maxn;
        const float *p = r + (size_t)(tx->start[i] - x0) * (size_t)c;
        float a[4] = {0, 0, 0, 0};
        for (int k = 0; k < tx->count[i]; k++, p += c)
            for (int q = 0; q < c; q++)
                a[q] += wt[k] * p[q];
        memcpy(o + (size_t)i * (size_t)c, a, sizeof(float) * (size_t)c);
    }
}

/*
 * The horizontal pass for RGB rows with a fixed number of taps K per output (the most
 * any output has; the others get zero weights, which add exact zeros to sums of
 * non-negative terms, so the result is bit for bit that of hpass_row).  Outputs go in
 * pairs: wv holds, for pair j and tap k, 8 floats (output 2j's weight four times, then
 * output 2j+1's); off[i] is output i's first float in r.  r needs 3K + 4 floats of
 * padding past its end, o one float.
 */
static void hpass3_sse(const float *r, const int *off, const float *wv, int n, int K,
                       float *restrict o)
{
    for (int i = 0; i < n; i++) {
        const float *p = r + off[i], *wk = wv + (size_t)(i / 2) * (size_t)K * 8 + (i % 2) * 4;
#ifdef __SSE2__
        __m128 a = _mm_mul_ps(_mm_loadu_ps(wk), _mm_loadu_ps(p));
        for (int k = 1; k < K; k++)
            a = _mm_add_ps(a, _mm_mul_ps(_mm_loadu_ps(wk + 8 * k), _mm_loadu_ps(p + 3 * k)));
        _mm_storeu_ps(o + 3 * i, a); /* the 4th float is overwritten next */
#else
        float a0 = wk[0] * p[0], a1 = wk[0] * p[1], a2 = wk[0] * p[2];
        for (int k = 1; k < K; k++) {
            a0 += wk[8 * k] * p[3 * k];
            a1 += wk[8 * k] * p[3 * k + 1];
            a2 += wk[8 * k] * p[3 * k + 2];
        }
        o[3 * i] = a0;
        o[3 * i + 1] = a1;
        o[3 * i + 2] = a2;
#endif
    }
}

#ifdef HAVE_AVX2_PATH
/* hpass3_sse with AVX2: two outputs per 8-float multiply-add (no FMA: same bits). */
AVX2_FN void hpass3_avx2(const float *r, const int *off, const float *wv, int n, int K,
                         float *restrict o)
{
    for (int i = 0; i < n; i += 2) {
        const float *p0 = r + off[i], *p1 = r + off[i + 1 < n ? i + 1 : i];
        const float *wk = wv + (size_t)(i / 2) * (size_t)K * 8;
        __m256 a = _mm256_mul_ps(_mm256_loadu_ps(wk),
                                 _mm256_set_m128(_mm_loadu_ps(p1), _mm_loadu_ps(p0)));
        for (int k = 1; k < K; k++)
            a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_loadu_ps(wk + 8 * k),
                                               _mm256_set_m128(_mm_loadu_ps(p1 + 3 * k),
                                                               _mm_loadu_ps(p0 + 3 * k))));
        _mm_storeu_ps(o + 3 * i, _mm256_castps256_ps128(a));
        if (i + 1 < n)
            _mm_storeu_ps(o + 3 * i + 3, _mm256_extractf128_ps(a, 1));
    }
}
#endif

/* hpass3's tables from the taps: returns K, or -1 when out of memory. */
static int hpass3_tables(const struct taps *tx, int x0, int n, int **off_p, float **wv_p)
{
    int K = 1;
    for (int i = 0; i < n; i++)
        if (tx->count[i] > K)
            K = tx->count[i];
    int *off = malloc(sizeof(int) * (size_t)n);
    float *wv = calloc((size_t)(n + 1) / 2 * (size_t)K * 8, sizeof(float));
    if (!off || !wv) {
        free(off);
        free(wv);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        off[i] = (tx->start[i] - x0) * 3;
        const float *w = tx->w + (size_t)i * (size_t)tx->maxn;
        float *d = wv + (size_t)(i / 2) * (size_t)K * 8 + (i % 2) * 4;
        for (int k = 0; k < tx->count[i]; k++)
            for (int q = 0; q < 4; q++)
                d[8 * k + q] = w[k];
    }
    *off_p = off;
    *wv_p = wv;
    return K;
}

/*
 * Resize with a scratch row (may be grown); src [h, w, c] -> dst [n, n, c].  The
 * geometry (resized size, crop offsets) is planned on the original image W x H, of
 * which src is a copy scaled by `scale` (the DCT scale M/8, or 1), so DCT-scaled and
 * full decodes sample the same regions.  The vertical pass runs first, over whole
 * contiguous rows (vectorised), so the horizontal gather only sees n rows.
 */
static int resize_crop(const unsigned char *src, int w, int h, int c, int W, int H,
                       double scale, int n, unsigned char *dst, float **rows_p,
                       size_t *rows_cap)
{
    int fw, fh, ox, oy;
    plan(W, H, n, &fw, &fh, &ox, &oy);
    if (scale == 1.0 && fw == w && fh == h) { /* only a crop */
        for (int y = 0; y < n; y++)
            memcpy(dst + (size_t)y * n * c, src + ((size_t)(y + oy) * w + ox) * c,
                   (size_t)n * c);
        return 0;
    }
    struct taps tx, ty;
    if (taps_make(&tx, w, W * scale, fw, ox, n) != 0)
        return -1;
    if (taps_make(&ty, h, H * scale, fh, oy, n) != 0) {
        taps_free(&tx);
        return -1;
    }
    int x0 = tx.start[0], x1 = tx.start[n - 1] + tx.count[n - 1];
    for (int i = 0; i < n; i++) { /* the columns any output reads */
        if (tx.start[i] < x0)
            x0 = tx.start[i];
        if (tx.start[i] + tx.count[i] > x1)
            x1 = tx.start[i] + tx.count[i];
    }
    size_t len = (size_t)(x1 - x0) * (size_t)c, olen = (size_t)n * (size_t)c;
    int *off = NULL, K = 0;
    float *wv = NULL;
    if (c == 3 && (K = hpass3_tables(&tx, x0, n, &off, &wv)) < 0) {
        taps_free(&tx);
        taps_free(&ty);
        return -1;
    }
    /* the vertically resized row (zero padding: 4 floats, 3K + 4 for RGB), then one
     * output row (and 1) */
    size_t pad = 4 + 3 * (size_t)K;
    if (grow((void **)rows_p, rows_cap, (len + pad + olen + 1) * sizeof(float)) != 0) {
        taps_free(&tx);
        taps_free(&ty);
        free(off);
        free(wv);
        return -1;
    }
    float *row = *rows_p, *orow = row + len + pad;
    memset(row + len, 0, pad * sizeof(float));
    size_t stride = (size_t)w * (size_t)c;
    /* the row kernels, chosen once */
    void (*vpass)(float *restrict, const unsigned char *, size_t, size_t, const float *, int) =
        vpass_row;
    void (*hpass3)(const float *, const int *, const float *, int, int, float *restrict) =
        hpass3_sse;
    void (*to_bytes)(const float *, size_t, unsigned char *restrict) = floats_to_u8;
#ifdef HAVE_AVX2_PATH
    if (have_avx2()) {
        vpass = vpass_row_avx2;
        hpass3 = hpass3_avx2;
        to_bytes = floats_to_u8_avx2;
    }
#endif
    for (int i = 0; i < n; i++) {
        const float *wt = ty.w + (size_t)i * (size_t)ty.maxn;
        const unsigned char *s0 = src + (size_t)ty.start[i] * stride + (size_t)x0 * (size_t)c;
        vpass(row, s0, stride, len, wt, ty.count[i]);
        if (c == 3)
            hpass3(row, off, wv, n, K, orow);
        else
            hpass_row(row, x0, &tx, n, c, orow);
        to_bytes(orow, olen, dst + (size_t)i * olen);
    }
    free(off);
    free(wv);
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
    int rc = resize_crop(src, w, h, c, w, h, 1.0, n, dst, &rows, &cap);
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
    double scale = (double)j->cinfo.scale_num / (double)j->cinfo.scale_denom;
    if (resize_crop(j->buf, w, h, channels, (int)j->cinfo.image_width,
                    (int)j->cinfo.image_height, scale, n, out, &j->rows, &j->rows_cap) != 0)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    return EMOE_OK;
}
