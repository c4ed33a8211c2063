/* translate.h - the two chat dialects (OpenAI Chat Completions, Anthropic Messages) and
 * the translation between them: requests, responses, stream events, usage and errors.
 *
 * The pipeline calls this only when the caller's dialect differs from the provider's
 * (a full parse and rebuild, with jansson, but for the usual shapes' fast paths);
 * same-dialect traffic never comes here except for errors the gateway makes itself.
 * Nothing here knows about sockets, keys or money. Every output is complete, well-formed
 * JSON or SSE text appended to a struct buf.
 */
#ifndef PENSTOCK_TRANSLATE_H
#define PENSTOCK_TRANSLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/str.h"

enum dialect { DIALECT_OPENAI, DIALECT_ANTHROPIC };

/* Token counts as a provider reports them. */
struct usage {
	uint64_t prompt_tokens;     /* OpenAI prompt_tokens; Anthropic input_tokens
				     * + cache_creation_input_tokens + cache_read_input_tokens */
	uint64_t completion_tokens; /* OpenAI completion_tokens; Anthropic output_tokens */
	uint64_t cached_tokens;     /* prompt tokens served from the provider's cache */
	bool present;               /* the provider said anything at all */
};

/* Output bound for any one translated body or batch of events. */
#define XLAT_MAX_OUT (64u * 1024 * 1024)

struct xlat_request_opts {
	const char *upstream_model;  /* replaces "model" */
	uint32_t default_max_tokens; /* used when the target needs max_tokens and none is given */
	bool stream_usage;           /* OpenAI target, stream: ask for stream_options.include_usage */
};

/* Translate a chat request body from one dialect to the other. Returns 0 with the new
 * body appended to out, or -1 with a message for the caller (it is about the caller's
 * own input: no secrets) in err, for a body that is not valid JSON, has the wrong shape,
 * or uses a feature the other side cannot express. */
int xlat_request(enum dialect from, enum dialect to, struct slice body,
		 const struct xlat_request_opts *o, struct buf *out, char *err, size_t errlen);

/* Translate a non-streaming success body from the provider's dialect to the client's.
 * client_model is the name the client asked for; it replaces the provider's model name.
 * Fills u from the body's usage. Returns -1 on a body that is not a well-formed
 * response (the pipeline answers 502). */
int xlat_response(enum dialect from, enum dialect to, struct slice body,
		  const char *client_model, struct buf *out, struct usage *u);

/* Usage from a non-streaming body in its own dialect (same-dialect path). */
bool xlat_response_usage(enum dialect d, struct slice body, struct usage *u);

/* An error the provider returned (status and body in `from`), as an error body in the
 * client's dialect; the provider's message is kept when it can be read. Returns the
 * status to give the client (the same class: 4xx stays 4xx, 529 becomes 503 for OpenAI
 * clients, and so on). */
int xlat_error(enum dialect from, enum dialect to, int status, struct slice body, struct buf *out);

/* An error the gateway itself makes, in dialect d. kind is one of the OpenAI-style
 * types below; the Anthropic type is derived from it and the status. */
enum xlat_err_kind {
	XERR_INVALID_REQUEST, /* 400, 404, 405, 413, 431 */
	XERR_AUTHENTICATION,  /* 401 */
	XERR_PERMISSION,      /* 403 */
	XERR_RATE_LIMIT,      /* 429: rate limits */
	XERR_BUDGET,          /* 429: budget_exceeded */
	XERR_UPSTREAM,        /* 502, 503, 504 */
	XERR_INTERNAL,        /* 500 */
};
void xlat_error_body(enum dialect d, enum xlat_err_kind kind, int status, const char *code,
		     const char *message, struct buf *out);

/* ---- streams ---- */

struct xlat_stream;

/* A translator for one streamed response: SSE events from the provider in `from` become
 * SSE events in `to`. client_wants_usage: an OpenAI client that asked for
 * stream_options.include_usage gets the usage chunk; others do not. from == to is
 * allowed: events are copied through (usage still read, the usage-only chunk dropped when
 * the client did not ask for it), and end/error still write the dialect's terminal events. */
struct xlat_stream *xlat_stream_new(enum dialect from, enum dialect to, const char *client_model,
				    bool client_wants_usage);
/* One upstream event (name may be empty; data is the joined data lines). Appends zero or
 * more complete events ("event: ...\ndata: ...\n\n") to out. Returns -1 if the event
 * cannot be understood; the caller then ends the stream with xlat_stream_error. */
int xlat_stream_event(struct xlat_stream *s, struct slice event, struct slice data, struct buf *out);
/* The upstream ended cleanly. Appends what the client's dialect still needs to close
 * the stream (e.g. message_stop, or the finish chunk and "data: [DONE]"). */
void xlat_stream_end(struct xlat_stream *s, struct buf *out);
/* End the stream early with a well-formed error in the client's dialect, then its
 * terminator (upstream died, budget reached). */
void xlat_stream_error(struct xlat_stream *s, enum xlat_err_kind kind, const char *message,
		       struct buf *out);
/* Usage seen so far in the provider's events. */
const struct usage *xlat_stream_usage(const struct xlat_stream *s);
void xlat_stream_free(struct xlat_stream *s);

/* The usual shapes (a chat request of text messages, a stream's text and the events around
 * it, a plain text response) have fast paths that write, byte for byte, what the full jansson
 * translation writes. On by default; tests and benches turn them off to compare the two.
 * Process-wide: not to be changed while other threads translate. */
void xlat_set_fast(bool on);

#endif
