/* ssetiming: when the SSE events of one response arrive: the gaps between them, and stalls. */
#ifndef PENSTOCK_BENCH_SSETIMING_H
#define PENSTOCK_BENCH_SSETIMING_H

#include "hdrhist.h"

#include <stdint.h>

/*
 * The load generator learns of events in batches: after each receive, the parser's count has
 * grown by some number (often one). Events that came in the same receive arrived together,
 * so the first of them is `now - previous arrival` after the event before it and the others
 * 0 after each other. A gap over the stall threshold is a stall: for the bench, a stream that
 * stopped flowing. Time to the first event is not a gap (the caller measures it apart).
 * Pure arithmetic: no clock, no I/O.
 */
struct ssetiming {
	uint64_t sti_last_ns;	/* arrival of the newest event; meaningless while sti_events is 0 */
	uint32_t sti_events;	/* events of this response seen so far */
	uint32_t sti_stalls;	/* gaps over the threshold in this response */
};

/* Start a new response. */
void ssetiming_reset(struct ssetiming *t);

/*
 * The parser now counts `events` events in this response (never fewer than before), and the
 * bytes that completed the new ones arrived at now_ns. Records one gap per new event after
 * the response's first into gaps (unless NULL), counts the gaps over stall_ns (0: no stall
 * threshold) and returns how many stalls it added.
 */
unsigned ssetiming_note(struct ssetiming *t, uint32_t events, uint64_t now_ns,
			uint64_t stall_ns, struct hdrhist *gaps);

/*
 * The run ends with the response still open: the time since its newest event is a gap that
 * has not closed. Returns 1 (and counts it) when that is already over stall_ns, else 0.
 * Records nothing: an open gap has no length yet.
 */
unsigned ssetiming_open_stall(struct ssetiming *t, uint64_t now_ns, uint64_t stall_ns);

#endif
