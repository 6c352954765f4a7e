/*
 * npy_internal.h: the .npy reader and writer pieces lib/npz.c shares with lib/npy.c.
 * Private (not installed).  The reader works on a byte source so one parser serves
 * files, streams, memory and zip members.
 */
#ifndef EMOE_NPY_INTERNAL_H
#define EMOE_NPY_INTERNAL_H

#include "internal.h"

/* HEADER_LEN above this is rejected (numpy.load's own default limit). */
#define NPY_HEADER_LIMIT 10000
/* Magic, version and header length take at most this many bytes. */
#define NPY_PREFIX_MAX 12
/* Room for a whole header. */
#define NPY_HEADER_BUF (NPY_PREFIX_MAX + NPY_HEADER_LIMIT)
/* Arrays at least this large are memory-mapped when the layout allows (16 MiB). */
#define NPY_MMAP_THRESHOLD ((size_t)16 << 20)

/*
 * A byte source.  read() stores up to n bytes at buf and their count in *got; fewer
 * than n only at the end of the input.  It returns EMOE_OK or an error (message
 * already prefixed with the source name).  name prefixes every message, e.g.
 * "d.npz: member 'images.npy'".
 */
struct npy_source {
    int (*read)(void *ctx, void *buf, size_t n, size_t *got, struct emoe_error *err);
    void *ctx;
    const char *name;
};

/* A source over memory. */
struct npy_mem {
    const unsigned char *p;
    size_t n, pos;
};
int npy_mem_read(void *ctx, void *buf, size_t n, size_t *got, struct emoe_error *err);

/* Read and parse the header; buf (NPY_HEADER_BUF bytes) receives the raw header
 * bytes, info->header_len of them. */
int npy_read_header(struct npy_source *src, unsigned char *buf, struct emoe_npy_info *info,
                    struct emoe_error *err);
/* Read the data that follows a header into a new C-order, native-order tensor. */
int npy_read_tensor(struct npy_source *src, const struct emoe_npy_info *info,
                    struct emoe_tensor **out, struct emoe_error *err);
/* Read the data of a '|S<n>' header as strings (see emoe_npy_read_strings). */
int npy_read_strings(struct npy_source *src, const struct emoe_npy_info *info, char ***out,
                     size_t *n, struct emoe_error *err);
/* Expect the end of the input; "N unexpected bytes after the data" otherwise. */
int npy_expect_end(struct npy_source *src, struct emoe_error *err);
/* The whole .npy (header and data) numpy writes for a 1-D '|S<w>' array of strs;
 * malloc'd into *out. */
int npy_strings_encode(const char *const *strs, size_t n, const char *name,
                       unsigned char **out, size_t *size, struct emoe_error *err);
/* True when the data of info can be used in place (native order, C order or a layout
 * where the two agree). */
int npy_info_is_native(const struct emoe_npy_info *info);

#endif
