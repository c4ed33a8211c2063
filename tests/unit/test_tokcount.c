/* test_tokcount.c - providers/tokcount: which tokenizer a model gets, the stream counter's
 * decoding of JSON string slices split anywhere and its count against a whole-text count,
 * event scanning in both dialects, prompt counts.
 *
 * The counts need the converted vocabularies (tests/tokenizer/run makes them into
 * tests/tokenizer/vocab/, or $PENSTOCK_TOKENIZER_VOCAB_DIR); the tests that need them skip
 * without. tests/tokenizer/oracle.js checks the same counters against tiktoken itself. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/buf.h"
#include "core/json.h"
#include "providers/tokcount.h"
#include "sse_count.h"

static struct tokcount_reg *reg;
static struct tokcount_ctx *ctx;
static const struct tokcount_tokenizer O200K = { TOKCOUNT_O200K, true };
static const struct tokcount_tokenizer CL100K = { TOKCOUNT_CL100K, true };

static void need_vocab(void)
{
	if (!tokcount_reg_has(reg, TOKCOUNT_O200K) || !tokcount_reg_has(reg, TOKCOUNT_CL100K)) {
		fprintf(stderr, "test_tokcount: no vocabularies (tests/tokenizer/run): skipped\n");
		skip();
	}
}

static int64_t count(struct tokcount_tokenizer t, const char *s)
{
	return tokcount_text(ctx, t, s, strlen(s));
}

static void test_pick(void **state)
{
	need_vocab();
	static const struct {
		const char *configured;
		enum provider_kind kind;
		const char *model;
		enum tokcount_method m;
		bool exact;
	} cases[] = {
		{ NULL, PROVIDER_OPENAI, "gpt-4o", TOKCOUNT_O200K, true },
		{ NULL, PROVIDER_OPENAI, "gpt-4o-mini-2024-07-18", TOKCOUNT_O200K, true },
		{ NULL, PROVIDER_OPENAI, "gpt-4.1-nano", TOKCOUNT_O200K, true },
		{ NULL, PROVIDER_OPENAI, "o3-mini", TOKCOUNT_O200K, true },
		{ NULL, PROVIDER_OPENAI, "o1", TOKCOUNT_O200K, true },
		{ NULL, PROVIDER_OPENAI, "gpt-5", TOKCOUNT_O200K, true },
		{ NULL, PROVIDER_OPENAI, "ft:gpt-4o-mini:acme::abc", TOKCOUNT_O200K, true },
		{ NULL, PROVIDER_OPENAI, "gpt-4", TOKCOUNT_CL100K, true },
		{ NULL, PROVIDER_OPENAI, "gpt-4-turbo-2024-04-09", TOKCOUNT_CL100K, true },
		{ NULL, PROVIDER_OPENAI, "gpt-3.5-turbo-0125", TOKCOUNT_CL100K, true },
		{ NULL, PROVIDER_OPENAI, "text-embedding-3-small", TOKCOUNT_CL100K, true },
		{ NULL, PROVIDER_OPENAI, "gpt-4oops", TOKCOUNT_O200K, false },
		{ NULL, PROVIDER_OPENAI, "o1x", TOKCOUNT_O200K, false },
		{ NULL, PROVIDER_OPENAI, "davinci-next", TOKCOUNT_O200K, false },
		{ NULL, PROVIDER_OPENAI, NULL, TOKCOUNT_O200K, false },
		{ NULL, PROVIDER_ANTHROPIC, "claude-sonnet-4", TOKCOUNT_ESTIMATE, false },
		{ NULL, PROVIDER_OPENAI_COMPAT, "gpt-4o", TOKCOUNT_ESTIMATE, false },
		{ "cl100k_base", PROVIDER_OPENAI_COMPAT, "llama", TOKCOUNT_CL100K, true },
		{ "o200k_base", PROVIDER_ANTHROPIC, "x", TOKCOUNT_O200K, true },
		{ "estimate", PROVIDER_OPENAI, "gpt-4o", TOKCOUNT_ESTIMATE, false },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tokcount_tokenizer t = tokcount_pick(reg, cases[i].configured, cases[i].kind,
							    cases[i].model);
		if (t.method != cases[i].m || t.exact != cases[i].exact)
			fail_msg("%s: got %s/%d", cases[i].model ? cases[i].model : "(null)",
				 tokcount_method_name(t.method), t.exact);
	}

	/* No vocabularies: everything is an estimate, by bytes. */
	struct tokcount_reg *none = tokcount_reg_open("/nonexistent/penstock");
	assert_non_null(none);
	assert_false(tokcount_reg_has(none, TOKCOUNT_O200K));
	assert_true(tokcount_reg_has(none, TOKCOUNT_ESTIMATE));
	struct tokcount_tokenizer t = tokcount_pick(none, NULL, PROVIDER_OPENAI, "gpt-4o");
	assert_int_equal(t.method, TOKCOUNT_ESTIMATE);
	assert_false(t.exact);
	struct tokcount_ctx *c = tokcount_ctx_new(none);
	assert_non_null(c);
	assert_int_equal(tokcount_text(c, t, "abcdefghijklmn", 14), 4); /* ceil(14 * 2 / 7) */
	struct tokcount_stream *s = tokcount_stream_new(c, t);
	tokcount_stream_feed(s, 0, slice_cstr("abcdefg"));
	assert_int_equal(tokcount_stream_end(s), 2);
	assert_false(tokcount_stream_exact(s));
	tokcount_stream_free(s);
	tokcount_ctx_free(c);
	tokcount_reg_close(none);
}

static void test_estimate(void **state)
{
	need_vocab();
	const char *text = "The estimate scales o200k_base by five fourths, rounding up.";
	struct tokcount_tokenizer est = { TOKCOUNT_ESTIMATE, false };
	int64_t n = count(O200K, text);
	assert_int_equal(count(est, text), (n * 5 + 3) / 4);
	struct tokcount_stream *s = tokcount_stream_new(ctx, est);
	tokcount_stream_feed(s, 0, slice_cstr(text));
	assert_int_equal(tokcount_stream_end(s), (n * 5 + 3) / 4);
	assert_false(tokcount_stream_exact(s));
	tokcount_stream_free(s);
}

