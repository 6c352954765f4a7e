/*
 * safetensors.c: read and write .safetensors files, validating and writing
 * exactly as the reference implementation (huggingface/safetensors,
 * safetensors/src/tensor.rs) does.
 *
 * The format (METHOD.md section 8, and the reference):
 *   1. 8 bytes: N, an unsigned 64-bit little-endian integer, the header length.
 *   2. N bytes: a UTF-8 JSON object.  "__metadata__" (optional) maps strings to
 *      strings; every other key is a tensor name mapping to
 *      {"dtype":"F32","shape":[2,3],"data_offsets":[BEGIN,END]}, offsets relative
 *      to the start of the data buffer, END exclusive.  The writer pads the
 *      header with spaces to a multiple of 8 bytes.
 *   3. The data buffer: each tensor's elements, little-endian, C order.
 *
 * Reading (SafeTensors::read_metadata and Metadata::validate in the reference):
 *   - the file has at least 8 bytes; N <= 100,000,000 and 8 + N <= file size;
 *   - the header is valid UTF-8 and one JSON value (whitespace around it is
 *     allowed, so any N, padded or not, is accepted); it must be an object;
 *   - "__metadata__" is an object of strings (null counts as absent, as serde's
 *     Option does); a non-string value is an error;
 *   - each tensor entry is an object with "dtype" (BOOL U8 I8 I16 U16 F16 BF16
 *     I32 U32 F32 F64 I64 U64; the reference's FP8/FP4/FP6/C64 dtypes are known
 *     but unsupported here), "shape" (non-negative integers; rank <= 6 here) and
 *     "data_offsets" (two non-negative integers).  Other keys are ignored, as
 *     serde ignores unknown fields of TensorInfo.
 *   - sorted by data_offsets, the tensors tile the data buffer: the first begins
 *     at 0, each begins where the previous one ended, END >= BEGIN, END - BEGIN
 *     == product(shape) * dtype size (computed without overflow), and
 *     8 + N + last END == file size.  Empty and rank-0 tensors are allowed.
 *   Stricter than the reference: duplicate keys anywhere in the header (the
 *   reference keeps the last tensor of a name), numbers beyond int64, and names
 *   or metadata containing NUL (\u0000) are rejected.
 *
 * Writing (prepare() and serialize() in the reference): tensors sorted by dtype,
 * descending in the reference's Dtype order (BOOL < U8 < I8 < I16 < U16 < F16 <
 * BF16 < I32 < U32 < F32 < F64 < I64 < U64), then by name (bytewise); data
 * contiguous in that order; compact JSON (serde_json) with "__metadata__" first
 * when given, then the tensors in data order; spaces up to a multiple of 8.
 */
#include "config.h"
#include "internal.h"
#include "json.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_HEADER 100000000u

/* The reference's dtype names and their rank in its Dtype enum (for sorting). */
static const struct {
    const char *name;
    int rank;
} st_dtypes[EMOE_DTYPE_COUNT] = {
    [EMOE_BOOL] = {"BOOL", 0}, [EMOE_U8] = {"U8", 1},    [EMOE_I8] = {"I8", 2},
    [EMOE_I16] = {"I16", 3},   [EMOE_U16] = {"U16", 4},  [EMOE_F16] = {"F16", 5},
    [EMOE_BF16] = {"BF16", 6}, [EMOE_I32] = {"I32", 7},  [EMOE_U32] = {"U32", 8},
    [EMOE_F32] = {"F32", 9},   [EMOE_F64] = {"F64", 10}, [EMOE_I64] = {"I64", 11},
    [EMOE_U64] = {"U64", 12},
};

/* Dtypes the reference knows that emoe does not compute with. */
static const char *const st_unsupported[] = {
    "F4", "F6_E2M3", "F6_E3M2", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ",
    "F8_E5M2FNUZ", "C64",
};

