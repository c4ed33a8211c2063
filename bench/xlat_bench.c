/* xlat_bench.c - what translating a stream between dialects costs the gateway, per event and
 * per stream, measured in one process without the network (the whole-gateway bench is too
 * noisy on a shared machine to see a microsecond).
 *
 * It replays streams shaped like tools/mockllm's (the bench's upstream: OpenAI chunks with the
 * usage chunk and [DONE] for an Anthropic client; Anthropic's event sequence for an OpenAI
 * client that asked for usage; 16 and 256 text deltas) through the calls policy/pipeline.c
 * makes for a translated stream: xlat_stream_new, an SSE parser fed one fragment per event,
 * xlat_stream_event per event, xlat_stream_end, the usage, the frees.
 *
 * Modes, so that their differences say where time goes:
 *   parse   the SSE parse alone (an empty callback)
 *   slow    + translation, every event through the full jansson parse and rebuild
 *   fast    + translation as the gateway does it (text deltas on the fast path)
 * Before measuring, each stream's fast output is checked to be the slow output, byte for byte.
 *
 * Then the bodies: the response of a translated request that does not stream (shaped like
 * tools/mockllm's, 16 words), and the request itself, translated for every call either way:
 * a chat of a system prompt and three turns with temperature, max_tokens and stream (chat), and
 * bench/bodies/chat.json and messages.json (the whole-gateway bench's: a system prompt and one
 * question). Slow and fast, checked the same.
 *
 *   build/bench/xlat_bench [-r rounds] [-t ms_per_round] [-m mode] [-s stream] [-b bodies_dir]
 *                          [-n streams]   (per round, instead of a time: for perf and callgrind)
 *                          [-p]           (print each stream's translated output once)
 * Times are CPU time of this thread, the best round of each case (the machine is shared).
 */
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/mock_stream.h"
#include "core/buf.h"
#include "core/sse.h"
#include "providers/translate.h"

struct stream {
	const char *name;
	enum dialect from, to;
	unsigned tokens;
	struct mock_stream m;
};

static void fail(const char *what)
{
	fprintf(stderr, "xlat_bench: %s\n", what);
	exit(1);
}

static void make(struct stream *s) { mock_stream_make(&s->m, s->from, s->tokens); }

enum mode { M_PARSE, M_SLOW, M_FAST, M_N };
static const char *const mode_names[M_N] = { "parse", "slow", "fast" };

struct run {
	enum mode mode;
	struct xlat_stream *xs;
	struct buf out;
	uint64_t events, sink;
	bool failed;
};

/* The pipeline's event callback, less what it does with the output (it goes to the client). */
static bool on_event(void *arg, const struct sse_event *ev)
{
	struct run *r = arg;
	r->events++;
	if (r->mode == M_PARSE) {
		r->sink += ev->data.n;
		return true;
	}
	if (xlat_stream_event(r->xs, ev->type, ev->data, &r->out) < 0) {
		r->failed = true;
		return false;
	}
	return true;
}

/* One stream, as the pipeline handles it; its output is left in r->out. */
static void one_stream(const struct stream *s, enum mode mode, struct run *r)
{
	struct sse_parser p;
	r->mode = mode;
	r->xs = NULL;
	r->out.len = 0;
	xlat_set_fast(mode == M_FAST);
	if (mode != M_PARSE && !(r->xs = xlat_stream_new(s->from, s->to, "client-model", true)))
		fail("out of memory");
	sse_init(&p, 1024 * 1024);
	for (unsigned i = 0; i < s->m.nev; i++)
		sse_feed(&p, s->m.bytes.p + s->m.ev_off[i], s->m.ev_off[i + 1] - s->m.ev_off[i], on_event, r);
	sse_free(&p);
	if (r->xs) {
		xlat_stream_end(r->xs, &r->out);
		r->sink += xlat_stream_usage(r->xs)->completion_tokens + r->out.len;
		xlat_stream_free(r->xs);
	}
}

static double cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* With -n: streams per round (for perf and callgrind: a fixed amount of work). */
static uint64_t fixed;

