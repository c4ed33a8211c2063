// common.mjs - what the SDK case scripts share: the prompt, the tool result, and how a
// result or an error is printed.

export const PROMPT = 'What is the weather in Paris?';
export const TOOL_RESULT = 'Sunny, 21 degrees';
export const MAX_TOKENS = 12;

// The SDK error classes e is an instance of (sdk: the SDK's default export).
export function errorInfo(e, sdk) {
	return {
		class: e.constructor.name,
		status: e.status ?? null,
		api_error: e instanceof sdk.APIError,
		rate_limit: e instanceof sdk.RateLimitError,
		internal: e instanceof sdk.InternalServerError,
		authentication: e instanceof sdk.AuthenticationError,
		not_found: e instanceof sdk.NotFoundError,
		bad_request: e instanceof sdk.BadRequestError,
		body: e.error ?? null,
		message: String(e.message),
	};
}

export async function run(cases, name, describeError) {
	const fn = cases[name];
	if (!fn) {
		console.log(JSON.stringify({ usage: 'CASE is one of ' + Object.keys(cases).join(', ') }));
		process.exit(2);
	}
	let out;
	try {
		out = { result: await fn() };
	} catch (e) {
		out = { error: describeError(e) };
	}
	console.log(JSON.stringify(out));
}
