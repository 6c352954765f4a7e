/*
 * data.h: private declarations shared by the dataset readers (lib/prep*.c) and
 * lib/dataset.c.  Not installed.
 */
#ifndef EMOE_DATA_H
#define EMOE_DATA_H

#include <locale.h>
#include "internal.h"

#include <zlib.h>

struct archive;

/*
 * One image (or volume) as a reader found it.  Images land in slots of a growing
 * store in arrival order; at the end the items are sorted by (cls, key, sub) so the
 * dataset order depends neither on the archive order nor on the thread count.
 */
struct prep_item {
    char *cls;          /* class name (labels from sorted names), or NULL */
    char *key;          /* sort key: member path; may be NULL */
    uint64_t sub;       /* record index inside key */
    int64_t label;      /* when cls is NULL and the reader knows the label */
    float target;       /* regression target */
    size_t slot;        /* where the pixels are */
    int bad;            /* decode failed: dropped */
};

struct collector {
    enum emoe_dtype dtype;      /* U8 images or F32 volumes */
    int ndim;                   /* per-item rank (3: H, W, C; 4: D, H, W, C) */
    int64_t dims[4];
    size_t item_bytes;
    struct emoe_buffer *buf;    /* the pixel store; grows */
    size_t nslots, cap;
    struct prep_item *items;
    size_t nitems, items_cap;
    char **names;               /* class names known from a file (label i), or NULL */
    size_t nnames;
    int regression;             /* labels are f32 targets */
};

/* An anonymous read-write mapping of at least *bytes (set to its length: rounded up to
 * whole, aligned transparent huge pages, which are advised): new when old is NULL, else
 * old (old_bytes, of which used hold data) grown, moved without a copy where mremap
 * exists.  NULL when out of memory (old is then kept). */
void *prep_map_grow(void *old, size_t old_bytes, size_t used, size_t *bytes);
int collector_init(struct collector *c, enum emoe_dtype dtype, int ndim, const int64_t *dims,
                   struct emoe_error *err);
void collector_free(struct collector *c);
/* Reserve n consecutive slots; returns the first. */
int collector_reserve(struct collector *c, size_t n, size_t *first, struct emoe_error *err);
static inline unsigned char *collector_slot(struct collector *c, size_t slot)
{
    return (unsigned char *)c->buf->base + slot * c->item_bytes;
}
/* A new item (strings are copied; cls/key may be NULL). */
int collector_add(struct collector *c, const char *cls, const char *key, uint64_t sub,
                  int64_t label, size_t slot, struct prep_item **out, struct emoe_error *err);
/* An item of just a key (malloc'd; taken, and freed when out of memory) and a slot. */
int collector_add_key(struct collector *c, char *key, size_t slot, struct prep_item **out,
                      struct emoe_error *err);
/* Class names by label (copied). */
int collector_set_names(struct collector *c, char *const *names, size_t n,
                        struct emoe_error *err);
/* Sort, select (classes, per-class, limit), build the dataset.  c is emptied. */
int collector_finish(struct collector *c, const struct emoe_prep_options *o,
                     struct emoe_dataset **out, struct emoe_error *err);

/* Convert one RGB or gray image [h, w, cin] to the options' size and channels into dst
 * [n, n, cout] (n = size, or w == h when size is 0). */
int prep_convert_pixels(const unsigned char *src, int w, int h, int cin, int size, int cout,
                        unsigned char *dst, struct emoe_error *err);

/* The full size (before DCT scaling) of the JPEG j decoded last (lib/image.c). */
void prep_jpeg_image_size(const struct emoe_jpeg *j, int *w, int *h);

/* Open an archive file for streaming reads (any format and filter libarchive knows). */
int prep_archive_open(const char *path, struct archive **out, struct emoe_error *err);
/* A member's name (as the zip's central directory has it): 1 a wanted JPEG, 2 another
 * member the reader needs (a text file, a nested tar), 0 not needed. */
typedef int (*prep_member_needed_fn)(void *ctx, const char *name);
/* prep_archive_open for a reader that needs only some members: a zip is then read
 * from its first needed member to its last (when its central directory says where
 * they are; see prep_common.c). */
