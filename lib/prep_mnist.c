/*
 * prep_mnist.c: the idx reader (MNIST, Fashion-MNIST and any idx3 images + idx1
 * labels pair), plain or gzip'd, read through zlib and bounded by the header.
 */
#include "config.h"
#include "data.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#define MAX_SIDE 16384

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Open an idx file and parse its header: type 0x08 (ubyte), rank; dims out. */
static int idx_open(const char *path, int want_rank, uint32_t *dims, gzFile *out,
                    struct emoe_error *err)
{
    *out = NULL;
    gzFile g = gzopen(path, "rb");
    if (!g)
        return emoe_error_set(err, errno == ENOENT ? EMOE_ENOTFOUND : EMOE_EIO, "%s: %s", path,
                              errno ? strerror(errno) : "cannot open");
    unsigned char h[16];
    int rc = prep_gz_read(g, path, h, 4, "idx header", err);
    if (rc != EMOE_OK)
        goto fail;
    if (h[0] != 0 || h[1] != 0 || h[2] != 8 || h[3] != want_rank) {
        rc = emoe_error_set(err, EMOE_EFORMAT,
                            "%s: not an idx%d ubyte file (magic %02x %02x %02x %02x)", path,
                            want_rank, h[0], h[1], h[2], h[3]);
        goto fail;
    }
    rc = prep_gz_read(g, path, h + 4, 4 * (size_t)want_rank, "idx header", err);
    if (rc != EMOE_OK)
        goto fail;
    for (int i = 0; i < want_rank; i++)
        dims[i] = be32(h + 4 + 4 * i);
    *out = g;
    return EMOE_OK;
fail:
    gzclose(g);
    return rc;
}

/* The n labels, in a buffer that grows with the data that arrives (to at most twice
 * it): the header's count alone must not allocate gigabytes.  Messages as
 * prep_gz_read's. */
static int read_labels(gzFile g, const char *path, size_t n, unsigned char **out,
                       struct emoe_error *err)
{
    size_t cap = n < ((size_t)1 << 16) ? (n ? n : 1) : (size_t)1 << 16, have = 0;
    unsigned char *p = malloc(cap);
    *out = NULL;
    if (!p)
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", path);
    while (have < n) {
        if (have == cap) {
            size_t grow = cap < n - cap ? 2 * cap : n;
            unsigned char *q = realloc(p, grow);
            if (!q) {
                free(p);
                return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", path);
            }
            p = q;
            cap = grow;
        }
        unsigned chunk = cap - have > (1u << 30) ? 1u << 30 : (unsigned)(cap - have);
        int r = gzread(g, p + have, chunk);
        if (r <= 0) {
            int e = 0;
            const char *m = r < 0 ? gzerror(g, &e) : NULL;
            free(p);
            if (r < 0)
                return emoe_error_set(err, e == Z_ERRNO ? EMOE_EIO : EMOE_EFORMAT, "%s: %s",
                                      path, e == Z_ERRNO ? strerror(errno) : m);
            return emoe_error_set(err, EMOE_EFORMAT, "%s: truncated labels (%zu of %zu bytes)",
                                  path, have, n);
        }
        have += (size_t)r;
    }
    *out = p;
    return EMOE_OK;
}

/* Which rank an idx file has (1 or 3), or 0. */
static int idx_rank(const char *path)
{
    gzFile g = gzopen(path, "rb");
    if (!g)
        return 0;
    unsigned char h[4];
    int r = gzread(g, h, 4);
    gzclose(g);
    if (r != 4 || h[0] || h[1] || h[2] != 8)
        return 0;
    return h[3];
}

static int exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* The labels file next to an images file: "...images-idx3-ubyte..." -> "labels-idx1". */
static int sibling_labels(const char *img, char *out, size_t size)
{
    const char *p = strstr(img, "images-idx3");
    const char *q = strstr(img, "images.idx3");
    if (!p)
        p = q;
    if (!p || (size_t)snprintf(out, size, "%.*slabels%cidx1%s", (int)(p - img), img, p[6],
                               p + 11) >= size)
        return 0;
    return exists(out);
}

