/* test_tokenize.c - providers/tokenize: tiktoken's ids for known texts, round trips, bounds,
 * the piece iterator and growing-text counting, UTF-8 repair, damaged vocabulary files.
 *
 * Needs the converted vocabularies (tests/tokenizer/run makes them from the npm tiktoken
 * package, into tests/tokenizer/vocab/, or $PENSTOCK_TOKENIZER_VOCAB_DIR); skips (77)
 * without them. The expected ids come from tiktoken 1.0.22. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "providers/tokenize.h"

static char o200k_path[512], cl100k_path[512];
static struct tok_enc *o200k, *cl100k;
static struct tok_ctx *o200k_ctx, *cl100k_ctx;

#define IDS(...) ((const uint32_t[]){ __VA_ARGS__ }), sizeof((const uint32_t[]){ __VA_ARGS__ }) / 4

struct known {
	const char *why;
	bool o200k; /* else cl100k */
	const char *text;
	enum tok_special sp;
	const uint32_t *ids;
	size_t n;
};

/* "\xef\xbf\xbd" is U+FFFD, what the invalid bytes of the last case become. */
static const struct known known[] = {
	{ "punctuation", true, "Hello, world!", TOK_SPECIAL_NONE, IDS(13225, 11, 2375, 0) },
	{ "contraction, space runs", true, "I'm  testing   tokenizers.\n\n", TOK_SPECIAL_NONE,
	  IDS(15390, 220, 11493, 256, 6602, 24223, 364) },
	{ "o200k case split", true, "HTTPServer camelCase don't WE'LL", TOK_SPECIAL_NONE,
	  IDS(17893, 6444, 83330, 6187, 4128, 26919, 6, 7454) },
	{ "CJK", true, "日本語のテキスト、中文。", TOK_SPECIAL_NONE,
	  IDS(9048, 40909, 3385, 16056, 18368, 38236, 1395, 10667, 788) },
	{ "ZWJ family, flag, emoji with VS16", true, "👨‍👩‍👧 🇺🇸 ❤️", TOK_SPECIAL_NONE,
	  IDS(28823, 101, 2524, 28823, 102, 2524, 28823, 100, 173468, 118, 55506, 116, 122205) },
	{ "RTL", true, "مرحبا بالعالم שלום", TOK_SPECIAL_NONE,
	  IDS(158894, 26537, 101462, 12773, 173283) },
	{ "whitespace runs", true, "   \n\n  x\t\ty  ", TOK_SPECIAL_NONE,
	  IDS(29104, 220, 1215, 197, 32013, 256) },
	{ "digits in threes", true, "1234567 3.14159", TOK_SPECIAL_NONE,
	  IDS(7633, 19354, 22, 220, 18, 13, 16926, 4621) },
	{ "special as text", true, "a<|endoftext|>b", TOK_SPECIAL_NONE,
	  IDS(64, 27, 91, 419, 1440, 919, 91, 29, 65) },
	{ "special allowed", true, "a<|endoftext|>b", TOK_SPECIAL_ALL, IDS(64, 199999, 65) },
	{ "invalid UTF-8 repaired", true, "caf\xe9 na\xc3ve", TOK_SPECIAL_NONE,
	  IDS(176980, 3251, 898, 3251, 737) },
	{ "long piece (heap merge)", true,
	  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", TOK_SPECIAL_NONE,
	  IDS(117525, 117525, 117525, 117525, 117525, 117525, 117525, 117525, 117525, 117525,
	      117525, 117525, 117525, 117525, 117525, 117525, 64) },
	{ "Unicode 16 letters and digits (PCRE2 10.42 knows Unicode 14)", true,
	  "Tje \u1C89\u1C8Aa, Ext-H \U00031350\U00031351x, Garay digits \U00010D40\U00010D41" "1",
	  TOK_SPECIAL_NONE,
	  IDS(51, 1587, 220, 157, 110, 231, 157, 110, 232, 64, 11, 13703, 13091, 220, 172, 109, 235,
	      238, 172, 109, 235, 239, 87, 11, 11811, 356, 37806, 220, 172, 238, 113, 222, 172, 238,
	      113, 223, 16) },
	{ "punctuation", false, "Hello, world!", TOK_SPECIAL_NONE, IDS(9906, 11, 1917, 0) },
	{ "contraction, space runs", false, "I'm  testing   tokenizers.\n\n", TOK_SPECIAL_NONE,
	  IDS(40, 2846, 220, 7649, 256, 4037, 12509, 382) },
	{ "cl100k case", false, "HTTPServer camelCase don't WE'LL", TOK_SPECIAL_NONE,
	  IDS(9412, 5592, 50252, 4301, 1541, 956, 20255, 6, 4178) },
	{ "CJK", false, "日本語のテキスト、中文。", TOK_SPECIAL_NONE,
	  IDS(9080, 22656, 45918, 252, 16144, 57933, 62903, 71634, 5486, 16325, 17161, 1811) },
	{ "RTL", false, "مرحبا بالعالم שלום", TOK_SPECIAL_NONE,
	  IDS(10386, 11318, 30925, 22071, 5821, 28946, 32482, 24102, 32482, 10386, 88898, 50391,
	      37769, 251) },
	{ "whitespace runs", false, "   \n\n  x\t\ty  ", TOK_SPECIAL_NONE,
	  IDS(35033, 220, 865, 197, 14862, 256) },
	{ "special allowed", false, "a<|endoftext|>b", TOK_SPECIAL_ALL, IDS(64, 100257, 65) },
	{ "invalid UTF-8 repaired", false, "caf\xe9 na\xc3ve", TOK_SPECIAL_NONE,
	  IDS(69896, 5809, 4415, 5809, 588) },
};

