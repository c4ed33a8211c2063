/* test_audit.c - audit records: the encoding round trip and bad bytes, filters and time
 * parsing, the hash chain on a real store (verify whole, then a byte flipped with a raw
 * LMDB write is named), stamps between submission and commit, retention pruning with its
 * anchor, and the formats. */
#include <errno.h>
#include <ftw.h>
#include <lmdb.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "policy/audit.h"

static struct audit_rec sample(const char *id)
{
	struct audit_rec a = {
		.time_ns = 1714560000123456789,
		.request_id = slice_cstr(id),
		.key_id = slice_cstr("k_0123456789abcdef"),
		.team = slice_cstr("search"),
		.client = slice_cstr("127.0.0.1:5555"),
		.dialect = AUDIT_DIALECT_ANTHROPIC,
		.model = slice_cstr("gpt-4o"),
		.provider = slice_cstr("openai"),
		.upstream_model = slice_cstr("gpt-4o-2024"),
		.status = 200,
		.stream = true,
		.usage = AUDIT_USAGE_PROVIDER,
		.prompt_tokens = 1234,
		.completion_tokens = 56,
		.cached_tokens = 7,
		.cost_micro_usd = 98765,
		.total_us = 150000,
		.first_byte_us = 40000,
		.upstream_us = 120000,
		.nattempts = 2,
	};
	a.attempts[0] = (struct audit_attempt){ slice_cstr("dead"), slice_cstr("m,\"x\""), 0,
						slice_cstr("refused") };
	a.attempts[1] = (struct audit_attempt){ slice_cstr("openai"), slice_cstr("gpt-4o-2024"), 200,
						slice_cstr("") };
	return a;
}

static void same_slice(struct slice a, struct slice b)
{
	assert_int_equal(a.n, b.n);
	if (a.n)
		assert_memory_equal(a.p, b.p, a.n);
}

static void test_round_trip(void **state)
{
	struct audit_rec a = sample("00000000000000000001"), d;
	uint8_t buf[AUDIT_CONTENT_MAX];
	size_t n = audit_encode(&a, buf, sizeof(buf));
	assert_true(n > 0 && n < 200); /* compact: a typical record is well under 200 bytes */
	assert_int_equal(audit_decode(buf, n, &d), 0);
	assert_int_equal(d.time_ns, a.time_ns);
	same_slice(d.request_id, a.request_id);
	same_slice(d.key_id, a.key_id);
	same_slice(d.team, a.team);
	same_slice(d.client, a.client);
	same_slice(d.model, a.model);
	same_slice(d.provider, a.provider);
	same_slice(d.upstream_model, a.upstream_model);
	assert_int_equal(d.dialect, AUDIT_DIALECT_ANTHROPIC);
	assert_int_equal(d.status, 200);
	assert_true(d.stream);
	assert_int_equal(d.usage, AUDIT_USAGE_PROVIDER);
	assert_int_equal(d.prompt_tokens, 1234);
	assert_int_equal(d.completion_tokens, 56);
	assert_int_equal(d.cached_tokens, 7);
	assert_int_equal(d.cost_micro_usd, 98765);
	assert_int_equal(d.total_us, 150000);
	assert_int_equal(d.first_byte_us, 40000);
	assert_int_equal(d.upstream_us, 120000);
	assert_int_equal(d.nattempts, 2);
	same_slice(d.attempts[0].model, a.attempts[0].model);
	same_slice(d.attempts[0].error, a.attempts[0].error);
	assert_int_equal(d.attempts[1].status, 200);

	/* every truncation and a wrong version are refused, never read past the end */
	for (size_t cut = 0; cut < n; cut++) {
		uint8_t *copy = malloc(cut ? cut : 1);
		memcpy(copy, buf, cut);
		assert_int_equal(audit_decode(copy, cut, &d), -EBADMSG);
		free(copy);
	}
	buf[0] = AUDIT_VERSION + 1;
	assert_int_equal(audit_decode(buf, n, &d), -EBADMSG);
	/* too small a buffer: 0, not a cut record */
	assert_int_equal(audit_encode(&a, buf, 20), 0);
	/* over-long strings are cut at AUDIT_STR_MAX */
	char big[1000];
	memset(big, 'x', sizeof(big));
	a.model = slice_of(big, sizeof(big));
	n = audit_encode(&a, buf, sizeof(buf));
	assert_int_equal(audit_decode(buf, n, &d), 0);
	assert_int_equal(d.model.n, AUDIT_STR_MAX);
}

