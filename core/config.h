/* config.h - the gateway's YAML configuration (libyaml), loaded into one immutable struct.
 *
 * Every unknown key and bad value is an error that names file:line:column. Secrets are
 * never stored here as values read from the YAML file itself unless the operator wrote
 * them inline; *_env / *_file name where they come from and config_resolve_secret reads
 * them. Strings are owned by the config (freed by config_free).
 */
#ifndef PENSTOCK_CONFIG_H
#define PENSTOCK_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CONFIG_ERR_MAX 512

struct config_addr {
	char host[64]; /* numeric IPv4 or IPv6 literal, or "localhost" */
	uint16_t port;
};

struct config_secret {
	char *env;   /* environment variable name, or NULL */
	char *file;  /* path to a file holding the secret (trailing newline trimmed), or NULL */
	char *value; /* inline value (discouraged; logged as a warning), or NULL */
};

enum provider_kind { PROVIDER_OPENAI, PROVIDER_ANTHROPIC, PROVIDER_OPENAI_COMPAT };

/* An HTTP proxy reached with CONNECT for HTTPS egress: http://host:port, nothing else. */
struct config_proxy {
	char *url;  /* as written, NULL = none */
	char *host;
	uint16_t port;
};

/* Active health check of a provider (policy/healthcheck): GET base_url + path every
 * interval; a 2xx closes the breakers of its targets, anything else opens them. */
struct config_health_check {
	char *path;        /* e.g. /v1/models; NULL = no health check */
	uint32_t interval; /* ms between checks; default 10000 */
	uint32_t timeout;  /* ms for connect, request and status line; default 2000 */
};

struct config_provider {
	char *name;
	enum provider_kind kind;
	char *base_url;          /* as written, e.g. http://127.0.0.1:9000 or https://api.openai.com */
	bool tls;                /* scheme is https */
	char *host;              /* parsed from base_url */
	uint16_t port;           /* parsed (default 80/443) */
	char *path_prefix;       /* path part of base_url without trailing '/', "" if none */
	struct config_secret api_key;
	/* TLS (https base_url): the peer's certificate is checked against ca_file, or the
	 * system bundle when NULL; tls_verify false turns that off (logged as a warning). */
	bool tls_verify;         /* default true */
	char *ca_file;
	struct config_proxy proxy; /* CONNECT proxy; NULL url = the top-level egress_proxy */
	char *api_version;       /* anthropic-version sent upstream (default 2023-06-01) */
	struct config_health_check health_check;
};

struct config_target {
	char *provider; /* name of a config_provider */
	char *model;    /* upstream model name */
	unsigned weight;
	/* This deployment's own price and context window (cost routing); when not given,
	 * the model's. */
	bool priced;
	double input_per_mtok, output_per_mtok;
	uint32_t context_window;
};

struct config_model {
	char *name;
	double input_per_mtok, output_per_mtok; /* USD per million tokens */
	double cached_input_per_mtok;           /* prompt-cache reads; 0 = input price */
	char *tokenizer; /* o200k_base | cl100k_base | estimate (default: by provider kind) */
	char *routing; /* weighted | latency | cost | priority (default weighted) */
	struct config_target *targets;
	size_t ntargets;
	char **fallback;
	size_t nfallback;
	uint32_t context_window; /* tokens; 0 = not given */
	uint32_t max_tokens;     /* largest completion to allow; 0 = not given */
};

struct config_team {
	char *name;
	char **models;
	size_t nmodels;
	uint64_t rpm, tpm;     /* 0 = unlimited */
	double budget_usd;     /* 0 = none */
	char *budget_period;   /* daily | weekly | monthly | total (default monthly) */
	bool audit_bodies;     /* audit records keep prompt and response bodies, redacted */
};

struct config_key {
	char *name;
	char *team;
	struct config_secret key;
};

struct config_timeouts { /* milliseconds */
	uint32_t header_read;       /* default 10000 */
	uint32_t body_read;         /* default 30000 */
	uint32_t idle;              /* keep-alive idle, default 60000 */
	uint32_t upstream_connect;  /* default 5000 */
	uint32_t upstream_first_byte; /* default 120000 */
	uint32_t upstream_idle;     /* between bytes of a response, default 120000 */
	uint32_t shutdown_grace;    /* finish in-flight on SIGTERM, default 30000 */
};

#define CONFIG_MAX_STATUSES 32

/* Retries and fallback: a failed attempt (refused, reset, connect or first-byte timeout,
 * or one of on_status) before the client saw a byte is tried again on the model's next
 * target, then on its fallback models. */
struct config_retry {
	uint32_t attempts;     /* per request, the first one included; default 3 */
	uint32_t backoff_base; /* ms before retrying a target already tried; default 25 */
	uint32_t backoff_cap;  /* ms, the most one backoff waits; default 1000 */
	uint32_t deadline;     /* ms from the request's arrival after which no attempt starts;
				* default 60000 */
	uint16_t on_status[CONFIG_MAX_STATUSES]; /* default 429 500 502 503 504 529 */
	size_t non_status;
};