static struct tok_ctx *ctx_of(bool o) { return o ? o200k_ctx : cl100k_ctx; }

static void test_known_ids(void **state)
{
	for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++) {
		const struct known *c = &known[k];
		uint32_t ids[64];
		int64_t n = tok_encode(ctx_of(c->o200k), c->text, strlen(c->text), c->sp, ids, 64);
		if (n != (int64_t)c->n || memcmp(ids, c->ids, c->n * 4) != 0) {
			print_error("%s (%s): got %lld tokens\n", c->why,
				    c->o200k ? "o200k" : "cl100k", (long long)n);
			fail();
		}
		struct tok_ctx *ctx = ctx_of(c->o200k);
		assert_int_equal(tok_count(ctx, c->text, strlen(c->text), c->sp), c->n);
	}
}

static const char *const texts[] = {
	"", "a", " ", "\n", "Hello, world!", "  leading and trailing  ", "tabs\t\tand\r\nCRLF\r\n",
	"日本語 中文 한국어", "👨‍👩‍👧‍👦🏳️‍🌈", "x'ſ 'S 'll", "1234567890123",
	"<|endoftext|><|fim_prefix|>",
	"\xef\xbb\xbf\x42OM", "e\xcc\x81 combining", "\xc2\x85NEL\xe2\x80\xa8LS",
};

static void round_trip(struct tok_ctx *ctx, const struct tok_enc *enc, const char *t, size_t len,
		       enum tok_special sp)
{
	uint32_t ids[256];
	char back[1024], clean[1024];
	int64_t n = tok_encode(ctx, t, len, sp, ids, 256);
	assert_in_range(n, 0, 256);
	assert_int_equal(tok_count(ctx, t, len, sp), n);
	size_t clen = tok_utf8_sanitize(t, len, clean, sizeof(clean));
	assert_int_equal(tok_decode(enc, ids, (size_t)n, back, sizeof(back)), clen);
	assert_memory_equal(back, clean, clen);
	assert_true(len == 0 || n > 0);
}

static void test_round_trip(void **state)
{
	for (size_t k = 0; k < sizeof(texts) / sizeof(texts[0]); k++)
		for (int s = 0; s < 2; s++) {
			enum tok_special sp = s ? TOK_SPECIAL_ALL : TOK_SPECIAL_NONE;
			round_trip(o200k_ctx, o200k, texts[k], strlen(texts[k]), sp);
			round_trip(cl100k_ctx, cl100k, texts[k], strlen(texts[k]), sp);
		}
	static const char invalid[] = "a\x80\xff\xed\xa0\x80 \xf0\x9f\x98 z\xe2\x82";
	round_trip(o200k_ctx, o200k, invalid, sizeof(invalid) - 1, TOK_SPECIAL_NONE);
}

