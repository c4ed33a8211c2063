/* metrics.c - per-worker counters, summed and rendered as Prometheus text at scrape time. */
#include "metrics.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/engine.h"
#include "core/log.h"
#include "policy/store.h"

#define CACHE_LINE 64

/* Status classes: the codes the gateway sends, one "other" for the rest. */
static const int status_codes[] = { 200, 400, 401, 403, 404, 413, 429, 499, 500, 502, 503, 504 };
#define NSTATUS_KNOWN (sizeof status_codes / sizeof status_codes[0])
#define NSTATUS (NSTATUS_KNOWN + 1)
static const char *const status_labels[NSTATUS] = {
	"200", "400", "401", "403", "404", "413", "429", "499", "500", "502", "503", "504", "other",
};

/* Latency buckets: 1-2.5-5 steps from 0.5 ms to 2 minutes (the longest a first byte may
 * take by default); upper bounds in microseconds and as written in `le`. */
static const uint64_t bucket_us[] = {
	500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
	1000000, 2500000, 5000000, 10000000, 30000000, 60000000, 120000000,
};
static const char *const bucket_le[] = {
	"0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
	"1", "2.5", "5", "10", "30", "60", "120",
};
#define NBUCKETS (sizeof bucket_us / sizeof bucket_us[0])
static_assert(sizeof bucket_le / sizeof bucket_le[0] == NBUCKETS, "one le per bucket");
/* A histogram's slots: each bucket's own count (not cumulative: one store per
 * observation), the count above the last bound, the sum in microseconds. */
#define HIST_INF NBUCKETS
#define HIST_SUM (NBUCKETS + 1)
#define HIST_SLOTS (NBUCKETS + 2)

enum { DIR_INPUT, DIR_OUTPUT, DIR_CACHED, NDIR };
static const char *const dir_labels[NDIR] = { "input", "output", "cached" };

static const char *const upstream_kind_labels[METRICS_UP_KIND_COUNT] = {
	[METRICS_UP_CONNECT] = "connect",       [METRICS_UP_TIMEOUT] = "timeout",
	[METRICS_UP_RESET] = "reset",           [METRICS_UP_TLS] = "tls",
	[METRICS_UP_PROXY] = "proxy",           [METRICS_UP_PROTOCOL] = "protocol",
	[METRICS_UP_RESOURCES] = "resources",   [METRICS_UP_STATUS_5XX] = "status_5xx",
	[METRICS_UP_STATUS_429] = "status_429",
};

/* Offsets of each family in a worker's block, in counters. */
struct layout {
	size_t req_model, req_team, req_provider; /* [label][NSTATUS] */
	size_t tokens;                            /* [model][NDIR] */
	size_t cost_model, cost_team;
	size_t duration, ttfb;                    /* [model][HIST_SLOTS] */
	size_t upstream;                          /* [provider][HIST_SLOTS] */
	size_t upstream_errors;                   /* [provider][METRICS_UP_KIND_COUNT] */
	size_t fallbacks, disagreements, gateway_billed; /* [model] */
	size_t ratelimit, budget;                 /* [team] */
	size_t in_flight;                         /* one, two's complement */
	size_t total;
};

/* A label kind's slots: [0, count) hold the names registered so far, in registration order
 * (the boot config's first, at their config indexes), [cap] is "none". Only the thread that
 * registers (metrics_new, then metrics_label: one at a time) writes labels, names, index and
 * count; it writes a slot's label before it publishes count with a release store, and a
 * scrape reads count with acquire, so a reader never meets a half-written label. */
struct dim {
	const char *kind;     /* "model", "provider", "team": for the log */
	char **labels;        /* [cap + 1]: escaped for a label value */
	char **names;         /* [cap]: as given, for the lookup */
	uint32_t *index;      /* open addressing by name hash: slot + 1, 0 empty */
	size_t index_mask;    /* index has index_mask + 1 entries, at least 2 * cap */
	size_t cap;
	_Atomic size_t count;
	bool overflow_logged;
};