/* Feed raw cut at every single point, then byte by byte: the count is that of want, the
 * decoded text. */
static void check_decode(struct tokcount_tokenizer t, const char *raw, size_t rlen,
			 const char *want, size_t wlen)
{
	int64_t expect = tokcount_text(ctx, t, want, wlen);
	for (size_t cut = 0; cut <= rlen + 1; cut++) {
		struct tokcount_stream *s = tokcount_stream_new(ctx, t);
		assert_non_null(s);
		if (cut <= rlen) {
			tokcount_stream_feed(s, 7, slice_of(raw, cut));
			tokcount_stream_feed(s, 7, slice_of(raw + cut, rlen - cut));
		} else {
			for (size_t i = 0; i < rlen; i++)
				tokcount_stream_feed(s, 7, slice_of(raw + i, 1));
		}
		int64_t got = tokcount_stream_end(s);
		if (got != expect || tokcount_stream_bytes(s) != wlen)
			fail_msg("raw '%.*s' cut at %zu: %lld tokens, %llu bytes; want %lld, %zu",
				 (int)rlen, raw, cut, (long long)got,
				 (unsigned long long)tokcount_stream_bytes(s), (long long)expect,
				 wlen);
		assert_true(tokcount_stream_exact(s));
		tokcount_stream_free(s);
	}
}

#define DEC(raw, want) { raw, sizeof(raw) - 1, want, sizeof(want) - 1 }

static void test_decode(void **state)
{
	need_vocab();
	static const struct {
		const char *raw;
		size_t rlen;
		const char *want;
		size_t wlen;
	} cases[] = {
		DEC("plain text", "plain text"),
		DEC("a\\nb\\\"c\\\\d\\/e\\bf\\fg\\rh\\ti", "a\nb\"c\\d/e\bf\fg\rh\ti"),
		DEC("caf\\u00e9 \\u00E9t\\u00e9", "caf\xC3\xA9 \xC3\xA9t\xC3\xA9"),
		DEC("\\u4eba\\u5de5 \xE4\xBA\xBA", "\xE4\xBA\xBA\xE5\xB7\xA5 \xE4\xBA\xBA"),
		DEC("x\\ud83d\\ude00y", "x\xF0\x9F\x98\x80y"),
		DEC("\xF0\x9F\x98\x80\\ud83d\\ude00", "\xF0\x9F\x98\x80\xF0\x9F\x98\x80"),
		/* lone surrogates: U+FFFD, as tiktoken gets them */
		DEC("a\\ud800b", "a\xEF\xBF\xBD" "b"),
		DEC("a\\udc00b", "a\xEF\xBF\xBD" "b"),
		DEC("\\ud800\\ud83d\\ude00", "\xEF\xBF\xBD\xF0\x9F\x98\x80"),
		DEC("\\ud800\\n", "\xEF\xBF\xBD\n"),
		DEC("\\ud800\\u0041", "\xEF\xBF\xBD" "A"),
		DEC("end\\ud83d", "end\xEF\xBF\xBD"),
		/* invalid escapes */
		DEC("a\\xb", "a\xEF\xBF\xBDxb"),
		DEC("\\u12g4", "\xEF\xBF\xBDg4"),
		DEC("\\ud800\\u12", "\xEF\xBF\xBD\xEF\xBF\xBD"),
		DEC("tail\\", "tail\xEF\xBF\xBD"),
		/* invalid UTF-8: each maximal invalid subpart is one U+FFFD */
		DEC("a\xFF" "b", "a\xEF\xBF\xBD" "b"),
		DEC("\xE2\x82" "a", "\xEF\xBF\xBD" "a"),
		DEC("\xE2\x82\\n", "\xEF\xBF\xBD\n"),
		DEC("\xED\xA0\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"),
		DEC("\xF0\x9F\x98", "\xEF\xBF\xBD"),
		DEC("\xC0\xAF", "\xEF\xBF\xBD\xEF\xBF\xBD"),
		DEC("\xF4\x90\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"),
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		check_decode(O200K, cases[i].raw, cases[i].rlen, cases[i].want, cases[i].wlen);
		check_decode(CL100K, cases[i].raw, cases[i].rlen, cases[i].want, cases[i].wlen);
	}
	/* A short delta is copied as it is when it is plain ASCII: an escape or a byte that is
	 * not ASCII anywhere in one of any length must still be decoded. */
	char raw[48], want[48];
	for (size_t n = 1; n <= 40; n++)
		for (size_t at = 0; at < n; at++) {
			memset(raw, 'a', n);
			memset(want, 'a', n);
			if (at + 1 < n) {
				memcpy(raw + at, "\\n", 2);
				want[at] = '\n';
				check_decode(O200K, raw, n, want, n - 1);
				memset(raw, 'a', n);
				memset(want, 'a', n);
			}
			raw[at] = '\xFF';
			memcpy(want + at, "\xEF\xBF\xBD", 3);
			memset(want + at + 3, 'a', n - at - 1);
			check_decode(O200K, raw, n, want, n + 2);
		}
}

/* A text with escapes, fed in steps of every size from 1 to 40: the same count as the
 * whole; and an escape-free text fed byte by byte: so_far is the prefix's count. */
