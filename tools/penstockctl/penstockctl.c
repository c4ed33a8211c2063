/* penstockctl.c - the operator's command line: keys through the admin API (a small
 * blocking HTTP/1.1 client), spend reports straight from the LMDB store (read-only, while
 * the gateway runs) or, with --via-admin, through the admin API; the audit trail (query,
 * export, verify) from the store, streamed in short reads.
 *
 * Exit codes: 0 done; 1 the operation failed (the gateway said no, the store could not be
 * read); 2 bad usage; 3 the admin API could not be reached.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/mem.h>

#include "core/buf.h"
#include "core/log.h"
#include "policy/audit.h"
#include "policy/report.h"
#include "policy/store.h"

#define EXIT_FAIL 1
#define EXIT_USAGE 2
#define EXIT_UNREACHABLE 3

#define DEFAULT_ADMIN "http://127.0.0.1:8081"
#define DEFAULT_DATA_DIR "/var/lib/penstock"
#define DEFAULT_ENV_FILE "/etc/penstock/penstock.env" /* the package's; mode 0600 */
#define TOKEN_ENV "PENSTOCK_ADMIN_TOKEN"
#define HTTP_TIMEOUT_S 30
#define HTTP_RESPONSE_MAX (64u << 20)
#define TOKEN_MAX 4096
#define MODELS_MAX 256
#define AUDIT_CHUNK 1000         /* records looked at per read transaction */
#define AUDIT_OUT_MAX (64u << 20) /* one chunk's output, bounded */
#define AUDIT_FLUSH_AT (4u << 20)  /* output written out early from this much */
#define AUDIT_QUERY_LIMIT 1000   /* query's default --limit */

struct opts {
	const char *admin, *token_file, *data_dir, *env_file;
	bool json, via_admin;
	/* keys create */
	const char *name, *team, *budget_period, *expires_in, *expires_at, *budget_usd;
	const char *models[MODELS_MAX];
	size_t nmodels;
	long long rpm, tpm; /* -1: not given */
	/* spend; audit */
	const char *by, *since, *until;
	/* audit */
	const char *key, *status, *format;
	long long limit; /* -1: not given */
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: penstockctl [options] COMMAND\n"
		"\n"
		"commands (through the admin API):\n"
		"  keys create --name N [--team T] [--model M]... [--rpm N] [--tpm N]\n"
		"              [--budget-usd X [--budget-period daily|weekly|monthly|total]]\n"
		"              [--expires-in 30d | --expires-at 2030-01-31T00:00:00Z]\n"
		"                         issue a key; its secret is printed once, on stdout\n"
		"  keys list              every key (never secrets)\n"
		"  keys show ID\n"
		"  keys revoke ID         every worker refuses the key when this returns\n"
		"  teams                  teams, limits and budget status\n"
		"  alerts                 budget alerts fired this period\n"
		"  reload                 the gateway reads its config file again and applies it,\n"
		"                         or says why not (exit 1; the running config stays)\n"
		"commands (reading the store in --data-dir directly, unless --via-admin):\n"
		"  spend --by team|key|model [--since YYYY-MM-DD] [--until YYYY-MM-DD]\n"
		"  audit query [FILTERS] [--limit N]   matching records, newest last (default\n"
		"                         limit 1000; --json: one JSON object a line)\n"
		"  audit export --format jsonl|csv [FILTERS]   every matching record, streamed\n"
		"  audit verify           walk the hash chain; exit 1 at the first broken link\n"
		"    FILTERS: --since T --until T (YYYY-MM-DD, RFC 3339 or UTC ns; by commit time)\n"
		"             --key ID --team T --model M --status 429|4xx\n"
		"\n"
		"options:\n"
		"  --admin URL        admin API (default " DEFAULT_ADMIN ")\n"
		"  --token-file FILE  admin token (default: $" TOKEN_ENV ", else its line in\n"
		"                     " DEFAULT_ENV_FILE " when readable)\n"
		"  --data-dir DIR     the gateway's data_dir (default " DEFAULT_DATA_DIR ")\n"
		"  --via-admin        spend: ask the admin API instead of reading the store\n"
		"  --json             print the JSON documents instead of tables\n"
		"\n"
		"exit: 0 done, 1 failed, 2 usage, 3 admin API unreachable\n");
}

/* ---------------------------------------------------------------- the admin token */

static char *trim_line(char *s)
{
	s[strcspn(s, "\r\n")] = 0;
	size_t n = strlen(s);
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		s[--n] = 0;
	while (*s == ' ' || *s == '\t')
		s++;
	return s;
}

/* The file's first line (token_file), or the value of the TOKEN_ENV= line (env_file). */
static char *token_from_file(const char *path, bool env_file, bool quiet)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		if (!quiet)
			fprintf(stderr, "penstockctl: %s: %s\n", path, strerror(errno));
		return NULL;
	}
	char line[TOKEN_MAX];
	char *found = NULL;
	while (!found && fgets(line, sizeof(line), f)) {
		char *s = trim_line(line);
		if (!env_file) {
			found = strdup(s);
		} else if (strncmp(s, TOKEN_ENV "=", strlen(TOKEN_ENV) + 1) == 0) {
			s += strlen(TOKEN_ENV) + 1;
			size_t n = strlen(s);
			if (n >= 2 && (s[0] == '"' || s[0] == '\'') && s[n - 1] == s[0]) {
				s[n - 1] = 0;
				s++;
			}
			found = strdup(s);
		}
	}
	OPENSSL_cleanse(line, sizeof(line));
	fclose(f);
	if (found && !found[0]) {
		free(found);
		found = NULL;
	}
	return found;
}