static int host_is_little_endian(void)
{
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

struct st_tensor {
    const char *name; /* in the JSON document's pool */
    enum emoe_dtype dtype;
    int ndim;
    int64_t shape[EMOE_MAX_DIMS];
    uint64_t begin, end;
};

struct emoe_safetensors {
    char *path;
    struct emoe_buffer *buf;
    size_t data_off;             /* 8 + N */
    struct emoe_json_doc *doc;   /* owns the name and metadata strings */
    struct st_tensor *t;         /* in data order */
    size_t n;
    const struct st_tensor **by_name; /* into t, sorted by name */
    const char **mkey, **mval;   /* metadata in header order */
    size_t nmeta;
};

/* ---------------------------------------------------------------- reading */

/* Whole-file contents of a non-regular file (a pipe, "-") in a heap buffer. */
static int read_stream(int fd, const char *name, struct emoe_buffer **out,
                       struct emoe_error *err)
{
    size_t cap = 1 << 16, len = 0;
    unsigned char *p = malloc(cap);
    if (!p)
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", name);
    for (;;) {
        if (len == cap) {
            if (cap > SIZE_MAX / 4) {
                free(p);
                return emoe_error_set(err, EMOE_ERANGE, "%s: input too large", name);
            }
            unsigned char *q = realloc(p, cap * 2);
            if (!q) {
                free(p);
                return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", name);
            }
            p = q;
            cap *= 2;
        }
        ssize_t k = read(fd, p + len, cap - len);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            int e = errno;
            free(p);
            return emoe_error_set(err, EMOE_EIO, "%s: %s", name, strerror(e));
        }
        if (k == 0)
            break;
        len += (size_t)k;
    }
    struct emoe_buffer *b = emoe_buffer_alloc(len);
    if (!b) {
        free(p);
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", name);
    }
    if (len)
        memcpy(b->base, p, len);
    free(p);
    *out = b;
    return EMOE_OK;
}

static int load_file(const char *path, struct emoe_buffer **out, struct emoe_error *err)
{
    int is_stdin = strcmp(path, "-") == 0;
    const char *name = is_stdin ? "<stdin>" : path;
    int fd = is_stdin ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return emoe_error_set(err, errno == ENOENT ? EMOE_ENOTFOUND : EMOE_EIO, "%s: %s", path,
                              strerror(errno));
    struct stat st;
    int rc;
    if (fstat(fd, &st) != 0)
        rc = emoe_error_set(err, EMOE_EIO, "%s: %s", name, strerror(errno));
    else if (S_ISREG(st.st_mode))
        rc = emoe_buffer_map_fd(fd, name, out, err);
    else if (S_ISDIR(st.st_mode))
        rc = emoe_error_set(err, EMOE_EINVAL, "%s: is a directory", name);
    else
        rc = read_stream(fd, name, out, err);
    if (!is_stdin)
        close(fd);
    return rc;
}

static const char *qname(const char *s, char *buf, size_t size)
{
    return emoe_json_msg_str(s, strlen(s), buf, size);
}

/* "[1, 1, 4]" */
static const char *shape_str(int ndim, const int64_t *shape, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i <= ndim; i++) {
        int k = i == ndim ? snprintf(buf + used, size - used, "]")
                          : snprintf(buf + used, size - used, i ? ", %" PRId64 : "[%" PRId64,
                                     shape[i]);
        if (k < 0 || (size_t)k >= size - used)
            break;
        used += (size_t)k;
    }
    if (ndim == 0)
        snprintf(buf, size, "[]");
    return buf;
}

static int parse_dtype(const struct emoe_json *v, const char *file, const char *tn,
                       enum emoe_dtype *out, struct emoe_error *err)
{
    char b[80];
    if (!v)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: tensor '%s': missing \"dtype\"", file, tn);
    if (v->type != EMOE_JSON_STRING)
        return emoe_error_set(err, EMOE_EFORMAT,
                              "%s: tensor '%s': \"dtype\" is a JSON %s, not a string", file,
                              tn, emoe_json_type_name(v->type));
    for (int i = 0; i < EMOE_DTYPE_COUNT; i++)
        if (strlen(st_dtypes[i].name) == v->len &&
            memcmp(st_dtypes[i].name, v->str, v->len) == 0) {
            *out = (enum emoe_dtype)i;
            return EMOE_OK;
        }
    for (size_t i = 0; i < sizeof st_unsupported / sizeof *st_unsupported; i++)
        if (strlen(st_unsupported[i]) == v->len &&
            memcmp(st_unsupported[i], v->str, v->len) == 0)
            return emoe_error_set(err, EMOE_EUNSUPPORTED,
                                  "%s: tensor '%s': unsupported dtype '%s'", file, tn,
                                  st_unsupported[i]);
    return emoe_error_set(err, EMOE_EFORMAT, "%s: tensor '%s': unknown dtype '%s'", file, tn,
                          emoe_json_msg_str(v->str, v->len, b, sizeof b));
}

