/* config.c - penstock.yaml into struct config: one small schema table per mapping drives the
 * defaults, the parsing, the checks and the freeing, so a new section is a new table.
 *
 * libyaml's document API builds the node tree (with line/column marks); we walk it against
 * the schemas. Names that point elsewhere in the file (a target's provider, a fallback model,
 * a key's team) are collected while walking and checked at the end, since mapping order is
 * free and models may well come before providers.
 */
#include "config.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <yaml.h>

/* A config is a few KiB: anything near these limits is a mistake, not a config. */
#define CONFIG_FILE_MAX ((size_t)16 << 20)
#define CONFIG_LIST_MAX 4096 /* items per list; also keeps the pairwise name checks cheap */
#define SECRET_FILE_MAX ((size_t)64 << 10)
#define SCHEMA_FIELDS_MAX 64 /* keys per mapping: one bit each in a seen-mask */
#define SHOW_MAX 64          /* characters of a value quoted back in an error */

enum ref_kind { REF_NONE, REF_PROVIDER, REF_MODEL, REF_TEAM };

/* A name that must match something defined elsewhere in the file. */
struct pending_ref {
	enum ref_kind kind;
	const char *name; /* owned by the config being built, stable until config_free */
	yaml_mark_t mark;
};

struct loader {
	const char *file; /* name used in messages */
	const char *text; /* the YAML, to place reader errors that come with an offset only */
	size_t len;
	yaml_document_t *doc;
	struct config *cfg;
	char *err;
	size_t errlen;
	struct pending_ref *refs;
	size_t nrefs, refs_cap;
};

struct field;

/* How one kind of value is read, and what memory it owns. */
struct field_type {
	const char *expects; /* for type errors: "'x' must be <expects>, got a list" */
	bool null_ok;        /* an empty value means "none" (maps and lists), not an error */
	int (*parse)(struct loader *ld, const struct field *f, yaml_node_t *val, char *base);
	void (*release)(const struct field *f, char *base); /* NULL: owns nothing */
};

struct field {
	const char *key;
	const struct field_type *type;
	size_t offset;     /* destination, inside the struct the schema fills */
	size_t size;       /* sizeof the destination: integers are stored by width */
	const void *spec;  /* per type: a sub-schema, a list layout, allowed words, ... */
	uint64_t min, max; /* bounds for numbers; max 0 means what the destination holds */
	const char *def;   /* default, written as in YAML and read by the same type */
	bool required;
};

struct schema {
	const char *what; /* names the mapping in errors: "unknown key 'x' in provider" */
	const struct field *fields;
	size_t nfields;
	/* checks across keys, run once every key of one mapping has been read */
	int (*check)(struct loader *ld, yaml_node_t *map, char *base);
};

#define FIELD(T, member, k, ...)                                                            \
	{ .key = (k), .offset = offsetof(T, member), .size = sizeof(((T *)0)->member),     \
	  __VA_ARGS__ }
#define SCHEMA(what_, fields_, check_)                                                      \
	{ .what = (what_), .fields = (fields_),                                             \
	  .nfields = sizeof(fields_) / sizeof((fields_)[0]), .check = (check_) }

/* ---- errors ---- */