static char *admin_token(const struct opts *o)
{
	if (o->token_file)
		return token_from_file(o->token_file, false, false);
	const char *env = getenv(TOKEN_ENV);
	if (env && env[0])
		return strdup(env);
	if (o->env_file)
		return token_from_file(o->env_file, true, true);
	return NULL;
}

/* ---------------------------------------------------------------- HTTP/1.1 client */

struct url {
	char host[256];
	char port[8];
	char prefix[512]; /* path before /admin/..., without a trailing '/' */
};

static bool url_parse(const char *s, struct url *u)
{
	if (strncmp(s, "http://", 7) != 0)
		return false;
	s += 7;
	const char *path = s + strcspn(s, "/");
	const char *host_end = path, *port = NULL;
	if (*s == '[') {
		const char *rb = memchr(s, ']', (size_t)(path - s));
		if (!rb)
			return false;
		port = rb[1] == ':' ? rb + 2 : NULL;
		s++;
		host_end = rb;
	} else {
		const char *colon = memchr(s, ':', (size_t)(path - s));
		if (colon) {
			host_end = colon;
			port = colon + 1;
		}
	}
	size_t hn = (size_t)(host_end - s), pn = port ? (size_t)(path - port) : 0;
	if (!hn || hn >= sizeof(u->host) || (port && (!pn || pn >= sizeof(u->port))) ||
	    strlen(path) >= sizeof(u->prefix))
		return false;
	memcpy(u->host, s, hn);
	u->host[hn] = 0;
	if (port) {
		memcpy(u->port, port, pn);
		u->port[pn] = 0;
	} else {
		strcpy(u->port, "80");
	}
	strcpy(u->prefix, path);
	size_t n = strlen(u->prefix);
	while (n && u->prefix[n - 1] == '/')
		u->prefix[--n] = 0;
	return true;
}

static int connect_to(const struct url *u, char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai;
	int rc = getaddrinfo(u->host, u->port, &hints, &ai);
	if (rc) {
		snprintf(err, errlen, "%s: %s", u->host, gai_strerror(rc));
		return -1;
	}
	int fd = -1;
	for (struct addrinfo *p = ai; p && fd < 0; p = p->ai_next) {
		fd = socket(p->ai_family, p->ai_socktype | SOCK_CLOEXEC, p->ai_protocol);
		if (fd < 0)
			continue;
		/* connect, send and recv all give up after the timeout: nothing here waits forever */
		struct timeval tv = { .tv_sec = HTTP_TIMEOUT_S };
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		if (connect(fd, p->ai_addr, p->ai_addrlen) != 0) {
			snprintf(err, errlen, "cannot connect to %s:%s: %s", u->host, u->port,
				 strerror(errno));
			close(fd);
			fd = -1;
		}
	}
	freeaddrinfo(ai);
	return fd;
}

struct response {
	int status;
	struct buf body;
};

static bool send_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return false;
		p += k;
		n -= (size_t)k;
	}
	return true;
}

/* The whole body of a chunked response in place. false if malformed. */
static bool dechunk(struct buf *b)
{
	size_t in = 0, out = 0;
	for (;;) {
		char *end;
		if (in >= b->len)
			return false;
		unsigned long n = strtoul(b->p + in, &end, 16);
		char *crlf = memmem(b->p + in, b->len - in, "\r\n", 2);
		if (!crlf || end == b->p + in || n > b->len)
			return false;
		in = (size_t)(crlf - b->p) + 2;
		if (n == 0)
			break;
		if (b->len - in < n + 2)
			return false;
		memmove(b->p + out, b->p + in, n);
		out += n;
		in += n + 2;
	}
	b->len = out;
	return true;
}

/* One request, one response (Connection: close). 0, or EXIT_UNREACHABLE with err. */
static int http(const struct opts *o, const char *token, const char *method, const char *path,
		const char *body, struct response *res, char *err, size_t errlen)
{
	struct url u;
	*res = (struct response){ 0 };
	if (!url_parse(o->admin, &u)) {
		snprintf(err, errlen, "--admin %s: expected http://HOST[:PORT]", o->admin);
		return EXIT_USAGE;
	}
	int fd = connect_to(&u, err, errlen);
	if (fd < 0)
		return EXIT_UNREACHABLE;
	struct buf req = { 0 };
	char head[2048];
	size_t blen = body ? strlen(body) : 0;
	int hn = snprintf(head, sizeof(head),
			  "%s %s%s HTTP/1.1\r\nHost: %s:%s\r\nUser-Agent: penstockctl\r\n"
			  "Accept: application/json\r\nConnection: close\r\n"
			  "Content-Type: application/json\r\nContent-Length: %zu\r\n",
			  method, u.prefix, path, u.host, u.port, blen);
	bool ok = hn > 0 && (size_t)hn < sizeof(head) &&
		  buf_append(&req, head, (size_t)hn, SIZE_MAX);
	if (token) {
		ok = ok && buf_append(&req, "Authorization: Bearer ", 22, SIZE_MAX) &&
		     buf_append(&req, token, strlen(token), SIZE_MAX);
		ok = ok && buf_append(&req, "\r\n", 2, SIZE_MAX);
	}
	ok = ok && buf_append(&req, "\r\n", 2, SIZE_MAX) && buf_append(&req, body, blen, SIZE_MAX);
	ok = ok && send_all(fd, req.p, req.len);
	if (req.p)
		OPENSSL_cleanse(req.p, req.len);
	buf_free(&req);
	if (!ok) {
		snprintf(err, errlen, "sending to %s:%s: %s", u.host, u.port, strerror(errno));
		close(fd);
		return EXIT_UNREACHABLE;
	}
	struct buf in = { 0 };
	for (;;) {
		if (!buf_reserve(&in, 65536, HTTP_RESPONSE_MAX)) {
			snprintf(err, errlen, "the response is over %u MiB", HTTP_RESPONSE_MAX >> 20);
			close(fd);
			buf_free(&in);
			return EXIT_FAIL;
		}
		ssize_t k = recv(fd, in.p + in.len, in.cap - in.len, 0);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			snprintf(err, errlen, "reading from %s:%s: %s", u.host, u.port,
				 errno == EAGAIN ? "timed out" : strerror(errno));
			close(fd);
			buf_free(&in);
			return EXIT_UNREACHABLE;
		}
		if (k == 0)
			break;
		in.len += (size_t)k;
	}
	close(fd);
	char *end = in.p ? memmem(in.p, in.len, "\r\n\r\n", 4) : NULL;
	if (!end || in.len < 12 || strncmp(in.p, "HTTP/1.", 7) != 0) {
		snprintf(err, errlen, "%s:%s did not answer in HTTP/1.1", u.host, u.port);
		buf_free(&in);
		return EXIT_UNREACHABLE;
	}
	res->status = atoi(in.p + 9);
	*end = 0;
	bool chunked = false;
	long long clen = -1;
	for (char *line = strstr(in.p, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
		const char *h = line + 2;
		if (strncasecmp(h, "content-length:", 15) == 0)
			clen = atoll(h + 15);
		else if (strncasecmp(h, "transfer-encoding:", 18) == 0 && strcasestr(h, "chunked"))
			chunked = true;
	}
	size_t off = (size_t)(end + 4 - in.p);
	memmove(in.p, in.p + off, in.len - off);
	in.len -= off;
	if (chunked && !dechunk(&in)) {
		snprintf(err, errlen, "a malformed chunked response");
		buf_free(&in);
		return EXIT_FAIL;
	}
	if (!chunked && clen >= 0 && (size_t)clen < in.len)
		in.len = (size_t)clen;
	if (!chunked && clen >= 0 && (size_t)clen > in.len) {
		snprintf(err, errlen, "the response was cut short");
		buf_free(&in);
		return EXIT_UNREACHABLE;
	}
	res->body = in;
	return 0;
}

