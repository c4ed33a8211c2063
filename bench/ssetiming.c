/* ssetiming: when the SSE events of one response arrive: the gaps between them, and stalls. */
#include "ssetiming.h"

#include <assert.h>
#include <string.h>

void ssetiming_reset(struct ssetiming *t)
{
	memset(t, 0, sizeof(*t));
}

unsigned ssetiming_note(struct ssetiming *t, uint32_t events, uint64_t now_ns,
			uint64_t stall_ns, struct hdrhist *gaps)
{
	assert(events >= t->sti_events);
	if (events == t->sti_events)
		return 0;
	assert(t->sti_events == 0 || now_ns >= t->sti_last_ns);

	unsigned stalls = 0;
	uint32_t fresh = events - t->sti_events;
	if (t->sti_events > 0) {
		uint64_t gap = now_ns - t->sti_last_ns;
		if (gaps)
			hdrhist_record(gaps, gap);
		stalls = stall_ns > 0 && gap > stall_ns;
	}
	/* the rest came in the same receive as the first new one: 0 apart */
	if (gaps)
		hdrhist_record_n(gaps, 0, fresh - 1);
	t->sti_events = events;
	t->sti_last_ns = now_ns;
	t->sti_stalls += stalls;
	return stalls;
}

unsigned ssetiming_open_stall(struct ssetiming *t, uint64_t now_ns, uint64_t stall_ns)
{
	if (t->sti_events == 0 || stall_ns == 0 || now_ns < t->sti_last_ns)
		return 0;
	if (now_ns - t->sti_last_ns <= stall_ns)
		return 0;
	t->sti_stalls++;
	return 1;
}
