/* router.c - routing tables built from the config, per-worker policy state, shared health.
 *
 * Health is a registry entry per target (provider and upstream model) on cache lines of
 * its own, so workers that report on different targets never contend; a breaker's state
 * and its deadline are two atomics, and the single half-open probe is granted by a
 * compare-and-swap on the deadline, so two workers can never both take it. The error
 * rate is counted in a ring of time buckets, each a word (bucket epoch << 32 | count) for
 * successes and one for failures: a report is one atomic add on the current bucket's
 * word, plus a compare-and-swap by the first report of a bucket to reset it.
 */
#include "router.h"

#include <math.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/log.h"

/* A failed attempt counts as this slow for latency routing, however fast it failed: a
 * target that refuses at once must not look like the fastest. */
#define FAIL_PENALTY_US 1000000.0
/* Completion tokens assumed for cost routing when neither the request nor the catalog
 * says. */
#define NOMINAL_COMPLETION 256
/* The error-rate window is this many buckets of window / WINDOW_BUCKETS: it slides by a
 * tenth, and its counts cover between 9 and 10 tenths of it. */
#define WINDOW_BUCKETS 10
/* A report that finds its bucket stale and loses the race to reset it tries again; after
 * this many lost races in a row (never seen in practice) the one count is dropped. */
#define BUCKET_TRIES 16

struct bucket {
	_Atomic uint64_t ok, fail; /* epoch << 32 | count; epoch 0 = never used */
};

struct router_health_entry {
	alignas(64) _Atomic uint32_t state; /* enum breaker_state */
	_Atomic uint32_t consecutive;       /* failures since the last success */
	_Atomic uint64_t until_us;          /* open: no probe before; half-open: probe's end */
	struct bucket window[WINDOW_BUCKETS];
	/* The key (copies: the registry outlives configs); provider and model name log lines. */
	char *provider, *base_url, *model;
	struct router_health_entry *next; /* registry list: only router_new's thread walks it */
};

struct router_health {
	struct router_health_entry *head;
};

struct router {
	struct router_opts o;
	struct router_model *models;
	size_t nmodels;
	struct router_target *targets; /* every model's, one after the other */
	size_t ntargets;
	unsigned *fallback;
	struct router_health_entry **health; /* by router_target.health */
	size_t nhealth;
	struct router_health *own; /* the private registry when router_new was given none */
};

/* One target's state in one worker. */
struct slot {
	int64_t current;   /* smooth weighted round robin */
	double ewma_us;    /* peak-EWMA of time to first byte; 0 = no sample yet */
	uint64_t stamp_us; /* when the last sample came */
	uint32_t pending;  /* picked, not yet reported */
};

struct router_worker {
	const struct router *r;
	struct slot *slots;   /* by router_target.slot */
	uint64_t *picks;      /* by model: latency exploration counter */
};

const char *route_policy_name(enum route_policy p)
{
	static const char *const names[] = { "weighted", "latency", "cost", "priority" };
	return p <= ROUTE_PRIORITY ? names[p] : "?";
}

static enum route_policy policy_of(const char *s)
{
	for (int p = ROUTE_WEIGHTED; p <= ROUTE_PRIORITY; p++)
		if (s && strcmp(s, route_policy_name((enum route_policy)p)) == 0)
			return (enum route_policy)p;
	return ROUTE_WEIGHTED;
}

/* ---------------------------------------------------------------- the registry */

struct router_health *router_health_new(void)
{
	return calloc(1, sizeof(struct router_health));
}

static void entry_free(struct router_health_entry *e)
{
	free(e->provider);
	free(e->base_url);
	free(e->model);
	free(e);
}

void router_health_free(struct router_health *h)
{
	if (!h)
		return;
	for (struct router_health_entry *e = h->head, *next; e; e = next) {
		next = e->next;
		entry_free(e);
	}
	free(h);
}

