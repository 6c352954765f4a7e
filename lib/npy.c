/*
 * npy.c: NumPy .npy files (format versions 1.0, 2.0 and 3.0).
 *
 * The format (numpy/lib/format.py, NEP 1):
 *   "\x93NUMPY"  major  minor  HEADER_LEN  HEADER  DATA
 *   HEADER_LEN is u16 little-endian in 1.0 and u32 in 2.0/3.0 (3.0: UTF-8 header).
 *   HEADER is a Python dict literal, padded with spaces and ended by '\n' so that
 *   the data starts at a multiple of 64 bytes:
 *     {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
 *   DATA is the array in C order (or Fortran order when fortran_order is True),
 *   in the byte order of descr.
 *
 * The reader is a strict, bounded parser of exactly that dict (no Python
 * evaluation); it works on a byte source (struct npy_source) so files, streams,
 * memory and zip members (lib/npz.c) share it.  Data is read straight into the
 * tensor's buffer; large native files are memory-mapped instead.  The writer
 * reproduces numpy 1.24's numpy.save byte for byte.
 */
#include "config.h"
#include "npy_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define HOST_BIG_ENDIAN 1
#define NATIVE_CHAR '>'
#else
#define HOST_BIG_ENDIAN 0
#define NATIVE_CHAR '<'
#endif

/* numpy 1.24 format.py: GROWTH_AXIS_MAX_DIGITS and ARRAY_ALIGN */
#define GROWTH_AXIS_MAX_DIGITS 21
#define ARRAY_ALIGN 64

static const char magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

/* The numeric descrs without their byte-order character. */
static const struct {
    const char *code;
    enum emoe_dtype dtype;
} codes[] = {
    {"b1", EMOE_BOOL}, {"u1", EMOE_U8}, {"i1", EMOE_I8}, {"i2", EMOE_I16},
    {"u2", EMOE_U16},  {"i4", EMOE_I32}, {"u4", EMOE_U32}, {"i8", EMOE_I64},
    {"u8", EMOE_U64},  {"f2", EMOE_F16}, {"f4", EMOE_F32}, {"f8", EMOE_F64},
};

/* ------------------------------------------------------------ header parser */

struct lexer {
    const char *p;
    size_t n, pos;
    const char *name;
    struct emoe_error *err;
};

static int bad(struct lexer *lx, const char *what)
{
    return emoe_error_set(lx->err, EMOE_EFORMAT, "%s: malformed header: %s at byte %zu",
                          lx->name, what, lx->pos);
}

static void skip_ws(struct lexer *lx)
{
    while (lx->pos < lx->n && (lx->p[lx->pos] == ' ' || lx->p[lx->pos] == '\t'))
        lx->pos++;
}

static int peek(struct lexer *lx)
{
    return lx->pos < lx->n ? (unsigned char)lx->p[lx->pos] : -1;
}

static int expect(struct lexer *lx, char c, const char *what)
{
    skip_ws(lx);
    if (peek(lx) != (unsigned char)c)
        return bad(lx, what);
    lx->pos++;
    return EMOE_OK;
}

/* A quoted string ('...' or "...") without escapes, at most cap-1 bytes. */
static int lex_string(struct lexer *lx, char *out, size_t cap)
{
    skip_ws(lx);
    int q = peek(lx);
    if (q != '\'' && q != '"')
        return bad(lx, "expected a string");
    lx->pos++;
    size_t len = 0;
    for (;;) {
        int c = peek(lx);
        if (c < 0)
            return bad(lx, "unterminated string");
        lx->pos++;
        if (c == q)
            break;
        if (c == '\\' || c < 0x20 || c >= 0x7f)
            return bad(lx, "unexpected character in string");
        if (len + 1 >= cap)
            return bad(lx, "string too long");
        out[len++] = (char)c;
    }
    out[len] = 0;
    return EMOE_OK;
}

static int lex_word(struct lexer *lx, const char *w)
{
    size_t k = strlen(w);
    if (lx->n - lx->pos >= k && memcmp(lx->p + lx->pos, w, k) == 0) {
        size_t end = lx->pos + k;
        if (end < lx->n) {
            char c = lx->p[end];
            if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '_')
                return 0;
        }
        lx->pos = end;
        return 1;
    }
    return 0;
}

