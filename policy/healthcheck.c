/* healthcheck.c - the health-check thread: one blocking GET per provider and interval,
 * its verdict marked on the provider's entries in the health registry.
 *
 * The thread sleeps in poll on an eventfd that healthcheck_stop writes, and every wait
 * of a check (connect, send, receive) polls the same eventfd, so stopping never waits
 * for a slow provider.
 */
#include "healthcheck.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/config.h"
#include "core/log.h"
#include "core/tls.h"
#include "router.h"

/* Only the status line is read: "HTTP/1.1 200 OK\r\n" fits with room for a long reason. */
#define STATUS_LINE_MAX 256

struct check {
	char *name;   /* the provider, for log lines */
	char *host;   /* where the check connects: base_url's host, or its CONNECT proxy's */
	char port[8];
	char *connect_req; /* https through a proxy: the CONNECT request; else NULL */
	size_t connect_len;
	char *request; /* the whole GET, ready to send; holds the provider's secret headers */
	size_t request_len;
	uint64_t interval_us, timeout_us;
	uint64_t due_us;
	struct tls_client *tls; /* https: the provider's verification settings; NULL: http */
	struct tls_session_slot session; /* the last TLS session, resumed by the next check */
	struct router_health_entry **entries;
	size_t nentries;
	int last; /* the previous verdict: -1 none yet, 0 failed, 1 passed (logs changes) */
};

struct healthcheck {
	struct check *checks;
	size_t nchecks;
	int stop_fd; /* eventfd: readable once healthcheck_stop was called */
	pthread_t thread;
	bool running;
};

static uint64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

enum wait_result { WAIT_READY, WAIT_TIMEOUT, WAIT_STOP };

/* Wait until fd has `events`, the deadline passes, or a stop is asked for. fd -1: only
 * the last two (sleeping between checks). */
static enum wait_result wait_fd(const struct healthcheck *hc, int fd, short events,
				uint64_t deadline_us)
{
	for (;;) {
		/* A stop is seen even when the deadline has passed already (a check overdue). */
		uint64_t now = mono_us();
		uint64_t ms = now < deadline_us ? (deadline_us - now + 999) / 1000 : 0;
		struct pollfd p[2] = { { .fd = hc->stop_fd, .events = POLLIN },
				       { .fd = fd, .events = events } };
		int n = poll(p, fd >= 0 ? 2 : 1, ms > 60000 ? 60000 : (int)ms);
		if (n < 0 && errno != EINTR)
			return WAIT_STOP; /* poll on our own two fds cannot fail otherwise */
		if (n > 0 && p[0].revents)
			return WAIT_STOP;
		if (n > 0 && p[1].revents)
			return WAIT_READY;
		if (mono_us() >= deadline_us)
			return WAIT_TIMEOUT;
	}
}

/* Send all of p. False with why filled (or *w WAIT_STOP). */
static bool send_all(const struct healthcheck *hc, int fd, const char *p, size_t n,
		     uint64_t deadline, enum wait_result *w, char *why, size_t whylen)
{
	for (size_t sent = 0; sent < n;) {
		ssize_t k = send(fd, p + sent, n - sent, MSG_NOSIGNAL);
		if (k > 0) {
			sent += (size_t)k;
		} else if (k < 0 && errno != EAGAIN && errno != EINTR) {
			snprintf(why, whylen, "send: %s", strerror(errno));
			return false;
		} else if ((*w = wait_fd(hc, fd, POLLOUT, deadline)) != WAIT_READY) {
			snprintf(why, whylen, "send timed out");
			return false;
		}
	}
	return true;
}

/* Receive up to cap bytes (waiting for some): their count, 0 at the peer's close, -1 with
 * why filled (or *w WAIT_STOP). */
static ssize_t recv_some(const struct healthcheck *hc, const struct check *c, int fd, char *p,
			 size_t cap, uint64_t deadline, enum wait_result *w, char *why,
			 size_t whylen)
{
	for (;;) {
		ssize_t n = recv(fd, p, cap, 0);
		if (n >= 0)
			return n;
		if (errno != EAGAIN && errno != EINTR) {
			snprintf(why, whylen, "receive: %s", strerror(errno));
			return -1;
		}
		if ((*w = wait_fd(hc, fd, POLLIN, deadline)) != WAIT_READY) {
			snprintf(why, whylen, "no answer within %llu ms",
				 (unsigned long long)(c->timeout_us / 1000));
			return -1;
		}
	}
}

