/* gov.c - keys, teams, limits, budgets and the spend ledger, put together for the pipeline
 * and the admin plane. The modules do the work; this file decides who holds what. */
#include "gov.h"

#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "policy/ratelimit.h"

#define SUBJECTS_MAX 4096 /* rate-limit subjects: teams plus keys with their own limits */
#define BUDGETS_MAX 4096
#define KEYS_EXPECTED 1024
#define STORE_WAIT_MS 5000 /* the admin plane waits this long for a key's commit */
#define GOV_MIN_COMPLETION 16 /* a stream the budget can pay fewer tokens for is refused */

struct gov {
	const struct config *cfg;
	/* the current catalog (a reload may change it); NULL: cfg's */
	bool (*has_model)(void *ctx, const char *name);
	void *has_model_ctx;
	unsigned workers;
	struct store *store;
	struct keys *keys;
	struct ratelimit *rl;
	struct budget *budget;
	struct gov_team *teams;
	size_t nteams;
	_Atomic uint64_t ledger_dropped; /* settlements the store ring had no room for */
	_Atomic uint64_t audit_dropped;  /* audit records without spend the ring refused */
	bool audit;  /* audit.enabled: records are written */
	bool strict; /* audit.durability strict (and enabled) */
};

static const uint16_t alert_thresholds[] = { 50, 80, 100 };

static int64_t now_realtime_s(void) { return (int64_t)time(NULL); }

static int64_t now_monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static enum store_period period_of(const char *name)
{
	if (!name || strcmp(name, "monthly") == 0)
		return STORE_PERIOD_MONTH;
	if (strcmp(name, "daily") == 0)
		return STORE_PERIOD_DAY;
	if (strcmp(name, "weekly") == 0)
		return STORE_PERIOD_WEEK;
	return STORE_PERIOD_TOTAL;
}

const struct gov_team *gov_team(const struct gov *g, const char *name)
{
	for (size_t i = 0; name && i < g->nteams; i++)
		if (strcmp(g->teams[i].name, name) == 0)
			return &g->teams[i];
	return NULL;
}

const struct gov_team *gov_teams(const struct gov *g, size_t *n)
{
	*n = g->nteams;
	return g->teams;
}

/* The index of the team named name in g->teams, KEYS_NONE if there is none. */
static uint32_t team_slot(const struct gov *g, const char *name)
{
	const struct gov_team *t = gov_team(g, name);
	return t ? (uint32_t)(t - g->teams) : KEYS_NONE;
}

/* A key's team, and its own limits and budget: a rate-limit subject and a budget of its
 * own. */
static int key_limits(struct gov *g, struct key_rec *rec)
{
	rec->team_slot = team_slot(g, rec->team);
	rec->ratelimit_subject = KEYS_NONE;
	rec->budget_id = KEYS_NONE;
	if (rec->rpm || rec->tpm) {
		struct ratelimit_spec spec = { .rpm = rec->rpm, .tpm = rec->tpm };
		int rc = ratelimit_add(g->rl, &spec, &rec->ratelimit_subject);
		if (rc)
			return rc;
	}
	if (rec->budget_micro_usd > 0) {
		struct budget_spec spec = { .scope = STORE_SCOPE_KEY, .id = rec->hash,
					    .id_len = KEYS_HASH_LEN, .period = rec->budget_period,
					    .limit_micro_usd = rec->budget_micro_usd };
		int rc = budget_add(g->budget, &spec, &rec->budget_id);
		if (rc)
			return rc;
	}
	return 0;
}

static int prepare_loaded_key(void *arg, struct key_rec *rec)
{
	struct gov *g = arg;
	int rc = key_limits(g, rec);
	if (rc)
		log_warn("key %s: its limits could not be set up (%s); it is not loaded", rec->id,
			 strerror(-rc));
	return rc;
}

static int64_t budget_micro_usd(const struct config_team *ct)
{
	return (int64_t)(ct->budget_usd * 1e6 + 0.5);
}