static int parse_descr(struct lexer *lx, const char *d, struct emoe_npy_info *info)
{
    char order = '|';
    const char *code = d;
    if (*d == '<' || *d == '>' || *d == '=' || *d == '|')
        order = *code++;
    info->is_string = 0;
    if (code[0] == 'S' && code[1]) {
        size_t w = 0;
        for (const char *c = code + 1; *c; c++) {
            if (*c < '0' || *c > '9' || w > 100000000)
                return emoe_error_set(lx->err, EMOE_EUNSUPPORTED, "%s: unsupported dtype '%s'",
                                      lx->name, d);
            w = w * 10 + (size_t)(*c - '0');
        }
        /* zero-width items would let a header-only file claim any number of strings */
        if (w == 0)
            return emoe_error_set(lx->err, EMOE_EUNSUPPORTED,
                                  "%s: unsupported dtype '%s' (zero-width strings)", lx->name, d);
        info->is_string = 1;
        info->dtype = EMOE_U8;
        info->itemsize = w;
        info->big_endian = 0;
        return EMOE_OK;
    }
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (strcmp(code, codes[i].code) == 0) {
            info->dtype = codes[i].dtype;
            info->itemsize = emoe_dtype_size(info->dtype);
            int big = order == '>' ? 1 : order == '<' ? 0 : HOST_BIG_ENDIAN;
            info->big_endian = info->itemsize > 1 && big != HOST_BIG_ENDIAN;
            return EMOE_OK;
        }
    if (code[0] == 'O')
        return emoe_error_set(lx->err, EMOE_EUNSUPPORTED,
                              "%s: object dtype '%s' (pickled Python objects) is not supported",
                              lx->name, d);
    return emoe_error_set(lx->err, EMOE_EUNSUPPORTED, "%s: unsupported dtype '%s'", lx->name, d);
}

static int parse_shape(struct lexer *lx, struct emoe_npy_info *info)
{
    int rc = expect(lx, '(', "expected '(' for the shape");
    if (rc != EMOE_OK)
        return rc;
    int nd = 0, comma_after_last = 0;
    for (;;) {
        skip_ws(lx);
        int c = peek(lx);
        if (c == ')') {
            lx->pos++;
            break;
        }
        if (nd > 0 && !comma_after_last)
            return bad(lx, "expected ',' or ')' in the shape");
        int neg = 0;
        if (c == '-') {
            neg = 1;
            lx->pos++;
            c = peek(lx);
        }
        if (c < '0' || c > '9')
            return bad(lx, "expected a dimension");
        uint64_t v = 0;
        while ((c = peek(lx)) >= '0' && c <= '9') {
            if (v > ((uint64_t)INT64_MAX - (uint64_t)(c - '0')) / 10)
                return emoe_error_set(lx->err, EMOE_ERANGE,
                                      "%s: dimension %d of the shape is too large", lx->name, nd);
            v = v * 10 + (uint64_t)(c - '0');
            lx->pos++;
        }
        if (peek(lx) == 'L') /* Python 2 long, as numpy accepts */
            lx->pos++;
        if (neg && v != 0)
            return emoe_error_set(lx->err, EMOE_ERANGE, "%s: dimension %d is negative (-%" PRIu64
                                  ")", lx->name, nd, v);
        if (nd >= EMOE_MAX_DIMS)
            return emoe_error_set(lx->err, EMOE_ERANGE, "%s: rank exceeds the limit of %d",
                                  lx->name, EMOE_MAX_DIMS);
        info->shape[nd++] = (int64_t)v;
        skip_ws(lx);
        comma_after_last = 0;
        if (peek(lx) == ',') {
            lx->pos++;
            comma_after_last = 1;
        }
    }
    if (nd == 1 && !comma_after_last)
        return bad(lx, "a 1-D shape needs a trailing comma");
    info->ndim = nd;
    return EMOE_OK;
}

