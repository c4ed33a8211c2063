/* keys.c - client keys: generation, SHA-256, the lock-free-for-readers table, JSON records
 * persisted through the store. */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <openssl/mem.h>
#include <openssl/sha.h>

#include "core/log.h"
#include "policy/keys.h"

#define RECORD_VERSION 1
#define TABLE_MIN 64
#define TABLE_MAX (1u << 30)
#define RANDOM_TRIES 8 /* getrandom interrupted by signals this often is not a transient */

static_assert(SHA256_DIGEST_LENGTH == KEYS_HASH_LEN, "a key hash is a SHA-256");

struct table {
	uint32_t mask;
	_Atomic(struct key_rec *) slot[];
};

struct retired {
	struct retired *next;
	struct table *table;
};

struct keys {
	_Atomic(struct table *) table;
	pthread_mutex_t writer;
	size_t count;
	struct retired *retired;
	struct key_rec **all; /* every record ever published, for keys_free */
	size_t nall, capall;
};

/* ---- records ---- */

void keys_record_free(struct key_rec *rec)
{
	if (!rec)
		return;
	free(rec->id);
	free(rec->name);
	free(rec->team);
	for (size_t i = 0; i < rec->nmodels; i++)
		free(rec->models[i]);
	free(rec->models);
	free(rec);
}

static const char *const period_names[] = {
	[STORE_PERIOD_TOTAL] = "total", [STORE_PERIOD_DAY] = "daily",
	[STORE_PERIOD_WEEK] = "weekly", [STORE_PERIOD_MONTH] = "monthly",
};

char *keys_record_encode(const struct key_rec *rec, size_t *len)
{
	json_t *models = json_array();
	for (size_t i = 0; models && i < rec->nmodels; i++)
		json_array_append_new(models, json_string(rec->models[i]));
	json_t *o = json_pack("{s:i, s:s, s:s, s:s?, s:I, s:I, s:b, s:I, s:I, s:I, s:s, s:o}",
			      "v", RECORD_VERSION, "id", rec->id, "name", rec->name, "team",
			      rec->team, "created", (json_int_t)rec->created, "expires",
			      (json_int_t)rec->expires, "revoked",
			      atomic_load_explicit(&rec->revoked, memory_order_relaxed), "rpm",
			      (json_int_t)rec->rpm, "tpm", (json_int_t)rec->tpm, "budget_micro_usd",
			      (json_int_t)rec->budget_micro_usd, "budget_period",
			      period_names[rec->budget_period], "models",
			      rec->models ? models : json_null());
	if (!rec->models)
		json_decref(models);
	if (!o)
		return NULL;
	char *text = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	if (text)
		*len = strlen(text);
	return text;
}

static int period_parse(const char *s, enum store_period *out)
{
	for (unsigned i = 0; i < sizeof(period_names) / sizeof(period_names[0]); i++)
		if (strcmp(s, period_names[i]) == 0) {
			*out = (enum store_period)i;
			return 0;
		}
	return -EINVAL;
}

int keys_record_decode(const uint8_t hash[KEYS_HASH_LEN], const void *json, size_t len,
		       struct key_rec **out)
{
	json_error_t jerr;
	json_t *o = json_loadb(json, len, 0, &jerr);
	if (!o)
		return -EINVAL;
	int version = 0, revoked = 0;
	const char *id, *name, *team = NULL, *period;
	json_t *jteam = NULL;
	json_int_t created, expires, rpm, tpm, budget;
	json_t *models = NULL;
	int rc = -EINVAL;
	struct key_rec *r = NULL;
	if (json_unpack(o, "{s:i, s:s, s:s, s:o, s:I, s:I, s:b, s:I, s:I, s:I, s:s, s:o}", "v",
			&version, "id", &id, "name", &name, "team", &jteam, "created", &created,
			"expires", &expires, "revoked", &revoked, "rpm", &rpm, "tpm", &tpm,
			"budget_micro_usd", &budget, "budget_period", &period, "models",
			&models) != 0 ||
	    version != RECORD_VERSION || rpm < 0 || tpm < 0 || budget < 0 ||
	    (!json_is_null(jteam) && !json_is_string(jteam)) ||
	    (!json_is_null(models) && (!json_is_array(models) ||
				       json_array_size(models) > KEYS_MODELS_MAX)))
		goto out;
	rc = -ENOMEM;
	r = calloc(1, sizeof(*r));
	if (!r)
		goto out;
	memcpy(r->hash, hash, KEYS_HASH_LEN);
	r->id = strdup(id);
	r->name = strdup(name);
	team = json_string_value(jteam);
	r->team = team ? strdup(team) : NULL;
	if (!r->id || !r->name || (team && !r->team))
		goto out;
	rc = -EINVAL;
	if (period_parse(period, &r->budget_period))
		goto out;
	r->created = created;
	r->expires = expires;
	r->rpm = (uint64_t)rpm;
	r->tpm = (uint64_t)tpm;
	r->budget_micro_usd = budget;
	r->ratelimit_subject = r->budget_id = r->team_slot = KEYS_NONE;
	atomic_init(&r->revoked, revoked != 0);
	if (json_is_array(models)) {
		size_t n = json_array_size(models);
		rc = -ENOMEM;
		r->models = calloc(n ? n : 1, sizeof(char *));
		if (!r->models)
			goto out;
		for (size_t i = 0; i < n; i++) {
			const char *m = json_string_value(json_array_get(models, i));
			rc = -EINVAL;
			if (!m)
				goto out;
			rc = -ENOMEM;
			if (!(r->models[i] = strdup(m)))
				goto out;
			r->nmodels = i + 1;
		}
	}
	*out = r;
	r = NULL;
	rc = 0;
out:
	keys_record_free(r);
	json_decref(o);
	return rc;
}