/* ns per call of work(arg): the best of rounds, each at least ms of CPU time (or fixed
 * calls). */
static double best_ns(int rounds, int ms, void (*work)(void *arg), void *arg)
{
	double best = 0;
	for (int k = 0; k < rounds; k++) {
		uint64_t n = 0;
		double t0 = cpu_ns(), t1 = t0;
		for (unsigned batch = 64; fixed ? n < fixed : t1 - t0 < ms * 1e6;
		     batch += batch < 4096 ? batch : 0) {
			if (fixed && batch > fixed - n)
				batch = (unsigned)(fixed - n);
			for (unsigned i = 0; i < batch; i++)
				work(arg);
			n += batch;
			t1 = cpu_ns();
		}
		double per = (t1 - t0) / (double)n;
		if (k == 0 || per < best)
			best = per;
	}
	return best;
}

struct stream_work {
	const struct stream *s;
	enum mode mode;
	struct run r;
	uint64_t streams;
};

static void stream_work(void *arg)
{
	struct stream_work *w = arg;
	one_stream(w->s, w->mode, &w->r);
	w->streams++;
}

/* ns per stream: the best of rounds, each at least ms of CPU time (or fixed streams). */
static double measure(const struct stream *s, enum mode mode, int rounds, int ms, uint64_t *events)
{
	struct stream_work w = { .s = s, .mode = mode };
	double best = best_ns(rounds, ms, stream_work, &w);
	*events = w.r.events / w.streams;
	if (w.r.failed)
		fail("a translation failed");
	if (w.r.sink == 42) /* keep the work */
		putchar(' ');
	buf_free(&w.r.out);
	return best;
}

/* The fast output is the slow output, byte for byte (a second apart, "created" may differ:
 * tried again once). */
static bool same_output(const struct stream *s, bool print)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		struct run slow = { 0 }, fast = { 0 };
		one_stream(s, M_SLOW, &slow);
		one_stream(s, M_FAST, &fast);
		bool same = !slow.failed && !fast.failed && slow.out.len == fast.out.len &&
			    memcmp(slow.out.p, fast.out.p, slow.out.len) == 0;
		if (print && attempt == 0)
			printf("---- %s\n%.*s", s->name, (int)fast.out.len, fast.out.p);
		buf_free(&slow.out);
		buf_free(&fast.out);
		if (same)
			return true;
	}
	return false;
}

/* ---- bodies ---- */

struct body {
	const char *name;
	bool request;
	enum dialect from, to;
	const char *file; /* a request from the bodies directory; none: make_request's */
	struct buf bytes;
};

static void make_response(struct body *b)
{
	char text[512] = "";
	for (unsigned i = 0; i < 16; i++)
		strcat(text, mock_word(i));
	char out[1024];
	if (b->from == DIALECT_OPENAI)
		snprintf(out, sizeof(out), "{\"id\":\"chatcmpl-mock7\",\"object\":\"chat.completion\","
			 "\"created\":1764000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,"
			 "\"message\":{\"role\":\"assistant\",\"content\":\"%s\"},\"logprobs\":null,"
			 "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":95,"
			 "\"completion_tokens\":16,\"total_tokens\":111}}\n", text);
	else
		snprintf(out, sizeof(out), "{\"id\":\"msg_mock7\",\"type\":\"message\",\"role\":"
			 "\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[{\"type\":\"text\","
			 "\"text\":\"%s\"}],\"stop_reason\":\"end_turn\",\"stop_sequence\":null,"
			 "\"usage\":{\"input_tokens\":95,\"output_tokens\":16}}\n", text);
	if (!buf_append(&b->bytes, out, strlen(out), SIZE_MAX))
		fail("out of memory");
}

