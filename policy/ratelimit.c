/* ratelimit.c - per-minute limits: one GCRA word per subject and dimension, shared by CAS;
 * per-worker credit borrowed from it a chunk at a time. */
#include <assert.h>
#include <errno.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "policy/ratelimit.h"

#define CACHE_LINE 64
#define DIMS 2 /* 0 requests, 1 tokens */
#define SUBJECTS_MAX (1u << 24)
#define WORKERS_MAX 4096
/* Debt beyond this many minutes is not recorded: a pool that far behind refuses for minutes
 * anyway, and the clamp keeps the nanosecond arithmetic far from overflow. */
#define DEBT_MINUTES_MAX 60

/* A pool is a token bucket of capacity `limit` refilling at limit per minute, kept as the
 * time `tat` at which it would be exactly empty minus one minute: at time now it holds
 * (now + P - max(tat, now)) * limit / P units. Taking n units moves tat forward by n * P /
 * limit nanoseconds (rounded up: never more than the limit), giving back moves it back
 * (rounded down). One word, so one CAS changes it consistently. */
struct pool {
	_Atomic int64_t tat;
	_Atomic uint64_t limit; /* per minute; 0 = unlimited */
	_Atomic uint64_t chunk;
};

struct subject {
	alignas(CACHE_LINE) struct pool dim[DIMS];
};

struct ratelimit {
	struct subject *subjects;
	uint32_t subjects_max;
	_Atomic uint32_t nsubjects;
	unsigned workers;
	size_t credit_stride; /* uint64s per worker row, a whole number of cache lines */
	uint64_t *credit;     /* [worker][subject][dim]: units borrowed and not yet used */
};

static_assert(sizeof(struct subject) == CACHE_LINE, "one subject, one cache line");

static const int64_t P = RATELIMIT_PERIOD_NS;

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* Nanoseconds of pool time that n units cost: ceil(n * P / limit), clamped. */
static int64_t cost_ns(uint64_t n, uint64_t limit)
{
	unsigned __int128 ns = ((unsigned __int128)n * (uint64_t)P + limit - 1) / limit;
	unsigned __int128 cap = (unsigned __int128)DEBT_MINUTES_MAX * (uint64_t)P;
	return (int64_t)(ns > cap ? cap : ns);
}

/* Nanoseconds that n returned units give back: floor(n * P / limit), clamped. */
static int64_t refund_ns(uint64_t n, uint64_t limit)
{
	unsigned __int128 ns = (unsigned __int128)n * (uint64_t)P / limit;
	return (int64_t)(ns > (uint64_t)P ? (uint64_t)P : ns);
}

/* Units in the pool at time now, given tat: floor(...), never above limit. */
static uint64_t pool_avail(int64_t tat, int64_t now, uint64_t limit)
{
	int64_t room = now + P - max64(tat, now);
	if (room <= 0)
		return 0;
	return (uint64_t)((unsigned __int128)room * limit / (uint64_t)P);
}

static uint32_t ms_until(int64_t when, int64_t now)
{
	if (when <= now)
		return 0;
	return (uint32_t)((when - now + 999999) / 1000000);
}

static uint64_t *credit_of(struct ratelimit *rl, unsigned worker, uint32_t subject)
{
	assert(worker < rl->workers);
	assert(subject < rl->subjects_max);
	return rl->credit + worker * rl->credit_stride + (size_t)subject * DIMS;
}

static uint64_t chunk_for(uint64_t limit, unsigned workers)
{
	uint64_t c = limit / ((uint64_t)workers * RATELIMIT_CHUNK_DIV);
	return c ? c : 1;
}

struct ratelimit *ratelimit_new(unsigned workers, uint32_t subjects_max, int64_t now_ns,
				int *err)
{
	*err = -EINVAL;
	if (workers == 0 || workers > WORKERS_MAX || subjects_max == 0 ||
	    subjects_max > SUBJECTS_MAX)
		return NULL;
	*err = -ENOMEM;
	struct ratelimit *rl = calloc(1, sizeof(*rl));
	if (!rl)
		return NULL;
	rl->subjects_max = subjects_max;
	rl->workers = workers;
	size_t per_line = CACHE_LINE / sizeof(uint64_t);
	rl->credit_stride = ((size_t)subjects_max * DIMS + per_line - 1) / per_line * per_line;
	rl->subjects = aligned_alloc(CACHE_LINE, sizeof(struct subject) * subjects_max);
	rl->credit = aligned_alloc(CACHE_LINE, rl->credit_stride * workers * sizeof(uint64_t));
	if (!rl->subjects || !rl->credit) {
		ratelimit_free(rl);
		return NULL;
	}
	memset(rl->credit, 0, rl->credit_stride * workers * sizeof(uint64_t));
	for (uint32_t i = 0; i < subjects_max; i++)
		for (unsigned d = 0; d < DIMS; d++) {
			atomic_init(&rl->subjects[i].dim[d].tat, now_ns);
			atomic_init(&rl->subjects[i].dim[d].limit, 0);
			atomic_init(&rl->subjects[i].dim[d].chunk, 1);
		}
	atomic_init(&rl->nsubjects, 0);
	*err = 0;
	return rl;
}

