/* mockllm - a fast mock LLM provider on penstock's own engine, for tests and the bench.
 *
 * Speaks OpenAI chat completions (stream and not, the final usage chunk when
 * stream_options.include_usage is true), embeddings and models, and Anthropic messages
 * (stream and not, the real event sequence). Text is deterministic.
 *
 * It is a strict double of the real providers: a chat request is checked the way they
 * check it (each dialect's auth header, the top-level keys each API documents, message
 * roles and order, content block types, tool calls and the tool results that answer
 * them) and refused with a 400 in that dialect naming the problem. That is what catches
 * a gateway that passes a field through to the other dialect by accident. The checks
 * walk the body in place, without a parse tree, so the bench's upstream stays fast.
 *
 * Tool calls: when the request defines tools and tool_choice forces one (or the header
 * x-mock-tool-call names one), the answer is a call to it with fixed arguments
 * ({"city":"Paris","unit":"celsius"}; a second parallel call, for Tokyo, with
 * x-mock-tool-calls: 2), its arguments cut over several stream deltas. When the last
 * message holds tool results, the answer is the text "Tool result: " and their content.
 * A request with stop sequences ends with Anthropic's stop_reason "stop_sequence".
 *
 * Faults are chosen per request by header, or for every request by flag:
 *   x-mock-status: 429|500|503|...   answer with that error in the caller's dialect
 *   x-mock-latency-ms: N             wait before the first byte
 *   x-mock-event-delay-ms: N         wait between stream events (an OpenAI stream's finish
 *                                    chunk, usage chunk and [DONE] go out together)
 *   x-mock-disconnect-after: N       drop the connection after N stream events
 *                                    (0: before any response byte)
 *   x-mock-tokens: N                 completion length in tokens (default 16, or max_tokens)
 *   x-mock-no-usage: 1               an OpenAI stream without the usage chunk, even when asked
 * With --expect-key K, a request without K in its dialect's auth header (OpenAI:
 * Authorization: Bearer; Anthropic: x-api-key or Authorization: Bearer), or with any
 * other key in either header, gets 401: the tests use it to prove the gateway sends the
 * provider key, not the client's.
 * With --record, the last chat request of each dialect (method, target, headers, body)
 * is kept and served at GET /mock/last?dialect=openai|anthropic, so tests can see what
 * the gateway sent. GET /mock/stats reports requests and connections seen.
 */
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
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
	bool record;
};

static struct defaults dflt = { .disconnect_after = -1 };
static atomic_uint_fast64_t stat_requests, stat_streams;

enum dialect { OPENAI, ANTHROPIC };

/* ---------------------------------------------------------------- walking a body
 *
 * json_scan_object has checked the whole body's structure before any of this runs, so
 * these only need to find where values end: strings by their closing quote, containers
 * by depth. Values are raw slices (strings keep their quotes and escapes, which lets a
 * string's body be copied into a response as it is). */

struct walk {
	const char *p, *end;
};

/* p at an opening quote: the byte after the closing one. */
static const char *skip_str(const char *p, const char *end)
{
	const char *q = p + 1;
	while (q < end) {
		const char *e = memchr(q, '"', (size_t)(end - q));
		if (!e)
			return end;
		const char *b = e;
		while (b > q && b[-1] == '\\')
			b--;
		if ((e - b) % 2 == 0)
			return e + 1;
		q = e + 1;
	}
	return end;
}

static const char *skip_val(const char *p, const char *end)
{
	if (p < end && *p == '"')
		return skip_str(p, end);
	if (p < end && (*p == '{' || *p == '[')) {
		int depth = 0;
		while (p < end) {
			if (*p == '"') {
				p = skip_str(p, end);
				continue;
			}
			if (*p == '{' || *p == '[')
				depth++;
			else if ((*p == '}' || *p == ']') && --depth == 0)
				return p + 1;
			p++;
		}
		return end;
	}
	while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\t' &&
	       *p != '\n' && *p != '\r')
		p++;
	return p;
}

static const char *skip_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* v: an object or array value (already trimmed). */
static void walk_open(struct walk *w, struct slice v)
{
	w->p = v.n ? v.p + 1 : v.p;
	w->end = v.n ? v.p + v.n - 1 : v.p;
}

/* The next member (key: its name without quotes) or element (key NULL). */
static bool walk_next(struct walk *w, struct slice *key, struct slice *val)
{
	w->p = skip_ws(w->p, w->end);
	if (w->p < w->end && *w->p == ',')
		w->p = skip_ws(w->p + 1, w->end);
	if (w->p >= w->end)
		return false;
	if (key) {
		const char *k = w->p;
		w->p = skip_str(k, w->end);
		*key = slice_of(k + 1, (size_t)(w->p - k - 2));
		w->p = skip_ws(w->p, w->end) + 1; /* the colon */
		w->p = skip_ws(w->p, w->end);
	}
	const char *v = w->p;
	w->p = skip_val(v, w->end);
	*val = slice_of(v, (size_t)(w->p - v));
	return true;
}

static bool walk_more(const struct walk *w) { return skip_ws(w->p, w->end) < w->end; }

/* The members of object obj named in names go to vals (absent: {NULL, 0}); the name of
 * the first other member goes to *extra (extra->p NULL if there is none). */
static void members(struct slice obj, const char *const *names, struct slice *vals, unsigned n,
		    struct slice *extra)
{
	memset(vals, 0, n * sizeof(*vals));
	*extra = (struct slice){ 0 };
	struct walk w;
	struct slice k, v;
	walk_open(&w, obj);
	while (walk_next(&w, &k, &v)) {
		unsigned i = 0;
		while (i < n && !slice_eq_cstr(k, names[i]))
			i++;
		if (i < n)
			vals[i] = v;
		else if (!extra->p)
			*extra = k;
	}
}
#define MEMBERS(obj, names, vals, extra) \
	members(obj, names, vals, sizeof(names) / sizeof(names[0]), extra)

static bool given(struct slice v) { return v.p && !json_is_null(v); }
static bool is_str(struct slice v) { return v.n >= 2 && v.p[0] == '"'; }
static bool is_obj(struct slice v) { return v.n && v.p[0] == '{'; }
static bool is_arr(struct slice v) { return v.n && v.p[0] == '['; }
static bool is_bool(struct slice v) { return json_is_true(v) || slice_eq_cstr(v, "false"); }
static bool is_empty(struct slice v) { return v.n == 2; } /* "", [] or {} */
/* A string's body: its bytes between the quotes, escapes kept. */
static struct slice str_body(struct slice v) { return slice_of(v.p + 1, v.n - 2); }
static bool str_is(struct slice v, const char *s) { return is_str(v) && slice_eq_cstr(str_body(v), s); }

static bool number(struct slice v, double *out)
{
	char tmp[64];
	if (!v.n || v.n >= sizeof(tmp) || !(v.p[0] == '-' || (v.p[0] >= '0' && v.p[0] <= '9')))
		return false;
	memcpy(tmp, v.p, v.n);
	tmp[v.n] = '\0';
	char *endp;
	*out = strtod(tmp, &endp);
	return *endp == '\0' && isfinite(*out);
}

/* Does the JSON string v hold a JSON object (tool call arguments are sent that way)? */
static bool str_holds_object(struct slice v)
{
	struct slice s = str_body(v);
	char small[1024];
	char *t = s.n < sizeof(small) ? small : malloc(s.n + 1);
	if (!t)
		return false;
	size_t n = 0;
	for (size_t i = 0; i < s.n; i++) {
		char c = s.p[i];
		if (c == '\\' && i + 1 < s.n) {
			char e = s.p[++i];
			if (e == 'u') {
				/* Only structure matters here: a code point is itself when it is ASCII,
				 * else a letter, which stays invalid outside a string. */
				unsigned cp = 0;
				if (i + 4 < s.n && sscanf(s.p + i + 1, "%4x", &cp) == 1)
					i += 4;
				c = cp < 0x80 && cp >= 0x20 ? (char)cp : 'x';
			} else {
				c = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e == 'b' || e == 'f' ? ' ' : e;
			}
		}
		t[n++] = c;
	}
	bool ok = json_scan_object(slice_of(t, n), NULL, NULL, 0) == 0;
	if (t != small)
		free(t);
	return ok;
}

/* ---------------------------------------------------------------- checking a request */

