/* test_redact.c - each secret shape is redacted, near misses are left alone, and the bound
 * cuts on a UTF-8 boundary with its marker. */
#include <setjmp.h>
#include <stdarg.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "policy/redact.h"

static char *run(const char *in, size_t max, struct buf *b)
{
	b->len = 0;
	assert_int_equal(redact(slice_cstr(in), max, b), 0);
	assert_true(buf_append(b, "", 1, SIZE_MAX));
	return b->p;
}

/* in -> want: the secret part replaced, the words around it kept. */
static const struct {
	const char *in, *want;
} positives[] = {
	{ "key sk-abcdefghijklmnopqrstuvwx1234 here", "key [REDACTED] here" },
	{ "sk-proj-AbC_dEf-123456789012345678901234", "[REDACTED]" },
	{ "x=sk-ant-api03-abcdefghijklmnopqrstuvwxyz_-0123", "x=[REDACTED]" },
	{ "use psk-0123456789abcdefABCDEF now", "use [REDACTED] now" },
	{ "aws AKIAIOSFODNN7EXAMPLE.", "aws [REDACTED]." },
	{ "ASIAY34FZKBOKMUTVV7A", "[REDACTED]" },
	{ "ghp_abcdefghijklmnopqrstuvwxyz0123456789", "[REDACTED]" },
	{ "gho_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ab", "[REDACTED]" },
	{ "ghs_abcdefghijklmnopqrstuvwxyz0123456789 x", "[REDACTED] x" },
	{ "slack xoxb-1234567890-abcdefghij", "slack [REDACTED]" },
	{ "t eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl end",
	  "t [REDACTED] end" },
	{ "a -----BEGIN RSA PRIVATE KEY-----\\nMIIEow\\n-----END RSA PRIVATE KEY----- b",
	  "a [REDACTED] b" },
	{ "-----BEGIN PRIVATE KEY-----\nMIIEvQ\nabc", "[REDACTED]" }, /* cut off: to the end */
	{ "Authorization: Bearer abc.def-ghi\r\n", "Authorization: Bearer [REDACTED]\r\n" },
	{ "authorization: bearer tok123", "authorization: bearer [REDACTED]" },
	{ "{\"Authorization\": \"Bearer xyz789\"}", "{\"Authorization\": \"Bearer [REDACTED]\"}" },
	{ "{\"api_key\": \"hunter2 x\"}", "{\"api_key\": \"[REDACTED]\"}" },
	{ "{\"password\":\"p@ss\"}", "{\"password\":\"[REDACTED]\"}" },
	{ "{\"content\":\"my \\\"secret\\\": \\\"s3cr3t\\\" ok\"}",
	  "{\"content\":\"my \\\"secret\\\": \\\"[REDACTED]\\\" ok\"}" },
	{ "\"token\" : \"t\" \"api-key\": \"k\"", "\"token\" : \"[REDACTED]\" \"api-key\": \"[REDACTED]\"" },
	{ "two sk-aaaaaaaaaaaaaaaaaaaaaaaa and AKIAABCDEFGHIJKLMNOP",
	  "two [REDACTED] and [REDACTED]" },
};

/* Near misses: left exactly as they are. */
static const char *const negatives[] = {
	"sk-short",                                  /* too short for a key */
	"task-abcdefghijklmnopqrstuvwxyz",           /* sk- inside a word */
	"AKIAIOSFODNN7EXAMPL",                       /* 15 characters after AKIA */
	"AKIAIOSFODNN7EXAMPLEX",                     /* 17 */
	"akiaiosfodnn7example",                      /* lower case */
	"ghp_short",
	"ghx_abcdefghijklmnopqrstuvwxyz0123456789",  /* no such GitHub prefix */
	"xoxz-1234567890-abc",
	"eyJhbGciOiJIUzI1NiJ9 only one part",
	"-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
	"Authorization: Basic dXNlcjpwYXNz",
	"the bearer of bad news",
	"{\"tokens\": \"12\", \"password_hint\": \"pet\"}",
	"{\"secret\": 12}",
	"psk-123",
	"",
};

static void test_positives(void **state)
{
	(void)state;
	struct buf b = { 0 };
	for (size_t i = 0; i < sizeof(positives) / sizeof(positives[0]); i++) {
		const char *got = run(positives[i].in, 4096, &b);
		if (strcmp(got, positives[i].want) != 0)
			fail_msg("case %zu: %s -> %s, want %s", i, positives[i].in, got,
				 positives[i].want);
	}
	buf_free(&b);
}

static void test_negatives(void **state)
{
	(void)state;
	struct buf b = { 0 };
	for (size_t i = 0; i < sizeof(negatives) / sizeof(negatives[0]); i++)
		assert_string_equal(run(negatives[i], 4096, &b), negatives[i]);
	buf_free(&b);
}

static void test_bound(void **state)
{
	(void)state;
	struct buf b = { 0 };
	/* fits exactly: untouched */
	assert_string_equal(run("0123456789abcdefghijklmn", 24, &b), "0123456789abcdefghijklmn");
	/* one over: cut, marker within the bound */
	const char *got = run("0123456789abcdefghijklmno", 24, &b);
	assert_int_equal(strlen(got), 24);
	assert_string_equal(got, "0123456789abc" REDACT_CUT);
	/* "é" (2 bytes) straddles the cut: dropped whole */
	got = run("0123456789ab\xc3\xa9zzzzzzzzzzzzzzzzzzzz", 24, &b);
	assert_string_equal(got, "0123456789ab" REDACT_CUT);
	/* a secret before the cut is redacted; the marker counts toward the bound */
	got = run("AKIAIOSFODNN7EXAMPLE and then a long tail of words", 30, &b);
	assert_string_equal(got, "[REDACTED] and then" REDACT_CUT);
	/* a long text: only the bound (and some slack) is searched, and it still ends cut */
	size_t big = 1u << 20;
	char *text = malloc(big + 1);
	assert_non_null(text);
	memset(text, 'a', big);
	memcpy(text + 100, " sk-abcdefghijklmnopqrstuvwx1234 ", 33);
	text[big] = 0;
	got = run(text, 1000, &b);
	assert_int_equal(strlen(got), 1000);
	assert_non_null(strstr(got, " [REDACTED] "));
	assert_null(strstr(got, "sk-"));
	free(text);
	assert_int_equal(redact(slice_cstr("x"), 5, &b), -EINVAL);
	buf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_positives),
		cmocka_unit_test(test_negatives),
		cmocka_unit_test(test_bound),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
