/* test_budget.c - integer cost and its rounding, the UTC calendar (against libc's gmtime and
 * timegm, and by hand at leap days, month and year ends, ISO week starts), reserve/settle,
 * period rollover, alerts, threads racing on a few cents, and spend surviving a restart and
 * a kill -9 with real LMDB.
 *
 * `test_budget bench` prints nanoseconds per reserve+settle instead (never asserted). */
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "scratch.h"

#include "policy/budget.h"

#define WAIT_MS 30000
#define DAY 86400

static int64_t utc(int y, int mon, int d, int h, int mi, int s)
{
	struct tm tm = { .tm_year = y - 1900, .tm_mon = mon - 1, .tm_mday = d, .tm_hour = h,
			 .tm_min = mi, .tm_sec = s };
	return (int64_t)timegm(&tm);
}

/* ---- cost ---- */

static void test_prices_and_cost(void **state)
{
	struct config_model m = { .input_per_mtok = 2.50, .output_per_mtok = 10.00 };
	struct budget_prices p;
	assert_int_equal(budget_prices_from_model(&m, &p), 0);
	assert_int_equal(p.input, 2500000);
	assert_int_equal(p.output, 10000000);
	assert_int_equal(p.cached_input, 2500000); /* 0 = the input price */

	/* Decimal prices whose doubles are a hair off still convert exactly. */
	m = (struct config_model){ .input_per_mtok = 0.15, .output_per_mtok = 0.6,
				   .cached_input_per_mtok = 0.075 };
	assert_int_equal(budget_prices_from_model(&m, &p), 0);
	assert_int_equal(p.input, 150000);
	assert_int_equal(p.output, 600000);
	assert_int_equal(p.cached_input, 75000);

	m.input_per_mtok = -1;
	assert_int_equal(budget_prices_from_model(&m, &p), -EINVAL);
	m.input_per_mtok = NAN;
	assert_int_equal(budget_prices_from_model(&m, &p), -EINVAL);
	m.input_per_mtok = INFINITY;
	assert_int_equal(budget_prices_from_model(&m, &p), -EINVAL);
	m.input_per_mtok = 2e6;
	assert_int_equal(budget_prices_from_model(&m, &p), -EINVAL);

	struct budget_prices gpt = { .input = 2500000, .output = 10000000, .cached_input = 1250000 };
	assert_int_equal(cost_micro_usd(1000, 500, 0, &gpt), 7500);
	assert_int_equal(cost_micro_usd(0, 0, 0, &gpt), 0);
	/* 600 uncached at 2.50 + 400 cached at 1.25 */
	assert_int_equal(cost_micro_usd(1000, 0, 400, &gpt), 2000);
	assert_int_equal(cost_micro_usd(10, 0, 99, &gpt), 13); /* cached clamped: 10 x 1.25 = 12.5 */
	/* Rounded up once, at the end: 1 token at $0.15/M is 0.15 micro-dollars -> 1; three
	 * 0.4s make 1.2 -> 2, not 3. */
	struct budget_prices cheap = { .input = 150000, .output = 400000, .cached_input = 150000 };
	assert_int_equal(cost_micro_usd(1, 0, 0, &cheap), 1);
	assert_int_equal(cost_micro_usd(0, 3, 0, &cheap), 2);
	assert_int_equal(cost_micro_usd(0, 5, 0, &cheap), 2);
	/* Huge counts do not overflow: clamped at 2^32 tokens. */
	struct budget_prices dear = { .input = INT64_C(1000000000000), .output = INT64_C(1000000000000),
				      .cached_input = INT64_C(1000000000000) };
	int64_t huge = cost_micro_usd(UINT64_MAX, UINT64_MAX, 0, &dear);
	assert_int_equal(huge, 2 * (INT64_C(1) << 32) * INT64_C(1000000));
	assert_int_equal(budget_worst_case_micro_usd(1000, 500, &gpt), 7500);
}

/* ---- calendar ---- */