static void test_stream_steps(void **state)
{
	need_vocab();
	static const char text[] =
		"Hello! Here is some code:\n\n```c\nint main(void) { return 0; }\n```\n"
		"\"Quoted\" text, tabs\tand\\backslashes. \xE4\xBA\xBA\xE5\xB7\xA5\xE6\x99\xBA"
		"\xE8\x83\xBD 123456789 \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9 "
		"\xD9\x85\xD8\xB1\xD8\xAD\xD8\xA8\xD8\xA7          spaces   \n\n\n end.";
	char raw[1024];
	size_t rlen = json_escape(raw, sizeof(raw), slice_of(text, sizeof(text) - 1));
	assert_true(rlen > 0);
	for (struct tokcount_tokenizer t = O200K;; t = CL100K) {
		int64_t want = tokcount_text(ctx, t, text, sizeof(text) - 1);
		for (size_t step = 1; step <= 40; step++) {
			struct tokcount_stream *s = tokcount_stream_new(ctx, t);
			for (size_t i = 0; i < rlen; i += step) {
				size_t n = rlen - i < step ? rlen - i : step;
				tokcount_stream_feed(s, 0, slice_of(raw + i, n));
			}
			assert_int_equal(tokcount_stream_end(s), want);
			assert_int_equal(tokcount_stream_so_far(s), want);
			tokcount_stream_free(s);
		}
		static const char plain[] = "Quick brown fox, it's said, jumps: 12345!";
		struct tokcount_stream *s = tokcount_stream_new(ctx, t);
		for (size_t i = 0; i < sizeof(plain) - 1; i++) {
			tokcount_stream_feed(s, 0, slice_of(plain + i, 1));
			int64_t exact = tokcount_text(ctx, t, plain, i + 1);
			/* between counts, a bound: one token per byte since the last count */
			int64_t bound = tokcount_stream_so_far(s);
			assert_true(bound >= exact && bound <= exact + (int64_t)TOKCOUNT_BATCH);
			/* a limit decision counts first: cut on the count, not the bound */
			assert_true(tokcount_stream_past(s, (uint64_t)exact - 1));
			assert_false(tokcount_stream_past(s, (uint64_t)exact));
			assert_int_equal(tokcount_stream_so_far(s), exact);
		}
		tokcount_stream_free(s);
		if (t.method == TOKCOUNT_CL100K)
			break;
	}
}

/* Each part is its own text; switching parts ends the last one. */
static void test_parts(void **state)
{
	need_vocab();
	struct tokcount_stream *s = tokcount_stream_new(ctx, O200K);
	tokcount_stream_feed(s, 0, slice_cstr("Let me look that up"));
	tokcount_stream_feed(s, 16, slice_cstr("{\\\"city\\\": "));
	tokcount_stream_feed(s, 16, slice_cstr("\\\"Paris\\\"}"));
	tokcount_stream_feed(s, 17, slice_cstr("{}"));
	int64_t want = count(O200K, "Let me look that up") + count(O200K, "{\"city\": \"Paris\"}") +
		       count(O200K, "{}");
	assert_int_equal(tokcount_stream_end(s), want);
	/* after the end, feeding goes on as a new part */
	tokcount_stream_feed(s, 17, slice_cstr(" more"));
	assert_int_equal(tokcount_stream_end(s), want + count(O200K, " more"));
	tokcount_stream_free(s);
}

/* Long pieces: a 60 KB run of spaces fed 7 bytes at a time is still exact; a piece past
 * TOKCOUNT_MAX_TAIL is cut (inexact, close) and memory stays bounded. */
static void test_long_pieces(void **state)
{
	need_vocab();
	size_t n = 60000;
	char *text = malloc(300000);
	memset(text, ' ', n);
	struct tokcount_stream *s = tokcount_stream_new(ctx, O200K);
	for (size_t i = 0; i < n; i += 7)
		tokcount_stream_feed(s, 0, slice_of(text + i, n - i < 7 ? n - i : 7));
	int64_t so_far = tokcount_stream_so_far(s);
	int64_t want = tokcount_text(ctx, O200K, text, n);
	assert_true(so_far >= want);
	assert_int_equal(tokcount_stream_end(s), want);
	assert_true(tokcount_stream_exact(s));
	tokcount_stream_free(s);

	n = 300000;
	for (size_t i = 0; i < n; i++)
		text[i] = (char)('a' + i % 3);
	s = tokcount_stream_new(ctx, CL100K);
	for (size_t i = 0; i < n; i += 1000)
		tokcount_stream_feed(s, 0, slice_of(text + i, 1000));
	int64_t got = tokcount_stream_end(s);
	want = tokcount_text(ctx, CL100K, text, n);
	assert_false(tokcount_stream_exact(s));
	assert_true(got >= want - 8 && got <= want + 8);
	tokcount_stream_free(s);
	free(text);
}

static struct tokcount_event scan(enum dialect d, const char *data, int want_rc)
{
	struct tokcount_event ev;
	assert_int_equal(tokcount_scan_event(d, slice_cstr(""), slice_cstr(data), &ev), want_rc);
	return ev;
}

static void assert_delta(const struct tokcount_event *ev, unsigned i, const char *raw,
			 uint32_t part)
{
	assert_true(i < ev->ndelta);
	if (!slice_eq_cstr(ev->delta[i].raw, raw) || ev->delta[i].part != part)
		fail_msg("delta %u: '%.*s' part %u, want '%s' part %u", i,
			 SLICE_ARG(ev->delta[i].raw), ev->delta[i].part, raw, part);
}