/* A JSON number that is a non-negative int64. */
static int is_count(const struct emoe_json *v)
{
    return v->type == EMOE_JSON_NUMBER && v->is_int && v->inum >= 0;
}

static int parse_tensor(const struct emoe_json *m, const char *file, struct st_tensor *t,
                        struct emoe_error *err)
{
    char tn[160];
    emoe_json_msg_str(m->key, m->key_len, tn, sizeof tn);
    if (m->type != EMOE_JSON_OBJECT)
        return emoe_error_set(err, EMOE_EFORMAT,
                              "%s: tensor '%s': the entry is a JSON %s, not an object", file, tn,
                              emoe_json_type_name(m->type));
    int rc = parse_dtype(emoe_json_get(m, "dtype"), file, tn, &t->dtype, err);
    if (rc != EMOE_OK)
        return rc;
    const struct emoe_json *s = emoe_json_get(m, "shape");
    if (!s)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: tensor '%s': missing \"shape\"", file, tn);
    if (s->type != EMOE_JSON_ARRAY)
        return emoe_error_set(err, EMOE_EFORMAT,
                              "%s: tensor '%s': \"shape\" is a JSON %s, not an array", file,
                              tn, emoe_json_type_name(s->type));
    if (s->count > EMOE_MAX_DIMS)
        return emoe_error_set(err, EMOE_EUNSUPPORTED,
                              "%s: tensor '%s': rank %zu is more than emoe supports (%d)", file,
                              tn, s->count, EMOE_MAX_DIMS);
    t->ndim = (int)s->count;
    int i = 0;
    for (const struct emoe_json *d = s->child; d; d = d->next, i++) {
        if (!is_count(d))
            return emoe_error_set(err, EMOE_EFORMAT,
                                  "%s: tensor '%s': shape element %d is not a non-negative "
                                  "integer (at most %" PRId64 ")",
                                  file, tn, i, INT64_MAX);
        t->shape[i] = d->inum;
    }
    const struct emoe_json *o = emoe_json_get(m, "data_offsets");
    if (!o)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: tensor '%s': missing \"data_offsets\"", file,
                              tn);
    if (o->type != EMOE_JSON_ARRAY || o->count != 2 || !is_count(o->child) ||
        !is_count(o->child->next))
        return emoe_error_set(err, EMOE_EFORMAT,
                              "%s: tensor '%s': \"data_offsets\" is not [BEGIN, END] with two "
                              "non-negative integers",
                              file, tn);
    t->begin = (uint64_t)o->child->inum;
    t->end = (uint64_t)o->child->next->inum;
    if (strlen(m->key) != m->key_len)
        return emoe_error_set(err, EMOE_EUNSUPPORTED,
                              "%s: tensor '%s': the name contains a NUL character", file, tn);
    t->name = m->key;
    return EMOE_OK;
}

static int parse_metadata(struct emoe_safetensors *st, const struct emoe_json *m,
                          struct emoe_error *err)
{
    if (m->type == EMOE_JSON_NULL)
        return EMOE_OK;
    if (m->type != EMOE_JSON_OBJECT)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: \"__metadata__\" is a JSON %s, not an object",
                              st->path, emoe_json_type_name(m->type));
    if (m->count) {
        st->mkey = malloc(m->count * sizeof *st->mkey);
        st->mval = malloc(m->count * sizeof *st->mval);
        if (!st->mkey || !st->mval)
            return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", st->path);
    }
    for (const struct emoe_json *v = m->child; v; v = v->next) {
        char kb[160];
        emoe_json_msg_str(v->key, v->key_len, kb, sizeof kb);
        if (v->type != EMOE_JSON_STRING)
            return emoe_error_set(err, EMOE_EFORMAT,
                                  "%s: metadata '%s' is a JSON %s, not a string", st->path, kb,
                                  emoe_json_type_name(v->type));
        if (strlen(v->key) != v->key_len || strlen(v->str) != v->len)
            return emoe_error_set(err, EMOE_EUNSUPPORTED,
                                  "%s: metadata '%s' contains a NUL character", st->path, kb);
        st->mkey[st->nmeta] = v->key;
        st->mval[st->nmeta] = v->str;
        st->nmeta++;
    }
    return EMOE_OK;
}

static int cmp_offsets(const void *a, const void *b)
{
    const struct st_tensor *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name); /* empty tensors sharing an offset: by name */
}

