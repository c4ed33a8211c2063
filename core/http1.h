/* http1.h - zero-copy HTTP/1.1 request/response head parser and chunked body decoder.
 *
 * The parser never allocates and never copies: every field it returns is a slice into
 * the caller's buffer. It keeps no state between calls for heads: feed it the whole
 * buffer received so far; it answers HTTP1_INCOMPLETE until the head is complete.
 * The chunked decoder is the only stateful piece; it does not modify the buffer and
 * yields data slices that point into it.
 *
 * Strictness (request smuggling): both Content-Length and Transfer-Encoding,
 * conflicting or malformed Content-Length, a Transfer-Encoding other than a final
 * "chunked", obs-fold, bare CR or LF, NUL, invalid token characters in method or
 * header names, whitespace before the colon, all reject with HTTP1_E_BAD (400).
 */
#ifndef PENSTOCK_HTTP1_H
#define PENSTOCK_HTTP1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "str.h"

enum http1_result {
	HTTP1_INCOMPLETE = -1,      /* need more bytes */
	HTTP1_E_BAD = -2,           /* malformed or ambiguous: 400 */
	HTTP1_E_HEADER_TOO_BIG = -3, /* head over max_header_bytes or too many headers: 431 */
	HTTP1_E_BODY_TOO_BIG = -4,  /* Content-Length over max_body_bytes: 413 */
	HTTP1_E_VERSION = -5,       /* not HTTP/1.0 or HTTP/1.1: 505 */
	HTTP1_E_NOT_IMPLEMENTED = -6, /* unknown transfer coding: 501 */
};

/* The HTTP status code that an error result maps to (400 for unknown values). */
int http1_error_status(int result);
const char *http1_error_text(int result);

/* A zero limit means "no limit" (the head length is still capped at INT_MAX). */
struct http1_limits {
	size_t max_header_bytes; /* request line + headers + final CRLF */
	unsigned max_headers;
	uint64_t max_body_bytes; /* checked against Content-Length by the request parser */
};

struct http1_header {
	struct slice name;  /* as sent; compare case-insensitively */
	struct slice value; /* leading and trailing OWS trimmed */
};

enum http1_body {
	HTTP1_BODY_NONE,    /* no body (request without CL/TE; 1xx/204/304 or HEAD response) */
	HTTP1_BODY_LENGTH,  /* content_length bytes follow */
	HTTP1_BODY_CHUNKED, /* chunked transfer coding */
	HTTP1_BODY_CLOSE,   /* responses only: body runs until the connection closes */
};

struct http1_request {
	struct slice method;
	struct slice target;
	int minor_version; /* 0 or 1 */
	struct http1_header *headers; /* caller-provided array */
	unsigned nheaders;
	enum http1_body body;
	uint64_t content_length; /* valid when body == HTTP1_BODY_LENGTH */
	bool keep_alive;         /* after version default and Connection header */
	bool expect_continue;    /* Expect: 100-continue */
	size_t head_len;         /* bytes of the head, including the final CRLF */
};

/* Parse a request head from buf[0..len). headers/max_headers is the caller's storage
 * (max_headers must be >= lim->max_headers to honour the limit exactly).
 * Returns head length (> 0) when complete, or an enum http1_result (< 0).
 * Leading empty lines (CRLF) before the request line are skipped as RFC 9112 allows
 * and counted in head_len. */
int http1_parse_request(const char *buf, size_t len, const struct http1_limits *lim,
			struct http1_request *req, struct http1_header *headers, unsigned max_headers);

struct http1_response {
	int status;
	struct slice reason;
	int minor_version;
	struct http1_header *headers;
	unsigned nheaders;
	enum http1_body body;
	uint64_t content_length;
	bool keep_alive;
	size_t head_len;
};

/* Parse a response head. request_was_head: the request was HEAD (no body follows).
 * Same return contract as http1_parse_request. Responses without CL/TE (and not
 * 1xx/204/304/HEAD) are HTTP1_BODY_CLOSE and keep_alive is false. */
int http1_parse_response(const char *buf, size_t len, const struct http1_limits *lim,
			 bool request_was_head, struct http1_response *res,
			 struct http1_header *headers, unsigned max_headers);

/* Find a header by name (case-insensitive); NULL if absent. */
const struct http1_header *http1_find_header(const struct http1_header *headers, unsigned n,
					     const char *name);

/* Chunked decoder. Zero-initialise, then call http1_chunked_next repeatedly on the
 * unconsumed bytes. It never modifies the buffer. Limits: chunk-size lines and
 * trailer lines are bounded (HTTP1_E_BAD beyond 4 KiB of trailers/extensions),
 * total body bytes bounded by max_body (0 = unlimited; over it: HTTP1_E_BODY_TOO_BIG). */
struct http1_chunked {
	uint64_t remaining; /* bytes left in the current chunk's data */
	uint64_t total;     /* data bytes decoded so far */
	uint64_t max_body;
	unsigned state;     /* internal */
	unsigned line_bytes; /* internal: bytes of the current size/trailer line seen */
	unsigned trailer_bytes; /* internal */
};

enum http1_chunked_result {
	HTTP1_CHUNK_DATA = 1,  /* *data is a slice of body bytes; *consumed bytes used */
	HTTP1_CHUNK_MORE = 0,  /* all input consumed (*consumed == len), need more */
	HTTP1_CHUNK_DONE = 2,  /* last chunk and trailers seen; *consumed bytes used */
	/* or an enum http1_result error (< 0) */
};

/* Decode from buf[0..len). Sets *consumed to how many bytes were used (always; on
 * DATA and DONE the caller continues from buf + *consumed). */
int http1_chunked_next(struct http1_chunked *d, const char *buf, size_t len, size_t *consumed,
		       struct slice *data);

/* Select the SIMD scanner (SSE4.2/AVX2/scalar) for this CPU. Called once at start-up;
 * parsing before it uses the scalar path. Returns the name of the chosen path. */
const char *http1_init(void);

#endif
