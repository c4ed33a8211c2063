/* tokcount.c - token accounting; the contract is in tokcount.h, the reasoning in
 * docs/tokens.md. */
#include "tokcount.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/json.h"
#include "core/log.h"
#include "providers/tokenize.h"

#define NVOCAB 2 /* TOKCOUNT_O200K, TOKCOUNT_CL100K */

static const char *const vocab_names[NVOCAB] = { "o200k_base", "cl100k_base" };

struct tokcount_reg {
	struct tok_enc *enc[NVOCAB]; /* NULL: unavailable */
};

/* Stream counters a context keeps for its next streams (memory and its first text buffer
 * reused: a 4 KiB malloc and free per stream are a tenth of the counting). */
#define SPARE_STREAMS 8
#define SPARE_TEXT_CAP (16u * 1024)

struct lessons; /* what a context's streams teach its next ones (see below) */

struct tokcount_ctx {
	const struct tokcount_reg *reg;
	struct tok_ctx *tok[NVOCAB];
	struct buf scratch; /* a decoded prompt string */
	struct tokcount_stream *spare[SPARE_STREAMS];
	unsigned nspare;
	struct lessons *lessons;
};

const char *tokcount_method_name(enum tokcount_method m)
{
	switch (m) {
	case TOKCOUNT_O200K: return "o200k_base";
	case TOKCOUNT_CL100K: return "cl100k_base";
	case TOKCOUNT_ESTIMATE: return "estimate";
	}
	return "?";
}

struct tokcount_reg *tokcount_reg_open(const char *dir)
{
	struct tokcount_reg *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	for (int i = 0; i < NVOCAB; i++) {
		char path[4096];
		int n = snprintf(path, sizeof(path), "%s/%s.tok", dir, vocab_names[i]);
		int rc = n > 0 && (size_t)n < sizeof(path) ? tok_open(path, &r->enc[i]) : TOK_E_IO;
		if (rc == TOK_E_NOMEM) {
			tokcount_reg_close(r);
			return NULL;
		}
		if (rc != 0) {
			r->enc[i] = NULL;
			log_warn("tokenizer %s unavailable (%s/%s.tok: %s): its models are counted "
				 "by estimate", vocab_names[i], dir, vocab_names[i],
				 tok_strerror(rc));
		}
	}
	return r;
}

void tokcount_reg_close(struct tokcount_reg *r)
{
	if (!r)
		return;
	for (int i = 0; i < NVOCAB; i++)
		tok_close(r->enc[i]);
	free(r);
}

bool tokcount_reg_has(const struct tokcount_reg *r, enum tokcount_method m)
{
	return m == TOKCOUNT_ESTIMATE || (r && (int)m < NVOCAB && r->enc[m]);
}

/* name is prefix, or prefix followed by '-' or '.' (a dated or sized variant). */
static bool family(const char *name, const char *prefix)
{
	size_t n = strlen(prefix);
	return strncmp(name, prefix, n) == 0 &&
	       (name[n] == '\0' || name[n] == '-' || name[n] == '.' || name[n] == ':');
}

/* tiktoken's model table (tiktoken/model.py), by family. */
static bool openai_family(const char *model, enum tokcount_method *m)
{
	static const char *const o200k[] = { "gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5",
					     "o1", "o3", "o4-mini", "o4", "gpt-oss",
					     "omni-moderation" };
	static const char *const cl100k[] = { "gpt-4", "gpt-3.5-turbo", "gpt-3.5", "gpt-35-turbo",
					      "text-embedding-ada-002", "text-embedding-3-small",
					      "text-embedding-3-large", "davinci-002",
					      "babbage-002" };
	if (strncmp(model, "ft:", 3) == 0) /* fine-tuned: ft:BASE:org::id */
		model += 3;
	for (size_t i = 0; i < sizeof(o200k) / sizeof(o200k[0]); i++)
		if (family(model, o200k[i])) {
			*m = TOKCOUNT_O200K;
			return true;
		}
	for (size_t i = 0; i < sizeof(cl100k) / sizeof(cl100k[0]); i++)
		if (family(model, cl100k[i])) {
			*m = TOKCOUNT_CL100K;
			return true;
		}
	return false;
}

struct tokcount_tokenizer tokcount_pick(const struct tokcount_reg *r, const char *configured,
					enum provider_kind kind, const char *upstream_model)
{
	struct tokcount_tokenizer t = { TOKCOUNT_ESTIMATE, false };
	if (configured) {
		if (strcmp(configured, "o200k_base") == 0)
			t = (struct tokcount_tokenizer){ TOKCOUNT_O200K, true };
		else if (strcmp(configured, "cl100k_base") == 0)
			t = (struct tokcount_tokenizer){ TOKCOUNT_CL100K, true };
	} else if (kind == PROVIDER_OPENAI) {
		enum tokcount_method m;
		if (upstream_model && openai_family(upstream_model, &m))
			t = (struct tokcount_tokenizer){ m, true };
		else
			t = (struct tokcount_tokenizer){ TOKCOUNT_O200K, false };
	}
	if (!tokcount_reg_has(r, t.method))
		t = (struct tokcount_tokenizer){ TOKCOUNT_ESTIMATE, false };
	return t;
}

static void stream_destroy(struct tokcount_stream *s);
static struct lessons *lessons_new(void);

struct tokcount_ctx *tokcount_ctx_new(const struct tokcount_reg *r)
{
	struct tokcount_ctx *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->reg = r;
	if (!(c->lessons = lessons_new())) {
		free(c);
		return NULL;
	}
	for (int i = 0; i < NVOCAB; i++) {
		if (!r || !r->enc[i])
			continue;
		c->tok[i] = tok_ctx_new(r->enc[i]);
		if (!c->tok[i]) {
			tokcount_ctx_free(c);
			return NULL;
		}
	}
	return c;
}

void tokcount_ctx_free(struct tokcount_ctx *c)
{
	if (!c)
		return;
	for (int i = 0; i < NVOCAB; i++)
		tok_ctx_free(c->tok[i]);
	buf_free(&c->scratch);
	for (unsigned i = 0; i < c->nspare; i++)
		stream_destroy(c->spare[i]);
	free(c->lessons);
	free(c);
}

/* The BPE context that counts for t: its own vocabulary, o200k_base for the estimate, or
 * NULL (bytes). */
static struct tok_ctx *tok_for(struct tokcount_ctx *c, struct tokcount_tokenizer t)
{
	if (t.method == TOKCOUNT_ESTIMATE)
		return c->tok[TOKCOUNT_O200K];
	return c->tok[t.method];
}

static int64_t ceil_div(int64_t a, int64_t num, int64_t den) { return (a * num + den - 1) / den; }

/* A BPE count (or a byte count, when tok is NULL) as the tokenizer t reports it. */
static int64_t scale(struct tokcount_tokenizer t, bool by_bytes, int64_t n)
{
	if (t.method != TOKCOUNT_ESTIMATE)
		return n;
	if (by_bytes)
		return ceil_div(n, TOKCOUNT_ESTIMATE_BYTES_NUM, TOKCOUNT_ESTIMATE_BYTES_DEN);
	return ceil_div(n, TOKCOUNT_ESTIMATE_NUM, TOKCOUNT_ESTIMATE_DEN);
}

int64_t tokcount_text(struct tokcount_ctx *c, struct tokcount_tokenizer t, const char *text,
		      size_t len)
{
	struct tok_ctx *tok = tok_for(c, t);
	int64_t n = tok ? tok_count(tok, text, len, TOK_SPECIAL_NONE) : -1;
	if (n < 0)
		return scale(t, true, (int64_t)len);
	return scale(t, false, n);
}

/* ---- a JSON string body, decoded incrementally ----
 *
 * The raw bytes of a JSON string (escapes as sent) arrive in slices split anywhere: inside
 * an escape, a surrogate pair or a UTF-8 sequence. The decoder turns them into valid UTF-8
 * the way tiktoken gets the text: invalid bytes as a WHATWG decoder does (each maximal
 * invalid subpart -> U+FFFD), a lone surrogate escape -> U+FFFD (JavaScript's TextEncoder,
 * Python's 'replace'), an invalid escape -> U+FFFD, then the byte after the backslash (or
 * the bad hex digit) as text. */

struct jdec {
	uint32_t cp;       /* UTF-8: the code point so far */
	uint8_t need, seen, lower, upper;
	uint8_t esc;       /* 0; 1 after '\'; 2..5 reading \u hex digits */
	uint16_t unit;     /* \u: the code unit so far */
	uint16_t hi;       /* a high surrogate waiting for its low half, or 0 */
};

#define U_FFFD 0xFFFD

static void jdec_init(struct jdec *d) { *d = (struct jdec){ .lower = 0x80, .upper = 0xBF }; }

