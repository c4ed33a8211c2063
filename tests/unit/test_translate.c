/* test_translate.c - OpenAI <-> Anthropic translation against golden JSON: requests,
 * responses, streams, errors and refusals. Outputs and expectations are both parsed and
 * compared with json_equal, so key order does not matter. In the JSON written here a
 * single quote stands for a double quote (Q() swaps them), to keep the cases readable. */
#include <dlfcn.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "providers/translate.h"

#define OA DIALECT_OPENAI
#define AN DIALECT_ANTHROPIC

/* ---- helpers ---- */

static char *owned[16384];
static size_t nowned;

static char *keep(char *p)
{
	assert_true(nowned < sizeof(owned) / sizeof(owned[0]));
	owned[nowned++] = p;
	return p;
}

static int release(void **state)
{
	while (nowned)
		free(owned[--nowned]);
	return 0;
}

/* s with ' turned into " (freed after the test). */
static const char *Q(const char *s)
{
	char *p = keep(strdup(s));
	for (char *c = p; *c; c++)
		if (*c == '\'')
			*c = '"';
	return p;
}

static json_t *parse(const char *text, size_t n)
{
	json_error_t e;
	json_t *j = json_loadb(text, n, JSON_ALLOW_NUL, &e);
	if (!j)
		fail_msg("not JSON (%s): %.*s", e.text, (int)n, text);
	return j;
}

/* Fields that depend on the clock are not part of a golden comparison. */
static void drop_clock(json_t *j)
{
	json_object_del(j, "created");
}

static void expect_json(const char *got, size_t n, const char *want_q)
{
	json_t *g = parse(got, n), *w = parse(Q(want_q), strlen(want_q));
	drop_clock(g);
	drop_clock(w);
	if (!json_equal(g, w)) {
		char *gs = json_dumps(g, JSON_COMPACT | JSON_SORT_KEYS);
		char *ws = json_dumps(w, JSON_COMPACT | JSON_SORT_KEYS);
		print_error("got:  %s\nwant: %s\n", gs, ws);
		free(gs);
		free(ws);
		json_decref(g);
		json_decref(w);
		fail();
	}
	json_decref(g);
	json_decref(w);
}

static const struct xlat_request_opts opts = { "upstream-m", 1000, false };

static void expect_request(enum dialect from, enum dialect to, const struct xlat_request_opts *o,
			   const char *in_q, const char *want_q)
{
	struct buf out = { 0 };
	char err[256] = "";
	int rc = xlat_request(from, to, slice_cstr(Q(in_q)), o, &out, err, sizeof(err));
	if (rc)
		fail_msg("xlat_request failed: %s", err);
	expect_json(out.p, out.len, want_q);
	buf_free(&out);
}

/* The request is refused, with a message containing `about`. */
static void expect_refused(enum dialect from, enum dialect to, const char *in_q, const char *about)
{
	struct buf out = { 0 };
	char err[256] = "";
	int rc = xlat_request(from, to, slice_cstr(Q(in_q)), &opts, &out, err, sizeof(err));
	if (rc != -1 || !strstr(err, about))
		fail_msg("expected a refusal about \"%s\", got rc %d \"%s\" for %s", about, rc, err,
			 in_q);
	assert_int_equal(out.len, 0);
	buf_free(&out);
}

static void expect_response(enum dialect from, enum dialect to, const char *in_q, const char *want_q,
			    struct usage *u)
{
	struct buf out = { 0 };
	assert_int_equal(xlat_response(from, to, slice_cstr(Q(in_q)), "client-m", &out, u), 0);
	expect_json(out.p, out.len, want_q);
	buf_free(&out);
}

/* ---- requests: OpenAI -> Anthropic ---- */

static void test_oa_request_basic(void **state)
{
	expect_request(OA, AN, &opts,
		"{'model':'gpt-4o','messages':["
		" {'role':'system','content':'Be brief.'},"
		" {'role':'developer','content':[{'type':'text','text':'Cite sources.'}]},"
		" {'role':'user','content':'Hi \\u00e9\\n\\u0001 \\ud83d\\ude00'}],"
		" 'temperature':1.5,'top_p':0.5,'stop':'END','stream':true,'user':'u-42',"
		" 'frequency_penalty':1,'presence_penalty':1,'seed':7,'logit_bias':{'1':2},"
		" 'store':true,'service_tier':'auto','stream_options':{'include_usage':true},"
		" 'metadata':{'a':'b'},'n':1,'logprobs':false,'prediction':{'type':'content'},"
		" 'reasoning_effort':'low','response_format':{'type':'text'},'something_new':1}",
		"{'model':'upstream-m','max_tokens':1000,'system':'Be brief.\\n\\nCite sources.',"
		" 'messages':[{'role':'user','content':[{'type':'text',"
		"   'text':'Hi \\u00e9\\n\\u0001 \\ud83d\\ude00'}]}],"
		" 'temperature':1.0,'top_p':0.5,'stop_sequences':['END'],'stream':true,"
		" 'metadata':{'user_id':'u-42'}}");
}

static void test_oa_request_max_tokens(void **state)
{
	const struct xlat_request_opts no_default = { "m", 0, false };
	/* no max_tokens and no default: 4096 */
	expect_request(OA, AN, &no_default, "{'messages':[{'role':'user','content':'x'}]}",
		"{'model':'m','max_tokens':4096,"
		" 'messages':[{'role':'user','content':[{'type':'text','text':'x'}]}]}");
	/* max_completion_tokens wins over max_tokens; temperature below 0 clamps to 0 */
	expect_request(OA, AN, &no_default,
		"{'messages':[{'role':'user','content':'x'}],'max_tokens':5,"
		" 'max_completion_tokens':9,'temperature':-1,'stop':['a','b']}",
		"{'model':'m','max_tokens':9,'temperature':0.0,'stop_sequences':['a','b'],"
		" 'messages':[{'role':'user','content':[{'type':'text','text':'x'}]}]}");
	/* without upstream_model the body's model stays */
	const struct xlat_request_opts keep_model = { NULL, 10, false };
	expect_request(OA, AN, &keep_model,
		"{'model':'gpt','messages':[{'role':'user','content':'x'}],'max_tokens':3}",
		"{'model':'gpt','max_tokens':3,"
		" 'messages':[{'role':'user','content':[{'type':'text','text':'x'}]}]}");
}

static void test_oa_request_parts(void **state)
{
	expect_request(OA, AN, &opts,
		"{'messages':[{'role':'user','content':["
		" {'type':'text','text':'look'},{'type':'text','text':''},"
		" {'type':'image_url','image_url':{'url':'data:image/png;base64,iVBORw0K','detail':'low'}},"
		" {'type':'image_url','image_url':{'url':'https://x.test/a.jpg'}}]}]}",
		"{'model':'upstream-m','max_tokens':1000,'messages':[{'role':'user','content':["
		" {'type':'text','text':'look'},"
		" {'type':'image','source':{'type':'base64','media_type':'image/png','data':'iVBORw0K'}},"
		" {'type':'image','source':{'type':'url','url':'https://x.test/a.jpg'}}]}]}");
}

static void test_oa_request_tools(void **state)
{
	static const char *const tools =
		"'tools':[{'type':'function','function':{'name':'get_weather','description':'Weather',"
		" 'parameters':{'type':'object','properties':{'city':{'type':'string'}}},'strict':true}},"
		" {'type':'function','function':{'name':'now'}}]";
	static const char *const tools_an =
		"'tools':[{'name':'get_weather','description':'Weather',"
		" 'input_schema':{'type':'object','properties':{'city':{'type':'string'}}}},"
		" {'name':'now','input_schema':{'type':'object','properties':{}}}]";
	static const struct {
		const char *oa, *an;
	} choices[] = {
		{ "", "" },
		{ ",'tool_choice':'auto'", ",'tool_choice':{'type':'auto'}" },
		{ ",'tool_choice':'none'", ",'tool_choice':{'type':'none'}" },
		{ ",'tool_choice':'required'", ",'tool_choice':{'type':'any'}" },
		{ ",'tool_choice':{'type':'function','function':{'name':'now'}}",
		  ",'tool_choice':{'type':'tool','name':'now'}" },
		{ ",'parallel_tool_calls':false",
		  ",'tool_choice':{'type':'auto','disable_parallel_tool_use':true}" },
		{ ",'tool_choice':'required','parallel_tool_calls':false",
		  ",'tool_choice':{'type':'any','disable_parallel_tool_use':true}" },
		{ ",'parallel_tool_calls':true", "" },
	};
	for (size_t i = 0; i < sizeof(choices) / sizeof(choices[0]); i++) {
		char in[2048], want[2048];
		snprintf(in, sizeof(in), "{'messages':[{'role':'user','content':'x'}],%s%s}", tools,
			 choices[i].oa);
		snprintf(want, sizeof(want),
			 "{'model':'upstream-m','max_tokens':1000,"
			 " 'messages':[{'role':'user','content':[{'type':'text','text':'x'}]}],%s%s}",
			 tools_an, choices[i].an);
		expect_request(OA, AN, &opts, in, want);
	}
}

/* A tool loop: assistant text + two calls, two results, then the user again; consecutive
 * same-role messages merge and tool results lead their user message. */
static void test_oa_request_tool_loop(void **state)
{
	expect_request(OA, AN, &opts,
		"{'messages':[{'role':'user','content':'weather?'},{'role':'user','content':'now'},"
		" {'role':'assistant','content':'Checking.','tool_calls':["
		"  {'id':'call_1','type':'function','function':{'name':'get_weather','arguments':'{\\'city\\':\\'Oslo\\'}'}},"
		"  {'id':'call_2','type':'function','function':{'name':'now','arguments':''}}]},"
		" {'role':'tool','tool_call_id':'call_1','content':'rain'},"
		" {'role':'tool','tool_call_id':'call_2','content':[{'type':'text','text':'12:00'}]},"
		" {'role':'user','content':'thanks'},"
		" {'role':'assistant','content':null,'tool_calls':["
		"  {'id':'call_3','type':'function','function':{'name':'now','arguments':'{}'}}]},"
		" {'role':'user','content':'more'},"
		" {'role':'tool','tool_call_id':'call_3','content':''}]}",
		"{'model':'upstream-m','max_tokens':1000,'messages':["
		" {'role':'user','content':[{'type':'text','text':'weather?'},{'type':'text','text':'now'}]},"
		" {'role':'assistant','content':[{'type':'text','text':'Checking.'},"
		"  {'type':'tool_use','id':'call_1','name':'get_weather','input':{'city':'Oslo'}},"
		"  {'type':'tool_use','id':'call_2','name':'now','input':{}}]},"
		" {'role':'user','content':[{'type':'tool_result','tool_use_id':'call_1','content':'rain'},"
		"  {'type':'tool_result','tool_use_id':'call_2','content':[{'type':'text','text':'12:00'}]},"
		"  {'type':'text','text':'thanks'}]},"
		" {'role':'assistant','content':[{'type':'tool_use','id':'call_3','name':'now','input':{}}]},"
		" {'role':'user','content':[{'type':'tool_result','tool_use_id':'call_3'},"
		"  {'type':'text','text':'more'}]}]}");
}