/* Call the admin API; print the error and return an exit code unless it answered 2xx with
 * JSON (then 0 and *doc). */
static int api(const struct opts *o, const char *method, const char *path, const char *body,
	       json_t **doc)
{
	char *token = admin_token(o);
	if (!token) {
		fprintf(stderr, "penstockctl: no admin token: set %s or give --token-file\n",
			TOKEN_ENV);
		return EXIT_USAGE;
	}
	struct response res;
	char err[512];
	int rc = http(o, token, method, path, body, &res, err, sizeof(err));
	OPENSSL_cleanse(token, strlen(token));
	free(token);
	if (rc) {
		fprintf(stderr, "penstockctl: %s\n", err);
		return rc;
	}
	json_error_t jerr;
	*doc = json_loadb(res.body.p ? res.body.p : "", res.body.len, 0, &jerr);
	if (res.body.p)
		OPENSSL_cleanse(res.body.p, res.body.len); /* a created key's secret */
	buf_free(&res.body);
	if (res.status / 100 == 2 && *doc)
		return 0;
	const char *msg = json_string_value(json_object_get(json_object_get(*doc, "error"),
							    "message"));
	fprintf(stderr, "penstockctl: %s (HTTP %d)\n", msg ? msg : "unexpected answer",
		res.status);
	json_decref(*doc);
	*doc = NULL;
	return EXIT_FAIL;
}

/* ---------------------------------------------------------------- printing */

static void print_json(json_t *doc)
{
	char *s = json_dumps(doc, JSON_INDENT(2) | JSON_REAL_PRECISION(15));
	if (s) {
		puts(s);
		free(s);
	}
}

static const char *str(json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));
	return s ? s : "-";
}

/* micro-dollars as dollars with six decimals, exactly */
static void usd(char *out, size_t n, json_int_t micro)
{
	json_int_t a = micro < 0 ? -micro : micro;
	snprintf(out, n, "%s%lld.%06lld", micro < 0 ? "-" : "", (long long)(a / 1000000),
		 (long long)(a % 1000000));
}

static void limits_text(char *out, size_t n, json_t *key)
{
	json_t *l = json_object_get(key, "limits");
	json_t *rpm = json_object_get(l, "rpm"), *tpm = json_object_get(l, "tpm");
	char b[64] = "";
	json_t *budget = json_object_get(key, "budget");
	if (json_is_object(budget)) {
		char u[32];
		usd(u, sizeof(u), json_integer_value(json_object_get(budget, "limit_micro_usd")));
		snprintf(b, sizeof(b), " $%s/%s", u, str(budget, "period"));
	}
	snprintf(out, n, "%s%lld%s%lld%s", rpm ? "rpm " : "", (long long)json_integer_value(rpm),
		 tpm ? " tpm " : "", (long long)json_integer_value(tpm), b);
	if (!rpm && !tpm)
		snprintf(out, n, "%s", b[0] ? b + 1 : "-");
}

static void print_key_row(json_t *k)
{
	const char *status = json_is_true(json_object_get(k, "revoked")) ? "revoked"
			     : json_is_true(json_object_get(k, "expired")) ? "expired"
									: "active";
	char lim[128];
	limits_text(lim, sizeof(lim), k);
	printf("%-20s %-20s %-14s %-20s %-20s %-8s %s%s\n", str(k, "id"), str(k, "name"),
	       str(k, "team"), str(k, "created"), str(k, "expires"), status, lim,
	       json_is_true(json_object_get(k, "bootstrap")) ? " (config)" : "");
}