void ratelimit_free(struct ratelimit *rl)
{
	if (!rl)
		return;
	free(rl->subjects);
	free(rl->credit);
	free(rl);
}

int ratelimit_set(struct ratelimit *rl, uint32_t subject, const struct ratelimit_spec *spec)
{
	if (subject >= atomic_load_explicit(&rl->nsubjects, memory_order_relaxed))
		return -EINVAL;
	if (spec->rpm > RATELIMIT_LIMIT_MAX || spec->tpm > RATELIMIT_LIMIT_MAX)
		return -EINVAL;
	uint64_t limits[DIMS] = { spec->rpm, spec->tpm };
	for (unsigned d = 0; d < DIMS; d++) {
		struct pool *p = &rl->subjects[subject].dim[d];
		atomic_store_explicit(&p->chunk, chunk_for(limits[d], rl->workers),
				      memory_order_relaxed);
		atomic_store_explicit(&p->limit, limits[d], memory_order_relaxed);
	}
	return 0;
}

int ratelimit_add(struct ratelimit *rl, const struct ratelimit_spec *spec, uint32_t *subject)
{
	uint32_t n = atomic_load_explicit(&rl->nsubjects, memory_order_relaxed);
	if (n >= rl->subjects_max)
		return -ENOSPC;
	if (spec->rpm > RATELIMIT_LIMIT_MAX || spec->tpm > RATELIMIT_LIMIT_MAX)
		return -EINVAL;
	atomic_store_explicit(&rl->nsubjects, n + 1, memory_order_release);
	int rc = ratelimit_set(rl, n, spec);
	assert(rc == 0);
	*subject = n;
	return rc;
}

uint64_t ratelimit_chunk(const struct ratelimit *rl, uint32_t subject, unsigned dimension)
{
	assert(subject < rl->subjects_max && dimension < DIMS);
	return atomic_load_explicit(&rl->subjects[subject].dim[dimension].chunk,
				    memory_order_relaxed);
}

/* Take at least `want` and at most `want + extra` units from the pool, as many as it holds.
 * false (nothing taken) when it holds fewer than want; *tat is the word last seen. */
static bool pool_take(struct pool *p, uint64_t limit, uint64_t want, uint64_t extra, int64_t now,
		      uint64_t *got, int64_t *tat)
{
	int64_t t = atomic_load_explicit(&p->tat, memory_order_relaxed);
	for (;;) {
		uint64_t avail = pool_avail(t, now, limit);
		if (avail < want) {
			*tat = t;
			return false;
		}
		uint64_t take = avail - want > extra ? want + extra : avail;
		int64_t next = max64(t, now) + cost_ns(take, limit);
		if (atomic_compare_exchange_weak_explicit(&p->tat, &t, next, memory_order_relaxed,
							  memory_order_relaxed)) {
			*got = take;
			*tat = next;
			return true;
		}
	}
}

static void pool_refund(struct pool *p, uint64_t limit, uint64_t n)
{
	/* A refund into a full pool (tat already behind now) is lost, as it should be: the
	 * bucket holds one minute at most, and max(tat, now) ignores how far behind tat is. */
	atomic_fetch_sub_explicit(&p->tat, refund_ns(n, limit), memory_order_relaxed);
}

static void pool_charge(struct pool *p, uint64_t limit, uint64_t n, int64_t now)
{
	int64_t t = atomic_load_explicit(&p->tat, memory_order_relaxed);
	int64_t next;
	do
		next = max64(t, now) + cost_ns(n, limit);
	while (!atomic_compare_exchange_weak_explicit(&p->tat, &t, next, memory_order_relaxed,
						      memory_order_relaxed));
}

/* Back into a worker's credit; above a chunk goes back to the pool (the bound needs that). */
static void credit_return(struct pool *p, uint64_t *credit, uint64_t n)
{
	uint64_t limit = atomic_load_explicit(&p->limit, memory_order_relaxed);
	if (limit == 0 || n == 0)
		return;
	uint64_t chunk = atomic_load_explicit(&p->chunk, memory_order_relaxed);
	uint64_t c = *credit + n;
	if (c > chunk) {
		pool_refund(p, limit, c - chunk);
		c = chunk;
	}
	*credit = c;
}