static struct router_health_entry *entry_get(struct router_health *h, const char *provider,
					     const char *base_url, const char *model)
{
	for (struct router_health_entry *e = h->head; e; e = e->next)
		if (strcmp(e->provider, provider) == 0 && strcmp(e->base_url, base_url) == 0 &&
		    strcmp(e->model, model) == 0)
			return e;
	struct router_health_entry *e = aligned_alloc(alignof(struct router_health_entry),
						      sizeof(*e));
	if (!e)
		return NULL;
	memset(e, 0, sizeof(*e));
	e->provider = strdup(provider);
	e->base_url = strdup(base_url);
	e->model = strdup(model);
	if (!e->provider || !e->base_url || !e->model) {
		entry_free(e);
		return NULL;
	}
	/* Workers never walk the list (they hold entries through their routers), so linking
	 * it needs no ordering. */
	e->next = h->head;
	h->head = e;
	return e;
}

size_t router_health_entries(struct router_health *h, const char *provider,
			     const char *base_url, struct router_health_entry **out, size_t cap)
{
	size_t n = 0;
	for (struct router_health_entry *e = h->head; e; e = e->next)
		if (strcmp(e->provider, provider) == 0 && strcmp(e->base_url, base_url) == 0) {
			if (n < cap)
				out[n] = e;
			n++;
		}
	return n;
}

/* ---------------------------------------------------------------- building */

/* The index of this target's entry among r's, added to the registry and to r if new;
 * -1 if out of memory. */
static int health_slot(struct router *r, struct router_health *reg,
		       const struct config_provider *cp, const char *model)
{
	struct router_health_entry *e = entry_get(reg, cp->name, cp->base_url, model);
	if (!e)
		return -1;
	for (size_t i = 0; i < r->nhealth; i++)
		if (r->health[i] == e)
			return (int)i;
	r->health[r->nhealth] = e;
	return (int)r->nhealth++;
}

struct router *router_new(const struct config *cfg, const struct router_opts *o,
			  struct router_health *health, char *err, size_t errlen)
{
	size_t ntargets = 0, nfallback = 0;
	for (size_t i = 0; i < cfg->nmodels; i++) {
		if (cfg->models[i].ntargets > ROUTER_MAX_TARGETS) {
			snprintf(err, errlen, "model %s: more than %d targets", cfg->models[i].name,
				 ROUTER_MAX_TARGETS);
			return NULL;
		}
		ntargets += cfg->models[i].ntargets;
		nfallback += cfg->models[i].nfallback;
	}
	struct router *r = calloc(1, sizeof(*r));
	if (!r)
		goto oom;
	r->o = *o;
	r->models = calloc(cfg->nmodels + 1, sizeof(*r->models));
	r->targets = calloc(ntargets + 1, sizeof(*r->targets));
	r->fallback = calloc(nfallback + 1, sizeof(*r->fallback));
	r->health = calloc(ntargets + 1, sizeof(*r->health));
	if (!health)
		health = r->own = router_health_new();
	if (!r->models || !r->targets || !r->fallback || !r->health || !health)
		goto oom;
	unsigned *fb = r->fallback;
	for (size_t i = 0; i < cfg->nmodels; i++) {
		const struct config_model *cm = &cfg->models[i];
		struct router_model *m = &r->models[r->nmodels++];
		struct router_target *t = &r->targets[r->ntargets];
		m->name = cm->name;
		m->index = (unsigned)i;
		m->policy = policy_of(cm->routing);
		m->targets = t;
		m->ntargets = cm->ntargets;
		m->max_tokens = cm->max_tokens;
		for (size_t k = 0; k < cm->ntargets; k++, t++) {
			const struct config_target *ct = &cm->targets[k];
			const struct config_provider *cp = config_find_provider(cfg, ct->provider);
			if (!cp) { /* the config loader checked the names: only a hand-built config */
				snprintf(err, errlen, "model %s: unknown provider %s", cm->name,
					 ct->provider);
				router_free(r);
				return NULL;
			}
			t->provider = (unsigned)(cp - cfg->providers);
			t->upstream_model = ct->model ? ct->model : cm->name;
			t->weight = ct->weight;
			t->input_per_tok = (ct->priced ? ct->input_per_mtok : cm->input_per_mtok) / 1e6;
			t->output_per_tok = (ct->priced ? ct->output_per_mtok : cm->output_per_mtok) / 1e6;
			t->context_window = ct->context_window ? ct->context_window : cm->context_window;
			int hs = health_slot(r, health, cp, t->upstream_model);
			if (hs < 0)
				goto oom;
			t->health = (unsigned)hs;
			t->slot = (unsigned)r->ntargets++;
		}
		m->fallback = fb;
		for (size_t k = 0; k < cm->nfallback; k++) {
			const struct config_model *f = config_find_model(cfg, cm->fallback[k]);
			if (f)
				*fb++ = (unsigned)(f - cfg->models);
		}
		m->nfallback = (size_t)(fb - m->fallback);
	}
	return r;
oom:
	snprintf(err, errlen, "out of memory");
	router_free(r);
	return NULL;
}

