/*
 * check_heatmap.c: unit tests of lib/heatmap.c and lib/png.c: the colour map is
 * monotone in lightness, normalisation, routing tensor checks, PNG files decode
 * (a small independent reader here: chunk CRCs, IHDR, zlib inflate, filter bytes,
 * pixels), cell colours follow the values, SVG is well-formed XML, and the
 * terminal rendering.
 */
#include "config.h"
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* CIELAB L* of an sRGB colour. */
static double lightness(const unsigned char c[3])
{
    double lin[3];
    for (int i = 0; i < 3; i++) {
        double v = c[i] / 255.0;
        lin[i] = v <= 0.04045 ? v / 12.92 : pow((v + 0.055) / 1.055, 2.4);
    }
    double Y = 0.2126729 * lin[0] + 0.7151522 * lin[1] + 0.0721750 * lin[2];
    return Y > 216.0 / 24389.0 ? 116.0 * cbrt(Y) - 16.0 : Y * 24389.0 / 27.0;
}

START_TEST(test_colormap_is_monotone_in_lightness)
{
    unsigned char c[3], prev[3];
    emoe_colormap(0.0, prev);
    double l0 = lightness(prev), lp = l0;
    for (int i = 1; i <= 255; i++) {
        emoe_colormap(i / 255.0, c);
        double l = lightness(c);
        /* 8-bit rounding may cost a fraction of a unit, never more */
        ck_assert_msg(l > lp - 0.5, "L* falls from %.2f to %.2f at %d", lp, l, i);
        lp = l;
    }
    for (int i = 1; i <= 32; i++) {
        unsigned char a[3], b[3];
        emoe_colormap((i - 1) / 32.0, a);
        emoe_colormap(i / 32.0, b);
        ck_assert_msg(lightness(b) > lightness(a) + 1.0, "L* not rising at %d/32", i);
    }
    ck_assert(lp - l0 > 60);
    /* clamping */
    emoe_colormap(-3, c);
    emoe_colormap(0, prev);
    ck_assert(memcmp(c, prev, 3) == 0);
    emoe_colormap(NAN, c);
    ck_assert(memcmp(c, prev, 3) == 0);
    emoe_colormap(7, c);
    emoe_colormap(1, prev);
    ck_assert(memcmp(c, prev, 3) == 0);
}
END_TEST

START_TEST(test_normalize)
{
    /* E = 2, K = 3; class 2 is empty */
    float c[6] = {1, 3, 0, 3, 1, 0}, v[6];
    emoe_heatmap_normalize(v, c, 2, 3, EMOE_HEATMAP_NONE);
    ck_assert(memcmp(v, c, sizeof v) == 0);
    emoe_heatmap_normalize(v, c, 2, 3, EMOE_HEATMAP_CLASS);
    ck_assert(fabsf(v[0] - 0.25f) < 1e-7f && fabsf(v[3] - 0.75f) < 1e-7f);
    ck_assert(v[2] == 0 && v[5] == 0);
    emoe_heatmap_normalize(v, c, 2, 3, EMOE_HEATMAP_EXPERT);
    ck_assert(fabsf(v[0] + v[1] + v[2] - 1.0f) < 1e-6f);
    ck_assert(fabsf(v[3] - 0.75f) < 1e-7f);
}
END_TEST

static struct emoe_tensor *routing(int L, int E, int K, float (*fn)(int, int, int))
{
    struct emoe_tensor *t;
    struct emoe_error err = {0};
    int64_t shape[3] = {L, E, K};
    ck_assert_int_eq(emoe_tensor_new(EMOE_F32, 3, shape, &t, &err), EMOE_OK);
    float *v = t->data;
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++)
            for (int k = 0; k < K; k++)
                v[((size_t)l * E + e) * K + k] = fn(l, e, k);
    return t;
}

static float prefers(int l, int e, int k)
{
    return (k % 4 == e ? 50.0f : 5.0f) + (float)(l + k);
}

static float by_class(int l, int e, int k)
{
    return (float)k * (e == 0);
}