/* One dimension of an admission. 0 admitted, else the verdict; *tat for the info. */
static enum ratelimit_verdict dim_take(struct pool *p, uint64_t *credit, uint64_t n, int64_t now,
				       enum ratelimit_verdict refused, int64_t *tat,
				       uint64_t *want_out)
{
	uint64_t limit = atomic_load_explicit(&p->limit, memory_order_relaxed);
	*want_out = 0;
	if (limit == 0 || n == 0)
		return RATELIMIT_ADMIT;
	if (n > limit)
		return RATELIMIT_TOO_LARGE;
	if (*credit >= n) {
		*credit -= n;
		return RATELIMIT_ADMIT;
	}
	uint64_t want = n - *credit, got = 0;
	uint64_t chunk = atomic_load_explicit(&p->chunk, memory_order_relaxed);
	if (!pool_take(p, limit, want, chunk, now, &got, tat)) {
		*want_out = want;
		return refused;
	}
	*credit = *credit + got - n;
	assert(*credit <= chunk);
	return RATELIMIT_ADMIT;
}

static void dim_info(struct pool *p, uint64_t credit, int64_t now, uint64_t *limit_out,
		     uint64_t *remaining, uint32_t *reset_ms)
{
	uint64_t limit = atomic_load_explicit(&p->limit, memory_order_relaxed);
	*limit_out = limit;
	if (limit == 0) {
		*remaining = UINT64_MAX;
		*reset_ms = 0;
		return;
	}
	int64_t t = atomic_load_explicit(&p->tat, memory_order_relaxed);
	uint64_t r = pool_avail(t, now, limit) + credit;
	*remaining = r > limit ? limit : r;
	*reset_ms = ms_until(t, now);
}

/* Whole seconds until a pool whose word is tat holds `want` units; at least 1. */
static uint32_t retry_after(struct pool *p, int64_t tat, uint64_t want, int64_t now)
{
	uint64_t limit = atomic_load_explicit(&p->limit, memory_order_relaxed);
	int64_t wait = limit ? max64(tat, now) + cost_ns(want, limit) - P - now : P;
	int64_t s = (wait + 999999999) / 1000000000;
	return s < 1 ? 1 : (uint32_t)(s > 60 * DEBT_MINUTES_MAX ? 60 * DEBT_MINUTES_MAX : s);
}

enum ratelimit_verdict ratelimit_acquire(struct ratelimit *rl, unsigned worker, uint32_t subject,
					 uint32_t requests, uint64_t tokens, int64_t now_ns,
					 struct ratelimit_info *info)
{
	struct subject *s = &rl->subjects[subject];
	uint64_t *credit = credit_of(rl, worker, subject);
	int64_t tat = 0;
	uint64_t want = 0;
	struct pool *refusing = NULL;

	enum ratelimit_verdict v = dim_take(&s->dim[0], &credit[0], requests, now_ns,
					    RATELIMIT_REQUESTS, &tat, &want);
	if (v != RATELIMIT_ADMIT) {
		refusing = &s->dim[0];
	} else {
		v = dim_take(&s->dim[1], &credit[1], tokens, now_ns, RATELIMIT_TOKENS, &tat, &want);
		if (v != RATELIMIT_ADMIT) {
			refusing = &s->dim[1];
			credit_return(&s->dim[0], &credit[0], requests);
		}
	}
	if (info) {
		dim_info(&s->dim[0], credit[0], now_ns, &info->limit_requests,
			 &info->remaining_requests, &info->reset_requests_ms);
		dim_info(&s->dim[1], credit[1], now_ns, &info->limit_tokens,
			 &info->remaining_tokens, &info->reset_tokens_ms);
		info->retry_after_s = 0;
		if (v == RATELIMIT_REQUESTS || v == RATELIMIT_TOKENS)
			info->retry_after_s = retry_after(refusing, tat, want, now_ns);
		else if (v == RATELIMIT_TOO_LARGE)
			info->retry_after_s = (uint32_t)(P / 1000000000);
	}
	return v;
}

void ratelimit_cancel(struct ratelimit *rl, unsigned worker, uint32_t subject, uint32_t requests,
		      uint64_t tokens)
{
	struct subject *s = &rl->subjects[subject];
	uint64_t *credit = credit_of(rl, worker, subject);
	credit_return(&s->dim[0], &credit[0], requests);
	credit_return(&s->dim[1], &credit[1], tokens);
}

void ratelimit_settle(struct ratelimit *rl, unsigned worker, uint32_t subject,
		      uint64_t estimate, uint64_t actual, int64_t now_ns)
{
	struct pool *p = &rl->subjects[subject].dim[1];
	uint64_t *credit = &credit_of(rl, worker, subject)[1];
	if (actual <= estimate) {
		credit_return(p, credit, estimate - actual);
		return;
	}
	uint64_t limit = atomic_load_explicit(&p->limit, memory_order_relaxed);
	if (limit == 0)
		return;
	uint64_t extra = actual - estimate;
	uint64_t from_credit = extra < *credit ? extra : *credit;
	*credit -= from_credit;
	if (extra > from_credit)
		pool_charge(p, limit, extra - from_credit, now_ns);
}
