/* translate.c - OpenAI Chat Completions <-> Anthropic Messages: requests, responses, stream
 * events, usage and errors. docs/translation.md is the mapping, field by field; this file
 * follows it. Translation is a full parse and rebuild with jansson: the output is built
 * only from fields we know, so nothing unknown is ever passed through by accident. The
 * same-dialect paths (usage, stream copy-through) use the zero-copy scanner in core/json,
 * and so do the fast paths for the usual translated shapes (a chat request of text messages,
 * a stream's text and the events around it, a plain text response), which write what jansson
 * would, byte for byte.
 */
#include "translate.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* core/json.h first: jansson defines json_is_true and json_is_null as macros, which
 * would otherwise rewrite core/json's declarations of the same names. */
#include "core/json.h"
#include "core/fmt.h"

#include <jansson.h>

#define DEFAULT_MAX_TOKENS 4096 /* Anthropic needs max_tokens; used when nothing else says */
#define SEP "\n\n"              /* between text pieces that one side keeps apart */
#define ID_MAX 160              /* response and message ids, prefix swapped */

/* ---- shared helpers ---- */

/* A translation in progress: where its error message goes, and whether building the
 * output ran out of memory (jansson builders return NULL then; we check once at the end). */
struct cx {
	char *err;
	size_t errlen;
	bool oom;
};

__attribute__((format(printf, 2, 3))) static int fail(struct cx *c, const char *fmt, ...)
{
	if (c->err && c->errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(c->err, c->errlen, fmt, ap);
		va_end(ap);
	}
	return -1;
}

/* Set/append a new reference; a NULL value or a failed insert marks the build as failed. */
static void put(struct cx *c, json_t *obj, const char *key, json_t *v)
{
	if (json_object_set_new(obj, key, v))
		c->oom = true;
}

static void put_ref(struct cx *c, json_t *obj, const char *key, json_t *v)
{
	put(c, obj, key, json_incref(v));
}

static void push(struct cx *c, json_t *arr, json_t *v)
{
	if (json_array_append_new(arr, v))
		c->oom = true;
}

static json_t *get(const json_t *obj, const char *key)
{
	return json_object_get(obj, key);
}

static bool present(const json_t *v)
{
	return v && !json_is_null(v);
}

/* String equality on the full length (strings may hold NUL: we load with JSON_ALLOW_NUL). */
static bool str_is(const json_t *v, const char *s)
{
	size_t n = strlen(s);
	return json_is_string(v) && json_string_length(v) == n && memcmp(json_string_value(v), s, n) == 0;
}

/* For error messages: a string value cut short, or a placeholder. */
static const char *show(const json_t *v)
{
	return json_is_string(v) ? json_string_value(v) : v ? "(not a string)" : "(none)";
}

static json_t *stringn(const char *p, size_t n)
{
	return json_stringn(n ? p : "", n);
}

static bool uint_of(const json_t *v, uint64_t *out)
{
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return false;
	*out = (uint64_t)json_integer_value(v);
	return true;
}

static json_t *load(struct slice s)
{
	return json_loadb(s.p ? s.p : "", s.n, JSON_ALLOW_NUL, NULL);
}

static int dump_cb(const char *p, size_t n, void *arg)
{
	return buf_append(arg, p, n, XLAT_MAX_OUT) ? 0 : -1;
}

/* Append text pieces to out, all or nothing. */
static bool emit_raw(struct buf *out, const char *s)
{
	return buf_append(out, s, strlen(s), XLAT_MAX_OUT);
}

/* Append j, compact, to out; all or nothing. */
static bool emit_json(struct buf *out, const json_t *j)
{
	size_t mark = out->len;
	if (j && json_dump_callback(j, dump_cb, out, JSON_COMPACT | JSON_ENCODE_ANY) == 0)
		return true;
	out->len = mark;
	return false;
}

/* Append the text of string s to b, after sep when b already has text. */
static bool join(struct buf *b, const char *sep, const json_t *s)
{
	size_t n = json_string_length(s);
	if (!n)
		return true;
	if (b->len && !buf_append(b, sep, strlen(sep), XLAT_MAX_OUT))
		return false;
	return buf_append(b, json_string_value(s), n, XLAT_MAX_OUT);
}

/* id with one dialect's prefix swapped for the other's ("chatcmpl-x" <-> "msg_x"); a
 * missing id gets a made-up one, unique enough within this process. */
static void swap_id(char *dst, const json_t *id, const char *strip, const char *add)
{
	static _Thread_local unsigned long long made;
	if (!json_is_string(id) || !json_string_length(id)) {
		snprintf(dst, ID_MAX, "%spenstock%llx%llx", add, (unsigned long long)time(NULL), ++made);
		return;
	}
	const char *s = json_string_value(id);
	size_t n = strlen(strip);
	if (strncmp(s, strip, n) == 0)
		s += n;
	snprintf(dst, ID_MAX, "%s%s", add, s);
}

/* A tool call's id as given, or a made-up one when the provider sent none. */
static json_t *tool_id(json_t *id, const char *prefix)
{
	char made[ID_MAX];
	if (json_is_string(id) && json_string_length(id))
		return json_incref(id);
	swap_id(made, NULL, "", prefix);
	return json_string(made);
}

static json_t *block(struct cx *c, const char *type)
{
	json_t *b = json_object();
	put(c, b, "type", json_string(type));
	return b;
}

static json_t *text_block(struct cx *c, json_t *text)
{
	json_t *b = block(c, "text");
	put_ref(c, b, "text", text);
	return b;
}

/* ---- usage ---- */

/* Token counts in Anthropic's split: input is the uncached part of the prompt. OpenAI's
 * prompt_tokens includes its cached_tokens, so input = prompt_tokens - cached_tokens. */
struct tally {
	uint64_t input, cache_read, cache_write, output;
	bool present;
};

static void tally_usage(const struct tally *t, struct usage *u)
{
	*u = (struct usage){
		.prompt_tokens = t->input + t->cache_read + t->cache_write,
		.completion_tokens = t->output,
		.cached_tokens = t->cache_read,
		.present = t->present,
	};
}

/* Fields present in u update t; others keep their value (Anthropic streams report usage
 * in two steps: message_start, then cumulative counts in message_delta). */
static void tally_json(enum dialect d, const json_t *u, struct tally *t)
{
	if (!json_is_object(u))
		return;
	t->present = true;
	if (d == DIALECT_ANTHROPIC) {
		uint_of(get(u, "input_tokens"), &t->input);
		uint_of(get(u, "output_tokens"), &t->output);
		uint_of(get(u, "cache_read_input_tokens"), &t->cache_read);
		uint_of(get(u, "cache_creation_input_tokens"), &t->cache_write);
		return;
	}
	uint64_t prompt, cached = 0;
	uint_of(get(u, "completion_tokens"), &t->output);
	uint_of(get(get(u, "prompt_tokens_details"), "cached_tokens"), &cached);
	if (uint_of(get(u, "prompt_tokens"), &prompt)) {
		t->cache_read = cached < prompt ? cached : prompt;
		t->input = prompt - t->cache_read;
		t->cache_write = 0;
	}
}

static bool scan_uint(struct slice v, uint64_t *out)
{
	int64_t x;
	if (!v.p || !json_int(v, &x) || x < 0)
		return false;
	*out = (uint64_t)x;
	return true;
}

/* tally_json on a raw usage value, with the zero-copy scanner (same-dialect paths). */
static void tally_scan(enum dialect d, struct slice u, struct tally *t)
{
	if (d == DIALECT_ANTHROPIC) {
		static const char *const keys[] = { "input_tokens", "output_tokens",
						    "cache_read_input_tokens",
						    "cache_creation_input_tokens" };
		struct slice v[4];
		if (json_scan_object(u, keys, v, 4))
			return;
		t->present = true;
		scan_uint(v[0], &t->input);
		scan_uint(v[1], &t->output);
		scan_uint(v[2], &t->cache_read);
		scan_uint(v[3], &t->cache_write);
		return;
	}
	static const char *const keys[] = { "prompt_tokens", "completion_tokens",
					    "prompt_tokens_details" };
	static const char *const dkeys[] = { "cached_tokens" };
	struct slice v[3], dv[1];
	if (json_scan_object(u, keys, v, 3))
		return;
	t->present = true;
	uint64_t prompt, cached = 0;
	scan_uint(v[1], &t->output);
	if (v[2].p && json_scan_object(v[2], dkeys, dv, 1) == 0)
		scan_uint(dv[0], &cached);
	if (scan_uint(v[0], &prompt)) {
		t->cache_read = cached < prompt ? cached : prompt;
		t->input = prompt - t->cache_read;
		t->cache_write = 0;
	}
}

static json_t *usage_json(struct cx *c, enum dialect d, const struct tally *t)
{
	json_t *u = json_object();
	if (d == DIALECT_ANTHROPIC) {
		put(c, u, "input_tokens", json_integer((json_int_t)t->input));
		put(c, u, "output_tokens", json_integer((json_int_t)t->output));
		put(c, u, "cache_read_input_tokens", json_integer((json_int_t)t->cache_read));
		put(c, u, "cache_creation_input_tokens", json_integer((json_int_t)t->cache_write));
		return u;
	}
	uint64_t prompt = t->input + t->cache_read + t->cache_write;
	json_t *details = json_object();
	put(c, details, "cached_tokens", json_integer((json_int_t)t->cache_read));
	put(c, u, "prompt_tokens", json_integer((json_int_t)prompt));
	put(c, u, "completion_tokens", json_integer((json_int_t)t->output));
	put(c, u, "total_tokens", json_integer((json_int_t)(prompt + t->output)));
	put(c, u, "prompt_tokens_details", details);
	return u;
}

bool xlat_response_usage(enum dialect d, struct slice body, struct usage *u)
{
	static const char *const keys[] = { "usage" };
	struct slice v[1];
	struct tally t = { 0 };
	if (json_scan_object(body, keys, v, 1) == 0 && v[0].p)
		tally_scan(d, v[0], &t);
	tally_usage(&t, u);
	return t.present;
}

/* ---- stop reasons ---- */

static const char *stop_from_finish(const json_t *finish)
{
	if (str_is(finish, "length"))
		return "max_tokens";
	if (str_is(finish, "tool_calls") || str_is(finish, "function_call"))
		return "tool_use";
	if (str_is(finish, "content_filter"))
		return "refusal";
	return "end_turn";
}

static const char *finish_from_stop(const json_t *stop)
{
	if (str_is(stop, "max_tokens") || str_is(stop, "model_context_window_exceeded"))
		return "length";
	if (str_is(stop, "tool_use"))
		return "tool_calls";
	if (str_is(stop, "refusal"))
		return "content_filter";
	return "stop"; /* end_turn, stop_sequence, pause_turn, anything new */
}

/* ---- requests: OpenAI -> Anthropic ---- */

/* Text-only content (system, developer): a string or text parts, joined into b. */
static int oa_text_only(struct cx *c, const json_t *content, struct buf *b, size_t mi)
{
	if (json_is_string(content))
		return join(b, SEP, content) ? 0 : (c->oom = true, -1);
	if (!present(content))
		return 0;
	if (!json_is_array(content))
		return fail(c, "messages[%zu].content must be a string or an array of parts", mi);
	size_t i;
	json_t *p;
	json_array_foreach(content, i, p) {
		const json_t *text = get(p, "text");
		if (!str_is(get(p, "type"), "text") || !json_is_string(text))
			return fail(c, "messages[%zu].content[%zu]: only text parts are allowed in "
				    "system and developer messages", mi, i);
		if (!join(b, SEP, text))
			return c->oom = true, -1;
	}
	return 0;
}

/* An image_url part: a data: URL becomes a base64 source, an http(s) URL a url source. */
static int oa_image(struct cx *c, const json_t *part, json_t *blocks, size_t mi, size_t pi)
{
	const json_t *iu = get(part, "image_url");
	const json_t *url = json_is_string(iu) ? iu : get(iu, "url");
	if (!json_is_string(url))
		return fail(c, "messages[%zu].content[%zu].image_url.url must be a string", mi, pi);
	const char *u = json_string_value(url);
	size_t n = json_string_length(url);
	json_t *src = json_object();
	if (n >= 5 && strncasecmp(u, "data:", 5) == 0) {
		const char *comma = memchr(u, ',', n);
		const char *meta = u + 5;
		size_t mlen = comma ? (size_t)(comma - meta) : 0;
		static const char b64[] = ";base64";
		size_t blen = sizeof(b64) - 1;
		if (!comma || mlen < blen || strncasecmp(comma - blen, b64, blen) != 0) {
			json_decref(src);
			return fail(c, "messages[%zu].content[%zu]: a data: image URL must be base64 "
				    "(data:<media type>;base64,<data>)", mi, pi);
		}
		const char *semi = memchr(meta, ';', mlen);
		if (semi == meta) {
			json_decref(src);
			return fail(c, "messages[%zu].content[%zu]: the data: image URL has no media "
				    "type", mi, pi);
		}
		put(c, src, "type", json_string("base64"));
		put(c, src, "media_type", stringn(meta, (size_t)(semi - meta)));
		put(c, src, "data", stringn(comma + 1, n - (size_t)(comma + 1 - u)));
	} else if ((n > 8 && strncasecmp(u, "https://", 8) == 0) ||
		   (n > 7 && strncasecmp(u, "http://", 7) == 0)) {
		put(c, src, "type", json_string("url"));
		put_ref(c, src, "url", (json_t *)url);
	} else {
		json_decref(src);
		return fail(c, "messages[%zu].content[%zu]: image URLs must be data: or http(s) URLs",
			    mi, pi);
	}
	json_t *b = block(c, "image");
	put(c, b, "source", src);
	push(c, blocks, b);
	return 0;
}

/* User, assistant or tool content: a string or parts, as Anthropic blocks. Empty text is
 * skipped (Anthropic refuses empty text blocks). */
static int oa_parts(struct cx *c, const json_t *content, json_t *blocks, size_t mi, bool assistant)
{
	if (json_is_string(content)) {
		if (json_string_length(content))
			push(c, blocks, text_block(c, (json_t *)content));
		return 0;
	}
	if (!present(content))
		return 0;
	if (!json_is_array(content))
		return fail(c, "messages[%zu].content must be a string or an array of parts", mi);
	size_t i;
	json_t *p;
	json_array_foreach(content, i, p) {
		const json_t *type = get(p, "type");
		bool refusal = assistant && str_is(type, "refusal");
		if (str_is(type, "text") || refusal) {
			const json_t *text = get(p, refusal ? "refusal" : "text");
			if (!json_is_string(text))
				return fail(c, "messages[%zu].content[%zu].%s must be a string", mi, i,
					    refusal ? "refusal" : "text");
			if (json_string_length(text))
				push(c, blocks, text_block(c, (json_t *)text));
		} else if (!assistant && str_is(type, "image_url")) {
			if (oa_image(c, p, blocks, mi, i))
				return -1;
		} else {
			return fail(c, "messages[%zu].content[%zu]: content parts of type \"%.40s\" "
				    "cannot be sent to this provider (text and image_url only)", mi, i,
				    show(type));
		}
	}
	return 0;
}

/* Tool call arguments: a JSON object in a string ("" counts as {}). */
static json_t *oa_arguments(const json_t *args)
{
	if (!present(args) || (json_is_string(args) && json_string_length(args) == 0))
		return json_object();
	if (!json_is_string(args))
		return NULL;
	json_t *in = json_loadb(json_string_value(args), json_string_length(args), 0, NULL);
	if (!json_is_object(in)) {
		json_decref(in);
		return NULL;
	}
	return in;
}

