/*
 * prep_imagefolder.c: JPEG datasets laid out one folder per class (torchvision's
 * ImageFolder: classes sorted by name give labels 0..K-1), from a folder, a .tar,
 * .tar.gz or .zip (streamed through libarchive, never held whole), and the ImageNet
 * training tar (a tar of per-class tars, read nested without extracting).
 *
 * Members are read in batches; each batch is decoded in parallel straight into its
 * slots of the output tensor while the next one is read.  With several threads the
 * reading runs ahead for as long as the other threads have images to decode, so a
 * batch holds what was read meanwhile (up to BATCH_BYTES): the archive's members that
 * are skipped (another split, the part after the last wanted member) are listed while
 * the images before them are decoded, not afterwards.  The final order is (class,
 * path), so it depends on neither the archive order nor the thread count.
 */
#include "config.h"
#include "data.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The first batch of a source is read alone (nothing to decode yet), so it is small.
 * On one thread each next one may hold twice as many, up to SERIAL_BATCH_ITEMS; on
 * several, as many as are read while the current one is decoded (at least
 * FIRST_BATCH_ITEMS unless the source ends), up to MAX_BATCH_ITEMS.  Either way a
 * batch stops at BATCH_BYTES of JPEG data (the member that passes it included). */
#define FIRST_BATCH_ITEMS 8
#define SERIAL_BATCH_ITEMS 256
#define MAX_BATCH_ITEMS ((size_t)1 << 16)
#define BATCH_BYTES ((size_t)4 << 20)
#define MAX_JPEG_BYTES ((size_t)256 << 20)

struct member {
    char *key;              /* path inside the source */
    const char *source;     /* for messages: "source: member 'key'" (made only when needed) */
    size_t off, size;       /* the JPEG: size bytes at the batch's data + off */
    size_t slot;
    int rc;
    struct emoe_error *err; /* when rc is not EMOE_OK (NULL: out of memory) */
};

/* The members' bytes follow each other in one mapping, kept from batch to batch, so
 * reading ahead costs no allocation per member and no page faults after the first
 * batches.  (Page faults are dear on a virtual machine: with the bytes in malloc'd
 * buffers grown by realloc, its copies and faults took about an eighth of the CPU
 * samples of a 2-thread read of the CIFAR-10 zip, batches of 8 MiB.) */
struct decode_ref {
    size_t size, i;         /* a member's JPEG size and index */
};

struct batch {
    struct member *m;
    size_t nm, cap;
    struct prep_bytes data;
    size_t limit;           /* items this fill may add */
    struct decode_ref *order; /* decode order (cap entries): m[order[0].i] first */
};

struct nested {
    struct archive *outer;
    unsigned char buf[1 << 16];
};

/* A source being read, one batch at a time (pull style, so the next batch can be read
 * while the current one is decoded). */
struct iter {
    const char *source;
    int is_folder, eof;
    struct archive *a;          /* the archive */
    struct archive *in;         /* a nested tar being read, or NULL */
    struct nested *nst;
    char prefix[4096];          /* keys of the nested tar's members start with this */
    char **paths;               /* folder: JPEG and text files, sorted */
    size_t npaths, pi;
};

struct feeder {
    const struct emoe_prep_options *o;
    int side, channels;         /* output tile; side 0 until the first image (size 0) */
    int ndec;
    struct emoe_jpeg **dec;
    atomic_flag *busy;
    struct collector col;
    int col_ready;
    struct batch b[2];
    int cur;                    /* b[cur] is decoded while b[!cur] is filled */
    int ahead;                  /* several threads: fill for as long as they decode */
    atomic_size_t decoded;      /* members of b[cur] decoded so far */
    size_t decoding;            /* the fill may stop once decoded reaches this */
    struct iter *it;            /* the source being read */
    int fill_rc;
    struct emoe_error fill_err;
    size_t skipped;
    size_t flat;                /* JPEGs of the current source outside any class folder */
    char *subdir;               /* normalised (no leading ./, no trailing /), or NULL */
    const char *split_dir;      /* the folder named so is the root (--split), or NULL */
    int tiny;                   /* tiny-imagenet: wnids.txt, words.txt, val annotations */
    unsigned char *text[3];     /* wnids.txt, words.txt, val_annotations.txt */
    size_t text_len[3];
};

static const char *const tiny_files[3] = {"wnids.txt", "words.txt", "val_annotations.txt"};
#define MAX_TEXT ((size_t)64 << 20)

static int tiny_text_index(const struct feeder *f, const char *key)
{
    if (!f->tiny)
        return -1;
    const char *b = prep_basename(key);
    for (int i = 0; i < 3; i++)
        if (!strcmp(b, tiny_files[i]))
            return i;
    return -1;
}

static int is_jpeg(const char *name)
{
    return prep_has_suffix(name, ".jpg") || prep_has_suffix(name, ".jpeg");
}

/* Strip "./" and leading "/" so keys compare. */
static const char *norm_key(const char *k)
{
    while (k[0] == '.' && k[1] == '/')
        k += 2;
    while (k[0] == '/')
        k++;
    return k;
}