/* ---- secrets ---- */

static int random_bytes(void *buf, size_t len)
{
	uint8_t *p = buf;
	size_t got = 0;
	for (unsigned tries = 0; got < len && tries < RANDOM_TRIES; tries++) {
		ssize_t n = getrandom(p + got, len - got, 0);
		if (n < 0 && errno != EINTR)
			return -errno;
		if (n > 0)
			got += (size_t)n;
	}
	return got == len ? 0 : -EAGAIN;
}

int keys_generate(char out[KEYS_SECRET_LEN + 1])
{
	static const char digits[] =
		"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
	uint8_t n[32];
	int rc = random_bytes(n, sizeof(n));
	if (rc)
		return rc;
	size_t plen = strlen(KEYS_PREFIX);
	memcpy(out, KEYS_PREFIX, plen);
	/* The 256-bit number n, big-endian, divided by 62 digit by digit (least significant
	 * first, written from the right): 43 digits always, leading zeros included. */
	for (size_t d = KEYS_SECRET_LEN; d > plen; d--) {
		unsigned rem = 0;
		for (size_t i = 0; i < sizeof(n); i++) {
			unsigned cur = rem << 8 | n[i];
			n[i] = (uint8_t)(cur / 62);
			rem = cur % 62;
		}
		out[d - 1] = digits[rem];
	}
	out[KEYS_SECRET_LEN] = 0;
	OPENSSL_cleanse(n, sizeof(n));
	return 0;
}

void keys_hash(const char *secret, size_t len, uint8_t out[KEYS_HASH_LEN])
{
	SHA256((const uint8_t *)secret, len, out);
}

/* ---- the table ---- */

static uint32_t home(const uint8_t hash[KEYS_HASH_LEN], uint32_t mask)
{
	uint32_t h;
	memcpy(&h, hash, sizeof(h)); /* a SHA-256 is uniformly spread already */
	return h & mask;
}

static struct table *table_new(uint32_t slots)
{
	struct table *t = calloc(1, sizeof(*t) + (size_t)slots * sizeof(t->slot[0]));
	if (!t)
		return NULL;
	t->mask = slots - 1;
	for (uint32_t i = 0; i < slots; i++)
		atomic_init(&t->slot[i], NULL);
	return t;
}

struct keys *keys_new(uint32_t expected, int *err)
{
	uint32_t slots = TABLE_MIN;
	while (slots < TABLE_MAX && slots / 2 < expected)
		slots *= 2;
	*err = -ENOMEM;
	struct keys *k = calloc(1, sizeof(*k));
	struct table *t = table_new(slots);
	if (!k || !t) {
		free(k);
		free(t);
		return NULL;
	}
	atomic_init(&k->table, t);
	pthread_mutex_init(&k->writer, NULL);
	*err = 0;
	return k;
}

void keys_free(struct keys *k)
{
	if (!k)
		return;
	for (size_t i = 0; i < k->nall; i++)
		keys_record_free(k->all[i]);
	free(k->all);
	while (k->retired) {
		struct retired *r = k->retired;
		k->retired = r->next;
		free(r->table);
		free(r);
	}
	free(atomic_load_explicit(&k->table, memory_order_relaxed));
	pthread_mutex_destroy(&k->writer);
	free(k);
}

