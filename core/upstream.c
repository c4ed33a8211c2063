/* upstream.c - per-worker keep-alive connection pools and the HTTP/1.1 client call.
 *
 * A plain connection sends the caller's iovec and parses what it receives in place. A TLS
 * connection runs through phases first (CONNECT tunnel, handshake) with receive and send
 * handlers of its own; once ready it encrypts the request from the iovec in bounded
 * batches and decrypts each receive buffer in place, then parses it exactly as a plain
 * connection does. Which handlers a connection uses is fixed when it opens, so plain
 * connections never test for TLS on their receive and send paths.
 */
#include "upstream.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buf.h"
#include "config.h"
#include "log.h"
#include "tls.h"

#define UP_MAX_HEAD 65536
#define UP_MAX_HEADERS 100
#define UP_MAX_PROXY_HEAD 8192
#define UP_TLS_BATCH 65536     /* request plaintext encrypted per send */
#define UP_MAX_OUT (256 * 1024) /* ciphertext waiting to be sent */

struct upstream_pool {
	struct worker *w;
	char *host;
	uint16_t port;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	struct upconn *idle; /* LIFO: the most recently used connection is warmest */
	unsigned nidle, nconns;
	uint64_t opened;
	unsigned users;      /* views sharing the pool (upstream_pool_share) */
	bool freeing;
	/* https */
	struct tls_client *tls;
	struct tls_session_slot session;
	/* CONNECT proxy (addr is the proxy's then) */
	char *proxy_host;
	uint16_t proxy_port;
	char *connect_req;
	size_t connect_len;
};

enum up_phase { PH_TUNNEL, PH_HANDSHAKE, PH_READY };

struct upconn {
	struct ev ev_connect, ev_send, ev_recv;
	struct timer timer;
	struct upstream_pool *pool;
	struct upconn *idle_prev, *idle_next;
	struct upstream_call *call;
	int fd;
	unsigned refs;
	bool closing, recv_armed, in_pool, reused, any_byte, head_done, body_done;
	bool paused;

	/* TLS (NULL: plain). Ciphertext to send is moved from the SSL to out and sent from
	 * there; one send at a time. */
	struct tls_conn *tls;
	uint8_t phase;
	bool out_busy, req_pending;
	struct buf out;
	size_t out_off;

	/* send progress (of the request's plaintext) */
	struct iovec iov[8];
	struct msghdr msg;
	size_t send_off, send_total;

	/* response */
	struct buf head; /* a response head gathered across receive buffers */
	struct http1_response res;
	struct http1_header hdrs[UP_MAX_HEADERS];
	uint64_t body_left;
	struct http1_chunked chunked;

	/* a receive buffer whose processing was paused by the consumer */
	uint16_t pbid;
	size_t poff, plen;
};

static const struct http1_limits up_limits = {
	.max_header_bytes = UP_MAX_HEAD, .max_headers = UP_MAX_HEADERS, .max_body_bytes = 0,
};

const char *upstream_error_text(enum upstream_error e)
{
	switch (e) {
	case UP_E_CONNECT: return "upstream refused the connection";
	case UP_E_CONNECT_TIMEOUT: return "upstream connect timed out";
	case UP_E_FIRST_BYTE_TIMEOUT: return "upstream did not answer in time";
	case UP_E_IDLE_TIMEOUT: return "upstream response stalled";
	case UP_E_RESET: return "upstream closed the connection";
	case UP_E_PROTOCOL: return "upstream sent a malformed response";
	case UP_E_RESOURCES: return "gateway out of resources";
	case UP_E_TLS: return "upstream TLS failure";
	case UP_E_PROXY: return "egress proxy refused the tunnel";
	}
	return "upstream error";
}

/* ---------------------------------------------------------------- pool */

/* Through a proxy only the proxy is resolved here: the proxy resolves the upstream. A
 * name that does not resolve leaves the endpoint without an address: its calls fail at once
 * (502) and the gateway keeps serving the other providers. Always true. */
static bool endpoint_resolve(struct upstream_endpoint *ep)
{
	const char *host = ep->proxy_host ? ep->proxy_host : ep->host;
	uint16_t port = ep->proxy_host ? ep->proxy_port : ep->port;
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
	struct addrinfo *ai;
	char portstr[8];
	snprintf(portstr, sizeof(portstr), "%u", port);
	int rc = getaddrinfo(host, portstr, &hints, &ai);
	if (rc) {
		log_error("upstream %s:%u: %s: requests to it fail until a reload or restart "
			  "resolves it",
			  host, port, gai_strerror(rc));
		return true;
	}
	memcpy(&ep->addr, ai->ai_addr, ai->ai_addrlen);
	ep->addrlen = ai->ai_addrlen;
	freeaddrinfo(ai);
	return true;
}