static void test_encode_is_bounded(void **state)
{
	const char *t = "one two three four five six";
	uint32_t all[16], few[4] = { 7, 7, 7, 7 };
	int64_t n = tok_encode(o200k_ctx, t, strlen(t), TOK_SPECIAL_NONE, all, 16);
	assert_int_equal(n, 6);
	/* a short array gets the first ids and nothing past its end; the total still comes back */
	assert_int_equal(tok_encode(o200k_ctx, t, strlen(t), TOK_SPECIAL_NONE, few, 2), 6);
	assert_int_equal(few[0], all[0]);
	assert_int_equal(few[1], all[1]);
	assert_int_equal(few[2], 7);
	assert_int_equal(tok_encode(o200k_ctx, t, strlen(t), TOK_SPECIAL_NONE, NULL, 0), 6);
	/* the same for a long piece that takes the heap path */
	char run[600];
	memset(run, 'a', sizeof(run));
	int64_t m = tok_count(o200k_ctx, run, sizeof(run), TOK_SPECIAL_NONE);
	assert_true(m > 1);
	assert_int_equal(tok_encode(o200k_ctx, run, sizeof(run), TOK_SPECIAL_NONE, few, 1), m);
	assert_int_equal(few[1], all[1]);
}

static void test_decode(void **state)
{
	uint32_t ids[] = { 13225, 11, 2375, 0, 199999 };
	char out[64];
	assert_int_equal(tok_decode(o200k, ids, 5, out, sizeof(out)), 13 + 13);
	assert_memory_equal(out, "Hello, world!<|endoftext|>", 26);
	/* a short buffer: the length of the whole, only what fits written */
	memset(out, '#', sizeof(out));
	assert_int_equal(tok_decode(o200k, ids, 4, out, 5), 13);
	assert_memory_equal(out, "Hello#", 6);
	/* ids that name nothing: past the end, and the gap between o200k's specials */
	uint32_t bad1[] = { 13225, tok_vocab_size(o200k) };
	uint32_t bad2[] = { 199998 };
	assert_int_equal(tok_decode(o200k, bad1, 2, out, sizeof(out)), TOK_E_ID);
	assert_int_equal(tok_decode(o200k, bad2, 1, out, sizeof(out)), TOK_E_ID);
	size_t len = 0;
	assert_null(tok_token_bytes(o200k, 199998, &len));
	const char *p = tok_token_bytes(cl100k, 9906, &len);
	assert_non_null(p);
	assert_int_equal(len, 5);
	assert_memory_equal(p, "Hello", 5);
	assert_string_equal(tok_name(o200k), "o200k_base");
	assert_string_equal(tok_name(cl100k), "cl100k_base");
	assert_int_equal(tok_vocab_size(o200k), 200019);
	assert_int_equal(tok_vocab_size(cl100k), 100277);
}

static void test_special_tokens(void **state)
{
	const char *t = "<|endoftext|>";
	assert_int_equal(tok_count(cl100k_ctx, t, strlen(t), TOK_SPECIAL_NONE), 7);
	assert_int_equal(tok_count(cl100k_ctx, t, strlen(t), TOK_SPECIAL_ALL), 1);
	/* an unfinished special is text in both modes */
	const char *half = "<|endoftext|";
	assert_int_equal(tok_count(cl100k_ctx, half, strlen(half), TOK_SPECIAL_ALL),
			 tok_count(cl100k_ctx, half, strlen(half), TOK_SPECIAL_NONE));
	/* cl100k has the fill-in-the-middle specials, o200k does not */
	const char *fim = "<|fim_prefix|>";
	assert_int_equal(tok_count(cl100k_ctx, fim, strlen(fim), TOK_SPECIAL_ALL), 1);
	assert_true(tok_count(o200k_ctx, fim, strlen(fim), TOK_SPECIAL_ALL) > 1);
}

static void test_pieces(void **state)
{
	const char *t = "Hello world  \n<|endoftext|>don't";
	struct tok_pieces it;
	struct tok_piece p;
	char got[256] = "";
	size_t end = 0;
	tok_pieces_init(&it, o200k_ctx, t, strlen(t), 0, TOK_SPECIAL_ALL, false);
	while (tok_pieces_next(&it, &p) == 1) {
		assert_int_equal(p.off, end); /* the pieces tile the text */
		assert_true(p.final);
		end = p.off + p.len;
		size_t n = strlen(got);
		snprintf(got + n, sizeof(got) - n, "[%.*s%s]", (int)p.len, t + p.off,
			 p.special >= 0 ? "*" : "");
	}
	assert_int_equal(end, strlen(t));
	assert_string_equal(got, "[Hello][ world][  \n][<|endoftext|>*][don't]");
	assert_int_equal(tok_pieces_next(&it, &p), 0);

	static const char bad[] = "ok \xff no";
	tok_pieces_init(&it, o200k_ctx, bad, sizeof(bad) - 1, 0, TOK_SPECIAL_NONE, false);
	assert_int_equal(tok_pieces_next(&it, &p), TOK_E_UTF8);
	/* one piece counts as tok_count does */
	assert_int_equal(tok_count_piece(o200k_ctx, " tokenizers", 11), 2);
	uint32_t ids[4];
	assert_int_equal(tok_encode_piece(o200k_ctx, " tokenizers", 11, ids, 4), 2);
	assert_int_equal(ids[0], 6602);
	assert_int_equal(ids[1], 24223);
}

