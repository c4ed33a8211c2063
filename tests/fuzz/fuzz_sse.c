/* fuzz_sse.c - libFuzzer harness for core/sse: the events of a stream are the same
 * whether it is fed whole or cut in three pieces (cut points from the first two input
 * bytes), and nothing is read outside the fragments. Build and run with tests/fuzz/run. */
/* fuzz-sources: core/sse.c */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/sse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct digest {
	uint64_t hash;
	unsigned events;
};

static void mix(struct digest *d, struct slice s)
{
	for (size_t i = 0; i < s.n; i++)
		d->hash = (d->hash ^ (unsigned char)s.p[i]) * 0x100000001b3ull;
	d->hash = (d->hash ^ 0xff) * 0x100000001b3ull; /* field separator */
}

static bool on_event(void *arg, const struct sse_event *ev)
{
	struct digest *d = arg;
	mix(d, ev->type);
	mix(d, ev->data);
	mix(d, ev->id);
	d->hash ^= (uint64_t)ev->retry;
	d->events++;
	return true;
}

static int feed_pieces(const uint8_t *s, size_t n, const size_t *cuts, size_t ncuts,
		       struct digest *d)
{
	struct sse_parser p;
	sse_init(&p, 512);
	size_t at = 0;
	int rc = SSE_OK;
	for (size_t k = 0; k <= ncuts && rc == SSE_OK; k++) {
		size_t end = k < ncuts ? cuts[k] : n;
		char *frag = malloc(end - at + 1);
		memcpy(frag, s + at, end - at);
		rc = sse_feed(&p, frag, end - at, on_event, d);
		memset(frag, 0x5a, end - at); /* stale slices would now read garbage */
		free(frag);
		at = end;
	}
	sse_free(&p);
	return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	const uint8_t *s = data + 2;
	size_t n = size - 2;
	size_t cuts[2] = { n ? data[0] % (n + 1) : 0, n ? data[1] % (n + 1) : 0 };
	if (cuts[0] > cuts[1]) {
		size_t t = cuts[0];
		cuts[0] = cuts[1];
		cuts[1] = t;
	}
	struct digest whole = { 0xcbf29ce484222325ull, 0 }, split = whole;
	int rc1 = feed_pieces(s, n, NULL, 0, &whole);
	int rc2 = feed_pieces(s, n, cuts, 2, &split);
	/* An over-long event may be detected at a different event count when split (the
	 * line bound and the event bound trip at different bytes), so compare only when
	 * both runs read the stream to the end. */
	if (rc1 == SSE_OK && rc2 == SSE_OK && (whole.hash != split.hash || whole.events != split.events)) {
		fprintf(stderr, "split %zu/%zu changed the events: %u vs %u\n", cuts[0], cuts[1],
			whole.events, split.events);
		abort();
	}
	if ((rc1 == SSE_OK) != (rc2 == SSE_OK))
		abort(); /* the bound must not depend on how the stream was cut */
	return 0;
}
