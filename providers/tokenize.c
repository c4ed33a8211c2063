/* tokenize.c - tiktoken-exact BPE: mapped vocabulary, PCRE2 pre-split, rank merges. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenize.h"

#include <assert.h>
#include <fcntl.h>
#include <limits.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the vocabulary file and its hash are little-endian"
#endif

/* The file tools/tokconv writes; keep the two in step. Offsets are from the file start. */
struct tok_file_header {
	char magic[8];           /* "PSTOK\0\0\0" */
	uint32_t version;        /* TOK_FILE_VERSION */
	uint32_t header_bytes;   /* sizeof(struct tok_file_header) */
	char name[32];           /* NUL-terminated */
	uint32_t n_ranks;        /* ordinary tokens (in the hash) */
	uint32_t vocab_size;     /* largest id + 1 */
	uint32_t n_special;
	uint32_t hash_bits;
	uint64_t pattern_off;    /* PCRE2 pattern, NUL-terminated */
	uint64_t pattern_len;
	uint64_t fast_off;       /* the same without the added code points, NUL-terminated */
	uint64_t fast_len;
	uint64_t source_off;     /* tiktoken's pattern as shipped, NUL-terminated */
	uint64_t source_len;
	uint64_t offsets_off;    /* u32[vocab_size + 1] */
	uint64_t bytes_off;
	uint64_t bytes_len;
	uint64_t specials_off;   /* u32[n_special], longest text first */
	uint64_t hash_off;       /* struct tok_slot[1 << hash_bits] */
	uint64_t added_off;      /* struct tok_range[added_count]: what only `pattern` knows */
	uint64_t added_count;
	uint64_t file_len;
	uint8_t reserved[16];
};
_Static_assert(sizeof(struct tok_file_header) == 192, "tools/tokconv writes 192 bytes");

#define TOK_FILE_VERSION 1
#define TOK_NONE UINT32_MAX
#define TOK_SPECIAL_MAX_BYTES 64
/* Pieces up to this many bytes merge with tiktoken's own quadratic scan on the stack;
 * longer ones (whitespace runs, base64-like letter runs) use a heap: O(n log n). */
#define TOK_SHORT_PIECE 128

/* Most tokens are at most 8 bytes: their slot alone tells a hit from a miss. */
struct tok_slot {
	uint64_t head; /* the token's first 8 bytes, zero-padded, little-endian */
	uint32_t id;   /* TOK_NONE: empty */
	uint32_t meta; /* hash bits 40..63 << 8 | the token's length */
};
_Static_assert(sizeof(struct tok_slot) == 16, "tools/tokconv writes 16-byte slots");

struct tok_range {
	uint32_t first, last;
};

/* The patterns whose pieces of ASCII text ascii_piece finds without PCRE2 (tokconv's `fast`
 * pattern of each vocabulary, byte for byte; any other pattern is left to PCRE2). */
enum tok_split {
	SPLIT_PCRE,
	SPLIT_O200K,
	SPLIT_CL100K,
};

static const char o200k_fast[] =
	"[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*"
	"[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
	"|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+"
	"[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
	"|[\\p{N}]{1,3}"
	"| ?[^\\p{White_Space}\\p{L}\\p{N}]+[\\r\\n/]*"
	"|\\p{White_Space}*[\\r\\n]+"
	"|\\p{White_Space}+(?!\\P{White_Space})"
	"|\\p{White_Space}+";

static const char cl100k_fast[] =
	"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
	"|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}]+"
	"|[\\p{N}]{1,3}"
	"| ?[^\\p{White_Space}\\p{L}\\p{N}]+[\\r\\n]*"
	"|\\p{White_Space}*[\\r\\n]+"
	"|\\p{White_Space}+(?!\\P{White_Space})"
	"|\\p{White_Space}+";

/* A compiled pre-split pattern. */
struct tok_re {
	pcre2_code *code;
	bool jit;
};

struct tok_enc {
	const uint8_t *map;
	size_t map_len;
	const struct tok_file_header *hdr;
	const uint32_t *offsets;
	const uint8_t *bytes;
	const uint32_t *specials;
	const struct tok_slot *slots;
	const struct tok_range *added;
	size_t added_count;
	uint64_t hash_mask;
	uint32_t byte_id[256];     /* the token of each single byte */
	uint8_t special_first[32]; /* bitmap: bytes a special token can start with */
	size_t special_max_len;
	/* tiktoken's regex knows newer Unicode than Debian's PCRE2: `full` adds the missing
	 * code points to its classes, which halves PCRE2's speed; texts without any of them
	 * (nearly all) split the same with `fast`. */
	struct tok_re full, fast;
	enum tok_split split; /* `fast` is a pattern ascii_piece knows */
};

/* Counting only (no ids wanted): a piece of up to 16 bytes remembers how many tokens it
 * makes, in a direct-mapped cache per context. Words repeat (a few thousand make most of
 * any text), and a hit costs an L1/L2 read where a miss costs a probe of the vocabulary's
 * hash table (megabytes: a cache miss) and, for a word that is not one token, the merges. */
#define COUNT_CACHE_SLOTS 4096 /* 96 KiB per context, allocated on first use */
struct count_slot {
	uint64_t a, b;  /* the piece's bytes, zero-padded */
	uint32_t len;   /* 0: empty */
	uint32_t count;
};

struct tok_ctx {
	const struct tok_enc *enc;
	struct count_slot *counts;
	pcre2_match_data *md;
	char *fix;          /* the text with invalid UTF-8 replaced */
	size_t fix_cap;
	uint32_t *scratch;  /* long-piece merge state */
	size_t scratch_cap; /* in uint32_t */
};

/* Where token ids go: stored while there is room, always counted. */
struct tok_sink {
	uint32_t *ids;
	size_t cap;
	int64_t n;
};

static inline void sink_put(struct tok_sink *s, uint32_t id)
{
	if ((uint64_t)s->n < s->cap)
		s->ids[s->n] = id;
	s->n++;
}

static inline bool sink_wants_ids(const struct tok_sink *s) { return (uint64_t)s->n < s->cap; }