bool upstream_endpoint_init(struct upstream_endpoint *ep, const struct config *cfg,
			    const struct config_provider *cp, char *err, size_t errlen)
{
	*ep = (struct upstream_endpoint){ .host = strdup(cp->host), .port = cp->port };
	if (!ep->host) {
		snprintf(err, errlen, "provider %s: out of memory", cp->name);
		return false;
	}
	if (!cp->tls)
		return endpoint_resolve(ep);
	char why[CONFIG_ERR_MAX];
	ep->tls = tls_client_new(cp->host, cp->tls_verify, cp->ca_file, why, sizeof(why));
	if (!ep->tls) {
		snprintf(err, errlen, "provider %s: %s", cp->name, why);
		upstream_endpoint_fini(ep);
		return false;
	}
	if (!cp->tls_verify)
		log_warn("provider %s: tls_verify is false: the certificate of %s is NOT checked",
			 cp->name, cp->host);
	const struct config_proxy *px = config_provider_proxy(cfg, cp);
	if (px) {
		ep->proxy_host = strdup(px->host);
		ep->proxy_port = px->port;
		if (!ep->proxy_host) {
			snprintf(err, errlen, "provider %s: out of memory", cp->name);
			upstream_endpoint_fini(ep);
			return false;
		}
	}
	return endpoint_resolve(ep);
}

void upstream_endpoint_fini(struct upstream_endpoint *ep)
{
	tls_client_free(ep->tls);
	free(ep->host);
	free(ep->proxy_host);
	*ep = (struct upstream_endpoint){ 0 };
}

static void pool_destroy(struct upstream_pool *p)
{
	tls_session_slot_clear(&p->session);
	free(p->host);
	free(p->proxy_host);
	free(p->connect_req);
	free(p);
}

/* "CONNECT host:port HTTP/1.1" with its Host header, sent as is by every connection. */
static bool pool_connect_request(struct upstream_pool *p)
{
	char hp[300];
	config_hostport(hp, sizeof(hp), p->host, p->port, false);
	size_t n = 2 * strlen(hp) + 40;
	if (!(p->connect_req = malloc(n)))
		return false;
	p->connect_len = (size_t)snprintf(p->connect_req, n,
					  "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", hp, hp);
	return true;
}

struct upstream_pool *upstream_pool_new(struct worker *w, const struct upstream_endpoint *ep)
{
	if (ep->proxy_host && !ep->tls) {
		log_error("upstream %s:%u: a CONNECT proxy is only used for https", ep->host,
			  ep->port);
		return NULL;
	}
	if (ep->tls && worker_buffer_size(w) < TLS_MAX_PLAINTEXT) {
		log_error("upstream %s:%u: TLS needs receive buffers of at least %u bytes",
			  ep->host, ep->port, TLS_MAX_PLAINTEXT);
		return NULL;
	}
	struct upstream_pool *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->w = w;
	p->users = 1;
	p->port = ep->port;
	p->tls = ep->tls;
	p->proxy_port = ep->proxy_port;
	memcpy(&p->addr, &ep->addr, sizeof(p->addr));
	p->addrlen = ep->addrlen;
	if (!(p->host = strdup(ep->host)) ||
	    (ep->proxy_host && (!(p->proxy_host = strdup(ep->proxy_host)) ||
				!pool_connect_request(p)))) {
		pool_destroy(p);
		return NULL;
	}
	return p;
}

unsigned upstream_pool_idle_count(const struct upstream_pool *p) { return p->nidle; }
uint64_t upstream_pool_opened(const struct upstream_pool *p) { return p->opened; }

static void pool_maybe_free(struct upstream_pool *p)
{
	if (p->freeing && p->nconns == 0)
		pool_destroy(p);
}

static void pool_unlink(struct upconn *u)
{
	struct upstream_pool *p = u->pool;
	if (!u->in_pool)
		return;
	if (u->idle_prev)
		u->idle_prev->idle_next = u->idle_next;
	else
		p->idle = u->idle_next;
	if (u->idle_next)
		u->idle_next->idle_prev = u->idle_prev;
	u->idle_prev = u->idle_next = NULL;
	u->in_pool = false;
	p->nidle--;
}

/* ---------------------------------------------------------------- connections */

static void up_recv_arm(struct upconn *u);
static void up_close(struct upconn *u);
static void up_process(struct upconn *u, uint16_t bid, size_t off, size_t len);

