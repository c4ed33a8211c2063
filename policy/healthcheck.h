/* healthcheck.h - active health checks: a thread that asks each provider that has a
 * `health_check` for its path now and then, and opens or closes the breakers of its
 * targets by the answer.
 *
 * Passive health (router.h: consecutive failures, error rate) learns that a provider is
 * down only from requests that fail on it; a check learns it first, so routing skips a
 * dead provider before a request is sent there, and takes a recovered one back without
 * waiting for a probe request. A 2xx closes the breakers of every target of the provider
 * (every upstream model of it in the health registry); anything else, a refused
 * connection or a timeout opens them until the next check is due (router_health_mark).
 *
 * One thread checks every provider, one after another, over blocking sockets with poll
 * deadlines: GET base_url path_prefix + path, HTTP/1.1, Connection: close; only the
 * status line is read. An https provider is checked over TLS (core/tls, driven over the
 * blocking socket), verified as its requests are (its ca_file or the system bundle, its
 * host name, tls_verify), through its CONNECT proxy (or the egress proxy) when it has one.
 * A check takes at most its provider's timeout (plus the name lookup,
 * for a host name). Times are CLOCK_MONOTONIC microseconds, the clock the pipeline routes
 * by.
 */
#ifndef PENSTOCK_HEALTHCHECK_H
#define PENSTOCK_HEALTHCHECK_H

#include <stddef.h>

struct config;
struct router_health;
struct healthcheck;

/* Start checking cfg's providers that have a health_check, marking the entries that the
 * registry h holds for them (so call it after router_new(cfg, ..., h, ...), on the thread
 * that calls router_new: it reads the registry). headers[i], for cfg->providers[i], is
 * sent with each check: "Name: value\r\n" lines (the provider's auth, anthropic-version),
 * or NULL for none; headers may be NULL. Everything is copied: cfg and headers may go
 * once this returns. A config with no checks gives a handle that runs no thread.
 * NULL with a reason in err (memory, thread). */
struct healthcheck *healthcheck_start(const struct config *cfg, struct router_health *h,
				      const char *const *headers, char *err, size_t errlen);
/* Stop the thread (a check in progress is abandoned at once) and free the handle. Call
 * before router_health_free. NULL is fine. */
void healthcheck_stop(struct healthcheck *hc);

#endif
