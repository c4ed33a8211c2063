/* json.c - structural JSON scanning without allocation. */
#include "json.h"

#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define JSON_MAX_DEPTH 64

struct scan {
	const char *p, *end;
};

static void skip_ws(struct scan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

/* Strings are most of a chat request's bytes (the prompt), so this is the scanner's hot
 * loop: SSE2 (x86-64's baseline) looks at 16 bytes per step. */
/* s->p at the opening quote; leaves it after the closing one. */
static bool skip_string(struct scan *s)
{
	const char *p = s->p + 1;
	for (;;) {
		p = json_string_stop(p, s->end);
		if (p >= s->end || (unsigned char)*p < 0x20)
			return false;
		if (*p == '"') {
			s->p = p + 1;
			return true;
		}
		p += 2; /* a backslash and the byte it escapes */
	}
}

static bool skip_scalar(struct scan *s)
{
	const char *start = s->p;
	while (s->p < s->end) {
		char c = *s->p;
		if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || c == '-' || c == '+' ||
		    c == '.' || c == 'E')
			s->p++;
		else
			break;
	}
	return s->p > start;
}

/* Skip one value of any type, nesting bounded. */
static bool skip_value(struct scan *s)
{
	char stack[JSON_MAX_DEPTH];
	int depth = 0;
	for (;;) {
		skip_ws(s);
		if (s->p >= s->end)
			return false;
		char c = *s->p;
		if (c == '{' || c == '[') {
			if (depth == JSON_MAX_DEPTH)
				return false;
			stack[depth++] = c == '{' ? '}' : ']';
			s->p++;
			skip_ws(s);
			if (s->p < s->end && *s->p == stack[depth - 1]) {
				s->p++;
				depth--;
				goto after_value;
			}
			if (c == '{')
				goto key;
			continue;
		}
		if (c == '"') {
			if (!skip_string(s))
				return false;
		} else if (!skip_scalar(s)) {
			return false;
		}
after_value:
		for (;;) {
			if (depth == 0)
				return true;
			skip_ws(s);
			if (s->p >= s->end)
				return false;
			if (*s->p == stack[depth - 1]) {
				s->p++;
				depth--;
				continue;
			}
			if (*s->p != ',')
				return false;
			s->p++;
			if (stack[depth - 1] == '}')
				goto key;
			break; /* next array element */
		}
		continue;
key:
		skip_ws(s);
		if (s->p >= s->end || *s->p != '"' || !skip_string(s))
			return false;
		skip_ws(s);
		if (s->p >= s->end || *s->p != ':')
			return false;
		s->p++;
	}
}

int json_scan_object(struct slice text, const char *const *keys, struct slice *vals, unsigned nkeys)
{
	for (unsigned i = 0; i < nkeys; i++)
		vals[i] = (struct slice){ NULL, 0 };
	if (!text.p) /* an absent value (a scan's NULL slice) is not an object */
		return -1;
	struct scan s = { text.p, text.p + text.n };
	skip_ws(&s);
	if (s.p >= s.end || *s.p != '{')
		return -1;
	s.p++;
	skip_ws(&s);
	if (s.p < s.end && *s.p == '}') {
		s.p++;
		goto end;
	}
	for (;;) {
		skip_ws(&s);
		if (s.p >= s.end || *s.p != '"')
			return -1;
		const char *k = s.p + 1;
		if (!skip_string(&s))
			return -1;
		struct slice key = { k, (size_t)(s.p - 1 - k) };
		skip_ws(&s);
		if (s.p >= s.end || *s.p != ':')
			return -1;
		s.p++;
		skip_ws(&s);
		const char *v = s.p;
		if (!skip_value(&s))
			return -1;
		for (unsigned i = 0; i < nkeys; i++)
			if (slice_eq_cstr(key, keys[i]))
				vals[i] = (struct slice){ v, (size_t)(s.p - v) };
		skip_ws(&s);
		if (s.p < s.end && *s.p == ',') {
			s.p++;
			continue;
		}
		if (s.p < s.end && *s.p == '}') {
			s.p++;
			break;
		}
		return -1;
	}
end:
	skip_ws(&s);
	return s.p == s.end ? 0 : -1;
}

bool json_array_begin(struct json_iter *it, struct slice array)
{
	if (!array.p) /* an absent value (a scan's NULL slice) is not an array */
		return false;
	struct scan s = { array.p, array.p + array.n };
	skip_ws(&s);
	if (s.p >= s.end || *s.p != '[')
		return false;
	*it = (struct json_iter){ s.p + 1, s.end, true };
	return true;
}

int json_array_next(struct json_iter *it, struct slice *elem)
{
	struct scan s = { it->p, it->end };
	skip_ws(&s);
	if (s.p >= s.end)
		return -1;
	if (*s.p == ']') {
		it->p = s.p; /* stays at the end */
		return 0;
	}
	if (!it->first) {
		if (*s.p != ',')
			return -1;
		s.p++;
		skip_ws(&s);
	}
	const char *v = s.p;
	if (!skip_value(&s))
		return -1;
	*elem = (struct slice){ v, (size_t)(s.p - v) };
	it->p = s.p;
	it->first = false;
	return 1;
}

bool json_is_true(struct slice v) { return slice_eq_cstr(v, "true"); }
bool json_is_null(struct slice v) { return slice_eq_cstr(v, "null"); }

bool json_plain_string(struct slice v, struct slice *out)
{
	if (v.n < 2 || v.p[0] != '"' || v.p[v.n - 1] != '"')
		return false;
	if (memchr(v.p + 1, '\\', v.n - 2))
		return false;
	*out = (struct slice){ v.p + 1, v.n - 2 };
	return true;
}

bool json_int(struct slice v, int64_t *out)
{
	size_t i = 0;
	bool neg = false;
	if (v.n && v.p[0] == '-') {
		neg = true;
		i = 1;
	}
	if (i == v.n || v.n - i > 18)
		return false;
	int64_t x = 0;
	for (; i < v.n; i++) {
		if (v.p[i] < '0' || v.p[i] > '9')
			return false;
		x = x * 10 + (v.p[i] - '0');
	}
	*out = neg ? -x : x;
	return true;
}

size_t json_escape(char *out, size_t cap, struct slice s)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = 0;
	for (size_t i = 0; i < s.n; i++) {
		unsigned char c = (unsigned char)s.p[i];
		char esc = 0;
		switch (c) {
		case '"': esc = '"'; break;
		case '\\': esc = '\\'; break;
		case '\n': esc = 'n'; break;
		case '\r': esc = 'r'; break;
		case '\t': esc = 't'; break;
		default: break;
		}
		if (esc) {
			if (n + 2 > cap)
				return 0;
			out[n++] = '\\';
			out[n++] = esc;
		} else if (c < 0x20) {
			if (n + 6 > cap)
				return 0;
			memcpy(out + n, "\\u00", 4);
			out[n + 4] = hex[c >> 4];
			out[n + 5] = hex[c & 15];
			n += 6;
		} else {
			if (n + 1 > cap)
				return 0;
			out[n++] = (char)c;
		}
	}
	return n;
}
