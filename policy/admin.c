/* admin.c - the admin plane's handler: routing, the admin token, JSON in and out. */
#include "policy/admin.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/mem.h>
#include <openssl/sha.h>

#include "core/engine.h"
#include "core/log.h"
#include "policy/audit.h"
#include "policy/metrics.h"
#include "policy/report.h"

#define ADMIN_BODY_MAX (1024 * 1024)  /* a key request is a few hundred bytes */
#define ADMIN_CONNECTIONS_MAX 256     /* operators and scripts, not clients */
#define AUDIT_LIMIT_DEFAULT 100       /* records per /admin/audit answer */
#define AUDIT_PAGE_BYTES (8u << 20)   /* an answer ends after the record that passes this */
#define AUDIT_LIMIT_MAX 1000
#define AUDIT_READ_CHUNK 1000         /* records one read looks at */
#define AUDIT_SCAN_MAX 100000         /* records one answer looks at: a page, then "next" */

/* gov's budgets alert at these percents; alerts_fired bit d * 8 + i is dimension d,
 * threshold i (policy/budget). */
static const uint16_t alert_percents[] = { 50, 80, 100 };

struct admin {
	const struct config *cfg;
	struct gov *gov;
	struct engine *engine;
	struct engine_handler handler;
	struct store_reader *reader; /* the admin worker's own */
	struct metrics *metrics;     /* GET /metrics; NULL: not served */
	struct engine *data_plane;   /* its connection counts, for /metrics */
	struct admin_control control; /* reload, config figures; zero: not served */
	bool token_set;
	uint8_t token_hash[SHA256_DIGEST_LENGTH];
};

#define OOM_BODY "{\"error\":{\"message\":\"out of memory\",\"type\":\"internal_error\"}}\n"

static const char *const period_names[] = {
	[STORE_PERIOD_TOTAL] = "total", [STORE_PERIOD_DAY] = "daily",
	[STORE_PERIOD_WEEK] = "weekly", [STORE_PERIOD_MONTH] = "monthly",
};

static int64_t now_s(void) { return (int64_t)time(NULL); }

/* ---------------------------------------------------------------- responses */

/* The body goes out as compact JSON plus a newline. A body that cannot be built (out of
 * memory) becomes a 500 with a fixed body. */
static void reply(struct exchange *ex, int status, json_t *doc, const char *headers)
{
	char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
	json_decref(doc);
	if (!text) {
		ex_respond(ex, 500, "application/json", NULL,
			   SLICE_LIT(OOM_BODY));
		return;
	}
	size_t n = strlen(text);
	char *body = realloc(text, n + 2);
	if (!body) {
		free(text);
		ex_respond(ex, 500, "application/json", NULL,
			   SLICE_LIT(OOM_BODY));
		return;
	}
	body[n++] = '\n';
	ex_respond(ex, status, "application/json", headers, slice_of(body, n));
	/* a body may hold a key's secret (creation): it leaves no copy in freed memory */
	OPENSSL_cleanse(body, n);
	free(body);
}

static const char *error_type(int status)
{
	switch (status) {
	case 400: return "invalid_request_error";
	case 401: return "authentication_error";
	case 403: return "permission_error";
	case 404: return "not_found_error";
	case 405: return "method_not_allowed";
	case 409: return "conflict_error";
	case 413: return "request_too_large";
	case 503: return "unavailable";
	default: return status >= 500 ? "internal_error" : "invalid_request_error";
	}
}

__attribute__((format(printf, 4, 5)))
static void reply_error(struct exchange *ex, int status, const char *headers, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	reply(ex, status, json_pack("{s:{s:s, s:s}}", "error", "message", msg, "type",
				    error_type(status)), headers);
}

/* ---------------------------------------------------------------- time */

static json_t *rfc3339(int64_t t)
{
	time_t tt = (time_t)t;
	struct tm tm;
	char s[40];
	if (!gmtime_r(&tt, &tm) || !strftime(s, sizeof(s), "%Y-%m-%dT%H:%M:%SZ", &tm))
		return json_null();
	return json_string(s);
}

