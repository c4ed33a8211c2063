/* test_fmt.c - the hand formatters against snprintf itself: numbers at their edges, and
 * texts built piece by piece cut at every capacity, where the bytes left in the buffer
 * (the NUL and what follows it included) and the length counted must be snprintf's. */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/fmt.h"

static void test_u64(void **state)
{
	(void)state;
	static const uint64_t v[] = { 0, 1, 9, 10, 99, 100, 4294967295u, 4294967296u,
				      10000000000000000000u, UINT64_MAX - 1, UINT64_MAX };
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		char got[FMT_U64_MAX + 1], want[32];
		size_t n = fmt_u64(got, v[i]);
		got[n] = '\0';
		assert_int_equal(n, snprintf(want, sizeof(want), "%" PRIu64, v[i]));
		assert_string_equal(got, want);
	}
	char max[FMT_U64_MAX];
	assert_int_equal(fmt_u64(max, UINT64_MAX), FMT_U64_MAX);
}

static void test_i64(void **state)
{
	(void)state;
	static const int64_t v[] = { 0, 1, -1, 9, -9, 10, -10, INT32_MIN, INT32_MAX,
				     INT64_MAX, INT64_MIN, INT64_MIN + 1 };
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		char got[FMT_I64_MAX + 1], want[32];
		size_t n = fmt_i64(got, v[i]);
		got[n] = '\0';
		assert_int_equal(n, snprintf(want, sizeof(want), "%" PRId64, v[i]));
		assert_string_equal(got, want);
	}
	char min[FMT_I64_MAX];
	assert_int_equal(fmt_i64(min, INT64_MIN), FMT_I64_MAX);
}

/* One text, built by hand and by snprintf into buffers of every capacity from 0 to past
 * its length; the buffers start filled with a marker, so a stray write shows. */
static size_t build(char *out, size_t cap, const char *name, uint64_t len, int64_t delta,
		    const char *slice, size_t slice_n)
{
	struct fmt f = fmt_into(out, cap);
	fmt_lit(&f, "x-name: ");
	fmt_str(&f, name);
	fmt_lit(&f, "\r\nlen: ");
	fmt_dec(&f, len);
	fmt_lit(&f, " delta: ");
	fmt_sdec(&f, delta);
	fmt_lit(&f, " cut: ");
	fmt_strn(&f, slice, slice_n);
	fmt_lit(&f, "\r\n");
	return f.n;
}

static void test_cut_at_every_cap(void **state)
{
	(void)state;
	static const char slice[] = "abcdefgh\0hidden";
	struct {
		const char *name;
		uint64_t len;
		int64_t delta;
		size_t slice_n;
	} cases[] = {
		{ "mock", 0, 0, 3 },
		{ "", UINT64_MAX, INT64_MIN, 0 },
		{ "provider-with-a-longer-name", 1234567, -42, sizeof(slice) - 1 }, /* stops at NUL */
	};
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		char want_full[256];
		int full = snprintf(want_full, sizeof(want_full),
				    "x-name: %s\r\nlen: %" PRIu64 " delta: %" PRId64 " cut: %.*s\r\n",
				    cases[c].name, cases[c].len, cases[c].delta,
				    (int)cases[c].slice_n, slice);
		assert_true(full > 0 && (size_t)full < sizeof(want_full));
		for (size_t cap = 0; cap <= (size_t)full + 2; cap++) {
			char got[260], want[260];
			memset(got, '#', sizeof(got));
			memset(want, '#', sizeof(want));
			size_t n = build(got, cap, cases[c].name, cases[c].len, cases[c].delta, slice,
					 cases[c].slice_n);
			int k = snprintf(want, cap,
					 "x-name: %s\r\nlen: %" PRIu64 " delta: %" PRId64
					 " cut: %.*s\r\n",
					 cases[c].name, cases[c].len, cases[c].delta,
					 (int)cases[c].slice_n, slice);
			assert_int_equal(n, k);
			assert_memory_equal(got, want, sizeof(got));
		}
	}
}

static void test_copy(void **state)
{
	(void)state;
	char got[8], want[8];
	static const struct {
		const char *s;
		size_t max;
	} cases[] = { { "", 5 }, { "text/plain", 4 }, { "text/plain", 100 }, { "ab\0cd", 5 },
		      { "1234567", 7 }, { "12345678", 8 } };
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		memset(got, '#', sizeof(got));
		memset(want, '#', sizeof(want));
		size_t n = fmt_copy(got, sizeof(got), cases[c].s, cases[c].max);
		int k = snprintf(want, sizeof(want), "%.*s", (int)cases[c].max, cases[c].s);
		assert_int_equal(n, k);
		assert_memory_equal(got, want, sizeof(got));
	}
	/* nothing is written through a capacity of 0 */
	got[0] = '#';
	assert_int_equal(fmt_copy(got, 0, "abc", 3), 3);
	assert_int_equal(got[0], '#');
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_u64),
		cmocka_unit_test(test_i64),
		cmocka_unit_test(test_cut_at_every_cap),
		cmocka_unit_test(test_copy),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
