/* audit.c - audit records: the compact encoding (a version byte, flags, LEB128 integers and
 * length-prefixed strings, about 150 bytes for a typical request), queries over commit
 * stamps, JSON-lines and CSV formats, and the chain walk. */
#include "policy/audit.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/json.h"
#include "policy/report.h"

#define FLAG_STREAM 0x01
#define FLAG_ANTHROPIC 0x02
#define FLAG_USAGE_SHIFT 2 /* two bits: enum audit_usage */
/* version 2: a byte of body flags after the attempts, then the bodies it names */
#define BODY_REQUEST 0x01
#define BODY_RESPONSE 0x02
#define BODY_STREAMED 0x04

/* ---------------------------------------------------------------- encoding */

struct enc {
	uint8_t *p;
	size_t n, cap;
	bool full;
};

static void put_u8(struct enc *e, uint8_t v)
{
	if (e->n >= e->cap) {
		e->full = true;
		return;
	}
	e->p[e->n++] = v;
}

static void put_uv(struct enc *e, uint64_t v)
{
	do {
		put_u8(e, (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0)));
		v >>= 7;
	} while (v);
}

static void put_bytes(struct enc *e, struct slice s, size_t max)
{
	size_t n = s.p ? (s.n > max ? max : s.n) : 0;
	put_uv(e, n);
	if (e->n + n > e->cap) {
		e->full = true;
		return;
	}
	if (n)
		memcpy(e->p + e->n, s.p, n);
	e->n += n;
}

static void put_str(struct enc *e, struct slice s) { put_bytes(e, s, AUDIT_STR_MAX); }

static uint64_t zigzag(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }
static int64_t unzigzag(uint64_t v) { return (int64_t)(v >> 1) ^ -(int64_t)(v & 1); }

size_t audit_encode(const struct audit_rec *a, uint8_t *out, size_t cap)
{
	struct enc e = { .p = out, .cap = cap };
	unsigned nat = a->nattempts > AUDIT_ATTEMPTS_MAX ? AUDIT_ATTEMPTS_MAX : a->nattempts;
	put_u8(&e, AUDIT_VERSION);
	put_u8(&e, (uint8_t)((a->stream ? FLAG_STREAM : 0) |
			     (a->dialect == AUDIT_DIALECT_ANTHROPIC ? FLAG_ANTHROPIC : 0) |
			     (a->usage & 3) << FLAG_USAGE_SHIFT));
	put_uv(&e, a->status);
	put_uv(&e, zigzag(a->time_ns));
	put_str(&e, a->request_id);
	put_str(&e, a->key_id);
	put_str(&e, a->team);
	put_str(&e, a->client);
	put_str(&e, a->model);
	put_str(&e, a->provider);
	put_str(&e, a->upstream_model);
	put_uv(&e, a->prompt_tokens);
	put_uv(&e, a->completion_tokens);
	put_uv(&e, a->cached_tokens);
	put_uv(&e, zigzag(a->cost_micro_usd));
	put_uv(&e, a->total_us);
	put_uv(&e, a->first_byte_us);
	put_uv(&e, a->upstream_us);
	put_uv(&e, nat);
	for (unsigned i = 0; i < nat; i++) {
		put_str(&e, a->attempts[i].provider);
		put_str(&e, a->attempts[i].model);
		put_uv(&e, a->attempts[i].status);
		put_str(&e, a->attempts[i].error);
	}
	put_u8(&e, (uint8_t)((a->has_request_body ? BODY_REQUEST : 0) |
			     (a->has_response_body ? BODY_RESPONSE : 0) |
			     (a->response_streamed ? BODY_STREAMED : 0)));
	if (a->has_request_body)
		put_bytes(&e, a->request_body, AUDIT_BODY_MAX);
	if (a->has_response_body)
		put_bytes(&e, a->response_body, AUDIT_BODY_MAX);
	return e.full ? 0 : e.n;
}

size_t audit_encode_bound(const struct audit_rec *a)
{
	size_t n = AUDIT_CONTENT_MAX;
	if (a->has_request_body)
		n += 8 + (a->request_body.n > AUDIT_BODY_MAX ? AUDIT_BODY_MAX : a->request_body.n);
	if (a->has_response_body)
		n += 8 + (a->response_body.n > AUDIT_BODY_MAX ? AUDIT_BODY_MAX : a->response_body.n);
	return n;
}

