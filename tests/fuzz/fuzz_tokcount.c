/* fuzz_tokcount.c - libFuzzer harness for providers/tokcount's event readers, JSON string
 * decoder, stream counter and prompt bound, and policy/redact. No vocabulary is loaded, so
 * counts take the estimate; what is under test is the parsing of untrusted provider events
 * and client bodies. The input is used whole as a request body (both dialects), cut at
 * blank lines into events fed to a stream counter (both dialects; "event: name" first line
 * optional), and redacted. For any bytes: no crash or leak; the stream's running count
 * never goes down; the stream reads each event as tokcount_scan_event does (its learned
 * shapes and leads are shortcuts, not other answers); the input as raw SSE, cut into fragments
 * where its last bytes say, counts the same in one pass (tokcount_stream_sse) as through the
 * parser (tests/unit/sse_count.h), with and without a limit; the prompt's bound is at least its
 * estimate; a redacted text stays within its bound. */
/* fuzz-sources: providers/tokcount.c providers/tokenize.c policy/redact.c core/json.c core/log.c core/sse.c -lpcre2-8 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy/redact.h"
#include "providers/tokcount.h"
#include "tests/unit/sse_count.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tokcount_reg *reg;
static struct tokcount_ctx *ctx;

static void stream_through(enum dialect d, struct slice in)
{
	struct tokcount_tokenizer t = tokcount_pick(reg, "estimate", PROVIDER_OPENAI_COMPAT, "m");
	struct tokcount_stream *s = tokcount_stream_new(ctx, t);
	if (!s)
		return;
	int64_t last = 0;
	size_t off = 0;
	while (off < in.n) {
		const char *end = memmem(in.p + off, in.n - off, "\n\n", 2);
		size_t len = end ? (size_t)(end - (in.p + off)) : in.n - off;
		struct slice ev = { in.p + off, len }, type = { "", 0 }, data = ev;
		const char *nl = memchr(ev.p, '\n', ev.n);
		if (ev.n > 7 && memcmp(ev.p, "event: ", 7) == 0 && nl) {
			type = (struct slice){ ev.p + 7, (size_t)(nl - ev.p) - 7 };
			data = (struct slice){ nl + 1, ev.n - (size_t)(nl + 1 - ev.p) };
		}
		struct tokcount_event te, alone;
		int rc = tokcount_stream_event(s, d, type, data, &te);
		if (tokcount_scan_event(d, type, data, &alone) != rc || !sse_count_same_event(&te, &alone))
			abort();
		int64_t now = tokcount_stream_so_far(s);
		if (now < last)
			abort();
		last = now;
		off += len + (end ? 2 : 0);
	}
	if (tokcount_stream_end(s) < 0)
		abort();
	tokcount_stream_free(s);
}

/* The input's last 8 bytes, when it has more, seed where fragments end (up to 64 cuts), and
 * say whether there is a limit; the rest is the stream. */
static void sse_both_ways(enum dialect d, struct slice in)
{
	size_t cuts[64], ncut = 0;
	uint64_t seed = 0, limit = UINT64_MAX;
	if (in.n > 8) {
		memcpy(&seed, in.p + in.n - 8, 8);
		in.n -= 8;
		ncut = seed % 65;
		if (seed & (1ull << 40))
			limit = (seed >> 41) % 256;
	}
	for (size_t i = 0; i < ncut; i++) {
		seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
		cuts[i] = in.n ? seed % in.n : 0;
	}
	for (size_t i = 1; i < ncut; i++) /* increasing: insertion sort */
		for (size_t j = i; j > 0 && cuts[j - 1] > cuts[j]; j--) {
			size_t x = cuts[j];
			cuts[j] = cuts[j - 1];
			cuts[j - 1] = x;
		}
	struct tokcount_tokenizer t = tokcount_pick(reg, "estimate", PROVIDER_OPENAI_COMPAT, "m");
	struct sse_count ref, pass;
	if (!sse_count(ctx, t, d, in.p, in.n, cuts, ncut, limit, false, &ref) ||
	    !sse_count(ctx, t, d, in.p, in.n, cuts, ncut, limit, true, &pass))
		return;
	if (!sse_count_same(&ref, &pass) || ref.unlike)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!reg) {
		reg = tokcount_reg_open("/nonexistent/penstock-fuzz");
		ctx = reg ? tokcount_ctx_new(reg) : NULL;
		if (!ctx)
			abort();
	}
	struct slice in = { (const char *)data, size };
	struct tokcount_tokenizer t = tokcount_pick(reg, NULL, PROVIDER_OPENAI, "gpt-4o");
	for (int d = DIALECT_OPENAI; d <= DIALECT_ANTHROPIC; d++) {
		struct tokcount_prompt p;
		if (tokcount_prompt(ctx, t, (enum dialect)d, in, TOKCOUNT_PROMPT_BOUND, &p) == 0 &&
		    p.upper_bound < 0)
			abort();
		stream_through((enum dialect)d, in);
		sse_both_ways((enum dialect)d, in);
	}
	struct buf out = { 0 };
	size_t max = 64 + (size % 4096);
	if (redact(in, max, &out) == 0 && out.len > max)
		abort();
	buf_free(&out);
	return 0;
}
