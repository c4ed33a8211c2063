/* tokenize.h - exact BPE token counts, identical to OpenAI's tiktoken (o200k_base, cl100k_base).
 *
 * A vocabulary is a file made by tools/tokconv from the npm `tiktoken` package's data
 * (pre-split pattern, special tokens, byte-pair ranks); tok_open maps it read-only and
 * compiles its pattern (PCRE2, UTF, JIT). Encoding follows tiktoken step by step:
 *   1. special tokens (only with TOK_SPECIAL_ALL) cut the text into segments;
 *   2. the pattern splits each segment into pieces (leftmost-first, like tiktoken's regex);
 *   3. a piece that is itself a token is that token; otherwise its bytes are merged
 *      pairwise, always the adjacent pair whose merge has the lowest rank (leftmost on ties).
 *
 * Text is UTF-8. tiktoken tokenizes strings, so bytes that are not valid UTF-8 are first
 * replaced the way a WHATWG/JavaScript decoder does (each maximal invalid subpart becomes
 * U+FFFD); tok_count and tok_encode do this themselves, the piece iterator wants valid text
 * (tok_utf8_sanitize makes it so). A lone UTF-16 surrogate (a JSON "\ud800" escape) counts as
 * one U+FFFD, as in tiktoken: decode such escapes to EF BF BD before counting.
 *
 * Threads: a struct tok_enc is read-only after tok_open and shared by all threads; each
 * thread tokenizes through its own struct tok_ctx (match data and scratch memory).
 *
 * Growing text (a streamed completion): the piece iterator says which pieces are final,
 * i.e. cannot change whatever is appended. tok_count_growing counts a text from a piece
 * boundary and reports how far its pieces are final, so a caller re-counts only the tail.
 */
#ifndef PENSTOCK_TOKENIZE_H
#define PENSTOCK_TOKENIZE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum tok_error {
	TOK_E_IO = -1,        /* the vocabulary file could not be opened or mapped */
	TOK_E_FORMAT = -2,    /* not a vocabulary file, or a damaged one */
	TOK_E_NOMEM = -3,
	TOK_E_PATTERN = -4,   /* PCRE2 rejected the pattern, or matching failed */
	TOK_E_UTF8 = -5,      /* the piece iterator was given invalid UTF-8 */
	TOK_E_TOO_LONG = -6,  /* text longer than TOK_MAX_TEXT */
	TOK_E_ID = -7,        /* decode: an id that names no token */
	TOK_E_RANGE = -8,     /* a start offset past the end of the text */
};

/* The longest text one call takes. A context keeps scratch memory for the largest input it
 * saw: 3 bytes per byte of text with invalid UTF-8 (its repaired copy), and 40 bytes per byte
 * of the longest piece that is not itself a token (the O(n log n) merge's state). */
#define TOK_MAX_TEXT ((size_t)64 << 20)

/* Which special tokens ("<|endoftext|>", ...) are recognised in the text. With NONE they
 * are ordinary text (tiktoken's encode_ordinary); with ALL each one is its own id. */
enum tok_special {
	TOK_SPECIAL_NONE = 0,
	TOK_SPECIAL_ALL = 1,
};

struct tok_enc;
struct tok_ctx;

const char *tok_strerror(int err);

/* Map and check the vocabulary file at path. Returns 0 and *out, or a TOK_E_* code. */
int tok_open(const char *path, struct tok_enc **out);
void tok_close(struct tok_enc *enc);

/* The encoding's name ("o200k_base"), and one more than its largest token id. */
const char *tok_name(const struct tok_enc *enc);
uint32_t tok_vocab_size(const struct tok_enc *enc);

/* Per-thread state for enc (which must outlive it). NULL when out of memory. */
struct tok_ctx *tok_ctx_new(const struct tok_enc *enc);
void tok_ctx_free(struct tok_ctx *ctx);

/* Number of tokens in text, or a TOK_E_* code. Allocates nothing per token. */
int64_t tok_count(struct tok_ctx *ctx, const char *text, size_t len, enum tok_special sp);

/* Token ids of text into ids[0..cap). Returns the number of tokens text has, which may be
 * more than cap (only the first cap are stored: retry with a larger array), or a TOK_E_*
 * code. tok_encode(..., NULL, 0) == tok_count(...). */