/* Bodies travel in version 2; a version 1 record (no body flags) still reads. */
/* The bytes themselves, for integers at their edges (LEB128 of 1 to 10 bytes, zigzag of -1
 * and INT64_MIN), and at every capacity: the record, or 0 when it does not fit whole. */
static void test_exact_bytes_and_every_cap(void **state)
{
	(void)state;
	struct audit_rec a = {
		.time_ns = -1, .request_id = slice_cstr("r1"), .status = 429,
		.usage = AUDIT_USAGE_GATEWAY, .prompt_tokens = UINT64_MAX, .completion_tokens = 128,
		.cost_micro_usd = INT64_MIN, .total_us = 16384, .first_byte_us = 127,
		.upstream_us = 300, .nattempts = 1, .has_request_body = true,
		.request_body = slice_cstr("{}"),
	};
	a.attempts[0] = (struct audit_attempt){ slice_cstr("p"), slice_cstr("m"), 503,
						slice_cstr("") };
	static const uint8_t want[] = {
		0x02, 0x08, 0xad, 0x03, 0x01, 0x02, 0x72, 0x31, 0x00, 0x00, 0x00, 0x00,
		0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
		0x80, 0x01, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0x01, 0x80, 0x80, 0x01, 0x7f, 0xac, 0x02, 0x01, 0x01, 0x70, 0x01, 0x6d,
		0xf7, 0x03, 0x00, 0x01, 0x02, 0x7b, 0x7d,
	};
	uint8_t buf[sizeof(want) + 16];
	for (size_t cap = 0; cap <= sizeof(buf); cap++) {
		memset(buf, 0xee, sizeof(buf));
		size_t n = audit_encode(&a, buf, cap);
		if (cap < sizeof(want)) {
			assert_int_equal(n, 0);
			continue;
		}
		assert_int_equal(n, sizeof(want));
		assert_memory_equal(buf, want, sizeof(want));
		for (size_t i = sizeof(want); i < sizeof(buf); i++)
			assert_int_equal(buf[i], 0xee);
	}
}

static void test_bodies_and_version_1(void **state)
{
	struct audit_rec a = sample("r2"), d;
	size_t big = AUDIT_BODY_MAX + 100;
	char *text = malloc(big);
	assert_non_null(text);
	memset(text, 'b', big);
	a.has_request_body = true;
	a.request_body = slice_cstr("{\"messages\":[]}");
	a.has_response_body = true;
	a.response_body = slice_of(text, big); /* over the record's own bound: cut there */
	size_t cap = audit_encode_bound(&a);
	uint8_t *buf = malloc(cap);
	assert_non_null(buf);
	size_t n = audit_encode(&a, buf, cap);
	assert_true(n > AUDIT_BODY_MAX);
	assert_int_equal(buf[0], 2);
	assert_int_equal(audit_decode(buf, n, &d), 0);
	assert_true(d.has_request_body && d.has_response_body);
	assert_false(d.response_streamed);
	same_slice(d.request_body, a.request_body);
	assert_int_equal(d.response_body.n, AUDIT_BODY_MAX);
	assert_int_equal(audit_decode(buf, n - 1, &d), -EBADMSG);

	/* a stream: no response body, the flag says why */
	a.has_response_body = false;
	a.response_streamed = true;
	n = audit_encode(&a, buf, cap);
	assert_int_equal(audit_decode(buf, n, &d), 0);
	assert_true(d.has_request_body && !d.has_response_body && d.response_streamed);

	/* no bodies; then the same as version 1 wrote it: no flags byte */
	a = sample("r3");
	n = audit_encode(&a, buf, cap);
	assert_int_equal(buf[n - 1], 0);
	buf[0] = 1;
	assert_int_equal(audit_decode(buf, n - 1, &d), 0);
	same_slice(d.request_id, a.request_id);
	assert_int_equal(d.attempts[1].status, 200);
	assert_false(d.has_request_body || d.has_response_body || d.response_streamed);
	free(buf);
	free(text);
}

