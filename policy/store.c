/* store.c - the LMDB store: environment and schema, the store thread's group commit,
 * outcome reporting, map growth behind a reader gate, read transactions. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/futex.h>
#include <lmdb.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "core/log.h"
#include "core/spsc.h"
#include "policy/store.h"

#define STORE_REC_MORE 0x01 /* another record of the same unit follows in the ring */
#define STORE_REC_BLOB 0x02 /* v.blob holds the value, malloc'd; the owner frees it */
#define STORE_REC_REF 0x04  /* v.blob: the caller's bytes, borrowed until store_submit() */
#define STORE_REC_STAGED 0x08 /* v.blob: in the producer's staging area (set by submit) */
#define STORE_REC_OUT (STORE_REC_BLOB | STORE_REC_REF | STORE_REC_STAGED) /* v.blob: value */

#define RING_RECORDS_DEFAULT 8192
#define COMMIT_INTERVAL_MS_DEFAULT 10
#define BATCH_RECORDS_DEFAULT 4096
#define SYNC_INTERVAL_MS_DEFAULT 1000
#define MAP_SIZE_DEFAULT ((size_t)256 << 20)
#define MAP_SIZE_MAX_DEFAULT ((size_t)64 << 30)
#define READERS_DEFAULT 126
#define OUTCOME_PER_RING_RECORD 4   /* how far back store_outcome() can still tell */
#define OUTCOME_SEQ_BITS 48         /* an outcome slot: seq << 16 | -error */
#define FAILURE_LOG_EVERY_MS 1000
#define PRUNE_BATCH 256             /* audit records one pruning transaction deletes */
#define PRUNE_EVERY_MS 1000         /* how often retention looks when nothing is due */
#define ADD_SLOTS 1024              /* a batch's pending spend sums (a power of two) */
#define ADD_FILL_MAX (ADD_SLOTS / 4 * 3) /* past this, additions go straight to the map */
#define STAGE_PER_RING_RECORD 64    /* staging bytes per ring slot: an audit record is ~150
				     * bytes in a unit of ~5 records */

static_assert(sizeof(struct store_rec) == 128, "a ring slot is two cache lines");
static_assert(sizeof(struct store_spend) == 4 * sizeof(int64_t), "ADD carries the whole counter");
static_assert(1 + 1 + 8 + STORE_ID_MAX <= STORE_KEY_MAX, "a spend key fits a record");

static const char *const db_names[STORE_DB_COUNT] = {
	[STORE_DB_META] = "meta", [STORE_DB_KEYS] = "keys", [STORE_DB_TEAMS] = "teams",
	[STORE_DB_SPEND] = "spend", [STORE_DB_AUDIT] = "audit",
};

/* The store thread's sleep, as producers see it: AWAKE needs no nudge; TIMED (waiting out
 * the commit interval) wants one only when a ring passes half full; IDLE on any record. */
enum { SLEEP_AWAKE, SLEEP_TIMED, SLEEP_IDLE };

/* Staging: borrowed record content (STORE_REC_REF) is copied at submit into a byte ring of
 * the producer's, in submission order, each piece whole (a piece that would cross the end
 * starts over at the beginning, the tail left unused). The store thread reads it in place
 * and gives the bytes back, up to where its batch's records end, once the batch is done.
 * Positions count bytes from the start, never wrapping (64 bits). */
struct producer {
	struct spsc ring;
	/* The producer thread's line. */
	alignas(SPSC_CACHE_LINE) uint64_t next_seq;
	_Atomic uint64_t submit_full;
	uint8_t *stage;
	uint64_t stage_mask;         /* size - 1, a power of two */
	uint64_t stage_tail, stage_head_seen;
	/* Written by the store thread, read by anyone. */
	alignas(SPSC_CACHE_LINE) _Atomic uint64_t done_seq;
	_Atomic uint64_t stage_head; /* staging bytes given back */
	_Atomic uint64_t *outcome;
	uint64_t outcome_mask;
	int notify_fd;
	uint64_t batch_lo, batch_hi; /* the store thread's: this batch's seqs, 0 if none */
	uint64_t stage_read;         /* the store thread's: staging taken by drained records */
};

struct store_reader {
	alignas(SPSC_CACHE_LINE) _Atomic uint32_t active; /* between gate_enter and gate_leave */
	struct store *store;
	MDB_txn *txn;   /* reset while not reading; NULL before the first read */
	bool reading;
	struct store_reader *prev, *next; /* store->readers, under readers_lock */
};

struct store_counters {
	_Atomic uint64_t commits, records, batches_failed, records_failed;
	_Atomic uint64_t map_full, map_grows, add_saturated, adds_merged, audit_pruned;
	_Atomic uint64_t commit_hist[STORE_COMMIT_BUCKETS + 1], commit_us_sum, commit_us_max;
	_Atomic uint64_t prune_us_max;
	_Atomic size_t map_size;
};

/* A spend counter a batch is adding to: read from the map at its first ADD of the batch,
 * summed in memory by every later one, written back once before the commit. */
struct add_slot {
	bool used;
	uint8_t key_len;
	uint8_t key[STORE_KEY_MAX];
	int64_t sum[4];
};

/* What a batch's transaction did, counted only if it commits. */
struct batch_tally {
	uint64_t saturated; /* additions clamped at the int64 limits */
	uint64_t merged;    /* ADDs folded into a counter the batch already held */
};

struct store {
	MDB_env *env;
	MDB_dbi dbi[STORE_DB_COUNT];
	bool read_only;
	int lock_fd;                /* flock on data_dir/store.lock: one writer process */
	enum store_durability durability;
	uint32_t commit_interval_ms, batch_records, sync_interval_ms;
	size_t map_size_max;
	char *dir;

	unsigned nproducers;
	struct producer *producers;
	size_t ring_half;

	/* The store thread's. */
	pthread_t thread;
	bool thread_started;
	struct store_rec *batch;
	size_t batch_len;
	unsigned drain_from;
	bool dirty;                 /* NONE: committed since the last mdb_env_sync */
	uint64_t last_sync_ms;
	uint64_t failure_logged_ms, failed_unlogged;
	/* The audit chain: the last committed record's stamp and hash, and the working copy
	 * a batch advances (dropped if the batch fails). */
	uint64_t chain_stamp, work_stamp;
	uint8_t chain_hash[STORE_AUDIT_HASH_LEN], work_hash[STORE_AUDIT_HASH_LEN];
	/* The batch's: its wall clock, read once (a batch commits at one moment), and the
	 * audit database's cursor, opened at its first AUDIT record: mdb_put would set one
	 * up for every record (a fifth of an append's cost). */
	uint64_t batch_clock_ns;
	MDB_cursor *audit_cur;
	uint64_t retention_ms, prune_due_ms;
	/* Spend additions of the batch being applied (open addressing, linear probing), and
	 * the slots in use in the order they were taken, to write back and clear. */
	struct add_slot *adds;
	uint16_t *adds_used;
	unsigned adds_n;

	alignas(SPSC_CACHE_LINE) _Atomic uint32_t bell; /* futex: bumped to wake the thread */
	_Atomic uint32_t sleep_state;
	_Atomic bool stop;

	/* The reader gate: a map resize waits until no read is open in this process. */
	alignas(SPSC_CACHE_LINE) _Atomic uint32_t resizing; /* futex */
	pthread_mutex_t readers_lock;
	struct store_reader *readers;

	struct store_counters c;
};

/* ---- small helpers ---- */

