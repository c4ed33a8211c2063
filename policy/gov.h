/* gov.h - governance on the request path: who is calling (virtual and bootstrap keys,
 * teams), may they (model access, rate limits, budgets) and what it cost (settlement, the
 * spend ledger persisted by the store thread).
 *
 * One gov per process, built from the config: it opens the LMDB store in data_dir, loads
 * the issued keys and the spend of the current budget periods, and adds the config's
 * teams and bootstrap keys. Workers call gov_authenticate, gov_admit and gov_settle
 * (lock-free: keys, ratelimit and budget are); the admin plane calls the gov_key_* and
 * report functions from its own thread (producer gov_admin_producer()).
 *
 * The spend ledger: besides the budgets' own counters, every settled request adds its cost,
 * tokens and one request to three daily records (scope STORE_SCOPE_LEDGER_KEY / _TEAM /
 * _MODEL, period DAY) in the same store unit as the budget records, so reports by key,
 * team or model over any range of days never disagree with each other.
 */
#ifndef PENSTOCK_GOV_H
#define PENSTOCK_GOV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/str.h"
#include "policy/audit.h"
#include "policy/budget.h"
#include "policy/keys.h"
#include "policy/store.h"
#include "providers/translate.h"

struct gov;

/* A team from the config. */
struct gov_team {
	const char *name;        /* owned by the config */
	const char *const *models; /* allowed model names; NULL = all */
	size_t nmodels;
	uint32_t ratelimit_subject; /* KEYS_NONE: no rpm/tpm */
	uint32_t budget_id;         /* KEYS_NONE: no budget */
};

/* Open the store (producers: workers + 1 for the admin plane), load keys and spend, add the
 * config's teams and bootstrap keys. NULL with err filled on failure (an unset key_env,
 * a data_dir that cannot be opened, a store of another schema). */
struct gov *gov_open(const struct config *cfg, unsigned workers, char *err, size_t errlen);
/* After the workers have stopped: the store thread commits what is queued, then exits. */
void gov_close(struct gov *g);

/* ---- the request path (workers) ---- */

/* Who is calling. team is NULL for a key without one. */
struct gov_caller {
	const struct key_rec *key;
	const struct gov_team *team;
	/* The team's model list as the caller's configuration has it (NULL: every model). A
	 * reload may change it: gov_authenticate sets the list the process started with, the
	 * pipeline the one of the config snapshot the request runs on. */
	const char *const *team_models;
	size_t team_nmodels;
};

/* Look the presented secret up. KEYS_OK fills c. */
enum keys_status gov_authenticate(struct gov *g, struct slice secret, int64_t now_s,
				  struct gov_caller *c);
/* May c call the catalog model `model` (key's and team's lists)? /v1/models lists only
 * those. */
bool gov_model_allowed(const struct gov *g, const struct gov_caller *c, struct slice model);

/* What a request holds between admission and settlement. Lives in the request's state. */
struct gov_ticket {
	struct gov_caller caller;
	const struct config_model *model;
	struct budget_prices prices;
	uint32_t subjects[2];     /* rate-limit subjects taken: key's, team's */
	unsigned nsubjects;
	uint64_t tokens_estimate; /* TPM taken at admission */
	uint64_t completion_allowance; /* completion tokens the reservation covers */
	struct budget_resv resv;
	bool held;                /* admitted and not yet settled or released */
};

/* Why a request was refused, ready for the caller's dialect. */
struct gov_refusal {
	int status;               /* 403 or 429 */
	enum xlat_err_kind kind;  /* XERR_PERMISSION, XERR_RATE_LIMIT, XERR_BUDGET */
	const char *code;         /* "model_not_allowed", "rate_limit_exceeded", "budget_exceeded" */
	char message[256];
	char headers[512];        /* "Name: value\r\n" lines: retry-after, x-ratelimit-* */
};

/* Admission for one catalog model (from the caller's config snapshot, which must outlive
 * the ticket; charged at `prices`): access, then rate limits (one request and
 * prompt_tokens of TPM, per key and team), then the budgets (the worst case:
 * prompt_upper input tokens and max_completion output tokens at the model's prices).
 * shrink (a stream, which the gateway can end where its budget does): when the worst case
 * does not fit, admit it for the completion tokens the budgets can still pay for;
 * t->completion_allowance says how many, and the pipeline cuts the stream there.
 * All or nothing: false leaves nothing held and fills r. */