static void test_calendar_by_hand(void **state)
{
	const struct {
		int64_t t;
		enum store_period period;
		int64_t start, end;
	} cases[] = {
		/* Days: midnight to midnight, the last second belongs to the day. */
		{ utc(2024, 3, 10, 12, 0, 0), STORE_PERIOD_DAY, utc(2024, 3, 10, 0, 0, 0), utc(2024, 3, 11, 0, 0, 0) },
		{ utc(2024, 3, 10, 23, 59, 59), STORE_PERIOD_DAY, utc(2024, 3, 10, 0, 0, 0), utc(2024, 3, 11, 0, 0, 0) },
		{ utc(2024, 3, 11, 0, 0, 0), STORE_PERIOD_DAY, utc(2024, 3, 11, 0, 0, 0), utc(2024, 3, 12, 0, 0, 0) },
		/* ISO weeks start on Monday: Sunday 2021-01-03 is in the week of Monday 2020-12-28;
		 * Monday 2024-12-30 starts one that ends in 2025; the epoch's week began in 1969. */
		{ utc(2021, 1, 3, 23, 59, 59), STORE_PERIOD_WEEK, utc(2020, 12, 28, 0, 0, 0), utc(2021, 1, 4, 0, 0, 0) },
		{ utc(2021, 1, 4, 0, 0, 0), STORE_PERIOD_WEEK, utc(2021, 1, 4, 0, 0, 0), utc(2021, 1, 11, 0, 0, 0) },
		{ utc(2024, 12, 30, 0, 0, 0), STORE_PERIOD_WEEK, utc(2024, 12, 30, 0, 0, 0), utc(2025, 1, 6, 0, 0, 0) },
		{ utc(2025, 1, 1, 8, 0, 0), STORE_PERIOD_WEEK, utc(2024, 12, 30, 0, 0, 0), utc(2025, 1, 6, 0, 0, 0) },
		{ 0, STORE_PERIOD_WEEK, -3 * DAY, 4 * DAY },
		/* Months: leap Februaries (2024, 2000: divisible by 400), common ones (2023, 1900
		 * and 2100: centuries), 30- and 31-day months, the year's end. */
		{ utc(2024, 2, 29, 23, 59, 59), STORE_PERIOD_MONTH, utc(2024, 2, 1, 0, 0, 0), utc(2024, 3, 1, 0, 0, 0) },
		{ utc(2024, 3, 1, 0, 0, 0), STORE_PERIOD_MONTH, utc(2024, 3, 1, 0, 0, 0), utc(2024, 4, 1, 0, 0, 0) },
		{ utc(2023, 2, 28, 23, 59, 59), STORE_PERIOD_MONTH, utc(2023, 2, 1, 0, 0, 0), utc(2023, 3, 1, 0, 0, 0) },
		{ utc(2000, 2, 29, 12, 0, 0), STORE_PERIOD_MONTH, utc(2000, 2, 1, 0, 0, 0), utc(2000, 3, 1, 0, 0, 0) },
		{ utc(2100, 2, 28, 12, 0, 0), STORE_PERIOD_MONTH, utc(2100, 2, 1, 0, 0, 0), utc(2100, 3, 1, 0, 0, 0) },
		{ utc(2024, 4, 30, 23, 59, 59), STORE_PERIOD_MONTH, utc(2024, 4, 1, 0, 0, 0), utc(2024, 5, 1, 0, 0, 0) },
		{ utc(2024, 12, 31, 23, 59, 59), STORE_PERIOD_MONTH, utc(2024, 12, 1, 0, 0, 0), utc(2025, 1, 1, 0, 0, 0) },
		{ utc(2025, 1, 1, 0, 0, 0), STORE_PERIOD_MONTH, utc(2025, 1, 1, 0, 0, 0), utc(2025, 2, 1, 0, 0, 0) },
		{ 0, STORE_PERIOD_MONTH, 0, 31 * DAY },
		{ utc(2024, 5, 5, 5, 5, 5), STORE_PERIOD_TOTAL, 0, INT64_MAX },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (budget_period_start(cases[i].period, cases[i].t) != cases[i].start ||
		    budget_period_end(cases[i].period, cases[i].t) != cases[i].end)
			print_error("case %zu: t %" PRId64 " period %d: start %" PRId64 " end %" PRId64
				    "\n", i, cases[i].t, cases[i].period,
				    budget_period_start(cases[i].period, cases[i].t),
				    budget_period_end(cases[i].period, cases[i].t));
		assert_int_equal(budget_period_start(cases[i].period, cases[i].t), cases[i].start);
		assert_int_equal(budget_period_end(cases[i].period, cases[i].t), cases[i].end);
	}
}

