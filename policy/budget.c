/* budget.c - reservations and spend per budget in CAS-updated words tagged with the
 * period's sequence number; UTC calendar arithmetic; integer cost. */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "policy/budget.h"

#define CACHE_LINE 64
#define DIMS 2
#define AMOUNT_BITS 48
#define AMOUNT_MAX ((UINT64_C(1) << AMOUNT_BITS) - 1)
#define SEQ_MASK 0xffffu
#define BUDGETS_MAX (1u << 24)
#define PRICE_MAX (INT64_C(1000000) * 1000000) /* $1M per million tokens, in micro-USD */
#define DAY_S 86400
#define ADOPT_TRIES 4 /* a clock behind another thread's by a whole period: give up after */

static const uint16_t thresholds_default[] = { 50, 80, 100 };

/* One budget: its words share a cache line with each other (they move together), never
 * with another budget. `used` and `spent` are seq << 48 | amount; `alerted` is seq << 48 |
 * fired bits (dimension d, threshold i: bit d * 8 + i). */
struct slot {
	alignas(CACHE_LINE) _Atomic uint64_t used[DIMS];
	_Atomic uint64_t spent[DIMS];
	_Atomic uint64_t alerted;
	_Atomic int64_t limit[DIMS];
	_Atomic uint64_t n_reserved, n_refused, n_settled, n_released, overrun;
	uint8_t scope, period, id_len;
	uint8_t id[STORE_ID_MAX];
};

struct budget {
	struct slot *slots;
	uint32_t max;
	_Atomic uint32_t n;
	unsigned nthresholds;
	uint16_t thresholds[BUDGET_THRESHOLDS_MAX];
};

static_assert(BUDGET_THRESHOLDS_MAX * DIMS <= AMOUNT_BITS, "alert bits fit the word");

static uint64_t pack(uint16_t seq, uint64_t amount) { return (uint64_t)seq << AMOUNT_BITS | amount; }
static uint16_t seq_of(uint64_t w) { return (uint16_t)(w >> AMOUNT_BITS); }
static uint64_t amount_of(uint64_t w) { return w & AMOUNT_MAX; }
/* > 0: a is a later period than b (sequence numbers wrap after 65536 periods). */
static int16_t seq_diff(uint16_t a, uint16_t b) { return (int16_t)(uint16_t)(a - b); }

static uint64_t clamp_amount(int64_t v)
{
	if (v <= 0)
		return 0;
	return (uint64_t)v > AMOUNT_MAX ? AMOUNT_MAX : (uint64_t)v;
}

/* ---- prices and cost ---- */

static int price_from(double usd_per_mtok, int64_t *out)
{
	if (!isfinite(usd_per_mtok) || usd_per_mtok < 0 || usd_per_mtok * 1e6 > (double)PRICE_MAX)
		return -EINVAL;
	*out = llround(usd_per_mtok * 1e6);
	return 0;
}

int budget_prices_from_model(const struct config_model *m, struct budget_prices *out)
{
	struct budget_prices p;
	if (price_from(m->input_per_mtok, &p.input) || price_from(m->output_per_mtok, &p.output) ||
	    price_from(m->cached_input_per_mtok, &p.cached_input))
		return -EINVAL;
	if (p.cached_input == 0)
		p.cached_input = p.input;
	*out = p;
	return 0;
}

static uint64_t clamp_tokens(uint64_t n) { return n > BUDGET_TOKENS_MAX ? BUDGET_TOKENS_MAX : n; }

int64_t cost_micro_usd(uint64_t prompt_tokens, uint64_t completion_tokens, uint64_t cached_tokens,
		       const struct budget_prices *p)
{
	prompt_tokens = clamp_tokens(prompt_tokens);
	completion_tokens = clamp_tokens(completion_tokens);
	if (cached_tokens > prompt_tokens)
		cached_tokens = prompt_tokens;
	/* At most 3 * 2^32 * 1e12: far inside 128 bits; the result fits int64 (< 2^63 / 1e6). */
	unsigned __int128 micro_per_m = (unsigned __int128)(prompt_tokens - cached_tokens) *
						(uint64_t)p->input +
					(unsigned __int128)cached_tokens * (uint64_t)p->cached_input +
					(unsigned __int128)completion_tokens * (uint64_t)p->output;
	return (int64_t)((micro_per_m + 999999) / 1000000);
}