static int oa_tool_uses(struct cx *c, const json_t *calls, json_t *blocks, size_t mi)
{
	if (!present(calls))
		return 0;
	if (!json_is_array(calls))
		return fail(c, "messages[%zu].tool_calls must be an array", mi);
	size_t i;
	json_t *tc;
	json_array_foreach(calls, i, tc) {
		const json_t *fn = get(tc, "function");
		json_t *id = get(tc, "id"), *name = get(fn, "name");
		if (present(get(tc, "type")) && !str_is(get(tc, "type"), "function"))
			return fail(c, "messages[%zu].tool_calls[%zu]: only function tool calls can be "
				    "sent to this provider", mi, i);
		if (!json_is_string(id) || !json_is_string(name))
			return fail(c, "messages[%zu].tool_calls[%zu] needs an id and a function.name",
				    mi, i);
		json_t *input = oa_arguments(get(fn, "arguments"));
		if (!input)
			return fail(c, "messages[%zu].tool_calls[%zu].function.arguments is not a JSON "
				    "object", mi, i);
		json_t *b = block(c, "tool_use");
		put_ref(c, b, "id", id);
		put_ref(c, b, "name", name);
		put(c, b, "input", input);
		push(c, blocks, b);
	}
	return 0;
}

static int oa_tool_result(struct cx *c, const json_t *m, json_t *blocks, size_t mi)
{
	json_t *id = get(m, "tool_call_id");
	if (!json_is_string(id))
		return fail(c, "messages[%zu]: a tool message needs a tool_call_id", mi);
	json_t *res = block(c, "tool_result");
	put_ref(c, res, "tool_use_id", id);
	push(c, blocks, res);
	json_t *content = get(m, "content");
	if (json_is_string(content)) {
		if (json_string_length(content))
			put_ref(c, res, "content", content);
		return 0;
	}
	json_t *parts = json_array();
	put(c, res, "content", parts);
	return oa_parts(c, content, parts, mi, false);
}

/* Append one message's blocks to msgs, merged into the previous message when it has the
 * same role (Anthropic wants user and assistant to alternate). In a user message the
 * tool_result blocks go first, as Anthropic requires. Takes blocks. */
static void add_message(struct cx *c, json_t *msgs, const char *role, json_t *blocks)
{
	json_t *last = json_array_get(msgs, json_array_size(msgs) - 1);
	if (!json_array_size(blocks)) {
		json_decref(blocks);
		return;
	}
	if (!last || !str_is(get(last, "role"), role)) {
		json_t *m = json_object();
		put(c, m, "role", json_string(role));
		put(c, m, "content", blocks);
		push(c, msgs, m);
		return;
	}
	json_t *dst = get(last, "content");
	size_t lead = 0, i;
	while (lead < json_array_size(dst) &&
	       str_is(get(json_array_get(dst, lead), "type"), "tool_result"))
		lead++;
	json_t *b;
	json_array_foreach(blocks, i, b) {
		int rc = str_is(get(b, "type"), "tool_result") ? json_array_insert(dst, lead++, b)
							       : json_array_append(dst, b);
		if (rc)
			c->oom = true;
	}
	json_decref(blocks);
}

static int oa_messages(struct cx *c, const json_t *in, json_t *out)
{
	const json_t *list = get(in, "messages");
	if (!json_is_array(list))
		return fail(c, "messages must be an array");
	json_t *msgs = json_array();
	struct buf sys = { 0 };
	size_t i;
	json_t *m;
	int rc = 0;
	json_array_foreach(list, i, m) {
		const json_t *role = get(m, "role"), *content = get(m, "content");
		if (!json_is_object(m)) {
			rc = fail(c, "messages[%zu] must be an object", i);
			break;
		}
		if (str_is(role, "system") || str_is(role, "developer")) {
			if ((rc = oa_text_only(c, content, &sys, i)))
				break;
			continue;
		}
		json_t *blocks = json_array();
		const char *r = "user";
		if (str_is(role, "user")) {
			rc = oa_parts(c, content, blocks, i, false);
		} else if (str_is(role, "assistant")) {
			r = "assistant";
			if (present(get(m, "function_call")))
				rc = fail(c, "messages[%zu]: function_call is not supported: use tool_calls",
					  i);
			else if (!(rc = oa_parts(c, content, blocks, i, true)))
				rc = oa_tool_uses(c, get(m, "tool_calls"), blocks, i);
		} else if (str_is(role, "tool")) {
			rc = oa_tool_result(c, m, blocks, i);
		} else {
			rc = fail(c, "messages[%zu].role \"%.40s\" is not supported", i, show(role));
		}
		if (rc) {
			json_decref(blocks);
			break;
		}
		add_message(c, msgs, r, blocks);
	}
	if (!rc && sys.len)
		put(c, out, "system", stringn(sys.p, sys.len));
	buf_free(&sys);
	if (rc) {
		json_decref(msgs);
		return rc;
	}
	put(c, out, "messages", msgs);
	if (!json_array_size(msgs))
		return fail(c, "messages must include at least one user or assistant message");
	if (!str_is(get(json_array_get(msgs, 0), "role"), "user"))
		return fail(c, "the first message after the system messages must be from the user "
			    "for this provider");
	return 0;
}

static int oa_tools(struct cx *c, const json_t *in, json_t *out)
{
	const json_t *tools = get(in, "tools");
	if (!present(tools))
		return 0;
	if (!json_is_array(tools))
		return fail(c, "tools must be an array");
	json_t *list = json_array();
	put(c, out, "tools", list);
	size_t i;
	json_t *t;
	json_array_foreach(tools, i, t) {
		json_t *fn = get(t, "function"), *name = get(fn, "name");
		json_t *desc = get(fn, "description"), *params = get(fn, "parameters");
		if (!str_is(get(t, "type"), "function"))
			return fail(c, "tools[%zu]: only function tools can be sent to this provider", i);
		if (!json_is_string(name))
			return fail(c, "tools[%zu].function.name must be a string", i);
		if (present(params) && !json_is_object(params))
			return fail(c, "tools[%zu].function.parameters must be an object", i);
		json_t *tool = json_object();
		put_ref(c, tool, "name", name);
		if (json_is_string(desc))
			put_ref(c, tool, "description", desc);
		if (present(params)) {
			put_ref(c, tool, "input_schema", params);
		} else {
			json_t *schema = json_object();
			put(c, schema, "type", json_string("object"));
			put(c, schema, "properties", json_object());
			put(c, tool, "input_schema", schema);
		}
		push(c, list, tool);
	}
	if (!json_array_size(list)) {
		json_object_del(out, "tools");
		return 0;
	}

	const json_t *choice = get(in, "tool_choice");
	json_t *tc = NULL;
	if (str_is(choice, "auto") || !present(choice)) {
		tc = block(c, "auto");
	} else if (str_is(choice, "none")) {
		tc = block(c, "none");
	} else if (str_is(choice, "required")) {
		tc = block(c, "any");
	} else if (str_is(get(choice, "type"), "function") &&
		   json_is_string(get(get(choice, "function"), "name"))) {
		tc = block(c, "tool");
		put_ref(c, tc, "name", get(get(choice, "function"), "name"));
	} else {
		return fail(c, "tool_choice must be \"auto\", \"none\", \"required\" or "
			    "{\"type\":\"function\",\"function\":{\"name\":...}}");
	}
	bool serial = json_is_false(get(in, "parallel_tool_calls"));
	if (serial && !str_is(get(tc, "type"), "none"))
		put(c, tc, "disable_parallel_tool_use", json_true());
	if (present(choice) || serial)
		put(c, out, "tool_choice", tc);
	else
		json_decref(tc);
	return 0;
}

/* Features Anthropic cannot express: refused with a message rather than dropped, since
 * dropping them would change what the caller gets back. */
static int oa_refuse(struct cx *c, const json_t *in)
{
	const json_t *v = get(in, "n");
	if (present(v) && !(json_is_integer(v) && json_integer_value(v) == 1))
		return fail(c, "n must be 1: this provider returns one choice per request");
	if (json_is_true(get(in, "logprobs")))
		return fail(c, "logprobs are not available from this provider");
	if (present(get(in, "audio")))
		return fail(c, "audio output is not available from this provider");
	v = get(in, "modalities");
	if (present(v)) {
		size_t i;
		json_t *mod;
		if (!json_is_array(v))
			return fail(c, "modalities must be an array");
		json_array_foreach(v, i, mod)
			if (!str_is(mod, "text"))
				return fail(c, "modalities: only \"text\" is available from this provider");
	}
	v = get(in, "response_format");
	if (present(v) && !str_is(get(v, "type"), "text"))
		return fail(c, "response_format \"%.40s\" is not available from this provider (only "
			    "\"text\")", show(get(v, "type")));
	if (present(get(in, "functions")) || present(get(in, "function_call")))
		return fail(c, "functions and function_call are not supported: use tools and "
			    "tool_choice");
	if (present(get(in, "web_search_options")))
		return fail(c, "web_search_options is not available from this provider");
	return 0;
}

static int oa_to_an_request(struct cx *c, const json_t *in, const struct xlat_request_opts *o,
			    json_t *out)
{
	if (oa_refuse(c, in))
		return -1;
	const json_t *model = get(in, "model");
	if (o && o->upstream_model)
		put(c, out, "model", json_string(o->upstream_model));
	else if (json_is_string(model))
		put_ref(c, out, "model", (json_t *)model);
	else
		return fail(c, "model must be a string");

	const json_t *mt = get(in, "max_completion_tokens");
	if (!present(mt))
		mt = get(in, "max_tokens");
	if (present(mt)) {
		if (!json_is_integer(mt) || json_integer_value(mt) < 1)
			return fail(c, "max_tokens must be a positive integer");
		put_ref(c, out, "max_tokens", (json_t *)mt);
	} else {
		uint32_t d = o && o->default_max_tokens ? o->default_max_tokens : DEFAULT_MAX_TOKENS;
		put(c, out, "max_tokens", json_integer(d));
	}
	if (oa_messages(c, in, out))
		return -1;

	const json_t *v = get(in, "stop");
	if (json_is_string(v)) {
		json_t *seq = json_array();
		push(c, seq, json_incref((json_t *)v));
		put(c, out, "stop_sequences", seq);
	} else if (json_is_array(v)) {
		size_t i;
		json_t *s;
		json_array_foreach(v, i, s)
			if (!json_is_string(s))
				return fail(c, "stop must be a string or an array of strings");
		if (json_array_size(v))
			put_ref(c, out, "stop_sequences", (json_t *)v);
	} else if (present(v)) {
		return fail(c, "stop must be a string or an array of strings");
	}

	v = get(in, "temperature");
	if (present(v)) {
		if (!json_is_number(v))
			return fail(c, "temperature must be a number");
		double t = json_number_value(v); /* OpenAI's 0..2 onto Anthropic's 0..1: clamped */
		put(c, out, "temperature", json_real(t < 0 ? 0 : t > 1 ? 1 : t));
	}
	v = get(in, "top_p");
	if (present(v)) {
		if (!json_is_number(v))
			return fail(c, "top_p must be a number");
		put_ref(c, out, "top_p", (json_t *)v);
	}
	v = get(in, "stream");
	if (present(v)) {
		if (!json_is_boolean(v))
			return fail(c, "stream must be a boolean");
		put_ref(c, out, "stream", (json_t *)v);
	}
	v = get(in, "user");
	if (json_is_string(v) && json_string_length(v)) {
		json_t *meta = json_object();
		put_ref(c, meta, "user_id", (json_t *)v);
		put(c, out, "metadata", meta);
	}
	return oa_tools(c, in, out);
}

/* ---- requests: Anthropic -> OpenAI ---- */

/* Text blocks only (system, tool_result content), joined into b. */
static int an_text_blocks(struct cx *c, const json_t *content, struct buf *b, const char *where,
			  size_t mi)
{
	if (json_is_string(content))
		return join(b, SEP, content) ? 0 : (c->oom = true, -1);
	if (!present(content))
		return 0;
	if (!json_is_array(content))
		return fail(c, "%s must be a string or an array of text blocks", where);
	size_t i;
	json_t *blk;
	json_array_foreach(content, i, blk) {
		const json_t *text = get(blk, "text");
		if (!str_is(get(blk, "type"), "text") || !json_is_string(text))
			return fail(c, "%s (message %zu) may hold only text blocks for this provider",
				    where, mi);
		if (!join(b, SEP, text))
			return c->oom = true, -1;
	}
	return 0;
}

static json_t *an_image(struct cx *c, const json_t *blk, size_t mi, size_t bi, int *rc)
{
	const json_t *src = get(blk, "source");
	const json_t *type = get(src, "type");
	json_t *url;
	*rc = 0;
	if (str_is(type, "base64")) {
		const json_t *mt = get(src, "media_type"), *data = get(src, "data");
		if (!json_is_string(mt) || !json_is_string(data)) {
			*rc = fail(c, "messages[%zu].content[%zu]: an image needs media_type and data",
				   mi, bi);
			return NULL;
		}
		struct buf b = { 0 };
		bool ok = emit_raw(&b, "data:") &&
			  buf_append(&b, json_string_value(mt), json_string_length(mt), XLAT_MAX_OUT) &&
			  emit_raw(&b, ";base64,") &&
			  buf_append(&b, json_string_value(data), json_string_length(data), XLAT_MAX_OUT);
		url = ok ? stringn(b.p, b.len) : NULL;
		buf_free(&b);
	} else if (str_is(type, "url") && json_is_string(get(src, "url"))) {
		url = json_incref(get(src, "url"));
	} else {
		*rc = fail(c, "messages[%zu].content[%zu]: image sources of type \"%.40s\" cannot be "
			   "sent to this provider", mi, bi, show(type));
		return NULL;
	}
	json_t *iu = json_object(), *part = block(c, "image_url");
	put(c, iu, "url", url);
	put(c, part, "image_url", iu);
	return part;
}

/* A user message's tool_result blocks become role "tool" messages. */
static int an_tool_result(struct cx *c, const json_t *blk, json_t *msgs, size_t mi)
{
	json_t *id = get(blk, "tool_use_id");
	if (!json_is_string(id))
		return fail(c, "messages[%zu]: a tool_result needs a tool_use_id", mi);
	struct buf b = { 0 };
	if (json_is_true(get(blk, "is_error")) && !emit_raw(&b, "(tool error) ")) {
		buf_free(&b);
		return c->oom = true, -1;
	}
	struct buf text = { 0 };
	int rc = an_text_blocks(c, get(blk, "content"), &text, "tool_result content", mi);
	if (!rc && text.len && !buf_append(&b, text.p, text.len, XLAT_MAX_OUT))
		rc = -1, c->oom = true;
	buf_free(&text);
	if (!rc) {
		json_t *m = json_object();
		put(c, m, "role", json_string("tool"));
		put_ref(c, m, "tool_call_id", id);
		put(c, m, "content", stringn(b.p, b.len));
		push(c, msgs, m);
	}
	buf_free(&b);
	return rc;
}

static json_t *an_tool_call(struct cx *c, const json_t *blk, size_t mi, size_t bi, int *rc)
{
	json_t *id = get(blk, "id"), *name = get(blk, "name");
	const json_t *input = get(blk, "input");
	*rc = 0;
	if (!json_is_string(id) || !json_is_string(name)) {
		*rc = fail(c, "messages[%zu].content[%zu]: a tool_use needs an id and a name", mi, bi);
		return NULL;
	}
	char *args = json_is_object(input) ? json_dumps(input, JSON_COMPACT) : strdup("{}");
	json_t *fn = json_object(), *call = json_object();
	put(c, fn, "name", json_incref(name));
	put(c, fn, "arguments", args ? json_string(args) : NULL);
	free(args);
	put(c, call, "id", json_incref(id));
	put(c, call, "type", json_string("function"));
	put(c, call, "function", fn);
	return call;
}

