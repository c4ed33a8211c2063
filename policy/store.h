/* store.h - the LMDB store: one environment in data_dir, one writer thread, group commit.
 *
 * Nobody but the store thread writes. Each producer (a worker, the admin thread) owns one
 * SPSC ring into it and submits records there without waiting. The store thread drains
 * every ring and applies what it found in ONE write transaction (group commit), then
 * reports each record's fate by sequence number: store_outcome() answers without a lock,
 * and a per-producer eventfd becomes readable when a batch holding that producer's records
 * is decided (a worker reads it from its io_uring). Readers, in this process or another
 * (penstockctl), use short read-only transactions and never wait for the writer.
 *
 * Errors are 0 or negative: -errno, an LMDB code (MDB_MAP_FULL and friends are negative)
 * or a STORE_E* code. store_strerror() names any of them. docs/store.md has the design:
 * what batch and strict durability lose in which crash, map growth, the key layouts.
 */
#ifndef PENSTOCK_STORE_H
#define PENSTOCK_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The on-disk layout this build reads and writes; kept in meta under "schema". */
#define STORE_SCHEMA_VERSION 1

struct store;
struct store_reader;

#define STORE_ESCHEMA   (-30600) /* the environment's schema version is not ours */
#define STORE_ENOTSTORE (-30601) /* data_dir holds an LMDB environment that is not a store */

enum store_db {
	STORE_DB_META,  /* the store's own: "schema" -> u32 LE; no records may target it */
	STORE_DB_KEYS,  /* SHA-256 of a client key (32 bytes) -> key record (policy/keys) */
	STORE_DB_TEAMS, /* team name -> team record */
	STORE_DB_SPEND, /* store_spend_key_encode() -> struct store_spend */
	STORE_DB_AUDIT, /* commit stamp (8, BE) -> chain hash (32) | audit record (policy/audit) */
	STORE_DB_COUNT
};

enum store_durability {
	/* Commit with one fdatasync (MDB_NOMETASYNC): a process crash loses nothing that was
	 * committed; a power loss may undo the last commit, never corrupts. Producers do not
	 * wait; a crash also loses what sat in the rings (at most commit_interval_ms). */
	STORE_DURABILITY_BATCH,
	/* Commit with data and meta synced: a record whose outcome is 0 survives power loss.
	 * The store thread commits as soon as records arrive (no interval wait); producers
	 * wait for their outcome before they answer. */
	STORE_DURABILITY_STRICT,
	/* No sync at commit (MDB_NOSYNC), mdb_env_sync every sync_interval_ms: for tests and
	 * benches. A process crash still loses nothing committed; a power loss may lose more
	 * and, on a filesystem that reorders writes, corrupt the environment. */
	STORE_DURABILITY_NONE,
};

struct store_options {
	const char *dir;              /* data_dir: created 0750 if missing (not its parents) */
	bool read_only;               /* penstockctl: readers only, no thread, no producers */
	unsigned producers;           /* rings, one per worker plus one per other writer */
	uint32_t ring_records;        /* per producer, a power of two; 0: 8192 */
	uint32_t commit_interval_ms;  /* longest a record waits before its batch; 0: 10 */
	uint32_t batch_records;       /* a batch this large commits without waiting; 0: 4096 */
	enum store_durability durability;
	uint32_t sync_interval_ms;    /* NONE only; 0: 1000 */
	size_t map_size;              /* initial map; 0: 256 MiB. An existing larger map wins */
	uint64_t audit_retention_ms;  /* audit records older than this are pruned; 0: kept */
	size_t map_size_max;          /* growth stops here; 0: 64 GiB; below map_size: no growth */
	unsigned max_readers;         /* LMDB reader slots, all processes; 0: 126 */
};

/* Open (creating the environment and its databases on first use) and, unless read_only,
 * start the store thread. NULL with *err set on failure; the reason is also logged. */
struct store *store_open(const struct store_options *opt, int *err);
/* Producers must have stopped submitting and every store_reader must be freed. Commits
 * what the rings still hold, syncs, stops the thread, closes the environment. */
void store_close(struct store *s);

const char *store_strerror(int err);

/* ---- records ---- */

#define STORE_KEY_MAX 80        /* bytes of key a record carries inline */
#define STORE_INLINE_MAX 32     /* values up to this size travel inline, larger in a blob */
#define STORE_VAL_MAX (1u << 20)
#define STORE_UNIT_MAX 16       /* records one store_submit() call commits together */
#define STORE_ID_MAX 64

enum store_op { STORE_OP_PUT = 1, STORE_OP_DEL, STORE_OP_ADD, STORE_OP_AUDIT };

/* One ring slot (128 bytes). Fill it with a store_rec_* constructor; the fields are the
 * store's. A PUT whose value is over STORE_INLINE_MAX points at a malloc'd copy (blob):
 * once store_submit() accepts the record the store frees it; until then, and when submit
 * fails, store_rec_release() does. */
