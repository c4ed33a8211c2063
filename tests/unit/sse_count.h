/* sse_count.h - for tests and fuzzers: a stream's bytes counted two ways, which must agree.
 *
 *   reference  every event through an SSE parser and tokcount_stream_event, as a relay that
 *              parses everything would (policy/pipeline.c's translated path does);
 *   one pass   tokcount_stream_sse, fed the same bytes cut into the given fragments (the
 *              relay of same-dialect streams), which reads events in the stream's learned
 *              framing from their bytes.
 *
 * Both stop at the event that takes the count past limit. What is compared: where they
 * stopped, the count then and at the end, exactness, the provider's usage, and the usage-only
 * events a relay would leave out (by their offsets in the whole stream). The reference also
 * checks each event against tokcount_scan_event alone (unlike: how many differ), so what a
 * stream or its context learned from earlier events or streams never changes a reading.
 * Header-only, for tests/unit and tests/fuzz alike. */
#ifndef PENSTOCK_TEST_SSE_COUNT_H
#define PENSTOCK_TEST_SSE_COUNT_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "core/sse.h"
#include "providers/tokcount.h"

#define SSE_COUNT_MAX_EVENT (1024 * 1024)
#define SSE_COUNT_MAX_DROPS 16

struct sse_count {
	bool past;
	int64_t so_far, end;
	bool exact;
	struct usage usage;
	uint64_t bytes;
	size_t drops[SSE_COUNT_MAX_DROPS][2]; /* usage-only events: [start, end) in the stream */
	unsigned ndrop, held_drops;           /* held: not wholly in one fragment */
	unsigned parsed;                      /* one pass: events that went through the parser */
	unsigned unlike; /* reference: events the stream read otherwise than a scan alone would */
};

struct sse_count_run {
	struct sse_count *out;
	struct tokcount_stream *s;
	enum dialect d;
	uint64_t limit;
	size_t base; /* where the fragment being parsed starts in the stream */
};

static inline void sse_count_drop(struct sse_count *out, const struct sse_event *ev, size_t at)
{
	if (!ev->raw_in_frag) {
		out->held_drops++;
	} else if (out->ndrop < SSE_COUNT_MAX_DROPS) {
		out->drops[out->ndrop][0] = at + ev->raw_start;
		out->drops[out->ndrop][1] = at + ev->raw_end;
		out->ndrop++;
	}
}

/* Two readings of one event say the same (its deltas are slices of the same bytes). */
static inline bool sse_count_same_event(const struct tokcount_event *a,
					const struct tokcount_event *b)
{
	if (a->ndelta != b->ndelta || a->extra_bytes != b->extra_bytes ||
	    a->usage.present != b->usage.present || a->has_prompt != b->has_prompt ||
	    a->has_completion != b->has_completion || a->usage_only != b->usage_only ||
	    a->done != b->done || a->usage.prompt_tokens != b->usage.prompt_tokens ||
	    a->usage.completion_tokens != b->usage.completion_tokens ||
	    a->usage.cached_tokens != b->usage.cached_tokens)
		return false;
	for (unsigned i = 0; i < a->ndelta; i++)
		if (a->delta[i].raw.p != b->delta[i].raw.p || a->delta[i].raw.n != b->delta[i].raw.n ||
		    a->delta[i].part != b->delta[i].part)
			return false;
	return true;
}

static inline bool sse_count_ref_event(void *arg, const struct sse_event *ev)
{
	struct sse_count_run *r = arg;
	struct tokcount_event te, alone;
	int rc = tokcount_stream_event(r->s, r->d, ev->type, ev->data, &te);
	/* what the stream and its context learned must change nothing in what it reads */
	if (rc != tokcount_scan_event(r->d, ev->type, ev->data, &alone) ||
	    (rc >= 0 && !sse_count_same_event(&te, &alone)))
		r->out->unlike++;
	if (rc < 0)
		return true;
	if (r->limit != UINT64_MAX && tokcount_stream_past(r->s, r->limit)) {
		r->out->past = true;
		return false;
	}
	if (te.usage_only)
		sse_count_drop(r->out, ev, r->base);
	return true;
}

static inline void sse_count_pass_event(void *arg, const struct sse_event *ev,
					const struct tokcount_event *te, size_t off)
{
	struct sse_count_run *r = arg;
	r->out->parsed++;
	if (te->usage_only)
		sse_count_drop(r->out, ev, r->base + off);
}

static inline void sse_count_finish(struct sse_count_run *r)
{
	r->out->so_far = tokcount_stream_so_far(r->s);
	r->out->end = tokcount_stream_end(r->s);
	r->out->exact = tokcount_stream_exact(r->s);
	r->out->usage = *tokcount_stream_usage(r->s);
	r->out->bytes = tokcount_stream_bytes(r->s);
}

/* Count stream[0..n) cut at cuts[0..ncut) (increasing offsets), one way or the other. False
 * if out of memory. */
static inline bool sse_count(struct tokcount_ctx *c, struct tokcount_tokenizer t, enum dialect d,
			     const char *stream, size_t n, const size_t *cuts, size_t ncut,
			     uint64_t limit, bool one_pass, struct sse_count *out)
{
	memset(out, 0, sizeof(*out));
	struct sse_count_run r = { .out = out, .d = d, .limit = limit };
	if (!(r.s = tokcount_stream_new(c, t)))
		return false;
	struct sse_parser p;
	sse_init(&p, SSE_COUNT_MAX_EVENT);
	for (size_t i = 0; i <= ncut && !out->past; i++) {
		size_t from = i ? cuts[i - 1] : 0, to = i < ncut ? cuts[i] : n;
		r.base = from;
		if (one_pass)
			out->past = tokcount_stream_sse(r.s, d, &p, (struct slice){ stream + from, to - from },
							limit, sse_count_pass_event, &r);
		else
			sse_feed(&p, stream + from, to - from, sse_count_ref_event, &r);
	}
	sse_count_finish(&r);
	sse_free(&p);
	tokcount_stream_free(r.s);
	return true;
}

static inline bool sse_count_same(const struct sse_count *a, const struct sse_count *b)
{
	return a->past == b->past && a->so_far == b->so_far && a->end == b->end &&
	       a->exact == b->exact && a->bytes == b->bytes && a->ndrop == b->ndrop &&
	       a->held_drops == b->held_drops &&
	       memcmp(a->drops, b->drops, sizeof(a->drops[0]) * a->ndrop) == 0 &&
	       a->usage.present == b->usage.present &&
	       a->usage.prompt_tokens == b->usage.prompt_tokens &&
	       a->usage.completion_tokens == b->usage.completion_tokens &&
	       a->usage.cached_tokens == b->usage.cached_tokens;
}

#endif