START_TEST(test_routing_check_rejects_bad_tensors)
{
    struct emoe_error err = {0};
    int64_t s2[2] = {4, 10};
    struct emoe_tensor *t;
    ck_assert_int_eq(emoe_tensor_new(EMOE_F32, 2, s2, &t, &err), EMOE_OK);
    tu_assert_error(emoe_routing_check(t, "r.npy", &err), err, EMOE_EFORMAT,
                    "r.npy: routing tensor has shape (4, 10), not [layers, experts, classes]");
    emoe_tensor_free(t);
    int64_t s3[3] = {1, 2, 3};
    ck_assert_int_eq(emoe_tensor_new(EMOE_F64, 3, s3, &t, &err), EMOE_OK);
    tu_assert_error(emoe_routing_check(t, "r.npy", &err), err, EMOE_EFORMAT, "is f64, not f32");
    emoe_tensor_free(t);
    int64_t s0[3] = {1, 0, 3};
    ck_assert_int_eq(emoe_tensor_new(EMOE_F32, 3, s0, &t, &err), EMOE_OK);
    tu_assert_error(emoe_routing_check(t, NULL, &err), err, EMOE_ERANGE, "(1, 0, 3)");
    emoe_tensor_free(t);
    t = routing(1, 2, 3, prefers);
    ((float *)t->data)[4] = -1;
    tu_assert_error(emoe_routing_check(t, "r.npy", &err), err, EMOE_EFORMAT,
                    "routing count 4 is -1");
    ((float *)t->data)[4] = 1;
    ck_assert_int_eq(emoe_routing_check(t, "r.npy", &err), EMOE_OK);
    struct emoe_heatmap_options o;
    emoe_heatmap_options_init(&o);
    o.layer = 1;
    unsigned char *px = (unsigned char *)&o;
    int w, h;
    tu_assert_error(emoe_heatmap_render(t, &o, &px, &w, &h, &err), err, EMOE_EINVAL,
                    "layer 1 is outside the routing tensor's 1 layers");
    ck_assert_ptr_null(px);
    o.layer = -1;
    const char *names[2] = {"a", "b"};
    o.classes = names;
    o.nclasses = 2;
    tu_assert_error(emoe_heatmap_render(t, &o, &px, &w, &h, &err), err, EMOE_EINVAL,
                    "2 class names for a routing tensor of 3 classes");
    emoe_tensor_free(t);
}
END_TEST