/* Code points newer than PCRE2's Unicode tables split as tiktoken's Unicode 16 says:
 * U+1C8A is a lowercase letter, U+10D40.. are Garay digits (they go in threes). */
static void test_newer_unicode(void **state)
{
	static const struct {
		const char *text;
		const char *want;
	} cases[] = {
		{ "a\u1C8Ab", "[a\u1C8Ab]" },
		{ "\U00010D40\U00010D41\U00010D42\U00010D43",
		  "[\U00010D40\U00010D41\U00010D42][\U00010D43]" },
		{ "x \U00031350\U00031351!", "[x][ \U00031350\U00031351][!]" },
	};
	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		const char *t = cases[k].text;
		struct tok_pieces it;
		struct tok_piece p;
		char got[128] = "";
		tok_pieces_init(&it, o200k_ctx, t, strlen(t), 0, TOK_SPECIAL_NONE, false);
		while (tok_pieces_next(&it, &p) == 1) {
			size_t n = strlen(got);
			snprintf(got + n, sizeof(got) - n, "[%.*s]", (int)p.len, t + p.off);
		}
		assert_string_equal(got, cases[k].want);
	}
}

/* Which pieces of a growing text are final: "a" + suffix when more text could change it. */
static void test_final_pieces(void **state)
{
	static const struct {
		bool o200k;
		enum tok_special sp;
		const char *text;
		const char *want; /* pieces, '!' after a final one */
	} cases[] = {
		{ true, TOK_SPECIAL_NONE, "hello world", "[hello!][ world]" },
		{ true, TOK_SPECIAL_NONE, "a  ", "[a!][  ]" },
		{ true, TOK_SPECIAL_NONE, "a  b", "[a!][ !][ b]" },
		{ true, TOK_SPECIAL_NONE, "don'", "[don][']" },   /* "don't" is one o200k piece */
		{ false, TOK_SPECIAL_NONE, "don'", "[don!][']" }, /* cl100k: contractions apart */
		{ true, TOK_SPECIAL_NONE, "123", "[123!]" },      /* digits go in threes */
		{ true, TOK_SPECIAL_NONE, "12", "[12]" },
		{ true, TOK_SPECIAL_NONE, "1234", "[123!][4]" },
		{ true, TOK_SPECIAL_NONE, "x\n\n", "[x!][\n\n]" },
		/* a later \n would join the whole run */
		{ true, TOK_SPECIAL_NONE, "x\n\n  \n   ", "[x!][\n\n  \n][   ]" },
		/* with specials allowed, one may be arriving in the last 14 bytes: hold back */
		{ true, TOK_SPECIAL_ALL, "x <|endof", "[x][ <|][endof]" },
		{ true, TOK_SPECIAL_ALL, "hello world, and more text",
		  "[hello!][ world!][,][ and][ more][ text]" },
		{ true, TOK_SPECIAL_ALL, "a<|endoftext|>b and then some more",
		  "[a!][<|endoftext|>!][b!][ and!][ then][ some][ more]" },
	};
	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		const char *t = cases[k].text;
		struct tok_pieces it;
		struct tok_piece p;
		char got[128] = "";
		tok_pieces_init(&it, ctx_of(cases[k].o200k), t, strlen(t), 0, cases[k].sp, true);
		while (tok_pieces_next(&it, &p) == 1) {
			size_t n = strlen(got);
			snprintf(got + n, sizeof(got) - n, "[%.*s%s]", (int)p.len, t + p.off,
				 p.final ? "!" : "");
		}
		if (strcmp(got, cases[k].want) != 0) {
			print_error("%s: got %s want %s\n", t, got, cases[k].want);
			fail();
		}
	}
}

/* Feed a text byte by byte: after every byte the incremental total equals a full count of
 * the text so far, and what was committed never needs taking back. */
