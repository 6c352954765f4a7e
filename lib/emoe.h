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
 * One thread count for all of emoe's work (-j N): its own loops and its matrix
 * products, which it splits over the same threads (OpenBLAS itself is kept at one
 * thread, so the two never oversubscribe the CPUs).  n <= 0 means the number of
 * CPUs this process may run on.  Returns the count in effect.
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
 * NumPy .npy (format versions 1.0, 2.0, 3.0; lib/npy.c).  Reading accepts little-
 * and big-endian data (swapped to native), C and Fortran order (converted to C
 * order; Fortran order needs a temporary second copy) and the descrs '<f2' '<f4'
 * '<f8' '|u1' '|i1' '<i2' '<u2' '<i4' '<u4' '<i8' '<u8' '|b1' with any byte-order
 * character ('<', '>', '=', '|').  The header must be exactly numpy's dict literal
 * ({'descr': ..., 'fortran_order': ..., 'shape': (...), }: the three keys once each,
 * any order, optional trailing commas, a 1-tuple needs its comma), at most 10000
 * bytes (numpy.load's own limit) and end with a newline.  Rejected: object ('|O'),
 * structured, unicode and other dtypes, rank above EMOE_MAX_DIMS, negative dims,
 * shapes whose size overflows, truncated headers or data, and (for files, memory
 * and npz members) bytes after the data.  Writing produces version 1.0 exactly as
 * numpy.save does (numpy 1.24: keys sorted, 21 - digits(shape[0]) spaces reserved
 * for growth, padded with spaces and a newline to a multiple of 64 bytes), or 2.0
 * when the header does not fit in 65535 bytes.  bf16 has no numpy dtype and is not
 * written (EMOE_EUNSUPPORTED).
 */

/* Read path ("-" is stdin, read as a stream, then end of input is expected).
 * Regular files of at least 16 MiB whose data is native-order, C-order and aligned
 * for the dtype (numpy's 64-byte header makes it so) are memory-mapped (read-only,
 * private) instead of copied: the tensor's data must not be written.  The caller
 * owns the result and releases it with emoe_tensor_free(). */
int emoe_npy_read(const char *path, struct emoe_tensor **out, struct emoe_error *err);
/* Read one array from a stream (need not be seekable) and stop right after its data,
 * so arrays saved one after another can be read in turn; name is used in messages. */
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
 * 0 on error (bf16).  buf may be NULL to ask for the length; otherwise size must be
 * at least the length. */
size_t emoe_npy_header(const struct emoe_tensor *t, char *buf, size_t size);

/*
 * Fixed-width byte strings ('|S<n>' arrays, e.g. a dataset's `classes`) have no
 * emoe_dtype; they are read and written as arrays of C strings.  Reading accepts
 * any shape (flattened in C order) and strips the NUL padding as numpy does; an item
 * with a NUL byte before its last non-NUL byte is rejected.  *out is one allocation:
 * *n pointers followed by the NUL-terminated strings; release it with
 * emoe_npy_strings_free().  Writing makes a 1-D '|S<w>' array, w the longest length
 * in bytes (at least 1), byte for byte as numpy.save.
 */
int emoe_npy_read_strings(const char *path, char ***out, size_t *n, struct emoe_error *err);
int emoe_npy_write_strings(const char *path, const char *const *strs, size_t n,
                           struct emoe_error *err);
void emoe_npy_strings_free(char **strs);

/* Parsed .npy header, for readers that place the data themselves (npz). */
struct emoe_npy_info {
    enum emoe_dtype dtype;  /* EMOE_U8 for a string array */
    int ndim;
    int64_t shape[EMOE_MAX_DIMS];
    int fortran_order;
    int big_endian;         /* data needs a byte swap on this machine */
    int is_string;          /* '|S<n>': fixed-width byte strings */
    size_t itemsize;        /* bytes per element (n for '|S<n>') */
    size_t header_len;      /* bytes before the data */
    size_t nelem, nbytes;
};
/* Parse the header at buf (size bytes available, at least the whole header). */
int emoe_npy_parse_header(const void *buf, size_t size, const char *name,
                          struct emoe_npy_info *info, struct emoe_error *err);

/* -------------------------------------------------------------------- .npz */

/*
 * NumPy .npz (lib/npz.c): a zip (stored or deflated members, Zip64) of NAME.npy
 * members, read and written through libarchive.  Member names are given without
 * ".npy"; members whose names do not end in ".npy" are ignored; duplicate names,
 * more than 10000 members, a malformed .npy header and a member whose size disagrees
 * with its header are errors at open.  A zip without entries (what numpy.savez writes
 * for no arrays, and libarchive does not recognise) is an empty archive.  Opening a file reads the zip directory and every member's .npy
 * header, not the data.  emoe_npz_read() then reads one member straight into its
 * tensor (a dataset is never held twice in memory); a stored member of at least
 * 16 MiB whose data is native-order, C-order and aligned for its dtype in the file
 * is memory-mapped instead (read-only; its CRC is then not checked).  Messages name
 * the file and the member: "d.npz: member 'images.npy': truncated data".
 */
struct emoe_npz;
/* path "-" reads stdin once, as emoe_npz_open_stream(). */
int emoe_npz_open(const char *path, struct emoe_npz **out, struct emoe_error *err);
/* Read a zip stream (need not be seekable) to its end, every member into memory. */
int emoe_npz_open_stream(FILE *f, const char *name, struct emoe_npz **out,
                         struct emoe_error *err);
size_t emoe_npz_count(const struct emoe_npz *z);
/* Member names in archive order, without ".npy"; NULL when i is out of range. */
const char *emoe_npz_name(const struct emoe_npz *z, size_t i);
/* Header information without reading the data. */
int emoe_npz_info(const struct emoe_npz *z, const char *name, struct emoe_npy_info *info,
                  struct emoe_error *err);
/* The tensor for a member; EMOE_ENOTFOUND names the file and the member.  The caller
 * owns the result (emoe_tensor_free); it stays valid after emoe_npz_close(). */
int emoe_npz_read(struct emoe_npz *z, const char *name, struct emoe_tensor **out,
                  struct emoe_error *err);
/* A '|S<n>' member as strings (see emoe_npy_read_strings; emoe_npy_strings_free). */
int emoe_npz_read_strings(struct emoe_npz *z, const char *name, char ***out, size_t *n,
                          struct emoe_error *err);
void emoe_npz_close(struct emoe_npz *z);

/* Writing: open (atomic; "-" is stdout), add members (NAME.npy, in order, each
 * written as emoe_npy_write would; Zip64 only when a size needs it), then commit or
 * abort.  Names must be unique and non-empty.  After a failed add, commit fails. */
struct emoe_npz_writer;
enum emoe_npz_compression { EMOE_NPZ_STORED = 0, EMOE_NPZ_DEFLATED = 1 };
int emoe_npz_writer_open(const char *path, enum emoe_npz_compression c,
                         struct emoe_npz_writer **out, struct emoe_error *err);
int emoe_npz_writer_add(struct emoe_npz_writer *w, const char *name,
                        const struct emoe_tensor *t, struct emoe_error *err);
/* A 1-D '|S<w>' member (see emoe_npy_write_strings). */
int emoe_npz_writer_add_strings(struct emoe_npz_writer *w, const char *name,
                                const char *const *strs, size_t n, struct emoe_error *err);
/* Commit writes the file and frees w; abort removes the temporary and frees w. */
int emoe_npz_writer_commit(struct emoe_npz_writer *w, struct emoe_error *err);
void emoe_npz_writer_abort(struct emoe_npz_writer *w);

/* ------------------------------------------------------------ .safetensors */

/*
 * safetensors: u64 little-endian header length N, N bytes of JSON, the data.
 * Reading maps the file (a pipe or "-", standard input, is read into memory) and
 * validates it as the reference reader (huggingface/safetensors) does: at least
 * 8 bytes; N <= 100,000,000 and within the file (any N, padded or not); the
 * header valid UTF-8 and one JSON object (strict RFC 8259, nesting <= 128);
 * "__metadata__" optional, an object of strings (null counts as absent); every
 * other key a tensor {"dtype", "shape", "data_offsets"} (other keys in an entry
 * are ignored, as the reference ignores them); dtypes BOOL U8 I8 I16 U16 F16 BF16
 * I32 U32 F32 F64 I64 U64 (the reference's FP8/FP4/FP6/C64 give
 * EMOE_EUNSUPPORTED "unsupported dtype 'F8_E4M3'"); shape and offsets
 * non-negative integers (int64), rank <= 6, sizes overflow-checked; sorted by
 * offsets the tensors tile the data exactly (first at 0, no gap, no overlap,
 * END - BEGIN == nelem * dtype size, 8 + N + last END == file size).  Rank-0 and
 * empty tensors are fine.  Stricter than the reference: duplicate keys (tensor
 * names) anywhere in the header, and NUL characters in names or metadata, are
 * rejected.  Errors name the file and the tensor ("m.safetensors: tensor
 * 'vit.cls_token': data_offsets [0, 12] do not match shape [1, 1, 4] of F32
 * (16 bytes)").  Big-endian hosts get EMOE_EUNSUPPORTED.
 */
struct emoe_safetensors;
/* path "-" reads standard input ("<stdin>" in messages). */
int emoe_safetensors_open(const char *path, struct emoe_safetensors **out,
                          struct emoe_error *err);
/* Tensors in data order (index i < count; NULL past the end). */
size_t emoe_safetensors_count(const struct emoe_safetensors *st);
const char *emoe_safetensors_name(const struct emoe_safetensors *st, size_t i);
/*
 * The tensor called name (EMOE_ENOTFOUND "m.safetensors: no tensor 'x'").  It is a
 * view into the mapping that stays valid after emoe_safetensors_close() until it
 * is freed itself; when the header length leaves its data misaligned for the
 * dtype (files not written by the reference), it is an aligned copy instead.
 * Read-only either way (the mapping is private and read-only).
 */
int emoe_safetensors_get(struct emoe_safetensors *st, const char *name,
                         struct emoe_tensor **out, struct emoe_error *err);
/* Metadata in header order (strings owned by st, valid until close). */
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
 * Write atomically (path "-" is stdout), byte for byte what Python's safetensors
 * (safetensors.torch.save_file) writes for the same tensors and metadata:
 * tensors sorted by dtype, descending in the reference's Dtype order (BOOL < U8 <
 * I8 < I16 < U16 < F16 < BF16 < I32 < U32 < F32 < F64 < I64 < U64), then by name
 * (bytewise); data contiguous in that order, little-endian as in memory; compact
 * JSON with "__metadata__" first, then {"dtype":"F32","shape":[..],
 * "data_offsets":[b,e]} per tensor in data order, strings escaped as serde_json
 * does; header padded with spaces to a multiple of 8.
 * meta NULL writes no "__metadata__" (Python's metadata=None); meta non-NULL with
 * nmeta 0 writes "__metadata__":{} (metadata={}).  Metadata keys are written
 * sorted (bytewise): the reference keeps metadata in a HashMap, so its key order
 * is arbitrary when there are several keys and sorted is one of its possible
 * outputs.  Names and metadata keys must be unique, valid UTF-8 strings; a tensor
 * may not be called "__metadata__"; the empty name is allowed, as in the reference.
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

/*
 * A small JSON writer for JSON Lines logs and --json output (the safetensors
 * writer uses it too).  Values are appended to a growable, NUL-terminated buffer;
 * commas and colons are put in automatically, and nothing else (compact output,
 * like serde_json's to_string).  Strings must be valid UTF-8 and are escaped
 * exactly as serde_json escapes them: \" \\ \b \f \n \r \t, other bytes below
 * 0x20 as \u00XX with lower-case hex, everything else (DEL, '/', non-ASCII) raw.
 * Numbers never depend on the locale: emoe_json_double() writes the shortest
 * "%.Ng" (N <= 17) that reads back as the same double, emoe_json_float() the
 * shortest (N <= 9) that reads back as the same float ("0.1", "1e-07", "3");
 * NaN and infinities are written as null (as serde_json does).
 *
 * Errors are sticky: every function returns EMOE_OK or the first failure
 * (EMOE_ENOMEM; EMOE_EINVAL for misuse: a value where a key is needed, a key
 * outside an object, an unbalanced end, a second top-level value, invalid UTF-8,
 * nesting deeper than EMOE_JSON_OUT_MAX_DEPTH), and after a failure does nothing.
 * emoe_json_out_finish() reports it with a message.
 *
 *   struct emoe_json_out o;
 *   emoe_json_out_init(&o);
 *   emoe_json_begin_object(&o);
 *   emoe_json_key(&o, "step"); emoe_json_int(&o, 10);
 *   emoe_json_key(&o, "loss"); emoe_json_float(&o, loss);
 *   emoe_json_end_object(&o);
 *   rc = emoe_json_out_write_line(&o, stdout, "<stdout>", err); // {"step":10,"loss":2.3}\n
 *   emoe_json_out_free(&o);
 */
#define EMOE_JSON_OUT_MAX_DEPTH 64
struct emoe_json_out {
    char *buf;          /* the text so far, NUL-terminated; NULL until something is written */
    size_t len;         /* its length in bytes */
    int status;         /* EMOE_OK or the first failure */
    size_t cap;         /* private */
    int depth;          /* private */
    int done;           /* private: a complete top-level value was written */
    unsigned char state[EMOE_JSON_OUT_MAX_DEPTH]; /* private */
};
void emoe_json_out_init(struct emoe_json_out *o);
/* Empty o for the next record (keeps its memory, clears a failure). */
void emoe_json_out_reset(struct emoe_json_out *o);
void emoe_json_out_free(struct emoe_json_out *o);
int emoe_json_begin_object(struct emoe_json_out *o);
int emoe_json_end_object(struct emoe_json_out *o);
int emoe_json_begin_array(struct emoe_json_out *o);
int emoe_json_end_array(struct emoe_json_out *o);
/* The next member's key (NUL-terminated; _n: n bytes, may contain NUL). */
int emoe_json_key(struct emoe_json_out *o, const char *key);
int emoe_json_key_n(struct emoe_json_out *o, const char *key, size_t n);
int emoe_json_string(struct emoe_json_out *o, const char *s);
int emoe_json_string_n(struct emoe_json_out *o, const char *s, size_t n);
int emoe_json_int(struct emoe_json_out *o, int64_t v);
int emoe_json_uint(struct emoe_json_out *o, uint64_t v);
int emoe_json_double(struct emoe_json_out *o, double v);
int emoe_json_float(struct emoe_json_out *o, float v);
int emoe_json_bool(struct emoe_json_out *o, int v);
int emoe_json_null(struct emoe_json_out *o);
/* EMOE_OK when o holds exactly one complete value; otherwise the failure, with a
 * message in err. */
int emoe_json_out_finish(struct emoe_json_out *o, struct emoe_error *err);
/* Finish, write the text and '\n' to f (one JSON Lines record; name is used in
 * messages), then reset o. */
int emoe_json_out_write_line(struct emoe_json_out *o, FILE *f, const char *name,
                             struct emoe_error *err);

/* ------------------------------------------------------ layers (ViT engine) */
/* @nn */
/*
 * The layer kernels of the ViT engine: forward/backward pairs on caller-owned
 * float buffers (the style of llm.c's train_gpt2.c).  Outputs come first, then
 * inputs, then sizes.  Backward functions ACCUMULATE (+=) into every gradient
 * buffer (dx, dw, db, ...); the caller zeroes them.  Values cached by a forward
 * (mean, rstd, attention probabilities) are explicit arguments.  Kernels never
 * allocate: where they need room the caller passes a scratch buffer whose size is
 * given.  A gradient pointer that is NULL is not computed (frozen weights get no
 * weight-gradient GEMM; the first layer needs no dx).  All buffers are row-major.
 * Results are reproducible for a given thread count (no racy accumulation; emoe's
 * own loops give the same bits for any count, sgemm may round differently).
 *
 * Dimension letters: B batch (images), T tokens per image (1 + N), N patches per
 * image (or rows of a matrix), D channels (embed dim), H heads, hd = D/H head dim,
 * Din/Dout input/output features of a linear, C image channels, P patch size,
 * Hi/Wi/Dz image height/width/depth, K classes.
 * The math is METHOD.md section 1 (timm ViT) and section 7 (3-D).
 */

/* y = x W^T + b.  w is PyTorch's Linear layout; b may be NULL (no bias). */
void emoe_linear_forward(float *y,        /* [N, Dout] */
                         const float *x,  /* [N, Din] */
                         const float *w,  /* [Dout, Din] */
                         const float *b,  /* [Dout] or NULL */
                         int N, int Din, int Dout);
/* dx += dy W, dw += dy^T x, db += sum over rows of dy.  Each of dx, dw, db may be
 * NULL to skip it. */
void emoe_linear_backward(float *dx,       /* [N, Din] or NULL */
                          float *dw,       /* [Dout, Din] or NULL */
                          float *db,       /* [Dout] or NULL */
                          const float *dy, /* [N, Dout] */
                          const float *x,  /* [N, Din] (may be NULL when dw is NULL) */
                          const float *w,  /* [Dout, Din] (may be NULL when dx is NULL) */
                          int N, int Din, int Dout);

/* LayerNorm over the last dimension, eps EMOE_LN_EPS (timm's ViT: 1e-6). */
#define EMOE_LN_EPS 1e-6f
void emoe_layernorm_forward(float *y,       /* [N, D] */
                            float *mean,    /* [N], saved for backward */
                            float *rstd,    /* [N], saved for backward */
                            const float *x, /* [N, D] */
                            const float *w, /* [D] */
                            const float *b, /* [D] */
                            int N, int D);
void emoe_layernorm_backward(float *dx,         /* [N, D] or NULL */
                             float *dw,         /* [D] or NULL */
                             float *db,         /* [D] or NULL */
                             const float *dy,   /* [N, D] */
                             const float *x,    /* [N, D] */
                             const float *w,    /* [D] */
                             const float *mean, /* [N] from forward */
                             const float *rstd, /* [N] from forward */
                             int N, int D);

/* GELU, the exact form x/2 (1 + erf(x/sqrt 2)) (not the tanh approximation), over n
 * elements; y may be x.  erf and exp are vectorised in-library versions accurate to
 * 1.6e-7 absolute (erf) and 1.1e-7 relative (exp). */
void emoe_gelu_forward(float *y, const float *x, size_t n); /* [n], [n] */
void emoe_gelu_backward(float *dx,       /* [n] */
                        const float *dy, /* [n] */
                        const float *x,  /* [n] the forward's input */
                        size_t n);
/* y = gelu(x) and g = gelu'(x) in one pass (a backward that recomputes the forward);
 * then emoe_gelu_backward_mul sets dx = dy g (overwrites, for dx not yet zeroed). */
void emoe_gelu_forward_grad(float *y,       /* [n] */
                            float *g,       /* [n] */
                            const float *x, /* [n] */
                            size_t n);
void emoe_gelu_backward_mul(float *dx,       /* [n] */
                            const float *dy, /* [n] */
                            const float *g,  /* [n] from emoe_gelu_forward_grad */
                            size_t n);

/*
 * Multi-head self-attention core (attention is the only layer that mixes
 * information across tokens).  qkv is the output of the qkv linear in timm's order:
 * qkv[b, t, 0:D] are the queries of heads 0..H-1 (hd contiguous channels each),
 * qkv[b, t, D:2D] the keys, qkv[b, t, 2D:3D] the values.
 * out[b, t, h*hd:(h+1)*hd] = softmax(q k^T / sqrt(hd)) v for head h.
 * D must be a multiple of H (the kernels do nothing otherwise; the model checks
 * its configuration).  Work is split over (image, head) pairs, one sgemm thread
 * each.
 */
void emoe_attention_forward(float *out,       /* [B, T, D] */
                            float *att,       /* [B, H, T, T] probabilities, saved */
                            const float *qkv, /* [B, T, 3D] */
                            int B, int T, int D, int H);
/* dqkv += the gradient.  scratch holds B*H*T*T floats (overwritten). */
void emoe_attention_backward(float *dqkv,       /* [B, T, 3D] */
                             float *scratch,    /* [B, H, T, T] */
                             const float *dout, /* [B, T, D] */
                             const float *qkv,  /* [B, T, 3D] */
                             const float *att,  /* [B, H, T, T] from forward */
                             int B, int T, int D, int H);

/*
 * Patch embedding: a convolution with kernel = stride = P as im2col + GEMM.
 * Images are channels-last float [B, Hi, Wi, C] (normalised by the caller), volumes
 * [B, Dz, Hi, Wi, C].  The weight has PyTorch's layout, Conv2d [D, C, P, P] or
 * Conv3d [D, C, P, P, P], so checkpoints load directly.  The grid is Gh = Hi/P,
 * Gw = Wi/P (Gz = Dz/P), rounded down as the convolution does; N = Gh*Gw (*Gz)
 * tokens per image in row-major grid order (timm's flatten(2).transpose(1, 2)).
 * cols is the im2col matrix [B*N, C*P*P(*P)] (columns in the weight's (c, [pz,]
 * py, px) order); forward fills it and backward reads it, so keep it between the
 * two (or refill it with emoe_patch_im2col_*).
 */
void emoe_patch_im2col_2d(float *cols,    /* [B*N, C*P*P] */
                          const float *x, /* [B, Hi, Wi, C] */
                          int B, int Hi, int Wi, int C, int P);
void emoe_patch_im2col_3d(float *cols,    /* [B*N, C*P*P*P] */
                          const float *x, /* [B, Dz, Hi, Wi, C] */
                          int B, int Dz, int Hi, int Wi, int C, int P);
void emoe_patch_embed_forward_2d(float *y,       /* [B, N, D] */
                                 float *cols,    /* [B*N, C*P*P] filled */
                                 const float *x, /* [B, Hi, Wi, C] */
                                 const float *w, /* [D, C, P, P] */
                                 const float *b, /* [D] or NULL */
                                 int B, int Hi, int Wi, int C, int P, int D);
void emoe_patch_embed_forward_3d(float *y,       /* [B, N, D] */
                                 float *cols,    /* [B*N, C*P*P*P] filled */
                                 const float *x, /* [B, Dz, Hi, Wi, C] */
                                 const float *w, /* [D, C, P, P, P] */
                                 const float *b, /* [D] or NULL */
                                 int B, int Dz, int Hi, int Wi, int C, int P, int D);
/* dw += dy^T cols, db += column sums of dy (the image gets no gradient).
 * K is C*P*P (2-D) or C*P*P*P (3-D); BN is B*N. */
void emoe_patch_embed_backward(float *dw,         /* [D, K] or NULL */
                               float *db,         /* [D] or NULL */
                               const float *dy,   /* [BN, D] */
                               const float *cols, /* [BN, K] from forward */
                               int BN, int K, int D);

/* Class token and position embedding: x[b, 0] = cls + pos[0],
 * x[b, 1+n] = patch[b, n] + pos[1+n]. */
void emoe_embed_forward(float *x,           /* [B, 1+N, D] */
                        const float *patch, /* [B, N, D] */
                        const float *cls,   /* [D] */
                        const float *pos,   /* [1+N, D] */
                        int B, int N, int D);
void emoe_embed_backward(float *dpatch,   /* [B, N, D] or NULL */
                         float *dcls,     /* [D] or NULL */
                         float *dpos,     /* [1+N, D] or NULL */
                         const float *dx, /* [B, 1+N, D] */
                         int B, int N, int D);

/* Gather token row t of every image (the class token is t = 0, for the head) and
 * its backward (dx[b, t] += dout[b]). */
void emoe_token_gather(float *out,     /* [B, D] */
                       const float *x, /* [B, T, D] */
                       int B, int T, int D, int t);
void emoe_token_gather_backward(float *dx,         /* [B, T, D] */
                                const float *dout, /* [B, D] */
                                int B, int T, int D, int t);

/*
 * Resample the patch part of a position embedding from an old grid to a new one,
 * keeping the first nprefix rows (the class position) as they are, exactly as
 * torch.nn.functional.interpolate(mode, align_corners=False) does on the grid:
 * BILINEAR and BICUBIC (a = -0.75, edge pixels repeated) with antialias=False;
 * BILINEAR_AA and BICUBIC_AA with antialias=True (PIL-style filters, a = -0.5,
 * weights normalised at the edges).  timm's resample_abs_pos_embed defaults to
 * BICUBIC_AA; METHOD.md makes BILINEAR emoe's default.  EMOE_EINVAL on bad sizes.
 */
enum emoe_interp {
    EMOE_INTERP_BILINEAR = 0,
    EMOE_INTERP_BICUBIC = 1,
    EMOE_INTERP_BILINEAR_AA = 2,
    EMOE_INTERP_BICUBIC_AA = 3
};
int emoe_pos_embed_resample(float *out,       /* [nprefix + Ho*Wo, D] */
                            const float *in,  /* [nprefix + Hi*Wi, D] */
                            int nprefix, int Hi, int Wi, int Ho, int Wo, int D,
                            enum emoe_interp mode, struct emoe_error *err);
/*
 * The same for a 3-D patch grid (depth, height, width; a volume model's grid
 * order): torch.nn.functional.interpolate(mode='trilinear', align_corners=False),
 * the linear weights of emoe_pos_embed_resample along each axis (edge positions
 * repeated).  mode must be EMOE_INTERP_BILINEAR (meaning trilinear here; PyTorch
 * has no cubic or antialiased 3-D mode); anything else is EMOE_EINVAL.
 */
int emoe_pos_embed_resample3d(float *out,      /* [nprefix + Do*Ho*Wo, D] */
                              const float *in, /* [nprefix + Di*Hi*Wi, D] */
                              int nprefix, int Di, int Hi, int Wi, int Do, int Ho, int Wo,
                              int D, enum emoe_interp mode, struct emoe_error *err);

/*
 * Losses: mean over the batch.  *loss receives the loss; the gradient scaled for the
 * mean is ADDED to dlogits/dpred when not NULL.
 * Softmax cross-entropy with label smoothing eps (PyTorch's semantics):
 *   loss_b = (1 - eps) (-log p[label]) + eps mean_k(-log p[k]).
 * *ncorrect (if not NULL) receives the number of rows whose arg max (the first
 * maximum) is the label.  EMOE_EINVAL for a label outside [0, K); EMOE_ENUMERIC
 * when a logit is not finite.
 */
int emoe_cross_entropy(double *loss, float *dlogits, /* [B, K] or NULL */
                       int *ncorrect,
                       const float *logits,   /* [B, K] */
                       const int32_t *labels, /* [B] */
                       int B, int K, float smoothing, struct emoe_error *err);
/* Mean absolute error and mean squared error over n values; ENUMERIC on a
 * non-finite prediction or target.  L1's gradient at pred == target is 0. */
int emoe_l1_loss(double *loss, float *dpred, /* [n] or NULL */
                 const float *pred,           /* [n] */
                 const float *target,         /* [n] */
                 size_t n, struct emoe_error *err);
int emoe_mse_loss(double *loss, float *dpred, /* [n] or NULL */
                  const float *pred,           /* [n] */
                  const float *target,         /* [n] */
                  size_t n, struct emoe_error *err);

/* ---------------------------------------------------------- model (ViT engine) */
/* @model */

/*
 * Counter-based random numbers (Philox4x32-10).  A stream is fully determined by
 * (seed, stream) and the position in it, so results never depend on the order in
 * which threads draw: a parallel loop gives work item i its own stream.
 */
struct emoe_rng {
    uint64_t seed;      /* the key */
    uint64_t stream;    /* counter words 2-3 */
    uint64_t pos;       /* number of 32-bit values drawn so far */
};
/* The four 32-bit outputs of Philox4x32-10 for a 128-bit counter and a 64-bit key. */
void emoe_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);
void emoe_rng_init(struct emoe_rng *r, uint64_t seed, uint64_t stream);
uint32_t emoe_rng_u32(struct emoe_rng *r);
uint64_t emoe_rng_u64(struct emoe_rng *r);
/* Uniform in [0, 1) with 24 (float) or 53 (double) random bits. */
float emoe_rng_uniform(struct emoe_rng *r);
double emoe_rng_uniform_double(struct emoe_rng *r);
/* Uniform integer in [0, n) without modulo bias (n > 0). */
uint32_t emoe_rng_below(struct emoe_rng *r, uint32_t n);
/* Standard normal (Box-Muller, two uniforms per value). */
float emoe_rng_normal(struct emoe_rng *r);
/* A seed derived from a seed and a domain tag (SplitMix64 finaliser), to give
 * independent generators to independent uses ("init", "augment", ...). */