/* Block types dropped without a word: the model's reasoning is not portable. */
static bool an_dropped_block(const json_t *type)
{
	return str_is(type, "thinking") || str_is(type, "redacted_thinking");
}

static int an_message(struct cx *c, const json_t *m, json_t *msgs, size_t mi)
{
	const json_t *role = get(m, "role"), *content = get(m, "content");
	bool assistant = str_is(role, "assistant");
	if (!assistant && !str_is(role, "user"))
		return fail(c, "messages[%zu].role must be \"user\" or \"assistant\"", mi);
	if (json_is_string(content)) {
		json_t *out = json_object();
		put(c, out, "role", json_string(assistant ? "assistant" : "user"));
		put_ref(c, out, "content", (json_t *)content);
		push(c, msgs, out);
		return 0;
	}
	if (!json_is_array(content))
		return fail(c, "messages[%zu].content must be a string or an array of blocks", mi);

	json_t *parts = json_array(), *calls = json_array();
	bool only_text = true;
	struct buf text = { 0 };
	size_t i;
	json_t *blk;
	int rc = 0;
	json_array_foreach(content, i, blk) {
		const json_t *type = get(blk, "type");
		json_t *part = NULL;
		if (an_dropped_block(type))
			continue;
		if (str_is(type, "text")) {
			const json_t *t = get(blk, "text");
			if (!json_is_string(t)) {
				rc = fail(c, "messages[%zu].content[%zu].text must be a string", mi, i);
				break;
			}
			if (!join(&text, SEP, t)) {
				rc = -1, c->oom = true;
				break;
			}
			part = block(c, "text");
			put_ref(c, part, "text", (json_t *)t);
		} else if (!assistant && str_is(type, "image")) {
			part = an_image(c, blk, mi, i, &rc);
			only_text = false;
		} else if (!assistant && str_is(type, "tool_result")) {
			rc = an_tool_result(c, blk, msgs, mi);
		} else if (assistant && str_is(type, "tool_use")) {
			json_t *call = an_tool_call(c, blk, mi, i, &rc);
			if (call)
				push(c, calls, call);
		} else {
			rc = fail(c, "messages[%zu].content[%zu]: %s blocks of type \"%.40s\" cannot be "
				  "sent to this provider", mi, i, assistant ? "assistant" : "user",
				  show(type));
		}
		if (rc)
			break;
		if (part)
			push(c, parts, part);
	}
	if (!rc && (json_array_size(parts) || json_array_size(calls))) {
		json_t *out = json_object();
		put(c, out, "role", json_string(assistant ? "assistant" : "user"));
		if (only_text && text.len)
			put(c, out, "content", stringn(text.p, text.len));
		else if (!only_text)
			put_ref(c, out, "content", parts);
		else
			put(c, out, "content", assistant ? json_null() : json_string(""));
		if (json_array_size(calls))
			put_ref(c, out, "tool_calls", calls);
		push(c, msgs, out);
	}
	buf_free(&text);
	json_decref(parts);
	json_decref(calls);
	return rc;
}

static int an_tools(struct cx *c, const json_t *in, json_t *out)
{
	const json_t *tools = get(in, "tools");
	if (!present(tools))
		return 0;
	if (!json_is_array(tools))
		return fail(c, "tools must be an array");
	json_t *list = json_array();
	put(c, out, "tools", list);
	size_t i;
	json_t *t;
	json_array_foreach(tools, i, t) {
		json_t *name = get(t, "name"), *desc = get(t, "description");
		json_t *schema = get(t, "input_schema");
		const json_t *type = get(t, "type");
		if (present(type) && !str_is(type, "custom"))
			return fail(c, "tools[%zu]: the server tool \"%.40s\" is not available from this "
				    "provider", i, show(type));
		if (!json_is_string(name))
			return fail(c, "tools[%zu].name must be a string", i);
		if (present(schema) && !json_is_object(schema))
			return fail(c, "tools[%zu].input_schema must be an object", i);
		json_t *fn = json_object(), *tool = json_object();
		put_ref(c, fn, "name", name);
		if (json_is_string(desc))
			put_ref(c, fn, "description", desc);
		if (present(schema))
			put_ref(c, fn, "parameters", schema);
		put(c, tool, "type", json_string("function"));
		put(c, tool, "function", fn);
		push(c, list, tool);
	}
	if (!json_array_size(list)) {
		json_object_del(out, "tools");
		return 0;
	}
	const json_t *choice = get(in, "tool_choice");
	const json_t *type = get(choice, "type");
	if (!present(choice))
		return 0;
	if (str_is(type, "auto")) {
		put(c, out, "tool_choice", json_string("auto"));
	} else if (str_is(type, "any")) {
		put(c, out, "tool_choice", json_string("required"));
	} else if (str_is(type, "none")) {
		put(c, out, "tool_choice", json_string("none"));
	} else if (str_is(type, "tool") && json_is_string(get(choice, "name"))) {
		json_t *fn = json_object(), *tc = block(c, "function");
		put_ref(c, fn, "name", get(choice, "name"));
		put(c, tc, "function", fn);
		put(c, out, "tool_choice", tc);
	} else {
		return fail(c, "tool_choice.type must be auto, any, none or tool (with a name)");
	}
	if (json_is_true(get(choice, "disable_parallel_tool_use")))
		put(c, out, "parallel_tool_calls", json_false());
	return 0;
}

static int an_to_oa_request(struct cx *c, const json_t *in, const struct xlat_request_opts *o,
			    json_t *out)
{
	const json_t *model = get(in, "model");
	if (o && o->upstream_model)
		put(c, out, "model", json_string(o->upstream_model));
	else if (json_is_string(model))
		put_ref(c, out, "model", (json_t *)model);
	else
		return fail(c, "model must be a string");
	if (present(get(in, "mcp_servers")))
		return fail(c, "mcp_servers is not available from this provider");
	if (present(get(in, "container")))
		return fail(c, "container is not available from this provider");

	const json_t *list = get(in, "messages");
	if (!json_is_array(list))
		return fail(c, "messages must be an array");
	json_t *msgs = json_array();
	put(c, out, "messages", msgs);
	struct buf sys = { 0 };
	if (an_text_blocks(c, get(in, "system"), &sys, "system", 0)) {
		buf_free(&sys);
		return -1;
	}
	if (sys.len) {
		json_t *m = json_object();
		put(c, m, "role", json_string("system"));
		put(c, m, "content", stringn(sys.p, sys.len));
		push(c, msgs, m);
	}
	buf_free(&sys);
	size_t i;
	json_t *m;
	json_array_foreach(list, i, m)
		if (an_message(c, m, msgs, i))
			return -1;
	if (!json_array_size(msgs))
		return fail(c, "messages must not be empty");

	const json_t *v = get(in, "max_tokens");
	if (present(v)) {
		if (!json_is_integer(v) || json_integer_value(v) < 1)
			return fail(c, "max_tokens must be a positive integer");
		put_ref(c, out, "max_tokens", (json_t *)v);
	}
	v = get(in, "stop_sequences");
	if (present(v)) {
		size_t k;
		json_t *s;
		if (!json_is_array(v))
			return fail(c, "stop_sequences must be an array of strings");
		json_array_foreach(v, k, s)
			if (!json_is_string(s))
				return fail(c, "stop_sequences must be an array of strings");
		if (json_array_size(v))
			put_ref(c, out, "stop", (json_t *)v);
	}
	static const char *const numbers[] = { "temperature", "top_p" };
	for (size_t k = 0; k < 2; k++) {
		v = get(in, numbers[k]);
		if (!present(v))
			continue;
		if (!json_is_number(v))
			return fail(c, "%s must be a number", numbers[k]);
		put_ref(c, out, numbers[k], (json_t *)v);
	}
	v = get(get(in, "metadata"), "user_id");
	if (json_is_string(v) && json_string_length(v))
		put_ref(c, out, "user", (json_t *)v);
	v = get(in, "stream");
	if (present(v) && !json_is_boolean(v))
		return fail(c, "stream must be a boolean");
	if (json_is_true(v)) {
		put(c, out, "stream", json_true());
		if (o && o->stream_usage) {
			json_t *so = json_object();
			put(c, so, "include_usage", json_true());
			put(c, out, "stream_options", so);
		}
	}
	return an_tools(c, in, out);
}

/* ---- fast paths: jansson's answer without jansson ----
 *
 * Most translated traffic is a stream's text deltas, and a full parse and rebuild costs
 * microseconds per event. For those shapes the fast paths read the event with the zero-copy
 * scanner and write what the full path would write, byte for byte; for anything else they
 * decline and the full path runs. They act only on input jansson surely loads (json_sure
 * checks, strictly), and copy a JSON string as jansson would write the string it decodes. */

static bool fast_on = true;

void xlat_set_fast(bool on)
{
	fast_on = on;
}

#define SURE_DEPTH 16 /* deeper is never a usual shape: the full path decides */

/* Length of the valid UTF-8 sequence at p (jansson's rules: shortest form, no surrogates, at
 * most U+10FFFF), or 0. */
static size_t utf8_seq(const unsigned char *p, const unsigned char *end)
{
	unsigned c = p[0];
	size_t n;
	uint32_t cp;
	if (c < 0x80)
		return 1;
	if (c < 0xc2)
		return 0;
	if (c < 0xe0)
		n = 2, cp = c & 0x1f;
	else if (c < 0xf0)
		n = 3, cp = c & 0x0f;
	else if (c < 0xf5)
		n = 4, cp = c & 0x07;
	else
		return 0;
	if ((size_t)(end - p) < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3fu);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

static bool hex4(const char *p, const char *end, uint32_t *cp)
{
	if (end - p < 4)
		return false;
	*cp = 0;
	for (int i = 0; i < 4; i++) {
		char c = p[i];
		unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
			     : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
			     : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16;
		if (d == 16)
			return false;
		*cp = *cp << 4 | d;
	}
	return true;
}

/* The code point of the \u escape at p (one or a surrogate pair, as jansson pairs them);
 * *len is the escape's length. False where jansson would refuse it. */
static bool u_escape(const char *p, const char *end, uint32_t *cp, size_t *len)
{
	uint32_t lo;
	if (!hex4(p + 2, end, cp) || (*cp >= 0xdc00 && *cp <= 0xdfff))
		return false;
	*len = 6;
	if (*cp < 0xd800 || *cp > 0xdbff)
		return true;
	if (end - p < 12 || p[6] != '\\' || p[7] != 'u' || !hex4(p + 8, end, &lo) || lo < 0xdc00 ||
	    lo > 0xdfff)
		return false;
	*cp = 0x10000 + ((*cp - 0xd800) << 10) + (lo - 0xdc00);
	*len = 12;
	return true;
}

struct sure {
	const char *p, *end;
};

static void sure_ws(struct sure *v)
{
	while (v->p < v->end && (*v->p == ' ' || *v->p == '\t' || *v->p == '\n' || *v->p == '\r'))
		v->p++;
}

/* The first byte in [p, end) that is '"', '\\', a control character or not ASCII, or end: where
 * a string's run that needs no check stops (16 bytes a step with SSE2: a request's texts are
 * long; the tail and short strings, as stream events' mostly are, byte by byte). */
static const unsigned char *plain_ascii_stop(const unsigned char *p, const unsigned char *end)
{
#ifdef __SSE2__
	const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\');
	const __m128i space = _mm_set1_epi8(0x20);
	while (end - p >= 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
		/* signed: bytes >= 0x80 are negative, so below ' ' as control characters are */
		__m128i hit = _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash));
		hit = _mm_or_si128(hit, _mm_cmplt_epi8(v, space));
		int mask = _mm_movemask_epi8(hit);
		if (mask)
			return p + __builtin_ctz((unsigned)mask);
		p += 16;
	}
#endif
	while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
		p++;
	return p;
}

/* A string at v->p. Keys may not hold escapes: the scanner compares them raw. */
static bool sure_string(struct sure *v, bool key)
{
	const unsigned char *p = (const unsigned char *)v->p + 1;
	const unsigned char *end = (const unsigned char *)v->end;
	for (;;) {
		p = plain_ascii_stop(p, end);
		if (p == end || *p < 0x20)
			return false;
		if (*p == '"') {
			v->p = (const char *)p + 1;
			return true;
		}
		if (*p >= 0x80) {
			size_t n = utf8_seq(p, end);
			if (!n)
				return false;
			p += n;
			continue;
		}
		if (key || end - p < 2)
			return false;
		uint32_t cp;
		size_t len = 2;
		bool ok = p[1] == 'u' ? u_escape((const char *)p, v->end, &cp, &len)
				      : p[1] && strchr("\"\\/bfnrt", p[1]);
		if (!ok)
			return false;
		p += len;
	}
}

/* A number jansson surely takes: integers to 18 digits (more may overflow its int64), reals
 * without an exponent (with one they may overflow a double: the 'e' then fails the check
 * after the value, as does a digit after a leading 0). */
static bool sure_number(struct sure *v)
{
	const char *p = v->p, *end = v->end;
	if (p < end && *p == '-')
		p++;
	const char *digits = p;
	if (p < end && *p == '0')
		p++;
	else
		while (p < end && *p >= '0' && *p <= '9')
			p++;
	if (p == digits || p - digits > 18)
		return false;
	if (p < end && *p == '.') {
		const char *frac = ++p;
		while (p < end && *p >= '0' && *p <= '9')
			p++;
		if (p == frac)
			return false;
	}
	v->p = p;
	return true;
}

static bool sure_word(struct sure *v, const char *w, size_t n)
{
	if ((size_t)(v->end - v->p) < n || memcmp(v->p, w, n) != 0)
		return false;
	v->p += n;
	return true;
}

/* The top-level keys an object's scan returns the raw values of (as json_scan_object). */
struct capture {
	const char *const *keys;
	struct slice *vals;
	unsigned n;
};

static bool sure_value(struct sure *v, int depth, const struct capture *cap)
{
	if (v->p == v->end)
		return false;
	char c = *v->p;
	if (c == '"')
		return sure_string(v, false);
	if (c == 't')
		return sure_word(v, "true", 4);
	if (c == 'f')
		return sure_word(v, "false", 5);
	if (c == 'n')
		return sure_word(v, "null", 4);
	if (c != '{' && c != '[')
		return sure_number(v);
	if (depth == SURE_DEPTH)
		return false;
	char close = c == '{' ? '}' : ']';
	v->p++;
	sure_ws(v);
	if (v->p < v->end && *v->p == close) {
		v->p++;
		return true;
	}
	for (;;) {
		struct slice key = { NULL, 0 };
		sure_ws(v);
		if (c == '{') {
			key.p = v->p + 1;
			if (v->p == v->end || *v->p != '"' || !sure_string(v, true))
				return false;
			key.n = (size_t)(v->p - 1 - key.p);
			sure_ws(v);
			if (v->p == v->end || *v->p != ':')
				return false;
			v->p++;
			sure_ws(v);
		}
		const char *val = v->p;
		if (!sure_value(v, depth + 1, NULL))
			return false;
		for (unsigned i = 0; cap && i < cap->n; i++)
			if (key.n && key.p[0] == cap->keys[i][0] && slice_eq_cstr(key, cap->keys[i]))
				cap->vals[i] = (struct slice){ val, (size_t)(v->p - val) };
		sure_ws(v);
		if (v->p == v->end)
			return false;
		if (*v->p == close) {
			v->p++;
			return true;
		}
		if (*v->p != ',')
			return false;
		v->p++;
	}
}