int64_t tok_encode(struct tok_ctx *ctx, const char *text, size_t len, enum tok_special sp,
		   uint32_t *ids, size_t cap);

/* The bytes of ids (special tokens decode to their text) into out[0..cap). Returns the
 * total length, which may be more than cap (only cap bytes are stored), or TOK_E_ID. */
int64_t tok_decode(const struct tok_enc *enc, const uint32_t *ids, size_t n, char *out, size_t cap);

/* The bytes of one token, or NULL if id names none. */
const char *tok_token_bytes(const struct tok_enc *enc, uint32_t id, size_t *len);

/* Pre-split pieces, the unit BPE works on. off/len locate the piece in the iterator's
 * text. special is the id of a special token piece, or -1. final: appending text cannot
 * change this piece (always true unless the iterator was opened with open_end). */
struct tok_piece {
	size_t off;
	size_t len;
	int32_t special;
	bool final;
};

struct tok_pieces {
	struct tok_ctx *ctx;
	const char *text;
	size_t len;
	size_t pos;          /* where the next piece is searched from */
	size_t seg_start;    /* the current segment: what lies between special tokens */
	size_t seg_end;      /* end of the current segment (the next special, or len) */
	int32_t seg_special; /* the special token at seg_end, or -1 */
	size_t final_limit;  /* a piece is final only if its match never looks at this offset */
	enum tok_special sp;
	bool open_end;       /* more text may be appended */
	bool full_unicode;   /* the text has code points only the vocabulary's full pattern knows */
	bool unstable;       /* a piece was not final: no later one is */
	bool started;
	int error;
};

/* Iterate the pieces of text[start..len); start must be 0 or a piece boundary (a piece's
 * end from an earlier pass over a prefix of the same text, as tok_count_growing reports).
 * text must be valid UTF-8 (else tok_pieces_next fails with TOK_E_UTF8), except that with
 * open_end an incomplete sequence at the very end is left out (more bytes may complete it). */
void tok_pieces_init(struct tok_pieces *it, struct tok_ctx *ctx, const char *text, size_t len,
		     size_t start, enum tok_special sp, bool open_end);

/* The next piece: returns 1 and *out, 0 at the end, or a TOK_E_* code. */
int tok_pieces_next(struct tok_pieces *it, struct tok_piece *out);

/* Tokens of one ordinary piece (a piece from tok_pieces_next with special == -1), counted
 * or stored as tok_encode does. */
int64_t tok_count_piece(struct tok_ctx *ctx, const char *piece, size_t len);
int64_t tok_encode_piece(struct tok_ctx *ctx, const char *piece, size_t len, uint32_t *ids,
			 size_t cap);

/* Count a growing text (a streamed completion) from start, 0 or an earlier *final_off, to
 * len. Returns the tokens in text[start..len) and sets *final_off (>= start) and
 * *final_count: the pieces in text[start..*final_off) are final and hold *final_count
 * tokens. A streaming counter keeps (committed_off, committed) and after each append:
 *   total = committed + returned;  committed += *final_count;  committed_off = *final_off;
 * it may drop the text before committed_off. At the stream's end the exact total is
 * committed + tok_count(ctx, text + committed_off, len - committed_off, sp).
 * text must be valid UTF-8, except for an incomplete sequence at its very end, which is
 * left for the next call. Work per call is the length of the unfinished tail: one long
 * piece (a run of spaces, or of CJK without punctuation) stays unfinished until it ends. */
int64_t tok_count_growing(struct tok_ctx *ctx, const char *text, size_t len, size_t start,
			  enum tok_special sp, size_t *final_off, int64_t *final_count);

/* Replace invalid UTF-8 in src as a WHATWG decoder does (each maximal invalid subpart ->
 * U+FFFD, EF BF BD). Writes at most cap bytes to dst (3 * len always suffices) and returns
 * the length of the result, or 0 if it did not fit and len > 0. */
size_t tok_utf8_sanitize(const char *src, size_t len, char *dst, size_t cap);

/* Length of the longest prefix of text that is valid UTF-8. */
size_t tok_utf8_valid_prefix(const char *text, size_t len);

#endif