struct metrics {
	unsigned workers;
	struct dim models, providers, teams;
	struct layout lay;
	_Atomic uint64_t **blocks; /* one per worker, cache-line aligned, written by it alone */
};

/* ---------------------------------------------------------------- setup */

/* A label value per the text format: backslash, double quote and newline escaped. */
static char *label_escape(const char *s)
{
	size_t n = 0;
	for (const char *p = s; *p; p++)
		n += (*p == '\\' || *p == '"' || *p == '\n') ? 2 : 1;
	char *out = malloc(n + 1), *o = out;
	if (!out)
		return NULL;
	for (const char *p = s; *p; p++) {
		if (*p == '\\' || *p == '"' || *p == '\n') {
			*o++ = '\\';
			*o++ = *p == '\n' ? 'n' : *p;
		} else {
			*o++ = *p;
		}
	}
	*o = '\0';
	return out;
}

static void dim_free(struct dim *d)
{
	size_t n = atomic_load_explicit(&d->count, memory_order_relaxed);
	for (size_t i = 0; i < n; i++) {
		free(d->labels[i]);
		free(d->names[i]);
	}
	if (d->labels)
		free(d->labels[d->cap]);
	free(d->labels);
	free(d->names);
	free(d->index);
	d->labels = d->names = NULL;
	d->index = NULL;
	atomic_store_explicit(&d->count, 0, memory_order_relaxed);
}

/* The boot config's names plus headroom for the names reloads add: see metrics.h. */
static size_t label_capacity(size_t boot)
{
	size_t room = boot < METRICS_LABEL_HEADROOM_MIN ? METRICS_LABEL_HEADROOM_MIN : boot;
	return boot + (room > METRICS_LABEL_HEADROOM_MAX ? METRICS_LABEL_HEADROOM_MAX : room);
}

static bool dim_init(struct dim *d, const char *kind, size_t boot)
{
	d->kind = kind;
	d->cap = label_capacity(boot);
	if (d->cap > UINT32_MAX / 4 || d->cap > INT_MAX)
		return false;
	size_t isize = 1;
	while (isize < 2 * d->cap)
		isize *= 2;
	d->index_mask = isize - 1;
	atomic_init(&d->count, 0);
	d->labels = calloc(d->cap + 1, sizeof *d->labels);
	d->names = calloc(d->cap, sizeof *d->names);
	d->index = calloc(isize, sizeof *d->index);
	if (!d->labels || !d->names || !d->index)
		return false;
	d->labels[d->cap] = strdup("none");
	return d->labels[d->cap] != NULL;
}

/* FNV-1a: names are the operator's, not an attacker's, and only the reload looks up. */
static size_t name_hash(const char *s)
{
	uint64_t h = 14695981039346656037u;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211u;
	return (size_t)h;
}

/* The slot holding name, or the index position where it would go (*found false). The
 * index is never more than half full, so the probe ends at an empty entry. */
static size_t dim_find(const struct dim *d, const char *name, bool *found)
{
	size_t at = name_hash(name) & d->index_mask;
	for (size_t probe = 0; probe <= d->index_mask; probe++, at = (at + 1) & d->index_mask) {
		uint32_t s = d->index[at];
		if (!s)
			break;
		if (strcmp(d->names[s - 1], name) == 0) {
			*found = true;
			return s - 1;
		}
	}
	assert(d->index[at] == 0);
	*found = false;
	return at;
}

/* Append name as the next slot and publish it; -1 when full or out of memory. */
static int dim_add(struct dim *d, const char *name, size_t index_at)
{
	size_t n = atomic_load_explicit(&d->count, memory_order_relaxed);
	if (n == d->cap)
		return -1;
	d->names[n] = strdup(name);
	d->labels[n] = label_escape(name);
	if (!d->names[n] || !d->labels[n]) {
		free(d->names[n]);
		free(d->labels[n]);
		d->names[n] = d->labels[n] = NULL;
		return -1;
	}
	d->index[index_at] = (uint32_t)n + 1;
	atomic_store_explicit(&d->count, n + 1, memory_order_release);
	return (int)n;
}

