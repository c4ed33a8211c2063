/* test_store.c - the LMDB store on a real disk: create, schema, group commit from several
 * producer threads, strict-mode outcomes, a full map, map growth under readers, reopen,
 * and kill -9 in the middle of a stream.
 *
 * `test_store bench` measures group-commit throughput instead (printed, never asserted). */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <lmdb.h>
#include <poll.h>
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "scratch.h"

#include "core/log.h"
#include "policy/store.h"

#define WAIT_MS 30000 /* a bound for hangs only: outcomes come within milliseconds */

/* ---- scratch directories ---- */

static struct store_options options(const struct scratch *t, unsigned producers)
{
	struct store_options o = {
		.dir = t->dir,
		.producers = producers,
		.durability = STORE_DURABILITY_BATCH,
	};
	return o;
}

static struct store *open_ok(const struct store_options *o)
{
	int err = 0;
	struct store *s = store_open(o, &err);
	if (!s)
		print_error("store_open: %s\n", store_strerror(err));
	assert_non_null(s);
	return s;
}

/* ---- record helpers ---- */

static void audit_key(char out[24], unsigned producer, uint64_t i)
{
	snprintf(out, 24, "r%02u-%010" PRIu64, producer % 100, (uint64_t)(i % 10000000000ull));
}

static struct store_spend_key spend_key(uint8_t scope, const char *id)
{
	struct store_spend_key k = { .scope = scope, .period = STORE_PERIOD_TOTAL };
	k.id_len = (uint8_t)strlen(id);
	memcpy(k.id, id, k.id_len);
	return k;
}

/* Submit one unit, pushing back (yielding) while the ring is full. */
static uint64_t submit_unit(struct store *s, unsigned producer, struct store_rec *recs,
			    unsigned n)
{
	uint64_t seq = 0;
	int rc;
	while ((rc = store_submit(s, producer, recs, n, &seq)) == -EAGAIN)
		sched_yield();
	assert_int_equal(rc, 0);
	return seq;
}

static uint64_t put_str(struct store *s, unsigned producer, enum store_db db, const char *key,
			const char *val)
{
	struct store_rec r;
	assert_int_equal(store_rec_put(&r, db, key, strlen(key), val, strlen(val)), 0);
	return submit_unit(s, producer, &r, 1);
}

static int get_str(struct store_reader *r, enum store_db db, const char *key, char *out,
		   size_t cap)
{
	struct store_val v;
	int rc = store_get(r, db, key, strlen(key), &v);
	if (rc)
		return rc;
	if (v.len >= cap)
		return -E2BIG;
	memcpy(out, v.p, v.len);
	out[v.len] = 0;
	return 0;
}

/* ---- open, create, schema ---- */

static void test_open_creates_dir(void **state)
{
	struct scratch t;
	scratch_make(&t);
	struct store_options o = options(&t, 1);
	struct store *s = open_ok(&o);

	struct stat st;
	assert_int_equal(stat(t.dir, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	mode_t mask = umask(0);
	umask(mask);
	assert_int_equal(st.st_mode & 0777, 0750 & ~mask);
	char path[160];
	snprintf(path, sizeof(path), "%s/data.mdb", t.dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0007, 0); /* nothing for others */

	int err = 0;
	struct store_reader *r = store_reader_new(s, &err);
	assert_non_null(r);
	assert_int_equal(store_read_begin(r), 0);
	struct store_val v;
	assert_int_equal(store_get(r, STORE_DB_META, "schema", 6, &v), 0);
	assert_int_equal(v.len, 4);
	assert_int_equal(((const uint8_t *)v.p)[0], STORE_SCHEMA_VERSION);
	assert_int_equal(store_get(r, STORE_DB_KEYS, "nope", 4, &v), -ENOENT);
	store_read_end(r);
	store_reader_free(r);
	store_close(s);
	scratch_remove(&t);
}

static void test_open_errors(void **state)
{
	struct scratch t;
	scratch_make(&t);
	int err = 0;

	char deep[160];
	snprintf(deep, sizeof(deep), "%s/missing/data", t.root);
	struct store_options o = options(&t, 1);
	o.dir = deep;
	assert_null(store_open(&o, &err)); /* parents are not created */
	assert_int_equal(err, -ENOENT);

	o = options(&t, 0);
	err = 0;
	assert_null(store_open(&o, &err)); /* a writer needs producers */
	assert_int_equal(err, -EINVAL);

	o = options(&t, 1);
	o.ring_records = 1000;
	err = 0;
	assert_null(store_open(&o, &err));
	assert_int_equal(err, -EINVAL);

	o = options(&t, 1);
	o.read_only = true;
	err = 0;
	assert_null(store_open(&o, &err)); /* penstockctl does not create anything */
	assert_int_not_equal(err, 0);

	/* One writer per data_dir: a second is refused, readers are not. */
	o = options(&t, 1);
	struct store *first = open_ok(&o);
	err = 0;
	assert_null(store_open(&o, &err));
	assert_int_equal(err, -EBUSY);
	store_close(first);
	store_close(open_ok(&o));

	o.dir = "/proc/version"; /* not a directory */
	err = 0;
	assert_null(store_open(&o, &err));
	assert_int_equal(err, -ENOTDIR);
	assert_int_not_equal(err, 0);
	assert_non_null(store_strerror(err));
	scratch_remove(&t);
}

/* Write a schema number behind the store's back, with LMDB directly. */
static void set_schema_raw(const char *dir, uint32_t version)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_open(env, dir, 0, 0640), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "meta", MDB_CREATE, &dbi), 0);
	uint8_t le[4] = { version & 0xff, (version >> 8) & 0xff, (version >> 16) & 0xff,
			  version >> 24 };
	MDB_val k = { 6, "schema" }, v = { 4, le };
	assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
}

static void test_schema_mismatch(void **state)
{
	struct scratch t;
	scratch_make(&t);
	struct store_options o = options(&t, 1);
	store_close(open_ok(&o));

	set_schema_raw(t.dir, STORE_SCHEMA_VERSION + 998);
	int err = 0;
	assert_null(store_open(&o, &err));
	assert_int_equal(err, STORE_ESCHEMA);
	assert_non_null(strstr(store_strerror(err), "schema"));
	o.read_only = true;
	err = 0;
	assert_null(store_open(&o, &err));
	assert_int_equal(err, STORE_ESCHEMA);

	set_schema_raw(t.dir, STORE_SCHEMA_VERSION); /* put right, it opens again */
	o.read_only = false;
	store_close(open_ok(&o));
	scratch_remove(&t);
}

static void test_foreign_env(void **state)
{
	struct scratch t;
	scratch_make(&t);
	assert_int_equal(mkdir(t.dir, 0700), 0);
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_open(env, t.dir, 0, 0640), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
	MDB_val k = { 3, "foo" }, v = { 3, "bar" };
	assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);

	struct store_options o = options(&t, 1);
	int err = 0;
	assert_null(store_open(&o, &err));
	assert_int_equal(err, STORE_ENOTSTORE);
	scratch_remove(&t);
}

/* ---- records ---- */

