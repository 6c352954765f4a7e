/*
 * npz.c: NumPy .npz archives (numpy.savez / savez_compressed): a zip of NAME.npy
 * members, read and written through libarchive.
 *
 * Reading a regular file uses libarchive's seekable zip reader (it trusts the central
 * directory and handles Zip64) over pread() callbacks on one descriptor kept open.
 * Opening lists the members and reads each .npy header (a few hundred bytes, even of
 * deflated members); emoe_npz_read() then opens a fresh libarchive reader, skips to
 * the member and reads its data straight into the tensor, so the data is never held
 * twice.  Stored members of at least NPY_MMAP_THRESHOLD bytes whose data is native,
 * C-order and aligned in the file are mapped instead: right after
 * archive_read_next_header() the reader has consumed exactly the local file header,
 * so archive_filter_bytes(a, 0) is the offset of the member's data; the fixed 30-byte
 * local header before it is found and checked (signature, name, extra length,
 * compression 0, not encrypted) and the .npy header bytes in the mapping must equal
 * those libarchive returned.  Anything else falls back to reading.
 *
 * A stream ("-") is read once with the streamable zip reader, every member into
 * memory at open.
 *
 * Writing uses libarchive's zip writer (store or deflate; Zip64 only when a size
 * needs it) straight into the atomic writer's FILE.  Entries get a fixed time
 * (1980-01-03) and mode 0644 so equal inputs give equal files.
 */
#include "config.h"
#include "npy_internal.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_MEMBERS 10000
#define READ_BLOCK ((size_t)1 << 20)
#define ENTRY_MTIME 315705600 /* 1980-01-03 00:00:00 UTC, inside the DOS date range */

struct member {
    char *key;                  /* name without ".npy" */
    char *path;                 /* name in the zip */
    size_t index;               /* position among all zip entries */
    struct emoe_npy_info info;
    struct emoe_tensor *t;      /* stream mode: the tensor, or raw '|S' item bytes */
};

struct emoe_npz {
    char *name;
    int fd;                     /* -1 in stream mode */
    uint64_t size;
    struct emoe_buffer *map;    /* whole-file mapping, made on first use */
    struct member *m;
    size_t n, cap;
};

/* ------------------------------------------------------- libarchive glue */

struct fd_reader {
    int fd;
    int64_t pos, size;
    unsigned char *buf;
};

static la_ssize_t fdr_read(struct archive *a, void *ud, const void **out)
{
    struct fd_reader *r = ud;
    *out = r->buf;
    for (;;) {
        ssize_t k = pread(r->fd, r->buf, READ_BLOCK, (off_t)r->pos);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            archive_set_error(a, errno, "read error: %s", strerror(errno));
            return -1;
        }
        r->pos += k;
        return k;
    }
}

static la_int64_t fdr_seek(struct archive *a, void *ud, la_int64_t off, int whence)
{
    struct fd_reader *r = ud;
    int64_t base = whence == SEEK_SET ? 0 : whence == SEEK_CUR ? r->pos : r->size;
    if (off < -base || base + off < 0) {
        archive_set_error(a, EINVAL, "seek before the start of the file");
        return ARCHIVE_FATAL;
    }
    r->pos = base + off;
    return r->pos;
}

static la_int64_t fdr_skip(struct archive *a, void *ud, la_int64_t req)
{
    struct fd_reader *r = ud;
    (void)a;
    int64_t room = r->size > r->pos ? r->size - r->pos : 0;
    if (req > room)
        req = room;
    r->pos += req;
    return req;
}

static int archive_fail(struct archive *a, const char *name, struct emoe_error *err)
{
    const char *msg = archive_error_string(a);
    int e = archive_errno(a);
    return emoe_error_set(err, e == ENOMEM ? EMOE_ENOMEM : e == EIO ? EMOE_EIO : EMOE_EFORMAT,
                          "%s: %s", name, msg ? msg : "zip read error");
}

