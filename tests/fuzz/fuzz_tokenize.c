/* fuzz_tokenize.c - libFuzzer harness for providers/tokenize. It needs no vocabulary file:
 * it builds a small one (every byte, merges over a few letters, digits and spaces, two
 * special tokens, o200k's pattern with added code points) and writes it to a temp file at
 * start. For any input: count == encode length, every id decodes, decode(encode(x)) is x
 * with invalid UTF-8 repaired, the pieces tile the text, and counting the text as it grows
 * (in steps cut by the first input bytes) ends at the same count. And ascii_piece splits as
 * PCRE2 does: o200k_base's and cl100k_base's own patterns iterated with and without it give
 * the same pieces, closed and open texts, the input as it is and mapped to a small alphabet
 * of the bytes that matter.
 * The module's statics are used to build the hash table, hence the #include. */
/* fuzz-sources: -lpcre2-8 */
#include "providers/tokenize.c"

#include <stdio.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                        \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "fuzz_tokenize: %s failed at line %d\n", #cond, __LINE__); \
			abort();                                                           \
		}                                                                          \
	} while (0)

/* o200k_base's pattern for PCRE2, with U+1C89..U+1C8A (Unicode 16 letters) added to the
 * letter classes, so that texts holding them take the full pattern. */
#define LU "\\p{Lu}\\x{1C89}"
#define LL "\\p{Ll}\\x{1C8A}"
#define LA "\\p{L}\\x{1C89}-\\x{1C8A}"
#define WS "\\p{White_Space}"
#define UPPER(lu) "[" lu "\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]"
#define LOWER(ll) "[" ll "\\p{Lm}\\p{Lo}\\p{M}]"
#define CONTRACTION "(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
#define PATTERN(lu, ll, l)                                                                \
	"[^\\r\\n" l "\\p{N}]?" UPPER(lu) "*" LOWER(ll) "+" CONTRACTION "|"                 \
	"[^\\r\\n" l "\\p{N}]?" UPPER(lu) "+" LOWER(ll) "*" CONTRACTION "|"                 \
	"\\p{N}{1,3}| ?[^" WS l "\\p{N}]+[\\r\\n/]*|" WS "*[\\r\\n]+|"                     \
	WS "+(?!\\P{White_Space})|" WS "+"

static const char *const merges[] = {
	"ab", "ba", "aa", "bb", "aab", "abb", "aaaa", "abab", "bbbb", "aaaaaaaa", "abba", "ca",
	"abc", "cab", " a", " ab", " the", "th", "he", "the", "in", "ing", "12", "123", "  ",
	"    ",
	"\n\n", " \n", "'s", "'ll", "\xc3\xa9", "\xe2\x80", "<|", "|>", "ab ab",
};
static const char *const specials[] = { "<|endoftext|>", "<|fim|>" };

static struct tok_enc *enc;
static struct tok_ctx *ctx;
static struct tok_re known[2]; /* o200k_fast, cl100k_fast */
static const enum tok_split known_split[2] = { SPLIT_O200K, SPLIT_CL100K };

static void put(uint8_t *buf, size_t *len, const void *p, size_t n)
{
	memcpy(buf + *len, p, n);
	*len += n;
	while (*len % 8)
		buf[(*len)++] = 0;
}