int64_t budget_worst_case_micro_usd(uint64_t prompt_estimate, uint64_t max_tokens,
				    const struct budget_prices *p)
{
	return cost_micro_usd(prompt_estimate, max_tokens, 0, p);
}

/* ---- calendar ---- */

static int64_t floor_div(int64_t a, int64_t b)
{
	int64_t q = a / b;
	return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* Proleptic Gregorian calendar in 400-year eras of 146097 days, with years starting on
 * March 1st so that the leap day is the last day of the (shifted) year. */
static void civil_from_days(int64_t days, int64_t *year, unsigned *month)
{
	int64_t z = days + 719468; /* days since 0000-03-01 */
	int64_t era = floor_div(z, 146097);
	int64_t doe = z - era * 146097;                                       /* [0, 146096] */
	int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;  /* [0, 399] */
	int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);                /* [0, 365] */
	int64_t mp = (5 * doy + 2) / 153;                                     /* March = 0 */
	*month = (unsigned)(mp < 10 ? mp + 3 : mp - 9);
	*year = yoe + era * 400 + (*month <= 2);
}

static int64_t days_from_civil(int64_t year, unsigned month)
{
	year -= month <= 2;
	int64_t era = floor_div(year, 400);
	int64_t yoe = year - era * 400;
	int64_t mp = month > 2 ? month - 3 : month + 9;
	int64_t doy = (153 * mp + 2) / 5; /* the 1st of the month */
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

/* Periods are numbered: days since the epoch, ISO weeks since the one holding it (1970-01-01
 * was a Thursday: that week began on Monday 1969-12-29, day -3), months since year 0. */
static int64_t period_index(enum store_period period, int64_t t)
{
	int64_t days = floor_div(t, DAY_S);
	switch (period) {
	case STORE_PERIOD_DAY:
		return days;
	case STORE_PERIOD_WEEK:
		return floor_div(days + 3, 7);
	case STORE_PERIOD_MONTH: {
		int64_t y;
		unsigned m;
		civil_from_days(days, &y, &m);
		return y * 12 + (m - 1);
	}
	case STORE_PERIOD_TOTAL:
	default:
		return 0;
	}
}

static int64_t index_start(enum store_period period, int64_t idx)
{
	switch (period) {
	case STORE_PERIOD_DAY:
		return idx * DAY_S;
	case STORE_PERIOD_WEEK:
		return (idx * 7 - 3) * DAY_S;
	case STORE_PERIOD_MONTH:
		return days_from_civil(floor_div(idx, 12), (unsigned)(idx - floor_div(idx, 12) * 12) + 1) *
		       DAY_S;
	case STORE_PERIOD_TOTAL:
	default:
		return 0;
	}
}

int64_t budget_period_start(enum store_period period, int64_t t)
{
	return index_start(period, period_index(period, t));
}

int64_t budget_period_end(enum store_period period, int64_t t)
{
	if (period == STORE_PERIOD_TOTAL)
		return INT64_MAX;
	return index_start(period, period_index(period, t) + 1);
}

/* ---- budgets ---- */

struct budget *budget_new(uint32_t budgets_max, const uint16_t *thresholds, unsigned nthresholds,
			  int *err)
{
	*err = -EINVAL;
	if (!thresholds) {
		thresholds = thresholds_default;
		nthresholds = sizeof(thresholds_default) / sizeof(thresholds_default[0]);
	}
	if (budgets_max == 0 || budgets_max > BUDGETS_MAX || nthresholds > BUDGET_THRESHOLDS_MAX)
		return NULL;
	for (unsigned i = 0; i < nthresholds; i++)
		if (thresholds[i] == 0 || thresholds[i] > 1000 ||
		    (i > 0 && thresholds[i] <= thresholds[i - 1]))
			return NULL;
	*err = -ENOMEM;
	struct budget *b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	b->slots = aligned_alloc(CACHE_LINE, sizeof(struct slot) * budgets_max);
	if (!b->slots) {
		free(b);
		return NULL;
	}
	memset(b->slots, 0, sizeof(struct slot) * budgets_max);
	b->max = budgets_max;
	b->nthresholds = nthresholds;
	memcpy(b->thresholds, thresholds, nthresholds * sizeof(thresholds[0]));
	atomic_init(&b->n, 0);
	*err = 0;
	return b;
}

void budget_free(struct budget *b)
{
	if (!b)
		return;
	free(b->slots);
	free(b);
}

static bool limit_ok(int64_t v) { return v >= 0 && v <= BUDGET_LIMIT_MAX; }

int budget_add(struct budget *b, const struct budget_spec *spec, uint32_t *id)
{
	uint32_t n = atomic_load_explicit(&b->n, memory_order_relaxed);
	if (n >= b->max)
		return -ENOSPC;
	if (!limit_ok(spec->limit_micro_usd) || !limit_ok(spec->limit_tokens) || !spec->id ||
	    spec->id_len == 0 || spec->id_len > STORE_ID_MAX ||
	    (unsigned)spec->period > STORE_PERIOD_MONTH || spec->scope < STORE_SCOPE_KEY ||
	    spec->scope > STORE_SCOPE_MODEL)
		return -EINVAL;
	struct slot *s = &b->slots[n];
	s->scope = (uint8_t)spec->scope;
	s->period = (uint8_t)spec->period;
	s->id_len = (uint8_t)spec->id_len;
	memcpy(s->id, spec->id, spec->id_len);
	atomic_store_explicit(&s->limit[BUDGET_USD], spec->limit_micro_usd, memory_order_relaxed);
	atomic_store_explicit(&s->limit[BUDGET_TOKENS], spec->limit_tokens, memory_order_relaxed);
	atomic_store_explicit(&b->n, n + 1, memory_order_release);
	*id = n;
	return 0;
}

static struct slot *slot_of(struct budget *b, uint32_t id)
{
	assert(id < atomic_load_explicit(&b->n, memory_order_relaxed));
	return &b->slots[id];
}

int budget_set_limits(struct budget *b, uint32_t id, int64_t limit_micro_usd, int64_t limit_tokens)
{
	if (id >= atomic_load_explicit(&b->n, memory_order_acquire) || !limit_ok(limit_micro_usd) ||
	    !limit_ok(limit_tokens))
		return -EINVAL;
	struct slot *s = &b->slots[id];
	atomic_store_explicit(&s->limit[BUDGET_USD], limit_micro_usd, memory_order_relaxed);
	atomic_store_explicit(&s->limit[BUDGET_TOKENS], limit_tokens, memory_order_relaxed);
	return 0;
}

static void spend_key(const struct slot *s, int64_t period_start, struct store_spend_key *k)
{
	memset(k, 0, sizeof(*k));
	k->scope = s->scope;
	k->period = s->period;
	k->start = (uint64_t)period_start;
	k->id_len = s->id_len;
	memcpy(k->id, s->id, s->id_len);
}

int budget_load(struct budget *b, struct store_reader *r, int64_t now_s)
{
	int rc = store_read_begin(r);
	if (rc)
		return rc;
	uint32_t n = atomic_load_explicit(&b->n, memory_order_acquire);
	for (uint32_t i = 0; i < n && rc == 0; i++) {
		struct slot *s = &b->slots[i];
		int64_t idx = period_index(s->period, now_s);
		struct store_spend_key k;
		spend_key(s, index_start(s->period, idx), &k);
		struct store_spend v;
		rc = store_spend_get(r, &k, &v);
		if (rc)
			break;
		uint16_t seq = (uint16_t)(idx & SEQ_MASK);
		uint64_t amount[DIMS] = { clamp_amount(v.micro_usd),
					  clamp_amount(v.input_tokens) + clamp_amount(v.output_tokens) };
		for (unsigned d = 0; d < DIMS; d++) {
			uint64_t w = pack(seq, amount[d] > AMOUNT_MAX ? AMOUNT_MAX : amount[d]);
			atomic_store_explicit(&s->used[d], w, memory_order_relaxed);
			atomic_store_explicit(&s->spent[d], w, memory_order_relaxed);
		}
		atomic_store_explicit(&s->alerted, pack(seq, 0), memory_order_relaxed);
	}
	store_read_end(r);
	return rc;
}

/* ---- reserve, settle ---- */

enum take { TAKE_OK, TAKE_FULL, TAKE_AHEAD };

/* Add amount to a used word for period seq unless it would pass limit. A word of an earlier
 * period starts over at 0 (the reset); a word of a later period (another thread's clock is
 * ahead of ours) is TAKE_AHEAD with *ahead periods. */
static enum take used_take(_Atomic uint64_t *word, uint16_t seq, uint64_t amount, uint64_t limit,
			   uint64_t *used, int16_t *ahead)
{
	uint64_t w = atomic_load_explicit(word, memory_order_relaxed);
	for (;;) {
		int16_t d = seq_diff(seq_of(w), seq);
		if (d > 0) {
			*ahead = d;
			return TAKE_AHEAD;
		}
		uint64_t base = d < 0 ? 0 : amount_of(w);
		*used = base;
		if (amount > limit || base > limit - amount)
			return TAKE_FULL;
		if (atomic_compare_exchange_weak_explicit(word, &w, pack(seq, base + amount),
							  memory_order_relaxed,
							  memory_order_relaxed))
			return TAKE_OK;
	}
}

/* used = used - reserved + charged, if the word is still in period seq (a later period
 * owes nothing to an earlier one's reservations). */
static void used_settle(_Atomic uint64_t *word, uint16_t seq, uint64_t reserved, uint64_t charged)
{
	uint64_t w = atomic_load_explicit(word, memory_order_relaxed);
	for (;;) {
		if (seq_of(w) != seq)
			return;
		uint64_t a = amount_of(w);
		a = a > reserved ? a - reserved : 0;
		a = a > AMOUNT_MAX - charged ? AMOUNT_MAX : a + charged;
		if (atomic_compare_exchange_weak_explicit(word, &w, pack(seq, a),
							  memory_order_relaxed,
							  memory_order_relaxed))
			return;
	}
}

/* spent += add in period seq; false if the word is already in a later period. */
static bool spent_add(_Atomic uint64_t *word, uint16_t seq, uint64_t add, uint64_t *before,
		      uint64_t *after)
{
	uint64_t w = atomic_load_explicit(word, memory_order_relaxed);
	for (;;) {
		int16_t d = seq_diff(seq_of(w), seq);
		if (d > 0)
			return false;
		uint64_t base = d < 0 ? 0 : amount_of(w);
		uint64_t a = base > AMOUNT_MAX - add ? AMOUNT_MAX : base + add;
		if (atomic_compare_exchange_weak_explicit(word, &w, pack(seq, a),
							  memory_order_relaxed,
							  memory_order_relaxed)) {
			*before = base;
			*after = a;
			return true;
		}
	}
}

static void undo_holds(struct budget *b, const struct budget_resv *resv, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		struct slot *s = slot_of(b, resv->hold[i].id);
		for (unsigned d = 0; d < DIMS; d++)
			if (resv->hold[i].amount[d] >= 0)
				used_settle(&s->used[d], resv->hold[i].seq[d],
					    (uint64_t)resv->hold[i].amount[d], 0);
	}
}

