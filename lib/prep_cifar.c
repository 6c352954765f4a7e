/*
 * prep_cifar.c: the CIFAR-10 and CIFAR-100 binary readers, straight from the official
 * archives (cifar-10-binary.tar.gz, cifar-100-binary.tar.gz) streamed through
 * libarchive, or from extracted .bin files.  Records: label byte(s) then 1024 red,
 * 1024 green, 1024 blue bytes (32x32 planes, row-major).
 */
#include "config.h"
#include "data.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PIX 3072
#define MAX_NAMES_FILE (1u << 20)

struct cifar {
    int c100, coarse;
    size_t rec;                 /* record bytes: 3073 or 3074 */
    int nlabels;                /* 10, 100 or 20 */
    const struct emoe_prep_options *o;
    struct collector col;
    unsigned char hwc[PIX];
    size_t members;             /* batches read */
    char missing[8600];         /* where the class names were looked for, last */
};

static int want_member(const struct cifar *cf, const char *base)
{
    int test = cf->o->split && !strcmp(cf->o->split, "test");
    if (cf->c100)
        return !strcmp(base, test ? "test.bin" : "train.bin");
    if (test)
        return !strcmp(base, "test_batch.bin");
    return !strncmp(base, "data_batch_", 11) && prep_has_suffix(base, ".bin");
}

static const char *names_file(const struct cifar *cf)
{
    return !cf->c100 ? "batches.meta.txt"
                     : cf->coarse ? "coarse_label_names.txt" : "fine_label_names.txt";
}

/* One record into a slot. */
static int add_record(struct cifar *cf, const unsigned char *r, const char *path,
                      const char *member, uint64_t index, struct emoe_error *err)
{
    int label = cf->c100 ? r[cf->coarse ? 0 : 1] : r[0];
    if (label >= cf->nlabels)
        return emoe_error_set(err, EMOE_EFORMAT, "%s%s%s%s: record %llu: label %d is not below %d",
                              path, member ? ": member '" : "", member ? member : "",
                              member ? "'" : "", (unsigned long long)index, label, cf->nlabels);
    const unsigned char *p = r + (cf->c100 ? 2 : 1);
    for (int i = 0; i < 1024; i++) {
        cf->hwc[3 * i] = p[i];
        cf->hwc[3 * i + 1] = p[1024 + i];
        cf->hwc[3 * i + 2] = p[2048 + i];
    }
    size_t slot;
    int rc = collector_reserve(&cf->col, 1, &slot, err);
    if (rc != EMOE_OK)
        return rc;
    int cout = cf->o->channels ? cf->o->channels : 3;
    rc = prep_convert_pixels(cf->hwc, 32, 32, 3, cf->o->size, cout, collector_slot(&cf->col, slot),
                             err);
    if (rc != EMOE_OK)
        return rc;
    return collector_add(&cf->col, NULL, member ? member : prep_basename(path), index, label, slot,
                         NULL, err);
}

static int set_names(struct cifar *cf, const unsigned char *text, size_t n, const char *where,
                     struct emoe_error *err)
{
    char **lines;
    size_t nl;
    int rc = prep_split_lines((const char *)text, n, &lines, &nl, err);
    if (rc != EMOE_OK) {
        emoe_error_prefix(err, where);
        return rc;
    }
    if (nl < (size_t)cf->nlabels) {
        prep_free_strings(lines, nl);
        return emoe_error_set(err, EMOE_EFORMAT, "%s: %zu class names, expected %d", where, nl,
                              cf->nlabels);
    }
    rc = collector_set_names(&cf->col, lines, (size_t)cf->nlabels, err);
    prep_free_strings(lines, nl);
    return rc;
}

static int read_archive(struct cifar *cf, const char *path, struct emoe_error *err)
{
    struct archive *a;
    int rc = prep_archive_open(path, &a, err);
    if (rc != EMOE_OK)
        return rc;
    unsigned char *rec = malloc(cf->rec);
    if (!rec) {
        archive_read_free(a);
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    }
    struct archive_entry *e;
    int r;
    locale_t old = prep_utf8_enter();
    while ((r = archive_read_next_header(a, &e)) == ARCHIVE_OK || r == ARCHIVE_WARN) {
        const char *name = archive_entry_pathname(e);
        if (!name || archive_entry_filetype(e) != AE_IFREG)
            continue;
        const char *base = prep_basename(name);
        if (!strcmp(base, names_file(cf))) {
            unsigned char *t;
            size_t n;
            rc = prep_archive_read_member(a, path, name, -1, MAX_NAMES_FILE, &t, &n, err);
            if (rc != EMOE_OK)
                goto done;
            char where[4200];
            snprintf(where, sizeof where, "%s: member '%s'", path, name);
            rc = set_names(cf, t, n, where, err);
            free(t);
            if (rc != EMOE_OK)
                goto done;
            continue;
        }
        if (!want_member(cf, base))
            continue;
        cf->members++;
        if (archive_entry_size_is_set(e)) {
            int64_t sz = archive_entry_size(e);
            if (sz < 0 || (uint64_t)sz % cf->rec != 0) {
                rc = emoe_error_set(err, EMOE_EFORMAT,
                                    "%s: member '%s': %lld bytes is not a whole number of "
                                    "%zu-byte records", path, name, (long long)sz, cf->rec);
                goto done;
            }
        }
        size_t have = 0;
        uint64_t index = 0;
        for (;;) {
            la_ssize_t got = archive_read_data(a, rec + have, cf->rec - have);
            if (got < 0) {
                rc = prep_archive_error(a, path, err);
                goto done;
            }
            if (got == 0)
                break;
            have += (size_t)got;
            if (have == cf->rec) {
                rc = add_record(cf, rec, path, name, index++, err);
                if (rc != EMOE_OK)
                    goto done;
                have = 0;
                if (cf->o->progress && index % 1000 == 0)
                    cf->o->progress(cf->o->ctx, cf->col.nitems, 0);
            }
        }
        if (have) {
            rc = emoe_error_set(err, EMOE_EFORMAT, "%s: member '%s': truncated record %llu (%zu "
                                "of %zu bytes)", path, name, (unsigned long long)index, have,
                                cf->rec);
            goto done;
        }
    }
    if (r != ARCHIVE_EOF)
        rc = prep_archive_error(a, path, err);
    if (rc == EMOE_OK && !cf->col.names)
        snprintf(cf->missing, sizeof cf->missing, "%s: missing label file '%s' (the class "
                 "names) in this archive", path, names_file(cf));
done:
    prep_utf8_leave(old);
    free(rec);
    archive_read_free(a);
    return rc;
}

