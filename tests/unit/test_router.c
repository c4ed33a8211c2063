/* test_router.c - routing policies and breakers under a clock the test moves: the exact
 * weighted split, latency routing leaving a slowed target and coming back, cost and
 * context windows, priority, every breaker transition, the error-rate window, and health
 * shared by two routers through one registry (a reload). No sleeps. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/config.h"
#include "policy/router.h"

#define MS 1000ull

static const char yaml[] =
	"providers:\n"
	"  - { name: a, kind: openai-compatible, base_url: http://127.0.0.1:1 }\n"
	"  - { name: b, kind: openai-compatible, base_url: http://127.0.0.1:2 }\n"
	"  - { name: c, kind: anthropic, base_url: http://127.0.0.1:3 }\n"
	"models:\n"
	"  - name: split\n"
	"    targets: [ { provider: a, model: m, weight: 90 }, { provider: b, model: m, weight: 10 } ]\n"
	"  - name: fast\n"
	"    routing: latency\n"
	"    targets: [ { provider: a, model: m }, { provider: b, model: m } ]\n"
	"  - name: cheap\n"
	"    routing: cost\n"
	"    price: { input_per_mtok: 5, output_per_mtok: 15 }\n"
	"    context_window: 100000\n"
	"    targets:\n"
	"      - { provider: a, model: big }\n"
	"      - { provider: b, model: small, context_window: 1000,\n"
	"          price: { input_per_mtok: 0.1, output_per_mtok: 0.2 } }\n"
	"  - name: ordered\n"
	"    routing: priority\n"
	"    fallback: [ other ]\n"
	"    targets: [ { provider: a, model: m }, { provider: b, model: m } ]\n"
	"  - name: other\n"
	"    targets: [ { provider: c, model: claude } ]\n";

struct fx {
	struct config cfg;
	struct router *r;
	struct router_worker *rw;
	uint64_t now;
};

static const struct router_opts opts = {
	.breaker_failures = 3,
	.breaker_cooldown_us = 1000 * MS,
	.probe_timeout_us = 5000 * MS,
	.latency_decay_us = 200 * MS,
	.explore_every = 20,
};

static int setup(void **state)
{
	static struct fx f;
	char err[CONFIG_ERR_MAX];
	memset(&f, 0, sizeof(f));
	if (config_load_string(yaml, sizeof(yaml) - 1, "test", &f.cfg, err, sizeof(err))) {
		fprintf(stderr, "%s\n", err);
		return -1;
	}
	f.r = router_new(&f.cfg, &opts, NULL, err, sizeof(err));
	f.rw = f.r ? router_worker_new(f.r) : NULL;
	f.now = 1000 * MS;
	*state = &f;
	return f.rw ? 0 : -1;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	router_worker_free(f->rw);
	router_free(f->r);
	config_free(&f->cfg);
	return 0;
}

static const struct router_model *model(struct fx *f, const char *name)
{
	const struct router_model *m = router_find(f->r, slice_cstr(name));
	assert_non_null(m);
	return m;
}

static int pick(struct fx *f, const struct router_model *m, uint64_t tried, bool *probe)
{
	static const struct route_req q = { 10, 10 };
	bool p;
	int t = router_pick(f->rw, m, tried, &q, f->now, probe ? probe : &p);
	return t;
}

static void test_weighted_split(void **state)
{
	struct fx *f = *state;
	const struct router_model *m = model(f, "split");
	unsigned n[2] = { 0 };
	for (int i = 0; i < 10000; i++) {
		bool probe;
		int t = pick(f, m, 0, &probe);
		assert_in_range(t, 0, 1);
		n[t]++;
		router_report(f->rw, m, (unsigned)t, probe, ROUTE_OK, 1000, f->now);
		/* smooth: any 10 consecutive picks already hold the 9:1 split */
		if (i % 10 == 9)
			assert_int_equal(n[1], (unsigned)(i + 1) / 10);
	}
	assert_int_equal(n[0], 9000);
	assert_int_equal(n[1], 1000);
	/* tried targets are skipped: the rest take everything */
	assert_int_equal(pick(f, m, 1, NULL), 1);
	router_report(f->rw, m, 1, false, ROUTE_OK, 1000, f->now);
	assert_int_equal(pick(f, m, 3, NULL), -1);
}

