/* test_sse.c - the SSE parser gives the same events however a stream is split. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/sse.h"

/* Events are logged as "type|data|id|retry;" with data's LFs shown as "\n". */
struct log {
	char text[4096];
	size_t n;
	unsigned events;
	unsigned stop_after; /* 0: never stop */
	size_t frag_at;      /* the stream offset of the fragment being fed */
	struct { size_t start, end; bool in_frag; } span[32]; /* raw bytes, stream offsets */
};

static bool on_event(void *arg, const struct sse_event *ev)
{
	struct log *l = arg;
	if (l->events < 32) {
		l->span[l->events].in_frag = ev->raw_in_frag;
		l->span[l->events].start = l->frag_at + ev->raw_start;
		l->span[l->events].end = l->frag_at + ev->raw_end;
		assert_true(!ev->raw_in_frag || ev->raw_start < ev->raw_end);
	}
	l->events++;
	if (l->n + 512 > sizeof(l->text)) /* long runs only count */
		return !(l->stop_after && l->events >= l->stop_after);
	l->n += (size_t)snprintf(l->text + l->n, sizeof(l->text) - l->n, "%.*s|", SLICE_ARG(ev->type));
	for (size_t i = 0; i < ev->data.n && l->n + 3 < sizeof(l->text); i++) {
		if (ev->data.p[i] == '\n') {
			l->text[l->n++] = '\\';
			l->text[l->n++] = 'n';
		} else {
			l->text[l->n++] = ev->data.p[i];
		}
	}
	l->n += (size_t)snprintf(l->text + l->n, sizeof(l->text) - l->n, "|%.*s|%lld;",
				 SLICE_ARG(ev->id), (long long)ev->retry);
	return !(l->stop_after && l->events >= l->stop_after);
}

struct sse_case {
	const char *name;
	const char *stream;
	size_t len;
	const char *events;
};

#define CASE(name, stream, events) { name, stream, sizeof(stream) - 1, events }

static const struct sse_case cases[] = {
	CASE("openai chunks", "data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n",
	  "|{\"a\":1}||-1;|{\"b\":2}||-1;|[DONE]||-1;"),
	CASE("anthropic events",
	  "event: message_start\ndata: {\"type\":\"message_start\"}\n\n"
	  "event: ping\ndata: {\"type\":\"ping\"}\n\n",
	  "message_start|{\"type\":\"message_start\"}||-1;ping|{\"type\":\"ping\"}||-1;"),
	CASE("CRLF and CR endings", "data: one\r\n\r\ndata: two\r\rdata: three\n\n",
	  "|one||-1;|two||-1;|three||-1;"),
	CASE("CRLF between the lines of one event", "data: a\r\ndata: b\r\n\r\n", "|a\\nb||-1;"),
	CASE("multi-line data", "data: a\ndata: b\ndata\ndata:c\n\n", "|a\\nb\\n\\nc||-1;"),
	CASE("one space only is dropped", "data:  two spaces\n\n", "| two spaces||-1;"),
	CASE("comments and unknown fields", ": keep-alive\nfoo: bar\ndata: x\n: more\n\n", "|x||-1;"),
	CASE("no data: no event", "event: lonely\n\ndata: after\n\n", "|after||-1;"),
	CASE("id persists, retry per event", "id: 7\nretry: 1500\ndata: a\n\ndata: b\n\n",
	  "|a|7|1500;|b|7|-1;"),
	CASE("bad retry ignored", "retry: 12a\ndata: a\n\n", "|a||-1;"),
	CASE("id with NUL ignored", "id: 1\ndata: a\n\nid: x\0y\ndata: b\n\n", "|a|1|-1;|b|1|-1;"),
	CASE("BOM at the start", "\xEF\xBB\xBF" "data: bom\n\n", "|bom||-1;"),
	CASE("field without colon", "data\n\n", "|||-1;"),
	CASE("event type resets", "event: e1\ndata: 1\n\ndata: 2\n\n", "e1|1||-1;|2||-1;"),
	CASE("unterminated last event is not dispatched", "data: a\n\ndata: partial", "|a||-1;"),
	CASE("utf-8 data", "data: h\xC3\xA9llo \xF0\x9F\x98\x80\n\n", "|h\xC3\xA9llo \xF0\x9F\x98\x80||-1;"),
};

static size_t case_len(const struct sse_case *c) { return c->len; }

/* Feed the stream in pieces cut at the given offsets, each from its own heap copy. */
static void feed_split(const struct sse_case *c, const size_t *cuts, size_t ncuts, struct log *l)
{
	struct sse_parser p;
	sse_init(&p, 1024);
	size_t len = case_len(c), at = 0;
	for (size_t k = 0; k <= ncuts; k++) {
		size_t end = k < ncuts ? cuts[k] : len;
		char *frag = malloc(end - at + 1);
		memcpy(frag, c->stream + at, end - at);
		l->frag_at = at;
		int rc = sse_feed(&p, frag, end - at, on_event, l);
		/* poison what the parser must not keep pointing at */
		memset(frag, 'Z', end - at);
		free(frag);
		assert_int_equal(rc, SSE_OK);
		at = end;
	}
	sse_free(&p);
}