enum keys_status keys_lookup_hash(const struct keys *k, const uint8_t hash[KEYS_HASH_LEN],
				  int64_t now_s, const struct key_rec **rec)
{
	struct table *t = atomic_load_explicit(&((struct keys *)k)->table, memory_order_acquire);
	*rec = NULL;
	/* At most half full, so an empty slot ends every probe long before mask + 1 steps. */
	for (uint32_t i = home(hash, t->mask), n = 0; n <= t->mask; i = (i + 1) & t->mask, n++) {
		struct key_rec *r = atomic_load_explicit(&t->slot[i], memory_order_acquire);
		if (!r)
			return KEYS_UNKNOWN;
		if (CRYPTO_memcmp(r->hash, hash, KEYS_HASH_LEN) != 0)
			continue;
		*rec = r;
		if (atomic_load_explicit(&r->revoked, memory_order_seq_cst))
			return KEYS_REVOKED;
		if (r->expires > 0 && now_s >= r->expires)
			return KEYS_EXPIRED;
		return KEYS_OK;
	}
	return KEYS_UNKNOWN;
}

enum keys_status keys_lookup(const struct keys *k, struct slice secret, int64_t now_s,
			     const struct key_rec **rec)
{
	uint8_t hash[KEYS_HASH_LEN];
	keys_hash(secret.p, secret.n, hash);
	return keys_lookup_hash(k, hash, now_s, rec);
}

bool keys_model_allowed(const struct key_rec *rec, struct slice model)
{
	if (!rec->models)
		return true;
	for (size_t i = 0; i < rec->nmodels; i++)
		if (slice_eq_cstr(model, rec->models[i]))
			return true;
	return false;
}

/* Writer, mutex held: a slot for hash in t, or -EEXIST. */
static int probe_free(struct table *t, const uint8_t hash[KEYS_HASH_LEN], uint32_t *slot)
{
	for (uint32_t i = home(hash, t->mask), n = 0; n <= t->mask; i = (i + 1) & t->mask, n++) {
		struct key_rec *r = atomic_load_explicit(&t->slot[i], memory_order_relaxed);
		if (!r) {
			*slot = i;
			return 0;
		}
		if (memcmp(r->hash, hash, KEYS_HASH_LEN) == 0)
			return -EEXIST;
	}
	return -ENOSPC;
}

/* Writer, mutex held: a doubled table with every record, published; the old one retired. */
static int grow(struct keys *k)
{
	struct table *old = atomic_load_explicit(&k->table, memory_order_relaxed);
	if (old->mask + 1 >= TABLE_MAX)
		return -ENOSPC;
	struct table *t = table_new((old->mask + 1) * 2);
	struct retired *ret = malloc(sizeof(*ret));
	if (!t || !ret) {
		free(t);
		free(ret);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i <= old->mask; i++) {
		struct key_rec *r = atomic_load_explicit(&old->slot[i], memory_order_relaxed);
		uint32_t at;
		if (r && probe_free(t, r->hash, &at) == 0)
			atomic_store_explicit(&t->slot[at], r, memory_order_relaxed);
	}
	atomic_store_explicit(&k->table, t, memory_order_release);
	ret->table = old;
	ret->next = k->retired;
	k->retired = ret;
	return 0;
}

/* Writer, mutex held: publish rec; the table owns it from now on, unless this fails. */
static int publish(struct keys *k, struct key_rec *rec)
{
	int rc;
	if (k->nall == k->capall) {
		size_t cap = k->capall ? k->capall * 2 : 64;
		struct key_rec **all = realloc(k->all, cap * sizeof(*all));
		if (!all)
			return -ENOMEM;
		k->all = all;
		k->capall = cap;
	}
	struct table *t = atomic_load_explicit(&k->table, memory_order_relaxed);
	if ((k->count + 1) * 2 > (size_t)t->mask + 1) {
		if ((rc = grow(k)))
			return rc;
		t = atomic_load_explicit(&k->table, memory_order_relaxed);
	}
	uint32_t at;
	if ((rc = probe_free(t, rec->hash, &at)))
		return rc;
	k->all[k->nall++] = rec;
	k->count++;
	atomic_store_explicit(&t->slot[at], rec, memory_order_release);
	return 0;
}