static bool two_digits(const char *s, int *out)
{
	if (s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9')
		return false;
	*out = (s[0] - '0') * 10 + (s[1] - '0');
	return true;
}

/* RFC 3339 date-time: YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM). The fraction is
 * dropped (keys expire on whole seconds). 0 or -EINVAL. */
static int rfc3339_parse(const char *s, int64_t *out)
{
	size_t n = strlen(s);
	int hh, mi, ss, c1, c2;
	int64_t day;
	char date[11];
	if (n < 20 || n > 64 || (s[10] != 'T' && s[10] != 't' && s[10] != ' '))
		return -EINVAL;
	memcpy(date, s, 10);
	date[10] = 0;
	if (report_parse_date(date, &day) || s[13] != ':' || s[16] != ':' ||
	    !two_digits(s + 11, &hh) || !two_digits(s + 14, &mi) || !two_digits(s + 17, &ss) ||
	    hh > 23 || mi > 59 || ss > 60)
		return -EINVAL;
	const char *p = s + 19;
	if (*p == '.') {
		p++;
		if (*p < '0' || *p > '9')
			return -EINVAL;
		while (*p >= '0' && *p <= '9')
			p++;
	}
	int64_t offset = 0;
	if ((*p == 'Z' || *p == 'z') && p[1] == 0) {
		offset = 0;
	} else if ((*p == '+' || *p == '-') && strlen(p) == 6 && p[3] == ':' &&
		   two_digits(p + 1, &c1) && two_digits(p + 4, &c2) && c1 <= 23 && c2 <= 59) {
		offset = (c1 * 3600 + c2 * 60) * (*p == '-' ? -1 : 1);
	} else {
		return -EINVAL;
	}
	*out = day + hh * 3600 + mi * 60 + (ss == 60 ? 59 : ss) - offset;
	return 0;
}

/* ---------------------------------------------------------------- views */

/* Threshold i of dimension d is reached this period: the budget's own mark (set by the
 * settlement that crossed it, and logged then) or the spend itself, which also covers
 * thresholds crossed before a restart (the marks live in memory; spend is reloaded). */
static bool alert_reached(const struct budget_status *st, unsigned d, unsigned i)
{
	if (st->alerts_fired & (1u << (d * 8 + i)))
		return true;
	return st->limit[d] > 0 &&
	       (__int128)st->spent[d] * 100 >= (__int128)st->limit[d] * alert_percents[i];
}

static json_t *budget_json(struct admin *a, uint32_t id, int64_t now)
{
	struct budget_status st;
	if (id == KEYS_NONE || budget_status(gov_budget(a->gov), id, now, &st))
		return json_null();
	json_t *alerts = json_array();
	for (unsigned d = 0; d < 2; d++)
		for (unsigned i = 0; i < sizeof(alert_percents) / sizeof(alert_percents[0]); i++)
			if (alert_reached(&st, d, i))
				json_array_append_new(alerts,
					json_pack("{s:i, s:s}", "percent", alert_percents[i],
						  "dimension", d == BUDGET_USD ? "usd" : "tokens"));
	return json_pack("{s:s, s:o, s:o, s:I, s:f, s:I, s:f, s:I, s:I, s:I, s:I, s:o}",
			 "period", period_names[st.period], "period_start",
			 rfc3339(st.period_start), "period_end",
			 st.period_end == INT64_MAX ? json_null() : rfc3339(st.period_end),
			 "limit_micro_usd", (json_int_t)st.limit[BUDGET_USD], "limit_usd",
			 (double)st.limit[BUDGET_USD] / 1e6, "spent_micro_usd",
			 (json_int_t)st.spent[BUDGET_USD], "spent_usd",
			 (double)st.spent[BUDGET_USD] / 1e6, "reserved_micro_usd",
			 (json_int_t)st.reserved[BUDGET_USD], "limit_tokens",
			 (json_int_t)st.limit[BUDGET_TOKENS], "spent_tokens",
			 (json_int_t)st.spent[BUDGET_TOKENS], "reserved_tokens",
			 (json_int_t)st.reserved[BUDGET_TOKENS], "alerts", alerts);
}

static json_t *models_json(const char *const *models, size_t n, bool listed)
{
	if (!listed)
		return json_null();
	json_t *arr = json_array();
	for (size_t i = 0; arr && i < n; i++)
		json_array_append_new(arr, json_string(models[i]));
	return arr;
}

static json_t *limit_or_null(uint64_t v) { return v ? json_integer((json_int_t)v) : json_null(); }

/* A key as the operator sees it: never its secret nor its hash. */
static json_t *key_json(struct admin *a, const struct key_rec *r, int64_t now)
{
	bool revoked = atomic_load_explicit(&r->revoked, memory_order_acquire);
	return json_pack("{s:s, s:s, s:o, s:o, s:o, s:b, s:b, s:b, s:{s:o, s:o}, s:o, s:o}",
			 "id", r->id, "name", r->name, "team",
			 r->team ? json_string(r->team) : json_null(), "created",
			 rfc3339(r->created), "expires",
			 r->expires ? rfc3339(r->expires) : json_null(), "revoked", revoked,
			 "expired", r->expires && now >= r->expires, "bootstrap", r->bootstrap,
			 "limits", "rpm", limit_or_null(r->rpm), "tpm", limit_or_null(r->tpm),
			 "budget", budget_json(a, r->budget_id, now), "models",
			 models_json((const char *const *)r->models, r->nmodels, r->models != NULL));
}

struct key_list {
	const struct key_rec **recs;
	size_t n, cap;
	bool oom;
};

static void collect_key(void *arg, const struct key_rec *rec)
{
	struct key_list *l = arg;
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;
		const struct key_rec **recs = realloc(l->recs, cap * sizeof(*recs));
		if (!recs) {
			l->oom = true;
			return;
		}
		l->recs = recs;
		l->cap = cap;
	}
	l->recs[l->n++] = rec;
}

static int key_cmp(const void *x, const void *y)
{
	const struct key_rec *a = *(const struct key_rec *const *)x;
	const struct key_rec *b = *(const struct key_rec *const *)y;
	if (a->created != b->created)
		return a->created < b->created ? -1 : 1;
	return strcmp(a->id, b->id);
}

/* Every key (records stay valid until keys_free, so the list outlives the walk's mutex),
 * oldest first. */
static bool all_keys(struct admin *a, struct key_list *l)
{
	*l = (struct key_list){ 0 };
	keys_foreach(gov_keys(a->gov), collect_key, l);
	if (l->oom) {
		free(l->recs);
		return false;
	}
	if (l->n)
		qsort(l->recs, l->n, sizeof(*l->recs), key_cmp);
	return true;
}

