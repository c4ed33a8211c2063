/* fuzz_translate.c - libFuzzer harness for providers/translate. The input is used whole as a
 * request in both directions, a response and an error body in both directions, and, cut
 * at blank lines ("event: name" first line optional), as a stream of events through all
 * four dialect pairs. For any bytes: no crash or leak; a translated request or response is
 * one JSON object; every stream is well-formed SSE ending in its terminator (message_stop
 * or error; [DONE]) written exactly once, and a translated one has one data line per event,
 * JSON or [DONE]; and the fast paths (xlat_set_fast) write what the full path writes, requests
 * (and their translations back), streams and responses, byte for byte (but for made-up ids and
 * the clock), with the same usage and refusals. */
/* fuzz-sources: providers/translate.c core/json.c -ljansson */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "providers/translate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_object(const struct buf *b)
{
	json_t *j = json_loadb(b->p, b->len, JSON_ALLOW_NUL, NULL);
	if (!json_is_object(j))
		abort();
	json_decref(j);
}

/* Every event we wrote: "event: x" (Anthropic only), then data lines, then a blank line;
 * translated streams have one data line, JSON or [DONE]. The terminator ([DONE];
 * message_stop or error) comes once, last. */
static void check_stream(const struct buf *b, enum dialect to, bool translated)
{
	const char *p = b->p, *end = b->p + b->len;
	size_t terminators = 0;
	while (p < end) {
		const char *stop = memmem(p, (size_t)(end - p), "\n\n", 2);
		if (!stop || terminators)
			abort();
		if (to == DIALECT_ANTHROPIC) {
			if (strncmp(p, "event: ", 7) != 0)
				abort();
			const char *nl = memchr(p, '\n', (size_t)(stop + 1 - p));
			size_t n = (size_t)(nl - p - 7);
			if ((n == 12 && memcmp(p + 7, "message_stop", 12) == 0) ||
			    (n == 5 && memcmp(p + 7, "error", 5) == 0))
				terminators++;
			p = nl + 1;
		}
		const char *first = p;
		size_t lines = 0;
		while (p < stop + 1) {
			const char *nl = memchr(p, '\n', (size_t)(stop + 1 - p));
			if (strncmp(p, "data: ", 6) != 0)
				abort();
			lines++;
			p = nl + 1;
		}
		const char *d = first + 6;
		size_t n = (size_t)(stop - d);
		bool done = n == 6 && memcmp(d, "[DONE]", 6) == 0;
		if (done && to == DIALECT_OPENAI)
			terminators++;
		if (!lines || (translated && lines != 1))
			abort();
		if (translated && !done) {
			json_t *j = json_loadb(d, n, JSON_ALLOW_NUL, NULL);
			if (!json_is_object(j))
				abort();
			json_decref(j);
		}
		p = stop + 2;
	}
	if (terminators != 1)
		abort();
}

/* The stream's output for text cut into events; fast: the fast paths on or off. */
static struct xlat_stream *run(enum dialect from, enum dialect to, const char *text, size_t n,
			       bool usage, bool cut_short, bool fast, struct buf *out)
{
	xlat_set_fast(fast);
	struct xlat_stream *s = xlat_stream_new(from, to, "fuzz-model", usage);
	const char *p = text, *end = text + n;
	while (p < end) {
		const char *stop = memmem(p, (size_t)(end - p), "\n\n", 2);
		const char *ev_end = stop ? stop : end;
		struct slice name = { "", 0 }, data = { p, (size_t)(ev_end - p) };
		const char *nl = memchr(p, '\n', (size_t)(ev_end - p));
		if (nl && (size_t)(nl - p) > 7 && memcmp(p, "event: ", 7) == 0) {
			name = slice_of(p + 7, (size_t)(nl - p - 7));
			data = slice_of(nl + 1, (size_t)(ev_end - nl - 1));
		}
		if (xlat_stream_event(s, name, data, out)) {
			cut_short = true;
			break;
		}
		p = stop ? stop + 2 : end;
	}
	if (cut_short)
		xlat_stream_error(s, XERR_UPSTREAM, "upstream failed", out);
	xlat_stream_end(s, out);
	xlat_set_fast(true);
	return s;
}

/* b without what differs from one run to the next: made-up ids' digits ("msg_penstock<hex>")
 * and "created" times. */
static void unclock(struct buf *b)
{
	static const char *const marks[] = { "penstock", "\"created\":" };
	static const char *const digits[] = { "0123456789abcdef", "0123456789" };
	size_t w = 0;
	for (size_t r = 0; r < b->len;) {
		b->p[w++] = b->p[r++];
		for (size_t m = 0; m < 2; m++) {
			size_t k = strlen(marks[m]);
			if (w < k || memcmp(b->p + w - k, marks[m], k) != 0)
				continue;
			while (r < b->len && b->p[r] && strchr(digits[m], b->p[r]))
				r++;
		}
	}
	b->len = w;
}