static void test_record_validation(void **state)
{
	struct scratch t;
	scratch_make(&t);
	struct store_options o = options(&t, 2);
	struct store *s = open_ok(&o);
	struct store_rec r;
	char big[STORE_KEY_MAX + 1] = { 0 };

	assert_int_equal(store_rec_put(&r, STORE_DB_META, "schema", 6, "x", 1), -EINVAL);
	assert_int_equal(store_rec_put(&r, STORE_DB_KEYS, big, sizeof(big), "x", 1), -EINVAL);
	assert_int_equal(store_rec_put(&r, STORE_DB_KEYS, "k", 0, "x", 1), -EINVAL);
	assert_int_equal(store_rec_put(&r, STORE_DB_KEYS, "k", 1, NULL, STORE_VAL_MAX + 1),
			 -EINVAL);
	assert_int_equal(store_rec_del(&r, STORE_DB_COUNT, "k", 1), -EINVAL);
	struct store_spend_key sk = spend_key(STORE_SCOPE_TEAM, "search");
	struct store_spend d = { .micro_usd = 1 };
	sk.scope = 9;
	assert_int_equal(store_rec_spend_add(&r, &sk, &d), -EINVAL);
	sk = spend_key(STORE_SCOPE_TEAM, "search");
	sk.start = 5; /* a total has no start */
	assert_int_equal(store_rec_spend_add(&r, &sk, &d), -EINVAL);

	/* A tampered record is refused at submit, before it reaches the ring. */
	assert_int_equal(store_rec_put(&r, STORE_DB_KEYS, "k", 1, "v", 1), 0);
	r.db = STORE_DB_META;
	uint64_t seq = 0;
	assert_int_equal(store_submit(s, 0, &r, 1, &seq), -EINVAL);
	assert_int_equal(store_rec_put(&r, STORE_DB_KEYS, "k", 1, "v", 1), 0);
	assert_int_equal(store_submit(s, 2, &r, 1, &seq), -EINVAL); /* no such producer */
	assert_int_equal(store_submit(s, 0, &r, 0, &seq), -EINVAL);
	struct store_rec unit[STORE_UNIT_MAX + 1];
	for (int i = 0; i <= STORE_UNIT_MAX; i++)
		unit[i] = r;
	assert_int_equal(store_submit(s, 0, unit, STORE_UNIT_MAX + 1, &seq), -EINVAL);
	assert_int_equal(store_outcome(s, 0, 0), -EINVAL);
	assert_int_equal(store_outcome(s, 0, 1), -EINPROGRESS); /* never submitted */
	store_close(s);
	scratch_remove(&t);
}

static void test_put_del_add_roundtrip(void **state)
{
	struct scratch t;
	scratch_make(&t);
	struct store_options o = options(&t, 1);
	struct store *s = open_ok(&o);
	int err = 0;
	struct store_reader *r = store_reader_new(s, &err);
	assert_non_null(r);

	char blob[3000];
	for (size_t i = 0; i < sizeof(blob) - 1; i++)
		blob[i] = (char)('a' + i % 26);
	blob[sizeof(blob) - 1] = 0;
	put_str(s, 0, STORE_DB_TEAMS, "search", "inline");
	put_str(s, 0, STORE_DB_TEAMS, "gone", "soon");
	struct store_rec big;
	assert_int_equal(store_rec_put(&big, STORE_DB_TEAMS, "req-1", 5, blob, sizeof(blob)), 0);
	submit_unit(s, 0, &big, 1);
	store_rec_release(&big); /* harmless: the store owns the blob now */
	struct store_rec unit[3];
	struct store_spend_key k = spend_key(STORE_SCOPE_TEAM, "search");
	struct store_spend d1 = { 1500000, 10, 20, 1 }, d2 = { -500000, 5, 5, 1 };
	assert_int_equal(store_rec_spend_add(&unit[0], &k, &d1), 0);
	assert_int_equal(store_rec_spend_add(&unit[1], &k, &d2), 0);
	assert_int_equal(store_rec_del(&unit[2], STORE_DB_TEAMS, "gone", 4), 0);
	uint64_t last = submit_unit(s, 0, unit, 3);
	assert_int_equal(last, 6); /* seqs start at 1 and run on */
	assert_int_equal(store_wait(s, 0, last, WAIT_MS), 0);
	assert_true(store_done_seq(s, 0) >= last);
	for (uint64_t seq = 1; seq <= last; seq++)
		assert_int_equal(store_outcome(s, 0, seq), 0);

	char out[4096];
	assert_int_equal(store_read_begin(r), 0);
	assert_int_equal(get_str(r, STORE_DB_TEAMS, "search", out, sizeof(out)), 0);
	assert_string_equal(out, "inline");
	assert_int_equal(get_str(r, STORE_DB_TEAMS, "gone", out, sizeof(out)), -ENOENT);
	assert_int_equal(get_str(r, STORE_DB_TEAMS, "req-1", out, sizeof(out)), 0);
	assert_string_equal(out, blob);
	struct store_spend got;
	assert_int_equal(store_spend_get(r, &k, &got), 0);
	assert_int_equal(got.micro_usd, 1000000);
	assert_int_equal(got.input_tokens, 15);
	assert_int_equal(got.output_tokens, 25);
	assert_int_equal(got.requests, 2);
	struct store_spend_key other = spend_key(STORE_SCOPE_TEAM, "nobody");
	assert_int_equal(store_spend_get(r, &other, &got), 0);
	assert_int_equal(got.micro_usd, 0);
	store_read_end(r);

	struct store_stats st;
	store_stats(s, &st);
	assert_int_equal(st.records, 6);
	assert_int_equal(st.records_failed, 0);
	assert_true(st.commits >= 1 && st.commits <= 6);
	store_reader_free(r);
	store_close(s);
	scratch_remove(&t);
}

static void test_spend_counter_saturates(void **state)
{
	struct scratch t;
	scratch_make(&t);
	struct store_options o = options(&t, 1);
	struct store *s = open_ok(&o);
	struct store_spend_key k = spend_key(STORE_SCOPE_KEY, "k");
	struct store_spend d = { INT64_MAX - 5, 0, 0, 0 };
	struct store_rec unit[2];
	assert_int_equal(store_rec_spend_add(&unit[0], &k, &d), 0);
	assert_int_equal(store_rec_spend_add(&unit[1], &k, &d), 0);
	assert_int_equal(store_wait(s, 0, submit_unit(s, 0, unit, 2), WAIT_MS), 0);
	int err = 0;
	struct store_reader *r = store_reader_new(s, &err);
	assert_int_equal(store_read_begin(r), 0);
	struct store_spend got;
	assert_int_equal(store_spend_get(r, &k, &got), 0);
	assert_int_equal(got.micro_usd, INT64_MAX);
	store_read_end(r);
	struct store_stats st;
	store_stats(s, &st);
	assert_int_equal(st.add_saturated, 1);
	store_reader_free(r);
	store_close(s);
	scratch_remove(&t);
}

/* ---- spend additions summed within a batch ---- */

/* After this, the store thread waits out its commit interval (TIMED) before its next
 * batch, so what is submitted next, quickly, lands in one batch. */
static void settle_batch(struct store *s)
{
	assert_int_equal(store_wait(s, 0, put_str(s, 0, STORE_DB_TEAMS, "warm", "up"), WAIT_MS),
			 0);
}

static void spend_id(char out[16], unsigned i)
{
	snprintf(out, 16, "key-%04u", i);
}

static void check_spend(struct store_reader *r, const struct store_spend_key *k,
			int64_t usd, int64_t in, int64_t outp, int64_t reqs)
{
	struct store_spend got;
	assert_int_equal(store_spend_get(r, k, &got), 0);
	assert_int_equal(got.micro_usd, usd);
	assert_int_equal(got.input_tokens, in);
	assert_int_equal(got.output_tokens, outp);
	assert_int_equal(got.requests, reqs);
}

/* Many requests' additions to few counters: the sums are those of every addition, and
 * the batch read and wrote each counter once (adds_merged counts the rest). */
