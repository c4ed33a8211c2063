/* snapshot.c - a generation of providers, catalog and routing; see snapshot.h. */
#include "snapshot.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "policy/router.h"
#include "providers/provider.h"

static char *host_header(const struct config_provider *cp)
{
	char hostport[300], line[320];
	config_provider_authority(cp, hostport, sizeof(hostport));
	snprintf(line, sizeof(line), "Host: %s\r\n", hostport);
	return strdup(line);
}

static bool provider_init(struct snapshot_provider *p, const struct config *cfg,
			  const struct config_provider *cp, char *err, size_t errlen)
{
	p->cfg = cp;
	if (!upstream_endpoint_init(&p->ep, cfg, cp, err, errlen))
		return false;
	char serr[256] = "";
	char *key = config_resolve_secret(&cp->api_key, serr, sizeof(serr));
	if (!key && serr[0]) {
		snprintf(err, errlen, "provider %s: %s", cp->name, serr);
		return false;
	}
	p->api = provider_api(cp->kind);
	p->auth_header = provider_auth_headers(cp->kind, key, cp->api_version);
	if (key) {
		explicit_bzero(key, strlen(key));
		free(key);
	}
	p->host_header = host_header(cp);
	if (!p->auth_header || !p->host_header) {
		snprintf(err, errlen, "out of memory");
		return false;
	}
	return true;
}

static void provider_fini(struct snapshot_provider *p)
{
	if (p->auth_header)
		explicit_bzero(p->auth_header, strlen(p->auth_header));
	free(p->auth_header);
	free(p->host_header);
	if (p->cfg)
		upstream_endpoint_fini(&p->ep);
}

static _Atomic uint64_t live; /* snapshots not yet freed, for the metrics */

uint64_t snapshot_live(void) { return atomic_load_explicit(&live, memory_order_relaxed); }

static void snapshot_free(struct snapshot *s)
{
	atomic_fetch_sub_explicit(&live, 1, memory_order_relaxed);
	for (size_t i = 0; i < s->nproviders; i++)
		provider_fini(&s->providers[i]);
	free(s->providers);
	router_free(s->router);
	free(s->prices);
	free(s->teams);
	free(s->metrics_model);
	free(s->metrics_provider);
	if (s->owned) {
		config_free(s->owned);
		free(s->owned);
	}
	free(s);
}

/* Client keys live in gov; their secrets are checked here too, so --check-config and a
 * reload see an unset key_env before anything runs with it. */
static bool keys_resolve(const struct config *cfg, char *err, size_t errlen)
{
	for (size_t i = 0; i < cfg->nkeys; i++) {
		char serr[256] = "";
		char *secret = config_resolve_secret(&cfg->keys[i].key, serr, sizeof(serr));
		if (!secret) {
			snprintf(err, errlen, "key %s: %s", cfg->keys[i].name,
				 serr[0] ? serr : "no key_env, key_file or key given");
			return false;
		}
		explicit_bzero(secret, strlen(secret));
		free(secret);
	}
	return true;
}

struct snapshot *snapshot_new(const struct config *cfg, bool own, struct router_health *health,
			      char *err, size_t errlen)
{
	struct snapshot *s = calloc(1, sizeof(*s));
	if (!s) {
		if (own) {
			config_free((struct config *)cfg);
			free((struct config *)cfg);
		}
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	atomic_fetch_add_explicit(&live, 1, memory_order_relaxed);
	s->cfg = cfg;
	s->owned = own ? (struct config *)cfg : NULL;
	atomic_init(&s->refs, 1);
	s->providers = calloc(cfg->nproviders + 1, sizeof(*s->providers));
	s->prices = calloc(cfg->nmodels + 1, sizeof(*s->prices));
	s->metrics_model = calloc(cfg->nmodels + 1, sizeof(int));
	s->metrics_provider = calloc(cfg->nproviders + 1, sizeof(int));
	s->teams = calloc(cfg->nteams + 1, sizeof(*s->teams));
	if (!s->providers || !s->prices || !s->metrics_model || !s->metrics_provider || !s->teams) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	for (size_t i = 0; i < cfg->nproviders; i++) {
		s->nproviders = i + 1;
		if (!provider_init(&s->providers[i], cfg, &cfg->providers[i], err, errlen))
			goto fail;
		s->metrics_provider[i] = -1;
	}
	for (size_t i = 0; i < cfg->nteams; i++)
		s->teams[i] = (struct snapshot_team){
			.models = (const char *const *)cfg->teams[i].models,
			.nmodels = cfg->teams[i].nmodels,
			.audit_bodies = cfg->teams[i].audit_bodies,
		};
	for (size_t i = 0; i < cfg->nmodels; i++) {
		s->metrics_model[i] = -1;
		if (budget_prices_from_model(&cfg->models[i], &s->prices[i])) {
			snprintf(err, errlen, "model %s: prices out of range", cfg->models[i].name);
			goto fail;
		}
	}
	const struct config_timeouts *t = &cfg->timeouts;
	struct router_opts ro = {
		.breaker_failures = cfg->breaker.failures,
		.breaker_cooldown_us = (uint64_t)cfg->breaker.cooldown * 1000,
		/* a probe that has not answered by then never will */
		.probe_timeout_us = ((uint64_t)t->upstream_connect + t->upstream_first_byte) * 1000,
		.latency_decay_us = (uint64_t)cfg->latency.decay * 1000,
		.explore_every = cfg->latency.explore_percent ? 100 / cfg->latency.explore_percent : 0,
		.breaker_error_rate = cfg->breaker.error_rate,
		.breaker_min_requests = cfg->breaker.min_requests,
		.breaker_window_us = (uint64_t)cfg->breaker.window * 1000,
	};
	s->router = router_new(cfg, &ro, health, err, errlen);
	if (!s->router || !keys_resolve(cfg, err, errlen))
		goto fail;
	return s;
fail:
	snapshot_free(s);
	return NULL;
}

void snapshot_ref(struct snapshot *s) { atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed); }