/* Hold amounts (a negative amount: that dimension has no limit) on one budget, both
 * dimensions or none. */
static bool hold_one(struct slot *s, const int64_t want[DIMS], int64_t now_s,
		     struct budget_hold *h, struct budget_refusal *refused)
{
	int64_t idx = period_index(s->period, now_s);
	for (unsigned tries = 0; tries < ADOPT_TRIES; tries++) {
		uint16_t seq = (uint16_t)(idx & SEQ_MASK);
		h->period_start = index_start(s->period, idx);
		unsigned d = 0;
		enum take t = TAKE_OK;
		uint64_t used = 0;
		int16_t ahead = 0;
		for (; d < DIMS; d++) {
			h->seq[d] = seq;
			int64_t limit = atomic_load_explicit(&s->limit[d], memory_order_relaxed);
			h->amount[d] = limit > 0 ? want[d] : -1;
			if (limit <= 0)
				continue;
			t = used_take(&s->used[d], seq, clamp_amount(want[d]), (uint64_t)limit,
				      &used, &ahead);
			if (t != TAKE_OK) {
				if (refused && t == TAKE_FULL)
					*refused = (struct budget_refusal){
						.dim = (enum budget_dim)d, .limit = limit,
						.used = (int64_t)used,
						.resets_at = s->period == STORE_PERIOD_TOTAL
								     ? INT64_MAX
								     : index_start(s->period, idx + 1),
					};
				break;
			}
		}
		if (t == TAKE_OK)
			return true;
		for (unsigned u = 0; u < d; u++)
			if (h->amount[u] >= 0)
				used_settle(&s->used[u], seq, (uint64_t)h->amount[u], 0);
		if (t == TAKE_FULL)
			return false;
		idx += ahead; /* our clock is behind another thread's: join its period */
	}
	return false;
}

