/* pipeline.c - route, authenticate, forward, relay.
 *
 * The request body goes upstream as the client sent it (an iovec of its slices), with
 * only the model name spliced when the catalog maps it to another upstream name. The
 * response is relayed as it arrives: no buffering of SSE; reading from the upstream
 * pauses while the client is slow to take what was already sent.
 */
#include "pipeline.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "core/log.h"
#include "core/upstream.h"

#define OUT_HIGH_WATER (256 * 1024)

struct route {
	const char *name;        /* client-facing model name */
	unsigned provider;       /* index into pipeline.providers */
	const char *upstream_model;
};

struct provider {
	const struct config_provider *cfg;
	char *auth_header; /* "Authorization: Bearer ...\r\n" or "" */
	char *host_header; /* "Host: host[:port]\r\n" */
	struct upstream_endpoint ep;
};

struct client_key {
	char *name;
	char *secret;
	size_t len;
};

struct pipeline {
	const struct config *cfg;
	struct engine_handler handler;
	struct provider *providers;
	size_t nproviders;
	struct route *routes;
	size_t nroutes;
	struct client_key *keys;
	size_t nkeys;
	char *models_json; /* GET /v1/models body */
	size_t models_json_len;
};

struct pl_worker {
	struct pipeline *pl;
	struct upstream_pool **pools; /* one per provider */
};

/* Per request that goes upstream. */
struct px {
	struct exchange *ex;
	struct pl_worker *pw;
	const struct route *route;
	struct upstream_call call;
	struct iovec iov[4];
	size_t head_len;
	char head[]; /* upstream request head */
};

/* ---------------------------------------------------------------- errors */

/* OpenAI's error shape. message must not contain secrets. */
static void respond_error(struct exchange *ex, int status, const char *type, const char *code,
			  const char *message, const char *extra_headers)
{
	char msg[768];
	size_t mn = json_escape(msg, sizeof(msg), slice_cstr(message));
	char body[1024];
	int n = snprintf(body, sizeof(body),
			 "{\"error\":{\"message\":\"%.*s\",\"type\":\"%s\",\"param\":null,\"code\":%s%s%s}}\n",
			 (int)mn, msg, type, code ? "\"" : "", code ? code : "null", code ? "\"" : "");
	ex_respond(ex, status, "application/json", extra_headers, slice_of(body, (size_t)n));
}

static void pl_on_reject(struct exchange *ex, int status, const char *why)
{
	respond_error(ex, status, "invalid_request_error", NULL, why, NULL);
}

/* ---------------------------------------------------------------- upstream relay */

static void px_free(struct px *px)
{
	px->ex->user = NULL;
	free(px);
}

static void release_buffer(void *arg, uint64_t bid)
{
	worker_buffer_unref(arg, (uint16_t)bid);
}

static void px_on_head(void *arg, const struct http1_response *res)
{
	struct px *px = arg;
	const struct provider *prov = &px->pw->pl->providers[px->route->provider];
	const struct http1_header *ct = http1_find_header(res->headers, res->nheaders, "content-type");
	const struct http1_header *ra = http1_find_header(res->headers, res->nheaders, "retry-after");
	char ctype[128] = "application/json";
	if (ct)
		snprintf(ctype, sizeof(ctype), SLICE_FMT, SLICE_ARG(ct->value));
	char extra[512];
	int n = snprintf(extra, sizeof(extra), "x-penstock-provider: %s\r\nx-penstock-model: %s\r\n",
			 prov->cfg->name, px->route->upstream_model);
	if (ra && ra->value.n < 64)
		snprintf(extra + n, sizeof(extra) - (size_t)n, "retry-after: " SLICE_FMT "\r\n",
			 SLICE_ARG(ra->value));
	int64_t length = -1;
	if (res->body == HTTP1_BODY_LENGTH)
		length = (int64_t)res->content_length;
	else if (res->body == HTTP1_BODY_NONE)
		length = 0;
	ex_begin(px->ex, res->status, ctype, extra, length);
}

static void px_resume(struct exchange *ex)
{
	struct px *px = ex->user;
	if (px)
		upstream_resume(&px->call);
}

static bool px_on_data(void *arg, struct slice data, uint16_t bid)
{
	struct px *px = arg;
	struct worker *w = ex_worker(px->ex);
	if (!ex_write(px->ex, data, release_buffer, w, bid))
		return false; /* the exchange was aborted: px is gone, the call cancelled */
	if (ex_pending(px->ex) > OUT_HIGH_WATER) {
		ex_on_drain(px->ex, px_resume);
		return false;
	}
	return true;
}

