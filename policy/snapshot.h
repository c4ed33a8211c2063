/* snapshot.h - one immutable generation of what a reload replaces: the providers (their
 * resolved keys, request headers and TLS contexts), the model catalog with its routing
 * tables, and the prices budgets are reserved at.
 *
 * A snapshot is built whole off the request path (snapshot_new) and never changes after.
 * The pipeline publishes the current one with an atomic pointer; each worker keeps a
 * reference for as long as it has requests on it, so in-flight requests finish on the
 * snapshot they started on while new ones take the new one. The last snapshot_unref frees
 * it, on whichever thread drops it.
 *
 * What a reload may change is the part in here: providers, models, routing, retry,
 * breaker, latency, forward_headers, egress_proxy, and of each team its model list,
 * audit_bodies, and the amounts of its limits and budget (policy/gov applies those).
 * Everything else (the listeners, workers, log level, timeouts, limits, data_dir,
 * tokenizers, audit, access log, bootstrap keys, which teams there are, whether a team
 * has limits or a budget and its period) is bound to running state: snapshot_reloadable
 * names the first of those that differs, and the reload is refused with that reason.
 */
#ifndef PENSTOCK_SNAPSHOT_H
#define PENSTOCK_SNAPSHOT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/upstream.h"
#include "policy/budget.h"

struct router;
struct router_health;

/* A team's rules that a reload may change (its limits and budget amounts live in gov). */
struct snapshot_team {
	const char *const *models; /* NULL: every model */
	size_t nmodels;
	bool audit_bodies;
};

/* A provider as requests are sent to it. */
struct snapshot_provider {
	const struct config_provider *cfg;
	const struct provider_api *api;
	char *auth_header; /* "Authorization: Bearer ...\r\n", "x-api-key: ...\r\n..." or "" */
	char *host_header; /* "Host: host[:port]\r\n" */
	struct upstream_endpoint ep;
};

struct snapshot {
	const struct config *cfg;
	struct snapshot_provider *providers; /* cfg's, in its order */
	size_t nproviders;
	struct router *router;
	struct budget_prices *prices;        /* per cfg->models[i] */
	struct snapshot_team *teams;         /* per cfg->teams[i]: the boot config's order */
	/* The labels metrics count each model and provider under (policy/metrics slots);
	 * -1: none. Filled by the pipeline, which knows the metrics. */
	int *metrics_model, *metrics_provider;
	uint64_t generation;                 /* 1 for the boot config, +1 per reload */
	_Atomic unsigned refs;
	struct config *owned;                /* freed with the snapshot, or NULL */
};

/* Build a snapshot of cfg: resolves provider and client key secrets, sets up endpoints and
 * the router (breaker state shared through health, which may be NULL). own: cfg was
 * malloc'd and the snapshot frees it (config_free + free) when it goes, also on failure.
 * One reference is held by the caller. NULL with err filled on failure. */
struct snapshot *snapshot_new(const struct config *cfg, bool own, struct router_health *health,
			      char *err, size_t errlen);
/* Snapshots alive in the process (a leak shows here). */
uint64_t snapshot_live(void);
void snapshot_ref(struct snapshot *s);
void snapshot_unref(struct snapshot *s);

/* Whether provider i of a and provider j of b are reached the same way (host, port, TLS
 * and its verification settings, proxy): a reload keeps the pooled connections then. */
bool snapshot_same_endpoint(const struct snapshot *a, size_t i, const struct snapshot *b,
			    size_t j);

/* 0 if `next` differs from `running` only in what a reload may change; -1 with the reason
 * ("teams: ... takes a restart") in err otherwise. */
int snapshot_reloadable(const struct config *running, const struct config *next, char *err,
			size_t errlen);

#endif
