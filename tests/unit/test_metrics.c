/* test_metrics.c - the Prometheus exposition: every scrape is checked by a small parser of
 * the text format (sample syntax, HELP/TYPE once per family and before its samples, families
 * contiguous, histogram buckets cumulative up to +Inf == _count), then its values against
 * what the workers recorded; writer threads race a rendering reader that must never see a
 * counter go down; the largest config the design allows stays small. Label slots added at
 * run time (a reload) keep the boot config's scrape byte for byte, keep removed names'
 * counters, overflow to "none", and are published safely to a scrape running beside them.
 *
 * `test_metrics bench` prints nanoseconds per metrics_request_done instead (never asserted). */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/engine.h"
#include "policy/metrics.h"
#include "policy/store.h"

static const char small_yaml[] =
	"providers:\n"
	"  - { name: p1, kind: openai, base_url: http://127.0.0.1:1 }\n"
	"  - { name: 'p\"2', kind: anthropic, base_url: http://127.0.0.1:2 }\n"
	"models:\n"
	"  - { name: m1, targets: [ { provider: p1, model: u1 } ] }\n"
	"  - { name: 'we\\ird\"m', targets: [ { provider: 'p\"2', model: u2 } ] }\n"
	"teams:\n"
	"  - { name: t1 }\n"
	"  - { name: t2 }\n";

static void load_config(const char *yaml, struct config *cfg)
{
	char err[CONFIG_ERR_MAX];
	if (config_load_string(yaml, strlen(yaml), "t.yaml", cfg, err, sizeof err) != 0)
		fail_msg("config: %s", err);
}

/* ---------------------------------------------------------------- the format checker */

#define MAX_FAMILIES 64

struct family {
	char name[96];
	char type[16];
	bool help, samples, closed;
};

struct expo {
	struct family fam[MAX_FAMILIES];
	size_t nfam;
	int current; /* the family whose samples come now, -1 none */
};

static struct family *find_family(struct expo *x, const char *name, size_t n)
{
	for (size_t i = 0; i < x->nfam; i++)
		if (strlen(x->fam[i].name) == n && memcmp(x->fam[i].name, name, n) == 0)
			return &x->fam[i];
	return NULL;
}

static struct family *add_family(struct expo *x, const char *name, size_t n)
{
	struct family *f = find_family(x, name, n);
	if (f)
		return f;
	if (x->nfam == MAX_FAMILIES || n >= sizeof f->name)
		return NULL;
	f = &x->fam[x->nfam++];
	memset(f, 0, sizeof *f);
	memcpy(f->name, name, n);
	return f;
}

static bool name_char(char c, bool first)
{
	return isalpha((unsigned char)c) || c == '_' || c == ':' || (!first && isdigit((unsigned char)c));
}

/* Parse `{a="x",b="y"}` at p; the label set without le into key[], le into le[].
 * Returns the end, or NULL if malformed. */
static const char *parse_labels(const char *p, const char *end, char *key, size_t keycap,
				char *le, size_t lecap)
{
	size_t kn = 0;
	le[0] = '\0';
	if (p == end || *p != '{')
		goto done;
	p++;
	while (p < end && *p != '}') {
		const char *ln = p;
		while (p < end && name_char(*p, p == ln))
			p++;
		if (p == ln || p + 1 >= end || p[0] != '=' || p[1] != '"')
			return NULL;
		size_t lnlen = (size_t)(p - ln);
		p += 2;
		char val[256];
		size_t vn = 0;
		while (p < end && *p != '"') {
			if (*p == '\n')
				return NULL;
			if (*p == '\\') {
				if (p + 1 >= end || (p[1] != '\\' && p[1] != '"' && p[1] != 'n'))
					return NULL;
				p++;
			}
			if (vn + 1 >= sizeof val)
				return NULL;
			val[vn++] = *p++;
		}
		if (p == end)
			return NULL;
		val[vn] = '\0';
		p++;
		if (lnlen == 2 && memcmp(ln, "le", 2) == 0) {
			if (vn >= lecap)
				return NULL;
			memcpy(le, val, vn + 1);
		} else {
			int n = snprintf(key + kn, keycap - kn, "%.*s=%s,", (int)lnlen, ln, val);
			if (n < 0 || (size_t)n >= keycap - kn)
				return NULL;
			kn += (size_t)n;
		}
		if (p < end && *p == ',')
			p++;
		else if (p < end && *p != '}')
			return NULL;
	}
	if (p == end)
		return NULL;
	p++;
done:
	key[kn] = '\0';
	return p;
}

/* The state of one histogram series while its buckets go by. */
struct hist_state {
	char key[512];
	double last_le, last_count, inf;
	bool open, saw_inf;
};

#define BAD(...) do { snprintf(why, cap, __VA_ARGS__); return why; } while (0)