int prep_read_mnist(const char *const *src, size_t n, const struct emoe_prep_options *o,
                    struct emoe_dataset **out, struct emoe_prep_result *res,
                    struct emoe_error *err)
{
    char imgp[4096] = "", labp[4096] = "";
    int rc;
    /* find the two files */
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (stat(src[i], &st) == 0 && S_ISDIR(st.st_mode)) {
            const char *pre = o->split && !strcmp(o->split, "test") ? "t10k" : "train";
            const char *suf[] = {"", ".gz"};
            for (int s = 0; s < 2 && !imgp[0]; s++) {
                snprintf(imgp, sizeof imgp, "%s/%s-images-idx3-ubyte%s", src[i], pre, suf[s]);
                if (!exists(imgp))
                    imgp[0] = 0;
            }
            for (int s = 0; s < 2 && !labp[0]; s++) {
                snprintf(labp, sizeof labp, "%s/%s-labels-idx1-ubyte%s", src[i], pre, suf[s]);
                if (!exists(labp))
                    labp[0] = 0;
            }
            if (!imgp[0])
                return emoe_error_set(err, EMOE_ENOTFOUND,
                                      "%s: no %s-images-idx3-ubyte[.gz] in this folder", src[i],
                                      pre);
            continue;
        }
        int r = idx_rank(src[i]);
        if (r == 3)
            snprintf(imgp, sizeof imgp, "%s", src[i]);
        else if (r == 1)
            snprintf(labp, sizeof labp, "%s", src[i]);
        else if (!exists(src[i]))
            return emoe_error_set(err, EMOE_ENOTFOUND, "%s: %s", src[i], strerror(ENOENT));
        else
            return emoe_error_set(err, EMOE_EFORMAT, "%s: not an idx1 or idx3 ubyte file",
                                  src[i]);
    }
    if (!imgp[0])
        return emoe_error_set(err, EMOE_EINVAL, "%s: no idx3 images file given", src[0]);
    if (!labp[0] && !sibling_labels(imgp, labp, sizeof labp))
        return emoe_error_set(err, EMOE_ENOTFOUND, "%s: missing label file (an idx1 labels file)",
                              imgp);

    uint32_t d[3], ln;
    gzFile gi = NULL, gl = NULL;
    struct collector c;
    memset(&c, 0, sizeof c);
    unsigned char *labels = NULL, *tmp = NULL;
    rc = idx_open(imgp, 3, d, &gi, err);
    if (rc != EMOE_OK)
        return rc;
    rc = idx_open(labp, 1, &ln, &gl, err);
    if (rc != EMOE_OK)
        goto done;
    if (d[1] == 0 || d[2] == 0 || d[1] > MAX_SIDE || d[2] > MAX_SIDE) {
        rc = emoe_error_set(err, EMOE_EFORMAT, "%s: bad image size %ux%u", imgp, d[2], d[1]);
        goto done;
    }
    if (ln != d[0]) {
        rc = emoe_error_set(err, EMOE_EFORMAT, "%s: %u labels for %u images in %s", labp, ln,
                            d[0], imgp);
        goto done;
    }
    int w = (int)d[2], h = (int)d[1];
    int cout = o->channels ? o->channels : 1;
    int size = o->size;
    if (size == 0 && w != h) {
        rc = emoe_error_set(err, EMOE_EINVAL, "%s: images are %dx%d; give a size", imgp, w, h);
        goto done;
    }
    int side = size ? size : w;
    int64_t dims[3] = {side, side, cout};
    rc = collector_init(&c, EMOE_U8, 3, dims, err);
    if (rc != EMOE_OK)
        goto done;
    tmp = malloc((size_t)w * (size_t)h);
    if (!tmp) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        goto done;
    }
    rc = read_labels(gl, labp, ln, &labels, err);
    if (rc != EMOE_OK)
        goto done;
    size_t first;
    rc = collector_reserve(&c, d[0], &first, err);
    if (rc != EMOE_OK)
        goto done;
    int direct = side == w && side == h && cout == 1;
    for (uint32_t i = 0; i < d[0]; i++) {
        unsigned char *dst = collector_slot(&c, first + i);
        rc = prep_gz_read(gi, imgp, direct ? dst : tmp, (size_t)w * h, "images", err);
        if (rc != EMOE_OK)
            goto done;
        if (!direct) {
            rc = prep_convert_pixels(tmp, w, h, 1, size, cout, dst, err);
            if (rc != EMOE_OK)
                goto done;
        }
        rc = collector_add(&c, NULL, NULL, i, labels[i], first + i, NULL, err);
        if (rc != EMOE_OK)
            goto done;
        if (o->progress && (i % 4096 == 0 || i + 1 == d[0]))
            o->progress(o->ctx, i + 1, d[0]);
    }
    /* class names: the label values as text ("0".."9") */
    int maxl = -1;
    for (uint32_t i = 0; i < ln; i++)
        if (labels[i] > maxl)
            maxl = labels[i];
    {
        char *names[256], bufs[256][4];
        for (int k = 0; k <= maxl; k++) {
            snprintf(bufs[k], sizeof bufs[k], "%d", k);
            names[k] = bufs[k];
        }
        rc = collector_set_names(&c, names, (size_t)(maxl + 1), err);
        if (rc != EMOE_OK)
            goto done;
    }
    rc = collector_finish(&c, o, out, err);
    (void)res;
done:
    if (rc != EMOE_OK)
        collector_free(&c);
    if (gi)
        gzclose(gi);
    if (gl)
        gzclose(gl);
    free(labels);
    free(tmp);
    return rc;
}