/* out must have room for 4 more bytes. */
static void put_cp(char *out, size_t *n, uint32_t cp)
{
	unsigned char *o = (unsigned char *)out + *n;
	if (cp < 0x80) {
		o[0] = (unsigned char)cp;
		*n += 1;
	} else if (cp < 0x800) {
		o[0] = (unsigned char)(0xC0 | cp >> 6);
		o[1] = (unsigned char)(0x80 | (cp & 0x3F));
		*n += 2;
	} else if (cp < 0x10000) {
		o[0] = (unsigned char)(0xE0 | cp >> 12);
		o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
		o[2] = (unsigned char)(0x80 | (cp & 0x3F));
		*n += 3;
	} else {
		o[0] = (unsigned char)(0xF0 | cp >> 18);
		o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
		o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
		o[3] = (unsigned char)(0x80 | (cp & 0x3F));
		*n += 4;
	}
}

/* Whatever is unfinished becomes U+FFFD: at the end of a text, or before a byte that cannot
 * continue it. At most 3 U+FFFD (9 bytes). */
static void jdec_flush(struct jdec *d, char *out, size_t *n)
{
	if (d->need) {
		put_cp(out, n, U_FFFD);
		d->need = d->seen = 0;
		d->lower = 0x80;
		d->upper = 0xBF;
	}
	if (d->hi) {
		put_cp(out, n, U_FFFD);
		d->hi = 0;
	}
	if (d->esc) {
		put_cp(out, n, U_FFFD);
		d->esc = 0;
	}
}

/* One code unit from a \u escape. */
static void jdec_unit(struct jdec *d, uint16_t u, char *out, size_t *n)
{
	if (d->hi) {
		if (u >= 0xDC00 && u <= 0xDFFF) {
			put_cp(out, n, 0x10000 + ((uint32_t)(d->hi - 0xD800) << 10) + (u - 0xDC00));
			d->hi = 0;
			return;
		}
		put_cp(out, n, U_FFFD);
		d->hi = 0;
	}
	if (u >= 0xD800 && u <= 0xDBFF)
		d->hi = u;
	else if (u >= 0xDC00 && u <= 0xDFFF)
		put_cp(out, n, U_FFFD);
	else
		put_cp(out, n, u);
}

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c |= 0x20;
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static bool jdec_idle(const struct jdec *d) { return !d->esc && !d->need && !d->hi; }

/* A delta short enough to be checked and copied in one go, as most are (a token or a few). */
#define SHORT_DELTA 32

static uint64_t load32(const char *p)
{
	uint32_t x;
	memcpy(&x, p, 4);
	return x;
}

static uint64_t load64(const char *p)
{
	uint64_t x;
	memcpy(&x, p, 8);
	return x;
}

/* No byte of w is >= 0x80 or a backslash (a byte b is a backslash when b ^ 0x5C is zero). */
static bool plain_word(uint64_t w)
{
	const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
	uint64_t x = w ^ (ones * '\\');
	return ((w | ((x - ones) & ~x)) & highs) == 0;
}

/* raw (at most SHORT_DELTA bytes) is ASCII without a backslash: a JSON string body that
 * decodes to itself. Read in words, the last one overlapping the one before. */
static bool plain_ascii(struct slice raw)
{
	const char *p = raw.p;
	size_t n = raw.n;
	if (n >= 8) {
		for (size_t i = 0; i + 8 < n; i += 8)
			if (!plain_word(load64(p + i)))
				return false;
		return plain_word(load64(p + n - 8));
	}
	if (n >= 4)
		return plain_word(load32(p) | load32(p + n - 4) << 32);
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)p[i] >= 0x80 || p[i] == '\\')
			return false;
	return true;
}

/* memcpy of at most SHORT_DELTA bytes, without the call: overlapping words. */
static void copy_short(char *dst, const char *src, size_t n)
{
	if (n >= 8) {
		for (size_t i = 0; i + 8 < n; i += 8)
			memcpy(dst + i, src + i, 8);
		memcpy(dst + n - 8, src + n - 8, 8);
	} else if (n >= 4) {
		memcpy(dst, src, 4);
		memcpy(dst + n - 4, src + n - 4, 4);
	} else {
		for (size_t i = 0; i < n; i++)
			dst[i] = src[i];
	}
}

/* Decode raw[0..len) into out (room for 4 * len + 12 bytes needed). Returns the bytes
 * written. */
static size_t jdec_run(struct jdec *d, const char *raw, size_t len, char *out)
{
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char b = (unsigned char)raw[i];
		if (b < 0x80 && b != '\\' && !d->esc && !d->need && !d->hi) {
			/* A run of plain ASCII, most of a completion: copied as it is. */
			size_t j = i + 1;
			while (j < len && (unsigned char)raw[j] < 0x80 && raw[j] != '\\')
				j++;
			memcpy(out + n, raw + i, j - i);
			n += j - i;
			i = j - 1;
			continue;
		}
		if (d->esc == 1) {
			static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
			const char *k = b ? strchr(from, b) : NULL;
			if (b == 'u') {
				d->esc = 2;
				d->unit = 0;
				continue;
			}
			d->esc = 0;
			if (d->hi) {
				put_cp(out, &n, U_FFFD);
				d->hi = 0;
			}
			if (k) {
				out[n++] = to[k - from];
				continue;
			}
			put_cp(out, &n, U_FFFD); /* an invalid escape; b is text again */
		} else if (d->esc >= 2) {
			int v = hexval(b);
			if (v >= 0) {
				d->unit = (uint16_t)(d->unit << 4 | v);
				if (++d->esc == 6) {
					d->esc = 0;
					jdec_unit(d, d->unit, out, &n);
				}
				continue;
			}
			d->esc = 0;
			if (d->hi) {
				put_cp(out, &n, U_FFFD);
				d->hi = 0;
			}
			put_cp(out, &n, U_FFFD); /* a short \u escape; b is text again */
		}
		if (d->need == 0) {
			if (b == '\\') {
				d->esc = 1;
				continue;
			}
			if (d->hi) { /* a high surrogate escape not followed by an escape */
				put_cp(out, &n, U_FFFD);
				d->hi = 0;
			}
			if (b < 0x80) {
				out[n++] = (char)b;
			} else if (b >= 0xC2 && b <= 0xDF) {
				d->need = 1;
				d->cp = b & 0x1F;
			} else if (b >= 0xE0 && b <= 0xEF) {
				d->lower = b == 0xE0 ? 0xA0 : 0x80;
				d->upper = b == 0xED ? 0x9F : 0xBF;
				d->need = 2;
				d->cp = b & 0x0F;
			} else if (b >= 0xF0 && b <= 0xF4) {
				d->lower = b == 0xF0 ? 0x90 : 0x80;
				d->upper = b == 0xF4 ? 0x8F : 0xBF;
				d->need = 3;
				d->cp = b & 0x07;
			} else {
				put_cp(out, &n, U_FFFD);
			}
			continue;
		}
		if (b < d->lower || b > d->upper) { /* the sequence ends early; b starts anew */
			jdec_flush(d, out, &n);
			i--;
			continue;
		}
		d->lower = 0x80;
		d->upper = 0xBF;
		d->cp = d->cp << 6 | (b & 0x3F);
		if (++d->seen == d->need) {
			put_cp(out, &n, d->cp);
			d->need = d->seen = 0;
		}
	}
	return n;
}

/* The raw body of a JSON string value (quotes dropped), or false if v is not a string. */
static bool string_body(struct slice v, struct slice *out)
{
	if (v.n < 2 || v.p[0] != '"' || v.p[v.n - 1] != '"')
		return false;
	*out = (struct slice){ v.p + 1, v.n - 2 };
	return true;
}

/* ---- prompts ---- */

struct prompt_acc {
	struct tokcount_ctx *c;
	struct tokcount_tokenizer t;
	bool count;         /* run the tokenizer */
	bool by_bytes;      /* no vocabulary: the count is of bytes */
	int64_t tokens;     /* unscaled (BPE tokens, or bytes) */
	int64_t overhead;   /* format tokens, never scaled */
	int64_t bytes;
	bool exact;
	bool failed;
};

/* Count one JSON string value's text. Non-strings (null, numbers) add nothing. */
static void acc_string(struct prompt_acc *a, struct slice v)
{
	struct slice raw;
	if (!string_body(v, &raw))
		return;
	a->bytes += (int64_t)raw.n;
	if (!a->count || raw.n == 0)
		return;
	struct buf *b = &a->c->scratch;
	b->len = 0;
	if (!buf_reserve(b, 4 * raw.n + 12, (size_t)-1)) {
		a->tokens += (int64_t)raw.n;
		a->exact = false;
		return;
	}
	struct jdec d;
	jdec_init(&d);
	size_t n = jdec_run(&d, raw.p, raw.n, b->p);
	jdec_flush(&d, b->p, &n);
	struct tok_ctx *tok = tok_for(a->c, a->t);
	int64_t k = tok ? tok_count(tok, b->p, n, TOK_SPECIAL_NONE) : (int64_t)n;
	if (k < 0) {
		k = (int64_t)n;
		a->exact = false;
	}
	a->tokens += k;
}