static void test_filters_and_times(void **state)
{
	struct audit_filter f = { 0 };
	assert_int_equal(audit_status_parse("4xx", &f), 0);
	assert_int_equal(f.status_lo, 400);
	assert_int_equal(f.status_hi, 499);
	assert_int_equal(audit_status_parse("429", &f), 0);
	assert_int_equal(f.status_lo, 429);
	assert_int_equal(f.status_hi, 429);
	assert_int_equal(audit_status_parse("42", &f), -EINVAL);
	assert_int_equal(audit_status_parse("x00", &f), -EINVAL);
	uint64_t ns;
	assert_int_equal(audit_time_parse("2024-05-01", &ns), 0);
	assert_int_equal(ns, UINT64_C(1714521600) * 1000000000);
	assert_int_equal(audit_time_parse("2024-05-01T01:00:00.5+01:00", &ns), 0);
	assert_int_equal(ns, UINT64_C(1714521600) * 1000000000 + 500000000);
	assert_int_equal(audit_time_parse("123", &ns), 0);
	assert_int_equal(ns, 123);
	assert_int_equal(audit_time_parse("2024-02-30", &ns), -EINVAL);
	assert_int_equal(audit_time_parse("yesterday", &ns), -EINVAL);
	assert_int_equal(audit_time_parse("2024-05-01T25:00:00Z", &ns), -EINVAL);
}

static bool has(const struct buf *b, const char *s)
{
	return memmem(b->p, b->len, s, strlen(s)) != NULL;
}

static void test_formats(void **state)
{
	struct audit_entry e = { .stamp = 42, .rec = sample("r1") };
	uint8_t hash[STORE_AUDIT_HASH_LEN] = { 0xab };
	e.hash = hash;
	struct buf b = { 0 };
	assert_true(audit_json(&e, &b, SIZE_MAX));
	assert_true(b.len && b.p[b.len - 1] == '\n');
	assert_non_null(memmem(b.p, b.len, "\"seq\":42,", 9));
	assert_non_null(memmem(b.p, b.len, "\"model\":\"m,\\\"x\\\"\"", 17));
	assert_non_null(memmem(b.p, b.len, "\"fallbacks\":1", 13));
	assert_non_null(memmem(b.p, b.len, "\"guardrail\":null,\"cache\":null", 29));
	assert_non_null(memmem(b.p, b.len, "\"hash\":\"ab00", 12));
	b.len = 0;
	assert_true(audit_csv(&e, &b, SIZE_MAX));
	/* the attempts field holds a quote and a comma: quoted, quotes doubled */
	assert_non_null(memmem(b.p, b.len, "\"dead/m,\"\"x\"\" refused|openai/gpt-4o-2024 200\"", 45));
	assert_false(audit_csv(&e, &b, b.len + 10)); /* a bound is a bound */

	/* bodies: JSON strings (null without), CSV columns at the end */
	b.len = 0;
	assert_true(audit_json(&e, &b, SIZE_MAX));
	assert_true(has(&b, "\"request_body\":null,\"response_body\":null,"
			    "\"response_streamed\":false,"));
	e.rec.has_request_body = e.rec.has_response_body = true;
	e.rec.request_body = slice_cstr("{\"q\":\"a,b\"}\n");
	e.rec.response_body = slice_cstr("ok");
	b.len = 0;
	assert_true(audit_json(&e, &b, SIZE_MAX));
	assert_true(has(&b, "\"request_body\":\"{\\\"q\\\":\\\"a,b\\\"}\\n\","
			    "\"response_body\":\"ok\","));
	b.len = 0;
	assert_true(audit_csv(&e, &b, SIZE_MAX));
	const char *tail = ",\"{\"\"q\"\":\"\"a,b\"\"}\n\",ok\r\n";
	assert_true(b.len > strlen(tail));
	assert_memory_equal(b.p + b.len - strlen(tail), tail, strlen(tail));
	assert_non_null(strstr(audit_csv_header(), ",hash,request_body,response_body\r\n"));
	buf_free(&b);
}