static const struct key_rec *find_key(struct admin *a, struct slice id)
{
	struct key_list l;
	if (!all_keys(a, &l))
		return NULL;
	const struct key_rec *found = NULL;
	for (size_t i = 0; i < l.n && !found; i++)
		if (slice_eq_cstr(id, l.recs[i]->id))
			found = l.recs[i];
	free(l.recs);
	return found;
}

static const struct config_team *config_team(const struct config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->nteams; i++)
		if (strcmp(cfg->teams[i].name, name) == 0)
			return &cfg->teams[i];
	return NULL;
}

/* ---------------------------------------------------------------- endpoints */

static void list_keys(struct admin *a, struct exchange *ex)
{
	struct key_list l;
	if (!all_keys(a, &l)) {
		reply_error(ex, 500, NULL, "out of memory");
		return;
	}
	int64_t now = now_s();
	json_t *data = json_array();
	for (size_t i = 0; data && i < l.n; i++)
		if (json_array_append_new(data, key_json(a, l.recs[i], now))) {
			json_decref(data);
			data = NULL;
		}
	free(l.recs);
	reply(ex, 200, data ? json_pack("{s:o}", "data", data) : NULL, NULL);
}

static void get_key(struct admin *a, struct exchange *ex, struct slice id)
{
	const struct key_rec *r = find_key(a, id);
	if (!r) {
		reply_error(ex, 404, NULL, "no key with id '%.*s'", (int)(id.n > 64 ? 64 : id.n),
			    id.p);
		return;
	}
	reply(ex, 200, key_json(a, r, now_s()), NULL);
}

static bool period_parse(const char *s, enum store_period *out)
{
	for (unsigned i = 0; i < sizeof(period_names) / sizeof(period_names[0]); i++)
		if (strcmp(s, period_names[i]) == 0) {
			*out = (enum store_period)i;
			return true;
		}
	return false;
}

static bool nonneg_int(json_t *v, uint64_t *out)
{
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return false;
	*out = (uint64_t)json_integer_value(v);
	return true;
}

/* POST /admin/keys: the body's fields into key_params, or false with a message. */
static bool key_params_from(const struct admin *a, json_t *o, struct key_params *p,
			    const char **models, int64_t now, char *msg, size_t msglen)
{
	static const char *const known[] = { "name", "team", "models", "rpm", "tpm",
		"budget_usd", "budget_period", "expires_at", "expires_in_s" };
	const struct gov *gov = a->gov;
	const char *field;
	json_t *v;
	json_object_foreach(o, field, v) {
		bool ok = false;
		for (size_t i = 0; i < sizeof(known) / sizeof(known[0]) && !ok; i++)
			ok = strcmp(field, known[i]) == 0;
		if (!ok) {
			snprintf(msg, msglen, "unknown field '%.64s'", field);
			return false;
		}
	}
	*p = (struct key_params){ .budget_period = STORE_PERIOD_MONTH,
				  .ratelimit_subject = KEYS_NONE, .budget_id = KEYS_NONE };
	if (!json_is_string(v = json_object_get(o, "name")) || !json_string_length(v)) {
		snprintf(msg, msglen, "'name' is required: a non-empty string");
		return false;
	}
	p->name = json_string_value(v);
	if (json_string_length(v) > KEYS_NAME_MAX) {
		snprintf(msg, msglen, "'name' is longer than %d bytes", KEYS_NAME_MAX);
		return false;
	}
	if ((v = json_object_get(o, "team")) && !json_is_null(v)) {
		if (!json_is_string(v) || !gov_team(gov, json_string_value(v))) {
			snprintf(msg, msglen, "'team' must name a team of the configuration");
			return false;
		}
		p->team = json_string_value(v);
	}
	if ((v = json_object_get(o, "models")) && !json_is_null(v)) {
		if (!json_is_array(v) || json_array_size(v) > KEYS_MODELS_MAX) {
			snprintf(msg, msglen, "'models' must be an array of up to %d model names",
				 KEYS_MODELS_MAX);
			return false;
		}
		size_t i;
		json_t *m;
		json_array_foreach(v, i, m) {
			if (!json_is_string(m) || !gov_has_model(a->gov, json_string_value(m))) {
				snprintf(msg, msglen, "'models' must hold model names of the catalog");
				return false;
			}
			models[i] = json_string_value(m);
		}
		p->models = models;
		p->nmodels = json_array_size(v);
	}
	if (((v = json_object_get(o, "rpm")) && !nonneg_int(v, &p->rpm)) ||
	    ((v = json_object_get(o, "tpm")) && !nonneg_int(v, &p->tpm))) {
		snprintf(msg, msglen, "'rpm' and 'tpm' must be non-negative integers");
		return false;
	}
	if ((v = json_object_get(o, "budget_usd"))) {
		double usd = json_number_value(v);
		if (!json_is_number(v) || !isfinite(usd) || usd < 0 ||
		    usd * 1e6 > (double)BUDGET_LIMIT_MAX) {
			snprintf(msg, msglen, "'budget_usd' must be a number from 0 to %.0f",
				 (double)BUDGET_LIMIT_MAX / 1e6);
			return false;
		}
		p->budget_micro_usd = llround(usd * 1e6);
	}
	if ((v = json_object_get(o, "budget_period"))) {
		if (!json_is_string(v) || !period_parse(json_string_value(v), &p->budget_period)) {
			snprintf(msg, msglen,
				 "'budget_period' must be one of daily, weekly, monthly, total");
			return false;
		}
		if (!p->budget_micro_usd) {
			snprintf(msg, msglen, "'budget_period' needs 'budget_usd'");
			return false;
		}
	}
	json_t *at = json_object_get(o, "expires_at"), *in = json_object_get(o, "expires_in_s");
	if (at && in) {
		snprintf(msg, msglen, "give 'expires_at' or 'expires_in_s', not both");
		return false;
	}
	if (at && (!json_is_string(at) || rfc3339_parse(json_string_value(at), &p->expires))) {
		snprintf(msg, msglen, "'expires_at' must be an RFC 3339 time such as "
				      "2030-01-31T00:00:00Z");
		return false;
	}
	if (at && p->expires <= now) {
		snprintf(msg, msglen, "'expires_at' is in the past");
		return false;
	}
	if (in) {
		/* ten years and some: anything longer is a typo, or "never" (leave it out) */
		if (!json_is_integer(in) || json_integer_value(in) <= 0 ||
		    json_integer_value(in) > INT64_C(400000000)) {
			snprintf(msg, msglen, "'expires_in_s' must be a positive number of seconds");
			return false;
		}
		p->expires = now + json_integer_value(in);
	}
	return true;
}