/* The ciphertext a TLS connection has waiting, sent. */
static bool tls_flush(const struct healthcheck *hc, int fd, struct tls_conn *t, uint64_t deadline,
		      enum wait_result *w, char *why, size_t whylen)
{
	struct buf out = { 0 };
	bool ok = tls_take_out(t, &out, SIZE_MAX);
	if (!ok)
		snprintf(why, whylen, "out of memory");
	ok = ok && send_all(hc, fd, out.p, out.len, deadline, w, why, whylen);
	buf_free(&out);
	return ok;
}

/* A TLS session over fd: the handshake, then the request sent. NULL with why filled (or
 * *w WAIT_STOP). */
static struct tls_conn *tls_open(const struct healthcheck *hc, struct check *c, int fd,
				 uint64_t deadline, enum wait_result *w, char *why, size_t whylen)
{
	struct tls_conn *t = tls_conn_new(c->tls, &c->session);
	if (!t) {
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	char in[TLS_MAX_PLAINTEXT];
	/* Bounded: each round takes bytes from the peer, or ends the check. */
	for (;;) {
		enum tls_status st = tls_handshake(t);
		if (!tls_flush(hc, fd, t, deadline, w, why, whylen))
			break;
		if (st == TLS_DONE) {
			if (tls_write(t, c->request, c->request_len) &&
			    tls_flush(hc, fd, t, deadline, w, why, whylen))
				return t;
			if (!why[0])
				snprintf(why, whylen, "TLS: the request could not be sent");
			break;
		}
		if (st != TLS_WANT) {
			char d[128];
			snprintf(why, whylen, "TLS: %s", tls_describe(t, d, sizeof(d)));
			break;
		}
		ssize_t n = recv_some(hc, c, fd, in, tls_recv_limit(t, sizeof(in)), deadline, w, why,
				      whylen);
		if (n <= 0 || !tls_feed(t, in, (size_t)n)) {
			if (n == 0)
				snprintf(why, whylen, "TLS: closed during the handshake");
			break;
		}
	}
	tls_conn_free(t);
	return NULL;
}

/* The response's first bytes (at least its status line, if it sends one) into line. */
static size_t read_head(const struct healthcheck *hc, const struct check *c, int fd,
			struct tls_conn *t, char *line, size_t cap, uint64_t deadline,
			enum wait_result *w, char *why, size_t whylen)
{
	size_t got = 0;
	char in[TLS_MAX_PLAINTEXT], plain[TLS_MAX_PLAINTEXT];
	/* Bounded: each round adds at least one byte, or ends the check. */
	while (got < cap - 1 && !memchr(line, '\n', got)) {
		if (!t) {
			ssize_t n = recv_some(hc, c, fd, line + got, cap - 1 - got, deadline, w, why,
					      whylen);
			if (n <= 0)
				break;
			got += (size_t)n;
			continue;
		}
		ssize_t n = recv_some(hc, c, fd, in, tls_recv_limit(t, sizeof(in)), deadline, w, why,
				      whylen);
		if (n <= 0 || !tls_feed(t, in, (size_t)n))
			break;
		size_t k = 0;
		enum tls_status st = tls_read(t, plain, sizeof(plain), &k);
		size_t take = k < cap - 1 - got ? k : cap - 1 - got;
		memcpy(line + got, plain, take);
		got += take;
		if (st != TLS_WANT)
			break;
	}
	return got;
}

/* Through a CONNECT proxy: ask for the tunnel and read the proxy's answer head (nothing
 * follows it before our TLS hello). False with why filled (or *w WAIT_STOP). */
static bool tunnel(const struct healthcheck *hc, const struct check *c, int fd,
		   uint64_t deadline, enum wait_result *w, char *why, size_t whylen)
{
	if (!send_all(hc, fd, c->connect_req, c->connect_len, deadline, w, why, whylen))
		return false;
	char head[4096];
	size_t got = 0;
	/* Bounded: each round adds at least one byte, or ends the check. */
	while (got < 4 || memcmp(head + got - 4, "\r\n\r\n", 4) != 0) {
		if (got == sizeof(head)) {
			snprintf(why, whylen, "proxy: answer head too long");
			return false;
		}
		ssize_t n = recv_some(hc, c, fd, head + got, 1, deadline, w, why, whylen);
		if (n <= 0) {
			if (n == 0)
				snprintf(why, whylen, "proxy: closed without an answer");
			return false;
		}
		got += (size_t)n;
	}
	unsigned status;
	if (sscanf(head, "HTTP/1.%*1[01] %3u", &status) != 1 || status != 200) {
		snprintf(why, whylen, "proxy refused the tunnel (%.40s)", head);
		char *cr = strchr(why, '\r');
		if (cr)
			snprintf(cr, 2, ")");
		return false;
	}
	return true;
}

/* One check: 1 a 2xx, 0 anything else (why says what), -1 stopped. */
static int probe(const struct healthcheck *hc, struct check *c, char *why, size_t whylen)
{
	uint64_t deadline = mono_us() + c->timeout_us;
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_NUMERICSERV };
	struct addrinfo *ai = NULL;
	int rc = getaddrinfo(c->host, c->port, &hints, &ai);
	if (rc) {
		snprintf(why, whylen, "cannot resolve %s: %s", c->host, gai_strerror(rc));
		return 0;
	}
	int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
			ai->ai_protocol);
	int verdict = 0;
	enum wait_result w = WAIT_READY;
	struct tls_conn *t = NULL;
	if (fd < 0) {
		snprintf(why, whylen, "socket: %s", strerror(errno));
		goto out;
	}
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) && errno != EINPROGRESS) {
		snprintf(why, whylen, "connect: %s", strerror(errno));
		goto out;
	}
	if ((w = wait_fd(hc, fd, POLLOUT, deadline)) != WAIT_READY) {
		snprintf(why, whylen, "connect timed out");
		goto out;
	}
	int soerr = 0;
	socklen_t len = sizeof(soerr);
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) || soerr) {
		snprintf(why, whylen, "connect: %s", strerror(soerr ? soerr : errno));
		goto out;
	}
	if (c->connect_req && !tunnel(hc, c, fd, deadline, &w, why, whylen))
		goto out;
	if (c->tls) {
		if (!(t = tls_open(hc, c, fd, deadline, &w, why, whylen)))
			goto out;
	} else if (!send_all(hc, fd, c->request, c->request_len, deadline, &w, why, whylen)) {
		goto out;
	}
	char line[STATUS_LINE_MAX];
	why[0] = 0;
	size_t got = read_head(hc, c, fd, t, line, sizeof(line), deadline, &w, why, whylen);
	if (w != WAIT_READY || (why[0] && !got))
		goto out;
	line[got] = 0;
	unsigned status;
	char sp;
	if (sscanf(line, "HTTP/1.%*1[01] %3u%c", &status, &sp) != 2 || status < 100 ||
	    status > 599 || (sp != ' ' && sp != '\r')) {
		snprintf(why, whylen, got ? "not an HTTP response" : "closed without an answer");
		goto out;
	}
	verdict = status >= 200 && status < 300;
	if (!verdict)
		snprintf(why, whylen, "status %u", status);