__attribute__((format(printf, 3, 4)))
static int fail_at(struct loader *ld, yaml_mark_t mark, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (ld->errlen == 0)
		return -1;
	n = snprintf(ld->err, ld->errlen, "%s:%zu:%zu: ", ld->file, mark.line + 1,
		     mark.column + 1);
	if (n >= 0 && (size_t)n < ld->errlen) {
		va_start(ap, fmt);
		vsnprintf(ld->err + n, ld->errlen - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return -1;
}

static int fail_oom(struct loader *ld, yaml_mark_t mark)
{
	return fail_at(ld, mark, "out of memory");
}

__attribute__((format(printf, 3, 4)))
static void say(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* A value quoted back in an error: bounded, control bytes masked. Never used on secrets. */
struct shown {
	char s[SHOW_MAX + 4];
};

static struct shown show(const char *s)
{
	struct shown out;
	size_t i;

	for (i = 0; s[i] && i < SHOW_MAX; i++)
		out.s[i] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
	if (s[i]) {
		memcpy(out.s + i, "...", 3);
		i += 3;
	}
	out.s[i] = '\0';
	return out;
}

/* "a, b, c" into buf, truncated quietly: it only decorates a message. */
static void join_words(char *buf, size_t size, const char *const *words, size_t n)
{
	size_t used = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < n && used < size; i++) {
		int w = snprintf(buf + used, size - used, "%s%s", i ? ", " : "", words[i]);
		if (w < 0)
			break;
		used += (size_t)w;
	}
}

static size_t count_words(const char *const *words)
{
	size_t n = 0;

	while (words[n])
		n++;
	return n;
}

static int word_index(const char *const *words, const char *s)
{
	for (int i = 0; words[i]; i++)
		if (strcmp(words[i], s) == 0)
			return i;
	return -1;
}

static int fail_oneof(struct loader *ld, const struct field *f, yaml_node_t *v,
		      const char *const *words)
{
	char list[256];

	join_words(list, sizeof list, words, count_words(words));
	return fail_at(ld, v->start_mark, "bad value '%s' for '%s' (expected one of: %s)",
		       show((const char *)v->data.scalar.value).s, f->key, list);
}

/* ---- YAML nodes ---- */

static yaml_node_t *node_at(const struct loader *ld, int index)
{
	yaml_node_t *n = yaml_document_get_node(ld->doc, index);

	assert(n != NULL);
	return n;
}

static const char *text_of(const yaml_node_t *n)
{
	assert(n->type == YAML_SCALAR_NODE);
	return (const char *)n->data.scalar.value;
}

static bool is_null(const yaml_node_t *n)
{
	static const char *const nulls[] = { "", "~", "null", "Null", "NULL", NULL };

	return n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
	       word_index(nulls, text_of(n)) >= 0;
}

static const char *kind_of(const yaml_node_t *n)
{
	switch (n->type) {
	case YAML_MAPPING_NODE:
		return "a mapping";
	case YAML_SEQUENCE_NODE:
		return "a list";
	case YAML_SCALAR_NODE:
		if (is_null(n))
			return "no value";
		if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
			return "a quoted string";
		return "a scalar";
	default:
		return "nothing";
	}
}

static size_t seq_len(const yaml_node_t *seq)
{
	return (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start);
}

static yaml_node_t *seq_get(const struct loader *ld, const yaml_node_t *seq, size_t i)
{
	assert(i < seq_len(seq));
	return node_at(ld, seq->data.sequence.items.start[i]);
}

static bool key_is(const yaml_node_t *k, const char *key)
{
	return k->type == YAML_SCALAR_NODE && k->data.scalar.length == strlen(key) &&
	       memcmp(k->data.scalar.value, key, k->data.scalar.length) == 0;
}

/* The value of key in map (the first, if repeated), or NULL. */
static yaml_node_t *map_get(const struct loader *ld, const yaml_node_t *map, const char *key)
{
	const yaml_node_pair_t *p;

	assert(map->type == YAML_MAPPING_NODE);
	for (p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++)
		if (key_is(node_at(ld, p->key), key))
			return node_at(ld, p->value);
	return NULL;
}

/* Type check for anything read as text: a present, non-empty scalar with no NUL inside.
 * The value of key, or (item) one item of the list under key. */
static int want_text(struct loader *ld, const char *key, bool item, const char *expects,
		     yaml_node_t *v)
{
	const char *each = item ? "each item of " : "";

	if (v->type != YAML_SCALAR_NODE || is_null(v))
		return fail_at(ld, v->start_mark, "%s'%s' must be %s, got %s", each, key, expects,
			       kind_of(v));
	if (v->data.scalar.length == 0)
		return fail_at(ld, v->start_mark, "%s'%s' must not be empty", each, key);
	if (strlen(text_of(v)) != v->data.scalar.length)
		return fail_at(ld, v->start_mark, "%s'%s' must not contain NUL bytes", each, key);
	return 0;
}

static int want_field_text(struct loader *ld, const struct field *f, yaml_node_t *v)
{
	return want_text(ld, f->key, false, f->type->expects, v);
}

/* Numbers are written plain; "600" in quotes is a string where a number belongs. */
static int want_plain(struct loader *ld, const struct field *f, yaml_node_t *v)
{
	if (v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE)
		return 0;
	return fail_at(ld, v->start_mark, "'%s' must be %s, got a quoted string", f->key,
		       f->type->expects);
}

/* ---- storing ---- */

static void *member(char *base, const struct field *f)
{
	return base + f->offset;
}

static uint64_t field_max(const struct field *f)
{
	if (f->max)
		return f->max;
	return f->size >= sizeof(uint64_t) ? UINT64_MAX : (UINT64_C(1) << (8 * f->size)) - 1;
}

static void store_uint(const struct field *f, char *base, uint64_t v)
{
	assert(v <= field_max(f));
	switch (f->size) {
	case sizeof(uint32_t): {
		uint32_t x = (uint32_t)v;
		memcpy(member(base, f), &x, sizeof x);
		break;
	}
	case sizeof(uint64_t):
		memcpy(member(base, f), &v, sizeof v);
		break;
	default:
		assert(!"integer field of unexpected width");
	}
}

/* Array members have different pointer types (struct config_model *, char **); copy bytes. */
static void *get_array(const struct field *f, char *base)
{
	void *p;

	memcpy(&p, member(base, f), sizeof p);
	return p;
}

static void set_array(const struct field *f, char *base, void *p)
{
	memcpy(member(base, f), &p, sizeof p);
}

static size_t *count_of(char *base, size_t count_offset)
{
	return (size_t *)(void *)(base + count_offset);
}

static int add_ref(struct loader *ld, enum ref_kind kind, const char *name, yaml_mark_t mark)
{
	if (ld->nrefs == ld->refs_cap) {
		size_t cap = ld->refs_cap ? 2 * ld->refs_cap : 16;
		struct pending_ref *r = realloc(ld->refs, cap * sizeof *r);
		if (!r)
			return fail_oom(ld, mark);
		ld->refs = r;
		ld->refs_cap = cap;
	}
	ld->refs[ld->nrefs++] = (struct pending_ref){ .kind = kind, .name = name, .mark = mark };
	return 0;
}

/* ---- strings, words, enums ---- */

struct str_spec {
	const char *const *oneof; /* NULL-terminated allowed values, or NULL for any */
	enum ref_kind ref;        /* the value names a provider, model or team */
};

static int parse_str(struct loader *ld, const struct field *f, yaml_node_t *v, char *base)
{
	const struct str_spec *spec = f->spec;
	char **dst = member(base, f);
	char *copy;

	if (want_field_text(ld, f, v))
		return -1;
	if (spec && spec->oneof && word_index(spec->oneof, text_of(v)) < 0)
		return fail_oneof(ld, f, v, spec->oneof);
	copy = strdup(text_of(v));
	if (!copy)
		return fail_oom(ld, v->start_mark);
	free(*dst); /* a default */
	*dst = copy;
	if (spec && spec->ref != REF_NONE)
		return add_ref(ld, spec->ref, copy, v->start_mark);
	return 0;
}

static void release_str(const struct field *f, char *base)
{
	char **s = member(base, f);

	free(*s);
	*s = NULL;
}

/* A word from f->spec (NULL-terminated) stored as its index, e.g. into an enum. */
static int parse_enum(struct loader *ld, const struct field *f, yaml_node_t *v, char *base)
{
	const char *const *words = f->spec;
	int i;

	if (want_field_text(ld, f, v))
		return -1;
	i = word_index(words, text_of(v));
	if (i < 0)
		return fail_oneof(ld, f, v, words);
	store_uint(f, base, (uint64_t)i);
	return 0;
}

/* ---- numbers: integers, durations, sizes ---- */

struct unit {
	const char *suffix;
	uint64_t scale;
};

struct number_kind {
	const struct unit *units; /* terminated by a NULL suffix; "" = a bare number */
	const char *unit_name;    /* for range errors: "ms", " bytes" */
	const char *example;      /* for syntax errors */
	bool plain_only;
};

static const struct unit plain_units[] = { { "", 1 }, { NULL, 0 } };
static const struct unit ms_units[] = {
	{ "", 1 }, { "ms", 1 }, { "s", 1000 }, { "m", 60 * 1000 }, { "h", 3600 * 1000 },
	{ NULL, 0 },
};
static const struct unit byte_units[] = {
	{ "", 1 },
	{ "B", 1 },
	{ "KB", 1000 },
	{ "MB", 1000 * 1000 },
	{ "GB", 1000 * 1000 * 1000 },
	{ "KiB", UINT64_C(1) << 10 },
	{ "MiB", UINT64_C(1) << 20 },
	{ "GiB", UINT64_C(1) << 30 },
	{ NULL, 0 },
};

static const struct number_kind integer_kind = {
	plain_units, "", "a whole number such as 600", true,
};
static const struct number_kind duration_kind = {
	ms_units, " ms", "e.g. 250ms, 10s, 2m, 1h or a number of milliseconds", false,
};
static const struct number_kind size_kind = {
	byte_units, " bytes", "e.g. 16KiB, 8MiB, 1MB (10^6) or a number of bytes", false,
};

enum { SCALED_OK, SCALED_SYNTAX, SCALED_OVERFLOW };

/* Decimal digits, optional blanks, one of the unit suffixes; nothing else. */
static int read_scaled(const char *s, const struct unit *units, uint64_t *out)
{
	uint64_t n = 0;
	const char *p = s;

	if (*p < '0' || *p > '9')
		return SCALED_SYNTAX;
	for (; *p >= '0' && *p <= '9'; p++) {
		unsigned d = (unsigned)(*p - '0');
		if (n > (UINT64_MAX - d) / 10)
			return SCALED_OVERFLOW;
		n = n * 10 + d;
	}
	if (*p == ' ' && p[1] != '\0')
		p++;
	for (const struct unit *u = units; u->suffix; u++) {
		if (strcmp(p, u->suffix) != 0)
			continue;
		if (n > UINT64_MAX / u->scale)
			return SCALED_OVERFLOW;
		*out = n * u->scale;
		return SCALED_OK;
	}
	return SCALED_SYNTAX;
}

static int parse_number(struct loader *ld, const struct field *f, yaml_node_t *v, char *base,
			const struct number_kind *kind)
{
	uint64_t n = 0;
	int rc;

	if (want_field_text(ld, f, v))
		return -1;
	if (f->spec && strcmp(text_of(v), f->spec) == 0) { /* a word meaning 0, like "auto" */
		store_uint(f, base, 0);
		return 0;
	}
	if (kind->plain_only && want_plain(ld, f, v))
		return -1;
	rc = read_scaled(text_of(v), kind->units, &n);
	if (rc == SCALED_SYNTAX)
		return fail_at(ld, v->start_mark, "bad value '%s' for '%s' (expected %s%s%s)",
			       show(text_of(v)).s, f->key, f->spec ? "'" : "",
			       f->spec ? (const char *)f->spec : "",
			       f->spec ? "' or a whole number" : kind->example);
	if (rc == SCALED_OVERFLOW || n < f->min || n > field_max(f))
		return fail_at(ld, v->start_mark,
			       "'%s' is out of range: %s (allowed %" PRIu64 " to %" PRIu64 "%s)",
			       f->key, show(text_of(v)).s, f->min, field_max(f), kind->unit_name);
	store_uint(f, base, n);
	return 0;
}

static int parse_uint(struct loader *ld, const struct field *f, yaml_node_t *v, char *base)
{
	return parse_number(ld, f, v, base, &integer_kind);
}

static int parse_duration(struct loader *ld, const struct field *f, yaml_node_t *v, char *base)
{
	return parse_number(ld, f, v, base, &duration_kind);
}

static int parse_size(struct loader *ld, const struct field *f, yaml_node_t *v, char *base)
{
	return parse_number(ld, f, v, base, &size_kind);
}

/* Money and prices: non-negative decimals, bounded by [min, max] whole units. */
static int parse_decimal(struct loader *ld, const struct field *f, yaml_node_t *v, char *base)
{
	const char *s;
	char *end;
	double d;

	assert(f->size == sizeof(double));
	if (want_field_text(ld, f, v) || want_plain(ld, f, v))
		return -1;
	s = text_of(v);
	errno = 0;
	d = strtod(s, &end);
	/* only plain decimals: no sign, hex, inf or nan */
	if (strspn(s, "0123456789.eE+-") != strlen(s) || !((*s >= '0' && *s <= '9') || *s == '.') ||
	    *end || errno == ERANGE || !isfinite(d))
		return fail_at(ld, v->start_mark, "bad value '%s' for '%s' (expected %s)",
			       show(s).s, f->key, f->type->expects);
	if (d < (double)f->min || d > (double)f->max)
		return fail_at(ld, v->start_mark,
			       "'%s' is out of range: %s (allowed %" PRIu64 " to %" PRIu64 ")",
			       f->key, show(s).s, f->min, f->max);
	memcpy(member(base, f), &d, sizeof d);
	return 0;
}

/* ---- addresses and URLs ---- */

static int port_from_text(const char *s, size_t n, uint16_t *port)
{
	unsigned v = 0;

	if (n == 0 || n > 5)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	if (v < 1 || v > 65535)
		return -1;
	*port = (uint16_t)v;
	return 0;
}

static bool ipv6_ok(const char *s, size_t n)
{
	char buf[INET6_ADDRSTRLEN];
	struct in6_addr a;

	if (n == 0 || n >= sizeof buf)
		return false;
	memcpy(buf, s, n);
	buf[n] = '\0';
	return inet_pton(AF_INET6, buf, &a) == 1;
}

/* A listen address: IPv4 literal, "localhost" or [IPv6], then :port. NULL or why not. */
static const char *addr_from_text(const char *s, struct config_addr *a)
{
	const char *host = s, *host_end, *port;
	struct in_addr v4;
	char buf[sizeof a->host];
	size_t n;

	if (*s == '[') {
		host = s + 1;
		host_end = strchr(host, ']');
		if (!host_end)
			return "missing ']'";
		if (host_end[1] != ':')
			return "missing :port";
		port = host_end + 2;
		if (!ipv6_ok(host, (size_t)(host_end - host)))
			return "not an IPv6 address";
	} else {
		host_end = strrchr(s, ':');
		if (!host_end)
			return "missing :port";
		if (memchr(s, ':', (size_t)(host_end - s)))
			return "an IPv6 address needs brackets";
		port = host_end + 1;
	}
	n = (size_t)(host_end - host);
	if (n == 0)
		return "missing host";
	if (n >= sizeof buf)
		return "host too long";
	memcpy(buf, host, n);
	buf[n] = '\0';
	if (*s != '[' && strcmp(buf, "localhost") != 0 && inet_pton(AF_INET, buf, &v4) != 1)
		return "host must be an IPv4 address, [IPv6 address] or localhost";
	if (port_from_text(port, strlen(port), &a->port))
		return "port must be 1 to 65535";
	memcpy(a->host, buf, n + 1);
	return NULL;
}

static int parse_addr(struct loader *ld, const struct field *f, yaml_node_t *v, char *base)
{
	struct config_addr a = { { 0 }, 0 };
	const char *why;

	assert(f->size == sizeof a);
	if (want_field_text(ld, f, v))
		return -1;
	why = addr_from_text(text_of(v), &a);
	if (why)
		return fail_at(ld, v->start_mark,
			       "bad address '%s' for '%s': %s (expected host:port, e.g. "
			       "127.0.0.1:8080 or [::1]:8080)",
			       show(text_of(v)).s, f->key, why);
	memcpy(member(base, f), &a, sizeof a);
	return 0;
}

struct url_parts {
	bool tls;
	const char *host, *path;
	size_t host_len, path_len;
	uint16_t port;
};

static bool host_name_ok(const char *s, size_t n)
{
	if (n == 0 || n > 253 || s[0] == '-' || s[0] == '.')
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '.' || c == '_'))
			return false;
	}
	return true;
}

