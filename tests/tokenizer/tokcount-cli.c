/* tokcount-cli - drive providers/tokcount from files, for the tiktoken oracle and the bench.
 *
 *   tokcount-cli --vocab-dir DIR --tokenizer NAME MODE [FILE...]
 *
 * NAME: o200k_base | cl100k_base | estimate. Modes, one output line per file:
 *   --stream STEP      FILE holds raw JSON string bodies (escapes as sent), parts separated
 *                      by a 0x1E byte (never raw in a JSON string); each part is fed to one
 *                      stream counter STEP bytes at a time (STEP 0: random steps of 1..64
 *                      bytes). Prints the final count.
 *   --events DIALECT   FILE is an SSE stream (openai | anthropic); every event goes through
 *                      tokcount_stream_event. Prints "count prompt completion usage_only",
 *                      the last three from the provider's usage (-1: not given), usage_only
 *                      the number of usage-only chunks.
 *   --prompt DIALECT   FILE is a request body. Prints "tokens upper_bound exact".
 *   --bench-stream STEP  FILE as for --stream: MB/s and tokens/s of feeding it STEP bytes at
 *                      a time (best of 5, one core).
 *   --bench-events DIALECT  FILE as for --events: ns per event, counting on and off.
 *   --bench-prompt DIALECT  FILE as for --prompt: ns per body, BOUND and COUNT modes.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/sse.h"
#include "providers/tokcount.h"

enum mode { M_NONE, M_STREAM, M_EVENTS, M_PROMPT, M_BENCH_STREAM, M_BENCH_EVENTS, M_BENCH_PROMPT };

struct opts {
	enum mode mode;
	long step;
	enum dialect dialect;
	struct tokcount_tokenizer t;
};

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "tokcount-cli: %s: %s\n", path, strerror(errno));
		return NULL;
	}
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap);
	while (buf) {
		n += fread(buf + n, 1, cap - n, f);
		if (n < cap)
			break;
		cap *= 2;
		char *p = realloc(buf, cap);
		if (!p)
			free(buf);
		buf = p;
	}
	fclose(f);
	*len = n;
	return buf;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint32_t rng_state = 12345;
static uint32_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 17;
	rng_state ^= rng_state << 5;
	return rng_state;
}

/* Feed every 0x1E-separated part of text; returns the final count. */
static int64_t stream_count(struct tokcount_ctx *c, const struct opts *o, const char *text,
			    size_t len, bool *exact)
{
	struct tokcount_stream *s = tokcount_stream_new(c, o->t);
	if (!s)
		return -1;
	uint32_t part = 0;
	size_t at = 0;
	rng_state = 12345;
	while (at <= len) {
		const char *rs = memchr(text + at, 0x1E, len - at);
		size_t end = rs ? (size_t)(rs - text) : len;
		while (at < end) {
			size_t step = o->step > 0 ? (size_t)o->step : 1 + rnd() % 64;
			size_t n = end - at < step ? end - at : step;
			tokcount_stream_feed(s, part, slice_of(text + at, n));
			at += n;
		}
		part++;
		at = end + 1;
	}
	int64_t n = tokcount_stream_end(s);
	*exact = tokcount_stream_exact(s);
	tokcount_stream_free(s);
	return n;
}

struct ev_run {
	struct tokcount_stream *s;
	enum dialect d;
	bool count;
	unsigned events, usage_only;
};

static bool on_event(void *arg, const struct sse_event *ev)
{
	struct ev_run *r = arg;
	struct tokcount_event te;
	r->events++;
	if (r->count)
		tokcount_stream_event(r->s, r->d, ev->type, ev->data, &te);
	else
		tokcount_scan_event(r->d, ev->type, ev->data, &te);
	r->usage_only += te.usage_only;
	return true;
}