static void test_adds_summed_in_batch(void **state)
{
	struct scratch t;
	scratch_make(&t);
	struct store_options o = options(&t, 1);
	o.commit_interval_ms = 2000;
	struct store *s = open_ok(&o);
	/* a counter with a value from an earlier batch: the sum starts from it */
	struct store_spend_key keys[3] = { spend_key(STORE_SCOPE_LEDGER_KEY, "k1"),
					   spend_key(STORE_SCOPE_LEDGER_TEAM, "t1"),
					   spend_key(STORE_SCOPE_LEDGER_MODEL, "m1") };
	struct store_rec rec;
	struct store_spend first = { 1000, 1, 1, 1 };
	assert_int_equal(store_rec_spend_add(&rec, &keys[0], &first), 0);
	assert_int_equal(store_wait(s, 0, submit_unit(s, 0, &rec, 1), WAIT_MS), 0);
	settle_batch(s);
	struct store_stats before;
	store_stats(s, &before);

	enum { UNITS = 300 };
	uint64_t last = 0;
	for (unsigned u = 0; u < UNITS; u++) {
		struct store_rec unit[4];
		struct store_spend d = { (int64_t)u, 10, 20, 1 };
		for (unsigned i = 0; i < 3; i++)
			assert_int_equal(store_rec_spend_add(&unit[i], &keys[i], &d), 0);
		char key[24];
		audit_key(key, 0, u);
		assert_int_equal(store_rec_put(&unit[3], STORE_DB_TEAMS, key, strlen(key), "x", 1),
				 0);
		last = submit_unit(s, 0, unit, 4);
	}
	assert_int_equal(store_wait(s, 0, last, WAIT_MS), 0);
	for (uint64_t seq = last - 4 * UNITS + 1; seq <= last; seq++)
		assert_int_equal(store_outcome(s, 0, seq), 0);

	int err = 0;
	struct store_reader *r = store_reader_new(s, &err);
	assert_int_equal(store_read_begin(r), 0);
	int64_t usd = (int64_t)UNITS * (UNITS - 1) / 2;
	check_spend(r, &keys[0], 1000 + usd, 1 + 10 * UNITS, 1 + 20 * UNITS, 1 + UNITS);
	check_spend(r, &keys[1], usd, 10 * UNITS, 20 * UNITS, UNITS);
	check_spend(r, &keys[2], usd, 10 * UNITS, 20 * UNITS, UNITS);
	store_read_end(r);
	struct store_stats st;
	store_stats(s, &st);
	uint64_t batches = st.commits - before.commits;
	/* each batch holds each counter once; the rest were summed in memory */
	assert_true(batches >= 1);
	assert_true(st.adds_merged - before.adds_merged >= 3 * UNITS - 3 * batches);
	assert_true(st.adds_merged - before.adds_merged <= 3 * UNITS - 3);
	assert_int_equal(st.records - before.records, 4 * UNITS);
	store_reader_free(r);
	store_close(s);
	scratch_remove(&t);
}

/* A PUT or DEL of a counter between additions to it, in one unit (so one batch): each
 * applies in order, as if every addition had gone to the map on its own. */
static void test_adds_ordered_with_put_del(void **state)
{
	struct scratch t;
	scratch_make(&t);
	struct store_options o = options(&t, 1);
	struct store *s = open_ok(&o);
	struct store_spend_key k = spend_key(STORE_SCOPE_KEY, "k"),
			       other = spend_key(STORE_SCOPE_TEAM, "other");
	uint8_t key[STORE_KEY_MAX];
	size_t key_len = store_spend_key_encode(&k, key);
	assert_true(key_len > 0);
	struct store_spend d = { 5, 1, 2, 1 }, big = { INT64_MAX - 3, 0, 0, 0 };
	struct store_spend reset = { 100, 0, 0, 0 };
	struct store_rec unit[10];
	unsigned n = 0;
	assert_int_equal(store_rec_spend_add(&unit[n++], &k, &d), 0);
	assert_int_equal(store_rec_spend_add(&unit[n++], &other, &d), 0);
	assert_int_equal(store_rec_spend_add(&unit[n++], &k, &d), 0);
	assert_int_equal(store_rec_del(&unit[n++], STORE_DB_SPEND, key, key_len), 0);
	assert_int_equal(store_rec_spend_add(&unit[n++], &k, &d), 0);
	assert_int_equal(store_rec_put(&unit[n++], STORE_DB_SPEND, key, key_len, &reset,
				       sizeof(reset)), 0);
	assert_int_equal(store_rec_spend_add(&unit[n++], &k, &d), 0);
	assert_int_equal(store_rec_spend_add(&unit[n++], &other, &d), 0);
	/* clamped at the first addition past the limit, then lowered by the next */
	assert_int_equal(store_rec_spend_add(&unit[n++], &k, &big), 0);
	struct store_spend down = { -10, 0, 0, 0 };
	assert_int_equal(store_rec_spend_add(&unit[n++], &k, &down), 0);
	assert_int_equal(store_wait(s, 0, submit_unit(s, 0, unit, n), WAIT_MS), 0);

	int err = 0;
	struct store_reader *r = store_reader_new(s, &err);
	assert_int_equal(store_read_begin(r), 0);
	check_spend(r, &k, INT64_MAX - 10, 1, 2, 1);
	check_spend(r, &other, 10, 2, 4, 2);
	store_read_end(r);
	struct store_stats st;
	store_stats(s, &st);
	assert_int_equal(st.add_saturated, 1);
	assert_int_equal(st.records, n);
	store_reader_free(r);
	store_close(s);
	scratch_remove(&t);
}

/* More distinct counters in a batch than the table holds: the rest go straight to the
 * map, and every sum is still right. */
static void test_adds_past_table(void **state)
{
	struct scratch t;
	scratch_make(&t);
	struct store_options o = options(&t, 1);
	o.commit_interval_ms = 2000;
	struct store *s = open_ok(&o);
	settle_batch(s);
	enum { KEYS = 1200, ROUNDS = 2, PER_UNIT = 16 };
	uint64_t last = 0;
	for (unsigned round = 0; round < ROUNDS; round++) {
		for (unsigned i = 0; i < KEYS; i += PER_UNIT) {
			struct store_rec unit[PER_UNIT];
			for (unsigned j = 0; j < PER_UNIT; j++) {
				char id[16];
				spend_id(id, i + j);
				struct store_spend_key k = spend_key(STORE_SCOPE_LEDGER_KEY, id);
				struct store_spend d = { (int64_t)(i + j), 1, 0, 1 };
				assert_int_equal(store_rec_spend_add(&unit[j], &k, &d), 0);
			}
			last = submit_unit(s, 0, unit, PER_UNIT);
		}
	}
	assert_int_equal(store_wait(s, 0, last, WAIT_MS), 0);
	int err = 0;
	struct store_reader *r = store_reader_new(s, &err);
	assert_int_equal(store_read_begin(r), 0);
	for (unsigned i = 0; i < KEYS; i++) {
		char id[16];
		spend_id(id, i);
		struct store_spend_key k = spend_key(STORE_SCOPE_LEDGER_KEY, id);
		check_spend(r, &k, ROUNDS * (int64_t)i, ROUNDS, 0, ROUNDS);
	}
	store_read_end(r);
	struct store_stats st;
	store_stats(s, &st);
	assert_int_equal(st.records_failed, 0);
	store_reader_free(r);
	store_close(s);
	scratch_remove(&t);
}