struct store_rec {
	uint8_t op;        /* enum store_op */
	uint8_t db;        /* enum store_db */
	uint8_t key_len;
	uint8_t flags;     /* STORE_REC_*: set by the store */
	uint32_t val_len;
	uint64_t seq;      /* set by store_submit() */
	uint8_t key[STORE_KEY_MAX];
	union {
		uint8_t inline_val[STORE_INLINE_MAX];
		void *blob;
		int64_t add[4];   /* ADD: a struct store_spend of deltas */
	} v;
};

/* Spend counters: int64 micro-dollars and tokens per (scope, period, period start, id).
 * An ADD record adds its deltas inside the batch's transaction, so the audit record and
 * the increments of one request, submitted as one unit, commit together or not at all. */
/* KEY, TEAM, MODEL: budget counters (policy/budget). LEDGER_*: the spend ledger, one
 * record per day per key, team and model, whatever the budgets (policy/gov). */
enum store_scope {
	STORE_SCOPE_KEY = 1,
	STORE_SCOPE_TEAM = 2,
	STORE_SCOPE_MODEL = 3,
	STORE_SCOPE_LEDGER_KEY = 4,
	STORE_SCOPE_LEDGER_TEAM = 5,
	STORE_SCOPE_LEDGER_MODEL = 6,
};
enum store_period {
	STORE_PERIOD_TOTAL = 0, /* start 0 */
	STORE_PERIOD_DAY = 1,
	STORE_PERIOD_WEEK = 2,
	STORE_PERIOD_MONTH = 3,
};

struct store_spend_key {
	uint8_t scope;      /* enum store_scope */
	uint8_t period;     /* enum store_period */
	uint64_t start;     /* UTC seconds at the period's start (the budget module's calendar) */
	uint8_t id_len;     /* 1..STORE_ID_MAX */
	uint8_t id[STORE_ID_MAX]; /* key: SHA-256 of the client key; team, model: the name */
};

struct store_spend {
	int64_t micro_usd;
	int64_t input_tokens;
	int64_t output_tokens;
	int64_t requests;
};

/* 0; -EINVAL for a bad db, key or size; -ENOMEM when a blob cannot be allocated. */
int store_rec_put(struct store_rec *r, enum store_db db, const void *key, size_t key_len,
		  const void *val, size_t val_len);
int store_rec_del(struct store_rec *r, enum store_db db, const void *key, size_t key_len);
int store_rec_spend_add(struct store_rec *r, const struct store_spend_key *k,
			const struct store_spend *delta);
void store_rec_release(struct store_rec *r);

/* ---- the audit chain (docs/audit.md) ----
 *
 * An AUDIT record carries only its content: the store thread keys it by its commit stamp
 * (UTC nanoseconds, strictly increasing, 8 bytes big-endian) and stores
 * hash | content, hash = SHA-256(previous record's hash | stamp | content), in commit
 * order. The first record after an empty log chains from 32 zero bytes; pruning keeps the
 * last pruned record's stamp and hash in meta "audit_anchor", so the chain stays
 * verifiable from there. */
#define STORE_AUDIT_HASH_LEN 32
#define STORE_AUDIT_KEY_LEN 8
#define STORE_AUDIT_ANCHOR "audit_anchor" /* meta: stamp (8, BE) | hash (32) */

int store_rec_audit(struct store_rec *r, const void *content, size_t len);
/* The same record without a copy: it borrows content, which must stay as it is until
 * store_submit() returns; submit copies it into the producer's own staging area (no
 * allocation per record, nothing freed on another thread). Content over STORE_REF_MAX is
 * copied at once, as store_rec_audit() does. A unit whose borrowed content does not fit
 * the staging area now is refused like a full ring (-EAGAIN), records unchanged. */
#define STORE_REF_MAX 4096
int store_rec_audit_ref(struct store_rec *r, const void *content, size_t len);
void store_audit_hash(const uint8_t prev[STORE_AUDIT_HASH_LEN], uint64_t stamp,
		      const void *content, size_t len, uint8_t out[STORE_AUDIT_HASH_LEN]);
void store_audit_key(uint64_t stamp, uint8_t out[STORE_AUDIT_KEY_LEN]);
uint64_t store_audit_stamp(const void *key); /* the 8 key bytes back to the stamp */
/* Within a read: the anchor (stamp 0 and zero hash when nothing was ever pruned). */
int store_audit_anchor(struct store_reader *r, uint64_t *stamp,
		       uint8_t hash[STORE_AUDIT_HASH_LEN]);

/* Key layout in STORE_DB_SPEND: scope, period, start (big-endian, so a scan walks time in
 * order), id. The encoded length (at most STORE_KEY_MAX), or 0 if k is out of range. */
size_t store_spend_key_encode(const struct store_spend_key *k, uint8_t out[STORE_KEY_MAX]);
int store_spend_key_decode(const void *key, size_t len, struct store_spend_key *k);

