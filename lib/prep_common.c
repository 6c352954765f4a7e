/*
 * prep_common.c: emoe_prep_read (format detection and dispatch to the readers) and
 * helpers the readers share: archives through libarchive, bounded file reads, text
 * lines, pixel conversion.
 */
#include "config.h"
#include "data.h"

#include <archive.h>
#include <archive_entry.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

static const char *const format_names[] = {
    [EMOE_PREP_AUTO] = "auto",           [EMOE_PREP_CIFAR10] = "cifar10",
    [EMOE_PREP_CIFAR100] = "cifar100",   [EMOE_PREP_MNIST] = "mnist",
    [EMOE_PREP_IMAGEFOLDER] = "imagefolder", [EMOE_PREP_TINYIMAGENET] = "tinyimagenet",
    [EMOE_PREP_IMAGENET] = "imagenet",   [EMOE_PREP_NIFTI] = "nifti",
    [EMOE_PREP_SYNTHETIC] = "synthetic",
};

const char *emoe_prep_format_name(enum emoe_prep_format f)
{
    return (unsigned)f < sizeof format_names / sizeof *format_names ? format_names[f] : "?";
}

int emoe_prep_format_from_name(const char *name, enum emoe_prep_format *out)
{
    for (size_t i = 0; i < sizeof format_names / sizeof *format_names; i++)
        if (strcmp(name, format_names[i]) == 0) {
            *out = (enum emoe_prep_format)i;
            return EMOE_OK;
        }
    return EMOE_EINVAL;
}

void emoe_prep_options_init(struct emoe_prep_options *o)
{
    memset(o, 0, sizeof *o);
}

/* ---------------------------------------------------------------- helpers */

const char *prep_basename(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

int prep_skipped_name(const char *path)
{
    /* one pass, a component at a time: called for every member of an archive */
    for (const char *c = path; *c;) {
        if (c[0] == '/') {
            c++;
            continue;
        }
        if (c[0] == '.' && c[1] != '/' && c[1] != 0 &&
            !(c[1] == '.' && (c[2] == '/' || c[2] == 0)))
            return 1; /* a hidden file or folder (not "." or "..") */
        if (c[0] == '_' && !strncmp(c, "__MACOSX", 8) && (c[8] == '/' || c[8] == 0))
            return 1;
        while (*c && *c != '/')
            c++;
    }
    return 0;
}

int prep_has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcasecmp(s + n - m, suffix) == 0;
}

/* Read exactly n bytes of a gzip (or plain) stream; a short read is "truncated WHAT". */
int prep_gz_read(gzFile g, const char *path, void *buf, size_t n, const char *what,
                   struct emoe_error *err)
{
    size_t done = 0;
    while (done < n) {
        unsigned chunk = n - done > (1u << 30) ? 1u << 30 : (unsigned)(n - done);
        int r = gzread(g, (char *)buf + done, chunk);
        if (r < 0) {
            int e;
            const char *m = gzerror(g, &e);
            return emoe_error_set(err, e == Z_ERRNO ? EMOE_EIO : EMOE_EFORMAT, "%s: %s", path,
                                  e == Z_ERRNO ? strerror(errno) : m);
        }
        if (r == 0)
            return emoe_error_set(err, EMOE_EFORMAT, "%s: truncated %s (%zu of %zu bytes)", path,
                                  what, done, n);
        done += (size_t)r;
    }
    return EMOE_OK;
}

void prep_free_strings(char **s, size_t n)
{
    if (!s)
        return;
    for (size_t i = 0; i < n; i++)
        free(s[i]);
    free(s);
}

int prep_split_lines(const char *text, size_t n, char ***lines, size_t *nlines,
                     struct emoe_error *err)
{
    size_t cap = 1;
    for (size_t i = 0; i < n; i++)
        cap += text[i] == '\n';
    char **v = calloc(cap, sizeof *v);
    if (!v)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    size_t k = 0, i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && text[j] != '\n')
            j++;
        size_t e = j;
        while (e > i && (text[e - 1] == '\r' || text[e - 1] == ' ' || text[e - 1] == '\t'))
            e--;
        if (e > i) {
            if (memchr(text + i, 0, e - i)) {
                prep_free_strings(v, k);
                return emoe_error_set(err, EMOE_EFORMAT, "NUL byte in a text file");
            }
            v[k] = malloc(e - i + 1);
            if (!v[k]) {
                prep_free_strings(v, k);
                return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
            }
            memcpy(v[k], text + i, e - i);
            v[k++][e - i] = 0;
        }
        i = j + 1;
    }
    *lines = v;
    *nlines = k;
    return EMOE_OK;
}