uint64_t emoe_seed_derive(uint64_t seed, uint64_t tag);
/* Fisher-Yates shuffle of idx[0..n) with the stream (seed, stream). */
void emoe_rng_shuffle(size_t *idx, size_t n, uint64_t seed, uint64_t stream);

/*
 * The backbone configuration (METHOD.md section 1 and 7).  Images are 2-D
 * (image_ndim 2, image_size {H, W}) or 3-D volumes (image_ndim 3, {Dz, H, W}).
 */
enum emoe_task { EMOE_TASK_CLASSIFY = 0, EMOE_TASK_REGRESS = 1 };
struct emoe_vit_config {
    int image_ndim;        /* 2 or 3 */
    int image_size[3];     /* {H, W} or {Dz, H, W} */
    int patch_size;
    int in_chans;
    int embed_dim;         /* D */
    int depth;
    int num_heads;
    int mlp_dim;           /* hidden features of the MLP, mlp_ratio * D (4D) */
    int num_classes;       /* K; 1 for regression */
    enum emoe_task task;
    float mean[4], std[4]; /* input normalisation per channel (u8: in units of 1/255) */
};
/* A preset (METHOD.md section 1; D/depth/heads, MLP 4D, 3 channels, mean 0 / std 1):
 * "vit-tiny" 192/12/3, "vit-small" 384/12/6, "vit-base" 768/12/12, "vit-large"
 * 1024/24/16 (patch 16, 224x224, 1000 classes), "vit-huge" 1280/32/16 (patch 14, 224x224,
 * 1000 classes), and the CPU presets for 32x32 inputs with patch 4 and 10 classes,
 * "vit-micro" 128/6/4 and "vit-mini" 192/6/3.  Callers then set the image size, classes,
 * task and normalisation.  EMOE_EINVAL for other names. */
