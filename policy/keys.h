/* keys.h - client keys: virtual keys the gateway issues (psk-...) and bootstrap keys from the
 * config, in one in-memory table that workers read without locks.
 *
 * A virtual key is "psk-" + 256 random bits (getrandom) in base62, 47 characters. It is
 * shown once, by keys_create(); the gateway keeps only its SHA-256, in memory and in the
 * store's keys database (SHA-256 -> a JSON record: id, name, team, created, expiry,
 * revoked, own limits, budget, models). Bootstrap keys from the config live in the same
 * table, hashed the same way, and are not persisted (the config is their source).
 *
 * Lookup (workers): hash what the client sent, probe an open-addressed table of record
 * pointers by the hash, compare the whole 32 bytes with CRYPTO_memcmp. What the timing can
 * depend on is the hash, never how much of a secret matched. Then the revoked flag and the
 * expiry (against the request's time).
 *
 * Concurrency, the design: records are immutable once published except their `revoked`
 * flag, an atomic. Writers (keys_create/revoke/add_bootstrap/load: control threads) hold a
 * mutex among themselves; readers take nothing. A new record is filled, then its pointer is
 * stored in a free slot with release order, so a reader that sees the pointer sees the
 * record. When the table passes half full a doubled copy is built and published with one
 * release store of the table pointer; the old table and every record stay allocated until
 * keys_free(), so a reader holding either never touches freed memory (no epochs needed;
 * the cost is the old tables, less than the live one in all, and revoked records).
 *
 * Revocation: keys_revoke() sets the record's flag with a sequentially consistent store (on
 * x86 a locked instruction that drains the store buffer) BEFORE it persists anything. Any
 * lookup that starts after the store - every lookup after keys_revoke() returns, on every
 * worker - loads the flag and answers KEYS_REVOKED. A request that passed its lookup before
 * finishes (as one that arrived a microsecond earlier would have).
 */
#ifndef PENSTOCK_KEYS_H
#define PENSTOCK_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/str.h"
#include "policy/store.h"

#define KEYS_PREFIX "psk-"
#define KEYS_SECRET_LEN 47 /* "psk-" + 43 base62 digits (62^43 > 2^256) */
#define KEYS_HASH_LEN 32
#define KEYS_NONE UINT32_MAX
#define KEYS_NAME_MAX 128
#define KEYS_MODELS_MAX 256

struct key_rec {
	uint8_t hash[KEYS_HASH_LEN];
	char *id;     /* public: "k_" + 16 hex digits, or "cfg_" + name for bootstrap keys */
	char *name;
	char *team;   /* NULL: no team */
	int64_t created;  /* UTC seconds */
	int64_t expires;  /* UTC seconds, 0 = never */
	bool bootstrap;   /* from the config: not in the store */
	/* The key's own limits (0 = none: the team's apply alone). */
	uint64_t rpm, tpm;
	int64_t budget_micro_usd;
	enum store_period budget_period;
	char **models; /* the key may call only these (and its team's); NULL = the team's */
	size_t nmodels;
	/* The caller's: its ratelimit subject, budget id and team slot for this key, KEYS_NONE
	 * if none; set before the record is published (keys_create params, keys_load's
	 * prepare), so a lookup needs no search by name. */
	uint32_t ratelimit_subject, budget_id, team_slot;
	_Atomic bool revoked;
};

enum keys_status {
	KEYS_OK = 0,
	KEYS_UNKNOWN, /* 401 */
	KEYS_REVOKED, /* 401 */
	KEYS_EXPIRED, /* 401 */
};

/* An empty table sized for about `expected` keys (it grows). NULL with *err on failure. */
struct keys *keys_new(uint32_t expected, int *err);
/* No lookup may run any more. */
void keys_free(struct keys *k);

/* ---- secrets ---- */

/* A new secret: "psk-" + 43 base62 digits of 256 bits from getrandom(). 0 or -errno. */
int keys_generate(char out[KEYS_SECRET_LEN + 1]);
void keys_hash(const char *secret, size_t len, uint8_t out[KEYS_HASH_LEN]);