const char *tok_strerror(int err)
{
	switch (err) {
	case 0: return "ok";
	case TOK_E_IO: return "cannot read the vocabulary file";
	case TOK_E_FORMAT: return "not a valid vocabulary file";
	case TOK_E_NOMEM: return "out of memory";
	case TOK_E_PATTERN: return "pre-split pattern failed";
	case TOK_E_UTF8: return "invalid UTF-8";
	case TOK_E_TOO_LONG: return "text too long";
	case TOK_E_ID: return "unknown token id";
	case TOK_E_RANGE: return "offset past the end of the text";
	default: return "unknown error";
	}
}

/* ---- vocabulary ---------------------------------------------------------------------- */

/* The token hash: 8-byte little-endian words (the last zero-padded), each xored in and mixed. */
static inline uint64_t hash_mix(uint64_t h, uint64_t w)
{
	h = (h ^ w) * 0xFF51AFD7ED558CCDu;
	return h ^ (h >> 32);
}

static inline uint64_t hash_end(uint64_t h)
{
	h ^= h >> 29;
	h *= 0xC4CEB9FE1A85EC53u;
	return h ^ (h >> 32);
}

/* The first min(n, 8) bytes of p, zero-padded. */
static inline uint64_t load_head(const uint8_t *p, size_t n)
{
	uint64_t w = 0;
	if (n >= 8) {
		memcpy(&w, p, 8);
		return w;
	}
	for (size_t i = 0; i < n; i++)
		w |= (uint64_t)p[i] << (8 * i);
	return w;
}

static inline size_t token_len(const struct tok_enc *e, uint32_t id)
{
	return e->offsets[id + 1] - e->offsets[id];
}

/* The hash of p[0..n) (the same as tok_hash() in tools/tokconv); *head gets its first bytes. */
static uint64_t tok_hash(const uint8_t *p, size_t n, uint64_t *head)
{
	uint64_t h = (uint64_t)n * 0x9E3779B97F4A7C15u;
	*head = load_head(p, n);
	if (n <= 8)
		return hash_end(hash_mix(h, *head));
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		uint64_t w;
		memcpy(&w, p + i, 8);
		h = hash_mix(h, w);
	}
	if (i < n)
		h = hash_mix(h, load_head(p + i, n - i));
	return hash_end(h);
}

/* The ordinary token whose bytes are p[0..n), or TOK_NONE. */
static uint32_t vocab_id(const struct tok_enc *e, const uint8_t *p, size_t n)
{
	if (n > 255 || n == 0)
		return TOK_NONE; /* no token is that long (checked at load) */
	uint64_t head;
	uint64_t h = tok_hash(p, n, &head);
	uint32_t meta = (uint32_t)(h >> 40) << 8 | (uint32_t)n;
	for (uint64_t i = h & e->hash_mask;; i = (i + 1) & e->hash_mask) {
		const struct tok_slot *s = &e->slots[i];
		if (s->id == TOK_NONE)
			return TOK_NONE;
		if (s->meta == meta && s->head == head &&
		    (n <= 8 || memcmp(e->bytes + e->offsets[s->id] + 8, p + 8, n - 8) == 0))
			return s->id;
	}
}

static bool section_ok(const struct tok_file_header *h, uint64_t off, uint64_t len)
{
	return off % 8 == 0 && off >= sizeof(*h) && off <= h->file_len && len <= h->file_len - off;
}

static bool cstring_ok(const struct tok_enc *e, uint64_t off, uint64_t len)
{
	const struct tok_file_header *h = e->hdr;
	return section_ok(h, off, len + 1) && e->map[off + len] == '\0' &&
	       memchr(e->map + off, '\0', len) == NULL;
}

/* Bounds and structure, so that no lookup can read outside the map. O(vocabulary). */
static int check_layout(struct tok_enc *e)
{
	const struct tok_file_header *h = e->hdr;
	if (memcmp(h->magic, "PSTOK\0\0\0", 8) != 0 || h->version != TOK_FILE_VERSION ||
	    h->header_bytes != sizeof(*h) || h->file_len != e->map_len ||
	    memchr(h->name, '\0', sizeof(h->name)) == NULL)
		return TOK_E_FORMAT;
	if (h->vocab_size == 0 || h->vocab_size > (1u << 30) || h->n_ranks > h->vocab_size ||
	    h->hash_bits < 1 || h->hash_bits > 30 || h->n_ranks >= (1u << h->hash_bits) ||
	    h->n_special > 1024)
		return TOK_E_FORMAT;
	uint64_t nslots = (uint64_t)1 << h->hash_bits;
	if (!cstring_ok(e, h->pattern_off, h->pattern_len) ||
	    !cstring_ok(e, h->fast_off, h->fast_len) ||
	    !cstring_ok(e, h->source_off, h->source_len) ||
	    h->added_count > 65536 ||
	    !section_ok(h, h->added_off, h->added_count * sizeof(struct tok_range)) ||
	    !section_ok(h, h->offsets_off, ((uint64_t)h->vocab_size + 1) * 4) ||
	    !section_ok(h, h->bytes_off, h->bytes_len) ||
	    !section_ok(h, h->specials_off, (uint64_t)h->n_special * 4) ||
	    !section_ok(h, h->hash_off, nslots * sizeof(struct tok_slot)))
		return TOK_E_FORMAT;
	e->offsets = (const uint32_t *)(e->map + h->offsets_off);
	e->bytes = e->map + h->bytes_off;
	e->specials = (const uint32_t *)(e->map + h->specials_off);
	e->slots = (const struct tok_slot *)(e->map + h->hash_off);
	e->added = (const struct tok_range *)(e->map + h->added_off);
	e->added_count = h->added_count;
	e->hash_mask = nslots - 1;
	for (size_t i = 0; i < e->added_count; i++) /* sorted and apart: a binary search */
		if (e->added[i].first > e->added[i].last ||
		    (i > 0 && e->added[i].first <= e->added[i - 1].last))
			return TOK_E_FORMAT;

	if (e->offsets[0] != 0 || e->offsets[h->vocab_size] != h->bytes_len)
		return TOK_E_FORMAT;
	for (uint32_t id = 0; id < h->vocab_size; id++)
		if (e->offsets[id + 1] < e->offsets[id])
			return TOK_E_FORMAT;
	uint64_t used = 0;
	for (uint64_t i = 0; i < nslots; i++) {
		const struct tok_slot *s = &e->slots[i];
		if (s->id == TOK_NONE)
			continue;
		size_t len = s->id < h->vocab_size ? token_len(e, s->id) : 0;
		if (len == 0 || len > 255 || (s->meta & 0xFF) != len ||
		    s->head != load_head(e->bytes + e->offsets[s->id], len))
			return TOK_E_FORMAT;
		used++;
	}
	if (used != h->n_ranks)
		return TOK_E_FORMAT;
	return 0;
}