int emoe_vit_preset(const char *name, struct emoe_vit_config *cfg, struct emoe_error *err);
/* EMOE_EINVAL when the dims are inconsistent (D % heads, image % patch, ranges). */
int emoe_vit_config_check(const struct emoe_vit_config *cfg, struct emoe_error *err);
/* Tokens per image, 1 + N. */
int emoe_vit_tokens(const struct emoe_vit_config *cfg);
/* Floating-point operations of one forward pass for one image (multiply-add = 2). */
double emoe_vit_flops(const struct emoe_vit_config *cfg);

/* One named parameter tensor of a model (METHOD.md section 8 names). */
#define EMOE_PARAM_NO_DECAY 1u
struct emoe_param_spec {
    char name[96];          /* full checkpoint name */
    int ndim;
    int64_t shape[EMOE_MAX_DIMS];
    unsigned flags;         /* EMOE_PARAM_NO_DECAY: no weight decay */
};
struct emoe_param {
    const struct emoe_param_spec *spec;
    float *data;            /* into the parameter arena */
    float *grad;            /* into the gradient arena; NULL when frozen */
    size_t numel;
};

/*
 * The MoE extension point: called after every block on the residual stream (see
 * notes in model.c and METHOD.md section 2).  forward changes x [B, T, D] in place;
 * backward turns dx [B, T, D] (gradient of the branch output) into the gradient of
 * its input, in place, accumulating its parameter gradients; extra_loss returns the
 * weighted extra losses of the last forward (may be NULL).
 */
struct emoe_block_hook {
    void *ctx;
    int (*forward)(void *ctx, int block, float *x, int B, int T, int D, int train,
                   struct emoe_error *err);
    int (*backward)(void *ctx, int block, float *dx, int B, int T, int D,
                    struct emoe_error *err);
    double (*extra_loss)(void *ctx);
};

/*
 * A ViT: one parameter arena (backbone in timm's state_dict order, then the extra
 * params in the order given), a gradient arena and AdamW moments laid out the same
 * way over the trainable params only, activation buffers sized per batch size.
 */