/* Circuit breaker per target (provider and upstream model). */
struct config_breaker {
	uint32_t failures; /* consecutive failed attempts that open it; default 5, 0 = never */
	uint32_t cooldown; /* ms open before one probe may go; default 10000 */
	/* Also opens when more than error_rate percent of the attempts in the last window
	 * failed, once at least min_requests were seen there. */
	uint32_t error_rate;   /* percent; default 50, 0 = off */
	uint32_t min_requests; /* default 20 */
	uint32_t window;       /* ms; default 10000 */
};

/* Latency routing: peak-EWMA of the time to first byte. */
struct config_latency {
	uint32_t decay;           /* ms, the estimate's time constant; default 5000 */
	uint32_t explore_percent; /* picks that go to a target other than the fastest; default 5 */
};

struct config_limits {
	uint32_t max_header_bytes;  /* default 16384 */
	uint32_t max_headers;       /* default 100 */
	uint64_t max_body_bytes;    /* default 8 MiB */
	uint32_t max_connections;   /* per worker, default 16384 */
};

struct config {
	char *path; /* file it was loaded from, or "<embedded>" */
	struct config_addr listen;    /* default 127.0.0.1:8080 */
	struct config_addr admin_listen; /* default 127.0.0.1:8081 */
	struct config_secret admin_token;
	unsigned workers;             /* 0 = auto (one per online core) */
	/* A worker polls for up to this long before it sleeps: less latency (no wake-up of
	 * an idle CPU) for more CPU time. 0 (default) = never poll. */
	uint32_t busy_poll_us;
	char *data_dir;               /* default /var/lib/penstock */
	/* Tokenizer vocabularies (o200k_base.tok, cl100k_base.tok, made by tools/tokconv);
	 * default /usr/share/penstock/tokenizers, where the package puts them. */
	char *tokenizer_dir;
	char *log_level;              /* debug | info | warn | error (default info) */
	struct config_timeouts timeouts;
	struct config_limits limits;
	struct config_retry retry;
	struct config_breaker breaker;
	struct config_latency latency;
	struct config_provider *providers;
	size_t nproviders;
	struct config_model *models;
	size_t nmodels;
	struct config_team *teams;
	size_t nteams;
	struct config_key *keys;
	size_t nkeys;
	/* Client request headers passed upstream: exact names, or prefixes ending in '*'
	 * ("x-mock-*"). Credentials and hop-by-hop headers never are. Default: none. */
	char **forward_headers;
	size_t nforward_headers;
	/* CONNECT proxy for HTTPS upstreams that name none themselves (HTTPS_PROXY-style). */
	struct config_proxy egress_proxy;
	/* enabled (default true; off: no audit records, spend is still persisted);
	 * durability batch | strict (default batch); retention_days default 90, 0 = forever;
	 * test_retention_ms: for tests only, retention in milliseconds, wins when not 0;
	 * body_max_bytes: the bound of each body kept for teams with audit_bodies (both must fit
	 * one store value with the record) */
	struct {
		bool enabled;
		char *durability;
		uint32_t retention_days;
		uint32_t test_retention_ms;
		uint32_t body_max_bytes; /* each stored body: default 16 KiB, at most 512000 */
	} audit;
	/* Access log (policy/accesslog): "stdout" (journald under systemd), "off", or the
	 * absolute path of a file opened O_APPEND and reopened on SIGHUP; default stdout.
	 * A reload does not move it: a new destination takes a restart. */
	struct { char *destination; } access_log;
};

/* Load and validate. On error returns -1 and writes "file:line:col: message" to err.
 * The config is zeroed first; on error nothing needs freeing. */
int config_load_file(const char *path, struct config *cfg, char *err, size_t errlen);
/* Same, from a string in memory; name is used in error messages. */
int config_load_string(const char *yaml, size_t len, const char *name, struct config *cfg,
		       char *err, size_t errlen);
void config_free(struct config *cfg);

/* Read a secret from env, file or inline value into a new malloc'd string.
 * Returns NULL (and err filled) when it names an env var that is unset/empty or a file
 * that can't be read. A secret with no source at all returns NULL with err[0] == 0. */
char *config_resolve_secret(const struct config_secret *s, char *err, size_t errlen);

const struct config_provider *config_find_provider(const struct config *cfg, const char *name);
const struct config_model *config_find_model(const struct config *cfg, const char *name);

/* The CONNECT proxy a provider's connections go through: its own, else egress_proxy; NULL
 * for none, and always for plain http (never proxied: expected on the local network). */
const struct config_proxy *config_provider_proxy(const struct config *cfg,
						 const struct config_provider *cp);
/* "host:port" (an IPv6 literal in brackets) into out, as a CONNECT target; omit_port
 * leaves the port out, as a Host header does for the scheme's default port. */
void config_hostport(char *out, size_t cap, const char *host, uint16_t port, bool omit_port);
/* A provider's Host header value: config_hostport without the scheme's default port. */
void config_provider_authority(const struct config_provider *cp, char *out, size_t cap);

#endif