/* ---- producers: one thread per producer index, always the same one ---- */

/* Queue n records (1..STORE_UNIT_MAX) that commit together, in one transaction, after
 * everything this producer queued before. Sets each record's seq (consecutive) and
 * *last_seq to the last. -EAGAIN: the ring is full and nothing was queued (the caller
 * pushes back or drops and counts; blobs stay the caller's); -EINVAL: a bad record;
 * -EROFS: a read-only store. */
int store_submit(struct store *s, unsigned producer, struct store_rec *recs, unsigned n,
		 uint64_t *last_seq);

/* A record's fate, without a lock or syscall: 0 committed (and readable by any read
 * transaction begun from now on); -EINPROGRESS not decided yet; -ESTALE too old to tell
 * (over 4 x ring_records records of this producer were decided since); otherwise the
 * error that failed its batch (e.g. MDB_MAP_FULL). Any thread may ask, in any order. */
int store_outcome(struct store *s, unsigned producer, uint64_t seq);
/* Every record of this producer with seq <= this one is decided. */
uint64_t store_done_seq(struct store *s, unsigned producer);
/* An eventfd (non-blocking) the store thread writes after each batch that held records
 * of this producer: read it (io_uring, poll) and then ask store_outcome(). One consumer. */
int store_notify_fd(struct store *s, unsigned producer);
/* Blocking helper for threads that may block (admin, penstockctl, tests): waits on the
 * eventfd until seq is decided or timeout_ms passes (-1: no limit). Returns what
 * store_outcome() returns, or -ETIMEDOUT. Never call it with a read open. */
int store_wait(struct store *s, unsigned producer, uint64_t seq, int timeout_ms);

/* ---- readers ---- */

struct store_val {
	const void *p; /* into the map: valid until store_read_end(); copy what you keep */
	size_t len;
};

/* One per reader thread (or one per use, protected by the caller). Keep reads short: a
 * map resize waits for every open read to end, and a long read pins old pages. */
struct store_reader *store_reader_new(struct store *s, int *err);
void store_reader_free(struct store_reader *r);

/* Open a read (a snapshot of the last commit) / end it. 0 or an error (MDB_READERS_FULL). */
int store_read_begin(struct store_reader *r);
void store_read_end(struct store_reader *r);

/* Within a read. 0, -ENOENT, or an error. */
int store_get(struct store_reader *r, enum store_db db, const void *key, size_t key_len,
	      struct store_val *val);
/* Within a read: the counter's value, all zero if it was never incremented. */
int store_spend_get(struct store_reader *r, const struct store_spend_key *k,
		    struct store_spend *out);

/* Within a read: fn for every entry whose key starts with prefix (all if prefix_len is 0),
 * in key order. fn returns 0 to go on; anything else stops the scan and is returned. */
typedef int (*store_scan_fn)(void *arg, const void *key, size_t key_len, const void *val,
			     size_t val_len);
int store_scan(struct store_reader *r, enum store_db db, const void *prefix, size_t prefix_len,
	       store_scan_fn fn, void *arg);

/* Within a read: like store_scan, over the entries whose key is >= from (all if from_len
 * is 0), in key order, until fn returns non-zero. */
int store_scan_from(struct store_reader *r, enum store_db db, const void *from, size_t from_len,
		    store_scan_fn fn, void *arg);

/* ---- operator's view ---- */

/* Commit latency buckets: upper bounds in microseconds (100 us to 1 s). */
#define STORE_COMMIT_BUCKETS 12
extern const uint32_t store_commit_bucket_us[STORE_COMMIT_BUCKETS];

struct store_stats {
	uint64_t commits;          /* write transactions committed */
	uint64_t records;          /* records committed */
	uint64_t batches_failed;   /* batches whose transaction failed */
	uint64_t records_failed;
	uint64_t map_full;         /* batches failed with MDB_MAP_FULL at the size limit */
	uint64_t map_grows;        /* successful map resizes */
	uint64_t submit_full;      /* store_submit() calls refused because a ring was full */
	uint64_t queued;           /* records waiting in the producers' rings now (a snapshot) */
	uint64_t add_saturated;    /* counter additions clamped at the int64 limits */
	uint64_t adds_merged;      /* ADDs summed into a counter their batch already held */
	uint64_t audit_pruned;     /* audit records removed by retention */
	/* Batch write transactions, begin to commit (map growth retries included): how many
	 * took up to each bucket's bound (not cumulative; the last slot: over 1 s), the sum and
	 * the longest, in microseconds. */
	uint64_t commit_hist[STORE_COMMIT_BUCKETS + 1];
	uint64_t commit_us_sum, commit_us_max;
	uint64_t prune_us_max;     /* the longest retention transaction (committed), us */
	size_t map_size;           /* bytes mapped now */
};

void store_stats(struct store *s, struct store_stats *out);

#endif