static void print_keys(json_t *doc)
{
	printf("%-20s %-20s %-14s %-20s %-20s %-8s %s\n", "ID", "NAME", "TEAM", "CREATED",
	       "EXPIRES", "STATUS", "LIMITS");
	size_t i;
	json_t *k;
	json_array_foreach(json_object_get(doc, "data"), i, k)
		print_key_row(k);
}

static void print_teams(json_t *doc)
{
	printf("%-20s %-10s %-10s %-8s %-16s %-16s %s\n", "TEAM", "RPM", "TPM", "PERIOD",
	       "BUDGET_USD", "SPENT_USD", "ALERTS");
	size_t i, j;
	json_t *t, *al;
	json_array_foreach(json_object_get(doc, "data"), i, t) {
		json_t *l = json_object_get(t, "limits"), *b = json_object_get(t, "budget");
		char rpm[24] = "-", tpm[24] = "-", lim[32] = "-", spent[32] = "-", alerts[64] = "";
		if (json_is_integer(json_object_get(l, "rpm")))
			snprintf(rpm, sizeof(rpm), "%lld", json_integer_value(json_object_get(l, "rpm")));
		if (json_is_integer(json_object_get(l, "tpm")))
			snprintf(tpm, sizeof(tpm), "%lld", json_integer_value(json_object_get(l, "tpm")));
		if (json_is_object(b)) {
			usd(lim, sizeof(lim), json_integer_value(json_object_get(b, "limit_micro_usd")));
			usd(spent, sizeof(spent),
			    json_integer_value(json_object_get(b, "spent_micro_usd")));
			json_array_foreach(json_object_get(b, "alerts"), j, al) {
				size_t n = strlen(alerts);
				snprintf(alerts + n, sizeof(alerts) - n, "%s%lld%%", n ? "," : "",
					 json_integer_value(json_object_get(al, "percent")));
			}
		}
		printf("%-20s %-10s %-10s %-8s %-16s %-16s %s\n", str(t, "name"), rpm, tpm,
		       json_is_object(b) ? str(b, "period") : "-", lim, spent,
		       alerts[0] ? alerts : "-");
	}
}

static void print_alerts(json_t *doc)
{
	printf("%-6s %-20s %-20s %-8s %-20s %-8s %-7s %s\n", "SCOPE", "ID", "NAME", "PERIOD",
	       "PERIOD_START", "DIM", "PERCENT", "SPENT/LIMIT");
	size_t i;
	json_t *a;
	json_array_foreach(json_object_get(doc, "data"), i, a) {
		bool money = strcmp(str(a, "dimension"), "usd") == 0;
		char spent[32], limit[32];
		json_int_t s = json_integer_value(json_object_get(a, "spent"));
		json_int_t l = json_integer_value(json_object_get(a, "limit"));
		if (money) {
			usd(spent, sizeof(spent), s);
			usd(limit, sizeof(limit), l);
		} else {
			snprintf(spent, sizeof(spent), "%lld", (long long)s);
			snprintf(limit, sizeof(limit), "%lld", (long long)l);
		}
		printf("%-6s %-20s %-20s %-8s %-20s %-8s %-7lld %s/%s\n", str(a, "scope"),
		       str(a, "id"), str(a, "name"), str(a, "period"), str(a, "period_start"),
		       str(a, "dimension"), json_integer_value(json_object_get(a, "percent")), spent,
		       limit);
	}
}

static void print_spend_row(bool by_key, const char *first, json_t *r)
{
	char u[32];
	usd(u, sizeof(u), json_integer_value(json_object_get(r, "micro_usd")));
	if (by_key)
		printf("%-20s %-20s %-14s ", first, str(r, "name"), str(r, "team"));
	else
		printf("%-32s ", first);
	printf("%16s %10lld %14lld %14lld\n", u,
	       json_integer_value(json_object_get(r, "requests")),
	       json_integer_value(json_object_get(r, "input_tokens")),
	       json_integer_value(json_object_get(r, "output_tokens")));
}

static void print_spend(json_t *doc)
{
	const char *by = str(doc, "by");
	bool by_key = strcmp(by, "key") == 0;
	char upper[8];
	snprintf(upper, sizeof(upper), "%s", by);
	for (char *p = upper; *p; p++)
		*p = (char)(*p - 'a' + 'A');
	if (by_key)
		printf("%-20s %-20s %-14s ", "KEY", "NAME", "TEAM");
	else
		printf("%-32s ", upper);
	printf("%16s %10s %14s %14s\n", "USD", "REQUESTS", "INPUT_TOKENS", "OUTPUT_TOKENS");
	size_t i;
	json_t *r;
	json_array_foreach(json_object_get(doc, "data"), i, r) {
		char first[40];
		if (by_key && !json_is_string(json_object_get(r, "key")))
			snprintf(first, sizeof(first), "sha256:%s", str(r, "key_sha256_prefix"));
		else
			snprintf(first, sizeof(first), "%s", str(r, by));
		print_spend_row(by_key, first, r);
	}
	print_spend_row(by_key, "TOTAL", json_object_get(doc, "total"));
}

/* ---------------------------------------------------------------- commands */

/* "30d", "12h", "90m", "3600s", "2w" or plain seconds. */
static long long duration_s(const char *s)
{
	char *end;
	errno = 0;
	long long n = strtoll(s, &end, 10);
	if (errno || end == s || n <= 0)
		return -1;
	long long mul = !*end ? 1 : !strcmp(end, "s") ? 1 : !strcmp(end, "m") ? 60
		      : !strcmp(end, "h") ? 3600 : !strcmp(end, "d") ? 86400
		      : !strcmp(end, "w") ? 604800 : -1;
	if (mul < 0 || n > INT64_MAX / mul)
		return -1;
	return n * mul;
}