void router_free(struct router *r)
{
	if (!r)
		return;
	free(r->models);
	free(r->targets);
	free(r->fallback);
	free(r->health);
	router_health_free(r->own);
	free(r);
}

const struct router_model *router_find(const struct router *r, struct slice name)
{
	for (size_t i = 0; i < r->nmodels; i++)
		if (slice_eq_cstr(name, r->models[i].name))
			return &r->models[i];
	return NULL;
}

const struct router_model *router_model_at(const struct router *r, unsigned index)
{
	return index < r->nmodels ? &r->models[index] : NULL;
}

struct router_worker *router_worker_new(const struct router *r)
{
	struct router_worker *rw = calloc(1, sizeof(*rw));
	if (!rw)
		return NULL;
	rw->r = r;
	rw->slots = calloc(r->ntargets + 1, sizeof(*rw->slots));
	rw->picks = calloc(r->nmodels + 1, sizeof(*rw->picks));
	if (!rw->slots || !rw->picks) {
		router_worker_free(rw);
		return NULL;
	}
	return rw;
}

void router_worker_free(struct router_worker *rw)
{
	if (!rw)
		return;
	free(rw->slots);
	free(rw->picks);
	free(rw);
}

/* ---------------------------------------------------------------- health */

static struct router_health_entry *health_of(const struct router *r,
					     const struct router_target *t)
{
	return r->health[t->health];
}

struct router_health_entry *router_health_of(const struct router *r,
					     const struct router_target *t)
{
	return health_of(r, t);
}

enum breaker_state router_breaker(const struct router *r, const struct router_target *t)
{
	return (enum breaker_state)atomic_load_explicit(&health_of(r, t)->state,
							memory_order_acquire);
}

/* The window's buckets are numbered from 1 (0 marks a word never used) by the reporting
 * router's bucket length. */
static uint32_t epoch_of(const struct router_opts *o, uint64_t now)
{
	uint64_t len = o->breaker_window_us / WINDOW_BUCKETS;
	return (uint32_t)(now / (len ? len : 1) + 1);
}

/* One attempt into the bucket word w for epoch: a plain add when the bucket is current,
 * which it is for all but the first report of each bucket. */
static void count(_Atomic uint64_t *w, uint32_t epoch)
{
	uint64_t v = atomic_fetch_add_explicit(w, 1, memory_order_relaxed) + 1;
	for (int i = 0; i < BUCKET_TRIES; i++) {
		uint32_t e = (uint32_t)(v >> 32);
		uint64_t next;
		if (e == epoch) {
			if (i == 0)
				return; /* the add landed */
			next = v + 1; /* someone reset the bucket since our add: count again */
		} else if ((int32_t)(e - epoch) > 0) {
			return; /* a later bucket: this report's clock is behind, drop it */
		} else {
			next = (uint64_t)epoch << 32 | 1; /* stale: restart it with ours */
		}
		if (atomic_compare_exchange_weak_explicit(w, &v, next, memory_order_relaxed,
							  memory_order_relaxed))
			return;
	}
}

