/* admin.h - the admin plane: an HTTP/JSON API on its own listener (admin.listen, default
 * 127.0.0.1:8081) for keys, teams, spend reports and budget alerts.
 *
 * It is a second engine instance with one unpinned worker and its own handler, so it never
 * shares a ring, a connection or a core with the data plane. Its requests are few and may
 * block briefly: creating or revoking a key waits for the store's commit on the admin
 * plane's own producer ring (gov_admin_producer), which only this worker uses.
 *
 * GET /healthz and /readyz answer without a token. Everything else needs
 * "Authorization: Bearer <admin token>" (admin.token_env / token_file / token), compared
 * in constant time; with no token configured the API answers 403 (disabled). docs/admin.md
 * lists the endpoints.
 */
#ifndef PENSTOCK_ADMIN_H
#define PENSTOCK_ADMIN_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "policy/gov.h"

struct admin;

/* Resolve the admin token and start the listener. cfg and g must outlive the admin plane.
 * NULL with err filled on failure (the address cannot be bound). */
struct admin *admin_start(const struct config *cfg, struct gov *g, char *err, size_t errlen);
/* The port bound (admin.listen's, or the kernel's choice for port 0). */
uint16_t admin_port(const struct admin *a);
struct metrics;
struct engine;
/* Serve GET /metrics (open, like /healthz) from m, with data_plane's connection counts.
 * Call before traffic; m and data_plane must outlive the admin plane. */
void admin_set_metrics(struct admin *a, struct metrics *m, struct engine *data_plane);
struct admin_reload_result {
	uint64_t generation;
	size_t providers, models;
	char error[512];
};
struct metrics_config_stats;
/* The configuration's controls, on the admin thread: POST /admin/reload (token required)
 * calls reload, 0 when the new configuration is in effect, -1 with r->error filled when
 * it was refused; /metrics shows config_stats. Before traffic. */
struct admin_control {
	int (*reload)(void *ctx, struct admin_reload_result *r);
	void (*config_stats)(void *ctx, struct metrics_config_stats *out);
	/* /metrics: the routing targets' health, appended to the scrape (0 or -ENOMEM). */
	int (*render_targets)(void *ctx, struct buf *out);
	/* Call fn with the configuration in effect, which stays alive during the call. */
	void (*with_config)(void *ctx, void (*fn)(const struct config *cfg, void *arg), void *arg);
	void *ctx;
};
void admin_set_control(struct admin *a, const struct admin_control *c);
/* Stop accepting, finish what is in flight, free everything. Before gov_close(). */
void admin_stop(struct admin *a);

#endif
