/*
 * emoe.h: the public API of libemoe, the library behind the emoe-* tools.
 *
 * libemoe trains, evaluates and inspects Vision Transformers with
 * eigenbasis-guided mixture-of-experts routing (EMoE).  The math is specified in
 * METHOD.md; the file formats in emoe-formats(5).
 *
 * Conventions (every module follows them):
 *  - Every fallible function returns an int status: EMOE_OK (0) or a negative
 *    enum emoe_status code, and takes `struct emoe_error *err` as its last
 *    parameter.  On failure err->msg holds a message that starts with the file
 *    name when one is known ("train.npz: member 'x.npy': shape overflows size_t").
 *    err may be NULL.  The library never prints, exits or aborts on bad input.
 *  - On failure, output pointers are left NULL and nothing is leaked.
 *  - Opaque handles are made by emoe_x_new()/emoe_x_open() and released by
 *    emoe_x_free()/emoe_x_close(); both accept NULL.
 *  - A file name "-" means standard input or output where a function says so.
 *  - Files are written atomically: a temporary file in the same folder, fsync,
 *    rename over the target, fsync of the folder; on failure the temporary is
 *    removed and the target is untouched.
 *
 * Basic outline for reading a tensor file:
 *   1) emoe_npy_read() / emoe_npz_open() / emoe_safetensors_open()
 *   2) look at the tensors (struct emoe_tensor: dtype, ndim, shape, data)
 *   3) emoe_tensor_free() / emoe_npz_close() / emoe_safetensors_close()
 */
#ifndef EMOE_H
#define EMOE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define EMOE_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define EMOE_PRINTF(f, a)
#endif

/* ------------------------------------------------------------------ errors */

enum emoe_status {
    EMOE_OK = 0,
    EMOE_EIO = -1,       /* a read, write, open or rename failed (errno in message) */
    EMOE_EFORMAT = -2,   /* the input is malformed or not what it claims to be */
    EMOE_ENOMEM = -3,    /* an allocation failed */
    EMOE_ERANGE = -4,    /* a size or value is out of range (overflow, limits) */
    EMOE_EINVAL = -5,    /* the caller passed an invalid argument or configuration */
    EMOE_ENOTFOUND = -6, /* a named member, tensor or key does not exist */
    EMOE_EUNSUPPORTED = -7, /* valid input the library does not handle */
    EMOE_ENUMERIC = -8,  /* a non-finite value appeared in a computation */
    EMOE_EINTR = -9,     /* interrupted on request (a signal) */
};

/* Caller-owned; the library never allocates on the error path. */
struct emoe_error {
    int code;
    char msg[512];
};

/* A short constant description of a status code ("malformed input"). */
const char *emoe_strerror(int code);

/* Sets err (if not NULL) and returns code, so `return emoe_error_set(...)` works. */
int emoe_error_set(struct emoe_error *err, int code, const char *fmt, ...) EMOE_PRINTF(3, 4);

/* Prefixes err->msg with "prefix: " (used to add a file or member name). */
void emoe_error_prefix(struct emoe_error *err, const char *prefix);

/* --------------------------------------------------------- checked sizes */

/* *out = a * b or a + b; return EMOE_ERANGE (and leave *out alone) on overflow. */
int emoe_size_mul(size_t *out, size_t a, size_t b);
int emoe_size_add(size_t *out, size_t a, size_t b);

/* 64-byte aligned allocation of n bytes (n may be 0); free with emoe_free_aligned(). */
void *emoe_alloc_aligned(size_t n);
void emoe_free_aligned(void *p);

/* ----------------------------------------------------------------- tensors */

#define EMOE_MAX_DIMS 6

/* The dtypes of NumPy and safetensors that emoe reads.  F16 and BF16 are read and
 * converted (emoe_tensor_convert); emoe computes in F32. */
enum emoe_dtype {
    EMOE_BOOL,
    EMOE_U8,
    EMOE_I8,
    EMOE_I16,
    EMOE_U16,
    EMOE_I32,
    EMOE_U32,
    EMOE_I64,
    EMOE_U64,
    EMOE_F16,
    EMOE_BF16,
    EMOE_F32,
    EMOE_F64,
    EMOE_DTYPE_COUNT
};