/* An attempt's outcome into the window, when the router keeps one. */
static void tally(struct router_health_entry *h, const struct router_opts *o, uint64_t now,
		  bool ok)
{
	if (!o->breaker_window_us)
		return;
	uint32_t epoch = epoch_of(o, now);
	struct bucket *b = &h->window[epoch % WINDOW_BUCKETS];
	count(ok ? &b->ok : &b->fail, epoch);
}

static uint64_t in_window(const _Atomic uint64_t *w, uint32_t epoch)
{
	uint64_t v = atomic_load_explicit(w, memory_order_relaxed);
	return (uint32_t)(epoch - (uint32_t)(v >> 32)) < WINDOW_BUCKETS ? (uint32_t)v : 0;
}

static void window_counts(const struct router_health_entry *h, const struct router_opts *o,
			  uint64_t now, uint64_t *ok, uint64_t *fail)
{
	uint32_t epoch = epoch_of(o, now);
	*ok = *fail = 0;
	for (size_t i = 0; i < WINDOW_BUCKETS; i++) {
		*ok += in_window(&h->window[i].ok, epoch);
		*fail += in_window(&h->window[i].fail, epoch);
	}
}

void router_health_counts(const struct router *r, const struct router_target *t,
			  uint64_t now_us, uint64_t *ok, uint64_t *fail)
{
	window_counts(health_of(r, t), &r->o, now_us, ok, fail);
}

/* A closed breaker starts afresh: the failures that opened it are not held against it. */
static void close_breaker(struct router_health_entry *h, uint32_t from, const char *why)
{
	if (!atomic_compare_exchange_strong_explicit(&h->state, &from, BREAKER_CLOSED,
						     memory_order_acq_rel, memory_order_acquire))
		return;
	atomic_store_explicit(&h->consecutive, 0, memory_order_relaxed);
	for (size_t i = 0; i < WINDOW_BUCKETS; i++) {
		atomic_store_explicit(&h->window[i].ok, 0, memory_order_relaxed);
		atomic_store_explicit(&h->window[i].fail, 0, memory_order_relaxed);
	}
	log_info("breaker %s/%s: closed (%s)", h->provider, h->model, why);
}

/* Closed, or open with its cool-down over (a probe may go). */
static bool could_pass(const struct router_health_entry *h, uint64_t now)
{
	if (atomic_load_explicit(&h->state, memory_order_acquire) == BREAKER_CLOSED)
		return true;
	return now >= atomic_load_explicit(&h->until_us, memory_order_acquire);
}

/* Let a request through a breaker that is not closed: only one wins the probe. */
static bool take_probe(const struct router *r, struct router_health_entry *h, uint64_t now)
{
	uint64_t until = atomic_load_explicit(&h->until_us, memory_order_acquire);
	if (now < until ||
	    !atomic_compare_exchange_strong_explicit(&h->until_us, &until,
						     now + r->o.probe_timeout_us,
						     memory_order_acq_rel, memory_order_acquire))
		return false;
	uint32_t open = BREAKER_OPEN;
	if (atomic_compare_exchange_strong_explicit(&h->state, &open, BREAKER_HALF_OPEN,
						    memory_order_acq_rel, memory_order_acquire))
		log_info("breaker %s/%s: half-open, one probe goes through", h->provider, h->model);
	return true;
}

/* Whether this call opened it (the caller says why in the log). */
static bool open_breaker(struct router_health_entry *h, uint32_t from, uint64_t cooldown_us,
			 uint64_t now)
{
	atomic_store_explicit(&h->until_us, now + cooldown_us, memory_order_release);
	return atomic_compare_exchange_strong_explicit(&h->state, &from, BREAKER_OPEN,
						       memory_order_acq_rel, memory_order_acquire);
}