static void test_scan_openai(void **state)
{
	struct tokcount_event ev;
	ev = scan(DIALECT_OPENAI,
		  "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m"
		  "\","
		  "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":"
		  "\"Hi \\\"you\\\"\\n\"},\"finish_reason\":null}],\"usage\":null}", 0);
	assert_int_equal(ev.ndelta, 1);
	assert_delta(&ev, 0, "Hi \\\"you\\\"\\n", 0);
	assert_false(ev.usage.present);
	assert_false(ev.usage_only);

	ev = scan(DIALECT_OPENAI,
		  "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\","
		  "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\"}},"
		  "{\"index\":1,\"function\":{\"arguments\":\"1}\"}}]}},"
		  "{\"index\":2,\"delta\":{\"content\":\"two\",\"refusal\":\"no\","
		  "\"reasoning_content\":\"hm\"}}]}", 0);
	assert_int_equal(ev.ndelta, 5);
	assert_delta(&ev, 0, "{\\\"x", 16);
	assert_delta(&ev, 1, "1}", 17);
	assert_delta(&ev, 2, "two", 2u << 16);
	assert_delta(&ev, 3, "no", 2u << 16 | 1);
	assert_delta(&ev, 4, "hm", 2u << 16 | 2);

	/* the include_usage chunk */
	ev = scan(DIALECT_OPENAI,
		  "{\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_toke"
		  "ns\":"
		  "34,\"total_tokens\":46,\"prompt_tokens_details\":{\"cached_tokens\":5}}}", 0);
	assert_int_equal(ev.ndelta, 0);
	assert_true(ev.usage_only);
	assert_true(ev.usage.present && ev.has_prompt && ev.has_completion);
	assert_int_equal(ev.usage.prompt_tokens, 12);
	assert_int_equal(ev.usage.completion_tokens, 34);
	assert_int_equal(ev.usage.cached_tokens, 5);

	/* usage beside a choice (some servers): not usage-only */
	ev = scan(DIALECT_OPENAI,
		  "{\"choices\":[{\"delta\":{}}],\"usage\":{\"completion_tokens\":3}}", 0);
	assert_false(ev.usage_only);
	assert_true(ev.has_completion && !ev.has_prompt);

	ev = scan(DIALECT_OPENAI, "[DONE]", 0);
	assert_true(ev.done);
	ev = scan(DIALECT_OPENAI, "{\"choices\":[{\"delta\":{\"content\":null}}]}", 0);
	assert_int_equal(ev.ndelta, 0);
	ev = scan(DIALECT_OPENAI, "{\"choices\":[{\"delta\":{\"content\":\"\"}}]}", 0);
	assert_int_equal(ev.ndelta, 0);
	scan(DIALECT_OPENAI, "{\"choices\":[{\"delta\":{\"content\":\"x\"}", -1);
	scan(DIALECT_OPENAI, "not json", -1);
	ev = scan(DIALECT_OPENAI, "{\"choices\":[{\"delta\":{\"content\":\"x\"}},]}", -1);
	assert_int_equal(ev.ndelta, 0);

	/* more deltas than the array holds: the rest counted as bytes */
	char big[4096];
	size_t n = (size_t)snprintf(big, sizeof(big), "{\"choices\":[");
	for (int i = 0; i < 20; i++)
		n += (size_t)snprintf(big + n, sizeof(big) - n,
				      "%s{\"index\":%d,\"delta\":{\"content\":\"abcd\"}}",
				      i ? "," : "", i);
	snprintf(big + n, sizeof(big) - n, "]}");
	ev = scan(DIALECT_OPENAI, big, 0);
	assert_int_equal(ev.ndelta, TOKCOUNT_MAX_DELTAS);
	assert_int_equal(ev.extra_bytes, 4 * (20 - TOKCOUNT_MAX_DELTAS));
}

static void test_scan_anthropic(void **state)
{
	struct tokcount_event ev;
	ev = scan(DIALECT_ANTHROPIC,
		  "{\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"ro"
		  "le\":"
		  "\"assistant\",\"content\":[],\"usage\":{\"input_tokens\":25,\"output_tokens\":1,"
		  "\"cache_read_input_tokens\":100,\"cache_creation_input_tokens\":10}}}", 0);
	assert_true(ev.has_prompt && ev.has_completion);
	assert_int_equal(ev.usage.prompt_tokens, 135);
	assert_int_equal(ev.usage.cached_tokens, 100);
	assert_int_equal(ev.usage.completion_tokens, 1);

	ev = scan(DIALECT_ANTHROPIC, "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":"
		  "{\"type\":\"text_delta\",\"text\":\"Hello\\u0021\"}}", 0);
	assert_int_equal(ev.ndelta, 1);
	assert_delta(&ev, 0, "Hello\\u0021", 0);
	ev = scan(DIALECT_ANTHROPIC, "{\"type\":\"content_block_delta\",\"index\":2,\"delta\":"
		  "{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"q\\\":\"}}", 0);
	assert_delta(&ev, 0, "{\\\"q\\\":", 2);
	ev = scan(DIALECT_ANTHROPIC, "{\"type\":\"content_block_delta\",\"index\":1,\"delta\":"
		  "{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}}", 0);
	assert_delta(&ev, 0, "hmm", 1);
	ev = scan(DIALECT_ANTHROPIC, "{\"type\":\"content_block_delta\",\"index\":1,\"delta\":"
		  "{\"type\":\"signature_delta\",\"signature\":\"abc\"}}", 0);
	assert_int_equal(ev.ndelta, 0);

	ev = scan(DIALECT_ANTHROPIC, "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
		  "\"end_turn\"},\"usage\":{\"output_tokens\":15}}", 0);
	assert_true(ev.has_completion && !ev.has_prompt);
	assert_int_equal(ev.usage.completion_tokens, 15);
	ev = scan(DIALECT_ANTHROPIC, "{\"type\":\"message_stop\"}", 0);
	assert_true(ev.done);
	ev = scan(DIALECT_ANTHROPIC, "{\"type\":\"ping\"}", 0);
	assert_int_equal(ev.ndelta, 0);
	assert_false(ev.usage.present);
	scan(DIALECT_ANTHROPIC, "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{", -1);
	scan(DIALECT_ANTHROPIC, "{\"type\":\"content_block_delta\",\"index\":0}", -1);
}

/* tokcount_stream_event: deltas counted, usage merged across events. */
static void test_stream_events(void **state)
{
	need_vocab();
	static const char *const events[] = {
		"{\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,"
		"\"output_tokens\":1}}}",
		"{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text"
		"\"}}",
		"{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
		"\"text\":\"The answer\"}}",
		"{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
		"\"text\":\" is 42.\"}}",
		"{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_de"
		"lta\","
		"\"partial_json\":\"{\\\"n\\\": 42}\"}}",
		"{\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":12}}",
		"{\"type\":\"message_stop\"}",
	};
	struct tokcount_stream *s = tokcount_stream_new(ctx, O200K);
	struct tokcount_event ev;
	for (size_t i = 0; i < sizeof(events) / sizeof(events[0]); i++)
		assert_int_equal(tokcount_stream_event(s, DIALECT_ANTHROPIC, slice_cstr(""),
						       slice_cstr(events[i]), &ev), 0);
	assert_true(ev.done);
	const struct usage *u = tokcount_stream_usage(s);
	assert_true(u->present);
	assert_int_equal(u->prompt_tokens, 9);
	assert_int_equal(u->completion_tokens, 12);
	assert_int_equal(tokcount_stream_end(s),
			 count(O200K, "The answer is 42.") + count(O200K, "{\"n\": 42}"));
	tokcount_stream_free(s);
}

/* An OpenAI stream read from after its learned lead (and its learned shape) says what each
 * chunk says on its own, usage included. */
