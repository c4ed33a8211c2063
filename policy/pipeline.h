/* pipeline.h - the request pipeline: the one place that knows the order of the steps
 * (route by path, authenticate, pick the model's upstream, forward, relay the answer).
 * It implements the engine's handler interface. */
#ifndef PENSTOCK_PIPELINE_H
#define PENSTOCK_PIPELINE_H

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

#endif