#define MAX_TOOLS 128
#define MAX_IDS 256
#define MAX_RESULTS 16

/* What a checked chat request asks for. */
struct req {
	struct slice model;      /* string body */
	bool stream, include_usage;
	int64_t max_tokens;      /* 0: not given */
	struct slice tools[MAX_TOOLS]; /* tool names (string bodies) */
	unsigned ntools;
	struct slice forced;     /* the tool that tool_choice forces, or {NULL, 0} */
	bool no_tools;           /* tool_choice "none" */
	struct slice results[MAX_RESULTS]; /* text of the last message's tool results */
	unsigned nresults;
	struct slice stop;       /* the first stop sequence (raw JSON string), or {NULL, 0} */
	char err[384];           /* why the request is refused */
};

static bool bad(struct req *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool bad(struct req *r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->err, sizeof(r->err), fmt, ap);
	va_end(ap);
	return false;
}

static bool has_tool(const struct req *r, struct slice name)
{
	for (unsigned i = 0; i < r->ntools; i++)
		if (slice_eq(r->tools[i], name))
			return true;
	return false;
}

static bool add_tool(struct req *r, struct slice name_value, unsigned i, const char *where)
{
	if (!is_str(name_value) || is_empty(name_value))
		return bad(r, "%s[%u]: the tool needs a name", where, i);
	if (r->ntools == MAX_TOOLS)
		return bad(r, "%s: at most %d tools", where, MAX_TOOLS);
	r->tools[r->ntools++] = str_body(name_value);
	return true;
}

static void add_result(struct req *r, struct slice text_value)
{
	if (r->nresults < MAX_RESULTS)
		r->results[r->nresults++] = str_body(text_value);
}

struct ids {
	struct slice id[MAX_IDS];
	bool answered[MAX_IDS];
	unsigned n;
};

static int ids_find(const struct ids *s, struct slice id)
{
	for (unsigned i = 0; i < s->n; i++)
		if (slice_eq(s->id[i], id))
			return (int)i;
	return -1;
}

static bool ids_add(struct req *r, struct ids *s, struct slice id)
{
	if (s->n == MAX_IDS)
		return bad(r, "mock: more than %d tool calls in one request", MAX_IDS);
	s->answered[s->n] = false;
	s->id[s->n++] = id;
	return true;
}

/* The first id not answered, or NULL. */
static const struct slice *ids_unanswered(const struct ids *s)
{
	for (unsigned i = 0; i < s->n; i++)
		if (!s->answered[i])
			return &s->id[i];
	return NULL;
}

/* OpenAI Chat Completions: the request body's documented top-level keys. The first ones
 * are checked; the rest are accepted as they are. */
static const char *const oa_keys[] = {
	"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
	"tools", "tool_choice", "stop", "temperature", "top_p", "n",
	"audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
	"metadata", "modalities", "parallel_tool_calls", "prediction", "presence_penalty",
	"prompt_cache_key", "prompt_cache_retention", "reasoning_effort", "response_format",
	"safety_identifier", "seed", "service_tier", "store", "top_logprobs", "user", "verbosity",
	"web_search_options",
};
enum { OA_MODEL, OA_MESSAGES, OA_STREAM, OA_STREAM_OPTIONS, OA_MAX_TOKENS, OA_MAX_COMPLETION_TOKENS,
       OA_TOOLS, OA_TOOL_CHOICE, OA_STOP, OA_TEMPERATURE, OA_TOP_P, OA_N };

static bool oa_tools(struct req *r, struct slice tools)
{
	static const char *const tk[] = { "type", "function" };
	static const char *const fk[] = { "name", "description", "parameters", "strict" };
	if (!is_arr(tools) || is_empty(tools))
		return bad(r, "Invalid 'tools': expected a non-empty array of tools.");
	struct walk w;
	struct slice t, k;
	unsigned i = 0;
	walk_open(&w, tools);
	for (; walk_next(&w, NULL, &t); i++) {
		struct slice v[2], f[4];
		if (!is_obj(t))
			return bad(r, "Invalid type for 'tools[%u]': expected an object.", i);
		MEMBERS(t, tk, v, &k);
		if (k.p)
			return bad(r, "Unrecognized request argument supplied: tools[%u]." SLICE_FMT, i, SLICE_ARG(k));
		if (!str_is(v[0], "function"))
			return bad(r, "Invalid value for 'tools[%u].type': expected 'function'.", i);
		if (!is_obj(v[1]))
			return bad(r, "Missing required parameter: 'tools[%u].function'.", i);
		MEMBERS(v[1], fk, f, &k);
		if (k.p)
			return bad(r, "Unrecognized request argument supplied: tools[%u].function." SLICE_FMT, i,
				   SLICE_ARG(k));
		if ((given(f[1]) && !is_str(f[1])) || (given(f[2]) && !is_obj(f[2])) ||
		    (given(f[3]) && !is_bool(f[3])))
			return bad(r, "Invalid 'tools[%u].function': description is a string, parameters an "
				   "object, strict a boolean.", i);
		if (!add_tool(r, f[0], i, "tools"))
			return false;
	}
	return true;
}

static bool oa_tool_choice(struct req *r, struct slice tc)
{
	static const char *const ck[] = { "type", "function" };
	static const char *const fk[] = { "name" };
	struct slice v[2], f[1], k;
	if (!r->ntools)
		return bad(r, "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' "
			   "are specified.");
	if (str_is(tc, "none")) {
		r->no_tools = true;
		return true;
	}
	if (str_is(tc, "auto"))
		return true;
	if (str_is(tc, "required")) {
		r->forced = r->tools[0];
		return true;
	}
	if (!is_obj(tc))
		return bad(r, "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or an "
			   "object naming a function.");
	MEMBERS(tc, ck, v, &k);
	if (k.p || !str_is(v[0], "function") || !is_obj(v[1]))
		return bad(r, "Invalid value for 'tool_choice': expected {\"type\": \"function\", "
			   "\"function\": {\"name\": ...}}.");
	MEMBERS(v[1], fk, f, &k);
	if (k.p || !is_str(f[0]) || !has_tool(r, str_body(f[0])))
		return bad(r, "Invalid value for 'tool_choice': the function it names is not among 'tools'.");
	r->forced = str_body(f[0]);
	return true;
}

/* One content part of message i; kinds lists the part types that role allows. */
static bool oa_part(struct req *r, struct slice part, unsigned i, unsigned j, const char *role,
		    const char *const *kinds, bool collect)
{
	static const char *const pk[] = { "type", "text", "image_url", "input_audio", "file", "refusal" };
	struct slice v[6], k;
	if (!is_obj(part))
		return bad(r, "Invalid type for 'messages[%u].content[%u]': expected an object.", i, j);
	MEMBERS(part, pk, v, &k);
	if (k.p)
		return bad(r, "Unrecognized request argument supplied: messages[%u].content[%u]." SLICE_FMT,
			   i, j, SLICE_ARG(k));
	if (!is_str(v[0]))
		return bad(r, "Missing required parameter: 'messages[%u].content[%u].type'.", i, j);
	unsigned n = 0;
	while (kinds[n] && !str_is(v[0], kinds[n]))
		n++;
	if (!kinds[n])
		return bad(r, "Invalid value: '" SLICE_FMT "' for 'messages[%u].content[%u].type': a %s "
			   "message does not carry that kind of content part.", SLICE_ARG(str_body(v[0])), i, j,
			   role);
	/* the part's type names the one other member it carries */
	for (unsigned f = 1; f < 6; f++) {
		bool mine = str_is(v[0], pk[f]);
		if (mine != (v[f].p != NULL))
			return bad(r, "Invalid content part 'messages[%u].content[%u]': a '" SLICE_FMT "' part "
				   "carries exactly its own '" SLICE_FMT "' member.", i, j,
				   SLICE_ARG(str_body(v[0])), SLICE_ARG(str_body(v[0])));
	}
	if ((v[1].p && !is_str(v[1])) || (v[5].p && !is_str(v[5])))
		return bad(r, "Invalid type for 'messages[%u].content[%u]': text is a string.", i, j);
	if (v[2].p) {
		static const char *const ik[] = { "url", "detail" };
		struct slice u[2];
		if (!is_obj(v[2]))
			return bad(r, "Invalid type for 'messages[%u].content[%u].image_url': expected an object.",
				   i, j);
		MEMBERS(v[2], ik, u, &k);
		if (k.p || !is_str(u[0]))
			return bad(r, "Invalid 'messages[%u].content[%u].image_url': it holds a url string "
				   "(and an optional detail).", i, j);
	}
	if ((v[3].p && !is_obj(v[3])) || (v[4].p && !is_obj(v[4])))
		return bad(r, "Invalid type for 'messages[%u].content[%u]': expected an object.", i, j);
	if (collect && v[1].p)
		add_result(r, v[1]);
	return true;
}