/*
 * libarchive does not recognise a zip without entries (only the 22-byte end of
 * central directory record, plus its comment), which numpy.savez writes for no
 * arrays; such a file is accepted as an empty archive.
 */
static int is_empty_zip(const unsigned char *p, size_t n)
{
    return n >= 22 && n <= 22 + 0xffff && memcmp(p, "PK\x05\x06", 4) == 0 &&
           emoe_load_le16(p + 8) == 0 && emoe_load_le16(p + 10) == 0 &&
           emoe_load_le16(p + 20) == n - 22;
}

/* A seekable libarchive reader over z->fd; r must outlive it. */
static int open_fd_archive(struct emoe_npz *z, struct fd_reader *r, struct archive **out,
                           struct emoe_error *err)
{
    *out = NULL;
    r->fd = z->fd;
    r->pos = 0;
    r->size = (int64_t)z->size;
    r->buf = malloc(READ_BLOCK);
    struct archive *a = archive_read_new();
    if (!r->buf || !a) {
        free(r->buf);
        r->buf = NULL;
        archive_read_free(a);
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", z->name);
    }
    archive_read_support_format_zip_seekable(a);
    archive_read_set_read_callback(a, fdr_read);
    archive_read_set_seek_callback(a, fdr_seek);
    archive_read_set_skip_callback(a, fdr_skip);
    archive_read_set_callback_data(a, r);
    if (archive_read_open1(a) != ARCHIVE_OK) {
        int rc = archive_fail(a, z->name, err);
        archive_read_free(a);
        free(r->buf);
        r->buf = NULL;
        return rc;
    }
    *out = a;
    return EMOE_OK;
}

static void close_fd_archive(struct archive *a, struct fd_reader *r)
{
    archive_read_free(a);
    free(r->buf);
    r->buf = NULL;
}

/* A stream reader over a FILE that keeps its first block (for is_empty_zip). */
struct file_reader {
    FILE *f;
    unsigned char *buf;
    size_t first;           /* bytes in the first block */
    uint64_t total;
};

static la_ssize_t filer_read(struct archive *a, void *ud, const void **out)
{
    struct file_reader *r = ud;
    /* the first block stays in buf[0..READ_BLOCK); later ones go after it */
    unsigned char *dst = r->total == 0 ? r->buf : r->buf + READ_BLOCK;
    size_t k = fread(dst, 1, READ_BLOCK, r->f);
    if (k == 0 && ferror(r->f)) {
        archive_set_error(a, errno, "read error: %s", strerror(errno));
        return -1;
    }
    if (r->total == 0)
        r->first = k;
    r->total += k;
    *out = dst;
    return (la_ssize_t)k;
}

/* The .npy byte source over the current libarchive entry. */
struct entry_ctx {
    struct archive *a;
    const char *name;
};

static int entry_read(void *ctx, void *buf, size_t n, size_t *got, struct emoe_error *err)
{
    struct entry_ctx *e = ctx;
    *got = 0;
    while (*got < n) {
        la_ssize_t k = archive_read_data(e->a, (char *)buf + *got, n - *got);
        if (k < 0)
            return archive_fail(e->a, e->name, err);
        if (k == 0)
            break;
        *got += (size_t)k;
    }
    return EMOE_OK;
}

/* "d.npz: member 'x.npy'" */
static void member_label(char *buf, size_t size, const char *file, const char *path)
{
    snprintf(buf, size, "%s: member '%s'", file, path);
}

/* --------------------------------------------------------------- reading */

static void free_members(struct emoe_npz *z)
{
    for (size_t i = 0; i < z->n; i++) {
        free(z->m[i].key);
        free(z->m[i].path);
        emoe_tensor_free(z->m[i].t);
    }
    free(z->m);
    z->m = NULL;
    z->n = z->cap = 0;
}