static void test_oa_request_refused(void **state)
{
	static const struct {
		const char *body, *about;
	} cases[] = {
		{ "{'messages':[{'role':'user','content':'x'}],'n':2}", "n must be 1" },
		{ "{'messages':[{'role':'user','content':'x'}],'logprobs':true}", "logprobs" },
		{ "{'messages':[{'role':'user','content':'x'}],'audio':{'voice':'x'}}", "audio" },
		{ "{'messages':[{'role':'user','content':'x'}],'modalities':['text','audio']}",
		  "modalities" },
		{ "{'messages':[{'role':'user','content':'x'}],'response_format':{'type':'json_object'}}",
		  "response_format 'json_object'" },
		{ "{'messages':[{'role':'user','content':'x'}],'functions':[]}", "use tools" },
		{ "{'messages':[{'role':'user','content':[{'type':'input_audio','input_audio':{}}]}]}",
		  "messages[0].content[0]: content parts of type 'input_audio'" },
		{ "{'messages':[{'role':'user','content':[{'type':'file','file':{}}]}]}", "'file'" },
		{ "{'messages':[{'role':'user','content':[{'type':'image_url','image_url':{'url':'ftp://a/b'}}]}]}",
		  "data: or http(s)" },
		{ "{'messages':[{'role':'user','content':[{'type':'image_url','image_url':{'url':'data:image/png,abc'}}]}]}",
		  "must be base64" },
		{ "{'messages':[{'role':'user','content':'x'},{'role':'assistant','tool_calls':"
		  "[{'id':'c','type':'function','function':{'name':'f','arguments':'[1]'}}]}]}",
		  "messages[1].tool_calls[0].function.arguments is not a JSON object" },
		{ "{'messages':[{'role':'user','content':'x'},{'role':'assistant','tool_calls':"
		  "[{'id':'c','type':'function','function':{'name':'f','arguments':'{bad'}}]}]}",
		  "is not a JSON object" },
		{ "{'messages':[{'role':'assistant','content':'hello'}]}", "first message" },
		{ "{'messages':[{'role':'system','content':'only'}]}", "at least one user" },
		{ "{'messages':[{'role':'wizard','content':'x'}]}", "'wizard' is not supported" },
		{ "{'messages':[{'role':'tool','content':'x'}]}", "tool_call_id" },
		{ "{'messages':[{'role':'user','content':'x'}],'tools':[{'type':'custom','custom':{}}]}",
		  "only function tools" },
		{ "{'messages':[{'role':'user','content':'x'}],'tools':[{'type':'function',"
		  "'function':{'name':'f'}}],'tool_choice':'sometimes'}", "tool_choice" },
		{ "{'messages':[{'role':'user','content':'x'}],'max_tokens':0}", "max_tokens" },
		{ "{'messages':[{'role':'user','content':'x'}],'temperature':'hot'}", "temperature" },
		{ "{'messages':[{'role':'user','content':'x'}],'stop':[1]}", "stop" },
		{ "{'messages':'x'}", "messages must be an array" },
		{ "[1,2]", "must be a JSON object" },
		{ "{'messages':[", "not valid JSON" },
		{ "", "not valid JSON" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		expect_refused(OA, AN, cases[i].body, Q(cases[i].about));
}

/* NUL, quotes, backslashes and control characters survive as escapes. */
static void test_escaping(void **state)
{
	const char *in = "{\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000b\\\"c\\\\d\\te\"}]}";
	struct buf out = { 0 };
	char err[128];
	assert_int_equal(xlat_request(OA, AN, slice_cstr(in), &opts, &out, err, sizeof(err)), 0);
	assert_true(buf_append(&out, "", 1, SIZE_MAX));
	assert_non_null(strstr(out.p, "\"text\":\"a\\u0000b\\\"c\\\\d\\te\""));
	buf_free(&out);
}

/* The same dialect on both sides (the pipeline's own paths do not need it, but it holds):
 * the body is kept, with the model names swapped. */
static void test_same_dialect_bodies(void **state)
{
	expect_request(AN, AN, &opts, "{'model':'c','max_tokens':1,'x':[1]}",
		       "{'model':'upstream-m','max_tokens':1,'x':[1]}");
	struct usage u;
	expect_response(OA, OA, "{'id':'i','model':'gpt-up','usage':{'prompt_tokens':2}}",
			"{'id':'i','model':'client-m','usage':{'prompt_tokens':2}}", &u);
	assert_int_equal(u.prompt_tokens, 2);
}

/* ---- requests: Anthropic -> OpenAI ---- */

static void test_an_request_basic(void **state)
{
	const struct xlat_request_opts usage_opts = { "gpt-up", 0, true };
	expect_request(AN, OA, &usage_opts,
		"{'model':'claude','max_tokens':256,'system':'Be brief.',"
		" 'messages':[{'role':'user','content':'Hi'}],'stop_sequences':['END'],"
		" 'temperature':0.5,'top_p':0.9,'top_k':40,'metadata':{'user_id':'u-1'},'stream':true,"
		" 'thinking':{'type':'enabled','budget_tokens':1024},'service_tier':'auto','new_field':1}",
		"{'model':'gpt-up','messages':[{'role':'system','content':'Be brief.'},"
		" {'role':'user','content':'Hi'}],'max_tokens':256,'stop':['END'],'temperature':0.5,"
		" 'top_p':0.9,'user':'u-1','stream':true,'stream_options':{'include_usage':true}}");
	/* stream_usage off: no stream_options; stream false stays absent */
	expect_request(AN, OA, &opts,
		"{'model':'c','max_tokens':1,'messages':[{'role':'user','content':'Hi'}],'stream':true}",
		"{'model':'upstream-m','max_tokens':1,'messages':[{'role':'user','content':'Hi'}],"
		" 'stream':true}");
}

static void test_an_request_blocks(void **state)
{
	expect_request(AN, OA, &opts,
		"{'max_tokens':10,'system':[{'type':'text','text':'A','cache_control':{'type':'ephemeral'}},"
		"  {'type':'text','text':'B'}],'messages':["
		" {'role':'user','content':[{'type':'text','text':'one'},{'type':'text','text':'two'}]},"
		" {'role':'assistant','content':[{'type':'thinking','thinking':'hmm','signature':'s'},"
		"  {'type':'text','text':'Let me look.'},"
		"  {'type':'tool_use','id':'toolu_1','name':'get_weather','input':{'city':'Oslo','n':[1,2]}},"
		"  {'type':'tool_use','id':'toolu_2','name':'now','input':{}}]},"
		" {'role':'user','content':[{'type':'tool_result','tool_use_id':'toolu_1','content':'rain'},"
		"  {'type':'tool_result','tool_use_id':'toolu_2','is_error':true,"
		"   'content':[{'type':'text','text':'clock'},{'type':'text','text':'broken'}]},"
		"  {'type':'text','text':'and?'},"
		"  {'type':'image','source':{'type':'base64','media_type':'image/png','data':'AAAA'}},"
		"  {'type':'image','source':{'type':'url','url':'https://x.test/i.png'}}]},"
		" {'role':'assistant','content':[{'type':'tool_use','id':'toolu_3','name':'now','input':{}}]},"
		" {'role':'user','content':[{'type':'tool_result','tool_use_id':'toolu_3'}]},"
		" {'role':'assistant','content':[{'type':'redacted_thinking','data':'x'}]}]}",
		"{'model':'upstream-m','max_tokens':10,'messages':["
		" {'role':'system','content':'A\\n\\nB'},"
		" {'role':'user','content':'one\\n\\ntwo'},"
		" {'role':'assistant','content':'Let me look.','tool_calls':["
		"  {'id':'toolu_1','type':'function','function':{'name':'get_weather',"
		"   'arguments':'{\\'city\\':\\'Oslo\\',\\'n\\':[1,2]}'}},"
		"  {'id':'toolu_2','type':'function','function':{'name':'now','arguments':'{}'}}]},"
		" {'role':'tool','tool_call_id':'toolu_1','content':'rain'},"
		" {'role':'tool','tool_call_id':'toolu_2','content':'(tool error) clock\\n\\nbroken'},"
		" {'role':'user','content':[{'type':'text','text':'and?'},"
		"  {'type':'image_url','image_url':{'url':'data:image/png;base64,AAAA'}},"
		"  {'type':'image_url','image_url':{'url':'https://x.test/i.png'}}]},"
		" {'role':'assistant','content':null,'tool_calls':["
		"  {'id':'toolu_3','type':'function','function':{'name':'now','arguments':'{}'}}]},"
		" {'role':'tool','tool_call_id':'toolu_3','content':''}]}");
}

static void test_an_request_tools(void **state)
{
	static const struct {
		const char *an, *oa;
	} choices[] = {
		{ "", "" },
		{ ",'tool_choice':{'type':'auto'}", ",'tool_choice':'auto'" },
		{ ",'tool_choice':{'type':'any'}", ",'tool_choice':'required'" },
		{ ",'tool_choice':{'type':'none'}", ",'tool_choice':'none'" },
		{ ",'tool_choice':{'type':'tool','name':'f'}",
		  ",'tool_choice':{'type':'function','function':{'name':'f'}}" },
		{ ",'tool_choice':{'type':'auto','disable_parallel_tool_use':true}",
		  ",'tool_choice':'auto','parallel_tool_calls':false" },
	};
	for (size_t i = 0; i < sizeof(choices) / sizeof(choices[0]); i++) {
		char in[1024], want[1024];
		snprintf(in, sizeof(in),
			 "{'max_tokens':5,'messages':[{'role':'user','content':'x'}],'tools':["
			 "{'name':'f','description':'F','input_schema':{'type':'object'},"
			 "'cache_control':{'type':'ephemeral'}},{'type':'custom','name':'g'}]%s}",
			 choices[i].an);
		snprintf(want, sizeof(want),
			 "{'model':'upstream-m','max_tokens':5,'messages':[{'role':'user','content':'x'}],"
			 "'tools':[{'type':'function','function':{'name':'f','description':'F',"
			 "'parameters':{'type':'object'}}},{'type':'function','function':{'name':'g'}}]%s}",
			 choices[i].oa);
		expect_request(AN, OA, &opts, in, want);
	}
}

static void test_an_request_refused(void **state)
{
	static const struct {
		const char *body, *about;
	} cases[] = {
		{ "{'messages':[{'role':'user','content':[{'type':'document','source':{}}]}]}",
		  "blocks of type 'document'" },
		{ "{'messages':[{'role':'user','content':[{'type':'image','source':{'type':'file','file_id':'f'}}]}]}",
		  "image sources of type 'file'" },
		{ "{'messages':[{'role':'user','content':[{'type':'tool_result','tool_use_id':'t',"
		  "'content':[{'type':'image','source':{}}]}]}]}", "only text blocks" },
		{ "{'messages':[{'role':'user','content':'x'}],'tools':[{'type':'web_search_20250305','name':'web_search'}]}",
		  "server tool 'web_search_20250305'" },
		{ "{'messages':[{'role':'user','content':'x'}],'mcp_servers':[{}]}", "mcp_servers" },
		{ "{'messages':[{'role':'system','content':'x'}]}", "must be 'user' or" },
		{ "{'messages':[{'role':'user','content':'x'}],'system':[{'type':'image'}]}", "system" },
		{ "{'messages':[{'role':'user','content':'x'}],'max_tokens':-1}", "max_tokens" },
		{ "{'messages':[]}", "must not be empty" },
		{ "{'messages':{}}", "messages must be an array" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		expect_refused(AN, OA, cases[i].body, Q(cases[i].about));
}

/* OpenAI -> Anthropic -> OpenAI keeps the meaning (not every spelling: one system message,
 * tool_choice and the default max_tokens are explicit afterwards). */
static void test_request_round_trip(void **state)
{
	const char *in = Q(
		"{'model':'gpt','max_tokens':300,'temperature':0.25,'stop':['x','y'],'stream':true,"
		" 'user':'u','messages':[{'role':'system','content':'S'},"
		" {'role':'user','content':[{'type':'text','text':'hi'},"
		"  {'type':'image_url','image_url':{'url':'data:image/jpeg;base64,/9j/'}}]},"
		" {'role':'assistant','content':'ok','tool_calls':[{'id':'call_9','type':'function',"
		"  'function':{'name':'f','arguments':'{\\'a\\':1}'}}]},"
		" {'role':'tool','tool_call_id':'call_9','content':'done'},"
		" {'role':'user','content':'next'}],"
		" 'tools':[{'type':'function','function':{'name':'f','parameters':{'type':'object'}}}],"
		" 'tool_choice':'required'}");
	struct buf mid = { 0 }, back = { 0 };
	char err[256] = "";
	const struct xlat_request_opts to_an = { "claude", 0, false }, to_oa = { "gpt", 0, false };
	assert_int_equal(xlat_request(OA, AN, slice_cstr(in), &to_an, &mid, err, sizeof(err)), 0);
	assert_int_equal(xlat_request(AN, OA, slice_of(mid.p, mid.len), &to_oa, &back, err,
				      sizeof(err)), 0);
	expect_json(back.p, back.len,
		"{'model':'gpt','max_tokens':300,'temperature':0.25,'stop':['x','y'],'stream':true,"
		" 'user':'u','messages':[{'role':'system','content':'S'},"
		" {'role':'user','content':[{'type':'text','text':'hi'},"
		"  {'type':'image_url','image_url':{'url':'data:image/jpeg;base64,/9j/'}}]},"
		" {'role':'assistant','content':'ok','tool_calls':[{'id':'call_9','type':'function',"
		"  'function':{'name':'f','arguments':'{\\'a\\':1}'}}]},"
		" {'role':'tool','tool_call_id':'call_9','content':'done'},"
		" {'role':'user','content':'next'}],"
		" 'tools':[{'type':'function','function':{'name':'f','parameters':{'type':'object'}}}],"
		" 'tool_choice':'required'}");
	buf_free(&mid);
	buf_free(&back);
}

/* ---- responses ---- */

static void test_oa_response(void **state)
{
	struct usage u;
	expect_response(OA, AN,
		"{'id':'chatcmpl-abc','object':'chat.completion','created':1,'model':'gpt-4o-2024',"
		" 'choices':[{'index':0,'message':{'role':'assistant','content':'Sure.','refusal':null,"
		"  'tool_calls':[{'id':'call_1','type':'function','function':{'name':'f','arguments':'{\\'a\\':[1]}'}}]},"
		"  'finish_reason':'tool_calls','logprobs':null}],"
		" 'usage':{'prompt_tokens':100,'completion_tokens':20,'total_tokens':120,"
		"  'prompt_tokens_details':{'cached_tokens':60}},'system_fingerprint':'fp'}",
		"{'id':'msg_abc','type':'message','role':'assistant','model':'client-m',"
		" 'content':[{'type':'text','text':'Sure.'},"
		"  {'type':'tool_use','id':'call_1','name':'f','input':{'a':[1]}}],"
		" 'stop_reason':'tool_use','stop_sequence':null,"
		" 'usage':{'input_tokens':40,'output_tokens':20,'cache_read_input_tokens':60,"
		"  'cache_creation_input_tokens':0}}", &u);
	assert_true(u.present);
	assert_int_equal(u.prompt_tokens, 100);
	assert_int_equal(u.completion_tokens, 20);
	assert_int_equal(u.cached_tokens, 60);
}

static void test_an_response(void **state)
{
	struct usage u;
	expect_response(AN, OA,
		"{'id':'msg_01X','type':'message','role':'assistant','model':'claude-x',"
		" 'content':[{'type':'thinking','thinking':'t','signature':'s'},"
		"  {'type':'text','text':'Let me '},{'type':'text','text':'check.'},"
		"  {'type':'tool_use','id':'toolu_1','name':'f','input':{'q':'\\u00fc\\n'}}],"
		" 'stop_reason':'tool_use','stop_sequence':null,"
		" 'usage':{'input_tokens':10,'output_tokens':5,'cache_read_input_tokens':30,"
		"  'cache_creation_input_tokens':2}}",
		"{'id':'chatcmpl-01X','object':'chat.completion','model':'client-m',"
		" 'choices':[{'index':0,'message':{'role':'assistant','content':'Let me check.',"
		"  'refusal':null,'tool_calls':[{'id':'toolu_1','type':'function',"
		"  'function':{'name':'f','arguments':'{\\'q\\':\\'\\u00fc\\\\n\\'}'}}]},"
		"  'logprobs':null,'finish_reason':'tool_calls'}],"
		" 'usage':{'prompt_tokens':42,'completion_tokens':5,'total_tokens':47,"
		"  'prompt_tokens_details':{'cached_tokens':30}}}", &u);
	assert_int_equal(u.prompt_tokens, 42);
	assert_int_equal(u.completion_tokens, 5);
	assert_int_equal(u.cached_tokens, 30);
	/* only tool calls: content null */
	expect_response(AN, OA,
		"{'id':'msg_2','content':[{'type':'tool_use','id':'t','name':'f','input':{}}],"
		" 'stop_reason':'tool_use','usage':{'input_tokens':1,'output_tokens':1}}",
		"{'id':'chatcmpl-2','object':'chat.completion','model':'client-m',"
		" 'choices':[{'index':0,'message':{'role':'assistant','content':null,'refusal':null,"
		"  'tool_calls':[{'id':'t','type':'function','function':{'name':'f','arguments':'{}'}}]},"
		"  'logprobs':null,'finish_reason':'tool_calls'}],"
		" 'usage':{'prompt_tokens':1,'completion_tokens':1,'total_tokens':2,"
		"  'prompt_tokens_details':{'cached_tokens':0}}}", &u);
}

static void test_stop_reasons(void **state)
{
	static const struct {
		const char *finish, *stop;
	} oa_an[] = { { "stop", "end_turn" }, { "length", "max_tokens" },
		      { "tool_calls", "tool_use" }, { "content_filter", "refusal" } },
	  an_oa[] = { { "stop", "end_turn" }, { "stop", "stop_sequence" }, { "length", "max_tokens" },
		      { "tool_calls", "tool_use" }, { "content_filter", "refusal" },
		      { "stop", "pause_turn" } };
	char in[512], want[512];
	for (size_t i = 0; i < sizeof(oa_an) / sizeof(oa_an[0]); i++) {
		snprintf(in, sizeof(in), "{'id':'chatcmpl-1','choices':[{'index':0,'message':"
			 "{'role':'assistant','content':'a'},'finish_reason':'%s'}]}", oa_an[i].finish);
		snprintf(want, sizeof(want), "{'id':'msg_1','type':'message','role':'assistant',"
			 "'model':'client-m','content':[{'type':'text','text':'a'}],'stop_reason':'%s',"
			 "'stop_sequence':null,'usage':{'input_tokens':0,'output_tokens':0,"
			 "'cache_read_input_tokens':0,'cache_creation_input_tokens':0}}", oa_an[i].stop);
		expect_response(OA, AN, in, want, NULL);
	}
	for (size_t i = 0; i < sizeof(an_oa) / sizeof(an_oa[0]); i++) {
		snprintf(in, sizeof(in), "{'id':'msg_1','content':[{'type':'text','text':'a'}],"
			 "'stop_reason':'%s'}", an_oa[i].stop);
		snprintf(want, sizeof(want), "{'id':'chatcmpl-1','object':'chat.completion',"
			 "'model':'client-m','choices':[{'index':0,'message':{'role':'assistant',"
			 "'content':'a','refusal':null},'logprobs':null,'finish_reason':'%s'}],"
			 "'usage':{'prompt_tokens':0,'completion_tokens':0,'total_tokens':0,"
			 "'prompt_tokens_details':{'cached_tokens':0}}}", an_oa[i].finish);
		expect_response(AN, OA, in, want, NULL);
	}
}

static void test_bad_responses(void **state)
{
	static const char *const bodies[] = {
		"", "not json", "[]", "{}", "{'choices':[]}", "{'choices':[{'message':'x'}]}",
		"{'choices':[{'message':{'content':'a','tool_calls':[{'id':'c','function':"
		"{'name':'f','arguments':'{oops'}}]}}]}",
	};
	struct buf out = { 0 };
	struct usage u;
	for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
		assert_int_equal(xlat_response(OA, AN, slice_cstr(Q(bodies[i])), "m", &out, &u), -1);
		assert_int_equal(out.len, 0);
	}
	assert_int_equal(xlat_response(AN, OA, slice_cstr(Q("{'content':'x'}")), "m", &out, &u), -1);
	assert_int_equal(xlat_response(AN, OA, slice_cstr("{"), "m", &out, &u), -1);
	assert_false(u.present);
	buf_free(&out);
}

static void test_response_usage(void **state)
{
	struct usage u;
	assert_true(xlat_response_usage(OA, slice_cstr(Q(
		"{'choices':[{'message':{'content':'{\\'usage\\':1}'}}],'usage':{'prompt_tokens':9,"
		"'completion_tokens':3,'total_tokens':12,'prompt_tokens_details':{'cached_tokens':4}}}")),
		&u));
	assert_int_equal(u.prompt_tokens, 9);
	assert_int_equal(u.completion_tokens, 3);
	assert_int_equal(u.cached_tokens, 4);
	assert_true(xlat_response_usage(AN, slice_cstr(Q(
		"{'usage':{'input_tokens':5,'output_tokens':7,'cache_read_input_tokens':2,"
		"'cache_creation_input_tokens':1}}")), &u));
	assert_int_equal(u.prompt_tokens, 8);
	assert_int_equal(u.completion_tokens, 7);
	assert_int_equal(u.cached_tokens, 2);
	assert_false(xlat_response_usage(OA, slice_cstr(Q("{'usage':null}")), &u));
	assert_false(xlat_response_usage(AN, slice_cstr("garbage"), &u));
	assert_false(u.present);
	assert_int_equal(u.prompt_tokens, 0);
}

/* ---- errors ---- */

static void expect_error(enum dialect from, enum dialect to, int status, const char *body_q,
			 int want_status, const char *want_q)
{
	struct buf out = { 0 };
	assert_int_equal(xlat_error(from, to, status, slice_cstr(Q(body_q)), &out), want_status);
	expect_json(out.p, out.len, want_q);
	buf_free(&out);
}

static void test_errors(void **state)
{
	expect_error(AN, OA, 429,
		"{'type':'error','error':{'type':'rate_limit_error','message':'slow down'}}", 429,
		"{'error':{'message':'slow down','type':'rate_limit_error','param':null,"
		"'code':'rate_limit_error'}}");
	expect_error(AN, OA, 529,
		"{'type':'error','error':{'type':'overloaded_error','message':'Overloaded'}}", 503,
		"{'error':{'message':'Overloaded','type':'api_error','param':null,"
		"'code':'overloaded_error'}}");
	expect_error(AN, OA, 401, "{'type':'error','error':{'type':'authentication_error',"
		"'message':'invalid x-api-key'}}", 401,
		"{'error':{'message':'invalid x-api-key','type':'invalid_request_error','param':null,"
		"'code':'authentication_error'}}");
	static const struct {
		int status;
		const char *type;
	} an_types[] = { { 400, "invalid_request_error" }, { 401, "authentication_error" },
			 { 403, "permission_error" }, { 404, "not_found_error" },
			 { 413, "request_too_large" }, { 429, "rate_limit_error" },
			 { 500, "api_error" }, { 503, "overloaded_error" }, { 502, "api_error" },
			 { 422, "invalid_request_error" } };
	for (size_t i = 0; i < sizeof(an_types) / sizeof(an_types[0]); i++) {
		char want[256];
		snprintf(want, sizeof(want), "{'type':'error','error':{'type':'%s','message':'m'}}",
			 an_types[i].type);
		expect_error(OA, AN, an_types[i].status,
			     "{'error':{'message':'m','type':'x','param':null,'code':null}}",
			     an_types[i].status, want);
	}
	/* unreadable bodies and the variants of OpenAI-compatible servers */
	expect_error(OA, AN, 500, "<html>oops</html>", 500,
		"{'type':'error','error':{'type':'api_error','message':'the provider returned HTTP 500'}}");
	expect_error(OA, AN, 400, "{'error':'bad model'}", 400,
		"{'type':'error','error':{'type':'invalid_request_error','message':'bad model'}}");
	expect_error(OA, OA, 200, "{'detail':'nope'}", 502,
		"{'error':{'message':'nope','type':'api_error','param':null,'code':null}}");
	/* the same dialect: a well-formed error is kept as it is */
	expect_error(OA, OA, 400, "{'error':{'message':'m','type':'t','param':'p','code':'c'}}", 400,
		"{'error':{'message':'m','type':'t','param':'p','code':'c'}}");
	expect_error(AN, AN, 529, "{'type':'error','error':{'type':'overloaded_error','message':'o'}}",
		529, "{'type':'error','error':{'type':'overloaded_error','message':'o'}}");
}

static void expect_gateway_error(enum dialect d, enum xlat_err_kind kind, int status,
				 const char *code, const char *want_q)
{
	struct buf out = { 0 };
	xlat_error_body(d, kind, status, code, "why \"quoted\"\n", &out);
	expect_json(out.p, out.len, want_q);
	buf_free(&out);
}

static void test_gateway_errors(void **state)
{
	expect_gateway_error(OA, XERR_BUDGET, 429, NULL,
		"{'error':{'message':'why \\'quoted\\'\\n','type':'insufficient_quota','param':null,"
		"'code':'budget_exceeded'}}");
	expect_gateway_error(AN, XERR_BUDGET, 429, NULL,
		"{'type':'error','error':{'type':'rate_limit_error','message':'why \\'quoted\\'\\n'}}");
	expect_gateway_error(OA, XERR_AUTHENTICATION, 401, "invalid_api_key",
		"{'error':{'message':'why \\'quoted\\'\\n','type':'invalid_request_error','param':null,"
		"'code':'invalid_api_key'}}");
	expect_gateway_error(AN, XERR_AUTHENTICATION, 401, "invalid_api_key",
		"{'type':'error','error':{'type':'authentication_error','message':'why \\'quoted\\'\\n'}}");
	expect_gateway_error(AN, XERR_PERMISSION, 403, NULL,
		"{'type':'error','error':{'type':'permission_error','message':'why \\'quoted\\'\\n'}}");
	expect_gateway_error(AN, XERR_INVALID_REQUEST, 404, NULL,
		"{'type':'error','error':{'type':'not_found_error','message':'why \\'quoted\\'\\n'}}");
	expect_gateway_error(AN, XERR_INVALID_REQUEST, 413, NULL,
		"{'type':'error','error':{'type':'request_too_large','message':'why \\'quoted\\'\\n'}}");
	expect_gateway_error(AN, XERR_RATE_LIMIT, 0, NULL,
		"{'type':'error','error':{'type':'rate_limit_error','message':'why \\'quoted\\'\\n'}}");
	expect_gateway_error(OA, XERR_RATE_LIMIT, 429, "rate_limit_exceeded",
		"{'error':{'message':'why \\'quoted\\'\\n','type':'rate_limit_error','param':null,"
		"'code':'rate_limit_exceeded'}}");
	expect_gateway_error(AN, XERR_UPSTREAM, 503, NULL,
		"{'type':'error','error':{'type':'overloaded_error','message':'why \\'quoted\\'\\n'}}");
	expect_gateway_error(AN, XERR_UPSTREAM, 504, NULL,
		"{'type':'error','error':{'type':'api_error','message':'why \\'quoted\\'\\n'}}");
	expect_gateway_error(OA, XERR_INTERNAL, 500, NULL,
		"{'error':{'message':'why \\'quoted\\'\\n','type':'api_error','param':null,"
		"'code':null}}");
}

/* ---- streams ---- */

struct step {
	const char *event, *data; /* data in Q() spelling */
};

/* A stream fed steps and ended, its output appended to out; fast: the fast paths on or off.
 * A refused event fails the test, or with note_refused is noted in out ("refused\n"). */
static struct xlat_stream *run_stream(enum dialect from, enum dialect to, const char *model,
				      bool usage, const struct step *steps, size_t n, bool fast,
				      bool note_refused, struct buf *out)
{
	xlat_set_fast(fast);
	struct xlat_stream *s = xlat_stream_new(from, to, model, usage);
	assert_non_null(s);
	for (size_t i = 0; i < n; i++) {
		const char *data = Q(steps[i].data);
		int rc = xlat_stream_event(s, slice_cstr(steps[i].event), slice_cstr(data), out);
		if (rc && !note_refused)
			fail_msg("event %zu (%s) refused", i, steps[i].data);
		if (rc)
			assert_true(buf_append(out, "refused\n", 8, SIZE_MAX));
	}
	xlat_stream_end(s, out);
	xlat_set_fast(true);
	return s;
}

/* b without the digits of made-up ids ("msg_penstock<hex>": a counter) */
static void unmade(struct buf *b)
{
	size_t w = 0;
	for (size_t r = 0; r < b->len;) {
		b->p[w++] = b->p[r++];
		if (w >= 8 && memcmp(b->p + w - 8, "penstock", 8) == 0)
			while (r < b->len && strchr("0123456789abcdef", b->p[r]) && b->p[r])
				r++;
	}
	b->len = w;
}

/* Two outputs hold the same bytes (an empty one may have no buffer at all). */
static bool same_bytes(const struct buf *a, const struct buf *b)
{
	return a->len == b->len && (a->len == 0 || memcmp(a->p, b->p, a->len) == 0);
}

/* The stream's output (refusals included) is the same, byte for byte, with the fast paths and
 * without, and so is its usage. A second apart, "created" may differ: then it is tried again, once. */
static void expect_fast_is_full(enum dialect from, enum dialect to, const char *model, bool usage,
				const struct step *steps, size_t n)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		struct buf fast = { 0 }, full = { 0 };
		struct xlat_stream *f = run_stream(from, to, model, usage, steps, n, true, true, &fast);
		struct xlat_stream *s = run_stream(from, to, model, usage, steps, n, false, true, &full);
		const struct usage *fu = xlat_stream_usage(f), *su = xlat_stream_usage(s);
		unmade(&fast);
		unmade(&full);
		bool same = same_bytes(&fast, &full);
		if (!same && attempt == 1)
			fail_msg("fast path:\n%.*s\nfull path:\n%.*s", (int)fast.len, fast.p,
				 (int)full.len, full.p);
		assert_int_equal(fu->prompt_tokens, su->prompt_tokens);
		assert_int_equal(fu->completion_tokens, su->completion_tokens);
		assert_int_equal(fu->cached_tokens, su->cached_tokens);
		assert_int_equal(fu->present, su->present);
		buf_free(&fast);
		buf_free(&full);
		xlat_stream_free(f);
		xlat_stream_free(s);
		if (same)
			return;
	}
}

/* Feed steps to a new stream, end it, and check the SSE text: the fast paths change nothing;
 * every event has one data line that is valid JSON (or [DONE]), an Anthropic event's name is
 * its data's type, and the events match want ("name|json" or "|json" for OpenAI, "|[DONE]").
 * Returns the stream (for its usage). */
static struct xlat_stream *expect_stream(enum dialect from, enum dialect to, const char *model,
					 bool usage, const struct step *steps, size_t n,
					 const char *const *want, size_t nwant)
{
	struct buf out = { 0 };
	expect_fast_is_full(from, to, model, usage, steps, n);
	struct xlat_stream *s = run_stream(from, to, model, usage, steps, n, true, false, &out);
	size_t before = out.len;
	xlat_stream_end(s, &out);
	xlat_stream_error(s, XERR_UPSTREAM, "late", &out);
	assert_int_equal(out.len, before); /* terminated once */
	assert_true(buf_append(&out, "", 1, SIZE_MAX));

	size_t k = 0;
	char *p = out.p;
	while (*p) {
		char *end = strstr(p, "\n\n");
		assert_non_null(end);
		*end = 0;
		char name[64] = "";
		if (strncmp(p, "event: ", 7) == 0) {
			char *nl = strchr(p, '\n');
			assert_non_null(nl);
			snprintf(name, sizeof(name), "%.*s", (int)(nl - p - 7), p + 7);
			p = nl + 1;
		}
		assert_true(strncmp(p, "data: ", 6) == 0);
		p += 6;
		assert_null(strchr(p, '\n'));
		if (k >= nwant)
			fail_msg("more events than expected; event %zu: %s|%s", k, name, p);
		const char *bar = strchr(want[k], '|');
		if (strlen(name) != (size_t)(bar - want[k]) || strncmp(name, want[k], strlen(name)))
			fail_msg("event %zu is \"%s\", want \"%.*s\"", k, name, (int)(bar - want[k]),
				 want[k]);
		if (strcmp(bar + 1, "[DONE]") == 0) {
			assert_string_equal(p, "[DONE]");
		} else {
			if (name[0]) {
				json_t *j = parse(p, strlen(p));
				assert_string_equal(json_string_value(json_object_get(j, "type")), name);
				json_decref(j);
			}
			expect_json(p, strlen(p), bar + 1);
		}
		k++;
		p = end + 2;
	}
	assert_int_equal(k, nwant);
	buf_free(&out);
	return s;
}

#define N(a) (sizeof(a) / sizeof((a)[0]))

#define OA_CHUNK(delta, finish) \
	"{'id':'chatcmpl-s1','object':'chat.completion.chunk','created':5,'model':'gpt-x'," \
	"'choices':[{'index':0,'delta':" delta ",'logprobs':null,'finish_reason':" finish "}]}"

/* Text, then two parallel tool calls, then the usage chunk that include_usage brings
 * after the finish_reason chunk. */
static const struct step oa_stream[] = {
	{ "", OA_CHUNK("{'role':'assistant','content':'','refusal':null}", "null") },
	{ "", OA_CHUNK("{'content':'Hel'}", "null") },
	{ "", OA_CHUNK("{'content':'lo \\u00e9\\n'}", "null") },
	{ "", OA_CHUNK("{'tool_calls':[{'index':0,'id':'call_a','type':'function',"
		       "'function':{'name':'get_weather','arguments':''}}]}", "null") },
	{ "", OA_CHUNK("{'tool_calls':[{'index':0,'function':{'arguments':'{\\'city\\''}}]}", "null") },
	{ "", OA_CHUNK("{'tool_calls':[{'index':0,'function':{'arguments':':\\'Oslo\\'}'}}]}", "null") },
	{ "", OA_CHUNK("{'tool_calls':[{'index':1,'id':'call_b','type':'function',"
		       "'function':{'name':'now','arguments':'{}'}}]}", "null") },
	{ "", OA_CHUNK("{}", "'tool_calls'") },
	{ "", "{'id':'chatcmpl-s1','object':'chat.completion.chunk','created':5,'model':'gpt-x',"
	      "'choices':[],'usage':{'prompt_tokens':50,'completion_tokens':17,'total_tokens':67,"
	      "'prompt_tokens_details':{'cached_tokens':10}}}" },
	{ "", "[DONE]" },
};

static void test_stream_oa_to_an(void **state)
{
	static const char *const want[] = {
		"message_start|{'type':'message_start','message':{'id':'msg_s1','type':'message',"
		"'role':'assistant','model':'client-m','content':[],'stop_reason':null,"
		"'stop_sequence':null,'usage':{'input_tokens':0,'output_tokens':0,"
		"'cache_read_input_tokens':0,'cache_creation_input_tokens':0}}}",
		"content_block_start|{'type':'content_block_start','index':0,"
		"'content_block':{'type':'text','text':''}}",
		"content_block_delta|{'type':'content_block_delta','index':0,"
		"'delta':{'type':'text_delta','text':'Hel'}}",
		"content_block_delta|{'type':'content_block_delta','index':0,"
		"'delta':{'type':'text_delta','text':'lo \\u00e9\\n'}}",
		"content_block_stop|{'type':'content_block_stop','index':0}",
		"content_block_start|{'type':'content_block_start','index':1,"
		"'content_block':{'type':'tool_use','id':'call_a','name':'get_weather','input':{}}}",
		"content_block_delta|{'type':'content_block_delta','index':1,"
		"'delta':{'type':'input_json_delta','partial_json':'{\\'city\\''}}",
		"content_block_delta|{'type':'content_block_delta','index':1,"
		"'delta':{'type':'input_json_delta','partial_json':':\\'Oslo\\'}'}}",
		"content_block_stop|{'type':'content_block_stop','index':1}",
		"content_block_start|{'type':'content_block_start','index':2,"
		"'content_block':{'type':'tool_use','id':'call_b','name':'now','input':{}}}",
		"content_block_delta|{'type':'content_block_delta','index':2,"
		"'delta':{'type':'input_json_delta','partial_json':'{}'}}",
		"content_block_stop|{'type':'content_block_stop','index':2}",
		"message_delta|{'type':'message_delta','delta':{'stop_reason':'tool_use',"
		"'stop_sequence':null},'usage':{'input_tokens':40,'output_tokens':17,"
		"'cache_read_input_tokens':10,'cache_creation_input_tokens':0}}",
		"message_stop|{'type':'message_stop'}",
	};
	struct xlat_stream *s = expect_stream(OA, AN, "client-m", false,
					      oa_stream, N(oa_stream), want, N(want));
	const struct usage *u = xlat_stream_usage(s);
	assert_true(u->present);
	assert_int_equal(u->prompt_tokens, 50);
	assert_int_equal(u->completion_tokens, 17);
	assert_int_equal(u->cached_tokens, 10);
	xlat_stream_free(s);
}

/* An OpenAI upstream that stops without [DONE]: end closes the message anyway. */
static void test_stream_oa_to_an_truncated(void **state)
{
	static const struct step steps[] = {
		{ "", OA_CHUNK("{'content':'a'}", "null") },
	};
	static const char *const want[] = {
		"message_start|{'type':'message_start','message':{'id':'msg_s1','type':'message',"
		"'role':'assistant','model':'m','content':[],'stop_reason':null,"
		"'stop_sequence':null,'usage':{'input_tokens':0,'output_tokens':0,"
		"'cache_read_input_tokens':0,'cache_creation_input_tokens':0}}}",
		"content_block_start|{'type':'content_block_start','index':0,"
		"'content_block':{'type':'text','text':''}}",
		"content_block_delta|{'type':'content_block_delta','index':0,"
		"'delta':{'type':'text_delta','text':'a'}}",
		"content_block_stop|{'type':'content_block_stop','index':0}",
		"message_delta|{'type':'message_delta','delta':{'stop_reason':'end_turn',"
		"'stop_sequence':null},'usage':{'input_tokens':0,'output_tokens':0,"
		"'cache_read_input_tokens':0,'cache_creation_input_tokens':0}}",
		"message_stop|{'type':'message_stop'}",
	};
	struct xlat_stream *s = expect_stream(OA, AN, "m", false, steps, N(steps), want, N(want));
	assert_false(xlat_stream_usage(s)->present);
	xlat_stream_free(s);
}

static const struct step an_stream[] = {
	{ "message_start", "{'type':'message_start','message':{'id':'msg_01Q','type':'message',"
			   "'role':'assistant','model':'claude-x','content':[],'stop_reason':null,"
			   "'stop_sequence':null,'usage':{'input_tokens':25,'output_tokens':1,"
			   "'cache_read_input_tokens':100,'cache_creation_input_tokens':0}}}" },
	{ "ping", "{'type':'ping'}" },
	{ "content_block_start", "{'type':'content_block_start','index':0,"
				 "'content_block':{'type':'thinking','thinking':''}}" },
	{ "content_block_delta", "{'type':'content_block_delta','index':0,"
				 "'delta':{'type':'thinking_delta','thinking':'hmm'}}" },
	{ "content_block_stop", "{'type':'content_block_stop','index':0}" },
	{ "content_block_start", "{'type':'content_block_start','index':1,"
				 "'content_block':{'type':'text','text':''}}" },
	{ "content_block_delta", "{'type':'content_block_delta','index':1,"
				 "'delta':{'type':'text_delta','text':'Checking'}}" },
	{ "content_block_stop", "{'type':'content_block_stop','index':1}" },
	{ "content_block_start", "{'type':'content_block_start','index':2,'content_block':"
				 "{'type':'tool_use','id':'toolu_9','name':'get_weather','input':{}}}" },
	{ "content_block_delta", "{'type':'content_block_delta','index':2,"
				 "'delta':{'type':'input_json_delta','partial_json':''}}" },
	{ "content_block_delta", "{'type':'content_block_delta','index':2,"
				 "'delta':{'type':'input_json_delta','partial_json':'{\\'city\\':'}}" },
	{ "content_block_delta", "{'type':'content_block_delta','index':2,"
				 "'delta':{'type':'input_json_delta','partial_json':'\\'Oslo\\'}'}}" },
	{ "content_block_stop", "{'type':'content_block_stop','index':2}" },
	{ "content_block_start", "{'type':'content_block_start','index':3,'content_block':"
				 "{'type':'tool_use','id':'toolu_10','name':'now','input':{}}}" },
	{ "content_block_stop", "{'type':'content_block_stop','index':3}" },
	{ "message_delta", "{'type':'message_delta','delta':{'stop_reason':'tool_use',"
			   "'stop_sequence':null},'usage':{'output_tokens':31}}" },
	{ "message_stop", "{'type':'message_stop'}" },
};

#define OA_OUT(delta, finish) \
	"|{'id':'chatcmpl-01Q','object':'chat.completion.chunk','model':'client-m'," \
	"'choices':[{'index':0,'delta':" delta ",'logprobs':null,'finish_reason':" finish "}]}"

static const char *const an_stream_want[] = {
	OA_OUT("{'role':'assistant','content':''}", "null"),
	OA_OUT("{'content':'Checking'}", "null"),
	OA_OUT("{'tool_calls':[{'index':0,'id':'toolu_9','type':'function',"
	       "'function':{'name':'get_weather','arguments':''}}]}", "null"),
	OA_OUT("{'tool_calls':[{'index':0,'function':{'arguments':'{\\'city\\':'}}]}", "null"),
	OA_OUT("{'tool_calls':[{'index':0,'function':{'arguments':'\\'Oslo\\'}'}}]}", "null"),
	OA_OUT("{'tool_calls':[{'index':1,'id':'toolu_10','type':'function',"
	       "'function':{'name':'now','arguments':''}}]}", "null"),
	OA_OUT("{}", "'tool_calls'"),
	"|{'id':'chatcmpl-01Q','object':'chat.completion.chunk','model':'client-m','choices':[],"
	"'usage':{'prompt_tokens':125,'completion_tokens':31,'total_tokens':156,"
	"'prompt_tokens_details':{'cached_tokens':100}}}",
	"|[DONE]",
};

static void test_stream_an_to_oa(void **state)
{
	struct xlat_stream *s = expect_stream(AN, OA, "client-m", true,
					      an_stream, N(an_stream), an_stream_want, N(an_stream_want));
	const struct usage *u = xlat_stream_usage(s);
	assert_int_equal(u->prompt_tokens, 125);
	assert_int_equal(u->completion_tokens, 31);
	assert_int_equal(u->cached_tokens, 100);
	xlat_stream_free(s);

	/* a client that did not ask for usage gets no usage chunk */
	static const char *const *w = an_stream_want;
	const char *no_usage[] = { w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[8] };
	s = expect_stream(AN, OA, "client-m", false,
			  an_stream, N(an_stream), no_usage, N(no_usage));
	assert_int_equal(xlat_stream_usage(s)->completion_tokens, 31);
	xlat_stream_free(s);
}

static void test_stream_errors(void **state)
{
	/* an Anthropic error event mid-stream */
	static const struct step an_err[] = {
		{ "message_start", "{'type':'message_start','message':{'id':'msg_e','usage':{}}}" },
		{ "error", "{'type':'error','error':{'type':'overloaded_error','message':'Overloaded'}}" },
		{ "message_stop", "{'type':'message_stop'}" },
	};
	static const char *const an_err_want[] = {
		"|{'id':'chatcmpl-e','object':'chat.completion.chunk','model':'m','choices':[{'index':0,"
		"'delta':{'role':'assistant','content':''},'logprobs':null,'finish_reason':null}]}",
		"|{'error':{'message':'Overloaded','type':'api_error','param':null,"
		"'code':'overloaded_error'}}",
		"|[DONE]",
	};
	struct xlat_stream *s = expect_stream(AN, OA, "m", true,
					      an_err, N(an_err), an_err_want, N(an_err_want));
	xlat_stream_free(s);

	/* the gateway ends streams early in either dialect */
	struct buf out = { 0 };
	s = xlat_stream_new(AN, OA, "m", false);
	xlat_stream_error(s, XERR_BUDGET, "budget reached", &out);
	xlat_stream_error(s, XERR_BUDGET, "again", &out);
	xlat_stream_end(s, &out);
	assert_true(buf_append(&out, "", 1, SIZE_MAX));
	assert_string_equal(out.p, "data: {\"error\":{\"message\":\"budget reached\",\"type\":"
			    "\"insufficient_quota\",\"param\":null,\"code\":\"budget_exceeded\"}}\n\n"
			    "data: [DONE]\n\n");
	xlat_stream_free(s);
	out.len = 0;
	s = xlat_stream_new(OA, AN, "m", false);
	assert_int_equal(xlat_stream_event(s, SLICE_LIT(""), slice_cstr(Q(OA_CHUNK("{'content':'a'}",
		"null"))), &out), 0);
	out.len = 0;
	xlat_stream_error(s, XERR_UPSTREAM, "upstream died", &out);
	assert_int_equal(xlat_stream_event(s, SLICE_LIT(""), slice_cstr("[DONE]"), &out), 0);
	xlat_stream_end(s, &out);
	assert_true(buf_append(&out, "", 1, SIZE_MAX));
	assert_string_equal(out.p, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":"
			    "\"api_error\",\"message\":\"upstream died\"}}\n\n");
	xlat_stream_free(s);
	buf_free(&out);
}

/* Events that cannot be understood are refused and leave out untouched. */
static void test_stream_refused_events(void **state)
{
	struct buf out = { 0 };
	struct xlat_stream *s = xlat_stream_new(OA, AN, "m", false);
	assert_int_equal(xlat_stream_event(s, SLICE_LIT(""), SLICE_LIT("{not json"), &out), -1);
	assert_int_equal(xlat_stream_event(s, SLICE_LIT(""), SLICE_LIT("[1]"), &out), -1);
	assert_int_equal(out.len, 0);
	/* a tool call index going back cannot be expressed as Anthropic blocks */
	assert_int_equal(xlat_stream_event(s, SLICE_LIT(""), slice_cstr(Q(OA_CHUNK(
		"{'tool_calls':[{'index':1,'id':'b','function':{'name':'g'}}]}", "null"))), &out), 0);
	size_t len = out.len;
	assert_int_equal(xlat_stream_event(s, SLICE_LIT(""), slice_cstr(Q(OA_CHUNK(
		"{'tool_calls':[{'index':0,'id':'a','function':{'name':'f'}}]}", "null"))), &out), -1);
	assert_int_equal(out.len, len);
	xlat_stream_free(s);

	s = xlat_stream_new(AN, OA, "m", false);
	assert_int_equal(xlat_stream_event(s, SLICE_LIT("x"), SLICE_LIT(""), &out), -1);
	assert_int_equal(xlat_stream_event(s, SLICE_LIT("content_block_delta"), slice_cstr(Q(
		"{'type':'content_block_delta','index':4,'delta':{'type':'text_delta','text':'x'}}")),
		&out), -1);
	xlat_stream_free(s);

	/* same dialect: an event with neither a name nor a type cannot be relayed */
	s = xlat_stream_new(AN, AN, "m", false);
	assert_int_equal(xlat_stream_event(s, SLICE_LIT(""), SLICE_LIT("{\"type\":\"\"}"), &out),
			 -1);
	xlat_stream_free(s);
	s = xlat_stream_new(AN, OA, "m", false);
	/* unknown event types are dropped, not refused */
	len = out.len;
	assert_int_equal(xlat_stream_event(s, SLICE_LIT("new_thing"), slice_cstr(Q(
		"{'type':'new_thing'}")), &out), 0);
	assert_int_equal(out.len, len);
	xlat_stream_free(s);
	buf_free(&out);
}

static void test_stream_same_dialect(void **state)
{
	/* OpenAI: copied through; the usage-only chunk only for clients that asked */
	static const struct step oa[] = {
		{ "", OA_CHUNK("{'content':'a'}", "null") },
		{ "", OA_CHUNK("{}", "'stop'") },
		{ "", "{'id':'c','choices':[],'usage':{'prompt_tokens':3,'completion_tokens':2}}" },
		{ "", "[DONE]" },
	};
	static const char *const want_usage[] = {
		"|" OA_CHUNK("{'content':'a'}", "null"),
		"|" OA_CHUNK("{}", "'stop'"),
		"|{'id':'c','choices':[],'usage':{'prompt_tokens':3,'completion_tokens':2}}",
		"|[DONE]",
	};
	static const char *const want_plain[] = { want_usage[0], want_usage[1], want_usage[3] };
	struct xlat_stream *s = expect_stream(OA, OA, "m", true,
					      oa, N(oa), want_usage, N(want_usage));
	assert_int_equal(xlat_stream_usage(s)->prompt_tokens, 3);
	xlat_stream_free(s);
	s = expect_stream(OA, OA, "m", false, oa, N(oa), want_plain, N(want_plain));
	assert_int_equal(xlat_stream_usage(s)->completion_tokens, 2);
	xlat_stream_free(s);

	/* Anthropic: copied through with usage read; a stream cut short is closed */
	static const struct step an[] = {
		{ "message_start", "{'type':'message_start','message':{'id':'msg_1','usage':"
				   "{'input_tokens':4,'output_tokens':1}}}" },
		{ "content_block_start", "{'type':'content_block_start','index':0,"
					 "'content_block':{'type':'text','text':''}}" },
		{ "", "{'type':'content_block_delta','index':0,'delta':{'type':'text_delta','text':'x'}}" },
	};
	static const char *const an_want[] = {
		"message_start|{'type':'message_start','message':{'id':'msg_1','usage':"
		"{'input_tokens':4,'output_tokens':1}}}",
		"content_block_start|{'type':'content_block_start','index':0,"
		"'content_block':{'type':'text','text':''}}",
		"content_block_delta|{'type':'content_block_delta','index':0,"
		"'delta':{'type':'text_delta','text':'x'}}",
		"content_block_stop|{'type':'content_block_stop','index':0}",
		"message_delta|{'type':'message_delta','delta':{'stop_reason':'end_turn',"
		"'stop_sequence':null},'usage':{'input_tokens':4,'output_tokens':1,"
		"'cache_read_input_tokens':0,'cache_creation_input_tokens':0}}",
		"message_stop|{'type':'message_stop'}",
	};
	s = expect_stream(AN, AN, "m", false, an, N(an), an_want, N(an_want));
	assert_int_equal(xlat_stream_usage(s)->prompt_tokens, 4);
	xlat_stream_free(s);

	/* multi-line data keeps its lines */
	struct buf out = { 0 };
	s = xlat_stream_new(OA, OA, "m", false);
	assert_int_equal(xlat_stream_event(s, SLICE_LIT(""), SLICE_LIT("{\"choices\":\n[]}"), &out), 0);
	assert_true(buf_append(&out, "", 1, SIZE_MAX));
	assert_string_equal(out.p, "data: {\"choices\":\ndata: []}\n\n");
	xlat_stream_free(s);
	buf_free(&out);
}

/* Text deltas on the fast path and beside it: every escape JSON has, UTF-8, and the shapes
 * the fast path declines (each must come out as the full path writes it, checked byte for
 * byte by expect_fast_is_full; a few golden events say what that is). */
#define AN_DELTA(i, text) \
	{ "content_block_delta", "{'type':'content_block_delta','index':" i "," \
				 "'delta':{'type':'text_delta','text':'" text "'}}" }

static const struct step an_texts[] = {
	{ "message_start", "{'type':'message_start','message':{'id':'msg_t','usage':{}}}" },
	{ "content_block_start", "{'type':'content_block_start','index':0,"
				 "'content_block':{'type':'text','text':''}}" },
	AN_DELTA("0", "a\\/b \\u00e9\\u00E9 \\ud83d\\ude00 \\u0000\\u001f\\u007f \\\\\\'x\\' "
		      "\\b\\f\\n\\r\\t \\u0041\\u000a\\u0022\\u005c\\u002f"),
	AN_DELTA("0", "\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \x7f </script>"),
	AN_DELTA("0", ""),
	AN_DELTA("-0", "negative zero is 0"),
	{ "content_block_delta", " {'type' : 'content_block_delta' , 'index':0,'delta':{'text':"
				 "'spaced, keys reordered','type':'text_delta','x':[1.5,-2,true,"
				 "false,null,{}]}} " },
	{ "content_block_delta", "{'type':'content_block_delta','index':0,'delta':{'type':"
				 "'text_delta','text':'dup'},'delta':{'type':'text_delta',"
				 "'text':'last wins'}}" },
	{ "", "{'type':'content_block_delta','index':0,'delta':{'type':'text_delta','text':'no name'}}" },
	{ "content_block_delta", "{'index':0,'delta':{'type':'text_delta','text':'no type: the name'}}" },
	{ "content_block_delta", "{'type':'content_block_delta','delta':{'type':'text_delta',"
				 "'text':'no index'}}" },
	{ "content_block_delta", "{'type':'content_block_delta','index':0,'delta':{'type':"
				 "'text_delta','text':'big','n':1e999999}}" },
	{ "content_block_delta", "{'type':'content_block_delta','index':0,'delta':{'type':"
				 "'text_delta','text':'long int','n':12345678901234567890123}}" },
	{ "content_block_delta", "{'type':'content_block_delta','index':0,'delta':{'type':"
				 "'text_delta','text':'bad real','n':1.}}" },
	{ "content_block_delta", "{'type':'content_block_delta','index':0,'delta':{'type':"
				 "'text_delta','text':'escaped key','\\u0074ext':'y'}}" },
	AN_DELTA("0", "not UTF-8: \xf4\x90\x80\x80"),
	AN_DELTA("0", "not UTF-8: \xc0\x80"),
	AN_DELTA("0", "not UTF-8: \xed\xa0\x80"),
	AN_DELTA("0", "not UTF-8: \xe2\x82"),
	AN_DELTA("0", "not UTF-8: \xe0\x80\x80"),
	AN_DELTA("0", "not UTF-8: \xf0\x8f\xbf\xbf"),
	AN_DELTA("0", "not UTF-8: \x80"),
	AN_DELTA("0", "not UTF-8: \xc3" "A"),
	AN_DELTA("0", "not UTF-8: \xf5\x80\x80\x80"),
	AN_DELTA("0", "lone surrogate: \\ud800"),
	AN_DELTA("0", "lone surrogate: \\udc00"),
	AN_DELTA("0", "bad pair: \\ud800\\u0041"),
	AN_DELTA("0", "bad escape: \\x"),
	AN_DELTA("0", "ok again"),
	AN_DELTA("5", "not the open block"),
	{ "content_block_stop", "{'type':'content_block_stop','index':0}" },
	AN_DELTA("0", "the block is closed"),
	{ "content_block_start", "{'type':'content_block_start','index':1,"
				 "'content_block':{'type':'text','text':'start text'}}" },
	AN_DELTA("1", "second block"),
	{ "content_block_stop", "{'type':'content_block_stop','index':1}" },
	{ "content_block_start", "{'type':'content_block_start','index':2,"
				 "'content_block':{'type':'thinking','thinking':''}}" },
	AN_DELTA("2", "text in a thinking block"),
	{ "message_stop", "{'type':'message_stop'}" },
};

/* The events around the text an OpenAI client's fast path takes: block starts of every kind,
 * ping, the end with each stop reason. Each stream is run with and without usage. */
#define AN_START(i, block) \
	{ "content_block_start", "{'type':'content_block_start'" i ",'content_block':" block "}" }
#define AN_STOP(reason) \
	{ "message_delta", "{'type':'message_delta','delta':{'stop_reason':" reason "," \
			   "'stop_sequence':null},'usage':{'output_tokens':7,'input_tokens':3}}" }

static const struct step an_blocks[] = {
	{ "ping", "{'type':'ping'}" },
	{ "content_block_stop", "{'type':'content_block_stop','index':0}" },
	{ "message_start", "{'type':'message_start','message':{'id':'msg_b','usage':"
			   "{'input_tokens':5,'cache_read_input_tokens':2}}}" },
	{ "ping", "{'type':'ping'}" },
	AN_START(",'index':0", "{'type':'text','text':''}"),
	AN_DELTA("0", "a"),
	{ "content_block_stop", "{'type':'content_block_stop','index':0}" },
	AN_START("", "{'type':'text'}"),
	AN_DELTA("1", "no index: the next one"),
	{ "content_block_stop", "{}" },
	AN_START(",'index':1.5", "{'type':'text','text':null}"),
	AN_DELTA("2", "a real index: the next one"),
	AN_START(",'index':7", "{'type':'text','text':'with text'}"),
	AN_DELTA("7", "b"),
	AN_START(",'index':8", "{'type':'thinking','thinking':''}"),
	AN_DELTA("8", "text in a thinking block"),
	AN_START(",'index':9", "{'type':'te\\u0078t','text':''}"),
	AN_DELTA("9", "an escaped type"),
	AN_START(",'index':10", "{'type':'redacted_thinking'}"),
	AN_START(",'index':11", "{'type':'tool_use','id':'toolu_1','name':'f','input':{}}"),
	AN_START(",'index':12", "{'type':5}"),
	AN_START(",'index':13", "null"),
	AN_START(",'index':14", "{'type':'text','text':''}"),
	AN_DELTA("14", "c"),
	{ "content_block_stop", "{'type':'content_block_stop','index':14}" },
	{ "message_delta", "{'type':'message_delta','delta':{'stop_reason':null},"
			   "'usage':{'output_tokens':4}}" },
	{ "message_delta", "{'type':'message_delta','usage':null}" },
	{ "message_delta", "{'type':'message_delta','delta':5,'usage':5}" },
};

static void test_stream_fast_ends(void **state)
{
	static const char *const reasons[] = {
		"'end_turn'", "'max_tokens'", "'model_context_window_exceeded'", "'tool_use'",
		"'refusal'", "'stop_sequence'", "'pause_turn'", "'new_reason'", "5", "{}",
		"'tool\\u005fuse'", "'max_tokens\\n'",
	};
	struct step steps[N(an_blocks) + 3];
	memcpy(steps, an_blocks, sizeof(an_blocks));
	for (size_t i = 0; i < N(reasons); i++) {
		char delta[256];
		snprintf(delta, sizeof(delta), "{'type':'message_delta','delta':{'stop_reason':%s,"
			 "'stop_sequence':null},'usage':{'output_tokens':7,'input_tokens':3}}",
			 reasons[i]);
		steps[N(an_blocks)] = (struct step){ "message_delta", keep(strdup(delta)) };
		/* a second finish chunk, as the full path writes it */
		steps[N(an_blocks) + 1] = (struct step){ "message_delta", keep(strdup(delta)) };
		steps[N(an_blocks) + 2] = (struct step){ "message_stop", "{'type':'message_stop',"
							 "'usage':{'output_tokens':99}}" };
		for (int usage = 0; usage < 2; usage++) {
			expect_fast_is_full(AN, OA, "m", usage, steps, N(steps));
			expect_fast_is_full(AN, OA, "m", usage, steps, N(steps) - 2);
			steps[N(an_blocks)] = steps[N(an_blocks) + 2];
			expect_fast_is_full(AN, OA, "m", usage, steps, N(an_blocks) + 1);
			steps[N(an_blocks)] = steps[N(an_blocks) + 1];
		}
	}
	/* golden: the end of a stream on the fast path */
	static const struct step end[] = {
		{ "message_start", "{'type':'message_start','message':{'id':'msg_01Q','usage':"
				   "{'input_tokens':9,'cache_read_input_tokens':4}}}" },
		AN_STOP("'max_tokens'"),
		{ "message_stop", "{'type':'message_stop'}" },
	};
	static const char *const want[] = {
		OA_OUT("{'role':'assistant','content':''}", "null"),
		OA_OUT("{}", "'length'"),
		"|{'id':'chatcmpl-01Q','object':'chat.completion.chunk','model':'client-m','choices':[],"
		"'usage':{'prompt_tokens':7,'completion_tokens':7,'total_tokens':14,"
		"'prompt_tokens_details':{'cached_tokens':4}}}",
		"|[DONE]",
	};
	xlat_stream_free(expect_stream(AN, OA, "client-m", true, end, N(end), want, N(want)));

	/* before message_start */
	static const struct step unstarted[] = {
		AN_START(",'index':0", "{'type':'text','text':''}"),
		AN_DELTA("0", "x"),
		{ "message_start", "{'type':'message_start','message':{'id':'msg_late','usage':{}}}" },
		{ "message_stop", "{'type':'message_stop'}" },
	};
	expect_fast_is_full(AN, OA, "m", true, unstarted, N(unstarted));
}

#define OA_TEXT(text) "{'id':'chatcmpl-t','object':'chat.completion.chunk','created':5,'model':'g'," \
		      "'choices':[{'index':0,'delta':{'content':'" text "'},'finish_reason':null}]}"

static const struct step oa_texts[] = {
	{ "", OA_CHUNK("{'role':'assistant','content':''}", "null") },
	{ "", OA_TEXT("a\\/b \\u00e9\\u00E9 \\ud83d\\ude00 \\u0000\\u001f\\u007f \\\\\\'x\\' "
		      "\\b\\f\\n\\r\\t \\u0041\\u000a\\u0022\\u005c\\u002f") },
	{ "", OA_TEXT("\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \x7f </script>") },
	{ "", OA_TEXT("") },
	{ "", "{'choices':[{'delta':{'content':'no index, no id','tool_calls':[],'refusal':'r'}}],"
	      "'usage':null,'error':null,'system_fingerprint':'fp_1','x':[0.25,-0,1E2]}" },
	{ "", "{'choices':[{'index':1,'delta':{'content':'choice 1'}}]}" },
	{ "", "{'choices':[{'index':0,'delta':{'content':'two'}},{'index':1,'delta':{'content':'x'}}]}" },
	{ "", "{'choices':[{'index':0,'delta':{'content':'with usage'}}],'usage':{'prompt_tokens':3}}" },
	{ "", "{'choices':[{'index':0,'delta':{'refusal':'refused'}}]}" },
	{ "", "{'choices':[{'index':0,'delta':{'content':'and finish'},'finish_reason':'length'}]}" },
	{ "", OA_TEXT("after the block closed") },
	{ "", OA_CHUNK("{'tool_calls':[{'index':0,'id':'call_a','function':{'name':'f'}}]}", "null") },
	{ "", OA_TEXT("after a tool call") },
	{ "", OA_TEXT("in the same block") },
	{ "", "{'choices':[{'index':0,'delta':{'content':'x'}}],'error':null,'x':1.}" },
	{ "", "{'choices':[{'index':0,'delta':{'content':'x'}}],'error':{'message':'boom'}}" },
	{ "", "{'choices':[{'index':0,'delta':{'content':'and a call','tool_calls':[{'index':1,"
	      "'id':'call_b','function':{'name':'g'}}]}}]}" },
	{ "", OA_TEXT("not UTF-8: \xf4\x90\x80\x80") },
	{ "", OA_TEXT("lone surrogate: \\udc00") },
	{ "", "[DONE]" },
};

/* Text first, with no role chunk. */
static const struct step oa_unstarted[] = {
	{ "", OA_TEXT("first") },
	{ "", OA_TEXT("second") },
};

static void test_stream_fast_texts(void **state)
{
	struct xlat_stream *s = xlat_stream_new(AN, OA, "m", false);
	struct buf out = { 0 };
	for (size_t i = 0; i < 3; i++)
		assert_int_equal(xlat_stream_event(s, slice_cstr(an_texts[i].event),
						   slice_cstr(Q(an_texts[i].data)), &out), 0);
	assert_true(buf_append(&out, "", 1, SIZE_MAX));
	/* jansson's spelling: "\/" and "\u00e9" decoded, control characters as \uXXXX */
	assert_non_null(strstr(out.p, "{\"content\":\"a/b \u00e9\u00e9 \U0001F600 \\u0000\\u001F\x7f "
				      "\\\\\\\"x\\\" \\b\\f\\n\\r\\t A\\n\\\"\\\\/\"}"));
	xlat_stream_free(s);
	buf_free(&out);
	expect_fast_is_full(AN, OA, "m", true, an_texts, N(an_texts));
	expect_fast_is_full(AN, OA, "m\u00e9 \"q\"", false, an_texts, N(an_texts));
	expect_fast_is_full(OA, AN, "m", false, oa_texts, N(oa_texts));
	expect_fast_is_full(OA, AN, "m\u00e9 \"q\"", true, oa_texts, N(oa_texts));
	expect_fast_is_full(OA, AN, "m", false, oa_unstarted, N(oa_unstarted));

	/* nesting deeper than jansson takes */
	struct buf deep = { 0 };
	const char *head = "{'type':'content_block_delta','index':0,'delta':{'type':'text_delta',"
			   "'text':'deep','x':";
	assert_true(buf_append(&deep, head, strlen(head), SIZE_MAX));
	for (int i = 0; i < 2 * 3000; i++)
		assert_true(buf_append(&deep, i < 3000 ? "[" : "]", 1, SIZE_MAX));
	assert_true(buf_append(&deep, "}}", 3, SIZE_MAX));
	struct step deep_steps[] = { an_texts[0], an_texts[1], { "content_block_delta", deep.p } };
	expect_fast_is_full(AN, OA, "m", false, deep_steps, N(deep_steps));
	buf_free(&deep);
}

/* The chunks around the text an Anthropic client's fast path takes: finish reasons, the
 * usage chunk, [DONE], with the text block open or not, and the shapes that are nothing. */
#define OA_FINISH(reason) "{'id':'chatcmpl-t','choices':[{'index':0,'delta':{}," \
			  "'finish_reason':" reason "}]}"
#define OA_USAGE "{'id':'chatcmpl-t','choices':[],'usage':{'prompt_tokens':20," \
		 "'completion_tokens':6,'total_tokens':26,'prompt_tokens_details':{'cached_tokens':8}}}"

static const struct step oa_shapes[] = {
	{ "", OA_CHUNK("{'role':'assistant','content':''}", "null") },
	{ "", "{'choices':[]}" },
	{ "", "{'choices':5}" },
	{ "", "{}" },
	{ "", "{'choices':[7]}" },
	{ "", "{'choices':[{'delta':5}]}" },
	{ "", "{'choices':[{'index':0,'delta':{'content':null,'refusal':'','tool_calls':null}}]}" },
	{ "", "{'choices':[{'index':0,'delta':{'refusal':'I cannot'}}]}" },
	{ "", "{'choices':[{'index':0,'delta':{'content':'','refusal':'still not'}}]}" },
	{ "", "{'choices':[{'index':0,'delta':{'content':'text and usage'}}],'usage':{'prompt_tokens':4}}" },
	{ "", "{'choices':[{'index':0,'delta':{'content':'text and finish'},'finish_reason':'stop'}]}" },
	{ "", "{'choices':[{'delta':{'content':'a'}},{'delta':{'content':'b'}}]}" },
	{ "", "{'choices':[{'index':0,'delta':{},'finish_reason':'length'}]}" },
	{ "", OA_TEXT("a new block") },
	{ "", OA_CHUNK("{'tool_calls':[{'index':0,'id':'call_a','function':{'name':'f'}}]}", "null") },
	{ "", OA_TEXT("text after a tool call") },
	{ "", OA_CHUNK("{'tool_calls':[{'index':1,'id':'call_b','function':{'name':'g'}}]}", "null") },
	{ "", "{'choices':[{'index':0,'delta':{},'finish_reason':null}],'usage':null}" },
};

static void test_stream_fast_oa_ends(void **state)
{
	static const char *const reasons[] = {
		"'stop'", "'length'", "'tool_calls'", "'function_call'", "'content_filter'", "'new'",
		"5", "'leng\\u0074h'",
	};
	struct step steps[N(oa_shapes) + 3];
	memcpy(steps, oa_shapes, sizeof(oa_shapes));
	for (size_t i = 0; i < N(reasons); i++) {
		char finish[128];
		snprintf(finish, sizeof(finish), OA_FINISH("%s"), reasons[i]);
		steps[N(oa_shapes)] = (struct step){ "", keep(strdup(finish)) };
		steps[N(oa_shapes) + 1] = (struct step){ "", OA_USAGE };
		steps[N(oa_shapes) + 2] = (struct step){ "", "[DONE]" };
		expect_fast_is_full(OA, AN, "m", false, steps, N(steps));
		/* cut short: [DONE] with no finish_reason, or none at all */
		expect_fast_is_full(OA, AN, "m", false, steps, N(oa_shapes) + 1);
		steps[N(oa_shapes) - 1] = steps[N(oa_shapes) + 2];
		expect_fast_is_full(OA, AN, "m", false, steps, N(oa_shapes));
		steps[N(oa_shapes) - 1] = oa_shapes[N(oa_shapes) - 1];
	}
	/* golden: the usual stream's end on the fast path */
	static const struct step end[] = {
		{ "", OA_CHUNK("{'role':'assistant','content':''}", "null") },
		{ "", OA_TEXT("Hi") },
		{ "", OA_FINISH("'length'") },
		{ "", OA_USAGE },
		{ "", "[DONE]" },
	};
	static const char *const want[] = {
		"message_start|{'type':'message_start','message':{'id':'msg_s1','type':'message',"
		"'role':'assistant','model':'client-m','content':[],'stop_reason':null,"
		"'stop_sequence':null,'usage':{'input_tokens':0,'output_tokens':0,"
		"'cache_read_input_tokens':0,'cache_creation_input_tokens':0}}}",
		"content_block_start|{'type':'content_block_start','index':0,"
		"'content_block':{'type':'text','text':''}}",
		"content_block_delta|{'type':'content_block_delta','index':0,"
		"'delta':{'type':'text_delta','text':'Hi'}}",
		"content_block_stop|{'type':'content_block_stop','index':0}",
		"message_delta|{'type':'message_delta','delta':{'stop_reason':'max_tokens',"
		"'stop_sequence':null},'usage':{'input_tokens':12,'output_tokens':6,"
		"'cache_read_input_tokens':8,'cache_creation_input_tokens':0}}",
		"message_stop|{'type':'message_stop'}",
	};
	xlat_stream_free(expect_stream(OA, AN, "client-m", false, end, N(end), want, N(want)));
}

/* The opening events on the fast path: ids of every form, usage, a message that is not an
 * object, message_start twice, and a model that is not UTF-8 (the full path refuses it). */
static void test_stream_fast_opening(void **state)
{
	static const char *const an_starts[] = {
		"{'type':'message_start','message':{'id':'msg_01Q','usage':{'input_tokens':4,"
		"'cache_read_input_tokens':2,'cache_creation_input_tokens':1}}}",
		"{'type':'message_start','message':{'usage':{'input_tokens':4}}}",
		"{'type':'message_start','message':{'id':'','usage':null}}",
		"{'type':'message_start','message':{'id':5}}",
		"{'type':'message_start','message':{'id':'msg_\\u0041'}}",
		"{'type':'message_start','message':{'id':'no-prefix \xc3\xa9'}}",
		"{'type':'message_start','message':{'id':'msg_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
		"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
		"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\xc3\xa9'}}",
		"{'type':'message_start','message':5}",
		"{'type':'message_start'}",
	};
	static const char *const oa_firsts[] = {
		OA_CHUNK("{'role':'assistant','content':''}", "null"),
		OA_TEXT("text first"),
		"{'choices':[{'index':0,'delta':{'role':'assistant','content':'no id'}}]}",
		"{'id':'','choices':[],'usage':{'prompt_tokens':7,'completion_tokens':1,"
		"'prompt_tokens_details':{'cached_tokens':3}}}",
		"{'id':'chatcmpl-\\u0041','choices':[]}",
		"{'id':'chatcmpl-1','choices':[{'index':0,'delta':{},'finish_reason':'stop'}]}",
		"{'id':'chatcmpl-1','choices':[{'index':0,'delta':{'content':'x'}}],"
		"'error':{'message':'boom'}}",
		"[DONE]",
	};
	static const char *const models[] = { "m", "m\xc3\xa9 \"q\"", "bad \xff" };
	for (size_t m = 0; m < N(models); m++) {
		for (size_t i = 0; i < N(an_starts); i++) {
			struct step steps[] = {
				{ "message_start", an_starts[i] },
				{ "message_start", an_starts[(i + 1) % N(an_starts)] },
				AN_START(",'index':0", "{'type':'text','text':''}"),
				AN_DELTA("0", "x"),
				{ "message_stop", "{'type':'message_stop'}" },
			};
			expect_fast_is_full(AN, OA, models[m], true, steps, N(steps));
		}
		for (size_t i = 0; i < N(oa_firsts); i++) {
			struct step steps[] = {
				{ "", oa_firsts[i] },
				{ "", OA_TEXT("y") },
				{ "", "[DONE]" },
			};
			expect_fast_is_full(OA, AN, models[m], false, steps, N(steps));
		}
	}
}

/* ---- responses: the fast path against the full path ---- */

/* xlat_response's answer is the same, byte for byte, with the fast paths and without (made-up
 * ids aside; a second apart, "created" may differ: then it is tried again, once); so are its
 * return value and usage. */
static void expect_response_fast_is_full(enum dialect from, enum dialect to, const char *body_q,
					 const char *model)
{
	const char *body = Q(body_q);
	for (int attempt = 0; attempt < 2; attempt++) {
		struct buf fast = { 0 }, full = { 0 };
		struct usage fu = { 0 }, su = { 0 };
		xlat_set_fast(true);
		int frc = xlat_response(from, to, slice_cstr(body), model, &fast, &fu);
		xlat_set_fast(false);
		int src = xlat_response(from, to, slice_cstr(body), model, &full, &su);
		xlat_set_fast(true);
		unmade(&fast);
		unmade(&full);
		bool same = frc == src && same_bytes(&fast, &full);
		if (!same && attempt == 1)
			fail_msg("%s\nfast path (%d):\n%.*s\nfull path (%d):\n%.*s", body, frc,
				 (int)fast.len, fast.p, src, (int)full.len, full.p);
		assert_int_equal(fu.prompt_tokens, su.prompt_tokens);
		assert_int_equal(fu.completion_tokens, su.completion_tokens);
		assert_int_equal(fu.cached_tokens, su.cached_tokens);
		assert_int_equal(fu.present, su.present);
		buf_free(&fast);
		buf_free(&full);
		if (same)
			return;
	}
}

#define OA_RESP(id, message, finish, usage) \
	"{" id "'object':'chat.completion','created':1,'model':'g','choices':[{'index':0," \
	"'message':" message ",'logprobs':null,'finish_reason':" finish "}]" usage "}"
#define OA_USAGE_FULL ",'usage':{'prompt_tokens':9,'completion_tokens':3,'total_tokens':12," \
		      "'prompt_tokens_details':{'cached_tokens':4}}"

static void test_response_fast(void **state)
{
	static const char *const oa[] = {
		OA_RESP("'id':'chatcmpl-1',", "{'role':'assistant','content':'Hello \\u00e9\\n\\'x\\' "
			"\\/ \\ud83d\\ude00 \\u001f'}", "'stop'", OA_USAGE_FULL),
		OA_RESP("'id':'chatcmpl-1',", "{'role':'assistant','content':'','refusal':'no'}",
			"'content_filter'", ""),
		OA_RESP("'id':'chatcmpl-1',", "{'content':'both','refusal':'and this'}", "'length'", ""),
		OA_RESP("'id':'chatcmpl-1',", "{'content':null,'refusal':null}", "null", ",'usage':null"),
		OA_RESP("'id':'chatcmpl-1',", "{'content':'a','tool_calls':[]}", "'tool_calls'", ""),
		OA_RESP("'id':'chatcmpl-1',", "{'content':'a','tool_calls':null}", "'function_call'", ""),
		OA_RESP("'id':'chatcmpl-1',", "{'content':'a'}", "'something_new'", ",'usage':5"),
		OA_RESP("'id':'chatcmpl-1',", "{'content':'a'}", "'leng\\u0074h'", ""),
		OA_RESP("'id':'chatcmpl-1',", "{'content':'a'}", "7", ""),
		OA_RESP("", "{'content':'no id'}", "'stop'", ""),
		OA_RESP("'id':'',", "{'content':'empty id'}", "'stop'", ""),
		OA_RESP("'id':5,", "{'content':'number id'}", "'stop'", ""),
		OA_RESP("'id':'other-prefix',", "{'content':'a'}", "'stop'", ""),
		OA_RESP("'id':'chatcmpl-\\u0041',", "{'content':'escaped id'}", "'stop'", ""),
		OA_RESP("'id':'chatcmpl-\xc3\xa9',", "{'content':'UTF-8 id'}", "'stop'", ""),
		OA_RESP("'id':'chatcmpl-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
			"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
			"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\xc3\xa9\xc3\xa9',",
			"{'content':'long id'}", "'stop'", ""),
		OA_RESP("'id':'chatcmpl-1',", "{'content':[{'type':'text','text':'parts'}]}", "'stop'", ""),
		OA_RESP("'id':'chatcmpl-1',", "{'content':'a','tool_calls':[{'id':'c','type':'function',"
			"'function':{'name':'f','arguments':'{}'}}]}", "'tool_calls'", ""),
		OA_RESP("'id':'chatcmpl-1',", "{'content':5}", "'stop'", ""),
		OA_RESP("'id':'chatcmpl-1',", "5", "'stop'", ""),
		"{'choices':[]}",
		"{'choices':[{'message':{'content':'first'}},{'message':{'content':'second'}}]}",
		"{'choices':[{'message':{'content':'bad number'}}],'x':1e999}",
		"{'choices':[{'message':{'content':'trailing comma'}},]}",
		"{'choices':[{'message':{'content':'not UTF-8 \xc3'}}]}",
		"[1]",
	};
	static const char *const an[] = {
		"{'id':'msg_1','type':'message','role':'assistant','model':'c','content':["
		"{'type':'text','text':'Hi'},{'type':'thinking','thinking':'x'},{'type':'text',"
		"'text':' there \\u00e9\\/\\n'},{'type':'text','text':''},5,{'type':'text','text':7},"
		"{'text':'no type'}],'stop_reason':'end_turn','stop_sequence':null,'usage':"
		"{'input_tokens':5,'output_tokens':2,'cache_read_input_tokens':3,"
		"'cache_creation_input_tokens':1}}",
		"{'id':'msg_1','content':[],'stop_reason':'max_tokens'}",
		"{'id':'msg_1','content':[{'type':'text','text':'a'}],"
		"'stop_reason':'model_context_window_exceeded','usage':null}",
		"{'id':'msg_1','content':[{'type':'text','text':'a'}],'stop_reason':'tool_use'}",
		"{'id':'msg_1','content':[{'type':'text','text':'a'}],'stop_reason':'refusal'}",
		"{'id':'msg_1','content':[{'type':'text','text':'a'}],'stop_reason':'pause_turn'}",
		"{'id':'msg_1','content':[{'type':'text','text':'a'}],'stop_reason':'to\\u006fl_use'}",
		"{'id':'msg_1','content':[{'type':'text','text':'a'}],'stop_reason':null}",
		"{'id':'msg_1','content':[{'type':'te\\u0078t','text':'escaped type'}]}",
		"{'id':'msg_1','content':[{'type':'tool_use','id':'t','name':'f','input':{}}]}",
		"{'content':[{'type':'text','text':'no id'}]}",
		"{'id':'other','content':[{'type':'text','text':'a'}]}",
		"{'id':'msg_1','content':{}}",
		"{'id':'msg_1'}",
		"{'id':'msg_1','content':[{'type':'text','text':'not UTF-8 \xff'}]}",
	};
	static const char *const models[] = { "client-m", "m\xc3\xa9 \"q\"\n", NULL, "bad \xff" };
	for (size_t m = 0; m < N(models); m++) {
		for (size_t i = 0; i < N(oa); i++)
			expect_response_fast_is_full(OA, AN, oa[i], models[m]);
		for (size_t i = 0; i < N(an); i++)
			expect_response_fast_is_full(AN, OA, an[i], models[m]);
	}
}

/* ---- requests: the fast path against the full path ---- */

/* Calls to jansson's json_loadb, counted: this definition interposes on the library's and
 * passes the call on. A request on the fast path makes none. */
static size_t loads;

json_t *json_loadb(const char *buffer, size_t buflen, size_t flags, json_error_t *error)
{
	typedef json_t *loadb_fn(const char *, size_t, size_t, json_error_t *);
	static loadb_fn *real;
	if (!real)
		real = (loadb_fn *)dlsym(RTLD_NEXT, "json_loadb");
	assert_non_null(real);
	loads++;
	return real(buffer, buflen, flags, error);
}

enum path { EITHER, FAST, FULL };

/* xlat_request's answer (return value, body, message) is the same, byte for byte, with the
 * fast paths and without; FAST: the fast path answered (no jansson load), FULL: it declined. */
static void expect_request_fast_is_full(enum dialect from, enum dialect to,
					const struct xlat_request_opts *o, const char *body_q,
					enum path path)
{
	const char *body = Q(body_q);
	struct buf fast = { 0 }, full = { 0 };
	char ferr[256] = "", serr[256] = "";
	xlat_set_fast(true);
	size_t before = loads;
	int frc = xlat_request(from, to, slice_cstr(body), o, &fast, ferr, sizeof(ferr));
	bool took = loads == before;
	xlat_set_fast(false);
	int src = xlat_request(from, to, slice_cstr(body), o, &full, serr, sizeof(serr));
	xlat_set_fast(true);
	if (frc != src || !same_bytes(&fast, &full) ||
	    strcmp(ferr, serr))
		fail_msg("%s\nfast path (%d %s):\n%.*s\nfull path (%d %s):\n%.*s", body, frc, ferr,
			 (int)fast.len, fast.p, src, serr, (int)full.len, full.p);
	if ((path == FAST && !took) || (path == FULL && took))
		fail_msg("%s\nexpected the %s path", body, path == FAST ? "fast" : "full");
	buf_free(&fast);
	buf_free(&full);
}

/* Every opts shape: upstream model or none (plain, escaped, not UTF-8), default max_tokens
 * or none, stream usage or not, no opts at all. */
static void expect_request_all_opts(enum dialect from, enum dialect to, const char *body_q,
				    enum path path)
{
	static const struct xlat_request_opts all[] = {
		{ "upstream-m", 1000, false },
		{ NULL, 0, true },
		{ "m\xc3\xa9 \"q\"\n\x01", 4294967295u, true },
	};
	static const struct xlat_request_opts bad_model = { "bad \xff", 1, false };
	for (size_t i = 0; i < N(all); i++)
		expect_request_fast_is_full(from, to, &all[i], body_q, path);
	/* without opts the body's model is used; where it has none that is the full path's */
	expect_request_fast_is_full(from, to, NULL, body_q, EITHER);
	expect_request_fast_is_full(from, to, &bad_model, body_q, path == FAST ? FULL : path);
}

/* Requests the fast path answers, requests it declines, and (either way) bodies whose model
 * the catalog's replaces: with every opts shape. */
static void expect_requests(enum dialect from, enum dialect to, const char *const *fast,
			    size_t nfast, const char *const *declined, size_t ndeclined)
{
	static const char *const no_model[] = { /* the catalog's model is used; none: refused */
		"{'model':5,'messages':[{'role':'user','content':'x'}]}",
		"{'messages':[{'role':'user','content':'x'}]}",
	};
	for (size_t i = 0; i < nfast; i++)
		expect_request_all_opts(from, to, fast[i], FAST);
	for (size_t i = 0; i < ndeclined; i++)
		expect_request_all_opts(from, to, declined[i], FULL);
	for (size_t i = 0; i < N(no_model); i++)
		expect_request_all_opts(from, to, no_model[i], EITHER);
}

/* Strings in every spelling JSON has: escapes (each written back jansson's way), \u0000,
 * UTF-8 raw and escaped, surrogate pairs, U+2028, DEL. */
#define TEXTS "'\\' \\\" \\\\ \\/ \\b\\f\\n\\r\\t \\u0000 \\u001f \\u007f \\u00e9 \\u20ac " \
	      "\\ud83d\\ude00 \\u2028 \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \x7f'"

static void test_request_fast_oa(void **state)
{
	static const char *const fast[] = {
		"{'model':'gpt-4o','messages':[{'role':'system','content':'Be brief.'},"
		"{'role':'user','content':'Hi'},{'role':'assistant','content':'Hello!'},"
		"{'role':'user','content':'Why?'}],'temperature':0.7,'max_tokens':256,'stream':true,"
		"'stream_options':{'include_usage':true},'user':'u-1','stop':'END','top_p':0.95}",
		"{'model':" TEXTS ",'messages':[{'role':'system','content':" TEXTS "},"
		"{'role':'user','content':" TEXTS "}],'user':" TEXTS ",'stop':[" TEXTS ",'b']}",
		/* system and developer joined wherever they are; empty ones skipped */
		"{'model':'m','messages':[{'role':'developer','content':'d'},{'role':'user','content':"
		"'u'},{'role':'system','content':''},{'role':'system','content':[{'type':'text',"
		"'text':'p1','cache_control':{'type':'ephemeral'}},{'type':'text','text':''},"
		"{'type':'text','text':'p2'}]},{'role':'system','content':null},{'role':'system'}]}",
		"{'model':'m','messages':[{'role':'system','content':''},{'role':'user','content':'u'}]}",
		/* system text after the turns: moved ahead of them */
		"{'model':'m','messages':[{'role':'system','content':'s1'},{'role':'user','content':'u'},"
		"{'role':'developer','content':[{'type':'text','text':'d\\n\\u00e9'},{'type':'text',"
		"'text':'d2'}]},{'role':'assistant','content':'a'},{'role':'system','content':''},"
		"{'role':'system','content':'\\'late\\''}]}",
		/* consecutive roles merged, also across a message left empty */
		"{'model':'m','messages':[{'role':'user','content':'a'},{'role':'user','content':'b'},"
		"{'role':'assistant','content':'c'},{'role':'assistant','content':''},{'role':"
		"'assistant','content':'d'},{'role':'user','content':'e'},{'role':'assistant',"
		"'content':null},{'role':'user','content':'f'},{'role':'system','content':'s'},"
		"{'role':'user','content':'g'}]}",
		"{'model':'m','messages':[{'role':'assistant','content':''},{'role':'user','content':"
		"'first with text'},{'role':'assistant','content':'x','tool_calls':null,"
		"'function_call':null,'name':'bob'}]}",
		/* text parts; an assistant's refusal parts */
		"{'model':'m','messages':[{'role':'user','content':[{'type':'text','text':'a'},"
		"{'type':'text','text':''},{'text':'b','type':'text'}]},{'role':'assistant','content':"
		"[{'type':'refusal','refusal':'no'},{'type':'text','text':'t'}]},{'role':'user',"
		"'content':[]}]}",
		/* reals and integers as jansson writes them back */
		"{'model':'m','messages':[{'role':'user','content':'x'}],'temperature':1.5,'top_p':1}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'temperature':-0.5,'top_p':-0}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'temperature':-0,'top_p':0.1}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'temperature':-0.0,"
		"'top_p':0.30000000000000004}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'temperature':0,'top_p':1.0}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'temperature':1,"
		"'top_p':0.0000001}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'temperature':2,"
		"'top_p':123456789012345678.5}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'temperature':0.1,"
		"'top_p':12345678901234567.5}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'temperature':0.99999999999999999999,"
		"'top_p':-999999999999999999}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'temperature':0.000000000000000000000000001}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'max_tokens':999999999999999999}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'max_tokens':5,"
		"'max_completion_tokens':7}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'max_tokens':5,"
		"'max_completion_tokens':null}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'max_tokens':1}",
		/* the last of duplicate keys, at every level */
		"{'model':'a','model':'b','messages':5,'messages':[{'role':'assistant','role':'user',"
		"'content':'x','content':'y'}],'temperature':'hot','temperature':0.5,'stream':false,"
		"'stream':true}",
		/* whitespace everywhere */
		" \r\n\t{ 'model' : 'm' ,\n\t'messages' : [ { 'role' : 'user' , 'content' : [ { "
		"'type' : 'text' , 'text' : 'a' } ] } , { 'role' :'user','content':'b' } ] , 'stop' "
		": [ 'x' , 'y' ] , 'tools' : [ ] } \n",
		/* settings that change nothing, and fields dropped */
		"{'model':'m','messages':[{'role':'user','content':'x'}],'n':1,'logprobs':false,"
		"'audio':null,'modalities':null,'response_format':null,'functions':null,"
		"'function_call':null,'web_search_options':null,'tools':null,'tool_choice':'auto',"
		"'parallel_tool_calls':false,'stop':null,'user':'','seed':5,'metadata':{'a':'b'},"
		"'frequency_penalty':0.5,'unknown':{'deep':[1,2,{'x':null}]},'stream':null,"
		"'temperature':null,'top_p':null,'max_tokens':null}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'stop':[],'user':5,"
		"'logprobs':'yes'}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'stop':['']}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'stop':''}",
	};
	static const char *const declined[] = {
		/* not the usual shape: the full path translates it */
		"{'model':'m','messages':[{'role':'user','content':[{'type':'image_url','image_url':"
		"{'url':'https://x/y.png'}}]}]}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'tools':[{'type':'function',"
		"'function':{'name':'f'}}]}",
		"{'model':'m','messages':[{'role':'user','content':'x'},{'role':'assistant',"
		"'tool_calls':[{'id':'c','type':'function','function':{'name':'f','arguments':'{}'}}]},"
		"{'role':'tool','tool_call_id':'c','content':'r'}]}",
		"{'model':'m','messages':[{'role':'user','content':'x'},{'role':'assistant',"
		"'content':'y','tool_calls':[]}]}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'response_format':{'type':"
		"'text'},'modalities':['text']}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'max_tokens':1000000000000000000}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'temperature':1e-3}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'x':" /* deep */
		"[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]}",
		"{'mod\\u0065l':'m','messages':[{'role':'user','content':'x'}]}",
		"{'model':'m','messages':[{'role':'us\\u0065r','content':'x'}]}",
		"{'model':'m','messages':[{'role':'user','content':[{'type':'t\\u0065xt','text':'x'}]}]}",
		"\xef\xbb\xbf{'model':'m','messages':[{'role':'user','content':'x'}]}",
		/* refused: the full path's message */
		"{'model':'m','messages':[{'role':'user','content':'x'}],'n':2}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'logprobs':true}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'audio':{}}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'functions':[]}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'web_search_options':{}}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'response_format':"
		"{'type':'json_object'}}",
		"{'model':'m','messages':[]}",
		"{'model':'m'}",
		"{'model':'m','messages':{}}",
		"{'model':'m','messages':[{'role':'system','content':'s'}]}",
		"{'model':'m','messages':[{'role':'user','content':''}]}",
		"{'model':'m','messages':[{'role':'assistant','content':'a'},{'role':'user',"
		"'content':'u'}]}",
		"{'model':'m','messages':[{'role':'function','content':'x'}]}",
		"{'model':'m','messages':[{'content':'x'}]}",
		"{'model':'m','messages':[5]}",
		"{'model':'m','messages':[{'role':'user','content':5}]}",
		"{'model':'m','messages':[{'role':'system','content':[{'type':'text','text':5}]}]}",
		"{'model':'m','messages':[{'role':'user','content':[{'type':'refusal','refusal':'r'}]}]}",
		"{'model':'m','messages':[{'role':'assistant','content':'a','function_call':{}}]}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'max_tokens':0}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'max_tokens':-1}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'max_tokens':-0}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'max_tokens':1.0}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'max_completion_tokens':'5'}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'max_tokens':9223372036854775808}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'temperature':'hot'}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'top_p':true}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'stream':'yes'}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'stop':['a',1]}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'stop':5}",
		/* not JSON, or not what jansson loads */
		"{'model':'m','messages':[{'role':'user','content':'x'}],}",
		"{'model':'m','messages':[{'role':'user','content':'\\ud800'}]}",
		"{'model':'m','messages':[{'role':'user','content':'\xc3'}]}",
		"{'model':'m','messages':[{'role':'user','content':'x'}]} x",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'t':01}",
		"[1]",
		"",
	};
	expect_requests(OA, AN, fast, N(fast), declined, N(declined));
}