/* The file tools/tokconv would write for this vocabulary. */
static size_t build_vocab(uint8_t *buf)
{
	enum { NMERGE = sizeof(merges) / sizeof(merges[0]) };
	/* ids: 0..255 bytes, then merges, a gap, then the specials */
	uint32_t n_ranks = 256 + NMERGE, sid0 = n_ranks + 1, vocab = sid0 + 2;
	const char *tok[256 + NMERGE + 3];
	size_t tlen[256 + NMERGE + 3];
	static char bytes1[256];
	for (unsigned b = 0; b < 256; b++) {
		bytes1[b] = (char)b;
		tok[b] = &bytes1[b];
		tlen[b] = 1;
	}
	for (unsigned i = 0; i < NMERGE; i++) {
		tok[256 + i] = merges[i];
		tlen[256 + i] = strlen(merges[i]);
	}
	tok[n_ranks] = "";
	tlen[n_ranks] = 0;
	for (unsigned i = 0; i < 2; i++) {
		tok[sid0 + i] = specials[i];
		tlen[sid0 + i] = strlen(specials[i]);
	}

	struct tok_file_header h = { .magic = "PSTOK", .version = TOK_FILE_VERSION,
				     .header_bytes = sizeof(h), .name = "fuzz", .n_ranks = n_ranks,
				     .vocab_size = vocab, .n_special = 2, .hash_bits = 10 };
	size_t len = sizeof(h);
	static const char full[] = PATTERN(LU, LL, LA);
	static const char fast[] = PATTERN("\\p{Lu}", "\\p{Ll}", "\\p{L}");
	h.pattern_off = len;
	h.pattern_len = sizeof(full) - 1;
	put(buf, &len, full, sizeof(full));
	h.fast_off = len;
	h.fast_len = sizeof(fast) - 1;
	put(buf, &len, fast, sizeof(fast));
	h.source_off = len;
	h.source_len = 0;
	put(buf, &len, "", 1);
	h.offsets_off = len;
	uint32_t off = 0;
	for (uint32_t id = 0; id <= vocab; id++) {
		memcpy(buf + len + 4 * id, &off, 4);
		if (id < vocab)
			off += (uint32_t)tlen[id];
	}
	len += 4 * ((size_t)vocab + 1);
	while (len % 8)
		buf[len++] = 0;
	h.bytes_off = len;
	h.bytes_len = off;
	for (uint32_t id = 0; id < vocab; id++) {
		memcpy(buf + len, tok[id], tlen[id]);
		len += tlen[id];
	}
	while (len % 8)
		buf[len++] = 0;
	h.specials_off = len;
	uint32_t sids[2] = { sid0, sid0 + 1 }; /* longest first */
	put(buf, &len, sids, sizeof(sids));
	h.hash_off = len;
	struct tok_slot *slots = (struct tok_slot *)(buf + len);
	size_t nslots = (size_t)1 << h.hash_bits;
	for (size_t i = 0; i < nslots; i++)
		slots[i] = (struct tok_slot){ .id = TOK_NONE };
	for (uint32_t id = 0; id < n_ranks; id++) {
		uint64_t head, hv = tok_hash((const uint8_t *)tok[id], tlen[id], &head);
		size_t i = hv & (nslots - 1);
		while (slots[i].id != TOK_NONE)
			i = (i + 1) & (nslots - 1);
		uint32_t meta = (uint32_t)(hv >> 40) << 8 | (uint32_t)tlen[id];
		slots[i] = (struct tok_slot){ .head = head, .id = id, .meta = meta };
	}
	len += nslots * sizeof(struct tok_slot);
	h.added_off = len;
	h.added_count = 1;
	struct tok_range added = { 0x1C89, 0x1C8A };
	put(buf, &len, &added, sizeof(added));
	h.file_len = len;
	memcpy(buf, &h, sizeof(h));
	return len;
}

static void setup(void)
{
	static uint8_t buf[64 << 10];
	size_t len = build_vocab(buf);
	char path[] = "/tmp/fuzz-tokenize-XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0);
	CHECK(write(fd, buf, len) == (ssize_t)len);
	close(fd);
	int rc = tok_open(path, &enc);
	unlink(path);
	CHECK(rc == 0);
	ctx = tok_ctx_new(enc);
	CHECK(ctx != NULL);
	CHECK(enc->split == SPLIT_PCRE);
	CHECK(compile_pattern(&known[0], (const uint8_t *)o200k_fast, strlen(o200k_fast)) == 0);
	CHECK(compile_pattern(&known[1], (const uint8_t *)cl100k_fast, strlen(cl100k_fast)) == 0);
}

/* The pieces of text[0..len) into out (room for len + 1); returns how many, or -1 for an
 * error. */
static long pieces_of(const char *text, size_t len, enum tok_special sp, bool open_end,
		      struct tok_piece *out)
{
	struct tok_pieces it;
	long n = 0;
	int rc;
	tok_pieces_init(&it, ctx, text, len, 0, sp, open_end);
	while ((rc = tok_pieces_next(&it, &out[n])) == 1)
		n++;
	return rc == 0 ? n : -1;
}

/* With each known pattern, ascii_piece gives the pieces PCRE2 gives. */
static void check_split(const char *text, size_t len, enum tok_special sp, bool open_end)
{
	struct tok_piece *a = malloc((len + 1) * sizeof(*a)), *b = malloc((len + 1) * sizeof(*b));
	CHECK(a && b);
	struct tok_re own = enc->fast;
	for (int k = 0; k < 2; k++) {
		enc->fast = known[k];
		enc->split = SPLIT_PCRE;
		long na = pieces_of(text, len, sp, open_end, a);
		enc->split = known_split[k];
		long nb = pieces_of(text, len, sp, open_end, b);
		CHECK(na == nb);
		for (long i = 0; i < na; i++)
			CHECK(a[i].off == b[i].off && a[i].len == b[i].len &&
			      a[i].special == b[i].special && a[i].final == b[i].final);
	}
	enc->fast = own;
	enc->split = SPLIT_PCRE;
	free(a);
	free(b);
}

