/* test_metrics.c - the Prometheus exposition: every scrape is checked by a small parser of
 * the text format (sample syntax, HELP/TYPE once per family and before its samples, families
 * contiguous, histogram buckets cumulative up to +Inf == _count), then its values against
 * what the workers recorded; writer threads race a rendering reader that must never see a
 * counter go down; the largest config the design allows stays small.
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
	assert_int_equal(metrics_render(m, es, ss, &b), 0);
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
	assert_int_equal(metrics_render(m, &es, &ss, &b), 0);
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
	metrics_render(m, NULL, NULL, &b);
	double t2 = now_s();
	printf("metrics_request_done: %.1f ns per call (%u calls)\n", (t1 - t0) * 1e9 / n, n);
	printf("metrics_render: %.2f ms for %zu bytes (100 models, 20 providers, 100 teams, "
	       "32 workers)\n", (t2 - t1) * 1e3, b.len);
	buf_free(&b);
	metrics_free(m);
	return 0;
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
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