/* json_scan_object for text that jansson (JSON_ALLOW_NUL) surely loads as one object with no
 * escape in a key. False where it would not, or might not: then the full path decides. */
static bool json_sure(struct slice text, const char *const *keys, struct slice *vals, unsigned n)
{
	struct sure v = { text.p, text.p + text.n };
	struct capture cap = { keys, vals, n };
	for (unsigned i = 0; i < n; i++)
		vals[i] = (struct slice){ NULL, 0 };
	sure_ws(&v);
	if (v.p == v.end || *v.p != '{' || !sure_value(&v, 0, &cap))
		return false;
	sure_ws(&v);
	return v.p == v.end;
}

/* '"', '\\' or a control character as jansson escapes it, at dst; returns the end. */
static char *put_escape(char *dst, unsigned c)
{
	static const char hex[] = "0123456789ABCDEF";
	*dst++ = '\\';
	switch (c) {
	case '"': *dst++ = '"'; break;
	case '\\': *dst++ = '\\'; break;
	case '\b': *dst++ = 'b'; break;
	case '\f': *dst++ = 'f'; break;
	case '\n': *dst++ = 'n'; break;
	case '\r': *dst++ = 'r'; break;
	case '\t': *dst++ = 't'; break;
	default:
		memcpy(dst, "u00", 3);
		dst[3] = hex[c >> 4 & 15];
		dst[4] = hex[c & 15];
		dst += 5;
	}
	return dst;
}

/* Write the body of a string json_sure passed (between its quotes) at dst as jansson writes
 * the string it decodes to: UTF-8 as is; '"', '\\' and control characters escaped (\b \f \n
 * \r \t, others \u00XX); any other escape decoded ("\/" is "/", "\u00e9" is "é"). Never
 * longer than the body. Returns the end of what it wrote. */
static char *put_string(char *dst, struct slice body)
{
	const char *p = body.p, *end = body.p + body.n;
	while (p < end) {
		const char *bs = memchr(p, '\\', (size_t)(end - p));
		size_t run = (size_t)((bs ? bs : end) - p);
		memcpy(dst, p, run);
		dst += run;
		if (!bs)
			break;
		uint32_t cp = 0;
		size_t len = 2;
		if (bs[1] == '/')
			cp = '/';
		else if (bs[1] == 'u')
			u_escape(bs, end, &cp, &len);
		p = bs + len;
		if (bs[1] != '/' && bs[1] != 'u') { /* \" \\ \b \f \n \r \t: jansson's own spelling */
			*dst++ = '\\';
			*dst++ = bs[1];
		} else if (cp == '"' || cp == '\\' || cp < 0x20) {
			dst = put_escape(dst, cp);
		} else if (cp < 0x80) {
			*dst++ = (char)cp;
		} else if (cp < 0x800) {
			*dst++ = (char)(0xc0 | cp >> 6);
			*dst++ = (char)(0x80 | (cp & 0x3f));
		} else if (cp < 0x10000) {
			*dst++ = (char)(0xe0 | cp >> 12);
			*dst++ = (char)(0x80 | (cp >> 6 & 0x3f));
			*dst++ = (char)(0x80 | (cp & 0x3f));
		} else {
			*dst++ = (char)(0xf0 | cp >> 18);
			*dst++ = (char)(0x80 | (cp >> 12 & 0x3f));
			*dst++ = (char)(0x80 | (cp >> 6 & 0x3f));
			*dst++ = (char)(0x80 | (cp & 0x3f));
		}
	}
	return dst;
}

/* Write s (n bytes) at dst as jansson writes it as a JSON string, quotes included: at most
 * 6 * n + 2 bytes. NULL if s is not UTF-8 (jansson refuses it: the full path then decides). */
static char *put_cstr(char *dst, const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s, *end = p + n;
	*dst++ = '"';
	while (p < end) {
		size_t k = utf8_seq(p, end);
		if (!k)
			return NULL;
		if (*p == '"' || *p == '\\' || *p < 0x20) {
			dst = put_escape(dst, *p);
		} else {
			memcpy(dst, p, k);
			dst += k;
		}
		p += k;
	}
	*dst++ = '"';
	return dst;
}

/* put_cstr appended to out; false if s is not UTF-8 or out is full. */
static bool put_cstring(struct buf *out, const char *s)
{
	size_t n = strlen(s);
	if (!buf_reserve(out, 6 * n + 2, XLAT_MAX_OUT))
		return false;
	char *end = put_cstr(out->p + out->len, s, n);
	if (!end)
		return false;
	out->len = (size_t)(end - out->p);
	return true;
}

static bool is_empty_array(struct slice v)
{
	size_t i = 0, n = v.n;
	while (i < n && strchr(" \t\r\n", v.p[i]))
		i++;
	while (n > i && strchr(" \t\r\n", v.p[n - 1]))
		n--;
	if (n - i < 2 || v.p[i] != '[' || v.p[n - 1] != ']')
		return false;
	for (i++; i < n - 1; i++)
		if (!strchr(" \t\r\n", v.p[i]))
			return false;
	return true;
}

static bool is_string(struct slice v)
{
	return v.p && v.p[0] == '"';
}

static bool is_null(struct slice v)
{
	return slice_eq_cstr(v, "null");
}

/* A string without escapes equals s (an escaped one may too: callers then decline). */
static bool raw_is(struct slice v, const char *s)
{
	size_t n = strlen(s);
	return v.n == n + 2 && v.p[0] == '"' && memcmp(v.p + 1, s, n) == 0;
}

static bool has_escape(struct slice v)
{
	return memchr(v.p, '\\', v.n) != NULL;
}

/* Append the body of v, a string json_sure passed, as jansson writes the string it decodes
 * to (without the quotes). */
static bool emit_text(struct buf *out, struct slice v)
{
	if (!buf_reserve(out, v.n, XLAT_MAX_OUT))
		return false;
	char *end = put_string(out->p + out->len, (struct slice){ v.p + 1, v.n - 2 });
	out->len = (size_t)(end - out->p);
	return true;
}

/* An id with one dialect's prefix swapped for the other's, as swap_id makes it from the
 * decoded string; false where the fast path cannot be sure of that (escapes, or so long that
 * swap_id cuts it, maybe inside a UTF-8 sequence). */
static bool fast_id(char *dst, struct slice id, const char *strip, const char *add)
{
	if (!is_string(id) || id.n == 2) {
		swap_id(dst, NULL, strip, add);
		return true;
	}
	struct slice body = { id.p + 1, id.n - 2 };
	size_t n = strlen(strip), m = strlen(add);
	if (has_escape(id))
		return false;
	if (body.n >= n && memcmp(body.p, strip, n) == 0)
		body.p += n, body.n -= n;
	if (m + body.n >= ID_MAX)
		return false;
	memcpy(dst, add, m);
	memcpy(dst + m, body.p, body.n);
	dst[m + body.n] = 0;
	return true;
}

/* Append key (the text before a number), then v as jansson writes a json_int_t. */
static bool emit_num(struct buf *out, const char *key, uint64_t v)
{
	char num[24];
	snprintf(num, sizeof(num), "%lld", (long long)v);
	return emit_raw(out, key) && emit_raw(out, num);
}

/* A plain text answer (content and refusal text, no tool calls) from an OpenAI provider for
 * an Anthropic client, as oa_to_an_response writes it. */