/* The dict literal in p[0..n): exactly the keys descr, fortran_order, shape. */
static int parse_dict(const char *p, size_t n, const char *name, struct emoe_npy_info *info,
                      struct emoe_error *err)
{
    struct lexer lx = {p, n, 0, name, err};
    int rc, seen_descr = 0, seen_fortran = 0, seen_shape = 0;
    char descr[40];
    if (n == 0 || p[n - 1] != '\n') {
        lx.pos = n;
        return bad(&lx, "no terminating newline");
    }
    if ((rc = expect(&lx, '{', "expected '{'")) != EMOE_OK)
        return rc;
    for (;;) {
        skip_ws(&lx);
        if (peek(&lx) == '}') {
            lx.pos++;
            break;
        }
        char key[32];
        if ((rc = lex_string(&lx, key, sizeof key)) != EMOE_OK)
            return rc;
        if ((rc = expect(&lx, ':', "expected ':'")) != EMOE_OK)
            return rc;
        skip_ws(&lx);
        if (strcmp(key, "descr") == 0 && !seen_descr) {
            seen_descr = 1;
            if (peek(&lx) == '[')
                return emoe_error_set(err, EMOE_EUNSUPPORTED,
                                      "%s: structured dtypes are not supported", name);
            if ((rc = lex_string(&lx, descr, sizeof descr)) != EMOE_OK)
                return rc;
        } else if (strcmp(key, "fortran_order") == 0 && !seen_fortran) {
            seen_fortran = 1;
            if (lex_word(&lx, "True"))
                info->fortran_order = 1;
            else if (lex_word(&lx, "False"))
                info->fortran_order = 0;
            else
                return bad(&lx, "expected True or False");
        } else if (strcmp(key, "shape") == 0 && !seen_shape) {
            seen_shape = 1;
            if ((rc = parse_shape(&lx, info)) != EMOE_OK)
                return rc;
        } else {
            return emoe_error_set(err, EMOE_EFORMAT, "%s: malformed header: %s key '%s'", name,
                                  (strcmp(key, "descr") && strcmp(key, "fortran_order") &&
                                   strcmp(key, "shape")) ? "unexpected" : "duplicate", key);
        }
        skip_ws(&lx);
        if (peek(&lx) == ',') {
            lx.pos++;
            continue;
        }
        if (peek(&lx) != '}')
            return bad(&lx, "expected ',' or '}'");
    }
    for (; lx.pos < n; lx.pos++) {
        char c = p[lx.pos];
        if (c != ' ' && c != '\t' && c != '\r' && c != '\n')
            return bad(&lx, "unexpected bytes after the dict");
    }
    if (!seen_descr || !seen_fortran || !seen_shape)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: malformed header: missing key '%s'", name,
                              !seen_descr ? "descr" : !seen_fortran ? "fortran_order" : "shape");
    /* The dtype is checked after the whole dict so its errors follow malformations. */
    if ((rc = parse_descr(&lx, descr, info)) != EMOE_OK)
        return rc;
    rc = emoe_shape_check(info->dtype, info->ndim, info->shape, &info->nelem, &info->nbytes,
                          err);
    if (rc != EMOE_OK) {
        emoe_error_prefix(err, name);
        return rc;
    }
    if (info->is_string && emoe_size_mul(&info->nbytes, info->nelem, info->itemsize) != EMOE_OK)
        return emoe_error_set(err, EMOE_ERANGE, "%s: string array size overflows size_t", name);
    return EMOE_OK;
}

/* Magic and version (p has >= 8 bytes): *prefix is 10 (1.0) or 12 (2.0, 3.0). */
static int parse_magic(const unsigned char *p, const char *name, size_t *prefix,
                       struct emoe_error *err)
{
    if (memcmp(p, magic, 6) != 0)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: not a .npy file (bad magic)", name);
    if (p[6] < 1 || p[6] > 3 || p[7] != 0)
        return emoe_error_set(err, EMOE_EUNSUPPORTED, "%s: unsupported .npy version %u.%u",
                              name, p[6], p[7]);
    *prefix = p[6] == 1 ? 10 : 12;
    return EMOE_OK;
}

/* HEADER_LEN (p has the whole prefix), bounded. */
static int parse_hlen(const unsigned char *p, size_t prefix, const char *name, size_t *hlen,
                      struct emoe_error *err)
{
    *hlen = prefix == 10 ? emoe_load_le16(p + 8) : emoe_load_le32(p + 8);
    if (*hlen > NPY_HEADER_LIMIT)
        return emoe_error_set(err, EMOE_ERANGE,
                              "%s: header length %zu exceeds the limit of %d bytes", name, *hlen,
                              NPY_HEADER_LIMIT);
    return EMOE_OK;
}

/* Fortran-order data that differs from C order (more than one axis longer than 1). */
static int needs_reorder(const struct emoe_npy_info *info)
{
    int big = 0;
    for (int i = 0; i < info->ndim; i++)
        big += info->shape[i] > 1;
    return info->fortran_order && big > 1;
}

int emoe_npy_parse_header(const void *buf, size_t size, const char *name,
                          struct emoe_npy_info *info, struct emoe_error *err)
{
    const unsigned char *p = buf;
    size_t prefix, hlen;
    memset(info, 0, sizeof *info);
    if (size < 10) {
        if (size >= 6 && memcmp(p, magic, 6) != 0)
            return emoe_error_set(err, EMOE_EFORMAT, "%s: not a .npy file (bad magic)", name);
        return emoe_error_set(err, EMOE_EFORMAT, "%s: truncated header (%zu of 10 bytes)", name,
                              size);
    }
    int rc = parse_magic(p, name, &prefix, err);
    if (rc != EMOE_OK)
        return rc;
    if (size < prefix)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: truncated header (%zu of %zu bytes)", name,
                              size, prefix);
    if ((rc = parse_hlen(p, prefix, name, &hlen, err)) != EMOE_OK)
        return rc;
    if (size - prefix < hlen)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: truncated header (%zu of %zu bytes)", name,
                              size, prefix + hlen);
    rc = parse_dict((const char *)p + prefix, hlen, name, info, err);
    if (rc != EMOE_OK) {
        memset(info, 0, sizeof *info);
        return rc;
    }
    info->header_len = prefix + hlen;
    return EMOE_OK;
}