static void test_spend_key_layout(void **state)
{
	struct store_spend_key a = spend_key(STORE_SCOPE_MODEL, "gpt-4o"), back;
	a.period = STORE_PERIOD_DAY;
	a.start = 1700000000;
	uint8_t ka[STORE_KEY_MAX], kb[STORE_KEY_MAX];
	size_t la = store_spend_key_encode(&a, ka);
	assert_int_equal(la, 10 + 6);
	assert_int_equal(store_spend_key_decode(ka, la, &back), 0);
	assert_int_equal(back.scope, STORE_SCOPE_MODEL);
	assert_int_equal(back.period, STORE_PERIOD_DAY);
	assert_int_equal(back.start, 1700000000);
	assert_memory_equal(back.id, "gpt-4o", 6);
	/* Later periods sort after earlier ones, whatever the bytes of the id. */
	struct store_spend_key b = a;
	b.start = a.start + 86400;
	b.id[0] = 0;
	size_t lb = store_spend_key_encode(&b, kb);
	assert_true(memcmp(ka, kb, la < lb ? la : lb) < 0);
	a.id_len = 0;
	assert_int_equal(store_spend_key_encode(&a, ka), 0);
	a.id_len = STORE_ID_MAX + 1;
	assert_int_equal(store_spend_key_encode(&a, ka), 0);
	assert_int_equal(store_spend_key_decode(ka, 10, &back), -EINVAL);
}

struct scan_log {
	char text[256];
	int stop_at;
	int seen;
};

static int scan_cb(void *arg, const void *key, size_t key_len, const void *val, size_t val_len)
{
	struct scan_log *l = arg;
	size_t n = strlen(l->text);
	snprintf(l->text + n, sizeof(l->text) - n, "%.*s=%.*s;", (int)key_len, (const char *)key,
		 (int)val_len, (const char *)val);
	return ++l->seen == l->stop_at ? 42 : 0;
}

static void test_scan(void **state)
{
	struct scratch t;
	scratch_make(&t);
	struct store_options o = options(&t, 1);
	struct store *s = open_ok(&o);
	put_str(s, 0, STORE_DB_TEAMS, "team-b", "2");
	put_str(s, 0, STORE_DB_TEAMS, "other", "x");
	put_str(s, 0, STORE_DB_TEAMS, "team-a", "1");
	assert_int_equal(store_wait(s, 0, put_str(s, 0, STORE_DB_TEAMS, "zz", "z"), WAIT_MS), 0);
	int err = 0;
	struct store_reader *r = store_reader_new(s, &err);
	assert_int_equal(store_read_begin(r), 0);
	struct scan_log l = { .stop_at = -1 };
	assert_int_equal(store_scan(r, STORE_DB_TEAMS, "team-", 5, scan_cb, &l), 0);
	assert_string_equal(l.text, "team-a=1;team-b=2;");
	memset(&l, 0, sizeof(l));
	l.stop_at = -1;
	assert_int_equal(store_scan(r, STORE_DB_TEAMS, NULL, 0, scan_cb, &l), 0);
	assert_string_equal(l.text, "other=x;team-a=1;team-b=2;zz=z;");
	memset(&l, 0, sizeof(l));
	l.stop_at = 2;
	assert_int_equal(store_scan(r, STORE_DB_TEAMS, NULL, 0, scan_cb, &l), 42);
	assert_string_equal(l.text, "other=x;team-a=1;");
	memset(&l, 0, sizeof(l));
	assert_int_equal(store_scan(r, STORE_DB_TEAMS, "zzz", 3, scan_cb, &l), 0);
	assert_int_equal(l.seen, 0);
	store_read_end(r);
	store_reader_free(r);
	store_close(s);
	scratch_remove(&t);
}

/* ---- borrowed audit content ---- */

#define REF_RECORDS 600

/* Record i's content: its length varies (33 bytes up to STORE_REF_MAX), so the staging
 * ring wraps at every kind of offset. */
static size_t ref_content(uint64_t i, uint8_t *out)
{
	size_t n = STORE_INLINE_MAX + 1 + (size_t)(i * 997 % (STORE_REF_MAX - STORE_INLINE_MAX));
	for (size_t j = 0; j < n; j++)
		out[j] = (uint8_t)(i * 31 + j);
	return n;
}

struct ref_check {
	uint64_t next;
	int bad;
};

static int ref_scan(void *arg, const void *key, size_t key_len, const void *val, size_t val_len)
{
	struct ref_check *c = arg;
	uint8_t want[STORE_REF_MAX];
	size_t n = ref_content(c->next++, want);
	if (key_len != STORE_AUDIT_KEY_LEN || val_len != STORE_AUDIT_HASH_LEN + n ||
	    memcmp((const uint8_t *)val + STORE_AUDIT_HASH_LEN, want, n) != 0)
		c->bad++;
	return 0;
}

/* Borrowed content is copied at submit: the caller's buffer is reused at once, records of
 * every size wrap the staging ring (8 KiB here) many times, a full one refuses a unit and
 * leaves the records borrowing as they were, and every record arrives whole and in order. */
static void test_audit_ref_staged(void **state)
{
	struct scratch t;
	scratch_make(&t);
	struct store_options o = options(&t, 1);
	o.ring_records = 16;
	o.commit_interval_ms = 1;
	struct store *s = open_ok(&o);
	uint8_t buf[STORE_REF_MAX];
	uint64_t seq = 0, refused = 0;
	for (uint64_t i = 0; i < REF_RECORDS; i++) {
		struct store_rec r[2];
		size_t n = ref_content(i, buf);
		assert_int_equal(store_rec_audit_ref(&r[0], buf, n), 0);
		assert_ptr_equal(r[0].v.blob, buf); /* borrowed, not copied */
		struct store_spend_key k = spend_key(STORE_SCOPE_TEAM, "search");
		struct store_spend d = { .requests = 1 };
		assert_int_equal(store_rec_spend_add(&r[1], &k, &d), 0);
		int rc;
		while ((rc = store_submit(s, 0, r, 2, &seq)) == -EAGAIN) {
			assert_ptr_equal(r[0].v.blob, buf); /* still the caller's, for the retry */
			refused++;
			usleep(100);
		}
		assert_int_equal(rc, 0);
		store_rec_release(&r[0]); /* harmless: nothing of the caller's to free */
		memset(buf, 0xa5, sizeof(buf)); /* the store keeps its own copy */
	}
	assert_int_equal(store_wait(s, 0, seq, WAIT_MS), 0);
	int err = 0;
	struct store_reader *rd = store_reader_new(s, &err);
	assert_int_equal(store_read_begin(rd), 0);
	struct ref_check c = { 0 };
	assert_int_equal(store_scan(rd, STORE_DB_AUDIT, NULL, 0, ref_scan, &c), 0);
	assert_int_equal(c.next, REF_RECORDS);
	assert_int_equal(c.bad, 0);
	struct store_spend sum;
	struct store_spend_key k = spend_key(STORE_SCOPE_TEAM, "search");
	assert_int_equal(store_spend_get(rd, &k, &sum), 0);
	assert_int_equal(sum.requests, REF_RECORDS);
	store_read_end(rd);
	store_reader_free(rd);
	print_message("staging full %" PRIu64 " times\n", refused);

	/* content too short or too long to borrow is copied, as store_rec_audit() does */
	struct store_rec r;
	assert_int_equal(store_rec_audit_ref(&r, buf, STORE_INLINE_MAX), 0);
	assert_ptr_not_equal(r.v.blob, buf);
	static uint8_t big[STORE_REF_MAX + 1];
	assert_int_equal(store_rec_audit_ref(&r, big, sizeof(big)), 0);
	assert_ptr_not_equal(r.v.blob, big);
	store_rec_release(&r);
	assert_int_equal(store_rec_audit_ref(&r, NULL, 100), -EINVAL);
	/* a borrowing record made into another kind is refused */
	assert_int_equal(store_rec_audit_ref(&r, buf, 100), 0);
	r.op = STORE_OP_PUT;
	assert_int_equal(store_submit(s, 0, &r, 1, &seq), -EINVAL);
	assert_int_equal(store_rec_audit_ref(&r, buf, 100), 0);
	r.val_len = STORE_REF_MAX + 1;
	assert_int_equal(store_submit(s, 0, &r, 1, &seq), -EINVAL);
	store_close(s);
	scratch_remove(&t);
}

