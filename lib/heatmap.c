/*
 * heatmap.c: expert x class routing heatmaps (the EMoE paper's Fig. 3) from a
 * routing tensor f32 [L, E, K] of top-1 counts (METHOD.md section 5), as an RGB
 * raster (for png.c), as SVG text, and as a terminal rendering.
 *
 * The layout is computed once into a display list of rectangles, lines and text
 * runs; the raster and SVG back ends draw the same list.  Raster text uses a
 * built-in 5x7 font (ASCII; other characters are drawn as '?'), SVG text is the
 * real UTF-8.  Colours come from emoe_colormap(), a viridis-like map defined in
 * CIELAB with lightness rising linearly (L* 16 to 91), so the colour order is the value order.
 *
 * Dimension letters: L layers, E experts, K classes.
 */
#include "config.h"
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ the font */

/* 5x7 glyphs for ' ' .. '~': seven rows, bit 4 the leftmost column.  Drawn in a
 * 6x8 cell (one column and one row of spacing). */
static const unsigned char font5x7[95][7] = {
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, {0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04},
    {0x0A, 0x0A, 0x0A, 0x00, 0x00, 0x00, 0x00}, {0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A},
    {0x04, 0x0F, 0x14, 0x0E, 0x05, 0x1E, 0x04}, {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03},
    {0x0C, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0D}, {0x0C, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00},
    {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}, {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08},
    {0x00, 0x04, 0x15, 0x0E, 0x15, 0x04, 0x00}, {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00},
    {0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08}, {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00},
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}, {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00},
    {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}, {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E},
    {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}, {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E},
    {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}, {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E},
    {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}, {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08},
    {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}, {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C},
    {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00}, {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x04, 0x08},
    {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02}, {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00},
    {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08}, {0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04},
    {0x0E, 0x11, 0x01, 0x0D, 0x15, 0x15, 0x0E}, {0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11},
    {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E}, {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E},
    {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C}, {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F},
    {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10}, {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F},
    {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}, {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E},
    {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C}, {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11},
    {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F}, {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11},
    {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11}, {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E},
    {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10}, {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D},
    {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11}, {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E},
    {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}, {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E},
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04}, {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A},
    {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11}, {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04},
    {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F}, {0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E},
    {0x00, 0x10, 0x08, 0x04, 0x02, 0x01, 0x00}, {0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E},
    {0x04, 0x0A, 0x11, 0x00, 0x00, 0x00, 0x00}, {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F},
    {0x08, 0x04, 0x02, 0x00, 0x00, 0x00, 0x00}, {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F},
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E}, {0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E},
    {0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F}, {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E},
    {0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08}, {0x00, 0x00, 0x0F, 0x11, 0x0F, 0x01, 0x0E},
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11}, {0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E},
    {0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C}, {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12},
    {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}, {0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11},
    {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11}, {0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E},
    {0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10}, {0x00, 0x00, 0x0D, 0x13, 0x0F, 0x01, 0x01},
    {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10}, {0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E},
    {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06}, {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D},
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04}, {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A},
    {0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11}, {0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E},
    {0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F}, {0x02, 0x04, 0x04, 0x08, 0x04, 0x04, 0x02},
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}, {0x08, 0x04, 0x04, 0x02, 0x04, 0x04, 0x08},
    {0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00},
};
#define GLYPH_W 6 /* advance */
#define GLYPH_H 8 /* line height */

/* ------------------------------------------------------------ the colour map */

/* sRGB (0..1, clipped = 0 when out of gamut) of CIELAB (D65). */
static int lab_to_srgb(double L, double a, double b, double rgb[3])
{
    double fy = (L + 16.0) / 116.0, fx = fy + a / 500.0, fz = fy - b / 200.0;
    double f[3] = {fx, fy, fz}, xyz[3];
    static const double white[3] = {0.95047, 1.0, 1.08883};
    for (int i = 0; i < 3; i++) {
        double t = f[i];
        xyz[i] = white[i] * (t > 6.0 / 29.0 ? t * t * t : 3.0 * (6.0 / 29.0) * (6.0 / 29.0)
                                                              * (t - 4.0 / 29.0));
    }
    double lin[3] = {
        3.2404542 * xyz[0] - 1.5371385 * xyz[1] - 0.4985314 * xyz[2],
        -0.9692660 * xyz[0] + 1.8760108 * xyz[1] + 0.0415560 * xyz[2],
        0.0556434 * xyz[0] - 0.2040259 * xyz[1] + 1.0572252 * xyz[2],
    };
    int in = 1;
    for (int i = 0; i < 3; i++) {
        double c = lin[i];
        if (c < -1e-9 || c > 1.0 + 1e-9)
            in = 0;
        c = c < 0 ? 0 : c > 1 ? 1 : c;
        rgb[i] = c <= 0.0031308 ? 12.92 * c : 1.055 * pow(c, 1.0 / 2.4) - 0.055;
    }
    return in;
}