static int index_specials(struct tok_enc *e)
{
	const struct tok_file_header *h = e->hdr;
	size_t prev_len = SIZE_MAX;
	for (uint32_t i = 0; i < h->n_special; i++) {
		uint32_t id = e->specials[i];
		if (id >= h->vocab_size)
			return TOK_E_FORMAT;
		size_t len = token_len(e, id);
		if (len == 0 || len > TOK_SPECIAL_MAX_BYTES || len > prev_len)
			return TOK_E_FORMAT; /* the search relies on longest first */
		prev_len = len;
		uint8_t first = e->bytes[e->offsets[id]];
		e->special_first[first / 8] |= (uint8_t)(1u << (first % 8));
		if (len > e->special_max_len)
			e->special_max_len = len;
	}
	for (unsigned b = 0; b < 256; b++) {
		uint8_t byte = (uint8_t)b;
		e->byte_id[b] = vocab_id(e, &byte, 1);
		if (e->byte_id[b] == TOK_NONE)
			return TOK_E_FORMAT; /* the merge starts from single bytes */
	}
	return 0;
}

static int compile_pattern(struct tok_re *re, const uint8_t *pattern, size_t len)
{
	int err;
	PCRE2_SIZE where;
	uint32_t opts = PCRE2_UTF | PCRE2_UCP;
	re->code = pcre2_compile((PCRE2_SPTR)pattern, len, opts, &err, &where, NULL);
	if (re->code == NULL)
		return TOK_E_PATTERN;
	/* Partial matching tells the piece iterator whether a piece could still grow. A JIT
	 * failure (no executable memory) leaves the interpreter, which gives the same answers. */
	re->jit = pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE | PCRE2_JIT_PARTIAL_HARD) == 0;
	return 0;
}

int tok_open(const char *path, struct tok_enc **out)
{
	*out = NULL;
	struct tok_enc *e = calloc(1, sizeof(*e));
	if (e == NULL)
		return TOK_E_NOMEM;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	int rc = fd < 0 || fstat(fd, &st) != 0 ? TOK_E_IO : 0;
	if (rc == 0 && (st.st_size < (off_t)sizeof(struct tok_file_header) ||
			st.st_size > SSIZE_MAX))
		rc = TOK_E_FORMAT;
	if (rc != 0) {
		if (fd >= 0)
			close(fd);
		free(e);
		return rc;
	}
	e->map_len = (size_t)st.st_size;
	void *map = mmap(NULL, e->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (map == MAP_FAILED) {
		free(e);
		return TOK_E_IO;
	}
	e->map = map;
	e->hdr = map;
	rc = check_layout(e);
	if (rc == 0)
		rc = index_specials(e);
	if (rc == 0)
		rc = compile_pattern(&e->full, e->map + e->hdr->pattern_off, e->hdr->pattern_len);
	if (rc == 0)
		rc = compile_pattern(&e->fast, e->map + e->hdr->fast_off, e->hdr->fast_len);
	if (rc != 0) {
		tok_close(e);
		return rc;
	}
	const char *fast = (const char *)e->map + e->hdr->fast_off;
	e->split = strcmp(fast, o200k_fast) == 0    ? SPLIT_O200K
		   : strcmp(fast, cl100k_fast) == 0 ? SPLIT_CL100K
						     : SPLIT_PCRE;
	*out = e;
	return 0;
}

void tok_close(struct tok_enc *enc)
{
	if (enc == NULL)
		return;
	pcre2_code_free(enc->full.code);
	pcre2_code_free(enc->fast.code);
	if (enc->map != NULL)
		munmap((void *)enc->map, enc->map_len);
	free(enc);
}

const char *tok_name(const struct tok_enc *enc) { return enc->hdr->name; }

uint32_t tok_vocab_size(const struct tok_enc *enc) { return enc->hdr->vocab_size; }

const char *tok_token_bytes(const struct tok_enc *enc, uint32_t id, size_t *len)
{
	if (id >= enc->hdr->vocab_size || token_len(enc, id) == 0)
		return NULL;
	*len = token_len(enc, id);
	return (const char *)enc->bytes + enc->offsets[id];
}

int64_t tok_decode(const struct tok_enc *enc, const uint32_t *ids, size_t n, char *out, size_t cap)
{
	uint64_t total = 0;
	for (size_t i = 0; i < n; i++) {
		size_t len;
		const char *p = tok_token_bytes(enc, ids[i], &len);
		if (p == NULL)
			return TOK_E_ID;
		if (total < cap)
			memcpy(out + total, p, len < cap - total ? len : cap - total);
		total += len;
	}
	return (int64_t)total;
}

/* ---- contexts ------------------------------------------------------------------------ */

struct tok_ctx *tok_ctx_new(const struct tok_enc *enc)
{
	struct tok_ctx *ctx = calloc(1, sizeof(*ctx));
	if (ctx == NULL)
		return NULL;
	ctx->enc = enc;
	ctx->md = pcre2_match_data_create(1, NULL);
	if (ctx->md == NULL) {
		free(ctx);
		return NULL;
	}
	return ctx;
}

void tok_ctx_free(struct tok_ctx *ctx)
{
	if (ctx == NULL)
		return;
	pcre2_match_data_free(ctx->md);
	free(ctx->fix);
	free(ctx->scratch);
	free(ctx->counts);
	free(ctx);
}

/* Scratch memory a context keeps between calls; one huge input must not pin its peak. */
#define TOK_KEEP_BYTES ((size_t)1 << 20)

static void ctx_trim(struct tok_ctx *ctx)
{
	if (ctx->fix_cap > TOK_KEEP_BYTES) {
		free(ctx->fix);
		ctx->fix = NULL;
		ctx->fix_cap = 0;
	}
	if (ctx->scratch_cap * sizeof(uint32_t) > TOK_KEEP_BYTES) {
		free(ctx->scratch);
		ctx->scratch = NULL;
		ctx->scratch_cap = 0;
	}
}

static bool grow(void **buf, size_t *cap, size_t need, size_t unit)
{
	if (need <= *cap)
		return true;
	size_t n = *cap ? *cap : 256;
	while (n < need)
		n *= 2;
	void *p = realloc(*buf, n * unit);
	if (p == NULL)
		return false;
	*buf = p;
	*cap = n;
	return true;
}

/* ---- UTF-8 --------------------------------------------------------------------------- */

/* The sequence at p[0..n) (n >= 1): returns its length if it is one valid character, else
 * 0 with *bad = the length of its maximal invalid subpart (>= 1) and *cut = whether that
 * subpart is a valid start that the end of the input cut short. */
static size_t utf8_char(const uint8_t *p, size_t n, size_t *bad, bool *cut)
{
	uint8_t c = p[0];
	size_t need;
	uint8_t lo = 0x80, hi = 0xBF; /* the range of the second byte */
	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF) {
		need = 2;
	} else if (c >= 0xE0 && c <= 0xEF) {
		need = 3;
		if (c == 0xE0)
			lo = 0xA0;
		if (c == 0xED)
			hi = 0x9F; /* no UTF-16 surrogates */
	} else if (c >= 0xF0 && c <= 0xF4) {
		need = 4;
		if (c == 0xF0)
			lo = 0x90;
		if (c == 0xF4)
			hi = 0x8F; /* nothing past U+10FFFF */
	} else {
		*bad = 1;
		*cut = false;
		return 0;
	}
	size_t i = 1;
	for (; i < need && i < n; i++) {
		uint8_t b = p[i];
		if (b < lo || b > hi)
			break;
		lo = 0x80;
		hi = 0xBF;
	}
	if (i == need)
		return need;
	*bad = i;
	*cut = i == n;
	return 0;
}

