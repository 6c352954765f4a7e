/*
 * tensor.c: dense tensors, dtypes, reference-counted storage, conversions and
 * summary statistics.
 */
#include "config.h"
#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
    const char *name;   /* emoe's name */
    const char *st;     /* safetensors name */
    size_t size;
} dtypes[EMOE_DTYPE_COUNT] = {
    [EMOE_BOOL] = {"bool", "BOOL", 1}, [EMOE_U8] = {"u8", "U8", 1},
    [EMOE_I8] = {"i8", "I8", 1},       [EMOE_I16] = {"i16", "I16", 2},
    [EMOE_U16] = {"u16", "U16", 2},    [EMOE_I32] = {"i32", "I32", 4},
    [EMOE_U32] = {"u32", "U32", 4},    [EMOE_I64] = {"i64", "I64", 8},
    [EMOE_U64] = {"u64", "U64", 8},    [EMOE_F16] = {"f16", "F16", 2},
    [EMOE_BF16] = {"bf16", "BF16", 2}, [EMOE_F32] = {"f32", "F32", 4},
    [EMOE_F64] = {"f64", "F64", 8},
};

size_t emoe_dtype_size(enum emoe_dtype t)
{
    return (unsigned)t < EMOE_DTYPE_COUNT ? dtypes[t].size : 0;
}

const char *emoe_dtype_name(enum emoe_dtype t)
{
    return (unsigned)t < EMOE_DTYPE_COUNT ? dtypes[t].name : "?";
}

int emoe_dtype_from_name(const char *name, enum emoe_dtype *out)
{
    for (int i = 0; i < EMOE_DTYPE_COUNT; i++)
        if (strcmp(name, dtypes[i].name) == 0 || strcmp(name, dtypes[i].st) == 0) {
            *out = (enum emoe_dtype)i;
            return EMOE_OK;
        }
    return EMOE_EUNSUPPORTED;
}

/* ------------------------------------------------------------ allocation */

void *emoe_alloc_aligned(size_t n)
{
    size_t rounded;
    if (emoe_size_add(&rounded, n, 63) != EMOE_OK)
        return NULL;
    rounded &= ~(size_t)63;
    if (rounded == 0)
        rounded = 64;
    return aligned_alloc(64, rounded);
}

void emoe_free_aligned(void *p)
{
    free(p);
}

struct emoe_buffer *emoe_buffer_alloc(size_t size)
{
    struct emoe_buffer *b = malloc(sizeof *b);
    if (!b)
        return NULL;
    b->base = emoe_alloc_aligned(size);
    if (!b->base) {
        free(b);
        return NULL;
    }
    memset(b->base, 0, size);
    atomic_init(&b->refs, 1);
    b->kind = EMOE_BUFFER_HEAP;
    b->size = size;
    return b;
}