/* Checks the whole text: NULL, or what is wrong (with its line) in why. */
static const char *expo_error(const char *text, size_t len, char *why, size_t cap)
{
	static struct expo xs;
	struct expo *x = &xs;
	struct hist_state h = { 0 };
	const char *p = text, *end = text + len;
	unsigned lineno = 0;

	memset(x, 0, sizeof *x);
	x->current = -1;
	if (len == 0 || text[len - 1] != '\n')
		BAD("empty, or no newline at the end");
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		lineno++;
		const char *line = p;
		size_t n = (size_t)(nl - p);
		p = nl + 1;
		if (n >= 7 && memcmp(line, "# HELP ", 7) == 0) {
			const char *name = line + 7, *sp = memchr(name, ' ', n - 7);
			if (!sp)
				BAD("line %u: HELP without text: %.*s", lineno, (int)n, line);
			struct family *f = add_family(x, name, (size_t)(sp - name));
			if (!f)
				BAD("line %u: too many families", lineno);
			if (f->help || f->samples)
				BAD("line %u: HELP again or after samples: %.*s", lineno, (int)n,
					 line);
			f->help = true;
			continue;
		}
		if (n >= 7 && memcmp(line, "# TYPE ", 7) == 0) {
			const char *name = line + 7, *sp = memchr(name, ' ', n - 7);
			if (!sp)
				BAD("line %u: TYPE without type", lineno);
			struct family *f = add_family(x, name, (size_t)(sp - name));
			if (!f)
				BAD("line %u: too many families", lineno);
			if (f->type[0] || f->samples)
				BAD("line %u: TYPE again or after samples: %.*s", lineno, (int)n,
					 line);
			size_t tn = (size_t)(nl - sp - 1);
			if (tn >= sizeof f->type)
				BAD("line %u: type too long", lineno);
			memcpy(f->type, sp + 1, tn);
			if (strcmp(f->type, "counter") && strcmp(f->type, "gauge") &&
			    strcmp(f->type, "histogram"))
				BAD("line %u: type %s", lineno, f->type);
			continue;
		}
		if (n && line[0] == '#')
			BAD("line %u: stray comment", lineno);
		if (n == 0)
			BAD("line %u: empty line", lineno);

		/* a sample: name{labels} value */
		const char *q = line;
		while (q < nl && name_char(*q, q == line))
			q++;
		size_t nlen = (size_t)(q - line);
		if (!nlen)
			BAD("line %u: no metric name: %.*s", lineno, (int)n, line);
		char key[512], le[32];
		q = parse_labels(q, nl, key, sizeof key, le, sizeof le);
		if (!q || q >= nl || *q != ' ')
			BAD("line %u: bad labels: %.*s", lineno, (int)n, line);
		char num[64];
		size_t vlen = (size_t)(nl - q - 1);
		if (vlen == 0 || vlen >= sizeof num)
			BAD("line %u: no value", lineno);
		memcpy(num, q + 1, vlen);
		num[vlen] = '\0';
		char *vend;
		double v = strtod(num, &vend);
		if (*vend || vend == num)
			BAD("line %u: bad value: %.*s", lineno, (int)n, line);

		/* which family: the name itself, or a histogram's _bucket/_sum/_count */
		struct family *f = find_family(x, line, nlen);
		const char *suffix = "";
		if (!f) {
			static const char *const sfx[] = { "_bucket", "_sum", "_count" };
			for (size_t i = 0; i < 3 && !f; i++) {
				size_t sl = strlen(sfx[i]);
				if (nlen > sl && memcmp(line + nlen - sl, sfx[i], sl) == 0) {
					f = find_family(x, line, nlen - sl);
					suffix = sfx[i];
				}
			}
			if (f && strcmp(f->type, "histogram") != 0)
				f = NULL;
		} else if (strcmp(f->type, "histogram") == 0) {
			f = NULL; /* a histogram has no bare samples */
		}
		if (!f)
			BAD("line %u: sample of no declared family: %.*s", lineno, (int)n, line);
		if (!f->help || !f->type[0])
			BAD("line %u: sample before HELP and TYPE", lineno);
		int fi = (int)(f - x->fam);
		if (x->current != fi) {
			if (f->closed)
				BAD("line %u: family %s is not contiguous", lineno, f->name);
			if (x->current >= 0)
				x->fam[x->current].closed = true;
			x->current = fi;
		}
		f->samples = true;
		if (strcmp(f->type, "counter") == 0 || strcmp(f->type, "histogram") == 0)
			if (v < 0 || isnan(v))
				BAD("line %u: negative counter", lineno);

		if (strcmp(suffix, "_bucket") == 0) {
			if (!le[0])
				BAD("line %u: bucket without le", lineno);
			if (!h.open || strcmp(h.key, key) != 0) {
				if (h.open && !h.saw_inf)
					BAD("line %u: previous series did not end in +Inf", lineno);
				h = (struct hist_state){ .open = true, .last_le = -1 };
				snprintf(h.key, sizeof h.key, "%s", key);
			}
			if (h.saw_inf)
				BAD("line %u: bucket after +Inf", lineno);
			double bound = strcmp(le, "+Inf") == 0 ? INFINITY : strtod(le, NULL);
			if (!(bound > h.last_le))
				BAD("line %u: le not increasing", lineno);
			if (v < h.last_count)
				BAD("line %u: buckets not cumulative", lineno);
			h.last_le = bound;
			h.last_count = v;
			if (isinf(bound)) {
				h.saw_inf = true;
				h.inf = v;
			}
		} else if (strcmp(suffix, "_count") == 0) {
			if (!h.open || !h.saw_inf || strcmp(h.key, key) != 0)
				BAD("line %u: _count without its buckets", lineno);
			if (v != h.inf)
				BAD("line %u: _count %g != +Inf bucket %g", lineno, v, h.inf);
			h.open = false;
		} else if (strcmp(suffix, "_sum") == 0) {
			if (!h.open || !h.saw_inf || strcmp(h.key, key) != 0)
				BAD("line %u: _sum out of place", lineno);
		} else if (le[0]) {
			BAD("line %u: le on a non-bucket", lineno);
		}
	}
	if (h.open)
		BAD("a histogram series has no _count");
	for (size_t i = 0; i < x->nfam; i++)
		if (!x->fam[i].help || !x->fam[i].type[0])
			BAD("family %s lacks HELP or TYPE", x->fam[i].name);
	return NULL;
}

static void check_exposition(const char *text, size_t len)
{
	char why[256];
	if (expo_error(text, len, why, sizeof why))
		fail_msg("%s\n--- scrape ---\n%.*s", why, (int)len, text);
}

/* The value of the sample written exactly as `series` (name and labels), or NAN. */
static double sample(const struct buf *b, const char *series)
{
	size_t n = strlen(series);
	for (const char *p = b->p, *end = b->p + b->len; p < end;) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		if ((size_t)(nl - p) > n && memcmp(p, series, n) == 0 && p[n] == ' ')
			return strtod(p + n + 1, NULL);
		p = nl + 1;
	}
	return NAN;
}

static struct buf scrape(const struct metrics *m, const struct engine_stats *es,
			 const struct store_stats *ss)
{
	struct buf b = { 0 };
	assert_int_equal(metrics_render(m, es, ss, NULL, &b), 0);
	check_exposition(b.p, b.len);
	return b;
}

/* The checker itself: each text breaks one rule, so none may pass. */
static void test_checker_rejects(void **state)
{
	static const char *const bad[] = {
		"", "# HELP a x\n# TYPE a counter\na 1",
		"a 1\n",                                        /* undeclared */
		"# HELP a x\n# TYPE a counter\n# HELP a y\na 1\n", /* HELP twice */
		"# HELP a x\n# TYPE a counter\n# TYPE a gauge\na 1\n",
		"# HELP a x\n# TYPE a summary\na 1\n",
		"# HELP a x\n# TYPE a counter\na{l=\"x} 1\n",
		"# HELP a x\n# TYPE a counter\na{l=\"\\q\"} 1\n",  /* bad escape */
		"# HELP a x\n# TYPE a counter\na{l=\"x\"} one\n",
		"# HELP a x\n# TYPE a counter\na{l=\"x\"}\n",
		"# HELP a x\n# TYPE a counter\na -1\n",
		"# HELP a x\n# TYPE a counter\n# HELP b x\n# TYPE b gauge\na 1\nb 1\na 2\n",
		"# HELP h x\n# TYPE h histogram\nh 1\n",
		"# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"2\"} 1\n"
		"h_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n",   /* not cumulative */
		"# HELP h x\n# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\n"
		"h_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",   /* le not increasing */
		"# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
		"# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\n"
		"h_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 2\n",   /* count != +Inf */
		"# HELP h x\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\n",
	};
	static const char good[] =
		"# HELP a x y\n# TYPE a counter\na{l=\"q\\\"\\\\\\n\",m=\"2\"} 3\na 0\n"
		"# HELP h x\n# TYPE h histogram\nh_bucket{k=\"a\",le=\"1\"} 1\n"
		"h_bucket{k=\"a\",le=\"+Inf\"} 2\nh_sum{k=\"a\"} 1.5\nh_count{k=\"a\"} 2\n";
	char why[256];

	(void)state;
	assert_null(expo_error(good, sizeof good - 1, why, sizeof why));
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		if (!expo_error(bad[i], strlen(bad[i]), why, sizeof why))
			fail_msg("case %zu passed the checker:\n%s", i, bad[i]);
}

/* ---------------------------------------------------------------- tests */

static const struct metrics_request ok_m1 = {
	.model = 0, .provider = 0, .team = 0, .status = 200,
	.input_tokens = 100, .output_tokens = 20, .cached_tokens = 5,
	.cost_micro_usd = 1500, .total_us = 3000, .first_byte_us = 700, .upstream_us = 2000,
	.usage = METRICS_USAGE_PROVIDER,
};