static int events_run(struct tokcount_ctx *c, const struct opts *o, const char *text, size_t len,
		      bool count, struct ev_run *r)
{
	struct sse_parser p;
	*r = (struct ev_run){ .s = tokcount_stream_new(c, o->t), .d = o->dialect, .count = count };
	if (!r->s)
		return -1;
	sse_init(&p, 1 << 20);
	int rc = sse_feed(&p, text, len, on_event, r);
	sse_free(&p);
	return rc;
}

static int do_events(struct tokcount_ctx *c, const struct opts *o, const char *text, size_t len)
{
	struct ev_run r;
	if (events_run(c, o, text, len, true, &r) != SSE_OK) {
		tokcount_stream_free(r.s);
		puts("error");
		return 1;
	}
	const struct usage *u = tokcount_stream_usage(r.s);
	int64_t n = tokcount_stream_end(r.s);
	printf("%" PRId64 " %" PRId64 " %" PRId64 " %u\n", n,
	       u->present ? (int64_t)u->prompt_tokens : -1,
	       u->present ? (int64_t)u->completion_tokens : -1, r.usage_only);
	tokcount_stream_free(r.s);
	return 0;
}

static int do_prompt(struct tokcount_ctx *c, const struct opts *o, const char *text, size_t len)
{
	struct tokcount_prompt p;
	if (tokcount_prompt(c, o->t, o->dialect, slice_of(text, len), TOKCOUNT_PROMPT_COUNT, &p)) {
		puts("error");
		return 1;
	}
	printf("%" PRId64 " %" PRId64 " %d\n", p.tokens, p.upper_bound, p.exact);
	return 0;
}

static int do_bench_stream(struct tokcount_ctx *c, const struct opts *o, const char *text,
			   size_t len)
{
	double best = 1e30;
	int64_t n = 0;
	bool exact;
	for (int r = 0; r < 5; r++) {
		double t0 = now_s();
		n = stream_count(c, o, text, len, &exact);
		double t1 = now_s();
		best = t1 - t0 < best ? t1 - t0 : best;
	}
	printf("{\"bytes\": %zu, \"tokens\": %" PRId64 ", \"step\": %ld, \"s\": %.6f, "
	       "\"mb_s\": %.2f, \"mtok_s\": %.3f}\n",
	       len, n, o->step, best, (double)len / best / 1e6, (double)n / best / 1e6);
	return 0;
}

static bool on_event_parse_only(void *arg, const struct sse_event *ev)
{
	struct ev_run *r = arg;
	r->events += ev->data.n > 0;
	return true;
}

static int do_bench_events(struct tokcount_ctx *c, const struct opts *o, const char *text,
			   size_t len)
{
	double best[3] = { 1e30, 1e30, 1e30 };
	unsigned events = 0;
	for (int rep = 0; rep < 5; rep++) {
		for (int mode = 0; mode < 3; mode++) { /* parse only, + scan, + scan and count */
			struct ev_run r;
			double t0 = now_s();
			if (mode == 0) {
				struct sse_parser p;
				r = (struct ev_run){ 0 };
				sse_init(&p, 1 << 20);
				sse_feed(&p, text, len, on_event_parse_only, &r);
				sse_free(&p);
			} else {
				events_run(c, o, text, len, mode == 2, &r);
				tokcount_stream_end(r.s);
				tokcount_stream_free(r.s);
			}
			double dt = now_s() - t0;
			best[mode] = dt < best[mode] ? dt : best[mode];
			events = r.events;
		}
	}
	printf("{\"events\": %u, \"bytes\": %zu, \"sse_ns_per_event\": %.1f, "
	       "\"scan_ns_per_event\": %.1f, \"scan_count_ns_per_event\": %.1f}\n", events, len,
	       best[0] / events * 1e9, best[1] / events * 1e9, best[2] / events * 1e9);
	return 0;
}