static void px_on_end(void *arg)
{
	struct px *px = arg;
	struct exchange *ex = px->ex;
	px_free(px);
	ex_finish(ex);
}

static void px_on_error(void *arg, enum upstream_error err, bool head_seen)
{
	struct px *px = arg;
	struct exchange *ex = px->ex;
	const struct provider *prov = &px->pw->pl->providers[px->route->provider];
	log_warn("request %s: provider %s: %s%s", ex->id, prov->cfg->name, upstream_error_text(err),
		 head_seen ? " (after the response began)" : "");
	px_free(px);
	if (head_seen) {
		/* The status line is out: relay what came, then cut the connection so the
		 * client cannot mistake the response for complete. */
		ex_truncate(ex);
		return;
	}
	bool timeout = err == UP_E_CONNECT_TIMEOUT || err == UP_E_FIRST_BYTE_TIMEOUT ||
		       err == UP_E_IDLE_TIMEOUT;
	respond_error(ex, timeout ? 504 : 502, "api_error",
		      timeout ? "upstream_timeout" : "upstream_unavailable", upstream_error_text(err),
		      NULL);
}

static const struct upstream_callbacks px_callbacks = {
	.on_head = px_on_head, .on_data = px_on_data, .on_end = px_on_end, .on_error = px_on_error,
};

/* ---------------------------------------------------------------- endpoints */

static const struct client_key *authenticate(const struct pipeline *pl, const struct exchange *ex)
{
	const struct http1_header *h = ex_header(ex, "authorization");
	if (!h || h->value.n < 8 || strncasecmp(h->value.p, "Bearer ", 7) != 0)
		return NULL;
	struct slice key = { h->value.p + 7, h->value.n - 7 };
	const struct client_key *found = NULL;
	/* Compare against every key in constant time per key so timing says nothing. */
	for (size_t i = 0; i < pl->nkeys; i++) {
		const struct client_key *k = &pl->keys[i];
		unsigned char diff = k->len != key.n;
		for (size_t j = 0; j < k->len; j++)
			diff |= (unsigned char)(k->secret[j] ^ (j < key.n ? key.p[j] : 0));
		if (!diff)
			found = k;
	}
	return found;
}

/* Client headers that go upstream: only those the operator named (forward_headers:
 * exact names or prefixes ending in '*'), and never credentials or framing. */
static bool forwardable(const struct config *cfg, struct slice name)
{
	static const char *const never[] = { "authorization", "x-api-key", "host", "content-length",
		"transfer-encoding", "connection", "keep-alive", "expect", "te", "upgrade",
		"proxy-authorization", "cookie" };
	for (size_t i = 0; i < sizeof(never) / sizeof(never[0]); i++)
		if (slice_ieq_cstr(name, never[i]))
			return false;
	for (size_t i = 0; i < cfg->nforward_headers; i++) {
		const char *f = cfg->forward_headers[i];
		size_t n = strlen(f);
		if (n && f[n - 1] == '*') {
			if (name.n >= n - 1 && strncasecmp(name.p, f, n - 1) == 0)
				return true;
		} else if (slice_ieq_cstr(name, f)) {
			return true;
		}
	}
	return false;
}

static size_t forwarded_len(const struct config *cfg, const struct exchange *ex)
{
	size_t n = 0;
	for (unsigned i = 0; i < ex->req.nheaders; i++)
		if (forwardable(cfg, ex->req.headers[i].name))
			n += ex->req.headers[i].name.n + ex->req.headers[i].value.n + 4;
	return n;
}

static size_t forwarded_write(const struct config *cfg, const struct exchange *ex, char *out)
{
	size_t n = 0;
	for (unsigned i = 0; i < ex->req.nheaders; i++) {
		const struct http1_header *h = &ex->req.headers[i];
		if (!forwardable(cfg, h->name))
			continue;
		memcpy(out + n, h->name.p, h->name.n);
		n += h->name.n;
		out[n++] = ':';
		out[n++] = ' ';
		memcpy(out + n, h->value.p, h->value.n);
		n += h->value.n;
		out[n++] = '\r';
		out[n++] = '\n';
	}
	return n;
}

static const struct route *find_route(const struct pipeline *pl, struct slice model)
{
	for (size_t i = 0; i < pl->nroutes; i++)
		if (slice_eq_cstr(model, pl->routes[i].name))
			return &pl->routes[i];
	return NULL;
}