static void layout_init(struct layout *l, size_t nm, size_t np, size_t nt)
{
	size_t at = 0;
#define TAKE(field, count) (l->field = at, at += (count))
	TAKE(req_model, nm * NSTATUS);
	TAKE(req_team, nt * NSTATUS);
	TAKE(req_provider, np * NSTATUS);
	TAKE(tokens, nm * NDIR);
	TAKE(cost_model, nm);
	TAKE(cost_team, nt);
	TAKE(duration, nm * HIST_SLOTS);
	TAKE(ttfb, nm * HIST_SLOTS);
	TAKE(upstream, np * HIST_SLOTS);
	TAKE(upstream_errors, np * METRICS_UP_KIND_COUNT);
	TAKE(fallbacks, nm);
	TAKE(disagreements, nm);
	TAKE(gateway_billed, nm);
	TAKE(ratelimit, nt);
	TAKE(budget, nt);
	TAKE(in_flight, 1);
#undef TAKE
	l->total = at;
}

/* names is an array of structs of size stride whose first member is the char *name; they
 * take slots 0.. in order (a config's names are unique, so no lookup). */
static bool dim_boot(struct dim *d, const void *items, size_t count, size_t stride)
{
	for (size_t i = 0; i < count; i++) {
		const char *name = *(char *const *)(const void *)((const char *)items + i * stride);
		bool found;
		size_t at = dim_find(d, name ? name : "", &found);
		if (found || dim_add(d, name ? name : "", at) != (int)i)
			return false;
	}
	return true;
}

struct metrics *metrics_new(const struct config *cfg, unsigned workers)
{
	assert(cfg);
	assert(workers > 0);
	struct metrics *m = calloc(1, sizeof *m);
	if (!m)
		return NULL;
	m->workers = workers;
	if (!dim_init(&m->models, "model", cfg->nmodels) ||
	    !dim_init(&m->providers, "provider", cfg->nproviders) ||
	    !dim_init(&m->teams, "team", cfg->nteams) ||
	    !dim_boot(&m->models, cfg->models, cfg->nmodels, sizeof *cfg->models) ||
	    !dim_boot(&m->providers, cfg->providers, cfg->nproviders, sizeof *cfg->providers) ||
	    !dim_boot(&m->teams, cfg->teams, cfg->nteams, sizeof *cfg->teams))
		goto fail;
	layout_init(&m->lay, m->models.cap + 1, m->providers.cap + 1, m->teams.cap + 1);
	m->blocks = calloc(workers, sizeof *m->blocks);
	if (!m->blocks)
		goto fail;
	size_t bytes = m->lay.total * sizeof(uint64_t);
	bytes = (bytes + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE;
	for (unsigned w = 0; w < workers; w++) {
		m->blocks[w] = aligned_alloc(CACHE_LINE, bytes);
		if (!m->blocks[w])
			goto fail;
		for (size_t i = 0; i < m->lay.total; i++)
			atomic_init(&m->blocks[w][i], 0);
	}
	return m;
fail:
	metrics_free(m);
	return NULL;
}

/* The config's struct names are their first member; the stride walks each array. */
static_assert(offsetof(struct config_model, name) == 0, "name first");
static_assert(offsetof(struct config_provider, name) == 0, "name first");
static_assert(offsetof(struct config_team, name) == 0, "name first");

void metrics_free(struct metrics *m)
{
	if (!m)
		return;
	for (unsigned w = 0; m->blocks && w < m->workers; w++)
		free(m->blocks[w]);
	free(m->blocks);
	dim_free(&m->models);
	dim_free(&m->providers);
	dim_free(&m->teams);
	free(m);
}

int metrics_label(struct metrics *m, enum metrics_label_kind kind, const char *name)
{
	assert(m);
	struct dim *d = kind == METRICS_LABEL_MODEL      ? &m->models
			: kind == METRICS_LABEL_PROVIDER ? &m->providers
			: kind == METRICS_LABEL_TEAM     ? &m->teams
							 : NULL;
	if (!d || !name)
		return -1;
	bool found;
	size_t at = dim_find(d, name, &found);
	if (found)
		return (int)at;
	int slot = dim_add(d, name, at);
	if (slot >= 0)
		return slot;
	if (atomic_load_explicit(&d->count, memory_order_relaxed) < d->cap) {
		log_warn("metrics: out of memory registering a %s; it counts as \"none\"", d->kind);
	} else if (!d->overflow_logged) {
		/* once: every later new name would say the same */
		d->overflow_logged = true;
		log_warn("metrics: all %zu %s label slots are taken; %ss added by a reload from now "
			 "on count as \"none\" until a restart", d->cap, d->kind, d->kind);
	}
	return -1;
}

/* ---------------------------------------------------------------- recording */

/* The single writer's increment: no read-modify-write, so no lock prefix. */
static inline void bump(_Atomic uint64_t *c, uint64_t n)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
			      memory_order_relaxed);
}

