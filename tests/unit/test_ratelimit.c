/* test_ratelimit.c - per-minute limits with a clock the test drives: refusals, retry-after,
 * refill, settle, cancel, reload, and real threads hammering one subject to check the stated
 * bound (admitted <= limit * (1 + w / 60 s) + workers * chunk over every window w).
 *
 * `test_ratelimit bench` prints nanoseconds per acquire instead (never asserted). */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "policy/ratelimit.h"

#define S 1000000000LL
#define T0 (1000 * S) /* any monotonic start */
#define THREADS 8

static struct ratelimit *limiter(unsigned workers, uint32_t max)
{
	int err = 1;
	struct ratelimit *rl = ratelimit_new(workers, max, T0, &err);
	assert_non_null(rl);
	assert_int_equal(err, 0);
	return rl;
}

static uint32_t add(struct ratelimit *rl, uint64_t rpm, uint64_t tpm)
{
	struct ratelimit_spec spec = { .rpm = rpm, .tpm = tpm };
	uint32_t id = UINT32_MAX;
	assert_int_equal(ratelimit_add(rl, &spec, &id), 0);
	return id;
}

static void test_new_errors(void **state)
{
	int err = 0;
	assert_null(ratelimit_new(0, 4, T0, &err));
	assert_int_equal(err, -EINVAL);
	assert_null(ratelimit_new(2, 0, T0, &err));
	assert_int_equal(err, -EINVAL);

	struct ratelimit *rl = limiter(1, 2);
	add(rl, 1, 0);
	add(rl, 1, 0);
	struct ratelimit_spec spec = { .rpm = 5 };
	uint32_t id;
	assert_int_equal(ratelimit_add(rl, &spec, &id), -ENOSPC);
	spec.tpm = RATELIMIT_LIMIT_MAX + 1;
	assert_int_equal(ratelimit_set(rl, 0, &spec), -EINVAL);
	assert_int_equal(ratelimit_set(rl, 7, &spec), -EINVAL);
	ratelimit_free(rl);
}

static void test_rpm_refuses_and_refills(void **state)
{
	struct ratelimit *rl = limiter(1, 4);
	uint32_t k = add(rl, 10, 0); /* one request every 6 s */
	struct ratelimit_info info;

	for (unsigned i = 0; i < 10; i++) {
		assert_int_equal(ratelimit_acquire(rl, 0, k, 1, 500, T0, &info), RATELIMIT_ADMIT);
		assert_int_equal(info.limit_requests, 10);
		assert_int_equal(info.remaining_requests, 9 - i);
		assert_int_equal(info.limit_tokens, 0); /* no TPM limit */
		assert_int_equal(info.remaining_tokens, UINT64_MAX);
	}
	assert_int_equal(ratelimit_acquire(rl, 0, k, 1, 500, T0, &info), RATELIMIT_REQUESTS);
	assert_int_equal(info.remaining_requests, 0);
	assert_int_equal(info.retry_after_s, 6);
	assert_int_equal(info.reset_requests_ms, 60000);

	/* Continuous refill: 5.9 s is not enough, 6 s gives exactly one. */
	assert_int_equal(ratelimit_acquire(rl, 0, k, 1, 0, T0 + 5900000000LL, &info),
			 RATELIMIT_REQUESTS);
	assert_int_equal(info.retry_after_s, 1);
	assert_int_equal(ratelimit_acquire(rl, 0, k, 1, 0, T0 + 6 * S, &info), RATELIMIT_ADMIT);
	assert_int_equal(ratelimit_acquire(rl, 0, k, 1, 0, T0 + 6 * S, NULL), RATELIMIT_REQUESTS);
	/* Half a minute later, half the limit. */
	unsigned n = 0;
	while (ratelimit_acquire(rl, 0, k, 1, 0, T0 + 36 * S, NULL) == RATELIMIT_ADMIT && n < 100)
		n++;
	assert_int_equal(n, 5);
	/* Idle for an hour: the pool holds one minute, not sixty. */
	n = 0;
	while (ratelimit_acquire(rl, 0, k, 1, 0, T0 + 3600 * S, NULL) == RATELIMIT_ADMIT && n < 100)
		n++;
	assert_int_equal(n, 10);
	ratelimit_free(rl);
}