static void chat_completions(struct pl_worker *pw, struct exchange *ex)
{
	struct pipeline *pl = pw->pl;
	static const char *const keys[] = { "model" };
	struct slice vals[1];
	if (json_scan_object(ex->body, keys, vals, 1) < 0) {
		respond_error(ex, 400, "invalid_request_error", NULL,
			      "We could not parse the JSON body of your request: expected a JSON object.",
			      NULL);
		return;
	}
	struct slice model;
	if (!vals[0].p || !json_plain_string(vals[0], &model) || model.n == 0) {
		respond_error(ex, 400, "invalid_request_error", NULL,
			      "you must provide a model parameter", NULL);
		return;
	}
	const struct route *route = find_route(pl, model);
	if (!route) {
		char msg[256];
		snprintf(msg, sizeof(msg),
			 "The model `%.*s` does not exist or you do not have access to it.",
			 (int)(model.n > 100 ? 100 : model.n), model.p);
		respond_error(ex, 404, "invalid_request_error", "model_not_found", msg, NULL);
		return;
	}
	const struct provider *prov = &pl->providers[route->provider];

	/* Splice the upstream model name into the body when it differs. */
	struct slice before = { ex->body.p, (size_t)(vals[0].p - ex->body.p) };
	struct slice after = { vals[0].p + vals[0].n, ex->body.n - before.n - vals[0].n };
	bool splice = !slice_eq_cstr(model, route->upstream_model);
	size_t body_len = ex->body.n;
	size_t quoted_len = strlen(route->upstream_model) + 2;
	if (splice)
		body_len = before.n + quoted_len + after.n;

	/* The head's fixed text and numbers take < 200 bytes; the spliced model follows it. */
	size_t fwd_len = pl->cfg->nforward_headers ? forwarded_len(pl->cfg, ex) : 0;
	size_t cap = 256 + strlen(prov->cfg->path_prefix) + strlen(prov->auth_header) +
		     strlen(prov->host_header) + fwd_len + quoted_len + 1;
	struct px *px = malloc(sizeof(*px) + cap);
	if (!px) {
		respond_error(ex, 503, "api_error", NULL, "gateway out of memory", NULL);
		return;
	}
	px->ex = ex;
	px->pw = pw;
	px->route = route;
	int n = snprintf(px->head, cap,
			 "POST %s/v1/chat/completions HTTP/1.1\r\n%s%s"
			 "Content-Type: application/json\r\nContent-Length: %zu\r\n"
			 "x-request-id: %s\r\n",
			 prov->cfg->path_prefix, prov->host_header, prov->auth_header, body_len, ex->id);
	px->head_len = (size_t)n;
	if (fwd_len)
		px->head_len += forwarded_write(pl->cfg, ex, px->head + px->head_len);
	memcpy(px->head + px->head_len, "\r\n", 2);
	px->head_len += 2;
	unsigned niov = 0;
	px->iov[niov++] = (struct iovec){ px->head, px->head_len };
	if (splice) {
		char *q = px->head + px->head_len + 1;
		q[0] = '"';
		memcpy(q + 1, route->upstream_model, quoted_len - 2);
		q[quoted_len - 1] = '"';
		px->iov[niov++] = (struct iovec){ (void *)before.p, before.n };
		px->iov[niov++] = (struct iovec){ q, quoted_len };
		px->iov[niov++] = (struct iovec){ (void *)after.p, after.n };
	} else {
		px->iov[niov++] = (struct iovec){ (void *)ex->body.p, ex->body.n };
	}
	ex->user = px;
	upstream_call_start(&px->call, pw->pools[route->provider], px->iov, niov, &px_callbacks, px);
}

static void list_models(struct pl_worker *pw, struct exchange *ex)
{
	ex_respond(ex, 200, "application/json", NULL,
		   slice_of(pw->pl->models_json, pw->pl->models_json_len));
}

static bool path_is(struct slice path, const char *p) { return slice_eq_cstr(path, p); }