struct emoe_model;
/* Backbone parameters are initialised as timm does (emoe_model_init with seed 0);
 * extra params are zero. */
int emoe_model_new(const struct emoe_vit_config *cfg, const struct emoe_param_spec *extra,
                   size_t nextra, struct emoe_model **out, struct emoe_error *err);
void emoe_model_free(struct emoe_model *m);
const struct emoe_vit_config *emoe_model_config(const struct emoe_model *m);
/* Re-initialise the backbone from seed as timm's VisionTransformer does: Linear
 * weights trunc_normal(std .02, cut at +-2 as timm's trunc_normal_), biases 0,
 * LayerNorm 1/0, pos_embed trunc_normal(.02), cls_token normal(1e-6), patch
 * embedding as PyTorch's Conv default (U(+-1/sqrt(fan_in)) weight and bias). */
void emoe_model_init(struct emoe_model *m, uint64_t seed);
/* The seed given to emoe_model_init (extra-parameter owners derive theirs from it). */
uint64_t emoe_model_seed(const struct emoe_model *m);
size_t emoe_model_param_count(const struct emoe_model *m);
struct emoe_param *emoe_model_param_at(struct emoe_model *m, size_t i);
struct emoe_param *emoe_model_param(struct emoe_model *m, const char *name); /* or NULL */
size_t emoe_model_numel(const struct emoe_model *m);           /* all parameters */
size_t emoe_model_trainable_numel(const struct emoe_model *m); /* gradient arena */
float *emoe_model_params(struct emoe_model *m);  /* [numel] the parameter arena */
float *emoe_model_grads(struct emoe_model *m);   /* [trainable numel] or NULL */
/* Freeze (trainable 0) or unfreeze every param whose name matches the glob pattern
 * (fnmatch, "vit.*"); *count (may be NULL) gets the number matched.  The gradient
 * arena is laid out again (gradients zeroed); do it before training starts. */
int emoe_model_set_trainable(struct emoe_model *m, const char *pattern, int trainable,
                             size_t *count, struct emoe_error *err);
void emoe_model_set_block_hook(struct emoe_model *m, const struct emoe_block_hook *h);
/* Allocate activations for batches up to B (train: kept for backward).  Forward
 * calls it as needed; calling it first keeps allocation out of the loop. */
int emoe_model_reserve(struct emoe_model *m, int B, int train, struct emoe_error *err);
/* Forward B inputs: EMOE_U8 pixels [B, H, W, C] (x = (p/255 - mean)/std) or EMOE_F32
 * [B, H, W, C] / [B, Dz, H, W, C] (x = (v - mean)/std).  train 1 keeps what backward
 * needs (and tells the hook). */
int emoe_model_forward(struct emoe_model *m, const void *input, enum emoe_dtype dtype, int B,
                       int train, struct emoe_error *err);
const float *emoe_model_logits(const struct emoe_model *m);   /* [B, K] of the last forward */
const float *emoe_model_features(const struct emoe_model *m); /* [B, D] pre-logits */
/* The objective of the last forward: classify: cross-entropy with label smoothing on
 * labels (const int32_t [B]); regress: L1 on targets (const float [B]).  *task_loss
 * gets the task loss, *loss the objective (task + the hook's extra losses), *ncorrect
 * (classify) the correct count; each may be NULL.  Sets the logits' gradient. */
int emoe_model_loss(struct emoe_model *m, const void *targets, float smoothing,
                    double *task_loss, double *loss, int *ncorrect, struct emoe_error *err);
/* Backpropagate the gradient set by emoe_model_loss (or written by the caller into
 * emoe_model_dlogits) through the last train forward; ACCUMULATES into the grads. */
float *emoe_model_dlogits(struct emoe_model *m); /* [B, K] */
int emoe_model_backward(struct emoe_model *m, struct emoe_error *err);
void emoe_model_zero_grad(struct emoe_model *m);
/* Data parallelism: fn(ctx, grads, n) is called by emoe_model_reduce_grads over the
 * whole gradient arena (e.g. an all-reduce mean across processes). */
typedef int (*emoe_grad_reduce_fn)(void *ctx, float *grads, size_t n, struct emoe_error *err);
void emoe_model_set_grad_reduce(struct emoe_model *m, emoe_grad_reduce_fn fn, void *ctx);
int emoe_model_reduce_grads(struct emoe_model *m, struct emoe_error *err);

/* ---------------------------------------------------------------- optimizer */

/* AdamW as torch.optim.AdamW (decoupled decay p -= lr*wd*p, bias correction) over
 * the model's trainable params; params flagged EMOE_PARAM_NO_DECAY get no decay. */
struct emoe_adamw;
struct emoe_adamw_config {
    float beta1, beta2, eps, weight_decay;  /* defaults .9, .999, 1e-8, .05 */
};
void emoe_adamw_config_init(struct emoe_adamw_config *c);
int emoe_adamw_new(struct emoe_model *m, const struct emoe_adamw_config *c,
                   struct emoe_adamw **out, struct emoe_error *err);
void emoe_adamw_free(struct emoe_adamw *o);
/* One update with learning rate lr (the step counter advances first). */
int emoe_adamw_step(struct emoe_adamw *o, double lr, struct emoe_error *err);
int64_t emoe_adamw_get_step(const struct emoe_adamw *o);
void emoe_adamw_set_step(struct emoe_adamw *o, int64_t step);
/* The moments [trainable numel] in gradient-arena order. */
float *emoe_adamw_m(struct emoe_adamw *o);
float *emoe_adamw_v(struct emoe_adamw *o);
size_t emoe_adamw_numel(const struct emoe_adamw *o);

/* Learning rate at step (0-based): linear warmup from lr/warmup to lr over warmup
 * steps, then constant, or cosine / linear decay to min_lr at total steps. */
enum emoe_lr_kind { EMOE_LR_CONSTANT = 0, EMOE_LR_COSINE = 1, EMOE_LR_LINEAR = 2 };
struct emoe_lr_schedule {
    enum emoe_lr_kind kind;
    double lr, min_lr;
    int64_t warmup, total;
};
double emoe_lr_at(const struct emoe_lr_schedule *s, int64_t step);
/* *norm (may be NULL) gets the global L2 norm of grads [n] (in double, fixed order);
 * when max_norm > 0 and the norm exceeds it, grads are scaled by max_norm / (norm + 1e-6)
 * (torch.nn.utils.clip_grad_norm_).
 * EMOE_ENUMERIC when the norm is not finite (grads untouched). */
int emoe_clip_grad_norm(float *grads, size_t n, double max_norm, double *norm,
                        struct emoe_error *err);

/* -------------------------------------------------------------- augmentation */

/* Per-image random transforms of uint8 batches [B, H, W, C]; image i of a call
 * draws from the stream (seed, step, i) only. */
struct emoe_augment {
    int crop_padding;       /* > 0: zero-pad by this much, random H x W crop */
    int resized_crop;       /* torchvision RandomResizedCrop(scale, ratio), bilinear */
    float scale_min, scale_max, ratio_min, ratio_max; /* (.08, 1), (3/4, 4/3) */
    int hflip;              /* flip horizontally with probability 1/2 */
};
void emoe_augment_init(struct emoe_augment *a); /* all off, torchvision's defaults */
int emoe_augment_batch(const struct emoe_augment *a, unsigned char *out, /* [B,H,W,C] */
                       const unsigned char *in,                          /* [B,H,W,C] */
                       int B, int H, int W, int C, uint64_t seed, uint64_t step,
                       struct emoe_error *err);

/* --------------------------------------------------------------- checkpoints */

/* Save the model as .safetensors (names and metadata of METHOD.md section 8; meta
 * adds or overrides keys, e.g. moe.*).  Atomic. */
int emoe_checkpoint_save(struct emoe_model *m, const char *path, const struct emoe_kv *meta,
                         size_t nmeta, struct emoe_error *err);
/* Read a checkpoint's config from its metadata (model.* and data.* keys). */
int emoe_checkpoint_read_config(const char *path, struct emoe_vit_config *cfg,
                                struct emoe_error *err);
/*
 * Load weights into m from a .safetensors (names as saved, prefixed "model.", or
 * bare timm names taken as "vit.<name>") or a Google ViT .npz (Transformer/
 * encoderblock_N/...; converted as timm's _load_weights does).  F16/BF16/F64 tensors
 * are converted.  A position embedding whose grid differs from the model's is resampled,
 * the class position kept: a square 2-D grid bilinearly, a cubic 3-D grid (volume
 * models) trilinearly; other shape differences are EMOE_EFORMAT.
 * All or nothing: on failure the model's weights are unchanged.  Names in m that the
 * file lacks are an error (EMOE_ENOTFOUND) unless EMOE_LOAD_ALLOW_MISSING; with it,
 * *missing (may be NULL) gets how many were left alone.  With EMOE_LOAD_SKIP_HEAD the
 * head is not loaded (new classes).  Tensors in the file that m lacks are ignored.
 */
#define EMOE_LOAD_ALLOW_MISSING 1u
#define EMOE_LOAD_SKIP_HEAD 2u
int emoe_checkpoint_load(struct emoe_model *m, const char *path, unsigned flags,
                         size_t *missing, struct emoe_error *err);
/* Training state: AdamW moments ("adamw.m.<name>", "adamw.v.<name>" for the trainable
 * params), metadata state.step, state.seed, state.data_epoch, state.data_pos, in a
 * .safetensors (usually MODEL.safetensors.state).  The RNG is counter-based, so seed and
 * step are its whole state.  Loading checks every trainable param has both moments of
 * its shape (EMOE_ENOTFOUND / EMOE_EFORMAT) and sets the optimizer's step. */
struct emoe_train_state {
    int64_t step;
    uint64_t seed;
    uint64_t data_epoch, data_pos;
};
int emoe_train_state_save(struct emoe_model *m, struct emoe_adamw *o,
                          const struct emoe_train_state *s, const char *path,
                          struct emoe_error *err);
int emoe_train_state_load(struct emoe_model *m, struct emoe_adamw *o,
                          struct emoe_train_state *s, const char *path,
                          struct emoe_error *err);