/* A JSON value that the provider renders in its own way (tools, tool arguments): its raw
 * text is counted, an estimate. */
static void acc_raw(struct prompt_acc *a, struct slice v)
{
	if (!v.p)
		return;
	a->exact = false;
	a->bytes += (int64_t)v.n;
	if (!a->count)
		return;
	struct tok_ctx *tok = tok_for(a->c, a->t);
	int64_t k = tok ? tok_count(tok, v.p, v.n, TOK_SPECIAL_NONE) : (int64_t)v.n;
	a->tokens += k < 0 ? (int64_t)v.n : k;
}

static bool is_type(struct slice v, const char *type)
{
	struct slice s;
	return json_plain_string(v, &s) && slice_eq_cstr(s, type);
}

/* OpenAI content: a string, or an array of parts (text; image_url and the like). */
static void acc_openai_content(struct prompt_acc *a, struct slice content)
{
	struct json_iter it;
	struct slice part;
	if (!json_array_begin(&it, content)) {
		acc_string(a, content);
		return;
	}
	int r;
	while ((r = json_array_next(&it, &part)) == 1) {
		static const char *const keys[] = { "type", "text", "refusal" };
		struct slice v[3];
		if (json_scan_object(part, keys, v, 3) != 0)
			continue;
		if (v[1].p || v[2].p) {
			acc_string(a, v[1]);
			acc_string(a, v[2]);
		} else { /* an image, audio, a file: a fixed allowance */
			a->overhead += TOKCOUNT_IMAGE_TOKENS;
			a->exact = false;
		}
	}
	if (r < 0)
		a->failed = true;
}

/* The OpenAI cookbook's formula (num_tokens_from_messages): 3 tokens per message, the
 * string values' tokens, 1 more for a name, 3 to prime the reply. */
static void acc_openai(struct prompt_acc *a, struct slice body, uint32_t *nmsg)
{
	static const char *const keys[] = { "messages", "tools", "functions" };
	struct slice top[3];
	struct json_iter it;
	struct slice msg;
	if (json_scan_object(body, keys, top, 3) != 0 || !json_array_begin(&it, top[0])) {
		a->failed = true;
		return;
	}
	int r;
	while ((r = json_array_next(&it, &msg)) == 1) {
		static const char *const mkeys[] = { "role", "content", "name", "tool_call_id",
						     "tool_calls", "function_call", "refusal" };
		struct slice v[7];
		if (json_scan_object(msg, mkeys, v, 7) != 0) {
			a->failed = true;
			return;
		}
		(*nmsg)++;
		a->overhead += 3;
		acc_string(a, v[0]);
		acc_openai_content(a, v[1]);
		if (v[2].p) {
			acc_string(a, v[2]);
			a->overhead += 1;
		}
		acc_string(a, v[3]);
		acc_string(a, v[6]);
		/* Tool calls are rendered in a format OpenAI does not publish: name and
		 * arguments counted, an estimate. */
		struct json_iter ti;
		struct slice call;
		if (json_array_begin(&ti, v[4])) {
			while (json_array_next(&ti, &call) == 1) {
				static const char *const ck[] = { "function" };
				struct slice f;
				if (json_scan_object(call, ck, &f, 1) == 0 && f.p)
					acc_raw(a, f);
			}
		}
		acc_raw(a, v[5]);
	}
	if (r < 0) {
		a->failed = true;
		return;
	}
	a->overhead += 3;
	acc_raw(a, top[1]);
	acc_raw(a, top[2]);
}

/* Anthropic content: a string, or blocks (text, thinking, tool_use input, tool_result
 * content, images and documents). */
static void acc_anthropic_content(struct prompt_acc *a, struct slice content, int depth)
{
	struct json_iter it;
	struct slice blk;
	if (!json_array_begin(&it, content)) {
		acc_string(a, content);
		return;
	}
	int r;
	while ((r = json_array_next(&it, &blk)) == 1) {
		static const char *const keys[] = { "type", "text", "thinking", "name", "input",
						    "content" };
		struct slice v[6];
		if (json_scan_object(blk, keys, v, 6) != 0)
			continue;
		if (is_type(v[0], "text")) {
			acc_string(a, v[1]);
		} else if (is_type(v[0], "thinking")) {
			acc_string(a, v[2]);
		} else if (is_type(v[0], "tool_use")) {
			acc_string(a, v[3]);
			acc_raw(a, v[4]);
		} else if (is_type(v[0], "tool_result") && depth == 0) {
			acc_anthropic_content(a, v[5], 1);
		} else if (!is_type(v[0], "redacted_thinking")) {
			a->overhead += TOKCOUNT_IMAGE_TOKENS;
		}
	}
	if (r < 0)
		a->failed = true;
}

/* Anthropic does not publish its format: system, message texts, tool definitions' JSON,
 * 3 tokens per message (as OpenAI's), and its tool-use system prompt when there are tools. */
static void acc_anthropic(struct prompt_acc *a, struct slice body, uint32_t *nmsg)
{
	static const char *const keys[] = { "messages", "system", "tools" };
	struct slice top[3];
	struct json_iter it;
	struct slice msg;
	a->exact = false;
	if (json_scan_object(body, keys, top, 3) != 0 || !json_array_begin(&it, top[0])) {
		a->failed = true;
		return;
	}
	int r;
	while ((r = json_array_next(&it, &msg)) == 1) {
		static const char *const mkeys[] = { "role", "content" };
		struct slice v[2];
		if (json_scan_object(msg, mkeys, v, 2) != 0) {
			a->failed = true;
			return;
		}
		(*nmsg)++;
		a->overhead += 3;
		acc_anthropic_content(a, v[1], 0);
	}
	if (r < 0) {
		a->failed = true;
		return;
	}
	a->overhead += 3;
	acc_anthropic_content(a, top[1], 0);
	if (top[2].p && !json_is_null(top[2])) {
		acc_raw(a, top[2]);
		a->overhead += TOKCOUNT_ANTHROPIC_TOOLS_TOKENS;
	}
}

int tokcount_prompt(struct tokcount_ctx *c, struct tokcount_tokenizer t, enum dialect d,
		    struct slice body, enum tokcount_prompt_mode mode, struct tokcount_prompt *out)
{
	if (mode == TOKCOUNT_PROMPT_AUTO) {
		int rc = tokcount_prompt(c, t, d, body, TOKCOUNT_PROMPT_BOUND, out);
		if (rc != 0 || out->text_bytes > TOKCOUNT_PROMPT_AUTO_MAX)
			return rc;
		mode = TOKCOUNT_PROMPT_COUNT;
	}
	struct prompt_acc a = {
		.c = c,
		.t = t,
		.count = mode == TOKCOUNT_PROMPT_COUNT,
		.by_bytes = tok_for(c, t) == NULL,
		.exact = t.exact && mode == TOKCOUNT_PROMPT_COUNT,
	};
	*out = (struct tokcount_prompt){ 0 };
	uint32_t nmsg = 0;
	if (d == DIALECT_OPENAI)
		acc_openai(&a, body, &nmsg);
	else
		acc_anthropic(&a, body, &nmsg);
	if (a.failed)
		return -1;
	out->messages = nmsg;
	out->text_bytes = a.bytes;
	out->upper_bound = a.bytes + a.overhead;
	if (a.count) {
		out->tokens = scale(t, a.by_bytes, a.tokens) + a.overhead;
		if (out->tokens > out->upper_bound) /* an estimate above what bytes allow */
			out->tokens = out->upper_bound;
	} else {
		out->tokens = (a.bytes + 3) / 4 + a.overhead;
	}
	out->counted = a.count;
	out->exact = a.exact;
	return 0;
}

/* ---- events ---- */

static void add_delta(struct tokcount_event *ev, struct slice v, uint32_t part)
{
	struct slice raw;
	if (!string_body(v, &raw) || raw.n == 0)
		return;
	if (ev->ndelta == TOKCOUNT_MAX_DELTAS) {
		ev->extra_bytes += raw.n;
		return;
	}
	ev->delta[ev->ndelta++] = (struct tokcount_delta){ raw, part };
}

static bool uint_of(struct slice v, uint64_t *out)
{
	int64_t x;
	if (!v.p || !json_int(v, &x) || x < 0)
		return false;
	*out = (uint64_t)x;
	return true;
}

