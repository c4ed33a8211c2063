/* mockllm - a fast mock LLM provider on penstock's own engine, for tests and the bench.
 *
 * Speaks OpenAI chat completions (stream and not, the final usage chunk when
 * stream_options.include_usage is true), embeddings and models, and Anthropic messages
 * (stream and not, the real event sequence). Text is deterministic. Faults are chosen
 * per request by header, or for every request by flag:
 *   x-mock-status: 429|500|503|...   answer with that error in the caller's dialect
 *   x-mock-latency-ms: N             wait before the first byte
 *   x-mock-event-delay-ms: N         wait between stream events
 *   x-mock-disconnect-after: N       drop the connection after N stream events
 *                                    (0: before any response byte)
 *   x-mock-tokens: N                 completion length in tokens (default 16, or max_tokens)
 * With --expect-key K, a request whose Authorization / x-api-key is not K gets 401: the
 * tests use it to prove the gateway sends the provider key, not the client's.
 * GET /mock/stats reports requests and connections seen.
 */
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/buf.h"
#include "core/engine.h"
#include "core/json.h"
#include "core/log.h"

struct defaults {
	int status;
	int latency_ms;
	int event_delay_ms;
	int disconnect_after; /* -1: never */
	int tokens;           /* 0: from max_tokens or 16 */
	const char *expect_key;
};

static struct defaults dflt = { .disconnect_after = -1 };
static atomic_uint_fast64_t stat_requests, stat_streams;

enum dialect { OPENAI, ANTHROPIC };

/* One response being produced: the whole text prebuilt, events sent one by one. */
struct mock_ex {
	struct exchange *ex;
	unsigned refs; /* the exchange + each queued segment */
	struct buf out; /* the whole response */
	size_t *ev_off; /* start of event i; ev_off[nev] == len */
	unsigned nev, nev_cap, next;
	int event_delay_ms;
	int disconnect_after;
	bool stream, aborted;
	int status;
	const char *ctype;
};

static const char *const words[] = {
	"The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".",
	" Penstock", " routes", " every", " request", " through", " one", " gateway", ",",
	" counting", " tokens", " as", " they", " pass", ".",
};
#define NWORDS (sizeof(words) / sizeof(words[0]))

static void mx_unref(struct mock_ex *m)
{
	if (--m->refs)
		return;
	buf_free(&m->out);
	free(m->ev_off);
	free(m);
}

static void mx_release(void *arg, uint64_t unused) { mx_unref(arg); }

