/*
 * json.c: a strict, bounded JSON reader (RFC 8259; used for the safetensors
 * header) and a small JSON writer (JSON Lines logs, --json output and the
 * safetensors header), with serde_json's string escaping.
 *
 * Reader bounds: one node per value (every value takes at least one input byte,
 * so at most len + 1 nodes), one string pool of len + 1 bytes (a decoded string
 * plus its NUL is never longer than its quoted source), recursion no deeper than
 * max_depth.  Duplicate keys are found by sorting each object's keys.
 */
#include "config.h"
#include "json.h"

#include <errno.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ C locale */

static locale_t c_locale;
static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;

static void make_c_locale(void)
{
    c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
}

/* Switch this thread to the "C" locale for number conversions; returns the
 * previous locale to give to leave_c_locale(), or (locale_t)0 when it could not
 * (then callers fix up the decimal point themselves). */
static locale_t enter_c_locale(void)
{
    pthread_once(&c_locale_once, make_c_locale);
    if (c_locale == (locale_t)0)
        return (locale_t)0;
    return uselocale(c_locale);
}

static void leave_c_locale(locale_t old)
{
    if (old != (locale_t)0)
        uselocale(old);
}

/* ----------------------------------------------------------------- UTF-8 */

/* Length of the valid UTF-8 sequence at p (p < end), or 0 when invalid. */
static size_t utf8_seq(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t avail = (size_t)(end - p);
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return avail >= 2 && (p[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if (avail < 3 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80)
            return 0;
        if (c == 0xe0 && p[1] < 0xa0) /* overlong */
            return 0;
        if (c == 0xed && p[1] >= 0xa0) /* UTF-16 surrogate */
            return 0;
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if (avail < 4 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 ||
            (p[3] & 0xc0) != 0x80)
            return 0;
        if (c == 0xf0 && p[1] < 0x90) /* overlong */
            return 0;
        if (c == 0xf4 && p[1] >= 0x90) /* above U+10FFFF */
            return 0;
        return 4;
    }
    return 0;
}

int emoe_utf8_valid(const void *s, size_t n, size_t *bad)
{
    const unsigned char *p = s, *end = p + n;
    while (p < end) {
        if (*p < 0x80) {
            p++;
            continue;
        }
        size_t k = utf8_seq(p, end);
        if (k == 0) {
            if (bad)
                *bad = (size_t)(p - (const unsigned char *)s);
            return 0;
        }
        p += k;
    }
    return 1;
}

const char *emoe_json_msg_str(const char *s, size_t n, char *buf, size_t size)
{
    if (size == 0)
        return buf;
    size_t limit = size - 1, used = 0;
    int cut = 0;
    if (n > limit) {
        limit = size > 4 ? size - 4 : 0;
        cut = 1;
    }
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        size_t k = *p < 0x80 ? 1 : utf8_seq(p, end);
        if (k == 0)
            k = 1;
        if (used + k > limit)
            break;
        for (size_t i = 0; i < k; i++) {
            unsigned char c = p[i];
            buf[used++] = (char)(c < 0x20 || c == 0x7f || (k == 1 && c >= 0x80) ? '?' : c);
        }
        p += k;
    }
    if (cut && size >= 4) {
        memcpy(buf + used, "...", 3);
        used += 3;
    }
    buf[used] = 0;
    return buf;
}

/* ---------------------------------------------------------------- reader */

struct emoe_json_doc {
    struct emoe_json *nodes;
    size_t n, cap;
    char *pool;
    size_t pool_used, pool_cap;
};

struct parser {
    const unsigned char *start, *p, *end;
    int max_depth;
    struct emoe_json_doc *doc;
    size_t *child, *next, *last; /* per node: first child, next sibling, last child */
    const char *name;
    struct emoe_error *err;
};

#define NONE ((size_t)-1)

static int syntax(struct parser *ps, const unsigned char *at, const char *what)
{
    return emoe_error_set(ps->err, EMOE_EFORMAT, "%s: invalid JSON at byte %zu: %s", ps->name,
                          (size_t)(at - ps->start), what);
}