void emoe_npz_close(struct emoe_npz *z)
{
    if (!z)
        return;
    free_members(z);
    emoe_buffer_unref(z->map);
    if (z->fd >= 0)
        close(z->fd);
    free(z->name);
    free(z);
}

static struct member *find(const struct emoe_npz *z, const char *key)
{
    for (size_t i = 0; i < z->n; i++)
        if (strcmp(z->m[i].key, key) == 0)
            return &z->m[i];
    return NULL;
}

/* Record entry `path` (a .npy member) as member; checks count and duplicates. */
static int add_member(struct emoe_npz *z, const char *path, size_t index, struct member **out,
                      struct emoe_error *err)
{
    size_t len = strlen(path);
    if (z->n >= MAX_MEMBERS)
        return emoe_error_set(err, EMOE_ERANGE, "%s: more than %d members", z->name,
                              MAX_MEMBERS);
    char *key = strndup(path, len - 4);
    if (!key)
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", z->name);
    if (find(z, key)) {
        free(key);
        return emoe_error_set(err, EMOE_EFORMAT, "%s: duplicate member '%s'", z->name, path);
    }
    if (z->n == z->cap) {
        size_t cap = z->cap ? 2 * z->cap : 16;
        struct member *m = realloc(z->m, cap * sizeof *m);
        if (!m) {
            free(key);
            return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", z->name);
        }
        z->m = m;
        z->cap = cap;
    }
    struct member *m = &z->m[z->n];
    memset(m, 0, sizeof *m);
    m->key = key;
    m->path = strdup(path);
    if (!m->path) {
        free(key);
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", z->name);
    }
    m->index = index;
    z->n++;
    *out = m;
    return EMOE_OK;
}

static int is_npy_entry(struct archive_entry *e, const char **path)
{
    *path = archive_entry_pathname(e);
    size_t len = *path ? strlen(*path) : 0;
    return archive_entry_filetype(e) == AE_IFREG && len > 4 &&
           strcmp(*path + len - 4, ".npy") == 0;
}

/* The member's size, when the zip gives it, must be the header plus the data. */
static int check_entry_size(struct archive_entry *e, const struct emoe_npy_info *info,
                            const char *label, struct emoe_error *err)
{
    if (!archive_entry_size_is_set(e))
        return EMOE_OK;
    uint64_t size = (uint64_t)archive_entry_size(e);
    uint64_t want = (uint64_t)info->header_len + info->nbytes;
    if (size < want)
        return emoe_error_set(err, EMOE_EFORMAT,
                              "%s: truncated data (%" PRIu64 " of %zu bytes)", label,
                              size - info->header_len, info->nbytes);
    if (size > want)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: %" PRIu64 " unexpected bytes after the data",
                              label, size - want);
    return EMOE_OK;
}

/* Read all headers of the archive a.  Stream mode also reads every member's data. */
static int scan(struct emoe_npz *z, struct archive *a, int eager, struct emoe_error *err)
{
    struct archive_entry *e;
    unsigned char *hbuf = malloc(NPY_HEADER_BUF);
    if (!hbuf)
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", z->name);
    int rc = EMOE_OK, r;
    size_t index = 0;
    while ((r = archive_read_next_header(a, &e)) == ARCHIVE_OK || r == ARCHIVE_WARN) {
        const char *path;
        size_t idx = index++;
        if (!is_npy_entry(e, &path))
            continue;
        struct member *m = NULL;
        if ((rc = add_member(z, path, idx, &m, err)) != EMOE_OK)
            break;
        char label[600];
        member_label(label, sizeof label, z->name, path);
        struct entry_ctx ec = {a, label};
        struct npy_source src = {entry_read, &ec, label};
        if ((rc = npy_read_header(&src, hbuf, &m->info, err)) != EMOE_OK)
            break;
        if ((rc = check_entry_size(e, &m->info, label, err)) != EMOE_OK)
            break;
        if (!eager)
            continue;
        if (m->info.is_string) { /* keep the raw items; decoded on request */
            int64_t nb = (int64_t)m->info.nbytes;
            size_t got;
            if ((rc = emoe_tensor_new(EMOE_U8, 1, &nb, &m->t, err)) != EMOE_OK)
                break;
            if ((rc = entry_read(&ec, m->t->data, m->info.nbytes, &got, err)) != EMOE_OK)
                break;
            if (got < m->info.nbytes) {
                rc = emoe_error_set(err, EMOE_EFORMAT, "%s: truncated data (%zu of %zu bytes)",
                                    label, got, m->info.nbytes);
                break;
            }
        } else if ((rc = npy_read_tensor(&src, &m->info, &m->t, err)) != EMOE_OK) {
            break;
        }
        if ((rc = npy_expect_end(&src, err)) != EMOE_OK) /* also checks the CRC */
            break;
    }
    if (rc == EMOE_OK && r != ARCHIVE_EOF)
        rc = archive_fail(a, z->name, err);
    free(hbuf);
    return rc;
}