static void grow_every_byte(struct tok_ctx *ctx, const char *text, size_t len, enum tok_special sp)
{
	size_t committed_off = 0;
	int64_t committed = 0;
	for (size_t have = 1; have <= len; have++) {
		size_t final_off;
		int64_t final_n;
		int64_t tail = tok_count_growing(ctx, text, have, committed_off, sp, &final_off,
						 &final_n);
		assert_true(tail >= 0);
		assert_true(final_off >= committed_off && final_off <= have);
		size_t whole = tok_utf8_valid_prefix(text, have);
		int64_t want = tok_count(ctx, text, whole, sp);
		if (committed + tail != want) {
			print_error("after %zu bytes: incremental %lld, full %lld\n", have,
				    (long long)(committed + tail), (long long)want);
			fail();
		}
		committed += final_n;
		committed_off = final_off;
	}
	assert_int_equal(committed + tok_count(ctx, text + committed_off, len - committed_off, sp),
			 tok_count(ctx, text, len, sp));
}

static void test_growing(void **state)
{
	static const char text[] =
		"Streaming: the model's answer arrives in deltas.  Whitespace   runs\n\n\n  and\r\n"
		"CRLFs, numbers 1234567, contractions (don't, WE'LL, it's), CJK 人工智能。 "
		"emoji 👨‍👩‍👧 and RTL مرحبا. A special <|endoftext|> mid-stream, "
		"and a half <|endof at the end    ";
	grow_every_byte(o200k_ctx, text, sizeof(text) - 1, TOK_SPECIAL_NONE);
	grow_every_byte(o200k_ctx, text, sizeof(text) - 1, TOK_SPECIAL_ALL);
	grow_every_byte(cl100k_ctx, text, sizeof(text) - 1, TOK_SPECIAL_NONE);
	grow_every_byte(cl100k_ctx, text, sizeof(text) - 1, TOK_SPECIAL_ALL);
}

static void test_utf8_sanitize(void **state)
{
	static const struct {
		const char *in, *out;
	} cases[] = {
		{ "plain", "plain" },
#define R "\xef\xbf\xbd" /* U+FFFD */
		{ "\x80", R },                    /* lone continuation */
		{ "\xe0\x80\xaf", R R R },          /* overlong: 3 subparts */
		{ "\xed\xa0\x80", R R R },          /* surrogate */
		{ "\xf0\x9f\x98!", R "!" },          /* truncated: one subpart */
		{ "\xf0\x9f\x98", R },              /* truncated at the end */
		{ "\xf4\x90\x80\x80", R R R R },     /* past U+10FFFF */
		{ "\xc3\xa9\xff", "\xc3\xa9" R },
#undef R
	};
	char out[64];
	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		size_t n = tok_utf8_sanitize(cases[k].in, strlen(cases[k].in), out, sizeof(out));
		assert_int_equal(n, strlen(cases[k].out));
		assert_memory_equal(out, cases[k].out, n);
	}
	assert_int_equal(tok_utf8_sanitize("\xff\xff", 2, out, 5), 0); /* needs 6 */
	assert_int_equal(tok_utf8_valid_prefix("ab\xc3\xa9\xc3", 5), 4);
}

static void test_limits(void **state)
{
	static const char byte = 'x';
	/* the length is refused before anything is read */
	assert_int_equal(tok_count(o200k_ctx, &byte, TOK_MAX_TEXT + 1, TOK_SPECIAL_NONE),
			 TOK_E_TOO_LONG);
	assert_int_equal(tok_encode(o200k_ctx, &byte, TOK_MAX_TEXT + 1, TOK_SPECIAL_NONE, NULL, 0),
			 TOK_E_TOO_LONG);
	struct tok_pieces it;
	struct tok_piece p;
	tok_pieces_init(&it, o200k_ctx, "abc", 3, 4, TOK_SPECIAL_NONE, false);
	assert_int_equal(tok_pieces_next(&it, &p), TOK_E_RANGE);
	size_t off;
	int64_t n;
	static const char bad[] = "a\xff" "b";
	assert_int_equal(tok_count_growing(o200k_ctx, bad, 3, 0, TOK_SPECIAL_NONE, &off, &n),
			 TOK_E_UTF8);
	assert_string_equal(tok_strerror(TOK_E_UTF8), "invalid UTF-8");
}

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	assert_non_null(f);
	fseek(f, 0, SEEK_END);
	*len = (size_t)ftell(f);
	fseek(f, 0, SEEK_SET);
	char *buf = malloc(*len);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, *len, f), *len);
	fclose(f);
	return buf;
}

static int open_damaged(const char *data, size_t len)
{
	char path[] = "/tmp/penstock-tok-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	close(fd);
	struct tok_enc *e = NULL;
	int rc = tok_open(path, &e);
	unlink(path);
	tok_close(e);
	return rc;
}