static bool oa_content(struct req *r, struct slice c, unsigned i, const char *role,
		       const char *const *kinds, bool collect)
{
	if (is_str(c)) {
		if (collect)
			add_result(r, c);
		return true;
	}
	if (!is_arr(c) || is_empty(c))
		return bad(r, "Invalid 'messages[%u].content': expected a string or a non-empty array of "
			   "content parts.", i);
	struct walk w;
	struct slice part;
	walk_open(&w, c);
	for (unsigned j = 0; walk_next(&w, NULL, &part); j++)
		if (!oa_part(r, part, i, j, role, kinds, collect))
			return false;
	return true;
}

static bool oa_tool_calls(struct req *r, struct slice calls, unsigned i, struct ids *pending)
{
	static const char *const ck[] = { "id", "type", "function" };
	static const char *const fk[] = { "name", "arguments" };
	if (!is_arr(calls) || is_empty(calls))
		return bad(r, "Invalid 'messages[%u].tool_calls': expected a non-empty array.", i);
	struct walk w;
	struct slice call, v[3], f[2], k;
	walk_open(&w, calls);
	for (unsigned j = 0; walk_next(&w, NULL, &call); j++) {
		if (!is_obj(call))
			return bad(r, "Invalid type for 'messages[%u].tool_calls[%u]': expected an object.", i, j);
		MEMBERS(call, ck, v, &k);
		if (k.p)
			return bad(r, "Unrecognized request argument supplied: messages[%u].tool_calls[%u]."
				   SLICE_FMT, i, j, SLICE_ARG(k));
		if (!is_str(v[0]) || is_empty(v[0]))
			return bad(r, "Missing required parameter: 'messages[%u].tool_calls[%u].id'.", i, j);
		if (!str_is(v[1], "function"))
			return bad(r, "Invalid value for 'messages[%u].tool_calls[%u].type': expected "
				   "'function'.", i, j);
		if (!is_obj(v[2]))
			return bad(r, "Missing required parameter: 'messages[%u].tool_calls[%u].function'.", i, j);
		MEMBERS(v[2], fk, f, &k);
		if (k.p || !is_str(f[0]) || is_empty(f[0]))
			return bad(r, "Invalid 'messages[%u].tool_calls[%u].function': it holds a name and "
				   "arguments.", i, j);
		if (!is_str(f[1]) || !str_holds_object(f[1]))
			return bad(r, "Invalid 'messages[%u].tool_calls[%u].function.arguments': expected a "
				   "string holding a JSON object.", i, j);
		if (ids_find(pending, str_body(v[0])) >= 0)
			return bad(r, "Duplicate tool call id '" SLICE_FMT "' in 'messages[%u].tool_calls'.",
				   SLICE_ARG(str_body(v[0])), i);
		if (!ids_add(r, pending, str_body(v[0])))
			return false;
	}
	return true;
}

static bool oa_messages(struct req *r, struct slice msgs)
{
	static const char *const mk[] = { "role", "content", "name", "tool_calls", "tool_call_id",
					  "refusal", "function_call", "audio" };
	static const char *const system_parts[] = { "text", NULL };
	static const char *const user_parts[] = { "text", "image_url", "input_audio", "file", NULL };
	static const char *const assistant_parts[] = { "text", "refusal", NULL };
	static const char *const tool_parts[] = { "text", NULL };
	if (!is_arr(msgs))
		return bad(r, "Missing required parameter: 'messages'.");
	if (is_empty(msgs))
		return bad(r, "Invalid 'messages': empty array. Expected an array with minimum length 1, "
			   "but got an empty array instead.");
	struct ids pending = { .n = 0 }; /* the tool calls of the last assistant message */
	struct walk w;
	struct slice msg, v[8], k;
	unsigned i = 0;
	bool last_tool = false;
	walk_open(&w, msgs);
	for (; walk_next(&w, NULL, &msg); i++) {
		if (!is_obj(msg))
			return bad(r, "Invalid type for 'messages[%u]': expected an object.", i);
		MEMBERS(msg, mk, v, &k);
		if (k.p)
			return bad(r, "Additional properties are not allowed ('" SLICE_FMT "' was unexpected) - "
				   "'messages[%u]'", SLICE_ARG(k), i);
		struct slice role = v[0], content = v[1];
		if (!role.p)
			return bad(r, "Missing required parameter: 'messages[%u].role'.", i);
		bool tool = str_is(role, "tool"), assistant = str_is(role, "assistant");
		if (!tool && pending.n) {
			const struct slice *u = ids_unanswered(&pending);
			if (u)
				return bad(r, "An assistant message with 'tool_calls' must be followed by tool "
					   "messages responding to each 'tool_call_id'. The following tool_call_ids "
					   "did not have response messages: " SLICE_FMT, SLICE_ARG(*u));
			pending.n = 0;
		}
		if (!tool && !assistant && (given(v[3]) || given(v[4]) || given(v[5])))
			return bad(r, "Invalid 'messages[%u]': only assistant messages carry tool_calls or a "
				   "refusal, only tool messages a tool_call_id.", i);
		if (given(v[2]) && !is_str(v[2]))
			return bad(r, "Invalid type for 'messages[%u].name': expected a string.", i);
		if (str_is(role, "system") || str_is(role, "developer")) {
			if (!given(content))
				return bad(r, "Missing required parameter: 'messages[%u].content'.", i);
			if (!oa_content(r, content, i, "system", system_parts, false))
				return false;
		} else if (str_is(role, "user")) {
			if (!given(content))
				return bad(r, "Missing required parameter: 'messages[%u].content'.", i);
			if (!oa_content(r, content, i, "user", user_parts, false))
				return false;
		} else if (assistant) {
			if (given(v[4]))
				return bad(r, "Invalid 'messages[%u]': only tool messages carry a tool_call_id.", i);
			if (!given(content) && !given(v[3]) && !given(v[6]))
				return bad(r, "Invalid value for 'messages[%u].content': expected a string, got "
					   "null (an assistant message without tool_calls needs content).", i);
			if (given(content) && !oa_content(r, content, i, "assistant", assistant_parts, false))
				return false;
			if (given(v[3]) && !oa_tool_calls(r, v[3], i, &pending))
				return false;
		} else if (tool) {
			if (given(v[3]))
				return bad(r, "Invalid 'messages[%u]': only assistant messages carry tool_calls.", i);
			if (!is_str(v[4]))
				return bad(r, "Missing required parameter: 'messages[%u].tool_call_id'.", i);
			int at = ids_find(&pending, str_body(v[4]));
			if (at < 0)
				return bad(r, "Invalid parameter: messages with role 'tool' must be a response to a "
					   "preceding message with 'tool_calls' ('messages[%u].tool_call_id' is '"
					   SLICE_FMT "').", i, SLICE_ARG(str_body(v[4])));
			pending.answered[at] = true;
			if (!given(content))
				return bad(r, "Missing required parameter: 'messages[%u].content'.", i);
			if (!last_tool)
				r->nresults = 0; /* only the trailing run of tool messages is answered */
			if (!oa_content(r, content, i, "tool", tool_parts, true))
				return false;
		} else {
			return bad(r, "Invalid value: '" SLICE_FMT "'. Supported values are: 'system', "
				   "'assistant', 'user', 'tool', 'function', and 'developer'. - 'messages[%u].role'",
				   SLICE_ARG(is_str(role) ? str_body(role) : role), i);
		}
		last_tool = tool;
	}
	if (!last_tool)
		r->nresults = 0;
	return true;
}