/* ---- the chain on a real store ---- */

struct scratch {
	char root[64], dir[96];
};

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static struct store *open_store(struct scratch *t, uint64_t retention_ms)
{
	struct store_options o = { .dir = t->dir, .producers = 1,
				   .durability = STORE_DURABILITY_NONE,
				   .audit_retention_ms = retention_ms };
	int err = 0;
	struct store *s = store_open(&o, &err);
	assert_non_null(s);
	return s;
}

static void submit(struct store *s, unsigned n, unsigned from)
{
	uint64_t seq = 0;
	for (unsigned i = 0; i < n; i++) {
		char id[24];
		snprintf(id, sizeof(id), "req-%06u", from + i);
		struct audit_rec a = sample(id);
		uint8_t buf[AUDIT_CONTENT_MAX];
		size_t len = audit_encode(&a, buf, sizeof(buf));
		struct store_rec r;
		assert_int_equal(store_rec_audit(&r, buf, len), 0);
		while (store_submit(s, 0, &r, 1, &seq) == -EAGAIN)
			usleep(1000);
	}
	assert_int_equal(store_wait(s, 0, seq, 30000), 0);
}

static struct audit_verify verify(struct store *s)
{
	int err = 0;
	struct store_reader *r = store_reader_new(s, &err);
	struct audit_verify v;
	assert_int_equal(audit_verify_chain(r, &v), 0);
	store_reader_free(r);
	return v;
}

static int nth_stamp(void *arg, const struct audit_entry *e)
{
	uint64_t *want = arg;
	if (--want[0] == 0) {
		want[1] = e->stamp;
		return 5;
	}
	return 0;
}