static void test_empty_scrape(void **state)
{
	(void)state;
	struct config cfg;
	load_config(small_yaml, &cfg);
	struct metrics *m = metrics_new(&cfg, 2);
	assert_non_null(m);
	struct buf b = scrape(m, NULL, NULL);
	/* one-label counters list every configured value at zero; "none" waits for a count */
	assert_true(sample(&b, "penstock_fallbacks_total{model=\"m1\"}") == 0);
	assert_true(sample(&b, "penstock_budget_rejections_total{team=\"t2\"}") == 0);
	assert_true(isnan(sample(&b, "penstock_budget_rejections_total{team=\"none\"}")));
	assert_true(sample(&b, "penstock_requests_in_flight") == 0);
	/* two-label counters and histograms appear with their first count */
	assert_null(strstr(b.p, "penstock_requests_total{"));
	assert_null(strstr(b.p, "_bucket{"));
	/* families whose stats were not passed are left out */
	assert_null(strstr(b.p, "penstock_connections_open"));
	assert_null(strstr(b.p, "penstock_store_commits_total"));
	assert_non_null(strstr(b.p, "# TYPE penstock_request_duration_seconds histogram\n"));
	buf_free(&b);
	metrics_free(m);
	config_free(&cfg);
}

static void test_values_summed_across_workers(void **state)
{
	(void)state;
	struct config cfg;
	load_config(small_yaml, &cfg);
	struct metrics *m = metrics_new(&cfg, 3);
	config_free(&cfg); /* metrics keeps its own copies of the names */
	assert_non_null(m);

	for (unsigned w = 0; w < 3; w++)
		metrics_request_done(m, w, &ok_m1);
	struct metrics_request r = {
		.model = 1, .provider = 1, .team = -1, .status = 502, .total_us = 150000000,
		.first_byte_us = -1, .upstream_us = 40, .fallbacks = 2,
		.usage = METRICS_USAGE_GATEWAY, .usage_disagreed = true, .cost_micro_usd = -5,
	};
	metrics_request_done(m, 1, &r);
	r = (struct metrics_request){ .model = -1, .provider = -1, .team = 7, .status = 431,
				      .total_us = 10, .first_byte_us = 10, .upstream_us = -1 };
	metrics_request_done(m, 2, &r);
	metrics_request_done(m, 3, &ok_m1); /* no such worker: ignored */
	metrics_refused(m, 0, 1, METRICS_REFUSED_RATELIMIT);
	metrics_refused(m, 1, 1, METRICS_REFUSED_RATELIMIT);
	metrics_refused(m, 1, -1, METRICS_REFUSED_BUDGET);
	metrics_upstream_error(m, 2, 0, METRICS_UP_TIMEOUT);
	metrics_upstream_error(m, 0, 0, METRICS_UP_TIMEOUT);
	metrics_upstream_error(m, 0, 1, METRICS_UP_STATUS_429);
	metrics_upstream_error(m, 0, 1, (enum metrics_upstream_kind)99); /* ignored */
	metrics_in_flight(m, 0, +1);
	metrics_in_flight(m, 0, +1);
	metrics_in_flight(m, 1, +1);
	metrics_in_flight(m, 0, -1);

	struct engine_stats es = { .accepted = 12, .open = 3 };
	struct store_stats ss = { .commits = 7, .records = 40, .submit_full = 1,
				  .map_size = 1u << 28 };
	struct buf b = scrape(m, &es, &ss);
	const char *weird = "model=\"we\\\\ird\\\"m\"";
	char s[256];

	assert_true(sample(&b, "penstock_requests_total{model=\"m1\",status=\"200\"}") == 3);
	snprintf(s, sizeof s, "penstock_requests_total{%s,status=\"502\"}", weird);
	assert_true(sample(&b, s) == 1);
	assert_true(sample(&b, "penstock_requests_total{model=\"none\",status=\"other\"}") == 1);
	assert_true(sample(&b, "penstock_requests_by_team_total{team=\"t1\",status=\"200\"}") == 3);
	assert_true(sample(&b, "penstock_requests_by_team_total{team=\"none\",status=\"502\"}") == 1);
	assert_true(sample(&b, "penstock_requests_by_team_total{team=\"none\",status=\"other\"}")
		    == 1);
	assert_true(sample(&b, "penstock_requests_by_provider_total{provider=\"p\\\"2\","
			       "status=\"502\"}") == 1);
	assert_true(sample(&b, "penstock_tokens_total{model=\"m1\",direction=\"input\"}") == 300);
	assert_true(sample(&b, "penstock_tokens_total{model=\"m1\",direction=\"output\"}") == 60);
	assert_true(sample(&b, "penstock_tokens_total{model=\"m1\",direction=\"cached\"}") == 15);
	assert_true(sample(&b, "penstock_cost_micro_usd_total{model=\"m1\"}") == 4500);
	snprintf(s, sizeof s, "penstock_cost_micro_usd_total{%s}", weird);
	assert_true(sample(&b, s) == 0);
	assert_true(sample(&b, "penstock_cost_by_team_micro_usd_total{team=\"t1\"}") == 4500);

	/* 3 ms falls in le=0.005 (not 0.0025); 150 s only in +Inf */
	assert_true(sample(&b, "penstock_request_duration_seconds_bucket{model=\"m1\","
			       "le=\"0.0025\"}") == 0);
	assert_true(sample(&b, "penstock_request_duration_seconds_bucket{model=\"m1\","
			       "le=\"0.005\"}") == 3);
	assert_true(sample(&b, "penstock_request_duration_seconds_sum{model=\"m1\"}") == 0.009);
	snprintf(s, sizeof s, "penstock_request_duration_seconds_bucket{%s,le=\"120\"}", weird);
	assert_true(sample(&b, s) == 0);
	snprintf(s, sizeof s, "penstock_request_duration_seconds_bucket{%s,le=\"+Inf\"}", weird);
	assert_true(sample(&b, s) == 1);
	snprintf(s, sizeof s, "penstock_request_duration_seconds_sum{%s}", weird);
	assert_true(sample(&b, s) == 150);
	/* no first byte, no ttfb; the model-less request's first byte counts under none */
	snprintf(s, sizeof s, "penstock_time_to_first_byte_seconds_count{%s}", weird);
	assert_true(isnan(sample(&b, s)));
	assert_true(sample(&b, "penstock_time_to_first_byte_seconds_count{model=\"m1\"}") == 3);
	assert_true(sample(&b, "penstock_time_to_first_byte_seconds_bucket{model=\"none\","
			       "le=\"0.0005\"}") == 1);
	assert_true(sample(&b, "penstock_upstream_duration_seconds_count{provider=\"p1\"}") == 3);
	assert_true(sample(&b, "penstock_upstream_duration_seconds_bucket{provider=\"p\\\"2\","
			       "le=\"0.0005\"}") == 1);
	assert_true(isnan(sample(&b, "penstock_upstream_duration_seconds_count{provider=\"none\"}")));

	assert_true(sample(&b, "penstock_upstream_errors_total{provider=\"p1\",kind=\"timeout\"}")
		    == 2);
	assert_true(sample(&b, "penstock_upstream_errors_total{provider=\"p\\\"2\","
			       "kind=\"status_429\"}") == 1);
	snprintf(s, sizeof s, "penstock_fallbacks_total{%s}", weird);
	assert_true(sample(&b, s) == 2);
	assert_true(sample(&b, "penstock_ratelimit_rejections_total{team=\"t2\"}") == 2);
	assert_true(sample(&b, "penstock_budget_rejections_total{team=\"none\"}") == 1);
	snprintf(s, sizeof s, "penstock_token_count_disagreements_total{%s}", weird);
	assert_true(sample(&b, s) == 1);
	snprintf(s, sizeof s, "penstock_billed_from_gateway_count_total{%s}", weird);
	assert_true(sample(&b, s) == 1);
	assert_true(sample(&b, "penstock_billed_from_gateway_count_total{model=\"m1\"}") == 0);
	assert_true(sample(&b, "penstock_requests_in_flight") == 2);
	assert_true(sample(&b, "penstock_connections_open") == 3);
	assert_true(sample(&b, "penstock_connections_accepted_total") == 12);
	assert_true(sample(&b, "penstock_store_commits_total") == 7);
	assert_true(sample(&b, "penstock_store_records_total") == 40);
	assert_true(sample(&b, "penstock_store_ring_full_total") == 1);
	assert_true(sample(&b, "penstock_store_map_bytes") == 1u << 28);

	/* a render appends; a second one is the same text again */
	size_t first = b.len;
	assert_int_equal(metrics_render(m, &es, &ss, NULL, &b), 0);
	assert_int_equal(b.len, 2 * first);
	assert_memory_equal(b.p, b.p + first, first);
	buf_free(&b);
	metrics_free(m);
}

