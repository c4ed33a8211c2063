/* report.c - spend reports: a range scan over the ledger's daily records, summed per id. */
#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "policy/report.h"

#define REPORT_ROWS_MAX (1u << 24) /* ids in one report; far above any real catalog */
#define SCAN_STOP 1                /* a scan callback's "past the range" */

static const char *const by_names[] = {
	[REPORT_BY_TEAM] = "team", [REPORT_BY_KEY] = "key", [REPORT_BY_MODEL] = "model",
};

int report_by_parse(const char *s, enum report_by *out)
{
	for (unsigned i = 0; i < sizeof(by_names) / sizeof(by_names[0]); i++)
		if (s && strcmp(s, by_names[i]) == 0) {
			*out = (enum report_by)i;
			return 0;
		}
	return -EINVAL;
}

const char *report_by_name(enum report_by by) { return by_names[by]; }

static bool digits(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return true;
}

int report_parse_date(const char *s, int64_t *out)
{
	if (!s || strlen(s) != 10 || s[4] != '-' || s[7] != '-' || !digits(s, 4) ||
	    !digits(s + 5, 2) || !digits(s + 8, 2))
		return -EINVAL;
	struct tm tm = {
		.tm_year = atoi(s) - 1900, .tm_mon = atoi(s + 5) - 1, .tm_mday = atoi(s + 8),
	};
	struct tm want = tm;
	if (tm.tm_year < 70 || tm.tm_mon < 0 || tm.tm_mon > 11 || tm.tm_mday < 1)
		return -EINVAL;
	time_t t = timegm(&tm);
	/* timegm normalises (Feb 30 becomes Mar 2): a date that moved was not a date */
	if (t == (time_t)-1 || tm.tm_mday != want.tm_mday || tm.tm_mon != want.tm_mon)
		return -EINVAL;
	*out = (int64_t)t;
	return 0;
}

/* ---- summing ---- */

struct sum_state {
	struct report *rep;
	uint32_t *index; /* open addressing: row number + 1, 0 empty */
	uint32_t mask;
	int err;
};

static uint32_t id_hash(const uint8_t *id, size_t n)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (size_t i = 0; i < n; i++)
		h = (h ^ id[i]) * 16777619u;
	return h;
}

static int index_grow(struct sum_state *st)
{
	uint32_t cap = st->mask ? (st->mask + 1) * 2 : 64;
	uint32_t *idx = calloc(cap, sizeof(*idx));
	if (!idx)
		return -ENOMEM;
	for (size_t i = 0; i < st->rep->n; i++) {
		const struct report_row *row = &st->rep->rows[i];
		uint32_t h = id_hash(row->id, row->id_len) & (cap - 1);
		while (idx[h])
			h = (h + 1) & (cap - 1);
		idx[h] = (uint32_t)i + 1;
	}
	free(st->index);
	st->index = idx;
	st->mask = cap - 1;
	return 0;
}

/* Counters saturate like the store's own additions: a report never wraps. */
static int64_t add_sat(int64_t a, int64_t b)
{
	int64_t r;
	if (__builtin_add_overflow(a, b, &r))
		return b > 0 ? INT64_MAX : INT64_MIN;
	return r;
}

static void spend_add(struct store_spend *to, const struct store_spend *d)
{
	to->micro_usd = add_sat(to->micro_usd, d->micro_usd);
	to->input_tokens = add_sat(to->input_tokens, d->input_tokens);
	to->output_tokens = add_sat(to->output_tokens, d->output_tokens);
	to->requests = add_sat(to->requests, d->requests);
}

static struct report_row *row_for(struct sum_state *st, const uint8_t *id, size_t n)
{
	struct report *rep = st->rep;
	if ((rep->n + 1) * 2 > (size_t)st->mask + 1 && index_grow(st))
		return NULL;
	uint32_t h = id_hash(id, n) & st->mask;
	for (; st->index[h]; h = (h + 1) & st->mask) {
		struct report_row *row = &rep->rows[st->index[h] - 1];
		if (row->id_len == n && memcmp(row->id, id, n) == 0)
			return row;
	}
	if (rep->n == REPORT_ROWS_MAX)
		return NULL;
	if (rep->n == rep->cap) {
		size_t cap = rep->cap ? rep->cap * 2 : 32;
		struct report_row *rows = realloc(rep->rows, cap * sizeof(*rows));
		if (!rows)
			return NULL;
		rep->rows = rows;
		rep->cap = cap;
	}
	struct report_row *row = &rep->rows[rep->n];
	*row = (struct report_row){ .id_len = (uint8_t)n };
	memcpy(row->id, id, n);
	st->index[h] = (uint32_t)++rep->n;
	return row;
}