static void create_key(struct admin *a, struct exchange *ex)
{
	json_error_t jerr;
	json_t *o = json_loadb(ex->body.p ? ex->body.p : "", ex->body.n, JSON_REJECT_DUPLICATES,
			       &jerr);
	if (!o || !json_is_object(o)) {
		if (o)
			reply_error(ex, 400, NULL, "the body must be a JSON object");
		else
			reply_error(ex, 400, NULL, "the body is not JSON: %s", jerr.text);
		json_decref(o);
		return;
	}
	const char *models[KEYS_MODELS_MAX];
	struct key_params p;
	char msg[512];
	int64_t now = now_s();
	if (!key_params_from(a, o, &p, models, now, msg, sizeof(msg))) {
		json_decref(o);
		reply_error(ex, 400, NULL, "%s", msg);
		return;
	}
	char secret[KEYS_SECRET_LEN + 1];
	const struct key_rec *rec = NULL;
	msg[0] = 0;
	int rc = gov_key_create(a->gov, &p, now, secret, &rec, msg, sizeof(msg));
	json_decref(o);
	if (rc) {
		/* the request was checked above: what fails now is the gateway's (the store, the
		 * table of limits), except what only policy/keys checks */
		bool invalid = strncmp(msg, "invalid", 7) == 0;
		reply_error(ex, invalid ? 400 : 503, NULL, "%s",
			    msg[0] ? msg : "the key could not be created");
		return;
	}
	log_info("admin: key %s (%s) created", rec->id, rec->name);
	json_t *doc = key_json(a, rec, now);
	if (doc)
		json_object_set_new(doc, "key", json_string(secret));
	OPENSSL_cleanse(secret, sizeof(secret));
	/* jansson keeps its own copy of the secret: this response is its only reader, and the
	 * object is freed (not cleansed: jansson offers no hook) right after */
	reply(ex, 201, doc, "Cache-Control: no-store\r\n");
}

static void revoke_key(struct admin *a, struct exchange *ex, struct slice id)
{
	const struct key_rec *r = find_key(a, id);
	if (!r) {
		reply_error(ex, 404, NULL, "no key with id '%.*s'", (int)(id.n > 64 ? 64 : id.n),
			    id.p);
		return;
	}
	if (r->bootstrap) {
		reply_error(ex, 409, NULL, "key %s comes from the config file: remove it there "
				      "and restart to revoke it", r->id);
		return;
	}
	char msg[512] = "";
	if (gov_key_revoke(a->gov, r->id, msg, sizeof(msg))) {
		/* revoked in memory (every worker refuses it) but not persisted */
		reply_error(ex, 500, NULL, "%s", msg[0] ? msg : "the revocation was not persisted");
		return;
	}
	log_info("admin: key %s (%s) revoked", r->id, r->name);
	reply(ex, 200, json_pack("{s:s, s:b}", "id", r->id, "revoked", 1), NULL);
}

struct teams_call {
	struct admin *a;
	struct exchange *ex;
};

/* The teams as the configuration in effect has them (a reload may have changed their
 * models and limits), with their budgets' state. */
static void list_teams_of(const struct config *cfg, void *arg)
{
	struct teams_call *tc = arg;
	struct admin *a = tc->a;
	size_t n = 0;
	const struct gov_team *t = gov_teams(a->gov, &n);
	int64_t now = now_s();
	json_t *data = json_array();
	for (size_t i = 0; data && i < n; i++) {
		const struct config_team *ct = config_team(cfg, t[i].name);
		const char *const *models = ct ? (const char *const *)ct->models : t[i].models;
		size_t nmodels = ct ? ct->nmodels : t[i].nmodels;
		json_t *o = json_pack("{s:s, s:o, s:{s:o, s:o}, s:o}", "name", t[i].name, "models",
				      models_json(models, nmodels, models != NULL),
				      "limits", "rpm", limit_or_null(ct ? ct->rpm : 0), "tpm",
				      limit_or_null(ct ? ct->tpm : 0), "budget",
				      budget_json(a, t[i].budget_id, now));
		if (json_array_append_new(data, o)) {
			json_decref(data);
			data = NULL;
		}
	}
	reply(tc->ex, 200, data ? json_pack("{s:o}", "data", data) : NULL, NULL);
}