int prep_read_file(const char *path, size_t max, unsigned char **data, size_t *size,
                   struct emoe_error *err)
{
    *data = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return emoe_error_set(err, errno == ENOENT ? EMOE_ENOTFOUND : EMOE_EIO, "%s: %s", path,
                              strerror(errno));
    size_t cap = 0, n = 0;
    unsigned char *p = NULL;
    for (;;) {
        if (n == cap) {
            if (cap >= max) {
                free(p);
                fclose(f);
                return emoe_error_set(err, EMOE_ERANGE, "%s: larger than %zu bytes", path, max);
            }
            cap = cap ? cap * 2 : 65536;
            if (cap > max)
                cap = max;
            unsigned char *q = realloc(p, cap + 1);
            if (!q) {
                free(p);
                fclose(f);
                return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", path);
            }
            p = q;
        }
        size_t r = fread(p + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f)) {
                int e = errno;
                free(p);
                fclose(f);
                return emoe_error_set(err, EMOE_EIO, "%s: %s", path, strerror(e));
            }
            break;
        }
    }
    fclose(f);
    if (!p && !(p = malloc(1)))
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", path);
    p[n] = 0; /* text readers may rely on a terminator (cap + 1 allocated) */
    *data = p;
    *size = n;
    return EMOE_OK;
}

/*
 * A selection (a split, a subfolder) of a zip read by the streaming reader: the zip's
 * central directory, an index of every member's name and local header offset, says
 * which stretch of the file holds the members the selection wants; only that stretch
 * and the central directory are given to libarchive (which still parses and checks
 * every member it reads).  Listing the members of the rest costs libarchive about a
 * microsecond each, on one thread, while nothing else can go on: for CIFAR-10's test
 * split that was the 50,000 train members after it, two thirds of a read on 2 threads.
 * Any doubt (zip64, several disks, a name not in UTF-8 or ASCII, an offset that does
 * not hold a local header, nothing wanted) reads the whole zip as before.
 */
#define MAX_CENTRAL_DIR ((size_t)256 << 20)

struct span_reader {
    int fd;
    off_t at[2], end[2];        /* the members wanted, then the central directory */
    int seg;
    unsigned char buf[1 << 16];
};

static la_ssize_t span_read(struct archive *a, void *ud, const void **buf)
{
    struct span_reader *r = ud;
    while (r->seg < 2 && r->at[r->seg] >= r->end[r->seg])
        r->seg++;
    if (r->seg == 2)
        return 0;
    off_t left = r->end[r->seg] - r->at[r->seg];
    size_t want = left < (off_t)sizeof r->buf ? (size_t)left : sizeof r->buf;
    ssize_t got = pread(r->fd, r->buf, want, r->at[r->seg]);
    if (got < 0) {
        archive_set_error(a, errno, "%s", strerror(errno));
        return -1;
    }
    r->at[r->seg] += got; /* 0 (the file shrank): libarchive reports the truncation */
    *buf = r->buf;
    return got;
}

static int span_close(struct archive *a, void *ud)
{
    (void)a;
    struct span_reader *r = ud;
    close(r->fd);
    free(r);
    return ARCHIVE_OK;
}

/* The stretch [*start, *end) of the zip at fd (end record eocd_rec, at offset eocd) that
 * holds every member needed() wants, and the central directory [*cd, size); 0 when
 * the whole zip must be read. */