/* The code point of the valid n-byte sequence at p. */
static uint32_t utf8_decode(const uint8_t *p, size_t n)
{
	switch (n) {
	case 1: return p[0];
	case 2: return (uint32_t)(p[0] & 0x1F) << 6 | (p[1] & 0x3Fu);
	case 3:
		return (uint32_t)(p[0] & 0x0F) << 12 | (uint32_t)(p[1] & 0x3F) << 6 |
		       (p[2] & 0x3Fu);
	default:
		return (uint32_t)(p[0] & 0x07) << 18 | (uint32_t)(p[1] & 0x3F) << 12 |
		       (uint32_t)(p[2] & 0x3F) << 6 | (p[3] & 0x3Fu);
	}
}

/* Whether cp is one of the code points only the full pattern knows. */
static bool is_added(const struct tok_enc *e, uint32_t cp)
{
	size_t lo = 0, hi = e->added_count;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (cp < e->added[mid].first)
			hi = mid;
		else if (cp > e->added[mid].last)
			lo = mid + 1;
		else
			return true;
	}
	return false;
}

/* Length of the longest valid UTF-8 prefix of text; with e, *added is set if that prefix
 * holds a code point that needs e's full pattern. */
static size_t utf8_scan(const struct tok_enc *e, const char *text, size_t len, bool *added)
{
	const uint8_t *p = (const uint8_t *)text;
	uint32_t added_min = e && e->added_count ? e->added[0].first : UINT32_MAX;
	size_t i = 0;
	while (i < len) {
		if (len - i >= 8) {
			uint64_t w;
			memcpy(&w, p + i, 8);
			if ((w & 0x8080808080808080u) == 0) {
				i += 8;
				continue;
			}
		}
		if (p[i] < 0x80) {
			i++;
			continue;
		}
		size_t bad;
		bool cut;
		size_t n = utf8_char(p + i, len - i, &bad, &cut);
		if (n == 0)
			return i;
		if (!*added && added_min != UINT32_MAX) {
			uint32_t cp = utf8_decode(p + i, n);
			*added = cp >= added_min && is_added(e, cp);
		}
		i += n;
	}
	return len;
}

size_t tok_utf8_valid_prefix(const char *text, size_t len)
{
	bool added = false;
	return utf8_scan(NULL, text, len, &added);
}

size_t tok_utf8_sanitize(const char *src, size_t len, char *dst, size_t cap)
{
	size_t i = 0, o = 0;
	while (i < len) {
		size_t valid = tok_utf8_valid_prefix(src + i, len - i);
		if (cap - o < valid)
			return 0;
		memcpy(dst + o, src + i, valid);
		o += valid;
		i += valid;
		if (i == len)
			break;
		size_t bad;
		bool cut;
		size_t n = utf8_char((const uint8_t *)src + i, len - i, &bad, &cut);
		assert(n == 0 && bad >= 1);
		(void)n;
		if (cap - o < 3)
			return 0;
		memcpy(dst + o, "\xEF\xBF\xBD", 3);
		o += 3;
		i += bad;
	}
	return o;
}

/* text itself if it is valid UTF-8, else its sanitized copy in ctx (NULL: no memory);
 * *added: whether it needs the full pattern. */
static const char *valid_text(struct tok_ctx *ctx, const char *text, size_t *len, bool *added)
{
	*added = false;
	size_t v = utf8_scan(ctx->enc, text, *len, added);
	if (v == *len)
		return text;
	size_t need = v + 3 * (*len - v);
	if (!grow((void **)&ctx->fix, &ctx->fix_cap, need, 1))
		return NULL;
	memcpy(ctx->fix, text, v);
	*len = v + tok_utf8_sanitize(text + v, *len - v, ctx->fix + v, need - v);
	*added = false;
	utf8_scan(ctx->enc, ctx->fix, *len, added);
	return ctx->fix;
}

/* ---- byte-pair merge ----------------------------------------------------------------- */

/* tiktoken's merge for a short piece: parts start at start[i]; rank[i] is the rank of
 * merging part i with part i + 1 (TOK_NONE: no such token). Repeatedly merge the lowest
 * (leftmost on ties). Ranks are token ids, so a merged part's id is its pair's rank. */