static void up_unref(struct upconn *u)
{
	if (--u->refs || !u->closing)
		return;
	struct upstream_pool *p = u->pool;
	close(u->fd);
	buf_free(&u->head);
	tls_conn_free(u->tls);
	buf_free(&u->out);
	worker_release(p->w);
	p->nconns--;
	free(u);
	pool_maybe_free(p);
}

static void up_close(struct upconn *u)
{
	if (u->closing)
		return;
	u->closing = true;
	timer_disarm(&u->timer);
	pool_unlink(u);
	if (u->paused) {
		worker_buffer_unref(u->pool->w, u->pbid);
		u->paused = false;
	}
	/* Cancel whatever is in flight on the socket (a connect is not woken by shutdown). */
	struct io_uring_sqe *sqe = worker_sqe(u->pool->w);
	io_uring_prep_cancel_fd(sqe, u->fd, IORING_ASYNC_CANCEL_ALL);
	io_uring_sqe_set_data(sqe, NULL);
	shutdown(u->fd, SHUT_RDWR);
	u->refs++;
	up_unref(u);
}

static void call_fail(struct upconn *u, enum upstream_error err)
{
	struct upstream_call *call = u->call;
	u->call = NULL;
	up_close(u);
	if (!call)
		return;
	call->conn = NULL;
	call->active = false;
	call->cb->on_error(call->arg, err, call->head_seen);
}

static void up_start(struct upstream_call *call, bool fresh);

/* A reused connection died before answering: the upstream closed it while idle. */
static bool call_retry(struct upconn *u)
{
	struct upstream_call *call = u->call;
	if (!call || !u->reused || u->any_byte || call->retried)
		return false;
	call->retried = true;
	u->call = NULL;
	up_close(u);
	up_start(call, true);
	return true;
}

static void up_timer_fired(struct worker *w, struct timer *t)
{
	struct upconn *u = (struct upconn *)((char *)t - offsetof(struct upconn, timer));
	if (!u->call) { /* idle in the pool too long */
		up_close(u);
		return;
	}
	enum upstream_error err = !u->send_total ? UP_E_CONNECT_TIMEOUT
				  : !u->any_byte ? UP_E_FIRST_BYTE_TIMEOUT : UP_E_IDLE_TIMEOUT;
	log_debug("upstream %s:%u: %s", u->pool->host, u->pool->port, upstream_error_text(err));
	call_fail(u, err);
}

static void up_release_to_pool(struct upconn *u)
{
	struct upstream_pool *p = u->pool;
	u->call = NULL;
	/* A TLS response that ended before its request was all sent (the upstream answered
	 * early) leaves the rest unsent: the connection cannot carry another request. */
	bool unsent = u->tls && u->send_off < u->send_total;
	if (p->freeing || !u->res.keep_alive || worker_stopping(p->w) || unsent) {
		up_close(u);
		return;
	}
	u->any_byte = u->head_done = u->body_done = false;
	u->head.len = 0;
	u->send_total = u->send_off = 0;
	u->req_pending = false;
	memset(&u->chunked, 0, sizeof(u->chunked));
	u->reused = true;
	u->in_pool = true;
	u->idle_prev = NULL;
	u->idle_next = p->idle;
	if (p->idle)
		p->idle->idle_prev = u;
	p->idle = u;
	p->nidle++;
	timer_arm(p->w, TQ_POOL_IDLE, &u->timer);
	/* Keep a receive armed: it tells us at once when the upstream closes. */
	if (!u->recv_armed)
		up_recv_arm(u);
}

static void up_send(struct upconn *u)
{
	unsigned n = 0;
	size_t skip = u->send_off;
	for (unsigned i = 0; i < u->call->niov && n < 8; i++) {
		const struct iovec *v = &u->call->iov[i];
		if (v->iov_len <= skip) {
			skip -= v->iov_len;
			continue;
		}
		u->iov[n].iov_base = (char *)v->iov_base + skip;
		u->iov[n].iov_len = v->iov_len - skip;
		skip = 0;
		n++;
	}
	memset(&u->msg, 0, sizeof(u->msg));
	u->msg.msg_iov = u->iov;
	u->msg.msg_iovlen = n;
	struct io_uring_sqe *sqe = worker_sqe(u->pool->w);
	io_uring_prep_sendmsg(sqe, u->fd, &u->msg, MSG_NOSIGNAL);
	io_uring_sqe_set_data(sqe, &u->ev_send);
	u->refs++;
}