/* ------------------------------------------------------------- MoE branch */
/* @moe */
/*
 * The MoE branch (METHOD.md sections 2 to 5): after each chosen block i,
 * x = x + alpha * sum_{chosen e} p_e expert_e(x) on the routed tokens (the patch
 * tokens by default; the class token passes unchanged).  Routers: `eigen` (the EMoE
 * reference), `ermoe` (per-expert bases, our reading of the ERMoE abstract),
 * `softmax` (V-MoE / Switch baseline), `none` (no branch, plain ViT).
 * Execution is sparse: tokens are grouped by chosen expert, one GEMM per expert,
 * and the results are scattered back; an expert never runs on a token that did not
 * choose it.  Top-k ties go to the lowest expert index.  The weights are the raw
 * probabilities p_e (not renormalised); top_k 0 is soft routing (all experts).
 * A training forward first retracts the bases (Q, P; ERMoE's B_e) in place to their
 * QR Q-factor, as the reference does under torch.no_grad(); gradients are those
 * w.r.t. the basis as used (no derivative through the QR).  Results are
 * deterministic for a given thread count.
 * Note: with patches_only, a branch after the LAST block cannot change the logits
 * (the head reads only the class token), so its task gradient is exactly 0; this is
 * also true of the reference's default "last6".
 *
 * Basic outline (with a model):
 *   1) emoe_moe_config_init(&c), set fields; emoe_moe_param_specs(&c, D, depth, ...)
 *   2) emoe_model_new(&vit, specs, n, &m, ...); emoe_moe_new(&c, m, &moe, ...)
 *      (initialises the branch params, installs the block hook)
 *   3) train/evaluate with emoe_model_*; read routing statistics with
 *      emoe_moe_layer_stats() after each step or accumulated over an evaluation
 *   4) emoe_moe_free(moe) before emoe_model_free(m)
 * A branch can also be used on its own (emoe_moe_branch_new: it owns its params).
 */
enum emoe_router_kind {
    EMOE_ROUTER_NONE = 0,
    EMOE_ROUTER_EIGEN = 1,
    EMOE_ROUTER_ERMOE = 2,
    EMOE_ROUTER_SOFTMAX = 3,
};
const char *emoe_router_name(enum emoe_router_kind k); /* "eigen", ... */
int emoe_router_from_name(const char *name, enum emoe_router_kind *out,
                          struct emoe_error *err);

struct emoe_moe_config {
    enum emoe_router_kind router;   /* EMOE_ROUTER_EIGEN */
    int experts;                    /* E, 8 */
    int rank;                       /* r, 128 (eigen: basis rank; ermoe: per-expert rank) */
    int bottleneck;                 /* F, 192 (eigen, softmax experts) */
    int top_k;                      /* 1; 0 = soft */
    float tau;                      /* 1 (eigen, ermoe): p = softmax(s / tau) */
    float alpha;                    /* initial alpha, 1 */
    char blocks[128];               /* "last6", "lastN", "all", "everyN", "3,4,5" */
    int patches_only;               /* 1: the class token (token 0) is not routed */
    float lambda_ortho;             /* 5e-4: weight of ||Q^T Q - I||^2 + ||P^T P - I||^2 */
    float threshold;                /* ermoe: c_e < threshold is not eligible; 0 = off */
    int noise;                      /* softmax: logits + N(0, 1/E^2) in training */
    float switch_loss;              /* softmax: Switch balance weight (0.01), 0 = off */
    float importance_loss;          /* softmax: V-MoE importance CV^2 weight (0.005) */
    float load_loss;                /* softmax: V-MoE load CV^2 weight (0.005), needs noise */
    float z_loss;                   /* softmax: router z-loss weight (1e-3) */
    float capacity;                 /* capacity factor C (top-k routing): each expert
                                       takes at most ceil(N k C / E) tokens; 0 = unlimited */
    int eigen_batches;              /* eigen from data: M training forwards whose branch
                                       inputs give C = H^T H / N; 0 = off */
    int eigen_refresh;              /* and again every this many training forwards; 0 = once */
    uint64_t seed;                  /* parameter init and noise (emoe_moe_new: 0 = the
                                       model's seed) */
};
/* Defaults above: eigen router, reference fine-tuning settings, all losses off. */
void emoe_moe_config_init(struct emoe_moe_config *c);
/* EMOE_EINVAL naming the field when c cannot be used with width D and depth. */
int emoe_moe_config_check(const struct emoe_moe_config *c, int D, int depth,
                          struct emoe_error *err);
/* Block indices (sorted, distinct, in [0, depth)) for "all", "lastN" (the last
 * min(N, depth)), "everyN" (N-1, 2N-1, ...: after every N-th block) or a list
 * "3,5,7".  idx holds depth entries.  EMOE_EINVAL on a malformed spec or an index
 * out of range. */
int emoe_moe_parse_blocks(const char *spec, int depth, int *idx, int *n,
                          struct emoe_error *err);

/* Routing statistics of METHOD.md section 5 from top-1 counts [E]. */
struct emoe_routing_summary {
    int experts;
    int64_t tokens;          /* sum of counts */
    int64_t assignments;     /* (token, expert) pairs chosen */
    int64_t dropped;         /* of them dropped for capacity */
    double cv;               /* std(share) / mean(share), population std */
    double entropy;          /* H(share) / log E (1 when E = 1) */
    double peak;             /* max share * E */
    double min_share;
    double dropped_frac;     /* dropped / assignments */
    int unused;              /* experts with no top-1 token */
};
void emoe_routing_summarize(const int64_t *counts, /* [E] */
                            int E, int64_t assignments, int64_t dropped,
                            struct emoe_routing_summary *s);

/* One branch with its own parameters (tests, benchmarks). */
struct emoe_moe_branch;
/* index is the block index used in names; params initialised from c->seed. */
int emoe_moe_branch_new(const struct emoe_moe_config *c, int D, int index,
                        struct emoe_moe_branch **out, struct emoe_error *err);
void emoe_moe_branch_free(struct emoe_moe_branch *b);
size_t emoe_moe_branch_param_count(const struct emoe_moe_branch *b);
/* Param i: returns its name relative to "branches.{i}." ("router.gamma"), and its
 * rank, shape, data and gradient (NULL when frozen); NULL when i is out of range. */
const char *emoe_moe_branch_param(struct emoe_moe_branch *b, size_t i, int *ndim,
                                  int64_t *shape, float **data, float **grad);
void emoe_moe_branch_zero_grad(struct emoe_moe_branch *b);
/* x [B, T, D] in place.  train: QR retraction of the bases first, router noise. */
int emoe_moe_branch_forward(struct emoe_moe_branch *b, float *x, int B, int T, int D,
                            int train, struct emoe_error *err);
/* dx [B, T, D]: gradient w.r.t. the output in, w.r.t. the input out (the last
 * forward's); parameter gradients are accumulated. */
int emoe_moe_branch_backward(struct emoe_moe_branch *b, float *dx, int B, int T, int D,
                             struct emoe_error *err);
/* Weighted extra losses of the last forward (ortho; softmax balance/z losses). */
double emoe_moe_branch_extra_loss(const struct emoe_moe_branch *b);
/* The terms of the extra loss, each with its weight from the config (METHOD.md
 * sections 2-4); emoe_moe_branch_extra_loss is their sum, added in the order the
 * router computes them. */
enum emoe_loss_term {
    EMOE_LOSS_ORTHO = 0,      /* eigen, ermoe: lambda_ortho * orthonormality penalty */
    EMOE_LOSS_SWITCH = 1,     /* softmax: Switch load balancing (switch_loss) */
    EMOE_LOSS_IMPORTANCE = 2, /* softmax: V-MoE importance CV^2 (importance_loss) */
    EMOE_LOSS_LOAD = 3,       /* softmax: V-MoE load CV^2 (load_loss) */
    EMOE_LOSS_Z = 4,          /* softmax: router z-loss (z_loss) */
};
#define EMOE_LOSS_TERMS 5
/* The log key of a term ("ortho_loss", "lbl_loss", "importance_loss", "load_loss",
 * "z_loss"); NULL when t is out of range. */
const char *emoe_loss_term_name(enum emoe_loss_term t);
/* Its description for messages ("orthonormality loss", "Switch load-balancing
 * loss", ...); NULL when t is out of range. */
const char *emoe_loss_term_description(enum emoe_loss_term t);
/* 1 when c's router adds term t with a non-zero weight, else 0. */
int emoe_loss_term_active(const struct emoe_moe_config *c, enum emoe_loss_term t);
/* Term t of the last forward's extra loss (weighted); 0 when t is out of range or
 * the term is off. */
double emoe_moe_branch_loss_term(const struct emoe_moe_branch *b, enum emoe_loss_term t);
/* The last forward: routed tokens N, probabilities [N, E], choices [N, k] (*k gets
 * k, E in soft mode; -1 where fewer than k experts were eligible; a choice dropped
 * for capacity is still listed) and top-1 experts [N]. */
int emoe_moe_branch_tokens(const struct emoe_moe_branch *b);
const float *emoe_moe_branch_probs(const struct emoe_moe_branch *b);
const int32_t *emoe_moe_branch_choices(const struct emoe_moe_branch *b, int *k);
const int32_t *emoe_moe_branch_top1(const struct emoe_moe_branch *b);
/* Top-1 counts [E] of the last forward and its summary. */
void emoe_moe_branch_stats(const struct emoe_moe_branch *b, int64_t *counts,
                           struct emoe_routing_summary *s);
/* Eigenbasis from data: add the routed tokens of x [B, T, D] to the running
 * H^T H, then set Q to the top-r eigenvectors of H^T H / N (ssyevr; columns by
 * decreasing eigenvalue, each with its largest-magnitude entry positive).
 * EMOE_EINVAL for a router without Q or when no token was added. */
int emoe_moe_branch_cov_add(struct emoe_moe_branch *b, const float *x, int B, int T, int D,
                            struct emoe_error *err);
int emoe_moe_branch_cov_apply(struct emoe_moe_branch *b, struct emoe_error *err);

/* The branches of a model.  Param specs: full names "branches.{i}.<name>" for every
 * chosen block i (METHOD.md section 8), to pass to emoe_model_new as extra params;
 * the caller frees *specs with free().  Router 'none' gives no specs. */
int emoe_moe_param_specs(const struct emoe_moe_config *c, int D, int depth,
                         struct emoe_param_spec **specs, size_t *n, struct emoe_error *err);
struct emoe_moe;
/* Looks its params up in m (EMOE_ENOTFOUND naming a missing one), initialises them
 * (seed c->seed, or the model's seed when 0) and installs the block hook.  Free it
 * before the model; freeing uninstalls the hook. */
int emoe_moe_new(const struct emoe_moe_config *c, struct emoe_model *m, struct emoe_moe **out,
                 struct emoe_error *err);
void emoe_moe_free(struct emoe_moe *moe);
int emoe_moe_layers(const struct emoe_moe *moe);           /* L branches */
int emoe_moe_layer_block(const struct emoe_moe *moe, int l); /* block index of branch l */
struct emoe_moe_branch *emoe_moe_layer_branch(struct emoe_moe *moe, int l);
/* Training forwards done so far (a resumed run passes its step): the softmax router's
 * noise of training forward n depends only on (seed, branch, n), and the automatic
 * eigenbasis phases count from n.  The branch form sets one branch's noise counter. */
void emoe_moe_set_train_forwards(struct emoe_moe *moe, int64_t n);
void emoe_moe_branch_set_train_forwards(struct emoe_moe_branch *b, int64_t n);
/* Routing statistics of branch l: of the last forward (accumulated 0) or summed over
 * every forward since emoe_moe_stats_reset (accumulated 1, e.g. over an evaluation).
 * counts [E]; s may be NULL. */