/* Send n requests 10 ms apart, target i answering in lat[i] ms; count the picks. */
static void run_latency(struct fx *f, const struct router_model *m, const unsigned lat[2],
			unsigned n, unsigned count[2])
{
	count[0] = count[1] = 0;
	for (unsigned i = 0; i < n; i++) {
		bool probe;
		int t = pick(f, m, 0, &probe);
		assert_in_range(t, 0, 1);
		count[t]++;
		f->now += 10 * MS;
		router_report(f->rw, m, (unsigned)t, probe, ROUTE_OK, lat[t] * MS, f->now);
	}
}

static void test_latency_moves_and_returns(void **state)
{
	struct fx *f = *state;
	const struct router_model *m = model(f, "fast");
	unsigned c[2];
	const unsigned normal[2] = { 10, 40 }, a_slow[2] = { 500, 40 };

	run_latency(f, m, normal, 400, c);
	assert_true(c[0] >= 360); /* the fastest takes most, the other is still probed */
	assert_true(c[1] >= 10);
	run_latency(f, m, a_slow, 400, c);
	assert_true(c[1] >= 360);
	assert_true(c[0] >= 10 && c[0] <= 40);
	/* a recovers: within a few probes (and decay times) traffic goes back */
	run_latency(f, m, normal, 200, c);
	run_latency(f, m, normal, 400, c);
	assert_true(c[0] >= 360);
	assert_true(router_latency_us(f->rw, &m->targets[0]) < 40 * MS);
}

static void test_latency_counts_in_flight(void **state)
{
	struct fx *f = *state;
	const struct router_model *m = model(f, "fast");
	unsigned c[2];
	const unsigned lat[2] = { 10, 15 };
	run_latency(f, m, lat, 100, c);
	/* Requests in flight on the fast one make it cost more than the idle slower one. */
	bool p;
	int held[4];
	for (int i = 0; i < 4; i++)
		held[i] = pick(f, m, 0, &p);
	assert_int_equal(held[0], 0);
	bool went_b = false;
	for (int i = 1; i < 4; i++)
		went_b |= held[i] == 1;
	assert_true(went_b);
	for (int i = 0; i < 4; i++)
		router_report(f->rw, m, (unsigned)held[i], false, ROUTE_CANCELLED, 0, f->now);
}

static void test_cost_and_context(void **state)
{
	struct fx *f = *state;
	const struct router_model *m = model(f, "cheap");
	struct route_req small = { 200, 100 }, large = { 5000, 100 };
	bool p;
	int t = router_pick(f->rw, m, 0, &small, f->now, &p);
	assert_int_equal(t, 1); /* the cheap one fits */
	router_report(f->rw, m, 1, p, ROUTE_OK, 1, f->now);
	t = router_pick(f->rw, m, 0, &large, f->now, &p);
	assert_int_equal(t, 0); /* only the big window fits */
	router_report(f->rw, m, 0, p, ROUTE_OK, 1, f->now);
	t = router_pick(f->rw, m, 2, &small, f->now, &p);
	assert_int_equal(t, 0); /* the cheap one was tried */
	router_report(f->rw, m, 0, p, ROUTE_OK, 1, f->now);
	t = router_pick(f->rw, m, 2, &large, f->now, &p);
	assert_int_equal(t, 0);
	router_report(f->rw, m, 0, p, ROUTE_OK, 1, f->now);
	assert_string_equal(m->targets[1].upstream_model, "small");
	assert_int_equal(m->targets[1].context_window, 1000);
	assert_int_equal(m->targets[0].context_window, 100000);
}