/* The part of key after its root folder (where the class folders are), or NULL when
 * the key is outside the selection.  Without subdir or split the root is found at
 * the end (common prefix), so everything is accepted. */
static const char *after_root(const struct feeder *f, const char *key)
{
    if (f->subdir) {
        size_t n = strlen(f->subdir);
        if (strncmp(key, f->subdir, n) == 0 && key[n] == '/')
            return key + n + 1;
        return NULL;
    }
    if (f->split_dir) {
        size_t n = strlen(f->split_dir);
        for (const char *p = key; p;) {
            if (strncmp(p, f->split_dir, n) == 0 && p[n] == '/')
                return p + n + 1;
            p = strchr(p, '/');
            if (p)
                p++;
        }
        return NULL;
    }
    return key;
}

/* 1: key is a JPEG the selection wants; -1: a JPEG of the selection outside any class
 * folder (not wanted); 0: anything else. */
static int classify(const struct feeder *f, const char *key)
{
    if (!is_jpeg(key))
        return 0;
    if (f->o->label_file && !f->subdir && !f->split_dir)
        return 1; /* flat validation images: labels from the file */
    const char *r = after_root(f, key);
    return !r ? 0 : strchr(r, '/') ? 1 : -1; /* a class folder, then the file */
}

static int wants(struct feeder *f, const char *key)
{
    int c = classify(f, key);
    if (c < 0)
        f->flat++; /* no class folder: for the message when nothing else is found */
    return c > 0;
}

static void batch_clear(struct batch *b)
{
    for (size_t i = 0; i < b->nm; i++) {
        free(b->m[i].key);
        free(b->m[i].err);
    }
    b->nm = 0;
    b->data.len = 0;
}

static void batch_free(struct batch *b)
{
    batch_clear(b);
    free(b->m);
    free(b->order);
    prep_bytes_free(&b->data);
    memset(b, 0, sizeof *b);
}

/* Whether the fill of b stops before its next member: b is full, or (reading ahead)
 * the threads decoding the current batch are done and b has enough to give them. */
static int batch_full(struct feeder *f, const struct batch *b)
{
    if (b->nm >= b->limit || b->data.len >= BATCH_BYTES)
        return 1;
    return f->ahead && b->nm >= FIRST_BATCH_ITEMS &&
           atomic_load_explicit(&f->decoded, memory_order_relaxed) >= f->decoding;
}

/* Add a member whose bytes were just appended to b's data (at off, size bytes). */
static int batch_add(struct batch *b, const char *source, const char *key, size_t off,
                     size_t size, struct emoe_error *err)
{
    if (b->nm == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 64;
        struct member *m = realloc(b->m, cap * sizeof *m);
        if (m)
            b->m = m;
        struct decode_ref *order = m ? realloc(b->order, cap * sizeof *order) : NULL;
        if (!order)
            return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        b->order = order;
        b->cap = cap;
    }
    char *k = strdup(key);
    if (!k)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    struct member *m = &b->m[b->nm++];
    memset(m, 0, sizeof *m);
    m->key = k;
    m->source = source;
    m->off = off;
    m->size = size;
    return EMOE_OK;
}

/* A file's bytes appended to b's data (folders). */
static int batch_append_file(struct batch *b, const char *path, struct emoe_error *err)
{
    unsigned char *data;
    size_t size;
    int rc = prep_read_file(path, MAX_JPEG_BYTES, &data, &size, err);
    if (rc != EMOE_OK)
        return rc;
    rc = prep_bytes_reserve(&b->data, size, err);
    if (rc == EMOE_OK && size) {
        memcpy(b->data.p + b->data.len, data, size);
        b->data.len += size;
    }
    free(data);
    return rc;
}

/* ----------------------------------------------------------------- sources */

static la_ssize_t nested_read(struct archive *inner, void *ud, const void **buf)
{
    struct nested *n = ud;
    la_ssize_t r = archive_read_data(n->outer, n->buf, sizeof n->buf);
    if (r < 0) {
        archive_set_error(inner, EIO, "%s", archive_error_string(n->outer)
                                                ? archive_error_string(n->outer)
                                                : "read error");
        return -1;
    }
    *buf = n->buf;
    return r;
}

static void iter_close_inner(struct iter *it)
{
    if (it->in)
        archive_read_free(it->in);
    it->in = NULL;
    free(it->nst);
    it->nst = NULL;
}

static void iter_free(struct iter *it)
{
    if (!it)
        return;
    iter_close_inner(it);
    if (it->a)
        archive_read_free(it->a);
    prep_free_strings(it->paths, it->npaths);
    free(it);
}

/* A member that is itself a tar (the ImageNet training archive): its JPEGs get keys
 * "<name without .tar>/<inner path>". */