static void test_helpers(void **state)
{
	(void)state;
	assert_int_equal(metrics_upstream_kind(UP_E_CONNECT, 0), METRICS_UP_CONNECT);
	assert_int_equal(metrics_upstream_kind(UP_E_FIRST_BYTE_TIMEOUT, 0), METRICS_UP_TIMEOUT);
	assert_int_equal(metrics_upstream_kind(UP_E_IDLE_TIMEOUT, 200), METRICS_UP_TIMEOUT);
	assert_int_equal(metrics_upstream_kind(UP_E_TLS, 0), METRICS_UP_TLS);
	assert_int_equal(metrics_upstream_kind(UP_E_PROXY, 0), METRICS_UP_PROXY);
	assert_int_equal(metrics_upstream_kind(0, 503), METRICS_UP_STATUS_5XX);
	assert_int_equal(metrics_upstream_kind(0, 429), METRICS_UP_STATUS_429);
	assert_int_equal(metrics_upstream_kind(0, 400), -1);
	assert_int_equal(metrics_upstream_kind(0, 200), -1);

	assert_false(metrics_usage_disagrees(100, 116)); /* 16 tokens: not more than 16 */
	assert_true(metrics_usage_disagrees(100, 117));
	assert_false(metrics_usage_disagrees(1000, 1100)); /* 10%: not more than 10% */
	assert_true(metrics_usage_disagrees(1000, 1101));
	assert_true(metrics_usage_disagrees(1000, 899));
	assert_false(metrics_usage_disagrees(0, 16));
	assert_true(metrics_usage_disagrees(0, 17));
	assert_true(metrics_usage_disagrees(UINT64_MAX, 0));
	assert_false(metrics_usage_disagrees(UINT64_MAX, UINT64_MAX - 16));
}

/* ---- writers against a rendering reader ---- */

#define WRITERS 4
#define PER_WRITER 200000

struct race {
	struct metrics *m;
	atomic_uint finished; /* writers done */
	unsigned scrapes;
};

struct writer_arg {
	struct race *race;
	unsigned worker;
};

static void *writer_run(void *arg)
{
	struct writer_arg *a = arg;
	struct metrics_request q = ok_m1;
	for (unsigned i = 0; i < PER_WRITER; i++) {
		q.total_us = (int64_t)(i % 1000) * 1000;
		q.team = (int)(i % 3) - 1;
		metrics_in_flight(a->race->m, a->worker, +1);
		metrics_request_done(a->race->m, a->worker, &q);
		metrics_in_flight(a->race->m, a->worker, -1);
	}
	atomic_fetch_add(&a->race->finished, 1);
	return NULL;
}

/* The main thread scrapes while the writers run (cmocka asserts only from it): no counter
 * may go down from one scrape to the next, and the gauge stays within its bounds. */
static void test_writers_and_reader(void **state)
{
	(void)state;
	struct config cfg;
	load_config(small_yaml, &cfg);
	struct race race = { .m = metrics_new(&cfg, WRITERS) };
	config_free(&cfg);
	assert_non_null(race.m);

	pthread_t wt[WRITERS];
	struct writer_arg args[WRITERS];
	for (unsigned i = 0; i < WRITERS; i++) {
		args[i] = (struct writer_arg){ &race, i };
		assert_int_equal(pthread_create(&wt[i], NULL, writer_run, &args[i]), 0);
	}
	double last_req = 0, last_count = 0, last_tok = 0;
	bool last_round = false;
	while (!last_round) {
		last_round = atomic_load(&race.finished) == WRITERS;
		struct buf b = scrape(race.m, NULL, NULL);
		double req = sample(&b, "penstock_requests_total{model=\"m1\",status=\"200\"}");
		double count = sample(&b, "penstock_request_duration_seconds_count{model=\"m1\"}");
		double tok = sample(&b, "penstock_tokens_total{model=\"m1\",direction=\"input\"}");
		double inflight = sample(&b, "penstock_requests_in_flight");
		buf_free(&b);
		if (isnan(req)) /* nothing recorded yet */
			req = count = tok = 0;
		assert_true(req >= last_req);
		assert_true(count >= last_count);
		assert_true(tok >= last_tok);
		assert_true(inflight >= 0 && inflight <= WRITERS);
		last_req = req, last_count = count, last_tok = tok;
		race.scrapes++;
	}
	for (unsigned i = 0; i < WRITERS; i++)
		pthread_join(wt[i], NULL);
	print_message("%u scrapes during the writes\n", race.scrapes);
	assert_true(last_req == (double)WRITERS * PER_WRITER);
	assert_true(last_count == last_req);
	assert_true(last_tok == 100.0 * WRITERS * PER_WRITER);

	struct buf b = scrape(race.m, NULL, NULL);
	assert_true(sample(&b, "penstock_requests_by_team_total{team=\"none\",status=\"200\"}") +
		    sample(&b, "penstock_requests_by_team_total{team=\"t1\",status=\"200\"}") +
		    sample(&b, "penstock_requests_by_team_total{team=\"t2\",status=\"200\"}") ==
		    (double)WRITERS * PER_WRITER);
	assert_true(sample(&b, "penstock_requests_in_flight") == 0);
	buf_free(&b);
	metrics_free(race.m);
}

/* ---- the largest config: 100 models, 20 providers, 100 teams, 32 workers ---- */

static char *big_yaml(unsigned nmodels, unsigned nproviders, unsigned nteams)
{
	struct buf b = { 0 };
	char line[256];
#define ADD(...) do { int n_ = snprintf(line, sizeof line, __VA_ARGS__); \
		assert_true(buf_append(&b, line, (size_t)n_, 1u << 24)); } while (0)
	ADD("providers:\n");
	for (unsigned i = 0; i < nproviders; i++)
		ADD("  - { name: provider-%u, kind: openai, base_url: http://127.0.0.1:%u }\n", i,
		    1000 + i);
	ADD("models:\n");
	for (unsigned i = 0; i < nmodels; i++)
		ADD("  - { name: model-%u, targets: [ { provider: provider-%u, model: u } ] }\n", i,
		    i % nproviders);
	ADD("teams:\n");
	for (unsigned i = 0; i < nteams; i++)
		ADD("  - { name: team-%u }\n", i);
#undef ADD
	assert_true(buf_append(&b, "", 1, 1u << 24));
	return b.p;
}