size_t emoe_dtype_size(enum emoe_dtype t);
const char *emoe_dtype_name(enum emoe_dtype t); /* "f32", "u8", ... */
/* Parses emoe's own names ("f32") and the safetensors names ("F32"). */
int emoe_dtype_from_name(const char *name, enum emoe_dtype *out);

struct emoe_buffer; /* reference-counted storage (heap, mapping or borrowed) */

/*
 * A dense row-major (C order) tensor.  data is 64-byte aligned when the tensor owns
 * its memory; a tensor mapped from a file has the alignment the file gives it.
 * Fields are read-only for users; make tensors with the functions below.
 */
struct emoe_tensor {
    enum emoe_dtype dtype;
    int ndim;                       /* 0 .. EMOE_MAX_DIMS; 0 is a scalar */
    int64_t shape[EMOE_MAX_DIMS];   /* each >= 0 */
    size_t nelem;                   /* product of shape (1 for a scalar) */
    size_t nbytes;                  /* nelem * emoe_dtype_size(dtype) */
    void *data;
    struct emoe_buffer *buf;        /* private: keeps data alive */
};

/* A new zero-filled tensor.  The caller owns it and frees it with emoe_tensor_free(). */
int emoe_tensor_new(enum emoe_dtype dtype, int ndim, const int64_t *shape,
                    struct emoe_tensor **out, struct emoe_error *err);
/* A tensor over caller-owned memory, which must outlive it.  Not copied. */
int emoe_tensor_wrap(enum emoe_dtype dtype, int ndim, const int64_t *shape, void *data,
                     struct emoe_tensor **out, struct emoe_error *err);
/* A new tensor with the values of t converted to dtype (float <-> int rounding as C). */
int emoe_tensor_convert(const struct emoe_tensor *t, enum emoe_dtype dtype,
                        struct emoe_tensor **out, struct emoe_error *err);
void emoe_tensor_free(struct emoe_tensor *t);

/* Shape checks used by every parser: rank, non-negative dims, product and byte size
 * without overflow.  On success fills nelem and nbytes. */
int emoe_shape_check(enum emoe_dtype dtype, int ndim, const int64_t *shape,
                     size_t *nelem, size_t *nbytes, struct emoe_error *err);
/* "(60000, 32, 32, 3)" into buf; returns buf. */
char *emoe_shape_format(int ndim, const int64_t *shape, char *buf, size_t size);

/* Half precision to single (exact). */
float emoe_f16_to_f32(uint16_t h);
float emoe_bf16_to_f32(uint16_t h);
uint16_t emoe_f32_to_f16(float f); /* round to nearest even */

/* Summary statistics over all elements, in double: min, max, mean, std (population),
 * count of non-finite values. */
struct emoe_tensor_stats {
    double min, max, mean, std;
    size_t nonfinite;
};
int emoe_tensor_stats(const struct emoe_tensor *t, struct emoe_tensor_stats *out,
                      struct emoe_error *err);

/* ----------------------------------------------------------- atomic files */

/*
 * Atomic file writing: create a temporary next to path, write through f, then
 * emoe_atomic_commit() (fflush, fsync, close, rename, fsync of the folder) or
 * emoe_atomic_abort() (close and unlink).  path "-" writes to stdout directly
 * (commit flushes it; abort cannot take back what was written).
 */
struct emoe_atomic {
    FILE *f;            /* write here */
    char *path;         /* private */
    char *tmp_path;     /* private */
    int is_stdout;      /* private */
};
int emoe_atomic_open(struct emoe_atomic *a, const char *path, struct emoe_error *err);
int emoe_atomic_commit(struct emoe_atomic *a, struct emoe_error *err);
void emoe_atomic_abort(struct emoe_atomic *a);

/* ----------------------------------------------------------------- threads */

/*
 * One thread count shared by OpenBLAS and emoe's own loops (-j N).  n <= 0 means
 * the number of CPUs this process may run on.  Returns the count in effect.
 */
int emoe_threads_set(int n);
int emoe_threads_get(void);
int emoe_cpu_count(void);