static void test_damaged_files(void **state)
{
	struct tok_enc *e = NULL;
	assert_int_equal(tok_open("/nonexistent/penstock.tok", &e), TOK_E_IO);
	assert_null(e);
	size_t len;
	char *file = slurp(cl100k_path, &len);
	assert_int_equal(open_damaged(file, len), 0); /* the copy itself is fine */
	assert_int_equal(open_damaged(file, 0), TOK_E_FORMAT);
	assert_int_equal(open_damaged(file, 100), TOK_E_FORMAT);
	assert_int_equal(open_damaged(file, len - 8), TOK_E_FORMAT); /* truncated */

	char *bad = malloc(len);
	assert_non_null(bad);
	memcpy(bad, file, len);
	bad[0] = 'X'; /* magic */
	assert_int_equal(open_damaged(bad, len), TOK_E_FORMAT);

	/* a hash slot naming an id past the vocabulary */
	uint64_t hash_off, offsets_off;
	memcpy(bad, file, len);
	memcpy(&hash_off, bad + 144, 8);
	memcpy(&offsets_off, bad + 112, 8);
	for (size_t s = hash_off; s + 16 <= len; s += 16) { /* {u64 head, u32 id, u32 meta} */
		uint32_t id;
		memcpy(&id, bad + s + 8, 4);
		if (id != UINT32_MAX) {
			id = 0x7fffffff;
			memcpy(bad + s + 8, &id, 4);
			break;
		}
	}
	assert_int_equal(open_damaged(bad, len), TOK_E_FORMAT);

	/* a slot whose head bytes disagree with its token */
	memcpy(bad, file, len);
	for (size_t s = hash_off; s + 16 <= len; s += 16) {
		uint32_t id;
		memcpy(&id, bad + s + 8, 4);
		if (id != UINT32_MAX) {
			bad[s] ^= 1;
			break;
		}
	}
	assert_int_equal(open_damaged(bad, len), TOK_E_FORMAT);

	/* token offsets that go backwards */
	memcpy(bad, file, len);
	uint32_t big = 0xfffffff;
	memcpy(bad + offsets_off + 4 * 10, &big, 4);
	assert_int_equal(open_damaged(bad, len), TOK_E_FORMAT);

	/* a pattern PCRE2 rejects */
	memcpy(bad, file, len);
	uint64_t pattern_off;
	memcpy(&pattern_off, bad + 64, 8);
	bad[pattern_off] = '(';
	bad[pattern_off + 1] = '?';
	bad[pattern_off + 2] = '<';
	assert_int_equal(open_damaged(bad, len), TOK_E_PATTERN);
	free(bad);
	free(file);
}

static bool find_vocab(void)
{
	const char *dir = getenv("PENSTOCK_TOKENIZER_VOCAB_DIR");
	if (dir == NULL)
		dir = "tests/tokenizer/vocab";
	snprintf(o200k_path, sizeof(o200k_path), "%s/o200k_base.tok", dir);
	snprintf(cl100k_path, sizeof(cl100k_path), "%s/cl100k_base.tok", dir);
	return access(o200k_path, R_OK) == 0 && access(cl100k_path, R_OK) == 0;
}

static int setup(void **state)
{
	if (tok_open(o200k_path, &o200k) != 0 || tok_open(cl100k_path, &cl100k) != 0)
		return -1;
	o200k_ctx = tok_ctx_new(o200k);
	cl100k_ctx = tok_ctx_new(cl100k);
	return o200k_ctx && cl100k_ctx ? 0 : -1;
}

static int teardown(void **state)
{
	tok_ctx_free(o200k_ctx);
	tok_ctx_free(cl100k_ctx);
	tok_close(o200k);
	tok_close(cl100k);
	return 0;
}

int main(void)
{
	if (!find_vocab()) {
		fprintf(stderr, "test_tokenize: no %s (tests/tokenizer/run makes it): skipped\n",
			o200k_path);
		return 77;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_known_ids),
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_encode_is_bounded),
		cmocka_unit_test(test_decode),
		cmocka_unit_test(test_special_tokens),
		cmocka_unit_test(test_pieces),
		cmocka_unit_test(test_newer_unicode),
		cmocka_unit_test(test_final_pieces),
		cmocka_unit_test(test_growing),
		cmocka_unit_test(test_utf8_sanitize),
		cmocka_unit_test(test_limits),
		cmocka_unit_test(test_damaged_files),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