static int do_bench_prompt(struct tokcount_ctx *c, const struct opts *o, const char *text,
			   size_t len)
{
	double best[2] = { 1e30, 1e30 };
	struct tokcount_prompt p[2];
	const int reps = len > 10000 ? 200 : 20000;
	for (int round = 0; round < 5; round++) {
		for (int m = 0; m < 2; m++) {
			double t0 = now_s();
			for (int i = 0; i < reps; i++)
				if (tokcount_prompt(c, o->t, o->dialect, slice_of(text, len),
						    m ? TOKCOUNT_PROMPT_COUNT
						      : TOKCOUNT_PROMPT_BOUND, &p[m]) != 0)
					return 1;
			double dt = (now_s() - t0) / reps;
			best[m] = dt < best[m] ? dt : best[m];
		}
	}
	printf("{\"bytes\": %zu, \"text_bytes\": %" PRId64 ", \"bound\": %" PRId64
	       ", \"tokens\": %" PRId64 ", \"bound_ns\": %.0f, \"count_ns\": %.0f}\n",
	       len, p[1].text_bytes, p[0].upper_bound, p[1].tokens, best[0] * 1e9, best[1] * 1e9);
	return 0;
}

static int one(struct tokcount_ctx *c, const struct opts *o, const char *path)
{
	size_t len = 0;
	char *text = read_file(path, &len);
	if (!text)
		return 1;
	int rc = 0;
	bool exact;
	switch (o->mode) {
	case M_STREAM: printf("%" PRId64 "\n", stream_count(c, o, text, len, &exact)); break;
	case M_EVENTS: rc = do_events(c, o, text, len); break;
	case M_PROMPT: rc = do_prompt(c, o, text, len); break;
	case M_BENCH_STREAM: rc = do_bench_stream(c, o, text, len); break;
	case M_BENCH_EVENTS: rc = do_bench_events(c, o, text, len); break;
	case M_BENCH_PROMPT: rc = do_bench_prompt(c, o, text, len); break;
	case M_NONE: break;
	}
	free(text);
	return rc;
}

static int usage(void)
{
	fprintf(stderr, "usage: tokcount-cli --vocab-dir DIR --tokenizer NAME\n"
			"       --stream STEP | --events D | --prompt D | --bench-stream STEP |\n"
			"       --bench-events D | --bench-prompt D  FILE...\n");
	return 2;
}

int main(int argc, char **argv)
{
	struct opts o = { 0 };
	const char *dir = NULL, *tname = NULL;
	int i = 1;
	for (; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
		const char *a = argv[i], *v = argv[i + 1];
		if (strcmp(a, "--vocab-dir") == 0) {
			dir = v;
		} else if (strcmp(a, "--tokenizer") == 0) {
			tname = v;
		} else if (strcmp(a, "--stream") == 0 || strcmp(a, "--bench-stream") == 0) {
			o.mode = a[2] == 's' ? M_STREAM : M_BENCH_STREAM;
			o.step = strtol(v, NULL, 10);
		} else if (strcmp(a, "--events") == 0 || strcmp(a, "--prompt") == 0 ||
			   strcmp(a, "--bench-events") == 0 || strcmp(a, "--bench-prompt") == 0) {
			o.mode = strcmp(a, "--events") == 0	  ? M_EVENTS
				 : strcmp(a, "--prompt") == 0	  ? M_PROMPT
				 : strcmp(a, "--bench-events") == 0 ? M_BENCH_EVENTS
								    : M_BENCH_PROMPT;
			o.dialect = strcmp(v, "anthropic") == 0 ? DIALECT_ANTHROPIC
								 : DIALECT_OPENAI;
		} else {
			return usage();
		}
	}
	if (!dir || !tname || o.mode == M_NONE || i == argc)
		return usage();
	struct tokcount_reg *reg = tokcount_reg_open(dir);
	struct tokcount_ctx *c = reg ? tokcount_ctx_new(reg) : NULL;
	if (!c) {
		fprintf(stderr, "tokcount-cli: out of memory\n");
		return 1;
	}
	o.t = tokcount_pick(reg, tname, PROVIDER_OPENAI, NULL);
	int status = 0;
	for (; i < argc; i++)
		status |= one(c, &o, argv[i]);
	tokcount_ctx_free(c);
	tokcount_reg_close(reg);
	return status;
}
