/* test_json.c - the targeted JSON scanner: field extraction, structure checks, helpers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/json.h"

static const char *const keys[] = { "model", "stream", "n" };

struct scan_case {
	const char *text;
	int rc;
	const char *model, *stream, *n; /* expected raw values; NULL = absent */
};

static const struct scan_case cases[] = {
	{ "{\"model\":\"gpt-4o\",\"stream\":true}", 0, "\"gpt-4o\"", "true", NULL },
	{ "  {\"stream\" : false , \"model\" : \"m\" }\n", 0, "\"m\"", "false", NULL },
	{ "{}", 0, NULL, NULL, NULL },
	{ "{\"n\":-12.5e3}", 0, NULL, NULL, "-12.5e3" },
	/* nested values are skipped whole; keys inside them do not count */
	{ "{\"messages\":[{\"model\":\"inner\",\"content\":\"a}]\\\"b\"}],\"model\":\"outer\"}", 0,
	  "\"outer\"", NULL, NULL },
	{ "{\"stream_options\":{\"include_usage\":true},\"n\":2}", 0, NULL, NULL, "2" },
	/* the last of a repeated key wins */
	{ "{\"model\":\"a\",\"model\":\"b\"}", 0, "\"b\"", NULL, NULL },
	{ "{\"model\":\"esc\\\\\"}", 0, "\"esc\\\\\"", NULL, NULL },
	{ "{\"a\":[],\"b\":{},\"c\":[[],[{}]],\"model\":null}", 0, "null", NULL, NULL },
	/* malformed */
	{ "", -1, NULL, NULL, NULL },
	{ "[]", -1, NULL, NULL, NULL },
	{ "{", -1, NULL, NULL, NULL },
	{ "{\"model\"}", -1, NULL, NULL, NULL },
	{ "{\"model\":}", -1, NULL, NULL, NULL },
	{ "{\"model\":\"x\",}", -1, NULL, NULL, NULL },
	{ "{\"model\":\"x\"} trailing", -1, NULL, NULL, NULL },
	{ "{\"model\":\"unterminated}", -1, NULL, NULL, NULL },
	{ "{\"a\":[1,2}", -1, NULL, NULL, NULL },
	{ "{\"a\":{\"b\":1]}", -1, NULL, NULL, NULL },
	{ "{\"a\":\"ctl\x01\"}", -1, NULL, NULL, NULL },
	{ "{model:1}", -1, NULL, NULL, NULL },
};

static void expect_val(struct slice got, const char *want)
{
	if (!want) {
		assert_null(got.p);
		return;
	}
	assert_non_null(got.p);
	assert_int_equal(got.n, strlen(want));
	assert_memory_equal(got.p, want, got.n);
}

/* Every case, from an exact-size heap copy so that over-reads show under ASan. */
/* A scan's absent value ({NULL, 0}) handed on is neither an object nor an array (found by
 * the tokcount fuzzer: the pointer arithmetic on NULL was undefined). */
static void test_absent_values(void **state)
{
	static const char *const want[] = { "a" };
	struct slice v = { "x", 1 };
	struct json_iter it;

	(void)state;
	assert_int_equal(json_scan_object((struct slice){ NULL, 0 }, want, &v, 1), -1);
	assert_null(v.p);
	assert_false(json_array_begin(&it, (struct slice){ NULL, 0 }));
	assert_true(json_array_begin(&it, SLICE_LIT(" [1]")));
}

static void test_scan_table(void **state)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct scan_case *c = &cases[i];
		size_t n = strlen(c->text);
		char *copy = malloc(n ? n : 1);
		memcpy(copy, c->text, n);
		struct slice v[3];
		int rc = json_scan_object(slice_of(copy, n), keys, v, 3);
		if (rc != c->rc)
			fail_msg("case %zu (%s): rc %d, want %d", i, c->text, rc, c->rc);
		if (rc == 0) {
			expect_val(v[0], c->model);
			expect_val(v[1], c->stream);
			expect_val(v[2], c->n);
		}
		free(copy);
	}
}

/* A well-formed object cut anywhere is rejected, never over-read. */
static void test_every_prefix_rejected(void **state)
{
	const char *text = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"q\\\"\"}],"
			   "\"stream\":true,\"n\":3}";
	size_t len = strlen(text);
	for (size_t cut = 0; cut < len; cut++) {
		char *copy = malloc(cut ? cut : 1);
		memcpy(copy, text, cut);
		struct slice v[3];
		assert_int_equal(json_scan_object(slice_of(copy, cut), keys, v, 3), -1);
		free(copy);
	}
	struct slice v[3];
	assert_int_equal(json_scan_object(slice_cstr(text), keys, v, 3), 0);
	expect_val(v[2], "3");
}

static void test_depth_bound(void **state)
{
	char deep[300];
	size_t n = 0;
	deep[n++] = '{';
	memcpy(deep + n, "\"a\":", 4);
	n += 4;
	for (int i = 0; i < 100; i++)
		deep[n++] = '[';
	for (int i = 0; i < 100; i++)
		deep[n++] = ']';
	deep[n++] = '}';
	struct slice v[3];
	assert_int_equal(json_scan_object(slice_of(deep, n), keys, v, 3), -1);
}

static void test_helpers(void **state)
{
	struct slice s;
	assert_true(json_plain_string(slice_cstr("\"abc\""), &s));
	assert_int_equal(s.n, 3);
	assert_false(json_plain_string(slice_cstr("\"a\\nb\""), &s));
	assert_false(json_plain_string(slice_cstr("abc"), &s));
	int64_t x;
	assert_true(json_int(slice_cstr("-42"), &x));
	assert_int_equal(x, -42);
	assert_false(json_int(slice_cstr("4.2"), &x));
	assert_false(json_int(slice_cstr("12345678901234567890"), &x));
	assert_true(json_is_true(slice_cstr("true")));
	assert_false(json_is_true(slice_cstr("True")));
	assert_true(json_is_null(slice_cstr("null")));

	char out[64];
	size_t n = json_escape(out, sizeof(out), slice_cstr("a\"b\\c\n\x01"));
	assert_int_equal(n, strlen("a\\\"b\\\\c\\n\\u0001"));
	assert_memory_equal(out, "a\\\"b\\\\c\\n\\u0001", n);
	assert_int_equal(json_escape(out, 3, slice_cstr("abcd")), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_scan_table),
		cmocka_unit_test(test_every_prefix_rejected),
		cmocka_unit_test(test_depth_bound),
		cmocka_unit_test(test_helpers),
		cmocka_unit_test(test_absent_values),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