static int open_nested(struct iter *it, const char *name, struct emoe_error *err)
{
    it->nst = malloc(sizeof *it->nst);
    it->in = archive_read_new();
    if (!it->nst || !it->in) {
        iter_close_inner(it);
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    }
    it->nst->outer = it->a;
    archive_read_support_filter_all(it->in);
    archive_read_support_format_all(it->in);
    const char *b = prep_basename(name);
    snprintf(it->prefix, sizeof it->prefix, "%.*s/", (int)(strlen(b) - 4), b);
    if (archive_read_open(it->in, it->nst, NULL, nested_read, NULL) != ARCHIVE_OK) {
        int rc = emoe_error_set(err, EMOE_EFORMAT, "%s: member '%s': %s", it->source, name,
                                archive_error_string(it->in) ? archive_error_string(it->in)
                                                             : "not a tar");
        iter_close_inner(it);
        return rc;
    }
    return EMOE_OK;
}

/* Read members into b until it is full or the source ends.  Runs alone (it may run
 * while another batch is decoded; it touches neither the collector nor the decoders). */
static int iter_fill_names(struct feeder *f, struct iter *it, struct batch *b,
                           struct emoe_error *err);

/* The order in which b's members are decoded: the largest JPEG first when they are
 * large (photos), so that a step's last decodes are its shortest and the threads reach
 * its end together, not one of them waiting for the other's big photo.  Small members
 * (CIFAR's 1 KiB) keep archive order: they end a step together anyway, and sorting
 * thousands of them would cost more than it saves.  Only the decoding follows this
 * order: slots, results and warnings stay in member order. */
#define SORT_MIN_BYTES ((size_t)16 << 10) /* mean member size from which b is sorted */

static int cmp_larger(const void *x, const void *y)
{
    const struct decode_ref *a = x, *b = y;
    if (a->size != b->size)
        return a->size < b->size ? 1 : -1;
    return a->i < b->i ? -1 : a->i > b->i;
}

static void batch_order(struct batch *b)
{
    for (size_t i = 0; i < b->nm; i++)
        b->order[i] = (struct decode_ref){b->m[i].size, i};
    if (b->nm >= 2 && b->data.len / b->nm >= SORT_MIN_BYTES)
        qsort(b->order, b->nm, sizeof *b->order, cmp_larger);
}

static int iter_fill(struct feeder *f, struct iter *it, struct batch *b, struct emoe_error *err)
{
    locale_t old = prep_utf8_enter(); /* on the thread that runs the fill */
    int rc = iter_fill_names(f, it, b, err);
    prep_utf8_leave(old);
    batch_order(b);
    return rc;
}

static int iter_fill_names(struct feeder *f, struct iter *it, struct batch *b,
                           struct emoe_error *err)
{
    int rc = EMOE_OK;
    char key[4096];
    while (!it->eof && !batch_full(f, b)) {
        if (it->is_folder) {
            if (it->pi == it->npaths) {
                it->eof = 1;
                break;
            }
            const char *rel = it->paths[it->pi++];
            char full[8200];
            snprintf(full, sizeof full, "%s/%s", it->source, rel);
            int ti = tiny_text_index(f, rel);
            if (ti >= 0) {
                if (!f->text[ti])
                    rc = prep_read_file(full, MAX_TEXT, &f->text[ti], &f->text_len[ti], err);
                if (rc != EMOE_OK)
                    return rc;
                continue;
            }
            if (!wants(f, rel))
                continue;
            size_t off = b->data.len;
            rc = batch_append_file(b, full, err);
            if (rc == EMOE_OK)
                rc = batch_add(b, it->source, rel, off, b->data.len - off, err);
            if (rc != EMOE_OK)
                return rc;
            continue;
        }
        struct archive *a = it->in ? it->in : it->a;
        struct archive_entry *e;
        int r = archive_read_next_header(a, &e);
        if (r == ARCHIVE_EOF) {
            if (it->in) {
                iter_close_inner(it);
                continue;
            }
            it->eof = 1;
            break;
        }
        if (r != ARCHIVE_OK && r != ARCHIVE_WARN)
            return prep_archive_error(a, it->source, err);
        const char *name = archive_entry_pathname(e);
        if (!name || archive_entry_filetype(e) != AE_IFREG || prep_skipped_name(name))
            continue;
        if (!it->in && prep_has_suffix(name, ".tar")) {
            rc = open_nested(it, name, err);
            if (rc != EMOE_OK)
                return rc;
            continue;
        }
        /* key = prefix + name (snprintf was a visible share of listing a zip) */
        const char *nk = norm_key(name);
        size_t pl = it->in ? strlen(it->prefix) : 0, nl = strlen(nk);
        if (nl >= sizeof key - pl)
            continue;
        memcpy(key, it->prefix, pl);
        memcpy(key + pl, nk, nl + 1);
        int ti = tiny_text_index(f, key);
        if (ti >= 0 && !f->text[ti]) {
            rc = prep_archive_read_member(a, it->source, key, -1, MAX_TEXT, &f->text[ti],
                                          &f->text_len[ti], err);
            if (rc != EMOE_OK)
                return rc;
            continue;
        }
        if (!wants(f, key))
            continue;
        size_t off = b->data.len;
        rc = prep_archive_append_member(a, it->source, key,
                                        archive_entry_size_is_set(e) ? archive_entry_size(e) : -1,
                                        MAX_JPEG_BYTES, &b->data, err);
        if (rc == EMOE_OK)
            rc = batch_add(b, it->source, key, off, b->data.len - off, err);
        if (rc != EMOE_OK)
            return rc;
    }
    return EMOE_OK;
}