static int cmd_keys_create(const struct opts *o)
{
	if (!o->name) {
		fprintf(stderr, "penstockctl: keys create needs --name\n");
		return EXIT_USAGE;
	}
	json_t *req = json_pack("{s:s}", "name", o->name);
	if (o->team)
		json_object_set_new(req, "team", json_string(o->team));
	if (o->nmodels) {
		json_t *m = json_array();
		for (size_t i = 0; i < o->nmodels; i++)
			json_array_append_new(m, json_string(o->models[i]));
		json_object_set_new(req, "models", m);
	}
	if (o->rpm >= 0)
		json_object_set_new(req, "rpm", json_integer(o->rpm));
	if (o->tpm >= 0)
		json_object_set_new(req, "tpm", json_integer(o->tpm));
	if (o->budget_usd) {
		char *end;
		double v = strtod(o->budget_usd, &end);
		if (end == o->budget_usd || *end) {
			fprintf(stderr, "penstockctl: --budget-usd %s: not a number\n", o->budget_usd);
			json_decref(req);
			return EXIT_USAGE;
		}
		json_object_set_new(req, "budget_usd", json_real(v));
	}
	if (o->budget_period)
		json_object_set_new(req, "budget_period", json_string(o->budget_period));
	if (o->expires_in) {
		long long s = duration_s(o->expires_in);
		if (s < 0) {
			fprintf(stderr, "penstockctl: --expires-in %s: expected e.g. 3600, 90m, 12h, "
					"30d, 2w\n", o->expires_in);
			json_decref(req);
			return EXIT_USAGE;
		}
		json_object_set_new(req, "expires_in_s", json_integer(s));
	}
	if (o->expires_at)
		json_object_set_new(req, "expires_at", json_string(o->expires_at));
	char *body = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	if (!body)
		return EXIT_FAIL;
	json_t *doc;
	int rc = api(o, "POST", "/admin/keys", body, &doc);
	free(body);
	if (rc)
		return rc;
	if (o->json) {
		print_json(doc);
	} else {
		/* stdout carries the secret alone, so KEY=$(penstockctl keys create ...) works */
		printf("%s\n", str(doc, "key"));
		fprintf(stderr, "created key %s (name %s, team %s); the secret above is shown "
				"once: store it now\n", str(doc, "id"), str(doc, "name"),
			str(doc, "team"));
	}
	json_decref(doc);
	return 0;
}

static bool id_ok(const char *id)
{
	/* ids are "k_" + hex or "cfg_" + a config name: nothing that needs escaping in a path */
	if (!id[0] || strlen(id) > 200)
		return false;
	for (const char *p = id; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '_' || *p == '-' || *p == '.'))
			return false;
	return true;
}

static int keys_cmd(const struct opts *o, int argc, char **argv)
{
	if (argc < 1) {
		usage(stderr);
		return EXIT_USAGE;
	}
	const char *sub = argv[0];
	if (!strcmp(sub, "create") && argc == 1)
		return cmd_keys_create(o);
	json_t *doc;
	int rc;
	if (!strcmp(sub, "list") && argc == 1) {
		if ((rc = api(o, "GET", "/admin/keys", NULL, &doc)))
			return rc;
		o->json ? print_json(doc) : print_keys(doc);
	} else if ((!strcmp(sub, "revoke") || !strcmp(sub, "show")) && argc == 2) {
		if (!id_ok(argv[1])) {
			fprintf(stderr, "penstockctl: '%s' is not a key id\n", argv[1]);
			return EXIT_USAGE;
		}
		char path[300];
		bool revoke = !strcmp(sub, "revoke");
		snprintf(path, sizeof(path), "/admin/keys/%s%s", argv[1], revoke ? "/revoke" : "");
		if ((rc = api(o, revoke ? "POST" : "GET", path, revoke ? "{}" : NULL, &doc)))
			return rc;
		if (o->json)
			print_json(doc);
		else if (revoke)
			printf("revoked %s\n", str(doc, "id"));
		else
			print_key_row(doc);
	} else {
		usage(stderr);
		return EXIT_USAGE;
	}
	json_decref(doc);
	return 0;
}

static int simple_get(const struct opts *o, const char *path, void (*print)(json_t *))
{
	json_t *doc;
	int rc = api(o, "GET", path, NULL, &doc);
	if (rc)
		return rc;
	o->json ? print_json(doc) : print(doc);
	json_decref(doc);
	return 0;
}

/* POST /admin/reload: the generation in effect, or the reason it was refused (api prints
 * the gateway's message). */
static int reload_cmd(const struct opts *o)
{
	json_t *doc;
	int rc = api(o, "POST", "/admin/reload", "{}", &doc);
	if (rc)
		return rc;
	if (o->json)
		print_json(doc);
	else
		printf("reloaded: generation %lld, %lld providers, %lld models\n",
		       (long long)json_integer_value(json_object_get(doc, "generation")),
		       (long long)json_integer_value(json_object_get(doc, "providers")),
		       (long long)json_integer_value(json_object_get(doc, "models")));
	json_decref(doc);
	return 0;
}

/* The report from the store itself: a read-only environment, one read. */
static int spend_local(const struct opts *o, enum report_by by, int64_t since, int64_t until,
		       json_t **doc)
{
	int err = 0;
	struct store_options so = { .dir = o->data_dir, .read_only = true };
	struct store *s = store_open(&so, &err);
	if (!s) {
		fprintf(stderr, "penstockctl: cannot open the store in %s: %s\n", o->data_dir,
			store_strerror(err));
		return EXIT_FAIL;
	}
	struct store_reader *r = store_reader_new(s, &err);
	struct report rep = { 0 };
	int rc = r ? store_read_begin(r) : err;
	if (!rc) {
		rc = report_spend(r, by, since, until, &rep);
		if (!rc)
			rc = report_name_keys_from_store(r, &rep);
		store_read_end(r);
	}
	char *text = rc ? NULL : report_json(&rep);
	report_free(&rep);
	store_reader_free(r);
	store_close(s);
	if (!text) {
		fprintf(stderr, "penstockctl: reading %s: %s\n", o->data_dir,
			rc ? store_strerror(rc) : "out of memory");
		return EXIT_FAIL;
	}
	*doc = json_loads(text, 0, NULL);
	free(text);
	return *doc ? 0 : EXIT_FAIL;
}