static int sum_one(void *arg, const void *key, size_t key_len, const void *val, size_t val_len)
{
	struct sum_state *st = arg;
	struct store_spend_key k;
	struct store_spend d;
	/* a record of another shape is not this build's ledger: skip it rather than fail */
	if (store_spend_key_decode(key, key_len, &k) || val_len != sizeof(d))
		return 0;
	if ((int64_t)k.start > st->rep->until)
		return SCAN_STOP; /* keys walk time in order within [scope, period] */
	if ((int64_t)k.start < st->rep->since)
		return 0;
	memcpy(&d, val, sizeof(d));
	struct report_row *row = row_for(st, k.id, k.id_len);
	if (!row) {
		st->err = -ENOMEM;
		return -ENOMEM;
	}
	spend_add(&row->sum, &d);
	spend_add(&st->rep->total, &d);
	return 0;
}

static int row_cmp(const void *a, const void *b)
{
	const struct report_row *x = a, *y = b;
	if (x->sum.micro_usd != y->sum.micro_usd)
		return x->sum.micro_usd > y->sum.micro_usd ? -1 : 1;
	size_t n = x->id_len < y->id_len ? x->id_len : y->id_len;
	int c = memcmp(x->id, y->id, n);
	return c ? c : (int)x->id_len - (int)y->id_len;
}

static const uint8_t scope_of[] = {
	[REPORT_BY_TEAM] = STORE_SCOPE_LEDGER_TEAM,
	[REPORT_BY_KEY] = STORE_SCOPE_LEDGER_KEY,
	[REPORT_BY_MODEL] = STORE_SCOPE_LEDGER_MODEL,
};

int report_spend(struct store_reader *r, enum report_by by, int64_t since, int64_t until,
		 struct report *rep)
{
	*rep = (struct report){ .by = by, .since = since, .until = until };
	struct sum_state st = { .rep = rep };
	const uint8_t prefix[2] = { scope_of[by], STORE_PERIOD_DAY };
	int rc = store_scan(r, STORE_DB_SPEND, prefix, sizeof(prefix), sum_one, &st);
	free(st.index);
	if (st.err)
		return st.err;
	if (rc && rc != SCAN_STOP)
		return rc;
	if (rep->n)
		qsort(rep->rows, rep->n, sizeof(*rep->rows), row_cmp);
	return 0;
}

/* ---- naming key rows ---- */

static int name_row(struct report_row *row, const char *id, const char *name, const char *team)
{
	free(row->key_id);
	free(row->key_name);
	free(row->key_team);
	row->key_id = strdup(id);
	row->key_name = name ? strdup(name) : NULL;
	row->key_team = team ? strdup(team) : NULL;
	if (!row->key_id || (name && !row->key_name) || (team && !row->key_team))
		return -ENOMEM;
	return 0;
}

int report_name_key(struct report *rep, const struct key_rec *rec)
{
	if (rep->by != REPORT_BY_KEY)
		return 0;
	for (size_t i = 0; i < rep->n; i++) {
		struct report_row *row = &rep->rows[i];
		if (row->id_len == KEYS_HASH_LEN && memcmp(row->id, rec->hash, KEYS_HASH_LEN) == 0)
			return name_row(row, rec->id, rec->name, rec->team);
	}
	return 0;
}

int report_name_keys_from_store(struct store_reader *r, struct report *rep)
{
	if (rep->by != REPORT_BY_KEY)
		return 0;
	for (size_t i = 0; i < rep->n; i++) {
		struct report_row *row = &rep->rows[i];
		if (row->id_len != KEYS_HASH_LEN || row->key_id)
			continue;
		struct store_val v;
		int rc = store_get(r, STORE_DB_KEYS, row->id, KEYS_HASH_LEN, &v);
		if (rc == -ENOENT)
			continue;
		if (rc)
			return rc;
		struct key_rec *rec;
		if (keys_record_decode(row->id, v.p, v.len, &rec))
			continue; /* a record this build cannot read: the row stays unnamed */
		rc = name_row(row, rec->id, rec->name, rec->team);
		keys_record_free(rec);
		if (rc)
			return rc;
	}
	return 0;
}

