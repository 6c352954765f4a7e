/*
 * prep_nifti.c: NIfTI-1 and NIfTI-2 single-file volumes (.nii, .nii.gz through zlib),
 * u8/i8/i16/u16/i32/u32/f32/f64 data with scl_slope/scl_inter applied and the
 * orientation kept as stored; trilinear resampling to N^3, per-volume intensity
 * normalisation (zero mean, unit std), and regression targets from a CSV file.
 * Volumes are stored as f32 [N, D, H, W, 1] with W the fastest NIfTI axis (x).
 */
#include "config.h"
#include "data.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#define MAX_VOXELS ((size_t)1 << 30)
#define MAX_CSV ((size_t)64 << 20)

struct vol_header {
    int64_t dim[8];
    int datatype, bitpix;
    int64_t vox_offset;
    double slope, inter;
    int swap;
};

static uint16_t sw16(uint16_t v)
{
    return (uint16_t)(v >> 8 | v << 8);
}
static uint32_t sw32(uint32_t v)
{
    return v >> 24 | (v >> 8 & 0xff00) | (v << 8 & 0xff0000) | v << 24;
}
static uint64_t sw64(uint64_t v)
{
    return (uint64_t)sw32((uint32_t)v) << 32 | sw32((uint32_t)(v >> 32));
}
static int16_t get16(const unsigned char *p, int swap)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return (int16_t)(swap ? sw16(v) : v);
}
static int32_t get32(const unsigned char *p, int swap)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return (int32_t)(swap ? sw32(v) : v);
}
static int64_t get64(const unsigned char *p, int swap)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return (int64_t)(swap ? sw64(v) : v);
}
static float getf32(const unsigned char *p, int swap)
{
    uint32_t v;
    memcpy(&v, p, 4);
    if (swap)
        v = sw32(v);
    float f;
    memcpy(&f, &v, 4);
    return f;
}
static double getf64(const unsigned char *p, int swap)
{
    uint64_t v;
    memcpy(&v, p, 8);
    if (swap)
        v = sw64(v);
    double d;
    memcpy(&d, &v, 8);
    return d;
}

static int parse_header(gzFile g, const char *path, struct vol_header *h, size_t *consumed,
                        struct emoe_error *err)
{
    unsigned char b[540];
    int rc = prep_gz_read(g, path, b, 348, "NIfTI header", err);
    if (rc != EMOE_OK)
        return rc;
    int32_t sz = get32(b, 0);
    int swap = 0;
    if (sz != 348 && sz != 540) {
        swap = 1;
        sz = get32(b, 1);
    }
    if (sz != 348 && sz != 540)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: not a NIfTI file (sizeof_hdr %d)", path,
                              get32(b, 0));
    memset(h, 0, sizeof *h);
    h->swap = swap;
    if (sz == 348) {
        if (memcmp(b + 344, "n+1", 4) != 0)
            return emoe_error_set(err, EMOE_EUNSUPPORTED, "%s: %s", path,
                                  memcmp(b + 344, "ni1", 4) == 0
                                      ? "a NIfTI-1 header/image pair (.hdr/.img) is not supported"
                                      : "not a NIfTI-1 file (bad magic)");
        for (int i = 0; i < 8; i++)
            h->dim[i] = get16(b + 40 + 2 * i, swap);
        h->datatype = get16(b + 70, swap);
        h->bitpix = get16(b + 72, swap);
        float off = getf32(b + 108, swap);
        if (!(off >= 348 && off < 1e12))
            return emoe_error_set(err, EMOE_EFORMAT, "%s: bad vox_offset %g", path, (double)off);
        h->vox_offset = (int64_t)off;
        h->slope = getf32(b + 112, swap);
        h->inter = getf32(b + 116, swap);
        *consumed = 348;
    } else {
        rc = prep_gz_read(g, path, b + 348, 540 - 348, "NIfTI-2 header", err);
        if (rc != EMOE_OK)
            return rc;
        if (memcmp(b + 4, "n+2\0\r\n\032\n", 8) != 0)
            return emoe_error_set(err, EMOE_EUNSUPPORTED, "%s: not a single-file NIfTI-2 (bad "
                                  "magic)", path);
        h->datatype = get16(b + 12, swap);
        h->bitpix = get16(b + 14, swap);
        for (int i = 0; i < 8; i++)
            h->dim[i] = get64(b + 16 + 8 * i, swap);
        h->vox_offset = get64(b + 168, swap);
        if (h->vox_offset < 540)
            return emoe_error_set(err, EMOE_EFORMAT, "%s: bad vox_offset %lld", path,
                                  (long long)h->vox_offset);
        h->slope = getf64(b + 176, swap);
        h->inter = getf64(b + 184, swap);
        *consumed = 540;
    }
    if (h->dim[0] < 1 || h->dim[0] > 7)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: bad dim[0] %lld", path,
                              (long long)h->dim[0]);
    for (int i = 1; i <= 3; i++)
        if (i > h->dim[0])
            h->dim[i] = 1;
    for (int i = 1; i <= h->dim[0]; i++)
        if (h->dim[i] < 1 || h->dim[i] > (1 << 20))
            return emoe_error_set(err, EMOE_EFORMAT, "%s: bad dim[%d] %lld", path, i,
                                  (long long)h->dim[i]);
    for (int i = 4; i <= h->dim[0]; i++)
        if (h->dim[i] != 1)
            return emoe_error_set(err, EMOE_EUNSUPPORTED,
                                  "%s: a %lld-D series (dim[%d] = %lld); only 3-D volumes", path,
                                  (long long)h->dim[0], i, (long long)h->dim[i]);
    return EMOE_OK;
}