static int new_node(struct parser *ps, enum emoe_json_type type, size_t *idx)
{
    struct emoe_json_doc *d = ps->doc;
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 64;
        size_t bound = (size_t)(ps->end - ps->start) + 1;
        if (cap > bound)
            cap = bound;
        if (cap <= d->n) /* cannot happen: every value consumes input */
            return emoe_error_set(ps->err, EMOE_EFORMAT, "%s: too many JSON values", ps->name);
        struct emoe_json *nodes = realloc(d->nodes, cap * sizeof *nodes);
        if (!nodes)
            return emoe_error_set(ps->err, EMOE_ENOMEM, "%s: out of memory", ps->name);
        d->nodes = nodes;
        size_t *a = realloc(ps->child, cap * sizeof *a);
        if (!a)
            return emoe_error_set(ps->err, EMOE_ENOMEM, "%s: out of memory", ps->name);
        ps->child = a;
        a = realloc(ps->next, cap * sizeof *a);
        if (!a)
            return emoe_error_set(ps->err, EMOE_ENOMEM, "%s: out of memory", ps->name);
        ps->next = a;
        a = realloc(ps->last, cap * sizeof *a);
        if (!a)
            return emoe_error_set(ps->err, EMOE_ENOMEM, "%s: out of memory", ps->name);
        ps->last = a;
        d->cap = cap;
    }
    size_t i = d->n++;
    memset(&d->nodes[i], 0, sizeof d->nodes[i]);
    d->nodes[i].type = type;
    d->nodes[i].pos = (size_t)(ps->p - ps->start);
    ps->child[i] = ps->next[i] = ps->last[i] = NONE;
    *idx = i;
    return EMOE_OK;
}

static void skip_ws(struct parser *ps)
{
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int hex4(const unsigned char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return 0;
        v = v << 4 | d;
    }
    *out = v;
    return 1;
}