/* ---- several producers ---- */

#define PRODUCERS 4
#define UNITS_PER_PRODUCER 20000

struct producer_arg {
	struct store *s;
	unsigned id;
	unsigned units;
	int result; /* cmocka asserts stay on the main thread */
};

/* Each unit: its audit record, +1 request on the producer's counter, +i micro-dollars on
 * the shared one. */
static int produce_units(struct store *s, unsigned id, unsigned units)
{
	struct store_spend_key mine, shared = spend_key(STORE_SCOPE_TEAM, "shared");
	char name[16];
	snprintf(name, sizeof(name), "p%u", id);
	mine = spend_key(STORE_SCOPE_KEY, name);
	uint64_t seq = 0;
	for (uint64_t i = 1; i <= units; i++) {
		struct store_rec unit[3];
		char key[24];
		audit_key(key, id, i);
		struct store_spend one = { .requests = 1 }, cost = { .micro_usd = (int64_t)i };
		if (store_rec_put(&unit[0], STORE_DB_TEAMS, key, strlen(key), key, strlen(key)) ||
		    store_rec_spend_add(&unit[1], &mine, &one) ||
		    store_rec_spend_add(&unit[2], &shared, &cost))
			return -1;
		int rc;
		while ((rc = store_submit(s, id, unit, 3, &seq)) == -EAGAIN)
			sched_yield();
		if (rc)
			return rc;
	}
	return store_wait(s, id, seq, WAIT_MS);
}

static void *producer_main(void *arg)
{
	struct producer_arg *a = arg;
	a->result = produce_units(a->s, a->id, a->units);
	return NULL;
}

static void run_producers(struct store *s, unsigned n, unsigned units)
{
	pthread_t th[PRODUCERS];
	struct producer_arg args[PRODUCERS];
	for (unsigned i = 0; i < n; i++) {
		args[i] = (struct producer_arg){ .s = s, .id = i, .units = units, .result = -1 };
		assert_int_equal(pthread_create(&th[i], NULL, producer_main, &args[i]), 0);
	}
	for (unsigned i = 0; i < n; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(args[i].result, 0);
	}
}

static void check_produced(struct store *s, unsigned n, unsigned units)
{
	int err = 0;
	struct store_reader *r = store_reader_new(s, &err);
	assert_non_null(r);
	assert_int_equal(store_read_begin(r), 0);
	for (unsigned p = 0; p < n; p++) {
		for (uint64_t i = 1; i <= units; i++) {
			char key[24], out[32];
			audit_key(key, p, i);
			assert_int_equal(get_str(r, STORE_DB_TEAMS, key, out, sizeof(out)), 0);
			assert_string_equal(out, key);
		}
		char name[16];
		snprintf(name, sizeof(name), "p%u", p);
		struct store_spend_key k = spend_key(STORE_SCOPE_KEY, name);
		struct store_spend got;
		assert_int_equal(store_spend_get(r, &k, &got), 0);
		assert_int_equal(got.requests, units);
	}
	struct store_spend_key k = spend_key(STORE_SCOPE_TEAM, "shared");
	struct store_spend got;
	assert_int_equal(store_spend_get(r, &k, &got), 0);
	assert_int_equal(got.micro_usd, (int64_t)n * units * (units + 1) / 2);
	store_read_end(r);
	store_reader_free(r);
}

static void test_producers_commit_everything(void **state)
{
	struct scratch t;
	scratch_make(&t);
	struct store_options o = options(&t, PRODUCERS);
	o.ring_records = 1024; /* small: the producers meet a full ring and push back */
	struct store *s = open_ok(&o);
	run_producers(s, PRODUCERS, UNITS_PER_PRODUCER);
	check_produced(s, PRODUCERS, UNITS_PER_PRODUCER);
	struct store_stats st;
	store_stats(s, &st);
	assert_int_equal(st.records, 3ull * PRODUCERS * UNITS_PER_PRODUCER);
	assert_int_equal(st.records_failed, 0);
	print_message("      %" PRIu64 " records in %" PRIu64 " commits, %" PRIu64
		      " submits met a full ring\n", st.records, st.commits, st.submit_full);
	store_close(s);

	/* Reopen: everything is still there. */
	s = open_ok(&o);
	check_produced(s, PRODUCERS, UNITS_PER_PRODUCER);
	store_close(s);
	scratch_remove(&t);
}

/* Single records, nobody waiting for them. */
struct stream_arg {
	struct store *s;
	unsigned id;
	uint64_t records;
};

static void *stream_main(void *arg)
{
	struct stream_arg *a = arg;
	for (uint64_t i = 1; i <= a->records; i++) {
		struct store_rec r;
		char key[24];
		audit_key(key, a->id, i);
		if (store_rec_put(&r, STORE_DB_TEAMS, key, strlen(key), "v", 1))
			return NULL;
		while (store_submit(a->s, a->id, &r, 1, NULL) == -EAGAIN)
			sched_yield();
	}
	return NULL;
}

/* The store thread commits when the interval passes or a ring passes half full. With an
 * interval far beyond the test's run, every commit but the first takes more than half a
 * ring: counting commits shows the batching without timing anything. */