static int dtype_size(int datatype)
{
    switch (datatype) {
    case 2: case 256: return 1;     /* u8, i8 */
    case 4: case 512: return 2;     /* i16, u16 */
    case 8: case 768: case 16: return 4; /* i32, u32, f32 */
    case 64: return 8;              /* f64 */
    default: return 0;
    }
}

/* Read a volume as f32 [z][y][x]; *vox = x, y, z sizes. */
static int read_volume(const char *path, float **out, int64_t *dims, struct emoe_error *err)
{
    *out = NULL;
    gzFile g = gzopen(path, "rb");
    if (!g)
        return emoe_error_set(err, errno == ENOENT ? EMOE_ENOTFOUND : EMOE_EIO, "%s: %s", path,
                              errno ? strerror(errno) : "cannot open");
    gzbuffer(g, 1 << 17);
    struct vol_header h;
    size_t used = 0;
    unsigned char *raw = NULL;
    float *v = NULL;
    int rc = parse_header(g, path, &h, &used, err);
    if (rc != EMOE_OK)
        goto done;
    int es = dtype_size(h.datatype);
    if (!es) {
        rc = emoe_error_set(err, EMOE_EUNSUPPORTED, "%s: unsupported NIfTI datatype %d", path,
                            h.datatype);
        goto done;
    }
    size_t nvox = 1, nbytes;
    for (int i = 1; i <= 3; i++)
        if (emoe_size_mul(&nvox, nvox, (size_t)h.dim[i]) != EMOE_OK || nvox > MAX_VOXELS) {
            rc = emoe_error_set(err, EMOE_ERANGE, "%s: volume too large", path);
            goto done;
        }
    nbytes = nvox * (size_t)es;
    /* skip the extensions up to vox_offset */
    for (size_t skip = (size_t)h.vox_offset - used; skip > 0;) {
        unsigned char tmp[4096];
        size_t k = skip < sizeof tmp ? skip : sizeof tmp;
        rc = prep_gz_read(g, path, tmp, k, "header extension", err);
        if (rc != EMOE_OK)
            goto done;
        skip -= k;
    }
    raw = malloc(nbytes);
    v = malloc(nvox * sizeof *v);
    if (!raw || !v) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    rc = prep_gz_read(g, path, raw, nbytes, "voxel data", err);
    if (rc != EMOE_OK)
        goto done;
    int sw = h.swap;
    for (size_t i = 0; i < nvox; i++) {
        const unsigned char *p = raw + i * (size_t)es;
        double x;
        switch (h.datatype) {
        case 2: x = p[0]; break;
        case 256: x = (int8_t)p[0]; break;
        case 4: x = get16(p, sw); break;
        case 512: x = (uint16_t)get16(p, sw); break;
        case 8: x = get32(p, sw); break;
        case 768: x = (uint32_t)get32(p, sw); break;
        case 16: x = getf32(p, sw); break;
        default: x = getf64(p, sw); break;
        }
        v[i] = (float)x;
    }
    if (h.slope != 0 && isfinite(h.slope) && isfinite(h.inter) &&
        (h.slope != 1 || h.inter != 0))
        for (size_t i = 0; i < nvox; i++)
            v[i] = (float)(v[i] * h.slope + h.inter);
    for (size_t i = 0; i < nvox; i++)
        if (!isfinite(v[i])) {
            rc = emoe_error_set(err, EMOE_EFORMAT, "%s: non-finite voxel value", path);
            goto done;
        }
    dims[0] = h.dim[1];
    dims[1] = h.dim[2];
    dims[2] = h.dim[3];
    *out = v;
    v = NULL;
done:
    free(raw);
    free(v);
    gzclose(g);
    return rc;
}