/* scheme://host[:port][/prefix]; NULL or why not. The URL itself never goes into a
 * message: it may carry credentials. */
static const char *url_parse(const char *url, struct url_parts *u)
{
	const char *s, *auth_end, *port = NULL;

	if (strncasecmp(url, "https://", 8) == 0) {
		u->tls = true;
		u->port = 443;
		s = url + 8;
	} else if (strncasecmp(url, "http://", 7) == 0) {
		u->tls = false;
		u->port = 80;
		s = url + 7;
	} else {
		return "must start with http:// or https://";
	}
	for (const char *p = s; *p; p++)
		if ((unsigned char)*p <= ' ' || *p == 0x7f)
			return "must not contain spaces or control characters";
	if (strpbrk(s, "?#"))
		return "must not have a query or fragment";
	auth_end = s + strcspn(s, "/");
	if (memchr(s, '@', (size_t)(auth_end - s)))
		return "must not contain credentials (use api_key_env or api_key_file)";
	if (*s == '[') {
		const char *close = memchr(s, ']', (size_t)(auth_end - s));
		if (!close)
			return "has an unclosed '['";
		u->host = s + 1;
		u->host_len = (size_t)(close - u->host);
		if (!ipv6_ok(u->host, u->host_len))
			return "has a bad IPv6 address";
		if (close + 1 < auth_end && close[1] != ':')
			return "has junk after ']'";
		if (close + 1 < auth_end)
			port = close + 2;
	} else {
		const char *colon = memchr(s, ':', (size_t)(auth_end - s));
		u->host = s;
		u->host_len = (size_t)((colon ? colon : auth_end) - s);
		if (u->host_len == 0)
			return "has no host";
		if (!host_name_ok(u->host, u->host_len))
			return "has a bad host name";
		if (colon)
			port = colon + 1;
	}
	if (port && port_from_text(port, (size_t)(auth_end - port), &u->port))
		return "has a bad port (1 to 65535)";
	u->path = auth_end;
	u->path_len = strlen(auth_end);
	while (u->path_len && u->path[u->path_len - 1] == '/')
		u->path_len--;
	return NULL;
}

/* base_url fills the provider's base_url, tls, host, port and path_prefix together. */
static int parse_base_url(struct loader *ld, const struct field *f, yaml_node_t *v, char *base)
{
	struct config_provider *p = (struct config_provider *)(void *)base;
	struct url_parts u = { 0 };
	const char *why;
	char *url, *host, *prefix;

	assert(f->offset == offsetof(struct config_provider, base_url));
	if (want_field_text(ld, f, v))
		return -1;
	why = url_parse(text_of(v), &u);
	if (why)
		return fail_at(ld, v->start_mark, "'%s' %s", f->key, why);
	url = strdup(text_of(v));
	host = strndup(u.host, u.host_len);
	prefix = strndup(u.path, u.path_len);
	if (!url || !host || !prefix) {
		free(url);
		free(host);
		free(prefix);
		return fail_oom(ld, v->start_mark);
	}
	p->base_url = url;
	p->host = host;
	p->path_prefix = prefix;
	p->tls = u.tls;
	p->port = u.port;
	return 0;
}

static void release_base_url(const struct field *f, char *base)
{
	struct config_provider *p = (struct config_provider *)(void *)base;

	assert(f->offset == offsetof(struct config_provider, base_url));
	free(p->base_url);
	free(p->host);
	free(p->path_prefix);
	p->base_url = p->host = p->path_prefix = NULL;
}

/* A proxy URL: http://host:port with no path; fills struct config_proxy. */
static int parse_proxy(struct loader *ld, const struct field *f, yaml_node_t *v, char *base)
{
	struct config_proxy *px = member(base, f);
	struct url_parts u = { 0 };
	const char *why;

	if (want_field_text(ld, f, v))
		return -1;
	why = strchr(text_of(v), '@') ? "must not contain credentials (proxy authentication is not supported)"
				       : url_parse(text_of(v), &u);
	if (!why && u.tls)
		why = "must start with http:// (the proxy is reached in clear, then CONNECT)";
	if (!why && u.path_len)
		why = "must not have a path";
	if (why)
		return fail_at(ld, v->start_mark, "'%s' %s", f->key, why);
	px->url = strdup(text_of(v));
	px->host = strndup(u.host, u.host_len);
	if (!px->url || !px->host) {
		free(px->url);
		free(px->host);
		px->url = px->host = NULL;
		return fail_oom(ld, v->start_mark);
	}
	px->port = u.port;
	return 0;
}

static void release_proxy(const struct field *f, char *base)
{
	struct config_proxy *px = member(base, f);

	free(px->url);
	free(px->host);
	px->url = px->host = NULL;
}

static int parse_bool(struct loader *ld, const struct field *f, yaml_node_t *v, char *base)
{
	static const char *const yes[] = { "true", "yes", "on", NULL };
	static const char *const no[] = { "false", "no", "off", NULL };
	static const char *const both[] = { "true", "false", NULL };
	bool *dst = member(base, f);

	if (want_field_text(ld, f, v))
		return -1;
	if (word_index(yes, text_of(v)) >= 0)
		*dst = true;
	else if (word_index(no, text_of(v)) >= 0)
		*dst = false;
	else
		return fail_oneof(ld, f, v, both);
	return 0;
}

/* ---- secrets: <name>_env, <name>_file or <name> (inline), at most one of them ---- */

enum secret_part { SECRET_ENV, SECRET_FILE, SECRET_VALUE };
static const enum secret_part secret_env = SECRET_ENV;
static const enum secret_part secret_file = SECRET_FILE;
static const enum secret_part secret_value = SECRET_VALUE;

static char **secret_slot(struct config_secret *s, enum secret_part part)
{
	switch (part) {
	case SECRET_ENV:
		return &s->env;
	case SECRET_FILE:
		return &s->file;
	case SECRET_VALUE:
		break;
	}
	return &s->value;
}

static bool env_name_ok(const char *s)
{
	if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_'))
		return false;
	return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") ==
	       strlen(s);
}

/* Messages here never include the value: it may be the secret itself, written in the
 * wrong key. */