static void check(const struct sse_case *c, const size_t *cuts, size_t ncuts)
{
	struct log l = { 0 };
	feed_split(c, cuts, ncuts, &l);
	if (strcmp(l.text, c->events) != 0)
		fail_msg("%s (cuts %zu: %zu,%zu): got '%s', want '%s'", c->name, ncuts,
			 ncuts ? cuts[0] : 0, ncuts > 1 ? cuts[1] : 0, l.text, c->events);
}

static void test_whole(void **state)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check(&cases[i], NULL, 0);
}

static void test_every_split_point(void **state)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t len = case_len(&cases[i]);
		for (size_t a = 1; a < len; a++)
			check(&cases[i], &a, 1);
	}
}

static void test_every_pair_of_split_points(void **state)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t len = case_len(&cases[i]);
		for (size_t a = 1; a < len; a++)
			for (size_t b = a + 1; b < len; b++) {
				size_t cuts[2] = { a, b };
				check(&cases[i], cuts, 2);
			}
	}
}

static void test_byte_by_byte(void **state)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t len = case_len(&cases[i]);
		size_t *cuts = malloc(len * sizeof(*cuts));
		for (size_t k = 0; k + 1 < len; k++)
			cuts[k] = k + 1;
		check(&cases[i], cuts, len ? len - 1 : 0);
		free(cuts);
	}
}

/* Where each event's raw bytes lie: fed whole, every event says so, and its bytes run from
 * its first field line to its empty line; fed in pieces, an event says so exactly when its
 * bytes lie in one piece, at the same place (less the LF of a CRLF cut between its halves). */
static void check_spans(const struct sse_case *c, const struct log *whole, const size_t *cuts,
			size_t ncuts)
{
	struct log l = { 0 };
	feed_split(c, cuts, ncuts, &l);
	assert_int_equal(l.events, whole->events);
	for (unsigned e = 0; e < l.events && e < 32; e++) {
		size_t s = whole->span[e].start, t = whole->span[e].end;
		bool crlf_cut = false, inside = true;
		if (s == 3 && memcmp(c->stream, "\xEF\xBB\xBF", 3) == 0)
			s = 0; /* the BOM is read with the first line, though not part of the event */
		for (size_t k = 0; k < ncuts; k++) {
			if (cuts[k] > s && cuts[k] < t)
				inside = false;
			if (cuts[k] == t - 1 && c->stream[t - 1] == '\n' && c->stream[t - 2] == '\r')
				crlf_cut = true;
		}
		if (crlf_cut) { /* the event ends at the CR, the LF is in the next piece */
			inside = true;
			for (size_t k = 0; k < ncuts; k++)
				if (cuts[k] > s && cuts[k] < t - 1)
					inside = false;
			t--;
		}
		if (l.span[e].in_frag != inside)
			fail_msg("%s: event %u: in_frag %d, want %d (%zu cuts, first %zu)", c->name, e,
				 l.span[e].in_frag, inside, ncuts, ncuts ? cuts[0] : 0);
		if (inside && (l.span[e].start != whole->span[e].start || l.span[e].end != t))
			fail_msg("%s: event %u at [%zu,%zu), want [%zu,%zu)", c->name, e,
				 l.span[e].start, l.span[e].end, whole->span[e].start, t);
	}
}

static void test_raw_spans(void **state)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct sse_case *c = &cases[i];
		struct log whole = { 0 };
		size_t len = case_len(c);
		feed_split(c, NULL, 0, &whole);
		for (unsigned e = 0; e < whole.events; e++) {
			size_t s = whole.span[e].start, t = whole.span[e].end;
			assert_true(whole.span[e].in_frag);
			assert_true(t <= len && s < t);
			assert_true(c->stream[t - 1] == '\n' || c->stream[t - 1] == '\r');
			assert_true(c->stream[s] != ':' && c->stream[s] != '\n');
		}
		for (size_t a = 1; a < len; a++)
			check_spans(c, &whole, &a, 1);
		size_t *cuts = malloc(len * sizeof(*cuts));
		for (size_t k = 0; k + 1 < len; k++)
			cuts[k] = k + 1;
		check_spans(c, &whole, cuts, len ? len - 1 : 0);
		free(cuts);
	}
}

/* A relay that drops the usage chunk by cutting the fragment around it (and passes it on
 * when it is not wholly in one fragment) gives the client every other event unchanged. */
