/* upstream.h - HTTP/1.1 client to upstreams: per-worker keep-alive pools.
 *
 * A pool belongs to one worker and one (host, port). A call sends a request (the
 * caller's iovec, not copied: it must stay valid until on_head or on_error) on a pooled
 * connection or a new one, parses the response head and delivers the body de-framed
 * (Content-Length, chunked or close-delimited) as slices of receive buffers.
 *
 * A pooled connection that the upstream closed is detected by the receive kept armed
 * on it while idle; if a reused connection fails before any response byte arrives,
 * the request is sent once more on a fresh connection.
 *
 * An https endpoint speaks TLS (core/tls) over the same connections: the handshake runs
 * when a connection opens, pooled connections stay encrypted, the body still arrives as
 * slices of receive buffers (decrypted in place). An endpoint with a proxy opens each
 * connection through an HTTP CONNECT tunnel. Plain http endpoints pay nothing for this.
 */
#ifndef PENSTOCK_UPSTREAM_H
#define PENSTOCK_UPSTREAM_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "engine.h"
#include "http1.h"

struct tls_client;

enum upstream_error {
	UP_E_CONNECT = 1,      /* refused, unreachable */
	UP_E_CONNECT_TIMEOUT,
	UP_E_FIRST_BYTE_TIMEOUT,
	UP_E_IDLE_TIMEOUT,     /* the response stalled after it began */
	UP_E_RESET,            /* closed or reset before the response ended */
	UP_E_PROTOCOL,         /* malformed response */
	UP_E_RESOURCES,        /* out of memory or descriptors */
	UP_E_TLS,              /* handshake or record failure (logged with the reason) */
	UP_E_PROXY,            /* the CONNECT proxy refused or garbled the tunnel (logged) */
};

const char *upstream_error_text(enum upstream_error e);

struct upstream_callbacks {
	void (*on_head)(void *arg, const struct http1_response *res);
	/* Body bytes. The callee owns one reference on buffer bid and must drop it with
	 * worker_buffer_unref when done with data. Return false to pause reading; resume
	 * with upstream_resume(). */
	bool (*on_data)(void *arg, struct slice data, uint16_t bid);
	void (*on_end)(void *arg);
	/* The call failed; head_seen says whether on_head ran. No callback follows. */
	void (*on_error)(void *arg, enum upstream_error err, bool head_seen);
};

struct upstream_pool;
struct upconn;

/* Storage for one call, owned by the caller (e.g. inside its per-request state). */
struct upstream_call {
	struct upstream_pool *pool;
	struct upconn *conn;
	const struct iovec *iov;
	unsigned niov;
	const struct upstream_callbacks *cb;
	void *arg;
	bool retried, head_seen, active;
};

/* Where a pool's connections go. Shared, read-only, by the pools of every worker; it
 * must outlive them. */
struct upstream_endpoint {
	char *host;              /* the upstream: resolved here, or by the proxy */
	uint16_t port;
	struct tls_client *tls;  /* https: the shared client context; NULL: plain http */
	char *proxy_host;        /* CONNECT proxy (https only), or NULL */
	uint16_t proxy_port;
	/* Where connections go (the proxy's address when proxied): resolved once, when the
	 * endpoint is made (at start, or by a reload: never on a worker). addrlen 0: the
	 * name did not resolve; calls then fail at once (502). */
	struct sockaddr_storage addr;
	socklen_t addrlen;
};

struct config;
struct config_provider;
/* The endpoint of a configured provider: its address (resolved here, blocking), TLS
 * context for an https base_url (a warning is logged when its verification is off), the
 * provider's proxy or else the top-level egress_proxy. Plain http providers are never proxied: they are expected on the
 * local network. False with a reason in err. */
bool upstream_endpoint_init(struct upstream_endpoint *ep, const struct config *cfg,
			    const struct config_provider *cp, char *err, size_t errlen);
void upstream_endpoint_fini(struct upstream_endpoint *ep);

/* Resolves the host (or the proxy) now; NULL (logged) on failure. */
struct upstream_pool *upstream_pool_new(struct worker *w, const struct upstream_endpoint *ep);
/* Drop one user of the pool; the last one closes its idle connections and frees it once
 * its connections are gone. */
void upstream_pool_free(struct upstream_pool *p);
/* One more user (a configuration reload whose provider has the same endpoint keeps the
 * pool and its warm connections), and the endpoint of that new configuration: its TLS
 * context (the same settings) and address, which new connections use from now on. */
void upstream_pool_share(struct upstream_pool *p, const struct upstream_endpoint *ep);
void upstream_pool_close_idle(struct upstream_pool *p);
unsigned upstream_pool_idle_count(const struct upstream_pool *p);
/* Connections opened over the pool's life: tests check reuse with it. */
uint64_t upstream_pool_opened(const struct upstream_pool *p);

void upstream_call_start(struct upstream_call *call, struct upstream_pool *p,
			 const struct iovec *iov, unsigned niov,
			 const struct upstream_callbacks *cb, void *arg);
void upstream_resume(struct upstream_call *call);
/* The caller is done with the call (client went away): no callback follows; the
 * connection is closed unless the response had ended. */
void upstream_cancel(struct upstream_call *call);

#endif
