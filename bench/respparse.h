/* respparse: incremental HTTP/1.1 response parsing for the load generator (framing, SSE). */
#ifndef PENSTOCK_BENCH_RESPPARSE_H
#define PENSTOCK_BENCH_RESPPARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * The load generator needs to know where a response ends (Content-Length, chunked, or
 * close-delimited), its status, whether the connection stays open, and for event streams
 * how many SSE events arrived. It never needs the body, so body bytes are counted and
 * dropped: only the header block must be contiguous, everything after it may arrive in
 * pieces of any size. No allocation, no I/O.
 */

enum respparse_result {
	RESPPARSE_ERROR = -1,	/* malformed or over a limit: close the connection */
	RESPPARSE_MORE = 0,	/* everything offered was used or must be kept; feed more */
	RESPPARSE_DONE = 1,	/* one whole response ended; bytes after it are not ours */
};

#define RESPPARSE_MAX_HEADERS	100	/* header lines; more is an error */

struct respparse {
	/* results, valid once rp_headers_done */
	int rp_status;
	bool rp_headers_done;
	bool rp_keep_alive;	/* false: the server will close after this response */
	bool rp_event_stream;	/* Content-Type: text/event-stream; SSE events are counted */
	uint64_t rp_body_bytes;	/* body bytes so far, chunk framing excluded */
	uint32_t rp_sse_events;	/* events dispatched (blank line after >= 1 data line) */
	bool rp_sse_last_done;	/* the newest event's data was exactly "[DONE]" (OpenAI's end) */

	/* private */
	bool rp_head_request;
	int rp_framing;
	size_t rp_header_scan;	/* where the search for the header end resumes */
	uint64_t rp_remaining;	/* Content-Length left, or bytes left in this chunk */
	int rp_chunk_state;
	unsigned rp_chunk_digits;
	int rp_sse_line_len;	/* chars seen on this line, saturating at 5 */
	bool rp_sse_not_data;	/* this line has failed to match "data:" */
	bool rp_sse_after_cr;
	uint8_t rp_sse_value_len;	/* leading chars of the data value that match "[DONE]" */
	bool rp_sse_value_space;	/* the one optional space after "data:" was skipped */
	bool rp_sse_value_not_done;	/* this data value has failed to match "[DONE]" */
	uint8_t rp_sse_event_data_lines; /* saturating at 2: "[DONE]" must be the only one */
	bool rp_sse_event_done;		/* the event's one data line so far is "[DONE]" */
};

/* Start a new response; head_request: the request was HEAD (no body whatever the headers). */
void respparse_reset(struct respparse *p, bool head_request);

/*
 * Feed the bytes received so far that this parser has not consumed. While the header block
 * is incomplete, nothing is consumed: the caller keeps buf and calls again with more bytes
 * appended (same start). After that, body bytes are consumed as they come.
 * Sets *consumed to the bytes used (<= len). Returns RESPPARSE_DONE when the response
 * ended after *consumed bytes, RESPPARSE_MORE when all usable bytes were used,
 * RESPPARSE_ERROR on malformed input.
 */
enum respparse_result respparse_feed(struct respparse *p, const char *buf, size_t len,
				     size_t *consumed);

/* The peer closed the connection: DONE if the body was close-delimited, else ERROR. */
enum respparse_result respparse_eof(struct respparse *p);

#endif