/* LMDB returns its own codes (negative) or a positive errno: make both negative. */
static int mdb_err(int rc)
{
	return rc > 0 ? -rc : rc;
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void futex_wait(_Atomic uint32_t *addr, uint32_t val, int64_t timeout_ms)
{
	struct timespec ts, *tsp = NULL;
	if (timeout_ms >= 0) {
		ts.tv_sec = timeout_ms / 1000;
		ts.tv_nsec = (timeout_ms % 1000) * 1000000;
		tsp = &ts;
	}
	syscall(SYS_futex, (void *)addr, FUTEX_WAIT_PRIVATE, val, tsp, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *addr, int n)
{
	syscall(SYS_futex, (void *)addr, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

static void stat_add(_Atomic uint64_t *c, uint64_t n)
{
	atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static size_t round_up(size_t n, size_t to)
{
	return (n + to - 1) / to * to;
}

const char *store_strerror(int err)
{
	switch (err) {
	case 0:
		return "success";
	case STORE_ESCHEMA:
		return "the store's schema version is not the one this build reads";
	case STORE_ENOTSTORE:
		return "data_dir holds an LMDB environment that is not a penstock store";
	}
	if (err >= MDB_KEYEXIST && err <= MDB_LAST_ERRCODE)
		return mdb_strerror(err);
	return strerror(err < 0 ? -err : err);
}

/* ---- records ---- */

static bool db_writable(unsigned db)
{
	return db > STORE_DB_META && db < STORE_DB_COUNT;
}

static int rec_key(struct store_rec *r, uint8_t op, enum store_db db, const void *key,
		   size_t key_len)
{
	if (!db_writable(db) || !key || key_len == 0 || key_len > STORE_KEY_MAX)
		return -EINVAL;
	memset(r, 0, sizeof(*r));
	r->op = op;
	r->db = (uint8_t)db;
	r->key_len = (uint8_t)key_len;
	memcpy(r->key, key, key_len);
	return 0;
}

int store_rec_put(struct store_rec *r, enum store_db db, const void *key, size_t key_len,
		  const void *val, size_t val_len)
{
	if (val_len > STORE_VAL_MAX || (val_len && !val))
		return -EINVAL;
	int rc = rec_key(r, STORE_OP_PUT, db, key, key_len);
	if (rc)
		return rc;
	r->val_len = (uint32_t)val_len;
	if (val_len <= STORE_INLINE_MAX) {
		if (val_len)
			memcpy(r->v.inline_val, val, val_len);
		return 0;
	}
	void *blob = malloc(val_len);
	if (!blob)
		return -ENOMEM;
	memcpy(blob, val, val_len);
	r->v.blob = blob;
	r->flags = STORE_REC_BLOB;
	return 0;
}

int store_rec_del(struct store_rec *r, enum store_db db, const void *key, size_t key_len)
{
	return rec_key(r, STORE_OP_DEL, db, key, key_len);
}

int store_rec_spend_add(struct store_rec *r, const struct store_spend_key *k,
			const struct store_spend *delta)
{
	uint8_t key[STORE_KEY_MAX];
	size_t len = store_spend_key_encode(k, key);
	if (len == 0 || !delta)
		return -EINVAL;
	int rc = rec_key(r, STORE_OP_ADD, STORE_DB_SPEND, key, len);
	if (rc)
		return rc;
	r->v.add[0] = delta->micro_usd;
	r->v.add[1] = delta->input_tokens;
	r->v.add[2] = delta->output_tokens;
	r->v.add[3] = delta->requests;
	return 0;
}

static const uint8_t audit_key_none = 0; /* the store chooses the key */

int store_rec_audit(struct store_rec *r, const void *content, size_t len)
{
	if (len == 0 || len > STORE_VAL_MAX - STORE_AUDIT_HASH_LEN || !content)
		return -EINVAL;
	int rc = store_rec_put(r, STORE_DB_AUDIT, &audit_key_none, 1, content, len);
	if (rc == 0)
		r->op = STORE_OP_AUDIT;
	return rc;
}

int store_rec_audit_ref(struct store_rec *r, const void *content, size_t len)
{
	if (len <= STORE_INLINE_MAX || len > STORE_REF_MAX || !content)
		return store_rec_audit(r, content, len);
	int rc = rec_key(r, STORE_OP_AUDIT, STORE_DB_AUDIT, &audit_key_none, 1);
	if (rc)
		return rc;
	r->val_len = (uint32_t)len;
	r->v.blob = (void *)content; /* read, never written or freed */
	r->flags = STORE_REC_REF;
	return 0;
}

void store_rec_release(struct store_rec *r)
{
	if (!(r->flags & STORE_REC_BLOB))
		return;
	free(r->v.blob);
	r->v.blob = NULL;
	r->flags &= (uint8_t)~STORE_REC_BLOB;
}

static const void *rec_val(const struct store_rec *r)
{
	return (r->flags & STORE_REC_OUT) ? r->v.blob : r->v.inline_val;
}

static bool rec_valid(const struct store_rec *r)
{
	if (!db_writable(r->db) || r->key_len == 0 || r->key_len > STORE_KEY_MAX)
		return false;
	/* the audit database is the chain's: only the store thread keys and links it */
	if ((r->db == STORE_DB_AUDIT) != (r->op == STORE_OP_AUDIT))
		return false;
	/* staging is the store's to set; only audit content is borrowed, and it is bounded */
	if ((r->flags & STORE_REC_STAGED) ||
	    ((r->flags & STORE_REC_REF) &&
	     (r->op != STORE_OP_AUDIT || (r->flags & STORE_REC_BLOB) || r->val_len > STORE_REF_MAX)))
		return false;
	bool blob = r->flags & (STORE_REC_BLOB | STORE_REC_REF);
	switch (r->op) {
	case STORE_OP_PUT:
		if (r->val_len > STORE_VAL_MAX || blob != (r->val_len > STORE_INLINE_MAX))
			return false;
		return !blob || r->v.blob;
	case STORE_OP_DEL:
		return !blob && r->val_len == 0;
	case STORE_OP_ADD:
		return !blob && r->db == STORE_DB_SPEND;
	case STORE_OP_AUDIT:
		return r->db == STORE_DB_AUDIT && r->val_len > 0 &&
		       r->val_len <= STORE_VAL_MAX - STORE_AUDIT_HASH_LEN &&
		       blob == (r->val_len > STORE_INLINE_MAX) && (!blob || r->v.blob);
	}
	return false;
}

static void put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

static uint64_t get_be64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

void store_audit_key(uint64_t stamp, uint8_t out[STORE_AUDIT_KEY_LEN]) { put_be64(out, stamp); }
uint64_t store_audit_stamp(const void *key) { return get_be64(key); }

void store_audit_hash(const uint8_t prev[STORE_AUDIT_HASH_LEN], uint64_t stamp,
		      const void *content, size_t len, uint8_t out[STORE_AUDIT_HASH_LEN])
{
	uint8_t key[STORE_AUDIT_KEY_LEN];
	put_be64(key, stamp);
	SHA256_CTX c;
	SHA256_Init(&c);
	SHA256_Update(&c, prev, STORE_AUDIT_HASH_LEN);
	SHA256_Update(&c, key, sizeof(key));
	SHA256_Update(&c, content, len);
	SHA256_Final(out, &c);
}

size_t store_spend_key_encode(const struct store_spend_key *k, uint8_t out[STORE_KEY_MAX])
{
	if (!k || k->scope < STORE_SCOPE_KEY || k->scope > STORE_SCOPE_LEDGER_MODEL)
		return 0;
	if (k->period > STORE_PERIOD_MONTH || k->id_len == 0 || k->id_len > STORE_ID_MAX)
		return 0;
	if (k->period == STORE_PERIOD_TOTAL && k->start != 0)
		return 0;
	out[0] = k->scope;
	out[1] = k->period;
	put_be64(out + 2, k->start);
	memcpy(out + 10, k->id, k->id_len);
	return 10 + (size_t)k->id_len;
}

int store_spend_key_decode(const void *key, size_t len, struct store_spend_key *k)
{
	const uint8_t *p = key;
	if (len < 11 || len > 10 + STORE_ID_MAX)
		return -EINVAL;
	memset(k, 0, sizeof(*k));
	k->scope = p[0];
	k->period = p[1];
	k->start = get_be64(p + 2);
	k->id_len = (uint8_t)(len - 10);
	memcpy(k->id, p + 10, k->id_len);
	return 0;
}

/* ---- the reader gate and map resizing ---- */

/* LMDB remaps on mdb_env_set_mapsize (munmap, then mmap): a read in another thread of
 * this process would touch unmapped memory. Readers raise their own flag, then look at
 * resizing; the resizer raises resizing, then waits for every flag to drop (Dekker with
 * seq_cst on both sides), so a read and a resize never overlap. Reads are short and a
 * resize is rare: readers never wait in the normal case. */
static void gate_enter(struct store *s, struct store_reader *r)
{
	for (;;) {
		atomic_store_explicit(&r->active, 1, memory_order_seq_cst);
		if (!atomic_load_explicit(&s->resizing, memory_order_seq_cst))
			return;
		atomic_store_explicit(&r->active, 0, memory_order_seq_cst);
		while (atomic_load_explicit(&s->resizing, memory_order_acquire))
			futex_wait(&s->resizing, 1, -1);
	}
}

static void gate_leave(struct store_reader *r)
{
	atomic_store_explicit(&r->active, 0, memory_order_release);
}

static size_t env_map_size(struct store *s)
{
	MDB_envinfo info;
	if (mdb_env_info(s->env, &info) != 0)
		return 0;
	return info.me_mapsize;
}

/* size 0 adopts the size another process grew the map to. No transaction of this thread
 * may be open. */
static int store_remap(struct store *s, size_t size)
{
	pthread_mutex_lock(&s->readers_lock);
	atomic_store_explicit(&s->resizing, 1, memory_order_seq_cst);
	for (struct store_reader *r = s->readers; r; r = r->next)
		while (atomic_load_explicit(&r->active, memory_order_seq_cst))
			sched_yield();
	int rc = mdb_err(mdb_env_set_mapsize(s->env, size));
	atomic_store_explicit(&s->c.map_size, env_map_size(s), memory_order_relaxed);
	atomic_store_explicit(&s->resizing, 0, memory_order_seq_cst);
	futex_wake(&s->resizing, INT_MAX);
	pthread_mutex_unlock(&s->readers_lock);
	return rc;
}

/* Double the map, up to map_size_max. -ENOSPC at the limit. */
static int grow_map(struct store *s)
{
	size_t cur = atomic_load_explicit(&s->c.map_size, memory_order_relaxed);
	if (cur >= s->map_size_max)
		return -ENOSPC;
	size_t next = cur > s->map_size_max / 2 ? s->map_size_max : cur * 2;
	next = round_up(next, (size_t)sysconf(_SC_PAGESIZE));
	int rc = store_remap(s, next);
	if (rc) {
		log_error("store: growing the map from %zu to %zu bytes failed: %s", cur, next,
			  store_strerror(rc));
		return rc;
	}
	stat_add(&s->c.map_grows, 1);
	log_info("store: map grown from %zu to %zu KiB (limit %zu KiB)", cur >> 10,
		 atomic_load_explicit(&s->c.map_size, memory_order_relaxed) >> 10,
		 s->map_size_max >> 10);
	return 0;
}

/* ---- the store thread ---- */

static void ring_bell(struct store *s)
{
	atomic_fetch_add_explicit(&s->bell, 1, memory_order_seq_cst);
	futex_wake(&s->bell, 1);
}

/* The staging bytes of a drained record, in the order the producer placed them: the same
 * walk, so a piece that did not fit before the end is found at the beginning. */
static void stage_take(struct producer *p, const struct store_rec *r)
{
	uint64_t size = p->stage_mask + 1, at = p->stage_read & p->stage_mask;
	if (at + r->val_len > size)
		p->stage_read += size - at;
	assert(r->v.blob == p->stage + (p->stage_read & p->stage_mask));
	p->stage_read += r->val_len;
}

/* Take what the rings hold, up to batch_records, never splitting a unit: a unit is
 * published whole (one release store), so its tail is already there to take. */
static size_t drain(struct store *s)
{
	s->batch_len = 0;
	for (unsigned i = 0; i < s->nproducers; i++) {
		struct producer *p = &s->producers[(s->drain_from + i) % s->nproducers];
		p->batch_lo = p->batch_hi = 0;
		if (s->batch_len >= s->batch_records)
			continue;
		struct store_rec *at = s->batch + s->batch_len;
		size_t got = spsc_pop_n(&p->ring, at, s->batch_records - s->batch_len);
		while (got > 0 && (at[got - 1].flags & STORE_REC_MORE)) {
			bool ok = spsc_pop(&p->ring, &at[got]);
			assert(ok && "a unit is published whole");
			if (!ok)
				break;
			got++;
		}
		if (got == 0)
			continue;
		for (size_t k = 0; k < got; k++)
			if (at[k].flags & STORE_REC_STAGED)
				stage_take(p, &at[k]);
		p->batch_lo = at[0].seq;
		p->batch_hi = at[got - 1].seq;
		assert(p->batch_hi - p->batch_lo + 1 == got);
		s->batch_len += got;
	}
	s->drain_from++; /* no producer is always first in line when batches are full */
	return s->batch_len;
}

/* The counter's value in the map, zero if it was never written. */
static int add_load(MDB_txn *txn, MDB_dbi dbi, MDB_val *k, int64_t sum[4])
{
	MDB_val v;
	memset(sum, 0, 4 * sizeof(sum[0]));
	int rc = mdb_get(txn, dbi, k, &v);
	if (rc == 0 && v.mv_size == 4 * sizeof(sum[0]))
		memcpy(sum, v.mv_data, 4 * sizeof(sum[0]));
	else if (rc == 0)
		log_error("store: spend counter of %zu bytes (want %zu): restarted from zero",
			  v.mv_size, 4 * sizeof(sum[0]));
	else if (rc != MDB_NOTFOUND)
		return rc;
	return 0;
}

/* One record's deltas, each clamped on its own as it comes: the order of the additions
 * decides a clamped value, so summing in memory gives what adding in the map would. */
static void add_deltas(int64_t sum[4], const struct store_rec *r, struct batch_tally *t)
{
	for (int i = 0; i < 4; i++) {
		if (__builtin_add_overflow(sum[i], r->v.add[i], &sum[i])) {
			sum[i] = r->v.add[i] > 0 ? INT64_MAX : INT64_MIN;
			t->saturated++;
		}
	}
}

static int add_store(MDB_txn *txn, MDB_dbi dbi, MDB_val *k, int64_t sum[4])
{
	MDB_val v = { .mv_size = 4 * sizeof(sum[0]), .mv_data = sum };
	return mdb_put(txn, dbi, k, &v, 0);
}

/* Spend keys are 11 to 74 bytes that share their first ten (scope, period, start): eight
 * bytes a step, each mixed by a multiply, then folded. A byte at a time (FNV-1a) was the
 * store thread's hottest loop of its own. */
static uint32_t add_hash(const uint8_t *key, size_t len)
{
	uint64_t h = len * 0x9e3779b97f4a7c15u, w;
	size_t i = 0;
	for (; i + 8 <= len; i += 8) {
		memcpy(&w, key + i, 8);
		h = (h ^ w) * 0xbf58476d1ce4e5b9u;
		h ^= h >> 31;
	}
	if (i < len) {
		for (w = 0; i < len; i++) /* not a memcpy into w: its stores would stall the load */
			w = w << 8 | key[i];
		h = (h ^ w) * 0xbf58476d1ce4e5b9u;
	}
	h ^= h >> 29;
	return (uint32_t)(h ^ h >> 32);
}

static void adds_clear(struct store *s)
{
	for (unsigned i = 0; i < s->adds_n; i++)
		s->adds[s->adds_used[i]].used = false;
	s->adds_n = 0;
}

/* Every pending sum into the map, in the order the batch first touched them; then the
 * table is empty for what follows (the rest of the batch, or the next one). */
static int adds_flush(struct store *s, MDB_txn *txn)
{
	int rc = 0;
	for (unsigned i = 0; i < s->adds_n && rc == 0; i++) {
		struct add_slot *a = &s->adds[s->adds_used[i]];
		MDB_val k = { .mv_size = a->key_len, .mv_data = a->key };
		rc = add_store(txn, s->dbi[STORE_DB_SPEND], &k, a->sum);
	}
	adds_clear(s);
	return rc;
}

/* An ADD: into the batch's table (one map read per counter per batch, one write at the
 * end), or straight into the map when the table is full. */
static int apply_add(struct store *s, MDB_txn *txn, MDB_val *k, const struct store_rec *r,
		     struct batch_tally *t)
{
	uint32_t i = add_hash(r->key, r->key_len) & (ADD_SLOTS - 1);
	for (;; i = (i + 1) & (ADD_SLOTS - 1)) { /* ends: the table is never full */
		struct add_slot *a = &s->adds[i];
		if (!a->used)
			break;
		if (a->key_len == r->key_len && memcmp(a->key, r->key, r->key_len) == 0) {
			add_deltas(a->sum, r, t);
			t->merged++;
			return 0;
		}
	}
	MDB_dbi dbi = s->dbi[STORE_DB_SPEND];
	int64_t direct[4];
	if (s->adds_n >= ADD_FILL_MAX) {
		int rc = add_load(txn, dbi, k, direct);
		if (rc)
			return rc;
		add_deltas(direct, r, t);
		return add_store(txn, dbi, k, direct);
	}
	struct add_slot *a = &s->adds[i];
	int rc = add_load(txn, dbi, k, a->sum);
	if (rc)
		return rc;
	add_deltas(a->sum, r, t);
	a->used = true;
	a->key_len = r->key_len;
	memcpy(a->key, r->key, r->key_len);
	s->adds_used[s->adds_n++] = (uint16_t)i;
	return 0;
}

static uint64_t realtime_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The next link of the chain: a stamp after the last one (the batch's wall clock, or one
 * past the last stamp: records of a batch, or a clock that went back), written with its
 * hash straight into the map. */
static int apply_audit(struct store *s, MDB_txn *txn, const struct store_rec *r)
{
	uint64_t stamp = s->batch_clock_ns;
	if (stamp <= s->work_stamp)
		stamp = s->work_stamp + 1;
	if (!s->audit_cur) {
		int rc = mdb_cursor_open(txn, s->dbi[STORE_DB_AUDIT], &s->audit_cur);
		if (rc) {
			s->audit_cur = NULL;
			return rc;
		}
	}
	uint8_t key[STORE_AUDIT_KEY_LEN];
	put_be64(key, stamp);
	MDB_val k = { .mv_size = sizeof(key), .mv_data = key };
	MDB_val v = { .mv_size = STORE_AUDIT_HASH_LEN + r->val_len };
	int rc = mdb_cursor_put(s->audit_cur, &k, &v, MDB_APPEND | MDB_RESERVE);
	if (rc)
		return rc;
	uint8_t *out = v.mv_data;
	store_audit_hash(s->work_hash, stamp, rec_val(r), r->val_len, out);
	memcpy(out + STORE_AUDIT_HASH_LEN, rec_val(r), r->val_len);
	memcpy(s->work_hash, out, STORE_AUDIT_HASH_LEN);
	s->work_stamp = stamp;
	return 0;
}

static int apply_rec(struct store *s, MDB_txn *txn, const struct store_rec *r,
		     struct batch_tally *t)
{
	MDB_val k = { .mv_size = r->key_len, .mv_data = (void *)r->key };
	MDB_dbi dbi = s->dbi[r->db];
	/* A PUT or DEL of a spend record sees, and is seen by, the additions around it in
	 * the order they came. */
	if (r->db == STORE_DB_SPEND && r->op != STORE_OP_ADD && s->adds_n) {
		int rc = adds_flush(s, txn);
		if (rc)
			return rc;
	}
	switch (r->op) {
	case STORE_OP_PUT: {
		MDB_val v = { .mv_size = r->val_len, .mv_data = (void *)rec_val(r) };
		return mdb_put(txn, dbi, &k, &v, 0);
	}
	case STORE_OP_DEL: {
		int rc = mdb_del(txn, dbi, &k, NULL);
		return rc == MDB_NOTFOUND ? 0 : rc;
	}
	case STORE_OP_ADD:
		return apply_add(s, txn, &k, r, t);
	case STORE_OP_AUDIT:
		return apply_audit(s, txn, r);
	}
	return EINVAL;
}

/* The whole batch in one write transaction: the summed additions are written inside it,
 * so they commit with the audit records of the same units or not at all. */
static int apply_batch(struct store *s, struct batch_tally *t)
{
	MDB_txn *txn;
	int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
	if (rc)
		return mdb_err(rc);
	s->work_stamp = s->chain_stamp;
	memcpy(s->work_hash, s->chain_hash, STORE_AUDIT_HASH_LEN);
	s->batch_clock_ns = realtime_ns();
	for (size_t i = 0; i < s->batch_len && rc == 0; i++)
		rc = apply_rec(s, txn, &s->batch[i], t);
	if (s->audit_cur)
		mdb_cursor_close(s->audit_cur); /* before the txn ends: then it is freed */
	s->audit_cur = NULL;
	if (rc == 0)
		rc = adds_flush(s, txn);
	adds_clear(s);
	if (rc) {
		mdb_txn_abort(txn);
		return mdb_err(rc);
	}
	return mdb_err(mdb_txn_commit(txn)); /* frees txn either way */
}

/* The operator's signal. A failing disk fails every batch, so the log gets at most one
 * line a second, with the records lost since the last one. */
static void report_failure(struct store *s, int rc)
{
	stat_add(&s->c.batches_failed, 1);
	stat_add(&s->c.records_failed, s->batch_len);
	if (rc == MDB_MAP_FULL)
		stat_add(&s->c.map_full, 1);
	s->failed_unlogged += s->batch_len;
	uint64_t now = now_ms();
	if (s->failure_logged_ms && now - s->failure_logged_ms < FAILURE_LOG_EVERY_MS)
		return;
	if (rc == MDB_MAP_FULL)
		log_error("store: map full at %zu KiB (map_size_max %zu KiB): %" PRIu64 " records "
			  "failed; reads go on; raise map_size_max or free disk space",
			  atomic_load_explicit(&s->c.map_size, memory_order_relaxed) >> 10,
			  s->map_size_max >> 10, s->failed_unlogged);
	else
		log_error("store: %" PRIu64 " records failed to commit: %s; reads go on",
			  s->failed_unlogged, store_strerror(rc));
	s->failure_logged_ms = now;
	s->failed_unlogged = 0;
}

/* Outcomes first, then done_seq (release), then the eventfd: whoever sees either of the
 * last two sees the outcomes. */
static void publish(struct store *s, int rc)
{
	assert(rc <= 0 && -rc < 0x10000);
	uint64_t code = (uint64_t)(uint16_t)-rc;
	for (unsigned i = 0; i < s->nproducers; i++) {
		struct producer *p = &s->producers[i];
		if (p->batch_hi == 0)
			continue;
		for (uint64_t seq = p->batch_lo; seq <= p->batch_hi; seq++)
			atomic_store_explicit(&p->outcome[seq & p->outcome_mask], seq << 16 | code,
					      memory_order_release);
		atomic_store_explicit(&p->done_seq, p->batch_hi, memory_order_release);
		uint64_t one = 1;
		if (write(p->notify_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
			log_error("store: eventfd write: %s", strerror(errno));
	}
}

static uint64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

const uint32_t store_commit_bucket_us[STORE_COMMIT_BUCKETS] = {
	100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1000000,
};

/* Only the store thread writes these: a plain load and store keeps the maximum. */
static void stat_max(_Atomic uint64_t *c, uint64_t v)
{
	if (v > atomic_load_explicit(c, memory_order_relaxed))
		atomic_store_explicit(c, v, memory_order_relaxed);
}

static void commit_observe(struct store *s, uint64_t us)
{
	unsigned b = 0;
	while (b < STORE_COMMIT_BUCKETS && us > store_commit_bucket_us[b])
		b++;
	stat_add(&s->c.commit_hist[b], 1);
	stat_add(&s->c.commit_us_sum, us);
	stat_max(&s->c.commit_us_max, us);
}

static void commit_batch(struct store *s)
{
	struct batch_tally t;
	int rc;
	uint64_t began = now_us();
	for (;;) {
		t = (struct batch_tally){ 0 };
		rc = apply_batch(s, &t);
		/* No transaction is open here: the one moment LMDB allows a resize. */
		if (rc == MDB_MAP_FULL && grow_map(s) == 0)
			continue;
		if (rc == MDB_MAP_RESIZED && store_remap(s, 0) == 0)
			continue;
		break;
	}
	if (rc == 0) {
		s->chain_stamp = s->work_stamp; /* the chain moves only with a commit */
		memcpy(s->chain_hash, s->work_hash, STORE_AUDIT_HASH_LEN);
		stat_add(&s->c.commits, 1);
		stat_add(&s->c.records, s->batch_len);
		stat_add(&s->c.add_saturated, t.saturated);
		stat_add(&s->c.adds_merged, t.merged);
		s->dirty = true;
		commit_observe(s, now_us() - began);
	} else {
		report_failure(s, rc);
	}
	publish(s, rc);
	for (size_t i = 0; i < s->batch_len; i++)
		store_rec_release(&s->batch[i]);
	for (unsigned i = 0; i < s->nproducers; i++) /* the batch's staged content is read */
		atomic_store_explicit(&s->producers[i].stage_head, s->producers[i].stage_read,
				      memory_order_release);
}

static void sync_if_due(struct store *s, uint64_t now)
{
	if (s->durability != STORE_DURABILITY_NONE || !s->dirty)
		return;
	if (now - s->last_sync_ms < s->sync_interval_ms)
		return;
	int rc = mdb_err(mdb_env_sync(s->env, 1));
	if (rc)
		log_error("store: sync: %s", store_strerror(rc));
	s->dirty = false;
	s->last_sync_ms = now;
}

/* Retention: delete the oldest audit records past the limit, PRUNE_BATCH per transaction
 * so that a commit never waits long behind a prune, and keep the last one deleted as the
 * chain's anchor. Runs between batches on the store thread. */
static void prune_if_due(struct store *s, uint64_t now)
{
	if (!s->retention_ms || now < s->prune_due_ms)
		return;
	uint64_t cutoff = realtime_ns() - s->retention_ms * 1000000u;
	uint64_t began = now_us();
	MDB_txn *txn = NULL;
	MDB_cursor *cur = NULL;
	MDB_val k, v;
	uint8_t anchor[STORE_AUDIT_KEY_LEN + STORE_AUDIT_HASH_LEN];
	unsigned n = 0;
	int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
	if (rc)
		txn = NULL;
	if (rc == 0)
		rc = mdb_cursor_open(txn, s->dbi[STORE_DB_AUDIT], &cur);
	while (rc == 0 && n < PRUNE_BATCH) {
		rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
		if (rc || k.mv_size != STORE_AUDIT_KEY_LEN || get_be64(k.mv_data) >= cutoff ||
		    v.mv_size < STORE_AUDIT_HASH_LEN)
			break;
		memcpy(anchor, k.mv_data, STORE_AUDIT_KEY_LEN);
		memcpy(anchor + STORE_AUDIT_KEY_LEN, v.mv_data, STORE_AUDIT_HASH_LEN);
		rc = mdb_cursor_del(cur, 0);
		if (rc == 0)
			n++;
	}
	if (rc == MDB_NOTFOUND)
		rc = 0;
	if (cur)
		mdb_cursor_close(cur);
	if (rc == 0 && n) {
		MDB_val ak = { .mv_size = strlen(STORE_AUDIT_ANCHOR), .mv_data = STORE_AUDIT_ANCHOR };
		MDB_val av = { .mv_size = sizeof(anchor), .mv_data = anchor };
		rc = mdb_put(txn, s->dbi[STORE_DB_META], &ak, &av, 0);
	}
	if (txn && rc == 0 && n)
		rc = mdb_txn_commit(txn);
	else if (txn)
		mdb_txn_abort(txn);
	if (rc) {
		log_error("store: pruning audit records: %s", store_strerror(mdb_err(rc)));
		n = 0;
	} else if (n) {
		stat_add(&s->c.audit_pruned, n);
		stat_max(&s->c.prune_us_max, now_us() - began);
		s->dirty = true;
	}
	s->prune_due_ms = n == PRUNE_BATCH ? now : now + PRUNE_EVERY_MS;
}

static bool work_waiting(struct store *s, uint32_t state)
{
	for (unsigned i = 0; i < s->nproducers; i++) {
		size_t n = spsc_count(&s->producers[i].ring);
		if (state == SLEEP_IDLE ? n > 0 : n > s->ring_half)
			return true;
	}
	return false;
}

/* Sleep until timeout_ms (-1: none) or a nudge. The state goes up before the rings are
 * looked at, and producers look at the state after they publish (both with a full
 * fence): either the producer sees us asleep and rings, or we see its record. */
static void store_sleep(struct store *s, uint32_t state, int64_t timeout_ms)
{
	if (timeout_ms == 0)
		return;
	uint32_t bell = atomic_load_explicit(&s->bell, memory_order_acquire);
	atomic_store_explicit(&s->sleep_state, state, memory_order_seq_cst);
	atomic_thread_fence(memory_order_seq_cst);
	if (!atomic_load_explicit(&s->stop, memory_order_acquire) && !work_waiting(s, state))
		futex_wait(&s->bell, bell, timeout_ms);
	atomic_store_explicit(&s->sleep_state, SLEEP_AWAKE, memory_order_relaxed);
}

static int64_t idle_timeout(struct store *s, uint64_t now)
{
	uint64_t due = UINT64_MAX;
	if (s->durability == STORE_DURABILITY_NONE && s->dirty)
		due = s->last_sync_ms + s->sync_interval_ms;
	if (s->retention_ms && s->prune_due_ms < due)
		due = s->prune_due_ms;
	if (due == UINT64_MAX)
		return -1;
	return due > now ? (int64_t)(due - now) : 0;
}

static void *store_main(void *arg)
{
	struct store *s = arg;
	s->last_sync_ms = now_ms();
	for (;;) {
		bool stopping = atomic_load_explicit(&s->stop, memory_order_acquire);
		uint64_t started = now_ms();
		size_t n = drain(s);
		if (n > 0)
			commit_batch(s);
		else if (stopping)
			break;
		uint64_t now = now_ms();
		prune_if_due(s, now);
		sync_if_due(s, now);
		if (n >= s->batch_records || stopping)
			continue;
		if (n > 0 && s->durability == STORE_DURABILITY_STRICT)
			continue; /* commit as soon as records come: waiters are waiting */
		if (n > 0) {
			uint64_t due = started + s->commit_interval_ms;
			store_sleep(s, SLEEP_TIMED, due > now ? (int64_t)(due - now) : 0);
		} else {
			store_sleep(s, SLEEP_IDLE, idle_timeout(s, now));
		}
	}
	return NULL;
}

/* ---- producers ---- */

static void nudge(struct store *s, struct producer *p)
{
	atomic_thread_fence(memory_order_seq_cst); /* the tail store before the state load */
	uint32_t state = atomic_load_explicit(&s->sleep_state, memory_order_relaxed);
	if (state == SLEEP_AWAKE)
		return;
	/* The cheap bound first; it overstates, so confirm before waking anyone. */
	if (state == SLEEP_TIMED && s->durability != STORE_DURABILITY_STRICT &&
	    (spsc_fill_bound(&p->ring) <= s->ring_half ||
	     spsc_fill_refresh(&p->ring) <= s->ring_half))
		return;
	ring_bell(s);
}

/* Room for len bytes of staging, whole: NULL when the store thread has not given back
 * enough yet. */
static uint8_t *stage_alloc(struct producer *p, uint32_t len)
{
	uint64_t size = p->stage_mask + 1, at = p->stage_tail & p->stage_mask;
	uint64_t skip = at + len > size ? size - at : 0;
	if (p->stage_tail + skip + len - p->stage_head_seen > size) {
		p->stage_head_seen = atomic_load_explicit(&p->stage_head, memory_order_acquire);
		if (p->stage_tail + skip + len - p->stage_head_seen > size)
			return NULL;
	}
	p->stage_tail += skip + len;
	return p->stage + (skip ? 0 : at);
}

/* Borrowed content into staging (true), or nothing staged and recs as they were (false). */
static bool stage_unit(struct producer *p, struct store_rec *recs, unsigned n,
		       const void *borrowed[])
{
	uint64_t tail = p->stage_tail;
	for (unsigned i = 0; i < n; i++) {
		borrowed[i] = NULL;
		if (!(recs[i].flags & STORE_REC_REF))
			continue;
		uint8_t *at = stage_alloc(p, recs[i].val_len);
		if (!at) {
			p->stage_tail = tail;
			for (unsigned k = 0; k < i; k++)
				if (borrowed[k]) {
					recs[k].v.blob = (void *)borrowed[k];
					recs[k].flags = STORE_REC_REF;
				}
			return false;
		}
		borrowed[i] = recs[i].v.blob;
		memcpy(at, borrowed[i], recs[i].val_len);
		recs[i].v.blob = at;
		recs[i].flags = STORE_REC_STAGED;
	}
	return true;
}

int store_submit(struct store *s, unsigned producer, struct store_rec *recs, unsigned n,
		 uint64_t *last_seq)
{
	if (s->read_only)
		return -EROFS;
	if (producer >= s->nproducers || n == 0 || n > STORE_UNIT_MAX || !recs)
		return -EINVAL;
	for (unsigned i = 0; i < n; i++)
		if (!rec_valid(&recs[i]))
			return -EINVAL;
	struct producer *p = &s->producers[producer];
	uint64_t seq = p->next_seq, stage_tail = p->stage_tail;
	assert(seq + n < (uint64_t)1 << OUTCOME_SEQ_BITS);
	const void *borrowed[STORE_UNIT_MAX];
	if (!stage_unit(p, recs, n, borrowed)) {
		stat_add(&p->submit_full, 1);
		return -EAGAIN;
	}
	for (unsigned i = 0; i < n; i++) {
		recs[i].seq = seq + i;
		recs[i].flags = (uint8_t)((recs[i].flags & (STORE_REC_BLOB | STORE_REC_STAGED)) |
					  (i + 1 < n ? STORE_REC_MORE : 0));
	}
	bool queued = spsc_push_n(&p->ring, recs, n);
	for (unsigned i = 0; i < n; i++) { /* the caller's records borrow their content again */
		recs[i].flags &= (uint8_t)~STORE_REC_MORE;
		if (borrowed[i]) {
			recs[i].v.blob = (void *)borrowed[i];
			recs[i].flags = STORE_REC_REF;
		}
	}
	if (!queued) {
		p->stage_tail = stage_tail;
		stat_add(&p->submit_full, 1);
		return -EAGAIN;
	}
	p->next_seq = seq + n;
	for (unsigned i = 0; i < n; i++) { /* the blobs are the store's now */
		if (recs[i].flags & STORE_REC_BLOB) {
			recs[i].flags &= (uint8_t)~STORE_REC_BLOB;
			recs[i].v.blob = NULL;
		}
	}
	if (last_seq)
		*last_seq = seq + n - 1;
	nudge(s, p);
	return 0;
}

int store_outcome(struct store *s, unsigned producer, uint64_t seq)
{
	if (producer >= s->nproducers || seq == 0 || seq >= (uint64_t)1 << OUTCOME_SEQ_BITS)
		return -EINVAL;
	struct producer *p = &s->producers[producer];
	uint64_t v = atomic_load_explicit(&p->outcome[seq & p->outcome_mask],
					  memory_order_acquire);
	uint64_t tag = v >> 16;
	if (tag == seq)
		return -(int)(v & 0xffff);
	return tag < seq ? -EINPROGRESS : -ESTALE;
}

uint64_t store_done_seq(struct store *s, unsigned producer)
{
	if (producer >= s->nproducers)
		return 0;
	return atomic_load_explicit(&s->producers[producer].done_seq, memory_order_acquire);
}

int store_notify_fd(struct store *s, unsigned producer)
{
	return producer < s->nproducers ? s->producers[producer].notify_fd : -1;
}

int store_wait(struct store *s, unsigned producer, uint64_t seq, int timeout_ms)
{
	uint64_t deadline = timeout_ms >= 0 ? now_ms() + (uint64_t)timeout_ms : UINT64_MAX;
	for (;;) {
		int rc = store_outcome(s, producer, seq);
		if (rc != -EINPROGRESS)
			return rc;
		int wait_ms = -1;
		if (timeout_ms >= 0) {
			uint64_t now = now_ms();
			if (now >= deadline)
				return -ETIMEDOUT;
			wait_ms = (int)(deadline - now);
		}
		struct pollfd pfd = { .fd = s->producers[producer].notify_fd, .events = POLLIN };
		if (poll(&pfd, 1, wait_ms) > 0) {
			uint64_t v;
			if (read(pfd.fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
				return -errno;
		}
	}
}

/* ---- readers ---- */

struct store_reader *store_reader_new(struct store *s, int *err)
{
	struct store_reader *r = aligned_alloc(SPSC_CACHE_LINE,
					       round_up(sizeof(*r), SPSC_CACHE_LINE));
	if (!r) {
		*err = -ENOMEM;
		return NULL;
	}
	memset(r, 0, sizeof(*r));
	atomic_init(&r->active, 0);
	r->store = s;
	pthread_mutex_lock(&s->readers_lock);
	r->next = s->readers;
	if (s->readers)
		s->readers->prev = r;
	s->readers = r;
	pthread_mutex_unlock(&s->readers_lock);
	return r;
}

void store_reader_free(struct store_reader *r)
{
	if (!r)
		return;
	struct store *s = r->store;
	if (r->reading)
		store_read_end(r);
	pthread_mutex_lock(&s->readers_lock);
	if (r->prev)
		r->prev->next = r->next;
	else
		s->readers = r->next;
	if (r->next)
		r->next->prev = r->prev;
	pthread_mutex_unlock(&s->readers_lock);
	if (r->txn)
		mdb_txn_abort(r->txn); /* a reset txn: gives its reader slot back */
	free(r);
}

int store_read_begin(struct store_reader *r)
{
	struct store *s = r->store;
	assert(!r->reading);
	for (int attempt = 0;; attempt++) {
		gate_enter(s, r);
		int rc;
		if (r->txn) {
			rc = mdb_txn_renew(r->txn);
		} else {
			MDB_txn *txn = NULL;
			rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
			if (rc == 0)
				r->txn = txn;
		}
		if (rc == 0) {
			r->reading = true;
			return 0;
		}
		gate_leave(r);
		/* Another process grew the map past ours (penstockctl while the gateway runs). */
		if (rc == MDB_MAP_RESIZED && attempt < 3 && store_remap(s, 0) == 0)
			continue;
		return mdb_err(rc);
	}
}

void store_read_end(struct store_reader *r)
{
	assert(r->reading);
	if (!r->reading)
		return;
	mdb_txn_reset(r->txn);
	r->reading = false;
	gate_leave(r);
}

int store_get(struct store_reader *r, enum store_db db, const void *key, size_t key_len,
	      struct store_val *val)
{
	if (!r->reading || (unsigned)db >= STORE_DB_COUNT || key_len == 0 || key_len > 511)
		return -EINVAL;
	MDB_val k = { .mv_size = key_len, .mv_data = (void *)key }, v;
	int rc = mdb_get(r->txn, r->store->dbi[db], &k, &v);
	if (rc == MDB_NOTFOUND)
		return -ENOENT;
	if (rc)
		return mdb_err(rc);
	val->p = v.mv_data;
	val->len = v.mv_size;
	return 0;
}

int store_spend_get(struct store_reader *r, const struct store_spend_key *k,
		    struct store_spend *out)
{
	uint8_t key[STORE_KEY_MAX];
	size_t len = store_spend_key_encode(k, key);
	if (len == 0)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	struct store_val v;
	int rc = store_get(r, STORE_DB_SPEND, key, len, &v);
	if (rc == -ENOENT)
		return 0;
	if (rc)
		return rc;
	if (v.len != sizeof(*out))
		return -EBADMSG;
	memcpy(out, v.p, sizeof(*out));
	return 0;
}

int store_scan_from(struct store_reader *r, enum store_db db, const void *from, size_t from_len,
		    store_scan_fn fn, void *arg)
{
	if (!r->reading || (unsigned)db >= STORE_DB_COUNT || from_len > 511)
		return -EINVAL;
	MDB_cursor *cur;
	int rc = mdb_cursor_open(r->txn, r->store->dbi[db], &cur);
	if (rc)
		return mdb_err(rc);
	MDB_val k = { .mv_size = from_len, .mv_data = (void *)from }, v;
	rc = mdb_cursor_get(cur, &k, &v, from_len ? MDB_SET_RANGE : MDB_FIRST);
	int out = 0;
	while (rc == 0 && !(out = fn(arg, k.mv_data, k.mv_size, v.mv_data, v.mv_size)))
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	mdb_cursor_close(cur);
	if (out)
		return out;
	return rc == 0 || rc == MDB_NOTFOUND ? 0 : mdb_err(rc);
}

int store_audit_anchor(struct store_reader *r, uint64_t *stamp,
		       uint8_t hash[STORE_AUDIT_HASH_LEN])
{
	struct store_val v;
	*stamp = 0;
	memset(hash, 0, STORE_AUDIT_HASH_LEN);
	int rc = store_get(r, STORE_DB_META, STORE_AUDIT_ANCHOR, strlen(STORE_AUDIT_ANCHOR), &v);
	if (rc == -ENOENT)
		return 0;
	if (rc)
		return rc;
	if (v.len != STORE_AUDIT_KEY_LEN + STORE_AUDIT_HASH_LEN)
		return -EBADMSG;
	*stamp = get_be64(v.p);
	memcpy(hash, (const uint8_t *)v.p + STORE_AUDIT_KEY_LEN, STORE_AUDIT_HASH_LEN);
	return 0;
}

int store_scan(struct store_reader *r, enum store_db db, const void *prefix, size_t prefix_len,
	       store_scan_fn fn, void *arg)
{
	if (!r->reading || (unsigned)db >= STORE_DB_COUNT || prefix_len > 511)
		return -EINVAL;
	MDB_cursor *cur;
	int rc = mdb_cursor_open(r->txn, r->store->dbi[db], &cur);
	if (rc)
		return mdb_err(rc);
	MDB_val k = { .mv_size = prefix_len, .mv_data = (void *)prefix }, v;
	rc = mdb_cursor_get(cur, &k, &v, prefix_len ? MDB_SET_RANGE : MDB_FIRST);
	int out = 0;
	while (rc == 0) {
		if (prefix_len && (k.mv_size < prefix_len ||
				   memcmp(k.mv_data, prefix, prefix_len) != 0))
			break;
		out = fn(arg, k.mv_data, k.mv_size, v.mv_data, v.mv_size);
		if (out)
			break;
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(cur);
	if (out)
		return out;
	return rc == 0 || rc == MDB_NOTFOUND ? 0 : mdb_err(rc);
}

/* ---- open and close ---- */

static int make_dir(const char *dir)
{
	if (mkdir(dir, 0750) == 0)
		return 0;
	if (errno != EEXIST)
		return -errno;
	struct stat st;
	if (stat(dir, &st) != 0)
		return -errno;
	return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

/* LMDB would let two gateways write the same environment in turn; the design has one
 * writer, so the second is refused before it touches LMDB. Readers do not take it. */
static int lock_dir(struct store *s, const char *dir)
{
	char path[4096];
	if (snprintf(path, sizeof(path), "%s/store.lock", dir) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (s->lock_fd < 0)
		return -errno;
	if (flock(s->lock_fd, LOCK_EX | LOCK_NB) == 0)
		return 0;
	int rc = -errno;
	if (rc == -EWOULDBLOCK)
		log_error("store: %s is in use by another writer (a second penstock?)", dir);
	return rc == -EWOULDBLOCK ? -EBUSY : rc;
}

static bool env_exists(const char *dir)
{
	char path[4096];
	struct stat st;
	if (snprintf(path, sizeof(path), "%s/data.mdb", dir) >= (int)sizeof(path))
		return false;
	return stat(path, &st) == 0 && st.st_size > 0;
}

static int check_schema(struct store *s, MDB_txn *txn)
{
	MDB_val k = { .mv_size = 6, .mv_data = "schema" }, v;
	int rc = mdb_get(txn, s->dbi[STORE_DB_META], &k, &v);
	if (rc == MDB_NOTFOUND && !s->read_only) {
		uint8_t le[4] = { STORE_SCHEMA_VERSION & 0xff, (STORE_SCHEMA_VERSION >> 8) & 0xff,
				  (STORE_SCHEMA_VERSION >> 16) & 0xff, STORE_SCHEMA_VERSION >> 24 };
		v.mv_size = sizeof(le);
		v.mv_data = le;
		return mdb_err(mdb_put(txn, s->dbi[STORE_DB_META], &k, &v, 0));
	}
	if (rc == MDB_NOTFOUND)
		return STORE_ENOTSTORE;
	if (rc)
		return mdb_err(rc);
	const uint8_t *p = v.mv_data;
	uint32_t found = v.mv_size == 4 ? (uint32_t)p[0] | (uint32_t)p[1] << 8 |
				  (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24 : 0;
	if (found != STORE_SCHEMA_VERSION) {
		log_error("store: %s has schema version %u, this build reads version %u "
			  "(migrate the data or point data_dir elsewhere)", s->dir, found,
			  STORE_SCHEMA_VERSION);
		return STORE_ESCHEMA;
	}
	return 0;
}

/* Where the audit chain goes on: its last record, else the anchor, else nothing. */
static int load_chain(struct store *s, MDB_txn *txn)
{
	MDB_cursor *cur;
	MDB_val k, v;
	int rc = mdb_cursor_open(txn, s->dbi[STORE_DB_AUDIT], &cur);
	if (rc)
		return rc;
	rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
	mdb_cursor_close(cur);
	if (rc == MDB_NOTFOUND) {
		MDB_val ak = { .mv_size = strlen(STORE_AUDIT_ANCHOR), .mv_data = STORE_AUDIT_ANCHOR };
		rc = mdb_get(txn, s->dbi[STORE_DB_META], &ak, &v);
		if (rc == MDB_NOTFOUND)
			return 0;
		if (rc)
			return rc;
		if (v.mv_size != STORE_AUDIT_KEY_LEN + STORE_AUDIT_HASH_LEN)
			return -EBADMSG;
		s->chain_stamp = get_be64(v.mv_data);
		memcpy(s->chain_hash, (uint8_t *)v.mv_data + STORE_AUDIT_KEY_LEN,
		       STORE_AUDIT_HASH_LEN);
		return 0;
	}
	if (rc)
		return rc;
	if (k.mv_size != STORE_AUDIT_KEY_LEN || v.mv_size < STORE_AUDIT_HASH_LEN)
		return -EBADMSG;
	s->chain_stamp = get_be64(k.mv_data);
	memcpy(s->chain_hash, v.mv_data, STORE_AUDIT_HASH_LEN);
	return 0;
}

/* Open every database (creating them unless read-only) and check the schema. An
 * environment whose main database has entries but no "meta" is someone else's. */
static int open_dbs(struct store *s)
{
	MDB_txn *txn;
	int rc = mdb_txn_begin(s->env, NULL, s->read_only ? MDB_RDONLY : 0, &txn);
	if (rc)
		return mdb_err(rc);
	rc = mdb_dbi_open(txn, db_names[STORE_DB_META], 0, &s->dbi[STORE_DB_META]);
	if (rc == MDB_NOTFOUND) {
		MDB_dbi main_dbi;
		MDB_stat st;
		rc = mdb_dbi_open(txn, NULL, 0, &main_dbi);
		if (rc == 0)
			rc = mdb_stat(txn, main_dbi, &st);
		if (rc == 0 && (st.ms_entries > 0 || s->read_only))
			rc = STORE_ENOTSTORE;
	}
	unsigned flags = s->read_only ? 0 : MDB_CREATE;
	for (unsigned i = 0; i < STORE_DB_COUNT && rc == 0; i++)
		rc = mdb_dbi_open(txn, db_names[i], flags, &s->dbi[i]);
	if (rc == MDB_NOTFOUND)
		rc = STORE_ENOTSTORE;
	if (rc == 0)
		rc = check_schema(s, txn);
	if (rc == 0 && !s->read_only)
		rc = load_chain(s, txn);
	if (rc) {
		mdb_txn_abort(txn);
		return mdb_err(rc);
	}
	return mdb_err(mdb_txn_commit(txn)); /* read-only too: it makes the handles global */
}

static int open_env(struct store *s, const struct store_options *opt)
{
	bool existed = env_exists(opt->dir);
	int rc = mdb_env_create(&s->env);
	if (rc)
		return mdb_err(rc);
	rc = mdb_env_set_maxdbs(s->env, STORE_DB_COUNT + 2);
	if (rc == 0)
		rc = mdb_env_set_maxreaders(s->env, opt->max_readers ? opt->max_readers
								    : READERS_DEFAULT);
	size_t want = opt->map_size ? opt->map_size : MAP_SIZE_DEFAULT;
	want = round_up(want, (size_t)sysconf(_SC_PAGESIZE));
	/* A new environment starts at the asked size; an existing one at its own, which
	 * includes any growth, so growth outlives a restart. */
	if (rc == 0 && !existed && !s->read_only)
		rc = mdb_env_set_mapsize(s->env, want);
	/* NOTLS: a reader's slot belongs to its txn, not its thread, so a reset txn can be
	 * renewed from any thread and a worker keeps one for its whole life. */
	unsigned flags = MDB_NOTLS;
	if (s->read_only)
		flags |= MDB_RDONLY;
	else if (s->durability == STORE_DURABILITY_BATCH)
		flags |= MDB_NOMETASYNC;
	else if (s->durability == STORE_DURABILITY_NONE)
		flags |= MDB_NOSYNC;
	if (rc == 0)
		rc = mdb_env_open(s->env, opt->dir, flags, 0640);
	if (rc)
		return mdb_err(rc);
	if (!s->read_only) {
		int dead = 0;
		mdb_reader_check(s->env, &dead); /* slots left by killed processes */
		if (dead)
			log_info("store: cleared %d reader slots of dead processes", dead);
	}
	if (!s->read_only && existed && env_map_size(s) < want)
		rc = mdb_err(mdb_env_set_mapsize(s->env, want)); /* no txn is open yet */
	atomic_store_explicit(&s->c.map_size, env_map_size(s), memory_order_relaxed);
	return rc;
}

static size_t ring_records(const struct store_options *opt)
{
	return opt->ring_records ? opt->ring_records : RING_RECORDS_DEFAULT;
}

static int setup_producers(struct store *s, const struct store_options *opt)
{
	size_t ring = ring_records(opt);
	s->ring_half = ring / 2;
	s->nproducers = opt->producers;
	s->producers = aligned_alloc(SPSC_CACHE_LINE, round_up(sizeof(struct producer) *
							       opt->producers, SPSC_CACHE_LINE));
	if (!s->producers)
		return -ENOMEM;
	memset(s->producers, 0, sizeof(struct producer) * opt->producers);
	for (unsigned i = 0; i < opt->producers; i++) {
		struct producer *p = &s->producers[i];
		p->notify_fd = -1;
		p->next_seq = 1;
		atomic_init(&p->done_seq, 0);
		int rc = spsc_init(&p->ring, ring, sizeof(struct store_rec));
		if (rc)
			return rc;
		size_t slots = ring * OUTCOME_PER_RING_RECORD;
		p->outcome = calloc(slots, sizeof(*p->outcome));
		if (!p->outcome)
			return -ENOMEM;
		p->outcome_mask = slots - 1;
		/* powers of two, and room for two of the largest pieces however small the ring */
		size_t stage = ring * STAGE_PER_RING_RECORD;
		if (stage < 2 * STORE_REF_MAX)
			stage = 2 * STORE_REF_MAX;
		p->stage = malloc(stage);
		if (!p->stage)
			return -ENOMEM;
		p->stage_mask = stage - 1;
		atomic_init(&p->stage_head, 0);
		p->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (p->notify_fd < 0)
			return -errno;
	}
	s->batch = calloc(s->batch_records + STORE_UNIT_MAX - 1, sizeof(*s->batch));
	s->adds = calloc(ADD_SLOTS, sizeof(*s->adds));
	s->adds_used = calloc(ADD_FILL_MAX, sizeof(*s->adds_used));
	return s->batch && s->adds && s->adds_used ? 0 : -ENOMEM;
}

/* The store thread takes no signals: they belong to the daemon's main thread. */
static int start_thread(struct store *s)
{
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int rc = pthread_create(&s->thread, NULL, store_main, s);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc)
		return -rc;
	pthread_setname_np(s->thread, "penstock-store");
	s->thread_started = true;
	return 0;
}

static void store_free(struct store *s)
{
	if (s->producers) {
		for (unsigned i = 0; i < s->nproducers; i++) {
			struct producer *p = &s->producers[i];
			spsc_fini(&p->ring);
			free(p->outcome);
			free(p->stage);
			if (p->notify_fd >= 0)
				close(p->notify_fd);
		}
		free(s->producers);
	}
	if (s->env)
		mdb_env_close(s->env);
	if (s->lock_fd >= 0)
		close(s->lock_fd); /* after the environment: the lock outlives every write */
	pthread_mutex_destroy(&s->readers_lock);
	free(s->batch);
	free(s->adds);
	free(s->adds_used);
	free(s->dir);
	free(s);
}

static int store_setup(struct store *s, const struct store_options *opt)
{
	if (!opt->dir || !*opt->dir || opt->durability > STORE_DURABILITY_NONE)
		return -EINVAL;
	if (!opt->read_only && (opt->producers == 0 || opt->producers > 4096))
		return -EINVAL;
	size_t ring = ring_records(opt);
	if (!opt->read_only && (ring < STORE_UNIT_MAX || ring > SPSC_CAPACITY_MAX / 4 ||
				(ring & (ring - 1))))
		return -EINVAL; /* a unit must fit; outcome slots are 4 per record */
	s->dir = strdup(opt->dir);
	if (!s->dir)
		return -ENOMEM;
	int rc = opt->read_only ? 0 : make_dir(opt->dir);
	if (rc == 0 && !opt->read_only)
		rc = lock_dir(s, opt->dir);
	if (rc == 0)
		rc = open_env(s, opt);
	if (rc == 0)
		rc = open_dbs(s);
	if (rc == 0 && !s->read_only)
		rc = setup_producers(s, opt);
	if (rc == 0 && !s->read_only)
		rc = start_thread(s);
	return rc;
}

struct store *store_open(const struct store_options *opt, int *err)
{
	struct store *s = aligned_alloc(SPSC_CACHE_LINE, round_up(sizeof(*s), SPSC_CACHE_LINE));
	if (!s) {
		*err = -ENOMEM;
		return NULL;
	}
	memset(s, 0, sizeof(*s));
	s->lock_fd = -1;
	pthread_mutex_init(&s->readers_lock, NULL);
	s->read_only = opt->read_only;
	s->durability = opt->durability;
	s->commit_interval_ms = opt->commit_interval_ms ? opt->commit_interval_ms
							: COMMIT_INTERVAL_MS_DEFAULT;
	s->batch_records = opt->batch_records ? opt->batch_records : BATCH_RECORDS_DEFAULT;
	s->sync_interval_ms = opt->sync_interval_ms ? opt->sync_interval_ms
						    : SYNC_INTERVAL_MS_DEFAULT;
	s->map_size_max = opt->map_size_max ? opt->map_size_max : MAP_SIZE_MAX_DEFAULT;
	s->retention_ms = opt->audit_retention_ms;
	s->map_size_max -= s->map_size_max % (size_t)sysconf(_SC_PAGESIZE);
	int rc = store_setup(s, opt);
	if (rc) {
		log_error("store: cannot open %s: %s", opt->dir ? opt->dir : "(no data_dir)",
			  store_strerror(rc));
		store_free(s);
		*err = rc;
		return NULL;
	}
	return s;
}

void store_close(struct store *s)
{
	if (!s)
		return;
	if (s->thread_started) {
		atomic_store_explicit(&s->stop, true, memory_order_release);
		ring_bell(s);
		pthread_join(s->thread, NULL);
	}
	if (s->readers)
		log_error("store: closed with readers still open"); /* a caller's bug */
	assert(!s->readers);
	if (!s->read_only) {
		int rc = mdb_err(mdb_env_sync(s->env, 1));
		if (rc)
			log_error("store: final sync: %s", store_strerror(rc));
	}
	store_free(s);
}

void store_stats(struct store *s, struct store_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->commits = atomic_load_explicit(&s->c.commits, memory_order_relaxed);
	out->records = atomic_load_explicit(&s->c.records, memory_order_relaxed);
	out->batches_failed = atomic_load_explicit(&s->c.batches_failed, memory_order_relaxed);
	out->records_failed = atomic_load_explicit(&s->c.records_failed, memory_order_relaxed);
	out->map_full = atomic_load_explicit(&s->c.map_full, memory_order_relaxed);
	out->map_grows = atomic_load_explicit(&s->c.map_grows, memory_order_relaxed);
	out->add_saturated = atomic_load_explicit(&s->c.add_saturated, memory_order_relaxed);
	out->adds_merged = atomic_load_explicit(&s->c.adds_merged, memory_order_relaxed);
	out->audit_pruned = atomic_load_explicit(&s->c.audit_pruned, memory_order_relaxed);
	for (unsigned i = 0; i <= STORE_COMMIT_BUCKETS; i++)
		out->commit_hist[i] = atomic_load_explicit(&s->c.commit_hist[i],
							   memory_order_relaxed);
	out->commit_us_sum = atomic_load_explicit(&s->c.commit_us_sum, memory_order_relaxed);
	out->commit_us_max = atomic_load_explicit(&s->c.commit_us_max, memory_order_relaxed);
	out->prune_us_max = atomic_load_explicit(&s->c.prune_us_max, memory_order_relaxed);
	out->map_size = atomic_load_explicit(&s->c.map_size, memory_order_relaxed);
	for (unsigned i = 0; i < s->nproducers; i++) {
		out->submit_full += atomic_load_explicit(&s->producers[i].submit_full,
							 memory_order_relaxed);
		out->queued += spsc_count(&s->producers[i].ring);
	}
}