/* Every day from 1970 to 2400 (and a random second in it) against gmtime/timegm. */
static void test_calendar_against_libc(void **state)
{
	uint64_t rng = 0x9e3779b97f4a7c15ull;
	int64_t last_day = utc(2400, 12, 31, 0, 0, 0) / DAY;
	for (int64_t day = 0; day <= last_day; day++) {
		rng = rng * 6364136223846793005ull + 1442695040888963407ull;
		int64_t t = day * DAY + (int64_t)((rng >> 33) % DAY);
		time_t tt = (time_t)t;
		struct tm tm;
		assert_non_null(gmtime_r(&tt, &tm));
		int64_t month_start = utc(tm.tm_year + 1900, tm.tm_mon + 1, 1, 0, 0, 0);
		int64_t next_month = utc(tm.tm_year + 1900 + (tm.tm_mon == 11), tm.tm_mon == 11 ? 1 : tm.tm_mon + 2, 1, 0, 0, 0);
		int64_t monday = (day - (tm.tm_wday + 6) % 7) * DAY;
		assert_int_equal(budget_period_start(STORE_PERIOD_DAY, t), day * DAY);
		assert_int_equal(budget_period_end(STORE_PERIOD_DAY, t), (day + 1) * DAY);
		assert_int_equal(budget_period_start(STORE_PERIOD_WEEK, t), monday);
		assert_int_equal(budget_period_end(STORE_PERIOD_WEEK, t), monday + 7 * DAY);
		assert_int_equal(budget_period_start(STORE_PERIOD_MONTH, t), month_start);
		assert_int_equal(budget_period_end(STORE_PERIOD_MONTH, t), next_month);
	}
}

/* ---- reserve and settle ---- */

static struct budget *budgets(uint32_t max)
{
	int err = 1;
	struct budget *b = budget_new(max, NULL, 0, &err);
	assert_non_null(b);
	assert_int_equal(err, 0);
	return b;
}

static uint32_t add(struct budget *b, enum store_scope scope, const char *id,
		    enum store_period period, int64_t usd, int64_t tokens)
{
	struct budget_spec spec = { .scope = scope, .id = id, .id_len = strlen(id),
				    .period = period, .limit_micro_usd = usd,
				    .limit_tokens = tokens };
	uint32_t out = UINT32_MAX;
	assert_int_equal(budget_add(b, &spec, &out), 0);
	return out;
}

static void test_new_and_add_errors(void **state)
{
	int err = 0;
	assert_null(budget_new(0, NULL, 0, &err));
	assert_int_equal(err, -EINVAL);
	uint16_t bad[] = { 80, 50 };
	assert_null(budget_new(4, bad, 2, &err));
	assert_int_equal(err, -EINVAL);

	struct budget *b = budgets(1);
	struct budget_spec spec = { .scope = STORE_SCOPE_TEAM, .id = "t", .id_len = 1,
				    .period = STORE_PERIOD_DAY, .limit_micro_usd = -1 };
	uint32_t id;
	assert_int_equal(budget_add(b, &spec, &id), -EINVAL);
	spec.limit_micro_usd = BUDGET_LIMIT_MAX + 1;
	assert_int_equal(budget_add(b, &spec, &id), -EINVAL);
	spec.limit_micro_usd = 5;
	spec.id_len = STORE_ID_MAX + 1;
	assert_int_equal(budget_add(b, &spec, &id), -EINVAL);
	spec.id_len = 1;
	assert_int_equal(budget_add(b, &spec, &id), 0);
	assert_int_equal(budget_add(b, &spec, &id), -ENOSPC);
	assert_int_equal(budget_set_limits(b, 1, 5, 5), -EINVAL);
	budget_free(b);
}

