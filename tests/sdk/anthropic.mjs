// anthropic.mjs CASE - one case with the official `@anthropic-ai/sdk`; prints one JSON line.
//
// env: PENSTOCK_BASE_URL (the server root), PENSTOCK_KEY, PENSTOCK_MODEL, PENSTOCK_HEADERS
//      (optional JSON object of extra request headers), PENSTOCK_ANTHROPIC_SDK: "1" (default:
//      the current 1.x, which sends the key as Authorization: Bearer) or "0" (the 0.x line,
//      installed as anthropic-sdk-0, which sends x-api-key with anthropic-version 2023-06-01)
// CASE: text | stream | tool | tool_stream | tool_flow  (see README.md)
import { TOOL_RESULT, MAX_TOKENS, PROMPT, errorInfo, run } from './common.mjs';

const line = process.env.PENSTOCK_ANTHROPIC_SDK || '1';
const { default: Anthropic } = await import(line === '0' ? 'anthropic-sdk-0' : '@anthropic-ai/sdk');
const client = new Anthropic({
	baseURL: process.env.PENSTOCK_BASE_URL,
	apiKey: process.env.PENSTOCK_KEY,
	maxRetries: 0,
	timeout: 20000,
	defaultHeaders: JSON.parse(process.env.PENSTOCK_HEADERS || '{}'),
});
const model = process.env.PENSTOCK_MODEL;
const tools = [{
	name: 'get_weather',
	description: 'The weather in a city',
	input_schema: {
		type: 'object',
		properties: { city: { type: 'string' }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
		required: ['city'],
	},
}];
const forced = { type: 'tool', name: 'get_weather' };
const ask = [{ role: 'user', content: PROMPT }];
const max_tokens = MAX_TOKENS;

function summary(m) {
	const text = m.content.filter((b) => b.type === 'text').map((b) => b.text).join('');
	const calls = m.content.filter((b) => b.type === 'tool_use').map((b) => ({ id: b.id, name: b.name, args: b.input }));
	return { model: m.model, text, finish: m.stop_reason, stop_sequence: m.stop_sequence, calls,
		 usage: { input: m.usage.input_tokens, output: m.usage.output_tokens } };
}

// The SDK's stream helper: it checks the event order and accumulates text and
// input_json deltas into the final message.
async function streamed(params) {
	const s = client.messages.stream(params);
	const events = [];
	let deltas = '';
	for await (const ev of s) {
		events.push(ev.type);
		if (ev.type === 'content_block_delta' && ev.delta.type === 'text_delta')
			deltas += ev.delta.text;
	}
	return { ...summary(await s.finalMessage()), deltas, events };
}

const cases = {
	async text() {
		return summary(await client.messages.create({ model, max_tokens, messages: ask }));
	},
	async stream() {
		return streamed({ model, max_tokens, messages: ask });
	},
	async tool() {
		return summary(await client.messages.create({ model, max_tokens: 256, messages: ask, tools, tool_choice: forced }));
	},
	async tool_stream() {
		return streamed({ model, max_tokens: 256, messages: ask, tools, tool_choice: { type: 'auto' } });
	},
	async tool_flow() {
		const first = await client.messages.create({ model, max_tokens: 256, messages: ask, tools, tool_choice: forced });
		const results = first.content.filter((b) => b.type === 'tool_use')
			.map((b) => ({ type: 'tool_result', tool_use_id: b.id, content: TOOL_RESULT }));
		const messages = [...ask, { role: 'assistant', content: first.content }, { role: 'user', content: results }];
		const second = await client.messages.create({ model, max_tokens: 256, messages, tools });
		return { first: summary(first), ...summary(second) };
	},
};

run(cases, process.argv[2], (e) => errorInfo(e, Anthropic));