static int add_teams(struct gov *g, char *err, size_t errlen)
{
	const struct config *cfg = g->cfg;
	g->teams = calloc(cfg->nteams + 1, sizeof(*g->teams));
	if (!g->teams)
		return -ENOMEM;
	for (size_t i = 0; i < cfg->nteams; i++) {
		const struct config_team *ct = &cfg->teams[i];
		struct gov_team *t = &g->teams[g->nteams++];
		t->name = ct->name;
		t->models = (const char *const *)ct->models;
		t->nmodels = ct->nmodels;
		t->ratelimit_subject = KEYS_NONE;
		t->budget_id = KEYS_NONE;
		if (ct->rpm || ct->tpm) {
			struct ratelimit_spec spec = { .rpm = ct->rpm, .tpm = ct->tpm };
			int rc = ratelimit_add(g->rl, &spec, &t->ratelimit_subject);
			if (rc) {
				snprintf(err, errlen, "team %s: limits: %s", ct->name, strerror(-rc));
				return rc;
			}
		}
		if (ct->budget_usd > 0) {
			struct budget_spec spec = {
				.scope = STORE_SCOPE_TEAM, .id = ct->name, .id_len = strlen(ct->name),
				.period = period_of(ct->budget_period),
				.limit_micro_usd = budget_micro_usd(ct),
			};
			int rc = budget_add(g->budget, &spec, &t->budget_id);
			if (rc) {
				snprintf(err, errlen, "team %s: budget: %s", ct->name, strerror(-rc));
				return rc;
			}
		}
	}
	return 0;
}

static int add_bootstrap_keys(struct gov *g, int64_t now_s, char *err, size_t errlen)
{
	const struct config *cfg = g->cfg;
	for (size_t i = 0; i < cfg->nkeys; i++) {
		const struct config_key *ck = &cfg->keys[i];
		char serr[256] = "";
		char *secret = config_resolve_secret(&ck->key, serr, sizeof(serr));
		if (!secret) {
			snprintf(err, errlen, "key %s: %s", ck->name,
				 serr[0] ? serr : "no key_env, key_file or key given");
			return -EINVAL;
		}
		struct key_params p = { .name = ck->name, .team = ck->team,
					.ratelimit_subject = KEYS_NONE, .budget_id = KEYS_NONE,
					.team_slot = team_slot(g, ck->team) };
		int rc = keys_add_bootstrap(g->keys, secret, strlen(secret), &p, now_s);
		explicit_bzero(secret, strlen(secret));
		free(secret);
		if (rc) {
			snprintf(err, errlen, "key %s: %s", ck->name,
				 rc == -EEXIST ? "the same secret as another key" : strerror(-rc));
			return rc;
		}
	}
	return 0;
}

static int load_store(struct gov *g, int64_t now_s, char *err, size_t errlen)
{
	int rc = 0;
	struct store_reader *r = store_reader_new(g->store, &rc);
	if (!r) {
		snprintf(err, errlen, "%s: %s", g->cfg->data_dir, store_strerror(rc));
		return rc ? rc : -ENOMEM;
	}
	int n = keys_load(g->keys, r, prepare_loaded_key, g);
	if (n < 0) {
		snprintf(err, errlen, "%s: loading keys: %s", g->cfg->data_dir, store_strerror(n));
		rc = n;
	} else if ((rc = budget_load(g->budget, r, now_s)) != 0) {
		snprintf(err, errlen, "%s: loading spend: %s", g->cfg->data_dir, store_strerror(rc));
	} else if (n) {
		log_info("%d issued key(s) loaded from %s", n, g->cfg->data_dir);
	}
	store_reader_free(r);
	return rc;
}