static int parse_secret(struct loader *ld, const struct field *f, yaml_node_t *v, char *base)
{
	static const char *const suffixes[] = { [SECRET_ENV] = "_env", [SECRET_FILE] = "_file",
						[SECRET_VALUE] = "" };
	struct config_secret *s = member(base, f);
	enum secret_part part = *(const enum secret_part *)f->spec;
	int stem = (int)(strlen(f->key) - strlen(suffixes[part]));
	char **slot = secret_slot(s, part);

	if (want_field_text(ld, f, v))
		return -1;
	if (s->env || s->file || s->value)
		return fail_at(ld, v->start_mark,
			       "'%s' conflicts with another source of the same secret (give one of "
			       "%.*s_env, %.*s_file or %.*s)",
			       f->key, stem, f->key, stem, f->key, stem, f->key);
	if (part == SECRET_ENV && !env_name_ok(text_of(v)))
		return fail_at(ld, v->start_mark,
			       "'%s' must name an environment variable (letters, digits and '_', "
			       "not starting with a digit)",
			       f->key);
	*slot = strdup(text_of(v));
	return *slot ? 0 : fail_oom(ld, v->start_mark);
}

static void release_secret(const struct field *f, char *base)
{
	struct config_secret *s = member(base, f);
	char **slot = secret_slot(s, *(const enum secret_part *)f->spec);

	if (*slot && slot == &s->value)
		explicit_bzero(*slot, strlen(*slot));
	free(*slot);
	*slot = NULL;
}

/* ---- mappings and lists ---- */

static int parse_mapping(struct loader *ld, const struct schema *s, yaml_node_t *map,
			 char *base);
static int schema_init(struct loader *ld, const struct schema *s, char *base);
static void schema_release(const struct schema *s, char *base);

/* A nested mapping; its schema may fill the same struct (admin, audit) or a member. */
static int parse_map(struct loader *ld, const struct field *f, yaml_node_t *v, char *base)
{
	if (v->type != YAML_MAPPING_NODE)
		return fail_at(ld, v->start_mark, "'%s' must be %s, got %s", f->key,
			       f->type->expects, kind_of(v));
	return parse_mapping(ld, f->spec, v, member(base, f));
}

static void release_map(const struct field *f, char *base)
{
	schema_release(f->spec, member(base, f));
}

/* A list of mappings, stored as an array pointer with a size_t count beside it. */
struct list_spec {
	const struct schema *item;
	size_t item_size;
	size_t count_offset;    /* of the count, in the struct holding the array pointer */
	size_t min_items;
	const char *unique_key; /* a string key whose values must differ between items */
};

static const struct field *schema_field(const struct schema *s, const yaml_node_t *k)
{
	for (size_t i = 0; i < s->nfields; i++)
		if (key_is(k, s->fields[i].key))
			return &s->fields[i];
	return NULL;
}

static const char *item_text(const struct list_spec *ls, const struct field *key, char *items,
			     size_t i)
{
	return *(char **)member(items + i * ls->item_size, key);
}

static int check_unique(struct loader *ld, const struct list_spec *ls, yaml_node_t *seq,
			char *items)
{
	const struct field *key = NULL;
	size_t n = seq_len(seq);

	for (size_t i = 0; i < ls->item->nfields; i++)
		if (strcmp(ls->item->fields[i].key, ls->unique_key) == 0)
			key = &ls->item->fields[i];
	assert(key && key->required); /* so every item has one */
	for (size_t i = 1; i < n; i++) {
		const char *name = item_text(ls, key, items, i);

		for (size_t j = 0; j < i; j++) {
			yaml_node_t *again;

			if (strcmp(name, item_text(ls, key, items, j)) != 0)
				continue;
			again = map_get(ld, seq_get(ld, seq, i), key->key);
			return fail_at(ld, again->start_mark,
				       "%s %s '%s' is already used at line %zu", ls->item->what,
				       key->key, show(name).s,
				       seq_get(ld, seq, j)->start_mark.line + 1);
		}
	}
	return 0;
}

/* A list value: a sequence of min_items to CONFIG_LIST_MAX items; *n is its length. */
static int want_sequence(struct loader *ld, const struct field *f, yaml_node_t *v,
			 size_t min_items, size_t *n)
{
	if (v->type != YAML_SEQUENCE_NODE)
		return fail_at(ld, v->start_mark, "'%s' must be %s, got %s", f->key,
			       f->type->expects, kind_of(v));
	*n = seq_len(v);
	if (*n < min_items)
		return fail_at(ld, v->start_mark, "'%s' needs at least %zu item%s", f->key,
			       min_items, min_items == 1 ? "" : "s");
	if (*n > CONFIG_LIST_MAX)
		return fail_at(ld, v->start_mark, "'%s' has more than %d items", f->key,
			       CONFIG_LIST_MAX);
	return 0;
}

static int parse_list(struct loader *ld, const struct field *f, yaml_node_t *v, char *base)
{
	const struct list_spec *ls = f->spec;
	size_t n;
	char *items;

	if (want_sequence(ld, f, v, ls->min_items, &n))
		return -1;
	if (n == 0)
		return 0;
	assert(get_array(f, base) == NULL);
	items = calloc(n, ls->item_size);
	if (!items)
		return fail_oom(ld, v->start_mark);
	/* owned by the config from here on, so an error below frees what was filled */
	set_array(f, base, items);
	*count_of(base, ls->count_offset) = n;
	for (size_t i = 0; i < n; i++) {
		yaml_node_t *it = seq_get(ld, v, i);
		char *ib = items + i * ls->item_size;

		if (schema_init(ld, ls->item, ib))
			return -1;
		if (it->type != YAML_MAPPING_NODE)
			return fail_at(ld, it->start_mark,
				       "each item of '%s' must be a mapping (%s), got %s", f->key,
				       ls->item->what, kind_of(it));
		if (parse_mapping(ld, ls->item, it, ib))
			return -1;
	}
	return ls->unique_key ? check_unique(ld, ls, v, items) : 0;
}

static void release_list(const struct field *f, char *base)
{
	const struct list_spec *ls = f->spec;
	char *items = get_array(f, base);
	size_t *n = count_of(base, ls->count_offset);

	for (size_t i = 0; items && i < *n; i++)
		schema_release(ls->item, items + i * ls->item_size);
	free(items);
	set_array(f, base, NULL);
	*n = 0;
}

/* A list of names (char **, size_t count beside it). */
struct names_spec {
	size_t count_offset;
	enum ref_kind ref; /* each name must be defined elsewhere in the file */
	bool allow_star;   /* "*" means all, and refers to nothing */
};

static int parse_names(struct loader *ld, const struct field *f, yaml_node_t *v, char *base)
{
	const struct names_spec *ns = f->spec;
	char **names;
	size_t n;

	if (want_sequence(ld, f, v, 0, &n))
		return -1;
	if (n == 0)
		return 0;
	assert(get_array(f, base) == NULL);
	names = calloc(n, sizeof *names);
	if (!names)
		return fail_oom(ld, v->start_mark);
	set_array(f, base, names);
	*count_of(base, ns->count_offset) = n;
	for (size_t i = 0; i < n; i++) {
		yaml_node_t *it = seq_get(ld, v, i);

		if (want_text(ld, f->key, true, "a name", it))
			return -1;
		names[i] = strdup(text_of(it));
		if (!names[i])
			return fail_oom(ld, it->start_mark);
		if (ns->allow_star && strcmp(names[i], "*") == 0)
			continue;
		if (ns->ref != REF_NONE && add_ref(ld, ns->ref, names[i], it->start_mark))
			return -1;
	}
	return 0;
}

static void release_names(const struct field *f, char *base)
{
	const struct names_spec *ns = f->spec;
	char **names = get_array(f, base);
	size_t *n = count_of(base, ns->count_offset);

	for (size_t i = 0; names && i < *n; i++)
		free(names[i]);
	free(names);
	set_array(f, base, NULL);
	*n = 0;
}

/* HTTP statuses: a list of numbers (uint16_t array, size_t count beside it). The default
 * is written as one scalar of blank-separated numbers. */
struct statuses_spec {
	size_t count_offset;
};

static int status_from_text(struct loader *ld, const struct field *f, yaml_node_t *at,
			    const char *s, size_t n, uint16_t *out)
{
	unsigned v = 0;

	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9' || n != 3)
			return fail_at(ld, at->start_mark,
				       "bad value '%s' in '%s' (expected HTTP statuses such as 503)",
				       show(text_of(at)).s, f->key);
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	if (v < 100 || v > 599)
		return fail_at(ld, at->start_mark, "'%s': %u is not an HTTP status (100 to 599)",
			       f->key, v);
	*out = (uint16_t)v;
	return 0;
}