static bool check_openai(struct req *r, struct slice body)
{
	struct slice v[sizeof(oa_keys) / sizeof(oa_keys[0])], k;
	MEMBERS(body, oa_keys, v, &k);
	if (k.p)
		return bad(r, "Unrecognized request argument supplied: " SLICE_FMT, SLICE_ARG(k));
	if (!is_str(v[OA_MODEL]))
		return bad(r, "you must provide a model parameter");
	r->model = str_body(v[OA_MODEL]);
	if (given(v[OA_STREAM]) && !is_bool(v[OA_STREAM]))
		return bad(r, "Invalid type for 'stream': expected a boolean.");
	r->stream = v[OA_STREAM].p && json_is_true(v[OA_STREAM]);
	if (given(v[OA_STREAM_OPTIONS])) {
		static const char *const sk[] = { "include_usage", "include_obfuscation" };
		struct slice s[2];
		if (!r->stream)
			return bad(r, "The 'stream_options' parameter is only allowed when 'stream' is enabled.");
		if (!is_obj(v[OA_STREAM_OPTIONS]))
			return bad(r, "Invalid type for 'stream_options': expected an object.");
		MEMBERS(v[OA_STREAM_OPTIONS], sk, s, &k);
		if (k.p)
			return bad(r, "Unrecognized request argument supplied: stream_options." SLICE_FMT,
				   SLICE_ARG(k));
		r->include_usage = s[0].p && json_is_true(s[0]);
	}
	for (int f = OA_MAX_TOKENS; f <= OA_MAX_COMPLETION_TOKENS; f++) {
		if (!given(v[f]))
			continue;
		if (!json_int(v[f], &r->max_tokens) || r->max_tokens < 1)
			return bad(r, "Invalid '%s': expected an integer of at least 1.", oa_keys[f]);
	}
	double x;
	if (given(v[OA_TEMPERATURE]) && (!number(v[OA_TEMPERATURE], &x) || x < 0 || x > 2))
		return bad(r, "Invalid 'temperature': expected a number from 0 to 2.");
	if (given(v[OA_TOP_P]) && (!number(v[OA_TOP_P], &x) || x < 0 || x > 1))
		return bad(r, "Invalid 'top_p': expected a number from 0 to 1.");
	int64_t n;
	if (given(v[OA_N]) && (!json_int(v[OA_N], &n) || n < 1))
		return bad(r, "Invalid 'n': expected an integer of at least 1.");
	if (given(v[OA_STOP])) {
		struct slice stop = v[OA_STOP];
		if (is_str(stop)) {
			r->stop = stop;
		} else if (is_arr(stop)) {
			struct walk w;
			struct slice s;
			unsigned count = 0;
			walk_open(&w, stop);
			while (walk_next(&w, NULL, &s)) {
				if (!is_str(s) || ++count > 4)
					return bad(r, "Invalid 'stop': expected a string or an array of up to 4 "
						   "strings.");
				if (!r->stop.p)
					r->stop = s;
			}
		} else {
			return bad(r, "Invalid 'stop': expected a string or an array of up to 4 strings.");
		}
	}
	if (given(v[OA_TOOLS]) && !oa_tools(r, v[OA_TOOLS]))
		return false;
	if (given(v[OA_TOOL_CHOICE]) && !oa_tool_choice(r, v[OA_TOOL_CHOICE]))
		return false;
	return oa_messages(r, v[OA_MESSAGES]);
}

/* Anthropic Messages: the request body's documented top-level keys (the first ones are
 * checked, the rest accepted as they are). Anything else: "Extra inputs are not
 * permitted". */
static const char *const an_keys[] = {
	"model", "messages", "max_tokens", "stream", "system", "stop_sequences", "temperature",
	"top_p", "top_k", "tools", "tool_choice", "metadata",
	"container", "context_management", "mcp_servers", "service_tier", "thinking",
};
enum { AN_MODEL, AN_MESSAGES, AN_MAX_TOKENS, AN_STREAM, AN_SYSTEM, AN_STOP_SEQUENCES, AN_TEMPERATURE,
       AN_TOP_P, AN_TOP_K, AN_TOOLS, AN_TOOL_CHOICE, AN_METADATA };

/* Keys of a content block by type (cache_control is allowed on all of them). */
static const char *const an_block_keys[] = { "type", "cache_control", "text", "citations", "source",
					     "id", "name", "input", "tool_use_id", "content",
					     "is_error", "thinking", "signature", "data", "title",
					     "context" };
enum { B_TYPE, B_CACHE, B_TEXT, B_CITATIONS, B_SOURCE, B_ID, B_NAME, B_INPUT, B_TOOL_USE_ID,
       B_CONTENT, B_IS_ERROR, B_THINKING, B_SIGNATURE, B_DATA, B_TITLE, B_CONTEXT, B_COUNT };
static const struct {
	const char *type;
	unsigned long required, allowed; /* bit masks of an_block_keys */
} an_blocks[] = {
#define K(x) (1ul << (x))
	{ "text", K(B_TEXT), K(B_CITATIONS) },
	{ "image", K(B_SOURCE), 0 },
	{ "document", K(B_SOURCE), K(B_TITLE) | K(B_CONTEXT) | K(B_CITATIONS) },
	{ "tool_use", K(B_ID) | K(B_NAME) | K(B_INPUT), 0 },
	{ "tool_result", K(B_TOOL_USE_ID), K(B_CONTENT) | K(B_IS_ERROR) },
	{ "thinking", K(B_THINKING) | K(B_SIGNATURE), 0 },
	{ "redacted_thinking", K(B_DATA), 0 },
#undef K
};

static bool an_source(struct req *r, struct slice src, const char *where, unsigned i, unsigned j)
{
	static const char *const sk[] = { "type", "media_type", "data", "url" };
	struct slice s[4], k;
	if (!is_obj(src))
		return bad(r, "%s.%u.content.%u.source: Input should be an object", where, i, j);
	MEMBERS(src, sk, s, &k);
	if (k.p)
		return bad(r, "%s.%u.content.%u.source." SLICE_FMT ": Extra inputs are not permitted", where,
			   i, j, SLICE_ARG(k));
	if (str_is(s[0], "base64") && is_str(s[1]) && is_str(s[2]) && !s[3].p)
		return true;
	if (str_is(s[0], "url") && is_str(s[3]) && !s[1].p && !s[2].p)
		return true;
	return bad(r, "%s.%u.content.%u.source: expected {type: \"base64\", media_type, data} or "
		   "{type: \"url\", url}", where, i, j);
}

/* One content block of message i (where: "messages", or "system" for its text blocks).
 * tool_use ids go to uses; tool_result ids are checked against answered (the previous
 * assistant turn's tool_use ids) and their text collected. */