static void merge_short(const struct tok_enc *e, const uint8_t *p, size_t n, struct tok_sink *out)
{
	uint32_t start[TOK_SHORT_PIECE + 1], rank[TOK_SHORT_PIECE + 1], id[TOK_SHORT_PIECE + 1];
	assert(n >= 2 && n <= TOK_SHORT_PIECE);
	for (size_t i = 0; i + 1 < n; i++) {
		start[i] = (uint32_t)i;
		rank[i] = vocab_id(e, p + i, 2);
		id[i] = e->byte_id[p[i]];
	}
	start[n - 1] = (uint32_t)(n - 1);
	rank[n - 1] = TOK_NONE;
	id[n - 1] = e->byte_id[p[n - 1]];
	start[n] = (uint32_t)n;
	size_t parts = n; /* start[parts] is the end */
	for (;;) {
		size_t best = 0;
		for (size_t i = 1; i + 1 < parts; i++)
			if (rank[i] < rank[best])
				best = i;
		if (parts < 2 || rank[best] == TOK_NONE)
			break;
		size_t i = best;
		id[i] = rank[i];
		/* Part i absorbs i + 1: re-rank the pairs that now include the merged part. */
		if (i > 0)
			rank[i - 1] = vocab_id(e, p + start[i - 1], start[i + 2] - start[i - 1]);
		rank[i] = TOK_NONE;
		if (i + 2 < parts)
			rank[i] = vocab_id(e, p + start[i], start[i + 3] - start[i]);
		memmove(&start[i + 1], &start[i + 2], (parts - i - 1) * sizeof(start[0]));
		memmove(&rank[i + 1], &rank[i + 2], (parts - i - 2) * sizeof(rank[0]));
		memmove(&id[i + 1], &id[i + 2], (parts - i - 2) * sizeof(id[0]));
		parts--;
	}
	if (!sink_wants_ids(out)) {
		out->n += (int64_t)parts;
		return;
	}
	for (size_t i = 0; i < parts; i++)
		sink_put(out, id[i]);
}

/* The same merge for a long piece, O(n log n): parts are a linked list indexed by their
 * first byte, candidate pairs a binary min-heap of (rank << 32 | part). An entry is stale
 * when its part is gone or now pairs at another rank; ties pop leftmost, as in tiktoken. */
struct merge_long {
	uint32_t *next, *prev, *rank, *id;
	uint64_t *heap;
	size_t heap_n;
};

static void heap_push(struct merge_long *m, uint64_t key)
{
	size_t i = m->heap_n++;
	while (i > 0) {
		size_t up = (i - 1) / 2;
		if (m->heap[up] <= key)
			break;
		m->heap[i] = m->heap[up];
		i = up;
	}
	m->heap[i] = key;
}

static uint64_t heap_pop(struct merge_long *m)
{
	uint64_t top = m->heap[0];
	uint64_t last = m->heap[--m->heap_n];
	size_t i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= m->heap_n)
			break;
		if (c + 1 < m->heap_n && m->heap[c + 1] < m->heap[c])
			c++;
		if (last <= m->heap[c])
			break;
		m->heap[i] = m->heap[c];
		i = c;
	}
	if (m->heap_n > 0)
		m->heap[i] = last;
	return top;
}

/* Rank of merging part a with its successor (TOK_NONE if there is none or no token). */
static uint32_t pair_rank(const struct tok_enc *e, const uint8_t *p, size_t n,
			  const struct merge_long *m, uint32_t a)
{
	uint32_t b = m->next[a];
	if (b >= n)
		return TOK_NONE;
	uint32_t end = m->next[b];
	return vocab_id(e, p + a, end - a);
}

static void rank_pair(const struct tok_enc *e, const uint8_t *p, size_t n, struct merge_long *m,
		      uint32_t a)
{
	m->rank[a] = pair_rank(e, p, n, m, a);
	if (m->rank[a] != TOK_NONE)
		heap_push(m, (uint64_t)m->rank[a] << 32 | a);
}

static int merge_long(struct tok_ctx *ctx, const uint8_t *p, size_t n, struct tok_sink *out)
{
	const struct tok_enc *e = ctx->enc;
	/* next, prev, rank, id: n + 1 each; heap: at most n - 1 + 2 merges, 2 words each. */
	size_t words = 4 * (n + 1) + 2 * (3 * n + 1) + 1;
	if (!grow((void **)&ctx->scratch, &ctx->scratch_cap, words, sizeof(uint32_t)))
		return TOK_E_NOMEM;
	struct merge_long m = {
		.next = ctx->scratch,
		.prev = ctx->scratch + (n + 1),
		.rank = ctx->scratch + 2 * (n + 1),
		.id = ctx->scratch + 3 * (n + 1),
	};
	uintptr_t h = (uintptr_t)(ctx->scratch + 4 * (n + 1));
	m.heap = (uint64_t *)((h + 7) & ~(uintptr_t)7);
	for (uint32_t i = 0; i <= n; i++) {
		m.next[i] = i + 1;
		m.prev[i] = i - 1; /* UINT32_MAX for the first */
		m.id[i] = i < n ? e->byte_id[p[i]] : TOK_NONE;
	}
	for (uint32_t i = 0; i < n; i++)
		rank_pair(e, p, n, &m, i);
	while (m.heap_n > 0) {
		uint64_t key = heap_pop(&m);
		uint32_t a = (uint32_t)key, r = (uint32_t)(key >> 32);
		if (m.next[a] == 0 || m.rank[a] != r)
			continue; /* stale: merged away (next 0 marks it) or re-ranked */
		uint32_t b = m.next[a];
		m.id[a] = r;
		m.next[a] = m.next[b];
		if (m.next[b] <= n)
			m.prev[m.next[b]] = a;
		m.next[b] = 0;
		m.rank[b] = TOK_NONE;
		rank_pair(e, p, n, &m, a);
		if (m.prev[a] != UINT32_MAX)
			rank_pair(e, p, n, &m, m.prev[a]);
	}
	for (uint32_t a = 0; a < n; a = m.next[a])
		sink_put(out, m.id[a]);
	return 0;
}