static int cmp_name_ptr(const void *a, const void *b)
{
    return strcmp((*(const struct st_tensor *const *)a)->name,
                  (*(const struct st_tensor *const *)b)->name);
}

/* Metadata::validate: the tensors, sorted by offsets, tile [0, data_size). */
static int validate_layout(struct emoe_safetensors *st, size_t data_size, struct emoe_error *err)
{
    uint64_t start = 0;
    for (size_t i = 0; i < st->n; i++) {
        const struct st_tensor *t = &st->t[i];
        char tn[160], pn[160], sb[200];
        qname(t->name, tn, sizeof tn);
        if (t->end < t->begin)
            return emoe_error_set(err, EMOE_EFORMAT,
                                  "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                                  "] end before they begin",
                                  st->path, tn, t->begin, t->end);
        if (t->begin != start) {
            if (i == 0)
                return emoe_error_set(err, EMOE_EFORMAT,
                                      "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                                      "]: the first tensor in the data buffer must begin at 0",
                                      st->path, tn, t->begin, t->end);
            qname(st->t[i - 1].name, pn, sizeof pn);
            if (t->begin > start)
                return emoe_error_set(err, EMOE_EFORMAT,
                                      "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                                      "] leave a gap of %" PRIu64
                                      " bytes after tensor '%s' (which ends at %" PRIu64 ")",
                                      st->path, tn, t->begin, t->end, t->begin - start, pn,
                                      start);
            return emoe_error_set(err, EMOE_EFORMAT,
                                  "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                                  "] overlap tensor '%s' (which ends at %" PRIu64 ")",
                                  st->path, tn, t->begin, t->end, pn, start);
        }
        size_t nbytes;
        int rc = emoe_shape_check(t->dtype, t->ndim, t->shape, NULL, &nbytes, err);
        if (rc != EMOE_OK) {
            char pre[400];
            snprintf(pre, sizeof pre, "%s: tensor '%s'", st->path, tn);
            emoe_error_prefix(err, pre);
            return rc;
        }
        if (t->end - t->begin != (uint64_t)nbytes)
            return emoe_error_set(err, EMOE_EFORMAT,
                                  "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                                  "] do not match shape %s of %s (%zu bytes)",
                                  st->path, tn, t->begin, t->end,
                                  shape_str(t->ndim, t->shape, sb, sizeof sb),
                                  st_dtypes[t->dtype].name, nbytes);
        start = t->end;
    }
    if (start != (uint64_t)data_size) {
        if (start < (uint64_t)data_size)
            return emoe_error_set(err, EMOE_EFORMAT,
                                  "%s: %" PRIu64 " trailing bytes after the tensor data (the "
                                  "tensors end at byte %" PRIu64 " of the %zu-byte data buffer)",
                                  st->path, (uint64_t)data_size - start, start, data_size);
        return emoe_error_set(err, EMOE_EFORMAT,
                              "%s: truncated: the tensors need %" PRIu64
                              " bytes of data, the file has %zu",
                              st->path, start, data_size);
    }
    return EMOE_OK;
}