int npy_info_is_native(const struct emoe_npy_info *info)
{
    return !info->big_endian && !needs_reorder(info);
}

/* ---------------------------------------------------------------- sources */

static int src_read_full(struct npy_source *src, void *buf, size_t n, size_t *got,
                         struct emoe_error *err)
{
    *got = 0;
    while (*got < n) {
        size_t k = 0;
        int rc = src->read(src->ctx, (char *)buf + *got, n - *got, &k, err);
        if (rc != EMOE_OK)
            return rc;
        if (k == 0)
            break;
        *got += k;
    }
    return EMOE_OK;
}

int npy_read_header(struct npy_source *src, unsigned char *buf, struct emoe_npy_info *info,
                    struct emoe_error *err)
{
    size_t got, prefix, hlen;
    memset(info, 0, sizeof *info);
    int rc = src_read_full(src, buf, 10, &got, err);
    if (rc != EMOE_OK)
        return rc;
    if (got < 10) {
        if (got >= 6 && memcmp(buf, magic, 6) != 0)
            return emoe_error_set(err, EMOE_EFORMAT, "%s: not a .npy file (bad magic)",
                                  src->name);
        return emoe_error_set(err, EMOE_EFORMAT, "%s: truncated header (%zu of 10 bytes)",
                              src->name, got);
    }
    if ((rc = parse_magic(buf, src->name, &prefix, err)) != EMOE_OK)
        return rc;
    if (prefix > 10) {
        if ((rc = src_read_full(src, buf + 10, prefix - 10, &got, err)) != EMOE_OK)
            return rc;
        if (got < prefix - 10)
            return emoe_error_set(err, EMOE_EFORMAT, "%s: truncated header (%zu of %zu bytes)",
                                  src->name, 10 + got, prefix);
    }
    if ((rc = parse_hlen(buf, prefix, src->name, &hlen, err)) != EMOE_OK)
        return rc;
    size_t want = hlen;
    if ((rc = src_read_full(src, buf + prefix, want, &got, err)) != EMOE_OK)
        return rc;
    if (got < want)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: truncated header (%zu of %zu bytes)",
                              src->name, prefix + got, prefix + hlen);
    return emoe_npy_parse_header(buf, prefix + hlen, src->name, info, err);
}

int npy_expect_end(struct npy_source *src, struct emoe_error *err)
{
    unsigned char tmp[4096];
    size_t extra = 0, got;
    do {
        int rc = src_read_full(src, tmp, sizeof tmp, &got, err);
        if (rc != EMOE_OK)
            return rc;
        extra += got;
    } while (got == sizeof tmp && extra < ((size_t)1 << 20));
    if (extra)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: %s%zu unexpected bytes after the data",
                              src->name, got == sizeof tmp ? "at least " : "", extra);
    return EMOE_OK;
}

struct file_ctx {
    FILE *f;
    const char *name;
};

static int file_read(void *ctx, void *buf, size_t n, size_t *got, struct emoe_error *err)
{
    struct file_ctx *fc = ctx;
    *got = fread(buf, 1, n, fc->f);
    if (*got < n && ferror(fc->f))
        return emoe_error_set(err, EMOE_EIO, "%s: read error: %s", fc->name, strerror(errno));
    return EMOE_OK;
}

int npy_mem_read(void *ctx, void *buf, size_t n, size_t *got, struct emoe_error *err)
{
    (void)err;
    struct npy_mem *m = ctx;
    size_t k = m->n - m->pos < n ? m->n - m->pos : n;
    if (k)
        memcpy(buf, m->p + m->pos, k);
    m->pos += k;
    *got = k;
    return EMOE_OK;
}

/* ------------------------------------------------------------------ data */

/* A tensor with an uninitialised 64-byte aligned heap buffer (the data is about to be
 * read over it, so zero-filling would only cost time). */
static int new_uninit(enum emoe_dtype dtype, int ndim, const int64_t *shape, size_t nbytes,
                      const char *name, struct emoe_tensor **out, struct emoe_error *err)
{
    struct emoe_buffer *b = malloc(sizeof *b);
    void *base = b ? emoe_alloc_aligned(nbytes) : NULL;
    if (!base) {
        free(b);
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory allocating %zu bytes", name,
                              nbytes);
    }
    atomic_init(&b->refs, 1);
    b->kind = EMOE_BUFFER_HEAP;
    b->base = base;
    b->size = nbytes;
    int rc = emoe_tensor_view(b, base, dtype, ndim, shape, out, err);
    emoe_buffer_unref(b);
    return rc;
}