static int add_status(struct loader *ld, const struct field *f, yaml_node_t *at, char *base,
		      const char *s, size_t n)
{
	const struct statuses_spec *ss = f->spec;
	size_t *count = count_of(base, ss->count_offset);
	uint16_t *dst = member(base, f);

	if (*count == f->size / sizeof(uint16_t))
		return fail_at(ld, at->start_mark, "'%s' lists more than %zu statuses", f->key,
			       f->size / sizeof(uint16_t));
	return status_from_text(ld, f, at, s, n, &dst[(*count)++]);
}

static int parse_statuses(struct loader *ld, const struct field *f, yaml_node_t *v, char *base)
{
	size_t n;

	*count_of(base, ((const struct statuses_spec *)f->spec)->count_offset) = 0;
	if (v->type == YAML_SCALAR_NODE) {
		const char *s = text_of(v);

		if (want_field_text(ld, f, v))
			return -1;
		while (*s) {
			size_t len = strcspn(s, " ,");
			if (len && add_status(ld, f, v, base, s, len))
				return -1;
			s += len;
			s += strspn(s, " ,");
		}
		return 0;
	}
	if (want_sequence(ld, f, v, 0, &n))
		return -1;
	for (size_t i = 0; i < n; i++) {
		yaml_node_t *it = seq_get(ld, v, i);

		if (want_text(ld, f->key, true, "an HTTP status", it) || want_plain(ld, f, it) ||
		    add_status(ld, f, it, base, text_of(it), strlen(text_of(it))))
			return -1;
	}
	return 0;
}

static const struct field_type type_str = { "a string", false, parse_str, release_str };
static const struct field_type type_enum = { "a word", false, parse_enum, NULL };
static const struct field_type type_uint = { "a whole number", false, parse_uint, NULL };
static const struct field_type type_duration = { "a duration", false, parse_duration, NULL };
static const struct field_type type_size = { "a size", false, parse_size, NULL };
static const struct field_type type_decimal = { "a number", false, parse_decimal, NULL };
static const struct field_type type_addr = { "host:port", false, parse_addr, NULL };
static const struct field_type type_base_url = { "a URL", false, parse_base_url,
						  release_base_url };
static const struct field_type type_proxy = { "a URL", false, parse_proxy, release_proxy };
static const struct field_type type_bool = { "true or false", false, parse_bool, NULL };
static const struct field_type type_secret = { "a string", false, parse_secret,
					       release_secret };
static const struct field_type type_map = { "a mapping", true, parse_map, release_map };
static const struct field_type type_list = { "a list", true, parse_list, release_list };
static const struct field_type type_names = { "a list of names", true, parse_names,
					      release_names };
static const struct field_type type_statuses = { "a list of HTTP statuses", true,
						 parse_statuses, NULL };

/* ---- the walk ---- */

static int fail_unknown_key(struct loader *ld, const struct schema *s, const yaml_node_t *k)
{
	const char *keys[SCHEMA_FIELDS_MAX];
	char list[CONFIG_ERR_MAX];

	for (size_t i = 0; i < s->nfields; i++)
		keys[i] = s->fields[i].key;
	join_words(list, sizeof list, keys, s->nfields);
	return fail_at(ld, k->start_mark, "unknown key '%s' in %s (expected one of: %s)",
		       show(text_of(k)).s, s->what, list);
}

static int fail_duplicate(struct loader *ld, const struct schema *s, const yaml_node_t *map,
			  const yaml_node_t *k)
{
	const yaml_node_pair_t *p = map->data.mapping.pairs.start;

	while (!key_is(node_at(ld, p->key), text_of(k)))
		p++;
	return fail_at(ld, k->start_mark, "duplicate key '%s' in %s (first at line %zu)",
		       show(text_of(k)).s, s->what, node_at(ld, p->key)->start_mark.line + 1);
}

static int parse_mapping(struct loader *ld, const struct schema *s, yaml_node_t *map,
			 char *base)
{
	uint64_t seen = 0, given = 0; /* given: seen with a value */
	const yaml_node_pair_t *p;

	assert(map->type == YAML_MAPPING_NODE);
	assert(s->nfields <= SCHEMA_FIELDS_MAX);
	for (p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
		yaml_node_t *k = node_at(ld, p->key), *v = node_at(ld, p->value);
		const struct field *f;
		uint64_t bit;

		if (k->type != YAML_SCALAR_NODE)
			return fail_at(ld, k->start_mark, "keys in %s must be names, got %s",
				       s->what, kind_of(k));
		f = schema_field(s, k);
		if (!f)
			return fail_unknown_key(ld, s, k);
		bit = UINT64_C(1) << (f - s->fields);
		if (seen & bit)
			return fail_duplicate(ld, s, map, k);
		seen |= bit;
		if (is_null(v)) { /* "key:" with nothing after it */
			if (f->type->null_ok)
				continue;
			return fail_at(ld, k->start_mark, "'%s' needs a value (%s)", f->key,
				       f->type->expects);
		}
		given |= bit;
		if (f->type->parse(ld, f, v, base))
			return -1;
	}
	for (size_t i = 0; i < s->nfields; i++)
		if (s->fields[i].required && !(given & (UINT64_C(1) << i)))
			return fail_at(ld, map->start_mark, "missing '%s' in %s", s->fields[i].key,
				       s->what);
	return s->check ? s->check(ld, map, base) : 0;
}

/* Defaults: each field's def is read as if it had been written in the file. */
static int schema_init(struct loader *ld, const struct schema *s, char *base)
{
	for (size_t i = 0; i < s->nfields; i++) {
		const struct field *f = &s->fields[i];

		if (f->def) {
			yaml_node_t v = { .type = YAML_SCALAR_NODE };
			v.data.scalar.value = (yaml_char_t *)f->def;
			v.data.scalar.length = strlen(f->def);
			v.data.scalar.style = YAML_PLAIN_SCALAR_STYLE;
			if (f->type->parse(ld, f, &v, base))
				return -1;
		} else if (f->type == &type_map && schema_init(ld, f->spec, member(base, f))) {
			return -1;
		}
	}
	return 0;
}

static void schema_release(const struct schema *s, char *base)
{
	for (size_t i = 0; i < s->nfields; i++)
		if (s->fields[i].type->release)
			s->fields[i].type->release(&s->fields[i], base);
}

/* ---- the schemas ---- */

static const char *const log_levels[] = { "debug", "info", "warn", "error", NULL };
static const char *const routings[] = { "weighted", "latency", "cost", "priority", NULL };
static const char *const durabilities[] = { "batch", "strict", NULL };
static const char *const budget_periods[] = { "daily", "weekly", "monthly", "total", NULL };
static const char *const provider_kinds[] = {
	[PROVIDER_OPENAI] = "openai",
	[PROVIDER_ANTHROPIC] = "anthropic",
	[PROVIDER_OPENAI_COMPAT] = "openai-compatible",
	NULL,
};
static_assert(sizeof(enum provider_kind) == sizeof(uint32_t), "enums are stored as uint32_t");

static const char *const tokenizers[] = { "o200k_base", "cl100k_base", "estimate", NULL };
static const struct str_spec log_level_spec = { .oneof = log_levels };
static const struct str_spec tokenizer_spec = { .oneof = tokenizers };
static const struct str_spec routing_spec = { .oneof = routings };
static const struct str_spec durability_spec = { .oneof = durabilities };
static const struct str_spec budget_period_spec = { .oneof = budget_periods };
static const struct str_spec provider_ref = { .ref = REF_PROVIDER };
static const struct str_spec team_ref = { .ref = REF_TEAM };

/* Money bounds: micro-dollars of any budget or price must fit an int64 with room to spare. */
#define USD_MAX UINT64_C(1000000000000)
#define PRICE_MAX UINT64_C(1000000)

#define TIMEOUT(name, def_, min_)                                                           \
	FIELD(struct config_timeouts, name, #name, .type = &type_duration, .def = (def_),   \
	      .min = (min_))
static const struct field timeout_fields[] = {
	TIMEOUT(header_read, "10s", 1),
	TIMEOUT(body_read, "30s", 1),
	TIMEOUT(idle, "60s", 1),
	TIMEOUT(upstream_connect, "5s", 1),
	TIMEOUT(upstream_first_byte, "120s", 1),
	TIMEOUT(upstream_idle, "120s", 1),
	TIMEOUT(shutdown_grace, "30s", 0), /* 0: drop in-flight requests at once */
};
static const struct schema timeouts_schema = SCHEMA("timeouts", timeout_fields, NULL);