static struct emoe_npz *npz_new(const char *name, struct emoe_error *err)
{
    struct emoe_npz *z = calloc(1, sizeof *z);
    if (z)
        z->name = strdup(name);
    if (!z || !z->name) {
        free(z);
        emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", name);
        return NULL;
    }
    z->fd = -1;
    return z;
}

int emoe_npz_open_stream(FILE *f, const char *name, struct emoe_npz **out,
                         struct emoe_error *err)
{
    *out = NULL;
    struct emoe_npz *z = npz_new(name, err);
    if (!z)
        return EMOE_ENOMEM;
    struct archive *a = archive_read_new();
    if (!a) {
        emoe_npz_close(z);
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", name);
    }
    archive_read_support_format_zip_streamable(a);
    struct file_reader r = {f, malloc(2 * READ_BLOCK), 0, 0};
    int rc;
    if (!r.buf)
        rc = emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", name);
    else if (archive_read_open(a, &r, NULL, filer_read, NULL) != ARCHIVE_OK)
        rc = r.total == r.first && is_empty_zip(r.buf, r.first) ? EMOE_OK
                                                                : archive_fail(a, name, err);
    else
        rc = scan(z, a, 1, err);
    archive_read_free(a);
    free(r.buf);
    if (rc != EMOE_OK) {
        emoe_npz_close(z);
        return rc;
    }
    *out = z;
    return EMOE_OK;
}