static bool name_ok(const char *s)
{
	size_t n = s ? strnlen(s, KEYS_NAME_MAX + 1) : 0;
	return n > 0 && n <= KEYS_NAME_MAX;
}

/* A record from params (hash and id filled by the caller). */
static struct key_rec *record_from(const struct key_params *p, int64_t now_s, int *err)
{
	*err = -EINVAL;
	if (!name_ok(p->name) || (p->team && !name_ok(p->team)) || p->nmodels > KEYS_MODELS_MAX ||
	    (p->nmodels && !p->models) || p->expires < 0 || p->budget_micro_usd < 0 ||
	    (unsigned)p->budget_period > STORE_PERIOD_MONTH)
		return NULL;
	for (size_t i = 0; i < p->nmodels; i++)
		if (!name_ok(p->models[i]))
			return NULL;
	*err = -ENOMEM;
	struct key_rec *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->name = strdup(p->name);
	r->team = p->team ? strdup(p->team) : NULL;
	r->created = now_s;
	r->expires = p->expires;
	r->rpm = p->rpm;
	r->tpm = p->tpm;
	r->budget_micro_usd = p->budget_micro_usd;
	r->budget_period = p->budget_period;
	r->ratelimit_subject = p->ratelimit_subject;
	r->budget_id = p->budget_id;
	r->team_slot = p->team_slot;
	atomic_init(&r->revoked, false);
	if (p->models) {
		r->models = calloc(p->nmodels ? p->nmodels : 1, sizeof(char *));
		for (size_t i = 0; r->models && i < p->nmodels; i++) {
			if (!(r->models[i] = strdup(p->models[i])))
				break;
			r->nmodels = i + 1;
		}
		if (!r->models || r->nmodels != p->nmodels) {
			keys_record_free(r);
			return NULL;
		}
	}
	if (!r->name || (p->team && !r->team)) {
		keys_record_free(r);
		return NULL;
	}
	*err = 0;
	return r;
}

/* Persist rec and wait for its commit. */
static int persist(struct store *s, unsigned producer, int timeout_ms, const struct key_rec *rec)
{
	size_t len = 0;
	char *json = keys_record_encode(rec, &len);
	if (!json)
		return -ENOMEM;
	struct store_rec sr;
	int rc = store_rec_put(&sr, STORE_DB_KEYS, rec->hash, KEYS_HASH_LEN, json, len);
	free(json);
	if (rc)
		return rc;
	uint64_t seq = 0;
	rc = store_submit(s, producer, &sr, 1, &seq);
	if (rc) {
		store_rec_release(&sr);
		return rc;
	}
	return store_wait(s, producer, seq, timeout_ms);
}

int keys_create(struct keys *k, struct store *s, unsigned producer, int timeout_ms,
		const struct key_params *p, int64_t now_s, keys_prepare_fn prepare, void *arg,
		char secret_out[KEYS_SECRET_LEN + 1], const struct key_rec **rec)
{
	int rc;
	struct key_rec *r = record_from(p, now_s, &rc);
	if (!r)
		return rc;
	uint8_t idbytes[8];
	char id[2 + 2 * sizeof(idbytes) + 1];
	if ((rc = random_bytes(idbytes, sizeof(idbytes))) || (rc = keys_generate(secret_out))) {
		keys_record_free(r);
		return rc;
	}
	snprintf(id, sizeof(id), "k_%016" PRIx64,
		 ((uint64_t)idbytes[0] << 56 | (uint64_t)idbytes[1] << 48 |
		  (uint64_t)idbytes[2] << 40 | (uint64_t)idbytes[3] << 32 |
		  (uint64_t)idbytes[4] << 24 | (uint64_t)idbytes[5] << 16 |
		  (uint64_t)idbytes[6] << 8 | idbytes[7]));
	keys_hash(secret_out, KEYS_SECRET_LEN, r->hash);
	if (!(r->id = strdup(id))) {
		keys_record_free(r);
		OPENSSL_cleanse(secret_out, KEYS_SECRET_LEN + 1);
		return -ENOMEM;
	}
	if (prepare && (rc = prepare(arg, r)) != 0) {
		keys_record_free(r);
		OPENSSL_cleanse(secret_out, KEYS_SECRET_LEN + 1);
		return rc;
	}
	pthread_mutex_lock(&k->writer);
	rc = persist(s, producer, timeout_ms, r);
	const struct key_rec *published = r;
	if (rc == 0)
		rc = publish(k, r);
	if (rc)
		keys_record_free(r);
	pthread_mutex_unlock(&k->writer);
	if (rc) {
		OPENSSL_cleanse(secret_out, KEYS_SECRET_LEN + 1);
		return rc;
	}
	if (rec)
		*rec = published;
	return 0;
}