/* A failed attempt on a breaker in state st: open it if a rule says so. */
static void judge_failure(const struct router *r, struct router_health_entry *h, uint32_t st,
			  uint32_t consecutive, uint64_t now)
{
	const struct router_opts *o = &r->o;
	unsigned long long ms = (unsigned long long)(o->breaker_cooldown_us / 1000);
	if (st == BREAKER_HALF_OPEN) {
		if (open_breaker(h, st, o->breaker_cooldown_us, now))
			log_warn("breaker %s/%s: the probe failed, open again for %llu ms",
				 h->provider, h->model, ms);
		return;
	}
	if (st != BREAKER_CLOSED)
		return;
	if (o->breaker_failures && consecutive >= o->breaker_failures) {
		if (open_breaker(h, st, o->breaker_cooldown_us, now))
			log_warn("breaker %s/%s: open after %u consecutive failures, for %llu ms",
				 h->provider, h->model, consecutive, ms);
		return;
	}
	if (!o->breaker_error_rate || !o->breaker_window_us)
		return;
	uint64_t ok, fail;
	window_counts(h, o, now, &ok, &fail);
	uint64_t n = ok + fail;
	if (n < o->breaker_min_requests || fail * 100 <= (uint64_t)o->breaker_error_rate * n)
		return;
	if (open_breaker(h, st, o->breaker_cooldown_us, now))
		log_warn("breaker %s/%s: open after %llu of %llu attempts failed in %llu ms, "
			 "for %llu ms", h->provider, h->model, (unsigned long long)fail,
			 (unsigned long long)n,
			 (unsigned long long)(o->breaker_window_us / 1000), ms);
}

void router_health_mark(struct router_health_entry *h, bool ok, uint64_t cooldown_us,
			uint64_t now_us)
{
	uint32_t st = atomic_load_explicit(&h->state, memory_order_acquire);
	if (ok) {
		if (st != BREAKER_CLOSED)
			close_breaker(h, st, "the health check passed");
		return;
	}
	if (st == BREAKER_CLOSED) {
		if (open_breaker(h, st, cooldown_us, now_us))
			log_warn("breaker %s/%s: open, the health check failed", h->provider,
				 h->model);
		return;
	}
	if (st != BREAKER_OPEN)
		return; /* half-open: its probe decides */
	/* Still failing: no probe before the next check could say otherwise. */
	uint64_t until = atomic_load_explicit(&h->until_us, memory_order_acquire);
	while (until < now_us + cooldown_us &&
	       !atomic_compare_exchange_weak_explicit(&h->until_us, &until, now_us + cooldown_us,
						      memory_order_acq_rel, memory_order_acquire))
		;
}

bool router_has_usable(const struct router *r, const struct router_model *m, uint64_t tried,
		       uint64_t now_us)
{
	for (size_t i = 0; i < m->ntargets; i++)
		if (!(tried >> i & 1) && could_pass(health_of(r, &m->targets[i]), now_us))
			return true;
	return false;
}

uint64_t router_next_probe_us(const struct router *r, const struct router_model *m)
{
	uint64_t next = 0;
	for (size_t i = 0; i < m->ntargets; i++) {
		const struct router_health_entry *h = health_of(r, &m->targets[i]);
		if (atomic_load_explicit(&h->state, memory_order_acquire) == BREAKER_CLOSED)
			continue;
		uint64_t u = atomic_load_explicit(&h->until_us, memory_order_acquire);
		if (!next || u < next)
			next = u;
	}
	return next;
}

/* ---------------------------------------------------------------- policies
 *
 * Each chooses among the targets whose bit is set in `ok` without changing any state, so
 * a choice whose probe is lost to another worker can be made again without it. */

static int choose_weighted(const struct router_worker *rw, const struct router_model *m,
			   uint64_t ok)
{
	int best = -1;
	int64_t best_cur = 0;
	for (size_t i = 0; i < m->ntargets; i++) {
		if (!(ok >> i & 1))
			continue;
		const struct router_target *t = &m->targets[i];
		int64_t cur = rw->slots[t->slot].current + t->weight;
		if (best < 0 || cur > best_cur) {
			best = (int)i;
			best_cur = cur;
		}
	}
	return best;
}