static int open_buffer(struct emoe_safetensors *st, struct emoe_error *err)
{
    const unsigned char *p = st->buf->base;
    size_t size = st->buf->size;
    if (size < 8)
        return emoe_error_set(err, EMOE_EFORMAT,
                              "%s: file too small for a safetensors header (%zu bytes, at "
                              "least 8 needed)",
                              st->path, size);
    uint64_t n = emoe_load_le64(p);
    if (n > MAX_HEADER)
        return emoe_error_set(err, EMOE_ERANGE,
                              "%s: header length %" PRIu64 " exceeds the limit of %u bytes",
                              st->path, n, MAX_HEADER);
    if (n > size - 8)
        return emoe_error_set(err, EMOE_EFORMAT,
                              "%s: header length %" PRIu64 " runs past the end of the file "
                              "(%zu bytes)",
                              st->path, n, size);
    const char *hdr = (const char *)p + 8;
    size_t bad;
    if (!emoe_utf8_valid(hdr, (size_t)n, &bad))
        return emoe_error_set(err, EMOE_EFORMAT, "%s: header is not valid UTF-8 (byte %zu)",
                              st->path, bad);
    char name[600];
    snprintf(name, sizeof name, "%s: header", st->path);
    int rc = emoe_json_parse(hdr, (size_t)n, EMOE_JSON_DEFAULT_DEPTH, name, &st->doc, err);
    if (rc != EMOE_OK)
        return rc;
    const struct emoe_json *root = emoe_json_root(st->doc);
    if (root->type != EMOE_JSON_OBJECT)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: header is a JSON %s, not an object",
                              st->path, emoe_json_type_name(root->type));
    st->data_off = 8 + (size_t)n;
    size_t count = root->count;
    if (count) {
        st->t = calloc(count, sizeof *st->t);
        if (!st->t)
            return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", st->path);
    }
    for (const struct emoe_json *m = root->child; m; m = m->next) {
        if (m->key_len == 12 && memcmp(m->key, "__metadata__", 12) == 0) {
            rc = parse_metadata(st, m, err);
        } else {
            rc = parse_tensor(m, st->path, &st->t[st->n], err);
            if (rc == EMOE_OK)
                st->n++;
        }
        if (rc != EMOE_OK)
            return rc;
    }
    if (st->n > 1)
        qsort(st->t, st->n, sizeof *st->t, cmp_offsets);
    rc = validate_layout(st, size - st->data_off, err);
    if (rc != EMOE_OK)
        return rc;
    if (st->n) {
        st->by_name = malloc(st->n * sizeof *st->by_name);
        if (!st->by_name)
            return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", st->path);
        for (size_t i = 0; i < st->n; i++)
            st->by_name[i] = &st->t[i];
        qsort(st->by_name, st->n, sizeof *st->by_name, cmp_name_ptr);
    }
    return EMOE_OK;
}

int emoe_safetensors_open(const char *path, struct emoe_safetensors **out,
                          struct emoe_error *err)
{
    *out = NULL;
    if (!host_is_little_endian())
        return emoe_error_set(err, EMOE_EUNSUPPORTED,
                              "%s: safetensors on a big-endian host are not supported", path);
    struct emoe_safetensors *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(strcmp(path, "-") == 0 ? "<stdin>" : path))) {
        free(st);
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", path);
    }
    int rc = load_file(path, &st->buf, err);
    if (rc == EMOE_OK)
        rc = open_buffer(st, err);
    if (rc != EMOE_OK) {
        emoe_safetensors_close(st);
        return rc;
    }
    *out = st;
    return EMOE_OK;
}

size_t emoe_safetensors_count(const struct emoe_safetensors *st)
{
    return st ? st->n : 0;
}

const char *emoe_safetensors_name(const struct emoe_safetensors *st, size_t i)
{
    return st && i < st->n ? st->t[i].name : NULL;
}