/* Trilinear taps along one axis (half-pixel centres, clamped). */
static void lin_taps(int64_t in, int64_t out, int64_t *i0, int64_t *i1, float *f)
{
    for (int64_t o = 0; o < out; o++) {
        double c = (o + 0.5) * (double)in / (double)out - 0.5;
        if (c < 0)
            c = 0;
        int64_t a = (int64_t)c;
        if (a > in - 1)
            a = in - 1;
        i0[o] = a;
        i1[o] = a + 1 < in ? a + 1 : a;
        f[o] = (float)(c - (double)a);
    }
}

/* src [Z][Y][X] -> dst [n][n][n] (or the same dims when n == 0), normalised. */
static int resample(const float *src, const int64_t *d, const int64_t *od, float *dst)
{
    int64_t X = d[0], Y = d[1], Z = d[2], OX = od[0], OY = od[1], OZ = od[2];
    int64_t *ix0 = malloc(sizeof(int64_t) * (size_t)(2 * (OX + OY + OZ)));
    float *fx = malloc(sizeof(float) * (size_t)(OX + OY + OZ));
    if (!ix0 || !fx) {
        free(ix0);
        free(fx);
        return -1;
    }
    int64_t *ix1 = ix0 + OX, *iy0 = ix1 + OX, *iy1 = iy0 + OY, *iz0 = iy1 + OY, *iz1 = iz0 + OZ;
    float *fy = fx + OX, *fz = fy + OY;
    lin_taps(X, OX, ix0, ix1, fx);
    lin_taps(Y, OY, iy0, iy1, fy);
    lin_taps(Z, OZ, iz0, iz1, fz);
    size_t sy = (size_t)X, sz = (size_t)X * (size_t)Y;
    float *o = dst;
    for (int64_t k = 0; k < OZ; k++) {
        const float *p0 = src + (size_t)iz0[k] * sz, *p1 = src + (size_t)iz1[k] * sz;
        float wz = fz[k];
        for (int64_t j = 0; j < OY; j++) {
            const float *a0 = p0 + (size_t)iy0[j] * sy, *a1 = p0 + (size_t)iy1[j] * sy;
            const float *b0 = p1 + (size_t)iy0[j] * sy, *b1 = p1 + (size_t)iy1[j] * sy;
            float wy = fy[j];
            for (int64_t i = 0; i < OX; i++) {
                int64_t x0 = ix0[i], x1 = ix1[i];
                float wx = fx[i];
                float c00 = a0[x0] + wx * (a0[x1] - a0[x0]);
                float c01 = a1[x0] + wx * (a1[x1] - a1[x0]);
                float c10 = b0[x0] + wx * (b0[x1] - b0[x0]);
                float c11 = b1[x0] + wx * (b1[x1] - b1[x0]);
                float c0 = c00 + wy * (c01 - c00), c1 = c10 + wy * (c11 - c10);
                *o++ = c0 + wz * (c1 - c0);
            }
        }
    }
    free(ix0);
    free(fx);
    /* zero mean, unit std over the volume */
    size_t n = (size_t)OX * (size_t)OY * (size_t)OZ;
    double s = 0, q = 0;
    for (size_t i = 0; i < n; i++)
        s += dst[i];
    double mean = n ? s / (double)n : 0;
    for (size_t i = 0; i < n; i++)
        q += (dst[i] - mean) * (dst[i] - mean);
    double sd = n ? sqrt(q / (double)n) : 0;
    float inv = sd > 0 ? (float)(1.0 / sd) : 1.0f;
    for (size_t i = 0; i < n; i++)
        dst[i] = (float)(dst[i] - mean) * inv;
    return 0;
}