/* {"prompt_tokens", "completion_tokens", "prompt_tokens_details": {"cached_tokens"}} */
static void openai_usage(struct slice u, struct tokcount_event *ev)
{
	static const char *const keys[] = { "prompt_tokens", "completion_tokens",
					    "prompt_tokens_details" };
	struct slice v[3];
	if (json_scan_object(u, keys, v, 3) != 0)
		return;
	ev->has_prompt = uint_of(v[0], &ev->usage.prompt_tokens);
	ev->has_completion = uint_of(v[1], &ev->usage.completion_tokens);
	static const char *const dkeys[] = { "cached_tokens" };
	struct slice cached;
	if (v[2].p && json_scan_object(v[2], dkeys, &cached, 1) == 0)
		uint_of(cached, &ev->usage.cached_tokens);
	ev->usage.present = ev->has_prompt || ev->has_completion;
}

/* {"input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"} */
static void anthropic_usage(struct slice u, struct tokcount_event *ev)
{
	static const char *const keys[] = { "input_tokens", "output_tokens",
					    "cache_read_input_tokens",
					    "cache_creation_input_tokens" };
	struct slice v[4];
	uint64_t in = 0, read = 0, write = 0;
	if (!u.p || json_scan_object(u, keys, v, 4) != 0)
		return;
	ev->has_prompt = uint_of(v[0], &in);
	uint_of(v[2], &read);
	uint_of(v[3], &write);
	if (ev->has_prompt) {
		ev->usage.prompt_tokens = in + read + write;
		ev->usage.cached_tokens = read;
	}
	ev->has_completion = uint_of(v[1], &ev->usage.completion_tokens);
	ev->usage.present = ev->has_prompt || ev->has_completion;
}

static int scan_openai(struct slice data, struct tokcount_event *ev)
{
	if (slice_eq_cstr(data, "[DONE]")) {
		ev->done = true;
		return 0;
	}
	static const char *const keys[] = { "choices", "usage" };
	struct slice top[2];
	if (json_scan_object(data, keys, top, 2) != 0)
		return -1;
	if (top[1].p && !json_is_null(top[1]))
		openai_usage(top[1], ev);
	struct json_iter it;
	struct slice choice;
	bool any_choice = false;
	if (top[0].p && json_array_begin(&it, top[0])) {
		int r;
		for (uint32_t i = 0; (r = json_array_next(&it, &choice)) == 1; i++) {
			any_choice = true;
			static const char *const ckeys[] = { "index", "delta" };
			struct slice cv[2];
			uint64_t idx = i;
			if (json_scan_object(choice, ckeys, cv, 2) != 0)
				return -1;
			uint_of(cv[0], &idx);
			if (!cv[1].p || json_is_null(cv[1]))
				continue;
			static const char *const dkeys[] = { "content", "refusal",
							     "reasoning_content", "tool_calls" };
			struct slice dv[4];
			if (json_scan_object(cv[1], dkeys, dv, 4) != 0)
				return -1;
			uint32_t base = (uint32_t)(idx & 0xFFFF) << 16;
			for (uint32_t k = 0; k < 3; k++)
				add_delta(ev, dv[k], base | k);
			struct json_iter ti;
			struct slice call;
			if (!json_array_begin(&ti, dv[3]))
				continue;
			for (uint32_t j = 0; json_array_next(&ti, &call) == 1; j++) {
				static const char *const tkeys[] = { "index", "function" };
				static const char *const fkeys[] = { "arguments" };
				struct slice tv[2], args;
				uint64_t tidx = j;
				if (json_scan_object(call, tkeys, tv, 2) != 0 || !tv[1].p ||
				    json_scan_object(tv[1], fkeys, &args, 1) != 0)
					continue;
				uint_of(tv[0], &tidx);
				add_delta(ev, args, base | (uint32_t)((16 + tidx) & 0xFFFF));
			}
		}
		if (r < 0)
			return -1;
	}
	ev->usage_only = !any_choice && ev->usage.present;
	return 0;
}

static int scan_anthropic(struct slice data, struct tokcount_event *ev)
{
	static const char *const keys[] = { "type", "index", "delta", "usage", "message" };
	struct slice v[5];
	if (json_scan_object(data, keys, v, 5) != 0)
		return -1;
	if (is_type(v[0], "content_block_delta")) {
		static const char *const dkeys[] = { "type", "text", "partial_json", "thinking" };
		struct slice dv[4];
		uint64_t idx = 0;
		if (!v[2].p || json_scan_object(v[2], dkeys, dv, 4) != 0)
			return -1;
		uint_of(v[1], &idx);
		uint32_t part = (uint32_t)(idx > UINT32_MAX ? UINT32_MAX : idx);
		if (is_type(dv[0], "text_delta"))
			add_delta(ev, dv[1], part);
		else if (is_type(dv[0], "input_json_delta"))
			add_delta(ev, dv[2], part);
		else if (is_type(dv[0], "thinking_delta"))
			add_delta(ev, dv[3], part);
	} else if (is_type(v[0], "message_start")) {
		static const char *const mkeys[] = { "usage" };
		struct slice u;
		if (v[4].p && json_scan_object(v[4], mkeys, &u, 1) == 0)
			anthropic_usage(u, ev);
	} else if (is_type(v[0], "message_delta")) {
		anthropic_usage(v[3], ev);
	} else if (is_type(v[0], "message_stop")) {
		ev->done = true;
	}
	return 0;
}

/* ---- the usual event shapes, in one pass ----
 *
 * Nearly every event of a stream has one of a few shapes: an OpenAI chunk whose choices hold a
 * delta of strings, an Anthropic content_block_delta. The general scan above walks such an
 * event four times (the object, the choices, the choice, the delta) and matches each key
 * against each wanted name. The reader below walks it once and gives up (false) at anything
 * the usual shapes do not have: an object or array where it expects a string or a scalar
 * (usage, tool calls, an Anthropic message), choices given twice, bad JSON. Such an event goes
 * to the general scan, so the answers stay the general scan's: where the reader answers, it
 * answers the same (a repeated key's last value, keys compared as sent, escapes and all). */

struct rd {
	const char *p, *end;
};

static void rd_ws(struct rd *r)
{
	while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
		r->p++;
}

/* After blanks, c: consumed. */
static bool rd_char(struct rd *r, char c)
{
	rd_ws(r);
	if (r->p < r->end && *r->p == c) {
		r->p++;
		return true;
	}
	return false;
}

/* A string at r->p (its opening quote): *v is the whole value, quotes included. */
static bool rd_string(struct rd *r, struct slice *v)
{
	const char *p = r->p + 1;
	for (;;) {
		p = json_string_stop(p, r->end);
		if (p >= r->end || (unsigned char)*p < 0x20)
			return false;
		if (*p == '"')
			break;
		p += 2; /* a backslash and the byte it escapes */
	}
	*v = (struct slice){ r->p, (size_t)(p + 1 - r->p) };
	r->p = p + 1;
	return true;
}

/* After blanks, a string or a scalar (number, true, false, null: the bytes core/json takes
 * for one), not an object or array: *v is its text. */
static bool rd_flat(struct rd *r, struct slice *v)
{
	rd_ws(r);
	if (r->p < r->end && *r->p == '"')
		return rd_string(r, v);
	const char *p = r->p;
	while (p < r->end && ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || *p == '-' ||
			      *p == '+' || *p == '.' || *p == 'E'))
		p++;
	*v = (struct slice){ r->p, (size_t)(p - r->p) };
	r->p = p;
	return v->n > 0;
}

/* A member's key at r->p (its opening quote), and the colon: 1, or -1. */
static int rd_key(struct rd *r, struct slice *k)
{
	struct slice v;
	if (r->p >= r->end || *r->p != '"' || !rd_string(r, &v) || !rd_char(r, ':'))
		return -1;
	*k = (struct slice){ v.p + 1, v.n - 2 };
	return 1;
}

/* The next member of an object whose '{' was read (*first: none read yet): 1 and its key as
 * sent (no quotes), r after the colon; 0 at the closing brace; -1 for anything else. */
static int rd_member(struct rd *r, bool *first, struct slice *k)
{
	if (rd_char(r, '}'))
		return 0;
	if (!*first && !rd_char(r, ','))
		return -1;
	*first = false;
	rd_ws(r);
	return rd_key(r, k);
}

/* k is the literal lit (a key as sent). */
#define KEY_IS(k, lit) ((k).n == sizeof(lit) - 1 && memcmp((k).p, lit, sizeof(lit) - 1) == 0)

/* The slots of the delta keys that matter, -1 for others. */
static int openai_delta_slot(struct slice k)
{
	return KEY_IS(k, "content") ? 0 : KEY_IS(k, "refusal") ? 1
	       : KEY_IS(k, "reasoning_content") ? 2 : -1;
}

static int anthropic_delta_slot(struct slice k)
{
	return KEY_IS(k, "type") ? 0 : KEY_IS(k, "text") ? 1 : KEY_IS(k, "partial_json") ? 2
	       : KEY_IS(k, "thinking") ? 3 : -1;
}

/* A delta object of flat values: vals[slot(key)] gets each (a repeated key: its last value),
 * the slices the general scan would give. */