static int bpe_piece_uncached(struct tok_ctx *ctx, const uint8_t *p, size_t n,
			      struct tok_sink *out);

/* The n <= 8 bytes at p as a number, bytes past n zero: loads that cover them (overlapping
 * where n is not a power of two), not a copy to memory and a load back, which stalls. */
static uint64_t short_key(const uint8_t *p, size_t n)
{
	if (n >= 4) {
		uint32_t lo, hi;
		memcpy(&lo, p, 4);
		memcpy(&hi, p + n - 4, 4);
		return lo | (uint64_t)hi << (8 * (n - 4));
	}
	if (n == 0)
		return 0;
	return p[0] | (uint64_t)p[n / 2] << (8 * (n / 2)) | (uint64_t)p[n - 1] << (8 * (n - 1));
}

static int bpe_piece(struct tok_ctx *ctx, const uint8_t *p, size_t n, struct tok_sink *out)
{
	if (n == 0 || n > 16 || sink_wants_ids(out) || out->cap)
		return bpe_piece_uncached(ctx, p, n, out);
	if (!ctx->counts && !(ctx->counts = calloc(COUNT_CACHE_SLOTS, sizeof(*ctx->counts))))
		return bpe_piece_uncached(ctx, p, n, out);
	uint64_t key[2];
	if (n > 8) {
		memcpy(&key[0], p, 8);
		key[1] = short_key(p + 8, n - 8);
	} else {
		key[0] = short_key(p, n);
		key[1] = 0;
	}
	uint64_t h = (key[0] * 0x9E3779B97F4A7C15ull) ^ (key[1] * 0xC2B2AE3D27D4EB4Full) ^ n;
	struct count_slot *slot = &ctx->counts[(h ^ (h >> 29)) & (COUNT_CACHE_SLOTS - 1)];
	if (slot->len == n && slot->a == key[0] && slot->b == key[1]) {
		out->n += slot->count;
		return 0;
	}
	int64_t before = out->n;
	int rc = bpe_piece_uncached(ctx, p, n, out);
	if (rc == 0)
		*slot = (struct count_slot){ key[0], key[1], (uint32_t)n, (uint32_t)(out->n - before) };
	return rc;
}

static int bpe_piece_uncached(struct tok_ctx *ctx, const uint8_t *p, size_t n,
			      struct tok_sink *out)
{
	if (n == 0)
		return 0;
	uint32_t id = vocab_id(ctx->enc, p, n);
	if (id != TOK_NONE) { /* tiktoken's shortcut: a piece that is a token stays whole */
		sink_put(out, id);
		return 0;
	}
	assert(n >= 2); /* every single byte is a token */
	if (n <= TOK_SHORT_PIECE) {
		merge_short(ctx->enc, p, n, out);
		return 0;
	}
	return merge_long(ctx, p, n, out);
}

/* ---- pieces -------------------------------------------------------------------------- */

/* The special token starting at text[i], longest first, or -1. */
static int32_t special_at(const struct tok_enc *e, const char *text, size_t len, size_t i)
{
	for (uint32_t k = 0; k < e->hdr->n_special; k++) {
		uint32_t id = e->specials[k];
		size_t n = token_len(e, id);
		if (n <= len - i && memcmp(text + i, e->bytes + e->offsets[id], n) == 0)
			return (int32_t)id;
	}
	return -1;
}

/* The first special token at or after from, if any: sets *at and returns its id, or -1. */
static int32_t next_special(const struct tok_enc *e, const char *text, size_t len, size_t from,
			    size_t *at)
{
	for (size_t i = from; i < len; i++) {
		uint8_t c = (uint8_t)text[i];
		if (!(e->special_first[c / 8] & (1u << (c % 8))))
			continue;
		int32_t id = special_at(e, text, len, i);
		if (id >= 0) {
			*at = i;
			return id;
		}
	}
	*at = len;
	return -1;
}

/* One match of the pattern in subject[0..n) at or after off. Returns 1 with [*ms, *me),
 * 0 for none, 2 if (partial) the match could change were the subject longer, or an error. */
static int pattern_match(struct tok_pieces *it, const char *subject, size_t n, size_t off,
			 bool partial, size_t *ms, size_t *me)
{
	struct tok_ctx *ctx = it->ctx;
	const struct tok_re *re = it->full_unicode ? &ctx->enc->full : &ctx->enc->fast;
	/* PCRE2 is not built with ASan: check its bounds here */
	assert(subject >= it->text && n <= it->len && subject + n <= it->text + it->len);
	assert(off <= n);
	uint32_t opts = PCRE2_NO_UTF_CHECK | (partial ? PCRE2_PARTIAL_HARD : 0);
	int rc = PCRE2_ERROR_JIT_STACKLIMIT;
	if (re->jit)
		rc = pcre2_jit_match(re->code, (PCRE2_SPTR)subject, n, off, opts, ctx->md, NULL);
	if (rc == PCRE2_ERROR_JIT_STACKLIMIT) /* no JIT, or its stack ran out: the interpreter */
		rc = pcre2_match(re->code, (PCRE2_SPTR)subject, n, off, opts | PCRE2_NO_JIT,
				 ctx->md, NULL);
	if (rc == PCRE2_ERROR_NOMATCH)
		return 0;
	if (rc == PCRE2_ERROR_PARTIAL)
		return 2;
	if (rc < 0)
		return TOK_E_PATTERN;
	const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(ctx->md);
	*ms = ov[0];
	*me = ov[1];
	return 1;
}

/* Start iterating text[start..len), known to be valid UTF-8. */
static void pieces_begin(struct tok_pieces *it, struct tok_ctx *ctx, const char *text, size_t len,
			 size_t start, enum tok_special sp, bool open_end, bool full_unicode)
{
	*it = (struct tok_pieces){ .ctx = ctx, .text = text, .len = len, .pos = start, .sp = sp,
				   .open_end = open_end, .full_unicode = full_unicode,
				   .seg_special = -1 };
	/* With open_end, a special token may be arriving in the last bytes: nothing that looks
	 * at them is final. */
	size_t hold = 0;
	if (open_end && sp == TOK_SPECIAL_ALL && ctx->enc->special_max_len > 0)
		hold = ctx->enc->special_max_len - 1;
	it->final_limit = len - (hold < len - start ? hold : len - start);
}

