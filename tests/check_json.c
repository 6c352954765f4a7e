/*
 * check_json.c: unit tests of lib/json.c: the strict bounded JSON reader (RFC 8259,
 * UTF-8, surrogates, int64 numbers, duplicate keys, depth) and the JSON writer
 * (serde_json escaping, locale-free shortest numbers, misuse detection).
 */
#include "config.h"
#include "testutil.h"
#include "json.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static struct emoe_json_doc *parse_ok(const char *text)
{
    struct emoe_error err = {0};
    struct emoe_json_doc *d = NULL;
    int rc = emoe_json_parse(text, strlen(text), 0, "t.json", &d, &err);
    ck_assert_msg(rc == EMOE_OK, "parsing '%s': %s", text, err.msg);
    ck_assert(d != NULL);
    return d;
}

/* Parse text[0..len) (may hold NUL), expect failure with code and substr. */
static void parse_bad_n(const char *text, size_t len, int depth, int code, const char *substr)
{
    struct emoe_error err = {0};
    struct emoe_json_doc *d = (struct emoe_json_doc *)1;
    int rc = emoe_json_parse(text, len, depth, "t.json", &d, &err);
    ck_assert_msg(d == NULL, "output not NULL for '%s'", text);
    tu_assert_error(rc, err, code, substr);
    ck_assert_msg(strncmp(err.msg, "t.json: ", 8) == 0, "message '%s' lacks the name", err.msg);
}

static void parse_bad(const char *text, const char *substr)
{
    parse_bad_n(text, strlen(text), 0, EMOE_EFORMAT, substr);
}

START_TEST(test_parse_structure)
{
    struct emoe_json_doc *d =
        parse_ok(" \t\r\n{\"a\": [1, 2, {\"b\": null}], \"c\": true, \"d\": false, \"e\": {}, "
                 "\"f\": []} \n");
    const struct emoe_json *r = emoe_json_root(d);
    ck_assert_int_eq(r->type, EMOE_JSON_OBJECT);
    ck_assert_uint_eq(r->count, 5);
    const struct emoe_json *a = emoe_json_get(r, "a");
    ck_assert_int_eq(a->type, EMOE_JSON_ARRAY);
    ck_assert_uint_eq(a->count, 3);
    ck_assert_int_eq(a->child->inum, 1);
    ck_assert_int_eq(a->child->next->inum, 2);
    const struct emoe_json *o = a->child->next->next;
    ck_assert_int_eq(o->type, EMOE_JSON_OBJECT);
    ck_assert_int_eq(emoe_json_get(o, "b")->type, EMOE_JSON_NULL);
    ck_assert_ptr_null(o->next);
    ck_assert_int_eq(emoe_json_get(r, "c")->type, EMOE_JSON_TRUE);
    ck_assert_int_eq(emoe_json_get(r, "d")->type, EMOE_JSON_FALSE);
    ck_assert_uint_eq(emoe_json_get(r, "e")->count, 0);
    ck_assert_ptr_null(emoe_json_get(r, "e")->child);
    ck_assert_int_eq(emoe_json_get(r, "f")->type, EMOE_JSON_ARRAY);
    ck_assert_ptr_null(emoe_json_get(r, "zz"));
    /* members keep text order */
    ck_assert_str_eq(r->child->key, "a");
    ck_assert_str_eq(r->child->next->key, "c");
    ck_assert_str_eq(emoe_json_type_name(a->type), "array");
    emoe_json_free(d);
    emoe_json_free(NULL);

    d = parse_ok("\"only a string\"");
    ck_assert_str_eq(emoe_json_root(d)->str, "only a string");
    emoe_json_free(d);
}
END_TEST