struct gov *gov_open(const struct config *cfg, unsigned workers, char *err, size_t errlen)
{
	struct gov *g = calloc(1, sizeof(*g));
	if (!g) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	g->cfg = cfg;
	g->workers = workers;
	int rc = 0;
	const char *durability = cfg->audit.durability ? cfg->audit.durability : "batch";
	g->audit = cfg->audit.enabled;
	g->strict = g->audit && strcmp(durability, "strict") == 0;
	if (!g->audit)
		log_warn("audit is disabled (audit.enabled: false): no audit records are written; "
			 "spend is still persisted");
	struct store_options so = {
		.dir = cfg->data_dir,
		.producers = workers + 1,
		.durability = g->strict ? STORE_DURABILITY_STRICT : STORE_DURABILITY_BATCH,
		.audit_retention_ms = cfg->audit.test_retention_ms
					      ? cfg->audit.test_retention_ms
					      : (uint64_t)cfg->audit.retention_days * 86400000u,
	};
	int64_t now_s = now_realtime_s();
	g->store = store_open(&so, &rc);
	if (!g->store) {
		snprintf(err, errlen, "data_dir %s: %s", cfg->data_dir, store_strerror(rc));
		goto fail;
	}
	g->rl = ratelimit_new(workers, SUBJECTS_MAX, now_monotonic_ns(), &rc);
	g->budget = budget_new(BUDGETS_MAX, alert_thresholds,
			       sizeof(alert_thresholds) / sizeof(alert_thresholds[0]), &rc);
	g->keys = keys_new(KEYS_EXPECTED, &rc);
	if (!g->rl || !g->budget || !g->keys) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	if (add_teams(g, err, errlen) || load_store(g, now_s, err, errlen) ||
	    add_bootstrap_keys(g, now_s, err, errlen))
		goto fail;
	return g;
fail:
	gov_close(g);
	return NULL;
}

void gov_close(struct gov *g)
{
	if (!g)
		return;
	if (g->store)
		store_close(g->store);
	keys_free(g->keys);
	budget_free(g->budget);
	ratelimit_free(g->rl);
	free(g->teams);
	free(g);
}

unsigned gov_admin_producer(const struct gov *g) { return g->workers; }
struct store *gov_store(struct gov *g) { return g->store; }
struct keys *gov_keys(struct gov *g) { return g->keys; }
struct budget *gov_budget(struct gov *g) { return g->budget; }

/* ---- the request path ---- */

enum keys_status gov_authenticate(struct gov *g, struct slice secret, int64_t now_s,
				  struct gov_caller *c)
{
	const struct key_rec *rec;
	enum keys_status st = keys_lookup(g->keys, secret, now_s, &rec);
	if (st == KEYS_OK) {
		c->key = rec;
		c->team = rec->team_slot != KEYS_NONE ? &g->teams[rec->team_slot] : NULL;
		c->team_models = c->team ? c->team->models : NULL;
		c->team_nmodels = c->team ? c->team->nmodels : 0;
	}
	return st;
}

static bool in_list(const char *const *list, size_t n, struct slice name)
{
	for (size_t i = 0; i < n; i++)
		if (slice_eq_cstr(name, list[i]))
			return true;
	return false;
}

bool gov_model_allowed(const struct gov *g, const struct gov_caller *c, struct slice model)
{
	if (!keys_model_allowed(c->key, model))
		return false;
	return !c->team || !c->team_models || in_list(c->team_models, c->team_nmodels, model);
}

static void refuse(struct gov_refusal *r, int status, enum xlat_err_kind kind, const char *code)
{
	r->status = status;
	r->kind = kind;
	r->code = code;
	r->message[0] = r->headers[0] = 0;
}

