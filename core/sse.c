/* sse.c - incremental server-sent events parser; the contract is in sse.h. */
#include "sse.h"

#include <emmintrin.h>
#include <string.h>

void sse_init(struct sse_parser *p, size_t max_event_bytes)
{
	*p = (struct sse_parser){ .max = max_event_bytes, .retry = -1 };
}

void sse_free(struct sse_parser *p)
{
	buf_free(&p->line);
	buf_free(&p->data);
	buf_free(&p->type);
	buf_free(&p->id);
}

static void event_reset(struct sse_parser *p)
{
	p->ndata = 0;
	p->data.len = 0;
	p->data_copied = false;
	p->pend_data = (struct slice){ NULL, 0 };
	p->type.len = 0;
	p->type_copied = false;
	p->pend_type = (struct slice){ NULL, 0 };
	p->retry = -1;
	p->event_bytes = 0;
	p->ev_in_frag = false;
}

static int fail(struct sse_parser *p, int err)
{
	p->failed = true;
	return err;
}

/* Move the data held as a slice of the current fragment into the parser's buffer. */
static bool data_to_buffer(struct sse_parser *p)
{
	if (p->data_copied)
		return true;
	p->data.len = 0;
	p->data_copied = true;
	return buf_append(&p->data, p->pend_data.p, p->pend_data.n, p->max);
}

static bool type_to_buffer(struct sse_parser *p)
{
	if (p->type_copied || !p->pend_type.p)
		return true;
	p->type.len = 0;
	p->type_copied = true;
	return buf_append(&p->type, p->pend_type.p, p->pend_type.n, p->max);
}

static int dispatch(struct sse_parser *p, sse_event_fn fn, void *arg)
{
	if (p->ndata == 0) { /* no data line: the spec drops the event */
		event_reset(p);
		return SSE_OK;
	}
	struct sse_event ev = {
		.type = p->type_copied ? slice_of(p->type.p, p->type.len) : p->pend_type,
		.data = p->data_copied ? slice_of(p->data.p, p->data.len) : p->pend_data,
		.id = slice_of(p->id.p, p->id.len),
		.retry = p->retry,
		.has_id = p->has_id,
		.raw_in_frag = p->ev_in_frag,
		.raw_start = p->ev_in_frag ? p->ev_start : 0,
		.raw_end = p->ev_in_frag ? p->line_end : 0,
	};
	if (!ev.type.p)
		ev.type = (struct slice){ "", 0 };
	if (!ev.data.p)
		ev.data = (struct slice){ "", 0 };
	if (!ev.id.p)
		ev.id = (struct slice){ "", 0 };
	bool go_on = fn(arg, &ev);
	event_reset(p);
	return go_on ? SSE_OK : SSE_STOPPED;
}

static bool all_digits(struct slice s)
{
	if (!s.n || s.n > 18)
		return false;
	for (size_t i = 0; i < s.n; i++)
		if (s.p[i] < '0' || s.p[i] > '9')
			return false;
	return true;
}

/* One line, without its ending. in_frag: the line lies in the caller's fragment (its
 * slices stay valid until the fragment ends); otherwise it is in p->line. */
static int process_line(struct sse_parser *p, struct slice line, bool in_frag, sse_event_fn fn,
			void *arg)
{
	if (line.n > p->max) /* as a line gathered across fragments would be */
		return fail(p, SSE_E_TOO_LONG);
	if (!p->started) {
		p->started = true;
		if (line.n >= 3 && memcmp(line.p, "\xEF\xBB\xBF", 3) == 0) {
			line.p += 3;
			line.n -= 3;
		}
	}
	if (line.n == 0)
		return dispatch(p, fn, arg);
	if (line.p[0] == ':')
		return SSE_OK; /* comment */
	if (p->event_bytes == 0) { /* the event's first field line */
		p->ev_in_frag = in_frag;
		p->ev_start = in_frag ? (size_t)(line.p - p->frag) : 0;
	}
	p->event_bytes += line.n + 1;
	if (p->event_bytes > p->max)
		return fail(p, SSE_E_TOO_LONG);

	const char *colon = memchr(line.p, ':', line.n);
	struct slice name = line, value = { line.p + line.n, 0 };
	if (colon) {
		name.n = (size_t)(colon - line.p);
		value = (struct slice){ colon + 1, line.n - name.n - 1 };
		if (value.n && value.p[0] == ' ') {
			value.p++;
			value.n--;
		}
	}

	if (slice_eq_cstr(name, "data")) {
		if (++p->ndata == 1 && in_frag) {
			p->pend_data = value;
			return SSE_OK;
		}
		if (!data_to_buffer(p) || (p->ndata > 1 && !buf_append(&p->data, "\n", 1, p->max)) ||
		    !buf_append(&p->data, value.p, value.n, p->max))
			return fail(p, SSE_E_NOMEM);
	} else if (slice_eq_cstr(name, "event")) {
		p->type.len = 0;
		if (in_frag) {
			p->pend_type = value;
			p->type_copied = false;
		} else {
			p->pend_type = (struct slice){ NULL, 0 };
			p->type_copied = true;
			if (!buf_append(&p->type, value.p, value.n, p->max))
				return fail(p, SSE_E_NOMEM);
		}
	} else if (slice_eq_cstr(name, "id")) {
		if (!memchr(value.p, '\0', value.n)) {
			p->id.len = 0;
			if (!buf_append(&p->id, value.p, value.n, p->max))
				return fail(p, SSE_E_NOMEM);
			p->has_id = true;
		}
	} else if (slice_eq_cstr(name, "retry")) {
		if (all_digits(value)) {
			int64_t r = 0;
			for (size_t i = 0; i < value.n; i++)
				r = r * 10 + (value.p[i] - '0');
			p->retry = r;
		}
	}
	return SSE_OK;
}