bool budget_reserve(struct budget *b, const uint32_t *ids, unsigned n, int64_t micro_usd,
		    uint64_t tokens, int64_t now_s, struct budget_resv *resv,
		    struct budget_refusal *refused)
{
	assert(n <= BUDGET_RESV_MAX);
	resv->n = 0;
	const int64_t want[DIMS] = { micro_usd < 0 ? 0 : micro_usd,
				     (int64_t)clamp_amount((int64_t)clamp_tokens(tokens)) };
	for (unsigned i = 0; i < n; i++) {
		struct slot *s = slot_of(b, ids[i]);
		resv->hold[i].id = ids[i];
		if (!hold_one(s, want, now_s, &resv->hold[i], refused)) {
			undo_holds(b, resv, i);
			atomic_fetch_add_explicit(&s->n_refused, 1, memory_order_relaxed);
			if (refused)
				refused->id = ids[i];
			return false;
		}
	}
	for (unsigned i = 0; i < n; i++)
		atomic_fetch_add_explicit(&slot_of(b, ids[i])->n_reserved, 1, memory_order_relaxed);
	resv->n = n;
	return true;
}

void budget_release(struct budget *b, const struct budget_resv *resv)
{
	undo_holds(b, resv, resv->n);
	for (unsigned i = 0; i < resv->n; i++)
		atomic_fetch_add_explicit(&slot_of(b, resv->hold[i].id)->n_released, 1,
					  memory_order_relaxed);
}

