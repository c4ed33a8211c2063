/* tokcount.h - token accounting: which tokenizer a model uses, the prompt's tokens at
 * admission, and the completion's tokens while a stream passes.
 *
 * Providers report usage late (the last event) or not at all, so the gateway counts itself
 * (docs/tokens.md says how, and how exact each count is):
 *
 *   registry   the vocabularies (o200k_base, cl100k_base), opened once per process from
 *              tokenizer_dir; a missing file makes that tokenizer unavailable (logged) and
 *              the models that would use it are counted by estimate.
 *   context    per worker thread: the tokenizers' scratch state.
 *   prompt     tokcount_prompt: a request body in either dialect -> its prompt tokens (the
 *              OpenAI chat format's per-message overhead included) and a cheap upper bound.
 *   stream     tokcount_stream: fed the completion's text deltas as the raw JSON string
 *              slices the provider sent (escapes and all), it decodes them and counts with
 *              tok_count_growing, keeping only the unfinished tail; at the end its count is
 *              tiktoken's count of the decoded text. tokcount_scan_event pulls those slices
 *              and the provider's usage out of one SSE event of either dialect.
 *
 * Models without a public tokenizer (Anthropic, most self-hosted ones) are estimated:
 * ceil(o200k_base count * 5/4), or ceil(bytes * 2/7) when o200k_base is unavailable.
 */
#ifndef PENSTOCK_TOKCOUNT_H
#define PENSTOCK_TOKCOUNT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/sse.h"
#include "core/str.h"
#include "providers/translate.h"

/* ---- tokenizers ---- */

enum tokcount_method {
	TOKCOUNT_O200K,    /* tiktoken o200k_base */
	TOKCOUNT_CL100K,   /* tiktoken cl100k_base */
	TOKCOUNT_ESTIMATE, /* no public tokenizer: the approximation above */
};

/* How one model's tokens are counted. exact: the counts are the model's own tokenizer's
 * (false for estimates, and for an OpenAI model whose family is not known, counted with
 * o200k_base). */
struct tokcount_tokenizer {
	enum tokcount_method method;
	bool exact;
};

/* The estimate's factor over o200k_base (Anthropic: ~3.5 English characters per token,
 * o200k_base ~4.4; docs/tokens.md), and bytes per token without any vocabulary. */
#define TOKCOUNT_ESTIMATE_NUM 5
#define TOKCOUNT_ESTIMATE_DEN 4
#define TOKCOUNT_ESTIMATE_BYTES_NUM 2
#define TOKCOUNT_ESTIMATE_BYTES_DEN 7

struct tokcount_reg;
struct tokcount_ctx;

/* Open dir/o200k_base.tok and dir/cl100k_base.tok (made by tools/tokconv). A missing or
 * damaged file is logged and leaves that tokenizer unavailable. NULL only when out of
 * memory. Read-only afterwards: shared by all threads. */
struct tokcount_reg *tokcount_reg_open(const char *dir);
void tokcount_reg_close(struct tokcount_reg *r);
bool tokcount_reg_has(const struct tokcount_reg *r, enum tokcount_method m);

/* The tokenizer for a model: configured is config_model.tokenizer ("o200k_base",
 * "cl100k_base", "estimate" or NULL); when NULL, by the target's provider kind: openai by
 * the upstream model's family (as tiktoken's model table: gpt-4o, gpt-4.1, gpt-4.5, gpt-5,
 * o1, o3, o4, gpt-oss -> o200k_base; gpt-4, gpt-3.5, text-embedding-* -> cl100k_base; others
 * o200k_base, not exact), anthropic and openai-compatible -> estimate. A tokenizer whose
 * vocabulary is unavailable becomes the estimate. */
struct tokcount_tokenizer tokcount_pick(const struct tokcount_reg *r, const char *configured,
					enum provider_kind kind, const char *upstream_model);
const char *tokcount_method_name(enum tokcount_method m);

/* Per-thread state (r must outlive it). NULL when out of memory. */
struct tokcount_ctx *tokcount_ctx_new(const struct tokcount_reg *r);
void tokcount_ctx_free(struct tokcount_ctx *c);