static void stream(enum dialect from, enum dialect to, const char *text, size_t n, bool usage,
		   bool cut_short)
{
	struct buf out = { 0 }, full = { 0 };
	struct xlat_stream *s = run(from, to, text, n, usage, cut_short, true, &out);
	struct xlat_stream *slow = run(from, to, text, n, usage, cut_short, false, &full);
	check_stream(&out, to, from != to);
	const struct usage *u = xlat_stream_usage(s), *su = xlat_stream_usage(slow);
	if (u->cached_tokens > u->prompt_tokens && from == DIALECT_OPENAI)
		abort();
	if (u->prompt_tokens != su->prompt_tokens || u->completion_tokens != su->completion_tokens ||
	    u->cached_tokens != su->cached_tokens || u->present != su->present)
		abort();
	unclock(&out);
	unclock(&full);
	if (out.len != full.len || (out.len && memcmp(out.p, full.p, out.len)))
		abort();
	buf_free(&out);
	buf_free(&full);
	xlat_stream_free(s);
	xlat_stream_free(slow);
}

/* The full path's answer to a response is the fast path's (rc, out, u). */
static void response_is_full(enum dialect from, enum dialect to, struct slice in, int rc,
			     struct buf *out, const struct usage *u)
{
	struct buf full = { 0 };
	struct usage su;
	xlat_set_fast(false);
	int src = xlat_response(from, to, in, "fuzz-model", &full, &su);
	xlat_set_fast(true);
	unclock(out);
	unclock(&full);
	if (rc != src || out->len != full.len || (out->len && memcmp(out->p, full.p, out->len)) ||
	    u->prompt_tokens != su.prompt_tokens || u->completion_tokens != su.completion_tokens ||
	    u->cached_tokens != su.cached_tokens || u->present != su.present)
		abort();
	buf_free(&full);
}

/* The full path's answer to a request is the fast path's (rc, out, err). */
static void request_is_full(enum dialect from, enum dialect to, struct slice in,
			    const struct xlat_request_opts *o, int rc, const struct buf *out,
			    const char *err)
{
	struct buf full = { 0 };
	char serr[128] = "";
	xlat_set_fast(false);
	int src = xlat_request(from, to, in, o, &full, serr, sizeof(serr));
	xlat_set_fast(true);
	if (rc != src || out->len != full.len || (out->len && memcmp(out->p, full.p, out->len)) ||
	    (rc && strcmp(err, serr)))
		abort();
	buf_free(&full);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *copy = malloc(size ? size : 1);
	memcpy(copy, data, size);
	struct slice in = slice_of(copy, size);
	const struct xlat_request_opts o = { size & 8 ? NULL : "up", (uint32_t)size, size & 1 };
	char err[128] = "";
	struct usage u;
	struct buf out = { 0 };

	for (int from = 0; from < 2; from++) {
		int to = !from;
		out.len = 0;
		int rc = xlat_request(from, to, in, &o, &out, err, sizeof(err));
		request_is_full(from, to, in, &o, rc, &out, err);
		if (rc == 0) {
			check_object(&out);
			struct buf back = { 0 };
			struct slice sent = slice_of(out.p, out.len);
			int brc = xlat_request(to, from, sent, &o, &back, err, sizeof(err));
			request_is_full(to, from, sent, &o, brc, &back, err);
			buf_free(&back);
		} else if (out.len || !memchr(err, 0, sizeof(err))) {
			abort();
		}
		out.len = 0;
		rc = xlat_response(from, to, in, "fuzz-model", &out, &u);
		if (rc == 0)
			check_object(&out);
		response_is_full(from, to, in, rc, &out, &u);
		xlat_response_usage(from, in, &u);
		out.len = 0;
		int status = xlat_error(from, to, 400 + (int)(size % 200), in, &out);
		if (status < 400 || status > 599)
			abort();
		check_object(&out);
	}
	bool usage = size & 2, cut = size & 4;
	stream(DIALECT_OPENAI, DIALECT_ANTHROPIC, copy, size, usage, cut);
	stream(DIALECT_ANTHROPIC, DIALECT_OPENAI, copy, size, usage, cut);
	stream(DIALECT_OPENAI, DIALECT_OPENAI, copy, size, usage, cut);
	stream(DIALECT_ANTHROPIC, DIALECT_ANTHROPIC, copy, size, usage, cut);
	buf_free(&out);
	free(copy);
	return 0;
}
