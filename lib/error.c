/*
 * error.c: the error convention (status code plus caller-owned message) and
 * checked size arithmetic.
 */
#include "config.h"
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *emoe_strerror(int code)
{
    switch (code) {
    case EMOE_OK: return "success";
    case EMOE_EIO: return "input/output error";
    case EMOE_EFORMAT: return "malformed input";
    case EMOE_ENOMEM: return "out of memory";
    case EMOE_ERANGE: return "value out of range";
    case EMOE_EINVAL: return "invalid argument";
    case EMOE_ENOTFOUND: return "not found";
    case EMOE_EUNSUPPORTED: return "unsupported";
    case EMOE_ENUMERIC: return "non-finite value";
    case EMOE_EINTR: return "interrupted";
    default: return "unknown error";
    }
}

int emoe_error_set(struct emoe_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

void emoe_error_prefix(struct emoe_error *err, const char *prefix)
{
    if (!err || !prefix)
        return;
    char tmp[sizeof err->msg];
    size_t n = strlen(prefix);
    if (n > sizeof tmp - 3)
        n = sizeof tmp - 3;
    memcpy(tmp, prefix, n);
    memcpy(tmp + n, ": ", 2);
    size_t m = strnlen(err->msg, sizeof err->msg - 1);
    if (m > sizeof tmp - 1 - n - 2)
        m = sizeof tmp - 1 - n - 2;
    memcpy(tmp + n + 2, err->msg, m);
    tmp[n + 2 + m] = 0;
    memcpy(err->msg, tmp, sizeof tmp);
}

int emoe_size_mul(size_t *out, size_t a, size_t b)
{
    size_t r;
    if (__builtin_mul_overflow(a, b, &r))
        return EMOE_ERANGE;
    *out = r;
    return EMOE_OK;
}

int emoe_size_add(size_t *out, size_t a, size_t b)
{
    size_t r;
    if (__builtin_add_overflow(a, b, &r))
        return EMOE_ERANGE;
    *out = r;
    return EMOE_OK;
}