static void test_largest_config(void **state)
{
	(void)state;
	char *yaml = big_yaml(100, 20, 100);
	struct config cfg;
	load_config(yaml, &cfg);
	free(yaml);
	struct metrics *m = metrics_new(&cfg, 32);
	config_free(&cfg);
	assert_non_null(m);

	/* every series of every family once, spread over the workers */
	unsigned w = 0;
	for (int mi = 0; mi <= 100; mi++)
		for (int s = 0; s < 13; s++) {
			static const int st[] = { 200, 400, 401, 403, 404, 413, 429, 499, 500, 502,
						  503, 504, 418 };
			struct metrics_request r = ok_m1;
			r.model = mi < 100 ? mi : -1;
			r.team = mi < 100 ? mi : -1;
			r.provider = mi % 21 < 20 ? mi % 21 : -1;
			r.status = st[s];
			r.total_us = (int64_t)s * 10000000;
			r.fallbacks = 1;
			metrics_request_done(m, w++ % 32, &r);
		}
	struct buf b = scrape(m, &(struct engine_stats){ 0 }, &(struct store_stats){ 0 });
	print_message("largest config: a full scrape is %zu bytes\n", b.len);
	assert_true(b.len < 2u << 20);
	assert_true(sample(&b, "penstock_requests_total{model=\"model-99\",status=\"other\"}") == 1);
	assert_true(sample(&b, "penstock_fallbacks_total{model=\"none\"}") == 13);
	buf_free(&b);
	metrics_free(m);
}

/* ---- labels registered at run time: what a config reload does ---- */

/* The boot config's scrape as the index-based metrics (before metrics_label) wrote it for
 * record_boot_sample(): slot capacity and run-time registration must not change a byte. */
static const char boot_golden[] =
	"# HELP penstock_requests_total Requests finished, by the model asked and the status sent.\n"
	"# TYPE penstock_requests_total counter\n"
	"penstock_requests_total{model=\"we\\\\ird\\\"m\",status=\"200\"} 1\n"
	"penstock_requests_total{model=\"none\",status=\"404\"} 1\n"
	"# HELP penstock_requests_by_team_total Requests finished, by the caller's team and the"
	" status sent.\n"
	"# TYPE penstock_requests_by_team_total counter\n"
	"penstock_requests_by_team_total{team=\"t2\",status=\"200\"} 1\n"
	"penstock_requests_by_team_total{team=\"none\",status=\"404\"} 1\n"
	"# HELP penstock_requests_by_provider_total Requests finished, by the provider of their"
	" last attempt and the status sent.\n"
	"# TYPE penstock_requests_by_provider_total counter\n"
	"penstock_requests_by_provider_total{provider=\"p\\\"2\",status=\"200\"} 1\n"
	"penstock_requests_by_provider_total{provider=\"none\",status=\"404\"} 1\n"
	"# HELP penstock_requests_in_flight Requests admitted into the pipeline and not yet"
	" finished.\n"
	"# TYPE penstock_requests_in_flight gauge\n"
	"penstock_requests_in_flight 1\n"
	"# HELP penstock_tokens_total Tokens billed, by model and direction.\n"
	"# TYPE penstock_tokens_total counter\n"
	"penstock_tokens_total{model=\"we\\\\ird\\\"m\",direction=\"input\"} 10\n"
	"penstock_tokens_total{model=\"we\\\\ird\\\"m\",direction=\"output\"} 2\n"
	"# HELP penstock_cost_micro_usd_total Cost billed in micro-USD, by model.\n"
	"# TYPE penstock_cost_micro_usd_total counter\n"
	"penstock_cost_micro_usd_total{model=\"m1\"} 0\n"
	"penstock_cost_micro_usd_total{model=\"we\\\\ird\\\"m\"} 30\n"
	"# HELP penstock_cost_by_team_micro_usd_total Cost billed in micro-USD, by team.\n"
	"# TYPE penstock_cost_by_team_micro_usd_total counter\n"
	"penstock_cost_by_team_micro_usd_total{team=\"t1\"} 0\n"
	"penstock_cost_by_team_micro_usd_total{team=\"t2\"} 30\n"
	"# HELP penstock_request_duration_seconds From a request's arrival to the last byte sent,"
	" by model.\n"
	"# TYPE penstock_request_duration_seconds histogram\n"
	"penstock_request_duration_seconds_bucket{model=\"we\\\\ird\\\"m\",le=\"0.0005\"} 0\n"
	"penstock_request_duration_seconds_bucket{model=\"we\\\\ird\\\"m\",le=\"0.001\"} 0\n"
	"penstock_request_duration_seconds_bucket{model=\"we\\\\ird\\\"m\",le=\"0.0025\"} 0\n"
	"penstock_request_duration_seconds_bucket{model=\"we\\\\ird\\\"m\",le=\"0.005\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"we\\\\ird\\\"m\",le=\"0.01\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"we\\\\ird\\\"m\",le=\"0.025\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"we\\\\ird\\\"m\",le=\"0.05\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"we\\\\ird\\\"m\",le=\"0.1\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"we\\\\ird\\\"m\",le=\"0.25\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"we\\\\ird\\\"m\",le=\"0.5\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"we\\\\ird\\\"m\",le=\"1\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"we\\\\ird\\\"m\",le=\"2.5\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"we\\\\ird\\\"m\",le=\"5\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"we\\\\ird\\\"m\",le=\"10\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"we\\\\ird\\\"m\",le=\"30\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"we\\\\ird\\\"m\",le=\"60\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"we\\\\ird\\\"m\",le=\"120\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"we\\\\ird\\\"m\",le=\"+Inf\"} 1\n"
	"penstock_request_duration_seconds_sum{model=\"we\\\\ird\\\"m\"} 0.003000\n"
	"penstock_request_duration_seconds_count{model=\"we\\\\ird\\\"m\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"none\",le=\"0.0005\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"none\",le=\"0.001\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"none\",le=\"0.0025\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"none\",le=\"0.005\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"none\",le=\"0.01\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"none\",le=\"0.025\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"none\",le=\"0.05\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"none\",le=\"0.1\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"none\",le=\"0.25\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"none\",le=\"0.5\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"none\",le=\"1\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"none\",le=\"2.5\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"none\",le=\"5\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"none\",le=\"10\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"none\",le=\"30\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"none\",le=\"60\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"none\",le=\"120\"} 1\n"
	"penstock_request_duration_seconds_bucket{model=\"none\",le=\"+Inf\"} 1\n"
	"penstock_request_duration_seconds_sum{model=\"none\"} 0.000010\n"
	"penstock_request_duration_seconds_count{model=\"none\"} 1\n"
	"# HELP penstock_time_to_first_byte_seconds From a request's arrival to the first byte"
	" sent to the client, by model.\n"
	"# TYPE penstock_time_to_first_byte_seconds histogram\n"
	"# HELP penstock_upstream_duration_seconds A request's last upstream attempt, from sending"
	" it to its end, by provider.\n"
	"# TYPE penstock_upstream_duration_seconds histogram\n"
	"# HELP penstock_upstream_errors_total Failed upstream attempts, by provider and kind.\n"
	"# TYPE penstock_upstream_errors_total counter\n"
	"penstock_upstream_errors_total{provider=\"p1\",kind=\"reset\"} 1\n"
	"# HELP penstock_fallbacks_total Attempts made on a fallback model, by the model asked.\n"
	"# TYPE penstock_fallbacks_total counter\n"
	"penstock_fallbacks_total{model=\"m1\"} 0\n"
	"penstock_fallbacks_total{model=\"we\\\\ird\\\"m\"} 0\n"
	"# HELP penstock_ratelimit_rejections_total Requests refused by a rate limit (429), by"
	" team.\n"
	"# TYPE penstock_ratelimit_rejections_total counter\n"
	"penstock_ratelimit_rejections_total{team=\"t1\"} 1\n"
	"penstock_ratelimit_rejections_total{team=\"t2\"} 0\n"
	"# HELP penstock_budget_rejections_total Requests refused by a budget (429), by team.\n"
	"# TYPE penstock_budget_rejections_total counter\n"
	"penstock_budget_rejections_total{team=\"t1\"} 0\n"
	"penstock_budget_rejections_total{team=\"t2\"} 0\n"
	"penstock_budget_rejections_total{team=\"none\"} 1\n"
	"# HELP penstock_token_count_disagreements_total Requests whose provider usage and gateway"
	" count differ by over 10% and 16 tokens, by model.\n"
	"# TYPE penstock_token_count_disagreements_total counter\n"
	"penstock_token_count_disagreements_total{model=\"m1\"} 0\n"
	"penstock_token_count_disagreements_total{model=\"we\\\\ird\\\"m\"} 0\n"
	"# HELP penstock_billed_from_gateway_count_total Requests billed from the gateway's own"
	" token count, by model.\n"
	"# TYPE penstock_billed_from_gateway_count_total counter\n"
	"penstock_billed_from_gateway_count_total{model=\"m1\"} 0\n"
	"penstock_billed_from_gateway_count_total{model=\"we\\\\ird\\\"m\"} 1\n";