static bool an_block(struct req *r, struct slice blk, const char *where, unsigned i, unsigned j,
		     bool user, struct ids *uses, struct ids *answered)
{
	struct slice v[B_COUNT], k;
	if (!is_obj(blk))
		return bad(r, "%s.%u.content.%u: Input should be a valid dictionary", where, i, j);
	MEMBERS(blk, an_block_keys, v, &k);
	if (k.p)
		return bad(r, "%s.%u.content.%u." SLICE_FMT ": Extra inputs are not permitted", where, i, j,
			   SLICE_ARG(k));
	unsigned t = 0, nt = sizeof(an_blocks) / sizeof(an_blocks[0]);
	while (t < nt && !str_is(v[B_TYPE], an_blocks[t].type))
		t++;
	if (t == nt || (!strcmp(where, "system") && t != 0))
		return bad(r, "%s.%u.content.%u: Input tag '" SLICE_FMT "' found using 'type' does not match "
			   "any of the expected tags", where, i, j,
			   SLICE_ARG(is_str(v[B_TYPE]) ? str_body(v[B_TYPE]) : v[B_TYPE]));
	for (unsigned f = B_CACHE + 1; f < B_COUNT; f++) {
		unsigned long bit = 1ul << f;
		if (v[f].p && !(an_blocks[t].required & bit) && !(an_blocks[t].allowed & bit))
			return bad(r, "%s.%u.content.%u.%s.%s: Extra inputs are not permitted", where, i, j,
				   an_blocks[t].type, an_block_keys[f]);
		if (!v[f].p && (an_blocks[t].required & bit))
			return bad(r, "%s.%u.content.%u.%s.%s: Field required", where, i, j,
				   an_blocks[t].type, an_block_keys[f]);
	}
	if (given(v[B_CACHE]) && !is_obj(v[B_CACHE]))
		return bad(r, "%s.%u.content.%u.cache_control: Input should be an object", where, i, j);
	switch (t) {
	case 0:
		if (!is_str(v[B_TEXT]))
			return bad(r, "%s.%u.content.%u.text.text: Input should be a valid string", where, i, j);
		if (is_empty(v[B_TEXT]))
			return bad(r, "%s: text content blocks must be non-empty", where);
		return true;
	case 1:
	case 2:
		return an_source(r, v[B_SOURCE], where, i, j);
	case 3:
		if (user)
			return bad(r, "%s.%u.content.%u: tool_use blocks are only allowed in assistant messages",
				   where, i, j);
		if (!is_str(v[B_ID]) || is_empty(v[B_ID]) || !is_str(v[B_NAME]) || is_empty(v[B_NAME]))
			return bad(r, "%s.%u.content.%u.tool_use: id and name are non-empty strings", where, i, j);
		if (!is_obj(v[B_INPUT]))
			return bad(r, "%s.%u.content.%u.tool_use.input: Input should be a valid dictionary", where,
				   i, j);
		if (ids_find(uses, str_body(v[B_ID])) >= 0)
			return bad(r, "%s.%u.content.%u: `tool_use` ids must be unique", where, i, j);
		return ids_add(r, uses, str_body(v[B_ID]));
	case 4: {
		if (!user)
			return bad(r, "%s.%u.content.%u: tool_result blocks are only allowed in user messages",
				   where, i, j);
		if (!is_str(v[B_TOOL_USE_ID]))
			return bad(r, "%s.%u.content.%u.tool_result.tool_use_id: Input should be a valid string",
				   where, i, j);
		int at = ids_find(answered, str_body(v[B_TOOL_USE_ID]));
		if (at < 0)
			return bad(r, "%s.%u.content.%u: unexpected `tool_use_id` found in `tool_result` blocks: "
				   SLICE_FMT ". Each `tool_result` block must have a corresponding `tool_use` block "
				   "in the previous message.", where, i, j, SLICE_ARG(str_body(v[B_TOOL_USE_ID])));
		answered->answered[at] = true;
		if (given(v[B_IS_ERROR]) && !is_bool(v[B_IS_ERROR]))
			return bad(r, "%s.%u.content.%u.tool_result.is_error: Input should be a valid boolean",
				   where, i, j);
		struct slice c = v[B_CONTENT];
		if (!given(c))
			return true;
		if (is_str(c)) {
			add_result(r, c);
			return true;
		}
		if (!is_arr(c))
			return bad(r, "%s.%u.content.%u.tool_result.content: Input should be a valid string or "
				   "list", where, i, j);
		struct walk w;
		struct slice inner;
		walk_open(&w, c);
		for (unsigned n = 0; walk_next(&w, NULL, &inner); n++) {
			struct slice iv[B_COUNT];
			MEMBERS(inner, an_block_keys, iv, &k);
			if (!str_is(iv[B_TYPE], "text") && !str_is(iv[B_TYPE], "image") &&
			    !str_is(iv[B_TYPE], "document"))
				return bad(r, "%s.%u.content.%u.tool_result.content.%u: only text, image and "
					   "document blocks", where, i, j, n);
			struct ids none = { .n = 0 };
			if (!an_block(r, inner, where, i, j, true, &none, &none))
				return false;
			if (iv[B_TEXT].p)
				add_result(r, iv[B_TEXT]);
		}
		return true;
	}
	default:
		if (user)
			return bad(r, "%s.%u.content.%u: thinking blocks are only allowed in assistant messages",
				   where, i, j);
		return true;
	}
}

static bool an_messages(struct req *r, struct slice msgs)
{
	static const char *const mk[] = { "role", "content" };
	if (!msgs.p)
		return bad(r, "messages: Field required");
	if (!is_arr(msgs))
		return bad(r, "messages: Input should be a valid list");
	if (is_empty(msgs))
		return bad(r, "messages: at least one message is required");
	struct ids prev = { .n = 0 }; /* the tool_use ids of the previous (assistant) turn */
	struct walk w;
	struct slice msg, v[2], k;
	bool was_user = false;
	unsigned i = 0;
	walk_open(&w, msgs);
	for (; walk_next(&w, NULL, &msg); i++) {
		if (!is_obj(msg))
			return bad(r, "messages.%u: Input should be a valid dictionary", i);
		MEMBERS(msg, mk, v, &k);
		if (k.p)
			return bad(r, "messages.%u." SLICE_FMT ": Extra inputs are not permitted", i, SLICE_ARG(k));
		bool user = str_is(v[0], "user");
		if (!user && !str_is(v[0], "assistant")) {
			if (str_is(v[0], "system"))
				return bad(r, "messages: Unexpected role \"system\". The Messages API accepts a "
					   "top-level `system` parameter, not \"system\" as an input message role.");
			return bad(r, "messages.%u.role: Input should be 'user' or 'assistant'", i);
		}
		if (i == 0 && !user)
			return bad(r, "messages: first message must use the \"user\" role");
		if (i > 0 && user == was_user)
			return bad(r, "messages: roles must alternate between \"user\" and \"assistant\", but found "
				   "multiple \"%s\" roles in a row", user ? "user" : "assistant");
		r->nresults = 0;
		struct ids uses = { .n = 0 };
		struct slice c = v[1];
		if (!c.p)
			return bad(r, "messages.%u.content: Field required", i);
		if (is_str(c)) {
			if (is_empty(c) && (user || walk_more(&w)))
				return bad(r, "messages.%u: text content blocks must be non-empty", i);
		} else if (is_arr(c)) {
			if (is_empty(c) && (user || walk_more(&w)))
				return bad(r, "messages.%u: all messages must have non-empty content except for "
					   "the optional final assistant message", i);
			struct walk bw;
			struct slice blk;
			walk_open(&bw, c);
			for (unsigned j = 0; walk_next(&bw, NULL, &blk); j++)
				if (!an_block(r, blk, "messages", i, j, user, &uses, &prev))
					return false;
		} else {
			return bad(r, "messages.%u.content: Input should be a valid string or list", i);
		}
		if (user) {
			const struct slice *u = ids_unanswered(&prev);
			if (u)
				return bad(r, "messages.%u: `tool_use` ids were found without `tool_result` blocks "
					   "immediately after: " SLICE_FMT ". Each `tool_use` block must have a "
					   "corresponding `tool_result` block in the next message.", i - 1, SLICE_ARG(*u));
		}
		prev = uses;
		was_user = user;
	}
	if (!was_user)
		r->nresults = 0;
	return true;
}

static bool an_tools(struct req *r, struct slice tools)
{
	static const char *const tk[] = { "name", "description", "input_schema", "type", "cache_control" };
	if (!is_arr(tools))
		return bad(r, "tools: Input should be a valid list");
	struct walk w;
	struct slice t, v[5], k;
	walk_open(&w, tools);
	for (unsigned i = 0; walk_next(&w, NULL, &t); i++) {
		if (!is_obj(t))
			return bad(r, "tools.%u: Input should be a valid dictionary", i);
		MEMBERS(t, tk, v, &k);
		bool custom = !v[3].p || str_is(v[3], "custom");
		if (k.p && custom)
			return bad(r, "tools.%u.custom." SLICE_FMT ": Extra inputs are not permitted", i,
				   SLICE_ARG(k));
		if (custom && !is_obj(v[2]))
			return bad(r, "tools.%u.custom.input_schema: Field required", i);
		if (given(v[1]) && !is_str(v[1]))
			return bad(r, "tools.%u.custom.description: Input should be a valid string", i);
		if (!add_tool(r, v[0], i, "tools"))
			return false;
	}
	return true;
}