/* ---- the hot path (any thread, no lock) ---- */

/* The record for a presented secret; *rec is set for OK, REVOKED and EXPIRED (the caller may
 * log the key's id), NULL for UNKNOWN. The record stays valid until keys_free(). */
enum keys_status keys_lookup(const struct keys *k, struct slice secret, int64_t now_s,
			     const struct key_rec **rec);
/* The same, for a caller that already hashed the secret. */
enum keys_status keys_lookup_hash(const struct keys *k, const uint8_t hash[KEYS_HASH_LEN],
				  int64_t now_s, const struct key_rec **rec);
/* The key's own model list allows model (a key without a list allows every model; its team's
 * list is the caller's to check too). Exact, case-sensitive names. */
bool keys_model_allowed(const struct key_rec *rec, struct slice model);

/* ---- control (one writer at a time; they serialise on a mutex) ---- */

struct key_params {
	const char *name; /* 1..KEYS_NAME_MAX bytes */
	const char *team; /* 1..KEYS_NAME_MAX bytes, or NULL: no team */
	int64_t expires;  /* UTC seconds, 0 = never */
	uint64_t rpm, tpm;
	int64_t budget_micro_usd;
	enum store_period budget_period;
	const char *const *models;
	size_t nmodels; /* up to KEYS_MODELS_MAX */
	/* copied to the record; KEYS_NONE for none */
	uint32_t ratelimit_subject, budget_id, team_slot;
};

typedef int (*keys_prepare_fn)(void *arg, struct key_rec *rec);

/* Issue a key: generate the secret, let prepare (may be NULL) see the record (its hash and
 * id are set: to set ratelimit_subject/budget_id; non-zero fails the call with that code),
 * persist it through the store (producer: the caller's ring; waits for the commit, up to
 * timeout_ms), then publish it. The secret goes to secret_out and nowhere else. 0; -EINVAL for bad params; the store's error if the
 * record did not commit (then the key does not exist). */
int keys_create(struct keys *k, struct store *s, unsigned producer, int timeout_ms,
		const struct key_params *p, int64_t now_s, keys_prepare_fn prepare, void *arg,
		char secret_out[KEYS_SECRET_LEN + 1], const struct key_rec **rec);

/* Revoke by public id: every lookup from now on answers KEYS_REVOKED (see the header
 * comment), then the revoked record is persisted. 0; -ENOENT unknown id; -EPERM a bootstrap
 * key (remove it from the config instead); the store's error if persisting failed (the key
 * is revoked in this process but would come back after a restart: the caller must say so). */
int keys_revoke(struct keys *k, struct store *s, unsigned producer, int timeout_ms,
		const char *id);

/* A bootstrap key from the config (its secret from config_resolve_secret): hashed into the
 * table, not persisted. 0; -EEXIST if the same secret is already there; -EINVAL. */
int keys_add_bootstrap(struct keys *k, const char *secret, size_t len,
		       const struct key_params *p, int64_t now_s);

/* At start, before workers: every record in the store's keys database. prepare (may be NULL)
 * sees each record before it is published, to set ratelimit_subject/budget_id from the
 * record's limits; a non-zero return skips the record. Records that do not decode are
 * skipped with a warning (by hash prefix; there is no secret to leak). The number loaded, or
 * a negative store error. */
int keys_load(struct keys *k, struct store_reader *r, keys_prepare_fn prepare, void *arg);

/* Admin listing: fn for each key (revoked included) under the writers' mutex; fn must not
 * call a keys_* writer. */
void keys_foreach(struct keys *k, void (*fn)(void *arg, const struct key_rec *rec), void *arg);
size_t keys_count(struct keys *k);

/* The record's persisted form (JSON, malloc'd, *len set) and back; for penstockctl. */
char *keys_record_encode(const struct key_rec *rec, size_t *len);
int keys_record_decode(const uint8_t hash[KEYS_HASH_LEN], const void *json, size_t len,
		       struct key_rec **out);
void keys_record_free(struct key_rec *rec);

#endif