static void record_boot_sample(struct metrics *m)
{
	struct metrics_request a = { .model = 1, .provider = 1, .team = 1, .status = 200,
		.input_tokens = 10, .output_tokens = 2, .cost_micro_usd = 30, .total_us = 3000,
		.first_byte_us = -1, .upstream_us = -1, .usage = METRICS_USAGE_GATEWAY };
	struct metrics_request b = { .model = -1, .provider = -1, .team = -1, .status = 404,
		.total_us = 10, .first_byte_us = -1, .upstream_us = -1 };
	metrics_request_done(m, 0, &a);
	metrics_request_done(m, 1, &b);
	metrics_refused(m, 1, 0, METRICS_REFUSED_RATELIMIT);
	metrics_refused(m, 0, -1, METRICS_REFUSED_BUDGET);
	metrics_upstream_error(m, 1, 0, METRICS_UP_RESET);
	metrics_in_flight(m, 0, +1);
}

static void test_boot_output_unchanged(void **state)
{
	(void)state;
	struct config cfg;
	load_config(small_yaml, &cfg);
	struct metrics *m = metrics_new(&cfg, 2);
	assert_non_null(m);
	/* the boot config's slots are its indexes, so callers passing indexes keep working */
	for (size_t i = 0; i < cfg.nmodels; i++)
		assert_int_equal(metrics_label(m, METRICS_LABEL_MODEL, cfg.models[i].name), (int)i);
	for (size_t i = 0; i < cfg.nproviders; i++)
		assert_int_equal(metrics_label(m, METRICS_LABEL_PROVIDER, cfg.providers[i].name),
				 (int)i);
	for (size_t i = 0; i < cfg.nteams; i++)
		assert_int_equal(metrics_label(m, METRICS_LABEL_TEAM, cfg.teams[i].name), (int)i);
	config_free(&cfg);

	record_boot_sample(m);
	struct buf b = scrape(m, NULL, NULL);
	if (b.len != sizeof boot_golden - 1 || memcmp(b.p, boot_golden, b.len) != 0)
		fail_msg("the boot config's scrape changed:\n%.*s", (int)b.len, b.p);
	buf_free(&b);
	metrics_free(m);
}

/* The offset of the line starting with series in b, or SIZE_MAX. */
static size_t line_at(const struct buf *b, const char *series)
{
	size_t n = strlen(series);
	for (size_t at = 0; at < b->len;) {
		const char *nl = memchr(b->p + at, '\n', b->len - at);
		if (b->len - at > n && memcmp(b->p + at, series, n) == 0 && b->p[at + n] == ' ')
			return at;
		at = (size_t)(nl - b->p) + 1;
	}
	return SIZE_MAX;
}

static void test_labels_after_traffic(void **state)
{
	(void)state;
	struct config cfg;
	load_config(small_yaml, &cfg);
	struct metrics *m = metrics_new(&cfg, 2);
	config_free(&cfg);
	assert_non_null(m);
	metrics_request_done(m, 0, &ok_m1);
	struct metrics_request none = { .model = -1, .provider = -1, .team = -1, .status = 200,
					.first_byte_us = -1, .upstream_us = -1, .fallbacks = 1 };
	metrics_request_done(m, 0, &none);
	/* not registered yet: a slot beyond the names counts under none, not under a later name */
	struct metrics_request early = none;
	early.model = 2;
	metrics_request_done(m, 1, &early);

	/* a reload adds a model, a provider and a team: the next slots, the same on asking again */
	int m3 = metrics_label(m, METRICS_LABEL_MODEL, "m3");
	int p3 = metrics_label(m, METRICS_LABEL_PROVIDER, "p3");
	int t3 = metrics_label(m, METRICS_LABEL_TEAM, "t\n3");
	assert_int_equal(m3, 2);
	assert_int_equal(p3, 2);
	assert_int_equal(t3, 2);
	assert_int_equal(metrics_label(m, METRICS_LABEL_MODEL, "m3"), m3);
	assert_int_equal(metrics_label(m, METRICS_LABEL_MODEL, "m1"), 0);
	assert_int_equal(metrics_label(m, METRICS_LABEL_TEAM, "m3"), 3); /* kinds are apart */

	struct buf b = scrape(m, NULL, NULL);
	/* one-label counters list a new name at zero at once, after the boot names, before none */
	assert_true(sample(&b, "penstock_fallbacks_total{model=\"m3\"}") == 0);
	assert_true(sample(&b, "penstock_fallbacks_total{model=\"none\"}") == 2);
	assert_true(sample(&b, "penstock_ratelimit_rejections_total{team=\"t\\n3\"}") == 0);
	size_t at_m1 = line_at(&b, "penstock_fallbacks_total{model=\"m1\"}");
	size_t at_m3 = line_at(&b, "penstock_fallbacks_total{model=\"m3\"}");
	size_t at_none = line_at(&b, "penstock_fallbacks_total{model=\"none\"}");
	assert_true(at_m1 < at_m3 && at_m3 < at_none && at_none != SIZE_MAX);
	assert_true(isnan(sample(&b, "penstock_requests_total{model=\"m3\",status=\"200\"}")));
	buf_free(&b);

	struct metrics_request r = ok_m1;
	r.model = m3, r.provider = p3, r.team = t3, r.status = 503, r.fallbacks = 1;
	metrics_request_done(m, 1, &r);
	metrics_refused(m, 0, t3, METRICS_REFUSED_BUDGET);
	metrics_upstream_error(m, 1, p3, METRICS_UP_CONNECT);
	b = scrape(m, NULL, NULL);
	assert_true(sample(&b, "penstock_requests_total{model=\"m3\",status=\"503\"}") == 1);
	assert_true(sample(&b, "penstock_requests_total{model=\"m1\",status=\"200\"}") == 1);
	assert_true(sample(&b, "penstock_requests_by_team_total{team=\"t\\n3\",status=\"503\"}") ==
		    1);
	assert_true(sample(&b, "penstock_requests_by_provider_total{provider=\"p3\","
			       "status=\"503\"}") == 1);
	assert_true(sample(&b, "penstock_tokens_total{model=\"m3\",direction=\"input\"}") == 100);
	assert_true(sample(&b, "penstock_cost_by_team_micro_usd_total{team=\"t\\n3\"}") == 1500);
	assert_true(sample(&b, "penstock_request_duration_seconds_count{model=\"m3\"}") == 1);
	assert_true(sample(&b, "penstock_upstream_duration_seconds_count{provider=\"p3\"}") == 1);
	assert_true(sample(&b, "penstock_fallbacks_total{model=\"m3\"}") == 1);
	assert_true(sample(&b, "penstock_fallbacks_total{model=\"none\"}") == 2);
	assert_true(sample(&b, "penstock_budget_rejections_total{team=\"t\\n3\"}") == 1);
	assert_true(sample(&b, "penstock_upstream_errors_total{provider=\"p3\",kind=\"connect\"}")
		    == 1);
	buf_free(&b);
	metrics_free(m);
}

