/* tokenize-cli - count, encode and check texts with providers/tokenize, for the tiktoken
 * oracle test and the throughput bench.
 *
 *   tokenize-cli --vocab FILE [--special none|all] MODE [FILE...]   (no FILE: stdin)
 *
 * Modes, one output line per input:
 *   --encode        the token ids, space-separated
 *   --count         the number of tokens
 *   --pieces        the pre-split pieces as offset:length (special tokens as offset:length:sID)
 *   --check         "ok", or what failed: count == encode length, decode(encode(x)) == x with
 *                   invalid UTF-8 replaced, encode with a short array stores a prefix
 *   --growing N     the count found by feeding the text N bytes at a time to
 *                   tok_count_growing (re-counting only the tail); with --verify, every
 *                   step's total is also checked against tok_count of the prefix
 *   --bench REPS    encode and count each input REPS times: MB/s and tokens/s on one core
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "providers/tokenize.h"

enum mode { M_NONE, M_ENCODE, M_COUNT, M_PIECES, M_CHECK, M_GROWING, M_BENCH };

struct opts {
	const char *vocab;
	enum tok_special sp;
	enum mode mode;
	long arg;
	int verify;
};

static char *read_all(FILE *f, size_t *len)
{
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap);
	while (buf != NULL) {
		n += fread(buf + n, 1, cap - n, f);
		if (n < cap)
			break;
		cap *= 2;
		char *p = realloc(buf, cap);
		if (p == NULL)
			free(buf);
		buf = p;
	}
	if (buf == NULL || ferror(f)) {
		free(buf);
		return NULL;
	}
	*len = n;
	return buf;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int fail(const char *what, int64_t rc)
{
	fprintf(stderr, "tokenize-cli: %s: %s\n", what, tok_strerror((int)rc));
	return 1;
}

static int do_encode(struct tok_ctx *ctx, const struct opts *o, const char *text, size_t len)
{
	int64_t n = tok_count(ctx, text, len, o->sp);
	if (n < 0)
		return fail("count", n);
	uint32_t *ids = malloc(((size_t)n + 1) * sizeof(*ids));
	if (ids == NULL)
		return fail("encode", TOK_E_NOMEM);
	int64_t m = tok_encode(ctx, text, len, o->sp, ids, (size_t)n);
	if (m != n) {
		free(ids);
		return fail("encode", m < 0 ? m : TOK_E_FORMAT);
	}
	for (int64_t i = 0; i < n; i++)
		printf(i ? " %" PRIu32 : "%" PRIu32, ids[i]);
	putchar('\n');
	free(ids);
	return 0;
}

static int do_pieces(struct tok_ctx *ctx, const struct opts *o, const char *text, size_t len)
{
	char *clean = malloc(3 * len + 1);
	if (clean == NULL)
		return fail("pieces", TOK_E_NOMEM);
	size_t n = tok_utf8_sanitize(text, len, clean, 3 * len + 1);
	struct tok_pieces it;
	struct tok_piece p;
	int rc;
	const char *sep = "";
	tok_pieces_init(&it, ctx, clean, n, 0, o->sp, false);
	while ((rc = tok_pieces_next(&it, &p)) == 1) {
		printf("%s%zu:%zu", sep, p.off, p.len);
		if (p.special >= 0)
			printf(":s%" PRId32, p.special);
		sep = " ";
	}
	putchar('\n');
	free(clean);
	return rc < 0 ? fail("pieces", rc) : 0;
}

static int do_check(struct tok_ctx *ctx, const struct tok_enc *enc, const struct opts *o,
		    const char *text, size_t len)
{
	int64_t n = tok_count(ctx, text, len, o->sp);
	uint32_t *ids = malloc(((size_t)n + 1) * sizeof(*ids));
	char *clean = malloc(3 * len + 1), *back = malloc(3 * len + 1);
	const char *bad = NULL;
	if (n < 0 || ids == NULL || clean == NULL || back == NULL) {
		bad = "count failed or no memory";
	} else if (tok_encode(ctx, text, len, o->sp, ids, (size_t)n) != n) {
		bad = "encode length != count";
	} else {
		size_t clen = tok_utf8_sanitize(text, len, clean, 3 * len + 1);
		int64_t blen = tok_decode(enc, ids, (size_t)n, back, 3 * len + 1);
		if (blen != (int64_t)clen || memcmp(back, clean, clen) != 0)
			bad = "decode(encode(text)) != text";
		uint32_t few[3] = { 0 };
		if (!bad && n > 0 && tok_encode(ctx, text, len, o->sp, few, 2) != n)
			bad = "a short id array changed the count";
		if (!bad && n > 0 &&
		    (few[0] != ids[0] || (n > 1 && few[1] != ids[1]) || few[2] != 0))
			bad = "a short id array got the wrong prefix or overflowed";
	}
	puts(bad ? bad : "ok");
	free(ids);
	free(clean);
	free(back);
	return bad != NULL;
}

static int do_growing(struct tok_ctx *ctx, const struct opts *o, const char *raw, size_t raw_len)
{
	char *text = malloc(3 * raw_len + 1);
	if (text == NULL)
		return fail("growing", TOK_E_NOMEM);
	size_t len = tok_utf8_sanitize(raw, raw_len, text, 3 * raw_len + 1);
	size_t step = (size_t)o->arg, committed_off = 0;
	int64_t committed = 0, total = 0;
	for (size_t have = step < len ? step : len;; have = have + step < len ? have + step : len) {
		size_t final_off;
		int64_t final_n;
		int64_t tail = tok_count_growing(ctx, text, have, committed_off, o->sp, &final_off,
						 &final_n);
		if (tail < 0) {
			free(text);
			return fail("growing", tail);
		}
		total = committed + tail;
		committed += final_n;
		committed_off = final_off;
		if (o->verify) {
			size_t whole = have - (have - tok_utf8_valid_prefix(text, have));
			int64_t want = tok_count(ctx, text, whole, o->sp);
			if (want != total) {
				printf("at %zu: %" PRId64 " != %" PRId64 "\n", have, total, want);
				free(text);
				return 1;
			}
		}
		if (have == len)
			break;
	}
	int64_t tail = tok_count(ctx, text + committed_off, len - committed_off, o->sp);
	free(text);
	if (tail < 0)
		return fail("growing end", tail);
	if (committed + tail != total && len > 0) {
		printf("end: %" PRId64 " != %" PRId64 "\n", committed + tail, total);
		return 1;
	}
	printf("%" PRId64 "\n", committed + tail);
	return 0;
}

static int do_bench(struct tok_ctx *ctx, const struct opts *o, const char *text, size_t len)
{
	int64_t n = tok_count(ctx, text, len, o->sp);
	if (n < 0)
		return fail("count", n);
	uint32_t *ids = malloc(((size_t)n + 1) * sizeof(*ids));
	if (ids == NULL)
		return fail("bench", TOK_E_NOMEM);
	double best_enc = 1e30, best_cnt = 1e30;
	for (long r = 0; r < o->arg; r++) {
		double t0 = now_s();
		int64_t m = tok_encode(ctx, text, len, o->sp, ids, (size_t)n);
		double t1 = now_s();
		int64_t c = tok_count(ctx, text, len, o->sp);
		double t2 = now_s();
		if (m != n || c != n) {
			free(ids);
			return fail("bench", TOK_E_FORMAT);
		}
		best_enc = t1 - t0 < best_enc ? t1 - t0 : best_enc;
		best_cnt = t2 - t1 < best_cnt ? t2 - t1 : best_cnt;
	}
	free(ids);
	printf("{\"bytes\": %zu, \"tokens\": %" PRId64 ", \"encode_s\": %.6f, \"count_s\": %.6f, "
	       "\"encode_mb_s\": %.2f, \"encode_mtok_s\": %.3f, "
	       "\"count_mb_s\": %.2f, \"count_mtok_s\": %.3f}\n",
	       len, n, best_enc, best_cnt, (double)len / best_enc / 1e6, (double)n / best_enc / 1e6,
	       (double)len / best_cnt / 1e6, (double)n / best_cnt / 1e6);
	return 0;
}

static int one(struct tok_ctx *ctx, const struct tok_enc *enc, const struct opts *o, FILE *f,
	       const char *name)
{
	size_t len = 0;
	char *text = read_all(f, &len);
	if (text == NULL) {
		fprintf(stderr, "tokenize-cli: %s: cannot read\n", name);
		return 1;
	}
	int rc = 0;
	switch (o->mode) {
	case M_ENCODE: rc = do_encode(ctx, o, text, len); break;
	case M_COUNT: {
		int64_t n = tok_count(ctx, text, len, o->sp);
		rc = n < 0 ? fail(name, n) : (printf("%" PRId64 "\n", n), 0);
		break;
	}
	case M_PIECES: rc = do_pieces(ctx, o, text, len); break;
	case M_CHECK: rc = do_check(ctx, enc, o, text, len); break;
	case M_GROWING: rc = do_growing(ctx, o, text, len); break;
	case M_BENCH: rc = do_bench(ctx, o, text, len); break;
	case M_NONE: break;
	}
	free(text);
	return rc;
}

static int usage(void)
{
	fprintf(stderr, "usage: tokenize-cli --vocab FILE [--special none|all] [--verify]\n"
			"       --encode|--count|--pieces|--check|--growing N|--bench REPS "
			"[FILE...]\n");
	return 2;
}

int main(int argc, char **argv)
{
	struct opts o = { .sp = TOK_SPECIAL_NONE };
	int i = 1;
	for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--vocab") == 0 && v) {
			o.vocab = v;
			i++;
		} else if (strcmp(a, "--special") == 0 && v) {
			o.sp = strcmp(v, "all") == 0 ? TOK_SPECIAL_ALL : TOK_SPECIAL_NONE;
			i++;
		} else if (strcmp(a, "--encode") == 0) {
			o.mode = M_ENCODE;
		} else if (strcmp(a, "--count") == 0) {
			o.mode = M_COUNT;
		} else if (strcmp(a, "--pieces") == 0) {
			o.mode = M_PIECES;
		} else if (strcmp(a, "--check") == 0) {
			o.mode = M_CHECK;
		} else if (strcmp(a, "--verify") == 0) {
			o.verify = 1;
		} else if ((strcmp(a, "--growing") == 0 || strcmp(a, "--bench") == 0) && v) {
			o.mode = a[2] == 'g' ? M_GROWING : M_BENCH;
			o.arg = strtol(v, NULL, 10);
			i++;
			if (o.arg <= 0)
				return usage();
		} else {
			return usage();
		}
	}
	if (o.vocab == NULL || o.mode == M_NONE)
		return usage();
	struct tok_enc *enc;
	int rc = tok_open(o.vocab, &enc);
	if (rc != 0)
		return fail(o.vocab, rc);
	struct tok_ctx *ctx = tok_ctx_new(enc);
	if (ctx == NULL)
		return fail("context", TOK_E_NOMEM);
	int status = 0;
	if (i == argc)
		status = one(ctx, enc, &o, stdin, "stdin");
	for (; i < argc; i++) {
		FILE *f = fopen(argv[i], "rb");
		if (f == NULL) {
			fprintf(stderr, "tokenize-cli: %s: %s\n", argv[i], strerror(errno));
			status = 1;
			continue;
		}
		status |= one(ctx, enc, &o, f, argv[i]);
		fclose(f);
	}
	tok_ctx_free(ctx);
	tok_close(enc);
	return status;
}