/* A slot the registering thread handed out is below count for every thread it reached
 * (through whatever published it), so relaxed suffices; anything else counts as none. */
static inline size_t dim_index(const struct dim *d, int i)
{
	size_t n = atomic_load_explicit(&d->count, memory_order_relaxed);
	return i >= 0 && (size_t)i < n ? (size_t)i : d->cap;
}

static size_t status_class(int status)
{
	for (size_t i = 0; i < NSTATUS_KNOWN; i++)
		if (status_codes[i] == status)
			return i;
	return NSTATUS_KNOWN;
}

static void observe(_Atomic uint64_t *h, int64_t us)
{
	uint64_t v = us > 0 ? (uint64_t)us : 0;
	size_t b = 0;
	while (b < NBUCKETS && v > bucket_us[b])
		b++;
	bump(h + b, 1);
	bump(h + HIST_SUM, v);
}

bool metrics_usage_disagrees(uint64_t provider_tokens, uint64_t gateway_tokens)
{
	uint64_t hi = provider_tokens > gateway_tokens ? provider_tokens : gateway_tokens;
	uint64_t diff = hi - (provider_tokens > gateway_tokens ? gateway_tokens : provider_tokens);
	/* diff > 10% of the provider's figure, in integers: 10 * diff > provider */
	return diff > 16 && (diff > UINT64_MAX / 10 || 10 * diff > provider_tokens);
}

void metrics_request_done(struct metrics *m, unsigned worker, const struct metrics_request *r)
{
	if (!m || worker >= m->workers)
		return;
	_Atomic uint64_t *c = m->blocks[worker];
	const struct layout *l = &m->lay;
	size_t mi = dim_index(&m->models, r->model);
	size_t pi = dim_index(&m->providers, r->provider);
	size_t ti = dim_index(&m->teams, r->team);
	size_t s = status_class(r->status);

	bump(c + l->req_model + mi * NSTATUS + s, 1);
	bump(c + l->req_team + ti * NSTATUS + s, 1);
	bump(c + l->req_provider + pi * NSTATUS + s, 1);
	_Atomic uint64_t *tok = c + l->tokens + mi * NDIR;
	bump(tok + DIR_INPUT, r->input_tokens);
	bump(tok + DIR_OUTPUT, r->output_tokens);
	bump(tok + DIR_CACHED, r->cached_tokens);
	if (r->cost_micro_usd > 0) {
		bump(c + l->cost_model + mi, (uint64_t)r->cost_micro_usd);
		bump(c + l->cost_team + ti, (uint64_t)r->cost_micro_usd);
	}
	observe(c + l->duration + mi * HIST_SLOTS, r->total_us);
	if (r->first_byte_us >= 0)
		observe(c + l->ttfb + mi * HIST_SLOTS, r->first_byte_us);
	if (r->upstream_us >= 0 && r->provider >= 0)
		observe(c + l->upstream + pi * HIST_SLOTS, r->upstream_us);
	if (r->fallbacks)
		bump(c + l->fallbacks + mi, r->fallbacks);
	if (r->usage_disagreed)
		bump(c + l->disagreements + mi, 1);
	if (r->usage == METRICS_USAGE_GATEWAY)
		bump(c + l->gateway_billed + mi, 1);
}