/* Folder walk: relative paths of JPEGs (and tiny-imagenet's text files). */
struct paths {
    char **v;
    size_t n, cap;
    int tiny;
};

static int walk(const char *root, const char *rel, struct paths *ps, int depth,
                struct emoe_error *err)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s%s%s", root, rel[0] ? "/" : "", rel);
    if (depth > 64)
        return emoe_error_set(err, EMOE_ERANGE, "%s: folders nested too deep", dir);
    DIR *d = opendir(dir);
    if (!d)
        return emoe_error_set(err, errno == ENOENT ? EMOE_ENOTFOUND : EMOE_EIO, "%s: %s", dir,
                              strerror(errno));
    struct dirent *de;
    int rc = EMOE_OK;
    while (rc == EMOE_OK && (de = readdir(d))) {
        if (de->d_name[0] == '.' || prep_skipped_name(de->d_name))
            continue; /* also "." and ".." */
        char sub[4096], full[8200];
        if ((size_t)snprintf(sub, sizeof sub, "%s%s%s", rel, rel[0] ? "/" : "", de->d_name) >=
            sizeof sub)
            continue;
        snprintf(full, sizeof full, "%s/%s", root, sub);
        struct stat st;
        if (stat(full, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            rc = walk(root, sub, ps, depth + 1, err);
        } else if (S_ISREG(st.st_mode) && (is_jpeg(sub) || (ps->tiny &&
                   (!strcmp(de->d_name, tiny_files[0]) || !strcmp(de->d_name, tiny_files[1]) ||
                    !strcmp(de->d_name, tiny_files[2]))))) {
            if (ps->n == ps->cap) {
                size_t cap = ps->cap ? ps->cap * 2 : 1024;
                char **v = realloc(ps->v, cap * sizeof *v);
                if (!v) {
                    rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
                    break;
                }
                ps->v = v;
                ps->cap = cap;
            }
            if (!(ps->v[ps->n] = strdup(sub)))
                rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
            else
                ps->n++;
        }
    }
    closedir(d);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* For prep_archive_open_selected: whether the fill below would keep a top-level member
 * of this name (a JPEG of the selection, a tiny-imagenet text file, a nested tar). */
static int member_needed(void *ctx, const char *name)
{
    const struct feeder *f = ctx;
    size_t n = strlen(name);
    if (n == 0 || name[n - 1] == '/' || prep_skipped_name(name))
        return 0;
    if (prep_has_suffix(name, ".tar"))
        return 2;
    const char *key = norm_key(name);
    if (tiny_text_index(f, key) >= 0)
        return 2;
    return classify(f, key) > 0;
}

static int iter_open(struct feeder *f, const char *path, struct iter **out,
                     struct emoe_error *err)
{
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0)
        return emoe_error_set(err, errno == ENOENT ? EMOE_ENOTFOUND : EMOE_EIO, "%s: %s", path,
                              strerror(errno));
    struct iter *it = calloc(1, sizeof *it);
    if (!it)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    it->source = path;
    int rc;
    if (S_ISDIR(st.st_mode)) {
        struct paths ps = {0};
        ps.tiny = f->tiny;
        it->is_folder = 1;
        rc = walk(path, f->subdir ? f->subdir : "", &ps, 0, err);
        it->paths = ps.v;
        it->npaths = ps.n;
        if (rc == EMOE_OK && it->npaths > 0)
            qsort(it->paths, it->npaths, sizeof *it->paths, cmp_str);
    } else {
        /* with a selection, a zip is read only where its wanted members are */
        rc = prep_archive_open_selected(path, f->subdir || f->split_dir ? member_needed : NULL,
                                        f, &it->a, err);
    }
    if (rc != EMOE_OK) {
        iter_free(it);
        return rc;
    }
    *out = it;
    return EMOE_OK;
}

/* ------------------------------------------------------------ decoding */

/* "source: member 'key'" (for messages). */
static void member_where(const struct member *m, char *buf, size_t n)
{
    snprintf(buf, n, "%s: member '%s'", m->source, m->key);
}

/* Native size (--size 0): every image square and of the first one's size; the images
 * after the first are checked by their decode. */