static bool an_tool_choice(struct req *r, struct slice tc)
{
	static const char *const ck[] = { "type", "name", "disable_parallel_tool_use" };
	struct slice v[3], k;
	if (!is_obj(tc))
		return bad(r, "tool_choice: Input should be a valid dictionary or object to extract fields from");
	MEMBERS(tc, ck, v, &k);
	if (k.p)
		return bad(r, "tool_choice." SLICE_FMT ": Extra inputs are not permitted", SLICE_ARG(k));
	if (given(v[2]) && !is_bool(v[2]))
		return bad(r, "tool_choice.disable_parallel_tool_use: Input should be a valid boolean");
	if (str_is(v[0], "auto") && !v[1].p)
		return true;
	if (str_is(v[0], "none") && !v[1].p) {
		r->no_tools = true;
		return true;
	}
	if (!r->ntools)
		return bad(r, "tool_choice: a tool must be required only when tools are given");
	if (str_is(v[0], "any") && !v[1].p) {
		r->forced = r->tools[0];
		return true;
	}
	if (str_is(v[0], "tool") && is_str(v[1])) {
		if (!has_tool(r, str_body(v[1])))
			return bad(r, "tool_choice.name: tool '" SLICE_FMT "' is not among the tools",
				   SLICE_ARG(str_body(v[1])));
		r->forced = str_body(v[1]);
		return true;
	}
	return bad(r, "tool_choice: Input tag found using 'type' does not match any of the expected tags: "
		   "'auto', 'any', 'tool', 'none' (a 'tool' choice names the tool)");
}

static bool check_anthropic(struct req *r, struct slice body)
{
	struct slice v[sizeof(an_keys) / sizeof(an_keys[0])], k;
	MEMBERS(body, an_keys, v, &k);
	if (k.p)
		return bad(r, SLICE_FMT ": Extra inputs are not permitted", SLICE_ARG(k));
	if (!is_str(v[AN_MODEL]))
		return bad(r, "model: Field required");
	r->model = str_body(v[AN_MODEL]);
	if (!v[AN_MAX_TOKENS].p)
		return bad(r, "max_tokens: Field required");
	if (!json_int(v[AN_MAX_TOKENS], &r->max_tokens) || r->max_tokens < 1)
		return bad(r, "max_tokens: Input should be a valid integer greater than or equal to 1");
	if (v[AN_STREAM].p && !is_bool(v[AN_STREAM]))
		return bad(r, "stream: Input should be a valid boolean");
	r->stream = v[AN_STREAM].p && json_is_true(v[AN_STREAM]);
	double x;
	if (v[AN_TEMPERATURE].p && (!number(v[AN_TEMPERATURE], &x) || x < 0 || x > 1))
		return bad(r, "temperature: Input should be a number from 0 to 1");
	if (v[AN_TOP_P].p && (!number(v[AN_TOP_P], &x) || x < 0 || x > 1))
		return bad(r, "top_p: Input should be a number from 0 to 1");
	int64_t n;
	if (v[AN_TOP_K].p && (!json_int(v[AN_TOP_K], &n) || n < 0))
		return bad(r, "top_k: Input should be a valid integer greater than or equal to 0");
	if (v[AN_STOP_SEQUENCES].p) {
		if (!is_arr(v[AN_STOP_SEQUENCES]))
			return bad(r, "stop_sequences: Input should be a valid list");
		struct walk w;
		struct slice s;
		walk_open(&w, v[AN_STOP_SEQUENCES]);
		while (walk_next(&w, NULL, &s)) {
			if (!is_str(s) || is_empty(s))
				return bad(r, "stop_sequences: each stop sequence is a non-empty string");
			if (!r->stop.p)
				r->stop = s;
		}
	}
	if (v[AN_SYSTEM].p && !is_str(v[AN_SYSTEM])) {
		if (!is_arr(v[AN_SYSTEM]))
			return bad(r, "system: Input should be a valid string or list of text blocks");
		struct walk w;
		struct slice blk;
		struct ids none = { .n = 0 };
		walk_open(&w, v[AN_SYSTEM]);
		for (unsigned j = 0; walk_next(&w, NULL, &blk); j++)
			if (!an_block(r, blk, "system", 0, j, true, &none, &none))
				return false;
	}
	if (v[AN_METADATA].p) {
		static const char *const mk[] = { "user_id" };
		struct slice m[1];
		if (!is_obj(v[AN_METADATA]))
			return bad(r, "metadata: Input should be a valid dictionary");
		MEMBERS(v[AN_METADATA], mk, m, &k);
		if (k.p)
			return bad(r, "metadata." SLICE_FMT ": Extra inputs are not permitted", SLICE_ARG(k));
	}
	if (v[AN_TOOLS].p && !an_tools(r, v[AN_TOOLS]))
		return false;
	if (v[AN_TOOL_CHOICE].p && !an_tool_choice(r, v[AN_TOOL_CHOICE]))
		return false;
	return an_messages(r, v[AN_MESSAGES]);
}

/* ---------------------------------------------------------------- answers */

/* One response being produced: the whole text prebuilt, events sent one by one. */
struct mock_ex {
	struct exchange *ex;
	unsigned refs; /* the exchange + each queued segment */
	struct buf out; /* the whole response */
	size_t *ev_off; /* start of event i; ev_off[nev] == len */
	unsigned nev, nev_cap, next;
	int event_delay_ms;
	int disconnect_after;
	bool stream;
	int status;
	const char *ctype;
};

/* What the answer holds. */
struct answer {
	const struct req *r;
	int tokens;       /* words of text */
	bool echo;        /* the text is the tool results' instead */
	unsigned ncalls;  /* tool calls instead of text */
	struct slice tool; /* the tool they call (string body) */
	int prompt_tokens;
	bool no_usage;    /* like a server that reports none (x-mock-no-usage) */
};

static const char *const words[] = {
	"The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".",
	" Penstock", " routes", " every", " request", " through", " one", " gateway", ",",
	" counting", " tokens", " as", " they", " pass", ".",
};
#define NWORDS (sizeof(words) / sizeof(words[0]))

/* The arguments of tool call i are {"city":CITY,"unit":"celsius"}. */
static const char *const cities[] = { "Paris", "Tokyo" };
#define ARG_PIECES 4

static atomic_uint_fast64_t response_seq;

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

/* The text comes in pieces, one per stream delta: words, or "Tool result: " and each
 * result (already JSON-escaped, as the request had it). */
static unsigned text_pieces(const struct answer *a)
{
	return a->echo ? 2 * a->r->nresults : (unsigned)a->tokens;
}

static void text_piece(struct mock_ex *m, const struct answer *a, unsigned i)
{
	if (!a->echo)
		mx_printf(m, "%s", words[i % NWORDS]);
	else if (i % 2 == 0)
		mx_printf(m, "%s", i ? "; " : "Tool result: ");
	else
		mx_printf(m, SLICE_FMT, SLICE_ARG(a->r->results[i / 2]));
}

static int output_tokens(const struct answer *a)
{
	return a->ncalls ? 12 * (int)a->ncalls : (int)text_pieces(a);
}

/* Piece p of call i's arguments, escaped for a JSON string; all pieces: the whole. */
static void arg_piece(struct mock_ex *m, unsigned i, int p)
{
	static const char *const fixed[ARG_PIECES] = { "{\\\"city\\\":", NULL, "\\\"unit\\\":\\\"cel",
						       "sius\\\"}" };
	if (p < 0) {
		for (int q = 0; q < ARG_PIECES; q++)
			arg_piece(m, i, q);
	} else if (fixed[p]) {
		mx_printf(m, "%s", fixed[p]);
	} else {
		mx_printf(m, "\\\"%s\\\",", cities[i % 2]);
	}
}

/* A chunk's bytes up to its choices. */
static void oa_chunk_head(struct mock_ex *m, uint64_t id, long now, struct slice model)
{
	mx_printf(m, "data: {\"id\":\"chatcmpl-mock%" PRIu64 "\",\"object\":\"chat.completion.chunk\","
		  "\"created\":%ld,\"model\":\"" SLICE_FMT "\",\"choices\":", id, now, SLICE_ARG(model));
}

/* A chunk that starts an event (paced by --event-delay-ms). */
static void oa_chunk(struct mock_ex *m, uint64_t id, long now, struct slice model)
{
	mx_event_start(m);
	oa_chunk_head(m, id, now, model);
}