void tok_pieces_init(struct tok_pieces *it, struct tok_ctx *ctx, const char *text, size_t len,
		     size_t start, enum tok_special sp, bool open_end)
{
	if (start > len || len - start > TOK_MAX_TEXT) {
		int err = start > len ? TOK_E_RANGE : TOK_E_TOO_LONG;
		*it = (struct tok_pieces){ .ctx = ctx, .error = err };
		return;
	}
	bool added = false;
	size_t n = len - start;
	size_t valid = utf8_scan(ctx->enc, text + start, n, &added);
	if (valid != n) {
		/* an open text may end inside a character that the next bytes complete */
		size_t bad;
		bool cut;
		const uint8_t *rest = (const uint8_t *)text + start + valid;
		if (!open_end || utf8_char(rest, n - valid, &bad, &cut) != 0 || !cut ||
		    valid + bad != n) {
			*it = (struct tok_pieces){ .ctx = ctx, .error = TOK_E_UTF8 };
			return;
		}
		len = start + valid;
	}
	pieces_begin(it, ctx, text, len, start, sp, open_end, added);
}

/* Advance past one character of the valid text (an empty match must not loop). */
static size_t next_char(const char *text, size_t len, size_t i)
{
	i++;
	while (i < len && ((uint8_t)text[i] & 0xC0) == 0x80)
		i++;
	return i;
}

/* ---- ASCII pieces without PCRE2 ----
 *
 * Most text a gateway counts is ASCII, and most of its pieces are a word with the blank or
 * punctuation before it. For the two known patterns those pieces follow from a few bytes:
 * every position starts a match (the alternatives cover every character), so a piece is the
 * first alternative that matches there, and in ASCII the classes are plain byte ranges
 * (\p{L}: A-Z a-z, \p{Lu} A-Z, \p{Ll} a-z, \p{N} 0-9, \p{White_Space} \t-\r and space; no
 * marks). Where the answer could depend on more (a non-ASCII byte that may be a letter, a
 * contraction, runs of blanks, line breaks, the end of what may still grow) ascii_piece
 * says 0 and PCRE2 decides. */

static inline bool ascii_alpha(uint8_t c) { return (uint8_t)((c | 0x20) - 'a') < 26; }
static inline bool ascii_digit(uint8_t c) { return (uint8_t)(c - '0') < 10; }
static inline bool ascii_space(uint8_t c) { return c == ' ' || (uint8_t)(c - '\t') < 5; }

/* Where the letters from s[i] (a letter) end, or 0 when s[0..n) does not decide it; end_ok:
 * the subject ends at n (else more may follow). */
static size_t ascii_word_end(enum tok_split k, const uint8_t *s, size_t n, size_t i, bool end_ok)
{
	if (k == SPLIT_O200K) { /* [Lu]*[Ll]+ or else [Lu]+[Ll]*: capitals, then small letters */
		while (i < n && (uint8_t)(s[i] - 'A') < 26)
			i++;
		while (i < n && (uint8_t)(s[i] - 'a') < 26)
			i++;
	} else { /* \p{L}+ */
		while (i < n && ascii_alpha(s[i]))
			i++;
	}
	if (i == n)
		return end_ok ? i : 0;
	/* a non-ASCII byte may be a letter or mark; o200k_base's words take a contraction */
	if (s[i] >= 0x80 || (k == SPLIT_O200K && s[i] == '\''))
		return 0;
	return i;
}

/* The length of the piece at s[i] (i < n) under pattern k, or 0: ask PCRE2. */
static size_t ascii_piece(enum tok_split k, const uint8_t *s, size_t n, size_t i, bool end_ok)
{
	const size_t start = i;
	uint8_t c = s[i];
	size_t j;
	if (ascii_alpha(c)) {
		j = ascii_word_end(k, s, n, i, end_ok);
		return j ? j - start : 0;
	}
	if (ascii_digit(c)) { /* \p{N}{1,3} */
		for (j = i + 1; j < n && j - i < 3 && ascii_digit(s[j]); j++)
			;
		if (j == n)
			return end_ok ? j - start : 0;
		if (j - i < 3 && s[j] >= 0x80) /* maybe a digit of another script */
			return 0;
		return j - start;
	}
	if (c >= 0x80 || c == '\r' || c == '\n' || i + 1 >= n)
		return 0;
	uint8_t d = s[i + 1];
	if (ascii_alpha(d)) { /* [^\r\n\p{L}\p{N}]? then a word */
		if (k == SPLIT_CL100K && c == '\'') /* its contractions come first */
			return 0;
		j = ascii_word_end(k, s, n, i + 1, end_ok);
		return j ? j - start : 0;
	}
	if (ascii_space(c)) {
		if (c != ' ' || d >= 0x80 || ascii_space(d))
			return 0;
		if (ascii_digit(d)) /* no other alternative takes it: \p{White_Space}+ alone */
			return 1;
		i++; /* " ?" before punctuation */
	}
	/* [^\p{White_Space}\p{L}\p{N}]+, then line breaks (o200k_base: and '/', taken already) */
	for (j = i; j < n && s[j] < 0x80 && !ascii_space(s[j]) && !ascii_alpha(s[j]) &&
		    !ascii_digit(s[j]);
	     j++)
		;
	if (j == n)
		return end_ok ? j - start : 0;
	if (s[j] >= 0x80 || s[j] == '\r' || s[j] == '\n')
		return 0;
	return j - start;
}