/* Fire the thresholds that spend crossed going from before to after, each once a period. */
static unsigned check_alerts(struct budget *b, struct slot *s, uint32_t id, unsigned d,
			     uint16_t seq, uint64_t before, uint64_t after, int64_t period_start,
			     struct budget_alert *out)
{
	int64_t limit = atomic_load_explicit(&s->limit[d], memory_order_relaxed);
	unsigned fired = 0;
	if (limit <= 0)
		return 0;
	for (unsigned i = 0; i < b->nthresholds; i++) {
		uint64_t level = (uint64_t)((unsigned __int128)(uint64_t)limit * b->thresholds[i] / 100);
		if (!(before < level && after >= level))
			continue;
		uint64_t bit = UINT64_C(1) << (d * BUDGET_THRESHOLDS_MAX + i);
		uint64_t w = atomic_load_explicit(&s->alerted, memory_order_relaxed);
		bool mine = false;
		for (;;) {
			int16_t diff = seq_diff(seq_of(w), seq);
			if (diff > 0)
				break;
			uint64_t mask = diff < 0 ? 0 : amount_of(w);
			if (mask & bit)
				break;
			if (atomic_compare_exchange_weak_explicit(&s->alerted, &w,
								  pack(seq, mask | bit),
								  memory_order_relaxed,
								  memory_order_relaxed)) {
				mine = true;
				break;
			}
		}
		if (mine && out)
			out[fired++] = (struct budget_alert){
				.id = id, .dim = (enum budget_dim)d, .percent = b->thresholds[i],
				.spent = (int64_t)after, .limit = limit, .period_start = period_start,
			};
		else if (mine)
			fired++;
	}
	return fired;
}