void emoe_colormap(double t, unsigned char rgb[3])
{
    if (!(t > 0))
        t = 0;
    if (t > 1)
        t = 1;
    /* L* rises linearly from 16 to 91; hue and chroma run piecewise linearly through
     * those of five colours of matplotlib's viridis (at t = 0, 1/4, 1/2, 3/4, 1: violet,
     * blue, teal, green, yellow), measured in CIELAB */
    static const double hue[5] = {321.5, 285.0, 191.2, 140.9, 96.9};
    static const double chroma[5] = {51.9, 35.6, 31.5, 66.6, 85.9};
    double L = 16.0 + 75.0 * t, u = 4.0 * t;
    int i0 = u >= 4.0 ? 3 : (int)u;
    double f = u - i0;
    double h = (hue[i0] + f * (hue[i0 + 1] - hue[i0])) * (3.14159265358979323846 / 180.0);
    double C = chroma[i0] + f * (chroma[i0 + 1] - chroma[i0]);
    double lo = 0, hi = C, out[3];
    /* the largest chroma up to C that is inside the sRGB gamut (L* is kept) */
    if (!lab_to_srgb(L, C * cos(h), C * sin(h), out)) {
        for (int i = 0; i < 30; i++) {
            double mid = 0.5 * (lo + hi);
            if (lab_to_srgb(L, mid * cos(h), mid * sin(h), out))
                lo = mid;
            else
                hi = mid;
        }
        lab_to_srgb(L, lo * cos(h), lo * sin(h), out);
    }
    for (int i = 0; i < 3; i++)
        rgb[i] = (unsigned char)lrint(out[i] * 255.0);
}

/* ------------------------------------------------------------ input checks */

int emoe_routing_check(const struct emoe_tensor *t, const char *name, struct emoe_error *err)
{
    char shp[128];
    const char *pre = name ? name : "routing tensor";
    if (t->dtype != EMOE_F32)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: routing tensor is %s, not f32", pre,
                              emoe_dtype_name(t->dtype));
    if (t->ndim != 3)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: routing tensor has shape %s, not "
                              "[layers, experts, classes]", pre,
                              emoe_shape_format(t->ndim, t->shape, shp, sizeof shp));
    for (int i = 0; i < 3; i++)
        if (t->shape[i] <= 0 || t->shape[i] > 1000000)
            return emoe_error_set(err, EMOE_ERANGE, "%s: routing tensor has shape %s (each "
                                  "dimension must be 1 .. 1000000)", pre,
                                  emoe_shape_format(t->ndim, t->shape, shp, sizeof shp));
    if (t->nelem > (size_t)1 << 26)
        return emoe_error_set(err, EMOE_ERANGE, "%s: routing tensor of %zu values is larger "
                              "than %zu", pre, t->nelem, (size_t)1 << 26);
    const float *v = t->data;
    for (size_t i = 0; i < t->nelem; i++)
        if (!isfinite(v[i]) || v[i] < 0)
            return emoe_error_set(err, EMOE_EFORMAT, "%s: routing count %zu is %g (counts must "
                                  "be finite and non-negative)", pre, i, (double)v[i]);
    return EMOE_OK;
}

void emoe_heatmap_options_init(struct emoe_heatmap_options *o)
{
    memset(o, 0, sizeof *o);
    o->layer = -1;
    o->normalize = EMOE_HEATMAP_NONE;
}

void emoe_heatmap_normalize(float *out, const float *counts, int E, int K,
                            enum emoe_heatmap_norm norm)
{
    size_t EK = (size_t)E * (size_t)K;
    memcpy(out, counts, EK * sizeof *out);
    if (norm == EMOE_HEATMAP_CLASS) {
        for (int k = 0; k < K; k++) {
            double s = 0;
            for (int e = 0; e < E; e++)
                s += counts[(size_t)e * K + k];
            for (int e = 0; e < E; e++)
                out[(size_t)e * K + k] = s > 0 ? (float)(counts[(size_t)e * K + k] / s) : 0.0f;
        }
    } else if (norm == EMOE_HEATMAP_EXPERT) {
        for (int e = 0; e < E; e++) {
            double s = 0;
            for (int k = 0; k < K; k++)
                s += counts[(size_t)e * K + k];
            for (int k = 0; k < K; k++)
                out[(size_t)e * K + k] = s > 0 ? (float)(counts[(size_t)e * K + k] / s) : 0.0f;
        }
    }
}