/* Count text as it grows in three steps; the total must match a full count each time. */
static void check_growing(const char *text, size_t len, size_t cut1, size_t cut2,
			  enum tok_special sp)
{
	size_t ends[3] = { cut1 < cut2 ? cut1 : cut2, cut1 < cut2 ? cut2 : cut1, len };
	size_t committed_off = 0;
	int64_t committed = 0;
	for (int k = 0; k < 3; k++) {
		size_t final_off;
		int64_t final_n;
		int64_t tail = tok_count_growing(ctx, text, ends[k], committed_off, sp, &final_off,
						 &final_n);
		CHECK(tail >= 0);
		CHECK(final_off >= committed_off && final_off <= ends[k]);
		CHECK(final_n >= 0 && final_n <= tail);
		int64_t want = tok_count(ctx, text, tok_utf8_valid_prefix(text, ends[k]), sp);
		CHECK(committed + tail == want);
		committed += final_n;
		committed_off = final_off;
	}
	CHECK(committed + tok_count(ctx, text + committed_off, len - committed_off, sp) ==
	      tok_count(ctx, text, len, sp));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (enc == NULL)
		setup();
	if (size < 3)
		return 0;
	enum tok_special sp = data[0] & 1 ? TOK_SPECIAL_ALL : TOK_SPECIAL_NONE;
	const char *text = (const char *)data + 3;
	size_t len = size - 3;

	int64_t n = tok_count(ctx, text, len, sp);
	CHECK(n >= 0 && (len == 0) == (n == 0));
	uint32_t *ids = malloc(((size_t)n + 1) * sizeof(*ids));
	char *clean = malloc(3 * len + 1), *back = malloc(3 * len + 1);
	CHECK(ids && clean && back);
	CHECK(tok_encode(ctx, text, len, sp, ids, (size_t)n) == n);
	for (int64_t i = 0; i < n; i++)
		CHECK(ids[i] < tok_vocab_size(enc));
	size_t clen = tok_utf8_sanitize(text, len, clean, 3 * len + 1);
	CHECK(tok_utf8_valid_prefix(clean, clen) == clen);
	CHECK(tok_decode(enc, ids, (size_t)n, back, 3 * len + 1) == (int64_t)clen);
	CHECK(memcmp(back, clean, clen) == 0);

	struct tok_pieces it;
	struct tok_piece p;
	size_t end = 0;
	int rc;
	tok_pieces_init(&it, ctx, clean, clen, 0, sp, false);
	while ((rc = tok_pieces_next(&it, &p)) == 1) {
		CHECK(p.off == end && p.len > 0 && p.final);
		end = p.off + p.len;
	}
	CHECK(rc == 0 && end == clen);

	size_t cut1 = clen ? data[1] % (clen + 1) : 0, cut2 = clen ? data[2] * 7u % (clen + 1) : 0;
	check_growing(clean, clen, cut1, cut2, sp);

	check_split(clean, clen, sp, false);
	check_split(clean, cut1, sp, true);
	/* the bytes the splitter looks at: letters of both cases, digits, blanks, line breaks,
	 * punctuation, the apostrophe, a non-ASCII letter and digit, a special token's start */
	static const char *const alphabet[] = { "a", "b", "Z", "Q", "1", "0", " ", " ", "\t",
						"\n", "\r", ".", ",", "'", "/", "s", "ll", "\xc3\xa9",
						"\xd9\xa2", "<|", "\x0b", "!" };
	char *mapped = malloc(4 * len + 1);
	CHECK(mapped);
	size_t mlen = 0;
	for (size_t i = 0; i < len; i++) {
		const char *m = alphabet[(uint8_t)text[i] % (sizeof(alphabet) / sizeof(alphabet[0]))];
		memcpy(mapped + mlen, m, strlen(m));
		mlen += strlen(m);
	}
	check_split(mapped, mlen, sp, false);
	check_split(mapped, mlen ? cut1 % (mlen + 1) : 0, sp, true);
	free(mapped);
	free(ids);
	free(clean);
	free(back);
	return 0;
}
