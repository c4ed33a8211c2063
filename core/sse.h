/* sse.h - incremental server-sent events parser (the WHATWG "event stream" rules).
 *
 * Fed arbitrary fragments of a stream (an event may be split anywhere: inside a field
 * name, a UTF-8 sequence, or between the CR and LF of a line ending), it reports each
 * complete event once. Events that arrive whole inside one fragment with at most one
 * data line are reported as slices into that fragment (no copy); others are gathered
 * into the parser's own buffer, bounded by max_event_bytes. An event whose raw bytes all lie
 * in the fragment also says where (raw_start, raw_end), so that a relay can pass the
 * fragment on without one event (cut around it) and copy nothing.
 *
 * Parsing rules (https://html.spec.whatwg.org/multipage/server-sent-events.html):
 * lines end in CRLF, LF or CR; a leading BOM is dropped; lines starting with ':' are
 * comments; "name: value" drops one space after the colon, a line without a colon is a
 * name with an empty value; "data" lines are joined with LF; "event" sets the type, "id"
 * the last event id (ignored if it contains NUL), "retry" a reconnection time (ASCII
 * digits only); unknown fields are ignored; an empty line dispatches the event, unless
 * no data line was seen (then the event is dropped, as the spec says).
 */
#ifndef PENSTOCK_SSE_H
#define PENSTOCK_SSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "str.h"

struct sse_event {
	struct slice type;  /* the "event" field; empty if none (means "message") */
	struct slice data;  /* data lines joined with LF, without the final LF */
	struct slice id;    /* the last event id (persists across events) */
	int64_t retry;      /* the "retry" field of this event, or -1 */
	bool has_id;        /* id was set at some point in the stream */
	/* raw_in_frag: the event's bytes lie in the fragment given to this sse_feed call, at
	 * [raw_start, raw_end): from its first field line (comment lines before it are not
	 * part of it) through the line ending of the empty line that dispatched it. A CR that
	 * ends a fragment may have its LF at the start of the next one: that LF is not part
	 * of it (passed on, it is an empty line that dispatches nothing). */
	bool raw_in_frag;
	size_t raw_start, raw_end;
};

/* Called once per event; the slices are valid only during the call. Return false to
 * stop parsing (sse_feed then returns SSE_STOPPED): the parser is between events, and the
 * bytes of the fragment after the event (from raw_end, when raw_in_frag) are not parsed yet;
 * the caller may feed them (or read them itself: sse_between_events). */
typedef bool (*sse_event_fn)(void *arg, const struct sse_event *ev);

enum sse_result {
	SSE_OK = 0,
	SSE_STOPPED = 1,        /* the callback asked to stop */
	SSE_E_TOO_LONG = -1,    /* an event or line over max_event_bytes: the stream is bad */
	SSE_E_NOMEM = -2,
};

struct sse_parser {
	size_t max;          /* max_event_bytes */
	struct buf line;     /* a line split across fragments */
	struct buf data;     /* data lines gathered for the current event */
	struct buf type;     /* event type, when it must outlive its fragment */
	struct buf id;       /* last event id (persists) */
	struct slice pend_data; /* the single data line still in the current fragment */
	struct slice pend_type; /* the event type still in the current fragment */
	size_t event_bytes;  /* bytes of the current event so far */
	int64_t retry;
	unsigned ndata;      /* data lines in the current event */
	bool data_copied;    /* data is in .data, not pend_data */
	bool type_copied;
	bool has_id;
	const char *frag;    /* the fragment being parsed */
	size_t line_end;     /* offset in frag just past the current line's ending */
	size_t ev_start;     /* offset in frag of the current event's first field line */
	bool ev_in_frag;     /* that line lies wholly in frag */
	bool after_cr;       /* the last fragment ended in CR: a leading LF is its pair */
	bool started;        /* past the optional BOM */
	bool failed;
};

void sse_init(struct sse_parser *p, size_t max_event_bytes);
void sse_free(struct sse_parser *p);

/* Parse a fragment. Returns SSE_OK, SSE_STOPPED, or an error (after which every call
 * returns the same error). */
int sse_feed(struct sse_parser *p, const char *frag, size_t len, sse_event_fn fn, void *arg);

/* Nothing of an event or line is held and the next byte starts a line afresh: a caller may
 * consume whole events from the start of its next fragment itself. */
bool sse_between_events(const struct sse_parser *p);

#endif