static int check_options(const struct emoe_tensor *t, const struct emoe_heatmap_options *o,
                         struct emoe_error *err)
{
    int rc = emoe_routing_check(t, NULL, err);
    if (rc != EMOE_OK)
        return rc;
    if (o->layer < -1 || o->layer >= t->shape[0])
        return emoe_error_set(err, EMOE_EINVAL, "layer %d is outside the routing tensor's "
                              "%lld layers", o->layer, (long long)t->shape[0]);
    if (o->normalize != EMOE_HEATMAP_NONE && o->normalize != EMOE_HEATMAP_CLASS
        && o->normalize != EMOE_HEATMAP_EXPERT)
        return emoe_error_set(err, EMOE_EINVAL, "unknown normalisation %d", (int)o->normalize);
    if (o->classes && o->nclasses != (size_t)t->shape[2])
        return emoe_error_set(err, EMOE_EINVAL, "%zu class names for a routing tensor of %lld "
                              "classes", o->nclasses, (long long)t->shape[2]);
    return EMOE_OK;
}

/* ------------------------------------------------------------ values */

/* What is drawn: the normalised maps of the shown layers and each layer's expert
 * shares, with the common colour scale. */
struct maps {
    int L, E, K;        /* shown layers, experts, classes */
    int first;          /* index of the first shown layer */
    float *v;           /* [L, E, K] normalised */
    double *share;      /* [L, E] share of each expert in the layer's tokens */
    double vmax, smax;  /* colour scale top, largest share */
};

static void maps_free(struct maps *m)
{
    free(m->v);
    free(m->share);
}

static int maps_make(const struct emoe_tensor *t, const struct emoe_heatmap_options *o,
                     struct maps *m, struct emoe_error *err)
{
    memset(m, 0, sizeof *m);
    int rc = check_options(t, o, err);
    if (rc != EMOE_OK)
        return rc;
    m->E = (int)t->shape[1];
    m->K = (int)t->shape[2];
    m->first = o->layer < 0 ? 0 : o->layer;
    m->L = o->layer < 0 ? (int)t->shape[0] : 1;
    size_t EK = (size_t)m->E * (size_t)m->K;
    m->v = malloc((size_t)m->L * EK * sizeof *m->v);
    m->share = calloc((size_t)m->L * (size_t)m->E, sizeof *m->share);
    if (!m->v || !m->share) {
        maps_free(m);
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory for a heatmap");
    }
    const float *c = t->data;
    for (int l = 0; l < m->L; l++) {
        const float *cl = c + (size_t)(m->first + l) * EK;
        emoe_heatmap_normalize(m->v + (size_t)l * EK, cl, m->E, m->K, o->normalize);
        double total = 0;
        for (int e = 0; e < m->E; e++) {
            double s = 0;
            for (int k = 0; k < m->K; k++)
                s += cl[(size_t)e * m->K + k];
            m->share[(size_t)l * m->E + e] = s;
            total += s;
        }
        for (int e = 0; e < m->E; e++) {
            double *sh = &m->share[(size_t)l * m->E + e];
            *sh = total > 0 ? *sh / total : 0;
            m->smax = fmax(m->smax, *sh);
        }
    }
    for (size_t i = 0; i < (size_t)m->L * EK; i++)
        m->vmax = fmax(m->vmax, m->v[i]);
    if (!(m->vmax > 0))
        m->vmax = 1;
    m->smax = fmax(m->smax, 1.0 / m->E);
    return EMOE_OK;
}

/* ------------------------------------------------------------ display list */

enum item_kind { ITEM_RECT, ITEM_TEXT, ITEM_CELLS };
struct item {
    enum item_kind kind;
    int x, y, w, h;             /* rect; text box (w, h set from the text) */
    unsigned char rgb[3];
    char *text;                 /* ITEM_TEXT: owned, UTF-8 */
    int scale;                  /* text size: 1 or 2 */
    int vertical;               /* text reads bottom to top */
    int layer;                  /* ITEM_CELLS: the panel's layer (index into maps) */
    int cw, ch, transposed;     /* ITEM_CELLS: cell size and orientation */
};
struct scene {
    int width, height;
    struct item *items;
    size_t n, cap;
    int failed;
};