int prep_archive_open_selected(const char *path, prep_member_needed_fn needed, void *ctx,
                               struct archive **out, struct emoe_error *err);
/* Member names: libarchive converts them to the charset of the calling thread's locale,
 * and in the "C" locale (a program's until it calls setlocale) a UTF-8 name with a
 * non-ASCII letter (a zip's "café/", flagged UTF-8; a pax tar's) cannot be converted:
 * the member comes without a name.  Code that reads headers runs between these two,
 * which switch the calling thread (only it: uselocale) to a UTF-8 LC_CTYPE, so names
 * are UTF-8 whatever the program's locale.  Returns what to give to prep_utf8_leave. */
locale_t prep_utf8_enter(void);
void prep_utf8_leave(locale_t old);
/* "path: <libarchive's message>" as EMOE_EFORMAT (truncated or corrupt archive). */
int prep_archive_error(struct archive *a, const char *path, struct emoe_error *err);
/* Read the current member whole (bounded by max bytes) into a malloc'd buffer (one
 * byte more than *size, NUL-terminated).  hint: the size the header gives, or -1. */
int prep_archive_read_member(struct archive *a, const char *path, const char *member,
                             int64_t hint, size_t max, unsigned char **data, size_t *size,
                             struct emoe_error *err);
/* A growing byte buffer: malloc'd, or (map) an anonymous mapping grown by mremap, for
 * buffers that are large, reused and appended to (no copy, transparent huge pages). */
struct prep_bytes {
    unsigned char *p;
    size_t len, cap;
    int map;
};
/* Room for extra more bytes after len. */
int prep_bytes_reserve(struct prep_bytes *b, size_t extra, struct emoe_error *err);
void prep_bytes_free(struct prep_bytes *b);
/* Append the current member (bounded by max bytes) to b; b->len then includes it, and a
 * NUL follows it.  On an error b->len is unchanged. */
int prep_archive_append_member(struct archive *a, const char *path, const char *member,
                               int64_t hint, size_t max, struct prep_bytes *b,
                               struct emoe_error *err);
/* Whole file into memory (bounded). */
int prep_read_file(const char *path, size_t max, unsigned char **data, size_t *size,
                   struct emoe_error *err);
/* Split text into lines (trimmed of \r and trailing blanks; empty lines dropped). */
int prep_split_lines(const char *text, size_t n, char ***lines, size_t *nlines,
                     struct emoe_error *err);
void prep_free_strings(char **s, size_t n);
/* Read exactly n bytes from g (gzip or plain); EMOE_EFORMAT "PATH: truncated WHAT (k of n
 * bytes)" on a short read, EMOE_EIO on a read error. */
int prep_gz_read(gzFile g, const char *path, void *buf, size_t n, const char *what,
                 struct emoe_error *err);
const char *prep_basename(const char *path);
int prep_has_suffix(const char *s, const char *suffix); /* case-insensitive */
/* Whether a name inside a source is left out: a hidden file or folder on its path (a
 * name starting with '.': ".DS_Store", ".ipynb_checkpoints/", macOS's "._x.jpg"
 * resource forks) or macOS's "__MACOSX" metadata folder.  Folders and archives alike. */
int prep_skipped_name(const char *path);

/* The readers. */
int prep_read_mnist(const char *const *src, size_t n, const struct emoe_prep_options *o,
                    struct emoe_dataset **out, struct emoe_prep_result *res,
                    struct emoe_error *err);
int prep_read_cifar(const char *const *src, size_t n, int cifar100,
                    const struct emoe_prep_options *o, struct emoe_dataset **out,
                    struct emoe_prep_result *res, struct emoe_error *err);
int prep_read_imagefolder(const char *const *src, size_t n, enum emoe_prep_format fmt,
                          const struct emoe_prep_options *o, struct emoe_dataset **out,
                          struct emoe_prep_result *res, struct emoe_error *err);
int prep_read_nifti(const char *const *src, size_t n, const struct emoe_prep_options *o,
                    struct emoe_dataset **out, struct emoe_prep_result *res,
                    struct emoe_error *err);
int prep_read_synthetic(const struct emoe_prep_options *o, struct emoe_dataset **out,
                        struct emoe_error *err);

#endif