int emoe_buffer_map_fd(int fd, const char *name, struct emoe_buffer **out,
                       struct emoe_error *err)
{
    struct stat st;
    *out = NULL;
    if (fstat(fd, &st) != 0)
        return emoe_error_set(err, EMOE_EIO, "%s: %s", name, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return emoe_error_set(err, EMOE_EINVAL, "%s: not a regular file", name);
    if ((uintmax_t)st.st_size > SIZE_MAX)
        return emoe_error_set(err, EMOE_ERANGE, "%s: file too large to map", name);
    struct emoe_buffer *b = malloc(sizeof *b);
    if (!b)
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", name);
    atomic_init(&b->refs, 1);
    b->kind = EMOE_BUFFER_MMAP;
    b->size = (size_t)st.st_size;
    b->base = NULL;
    if (b->size > 0) {
        void *p = mmap(NULL, b->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            free(b);
            return emoe_error_set(err, EMOE_EIO, "%s: cannot map: %s", name, strerror(e));
        }
        b->base = p;
    }
    *out = b;
    return EMOE_OK;
}

struct emoe_buffer *emoe_buffer_ref(struct emoe_buffer *b)
{
    if (b)
        atomic_fetch_add(&b->refs, 1);
    return b;
}

void emoe_buffer_unref(struct emoe_buffer *b)
{
    if (!b || atomic_fetch_sub(&b->refs, 1) != 1)
        return;
    if (b->kind == EMOE_BUFFER_HEAP)
        emoe_free_aligned(b->base);
    else if (b->kind == EMOE_BUFFER_MMAP && b->base)
        munmap(b->base, b->size);
    free(b);
}

/* ---------------------------------------------------------------- shapes */

int emoe_shape_check(enum emoe_dtype dtype, int ndim, const int64_t *shape, size_t *nelem,
                     size_t *nbytes, struct emoe_error *err)
{
    if ((unsigned)dtype >= EMOE_DTYPE_COUNT)
        return emoe_error_set(err, EMOE_EINVAL, "unknown dtype %d", (int)dtype);
    if (ndim < 0 || ndim > EMOE_MAX_DIMS)
        return emoe_error_set(err, EMOE_ERANGE, "rank %d is outside 0..%d", ndim,
                              EMOE_MAX_DIMS);
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return emoe_error_set(err, EMOE_ERANGE, "dimension %d is negative (%" PRId64 ")",
                                  i, shape[i]);
        if ((uint64_t)shape[i] > SIZE_MAX || emoe_size_mul(&n, n, (size_t)shape[i]) != EMOE_OK) {
            char buf[160];
            return emoe_error_set(err, EMOE_ERANGE, "shape %s overflows size_t",
                                  emoe_shape_format(ndim, shape, buf, sizeof buf));
        }
    }
    size_t bytes;
    if (emoe_size_mul(&bytes, n, emoe_dtype_size(dtype)) != EMOE_OK || bytes > SIZE_MAX / 2) {
        char buf[160];
        return emoe_error_set(err, EMOE_ERANGE, "shape %s of %s is too large",
                              emoe_shape_format(ndim, shape, buf, sizeof buf),
                              emoe_dtype_name(dtype));
    }
    if (nelem)
        *nelem = n;
    if (nbytes)
        *nbytes = bytes;
    return EMOE_OK;
}

char *emoe_shape_format(int ndim, const int64_t *shape, char *buf, size_t size)
{
    size_t used = 0;
    if (size == 0)
        return buf;
    buf[0] = 0;
#define PUT(...) do { \
        int k_ = snprintf(buf + used, size - used, __VA_ARGS__); \
        if (k_ < 0 || (size_t)k_ >= size - used) return buf; \
        used += (size_t)k_; \
    } while (0)
    PUT("(");
    for (int i = 0; i < ndim; i++)
        PUT(i ? ", %" PRId64 : "%" PRId64, shape[i]);
    PUT(ndim == 1 ? ",)" : ")");
#undef PUT
    return buf;
}

/* --------------------------------------------------------------- tensors */

int emoe_tensor_view(struct emoe_buffer *b, void *data, enum emoe_dtype dtype, int ndim,
                     const int64_t *shape, struct emoe_tensor **out, struct emoe_error *err)
{
    *out = NULL;
    struct emoe_tensor *t = calloc(1, sizeof *t);
    if (!t)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    int rc = emoe_shape_check(dtype, ndim, shape, &t->nelem, &t->nbytes, err);
    if (rc != EMOE_OK) {
        free(t);
        return rc;
    }
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->data = data;
    t->buf = emoe_buffer_ref(b);
    *out = t;
    return EMOE_OK;
}

int emoe_tensor_new(enum emoe_dtype dtype, int ndim, const int64_t *shape,
                    struct emoe_tensor **out, struct emoe_error *err)
{
    size_t nbytes;
    *out = NULL;
    int rc = emoe_shape_check(dtype, ndim, shape, NULL, &nbytes, err);
    if (rc != EMOE_OK)
        return rc;
    struct emoe_buffer *b = emoe_buffer_alloc(nbytes);
    if (!b)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory allocating %zu bytes", nbytes);
    rc = emoe_tensor_view(b, b->base, dtype, ndim, shape, out, err);
    emoe_buffer_unref(b);
    return rc;
}

int emoe_tensor_wrap(enum emoe_dtype dtype, int ndim, const int64_t *shape, void *data,
                     struct emoe_tensor **out, struct emoe_error *err)
{
    *out = NULL;
    struct emoe_buffer *b = malloc(sizeof *b);
    if (!b)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    atomic_init(&b->refs, 1);
    b->kind = EMOE_BUFFER_BORROWED;
    b->base = data;
    b->size = 0;
    int rc = emoe_tensor_view(b, data, dtype, ndim, shape, out, err);
    emoe_buffer_unref(b);
    return rc;
}