/* ------------------------------------------------------------------- CSV */

/* Parse one CSV record starting at *pos into fields (quoted fields, "" escapes); buf
 * (n + 1 bytes, shared by all records) holds each field while it is parsed, so the
 * cost is linear in the record, not in what is left of the file. */
static int csv_record(const char *t, size_t n, size_t *pos, char *buf, char ***fields,
                      size_t *nf)
{
    size_t cap = 8, k = 0, i = *pos;
    char **v = malloc(cap * sizeof *v);
    if (!v)
        return -1;
    for (;;) {
        size_t bl = 0;
        if (i < n && t[i] == '"') {
            i++;
            while (i < n) {
                if (t[i] == '"') {
                    if (i + 1 < n && t[i + 1] == '"') {
                        buf[bl++] = '"';
                        i += 2;
                        continue;
                    }
                    i++;
                    break;
                }
                buf[bl++] = t[i++];
            }
        }
        while (i < n && t[i] != ',' && t[i] != '\n' && t[i] != '\r')
            buf[bl++] = t[i++];
        while (bl && (buf[bl - 1] == ' ' || buf[bl - 1] == '\t'))
            bl--;
        size_t st = 0;
        while (st < bl && (buf[st] == ' ' || buf[st] == '\t'))
            st++;
        char *f = strndup(buf + st, bl - st);
        if (!f) {
            prep_free_strings(v, k);
            return -1;
        }
        if (k == cap) {
            char **w = realloc(v, (cap *= 2) * sizeof *v);
            if (!w) {
                free(f);
                prep_free_strings(v, k);
                return -1;
            }
            v = w;
        }
        v[k++] = f;
        if (i < n && t[i] == ',') {
            i++;
            continue;
        }
        break;
    }
    while (i < n && (t[i] == '\r' || t[i] == '\n'))
        i++;
    *pos = i;
    *fields = v;
    *nf = k;
    return 0;
}

struct target {
    char *id;
    double value;
    size_t row;
    int used;
};

static int cmp_target(const void *a, const void *b)
{
    const struct target *x = *(const struct target *const *)a;
    const struct target *y = *(const struct target *const *)b;
    int c = strcmp(x->id, y->id);
    if (c)
        return c;
    return x->row < y->row ? -1 : x->row > y->row;
}

/* The first row (in file order) whose id an earlier row has: "row R: id 'X' repeats row
 * P", found by sorting (a pairwise check is quadratic in the rows). */