static size_t put_utf8(char *dst, unsigned cp)
{
    if (cp < 0x80) {
        dst[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        dst[0] = (char)(0xc0 | cp >> 6);
        dst[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        dst[0] = (char)(0xe0 | cp >> 12);
        dst[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        dst[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    dst[0] = (char)(0xf0 | cp >> 18);
    dst[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    dst[2] = (char)(0x80 | (cp >> 6 & 0x3f));
    dst[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* ps->p is at the opening quote.  Decodes into the pool. */
static int parse_string(struct parser *ps, const char **out, size_t *out_len)
{
    struct emoe_json_doc *d = ps->doc;
    const unsigned char *open = ps->p;
    char *dst = d->pool + d->pool_used;
    size_t n = 0;
    ps->p++;
    for (;;) {
        if (ps->p >= ps->end)
            return syntax(ps, open, "unterminated string");
        unsigned c = *ps->p;
        if (c == '"') {
            ps->p++;
            break;
        }
        if (c < 0x20)
            return syntax(ps, ps->p, "control character in a string (write it as \\u00XX)");
        if (c == '\\') {
            const unsigned char *esc = ps->p;
            if (ps->end - ps->p < 2)
                return syntax(ps, esc, "unterminated string");
            unsigned e = ps->p[1];
            ps->p += 2;
            switch (e) {
            case '"': dst[n++] = '"'; break;
            case '\\': dst[n++] = '\\'; break;
            case '/': dst[n++] = '/'; break;
            case 'b': dst[n++] = '\b'; break;
            case 'f': dst[n++] = '\f'; break;
            case 'n': dst[n++] = '\n'; break;
            case 'r': dst[n++] = '\r'; break;
            case 't': dst[n++] = '\t'; break;
            case 'u': {
                unsigned cp, lo;
                if (ps->end - ps->p < 4 || !hex4(ps->p, &cp))
                    return syntax(ps, esc, "invalid \\u escape (four hex digits needed)");
                ps->p += 4;
                if (cp >= 0xdc00 && cp <= 0xdfff)
                    return syntax(ps, esc, "lone trailing surrogate in a \\u escape");
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' ||
                        !hex4(ps->p + 2, &lo) || lo < 0xdc00 || lo > 0xdfff)
                        return syntax(ps, esc, "lone leading surrogate in a \\u escape");
                    ps->p += 6;
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                }
                n += put_utf8(dst + n, cp);
                break;
            }
            default:
                return syntax(ps, esc, "invalid escape in a string");
            }
            continue;
        }
        if (c < 0x80) {
            dst[n++] = (char)c;
            ps->p++;
            continue;
        }
        size_t k = utf8_seq(ps->p, ps->end);
        if (k == 0)
            return emoe_error_set(ps->err, EMOE_EFORMAT, "%s: invalid UTF-8 at byte %zu",
                                  ps->name, (size_t)(ps->p - ps->start));
        memcpy(dst + n, ps->p, k);
        n += k;
        ps->p += k;
    }
    dst[n] = 0;
    d->pool_used += n + 1;
    *out = dst;
    *out_len = n;
    return EMOE_OK;
}

static int is_digit(const unsigned char *p, const unsigned char *end)
{
    return p < end && *p >= '0' && *p <= '9';
}

static int parse_number(struct parser *ps, struct emoe_json *v)
{
    const unsigned char *s = ps->p, *p = ps->p, *end = ps->end;
    int neg = 0, frac = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    if (!is_digit(p, end))
        return syntax(ps, s, "invalid number");
    uint64_t mag = 0;
    int big = 0;
    if (*p == '0') {
        p++;
        if (is_digit(p, end))
            return syntax(ps, s, "invalid number (leading zero)");
    } else {
        while (is_digit(p, end)) {
            unsigned dgt = (unsigned)(*p - '0');
            if (mag > (UINT64_MAX - dgt) / 10)
                big = 1;
            else
                mag = mag * 10 + dgt;
            p++;
        }
    }
    if (p < end && *p == '.') {
        frac = 1;
        p++;
        if (!is_digit(p, end))
            return syntax(ps, s, "invalid number (digit expected after '.')");
        while (is_digit(p, end))
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        frac = 1;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (!is_digit(p, end))
            return syntax(ps, s, "invalid number (digit expected in the exponent)");
        while (is_digit(p, end))
            p++;
    }
    ps->p = p;
    if (!frac && !big) {
        if (!neg && mag <= (uint64_t)INT64_MAX) {
            v->is_int = 1;
            v->inum = (int64_t)mag;
            v->num = (double)mag;
            return EMOE_OK;
        }
        if (neg && mag != 0 && mag <= (uint64_t)INT64_MAX + 1) {
            v->is_int = 1;
            v->inum = mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag;
            v->num = (double)v->inum;
            return EMOE_OK;
        }
    }
    /* Not an int64: convert the text (copied, since the input is not terminated). */
    size_t len = (size_t)(p - s);
    char small[64];
    char *tmp = len < sizeof small ? small : malloc(len + 1);
    if (!tmp)
        return emoe_error_set(ps->err, EMOE_ENOMEM, "%s: out of memory", ps->name);
    memcpy(tmp, s, len);
    tmp[len] = 0;
    locale_t old = enter_c_locale();
    if (old == (locale_t)0) {
        const char *dp = localeconv()->decimal_point;
        char *dot = strchr(tmp, '.');
        if (dot && dp && dp[0] && !dp[1])
            *dot = dp[0];
    }
    v->num = strtod(tmp, NULL);
    leave_c_locale(old);
    if (tmp != small)
        free(tmp);
    if (!isfinite(v->num)) /* as serde_json: no number beyond the double range */
        return syntax(ps, s, "number out of range");
    return EMOE_OK;
}

static int match_lit(struct parser *ps, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, lit, n) != 0)
        return 0;
    ps->p += n;
    return 1;
}

static void append_child(struct parser *ps, size_t parent, size_t kid)
{
    if (ps->last[parent] == NONE)
        ps->child[parent] = kid;
    else
        ps->next[ps->last[parent]] = kid;
    ps->last[parent] = kid;
    ps->doc->nodes[parent].count++;
}

static int parse_value(struct parser *ps, int depth, size_t *idx);

static int parse_container(struct parser *ps, int depth, int is_obj, size_t *idx)
{
    const unsigned char *open = ps->p;
    if (depth >= ps->max_depth)
        return emoe_error_set(ps->err, EMOE_EFORMAT,
                              "%s: JSON nested deeper than %d levels at byte %zu", ps->name,
                              ps->max_depth, (size_t)(open - ps->start));
    size_t me;
    int rc = new_node(ps, is_obj ? EMOE_JSON_OBJECT : EMOE_JSON_ARRAY, &me);
    if (rc != EMOE_OK)
        return rc;
    ps->p++;
    skip_ws(ps);
    char close = is_obj ? '}' : ']';
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        *idx = me;
        return EMOE_OK;
    }
    for (;;) {
        const char *key = NULL;
        size_t key_len = 0, key_pos = 0;
        if (is_obj) {
            key_pos = (size_t)(ps->p - ps->start);
            if (ps->p >= ps->end || *ps->p != '"')
                return syntax(ps, ps->p, ps->p >= ps->end ? "unterminated object"
                                                          : "expected a string key");
            rc = parse_string(ps, &key, &key_len);
            if (rc != EMOE_OK)
                return rc;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':')
                return syntax(ps, ps->p, "expected ':' after an object key");
            ps->p++;
            skip_ws(ps);
        }
        size_t kid;
        rc = parse_value(ps, depth + 1, &kid);
        if (rc != EMOE_OK)
            return rc;
        ps->doc->nodes[kid].key = key;
        ps->doc->nodes[kid].key_len = key_len;
        ps->doc->nodes[kid].key_pos = key_pos;
        append_child(ps, me, kid);
        skip_ws(ps);
        if (ps->p >= ps->end)
            return syntax(ps, open, is_obj ? "unterminated object" : "unterminated array");
        if (*ps->p == ',') {
            ps->p++;
            skip_ws(ps);
            continue;
        }
        if (*ps->p == close) {
            ps->p++;
            break;
        }
        return syntax(ps, ps->p, is_obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
    *idx = me;
    return EMOE_OK;
}

static int parse_value(struct parser *ps, int depth, size_t *idx)
{
    if (ps->p >= ps->end)
        return syntax(ps, ps->p, "unexpected end of text (value expected)");
    unsigned c = *ps->p;
    int rc;
    switch (c) {
    case '{':
        return parse_container(ps, depth, 1, idx);
    case '[':
        return parse_container(ps, depth, 0, idx);
    case '"': {
        if ((rc = new_node(ps, EMOE_JSON_STRING, idx)) != EMOE_OK)
            return rc;
        const char *s;
        size_t n;
        if ((rc = parse_string(ps, &s, &n)) != EMOE_OK)
            return rc;
        ps->doc->nodes[*idx].str = s;
        ps->doc->nodes[*idx].len = n;
        return EMOE_OK;
    }
    case 't':
    case 'f':
    case 'n': {
        enum emoe_json_type t = c == 't' ? EMOE_JSON_TRUE : c == 'f' ? EMOE_JSON_FALSE
                                                                    : EMOE_JSON_NULL;
        if ((rc = new_node(ps, t, idx)) != EMOE_OK)
            return rc;
        if (!match_lit(ps, c == 't' ? "true" : c == 'f' ? "false" : "null"))
            return syntax(ps, ps->p, "invalid literal");
        return EMOE_OK;
    }
    default:
        if (c == '-' || (c >= '0' && c <= '9')) {
            if ((rc = new_node(ps, EMOE_JSON_NUMBER, idx)) != EMOE_OK)
                return rc;
            return parse_number(ps, &ps->doc->nodes[*idx]);
        }
        if (c >= 0x80 && utf8_seq(ps->p, ps->end) == 0)
            return emoe_error_set(ps->err, EMOE_EFORMAT, "%s: invalid UTF-8 at byte %zu",
                                  ps->name, (size_t)(ps->p - ps->start));
        return syntax(ps, ps->p, "unexpected character (value expected)");
    }
}

static int cmp_key(const void *a, const void *b)
{
    const struct emoe_json *x = *(const struct emoe_json *const *)a;
    const struct emoe_json *y = *(const struct emoe_json *const *)b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->key, y->key, n);
    if (c)
        return c;
    if (x->key_len != y->key_len)
        return x->key_len < y->key_len ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static int check_duplicates(struct emoe_json_doc *d, const char *name, struct emoe_error *err)
{
    size_t maxc = 0;
    for (size_t i = 0; i < d->n; i++)
        if (d->nodes[i].type == EMOE_JSON_OBJECT && d->nodes[i].count > maxc)
            maxc = d->nodes[i].count;
    if (maxc < 2)
        return EMOE_OK;
    const struct emoe_json **v = malloc(maxc * sizeof *v);
    if (!v)
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", name);
    int rc = EMOE_OK;
    for (size_t i = 0; i < d->n && rc == EMOE_OK; i++) {
        const struct emoe_json *o = &d->nodes[i];
        if (o->type != EMOE_JSON_OBJECT || o->count < 2)
            continue;
        size_t k = 0;
        for (const struct emoe_json *m = o->child; m; m = m->next)
            v[k++] = m;
        qsort(v, k, sizeof *v, cmp_key);
        for (size_t j = 1; j < k; j++)
            if (v[j]->key_len == v[j - 1]->key_len &&
                memcmp(v[j]->key, v[j - 1]->key, v[j]->key_len) == 0) {
                char b[120];
                rc = emoe_error_set(err, EMOE_EFORMAT, "%s: duplicate key '%s' at byte %zu",
                                    name, emoe_json_msg_str(v[j]->key, v[j]->key_len, b,
                                                            sizeof b),
                                    v[j]->key_pos);
                break;
            }
    }
    free(v);
    return rc;
}

void emoe_json_free(struct emoe_json_doc *doc)
{
    if (!doc)
        return;
    free(doc->nodes);
    free(doc->pool);
    free(doc);
}

int emoe_json_parse(const char *text, size_t len, int max_depth, const char *name,
                    struct emoe_json_doc **out, struct emoe_error *err)
{
    *out = NULL;
    if (!name)
        name = "<json>";
    if (len >= SIZE_MAX / 2)
        return emoe_error_set(err, EMOE_ERANGE, "%s: JSON text too large", name);
    struct emoe_json_doc *d = calloc(1, sizeof *d);
    if (!d)
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", name);
    d->pool_cap = len + 1;
    d->pool = malloc(d->pool_cap);
    if (!d->pool) {
        free(d);
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", name);
    }
    struct parser ps = {
        .start = (const unsigned char *)text,
        .p = (const unsigned char *)text,
        .end = (const unsigned char *)text + len,
        .max_depth = max_depth > 0 ? max_depth : EMOE_JSON_DEFAULT_DEPTH,
        .doc = d,
        .name = name,
        .err = err,
    };
    size_t root;
    skip_ws(&ps);
    int rc = parse_value(&ps, 0, &root);
    if (rc == EMOE_OK) {
        skip_ws(&ps);
        if (ps.p != ps.end) {
            if (*ps.p >= 0x80 && utf8_seq(ps.p, ps.end) == 0)
                rc = emoe_error_set(err, EMOE_EFORMAT, "%s: invalid UTF-8 at byte %zu", name,
                                    (size_t)(ps.p - ps.start));
            else
                rc = syntax(&ps, ps.p, "trailing characters after the JSON value");
        }
    }
    if (rc == EMOE_OK) {
        for (size_t i = 0; i < d->n; i++) {
            d->nodes[i].child = ps.child[i] == NONE ? NULL : &d->nodes[ps.child[i]];
            d->nodes[i].next = ps.next[i] == NONE ? NULL : &d->nodes[ps.next[i]];
        }
        rc = check_duplicates(d, name, err);
    }
    free(ps.child);
    free(ps.next);
    free(ps.last);
    if (rc != EMOE_OK) {
        emoe_json_free(d);
        return rc;
    }
    *out = d;
    return EMOE_OK;
}

const struct emoe_json *emoe_json_root(const struct emoe_json_doc *doc)
{
    return doc && doc->n ? &doc->nodes[0] : NULL;
}

const struct emoe_json *emoe_json_get(const struct emoe_json *o, const char *key)
{
    if (!o || o->type != EMOE_JSON_OBJECT)
        return NULL;
    size_t n = strlen(key);
    for (const struct emoe_json *m = o->child; m; m = m->next)
        if (m->key_len == n && memcmp(m->key, key, n) == 0)
            return m;
    return NULL;
}

const char *emoe_json_type_name(enum emoe_json_type t)
{
    switch (t) {
    case EMOE_JSON_NULL: return "null";
    case EMOE_JSON_FALSE:
    case EMOE_JSON_TRUE: return "boolean";
    case EMOE_JSON_NUMBER: return "number";
    case EMOE_JSON_STRING: return "string";
    case EMOE_JSON_ARRAY: return "array";
    case EMOE_JSON_OBJECT: return "object";
    }
    return "?";
}

/* ---------------------------------------------------------------- writer */

enum { ST_OBJ = 1, ST_ITEMS = 2, ST_KEY = 4 };

void emoe_json_out_init(struct emoe_json_out *o)
{
    memset(o, 0, sizeof *o);
}

void emoe_json_out_reset(struct emoe_json_out *o)
{
    o->len = 0;
    if (o->buf)
        o->buf[0] = 0;
    o->status = EMOE_OK;
    o->depth = 0;
    o->done = 0;
}

void emoe_json_out_free(struct emoe_json_out *o)
{
    free(o->buf);
    memset(o, 0, sizeof *o);
}

static int fail(struct emoe_json_out *o, int code)
{
    if (o->status == EMOE_OK)
        o->status = code;
    return o->status;
}

static int put(struct emoe_json_out *o, const char *s, size_t n)
{
    if (o->status != EMOE_OK)
        return o->status;
    if (n >= SIZE_MAX / 2 - o->len)
        return fail(o, EMOE_ENOMEM);
    if (o->len + n + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 256;
        while (cap < o->len + n + 1)
            cap *= 2;
        char *b = realloc(o->buf, cap);
        if (!b)
            return fail(o, EMOE_ENOMEM);
        o->buf = b;
        o->cap = cap;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = 0;
    return EMOE_OK;
}

/* Bookkeeping before any value: commas, and that a value is allowed here. */
static int before_value(struct emoe_json_out *o)
{
    if (o->status != EMOE_OK)
        return o->status;
    if (o->depth == 0)
        return o->done ? fail(o, EMOE_EINVAL) : EMOE_OK;
    unsigned char *s = &o->state[o->depth - 1];
    if (*s & ST_OBJ) {
        if (!(*s & ST_KEY))
            return fail(o, EMOE_EINVAL);
        *s &= (unsigned char)~ST_KEY;
        return EMOE_OK;
    }
    int rc = (*s & ST_ITEMS) ? put(o, ",", 1) : EMOE_OK;
    *s |= ST_ITEMS;
    return rc;
}

static void after_value(struct emoe_json_out *o)
{
    if (o->depth == 0 && o->status == EMOE_OK)
        o->done = 1;
}

static const char hexdig[] = "0123456789abcdef";

/* s must be valid UTF-8; escapes as serde_json's format_escaped_str does. */
static int put_escaped(struct emoe_json_out *o, const char *s, size_t n)
{
    if (!emoe_utf8_valid(s, n, NULL))
        return fail(o, EMOE_EINVAL);
    int rc = put(o, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n && rc == EMOE_OK; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[6];
        size_t k = 0;
        switch (c) {
        case '"': e[0] = '\\'; e[1] = '"'; k = 2; break;
        case '\\': e[0] = '\\'; e[1] = '\\'; k = 2; break;
        case '\b': e[0] = '\\'; e[1] = 'b'; k = 2; break;
        case '\f': e[0] = '\\'; e[1] = 'f'; k = 2; break;
        case '\n': e[0] = '\\'; e[1] = 'n'; k = 2; break;
        case '\r': e[0] = '\\'; e[1] = 'r'; k = 2; break;
        case '\t': e[0] = '\\'; e[1] = 't'; k = 2; break;
        default:
            if (c < 0x20) {
                memcpy(e, "\\u00", 4);
                e[4] = hexdig[c >> 4];
                e[5] = hexdig[c & 15];
                k = 6;
            }
        }
        if (k == 0)
            continue;
        rc = put(o, s + run, i - run);
        if (rc == EMOE_OK)
            rc = put(o, e, k);
        run = i + 1;
    }
    if (rc == EMOE_OK)
        rc = put(o, s + run, n - run);
    if (rc == EMOE_OK)
        rc = put(o, "\"", 1);
    return rc;
}

static int begin(struct emoe_json_out *o, int obj)
{
    int rc = before_value(o);
    if (rc != EMOE_OK)
        return rc;
    if (o->depth >= EMOE_JSON_OUT_MAX_DEPTH)
        return fail(o, EMOE_EINVAL);
    rc = put(o, obj ? "{" : "[", 1);
    if (rc == EMOE_OK)
        o->state[o->depth++] = obj ? ST_OBJ : 0;
    return rc;
}

static int end(struct emoe_json_out *o, int obj)
{
    if (o->status != EMOE_OK)
        return o->status;
    if (o->depth == 0)
        return fail(o, EMOE_EINVAL);
    unsigned char s = o->state[o->depth - 1];
    if (!!(s & ST_OBJ) != obj || (s & ST_KEY))
        return fail(o, EMOE_EINVAL);
    int rc = put(o, obj ? "}" : "]", 1);
    if (rc == EMOE_OK) {
        o->depth--;
        after_value(o);
    }
    return rc;
}

int emoe_json_begin_object(struct emoe_json_out *o) { return begin(o, 1); }
int emoe_json_end_object(struct emoe_json_out *o) { return end(o, 1); }
int emoe_json_begin_array(struct emoe_json_out *o) { return begin(o, 0); }
int emoe_json_end_array(struct emoe_json_out *o) { return end(o, 0); }

int emoe_json_key_n(struct emoe_json_out *o, const char *key, size_t n)
{
    if (o->status != EMOE_OK)
        return o->status;
    if (o->depth == 0)
        return fail(o, EMOE_EINVAL);
    unsigned char *s = &o->state[o->depth - 1];
    if (!(*s & ST_OBJ) || (*s & ST_KEY))
        return fail(o, EMOE_EINVAL);
    int rc = (*s & ST_ITEMS) ? put(o, ",", 1) : EMOE_OK;
    if (rc == EMOE_OK)
        rc = put_escaped(o, key, n);
    if (rc == EMOE_OK)
        rc = put(o, ":", 1);
    if (rc == EMOE_OK)
        *s |= ST_ITEMS | ST_KEY;
    return rc;
}

int emoe_json_key(struct emoe_json_out *o, const char *key)
{
    return emoe_json_key_n(o, key, strlen(key));
}

/* Write a scalar's text (already formatted). */
static int scalar(struct emoe_json_out *o, const char *text, size_t n)
{
    int rc = before_value(o);
    if (rc == EMOE_OK)
        rc = put(o, text, n);
    if (rc == EMOE_OK)
        after_value(o);
    return rc;
}

int emoe_json_string_n(struct emoe_json_out *o, const char *s, size_t n)
{
    int rc = before_value(o);
    if (rc == EMOE_OK)
        rc = put_escaped(o, s, n);
    if (rc == EMOE_OK)
        after_value(o);
    return rc;
}

int emoe_json_string(struct emoe_json_out *o, const char *s)
{
    return emoe_json_string_n(o, s, strlen(s));
}

int emoe_json_uint(struct emoe_json_out *o, uint64_t v)
{
    char b[24];
    size_t n = sizeof b;
    do {
        b[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return scalar(o, b + n, sizeof b - n);
}

int emoe_json_int(struct emoe_json_out *o, int64_t v)
{
    if (v >= 0)
        return emoe_json_uint(o, (uint64_t)v);
    char b[24];
    size_t n = sizeof b;
    uint64_t m = (uint64_t)0 - (uint64_t)v;
    do {
        b[--n] = (char)('0' + m % 10);
        m /= 10;
    } while (m);
    b[--n] = '-';
    return scalar(o, b + n, sizeof b - n);
}

/* Shortest "%.Ng" that reads back as v (as a float when is_float). */
static size_t format_real(char *b, size_t size, double v, int is_float)
{
    int maxp = is_float ? 9 : 17;
    locale_t old = enter_c_locale();
    int k = 0;
    for (int p = 1; p <= maxp; p++) {
        k = snprintf(b, size, "%.*g", p, v);
        if (is_float ? strtof(b, NULL) == (float)v : strtod(b, NULL) == v)
            break;
    }
    leave_c_locale(old);
    if (k < 0)
        k = 0;
    if ((size_t)k >= size)
        k = (int)size - 1;
    if (old == (locale_t)0) /* no C locale: undo a ',' decimal point */
        for (int i = 0; i < k; i++)
            if (b[i] == ',')
                b[i] = '.';
    return (size_t)k;
}

int emoe_json_double(struct emoe_json_out *o, double v)
{
    if (!isfinite(v))
        return scalar(o, "null", 4);
    char b[40];
    size_t n = format_real(b, sizeof b, v, 0);
    return scalar(o, b, n);
}

int emoe_json_float(struct emoe_json_out *o, float v)
{
    if (!isfinite(v))
        return scalar(o, "null", 4);
    char b[40];
    size_t n = format_real(b, sizeof b, (double)v, 1);
    return scalar(o, b, n);
}

int emoe_json_bool(struct emoe_json_out *o, int v)
{
    return v ? scalar(o, "true", 4) : scalar(o, "false", 5);
}

int emoe_json_null(struct emoe_json_out *o)
{
    return scalar(o, "null", 4);
}

int emoe_json_out_finish(struct emoe_json_out *o, struct emoe_error *err)
{
    switch (o->status) {
    case EMOE_OK:
        break;
    case EMOE_ENOMEM:
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory writing JSON");
    default:
        return emoe_error_set(err, o->status,
                              "invalid JSON writer use (misplaced key or value, unbalanced "
                              "end, invalid UTF-8 or nesting deeper than %d)",
                              EMOE_JSON_OUT_MAX_DEPTH);
    }
    if (!o->done || o->depth != 0)
        return emoe_error_set(err, EMOE_EINVAL, "incomplete JSON value (%d unclosed)",
                              o->depth);
    return EMOE_OK;
}

int emoe_json_out_write_line(struct emoe_json_out *o, FILE *f, const char *name,
                             struct emoe_error *err)
{
    int rc = emoe_json_out_finish(o, err);
    if (rc != EMOE_OK) {
        emoe_error_prefix(err, name);
        emoe_json_out_reset(o);
        return rc;
    }
    errno = 0;
    if (fwrite(o->buf, 1, o->len, f) != o->len || putc('\n', f) == EOF)
        rc = emoe_error_set(err, EMOE_EIO, "%s: write error: %s", name,
                            errno ? strerror(errno) : "short write");
    emoe_json_out_reset(o);
    return rc;
}