void snapshot_unref(struct snapshot *s)
{
	/* acq_rel: whatever the other holders did with it happens before the free */
	if (s && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
		snapshot_free(s);
}

/* ---------------------------------------------------------------- what may change */

static bool str_same(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

static const char *proxy_of(const struct config *cfg, const struct config_provider *cp)
{
	const struct config_proxy *px = config_provider_proxy(cfg, cp);
	return px ? px->url : NULL;
}

bool snapshot_same_endpoint(const struct snapshot *a, size_t i, const struct snapshot *b,
			    size_t j)
{
	const struct config_provider *x = a->providers[i].cfg, *y = b->providers[j].cfg;
	return str_same(x->host, y->host) && x->port == y->port && x->tls == y->tls &&
	       x->tls_verify == y->tls_verify && str_same(x->ca_file, y->ca_file) &&
	       str_same(proxy_of(a->cfg, x), proxy_of(b->cfg, y));
}

static bool secret_same(const struct config_secret *a, const struct config_secret *b)
{
	return str_same(a->env, b->env) && str_same(a->file, b->file) &&
	       str_same(a->value, b->value);
}

static bool addr_same(const struct config_addr *a, const struct config_addr *b)
{
	return a->port == b->port && strcmp(a->host, b->host) == 0;
}

/* What of a team is bound to running state: its name (issued keys name it), whether it
 * has a rate-limit subject and a budget, and the budget's period (its spend counter). */
static bool team_same(const struct config_team *a, const struct config_team *b)
{
	return str_same(a->name, b->name) && (a->rpm || a->tpm) == (b->rpm || b->tpm) &&
	       (a->budget_usd > 0) == (b->budget_usd > 0) &&
	       str_same(a->budget_period, b->budget_period);
}

static bool timeouts_same(const struct config_timeouts *a, const struct config_timeouts *b)
{
	return a->header_read == b->header_read && a->body_read == b->body_read &&
	       a->idle == b->idle && a->upstream_connect == b->upstream_connect &&
	       a->upstream_first_byte == b->upstream_first_byte &&
	       a->upstream_idle == b->upstream_idle && a->shutdown_grace == b->shutdown_grace;
}

static bool limits_same(const struct config_limits *a, const struct config_limits *b)
{
	return a->max_header_bytes == b->max_header_bytes && a->max_headers == b->max_headers &&
	       a->max_body_bytes == b->max_body_bytes && a->max_connections == b->max_connections;
}

static const char *restart_only(const struct config *a, const struct config *b)
{
	if (!addr_same(&a->listen, &b->listen))
		return "listen";
	if (!addr_same(&a->admin_listen, &b->admin_listen))
		return "admin.listen";
	if (!secret_same(&a->admin_token, &b->admin_token))
		return "admin.token";
	if (a->workers != b->workers)
		return "workers";
	if (!str_same(a->log_level, b->log_level))
		return "log_level";
	if (a->busy_poll_us != b->busy_poll_us)
		return "busy_poll_us";
	if (!str_same(a->data_dir, b->data_dir))
		return "data_dir";
	if (!str_same(a->tokenizer_dir, b->tokenizer_dir))
		return "tokenizer_dir";
	if (!timeouts_same(&a->timeouts, &b->timeouts))
		return "timeouts";
	if (!limits_same(&a->limits, &b->limits))
		return "limits";
	if (a->audit.enabled != b->audit.enabled || !str_same(a->audit.durability, b->audit.durability) ||
	    a->audit.retention_days != b->audit.retention_days ||
	    a->audit.test_retention_ms != b->audit.test_retention_ms ||
	    a->audit.body_max_bytes != b->audit.body_max_bytes)
		return "audit";
	if (!str_same(a->access_log.destination, b->access_log.destination))
		return "access_log";
	if (a->nteams != b->nteams)
		return "teams: a team added or removed";
	for (size_t i = 0; i < a->nteams; i++)
		if (!team_same(&a->teams[i], &b->teams[i]))
			return "teams: a name, the order, a budget period, or whether a team has "
			       "limits or a budget";
	if (a->nkeys != b->nkeys)
		return "keys";
	for (size_t i = 0; i < a->nkeys; i++)
		if (!str_same(a->keys[i].name, b->keys[i].name) ||
		    !str_same(a->keys[i].team, b->keys[i].team) ||
		    !secret_same(&a->keys[i].key, &b->keys[i].key))
			return "keys";
	return NULL;
}

int snapshot_reloadable(const struct config *running, const struct config *next, char *err,
			size_t errlen)
{
	const char *what = restart_only(running, next);
	if (!what)
		return 0;
	snprintf(err, errlen,
		 "%s%s: a reload cannot apply that (it is bound to running state); restart "
		 "penstock to apply it, the running configuration stays",
		 what, strchr(what, ':') ? "" : " changed");
	return -1;
}