static void ratelimit_refusal(struct gov_refusal *r, enum ratelimit_verdict v,
			      const struct ratelimit_info *info, const char *who)
{
	refuse(r, 429, XERR_RATE_LIMIT, "rate_limit_exceeded");
	snprintf(r->message, sizeof(r->message),
		 v == RATELIMIT_REQUESTS ? "Rate limit reached for %s: requests per minute."
		 : v == RATELIMIT_TOKENS ? "Rate limit reached for %s: tokens per minute."
					 : "Request too large for %s: its prompt alone is over the "
					   "tokens-per-minute limit.",
		 who);
	/* a dimension without a limit (0) has no x-ratelimit-* headers, as with OpenAI */
	int n = snprintf(r->headers, sizeof(r->headers), "retry-after: %u\r\n",
			 info->retry_after_s ? info->retry_after_s : 1);
	if (info->limit_requests)
		n += snprintf(r->headers + n, sizeof(r->headers) - (size_t)n,
			      "x-ratelimit-limit-requests: %llu\r\n"
			      "x-ratelimit-remaining-requests: %llu\r\n",
			      (unsigned long long)info->limit_requests,
			      (unsigned long long)info->remaining_requests);
	if (info->limit_tokens)
		snprintf(r->headers + n, sizeof(r->headers) - (size_t)n,
			 "x-ratelimit-limit-tokens: %llu\r\nx-ratelimit-remaining-tokens: %llu\r\n",
			 (unsigned long long)info->limit_tokens,
			 (unsigned long long)info->remaining_tokens);
}

/* Completion tokens every one of the budgets can still pay for after the prompt. */
static uint64_t affordable_completion(struct gov *g, const uint32_t *ids, unsigned n,
				      uint64_t prompt, const struct budget_prices *p, int64_t now_s)
{
	if (p->output <= 0)
		return 0;
	int64_t left = INT64_MAX;
	for (unsigned i = 0; i < n; i++) {
		struct budget_status st;
		if (budget_status(g->budget, ids[i], now_s, &st) || !st.limit[BUDGET_USD])
			continue;
		int64_t l = st.limit[BUDGET_USD] - st.spent[BUDGET_USD] - st.reserved[BUDGET_USD];
		if (l < left)
			left = l;
	}
	left -= budget_worst_case_micro_usd(prompt, 0, p);
	if (left <= 0)
		return 0;
	return (uint64_t)((unsigned __int128)left * 1000000 / (uint64_t)p->output);
}

bool gov_admit(struct gov *g, unsigned worker, const struct gov_caller *c,
	       const struct config_model *model, const struct budget_prices *prices,
	       uint64_t prompt_tokens, uint64_t prompt_upper, uint64_t max_completion, bool shrink,
	       int64_t now_ns, int64_t now_s, struct gov_ticket *t, struct gov_refusal *r)
{
	*t = (struct gov_ticket){ .caller = *c, .model = model, .prices = *prices,
				  .tokens_estimate = prompt_tokens };
	if (!gov_model_allowed(g, c, slice_cstr(model->name))) {
		refuse(r, 403, XERR_PERMISSION, "model_not_allowed");
		snprintf(r->message, sizeof(r->message),
			 "The key '%s' may not use the model `%s`.", c->key->name, model->name);
		return false;
	}

	uint32_t subj[2];
	const char *who[2];
	unsigned ns = 0;
	if (c->key->ratelimit_subject != KEYS_NONE) {
		who[ns] = "this key";
		subj[ns++] = c->key->ratelimit_subject;
	}
	if (c->team && c->team->ratelimit_subject != KEYS_NONE) {
		who[ns] = "this team";
		subj[ns++] = c->team->ratelimit_subject;
	}
	for (unsigned i = 0; i < ns; i++) {
		struct ratelimit_info info;
		enum ratelimit_verdict v = ratelimit_acquire(g->rl, worker, subj[i], 1,
							     prompt_tokens, now_ns, &info);
		if (v == RATELIMIT_ADMIT)
			continue;
		ratelimit_refusal(r, v, &info, who[i]);
		while (i--)
			ratelimit_cancel(g->rl, worker, subj[i], 1, prompt_tokens);
		return false;
	}

	uint32_t ids[2];
	unsigned nb = 0;
	if (c->key->budget_id != KEYS_NONE)
		ids[nb++] = c->key->budget_id;
	if (c->team && c->team->budget_id != KEYS_NONE)
		ids[nb++] = c->team->budget_id;
	int64_t worst = budget_worst_case_micro_usd(prompt_upper, max_completion, &t->prices);
	struct budget_refusal br;
	bool held = !nb || budget_reserve(g->budget, ids, nb, worst, prompt_upper + max_completion,
					  now_s, &t->resv, &br);
	if (!held && shrink && br.dim == BUDGET_USD) {
		/* A stream can be cut where its budget ends: admit it for the completion the
		 * budgets can still pay for, if that is worth starting. */
		uint64_t fits = affordable_completion(g, ids, nb, prompt_upper, &t->prices, now_s);
		if (fits >= GOV_MIN_COMPLETION && fits < max_completion) {
			max_completion = fits;
			worst = budget_worst_case_micro_usd(prompt_upper, max_completion, &t->prices);
			held = budget_reserve(g->budget, ids, nb, worst,
					      prompt_upper + max_completion, now_s, &t->resv, &br);
		}
	}
	if (!held) {
		for (unsigned i = 0; i < ns; i++)
			ratelimit_cancel(g->rl, worker, subj[i], 1, prompt_tokens);
		refuse(r, 429, XERR_BUDGET, "budget_exceeded");
		bool team = c->team && br.id == c->team->budget_id;
		snprintf(r->message, sizeof(r->message),
			 "Budget exceeded for %s: %.2f of %.2f USD used this period, and this "
			 "request could cost up to %.4f USD.",
			 team ? "this team" : "this key", (double)br.used / 1e6,
			 (double)br.limit / 1e6, (double)worst / 1e6);
		if (br.resets_at != INT64_MAX && br.resets_at > now_s)
			snprintf(r->headers, sizeof(r->headers), "retry-after: %lld\r\n",
				 (long long)(br.resets_at - now_s));
		return false;
	}
	memcpy(t->subjects, subj, sizeof(subj[0]) * ns);
	t->nsubjects = ns;
	t->completion_allowance = max_completion;
	t->held = true;
	return true;
}