/* Tokens in a text (UTF-8; invalid bytes count as U+FFFD), special tokens as plain text.
 * Never fails: if the tokenizer cannot (out of memory) the byte length is returned. */
int64_t tokcount_text(struct tokcount_ctx *c, struct tokcount_tokenizer t, const char *text,
		      size_t len);

/* ---- prompts, at admission ---- */

enum tokcount_prompt_mode {
	/* Walk the body and add up the bytes of the text it holds: the upper bound (tokens <=
	 * bytes for valid UTF-8: every token is at least one byte) and a rough estimate,
	 * bytes / 4. About 0.2 us per KB of body. */
	TOKCOUNT_PROMPT_BOUND,
	/* Also run the tokenizer over that text: the count, at tokenizer speed (~14 us per KB). */
	TOKCOUNT_PROMPT_COUNT,
	/* COUNT when the text is at most TOKCOUNT_PROMPT_AUTO_MAX bytes, else BOUND. */
	TOKCOUNT_PROMPT_AUTO,
};

#define TOKCOUNT_PROMPT_AUTO_MAX (4u * 1024)

/* Per image (or other non-text part): OpenAI's high-detail tiles stay under it for images
 * up to 2048 px, Anthropic's (width * height / 750) for images within its 1.15 MP. */
#define TOKCOUNT_IMAGE_TOKENS 1600
/* Anthropic's tool-use system prompt (its documentation: 313-346 tokens for Claude 3.5+). */
#define TOKCOUNT_ANTHROPIC_TOOLS_TOKENS 346

struct tokcount_prompt {
	int64_t tokens;      /* COUNT: the count; BOUND: bytes / 4 plus the overheads */
	int64_t upper_bound; /* bytes of text plus every overhead (see docs/tokens.md) */
	int64_t text_bytes;  /* raw bytes of the string values counted */
	uint32_t messages;
	bool counted;        /* the tokenizer ran (COUNT, or AUTO on a small prompt) */
	bool exact;          /* tokens is what the provider will bill (plain-text OpenAI chat
				* with an exact tokenizer, counted) */
};

/* The prompt tokens of a chat request body in dialect d, for tokenizer t. Returns 0, or
 * -1 if the body is not a JSON object with a messages array (out is then zero). */
int tokcount_prompt(struct tokcount_ctx *c, struct tokcount_tokenizer t, enum dialect d,
		    struct slice body, enum tokcount_prompt_mode mode, struct tokcount_prompt *out);

/* ---- completions, as they stream ---- */

/* One text delta in an event: raw is a JSON string's body as sent (no quotes, escapes
 * kept). part names the text it belongs to: OpenAI choice << 16 | (0 content, 1 refusal,
 * 2 reasoning_content, 16 + k tool_calls[index k] arguments); Anthropic the content block
 * index. */
struct tokcount_delta {
	struct slice raw;
	uint32_t part;
};

#define TOKCOUNT_MAX_DELTAS 16

struct tokcount_event {
	struct tokcount_delta delta[TOKCOUNT_MAX_DELTAS];
	unsigned ndelta;
	uint64_t extra_bytes;   /* raw bytes of deltas past TOKCOUNT_MAX_DELTAS (count: bytes) */
	struct usage usage;     /* what this event says about usage (usage.present) */
	bool has_prompt;        /* usage.prompt_tokens (and cached_tokens) were given */
	bool has_completion;    /* usage.completion_tokens was given */
	bool usage_only;        /* OpenAI: a chunk with no choices and a usage object, the one
				 * stream_options.include_usage adds: drop it for a client that did
				 * not ask */
	bool done;              /* OpenAI "[DONE]", Anthropic message_stop */
};

/* Scan one event's data (type: the SSE event field, may be empty) of dialect d. Returns 0,
 * or -1 if the data is not JSON of the expected shape (ev is then empty: nothing to
 * count). Zero-copy: the slices point into data. */
int tokcount_scan_event(enum dialect d, struct slice type, struct slice data,
			struct tokcount_event *ev);

struct tokcount_stream;