static void list_teams(struct admin *a, struct exchange *ex)
{
	struct teams_call tc = { a, ex };
	if (a->control.with_config)
		a->control.with_config(a->control.ctx, list_teams_of, &tc);
	else
		list_teams_of(a->cfg, &tc);
}

/* The fired thresholds of one budget, appended to data. */
static void alerts_of(struct admin *a, json_t *data, uint32_t budget_id, const char *scope,
		      const char *id, const char *name, int64_t now)
{
	struct budget_status st;
	if (budget_id == KEYS_NONE || budget_status(gov_budget(a->gov), budget_id, now, &st))
		return;
	for (unsigned d = 0; d < 2; d++)
		for (unsigned i = 0; i < sizeof(alert_percents) / sizeof(alert_percents[0]); i++) {
			if (!alert_reached(&st, d, i))
				continue;
			json_array_append_new(data, json_pack(
				"{s:s, s:s, s:o, s:s, s:o, s:i, s:s, s:I, s:I}", "scope", scope,
				"id", id, "name", name ? json_string(name) : json_null(), "period",
				period_names[st.period], "period_start", rfc3339(st.period_start),
				"percent", alert_percents[i], "dimension",
				d == BUDGET_USD ? "usd" : "tokens", "limit", (json_int_t)st.limit[d],
				"spent", (json_int_t)st.spent[d]));
		}
}

static void list_alerts(struct admin *a, struct exchange *ex)
{
	size_t n = 0;
	const struct gov_team *t = gov_teams(a->gov, &n);
	int64_t now = now_s();
	json_t *data = json_array();
	if (!data) {
		reply(ex, 500, NULL, NULL);
		return;
	}
	for (size_t i = 0; i < n; i++)
		alerts_of(a, data, t[i].budget_id, "team", t[i].name, t[i].name, now);
	struct key_list l;
	if (!all_keys(a, &l)) {
		json_decref(data);
		reply_error(ex, 500, NULL, "out of memory");
		return;
	}
	for (size_t i = 0; i < l.n; i++)
		alerts_of(a, data, l.recs[i]->budget_id, "key", l.recs[i]->id, l.recs[i]->name, now);
	free(l.recs);
	reply(ex, 200, json_pack("{s:o}", "data", data), NULL);
}

struct name_ctx {
	struct report *rep;
	int err;
};

static void name_key(void *arg, const struct key_rec *rec)
{
	struct name_ctx *c = arg;
	if (!c->err)
		c->err = report_name_key(c->rep, rec);
}

/* The value of one query parameter ("by=team&since=..."), copied into out. */
static bool query_next(struct slice *q, struct slice *name, struct slice *value)
{
	while (q->n && q->p[0] == '&') {
		q->p++;
		q->n--;
	}
	if (!q->n)
		return false;
	const char *amp = memchr(q->p, '&', q->n);
	struct slice part = slice_of(q->p, amp ? (size_t)(amp - q->p) : q->n);
	q->p += part.n;
	q->n -= part.n;
	const char *eq = memchr(part.p, '=', part.n);
	*name = slice_of(part.p, eq ? (size_t)(eq - part.p) : part.n);
	*value = eq ? slice_of(eq + 1, part.n - name->n - 1) : slice_of(part.p + part.n, 0);
	return true;
}

static void spend(struct admin *a, struct exchange *ex, struct slice query)
{
	struct slice name, value;
	bool have_by = false;
	enum report_by by = REPORT_BY_TEAM;
	int64_t since = INT64_MIN, until = INT64_MAX;
	while (query_next(&query, &name, &value)) {
		char v[32];
		if (value.n >= sizeof(v)) {
			reply_error(ex, 400, NULL, "query value too long");
			return;
		}
		memcpy(v, value.p, value.n);
		v[value.n] = 0;
		if (slice_eq_cstr(name, "by")) {
			if (report_by_parse(v, &by)) {
				reply_error(ex, 400, NULL, "'by' must be team, key or model");
				return;
			}
			have_by = true;
		} else if (slice_eq_cstr(name, "since") || slice_eq_cstr(name, "until")) {
			bool is_since = slice_eq_cstr(name, "since");
			if (report_parse_date(v, is_since ? &since : &until)) {
				reply_error(ex, 400, NULL, "'%s' must be a date: YYYY-MM-DD",
					    is_since ? "since" : "until");
				return;
			}
		} else {
			reply_error(ex, 400, NULL, "unknown query parameter '%.*s' (by, since, until)",
				    (int)(name.n > 32 ? 32 : name.n), name.p);
			return;
		}
	}
	if (!have_by) {
		reply_error(ex, 400, NULL, "'by' is required: by=team, by=key or by=model");
		return;
	}
	if (since != INT64_MIN && until != INT64_MAX && since > until) {
		reply_error(ex, 400, NULL, "'since' is after 'until'");
		return;
	}
	struct report rep;
	int rc = store_read_begin(a->reader);
	if (rc) {
		reply_error(ex, 503, NULL, "the store cannot be read: %s", store_strerror(rc));
		return;
	}
	rc = report_spend(a->reader, by, since, until, &rep);
	store_read_end(a->reader);
	struct name_ctx nc = { .rep = &rep };
	if (!rc && by == REPORT_BY_KEY) {
		/* the in-memory table knows every key, bootstrap ones included */
		keys_foreach(gov_keys(a->gov), name_key, &nc);
		rc = nc.err;
	}
	char *text = rc ? NULL : report_json(&rep);
	report_free(&rep);
	if (!text) {
		reply_error(ex, 500, NULL, "the report failed: %s", rc ? store_strerror(rc)
								   : "out of memory");
		return;
	}
	ex_respond(ex, 200, "application/json", NULL, slice_cstr(text));
	free(text);
}