/* The ledger's three daily records for this request, after the budgets' records. */
static unsigned ledger_records(const struct gov_ticket *t, const struct store_spend *d,
			       int64_t now_s, struct store_rec *recs)
{
	int64_t day = budget_period_start(STORE_PERIOD_DAY, now_s);
	struct store_spend_key k = { .scope = STORE_SCOPE_LEDGER_KEY, .period = STORE_PERIOD_DAY,
				     .start = (uint64_t)day, .id_len = KEYS_HASH_LEN };
	unsigned n = 0;
	memcpy(k.id, t->caller.key->hash, KEYS_HASH_LEN);
	if (store_rec_spend_add(&recs[n], &k, d) == 0)
		n++;
	const char *names[2] = { t->caller.team ? t->caller.team->name : NULL, t->model->name };
	enum store_scope scopes[2] = { STORE_SCOPE_LEDGER_TEAM, STORE_SCOPE_LEDGER_MODEL };
	for (unsigned i = 0; i < 2; i++) {
		size_t len = names[i] ? strlen(names[i]) : 0;
		if (!len || len > STORE_ID_MAX)
			continue;
		k.scope = scopes[i];
		k.id_len = (uint8_t)len;
		memcpy(k.id, names[i], len);
		if (store_rec_spend_add(&recs[n], &k, d) == 0)
			n++;
	}
	return n;
}

/* The audit record's content, as the unit's last record: encoded into small
 * (AUDIT_CONTENT_MAX bytes), which the record borrows until store_submit() copies it (no
 * allocation per request), or with bodies on the heap. False if it cannot be made. */
static bool audit_record(const struct audit_rec *a, struct store_rec *r, uint8_t *small)
{
	size_t cap = audit_encode_bound(a);
	if (cap <= AUDIT_CONTENT_MAX) {
		size_t len = audit_encode(a, small, cap);
		return len && store_rec_audit_ref(r, small, len) == 0;
	}
	uint8_t *content = malloc(cap);
	size_t len = content ? audit_encode(a, content, cap) : 0;
	bool ok = len && store_rec_audit(r, content, len) == 0;
	free(content);
	return ok;
}

bool gov_audit_strict(const struct gov *g) { return g->strict; }