static void test_reserve_settle_release(void **state)
{
	struct budget *b = budgets(4);
	int64_t now = utc(2024, 6, 15, 12, 0, 0);
	uint32_t team = add(b, STORE_SCOPE_TEAM, "search", STORE_PERIOD_MONTH, 1000000, 0);
	uint32_t key = add(b, STORE_SCOPE_KEY, "k1", STORE_PERIOD_DAY, 700000, 0);
	uint32_t both[] = { key, team };
	struct budget_resv r1, r2, r3;
	struct budget_refusal why;

	assert_true(budget_reserve(b, both, 2, 600000, 0, now, &r1, &why));
	/* The key's day has 100000 left: refused there, and nothing stays held on the team. */
	assert_false(budget_reserve(b, both, 2, 500000, 0, now, &r2, &why));
	assert_int_equal(why.id, key);
	assert_int_equal(why.dim, BUDGET_USD);
	assert_int_equal(why.limit, 700000);
	assert_int_equal(why.used, 600000);
	assert_int_equal(why.resets_at, utc(2024, 6, 16, 0, 0, 0));
	struct budget_status st;
	assert_int_equal(budget_status(b, team, now, &st), 0);
	assert_int_equal(st.reserved[BUDGET_USD], 600000);
	assert_int_equal(st.spent[BUDGET_USD], 0);

	/* It cost 100000: the rest comes back. */
	struct budget_usage u = { .micro_usd = 100000, .input_tokens = 10, .output_tokens = 20 };
	struct store_rec recs[2];
	assert_int_equal(budget_settle(b, &r1, &u, recs, NULL), 0);
	assert_int_equal(recs[0].op, STORE_OP_ADD);
	assert_int_equal(recs[0].v.add[0], 100000);
	assert_int_equal(recs[0].v.add[1], 10);
	assert_int_equal(recs[0].v.add[2], 20);
	assert_int_equal(recs[0].v.add[3], 1);
	struct store_spend_key k;
	assert_int_equal(store_spend_key_decode(recs[1].key, recs[1].key_len, &k), 0);
	assert_int_equal(k.scope, STORE_SCOPE_TEAM);
	assert_int_equal(k.period, STORE_PERIOD_MONTH);
	assert_int_equal(k.start, utc(2024, 6, 1, 0, 0, 0));
	assert_memory_equal(k.id, "search", 6);

	assert_true(budget_reserve(b, both, 2, 500000, 0, now, &r2, &why));
	/* Released, not settled: charges nothing. */
	budget_release(b, &r2);
	assert_int_equal(budget_status(b, key, now, &st), 0);
	assert_int_equal(st.spent[BUDGET_USD], 100000);
	assert_int_equal(st.reserved[BUDGET_USD], 0);
	assert_true(budget_reserve(b, both, 2, 600000, 0, now, &r3, &why));
	budget_release(b, &r3);

	/* A request whose worst case alone is over the limit never fits. */
	assert_false(budget_reserve(b, &team, 1, 1000001, 0, now, &r3, &why));

	/* A budget with no money limit but a token limit. */
	uint32_t tok = add(b, STORE_SCOPE_KEY, "k2", STORE_PERIOD_TOTAL, 0, 1000);
	assert_true(budget_reserve(b, &tok, 1, INT64_C(1) << 40, 800, now, &r1, &why));
	assert_false(budget_reserve(b, &tok, 1, 0, 201, now, &r2, &why));
	assert_int_equal(why.dim, BUDGET_TOKENS);
	assert_int_equal(why.resets_at, INT64_MAX);
	u = (struct budget_usage){ .micro_usd = 5, .input_tokens = 100, .output_tokens = 50 };
	budget_settle(b, &r1, &u, NULL, NULL);
	assert_true(budget_reserve(b, &tok, 1, 0, 850, now, &r2, &why));

	struct budget_stats bs;
	budget_stats(b, &bs);
	assert_int_equal(bs.reserved, 3 * 2 + 2); /* r1, r2, r3 on two budgets; two on one */
	assert_int_equal(bs.overrun_micro_usd, 0);
	budget_free(b);
}

static void test_period_rollover(void **state)
{
	struct budget *b = budgets(2);
	uint32_t id = add(b, STORE_SCOPE_KEY, "k", STORE_PERIOD_DAY, 1000, 0);
	int64_t day1 = utc(2024, 2, 28, 23, 59, 59), day2 = utc(2024, 2, 29, 0, 0, 0);
	struct budget_resv late, r;
	assert_true(budget_reserve(b, &id, 1, 600, 0, day1, &late, NULL));
	assert_true(budget_reserve(b, &id, 1, 400, 0, day1, &r, NULL));
	struct budget_usage u = { .micro_usd = 400 };
	budget_settle(b, &r, &u, NULL, NULL);
	assert_false(budget_reserve(b, &id, 1, 1, 0, day1, &r, NULL));

	/* Midnight: a full budget again. */
	assert_true(budget_reserve(b, &id, 1, 1000, 0, day2, &r, NULL));
	/* The request admitted yesterday ends today: charged to yesterday, releasing nothing
	 * from today. */
	struct store_rec rec;
	u.micro_usd = 500;
	budget_settle(b, &late, &u, &rec, NULL);
	struct store_spend_key k;
	assert_int_equal(store_spend_key_decode(rec.key, rec.key_len, &k), 0);
	assert_int_equal(k.start, utc(2024, 2, 28, 0, 0, 0));
	struct budget_status st;
	assert_int_equal(budget_status(b, id, day2, &st), 0);
	assert_int_equal(st.period_start, day2);
	assert_int_equal(st.spent[BUDGET_USD], 0);
	assert_int_equal(st.reserved[BUDGET_USD], 1000);
	/* A thread whose clock still reads yesterday joins today's period instead of
	 * resetting it. */
	struct budget_resv behind;
	assert_false(budget_reserve(b, &id, 1, 1, 0, day1, &behind, NULL));
	u.micro_usd = 0;
	budget_settle(b, &r, &u, NULL, NULL);
	assert_true(budget_reserve(b, &id, 1, 1, 0, day1, &behind, NULL));
	assert_int_equal(behind.hold[0].period_start, day2);
	budget_free(b);
}