/* Smooth weighted round robin (as nginx does it): every eligible target gains its weight,
 * the chosen one gives back the eligible total. Over any window the split is exact to
 * within one pick per target. */
static void commit_weighted(struct router_worker *rw, const struct router_model *m, uint64_t ok,
			    int chosen)
{
	int64_t total = 0;
	for (size_t i = 0; i < m->ntargets; i++) {
		if (!(ok >> i & 1))
			continue;
		rw->slots[m->targets[i].slot].current += m->targets[i].weight;
		total += m->targets[i].weight;
	}
	rw->slots[m->targets[chosen].slot].current -= total;
}

static double latency_cost(const struct slot *s)
{
	return (s->ewma_us + 1.0) * (double)(s->pending + 1);
}

static int choose_latency(struct router_worker *rw, const struct router_model *m, uint64_t ok)
{
	int best = -1;
	double best_cost = 0;
	unsigned n = 0;
	for (size_t i = 0; i < m->ntargets; i++) {
		if (!(ok >> i & 1))
			continue;
		n++;
		double c = latency_cost(&rw->slots[m->targets[i].slot]);
		if (best < 0 || c < best_cost) {
			best = (int)i;
			best_cost = c;
		}
	}
	unsigned every = rw->r->o.explore_every;
	uint64_t pick = rw->picks[m->index];
	if (n < 2 || !every || pick % every != every - 1)
		return best;
	/* Explore: the others in turn, so each is measured now and then. */
	size_t start = (size_t)(pick / every % m->ntargets);
	for (size_t k = 0; k < m->ntargets; k++) {
		size_t i = (start + k) % m->ntargets;
		if ((ok >> i & 1) && (int)i != best)
			return (int)i;
	}
	return best;
}

static int choose_cost(const struct router_model *m, uint64_t ok, const struct route_req *q)
{
	uint32_t out = q->max_tokens ? q->max_tokens
		       : m->max_tokens ? m->max_tokens
				       : NOMINAL_COMPLETION;
	uint64_t need = (uint64_t)q->prompt_tokens + (q->max_tokens ? q->max_tokens : 0);
	int best = -1, best_any = -1;
	double best_cost = 0, best_any_cost = 0;
	for (size_t i = 0; i < m->ntargets; i++) {
		if (!(ok >> i & 1))
			continue;
		const struct router_target *t = &m->targets[i];
		double c = t->input_per_tok * q->prompt_tokens + t->output_per_tok * out;
		if (best_any < 0 || c < best_any_cost) {
			best_any = (int)i;
			best_any_cost = c;
		}
		if (t->context_window && need > t->context_window)
			continue;
		if (best < 0 || c < best_cost) {
			best = (int)i;
			best_cost = c;
		}
	}
	return best >= 0 ? best : best_any;
}

static int choose(struct router_worker *rw, const struct router_model *m, uint64_t ok,
		  const struct route_req *q)
{
	switch (m->policy) {
	case ROUTE_WEIGHTED:
		return choose_weighted(rw, m, ok);
	case ROUTE_LATENCY:
		return choose_latency(rw, m, ok);
	case ROUTE_COST:
		return choose_cost(m, ok, q);
	case ROUTE_PRIORITY:
		break;
	}
	return ok ? __builtin_ctzll(ok) : -1;
}

int router_pick(struct router_worker *rw, const struct router_model *m, uint64_t tried,
		const struct route_req *q, uint64_t now_us, bool *probe)
{
	const struct router *r = rw->r;
	uint64_t ok = 0;
	*probe = false;
	for (size_t i = 0; i < m->ntargets; i++)
		if (!(tried >> i & 1) && could_pass(health_of(r, &m->targets[i]), now_us))
			ok |= UINT64_C(1) << i;
	/* Bounded: each round either returns or drops one target from ok. */
	while (ok) {
		int i = choose(rw, m, ok, q);
		const struct router_target *t = &m->targets[i];
		struct router_health_entry *h = health_of(r, t);
		if (atomic_load_explicit(&h->state, memory_order_acquire) != BREAKER_CLOSED) {
			if (!take_probe(r, h, now_us)) {
				ok &= ~(UINT64_C(1) << i);
				continue;
			}
			*probe = true;
		}
		if (m->policy == ROUTE_WEIGHTED)
			commit_weighted(rw, m, ok, i);
		rw->picks[m->index]++;
		rw->slots[t->slot].pending++;
		return i;
	}
	return -1;
}