void emoe_tensor_free(struct emoe_tensor *t)
{
    if (!t)
        return;
    emoe_buffer_unref(t->buf);
    free(t);
}

/* --------------------------------------------------------- half floats */

float emoe_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            bits = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | man << 13;
    } else {
        bits = sign | (exp + 127 - 15) << 23 | man << 13;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float emoe_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t emoe_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffff;
    if (absx >= 0x7f800000) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000 ? 0x200 : 0));
    if (absx >= 0x477ff000) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00);
    if (absx < 0x38800000) { /* subnormal half (or zero) */
        float a;
        memcpy(&a, &absx, 4);
        /* a * 2^24 rounded to nearest even gives the subnormal mantissa */
        float m = nearbyintf(a * 16777216.0f);
        return (uint16_t)(sign | (uint32_t)m);
    }
    uint32_t mant = absx & 0x7fffff;
    uint32_t exp = (absx >> 23) - 127 + 15;
    uint32_t h = exp << 10 | mant >> 13;
    uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
        h++;
    return (uint16_t)(sign | h);
}

/* ----------------------------------------------------------- conversion */

static double get_as_double(const void *data, enum emoe_dtype t, size_t i)
{
    const unsigned char *p = data;
    switch (t) {
    case EMOE_BOOL: return p[i] != 0;
    case EMOE_U8: return p[i];
    case EMOE_I8: return ((const int8_t *)data)[i];
    case EMOE_I16: return ((const int16_t *)data)[i];
    case EMOE_U16: return ((const uint16_t *)data)[i];
    case EMOE_I32: return ((const int32_t *)data)[i];
    case EMOE_U32: return ((const uint32_t *)data)[i];
    case EMOE_I64: return (double)((const int64_t *)data)[i];
    case EMOE_U64: return (double)((const uint64_t *)data)[i];
    case EMOE_F16: return emoe_f16_to_f32(((const uint16_t *)data)[i]);
    case EMOE_BF16: return emoe_bf16_to_f32(((const uint16_t *)data)[i]);
    case EMOE_F32: return ((const float *)data)[i];
    case EMOE_F64: return ((const double *)data)[i];
    default: return 0;
    }
}

/* Integers convert exactly through int64 when both sides are integers. */
static int is_int(enum emoe_dtype t)
{
    return t != EMOE_F16 && t != EMOE_BF16 && t != EMOE_F32 && t != EMOE_F64;
}

static int64_t get_as_i64(const void *data, enum emoe_dtype t, size_t i)
{
    if (t == EMOE_U64)
        return (int64_t)((const uint64_t *)data)[i];
    if (t == EMOE_I64)
        return ((const int64_t *)data)[i];
    return (int64_t)get_as_double(data, t, i);
}

static void put_from_double(void *data, enum emoe_dtype t, size_t i, double v)
{
    switch (t) {
    case EMOE_BOOL: ((unsigned char *)data)[i] = v != 0; break;
    case EMOE_U8: ((uint8_t *)data)[i] = (uint8_t)(int64_t)v; break;
    case EMOE_I8: ((int8_t *)data)[i] = (int8_t)(int64_t)v; break;
    case EMOE_I16: ((int16_t *)data)[i] = (int16_t)(int64_t)v; break;
    case EMOE_U16: ((uint16_t *)data)[i] = (uint16_t)(int64_t)v; break;
    case EMOE_I32: ((int32_t *)data)[i] = (int32_t)(int64_t)v; break;
    case EMOE_U32: ((uint32_t *)data)[i] = (uint32_t)(int64_t)v; break;
    case EMOE_I64: ((int64_t *)data)[i] = (int64_t)v; break;
    case EMOE_U64: ((uint64_t *)data)[i] = (uint64_t)v; break;
    case EMOE_F16: ((uint16_t *)data)[i] = emoe_f32_to_f16((float)v); break;
    case EMOE_BF16: {
        float f = (float)v;
        uint32_t b;
        memcpy(&b, &f, 4);
        b += 0x7fff + ((b >> 16) & 1); /* round to nearest even */
        ((uint16_t *)data)[i] = (uint16_t)(b >> 16);
        break;
    }
    case EMOE_F32: ((float *)data)[i] = (float)v; break;
    case EMOE_F64: ((double *)data)[i] = v; break;
    default: break;
    }
}