static void mx_printf(struct mock_ex *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void mx_printf(struct mock_ex *m, const char *fmt, ...)
{
	va_list ap;
	for (;;) {
		size_t room = m->out.cap - m->out.len;
		va_start(ap, fmt);
		int n = vsnprintf(m->out.p ? m->out.p + m->out.len : NULL, room, fmt, ap);
		va_end(ap);
		if (n < 0)
			return;
		if ((size_t)n < room) {
			m->out.len += (size_t)n;
			return;
		}
		if (!buf_reserve(&m->out, (size_t)n + 1, SIZE_MAX))
			return;
	}
}

static void mx_event_start(struct mock_ex *m)
{
	if (m->nev + 1 >= m->nev_cap) {
		unsigned cap = m->nev_cap ? m->nev_cap * 2 : 32;
		size_t *o = realloc(m->ev_off, cap * sizeof(*o));
		if (!o)
			return;
		m->ev_off = o;
		m->nev_cap = cap;
	}
	m->ev_off[m->nev++] = m->out.len;
}

static void text_append(struct mock_ex *m, unsigned i) { mx_printf(m, "%s", words[i % NWORDS]); }

/* ---------------------------------------------------------------- bodies */

static void openai_complete(struct mock_ex *m, struct slice model, int prompt, int tokens, bool usage)
{
	static uint64_t seq;
	uint64_t id = ++seq;
	long now = (long)time(NULL);
	if (!m->stream) {
		mx_printf(m, "{\"id\":\"chatcmpl-mock%" PRIu64 "\",\"object\":\"chat.completion\","
			  "\"created\":%ld,\"model\":\"" SLICE_FMT "\",\"choices\":[{\"index\":0,"
			  "\"message\":{\"role\":\"assistant\",\"content\":\"", id, now, SLICE_ARG(model));
		for (int i = 0; i < tokens; i++)
			text_append(m, (unsigned)i);
		mx_printf(m, "\"},\"logprobs\":null,\"finish_reason\":\"%s\"}],\"usage\":{\"prompt_tokens\":%d,"
			  "\"completion_tokens\":%d,\"total_tokens\":%d}}\n", "stop", prompt, tokens,
			  prompt + tokens);
		return;
	}
	const char *pre = "data: {\"id\":\"chatcmpl-mock";
	mx_event_start(m);
	mx_printf(m, "%s%" PRIu64 "\",\"object\":\"chat.completion.chunk\",\"created\":%ld,\"model\":\""
		  SLICE_FMT "\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
		  "\"finish_reason\":null}]}\n\n", pre, id, now, SLICE_ARG(model));
	for (int i = 0; i < tokens; i++) {
		mx_event_start(m);
		mx_printf(m, "%s%" PRIu64 "\",\"object\":\"chat.completion.chunk\",\"created\":%ld,\"model\":\""
			  SLICE_FMT "\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"", pre, id, now,
			  SLICE_ARG(model));
		text_append(m, (unsigned)i);
		mx_printf(m, "\"},\"finish_reason\":null}]}\n\n");
	}
	mx_event_start(m);
	mx_printf(m, "%s%" PRIu64 "\",\"object\":\"chat.completion.chunk\",\"created\":%ld,\"model\":\""
		  SLICE_FMT "\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
		  pre, id, now, SLICE_ARG(model));
	if (usage) {
		mx_event_start(m);
		mx_printf(m, "%s%" PRIu64 "\",\"object\":\"chat.completion.chunk\",\"created\":%ld,\"model\":\""
			  SLICE_FMT "\",\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,"
			  "\"total_tokens\":%d}}\n\n", pre, id, now, SLICE_ARG(model), prompt, tokens,
			  prompt + tokens);
	}
	mx_event_start(m);
	mx_printf(m, "data: [DONE]\n\n");
}

static void anthropic_complete(struct mock_ex *m, struct slice model, int prompt, int tokens)
{
	static uint64_t seq;
	uint64_t id = ++seq;
	if (!m->stream) {
		mx_printf(m, "{\"id\":\"msg_mock%" PRIu64 "\",\"type\":\"message\",\"role\":\"assistant\","
			  "\"model\":\"" SLICE_FMT "\",\"content\":[{\"type\":\"text\",\"text\":\"", id,
			  SLICE_ARG(model));
		for (int i = 0; i < tokens; i++)
			text_append(m, (unsigned)i);
		mx_printf(m, "\"}],\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"usage\":"
			  "{\"input_tokens\":%d,\"output_tokens\":%d}}\n", prompt, tokens);
		return;
	}
	mx_event_start(m);
	mx_printf(m, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":"
		  "\"msg_mock%" PRIu64 "\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],"
		  "\"model\":\"" SLICE_FMT "\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":"
		  "{\"input_tokens\":%d,\"output_tokens\":1}}}\n\n", id, SLICE_ARG(model), prompt);
	mx_event_start(m);
	mx_printf(m, "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,"
		  "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
	mx_event_start(m);
	mx_printf(m, "event: ping\ndata: {\"type\":\"ping\"}\n\n");
	for (int i = 0; i < tokens; i++) {
		mx_event_start(m);
		mx_printf(m, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
			  "\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"");
		text_append(m, (unsigned)i);
		mx_printf(m, "\"}}\n\n");
	}
	mx_event_start(m);
	mx_printf(m, "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n");
	mx_event_start(m);
	mx_printf(m, "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
		  "\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":%d}}\n\n", tokens);
	mx_event_start(m);
	mx_printf(m, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
}

static void error_body(struct mock_ex *m, enum dialect d, int status)
{
	const char *oa_type = status == 429 ? "rate_limit_error" : status == 401 ? "invalid_request_error"
			      : status >= 500 ? "server_error" : "invalid_request_error";
	const char *an_type = status == 429 ? "rate_limit_error" : status == 401 ? "authentication_error"
			      : status == 529 ? "overloaded_error" : status >= 500 ? "api_error"
			      : "invalid_request_error";
	if (d == ANTHROPIC)
		mx_printf(m, "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":\"mock error %d\"}}\n",
			  an_type, status);
	else
		mx_printf(m, "{\"error\":{\"message\":\"mock error %d\",\"type\":\"%s\",\"param\":null,"
			  "\"code\":%s}}\n", status, oa_type, status == 401 ? "\"invalid_api_key\"" : "null");
}

/* ---------------------------------------------------------------- sending */

static void mx_next_event(struct exchange *ex);

static void mx_send_events(struct mock_ex *m)
{
	struct exchange *ex = m->ex;
	while (m->next < m->nev) {
		if (m->disconnect_after >= 0 && (int)m->next >= m->disconnect_after) {
			ex->user = NULL;
			mx_unref(m);
			ex_truncate(ex); /* the events already written still go out */
			return;
		}
		unsigned i = m->next++;
		size_t end = i + 1 < m->nev ? m->ev_off[i + 1] : m->out.len;
		m->refs++;
		if (!ex_write(ex, slice_of(m->out.p + m->ev_off[i], end - m->ev_off[i]), mx_release, m, 0))
			return;
		if (m->event_delay_ms > 0 && m->next < m->nev) {
			ex_after(ex, (uint32_t)m->event_delay_ms, mx_next_event);
			return;
		}
	}
	ex->user = NULL;
	mx_unref(m);
	ex_finish(ex);
}

static void mx_next_event(struct exchange *ex)
{
	struct mock_ex *m = ex->user;
	if (m)
		mx_send_events(m);
}

static void mx_start(struct exchange *ex)
{
	struct mock_ex *m = ex->user;
	if (!m)
		return;
	if (m->disconnect_after == 0) {
		ex->user = NULL;
		mx_unref(m);
		ex_close(ex);
		return;
	}
	if (!m->stream || m->status != 200) {
		ex_respond(ex, m->status, m->ctype, NULL, slice_of(m->out.p, m->out.len));
		ex->user = NULL;
		mx_unref(m);
		return;
	}
	ex_begin(ex, 200, "text/event-stream", "Cache-Control: no-cache\r\n", -1);
	mx_send_events(m);
}

/* ---------------------------------------------------------------- requests */

static int header_int(const struct exchange *ex, const char *name, int dflt_value)
{
	const struct http1_header *h = ex_header(ex, name);
	if (!h)
		return dflt_value;
	int64_t v;
	if (!json_int(h->value, &v) || v < -1 || v > 10000000)
		return dflt_value;
	return (int)v;
}

static bool key_ok(const struct exchange *ex)
{
	if (!dflt.expect_key)
		return true;
	const struct http1_header *h = ex_header(ex, "x-api-key");
	if (h && slice_eq_cstr(h->value, dflt.expect_key))
		return true;
	h = ex_header(ex, "authorization");
	return h && h->value.n > 7 && strncasecmp(h->value.p, "Bearer ", 7) == 0 &&
	       slice_eq_cstr(slice_of(h->value.p + 7, h->value.n - 7), dflt.expect_key);
}

static void respond_json(struct exchange *ex, int status, const char *body)
{
	ex_respond(ex, status, "application/json", NULL, slice_cstr(body));
}

static void handle_generate(struct exchange *ex, enum dialect d)
{
	static const char *const keys[] = { "model", "stream", "stream_options", "max_tokens" };
	struct slice v[4];
	if (json_scan_object(ex->body, keys, v, 4) < 0) {
		respond_json(ex, 400, d == OPENAI
			? "{\"error\":{\"message\":\"mock: body is not a JSON object\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}\n"
			: "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"mock: body is not a JSON object\"}}\n");
		return;
	}
	struct slice model = SLICE_LIT("mock-model");
	if (v[0].p)
		json_plain_string(v[0], &model);
	struct mock_ex *m = calloc(1, sizeof(*m));
	if (!m) {
		respond_json(ex, 500, "{}");
		return;
	}
	m->ex = ex;
	m->refs = 1;
	m->stream = v[1].p && json_is_true(v[1]);
	bool include_usage = false;
	if (v[2].p) {
		static const char *const uk[] = { "include_usage" };
		struct slice u;
		if (json_scan_object(v[2], uk, &u, 1) == 0 && u.p)
			include_usage = json_is_true(u);
	}
	int64_t max_tokens = 0;
	if (v[3].p)
		json_int(v[3], &max_tokens);
	int tokens = header_int(ex, "x-mock-tokens", dflt.tokens);
	if (tokens <= 0)
		tokens = max_tokens > 0 && max_tokens < 16 ? (int)max_tokens : 16;
	int prompt = (int)(ex->body.n / 4) + 1;
	m->status = key_ok(ex) ? header_int(ex, "x-mock-status", dflt.status ? dflt.status : 200) : 401;
	m->event_delay_ms = header_int(ex, "x-mock-event-delay-ms", dflt.event_delay_ms);
	m->disconnect_after = header_int(ex, "x-mock-disconnect-after", dflt.disconnect_after);
	m->ctype = "application/json";
	if (m->status != 200)
		error_body(m, d, m->status);
	else if (d == OPENAI)
		openai_complete(m, model, prompt, tokens, include_usage);
	else
		anthropic_complete(m, model, prompt, tokens);
	if (!m->out.p) {
		mx_unref(m);
		respond_json(ex, 500, "{}");
		return;
	}
	atomic_fetch_add_explicit(&stat_requests, 1, memory_order_relaxed);
	if (m->stream)
		atomic_fetch_add_explicit(&stat_streams, 1, memory_order_relaxed);
	ex->user = m;
	int latency = header_int(ex, "x-mock-latency-ms", dflt.latency_ms);
	if (latency > 0)
		ex_after(ex, (uint32_t)latency, mx_start);
	else
		mx_start(ex);
}

static void handle_embeddings(struct exchange *ex)
{
	if (!key_ok(ex)) {
		respond_json(ex, 401, "{\"error\":{\"message\":\"mock: wrong key\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"invalid_api_key\"}}\n");
		return;
	}
	char body[512];
	int prompt = (int)(ex->body.n / 4) + 1;
	snprintf(body, sizeof(body),
		 "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,\"embedding\":"
		 "[0.125,-0.25,0.5,-0.0625,0.75,0.03125,-0.5,0.25]}],\"model\":\"mock-embedding\","
		 "\"usage\":{\"prompt_tokens\":%d,\"total_tokens\":%d}}\n", prompt, prompt);
	atomic_fetch_add_explicit(&stat_requests, 1, memory_order_relaxed);
	respond_json(ex, 200, body);
}

static struct engine *engine;

static void mock_on_request(struct exchange *ex)
{
	struct slice path = ex->req.target;
	const char *q = memchr(path.p, '?', path.n);
	if (q)
		path.n = (size_t)(q - path.p);
	bool post = slice_eq_cstr(ex->req.method, "POST");
	if (post && slice_eq_cstr(path, "/v1/chat/completions"))
		handle_generate(ex, OPENAI);
	else if (post && slice_eq_cstr(path, "/v1/messages"))
		handle_generate(ex, ANTHROPIC);
	else if (post && slice_eq_cstr(path, "/v1/embeddings"))
		handle_embeddings(ex);
	else if (slice_eq_cstr(path, "/v1/models"))
		respond_json(ex, 200, "{\"object\":\"list\",\"data\":[{\"id\":\"mock-model\",\"object\":"
			     "\"model\",\"created\":0,\"owned_by\":\"mockllm\"}]}\n");
	else if (slice_eq_cstr(path, "/mock/stats")) {
		struct engine_stats st;
		engine_stats(engine, &st);
		char body[256];
		snprintf(body, sizeof(body),
			 "{\"requests\":%" PRIu64 ",\"streams\":%" PRIu64 ",\"connections_accepted\":%" PRIu64
			 ",\"connections_open\":%" PRIu64 "}\n",
			 (uint64_t)atomic_load(&stat_requests), (uint64_t)atomic_load(&stat_streams),
			 st.accepted, st.open);
		respond_json(ex, 200, body);
	} else if (slice_eq_cstr(path, "/healthz"))
		respond_json(ex, 200, "{\"status\":\"ok\"}\n");
	else
		respond_json(ex, 404, "{\"error\":{\"message\":\"mock: unknown path\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}\n");
}

static void mock_on_abort(struct exchange *ex)
{
	struct mock_ex *m = ex->user;
	if (m) {
		ex->user = NULL;
		mx_unref(m);
	}
}

static void mock_on_reject(struct exchange *ex, int status, const char *why)
{
	respond_json(ex, status, "{\"error\":{\"message\":\"mock: bad request\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}\n");
}

static void usage(void)
{
	fprintf(stderr,
		"usage: mockllm [--listen HOST:PORT] [--workers N] [--status CODE] [--latency-ms N]\n"
		"               [--event-delay-ms N] [--disconnect-after N] [--tokens N]\n"
		"               [--expect-key KEY] [--quiet]\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' }, { "workers", required_argument, NULL, 'w' },
		{ "status", required_argument, NULL, 's' }, { "latency-ms", required_argument, NULL, 'L' },
		{ "event-delay-ms", required_argument, NULL, 'e' },
		{ "disconnect-after", required_argument, NULL, 'd' },
		{ "tokens", required_argument, NULL, 't' }, { "expect-key", required_argument, NULL, 'k' },
		{ "quiet", no_argument, NULL, 'q' }, { "help", no_argument, NULL, 'h' }, { 0 },
	};
	char host[64] = "127.0.0.1";
	unsigned port = 9090, workers = 1;
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'l': {
			const char *colon = strrchr(optarg, ':');
			if (!colon || colon - optarg >= (long)sizeof(host)) {
				usage();
				return 2;
			}
			snprintf(host, sizeof(host), "%.*s", (int)(colon - optarg), optarg);
			port = (unsigned)atoi(colon + 1);
			break;
		}
		case 'w': workers = (unsigned)atoi(optarg); break;
		case 's': dflt.status = atoi(optarg); break;
		case 'L': dflt.latency_ms = atoi(optarg); break;
		case 'e': dflt.event_delay_ms = atoi(optarg); break;
		case 'd': dflt.disconnect_after = atoi(optarg); break;
		case 't': dflt.tokens = atoi(optarg); break;
		case 'k': dflt.expect_key = optarg; break;
		case 'q': log_min_level = LOG_WARN; break;
		default: usage(); return c == 'h' ? 0 : 2;
		}
	}
	log_set_prefix("mockllm");
	http1_init();
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	static const struct engine_handler handler = {
		.on_request = mock_on_request, .on_abort = mock_on_abort, .on_reject = mock_on_reject,
	};
	struct engine_options opt = {
		.host = host, .port = (uint16_t)port, .workers = workers, .pin = false,
		.buffers = 1024, .buffer_size = 16384,
		.limits = { .max_header_bytes = 65536, .max_headers = 100, .max_body_bytes = 64 << 20 },
		.max_connections = 100000,
		.timeouts = { .header_read = 30000, .body_read = 60000, .idle = 300000,
			      .shutdown_grace = 2000 },
		.handler = &handler, .name = "mockllm",
	};
	engine = engine_start(&opt);
	if (!engine)
		return 1;
	int sig;
	sigwait(&set, &sig);
	engine_stop(engine);
	engine_join(engine);
	return 0;
}