static void test_group_commit_batches(void **state)
{
	struct scratch t;
	scratch_make(&t);
	struct store_options o = options(&t, 2);
	o.ring_records = 1024;
	o.commit_interval_ms = 600000;
	struct store *s = open_ok(&o);
	const uint64_t per_producer = 15000, total = 2 * per_producer;
	pthread_t th[2];
	struct stream_arg args[2];
	for (unsigned i = 0; i < 2; i++) {
		args[i] = (struct stream_arg){ .s = s, .id = i, .records = per_producer };
		assert_int_equal(pthread_create(&th[i], NULL, stream_main, &args[i]), 0);
	}
	for (unsigned i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	struct store_stats st;
	store_stats(s, &st);
	print_message("      %" PRIu64 " of %" PRIu64 " records committed in %" PRIu64
		      " commits before close\n", st.records, total, st.commits);
	assert_int_equal(st.records_failed, 0);
	/* What is not committed sits in the rings (under half each) or in the batch the
	 * thread is committing right now. */
	assert_true(st.records + 2 * o.ring_records + 4096 >= total);
	assert_true(st.commits >= 2);
	assert_true(st.commits <= 2 + total / (o.ring_records / 4));
	store_close(s); /* commits the tail */

	s = open_ok(&o);
	int err = 0;
	struct store_reader *r = store_reader_new(s, &err);
	assert_int_equal(store_read_begin(r), 0);
	for (uint64_t i = 1; i <= per_producer; i++) {
		for (unsigned p = 0; p < 2; p++) {
			char key[24], out[8];
			audit_key(key, p, i);
			assert_int_equal(get_str(r, STORE_DB_TEAMS, key, out, sizeof(out)), 0);
		}
	}
	store_read_end(r);
	store_reader_free(r);
	store_close(s);
	scratch_remove(&t);
}

/* ---- strict durability: an outcome of 0 means a fresh read sees the record ---- */

struct strict_arg {
	struct store *s;
	unsigned id;
	unsigned rounds;
	unsigned not_visible; /* records reported committed that a fresh read did not find */
	int result;
};

static void *strict_main(void *arg)
{
	struct strict_arg *a = arg;
	int err = 0;
	struct store_reader *r = store_reader_new(a->s, &err);
	if (!r) {
		a->result = err;
		return NULL;
	}
	char name[16];
	snprintf(name, sizeof(name), "strict%u", a->id);
	struct store_spend_key k = spend_key(STORE_SCOPE_KEY, name);
	a->result = 0;
	for (unsigned i = 1; i <= a->rounds && a->result == 0; i++) {
		struct store_rec unit[2];
		char key[24];
		audit_key(key, a->id, i);
		struct store_spend one = { .requests = 1 };
		store_rec_put(&unit[0], STORE_DB_TEAMS, key, strlen(key), "s", 1);
		store_rec_spend_add(&unit[1], &k, &one);
		uint64_t seq;
		int rc;
		while ((rc = store_submit(a->s, a->id, unit, 2, &seq)) == -EAGAIN)
			sched_yield();
		if (rc == 0)
			rc = store_wait(a->s, a->id, seq, WAIT_MS);
		if (rc) {
			a->result = rc;
			break;
		}
		/* The outcome said committed: a read begun now must see both records. */
		rc = store_read_begin(r);
		if (rc) {
			a->result = rc;
			break;
		}
		struct store_val v;
		struct store_spend got;
		if (store_get(r, STORE_DB_TEAMS, key, strlen(key), &v) != 0 ||
		    store_spend_get(r, &k, &got) != 0 || got.requests != (int64_t)i)
			a->not_visible++;
		store_read_end(r);
	}
	store_reader_free(r);
	return NULL;
}

static void test_strict_outcome_after_visible(void **state)
{
	struct scratch t;
	scratch_make(&t);
	struct store_options o = options(&t, 3);
	o.durability = STORE_DURABILITY_STRICT;
	o.ring_records = 64;
	struct store *s = open_ok(&o);
	pthread_t th[3];
	struct strict_arg args[3];
	for (unsigned i = 0; i < 3; i++) {
		args[i] = (struct strict_arg){ .s = s, .id = i, .rounds = 300, .result = -1 };
		assert_int_equal(pthread_create(&th[i], NULL, strict_main, &args[i]), 0);
	}
	for (unsigned i = 0; i < 3; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(args[i].result, 0);
		assert_int_equal(args[i].not_visible, 0);
	}
	struct store_stats st;
	store_stats(s, &st);
	assert_int_equal(st.records, 3 * 300 * 2);
	store_close(s);
	scratch_remove(&t);
}

/* The eventfd fires for the producer that had records in a batch; an old seq's outcome
 * reads as stale once its slot was reused. */
static void test_notify_fd_and_stale(void **state)
{
	struct scratch t;
	scratch_make(&t);
	struct store_options o = options(&t, 2);
	o.ring_records = 16; /* the outcome window is 4 x 16 records */
	struct store *s = open_ok(&o);
	int fd = store_notify_fd(s, 1);
	assert_true(fd >= 0);
	assert_int_equal(store_notify_fd(s, 2), -1);
	uint64_t first = put_str(s, 1, STORE_DB_KEYS, "k0", "v");
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	assert_int_equal(poll(&pfd, 1, WAIT_MS), 1);
	uint64_t v;
	assert_int_equal(read(fd, &v, sizeof(v)), sizeof(v));
	assert_true(v >= 1);
	assert_int_equal(store_outcome(s, 1, first), 0);
	/* producer 0 submitted nothing: its eventfd stays quiet */
	pfd.fd = store_notify_fd(s, 0);
	assert_int_equal(poll(&pfd, 1, 0), 0);

	uint64_t seq = first;
	for (int i = 0; i < 100; i++) {
		char key[8];
		snprintf(key, sizeof(key), "k%d", i);
		seq = put_str(s, 1, STORE_DB_KEYS, key, "v");
		assert_int_equal(store_wait(s, 1, seq, WAIT_MS), 0);
	}
	assert_int_equal(store_outcome(s, 1, first), -ESTALE);
	assert_int_equal(store_outcome(s, 1, seq), 0);
	assert_int_equal(store_outcome(s, 1, seq + 1), -EINPROGRESS);
	store_close(s);
	scratch_remove(&t);
}

/* ---- map full and map growth ---- */

static void fill_value(char *buf, size_t n, uint64_t i)
{
	for (size_t j = 0; j < n - 1; j++)
		buf[j] = (char)('A' + (i + j) % 26);
	buf[n - 1] = 0;
}

static void test_map_full_keeps_reads(void **state)
{
	struct scratch t;
	scratch_make(&t);
	struct store_options o = options(&t, 1);
	o.map_size = 256 << 10;
	o.map_size_max = 256 << 10; /* no room to grow */
	struct store *s = open_ok(&o);
	int err = 0;
	struct store_reader *r = store_reader_new(s, &err);
	assert_non_null(r);

	char val[1024];
	uint64_t i, committed = 0;
	int rc = 0;
	for (i = 1; i <= 2000; i++) {
		char key[24];
		audit_key(key, 0, i);
		fill_value(val, sizeof(val), i);
		rc = store_wait(s, 0, put_str(s, 0, STORE_DB_TEAMS, key, val), WAIT_MS);
		if (rc)
			break;
		committed = i;
	}
	assert_int_equal(rc, MDB_MAP_FULL);
	assert_true(committed > 10);
	assert_non_null(strstr(store_strerror(rc), "MDB_MAP_FULL"));
	struct store_stats st;
	store_stats(s, &st);
	assert_true(st.map_full >= 1);
	assert_true(st.records_failed >= 1);
	assert_int_equal(st.map_grows, 0);

	/* Reads go on: everything committed before is there. */
	assert_int_equal(store_read_begin(r), 0);
	for (uint64_t j = 1; j <= committed; j++) {
		char key[24], out[1100];
		audit_key(key, 0, j);
		fill_value(val, sizeof(val), j);
		assert_int_equal(get_str(r, STORE_DB_TEAMS, key, out, sizeof(out)), 0);
		assert_string_equal(out, val);
	}
	store_read_end(r);

	/* Writes keep failing cleanly, and a small one that fits still commits. */
	char key[24];
	audit_key(key, 0, 999999);
	assert_int_equal(store_wait(s, 0, put_str(s, 0, STORE_DB_TEAMS, key, val), WAIT_MS),
			 MDB_MAP_FULL);
	assert_int_equal(store_wait(s, 0, put_str(s, 0, STORE_DB_TEAMS, "t", "1"), WAIT_MS), 0);
	store_reader_free(r);
	store_close(s);

	/* Reopened with room to grow, the failed writes go through. */
	o.map_size_max = 64 << 20;
	s = open_ok(&o);
	assert_int_equal(store_wait(s, 0, put_str(s, 0, STORE_DB_TEAMS, key, val), WAIT_MS), 0);
	r = store_reader_new(s, &err);
	assert_int_equal(store_read_begin(r), 0);
	char out[1100];
	audit_key(key, 0, committed);
	assert_int_equal(get_str(r, STORE_DB_TEAMS, key, out, sizeof(out)), 0);
	store_read_end(r);
	store_reader_free(r);
	store_close(s);
	scratch_remove(&t);
}

struct reader_arg {
	struct store *s;
	atomic_bool stop;
	uint64_t reads;
	uint64_t errors;
};

/* Short reads in a loop, as a worker would do them, while the map grows under them. */
static void *reader_main(void *arg)
{
	struct reader_arg *a = arg;
	int err = 0;
	struct store_reader *r = store_reader_new(a->s, &err);
	if (!r) {
		a->errors++;
		return NULL;
	}
	uint64_t i = 1;
	while (!atomic_load(&a->stop)) {
		if (store_read_begin(r) != 0) {
			a->errors++;
			break;
		}
		char key[24];
		audit_key(key, 0, i);
		struct store_val v;
		int rc = store_get(r, STORE_DB_TEAMS, key, strlen(key), &v);
		if (rc == 0 && (v.len != 2047 || ((const char *)v.p)[0] != (char)('A' + i % 26)))
			a->errors++;
		else if (rc == 0)
			i++;
		else if (rc != -ENOENT)
			a->errors++;
		store_read_end(r);
		a->reads++;
	}
	store_reader_free(r);
	return NULL;
}

static void test_map_grows_under_readers(void **state)
{
	struct scratch t;
	scratch_make(&t);
	struct store_options o = options(&t, 1);
	o.map_size = 256 << 10;
	o.map_size_max = 256 << 20;
	struct store *s = open_ok(&o);
	struct reader_arg ra[2];
	pthread_t th[2];
	for (int k = 0; k < 2; k++) {
		ra[k] = (struct reader_arg){ .s = s };
		assert_int_equal(pthread_create(&th[k], NULL, reader_main, &ra[k]), 0);
	}
	char val[2048];
	uint64_t seq = 0;
	const uint64_t n = 6000; /* about 12 MiB of values through a map that starts at 256 KiB */
	for (uint64_t i = 1; i <= n; i++) {
		char key[24];
		audit_key(key, 0, i);
		fill_value(val, sizeof(val), i);
		seq = put_str(s, 0, STORE_DB_TEAMS, key, val);
		if (i % 500 == 0)
			assert_int_equal(store_wait(s, 0, seq, WAIT_MS), 0);
	}
	assert_int_equal(store_wait(s, 0, seq, WAIT_MS), 0);
	for (int k = 0; k < 2; k++) {
		atomic_store(&ra[k].stop, true);
		pthread_join(th[k], NULL);
		assert_int_equal(ra[k].errors, 0);
		assert_true(ra[k].reads > 0);
	}
	struct store_stats st;
	store_stats(s, &st);
	print_message("      map grew %" PRIu64 " times to %zu KiB\n", st.map_grows,
		      st.map_size >> 10);
	assert_true(st.map_grows >= 4);
	assert_true(st.map_size >= (size_t)8 << 20);
	assert_int_equal(st.records_failed, 0);
	size_t grown = st.map_size;
	store_close(s);

	/* The grown size outlives the restart, though the options still say 256 KiB. */
	s = open_ok(&o);
	store_stats(s, &st);
	assert_true(st.map_size >= grown);
	int err = 0;
	struct store_reader *r = store_reader_new(s, &err);
	assert_int_equal(store_read_begin(r), 0);
	for (uint64_t i = 1; i <= n; i += 97) {
		char key[24], out[2100];
		audit_key(key, 0, i);
		fill_value(val, sizeof(val), i);
		assert_int_equal(get_str(r, STORE_DB_TEAMS, key, out, sizeof(out)), 0);
		assert_string_equal(out, val);
	}
	store_read_end(r);
	store_reader_free(r);
	store_close(s);
	scratch_remove(&t);
}

/* ---- read-only (penstockctl) ---- */

static void test_read_only(void **state)
{
	struct scratch t;
	scratch_make(&t);
	struct store_options o = options(&t, 1);
	struct store *s = open_ok(&o);
	assert_int_equal(store_wait(s, 0, put_str(s, 0, STORE_DB_KEYS, "h", "key"), WAIT_MS), 0);
	store_close(s);

	struct store_options ro = { .dir = t.dir, .read_only = true };
	s = open_ok(&ro);
	struct store_rec rec;
	assert_int_equal(store_rec_put(&rec, STORE_DB_KEYS, "x", 1, "y", 1), 0);
	assert_int_equal(store_submit(s, 0, &rec, 1, NULL), -EROFS);
	int err = 0;
	struct store_reader *r = store_reader_new(s, &err);
	assert_int_equal(store_read_begin(r), 0);
	char out[8];
	assert_int_equal(get_str(r, STORE_DB_KEYS, "h", out, sizeof(out)), 0);
	assert_string_equal(out, "key");
	store_read_end(r);
	store_reader_free(r);
	store_close(s);
	scratch_remove(&t);
}

/* ---- kill -9 in the middle of a stream ---- */

/* The child streams units (an audit record, +1 request and +i micro-dollars on one
 * counter) as fast as the ring takes them, never waiting, and reports on the pipe the
 * last unit whose commit it has seen (unit i is records 2i-1 and 2i). It never stops on
 * its own. */
static void crash_report(struct store *s, uint64_t *reported, int report_fd)
{
	uint64_t units = store_done_seq(s, 0) / 2;
	if (units <= *reported)
		return;
	if (store_outcome(s, 0, units * 2) != 0)
		_exit(3);
	if (write(report_fd, &units, sizeof(units)) != sizeof(units))
		_exit(4);
	*reported = units;
}

static void crash_child(const char *dir, enum store_durability durability, int report_fd)
{
	struct store_options o = { .dir = dir, .producers = 1, .durability = durability,
				   .ring_records = 256 };
	int err = 0;
	struct store *s = store_open(&o, &err);
	if (!s)
		_exit(2);
	struct store_spend_key k = spend_key(STORE_SCOPE_TEAM, "crash");
	uint64_t reported = 0;
	for (uint64_t i = 1;; i++) {
		struct store_rec unit[2];
		char key[24];
		audit_key(key, 0, i);
		struct store_spend d = { .micro_usd = (int64_t)i, .requests = 1 };
		store_rec_put(&unit[0], STORE_DB_TEAMS, key, strlen(key), key, strlen(key));
		store_rec_spend_add(&unit[1], &k, &d);
		uint64_t seq;
		while (store_submit(s, 0, unit, 2, &seq) == -EAGAIN) {
			crash_report(s, &reported, report_fd);
			sched_yield();
		}
		crash_report(s, &reported, report_fd);
	}
}

struct crash_count {
	uint64_t present, max, sum;
};

static int crash_scan(void *arg, const void *key, size_t key_len, const void *val,
		      size_t val_len)
{
	struct crash_count *c = arg;
	char text[24];
	if (key_len < 5 || key_len >= sizeof(text))
		return -1;
	memcpy(text, key, key_len); /* "r00-0000000123", not NUL-terminated in the map */
	text[key_len] = 0;
	uint64_t i = strtoull(text + 4, NULL, 10);
	c->present++;
	c->sum += i;
	if (i > c->max)
		c->max = i;
	return 0;
}

/* kill_delay_us: how long the child streams on after the parent saw kill_after, so the
 * kill lands at different points: between commits, inside one, inside an fsync. */
static void run_crash(enum store_durability durability, uint64_t kill_after,
		      unsigned kill_delay_us)
{
	struct scratch t;
	scratch_make(&t);
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(fds[0]);
		crash_child(t.dir, durability, fds[1]);
		_exit(1);
	}
	close(fds[1]);
	uint64_t confirmed = 0, v;
	bool looked = false;
	while (confirmed < kill_after && read(fds[0], &v, sizeof(v)) == sizeof(v)) {
		confirmed = v;
		if (!looked && confirmed >= kill_after / 2) {
			/* penstockctl's view while the gateway writes: the confirmed unit is
			 * there, and the counter matches the records, never half a unit. */
			struct store_options ro = { .dir = t.dir, .read_only = true };
			struct store *s = open_ok(&ro);
			int err = 0;
			struct store_reader *r = store_reader_new(s, &err);
			assert_int_equal(store_read_begin(r), 0);
			char key[24], out[24];
			audit_key(key, 0, confirmed);
			assert_int_equal(get_str(r, STORE_DB_TEAMS, key, out, sizeof(out)), 0);
			struct crash_count c = { 0 };
			assert_int_equal(store_scan(r, STORE_DB_TEAMS, NULL, 0, crash_scan, &c), 0);
			struct store_spend_key k = spend_key(STORE_SCOPE_TEAM, "crash");
			struct store_spend got;
			assert_int_equal(store_spend_get(r, &k, &got), 0);
			assert_int_equal(got.requests, c.present);
			store_read_end(r);
			store_reader_free(r);
			store_close(s);
			looked = true;
		}
	}
	if (kill_delay_us)
		usleep(kill_delay_us);
	kill(pid, SIGKILL); /* mid-stream: the child is submitting and committing */
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	close(fds[0]);
	assert_true(WIFSIGNALED(status)); /* not an early exit of its own */
	assert_int_equal(WTERMSIG(status), SIGKILL);
	assert_true(confirmed >= kill_after);

	struct store_options o = { .dir = t.dir, .producers = 1, .durability = durability };
	struct store *s = open_ok(&o);
	int err = 0;
	struct store_reader *r = store_reader_new(s, &err);
	assert_int_equal(store_read_begin(r), 0);
	struct crash_count c = { 0 };
	assert_int_equal(store_scan(r, STORE_DB_TEAMS, NULL, 0, crash_scan, &c), 0);
	/* Units commit in order and whole: what is there is 1..max, every confirmed one. */
	assert_true(c.max >= confirmed);
	assert_int_equal(c.present, c.max);
	assert_int_equal(c.sum, c.max * (c.max + 1) / 2);
	struct store_spend_key k = spend_key(STORE_SCOPE_TEAM, "crash");
	struct store_spend got;
	assert_int_equal(store_spend_get(r, &k, &got), 0);
	assert_int_equal(got.requests, c.present);     /* nothing counted twice, */
	assert_int_equal(got.micro_usd, (int64_t)c.sum); /* nor without its record */
	print_message("      killed after %" PRIu64 " confirmed; %" PRIu64 " on disk\n",
		      confirmed, c.present);
	store_read_end(r);
	store_reader_free(r);

	/* The restarted store writes on from there. */
	struct store_rec rec;
	struct store_spend d = { .micro_usd = 1, .requests = 1 };
	assert_int_equal(store_rec_spend_add(&rec, &k, &d), 0);
	assert_int_equal(store_wait(s, 0, submit_unit(s, 0, &rec, 1), WAIT_MS), 0);
	store_close(s);
	scratch_remove(&t);
}