static struct item *scene_add(struct scene *s, enum item_kind kind)
{
    if (s->failed)
        return NULL;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        struct item *p = realloc(s->items, cap * sizeof *p);
        if (!p) {
            s->failed = 1;
            return NULL;
        }
        s->items = p;
        s->cap = cap;
    }
    struct item *it = &s->items[s->n++];
    memset(it, 0, sizeof *it);
    it->kind = kind;
    return it;
}

static void rect(struct scene *s, int x, int y, int w, int h, unsigned char r,
                 unsigned char g, unsigned char b)
{
    struct item *it = scene_add(s, ITEM_RECT);
    if (!it)
        return;
    it->x = x;
    it->y = y;
    it->w = w;
    it->h = h;
    it->rgb[0] = r;
    it->rgb[1] = g;
    it->rgb[2] = b;
}

/* Number of characters (code points) of UTF-8 text, at most max. */
static int text_chars(const char *t)
{
    int n = 0;
    for (const unsigned char *p = (const unsigned char *)t; *p; p++)
        n += (*p & 0xC0) != 0x80;
    return n;
}

/* The first max characters of t (with "~" marking a cut), malloc'd. */
static char *text_cut(const char *t, int max)
{
    size_t len = strlen(t), end = 0;
    int n = 0;
    for (end = 0; end < len; end++) {
        if (((unsigned char)t[end] & 0xC0) != 0x80) {
            if (n == max)
                break;
            n++;
        }
    }
    int cut = end < len;
    char *r = malloc(end + 2);
    if (!r)
        return NULL;
    memcpy(r, t, end);
    if (cut && end > 0) {
        /* replace the last character with '~' */
        size_t last = end - 1;
        while (last > 0 && ((unsigned char)r[last] & 0xC0) == 0x80)
            last--;
        r[last] = '~';
        end = last + 1;
    }
    r[end] = '\0';
    return r;
}

/* Text with its box's top-left corner at (x, y); anchor_right puts the box's right
 * edge at x instead (for horizontal text). */
static void text(struct scene *s, int x, int y, const char *t, int scale, int vertical,
                 int anchor_right)
{
    struct item *it = scene_add(s, ITEM_TEXT);
    if (!it)
        return;
    it->text = strdup(t);
    if (!it->text) {
        s->failed = 1;
        s->n--;
        return;
    }
    int len = text_chars(t) * GLYPH_W * scale;
    it->scale = scale;
    it->vertical = vertical;
    it->w = vertical ? GLYPH_H * scale : len;
    it->h = vertical ? len : GLYPH_H * scale;
    it->x = anchor_right && !vertical ? x - len : x;
    it->y = y;
}

static void scene_free(struct scene *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->items[i].text);
    free(s->items);
}

/* ------------------------------------------------------------ layout */

#define MARGIN 12
#define LABEL_MAX 16    /* characters of a class name shown */
#define BAR_LEN 60      /* pixels of the largest expert share */
#define CBAR_W 14

static int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

static void class_label(const struct emoe_heatmap_options *o, int k, char *buf, size_t n)
{
    if (o->classes && o->classes[k]) {
        char *c = text_cut(o->classes[k], LABEL_MAX);
        snprintf(buf, n, "%s", c ? c : "?");
        free(c);
    } else {
        snprintf(buf, n, "%d", k);
    }
}

static int longest_class_label(const struct emoe_heatmap_options *o, int K)
{
    int best = 1;
    char buf[128];
    for (int k = 0; k < K; k++) {
        class_label(o, k, buf, sizeof buf);
        int n = text_chars(buf);
        if (n > best)
            best = n;
    }
    return best;
}

static const char *norm_caption(enum emoe_heatmap_norm n)
{
    return n == EMOE_HEATMAP_CLASS ? "share of class" : n == EMOE_HEATMAP_EXPERT
                                                            ? "share of expert" : "count";
}

/* The colour bar at (x, y), h tall, with ticks at 0, vmax/2, vmax. */
static void colour_bar(struct scene *s, const struct maps *m,
                       const struct emoe_heatmap_options *o, int x, int y, int h)
{
    text(s, x, y - GLYPH_H - 4, norm_caption(o->normalize), 1, 0, 0);
    for (int i = 0; i < h; i++) {
        unsigned char c[3];
        emoe_colormap(1.0 - (double)i / (h > 1 ? h - 1 : 1), c);
        rect(s, x, y + i, CBAR_W, 1, c[0], c[1], c[2]);
    }
    for (int t = 0; t <= 2; t++) {
        char buf[32];
        double v = m->vmax * (2 - t) / 2.0;
        int ty = y + (int)lrint((h - 1) * t / 2.0);
        rect(s, x + CBAR_W, ty, 3, 1, 40, 40, 40);
        snprintf(buf, sizeof buf, "%.3g", v);
        text(s, x + CBAR_W + 5, clampi(ty - 3, y - 3, y + h - 5), buf, 1, 0, 0);
    }
}