static void decode_member(struct feeder *f, struct member *m)
{
    int d = 0;
    for (;; d = (d + 1) % f->ndec)
        if (!atomic_flag_test_and_set(&f->busy[d]))
            break;
    struct emoe_error e = {0};
    m->rc = emoe_jpeg_decode_square(f->dec[d], f->b[f->cur].data.p + m->off, m->size, NULL,
                                    f->channels, f->side, collector_slot(&f->col, m->slot), &e);
    int w = 0, h = 0;
    if (m->rc == EMOE_OK && f->o->size == 0)
        prep_jpeg_image_size(f->dec[d], &w, &h);
    atomic_flag_clear(&f->busy[d]);
    if (m->rc == EMOE_OK && f->o->size == 0 && (w != f->side || h != f->side))
        m->rc = emoe_error_set(&e, EMOE_EINVAL, "image is %dx%d, not %dx%d like the "
                               "first; give a size", w, h, f->side, f->side);
    if (m->rc != EMOE_OK) {
        char where[4200];
        member_where(m, where, sizeof where);
        emoe_error_prefix(&e, where);
        if ((m->err = malloc(sizeof *m->err)))
            *m->err = e;
    }
}

/* Item 0 reads the next batch (when there is a source left); items 1.. decode. */
static void work_item(void *ctx, size_t i)
{
    struct feeder *f = ctx;
    if (i == 0) {
        struct batch *nb = &f->b[!f->cur];
        size_t lim = 2 * f->b[f->cur].limit;
        nb->limit = f->ahead ? MAX_BATCH_ITEMS : lim < SERIAL_BATCH_ITEMS ? lim
                                                                          : SERIAL_BATCH_ITEMS;
        if (f->it && !f->it->eof && f->fill_rc == EMOE_OK)
            f->fill_rc = iter_fill(f, f->it, nb, &f->fill_err);
        return;
    }
    struct batch *b = &f->b[f->cur];
    decode_member(f, &b->m[b->order[i - 1].i]);
    atomic_fetch_add_explicit(&f->decoded, 1, memory_order_relaxed);
}

/* Native size (--size 0): the first readable image gives the (square) side. */
static int find_native_side(struct feeder *f, struct member *m, struct emoe_error *err)
{
    struct emoe_jpeg_info info;
    struct emoe_error e2 = {0};
    const unsigned char *jpeg = f->b[f->cur].data.p + m->off;
    if (emoe_jpeg_read_info(f->dec[0], jpeg, m->size, NULL, &info, &e2) != EMOE_OK)
        return EMOE_OK; /* corrupt: handled by the decode */
    if (info.width != info.height) {
        char where[4200];
        member_where(m, where, sizeof where);
        return emoe_error_set(err, EMOE_EINVAL, "%s: image is %dx%d, not square; give a size",
                              where, info.width, info.height);
    }
    f->side = info.width;
    return EMOE_OK;
}

/* Decode b[cur] into its slots while b[!cur] is filled from f->it; then record the
 * results in member order (warnings in a fixed order). */
static int step(struct feeder *f, struct emoe_error *err)
{
    struct batch *b = &f->b[f->cur];
    int rc = EMOE_OK;
    if (f->o->size == 0)
        for (size_t i = 0; i < b->nm && rc == EMOE_OK && f->side == 0; i++)
            rc = find_native_side(f, &b->m[i], err);
    if (rc == EMOE_OK && !f->col_ready && b->nm > 0) {
        int64_t dims[3] = {f->side, f->side, f->channels};
        rc = collector_init(&f->col, EMOE_U8, 3, dims, err);
        f->col_ready = rc == EMOE_OK;
    }
    size_t first = 0;
    if (rc == EMOE_OK && b->nm > 0)
        rc = collector_reserve(&f->col, b->nm, &first, err);
    if (rc != EMOE_OK)
        return rc;
    for (size_t i = 0; i < b->nm; i++)
        b->m[i].slot = first + i;
    atomic_store(&f->decoded, 0);
    f->decoding = b->nm;
    emoe_parallel_for(b->nm + 1, work_item, f);
    for (size_t i = 0; i < b->nm && rc == EMOE_OK; i++) {
        struct member *m = &b->m[i];
        if (m->rc == EMOE_OK) {
            rc = collector_add_key(&f->col, m->key, m->slot, NULL, err);
            m->key = NULL;
        } else if (m->rc == EMOE_EFORMAT && !f->o->strict) {
            /* kept as a dropped item: its folder still names a class, so the labels
             * of the other classes do not depend on which images decoded */
            struct prep_item *it = NULL;
            rc = collector_add_key(&f->col, m->key, m->slot, &it, err);
            m->key = NULL;
            if (it)
                it->bad = 1;
            f->skipped++;
            if (f->o->warn)
                f->o->warn(f->o->ctx, m->err ? m->err->msg : "out of memory");
        } else if (m->err) {
            if (err)
                *err = *m->err;
            rc = m->rc;
        } else {
            rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        }
    }
    batch_clear(b);
    if (rc == EMOE_OK && f->fill_rc != EMOE_OK) {
        rc = f->fill_rc;
        if (err)
            *err = f->fill_err;
    }
    if (rc == EMOE_OK && f->o->progress && f->col_ready)
        f->o->progress(f->o->ctx, f->col.nitems, 0);
    f->cur = !f->cur;
    return rc;
}