static void test_stream_lead(void **state)
{
	need_vocab();
#define LEAD "{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\","
	static const char *const events[] = {
		LEAD "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}",
		LEAD "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"The answer\"}}]}",
		LEAD "\"choices\":[{\"index\":0,\"delta\":{\"content\":\" is 42.\"}}]}",
		LEAD "\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}",
		LEAD "\"choices\":[],\"usage\":{\"prompt_tokens\":{},\"prompt_tokens\":7,"
		"\"completion_tokens\":5,\"prompt_tokens_details\":{\"cached_tokens\":3},"
		"\"completion_tokens_details\":{\"reasoning_tokens\":0}},\"usage\":{\"prompt_tokens\":9,"
		"\"completion_tokens\":6,\"prompt_tokens_details\":{\"cached_tokens\":2}}}",
		LEAD "\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"prompt_tokens_details\":"
		"{\"cached_tokens\":2},\"prompt_tokens_details\":null}}",
		LEAD "\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"choices\":[]}",
		"{\"id\":\"d\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"}}]}",
		"[DONE]",
	};
#undef LEAD
	struct tokcount_stream *s = tokcount_stream_new(ctx, O200K);
	for (size_t i = 0; i < sizeof(events) / sizeof(events[0]); i++) {
		struct tokcount_event ev, alone;
		struct slice data = slice_cstr(events[i]);
		int rc = tokcount_stream_event(s, DIALECT_OPENAI, slice_cstr(""), data, &ev);
		assert_int_equal(rc, tokcount_scan_event(DIALECT_OPENAI, slice_cstr(""), data, &alone));
		assert_int_equal(ev.ndelta, alone.ndelta);
		for (unsigned k = 0; k < ev.ndelta; k++) {
			assert_ptr_equal(ev.delta[k].raw.p, alone.delta[k].raw.p);
			assert_int_equal(ev.delta[k].raw.n, alone.delta[k].raw.n);
			assert_int_equal(ev.delta[k].part, alone.delta[k].part);
		}
		assert_int_equal(ev.usage.present, alone.usage.present);
		assert_int_equal(ev.has_prompt, alone.has_prompt);
		assert_int_equal(ev.has_completion, alone.has_completion);
		assert_int_equal(ev.usage.prompt_tokens, alone.usage.prompt_tokens);
		assert_int_equal(ev.usage.completion_tokens, alone.usage.completion_tokens);
		assert_int_equal(ev.usage.cached_tokens, alone.usage.cached_tokens);
		assert_int_equal(ev.usage_only, alone.usage_only);
		assert_int_equal(ev.done, alone.done);
	}
	const struct usage *u = tokcount_stream_usage(s);
	assert_int_equal(u->prompt_tokens, 9);
	assert_int_equal(u->completion_tokens, 6);
	assert_int_equal(u->cached_tokens, 0); /* the last chunk's details were null */
	assert_int_equal(tokcount_stream_end(s), count(O200K, "The answer is 42.!"));
	tokcount_stream_free(s);
}

/* ---- tokcount_stream_sse: one pass over the relayed bytes counts as the parser does ---- */

static void put_event(struct buf *b, const char *type, const char *data, const char *eol)
{
	if (type) {
		buf_append(b, "event: ", 7, SIZE_MAX);
		buf_append(b, type, strlen(type), SIZE_MAX);
		buf_append(b, eol, strlen(eol), SIZE_MAX);
	}
	buf_append(b, "data: ", 6, SIZE_MAX);
	buf_append(b, data, strlen(data), SIZE_MAX);
	buf_append(b, eol, strlen(eol), SIZE_MAX);
	buf_append(b, eol, strlen(eol), SIZE_MAX);
}

static const char *const texts[] = {
	"The", " quick", " brown", " fox", "\\n\\n", " said", " \\\"hi\\\"", " caf\\u00e9",
	" \xF0\x9F\x91\x8D", "\xE4\xBD\xA0\xE5\xA5\xBD", "   ", "12345", "!", "",
	" \\ud83d\\ude00", " end",
};
#define NTEXTS (sizeof(texts) / sizeof(texts[0]))

#define OA_LEAD "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":7," \
		"\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":"

/* An OpenAI stream: role, text deltas, a tool call's arguments between them (another shape),
 * finish, the usage chunk, [DONE]. */
static void openai_stream(struct buf *b, const char *eol, unsigned rounds)
{
	char ev[512];
	put_event(b, NULL, OA_LEAD "{\"role\":\"assistant\",\"content\":\"\"}}]}", eol);
	for (unsigned i = 0; i < rounds * NTEXTS; i++) {
		if (i == NTEXTS + 3) {
			put_event(b, NULL, OA_LEAD "{\"tool_calls\":[{\"index\":0,\"function\":"
					       "{\"arguments\":\"{\\\"a\\\":\"}}]}}]}", eol);
			put_event(b, NULL, OA_LEAD "{\"tool_calls\":[{\"index\":0,\"function\":"
					       "{\"arguments\":\"1}\"}}]}}]}", eol);
		}
		snprintf(ev, sizeof(ev), OA_LEAD "{\"content\":\"%s\"}}]}", texts[i % NTEXTS]);
		put_event(b, NULL, ev, eol);
	}
	put_event(b, NULL, OA_LEAD "{},\"finish_reason\":\"stop\"}]}", eol);
	put_event(b, NULL, "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":7,"
			   "\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,"
			   "\"completion_tokens\":50,\"total_tokens\":61}}", eol);
	put_event(b, NULL, "[DONE]", eol);
}

static void anthropic_stream(struct buf *b, unsigned rounds)
{
	char ev[512];
	put_event(b, "message_start", "{\"type\":\"message_start\",\"message\":{\"id\":\"m\","
				      "\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}", "\n");
	put_event(b, "content_block_start", "{\"type\":\"content_block_start\",\"index\":0,"
					    "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}", "\n");
	put_event(b, "ping", "{\"type\": \"ping\"}", "\n");
	for (unsigned i = 0; i < rounds * NTEXTS; i++) {
		snprintf(ev, sizeof(ev), "{\"type\":\"content_block_delta\",\"index\":%u,\"delta\":"
			 "{\"type\":\"text_delta\",\"text\":\"%s\"}}", i / (unsigned)(NTEXTS + 5),
			 texts[i % NTEXTS]);
		put_event(b, "content_block_delta", ev, "\n");
		if (i % 7 == 6) /* a comment between events */
			buf_append(b, ": keep-alive\n", 13, SIZE_MAX);
	}
	put_event(b, "message_delta", "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
				      "\"end_turn\"},\"usage\":{\"output_tokens\":40}}", "\n");
	put_event(b, "message_stop", "{\"type\":\"message_stop\"}", "\n");
}

