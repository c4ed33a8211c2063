/* test_loadgen.c - the load generator's response parser (framing, keep-alive, SSE counting and
 * the [DONE] sentinel), its latency histogram and its SSE event timing. Every parser case is fed
 * whole, byte by byte and split at every pair of points, with foreign bytes after it that must
 * be left unconsumed. */
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
#include "ssetiming.h"

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
	bool last_done;		/* the last event's data is exactly [DONE] (false when omitted) */
};

#define H200 "HTTP/1.1 200 OK\r\n"
#define CHUNKED "Transfer-Encoding: chunked\r\n"
#define SSE "Content-Type: text/event-stream\r\n"

static const struct parse_case cases[] = {
	/* framing */
	{ "content-length",
	  H200 "Content-Length: 5\r\n\r\nhello",
	  false, EXPECT_DONE, 200, true, 5, 0, false },
	{ "content-length zero",
	  H200 "Content-Length: 0\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 0, 0, false },
	{ "header names are case-insensitive",
	  H200 "cOnTeNt-LeNgTh:3\r\n\r\nabc",
	  false, EXPECT_DONE, 200, true, 3, 0, false },
	{ "bare LF line endings",
	  "HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
	  false, EXPECT_DONE, 200, true, 2, 0, false },
	{ "204 has no body",
	  "HTTP/1.1 204 No Content\r\n\r\n",
	  false, EXPECT_DONE, 204, true, 0, 0, false },
	{ "304 ignores its length",
	  "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
	  false, EXPECT_DONE, 304, true, 0, 0, false },
	{ "HEAD ignores the length",
	  H200 "Content-Length: 100\r\n\r\n",
	  true, EXPECT_DONE, 200, true, 0, 0, false },
	{ "error statuses parse like any",
	  "HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy",
	  false, EXPECT_DONE, 503, true, 4, 0, false },
	{ "no reason phrase",
	  "HTTP/1.1 200\r\nContent-Length: 1\r\n\r\nx",
	  false, EXPECT_DONE, 200, true, 1, 0, false },
	{ "chunked",
	  H200 CHUNKED "\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 11, 0, false },
	{ "chunk size in upper-case hex with extension",
	  H200 CHUNKED "\r\nA;name=v\r\n0123456789\r\n0\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 10, 0, false },
	{ "chunked with trailers",
	  H200 CHUNKED "\r\n1\r\nx\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 1, 0, false },
	{ "chunked with bare LF",
	  H200 CHUNKED "\r\n2\nab\n0\n\n",
	  false, EXPECT_DONE, 200, true, 2, 0, false },
	{ "chunked beats content-length",
	  H200 "Content-Length: 99\r\n" CHUNKED "\r\n1\r\nx\r\n0\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 1, 0, false },
	{ "last coding decides",
	  H200 "Transfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 1, 0, false },
	{ "interim 100 then the response",
	  "HTTP/1.1 100 Continue\r\n\r\n" H200 "Content-Length: 1\r\n\r\nx",
	  false, EXPECT_DONE, 200, true, 1, 0, false },
	{ "no length: ends at close",
	  H200 "\r\nsome body",
	  false, EXPECT_DONE_AT_EOF, 200, false, 9, 0, false },
	{ "non-chunked coding: ends at close",
	  H200 "Transfer-Encoding: gzip\r\n\r\nzz",
	  false, EXPECT_DONE_AT_EOF, 200, false, 2, 0, false },

	/* keep-alive */
	{ "connection close",
	  H200 "Connection: close\r\nContent-Length: 0\r\n\r\n",
	  false, EXPECT_DONE, 200, false, 0, 0, false },
	{ "close among tokens",
	  H200 "Connection: foo, Close\r\nContent-Length: 0\r\n\r\n",
	  false, EXPECT_DONE, 200, false, 0, 0, false },
	{ "closed is not close",
	  H200 "Connection: closed\r\nContent-Length: 0\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 0, 0, false },
	{ "HTTP/1.0 closes by default",
	  "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
	  false, EXPECT_DONE, 200, false, 0, 0, false },
	{ "HTTP/1.0 keep-alive",
	  "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 0, 0, false },

	/* SSE: events are dispatched by a blank line after at least one data line */
	{ "sse events",
	  H200 SSE CHUNKED "\r\nF\r\ndata: {\"a\":1}\n\n\r\nE\r\n"
	  "data: [DONE]\n\n\r\n0\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 29, 2, true },
	{ "sse CRLF, comments, other fields",
	  H200 SSE "Content-Length: 47\r\n\r\n: hi\r\n\r\nevent: x\r\n"
	  "data: a\r\ndata: b\r\n\r\nid: 1\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 47, 1, false },
	{ "sse empty data field, data2 is not data",
	  H200 SSE "Content-Length: 21\r\n\r\ndata\n\ndata2: x\n\nretry",
	  false, EXPECT_DONE, 200, true, 21, 1, false },
	{ "sse CR-only lines",
	  H200 SSE "Content-Length: 17\r\n\r\ndata: a\r\rdata:b\r\r",
	  false, EXPECT_DONE, 200, true, 17, 2, false },
	{ "sse unterminated event is not counted",
	  H200 SSE "Content-Length: 7\r\n\r\ndata: a",
	  false, EXPECT_DONE, 200, true, 7, 0, false },
	{ "not an event stream: no counting",
	  H200 "Content-Length: 9\r\n\r\ndata: a\n\n",
	  false, EXPECT_DONE, 200, true, 9, 0, false },

	/* the [DONE] sentinel: the data of the last event, exactly */
	{ "sse [DONE] without the space, CRLF",
	  H200 SSE "Content-Length: 26\r\n\r\ndata: a\r\n\r\ndata:[DONE]\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 26, 2, true },
	{ "sse [DONE] after an event field",
	  H200 SSE "Content-Length: 25\r\n\r\nevent: end\ndata: [DONE]\n\n",
	  false, EXPECT_DONE, 200, true, 25, 1, true },
	{ "sse an event after [DONE]",
	  H200 SSE "Content-Length: 23\r\n\r\ndata: [DONE]\n\ndata: a\n\n",
	  false, EXPECT_DONE, 200, true, 23, 2, false },
	{ "sse [DONE] and a second data line",
	  H200 SSE "Content-Length: 22\r\n\r\ndata: [DONE]\ndata: x\n\n",
	  false, EXPECT_DONE, 200, true, 22, 1, false },
	{ "sse a data line, then [DONE] in the same event",
	  H200 SSE "Content-Length: 22\r\n\r\ndata: x\ndata: [DONE]\n\n",
	  false, EXPECT_DONE, 200, true, 22, 1, false },
	{ "sse [DONE] not alone on its line",
	  H200 SSE "Content-Length: 15\r\n\r\ndata: [DONE]x\n\n",
	  false, EXPECT_DONE, 200, true, 15, 1, false },
	{ "sse [DONE] cut short",
	  H200 SSE "Content-Length: 13\r\n\r\ndata: [DONE\n\n",
	  false, EXPECT_DONE, 200, true, 13, 1, false },
	{ "sse only one space is dropped",
	  H200 SSE "Content-Length: 15\r\n\r\ndata:  [DONE]\n\n",
	  false, EXPECT_DONE, 200, true, 15, 1, false },
	{ "sse [DONE] in another field",
	  H200 SSE "Content-Length: 24\r\n\r\nid: [DONE]\ndata: [DON]\n\n",
	  false, EXPECT_DONE, 200, true, 24, 1, false },
	{ "sse [DONE] never dispatched",
	  H200 SSE "Content-Length: 22\r\n\r\ndata: a\n\ndata: [DONE]\n",
	  false, EXPECT_DONE, 200, true, 22, 1, false },
	{ "sse [DONE] with chunk framing across it",
	  H200 SSE CHUNKED "\r\n8\r\ndata: [D\r\n6\r\nONE]\n\n\r\n0\r\n\r\n",
	  false, EXPECT_DONE, 200, true, 14, 1, true },

	/* errors */
	{ "HTTP/2 status line",
	  "HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n",
	  false, EXPECT_ERROR, 0, false, 0, 0, false },
	{ "two-digit status",
	  "HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
	  false, EXPECT_ERROR, 0, false, 0, 0, false },
	{ "status glued to reason",
	  "HTTP/1.1 200OK\r\nContent-Length: 0\r\n\r\n",
	  false, EXPECT_ERROR, 0, false, 0, 0, false },
	{ "conflicting lengths",
	  H200 "Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
	  false, EXPECT_ERROR, 0, false, 0, 0, false },
	{ "length not a number",
	  H200 "Content-Length: 1x\r\n\r\nab",
	  false, EXPECT_ERROR, 0, false, 0, 0, false },
	{ "negative length",
	  H200 "Content-Length: -1\r\n\r\n",
	  false, EXPECT_ERROR, 0, false, 0, 0, false },
	{ "chunk size not hex",
	  H200 CHUNKED "\r\nzz\r\n",
	  false, EXPECT_ERROR, 0, false, 0, 0, false },
	{ "chunk data without CRLF",
	  H200 CHUNKED "\r\n5\r\nhelloX0\r\n\r\n",
	  false, EXPECT_ERROR, 0, false, 0, 0, false },
	{ "junk between chunk data and LF",
	  H200 CHUNKED "\r\n5\r\nhelloX\n0\r\n\r\n",
	  false, EXPECT_ERROR, 0, false, 0, 0, false },
	{ "chunk size over 60 bits",
	  H200 CHUNKED "\r\n1000000000000000\r\n",
	  false, EXPECT_ERROR, 0, false, 0, 0, false },
	{ "space in a header name",
	  H200 "Content Length: 1\r\n\r\nx",
	  false, EXPECT_ERROR, 0, false, 0, 0, false },
	{ "obsolete line folding",
	  H200 "X-A: 1\r\n  folded\r\nContent-Length: 0\r\n\r\n",
	  false, EXPECT_ERROR, 0, false, 0, 0, false },
	{ "header line without colon",
	  H200 "Content-Length 1\r\n\r\nx",
	  false, EXPECT_ERROR, 0, false, 0, 0, false },
	{ "switching protocols",
	  "HTTP/1.1 101 Switching\r\n\r\n",
	  false, EXPECT_ERROR, 0, false, 0, 0, false },
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
	if (p->rp_sse_last_done != tc->last_done)
		fail_msg("%s (%s): last event is [DONE]: %d", tc->reason, how,
			 p->rp_sse_last_done);
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

static void test_hist_record_n(void **state)
{
	struct hdrhist *a = malloc(sizeof(*a)), *b = malloc(sizeof(*b));
	assert_non_null(a);
	assert_non_null(b);
	hdrhist_init(a);
	hdrhist_init(b);

	/* n at once is n times one, to the bit */
	hdrhist_record_n(a, 0, 0);
	assert_int_equal(a->hh_count, 0);
	assert_int_equal(a->hh_min, UINT64_MAX);
	hdrhist_record_n(a, 5000, 3);
	hdrhist_record_n(a, 0, 2);
	for (int i = 0; i < 3; i++)
		hdrhist_record(b, 5000);
	hdrhist_record(b, 0);
	hdrhist_record(b, 0);
	assert_memory_equal(a, b, sizeof(*a));
	assert_int_equal(hdrhist_percentile(a, 40), 0);
	assert_near(hdrhist_percentile(a, 41), 5000, 0.005);
	assert_int_equal((uint64_t)hdrhist_mean(a), 3000);
	free(a);
	free(b);
}

/* ---- SSE event timing ---- */

#define MS UINT64_C(1000000)

struct timing_fixture {
	struct ssetiming t;
	struct hdrhist gaps;
};

static struct timing_fixture *timing_new(void)
{
	struct timing_fixture *f = malloc(sizeof(*f));
	assert_non_null(f);
	ssetiming_reset(&f->t);
	hdrhist_init(&f->gaps);
	return f;
}

static void test_timing_one_event_per_receive(void **state)
{
	struct timing_fixture *f = timing_new();
	const uint64_t stall = 10 * MS;

	/* the first event has no gap; the others are timed from the one before */
	assert_int_equal(ssetiming_note(&f->t, 1, 100 * MS, stall, &f->gaps), 0);
	assert_int_equal(f->gaps.hh_count, 0);
	assert_int_equal(ssetiming_note(&f->t, 2, 105 * MS, stall, &f->gaps), 0);
	assert_int_equal(ssetiming_note(&f->t, 3, 115 * MS, stall, &f->gaps), 0); /* == not over */
	assert_int_equal(ssetiming_note(&f->t, 4, 115 * MS + 1 + 10 * MS, stall, &f->gaps), 1);
	assert_int_equal(f->gaps.hh_count, 3);
	assert_int_equal(f->gaps.hh_min, 5 * MS);
	assert_int_equal(f->gaps.hh_max, 10 * MS + 1);
	assert_int_equal(f->t.sti_stalls, 1);
	assert_int_equal(f->t.sti_events, 4);

	/* no new event: nothing happens, whatever the time */
	assert_int_equal(ssetiming_note(&f->t, 4, 900 * MS, stall, &f->gaps), 0);
	assert_int_equal(f->gaps.hh_count, 3);
	assert_int_equal(f->t.sti_last_ns, 125 * MS + 1);
	free(f);
}

static void test_timing_batched_events(void **state)
{
	struct timing_fixture *f = timing_new();

	/* three events in the first receive: two gaps of 0 between them */
	assert_int_equal(ssetiming_note(&f->t, 3, 50 * MS, 0, &f->gaps), 0);
	assert_int_equal(f->gaps.hh_count, 2);
	assert_int_equal(f->gaps.hh_max, 0);
	/* four more 30 ms later: one gap of 30 ms, three of 0; no threshold, no stall */
	assert_int_equal(ssetiming_note(&f->t, 7, 80 * MS, 0, &f->gaps), 0);
	assert_int_equal(f->gaps.hh_count, 6);
	assert_int_equal(f->gaps.hh_max, 30 * MS);
	assert_int_equal(hdrhist_percentile(&f->gaps, 80), 0);
	assert_int_equal(hdrhist_percentile(&f->gaps, 100), 30 * MS);
	/* a batch opened by a stall counts one stall, not one per event */
	assert_int_equal(ssetiming_note(&f->t, 12, 200 * MS, 100 * MS, &f->gaps), 1);
	assert_int_equal(f->gaps.hh_count, 11);
	assert_int_equal(f->t.sti_stalls, 1);
	free(f);
}

static void test_timing_outside_the_window(void **state)
{
	struct timing_fixture *f = timing_new();

	/* no histogram (warm-up): the clock still advances, stalls are still seen */
	assert_int_equal(ssetiming_note(&f->t, 1, 0, MS, NULL), 0);
	assert_int_equal(ssetiming_note(&f->t, 2, 5 * MS, MS, NULL), 1);
	assert_int_equal(ssetiming_note(&f->t, 3, 5 * MS + 10, MS, &f->gaps), 0);
	assert_int_equal(f->gaps.hh_count, 1);
	assert_int_equal(f->gaps.hh_max, 10);

	/* a new response starts from nothing */
	ssetiming_reset(&f->t);
	assert_int_equal(f->t.sti_stalls, 0);
	assert_int_equal(ssetiming_note(&f->t, 1, 90 * MS, MS, &f->gaps), 0);
	assert_int_equal(f->gaps.hh_count, 1);
	free(f);
}

static void test_timing_open_stall(void **state)
{
	struct ssetiming t;

	/* no event yet: waiting for the first one is not a gap */
	ssetiming_reset(&t);
	assert_int_equal(ssetiming_open_stall(&t, 500 * MS, MS), 0);
	ssetiming_note(&t, 2, 10 * MS, MS, NULL);
	assert_int_equal(ssetiming_open_stall(&t, 11 * MS, MS), 0);	/* not over */
	assert_int_equal(ssetiming_open_stall(&t, 11 * MS, 0), 0);	/* no threshold */
	assert_int_equal(ssetiming_open_stall(&t, 11 * MS + 1, MS), 1);
	assert_int_equal(t.sti_stalls, 1);
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
		cmocka_unit_test(test_hist_record_n),
		cmocka_unit_test(test_timing_one_event_per_receive),
		cmocka_unit_test(test_timing_batched_events),
		cmocka_unit_test(test_timing_outside_the_window),
		cmocka_unit_test(test_timing_open_stall),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