int emoe_moe_layer_stats(const struct emoe_moe *moe, int l, int accumulated, int64_t *counts,
                         struct emoe_routing_summary *s, struct emoe_error *err);
void emoe_moe_stats_reset(struct emoe_moe *moe);
/* After a forward of B images with these labels: add the top-1 choices of every
 * routed token to the per (layer, expert, class) counts [L, E, K] (reset with
 * emoe_moe_stats_reset).  K must stay the same. */
int emoe_moe_stats_add_labels(struct emoe_moe *moe, const int32_t *labels, int B, int K,
                              struct emoe_error *err);
const float *emoe_moe_class_counts(const struct emoe_moe *moe, int *K); /* [L, E, K] or NULL */
/* Eigenbasis from data (paper Fig. 1a): between begin and end, every forward adds
 * the routed tokens at each branch input to its H^T H; end sets each Q to the top-r
 * eigenvectors of H^T H / N.  (With c->eigen_batches M > 0 this also happens by
 * itself over the first M training forwards, and again every c->eigen_refresh.) */
void emoe_moe_cov_begin(struct emoe_moe *moe);
int emoe_moe_cov_end(struct emoe_moe *moe, struct emoe_error *err);
/* Checkpoint metadata (METHOD.md section 8): the moe.* keys of c for a model of
 * this depth (moe.blocks as the resolved index list), to pass to
 * emoe_checkpoint_save.  out holds the strings; *n gets the number of pairs. */
struct emoe_moe_meta {
    struct emoe_kv kv[8];
    char text[8][512];
};
int emoe_moe_metadata(const struct emoe_moe_config *c, int depth, struct emoe_moe_meta *out,
                      size_t *n, struct emoe_error *err);
/* The MoE configuration of a checkpoint: from its moe.* metadata, and where that is
 * absent (a reference state_dict saved as safetensors), inferred from the tensor
 * names and shapes (router kind, blocks, E, r, F); top_k, tau and patches_only then
 * keep their defaults (1, 1, 1: the reference training recipe).  Router 'none'
 * when there are no branch tensors. */
int emoe_moe_config_from_checkpoint(const char *path, struct emoe_moe_config *c,
                                    struct emoe_error *err);


/* -------------------------------------------- few-shot probes and heatmaps */
/* @viz */

/*
 * Few-shot linear probes on fixed features (METHOD.md section 6, the ViT paper's
 * protocol).  For shots s and seed i, each class c takes the first s of its
 * training indices (in file order) after emoe_rng_shuffle() with seed
 * emoe_seed_derive(i, EMOE_FEWSHOT_TAG) and stream c, so a larger s extends the
 * smaller one.  Each feature is whitened with the mean and population std of the
 * chosen samples (x - mean) / (std + 1e-5), a constant feature 100 is appended,
 * targets are 2*onehot - 1, and the ridge weights are
 * W = (X^T X + lambda I)^-1 X^T Y, or the same in the dual form
 * X^T (X X^T + lambda I)^-1 Y when there are fewer samples than dimensions, in
 * double precision (LAPACK dposv).  The prediction is the arg max (first maximum)
 * of x W.  The nearest-class-mean probe (NCM) whitens the same way and predicts the
 * class whose mean whitened feature vector is nearest in Euclidean distance.
 * Dimension letters: n samples, D features, K classes.
 */
#define EMOE_PROBE_BIAS 100.0
#define EMOE_PROBE_STD_EPS 1e-5
#define EMOE_PROBE_LAMBDA 1024.0
#define EMOE_FEWSHOT_TAG 0x66657773686f74ull /* "fewshot" */
enum emoe_probe_kind { EMOE_PROBE_RIDGE = 0, EMOE_PROBE_NCM = 1 };

/* A fitted probe (fields read-only). */
struct emoe_probe {
    enum emoe_probe_kind kind;
    int dim;        /* D */
    int nclasses;   /* K */
    double *mean;   /* [D] mean of the training features */
    double *scale;  /* [D] 1 / (std + 1e-5) */
    double *w;      /* [K, D + 1]: ridge weights (column D: the bias feature's), or
                       NCM class means of the whitened features (column D is 0) */
};
/*
 * Fit a probe on the rows `rows` (n indices; NULL means rows 0..n-1) of x with
 * labels y[row] in [0, K).  lambda is the ridge penalty (ignored by NCM).  The
 * caller owns *out and releases it with emoe_probe_free().  EMOE_ENUMERIC for a
 * non-finite feature.
 */
int emoe_probe_fit(enum emoe_probe_kind kind,
                   const float *x,      /* [N, D] */
                   const int32_t *y,    /* [N] */
                   const size_t *rows,  /* [n] or NULL */
                   size_t n, int D, int K, double lambda, struct emoe_probe **out,
                   struct emoe_error *err);
int emoe_probe_predict(const struct emoe_probe *p,
                       const float *x,  /* [n, D] */
                       size_t n,
                       int32_t *pred,   /* [n] */
                       struct emoe_error *err);
void emoe_probe_free(struct emoe_probe *p);

/* The shots: idx[c * shots + j] is the j-th training index of class c (see above).
 * EMOE_ERANGE when a class has fewer than shots samples. */
int emoe_fewshot_select(const int32_t *labels, /* [n] in [0, K) */
                        size_t n, int K, int shots, uint64_t seed,
                        size_t *idx,            /* [K * shots] */
                        struct emoe_error *err);

struct emoe_fewshot_options {
    const int *shots;   /* shot counts (default 1, 5, 10, 25) */
    int nshots;
    int seeds;          /* seeds 0 .. seeds-1 (default 3) */
    double lambda;      /* ridge penalty (default 2^10) */
    enum emoe_probe_kind kind;
    /* Called after each (shots, seed) run; may be NULL. */
    void (*progress)(void *ctx, int shots, int seed);
    void *ctx;
};
void emoe_fewshot_options_init(struct emoe_fewshot_options *o);
/* The whole protocol: acc[s * seeds + i] is the top-1 accuracy (0..1) over the
 * whole test split of the probe fitted on shots[s] per class with seed i. */
int emoe_fewshot_run(const struct emoe_fewshot_options *o,
                     const float *train_x,   /* [ntrain, D] */
                     const int32_t *train_y, /* [ntrain] in [0, K) */
                     size_t ntrain,
                     const float *test_x,    /* [ntest, D] */
                     const int32_t *test_y,  /* [ntest] in [0, K) */
                     size_t ntest, int D, int K,
                     double *acc,            /* [nshots, seeds] */
                     struct emoe_error *err);

/*
 * Routing heatmaps (the expert x class maps of the EMoE paper's Fig. 3) from a
 * routing tensor f32 [L, E, K] of top-1 counts per (layer, expert, class)
 * (METHOD.md section 5).  One panel per layer shown; classes on x and experts on y,
 * or transposed (classes on y) when K > EMOE_HEATMAP_TRANSPOSE_K; class labels
 * thin out when they do not fit.  Beside each panel a bar per expert shows its
 * share of the layer's tokens (the dashed line is the uniform share 1/E), and a
 * colour bar gives the scale, common to all panels.  Colours come from
 * emoe_colormap(), which is monotone in lightness.
 */
#define EMOE_HEATMAP_TRANSPOSE_K 64
enum emoe_heatmap_norm {
    EMOE_HEATMAP_NONE = 0,  /* the counts */
    EMOE_HEATMAP_CLASS,     /* each class's column sums to 1 over the experts */
    EMOE_HEATMAP_EXPERT,    /* each expert's row sums to 1 over the classes */
};
struct emoe_heatmap_options {
    int layer;                  /* the layer to show, or -1 for all (default -1) */
    enum emoe_heatmap_norm normalize;   /* default EMOE_HEATMAP_NONE */
    const char *const *classes; /* names of the K classes (UTF-8), or NULL: numbers */
    size_t nclasses;            /* must be K when classes is given */
    const char *title;          /* or NULL */
};
void emoe_heatmap_options_init(struct emoe_heatmap_options *o);
/* A routing tensor is f32, rank 3, non-empty, finite and non-negative; name (may be
 * NULL) starts the message. */
int emoe_routing_check(const struct emoe_tensor *t, const char *name, struct emoe_error *err);
/* One layer's values after normalisation (a zero row or column stays zero). */
void emoe_heatmap_normalize(float *out,          /* [E, K] */
                            const float *counts, /* [E, K] */
                            int E, int K, enum emoe_heatmap_norm norm);
/* The colour of t in [0, 1] (clamped; NaN is 0): a viridis-like map built in CIELAB,
 * L* rising linearly from 16 to 91, hue and chroma through those of viridis at
 * t = 0, 1/4, 1/2, 3/4, 1 (violet, blue, teal, green, yellow), chroma reduced where
 * needed to stay inside sRGB. */
void emoe_colormap(double t, unsigned char rgb[3]);
/* Render to a malloc'd RGB raster [*height, *width, 3] (the caller frees it). */
int emoe_heatmap_render(const struct emoe_tensor *routing, /* f32 [L, E, K] */
                        const struct emoe_heatmap_options *o, unsigned char **rgb,
                        int *width, int *height, struct emoe_error *err);
/* The same picture as a standalone SVG document (malloc'd, NUL-terminated). */
int emoe_heatmap_svg(const struct emoe_tensor *routing, /* f32 [L, E, K] */
                     const struct emoe_heatmap_options *o, char **svg, size_t *len,
                     struct emoe_error *err);
/* A terminal rendering at most `columns` wide (classes are averaged into bins when
 * they do not fit): one character per cell from " .:-=+*#%@", malloc'd text. */
int emoe_heatmap_ascii(const struct emoe_tensor *routing, /* f32 [L, E, K] */
                       const struct emoe_heatmap_options *o, int columns, char **text,
                       size_t *len, struct emoe_error *err);

/* PNG (8-bit gray, RGB or RGBA by channels 1, 3, 4; no interlace) compressed with
 * zlib.  Written atomically to path ("-" is stdout), or to a stream. */
int emoe_png_write(const char *path, const unsigned char *pixels, /* [h, w, channels] */
                   int width, int height, int channels, struct emoe_error *err);
int emoe_png_write_stream(FILE *f, const char *name,
                          const unsigned char *pixels, /* [h, w, channels] */
                          int width, int height, int channels, struct emoe_error *err);

/* ---------------------------------------------------------------- training */
/* @train */
struct emoe_dataset;
/*
 * The training loop of emoe-train (lib/train.c): AdamW with a learning-rate
 * schedule, gradient clipping, augmentation of u8 images, validation after every
 * epoch, atomic checkpoints (emoe_checkpoint_save, with the caller's metadata and
 * "train.step") and the training state next to them (emoe_train_state_save).
 * Epoch e visits the training samples in the order emoe_rng_shuffle(seed', N) with
 * stream e; batches take the next `batch` samples (the last of an epoch may be
 * smaller); augmentation draws from (seed, step).  The state holds the step, the
 * epoch and the position in it, so a run resumed from a checkpoint ends with the
 * same bytes as one that was not interrupted (same options, same thread count).
 * The state file is what emoe_train_state_save writes plus the trainable weights
 * ("param.<name>"); it is written before the model, and resuming takes the weights
 * from it, so a run killed between the two files still resumes exactly (the MoE
 * branches' training-forward counter, hence the router noise, is set from the step).
 */