static void test_alerts_once_per_period(void **state)
{
	struct budget *b = budgets(1);
	uint32_t id = add(b, STORE_SCOPE_TEAM, "t", STORE_PERIOD_MONTH, 1000, 0);
	int64_t now = utc(2024, 1, 10, 0, 0, 0);
	struct budget_alert al[BUDGET_RESV_MAX * 2 * BUDGET_THRESHOLDS_MAX];
	struct budget_resv r;
	const struct {
		int64_t cost;
		unsigned fired;
		uint16_t first;
	} steps[] = { { 400, 0, 0 }, { 100, 1, 50 }, { 99, 0, 0 }, { 301, 1, 80 },
		      { 99, 0, 0 }, { 1, 1, 100 } };
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		assert_true(budget_reserve(b, &id, 1, steps[i].cost, 0, now, &r, NULL));
		struct budget_usage u = { .micro_usd = steps[i].cost };
		assert_int_equal(budget_settle(b, &r, &u, NULL, al), steps[i].fired);
		if (steps[i].fired) {
			assert_int_equal(al[0].percent, steps[i].first);
			assert_int_equal(al[0].limit, 1000);
			assert_int_equal(al[0].dim, BUDGET_USD);
			assert_int_equal(al[0].period_start, utc(2024, 1, 1, 0, 0, 0));
		}
	}
	struct budget_status st;
	budget_status(b, id, now, &st);
	assert_int_equal(st.alerts_fired, 7);
	/* Next month: one settlement crosses two thresholds at once. */
	now = utc(2024, 2, 1, 0, 0, 0);
	assert_true(budget_reserve(b, &id, 1, 850, 0, now, &r, NULL));
	struct budget_usage u = { .micro_usd = 850 };
	assert_int_equal(budget_settle(b, &r, &u, NULL, al), 2);
	assert_int_equal(al[0].percent, 50);
	assert_int_equal(al[1].percent, 80);
	assert_int_equal(al[1].spent, 850);
	budget_free(b);
}

static void test_overrun_is_charged(void **state)
{
	struct budget *b = budgets(1);
	uint32_t id = add(b, STORE_SCOPE_KEY, "k", STORE_PERIOD_TOTAL, 1000, 0);
	struct budget_resv r;
	assert_true(budget_reserve(b, &id, 1, 500, 0, 0, &r, NULL));
	struct budget_usage u = { .micro_usd = 700 }; /* the estimate was short */
	budget_settle(b, &r, &u, NULL, NULL);
	struct budget_status st;
	budget_status(b, id, 0, &st);
	assert_int_equal(st.spent[BUDGET_USD], 700);
	struct budget_stats bs;
	budget_stats(b, &bs);
	assert_int_equal(bs.overrun_micro_usd, 200);
	assert_false(budget_reserve(b, &id, 1, 301, 0, 0, &r, NULL));
	budget_free(b);
}

/* ---- threads: 200 requests in flight against a few cents ---- */

#define THREADS 8
#define INFLIGHT 25 /* per thread: 200 in all */
#define ROUNDS 4000

struct race {
	struct budget *b;
	uint32_t team, keys[THREADS / 2];
	int64_t now;
	_Atomic int stop;
	_Atomic uint64_t violations;
};

struct race_arg {
	struct race *race;
	unsigned me;
	int64_t settled_usd, reserved_n, settled_n;
};

static void *race_main(void *p)
{
	struct race_arg *a = p;
	struct race *rc = a->race;
	struct budget_resv held[INFLIGHT];
	int64_t worst[INFLIGHT];
	unsigned n = 0;
	uint64_t rng = 0x1234567u + a->me;
	uint32_t ids[2] = { rc->keys[a->me / 2], rc->team };
	for (unsigned round = 0; round < ROUNDS; round++) {
		rng = rng * 6364136223846793005ull + 1442695040888963407ull;
		int64_t cost = 100 + (int64_t)((rng >> 33) % 900);
		if (n < INFLIGHT && budget_reserve(rc->b, ids, 2, cost, 0, rc->now, &held[n], NULL)) {
			worst[n++] = cost;
			a->reserved_n++;
		}
		/* Settle one (a random one) about every other round, and all when full. */
		if (n > 0 && ((rng >> 20) & 1 || n == INFLIGHT)) {
			unsigned i = (unsigned)((rng >> 40) % n);
			struct budget_usage u = { .micro_usd = worst[i] * (int64_t)((rng >> 50) % 101) / 100 };
			budget_settle(rc->b, &held[i], &u, NULL, NULL);
			a->settled_usd += u.micro_usd;
			a->settled_n++;
			held[i] = held[n - 1];
			worst[i] = worst[n - 1];
			n--;
		}
	}
	for (unsigned i = 0; i < n; i++) {
		struct budget_usage u = { .micro_usd = worst[i] };
		budget_settle(rc->b, &held[i], &u, NULL, NULL);
		a->settled_usd += u.micro_usd;
		a->settled_n++;
	}
	return NULL;
}