static void build_scene(struct scene *s, const struct maps *m,
                        const struct emoe_heatmap_options *o)
{
    int E = m->E, K = m->K, transposed = K > EMOE_HEATMAP_TRANSPOSE_K;
    int labchars = longest_class_label(o, K);
    char buf[160];
    int top = MARGIN;
    if (o->title && o->title[0]) {
        char *t = text_cut(o->title, 120);
        if (t)
            text(s, MARGIN, top, t, 2, 0, 0);
        free(t);
        top += 2 * GLYPH_H + 8;
    }
    int right = 0, cbar_y = 0, cbar_h = 0;
    if (!transposed) {
        /* classes on x (labels vertical below), experts on y; panels stacked */
        int cw = clampi(720 / K, 2, 40), ch = clampi(cw, 10, 40);
        if (E * ch > 640)
            ch = clampi(640 / E, 2, 40);
        int estep = (GLYPH_H + ch - 1) / ch, kstep = (GLYPH_H + cw - 1) / cw;
        snprintf(buf, sizeof buf, "e%d", E - 1);
        int elab = text_chars(buf) * GLYPH_W + 6;
        int mx = MARGIN + elab, y = top;
        for (int l = 0; l < m->L; l++) {
            snprintf(buf, sizeof buf, "layer %d", m->first + l);
            text(s, MARGIN, y, buf, 1, 0, 0);
            text(s, mx + K * cw + 8, y, "expert load", 1, 0, 0);
            y += GLYPH_H + 4;
            struct item *it = scene_add(s, ITEM_CELLS);
            if (it) {
                it->x = mx;
                it->y = y;
                it->w = K * cw;
                it->h = E * ch;
                it->cw = cw;
                it->ch = ch;
                it->layer = l;
            }
            if (l == 0) {
                cbar_y = y;
                cbar_h = E * ch < 100 ? 100 : E * ch;
            }
            for (int e = 0; e < E; e += estep) {
                snprintf(buf, sizeof buf, "e%d", e);
                text(s, mx - 4, y + e * ch + (ch - 7) / 2, buf, 1, 0, 1);
            }
            /* expert load bars, right of the map */
            int bx = mx + K * cw + 8;
            for (int e = 0; e < E; e++) {
                double sh = m->share[(size_t)l * E + e];
                int len = (int)lrint(BAR_LEN * sh / m->smax);
                rect(s, bx, y + e * ch + (ch > 3 ? 1 : 0), len, ch > 3 ? ch - 2 : ch, 110, 110,
                     110);
                if (ch >= GLYPH_H + 1) {
                    snprintf(buf, sizeof buf, "%.1f%%", 100.0 * sh);
                    text(s, bx + BAR_LEN + 4, y + e * ch + (ch - 7) / 2, buf, 1, 0, 0);
                }
            }
            int ux = bx + (int)lrint(BAR_LEN * (1.0 / E) / m->smax);
            for (int yy = 0; yy < E * ch; yy += 4) /* dashed: the uniform share */
                rect(s, ux, y + yy, 1, 2, 200, 50, 50);
            y += E * ch + 4;
            for (int k = 0; k < K; k += kstep) {
                class_label(o, k, buf, sizeof buf);
                text(s, mx + k * cw + (cw - GLYPH_H) / 2, y, buf, 1, 1, 0);
            }
            y += labchars * GLYPH_W + 12;
            int r = bx + BAR_LEN + 4 + 7 * GLYPH_W;
            if (r > right)
                right = r;
        }
        s->height = y;
    } else {
        /* classes on y (labels left of the first panel), experts on x; panels side by side */
        int ch = clampi(900 / K, 1, 16), cw = clampi(480 / E, 6, 24);
        int kstep = (GLYPH_H + 1 + ch - 1) / ch;
        int lab = labchars * GLYPH_W + 6;
        int x = MARGIN + lab, y0 = top + GLYPH_H + 4 + 40 + 4 + GLYPH_H + 2;
        int estep = 1;
        snprintf(buf, sizeof buf, "%d", E - 1);
        while (estep * cw < (int)strlen(buf) * GLYPH_W + 2)
            estep++;
        for (int k = 0; k < K; k += kstep) {
            class_label(o, k, buf, sizeof buf);
            text(s, x - 4, y0 + k * ch + (ch - 7) / 2, buf, 1, 0, 1);
        }
        cbar_y = y0;
        cbar_h = K * ch < 100 ? 100 : K * ch;
        for (int l = 0; l < m->L; l++) {
            int w = E * cw;
            snprintf(buf, sizeof buf, "layer %d", m->first + l);
            text(s, x, top, buf, 1, 0, 0);
            /* expert load bars above the map, rising */
            int by = top + GLYPH_H + 4 + 40;
            for (int e = 0; e < E; e++) {
                double sh = m->share[(size_t)l * E + e];
                int len = (int)lrint(40 * sh / m->smax);
                rect(s, x + e * cw + (cw > 3 ? 1 : 0), by - len, cw > 3 ? cw - 2 : cw, len, 110,
                     110, 110);
            }
            int uy = by - (int)lrint(40 * (1.0 / E) / m->smax);
            for (int xx = 0; xx < w; xx += 4)
                rect(s, x + xx, uy, 2, 1, 200, 50, 50);
            for (int e = 0; e < E; e += estep) {
                snprintf(buf, sizeof buf, "%d", e);
                text(s, x + e * cw + (cw - text_chars(buf) * GLYPH_W) / 2, by + 4, buf, 1, 0,
                     0);
            }
            struct item *it = scene_add(s, ITEM_CELLS);
            if (it) {
                it->x = x;
                it->y = y0;
                it->w = w;
                it->h = K * ch;
                it->cw = cw;
                it->ch = ch;
                it->layer = l;
                it->transposed = 1;
            }
            x += w + 16;
        }
        right = x;
        s->height = y0 + K * ch + 8 + GLYPH_H;
        text(s, MARGIN + lab, y0 + K * ch + 6, "experts (bars: load)", 1, 0, 0);
    }
    int cx = right + 8;
    colour_bar(s, m, o, cx, cbar_y, cbar_h);
    s->width = cx + CBAR_W + 5 + 9 * GLYPH_W + MARGIN;
    if (s->height < cbar_y + cbar_h + 8)
        s->height = cbar_y + cbar_h + 8;
    s->height += MARGIN;
    if (o->title) {
        int tw = MARGIN * 2 + text_chars(o->title) * 2 * GLYPH_W;
        if (tw > s->width)
            s->width = tw < 4000 ? tw : 4000;
    }
}

