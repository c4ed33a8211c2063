/* tokcount_bench.c - what counting a stream's completion tokens costs the gateway, per event
 * and per stream, measured in one process without the network (the whole-gateway bench is
 * too noisy on a shared machine to see a microsecond).
 *
 * It replays streams shaped like tools/mockllm's (the bench's upstream: OpenAI chunks with the
 * usage chunk and [DONE], Anthropic's event sequence; 16 and 256 text deltas) through the
 * calls policy/pipeline.c makes for a same-dialect stream: tokcount_stream_new, an SSE parser
 * fed each fragment, tokcount_stream_event and tokcount_stream_past per event,
 * tokcount_stream_end, the usage and exactness, the frees. Each stream is fed one fragment
 * per event (the mock writes each event on its own) or whole (one fragment).
 *
 * Modes, each the one before plus a step, so that their differences say where time goes:
 *   parse   the SSE parse alone (an empty callback)
 *   scan    + tokcount_scan_event on each event (finding the deltas and the usage)
 *   count   the pipeline's calls, counting included, every event through the parser
 *   framed  the pipeline's calls as it makes them: events in the stream's learned framing
 *           counted from their bytes (tokcount_stream_framed), the others parsed
 * The counter's total is checked against tokcount_text of the whole text.
 *
 *   build/bench/tokcount_bench [-d vocab_dir] [-r rounds] [-t ms_per_round] [-m mode]
 *                              [-s stream]   (a stream's name, e.g. openai-16: that one only)
 *                              [-n streams]  (per round, instead of a time: for perf stat)
 * Times are CPU time of this thread, the best round of each case (the machine is shared).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/mock_stream.h"
#include "core/buf.h"
#include "core/sse.h"
#include "providers/tokcount.h"

struct stream {
	const char *name;
	enum dialect d;
	unsigned tokens;
	struct mock_stream m;
	struct buf text; /* the decoded completion */
};

static void fail(const char *what)
{
	fprintf(stderr, "tokcount_bench: %s\n", what);
	exit(1);
}

static void make(struct stream *s)
{
	mock_stream_make(&s->m, s->d, s->tokens);
	for (unsigned i = 0; i < s->tokens; i++)
		if (!buf_append(&s->text, mock_word(i), strlen(mock_word(i)), SIZE_MAX))
			fail("out of memory");
}

enum mode { M_PARSE, M_SCAN, M_COUNT, M_FRAMED, M_N };
static const char *const mode_names[M_N] = { "parse", "scan", "count", "framed" };

struct run {
	enum mode mode;
	enum dialect d;
	struct tokcount_stream *tcs;
	uint64_t sink;
	bool cut;
};

/* The pipeline's px_count_event, less what it does with the answer. */
static bool on_event(void *arg, const struct sse_event *ev)
{
	struct run *r = arg;
	if (r->mode == M_PARSE) {
		r->sink += ev->data.n;
		return true;
	}
	struct tokcount_event te;
	if (r->mode == M_SCAN) {
		if (tokcount_scan_event(r->d, ev->type, ev->data, &te) == 0)
			r->sink += te.ndelta + te.usage_only;
		return true;
	}
	if (tokcount_stream_event(r->tcs, r->d, ev->type, ev->data, &te) < 0)
		return true;
	if (tokcount_stream_past(r->tcs, 1u << 20))
		r->cut = true;
	r->sink += te.usage_only;
	return !r->cut;
}

/* What the pipeline's px_strip_usage is given. */
static void on_counted(void *arg, const struct sse_event *ev, const struct tokcount_event *te,
		       size_t off)
{
	struct run *r = arg;
	r->sink += te->usage_only + ev->raw_end + off;
}

/* A fragment, as the pipeline's relay gives it: framed mode counts it in one pass. */
static void feed(struct run *r, struct sse_parser *p, const char *frag, size_t len)
{
	if (r->mode == M_FRAMED)
		r->cut = r->cut || tokcount_stream_sse(r->tcs, r->d, p, (struct slice){ frag, len },
						       1u << 20, on_counted, r);
	else if (!r->cut)
		sse_feed(p, frag, len, on_event, r);
}

/* One stream, as the pipeline handles it. Returns the count (count mode). */
static int64_t one_stream(struct tokcount_ctx *c, struct tokcount_tokenizer t,
			  const struct stream *s, enum mode mode, bool per_event, struct run *r)
{
	struct sse_parser p;
	r->mode = mode;
	r->d = s->d;
	r->tcs = NULL;
	r->cut = false;
	if (mode >= M_COUNT && !(r->tcs = tokcount_stream_new(c, t)))
		fail("out of memory");
	sse_init(&p, 1024 * 1024);
	if (per_event) {
		for (unsigned i = 0; i < s->m.nev; i++)
			feed(r, &p, s->m.bytes.p + s->m.ev_off[i], s->m.ev_off[i + 1] - s->m.ev_off[i]);
	} else {
		feed(r, &p, s->m.bytes.p, s->m.bytes.len);
	}
	sse_free(&p);
	int64_t n = 0;
	if (r->tcs) {
		n = tokcount_stream_end(r->tcs);
		const struct usage *u = tokcount_stream_usage(r->tcs);
		r->sink += u->completion_tokens + tokcount_stream_exact(r->tcs) +
			   tokcount_stream_bytes(r->tcs);
		tokcount_stream_free(r->tcs);
	}
	return n;
}