static void openai_complete(struct mock_ex *m, const struct answer *a)
{
	uint64_t id = atomic_fetch_add_explicit(&response_seq, 1, memory_order_relaxed) + 1;
	long now = (long)time(NULL);
	struct slice model = a->r->model;
	int prompt = a->prompt_tokens, out = output_tokens(a);
	const char *finish = a->ncalls ? "tool_calls" : "stop";
	if (!m->stream) {
		mx_printf(m, "{\"id\":\"chatcmpl-mock%" PRIu64 "\",\"object\":\"chat.completion\","
			  "\"created\":%ld,\"model\":\"" SLICE_FMT "\",\"choices\":[{\"index\":0,"
			  "\"message\":{\"role\":\"assistant\",\"content\":", id, now, SLICE_ARG(model));
		if (a->ncalls) {
			mx_printf(m, "null,\"tool_calls\":[");
			for (unsigned i = 0; i < a->ncalls; i++) {
				mx_printf(m, "%s{\"id\":\"call_mock%" PRIu64 "_%u\",\"type\":\"function\",\"function\":"
					  "{\"name\":\"" SLICE_FMT "\",\"arguments\":\"", i ? "," : "", id, i,
					  SLICE_ARG(a->tool));
				arg_piece(m, i, -1);
				mx_printf(m, "\"}}");
			}
			mx_printf(m, "]");
		} else {
			mx_printf(m, "\"");
			for (unsigned i = 0; i < text_pieces(a); i++)
				text_piece(m, a, i);
			mx_printf(m, "\"");
		}
		mx_printf(m, "},\"logprobs\":null,\"finish_reason\":\"%s\"}],\"usage\":{\"prompt_tokens\":%d,"
			  "\"completion_tokens\":%d,\"total_tokens\":%d}}\n", finish, prompt, out, prompt + out);
		return;
	}
	oa_chunk(m, id, now, model);
	mx_printf(m, "[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":%s},"
		  "\"finish_reason\":null}]}\n\n", a->ncalls ? "null" : "\"\"");
	for (unsigned i = 0; i < a->ncalls; i++) {
		oa_chunk(m, id, now, model);
		mx_printf(m, "[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":%u,\"id\":\"call_mock%" PRIu64
			  "_%u\",\"type\":\"function\",\"function\":{\"name\":\"" SLICE_FMT "\",\"arguments\":"
			  "\"\"}}]},\"finish_reason\":null}]}\n\n", i, id, i, SLICE_ARG(a->tool));
		for (int p = 0; p < ARG_PIECES; p++) {
			oa_chunk(m, id, now, model);
			mx_printf(m, "[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":%u,\"function\":"
				  "{\"arguments\":\"", i);
			arg_piece(m, i, p);
			mx_printf(m, "\"}}]},\"finish_reason\":null}]}\n\n");
		}
	}
	for (unsigned i = 0; !a->ncalls && i < text_pieces(a); i++) {
		oa_chunk(m, id, now, model);
		mx_printf(m, "[{\"index\":0,\"delta\":{\"content\":\"");
		text_piece(m, a, i);
		mx_printf(m, "\"},\"finish_reason\":null}]}\n\n");
	}
	oa_chunk(m, id, now, model);
	mx_printf(m, "[{\"index\":0,\"delta\":{},\"finish_reason\":\"%s\"}]}\n\n", finish);
	/* The usage chunk and [DONE] come with the finish chunk, as OpenAI sends them: not
	 * paced, so that a relay that drops the usage chunk shows no gap for it. */
	if (a->r->include_usage && !a->no_usage) {
		oa_chunk_head(m, id, now, model);
		mx_printf(m, "[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,"
			  "\"total_tokens\":%d}}\n\n", prompt, out, prompt + out);
	}
	mx_printf(m, "data: [DONE]\n\n");
}