static int scene_make(const struct emoe_tensor *t, const struct emoe_heatmap_options *o,
                      struct maps *m, struct scene *s, struct emoe_error *err)
{
    memset(s, 0, sizeof *s);
    int rc = maps_make(t, o, m, err);
    if (rc != EMOE_OK)
        return rc;
    build_scene(s, m, o);
    if (s->failed || s->width <= 0 || s->height <= 0 || s->width > 20000
        || s->height > 20000) {
        int big = !s->failed;
        rc = emoe_error_set(err, big ? EMOE_ERANGE : EMOE_ENOMEM, big ? "heatmap of %d x %d "
                            "pixels is too large" : "out of memory laying out a heatmap "
                            "(%d x %d)", s->width, s->height);
        scene_free(s);
        maps_free(m);
    }
    return rc;
}

/* The colour of cell (e, k) of the panel's layer. */
static void cell_colour(const struct maps *m, const unsigned char (*lut)[3], int layer, int e,
                        int k, unsigned char out[3])
{
    float v = m->v[((size_t)layer * m->E + e) * m->K + k];
    int i = (int)lrint(255.0 * v / m->vmax);
    memcpy(out, lut[clampi(i, 0, 255)], 3);
}

/* ------------------------------------------------------------ raster */

static void fill(unsigned char *px, int W, int H, int x, int y, int w, int h,
                 const unsigned char rgb[3])
{
    int x0 = clampi(x, 0, W), x1 = clampi(x + w, 0, W);
    int y0 = clampi(y, 0, H), y1 = clampi(y + h, 0, H);
    for (int yy = y0; yy < y1; yy++)
        for (int xx = x0; xx < x1; xx++)
            memcpy(px + ((size_t)yy * W + xx) * 3, rgb, 3);
}

static void draw_text(unsigned char *px, int W, int H, const struct item *it)
{
    static const unsigned char ink[3] = {30, 30, 30};
    int s = it->scale, len = text_chars(it->text) * GLYPH_W;
    int i = 0;
    for (const unsigned char *p = (const unsigned char *)it->text; *p; p++) {
        if ((*p & 0xC0) == 0x80)
            continue;
        int c = *p >= 0x20 && *p < 0x7F ? *p - 0x20 : '?' - 0x20;
        for (int gy = 0; gy < 7; gy++)
            for (int gx = 0; gx < 5; gx++) {
                if (!(font5x7[c][gy] & (0x10 >> gx)))
                    continue;
                int u = i * GLYPH_W + gx;
                int x = it->vertical ? it->x + gy * s : it->x + u * s;
                int y = it->vertical ? it->y + (len - 1 - u) * s : it->y + gy * s;
                fill(px, W, H, x, y, s, s, ink);
            }
        i++;
    }
}

