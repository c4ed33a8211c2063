/* fuzz_translate.c - libFuzzer harness for providers/translate. The input is used whole as a
 * request in both directions, a response and an error body in both directions, and, cut
 * at blank lines ("event: name" first line optional), as a stream of events through all
 * four dialect pairs. For any bytes: no crash or leak; a translated request or response is
 * one JSON object; a translated stream is well-formed SSE whose every data line is JSON or
 * [DONE], and its terminator (message_stop or error; [DONE]) is written exactly once. */
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

static size_t count(const char *hay, size_t n, const char *needle)
{
	size_t k = 0, m = strlen(needle);
	for (const char *p = hay; p && p + m <= hay + n; p++) {
		p = memmem(p, (size_t)(hay + n - p), needle, m);
		if (!p)
			break;
		k++;
	}
	return k;
}

/* Every event of a stream we wrote: "event: x\n" (Anthropic only), one data line, blank. */
static void check_stream(const struct buf *b, enum dialect to)
{
	const char *p = b->p, *end = b->p + b->len;
	while (p < end) {
		const char *stop = memmem(p, (size_t)(end - p), "\n\n", 2);
		if (!stop)
			abort();
		if (to == DIALECT_ANTHROPIC) {
			if (strncmp(p, "event: ", 7) != 0)
				abort();
			p = memchr(p, '\n', (size_t)(stop - p)) + 1;
		}
		if (strncmp(p, "data: ", 6) != 0 || memchr(p, '\n', (size_t)(stop - p)))
			abort();
		p += 6;
		if (!((size_t)(stop - p) == 6 && memcmp(p, "[DONE]", 6) == 0)) {
			json_t *j = json_loadb(p, (size_t)(stop - p), JSON_ALLOW_NUL, NULL);
			if (!json_is_object(j))
				abort();
			json_decref(j);
		}
		p = stop + 2;
	}
	size_t terminators = to == DIALECT_OPENAI
				     ? count(b->p, b->len, "data: [DONE]\n\n")
				     : count(b->p, b->len, "event: message_stop\n") +
					       count(b->p, b->len, "event: error\n");
	if (terminators != 1)
		abort();
}

static void stream(enum dialect from, enum dialect to, const char *text, size_t n, bool usage,
		   bool cut_short)
{
	struct xlat_stream *s = xlat_stream_new(from, to, "fuzz-model", usage);
	struct buf out = { 0 };
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
		if (xlat_stream_event(s, name, data, &out)) {
			cut_short = true;
			break;
		}
		p = stop ? stop + 2 : end;
	}
	if (cut_short)
		xlat_stream_error(s, XERR_UPSTREAM, "upstream failed", &out);
	xlat_stream_end(s, &out);
	if (from != to)
		check_stream(&out, to);
	const struct usage *u = xlat_stream_usage(s);
	if (u->cached_tokens > u->prompt_tokens && from == DIALECT_OPENAI)
		abort();
	buf_free(&out);
	xlat_stream_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *copy = malloc(size ? size : 1);
	memcpy(copy, data, size);
	struct slice in = slice_of(copy, size);
	const struct xlat_request_opts o = { "up", (uint32_t)size, size & 1 };
	char err[128];
	struct usage u;
	struct buf out = { 0 };

	for (int from = 0; from < 2; from++) {
		int to = !from;
		out.len = 0;
		if (xlat_request(from, to, in, &o, &out, err, sizeof(err)) == 0) {
			check_object(&out);
			struct buf back = { 0 };
			xlat_request(to, from, slice_of(out.p, out.len), &o, &back, err, sizeof(err));
			buf_free(&back);
		} else if (out.len || !memchr(err, 0, sizeof(err))) {
			abort();
		}
		out.len = 0;
		if (xlat_response(from, to, in, "fuzz-model", &out, &u) == 0)
			check_object(&out);
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