/* Read one source to its end, decoding as it goes. */
static int read_source(struct feeder *f, const char *path, struct emoe_error *err)
{
    int rc = iter_open(f, path, &f->it, err);
    if (rc != EMOE_OK)
        return rc;
    f->fill_rc = EMOE_OK;
    /* the first batch alone, then each step decodes one while reading the next */
    f->b[f->cur].limit = FIRST_BATCH_ITEMS;
    f->decoding = SIZE_MAX; /* nothing is decoded while the first batch is read */
    rc = iter_fill(f, f->it, &f->b[f->cur], err);
    while (rc == EMOE_OK && (f->b[f->cur].nm > 0 || !f->it->eof))
        rc = step(f, err);
    iter_free(f->it);
    f->it = NULL;
    return rc;
}

/* ------------------------------------------------------------ the reader */

/* Give the items [first, nitems) of source src their class: the folder right below the
 * source's root.  Each source finds its own root, so several sources (folders and
 * archives mixed) merge their classes by name. */
static int assign_classes(struct feeder *f, const char *src, size_t first,
                          struct emoe_error *err)
{
    struct collector *c = &f->col;
    size_t common = 0;
    if (!f->subdir && !f->split_dir && c->nitems > first) {
        /* root = the longest folder prefix shared by all keys */
        const char *k0 = c->items[first].key;
        common = strlen(k0);
        for (size_t i = first + 1; i < c->nitems; i++) {
            const char *k = c->items[i].key;
            size_t j = 0;
            while (j < common && k[j] == k0[j])
                j++;
            common = j;
        }
        while (common > 0 && k0[common - 1] != '/')
            common--;
        /* back off while some image would have no class folder below the root (a
         * single class: root/cls/x.jpg gives class cls, not an unknown layout) */
        for (;;) {
            size_t i = first;
            while (i < c->nitems && strchr(c->items[i].key + common, '/'))
                i++;
            if (i == c->nitems || common == 0)
                break;
            common--;
            while (common > 0 && k0[common - 1] != '/')
                common--;
        }
    }
    for (size_t i = first; i < c->nitems; i++) {
        struct prep_item *it = &c->items[i];
        const char *r = f->subdir || f->split_dir ? after_root(f, it->key) : it->key + common;
        const char *slash = r ? strchr(r, '/') : NULL;
        if (!slash)
            return emoe_error_set(err, EMOE_EFORMAT,
                                  "%s: unknown layout: '%s' is not inside a class folder (give "
                                  "--subdir, the folder that holds the class folders, or a "
                                  "label file for flat validation images)",
                                  src, it->key);
        it->cls = strndup(r, (size_t)(slash - r));
        if (!it->cls)
            return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    }
    return EMOE_OK;
}

/* tiny-imagenet: labels from the sorted wnids.txt (so train and val agree), val labels
 * from val_annotations.txt, class names from words.txt. */
struct pair {
    const char *a, *b;
};

static int cmp_pair(const void *x, const void *y)
{
    return strcmp(((const struct pair *)x)->a, ((const struct pair *)y)->a);
}

static int cmp_cstr(const void *x, const void *y)
{
    return strcmp(*(const char *const *)x, *(const char *const *)y);
}

/* "a<TAB>b..." lines into pairs (pointing into the lines, which are modified). */
static size_t tab_pairs(char **lines, size_t n, struct pair *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        char *t = strchr(lines[i], '\t');
        if (!t)
            continue;
        *t = 0;
        char *b = t + 1, *e = strchr(b, '\t');
        if (e)
            *e = 0;
        out[k].a = lines[i];
        out[k++].b = b;
    }
    return k;
}