/*
 * Run fn(ctx, i) for i in [0, n) on the thread pool, at most emoe_threads_get()
 * at once; returns when all are done.  While the loop runs, BLAS calls made by fn
 * use one thread each (no oversubscription).  Work items must be independent.
 */
typedef void (*emoe_parallel_fn)(void *ctx, size_t i);
void emoe_parallel_for(size_t n, emoe_parallel_fn fn, void *ctx);

/*
 * The OpenBLAS kernel.  Debian's OpenBLAS (0.3.21) does not recognise recent
 * AVX-512 CPUs and falls back to a kernel about 5x slower.  This returns the
 * OPENBLAS_CORETYPE value that would give the fast kernel on this CPU ("SkylakeX"),
 * or NULL when the current kernel is already right, the CPU has no AVX-512 or the
 * user set OPENBLAS_CORETYPE.  OpenBLAS reads the variable only when it loads, so
 * a program applies it by setting it and re-executing itself (the tools do this
 * in emoe_tool_init).
 */
const char *emoe_blas_preferred_coretype(void);
const char *emoe_blas_corename(void); /* the kernel in use, e.g. "Zen" */

/* ----------------------------------------------------------------- version */

const char *emoe_version(void); /* "0.1.0" */
/* "libemoe 0.1.0, OpenBLAS 0.3.21 (Zen), libarchive 3.6.2, libjpeg-turbo 2.1.5, zlib 1.2.13" */
const char *emoe_version_details(void);

/* -------------------------------------------------------------------- .npy */

/*
 * NumPy .npy (format versions 1.0, 2.0, 3.0).  Reading accepts little- and
 * big-endian data (swapped to native), C and Fortran order (converted to C order),
 * the dtypes above; it rejects object dtypes, structured dtypes and anything it
 * cannot represent.  Writing produces version 1.0 exactly as numpy.save does
 * (header padded with spaces and a newline to a multiple of 64 bytes), or 2.0
 * when the header does not fit in 65535 bytes.
 */

/* Read path ("-" is stdin, read as a stream).  Large native-order C-order regular
 * files are memory-mapped (read-only, private) instead of copied. */
int emoe_npy_read(const char *path, struct emoe_tensor **out, struct emoe_error *err);
/* Read from a stream (need not be seekable); name is used in messages. */
int emoe_npy_read_stream(FILE *f, const char *name, struct emoe_tensor **out,
                         struct emoe_error *err);
/* Parse an in-memory .npy into a new tensor (the data is copied). */
int emoe_npy_read_memory(const void *buf, size_t size, const char *name,
                         struct emoe_tensor **out, struct emoe_error *err);
/* Write atomically to path ("-" is stdout). */
int emoe_npy_write(const char *path, const struct emoe_tensor *t, struct emoe_error *err);
int emoe_npy_write_stream(FILE *f, const char *name, const struct emoe_tensor *t,
                          struct emoe_error *err);
/* The .npy header (magic through the newline) numpy writes for t; returns its length,
 * 0 on error.  buf may be NULL to ask for the length. */
size_t emoe_npy_header(const struct emoe_tensor *t, char *buf, size_t size);

/* Parsed .npy header, for readers that place the data themselves (npz). */
struct emoe_npy_info {
    enum emoe_dtype dtype;
    int ndim;
    int64_t shape[EMOE_MAX_DIMS];
    int fortran_order;
    int big_endian;         /* data needs a byte swap on this machine */
    size_t header_len;      /* bytes before the data */
    size_t nelem, nbytes;
};
/* Parse the header at buf (size bytes available, at least the whole header). */
int emoe_npy_parse_header(const void *buf, size_t size, const char *name,
                          struct emoe_npy_info *info, struct emoe_error *err);

/* -------------------------------------------------------------------- .npz */

/*
 * NumPy .npz: a zip (stored or deflated members, Zip64) of NAME.npy members,
 * read and written through libarchive.  Member names are given without ".npy".
 * Stored members of a file are memory-mapped where the data is aligned for the
 * dtype, and otherwise read straight into their tensor: a dataset is never held
 * twice in memory.
 */