static int zip_wanted_span(int fd, const unsigned char *eocd_rec, off_t eocd,
                           prep_member_needed_fn needed, void *ctx, off_t *start, off_t *end,
                           off_t *cd)
{
    const unsigned char *e = eocd_rec;
    uint32_t count = emoe_load_le16(e + 10), cd_size = emoe_load_le32(e + 12), cd_off = emoe_load_le32(e + 16);
    if (emoe_load_le16(e + 4) != 0 || emoe_load_le16(e + 6) != 0 ||
        emoe_load_le16(e + 8) != count || count == 0 || count == 0xffff ||
        cd_size == 0xffffffffu || cd_off == 0xffffffffu || cd_size > MAX_CENTRAL_DIR ||
        (off_t)cd_off + cd_size > eocd || (size_t)count * 46 > cd_size)
        return 0;
    /* mapped from the page cache, not copied: about 80 bytes a member (5 MB for CIFAR) */
    off_t page = sysconf(_SC_PAGESIZE), base = cd_off / page * page;
    size_t maplen = (size_t)(cd_off - base) + cd_size;
    void *map = mmap(NULL, maplen, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, base);
    const unsigned char *dir = map == MAP_FAILED ? NULL : (unsigned char *)map + (cd_off - base);
    off_t *offs = malloc(count * sizeof *offs);
    int ok = dir && offs;
    off_t lo = -1, hi = -1;
    int jpegs = 0;
    char name[4096];
    size_t at = 0;
    for (uint32_t i = 0; ok && i < count; i++) {
        const unsigned char *h = dir + at;
        ok = cd_size - at >= 46 && emoe_load_le32(h) == 0x02014b50u;
        if (!ok)
            break;
        uint32_t flags = emoe_load_le16(h + 8), nl = emoe_load_le16(h + 28);
        uint32_t xl = emoe_load_le16(h + 30), cl = emoe_load_le16(h + 32);
        uint32_t local = emoe_load_le32(h + 42);
        ok = cd_size - at - 46 >= (size_t)nl + xl + cl && nl < sizeof name &&
             local != 0xffffffffu && (off_t)local < cd_off;
        if (!ok)
            break;
        memcpy(name, h + 46, nl);
        name[nl] = 0;
        for (uint32_t k = 0; ok && k < nl; k++)
            ok = name[k] != 0 && ((unsigned char)name[k] < 0x80 || (flags & 0x800));
        if (!ok)
            break;
        offs[i] = local;
        int w = needed(ctx, name);
        if (w) {
            jpegs += w == 1;
            lo = lo < 0 || local < lo ? local : lo;
            hi = local > hi ? local : hi;
        }
        at += 46 + (size_t)nl + xl + cl;
    }
    ok = ok && jpegs > 0;
    unsigned char sig[4];
    ok = ok && pread(fd, sig, 4, lo) == 4 && memcmp(sig, "PK\3\4", 4) == 0;
    if (ok) {
        *start = lo;
        *end = cd_off; /* the next member's header after the last wanted one */
        for (uint32_t i = 0; i < count; i++)
            if (offs[i] > hi && offs[i] < *end)
                *end = offs[i];
        *cd = cd_off;
    }
    if (dir)
        munmap(map, maplen);
    free(offs);
    return ok;
}

/*
 * A zip that starts with a local header and ends with an end-of-central-directory
 * record is read by libarchive's streaming zip reader, which reads the local headers
 * in order.  The seekable reader (what support_format_all picks for a file) first
 * parses the whole central directory, on one thread before the first member, and then
 * costs more per member, skipped or read: listing CIFAR-10's 60,024 members took
 * 66-69 ms with it (16-19 ms of them before the first) and 47-50 ms streaming, here.
 * The streaming reader does not look at the central directory, hence the end record
 * check: a zip cut short, or with other bytes in front (a self-extracting zip), takes
 * the seekable reader (and its messages).  Both check each member's CRC-32.
 */
static int zip_for_streaming(const char *path, prep_member_needed_fn needed, void *ctx,
                             struct span_reader **span)
{
    *span = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    struct stat st = {0};
    unsigned char head[4];
    int ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size >= 30 + 22 &&
             pread(fd, head, 4, 0) == 4 && memcmp(head, "PK\3\4", 4) == 0;
    /* the record is in the last 22 + 65,535 bytes (its comment is at most 65,535) */
    size_t tail = st.st_size > 65557 ? 65557 : (size_t)(ok ? st.st_size : 0);
    unsigned char *t = ok ? malloc(tail) : NULL;
    ok = t && pread(fd, t, tail, st.st_size - (off_t)tail) == (ssize_t)tail;
    int found = 0;
    size_t i = tail - 22 + 1;
    while (ok && !found && i-- > 0)
        found = t[i] == 'P' && t[i + 1] == 'K' && t[i + 2] == 5 && t[i + 3] == 6;
    struct span_reader *r = found && needed ? malloc(sizeof *r) : NULL;
    if (r && zip_wanted_span(fd, t + i, st.st_size - (off_t)tail + (off_t)i, needed,
                             ctx, &r->at[0], &r->end[0], &r->at[1])) {
        r->fd = fd;
        r->end[1] = st.st_size;
        r->seg = 0;
        *span = r;
    } else {
        free(r);
        close(fd);
    }
    free(t);
    return found;
}