static void test_request_fast_an(void **state)
{
	static const char *const fast[] = {
		"{'model':'claude','max_tokens':256,'system':'Be brief.','messages':[{'role':'user',"
		"'content':'Hi'},{'role':'assistant','content':'Hello!'},{'role':'user','content':"
		"'Why?'}],'temperature':0.7,'top_p':0.9,'top_k':40,'stop_sequences':['END','\\n'],"
		"'metadata':{'user_id':'u-1'},'stream':true}",
		"{'model':" TEXTS ",'max_tokens':1,'system':" TEXTS ",'messages':[{'role':'user',"
		"'content':" TEXTS "}],'metadata':{'user_id':" TEXTS "},'stop_sequences':[" TEXTS "]}",
		/* system blocks joined; text blocks joined; thinking dropped; all-empty text */
		"{'model':'m','system':[{'type':'text','text':'s1','cache_control':{'type':'ephemeral'}},"
		"{'type':'text','text':''},{'type':'text','text':'s2'}],'messages':[{'role':'user',"
		"'content':[{'type':'text','text':'a'},{'type':'text','text':''},{'type':'text',"
		"'text':'b'}]},{'role':'assistant','content':[{'type':'thinking','thinking':'hm',"
		"'signature':'s'},{'type':'text','text':'c'},{'type':'redacted_thinking','data':'x'}]},"
		"{'role':'assistant','content':[{'type':'thinking','thinking':'only'}]},{'role':'user',"
		"'content':[{'type':'text','text':''}]},{'role':'assistant','content':[{'type':'text',"
		"'text':''}]},{'role':'user','content':[]},{'role':'user','content':''}]}",
		"{'model':'m','system':'','messages':[{'role':'assistant','content':'a'}]}",
		"{'model':'m','system':[],'messages':[{'role':'user','content':'a'}],'system':null}",
		"{'model':'m','system':'only system','messages':[{'role':'user','content':[]}]}",
		/* reals and integers as jansson writes them back */
		"{'model':'m','messages':[{'role':'user','content':'x'}],'temperature':1,'top_p':-0}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'temperature':0.1,"
		"'top_p':0.30000000000000004}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'temperature':-0.0,"
		"'top_p':0.0000001}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'temperature':1.5,"
		"'top_p':123456789012345678.5,'max_tokens':999999999999999999}",
		/* the last of duplicate keys; whitespace */
		" {\n'model' : 'a' , 'model':'b','messages':[{'role':'user','content':'x','role':"
		"'assistant'}] , 'stream' : true , 'stream':false ,'max_tokens':1,'max_tokens':2}\t",
		/* settings that change nothing, and fields dropped */
		"{'model':'m','messages':[{'role':'user','content':'x'}],'mcp_servers':null,"
		"'container':null,'tools':[],'tool_choice':{'type':'any'},'metadata':{'user_id':''},"
		"'stop_sequences':[],'thinking':{'type':'enabled'},'service_tier':'auto','stream':null,"
		"'max_tokens':null,'temperature':null,'top_p':null,'system':null,'unknown':[{}]}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'metadata':5,'tools':null}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'metadata':{'user_id':7}}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'metadata':{'user_id':'a',"
		"'user_id':'b'}}",
	};
	static const char *const declined[] = {
		"{'model':'m','messages':[{'role':'user','content':[{'type':'image','source':{'type':"
		"'url','url':'https://x/y.png'}}]}]}",
		"{'model':'m','messages':[{'role':'user','content':'x'},{'role':'assistant','content':"
		"[{'type':'tool_use','id':'t','name':'f','input':{}}]},{'role':'user','content':"
		"[{'type':'tool_result','tool_use_id':'t','content':'r'}]}]}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'tools':[{'name':'f',"
		"'input_schema':{}}]}",
		"{'model':'m','messages':[{'role':'user','content':[{'type':'thinkin\\u0067',"
		"'thinking':'x'},{'type':'text','text':'y'}]}]}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'max_tokens':1000000000000000000}",
		/* refused: the full path's message */
		"{'model':'m','messages':[{'role':'user','content':'x'}],'mcp_servers':[]}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'container':'c'}",
		"{'model':'m','messages':[]}",
		"{'model':'m','messages':'x'}",
		"{'model':'m','messages':[{'role':'assistant','content':[{'type':'thinking'}]}]}",
		"{'model':'m','messages':[{'role':'system','content':'x'}]}",
		"{'model':'m','messages':[{'role':'user','content':null}]}",
		"{'model':'m','messages':[{'role':'user'}]}",
		"{'model':'m','messages':[{'role':'user','content':[{'type':'text','text':null}]}]}",
		"{'model':'m','messages':[{'role':'user','content':[5]}]}",
		"{'model':'m','system':5,'messages':[{'role':'user','content':'x'}]}",
		"{'model':'m','system':[{'type':'image'}],'messages':[{'role':'user','content':'x'}]}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'max_tokens':0}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'max_tokens':2.5}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'stop_sequences':'END'}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'stop_sequences':[null]}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'temperature':'0.5'}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'top_p':[]}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'stream':1}",
		"{'model':'m','messages':[{'role':'user','content':'x'}],'temperature':1e400}",
		"{'model':'m','messages':[{'role':'user','content':'x\\q'}]}",
		"{'model':'m','messages':[{'role':'user','content':'x'}]",
	};
	expect_requests(AN, OA, fast, N(fast), declined, N(declined));
}