bool gov_admit(struct gov *g, unsigned worker, const struct gov_caller *c,
	       const struct config_model *model, const struct budget_prices *prices,
	       uint64_t prompt_tokens, uint64_t prompt_upper, uint64_t max_completion, bool shrink,
	       int64_t now_ns, int64_t now_s, struct gov_ticket *t, struct gov_refusal *r);

/* What a request used, as billed (the provider's usage, or the gateway's own count). */
struct gov_usage {
	uint64_t prompt_tokens, completion_tokens, cached_tokens;
};

/* The request ended: TPM corrected, budgets settled with the real cost, the ledger and
 * budget records handed to the store thread. Returns the cost in micro-USD. A ticket that
 * is not held is ignored (0).
 * a (may be NULL): the request's audit record; its tokens and cost are filled in here and
 * it joins the spend records in ONE store unit, so the audit trail and the ledger commit
 * together or not at all (with audit.enabled false: filled in, not written). *seq (may be NULL): the unit's last store sequence number, for
 * store_outcome(); 0 if nothing was queued (ring full: counted and logged). */
int64_t gov_settle(struct gov *g, unsigned worker, struct gov_ticket *t,
		   const struct gov_usage *u, int64_t now_ns, int64_t now_s, struct audit_rec *a,
		   uint64_t *seq);

/* An audit record with nothing to spend (refused, or no provider served it). 0 and *seq,
 * or -EAGAIN (ring full: counted and logged) or -EINVAL. With audit.enabled false: 0 and
 * *seq 0, nothing written. */
int gov_audit(struct gov *g, unsigned worker, const struct audit_rec *a, uint64_t *seq);
/* audit.durability is strict: a response may complete only once its record committed. */
bool gov_audit_strict(const struct gov *g);

/* The request never reached a provider: nothing is charged, its TPM and budget
 * reservation are given back. A ticket that is not held is ignored. */
void gov_release(struct gov *g, unsigned worker, struct gov_ticket *t, int64_t now_ns);

/* ---- the admin plane (one thread) ---- */

unsigned gov_admin_producer(const struct gov *g);
struct store *gov_store(struct gov *g);
struct keys *gov_keys(struct gov *g);
struct budget *gov_budget(struct gov *g);
const struct gov_team *gov_team(const struct gov *g, const char *name);
const struct gov_team *gov_teams(const struct gov *g, size_t *n);

/* A config reload: the teams' limits and budgets take next's values (the pool fill and
 * the spend stay). next must have the same teams, in the same order, with limits and
 * budgets where the running ones have them and the same budget periods (policy/snapshot
 * checks that first). The control thread, serialised with other reloads. 0, or -1 with
 * err filled and nothing changed. */
int gov_reload_teams(struct gov *g, const struct config *next, char *err, size_t errlen);

/* Where the admin plane looks up the catalog: a reload replaces the config's models (the
 * pipeline's). Before the admin plane starts. */
void gov_set_catalog(struct gov *g, bool (*has_model)(void *ctx, const char *name), void *ctx);
bool gov_has_model(struct gov *g, const char *name);

/* Issue a key: the team must exist (or be NULL), its models must be in the catalog, and
 * its own limits and budget get a rate-limit subject and a budget. The secret is written
 * to secret_out once. Returns 0, or -1 with a message for the admin caller in err. */
int gov_key_create(struct gov *g, const struct key_params *p, int64_t now_s,
		   char secret_out[KEYS_SECRET_LEN + 1], const struct key_rec **rec, char *err,
		   size_t errlen);
/* Revoke an issued key by id: every worker refuses it before this returns. 0, or -1
 * with err ("no key ...", "bootstrap keys are revoked by removing them from the config",
 * or the store's error: revoked in memory but not yet persisted). */
int gov_key_revoke(struct gov *g, const char *id, char *err, size_t errlen);

#endif