static void up_send_done(struct worker *w, struct ev *ev, struct io_uring_cqe *cqe)
{
	struct upconn *u = (struct upconn *)((char *)ev - offsetof(struct upconn, ev_send));
	u->refs--;
	if (u->closing || !u->call) {
		u->refs++;
		up_unref(u);
		return;
	}
	if (cqe->res < 0) {
		if (!call_retry(u))
			call_fail(u, UP_E_RESET);
		return;
	}
	u->send_off += (size_t)cqe->res;
	if (u->send_off < u->send_total) {
		up_send(u);
		return;
	}
	if (!u->any_byte)
		timer_arm(w, TQ_UP_FIRST_BYTE, &u->timer);
}

static bool tls_send_request(struct upconn *u);

static void up_begin_request(struct upconn *u)
{
	struct upstream_call *call = u->call;
	u->send_total = 0;
	for (unsigned i = 0; i < call->niov; i++)
		u->send_total += call->iov[i].iov_len;
	u->send_off = 0;
	if (!u->tls) {
		up_send(u);
	} else {
		u->req_pending = true;
		if (!tls_send_request(u))
			return;
	}
	if (!u->recv_armed)
		up_recv_arm(u);
}

/* An operation completed on a connection nobody wants any more (closing, or idle in the
 * pool): close it if that is not under way, then drop the operation's reference. */
static void up_op_unwanted(struct upconn *u)
{
	up_close(u);
	up_unref(u);
}

static void tls_connected(struct upconn *u);

static void up_connect_done(struct worker *w, struct ev *ev, struct io_uring_cqe *cqe)
{
	struct upconn *u = (struct upconn *)((char *)ev - offsetof(struct upconn, ev_connect));
	if (u->closing || !u->call) {
		up_op_unwanted(u);
		return;
	}
	u->refs--;
	if (cqe->res < 0) {
		if (u->pool->proxy_host)
			log_debug("upstream %s:%u: connect to proxy %s:%u: %s", u->pool->host,
				  u->pool->port, u->pool->proxy_host, u->pool->proxy_port,
				  strerror(-cqe->res));
		else
			log_debug("upstream %s:%u: connect: %s", u->pool->host, u->pool->port,
				  strerror(-cqe->res));
		call_fail(u, UP_E_CONNECT);
		return;
	}
	if (u->tls) { /* the connect timer keeps running through tunnel and handshake */
		tls_connected(u);
		return;
	}
	timer_disarm(&u->timer);
	up_begin_request(u);
}

/* The upstream closed (res 0) or reset (res < 0) the connection under a call. */
static void up_peer_closed(struct upconn *u, int res)
{
	if (res == 0 && u->head_done && u->res.body == HTTP1_BODY_CLOSE) {
		struct upstream_call *call = u->call;
		u->call = NULL;
		up_close(u);
		call->conn = NULL;
		call->active = false;
		call->cb->on_end(call->arg);
		return;
	}
	if (!call_retry(u))
		call_fail(u, UP_E_RESET);
}

static void up_recv_done(struct worker *w, struct ev *ev, struct io_uring_cqe *cqe)
{
	struct upconn *u = (struct upconn *)((char *)ev - offsetof(struct upconn, ev_recv));
	u->recv_armed = false;
	int bid = -1;
	if (cqe->flags & IORING_CQE_F_BUFFER)
		bid = worker_buffer_take(w, cqe);
	if (u->closing || (!u->call && cqe->res != -ENOBUFS)) {
		/* Closed, or bytes/EOF on an idle pooled connection: it is done either way. */
		if (bid >= 0)
			worker_buffer_unref(w, (uint16_t)bid);
		up_op_unwanted(u);
		return;
	}
	u->refs--;
	if (cqe->res == -ENOBUFS) {
		up_recv_arm(u); /* the ring is refilled as clients drain; try again */
		return;
	}
	if (cqe->res <= 0) {
		if (bid >= 0)
			worker_buffer_unref(w, (uint16_t)bid);
		up_peer_closed(u, cqe->res);
		return;
	}
	u->any_byte = true;
	timer_arm(w, TQ_UP_IDLE, &u->timer);
	/* Callbacks may close u; up_process reads it after them. */
	u->refs++;
	up_process(u, (uint16_t)bid, 0, (size_t)cqe->res);
	up_unref(u);
}