static bool rd_flat_object(struct rd *r, int (*slot)(struct slice), struct slice *vals,
			   unsigned nvals)
{
	struct slice k, v;
	bool first = true;
	int m;
	for (unsigned i = 0; i < nvals; i++)
		vals[i] = (struct slice){ NULL, 0 };
	if (!rd_char(r, '{'))
		return false;
	while ((m = rd_member(r, &first, &k)) == 1) {
		if (!rd_flat(r, &v))
			return false;
		int i = slot(k);
		if (i >= 0)
			vals[i] = v;
	}
	return m == 0;
}

/* One element of OpenAI's choices, the i-th: {"index", "delta": {strings} or null, flat
 * others}. */
static bool fast_openai_choice(struct rd *r, uint32_t i, struct tokcount_event *ev)
{
	struct slice idx = { NULL, 0 }, dv[3] = { { NULL, 0 } }, k, v;
	bool first = true;
	int m;
	if (!rd_char(r, '{'))
		return false;
	while ((m = rd_member(r, &first, &k)) == 1) {
		rd_ws(r);
		if (KEY_IS(k, "delta") && r->p < r->end && *r->p == '{') {
			if (!rd_flat_object(r, openai_delta_slot, dv, 3))
				return false;
		} else if (KEY_IS(k, "delta")) { /* null, or not an object: the general scan */
			if (!rd_flat(r, &v) || !json_is_null(v))
				return false;
			memset(dv, 0, sizeof(dv));
		} else {
			if (!rd_flat(r, &v))
				return false;
			if (KEY_IS(k, "index"))
				idx = v;
		}
	}
	if (m < 0)
		return false;
	uint64_t index = i;
	uint_of(idx, &index);
	uint32_t base = (uint32_t)(index & 0xFFFF) << 16;
	for (uint32_t j = 0; j < 3; j++)
		add_delta(ev, dv[j], base | j);
	return true;
}

static int usage_slot(struct slice k)
{
	return KEY_IS(k, "prompt_tokens") ? 0 : KEY_IS(k, "completion_tokens") ? 1 : -1;
}

static int cached_slot(struct slice k) { return KEY_IS(k, "cached_tokens") ? 0 : -1; }

/* OpenAI's usage object, as openai_usage reads it: flat members, and objects of flat members
 * (prompt_tokens_details, completion_tokens_details, ...). */
static bool rd_openai_usage(struct rd *r, struct tokcount_event *ev)
{
	struct slice v[2] = { { NULL, 0 } }, cached = { NULL, 0 }, k, x;
	bool first = true;
	int m;
	if (!rd_char(r, '{'))
		return false;
	while ((m = rd_member(r, &first, &k)) == 1) {
		rd_ws(r);
		bool details = KEY_IS(k, "prompt_tokens_details");
		int i = usage_slot(k);
		if (r->p < r->end && *r->p == '{') {
			const char *o = r->p;
			struct slice c;
			if (!rd_flat_object(r, cached_slot, &c, 1))
				return false;
			x = (struct slice){ o, (size_t)(r->p - o) };
			if (details)
				cached = c;
		} else {
			if (!rd_flat(r, &x))
				return false;
			if (details) /* not an object: no cached tokens */
				cached = (struct slice){ NULL, 0 };
		}
		if (i >= 0)
			v[i] = x;
	}
	if (m != 0)
		return false;
	ev->has_prompt = uint_of(v[0], &ev->usage.prompt_tokens);
	ev->has_completion = uint_of(v[1], &ev->usage.completion_tokens);
	uint_of(cached, &ev->usage.cached_tokens);
	ev->usage.present = ev->has_prompt || ev->has_completion;
	return true;
}

/* {"choices": [choice...], "usage": null or {usage}, flat others}. resume: 0, or where a key
 * starts after members that an earlier event had byte for byte (its lead, see openai_lead);
 * the reader goes on from there. */
static bool fast_openai(struct slice data, size_t resume, struct tokcount_event *ev)
{
	struct rd r = { data.p, data.p + data.n };
	struct slice k;
	bool first = true, choices = false, any_choice = false;
	int m;
	if (resume) {
		r.p += resume;
		first = false;
		m = rd_key(&r, &k);
	} else {
		if (!rd_char(&r, '{'))
			return false;
		m = rd_member(&r, &first, &k);
	}
	for (; m == 1; m = rd_member(&r, &first, &k)) {
		if (KEY_IS(k, "choices")) {
			if (choices)
				return false;
			if (!rd_char(&r, '['))
				return false;
			choices = true;
			if (rd_char(&r, ']'))
				continue;
			any_choice = true;
			uint32_t i = 0;
			do {
				if (!fast_openai_choice(&r, i++, ev))
					return false;
			} while (rd_char(&r, ','));
			if (!rd_char(&r, ']'))
				return false;
		} else if (KEY_IS(k, "usage")) { /* the last one counts */
			ev->usage = (struct usage){ 0 };
			ev->has_prompt = ev->has_completion = false;
			struct slice v;
			rd_ws(&r);
			if (r.p < r.end && *r.p == '{') {
				if (!rd_openai_usage(&r, ev))
					return false;
			} else if (!rd_flat(&r, &v) || !json_is_null(v)) {
				return false;
			}
		} else {
			struct slice v;
			if (!rd_flat(&r, &v))
				return false;
		}
	}
	rd_ws(&r);
	if (m != 0 || r.p != r.end)
		return false;
	ev->usage_only = !any_choice && ev->usage.present;
	return true;
}

/* {"type", "index", "delta": {flat}, flat others}: content_block_delta, content_block_stop,
 * message_stop, ping. */
static bool fast_anthropic(struct slice data, struct tokcount_event *ev)
{
	struct rd r = { data.p, data.p + data.n };
	struct slice v[2] = { { NULL, 0 } }, dv[4] = { { NULL, 0 } }, k, x;
	bool first = true, delta = false;
	int m;
	if (!rd_char(&r, '{'))
		return false;
	while ((m = rd_member(&r, &first, &k)) == 1) {
		if (KEY_IS(k, "delta")) {
			if (!rd_flat_object(&r, anthropic_delta_slot, dv, 4))
				return false;
			delta = true;
			continue;
		}
		if (!rd_flat(&r, &x))
			return false;
		if (KEY_IS(k, "type"))
			v[0] = x;
		else if (KEY_IS(k, "index"))
			v[1] = x;
	}
	rd_ws(&r);
	if (m != 0 || r.p != r.end)
		return false;
	if (is_type(v[0], "content_block_delta")) {
		uint64_t idx = 0;
		if (!delta)
			return false;
		uint_of(v[1], &idx);
		uint32_t part = (uint32_t)(idx > UINT32_MAX ? UINT32_MAX : idx);
		if (is_type(dv[0], "text_delta"))
			add_delta(ev, dv[1], part);
		else if (is_type(dv[0], "input_json_delta"))
			add_delta(ev, dv[2], part);
		else if (is_type(dv[0], "thinking_delta"))
			add_delta(ev, dv[3], part);
	} else if (is_type(v[0], "message_stop")) {
		ev->done = true;
	}
	return true;
}

static void event_clear(struct tokcount_event *ev)
{
	ev->ndelta = 0;
	ev->extra_bytes = 0;
	ev->usage = (struct usage){ 0 };
	ev->has_prompt = ev->has_completion = ev->usage_only = ev->done = false;
}

/* The general scan, for an event the reader gave up on. */
static int slow_scan(enum dialect d, struct slice data, struct tokcount_event *ev)
{
	event_clear(ev);
	int rc = d == DIALECT_OPENAI ? scan_openai(data, ev) : scan_anthropic(data, ev);
	if (rc < 0)
		event_clear(ev);
	return rc;
}

int tokcount_scan_event(enum dialect d, struct slice type, struct slice data,
			struct tokcount_event *ev)
{
	(void)type; /* both dialects say in the data what the event is */
	event_clear(ev);
	if (d == DIALECT_OPENAI ? fast_openai(data, 0, ev) : fast_anthropic(data, ev))
		return 0;
	return slow_scan(d, data, ev);
}

/* An OpenAI chunk's lead: its bytes before the "choices" key, when every member before it is
 * flat and none is "usage" (so the reader leaves them in no state but "not the first");
 * 0 if it has none. */
static size_t openai_lead(struct slice data)
{
	struct rd r = { data.p, data.p + data.n };
	struct slice k, v;
	bool first = true;
	if (!rd_char(&r, '{'))
		return 0;
	while (rd_member(&r, &first, &k) == 1) {
		if (KEY_IS(k, "choices"))
			return (size_t)(k.p - 1 - data.p);
		if (KEY_IS(k, "usage") || !rd_flat(&r, &v))
			return 0;
	}
	return 0;
}

/* ---- the stream counter ---- */