int gov_audit(struct gov *g, unsigned worker, const struct audit_rec *a, uint64_t *seq)
{
	struct store_rec r;
	uint8_t small[AUDIT_CONTENT_MAX];
	*seq = 0;
	if (!g->audit)
		return 0;
	if (!audit_record(a, &r, small))
		return -EINVAL;
	int rc = store_submit(g->store, worker, &r, 1, seq);
	if (rc) {
		store_rec_release(&r);
		if (atomic_fetch_add(&g->audit_dropped, 1) % 1000 == 0)
			log_warn("the store's ring is full: an audit record was not persisted");
	}
	return rc;
}

int64_t gov_settle(struct gov *g, unsigned worker, struct gov_ticket *t,
		   const struct gov_usage *u, int64_t now_ns, int64_t now_s, struct audit_rec *a,
		   uint64_t *seq)
{
	if (seq)
		*seq = 0;
	if (!t->held)
		return 0;
	t->held = false;
	uint64_t actual = u->prompt_tokens + u->completion_tokens;
	for (unsigned i = 0; i < t->nsubjects; i++)
		ratelimit_settle(g->rl, worker, t->subjects[i], t->tokens_estimate, actual, now_ns);
	int64_t cost = cost_micro_usd(u->prompt_tokens, u->completion_tokens, u->cached_tokens,
				      &t->prices);
	struct store_rec recs[BUDGET_RESV_MAX + 4];
	uint8_t small[AUDIT_CONTENT_MAX]; /* the audit record's content, borrowed until submit */
	static_assert(BUDGET_RESV_MAX + 4 <= STORE_UNIT_MAX, "a settlement is one store unit");
	struct budget_alert alerts[BUDGET_RESV_MAX * 2 * BUDGET_THRESHOLDS_MAX];
	unsigned nalerts = 0, n = 0;
	if (t->resv.n) {
		struct budget_usage bu = { .micro_usd = cost, .input_tokens = u->prompt_tokens,
					   .output_tokens = u->completion_tokens };
		nalerts = budget_settle(g->budget, &t->resv, &bu, recs, alerts);
		n = t->resv.n;
	}
	struct store_spend d = { .micro_usd = cost, .input_tokens = (int64_t)u->prompt_tokens,
				 .output_tokens = (int64_t)u->completion_tokens, .requests = 1 };
	n += ledger_records(t, &d, now_s, recs + n);
	if (a) {
		a->prompt_tokens = u->prompt_tokens;
		a->completion_tokens = u->completion_tokens;
		a->cached_tokens = u->cached_tokens;
		a->cost_micro_usd = cost;
		if (g->audit && audit_record(a, &recs[n], small))
			n++;
	}
	if (n && store_submit(g->store, worker, recs, n, seq) != 0) {
		for (unsigned i = 0; i < n; i++)
			store_rec_release(&recs[i]);
		if (atomic_fetch_add(&g->ledger_dropped, 1) % 1000 == 0)
			log_warn("the store's ring is full: spend of a request was not persisted "
				 "(counted in memory)");
	}
	for (unsigned i = 0; i < nalerts; i++)
		log_warn("budget alert: %s %s at %u%% (%.2f of %.2f %s)",
			 t->caller.team && alerts[i].id == t->caller.team->budget_id ? "team" : "key",
			 t->caller.team && alerts[i].id == t->caller.team->budget_id
				 ? t->caller.team->name
				 : t->caller.key->id,
			 alerts[i].percent,
			 (double)alerts[i].spent / (alerts[i].dim == BUDGET_USD ? 1e6 : 1),
			 (double)alerts[i].limit / (alerts[i].dim == BUDGET_USD ? 1e6 : 1),
			 alerts[i].dim == BUDGET_USD ? "USD" : "tokens");
	return cost;
}

void gov_release(struct gov *g, unsigned worker, struct gov_ticket *t, int64_t now_ns)
{
	if (!t->held)
		return;
	t->held = false;
	for (unsigned i = 0; i < t->nsubjects; i++)
		ratelimit_settle(g->rl, worker, t->subjects[i], t->tokens_estimate, 0, now_ns);
	if (t->resv.n)
		budget_release(g->budget, &t->resv);
}

