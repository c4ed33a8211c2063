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
 *
 * Which target serves is policy/router's choice. An attempt that fails before the client
 * saw a byte (refused, reset, connect or first-byte timeout, a status in retry.on_status)
 * moves on to the model's next target, then to its fallback models, whatever their
 * dialect: the request is rebuilt for each attempt from the client's body, which lives as
 * long as the exchange. Once all were tried, another round starts after a capped,
 * jittered exponential backoff, within the attempt budget and the deadline. A stream that
 * breaks after the client saw its head ends with an error event in the client's dialect.
 */
#include "pipeline.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "core/fmt.h"
#include "core/json.h"
#include "core/log.h"
#include "core/sse.h"
#include "core/upstream.h"
#include "policy/accesslog.h"
#include "policy/gov.h"
#include "policy/metrics.h"
#include "policy/redact.h"
#include "providers/provider.h"
#include "providers/tokcount.h"
#include "providers/translate.h"
#include "healthcheck.h"
#include "router.h"
#include "snapshot.h"

#define OUT_HIGH_WATER (256 * 1024)
#define MAX_SSE_EVENT (1024 * 1024)     /* one provider event, when translating */
#define MAX_ERROR_BODY (64 * 1024)      /* a provider's error body we translate */
#define MAX_USAGE_BODY (1024 * 1024)    /* a same-dialect answer copied for its usage */
#define DEFAULT_MAX_COMPLETION 4096     /* reserved when neither request nor catalog says */
#define PX_MAX_ATTEMPTS 8               /* retry.attempts is at most this */
#define PROMPT_WALK_MIN 4096            /* smaller bodies bound their prompt by their size */

/* The target of the current attempt, as the relay code sees it. */
struct route {
	const char *name;        /* client-facing model name */
	unsigned provider;       /* index into the snapshot's providers */
	const char *upstream_model;
	uint32_t max_tokens;     /* the catalog's default, for dialects that require one */
};

/* One attempt of a request, kept for the response headers and the audit record. */
struct attempt {
	const struct router_model *model;
	unsigned target;          /* index into model->targets */
	int status;               /* the provider's, 0 if it never answered */
	enum upstream_error err;  /* 0 if none */
	bool skipped;             /* not sent: the body cannot be expressed in its dialect */
	uint32_t ms;              /* to the first byte, or to the failure */
};

/* What a worker holds of one snapshot: a connection pool per provider and the router's
 * per-worker state, and how many of its requests still run on it. A worker moves to a new
 * snapshot at its next turn; the old view goes when its last request ends. */
struct view {
	struct snapshot *s;           /* one reference */
	struct upstream_pool **pools; /* one per provider of s */
	struct router_worker *rw;
	unsigned inflight;            /* px on this view */
	struct view *next;            /* retired views still draining */
};

struct pipeline {
	const struct config *boot;   /* the config the process started with: what a reload
				      * cannot change (teams, audit, limits) is read here */
	_Atomic(struct snapshot *) cur; /* providers, catalog, routing: replaced by a reload */
	_Atomic uint64_t reloads_applied, reloads_refused;
	pthread_mutex_t reload_lock; /* serialises reloads (held while one builds) */
	/* Held only to swap cur, and by a reader between loading cur and taking a reference to
	 * it: a snapshot's "current" reference is dropped after the swap, so one loaded under
	 * this lock cannot be freed before the reader's own reference is taken. */
	pthread_mutex_t publish_lock;
	struct router_health *health; /* breaker state, carried from one snapshot to the next */
	struct healthcheck *checks;  /* active health checks of the current snapshot's providers */
	struct engine_handler handler;
	struct gov *gov;             /* keys, limits, budgets; NULL when only checking */
	struct metrics *metrics;     /* may be NULL */
	struct accesslog *alog;      /* may be NULL */
	struct tokcount_reg *tok;    /* tokenizers */
};

struct pl_worker {
	struct pipeline *pl;
	struct worker *w;
	struct view *view;            /* the current snapshot's */
	struct view *retired;         /* older ones with requests still on them */
	uint64_t rng;                 /* backoff jitter */
	struct tokcount_ctx *tc;      /* this worker's tokenizer state */
	unsigned id;
	uint64_t alog_since_ms;       /* access log lines have waited since (0: none) */
	/* Strict audit durability: responses whose last byte waits for their record's commit,
	 * in store sequence order (one producer per worker), and the read armed on the store's
	 * eventfd for this worker that says when to look again. */
	struct held { struct ex_hold *h; uint64_t seq; } *held;
	size_t held_head, held_len, held_cap; /* a ring; cap a power of two */
	struct ev ev_store;
	uint64_t store_count;
	bool store_armed;
};

/* How the answer reaches the client. */
enum relay {
	RELAY_RAW,    /* same dialect: the bytes as they come */
	RELAY_STREAM, /* translated SSE, event by event */
	RELAY_BODY,   /* translated success body, gathered whole first */
	RELAY_ERROR,  /* the provider's error body, gathered, translated */
};

/* What the request is, for building each attempt. */
enum px_kind { PX_CHAT, PX_EMBEDDINGS };

/* Per request that goes upstream. */
struct px {
	struct exchange *ex;
	struct pl_worker *pw;
	struct view *v;          /* the snapshot it runs on, start to end */
	const struct route *route; /* &cur */
	struct route cur;
	struct upstream_call call;
	enum dialect in, up;     /* the caller's dialect, the provider's */
	enum relay relay;
	bool client_usage;       /* an OpenAI caller asked for stream_options.include_usage */
	bool too_large;          /* a gathered body passed its bound */
	int status;              /* the provider's */
	char retry_after[64];    /* the provider's retry-after, kept for translated errors */
	struct buf req;          /* translated request body (until the response head) */
	struct buf res;          /* gathered response body (RELAY_BODY, RELAY_ERROR) */
	struct slice answer;     /* the translated body as the client gets it, while px ends */
	bool keep_bodies;        /* the caller's team has audit_bodies */
	struct buf streamed;     /* keep_bodies: the stream's bytes so far (bounded) */
	struct buf out;          /* translated events not yet handed to the exchange */
	struct xlat_stream *xs;
	struct sse_parser sse;
	bool xlat_failed;        /* an event could not be translated */
	/* routing and retries */
	enum px_kind kind;
	bool stream;
	const struct router_model *asked; /* the model the client named */
	const struct router_model *model; /* this attempt's: asked or one of its fallbacks */
	const struct router_target *target;
	unsigned tidx;
	bool picked, probe;      /* a router pick awaits its report */
	bool fallback_status;    /* the response's status asks for another attempt */
	unsigned chain;          /* 0: asked's targets; k: those of asked->fallback[k - 1] */
	uint64_t tried;          /* targets of `model` tried in this round */
	unsigned round, round_sent;
	struct route_req rq;
	uint64_t attempt_us;     /* when this attempt started */
	struct slice model_val;  /* the client's "model" value (raw) and the name in it */
	struct slice model_name;
	struct attempt attempts[PX_MAX_ATTEMPTS];
	unsigned nattempts;
	struct buf last_err;     /* the previous attempt's error body, for the client if no
				  * attempt is left */
	int last_status;
	enum upstream_error last_upe;
	enum dialect last_up;
	unsigned nsent;          /* attempts that went upstream */
	char why[256];           /* why a target was skipped (its dialect cannot take the body) */
	char last_ctype[64];
	bool raw_sse;            /* same-dialect SSE relayed in whole events */
	char sse_last[2];        /* the two bytes before the data now relayed */
	struct buf tail;         /* an event not yet whole */
	struct iovec iov[6];
	size_t head_len;
	char *head;              /* upstream request head, per attempt */
	/* governance and accounting */
	struct gov_ticket ticket;
	uint64_t prompt_estimate; /* the gateway's prompt estimate at admission */
	struct tokcount_tokenizer prompt_tk; /* to count the prompt if the provider does not */
	bool served;             /* a provider answered 2xx: the request is billed */
	struct usage usage;      /* what the provider reported (non-streamed answers) */
	struct tokcount_stream *tcs; /* completion tokens counted as the stream passes */
	struct sse_parser acct;  /* same-dialect streams: events parsed for counting */
	bool acct_on;
	bool cut;                /* the stream reached what its budget reservation covers */
	bool stream_done;        /* the upstream's stream ended cleanly */
	bool verdict_due;        /* a stream began: the router hears how it ends */
	bool strip_usage;        /* the gateway asked for include_usage; the client did not */
	bool has_stream_options; /* the client's body has stream_options */
	size_t drop_start, drop_end; /* this fragment's usage-only event, to leave out */
	bool drop_held;          /* or the one the held tail began, completed by this fragment */
	/* what the metrics and the access log say of it (px_observe) */
	const struct gov_caller *caller_p; /* &ticket.caller once authenticated */
	struct gov_caller caller;
	int sent;                /* the status the client got (0: none yet), 499: it left */
	const char *error;       /* a short kind when it failed: "upstream_timeout", ... */
	uint64_t first_byte_us;  /* when the response began (0: not yet) */
	uint64_t end_us;         /* when it ended: one clock read for the audit, metrics, log */
	uint64_t upstream_us;    /* the last attempt's time, sent to its end */
	struct gov_usage billed;
	int64_t cost;
	enum metrics_usage usage_src;
	bool disagreed;
	struct ex_hold *hold;    /* strict audit: the response's end waits for the record */
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

static void observe_early(struct exchange *ex, enum dialect d, int status, const char *error);

static void pl_on_reject(struct exchange *ex, int status, const char *why)
{
	observe_early(ex, dialect_of(ex), status, "bad_request");
	respond_error(ex, dialect_of(ex), status, NULL, why, NULL);
}

/* ---------------------------------------------------------------- upstream relay */

static void px_unpick(struct px *px);
static void view_refresh(struct pl_worker *pw);
static void view_leave(struct pl_worker *pw, struct view *v);

static uint64_t mono_us(void);
static const char *error_token(enum upstream_error e);
static void px_settle(struct px *px, int status);

static void px_observe(struct px *px);
static int team_index(const struct pipeline *pl, const struct gov_caller *c);

/* status: what the client is about to get (499: it went away first), for the audit,
 * the metrics and the access log. */
static void px_free(struct px *px, int status)
{
	if (status)
		px->sent = status;
	px->end_us = mono_us();
	px_settle(px, status);
	px_observe(px);
	px_unpick(px);
	px->ex->user = NULL;
	free(px->head);
	buf_free(&px->req);
	buf_free(&px->res);
	buf_free(&px->out);
	buf_free(&px->last_err);
	buf_free(&px->tail);
	buf_free(&px->streamed);
	if (px->xs) {
		xlat_stream_free(px->xs);
		sse_free(&px->sse);
	}
	if (px->acct_on)
		sse_free(&px->acct);
	tokcount_stream_free(px->tcs);
	view_leave(px->pw, px->v);
	free(px);
}

/* ---- strict audit durability (docs/audit.md) ----
 * The response's last byte is held (ex_hold) from before it is queued until the store
 * reports the request's record committed: the worker never waits, the client never sees
 * a complete response for a request whose record could still be lost. */

static void strict_arm(struct pl_worker *pw)
{
	if (pw->store_armed)
		return;
	struct io_uring_sqe *sqe = worker_sqe(pw->w);
	io_uring_prep_read(sqe, store_notify_fd(gov_store(pw->pl->gov), pw->id), &pw->store_count,
			   sizeof(pw->store_count), 0);
	io_uring_sqe_set_data(sqe, &pw->ev_store);
	pw->store_armed = true;
}

/* The store decided a batch with records of this worker: release the responses whose
 * record is decided, in order; a record that failed cuts its response short. */
static void strict_done(struct worker *w, struct ev *ev, struct io_uring_cqe *cqe)
{
	struct pl_worker *pw = (struct pl_worker *)((char *)ev - offsetof(struct pl_worker, ev_store));
	struct store *st = gov_store(pw->pl->gov);
	pw->store_armed = false;
	while (pw->held_len) {
		struct held *h = &pw->held[pw->held_head];
		int rc = store_outcome(st, pw->id, h->seq);
		if (rc == -EINPROGRESS)
			break;
		if (rc && rc != -ESTALE)
			log_error("audit: a record failed to commit (%s): its response is cut short",
				  store_strerror(rc));
		ex_unhold(h->h, rc == 0 || rc == -ESTALE);
		pw->held_head = (pw->held_head + 1) & (pw->held_cap - 1);
		pw->held_len--;
	}
	if (pw->held_len)
		strict_arm(pw);
}

/* A held response waits for seq (0: nothing could be queued; it goes at once). */
static void strict_wait(struct pl_worker *pw, struct ex_hold *h, uint64_t seq)
{
	if (!h)
		return;
	if (pw->held_len == pw->held_cap) {
		size_t cap = pw->held_cap ? pw->held_cap * 2 : 64;
		struct held *n = malloc(cap * sizeof(*n));
		if (!n)
			seq = 0;
		for (size_t i = 0; n && i < pw->held_len; i++)
			n[i] = pw->held[(pw->held_head + i) & (pw->held_cap - 1)];
		if (n) {
			free(pw->held);
			pw->held = n;
			pw->held_cap = cap;
			pw->held_head = 0;
		}
	}
	if (!seq) {
		ex_unhold(h, true);
		return;
	}
	pw->held[(pw->held_head + pw->held_len++) & (pw->held_cap - 1)] = (struct held){ h, seq };
	strict_arm(pw);
}

static void px_hold(struct px *px)
{
	if (!px->hold && px->pw->pl->gov && gov_audit_strict(px->pw->pl->gov))
		px->hold = ex_hold(px->ex);
}

/* What every audit record says of its exchange: when, who from, which dialect. */
static void audit_base(struct exchange *ex, enum dialect d, int status, uint64_t now_us,
		       struct audit_rec *a, char *client, size_t client_cap)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	uint64_t start_us = ex->start_ms * 1000;
	uint64_t total = now_us > start_us ? now_us - start_us : 0;
	*a = (struct audit_rec){
		.time_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec - (int64_t)total * 1000,
		.request_id = slice_cstr(ex->id),
		.dialect = d == DIALECT_ANTHROPIC ? AUDIT_DIALECT_ANTHROPIC : AUDIT_DIALECT_OPENAI,
		.status = (uint16_t)status,
		.total_us = total,
	};
	ex_peer(ex, client, client_cap);
	a->client = slice_cstr(client);
}

