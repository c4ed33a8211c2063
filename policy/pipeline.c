/* pipeline.c - route, authenticate, forward, relay; translate where dialects differ.
 *
 * Two dialects come in: OpenAI (/v1/chat/completions, /v1/embeddings, /v1/models) and
 * Anthropic (/v1/messages). When the caller's dialect is the provider's, the request body
 * goes upstream as the client sent it (an iovec of its slices, with only the model name
 * spliced) and the response is relayed as it arrives: no buffering of SSE; reading from
 * the upstream pauses while the client is slow to take what was already sent. When the
 * dialects differ, the body is translated (providers/translate) and so is the answer: a
 * stream event by event, a whole body once it has arrived, an error into the caller's
 * error shape.
 */
#include "pipeline.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "core/log.h"
#include "core/sse.h"
#include "core/upstream.h"
#include "providers/provider.h"
#include "providers/translate.h"

#define OUT_HIGH_WATER (256 * 1024)
#define MAX_SSE_EVENT (1024 * 1024)     /* one provider event, when translating */
#define MAX_ERROR_BODY (64 * 1024)      /* a provider's error body we translate */

struct route {
	const char *name;        /* client-facing model name */
	unsigned provider;       /* index into pipeline.providers */
	const char *upstream_model;
	uint32_t max_tokens;     /* the catalog's default, for dialects that require one */
};

struct provider {
	const struct config_provider *cfg;
	const struct provider_api *api;
	char *auth_header; /* "Authorization: Bearer ...\r\n", "x-api-key: ...\r\n..." or "" */
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
	struct buf models_openai;    /* GET /v1/models bodies, one per dialect */
	struct buf models_anthropic;
};

struct pl_worker {
	struct pipeline *pl;
	struct upstream_pool **pools; /* one per provider */
};

/* How the answer reaches the client. */
enum relay {
	RELAY_RAW,    /* same dialect: the bytes as they come */
	RELAY_STREAM, /* translated SSE, event by event */
	RELAY_BODY,   /* translated success body, gathered whole first */
	RELAY_ERROR,  /* the provider's error body, gathered, translated */
};

/* Per request that goes upstream. */
struct px {
	struct exchange *ex;
	struct pl_worker *pw;
	const struct route *route;
	struct upstream_call call;
	enum dialect in, up;     /* the caller's dialect, the provider's */
	enum relay relay;
	bool client_usage;       /* an OpenAI caller asked for stream_options.include_usage */
	bool too_large;          /* a gathered body passed its bound */
	int status;              /* the provider's */
	char retry_after[64];    /* the provider's retry-after, kept for translated errors */
	struct buf req;          /* translated request body (until the response head) */
	struct buf res;          /* gathered response body (RELAY_BODY, RELAY_ERROR) */
	struct buf out;          /* translated events not yet handed to the exchange */
	struct xlat_stream *xs;
	struct sse_parser sse;
	bool xlat_failed;        /* an event could not be translated */
	struct iovec iov[4];
	size_t head_len;
	char head[];             /* upstream request head */
};

/* ---------------------------------------------------------------- errors */

static enum xlat_err_kind kind_for_status(int status)
{
	switch (status) {
	case 401: return XERR_AUTHENTICATION;
	case 403: return XERR_PERMISSION;
	case 429: return XERR_RATE_LIMIT;
	case 500: return XERR_INTERNAL;
	default: return status >= 500 ? XERR_UPSTREAM : XERR_INVALID_REQUEST;
	}
}

/* An error the gateway makes, in the caller's dialect. message must not contain secrets. */
static void respond_error(struct exchange *ex, enum dialect d, int status, const char *code,
			  const char *message, const char *extra_headers)
{
	struct buf b = { 0 };
	xlat_error_body(d, kind_for_status(status), status, code, message, &b);
	ex_respond(ex, status, "application/json", extra_headers,
		   b.p ? slice_of(b.p, b.len) : SLICE_LIT("{}\n"));
	buf_free(&b);
}