/* ---- a stream's repeated shape ----
 *
 * The events of one stream differ in little but their text: the same id, model and
 * fingerprint, the same keys around one delta string. An event that gave exactly one delta and
 * nothing else (no usage, not the end) is remembered as its bytes before that string and after
 * it. A later event with the same bytes around a string of its own parses the same way (a
 * string's content changes nothing in how JSON around it parses, and that string is only
 * the delta's text here): its delta is its string, in the same part. Two memcmp and a string
 * scan instead of a walk. */

#define SHAPE_MAX 512 /* bytes of an event around its string (OpenAI's chunks: ~150-250) */

struct shape {
	uint16_t before, after; /* after: from the string's closing quote to the end */
	uint32_t part;
	enum dialect d;
	bool known;
	char bytes[SHAPE_MAX]; /* last (see tokcount_stream_new) */
};

/* The event says nothing at all but, maybe, that the stream is done: a cleared event. */
static bool quiet_event(int rc, const struct tokcount_event *ev)
{
	const struct usage *u = &ev->usage;
	return rc == 0 && ev->ndelta == 0 && !ev->extra_bytes && !u->present &&
	       !u->prompt_tokens && !u->completion_tokens && !u->cached_tokens &&
	       !ev->has_prompt && !ev->has_completion && !ev->usage_only;
}

/* True if sh was learned from this event. Another event leaves it as it was: the shape is a
 * fact about bytes, true as long as it is kept, and the next text event likely has it. */
static bool shape_learn(struct shape *sh, enum dialect d, struct slice data, int rc,
			const struct tokcount_event *ev)
{
	if (rc != 0 || ev->ndelta != 1 || ev->extra_bytes || ev->usage.present || ev->done)
		return false;
	struct slice raw = ev->delta[0].raw;
	size_t before = (size_t)(raw.p - data.p), after = data.n - before - raw.n;
	if (before + after > SHAPE_MAX)
		return false;
	memcpy(sh->bytes, data.p, before);
	memcpy(sh->bytes + before, raw.p + raw.n, after);
	sh->before = (uint16_t)before;
	sh->after = (uint16_t)after;
	sh->part = ev->delta[0].part;
	sh->d = d;
	sh->known = true;
	return true;
}

/* data has the remembered shape: *raw is its string's body. */
static bool shape_match(const struct shape *sh, enum dialect d, struct slice data,
			struct slice *raw)
{
	if (!sh->known || d != sh->d || data.n < (size_t)sh->before + sh->after ||
	    memcmp(data.p, sh->bytes, sh->before) != 0)
		return false;
	const char *p = data.p + sh->before, *end = data.p + data.n;
	for (;;) {
		p = json_string_stop(p, end);
		if (p >= end || (unsigned char)*p < 0x20)
			return false;
		if (*p == '"')
			break;
		p += 2; /* a backslash and the byte it escapes */
	}
	if ((size_t)(end - p) != sh->after || memcmp(p, sh->bytes + sh->before, sh->after) != 0)
		return false;
	*raw = (struct slice){ data.p + sh->before, (size_t)(p - data.p) - sh->before };
	return true;
}

/* ---- a stream's repeated lead ----
 *
 * OpenAI's chunks of one stream start alike: the same id, object, created, model (and
 * fingerprint) before "choices". Reading them is half the reading of a chunk that has no
 * learned shape (the role, finish and usage chunks). The first chunk's bytes before its
 * "choices" key are remembered; a chunk that starts with the same bytes is read from there, as
 * the reader would have reached that point in the same state (what it read up to a key's
 * opening quote decides nothing but that the members were flat). */

#define LEAD_MAX 256

/* ---- a stream's repeated raw event ----
 *
 * A stream's SSE framing around its data repeats too: "data: " (OpenAI), "event:
 * content_block_delta\ndata: " (Anthropic), then the data, then "\n\n". Once an event with a
 * learned shape came framed so, the framing is remembered with the shape, and a later event
 * whose bytes are that framing around the shape around a string is counted from the raw
 * bytes: the SSE parser's scan for line ends and its dispatch are skipped. Its line structure
 * is the learned event's (a JSON string holds no CR or LF), so the parser would have made of
 * it the event the shape describes. */

#define FRAME_MAX 64 /* "event: <type>\ndata: " */

struct tokcount_stream {
	struct tokcount_ctx *c;
	struct tokcount_tokenizer t;
	struct tok_ctx *tok;   /* NULL: count bytes */
	struct buf text;       /* decoded text from the first unfinished piece on */
	size_t counted;        /* text[0..counted) was counted: tail tokens */
	int64_t committed;     /* tokens of the text already dropped (final pieces, ended parts) */
	int64_t tail;          /* tokens in text[0..counted) */
	int64_t as_bytes;      /* bytes counted without the tokenizer (after a failure) */
	uint64_t bytes;
	struct jdec dec;
	uint32_t part;
	bool have_part;
	bool by_bytes;         /* no tokenizer, or it failed: every byte is a token */
	bool cut;              /* a piece longer than TOKCOUNT_MAX_TAIL was cut */
	struct usage usage;
	size_t lead;        /* OpenAI: the first event's bytes before its "choices" key */
	size_t frame;       /* the raw framing before the data, 0: none learned */
	bool recalled;      /* it took what the context's earlier streams taught */
	bool shaped;        /* the last event has the shape (matched it, or taught it) */
	struct shape shape; /* a reused counter is cleared up to its bytes */
	char lead_bytes[LEAD_MAX];
	char frame_bytes[FRAME_MAX];
};

/* ---- what one stream teaches the next ----
 *
 * A worker's streams from one provider differ from one another in little but the text and an
 * OpenAI chunk's lead (its id and creation time). So the context keeps, for each dialect, the
 * last text shape a stream learned less its lead, and the framing of such an event: a new
 * stream takes them as soon as it knows its own lead, and its first text event is counted
 * from its bytes. It keeps the last few events that counted nothing too (OpenAI's role and
 * finish chunks past the lead; Anthropic's content_block_start, ping, content_block_stop and
 * message_stop): one with the same bytes is not read again. Both are facts about bytes that
 * hold in any stream, since what follows a lead of flat members reads the same whatever the
 * lead was. */

#define QUIET_MAX 128 /* bytes of a quiet event (past its lead) worth remembering */
#define QUIET_N 8

struct quiet {
	uint16_t n;     /* 0: an empty slot */
	bool past_lead; /* the bytes after an OpenAI lead, not a whole event */
	bool done;
	enum dialect d;
	char bytes[QUIET_MAX];
};

struct taught {
	struct shape shape; /* before: the bytes after the lead */
	size_t frame;
	char frame_bytes[FRAME_MAX];
};

struct lessons {
	struct taught taught[2]; /* by dialect_index */
	struct quiet quiet[QUIET_N];
	unsigned next_quiet;
};

static struct lessons *lessons_new(void) { return calloc(1, sizeof(struct lessons)); }

static unsigned dialect_index(enum dialect d) { return d == DIALECT_ANTHROPIC; }

static const struct quiet *quiet_find(const struct lessons *l, enum dialect d, struct slice b,
				      bool past_lead)
{
	for (unsigned i = 0; i < QUIET_N; i++) {
		const struct quiet *q = &l->quiet[i];
		if (q->n && q->n == b.n && q->d == d && q->past_lead == past_lead &&
		    memcmp(q->bytes, b.p, b.n) == 0)
			return q;
	}
	return NULL;
}

static void quiet_learn(struct lessons *l, enum dialect d, struct slice b, bool past_lead,
			bool done)
{
	if (b.n == 0 || b.n > QUIET_MAX)
		return;
	struct quiet *q = &l->quiet[l->next_quiet++ % QUIET_N];
	*q = (struct quiet){ .n = (uint16_t)b.n, .past_lead = past_lead, .done = done, .d = d };
	memcpy(q->bytes, b.p, b.n);
}

/* The stream's newly learned shape, less its lead, for the context's next streams. */
static void teach_shape(struct tokcount_stream *s)
{
	const struct shape *sh = &s->shape;
	size_t lead = sh->d == DIALECT_OPENAI ? s->lead : 0;
	if (sh->d == DIALECT_OPENAI &&
	    (!lead || sh->before < lead || memcmp(sh->bytes, s->lead_bytes, lead) != 0))
		return; /* not past a lead of this stream's: it would not fit another */
	struct shape *t = &s->c->lessons->taught[dialect_index(sh->d)].shape;
	*t = (struct shape){ .before = (uint16_t)(sh->before - lead), .after = sh->after,
			     .part = sh->part, .d = sh->d, .known = true };
	memcpy(t->bytes, sh->bytes + lead, t->before + t->after);
}