/* dst (C order) = src (Fortran order), both of shape[ndim], elements of es bytes. */
static void fortran_to_c(unsigned char *dst, const unsigned char *src, int ndim,
                         const int64_t *shape, size_t es)
{
    size_t stride[EMOE_MAX_DIMS] = {0}, idx[EMOE_MAX_DIMS] = {0}, nelem = 1;
    for (int i = 0; i < ndim; i++) {
        stride[i] = nelem; /* Fortran: first axis fastest */
        nelem *= (size_t)shape[i];
    }
    if (nelem == 0 || ndim < 1)
        return;
    size_t last = (size_t)shape[ndim - 1], ls = stride[ndim - 1], off = 0;
    for (size_t o = 0; o < nelem; o += last) {
        const unsigned char *s = src + off * es;
        unsigned char *d = dst + o * es;
        switch (es) {
        case 1:
            for (size_t j = 0; j < last; j++)
                d[j] = s[j * ls];
            break;
        case 2:
            for (size_t j = 0; j < last; j++)
                memcpy(d + 2 * j, s + 2 * j * ls, 2);
            break;
        case 4:
            for (size_t j = 0; j < last; j++)
                memcpy(d + 4 * j, s + 4 * j * ls, 4);
            break;
        case 8:
            for (size_t j = 0; j < last; j++)
                memcpy(d + 8 * j, s + 8 * j * ls, 8);
            break;
        default:
            for (size_t j = 0; j < last; j++)
                memcpy(d + es * j, s + es * j * ls, es);
        }
        /* next row: odometer over the axes before the last */
        for (int a = ndim - 2; a >= 0; a--) {
            idx[a]++;
            off += stride[a];
            if (idx[a] < (size_t)shape[a])
                break;
            off -= stride[a] * idx[a];
            idx[a] = 0;
        }
    }
}

/* Read info->nbytes of data into a new buffer-backed tensor in file layout, then
 * swap and reorder.  For strings the tensor is U8 [nbytes]. */
static int read_data(struct npy_source *src, const struct emoe_npy_info *info, int ndim,
                     const int64_t *shape, enum emoe_dtype dtype, struct emoe_tensor **out,
                     struct emoe_error *err)
{
    struct emoe_tensor *t = NULL;
    *out = NULL;
    int rc = new_uninit(dtype, ndim, shape, info->nbytes, src->name, &t, err);
    if (rc != EMOE_OK)
        return rc;
    size_t got;
    if ((rc = src_read_full(src, t->data, info->nbytes, &got, err)) != EMOE_OK)
        goto fail;
    if (got < info->nbytes) {
        rc = emoe_error_set(err, EMOE_EFORMAT, "%s: truncated data (%zu of %zu bytes)",
                            src->name, got, info->nbytes);
        goto fail;
    }
    if (info->big_endian)
        emoe_bswap_inplace(t->data, info->nelem, info->itemsize);
    if (needs_reorder(info)) {
        struct emoe_tensor *c = NULL;
        rc = new_uninit(dtype, ndim, shape, info->nbytes, src->name, &c, err);
        if (rc != EMOE_OK)
            goto fail;
        fortran_to_c(c->data, t->data, info->ndim, info->shape, info->itemsize);
        emoe_tensor_free(t);
        t = c;
    }
    *out = t;
    return EMOE_OK;
fail:
    emoe_tensor_free(t);
    return rc;
}

int npy_read_tensor(struct npy_source *src, const struct emoe_npy_info *info,
                    struct emoe_tensor **out, struct emoe_error *err)
{
    *out = NULL;
    if (info->is_string)
        return emoe_error_set(err, EMOE_EUNSUPPORTED,
                              "%s: '|S%zu' is a string array, not a numeric tensor", src->name,
                              info->itemsize);
    return read_data(src, info, info->ndim, info->shape, info->dtype, out, err);
}

/* strings from nelem fixed-width items of w bytes */
static int decode_strings(const unsigned char *raw, size_t nelem, size_t w, const char *name,
                          char ***out, struct emoe_error *err)
{
    size_t total, ptrs;
    if (emoe_size_add(&ptrs, nelem, 1) != EMOE_OK ||
        emoe_size_mul(&ptrs, ptrs, sizeof(char *)) != EMOE_OK ||
        emoe_size_add(&total, ptrs, nelem) != EMOE_OK)
        return emoe_error_set(err, EMOE_ERANGE, "%s: too many strings", name);
    for (size_t i = 0; i < nelem; i++) {
        const unsigned char *s = raw + i * w;
        size_t len = w;
        while (len > 0 && s[len - 1] == 0)
            len--;
        if (memchr(s, 0, len))
            return emoe_error_set(err, EMOE_EFORMAT, "%s: string %zu contains a NUL byte", name,
                                  i);
        if (emoe_size_add(&total, total, len) != EMOE_OK)
            return emoe_error_set(err, EMOE_ERANGE, "%s: strings too large", name);
    }
    char **v = malloc(total);
    if (!v)
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", name);
    char *q = (char *)v + ptrs;
    for (size_t i = 0; i < nelem; i++) {
        const unsigned char *s = raw + i * w;
        size_t len = w;
        while (len > 0 && s[len - 1] == 0)
            len--;
        v[i] = q;
        memcpy(q, s, len);
        q[len] = 0;
        q += len + 1;
    }
    v[nelem] = NULL;
    *out = v;
    return EMOE_OK;
}