struct dec {
	const uint8_t *p;
	size_t n, off;
	bool bad;
};

static uint8_t get_u8(struct dec *d)
{
	if (d->off >= d->n) {
		d->bad = true;
		return 0;
	}
	return d->p[d->off++];
}

static uint64_t get_uv(struct dec *d)
{
	uint64_t v = 0;
	for (unsigned shift = 0; shift < 64; shift += 7) {
		uint8_t b = get_u8(d);
		v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			return v;
	}
	d->bad = true;
	return 0;
}

static struct slice get_bytes(struct dec *d, size_t max)
{
	uint64_t n = get_uv(d);
	if (d->bad || n > max || n > d->n - d->off) {
		d->bad = true;
		return (struct slice){ "", 0 };
	}
	struct slice s = { (const char *)d->p + d->off, (size_t)n };
	d->off += (size_t)n;
	return s;
}

static struct slice get_str(struct dec *d) { return get_bytes(d, AUDIT_STR_MAX); }

int audit_decode(const void *p, size_t n, struct audit_rec *a)
{
	struct dec d = { .p = p, .n = n };
	memset(a, 0, sizeof(*a));
	uint8_t version = get_u8(&d);
	if (version != 1 && version != AUDIT_VERSION)
		return -EBADMSG;
	uint8_t flags = get_u8(&d);
	a->stream = flags & FLAG_STREAM;
	a->dialect = flags & FLAG_ANTHROPIC ? AUDIT_DIALECT_ANTHROPIC : AUDIT_DIALECT_OPENAI;
	a->usage = (flags >> FLAG_USAGE_SHIFT) & 3;
	uint64_t status = get_uv(&d);
	a->status = status > 999 ? 0 : (uint16_t)status;
	a->time_ns = unzigzag(get_uv(&d));
	a->request_id = get_str(&d);
	a->key_id = get_str(&d);
	a->team = get_str(&d);
	a->client = get_str(&d);
	a->model = get_str(&d);
	a->provider = get_str(&d);
	a->upstream_model = get_str(&d);
	a->prompt_tokens = get_uv(&d);
	a->completion_tokens = get_uv(&d);
	a->cached_tokens = get_uv(&d);
	a->cost_micro_usd = unzigzag(get_uv(&d));
	a->total_us = get_uv(&d);
	a->first_byte_us = get_uv(&d);
	a->upstream_us = get_uv(&d);
	uint64_t nat = get_uv(&d);
	if (nat > AUDIT_ATTEMPTS_MAX || status > 999)
		return -EBADMSG;
	a->nattempts = (unsigned)nat;
	for (unsigned i = 0; i < a->nattempts && !d.bad; i++) {
		a->attempts[i].provider = get_str(&d);
		a->attempts[i].model = get_str(&d);
		uint64_t st = get_uv(&d);
		a->attempts[i].status = st > 999 ? 0 : (uint16_t)st;
		a->attempts[i].error = get_str(&d);
	}
	if (version >= 2 && !d.bad) {
		uint8_t bodies = get_u8(&d);
		a->response_streamed = bodies & BODY_STREAMED;
		if ((a->has_request_body = bodies & BODY_REQUEST))
			a->request_body = get_bytes(&d, AUDIT_BODY_MAX);
		if ((a->has_response_body = bodies & BODY_RESPONSE))
			a->response_body = get_bytes(&d, AUDIT_BODY_MAX);
	}
	return d.bad ? -EBADMSG : 0; /* bytes after the fields: a later version's additions */
}

/* ---------------------------------------------------------------- filters */

int audit_status_parse(const char *s, struct audit_filter *f)
{
	if (!s || strlen(s) != 3 || s[0] < '1' || s[0] > '5')
		return -EINVAL;
	if (s[1] == 'x' && s[2] == 'x') {
		f->status_lo = (uint16_t)((s[0] - '0') * 100);
		f->status_hi = (uint16_t)(f->status_lo + 99);
		return 0;
	}
	if (s[1] < '0' || s[1] > '9' || s[2] < '0' || s[2] > '9')
		return -EINVAL;
	f->status_lo = f->status_hi = (uint16_t)atoi(s);
	return 0;
}

