/* test_healthcheck.c - active health checks against a tiny HTTP server on loopback in this
 * test: a failing check opens the breakers of every target of the provider, a passing
 * one closes them, a silent server times out, a refused port and a non-HTTP answer fail,
 * an https provider refused opens too (the TLS path end to end is
 * in tests/integration/test_tls.py), and stop does not wait for a silent provider. Every wait
 * is bounded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/config.h"
#include "policy/healthcheck.h"
#include "policy/router.h"

enum mode { ANSWER_200, ANSWER_503, ANSWER_NOTHING, ANSWER_GARBAGE };

struct server {
	int fd;
	uint16_t port;
	_Atomic int mode;
	_Atomic bool stop;
	_Atomic unsigned requests;
	pthread_mutex_t lock;
	char first[1024]; /* the first request's head, as received */
	pthread_t thread;
};

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void serve_one(struct server *s, int c)
{
	char req[1024];
	size_t got = 0;
	uint64_t deadline = now_ms() + 1000;
	/* the head, bounded by size and time */
	while (got < sizeof(req) - 1 && now_ms() < deadline) {
		struct pollfd p = { .fd = c, .events = POLLIN };
		if (poll(&p, 1, 50) <= 0)
			continue;
		ssize_t n = recv(c, req + got, sizeof(req) - 1 - got, 0);
		if (n <= 0)
			break;
		got += (size_t)n;
		req[got] = 0;
		if (strstr(req, "\r\n\r\n"))
			break;
	}
	req[got] = 0;
	pthread_mutex_lock(&s->lock);
	if (atomic_fetch_add(&s->requests, 1) == 0)
		memcpy(s->first, req, got + 1);
	pthread_mutex_unlock(&s->lock);
	static const char ok[] = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
	static const char bad[] = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
	static const char garbage[] = "SSH-2.0-OpenSSH\r\n";
	switch (atomic_load(&s->mode)) {
	case ANSWER_200:
		(void)!send(c, ok, sizeof(ok) - 1, MSG_NOSIGNAL);
		break;
	case ANSWER_503:
		(void)!send(c, bad, sizeof(bad) - 1, MSG_NOSIGNAL);
		break;
	case ANSWER_GARBAGE:
		(void)!send(c, garbage, sizeof(garbage) - 1, MSG_NOSIGNAL);
		break;
	case ANSWER_NOTHING: { /* hold the connection until the client gives up (bounded) */
		struct pollfd p = { .fd = c, .events = POLLIN };
		for (int i = 0; i < 40 && !atomic_load(&s->stop); i++)
			if (poll(&p, 1, 25) > 0 && recv(c, req, sizeof(req), 0) <= 0)
				break;
		break;
	}
	}
	close(c);
}

static void *serve(void *arg)
{
	struct server *s = arg;
	while (!atomic_load(&s->stop)) {
		struct pollfd p = { .fd = s->fd, .events = POLLIN };
		if (poll(&p, 1, 20) <= 0)
			continue;
		int c = accept(s->fd, NULL, NULL);
		if (c >= 0)
			serve_one(s, c);
	}
	return NULL;
}

/* A listening socket on 127.0.0.1, any free port. */
static int listen_loopback(uint16_t *port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fd, 16), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	*port = ntohs(a.sin_port);
	return fd;
}

struct fx {
	struct server srv;
	uint16_t dead_port; /* nothing listens there */
	struct config cfg;
	struct router_health *reg;
	struct router *r;
};

static int setup(void **state)
{
	static struct fx f;
	char err[CONFIG_ERR_MAX], yaml[2048];
	memset(&f, 0, sizeof(f));
	pthread_mutex_init(&f.srv.lock, NULL);
	f.srv.fd = listen_loopback(&f.srv.port);
	int dead = listen_loopback(&f.dead_port);
	close(dead);
	snprintf(yaml, sizeof(yaml),
		 "providers:\n"
		 "  - { name: up, kind: openai-compatible, base_url: 'http://127.0.0.1:%u/api',\n"
		 "      health_check: { path: /v1/models, interval: 100ms, timeout: 80ms } }\n"
		 "  - { name: dead, kind: openai-compatible, base_url: 'http://127.0.0.1:%u',\n"
		 "      health_check: { path: /health, interval: 100ms, timeout: 80ms } }\n"
		 "  - { name: tls, kind: openai, base_url: 'https://127.0.0.1:%u',\n"
		 "      health_check: { path: /v1/models, interval: 100ms, timeout: 80ms } }\n"
		 "  - { name: unchecked, kind: openai-compatible, base_url: 'http://127.0.0.1:%u' }\n"
		 "models:\n"
		 "  - { name: x, targets: [ { provider: up, model: m1 }, { provider: dead, model: m1 } ] }\n"
		 "  - { name: y, targets: [ { provider: up, model: m2 }, { provider: tls, model: m2 },\n"
		 "                          { provider: unchecked, model: m2 } ] }\n",
		 f.srv.port, f.dead_port, f.dead_port, f.dead_port);
	if (config_load_string(yaml, strlen(yaml), "test", &f.cfg, err, sizeof(err))) {
		fprintf(stderr, "%s\n", err);
		return -1;
	}
	static const struct router_opts o = { .breaker_failures = 3,
					       .breaker_cooldown_us = 10000000,
					       .probe_timeout_us = 10000000 };
	f.reg = router_health_new();
	f.r = f.reg ? router_new(&f.cfg, &o, f.reg, err, sizeof(err)) : NULL;
	if (!f.r || pthread_create(&f.srv.thread, NULL, serve, &f.srv))
		return -1;
	*state = &f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	atomic_store(&f->srv.stop, true);
	pthread_join(f->srv.thread, NULL);
	close(f->srv.fd);
	router_free(f->r);
	router_health_free(f->reg);
	config_free(&f->cfg);
	return 0;
}

