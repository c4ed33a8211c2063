/* pipeline.h - the request pipeline: the one place that knows the order of the steps
 * (route by path, authenticate, pick the model's upstream, forward, relay the answer).
 * It implements the engine's handler interface. */
#ifndef PENSTOCK_PIPELINE_H
#define PENSTOCK_PIPELINE_H

#include "core/config.h"
#include "core/engine.h"

struct pipeline;

/* Build the pipeline from a loaded config: resolves secrets (provider and client keys).
 * Returns NULL with err filled on failure. */
struct pipeline *pipeline_new(const struct config *cfg, char *err, size_t errlen);
const struct engine_handler *pipeline_handler(struct pipeline *p);
void pipeline_free(struct pipeline *p);

#endif