int prep_archive_open(const char *path, struct archive **out, struct emoe_error *err)
{
    return prep_archive_open_selected(path, NULL, NULL, out, err);
}

int prep_archive_open_selected(const char *path, prep_member_needed_fn needed, void *ctx,
                               struct archive **out, struct emoe_error *err)
{
    *out = NULL;
    struct archive *a = archive_read_new();
    if (!a)
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", path);
    struct span_reader *span = NULL;
    if (zip_for_streaming(path, needed, ctx, &span)) {
        archive_read_support_format_zip_streamable(a);
    } else {
        archive_read_support_filter_all(a);
        archive_read_support_format_all(a);
    }
    int r = span ? archive_read_open(a, span, NULL, span_read, span_close)
                 : archive_read_open_filename(a, path, 1 << 16);
    if (r != ARCHIVE_OK) {
        int e = archive_errno(a);
        int code = e == ENOENT ? EMOE_ENOTFOUND : EMOE_EFORMAT;
        const char *m = archive_error_string(a) ? archive_error_string(a) : "cannot open";
        if (code == EMOE_ENOTFOUND)
            emoe_error_set(err, code, "%s: %s", path, m);
        else
            prep_archive_error(a, path, err);
        archive_read_free(a);
        return code;
    }
    *out = a;
    return EMOE_OK;
}

static locale_t utf8_locale;
static pthread_once_t utf8_once = PTHREAD_ONCE_INIT;

static void make_utf8_locale(void)
{
    utf8_locale = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
}

locale_t prep_utf8_enter(void)
{
    pthread_once(&utf8_once, make_utf8_locale);
    return utf8_locale == (locale_t)0 ? (locale_t)0 : uselocale(utf8_locale);
}

void prep_utf8_leave(locale_t old)
{
    if (old != (locale_t)0)
        uselocale(old);
}

int prep_archive_error(struct archive *a, const char *path, struct emoe_error *err)
{
    const char *m = archive_error_string(a);
    return emoe_error_set(err, EMOE_EFORMAT, "%s: truncated or corrupt archive: %s", path,
                          m ? m : "read error");
}

int prep_bytes_reserve(struct prep_bytes *b, size_t extra, struct emoe_error *err)
{
    if (b->cap - b->len >= extra)
        return EMOE_OK;
    if (extra > SIZE_MAX / 2 - b->len)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    size_t need = b->len + extra, cap = b->cap ? b->cap : 65536;
    while (cap < need)
        cap *= 2; /* need <= SIZE_MAX / 2: no overflow */
    void *p = b->map ? prep_map_grow(b->p, b->cap, b->len, &cap) : realloc(b->p, cap);
    if (!p)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    b->p = p;
    b->cap = cap;
    return EMOE_OK;
}

