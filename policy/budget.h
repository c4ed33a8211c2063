/* budget.h - hard spend limits per key and per team, in integer micro-dollars (and optionally
 * tokens), over UTC calendar periods, with reservations so concurrent requests never
 * overshoot.
 *
 * Each budget keeps, per limited dimension (micro-USD, tokens), one atomic 64-bit word
 * `used` = settled spend + outstanding reservations of the current period, packed with the
 * period's sequence number (16 bits | 48 bits of amount). Admission reserves the worst case
 * with one CAS that fails when used + worst > limit; the end of the request replaces the
 * reservation by the real cost with another. A new period is a CAS that installs the new
 * sequence number with 0, so the reset and the first reservation of a period are one step
 * and no thread can add to an old period's word after it. No lock, no syscall, no LMDB.
 *
 * The guarantee: while every request's real cost is at most what it reserved, settled spend
 * + reservations never exceed the limit, however many threads race. A request that costs
 * more than its reservation (a prompt estimate below the real count) is still charged in
 * full - the money was spent - and the excess is counted in budget_stats.overrun.
 *
 * A reservation belongs to the period it was made in: a request admitted at 23:59:59 and
 * settled after midnight is charged to the day it was admitted, and releases nothing from
 * the new day.
 *
 * Persistence: budget_settle() fills one store ADD record per budget (scope, period, period
 * start, id -> micro_usd, input and output tokens, requests) for the caller to submit to its
 * store ring with the request's audit record, as one unit: the store thread commits them in
 * its next group commit. budget_load() reads the current period's counters at start. So
 * spend survives restarts; a crash loses at most what sat in the ring (never counted twice).
 *
 * Alerts: thresholds (percent of a limit, default 50/80/100) fire once per budget, dimension
 * and period: exactly one budget_settle() call - the one whose spend crosses it - reports it.
 *
 * Threads: reserve/settle/release from any thread, concurrently. budget_add/set/load are the
 * control thread's; an id must reach workers through a release/acquire publication.
 */
#ifndef PENSTOCK_BUDGET_H
#define PENSTOCK_BUDGET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "policy/store.h"

#define BUDGET_LIMIT_MAX (INT64_C(1) << 47) /* micro-USD ($140 M) or tokens, per period */
#define BUDGET_RESV_MAX 4      /* budgets one request is held to (key, team, ...) */
#define BUDGET_THRESHOLDS_MAX 8
#define BUDGET_TOKENS_MAX (UINT64_C(1) << 32) /* per request and count, larger is clamped */

/* ---- prices and cost ---- */

/* Micro-dollars per million tokens: USD per million tokens * 1e6, rounded to nearest
 * (2.50 -> 2500000) - the doubles in the catalog are decimal prices, so this only removes
 * their binary representation error. */
struct budget_prices {
	int64_t input, output, cached_input;
};

/* From the model catalog; a cached price of 0 means the input price. 0, or -EINVAL for a
 * negative, non-finite or absurd (> $1M per million tokens) price. */
int budget_prices_from_model(const struct config_model *m, struct budget_prices *out);

/* Cost in micro-dollars, rounded UP once at the end: ceil((uncached * input + cached *
 * cached_input + completion * output) / 1e6), exact (128-bit) arithmetic. prompt_tokens
 * counts every prompt token, cached ones included (OpenAI's prompt_tokens; for Anthropic
 * pass input_tokens + cache_read_input_tokens); cached_tokens above prompt_tokens is
 * clamped. */
int64_t cost_micro_usd(uint64_t prompt_tokens, uint64_t completion_tokens, uint64_t cached_tokens,
		       const struct budget_prices *p);
/* What admission reserves: nothing cached, the whole completion allowance. */
int64_t budget_worst_case_micro_usd(uint64_t prompt_estimate, uint64_t max_tokens,
				    const struct budget_prices *p);

/* ---- calendar (UTC) ---- */

/* The start (UTC seconds) of the period holding t: midnight for DAY, Monday midnight for
 * WEEK (ISO weeks), the 1st at midnight for MONTH, 0 for TOTAL. */
int64_t budget_period_start(enum store_period period, int64_t t);
/* The start of the next period (INT64_MAX for TOTAL): when a budget resets. */
int64_t budget_period_end(enum store_period period, int64_t t);

/* ---- budgets ---- */