static void report_fail(struct fx *f, const struct router_model *m, unsigned t, bool probe)
{
	router_report(f->rw, m, t, probe, ROUTE_FAILED, 1 * MS, f->now);
}

static void test_breaker_transitions(void **state)
{
	struct fx *f = *state;
	const struct router_model *m = model(f, "ordered");
	const struct router_target *a = &m->targets[0];
	bool probe;

	assert_int_equal(m->nfallback, 1);
	assert_string_equal(router_model_at(f->r, m->fallback[0])->name, "other");
	/* two failures: still closed, still first */
	for (int i = 0; i < 2; i++) {
		assert_int_equal(pick(f, m, 0, &probe), 0);
		report_fail(f, m, 0, probe);
	}
	assert_int_equal(router_breaker(f->r, a), BREAKER_CLOSED);
	/* a success resets the count */
	assert_int_equal(pick(f, m, 0, &probe), 0);
	router_report(f->rw, m, 0, probe, ROUTE_OK, 1 * MS, f->now);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(pick(f, m, 0, &probe), 0);
		report_fail(f, m, 0, probe);
	}
	assert_int_equal(router_breaker(f->r, a), BREAKER_OPEN);
	/* open: skipped at once, the next in order serves */
	assert_int_equal(pick(f, m, 0, &probe), 1);
	assert_false(probe);
	router_report(f->rw, m, 1, probe, ROUTE_OK, 1 * MS, f->now);
	assert_false(router_has_usable(f->r, m, 2, f->now));
	assert_int_equal(pick(f, m, 2, &probe), -1);
	assert_int_equal(router_next_probe_us(f->r, m), f->now + opts.breaker_cooldown_us);

	/* after the cool-down: exactly one probe */
	f->now += opts.breaker_cooldown_us;
	assert_true(router_has_usable(f->r, m, 2, f->now));
	assert_int_equal(pick(f, m, 0, &probe), 0);
	assert_true(probe);
	assert_int_equal(router_breaker(f->r, a), BREAKER_HALF_OPEN);
	bool second;
	assert_int_equal(pick(f, m, 0, &second), 1);
	assert_false(second);
	router_report(f->rw, m, 1, second, ROUTE_OK, 1 * MS, f->now);
	/* the probe fails: open again for a whole cool-down */
	report_fail(f, m, 0, probe);
	assert_int_equal(router_breaker(f->r, a), BREAKER_OPEN);
	f->now += opts.breaker_cooldown_us - 1;
	assert_int_equal(pick(f, m, 0, &probe), 1);
	router_report(f->rw, m, 1, probe, ROUTE_OK, 1 * MS, f->now);
	f->now += 1;
	/* a probe whose client went away frees the slot at once */
	assert_int_equal(pick(f, m, 0, &probe), 0);
	assert_true(probe);
	router_report(f->rw, m, 0, probe, ROUTE_CANCELLED, 0, f->now);
	assert_int_equal(pick(f, m, 0, &probe), 0);
	assert_true(probe);
	/* the probe succeeds: closed */
	router_report(f->rw, m, 0, probe, ROUTE_OK, 1 * MS, f->now);
	assert_int_equal(router_breaker(f->r, a), BREAKER_CLOSED);
	assert_int_equal(pick(f, m, 0, &probe), 0);
	assert_false(probe);
	router_report(f->rw, m, 0, probe, ROUTE_OK, 1 * MS, f->now);
}

/* A stream on the model's first target: picked, begun, and ended whole (ok) or broken. */
static void stream_on_first(struct fx *f, const struct router_model *m, bool ok)
{
	bool probe;
	assert_int_equal(pick(f, m, 0, &probe), 0);
	router_report(f->rw, m, 0, probe, ROUTE_STARTED, 1 * MS, f->now);
	router_stream_end(f->rw, m, 0, ok, f->now);
}

/* Streams: a stream that begins says nothing of health until it ends; streams that break
 * open the breaker as refused connections do, and a whole one resets the count. */