static struct key_rec *find_id(struct keys *k, const char *id)
{
	for (size_t i = 0; i < k->nall; i++)
		if (strcmp(k->all[i]->id, id) == 0)
			return k->all[i];
	return NULL;
}

int keys_revoke(struct keys *k, struct store *s, unsigned producer, int timeout_ms,
		const char *id)
{
	pthread_mutex_lock(&k->writer);
	struct key_rec *r = find_id(k, id);
	int rc = 0;
	if (!r)
		rc = -ENOENT;
	else if (r->bootstrap)
		rc = -EPERM;
	if (rc == 0) {
		/* Effective first (every later lookup sees it), durable second. */
		atomic_store_explicit(&r->revoked, true, memory_order_seq_cst);
		rc = persist(s, producer, timeout_ms, r);
		if (rc)
			log_error("keys: key %s is revoked in memory but persisting it failed (%s): "
				  "it would be valid again after a restart", r->id,
				  store_strerror(rc));
	}
	pthread_mutex_unlock(&k->writer);
	return rc;
}

int keys_add_bootstrap(struct keys *k, const char *secret, size_t len,
		       const struct key_params *p, int64_t now_s)
{
	int rc;
	if (!secret || len == 0)
		return -EINVAL;
	struct key_rec *r = record_from(p, now_s, &rc);
	if (!r)
		return rc;
	size_t idlen = strlen("cfg_") + strlen(p->name) + 1;
	if (!(r->id = malloc(idlen))) {
		keys_record_free(r);
		return -ENOMEM;
	}
	snprintf(r->id, idlen, "cfg_%s", p->name);
	r->bootstrap = true;
	keys_hash(secret, len, r->hash);
	pthread_mutex_lock(&k->writer);
	rc = publish(k, r);
	pthread_mutex_unlock(&k->writer);
	if (rc)
		keys_record_free(r);
	return rc;
}

struct load_ctx {
	struct keys *k;
	keys_prepare_fn prepare;
	void *arg;
	int loaded, skipped;
};

static int load_one(void *arg, const void *key, size_t key_len, const void *val, size_t val_len)
{
	struct load_ctx *c = arg;
	struct key_rec *r = NULL;
	if (key_len != KEYS_HASH_LEN || keys_record_decode(key, val, val_len, &r) != 0) {
		const uint8_t *h = key;
		log_warn("keys: skipping an unreadable key record (hash %02x%02x%02x%02x...)",
			 key_len > 0 ? h[0] : 0, key_len > 1 ? h[1] : 0, key_len > 2 ? h[2] : 0,
			 key_len > 3 ? h[3] : 0);
		c->skipped++;
		return 0;
	}
	if (c->prepare && c->prepare(c->arg, r) != 0) {
		keys_record_free(r);
		c->skipped++;
		return 0;
	}
	int rc = publish(c->k, r);
	if (rc == -EEXIST)
		log_warn("keys: key %s has the same secret as one already loaded; skipped",
			 r->id);
	if (rc)
		keys_record_free(r);
	if (rc == -EEXIST) {
		c->skipped++;
		return 0;
	}
	if (rc)
		return rc;
	c->loaded++;
	return 0;
}

int keys_load(struct keys *k, struct store_reader *r, keys_prepare_fn prepare, void *arg)
{
	struct load_ctx c = { .k = k, .prepare = prepare, .arg = arg };
	int rc = store_read_begin(r);
	if (rc)
		return rc;
	pthread_mutex_lock(&k->writer);
	rc = store_scan(r, STORE_DB_KEYS, NULL, 0, load_one, &c);
	pthread_mutex_unlock(&k->writer);
	store_read_end(r);
	return rc ? rc : c.loaded;
}

void keys_foreach(struct keys *k, void (*fn)(void *arg, const struct key_rec *rec), void *arg)
{
	pthread_mutex_lock(&k->writer);
	for (size_t i = 0; i < k->nall; i++)
		fn(arg, k->all[i]);
	pthread_mutex_unlock(&k->writer);
}

size_t keys_count(struct keys *k)
{
	pthread_mutex_lock(&k->writer);
	size_t n = k->count;
	pthread_mutex_unlock(&k->writer);
	return n;
}
