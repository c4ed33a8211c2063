/* pipeline.h - the request pipeline: the one place that knows the order of the steps
 * (route by path, authenticate, pick the model's upstream, forward, relay the answer).
 * It implements the engine's handler interface. */
#ifndef PENSTOCK_PIPELINE_H
#define PENSTOCK_PIPELINE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/config.h"
#include "core/engine.h"

struct pipeline;

struct gov;

/* Build the pipeline from a loaded config: resolves secrets (provider and client keys).
 * gov (keys, limits, budgets: policy/gov) serves requests; NULL only validates the config
 * (--check-config): such a pipeline is not given to an engine. Returns NULL with err
 * filled on failure. */
struct pipeline *pipeline_new(const struct config *cfg, struct gov *gov, char *err,
			      size_t errlen);
const struct engine_handler *pipeline_handler(struct pipeline *p);

struct metrics;
struct accesslog;
/* Where each request's figures go (policy/metrics, policy/accesslog); either may be NULL.
 * Before the engine starts. */
void pipeline_observe(struct pipeline *p, struct metrics *m, struct accesslog *al);
void pipeline_free(struct pipeline *p);

/* Hot reload (docs/routing.md): `next` (malloc'd, loaded; the pipeline owns it from here,
 * also on failure; NULL: it could not be loaded, err says why, counted as refused) replaces providers, models and routing. It is checked against what the
 * process started with (policy/snapshot: a change only a restart can apply is refused)
 * and built whole before it is published with one atomic store; requests in flight finish
 * on the snapshot they started on, and each worker frees its hold on the old one when its
 * last request there ends. Thread-safe (reloads are serialised); off the request path.
 * 0, or -1 with the reason in err (the running configuration stays). */
struct pipeline_reload_info {
	uint64_t generation; /* 1 for the boot config, +1 per reload */
	size_t providers, models;
};
int pipeline_reload(struct pipeline *p, struct config *next, struct pipeline_reload_info *info,
		    char *err, size_t errlen);
struct metrics_config_stats;
/* Generation in effect, generations in memory, reloads applied and refused. Any thread. */
void pipeline_config_stats(struct pipeline *p, struct metrics_config_stats *out);
struct buf;
/* Append the current routing targets' breaker states and window counts to out, in the
 * metrics text format (policy/metrics). 0 or -ENOMEM. Any thread. */
int pipeline_render_targets(struct pipeline *p, struct buf *out);
/* fn(the configuration in effect, arg), with no reload in between (the admin plane). */
void pipeline_with_config(struct pipeline *p, void (*fn)(const struct config *cfg, void *arg),
			  void *arg);
/* Whether the current catalog has the model (the admin plane, issuing keys). */
bool pipeline_has_model(struct pipeline *p, const char *name);

#endif