START_TEST(test_parse_strings)
{
    struct emoe_json_doc *d = parse_ok(
        "[\"\\\"\\\\\\/\\b\\f\\n\\r\\t\", \"\\u00e9\\u65E5\", \"\\ud83d\\ude00\", \"a\\u0000b\", "
        "\"\xc3\xa9\xe6\x97\xa5\xf0\x9f\x98\x80\", \"\"]");
    const struct emoe_json *v = emoe_json_root(d)->child;
    ck_assert_str_eq(v->str, "\"\\/\b\f\n\r\t");
    ck_assert_uint_eq(v->len, 8);
    v = v->next;
    ck_assert_str_eq(v->str, "\xc3\xa9\xe6\x97\xa5");
    v = v->next;
    ck_assert_str_eq(v->str, "\xf0\x9f\x98\x80"); /* U+1F600 from a surrogate pair */
    v = v->next;
    ck_assert_uint_eq(v->len, 3);
    ck_assert(memcmp(v->str, "a\0b", 4) == 0);
    v = v->next;
    ck_assert_str_eq(v->str, "\xc3\xa9\xe6\x97\xa5\xf0\x9f\x98\x80");
    v = v->next;
    ck_assert_uint_eq(v->len, 0);
    ck_assert_str_eq(v->str, "");
    emoe_json_free(d);
}
END_TEST

START_TEST(test_parse_numbers)
{
    struct emoe_json_doc *d = parse_ok(
        "[0, -1, 123, 9223372036854775807, -9223372036854775808, 9223372036854775808, "
        "1.5, 1e3, -0, 2E-2, 18446744073709551616]");
    const struct emoe_json *v = emoe_json_root(d)->child;
    ck_assert(v->is_int && v->inum == 0);
    v = v->next;
    ck_assert(v->is_int && v->inum == -1 && v->num == -1.0);
    v = v->next;
    ck_assert(v->is_int && v->inum == 123);
    v = v->next;
    ck_assert(v->is_int && v->inum == INT64_MAX);
    v = v->next;
    ck_assert(v->is_int && v->inum == INT64_MIN);
    v = v->next;
    ck_assert(!v->is_int && v->num == 9223372036854775808.0); /* beyond int64 */
    v = v->next;
    ck_assert(!v->is_int && v->num == 1.5);
    v = v->next;
    ck_assert(!v->is_int && v->num == 1000.0); /* exponent: not an integer */
    v = v->next;
    ck_assert(!v->is_int && v->num == 0.0 && signbit(v->num)); /* -0 is a float (serde) */
    v = v->next;
    ck_assert(!v->is_int && v->num == 0.02);
    v = v->next;
    ck_assert(!v->is_int && v->num == 18446744073709551616.0);
    emoe_json_free(d);
}
END_TEST

START_TEST(test_parse_rejects_bad_syntax)
{
    parse_bad("", "unexpected end");
    parse_bad("   ", "unexpected end");
    parse_bad("{", "unterminated object");
    parse_bad("[1,", "unexpected end");
    parse_bad("[1,]", "unexpected character");
    parse_bad("{\"a\":1,}", "expected a string key");
    parse_bad("{\"a\" 1}", "expected ':'");
    parse_bad("{a:1}", "expected a string key");
    parse_bad("[1 2]", "expected ',' or ']'");
    parse_bad("{\"a\":1 \"b\":2}", "expected ',' or '}'");
    parse_bad("01", "leading zero");
    parse_bad("-01", "leading zero");
    parse_bad("+1", "unexpected character");
    parse_bad(".5", "unexpected character");
    parse_bad("1.", "digit expected after '.'");
    parse_bad("1e", "digit expected in the exponent");
    parse_bad("1e+", "digit expected in the exponent");
    parse_bad("-", "invalid number");
    parse_bad("[1e400]", "at byte 1: number out of range");
    parse_bad("-1e309", "number out of range");
    parse_bad("NaN", "unexpected character");
    parse_bad("Infinity", "unexpected character");
    parse_bad("tru", "invalid literal");
    parse_bad("nul", "invalid literal");
    parse_bad("'a'", "unexpected character");
    parse_bad("\"abc", "unterminated string");
    parse_bad("\"a\tb\"", "control character");
    parse_bad("\"a\nb\"", "control character");
    parse_bad("\"\\x\"", "invalid escape");
    parse_bad("\"\\u12\"", "four hex digits");
    parse_bad("\"\\u12G4\"", "four hex digits");
    parse_bad("\"\\ud800\"", "lone leading surrogate");
    parse_bad("\"\\ud800\\u0041\"", "lone leading surrogate");
    parse_bad("\"\\udc00\\ud800\"", "lone trailing surrogate");
    parse_bad("1 2", "trailing characters");
    parse_bad("{} x", "trailing characters");
    parse_bad("/* c */ 1", "unexpected character");
    parse_bad("[1] // c", "trailing characters");
    parse_bad_n("[1]\0", 4, 0, EMOE_EFORMAT, "at byte 3: trailing characters");
    parse_bad("{\"a\":1,\"b\":{\"x\":1,\"x\":2}}", "duplicate key 'x' at byte 18");
    parse_bad("{\"k\":1,\"a\":2,\"k\":3}", "duplicate key 'k'");
}
END_TEST