static void pl_on_request(struct exchange *ex)
{
	struct pl_worker *pw = worker_state(ex_worker(ex));
	struct pipeline *pl = pw->pl;
	struct slice path = ex->req.target;
	const char *q = memchr(path.p, '?', path.n);
	if (q)
		path.n = (size_t)(q - path.p);
	bool get = slice_eq_cstr(ex->req.method, "GET") || slice_eq_cstr(ex->req.method, "HEAD");
	bool post = slice_eq_cstr(ex->req.method, "POST");

	if (path_is(path, "/healthz") || path_is(path, "/readyz")) {
		if (!get) {
			respond_error(ex, 405, "invalid_request_error", NULL, "method not allowed",
				      "Allow: GET\r\n");
			return;
		}
		bool ready = !worker_stopping(ex_worker(ex)) || path_is(path, "/healthz");
		const char *body = ready ? "{\"status\":\"ok\"}\n" : "{\"status\":\"stopping\"}\n";
		ex_respond(ex, ready ? 200 : 503, "application/json", NULL, slice_cstr(body));
		return;
	}
	bool chat = path_is(path, "/v1/chat/completions");
	bool models = path_is(path, "/v1/models");
	if (!chat && !models) {
		char msg[256];
		snprintf(msg, sizeof(msg), "Unknown request URL: %.*s %.*s", (int)(ex->req.method.n > 16 ? 16 : ex->req.method.n),
			 ex->req.method.p, (int)(path.n > 128 ? 128 : path.n), path.p);
		respond_error(ex, 404, "invalid_request_error", "unknown_url", msg, NULL);
		return;
	}
	if ((chat && !post) || (models && !get)) {
		respond_error(ex, 405, "invalid_request_error", NULL, "method not allowed",
			      chat ? "Allow: POST\r\n" : "Allow: GET\r\n");
		return;
	}
	if (!authenticate(pl, ex)) {
		bool missing = !ex_header(ex, "authorization");
		respond_error(ex, 401, "invalid_request_error", "invalid_api_key",
			      missing ? "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'."
				      : "Incorrect API key provided.",
			      NULL);
		return;
	}
	if (chat)
		chat_completions(pw, ex);
	else
		list_models(pw, ex);
}

static void pl_on_abort(struct exchange *ex)
{
	struct px *px = ex->user;
	if (!px)
		return;
	upstream_cancel(&px->call);
	px_free(px);
}

/* ---------------------------------------------------------------- workers */

static void *pl_worker_init(struct worker *w, void *ctx)
{
	struct pipeline *pl = ctx;
	struct pl_worker *pw = calloc(1, sizeof(*pw));
	if (!pw)
		return NULL;
	pw->pl = pl;
	pw->pools = calloc(pl->nproviders ? pl->nproviders : 1, sizeof(*pw->pools));
	for (size_t i = 0; i < pl->nproviders; i++) {
		const struct config_provider *cp = pl->providers[i].cfg;
		pw->pools[i] = upstream_pool_new(w, &pl->providers[i].ep);
		if (!pw->pools[i]) {
			log_error("provider %s: cannot resolve %s", cp->name, cp->host);
			exit(1);
		}
	}
	return pw;
}

static void pl_worker_stop(struct worker *w, void *state)
{
	struct pl_worker *pw = state;
	for (size_t i = 0; pw && i < pw->pl->nproviders; i++)
		upstream_pool_close_idle(pw->pools[i]);
}

static void pl_worker_fini(struct worker *w, void *state)
{
	struct pl_worker *pw = state;
	if (!pw)
		return;
	for (size_t i = 0; i < pw->pl->nproviders; i++)
		upstream_pool_free(pw->pools[i]);
	free(pw->pools);
	free(pw);
}

/* ---------------------------------------------------------------- setup */

static char *str_printf(const char *fmt, const char *a, const char *b)
{
	size_t n = strlen(fmt) + strlen(a) + (b ? strlen(b) : 0) + 1;
	char *s = malloc(n);
	if (s)
		snprintf(s, n, fmt, a, b);
	return s;
}

static char *models_body(const struct config *cfg, size_t *len)
{
	size_t cap = 64;
	for (size_t i = 0; i < cfg->nmodels; i++)
		cap += strlen(cfg->models[i].name) * 2 + 96;
	char *s = malloc(cap);
	if (!s)
		return NULL;
	size_t n = (size_t)snprintf(s, cap, "{\"object\":\"list\",\"data\":[");
	for (size_t i = 0; i < cfg->nmodels; i++) {
		n += (size_t)snprintf(s + n, cap - n, "%s{\"id\":\"", i ? "," : "");
		n += json_escape(s + n, cap - n, slice_cstr(cfg->models[i].name));
		n += (size_t)snprintf(s + n, cap - n,
				      "\",\"object\":\"model\",\"created\":0,\"owned_by\":\"penstock\"}");
	}
	n += (size_t)snprintf(s + n, cap - n, "]}\n");
	*len = n;
	return s;
}