static void test_broken_streams(void **state)
{
	struct fx *f = *state;
	const struct router_model *m = model(f, "ordered");
	const struct router_target *a = &m->targets[0];
	bool probe;

	for (int i = 0; i < 2; i++)
		stream_on_first(f, m, false);
	assert_int_equal(router_breaker(f->r, a), BREAKER_CLOSED);
	stream_on_first(f, m, true); /* whole: the count starts again */
	for (int i = 0; i < 2; i++)
		stream_on_first(f, m, false);
	assert_int_equal(router_breaker(f->r, a), BREAKER_CLOSED);
	/* a stream that begins does not reset the count; the third break in a row opens */
	assert_int_equal(pick(f, m, 0, &probe), 0);
	router_report(f->rw, m, 0, probe, ROUTE_STARTED, 1 * MS, f->now);
	assert_int_equal(router_breaker(f->r, a), BREAKER_CLOSED);
	router_stream_end(f->rw, m, 0, false, f->now);
	assert_int_equal(router_breaker(f->r, a), BREAKER_OPEN);
	assert_int_equal(pick(f, m, 0, &probe), 1);
	router_report(f->rw, m, 1, probe, ROUTE_OK, 1 * MS, f->now);

	/* a probe whose stream begins closes the breaker at once, without waiting for its end */
	f->now += opts.breaker_cooldown_us;
	assert_int_equal(pick(f, m, 0, &probe), 0);
	assert_true(probe);
	router_report(f->rw, m, 0, probe, ROUTE_STARTED, 1 * MS, f->now);
	assert_int_equal(router_breaker(f->r, a), BREAKER_CLOSED);
	assert_int_equal(pick(f, m, 0, &probe), 0);
	assert_false(probe);
	router_report(f->rw, m, 0, probe, ROUTE_OK, 1 * MS, f->now);
}

static void test_probe_that_never_reports_expires(void **state)
{
	struct fx *f = *state;
	const struct router_model *m = model(f, "other");
	bool probe;
	for (int i = 0; i < 3; i++) {
		assert_int_equal(pick(f, m, 0, &probe), 0);
		report_fail(f, m, 0, probe);
	}
	assert_int_equal(pick(f, m, 0, &probe), -1);
	f->now += opts.breaker_cooldown_us;
	assert_int_equal(pick(f, m, 0, &probe), 0);
	assert_true(probe);
	assert_int_equal(pick(f, m, 0, &probe), -1); /* the probe is out */
	f->now += opts.probe_timeout_us;
	assert_int_equal(pick(f, m, 0, &probe), 0); /* lost: another may go */
	assert_true(probe);
	router_report(f->rw, m, 0, probe, ROUTE_OK, 1 * MS, f->now);
	assert_int_equal(router_breaker(f->r, &m->targets[0]), BREAKER_CLOSED);
}

static void test_health_is_shared_by_target(void **state)
{
	struct fx *f = *state;
	/* "split" and "fast" both route to a/m: one breaker for both, seen by every worker */
	const struct router_model *s = model(f, "split"), *l = model(f, "fast");
	struct router_worker *other = router_worker_new(f->r);
	assert_non_null(other);
	bool probe;
	for (int i = 0; i < 3; i++) {
		int t = router_pick(other, l, 2, &(struct route_req){ 0 }, f->now, &probe);
		assert_int_equal(t, 0);
		router_report(other, l, 0, probe, ROUTE_TIMEOUT, 5000 * MS, f->now);
	}
	assert_int_equal(router_breaker(f->r, &s->targets[0]), BREAKER_OPEN);
	for (int i = 0; i < 20; i++) {
		assert_int_equal(pick(f, s, 0, &probe), 1);
		router_report(f->rw, s, 1, probe, ROUTE_OK, 1 * MS, f->now);
	}
	router_worker_free(other);
}

/* ---------------------------------------------------------------- error rate */