/* golden: what the fast path writes for the usual request, each way */
static void test_request_fast_golden(void **state)
{
	const struct xlat_request_opts o = { "up", 0, true };
	struct buf out = { 0 };
	char err[128];
	size_t before = loads;
	assert_int_equal(xlat_request(OA, AN, slice_cstr(Q("{'model':'gpt','messages':[{'role':"
		"'system','content':'S'},{'role':'user','content':'a\\u00e9\\/'}],'temperature':0.2,"
		"'stream':true,'max_completion_tokens':9}")), &o, &out, err, sizeof(err)), 0);
	assert_true(buf_append(&out, "", 1, SIZE_MAX));
	assert_string_equal(out.p, "{\"model\":\"up\",\"max_tokens\":9,\"system\":\"S\",\"messages\":"
		"[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\xc3\xa9/\"}]}],"
		"\"temperature\":0.20000000000000001,\"stream\":true}");
	out.len = 0;
	assert_int_equal(xlat_request(AN, OA, slice_cstr(Q("{'model':'c','max_tokens':9,'system':"
		"[{'type':'text','text':'S1'},{'type':'text','text':'S2'}],'messages':[{'role':'user',"
		"'content':'a'}],'temperature':1,'stream':true}")), &o, &out, err, sizeof(err)), 0);
	assert_true(buf_append(&out, "", 1, SIZE_MAX));
	assert_string_equal(out.p, "{\"model\":\"up\",\"messages\":[{\"role\":\"system\",\"content\":"
		"\"S1\\n\\nS2\"},{\"role\":\"user\",\"content\":\"a\"}],\"max_tokens\":9,"
		"\"temperature\":1,\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
	assert_int_equal(loads, before);
	buf_free(&out);
}

static size_t count(const char *hay, const char *needle)
{
	size_t n = 0;
	for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
		n++;
	return n;
}

/* An empty upstream stream still gives the client a complete, empty answer. */
static void test_stream_empty(void **state)
{
	struct buf out = { 0 };
	struct xlat_stream *s = xlat_stream_new(AN, OA, "m", false);
	xlat_stream_end(s, &out);
	assert_true(buf_append(&out, "", 1, SIZE_MAX));
	assert_int_equal(count(out.p, "data: "), 3);
	assert_non_null(strstr(out.p, "\"id\":\"chatcmpl-penstock"));
	assert_non_null(strstr(out.p, "\"role\":\"assistant\""));
	assert_non_null(strstr(out.p, "\"finish_reason\":\"stop\""));
	assert_non_null(strstr(out.p, "data: [DONE]\n\n"));
	xlat_stream_free(s);
	out.len = 0;
	s = xlat_stream_new(OA, AN, "m", false);
	xlat_stream_end(s, &out);
	assert_true(buf_append(&out, "", 1, SIZE_MAX));
	assert_int_equal(count(out.p, "event: "), 3);
	assert_non_null(strstr(out.p, "event: message_start\ndata: {\"type\":\"message_start\","
				      "\"message\":{\"id\":\"msg_penstock"));
	assert_non_null(strstr(out.p, "\"stop_reason\":\"end_turn\""));
	assert_non_null(strstr(out.p, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
	xlat_stream_free(s);
	buf_free(&out);
}

int main(void)
{
#define T(f) cmocka_unit_test_teardown(f, release)
	const struct CMUnitTest tests[] = {
		T(test_oa_request_basic),     T(test_oa_request_max_tokens), T(test_oa_request_parts),
		T(test_oa_request_tools),     T(test_oa_request_tool_loop),  T(test_oa_request_refused),
		T(test_escaping),             T(test_same_dialect_bodies),
		T(test_an_request_basic),     T(test_an_request_blocks),     T(test_an_request_tools),
		T(test_an_request_refused),   T(test_request_round_trip),    T(test_oa_response),
		T(test_an_response),          T(test_stop_reasons),          T(test_bad_responses),
		T(test_response_usage),       T(test_errors),                T(test_gateway_errors),
		T(test_stream_oa_to_an),      T(test_stream_oa_to_an_truncated),
		T(test_stream_an_to_oa),      T(test_stream_errors),         T(test_stream_refused_events),
		T(test_stream_same_dialect),  T(test_stream_empty),         T(test_stream_fast_texts),
		T(test_stream_fast_ends),      T(test_stream_fast_oa_ends),
		T(test_stream_fast_opening),     T(test_response_fast),
		T(test_request_fast_oa),       T(test_request_fast_an),      T(test_request_fast_golden),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