static void test_tpm_tokens_and_too_large(void **state)
{
	struct ratelimit *rl = limiter(1, 4);
	uint32_t k = add(rl, 100, 6000); /* 100 tokens a second */
	struct ratelimit_info info;

	assert_int_equal(ratelimit_acquire(rl, 0, k, 1, 6001, T0, &info), RATELIMIT_TOO_LARGE);
	assert_int_equal(info.retry_after_s, 60);
	assert_int_equal(ratelimit_acquire(rl, 0, k, 1, 5000, T0, &info), RATELIMIT_ADMIT);
	assert_int_equal(info.remaining_tokens, 1000);
	assert_int_equal(info.remaining_requests, 99);
	/* Tokens refuse; the request it took comes back. */
	assert_int_equal(ratelimit_acquire(rl, 0, k, 1, 1500, T0, &info), RATELIMIT_TOKENS);
	assert_int_equal(info.remaining_requests, 99);
	assert_int_equal(info.remaining_tokens, 1000);
	assert_int_equal(info.retry_after_s, 5); /* 500 more tokens at 100/s */
	assert_int_equal(info.reset_tokens_ms, 51870); /* the pool is empty at T0 + 51.87 s */
	assert_int_equal(ratelimit_acquire(rl, 0, k, 1, 1500, T0 + 5 * S, &info), RATELIMIT_ADMIT);
	assert_int_equal(info.remaining_tokens, 0);
	ratelimit_free(rl);
}

static void test_settle_corrects_tokens(void **state)
{
	struct ratelimit *rl = limiter(1, 4);
	uint32_t k = add(rl, 0, 6000);
	struct ratelimit_info info;

	assert_int_equal(ratelimit_acquire(rl, 0, k, 1, 4000, T0, &info), RATELIMIT_ADMIT);
	/* It used 1000: 3000 come back. */
	ratelimit_settle(rl, 0, k, 4000, 1000, T0);
	assert_int_equal(ratelimit_acquire(rl, 0, k, 1, 5000, T0, &info), RATELIMIT_ADMIT);
	assert_int_equal(info.remaining_tokens, 0);
	/* It used 3000 more than estimated: debt, refused until it is paid (30 s at 100/s). */
	ratelimit_settle(rl, 0, k, 5000, 8000, T0);
	assert_int_equal(ratelimit_acquire(rl, 0, k, 1, 1, T0 + 29 * S, &info), RATELIMIT_TOKENS);
	assert_int_equal(info.retry_after_s, 2);
	assert_int_equal(ratelimit_acquire(rl, 0, k, 1, 1, T0 + 31 * S, &info), RATELIMIT_ADMIT);
	/* A settle on an unlimited dimension is a no-op. */
	uint32_t free_k = add(rl, 5, 0);
	ratelimit_settle(rl, 0, free_k, 10, 1000000, T0);
	assert_int_equal(ratelimit_acquire(rl, 0, free_k, 1, 1000000, T0, NULL), RATELIMIT_ADMIT);
	ratelimit_free(rl);
}

static void test_cancel_returns(void **state)
{
	struct ratelimit *rl = limiter(2, 4);
	uint32_t k = add(rl, 4, 1000);
	for (unsigned i = 0; i < 4; i++)
		assert_int_equal(ratelimit_acquire(rl, 1, k, 1, 250, T0, NULL), RATELIMIT_ADMIT);
	assert_int_equal(ratelimit_acquire(rl, 0, k, 1, 1, T0, NULL), RATELIMIT_REQUESTS);
	/* Worker 1 gives two back: above its chunk (1 request, 15 tokens) they reach the pool,
	 * where worker 0 finds them. */
	ratelimit_cancel(rl, 1, k, 2, 500);
	assert_int_equal(ratelimit_chunk(rl, k, 0), 1);
	assert_int_equal(ratelimit_chunk(rl, k, 1), 15);
	assert_int_equal(ratelimit_acquire(rl, 0, k, 1, 485, T0, NULL), RATELIMIT_ADMIT);
	assert_int_equal(ratelimit_acquire(rl, 0, k, 1, 1, T0, NULL), RATELIMIT_REQUESTS);
	assert_int_equal(ratelimit_acquire(rl, 1, k, 1, 15, T0, NULL), RATELIMIT_ADMIT);
	assert_int_equal(ratelimit_acquire(rl, 1, k, 1, 1, T0, NULL), RATELIMIT_REQUESTS);
	ratelimit_free(rl);
}