static int finite_for(enum emoe_dtype t, double v)
{
    if (!is_int(t))
        return 1;
    return isfinite(v) && v > -9.3e18 && v < 1.8e19;
}

int emoe_tensor_convert(const struct emoe_tensor *t, enum emoe_dtype dtype,
                        struct emoe_tensor **out, struct emoe_error *err)
{
    int rc = emoe_tensor_new(dtype, t->ndim, t->shape, out, err);
    if (rc != EMOE_OK)
        return rc;
    void *dst = (*out)->data;
    if (dtype == t->dtype) {
        if (t->nbytes)
            memcpy(dst, t->data, t->nbytes);
        return EMOE_OK;
    }
    for (size_t i = 0; i < t->nelem; i++) {
        if (is_int(t->dtype) && is_int(dtype)) {
            int64_t v = get_as_i64(t->data, t->dtype, i);
            switch (dtype) {
            case EMOE_I64: ((int64_t *)dst)[i] = v; break;
            case EMOE_U64: ((uint64_t *)dst)[i] = (uint64_t)v; break;
            default: put_from_double(dst, dtype, i, (double)v); break;
            }
            continue;
        }
        double v = get_as_double(t->data, t->dtype, i);
        if (!finite_for(dtype, v)) {
            emoe_tensor_free(*out);
            *out = NULL;
            return emoe_error_set(err, EMOE_ERANGE,
                                  "element %zu (%g) cannot be represented as %s", i, v,
                                  emoe_dtype_name(dtype));
        }
        put_from_double(dst, dtype, i, v);
    }
    return EMOE_OK;
}

int emoe_tensor_stats(const struct emoe_tensor *t, struct emoe_tensor_stats *out,
                      struct emoe_error *err)
{
    (void)err;
    double mn = INFINITY, mx = -INFINITY, mean = 0, m2 = 0;
    size_t n = 0, bad = 0;
    for (size_t i = 0; i < t->nelem; i++) {
        double v = get_as_double(t->data, t->dtype, i);
        if (!isfinite(v)) {
            bad++;
            continue;
        }
        n++;
        if (v < mn)
            mn = v;
        if (v > mx)
            mx = v;
        double d = v - mean; /* Welford */
        mean += d / (double)n;
        m2 += d * (v - mean);
    }
    out->nonfinite = bad;
    if (n == 0) {
        out->min = out->max = out->mean = out->std = NAN;
    } else {
        out->min = mn;
        out->max = mx;
        out->mean = mean;
        out->std = sqrt(m2 / (double)n);
    }
    return EMOE_OK;
}

/* --------------------------------------------------------------- I/O bits */

int emoe_read_full(FILE *f, const char *name, void *buf, size_t n, const char *what,
                   struct emoe_error *err)
{
    size_t got = n ? fread(buf, 1, n, f) : 0;
    if (got == n)
        return EMOE_OK;
    if (ferror(f))
        return emoe_error_set(err, EMOE_EIO, "%s: reading %s: %s", name, what,
                              strerror(errno));
    return emoe_error_set(err, EMOE_EFORMAT, "%s: truncated %s (%zu of %zu bytes)", name,
                          what, got, n);
}

void emoe_bswap_inplace(void *data, size_t nelem, size_t elsize)
{
    unsigned char *p = data;
    if (elsize <= 1)
        return;
    for (size_t i = 0; i < nelem; i++, p += elsize)
        for (size_t a = 0, b = elsize - 1; a < b; a++, b--) {
            unsigned char c = p[a];
            p[a] = p[b];
            p[b] = c;
        }
}

enum emoe_file_kind emoe_file_kind_detect(const void *head, size_t n)
{
    const unsigned char *p = head;
    if (n >= 6 && memcmp(p, "\x93NUMPY", 6) == 0)
        return EMOE_FILE_NPY;
    if (n >= 4 && (memcmp(p, "PK\x03\x04", 4) == 0 || memcmp(p, "PK\x05\x06", 4) == 0))
        return EMOE_FILE_NPZ;
    if (n >= 9) {
        uint64_t len = emoe_load_le64(p);
        if (len >= 2 && len <= 100000000 && p[8] == '{')
            return EMOE_FILE_SAFETENSORS;
    }
    return EMOE_FILE_UNKNOWN;
}