static int read_bin(struct cifar *cf, const char *path, struct emoe_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return emoe_error_set(err, errno == ENOENT ? EMOE_ENOTFOUND : EMOE_EIO, "%s: %s", path,
                              strerror(errno));
    unsigned char *rec = malloc(cf->rec);
    if (!rec) {
        fclose(f);
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    }
    int rc = EMOE_OK;
    uint64_t index = 0;
    cf->members++;
    for (;;) {
        size_t got = fread(rec, 1, cf->rec, f);
        if (got == 0) {
            if (ferror(f))
                rc = emoe_error_set(err, EMOE_EIO, "%s: %s", path, strerror(errno));
            break;
        }
        if (got < cf->rec) {
            rc = emoe_error_set(err, EMOE_EFORMAT, "%s: truncated record %llu (%zu of %zu bytes)",
                                path, (unsigned long long)index, got, cf->rec);
            break;
        }
        rc = add_record(cf, rec, path, NULL, index++, err);
        if (rc != EMOE_OK)
            break;
    }
    free(rec);
    fclose(f);
    if (rc != EMOE_OK || cf->col.names)
        return rc;
    /* class names from the file next to it (an error at the end when no source has one) */
    char p[4200];
    const char *slash = strrchr(path, '/');
    snprintf(p, sizeof p, "%.*s%s", slash ? (int)(slash - path + 1) : 0, path, names_file(cf));
    struct stat st;
    if (stat(p, &st) != 0) {
        snprintf(cf->missing, sizeof cf->missing, "%s: missing label file '%s' (the class "
                 "names, expected next to it)", path, p);
        return EMOE_OK;
    }
    unsigned char *t;
    size_t n;
    rc = prep_read_file(p, MAX_NAMES_FILE, &t, &n, err);
    if (rc != EMOE_OK)
        return rc;
    rc = set_names(cf, t, n, p, err);
    free(t);
    return rc;
}

int prep_read_cifar(const char *const *src, size_t n, int cifar100,
                    const struct emoe_prep_options *o, struct emoe_dataset **out,
                    struct emoe_prep_result *res, struct emoe_error *err)
{
    struct cifar *cf = calloc(1, sizeof *cf);
    if (!cf)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    cf->c100 = cifar100;
    cf->coarse = cifar100 && o->coarse;
    cf->rec = cifar100 ? 3074 : 3073;
    cf->nlabels = cifar100 ? (cf->coarse ? 20 : 100) : 10;
    cf->o = o;
    int cout = o->channels ? o->channels : 3;
    int side = o->size ? o->size : 32;
    int64_t dims[3] = {side, side, cout};
    int rc = collector_init(&cf->col, EMOE_U8, 3, dims, err);
    for (size_t i = 0; rc == EMOE_OK && i < n; i++) {
        size_t before = cf->members;
        if (prep_has_suffix(src[i], ".bin"))
            rc = read_bin(cf, src[i], err);
        else
            rc = read_archive(cf, src[i], err);
        if (rc == EMOE_OK && cf->members == before) {
            const char *want = cifar100 ? (o->split && !strcmp(o->split, "test") ? "test.bin"
                                                                                 : "train.bin")
                                        : (o->split && !strcmp(o->split, "test")
                                               ? "test_batch.bin"
                                               : "data_batch_*.bin");
            rc = emoe_error_set(err, EMOE_ENOTFOUND, "%s: no '%s' in this archive%s", src[i],
                                want, o->split ? "" : " (for another split use --split)");
        }
    }
    /* the issue: a missing label file is an error naming the file */
    if (rc == EMOE_OK && !cf->col.names)
        rc = emoe_error_set(err, EMOE_ENOTFOUND, "%s", cf->missing);
    if (rc == EMOE_OK)
        rc = collector_finish(&cf->col, o, out, err);
    else
        collector_free(&cf->col);
    (void)res;
    free(cf);
    return rc;
}