static void check_cuts(enum dialect d, const struct buf *b, const size_t *cuts, size_t ncut,
		       uint64_t limit, struct sse_count *pass)
{
	struct sse_count ref;
	assert_true(sse_count(ctx, O200K, d, b->p, b->len, cuts, ncut, limit, false, &ref));
	assert_true(sse_count(ctx, O200K, d, b->p, b->len, cuts, ncut, limit, true, pass));
	assert_int_equal(ref.unlike, 0);
	if (!sse_count_same(&ref, pass))
		fail_msg("%zu cuts from %zu, limit %llu: one pass counted %lld (past %d, %u drops), "
			 "the parser %lld (past %d, %u drops)", ncut, ncut ? cuts[0] : 0,
			 (unsigned long long)limit, (long long)pass->end, pass->past, pass->ndrop,
			 (long long)ref.end, ref.past, ref.ndrop);
}

/* Whole, one fragment per byte, cut once at every offset, and at every event's end; with no
 * limit and with limits that stop the stream early. */
static void check_stream(enum dialect d, const struct buf *b, bool framed)
{
	struct sse_count whole;
	check_cuts(d, b, NULL, 0, UINT64_MAX, &whole);
	uint64_t all = (uint64_t)whole.end, limits[] = { UINT64_MAX, 2, all / 2, all - 1 };
	size_t *cuts = malloc(b->len * sizeof(*cuts));
	assert_non_null(cuts);
	for (size_t l = 0; l < sizeof(limits) / sizeof(limits[0]); l++) {
		struct sse_count pass;
		check_cuts(d, b, NULL, 0, limits[l], &pass);
		if (framed && limits[l] == UINT64_MAX)
			assert_true(pass.parsed < 12); /* most events were read from their bytes */
		if (limits[l] != UINT64_MAX)
			assert_true(pass.past);
		for (size_t i = 1; i < b->len; i++)
			cuts[i - 1] = i;
		check_cuts(d, b, cuts, b->len - 1, limits[l], &pass);
		size_t n = 0;
		for (size_t i = 1; i < b->len; i++)
			if (b->p[i - 1] == '\n' && b->p[i] != '\n')
				cuts[n++] = i;
		check_cuts(d, b, cuts, n, limits[l], &pass);
		for (size_t i = 1; i < b->len; i++)
			check_cuts(d, b, &i, 1, limits[l], &pass);
	}
	free(cuts);
}

static void test_stream_sse(void **state)
{
	need_vocab();
	struct buf b = { 0 };
	openai_stream(&b, "\n", 3);
	check_stream(DIALECT_OPENAI, &b, true);
	b.len = 0;
	openai_stream(&b, "\r\n", 1); /* not the framing the counter reads itself */
	check_stream(DIALECT_OPENAI, &b, false);
	b.len = 0;
	buf_append(&b, "\xEF\xBB\xBF", 3, SIZE_MAX);
	anthropic_stream(&b, 2);
	check_stream(DIALECT_ANTHROPIC, &b, true);
	/* The include_usage chunk is reported with its offsets in the stream. */
	b.len = 0;
	openai_stream(&b, "\n", 1);
	struct sse_count pass;
	check_cuts(DIALECT_OPENAI, &b, NULL, 0, UINT64_MAX, &pass);
	assert_int_equal(pass.ndrop, 1);
	assert_memory_equal(b.p + pass.drops[0][0], "data: {\"id\"", 11);
	assert_memory_equal(b.p + pass.drops[0][1], "data: [DONE]", 12);
	assert_int_equal(pass.usage.completion_tokens, 50);
	/* An escaped CR or LF in a string, after the framing was learned: the parser ends a line
	 * there (the event is broken), so the counter may not read past it either. */
	static const char *const broken[] = { "a", " b", " c\\\rd", " e\\\nf", " g" };
	b.len = 0;
	for (size_t i = 0; i < sizeof(broken) / sizeof(broken[0]); i++) {
		char ev[256];
		snprintf(ev, sizeof(ev), OA_LEAD "{\"content\":\"%s\"}}]}", broken[i]);
		put_event(&b, NULL, ev, "\n");
	}
	check_stream(DIALECT_OPENAI, &b, false);
	buf_free(&b);
}

/* An OpenAI stream like the bench's upstream sends, with its own id, creation time and choice
 * index: role, text, finish, usage, [DONE]. */
static void lead_stream(struct buf *b, const char *id, unsigned created, unsigned index)
{
	char lead[256], ev[512];
	snprintf(lead, sizeof(lead), "{\"id\":\"%s\",\"object\":\"chat.completion.chunk\","
		 "\"created\":%u,\"model\":\"gpt-4o-mini\",\"choices\":", id, created);
	snprintf(ev, sizeof(ev), "%s[{\"index\":%u,\"delta\":{\"role\":\"assistant\","
		 "\"content\":\"\"},\"finish_reason\":null}]}", lead, index);
	put_event(b, NULL, ev, "\n");
	for (unsigned i = 0; i < NTEXTS; i++) {
		snprintf(ev, sizeof(ev), "%s[{\"index\":%u,\"delta\":{\"content\":\"%s\"},"
			 "\"finish_reason\":null}]}", lead, index, texts[i]);
		put_event(b, NULL, ev, "\n");
	}
	snprintf(ev, sizeof(ev), "%s[{\"index\":%u,\"delta\":{},\"finish_reason\":\"stop\"}]}",
		 lead, index);
	put_event(b, NULL, ev, "\n");
	snprintf(ev, sizeof(ev), "%s[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":9}}",
		 lead);
	put_event(b, NULL, ev, "\n");
	put_event(b, NULL, "[DONE]", "\n");
}