/* ---------------------------------------------------------------- a PNG reader */

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Decode an 8-bit, non-interlaced, filter-0 PNG as png.c writes it; checks every
 * CRC.  Returns the pixels (malloc'd). */
static unsigned char *png_decode(const unsigned char *d, size_t n, int *w, int *h, int *ch)
{
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    ck_assert(n >= 8 && memcmp(d, sig, 8) == 0);
    size_t pos = 8, zlen = 0;
    unsigned char *z = NULL;
    int seen_end = 0, chunks = 0;
    *w = *h = *ch = 0;
    while (pos < n) {
        ck_assert(n - pos >= 12);
        uint32_t len = be32(d + pos);
        ck_assert(len <= n - pos - 12);
        const unsigned char *type = d + pos + 4, *data = d + pos + 8;
        uLong crc = crc32(crc32(0L, Z_NULL, 0), type, 4 + len);
        ck_assert_msg(crc == be32(data + len), "bad CRC in chunk %.4s", (const char *)type);
        if (chunks == 0) {
            ck_assert(memcmp(type, "IHDR", 4) == 0 && len == 13);
            *w = (int)be32(data);
            *h = (int)be32(data + 4);
            ck_assert_int_eq(data[8], 8);
            *ch = data[9] == 0 ? 1 : data[9] == 2 ? 3 : data[9] == 6 ? 4 : 0;
            ck_assert_int_ne(*ch, 0);
            ck_assert(data[10] == 0 && data[11] == 0 && data[12] == 0);
        } else if (memcmp(type, "IDAT", 4) == 0) {
            z = realloc(z, zlen + len);
            memcpy(z + zlen, data, len);
            zlen += len;
        } else if (memcmp(type, "IEND", 4) == 0) {
            seen_end = 1;
            ck_assert_uint_eq(pos + 12, n);
        }
        chunks++;
        pos += 12 + len;
    }
    ck_assert(seen_end);
    size_t row = (size_t)*w * (size_t)*ch, raw_len = (row + 1) * (size_t)*h;
    unsigned char *raw = malloc(raw_len + 1);
    uLongf got = (uLongf)(raw_len + 1);
    ck_assert_int_eq(uncompress(raw, &got, z, (uLong)zlen), Z_OK);
    ck_assert_uint_eq(got, raw_len);
    unsigned char *px = malloc(row * (size_t)*h);
    for (int y = 0; y < *h; y++) {
        ck_assert_int_eq(raw[y * (row + 1)], 0);
        memcpy(px + y * row, raw + y * (row + 1) + 1, row);
    }
    free(raw);
    free(z);
    return px;
}

/* Write a raster with emoe_png_write, read it back, compare. */
static void png_round_trip(const unsigned char *px, int w, int h, int channels)
{
    struct emoe_error err = {0};
    const char *path = tu_tmppath("rt.png");
    ck_assert_int_eq(emoe_png_write(path, px, w, h, channels, &err), EMOE_OK);
    size_t n;
    unsigned char *d = tu_read_file(path, &n);
    int W, H, C;
    unsigned char *back = png_decode(d, n, &W, &H, &C);
    ck_assert_int_eq(W, w);
    ck_assert_int_eq(H, h);
    ck_assert_int_eq(C, channels);
    ck_assert(memcmp(back, px, (size_t)w * h * channels) == 0);
    free(back);
    free(d);
}

START_TEST(test_png_round_trip)
{
    /* big enough for several IDAT chunks: noise does not compress */
    int w = 300, h = 257;
    unsigned char *px = malloc((size_t)w * h * 4);
    uint32_t s = 12345;
    for (size_t i = 0; i < (size_t)w * h * 4; i++) {
        s = s * 1664525u + 1013904223u;
        px[i] = (unsigned char)(s >> 24);
    }
    png_round_trip(px, w, h, 4);
    png_round_trip(px, w, h, 3);
    png_round_trip(px, 1, 1, 1);
    free(px);
}
END_TEST

START_TEST(test_png_rejects_bad_arguments)
{
    unsigned char px[12] = {0};
    struct emoe_error err = {0};
    tu_assert_error(emoe_png_write(tu_tmppath("x.png"), px, 2, 2, 2, &err), err, EMOE_EINVAL,
                    "2 channels (PNG takes 1, 3 or 4)");
    tu_assert_error(emoe_png_write(tu_tmppath("x.png"), px, 0, 2, 3, &err), err, EMOE_EINVAL,
                    "image size 0 x 2 is not positive");
    ck_assert(!tu_file_exists(tu_tmppath("x.png")));
    int rc = emoe_png_write(tu_tmppath("no/such/dir/x.png"), px, 2, 2, 3, &err);
    tu_assert_error(rc, err, EMOE_EIO, "no/such/dir");
}
END_TEST

/* Find the first pixel (scanning rows) with colour c; returns its x or -1. */
static int find_colour(const unsigned char *px, int w, int h, const unsigned char c[3], int *y)
{
    for (int yy = 0; yy < h; yy++)
        for (int x = 0; x < w; x++)
            if (memcmp(px + ((size_t)yy * w + x) * 3, c, 3) == 0) {
                *y = yy;
                return x;
            }
    return -1;
}

/* Values 0..9 along the classes of expert 0: each cell has the colour map's colour
 * of value/max, the cells run left to right, and lightness rises with the value. */
START_TEST(test_render_colours_follow_values)
{
    struct emoe_tensor *t = routing(1, 3, 10, by_class);
    struct emoe_heatmap_options o;
    emoe_heatmap_options_init(&o);
    struct emoe_error err = {0};
    unsigned char *px;
    int w, h;
    ck_assert_int_eq(emoe_heatmap_render(t, &o, &px, &w, &h, &err), EMOE_OK);
    ck_assert(w > 10 * 2 && h > 3 * 2);
    int lastx = -1, row = -1;
    double lastl = -1;
    for (int k = 1; k < 10; k++) {
        unsigned char c[3];
        emoe_colormap((double)lrint(255.0 * k / 9.0) / 255.0, c);
        int y, x = find_colour(px, w, h, c, &y);
        ck_assert_msg(x >= 0, "no cell has the colour of value %d", k);
        ck_assert_msg(x > lastx, "class %d is not right of class %d", k, k - 1);
        if (row >= 0)
            ck_assert_int_eq(y, row); /* one expert row */
        row = y;
        lastx = x;
        ck_assert(lightness(c) > lastl);
        lastl = lightness(c);
    }
    png_round_trip(px, w, h, 3);
    free(px);
    /* normalised by expert: the same order */
    o.normalize = EMOE_HEATMAP_EXPERT;
    ck_assert_int_eq(emoe_heatmap_render(t, &o, &px, &w, &h, &err), EMOE_OK);
    unsigned char top[3];
    emoe_colormap(1.0, top);
    int y;
    ck_assert(find_colour(px, w, h, top, &y) >= 0);
    free(px);
    emoe_tensor_free(t);
}
END_TEST

static float poissonish(int l, int e, int k)
{
    return (float)((l * 31 + e * 17 + k * 7) % 23);
}

/* 200 and 1000 classes: transposed, still a sensible size; every layer a panel. */
START_TEST(test_render_many_classes)
{
    struct emoe_error err = {0};
    struct emoe_heatmap_options o;
    emoe_heatmap_options_init(&o);
    o.title = "Tiny ImageNet, 200 classes";
    int Ks[2] = {200, 1000};
    for (int i = 0; i < 2; i++) {
        struct emoe_tensor *t = routing(3, 8, Ks[i], poissonish);
        unsigned char *px;
        int w, h;
        ck_assert_int_eq(emoe_heatmap_render(t, &o, &px, &w, &h, &err), EMOE_OK);
        ck_assert_msg(h >= Ks[i] && h < 1400 && w < 1400, "%d classes: %d x %d", Ks[i], w, h);
        free(px);
        o.layer = 2;
        int w1, h1;
        ck_assert_int_eq(emoe_heatmap_render(t, &o, &px, &w1, &h1, &err), EMOE_OK);
        ck_assert_int_lt(w1, w); /* one panel instead of three */
        png_round_trip(px, w1, h1, 3);
        free(px);
        o.layer = -1;
        emoe_tensor_free(t);
    }
}
END_TEST

/* A small XML well-formedness check: balanced tags, quoted attributes, known
 * entities, one root. */
static int xml_well_formed(const char *s, char *why, size_t n)
{
    char stack[64][32];
    int depth = 0, roots = 0;
    const char *p = s;
    if (strncmp(p, "<?xml", 5) == 0) {
        p = strstr(p, "?>");
        if (!p)
            return snprintf(why, n, "unterminated declaration"), 0;
        p += 2;
    }
    while (*p) {
        if (*p == '&') {
            if (strncmp(p, "&amp;", 5) && strncmp(p, "&lt;", 4) && strncmp(p, "&gt;", 4)
                && strncmp(p, "&quot;", 6) && strncmp(p, "&apos;", 6))
                return snprintf(why, n, "bad entity at %.10s", p), 0;
            p++;
            continue;
        }
        if (*p != '<') {
            if (depth == 0 && *p != '\n' && *p != ' ')
                return snprintf(why, n, "text outside the root"), 0;
            p++;
            continue;
        }
        int closing = p[1] == '/';
        p += 1 + closing;
        size_t nl = strcspn(p, " \t\n/>");
        if (nl == 0 || nl >= 32)
            return snprintf(why, n, "bad tag name at %.10s", p), 0;
        char name[32];
        memcpy(name, p, nl);
        name[nl] = 0;
        p += nl;
        /* attributes */
        for (;;) {
            while (*p == ' ' || *p == '\n' || *p == '\t')
                p++;
            if (*p == '>' || (*p == '/' && p[1] == '>') || !*p)
                break;
            if (closing)
                return snprintf(why, n, "attribute in a closing tag"), 0;
            size_t an = strcspn(p, "= \t\n>");
            if (an == 0 || p[an] != '=' || (p[an + 1] != '"' && p[an + 1] != '\''))
                return snprintf(why, n, "bad attribute at %.20s", p), 0;
            char q = p[an + 1];
            const char *end = strchr(p + an + 2, q);
            if (!end || memchr(p + an + 2, '<', (size_t)(end - p - an - 2)))
                return snprintf(why, n, "bad attribute value at %.20s", p), 0;
            p = end + 1;
        }
        if (!*p)
            return snprintf(why, n, "unterminated tag"), 0;
        int empty = *p == '/';
        p += empty ? 2 : 1;
        if (closing) {
            if (depth == 0 || strcmp(stack[depth - 1], name))
                return snprintf(why, n, "</%s> does not close <%s>", name,
                                depth ? stack[depth - 1] : ""), 0;
            depth--;
        } else {
            if (depth == 0 && ++roots > 1)
                return snprintf(why, n, "two roots"), 0;
            if (!empty) {
                if (depth == 64)
                    return snprintf(why, n, "too deep"), 0;
                strcpy(stack[depth++], name);
            }
        }
    }
    if (depth)
        return snprintf(why, n, "<%s> not closed", stack[depth - 1]), 0;
    return roots == 1 ? 1 : (snprintf(why, n, "no root"), 0);
}

START_TEST(test_svg_is_well_formed)
{
    struct emoe_tensor *t = routing(2, 4, 10, prefers);
    struct emoe_heatmap_options o;
    emoe_heatmap_options_init(&o);
    const char *names[10] = {"plane <&>", "car \"x\"", "b\xc3\xafrd", "cat", "deer", "dog",
                             "frog", "bad \xff utf8", "ship", "a very long class name indeed"};
    o.classes = names;
    o.nclasses = 10;
    o.title = "routing & <experts>";
    o.normalize = EMOE_HEATMAP_CLASS;
    char *svg, why[128] = "";
    size_t len;
    struct emoe_error err = {0};
    ck_assert_int_eq(emoe_heatmap_svg(t, &o, &svg, &len, &err), EMOE_OK);
    ck_assert_uint_eq(strlen(svg), len);
    ck_assert_msg(xml_well_formed(svg, why, sizeof why), "SVG not well-formed: %s", why);
    ck_assert(strstr(svg, "plane &lt;&amp;&gt;") != NULL);
    ck_assert(strstr(svg, "b\xc3\xafrd") != NULL);
    ck_assert(strstr(svg, "bad ? utf8") != NULL);
    ck_assert(strstr(svg, "<svg xmlns=\"http://www.w3.org/2000/svg\"") != NULL);
    /* 2 layers x 4 experts x 10 classes cells */
    size_t cells = 0;
    for (const char *p = svg; (p = strstr(p, "<title>expert ")) != NULL; p++)
        cells++;
    ck_assert_uint_eq(cells, 80);
    free(svg);
    ck_assert(!xml_well_formed("<a><b></a></b>", why, sizeof why));
    ck_assert(!xml_well_formed("<a x=1/>", why, sizeof why));
    emoe_tensor_free(t);
}
END_TEST

START_TEST(test_ascii_rendering)
{
    struct emoe_tensor *t = routing(2, 4, 10, prefers);
    struct emoe_heatmap_options o;
    emoe_heatmap_options_init(&o);
    char *text;
    size_t len;
    struct emoe_error err = {0};
    ck_assert_int_eq(emoe_heatmap_ascii(t, &o, 80, &text, &len, &err), EMOE_OK);
    ck_assert(strstr(text, "layer 0") && strstr(text, "layer 1"));
    ck_assert(strstr(text, "e3 |") != NULL);
    ck_assert(strchr(text, '@') != NULL);
    free(text);
    emoe_tensor_free(t);
    t = routing(1, 8, 1000, poissonish);
    ck_assert_int_eq(emoe_heatmap_ascii(t, &o, 80, &text, &len, &err), EMOE_OK);
    ck_assert(strstr(text, "1000 classes in") != NULL);
    for (char *line = text; *line;) {
        char *nl = strchr(line, '\n');
        ck_assert(nl != NULL);
        ck_assert_int_le(nl - line, 80);
        line = nl + 1;
    }
    free(text);
    emoe_tensor_free(t);
}
END_TEST

static Suite *heatmap_suite(void)
{
    Suite *s = suite_create("heatmap");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_colormap_is_monotone_in_lightness);
    tcase_add_test(tc, test_normalize);
    tcase_add_test(tc, test_render_colours_follow_values);
    tcase_add_test(tc, test_render_many_classes);
    tcase_add_test(tc, test_svg_is_well_formed);
    tcase_add_test(tc, test_ascii_rendering);
    suite_add_tcase(s, tc);
    TCase *png = tcase_create("png");
    tcase_add_test(png, test_png_round_trip);
    suite_add_tcase(s, png);
    TCase *bad = tcase_create("malformed");
    tcase_add_test(bad, test_routing_check_rejects_bad_tensors);
    tcase_add_test(bad, test_png_rejects_bad_arguments);
    suite_add_tcase(s, bad);
    return s;
}

int main(void)
{
    return tu_run(heatmap_suite());
}