void prep_bytes_free(struct prep_bytes *b)
{
    if (b->map && b->p)
        munmap(b->p, b->cap);
    else
        free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

int prep_archive_append_member(struct archive *a, const char *path, const char *member,
                               int64_t hint, size_t max, struct prep_bytes *b,
                               struct emoe_error *err)
{
    const size_t base = b->len;
    size_t n = 0;
    /* room for the size the header gives plus one byte, so that the end is seen at
     * once; else grow as the data comes */
    size_t want = hint >= 0 && (uint64_t)hint < max ? (size_t)hint + 1 : 65536;
    for (;;) {
        if (b->cap - base - n < 2) { /* a byte of data and the NUL */
            if (n >= max)
                return emoe_error_set(err, EMOE_ERANGE, "%s: member '%s' is larger than %zu "
                                      "bytes", path, member, max);
            size_t more = n > want ? n : want;
            if (more > max - n)
                more = max - n;
            b->len = base + n;
            int rc = prep_bytes_reserve(b, more + 2, err);
            b->len = base;
            if (rc != EMOE_OK)
                return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", path);
        }
        size_t room = b->cap - base - n - 1;
        if (room > max + 1 - n)
            room = max + 1 - n; /* a byte over max tells that the member is too large */
        la_ssize_t r = archive_read_data(a, b->p + base + n, room);
        if (r < 0)
            return prep_archive_error(a, path, err);
        if (r == 0)
            break;
        n += (size_t)r;
        if (n > max)
            return emoe_error_set(err, EMOE_ERANGE, "%s: member '%s' is larger than %zu bytes",
                                  path, member, max);
    }
    b->p[base + n] = 0;
    b->len = base + n;
    return EMOE_OK;
}

int prep_archive_read_member(struct archive *a, const char *path, const char *member,
                             int64_t hint, size_t max, unsigned char **data, size_t *size,
                             struct emoe_error *err)
{
    struct prep_bytes b = {0};
    int rc = prep_archive_append_member(a, path, member, hint, max, &b, err);
    if (rc != EMOE_OK)
        prep_bytes_free(&b);
    *data = b.p;
    *size = b.len;
    return rc;
}

int prep_convert_pixels(const unsigned char *src, int w, int h, int cin, int size, int cout,
                        unsigned char *dst, struct emoe_error *err)
{
    if (size <= 0 && w != h)
        return emoe_error_set(err, EMOE_EINVAL, "image is %dx%d; give a size", w, h);
    int n = size > 0 ? size : w;
    const unsigned char *p = src;
    unsigned char *tmp = NULL;
    if (cin != cout) {
        size_t npix = (size_t)w * (size_t)h;
        tmp = malloc(npix * (size_t)cout);
        if (!tmp)
            return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        if (cin == 3) {
            for (size_t i = 0; i < npix; i++)
                tmp[i] = (unsigned char)((src[3 * i] * 19595u + src[3 * i + 1] * 38470u +
                                          src[3 * i + 2] * 7471u + 32768u) >> 16);
        } else {
            for (size_t i = 0; i < npix; i++)
                tmp[3 * i] = tmp[3 * i + 1] = tmp[3 * i + 2] = src[i];
        }
        p = tmp;
    }
    int rc = EMOE_OK;
    if (w == n && h == n)
        memcpy(dst, p, (size_t)n * n * cout);
    else
        rc = emoe_image_resize_crop(p, w, h, cout, n, dst, err);
    free(tmp);
    return rc;
}

/* ------------------------------------------------------------ detection */

/* First bytes of a file, gunzipped when it is gzip. */
static int peek(const char *path, unsigned char *buf, size_t want, size_t *got, int *gz,
                struct emoe_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return emoe_error_set(err, errno == ENOENT ? EMOE_ENOTFOUND : EMOE_EIO, "%s: %s", path,
                              strerror(errno));
    unsigned char m[2] = {0, 0};
    size_t r = fread(m, 1, 2, f);
    fclose(f);
    *gz = r == 2 && m[0] == 0x1f && m[1] == 0x8b;
    gzFile g = gzopen(path, "rb");
    if (!g)
        return emoe_error_set(err, EMOE_EIO, "%s: cannot open", path);
    int n = gzread(g, buf, (unsigned)want);
    gzclose(g);
    *got = n > 0 ? (size_t)n : 0;
    return EMOE_OK;
}

/* Listing a member costs about a microsecond (the CIFAR-10 zip), and detection runs
 * before the reader, on one thread: 256 names take a quarter of a millisecond. */
#define SCAN_DECIDED 256
#define SCAN_COMPRESSED 4096

struct name_counts {
    int bins, jpgs, wnids, tars, c100, tinyish;
};

/* Count the member names that tell the formats apart (see detect_archive); returns
 * libarchive's last status (ARCHIVE_OK when stopped early, ARCHIVE_EOF at the end). */
static int scan_names(struct archive *a, int compressed, struct name_counts *k)
{
    struct archive_entry *e;
    int r = ARCHIVE_OK;
    memset(k, 0, sizeof *k);
    for (size_t i = 0; (r = archive_read_next_header(a, &e)) == ARCHIVE_OK || r == ARCHIVE_WARN;
         i++) {
        if ((i >= SCAN_DECIDED && (k->jpgs || k->bins || k->tars) && !k->tinyish) ||
            (i >= SCAN_COMPRESSED && compressed))
            break;
        const char *name = archive_entry_pathname(e);
        if (!name || prep_skipped_name(name))
            continue;
        const char *b = prep_basename(name);
        if (prep_has_suffix(name, ".bin"))
            k->bins++;
        if (!strcmp(b, "fine_label_names.txt") || !strcmp(b, "train.bin") ||
            !strcmp(b, "test.bin"))
            k->c100++;
        if (prep_has_suffix(name, ".jpg") || prep_has_suffix(name, ".jpeg")) {
            k->jpgs++;
            size_t bl = (size_t)(b - name);
            k->tinyish |= bl >= 7 && !strncmp(b - 7, "images/", 7) && (bl == 7 || b[-8] == '/');
        }
        if (!strcmp(b, "wnids.txt") || !strcmp(b, "val_annotations.txt"))
            k->wnids++;
        if (prep_has_suffix(name, ".tar"))
            k->tars++;
    }
    return r;
}

/* Look at the member names of an archive: the first SCAN_DECIDED when they already
 * decide the format and nothing looks like tiny-imagenet (JPEGs in folders named
 * 'images', whose 'wnids.txt' may come anywhere), the first SCAN_COMPRESSED when it is
 * compressed (where skipping means decompressing); else all of them.  Opened as the
 * readers open it (a whole zip with the streaming reader: no central-directory parse
 * before the first name). */
static int detect_archive(const char *path, int compressed, enum emoe_prep_format *fmt,
                          struct emoe_error *err)
{
    struct name_counts k;
    struct archive *a;
    int rc = prep_archive_open(path, &a, err);
    if (rc != EMOE_OK)
        return rc;
    locale_t old = prep_utf8_enter();
    int r = scan_names(a, compressed, &k);
    prep_utf8_leave(old);
    if (r == ARCHIVE_FATAL) {
        rc = prep_archive_error(a, path, err);
        archive_read_free(a);
        return rc;
    }
    archive_read_free(a);
    if (k.bins)
        *fmt = k.c100 ? EMOE_PREP_CIFAR100 : EMOE_PREP_CIFAR10;
    else if (k.wnids)
        *fmt = EMOE_PREP_TINYIMAGENET;
    else if (k.tars && !k.jpgs)
        *fmt = EMOE_PREP_IMAGENET;
    else if (k.jpgs)
        *fmt = EMOE_PREP_IMAGEFOLDER;
    else
        return emoe_error_set(err, EMOE_EFORMAT,
                              "%s: unknown layout (no JPEG images, CIFAR batches or class tars "
                              "found)", path);
    return EMOE_OK;
}

static int detect(const char *path, enum emoe_prep_format *fmt, struct emoe_error *err)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return emoe_error_set(err, errno == ENOENT ? EMOE_ENOTFOUND : EMOE_EIO, "%s: %s", path,
                              strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        char p[4096];
        snprintf(p, sizeof p, "%s/wnids.txt", path);
        if (stat(p, &st) == 0) {
            *fmt = EMOE_PREP_TINYIMAGENET;
            return EMOE_OK;
        }
        const char *idx[4] = {"train-images-idx3-ubyte", "train-images-idx3-ubyte.gz",
                              "t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz"};
        for (int i = 0; i < 4; i++) {
            snprintf(p, sizeof p, "%s/%s", path, idx[i]);
            if (stat(p, &st) == 0) {
                *fmt = EMOE_PREP_MNIST;
                return EMOE_OK;
            }
        }
        DIR *d = opendir(path);
        struct dirent *de;
        int nii = 0;
        while (d && (de = readdir(d)))
            nii |= prep_has_suffix(de->d_name, ".nii") || prep_has_suffix(de->d_name, ".nii.gz");
        if (d)
            closedir(d);
        *fmt = nii ? EMOE_PREP_NIFTI : EMOE_PREP_IMAGEFOLDER;
        return EMOE_OK;
    }
    unsigned char h[512];
    size_t n = 0;
    int gz = 0;
    int rc = peek(path, h, sizeof h, &n, &gz, err);
    if (rc != EMOE_OK)
        return rc;
    if (n >= 4 && h[0] == 0 && h[1] == 0 && h[2] == 8 && (h[3] == 1 || h[3] == 3)) {
        *fmt = EMOE_PREP_MNIST;
        return EMOE_OK;
    }
    if (n >= 4 && ((h[0] == 0x5c && h[1] == 1 && h[2] == 0 && h[3] == 0) ||
                   (h[0] == 0 && h[1] == 0 && h[2] == 1 && h[3] == 0x5c) ||
                   (h[0] == 0x1c && h[1] == 2 && h[2] == 0 && h[3] == 0) ||
                   (h[0] == 0 && h[1] == 0 && h[2] == 2 && h[3] == 0x1c))) {
        *fmt = EMOE_PREP_NIFTI; /* sizeof_hdr 348 or 540 */
        return EMOE_OK;
    }
    if (!gz && prep_has_suffix(path, ".bin")) {
        *fmt = (st.st_size % 3074 == 0 && st.st_size % 3073 != 0) ? EMOE_PREP_CIFAR100
                                                                   : EMOE_PREP_CIFAR10;
        return EMOE_OK;
    }
    int is_zip = n >= 4 && h[0] == 'P' && h[1] == 'K';
    int is_tar = n >= 262 && memcmp(h + 257, "ustar", 5) == 0;
    if (is_zip || is_tar || gz)
        return detect_archive(path, gz, fmt, err);
    return emoe_error_set(err, EMOE_EFORMAT, "%s: unknown format (not an archive, idx, CIFAR "
                          "batch or NIfTI file)", path);
}