static void test_crash_batch(void **state)
{
	run_crash(STORE_DURABILITY_BATCH, 20000, 0);
	run_crash(STORE_DURABILITY_BATCH, 10000, 3000);
	run_crash(STORE_DURABILITY_BATCH, 10000, 17000);
}

static void test_crash_strict(void **state)
{
	run_crash(STORE_DURABILITY_STRICT, 2000, 0);
	run_crash(STORE_DURABILITY_STRICT, 1000, 5000);
}

/* ---- bench: group-commit throughput, printed ---- */

static double seconds_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void bench_one(enum store_durability d, const char *name, unsigned producers,
		      unsigned units)
{
	struct scratch t;
	scratch_make(&t);
	struct store_options o = { .dir = t.dir, .producers = producers, .durability = d };
	struct store *s = open_ok(&o);
	double t0 = seconds_now();
	run_producers(s, producers, units);
	double dt = seconds_now() - t0;
	struct store_stats st;
	store_stats(s, &st);
	printf("%-6s %u producers: %8" PRIu64 " records in %6.3f s: %9.0f records/s, "
	       "%6" PRIu64 " commits (%6.0f commits/s, %5.0f records/commit)\n",
	       name, producers, st.records, dt, (double)st.records / dt, st.commits,
	       (double)st.commits / dt, (double)st.records / (double)st.commits);
	store_close(s);
	scratch_remove(&t);
}