/* ---- the admin plane ---- */

int gov_reload_teams(struct gov *g, const struct config *next, char *err, size_t errlen)
{
	if (next->nteams != g->nteams) {
		snprintf(err, errlen, "teams: a team added or removed takes a restart");
		return -1;
	}
	/* all checked before anything changes */
	for (size_t i = 0; i < g->nteams; i++) {
		const struct config_team *ct = &next->teams[i];
		const struct gov_team *t = &g->teams[i];
		if (ct->rpm > RATELIMIT_LIMIT_MAX || ct->tpm > RATELIMIT_LIMIT_MAX ||
		    budget_micro_usd(ct) > BUDGET_LIMIT_MAX || strcmp(ct->name, t->name) != 0 ||
		    (t->ratelimit_subject != KEYS_NONE) != (ct->rpm || ct->tpm) ||
		    (t->budget_id != KEYS_NONE) != (ct->budget_usd > 0)) {
			snprintf(err, errlen, "team %s: limits or budget that cannot change on a "
					      "reload", ct->name);
			return -1;
		}
	}
	for (size_t i = 0; i < g->nteams; i++) {
		const struct config_team *ct = &next->teams[i];
		const struct gov_team *t = &g->teams[i];
		int rc = 0;
		if (t->ratelimit_subject != KEYS_NONE)
			rc = ratelimit_set(g->rl, t->ratelimit_subject,
					   &(struct ratelimit_spec){ .rpm = ct->rpm, .tpm = ct->tpm });
		if (!rc && t->budget_id != KEYS_NONE)
			rc = budget_set_limits(g->budget, t->budget_id, budget_micro_usd(ct), 0);
		assert(rc == 0); /* the values were checked above */
	}
	return 0;
}

void gov_set_catalog(struct gov *g, bool (*has_model)(void *ctx, const char *name), void *ctx)
{
	g->has_model = has_model;
	g->has_model_ctx = ctx;
}

bool gov_has_model(struct gov *g, const char *name)
{
	return g->has_model ? g->has_model(g->has_model_ctx, name)
			    : config_find_model(g->cfg, name) != NULL;
}

int gov_key_create(struct gov *g, const struct key_params *p, int64_t now_s,
		   char secret_out[KEYS_SECRET_LEN + 1], const struct key_rec **rec, char *err,
		   size_t errlen)
{
	if (p->team && !gov_team(g, p->team)) {
		snprintf(err, errlen, "no team named '%s' in the configuration", p->team);
		return -1;
	}
	for (size_t i = 0; i < p->nmodels; i++)
		if (!gov_has_model(g, p->models[i])) {
			snprintf(err, errlen, "no model named '%s' in the catalog", p->models[i]);
			return -1;
		}
	/* The key's own limits get a subject and a budget as the record is made (they are
	 * never removed: a create that fails to commit leaves an unused slot, bounded by
	 * SUBJECTS_MAX / BUDGETS_MAX). */
	int rc = keys_create(g->keys, g->store, gov_admin_producer(g), STORE_WAIT_MS, p, now_s,
			     prepare_loaded_key, g, secret_out, rec);
	if (rc) {
		snprintf(err, errlen, "%s", rc == -EINVAL ? "invalid key parameters"
					    : rc == -ENOSPC ? "too many keys with their own limits"
							    : store_strerror(rc));
		return -1;
	}
	return 0;
}

int gov_key_revoke(struct gov *g, const char *id, char *err, size_t errlen)
{
	int rc = keys_revoke(g->keys, g->store, gov_admin_producer(g), STORE_WAIT_MS, id);
	if (rc == 0)
		return 0;
	if (rc == -ENOENT)
		snprintf(err, errlen, "no key with id '%s'", id);
	else if (rc == -EPERM)
		snprintf(err, errlen, "'%s' is a bootstrap key: remove it from the configuration "
			 "and reload", id);
	else
		snprintf(err, errlen, "revoked on every worker, but not persisted (%s): it would "
			 "come back after a restart", store_strerror(rc));
	return -1;
}