static int check_repeats(const struct target *v, size_t k, const char *path,
                         struct emoe_error *err)
{
    if (k < 2)
        return EMOE_OK;
    const struct target **s = malloc(k * sizeof *s);
    if (!s)
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < k; i++)
        s[i] = &v[i];
    qsort(s, k, sizeof *s, cmp_target);
    const struct target *first = NULL, *again = NULL;
    for (size_t i = 1; i < k; i++)
        if (!strcmp(s[i]->id, s[i - 1]->id) && (i < 2 || strcmp(s[i - 1]->id, s[i - 2]->id)) &&
            (!again || s[i]->row < again->row)) {
            first = s[i - 1];
            again = s[i];
        }
    int rc = EMOE_OK;
    if (again)
        rc = emoe_error_set(err, EMOE_EFORMAT, "%s: row %zu: id '%s' repeats row %zu", path,
                            again->row, again->id, first->row);
    free(s);
    return rc;
}

static int read_targets(const struct emoe_prep_options *o, struct target **out, size_t *nout,
                        struct emoe_error *err)
{
    const char *path = o->targets;
    if (!o->id_column || !o->target_column)
        return emoe_error_set(err, EMOE_EINVAL, "%s: give the id column and the target column",
                              path);
    unsigned char *text;
    size_t n;
    int rc = prep_read_file(path, MAX_CSV, &text, &n, err);
    if (rc != EMOE_OK)
        return rc;
    const char *t = (const char *)text;
    size_t pos = 0, nf;
    char **f = NULL;
    char *field = malloc(n + 1);
    struct target *v = NULL;
    size_t k = 0, cap = 0, row = 1;
    long idc = -1, tc = -1;
    if (!field) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    if (n >= 3 && !memcmp(t, "\xef\xbb\xbf", 3))
        pos = 3; /* UTF-8 byte order mark */
    if (csv_record(t, n, &pos, field, &f, &nf) != 0) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < nf; i++) {
        if (!strcmp(f[i], o->id_column))
            idc = (long)i;
        if (!strcmp(f[i], o->target_column))
            tc = (long)i;
    }
    prep_free_strings(f, nf);
    if (idc < 0 || tc < 0) {
        rc = emoe_error_set(err, EMOE_ENOTFOUND, "%s: no column '%s'", path,
                            idc < 0 ? o->id_column : o->target_column);
        goto done;
    }
    while (pos < n) {
        row++;
        if (csv_record(t, n, &pos, field, &f, &nf) != 0) {
            rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
            goto done;
        }
        if (nf == 1 && !f[0][0]) {
            prep_free_strings(f, nf);
            continue;
        }
        if ((size_t)idc >= nf || (size_t)tc >= nf || !f[idc][0]) {
            prep_free_strings(f, nf);
            /* a repeat in an earlier row is reported first */
            if ((rc = check_repeats(v, k, path, err)) == EMOE_OK)
                rc = emoe_error_set(err, EMOE_EFORMAT, "%s: row %zu: missing '%s' or '%s'", path,
                                    row, o->id_column, o->target_column);
            goto done;
        }
        char *end;
        double val = strtod(f[tc], &end);
        if (end == f[tc] || *end || !isfinite(val)) {
            if ((rc = check_repeats(v, k, path, err)) == EMOE_OK)
                rc = emoe_error_set(err, EMOE_EFORMAT, "%s: row %zu: '%s' is not a number", path,
                                    row, f[tc]);
            prep_free_strings(f, nf);
            goto done;
        }
        if (k == cap) {
            cap = cap ? cap * 2 : 64;
            struct target *w = realloc(v, cap * sizeof *v);
            if (!w) {
                prep_free_strings(f, nf);
                rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
                goto done;
            }
            v = w;
        }
        v[k].id = f[idc];
        f[idc] = NULL;
        v[k].value = val;
        v[k].row = row;
        v[k].used = 0;
        k++;
        for (size_t i = 0; i < nf; i++)
            free(f[i]);
        free(f);
    }
    rc = check_repeats(v, k, path, err);
done:
    free(field);
    free(text);
    if (rc != EMOE_OK) {
        for (size_t i = 0; i < k; i++)
            free(v[i].id);
        free(v);
        return rc;
    }
    *out = v;
    *nout = k;
    return EMOE_OK;
}