enum emoe_train_event_kind {
    EMOE_TRAIN_STEP = 0,    /* every log_every steps: loss, accuracy, routing */
    EMOE_TRAIN_EVAL = 1,    /* after every epoch (and at the end): validation */
    EMOE_TRAIN_SAVE = 2,    /* a checkpoint was written (path) */
    EMOE_TRAIN_PROGRESS = 3, /* after every step: step, epoch_frac, loss, task_loss,
                                accuracy, images_per_s of that step (progress bars) */
};
/* Routing statistics of one MoE layer (METHOD.md section 5) over the logged steps,
 * or over the validation set, and its weighted auxiliary loss of the last forward. */
struct emoe_train_layer {
    int block;
    struct emoe_routing_summary routing;
    double aux_loss;
    double loss_terms[EMOE_LOSS_TERMS]; /* aux_loss by enum emoe_loss_term */
};
struct emoe_train_metrics {
    int64_t images;
    double loss;            /* task loss (cross-entropy without smoothing, or L1 on the
                               standardised targets) */
    double top1, top5;      /* classification, 0..1 */
    double mae;             /* regression, in the targets' units */
};
struct emoe_train_event {
    enum emoe_train_event_kind kind;
    int64_t step, total_steps;      /* optimizer steps done, planned */
    int epoch;                      /* STEP: current epoch; EVAL: epochs done */
    double epoch_frac;              /* STEP: epochs done, fractional */
    /* STEP (means over the steps since the last STEP event) */
    double lr, loss, task_loss, aux_loss, grad_norm, accuracy, images_per_s;
    double loss_terms[EMOE_LOSS_TERMS]; /* by enum emoe_loss_term, summed over layers */
    /* EVAL */
    struct emoe_train_metrics val;
    int is_best;                    /* the best so far (saved to best_path) */
    int nlayers;                    /* STEP and EVAL with MoE layers */
    const struct emoe_train_layer *layers;
    const char *path;               /* SAVE */
};
/*
 * Regression targets are standardised (METHOD.md section 7): the model is trained on
 * (t - mean) / std, so its output z stands for the prediction mean + std * z.  The
 * checkpoint keeps them as metadata "data.target_mean" and "data.target_std"
 * (EMOE_TARGET_MEAN_KEY, EMOE_TARGET_STD_KEY; "%.17g"); a checkpoint without them
 * means mean 0 and std 1 (a model trained on the raw targets).
 */
#define EMOE_TARGET_MEAN_KEY "data.target_mean"
#define EMOE_TARGET_STD_KEY "data.target_std"
struct emoe_target_scale {
    double mean, std;               /* prediction = mean + std * output; std > 0 */
};
/* Mean and population std of the f32 targets of d (std 1 when they are all equal).
 * EMOE_EINVAL when d has no f32 labels or a target is not finite. */
int emoe_train_target_scale(const struct emoe_dataset *d, struct emoe_target_scale *ts,
                            struct emoe_error *err);
struct emoe_train_options {
    int epochs;                     /* 10 (used when max_steps is 0) */
    int64_t max_steps;              /* > 0: stop after this many steps */
    int batch;                      /* 128 */
    double lr, min_lr;              /* 5e-4, 0 */
    double weight_decay;            /* 0.05 */
    int64_t warmup;                 /* steps of linear warmup, 0 */
    enum emoe_lr_kind schedule;     /* EMOE_LR_COSINE */
    double clip;                    /* max gradient norm, 1; 0 = off */
    float label_smoothing;          /* 0 */
    uint64_t seed;                  /* data order and augmentation, 0 */
    struct emoe_augment augment;    /* all off */
    int eigen_init_batches;         /* > 0: Q from the covariance of this many batches */
    int log_every;                  /* STEP events every N steps, 50; 0 = none */
    int64_t save_every;             /* > 0: checkpoint every N steps (and at the end) */
    const char *out_path;           /* MODEL.safetensors */
    const char *state_path;         /* its training state (MODEL.safetensors.state) */
    const char *best_path;          /* or NULL: best-on-validation checkpoint */
    int resume;                     /* continue from state_path (weights already loaded) */
    int resume_best_set;            /* the best score so far (top-1, or -MAE) is known
                                       (best_path's metadata "train.best_score") */
    double resume_best;
    const char *train_name, *val_name; /* names for messages */
    const struct emoe_kv *meta;     /* checkpoint metadata (moe.*, data.classes, ...) */
    size_t nmeta;
    /* Regression: target_set 0 computes the scale from the training set
     * (emoe_train_target_scale); 1 uses target (a resumed or initialising regression
     * checkpoint's).  Saved with every checkpoint. */
    int target_set;
    struct emoe_target_scale target;
    /* Extra metadata for the training state file (the caller's run settings, read
     * back with emoe_safetensors_metadata_get on resume); keys must not start with
     * "state." or "emoe.". */
    const struct emoe_kv *state_meta;
    size_t nstate_meta;
    /* Called between steps; nonzero stops the run: a checkpoint is saved and the run
     * returns EMOE_EINTR (for a signal handler's flag).  May be NULL. */
    int (*should_stop)(void *ctx);
    void (*log)(void *ctx, const struct emoe_train_event *ev); /* may be NULL */
    void *ctx;
};
void emoe_train_options_init(struct emoe_train_options *o);
/* EMOE_EINVAL / EMOE_EFORMAT when the dataset does not fit the model: rank and dtype
 * of images, size, channels, label dtype, classes and label range.  name (may be
 * NULL) starts the message. */
int emoe_train_check_data(struct emoe_model *m, const struct emoe_dataset *d, const char *name,
                          struct emoe_error *err);
/* Evaluate on a dataset in batches (routing counts accumulate in moe).  Regression:
 * ts (NULL: mean 0, std 1) scales the outputs; loss is the L1 loss on the
 * standardised targets, mae is in the targets' units. */
int emoe_train_evaluate(struct emoe_model *m, struct emoe_moe *moe,
                        const struct emoe_dataset *d, int batch,
                        const struct emoe_target_scale *ts,
                        struct emoe_train_metrics *out, struct emoe_error *err);
/*
 * Train m (moe may be NULL) on train, validating on val (may be NULL).  Saves to
 * out_path and state_path at the end, every save_every steps and when stopped.
 * EMOE_ENUMERIC ("step 12: the task loss is not finite ...") stops without saving:
 * the last checkpoint written stays as it was.  EMOE_EINTR after a requested stop.
 */
int emoe_train_run(struct emoe_model *m, struct emoe_moe *moe, const struct emoe_dataset *train,
                   const struct emoe_dataset *val, const struct emoe_train_options *o,
                   struct emoe_error *err);

/* -------------------------------------------------------------- evaluation */
/* @eval */
struct emoe_dataset;
/*
 * Evaluation (lib/eval.c, emoe-eval): a model built from its checkpoint, run over a
 * dataset in evaluation mode (no retraction, no router noise, no augmentation),
 * with the metrics of emoe-eval(1) and the routing statistics of METHOD.md
 * section 5 accumulated over the whole dataset.
 *
 * Basic outline:
 *   1) emoe_model_load(path, &m, &moe, err); emoe_dataset_read(data, &d, err)
 *   2) emoe_eval_options_init(&o), set fields; emoe_evaluate(m, moe, d, &o, &r, err)
 *   3) read r; emoe_eval_result_free(&r); emoe_moe_free(moe); emoe_model_free(m)
 */
/* Build the model a checkpoint (.safetensors) describes: the backbone from its model.*
 * and data.* metadata (emoe_checkpoint_read_config), the MoE branches from its moe.*
 * metadata or tensor names (emoe_moe_config_from_checkpoint), then every weight from
 * the file (a missing one is EMOE_ENOTFOUND).  *moe is NULL for a plain ViT (router
 * 'none').  Free *moe before *model. */
int emoe_model_load(const char *path, struct emoe_model **model, struct emoe_moe **moe,
                    struct emoe_error *err);
/* EMOE_EINVAL when the dataset does not fit the model: images u8 or f32 of rank
 * image_ndim + 2 with the model's size and channels; classify: integer labels in
 * [0, num_classes) and, when the dataset names its classes, num_classes of them;
 * regress: f32 targets.  Also EMOE_EINVAL for an empty dataset.  name (may be NULL)
 * starts the message. */
int emoe_eval_check_data(const struct emoe_model *m, const struct emoe_dataset *d,
                         const char *name, struct emoe_error *err);

struct emoe_eval_options {
    int batch;              /* images per forward (default 64) */
    int keep_logits;        /* fill emoe_eval_result.logits */
    int keep_features;      /* fill emoe_eval_result.features */
    int keep_predictions;   /* fill emoe_eval_result.pred and score */
    int keep_confusion;     /* fill emoe_eval_result.confusion (K * K counts) */
    const char *name;       /* the dataset's name for messages (may be NULL) */
    /* Regression: prediction = target.mean + target.std * output (default 0, 1; set
     * it from the checkpoint with emoe_eval_target_scale). */
    struct emoe_target_scale target;
    /* Called after each batch with images done and the total; may be NULL. */
    void (*progress)(void *ctx, size_t done, size_t total);
    void *ctx;
};
void emoe_eval_options_init(struct emoe_eval_options *o);
/* The target scale of a checkpoint's metadata (EMOE_TARGET_MEAN_KEY, _STD_KEY):
 * mean 0 and std 1 when absent; EMOE_EFORMAT ("path: metadata 'data.target_std': ...")
 * when only one is present, a value is not a finite number, or std <= 0. */
int emoe_eval_target_scale(const char *path, struct emoe_target_scale *ts,
                           struct emoe_error *err);

/* Routing statistics of one MoE layer over the whole dataset. */
struct emoe_eval_layer {
    int block;              /* the block the branch follows */
    struct emoe_routing_summary routing;
};
/*
 * Results.  Classification: loss is the mean cross-entropy (no label smoothing),
 * top-1 uses the first maximum (as emoe_cross_entropy), top-5 counts a label whose
 * rank (logits greater than its own, plus equal ones at lower indices) is below 5.
 * Regression (one output z; the prediction mean + std * z of o->target compared with
 * the target): loss = MAE, RMSE, and R^2 = 1 - SS_res / SS_tot (NaN when the targets
 * are all equal).
 */