static void up_recv_arm(struct upconn *u)
{
	struct worker *w = u->pool->w;
	/* 0: as much as a buffer holds. TLS: what keeps the plaintext within one buffer. */
	size_t len = u->tls ? tls_recv_limit(u->tls, worker_buffer_size(w)) : 0;
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_recv(sqe, u->fd, NULL, len, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = (uint16_t)worker_buffer_group(u->pool->w);
	io_uring_sqe_set_data(sqe, &u->ev_recv);
	u->recv_armed = true;
	u->refs++;
}

/* The response ended: hand it to the caller and recycle the connection. */
static void up_response_done(struct upconn *u)
{
	struct upstream_call *call = u->call;
	call->conn = NULL;
	call->active = false;
	up_release_to_pool(u);
	call->cb->on_end(call->arg);
}

/* Gather bytes of a head that spans receive buffers (bounded: a head over the limit,
 * with room for the start of its body, is malformed). */
static bool up_gather(struct upconn *u, const char *p, size_t len)
{
	return buf_append(&u->head, p, len, UP_MAX_HEAD + 16384);
}

/* Parse the response head from p[0..len) after any bytes gathered before. Returns how
 * many bytes of p the head used (the body starts there), or -1: need more bytes, or
 * the call failed. Interim (1xx) responses are skipped. The head's slices stay valid
 * until the next receive (they point into p or into the gathered buffer). */
static long up_parse_head(struct upconn *u, const char *p, size_t len)
{
	size_t used = 0;
	for (;;) {
		size_t prior = u->head.len;
		const char *buf = p + used;
		size_t blen = len - used;
		if (prior) {
			if (!up_gather(u, p + used, len - used)) {
				call_fail(u, UP_E_PROTOCOL);
				return -1;
			}
			buf = u->head.p;
			blen = u->head.len;
		}
		int r = http1_parse_response(buf, blen, &up_limits, false, &u->res, u->hdrs,
					     UP_MAX_HEADERS);
		if (r == HTTP1_INCOMPLETE) {
			if (!prior && !up_gather(u, buf, blen))
				call_fail(u, UP_E_PROTOCOL);
			return -1;
		}
		if (r < 0) {
			call_fail(u, UP_E_PROTOCOL);
			return -1;
		}
		/* A head never ends inside bytes gathered earlier: those were incomplete. */
		used += (size_t)r - prior;
		if (u->res.status >= 200) {
			u->head_done = true;
			u->call->head_seen = true;
			return (long)used;
		}
		u->head.len = 0; /* interim response: parse what follows it */
	}
}

static void up_process(struct upconn *u, uint16_t bid, size_t off, size_t len)
{
	struct worker *w = u->pool->w;
	const char *base = worker_buffer(w, bid);
	const char *p = base + off;

	if (!u->head_done) {
		long body_off = up_parse_head(u, p, len);
		if (body_off < 0) {
			worker_buffer_unref(w, bid);
			return;
		}
		/* If the head was gathered, body bytes are still those at the tail of p. */
		off += (size_t)body_off;
		len -= (size_t)body_off;
		p = base + off;
		u->body_left = u->res.body == HTTP1_BODY_LENGTH ? u->res.content_length : 0;
		struct upstream_call *call = u->call;
		call->cb->on_head(call->arg, &u->res);
		if (!u->call || u->closing) { /* cancelled from on_head */
			worker_buffer_unref(w, bid);
			return;
		}
		if (u->res.body == HTTP1_BODY_NONE ||
		    (u->res.body == HTTP1_BODY_LENGTH && u->body_left == 0)) {
			worker_buffer_unref(w, bid);
			up_response_done(u);
			return;
		}
	}

	while (len) {
		struct slice data = { 0 };
		size_t used = 0;
		bool end = false;
		switch (u->res.body) {
		case HTTP1_BODY_LENGTH:
			used = len < u->body_left ? len : (size_t)u->body_left;
			data = (struct slice){ p, used };
			u->body_left -= used;
			end = u->body_left == 0;
			break;
		case HTTP1_BODY_CHUNKED: {
			int r = http1_chunked_next(&u->chunked, p, len, &used, &data);
			if (r < 0) {
				worker_buffer_unref(w, bid);
				call_fail(u, UP_E_PROTOCOL);
				return;
			}
			if (r != HTTP1_CHUNK_DATA)
				data.n = 0;
			end = r == HTTP1_CHUNK_DONE;
			break;
		}
		default:
			used = len;
			data = (struct slice){ p, len };
			break;
		}
		p += used;
		off += used;
		len -= used;
		bool go_on = true;
		if (data.n) {
			worker_buffer_ref(w, bid);
			go_on = u->call->cb->on_data(u->call->arg, data, bid);
			if (!u->call || u->closing) {
				worker_buffer_unref(w, bid);
				return;
			}
		}
		if (end) {
			worker_buffer_unref(w, bid);
			if (len) /* bytes after the response: the upstream is confused */
				u->res.keep_alive = false;
			up_response_done(u);
			return;
		}
		if (!go_on) {
			u->paused = true;
			u->pbid = bid;
			u->poff = off;
			u->plen = len;
			timer_disarm(&u->timer); /* the client is slow, not the upstream */
			return;
		}
	}
	worker_buffer_unref(w, bid);
	if (!u->recv_armed)
		up_recv_arm(u);
}

void upstream_resume(struct upstream_call *call)
{
	struct upconn *u = call->conn;
	if (!u || !u->paused)
		return;
	u->paused = false;
	timer_arm(u->pool->w, TQ_UP_IDLE, &u->timer);
	u->refs++; /* as in up_recv_done */
	up_process(u, u->pbid, u->poff, u->plen);
	up_unref(u);
}

/* ---------------------------------------------------------------- TLS and CONNECT tunnels */

static void out_send(struct upconn *u)
{
	struct io_uring_sqe *sqe = worker_sqe(u->pool->w);
	io_uring_prep_send(sqe, u->fd, u->out.p + u->out_off, u->out.len - u->out_off,
			   MSG_NOSIGNAL);
	io_uring_sqe_set_data(sqe, &u->ev_send);
	u->out_busy = true;
	u->refs++;
}

/* Send the ciphertext the SSL produced, unless a send is under way (its completion comes
 * back here). False when out of memory. */
static bool tls_flush(struct upconn *u)
{
	if (u->out_busy)
		return true;
	if (!tls_take_out(u->tls, &u->out, UP_MAX_OUT))
		return false;
	if (u->out.len)
		out_send(u);
	return true;
}

/* Encrypt the next batch of the request and send it; once all of it is out, the first
 * byte of the answer is awaited. False when the call failed. */
static bool tls_send_request(struct upconn *u)
{
	const struct upstream_call *call = u->call;
	size_t budget = UP_TLS_BATCH;
	/* Once the answer began, what is left of the request is not needed (nor valid). */
	while (u->send_off < u->send_total && budget && !u->head_done) {
		size_t skip = u->send_off;
		unsigned i = 0;
		while (call->iov[i].iov_len <= skip)
			skip -= call->iov[i++].iov_len;
		size_t n = call->iov[i].iov_len - skip;
		n = n < budget ? n : budget;
		if (!tls_write(u->tls, (const char *)call->iov[i].iov_base + skip, n)) {
			log_warn("upstream %s:%u: TLS write failed", u->pool->host, u->pool->port);
			call_fail(u, UP_E_TLS);
			return false;
		}
		u->send_off += n;
		budget -= n;
	}
	if (!tls_flush(u)) {
		call_fail(u, UP_E_RESOURCES);
		return false;
	}
	if (u->req_pending && u->send_off == u->send_total && !u->out_busy) {
		u->req_pending = false;
		if (!u->any_byte)
			timer_arm(u->pool->w, TQ_UP_FIRST_BYTE, &u->timer);
	}
	return true;
}

static void tls_out_done(struct worker *w, struct ev *ev, struct io_uring_cqe *cqe)
{
	struct upconn *u = (struct upconn *)((char *)ev - offsetof(struct upconn, ev_send));
	u->out_busy = false;
	/* The operation's reference is held to the end: what runs here may close u. */
	if (u->closing) {
		up_unref(u);
		return;
	}
	if (cqe->res < 0) {
		if (!u->call)
			up_close(u);
		else if (!call_retry(u))
			call_fail(u, UP_E_RESET);
	} else if ((u->out_off += (size_t)cqe->res) < u->out.len) {
		out_send(u);
	} else {
		u->out.len = u->out_off = 0;
		if (u->call && u->phase == PH_READY)
			tls_send_request(u);
		else if (!tls_flush(u))
			call_fail(u, UP_E_RESOURCES);
	}
	up_unref(u);
}

static void tls_handshake_step(struct upconn *u)
{
	struct upstream_pool *p = u->pool;
	enum tls_status st = tls_handshake(u->tls);
	if (st == TLS_FAILED || st == TLS_CLOSED) {
		char why[256];
		log_warn("upstream %s:%u: TLS handshake failed: %s", p->host, p->port,
			 tls_describe(u->tls, why, sizeof(why)));
		call_fail(u, UP_E_TLS);
		return;
	}
	if (!tls_flush(u)) {
		call_fail(u, UP_E_RESOURCES);
		return;
	}
	if (st == TLS_WANT) {
		up_recv_arm(u);
		return;
	}
	u->phase = PH_READY;
	timer_disarm(&u->timer);
	log_debug("upstream %s:%u: TLS ready (%s)", p->host, p->port,
		  tls_resumed(u->tls) ? "session resumed" : "full handshake");
	up_begin_request(u);
}

/* TCP is up: open the tunnel first when there is a proxy, else start the handshake. */
static void tls_connected(struct upconn *u)
{
	struct upstream_pool *p = u->pool;
	if (u->phase == PH_HANDSHAKE) {
		tls_handshake_step(u);
		return;
	}
	if (!buf_append(&u->out, p->connect_req, p->connect_len, UP_MAX_OUT)) {
		call_fail(u, UP_E_RESOURCES);
		return;
	}
	out_send(u);
	up_recv_arm(u);
}

static void proxy_fail(struct upconn *u, const char *why)
{
	struct upstream_pool *p = u->pool;
	log_warn("upstream %s:%u: egress proxy %s:%u %s", p->host, p->port, p->proxy_host,
		 p->proxy_port, why);
	call_fail(u, UP_E_PROXY);
}

static void tls_recv_done(struct worker *w, struct ev *ev, struct io_uring_cqe *cqe);

/* The proxy's answer to CONNECT: any 2xx opens the tunnel (RFC 9110 9.3.6). */
static void proxy_recv_done(struct worker *w, struct ev *ev, struct io_uring_cqe *cqe)
{
	struct upconn *u = (struct upconn *)((char *)ev - offsetof(struct upconn, ev_recv));
	u->recv_armed = false;
	int bid = -1;
	if (cqe->flags & IORING_CQE_F_BUFFER)
		bid = worker_buffer_take(w, cqe);
	if (u->closing || !u->call) {
		if (bid >= 0)
			worker_buffer_unref(w, (uint16_t)bid);
		up_op_unwanted(u);
		return;
	}
	/* The operation's reference is held to the end: what runs here may close u. */
	if (cqe->res == -ENOBUFS) {
		up_recv_arm(u);
	} else if (cqe->res <= 0) {
		if (bid >= 0)
			worker_buffer_unref(w, (uint16_t)bid);
		proxy_fail(u, "closed the connection instead of answering CONNECT");
	} else {
		bool ok = buf_append(&u->head, worker_buffer(w, (uint16_t)bid), (size_t)cqe->res,
				     UP_MAX_PROXY_HEAD);
		worker_buffer_unref(w, (uint16_t)bid);
		int r = -1;
		if (ok)
			r = http1_parse_response(u->head.p, u->head.len, &up_limits, false, &u->res,
						 u->hdrs, UP_MAX_HEADERS);
		if (r == HTTP1_INCOMPLETE) {
			up_recv_arm(u);
		} else if (r < 0) {
			proxy_fail(u, "sent a malformed answer to CONNECT");
		} else if (u->res.status < 200 || u->res.status > 299) {
			char why[48];
			snprintf(why, sizeof(why), "refused CONNECT with status %d", u->res.status);
			proxy_fail(u, why);
		} else {
			/* Bytes after the answer are the upstream's, from inside the tunnel. */
			size_t tail = u->head.len - (size_t)r;
			u->head.len = 0;
			u->phase = PH_HANDSHAKE;
			u->ev_recv.fn = tls_recv_done;
			if (tail && !tls_feed(u->tls, u->head.p + r, tail))
				call_fail(u, UP_E_RESOURCES);
			else
				tls_handshake_step(u);
		}
	}
	up_unref(u);
}

/* Ciphertext arrived: feed it to the SSL, then decrypt into the same buffer (the SSL
 * holds a copy) and carry on as a plain connection does with the plaintext. */
static void tls_recv_done(struct worker *w, struct ev *ev, struct io_uring_cqe *cqe)
{
	struct upconn *u = (struct upconn *)((char *)ev - offsetof(struct upconn, ev_recv));
	struct upstream_pool *p = u->pool;
	u->recv_armed = false;
	int bid = -1;
	if (cqe->flags & IORING_CQE_F_BUFFER)
		bid = worker_buffer_take(w, cqe);
	if (u->closing || (!u->call && cqe->res <= 0 && cqe->res != -ENOBUFS)) {
		if (bid >= 0)
			worker_buffer_unref(w, (uint16_t)bid);
		up_op_unwanted(u);
		return;
	}
	/* The operation's reference is held to the end: what runs here may close u. */
	if (cqe->res == -ENOBUFS) {
		up_recv_arm(u);
		up_unref(u);
		return;
	}
	if (cqe->res <= 0) {
		if (bid >= 0)
			worker_buffer_unref(w, (uint16_t)bid);
		if (u->phase == PH_HANDSHAKE) {
			log_warn("upstream %s:%u: TLS handshake failed: %s", p->host, p->port,
				 cqe->res ? strerror(-cqe->res) : "the connection closed");
			call_fail(u, UP_E_TLS);
		} else {
			up_peer_closed(u, cqe->res);
		}
		up_unref(u);
		return;
	}
	uint16_t b = (uint16_t)bid;
	char *buf = worker_buffer(w, b);
	size_t got = 0;
	enum tls_status st = TLS_FAILED;
	bool ok = tls_feed(u->tls, buf, (size_t)cqe->res);
	if (ok && u->phase == PH_HANDSHAKE) {
		worker_buffer_unref(w, b);
		tls_handshake_step(u);
		up_unref(u);
		return;
	}
	if (ok) {
		st = tls_read(u->tls, buf, worker_buffer_size(w), &got);
		ok = tls_flush(u); /* reading may have produced something to send */
	}
	if (!u->call) {
		/* Idle in the pool: a session ticket is fine, anything else ends it. */
		worker_buffer_unref(w, b);
		if (ok && !got && st == TLS_WANT)
			up_recv_arm(u);
		else
			up_close(u);
	} else if (!ok) {
		worker_buffer_unref(w, b);
		call_fail(u, UP_E_RESOURCES);
	} else if (got) {
		/* A close or failure after the data shows up on the next receive. */
		u->any_byte = true;
		timer_arm(w, TQ_UP_IDLE, &u->timer);
		up_process(u, b, 0, got);
	} else {
		worker_buffer_unref(w, b);
		if (st == TLS_WANT) {
			up_recv_arm(u);
		} else if (st == TLS_CLOSED) {
			up_peer_closed(u, 0);
		} else {
			char why[256];
			log_warn("upstream %s:%u: TLS failed: %s", p->host, p->port,
				 tls_describe(u->tls, why, sizeof(why)));
			call_fail(u, UP_E_TLS);
		}
	}
	up_unref(u);
}

static void up_start(struct upstream_call *call, bool fresh)
{
	struct upstream_pool *p = call->pool;
	struct worker *w = p->w;
	struct upconn *u = fresh ? NULL : p->idle;
	if (u) {
		pool_unlink(u);
		timer_disarm(&u->timer);
		u->call = call;
		call->conn = u;
		up_begin_request(u);
		return;
	}
	if (!p->addrlen) { /* the name did not resolve */
		call->active = false;
		call->cb->on_error(call->arg, UP_E_CONNECT, false);
		return;
	}
	u = calloc(1, sizeof(*u));
	if (u && p->tls && !(u->tls = tls_conn_new(p->tls, &p->session))) {
		free(u);
		u = NULL;
	}
	int fd = u ? socket(p->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) : -1;
	if (fd < 0) {
		if (u)
			tls_conn_free(u->tls);
		free(u);
		call->active = false;
		call->cb->on_error(call->arg, UP_E_RESOURCES, false);
		return;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	u->fd = fd;
	u->pool = p;
	u->ev_connect.fn = up_connect_done;
	u->ev_send.fn = up_send_done;
	u->ev_recv.fn = up_recv_done;
	if (u->tls) {
		u->ev_send.fn = tls_out_done;
		u->ev_recv.fn = p->proxy_host ? proxy_recv_done : tls_recv_done;
		u->phase = p->proxy_host ? PH_TUNNEL : PH_HANDSHAKE;
	}
	u->timer.fn = up_timer_fired;
	u->call = call;
	call->conn = u;
	p->nconns++;
	p->opened++;
	worker_hold(w);
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_connect(sqe, fd, (struct sockaddr *)&p->addr, p->addrlen);
	io_uring_sqe_set_data(sqe, &u->ev_connect);
	u->refs++;
	timer_arm(w, TQ_UP_CONNECT, &u->timer);
}

void upstream_call_start(struct upstream_call *call, struct upstream_pool *p,
			 const struct iovec *iov, unsigned niov,
			 const struct upstream_callbacks *cb, void *arg)
{
	*call = (struct upstream_call){ .pool = p, .iov = iov, .niov = niov, .cb = cb, .arg = arg,
					.active = true };
	up_start(call, false);
}

void upstream_cancel(struct upstream_call *call)
{
	struct upconn *u = call->conn;
	call->active = false;
	call->conn = NULL;
	if (!u)
		return;
	u->call = NULL;
	up_close(u);
}

void upstream_pool_close_idle(struct upstream_pool *p)
{
	while (p->idle)
		up_close(p->idle);
}

void upstream_pool_share(struct upstream_pool *p, const struct upstream_endpoint *ep)
{
	p->users++;
	p->tls = ep->tls; /* the previous context goes with its configuration */
	memcpy(&p->addr, &ep->addr, sizeof(p->addr));
	p->addrlen = ep->addrlen;
}

void upstream_pool_free(struct upstream_pool *p)
{
	if (--p->users)
		return;
	p->freeing = true;
	upstream_pool_close_idle(p);
	pool_maybe_free(p);
}