static const struct field limit_fields[] = {
	FIELD(struct config_limits, max_header_bytes, "max_header_bytes", .type = &type_size,
	      .def = "16KiB", .min = 1),
	FIELD(struct config_limits, max_headers, "max_headers", .type = &type_uint, .def = "100",
	      .min = 1, .max = 65535),
	FIELD(struct config_limits, max_body_bytes, "max_body_bytes", .type = &type_size,
	      .def = "8MiB", .min = 1),
	FIELD(struct config_limits, max_connections, "max_connections", .type = &type_uint,
	      .def = "16384", .min = 1),
};
static const struct schema limits_schema = SCHEMA("limits", limit_fields, NULL);

static const struct field admin_fields[] = {
	FIELD(struct config, admin_listen, "listen", .type = &type_addr, .def = "127.0.0.1:8081"),
	FIELD(struct config, admin_token, "token_env", .type = &type_secret, .spec = &secret_env),
	FIELD(struct config, admin_token, "token_file", .type = &type_secret,
	      .spec = &secret_file),
	FIELD(struct config, admin_token, "token", .type = &type_secret, .spec = &secret_value),
};
static const struct schema admin_schema = SCHEMA("admin", admin_fields, NULL);

/* The path goes into a request line: one absolute path, nothing that could end the line. */
static int check_health_check(struct loader *ld, yaml_node_t *map, char *base)
{
	const struct config_health_check *hc = (const struct config_health_check *)(void *)base;

	if (hc->path[0] != '/' || strpbrk(hc->path, " \t\r\n"))
		return fail_at(ld, map_get(ld, map, "path")->start_mark,
			       "bad value '%s' for 'path' (expected an absolute path such as "
			       "/v1/models)", show(hc->path).s);
	const yaml_node_t *at = map_get(ld, map, "timeout");
	if (hc->timeout > hc->interval)
		return fail_at(ld, (at ? at : map)->start_mark,
			       "'timeout' (%u ms) is longer than 'interval' (%u ms)", hc->timeout,
			       hc->interval);
	return 0;
}

static const struct field health_check_fields[] = {
	FIELD(struct config_health_check, path, "path", .type = &type_str, .required = true),
	FIELD(struct config_health_check, interval, "interval", .type = &type_duration,
	      .def = "10s", .min = 100, .max = 3600000),
	FIELD(struct config_health_check, timeout, "timeout", .type = &type_duration,
	      .def = "2s", .min = 10, .max = 60000),
};
static const struct schema health_check_schema =
	SCHEMA("health_check", health_check_fields, check_health_check);

static const struct field provider_fields[] = {
	FIELD(struct config_provider, name, "name", .type = &type_str, .required = true),
	FIELD(struct config_provider, kind, "kind", .type = &type_enum, .spec = provider_kinds,
	      .required = true),
	FIELD(struct config_provider, base_url, "base_url", .type = &type_base_url,
	      .required = true),
	FIELD(struct config_provider, api_key, "api_key_env", .type = &type_secret,
	      .spec = &secret_env),
	FIELD(struct config_provider, api_key, "api_key_file", .type = &type_secret,
	      .spec = &secret_file),
	FIELD(struct config_provider, api_key, "api_key", .type = &type_secret,
	      .spec = &secret_value),
	FIELD(struct config_provider, tls_verify, "tls_verify", .type = &type_bool, .def = "true"),
	FIELD(struct config_provider, ca_file, "ca_file", .type = &type_str),
	FIELD(struct config_provider, proxy, "proxy", .type = &type_proxy),
	FIELD(struct config_provider, api_version, "api_version", .type = &type_str),
	FIELD(struct config_provider, health_check, "health_check", .type = &type_map,
	      .spec = &health_check_schema),
};
static const struct schema provider_schema = SCHEMA("provider", provider_fields, NULL);

static const struct field price_fields[] = {
	FIELD(struct config_model, input_per_mtok, "input_per_mtok", .type = &type_decimal,
	      .max = PRICE_MAX),
	FIELD(struct config_model, output_per_mtok, "output_per_mtok", .type = &type_decimal,
	      .max = PRICE_MAX),
	FIELD(struct config_model, cached_input_per_mtok, "cached_input_per_mtok",
	      .type = &type_decimal, .max = PRICE_MAX),
};
static const struct schema price_schema = SCHEMA("price", price_fields, NULL);

static const struct field target_price_fields[] = {
	FIELD(struct config_target, input_per_mtok, "input_per_mtok", .type = &type_decimal,
	      .max = PRICE_MAX),
	FIELD(struct config_target, output_per_mtok, "output_per_mtok", .type = &type_decimal,
	      .max = PRICE_MAX),
};
static const struct schema target_price_schema = SCHEMA("price", target_price_fields, NULL);

static int check_target(struct loader *ld, yaml_node_t *map, char *base);

static const struct field target_fields[] = {
	FIELD(struct config_target, provider, "provider", .type = &type_str, .spec = &provider_ref,
	      .required = true),
	FIELD(struct config_target, model, "model", .type = &type_str, .required = true),
	FIELD(struct config_target, weight, "weight", .type = &type_uint, .def = "1",
	      .max = 1000000),
	{ .key = "price", .type = &type_map, .spec = &target_price_schema },
	FIELD(struct config_target, context_window, "context_window", .type = &type_uint),
};
static const struct schema target_schema = SCHEMA("target", target_fields, check_target);

/* A target's own price, when given, replaces the model's (cost routing reads it). */
static int check_target(struct loader *ld, yaml_node_t *map, char *base)
{
	struct config_target *t = (struct config_target *)(void *)base;

	t->priced = map_get(ld, map, "price") != NULL;
	return 0;
}

static const struct list_spec targets_spec = {
	.item = &target_schema,
	.item_size = sizeof(struct config_target),
	.count_offset = offsetof(struct config_model, ntargets),
	.min_items = 1,
};
static const struct names_spec fallback_spec = {
	.count_offset = offsetof(struct config_model, nfallback),
	.ref = REF_MODEL,
};

static int check_model(struct loader *ld, yaml_node_t *map, char *base);

static const struct field model_fields[] = {
	FIELD(struct config_model, name, "name", .type = &type_str, .required = true),
	{ .key = "price", .type = &type_map, .spec = &price_schema },
	FIELD(struct config_model, routing, "routing", .type = &type_str, .spec = &routing_spec,
	      .def = "weighted"),
	FIELD(struct config_model, targets, "targets", .type = &type_list, .spec = &targets_spec,
	      .required = true),
	FIELD(struct config_model, fallback, "fallback", .type = &type_names,
	      .spec = &fallback_spec),
	FIELD(struct config_model, context_window, "context_window", .type = &type_uint),
	FIELD(struct config_model, max_tokens, "max_tokens", .type = &type_uint),
	FIELD(struct config_model, tokenizer, "tokenizer", .type = &type_str,
	      .spec = &tokenizer_spec),
};
static const struct schema model_schema = SCHEMA("model", model_fields, check_model);

/* A model may not fall back to itself; other names are checked with the pending refs. */
static int check_model(struct loader *ld, yaml_node_t *map, char *base)
{
	const struct config_model *m = (const struct config_model *)(const void *)base;

	for (size_t i = 0; i < m->nfallback; i++) {
		if (strcmp(m->fallback[i], m->name) != 0)
			continue;
		return fail_at(ld, seq_get(ld, map_get(ld, map, "fallback"), i)->start_mark,
			       "model '%s' lists itself as a fallback", show(m->name).s);
	}
	return 0;
}

static const struct field team_limit_fields[] = {
	FIELD(struct config_team, rpm, "rpm", .type = &type_uint),
	FIELD(struct config_team, tpm, "tpm", .type = &type_uint),
};
static const struct schema team_limits_schema = SCHEMA("team limits", team_limit_fields, NULL);

static const struct field budget_fields[] = {
	FIELD(struct config_team, budget_usd, "usd", .type = &type_decimal, .max = USD_MAX,
	      .required = true),
	FIELD(struct config_team, budget_period, "period", .type = &type_str,
	      .spec = &budget_period_spec, .def = "monthly"),
};
static const struct schema budget_schema = SCHEMA("budget", budget_fields, NULL);

static const struct names_spec team_models_spec = {
	.count_offset = offsetof(struct config_team, nmodels),
	.ref = REF_MODEL,
	.allow_star = true,
};

static const struct field team_fields[] = {
	FIELD(struct config_team, name, "name", .type = &type_str, .required = true),
	FIELD(struct config_team, models, "models", .type = &type_names,
	      .spec = &team_models_spec),
	{ .key = "limits", .type = &type_map, .spec = &team_limits_schema },
	{ .key = "budget", .type = &type_map, .spec = &budget_schema },
	FIELD(struct config_team, audit_bodies, "audit_bodies", .type = &type_bool,
	      .def = "false"),
};
static const struct schema team_schema = SCHEMA("team", team_fields, NULL);

static int check_key(struct loader *ld, yaml_node_t *map, char *base);