/* The next ordinary piece of the current segment [seg_start, seg_end). */
static int segment_piece(struct tok_pieces *it, size_t seg_start, struct tok_piece *out)
{
	const char *subject = it->text + seg_start;
	size_t n = it->seg_end - seg_start;
	size_t off = it->pos - seg_start;
	size_t ms = 0, me = 0;
	int rc = 0;
	bool final = !it->open_end;
	enum tok_split split = it->ctx->enc->split;
	if (split != SPLIT_PCRE && !it->full_unicode) {
		/* An open text's piece is final when bytes before final_limit decide it, as PCRE2's
		 * partial match below would say; past that, PCRE2 says what is unsettled. */
		bool open = it->open_end && !it->unstable &&
			    !(it->seg_special >= 0 && it->seg_end <= it->final_limit);
		size_t avail = n;
		if (open)
			avail = it->final_limit <= seg_start	       ? 0
				: it->final_limit - seg_start < n ? it->final_limit - seg_start
								  : n;
		size_t k = off < avail ? ascii_piece(split, (const uint8_t *)subject, avail, off, !open)
				       : 0;
		if (k) {
			*out = (struct tok_piece){ .off = it->pos, .len = k, .special = -1,
						   .final = !it->open_end || !it->unstable };
			it->pos += k;
			return 1;
		}
	}
	/* Open text: match as if the text ended at final_limit, with hard partial matching. A
	 * complete match never looked at the limit, so no appended text can change it. A
	 * segment that a settled special token ends cannot grow: its pieces are final. */
	if (it->open_end && !it->unstable) {
		if (it->seg_special >= 0 && it->seg_end <= it->final_limit) {
			final = true;
		} else {
			/* a segment after a special token may start past the limit */
			size_t check_n = 0;
			if (it->final_limit > seg_start)
				check_n = it->final_limit - seg_start;
			if (off < check_n)
				rc = pattern_match(it, subject, check_n, off, true, &ms, &me);
			if (rc < 0)
				return rc;
			final = rc == 1;
			it->unstable = !final;
		}
	}
	if (rc != 1) {
		rc = pattern_match(it, subject, n, off, false, &ms, &me);
		if (rc <= 0)
			return rc;
	}
	if (me == ms) { /* tiktoken's patterns never match empty; a crafted one must not hang us */
		it->pos = next_char(it->text, it->seg_end, seg_start + ms);
		return 2;
	}
	it->pos = seg_start + me;
	*out = (struct tok_piece){ .off = seg_start + ms, .len = me - ms, .special = -1,
				   .final = final };
	return 1;
}

int tok_pieces_next(struct tok_pieces *it, struct tok_piece *out)
{
	const struct tok_enc *e = it->ctx->enc;
	if (it->error != 0)
		return it->error;
	for (;;) {
		if (!it->started) {
			it->started = true;
			it->seg_special = -1;
			it->seg_end = it->len;
			if (it->sp == TOK_SPECIAL_ALL)
				it->seg_special = next_special(e, it->text, it->len, it->pos,
							       &it->seg_end);
			it->seg_start = it->pos;
		}
		if (it->pos < it->seg_end) {
			int rc = segment_piece(it, it->seg_start, out);
			if (rc == 1)
				return 1;
			if (rc < 0)
				return it->error = rc;
			if (rc == 0)
				it->pos = it->seg_end;
			continue;
		}
		if (it->seg_special < 0)
			return 0;
		size_t n = token_len(e, (uint32_t)it->seg_special);
		/* settled: all of its longest rival's bytes are here (seg_end + max_len <= len) */
		bool final = !it->open_end || (!it->unstable && it->seg_end < it->final_limit);
		if (!final)
			it->unstable = true;
		*out = (struct tok_piece){ .off = it->seg_end, .len = n, .special = it->seg_special,
					   .final = final };
		it->pos = it->seg_end + n;
		it->started = false;
		return 1;
	}
}

/* ---- counting and encoding ----------------------------------------------------------- */

static int64_t run(struct tok_ctx *ctx, const char *text, size_t len, enum tok_special sp,
		   struct tok_sink *out)
{
	if (len > TOK_MAX_TEXT)
		return TOK_E_TOO_LONG;
	bool added;
	text = valid_text(ctx, text, &len, &added);
	if (text == NULL)
		return TOK_E_NOMEM;
	struct tok_pieces it;
	struct tok_piece pc;
	int rc;
	pieces_begin(&it, ctx, text, len, 0, sp, false, added);
	while ((rc = tok_pieces_next(&it, &pc)) == 1) {
		if (pc.special >= 0) {
			sink_put(out, (uint32_t)pc.special);
			continue;
		}
		rc = bpe_piece(ctx, (const uint8_t *)text + pc.off, pc.len, out);
		if (rc < 0)
			break;
	}
	ctx_trim(ctx);
	return rc < 0 ? rc : out->n;
}

int64_t tok_count(struct tok_ctx *ctx, const char *text, size_t len, enum tok_special sp)
{
	struct tok_sink out = { 0 };
	return run(ctx, text, len, sp, &out);
}

int64_t tok_encode(struct tok_ctx *ctx, const char *text, size_t len, enum tok_special sp,
		   uint32_t *ids, size_t cap)
{
	struct tok_sink out = { .ids = ids, .cap = ids ? cap : 0 };
	return run(ctx, text, len, sp, &out);
}

int64_t tok_encode_piece(struct tok_ctx *ctx, const char *piece, size_t len, uint32_t *ids,
			 size_t cap)
{
	struct tok_sink out = { .ids = ids, .cap = ids ? cap : 0 };
	if (len > TOK_MAX_TEXT)
		return TOK_E_TOO_LONG;
	int rc = bpe_piece(ctx, (const uint8_t *)piece, len, &out);
	if (len > TOK_SHORT_PIECE)
		ctx_trim(ctx);
	return rc < 0 ? rc : out.n;
}

int64_t tok_count_piece(struct tok_ctx *ctx, const char *piece, size_t len)
{
	return tok_encode_piece(ctx, piece, len, NULL, 0);
}

int64_t tok_count_growing(struct tok_ctx *ctx, const char *text, size_t len, size_t start,
			  enum tok_special sp, size_t *final_off, int64_t *final_count)
{
	struct tok_pieces it;
	struct tok_piece pc;
	int64_t total = 0;
	int rc;
	*final_off = start;
	*final_count = 0;
	tok_pieces_init(&it, ctx, text, len, start, sp, true);
	while ((rc = tok_pieces_next(&it, &pc)) == 1) {
		int64_t n = pc.special >= 0 ? 1 : tok_count_piece(ctx, text + pc.off, pc.len);
		if (n < 0)
			return n;
		total += n;
		if (pc.final) {
			*final_off = pc.off + pc.len;
			*final_count = total;
		}
	}
	return rc < 0 ? rc : total;
}