/* What one stream teaches a context's next ones (the text shape past an OpenAI lead and its
 * framing, the events that count nothing) lets a stream with another lead read its first text
 * event from its bytes, and changes no reading: each event reads as it does alone, and the
 * one pass counts as the parser does, for a stream like the last and for one unlike it. */
static void test_streams_teach(void **state)
{
	need_vocab();
	struct tokcount_ctx *c = tokcount_ctx_new(reg);
	assert_non_null(c);
	/* Nothing is learned of an empty event, nor of one that says a little (cached tokens but
	 * no usage: read each time). Each is read twice, as it reads alone. */
	static const char *const odd[] = {
		"", "{\"choices\":[],\"usage\":{\"prompt_tokens_details\":{\"cached_tokens\":3}}}",
	};
	for (int d = DIALECT_OPENAI; d <= DIALECT_ANTHROPIC; d++)
		for (size_t i = 0; i < 2 * sizeof(odd) / sizeof(odd[0]); i++) {
			struct tokcount_stream *s = tokcount_stream_new(c, O200K);
			struct tokcount_event ev, alone;
			struct slice data = slice_cstr(odd[i / 2]);
			assert_int_equal(tokcount_stream_event(s, d, slice_cstr(""), data, &ev),
					 tokcount_scan_event(d, slice_cstr(""), data, &alone));
			assert_true(sse_count_same_event(&ev, &alone));
			tokcount_stream_free(s);
		}
	static const struct {
		const char *id;
		unsigned created, index;
		bool taught; /* by the stream before it */
	} streams[] = {
		{ "chatcmpl-A", 1, 0, false },
		{ "chatcmpl-BBBB", 1764000000, 0, true },
		{ "chatcmpl-CC", 22, 1, false }, /* another choice index: another shape */
		{ "chatcmpl-D", 3, 1, true },
		{ "chatcmpl-E", 4, 0, false },
	};
	unsigned parsed[sizeof(streams) / sizeof(streams[0])];
	struct buf b = { 0 };
	for (size_t i = 0; i < sizeof(streams) / sizeof(streams[0]); i++) {
		b.len = 0;
		lead_stream(&b, streams[i].id, streams[i].created, streams[i].index);
		struct sse_count pass, ref;
		assert_true(sse_count(c, O200K, DIALECT_OPENAI, b.p, b.len, NULL, 0, UINT64_MAX, true,
				      &pass));
		parsed[i] = pass.parsed;
		assert_true(sse_count(c, O200K, DIALECT_OPENAI, b.p, b.len, NULL, 0, UINT64_MAX,
				      false, &ref));
		assert_int_equal(ref.unlike, 0);
		assert_true(sse_count_same(&ref, &pass));
		assert_int_equal(pass.usage.completion_tokens, 9);
		if (i > 0 && streams[i].taught)
			assert_int_equal(parsed[i], parsed[i - 1] - 1); /* the first text event */
		else if (i > 0)
			assert_int_equal(parsed[i], parsed[0]);
	}
	/* Anthropic's events have no lead: its second stream is taught all the same. */
	unsigned first = 0;
	for (int i = 0; i < 2; i++) {
		b.len = 0;
		anthropic_stream(&b, 1);
		struct sse_count pass, ref;
		assert_true(sse_count(c, O200K, DIALECT_ANTHROPIC, b.p, b.len, NULL, 0, UINT64_MAX,
				      true, &pass));
		assert_true(sse_count(c, O200K, DIALECT_ANTHROPIC, b.p, b.len, NULL, 0, UINT64_MAX,
				      false, &ref));
		assert_int_equal(ref.unlike, 0);
		assert_true(sse_count_same(&ref, &pass));
		if (i == 0)
			first = pass.parsed;
		else
			assert_int_equal(pass.parsed, first - 1);
	}
	buf_free(&b);
	tokcount_ctx_free(c);
}