static int spend_cmd(const struct opts *o)
{
	enum report_by by;
	int64_t since = INT64_MIN, until = INT64_MAX;
	if (!o->by || report_by_parse(o->by, &by)) {
		fprintf(stderr, "penstockctl: spend needs --by team, key or model\n");
		return EXIT_USAGE;
	}
	if ((o->since && report_parse_date(o->since, &since)) ||
	    (o->until && report_parse_date(o->until, &until))) {
		fprintf(stderr, "penstockctl: --since and --until take a date: YYYY-MM-DD\n");
		return EXIT_USAGE;
	}
	if (since > until && o->since && o->until) {
		fprintf(stderr, "penstockctl: --since is after --until\n");
		return EXIT_USAGE;
	}
	json_t *doc;
	int rc;
	if (o->via_admin) {
		char path[128];
		snprintf(path, sizeof(path), "/admin/spend?by=%s%s%s%s%s", o->by,
			 o->since ? "&since=" : "", o->since ? o->since : "",
			 o->until ? "&until=" : "", o->until ? o->until : "");
		rc = api(o, "GET", path, NULL, &doc);
	} else {
		rc = spend_local(o, by, since, until, &doc);
	}
	if (rc)
		return rc;
	o->json ? print_json(doc) : print_spend(doc);
	json_decref(doc);
	return 0;
}

/* ---------------------------------------------------------------- audit */

static struct store *open_local(const struct opts *o, struct store_reader **r)
{
	int err = 0;
	struct store_options so = { .dir = o->data_dir, .read_only = true };
	struct store *s = store_open(&so, &err);
	*r = s ? store_reader_new(s, &err) : NULL;
	if (!*r) {
		fprintf(stderr, "penstockctl: cannot open the store in %s: %s\n", o->data_dir,
			store_strerror(err));
		store_close(s);
		return NULL;
	}
	return s;
}

enum audit_out { OUT_TABLE, OUT_JSONL, OUT_CSV };

struct audit_sink {
	enum audit_out out;
	struct buf b;
	uint64_t left; /* records still wanted */
	bool failed;
};

static void audit_table_row(const struct audit_entry *e, struct buf *b)
{
	const struct audit_rec *a = &e->rec;
	time_t t = (time_t)(a->time_ns / 1000000000);
	struct tm tm;
	char when[32] = "-", u[32], line[1024];
	if (gmtime_r(&t, &tm))
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	usd(u, sizeof(u), a->cost_micro_usd);
#define COL(s) (s).n ? (int)((s).n > 40 ? 40 : (s).n) : 1, (s).n ? (s).p : "-"
	int n = snprintf(line, sizeof(line), "%-20s %3u %-22.*s %-12.*s %-20.*s %-24.*s %8" PRIu64
			 " %8" PRIu64 " %12s %.*s\n", when, a->status, COL(a->key_id),
			 COL(a->team), COL(a->model), COL(a->provider), a->prompt_tokens,
			 a->completion_tokens, u, COL(a->request_id));
#undef COL
	if (n > 0 && (size_t)n < sizeof(line))
		buf_append(b, line, (size_t)n, AUDIT_OUT_MAX);
}

static int audit_emit(void *arg, const struct audit_entry *e)
{
	struct audit_sink *k = arg;
	if (!k->left)
		return 2;
	k->left--;
	bool ok = true;
	if (k->out == OUT_JSONL)
		ok = audit_json(e, &k->b, AUDIT_OUT_MAX);
	else if (k->out == OUT_CSV)
		ok = audit_csv(e, &k->b, AUDIT_OUT_MAX);
	else
		audit_table_row(e, &k->b);
	if (!ok) {
		k->failed = true;
		return 3;
	}
	/* records with bodies are large: written out before a chunk ends, memory stays bounded */
	if (k->b.len >= AUDIT_FLUSH_AT) {
		if (fwrite(k->b.p, 1, k->b.len, stdout) != k->b.len)
			return -EIO;
		k->b.len = 0;
	}
	return 0;
}

static bool audit_filter_from(const struct opts *o, struct audit_filter *f)
{
	memset(f, 0, sizeof(*f));
	if ((o->since && audit_time_parse(o->since, &f->since_ns)) ||
	    (o->until && audit_time_parse(o->until, &f->until_ns))) {
		fprintf(stderr, "penstockctl: --since and --until take YYYY-MM-DD, an RFC 3339 time "
			"or UTC nanoseconds\n");
		return false;
	}
	if (f->since_ns && f->until_ns && f->since_ns >= f->until_ns) {
		fprintf(stderr, "penstockctl: --since is not before --until\n");
		return false;
	}
	if (o->status && audit_status_parse(o->status, f)) {
		fprintf(stderr, "penstockctl: --status takes a status (429) or a class (4xx)\n");
		return false;
	}
	f->key_id = o->key;
	f->team = o->team;
	f->model = o->nmodels ? o->models[0] : NULL;
	if (o->nmodels > 1) {
		fprintf(stderr, "penstockctl: audit takes one --model\n");
		return false;
	}
	return true;
}

