/*
 * prep_archive.c: archives read through a read-only mapping of the file, and their
 * members' data seen in place.
 *
 * libarchive reads from memory as well as from a file.  Given the whole mapping, the
 * data blocks it returns for stored (uncompressed) members are pointers into the
 * mapping, so a member can be decoded where it lies instead of being copied out first.
 * For a zip the streaming reader is used: it reads the local headers in order, while
 * the seekable one first parses the whole central directory (for CIFAR-10's 60,000
 * members, on one thread before any image can be decoded) and then costs more per
 * member, skipped or not.  The streaming reader does not look at the central directory,
 * so a zip is only read that way when it starts with a local header and ends with an
 * end-of-central-directory record (a zip cut short, or with a stub in front, takes the
 * seekable reader and its error messages).  libarchive checks each member's CRC-32 in
 * both.
 *
 * The mapping is of the file (the page cache), not a copy of the archive.
 */
#define _GNU_SOURCE
#include "config.h"
#include "data.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* An end-of-central-directory record in the last 64 KiB + 22 bytes (the comment after
 * it is at most 65,535 bytes). */
static int zip_has_end_record(const unsigned char *map, size_t size)
{
    size_t lo = size > 65557 ? size - 65557 : 0;
    for (size_t i = size - 22 + 1; i-- > lo;)
        if (map[i] == 'P' && map[i + 1] == 'K' && map[i + 2] == 5 && map[i + 3] == 6)
            return 1;
    return 0;
}

static int open_memory(struct prep_mapped_archive *m, int zip, struct emoe_error *err)
{
    struct archive *a = archive_read_new();
    if (!a)
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", m->path);
    if (zip) {
        archive_read_support_format_zip_streamable(a);
    } else {
        archive_read_support_filter_all(a);
        archive_read_support_format_all(a);
    }
    if (archive_read_open_memory(a, m->map, m->map_size) != ARCHIVE_OK) {
        int rc = prep_archive_error(a, m->path, err);
        archive_read_free(a);
        return rc;
    }
    m->a = a;
    return EMOE_OK;
}

int prep_archive_open_mapped(const char *path, struct prep_mapped_archive *m,
                             struct emoe_error *err)
{
    memset(m, 0, sizeof *m);
    m->path = path;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size >= 22 &&
        (uint64_t)st.st_size <= SIZE_MAX / 2) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p != MAP_FAILED) {
            m->map = p;
            m->map_size = (size_t)st.st_size;
            madvise(p, m->map_size, MADV_SEQUENTIAL);
        }
    }
    if (fd >= 0)
        close(fd);
    if (m->map) {
        int zip = memcmp(m->map, "PK\3\4", 4) == 0;
        if (!zip || zip_has_end_record(m->map, m->map_size))
            return open_memory(m, zip, err);
        munmap((void *)m->map, m->map_size);
        m->map = NULL;
        m->map_size = 0;
    }
    return prep_archive_open(path, &m->a, err); /* not mappable, or a zip for the seekable reader */
}

void prep_archive_close_mapped(struct prep_mapped_archive *m)
{
    if (m->a)
        archive_read_free(m->a);
    if (m->map)
        munmap((void *)m->map, m->map_size);
    memset(m, 0, sizeof *m);
}

int prep_archive_member_view(struct prep_mapped_archive *m, const char *member, int64_t hint,
                             size_t max, const unsigned char **data, size_t *size,
                             unsigned char **owned, struct emoe_error *err)
{
    *data = NULL;
    *size = 0;
    *owned = NULL;
    if (!m->map)
        goto copy;
    const void *buf;
    size_t len;
    la_int64_t off;
    int r = archive_read_data_block(m->a, &buf, &len, &off);
    if (r == ARCHIVE_EOF) {
        *data = m->map; /* empty: any valid pointer */
        return EMOE_OK;
    }
    if (r != ARCHIVE_OK)
        return prep_archive_error(m->a, m->path, err);
    if (len > max)
        return emoe_error_set(err, EMOE_ERANGE, "%s: member '%s' is larger than %zu bytes",
                              m->path, member, max);
    const unsigned char *p = buf;
    int in_map = off == 0 && p >= m->map && len <= m->map_size &&
                 (size_t)(p - m->map) <= m->map_size - len;
    size_t cap = in_map ? 0 : len + 1;
    unsigned char *q = in_map ? NULL : malloc(cap + 1);
    if (!in_map && !q)
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", m->path);
    size_t n = 0;
    if (!in_map) {
        if (off != 0) {
            free(q);
            return emoe_error_set(err, EMOE_EFORMAT, "%s: member '%s' has holes", m->path,
                                  member);
        }
        memcpy(q, p, len);
        n = len;
    }
    /* the rest: usually nothing (libarchive then checks the CRC-32); a member in more
     * than one block is copied out whole */
    for (;;) {
        const void *b2;
        size_t l2;
        r = archive_read_data_block(m->a, &b2, &l2, &off);
        if (r == ARCHIVE_EOF)
            break;
        if (r != ARCHIVE_OK) {
            free(q);
            return prep_archive_error(m->a, m->path, err);
        }
        if (l2 == 0)
            continue;
        if (in_map) { /* switch to a copy */
            in_map = 0;
            cap = len + l2 + 1;
            if (!(q = malloc(cap + 1)))
                return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", m->path);
            memcpy(q, p, len);
            n = len;
        }
        if ((uint64_t)off != n) {
            free(q);
            return emoe_error_set(err, EMOE_EFORMAT, "%s: member '%s' has holes", m->path,
                                  member);
        }
        if (l2 > max - n) {
            free(q);
            return emoe_error_set(err, EMOE_ERANGE, "%s: member '%s' is larger than %zu bytes",
                                  m->path, member, max);
        }
        if (n + l2 > cap) {
            size_t nc = cap * 2 > n + l2 ? cap * 2 : n + l2;
            if (nc > max)
                nc = max;
            unsigned char *g = realloc(q, nc + 1);
            if (!g) {
                free(q);
                return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", m->path);
            }
            q = g;
            cap = nc;
        }
        memcpy(q + n, b2, l2);
        n += l2;
    }
    if (in_map) {
        *data = p;
        *size = len;
        return EMOE_OK;
    }
    q[n] = 0;
    *data = *owned = q;
    *size = n;
    return EMOE_OK;
copy:;
    unsigned char *c;
    int rc = prep_archive_read_member(m->a, m->path, member, hint, max, &c, size, err);
    if (rc == EMOE_OK)
        *data = *owned = c;
    return rc;
}