/* ---------------------------------------------------------------- outcomes */

/* Peak-EWMA: a slower sample is taken at once, a faster one decays the estimate toward
 * it by the time since the previous sample. */
static void sample(const struct router *r, struct slot *s, double us, uint64_t now)
{
	if (s->ewma_us == 0 || us > s->ewma_us) {
		s->ewma_us = us;
	} else {
		double dt = now > s->stamp_us ? (double)(now - s->stamp_us) : 0;
		double w = exp(-dt / (double)(r->o.latency_decay_us ? r->o.latency_decay_us : 1));
		s->ewma_us = s->ewma_us * w + us * (1 - w);
	}
	s->stamp_us = now;
}

static void succeeded(const struct router *r, struct router_health_entry *h, uint64_t now_us)
{
	uint32_t st = atomic_load_explicit(&h->state, memory_order_acquire);
	if (st != BREAKER_CLOSED)
		close_breaker(h, st, "a request succeeded");
	else if (atomic_load_explicit(&h->consecutive, memory_order_relaxed))
		atomic_store_explicit(&h->consecutive, 0, memory_order_relaxed);
	tally(h, &r->o, now_us, true);
}

static void failed(const struct router *r, struct router_health_entry *h, uint64_t now_us)
{
	tally(h, &r->o, now_us, false);
	uint32_t c = atomic_fetch_add_explicit(&h->consecutive, 1, memory_order_relaxed) + 1;
	judge_failure(r, h, atomic_load_explicit(&h->state, memory_order_acquire), c, now_us);
}

void router_report(struct router_worker *rw, const struct router_model *m, unsigned t,
		   bool probe, enum route_outcome o, uint64_t elapsed_us, uint64_t now_us)
{
	const struct router *r = rw->r;
	const struct router_target *tg = &m->targets[t];
	struct slot *s = &rw->slots[tg->slot];
	struct router_health_entry *h = health_of(r, tg);
	if (s->pending)
		s->pending--;

	switch (o) {
	case ROUTE_OK:
		sample(r, s, (double)elapsed_us, now_us);
		succeeded(r, h, now_us);
		return;
	case ROUTE_STARTED: { /* a probe that starts a stream closes its breaker at once */
		sample(r, s, (double)elapsed_us, now_us);
		uint32_t st = atomic_load_explicit(&h->state, memory_order_acquire);
		if (st != BREAKER_CLOSED)
			close_breaker(h, st, "a stream began");
		return;
	}
	case ROUTE_FAILED:
	case ROUTE_TIMEOUT: {
		double us = (double)elapsed_us;
		sample(r, s, us > FAIL_PENALTY_US ? us : FAIL_PENALTY_US, now_us);
		failed(r, h, now_us);
		return;
	}
	case ROUTE_CANCELLED:
		/* A probe that will never report: let the next request probe at once. */
		if (probe && atomic_load_explicit(&h->state, memory_order_acquire) ==
				     BREAKER_HALF_OPEN)
			atomic_store_explicit(&h->until_us, now_us, memory_order_release);
		return;
	}
}

void router_stream_end(struct router_worker *rw, const struct router_model *m, unsigned t,
		       bool ok, uint64_t now_us)
{
	struct router_health_entry *h = health_of(rw->r, &m->targets[t]);
	if (ok)
		succeeded(rw->r, h, now_us);
	else
		failed(rw->r, h, now_us);
}

double router_latency_us(const struct router_worker *rw, const struct router_target *t)
{
	return rw->slots[t->slot].ewma_us;
}