/* The slack is real and no larger: credit borrowed before a window is spent inside it. */
static void test_bound_is_tight(void **state)
{
	struct ratelimit *rl = limiter(THREADS, 4);
	uint32_t k = add(rl, 6400, 0);
	uint64_t chunk = ratelimit_chunk(rl, k, 0);
	assert_int_equal(chunk, 6400 / (THREADS * RATELIMIT_CHUNK_DIV));
	for (unsigned w = 0; w < THREADS; w++)
		assert_int_equal(ratelimit_acquire(rl, w, k, 1, 0, T0, NULL), RATELIMIT_ADMIT);
	/* A minute later the pool is full again and every worker still holds a chunk. */
	uint64_t admitted = 0;
	for (unsigned w = 0; w < THREADS; w++)
		for (unsigned i = 0; i < 100000; i++) {
			if (ratelimit_acquire(rl, w, k, 1, 0, T0 + 60 * S, NULL) != RATELIMIT_ADMIT)
				break;
			admitted++;
		}
	assert_int_equal(admitted, 6400 + THREADS * chunk);
	ratelimit_free(rl);
}

static void test_unlimited_and_reload(void **state)
{
	struct ratelimit *rl = limiter(1, 4);
	uint32_t k = add(rl, 0, 0);
	for (unsigned i = 0; i < 1000; i++)
		assert_int_equal(ratelimit_acquire(rl, 0, k, 1, 1u << 30, T0, NULL),
				 RATELIMIT_ADMIT);
	/* Reload to 60 rpm: the pool is full (it was never used), holding 60. */
	struct ratelimit_spec spec = { .rpm = 60 };
	assert_int_equal(ratelimit_set(rl, k, &spec), 0);
	unsigned n = 0;
	while (ratelimit_acquire(rl, 0, k, 1, 0, T0, NULL) == RATELIMIT_ADMIT && n < 1000)
		n++;
	assert_int_equal(n, 60);
	/* Half refilled, then the limit doubles: still half full, now 60 of 120. */
	spec.rpm = 120;
	assert_int_equal(ratelimit_set(rl, k, &spec), 0);
	n = 0;
	while (ratelimit_acquire(rl, 0, k, 1, 0, T0 + 30 * S, NULL) == RATELIMIT_ADMIT && n < 1000)
		n++;
	assert_int_equal(n, 60);
	ratelimit_free(rl);
}

/* ---- threads ---- */

struct frozen_arg {
	struct ratelimit *rl;
	uint32_t subject;
	unsigned worker;
	uint64_t tokens;
	uint64_t admitted;
	pthread_barrier_t *start;
};

/* Time stands still: a thread stops at its first refusal (its credit is then below one
 * request's need and the pool is empty, and without time nothing refills). */
static void *frozen_main(void *p)
{
	struct frozen_arg *a = p;
	pthread_barrier_wait(a->start);
	for (uint64_t i = 0; i < 10000000; i++) {
		if (ratelimit_acquire(a->rl, a->worker, a->subject, 1, a->tokens, T0, NULL) !=
		    RATELIMIT_ADMIT)
			break;
		a->admitted++;
	}
	return NULL;
}

static void test_threads_burst_exact(void **state)
{
	struct ratelimit *rl = limiter(THREADS, 4);
	uint32_t rpm = add(rl, 5000, 0);
	uint32_t tpm = add(rl, 0, 1000000);
	struct {
		uint32_t subject;
		uint64_t tokens, expect;
	} cases[] = { { rpm, 0, 5000 }, { tpm, 100, 10000 } };
	for (unsigned c = 0; c < 2; c++) {
		pthread_barrier_t start;
		pthread_barrier_init(&start, NULL, THREADS);
		pthread_t th[THREADS];
		struct frozen_arg args[THREADS];
		for (unsigned i = 0; i < THREADS; i++) {
			args[i] = (struct frozen_arg){ .rl = rl, .subject = cases[c].subject,
						       .worker = i, .tokens = cases[c].tokens,
						       .start = &start };
			pthread_create(&th[i], NULL, frozen_main, &args[i]);
		}
		uint64_t total = 0;
		for (unsigned i = 0; i < THREADS; i++) {
			pthread_join(th[i], NULL);
			total += args[i].admitted;
		}
		pthread_barrier_destroy(&start);
		/* Every unit of the pool went to at most one admission; what is left is less
		 * than one request's tokens per worker and in the pool. */
		assert_true(total <= cases[c].expect);
		assert_true(total + (cases[c].tokens ? THREADS : 0) >= cases[c].expect);
	}
	ratelimit_free(rl);
}