/* The dialect a request speaks, by its path: Anthropic's is /v1/messages. */
static enum dialect dialect_of(const struct exchange *ex)
{
	struct slice t = ex->req.target;
	static const char m[] = "/v1/messages";
	if (t.p && t.n >= sizeof(m) - 1 && memcmp(t.p, m, sizeof(m) - 1) == 0 &&
	    (t.n == sizeof(m) - 1 || t.p[sizeof(m) - 1] == '?' || t.p[sizeof(m) - 1] == '/'))
		return DIALECT_ANTHROPIC;
	return DIALECT_OPENAI;
}

static void pl_on_reject(struct exchange *ex, int status, const char *why)
{
	respond_error(ex, dialect_of(ex), status, NULL, why, NULL);
}

/* ---------------------------------------------------------------- upstream relay */

static void px_free(struct px *px)
{
	px->ex->user = NULL;
	buf_free(&px->req);
	buf_free(&px->res);
	buf_free(&px->out);
	if (px->xs) {
		xlat_stream_free(px->xs);
		sse_free(&px->sse);
	}
	free(px);
}

static void release_buffer(void *arg, uint64_t bid)
{
	worker_buffer_unref(arg, (uint16_t)bid);
}

static void release_malloc(void *arg, uint64_t unused) { free(arg); }

/* The response headers the gateway adds: who served, and the provider's retry-after. */
static void px_extra_headers(const struct px *px, char *out, size_t cap)
{
	const struct provider *prov = &px->pw->pl->providers[px->route->provider];
	int n = snprintf(out, cap, "x-penstock-provider: %s\r\nx-penstock-model: %s\r\n",
			 prov->cfg->name, px->route->upstream_model);
	if (px->retry_after[0] && n > 0 && (size_t)n < cap)
		snprintf(out + n, cap - (size_t)n, "retry-after: %s\r\n", px->retry_after);
}

static bool px_on_event(void *arg, const struct sse_event *ev)
{
	struct px *px = arg;
	if (xlat_stream_event(px->xs, ev->type, ev->data, &px->out) < 0) {
		px->xlat_failed = true;
		return false;
	}
	return true;
}

/* Hand a buffer to the exchange as it is (no copy); b is left empty. False if the
 * exchange went away (its on_abort has run). */
static bool write_buf(struct exchange *ex, struct buf *b)
{
	char *p = b->p;
	size_t n = b->len;
	*b = (struct buf){ 0 };
	if (!n) {
		free(p);
		return true;
	}
	return ex_write(ex, slice_of(p, n), release_malloc, p, 0);
}

/* The translated events so far, to the client. False if the exchange went away: px is
 * gone then (on_abort freed it). */
static bool px_flush(struct px *px) { return write_buf(px->ex, &px->out); }

/* The last events of a translated stream: px is freed first, then the stream ends. */
static void px_stream_close(struct px *px)
{
	struct exchange *ex = px->ex;
	struct buf out = px->out;
	px->out = (struct buf){ 0 };
	px_free(px);
	if (write_buf(ex, &out))
		ex_finish(ex);
}