static int assign_tiny(struct feeder *f, const char *src, struct emoe_error *err)
{
    struct collector *c = &f->col;
    int val = !strcmp(f->split_dir, "val");
    if (!f->text[0])
        return emoe_error_set(err, EMOE_ENOTFOUND, "%s: missing label file 'wnids.txt'", src);
    if (val && !f->text[2])
        return emoe_error_set(err, EMOE_ENOTFOUND,
                              "%s: missing label file 'val/val_annotations.txt'", src);
    char **wn = NULL, **words = NULL, **ann = NULL, **names = NULL;
    size_t nwn = 0, nwords = 0, nann = 0;
    struct pair *wp = NULL, *ap = NULL;
    int rc = prep_split_lines((const char *)f->text[0], f->text_len[0], &wn, &nwn, err);
    if (rc == EMOE_OK && f->text[1])
        rc = prep_split_lines((const char *)f->text[1], f->text_len[1], &words, &nwords, err);
    if (rc == EMOE_OK && val)
        rc = prep_split_lines((const char *)f->text[2], f->text_len[2], &ann, &nann, err);
    if (rc != EMOE_OK)
        goto done;
    if (nwn == 0) {
        rc = emoe_error_set(err, EMOE_EFORMAT, "%s: 'wnids.txt' is empty", src);
        goto done;
    }
    qsort(wn, nwn, sizeof *wn, cmp_cstr);
    names = calloc(nwn, sizeof *names);
    wp = malloc((nwords ? nwords : 1) * sizeof *wp);
    ap = malloc((nann ? nann : 1) * sizeof *ap);
    if (!names || !wp || !ap) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        goto done;
    }
    size_t nwp = tab_pairs(words, nwords, wp);
    qsort(wp, nwp, sizeof *wp, cmp_pair);
    for (size_t i = 0; i < nwn; i++) {
        struct pair key = {wn[i], NULL};
        const struct pair *hit = nwp ? bsearch(&key, wp, nwp, sizeof *wp, cmp_pair) : NULL;
        names[i] = (char *)(hit ? hit->b : wn[i]);
    }
    size_t nap = tab_pairs(ann, nann, ap);
    qsort(ap, nap, sizeof *ap, cmp_pair);
    for (size_t i = 0; i < c->nitems; i++) {
        struct prep_item *it = &c->items[i];
        const char *r = after_root(f, it->key);
        char wnid[256];
        if (val) {
            struct pair key = {prep_basename(it->key), NULL};
            const struct pair *hit = nap ? bsearch(&key, ap, nap, sizeof *ap, cmp_pair) : NULL;
            if (!hit) {
                rc = emoe_error_set(err, EMOE_EFORMAT,
                                    "%s: no label for '%s' in 'val_annotations.txt'", src,
                                    it->key);
                goto done;
            }
            snprintf(wnid, sizeof wnid, "%s", hit->b);
        } else {
            const char *slash = r ? strchr(r, '/') : NULL;
            if (!slash || (size_t)(slash - r) >= sizeof wnid) {
                rc = emoe_error_set(err, EMOE_EFORMAT, "%s: unknown layout: '%s'", src, it->key);
                goto done;
            }
            memcpy(wnid, r, (size_t)(slash - r));
            wnid[slash - r] = 0;
        }
        const char *kp = wnid;
        char **hit = bsearch(&kp, wn, nwn, sizeof *wn, cmp_cstr);
        if (!hit) {
            rc = emoe_error_set(err, EMOE_EFORMAT, "%s: '%s': class '%s' is not in 'wnids.txt'",
                                src, it->key, wnid);
            goto done;
        }
        it->label = hit - wn;
    }
    rc = collector_set_names(c, names, nwn, err);
done:
    free(names);
    free(wp);
    free(ap);
    prep_free_strings(wn, nwn);
    prep_free_strings(words, nwords);
    prep_free_strings(ann, nann);
    return rc;
}

/* ImageNet validation: labels of flat JPEGs from a label file. */
static int is_int(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

static int cmp_item_key(const void *a, const void *b)
{
    const struct prep_item *const *x = a, *const *y = b;
    return strcmp(prep_basename((*x)->key), prep_basename((*y)->key));
}

static int assign_label_file(struct feeder *f, struct emoe_error *err)
{
    const char *path = f->o->label_file;
    struct collector *c = &f->col;
    unsigned char *text;
    size_t n, nl;
    char **lines = NULL;
    struct pair *pr = NULL;
    struct prep_item **byname = NULL;
    int rc = prep_read_file(path, MAX_TEXT, &text, &n, err);
    if (rc != EMOE_OK)
        return rc;
    rc = prep_split_lines((const char *)text, n, &lines, &nl, err);
    free(text);
    if (rc != EMOE_OK)
        return rc;
    pr = malloc((nl ? nl : 1) * sizeof *pr);
    byname = malloc((c->nitems ? c->nitems : 1) * sizeof *byname);
    if (!pr || !byname) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        goto done;
    }
    /* "<name>[,| \t]<label>[ ...]" or "<label>" */
    size_t np = 0;
    int paired = nl > 0 && strpbrk(lines[nl - 1], ", \t") != NULL;
    for (size_t i = 0; i < nl; i++) {
        char *a = lines[i], *b = a;
        if (paired) {
            b = strpbrk(a, ", \t");
            if (!b) {
                rc = emoe_error_set(err, EMOE_EFORMAT, "%s: line %zu: expected a file name and a "
                                    "label", path, i + 1);
                goto done;
            }
            *b++ = 0;
            while (*b == ' ' || *b == '\t' || *b == ',')
                b++;
        }
        b[strcspn(b, ", \t")] = 0;
        if (paired && (!strcmp(a, "ImageId") || !strcmp(a, "file")))
            continue; /* a header */
        /* names compare without folder and extension */
        a = (char *)prep_basename(a);
        char *dot = strrchr(a, '.');
        if (dot && (prep_has_suffix(a, ".jpeg") || prep_has_suffix(a, ".jpg")))
            *dot = 0;
        pr[np].a = a;
        pr[np++].b = b;
    }
    for (size_t i = 0; i < c->nitems; i++)
        byname[i] = &c->items[i];
    qsort(byname, c->nitems, sizeof *byname, cmp_item_key);
    if (!paired && np != c->nitems) {
        rc = emoe_error_set(err, EMOE_EFORMAT, "%s: %zu labels for %zu images", path, np,
                            c->nitems);
        goto done;
    }
    if (paired)
        qsort(pr, np, sizeof *pr, cmp_pair);
    for (size_t i = 0; i < c->nitems; i++) {
        struct prep_item *it = byname[i];
        const char *label;
        if (paired) {
            char key[1024];
            snprintf(key, sizeof key, "%s", prep_basename(it->key));
            char *dot = strrchr(key, '.');
            if (dot)
                *dot = 0;
            struct pair k = {key, NULL};
            const struct pair *hit = np ? bsearch(&k, pr, np, sizeof *pr, cmp_pair) : NULL;
            if (!hit) {
                rc = emoe_error_set(err, EMOE_EFORMAT, "%s: no label for '%s'", path, it->key);
                goto done;
            }
            label = hit->b;
        } else {
            label = pr[i].b;
        }
        if (is_int(label)) {
            it->label = strtoll(label, NULL, 10);
        } else if (!(it->cls = strdup(label))) {
            rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
            goto done;
        }
    }
    /* all names or all numbers */
    for (size_t i = 1; i < c->nitems; i++)
        if (!c->items[i].cls != !c->items[0].cls) {
            rc = emoe_error_set(err, EMOE_EFORMAT, "%s: mixes class names and numbers", path);
            goto done;
        }
done:
    free(pr);
    free(byname);
    prep_free_strings(lines, nl);
    return rc;
}