void metrics_refused(struct metrics *m, unsigned worker, int team, enum metrics_refusal why)
{
	if (!m || worker >= m->workers)
		return;
	size_t off = why == METRICS_REFUSED_BUDGET ? m->lay.budget : m->lay.ratelimit;
	bump(m->blocks[worker] + off + dim_index(&m->teams, team), 1);
}

int metrics_upstream_kind(enum upstream_error err, int status)
{
	switch (err) {
	case UP_E_CONNECT: return METRICS_UP_CONNECT;
	case UP_E_CONNECT_TIMEOUT:
	case UP_E_FIRST_BYTE_TIMEOUT:
	case UP_E_IDLE_TIMEOUT: return METRICS_UP_TIMEOUT;
	case UP_E_RESET: return METRICS_UP_RESET;
	case UP_E_PROTOCOL: return METRICS_UP_PROTOCOL;
	case UP_E_RESOURCES: return METRICS_UP_RESOURCES;
	case UP_E_TLS: return METRICS_UP_TLS;
	case UP_E_PROXY: return METRICS_UP_PROXY;
	}
	if (status == 429)
		return METRICS_UP_STATUS_429;
	if (status >= 500 && status <= 599)
		return METRICS_UP_STATUS_5XX;
	return -1;
}

void metrics_upstream_error(struct metrics *m, unsigned worker, int provider,
			    enum metrics_upstream_kind kind)
{
	if (!m || worker >= m->workers || (unsigned)kind >= METRICS_UP_KIND_COUNT)
		return;
	size_t pi = dim_index(&m->providers, provider);
	bump(m->blocks[worker] + m->lay.upstream_errors + pi * METRICS_UP_KIND_COUNT + kind, 1);
}

void metrics_in_flight(struct metrics *m, unsigned worker, int delta)
{
	if (!m || worker >= m->workers)
		return;
	bump(m->blocks[worker] + m->lay.in_flight, (uint64_t)(int64_t)delta);
}

/* ---------------------------------------------------------------- rendering */

struct out {
	struct buf *b;
	bool failed;
};

static void __attribute__((format(printf, 2, 3))) put(struct out *o, const char *fmt, ...)
{
	if (o->failed)
		return;
	for (size_t want = 256;;) {
		if (!buf_reserve(o->b, want, METRICS_RENDER_MAX)) {
			o->failed = true;
			return;
		}
		va_list ap;
		va_start(ap, fmt);
		int n = vsnprintf(o->b->p + o->b->len, o->b->cap - o->b->len, fmt, ap);
		va_end(ap);
		if (n < 0) {
			o->failed = true;
			return;
		}
		if ((size_t)n < o->b->cap - o->b->len) {
			o->b->len += (size_t)n;
			return;
		}
		want = (size_t)n + 1;
	}
}