/* gov's teams are the config's, in its order (a reload keeps it): the caller's team index
 * is its snapshot's. */
static bool team_keeps_bodies(const struct px *px, const struct gov_caller *c)
{
	int t = team_index(px->pw->pl, c);
	return t >= 0 && px->v->s->teams[t].audit_bodies;
}

/* For a team with audit_bodies: the request as sent and the answer as the client got it
 * (a same-dialect copy, or the translated body), redacted and bounded, into bodies[0..1].
 * A body that cannot be redacted is left out, never stored as it was. */
static void px_audit_bodies(const struct px *px, struct audit_rec *a, struct buf bodies[2])
{
	size_t max = px->pw->pl->boot->audit.body_max_bytes;
	a->has_request_body = redact(px->ex->body, max, &bodies[0]) == 0;
	a->request_body = slice_of(bodies[0].p, bodies[0].len);
	if (px->stream) {
		a->response_streamed = true;
		if (px->streamed.len) {
			a->has_response_body = redact(slice_of(px->streamed.p, px->streamed.len), max,
						      &bodies[1]) == 0;
			a->response_body = slice_of(bodies[1].p, bodies[1].len);
		}
		return;
	}
	struct slice answer = px->answer.p	      ? px->answer
			      : px->relay == RELAY_RAW ? slice_of(px->res.p, px->res.len)
						       : (struct slice){ 0 };
	if (!px->nsent || !answer.n)
		return; /* no provider's answer reached the client */
	a->has_response_body = redact(answer, max, &bodies[1]) == 0;
	a->response_body = slice_of(bodies[1].p, bodies[1].len);
}

/* The request's audit record from its state: who called, what was asked, each attempt and
 * who served. Tokens and cost are gov_settle's. Strings point into px (or its config) or
 * bodies (the caller frees them). */
static void px_audit_rec(const struct px *px, int status, struct audit_rec *a, char *client,
			 size_t client_cap, struct buf bodies[2])
{
	audit_base(px->ex, px->in, status, px->end_us, a, client, client_cap);
	const struct gov_caller *c = &px->ticket.caller;
	if (c->key)
		a->key_id = slice_cstr(c->key->id);
	if (c->team)
		a->team = slice_cstr(c->team->name);
	a->model = px->model_name;
	a->stream = px->stream;
	for (unsigned i = 0; i < px->nattempts && i < AUDIT_ATTEMPTS_MAX; i++) {
		const struct attempt *at = &px->attempts[i];
		const struct router_target *t = &at->model->targets[at->target];
		a->attempts[i] = (struct audit_attempt){
			.provider = slice_cstr(px->v->s->providers[t->provider].cfg->name),
			.model = slice_cstr(t->upstream_model),
			.status = (uint16_t)at->status,
			.error = slice_cstr(at->skipped ? "untranslatable"
					    : at->err   ? error_token(at->err)
							: ""),
		};
		a->nattempts = i + 1;
	}
	const struct attempt *last = px->nattempts ? &px->attempts[px->nattempts - 1] : NULL;
	if (last && last->status && px->nsent) { /* the provider that answered */
		a->provider = a->attempts[a->nattempts - 1].provider;
		a->upstream_model = a->attempts[a->nattempts - 1].model;
		uint64_t now = px->end_us, start = px->ex->start_ms * 1000;
		if (px->attempt_us > start)
			a->first_byte_us = px->attempt_us - start + (uint64_t)last->ms * 1000;
		if (now > px->attempt_us)
			a->upstream_us = now - px->attempt_us;
	}
	if (px->keep_bodies)
		px_audit_bodies(px, a, bodies);
}

/* The record of a request refused before it had a state (no or a bad key). */
static void audit_refusal(struct pipeline *pl, struct exchange *ex, enum dialect d, int status)
{
	struct audit_rec a;
	char client[64];
	uint64_t seq;
	if (!pl->gov)
		return;
	audit_base(ex, d, status, mono_us(), &a, client, sizeof(client));
	gov_audit(pl->gov, worker_id(ex_worker(ex)), &a, &seq);
	if (gov_audit_strict(pl->gov))
		strict_wait(worker_state(ex_worker(ex)), ex_hold(ex), seq);
}

/* The request ends: its audit record goes to the store, with its spend when a provider
 * served it (one unit). The usage to bill: the provider's figures where it gave them,
 * else the gateway's own (the prompt counted at admission, the completion counted as the
 * stream passed). */
static void px_settle(struct px *px, int status)
{
	struct gov *g = px->pw->pl->gov;
	if (!g)
		return;
	struct audit_rec a;
	char client[64];
	uint64_t seq;
	struct buf bodies[2] = { { 0 }, { 0 } };
	px_audit_rec(px, status, &a, client, sizeof(client), bodies);
	int64_t now_ns = (int64_t)px->end_us * 1000;
	px_hold(px);
	if (!px->ticket.held || !px->served) {
		gov_release(g, px->pw->id, &px->ticket, now_ns);
		gov_audit(g, px->pw->id, &a, &seq);
		buf_free(&bodies[0]);
		buf_free(&bodies[1]);
		strict_wait(px->pw, px->hold, seq);
		px->hold = NULL;
		return;
	}
	px->usage_src = METRICS_USAGE_PROVIDER;
	struct usage u = px->usage;
	const struct usage *su = px->xs ? xlat_stream_usage(px->xs) : NULL;
	if (!u.present && su && su->present)
		u = *su;
	su = px->tcs ? tokcount_stream_usage(px->tcs) : NULL;
	if (!u.present && su && su->present)
		u = *su;
	uint64_t prompt = u.prompt_tokens;
	if (!prompt) { /* no usage from the provider: the gateway counts the prompt itself */
		px->usage_src = METRICS_USAGE_GATEWAY;
		struct tokcount_prompt p;
		prompt = px->kind == PX_CHAT && tokcount_prompt(px->pw->tc, px->prompt_tk, px->in,
								px->ex->body, TOKCOUNT_PROMPT_COUNT,
								&p) == 0
				 ? (uint64_t)p.tokens
				 : px->prompt_estimate;
	}
	struct gov_usage gu = {
		.prompt_tokens = prompt,
		.completion_tokens = u.completion_tokens,
		.cached_tokens = u.cached_tokens,
	};
	if (px->tcs) {
		/* A stream that did not end cleanly (cut, client gone, upstream broke) never got
		 * the provider's final count: what passed is billed at least. */
		uint64_t counted = (uint64_t)tokcount_stream_end(px->tcs);
		if (u.completion_tokens && tokcount_stream_exact(px->tcs))
			px->disagreed = metrics_usage_disagrees(u.completion_tokens, counted);
		if (!u.completion_tokens || (!px->stream_done && counted > u.completion_tokens)) {
			gu.completion_tokens = counted;
			px->usage_src = METRICS_USAGE_GATEWAY;
		}
	}
	px->billed = gu;
	a.usage = px->usage_src == METRICS_USAGE_PROVIDER ? AUDIT_USAGE_PROVIDER
							  : AUDIT_USAGE_GATEWAY;
	px->cost = gov_settle(g, px->pw->id, &px->ticket, &gu, now_ns, (int64_t)time(NULL), &a,
			      &seq);
	buf_free(&bodies[0]);
	buf_free(&bodies[1]);
	strict_wait(px->pw, px->hold, seq);
	px->hold = NULL;
}

static int team_index(const struct pipeline *pl, const struct gov_caller *c)
{
	size_t n;
	const struct gov_team *teams = pl->gov ? gov_teams(pl->gov, &n) : NULL;
	return c && c->team && teams ? (int)(c->team - teams) : -1;
}

static const char *dialect_name(enum dialect d)
{
	return d == DIALECT_ANTHROPIC ? "anthropic" : "openai";
}