/* GET /admin/audit?since&until&key&team&model&status&limit&after: matching records in
 * commit order, as penstockctl audit exports them, a page at a time ("next": pass it as
 * after= for the rest; null at the end). Reads are short: a chunk each. */
struct audit_page {
	struct buf b;
	unsigned n, limit;
	bool oom;
};

static int audit_page_add(void *arg, const struct audit_entry *e)
{
	struct audit_page *pg = arg;
	if ((pg->n && !buf_append(&pg->b, ",", 1, SIZE_MAX)) || !audit_json(e, &pg->b, SIZE_MAX)) {
		pg->oom = true;
		return 3;
	}
	pg->b.len--; /* the newline */
	/* the cursor stays on this one: "next" follows it. Records with bodies can be large:
	 * a page also ends past AUDIT_PAGE_BYTES. */
	return ++pg->n == pg->limit || pg->b.len >= AUDIT_PAGE_BYTES ? 2 : 0;
}

static void audit_query_api(struct admin *a, struct exchange *ex, struct slice query)
{
	struct audit_filter f = { 0 };
	char key[80] = "", team[80] = "", model[128] = "";
	uint64_t after = 0;
	long limit = AUDIT_LIMIT_DEFAULT;
	struct slice name, value;
	while (query_next(&query, &name, &value)) {
		char v[128];
		if (value.n >= sizeof(v)) {
			reply_error(ex, 400, NULL, "query value too long");
			return;
		}
		memcpy(v, value.p, value.n);
		v[value.n] = 0;
		bool ok = true;
		if (slice_eq_cstr(name, "since"))
			ok = audit_time_parse(v, &f.since_ns) == 0;
		else if (slice_eq_cstr(name, "until"))
			ok = audit_time_parse(v, &f.until_ns) == 0;
		else if (slice_eq_cstr(name, "after"))
			ok = audit_time_parse(v, &after) == 0 && strspn(v, "0123456789") == value.n;
		else if (slice_eq_cstr(name, "status"))
			ok = audit_status_parse(v, &f) == 0;
		else if (slice_eq_cstr(name, "limit"))
			ok = strspn(v, "0123456789") == value.n && value.n && value.n < 6 &&
			     (limit = atol(v)) >= 1 && limit <= AUDIT_LIMIT_MAX;
		else if (slice_eq_cstr(name, "key") && value.n < sizeof(key))
			memcpy(key, v, value.n + 1);
		else if (slice_eq_cstr(name, "team") && value.n < sizeof(team))
			memcpy(team, v, value.n + 1);
		else if (slice_eq_cstr(name, "model") && value.n < sizeof(model))
			memcpy(model, v, value.n + 1);
		else {
			reply_error(ex, 400, NULL, "unknown query parameter '%.*s' (since, until, key, "
				    "team, model, status, limit, after)",
				    (int)(name.n > 32 ? 32 : name.n), name.p);
			return;
		}
		if (!ok) {
			reply_error(ex, 400, NULL, "'%.*s': %s", (int)name.n, name.p,
				    slice_eq_cstr(name, "status") ? "a status (429) or a class (4xx)"
				    : slice_eq_cstr(name, "limit") ? "1 to 1000"
				    : "a date (YYYY-MM-DD), an RFC 3339 time or UTC nanoseconds");
			return;
		}
	}
	f.key_id = key[0] ? key : NULL;
	f.team = team[0] ? team : NULL;
	f.model = model[0] ? model : NULL;
	struct audit_page pg = { .limit = (unsigned)limit };
	buf_append(&pg.b, "{\"data\":[", 9, SIZE_MAX);
	uint64_t cursor = after;
	int rc = 1;
	for (size_t looked = 0; rc == 1 && looked < AUDIT_SCAN_MAX; looked += AUDIT_READ_CHUNK) {
		rc = store_read_begin(a->reader);
		if (rc)
			break;
		rc = audit_query(a->reader, &f, &cursor, AUDIT_READ_CHUNK, audit_page_add, &pg);
		store_read_end(a->reader);
	}
	if (pg.oom || (rc < 0 && rc != -ENOENT)) {
		buf_free(&pg.b);
		reply_error(ex, pg.oom ? 500 : 503, NULL, "the audit trail cannot be read: %s",
			    pg.oom ? "out of memory" : store_strerror(rc));
		return;
	}
	char tail[64];
	bool more = rc == 1 || rc == 2;
	int n = more ? snprintf(tail, sizeof(tail), "],\"next\":%" PRIu64 "}\n", cursor)
		     : snprintf(tail, sizeof(tail), "],\"next\":null}\n");
	if (!buf_append(&pg.b, tail, (size_t)n, SIZE_MAX)) {
		buf_free(&pg.b);
		reply_error(ex, 500, NULL, "out of memory");
		return;
	}
	ex_respond(ex, 200, "application/json", NULL, slice_of(pg.b.p, pg.b.len));
	buf_free(&pg.b);
}

