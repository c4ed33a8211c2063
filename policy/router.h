/* router.h - which target serves a request: per-model routing tables, target health and
 * circuit breakers.
 *
 * A router is built once from a config (router_new) and is read-only afterwards, except
 * for the health of each target, which every worker reads and writes through atomics.
 * Everything else a policy needs from one pick to the next (weighted round-robin
 * counters, latency estimates, requests in flight) lives in a router_worker that only
 * its own worker touches: routing takes no lock and shares no cache line on the hot path
 * except a target's health word.
 *
 * Policies, per model:
 *   weighted  smooth weighted round robin: the exact split over any run of picks
 *   latency   peak-EWMA of each target's time to first byte, times requests in flight,
 *             lowest wins; one pick in explore_every goes to another target so a target
 *             that got faster is noticed
 *   cost      cheapest target for the request's estimated tokens among those whose
 *             context window fits it (all of them if none fits: the provider judges)
 *   priority  first usable target in the order given
 * A target is usable unless its breaker is open. A breaker opens after `failures`
 * consecutive failed attempts, or when more than `error_rate` percent of the attempts in
 * the last `window` failed (once at least `min_requests` were seen there); after
 * `cooldown` one request (the probe) may go through (half-open); its success closes the
 * breaker and restarts its window, its failure opens it again.
 *
 * Health outlives routers: it lives in a registry (struct router_health), one entry per
 * (provider name, provider base_url, upstream model), so that a reload, which builds a
 * new router while the old one still serves requests in flight, keeps the breakers of
 * the targets that still exist. Both routers may be used by workers at the same time;
 * they share the entries. Breaker options are the router's own, so a reload can change
 * them: whichever router a report or a pick goes through applies its own options to the
 * shared entry (its failures, error rate, window and cool-down), and a window whose
 * length changed restarts the counts while both routers report.
 *
 * Threads: router_new, router_free, router_health_new/free and router_health_entries are
 * called by one thread at a time (the caller serialises them: start-up, then reloads);
 * picks and reports run concurrently on workers through any live router. Entries are
 * allocated one by one and freed only by router_health_free, which must come after every
 * router (and health checker) that uses the registry is gone.
 *
 * Time is passed in (microseconds, any monotonic origin) so tests control it.
 */
#ifndef PENSTOCK_ROUTER_H
#define PENSTOCK_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/str.h"

struct config;

#define ROUTER_MAX_TARGETS 64 /* per model: a request's tried set is one 64-bit mask */

enum route_policy { ROUTE_WEIGHTED, ROUTE_LATENCY, ROUTE_COST, ROUTE_PRIORITY };

struct router_target {
	unsigned provider;          /* index into config.providers */
	const char *upstream_model; /* owned by the config */
	unsigned weight;
	double input_per_tok, output_per_tok; /* USD */
	uint32_t context_window;    /* tokens; 0 = unknown */
	unsigned health;            /* its health entry (registry: one per provider, upstream model) */
	unsigned slot;              /* index of this target's per-worker state */
};

struct router_model {
	const char *name;           /* owned by the config */
	unsigned index;
	enum route_policy policy;
	const struct router_target *targets;
	size_t ntargets;
	const unsigned *fallback;   /* indexes of the models tried after this one's targets */
	size_t nfallback;
	uint32_t max_tokens;        /* the catalog's default completion size; 0 = none */
};

struct router_opts {
	uint32_t breaker_failures;    /* consecutive failures that open a breaker; 0 = never */
	uint64_t breaker_cooldown_us; /* open this long before a probe may go */
	/* Error-rate rule: open when more than error_rate percent of the attempts in the last
	 * window_us failed (failed and timed out; cancelled ones do not count), once at least
	 * min_requests were seen there. error_rate 0 or window_us 0 = off. */
	uint32_t breaker_error_rate;
	uint32_t breaker_min_requests;
	uint64_t breaker_window_us;
	uint64_t probe_timeout_us;    /* a probe that never reports frees the slot after this */
	uint64_t latency_decay_us;    /* peak-EWMA time constant */
	unsigned explore_every;       /* latency: one pick in this many explores; 0 = never */
};

/* What a request needs, for cost routing: estimated prompt tokens and completion size. */
struct route_req {
	uint32_t prompt_tokens;
	uint32_t max_tokens; /* 0: the model's max_tokens, else a nominal size */
};