static void test_prompt_openai(void **state)
{
	need_vocab();
	struct tokcount_prompt p;
	const char *body =
		"{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief."
		"\"},"
		"{\"role\":\"user\",\"name\":\"ann\",\"content\":\"What is 2+2?\\nThanks\"},"
		"{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"part one\"},"
		"{\"type\":\"text\",\"text\":\" two\"}]}],\"stream\":true}";
	for (struct tokcount_tokenizer t = O200K;; t = CL100K) {
		assert_int_equal(tokcount_prompt(ctx, t, DIALECT_OPENAI, slice_cstr(body),
						 TOKCOUNT_PROMPT_COUNT, &p), 0);
		int64_t want = 3 * 3 + 3 + count(t, "system") + count(t, "Be brief.") +
			       count(t, "user") * 2 + count(t, "ann") + 1 +
			       count(t, "What is 2+2?\nThanks") + count(t, "part one") +
			       count(t, " two");
		assert_int_equal(p.tokens, want);
		assert_true(p.exact);
		assert_int_equal(p.messages, 3);
		assert_true(p.upper_bound >= p.tokens);
		struct tokcount_prompt b;
		assert_int_equal(tokcount_prompt(ctx, t, DIALECT_OPENAI, slice_cstr(body),
						 TOKCOUNT_PROMPT_BOUND, &b), 0);
		assert_int_equal(b.upper_bound, p.upper_bound);
		assert_int_equal(b.tokens, (b.text_bytes + 3) / 4 + 3 * 3 + 3 + 1);
		assert_false(b.exact || b.counted);
		struct tokcount_prompt au;
		assert_int_equal(tokcount_prompt(ctx, t, DIALECT_OPENAI, slice_cstr(body),
						 TOKCOUNT_PROMPT_AUTO, &au), 0);
		assert_true(au.counted && au.exact);
		assert_int_equal(au.tokens, p.tokens);
		if (t.method == TOKCOUNT_CL100K)
			break;
	}

	/* tools, tool calls and images: estimates, still under the bound */
	const char *tools =
		"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_ur"
		"l\":"
		"{\"url\":\"https://x/y.png\"}}]},{\"role\":\"assistant\",\"content\":null,"
		"\"tool_calls\":[{\"id\":\"c\",\"type\":\"function\",\"function\":{\"name\":\"f\","
		"\"arguments\":\"{}\"}}]},{\"role\":\"tool\",\"tool_call_id\":\"c\",\"content\":\""
		"ok\"}],"
		"\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}"
		"}]}";
	assert_int_equal(tokcount_prompt(ctx, O200K, DIALECT_OPENAI, slice_cstr(tools),
					 TOKCOUNT_PROMPT_COUNT, &p), 0);
	assert_false(p.exact);
	assert_true(p.tokens > TOKCOUNT_IMAGE_TOKENS && p.tokens <= p.upper_bound);

	static const char *const bad[] = { "", "[]", "{\"messages\":{}}", "{\"model\":\"x\"}",
					   "{\"messages\":[1]}", "{\"messages\":[{},]}",
					   "{\"messages\":[" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(tokcount_prompt(ctx, O200K, DIALECT_OPENAI, slice_cstr(bad[i]),
						 TOKCOUNT_PROMPT_COUNT, &p), -1);
	assert_int_equal(tokcount_prompt(ctx, O200K, DIALECT_OPENAI,
					 slice_cstr("{\"messages\":[]}"), TOKCOUNT_PROMPT_COUNT,
					 &p),
			 0);
	assert_int_equal(p.tokens, 3);
}

static void test_prompt_anthropic(void **state)
{
	need_vocab();
	struct tokcount_tokenizer est = { TOKCOUNT_ESTIMATE, false };
	struct tokcount_prompt p;
	const char *body =
		"{\"model\":\"claude\",\"max_tokens\":100,\"system\":[{\"type\":\"text\",\"text\":"
		"\"You are terse.\"}],\"messages\":[{\"role\":\"user\",\"content\":\"Weather in "
		"Paris?\"},{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"t"
		"\","
		"\"name\":\"weather\",\"input\":{\"city\":\"Paris\"}}]},{\"role\":\"user\",\"conte"
		"nt\":"
		"[{\"type\":\"tool_result\",\"tool_use_id\":\"t\",\"content\":[{\"type\":\"text\","
		"\"text\":\"18C\"}]}]}]}";
	assert_int_equal(tokcount_prompt(ctx, est, DIALECT_ANTHROPIC, slice_cstr(body),
					 TOKCOUNT_PROMPT_COUNT, &p), 0);
	int64_t bpe = count(O200K, "You are terse.") + count(O200K, "Weather in Paris?") +
		      count(O200K, "weather") + count(O200K, "{\"city\":\"Paris\"}") +
		      count(O200K, "18C");
	assert_int_equal(p.tokens, (bpe * 5 + 3) / 4 + 3 * 3 + 3);
	assert_false(p.exact);
	assert_int_equal(p.messages, 3);
	assert_true(p.tokens <= p.upper_bound);

	const char *tools = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"tools\":"
			    "[{\"name\":\"f\",\"input_schema\":{\"type\":\"object\"}}]}";
	assert_int_equal(tokcount_prompt(ctx, est, DIALECT_ANTHROPIC, slice_cstr(tools),
					 TOKCOUNT_PROMPT_COUNT, &p), 0);
	assert_true(p.tokens > TOKCOUNT_ANTHROPIC_TOOLS_TOKENS);
	assert_int_equal(tokcount_prompt(ctx, est, DIALECT_ANTHROPIC,
					 slice_cstr("{\"system\":\"x\"}"), TOKCOUNT_PROMPT_COUNT,
					 &p),
			 -1);
}

/* The bench bodies: an exact count under the byte bound. */
static void test_prompt_bench_bodies(void **state)
{
	need_vocab();
	static const char *const files[] = { "bench/bodies/chat.json",
					     "bench/bodies/chat-large.json" };
	for (size_t i = 0; i < 2; i++) {
		FILE *f = fopen(files[i], "rb");
		assert_non_null(f);
		static char body[1 << 18];
		size_t n = fread(body, 1, sizeof(body), f);
		fclose(f);
		struct tokcount_prompt p, b;
		assert_int_equal(tokcount_prompt(ctx, O200K, DIALECT_OPENAI, slice_of(body, n),
						 TOKCOUNT_PROMPT_COUNT, &p), 0);
		assert_int_equal(tokcount_prompt(ctx, O200K, DIALECT_OPENAI, slice_of(body, n),
						 TOKCOUNT_PROMPT_BOUND, &b), 0);
		assert_true(p.exact == (i == 0)); /* chat-large.json has tools: estimated */
		assert_true(p.tokens > 10 && p.tokens <= b.upper_bound);
		assert_true(b.upper_bound <= (int64_t)n);
		struct tokcount_prompt au;
		assert_int_equal(tokcount_prompt(ctx, O200K, DIALECT_OPENAI, slice_of(body, n),
						 TOKCOUNT_PROMPT_AUTO, &au), 0);
		assert_true(au.counted == (i == 0)); /* chat-large.json: past the AUTO limit */
		assert_int_equal(au.tokens, i == 0 ? p.tokens : b.tokens);
	}
}

static int setup(void **state)
{
	const char *dir = getenv("PENSTOCK_TOKENIZER_VOCAB_DIR");
	reg = tokcount_reg_open(dir ? dir : "tests/tokenizer/vocab");
	ctx = reg ? tokcount_ctx_new(reg) : NULL;
	return ctx ? 0 : -1;
}

static int teardown(void **state)
{
	tokcount_ctx_free(ctx);
	tokcount_reg_close(reg);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pick),
		cmocka_unit_test(test_estimate),
		cmocka_unit_test(test_decode),
		cmocka_unit_test(test_stream_steps),
		cmocka_unit_test(test_parts),
		cmocka_unit_test(test_long_pieces),
		cmocka_unit_test(test_scan_openai),
		cmocka_unit_test(test_scan_anthropic),
		cmocka_unit_test(test_stream_events),
		cmocka_unit_test(test_stream_lead),
		cmocka_unit_test(test_stream_sse),
		cmocka_unit_test(test_streams_teach),
		cmocka_unit_test(test_prompt_openai),
		cmocka_unit_test(test_prompt_anthropic),
		cmocka_unit_test(test_prompt_bench_bodies),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