START_TEST(test_parse_rejects_bad_utf8)
{
    parse_bad("\"\xff\"", "invalid UTF-8 at byte 1");
    parse_bad("\"\xc3\"", "invalid UTF-8");              /* truncated sequence */
    parse_bad("\"\xc0\xaf\"", "invalid UTF-8");          /* overlong '/' */
    parse_bad("\"\xe0\x80\xaf\"", "invalid UTF-8");      /* overlong */
    parse_bad("\"\xed\xa0\x80\"", "invalid UTF-8");      /* encoded surrogate */
    parse_bad("\"\xf4\x90\x80\x80\"", "invalid UTF-8");  /* above U+10FFFF */
    parse_bad("\"\xf8\x88\x80\x80\x80\"", "invalid UTF-8");
    parse_bad("[1, \xff]", "invalid UTF-8 at byte 4");
    parse_bad("{\"\x80\":1}", "invalid UTF-8 at byte 2"); /* in a key */

    size_t bad = 0;
    ck_assert(emoe_utf8_valid("plain", 5, &bad));
    ck_assert(emoe_utf8_valid("\xc3\xa9\xf0\x9f\x98\x80\xef\xbf\xbf", 9, &bad));
    ck_assert(!emoe_utf8_valid("ab\xed\xbf\xbf", 5, &bad));
    ck_assert_uint_eq(bad, 2);
    ck_assert(!emoe_utf8_valid("abc\xe6\x97", 5, &bad));
    ck_assert_uint_eq(bad, 3);
}
END_TEST

START_TEST(test_parse_depth_limit)
{
    char buf[600];
    /* 128 nested arrays (serde_json's limit) are fine, 129 are not */
    memset(buf, '[', 128);
    memset(buf + 128, ']', 128);
    struct emoe_error err = {0};
    struct emoe_json_doc *d;
    ck_assert_int_eq(emoe_json_parse(buf, 256, 0, "t.json", &d, &err), EMOE_OK);
    emoe_json_free(d);
    memset(buf, '[', 129);
    memset(buf + 129, ']', 129);
    parse_bad_n(buf, 258, 0, EMOE_EFORMAT, "nested deeper than 128 levels at byte 128");
    /* a deep header does not recurse without bound either */
    memset(buf, '[', sizeof buf);
    parse_bad_n(buf, sizeof buf, 0, EMOE_EFORMAT, "nested deeper than 128");
    parse_bad_n("{\"a\":{\"b\":[1]}}", 15, 2, EMOE_EFORMAT, "nested deeper than 2 levels");
    ck_assert_int_eq(emoe_json_parse("{\"a\":{\"b\":1}}", 13, 2, "t.json", &d, &err), EMOE_OK);
    emoe_json_free(d);
}
END_TEST