struct budget_spec {
	enum store_scope scope; /* key or team (persistence and reports) */
	const void *id;         /* key: its SHA-256; team: its name */
	size_t id_len;          /* 1..STORE_ID_MAX */
	enum store_period period;
	int64_t limit_micro_usd; /* 0 = no money limit */
	int64_t limit_tokens;    /* 0 = no token limit */
};

/* Up to budgets_max budgets; thresholds are percents (1..1000, ascending), NULL for
 * 50/80/100. NULL with *err -EINVAL or -ENOMEM. */
struct budget *budget_new(uint32_t budgets_max, const uint16_t *thresholds, unsigned nthresholds,
			  int *err);
void budget_free(struct budget *b);

/* Control thread. 0 and *id; -ENOSPC when full; -EINVAL for a bad spec (limits out of
 * 0..BUDGET_LIMIT_MAX, id too long). One budget per (scope, id, period): two would share
 * a persisted counter. */
int budget_add(struct budget *b, const struct budget_spec *spec, uint32_t *id);
/* Control thread (reload): new limits; spend and reservations stay. */
int budget_set_limits(struct budget *b, uint32_t id, int64_t limit_micro_usd,
		      int64_t limit_tokens);
/* Control thread, before workers start: every budget's counter for the period holding now_s,
 * from the store (a read of its own). 0 or the store's error. */
int budget_load(struct budget *b, struct store_reader *r, int64_t now_s);

/* A request's hold on its budgets, from reserve to settle: copy it anywhere (it is plain
 * data, about 150 bytes). */
struct budget_hold {
	uint32_t id;
	uint16_t seq[2];      /* the period each dimension was reserved in */
	int64_t amount[2];    /* reserved micro-USD, tokens; -1: that dimension has no limit */
	int64_t period_start; /* UTC seconds, for the persisted counter */
};

struct budget_resv {
	unsigned n;
	struct budget_hold hold[BUDGET_RESV_MAX];
};

enum budget_dim { BUDGET_USD = 0, BUDGET_TOKENS = 1 };

/* Reserve the worst case on every budget in ids (n <= BUDGET_RESV_MAX), all or none.
 * true: held in *resv, which must reach budget_settle or budget_release exactly once.
 * false: nothing held; *refused (if not NULL) names the budget and dimension that had no
 * room (429 budget_exceeded). tokens is prompt estimate + max_tokens. */
struct budget_refusal {
	uint32_t id;
	enum budget_dim dim;
	int64_t limit, used;
	int64_t resets_at; /* UTC seconds: the period's end (INT64_MAX for total) */
};
bool budget_reserve(struct budget *b, const uint32_t *ids, unsigned n, int64_t micro_usd,
		    uint64_t tokens, int64_t now_s, struct budget_resv *resv,
		    struct budget_refusal *refused);

/* The real usage of a settled request. */
struct budget_usage {
	int64_t micro_usd;
	uint64_t input_tokens, output_tokens;
};

struct budget_alert {
	uint32_t id;
	enum budget_dim dim;
	uint16_t percent;
	int64_t spent, limit, period_start;
};

/* Replace the reservations by the real usage. recs (n = resv->n records, may be NULL) gets
 * one spend ADD per budget for the caller to submit, with the audit record, as one unit;
 * alerts (room for BUDGET_RESV_MAX * 2 * BUDGET_THRESHOLDS_MAX, may be NULL) gets the
 * thresholds this settlement crossed; the count is returned. */
unsigned budget_settle(struct budget *b, const struct budget_resv *resv,
		       const struct budget_usage *usage, struct store_rec *recs,
		       struct budget_alert *alerts);
/* A request that never reached the provider: drop its reservations, charge nothing. */
void budget_release(struct budget *b, const struct budget_resv *resv);

/* ---- operator's view (admin API) ---- */

struct budget_status {
	enum store_period period;
	int64_t period_start, period_end;
	int64_t limit[2], spent[2], reserved[2]; /* [enum budget_dim] */
	uint32_t alerts_fired; /* bit i: threshold i fired this period */
};
int budget_status(struct budget *b, uint32_t id, int64_t now_s, struct budget_status *out);

struct budget_stats {
	uint64_t reserved, refused, settled, released;
	uint64_t overrun_micro_usd; /* charged above what was reserved */
};
void budget_stats(struct budget *b, struct budget_stats *out);

#endif