static const struct router_opts rate_opts = {
	.breaker_failures = 0, /* only the error rate opens these */
	.breaker_cooldown_us = 1000 * MS,
	.breaker_error_rate = 50,
	.breaker_min_requests = 20,
	.breaker_window_us = 10000 * MS,
	.probe_timeout_us = 5000 * MS,
	.latency_decay_us = 200 * MS,
};

/* A router on the fixture's config with other options, and one worker on it. */
static struct router *router_with(struct fx *f, const struct router_opts *o,
				  struct router_health *h, struct router_worker **rw)
{
	char err[256];
	struct router *r = router_new(&f->cfg, o, h, err, sizeof(err));
	assert_non_null(r);
	*rw = router_worker_new(r);
	assert_non_null(*rw);
	return r;
}

/* One attempt on m's only target through rw, with the given outcome. */
static void attempt(struct router_worker *rw, const struct router_model *m, uint64_t now,
		    enum route_outcome o)
{
	bool probe;
	assert_int_equal(router_pick(rw, m, 0, &(struct route_req){ 0 }, now, &probe), 0);
	router_report(rw, m, 0, probe, o, 1 * MS, now);
}

static void assert_counts(const struct router *r, const struct router_model *m, uint64_t now,
			  uint64_t want_ok, uint64_t want_fail)
{
	uint64_t ok, fail;
	router_health_counts(r, &m->targets[0], now, &ok, &fail);
	assert_int_equal(ok, want_ok);
	assert_int_equal(fail, want_fail);
}

static void test_error_rate_threshold(void **state)
{
	struct fx *f = *state;
	struct router_worker *rw;
	struct router *r = router_with(f, &rate_opts, NULL, &rw);
	const struct router_model *m = router_find(r, slice_cstr("other"));
	const struct router_target *t = &m->targets[0];

	/* 19 failures in a row: all failed, but fewer than min_requests */
	for (int i = 0; i < 19; i++)
		attempt(rw, m, f->now, ROUTE_FAILED);
	assert_counts(r, m, f->now, 0, 19);
	assert_int_equal(router_breaker(r, t), BREAKER_CLOSED);
	/* cancelled attempts say nothing about the target */
	for (int i = 0; i < 5; i++)
		attempt(rw, m, f->now, ROUTE_CANCELLED);
	assert_counts(r, m, f->now, 0, 19);
	assert_int_equal(router_breaker(r, t), BREAKER_CLOSED);
	/* 19 successes: 19 of 38 failed, exactly 50%: not more than the threshold */
	for (int i = 0; i < 19; i++)
		attempt(rw, m, f->now, ROUTE_OK);
	assert_counts(r, m, f->now, 19, 19);
	assert_int_equal(router_breaker(r, t), BREAKER_CLOSED);
	/* one more failure (a timeout counts too): 20 of 39, over 50%: open */
	attempt(rw, m, f->now, ROUTE_TIMEOUT);
	assert_int_equal(router_breaker(r, t), BREAKER_OPEN);
	assert_false(router_has_usable(r, m, 0, f->now));
	/* the probe succeeds: closed, and the window starts afresh */
	f->now += rate_opts.breaker_cooldown_us;
	attempt(rw, m, f->now, ROUTE_OK);
	assert_int_equal(router_breaker(r, t), BREAKER_CLOSED);
	assert_counts(r, m, f->now, 1, 0);
	router_worker_free(rw);
	router_free(r);
}