/* The clock moves in 50 ms steps. The threads themselves move it: the one whose attempt is
 * the step's STEP_ATTEMPTS-th at the current time advances it, so all threads hammer one
 * subject at every instant. Then a light phase (one attempt a step: borrowers keep a full
 * chunk of credit) and a pause of 70 s with no attempts: the pool refills to a whole minute
 * while workers hold credit, so the burst after it is where the workers * chunk slack
 * shows. Each thread counts admissions per step; afterwards
 * every window is checked against the bound. */
#define STEP_NS (50 * 1000000LL)
#define STEPS 2000
#define LIGHT_FROM 300 /* steps [LIGHT_FROM, IDLE_FROM): one attempt each */
#define IDLE_FROM 400 /* steps [IDLE_FROM, IDLE_TO): nobody asks */
#define IDLE_TO 1800
#define STEP_ATTEMPTS 100 /* per step, all threads: far more than the refill admits */

struct window_run {
	struct ratelimit *rl;
	uint32_t subject;
	uint64_t tokens; /* per request: 0 checks RPM, else TPM */
	uint64_t burst;  /* attempts the steps that start with a full pool need */
	_Atomic int64_t now;
	_Atomic uint64_t attempts; /* at the current step */
	uint32_t admitted[THREADS][STEPS];
};

struct window_arg {
	struct window_run *run;
	unsigned worker;
};

static void *window_main(void *p)
{
	struct window_arg *a = p;
	struct window_run *r = a->run;
	for (;;) {
		int64_t now = atomic_load(&r->now);
		int64_t step = (now - T0) / STEP_NS;
		if (step >= STEPS)
			break;
		if (step >= IDLE_FROM && step < IDLE_TO) {
			atomic_compare_exchange_strong(&r->now, &now, now + STEP_NS);
			continue;
		}
		if (ratelimit_acquire(r->rl, a->worker, r->subject, 1, r->tokens, now, NULL) ==
		    RATELIMIT_ADMIT)
			r->admitted[a->worker][step] += r->tokens ? (uint32_t)r->tokens : 1;
		/* Only attempts at the current time count (a thread can be descheduled holding
		 * an old reading); the one that completes the step moves the clock. */
		if (atomic_load(&r->now) != now)
			continue;
		uint64_t until = STEP_ATTEMPTS + (step == 0 || step == IDLE_TO ? r->burst : 0);
		if (step >= LIGHT_FROM && step < IDLE_FROM)
			until = 1;
		if (atomic_fetch_add(&r->attempts, 1) + 1 >= until &&
		    atomic_compare_exchange_strong(&r->now, &now, now + STEP_NS))
			atomic_store(&r->attempts, 0);
	}
	return NULL;
}

static uint64_t exact_bucket(uint64_t limit, unsigned steps)
{
	return limit + limit * (uint64_t)steps * STEP_NS / RATELIMIT_PERIOD_NS;
}

static void check_windows(struct window_run *r, uint64_t limit, uint64_t chunk)
{
	static uint64_t per_step[STEPS];
	uint64_t hammered = 0;
	for (unsigned s = 0; s < STEPS; s++) {
		per_step[s] = 0;
		for (unsigned w = 0; w < THREADS; w++)
			per_step[s] += r->admitted[w][s];
		if (s < LIGHT_FROM)
			hammered += per_step[s];
	}
	const unsigned widths[] = { 1, 4, 20, 200, 1200, STEPS };
	for (unsigned i = 0; i < sizeof(widths) / sizeof(widths[0]); i++) {
		unsigned w = widths[i];
		/* A window of w steps spans less than w * STEP_NS of clock. */
		uint64_t bound = exact_bucket(limit, w) + THREADS * chunk;
		uint64_t sum = 0;
		for (unsigned s = 0; s < STEPS; s++) {
			sum += per_step[s];
			if (s >= w)
				sum -= per_step[s - w];
			if (sum > bound)
				print_error("window of %u steps ending at %u: %" PRIu64 " > %" PRIu64
					    "\n", w, s, sum, bound);
			assert_true(sum <= bound);
		}
	}
	/* Nothing stranded: while hammered, one exact bucket's worth, less the slack. */
	uint64_t exact = exact_bucket(limit, LIGHT_FROM - 1);
	if (hammered + THREADS * chunk < exact)
		print_error("admitted %" PRIu64 ", one exact bucket %" PRIu64 "\n", hammered,
			    exact);
	assert_true(hammered + THREADS * chunk >= exact);
	/* After the pause the pool is full again: at least a minute's worth at once. */
	assert_true(per_step[IDLE_TO] + THREADS * chunk >= limit);
}