unsigned budget_settle(struct budget *b, const struct budget_resv *resv,
		       const struct budget_usage *usage, struct store_rec *recs,
		       struct budget_alert *alerts)
{
	uint64_t charged[DIMS] = {
		clamp_amount(usage->micro_usd),
		clamp_tokens(usage->input_tokens) + clamp_tokens(usage->output_tokens),
	};
	unsigned nalerts = 0;
	for (unsigned i = 0; i < resv->n; i++) {
		uint32_t id = resv->hold[i].id;
		struct slot *s = slot_of(b, id);
		for (unsigned d = 0; d < DIMS; d++) {
			uint16_t seq = resv->hold[i].seq[d];
			int64_t held = resv->hold[i].amount[d];
			if (held >= 0)
				used_settle(&s->used[d], seq, (uint64_t)held, charged[d]);
			if (d == BUDGET_USD && held >= 0 && charged[d] > (uint64_t)held)
				atomic_fetch_add_explicit(&s->overrun, charged[d] - (uint64_t)held,
							  memory_order_relaxed);
			uint64_t before, after;
			if (spent_add(&s->spent[d], seq, charged[d], &before, &after))
				nalerts += check_alerts(b, s, id, d, seq, before, after,
							resv->hold[i].period_start,
							alerts ? alerts + nalerts : NULL);
		}
		atomic_fetch_add_explicit(&s->n_settled, 1, memory_order_relaxed);
		if (recs) {
			struct store_spend_key k;
			spend_key(s, resv->hold[i].period_start, &k);
			struct store_spend delta = {
				.micro_usd = (int64_t)charged[BUDGET_USD],
				.input_tokens = (int64_t)clamp_tokens(usage->input_tokens),
				.output_tokens = (int64_t)clamp_tokens(usage->output_tokens),
				.requests = 1,
			};
			int rc = store_rec_spend_add(&recs[i], &k, &delta);
			assert(rc == 0);
			(void)rc;
		}
	}
	return nalerts;
}

/* ---- operator's view ---- */

int budget_status(struct budget *b, uint32_t id, int64_t now_s, struct budget_status *out)
{
	if (id >= atomic_load_explicit(&b->n, memory_order_acquire))
		return -EINVAL;
	struct slot *s = &b->slots[id];
	int64_t idx = period_index(s->period, now_s);
	uint16_t seq = (uint16_t)(idx & SEQ_MASK);
	memset(out, 0, sizeof(*out));
	out->period = s->period;
	out->period_start = index_start(s->period, idx);
	out->period_end = s->period == STORE_PERIOD_TOTAL ? INT64_MAX : index_start(s->period, idx + 1);
	for (unsigned d = 0; d < DIMS; d++) {
		out->limit[d] = atomic_load_explicit(&s->limit[d], memory_order_relaxed);
		uint64_t sp = atomic_load_explicit(&s->spent[d], memory_order_relaxed);
		uint64_t us = atomic_load_explicit(&s->used[d], memory_order_relaxed);
		out->spent[d] = seq_of(sp) == seq ? (int64_t)amount_of(sp) : 0;
		int64_t used = seq_of(us) == seq ? (int64_t)amount_of(us) : 0;
		out->reserved[d] = out->limit[d] > 0 && used > out->spent[d] ? used - out->spent[d] : 0;
	}
	uint64_t al = atomic_load_explicit(&s->alerted, memory_order_relaxed);
	out->alerts_fired = seq_of(al) == seq ? (uint32_t)amount_of(al) : 0;
	return 0;
}

void budget_stats(struct budget *b, struct budget_stats *out)
{
	memset(out, 0, sizeof(*out));
	uint32_t n = atomic_load_explicit(&b->n, memory_order_acquire);
	for (uint32_t i = 0; i < n; i++) {
		struct slot *s = &b->slots[i];
		out->reserved += atomic_load_explicit(&s->n_reserved, memory_order_relaxed);
		out->refused += atomic_load_explicit(&s->n_refused, memory_order_relaxed);
		out->settled += atomic_load_explicit(&s->n_settled, memory_order_relaxed);
		out->released += atomic_load_explicit(&s->n_released, memory_order_relaxed);
		out->overrun_micro_usd += atomic_load_explicit(&s->overrun, memory_order_relaxed);
	}
}