struct emoe_eval_result {
    enum emoe_task task;
    size_t count;           /* N images */
    int nclasses;           /* K outputs of the head (1 for regression) */
    double loss;
    double top1, top5;      /* classify: fractions 0..1 */
    int64_t correct1, correct5;
    int64_t *class_count;   /* classify: [K] images per label */
    int64_t *class_correct; /* classify: [K] of them predicted right */
    int64_t *confusion;     /* keep_confusion: [K, K] counts, row = label, column =
                               prediction */
    double mae, rmse, r2;   /* regress */
    int nlayers;            /* MoE layers L (0 without MoE) */
    struct emoe_eval_layer *layers;   /* [L] */
    struct emoe_tensor *routing;      /* f32 [L, E, K] top-1 token counts by true class
                                         (regression: K = 1), or NULL without MoE */
    struct emoe_tensor *logits;       /* keep_logits: f32 [N, K] (regression: the
                                         outputs z as the model gives them) */
    struct emoe_tensor *features;     /* keep_features: f32 [N, D] pre-logits */
    int32_t *pred;          /* keep_predictions, classify: [N] arg max */
    float *score;           /* keep_predictions: [N] classify: softmax probability of pred;
                               regress: the prediction */
};
/* Releases the members (not r itself) and zeroes r; accepts a zeroed r. */
void emoe_eval_result_free(struct emoe_eval_result *r);
/* Evaluate m (moe may be NULL) on d after emoe_eval_check_data; moe's accumulated
 * statistics are reset first and hold this evaluation's afterwards.  On failure r is
 * left zeroed.  EMOE_ENUMERIC when an output is not finite. */
int emoe_evaluate(struct emoe_model *m, struct emoe_moe *moe, const struct emoe_dataset *d,
                  const struct emoe_eval_options *o, struct emoe_eval_result *r,
                  struct emoe_error *err);
/* Pre-logit features f32 [N, D] of every image of d (batches of `batch`, <= 0: 64) and,
 * when labels is not NULL, the class labels as a malloc'd int32 [N] (a classification
 * dataset; EMOE_EINVAL for regression targets).  The images must fit the model
 * (emoe_eval_check_data's image checks; labels are not checked against the head). */
int emoe_eval_features(struct emoe_model *m, const struct emoe_dataset *d, int batch,
                       const char *name, struct emoe_tensor **features, int32_t **labels,
                       struct emoe_error *err);

/* ------------------------------------------------------ datasets and images */
/* @data */

/*
 * JPEG decoding (libjpeg-turbo).  A decoder is reusable and keeps its scratch
 * buffers; use one per thread.  Grayscale, YCbCr, RGB, CMYK and YCCK JPEGs are
 * decoded to 1 (gray) or 3 (RGB) channels.  A corrupt or truncated JPEG gives
 * EMOE_EFORMAT ("name: corrupt JPEG: ..."); nothing is printed.
 */
struct emoe_jpeg;
int emoe_jpeg_new(struct emoe_jpeg **out, struct emoe_error *err);
void emoe_jpeg_free(struct emoe_jpeg *j);
struct emoe_jpeg_info {
    int width, height;
    int components;     /* in the file: 1, 3 or 4 */
    int cmyk;           /* CMYK or YCCK */
};
/* Header only.  name (may be NULL) is used in messages. */
int emoe_jpeg_read_info(struct emoe_jpeg *j, const void *data, size_t size, const char *name,
                        struct emoe_jpeg_info *info, struct emoe_error *err);
/* Decode at 1/scale_denom (1, 2, 4 or 8) in the DCT domain into a malloc'd
 * [*height, *width, channels] buffer (free() it). */
int emoe_jpeg_decode(struct emoe_jpeg *j, const void *data, size_t size, const char *name,
                     int channels, int scale_denom, unsigned char **pixels, int *width,
                     int *height, struct emoe_error *err);
/* Decode, resize the shorter side to n and centre-crop: out [n, n, channels].  The DCT
 * scale is the smallest of 1/8, 1/4, 1/2 and 1 that keeps the shorter side >= n, then area
 * (shrink) or bilinear (enlarge) resizing. */
int emoe_jpeg_decode_square(struct emoe_jpeg *j, const void *data, size_t size,
                            const char *name, int channels, int n, unsigned char *out,
                            struct emoe_error *err);
/* The largest denominator of 1/2/4/8 keeping the shorter side >= target (for
 * emoe_jpeg_decode's power-of-two scales). */
int emoe_jpeg_pick_scale(int width, int height, int target);
/* Resize the shorter side to n (longer side n * long / short, truncated, as
 * torchvision's Resize) and centre-crop n x n.  src [h, w, c], dst [n, n, c], c 1..4. */
int emoe_image_resize_crop(const unsigned char *src, int w, int h, int c, int n,
                           unsigned char *dst, struct emoe_error *err);

/*
 * A dataset in memory, as the dataset .npz stores it (METHOD.md section 8).
 */
struct emoe_dataset {
    struct emoe_tensor *images; /* u8 [N, H, W, C], or f32 [N, D, H, W, 1] for volumes */
    struct emoe_tensor *labels; /* i64 [N] class ids, or f32 [N] regression targets */
    char **classes;             /* nclasses UTF-8 names (label i = classes[i]), or NULL */
    size_t nclasses;
    int has_stats;              /* mean/std below are set */
    int stats_channels;
    float mean[4], std[4];      /* per channel; u8 images in units of 1/255 */
};
void emoe_dataset_free(struct emoe_dataset *d);
/* Per-channel mean and population std over all images (fills mean/std/has_stats). */
int emoe_dataset_compute_stats(struct emoe_dataset *d, struct emoe_error *err);
/* A short text that identifies d's contents, e.g. "3200 x u8[32,32,3], crc32 1a2b3c4d"
 * (the crc32 covers the image and label bytes): emoe-train checks a resumed run's data
 * with it.  Truncated to size (128 bytes always suffice). */
void emoe_dataset_fingerprint(const struct emoe_dataset *d, char *buf, size_t size);
/* Write atomically ("-" is stdout): images, labels, classes ('|S<n>') when known,
 * mean and std (f32 [C]) when has_stats. */
int emoe_dataset_write(const char *path, const struct emoe_dataset *d,
                       struct emoe_error *err);
/* Read a dataset .npz (lib/dataset_read.c; "-" reads stdin once): `images` u8 or f32
 * [N, H, W, C] or [N, D, H, W, C] with 1 to 4 channels (large stored members are
 * memory-mapped, read-only), `labels` int32/int64 [N] (kept as i64; each in
 * [0, nclasses) when `classes` is given, else in [0, 2^31 - 1)) or float32 [N]
 * (finite regression targets), optional `classes` ('|S<n>'), optional `mean` and
 * `std` (both or neither, float32 [C]).  EMOE_EFORMAT / EMOE_ERANGE naming the file and
 * the member.  Release with emoe_dataset_free(). */
int emoe_dataset_read(const char *path, struct emoe_dataset **out, struct emoe_error *err);

/*
 * emoe-prep: real datasets from their original archives.
 */
enum emoe_prep_format {
    EMOE_PREP_AUTO = 0,
    EMOE_PREP_CIFAR10,
    EMOE_PREP_CIFAR100,
    EMOE_PREP_MNIST,
    EMOE_PREP_IMAGEFOLDER,
    EMOE_PREP_TINYIMAGENET,
    EMOE_PREP_IMAGENET,
    EMOE_PREP_NIFTI,
    EMOE_PREP_SYNTHETIC,
};
const char *emoe_prep_format_name(enum emoe_prep_format f); /* "cifar10", ... */
int emoe_prep_format_from_name(const char *name, enum emoe_prep_format *out);

struct emoe_prep_options {
    enum emoe_prep_format format;   /* EMOE_PREP_AUTO: detected from the content */
    int size;           /* > 0: shorter side to size, centre crop; 0: keep (must agree) */
    int channels;       /* 1 or 3; 0: the format's own (MNIST 1, others 3) */
    const char *split;  /* "train", "test" or "val" (NULL: the format's default, train) */
    int coarse;         /* CIFAR-100: coarse labels instead of fine */
    const char *subdir; /* imagefolder: the folder inside the source that holds classes */
    size_t limit;       /* > 0: keep the first limit images (after other selections) */
    size_t per_class;   /* > 0: keep this many random images per class (seeded) */
    uint64_t seed;
    const char *classes; /* comma-separated class names to keep, or NULL */
    int strict;         /* a corrupt JPEG is an error instead of a skipped image */
    /* nifti: regression targets from a CSV (id column matched to the volume file names:
     * the name without .nii/.nii.gz equals the id or continues it after '-', '_' or '.') */
    const char *targets, *id_column, *target_column;
    int volumes;        /* synthetic: 3-D volumes with an age-like target */
    /* imagenet validation tar (flat JPEGs): a label file, either "<file> <wnid|label>"
     * lines (also LOC_val_solution.csv) or one wnid or label per line for the images in
     * name order.  wnids become classes (sorted); integer labels are kept as given. */
    const char *label_file;
    /* Called for each skipped image (message names the archive member); may be NULL. */
    void (*warn)(void *ctx, const char *msg);
    /* Called now and then with images done and total (0 when unknown); may be NULL. */
    void (*progress)(void *ctx, size_t done, size_t total);
    void *ctx;
};
void emoe_prep_options_init(struct emoe_prep_options *o);

struct emoe_prep_result {
    enum emoe_prep_format format;   /* the format read */
    size_t images;                  /* images in the dataset */
    size_t skipped;                 /* corrupt JPEGs skipped */
};

/*
 * Read sources (files or folders) into a new dataset (see emoe-prep(1)); the format is
 * o->format or detected from the first source's content.  Sources per format:
 *   mnist: an idx3 images file (its idx1 labels file is found next to it by name) and/or
 *     the labels file, plain or .gz, or a folder with {train,t10k}-*-ubyte[.gz] (split);
 *   cifar10/cifar100: the binary .tar.gz (members chosen by split; label names from
 *     batches.meta.txt, fine_ or coarse_label_names.txt) or extracted .bin files;
 *   imagefolder/imagenet: folders, .tar, .tar.gz, .zip (streamed; classes are the folders
 *     below o->subdir, below the folder named o->split, or below the longest common
 *     folder); member tars of an archive are read nested (ImageNet training tar), flat
 *     JPEGs take labels from o->label_file (validation tar);
 *   tinyimagenet: tiny-imagenet-200.zip or its folder (split train or val);
 *   nifti: .nii/.nii.gz files or folders of them, targets from o->targets;
 *   synthetic: no source.
 * The order is deterministic (class, then member path; record order for binary
 * formats) and does not depend on the archive order or the thread count (-j, see
 * emoe_threads_set).  Corrupt JPEGs are skipped (o->warn, res->skipped) unless
 * o->strict.  Uses emoe_parallel_for; call it from one thread at a time.
 */
int emoe_prep_read(const char *const *sources, size_t nsources,
                   const struct emoe_prep_options *o, struct emoe_dataset **out,
                   struct emoe_prep_result *res, struct emoe_error *err);

#ifdef __cplusplus
}
#endif
#endif /* EMOE_H */