static bool oa_to_an_response_fast(struct slice body, const char *model, struct buf *out,
				   struct tally *t)
{
	static const char *const keys[] = { "id", "choices", "usage" };
	static const char *const ckeys[] = { "message", "finish_reason" };
	static const char *const mkeys[] = { "content", "refusal", "tool_calls" };
	struct slice v[3], cv[2], mv[3], choice;
	struct json_iter it;
	char id[ID_MAX];
	if (!json_sure(body, keys, v, 3) || !json_array_begin(&it, v[1]) ||
	    json_array_next(&it, &choice) != 1 || json_scan_object(choice, ckeys, cv, 2) ||
	    json_scan_object(cv[0], mkeys, mv, 3) ||
	    (mv[0].p && !is_null(mv[0]) && !is_string(mv[0])) ||
	    (mv[2].p && !is_null(mv[2]) && !is_empty_array(mv[2])) ||
	    (is_string(cv[1]) && has_escape(cv[1])) || !fast_id(id, v[0], "chatcmpl-", "msg_"))
		return false;
	const char *stop = raw_is(cv[1], "length") ? "max_tokens"
			   : raw_is(cv[1], "tool_calls") || raw_is(cv[1], "function_call") ? "tool_use"
			   : raw_is(cv[1], "content_filter") ? "refusal"
							     : "end_turn";
	if (v[2].p)
		tally_scan(DIALECT_OPENAI, v[2], t);
	size_t mark = out->len;
	bool ok = emit_raw(out, "{\"id\":\"") && emit_raw(out, id) &&
		  emit_raw(out, "\",\"type\":\"message\",\"role\":\"assistant\",\"model\":") &&
		  put_cstring(out, model ? model : "") && emit_raw(out, ",\"content\":[");
	for (int i = 0; i < 2; i++) { /* content, then refusal: the non-empty ones */
		if (!ok || !is_string(mv[i]) || mv[i].n == 2)
			continue;
		ok = emit_raw(out, out->p[out->len - 1] == '[' ? "{\"type\":\"text\",\"text\":\""
							       : ",{\"type\":\"text\",\"text\":\"") &&
		     emit_text(out, mv[i]) && emit_raw(out, "\"}");
	}
	ok = ok && emit_raw(out, "],\"stop_reason\":\"") && emit_raw(out, stop) &&
	     emit_num(out, "\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":", t->input) &&
	     emit_num(out, ",\"output_tokens\":", t->output) &&
	     emit_num(out, ",\"cache_read_input_tokens\":", t->cache_read) &&
	     emit_num(out, ",\"cache_creation_input_tokens\":", t->cache_write) &&
	     emit_raw(out, "}}");
	if (!ok)
		out->len = mark;
	return ok;
}

/* An answer of text blocks (others but tool_use ignored, as an OpenAI client has no place for
 * them) from an Anthropic provider for an OpenAI client, as an_to_oa_response writes it. */
static bool an_to_oa_response_fast(struct slice body, const char *model, struct buf *out,
				   struct tally *t)
{
	static const char *const keys[] = { "id", "content", "stop_reason", "usage" };
	static const char *const bkeys[] = { "type", "text" };
	struct slice v[4], blk, bv[2];
	struct json_iter it;
	char id[ID_MAX];
	if (!json_sure(body, keys, v, 4) || !json_array_begin(&it, v[1]) ||
	    (is_string(v[2]) && has_escape(v[2])) || !fast_id(id, v[0], "msg_", "chatcmpl-"))
		return false;
	while (json_array_next(&it, &blk) == 1)
		if (!json_scan_object(blk, bkeys, bv, 2) && is_string(bv[0]) &&
		    (has_escape(bv[0]) || raw_is(bv[0], "tool_use")))
			return false;
	const char *finish = raw_is(v[2], "max_tokens") ||
					     raw_is(v[2], "model_context_window_exceeded")
				     ? "length"
			     : raw_is(v[2], "tool_use") ? "tool_calls"
			     : raw_is(v[2], "refusal") ? "content_filter"
							: "stop";
	if (v[3].p)
		tally_scan(DIALECT_ANTHROPIC, v[3], t);
	uint64_t prompt = t->input + t->cache_read + t->cache_write;
	size_t mark = out->len;
	bool ok = emit_raw(out, "{\"id\":\"") && emit_raw(out, id) &&
		  emit_num(out, "\",\"object\":\"chat.completion\",\"created\":",
			   (uint64_t)time(NULL)) &&
		  emit_raw(out, ",\"model\":") && put_cstring(out, model ? model : "") &&
		  emit_raw(out, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
				"\"content\":\"");
	json_array_begin(&it, v[1]);
	while (ok && json_array_next(&it, &blk) == 1) /* the text blocks, joined as they are */
		if (!json_scan_object(blk, bkeys, bv, 2) && raw_is(bv[0], "text") && is_string(bv[1]))
			ok = emit_text(out, bv[1]);
	ok = ok && emit_raw(out, "\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"") &&
	     emit_raw(out, finish) &&
	     emit_num(out, "\"}],\"usage\":{\"prompt_tokens\":", prompt) &&
	     emit_num(out, ",\"completion_tokens\":", t->output) &&
	     emit_num(out, ",\"total_tokens\":", prompt + t->output) &&
	     emit_num(out, ",\"prompt_tokens_details\":{\"cached_tokens\":", t->cache_read) &&
	     emit_raw(out, "}}}");
	if (!ok)
		out->len = mark;
	return ok;
}

/* ---- fast paths: requests ----
 *
 * A chat request of the usual shape (text messages, the sampling settings, stream) written
 * as oa_to_an_request and an_to_oa_request write it. They read only the fields the full path
 * reads, so other fields are dropped alike; any value the full path would refuse, and any
 * feature beyond text (tools, images, tool results), makes them decline: the full path then
 * answers, refusals and their messages included. */

/* A value the full path takes as present (not absent, not null). */
static bool given(struct slice v)
{
	return v.p && !is_null(v);
}

/* v (a string json_sure passed) as jansson writes the string it decodes to, quotes included. */
static bool emit_str(struct buf *out, struct slice v)
{
	return emit_raw(out, "\"") && emit_text(out, v) && emit_raw(out, "\"");
}

/* A number json_sure passed, as jansson reads it: an integer (no '.': json_sure takes no
 * exponent) into *i, or a real; *d is its value either way. False if v is not a number. */
static bool read_number(struct slice v, bool *integer, int64_t *i, double *d)
{
	char num[64];
	if (!v.p || (v.p[0] != '-' && (v.p[0] < '0' || v.p[0] > '9')))
		return false;
	*integer = !memchr(v.p, '.', v.n);
	if (*integer) {
		if (!json_int(v, i))
			return false;
		*d = (double)*i;
		return true;
	}
	if (v.n >= sizeof(num))
		return false;
	memcpy(num, v.p, v.n);
	num[v.n] = 0;
	*d = strtod(num, NULL);
	return true;
}

/* d as jansson writes a real (jsonp_dtostr): 17 significant digits, ".0" when that reads as
 * an integer, the exponent without '+' or leading zeros. The gateway never sets a locale, so
 * snprintf and strtod use '.' here, as jansson does in any locale. */
static bool emit_real(struct buf *out, double d)
{
	char num[40], clean[40];
	snprintf(num, sizeof(num), "%.17g", d);
	if (!strchr(num, '.') && !strchr(num, 'e'))
		strcat(num, ".0");
	const char *e = strchr(num, 'e');
	if (!e)
		return emit_raw(out, num);
	size_t n = (size_t)(e + 1 - num);
	memcpy(clean, num, n);
	e++;
	if (*e == '-')
		clean[n++] = *e++;
	else if (*e == '+')
		e++;
	while (*e == '0')
		e++;
	strcpy(clean + n, e);
	return emit_raw(out, clean);
}

/* A number value as jansson writes it back (put_ref): an integer as "%lld" ("-0" is 0), a
 * real as emit_real. False if v is not a number. */
static bool emit_number(struct buf *out, struct slice v)
{
	bool integer;
	int64_t i;
	double d;
	if (!read_number(v, &integer, &i, &d))
		return false;
	if (!integer)
		return emit_real(out, d);
	char num[24];
	snprintf(num, sizeof(num), "%lld", (long long)i);
	return emit_raw(out, num);
}

/* max_tokens as the full path takes it: a positive integer, written as jansson writes it. */
static bool emit_max_tokens(struct buf *out, struct slice v)
{
	bool integer;
	int64_t i;
	double d;
	return read_number(v, &integer, &i, &d) && integer && i >= 1 &&
	       emit_num(out, "\"max_tokens\":", (uint64_t)i);
}

/* "key":v for the sampling numbers both ways pass through (temperature, top_p), when given;
 * false if v is given but not a number (the full path refuses it). */
static bool emit_number_field(struct buf *out, const char *key, struct slice v)
{
	return !given(v) || (emit_raw(out, key) && emit_number(out, v));
}

/* An array of strings (stop, stop_sequences) after key (which opens it: ',"stop":['), when
 * given and not empty; false if it is given and not that. With single (OpenAI's stop), a lone
 * string counts too. */
static bool emit_strings(struct buf *out, const char *key, struct slice v, bool single)
{
	struct json_iter it;
	struct slice s;
	size_t count = 0;
	int rc;
	if (!given(v))
		return true;
	if (single && is_string(v))
		return emit_raw(out, key) && emit_str(out, v) && emit_raw(out, "]");
	if (!json_array_begin(&it, v))
		return false;
	while ((rc = json_array_next(&it, &s)) == 1)
		if (!is_string(s) || !emit_raw(out, count++ ? "," : key) || !emit_str(out, s))
			return false;
	return rc == 0 && (!count || emit_raw(out, "]"));
}

/* The text pieces of a message's content as the full path reads them: a string, or an array
 * of text parts (OpenAI) or blocks (Anthropic), each {"type":"text","text":"..."}; with
 * refusal (an OpenAI assistant) {"type":"refusal","refusal":"..."} too, with thinking
 * (Anthropic messages) thinking blocks are skipped. Null or absent content has none. */
struct texts {
	struct slice one;
	struct json_iter it;
	bool parts, refusal, thinking;
};

static bool texts_begin(struct texts *t, struct slice content, bool refusal, bool thinking)
{
	*t = (struct texts){ .refusal = refusal, .thinking = thinking };
	if (is_string(content)) {
		t->one = content;
		return true;
	}
	t->parts = json_array_begin(&t->it, content);
	return t->parts || !given(content);
}

/* 1 with the next piece's string value in *text (maybe empty: ""), 0 after the last, -1 on
 * anything else (a part or block the fast path does not take). */
static int texts_next(struct texts *t, struct slice *text)
{
	static const char *const keys[] = { "type", "text", "refusal" };
	struct slice part, v[3];
	if (!t->parts) {
		*text = t->one;
		t->one = (struct slice){ NULL, 0 };
		return text->p ? 1 : 0;
	}
	for (;;) {
		int rc = json_array_next(&t->it, &part);
		if (rc != 1)
			return rc;
		if (json_scan_object(part, keys, v, 3))
			return -1;
		if (t->thinking && (raw_is(v[0], "thinking") || raw_is(v[0], "redacted_thinking")))
			continue;
		if (raw_is(v[0], "text"))
			*text = v[1];
		else if (t->refusal && raw_is(v[0], "refusal"))
			*text = v[2];
		else
			return -1;
		return is_string(*text) ? 1 : -1;
	}
}

/* Append content's non-empty texts to out, a blank line between them, after open (written
 * before the first when *opened is false). False on content the fast path does not take. */
static bool join_texts(struct buf *out, struct slice content, const char *open, bool *opened)
{
	struct texts t;
	struct slice text;
	int rc;
	if (!texts_begin(&t, content, false, false))
		return false;
	while ((rc = texts_next(&t, &text)) == 1) {
		if (text.n == 2)
			continue;
		if (!emit_raw(out, *opened ? "\\n\\n" : open) || !emit_text(out, text))
			return false;
		*opened = true;
	}
	return rc == 0;
}

enum { OM_ROLE, OM_CONTENT, OM_TOOL_CALLS, OM_FUNCTION_CALL, OM_N };
enum { R_SYSTEM, R_DEVELOPER, R_USER, R_ASSISTANT, R_N };

/* The role (R_*) of an OpenAI message the fast path may take, its fields in v; -1 for others. */
static int oa_fast_message(struct slice m, struct slice *v)
{
	static const char *const keys[OM_N] = { "role", "content", "tool_calls", "function_call" };
	static const char *const roles[R_N] = { "system", "developer", "user", "assistant" };
	if (json_scan_object(m, keys, v, OM_N))
		return -1;
	if (given(v[OM_TOOL_CALLS]) || given(v[OM_FUNCTION_CALL]))
		return -1;
	for (int r = 0; r < R_N; r++)
		if (raw_is(v[OM_ROLE], roles[r]))
			return r;
	return -1;
}

/* Move the bytes from mark to the end of out back to at, ahead of those from at to mark. */
static void move_back(struct buf *out, size_t at, size_t mark)
{
	size_t ends[3][2] = { { at, mark }, { mark, out->len }, { at, out->len } };
	for (int k = 0; k < 3; k++) /* three reversals rotate the bytes in place */
		for (size_t i = ends[k][0], j = ends[k][1]; i + 1 < j; i++, j--) {
			char c = out->p[i];
			out->p[i] = out->p[j - 1];
			out->p[j - 1] = c;
		}
}

/* The system text and the messages oa_messages makes, in one pass: system and developer texts
 * joined into ',"system":"..."' ahead of the messages (one that comes after a turn is moved
 * there), user and assistant texts as text blocks, consecutive messages of one role merged,
 * empty text skipped, a message left without text dropped. False where the full path refuses
 * the messages (none, or the first not the user's) or the fast path does not take them. */
static bool oa_fast_messages(struct buf *out, struct slice list)
{
	struct json_iter it;
	struct slice m, v[OM_N], text;
	size_t sys_end = out->len; /* where more system text goes: before its closing quote */
	bool sys = false;
	int open = -1, rc, k = 0;
	if (!json_array_begin(&it, list))
		return false;
	while ((rc = json_array_next(&it, &m)) == 1) {
		int role = oa_fast_message(m, v);
		struct texts t;
		if (role < 0 || !texts_begin(&t, v[OM_CONTENT], role == R_ASSISTANT, false))
			return false;
		while ((k = texts_next(&t, &text)) == 1) {
			size_t mark = out->len;
			if (text.n == 2)
				continue;
			if (role < R_USER) {
				if (!emit_raw(out, sys ? "\\n\\n" : ",\"system\":\"") ||
				    !emit_text(out, text) || (!sys && !emit_raw(out, "\"")))
					return false;
				if (mark != sys_end)
					move_back(out, sys_end, mark);
				sys_end += out->len - mark - !sys;
				sys = true;
				continue;
			}
			if (open < 0 && role != R_USER)
				return false;
			const char *start = open < 0 ? ",\"messages\":[{\"role\":\"" : "]},{\"role\":\"";
			const char *name = role == R_USER ? "user" : "assistant";
			bool ok = role == open ? emit_raw(out, ",")
					       : emit_raw(out, start) && emit_raw(out, name) &&
							 emit_raw(out, "\",\"content\":[");
			if (!ok || !emit_raw(out, "{\"type\":\"text\",\"text\":\"") ||
			    !emit_text(out, text) || !emit_raw(out, "\"}"))
				return false;
			open = role;
		}
		if (k)
			return false;
	}
	return rc == 0 && open >= 0 && emit_raw(out, "]}]");
}

enum {
	OA_MODEL, OA_MESSAGES, OA_MAX_COMPLETION, OA_MAX_TOKENS, OA_STOP, OA_TEMPERATURE, OA_TOP_P,
	OA_STREAM, OA_USER, OA_TOOLS, OA_N, OA_LOGPROBS, OA_AUDIO, OA_MODALITIES,
	OA_RESPONSE_FORMAT, OA_FUNCTIONS, OA_FUNCTION_CALL, OA_WEB_SEARCH, OA_KEYS
};

/* An OpenAI request of text messages for an Anthropic provider, as oa_to_an_request writes it. */
static bool oa_to_an_request_fast(struct slice body, const struct xlat_request_opts *o,
				  struct buf *out)
{
	static const char *const keys[OA_KEYS] = {
		"model", "messages", "max_completion_tokens", "max_tokens", "stop", "temperature",
		"top_p", "stream", "user", "tools", "n", "logprobs", "audio", "modalities",
		"response_format", "functions", "function_call", "web_search_options",
	};
	struct slice v[OA_KEYS];
	if (!json_sure(body, keys, v, OA_KEYS) ||
	    (given(v[OA_N]) && !slice_eq_cstr(v[OA_N], "1")) || slice_eq_cstr(v[OA_LOGPROBS], "true"))
		return false;
	for (int k = OA_AUDIO; k < OA_KEYS; k++) /* refused, or not a usual shape */
		if (given(v[k]))
			return false;
	if ((given(v[OA_TOOLS]) && !is_empty_array(v[OA_TOOLS])) ||
	    (!(o && o->upstream_model) && !is_string(v[OA_MODEL])))
		return false;
	struct slice mt = given(v[OA_MAX_COMPLETION]) ? v[OA_MAX_COMPLETION] : v[OA_MAX_TOKENS];
	struct slice temp = v[OA_TEMPERATURE];
	size_t mark = out->len;
	bool ok = emit_raw(out, "{\"model\":") &&
		  (o && o->upstream_model ? put_cstring(out, o->upstream_model)
					  : emit_str(out, v[OA_MODEL])) &&
		  emit_raw(out, ",");
	if (ok && given(mt))
		ok = emit_max_tokens(out, mt);
	else if (ok)
		ok = emit_num(out, "\"max_tokens\":",
			      o && o->default_max_tokens ? o->default_max_tokens : DEFAULT_MAX_TOKENS);
	ok = ok && oa_fast_messages(out, v[OA_MESSAGES]) &&
	     emit_strings(out, ",\"stop_sequences\":[", v[OA_STOP], true);
	if (ok && given(temp)) { /* OpenAI's 0..2 onto Anthropic's 0..1: clamped, as a real */
		bool integer;
		int64_t i;
		double t;
		ok = read_number(temp, &integer, &i, &t) && emit_raw(out, ",\"temperature\":") &&
		     emit_real(out, t < 0 ? 0 : t > 1 ? 1 : t);
	}
	ok = ok && emit_number_field(out, ",\"top_p\":", v[OA_TOP_P]);
	if (ok && given(v[OA_STREAM]))
		ok = (slice_eq_cstr(v[OA_STREAM], "true") || slice_eq_cstr(v[OA_STREAM], "false")) &&
		     emit_raw(out, ",\"stream\":") &&
		     buf_append(out, v[OA_STREAM].p, v[OA_STREAM].n, XLAT_MAX_OUT);
	if (ok && is_string(v[OA_USER]) && v[OA_USER].n > 2)
		ok = emit_raw(out, ",\"metadata\":{\"user_id\":") && emit_str(out, v[OA_USER]) &&
		     emit_raw(out, "}");
	ok = ok && emit_raw(out, "}");
	if (!ok)
		out->len = mark;
	return ok;
}

/* One Anthropic message of text blocks as an_message writes it: content a string as it is,
 * text blocks joined (null for an assistant, "" for a user, when all are empty), a message
 * of no text (thinking only) dropped. *n counts the messages written. */
static bool an_fast_message(struct buf *out, struct slice m, size_t *n)
{
	static const char *const keys[] = { "role", "content" };
	struct slice v[2], text;
	struct texts t;
	bool assistant;
	if (json_scan_object(m, keys, v, 2) ||
	    !((assistant = raw_is(v[0], "assistant")) || raw_is(v[0], "user")))
		return false;
	const char *open = *n ? ",{\"role\":\"" : "{\"role\":\"";
	const char *role = assistant ? "assistant\",\"content\":" : "user\",\"content\":";
	if (is_string(v[1])) {
		++*n;
		return emit_raw(out, open) && emit_raw(out, role) && emit_str(out, v[1]) &&
		       emit_raw(out, "}");
	}
	if (!v[1].p || v[1].p[0] != '[' || !texts_begin(&t, v[1], false, true))
		return false;
	size_t mark = out->len;
	bool any = false, opened = false;
	int rc;
	if (!emit_raw(out, open) || !emit_raw(out, role))
		return false;
	while ((rc = texts_next(&t, &text)) == 1) {
		any = true;
		if (text.n > 2 && (!emit_raw(out, opened ? "\\n\\n" : "\"") || !emit_text(out, text)))
			return false;
		opened = opened || text.n > 2;
	}
	if (rc)
		return false;
	if (!any) {
		out->len = mark;
		return true;
	}
	++*n;
	return emit_raw(out, opened ? "\"}" : assistant ? "null}" : "\"\"}");
}

enum {
	AN_MODEL, AN_MESSAGES, AN_SYSTEM, AN_MAX_TOKENS, AN_STOP, AN_TEMPERATURE, AN_TOP_P,
	AN_METADATA, AN_STREAM, AN_TOOLS, AN_MCP, AN_CONTAINER, AN_KEYS
};

/* An Anthropic request of text messages for an OpenAI provider, as an_to_oa_request writes it. */
static bool an_to_oa_request_fast(struct slice body, const struct xlat_request_opts *o,
				  struct buf *out)
{
	static const char *const keys[AN_KEYS] = {
		"model", "messages", "system", "max_tokens", "stop_sequences", "temperature", "top_p",
		"metadata", "stream", "tools", "mcp_servers", "container",
	};
	static const char *const mkeys[] = { "user_id" };
	struct slice v[AN_KEYS], user;
	struct json_iter it;
	if (!json_sure(body, keys, v, AN_KEYS) || given(v[AN_MCP]) || given(v[AN_CONTAINER]) ||
	    (given(v[AN_TOOLS]) && !is_empty_array(v[AN_TOOLS])) ||
	    (!(o && o->upstream_model) && !is_string(v[AN_MODEL])) ||
	    !json_array_begin(&it, v[AN_MESSAGES]))
		return false;
	size_t mark = out->len, n = 0;
	bool sys = false;
	struct slice m;
	int rc = -1;
	bool ok = emit_raw(out, "{\"model\":") &&
		  (o && o->upstream_model ? put_cstring(out, o->upstream_model)
					  : emit_str(out, v[AN_MODEL])) &&
		  emit_raw(out, ",\"messages\":[") &&
		  join_texts(out, v[AN_SYSTEM], "{\"role\":\"system\",\"content\":\"", &sys) &&
		  (!sys || emit_raw(out, "\"}"));
	n = sys;
	while (ok && (rc = json_array_next(&it, &m)) == 1)
		ok = an_fast_message(out, m, &n);
	ok = ok && rc == 0 && n && emit_raw(out, "]") &&
	     (!given(v[AN_MAX_TOKENS]) ||
	      (emit_raw(out, ",") && emit_max_tokens(out, v[AN_MAX_TOKENS]))) &&
	     emit_strings(out, ",\"stop\":[", v[AN_STOP], false) &&
	     emit_number_field(out, ",\"temperature\":", v[AN_TEMPERATURE]) &&
	     emit_number_field(out, ",\"top_p\":", v[AN_TOP_P]);
	if (ok && !json_scan_object(v[AN_METADATA], mkeys, &user, 1) && is_string(user) &&
	    user.n > 2)
		ok = emit_raw(out, ",\"user\":") && emit_str(out, user);
	if (ok && given(v[AN_STREAM]) && !slice_eq_cstr(v[AN_STREAM], "false"))
		ok = slice_eq_cstr(v[AN_STREAM], "true") && emit_raw(out, ",\"stream\":true") &&
		     (!(o && o->stream_usage) ||
		      emit_raw(out, ",\"stream_options\":{\"include_usage\":true}"));
	ok = ok && emit_raw(out, "}");
	if (!ok)
		out->len = mark;
	return ok;
}

int xlat_request(enum dialect from, enum dialect to, struct slice body,
		 const struct xlat_request_opts *o, struct buf *out, char *err, size_t errlen)
{
	struct cx c = { err, errlen, false };
	if (fast_on && from != to &&
	    (from == DIALECT_OPENAI ? oa_to_an_request_fast(body, o, out)
				    : an_to_oa_request_fast(body, o, out)))
		return 0;
	json_error_t je;
	json_t *in = json_loadb(body.p ? body.p : "", body.n, JSON_ALLOW_NUL, &je);
	if (!in)
		return fail(&c, "request body is not valid JSON (line %d column %d: %s)", je.line,
			    je.column, je.text);
	json_t *res = json_object();
	int rc;
	if (!json_is_object(in))
		rc = fail(&c, "request body must be a JSON object");
	else if (from == to)
		rc = json_object_update(res, in) ? (c.oom = true, -1) : 0;
	else if (from == DIALECT_OPENAI)
		rc = oa_to_an_request(&c, in, o, res);
	else
		rc = an_to_oa_request(&c, in, o, res);
	if (!rc && from == to && o && o->upstream_model)
		put(&c, res, "model", json_string(o->upstream_model));
	if (!rc && (c.oom || !emit_json(out, res)))
		rc = fail(&c, "the translated request is too large or memory ran out");
	json_decref(res);
	json_decref(in);
	return rc;
}

/* ---- responses ---- */

static int oa_to_an_response(struct cx *c, const json_t *in, const char *model, json_t *out,
			     struct tally *t)
{
	const json_t *choice = json_array_get(get(in, "choices"), 0);
	const json_t *msg = get(choice, "message");
	if (!json_is_object(msg))
		return -1;
	char id[ID_MAX];
	swap_id(id, get(in, "id"), "chatcmpl-", "msg_");
	json_t *content = json_array();
	put(c, out, "id", json_string(id));
	put(c, out, "type", json_string("message"));
	put(c, out, "role", json_string("assistant"));
	put(c, out, "model", json_string(model ? model : ""));
	put(c, out, "content", content);
	if (oa_parts(c, get(msg, "content"), content, 0, true))
		return -1;
	json_t *refusal = get(msg, "refusal");
	if (json_is_string(refusal) && json_string_length(refusal))
		push(c, content, text_block(c, refusal));
	if (oa_tool_uses(c, get(msg, "tool_calls"), content, 0))
		return -1;
	put(c, out, "stop_reason", json_string(stop_from_finish(get(choice, "finish_reason"))));
	put(c, out, "stop_sequence", json_null());
	tally_json(DIALECT_OPENAI, get(in, "usage"), t);
	put(c, out, "usage", usage_json(c, DIALECT_ANTHROPIC, t));
	return 0;
}

static int an_to_oa_response(struct cx *c, const json_t *in, const char *model, json_t *out,
			     struct tally *t)
{
	const json_t *content = get(in, "content");
	if (!json_is_array(content))
		return -1;
	char id[ID_MAX];
	swap_id(id, get(in, "id"), "msg_", "chatcmpl-");
	struct buf text = { 0 };
	json_t *calls = json_array();
	size_t i;
	json_t *blk;
	int rc = 0;
	json_array_foreach(content, i, blk) {
		const json_t *type = get(blk, "type");
		if (str_is(type, "text") && json_is_string(get(blk, "text"))) {
			/* the model's own pieces: joined as they are */
			if (!join(&text, "", get(blk, "text")))
				rc = -1;
		} else if (str_is(type, "tool_use")) {
			json_t *call = an_tool_call(c, blk, 0, i, &rc);
			if (call)
				push(c, calls, call);
		}
		if (rc)
			break;
	}
	json_t *msg = json_object(), *choice = json_object(), *choices = json_array();
	put(c, msg, "role", json_string("assistant"));
	put(c, msg, "content", text.len || !json_array_size(calls) ? stringn(text.p, text.len)
								   : json_null());
	put(c, msg, "refusal", json_null());
	if (json_array_size(calls))
		put_ref(c, msg, "tool_calls", calls);
	put(c, choice, "index", json_integer(0));
	put(c, choice, "message", msg);
	put(c, choice, "logprobs", json_null());
	put(c, choice, "finish_reason", json_string(finish_from_stop(get(in, "stop_reason"))));
	push(c, choices, choice);
	put(c, out, "id", json_string(id));
	put(c, out, "object", json_string("chat.completion"));
	put(c, out, "created", json_integer((json_int_t)time(NULL)));
	put(c, out, "model", json_string(model ? model : ""));
	put(c, out, "choices", choices);
	tally_json(DIALECT_ANTHROPIC, get(in, "usage"), t);
	put(c, out, "usage", usage_json(c, DIALECT_OPENAI, t));
	buf_free(&text);
	json_decref(calls);
	return rc;
}

int xlat_response(enum dialect from, enum dialect to, struct slice body, const char *client_model,
		  struct buf *out, struct usage *u)
{
	struct cx c = { NULL, 0, false };
	struct tally t = { 0 };
	if (fast_on && from != to &&
	    (from == DIALECT_OPENAI ? oa_to_an_response_fast(body, client_model, out, &t)
				    : an_to_oa_response_fast(body, client_model, out, &t))) {
		if (u)
			tally_usage(&t, u);
		return 0;
	}
	t = (struct tally){ 0 };
	json_t *in = load(body), *res = json_object();
	int rc = -1;
	if (json_is_object(in)) {
		if (from == to) {
			rc = json_object_update(res, in);
			if (client_model)
				put(&c, res, "model", json_string(client_model));
			tally_json(from, get(in, "usage"), &t);
		} else if (from == DIALECT_OPENAI) {
			rc = oa_to_an_response(&c, in, client_model, res, &t);
		} else {
			rc = an_to_oa_response(&c, in, client_model, res, &t);
		}
	}
	if (!rc && (c.oom || !emit_json(out, res)))
		rc = -1;
	if (u)
		tally_usage(&t, u);
	json_decref(res);
	json_decref(in);
	return rc;
}

/* ---- errors ---- */

static const char *an_error_type(int status)
{
	switch (status) {
	case 401: return "authentication_error";
	case 403: return "permission_error";
	case 404: return "not_found_error";
	case 413: return "request_too_large";
	case 429: return "rate_limit_error";
	case 503:
	case 529: return "overloaded_error";
	default: return status < 500 ? "invalid_request_error" : "api_error";
	}
}

/* The status an Anthropic error type stands for (stream errors carry no status). */
static int an_error_status(const json_t *type)
{
	static const int statuses[] = { 400, 401, 403, 404, 413, 429, 529 };
	for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
		if (str_is(type, an_error_type(statuses[i])))
			return statuses[i];
	return 500;
}

/* OpenAI's own style: invalid_request_error for every 4xx but 429 (the code says more). */
static const char *oa_error_type(int status)
{
	return status == 429 ? "rate_limit_error" : status < 500 ? "invalid_request_error" : "api_error";
}

static json_t *error_json(struct cx *c, enum dialect d, const char *type, json_t *message,
			  json_t *code)
{
	json_t *e = json_object(), *body = json_object();
	if (d == DIALECT_OPENAI) {
		put(c, e, "message", message);
		put(c, e, "type", json_string(type));
		put(c, e, "param", json_null());
		put(c, e, "code", code ? code : json_null());
		put(c, body, "error", e);
		return body;
	}
	json_decref(code);
	put(c, e, "type", json_string(type));
	put(c, e, "message", message);
	put(c, body, "type", json_string("error"));
	put(c, body, "error", e);
	return body;
}

/* The message and code of a provider's error body, in either dialect's shape or the
 * common variants of OpenAI-compatible servers ({"error":"..."}, {"message":"..."}). */
static void read_error(const json_t *in, json_t **message, json_t **code)
{
	const json_t *e = get(in, "error");
	const json_t *m = json_is_string(e) ? e : get(e, "message");
	if (!json_is_string(m))
		m = get(in, "message");
	if (!json_is_string(m))
		m = get(in, "detail");
	*message = json_is_string(m) && json_string_length(m) ? json_incref((json_t *)m) : NULL;
	const json_t *k = get(e, "code");
	if (!json_is_string(k))
		k = get(e, "type"); /* Anthropic's type is the closest to OpenAI's code */
	*code = json_is_string(k) ? json_incref((json_t *)k) : NULL;
}

int xlat_error(enum dialect from, enum dialect to, int status, struct slice body, struct buf *out)
{
	if (status < 400 || status > 599)
		status = 502;
	int client_status = to == DIALECT_OPENAI && status == 529 ? 503 : status;
	struct cx c = { NULL, 0, false };
	json_t *in = load(body), *message, *code;
	if (from == to && json_is_object(get(in, "error")) &&
	    json_is_string(get(get(in, "error"), "message")) && emit_json(out, in)) {
		json_decref(in);
		return client_status;
	}
	read_error(in, &message, &code);
	if (!message) {
		char text[64];
		snprintf(text, sizeof(text), "the provider returned HTTP %d", status);
		message = json_string(text);
	}
	const char *type = to == DIALECT_OPENAI ? oa_error_type(status) : an_error_type(status);
	json_t *res = error_json(&c, to, type, message, code);
	if (c.oom || !emit_json(out, res))
		emit_raw(out, to == DIALECT_OPENAI ? "{\"error\":{\"message\":\"provider error\"}}"
						   : "{\"type\":\"error\",\"error\":{\"type\":"
						     "\"api_error\",\"message\":\"provider error\"}}");
	json_decref(res);
	json_decref(in);
	return client_status;
}

static int kind_status(enum xlat_err_kind kind)
{
	switch (kind) {
	case XERR_INVALID_REQUEST: return 400;
	case XERR_AUTHENTICATION: return 401;
	case XERR_PERMISSION: return 403;
	case XERR_RATE_LIMIT:
	case XERR_BUDGET: return 429;
	case XERR_UPSTREAM: return 502;
	case XERR_INTERNAL: break;
	}
	return 500;
}

/* A gateway error body as a json tree (shared by xlat_error_body and stream errors). */
static json_t *gateway_error(struct cx *c, enum dialect d, enum xlat_err_kind kind, int status,
			     const char *code, const char *message)
{
	if (status < 400 || status > 599)
		status = kind_status(kind);
	const char *type;
	if (d == DIALECT_ANTHROPIC)
		type = an_error_type(status);
	else if (kind == XERR_BUDGET)
		type = "insufficient_quota";
	else
		type = oa_error_type(status);
	if (kind == XERR_BUDGET && !code)
		code = "budget_exceeded";
	json_t *m = json_string(message ? message : "");
	if (!m) /* not UTF-8: the gateway's own text, so only a bug gets here */
		m = json_string("error");
	return error_json(c, d, type, m, code ? json_string(code) : NULL);
}

void xlat_error_body(enum dialect d, enum xlat_err_kind kind, int status, const char *code,
		     const char *message, struct buf *out)
{
	struct cx c = { NULL, 0, false };
	json_t *body = gateway_error(&c, d, kind, status, code, message);
	if (c.oom || !emit_json(out, body))
		emit_raw(out, d == DIALECT_OPENAI ? "{\"error\":{\"message\":\"error\"}}"
						  : "{\"type\":\"error\",\"error\":{\"type\":"
						    "\"api_error\",\"message\":\"error\"}}");
	json_decref(body);
}

/* ---- streams ---- */

enum blk { BLK_NONE, BLK_TEXT, BLK_TOOL, BLK_OTHER };

struct xlat_stream {
	enum dialect from, to;
	bool wants_usage;
	bool started;     /* the client has its opening event */
	bool finished;    /* the client's terminator is written: nothing more goes out */
	bool finish_sent; /* OpenAI client: the finish_reason chunk; Anthropic: message_delta */
	char *model;
	char id[ID_MAX]; /* in the client's dialect */
	long long created;
	struct tally tally;
	struct usage usage;
	/* the open content block, in the Anthropic side's numbering */
	enum blk blk;
	int64_t blk_index;  /* Anthropic index of the open block (-1: none yet) */
	int64_t tool_at;    /* OpenAI upstream: tool_call index of the open tool block */
	int64_t tools;      /* tool calls started so far */
	const char *reason; /* stop_reason or finish_reason, in the client's dialect */
	struct head {       /* an OpenAI client's chunks up to "choices" (chunk_head_ready) */
		struct buf b;
		bool made, ok;
	} head;
};

struct xlat_stream *xlat_stream_new(enum dialect from, enum dialect to, const char *client_model,
				    bool client_wants_usage)
{
	struct xlat_stream *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->model = strdup(client_model ? client_model : "");
	if (!s->model) {
		free(s);
		return NULL;
	}
	s->from = from;
	s->to = to;
	s->wants_usage = client_wants_usage;
	s->created = (long long)time(NULL);
	s->blk_index = -1;
	s->tool_at = -1;
	return s;
}

void xlat_stream_free(struct xlat_stream *s)
{
	if (!s)
		return;
	buf_free(&s->head.b);
	free(s->model);
	free(s);
}

const struct usage *xlat_stream_usage(const struct xlat_stream *s)
{
	return &s->usage;
}

static void stream_tally(struct xlat_stream *s, const json_t *u)
{
	tally_json(s->from, u, &s->tally);
	tally_usage(&s->tally, &s->usage);
}

/* "data: {...}\n\n", with "event: name\n" first for Anthropic; all or nothing. Takes j. */
static bool sse_out(struct buf *out, const char *name, json_t *j)
{
	size_t mark = out->len;
	bool ok = (!name || (emit_raw(out, "event: ") && emit_raw(out, name) && emit_raw(out, "\n"))) &&
		  emit_raw(out, "data: ") && emit_json(out, j) && emit_raw(out, "\n\n");
	if (!ok)
		out->len = mark;
	json_decref(j);
	return ok;
}

static bool sse_done(struct buf *out)
{
	return emit_raw(out, "data: [DONE]\n\n");
}

/* -- Anthropic client -- */

static bool an_send(struct buf *out, json_t *ev)
{
	const char *name = json_string_value(get(ev, "type"));
	return sse_out(out, name ? name : "", ev);
}

static bool an_open(struct xlat_stream *s, struct cx *c, struct buf *out)
{
	if (s->started)
		return true;
	if (!s->id[0])
		swap_id(s->id, NULL, "", "msg_");
	json_t *msg = json_object(), *ev = block(c, "message_start");
	put(c, msg, "id", json_string(s->id));
	put(c, msg, "type", json_string("message"));
	put(c, msg, "role", json_string("assistant"));
	put(c, msg, "model", json_string(s->model));
	put(c, msg, "content", json_array());
	put(c, msg, "stop_reason", json_null());
	put(c, msg, "stop_sequence", json_null());
	put(c, msg, "usage", usage_json(c, DIALECT_ANTHROPIC, &s->tally));
	put(c, ev, "message", msg);
	s->started = true;
	return an_send(out, ev);
}

static bool an_close_block(struct xlat_stream *s, struct cx *c, struct buf *out)
{
	if (s->blk == BLK_NONE)
		return true;
	json_t *ev = block(c, "content_block_stop");
	put(c, ev, "index", json_integer(s->blk_index));
	s->blk = BLK_NONE;
	return an_send(out, ev);
}

static bool an_start_block(struct xlat_stream *s, struct cx *c, struct buf *out, json_t *cb,
			   enum blk kind)
{
	if (!an_close_block(s, c, out)) {
		json_decref(cb);
		return false;
	}
	json_t *ev = block(c, "content_block_start");
	s->blk_index++;
	s->blk = kind;
	put(c, ev, "index", json_integer(s->blk_index));
	put(c, ev, "content_block", cb);
	return an_send(out, ev);
}

static bool an_delta(struct xlat_stream *s, struct cx *c, struct buf *out, const char *type,
		     const char *field, json_t *value)
{
	json_t *ev = block(c, "content_block_delta"), *d = block(c, type);
	put_ref(c, d, field, value);
	put(c, ev, "index", json_integer(s->blk_index));
	put(c, ev, "delta", d);
	return an_send(out, ev);
}

static bool an_finish(struct xlat_stream *s, struct cx *c, struct buf *out)
{
	if (!an_open(s, c, out) || !an_close_block(s, c, out))
		return false;
	if (!s->finish_sent) {
		json_t *ev = block(c, "message_delta"), *d = json_object();
		put(c, d, "stop_reason", json_string(s->reason ? s->reason : "end_turn"));
		put(c, d, "stop_sequence", json_null());
		put(c, ev, "delta", d);
		put(c, ev, "usage", usage_json(c, DIALECT_ANTHROPIC, &s->tally));
		s->finish_sent = true;
		if (!an_send(out, ev))
			return false;
	}
	s->finished = true;
	return an_send(out, block(c, "message_stop"));
}

static bool oa_tool_delta(struct xlat_stream *s, struct cx *c, struct buf *out, const json_t *tc,
			  int *rc)
{
	const json_t *idx = get(tc, "index"), *fn = get(tc, "function");
	int64_t k = json_is_integer(idx) ? json_integer_value(idx) : s->tool_at < 0 ? 0 : s->tool_at;
	if (s->blk != BLK_TOOL || k != s->tool_at) {
		if (k <= s->tool_at) { /* Anthropic cannot reopen a closed block */
			*rc = -1;
			return true;
		}
		json_t *cb = block(c, "tool_use"), *name = get(fn, "name");
		put(c, cb, "id", tool_id(get(tc, "id"), "toolu_"));
		put(c, cb, "name", json_is_string(name) ? json_incref(name) : json_string(""));
		put(c, cb, "input", json_object());
		s->tool_at = k;
		s->tools++;
		if (!an_start_block(s, c, out, cb, BLK_TOOL))
			return false;
	}
	json_t *args = get(fn, "arguments");
	if (json_is_string(args) && json_string_length(args))
		return an_delta(s, c, out, "input_json_delta", "partial_json", args);
	return true;
}

/* One OpenAI chunk (or [DONE]) for an Anthropic client. */
static int oa_to_an_event(struct xlat_stream *s, struct cx *c, struct slice data, struct buf *out)
{
	if (slice_eq_cstr(data, "[DONE]"))
		return an_finish(s, c, out) ? 0 : -1;
	json_t *j = load(data);
	int rc = 0;
	if (!json_is_object(j)) {
		json_decref(j);
		return -1;
	}
	if (!s->started)
		swap_id(s->id, get(j, "id"), "chatcmpl-", "msg_");
	const json_t *e = get(j, "error");
	if (present(e)) {
		json_t *m, *code;
		read_error(j, &m, &code);
		json_decref(code);
		bool ok = an_send(out, error_json(c, DIALECT_ANTHROPIC, "api_error",
						  m ? m : json_string("the provider failed"), NULL));
		s->finished = true;
		json_decref(j);
		return ok ? 0 : -1;
	}
	if (present(get(j, "usage")))
		stream_tally(s, get(j, "usage"));
	bool ok = an_open(s, c, out);
	size_t i;
	json_t *ch;
	json_array_foreach(get(j, "choices"), i, ch) {
		const json_t *idx = get(ch, "index"), *delta = get(ch, "delta");
		if (json_is_integer(idx) && json_integer_value(idx) != 0)
			continue; /* n > 1 is refused in the request; only choice 0 is ours */
		json_t *text = get(delta, "content");
		if (!json_is_string(text) || !json_string_length(text))
			text = get(delta, "refusal");
		if (ok && json_is_string(text) && json_string_length(text)) {
			if (s->blk != BLK_TEXT) {
				json_t *cb = block(c, "text");
				put(c, cb, "text", json_string(""));
				ok = an_start_block(s, c, out, cb, BLK_TEXT);
			}
			ok = ok && an_delta(s, c, out, "text_delta", "text", text);
		}
		size_t k;
		json_t *tc;
		json_array_foreach(get(delta, "tool_calls"), k, tc) {
			if (!ok || rc)
				break;
			ok = oa_tool_delta(s, c, out, tc, &rc);
		}
		const json_t *finish = get(ch, "finish_reason");
		if (ok && json_is_string(finish)) {
			s->reason = stop_from_finish(finish);
			ok = an_close_block(s, c, out);
		}
	}
	json_decref(j);
	return ok && !c->oom ? rc : -1;
}

/* -- OpenAI client -- */

static json_t *oa_chunk(struct xlat_stream *s, struct cx *c, json_t *delta, const char *finish)
{
	json_t *j = json_object(), *choices = json_array();
	put(c, j, "id", json_string(s->id));
	put(c, j, "object", json_string("chat.completion.chunk"));
	put(c, j, "created", json_integer(s->created));
	put(c, j, "model", json_string(s->model));
	put(c, j, "choices", choices);
	if (!delta)
		return j;
	json_t *ch = json_object();
	put(c, ch, "index", json_integer(0));
	put(c, ch, "delta", delta);
	put(c, ch, "logprobs", json_null());
	put(c, ch, "finish_reason", finish ? json_string(finish) : json_null());
	push(c, choices, ch);
	return j;
}

static bool oa_send(struct xlat_stream *s, struct cx *c, struct buf *out, json_t *delta)
{
	return sse_out(out, NULL, oa_chunk(s, c, delta, NULL));
}

static bool oa_open(struct xlat_stream *s, struct cx *c, struct buf *out)
{
	if (s->started)
		return true;
	if (!s->id[0])
		swap_id(s->id, NULL, "", "chatcmpl-");
	json_t *d = json_object();
	put(c, d, "role", json_string("assistant"));
	put(c, d, "content", json_string(""));
	s->started = true;
	return oa_send(s, c, out, d);
}

static bool oa_finish(struct xlat_stream *s, struct cx *c, struct buf *out)
{
	if (!oa_open(s, c, out))
		return false;
	if (!s->finish_sent) {
		s->finish_sent = true;
		if (!sse_out(out, NULL, oa_chunk(s, c, json_object(), s->reason ? s->reason : "stop")))
			return false;
	}
	if (s->wants_usage) {
		json_t *j = oa_chunk(s, c, NULL, NULL);
		put(c, j, "usage", usage_json(c, DIALECT_OPENAI, &s->tally));
		if (!sse_out(out, NULL, j))
			return false;
	}
	s->finished = true;
	return sse_done(out);
}

static bool oa_tool_start(struct xlat_stream *s, struct cx *c, struct buf *out, const json_t *cb)
{
	json_t *call = json_object(), *fn = json_object(), *calls = json_array(), *d = json_object();
	json_t *name = get(cb, "name");
	put(c, fn, "name", json_is_string(name) ? json_incref(name) : json_string(""));
	put(c, fn, "arguments", json_string(""));
	put(c, call, "index", json_integer(s->tools++));
	put(c, call, "id", tool_id(get(cb, "id"), "call_"));
	put(c, call, "type", json_string("function"));
	put(c, call, "function", fn);
	push(c, calls, call);
	put(c, d, "tool_calls", calls);
	return oa_send(s, c, out, d);
}

static bool oa_tool_args(struct xlat_stream *s, struct cx *c, struct buf *out, json_t *partial)
{
	json_t *call = json_object(), *fn = json_object(), *calls = json_array(), *d = json_object();
	put_ref(c, fn, "arguments", partial);
	put(c, call, "index", json_integer(s->tools - 1));
	put(c, call, "function", fn);
	push(c, calls, call);
	put(c, d, "tool_calls", calls);
	return oa_send(s, c, out, d);
}

/* One Anthropic event for an OpenAI client. */
static int an_to_oa_event(struct xlat_stream *s, struct cx *c, struct slice name, struct slice data,
			  struct buf *out)
{
	json_t *j = load(data);
	if (!json_is_object(j)) {
		json_decref(j);
		return -1;
	}
	const json_t *type = get(j, "type"); /* the event's name, also in its data */
	if (!json_is_string(type))
		type = NULL;
	bool ok = true;
	int rc = 0;
#define IS(t) (type ? str_is(type, t) : slice_eq_cstr(name, t))
	if (IS("ping")) {
		/* keep-alive only */
	} else if (IS("message_start")) {
		const json_t *msg = get(j, "message");
		if (!s->started)
			swap_id(s->id, get(msg, "id"), "msg_", "chatcmpl-");
		stream_tally(s, get(msg, "usage"));
		ok = oa_open(s, c, out);
	} else if (IS("content_block_start")) {
		const json_t *cb = get(j, "content_block"), *idx = get(j, "index");
		const json_t *t = get(cb, "type"), *text = get(cb, "text");
		ok = oa_open(s, c, out);
		s->blk_index = json_is_integer(idx) ? json_integer_value(idx) : s->blk_index + 1;
		s->blk = str_is(t, "text") ? BLK_TEXT : str_is(t, "tool_use") ? BLK_TOOL : BLK_OTHER;
		if (ok && s->blk == BLK_TOOL) {
			ok = oa_tool_start(s, c, out, cb);
		} else if (ok && s->blk == BLK_TEXT && json_is_string(text) &&
			   json_string_length(text)) {
			json_t *d = json_object();
			put_ref(c, d, "content", (json_t *)text);
			ok = oa_send(s, c, out, d);
		}
	} else if (IS("content_block_delta")) {
		const json_t *d = get(j, "delta"), *idx = get(j, "index");
		const json_t *t = get(d, "type");
		json_t *text = get(d, "text"), *partial = get(d, "partial_json");
		if (json_is_integer(idx) && json_integer_value(idx) != s->blk_index) {
			rc = -1; /* a delta for a block that is not open */
		} else if (s->blk == BLK_TEXT && str_is(t, "text_delta") && json_is_string(text)) {
			json_t *od = json_object();
			put_ref(c, od, "content", text);
			ok = oa_send(s, c, out, od);
		} else if (s->blk == BLK_TOOL && str_is(t, "input_json_delta") &&
			   json_is_string(partial) && json_string_length(partial)) {
			ok = oa_tool_args(s, c, out, partial);
		}
	} else if (IS("content_block_stop")) {
		s->blk = BLK_NONE;
	} else if (IS("message_delta")) {
		const json_t *stop = get(get(j, "delta"), "stop_reason");
		stream_tally(s, get(j, "usage"));
		if (present(stop)) {
			s->reason = finish_from_stop(stop);
			ok = oa_open(s, c, out);
			s->finish_sent = true;
			ok = ok && sse_out(out, NULL, oa_chunk(s, c, json_object(), s->reason));
		}
	} else if (IS("message_stop")) {
		ok = oa_finish(s, c, out);
	} else if (IS("error")) {
		json_t *m, *code;
		read_error(j, &m, &code);
		int status = an_error_status(get(get(j, "error"), "type"));
		ok = sse_out(out, NULL, error_json(c, DIALECT_OPENAI, oa_error_type(status),
						   m ? m : json_string("the provider failed"), code));
		s->finished = true;
		ok = ok && sse_done(out);
	}
	/* other event types are new to us: dropped, as Anthropic asks of clients */
#undef IS
	json_decref(j);
	return ok && !c->oom ? rc : -1;
}

/* -- the same dialect on both sides: copied through -- */

/* data as one or more "data:" lines (the SSE parser joined multi-line data with LF; JSON
 * may hold CR or LF only as whitespace between tokens). */
static bool copy_event(struct buf *out, struct slice name, struct slice data)
{
	size_t mark = out->len;
	bool ok = true;
	if (name.n)
		ok = emit_raw(out, "event: ") && buf_append(out, name.p, name.n, XLAT_MAX_OUT) &&
		     emit_raw(out, "\n");
	const char *p = data.p, *end = data.p + data.n;
	while (ok) {
		const char *nl = p;
		while (nl < end && *nl != '\n' && *nl != '\r') /* CR ends an SSE line too */
			nl++;
		if (nl == end)
			nl = NULL;
		const char *eol = nl ? nl : end;
		ok = emit_raw(out, "data: ") && buf_append(out, p, (size_t)(eol - p), XLAT_MAX_OUT) &&
		     emit_raw(out, "\n");
		if (!nl)
			break;
		p = nl + 1;
	}
	ok = ok && emit_raw(out, "\n");
	if (!ok)
		out->len = mark;
	return ok;
}

static int same_event(struct xlat_stream *s, struct slice name, struct slice data, struct buf *out)
{
	if (s->to == DIALECT_OPENAI) {
		static const char *const keys[] = { "choices", "usage" };
		struct slice v[2];
		if (slice_eq_cstr(data, "[DONE]")) {
			s->finished = true;
			return sse_done(out) ? 0 : -1;
		}
		if (json_scan_object(data, keys, v, 2))
			return -1;
		s->started = true;
		if (v[1].p && !slice_eq_cstr(v[1], "null")) {
			tally_scan(DIALECT_OPENAI, v[1], &s->tally);
			tally_usage(&s->tally, &s->usage);
			if (!s->wants_usage && v[0].p && is_empty_array(v[0]))
				return 0; /* the usage-only chunk the client did not ask for */
		}
		return copy_event(out, SLICE_LIT(""), data) ? 0 : -1;
	}
	static const char *const keys[] = { "type", "message", "usage", "index" };
	struct slice v[4], type;
	if (json_scan_object(data, keys, v, 4))
		return -1;
	if (!name.n && (!json_plain_string(v[0], &name) || !name.n)) /* no name, no event */
		return -1;
	if (memchr(name.p, '\n', name.n) || memchr(name.p, '\r', name.n))
		return -1; /* would break the client's SSE framing */
	type = name;
	if (slice_eq_cstr(type, "message_start")) {
		static const char *const mkeys[] = { "usage" };
		struct slice mv[1];
		if (v[1].p && json_scan_object(v[1], mkeys, mv, 1) == 0 && mv[0].p)
			tally_scan(DIALECT_ANTHROPIC, mv[0], &s->tally);
		s->started = true;
	} else if (slice_eq_cstr(type, "content_block_start")) {
		int64_t idx;
		s->blk = BLK_OTHER;
		s->blk_index = v[3].p && json_int(v[3], &idx) ? idx : s->blk_index + 1;
	} else if (slice_eq_cstr(type, "content_block_stop")) {
		s->blk = BLK_NONE;
	} else if (slice_eq_cstr(type, "message_delta")) {
		if (v[2].p)
			tally_scan(DIALECT_ANTHROPIC, v[2], &s->tally);
		s->finish_sent = true;
	} else if (slice_eq_cstr(type, "message_stop") || slice_eq_cstr(type, "error")) {
		s->finished = true;
	}
	tally_usage(&s->tally, &s->usage);
	return copy_event(out, type, data) ? 0 : -1;
}

/* -- fast paths: the usual events -- */

/* An OpenAI client's chunks up to their "choices": id, time and model are fixed once the
 * client has its opening event, which the fast path's events never come before. Made once. */
static bool chunk_head_ready(struct xlat_stream *s)
{
	struct head *h = &s->head;
	if (h->made)
		return h->ok;
	char num[24];
	snprintf(num, sizeof(num), "%lld", s->created);
	h->made = true;
	h->ok = emit_raw(&h->b, "data: {\"id\":") && put_cstring(&h->b, s->id) &&
		emit_raw(&h->b, ",\"object\":\"chat.completion.chunk\",\"created\":") &&
		emit_raw(&h->b, num) && emit_raw(&h->b, ",\"model\":") &&
		put_cstring(&h->b, s->model) && emit_raw(&h->b, ",\"choices\":");
	return h->ok;
}

static char *put_head(const struct xlat_stream *s, char *p)
{
	memcpy(p, s->head.b.p, s->head.b.len);
	return p + s->head.b.len;
}

/* Where n more bytes of fast output go (after the chunk head, with head), or NULL near the
 * output bound: then the fast path declines, before it changed anything, and the full path
 * decides. */
static char *fast_room(struct xlat_stream *s, struct buf *out, size_t n, bool head)
{
	if (head && !chunk_head_ready(s))
		return NULL;
	if (!buf_reserve(out, n + (head ? s->head.b.len : 0), XLAT_MAX_OUT))
		return NULL;
	char *p = out->p + out->len;
	return head ? put_head(s, p) : p;
}

static char *cat(char *dst, const char *s)
{
	size_t n = strlen(s);
	memcpy(dst, s, n);
	return dst + n;
}

__attribute__((format(printf, 2, 3))) static char *catf(char *dst, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsprintf(dst, fmt, ap);
	va_end(ap);
	return dst + n;
}

/* What follows is the layout an_delta, an_start_block, an_close_block, an_finish, oa_chunk,
 * oa_finish and usage_json write, as jansson dumps it: test_translate and fuzz_translate
 * compare the two, byte for byte. */

/* An Anthropic event's name line and the start of its data, up to its type's closing quote.
 * type is a literal: the whole head is one copy. */
#define an_event(p, type) cat((p), "event: " type "\ndata: {\"type\":\"" type)

/* A number as %lld writes it, without the format parse (once per event). */
static char *cat_i64(char *dst, int64_t v) { return dst + fmt_i64(dst, v); }

static char *an_block_stop(char *p, int64_t index)
{
	return cat(cat_i64(cat(an_event(p, "content_block_stop"), "\",\"index\":"), index),
		   "}\n\n");
}

/* The text of a delta whose JSON string value is text (quotes included), to either client. */
static char *put_text_delta(struct xlat_stream *s, char *p, struct slice text)
{
	struct slice body = { text.p + 1, text.n - 2 };
	if (s->to == DIALECT_OPENAI) {
		p = put_string(cat(p, "[{\"index\":0,\"delta\":{\"content\":\""), body);
		return cat(p, "\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n");
	}
	p = cat_i64(cat(an_event(p, "content_block_delta"), "\",\"index\":"), s->blk_index);
	p = cat(p, ",\"delta\":{\"type\":\"text_delta\",\"text\":\"");
	return cat(put_string(p, body), "\"}}\n\n");
}

/* Room for the fixed parts of the events one upstream event becomes, with its text. */
#define FAST_ROOM 1024

/* OpenAI client: the finish_reason chunk (message_delta, oa_finish), then at the end the
 * usage chunk if asked for, and [DONE]. */
static bool oa_fast_end(struct xlat_stream *s, const char *finish, bool end, struct buf *out)
{
	bool usage = end && s->wants_usage;
	char *p = chunk_head_ready(s) ? fast_room(s, out, s->head.b.len + FAST_ROOM, false) : NULL;
	if (!p)
		return false;
	if (finish) {
		p = put_head(s, p);
		p = cat(p, "[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"");
		p = cat(cat(p, finish), "\"}]}\n\n");
	}
	if (usage) {
		const struct tally *t = &s->tally;
		uint64_t prompt = t->input + t->cache_read + t->cache_write;
		p = put_head(s, p);
		p = catf(p, "[],\"usage\":{\"prompt_tokens\":%lld,\"completion_tokens\":%lld,"
			 "\"total_tokens\":%lld,\"prompt_tokens_details\":{\"cached_tokens\":%lld}}}"
			 "\n\n", (long long)prompt, (long long)t->output,
			 (long long)(prompt + t->output), (long long)t->cache_read);
	}
	if (end)
		p = cat(p, "data: [DONE]\n\n");
	out->len = (size_t)(p - out->p);
	if (finish)
		s->finish_sent = true;
	if (end)
		s->finished = true;
	return true;
}

/* Anthropic client, [DONE]: an_finish past the opening event. */
static bool an_fast_end(struct xlat_stream *s, struct buf *out)
{
	const struct tally *t = &s->tally;
	char *p = fast_room(s, out, FAST_ROOM, false);
	if (!p)
		return false;
	if (s->blk != BLK_NONE)
		p = an_block_stop(p, s->blk_index);
	/* finish_sent: only an_finish sets it for an Anthropic client, and finishes the stream */
	p = catf(an_event(p, "message_delta"), "\",\"delta\":{\"stop_reason\":\"%s\","
		 "\"stop_sequence\":null},\"usage\":{\"input_tokens\":%lld,"
		 "\"output_tokens\":%lld,\"cache_read_input_tokens\":%lld,"
		 "\"cache_creation_input_tokens\":%lld}}\n\n",
		 s->reason ? s->reason : "end_turn", (long long)t->input,
		 (long long)t->output, (long long)t->cache_read, (long long)t->cache_write);
	p = cat(an_event(p, "message_stop"), "\"}\n\n");
	out->len = (size_t)(p - out->p);
	s->blk = BLK_NONE;
	s->finish_sent = true;
	s->finished = true;
	return true;
}

/* Anthropic client: message_start (an_open) with the model and the usage so far. */
static char *an_fast_open(char *p, const char *id, const char *model, const struct tally *t)
{
	p = cat(cat(cat(an_event(p, "message_start"), "\",\"message\":{\"id\":\""), id),
		"\",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
	p = put_cstr(p, model, strlen(model));
	if (!p)
		return NULL;
	return catf(p, ",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":"
		    "{\"input_tokens\":%lld,\"output_tokens\":%lld,\"cache_read_input_tokens\":%lld,"
		    "\"cache_creation_input_tokens\":%lld}}}\n\n", (long long)t->input,
		    (long long)t->output, (long long)t->cache_read, (long long)t->cache_write);
}

/* An OpenAI chunk for an Anthropic client: the opening event for the first, choice 0's text,
 * its finish_reason, the usage chunk and [DONE], as oa_to_an_event handles them. */
static bool oa_to_an_fast(struct xlat_stream *s, struct slice data, struct buf *out)
{
	static const char *const keys[] = { "choices", "error", "usage", "id" };
	static const char *const ckeys[] = { "index", "delta", "finish_reason" };
	static const char *const dkeys[] = { "content", "refusal", "tool_calls" };
	struct slice v[4], cv[3] = { 0 }, dv[3] = { 0 }, choice, more, text = { 0 };
	struct json_iter it;
	char id[ID_MAX];
	if (slice_eq_cstr(data, "[DONE]"))
		return s->started && an_fast_end(s, out);
	if (!json_sure(data, keys, v, 4) || (v[1].p && !is_null(v[1])))
		return false;
	/* choices: none, or choice 0 alone; a delta or choice that is not an object is none */
	if (json_array_begin(&it, v[0]) && json_array_next(&it, &choice) == 1) {
		if (json_array_next(&it, &more) != 0)
			return false;
		json_scan_object(choice, ckeys, cv, 3);
		json_scan_object(cv[1], dkeys, dv, 3);
	}
	if ((cv[0].p && !slice_eq_cstr(cv[0], "0")) ||
	    (dv[2].p && dv[2].p[0] == '[' && !is_empty_array(dv[2])))
		return false;
	if (is_string(dv[0]) && dv[0].n > 2)
		text = dv[0];
	else if (is_string(dv[1]) && dv[1].n > 2)
		text = dv[1];
	const char *stop = NULL;
	if (is_string(cv[2])) {
		if (has_escape(cv[2]))
			return false;
		stop = raw_is(cv[2], "length") ? "max_tokens"
		       : raw_is(cv[2], "tool_calls") || raw_is(cv[2], "function_call") ? "tool_use"
		       : raw_is(cv[2], "content_filter") ? "refusal"
							 : "end_turn";
	}
	struct tally t = s->tally;
	if (v[2].p) /* null, as any usage that is not an object, counts nothing */
		tally_scan(DIALECT_OPENAI, v[2], &t);
	char *p = fast_room(s, out, text.n + 6 * strlen(s->model) + FAST_ROOM, false);
	if (!p || (!s->started && (!fast_id(id, v[3], "chatcmpl-", "msg_") ||
				   !(p = an_fast_open(p, id, s->model, &t)))))
		return false;
	if (!s->started) {
		memcpy(s->id, id, sizeof(id));
		s->started = true;
	}
	s->tally = t;
	tally_usage(&s->tally, &s->usage);
	if (text.p && s->blk != BLK_TEXT) {
		if (s->blk != BLK_NONE)
			p = an_block_stop(p, s->blk_index);
		s->blk = BLK_TEXT;
		s->blk_index++;
		p = catf(an_event(p, "content_block_start"), "\",\"index\":%lld,"
			 "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
			 (long long)s->blk_index);
	}
	if (text.p)
		p = put_text_delta(s, p, text);
	if (stop) {
		s->reason = stop;
		if (s->blk != BLK_NONE)
			p = an_block_stop(p, s->blk_index);
		s->blk = BLK_NONE;
	}
	out->len = (size_t)(p - out->p);
	return true;
}

/* OpenAI client, message_start: the id and usage, and the opening chunk (oa_open). */
static bool oa_fast_open(struct xlat_stream *s, struct slice msg, struct buf *out)
{
	static const char *const mkeys[] = { "id", "usage" };
	struct slice mv[2];
	char *p;
	json_scan_object(msg, mkeys, mv, 2); /* a message that is not an object has neither */
	if (!s->started) {
		/* the chunk head is made with the id: undone if the fast path declines (the full
		 * path then makes the id again) */
		if (!fast_id(s->id, mv[0], "msg_", "chatcmpl-") ||
		    !(p = fast_room(s, out, FAST_ROOM, true))) {
			s->head.made = false;
			s->head.b.len = 0;
			return false;
		}
		p = cat(p, "[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
			   "\"logprobs\":null,\"finish_reason\":null}]}\n\n");
		out->len = (size_t)(p - out->p);
		s->started = true;
	}
	if (mv[1].p)
		tally_scan(DIALECT_ANTHROPIC, mv[1], &s->tally);
	tally_usage(&s->tally, &s->usage);
	return true;
}

/* An Anthropic event for an OpenAI client: message_start, text deltas of the open text block,
 * the events that write nothing (ping, a text block's start and stop), and the end
 * (message_delta, message_stop); as an_to_oa_event handles them. */
static bool an_to_oa_fast(struct xlat_stream *s, struct slice data, struct buf *out)
{
	static const char *const keys[] = { "type", "index", "delta",
					    "content_block", "usage", "message" };
	static const char *const dkeys[] = { "type", "text", "stop_reason" };
	struct slice v[6], dv[3];
	int64_t idx;
	if (!json_sure(data, keys, v, 6))
		return false;
	if (raw_is(v[0], "message_start"))
		return oa_fast_open(s, v[5], out);
	if (!s->started)
		return false;
	if (raw_is(v[0], "content_block_delta")) {
		char *p;
		if (s->blk != BLK_TEXT || !v[1].p || !json_int(v[1], &idx) || idx != s->blk_index ||
		    json_scan_object(v[2], dkeys, dv, 3) || !raw_is(dv[0], "text_delta") ||
		    !is_string(dv[1]) || !(p = fast_room(s, out, dv[1].n + FAST_ROOM, true)))
			return false;
		out->len = (size_t)(put_text_delta(s, p, dv[1]) - out->p);
		return true;
	}
	if (raw_is(v[0], "ping"))
		return true;
	if (raw_is(v[0], "content_block_stop")) {
		s->blk = BLK_NONE;
		return true;
	}
	if (raw_is(v[0], "content_block_start")) {
		/* a text block with no text yet, or a block of a kind an OpenAI client never sees */
		if (json_scan_object(v[3], dkeys, dv, 2) || !is_string(dv[0]) || has_escape(dv[0]) ||
		    raw_is(dv[0], "tool_use") || (raw_is(dv[0], "text") && is_string(dv[1]) &&
						  dv[1].n > 2))
			return false;
		s->blk_index = v[1].p && json_int(v[1], &idx) ? idx : s->blk_index + 1;
		s->blk = raw_is(dv[0], "text") ? BLK_TEXT : BLK_OTHER;
		return true;
	}
	bool end = raw_is(v[0], "message_stop");
	if (end || raw_is(v[0], "message_delta")) {
		const char *finish = NULL;
		if (end) {
			if (!s->finish_sent)
				finish = s->reason ? s->reason : "stop";
		} else if (!json_scan_object(v[2], dkeys, dv, 3) && dv[2].p && !is_null(dv[2])) {
			if (is_string(dv[2]) && has_escape(dv[2]))
				return false;
			finish = raw_is(dv[2], "max_tokens") ||
						 raw_is(dv[2], "model_context_window_exceeded")
					 ? "length"
				 : raw_is(dv[2], "tool_use") ? "tool_calls"
				 : raw_is(dv[2], "refusal") ? "content_filter"
							    : "stop";
		}
		struct tally before = s->tally;
		if (!end && v[4].p)
			tally_scan(DIALECT_ANTHROPIC, v[4], &s->tally);
		if ((finish || end) && !oa_fast_end(s, finish, end, out)) {
			s->tally = before;
			return false;
		}
		if (finish && !end)
			s->reason = finish;
		tally_usage(&s->tally, &s->usage);
		return true;
	}
	return false;
}

int xlat_stream_event(struct xlat_stream *s, struct slice event, struct slice data, struct buf *out)
{
	if (s->finished)
		return 0; /* the client's stream is closed: anything after is ignored */
	struct cx c = { NULL, 0, false };
	size_t mark = out->len;
	int rc;
	if (s->from == s->to)
		rc = same_event(s, event, data, out);
	else if (fast_on && (s->from == DIALECT_OPENAI ? oa_to_an_fast(s, data, out)
						      : an_to_oa_fast(s, data, out)))
		rc = 0;
	else if (s->from == DIALECT_OPENAI)
		rc = oa_to_an_event(s, &c, data, out);
	else
		rc = an_to_oa_event(s, &c, event, data, out);
	if (rc)
		out->len = mark; /* the caller ends the stream with xlat_stream_error */
	return rc;
}

void xlat_stream_end(struct xlat_stream *s, struct buf *out)
{
	struct cx c = { NULL, 0, false };
	if (s->finished)
		return;
	if (s->from == s->to && s->to == DIALECT_OPENAI) {
		s->finished = true;
		sse_done(out);
		return;
	}
	if (s->to == DIALECT_OPENAI)
		oa_finish(s, &c, out);
	else
		an_finish(s, &c, out);
	s->finished = true;
}

void xlat_stream_error(struct xlat_stream *s, enum xlat_err_kind kind, const char *message,
		       struct buf *out)
{
	struct cx c = { NULL, 0, false };
	if (s->finished)
		return;
	s->finished = true;
	json_t *body = gateway_error(&c, s->to, kind, 0, NULL, message);
	if (s->to == DIALECT_OPENAI) {
		sse_out(out, NULL, body);
		sse_done(out); /* even when the error did not fit: the client sees an end */
		return;
	}
	sse_out(out, "error", body);
}
