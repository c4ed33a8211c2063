/* metrics.h - the gateway's counters and latency histograms, served at /metrics in the
 * Prometheus text format (version 0.0.4).
 *
 * Every worker owns a block of counters that only it writes (a relaxed load and store: no
 * read-modify-write, no lock, no shared cache line); the admin thread sums the blocks when
 * it renders a scrape. Each value a reader sees for one worker only grows, so the sums do
 * too.
 *
 * Labels are bounded by construction: a model, provider or team is a slot, registered by
 * name (metrics_new() the boot config's, metrics_label() those a reload adds) up to a
 * capacity fixed at metrics_new(), plus "none"; then a fixed set of status classes and a
 * fixed set of upstream error kinds. No request id, key or free text ever becomes a label.
 * A slot keeps its name for the life of the process, even after a reload removed it, so a
 * series never goes back to zero and a request of the old config can finish on its slot.
 * Families are cut along one dimension each ({model,status}, {team,status},
 * {provider,status}) rather than as a cross product, so 100 models x 20 providers x 100
 * teams x 32 workers stays in a few MiB. docs/observability.md lists them.
 */
#ifndef PENSTOCK_METRICS_H
#define PENSTOCK_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/config.h"
#include "core/upstream.h"

struct metrics;
struct engine_stats; /* core/engine.h */
struct store_stats;  /* policy/store.h */

/* Registers cfg's models, providers and teams, each kind in config order, so a boot
 * config's slots are its indexes; the names are copied (and escaped), so cfg may be freed
 * afterwards. Each kind gets room for n + clamp(n, METRICS_LABEL_HEADROOM_MIN,
 * METRICS_LABEL_HEADROOM_MAX) names, n the boot config's count: per worker, a model slot
 * costs 464 bytes, a provider's 328, a team's 128. NULL when memory ran out (or cfg repeats
 * a name, which config_load rejects). */
struct metrics *metrics_new(const struct config *cfg, unsigned workers);
void metrics_free(struct metrics *m);

#define METRICS_LABEL_HEADROOM_MIN 64
#define METRICS_LABEL_HEADROOM_MAX 256

enum metrics_label_kind { METRICS_LABEL_MODEL, METRICS_LABEL_PROVIDER, METRICS_LABEL_TEAM };

/* The slot of name (compared byte for byte), registering it if new: what
 * metrics_request, metrics_refused() and metrics_upstream_error() take. A name keeps its slot
 * for good. -1 ("none") when every slot is taken (logged once per kind), when memory ran out
 * (logged), or for a NULL name or unknown kind.
 * One thread at a time (the reload, serialised by the caller), concurrently with the
 * recording calls and metrics_render(). A slot may be recorded by any thread that got it
 * through a happens-before edge from this return (a snapshot published with a release store
 * and read with acquire is one). */
int metrics_label(struct metrics *m, enum metrics_label_kind kind, const char *name);

/* Where a request's billed usage came from. */
enum metrics_usage {
	METRICS_USAGE_NONE,     /* not billed (refused, failed before a provider answered) */
	METRICS_USAGE_PROVIDER, /* the provider's usage figures */
	METRICS_USAGE_GATEWAY,  /* the gateway's own count (the provider gave none, or a
				 * stream ended before its final usage) */
};

/* One finished request, as the worker saw it at its end. A value metrics_label() did not
 * return (or -1) counts under "none". */
struct metrics_request {
	int model;               /* slot of the model asked; -1: none */
	int provider;            /* slot of the last attempt's provider; -1: none */
	int team;                /* slot of the caller's team; -1: no team */
	int status;              /* HTTP status sent; 499 when the client went away first */
	uint64_t input_tokens, output_tokens, cached_tokens;
	int64_t cost_micro_usd;  /* as settled; negative values count as 0 */
	int64_t total_us;        /* arrival to the last byte sent */
	int64_t first_byte_us;   /* arrival to the first byte sent to the client; -1: none */
	int64_t upstream_us;     /* the last attempt, sent to its end; -1: never went upstream */
	unsigned fallbacks;      /* attempts on a fallback model (not the model asked) */
	enum metrics_usage usage;
	bool usage_disagreed;    /* see metrics_usage_disagrees() */
};

/* The provider's count and the gateway's differ by more than 10% and more than 16 tokens
 * (the rule behind penstock_token_count_disagreements_total). */
bool metrics_usage_disagrees(uint64_t provider_tokens, uint64_t gateway_tokens);

/* All the recording calls below: worker is the caller's own index (< workers); each
 * worker's counters have that one writer. An out-of-range worker is ignored. */
void metrics_request_done(struct metrics *m, unsigned worker, const struct metrics_request *r);

enum metrics_refusal { METRICS_REFUSED_RATELIMIT, METRICS_REFUSED_BUDGET };
/* A request refused at admission (team: a slot; -1: a key without a team). */
void metrics_refused(struct metrics *m, unsigned worker, int team, enum metrics_refusal why);

enum metrics_upstream_kind {
	METRICS_UP_CONNECT,
	METRICS_UP_TIMEOUT,    /* connect, first byte or idle */
	METRICS_UP_RESET,
	METRICS_UP_TLS,
	METRICS_UP_PROXY,
	METRICS_UP_PROTOCOL,
	METRICS_UP_RESOURCES,  /* the gateway's own: out of memory or descriptors */
	METRICS_UP_STATUS_5XX,
	METRICS_UP_STATUS_429,
	METRICS_UP_KIND_COUNT
};
/* The kind of a failed attempt: a transport error (err != 0) or the provider's status.
 * -1 when it is neither (a 2xx or 4xx other than 429 is not an upstream error). */
int metrics_upstream_kind(enum upstream_error err, int status);
/* One failed attempt (each attempt counts, retried or not); provider is a slot. */
void metrics_upstream_error(struct metrics *m, unsigned worker, int provider,
			    enum metrics_upstream_kind kind);

/* +1 when a request is admitted into the pipeline, -1 when it ends, on the same worker. */
void metrics_in_flight(struct metrics *m, unsigned worker, int delta);

/* The largest scrape metrics_render() writes. */
#define METRICS_RENDER_MAX (16u << 20)

/* The configuration in effect and its reloads (policy/pipeline). */
struct metrics_config_stats {
	uint64_t generation;      /* 1 at start, +1 per applied reload */
	uint64_t snapshots;       /* generations still in memory (in-flight requests hold old ones) */
	uint64_t reloads_applied, reloads_refused;
};

/* Append a whole scrape to out (the admin thread; any thread, concurrently with the
 * workers). es, ss and cs may be NULL: their families are then left out. 0, or -ENOMEM
 * when out could not grow (out->len is then back where it was). */
int metrics_render(const struct metrics *m, const struct engine_stats *es,
		   const struct store_stats *ss, const struct metrics_config_stats *cs,
		   struct buf *out);

/* The health of one routing target (provider and upstream model) as the router sees it. */
struct metrics_target_health {
	const char *provider, *model; /* config names */
	int breaker;                  /* 0 closed, 1 open, 2 half-open */
	uint64_t ok, failed;          /* attempts in the breaker's error-rate window */
};
/* Append the target health families (penstock_breaker_state, penstock_target_attempts_window)
 * for rows[0..n) to out: gauges, read now. 0 or -ENOMEM (out->len back where it was). */
int metrics_render_targets(const struct metrics_target_health *rows, size_t n, struct buf *out);

/* The Content-Type of what metrics_render() writes. */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#endif