/* Once the stream knows its lead (an Anthropic one has none): what earlier streams taught. */
static void recall(struct tokcount_stream *s, enum dialect d)
{
	if (s->recalled || (d == DIALECT_OPENAI && !s->lead))
		return;
	s->recalled = true;
	const struct taught *t = &s->c->lessons->taught[dialect_index(d)];
	size_t lead = d == DIALECT_OPENAI ? s->lead : 0;
	const struct shape *ts = &t->shape;
	if (!s->shape.known && ts->known && ts->d == d &&
	    lead + ts->before + ts->after <= SHAPE_MAX) {
		memcpy(s->shape.bytes, s->lead_bytes, lead);
		memcpy(s->shape.bytes + lead, ts->bytes, ts->before + ts->after);
		s->shape.before = (uint16_t)(lead + ts->before);
		s->shape.after = ts->after;
		s->shape.part = ts->part;
		s->shape.d = d;
		s->shape.known = true;
	}
	if (!s->frame && t->frame) {
		memcpy(s->frame_bytes, t->frame_bytes, t->frame);
		s->frame = t->frame;
	}
}

struct tokcount_stream *tokcount_stream_new(struct tokcount_ctx *c, struct tokcount_tokenizer t)
{
	struct tokcount_stream *s;
	struct buf text = { 0 };
	if (c->nspare) {
		s = c->spare[--c->nspare];
		text = s->text;
		text.len = 0;
		memset(s, 0, offsetof(struct tokcount_stream, shape) + offsetof(struct shape, bytes));
	} else if (!(s = calloc(1, sizeof(*s)))) {
		return NULL;
	}
	s->c = c;
	s->text = text;
	s->t = t;
	s->tok = tok_for(c, t);
	s->by_bytes = s->tok == NULL;
	jdec_init(&s->dec);
	return s;
}

static void stream_destroy(struct tokcount_stream *s)
{
	buf_free(&s->text);
	free(s);
}

void tokcount_stream_free(struct tokcount_stream *s)
{
	if (!s)
		return;
	struct tokcount_ctx *c = s->c;
	if (c->nspare < SPARE_STREAMS && s->text.cap <= SPARE_TEXT_CAP)
		c->spare[c->nspare++] = s;
	else
		stream_destroy(s);
}

/* Give up on the tokenizer: what is held counts as bytes from now on. */
static void to_bytes(struct tokcount_stream *s)
{
	if (s->by_bytes)
		return;
	s->by_bytes = true;
	s->as_bytes += (int64_t)s->text.len;
	s->text.len = 0;
	s->counted = 0;
	s->tail = 0;
}

/* Count the new text: re-count from the first unfinished piece, drop the final ones. With
 * !force, only once TOKCOUNT_BATCH new bytes wait (one tokenizer call per batch, not per
 * delta), and a long unfinished tail only once it has grown by a quarter, so a piece of n
 * bytes costs O(n) re-counting in all rather than O(n^2). */
static void advance(struct tokcount_stream *s, bool force)
{
	struct buf *b = &s->text;
	if (s->by_bytes) {
		s->as_bytes += (int64_t)b->len;
		b->len = 0;
		return;
	}
	size_t fresh = b->len - s->counted;
	if (!force && (fresh < TOKCOUNT_BATCH || (b->len > 256 && fresh * 4 < s->counted)))
		return;
	size_t final_off;
	int64_t final_n;
	int64_t n = tok_count_growing(s->tok, b->p, b->len, 0, TOK_SPECIAL_NONE, &final_off,
				      &final_n);
	if (n < 0) {
		to_bytes(s);
		return;
	}
	s->committed += final_n;
	s->tail = n - final_n;
	buf_consume(b, final_off);
	s->counted = b->len;
	if (b->len <= TOKCOUNT_MAX_TAIL)
		return;
	/* One piece longer than the bound: count its first half as it stands. */
	size_t cut = b->len / 2;
	while (cut > 0 && ((unsigned char)b->p[cut] & 0xC0) == 0x80)
		cut--;
	int64_t k = tok_count(s->tok, b->p, cut, TOK_SPECIAL_NONE);
	if (k < 0) {
		to_bytes(s);
		return;
	}
	s->cut = true;
	s->committed += k;
	buf_consume(b, cut);
	s->counted = 0;
	s->tail = 0;
	advance(s, true);
}

/* End the current part: its decoder's leftovers, then its exact count. */
static void end_part(struct tokcount_stream *s)
{
	struct buf *b = &s->text;
	if (buf_reserve(b, 12, TOKCOUNT_MAX_TAIL + TOKCOUNT_CHUNK + 64)) {
		size_t before = b->len;
		jdec_flush(&s->dec, b->p, &b->len);
		s->bytes += b->len - before;
	} else {
		jdec_init(&s->dec);
		to_bytes(s);
	}
	if (s->by_bytes) {
		advance(s, true);
		return;
	}
	int64_t n = b->len ? tok_count(s->tok, b->p, b->len, TOK_SPECIAL_NONE) : 0;
	if (n < 0) {
		to_bytes(s);
		advance(s, true);
		return;
	}
	s->committed += n;
	b->len = 0;
	s->counted = 0;
	s->tail = 0;
}

void tokcount_stream_feed(struct tokcount_stream *s, uint32_t part, struct slice raw)
{
	if (s->have_part && part != s->part)
		end_part(s);
	s->part = part;
	s->have_part = true;
	struct buf *b = &s->text;
	if (raw.n <= SHORT_DELTA && b->cap - b->len >= SHORT_DELTA && jdec_idle(&s->dec) &&
	    plain_ascii(raw)) { /* the usual delta: its text is its bytes */
		copy_short(b->p + b->len, raw.p, raw.n);
		b->len += raw.n;
		s->bytes += raw.n;
		advance(s, false);
		return;
	}
	/* Decode at most TOKCOUNT_CHUNK / 4 raw bytes at a time (up to 4 bytes out per byte in,
	 * plus what the decoder held), then count: memory stays within the bound. */
	const size_t step = TOKCOUNT_CHUNK / 4 - 4;
	for (size_t i = 0; i < raw.n;) {
		size_t n = raw.n - i < step ? raw.n - i : step;
		if (!buf_reserve(b, 4 * n + 12, TOKCOUNT_MAX_TAIL + TOKCOUNT_CHUNK + 64)) {
			to_bytes(s);
			if (!buf_reserve(b, 4 * n + 12, TOKCOUNT_MAX_TAIL + TOKCOUNT_CHUNK + 64)) {
				s->as_bytes += (int64_t)n; /* no memory at all: bytes */
				s->bytes += n;
				i += n;
				continue;
			}
		}
		size_t k = jdec_run(&s->dec, raw.p + i, n, b->p + b->len);
		b->len += k;
		s->bytes += k;
		i += n;
		advance(s, false);
	}
}

/* tokcount_scan_event, knowing what the stream and its context learned: an OpenAI chunk is
 * read from after its lead, a quiet event seen before is not read at all. */
static int stream_scan(struct tokcount_stream *s, enum dialect d, struct slice data,
		       struct tokcount_event *ev)
{
	event_clear(ev);
	size_t lead = 0;
	if (d == DIALECT_OPENAI) {
		if (slice_eq_cstr(data, "[DONE]")) {
			ev->done = true;
			return 0;
		}
		if (!s->lead) {
			size_t n = openai_lead(data);
			if (n > 0 && n <= LEAD_MAX) {
				memcpy(s->lead_bytes, data.p, n);
				s->lead = n;
				recall(s, d);
			}
		}
		if (s->lead && data.n > s->lead && memcmp(data.p, s->lead_bytes, s->lead) == 0)
			lead = s->lead;
	}
	struct slice rest = slice_of(data.p + lead, data.n - lead);
	const struct quiet *q = quiet_find(s->c->lessons, d, rest, lead > 0);
	if (q) {
		ev->done = q->done;
		return 0;
	}
	bool fast = d == DIALECT_OPENAI ? fast_openai(data, lead, ev) : fast_anthropic(data, ev);
	int rc = fast ? 0 : slow_scan(d, data, ev);
	/* past a lead, only the reader's answers are known to hold whatever the lead */
	if (quiet_event(rc, ev) && (fast || !lead))
		quiet_learn(s->c->lessons, d, rest, lead > 0, ev->done);
	return rc;
}

int tokcount_stream_event(struct tokcount_stream *s, enum dialect d, struct slice type,
			  struct slice data, struct tokcount_event *ev)
{
	struct tokcount_event local;
	if (!ev)
		ev = &local;
	struct slice raw;
	int rc = 0;
	(void)type; /* both dialects say in the data what the event is */
	recall(s, d);
	s->shaped = shape_match(&s->shape, d, data, &raw);
	if (s->shaped) {
		event_clear(ev);
		if (raw.n)
			ev->delta[ev->ndelta++] = (struct tokcount_delta){ raw, s->shape.part };
	} else {
		rc = stream_scan(s, d, data, ev);
		if ((s->shaped = shape_learn(&s->shape, d, data, rc, ev)))
			teach_shape(s);
	}
	for (unsigned i = 0; i < ev->ndelta; i++)
		tokcount_stream_feed(s, ev->delta[i].part, ev->delta[i].raw);
	if (ev->extra_bytes) { /* more deltas than one event should carry: bytes >= tokens */
		s->as_bytes += (int64_t)ev->extra_bytes;
		s->bytes += ev->extra_bytes;
		s->cut = true;
	}
	if (ev->has_prompt) {
		s->usage.prompt_tokens = ev->usage.prompt_tokens;
		s->usage.cached_tokens = ev->usage.cached_tokens;
	}
	if (ev->has_completion)
		s->usage.completion_tokens = ev->usage.completion_tokens;
	if (ev->usage.present)
		s->usage.present = true;
	return rc;
}