START_TEST(test_parse_is_bounded_and_not_terminated)
{
    /* the text need not be NUL-terminated: parse a number at the very end of a
     * heap block (ASan sees any overread) */
    char *p = malloc(3);
    memcpy(p, "1.5", 3);
    struct emoe_error err = {0};
    struct emoe_json_doc *d;
    ck_assert_int_eq(emoe_json_parse(p, 3, 0, "t.json", &d, &err), EMOE_OK);
    ck_assert(emoe_json_root(d)->num == 1.5);
    emoe_json_free(d);
    memcpy(p, "123", 3);
    ck_assert_int_eq(emoe_json_parse(p, 3, 0, "t.json", &d, &err), EMOE_OK);
    ck_assert_int_eq(emoe_json_root(d)->inum, 123);
    emoe_json_free(d);
    memcpy(p, "\"ab", 3);
    tu_assert_error(emoe_json_parse(p, 3, 0, "t.json", &d, &err), err, EMOE_EFORMAT,
                    "unterminated string");
    free(p);

    /* many small values: one node each, no blow-up */
    size_t n = 200000;
    char *big = malloc(2 * n + 2);
    big[0] = '[';
    for (size_t i = 0; i < n; i++) {
        big[1 + 2 * i] = '0';
        big[2 + 2 * i] = ',';
    }
    big[2 * n] = ']';
    ck_assert_int_eq(emoe_json_parse(big, 2 * n + 1, 0, "t.json", &d, &err), EMOE_OK);
    ck_assert_uint_eq(emoe_json_root(d)->count, n);
    emoe_json_free(d);
    free(big);
}
END_TEST

START_TEST(test_msg_str)
{
    char b[16];
    ck_assert_str_eq(emoe_json_msg_str("a\nb\x01", 4, b, sizeof b), "a?b?");
    ck_assert_str_eq(emoe_json_msg_str("0123456789abcdefghij", 20, b, sizeof b),
                     "0123456789ab...");
    /* never cuts inside a character */
    ck_assert_str_eq(emoe_json_msg_str("0123456789a\xc3\xa9zzzz", 17, b, sizeof b),
                     "0123456789a...");
}
END_TEST

/* ------------------------------------------------------------------ writer */

START_TEST(test_writer_builds_compact_json)
{
    struct emoe_json_out o;
    struct emoe_error err = {0};
    emoe_json_out_init(&o);
    ck_assert_int_eq(emoe_json_begin_object(&o), EMOE_OK);
    emoe_json_key(&o, "step");
    emoe_json_int(&o, 10);
    emoe_json_key(&o, "neg");
    emoe_json_int(&o, INT64_MIN);
    emoe_json_key(&o, "big");
    emoe_json_uint(&o, UINT64_MAX);
    emoe_json_key(&o, "list");
    emoe_json_begin_array(&o);
    emoe_json_bool(&o, 1);
    emoe_json_bool(&o, 0);
    emoe_json_null(&o);
    emoe_json_begin_object(&o);
    emoe_json_end_object(&o);
    emoe_json_begin_array(&o);
    emoe_json_end_array(&o);
    emoe_json_string(&o, "s");
    emoe_json_end_array(&o);
    emoe_json_key_n(&o, "k\0z", 3);
    emoe_json_string_n(&o, "v\0", 2);
    ck_assert_int_eq(emoe_json_end_object(&o), EMOE_OK);
    ck_assert_int_eq(emoe_json_out_finish(&o, &err), EMOE_OK);
    const char *want = "{\"step\":10,\"neg\":-9223372036854775808,\"big\":18446744073709551615,"
                       "\"list\":[true,false,null,{},[],\"s\"],\"k\\u0000z\":\"v\\u0000\"}";
    ck_assert_str_eq(o.buf, want);
    ck_assert_uint_eq(o.len, strlen(want));

    /* the reader takes back what the writer wrote */
    struct emoe_json_doc *d;
    ck_assert_int_eq(emoe_json_parse(o.buf, o.len, 0, "t.json", &d, &err), EMOE_OK);
    const struct emoe_json *r = emoe_json_root(d);
    ck_assert_int_eq(emoe_json_get(r, "neg")->inum, INT64_MIN);
    ck_assert_uint_eq(r->child->next->next->next->next->key_len, 3);
    emoe_json_free(d);

    emoe_json_out_reset(&o);
    ck_assert_uint_eq(o.len, 0);
    emoe_json_int(&o, -7);
    ck_assert_int_eq(emoe_json_out_finish(&o, &err), EMOE_OK);
    ck_assert_str_eq(o.buf, "-7");
    emoe_json_out_free(&o);
}
END_TEST