int npy_read_strings(struct npy_source *src, const struct emoe_npy_info *info, char ***out,
                     size_t *n, struct emoe_error *err)
{
    *out = NULL;
    *n = 0;
    if (!info->is_string)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: dtype %s is not a '|S<n>' string array",
                              src->name, emoe_dtype_name(info->dtype));
    int64_t flat = (int64_t)info->nbytes;
    struct emoe_tensor *raw = NULL;
    /* read as bytes in file layout; reorder items (not bytes) for Fortran order */
    struct emoe_npy_info bi = *info;
    bi.fortran_order = 0;
    int rc = read_data(src, &bi, 1, &flat, EMOE_U8, &raw, err);
    if (rc != EMOE_OK)
        return rc;
    const unsigned char *items = raw->data;
    unsigned char *tmp = NULL;
    if (needs_reorder(info)) {
        tmp = malloc(info->nbytes ? info->nbytes : 1);
        if (!tmp) {
            emoe_tensor_free(raw);
            return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", src->name);
        }
        fortran_to_c(tmp, raw->data, info->ndim, info->shape, info->itemsize);
        items = tmp;
    }
    rc = decode_strings(items, info->nelem, info->itemsize, src->name, out, err);
    free(tmp);
    emoe_tensor_free(raw);
    if (rc == EMOE_OK)
        *n = info->nelem;
    return rc;
}

void emoe_npy_strings_free(char **strs)
{
    free(strs);
}

/* --------------------------------------------------------------- reading */

int emoe_npy_read_stream(FILE *f, const char *name, struct emoe_tensor **out,
                         struct emoe_error *err)
{
    struct file_ctx fc = {f, name};
    struct npy_source src = {file_read, &fc, name};
    unsigned char hbuf[NPY_HEADER_BUF];
    struct emoe_npy_info info;
    *out = NULL;
    int rc = npy_read_header(&src, hbuf, &info, err);
    if (rc != EMOE_OK)
        return rc;
    return npy_read_tensor(&src, &info, out, err);
}

/* Data of a regular file of `size` bytes must be exactly header + nbytes long; this is
 * checked before anything is allocated, so an absurd shape is "truncated data". */
static int check_file_size(const char *name, const struct emoe_npy_info *info, uint64_t size,
                           struct emoe_error *err)
{
    uint64_t avail = size - info->header_len;
    if (avail < info->nbytes)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: truncated data (%" PRIu64 " of %zu bytes)",
                              name, avail, info->nbytes);
    if (avail > info->nbytes)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: %" PRIu64 " unexpected bytes after the data",
                              name, avail - info->nbytes);
    return EMOE_OK;
}

/* Large regular file: map it; a view when the data can be used in place. */
static int read_mapped(int fd, const char *name, struct emoe_tensor **out,
                       struct emoe_error *err)
{
    struct emoe_buffer *map = NULL;
    struct emoe_npy_info info;
    int rc = emoe_buffer_map_fd(fd, name, &map, err);
    if (rc != EMOE_OK)
        return rc;
    rc = emoe_npy_parse_header(map->base, map->size, name, &info, err);
    if (rc == EMOE_OK)
        rc = check_file_size(name, &info, map->size, err);
    if (rc == EMOE_OK && info.is_string)
        rc = emoe_error_set(err, EMOE_EUNSUPPORTED,
                            "%s: '|S%zu' is a string array, not a numeric tensor", name,
                            info.itemsize);
    if (rc == EMOE_OK) {
        unsigned char *data = (unsigned char *)map->base + info.header_len;
        if (npy_info_is_native(&info) && (uintptr_t)data % info.itemsize == 0) {
            rc = emoe_tensor_view(map, data, info.dtype, info.ndim, info.shape, out, err);
            if (rc != EMOE_OK)
                emoe_error_prefix(err, name);
        } else {
            struct npy_mem m = {data, info.nbytes, 0};
            struct npy_source src = {npy_mem_read, &m, name};
            rc = npy_read_tensor(&src, &info, out, err);
        }
    }
    emoe_buffer_unref(map);
    return rc;
}

