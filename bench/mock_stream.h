/* mock_stream.h - streams shaped like tools/mockllm's (the gateway bench's upstream), built in
 * memory for the benches that replay them in one process (tokcount_bench, xlat_bench): an
 * OpenAI stream with include_usage (role chunk, one chunk per word, finish, usage, [DONE]) or
 * Anthropic's event sequence, the bytes and where each event starts. Header-only: each bench
 * is one .c file. */
#ifndef PENSTOCK_BENCH_MOCK_STREAM_H
#define PENSTOCK_BENCH_MOCK_STREAM_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "providers/translate.h" /* enum dialect */

static const char *const mock_words[] = {
	"The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".",
	" Penstock", " routes", " every", " request", " through", " one", " gateway", ",",
	" counting", " tokens", " as", " they", " pass", ".",
};
#define MOCK_NWORDS (sizeof(mock_words) / sizeof(mock_words[0]))

/* The i-th word of every mock completion. */
static inline const char *mock_word(unsigned i) { return mock_words[i % MOCK_NWORDS]; }

#define MOCK_MAX_EVENTS 1024

struct mock_stream {
	struct buf bytes;
	size_t ev_off[MOCK_MAX_EVENTS + 1]; /* event i is bytes[ev_off[i], ev_off[i + 1]) */
	unsigned nev;
};

static inline void mock_fail(const char *what)
{
	fprintf(stderr, "mock_stream: %s\n", what);
	exit(1);
}

static inline void mock_put(struct mock_stream *m, const char *str)
{
	if (!buf_append(&m->bytes, str, strlen(str), SIZE_MAX))
		mock_fail("out of memory");
}

static inline void mock_event(struct mock_stream *m)
{
	if (m->nev == MOCK_MAX_EVENTS)
		mock_fail("too many events");
	m->ev_off[m->nev++] = m->bytes.len;
}

static inline void mock_oa_chunk(struct mock_stream *m)
{
	mock_event(m);
	mock_put(m, "data: {\"id\":\"chatcmpl-mock123456\",\"object\":\"chat.completion.chunk\","
		    "\"created\":1764000000,\"model\":\"gpt-4o-mini\",\"choices\":");
}

/* As tools/mockllm's openai_complete writes a stream with include_usage. */
static inline void mock_openai(struct mock_stream *m, unsigned tokens)
{
	mock_oa_chunk(m);
	mock_put(m, "[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
		    "\"finish_reason\":null}]}\n\n");
	for (unsigned i = 0; i < tokens; i++) {
		mock_oa_chunk(m);
		mock_put(m, "[{\"index\":0,\"delta\":{\"content\":\"");
		mock_put(m, mock_word(i));
		mock_put(m, "\"},\"finish_reason\":null}]}\n\n");
	}
	mock_oa_chunk(m);
	mock_put(m, "[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
	mock_oa_chunk(m);
	char u[128];
	snprintf(u, sizeof(u), "[],\"usage\":{\"prompt_tokens\":95,\"completion_tokens\":%u,"
		 "\"total_tokens\":%u}}\n\n", tokens, 95 + tokens);
	mock_put(m, u);
	mock_event(m);
	mock_put(m, "data: [DONE]\n\n");
}

/* As tools/mockllm's anthropic_complete writes a text stream. */
static inline void mock_anthropic(struct mock_stream *m, unsigned tokens)
{
	mock_event(m);
	mock_put(m, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":"
		    "\"msg_mock123456\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],"
		    "\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,"
		    "\"usage\":{\"input_tokens\":95,\"output_tokens\":1}}}\n\n");
	mock_event(m);
	mock_put(m, "event: content_block_start\ndata: {\"type\":\"content_block_start\","
		    "\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
	mock_event(m);
	mock_put(m, "event: ping\ndata: {\"type\":\"ping\"}\n\n");
	for (unsigned i = 0; i < tokens; i++) {
		mock_event(m);
		mock_put(m, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
			    "\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"");
		mock_put(m, mock_word(i));
		mock_put(m, "\"}}\n\n");
	}
	mock_event(m);
	mock_put(m, "event: content_block_stop\ndata: {\"type\":\"content_block_stop\","
		    "\"index\":0}\n\n");
	mock_event(m);
	char u[256];
	snprintf(u, sizeof(u), "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":"
		 "{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":"
		 "%u}}\n\n", tokens);
	mock_put(m, u);
	mock_event(m);
	mock_put(m, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
}

/* A stream of tokens words in dialect d. */
static inline void mock_stream_make(struct mock_stream *m, enum dialect d, unsigned tokens)
{
	if (d == DIALECT_OPENAI)
		mock_openai(m, tokens);
	else
		mock_anthropic(m, tokens);
	m->ev_off[m->nev] = m->bytes.len;
}

#endif