static bool two(const char *s, int *out)
{
	if (s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9')
		return false;
	*out = (s[0] - '0') * 10 + (s[1] - '0');
	return true;
}

int audit_time_parse(const char *s, uint64_t *ns)
{
	size_t n = s ? strlen(s) : 0;
	if (n && strspn(s, "0123456789") == n && n <= 19) {
		*ns = strtoull(s, NULL, 10);
		return 0;
	}
	char date[11];
	int64_t day;
	if (n < 10)
		return -EINVAL;
	memcpy(date, s, 10);
	date[10] = 0;
	if (report_parse_date(date, &day))
		return -EINVAL;
	if (n == 10) {
		*ns = (uint64_t)day * 1000000000u;
		return 0;
	}
	int hh, mi, ss, oh, om;
	if (n < 20 || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') || s[13] != ':' ||
	    s[16] != ':' || !two(s + 11, &hh) || !two(s + 14, &mi) || !two(s + 17, &ss) ||
	    hh > 23 || mi > 59 || ss > 60)
		return -EINVAL;
	const char *p = s + 19;
	uint64_t frac = 0;
	if (*p == '.') {
		unsigned digits = 0;
		for (p++; *p >= '0' && *p <= '9'; p++, digits++)
			if (digits < 9)
				frac = frac * 10 + (uint64_t)(*p - '0');
		if (!digits)
			return -EINVAL;
		for (; digits < 9; digits++)
			frac *= 10;
	}
	int64_t offset;
	if ((*p == 'Z' || *p == 'z') && !p[1])
		offset = 0;
	else if ((*p == '+' || *p == '-') && strlen(p) == 6 && p[3] == ':' && two(p + 1, &oh) &&
		 two(p + 4, &om) && oh <= 23 && om <= 59)
		offset = (oh * 3600 + om * 60) * (*p == '-' ? -1 : 1);
	else
		return -EINVAL;
	int64_t t = day + hh * 3600 + mi * 60 + (ss == 60 ? 59 : ss) - offset;
	if (t < 0)
		return -EINVAL;
	*ns = (uint64_t)t * 1000000000u + frac;
	return 0;
}

static bool str_match(const char *want, struct slice have)
{
	return !want || slice_eq_cstr(have, want);
}

static bool passes(const struct audit_filter *f, const struct audit_rec *a)
{
	if (f->status_hi && (a->status < f->status_lo || a->status > f->status_hi))
		return false;
	return str_match(f->key_id, a->key_id) && str_match(f->team, a->team) &&
	       str_match(f->model, a->model);
}

struct query_state {
	const struct audit_filter *f;
	uint64_t *cursor;
	size_t budget, seen;
	bool more;
	audit_entry_fn fn;
	void *arg;
};

static int query_one(void *arg, const void *key, size_t key_len, const void *val, size_t len)
{
	struct query_state *q = arg;
	if (key_len != STORE_AUDIT_KEY_LEN)
		return 0; /* not a record: nothing else lives here, but never trust it */
	uint64_t stamp = store_audit_stamp(key);
	if (stamp <= *q->cursor)
		return 0;
	if (q->f->until_ns && stamp >= q->f->until_ns)
		return 1;
	if (q->seen++ == q->budget) {
		q->more = true;
		return 1;
	}
	*q->cursor = stamp;
	struct audit_entry e = { .stamp = stamp, .hash = val };
	if (len < STORE_AUDIT_HASH_LEN ||
	    audit_decode((const uint8_t *)val + STORE_AUDIT_HASH_LEN, len - STORE_AUDIT_HASH_LEN,
			 &e.rec))
		return 0; /* unreadable content is verify's to report; a query skips it */
	return passes(q->f, &e.rec) ? q->fn(q->arg, &e) : 0;
}

int audit_query(struct store_reader *r, const struct audit_filter *f, uint64_t *cursor,
		size_t budget, audit_entry_fn fn, void *arg)
{
	if (*cursor == 0 && f->since_ns)
		*cursor = f->since_ns - 1;
	uint8_t from[STORE_AUDIT_KEY_LEN];
	store_audit_key(*cursor, from);
	struct query_state q = { .f = f, .cursor = cursor, .budget = budget, .fn = fn, .arg = arg };
	int rc = store_scan_from(r, STORE_DB_AUDIT, from, sizeof(from), query_one, &q);
	if (rc == 1)
		return q.more ? 1 : 0;
	return rc;
}

/* ---------------------------------------------------------------- formats */

static const char *const usage_names[] = { "null", "\"provider\"", "\"gateway\"", "null" };

static bool put(struct buf *b, size_t max, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static bool put(struct buf *b, size_t max, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	return n >= 0 && (size_t)n < sizeof(tmp) && buf_append(b, tmp, (size_t)n, max);
}

/* A JSON string, or null when empty (and null_if_empty). */
static bool put_jstr(struct buf *b, size_t max, struct slice s, bool null_if_empty)
{
	if (null_if_empty && !s.n)
		return buf_append(b, "null", 4, max);
	char tmp[AUDIT_STR_MAX * 6 + 3];
	size_t n = s.n ? json_escape(tmp + 1, sizeof(tmp) - 2, s) : 0;
	if (s.n && !n)
		return false;
	tmp[0] = '"';
	tmp[n + 1] = '"';
	return buf_append(b, tmp, n + 2, max);
}

/* A body as a JSON string, escaped a piece at a time; null when the record has none. */
static bool put_jbody(struct buf *b, size_t max, bool has, struct slice s)
{
	if (!has)
		return buf_append(b, "null", 4, max);
	char tmp[512 * 6];
	bool ok = buf_append(b, "\"", 1, max);
	for (size_t off = 0; ok && off < s.n; off += 512) {
		struct slice piece = slice_of(s.p + off, s.n - off > 512 ? 512 : s.n - off);
		size_t n = json_escape(tmp, sizeof(tmp), piece);
		ok = n && buf_append(b, tmp, n, max);
	}
	return ok && buf_append(b, "\"", 1, max);
}

static void rfc3339_ns(int64_t ns, char out[48])
{
	time_t t = (time_t)(ns / 1000000000);
	struct tm tm;
	char day[32];
	if (ns < 0 || !gmtime_r(&t, &tm) || !strftime(day, sizeof(day), "%Y-%m-%dT%H:%M:%S", &tm)) {
		snprintf(out, 48, "null");
		return;
	}
	snprintf(out, 48, "%s.%09lldZ", day, (long long)(ns % 1000000000));
}

static void hex(const uint8_t *p, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[p[i] >> 4];
		out[2 * i + 1] = digits[p[i] & 15];
	}
	out[2 * n] = 0;
}

static unsigned fallbacks(const struct audit_rec *a)
{
	return a->nattempts > 1 ? a->nattempts - 1 : 0;
}

bool audit_json(const struct audit_entry *e, struct buf *b, size_t max)
{
	const struct audit_rec *a = &e->rec;
	char when[48], h[2 * STORE_AUDIT_HASH_LEN + 1];
	rfc3339_ns(a->time_ns, when);
	hex(e->hash, STORE_AUDIT_HASH_LEN, h);
	bool ok = put(b, max, "{\"seq\":%" PRIu64 ",\"time\":\"%s\",\"request_id\":", e->stamp,
		      when) &&
		  put_jstr(b, max, a->request_id, true) && put(b, max, ",\"key_id\":") &&
		  put_jstr(b, max, a->key_id, true) && put(b, max, ",\"team\":") &&
		  put_jstr(b, max, a->team, true) && put(b, max, ",\"client\":") &&
		  put_jstr(b, max, a->client, true) &&
		  put(b, max, ",\"dialect\":\"%s\",\"model\":",
		      a->dialect == AUDIT_DIALECT_ANTHROPIC ? "anthropic" : "openai") &&
		  put_jstr(b, max, a->model, true) && put(b, max, ",\"provider\":") &&
		  put_jstr(b, max, a->provider, true) && put(b, max, ",\"upstream_model\":") &&
		  put_jstr(b, max, a->upstream_model, true) &&
		  put(b, max, ",\"status\":%u,\"stream\":%s,\"attempts\":[", a->status,
		      a->stream ? "true" : "false");
	for (unsigned i = 0; ok && i < a->nattempts; i++) {
		const struct audit_attempt *t = &a->attempts[i];
		ok = put(b, max, "%s{\"provider\":", i ? "," : "") &&
		     put_jstr(b, max, t->provider, true) && put(b, max, ",\"model\":") &&
		     put_jstr(b, max, t->model, true) &&
		     (t->status ? put(b, max, ",\"status\":%u", t->status)
				: put(b, max, ",\"status\":null")) &&
		     put(b, max, ",\"error\":") && put_jstr(b, max, t->error, true) &&
		     put(b, max, "}");
	}
	char fb[24] = "null", up[24] = "null";
	if (a->first_byte_us)
		snprintf(fb, sizeof(fb), "%" PRIu64, a->first_byte_us);
	if (a->upstream_us)
		snprintf(up, sizeof(up), "%" PRIu64, a->upstream_us);
	return ok &&
	       put(b, max,
		   "],\"fallbacks\":%u,\"prompt_tokens\":%" PRIu64 ",\"completion_tokens\":%" PRIu64
		   ",\"cached_tokens\":%" PRIu64 ",\"cost_micro_usd\":%" PRId64 ",\"usage\":%s,",
		   fallbacks(a), a->prompt_tokens, a->completion_tokens, a->cached_tokens,
		   a->cost_micro_usd, usage_names[a->usage & 3]) &&
	       put(b, max,
		   "\"latency_us\":{\"total\":%" PRIu64 ",\"first_byte\":%s,\"upstream\":%s},"
		   "\"guardrail\":null,\"cache\":null,\"request_body\":",
		   a->total_us, fb, up) &&
	       put_jbody(b, max, a->has_request_body, a->request_body) &&
	       put(b, max, ",\"response_body\":") &&
	       put_jbody(b, max, a->has_response_body, a->response_body) &&
	       put(b, max, ",\"response_streamed\":%s,\"hash\":\"%s\"}\n",
		   a->response_streamed ? "true" : "false", h);
}

const char *audit_csv_header(void)
{
	return "seq,time,request_id,key_id,team,client,dialect,model,provider,upstream_model,"
	       "status,stream,attempts,fallbacks,prompt_tokens,completion_tokens,cached_tokens,"
	       "cost_micro_usd,usage,total_us,first_byte_us,upstream_us,hash,request_body,"
	       "response_body\r\n";
}

/* A CSV field and its separator: quoted when it holds a comma, quote or line break
 * (RFC 4180), quotes doubled a run at a time (bodies are long). */
static bool put_csv_field(struct buf *b, size_t max, struct slice s, const char *sep)
{
	bool quote = false;
	for (size_t i = 0; i < s.n && !quote; i++)
		quote = s.p[i] == ',' || s.p[i] == '"' || s.p[i] == '\n' || s.p[i] == '\r';
	if (!quote)
		return buf_append(b, s.p, s.n, max) && buf_append(b, sep, strlen(sep), max);
	bool ok = buf_append(b, "\"", 1, max);
	size_t i = 0;
	while (ok && i < s.n) {
		const char *q = memchr(s.p + i, '"', s.n - i);
		size_t run = q ? (size_t)(q - s.p) - i : s.n - i;
		ok = buf_append(b, s.p + i, run, max) && (!q || buf_append(b, "\"\"", 2, max));
		i += run + (q ? 1 : 0);
	}
	return ok && buf_append(b, "\"", 1, max) && buf_append(b, sep, strlen(sep), max);
}

static bool put_csv(struct buf *b, size_t max, struct slice s)
{
	return put_csv_field(b, max, s, ",");
}

bool audit_csv(const struct audit_entry *e, struct buf *b, size_t max)
{
	const struct audit_rec *a = &e->rec;
	char when[48], h[2 * STORE_AUDIT_HASH_LEN + 1], num[24], tries[1200];
	rfc3339_ns(a->time_ns, when);
	hex(e->hash, STORE_AUDIT_HASH_LEN, h);
	/* attempts as "provider/model status|..." in one field */
	size_t tn = 0;
	tries[0] = 0;
	for (unsigned i = 0; i < a->nattempts && tn < sizeof(tries) - 1; i++) {
		const struct audit_attempt *t = &a->attempts[i];
		char how[48];
		if (t->error.n)
			snprintf(how, sizeof(how), "%.*s", (int)(t->error.n > 40 ? 40 : t->error.n),
				 t->error.p);
		else
			snprintf(how, sizeof(how), "%u", t->status);
		int k = snprintf(tries + tn, sizeof(tries) - tn, "%s%.*s/%.*s %s", i ? "|" : "",
				 (int)(t->provider.n > 60 ? 60 : t->provider.n), t->provider.p,
				 (int)(t->model.n > 60 ? 60 : t->model.n), t->model.p, how);
		if (k < 0 || (size_t)k >= sizeof(tries) - tn)
			break;
		tn += (size_t)k;
	}
	snprintf(num, sizeof(num), "%" PRIu64, e->stamp);
	bool ok = put_csv(b, max, slice_cstr(num)) && put_csv(b, max, slice_cstr(when)) &&
		  put_csv(b, max, a->request_id) && put_csv(b, max, a->key_id) &&
		  put_csv(b, max, a->team) && put_csv(b, max, a->client) &&
		  put_csv(b, max, slice_cstr(a->dialect == AUDIT_DIALECT_ANTHROPIC ? "anthropic"
										  : "openai")) &&
		  put_csv(b, max, a->model) && put_csv(b, max, a->provider) &&
		  put_csv(b, max, a->upstream_model);
	const char *usage = a->usage == AUDIT_USAGE_PROVIDER  ? "provider"
			    : a->usage == AUDIT_USAGE_GATEWAY ? "gateway"
							      : "";
	return ok &&
	       put(b, max, "%u,%s,", a->status, a->stream ? "true" : "false") &&
	       put_csv(b, max, slice_of(tries, tn)) &&
	       put(b, max,
		   "%u,%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRId64 ",%s,%" PRIu64 ",%" PRIu64
		   ",%" PRIu64 ",%s,",
		   fallbacks(a), a->prompt_tokens, a->completion_tokens, a->cached_tokens,
		   a->cost_micro_usd, usage, a->total_us, a->first_byte_us, a->upstream_us, h) &&
	       put_csv(b, max, a->request_body) && put_csv_field(b, max, a->response_body, "\r\n");
}

/* ---------------------------------------------------------------- the chain */

struct verify_state {
	struct audit_verify *v;
	uint64_t stamp;
	uint8_t hash[STORE_AUDIT_HASH_LEN];
};

static int verify_one(void *arg, const void *key, size_t key_len, const void *val, size_t len)
{
	struct verify_state *st = arg;
	struct audit_verify *v = st->v;
	if (key_len != STORE_AUDIT_KEY_LEN || len < STORE_AUDIT_HASH_LEN) {
		v->bad_stamp = key_len == STORE_AUDIT_KEY_LEN ? store_audit_stamp(key) : 1;
		snprintf(v->why, sizeof(v->why), "an entry that is not an audit record (key of %zu "
			 "bytes, value of %zu)", key_len, len);
		return 1;
	}
	uint64_t stamp = store_audit_stamp(key);
	if (stamp <= st->stamp) {
		v->bad_stamp = stamp;
		snprintf(v->why, sizeof(v->why), "its stamp is not after the previous one's");
		return 1;
	}
	uint8_t want[STORE_AUDIT_HASH_LEN];
	store_audit_hash(st->hash, stamp, (const uint8_t *)val + STORE_AUDIT_HASH_LEN,
			 len - STORE_AUDIT_HASH_LEN, want);
	if (memcmp(want, val, sizeof(want)) != 0) {
		v->bad_stamp = stamp;
		snprintf(v->why, sizeof(v->why), "its hash does not match its content and the "
			 "previous record's hash (changed, inserted, or a record before it removed)");
		return 1;
	}
	st->stamp = stamp;
	memcpy(st->hash, val, sizeof(st->hash));
	v->checked++;
	return 0;
}

int audit_verify_chain(struct store_reader *r, struct audit_verify *v)
{
	memset(v, 0, sizeof(*v));
	struct verify_state st = { .v = v };
	int rc = store_read_begin(r);
	if (rc)
		return rc;
	rc = store_audit_anchor(r, &st.stamp, st.hash);
	v->anchor_stamp = st.stamp;
	if (rc == 0)
		rc = store_scan_from(r, STORE_DB_AUDIT, NULL, 0, verify_one, &st);
	store_read_end(r);
	return rc == 1 ? 0 : rc;
}