/* The config a reload brings: m1, p1 and t1 are gone, the rest reordered, m2 and p9 new. */
static const char reload_yaml[] =
	"providers:\n"
	"  - { name: p9, kind: openai, base_url: http://127.0.0.1:9 }\n"
	"  - { name: 'p\"2', kind: anthropic, base_url: http://127.0.0.1:2 }\n"
	"models:\n"
	"  - { name: m2, targets: [ { provider: p9, model: u1 } ] }\n"
	"  - { name: 'we\\ird\"m', targets: [ { provider: 'p\"2', model: u2 } ] }\n"
	"teams:\n"
	"  - { name: t2 }\n";

static void test_removed_name_keeps_counters(void **state)
{
	(void)state;
	struct config cfg;
	load_config(small_yaml, &cfg);
	struct metrics *m = metrics_new(&cfg, 2);
	config_free(&cfg);
	assert_non_null(m);
	metrics_request_done(m, 0, &ok_m1);
	metrics_refused(m, 0, 0, METRICS_REFUSED_RATELIMIT);

	/* the integrator's mapping at snapshot build: one metrics_label per name */
	load_config(reload_yaml, &cfg);
	int mslot[2] = { -2, -2 }, pslot[2] = { -2, -2 }, tslot[1] = { -2 };
	assert_true(cfg.nmodels == 2 && cfg.nproviders == 2 && cfg.nteams == 1);
	for (size_t i = 0; i < cfg.nmodels; i++)
		mslot[i] = metrics_label(m, METRICS_LABEL_MODEL, cfg.models[i].name);
	for (size_t i = 0; i < cfg.nproviders; i++)
		pslot[i] = metrics_label(m, METRICS_LABEL_PROVIDER, cfg.providers[i].name);
	for (size_t i = 0; i < cfg.nteams; i++)
		tslot[i] = metrics_label(m, METRICS_LABEL_TEAM, cfg.teams[i].name);
	config_free(&cfg);
	assert_int_equal(mslot[0], 2); /* m2: new */
	assert_int_equal(mslot[1], 1); /* the weird one keeps its slot at its new index */
	assert_int_equal(pslot[0], 2); /* p9: new */
	assert_int_equal(pslot[1], 1);
	assert_int_equal(tslot[0], 1);

	/* a request admitted under the old config finishes after the reload, on its old slots */
	metrics_request_done(m, 1, &ok_m1);
	struct metrics_request r = ok_m1;
	r.model = mslot[0], r.provider = pslot[0], r.team = tslot[0];
	metrics_request_done(m, 0, &r);

	struct buf b = scrape(m, NULL, NULL);
	/* m1, p1 and t1 are gone from the config, not from the counters */
	assert_true(sample(&b, "penstock_requests_total{model=\"m1\",status=\"200\"}") == 2);
	assert_true(sample(&b, "penstock_cost_micro_usd_total{model=\"m1\"}") == 3000);
	assert_true(sample(&b, "penstock_requests_by_provider_total{provider=\"p1\","
			       "status=\"200\"}") == 2);
	assert_true(sample(&b, "penstock_requests_by_team_total{team=\"t1\",status=\"200\"}") == 2);
	assert_true(sample(&b, "penstock_ratelimit_rejections_total{team=\"t1\"}") == 1);
	assert_true(sample(&b, "penstock_requests_total{model=\"m2\",status=\"200\"}") == 1);
	assert_true(sample(&b, "penstock_requests_by_provider_total{provider=\"p9\","
			       "status=\"200\"}") == 1);
	assert_true(sample(&b, "penstock_requests_by_team_total{team=\"t2\",status=\"200\"}") == 1);
	buf_free(&b);

	/* a later reload that brings m1 back finds its slot, and its counters go on from 2 */
	assert_int_equal(metrics_label(m, METRICS_LABEL_MODEL, "m1"), 0);
	metrics_request_done(m, 1, &ok_m1);
	b = scrape(m, NULL, NULL);
	assert_true(sample(&b, "penstock_requests_total{model=\"m1\",status=\"200\"}") == 3);
	buf_free(&b);
	metrics_free(m);
}

static void test_label_overflow(void **state)
{
	(void)state;
	struct config cfg;
	load_config(small_yaml, &cfg);
	struct metrics *m = metrics_new(&cfg, 2);
	config_free(&cfg);
	assert_non_null(m);

	/* 2 boot models: room for 2 + METRICS_LABEL_HEADROOM_MIN */
	const int cap = 2 + METRICS_LABEL_HEADROOM_MIN;
	char name[32];
	for (int i = 2; i < cap; i++) {
		snprintf(name, sizeof name, "model-%d", i);
		assert_int_equal(metrics_label(m, METRICS_LABEL_MODEL, name), i);
	}
	/* full: new names get none, and the error log says so once */
	FILE *err = tmpfile();
	assert_non_null(err);
	int saved = dup(STDERR_FILENO);
	assert_true(saved >= 0 && dup2(fileno(err), STDERR_FILENO) >= 0);
	int over1 = metrics_label(m, METRICS_LABEL_MODEL, "one-too-many");
	int over2 = metrics_label(m, METRICS_LABEL_MODEL, "two-too-many");
	assert_true(dup2(saved, STDERR_FILENO) >= 0);
	close(saved);
	assert_int_equal(over1, -1);
	assert_int_equal(over2, -1);
	char logged[1024] = "";
	rewind(err);
	size_t nlog = fread(logged, 1, sizeof logged - 1, err);
	logged[nlog] = '\0';
	fclose(err);
	const char *hit = strstr(logged, "label slots are taken");
	assert_non_null(hit);
	assert_null(strstr(hit + 1, "label slots are taken"));

	/* names already there still find their slots; other kinds have their own room */
	assert_int_equal(metrics_label(m, METRICS_LABEL_MODEL, "m1"), 0);
	assert_int_equal(metrics_label(m, METRICS_LABEL_MODEL, "model-65"), 65);
	assert_int_equal(metrics_label(m, METRICS_LABEL_TEAM, "t3"), 2);
	assert_int_equal(metrics_label(m, METRICS_LABEL_MODEL, NULL), -1);
	assert_int_equal(metrics_label(m, (enum metrics_label_kind)7, "x"), -1);

	struct metrics_request r = ok_m1;
	r.model = over1;
	metrics_request_done(m, 0, &r);
	r.model = cap; /* never handed out: none as well */
	metrics_request_done(m, 0, &r);
	r.model = cap - 1;
	metrics_request_done(m, 1, &r);
	struct buf b = scrape(m, NULL, NULL);
	assert_true(sample(&b, "penstock_requests_total{model=\"none\",status=\"200\"}") == 2);
	assert_true(sample(&b, "penstock_requests_total{model=\"model-65\",status=\"200\"}") == 1);
	assert_true(sample(&b, "penstock_fallbacks_total{model=\"model-64\"}") == 0);
	assert_null(strstr(b.p, "too-many"));
	buf_free(&b);
	metrics_free(m);
}

/* ---- registering while workers record and the admin thread scrapes ---- */

#define REG_MODELS 200 /* of the largest config: 100 boot models + 100 of headroom */

struct reg_race {
	struct metrics *m;
	atomic_int latest;     /* the newest model slot, published to the writer */
	atomic_bool done;
	atomic_uint failures;  /* threads other than the main one cannot assert */
	atomic_ulong recorded;
};