static void anthropic_complete(struct mock_ex *m, const struct answer *a)
{
	uint64_t id = atomic_fetch_add_explicit(&response_seq, 1, memory_order_relaxed) + 1;
	struct slice model = a->r->model;
	int prompt = a->prompt_tokens, out = output_tokens(a);
	bool stop_seq = !a->ncalls && a->r->stop.p;
	const char *reason = a->ncalls ? "tool_use" : stop_seq ? "stop_sequence" : "end_turn";
	struct slice seq = stop_seq ? a->r->stop : SLICE_LIT("null");
	if (!m->stream) {
		mx_printf(m, "{\"id\":\"msg_mock%" PRIu64 "\",\"type\":\"message\",\"role\":\"assistant\","
			  "\"model\":\"" SLICE_FMT "\",\"content\":[", id, SLICE_ARG(model));
		for (unsigned i = 0; i < a->ncalls; i++)
			mx_printf(m, "%s{\"type\":\"tool_use\",\"id\":\"toolu_mock%" PRIu64 "_%u\",\"name\":\""
				  SLICE_FMT "\",\"input\":{\"city\":\"%s\",\"unit\":\"celsius\"}}", i ? "," : "", id,
				  i, SLICE_ARG(a->tool), cities[i % 2]);
		if (!a->ncalls) {
			mx_printf(m, "{\"type\":\"text\",\"text\":\"");
			for (unsigned i = 0; i < text_pieces(a); i++)
				text_piece(m, a, i);
			mx_printf(m, "\"}");
		}
		mx_printf(m, "],\"stop_reason\":\"%s\",\"stop_sequence\":" SLICE_FMT ",\"usage\":"
			  "{\"input_tokens\":%d,\"output_tokens\":%d}}\n", reason, SLICE_ARG(seq), prompt, out);
		return;
	}
	mx_event_start(m);
	mx_printf(m, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":"
		  "\"msg_mock%" PRIu64 "\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],"
		  "\"model\":\"" SLICE_FMT "\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":"
		  "{\"input_tokens\":%d,\"output_tokens\":1}}}\n\n", id, SLICE_ARG(model), prompt);
	for (unsigned i = 0; i < a->ncalls; i++) {
		mx_event_start(m);
		mx_printf(m, "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":%u,"
			  "\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_mock%" PRIu64 "_%u\",\"name\":\""
			  SLICE_FMT "\",\"input\":{}}}\n\n", i, id, i, SLICE_ARG(a->tool));
		if (i == 0) {
			mx_event_start(m);
			mx_printf(m, "event: ping\ndata: {\"type\":\"ping\"}\n\n");
		}
		for (int p = -1; p < ARG_PIECES; p++) { /* the first delta is empty, as Anthropic's is */
			mx_event_start(m);
			mx_printf(m, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
				  "\"index\":%u,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"", i);
			if (p >= 0)
				arg_piece(m, i, p);
			mx_printf(m, "\"}}\n\n");
		}
		mx_event_start(m);
		mx_printf(m, "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":%u}\n\n",
			  i);
	}
	if (!a->ncalls) {
		mx_event_start(m);
		mx_printf(m, "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,"
			  "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
		mx_event_start(m);
		mx_printf(m, "event: ping\ndata: {\"type\":\"ping\"}\n\n");
		for (unsigned i = 0; i < text_pieces(a); i++) {
			mx_event_start(m);
			mx_printf(m, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
				  "\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"");
			text_piece(m, a, i);
			mx_printf(m, "\"}}\n\n");
		}
		mx_event_start(m);
		mx_printf(m, "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n");
	}
	mx_event_start(m);
	mx_printf(m, "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
		  "\"%s\",\"stop_sequence\":" SLICE_FMT "},\"usage\":{\"output_tokens\":%d}}\n\n", reason,
		  SLICE_ARG(seq), out);
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

static bool bearer_is_key(const struct http1_header *h)
{
	return h->value.n > 7 && strncasecmp(h->value.p, "Bearer ", 7) == 0 &&
	       slice_eq_cstr(slice_of(h->value.p + 7, h->value.n - 7), dflt.expect_key);
}

/* Does the request carry the expected key as its dialect wants it, and no other key in
 * either auth header? (Anthropic takes x-api-key, and Authorization: Bearer as its
 * current SDK sends it.) The refusal says only "mock error 401", as x-mock-status does:
 * a test that wants to know why reads the headers at /mock/last. */
static bool key_ok(const struct exchange *ex, enum dialect d)
{
	if (!dflt.expect_key)
		return true;
	const struct http1_header *auth = ex_header(ex, "authorization");
	const struct http1_header *xkey = ex_header(ex, "x-api-key");
	if ((auth && !bearer_is_key(auth)) || (xkey && !slice_eq_cstr(xkey->value, dflt.expect_key)))
		return false;
	return d == OPENAI ? auth != NULL : auth || xkey;
}

/* An error in dialect d, with message msg (escaped here). */
static void refuse(struct exchange *ex, enum dialect d, int status, const char *msg)
{
	char esc[1024], body[1400];
	size_t n = json_escape(esc, sizeof(esc) - 1, slice_cstr(msg));
	esc[n] = '\0';
	if (d == ANTHROPIC)
		snprintf(body, sizeof(body), "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":\"%s\"}}\n",
			 status == 401 ? "authentication_error" : "invalid_request_error", esc);
	else
		snprintf(body, sizeof(body), "{\"error\":{\"message\":\"%s\",\"type\":\"invalid_request_error\","
			 "\"param\":null,\"code\":%s}}\n", esc, status == 401 ? "\"invalid_api_key\"" : "null");
	ex_respond(ex, status, "application/json", NULL, slice_cstr(body));
}

static void respond_json(struct exchange *ex, int status, const char *body)
{
	ex_respond(ex, status, "application/json", NULL, slice_cstr(body));
}

/* ---- --record: the last chat request of each dialect. Workers write, any may read. */

static pthread_mutex_t record_lock = PTHREAD_MUTEX_INITIALIZER;
static struct buf recorded[2];

static bool append_escaped(struct buf *b, struct slice s)
{
	if (!buf_reserve(b, 6 * s.n + 1, SIZE_MAX))
		return false;
	b->len += json_escape(b->p + b->len, b->cap - b->len, s);
	return true;
}

static void record_request(const struct exchange *ex, enum dialect d, bool body_is_object)
{
	struct buf b = { 0 };
	bool ok = buf_append(&b, "{\"method\":\"", 11, SIZE_MAX) && append_escaped(&b, ex->req.method) &&
		  buf_append(&b, "\",\"target\":\"", 12, SIZE_MAX) && append_escaped(&b, ex->req.target) &&
		  buf_append(&b, "\",\"headers\":[", 13, SIZE_MAX);
	for (unsigned i = 0; ok && i < ex->req.nheaders; i++) {
		const struct http1_header *h = &ex->req.headers[i];
		ok = buf_append(&b, i ? ",[\"" : "[\"", i ? 3 : 2, SIZE_MAX) && append_escaped(&b, h->name) &&
		     buf_append(&b, "\",\"", 3, SIZE_MAX) && append_escaped(&b, h->value) &&
		     buf_append(&b, "\"]", 2, SIZE_MAX);
	}
	if (body_is_object)
		ok = ok && buf_append(&b, "],\"body\":", 9, SIZE_MAX) &&
		     buf_append(&b, ex->body.p, ex->body.n, SIZE_MAX) && buf_append(&b, "}\n", 2, SIZE_MAX);
	else
		ok = ok && buf_append(&b, "],\"body\":null,\"body_text\":\"", 27, SIZE_MAX) &&
		     append_escaped(&b, ex->body) && buf_append(&b, "\"}\n", 3, SIZE_MAX);
	if (!ok) {
		buf_free(&b);
		return;
	}
	pthread_mutex_lock(&record_lock);
	struct buf old = recorded[d];
	recorded[d] = b;
	pthread_mutex_unlock(&record_lock);
	buf_free(&old);
}

static void handle_last(struct exchange *ex)
{
	struct slice t = ex->req.target;
	const char *q = memchr(t.p, '?', t.n);
	struct slice query = q ? slice_of(q + 1, t.n - (size_t)(q + 1 - t.p)) : (struct slice){ "", 0 };
	int d = slice_eq_cstr(query, "dialect=openai") ? OPENAI
		: slice_eq_cstr(query, "dialect=anthropic") ? ANTHROPIC : -1;
	if (!dflt.record) {
		respond_json(ex, 404, "{\"error\":\"mock: start mockllm with --record\"}\n");
		return;
	}
	if (d < 0) {
		respond_json(ex, 400, "{\"error\":\"mock: ask for ?dialect=openai or ?dialect=anthropic\"}\n");
		return;
	}
	struct buf copy = { 0 };
	pthread_mutex_lock(&record_lock);
	bool ok = recorded[d].len && buf_append(&copy, recorded[d].p, recorded[d].len, SIZE_MAX);
	pthread_mutex_unlock(&record_lock);
	if (ok)
		ex_respond(ex, 200, "application/json", NULL, slice_of(copy.p, copy.len));
	else
		respond_json(ex, 404, "{\"error\":\"mock: no request of that dialect yet\"}\n");
	buf_free(&copy);
}

/* ---- chat */

/* The tool call the request asks for, if any: set a->tool and a->ncalls. Returns false
 * (with r->err) when the x-mock-tool-call header names a tool the request lacks. */
static bool plan_tool_calls(const struct exchange *ex, struct req *r, struct answer *a)
{
	const struct http1_header *h = ex_header(ex, "x-mock-tool-call");
	if (h && !has_tool(r, h->value))
		return bad(r, "mock: x-mock-tool-call names " SLICE_FMT ", which is not among the request's "
			   "tools", SLICE_ARG(h->value));
	if (r->no_tools)
		return true;
	a->tool = r->forced.p ? r->forced : h ? h->value : (struct slice){ 0 };
	if (a->tool.p) {
		int n = header_int(ex, "x-mock-tool-calls", 1);
		a->ncalls = n >= 1 && n <= 8 ? (unsigned)n : 1;
	}
	return true;
}

static void handle_generate(struct exchange *ex, enum dialect d)
{
	bool is_object = json_scan_object(ex->body, NULL, NULL, 0) == 0;
	if (dflt.record)
		record_request(ex, d, is_object);
	if (!key_ok(ex, d)) {
		refuse(ex, d, 401, "mock error 401");
		return;
	}
	if (d == ANTHROPIC && !ex_header(ex, "anthropic-version")) {
		refuse(ex, d, 400, "anthropic-version: header is required");
		return;
	}
	if (!is_object) {
		refuse(ex, d, 400, d == OPENAI ? "We could not parse the JSON body of your request. (mock: "
			"the body is not a JSON object)" : "There was an issue with your request body: it is "
			"not a JSON object (mock)");
		return;
	}
	static const struct req blank;
	struct req req = blank, *r = &req;
	struct answer a = { .r = r };
	struct slice body = ex->body; /* trimmed, as the walkers want it */
	body.p = skip_ws(body.p, body.p + body.n);
	body.n -= (size_t)(body.p - ex->body.p);
	while (body.n && body.p[body.n - 1] != '}')
		body.n--;
	if (!(d == OPENAI ? check_openai(r, body) : check_anthropic(r, body)) ||
	    !plan_tool_calls(ex, r, &a)) {
		refuse(ex, d, 400, r->err);
		return;
	}
	struct mock_ex *m = calloc(1, sizeof(*m));
	if (!m) {
		respond_json(ex, 500, "{}");
		return;
	}
	m->ex = ex;
	m->refs = 1;
	m->stream = r->stream;
	a.echo = !a.ncalls && r->nresults > 0;
	a.tokens = header_int(ex, "x-mock-tokens", dflt.tokens);
	a.no_usage = header_int(ex, "x-mock-no-usage", 0) != 0;
	if (a.tokens <= 0)
		a.tokens = r->max_tokens > 0 && r->max_tokens < 16 ? (int)r->max_tokens : 16;
	a.prompt_tokens = (int)(ex->body.n / 4) + 1;
	m->status = header_int(ex, "x-mock-status", dflt.status ? dflt.status : 200);
	m->event_delay_ms = header_int(ex, "x-mock-event-delay-ms", dflt.event_delay_ms);
	m->disconnect_after = header_int(ex, "x-mock-disconnect-after", dflt.disconnect_after);
	m->ctype = "application/json";
	if (m->status != 200)
		error_body(m, d, m->status);
	else if (d == OPENAI)
		openai_complete(m, &a);
	else
		anthropic_complete(m, &a);
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
	if (!key_ok(ex, OPENAI)) {
		refuse(ex, OPENAI, 401, "mock error 401");
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
	else if (slice_eq_cstr(path, "/mock/last"))
		handle_last(ex);
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
		"               [--expect-key KEY] [--record] [--quiet]\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' }, { "workers", required_argument, NULL, 'w' },
		{ "status", required_argument, NULL, 's' }, { "latency-ms", required_argument, NULL, 'L' },
		{ "event-delay-ms", required_argument, NULL, 'e' },
		{ "disconnect-after", required_argument, NULL, 'd' },
		{ "tokens", required_argument, NULL, 't' }, { "expect-key", required_argument, NULL, 'k' },
		{ "record", no_argument, NULL, 'r' },
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
		case 'r': dflt.record = true; break;
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