/* A chat as a client sends it: a system prompt, then user, assistant, user. */
static void make_request(struct body *b)
{
	static const char *const turns[] = {
		"You are a support assistant for Acme Cloud. Answer in at most three short "
		"paragraphs and cite the relevant documentation page when you know it.",
		"Our nightly export job started failing with '403 AccessDenied: request signature "
		"does not match'. Nothing changed on our side. What should I check first?",
		"Check the clock on the VM first: a skew of more than 15 minutes makes every "
		"signature invalid. Then check that the job uses the key you think it does.",
		"The clock is fine. How do I see which key signed the failing requests?",
	};
	char out[2048];
	if (b->from == DIALECT_OPENAI)
		snprintf(out, sizeof(out), "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":"
			 "\"system\",\"content\":\"%s\"},{\"role\":\"user\",\"content\":\"%s\"},"
			 "{\"role\":\"assistant\",\"content\":\"%s\"},{\"role\":\"user\","
			 "\"content\":\"%s\"}],\"temperature\":0.7,\"max_tokens\":1024,"
			 "\"stream\":true,\"stream_options\":{\"include_usage\":true}}\n",
			 turns[0], turns[1], turns[2], turns[3]);
	else
		snprintf(out, sizeof(out), "{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":1024,"
			 "\"system\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"%s\"},"
			 "{\"role\":\"assistant\",\"content\":\"%s\"},{\"role\":\"user\","
			 "\"content\":\"%s\"}],\"temperature\":0.7,\"stream\":true}\n",
			 turns[0], turns[1], turns[2], turns[3]);
	if (!buf_append(&b->bytes, out, strlen(out), SIZE_MAX))
		fail("out of memory");
}

static void read_body(struct body *b, const char *dir, const char *file)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	FILE *f = fopen(path, "rb");
	if (!f)
		fail("cannot read a body in the bodies directory (give it with -b)");
	char chunk[4096];
	size_t n;
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		if (!buf_append(&b->bytes, chunk, n, SIZE_MAX))
			fail("out of memory");
	fclose(f);
}

/* One translation of b into out (emptied first). */
static int one_body(const struct body *b, enum mode mode, struct buf *out)
{
	static const struct xlat_request_opts o = { "upstream-model", 4096, true };
	char err[256];
	struct usage u;
	out->len = 0;
	xlat_set_fast(mode == M_FAST);
	if (b->request)
		return xlat_request(b->from, b->to, slice_of(b->bytes.p, b->bytes.len), &o, out, err,
				    sizeof(err));
	return xlat_response(b->from, b->to, slice_of(b->bytes.p, b->bytes.len), "client-model",
			     out, &u);
}

struct body_work {
	const struct body *b;
	enum mode mode;
	struct buf out;
	uint64_t sink;
};

static void body_work(void *arg)
{
	struct body_work *w = arg;
	if (one_body(w->b, w->mode, &w->out) == 0)
		w->sink += w->out.len;
}

/* ns per translation: the best of rounds, each at least ms of CPU time (or fixed calls). */
static double measure_body(const struct body *b, enum mode mode, int rounds, int ms)
{
	struct body_work w = { .b = b, .mode = mode };
	double best = best_ns(rounds, ms, body_work, &w);
	if (w.sink == 42) /* keep the work */
		putchar(' ');
	buf_free(&w.out);
	return best;
}

/* The fast answer is the slow one, byte for byte ("created" a second apart: tried again). */
static bool same_body(const struct body *b)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		struct buf slow = { 0 }, fast = { 0 };
		int src = one_body(b, M_SLOW, &slow), frc = one_body(b, M_FAST, &fast);
		bool same = src == 0 && frc == 0 && slow.len == fast.len &&
			    memcmp(slow.p, fast.p, slow.len) == 0;
		buf_free(&slow);
		buf_free(&fast);
		if (same)
			return true;
	}
	return false;
}