/* While they race: spent + reserved never passes the limit, on any budget. */
static void *race_watch(void *p)
{
	struct race *rc = p;
	while (!atomic_load(&rc->stop)) {
		struct budget_status st;
		budget_status(rc->b, rc->team, rc->now, &st);
		if (st.spent[BUDGET_USD] + st.reserved[BUDGET_USD] > st.limit[BUDGET_USD])
			atomic_fetch_add(&rc->violations, 1);
		sched_yield();
	}
	return NULL;
}

static void test_threads_few_cents(void **state)
{
	struct race rc = { .now = utc(2024, 7, 1, 9, 0, 0) };
	rc.b = budgets(THREADS);
	rc.team = add(rc.b, STORE_SCOPE_TEAM, "t", STORE_PERIOD_DAY, 50000, 0); /* 5 cents */
	for (unsigned i = 0; i < THREADS / 2; i++) {
		char id[8];
		snprintf(id, sizeof(id), "k%u", i);
		rc.keys[i] = add(rc.b, STORE_SCOPE_KEY, id, STORE_PERIOD_DAY, 20000, 0);
	}
	pthread_t th[THREADS], watch;
	struct race_arg args[THREADS];
	pthread_create(&watch, NULL, race_watch, &rc);
	for (unsigned i = 0; i < THREADS; i++) {
		args[i] = (struct race_arg){ .race = &rc, .me = i };
		pthread_create(&th[i], NULL, race_main, &args[i]);
	}
	int64_t settled = 0, key_settled[THREADS / 2] = { 0 };
	uint64_t reserved_n = 0, settled_n = 0;
	for (unsigned i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		settled += args[i].settled_usd;
		key_settled[i / 2] += args[i].settled_usd;
		reserved_n += args[i].reserved_n;
		settled_n += args[i].settled_n;
	}
	atomic_store(&rc.stop, 1);
	pthread_join(watch, NULL);

	assert_int_equal(atomic_load(&rc.violations), 0);
	assert_true(reserved_n > 100); /* the budget was really used up, many times over */
	assert_int_equal(settled_n, reserved_n);
	struct budget_status st;
	budget_status(rc.b, rc.team, rc.now, &st);
	assert_true(settled <= 50000);
	assert_int_equal(st.spent[BUDGET_USD], settled);
	assert_int_equal(st.reserved[BUDGET_USD], 0);
	for (unsigned i = 0; i < THREADS / 2; i++) {
		budget_status(rc.b, rc.keys[i], rc.now, &st);
		assert_true(key_settled[i] <= 20000);
		assert_int_equal(st.spent[BUDGET_USD], key_settled[i]);
		assert_int_equal(st.reserved[BUDGET_USD], 0);
	}
	struct budget_stats bs;
	budget_stats(rc.b, &bs);
	assert_int_equal(bs.settled, 2 * settled_n);
	assert_int_equal(bs.reserved, 2 * reserved_n);
	assert_true(bs.refused > 0);
	budget_free(rc.b);
}

/* ---- persistence: restart and kill -9 with LMDB on disk ---- */

static struct store *store_at(const char *dir)
{
	struct store_options o = { .dir = dir, .producers = 1, .durability = STORE_DURABILITY_BATCH,
				   .commit_interval_ms = 1 };
	int err = 0;
	struct store *s = store_open(&o, &err);
	assert_non_null(s);
	return s;
}

/* A fresh budget table, loaded from the store as the gateway does at start. */
static struct budget *load_budgets(struct store *s, int64_t now, uint32_t *team, uint32_t *key)
{
	struct budget *b = budgets(2);
	*team = add(b, STORE_SCOPE_TEAM, "team", STORE_PERIOD_MONTH, 1000000, 0);
	*key = add(b, STORE_SCOPE_KEY, "key", STORE_PERIOD_DAY, 500000, 100000);
	int err = 0;
	struct store_reader *r = store_reader_new(s, &err);
	assert_non_null(r);
	assert_int_equal(budget_load(b, r, now), 0);
	store_reader_free(r);
	return b;
}