/* Records in chunks: each read is short (the gateway's writer is never held up by old
 * pages pinned for long) and each chunk is written out before the next is read, so an
 * export of any size takes the memory of one chunk. */
static int audit_stream(const struct opts *o, const struct audit_filter *f, struct audit_sink *k)
{
	struct store_reader *r;
	struct store *s = open_local(o, &r);
	if (!s)
		return EXIT_FAIL;
	if (k->out == OUT_CSV)
		fputs(audit_csv_header(), stdout);
	else if (k->out == OUT_TABLE)
		printf("%-20s %3s %-22s %-12s %-20s %-24s %8s %8s %12s %s\n", "time", "st", "key",
		       "team", "model", "provider", "in", "out", "usd", "request id");
	uint64_t cursor = 0;
	int rc;
	do {
		rc = store_read_begin(r);
		if (rc)
			break;
		rc = audit_query(r, f, &cursor, AUDIT_CHUNK, audit_emit, k);
		store_read_end(r);
		if (k->b.len && fwrite(k->b.p, 1, k->b.len, stdout) != k->b.len)
			rc = -EIO;
		k->b.len = 0;
	} while (rc == 1);
	buf_free(&k->b);
	store_reader_free(r);
	store_close(s);
	if (rc == 2)
		rc = 0; /* the limit was reached */
	if (rc || k->failed || fflush(stdout)) {
		fprintf(stderr, "penstockctl: reading the audit trail in %s: %s\n", o->data_dir,
			k->failed ? "out of memory" : store_strerror(rc ? rc : -EIO));
		return EXIT_FAIL;
	}
	return 0;
}

static int audit_verify_cmd(const struct opts *o)
{
	struct store_reader *r;
	struct store *s = open_local(o, &r);
	if (!s)
		return EXIT_FAIL;
	struct audit_verify v;
	int rc = audit_verify_chain(r, &v);
	store_reader_free(r);
	store_close(s);
	if (rc) {
		fprintf(stderr, "penstockctl: reading the audit trail in %s: %s\n", o->data_dir,
			store_strerror(rc));
		return EXIT_FAIL;
	}
	if (o->json)
		printf("{\"ok\":%s,\"checked\":%" PRIu64 ",\"anchor\":%" PRIu64
		       ",\"broken_at\":%" PRIu64 "}\n", v.bad_stamp ? "false" : "true", v.checked,
		       v.anchor_stamp, v.bad_stamp);
	if (v.bad_stamp) {
		fprintf(stderr, "audit chain BROKEN at record seq %" PRIu64 " (after %" PRIu64
			" good records): %s\n", v.bad_stamp, v.checked, v.why);
		return EXIT_FAIL;
	}
	if (!o->json)
		printf("audit chain ok: %" PRIu64 " records%s\n", v.checked,
		       v.anchor_stamp ? " from the retention anchor" : "");
	return 0;
}

static int audit_cmd(const struct opts *o, int argc, char **argv)
{
	if (argc != 1) {
		usage(stderr);
		return EXIT_USAGE;
	}
	struct audit_filter f;
	struct audit_sink k = { .out = o->json ? OUT_JSONL : OUT_TABLE, .left = UINT64_MAX };
	if (!strcmp(argv[0], "verify")) {
		if (o->since || o->until || o->key || o->team || o->nmodels || o->status ||
		    o->format || o->limit >= 0) {
			fprintf(stderr, "penstockctl: audit verify walks the whole chain: it takes "
				"no filters\n");
			return EXIT_USAGE;
		}
		return audit_verify_cmd(o);
	}
	if (!audit_filter_from(o, &f))
		return EXIT_USAGE;
	if (!strcmp(argv[0], "query")) {
		if (o->format) {
			fprintf(stderr, "penstockctl: --format is for audit export\n");
			return EXIT_USAGE;
		}
		k.left = o->limit >= 0 ? (uint64_t)o->limit : AUDIT_QUERY_LIMIT;
		return audit_stream(o, &f, &k);
	}
	if (!strcmp(argv[0], "export")) {
		if (!o->format || (strcmp(o->format, "jsonl") && strcmp(o->format, "csv"))) {
			fprintf(stderr, "penstockctl: audit export needs --format jsonl or csv\n");
			return EXIT_USAGE;
		}
		k.out = strcmp(o->format, "csv") ? OUT_JSONL : OUT_CSV;
		if (o->limit >= 0)
			k.left = (uint64_t)o->limit;
		return audit_stream(o, &f, &k);
	}
	usage(stderr);
	return EXIT_USAGE;
}

/* An option given to a command it does not apply to, or NULL: say so rather than ignore it. */
static const char *misplaced(const struct opts *o, bool create, bool spend, bool audit)
{
	if (!audit) {
		const char *given = o->key ? "key" : o->status ? "status" : o->format ? "format"
				  : o->limit >= 0 ? "limit" : NULL;
		if (given)
			return given;
	}
	if (!create && !audit) {
		const char *given = o->team ? "team" : o->nmodels ? "model" : NULL;
		if (given)
			return given;
	}
	if (!create) {
		const char *given = o->name ? "name"
				  : o->rpm >= 0 ? "rpm" : o->tpm >= 0 ? "tpm"
				  : o->budget_usd ? "budget-usd" : o->budget_period ? "budget-period"
				  : o->expires_in ? "expires-in" : o->expires_at ? "expires-at" : NULL;
		if (given)
			return given;
	}
	if (!spend && !audit && (o->since || o->until))
		return o->since ? "since" : "until";
	if (!spend)
		return o->by ? "by" : o->via_admin ? "via-admin" : NULL;
	return NULL;
}