int emoe_npz_open(const char *path, struct emoe_npz **out, struct emoe_error *err)
{
    *out = NULL;
    if (strcmp(path, "-") == 0)
        return emoe_npz_open_stream(stdin, "<stdin>", out, err);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return emoe_error_set(err, EMOE_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
        int e = S_ISDIR(st.st_mode) ? EISDIR : errno;
        close(fd);
        return emoe_error_set(err, EMOE_EIO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) { /* a pipe or device: read it as a stream */
        FILE *f = fdopen(fd, "rb");
        if (!f) {
            close(fd);
            return emoe_error_set(err, EMOE_EIO, "%s: %s", path, strerror(errno));
        }
        int rc = emoe_npz_open_stream(f, path, out, err);
        fclose(f);
        return rc;
    }
    struct emoe_npz *z = npz_new(path, err);
    if (!z) {
        close(fd);
        return EMOE_ENOMEM;
    }
    z->fd = fd;
    z->size = (uint64_t)st.st_size;
    struct fd_reader r;
    struct archive *a = NULL;
    int rc = open_fd_archive(z, &r, &a, err);
    if (rc == EMOE_OK) {
        rc = scan(z, a, 0, err);
        close_fd_archive(a, &r);
    } else if (z->size >= 22 && z->size <= 22 + 0xffff) {
        unsigned char *small = malloc((size_t)z->size);
        if (small && pread(fd, small, (size_t)z->size, 0) == (ssize_t)z->size &&
            is_empty_zip(small, (size_t)z->size))
            rc = EMOE_OK;
        free(small);
    }
    if (rc != EMOE_OK) {
        emoe_npz_close(z);
        return rc;
    }
    *out = z;
    return EMOE_OK;
}

size_t emoe_npz_count(const struct emoe_npz *z)
{
    return z->n;
}

const char *emoe_npz_name(const struct emoe_npz *z, size_t i)
{
    return i < z->n ? z->m[i].key : NULL;
}

static int lookup(const struct emoe_npz *z, const char *name, struct member **m,
                  struct emoe_error *err)
{
    *m = find(z, name);
    if (!*m)
        return emoe_error_set(err, EMOE_ENOTFOUND, "%s: member '%s.npy' not found", z->name,
                              name);
    return EMOE_OK;
}

int emoe_npz_info(const struct emoe_npz *z, const char *name, struct emoe_npy_info *info,
                  struct emoe_error *err)
{
    struct member *m;
    int rc = lookup(z, name, &m, err);
    if (rc == EMOE_OK)
        *info = m->info;
    return rc;
}

/* Position a fresh reader at member m, its .npy header read into hbuf. */
static int seek_member(struct emoe_npz *z, struct fd_reader *r, struct member *m,
                       const char *label, unsigned char *hbuf, struct archive **out,
                       int64_t *data_pos, struct emoe_error *err)
{
    struct archive *a = NULL;
    struct archive_entry *e = NULL;
    int rc = open_fd_archive(z, r, &a, err);
    if (rc != EMOE_OK)
        return rc;
    for (size_t i = 0; i <= m->index; i++) {
        int k = archive_read_next_header(a, &e);
        if (k != ARCHIVE_OK && k != ARCHIVE_WARN) {
            rc = k == ARCHIVE_EOF ? emoe_error_set(err, EMOE_EFORMAT, "%s: member vanished",
                                                   label)
                                  : archive_fail(a, label, err);
            goto fail;
        }
    }
    const char *path = archive_entry_pathname(e);
    if (!path || strcmp(path, m->path) != 0) {
        rc = emoe_error_set(err, EMOE_EFORMAT, "%s: the archive changed while open", label);
        goto fail;
    }
    *data_pos = archive_filter_bytes(a, 0);
    struct entry_ctx ec = {a, label};
    struct npy_source src = {entry_read, &ec, label};
    struct emoe_npy_info info;
    if ((rc = npy_read_header(&src, hbuf, &info, err)) != EMOE_OK)
        goto fail;
    if (info.header_len != m->info.header_len || info.nbytes != m->info.nbytes) {
        rc = emoe_error_set(err, EMOE_EFORMAT, "%s: the archive changed while open", label);
        goto fail;
    }
    *out = a;
    return EMOE_OK;
fail:
    close_fd_archive(a, r);
    return rc;
}

/*
 * The stored member whose data starts at file offset d: find its local file header
 * (30 bytes, name, extra field, then the data), check it and the .npy header bytes,
 * and make a view.  Returns 1 with *out set, 0 when the member cannot be mapped, or
 * an error.
 */
static int try_map(struct emoe_npz *z, const struct member *m, const unsigned char *hbuf,
                   int64_t d, const char *label, struct emoe_tensor **out,
                   struct emoe_error *err)
{
    const struct emoe_npy_info *info = &m->info;
    size_t n = strlen(m->path), end;
    if (info->nbytes < NPY_MMAP_THRESHOLD || !npy_info_is_native(info) || info->is_string ||
        d < 0 || (uint64_t)d > z->size || n > 0xffff)
        return 0;
    if (emoe_size_add(&end, (size_t)d, info->header_len) != EMOE_OK ||
        emoe_size_add(&end, end, info->nbytes) != EMOE_OK || end > z->size)
        return 0;
    if (!z->map) {
        int rc = emoe_buffer_map_fd(z->fd, z->name, &z->map, err);
        if (rc != EMOE_OK)
            return rc;
    }
    const unsigned char *base = z->map->base;
    if (end > z->map->size)
        return 0;
    const unsigned char *lh = NULL;
    for (size_t extra = 0; extra <= 0xffff; extra++) {
        size_t back = 30 + n + extra;
        if (back > (size_t)d)
            break;
        const unsigned char *p = base + (size_t)d - back;
        if (memcmp(p, "PK\x03\x04", 4) == 0 && emoe_load_le16(p + 26) == n &&
            emoe_load_le16(p + 28) == extra && memcmp(p + 30, m->path, n) == 0) {
            lh = p;
            break;
        }
    }
    if (!lh || emoe_load_le16(lh + 8) != 0 || (emoe_load_le16(lh + 6) & 1))
        return 0; /* not found, compressed or encrypted */
    if (memcmp(base + d, hbuf, info->header_len) != 0)
        return 0;
    unsigned char *data = (unsigned char *)base + d + info->header_len;
    if ((uintptr_t)data % info->itemsize != 0)
        return 0;
    int rc = emoe_tensor_view(z->map, data, info->dtype, info->ndim, info->shape, out, err);
    if (rc != EMOE_OK) {
        emoe_error_prefix(err, label);
        return rc;
    }
    return 1;
}

/* Shared by emoe_npz_read and emoe_npz_read_strings. */
static int read_member(struct emoe_npz *z, const char *name, struct emoe_tensor **out,
                       char ***strs, size_t *ns, struct emoe_error *err)
{
    struct member *m;
    int rc = lookup(z, name, &m, err);
    if (rc != EMOE_OK)
        return rc;
    char label[600];
    member_label(label, sizeof label, z->name, m->path);
    if (z->fd < 0) { /* stream mode: already in memory */
        if (strs) {
            if (!m->info.is_string)
                return emoe_error_set(err, EMOE_EFORMAT,
                                      "%s: dtype %s is not a '|S<n>' string array", label,
                                      emoe_dtype_name(m->info.dtype));
            struct npy_mem mem = {m->t->data, m->t->nbytes, 0};
            struct npy_source src = {npy_mem_read, &mem, label};
            return npy_read_strings(&src, &m->info, strs, ns, err);
        }
        if (m->info.is_string)
            return emoe_error_set(err, EMOE_EUNSUPPORTED,
                                  "%s: '|S%zu' is a string array, not a numeric tensor", label,
                                  m->info.itemsize);
        rc = emoe_tensor_view(m->t->buf, m->t->data, m->t->dtype, m->t->ndim, m->t->shape, out,
                              err);
        return rc;
    }
    unsigned char *hbuf = malloc(NPY_HEADER_BUF);
    if (!hbuf)
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", label);
    struct fd_reader r;
    struct archive *a = NULL;
    int64_t d = -1;
    if ((rc = seek_member(z, &r, m, label, hbuf, &a, &d, err)) != EMOE_OK) {
        free(hbuf);
        return rc;
    }
    struct entry_ctx ec = {a, label};
    struct npy_source src = {entry_read, &ec, label};
    int mapped = 0;
    if (strs) {
        rc = npy_read_strings(&src, &m->info, strs, ns, err);
    } else {
        rc = try_map(z, m, hbuf, d, label, out, err);
        if (rc == 1) {
            mapped = 1;
            rc = EMOE_OK;
        } else if (rc == 0) {
            rc = npy_read_tensor(&src, &m->info, out, err);
        }
    }
    if (rc == EMOE_OK && !mapped && (rc = npy_expect_end(&src, err)) != EMOE_OK) { /* the CRC is checked at the end */
        if (strs) {
            emoe_npy_strings_free(*strs);
            *strs = NULL;
            *ns = 0;
        } else {
            emoe_tensor_free(*out);
            *out = NULL;
        }
    }
    close_fd_archive(a, &r);
    free(hbuf);
    return rc;
}

int emoe_npz_read(struct emoe_npz *z, const char *name, struct emoe_tensor **out,
                  struct emoe_error *err)
{
    *out = NULL;
    return read_member(z, name, out, NULL, NULL, err);
}

int emoe_npz_read_strings(struct emoe_npz *z, const char *name, char ***out, size_t *n,
                          struct emoe_error *err)
{
    *out = NULL;
    *n = 0;
    return read_member(z, name, NULL, out, n, err);
}

/* --------------------------------------------------------------- writing */

struct emoe_npz_writer {
    struct emoe_atomic at;
    struct archive *a;
    char *name;                 /* for messages */
    char **names;
    size_t n, cap;
    int failed;
};

static void writer_free(struct emoe_npz_writer *w)
{
    for (size_t i = 0; i < w->n; i++)
        free(w->names[i]);
    free(w->names);
    free(w->name);
    free(w);
}

int emoe_npz_writer_open(const char *path, enum emoe_npz_compression c,
                         struct emoe_npz_writer **out, struct emoe_error *err)
{
    *out = NULL;
    const char *name = strcmp(path, "-") == 0 ? "<stdout>" : path;
    if (c != EMOE_NPZ_STORED && c != EMOE_NPZ_DEFLATED)
        return emoe_error_set(err, EMOE_EINVAL, "%s: unknown compression %d", name, (int)c);
    struct emoe_npz_writer *w = calloc(1, sizeof *w);
    if (w)
        w->name = strdup(name);
    if (!w || !w->name) {
        free(w);
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", name);
    }
    int rc = emoe_atomic_open(&w->at, path, err);
    if (rc != EMOE_OK) {
        writer_free(w);
        return rc;
    }
    w->a = archive_write_new();
    if (!w->a) {
        emoe_atomic_abort(&w->at);
        writer_free(w);
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", name);
    }
    if (archive_write_set_format_zip(w->a) != ARCHIVE_OK ||
        archive_write_set_format_option(w->a, "zip", "compression",
                                        c == EMOE_NPZ_STORED ? "store" : "deflate") !=
            ARCHIVE_OK ||
        archive_write_set_bytes_per_block(w->a, 0) != ARCHIVE_OK ||
        archive_write_open_FILE(w->a, w->at.f) != ARCHIVE_OK) {
        rc = emoe_error_set(err, EMOE_EIO, "%s: %s", name, archive_error_string(w->a));
        archive_write_free(w->a);
        emoe_atomic_abort(&w->at);
        writer_free(w);
        return rc;
    }
    *out = w;
    return EMOE_OK;
}

/* Write member NAME.npy: header bytes then data bytes. */
static int add_entry(struct emoe_npz_writer *w, const char *name, const void *head, size_t hl,
                     const void *data, size_t nbytes, struct emoe_error *err)
{
    char label[600];
    snprintf(label, sizeof label, "%s: member '%s.npy'", w->name, name);
    if (w->failed)
        return emoe_error_set(err, EMOE_EINVAL, "%s: an earlier member failed", label);
    if (!name[0] || strlen(name) > 1000)
        return emoe_error_set(err, EMOE_EINVAL, "%s: invalid member name", label);
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->names[i], name) == 0)
            return emoe_error_set(err, EMOE_EINVAL, "%s: duplicate member '%s'", w->name, name);
    size_t total;
    if (emoe_size_add(&total, hl, nbytes) != EMOE_OK || total > INT64_MAX)
        return emoe_error_set(err, EMOE_ERANGE, "%s: too large", label);
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 16;
        char **v = realloc(w->names, cap * sizeof *v);
        if (!v)
            return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", label);
        w->names = v;
        w->cap = cap;
    }
    char *copy = strdup(name);
    char *path = malloc(strlen(name) + 5);
    struct archive_entry *e = archive_entry_new();
    if (!copy || !path || !e) {
        free(copy);
        free(path);
        archive_entry_free(e);
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", label);
    }
    w->names[w->n++] = copy;
    sprintf(path, "%s.npy", name);
    archive_entry_set_pathname(e, path);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_size(e, (la_int64_t)total);
    archive_entry_set_mtime(e, ENTRY_MTIME, 0);
    free(path);
    int rc = EMOE_OK;
    if (archive_write_header(w->a, e) < ARCHIVE_WARN) {
        rc = emoe_error_set(err, EMOE_EIO, "%s: %s", label, archive_error_string(w->a));
    } else {
        const void *parts[2] = {head, data};
        size_t sizes[2] = {hl, nbytes};
        for (int k = 0; k < 2 && rc == EMOE_OK; k++) {
            const char *p = parts[k];
            size_t left = sizes[k];
            while (left > 0) {
                size_t chunk = left < ((size_t)1 << 30) ? left : (size_t)1 << 30;
                la_ssize_t put = archive_write_data(w->a, p, chunk);
                if (put <= 0) {
                    rc = emoe_error_set(err, EMOE_EIO, "%s: %s", label,
                                        archive_error_string(w->a) ? archive_error_string(w->a)
                                                                   : "write error");
                    break;
                }
                p += put;
                left -= (size_t)put;
            }
        }
        if (rc == EMOE_OK && archive_write_finish_entry(w->a) < ARCHIVE_WARN)
            rc = emoe_error_set(err, EMOE_EIO, "%s: %s", label, archive_error_string(w->a));
    }
    archive_entry_free(e);
    if (rc != EMOE_OK)
        w->failed = 1;
    return rc;
}