static void test_error_rate_window_forgets(void **state)
{
	struct fx *f = *state;
	struct router_worker *rw;
	struct router *r = router_with(f, &rate_opts, NULL, &rw);
	const struct router_model *m = router_find(r, slice_cstr("other"));
	const struct router_target *t = &m->targets[0];
	const uint64_t window = rate_opts.breaker_window_us, tenth = window / 10;

	f->now = 50 * window; /* a bucket boundary */
	for (int i = 0; i < 15; i++)
		attempt(rw, m, f->now, ROUTE_FAILED);
	/* nine tenths later they still count */
	assert_counts(r, m, f->now + 9 * tenth + tenth - 1, 0, 15);
	/* a whole window later they do not: these five failures of twenty would open it
	 * (20 of 20) if the old ones were still counted */
	f->now += window;
	assert_counts(r, m, f->now, 0, 0);
	for (int i = 0; i < 15; i++)
		attempt(rw, m, f->now, ROUTE_OK);
	for (int i = 0; i < 5; i++)
		attempt(rw, m, f->now, ROUTE_FAILED);
	assert_counts(r, m, f->now, 15, 5);
	assert_int_equal(router_breaker(r, t), BREAKER_CLOSED);
	/* half a window on, those still count: ten more failures make 15 of 30, not more
	 * than half; the eleventh opens it (11 alone would be under min_requests) */
	f->now += window / 2;
	for (int i = 0; i < 10; i++)
		attempt(rw, m, f->now, ROUTE_FAILED);
	assert_counts(r, m, f->now, 15, 15);
	assert_int_equal(router_breaker(r, t), BREAKER_CLOSED);
	attempt(rw, m, f->now, ROUTE_FAILED);
	assert_int_equal(router_breaker(r, t), BREAKER_OPEN);
	router_worker_free(rw);
	router_free(r);
}

struct hammer {
	struct router *r;
	const struct router_model *m;
	uint64_t now;
	unsigned n;
};

static void *hammer_run(void *arg)
{
	struct hammer *h = arg;
	struct router_worker *rw = router_worker_new(h->r);
	for (unsigned i = 0; rw && i < h->n; i++) {
		bool probe;
		int t = router_pick(rw, h->m, 0, &(struct route_req){ 0 }, h->now, &probe);
		if (t == 0)
			router_report(rw, h->m, 0, probe, i % 4 ? ROUTE_OK : ROUTE_FAILED, 1, h->now);
	}
	router_worker_free(rw);
	return NULL;
}

/* Workers that enter a new bucket together: the reset of the stale one loses no count. */
static void test_error_rate_counts_exact_under_threads(void **state)
{
	struct fx *f = *state;
	struct router_worker *rw;
	struct router_opts o = rate_opts;
	o.breaker_error_rate = 0; /* counted, never opened: every pick goes through */
	struct router *r = router_with(f, &o, NULL, &rw);
	const struct router_model *m = router_find(r, slice_cstr("other"));
	enum { THREADS = 4, EACH = 50000 };

	/* stale words in the very buckets the threads will use */
	for (int i = 0; i < 7; i++)
		attempt(rw, m, f->now, i % 2 ? ROUTE_OK : ROUTE_FAILED);
	struct hammer h = { r, m, f->now + o.breaker_window_us, EACH };
	pthread_t th[THREADS];
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, hammer_run, &h), 0);
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	assert_counts(r, m, h.now, THREADS * EACH * 3 / 4, THREADS * EACH / 4);
	router_worker_free(rw);
	router_free(r);
}

/* ---------------------------------------------------------------- reload */

/* The next config: a/m still there, a now also at another address, b gone. */
static const char yaml_next[] =
	"providers:\n"
	"  - { name: a, kind: openai-compatible, base_url: http://127.0.0.1:1 }\n"
	"  - { name: a2, kind: openai-compatible, base_url: http://127.0.0.1:1 }\n"
	"models:\n"
	"  - name: ordered\n"
	"    routing: priority\n"
	"    targets: [ { provider: a, model: m }, { provider: a2, model: m } ]\n";