struct pipeline *pipeline_new(const struct config *cfg, char *err, size_t errlen)
{
	struct pipeline *pl = calloc(1, sizeof(*pl));
	if (!pl)
		return NULL;
	pl->cfg = cfg;
	pl->nproviders = cfg->nproviders;
	pl->providers = calloc(cfg->nproviders + 1, sizeof(*pl->providers));
	for (size_t i = 0; i < cfg->nproviders; i++) {
		const struct config_provider *cp = &cfg->providers[i];
		struct provider *p = &pl->providers[i];
		p->cfg = cp;
		if (!upstream_endpoint_init(&p->ep, cfg, cp, err, errlen))
			goto fail;
		char serr[256] = "";
		char *key = config_resolve_secret(&cp->api_key, serr, sizeof(serr));
		if (!key && serr[0]) {
			snprintf(err, errlen, "provider %s: %s", cp->name, serr);
			goto fail;
		}
		p->auth_header = key ? str_printf("Authorization: Bearer %s\r\n", key, NULL) : strdup("");
		if (key) {
			explicit_bzero(key, strlen(key));
			free(key);
		}
		char hostport[300];
		bool default_port = cp->port == (cp->tls ? 443 : 80);
		snprintf(hostport, sizeof(hostport), default_port ? "%s" : "%s:%u", cp->host, cp->port);
		if (strchr(cp->host, ':')) /* IPv6 literal */
			snprintf(hostport, sizeof(hostport), default_port ? "[%s]" : "[%s]:%u", cp->host,
				 cp->port);
		p->host_header = str_printf("Host: %s\r\n", hostport, NULL);
	}
	/* Routes: the catalog's first target for each model (routing lands later). */
	pl->routes = calloc(cfg->nmodels + 1, sizeof(*pl->routes));
	for (size_t i = 0; i < cfg->nmodels; i++) {
		const struct config_model *m = &cfg->models[i];
		const struct config_target *t = &m->targets[0];
		struct route *r = &pl->routes[pl->nroutes++];
		r->name = m->name;
		r->upstream_model = t->model ? t->model : m->name;
		for (size_t k = 0; k < cfg->nproviders; k++)
			if (strcmp(cfg->providers[k].name, t->provider) == 0)
				r->provider = (unsigned)k;
	}
	pl->keys = calloc(cfg->nkeys + 1, sizeof(*pl->keys));
	for (size_t i = 0; i < cfg->nkeys; i++) {
		char serr[256] = "";
		char *secret = config_resolve_secret(&cfg->keys[i].key, serr, sizeof(serr));
		if (!secret) {
			snprintf(err, errlen, "key %s: %s", cfg->keys[i].name,
				 serr[0] ? serr : "no key_env, key_file or key given");
			goto fail;
		}
		pl->keys[pl->nkeys++] = (struct client_key){ strdup(cfg->keys[i].name), secret,
							     strlen(secret) };
	}
	pl->models_json = models_body(cfg, &pl->models_json_len);
	pl->handler = (struct engine_handler){
		.worker_init = pl_worker_init,
		.worker_fini = pl_worker_fini,
		.worker_stop = pl_worker_stop,
		.on_request = pl_on_request,
		.on_abort = pl_on_abort,
		.on_reject = pl_on_reject,
		.ctx = pl,
	};
	return pl;
fail:
	pipeline_free(pl);
	return NULL;
}

const struct engine_handler *pipeline_handler(struct pipeline *p) { return &p->handler; }

void pipeline_free(struct pipeline *pl)
{
	if (!pl)
		return;
	for (size_t i = 0; i < pl->nproviders; i++) {
		if (pl->providers[i].auth_header)
			explicit_bzero(pl->providers[i].auth_header, strlen(pl->providers[i].auth_header));
		free(pl->providers[i].auth_header);
		free(pl->providers[i].host_header);
		upstream_endpoint_fini(&pl->providers[i].ep);
	}
	for (size_t i = 0; i < pl->nkeys; i++) {
		explicit_bzero(pl->keys[i].secret, pl->keys[i].len);
		free(pl->keys[i].secret);
		free(pl->keys[i].name);
	}
	free(pl->providers);
	free(pl->routes);
	free(pl->keys);
	free(pl->models_json);
	free(pl);
}
