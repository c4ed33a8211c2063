// openai.mjs CASE - one case with the official `openai` SDK; prints one JSON line.
//
// env: PENSTOCK_BASE_URL (the server root; /v1 is added here), PENSTOCK_KEY, PENSTOCK_MODEL,
//      PENSTOCK_HEADERS (optional JSON object of extra request headers, e.g. x-mock-status)
// CASE: text | stream | tool | tool_stream | tool_flow  (see README.md)
// A thrown SDK error prints {"error": {...}} with the class it is an instance of; any
// result exits 0, so the caller judges it.
import OpenAI from 'openai';
import { TOOL_RESULT, MAX_TOKENS, PROMPT, errorInfo, run } from './common.mjs';

const client = new OpenAI({
	baseURL: process.env.PENSTOCK_BASE_URL + '/v1',
	apiKey: process.env.PENSTOCK_KEY,
	maxRetries: 0,
	timeout: 20000,
	defaultHeaders: JSON.parse(process.env.PENSTOCK_HEADERS || '{}'),
});
const model = process.env.PENSTOCK_MODEL;
const tools = [{
	type: 'function',
	function: {
		name: 'get_weather',
		description: 'The weather in a city',
		parameters: {
			type: 'object',
			properties: { city: { type: 'string' }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
			required: ['city'],
		},
	},
}];
const forced = { type: 'function', function: { name: 'get_weather' } };
const ask = [{ role: 'user', content: PROMPT }];

function calls(message) {
	return (message.tool_calls || []).map((c) => ({ id: c.id, name: c.function.name, args: JSON.parse(c.function.arguments) }));
}

function summary(c) {
	const choice = c.choices[0];
	return { model: c.model, text: choice.message.content, finish: choice.finish_reason, calls: calls(choice.message),
		 usage: c.usage && { input: c.usage.prompt_tokens, output: c.usage.completion_tokens } };
}

const cases = {
	async text() {
		return summary(await client.chat.completions.create({ model, messages: ask, max_completion_tokens: MAX_TOKENS }));
	},
	async stream() {
		const s = await client.chat.completions.create({ model, messages: ask, max_completion_tokens: MAX_TOKENS, stream: true,
								 stream_options: { include_usage: true } });
		let text = '', finish = null, usage = null, model_seen = null, chunks = 0;
		for await (const chunk of s) {
			chunks++;
			model_seen = chunk.model;
			for (const choice of chunk.choices) {
				text += choice.delta.content || '';
				finish = choice.finish_reason || finish;
			}
			if (chunk.usage)
				usage = { input: chunk.usage.prompt_tokens, output: chunk.usage.completion_tokens };
		}
		return { model: model_seen, text, finish, usage, chunks };
	},
	async tool() {
		return summary(await client.chat.completions.create({ model, messages: ask, tools, tool_choice: forced }));
	},
	async tool_stream() {
		// the SDK's own stream helper accumulates the argument deltas of each call
		const s = client.chat.completions.stream({ model, messages: ask, tools, tool_choice: 'auto',
							   stream_options: { include_usage: true } });
		return summary(await s.finalChatCompletion());
	},
	async tool_flow() {
		const first = await client.chat.completions.create({ model, messages: ask, tools, tool_choice: forced });
		const msg = first.choices[0].message;
		const messages = [...ask, msg, ...msg.tool_calls.map((c) => ({ role: 'tool', tool_call_id: c.id, content: TOOL_RESULT }))];
		const second = await client.chat.completions.create({ model, messages, tools });
		return { first: summary(first), ...summary(second) };
	},
};

run(cases, process.argv[2], (e) => errorInfo(e, OpenAI));