START_TEST(test_writer_escapes_like_serde_json)
{
    struct emoe_json_out o;
    emoe_json_out_init(&o);
    emoe_json_string(&o, "a\"b\\c/d\b\f\n\r\t\x01\x1f\x7f \xc3\xa9\xf0\x9f\x98\x80");
    ck_assert_str_eq(o.buf, "\"a\\\"b\\\\c/d\\b\\f\\n\\r\\t\\u0001\\u001f\x7f \xc3\xa9"
                            "\xf0\x9f\x98\x80\"");
    emoe_json_out_free(&o);
}
END_TEST

static const char *fmt_double(double v)
{
    static char buf[64];
    struct emoe_json_out o;
    emoe_json_out_init(&o);
    ck_assert_int_eq(emoe_json_double(&o, v), EMOE_OK);
    snprintf(buf, sizeof buf, "%s", o.buf);
    emoe_json_out_free(&o);
    return buf;
}

static const char *fmt_float(float v)
{
    static char buf[64];
    struct emoe_json_out o;
    emoe_json_out_init(&o);
    ck_assert_int_eq(emoe_json_float(&o, v), EMOE_OK);
    snprintf(buf, sizeof buf, "%s", o.buf);
    emoe_json_out_free(&o);
    return buf;
}

START_TEST(test_writer_numbers_shortest_round_trip)
{
    ck_assert_str_eq(fmt_double(0.1), "0.1");
    ck_assert_str_eq(fmt_double(1.0 / 3.0), "0.3333333333333333");
    ck_assert_str_eq(fmt_double(3.0), "3");
    ck_assert_str_eq(fmt_double(-2.5), "-2.5");
    ck_assert_str_eq(fmt_double(1e-7), "1e-07");
    ck_assert_str_eq(fmt_double(1e300), "1e+300");
    ck_assert_str_eq(fmt_double(0.1 + 0.2), "0.30000000000000004");
    ck_assert_str_eq(fmt_double(-0.0), "-0");
    ck_assert_str_eq(fmt_double(NAN), "null");
    ck_assert_str_eq(fmt_double(INFINITY), "null");
    ck_assert_str_eq(fmt_float(0.1f), "0.1");
    ck_assert_str_eq(fmt_float(1.0f / 3.0f), "0.33333334");
    ck_assert_str_eq(fmt_float(16777216.0f), "16777216");
    ck_assert_str_eq(fmt_float(3.4028235e38f), "3.4028235e+38");
    ck_assert_str_eq(fmt_float(-INFINITY), "null");
    /* every printed double reads back exactly */
    double vals[] = {M_PI, 6.02214076e23, 5e-324, 1.7976931348623157e308, 123456.789};
    for (size_t i = 0; i < sizeof vals / sizeof *vals; i++)
        ck_assert(strtod(fmt_double(vals[i]), NULL) == vals[i]);
}
END_TEST