int main(int argc, char **argv)
{
	int rounds = 5, ms = 200, opt;
	int only = -1;
	bool print = false;
	const char *only_stream = NULL, *bodies = "bench/bodies";
	while ((opt = getopt(argc, argv, "r:t:m:s:n:pb:")) != -1) {
		switch (opt) {
		case 'b': bodies = optarg; break;
		case 'r': rounds = atoi(optarg); break;
		case 't': ms = atoi(optarg); break;
		case 's': only_stream = optarg; break;
		case 'n': fixed = strtoull(optarg, NULL, 10); break;
		case 'p': print = true; break;
		case 'm':
			for (int m = 0; m < M_N; m++)
				if (strcmp(optarg, mode_names[m]) == 0)
					only = m;
			if (only < 0)
				fail("modes: parse, slow, fast");
			break;
		default:
			fprintf(stderr, "usage: %s [-r rounds] [-t ms_per_round] [-m parse|slow|fast] "
				"[-s stream] [-n streams] [-p] [-b bodies_dir]\n", argv[0]);
			return 2;
		}
	}
	if (rounds < 1 || rounds > 1000 || ms < 1 || ms > 60000)
		fail("rounds 1..1000, ms 1..60000");
	struct stream streams[] = {
		{ .name = "oa-to-an-16", .from = DIALECT_OPENAI, .to = DIALECT_ANTHROPIC, .tokens = 16 },
		{ .name = "oa-to-an-256", .from = DIALECT_OPENAI, .to = DIALECT_ANTHROPIC, .tokens = 256 },
		{ .name = "an-to-oa-16", .from = DIALECT_ANTHROPIC, .to = DIALECT_OPENAI, .tokens = 16 },
		{ .name = "an-to-oa-256", .from = DIALECT_ANTHROPIC, .to = DIALECT_OPENAI, .tokens = 256 },
	};
	printf("%-13s %6s %6s %10s %9s\n", "stream", "mode", "events", "ns/stream", "ns/event");
	int bad = 0;
	for (size_t i = 0; i < sizeof(streams) / sizeof(streams[0]); i++) {
		struct stream *s = &streams[i];
		if (only_stream && strcmp(only_stream, s->name) != 0)
			continue;
		make(s);
		if (!same_output(s, print)) {
			printf("%s: the fast output differs from the slow output\n", s->name);
			bad = 1;
		}
		for (int m = 0; m < M_N; m++) {
			if (only >= 0 && m != only)
				continue;
			uint64_t ev = 0;
			double ns = measure(s, (enum mode)m, rounds, ms, &ev);
			printf("%-13s %6s %6llu %10.0f %9.1f\n", s->name, mode_names[m],
			       (unsigned long long)ev, ns, ns / (double)(ev ? ev : 1));
			fflush(stdout);
		}
		buf_free(&s->m.bytes);
	}
	struct body list[] = {
		{ .name = "resp-oa-to-an", .from = DIALECT_OPENAI, .to = DIALECT_ANTHROPIC },
		{ .name = "resp-an-to-oa", .from = DIALECT_ANTHROPIC, .to = DIALECT_OPENAI },
		{ .name = "req-oa-to-an", .request = true, .from = DIALECT_OPENAI,
		  .to = DIALECT_ANTHROPIC, .file = "chat.json" },
		{ .name = "req-an-to-oa", .request = true, .from = DIALECT_ANTHROPIC,
		  .to = DIALECT_OPENAI, .file = "messages.json" },
		{ .name = "chat-oa-to-an", .request = true, .from = DIALECT_OPENAI,
		  .to = DIALECT_ANTHROPIC },
		{ .name = "chat-an-to-oa", .request = true, .from = DIALECT_ANTHROPIC,
		  .to = DIALECT_OPENAI },
	};
	printf("\n%-13s %6s %10s\n", "body", "mode", "ns/call");
	for (size_t i = 0; i < sizeof(list) / sizeof(list[0]); i++) {
		struct body *b = &list[i];
		if (only_stream && strcmp(only_stream, b->name) != 0)
			continue;
		if (!b->request)
			make_response(b);
		else if (b->file)
			read_body(b, bodies, b->file);
		else
			make_request(b);
		if (!same_body(b)) {
			printf("%s: the fast answer differs from the slow answer\n", b->name);
			bad = 1;
		}
		for (int m = M_SLOW; m < M_N; m++) {
			if (only >= 0 && m != only)
				continue;
			printf("%-13s %6s %10.0f\n", b->name, mode_names[m],
			       measure_body(b, (enum mode)m, rounds, ms));
			fflush(stdout);
		}
		buf_free(&b->bytes);
	}
	return bad;
}