static void run_windows(uint64_t rpm, uint64_t tpm, uint64_t tokens)
{
	struct window_run *r = calloc(1, sizeof(*r));
	assert_non_null(r);
	r->rl = limiter(THREADS, 2);
	r->subject = add(r->rl, rpm, tpm);
	r->tokens = tokens;
	r->burst = 4 * (tokens ? tpm / tokens : rpm);
	atomic_init(&r->now, T0);
	atomic_init(&r->attempts, 0);
	pthread_t th[THREADS];
	struct window_arg args[THREADS];
	for (unsigned i = 0; i < THREADS; i++) {
		args[i] = (struct window_arg){ .run = r, .worker = i };
		pthread_create(&th[i], NULL, window_main, &args[i]);
	}
	for (unsigned i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	unsigned dim = tokens ? 1 : 0;
	check_windows(r, tokens ? tpm : rpm, ratelimit_chunk(r->rl, r->subject, dim));
	ratelimit_free(r->rl);
	free(r);
}

static void test_threads_windows_rpm(void **state)
{
	run_windows(6000, 0, 0); /* 5 per step; chunk 23 */
}

static void test_threads_windows_tpm(void **state)
{
	run_windows(0, 600000, 37); /* 500 tokens per step, 37 per request; chunk 2343 */
}

/* ---- bench ---- */

static double seconds_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

struct bench_arg {
	struct ratelimit *rl;
	uint32_t subjects[3];
	unsigned worker;
	uint64_t rounds, admitted;
	double ns;
};

static void *bench_main(void *p)
{
	struct bench_arg *a = p;
	struct ratelimit_info info;
	double t0 = seconds_now();
	for (uint64_t i = 0; i < a->rounds; i++) {
		int64_t now = T0 + (int64_t)i * 1000; /* 1 M requests/s of clock */
		for (unsigned j = 0; j < 3; j++)
			a->admitted += ratelimit_acquire(a->rl, a->worker, a->subjects[j], 1, 300,
							 now, &info) == RATELIMIT_ADMIT;
	}
	a->ns = (seconds_now() - t0) * 1e9 / (a->rounds * 3);
	return NULL;
}

static void bench_threads(unsigned threads, uint64_t rpm, uint64_t tpm, const char *what)
{
	struct ratelimit *rl = limiter(threads, 4);
	uint32_t subjects[3] = { add(rl, rpm, tpm), add(rl, rpm, tpm), add(rl, rpm, tpm) };
	pthread_t th[THREADS];
	struct bench_arg args[THREADS];
	for (unsigned i = 0; i < threads; i++) {
		args[i] = (struct bench_arg){ .rl = rl, .worker = i, .rounds = 2000000 };
		memcpy(args[i].subjects, subjects, sizeof(subjects));
		pthread_create(&th[i], NULL, bench_main, &args[i]);
	}
	double ns = 0;
	uint64_t admitted = 0;
	for (unsigned i = 0; i < threads; i++) {
		pthread_join(th[i], NULL);
		ns += args[i].ns / threads;
		admitted += args[i].admitted;
	}
	printf("%u thread(s), %-34s %6.1f ns per acquire (with info), %5.1f%% admitted\n",
	       threads, what, ns, 100.0 * admitted / (threads * 2000000.0 * 3));
	ratelimit_free(rl);
}

static int bench(void)
{
	for (unsigned t = 1; t <= 2; t++) {
		bench_threads(t, 0, 0, "unlimited:");
		bench_threads(t, 1000000000, 100000000000ull, "high limits (credit path):");
		bench_threads(t, 600000, 180000000, "over the limit (mostly refused):");
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "bench") == 0)
		return bench();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_new_errors),
		cmocka_unit_test(test_rpm_refuses_and_refills),
		cmocka_unit_test(test_tpm_tokens_and_too_large),
		cmocka_unit_test(test_settle_corrects_tokens),
		cmocka_unit_test(test_cancel_returns),
		cmocka_unit_test(test_bound_is_tight),
		cmocka_unit_test(test_unlimited_and_reload),
		cmocka_unit_test(test_threads_burst_exact),
		cmocka_unit_test(test_threads_windows_rpm),
		cmocka_unit_test(test_threads_windows_tpm),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