/* Strict, each producer waiting for every unit before the next (a worker holding its
 * client's response): the commit rate is what fsync allows; group commit shares it. */
static void bench_strict_waiting(unsigned producers, unsigned rounds)
{
	struct scratch t;
	scratch_make(&t);
	struct store_options o = { .dir = t.dir, .producers = producers,
				   .durability = STORE_DURABILITY_STRICT };
	struct store *s = open_ok(&o);
	pthread_t th[PRODUCERS];
	struct strict_arg args[PRODUCERS];
	double t0 = seconds_now();
	for (unsigned i = 0; i < producers; i++) {
		args[i] = (struct strict_arg){ .s = s, .id = i, .rounds = rounds };
		pthread_create(&th[i], NULL, strict_main, &args[i]);
	}
	for (unsigned i = 0; i < producers; i++)
		pthread_join(th[i], NULL);
	double dt = seconds_now() - t0;
	struct store_stats st;
	store_stats(s, &st);
	printf("strict, waiting, %u producers: %6.0f units/s, %5.0f commits/s, %4.2f units/commit, "
	       "%5.2f ms per wait\n", producers, producers * rounds / dt, (double)st.commits / dt,
	       producers * rounds / (double)st.commits, dt * 1000 / rounds);
	store_close(s);
	scratch_remove(&t);
}

static int bench(void)
{
	for (unsigned p = 1; p <= PRODUCERS; p *= 2)
		bench_strict_waiting(p, 300);
	for (unsigned p = 1; p <= PRODUCERS; p *= 2) {
		bench_one(STORE_DURABILITY_BATCH, "batch", p, 200000 / p);
		bench_one(STORE_DURABILITY_STRICT, "strict", p, 200000 / p);
		bench_one(STORE_DURABILITY_NONE, "none", p, 200000 / p);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "bench") == 0)
		return bench();
	log_min_level = LOG_WARN; /* the map-full test logs its error on purpose */
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_open_creates_dir),
		cmocka_unit_test(test_open_errors),
		cmocka_unit_test(test_schema_mismatch),
		cmocka_unit_test(test_foreign_env),
		cmocka_unit_test(test_record_validation),
		cmocka_unit_test(test_put_del_add_roundtrip),
		cmocka_unit_test(test_spend_counter_saturates),
		cmocka_unit_test(test_adds_summed_in_batch),
		cmocka_unit_test(test_adds_ordered_with_put_del),
		cmocka_unit_test(test_adds_past_table),
		cmocka_unit_test(test_spend_key_layout),
		cmocka_unit_test(test_scan),
		cmocka_unit_test(test_audit_ref_staged),
		cmocka_unit_test(test_producers_commit_everything),
		cmocka_unit_test(test_group_commit_batches),
		cmocka_unit_test(test_strict_outcome_after_visible),
		cmocka_unit_test(test_notify_fd_and_stale),
		cmocka_unit_test(test_map_full_keeps_reads),
		cmocka_unit_test(test_map_grows_under_readers),
		cmocka_unit_test(test_read_only),
		cmocka_unit_test(test_crash_batch),
		cmocka_unit_test(test_crash_strict),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