int emoe_prep_read(const char *const *sources, size_t nsources,
                   const struct emoe_prep_options *o, struct emoe_dataset **out,
                   struct emoe_prep_result *res, struct emoe_error *err)
{
    *out = NULL;
    struct emoe_prep_result dummy;
    if (!res)
        res = &dummy;
    memset(res, 0, sizeof *res);
    if (o->channels != 0 && o->channels != 1 && o->channels != 3)
        return emoe_error_set(err, EMOE_EINVAL, "channels must be 1 or 3, not %d", o->channels);
    if (o->size < 0 || o->size > 65536)
        return emoe_error_set(err, EMOE_EINVAL, "size %d is out of range", o->size);
    if (o->split && strcmp(o->split, "train") && strcmp(o->split, "test") &&
        strcmp(o->split, "val"))
        return emoe_error_set(err, EMOE_EINVAL, "split must be train, test or val, not '%s'",
                              o->split);
    enum emoe_prep_format fmt = o->format;
    if (fmt != EMOE_PREP_SYNTHETIC && nsources == 0)
        return emoe_error_set(err, EMOE_EINVAL, "no source given");
    if (fmt == EMOE_PREP_AUTO) {
        int rc = detect(sources[0], &fmt, err);
        if (rc != EMOE_OK)
            return rc;
    }
    res->format = fmt;
    int rc;
    switch (fmt) {
    case EMOE_PREP_MNIST:
        rc = prep_read_mnist(sources, nsources, o, out, res, err);
        break;
    case EMOE_PREP_CIFAR10:
    case EMOE_PREP_CIFAR100:
        rc = prep_read_cifar(sources, nsources, fmt == EMOE_PREP_CIFAR100, o, out, res, err);
        break;
    case EMOE_PREP_IMAGEFOLDER:
    case EMOE_PREP_IMAGENET:
    case EMOE_PREP_TINYIMAGENET:
        rc = prep_read_imagefolder(sources, nsources, fmt, o, out, res, err);
        break;
    case EMOE_PREP_NIFTI:
        rc = prep_read_nifti(sources, nsources, o, out, res, err);
        break;
    case EMOE_PREP_SYNTHETIC:
        rc = prep_read_synthetic(o, out, err);
        break;
    default:
        /* every enum value is handled above; this guards a corrupted options struct */
        return emoe_error_set(err, EMOE_EINVAL, "%s%sunknown format '%s'",
                              nsources ? sources[0] : "", nsources ? ": " : "",
                              emoe_prep_format_name(fmt));
    }
    if (rc == EMOE_OK)
        res->images = (size_t)(*out)->images->shape[0];
    return rc;
}