int emoe_npz_writer_add(struct emoe_npz_writer *w, const char *name,
                        const struct emoe_tensor *t, struct emoe_error *err)
{
    char hdr[1024];
    size_t hl = emoe_npy_header(t, hdr, sizeof hdr);
    if (hl == 0 || hl > sizeof hdr)
        return emoe_error_set(err, EMOE_EUNSUPPORTED,
                              "%s: member '%s.npy': dtype %s has no numpy equivalent", w->name,
                              name, emoe_dtype_name(t->dtype));
    return add_entry(w, name, hdr, hl, t->data, t->nbytes, err);
}

int emoe_npz_writer_add_strings(struct emoe_npz_writer *w, const char *name,
                                const char *const *strs, size_t n, struct emoe_error *err)
{
    unsigned char *bytes;
    size_t size;
    char label[600];
    snprintf(label, sizeof label, "%s: member '%s.npy'", w->name, name);
    int rc = npy_strings_encode(strs, n, label, &bytes, &size, err);
    if (rc != EMOE_OK)
        return rc;
    rc = add_entry(w, name, bytes, size, NULL, 0, err);
    free(bytes);
    return rc;
}

int emoe_npz_writer_commit(struct emoe_npz_writer *w, struct emoe_error *err)
{
    if (!w)
        return emoe_error_set(err, EMOE_EINVAL, "no npz writer");
    int rc = EMOE_OK;
    if (w->failed)
        rc = emoe_error_set(err, EMOE_EINVAL, "%s: not written: a member failed", w->name);
    else if (archive_write_close(w->a) != ARCHIVE_OK)
        rc = emoe_error_set(err, EMOE_EIO, "%s: %s", w->name, archive_error_string(w->a));
    archive_write_free(w->a);
    if (rc == EMOE_OK)
        rc = emoe_atomic_commit(&w->at, err);
    else
        emoe_atomic_abort(&w->at);
    writer_free(w);
    return rc;
}

void emoe_npz_writer_abort(struct emoe_npz_writer *w)
{
    if (!w)
        return;
    archive_write_free(w->a);
    emoe_atomic_abort(&w->at);
    writer_free(w);
}