out:
	tls_conn_free(t);
	if (fd >= 0)
		close(fd);
	freeaddrinfo(ai);
	return w == WAIT_STOP ? -1 : verdict;
}

static void run_check(const struct healthcheck *hc, struct check *c)
{
	char why[160] = "";
	int ok = probe(hc, c, why, sizeof(why));
	if (ok < 0)
		return;
	uint64_t now = mono_us();
	/* A failed check keeps the targets out until the next one could say otherwise. */
	for (size_t i = 0; i < c->nentries; i++)
		router_health_mark(c->entries[i], ok, c->interval_us, now);
	if (ok && c->last == 0)
		log_info("health check %s: passes again", c->name);
	else if (!ok && c->last != 0)
		log_warn("health check %s: failed (%s)", c->name, why);
	c->last = ok;
	c->due_us = now + c->interval_us;
}

static void *run(void *arg)
{
	struct healthcheck *hc = arg;
	for (;;) {
		struct check *next = &hc->checks[0];
		for (size_t i = 1; i < hc->nchecks; i++)
			if (hc->checks[i].due_us < next->due_us)
				next = &hc->checks[i];
		if (wait_fd(hc, -1, 0, next->due_us) == WAIT_STOP)
			return NULL;
		run_check(hc, next);
	}
}

static void check_free(struct check *c)
{
	if (c->request)
		explicit_bzero(c->request, c->request_len);
	free(c->request);
	free(c->name);
	free(c->host);
	free(c->connect_req);
	free(c->entries);
	tls_session_slot_clear(&c->session); /* before its context goes */
	tls_client_free(c->tls);
}