/* One request: reserve, settle, submit its spend records as one unit. The unit's seq. */
static uint64_t spend_once(struct budget *b, struct store *s, uint32_t team, uint32_t key,
			   int64_t now, int64_t cost)
{
	uint32_t ids[2] = { key, team };
	struct budget_resv r;
	if (!budget_reserve(b, ids, 2, cost, 100, now, &r, NULL))
		return 0;
	struct budget_usage u = { .micro_usd = cost, .input_tokens = 60, .output_tokens = 40 };
	struct store_rec recs[BUDGET_RESV_MAX];
	budget_settle(b, &r, &u, recs, NULL);
	uint64_t seq = 0;
	int rc;
	while ((rc = store_submit(s, 0, recs, r.n, &seq)) == -EAGAIN)
		sched_yield();
	assert_int_equal(rc, 0);
	return seq;
}

static void test_spend_survives_restart(void **state)
{
	struct scratch t;
	scratch_make(&t);
	int64_t now = utc(2024, 3, 31, 22, 0, 0);
	uint32_t team, key;
	struct store *s = store_at(t.dir);
	struct budget *b = load_budgets(s, now, &team, &key);
	uint64_t seq = 0;
	for (unsigned i = 0; i < 10; i++)
		seq = spend_once(b, s, team, key, now, 1000 + i);
	assert_true(seq > 0);
	assert_int_equal(store_wait(s, 0, seq, WAIT_MS), 0);
	budget_free(b);
	store_close(s);

	s = store_at(t.dir);
	b = load_budgets(s, now + 3600, &team, &key);
	struct budget_status st;
	budget_status(b, team, now, &st);
	assert_int_equal(st.spent[BUDGET_USD], 10 * 1000 + 45);
	budget_status(b, key, now, &st);
	assert_int_equal(st.spent[BUDGET_USD], 10 * 1000 + 45);
	assert_int_equal(st.spent[BUDGET_TOKENS], 10 * 100);
	/* The limits hold across the restart: the key has 500000 - 10045 left. */
	uint32_t ids[2] = { key, team };
	struct budget_resv r;
	assert_false(budget_reserve(b, ids, 2, 500000 - 10045 + 1, 0, now, &r, NULL));
	assert_true(budget_reserve(b, ids, 2, 500000 - 10045, 0, now, &r, NULL));
	budget_release(b, &r);
	budget_free(b);

	/* Past midnight on the month's last day: both periods are new. */
	b = load_budgets(s, utc(2024, 4, 1, 0, 0, 0), &team, &key);
	budget_status(b, team, utc(2024, 4, 1, 0, 0, 0), &st);
	assert_int_equal(st.spent[BUDGET_USD], 0);
	budget_free(b);
	store_close(s);
	scratch_remove(&t);
}

/* The child spends 1000 micro-dollars per request as fast as it can, waits for each unit's
 * commit and reports the count committed on the pipe; the parent kills it mid-stream. */
static void kill_child(const char *dir, int64_t now, int fd)
{
	struct store_options o = { .dir = dir, .producers = 1,
				   .durability = STORE_DURABILITY_BATCH, .commit_interval_ms = 1 };
	int err = 0;
	struct store *s = store_open(&o, &err);
	if (!s)
		_exit(2);
	struct budget *b = budget_new(2, NULL, 0, &err);
	struct budget_spec team = { .scope = STORE_SCOPE_TEAM, .id = "team", .id_len = 4,
				    .period = STORE_PERIOD_MONTH, .limit_micro_usd = 1000000 };
	struct budget_spec key = { .scope = STORE_SCOPE_KEY, .id = "key", .id_len = 3,
				   .period = STORE_PERIOD_DAY, .limit_micro_usd = 500000,
				   .limit_tokens = 100000 };
	uint32_t ids[2];
	if (!b || budget_add(b, &key, &ids[0]) || budget_add(b, &team, &ids[1]))
		_exit(3);
	for (uint64_t i = 1;; i++) {
		struct budget_resv r;
		if (!budget_reserve(b, ids, 2, 1000, 100, now, &r, NULL))
			_exit(4);
		struct budget_usage u = { .micro_usd = 1000, .input_tokens = 1, .output_tokens = 1 };
		struct store_rec recs[BUDGET_RESV_MAX];
		budget_settle(b, &r, &u, recs, NULL);
		uint64_t seq;
		while (store_submit(s, 0, recs, r.n, &seq) == -EAGAIN)
			sched_yield();
		if (store_wait(s, 0, seq, WAIT_MS) != 0)
			_exit(5);
		if (write(fd, &i, sizeof(i)) != sizeof(i))
			_exit(6);
	}
}