/* ---------------------------------------------------------------- routing */

static bool token_ok(const struct admin *a, const struct exchange *ex)
{
	const struct http1_header *h = ex_header(ex, "authorization");
	if (!h || h->value.n < 8 || strncasecmp(h->value.p, "Bearer ", 7) != 0)
		return false;
	struct slice t = slice_of(h->value.p + 7, h->value.n - 7);
	while (t.n && t.p[0] == ' ') {
		t.p++;
		t.n--;
	}
	/* compare hashes: the time taken says nothing about how much of the token matched,
	 * nor about its length */
	uint8_t hash[SHA256_DIGEST_LENGTH];
	SHA256((const uint8_t *)t.p, t.n, hash);
	return CRYPTO_memcmp(hash, a->token_hash, sizeof(hash)) == 0;
}

static bool method_is(const struct exchange *ex, const char *m)
{
	return slice_eq_cstr(ex->req.method, m);
}

/* POST /admin/reload: the config file is read again and applied, or refused with the
 * reason (400); the running configuration stays in that case. */
static void reload(struct admin *a, struct exchange *ex)
{
	struct admin_reload_result r = { 0 };
	if (a->control.reload(a->control.ctx, &r)) {
		reply_error(ex, 400, NULL, "reload refused: %s", r.error);
		return;
	}
	char body[256];
	int n = snprintf(body, sizeof(body),
			 "{\"reloaded\":true,\"generation\":%llu,\"providers\":%zu,\"models\":%zu}\n",
			 (unsigned long long)r.generation, r.providers, r.models);
	ex_respond(ex, 200, "application/json", NULL, slice_of(body, (size_t)n));
}

static void not_allowed(struct exchange *ex, const char *allow)
{
	char h[64];
	snprintf(h, sizeof(h), "Allow: %s\r\n", allow);
	reply_error(ex, 405, h, "method not allowed (allowed: %s)", allow);
}

static bool starts_with(struct slice s, const char *prefix, struct slice *rest)
{
	size_t n = strlen(prefix);
	if (s.n < n || memcmp(s.p, prefix, n) != 0)
		return false;
	*rest = slice_of(s.p + n, s.n - n);
	return true;
}

/* GET /metrics: Prometheus text, summed over the data plane's workers now. */
static void serve_metrics(struct admin *a, struct exchange *ex)
{
	struct engine_stats es = { 0 };
	struct store_stats ss;
	struct buf b = { 0 };
	if (a->data_plane)
		engine_stats(a->data_plane, &es);
	store_stats(gov_store(a->gov), &ss);
	struct metrics_config_stats cs;
	if (a->control.config_stats)
		a->control.config_stats(a->control.ctx, &cs);
	if (metrics_render(a->metrics, &es, &ss, a->control.config_stats ? &cs : NULL, &b) != 0 ||
	    (a->control.render_targets && a->control.render_targets(a->control.ctx, &b) != 0)) {
		buf_free(&b);
		ex_respond(ex, 500, "application/json", NULL, SLICE_LIT(OOM_BODY));
		return;
	}
	ex_respond(ex, 200, METRICS_CONTENT_TYPE, NULL, slice_of(b.p, b.len));
	buf_free(&b);
}

static void admin_on_request(struct exchange *ex)
{
	struct admin *a = worker_state(ex_worker(ex));
	struct slice path = ex->req.target, query = { "", 0 }, rest;
	const char *q = memchr(path.p, '?', path.n);
	if (q) {
		query = slice_of(q + 1, path.n - (size_t)(q - path.p) - 1);
		path.n = (size_t)(q - path.p);
	}
	bool get = method_is(ex, "GET") || method_is(ex, "HEAD");

	if (slice_eq_cstr(path, "/healthz") || slice_eq_cstr(path, "/readyz")) {
		if (!get) {
			not_allowed(ex, "GET");
			return;
		}
		bool ready = !worker_stopping(ex_worker(ex)) || slice_eq_cstr(path, "/healthz");
		ex_respond(ex, ready ? 200 : 503, "application/json", NULL,
			   ready ? SLICE_LIT("{\"status\":\"ok\"}\n")
				 : SLICE_LIT("{\"status\":\"stopping\"}\n"));
		return;
	}
	if (slice_eq_cstr(path, "/metrics") && a->metrics) {
		/* Open like the health checks, for scrapers: counts, no secrets, bounded labels. */
		if (!get) {
			not_allowed(ex, "GET");
			return;
		}
		serve_metrics(a, ex);
		return;
	}
	if (!a->token_set) {
		reply_error(ex, 403, NULL, "the admin API is disabled: no admin token is configured "
				      "(admin.token_env or admin.token_file)");
		return;
	}
	if (!token_ok(a, ex)) {
		reply_error(ex, 401, "WWW-Authenticate: Bearer\r\n",
			    "a valid admin token is required: Authorization: Bearer TOKEN");
		return;
	}
	if (slice_eq_cstr(path, "/admin/keys")) {
		if (get)
			list_keys(a, ex);
		else if (method_is(ex, "POST"))
			create_key(a, ex);
		else
			not_allowed(ex, "GET, POST");
	} else if (starts_with(path, "/admin/keys/", &rest) && rest.n) {
		struct slice id = rest, action = { "", 0 };
		const char *slash = memchr(rest.p, '/', rest.n);
		if (slash) {
			id.n = (size_t)(slash - rest.p);
			action = slice_of(slash + 1, rest.n - id.n - 1);
		}
		if (!slash && get)
			get_key(a, ex, id);
		else if (!slash && method_is(ex, "DELETE"))
			revoke_key(a, ex, id);
		else if (!slash)
			not_allowed(ex, "GET, DELETE");
		else if (!slice_eq_cstr(action, "revoke"))
			reply_error(ex, 404, NULL, "no such endpoint");
		else if (method_is(ex, "POST"))
			revoke_key(a, ex, id);
		else
			not_allowed(ex, "POST");
	} else if (slice_eq_cstr(path, "/admin/teams")) {
		get ? list_teams(a, ex) : not_allowed(ex, "GET");
	} else if (slice_eq_cstr(path, "/admin/spend")) {
		get ? spend(a, ex, query) : not_allowed(ex, "GET");
	} else if (slice_eq_cstr(path, "/admin/audit")) {
		get ? audit_query_api(a, ex, query) : not_allowed(ex, "GET");
	} else if (slice_eq_cstr(path, "/admin/alerts")) {
		get ? list_alerts(a, ex) : not_allowed(ex, "GET");
	} else if (slice_eq_cstr(path, "/admin/reload") && a->control.reload) {
		method_is(ex, "POST") ? reload(a, ex) : not_allowed(ex, "POST");
	} else {
		reply_error(ex, 404, NULL, "no such endpoint: %.*s", (int)(path.n > 128 ? 128 : path.n),
			    path.p);
	}
}

