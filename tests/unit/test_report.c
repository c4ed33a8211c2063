/* test_report.c - spend reports over a real store: dates, day ranges, sums per id, order,
 * records that are not the ledger's, key naming from the keys database, the JSON. */
#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/log.h"
#include "policy/keys.h"
#include "policy/report.h"
#include "policy/store.h"

#define WAIT_MS 30000 /* a bound for hangs only */
#define DAY 86400
#define D0 INT64_C(1735689600) /* 2025-01-01T00:00:00Z */

static void test_dates(void **state)
{
	static const struct { const char *s; int64_t want; } good[] = {
		{ "2025-01-01", D0 },
		{ "2024-02-29", D0 - 307 * DAY },       /* a leap day */
		{ "1970-01-01", 0 },
		{ "2025-12-31", D0 + 364 * DAY },
	};
	static const char *const bad[] = {
		"2025-02-29", /* not a leap year */
		"2025-13-01", "2025-00-10", "2025-01-00", "2025-01-32", "2025-04-31",
		"2025-1-01", "25-01-01", "2025/01/01", "2025-01-01T00:00:00Z", "", "1969-12-31",
		"2025-01-0x", " 2025-01-01",
	};
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		int64_t t = -1;
		assert_int_equal(report_parse_date(good[i].s, &t), 0);
		assert_int_equal(t, good[i].want);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int64_t t;
		if (report_parse_date(bad[i], &t) != -EINVAL)
			fail_msg("accepted %s", bad[i]);
	}
	enum report_by by;
	assert_int_equal(report_by_parse("key", &by), 0);
	assert_int_equal(by, REPORT_BY_KEY);
	assert_int_equal(report_by_parse("teams", &by), -EINVAL);
	assert_int_equal(report_by_parse(NULL, &by), -EINVAL);
}

/* ---- a store with a ledger ---- */

struct fixture {
	char root[64], dir[96];
	struct store *s;
	struct store_reader *r;
	struct keys *k;
};

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void add(struct fixture *f, uint8_t scope, uint8_t period, int64_t start, const void *id,
		size_t id_len, int64_t usd, int64_t in, int64_t out, int64_t req)
{
	struct store_spend_key k = { .scope = scope, .period = period, .start = (uint64_t)start,
				     .id_len = (uint8_t)id_len };
	memcpy(k.id, id, id_len);
	struct store_spend d = { usd, in, out, req };
	struct store_rec rec;
	assert_int_equal(store_rec_spend_add(&rec, &k, &d), 0);
	uint64_t seq;
	assert_int_equal(store_submit(f->s, 0, &rec, 1, &seq), 0);
	assert_int_equal(store_wait(f->s, 0, seq, WAIT_MS), 0);
}