static double cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* With -n: streams per round (for perf stat: a fixed amount of work). */
static uint64_t fixed;

/* ns per stream: the best of rounds, each at least ms of CPU time (or fixed streams). */
static double measure(struct tokcount_ctx *c, struct tokcount_tokenizer t, const struct stream *s,
		      enum mode mode, bool per_event, int rounds, int ms)
{
	struct run r = { 0 };
	double best = 0;
	for (int k = 0; k < rounds; k++) {
		uint64_t n = 0;
		double t0 = cpu_ns(), t1 = t0;
		for (unsigned batch = 64; fixed ? n < fixed : t1 - t0 < ms * 1e6;
		     batch += batch < 4096 ? batch : 0) {
			if (fixed && batch > fixed - n)
				batch = (unsigned)(fixed - n);
			for (unsigned i = 0; i < batch; i++)
				one_stream(c, t, s, mode, per_event, &r);
			n += batch;
			t1 = cpu_ns();
		}
		double per = (t1 - t0) / (double)n;
		if (k == 0 || per < best)
			best = per;
	}
	if (r.sink == 42) /* keep the work */
		putchar(' ');
	return best;
}

int main(int argc, char **argv)
{
	const char *dir = "tests/tokenizer/vocab";
	int rounds = 5, ms = 200, opt;
	int only = -1;
	const char *only_stream = NULL;
	while ((opt = getopt(argc, argv, "d:r:t:m:s:n:")) != -1) {
		switch (opt) {
		case 'd': dir = optarg; break;
		case 'r': rounds = atoi(optarg); break;
		case 't': ms = atoi(optarg); break;
		case 's': only_stream = optarg; break;
		case 'n': fixed = strtoull(optarg, NULL, 10); break;
		case 'm':
			for (int m = 0; m < M_N; m++)
				if (strcmp(optarg, mode_names[m]) == 0)
					only = m;
			if (only < 0)
				fail("modes: parse, scan, count, framed");
			break;
		default:
			fprintf(stderr, "usage: %s [-d vocab_dir] [-r rounds] [-t ms_per_round] "
				"[-m parse|scan|count|framed] [-s stream] [-n streams]\n", argv[0]);
			return 2;
		}
	}
	if (rounds < 1 || rounds > 1000 || ms < 1 || ms > 60000)
		fail("rounds 1..1000, ms 1..60000");
	struct tokcount_reg *reg = tokcount_reg_open(dir);
	if (!reg || !tokcount_reg_has(reg, TOKCOUNT_O200K))
		fail("no o200k_base vocabulary (give its directory with -d)");
	struct tokcount_ctx *c = tokcount_ctx_new(reg);
	if (!c)
		fail("out of memory");
	/* The bench's gpt-4o-mini, and Anthropic's estimate (o200k_base * 5/4). */
	struct tokcount_tokenizer oa = { TOKCOUNT_O200K, true }, an = { TOKCOUNT_ESTIMATE, false };
	struct stream streams[] = {
		{ .name = "openai-16", .d = DIALECT_OPENAI, .tokens = 16 },
		{ .name = "openai-256", .d = DIALECT_OPENAI, .tokens = 256 },
		{ .name = "anthropic-16", .d = DIALECT_ANTHROPIC, .tokens = 16 },
		{ .name = "anthropic-256", .d = DIALECT_ANTHROPIC, .tokens = 256 },
	};
	printf("%-14s %-9s %6s %6s %10s %9s\n", "stream", "fragments", "mode", "events",
	       "ns/stream", "ns/event");
	int bad = 0;
	for (size_t i = 0; i < sizeof(streams) / sizeof(streams[0]); i++) {
		struct stream *s = &streams[i];
		if (only_stream && strcmp(only_stream, s->name) != 0)
			continue;
		struct tokcount_tokenizer t = s->d == DIALECT_OPENAI ? oa : an;
		make(s);
		struct run r = { 0 };
		int64_t want = tokcount_text(c, t, s->text.p, s->text.len);
		for (int per_event = 1; per_event >= 0; per_event--) {
			for (int m = M_COUNT; m <= M_FRAMED; m++) {
				int64_t got = one_stream(c, t, s, (enum mode)m, per_event, &r);
				if (got != want) {
					printf("%s: %s counted %lld, tokcount_text says %lld\n",
					       s->name, mode_names[m], (long long)got,
					       (long long)want);
					bad = 1;
				}
			}
			for (int m = 0; m < M_N; m++) {
				if (only >= 0 && m != only)
					continue;
				double ns = measure(c, t, s, (enum mode)m, per_event, rounds, ms);
				printf("%-14s %-9s %6s %6u %10.0f %9.1f\n", s->name,
				       per_event ? "per-event" : "whole", mode_names[m], s->m.nev, ns,
				       ns / (double)s->m.nev);
				fflush(stdout);
			}
		}
		buf_free(&s->m.bytes);
		buf_free(&s->text);
	}
	tokcount_ctx_free(c);
	tokcount_reg_close(reg);
	return bad;
}
