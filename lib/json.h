/*
 * json.h: libemoe's strict, bounded JSON reader (private; the writer is public in
 * emoe.h).  Used for the safetensors header.
 *
 * The reader accepts exactly RFC 8259 JSON text: one value with optional
 * whitespace (space, tab, LF, CR) around it.  It rejects invalid UTF-8 anywhere,
 * raw control characters in strings, lone or misordered UTF-16 surrogates in
 * \uXXXX escapes, leading zeros, "+1", ".5", "1.", NaN, Infinity, comments,
 * trailing commas, duplicate keys in one object, and nesting deeper than
 * max_depth.  Memory is bounded by the input: at most one node per input byte
 * and one string pool no larger than the input.
 */
#ifndef EMOE_JSON_H
#define EMOE_JSON_H

#include "emoe.h"

#include <stddef.h>
#include <stdint.h>

enum emoe_json_type {
    EMOE_JSON_NULL,
    EMOE_JSON_FALSE,
    EMOE_JSON_TRUE,
    EMOE_JSON_NUMBER,
    EMOE_JSON_STRING,
    EMOE_JSON_ARRAY,
    EMOE_JSON_OBJECT
};

/* serde_json's recursion limit, which the safetensors reference reader inherits. */
#define EMOE_JSON_DEFAULT_DEPTH 128

/* One parsed value.  Nodes live in the document and are valid until it is freed. */
struct emoe_json {
    enum emoe_json_type type;
    /* Member of an object: its key (decoded UTF-8, NUL-terminated; key_len bytes,
     * which may include NUL characters written as \u0000).  NULL otherwise. */
    const char *key;
    size_t key_len;
    size_t key_pos; /* byte offset of the key's opening quote */
    /* String: decoded UTF-8, NUL-terminated, len bytes (may contain NUL). */
    const char *str;
    size_t len;
    /* Number: num is the value as a double (nearest).  is_int is 1 when the text
     * has no fraction or exponent, is not "-0", and fits in int64 (inum). */
    double num;
    int64_t inum;
    int is_int;
    /* Array or object: count members; first member child, then ->next. */
    size_t count;
    const struct emoe_json *child;
    const struct emoe_json *next;
    size_t pos; /* byte offset of the value in the text (for messages) */
};

struct emoe_json_doc;

/*
 * Parse text[0..len) (need not be NUL-terminated).  max_depth <= 0 means
 * EMOE_JSON_DEFAULT_DEPTH.  name starts error messages ("x.safetensors: header");
 * e.g. "NAME: invalid JSON at byte 17: expected ':' after an object key".
 */
int emoe_json_parse(const char *text, size_t len, int max_depth, const char *name,
                    struct emoe_json_doc **out, struct emoe_error *err);
const struct emoe_json *emoe_json_root(const struct emoe_json_doc *doc);
void emoe_json_free(struct emoe_json_doc *doc);

/* Member of object o with key (NUL-terminated), or NULL. */
const struct emoe_json *emoe_json_get(const struct emoe_json *o, const char *key);
/* "null", "boolean", "number", "string", "array", "object". */
const char *emoe_json_type_name(enum emoe_json_type t);

/*
 * Strict UTF-8 check (no overlong forms, no surrogates, nothing above U+10FFFF).
 * Returns 1 when valid; otherwise 0 and *bad (if not NULL) is the offset of the
 * first invalid byte.
 */
int emoe_utf8_valid(const void *s, size_t n, size_t *bad);

/*
 * s[0..n) made safe to quote in a message: at most about size - 1 bytes (cut at
 * a character boundary and ended with "..." when longer), control characters
 * and NUL shown as '?'.  Returns buf.
 */
const char *emoe_json_msg_str(const char *s, size_t n, char *buf, size_t size);

#endif