static void test_chain_and_tamper(void **state)
{
	struct scratch t;
	snprintf(t.root, sizeof(t.root), "/tmp/penstock-audit-XXXXXX");
	assert_non_null(mkdtemp(t.root));
	snprintf(t.dir, sizeof(t.dir), "%s/data", t.root);
	struct store *s = open_store(&t, 0);
	submit(s, 500, 0);
	struct audit_verify v = verify(s);
	assert_int_equal(v.checked, 500);
	assert_int_equal(v.bad_stamp, 0);
	/* the 300th record's stamp, then a query over the time range */
	int err = 0;
	struct store_reader *r = store_reader_new(s, &err);
	uint64_t want[2] = { 300, 0 }, cursor = 0;
	struct audit_filter f = { 0 };
	assert_int_equal(store_read_begin(r), 0);
	assert_int_equal(audit_query(r, &f, &cursor, 1000, nth_stamp, want), 5);
	store_read_end(r);
	store_reader_free(r);
	store_close(s);
	/* a reopened store chains on from its last record */
	s = open_store(&t, 0);
	submit(s, 10, 500);
	assert_int_equal(verify(s).checked, 510);
	store_close(s);

	/* flip one byte of record 300's content with a raw LMDB write */
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_open(env, t.dir, 0, 0640), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "audit", 0, &dbi), 0);
	uint8_t key[STORE_AUDIT_KEY_LEN];
	store_audit_key(want[1], key);
	MDB_val k = { sizeof(key), key }, val;
	assert_int_equal(mdb_get(txn, dbi, &k, &val), 0);
	uint8_t *copy = malloc(val.mv_size);
	memcpy(copy, val.mv_data, val.mv_size);
	copy[val.mv_size - 3] ^= 0x01;
	MDB_val nv = { val.mv_size, copy };
	assert_int_equal(mdb_put(txn, dbi, &k, &nv, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
	free(copy);

	struct store_options ro = { .dir = t.dir, .read_only = true };
	s = store_open(&ro, &err);
	assert_non_null(s);
	v = verify(s);
	assert_int_equal(v.bad_stamp, want[1]);
	assert_int_equal(v.checked, 299);
	store_close(s);
	nftw(t.root, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

struct stamps {
	uint64_t n, first, last;
	bool increasing;
};

static int collect_stamp(void *arg, const struct audit_entry *e)
{
	struct stamps *st = arg;
	if (st->n++ == 0)
		st->first = e->stamp;
	else if (e->stamp <= st->last)
		st->increasing = false;
	st->last = e->stamp;
	return 0;
}

static uint64_t wall_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The store reads the clock once per batch: a batch's records get that time and one
 * nanosecond more each, so every stamp lies between the submission and the commit (plus
 * the records' count) and they still only grow. */
static void test_stamps_within_commit_window(void **state)
{
	struct scratch t;
	snprintf(t.root, sizeof(t.root), "/tmp/penstock-audit-XXXXXX");
	assert_non_null(mkdtemp(t.root));
	snprintf(t.dir, sizeof(t.dir), "%s/data", t.root);
	struct store *s = open_store(&t, 0);
	uint64_t before = wall_ns();
	submit(s, 300, 0);
	uint64_t after = wall_ns();
	int err = 0;
	struct store_reader *r = store_reader_new(s, &err);
	struct stamps st = { .increasing = true };
	uint64_t cursor = 0;
	struct audit_filter f = { 0 };
	assert_int_equal(store_read_begin(r), 0);
	assert_int_equal(audit_query(r, &f, &cursor, 1000, collect_stamp, &st), 0);
	store_read_end(r);
	store_reader_free(r);
	assert_int_equal(st.n, 300);
	assert_true(st.increasing);
	assert_true(st.first >= before);
	assert_true(st.last <= after + 300);
	assert_int_equal(verify(s).bad_stamp, 0);
	store_close(s);
	nftw(t.root, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

static void test_retention_keeps_an_anchor(void **state)
{
	struct scratch t;
	snprintf(t.root, sizeof(t.root), "/tmp/penstock-audit-XXXXXX");
	assert_non_null(mkdtemp(t.root));
	snprintf(t.dir, sizeof(t.dir), "%s/data", t.root);
	struct store *s = open_store(&t, 200); /* records older than 200 ms go */
	submit(s, 1000, 0);                    /* over PRUNE_BATCH: several transactions */
	struct store_stats st;
	for (int i = 0; i < 300; i++) {        /* pruning runs on its own, within seconds */
		store_stats(s, &st);
		if (st.audit_pruned == 1000)
			break;
		usleep(20000);
	}
	assert_int_equal(st.audit_pruned, 1000);
	struct audit_verify v = verify(s);
	assert_int_equal(v.checked, 0);
	assert_int_equal(v.bad_stamp, 0);
	assert_true(v.anchor_stamp > 0);
	/* new records chain from the anchor, across a reopen too */
	store_close(s);
	s = open_store(&t, 3600 * 1000);
	submit(s, 20, 1000);
	v = verify(s);
	assert_int_equal(v.checked, 20);
	assert_int_equal(v.bad_stamp, 0);
	store_close(s);
	nftw(t.root, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_exact_bytes_and_every_cap),
		cmocka_unit_test(test_bodies_and_version_1),
		cmocka_unit_test(test_filters_and_times),
		cmocka_unit_test(test_formats),
		cmocka_unit_test(test_chain_and_tamper),
		cmocka_unit_test(test_stamps_within_commit_window),
		cmocka_unit_test(test_retention_keeps_an_anchor),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