/* The file name without folder and .nii/.nii.gz. */
static void stem(const char *path, char *out, size_t size)
{
    const char *b = prep_basename(path);
    size_t n = strlen(b);
    if (prep_has_suffix(b, ".nii.gz"))
        n -= 7;
    else if (prep_has_suffix(b, ".nii"))
        n -= 4;
    snprintf(out, size, "%.*s", (int)n, b);
}

/* ---------------------------------------------------------------- reader */

struct job {
    const char *path;
    float *dst;
    int64_t od[3];
    int native;         /* od are the first volume's dims and must match */
    int rc;
    struct emoe_error err;
};

static void load_one(void *ctx, size_t i)
{
    struct job *j = (struct job *)ctx + i;
    float *v;
    int64_t d[3];
    j->rc = read_volume(j->path, &v, d, &j->err);
    if (j->rc != EMOE_OK)
        return;
    if (j->native && (d[0] != j->od[0] || d[1] != j->od[1] || d[2] != j->od[2])) {
        j->rc = emoe_error_set(&j->err, EMOE_EINVAL,
                               "%s: volume is %lldx%lldx%lld, not %lldx%lldx%lld like the first; "
                               "give a size", j->path, (long long)d[0], (long long)d[1],
                               (long long)d[2], (long long)j->od[0], (long long)j->od[1],
                               (long long)j->od[2]);
        free(v);
        return;
    }
    if (resample(v, d, j->od, j->dst) != 0)
        j->rc = emoe_error_set(&j->err, EMOE_ENOMEM, "%s: out of memory", j->path);
    free(v);
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int prep_read_nifti(const char *const *src, size_t n, const struct emoe_prep_options *o,
                    struct emoe_dataset **out, struct emoe_prep_result *res,
                    struct emoe_error *err)
{
    char **files = NULL;
    size_t nfiles = 0, cap = 0;
    struct target *tg = NULL;
    size_t ntg = 0;
    struct job *jobs = NULL;
    struct collector c;
    memset(&c, 0, sizeof c);
    int rc = EMOE_OK;
    /* the volume files: given, or the .nii/.nii.gz in given folders */
    for (size_t i = 0; rc == EMOE_OK && i < n; i++) {
        struct stat st;
        if (stat(src[i], &st) != 0) {
            rc = emoe_error_set(err, errno == ENOENT ? EMOE_ENOTFOUND : EMOE_EIO, "%s: %s",
                                src[i], strerror(errno));
            break;
        }
        DIR *d = S_ISDIR(st.st_mode) ? opendir(src[i]) : NULL;
        struct dirent *de = NULL;
        for (;;) {
            char p[4096];
            if (d) {
                de = readdir(d);
                if (!de)
                    break;
                if (de->d_name[0] == '.' || !(prep_has_suffix(de->d_name, ".nii") ||
                                              prep_has_suffix(de->d_name, ".nii.gz")))
                    continue;
                snprintf(p, sizeof p, "%s/%s", src[i], de->d_name);
            } else {
                snprintf(p, sizeof p, "%s", src[i]);
            }
            if (nfiles == cap) {
                cap = cap ? cap * 2 : 64;
                char **w = realloc(files, cap * sizeof *w);
                if (!w) {
                    rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
                    break;
                }
                files = w;
            }
            if (!(files[nfiles] = strdup(p))) {
                rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
                break;
            }
            nfiles++;
            if (!d)
                break;
        }
        if (d)
            closedir(d);
    }
    if (rc == EMOE_OK && nfiles == 0)
        rc = emoe_error_set(err, EMOE_ENOTFOUND, "%s: no .nii or .nii.gz volumes", src[0]);
    if (rc != EMOE_OK)
        goto done;
    qsort(files, nfiles, sizeof *files, cmp_cstr);
    for (size_t i = 1; i < nfiles; i++)
        if (!strcmp(files[i], files[i - 1])) {
            rc = emoe_error_set(err, EMOE_EINVAL, "%s: given twice", files[i]);
            goto done;
        }
    /* targets: each volume needs one, each row needs a volume */
    double *val = calloc(nfiles, sizeof *val);
    if (!val) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        goto done;
    }
    if (o->targets) {
        rc = read_targets(o, &tg, &ntg, err);
        for (size_t i = 0; rc == EMOE_OK && i < nfiles; i++) {
            char s[4096];
            stem(files[i], s, sizeof s);
            long best = -1;
            size_t blen = 0;
            for (size_t k = 0; k < ntg; k++) {
                size_t l = strlen(tg[k].id);
                if (!strncmp(s, tg[k].id, l) &&
                    (s[l] == 0 || s[l] == '-' || s[l] == '_' || s[l] == '.') && l > blen) {
                    best = (long)k;
                    blen = l;
                }
            }
            if (best < 0) {
                rc = emoe_error_set(err, EMOE_ENOTFOUND, "%s: no target for this volume in %s",
                                    files[i], o->targets);
                break;
            }
            if (tg[best].used) {
                rc = emoe_error_set(err, EMOE_EINVAL, "%s: id '%s' (row %zu) matches more than "
                                    "one volume", o->targets, tg[best].id, tg[best].row);
                break;
            }
            tg[best].used = 1;
            val[i] = tg[best].value;
        }
        for (size_t k = 0; rc == EMOE_OK && k < ntg; k++)
            if (!tg[k].used)
                rc = emoe_error_set(err, EMOE_ENOTFOUND, "%s: row %zu: no volume for id '%s'",
                                    o->targets, tg[k].row, tg[k].id);
    }
    if (rc != EMOE_OK) {
        free(val);
        goto done;
    }
    /* the output size: --size N (cube), or the first volume's own dims */
    int64_t od[3] = {o->size, o->size, o->size};
    if (o->size == 0) {
        float *v;
        rc = read_volume(files[0], &v, od, err);
        free(v);
        if (rc != EMOE_OK) {
            free(val);
            goto done;
        }
    }
    int64_t dims[4] = {od[2], od[1], od[0], 1};
    rc = collector_init(&c, EMOE_F32, 4, dims, err);
    size_t first = 0;
    if (rc == EMOE_OK)
        rc = collector_reserve(&c, nfiles, &first, err);
    jobs = calloc(nfiles, sizeof *jobs);
    if (rc == EMOE_OK && !jobs)
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    if (rc != EMOE_OK) {
        free(val);
        goto done;
    }
    c.regression = 1;
    for (size_t i = 0; i < nfiles; i++) {
        jobs[i].path = files[i];
        jobs[i].dst = (float *)(void *)collector_slot(&c, first + i);
        if (o->size)
            memcpy(jobs[i].od, od, sizeof od);
    }
    /* native size: every volume must have the first one's dims (checked before writing) */
    if (o->size == 0)
        for (size_t i = 0; i < nfiles; i++) {
            memcpy(jobs[i].od, od, sizeof od);
            jobs[i].native = 1;
        }
    emoe_parallel_for(nfiles, load_one, jobs);
    for (size_t i = 0; rc == EMOE_OK && i < nfiles; i++) {
        if (jobs[i].rc != EMOE_OK) {
            rc = jobs[i].rc;
            if (err)
                *err = jobs[i].err;
            break;
        }
        struct prep_item *it;
        rc = collector_add(&c, NULL, files[i], 0, 0, first + i, &it, err);
        if (rc == EMOE_OK)
            it->target = (float)val[i];
        if (o->progress)
            o->progress(o->ctx, i + 1, nfiles);
    }
    free(val);
    if (rc == EMOE_OK)
        rc = collector_finish(&c, o, out, err);
    (void)res;
done:
    collector_free(&c);
    free(jobs);
    prep_free_strings(files, nfiles);
    for (size_t k = 0; k < ntg; k++)
        free(tg[k].id);
    free(tg);
    return rc;
}