static void free_all(struct healthcheck *hc)
{
	for (size_t i = 0; i < hc->nchecks; i++)
		check_free(&hc->checks[i]);
	free(hc->checks);
	if (hc->stop_fd >= 0)
		close(hc->stop_fd);
	free(hc);
}

static int check_init(struct check *c, const struct config *cfg, const struct config_provider *cp,
		      const char *headers, struct router_health *h, size_t nentries)
{
	char hostport[300];
	config_provider_authority(cp, hostport, sizeof(hostport));
	int len = asprintf(&c->request,
			   "GET %s%s HTTP/1.1\r\nHost: %s\r\n%sUser-Agent: penstock-health\r\n"
			   "Accept: */*\r\nConnection: close\r\n\r\n",
			   cp->path_prefix, cp->health_check.path, hostport, headers ? headers : "");
	if (len < 0) {
		c->request = NULL;
		return -1;
	}
	c->request_len = (size_t)len;
	c->name = strdup(cp->name);
	/* through the proxy the provider's requests take */
	const struct config_proxy *px = config_provider_proxy(cfg, cp);
	c->host = strdup(px ? px->host : cp->host);
	snprintf(c->port, sizeof(c->port), "%u", px ? px->port : cp->port);
	if (px) {
		char target[300];
		config_hostport(target, sizeof(target), cp->host, cp->port, false);
		int n = asprintf(&c->connect_req, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target,
				 target);
		if (n < 0) {
			c->connect_req = NULL;
			return -1;
		}
		c->connect_len = (size_t)n;
	}
	c->interval_us = (uint64_t)cp->health_check.interval * 1000;
	c->timeout_us = (uint64_t)cp->health_check.timeout * 1000;
	c->last = -1;
	c->entries = calloc(nentries, sizeof(*c->entries));
	if (!c->name || !c->host || !c->entries)
		return -1;
	c->nentries = router_health_entries(h, cp->name, cp->base_url, c->entries, nentries);
	if (cp->tls) { /* verified as the provider's requests are: its CA file, its name */
		char why[CONFIG_ERR_MAX];
		c->tls = tls_client_new(cp->host, cp->tls_verify, cp->ca_file, why, sizeof(why));
		if (!c->tls) {
			log_error("health check %s: %s", cp->name, why);
			return -1;
		}
	}
	return 0;
}

struct healthcheck *healthcheck_start(const struct config *cfg, struct router_health *h,
				      const char *const *headers, char *err, size_t errlen)
{
	struct healthcheck *hc = calloc(1, sizeof(*hc));
	if (!hc) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	hc->stop_fd = -1;
	hc->checks = calloc(cfg->nproviders + 1, sizeof(*hc->checks));
	if (!hc->checks)
		goto oom;
	for (size_t i = 0; i < cfg->nproviders; i++) {
		const struct config_provider *cp = &cfg->providers[i];
		if (!cp->health_check.path)
			continue;
		size_t n = router_health_entries(h, cp->name, cp->base_url, NULL, 0);
		if (!n) {
			log_info("health check %s: not done, no model routes to it", cp->name);
			continue;
		}
		if (check_init(&hc->checks[hc->nchecks++], cfg, cp, headers ? headers[i] : NULL, h, n))
			goto oom;
	}
	if (!hc->nchecks)
		return hc;
	hc->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (hc->stop_fd < 0) {
		snprintf(err, errlen, "health check: eventfd: %s", strerror(errno));
		free_all(hc);
		return NULL;
	}
	int rc = pthread_create(&hc->thread, NULL, run, hc);
	if (rc) {
		snprintf(err, errlen, "health check: cannot start its thread: %s", strerror(rc));
		free_all(hc);
		return NULL;
	}
	hc->running = true;
	return hc;
oom:
	snprintf(err, errlen, "out of memory");
	free_all(hc);
	return NULL;
}

void healthcheck_stop(struct healthcheck *hc)
{
	if (!hc)
		return;
	if (hc->running) {
		uint64_t one = 1;
		/* An eventfd counter takes 8 bytes at once; it cannot fail short of overflow. */
		while (write(hc->stop_fd, &one, sizeof(one)) < 0 && errno == EINTR)
			;
		pthread_join(hc->thread, NULL);
	}
	free_all(hc);
}