static void test_spend_survives_kill(void **state)
{
	struct scratch t;
	scratch_make(&t);
	int64_t now = utc(2024, 8, 8, 8, 0, 0);
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(fds[0]);
		kill_child(t.dir, now, fds[1]);
		_exit(1);
	}
	close(fds[1]);
	uint64_t confirmed = 0, v;
	while (confirmed < 40 && read(fds[0], &v, sizeof(v)) == sizeof(v))
		confirmed = v;
	kill(pid, SIGKILL);
	int status;
	waitpid(pid, &status, 0);
	close(fds[0]);
	assert_true(confirmed >= 40);

	struct store *s = store_at(t.dir);
	uint32_t team, key;
	struct budget *b = load_budgets(s, now, &team, &key);
	struct budget_status st_team, st_key;
	budget_status(b, team, now, &st_team);
	budget_status(b, key, now, &st_key);
	/* Everything confirmed is there, whole requests only, the same on both budgets. */
	assert_true(st_team.spent[BUDGET_USD] >= (int64_t)confirmed * 1000);
	assert_int_equal(st_team.spent[BUDGET_USD] % 1000, 0);
	assert_int_equal(st_team.spent[BUDGET_USD], st_key.spent[BUDGET_USD]);
	assert_int_equal(st_key.spent[BUDGET_TOKENS] * 500, st_key.spent[BUDGET_USD]);
	budget_free(b);
	store_close(s);
	scratch_remove(&t);
}

/* ---- bench ---- */

static double seconds_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

struct bench_arg {
	struct budget *b;
	uint32_t ids[2];
	uint64_t rounds;
	double ns_pair, ns_release;
};

static void *bench_main(void *p)
{
	struct bench_arg *a = p;
	int64_t now = utc(2024, 7, 1, 9, 0, 0);
	struct budget_resv r;
	struct store_rec recs[BUDGET_RESV_MAX];
	struct budget_usage u = { .micro_usd = 700, .input_tokens = 500, .output_tokens = 100 };
	double t0 = seconds_now();
	for (uint64_t i = 0; i < a->rounds; i++)
		if (budget_reserve(a->b, a->ids, 2, 1000, 1000, now, &r, NULL))
			budget_settle(a->b, &r, &u, recs, NULL);
	a->ns_pair = (seconds_now() - t0) * 1e9 / a->rounds;
	t0 = seconds_now();
	for (uint64_t i = 0; i < a->rounds; i++)
		if (budget_reserve(a->b, a->ids, 2, 1000, 1000, now, &r, NULL))
			budget_release(a->b, &r);
	a->ns_release = (seconds_now() - t0) * 1e9 / a->rounds;
	return NULL;
}

static int bench(void)
{
	for (unsigned threads = 1; threads <= 2; threads++) {
		struct budget *b = budgets(4);
		uint32_t team = add(b, STORE_SCOPE_TEAM, "t", STORE_PERIOD_MONTH, BUDGET_LIMIT_MAX, 0);
		uint32_t keys[2] = { add(b, STORE_SCOPE_KEY, "a", STORE_PERIOD_DAY, BUDGET_LIMIT_MAX, BUDGET_LIMIT_MAX),
				     add(b, STORE_SCOPE_KEY, "b", STORE_PERIOD_DAY, BUDGET_LIMIT_MAX, BUDGET_LIMIT_MAX) };
		pthread_t th[2];
		struct bench_arg args[2];
		for (unsigned i = 0; i < threads; i++) {
			args[i] = (struct bench_arg){ .b = b, .ids = { keys[i], team }, .rounds = 2000000 };
			pthread_create(&th[i], NULL, bench_main, &args[i]);
		}
		for (unsigned i = 0; i < threads; i++) {
			pthread_join(th[i], NULL);
			printf("%u thread(s), key (day, $ and tokens) + shared team (month, $): "
			       "%.1f ns reserve+settle (with 2 spend records), %.1f ns "
			       "reserve+release\n", threads, args[i].ns_pair, args[i].ns_release);
		}
		budget_free(b);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "bench") == 0)
		return bench();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_prices_and_cost),
		cmocka_unit_test(test_calendar_by_hand),
		cmocka_unit_test(test_calendar_against_libc),
		cmocka_unit_test(test_new_and_add_errors),
		cmocka_unit_test(test_reserve_settle_release),
		cmocka_unit_test(test_period_rollover),
		cmocka_unit_test(test_alerts_once_per_period),
		cmocka_unit_test(test_overrun_is_charged),
		cmocka_unit_test(test_threads_few_cents),
		cmocka_unit_test(test_spend_survives_restart),
		cmocka_unit_test(test_spend_survives_kill),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