/* Open path ("-": stdin) for reading; *fp and, for regular files, *size. */
static int open_input(const char *path, FILE **fp, int *regular, uint64_t *size,
                      struct emoe_error *err)
{
    struct stat st;
    *fp = NULL;
    *regular = 0;
    if (strcmp(path, "-") == 0) {
        *fp = stdin;
        return EMOE_OK;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return emoe_error_set(err, EMOE_EIO, "%s: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return emoe_error_set(err, EMOE_EIO, "%s: %s", path, strerror(e));
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return emoe_error_set(err, EMOE_EIO, "%s: is a directory", path);
    }
    *regular = S_ISREG(st.st_mode);
    *size = (uint64_t)st.st_size;
    *fp = fdopen(fd, "rb");
    if (!*fp) {
        int e = errno;
        close(fd);
        return emoe_error_set(err, EMOE_EIO, "%s: %s", path, strerror(e));
    }
    return EMOE_OK;
}

/* Shared by emoe_npy_read and emoe_npy_read_strings. */
static int read_path(const char *path, int strings, struct emoe_tensor **out, char ***strs,
                     size_t *n, struct emoe_error *err)
{
    FILE *f;
    int regular;
    uint64_t size = 0;
    int rc = open_input(path, &f, &regular, &size, err);
    if (rc != EMOE_OK)
        return rc;
    const char *name = f == stdin ? "<stdin>" : path;
    if (!strings && regular && size >= NPY_MMAP_THRESHOLD) {
        rc = read_mapped(fileno(f), name, out, err);
        fclose(f);
        return rc;
    }
    struct file_ctx fc = {f, name};
    struct npy_source src = {file_read, &fc, name};
    unsigned char *hbuf = malloc(NPY_HEADER_BUF);
    struct emoe_npy_info info;
    if (!hbuf) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", name);
        goto done;
    }
    if ((rc = npy_read_header(&src, hbuf, &info, err)) != EMOE_OK)
        goto done;
    if (regular && (rc = check_file_size(name, &info, size, err)) != EMOE_OK)
        goto done;
    if (strings)
        rc = npy_read_strings(&src, &info, strs, n, err);
    else
        rc = npy_read_tensor(&src, &info, out, err);
    if (rc == EMOE_OK && !regular && (rc = npy_expect_end(&src, err)) != EMOE_OK) {
        if (strings) {
            emoe_npy_strings_free(*strs);
            *strs = NULL;
            *n = 0;
        } else {
            emoe_tensor_free(*out);
            *out = NULL;
        }
    }
done:
    free(hbuf);
    if (f != stdin)
        fclose(f);
    return rc;
}

int emoe_npy_read(const char *path, struct emoe_tensor **out, struct emoe_error *err)
{
    *out = NULL;
    return read_path(path, 0, out, NULL, NULL, err);
}

int emoe_npy_read_strings(const char *path, char ***out, size_t *n, struct emoe_error *err)
{
    *out = NULL;
    *n = 0;
    return read_path(path, 1, NULL, out, n, err);
}

int emoe_npy_read_memory(const void *buf, size_t size, const char *name,
                         struct emoe_tensor **out, struct emoe_error *err)
{
    struct emoe_npy_info info;
    *out = NULL;
    int rc = emoe_npy_parse_header(buf, size, name, &info, err);
    if (rc != EMOE_OK)
        return rc;
    if ((rc = check_file_size(name, &info, size, err)) != EMOE_OK)
        return rc;
    struct npy_mem m = {(const unsigned char *)buf + info.header_len, info.nbytes, 0};
    struct npy_source src = {npy_mem_read, &m, name};
    return npy_read_tensor(&src, &info, out, err);
}

/* --------------------------------------------------------------- writing */

/* numpy 1.24 _write_array_header + _wrap_header for a C-order array.  Returns the
 * total length (magic through newline); writes it when buf has room. */
static size_t build_header(const char *descr, int ndim, const int64_t *shape, char *buf,
                           size_t size)
{
    char dict[512], shp[256];
    emoe_shape_format(ndim, shape, shp, sizeof shp);
    int k = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }",
                     descr, shp);
    if (k < 0 || (size_t)k >= sizeof dict - GROWTH_AXIS_MAX_DIGITS)
        return 0;
    size_t len = (size_t)k;
    if (ndim > 0) { /* room for the first axis to grow in place */
        char d0[32];
        int digits = snprintf(d0, sizeof d0, "%" PRId64, shape[0]);
        for (int i = digits; i < GROWTH_AXIS_MAX_DIGITS; i++)
            dict[len++] = ' ';
    }
    size_t hlen = len + 1, prefix = 10;
    size_t pad = ARRAY_ALIGN - (prefix + hlen) % ARRAY_ALIGN;
    if (hlen + pad > 65535) {
        prefix = 12;
        pad = ARRAY_ALIGN - (prefix + hlen) % ARRAY_ALIGN;
    }
    size_t total = prefix + hlen + pad;
    if (!buf || size < total)
        return total;
    unsigned char *p = (unsigned char *)buf;
    memcpy(p, magic, 6);
    p[6] = prefix == 10 ? 1 : 2;
    p[7] = 0;
    size_t field = hlen + pad;
    for (size_t i = 0; i < prefix - 8; i++)
        p[8 + i] = (unsigned char)(field >> (8 * i));
    memcpy(p + prefix, dict, len);
    memset(p + prefix + len, ' ', pad);
    p[total - 1] = '\n';
    return total;
}

