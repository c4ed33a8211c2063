/* test_loadgen.c - the load generator's response parser (framing, keep-alive, SSE counting) and
 * its latency histogram. Every parser case is fed whole, byte by byte and split at every pair
 * of points, with foreign bytes after it that must be left unconsumed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hdrhist.h"
#include "respparse.h"

enum expect_kind {
	EXPECT_DONE,		/* a whole response, then the trailing bytes stay unconsumed */
	EXPECT_DONE_AT_EOF,	/* close-delimited body: MORE until the peer closes */
	EXPECT_ERROR,
};

struct parse_case {
	const char *reason;
	const char *input;
	bool head;
	enum expect_kind expect;
	int status;
	bool keep_alive;
	uint64_t body_bytes;
	uint32_t events;
};

#define H200 "HTTP/1.1 200 OK\r\n"
#define CHUNKED "Transfer-Encoding: chunked\r\n"
#define SSE "Content-Type: text/event-stream\r\n"

static const struct parse_case cases[] = {
	/* framing */
	{ "content-length",
	  H200 "Content-Length: 5\r\n\r\nhello",
	  false, EXPECT_DONE, 200, true, 5, 0 },
	{ "content-length zero",
	  H200 "Content-Length: 0\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 0, 0 },
	{ "header names are case-insensitive",
	  H200 "cOnTeNt-LeNgTh:3\r\n\r\nabc",
	  false, EXPECT_DONE, 200, true, 3, 0 },
	{ "bare LF line endings",
	  "HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
	  false, EXPECT_DONE, 200, true, 2, 0 },
	{ "204 has no body",
	  "HTTP/1.1 204 No Content\r\n\r\n",
	  false, EXPECT_DONE, 204, true, 0, 0 },
	{ "304 ignores its length",
	  "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
	  false, EXPECT_DONE, 304, true, 0, 0 },
	{ "HEAD ignores the length",
	  H200 "Content-Length: 100\r\n\r\n",
	  true, EXPECT_DONE, 200, true, 0, 0 },
	{ "error statuses parse like any",
	  "HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy",
	  false, EXPECT_DONE, 503, true, 4, 0 },
	{ "no reason phrase",
	  "HTTP/1.1 200\r\nContent-Length: 1\r\n\r\nx",
	  false, EXPECT_DONE, 200, true, 1, 0 },
	{ "chunked",
	  H200 CHUNKED "\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 11, 0 },
	{ "chunk size in upper-case hex with extension",
	  H200 CHUNKED "\r\nA;name=v\r\n0123456789\r\n0\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 10, 0 },
	{ "chunked with trailers",
	  H200 CHUNKED "\r\n1\r\nx\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 1, 0 },
	{ "chunked with bare LF",
	  H200 CHUNKED "\r\n2\nab\n0\n\n",
	  false, EXPECT_DONE, 200, true, 2, 0 },
	{ "chunked beats content-length",
	  H200 "Content-Length: 99\r\n" CHUNKED "\r\n1\r\nx\r\n0\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 1, 0 },
	{ "last coding decides",
	  H200 "Transfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 1, 0 },
	{ "interim 100 then the response",
	  "HTTP/1.1 100 Continue\r\n\r\n" H200 "Content-Length: 1\r\n\r\nx",
	  false, EXPECT_DONE, 200, true, 1, 0 },
	{ "no length: ends at close",
	  H200 "\r\nsome body",
	  false, EXPECT_DONE_AT_EOF, 200, false, 9, 0 },
	{ "non-chunked coding: ends at close",
	  H200 "Transfer-Encoding: gzip\r\n\r\nzz",
	  false, EXPECT_DONE_AT_EOF, 200, false, 2, 0 },

	/* keep-alive */
	{ "connection close",
	  H200 "Connection: close\r\nContent-Length: 0\r\n\r\n",
	  false, EXPECT_DONE, 200, false, 0, 0 },
	{ "close among tokens",
	  H200 "Connection: foo, Close\r\nContent-Length: 0\r\n\r\n",
	  false, EXPECT_DONE, 200, false, 0, 0 },
	{ "closed is not close",
	  H200 "Connection: closed\r\nContent-Length: 0\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 0, 0 },
	{ "HTTP/1.0 closes by default",
	  "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
	  false, EXPECT_DONE, 200, false, 0, 0 },
	{ "HTTP/1.0 keep-alive",
	  "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 0, 0 },

	/* SSE: events are dispatched by a blank line after at least one data line */
	{ "sse events",
	  H200 SSE CHUNKED "\r\nF\r\ndata: {\"a\":1}\n\n\r\nE\r\n"
	  "data: [DONE]\n\n\r\n0\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 29, 2 },
	{ "sse CRLF, comments, other fields",
	  H200 SSE "Content-Length: 47\r\n\r\n: hi\r\n\r\nevent: x\r\n"
	  "data: a\r\ndata: b\r\n\r\nid: 1\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 47, 1 },
	{ "sse empty data field, data2 is not data",
	  H200 SSE "Content-Length: 21\r\n\r\ndata\n\ndata2: x\n\nretry",
	  false, EXPECT_DONE, 200, true, 21, 1 },
	{ "sse CR-only lines",
	  H200 SSE "Content-Length: 17\r\n\r\ndata: a\r\rdata:b\r\r",
	  false, EXPECT_DONE, 200, true, 17, 2 },
	{ "sse unterminated event is not counted",
	  H200 SSE "Content-Length: 7\r\n\r\ndata: a",
	  false, EXPECT_DONE, 200, true, 7, 0 },
	{ "not an event stream: no counting",
	  H200 "Content-Length: 9\r\n\r\ndata: a\n\n",
	  false, EXPECT_DONE, 200, true, 9, 0 },

	/* errors */
	{ "HTTP/2 status line",
	  "HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n",
	  false, EXPECT_ERROR, 0, false, 0, 0 },
	{ "two-digit status",
	  "HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
	  false, EXPECT_ERROR, 0, false, 0, 0 },
	{ "status glued to reason",
	  "HTTP/1.1 200OK\r\nContent-Length: 0\r\n\r\n",
	  false, EXPECT_ERROR, 0, false, 0, 0 },
	{ "conflicting lengths",
	  H200 "Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
	  false, EXPECT_ERROR, 0, false, 0, 0 },
	{ "length not a number",
	  H200 "Content-Length: 1x\r\n\r\nab",
	  false, EXPECT_ERROR, 0, false, 0, 0 },
	{ "negative length",
	  H200 "Content-Length: -1\r\n\r\n",
	  false, EXPECT_ERROR, 0, false, 0, 0 },
	{ "chunk size not hex",
	  H200 CHUNKED "\r\nzz\r\n",
	  false, EXPECT_ERROR, 0, false, 0, 0 },
	{ "chunk data without CRLF",
	  H200 CHUNKED "\r\n5\r\nhelloX0\r\n\r\n",
	  false, EXPECT_ERROR, 0, false, 0, 0 },
	{ "junk between chunk data and LF",
	  H200 CHUNKED "\r\n5\r\nhelloX\n0\r\n\r\n",
	  false, EXPECT_ERROR, 0, false, 0, 0 },
	{ "chunk size over 60 bits",
	  H200 CHUNKED "\r\n1000000000000000\r\n",
	  false, EXPECT_ERROR, 0, false, 0, 0 },
	{ "space in a header name",
	  H200 "Content Length: 1\r\n\r\nx",
	  false, EXPECT_ERROR, 0, false, 0, 0 },
	{ "obsolete line folding",
	  H200 "X-A: 1\r\n  folded\r\nContent-Length: 0\r\n\r\n",
	  false, EXPECT_ERROR, 0, false, 0, 0 },
	{ "header line without colon",
	  H200 "Content-Length 1\r\n\r\nx",
	  false, EXPECT_ERROR, 0, false, 0, 0 },
	{ "switching protocols",
	  "HTTP/1.1 101 Switching\r\n\r\n",
	  false, EXPECT_ERROR, 0, false, 0, 0 },
};

/* Bytes after every response: must never be consumed (we do not pipeline). */
static const char trailing[] = "HTTP/1.1 999 not ours\r\n";

struct outcome {
	enum respparse_result result;
	size_t consumed;	/* bytes of input used when DONE */
	bool saw_eof;
	struct respparse parser;
};

/*
 * Play the load generator's part: append each piece to a buffer, feed it, drop what was
 * consumed, keep the rest at the front. Pieces end at the given cut points.
 */
static struct outcome feed_pieces(const struct parse_case *tc, const char *input, size_t len,
				  const size_t *cuts, size_t ncuts)
{
	struct outcome out = { .result = RESPPARSE_MORE };
	char *buf = malloc(len + 1);
	size_t fill = 0, pos = 0;

	assert_non_null(buf);
	respparse_reset(&out.parser, tc->head);
	for (size_t k = 0; k <= ncuts && out.result == RESPPARSE_MORE; k++) {
		size_t end = k < ncuts ? cuts[k] : len;
		memcpy(buf + fill, input + pos, end - pos);
		fill += end - pos;
		pos = end;
		size_t used = 0;
		out.result = respparse_feed(&out.parser, buf, fill, &used);
		assert_true(used <= fill);
		memmove(buf, buf + used, fill - used);
		fill -= used;
		out.consumed = pos - fill;
	}
	if (out.result == RESPPARSE_MORE) {
		out.saw_eof = true;
		out.result = respparse_eof(&out.parser);
	}
	free(buf);
	return out;
}

static void check_outcome(const struct parse_case *tc, const struct outcome *out, size_t len,
			  const char *how)
{
	const struct respparse *p = &out->parser;
	size_t response_len = strlen(tc->input);

	if (tc->expect == EXPECT_ERROR) {
		if (out->result != RESPPARSE_ERROR)
			fail_msg("%s (%s): expected an error, got %d", tc->reason, how,
				 out->result);
		return;
	}
	if (out->result != RESPPARSE_DONE)
		fail_msg("%s (%s): expected DONE, got %d", tc->reason, how, out->result);
	if (out->saw_eof != (tc->expect == EXPECT_DONE_AT_EOF))
		fail_msg("%s (%s): ended at eof: %d", tc->reason, how, out->saw_eof);
	if (tc->expect == EXPECT_DONE && out->consumed != response_len)
		fail_msg("%s (%s): consumed %zu of a %zu-byte response", tc->reason, how,
			 out->consumed, response_len);
	if (tc->expect == EXPECT_DONE_AT_EOF && out->consumed != len)
		fail_msg("%s (%s): a close-delimited body takes everything", tc->reason, how);
	if (p->rp_status != tc->status || p->rp_keep_alive != tc->keep_alive)
		fail_msg("%s (%s): status %d keep-alive %d", tc->reason, how, p->rp_status,
			 p->rp_keep_alive);
	uint64_t want_body = tc->body_bytes + (out->saw_eof ? strlen(trailing) : 0);
	if (p->rp_body_bytes != want_body || p->rp_sse_events != tc->events)
		fail_msg("%s (%s): body %llu (want %llu) events %u (want %u)", tc->reason, how,
			 (unsigned long long)p->rp_body_bytes, (unsigned long long)want_body,
			 p->rp_sse_events, tc->events);
}

/* The input as the wire carries it: the response, then bytes that are not ours. */
static char *wire_bytes(const struct parse_case *tc, size_t *len)
{
	size_t n = strlen(tc->input);
	char *s = malloc(n + sizeof(trailing));

	assert_non_null(s);
	memcpy(s, tc->input, n);
	memcpy(s + n, trailing, sizeof(trailing));
	*len = n + sizeof(trailing) - 1;
	return s;
}

static void test_parse_whole(void **state)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t len;
		char *in = wire_bytes(&cases[i], &len);
		struct outcome out = feed_pieces(&cases[i], in, len, NULL, 0);
		check_outcome(&cases[i], &out, len, "whole");
		free(in);
	}
}

static void test_parse_byte_by_byte(void **state)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t len;
		char *in = wire_bytes(&cases[i], &len);
		size_t *cuts = calloc(len, sizeof(*cuts));
		assert_non_null(cuts);
		for (size_t k = 1; k < len; k++)
			cuts[k - 1] = k;
		struct outcome out = feed_pieces(&cases[i], in, len, cuts, len - 1);
		check_outcome(&cases[i], &out, len, "byte by byte");
		free(cuts);
		free(in);
	}
}

static void test_parse_split_everywhere(void **state)
{
	char how[64];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t len;
		char *in = wire_bytes(&cases[i], &len);
		for (size_t a = 0; a <= len; a++) {
			for (size_t b = a; b <= len; b++) {
				size_t cuts[2] = { a, b };
				struct outcome out = feed_pieces(&cases[i], in, len, cuts, 2);
				snprintf(how, sizeof(how), "split at %zu and %zu", a, b);
				check_outcome(&cases[i], &out, len, how);
			}
		}
		free(in);
	}
}

static void test_parse_limits(void **state)
{
	/* a chunk extension longer than the limit is refused, a short one is not */
	char in[4096];
	int n = snprintf(in, sizeof(in), H200 CHUNKED "\r\n1;");
	memset(in + n, 'e', 2000);
	struct respparse p;
	size_t used;

	respparse_reset(&p, false);
	assert_int_equal(respparse_feed(&p, in, (size_t)n + 2000, &used), RESPPARSE_ERROR);

	/* 16 hex digits are refused at once, not after waiting for 2^60 bytes */
	static const char big[] = H200 CHUNKED "\r\n1000000000000000\r\n";
	respparse_reset(&p, false);
	assert_int_equal(respparse_feed(&p, big, sizeof(big) - 1, &used), RESPPARSE_ERROR);
	static const char fifteen[] = H200 CHUNKED "\r\n100000000000000\r\n";
	respparse_reset(&p, false);
	assert_int_equal(respparse_feed(&p, fifteen, sizeof(fifteen) - 1, &used), RESPPARSE_MORE);

	/* more header lines than the limit */
	size_t len = (size_t)snprintf(in, sizeof(in), H200);
	for (int i = 0; i <= RESPPARSE_MAX_HEADERS; i++)
		len += (size_t)snprintf(in + len, sizeof(in) - len, "X-%d: 1\r\n", i);
	len += (size_t)snprintf(in + len, sizeof(in) - len, "Content-Length: 0\r\n\r\n");
	respparse_reset(&p, false);
	assert_int_equal(respparse_feed(&p, in, len, &used), RESPPARSE_ERROR);

	/* an incomplete header block consumes nothing */
	respparse_reset(&p, false);
	assert_int_equal(respparse_feed(&p, H200 "Content-Le", 27, &used), RESPPARSE_MORE);
	assert_int_equal(used, 0);
	assert_false(p.rp_headers_done);
}

/* ---- histogram ---- */

static void test_hist_bucket_precision(void **state)
{
	for (uint64_t v = 0; v < HDRHIST_MAX_VALUE; v = v < 1000 ? v + 1 : v + v / 97) {
		unsigned b = hdrhist_bucket_of(v);
		uint64_t low = hdrhist_bucket_low(b), high = hdrhist_bucket_high(b);
		if (v < low || v > high)
			fail_msg("%llu outside its bucket [%llu, %llu]", (unsigned long long)v,
				 (unsigned long long)low, (unsigned long long)high);
		if ((high - low) * 128 > v)
			fail_msg("bucket of %llu is wider than 1/128 of it", (unsigned long long)v);
		if (b + 1 < HDRHIST_BUCKETS && hdrhist_bucket_low(b + 1) != high + 1)
			fail_msg("gap after bucket %u", b);
	}
	assert_int_equal(hdrhist_bucket_of(HDRHIST_MAX_VALUE), HDRHIST_BUCKETS - 1);
	assert_int_equal(hdrhist_bucket_of(UINT64_MAX), HDRHIST_BUCKETS - 1);
}

static void assert_near(uint64_t got, uint64_t want, double tolerance)
{
	double diff = (double)got - (double)want;
	if (diff < 0)
		diff = -diff;
	if (diff > tolerance * (double)want)
		fail_msg("got %llu, want %llu within %.2f%%", (unsigned long long)got,
			 (unsigned long long)want, tolerance * 100);
}

static void test_hist_percentiles(void **state)
{
	struct hdrhist *h = malloc(sizeof(*h));
	assert_non_null(h);
	hdrhist_init(h);
	assert_int_equal(hdrhist_percentile(h, 50), 0);

	/* 1..100000 us in ns, each once */
	for (uint64_t us = 1; us <= 100000; us++)
		hdrhist_record(h, us * 1000);
	assert_int_equal(h->hh_count, 100000);
	assert_near(hdrhist_percentile(h, 50), 50000 * 1000, 0.005);
	assert_near(hdrhist_percentile(h, 90), 90000 * 1000, 0.005);
	assert_near(hdrhist_percentile(h, 99), 99000 * 1000, 0.005);
	assert_near(hdrhist_percentile(h, 99.9), 99900 * 1000, 0.005);
	assert_int_equal(hdrhist_percentile(h, 100), 100000 * 1000);
	assert_int_equal(h->hh_min, 1000);
	assert_near((uint64_t)hdrhist_mean(h), 50000500, 0.0001);
	free(h);
}

static void test_hist_tail_and_merge(void **state)
{
	struct hdrhist *a = malloc(sizeof(*a)), *b = malloc(sizeof(*b));
	assert_non_null(a);
	assert_non_null(b);
	hdrhist_init(a);
	hdrhist_init(b);

	/* 9990 fast, 10 slow: p99 is fast, p99.9 sits on the edge, p99.95 is slow */
	for (int i = 0; i < 9990; i++)
		hdrhist_record(a, 100000);
	for (int i = 0; i < 10; i++)
		hdrhist_record(b, 50000000);
	hdrhist_merge(a, b);
	assert_int_equal(a->hh_count, 10000);
	assert_near(hdrhist_percentile(a, 99), 100000, 0.005);
	assert_near(hdrhist_percentile(a, 99.9), 100000, 0.005);
	assert_near(hdrhist_percentile(a, 99.95), 50000000, 0.005);
	assert_int_equal(a->hh_max, 50000000);
	assert_int_equal(a->hh_min, 100000);

	/* out-of-range values clamp rather than vanish */
	hdrhist_record(b, UINT64_MAX);
	assert_int_equal(b->hh_max, HDRHIST_MAX_VALUE);
	assert_int_equal(b->hh_count, 11);
	free(a);
	free(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_whole),
		cmocka_unit_test(test_parse_byte_by_byte),
		cmocka_unit_test(test_parse_split_everywhere),
		cmocka_unit_test(test_parse_limits),
		cmocka_unit_test(test_hist_bucket_precision),
		cmocka_unit_test(test_hist_percentiles),
		cmocka_unit_test(test_hist_tail_and_merge),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