int prep_read_imagefolder(const char *const *src, size_t n, enum emoe_prep_format fmt,
                          const struct emoe_prep_options *o, struct emoe_dataset **out,
                          struct emoe_prep_result *res, struct emoe_error *err)
{
    int rc = EMOE_OK;
    struct feeder *f = calloc(1, sizeof *f);
    if (!f)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    f->o = o;
    f->tiny = fmt == EMOE_PREP_TINYIMAGENET;
    f->split_dir = !f->tiny ? o->split
                            : o->split && strcmp(o->split, "train") ? "val" : "train";
    f->side = o->size;
    f->channels = o->channels ? o->channels : 3;
    if (o->subdir && o->subdir[0]) {
        const char *s = norm_key(o->subdir);
        size_t len = strlen(s);
        while (len && s[len - 1] == '/')
            len--;
        if (len && !(f->subdir = strndup(s, len))) {
            free(f);
            return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        }
    }
    f->ndec = emoe_threads_get();
    f->ahead = f->ndec > 1 && !emoe_in_parallel();
    f->b[0].data.map = f->b[1].data.map = 1;
    f->dec = calloc((size_t)f->ndec, sizeof *f->dec);
    f->busy = calloc((size_t)f->ndec, sizeof *f->busy);
    if (!f->dec || !f->busy)
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    for (int i = 0; rc == EMOE_OK && i < f->ndec; i++) {
        atomic_flag_clear(&f->busy[i]);
        rc = emoe_jpeg_new(&f->dec[i], err);
    }
    /* each source in turn; each must give images (a folder and an archive may be mixed:
     * each finds its own class folders, classes merge by name) */
    for (size_t i = 0; rc == EMOE_OK && i < n; i++) {
        size_t first = f->col_ready ? f->col.nitems : 0;
        f->flat = 0;
        rc = read_source(f, src[i], err);
        size_t got = f->col_ready ? f->col.nitems - first : 0;
        if (rc == EMOE_OK && got == 0 && f->flat > 0 && !f->tiny)
            rc = emoe_error_set(err, EMOE_EFORMAT,
                                "%s: unknown layout: %zu JPEG images but no class folders; a flat "
                                "(validation) layout needs a label file with the class of "
                                "each image (give --labels FILE)", src[i], f->flat);
        else if (rc == EMOE_OK && got == 0)
            rc = emoe_error_set(err, EMOE_EFORMAT,
                                "%s: unknown layout: no JPEG images found%s%s%s", src[i],
                                f->subdir || f->split_dir ? " under '" : "",
                                f->subdir ? f->subdir : f->split_dir ? f->split_dir : "",
                                f->subdir || f->split_dir ? "'" : "");
        if (rc == EMOE_OK && !f->tiny && !o->label_file)
            rc = assign_classes(f, src[i], first, err);
    }
    if (rc == EMOE_OK && f->tiny)
        rc = assign_tiny(f, src[0], err);
    else if (rc == EMOE_OK && o->label_file)
        rc = assign_label_file(f, err);
    if (res)
        res->skipped = f->skipped;
    if (rc == EMOE_OK) {
        f->col_ready = 0;
        rc = collector_finish(&f->col, o, out, err);
    }
    batch_free(&f->b[0]);
    batch_free(&f->b[1]);
    iter_free(f->it);
    if (f->col_ready)
        collector_free(&f->col);
    for (int i = 0; f->dec && i < f->ndec; i++)
        emoe_jpeg_free(f->dec[i]);
    free(f->dec);
    free(f->busy);
    free(f->subdir);
    for (int i = 0; i < 3; i++)
        free(f->text[i]);
    free(f);
    return rc;
}