/* A counter for one response, using c (which must outlive it; c's thread makes every call)
 * and tokenizer t. Its memory: the unfinished tail of the text, at most TOKCOUNT_MAX_TAIL +
 * TOKCOUNT_CHUNK bytes. NULL when out of memory. Freed, a counter goes back to c for its next
 * stream (a few are kept, with small text buffers). */
struct tokcount_stream *tokcount_stream_new(struct tokcount_ctx *c, struct tokcount_tokenizer t);
void tokcount_stream_free(struct tokcount_stream *s);

/* An unfinished piece (a run of spaces or of letters) is kept up to TOKCOUNT_MAX_TAIL bytes;
 * a longer one is cut there and its count is no longer exact (tokcount_stream_exact). */
#define TOKCOUNT_MAX_TAIL (64u * 1024)
#define TOKCOUNT_CHUNK (16u * 1024)

/* Count one delta. A part other than the last one's ends the last part's text (each part is
 * tokenized on its own, as the model wrote it). Never fails: out of memory, the rest is
 * counted as bytes (an upper bound) and the count is marked inexact. */
void tokcount_stream_feed(struct tokcount_stream *s, uint32_t part, struct slice raw);

/* Scan one event, feed its deltas, remember the provider's usage. Returns what
 * tokcount_scan_event returns; ev (may be NULL) gets the scan. */
int tokcount_stream_event(struct tokcount_stream *s, enum dialect d, struct slice type,
			  struct slice data, struct tokcount_event *ev);

/* A parsed event of tokcount_stream_sse, after it was counted: te is its scan, and the event's
 * raw bytes (when ev->raw_in_frag) are at frag[off + ev->raw_start, off + ev->raw_end). */
typedef void (*tokcount_sse_fn)(void *arg, const struct sse_event *ev,
				const struct tokcount_event *te, size_t off);

/* A fragment of a stream relayed in its own dialect d, counted in one pass: p is the
 * stream's SSE parser (given every fragment through here). Events framed as the stream's
 * last delta event was ("data: D\n\n", or "event: T\ndata: D\n\n") around data of the same
 * shape are counted from their bytes, as tokcount_stream_event would count them; the parser
 * takes the others, and fn (may be NULL) sees each of those that scanned. Returns true when
 * the count went past limit (tokcount_stream_past; UINT64_MAX: no limit): the events after
 * that one are not read. */
bool tokcount_stream_sse(struct tokcount_stream *s, enum dialect d, struct sse_parser *p,
			 struct slice frag, uint64_t limit, tokcount_sse_fn fn, void *arg);

/* The text is counted once TOKCOUNT_BATCH decoded bytes wait (and at the end, and when
 * tokcount_stream_past needs it), not at every delta. */
#define TOKCOUNT_BATCH 256u

/* Completion tokens so far: the exact count of the text up to the last count, plus one token
 * per byte decoded since (fewer than TOKCOUNT_BATCH bytes, or a quarter of a long growing
 * piece; scaled for an estimate). An upper bound, short of a retokenized last piece. */
int64_t tokcount_stream_so_far(const struct tokcount_stream *s);

/* Mid-stream enforcement: so_far > limit, counting the waiting text first when the bound
 * alone is past limit, so that a stream is cut on its count, not on the bound. */
bool tokcount_stream_past(struct tokcount_stream *s, uint64_t limit);

/* End the text: the final count, tiktoken's count of the decoded text of each part (summed),
 * scaled for an estimate. Feeding after this starts a new part. */
int64_t tokcount_stream_end(struct tokcount_stream *s);

/* The count is the tokenizer's exact count (false: an estimated tokenizer, a piece longer
 * than TOKCOUNT_MAX_TAIL, or a fallback to bytes). */
bool tokcount_stream_exact(const struct tokcount_stream *s);

/* The provider's usage seen so far in the events given to tokcount_stream_event (merged:
 * OpenAI's usage chunk; Anthropic's message_start input and message_delta output). */
const struct usage *tokcount_stream_usage(const struct tokcount_stream *s);

/* Decoded text bytes fed so far (for metrics). */
uint64_t tokcount_stream_bytes(const struct tokcount_stream *s);

#endif