static void admin_on_abort(struct exchange *ex) { (void)ex; /* every answer is synchronous */ }

static void admin_on_reject(struct exchange *ex, int status, const char *why)
{
	reply_error(ex, status, NULL, "%s", why);
}

static void *admin_worker_init(struct worker *w, void *ctx) { return ctx; }

/* ---------------------------------------------------------------- lifecycle */

struct admin *admin_start(const struct config *cfg, struct gov *g, char *err, size_t errlen)
{
	struct admin *a = calloc(1, sizeof(*a));
	if (!a) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	a->cfg = cfg;
	a->gov = g;
	char serr[256] = "";
	char *token = config_resolve_secret(&cfg->admin_token, serr, sizeof(serr));
	if (token && token[0]) {
		SHA256((const uint8_t *)token, strlen(token), a->token_hash);
		a->token_set = true;
		if (strlen(token) < 16)
			log_warn("admin: the admin token is shorter than 16 characters");
	} else {
		/* an unset token_env disables the API instead of the gateway: the data plane
		 * does not depend on it */
		log_warn("admin: %s: the admin API is disabled (health checks still answer)",
			 serr[0] ? serr : "no admin token configured");
	}
	if (token) {
		OPENSSL_cleanse(token, strlen(token));
		free(token);
	}
	int rc = 0;
	a->reader = store_reader_new(gov_store(g), &rc);
	if (!a->reader) {
		snprintf(err, errlen, "admin: store reader: %s", store_strerror(rc));
		free(a);
		return NULL;
	}
	a->handler = (struct engine_handler){
		.worker_init = admin_worker_init,
		.on_request = admin_on_request,
		.on_abort = admin_on_abort,
		.on_reject = admin_on_reject,
		.ctx = a,
	};
	const struct config_timeouts *t = &cfg->timeouts;
	struct engine_options opt = {
		.host = cfg->admin_listen.host,
		.port = cfg->admin_listen.port,
		.workers = 1,
		.pin = false, /* it must not take a data-plane worker's core */
		.buffers = 64,
		.limits = { .max_header_bytes = cfg->limits.max_header_bytes,
			    .max_headers = cfg->limits.max_headers,
			    .max_body_bytes = ADMIN_BODY_MAX },
		.max_connections = ADMIN_CONNECTIONS_MAX,
		.timeouts = { .header_read = t->header_read, .body_read = t->body_read,
			      .idle = t->idle, .upstream_connect = t->upstream_connect,
			      .upstream_first_byte = t->upstream_first_byte,
			      .upstream_idle = t->upstream_idle, .pool_idle = t->idle,
			      .shutdown_grace = t->shutdown_grace },
		.handler = &a->handler,
		.name = "admin",
	};
	a->engine = engine_start(&opt);
	if (!a->engine) {
		snprintf(err, errlen, "admin: cannot listen on %s:%u", cfg->admin_listen.host,
			 cfg->admin_listen.port);
		store_reader_free(a->reader);
		free(a);
		return NULL;
	}
	return a;
}

uint16_t admin_port(const struct admin *a) { return engine_port(a->engine); }

void admin_stop(struct admin *a)
{
	if (!a)
		return;
	engine_stop(a->engine);
	engine_join(a->engine);
	store_reader_free(a->reader);
	free(a);
}

void admin_set_control(struct admin *a, const struct admin_control *c) { a->control = *c; }

void admin_set_metrics(struct admin *a, struct metrics *m, struct engine *data_plane)
{
	a->metrics = m;
	a->data_plane = data_plane;
}