static void px_on_head(void *arg, const struct http1_response *res)
{
	struct px *px = arg;
	const struct http1_header *ct = http1_find_header(res->headers, res->nheaders, "content-type");
	const struct http1_header *ra = http1_find_header(res->headers, res->nheaders, "retry-after");
	px->status = res->status;
	if (ra && ra->value.n < sizeof(px->retry_after))
		snprintf(px->retry_after, sizeof(px->retry_after), SLICE_FMT, SLICE_ARG(ra->value));
	buf_free(&px->req); /* sent: the upstream call no longer needs it */
	char extra[512];
	px_extra_headers(px, extra, sizeof(extra));

	bool ok = res->status >= 200 && res->status < 300;
	if (px->in != px->up) {
		bool sse = ct && ct->value.n >= 17 && memmem(ct->value.p, ct->value.n,
							       "text/event-stream", 17);
		if (!ok) {
			px->relay = RELAY_ERROR;
		} else if (sse) {
			px->relay = RELAY_STREAM;
			px->xs = xlat_stream_new(px->up, px->in, px->route->name, px->client_usage);
			if (!px->xs) {
				upstream_cancel(&px->call);
				struct exchange *ex = px->ex;
				px_free(px);
				respond_error(ex, dialect_of(ex), 503, NULL, "gateway out of memory", NULL);
				return;
			}
			sse_init(&px->sse, MAX_SSE_EVENT);
			size_t n = strlen(extra);
			snprintf(extra + n, sizeof(extra) - n, "cache-control: no-cache\r\n");
			ex_begin(px->ex, 200, "text/event-stream", extra, -1);
		} else {
			px->relay = RELAY_BODY;
		}
		return;
	}
	char ctype[128] = "application/json";
	if (ct)
		snprintf(ctype, sizeof(ctype), SLICE_FMT, SLICE_ARG(ct->value));
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

/* The upstream's stream could not be read or translated: end the client's stream with
 * an error event in its dialect, and drop the upstream. */
static void px_stream_abort(struct px *px, const char *why)
{
	struct exchange *ex = px->ex;
	log_warn("request %s: provider %s: %s", ex->id,
		 px->pw->pl->providers[px->route->provider].cfg->name, why);
	upstream_cancel(&px->call);
	xlat_stream_error(px->xs, XERR_UPSTREAM, why, &px->out);
	px_stream_close(px);
}

static bool px_on_data(void *arg, struct slice data, uint16_t bid)
{
	struct px *px = arg;
	struct worker *w = ex_worker(px->ex);
	size_t bound;

	switch (px->relay) {
	case RELAY_RAW:
		if (!ex_write(px->ex, data, release_buffer, w, bid))
			return false; /* the exchange was aborted: px is gone, the call cancelled */
		break;
	case RELAY_STREAM: {
		int r = sse_feed(&px->sse, data.p, data.n, px_on_event, px);
		worker_buffer_unref(w, bid);
		if (r < 0 || px->xlat_failed) {
			px_stream_abort(px, r < 0 ? "the provider's stream is malformed (event too long)"
						  : "the provider sent an event that cannot be translated");
			return false;
		}
		if (!px_flush(px))
			return false;
		break;
	}
	case RELAY_BODY:
	case RELAY_ERROR:
		bound = px->relay == RELAY_BODY ? XLAT_MAX_OUT : MAX_ERROR_BODY;
		if (!px->too_large && !buf_append(&px->res, data.p, data.n, bound))
			px->too_large = true;
		worker_buffer_unref(w, bid);
		return true;
	}
	if (ex_pending(px->ex) > OUT_HIGH_WATER) {
		ex_on_drain(px->ex, px_resume);
		return false;
	}
	return true;
}

/* A translated whole response: px is freed first, then the body buffer goes to the
 * exchange as it is. */
static void px_respond_body(struct px *px, int status, struct buf *body)
{
	char extra[512];
	px_extra_headers(px, extra, sizeof(extra));
	struct exchange *ex = px->ex;
	px_free(px);
	ex_begin(ex, status, "application/json", extra, (int64_t)body->len);
	if (write_buf(ex, body))
		ex_finish(ex);
}

static void px_on_end(void *arg)
{
	struct px *px = arg;
	struct exchange *ex = px->ex;
	struct buf body = { 0 };
	struct usage usage;

	switch (px->relay) {
	case RELAY_RAW:
		break;
	case RELAY_STREAM:
		xlat_stream_end(px->xs, &px->out);
		px_stream_close(px);
		return;
	case RELAY_BODY:
		if (px->too_large || xlat_response(px->up, px->in, slice_of(px->res.p, px->res.len),
						   px->route->name, &body, &usage) < 0) {
			log_warn("request %s: provider %s: %s", ex->id,
				 px->pw->pl->providers[px->route->provider].cfg->name,
				 px->too_large ? "response too large to translate"
					       : "response could not be translated");
			buf_free(&body);
			enum dialect d = px->in;
			px_free(px);
			respond_error(ex, d, 502, "upstream_bad_response",
				      "the provider's response could not be read", NULL);
			return;
		}
		px_respond_body(px, px->status, &body);
		return;
	case RELAY_ERROR: {
		int status = xlat_error(px->up, px->in, px->status,
					slice_of(px->res.p, px->too_large ? 0 : px->res.len), &body);
		px_respond_body(px, status, &body);
		return;
	}
	}
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
	if (head_seen && px->relay == RELAY_RAW) {
		/* The status line is out: relay what came, then cut the connection so the
		 * client cannot mistake the response for complete. */
		px_free(px);
		ex_truncate(ex);
		return;
	}
	if (head_seen && px->relay == RELAY_STREAM) {
		/* A translated stream can end honestly: an error event, then its terminator. */
		xlat_stream_error(px->xs, XERR_UPSTREAM, upstream_error_text(err), &px->out);
		px_stream_close(px);
		return;
	}
	bool timeout = err == UP_E_CONNECT_TIMEOUT || err == UP_E_FIRST_BYTE_TIMEOUT ||
		       err == UP_E_IDLE_TIMEOUT;
	enum dialect d = px->in;
	px_free(px);
	respond_error(ex, d, timeout ? 504 : 502, timeout ? "upstream_timeout" : "upstream_unavailable",
		      upstream_error_text(err), NULL);
}

static const struct upstream_callbacks px_callbacks = {
	.on_head = px_on_head, .on_data = px_on_data, .on_end = px_on_end, .on_error = px_on_error,
};

/* ---------------------------------------------------------------- endpoints */

/* Constant time in the secret, whatever the candidate. */
static bool key_matches(const struct client_key *k, struct slice key)
{
	unsigned char diff = k->len != key.n;
	for (size_t j = 0; j < k->len; j++)
		diff |= (unsigned char)(k->secret[j] ^ (j < key.n ? key.p[j] : 0));
	return !diff;
}

/* The caller's key: Authorization: Bearer, or (Anthropic dialect) x-api-key. */
static bool client_key_of(const struct exchange *ex, enum dialect d, struct slice *key)
{
	const struct http1_header *h = ex_header(ex, "authorization");
	if (h && h->value.n >= 8 && strncasecmp(h->value.p, "Bearer ", 7) == 0) {
		*key = (struct slice){ h->value.p + 7, h->value.n - 7 };
		return true;
	}
	h = d == DIALECT_ANTHROPIC ? ex_header(ex, "x-api-key") : NULL;
	if (h && h->value.n) {
		*key = h->value;
		return true;
	}
	return false;
}

static const struct client_key *authenticate(const struct pipeline *pl, const struct exchange *ex,
					     enum dialect d, bool *missing)
{
	struct slice key;
	*missing = !client_key_of(ex, d, &key);
	if (*missing)
		return NULL;
	const struct client_key *found = NULL;
	/* Compare against every key so timing says nothing about which one matched. */
	for (size_t i = 0; i < pl->nkeys; i++)
		if (key_matches(&pl->keys[i], key))
			found = &pl->keys[i];
	return found;
}

/* Client headers that go upstream: only those the operator named (forward_headers:
 * exact names or prefixes ending in '*'), and never credentials or framing. Anthropic's
 * feature flags (anthropic-beta) follow a request that stays in its dialect. */
static bool forwardable(const struct config *cfg, struct slice name, bool anthropic_beta)
{
	static const char *const never[] = { "authorization", "x-api-key", "host", "content-length",
		"transfer-encoding", "connection", "keep-alive", "expect", "te", "upgrade",
		"proxy-authorization", "cookie", "anthropic-version" };
	for (size_t i = 0; i < sizeof(never) / sizeof(never[0]); i++)
		if (slice_ieq_cstr(name, never[i]))
			return false;
	if (anthropic_beta && slice_ieq_cstr(name, "anthropic-beta"))
		return true;
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

/* Bytes the forwarded headers take, or (out != NULL) write them. */
static size_t forward_headers(const struct config *cfg, const struct exchange *ex,
			      bool anthropic_beta, char *out)
{
	size_t n = 0;
	for (unsigned i = 0; i < ex->req.nheaders; i++) {
		const struct http1_header *h = &ex->req.headers[i];
		if (!forwardable(cfg, h->name, anthropic_beta))
			continue;
		if (out) {
			memcpy(out + n, h->name.p, h->name.n);
			memcpy(out + n + h->name.n, ": ", 2);
			memcpy(out + n + h->name.n + 2, h->value.p, h->value.n);
			memcpy(out + n + h->name.n + 2 + h->value.n, "\r\n", 2);
		}
		n += h->name.n + h->value.n + 4;
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

/* A call for route, its head written for path and a body of body_len bytes; room is
 * left after the head for `spare` bytes. NULL (answered 503) if out of memory. */
static struct px *px_new(struct pl_worker *pw, struct exchange *ex, const struct route *route,
			 enum dialect in, const char *path, size_t body_len, size_t spare)
{
	struct pipeline *pl = pw->pl;
	const struct provider *prov = &pl->providers[route->provider];
	bool beta = in == prov->api->dialect && in == DIALECT_ANTHROPIC;
	size_t fwd_len = forward_headers(pl->cfg, ex, beta, NULL);
	/* The head's fixed text and numbers take < 200 bytes. */
	size_t cap = 256 + strlen(prov->cfg->path_prefix) + strlen(path) +
		     strlen(prov->auth_header) + strlen(prov->host_header) + fwd_len + spare;
	struct px *px = calloc(1, sizeof(*px) + cap);
	if (!px) {
		respond_error(ex, in, 503, NULL, "gateway out of memory", NULL);
		return NULL;
	}
	px->ex = ex;
	px->pw = pw;
	px->route = route;
	px->in = in;
	px->up = prov->api->dialect;
	int n = snprintf(px->head, cap,
			 "POST %s%s HTTP/1.1\r\n%s%s"
			 "Content-Type: application/json\r\nContent-Length: %zu\r\n"
			 "x-request-id: %s\r\n",
			 prov->cfg->path_prefix, path, prov->host_header, prov->auth_header, body_len,
			 ex->id);
	px->head_len = (size_t)n;
	px->head_len += forward_headers(pl->cfg, ex, beta, px->head + px->head_len);
	memcpy(px->head + px->head_len, "\r\n", 2);
	px->head_len += 2;
	return px;
}

static void px_start(struct px *px, unsigned niov)
{
	px->ex->user = px;
	upstream_call_start(&px->call, px->pw->pools[px->route->provider], px->iov, niov,
			    &px_callbacks, px);
}

/* Same dialect: the body as the client sent it, the model name spliced when the catalog
 * maps it to another upstream name. model_val is the raw value slice of "model". */
static void forward_same_dialect(struct pl_worker *pw, struct exchange *ex,
				 const struct route *route, enum dialect d, const char *path,
				 struct slice model_val, struct slice model)
{
	struct slice before = { ex->body.p, (size_t)(model_val.p - ex->body.p) };
	struct slice after = { model_val.p + model_val.n, ex->body.n - before.n - model_val.n };
	bool splice = !slice_eq_cstr(model, route->upstream_model);
	size_t quoted_len = strlen(route->upstream_model) + 2;
	size_t body_len = splice ? before.n + quoted_len + after.n : ex->body.n;

	struct px *px = px_new(pw, ex, route, d, path, body_len, quoted_len + 1);
	if (!px)
		return;
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
	px_start(px, niov);
}

/* The model a request names, checked; NULL (answered) if there is none or it is unknown. */
static const struct route *request_route(struct pipeline *pl, struct exchange *ex, enum dialect d,
					 struct slice model_val, struct slice *model)
{
	if (!model_val.p || !json_plain_string(model_val, model) || model->n == 0) {
		respond_error(ex, d, 400, NULL,
			      d == DIALECT_ANTHROPIC ? "model: Field required"
						     : "you must provide a model parameter",
			      NULL);
		return NULL;
	}
	const struct route *route = find_route(pl, *model);
	if (!route) {
		char msg[256];
		snprintf(msg, sizeof(msg),
			 "The model `%.*s` does not exist or you do not have access to it.",
			 (int)(model->n > 100 ? 100 : model->n), model->p);
		respond_error(ex, d, 404, "model_not_found", msg, NULL);
	}
	return route;
}

static void bad_json(struct exchange *ex, enum dialect d)
{
	respond_error(ex, d, 400, NULL,
		      "We could not parse the JSON body of your request: expected a JSON object.",
		      NULL);
}

/* POST /v1/chat/completions (OpenAI) and /v1/messages (Anthropic). */
static void handle_chat(struct pl_worker *pw, struct exchange *ex, enum dialect in)
{
	struct pipeline *pl = pw->pl;
	static const char *const keys[] = { "model", "stream", "stream_options" };
	struct slice vals[3], model;
	if (json_scan_object(ex->body, keys, vals, 3) < 0) {
		bad_json(ex, in);
		return;
	}
	const struct route *route = request_route(pl, ex, in, vals[0], &model);
	if (!route)
		return;
	const struct provider *prov = &pl->providers[route->provider];
	if (in == prov->api->dialect) {
		forward_same_dialect(pw, ex, route, in, prov->api->chat_path, vals[0], model);
		return;
	}

	bool stream = vals[1].p && json_is_true(vals[1]);
	bool client_usage = false;
	if (in == DIALECT_OPENAI && vals[2].p) {
		static const char *const so_keys[] = { "include_usage" };
		struct slice iu;
		client_usage = json_scan_object(vals[2], so_keys, &iu, 1) == 0 && iu.p &&
			       json_is_true(iu);
	}
	struct xlat_request_opts o = {
		.upstream_model = route->upstream_model,
		.default_max_tokens = route->max_tokens,
		.stream_usage = stream && prov->api->dialect == DIALECT_OPENAI,
	};
	struct buf body = { 0 };
	char err[512];
	if (xlat_request(in, prov->api->dialect, ex->body, &o, &body, err, sizeof(err)) < 0) {
		buf_free(&body);
		respond_error(ex, in, 400, NULL, err, NULL);
		return;
	}
	struct px *px = px_new(pw, ex, route, in, prov->api->chat_path, body.len, 0);
	if (!px) {
		buf_free(&body);
		return;
	}
	px->req = body;
	px->client_usage = client_usage;
	px->iov[0] = (struct iovec){ px->head, px->head_len };
	px->iov[1] = (struct iovec){ px->req.p, px->req.len };
	px_start(px, 2);
}

/* POST /v1/embeddings: OpenAI dialect, to providers that have the endpoint. */
static void handle_embeddings(struct pl_worker *pw, struct exchange *ex)
{
	struct pipeline *pl = pw->pl;
	static const char *const keys[] = { "model" };
	struct slice val, model;
	if (json_scan_object(ex->body, keys, &val, 1) < 0) {
		bad_json(ex, DIALECT_OPENAI);
		return;
	}
	const struct route *route = request_route(pl, ex, DIALECT_OPENAI, val, &model);
	if (!route)
		return;
	const struct provider *prov = &pl->providers[route->provider];
	if (!prov->api->embeddings_path) {
		char msg[256];
		snprintf(msg, sizeof(msg), "The model `%s` does not support embeddings.", route->name);
		respond_error(ex, DIALECT_OPENAI, 400, "model_not_supported", msg, NULL);
		return;
	}
	forward_same_dialect(pw, ex, route, DIALECT_OPENAI, prov->api->embeddings_path, val, model);
}

/* GET /v1/models: OpenAI's list, or Anthropic's when the caller sends anthropic-version
 * (the Anthropic SDKs always do). */
static void list_models(struct pl_worker *pw, struct exchange *ex)
{
	const struct buf *b = ex_header(ex, "anthropic-version") ? &pw->pl->models_anthropic
								 : &pw->pl->models_openai;
	ex_respond(ex, 200, "application/json", NULL, slice_of(b->p, b->len));
}

static bool path_is(struct slice path, const char *p) { return slice_eq_cstr(path, p); }

enum endpoint { EP_NONE, EP_CHAT, EP_MESSAGES, EP_EMBEDDINGS, EP_MODELS };

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
	enum dialect d = dialect_of(ex);

	if (path_is(path, "/healthz") || path_is(path, "/readyz")) {
		if (!get) {
			respond_error(ex, d, 405, NULL, "method not allowed", "Allow: GET\r\n");
			return;
		}
		bool ready = !worker_stopping(ex_worker(ex)) || path_is(path, "/healthz");
		const char *body = ready ? "{\"status\":\"ok\"}\n" : "{\"status\":\"stopping\"}\n";
		ex_respond(ex, ready ? 200 : 503, "application/json", NULL, slice_cstr(body));
		return;
	}
	enum endpoint ep = path_is(path, "/v1/chat/completions") ? EP_CHAT
			   : path_is(path, "/v1/messages")       ? EP_MESSAGES
			   : path_is(path, "/v1/embeddings")     ? EP_EMBEDDINGS
			   : path_is(path, "/v1/models")         ? EP_MODELS
								 : EP_NONE;
	if (ep == EP_NONE) {
		char msg[256];
		snprintf(msg, sizeof(msg), "Unknown request URL: %.*s %.*s",
			 (int)(ex->req.method.n > 16 ? 16 : ex->req.method.n), ex->req.method.p,
			 (int)(path.n > 128 ? 128 : path.n), path.p);
		respond_error(ex, d, 404, "unknown_url", msg, NULL);
		return;
	}
	if (ep == EP_MODELS ? !get : !post) {
		respond_error(ex, d, 405, NULL, "method not allowed",
			      ep == EP_MODELS ? "Allow: GET\r\n" : "Allow: POST\r\n");
		return;
	}
	bool missing;
	if (!authenticate(pl, ex, d, &missing)) {
		const char *msg = !missing ? (d == DIALECT_ANTHROPIC ? "invalid x-api-key"
								     : "Incorrect API key provided.")
			: d == DIALECT_ANTHROPIC
				? "You didn't provide an API key. Send it as 'x-api-key: KEY' or "
				  "'Authorization: Bearer KEY'."
				: "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.";
		respond_error(ex, d, 401, "invalid_api_key", msg, NULL);
		return;
	}
	switch (ep) {
	case EP_CHAT:
		handle_chat(pw, ex, DIALECT_OPENAI);
		break;
	case EP_MESSAGES:
		handle_chat(pw, ex, DIALECT_ANTHROPIC);
		break;
	case EP_EMBEDDINGS:
		handle_embeddings(pw, ex);
		break;
	case EP_MODELS:
		list_models(pw, ex);
		break;
	case EP_NONE:
		break;
	}
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
			log_error("provider %s: its connection pool could not be set up", cp->name);
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

/* The two GET /v1/models bodies: OpenAI's list and Anthropic's. */
static bool models_bodies(const struct config *cfg, struct buf *oa, struct buf *an)
{
	char name[512], line[1400];
	bool ok = true;
	ok &= buf_append(oa, "{\"object\":\"list\",\"data\":[", 25, SIZE_MAX);
	ok &= buf_append(an, "{\"data\":[", 9, SIZE_MAX);
	for (size_t i = 0; i < cfg->nmodels; i++) {
		size_t n = json_escape(name, sizeof(name), slice_cstr(cfg->models[i].name));
		int k = snprintf(line, sizeof(line),
				 "%s{\"id\":\"%.*s\",\"object\":\"model\",\"created\":0,"
				 "\"owned_by\":\"penstock\"}",
				 i ? "," : "", (int)n, name);
		ok &= buf_append(oa, line, (size_t)k, SIZE_MAX);
		k = snprintf(line, sizeof(line),
			     "%s{\"type\":\"model\",\"id\":\"%.*s\",\"display_name\":\"%.*s\","
			     "\"created_at\":\"1970-01-01T00:00:00Z\"}",
			     i ? "," : "", (int)n, name, (int)n, name);
		ok &= buf_append(an, line, (size_t)k, SIZE_MAX);
	}
	ok &= buf_append(oa, "]}\n", 3, SIZE_MAX);
	const char *first = cfg->nmodels ? cfg->models[0].name : NULL;
	const char *last = cfg->nmodels ? cfg->models[cfg->nmodels - 1].name : NULL;
	char a[512] = "null", b[512] = "null";
	if (first) {
		snprintf(a, sizeof(a), "\"%.*s\"", (int)json_escape(name, sizeof(name), slice_cstr(first)), name);
		snprintf(b, sizeof(b), "\"%.*s\"", (int)json_escape(name, sizeof(name), slice_cstr(last)), name);
	}
	int k = snprintf(line, sizeof(line), "],\"has_more\":false,\"first_id\":%s,\"last_id\":%s}\n", a, b);
	ok &= buf_append(an, line, (size_t)k, SIZE_MAX);
	return ok;
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
		p->api = provider_api(cp->kind);
		p->auth_header = provider_auth_headers(cp->kind, key, cp->api_version);
		if (key) {
			explicit_bzero(key, strlen(key));
			free(key);
		}
		if (!p->auth_header) {
			snprintf(err, errlen, "out of memory");
			goto fail;
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
		r->max_tokens = m->max_tokens;
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
	if (!models_bodies(cfg, &pl->models_openai, &pl->models_anthropic)) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
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
	buf_free(&pl->models_openai);
	buf_free(&pl->models_anthropic);
	free(pl);
}