struct emoe_npz;
/* path "-" reads stdin once (members are read as they stream by). */
int emoe_npz_open(const char *path, struct emoe_npz **out, struct emoe_error *err);
size_t emoe_npz_count(const struct emoe_npz *z);
const char *emoe_npz_name(const struct emoe_npz *z, size_t i);
/* Header information without reading the data. */
int emoe_npz_info(const struct emoe_npz *z, const char *name, struct emoe_npy_info *info,
                  struct emoe_error *err);
/* The tensor for a member; EMOE_ENOTFOUND names the file and the member. */
int emoe_npz_read(struct emoe_npz *z, const char *name, struct emoe_tensor **out,
                  struct emoe_error *err);
void emoe_npz_close(struct emoe_npz *z);

/* Writing: open (atomic; "-" is stdout), add members, then commit or abort. */
struct emoe_npz_writer;
enum emoe_npz_compression { EMOE_NPZ_STORED = 0, EMOE_NPZ_DEFLATED = 1 };
int emoe_npz_writer_open(const char *path, enum emoe_npz_compression c,
                         struct emoe_npz_writer **out, struct emoe_error *err);
int emoe_npz_writer_add(struct emoe_npz_writer *w, const char *name,
                        const struct emoe_tensor *t, struct emoe_error *err);
/* Commit writes the file and frees w; abort removes the temporary and frees w. */
int emoe_npz_writer_commit(struct emoe_npz_writer *w, struct emoe_error *err);
void emoe_npz_writer_abort(struct emoe_npz_writer *w);

/* ------------------------------------------------------------ .safetensors */

/*
 * safetensors: u64 little-endian header length N, N bytes of JSON, the data.
 * Reading maps the file and validates it as the reference reader does (see
 * emoe-formats(5)).  Tensors are views into the mapping that stay valid after
 * emoe_safetensors_close() until they are freed themselves.
 */
struct emoe_safetensors;
int emoe_safetensors_open(const char *path, struct emoe_safetensors **out,
                          struct emoe_error *err);
/* Tensors in data order; metadata in header order. */
size_t emoe_safetensors_count(const struct emoe_safetensors *st);
const char *emoe_safetensors_name(const struct emoe_safetensors *st, size_t i);
int emoe_safetensors_get(struct emoe_safetensors *st, const char *name,
                         struct emoe_tensor **out, struct emoe_error *err);
size_t emoe_safetensors_metadata_count(const struct emoe_safetensors *st);
const char *emoe_safetensors_metadata_key(const struct emoe_safetensors *st, size_t i);
const char *emoe_safetensors_metadata_value(const struct emoe_safetensors *st, size_t i);
/* NULL when absent. */
const char *emoe_safetensors_metadata_get(const struct emoe_safetensors *st, const char *key);
void emoe_safetensors_close(struct emoe_safetensors *st);

struct emoe_named_tensor {
    const char *name;
    const struct emoe_tensor *tensor;
};
struct emoe_kv {
    const char *key;
    const char *value;
};
/*
 * Write atomically, byte for byte what Python's safetensors writes: tensors sorted
 * by dtype (descending alignment order) then name, compact JSON with __metadata__
 * first (keys sorted), header padded with spaces to a multiple of 8.  Names must be
 * unique.  nmeta may be 0 (no __metadata__).
 */
int emoe_safetensors_write(const char *path, const struct emoe_named_tensor *tensors,
                           size_t n, const struct emoe_kv *meta, size_t nmeta,
                           struct emoe_error *err);

/* ------------------------------------------------------------- file kinds */

enum emoe_file_kind { EMOE_FILE_UNKNOWN, EMOE_FILE_NPY, EMOE_FILE_NPZ, EMOE_FILE_SAFETENSORS };
/* Guess from the first bytes (at least 16 should be given). */
enum emoe_file_kind emoe_file_kind_detect(const void *head, size_t n);

/* ------------------------------------------------------------- JSON text */
/* @json (safetensors header parser helpers exposed for logs, if any) */

/* ------------------------------------------------------ layers (ViT engine) */
/* @nn */

/* ------------------------------------------------------ datasets and images */
/* @data */

#ifdef __cplusplus
}
#endif
#endif /* EMOE_H */