static void test_reload_shares_health(void **state)
{
	struct fx *f = *state;
	char err[CONFIG_ERR_MAX];
	struct config next;
	assert_int_equal(config_load_string(yaml_next, sizeof(yaml_next) - 1, "next", &next, err,
					    sizeof(err)), 0);
	struct router_health *reg = router_health_new();
	assert_non_null(reg);
	struct router_worker *w1, *w2;
	struct router *r1 = router_with(f, &opts, reg, &w1);
	/* the new router: a longer cool-down */
	struct router_opts o2 = opts;
	o2.breaker_cooldown_us = 3 * opts.breaker_cooldown_us;
	struct router *r2 = router_new(&next, &o2, reg, err, sizeof(err));
	assert_non_null(r2);
	w2 = router_worker_new(r2);
	assert_non_null(w2);
	const struct router_model *m1 = router_find(r1, slice_cstr("ordered"));
	const struct router_model *m2 = router_find(r2, slice_cstr("ordered"));
	assert_ptr_equal(router_health_of(r1, &m1->targets[0]), router_health_of(r2, &m2->targets[0]));
	/* same name, same model, another provider entry: its own health */
	assert_ptr_not_equal(router_health_of(r1, &m1->targets[1]),
			     router_health_of(r2, &m2->targets[1]));
	struct router_health_entry *ea[4];
	assert_int_equal(router_health_entries(reg, "a", "http://127.0.0.1:1", ea, 4), 2); /* m, big */
	assert_int_equal(router_health_entries(reg, "a", "http://127.0.0.1:9", ea, 4), 0);

	/* the old router's worker trips it (3 failures, r1's rule); the new one sees it open */
	bool probe;
	for (int i = 0; i < 3; i++) {
		assert_int_equal(router_pick(w1, m1, 0, &(struct route_req){ 0 }, f->now, &probe), 0);
		router_report(w1, m1, 0, probe, ROUTE_FAILED, 1 * MS, f->now);
	}
	assert_int_equal(router_breaker(r2, &m2->targets[0]), BREAKER_OPEN);
	assert_int_equal(router_pick(w2, m2, 0, &(struct route_req){ 0 }, f->now, &probe), 1);
	router_report(w2, m2, 1, probe, ROUTE_OK, 1 * MS, f->now);
	/* the old one is retired; the probe goes through the new one and fails: open for
	 * the new router's cool-down */
	router_worker_free(w1);
	router_free(r1);
	f->now += opts.breaker_cooldown_us;
	assert_int_equal(router_pick(w2, m2, 0, &(struct route_req){ 0 }, f->now, &probe), 0);
	assert_true(probe);
	assert_int_equal(router_breaker(r2, &m2->targets[0]), BREAKER_HALF_OPEN);
	router_report(w2, m2, 0, probe, ROUTE_FAILED, 1 * MS, f->now);
	assert_int_equal(router_next_probe_us(r2, m2), f->now + o2.breaker_cooldown_us);
	/* a third router on the same registry still sees it */
	struct router *r3 = router_new(&next, &opts, reg, err, sizeof(err));
	assert_non_null(r3);
	assert_int_equal(router_breaker(r3, &router_find(r3, slice_cstr("ordered"))->targets[0]),
			 BREAKER_OPEN);
	router_free(r3);
	router_worker_free(w2);
	router_free(r2);
	router_health_free(reg);
	config_free(&next);
}

/* A health check's verdicts: a failed check opens (and keeps open), a passed one closes. */
static void test_health_mark(void **state)
{
	struct fx *f = *state;
	const struct router_model *m = model(f, "other");
	struct router_health_entry *e = router_health_of(f->r, &m->targets[0]);
	bool probe;

	router_health_mark(e, false, 500 * MS, f->now);
	assert_int_equal(router_breaker(f->r, &m->targets[0]), BREAKER_OPEN);
	assert_int_equal(pick(f, m, 0, &probe), -1);
	/* still failing: no probe before the next check is due */
	f->now += 400 * MS;
	router_health_mark(e, false, 500 * MS, f->now);
	f->now += 400 * MS;
	assert_int_equal(pick(f, m, 0, &probe), -1);
	router_health_mark(e, true, 500 * MS, f->now);
	assert_int_equal(router_breaker(f->r, &m->targets[0]), BREAKER_CLOSED);
	assert_int_equal(pick(f, m, 0, &probe), 0);
	assert_false(probe);
	router_report(f->rw, m, 0, probe, ROUTE_OK, 1 * MS, f->now);
	/* a half-open breaker is left to its probe */
	for (int i = 0; i < 3; i++) {
		assert_int_equal(pick(f, m, 0, &probe), 0);
		report_fail(f, m, 0, probe);
	}
	f->now += opts.breaker_cooldown_us;
	assert_int_equal(pick(f, m, 0, &probe), 0);
	assert_true(probe);
	router_health_mark(e, false, 500 * MS, f->now);
	assert_int_equal(router_breaker(f->r, &m->targets[0]), BREAKER_HALF_OPEN);
	router_report(f->rw, m, 0, probe, ROUTE_OK, 1 * MS, f->now);
	assert_int_equal(router_breaker(f->r, &m->targets[0]), BREAKER_CLOSED);
}