/* The framing of the event raw (data: its data, a slice of it) after its data was counted: 
 * remembered when the event is "data: D\n\n" or "event: T\ndata: D\n\n" and D has the learned
 * shape (true). */
static bool learn_frame(struct tokcount_stream *s, struct slice raw, struct slice data)
{
	uintptr_t r = (uintptr_t)raw.p, d = (uintptr_t)data.p;
	s->frame = 0;
	if (!s->shape.known || d < r || d + data.n + 2 != r + raw.n ||
	    memcmp(data.p + data.n, "\n\n", 2) != 0)
		return false;
	size_t n = (size_t)(data.p - raw.p);
	bool plain = n == 6 && memcmp(raw.p, "data: ", 6) == 0;
	bool typed = n >= 14 && n <= FRAME_MAX && memcmp(raw.p, "event: ", 7) == 0 &&
		     memcmp(data.p - 7, "\ndata: ", 7) == 0 && !memchr(raw.p + 7, '\n', n - 14) &&
		     !memchr(raw.p, '\r', n);
	if (!plain && !typed)
		return false;
	memcpy(s->frame_bytes, raw.p, n);
	s->frame = n;
	struct taught *t = &s->c->lessons->taught[dialect_index(s->shape.d)];
	memcpy(t->frame_bytes, raw.p, n);
	t->frame = n;
	return true;
}

/* An event at p[0..n) in the learned framing and shape: its length, and *str the string's
 * body; 0 if not. */
static size_t framed_event(const struct tokcount_stream *s, const char *p, size_t n,
			   size_t max_event, struct slice *str)
{
	const struct shape *sh = &s->shape;
	size_t lead = s->frame + sh->before;
	if (n < lead + sh->after + 2 || memcmp(p, s->frame_bytes, s->frame) != 0 ||
	    memcmp(p + s->frame, sh->bytes, sh->before) != 0)
		return 0;
	const char *q = p + lead, *end = p + n;
	for (;;) {
		q = json_string_stop(q, end);
		if (q >= end || (unsigned char)*q < 0x20)
			return 0;
		if (*q == '"')
			break;
		if (q + 1 < end && (q[1] == '\r' || q[1] == '\n'))
			return 0; /* the parser ends a line there, escaped or not */
		q += 2; /* a backslash and the byte it escapes */
	}
	size_t len = (size_t)(q - p) + sh->after + 2;
	if (len > n || len > max_event || memcmp(q, sh->bytes + sh->before, sh->after) != 0 ||
	    q[sh->after] != '\n' || q[sh->after + 1] != '\n')
		return 0;
	*str = (struct slice){ p + lead, (size_t)(q - p) - lead };
	return len;
}

/* The whole framed events at the start of frag: counted; the bytes they took. */
static size_t count_framed(struct tokcount_stream *s, enum dialect d, struct slice frag,
			   size_t max_event, uint64_t limit, bool *past)
{
	size_t i = 0, k;
	struct slice str;
	if (!s->frame || !s->shape.known || s->shape.d != d)
		return 0;
	while (i < frag.n && (k = framed_event(s, frag.p + i, frag.n - i, max_event, &str)) > 0) {
		i += k;
		if (str.n)
			tokcount_stream_feed(s, s->shape.part, str);
		if (limit != UINT64_MAX && tokcount_stream_past(s, limit)) {
			*past = true;
			break;
		}
	}
	return i;
}

struct sse_pass {
	struct tokcount_stream *s;
	enum dialect d;
	const char *frag; /* what the parser parses: the fragment from off */
	size_t off, resume;
	uint64_t limit;
	bool past;
	tokcount_sse_fn fn;
	void *arg;
};

static bool sse_pass_event(void *arg, const struct sse_event *ev)
{
	struct sse_pass *x = arg;
	struct tokcount_event te;
	if (tokcount_stream_event(x->s, x->d, ev->type, ev->data, &te) < 0)
		return true;
	if (x->limit != UINT64_MAX && tokcount_stream_past(x->s, x->limit)) {
		x->past = true;
		return false;
	}
	if (x->fn)
		x->fn(x->arg, ev, &te, x->off);
	if (!ev->raw_in_frag)
		return true;
	if (x->s->shaped)
		learn_frame(x->s, slice_of(x->frag + ev->raw_start, ev->raw_end - ev->raw_start),
			    ev->data);
	if (x->s->frame && x->s->shape.known && x->s->shape.d == x->d) {
		x->resume = x->off + ev->raw_end;
		return false; /* the events that follow may be read from their bytes */
	}
	return true;
}

/* An event at p[0..n) in the usual framing, "data: D\n\n" or "event: T\ndata: D\n\n" (each
 * line whole, no CR): its length, and *ev as the parser would report it, between events, to
 * a caller that gave it p; 0 if not (the parser reads it). It saves a provider's other events
 * (the role, finish and usage chunks, [DONE]) the parser's line machinery. */
static size_t plain_event(const struct sse_parser *parser, const char *p, size_t n,
			  struct sse_event *ev)
{
	const char *q = p, *end = p + n, *nl;
	struct slice type = { p, 0 };
	if (n > 7 && memcmp(p, "event: ", 7) == 0) {
		if (!(nl = memchr(p + 7, '\n', n - 7)))
			return 0;
		type = slice_of(p + 7, (size_t)(nl - (p + 7)));
		q = nl + 1;
	}
	if (end - q < 8 || memcmp(q, "data: ", 6) != 0 || !(nl = memchr(q + 6, '\n', end - q - 6)) ||
	    end - nl < 2 || nl[1] != '\n' || memchr(p, '\r', (size_t)(nl - p)))
		return 0;
	size_t len = (size_t)(nl + 2 - p);
	if (len > parser->max)
		return 0;
	*ev = (struct sse_event){
		.type = type,
		.data = slice_of(q + 6, (size_t)(nl - (q + 6))),
		.id = slice_of(parser->id.p, parser->id.len),
		.has_id = parser->has_id,
		.retry = -1,
		.raw_in_frag = true,
		.raw_start = 0,
		.raw_end = len,
	};
	return len;
}

bool tokcount_stream_sse(struct tokcount_stream *s, enum dialect d, struct sse_parser *p,
			 struct slice frag, uint64_t limit, tokcount_sse_fn fn, void *arg)
{
	struct sse_pass x = { .s = s, .d = d, .limit = limit, .fn = fn, .arg = arg };
	size_t at = 0, k;
	struct sse_event ev;
	while (at < frag.n) {
		while (sse_between_events(p)) {
			at += count_framed(s, d, slice_of(frag.p + at, frag.n - at), p->max, limit,
					   &x.past);
			if (x.past || at == frag.n ||
			    !(k = plain_event(p, frag.p + at, frag.n - at, &ev)))
				break;
			x.frag = frag.p + at;
			x.off = at;
			sse_pass_event(&x, &ev);
			if (x.past)
				break;
			at += k;
		}
		if (x.past || at == frag.n)
			break;
		x.frag = frag.p + at;
		x.off = at;
		x.resume = 0;
		if (sse_feed(p, frag.p + at, frag.n - at, sse_pass_event, &x) != SSE_STOPPED ||
		    !x.resume)
			break;
		at = x.resume;
	}
	return x.past;
}

int64_t tokcount_stream_so_far(const struct tokcount_stream *s)
{
	int64_t n = s->committed + s->tail, fresh = (int64_t)(s->text.len - s->counted);
	return scale(s->t, false, n + fresh) + scale(s->t, true, s->as_bytes);
}

bool tokcount_stream_past(struct tokcount_stream *s, uint64_t limit)
{
	if ((uint64_t)tokcount_stream_so_far(s) <= limit)
		return false;
	if (s->text.len > s->counted)
		advance(s, true);
	return (uint64_t)tokcount_stream_so_far(s) > limit;
}

int64_t tokcount_stream_end(struct tokcount_stream *s)
{
	end_part(s);
	s->have_part = false;
	return scale(s->t, false, s->committed) + scale(s->t, true, s->as_bytes);
}

bool tokcount_stream_exact(const struct tokcount_stream *s)
{
	return s->t.exact && !s->cut && s->as_bytes == 0;
}

const struct usage *tokcount_stream_usage(const struct tokcount_stream *s) { return &s->usage; }

uint64_t tokcount_stream_bytes(const struct tokcount_stream *s) { return s->bytes; }