static void test_relay_drops_one_event(void **state)
{
	static const char stream[] = "data: {\"a\":1}\r\n\r\n: ping\n"
				     "data: {\"choices\":[],\"usage\":{}}\r\n\r\n: after\n"
				     "data: [DONE]\n\n";
	size_t len = sizeof(stream) - 1;
	for (size_t a = 0; a < len; a++) {
		struct sse_parser p;
		struct log l = { 0 };
		char out[256];
		size_t n = 0;
		bool dropped = false;
		sse_init(&p, 1024);
		for (int k = 0; k < 2; k++) {
			const char *frag = k ? stream + a : stream;
			size_t flen = k ? len - a : a;
			unsigned before = l.events;
			l.frag_at = 0;
			assert_int_equal(sse_feed(&p, frag, flen, on_event, &l), SSE_OK);
			size_t from = 0;
			if (before <= 1 && l.events > 1 && l.span[1].in_frag) { /* the usage event */
				memcpy(out + n, frag, l.span[1].start);
				n += l.span[1].start;
				from = l.span[1].end;
				dropped = true;
			}
			memcpy(out + n, frag + from, flen - from);
			n += flen - from;
		}
		sse_free(&p);
		struct log got = { 0 };
		sse_init(&p, 1024);
		assert_int_equal(sse_feed(&p, out, n, on_event, &got), SSE_OK);
		sse_free(&p);
		const char *want = dropped ? "|{\"a\":1}||-1;|[DONE]||-1;"
					   : "|{\"a\":1}||-1;|{\"choices\":[],\"usage\":{}}||-1;|[DONE]||-1;";
		if (strcmp(got.text, want) != 0)
			fail_msg("cut at %zu: got '%s', want '%s'", a, got.text, want);
		/* the usage event is at [24, 59); a cut at 58 splits its last CRLF */
		bool whole_in_one = a <= 24 || a >= 58;
		assert_true(dropped == whole_in_one);
	}
}

/* An event over the bound is an error, every time after too; memory stays bounded. */
static void test_too_long(void **state)
{
	struct sse_parser p;
	struct log l = { 0 };
	sse_init(&p, 64);
	char big[200];
	memset(big, 'x', sizeof(big));
	memcpy(big, "data: ", 6);
	assert_int_equal(sse_feed(&p, big, sizeof(big), on_event, &l), SSE_E_TOO_LONG);
	assert_int_equal(sse_feed(&p, "\n\n", 2, on_event, &l), SSE_E_TOO_LONG);
	assert_int_equal(l.events, 0);
	sse_free(&p);

	/* many short data lines that add up past the bound */
	sse_init(&p, 64);
	int rc = SSE_OK;
	for (int i = 0; i < 20 && rc == SSE_OK; i++)
		rc = sse_feed(&p, "data: 0123456789\n", 17, on_event, &l);
	assert_int_equal(rc, SSE_E_TOO_LONG);
	sse_free(&p);

	/* the same bound allows a long stream of small events */
	sse_init(&p, 64);
	for (int i = 0; i < 1000; i++)
		assert_int_equal(sse_feed(&p, "data: 0123456789\n\n", 18, on_event, &l), SSE_OK);
	assert_int_equal(l.events, 1000);
	sse_free(&p);
}

static void test_stop(void **state)
{
	struct sse_parser p;
	struct log l = { .stop_after = 2 };
	sse_init(&p, 1024);
	const char *s = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
	assert_int_equal(sse_feed(&p, s, strlen(s), on_event, &l), SSE_STOPPED);
	assert_int_equal(l.events, 2);
	assert_true(sse_between_events(&p));
	/* Resumed where the stopping event ended (raw_end), the parser reads on. */
	l.stop_after = 0;
	assert_int_equal(sse_feed(&p, s + l.span[1].end, strlen(s) - l.span[1].end, on_event, &l),
			 SSE_OK);
	assert_int_equal(l.events, 3);
	assert_string_equal(l.text, "|1||-1;|2||-1;|3||-1;");
	sse_free(&p);

	/* Stopped by an event whose empty line is a CR ending the fragment: the LF that may
	 * follow is still its pair, so the parser is not between events until it comes. */
	struct log m = { .stop_after = 1 };
	sse_init(&p, 1024);
	assert_false(sse_between_events(&p)); /* the BOM may still come */
	const char *a = "data: x\r\r", *b = "\ndata: y\n\n";
	assert_int_equal(sse_feed(&p, a, strlen(a), on_event, &m), SSE_STOPPED);
	assert_false(sse_between_events(&p));
	m.stop_after = 0;
	assert_int_equal(sse_feed(&p, b, strlen(b), on_event, &m), SSE_OK);
	assert_true(sse_between_events(&p));
	assert_string_equal(m.text, "|x||-1;|y||-1;");
	sse_free(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_whole),
		cmocka_unit_test(test_every_split_point),
		cmocka_unit_test(test_every_pair_of_split_points),
		cmocka_unit_test(test_byte_by_byte),
		cmocka_unit_test(test_raw_spans),
		cmocka_unit_test(test_relay_drops_one_event),
		cmocka_unit_test(test_too_long),
		cmocka_unit_test(test_stop),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