enum {
	OPT_ADMIN = 256, OPT_TOKEN_FILE, OPT_DATA_DIR, OPT_JSON, OPT_VIA_ADMIN, OPT_NAME, OPT_TEAM,
	OPT_MODEL, OPT_RPM, OPT_TPM, OPT_BUDGET_USD, OPT_BUDGET_PERIOD, OPT_EXPIRES_IN,
	OPT_EXPIRES_AT, OPT_BY, OPT_SINCE, OPT_UNTIL, OPT_VERSION, OPT_KEY, OPT_STATUS, OPT_FORMAT,
	OPT_LIMIT,
};

static bool count(const char *s, long long *out)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || end == s || *end || v < 0)
		return false;
	*out = v;
	return true;
}

int main(int argc, char **argv)
{
	static const struct option long_opts[] = {
		{ "admin", required_argument, NULL, OPT_ADMIN },
		{ "token-file", required_argument, NULL, OPT_TOKEN_FILE },
		{ "data-dir", required_argument, NULL, OPT_DATA_DIR },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "via-admin", no_argument, NULL, OPT_VIA_ADMIN },
		{ "name", required_argument, NULL, OPT_NAME },
		{ "team", required_argument, NULL, OPT_TEAM },
		{ "model", required_argument, NULL, OPT_MODEL },
		{ "rpm", required_argument, NULL, OPT_RPM },
		{ "tpm", required_argument, NULL, OPT_TPM },
		{ "budget-usd", required_argument, NULL, OPT_BUDGET_USD },
		{ "budget-period", required_argument, NULL, OPT_BUDGET_PERIOD },
		{ "expires-in", required_argument, NULL, OPT_EXPIRES_IN },
		{ "expires-at", required_argument, NULL, OPT_EXPIRES_AT },
		{ "by", required_argument, NULL, OPT_BY },
		{ "since", required_argument, NULL, OPT_SINCE },
		{ "until", required_argument, NULL, OPT_UNTIL },
		{ "version", no_argument, NULL, OPT_VERSION },
		{ "key", required_argument, NULL, OPT_KEY },
		{ "status", required_argument, NULL, OPT_STATUS },
		{ "format", required_argument, NULL, OPT_FORMAT },
		{ "limit", required_argument, NULL, OPT_LIMIT },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct opts o = { .admin = DEFAULT_ADMIN, .data_dir = DEFAULT_DATA_DIR,
			  .env_file = DEFAULT_ENV_FILE, .rpm = -1, .tpm = -1, .limit = -1 };
	log_set_prefix("penstockctl");
	int c;
	while ((c = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
		switch (c) {
		case OPT_ADMIN: o.admin = optarg; break;
		case OPT_TOKEN_FILE: o.token_file = optarg; break;
		case OPT_DATA_DIR: o.data_dir = optarg; break;
		case OPT_JSON: o.json = true; break;
		case OPT_VIA_ADMIN: o.via_admin = true; break;
		case OPT_NAME: o.name = optarg; break;
		case OPT_TEAM: o.team = optarg; break;
		case OPT_MODEL:
			if (o.nmodels == MODELS_MAX) {
				fprintf(stderr, "penstockctl: at most %d --model\n", MODELS_MAX);
				return EXIT_USAGE;
			}
			o.models[o.nmodels++] = optarg;
			break;
		case OPT_RPM:
		case OPT_TPM:
			if (!count(optarg, c == OPT_RPM ? &o.rpm : &o.tpm)) {
				fprintf(stderr, "penstockctl: --%s %s: not a count\n",
					c == OPT_RPM ? "rpm" : "tpm", optarg);
				return EXIT_USAGE;
			}
			break;
		case OPT_BUDGET_USD: o.budget_usd = optarg; break;
		case OPT_BUDGET_PERIOD: o.budget_period = optarg; break;
		case OPT_EXPIRES_IN: o.expires_in = optarg; break;
		case OPT_EXPIRES_AT: o.expires_at = optarg; break;
		case OPT_BY: o.by = optarg; break;
		case OPT_SINCE: o.since = optarg; break;
		case OPT_UNTIL: o.until = optarg; break;
		case OPT_KEY: o.key = optarg; break;
		case OPT_STATUS: o.status = optarg; break;
		case OPT_FORMAT: o.format = optarg; break;
		case OPT_LIMIT:
			if (!count(optarg, &o.limit)) {
				fprintf(stderr, "penstockctl: --limit %s: not a count\n", optarg);
				return EXIT_USAGE;
			}
			break;
		case OPT_VERSION: puts("penstockctl " PENSTOCK_VERSION); return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	argc -= optind;
	argv += optind;
	if (argc < 1) {
		usage(stderr);
		return EXIT_USAGE;
	}
	bool create = argc >= 2 && !strcmp(argv[0], "keys") && !strcmp(argv[1], "create");
	const char *stray = misplaced(&o, create, !strcmp(argv[0], "spend"),
				      !strcmp(argv[0], "audit"));
	if (stray) {
		fprintf(stderr, "penstockctl: --%s does not apply to '%s'\n", stray, argv[0]);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[0], "keys"))
		return keys_cmd(&o, argc - 1, argv + 1);
	if (!strcmp(argv[0], "audit"))
		return audit_cmd(&o, argc - 1, argv + 1);
	if (!strcmp(argv[0], "spend") && argc == 1)
		return spend_cmd(&o);
	if (!strcmp(argv[0], "teams") && argc == 1)
		return simple_get(&o, "/admin/teams", print_teams);
	if (!strcmp(argv[0], "alerts") && argc == 1)
		return simple_get(&o, "/admin/alerts", print_alerts);
	if (!strcmp(argv[0], "reload") && argc == 1)
		return reload_cmd(&o);
	usage(stderr);
	return EXIT_USAGE;
}