static const struct st_tensor *find(const struct emoe_safetensors *st, const char *name)
{
    size_t lo = 0, hi = st->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct st_tensor *t = st->by_name[mid];
        int c = strcmp(name, t->name);
        if (c == 0)
            return t;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

int emoe_safetensors_get(struct emoe_safetensors *st, const char *name,
                         struct emoe_tensor **out, struct emoe_error *err)
{
    *out = NULL;
    const struct st_tensor *t = find(st, name);
    if (!t) {
        char b[160];
        return emoe_error_set(err, EMOE_ENOTFOUND, "%s: no tensor '%s'", st->path,
                              qname(name, b, sizeof b));
    }
    unsigned char *data = (unsigned char *)st->buf->base + st->data_off + t->begin;
    size_t esize = emoe_dtype_size(t->dtype);
    if ((uintptr_t)data % esize == 0)
        return emoe_tensor_view(st->buf, data, t->dtype, t->ndim, t->shape, out, err);
    /* The header length leaves the data misaligned for its type: copy it. */
    int rc = emoe_tensor_new(t->dtype, t->ndim, t->shape, out, err);
    if (rc != EMOE_OK)
        return rc;
    memcpy((*out)->data, data, (*out)->nbytes);
    return EMOE_OK;
}

size_t emoe_safetensors_metadata_count(const struct emoe_safetensors *st)
{
    return st ? st->nmeta : 0;
}

const char *emoe_safetensors_metadata_key(const struct emoe_safetensors *st, size_t i)
{
    return st && i < st->nmeta ? st->mkey[i] : NULL;
}

const char *emoe_safetensors_metadata_value(const struct emoe_safetensors *st, size_t i)
{
    return st && i < st->nmeta ? st->mval[i] : NULL;
}

const char *emoe_safetensors_metadata_get(const struct emoe_safetensors *st, const char *key)
{
    for (size_t i = 0; st && i < st->nmeta; i++)
        if (strcmp(st->mkey[i], key) == 0)
            return st->mval[i];
    return NULL;
}

void emoe_safetensors_close(struct emoe_safetensors *st)
{
    if (!st)
        return;
    emoe_buffer_unref(st->buf);
    emoe_json_free(st->doc);
    free(st->t);
    free(st->by_name);
    free(st->mkey);
    free(st->mval);
    free(st->path);
    free(st);
}

/* ---------------------------------------------------------------- writing */

struct wentry {
    const char *name;
    const struct emoe_tensor *t;
    int rank;
};

static int cmp_layout(const void *a, const void *b)
{
    const struct wentry *x = a, *y = b;
    if (x->rank != y->rank)
        return x->rank > y->rank ? -1 : 1; /* descending dtype */
    return strcmp(x->name, y->name);       /* bytewise, as Rust's String Ord */
}

static int cmp_kv(const void *a, const void *b)
{
    return strcmp(((const struct emoe_kv *)a)->key, ((const struct emoe_kv *)b)->key);
}

static int check_args(const char *path, const struct emoe_named_tensor *tensors, size_t n,
                      const struct emoe_kv *meta, size_t nmeta, struct emoe_error *err)
{
    char b[160];
    if (n && !tensors)
        return emoe_error_set(err, EMOE_EINVAL, "%s: no tensors given", path);
    if (nmeta && !meta)
        return emoe_error_set(err, EMOE_EINVAL, "%s: no metadata given", path);
    for (size_t i = 0; i < n; i++) {
        const char *nm = tensors[i].name;
        const struct emoe_tensor *t = tensors[i].tensor;
        if (!nm || !t)
            return emoe_error_set(err, EMOE_EINVAL, "%s: tensor %zu has no name or no data",
                                  path, i);
        if (!emoe_utf8_valid(nm, strlen(nm), NULL))
            return emoe_error_set(err, EMOE_EINVAL, "%s: tensor name '%s' is not valid UTF-8",
                                  path, qname(nm, b, sizeof b));
        if (strcmp(nm, "__metadata__") == 0)
            return emoe_error_set(err, EMOE_EINVAL,
                                  "%s: tensor name '__metadata__' is reserved", path);
        if ((unsigned)t->dtype >= EMOE_DTYPE_COUNT || (t->nbytes && !t->data))
            return emoe_error_set(err, EMOE_EINVAL, "%s: tensor '%s' is invalid", path,
                                  qname(nm, b, sizeof b));
    }
    for (size_t i = 0; i < nmeta; i++) {
        if (!meta[i].key || !meta[i].value)
            return emoe_error_set(err, EMOE_EINVAL, "%s: metadata %zu has no key or value",
                                  path, i);
        if (!emoe_utf8_valid(meta[i].key, strlen(meta[i].key), NULL) ||
            !emoe_utf8_valid(meta[i].value, strlen(meta[i].value), NULL))
            return emoe_error_set(err, EMOE_EINVAL, "%s: metadata '%s' is not valid UTF-8",
                                  path, qname(meta[i].key, b, sizeof b));
    }
    return EMOE_OK;
}

/* The header JSON (unpadded) for entries in layout order. */
static int build_header(struct emoe_json_out *o, const struct wentry *e, size_t n,
                        const struct emoe_kv *meta, const struct emoe_kv *sorted, size_t nmeta,
                        const char *path, struct emoe_error *err)
{
    emoe_json_begin_object(o);
    if (meta) {
        emoe_json_key(o, "__metadata__");
        emoe_json_begin_object(o);
        for (size_t i = 0; i < nmeta; i++) {
            emoe_json_key(o, sorted[i].key);
            emoe_json_string(o, sorted[i].value);
        }
        emoe_json_end_object(o);
    }
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const struct emoe_tensor *t = e[i].t;
        size_t end;
        if (emoe_size_add(&end, off, t->nbytes) != EMOE_OK)
            return emoe_error_set(err, EMOE_ERANGE, "%s: total data size overflows", path);
        emoe_json_key(o, e[i].name);
        emoe_json_begin_object(o);
        emoe_json_key(o, "dtype");
        emoe_json_string(o, st_dtypes[t->dtype].name);
        emoe_json_key(o, "shape");
        emoe_json_begin_array(o);
        for (int d = 0; d < t->ndim; d++)
            emoe_json_int(o, t->shape[d]);
        emoe_json_end_array(o);
        emoe_json_key(o, "data_offsets");
        emoe_json_begin_array(o);
        emoe_json_uint(o, off);
        emoe_json_uint(o, end);
        emoe_json_end_array(o);
        emoe_json_end_object(o);
        off = end;
    }
    emoe_json_end_object(o);
    int rc = emoe_json_out_finish(o, err);
    if (rc != EMOE_OK)
        emoe_error_prefix(err, path);
    return rc;
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int emoe_safetensors_write(const char *path, const struct emoe_named_tensor *tensors,
                           size_t n, const struct emoe_kv *meta, size_t nmeta,
                           struct emoe_error *err)
{
    char b[160];
    if (!host_is_little_endian())
        return emoe_error_set(err, EMOE_EUNSUPPORTED,
                              "%s: safetensors on a big-endian host are not supported", path);
    int rc = check_args(path, tensors, n, meta, nmeta, err);
    if (rc != EMOE_OK)
        return rc;
    struct wentry *e = malloc((n ? n : 1) * sizeof *e);
    const char **names = malloc((n ? n : 1) * sizeof *names);
    struct emoe_kv *sorted = malloc((nmeta ? nmeta : 1) * sizeof *sorted);
    struct emoe_json_out o;
    emoe_json_out_init(&o);
    if (!e || !names || !sorted) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        e[i].name = names[i] = tensors[i].name;
        e[i].t = tensors[i].tensor;
        e[i].rank = st_dtypes[tensors[i].tensor->dtype].rank;
    }
    /* Unique names (checked on a by-name order: equal names with different dtypes
     * are not adjacent in the layout order). */
    qsort(names, n, sizeof *names, cmp_str_ptr);
    for (size_t i = 1; i < n; i++)
        if (strcmp(names[i], names[i - 1]) == 0) {
            rc = emoe_error_set(err, EMOE_EINVAL, "%s: tensor name '%s' appears twice", path,
                                qname(names[i], b, sizeof b));
            goto done;
        }
    qsort(e, n, sizeof *e, cmp_layout);
    if (nmeta)
        memcpy(sorted, meta, nmeta * sizeof *sorted);
    qsort(sorted, nmeta, sizeof *sorted, cmp_kv);
    for (size_t i = 1; i < nmeta; i++)
        if (strcmp(sorted[i].key, sorted[i - 1].key) == 0) {
            rc = emoe_error_set(err, EMOE_EINVAL, "%s: metadata key '%s' appears twice", path,
                                qname(sorted[i].key, b, sizeof b));
            goto done;
        }
    rc = build_header(&o, e, n, meta, sorted, nmeta, path, err);
    if (rc != EMOE_OK)
        goto done;
    /* The reference pads the header with spaces to a multiple of 8 bytes. */
    size_t pad = (8 - o.len % 8) % 8;
    if (o.len + pad > MAX_HEADER) { /* the reference refuses too (HeaderTooLarge) */
        rc = emoe_error_set(err, EMOE_ERANGE,
                            "%s: header of %zu bytes exceeds the limit of %u bytes", path,
                            o.len + pad, MAX_HEADER);
        goto done;
    }
    unsigned char len8[8];
    emoe_store_le64(len8, (uint64_t)o.len + pad);

    struct emoe_atomic a;
    rc = emoe_atomic_open(&a, path, err);
    if (rc != EMOE_OK)
        goto done;
    int ok = fwrite(len8, 1, 8, a.f) == 8 && fwrite(o.buf, 1, o.len, a.f) == o.len &&
             fwrite("        ", 1, pad, a.f) == pad;
    for (size_t i = 0; ok && i < n; i++)
        if (e[i].t->nbytes)
            ok = fwrite(e[i].t->data, 1, e[i].t->nbytes, a.f) == e[i].t->nbytes;
    if (!ok) {
        int er = errno;
        emoe_atomic_abort(&a);
        rc = emoe_error_set(err, EMOE_EIO, "%s: write error: %s", path,
                            er ? strerror(er) : "short write");
        goto done;
    }
    rc = emoe_atomic_commit(&a, err);
done:
    emoe_json_out_free(&o);
    free(e);
    free(names);
    free(sorted);
    return rc;
}