enum route_outcome {
	ROUTE_OK,        /* the target answered (any status that is not a failure) */
	ROUTE_STARTED,   /* a stream began: its latency counts now, its health at its end
			  * (router_stream_end) */
	ROUTE_FAILED,    /* refused, reset, bad response, or a status that triggers fallback */
	ROUTE_TIMEOUT,   /* connect or first-byte timeout */
	ROUTE_CANCELLED, /* the client went away: says nothing about the target */
};

enum breaker_state { BREAKER_CLOSED, BREAKER_OPEN, BREAKER_HALF_OPEN };

struct router;
struct router_worker;
struct router_health;       /* the registry of target health, shared by routers */
struct router_health_entry; /* one target's health: breaker and window counts */

/* NULL if out of memory. */
struct router_health *router_health_new(void);
/* Frees every entry: only once no router or health checker uses the registry. */
void router_health_free(struct router_health *h);
/* The registry's entries for one provider (every upstream model of it routed by a router
 * built so far), at most cap of them into out; returns how many there are in all. Same
 * thread rule as router_new. */
size_t router_health_entries(struct router_health *h, const char *provider,
			     const char *base_url, struct router_health_entry **out, size_t cap);
/* An active health check's verdict on a target. ok: close its breaker (whatever its
 * state). Not ok: open it (a closed or open one) until now_us + cooldown_us at least; a
 * half-open one is left to its probe. Safe from any thread. */
void router_health_mark(struct router_health_entry *e, bool ok, uint64_t cooldown_us,
			uint64_t now_us);

/* NULL with a reason in err (a model with more than ROUTER_MAX_TARGETS targets, memory).
 * health: the registry whose entries this router uses (found or added for each target);
 * NULL: a private one, freed with the router. */
struct router *router_new(const struct config *cfg, const struct router_opts *o,
			  struct router_health *health, char *err, size_t errlen);
void router_free(struct router *r);

const struct router_model *router_find(const struct router *r, struct slice name);
const struct router_model *router_model_at(const struct router *r, unsigned index);

/* Per-worker state; NULL if out of memory. */
struct router_worker *router_worker_new(const struct router *r);
void router_worker_free(struct router_worker *rw);

/* One of m's targets for a request, skipping those whose bit is set in `tried` and those
 * whose breaker is open: its index in m->targets, or -1 if none is usable now. *probe
 * says the pick is a half-open breaker's single probe. Every pick must be answered by one
 * router_report. */
int router_pick(struct router_worker *rw, const struct router_model *m, uint64_t tried,
		const struct route_req *q, uint64_t now_us, bool *probe);
/* How the attempt on m->targets[t] went; elapsed_us is its time to first byte (or to the
 * failure). */
void router_report(struct router_worker *rw, const struct router_model *m, unsigned t,
		   bool probe, enum route_outcome o, uint64_t elapsed_us, uint64_t now_us);
/* How a stream that began (ROUTE_STARTED) ended: whole (ok), or broken by the target (a
 * failure for its breaker, as a refused connection is). A stream the client left or the
 * gateway cut says nothing of the target: no call. */
void router_stream_end(struct router_worker *rw, const struct router_model *m, unsigned t,
		       bool ok, uint64_t now_us);
/* Whether m has a target not in `tried` that could be picked now (no side effects). */
bool router_has_usable(const struct router *r, const struct router_model *m, uint64_t tried,
		       uint64_t now_us);
/* The earliest time an open breaker among m's targets lets a probe through, or 0. */
uint64_t router_next_probe_us(const struct router *r, const struct router_model *m);

enum breaker_state router_breaker(const struct router *r, const struct router_target *t);
/* The attempts on t's health entry that succeeded and failed in r's window up to now_us
 * (the window restarts when the breaker closes). */
void router_health_counts(const struct router *r, const struct router_target *t,
			  uint64_t now_us, uint64_t *ok, uint64_t *fail);
/* The health entry a target reports to (for a health checker or metrics). */
struct router_health_entry *router_health_of(const struct router *r,
					     const struct router_target *t);
/* This worker's latency estimate for a target (microseconds; 0 = no sample yet). */
double router_latency_us(const struct router_worker *rw, const struct router_target *t);

const char *route_policy_name(enum route_policy p);

#endif