static const struct field key_fields[] = {
	FIELD(struct config_key, name, "name", .type = &type_str, .required = true),
	FIELD(struct config_key, team, "team", .type = &type_str, .spec = &team_ref),
	FIELD(struct config_key, key, "key_env", .type = &type_secret, .spec = &secret_env),
	FIELD(struct config_key, key, "key_file", .type = &type_secret, .spec = &secret_file),
	FIELD(struct config_key, key, "key", .type = &type_secret, .spec = &secret_value),
};
static const struct schema key_schema = SCHEMA("key", key_fields, check_key);

/* A bootstrap key without its secret could never be used. */
static int check_key(struct loader *ld, yaml_node_t *map, char *base)
{
	const struct config_key *k = (const struct config_key *)(const void *)base;

	if (k->key.env || k->key.file || k->key.value)
		return 0;
	return fail_at(ld, map->start_mark, "key '%s' needs one of key_env, key_file or key",
		       show(k->name).s);
}

static const struct field audit_fields[] = {
	FIELD(struct config, audit.enabled, "enabled", .type = &type_bool, .def = "true"),
	FIELD(struct config, audit.durability, "durability", .type = &type_str,
	      .spec = &durability_spec, .def = "batch"),
	FIELD(struct config, audit.retention_days, "retention_days", .type = &type_uint,
	      .def = "90", .max = 100 * 366),
	/* tests drive retention in seconds, not days (docs/audit.md) */
	FIELD(struct config, audit.test_retention_ms, "test_retention_ms", .type = &type_uint,
	      .def = "0", .max = 86400000),
	/* a record with both bodies must fit one store value (1 MiB) */
	FIELD(struct config, audit.body_max_bytes, "body_max_bytes", .type = &type_size,
	      .def = "16KiB", .min = 64, .max = 512000),
};
static const struct schema audit_schema = SCHEMA("audit", audit_fields, NULL);

static int check_access_log(struct loader *ld, yaml_node_t *map, char *base);

static const struct field access_log_fields[] = {
	FIELD(struct config, access_log.destination, "destination", .type = &type_str,
	      .def = "stdout"),
};
static const struct schema access_log_schema =
	SCHEMA("access_log", access_log_fields, check_access_log);

/* A relative path would depend on the directory the daemon happens to start in. */
static int check_access_log(struct loader *ld, yaml_node_t *map, char *base)
{
	const struct config *cfg = (const struct config *)(const void *)base;
	const char *d = cfg->access_log.destination;

	if (strcmp(d, "stdout") == 0 || strcmp(d, "off") == 0 || d[0] == '/')
		return 0;
	return fail_at(ld, map_get(ld, map, "destination")->start_mark,
		       "bad value '%s' for 'destination' (expected stdout, off or an absolute "
		       "file path)", show(d).s);
}

#define LIST_OF(T, item_schema, count, min)                                                 \
	{ .item = &(item_schema), .item_size = sizeof(T),                                   \
	  .count_offset = offsetof(struct config, count), .min_items = (min),               \
	  .unique_key = "name" }
static const struct list_spec providers_spec =
	LIST_OF(struct config_provider, provider_schema, nproviders, 0);
static const struct list_spec models_spec = LIST_OF(struct config_model, model_schema, nmodels, 0);
static const struct list_spec teams_spec = LIST_OF(struct config_team, team_schema, nteams, 0);
static const struct list_spec keys_spec = LIST_OF(struct config_key, key_schema, nkeys, 0);

static const struct names_spec forward_headers_spec = {
	.count_offset = offsetof(struct config, nforward_headers),
};

static const struct statuses_spec on_status_spec = {
	.count_offset = offsetof(struct config_retry, non_status),
};

static const struct field retry_fields[] = {
	FIELD(struct config_retry, attempts, "attempts", .type = &type_uint, .def = "3", .min = 1,
	      .max = 8),
	FIELD(struct config_retry, backoff_base, "backoff_base", .type = &type_duration,
	      .def = "25ms", .max = 60000),
	FIELD(struct config_retry, backoff_cap, "backoff_cap", .type = &type_duration, .def = "1s",
	      .max = 600000),
	FIELD(struct config_retry, deadline, "deadline", .type = &type_duration, .def = "60s",
	      .min = 1),
	FIELD(struct config_retry, on_status, "on_status", .type = &type_statuses,
	      .spec = &on_status_spec, .def = "429 500 502 503 504 529"),
};
static const struct schema retry_schema = SCHEMA("retry", retry_fields, NULL);

static const struct field breaker_fields[] = {
	FIELD(struct config_breaker, failures, "failures", .type = &type_uint, .def = "5",
	      .max = 1000000),
	FIELD(struct config_breaker, cooldown, "cooldown", .type = &type_duration, .def = "10s",
	      .min = 1),
	FIELD(struct config_breaker, error_rate, "error_rate", .type = &type_uint, .def = "50",
	      .max = 100),
	FIELD(struct config_breaker, min_requests, "min_requests", .type = &type_uint,
	      .def = "20", .min = 1, .max = 1000000),
	/* at least 10 ms: a tenth of it is the bucket the window slides by */
	FIELD(struct config_breaker, window, "window", .type = &type_duration, .def = "10s",
	      .min = 10, .max = 3600000),
};
static const struct schema breaker_schema = SCHEMA("breaker", breaker_fields, NULL);

static const struct field latency_fields[] = {
	FIELD(struct config_latency, decay, "decay", .type = &type_duration, .def = "5s",
	      .min = 1),
	FIELD(struct config_latency, explore_percent, "explore_percent", .type = &type_uint,
	      .def = "5", .max = 50),
};
static const struct schema latency_schema = SCHEMA("latency", latency_fields, NULL);

static const struct field top_fields[] = {
	FIELD(struct config, listen, "listen", .type = &type_addr, .def = "127.0.0.1:8080"),
	{ .key = "admin", .type = &type_map, .spec = &admin_schema },
	FIELD(struct config, workers, "workers", .type = &type_uint, .spec = "auto",
	      .def = "auto", .min = 1, .max = 1024),
	FIELD(struct config, busy_poll_us, "busy_poll_us", .type = &type_uint, .def = "0",
	      .max = 10000),
	FIELD(struct config, data_dir, "data_dir", .type = &type_str, .def = "/var/lib/penstock"),
	FIELD(struct config, tokenizer_dir, "tokenizer_dir", .type = &type_str,
	      .def = "/usr/share/penstock/tokenizers"),
	FIELD(struct config, log_level, "log_level", .type = &type_str, .spec = &log_level_spec,
	      .def = "info"),
	FIELD(struct config, timeouts, "timeouts", .type = &type_map, .spec = &timeouts_schema),
	FIELD(struct config, limits, "limits", .type = &type_map, .spec = &limits_schema),
	FIELD(struct config, retry, "retry", .type = &type_map, .spec = &retry_schema),
	FIELD(struct config, breaker, "breaker", .type = &type_map, .spec = &breaker_schema),
	FIELD(struct config, latency, "latency", .type = &type_map, .spec = &latency_schema),
	FIELD(struct config, providers, "providers", .type = &type_list, .spec = &providers_spec),
	FIELD(struct config, models, "models", .type = &type_list, .spec = &models_spec),
	FIELD(struct config, teams, "teams", .type = &type_list, .spec = &teams_spec),
	FIELD(struct config, keys, "keys", .type = &type_list, .spec = &keys_spec),
	{ .key = "audit", .type = &type_map, .spec = &audit_schema },
	{ .key = "access_log", .type = &type_map, .spec = &access_log_schema },
	FIELD(struct config, forward_headers, "forward_headers", .type = &type_names,
	      .spec = &forward_headers_spec),
	FIELD(struct config, egress_proxy, "egress_proxy", .type = &type_proxy),
};
static const struct schema top_schema = SCHEMA("top level", top_fields, NULL);

/* ---- references, checked once the whole file is in ---- */

static const struct config_team *find_team(const struct config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->nteams; i++)
		if (strcmp(cfg->teams[i].name, name) == 0)
			return &cfg->teams[i];
	return NULL;
}

static int resolve_refs(struct loader *ld)
{
	const struct config *cfg = ld->cfg;

	for (size_t i = 0; i < ld->nrefs; i++) {
		const struct pending_ref *r = &ld->refs[i];
		const char *what = NULL, *section = NULL;

		switch (r->kind) {
		case REF_PROVIDER:
			if (!config_find_provider(cfg, r->name))
				what = "provider", section = "providers";
			break;
		case REF_MODEL:
			if (!config_find_model(cfg, r->name))
				what = "model", section = "models";
			break;
		case REF_TEAM: /* teams are optional; keys name them only once there are some */
			if (cfg->nteams && !find_team(cfg, r->name))
				what = "team", section = "teams";
			break;
		case REF_NONE:
			assert(!"pending ref without a kind");
		}
		if (what)
			return fail_at(ld, r->mark, "unknown %s '%s' (not defined under %s)", what,
				       show(r->name).s, section);
	}
	return 0;
}