static void team(struct fixture *f, const char *name, int64_t day, int64_t usd, int64_t req)
{
	add(f, STORE_SCOPE_LEDGER_TEAM, STORE_PERIOD_DAY, day, name, strlen(name), usd, 10 * req,
	    20 * req, req);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	const char *tmp = getenv("TMPDIR");
	snprintf(f->root, sizeof(f->root), "%s/penstock-report-XXXXXX", tmp ? tmp : "/tmp");
	assert_non_null(mkdtemp(f->root));
	snprintf(f->dir, sizeof(f->dir), "%s/data", f->root);
	struct store_options o = { .dir = f->dir, .producers = 1,
				   .durability = STORE_DURABILITY_NONE };
	int err = 0;
	f->s = store_open(&o, &err);
	assert_non_null(f->s);
	f->r = store_reader_new(f->s, &err);
	assert_non_null(f->r);
	f->k = keys_new(16, &err);
	assert_non_null(f->k);
	/* team a on three days, b on one; the budget's own counters and a monthly record
	 * under the ledger scope are not the ledger's daily records */
	team(f, "a", D0, 100, 1);
	team(f, "a", D0 + DAY, 1000, 2);
	team(f, "a", D0 + 2 * DAY, 10000, 3);
	team(f, "b", D0 + DAY, 5000, 1);
	add(f, STORE_SCOPE_TEAM, STORE_PERIOD_DAY, D0, "a", 1, 7777777, 1, 1, 1);
	add(f, STORE_SCOPE_LEDGER_TEAM, STORE_PERIOD_MONTH, D0, "a", 1, 8888888, 1, 1, 1);
	add(f, STORE_SCOPE_LEDGER_MODEL, STORE_PERIOD_DAY, D0, "gpt-4o", 6, 42, 1, 2, 1);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	keys_free(f->k);
	store_reader_free(f->r);
	store_close(f->s);
	nftw(f->root, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static void run(struct fixture *f, enum report_by by, int64_t since, int64_t until,
		struct report *rep)
{
	assert_int_equal(store_read_begin(f->r), 0);
	assert_int_equal(report_spend(f->r, by, since, until, rep), 0);
	assert_int_equal(report_name_keys_from_store(f->r, rep), 0);
	store_read_end(f->r);
}

static void test_sums_ranges_and_order(void **state)
{
	struct fixture *f = *state;
	struct report rep;
	run(f, REPORT_BY_TEAM, INT64_MIN, INT64_MAX, &rep);
	assert_int_equal(rep.n, 2);
	/* most expensive first */
	assert_memory_equal(rep.rows[0].id, "a", 1);
	assert_int_equal(rep.rows[0].sum.micro_usd, 11100);
	assert_int_equal(rep.rows[0].sum.requests, 6);
	assert_int_equal(rep.rows[0].sum.input_tokens, 60);
	assert_int_equal(rep.rows[0].sum.output_tokens, 120);
	assert_int_equal(rep.rows[1].sum.micro_usd, 5000);
	assert_int_equal(rep.total.micro_usd, 16100);
	assert_int_equal(rep.total.requests, 7);
	report_free(&rep);

	/* both ends included; until is a day start and its whole day counts */
	run(f, REPORT_BY_TEAM, D0 + DAY, D0 + DAY, &rep);
	assert_int_equal(rep.n, 2);
	assert_memory_equal(rep.rows[0].id, "b", 1);
	assert_int_equal(rep.rows[1].sum.micro_usd, 1000);
	assert_int_equal(rep.total.micro_usd, 6000);
	report_free(&rep);
	run(f, REPORT_BY_TEAM, D0 + 2 * DAY, INT64_MAX, &rep);
	assert_int_equal(rep.n, 1);
	assert_int_equal(rep.total.micro_usd, 10000);
	report_free(&rep);
	run(f, REPORT_BY_TEAM, D0 + 3 * DAY, INT64_MAX, &rep);
	assert_int_equal(rep.n, 0);
	assert_int_equal(rep.total.requests, 0);
	report_free(&rep);

	run(f, REPORT_BY_MODEL, INT64_MIN, D0, &rep);
	assert_int_equal(rep.n, 1);
	assert_int_equal(rep.rows[0].id_len, 6);
	assert_int_equal(rep.rows[0].sum.micro_usd, 42);
	report_free(&rep);
}

static void test_many_ids(void **state)
{
	struct fixture *f = *state;
	/* enough ids to grow the index several times, each on two days */
	char name[16];
	for (int i = 0; i < 300; i++) {
		snprintf(name, sizeof(name), "m%03d", i);
		add(f, STORE_SCOPE_LEDGER_MODEL, STORE_PERIOD_DAY, D0 + 5 * DAY, name, 4, i, 0, 0, 1);
		add(f, STORE_SCOPE_LEDGER_MODEL, STORE_PERIOD_DAY, D0 + 6 * DAY, name, 4, i, 0, 0, 1);
	}
	struct report rep;
	run(f, REPORT_BY_MODEL, D0 + 5 * DAY, INT64_MAX, &rep);
	assert_int_equal(rep.n, 300);
	for (size_t i = 0; i < rep.n; i++) {
		assert_int_equal(rep.rows[i].sum.requests, 2);
		assert_int_equal(rep.rows[i].sum.micro_usd, 2 * (299 - (int64_t)i));
	}
	assert_int_equal(rep.total.micro_usd, 299 * 300);
	report_free(&rep);
}

static void test_keys_are_named_and_json(void **state)
{
	struct fixture *f = *state;
	struct key_params p = { .name = "svc", .team = "a", .ratelimit_subject = KEYS_NONE,
				.budget_id = KEYS_NONE };
	char secret[KEYS_SECRET_LEN + 1];
	const struct key_rec *rec;
	assert_int_equal(keys_create(f->k, f->s, 0, WAIT_MS, &p, D0, NULL, NULL, secret, &rec), 0);
	uint8_t stranger[KEYS_HASH_LEN];
	memset(stranger, 0xab, sizeof(stranger));
	add(f, STORE_SCOPE_LEDGER_KEY, STORE_PERIOD_DAY, D0, rec->hash, KEYS_HASH_LEN, 300, 3, 4, 1);
	add(f, STORE_SCOPE_LEDGER_KEY, STORE_PERIOD_DAY, D0, stranger, KEYS_HASH_LEN, 200, 1, 1, 1);

	struct report rep;
	run(f, REPORT_BY_KEY, D0, D0, &rep);
	assert_int_equal(rep.n, 2);
	assert_string_equal(rep.rows[0].key_id, rec->id);
	assert_string_equal(rep.rows[0].key_name, "svc");
	assert_string_equal(rep.rows[0].key_team, "a");
	assert_null(rep.rows[1].key_id);
	char *text = report_json(&rep);
	report_free(&rep);
	assert_non_null(text);
	assert_null(strstr(text, secret));
	json_t *doc = json_loads(text, 0, NULL);
	free(text);
	assert_non_null(doc);
	assert_string_equal(json_string_value(json_object_get(doc, "by")), "key");
	assert_string_equal(json_string_value(json_object_get(doc, "since")), "2025-01-01");
	assert_string_equal(json_string_value(json_object_get(doc, "until")), "2025-01-01");
	json_t *rows = json_object_get(doc, "data");
	json_t *r0 = json_array_get(rows, 0), *r1 = json_array_get(rows, 1);
	assert_string_equal(json_string_value(json_object_get(r0, "key")), rec->id);
	assert_int_equal(json_integer_value(json_object_get(r0, "micro_usd")), 300);
	assert_true(json_real_value(json_object_get(r0, "usd")) == 0.0003);
	assert_true(json_is_null(json_object_get(r1, "key")));
	assert_string_equal(json_string_value(json_object_get(r1, "key_sha256_prefix")),
			    "abababababababab");
	json_t *total = json_object_get(doc, "total");
	assert_int_equal(json_integer_value(json_object_get(total, "requests")), 2);
	assert_int_equal(json_integer_value(json_object_get(total, "input_tokens")), 4);
	json_decref(doc);

	/* open ends are null */
	run(f, REPORT_BY_TEAM, INT64_MIN, INT64_MAX, &rep);
	text = report_json(&rep);
	report_free(&rep);
	doc = json_loads(text, 0, NULL);
	free(text);
	assert_true(json_is_null(json_object_get(doc, "since")));
	assert_true(json_is_null(json_object_get(doc, "until")));
	assert_string_equal(json_string_value(json_object_get(json_array_get(
				    json_object_get(doc, "data"), 0), "team")), "a");
	json_decref(doc);
}

int main(void)
{
	log_min_level = LOG_WARN;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_dates),
		cmocka_unit_test_setup_teardown(test_sums_ranges_and_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_ids, setup, teardown),
		cmocka_unit_test_setup_teardown(test_keys_are_named_and_json, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