static const struct router_target *target(struct fx *f, const char *model, unsigned i)
{
	const struct router_model *m = router_find(f->r, slice_cstr(model));
	assert_non_null(m);
	assert_true(i < m->ntargets);
	return &m->targets[i];
}

/* Wait (at most 3 s) for a breaker to reach a state. */
static bool reaches(struct fx *f, const struct router_target *t, enum breaker_state want)
{
	uint64_t deadline = now_ms() + 3000;
	while (router_breaker(f->r, t) != want && now_ms() < deadline)
		usleep(5000);
	return router_breaker(f->r, t) == want;
}

static void test_open_and_close(void **state)
{
	struct fx *f = *state;
	char err[256];
	const char *headers[] = { "Authorization: Bearer test-key\r\n", NULL, NULL, NULL };
	const struct router_target *x_up = target(f, "x", 0), *y_up = target(f, "y", 0);

	atomic_store(&f->srv.mode, ANSWER_503);
	struct healthcheck *hc = healthcheck_start(&f->cfg, f->reg, headers, err, sizeof(err));
	assert_non_null(hc);
	/* every upstream model of the provider: both targets of "up" */
	assert_true(reaches(f, x_up, BREAKER_OPEN));
	assert_true(reaches(f, y_up, BREAKER_OPEN));
	/* the request: prefix and path, Host, the headers given, and nothing of the key in
	 * any other place */
	pthread_mutex_lock(&f->srv.lock);
	char first[1024];
	memcpy(first, f->srv.first, sizeof(first));
	pthread_mutex_unlock(&f->srv.lock);
	static const char line[] = "GET /api/v1/models HTTP/1.1\r\n";
	assert_memory_equal(first, line, sizeof(line) - 1);
	char host[64];
	snprintf(host, sizeof(host), "\r\nHost: 127.0.0.1:%u\r\n", f->srv.port);
	assert_non_null(strstr(first, host));
	assert_non_null(strstr(first, "\r\nAuthorization: Bearer test-key\r\n"));
	assert_non_null(strstr(first, "\r\nConnection: close\r\n"));

	/* the provider recovers: closed by the next check, no request needed */
	atomic_store(&f->srv.mode, ANSWER_200);
	assert_true(reaches(f, x_up, BREAKER_CLOSED));
	assert_true(reaches(f, y_up, BREAKER_CLOSED));
	/* a server that accepts and says nothing: the timeout opens it */
	atomic_store(&f->srv.mode, ANSWER_NOTHING);
	assert_true(reaches(f, x_up, BREAKER_OPEN));
	atomic_store(&f->srv.mode, ANSWER_200);
	assert_true(reaches(f, x_up, BREAKER_CLOSED));
	/* something that is not HTTP */
	atomic_store(&f->srv.mode, ANSWER_GARBAGE);
	assert_true(reaches(f, x_up, BREAKER_OPEN));
	atomic_store(&f->srv.mode, ANSWER_200);
	assert_true(reaches(f, x_up, BREAKER_CLOSED));

	/* nothing listens: refused, open, over http as over https; the unchecked provider is
	 * left alone */
	assert_true(reaches(f, target(f, "x", 1), BREAKER_OPEN));
	assert_true(reaches(f, target(f, "y", 1), BREAKER_OPEN));
	assert_int_equal(router_breaker(f->r, target(f, "y", 2)), BREAKER_CLOSED);
	healthcheck_stop(hc);
}

/* Stopping abandons a check in progress: it does not wait out a silent provider. */
static void test_stop_is_prompt(void **state)
{
	struct fx *f = *state;
	char err[CONFIG_ERR_MAX], yaml[512];
	struct config c;
	snprintf(yaml, sizeof(yaml),
		 "providers:\n"
		 "  - { name: up, kind: openai-compatible, base_url: 'http://127.0.0.1:%u/api',\n"
		 "      health_check: { path: /v1/models, interval: 5s, timeout: 2s } }\n",
		 f->srv.port);
	assert_int_equal(config_load_string(yaml, strlen(yaml), "t", &c, err, sizeof(err)), 0);
	atomic_store(&f->srv.mode, ANSWER_NOTHING);
	struct healthcheck *hc = healthcheck_start(&c, f->reg, NULL, err, sizeof(err));
	assert_non_null(hc);
	config_free(&c); /* the checker keeps copies */
	uint64_t deadline = now_ms() + 2000;
	while (atomic_load(&f->srv.requests) == 0 && now_ms() < deadline)
		usleep(5000);
	assert_int_equal(atomic_load(&f->srv.requests), 1);
	uint64_t t0 = now_ms();
	healthcheck_stop(hc);
	assert_true(now_ms() - t0 < 500); /* the check alone would take 2 s */
	assert_int_equal(router_breaker(f->r, target(f, "x", 0)), BREAKER_CLOSED);
}

/* No provider with a check: a handle with no thread, stopped at once. */
static void test_nothing_to_check(void **state)
{
	struct config c;
	char err[CONFIG_ERR_MAX];
	static const char y[] = "providers: [ { name: a, kind: openai, base_url: http://127.0.0.1:1 } ]\n";
	(void)state;
	assert_int_equal(config_load_string(y, sizeof(y) - 1, "t", &c, err, sizeof(err)), 0);
	struct router_health *reg = router_health_new();
	assert_non_null(reg);
	struct healthcheck *hc = healthcheck_start(&c, reg, NULL, err, sizeof(err));
	assert_non_null(hc);
	healthcheck_stop(hc);
	healthcheck_stop(NULL);
	router_health_free(reg);
	config_free(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_open_and_close, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stop_is_prompt, setup, teardown),
		cmocka_unit_test(test_nothing_to_check),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