/* The retry, breaker and latency sections: defaults, values, and a bad status named. */
static void test_config_sections(void **state)
{
	struct config c;
	char err[CONFIG_ERR_MAX];
	(void)state;
	assert_int_equal(config_load_string("", 0, "t", &c, err, sizeof(err)), 0);
	assert_int_equal(c.retry.attempts, 3);
	assert_int_equal(c.retry.non_status, 6);
	assert_int_equal(c.retry.on_status[0], 429);
	assert_int_equal(c.retry.on_status[5], 529);
	assert_int_equal(c.breaker.failures, 5);
	assert_int_equal(c.breaker.cooldown, 10000);
	assert_int_equal(c.latency.explore_percent, 5);
	config_free(&c);
	static const char y[] = "retry: { attempts: 5, backoff_base: 10ms, backoff_cap: 2s, "
				"deadline: 3s, on_status: [503, 529] }\n"
				"breaker: { failures: 0, cooldown: 250ms }\n";
	assert_int_equal(config_load_string(y, sizeof(y) - 1, "t", &c, err, sizeof(err)), 0);
	assert_int_equal(c.retry.attempts, 5);
	assert_int_equal(c.retry.backoff_base, 10);
	assert_int_equal(c.retry.backoff_cap, 2000);
	assert_int_equal(c.retry.deadline, 3000);
	assert_int_equal(c.retry.non_status, 2);
	assert_int_equal(c.retry.on_status[1], 529);
	assert_int_equal(c.breaker.failures, 0);
	assert_int_equal(c.breaker.cooldown, 250);
	config_free(&c);
	static const char bad[] = "retry: { on_status: [503, 5030] }\n";
	assert_int_equal(config_load_string(bad, sizeof(bad) - 1, "t", &c, err, sizeof(err)), -1);
	assert_string_equal(err, "t:1:27: bad value '5030' in 'on_status' (expected HTTP statuses "
				 "such as 503)");
	static const char many[] = "retry: { attempts: 9 }\n";
	assert_int_equal(config_load_string(many, sizeof(many) - 1, "t", &c, err, sizeof(err)), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_weighted_split, setup, teardown),
		cmocka_unit_test_setup_teardown(test_latency_moves_and_returns, setup, teardown),
		cmocka_unit_test_setup_teardown(test_latency_counts_in_flight, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cost_and_context, setup, teardown),
		cmocka_unit_test_setup_teardown(test_breaker_transitions, setup, teardown),
		cmocka_unit_test_setup_teardown(test_broken_streams, setup, teardown),
		cmocka_unit_test_setup_teardown(test_probe_that_never_reports_expires, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_health_is_shared_by_target, setup, teardown),
		cmocka_unit_test_setup_teardown(test_error_rate_threshold, setup, teardown),
		cmocka_unit_test_setup_teardown(test_error_rate_window_forgets, setup, teardown),
		cmocka_unit_test_setup_teardown(test_error_rate_counts_exact_under_threads, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_reload_shares_health, setup, teardown),
		cmocka_unit_test_setup_teardown(test_health_mark, setup, teardown),
		cmocka_unit_test(test_config_sections),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