/* ---- loading ---- */

/* Reader errors (bad UTF-8, control bytes) come with a byte offset only. */
static yaml_mark_t mark_of_offset(const struct loader *ld, size_t offset)
{
	yaml_mark_t m = { .index = offset };

	for (size_t i = 0; i < offset && i < ld->len; i++) {
		if (ld->text[i] == '\n')
			m.line++, m.column = 0;
		else if (((unsigned char)ld->text[i] & 0xc0) != 0x80) /* count characters */
			m.column++;
	}
	return m;
}

static int fail_yaml(struct loader *ld, const yaml_parser_t *p)
{
	const char *problem = p->problem ? p->problem : "malformed YAML";

	switch (p->error) {
	case YAML_MEMORY_ERROR:
		return fail_oom(ld, p->problem_mark);
	case YAML_READER_ERROR:
		return fail_at(ld, mark_of_offset(ld, p->problem_offset), "%s", problem);
	default:
		break;
	}
	if (p->context)
		return fail_at(ld, p->problem_mark, "%s: %s", p->context, problem);
	return fail_at(ld, p->problem_mark, "%s", problem);
}

static int parse_root(struct loader *ld, yaml_node_t *root)
{
	if (!root || is_null(root)) /* an empty file, or a lone "---": all defaults */
		return 0;
	if (root->type != YAML_MAPPING_NODE)
		return fail_at(ld, root->start_mark, "the top level must be a mapping, got %s",
			       kind_of(root));
	if (parse_mapping(ld, &top_schema, root, (char *)ld->cfg))
		return -1;
	return resolve_refs(ld);
}

static int load_yaml(struct loader *ld)
{
	yaml_parser_t parser;
	yaml_document_t doc, extra;
	int rc;

	if (!yaml_parser_initialize(&parser))
		return fail_oom(ld, (yaml_mark_t){ 0 });
	yaml_parser_set_input_string(&parser, (const unsigned char *)ld->text, ld->len);
	if (!yaml_parser_load(&parser, &doc)) { /* libyaml has freed the document */
		rc = fail_yaml(ld, &parser);
		goto out_parser;
	}
	/* the rest of the stream must be empty: a second document is a mistake, not ignored */
	if (!yaml_parser_load(&parser, &extra)) {
		rc = fail_yaml(ld, &parser);
		goto out_doc;
	}
	if (yaml_document_get_root_node(&extra)) {
		rc = fail_at(ld, extra.start_mark, "only one YAML document is allowed");
	} else {
		ld->doc = &doc;
		rc = parse_root(ld, yaml_document_get_root_node(&doc));
		ld->doc = NULL;
	}
	yaml_document_delete(&extra);
out_doc:
	yaml_document_delete(&doc);
out_parser:
	yaml_parser_delete(&parser);
	return rc;
}

int config_load_string(const char *yaml, size_t len, const char *name, struct config *cfg,
		       char *err, size_t errlen)
{
	struct loader ld = {
		.file = name ? name : "<embedded>",
		.text = yaml ? yaml : "",
		.len = yaml ? len : 0,
		.cfg = cfg,
		.err = err,
		.errlen = errlen,
	};
	int rc = -1;

	memset(cfg, 0, sizeof *cfg);
	if (errlen)
		err[0] = '\0';
	cfg->path = strdup(ld.file);
	if (!cfg->path)
		fail_oom(&ld, (yaml_mark_t){ 0 });
	else if (schema_init(&ld, &top_schema, (char *)cfg) == 0)
		rc = load_yaml(&ld);
	free(ld.refs);
	if (rc)
		config_free(cfg);
	return rc;
}

/* Whole file into a NUL-terminated buffer; 0, or -errno (-EFBIG past max bytes). */
static int read_whole(const char *path, size_t max, char **out, size_t *len)
{
	size_t cap = 4096, n = 0;
	char *buf = NULL;
	int fd, rc = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	for (;;) {
		ssize_t r;
		if (!buf || n == cap) {
			char *grown;
			if (buf)
				cap *= 2;
			grown = realloc(buf, cap + 1);
			if (!grown) {
				rc = -ENOMEM;
				break;
			}
			buf = grown;
		}
		r = read(fd, buf + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = -errno;
			break;
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (n > max) {
			rc = -EFBIG;
			break;
		}
	}
	close(fd);
	if (rc) {
		if (buf)
			explicit_bzero(buf, n); /* it may have been a secret */
		free(buf);
		return rc;
	}
	buf[n] = '\0';
	*out = buf;
	*len = n;
	return 0;
}

int config_load_file(const char *path, struct config *cfg, char *err, size_t errlen)
{
	char *text = NULL;
	size_t len = 0;
	int rc;

	memset(cfg, 0, sizeof *cfg);
	rc = read_whole(path, CONFIG_FILE_MAX, &text, &len);
	if (rc == -EFBIG) {
		say(err, errlen, "%s: config file is larger than %zu MiB", path,
		    CONFIG_FILE_MAX >> 20);
		return -1;
	}
	if (rc) {
		say(err, errlen, "%s: cannot read config: %s", path, strerror(-rc));
		return -1;
	}
	rc = config_load_string(text, len, path, cfg, err, errlen);
	free(text);
	return rc;
}

void config_free(struct config *cfg)
{
	if (!cfg)
		return;
	schema_release(&top_schema, (char *)cfg);
	free(cfg->path);
	memset(cfg, 0, sizeof *cfg);
}

/* ---- secrets at run time ---- */

static char *secret_from_env(const char *name, char *err, size_t errlen)
{
	const char *v = getenv(name);
	char *copy;

	if (!v) {
		say(err, errlen, "environment variable %s is not set", name);
		return NULL;
	}
	if (!*v) {
		say(err, errlen, "environment variable %s is empty", name);
		return NULL;
	}
	copy = strdup(v);
	if (!copy)
		say(err, errlen, "out of memory reading environment variable %s", name);
	return copy;
}

static char *secret_from_file(const char *path, char *err, size_t errlen)
{
	char *buf = NULL;
	size_t n = 0;
	int rc = read_whole(path, SECRET_FILE_MAX, &buf, &n);

	if (rc == -EFBIG) {
		say(err, errlen, "secret file %s is larger than %zu KiB", path,
		    SECRET_FILE_MAX >> 10);
		return NULL;
	}
	if (rc) {
		say(err, errlen, "cannot read secret file %s: %s", path, strerror(-rc));
		return NULL;
	}
	/* editors and `echo` leave a trailing newline that is not part of the secret */
	while (n && strchr(" \t\r\n", buf[n - 1]))
		buf[--n] = '\0';
	if (n == 0 || strlen(buf) != n) {
		say(err, errlen, "secret file %s %s", path,
		    n ? "contains a NUL byte" : "is empty");
		explicit_bzero(buf, n);
		free(buf);
		return NULL;
	}
	return buf;
}

char *config_resolve_secret(const struct config_secret *s, char *err, size_t errlen)
{
	char *v;

	if (errlen)
		err[0] = '\0';
	if (s->env)
		return secret_from_env(s->env, err, errlen);
	if (s->file)
		return secret_from_file(s->file, err, errlen);
	if (!s->value)
		return NULL;
	v = strdup(s->value);
	if (!v)
		say(err, errlen, "out of memory");
	return v;
}

const struct config_provider *config_find_provider(const struct config *cfg, const char *name)
{
	for (size_t i = 0; name && i < cfg->nproviders; i++)
		if (strcmp(cfg->providers[i].name, name) == 0)
			return &cfg->providers[i];
	return NULL;
}

const struct config_model *config_find_model(const struct config *cfg, const char *name)
{
	for (size_t i = 0; name && i < cfg->nmodels; i++)
		if (strcmp(cfg->models[i].name, name) == 0)
			return &cfg->models[i];
	return NULL;
}

const struct config_proxy *config_provider_proxy(const struct config *cfg,
						 const struct config_provider *cp)
{
	if (!cp->tls)
		return NULL;
	const struct config_proxy *px = cp->proxy.url ? &cp->proxy : &cfg->egress_proxy;
	return px->url ? px : NULL;
}

void config_hostport(char *out, size_t cap, const char *host, uint16_t port, bool omit_port)
{
	bool v6 = strchr(host, ':') != NULL;
	if (omit_port)
		snprintf(out, cap, v6 ? "[%s]" : "%s", host);
	else
		snprintf(out, cap, v6 ? "[%s]:%u" : "%s:%u", host, port);
}

void config_provider_authority(const struct config_provider *cp, char *out, size_t cap)
{
	config_hostport(out, cap, cp->host, cp->port, cp->port == (cp->tls ? 443 : 80));
}