/* The request's line in the metrics and the access log. */
static void px_observe(struct px *px)
{
	struct pipeline *pl = px->pw->pl;
	if (!pl->metrics && !pl->alog)
		return;
	struct exchange *ex = px->ex;
	uint64_t now = px->end_us, start = ex->start_ms * 1000;
	int status = px->sent ? px->sent : 500;
	const struct config_provider *prov =
		px->target ? px->v->s->providers[px->target->provider].cfg : NULL;
	unsigned fallbacks = 0;
	for (unsigned i = 0; i < px->nattempts; i++)
		fallbacks += px->attempts[i].model != px->asked;
	const struct gov_caller *c = px->caller_p;
	if (pl->metrics) {
		struct metrics_request r = {
			.model = px->v->s->metrics_model[px->asked->index],
			.provider = px->target && px->nsent
					    ? px->v->s->metrics_provider[px->target->provider]
					    : -1,
			.team = team_index(pl, c),
			.status = status,
			.input_tokens = px->billed.prompt_tokens,
			.output_tokens = px->billed.completion_tokens,
			.cached_tokens = px->billed.cached_tokens,
			.cost_micro_usd = px->cost,
			.total_us = (int64_t)(now > start ? now - start : 0),
			.first_byte_us = px->first_byte_us ? (int64_t)(px->first_byte_us - start) : -1,
			.upstream_us = px->nsent ? (int64_t)(now - px->attempt_us) : -1,
			.fallbacks = fallbacks,
			.usage = px->served ? px->usage_src : METRICS_USAGE_NONE,
			.usage_disagreed = px->disagreed,
		};
		metrics_request_done(pl->metrics, px->pw->id, &r);
		metrics_in_flight(pl->metrics, px->pw->id, -1);
	}
	if (pl->alog) {
		char client[64];
		ex_peer(ex, client, sizeof(client));
		struct accesslog_entry e = {
			.client = slice_cstr(client),
			.request_id = slice_cstr(ex->id),
			.key_id = c ? slice_cstr(c->key->id) : SLICE_LIT(""),
			.team = c && c->team ? slice_cstr(c->team->name) : SLICE_LIT(""),
			.dialect = slice_cstr(dialect_name(px->in)),
			.model = slice_cstr(px->asked->name),
			.provider = prov && px->nsent ? slice_cstr(prov->name) : SLICE_LIT(""),
			.upstream_model = px->target && px->nsent ? slice_cstr(px->target->upstream_model)
								  : SLICE_LIT(""),
			.status = status,
			.prompt_tokens = px->billed.prompt_tokens,
			.completion_tokens = px->billed.completion_tokens,
			.cached_tokens = px->billed.cached_tokens,
			.cost_micro_usd = px->cost,
			.usage = px->served ? (enum accesslog_usage)px->usage_src : ACCESSLOG_USAGE_NONE,
			.duration_us = (int64_t)(now > start ? now - start : 0),
			.ttfb_us = px->first_byte_us ? (int64_t)(px->first_byte_us - start) : -1,
			.stream = px->stream,
			.attempts = px->nsent,
			.fallbacks = fallbacks,
			.error = px->error ? slice_cstr(px->error) : SLICE_LIT(""),
		};
		accesslog_write(pl->alog, px->pw->id, &e);
	}
}

/* A request answered before it had a model and a px (401, 404, 405, a malformed body): its
 * line in the metrics and the access log. */
static void observe_early(struct exchange *ex, enum dialect d, int status, const char *error)
{
	struct pl_worker *pw = worker_state(ex_worker(ex));
	struct pipeline *pl = pw->pl;
	uint64_t now = mono_us(), start = ex->start_ms * 1000;
	if (pl->metrics) {
		struct metrics_request r = { .model = -1, .provider = -1, .team = -1,
					     .status = status, .first_byte_us = -1,
					     .upstream_us = -1,
					     .total_us = (int64_t)(now > start ? now - start : 0) };
		metrics_request_done(pl->metrics, pw->id, &r);
	}
	if (pl->alog) {
		char client[64];
		ex_peer(ex, client, sizeof(client));
		struct accesslog_entry e = { .request_id = slice_cstr(ex->id),
					     .client = slice_cstr(client),
					     .dialect = slice_cstr(dialect_name(d)),
					     .status = status, .ttfb_us = -1,
					     .duration_us = (int64_t)(now > start ? now - start : 0),
					     .error = slice_cstr(error) };
		accesslog_write(pl->alog, pw->id, &e);
	}
}

static void release_buffer(void *arg, uint64_t bid)
{
	worker_buffer_unref(arg, (uint16_t)bid);
}

static void release_malloc(void *arg, uint64_t unused) { free(arg); }

static size_t px_attempt_headers(const struct px *px, char *out, size_t cap);

/* The response headers the gateway adds: who served, what was tried before, and the
 * provider's retry-after. */
static void px_extra_headers(const struct px *px, char *out, size_t cap)
{
	const struct snapshot_provider *prov = &px->v->s->providers[px->route->provider];
	struct fmt f = fmt_into(out, cap);
	fmt_lit(&f, "x-penstock-provider: ");
	fmt_str(&f, prov->cfg->name);
	fmt_lit(&f, "\r\nx-penstock-model: ");
	fmt_str(&f, px->route->upstream_model);
	fmt_lit(&f, "\r\n");
	size_t n = f.n;
	if (n < cap)
		n += px_attempt_headers(px, out + n, cap - n);
	if (px->retry_after[0] && n < cap) {
		f = fmt_into(out + n, cap - n);
		fmt_lit(&f, "retry-after: ");
		fmt_str(&f, px->retry_after);
		fmt_lit(&f, "\r\n");
	}
}

/* The usage chunk the gateway asked for is left out of a stream whose client did not ask: cut
 * around it when it lies in this fragment (off: where the parser's fragment starts in it),
 * else it began in the held tail and is the first event of what the tail now completes. */
static void px_strip_usage(struct px *px, const struct sse_event *ev,
			   const struct tokcount_event *te, size_t off)
{
	if (!px->strip_usage || !te->usage_only)
		return;
	if (ev->raw_in_frag) {
		px->drop_start = off + ev->raw_start;
		px->drop_end = off + ev->raw_end;
	} else {
		px->drop_held = true;
	}
}

/* The completion tokens the request's budget reservation covers, UINT64_MAX: no bound. */
static uint64_t px_allowance(const struct px *px)
{
	return px->ticket.held && px->ticket.resv.n ? px->ticket.completion_allowance : UINT64_MAX;
}

/* Count an upstream event's completion tokens; past the ticket's allowance the stream
 * is to be cut (px->cut). */
static void px_count_event(struct px *px, const struct sse_event *ev)
{
	struct tokcount_event te;
	if (!px->tcs || tokcount_stream_event(px->tcs, px->up, ev->type, ev->data, &te) < 0)
		return;
	uint64_t limit = px_allowance(px);
	if (limit != UINT64_MAX && tokcount_stream_past(px->tcs, limit))
		px->cut = true;
	px_strip_usage(px, ev, &te, 0);
}

static bool px_on_event(void *arg, const struct sse_event *ev)
{
	struct px *px = arg;
	px_count_event(px, ev);
	if (px->cut)
		return false;
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

/* For the audit record of a team with audit_bodies: the stream's bytes, up to the body
 * bound plus what redaction may need to see past it. */
static void px_keep_streamed(struct px *px, struct slice bytes)
{
	if (!px->keep_bodies)
		return;
	size_t cap = px->pw->pl->boot->audit.body_max_bytes + 8192;
	size_t room = px->streamed.len < cap ? cap - px->streamed.len : 0;
	buf_append(&px->streamed, bytes.p, bytes.n < room ? bytes.n : room, cap);
}

/* The translated events so far, to the client. False if the exchange went away: px is
 * gone then (on_abort freed it). */
static bool px_flush(struct px *px)
{
	px_keep_streamed(px, slice_of(px->out.p, px->out.len));
	return write_buf(px->ex, &px->out);
}

/* The last events of a translated stream: px is freed first, then the stream ends. */
static void px_stream_close(struct px *px)
{
	px_keep_streamed(px, slice_of(px->out.p, px->out.len));
	struct exchange *ex = px->ex;
	struct buf out = px->out;
	px->out = (struct buf){ 0 };
	px_free(px, 200);
	if (write_buf(ex, &out))
		ex_finish(ex);
}

static bool px_head_routes(struct px *px, const struct http1_response *res,
			   const struct http1_header *ct);
static bool is_sse(const struct http1_header *ct);

/* A stream begins: count its completion tokens with the target model's tokenizer. */
static void px_count_start(struct px *px)
{
	struct pipeline *pl = px->pw->pl;
	const struct config_model *m = &px->v->s->cfg->models[px->model->index];
	struct tokcount_tokenizer t = tokcount_pick(pl->tok, m->tokenizer,
						    px->v->s->providers[px->target->provider].cfg->kind,
						    px->target->upstream_model);
	px->tcs = tokcount_stream_new(px->pw->tc, t);
	if (px->tcs && px->raw_sse) {
		sse_init(&px->acct, MAX_SSE_EVENT);
		px->acct_on = true;
	}
}
static bool px_relay_sse(struct px *px, struct slice data, uint16_t bid);
static bool px_failed_attempt(struct px *px, enum upstream_error err, bool head_seen);
static void px_stream_verdict(struct px *px, bool ok);
static void px_retry_soon(struct px *px);

static void px_on_head(void *arg, const struct http1_response *res)
{
	struct px *px = arg;
	const struct http1_header *ct = http1_find_header(res->headers, res->nheaders, "content-type");
	const struct http1_header *ra = http1_find_header(res->headers, res->nheaders, "retry-after");
	px->status = res->status;
	struct metrics *m = px->pw->pl->metrics;
	int kind = m ? metrics_upstream_kind(0, res->status) : -1;
	if (kind >= 0)
		metrics_upstream_error(m, px->pw->id, px->v->s->metrics_provider[px->target->provider],
				       kind);
	if (ra && ra->value.n < sizeof(px->retry_after))
		fmt_copy(px->retry_after, sizeof(px->retry_after), ra->value.p, ra->value.n);
	buf_free(&px->req); /* sent: the upstream call no longer needs it */
	if (px_head_routes(px, res, ct))
		return;
	px_hold(px); /* before any of the response is queued */
	px->served = res->status >= 200 && res->status < 300;
	if (px->served && px->ticket.held && (px->raw_sse || (px->in != px->up && is_sse(ct))))
		px_count_start(px);
	char extra[1024];
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
				px->sent = 503;
				px->error = "resources";
				px_free(px, 503);
				respond_error(ex, dialect_of(ex), 503, NULL, "gateway out of memory", NULL);
				return;
			}
			sse_init(&px->sse, MAX_SSE_EVENT);
			size_t n = strlen(extra);
			snprintf(extra + n, sizeof(extra) - n, "cache-control: no-cache\r\n");
			px->sent = 200;
			px->first_byte_us = mono_us();
			ex_begin(px->ex, 200, "text/event-stream", extra, -1);
		} else {
			px->relay = RELAY_BODY;
		}
		return;
	}
	char ctype[128] = "application/json";
	if (ct)
		fmt_copy(ctype, sizeof(ctype), ct->value.p, ct->value.n);
	int64_t length = -1;
	if (res->body == HTTP1_BODY_LENGTH)
		length = (int64_t)res->content_length;
	else if (res->body == HTTP1_BODY_NONE)
		length = 0;
	px->sent = res->status;
	px->first_byte_us = mono_us();
	ex_begin(px->ex, res->status, ctype, extra, length);
}

static void px_resume(struct exchange *ex)
{
	struct px *px = ex->user;
	if (px)
		upstream_resume(&px->call);
}

/* Why a stream was ended early: for the client's last event. */
static const char *px_cut_message(const struct px *px)
{
	return "The response was ended here: the budget left for this request pays for no "
	       "more completion tokens.";
}

/* The upstream's stream could not be read or translated: end the client's stream with
 * an error event in its dialect, and drop the upstream. */