/* The first CR or LF in s[0..n), or NULL: one pass, 16 bytes at a time (two memchr
 * calls read a data line twice). */
static const char *find_eol(const char *s, size_t n)
{
	const __m128i lf = _mm_set1_epi8('\n'), cr = _mm_set1_epi8('\r');
	size_t i = 0;
	for (; i + 16 <= n; i += 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
		unsigned m = (unsigned)_mm_movemask_epi8(
			_mm_or_si128(_mm_cmpeq_epi8(v, lf), _mm_cmpeq_epi8(v, cr)));
		if (m)
			return s + i + __builtin_ctz(m);
	}
	for (; i < n; i++)
		if (s[i] == '\n' || s[i] == '\r')
			return s + i;
	return NULL;
}

/* A whole event at frag[i..len) in the shape providers send, "data: D\n\n" or
 * "event: T\ndata: D\n\n" (LF endings, one data line), dispatched without the line
 * machinery: what the general rules make of it, at a fraction of the cost. Returns the
 * offset just past it, or 0 when the bytes there are anything else (the general parser
 * takes them). Only called between events. */
static size_t fast_event(struct sse_parser *p, const char *frag, size_t i, size_t len,
			 sse_event_fn fn, void *arg, int *rc)
{
	size_t start = i;
	struct slice type = { "", 0 };
	if (len - i > 7 && memcmp(frag + i, "event: ", 7) == 0) {
		const char *eol = find_eol(frag + i + 7, len - i - 7);
		if (!eol || *eol != '\n')
			return 0;
		type = slice_of(frag + i + 7, (size_t)(eol - (frag + i + 7)));
		i = (size_t)(eol - frag) + 1;
	}
	if (len - i <= 6 || memcmp(frag + i, "data: ", 6) != 0)
		return 0;
	const char *eol = find_eol(frag + i + 6, len - i - 6);
	if (!eol || *eol != '\n' || eol + 1 == frag + len || eol[1] != '\n')
		return 0;
	size_t end = (size_t)(eol - frag) + 2;
	if (end - start > p->max)
		return 0; /* the general parser says why */
	struct sse_event ev = {
		.type = type,
		.data = slice_of(frag + i + 6, (size_t)(eol - (frag + i + 6))),
		.id = p->id.p ? slice_of(p->id.p, p->id.len) : (struct slice){ "", 0 },
		.retry = -1,
		.has_id = p->has_id,
		.raw_in_frag = true,
		.raw_start = start,
		.raw_end = end,
	};
	*rc = fn(arg, &ev) ? SSE_OK : SSE_STOPPED;
	return end;
}

int sse_feed(struct sse_parser *p, const char *frag, size_t len, sse_event_fn fn, void *arg)
{
	if (p->failed)
		return SSE_E_TOO_LONG;
	size_t i = 0;
	p->frag = frag;
	if (p->after_cr && len && frag[0] == '\n')
		i = 1; /* the LF of a CRLF split across fragments */
	if (!p->started && p->line.len == 0 && len && (unsigned char)frag[0] != 0xEF)
		p->started = true; /* no BOM: the first event may take the fast path too */
	if (len)
		p->after_cr = false;
	int rc = SSE_OK;
	while (i < len) {
		if (p->event_bytes == 0 && p->line.len == 0 && p->started) { /* between events */
			size_t end = fast_event(p, frag, i, len, fn, arg, &rc);
			if (end) {
				if (rc != SSE_OK)
					return rc;
				i = end;
				continue;
			}
		}
		const char *eol = find_eol(frag + i, len - i);
		if (!eol) { /* the line goes on in the next fragment */
			if (!buf_append(&p->line, frag + i, len - i, p->max))
				return fail(p, p->line.len + (len - i) > p->max ? SSE_E_TOO_LONG : SSE_E_NOMEM);
			break;
		}
		size_t j = (size_t)(eol - frag);
		struct slice line = { frag + i, j - i };
		bool in_frag = p->line.len == 0;
		if (!in_frag) {
			if (!buf_append(&p->line, frag + i, j - i, p->max))
				return fail(p, SSE_E_TOO_LONG);
			line = slice_of(p->line.p, p->line.len);
		}
		p->line_end = j + 1 + (frag[j] == '\r' && j + 1 < len && frag[j + 1] == '\n');
		rc = process_line(p, line, in_frag, fn, arg);
		p->line.len = 0;
		if (frag[j] == '\r') {
			if (j + 1 < len && frag[j + 1] == '\n')
				j++;
			else if (j + 1 == len)
				p->after_cr = true;
		}
		if (rc != SSE_OK)
			return rc;
		i = j + 1;
	}
	/* Slices into this fragment die with it: keep what the next event still needs. */
	p->ev_in_frag = false;
	p->frag = NULL;
	if (p->ndata && !data_to_buffer(p))
		return fail(p, SSE_E_NOMEM);
	if (!type_to_buffer(p))
		return fail(p, SSE_E_NOMEM);
	return rc;
}

bool sse_between_events(const struct sse_parser *p)
{
	return !p->failed && p->started && !p->after_cr && p->event_bytes == 0 && p->line.len == 0;
}