static void *registrar_run(void *arg)
{
	struct reg_race *race = arg;
	char name[32];
	for (int i = 100; i < REG_MODELS; i++) {
		snprintf(name, sizeof name, "reloaded-%d", i);
		int slot = metrics_label(race->m, METRICS_LABEL_MODEL, name);
		if (slot != i)
			atomic_fetch_add(&race->failures, 1);
		atomic_store_explicit(&race->latest, slot, memory_order_release);
		nanosleep(&(struct timespec){ .tv_nsec = 200000 }, NULL);
	}
	atomic_store(&race->done, true);
	return NULL;
}

static void *recorder_run(void *arg)
{
	struct reg_race *race = arg;
	struct metrics_request q = ok_m1;
	for (;;) {
		bool last = atomic_load(&race->done);
		q.model = atomic_load_explicit(&race->latest, memory_order_acquire);
		metrics_request_done(race->m, 5, &q);
		atomic_fetch_add(&race->recorded, 1);
		if (last)
			return NULL;
	}
}

/* The names a scrape lists in penstock_fallbacks_total (every registered model, in order):
 * how many of "reloaded-N" there are, or -1 when they are not exactly 100, 101, ... */
static int reloaded_listed(const struct buf *b)
{
	static const char pre[] = "penstock_fallbacks_total{model=\"reloaded-";
	int n = 0;
	for (const char *p = strstr(b->p, pre); p; p = strstr(p + 1, pre), n++)
		if (atoi(p + sizeof pre - 1) != 100 + n)
			return -1;
	return n;
}

static void test_register_while_scraping(void **state)
{
	(void)state;
	char *yaml = big_yaml(100, 20, 100);
	struct config cfg;
	load_config(yaml, &cfg);
	free(yaml);
	struct reg_race race = { .m = metrics_new(&cfg, 8), .latest = 0 };
	config_free(&cfg);
	assert_non_null(race.m);

	pthread_t reg, rec;
	assert_int_equal(pthread_create(&rec, NULL, recorder_run, &race), 0);
	assert_int_equal(pthread_create(&reg, NULL, registrar_run, &race), 0);
	int last_listed = 0;
	double last_total = 0;
	unsigned scrapes = 0, partial = 0;
	for (bool last_round = false; !last_round; scrapes++) {
		last_round = atomic_load(&race.done);
		struct buf b = scrape(race.m, NULL, NULL); /* valid text at every point */
		int listed = reloaded_listed(&b);
		assert_true(listed >= last_listed && listed <= REG_MODELS - 100);
		partial += listed > 0 && listed < REG_MODELS - 100;
		/* every request counts under some listed model: their sum only grows */
		double total = 0;
		char series[96];
		for (int i = 0; i < 100 + listed; i++) {
			snprintf(series, sizeof series,
				 i < 100 ? "penstock_requests_total{model=\"model-%d\",status=\"200\"}"
					 : "penstock_requests_total{model=\"reloaded-%d\",status=\"200\"}",
				 i);
			double v = sample(&b, series);
			total += isnan(v) ? 0 : v;
		}
		assert_true(total >= last_total);
		last_listed = listed, last_total = total;
		buf_free(&b);
	}
	pthread_join(reg, NULL);
	pthread_join(rec, NULL);
	print_message("%u scrapes, %u while registering\n", scrapes, partial);
	assert_int_equal(atomic_load(&race.failures), 0);

	struct buf b = scrape(race.m, NULL, NULL);
	assert_int_equal(reloaded_listed(&b), REG_MODELS - 100);
	double total = 0;
	char series[96];
	for (int i = 0; i < REG_MODELS; i++) {
		snprintf(series, sizeof series,
			 i < 100 ? "penstock_requests_total{model=\"model-%d\",status=\"200\"}"
				 : "penstock_requests_total{model=\"reloaded-%d\",status=\"200\"}", i);
		double v = sample(&b, series);
		total += isnan(v) ? 0 : v;
	}
	/* nothing went to none: every slot the writer used was published to it */
	assert_true(isnan(sample(&b, "penstock_requests_total{model=\"none\",status=\"200\"}")));
	assert_true(total == (double)atomic_load(&race.recorded));
	buf_free(&b);
	metrics_free(race.m);
}

/* ---- bench ---- */

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int bench(void)
{
	char *yaml = big_yaml(100, 20, 100);
	struct config cfg;
	load_config(yaml, &cfg);
	free(yaml);
	struct metrics *m = metrics_new(&cfg, 32);
	config_free(&cfg);
	if (!m)
		return 1;
	const unsigned n = 10000000;
	struct metrics_request r = ok_m1;
	double t0 = now_s();
	for (unsigned i = 0; i < n; i++) {
		r.model = (int)(i % 100);
		r.team = (int)(i % 97);
		r.provider = (int)(i % 20);
		r.total_us = (int64_t)(i % 5000) * 100;
		metrics_request_done(m, 3, &r);
	}
	double t1 = now_s();
	struct buf b = { 0 };
	metrics_render(m, NULL, NULL, NULL, &b);
	double t2 = now_s();
	printf("metrics_request_done: %.1f ns per call (%u calls)\n", (t1 - t0) * 1e9 / n, n);
	printf("metrics_render: %.2f ms for %zu bytes (100 models, 20 providers, 100 teams, "
	       "32 workers)\n", (t2 - t1) * 1e3, b.len);
	buf_free(&b);
	metrics_free(m);
	return 0;
}

/* Target health: one line per breaker state (1 for the current one), window counts, label
 * values escaped. */
static void test_target_health(void **state)
{
	(void)state;
	const struct metrics_target_health rows[] = {
		{ .provider = "a\"b", .model = "m\\1", .breaker = 1, .ok = 5, .failed = 6 },
		{ .provider = "c", .model = "m", .breaker = 0 },
	};
	struct buf b = { 0 };
	assert_int_equal(metrics_render_targets(rows, 2, &b), 0);
	assert_true(buf_append(&b, "", 1, SIZE_MAX));
	static const char *const want[] = {
		"# TYPE penstock_breaker_state gauge\n",
		"penstock_breaker_state{provider=\"a\\\"b\",model=\"m\\\\1\",state=\"open\"} 1\n",
		"penstock_breaker_state{provider=\"a\\\"b\",model=\"m\\\\1\",state=\"closed\"} 0\n",
		"penstock_breaker_state{provider=\"c\",model=\"m\",state=\"closed\"} 1\n",
		"penstock_breaker_state{provider=\"c\",model=\"m\",state=\"half-open\"} 0\n",
		"penstock_target_attempts_window{provider=\"a\\\"b\",model=\"m\\\\1\",result=\"failed\"} 6\n",
		"penstock_target_attempts_window{provider=\"c\",model=\"m\",result=\"ok\"} 0\n",
	};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		if (!strstr(b.p, want[i]))
			fail_msg("missing %s in:\n%s", want[i], b.p);
	buf_free(&b);
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "bench") == 0)
		return bench();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_checker_rejects),
		cmocka_unit_test(test_empty_scrape),
		cmocka_unit_test(test_values_summed_across_workers),
		cmocka_unit_test(test_helpers),
		cmocka_unit_test(test_writers_and_reader),
		cmocka_unit_test(test_largest_config),
		cmocka_unit_test(test_boot_output_unchanged),
		cmocka_unit_test(test_labels_after_traffic),
		cmocka_unit_test(test_removed_name_keeps_counters),
		cmocka_unit_test(test_label_overflow),
		cmocka_unit_test(test_register_while_scraping),
		cmocka_unit_test(test_target_health),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