static void px_stream_abort(struct px *px, const char *why)
{
	struct exchange *ex = px->ex;
	log_warn("request %s: provider %s: %s", ex->id,
		 px->v->s->providers[px->route->provider].cfg->name, why);
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
		if (px->raw_sse) {
			if (!px_relay_sse(px, data, bid))
				return false;
			break;
		}
		/* a copy of a whole answer, for its usage (bounded; not kept past it) */
		if (px->ticket.held && !px->too_large &&
		    !buf_append(&px->res, data.p, data.n, MAX_USAGE_BODY))
			px->too_large = true;
		if (!ex_write(px->ex, data, release_buffer, w, bid))
			return false; /* the exchange was aborted: px is gone, the call cancelled */
		break;
	case RELAY_STREAM: {
		int r = sse_feed(&px->sse, data.p, data.n, px_on_event, px);
		worker_buffer_unref(w, bid);
		if (px->cut) {
			upstream_cancel(&px->call);
			xlat_stream_error(px->xs, XERR_BUDGET, px_cut_message(px), &px->out);
			px_stream_close(px);
			return false;
		}
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
	char extra[1024];
	px_extra_headers(px, extra, sizeof(extra));
	struct exchange *ex = px->ex;
	px->sent = status;
	px->first_byte_us = mono_us();
	if (status >= 400 && !px->error)
		px->error = "upstream_status";
	px_free(px, status);
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

	if (px->fallback_status) {
		/* An answer that asks for another attempt: kept for the client in case none
		 * is left. */
		buf_free(&px->last_err);
		if (!px->too_large)
			px->last_err = px->res;
		else
			buf_free(&px->res);
		px->res = (struct buf){ 0 };
		px->last_status = px->status;
		px->last_up = px->up;
		px_retry_soon(px);
		return;
	}
	px_stream_verdict(px, true);
	switch (px->relay) {
	case RELAY_RAW:
		px->stream_done = true;
		if (px->ticket.held && !px->raw_sse && !px->too_large)
			xlat_response_usage(px->up, slice_of(px->res.p, px->res.len), &px->usage);
		if (px->tail.len && !write_buf(ex, &px->tail))
			return; /* the exchange went away: on_abort freed px */
		break;
	case RELAY_STREAM:
		px->stream_done = true;
		xlat_stream_end(px->xs, &px->out);
		px_stream_close(px);
		return;
	case RELAY_BODY:
		if (px->too_large || xlat_response(px->up, px->in, slice_of(px->res.p, px->res.len),
						   px->route->name, &body, &usage) < 0) {
			log_warn("request %s: provider %s: %s", ex->id,
				 px->v->s->providers[px->route->provider].cfg->name,
				 px->too_large ? "response too large to translate"
					       : "response could not be translated");
			buf_free(&body);
			enum dialect d = px->in;
			px->sent = 502;
			px->error = "upstream_bad_response";
			px_free(px, 502);
			respond_error(ex, d, 502, "upstream_bad_response",
				      "the provider's response could not be read", NULL);
			return;
		}
		px->usage = usage;
		px->answer = slice_of(body.p, body.len); /* for the audit record (px_settle) */
		px_respond_body(px, px->status, &body);
		return;
	case RELAY_ERROR: {
		int status = xlat_error(px->up, px->in, px->status,
					slice_of(px->res.p, px->too_large ? 0 : px->res.len), &body);
		px->answer = slice_of(body.p, body.len);
		px_respond_body(px, status, &body);
		return;
	}
	}
	px_free(px, px->status);
	ex_finish(ex);
}

static void px_on_error(void *arg, enum upstream_error err, bool head_seen)
{
	struct px *px = arg;
	struct exchange *ex = px->ex;
	const struct snapshot_provider *prov = &px->v->s->providers[px->route->provider];
	log_warn("request %s: provider %s: %s%s", ex->id, prov->cfg->name, upstream_error_text(err),
		 head_seen ? " (after the response began)" : "");
	if (head_seen)
		px_stream_verdict(px, false);
	struct metrics *m = px->pw->pl->metrics;
	int kind = m ? metrics_upstream_kind(err, 0) : -1;
	if (kind >= 0)
		metrics_upstream_error(m, px->pw->id, px->v->s->metrics_provider[px->target->provider],
				       kind);
	if (px_failed_attempt(px, err, head_seen))
		return;
	if (head_seen && px->relay == RELAY_RAW) {
		/* The status line is out: relay what came, then cut the connection so the
		 * client cannot mistake the response for complete. */
		px->error = "upstream_broke";
		px_free(px, px->status);
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
	px->sent = timeout ? 504 : 502;
	px->error = timeout ? "upstream_timeout" : "upstream_unavailable";
	px_free(px, timeout ? 504 : 502);
	respond_error(ex, d, timeout ? 504 : 502, timeout ? "upstream_timeout" : "upstream_unavailable",
		      upstream_error_text(err), NULL);
}

static const struct upstream_callbacks px_callbacks = {
	.on_head = px_on_head, .on_data = px_on_data, .on_end = px_on_end, .on_error = px_on_error,
};

/* ---------------------------------------------------------------- endpoints */

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

/* Who is calling (policy/gov). False: answered 401 in the caller's dialect, saying
 * whether the key was missing, unknown, revoked or expired (never which key). */
static bool authenticate(struct pipeline *pl, struct exchange *ex, enum dialect d,
			 struct gov_caller *caller)
{
	struct slice key;
	const char *msg;
	if (!client_key_of(ex, d, &key)) {
		msg = d == DIALECT_ANTHROPIC
			      ? "You didn't provide an API key. Send it as 'x-api-key: KEY' or "
				"'Authorization: Bearer KEY'."
			      : "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.";
	} else {
		switch (gov_authenticate(pl->gov, key, (int64_t)time(NULL), caller)) {
		case KEYS_OK: {
			/* the team's models as this worker's snapshot has them */
			const struct snapshot *s = ((struct pl_worker *)worker_state(ex_worker(ex)))->view->s;
			int t = team_index(pl, caller);
			if (t >= 0) {
				caller->team_models = s->teams[t].models;
				caller->team_nmodels = s->teams[t].nmodels;
			}
			return true;
		}
		case KEYS_REVOKED:
			msg = "This API key has been revoked.";
			break;
		case KEYS_EXPIRED:
			msg = "This API key has expired.";
			break;
		default:
			msg = d == DIALECT_ANTHROPIC ? "invalid x-api-key"
						     : "Incorrect API key provided.";
			break;
		}
	}
	observe_early(ex, d, 401, "invalid_api_key");
	audit_refusal(pl, ex, d, 401);
	respond_error(ex, d, 401, "invalid_api_key", msg, NULL);
	return false;
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

/* ---------------------------------------------------------------- attempts */

static uint64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* How an attempt failed, in a response header. */
static const char *error_token(enum upstream_error e)
{
	switch (e) {
	case UP_E_CONNECT: return "refused";
	case UP_E_CONNECT_TIMEOUT: return "connect-timeout";
	case UP_E_FIRST_BYTE_TIMEOUT: return "first-byte-timeout";
	case UP_E_IDLE_TIMEOUT: return "idle-timeout";
	case UP_E_RESET: return "reset";
	case UP_E_PROTOCOL: return "bad-response";
	case UP_E_RESOURCES: return "gateway-resources";
	case UP_E_TLS: return "tls";
	case UP_E_PROXY: return "proxy";
	}
	return "error";
}

static bool attempt_failed(const struct px *px, const struct attempt *a)
{
	return a->skipped || a->err || (a != &px->attempts[px->nattempts - 1] && a->status) ||
	       (a->status && px->fallback_status);
}

/* x-penstock-attempts (attempts sent upstream) and, when some target did not serve,
 * x-penstock-fallbacks: each as provider/model and how it failed. */
static size_t px_attempt_headers(const struct px *px, char *out, size_t cap)
{
	if (px->nattempts <= 1 && !px->fallback_status)
		return 0;
	struct fmt f = fmt_into(out, cap);
	fmt_lit(&f, "x-penstock-attempts: ");
	fmt_dec(&f, px->nsent);
	fmt_lit(&f, "\r\n");
	if (f.n >= cap)
		return 0;
	size_t n = f.n, line = f.n;
	bool any = false;
	for (unsigned i = 0; i < px->nattempts; i++) {
		const struct attempt *a = &px->attempts[i];
		if (!attempt_failed(px, a))
			continue;
		const struct router_target *t = &a->model->targets[a->target];
		f = fmt_into(out + n, cap - n);
		if (any)
			fmt_lit(&f, ", ");
		else
			fmt_lit(&f, "x-penstock-fallbacks: ");
		fmt_strn(&f, px->v->s->providers[t->provider].cfg->name, 40);
		fmt_lit(&f, "/");
		fmt_strn(&f, t->upstream_model, 60);
		fmt_lit(&f, " ");
		if (a->skipped)
			fmt_lit(&f, "untranslatable");
		else if (a->err)
			fmt_strn(&f, error_token(a->err), 23); /* it was cut to 24 bytes with the NUL */
		else
			fmt_sdec(&f, a->status);
		/* room is kept for the line's end and a retry-after line */
		if (n + f.n + 96 >= cap)
			break;
		n += f.n;
		any = true;
	}
	if (!any) { /* the attempts line alone, without a fallbacks piece that did not fit */
		out[line] = '\0';
		return line;
	}
	f = fmt_into(out + n, cap - n);
	fmt_lit(&f, "\r\n");
	return n + f.n;
}

static struct attempt *px_last_attempt(struct px *px)
{
	return px->nattempts ? &px->attempts[px->nattempts - 1] : NULL;
}

/* Tell the router how the picked target did. */
static void px_report(struct px *px, enum route_outcome o, uint64_t elapsed_us, uint64_t now_us)
{
	if (!px->picked)
		return;
	px->picked = false;
	router_report(px->v->rw, px->model, px->tidx, px->probe, o, elapsed_us, now_us);
}

/* How a stream that began ended: whole, or broken by the provider. */
static void px_stream_verdict(struct px *px, bool ok)
{
	if (!px->verdict_due)
		return;
	px->verdict_due = false;
	router_stream_end(px->v->rw, px->model, px->tidx, ok, mono_us());
}

/* The pick was not used, or its request went away: it says nothing of the target. */
static void px_unpick(struct px *px)
{
	if (px->picked)
		px_report(px, ROUTE_CANCELLED, 0, px->end_us ? px->end_us : mono_us());
}

static bool status_in(const struct config_retry *rc, int status)
{
	for (size_t i = 0; i < rc->non_status; i++)
		if (rc->on_status[i] == status)
			return true;
	return false;
}

static bool is_sse(const struct http1_header *ct)
{
	return ct && ct->value.n >= 17 && memmem(ct->value.p, ct->value.n, "text/event-stream", 17);
}

/* An attempt's response head: tell the router how the target did, and keep the response
 * (gathered as RELAY_ERROR) when its status asks for another attempt. True: kept. */
static bool px_head_routes(struct px *px, const struct http1_response *res,
			   const struct http1_header *ct)
{
	uint64_t now = mono_us(), elapsed = now - px->attempt_us;
	struct attempt *a = px_last_attempt(px);
	if (a) {
		a->status = res->status;
		a->ms = (uint32_t)(elapsed / 1000);
	}
	if (status_in(&px->v->s->cfg->retry, res->status)) {
		px_report(px, ROUTE_FAILED, elapsed, now);
		px->fallback_status = true;
		px->relay = RELAY_ERROR;
		struct slice t = ct && ct->value.n < sizeof(px->last_ctype)
					 ? ct->value : SLICE_LIT("application/json");
		fmt_copy(px->last_ctype, sizeof(px->last_ctype), t.p, t.n);
		return true;
	}
	/* A stream's health is known at its end: a provider that starts streams and breaks them
	 * fails (px_stream_verdict). */
	px->verdict_due = res->status >= 200 && res->status < 300 && is_sse(ct);
	px_report(px, px->verdict_due ? ROUTE_STARTED : ROUTE_OK, elapsed, now);
	/* Same-dialect SSE that the client gets chunked: relayed in whole events, so a
	 * break can still end it with an error event. */
	px->raw_sse = px->in == px->up && res->status >= 200 && res->status < 300 && is_sse(ct) &&
		      res->body != HTTP1_BODY_LENGTH && res->body != HTTP1_BODY_NONE;
	return false;
}

/* Bytes of d up to the end of its last whole event (a blank line ends one), 0 if no
 * event ends in d; last: the two bytes of the stream before d. */
static size_t sse_whole(const char last[2], struct slice d)
{
	size_t end = d.n;
	while (end) {
		const char *nl = memrchr(d.p, '\n', end);
		if (!nl)
			return 0;
		size_t i = (size_t)(nl - d.p);
		char p1 = i >= 1 ? d.p[i - 1] : last[1];
		char p2 = i >= 2 ? d.p[i - 2] : i == 1 ? last[1] : last[0];
		if (p1 == '\n' || (p1 == '\r' && p2 == '\n'))
			return i + 1;
		end = i;
	}
	return 0;
}

/* An event longer than MAX_SSE_EVENT: stop holding events back, pass everything. */
static bool px_sse_unaligned(struct px *px, struct slice data, uint16_t bid)
{
	px->raw_sse = false;
	if (!write_buf(px->ex, &px->tail)) {
		worker_buffer_unref(ex_worker(px->ex), bid);
		return false;
	}
	return ex_write(px->ex, data, release_buffer, ex_worker(px->ex), bid);
}

/* Same-dialect SSE: whole events go out as they are (no copy); the start of an event that
 * has not ended waits in px->tail for the rest. */
static void px_sse_end(struct px *px, enum xlat_err_kind kind, const char *why);

/* Remove the first event of b (through the blank line that ends it). */
static void drop_first_event(struct buf *b)
{
	for (size_t i = 0; i + 1 < b->len; i++) {
		if (b->p[i] != '\n')
			continue;
		size_t end = b->p[i + 1] == '\n'				     ? i + 2
			     : i + 2 < b->len && b->p[i + 1] == '\r' && b->p[i + 2] == '\n' ? i + 3
											    : 0;
		if (end) {
			buf_consume(b, end);
			return;
		}
	}
}

/* An event of a same-dialect stream, counted (tokcount_stream_sse): off is where the parser's
 * fragment starts in the relayed one. */
static void px_acct_event(void *arg, const struct sse_event *ev, const struct tokcount_event *te,
			  size_t off)
{
	px_strip_usage(arg, ev, te, off);
}

static bool px_relay_sse(struct px *px, struct slice data, uint16_t bid)
{
	struct worker *w = ex_worker(px->ex);
	px_keep_streamed(px, data);
	px->drop_end = 0;
	px->drop_held = false;
	if (px->acct_on) {
		px->cut = tokcount_stream_sse(px->tcs, px->up, &px->acct, data, px_allowance(px),
					      px_acct_event, px);
		if (px->cut) { /* the events of this fragment are not relayed */
			worker_buffer_unref(w, bid);
			upstream_cancel(&px->call);
			px_sse_end(px, XERR_BUDGET, px_cut_message(px));
			return false;
		}
	}
	size_t whole = sse_whole(px->sse_last, data);
	if (data.n >= 2) {
		px->sse_last[0] = data.p[data.n - 2];
		px->sse_last[1] = data.p[data.n - 1];
	} else if (data.n == 1) {
		px->sse_last[0] = px->sse_last[1];
		px->sse_last[1] = data.p[0];
	}
	struct slice rest = { data.p + whole, data.n - whole };
	if (px->tail.len) {
		struct buf held = px->tail;
		size_t take = whole ? whole : data.n;
		if (!buf_append(&held, data.p, take, MAX_SSE_EVENT)) {
			px->tail = held;
			return px_sse_unaligned(px, data, bid);
		}
		px->tail = (struct buf){ 0 };
		if (!whole) {
			px->tail = held;
			worker_buffer_unref(w, bid);
			return true;
		}
		bool ok = buf_append(&px->tail, rest.p, rest.n, MAX_SSE_EVENT);
		worker_buffer_unref(w, bid);
		if (px->drop_held)
			drop_first_event(&held);
		if (!write_buf(px->ex, &held))
			return false;
		if (!ok) { /* out of memory: the rest of this event is lost; cut the stream */
			struct exchange *ex = px->ex;
			upstream_cancel(&px->call);
			px->error = "resources";
			px_free(px, px->status);
			ex_truncate(ex);
			return false;
		}
		return true;
	}
	if (rest.n && !buf_append(&px->tail, rest.p, rest.n, MAX_SSE_EVENT))
		return px_sse_unaligned(px, data, bid);
	if (!whole) {
		worker_buffer_unref(w, bid);
		return true;
	}
	if (px->drop_end && px->drop_end <= whole) { /* pass what is around the usage chunk */
		size_t a = px->drop_start, b = px->drop_end;
		if (a) {
			worker_buffer_ref(w, bid);
			if (!ex_write(px->ex, slice_of(data.p, a), release_buffer, w, bid)) {
				worker_buffer_unref(w, bid);
				return false;
			}
		}
		if (whole > b)
			return ex_write(px->ex, slice_of(data.p + b, whole - b), release_buffer, w,
					bid);
		worker_buffer_unref(w, bid);
		return true;
	}
	return ex_write(px->ex, slice_of(data.p, whole), release_buffer, w, bid);
}

/* A same-dialect stream ends early after its head went out (the upstream broke, or the
 * budget ran out): the event that will not be whole is dropped and the stream ends with
 * an error event in the client's dialect. */
static void px_sse_end(struct px *px, enum xlat_err_kind kind, const char *why)
{
	struct exchange *ex = px->ex;
	struct buf out = { 0 };
	struct xlat_stream *xs = xlat_stream_new(px->in, px->in, px->route->name, false);
	if (xs) {
		xlat_stream_error(xs, kind, why, &out);
		xlat_stream_free(xs);
	}
	px->error = kind == XERR_BUDGET ? "budget_exceeded" : "upstream_broke";
	px_free(px, px->status);
	if (!out.len) {
		buf_free(&out);
		ex_truncate(ex);
		return;
	}
	if (write_buf(ex, &out))
		ex_finish(ex);
}

static void px_sse_break(struct px *px, enum upstream_error err)
{
	px_sse_end(px, XERR_UPSTREAM, upstream_error_text(err));
}

static void px_next(struct px *px);

static void px_retry_timer(struct exchange *ex)
{
	struct px *px = ex->user;
	if (px)
		px_next(px);
}

/* The next attempt starts from the worker's loop, not from inside the upstream's
 * callback that reported the failure. */
static void px_retry_soon(struct px *px) { ex_after(px->ex, 0, px_retry_timer); }

/* The upstream call failed. True if that was handled here: an attempt that can be
 * followed by another (the client saw nothing yet), or a same-dialect stream ended with
 * an error event. */
static bool px_failed_attempt(struct px *px, enum upstream_error err, bool head_seen)
{
	if (head_seen && px->relay == RELAY_RAW && px->raw_sse) {
		px_sse_break(px, err);
		return true;
	}
	if (head_seen && !px->fallback_status)
		return false;
	uint64_t now = mono_us(), elapsed = now - px->attempt_us;
	struct attempt *a = px_last_attempt(px);
	if (head_seen) { /* a status that asked for another attempt, its body cut short */
		buf_free(&px->last_err);
		px->last_status = px->status;
		px->last_up = px->up;
	} else {
		if (a) {
			a->err = err;
			a->ms = (uint32_t)(elapsed / 1000);
		}
		bool timeout = err == UP_E_CONNECT_TIMEOUT || err == UP_E_FIRST_BYTE_TIMEOUT;
		px_report(px, err == UP_E_RESOURCES ? ROUTE_CANCELLED
			      : timeout		  ? ROUTE_TIMEOUT
						  : ROUTE_FAILED,
			  elapsed, now);
		buf_free(&px->last_err);
		px->last_status = 0;
		px->last_upe = err;
	}
	px->fallback_status = false;
	px_retry_soon(px);
	return true;
}

/* The model whose targets come at step `chain`: the one asked for, then its fallbacks. */
static const struct router_model *chain_model(const struct px *px)
{
	if (px->chain == 0)
		return px->asked;
	if (px->chain - 1 < px->asked->nfallback)
		return router_model_at(px->v->s->router, px->asked->fallback[px->chain - 1]);
	return NULL;
}

/* Whether a provider has the request's endpoint (embeddings: OpenAI-shaped ones only). */
static bool provider_serves(const struct px *px, const struct snapshot_provider *p)
{
	return px->kind == PX_CHAT || (p->api->embeddings_path && p->api->dialect == px->in);
}

/* The next target along the chain, the router's choice at each step. False when every
 * step is exhausted for this round. */
static bool px_pick(struct px *px, uint64_t now_us)
{
	/* Bounded: each pass adds a target to `tried` or moves along the chain. */
	for (const struct router_model *m; (m = chain_model(px));) {
		bool probe;
		int t = router_pick(px->v->rw, m, px->tried, &px->rq, now_us, &probe);
		if (t < 0) {
			px->chain++;
			px->tried = 0;
			continue;
		}
		px->tried |= UINT64_C(1) << t;
		if (!provider_serves(px, &px->v->s->providers[m->targets[t].provider])) {
			router_report(px->v->rw, m, (unsigned)t, probe, ROUTE_CANCELLED, 0, now_us);
			continue;
		}
		px->model = m;
		px->tidx = (unsigned)t;
		px->target = &m->targets[t];
		px->probe = probe;
		px->picked = true;
		return true;
	}
	return false;
}

/* The upstream request head for this attempt's provider, path and a body of body_len
 * bytes; room is left after it for `spare` bytes. False if out of memory. */
static bool px_head(struct px *px, const struct snapshot_provider *prov, const char *path, size_t body_len,
		    size_t spare)
{
	struct exchange *ex = px->ex;
	bool beta = px->in == prov->api->dialect && px->in == DIALECT_ANTHROPIC;
	size_t fwd_len = forward_headers(px->v->s->cfg, ex, beta, NULL);
	size_t prefix_n = strlen(prov->cfg->path_prefix), path_n = strlen(path);
	size_t host_n = strlen(prov->host_header), auth_n = strlen(prov->auth_header);
	/* The head's fixed text and numbers take < 200 bytes. */
	size_t cap = 256 + prefix_n + path_n + auth_n + host_n + fwd_len + spare;
	free(px->head);
	px->head = malloc(cap);
	if (!px->head)
		return false;
	struct fmt f = fmt_into(px->head, cap);
	fmt_lit(&f, "POST ");
	fmt_mem(&f, prov->cfg->path_prefix, prefix_n);
	fmt_mem(&f, path, path_n);
	fmt_lit(&f, " HTTP/1.1\r\n");
	fmt_mem(&f, prov->host_header, host_n);
	fmt_mem(&f, prov->auth_header, auth_n);
	fmt_lit(&f, "Content-Type: application/json\r\nContent-Length: ");
	fmt_dec(&f, body_len);
	fmt_lit(&f, "\r\nx-request-id: ");
	fmt_str(&f, ex->id);
	fmt_lit(&f, "\r\n");
	px->head_len = f.n;
	px->head_len += forward_headers(px->v->s->cfg, ex, beta, px->head + px->head_len);
	memcpy(px->head + px->head_len, "\r\n", 2);
	px->head_len += 2;
	return true;
}

/* Same dialect: the body as the client sent it, the model name spliced when the target's
 * upstream name differs. The iovec count, or -1 if out of memory. */
static int px_build_same(struct px *px, const struct snapshot_provider *prov, const char *path)
{
	struct exchange *ex = px->ex;
	const char *up_model = px->cur.upstream_model;
	struct slice before = { ex->body.p, (size_t)(px->model_val.p - ex->body.p) };
	struct slice after = { px->model_val.p + px->model_val.n,
			       ex->body.n - before.n - px->model_val.n };
	bool splice = !slice_eq_cstr(px->model_name, up_model);
	size_t quoted_len = strlen(up_model) + 2;
	size_t body_len = splice ? before.n + quoted_len + after.n : ex->body.n;
	/* An OpenAI stream that will be billed: ask for the provider's usage (the client's
	 * stream does not see it unless it asked; see px_count_event). */
	static const char inject[] = "\"stream_options\":{\"include_usage\":true},";
	px->strip_usage = px->kind == PX_CHAT && px->stream && px->up == DIALECT_OPENAI &&
			  px->ticket.held && !px->client_usage && !px->has_stream_options &&
			  before.n > 0;
	size_t lead = 0; /* bytes up to and including the body's opening brace */
	if (px->strip_usage) {
		lead = (size_t)((const char *)memchr(ex->body.p, '{', before.n) - ex->body.p) + 1;
		body_len += sizeof(inject) - 1;
	}
	if (!px_head(px, prov, path, body_len, quoted_len + 1))
		return -1;
	unsigned niov = 0;
	px->iov[niov++] = (struct iovec){ px->head, px->head_len };
	if (lead) {
		px->iov[niov++] = (struct iovec){ (void *)ex->body.p, lead };
		px->iov[niov++] = (struct iovec){ (void *)inject, sizeof(inject) - 1 };
		before.p += lead;
		before.n -= lead;
	}
	if (!splice && lead) {
		px->iov[niov++] = (struct iovec){ (void *)before.p,
						  ex->body.n - lead };
	} else if (splice) {
		char *q = px->head + px->head_len + 1;
		q[0] = '"';
		memcpy(q + 1, up_model, quoted_len - 2);
		q[quoted_len - 1] = '"';
		px->iov[niov++] = (struct iovec){ (void *)before.p, before.n };
		px->iov[niov++] = (struct iovec){ q, quoted_len };
		px->iov[niov++] = (struct iovec){ (void *)after.p, after.n };
	} else {
		px->iov[niov++] = (struct iovec){ (void *)ex->body.p, ex->body.n };
	}
	return (int)niov;
}

/* The request for the picked target: the iovec count, 0 if the body cannot be said in the
 * target's dialect (px->why says why), -1 if out of memory. */
static int px_build(struct px *px)
{
	const struct snapshot_provider *prov = &px->v->s->providers[px->target->provider];
	px->cur = (struct route){ px->asked->name, px->target->provider, px->target->upstream_model,
				  px->model->max_tokens };
	px->up = prov->api->dialect;
	const char *path = px->kind == PX_EMBEDDINGS ? prov->api->embeddings_path
						     : prov->api->chat_path;
	buf_free(&px->req);
	if (px->in == px->up)
		return px_build_same(px, prov, path);
	struct xlat_request_opts o = {
		.upstream_model = px->cur.upstream_model,
		.default_max_tokens = px->cur.max_tokens,
		.stream_usage = px->stream && px->up == DIALECT_OPENAI,
	};
	if (xlat_request(px->in, px->up, px->ex->body, &o, &px->req, px->why, sizeof(px->why)) < 0) {
		buf_free(&px->req);
		return 0;
	}
	if (!px_head(px, prov, path, px->req.len, 0))
		return -1;
	px->iov[0] = (struct iovec){ px->head, px->head_len };
	px->iov[1] = (struct iovec){ px->req.p, px->req.len };
	return 2;
}

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

/* Before round r (r >= 1) over targets already tried: base * 2^(r-1), capped, with equal
 * jitter (half of it fixed, half random) so that many requests do not retry together. */
static uint32_t px_backoff(struct px *px)
{
	const struct config_retry *rc = &px->v->s->cfg->retry;
	uint64_t d = rc->backoff_base;
	for (unsigned i = 1; i < px->round && d < rc->backoff_cap; i++)
		d *= 2;
	if (d > rc->backoff_cap)
		d = rc->backoff_cap;
	return (uint32_t)(d - d / 2 + xorshift(&px->pw->rng) % (d / 2 + 1));
}

static void px_answer_last_error(struct px *px)
{
	struct exchange *ex = px->ex;
	struct buf body = { 0 };
	if (px->in != px->last_up) {
		int status = xlat_error(px->last_up, px->in, px->last_status,
					slice_of(px->last_err.p, px->last_err.len), &body);
		px_respond_body(px, status, &body);
		return;
	}
	char extra[1024], ctype[64];
	px_extra_headers(px, extra, sizeof(extra));
	fmt_copy(ctype, sizeof(ctype), px->last_ctype, sizeof(px->last_ctype));
	int status = px->last_status;
	body = px->last_err;
	px->last_err = (struct buf){ 0 };
	px->sent = status;
	px->first_byte_us = mono_us();
	px->error = "upstream_status";
	px_free(px, status);
	ex_begin(ex, status, ctype, extra, (int64_t)body.len);
	if (write_buf(ex, &body))
		ex_finish(ex);
}

/* No attempt is left: the client gets what the last one said. */
static void px_give_up(struct px *px)
{
	struct exchange *ex = px->ex;
	enum dialect d = px->in;
	char msg[400], extra[1024];
	if (px->nsent && px->last_status) {
		px_answer_last_error(px);
		return;
	}
	if (!px->nsent && px->why[0]) { /* nothing could take this body: the client's to fix */
		snprintf(msg, sizeof(msg), "%s", px->why);
		px->sent = 400;
		px->error = "untranslatable";
		px_free(px, 400);
		respond_error(ex, d, 400, NULL, msg, NULL);
		return;
	}
	if (!px->nsent) {
		uint64_t next = router_next_probe_us(px->v->s->router, px->asked), now = mono_us();
		uint64_t secs = next > now ? (next - now + 999999) / 1000000 : 1;
		snprintf(msg, sizeof(msg), "no healthy upstream for model %.100s: every target's "
			 "circuit breaker is open", px->asked->name);
		snprintf(extra, sizeof(extra), "retry-after: %llu\r\n", (unsigned long long)secs);
		px->sent = 503;
		px->error = "breaker_open";
		px_free(px, 503);
		respond_error(ex, d, 503, "upstream_unavailable", msg, extra);
		return;
	}
	enum upstream_error err = px->last_upe;
	bool timeout = err == UP_E_CONNECT_TIMEOUT || err == UP_E_FIRST_BYTE_TIMEOUT;
	snprintf(msg, sizeof(msg), "%s (%u attempt%s)", upstream_error_text(err), px->nsent,
		 px->nsent == 1 ? "" : "s");
	px_extra_headers(px, extra, sizeof(extra));
	px->sent = timeout ? 504 : 502;
	px->error = timeout ? "upstream_timeout" : "upstream_unavailable";
	px_free(px, timeout ? 504 : 502);
	respond_error(ex, d, timeout ? 504 : 502, timeout ? "upstream_timeout" : "upstream_unavailable",
		      msg, extra);
}

/* Start the next attempt, or answer the client when none is left. */
static void px_next(struct px *px)
{
	const struct config_retry *rc = &px->v->s->cfg->retry;
	struct exchange *ex = px->ex;
	uint64_t deadline = ex->start_ms + rc->deadline;
	/* Bounded: each pass sends, skips a target of the chain or ends the round. */
	for (;;) {
		uint64_t now_ms = worker_now_ms(ex_worker(ex));
		if (px->nsent >= rc->attempts || now_ms >= deadline)
			break;
		if (!px_pick(px, mono_us())) {
			if (!px->round_sent)
				break; /* nothing could be tried this round: no point in another */
			px->round++;
			px->round_sent = 0;
			px->chain = 0;
			px->tried = 0;
			uint32_t delay = px_backoff(px);
			if (now_ms + delay >= deadline)
				break;
			ex_after(ex, delay, px_retry_timer);
			return;
		}
		int niov = px_build(px);
		if (niov < 0) {
			enum dialect d = px->in;
			px->sent = 503;
			px->error = "resources";
			px_free(px, 503);
			respond_error(ex, d, 503, NULL, "gateway out of memory", NULL);
			return;
		}
		if (px->nattempts < PX_MAX_ATTEMPTS)
			px->attempts[px->nattempts++] = (struct attempt){
				.model = px->model, .target = px->tidx, .skipped = niov == 0 };
		if (niov == 0) {
			px_unpick(px);
			continue;
		}
		px->nsent++;
		px->round_sent++;
		px->status = 0;
		px->retry_after[0] = '\0';
		px->relay = RELAY_RAW;
		px->too_large = false;
		px->fallback_status = false;
		buf_free(&px->res);
		px->attempt_us = mono_us();
		ex->user = px;
		upstream_call_start(&px->call, px->v->pools[px->target->provider], px->iov,
				    (unsigned)niov, &px_callbacks, px);
		return;
	}
	px_give_up(px);
}

/* A request about to go upstream; NULL (answered 503) if out of memory. */
static struct px *px_new(struct pl_worker *pw, struct exchange *ex, const struct router_model *m,
			 enum dialect in, enum px_kind kind, struct slice model_val,
			 struct slice model_name)
{
	struct px *px = calloc(1, sizeof(*px));
	if (!px) {
		respond_error(ex, in, 503, NULL, "gateway out of memory", NULL);
		return NULL;
	}
	px->ex = ex;
	px->pw = pw;
	px->v = pw->view;
	px->v->inflight++;
	px->route = &px->cur;
	px->in = in;
	px->kind = kind;
	px->asked = m;
	px->model_val = model_val;
	px->model_name = model_name;
	if (pw->pl->metrics)
		metrics_in_flight(pw->pl->metrics, pw->id, +1);
	/* cost routing needs a size before any tokenizer has run: about 4 bytes a token */
	px->rq.prompt_tokens = (uint32_t)(ex->body.n / 4 > UINT32_MAX ? UINT32_MAX : ex->body.n / 4);
	ex->user = px;
	return px;
}

/* The model a request names, checked; NULL (answered) if there is none or it is unknown. */
static const struct router_model *request_route(const struct snapshot *s, struct exchange *ex,
						enum dialect d, struct slice model_val,
						struct slice *model)
{
	if (!model_val.p || !json_plain_string(model_val, model) || model->n == 0) {
		observe_early(ex, d, 400, "no_model");
		respond_error(ex, d, 400, NULL,
			      d == DIALECT_ANTHROPIC ? "model: Field required"
						     : "you must provide a model parameter",
			      NULL);
		return NULL;
	}
	const struct router_model *m = router_find(s->router, *model);
	if (!m) {
		char msg[256];
		snprintf(msg, sizeof(msg),
			 "The model `%.*s` does not exist or you do not have access to it.",
			 (int)(model->n > 100 ? 100 : model->n), model->p);
		observe_early(ex, d, 404, "model_not_found");
		respond_error(ex, d, 404, "model_not_found", msg, NULL);
	}
	return m;
}

static void bad_json(struct exchange *ex, enum dialect d)
{
	observe_early(ex, d, 400, "bad_json");
	respond_error(ex, d, 400, NULL,
		      "We could not parse the JSON body of your request: expected a JSON object.",
		      NULL);
}

/* Admission (policy/gov): the model allowed, rate limits, the budget's reservation. For a
 * caller with a budget the prompt is bounded by the bytes of its text (a token is at least
 * one byte: a walk of its strings, a fraction of a microsecond per KB), or for a body of at
 * most PROMPT_WALK_MIN bytes by its size; otherwise TPM takes a quarter of the body's
 * bytes. The prompt is counted exactly only if the provider reports
 * no usage (px_settle): a tokenizer pass costs microseconds per KB.
 * False: refused (answered) and px freed. */
static bool px_admit(struct px *px, const struct gov_caller *caller, uint64_t max_tokens)
{
	struct pipeline *pl = px->pw->pl;
	struct exchange *ex = px->ex;
	px->caller = *caller;
	px->caller_p = &px->caller;
	px->keep_bodies = team_keeps_bodies(px, caller);
	if (!pl->gov)
		return true;
	const struct config_model *m = &px->v->s->cfg->models[px->asked->index];
	struct tokcount_prompt p = { 0 };
	if (px->kind == PX_CHAT) {
		const struct router_target *t = &px->asked->targets[0];
		struct tokcount_tokenizer tk = tokcount_pick(pl->tok, m->tokenizer,
							     px->v->s->providers[t->provider].cfg->kind,
							     t->upstream_model);
		px->prompt_tk = tk;
		/* Only a budget needs the bound; TPM is corrected at the end anyway. A small
		 * body's own size bounds it closely enough (its JSON adds at most a few thousand
		 * tokens to a reservation the completion's usually dominates) and costs nothing;
		 * the walk of its strings costs about 0.3 us per KB, 2% of a request. */
		bool budgeted = caller->key->budget_id != KEYS_NONE ||
				(caller->team && caller->team->budget_id != KEYS_NONE);
		if (!budgeted || ex->body.n <= PROMPT_WALK_MIN) {
			p.upper_bound = (int64_t)ex->body.n;
			p.tokens = (int64_t)ex->body.n / 4;
		} else if (tokcount_prompt(px->pw->tc, tk, px->in, ex->body, TOKCOUNT_PROMPT_BOUND,
					   &p) < 0) {
			p.upper_bound = p.tokens = (int64_t)ex->body.n;
		}
	} else { /* embeddings: the input's bytes bound its tokens */
		p.upper_bound = (int64_t)ex->body.n;
		p.tokens = (int64_t)ex->body.n / 4;
	}
	px->prompt_estimate = (uint64_t)p.tokens;
	uint64_t completion = px->kind == PX_EMBEDDINGS ? 0
			      : max_tokens		  ? max_tokens
			      : m->max_tokens		  ? m->max_tokens
							  : DEFAULT_MAX_COMPLETION;
	struct gov_refusal r;
	if (gov_admit(pl->gov, px->pw->id, caller, m, &px->v->s->prices[px->asked->index],
		      (uint64_t)p.tokens, (uint64_t)p.upper_bound,
		      completion, px->stream, (int64_t)mono_us() * 1000, (int64_t)time(NULL),
		      &px->ticket, &r))
		return true;
	enum dialect d = px->in;
	px->sent = r.status;
	px->error = r.code;
	if (pl->metrics && r.status == 429)
		metrics_refused(pl->metrics, px->pw->id, team_index(pl, caller),
				r.kind == XERR_BUDGET ? METRICS_REFUSED_BUDGET : METRICS_REFUSED_RATELIMIT);
	px_free(px, r.status);
	struct buf b = { 0 };
	xlat_error_body(d, r.kind, r.status, r.code, r.message, &b);
	ex_respond(ex, r.status, "application/json", r.headers[0] ? r.headers : NULL,
		   b.p ? slice_of(b.p, b.len) : SLICE_LIT("{}\n"));
	buf_free(&b);
	return false;
}

/* POST /v1/chat/completions (OpenAI) and /v1/messages (Anthropic). */
static void handle_chat(struct pl_worker *pw, struct exchange *ex, enum dialect in,
			const struct gov_caller *caller)
{
	static const char *const keys[] = { "model", "stream", "stream_options", "max_tokens",
					    "max_completion_tokens" };
	struct slice vals[5], model;
	if (json_scan_object(ex->body, keys, vals, 5) < 0) {
		bad_json(ex, in);
		return;
	}
	const struct router_model *m = request_route(pw->view->s, ex, in, vals[0], &model);
	if (!m)
		return;
	bool client_usage = false;
	if (in == DIALECT_OPENAI && vals[2].p) {
		static const char *const so_keys[] = { "include_usage" };
		struct slice iu;
		client_usage = json_scan_object(vals[2], so_keys, &iu, 1) == 0 && iu.p &&
			       json_is_true(iu);
	}
	struct px *px = px_new(pw, ex, m, in, PX_CHAT, vals[0], model);
	if (!px)
		return;
	px->stream = vals[1].p && json_is_true(vals[1]);
	px->client_usage = client_usage;
	px->has_stream_options = vals[2].p != NULL;
	int64_t max_tokens;
	struct slice mt = vals[4].p ? vals[4] : vals[3];
	if (mt.p && json_int(mt, &max_tokens) && max_tokens > 0 && max_tokens < UINT32_MAX)
		px->rq.max_tokens = (uint32_t)max_tokens;
	if (!px_admit(px, caller, px->rq.max_tokens))
		return;
	px_next(px);
}

/* POST /v1/embeddings: OpenAI dialect, to providers that have the endpoint. */
static void handle_embeddings(struct pl_worker *pw, struct exchange *ex,
			      const struct gov_caller *caller)
{
	static const char *const keys[] = { "model" };
	struct slice val, model;
	if (json_scan_object(ex->body, keys, &val, 1) < 0) {
		bad_json(ex, DIALECT_OPENAI);
		return;
	}
	const struct router_model *m = request_route(pw->view->s, ex, DIALECT_OPENAI, val, &model);
	if (!m)
		return;
	struct px *px = px_new(pw, ex, m, DIALECT_OPENAI, PX_EMBEDDINGS, val, model);
	if (!px)
		return;
	bool any = false;
	for (size_t i = 0; i < m->ntargets; i++)
		any |= provider_serves(px, &px->v->s->providers[m->targets[i].provider]);
	if (!any) {
		char msg[256];
		snprintf(msg, sizeof(msg), "The model `%s` does not support embeddings.", m->name);
		px->sent = 400;
		px->error = "model_not_supported";
		px_free(px, 400);
		respond_error(ex, DIALECT_OPENAI, 400, "model_not_supported", msg, NULL);
		return;
	}
	if (!px_admit(px, caller, 0))
		return;
	px_next(px);
}

/* The catalog as the caller may use it, in OpenAI's list shape or Anthropic's. */
static bool models_body(const struct config *cfg, struct gov *g, const struct gov_caller *c,
			bool anthropic, struct buf *b)
{
	char name[512], line[1400], first[520] = "null", last[520] = "null";
	bool ok = anthropic ? buf_append(b, "{\"data\":[", 9, SIZE_MAX)
			    : buf_append(b, "{\"object\":\"list\",\"data\":[", 25, SIZE_MAX);
	unsigned shown = 0;
	for (size_t i = 0; i < cfg->nmodels; i++) {
		if (g && !gov_model_allowed(g, c, slice_cstr(cfg->models[i].name)))
			continue;
		int n = (int)json_escape(name, sizeof(name), slice_cstr(cfg->models[i].name));
		int k = anthropic ? snprintf(line, sizeof(line),
					     "%s{\"type\":\"model\",\"id\":\"%.*s\","
					     "\"display_name\":\"%.*s\","
					     "\"created_at\":\"1970-01-01T00:00:00Z\"}",
					     shown ? "," : "", n, name, n, name)
				  : snprintf(line, sizeof(line),
					     "%s{\"id\":\"%.*s\",\"object\":\"model\",\"created\":0,"
					     "\"owned_by\":\"penstock\"}",
					     shown ? "," : "", n, name);
		ok = ok && buf_append(b, line, (size_t)k, SIZE_MAX);
		snprintf(shown ? last : first, sizeof(first), "\"%.*s\"", n, name);
		if (!shown++)
			memcpy(last, first, sizeof(last));
	}
	int k = anthropic ? snprintf(line, sizeof(line),
				     "],\"has_more\":false,\"first_id\":%s,\"last_id\":%s}\n", first,
				     last)
			  : snprintf(line, sizeof(line), "]}\n");
	return ok && buf_append(b, line, (size_t)k, SIZE_MAX);
}

/* GET /v1/models: OpenAI's list, or Anthropic's when the caller sends anthropic-version
 * (the Anthropic SDKs always do). */
static void list_models(struct pl_worker *pw, struct exchange *ex, const struct gov_caller *c)
{
	struct pipeline *pl = pw->pl;
	bool anthropic = ex_header(ex, "anthropic-version") != NULL;
	struct buf b = { 0 };
	if (!models_body(pw->view->s->cfg, pl->gov, c, anthropic, &b)) {
		buf_free(&b);
		respond_error(ex, anthropic ? DIALECT_ANTHROPIC : DIALECT_OPENAI, 503, NULL,
			      "gateway out of memory", NULL);
		return;
	}
	ex_respond(ex, 200, "application/json", NULL, slice_of(b.p, b.len));
	buf_free(&b);
}

static bool path_is(struct slice path, const char *p) { return slice_eq_cstr(path, p); }

enum endpoint { EP_NONE, EP_CHAT, EP_MESSAGES, EP_EMBEDDINGS, EP_MODELS };

static void pl_on_request(struct exchange *ex)
{
	struct pl_worker *pw = worker_state(ex_worker(ex));
	struct pipeline *pl = pw->pl;
	view_refresh(pw);
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
		observe_early(ex, d, 404, "unknown_url");
		respond_error(ex, d, 404, "unknown_url", msg, NULL);
		return;
	}
	if (ep == EP_MODELS ? !get : !post) {
		observe_early(ex, d, 405, "method_not_allowed");
		respond_error(ex, d, 405, NULL, "method not allowed",
			      ep == EP_MODELS ? "Allow: GET\r\n" : "Allow: POST\r\n");
		return;
	}
	struct gov_caller caller;
	if (!authenticate(pl, ex, d, &caller))
		return;
	switch (ep) {
	case EP_CHAT:
		handle_chat(pw, ex, DIALECT_OPENAI, &caller);
		break;
	case EP_MESSAGES:
		handle_chat(pw, ex, DIALECT_ANTHROPIC, &caller);
		break;
	case EP_EMBEDDINGS:
		handle_embeddings(pw, ex, &caller);
		break;
	case EP_MODELS:
		list_models(pw, ex, &caller);
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
	px->sent = 499;
	px->error = "client_gone";
	px_free(px, 499);
}

/* ---------------------------------------------------------------- workers */

static void view_free(struct view *v)
{
	for (size_t i = 0; v->pools && i < v->s->nproviders; i++)
		if (v->pools[i])
			upstream_pool_free(v->pools[i]); /* its connections close on their own */
	free(v->pools);
	router_worker_free(v->rw);
	snapshot_unref(v->s);
	free(v);
}

/* The current snapshot, with a reference the caller must drop. */
static struct snapshot *current_ref(struct pipeline *pl)
{
	pthread_mutex_lock(&pl->publish_lock);
	struct snapshot *s = atomic_load_explicit(&pl->cur, memory_order_relaxed);
	snapshot_ref(s);
	pthread_mutex_unlock(&pl->publish_lock);
	return s;
}

/* This worker's view of s, which takes over the caller's reference to it (dropped if the
 * view cannot be made); NULL if out of memory. A provider reached the same way as one of
 * the worker's current view keeps that pool (and its warm connections, TLS sessions). */
static struct view *view_new(struct pl_worker *pw, struct snapshot *s)
{
	const struct view *prev = pw->view;
	struct view *v = calloc(1, sizeof(*v));
	if (!v) {
		snapshot_unref(s);
		return NULL;
	}
	v->s = s;
	v->rw = router_worker_new(s->router);
	v->pools = calloc(s->nproviders ? s->nproviders : 1, sizeof(*v->pools));
	bool ok = v->rw && v->pools;
	for (size_t i = 0; ok && i < s->nproviders; i++) {
		for (size_t j = 0; prev && !v->pools[i] && j < prev->s->nproviders; j++) {
			if (snapshot_same_endpoint(s, i, prev->s, j)) {
				v->pools[i] = prev->pools[j];
				upstream_pool_share(v->pools[i], &s->providers[i].ep);
			}
		}
		if (!v->pools[i])
			v->pools[i] = upstream_pool_new(pw->w, &s->providers[i].ep);
		if (!v->pools[i]) {
			log_error("provider %s: its connection pool could not be set up",
				  s->providers[i].cfg->name);
			ok = false;
		}
	}
	if (!ok) {
		view_free(v);
		return NULL;
	}
	return v;
}

/* Views retired by a reload go when their last request has ended. */
static void views_reap(struct pl_worker *pw)
{
	for (struct view **p = &pw->retired; *p;) {
		struct view *v = *p;
		if (v->inflight) {
			p = &v->next;
			continue;
		}
		*p = v->next;
		view_free(v);
	}
}

/* A reload published a new snapshot: new requests take it from here on. Cheap when
 * nothing changed (one load). If the new view cannot be made, the worker stays on the
 * old one and tries again at its next turn. */
static void view_refresh(struct pl_worker *pw)
{
	if (atomic_load_explicit(&pw->pl->cur, memory_order_acquire) == pw->view->s)
		return;
	struct view *v = view_new(pw, current_ref(pw->pl));
	if (!v)
		return;
	struct view *old = pw->view;
	pw->view = v;
	old->next = pw->retired;
	pw->retired = old;
	views_reap(pw);
}

/* A request on view v ended. */
static void view_leave(struct pl_worker *pw, struct view *v)
{
	if (--v->inflight == 0 && v != pw->view)
		views_reap(pw);
}

static void *pl_worker_init(struct worker *w, void *ctx)
{
	struct pipeline *pl = ctx;
	struct pl_worker *pw = calloc(1, sizeof(*pw));
	if (!pw)
		return NULL;
	pw->pl = pl;
	pw->w = w;
	pw->id = worker_id(w);
	pw->ev_store.fn = strict_done;
	pw->rng = 0x9E3779B97F4A7C15ull ^ ((uint64_t)worker_id(w) + 1) * mono_us();
	pw->tc = pl->tok ? tokcount_ctx_new(pl->tok) : NULL;
	pw->view = view_new(pw, current_ref(pl));
	if (!pw->view || (pl->tok && !pw->tc)) {
		log_error("out of memory for the worker's routing, pools and counting state");
		exit(1);
	}
	return pw;
}

/* Each turn: move to a newly published snapshot; access log lines wait at most
 * ACCESSLOG_FLUSH_MS, also when no request comes to push them. */
static uint32_t pl_worker_tick(struct worker *w, void *state)
{
	struct pl_worker *pw = state;
	if (!pw)
		return UINT32_MAX;
	view_refresh(pw);
	struct accesslog *al = pw->pl->alog;
	if (!al || !accesslog_pending(al, pw->id)) {
		pw->alog_since_ms = 0;
		return UINT32_MAX;
	}
	uint64_t now = worker_now_ms(w);
	if (!pw->alog_since_ms)
		pw->alog_since_ms = now;
	if (now - pw->alog_since_ms >= ACCESSLOG_FLUSH_MS) {
		accesslog_flush(al, pw->id);
		pw->alog_since_ms = 0;
		return UINT32_MAX;
	}
	return (uint32_t)(ACCESSLOG_FLUSH_MS - (now - pw->alog_since_ms));
}

static void pl_worker_stop(struct worker *w, void *state)
{
	struct pl_worker *pw = state;
	if (!pw)
		return;
	for (size_t i = 0; i < pw->view->s->nproviders; i++)
		upstream_pool_close_idle(pw->view->pools[i]);
	for (struct view *v = pw->retired; v; v = v->next)
		for (size_t i = 0; i < v->s->nproviders; i++)
			upstream_pool_close_idle(v->pools[i]);
}

static void pl_worker_fini(struct worker *w, void *state)
{
	struct pl_worker *pw = state;
	if (!pw)
		return;
	if (pw->pl->alog)
		accesslog_flush(pw->pl->alog, pw->id);
	/* the engine finished every exchange first: no view has a request left */
	views_reap(pw);
	view_free(pw->view);
	free(pw->held); /* empty: held responses keep their connections, so the worker waited */
	if (pw->tc)
		tokcount_ctx_free(pw->tc);
	free(pw);
}

/* ---------------------------------------------------------------- setup */

/* Active health checks of s's providers (those with health_check), sent with their auth
 * headers; NULL with err filled if they cannot start. */
static struct healthcheck *checks_start(struct pipeline *pl, const struct snapshot *s, char *err,
					size_t errlen)
{
	const char **headers = calloc(s->nproviders + 1, sizeof(*headers));
	if (!headers) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	for (size_t i = 0; i < s->nproviders; i++)
		headers[i] = s->providers[i].auth_header;
	struct healthcheck *hc = healthcheck_start(s->cfg, pl->health, headers, err, errlen);
	free(headers);
	return hc;
}

struct pipeline *pipeline_new(const struct config *cfg, struct gov *gov, char *err,
			      size_t errlen)
{
	struct pipeline *pl = calloc(1, sizeof(*pl));
	if (!pl)
		return NULL;
	pl->boot = cfg;
	pl->gov = gov;
	pthread_mutex_init(&pl->reload_lock, NULL);
	pthread_mutex_init(&pl->publish_lock, NULL);
	pl->health = router_health_new();
	struct snapshot *s = pl->health ? snapshot_new(cfg, false, pl->health, err, errlen) : NULL;
	if (!s) {
		if (!pl->health)
			snprintf(err, errlen, "out of memory");
		goto fail;
	}
	s->generation = 1;
	atomic_init(&pl->cur, s);
	if (gov && !(pl->tok = tokcount_reg_open(cfg->tokenizer_dir))) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	if (gov && !(pl->checks = checks_start(pl, s, err, errlen)))
		goto fail;
	pl->handler = (struct engine_handler){
		.worker_init = pl_worker_init,
		.worker_fini = pl_worker_fini,
		.worker_stop = pl_worker_stop,
		.worker_tick = pl_worker_tick,
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

/* The metrics labels of s's models and providers; a name new to the metrics gets its
 * label here, before the workers can see s. */
static void label_snapshot(struct pipeline *pl, struct snapshot *s)
{
	for (size_t i = 0; i < s->cfg->nmodels; i++)
		s->metrics_model[i] = pl->metrics ? metrics_label(pl->metrics, METRICS_LABEL_MODEL,
								  s->cfg->models[i].name)
						  : -1;
	for (size_t i = 0; i < s->cfg->nproviders; i++)
		s->metrics_provider[i] = pl->metrics ? metrics_label(pl->metrics,
								     METRICS_LABEL_PROVIDER,
								     s->cfg->providers[i].name)
						     : -1;
}

void pipeline_observe(struct pipeline *p, struct metrics *m, struct accesslog *al)
{
	p->metrics = m;
	p->alog = al;
	label_snapshot(p, atomic_load_explicit(&p->cur, memory_order_relaxed));
}

int pipeline_reload(struct pipeline *pl, struct config *next, struct pipeline_reload_info *info,
		    char *err, size_t errlen)
{
	if (!next || snapshot_reloadable(pl->boot, next, err, errlen)) {
		if (next) {
			config_free(next);
			free(next);
		}
		atomic_fetch_add(&pl->reloads_refused, 1);
		return -1;
	}
	pthread_mutex_lock(&pl->reload_lock);
	struct snapshot *s = snapshot_new(next, true, pl->health, err, errlen);
	struct healthcheck *checks = s && pl->gov ? checks_start(pl, s, err, errlen) : NULL;
	if (!s || (pl->gov && (!checks || gov_reload_teams(pl->gov, next, err, errlen)))) {
		healthcheck_stop(checks);
		pthread_mutex_unlock(&pl->reload_lock);
		snapshot_unref(s);
		atomic_fetch_add(&pl->reloads_refused, 1);
		return -1;
	}
	healthcheck_stop(pl->checks);
	pl->checks = checks;
	label_snapshot(pl, s);
	struct snapshot *old = atomic_load_explicit(&pl->cur, memory_order_relaxed);
	s->generation = old->generation + 1;
	pthread_mutex_lock(&pl->publish_lock);
	atomic_store_explicit(&pl->cur, s, memory_order_release);
	pthread_mutex_unlock(&pl->publish_lock);
	if (info)
		*info = (struct pipeline_reload_info){ .generation = s->generation,
						       .providers = next->nproviders,
						       .models = next->nmodels };
	pthread_mutex_unlock(&pl->reload_lock);
	snapshot_unref(old); /* the workers' views hold it as long as they need it */
	atomic_fetch_add(&pl->reloads_applied, 1);
	return 0;
}

void pipeline_config_stats(struct pipeline *pl, struct metrics_config_stats *out)
{
	struct snapshot *s = current_ref(pl);
	out->generation = s->generation;
	snapshot_unref(s);
	out->snapshots = snapshot_live();
	out->reloads_applied = atomic_load(&pl->reloads_applied);
	out->reloads_refused = atomic_load(&pl->reloads_refused);
}

int pipeline_render_targets(struct pipeline *pl, struct buf *out)
{
	struct snapshot *s = current_ref(pl);
	size_t cap = 0;
	for (size_t i = 0; i < s->cfg->nmodels; i++)
		cap += router_model_at(s->router, (unsigned)i)->ntargets;
	struct metrics_target_health *rows = calloc(cap + 1, sizeof(*rows));
	const struct router_health_entry **seen = calloc(cap + 1, sizeof(*seen));
	size_t n = 0;
	uint64_t now = mono_us();
	for (size_t i = 0; rows && seen && i < s->cfg->nmodels; i++) {
		const struct router_model *m = router_model_at(s->router, (unsigned)i);
		for (size_t k = 0; k < m->ntargets; k++) {
			const struct router_target *t = &m->targets[k];
			const struct router_health_entry *e = router_health_of(s->router, t);
			bool dup = false; /* two models routed to one target share its health */
			for (size_t j = 0; j < n && !dup; j++)
				dup = seen[j] == e;
			if (dup)
				continue;
			seen[n] = e;
			rows[n] = (struct metrics_target_health){
				.provider = s->providers[t->provider].cfg->name,
				.model = t->upstream_model,
				.breaker = (int)router_breaker(s->router, t),
			};
			router_health_counts(s->router, t, now, &rows[n].ok, &rows[n].failed);
			n++;
		}
	}
	int rc = rows && seen ? metrics_render_targets(rows, n, out) : -ENOMEM;
	free(rows);
	free(seen);
	snapshot_unref(s);
	return rc;
}

void pipeline_with_config(struct pipeline *pl, void (*fn)(const struct config *cfg, void *arg),
			  void *arg)
{
	struct snapshot *s = current_ref(pl);
	fn(s->cfg, arg);
	snapshot_unref(s);
}

bool pipeline_has_model(struct pipeline *pl, const char *name)
{
	struct snapshot *s = current_ref(pl);
	bool found = config_find_model(s->cfg, name) != NULL;
	snapshot_unref(s);
	return found;
}

void pipeline_free(struct pipeline *pl)
{
	if (!pl)
		return;
	healthcheck_stop(pl->checks);
	snapshot_unref(atomic_load(&pl->cur)); /* the workers have let go of theirs */
	router_health_free(pl->health);
	if (pl->tok)
		tokcount_reg_close(pl->tok);
	pthread_mutex_destroy(&pl->reload_lock);
	pthread_mutex_destroy(&pl->publish_lock);
	free(pl);
}