int emoe_heatmap_render(const struct emoe_tensor *routing, const struct emoe_heatmap_options *o,
                        unsigned char **rgb, int *width, int *height, struct emoe_error *err)
{
    *rgb = NULL;
    struct maps m;
    struct scene s;
    int rc = scene_make(routing, o, &m, &s, err);
    if (rc != EMOE_OK)
        return rc;
    unsigned char lut[256][3];
    for (int i = 0; i < 256; i++)
        emoe_colormap(i / 255.0, lut[i]);
    int W = s.width, H = s.height;
    unsigned char *px = malloc((size_t)W * (size_t)H * 3);
    if (!px) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory for a %d x %d heatmap", W, H);
        goto done;
    }
    memset(px, 255, (size_t)W * (size_t)H * 3);
    for (size_t i = 0; i < s.n; i++) {
        const struct item *it = &s.items[i];
        if (it->kind == ITEM_RECT) {
            fill(px, W, H, it->x, it->y, it->w, it->h, it->rgb);
        } else if (it->kind == ITEM_TEXT) {
            draw_text(px, W, H, it);
        } else {
            int rows = it->transposed ? m.K : m.E, cols = it->transposed ? m.E : m.K;
            for (int r = 0; r < rows; r++)
                for (int c = 0; c < cols; c++) {
                    unsigned char col[3];
                    cell_colour(&m, (const unsigned char(*)[3])lut, it->layer,
                                it->transposed ? c : r, it->transposed ? r : c, col);
                    fill(px, W, H, it->x + c * it->cw, it->y + r * it->ch, it->cw, it->ch, col);
                }
        }
    }
    *rgb = px;
    *width = W;
    *height = H;
done:
    scene_free(&s);
    maps_free(&m);
    return rc;
}

/* ------------------------------------------------------------ SVG */

/* XML-escaped text; invalid UTF-8 and control bytes become '?'. */
static void svg_escape(FILE *f, const char *t)
{
    const unsigned char *p = (const unsigned char *)t;
    while (*p) {
        int n = *p < 0x80 ? 1 : (*p & 0xE0) == 0xC0 ? 2 : (*p & 0xF0) == 0xE0 ? 3
                                                      : (*p & 0xF8) == 0xF0 ? 4 : 0;
        int ok = n > 0 && (n > 1 || *p >= 0x20) && !(n == 2 && *p < 0xC2);
        for (int i = 1; ok && i < n; i++)
            ok = (p[i] & 0xC0) == 0x80;
        if (!ok) {
            fputc('?', f);
            p++;
            continue;
        }
        if (*p == '&')
            fputs("&amp;", f);
        else if (*p == '<')
            fputs("&lt;", f);
        else if (*p == '>')
            fputs("&gt;", f);
        else if (*p == '"')
            fputs("&quot;", f);
        else
            fwrite(p, 1, (size_t)n, f);
        p += n;
    }
}