void report_free(struct report *rep)
{
	for (size_t i = 0; i < rep->n; i++) {
		free(rep->rows[i].key_id);
		free(rep->rows[i].key_name);
		free(rep->rows[i].key_team);
	}
	free(rep->rows);
	rep->rows = NULL;
	rep->n = rep->cap = 0;
}

/* ---- JSON ---- */

static json_t *date_or_null(int64_t t, bool open)
{
	if (open)
		return json_null();
	time_t tt = (time_t)t;
	struct tm tm;
	char s[32];
	if (!gmtime_r(&tt, &tm) || !strftime(s, sizeof(s), "%Y-%m-%d", &tm))
		return json_null();
	return json_string(s);
}

static int spend_fields(json_t *o, const struct store_spend *s)
{
	/* usd is for reading; micro_usd is the exact amount (a double holds it to the micro-dollar
	 * up to $9 billion, and 15 significant digits print it without binary noise) */
	return json_object_set_new(o, "micro_usd", json_integer(s->micro_usd)) |
	       json_object_set_new(o, "usd", json_real((double)s->micro_usd / 1e6)) |
	       json_object_set_new(o, "input_tokens", json_integer(s->input_tokens)) |
	       json_object_set_new(o, "output_tokens", json_integer(s->output_tokens)) |
	       json_object_set_new(o, "requests", json_integer(s->requests));
}

static json_t *str_or_null(const char *s) { return s ? json_string(s) : json_null(); }

static json_t *row_json(const struct report *rep, const struct report_row *row)
{
	json_t *o = json_object();
	if (!o)
		return NULL;
	int rc = 0;
	if (rep->by == REPORT_BY_KEY) {
		rc |= json_object_set_new(o, "key", str_or_null(row->key_id));
		rc |= json_object_set_new(o, "name", str_or_null(row->key_name));
		rc |= json_object_set_new(o, "team", str_or_null(row->key_team));
		if (!row->key_id) {
			char hex[17];
			for (int i = 0; i < 8; i++)
				snprintf(hex + 2 * i, 3, "%02x", row->id[i]);
			rc |= json_object_set_new(o, "key_sha256_prefix", json_string(hex));
		}
	} else {
		/* names are the config's (UTF-8); anything else is shown as a placeholder */
		json_t *name = json_stringn((const char *)row->id, row->id_len);
		rc |= json_object_set_new(o, report_by_name(rep->by),
					  name ? name : json_string("(not UTF-8)"));
	}
	rc |= spend_fields(o, &row->sum);
	if (rc) {
		json_decref(o);
		return NULL;
	}
	return o;
}

char *report_json(const struct report *rep)
{
	json_t *data = json_array(), *total = json_object(), *o = json_object();
	int rc = !data || !total || !o;
	for (size_t i = 0; !rc && i < rep->n; i++)
		rc |= json_array_append_new(data, row_json(rep, &rep->rows[i]));
	if (!rc) {
		rc |= spend_fields(total, &rep->total);
		rc |= json_object_set_new(o, "by", json_string(report_by_name(rep->by)));
		rc |= json_object_set_new(o, "since",
					  date_or_null(rep->since, rep->since == INT64_MIN));
		rc |= json_object_set_new(o, "until",
					  date_or_null(rep->until, rep->until == INT64_MAX));
		rc |= json_object_set_new(o, "data", data);
		rc |= json_object_set_new(o, "total", total);
		data = total = NULL;
	}
	char *text = rc ? NULL : json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(15));
	json_decref(data);
	json_decref(total);
	json_decref(o);
	if (!text)
		return NULL;
	size_t n = strlen(text);
	char *out = realloc(text, n + 2);
	if (!out) {
		free(text);
		return NULL;
	}
	out[n] = '\n';
	out[n + 1] = 0;
	return out;
}