static void family(struct out *o, const char *name, const char *type, const char *help)
{
	put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label kind as one scrape sees it: its first n slots, then none. */
struct view {
	const struct dim *d;
	size_t n;
};

static struct view view_of(const struct dim *d)
{
	return (struct view){ d, atomic_load_explicit(&d->count, memory_order_acquire) };
}

/* The k-th slot written, for k <= n: none comes last. */
static inline size_t view_slot(const struct view *dv, size_t k)
{
	return k < dv->n ? k : dv->d->cap;
}

/* A one-label counter: every registered value, "none" only once it counted. */
static void counter_by(struct out *o, const char *name, const char *help, const char *label,
		       const struct view *dv, const uint64_t *v)
{
	family(o, name, "counter", help);
	for (size_t k = 0; k <= dv->n; k++) {
		size_t i = view_slot(dv, k);
		if (k < dv->n || v[i])
			put(o, "%s{%s=\"%s\"} %llu\n", name, label, dv->d->labels[i],
			    (unsigned long long)v[i]);
	}
}

/* A two-label counter (the second a fixed set): only the pairs that counted. */
static void counter_by2(struct out *o, const char *name, const char *help, const char *label,
			const struct view *dv, const char *label2, const char *const *values2,
			size_t n2, const uint64_t *v)
{
	family(o, name, "counter", help);
	for (size_t k = 0; k <= dv->n; k++) {
		size_t i = view_slot(dv, k);
		for (size_t j = 0; j < n2; j++)
			if (v[i * n2 + j])
				put(o, "%s{%s=\"%s\",%s=\"%s\"} %llu\n", name, label,
				    dv->d->labels[i], label2, values2[j],
				    (unsigned long long)v[i * n2 + j]);
	}
}

/* Histograms by one label: only the label values observed at least once. */
static void histogram_by(struct out *o, const char *name, const char *help, const char *label,
			 const struct view *dv, const uint64_t *v)
{
	family(o, name, "histogram", help);
	for (size_t k = 0; k <= dv->n; k++) {
		size_t i = view_slot(dv, k);
		const char *lv = dv->d->labels[i];
		const uint64_t *h = v + i * HIST_SLOTS;
		uint64_t count = 0;
		for (size_t b = 0; b <= HIST_INF; b++)
			count += h[b];
		if (!count)
			continue;
		uint64_t cum = 0;
		for (size_t b = 0; b < NBUCKETS; b++) {
			cum += h[b];
			put(o, "%s_bucket{%s=\"%s\",le=\"%s\"} %llu\n", name, label, lv,
			    bucket_le[b], (unsigned long long)cum);
		}
		put(o, "%s_bucket{%s=\"%s\",le=\"+Inf\"} %llu\n", name, label, lv,
		    (unsigned long long)count);
		put(o, "%s_sum{%s=\"%s\"} %llu.%06llu\n", name, label, lv,
		    (unsigned long long)(h[HIST_SUM] / 1000000),
		    (unsigned long long)(h[HIST_SUM] % 1000000));
		put(o, "%s_count{%s=\"%s\"} %llu\n", name, label, lv, (unsigned long long)count);
	}
}

static void scalar(struct out *o, const char *name, const char *type, const char *help,
		   unsigned long long value)
{
	family(o, name, type, help);
	put(o, "%s %llu\n", name, value);
}

/* The store's commit latency: its own fixed buckets, in microseconds. */
static void store_commit_histogram(struct out *o, const struct store_stats *ss)
{
	const char *name = "penstock_store_commit_seconds";
	family(o, name, "histogram",
	       "Store batch write transactions, from begin to commit (durability's sync included).");
	uint64_t cum = 0;
	for (unsigned b = 0; b < STORE_COMMIT_BUCKETS; b++) {
		cum += ss->commit_hist[b];
		put(o, "%s_bucket{le=\"%g\"} %llu\n", name, store_commit_bucket_us[b] / 1e6,
		    (unsigned long long)cum);
	}
	cum += ss->commit_hist[STORE_COMMIT_BUCKETS];
	put(o, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
	put(o, "%s_sum %llu.%06llu\n", name, (unsigned long long)(ss->commit_us_sum / 1000000),
	    (unsigned long long)(ss->commit_us_sum % 1000000));
	put(o, "%s_count %llu\n", name, (unsigned long long)cum);
	family(o, "penstock_store_commit_seconds_max", "gauge",
	       "The longest store batch transaction since start.");
	put(o, "penstock_store_commit_seconds_max %llu.%06llu\n",
	    (unsigned long long)(ss->commit_us_max / 1000000),
	    (unsigned long long)(ss->commit_us_max % 1000000));
	family(o, "penstock_store_prune_seconds_max", "gauge",
	       "The longest audit retention transaction since start (commits wait behind it).");
	put(o, "penstock_store_prune_seconds_max %llu.%06llu\n",
	    (unsigned long long)(ss->prune_us_max / 1000000),
	    (unsigned long long)(ss->prune_us_max % 1000000));
}

int metrics_render_targets(const struct metrics_target_health *rows, size_t n, struct buf *out)
{
	size_t start = out->len;
	struct out o = { .b = out };
	/* each row's labels, escaped once for both families */
	char **lab = calloc(n + 1, sizeof(*lab));
	o.failed = !lab;
	for (size_t i = 0; lab && i < n; i++) {
		char *p = label_escape(rows[i].provider), *m = label_escape(rows[i].model);
		if (p && m && asprintf(&lab[i], "provider=\"%s\",model=\"%s\"", p, m) < 0)
			lab[i] = NULL;
		o.failed |= !lab[i];
		free(p);
		free(m);
	}
	static const char *const states[] = { "closed", "open", "half-open" };
	family(&o, "penstock_breaker_state", "gauge",
	       "Each routing target's circuit breaker: 1 for its state now.");
	for (size_t i = 0; !o.failed && i < n; i++)
		for (int st = 0; st < 3; st++)
			put(&o, "penstock_breaker_state{%s,state=\"%s\"} %d\n", lab[i], states[st],
			    rows[i].breaker == st);
	family(&o, "penstock_target_attempts_window", "gauge",
	       "Attempts on each routing target in its breaker's error-rate window, by result.");
	for (size_t i = 0; !o.failed && i < n; i++) {
		put(&o, "penstock_target_attempts_window{%s,result=\"ok\"} %llu\n", lab[i],
		    (unsigned long long)rows[i].ok);
		put(&o, "penstock_target_attempts_window{%s,result=\"failed\"} %llu\n", lab[i],
		    (unsigned long long)rows[i].failed);
	}
	for (size_t i = 0; lab && i < n; i++)
		free(lab[i]);
	free(lab);
	if (o.failed) {
		out->len = start;
		return -ENOMEM;
	}
	return 0;
}

int metrics_render(const struct metrics *m, const struct engine_stats *es,
		   const struct store_stats *ss, const struct metrics_config_stats *cs,
		   struct buf *out)
{
	assert(m);
	assert(out);
	const struct layout *l = &m->lay;
	/* The label sets first: a slot's counters are read after its name is visible. */
	const struct view models = view_of(&m->models), providers = view_of(&m->providers),
			  teams = view_of(&m->teams);
	uint64_t *v = calloc(l->total, sizeof *v);
	if (!v)
		return -ENOMEM;
	/* Every worker's value only grows and each is read once, so each sum is at least
	 * what the previous scrape saw. */
	for (unsigned w = 0; w < m->workers; w++)
		for (size_t i = 0; i < l->total; i++)
			v[i] += atomic_load_explicit(&m->blocks[w][i], memory_order_relaxed);

	size_t start = out->len;
	struct out o = { .b = out };
	counter_by2(&o, "penstock_requests_total",
		    "Requests finished, by the model asked and the status sent.", "model",
		    &models, "status", status_labels, NSTATUS, v + l->req_model);
	counter_by2(&o, "penstock_requests_by_team_total",
		    "Requests finished, by the caller's team and the status sent.", "team",
		    &teams, "status", status_labels, NSTATUS, v + l->req_team);
	counter_by2(&o, "penstock_requests_by_provider_total",
		    "Requests finished, by the provider of their last attempt and the status sent.",
		    "provider", &providers, "status", status_labels, NSTATUS,
		    v + l->req_provider);
	family(&o, "penstock_requests_in_flight", "gauge",
	       "Requests admitted into the pipeline and not yet finished.");
	put(&o, "penstock_requests_in_flight %lld\n", (long long)(int64_t)v[l->in_flight]);
	counter_by2(&o, "penstock_tokens_total", "Tokens billed, by model and direction.",
		    "model", &models, "direction", dir_labels, NDIR, v + l->tokens);
	counter_by(&o, "penstock_cost_micro_usd_total", "Cost billed in micro-USD, by model.",
		   "model", &models, v + l->cost_model);
	counter_by(&o, "penstock_cost_by_team_micro_usd_total",
		   "Cost billed in micro-USD, by team.", "team", &teams, v + l->cost_team);
	histogram_by(&o, "penstock_request_duration_seconds",
		     "From a request's arrival to the last byte sent, by model.", "model",
		     &models, v + l->duration);
	histogram_by(&o, "penstock_time_to_first_byte_seconds",
		     "From a request's arrival to the first byte sent to the client, by model.",
		     "model", &models, v + l->ttfb);
	histogram_by(&o, "penstock_upstream_duration_seconds",
		     "A request's last upstream attempt, from sending it to its end, by provider.",
		     "provider", &providers, v + l->upstream);
	counter_by2(&o, "penstock_upstream_errors_total",
		    "Failed upstream attempts, by provider and kind.", "provider", &providers,
		    "kind", upstream_kind_labels, METRICS_UP_KIND_COUNT, v + l->upstream_errors);
	counter_by(&o, "penstock_fallbacks_total",
		   "Attempts made on a fallback model, by the model asked.", "model", &models,
		   v + l->fallbacks);
	counter_by(&o, "penstock_ratelimit_rejections_total",
		   "Requests refused by a rate limit (429), by team.", "team", &teams,
		   v + l->ratelimit);
	counter_by(&o, "penstock_budget_rejections_total",
		   "Requests refused by a budget (429), by team.", "team", &teams,
		   v + l->budget);
	counter_by(&o, "penstock_token_count_disagreements_total",
		   "Requests whose provider usage and gateway count differ by over 10% and 16 "
		   "tokens, by model.", "model", &models, v + l->disagreements);
	counter_by(&o, "penstock_billed_from_gateway_count_total",
		   "Requests billed from the gateway's own token count, by model.", "model",
		   &models, v + l->gateway_billed);
	if (es) {
		scalar(&o, "penstock_connections_open", "gauge", "Client connections open.",
		       es->open);
		scalar(&o, "penstock_connections_accepted_total", "counter",
		       "Client connections accepted since start.", es->accepted);
	}
	if (ss) {
		scalar(&o, "penstock_store_commits_total", "counter",
		       "Store write transactions committed.", ss->commits);
		scalar(&o, "penstock_store_records_total", "counter", "Store records committed.",
		       ss->records);
		scalar(&o, "penstock_store_batches_failed_total", "counter",
		       "Store batches whose transaction failed.", ss->batches_failed);
		scalar(&o, "penstock_store_ring_full_total", "counter",
		       "Records refused because a producer's ring to the store was full.",
		       ss->submit_full);
		scalar(&o, "penstock_store_map_bytes", "gauge", "Bytes of the store's LMDB map.",
		       ss->map_size);
		scalar(&o, "penstock_store_queue_depth", "gauge",
		       "Records waiting in the workers' rings for the store thread.", ss->queued);
		store_commit_histogram(&o, ss);
		scalar(&o, "penstock_store_audit_pruned_total", "counter",
		       "Audit records removed by retention.", ss->audit_pruned);
	}
	if (cs) {
		scalar(&o, "penstock_config_generation", "gauge",
		       "The configuration in effect: 1 at start, +1 per applied reload.",
		       cs->generation);
		scalar(&o, "penstock_config_snapshots", "gauge",
		       "Configuration generations in memory (requests in flight hold older ones).",
		       cs->snapshots);
		family(&o, "penstock_config_reloads_total", "counter",
		       "Configuration reloads, by result.");
		put(&o, "penstock_config_reloads_total{result=\"applied\"} %llu\n",
		    (unsigned long long)cs->reloads_applied);
		put(&o, "penstock_config_reloads_total{result=\"refused\"} %llu\n",
		    (unsigned long long)cs->reloads_refused);
	}
	free(v);
	if (o.failed) {
		out->len = start;
		return -ENOMEM;
	}
	return 0;
}