int emoe_heatmap_svg(const struct emoe_tensor *routing, const struct emoe_heatmap_options *o,
                     char **svg, size_t *len, struct emoe_error *err)
{
    *svg = NULL;
    struct maps m;
    struct scene s;
    int rc = scene_make(routing, o, &m, &s, err);
    if (rc != EMOE_OK)
        return rc;
    unsigned char lut[256][3];
    for (int i = 0; i < 256; i++)
        emoe_colormap(i / 255.0, lut[i]);
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    if (!f) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory for an SVG heatmap");
        goto done;
    }
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
               "viewBox=\"0 0 %d %d\">\n", s.width, s.height, s.width, s.height);
    if (o->title) {
        fputs("<title>", f);
        svg_escape(f, o->title);
        fputs("</title>\n", f);
    }
    fprintf(f, "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n"
               "<g font-family=\"DejaVu Sans Mono, monospace\" fill=\"#1e1e1e\">\n",
            s.width, s.height);
    for (size_t i = 0; i < s.n; i++) {
        const struct item *it = &s.items[i];
        if (it->kind == ITEM_RECT) {
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
                       "fill=\"#%02x%02x%02x\"/>\n", it->x, it->y, it->w, it->h, it->rgb[0],
                    it->rgb[1], it->rgb[2]);
        } else if (it->kind == ITEM_TEXT) {
            int fs = 10 * it->scale;
            if (it->vertical) {
                int bx = it->x + 7 * it->scale, by = it->y + it->h;
                fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"%d\" transform=\"rotate(-90 %d "
                           "%d)\">", bx, by, fs, bx, by);
            } else {
                fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"%d\">", it->x,
                        it->y + 7 * it->scale, fs);
            }
            svg_escape(f, it->text);
            fputs("</text>\n", f);
        } else {
            int rows = it->transposed ? m.K : m.E, cols = it->transposed ? m.E : m.K;
            fprintf(f, "<g shape-rendering=\"crispEdges\">\n");
            for (int r = 0; r < rows; r++)
                for (int c = 0; c < cols; c++) {
                    unsigned char col[3];
                    int e = it->transposed ? c : r, k = it->transposed ? r : c;
                    cell_colour(&m, (const unsigned char(*)[3])lut, it->layer, e, k, col);
                    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
                               "fill=\"#%02x%02x%02x\"><title>expert %d, class %d: %.6g"
                               "</title></rect>\n", it->x + c * it->cw, it->y + r * it->ch,
                            it->cw, it->ch, col[0], col[1], col[2], e, k,
                            (double)m.v[((size_t)it->layer * m.E + e) * m.K + k]);
                }
            fputs("</g>\n", f);
        }
    }
    fputs("</g>\n</svg>\n", f);
    if (ferror(f) | fclose(f)) {
        free(buf);
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory writing an SVG heatmap");
        goto done;
    }
    *svg = buf;
    *len = size;
done:
    scene_free(&s);
    maps_free(&m);
    return rc;
}

/* ------------------------------------------------------------ terminal */

int emoe_heatmap_ascii(const struct emoe_tensor *routing, const struct emoe_heatmap_options *o,
                       int columns, char **textp, size_t *len, struct emoe_error *err)
{
    static const char ramp[] = " .:-=+*#%@";
    *textp = NULL;
    struct maps m;
    int rc = maps_make(routing, o, &m, err);
    if (rc != EMOE_OK)
        return rc;
    char buf[32];
    snprintf(buf, sizeof buf, "e%d", m.E - 1);
    int lab = (int)strlen(buf);
    /* "eN |cells| 12.5%" */
    int room = columns - lab - 3 - 8;
    if (room < 4)
        room = 4;
    int bins = m.K < room ? m.K : room;
    char *out = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&out, &size);
    if (!f) {
        maps_free(&m);
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory for a heatmap");
    }
    if (o->title)
        fprintf(f, "%s\n", o->title);
    fprintf(f, "%s: ' ' = 0 ... '@' = %.4g", norm_caption(o->normalize), m.vmax);
    if (bins < m.K)
        fprintf(f, "; %d classes in %d columns (mean of each)", m.K, bins);
    fputc('\n', f);
    for (int l = 0; l < m.L; l++) {
        fprintf(f, "layer %d (right: expert load)\n", m.first + l);
        if (bins == m.K && m.K <= 100) { /* class index ones digit */
            fprintf(f, "%*s", lab + 2, "");
            for (int k = 0; k < m.K; k++)
                fputc('0' + k % 10, f);
            fputc('\n', f);
        }
        for (int e = 0; e < m.E; e++) {
            snprintf(buf, sizeof buf, "e%d", e);
            fprintf(f, "%*s |", lab, buf);
            for (int b = 0; b < bins; b++) {
                int k0 = (int)((long long)b * m.K / bins), k1 = (int)((long long)(b + 1) * m.K
                                                                      / bins);
                double s = 0;
                for (int k = k0; k < k1; k++)
                    s += m.v[((size_t)l * m.E + e) * m.K + k];
                double v = k1 > k0 ? s / (k1 - k0) / m.vmax : 0;
                int i = (int)floor(v * 9.0 + 0.5);
                fputc(ramp[clampi(i, 0, 9)], f);
            }
            fprintf(f, "| %5.1f%%\n", 100.0 * m.share[(size_t)l * m.E + e]);
        }
    }
    if (o->classes && bins == m.K) {
        fputs("classes:", f);
        for (int k = 0; k < m.K; k++)
            fprintf(f, " %d=%s", k, o->classes[k]);
        fputc('\n', f);
    }
    maps_free(&m);
    if (ferror(f) | fclose(f)) {
        free(out);
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory for a heatmap");
    }
    *textp = out;
    *len = size;
    return EMOE_OK;
}