START_TEST(test_writer_detects_misuse)
{
    struct emoe_json_out o;
    struct emoe_error err = {0};
    emoe_json_out_init(&o);
    emoe_json_begin_object(&o);
    ck_assert_int_eq(emoe_json_int(&o, 1), EMOE_EINVAL); /* value without a key */
    ck_assert_int_eq(emoe_json_key(&o, "a"), EMOE_EINVAL); /* sticky */
    tu_assert_error(emoe_json_out_finish(&o, &err), err, EMOE_EINVAL, "invalid JSON writer use");
    emoe_json_out_reset(&o);

    emoe_json_begin_array(&o);
    ck_assert_int_eq(emoe_json_key(&o, "a"), EMOE_EINVAL); /* key in an array */
    emoe_json_out_reset(&o);
    emoe_json_begin_array(&o);
    ck_assert_int_eq(emoe_json_end_object(&o), EMOE_EINVAL);
    emoe_json_out_reset(&o);
    ck_assert_int_eq(emoe_json_end_array(&o), EMOE_EINVAL);
    emoe_json_out_reset(&o);
    emoe_json_begin_object(&o);
    emoe_json_key(&o, "a");
    ck_assert_int_eq(emoe_json_end_object(&o), EMOE_EINVAL); /* key without value */
    emoe_json_out_reset(&o);
    emoe_json_int(&o, 1);
    ck_assert_int_eq(emoe_json_int(&o, 2), EMOE_EINVAL); /* second top-level value */
    emoe_json_out_reset(&o);
    ck_assert_int_eq(emoe_json_string(&o, "bad \xff"), EMOE_EINVAL);
    emoe_json_out_reset(&o);
    emoe_json_begin_array(&o);
    tu_assert_error(emoe_json_out_finish(&o, &err), err, EMOE_EINVAL, "incomplete JSON value");
    emoe_json_out_reset(&o);
    tu_assert_error(emoe_json_out_finish(&o, &err), err, EMOE_EINVAL, "incomplete JSON value");
    for (int i = 0; i < EMOE_JSON_OUT_MAX_DEPTH; i++)
        ck_assert_int_eq(emoe_json_begin_array(&o), EMOE_OK);
    ck_assert_int_eq(emoe_json_begin_array(&o), EMOE_EINVAL);
    emoe_json_out_free(&o);
}
END_TEST

START_TEST(test_writer_json_lines)
{
    const char *path = tu_tmppath("log.jsonl");
    FILE *f = fopen(path, "wb");
    ck_assert(f != NULL);
    struct emoe_json_out o;
    struct emoe_error err = {0};
    emoe_json_out_init(&o);
    for (int i = 0; i < 2; i++) {
        emoe_json_begin_object(&o);
        emoe_json_key(&o, "step");
        emoe_json_int(&o, i);
        emoe_json_key(&o, "loss");
        emoe_json_float(&o, 0.5f * (float)i);
        emoe_json_end_object(&o);
        ck_assert_int_eq(emoe_json_out_write_line(&o, f, path, &err), EMOE_OK);
    }
    emoe_json_begin_array(&o);
    tu_assert_error(emoe_json_out_write_line(&o, f, "log.jsonl", &err), err, EMOE_EINVAL,
                    "log.jsonl: incomplete");
    ck_assert_uint_eq(o.len, 0); /* reset after a failed line too */
    emoe_json_out_free(&o);
    ck_assert_int_eq(fclose(f), 0);
    size_t n;
    char *text = tu_read_file(path, &n);
    const char *want = "{\"step\":0,\"loss\":0}\n{\"step\":1,\"loss\":0.5}\n";
    ck_assert_uint_eq(n, strlen(want));
    ck_assert(memcmp(text, want, n) == 0);
    free(text);
}
END_TEST

static Suite *json_suite(void)
{
    Suite *s = suite_create("json");
    TCase *r = tcase_create("reader");
    tcase_add_test(r, test_parse_structure);
    tcase_add_test(r, test_parse_strings);
    tcase_add_test(r, test_parse_numbers);
    tcase_add_test(r, test_parse_rejects_bad_syntax);
    tcase_add_test(r, test_parse_rejects_bad_utf8);
    tcase_add_test(r, test_parse_depth_limit);
    tcase_add_test(r, test_parse_is_bounded_and_not_terminated);
    tcase_add_test(r, test_msg_str);
    suite_add_tcase(s, r);
    TCase *w = tcase_create("writer");
    tcase_add_test(w, test_writer_builds_compact_json);
    tcase_add_test(w, test_writer_escapes_like_serde_json);
    tcase_add_test(w, test_writer_numbers_shortest_round_trip);
    tcase_add_test(w, test_writer_detects_misuse);
    tcase_add_test(w, test_writer_json_lines);
    suite_add_tcase(s, w);
    return s;
}

int main(void)
{
    return tu_run(json_suite());
}