static int tensor_descr(enum emoe_dtype dtype, char *descr)
{
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (codes[i].dtype == dtype) {
            descr[0] = emoe_dtype_size(dtype) == 1 ? '|' : NATIVE_CHAR;
            strcpy(descr + 1, codes[i].code);
            return 1;
        }
    return 0;
}

size_t emoe_npy_header(const struct emoe_tensor *t, char *buf, size_t size)
{
    char descr[8];
    if (!tensor_descr(t->dtype, descr))
        return 0;
    return build_header(descr, t->ndim, t->shape, buf, size);
}

static int write_all(FILE *f, const char *name, const void *p, size_t n,
                     struct emoe_error *err)
{
    if (n && fwrite(p, 1, n, f) != n)
        return emoe_error_set(err, EMOE_EIO, "%s: write error: %s", name, strerror(errno));
    return EMOE_OK;
}

static int check_writable(const struct emoe_tensor *t, const char *name, struct emoe_error *err)
{
    char descr[8];
    if (!tensor_descr(t->dtype, descr))
        return emoe_error_set(err, EMOE_EUNSUPPORTED,
                              "%s: dtype %s has no numpy equivalent (convert it first)", name,
                              emoe_dtype_name(t->dtype));
    return EMOE_OK;
}

int emoe_npy_write_stream(FILE *f, const char *name, const struct emoe_tensor *t,
                          struct emoe_error *err)
{
    char hdr[1024];
    int rc = check_writable(t, name, err);
    if (rc != EMOE_OK)
        return rc;
    size_t hl = emoe_npy_header(t, hdr, sizeof hdr);
    if (hl == 0 || hl > sizeof hdr)
        return emoe_error_set(err, EMOE_EINVAL, "%s: cannot format the header", name);
    if ((rc = write_all(f, name, hdr, hl, err)) != EMOE_OK)
        return rc;
    return write_all(f, name, t->data, t->nbytes, err);
}

/* Write through the atomic writer: validate first, then create the file. */
static int write_atomic(const char *path, const struct emoe_tensor *t, const unsigned char *bytes,
                        size_t nbytes, struct emoe_error *err)
{
    struct emoe_atomic a;
    const char *name = strcmp(path, "-") == 0 ? "<stdout>" : path;
    int rc = emoe_atomic_open(&a, path, err);
    if (rc != EMOE_OK)
        return rc;
    rc = t ? emoe_npy_write_stream(a.f, name, t, err) : write_all(a.f, name, bytes, nbytes, err);
    if (rc != EMOE_OK) {
        emoe_atomic_abort(&a);
        return rc;
    }
    return emoe_atomic_commit(&a, err);
}

int emoe_npy_write(const char *path, const struct emoe_tensor *t, struct emoe_error *err)
{
    int rc = check_writable(t, strcmp(path, "-") == 0 ? "<stdout>" : path, err);
    if (rc != EMOE_OK)
        return rc;
    return write_atomic(path, t, NULL, 0, err);
}

int npy_strings_encode(const char *const *strs, size_t n, const char *name,
                       unsigned char **out, size_t *size, struct emoe_error *err)
{
    size_t w = 1, data, total;
    *out = NULL;
    *size = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(strs[i]);
        if (len > w)
            w = len;
    }
    if (n > INT64_MAX || emoe_size_mul(&data, n, w) != EMOE_OK)
        return emoe_error_set(err, EMOE_ERANGE, "%s: strings too large", name);
    char descr[32];
    snprintf(descr, sizeof descr, "|S%zu", w);
    int64_t shape = (int64_t)n;
    size_t hl = build_header(descr, 1, &shape, NULL, 0);
    if (hl == 0 || emoe_size_add(&total, hl, data) != EMOE_OK)
        return emoe_error_set(err, EMOE_ERANGE, "%s: strings too large", name);
    unsigned char *p = calloc(1, total);
    if (!p)
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", name);
    build_header(descr, 1, &shape, (char *)p, total);
    for (size_t i = 0; i < n; i++)
        memcpy(p + hl + i * w, strs[i], strlen(strs[i]));
    *out = p;
    *size = total;
    return EMOE_OK;
}

int emoe_npy_write_strings(const char *path, const char *const *strs, size_t n,
                           struct emoe_error *err)
{
    unsigned char *bytes;
    size_t size;
    int rc = npy_strings_encode(strs, n, strcmp(path, "-") == 0 ? "<stdout>" : path, &bytes,
                                &size, err);
    if (rc != EMOE_OK)
        return rc;
    rc = write_atomic(path, NULL, bytes, size, err);
    free(bytes);
    return rc;
}
