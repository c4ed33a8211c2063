/* http1.c - zero-copy HTTP/1.1 head parser and chunked decoder; the contract is in http1.h.
 *
 * The head parser is stateless: every call rescans buf from the start, so the answer for a
 * prefix of a message is always HTTP1_INCOMPLETE or the answer for the whole message. Errors
 * are positional (the first offending byte decides), and checks that need the whole head
 * (framing, keep-alive) run only once the final CRLF has been seen.
 *
 * The hot loops (request-target and field values) go through a scanner picked by
 * http1_init(): AVX2, SSE4.2 or scalar. Scanners never read at or past `end`.
 */
#include "http1.h"

#include <assert.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define HTTP1_X86 1
#include <immintrin.h>
#endif

/* RFC 9112 chunk-size lines and trailer sections have no natural bound: this is ours. */
#define CHUNK_LINE_MAX 4096u
#define CHUNK_TRAILER_MAX 4096u

/* ---- character classes ---------------------------------------------------------------- */

/* tchar (RFC 9110 5.6.2): the characters of methods, field names and transfer codings. */
static const unsigned char tchar[256] = {
	['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1,
	['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1,
	['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
};

static inline bool is_tchar(char c) { return tchar[(unsigned char)c]; }
static inline bool is_ows(char c) { return c == ' ' || c == '\t'; }
static inline bool is_digit(char c) { return (unsigned)(c - '0') < 10u; }

/* field-vchar / SP / HTAB / obs-text: everything but CTLs other than HTAB, and DEL. */
static inline bool is_value_char(char c)
{
	unsigned char u = (unsigned char)c;
	return (u >= 0x20 && u != 0x7f) || u == '\t';
}

/* Bytes allowed in a request-target: visible ASCII and, leniently, obs-text (raw UTF-8
 * paths exist in the wild). SP ends the target; CTLs and DEL are errors. */
static inline bool is_target_char(char c)
{
	unsigned char u = (unsigned char)c;
	return u > 0x20 && u != 0x7f;
}

static inline char ascii_lower(char c) { return (unsigned)(c - 'A') < 26u ? (char)(c + 32) : c; }

/* Case-insensitive comparison against a lowercase literal. */
static bool ieq(struct slice s, const char *lower, size_t n)
{
	if (s.n != n)
		return false;
	for (size_t i = 0; i < n; i++)
		if (ascii_lower(s.p[i]) != lower[i])
			return false;
	return true;
}

#define IEQ(s, lit) ieq((s), (lit), sizeof(lit) - 1)

/* ---- scanners --------------------------------------------------------------------------- */

/* A scanner returns the first byte in [p, end) that stops the scan, or end. */
typedef const char *scan_fn(const char *p, const char *end);

struct scanners {
	const char *name;
	scan_fn *value;  /* stops at a byte that is not is_value_char (CR, in a good message) */
	scan_fn *target; /* stops at a byte that is not is_target_char (SP, in a good message) */
};

/* Methods and field names are short (10-20 bytes): a table loop beats SIMD set-up here,
 * measured on the chat-completions head (AVX2 nibble lookup: 95 -> 117 ns). */
static const char *token_scan_scalar(const char *p, const char *end)
{
	while (p < end && is_tchar(*p))
		p++;
	return p;
}

static const char *value_scan_scalar(const char *p, const char *end)
{
	while (p < end && is_value_char(*p))
		p++;
	return p;
}

static const char *target_scan_scalar(const char *p, const char *end)
{
	while (p < end && is_target_char(*p))
		p++;
	return p;
}

static const struct scanners scanners_scalar = {
	"scalar", value_scan_scalar, target_scan_scalar,
};

#ifdef HTTP1_X86
/* SSE4.2: PCMPESTRI with byte ranges finds the first stop byte in 16. The range strings hold
 * NULs, hence the explicit-length form. */
__attribute__((target("sse4.2")))
static const char *scan_ranges_sse42(const char *p, const char *end, const char *ranges,
				     int nranges)
{
	const __m128i r = _mm_loadu_si128((const __m128i *)ranges);

	while (end - p >= 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)p);
		int i = _mm_cmpestri(r, nranges, v, 16,
				     _SIDD_UBYTE_OPS | _SIDD_CMP_RANGES | _SIDD_LEAST_SIGNIFICANT);
		if (i != 16)
			return p + i;
		p += 16;
	}
	return p;
}

/* Padded to 16 bytes so the range register load stays inside the array. */
static const char value_stop_ranges[16] = "\x00\x08\x0a\x1f\x7f\x7f";
static const char target_stop_ranges[16] = "\x00\x20\x7f\x7f";

__attribute__((target("sse4.2")))
static const char *value_scan_sse42(const char *p, const char *end)
{
	return value_scan_scalar(scan_ranges_sse42(p, end, value_stop_ranges, 6), end);
}

__attribute__((target("sse4.2")))
static const char *target_scan_sse42(const char *p, const char *end)
{
	return target_scan_scalar(scan_ranges_sse42(p, end, target_stop_ranges, 4), end);
}

static const struct scanners scanners_sse42 = {
	"sse4.2", value_scan_sse42, target_scan_sse42,
};

/* AVX2: classify 32 bytes with compares. u <= top is min(u, top) == u (unsigned). */
__attribute__((target("avx2")))
static inline unsigned value_stops_avx2(__m256i v)
{
	__m256i ctl = _mm256_cmpeq_epi8(_mm256_min_epu8(v, _mm256_set1_epi8(0x1f)), v);
	__m256i tab = _mm256_cmpeq_epi8(v, _mm256_set1_epi8('\t'));
	__m256i del = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(0x7f));
	return (unsigned)_mm256_movemask_epi8(_mm256_or_si256(_mm256_andnot_si256(tab, ctl), del));
}

__attribute__((target("avx2")))
static inline unsigned target_stops_avx2(__m256i v)
{
	__m256i ctl = _mm256_cmpeq_epi8(_mm256_min_epu8(v, _mm256_set1_epi8(0x20)), v);
	__m256i del = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(0x7f));
	return (unsigned)_mm256_movemask_epi8(_mm256_or_si256(ctl, del));
}

__attribute__((target("avx2")))
static const char *value_scan_avx2(const char *p, const char *end)
{
	while (end - p >= 32) {
		unsigned m = value_stops_avx2(_mm256_loadu_si256((const __m256i *)p));
		if (m)
			return p + __builtin_ctz(m);
		p += 32;
	}
	return value_scan_scalar(p, end);
}

__attribute__((target("avx2")))
static const char *target_scan_avx2(const char *p, const char *end)
{
	while (end - p >= 32) {
		unsigned m = target_stops_avx2(_mm256_loadu_si256((const __m256i *)p));
		if (m)
			return p + __builtin_ctz(m);
		p += 32;
	}
	return target_scan_scalar(p, end);
}

static const struct scanners scanners_avx2 = {
	"avx2", value_scan_avx2, target_scan_avx2,
};
#endif

/* Written once by http1_init() before workers start; read-only afterwards. */
static const struct scanners *scan = &scanners_scalar;

/* PENSTOCK_HTTP1_SCAN=scalar|sse4.2|avx2 forces a slower path (tests, benchmarks); a path
 * the CPU lacks is never chosen. */
const char *http1_init(void)
{
	const struct scanners *avail[3] = { &scanners_scalar };
	unsigned n = 1;

#ifdef HTTP1_X86
	__builtin_cpu_init();
	if (__builtin_cpu_supports("sse4.2"))
		avail[n++] = &scanners_sse42;
	if (__builtin_cpu_supports("avx2"))
		avail[n++] = &scanners_avx2;
#endif
	scan = avail[n - 1];
	const char *want = getenv("PENSTOCK_HTTP1_SCAN");
	for (unsigned i = 0; want && i < n; i++)
		if (strcmp(want, avail[i]->name) == 0)
			scan = avail[i];
	return scan->name;
}

/* ---- errors ----------------------------------------------------------------------------- */

int http1_error_status(int result)
{
	switch (result) {
	case HTTP1_E_HEADER_TOO_BIG:
		return 431;
	case HTTP1_E_BODY_TOO_BIG:
		return 413;
	case HTTP1_E_VERSION:
		return 505;
	case HTTP1_E_NOT_IMPLEMENTED:
		return 501;
	default:
		return 400;
	}
}

const char *http1_error_text(int result)
{
	switch (result) {
	case HTTP1_INCOMPLETE:
		return "incomplete message";
	case HTTP1_E_BAD:
		return "malformed or ambiguous message";
	case HTTP1_E_HEADER_TOO_BIG:
		return "header section too large";
	case HTTP1_E_BODY_TOO_BIG:
		return "body too large";
	case HTTP1_E_VERSION:
		return "HTTP version not supported";
	case HTTP1_E_NOT_IMPLEMENTED:
		return "transfer coding not implemented";
	default:
		return result >= 0 ? "ok" : "unknown error";
	}
}

/* ---- head lines ------------------------------------------------------------------------- */

/* Expects CRLF at *pp. */
static int expect_crlf(const char **pp, const char *end)
{
	const char *p = *pp;

	if (p == end)
		return HTTP1_INCOMPLETE;
	if (*p != '\r')
		return HTTP1_E_BAD;
	if (p + 1 == end)
		return HTTP1_INCOMPLETE;
	if (p[1] != '\n')
		return HTTP1_E_BAD;
	*pp = p + 2;
	return 0;
}

/* HTTP-version = "HTTP/" DIGIT "." DIGIT. A prefix that still matches is INCOMPLETE, a
 * well-formed version other than 1.0 or 1.1 is HTTP1_E_VERSION. */
static int parse_version(const char **pp, const char *end, int *minor)
{
	static const char pattern[] = "HTTP/9.9"; /* '9' stands for any digit */
	const char *p = *pp;
	size_t avail = (size_t)(end - p) < 8 ? (size_t)(end - p) : 8;

	for (size_t i = 0; i < avail; i++) {
		bool ok = pattern[i] == '9' ? is_digit(p[i]) : p[i] == pattern[i];
		if (!ok)
			return HTTP1_E_BAD;
	}
	if (avail < 8)
		return HTTP1_INCOMPLETE;
	if (p[5] != '1' || (p[7] != '0' && p[7] != '1'))
		return HTTP1_E_VERSION;
	*minor = p[7] - '0';
	*pp = p + 8;
	return 0;
}

/* RFC 9112 2.2: a server SHOULD ignore at least one empty line before the request line. We
 * skip any number: they count against max_header_bytes. */
static int skip_empty_lines(const char **pp, const char *end)
{
	while (*pp < end && **pp == '\r') {
		int r = expect_crlf(pp, end);
		if (r < 0)
			return r;
	}
	return 0;
}

/* request-line = method SP request-target SP HTTP-version CRLF */
static int parse_request_line(const char **pp, const char *end, struct http1_request *req)
{
	const char *p = *pp;
	const char *q = token_scan_scalar(p, end);

	if (q == end)
		return HTTP1_INCOMPLETE;
	if (*q != ' ' || q == p)
		return HTTP1_E_BAD;
	req->method = slice_of(p, (size_t)(q - p));

	p = q + 1;
	q = scan->target(p, end);
	if (q == end)
		return HTTP1_INCOMPLETE;
	if (*q != ' ' || q == p) /* CR here is an HTTP/0.9 request: not supported */
		return HTTP1_E_BAD;
	req->target = slice_of(p, (size_t)(q - p));

	p = q + 1;
	int r = parse_version(&p, end, &req->minor_version);
	if (r < 0)
		return r;
	r = expect_crlf(&p, end);
	if (r < 0)
		return r;
	*pp = p;
	return 0;
}

/* status-line = HTTP-version SP status-code SP [ reason-phrase ] CRLF. We also accept the
 * common "HTTP/1.1 204\r\n" without the second SP. Status codes outside 100..599 are errors. */
static int parse_status_line(const char **pp, const char *end, struct http1_response *res)
{
	const char *p = *pp;
	int r = parse_version(&p, end, &res->minor_version);

	if (r < 0)
		return r;
	for (int i = 0; i < 5; i++) { /* SP, three digits, SP or CR */
		if (p + i == end)
			return HTTP1_INCOMPLETE;
		char c = p[i];
		bool ok = i == 0 ? c == ' ' : i < 4 ? is_digit(c) : (c == ' ' || c == '\r');
		if (!ok)
			return HTTP1_E_BAD;
	}
	res->status = (p[1] - '0') * 100 + (p[2] - '0') * 10 + (p[3] - '0');
	if (res->status < 100 || res->status > 599)
		return HTTP1_E_BAD;

	p += 4;
	if (*p == ' ')
		p++;
	const char *q = scan->value(p, end);
	if (q == end)
		return HTTP1_INCOMPLETE;
	res->reason = slice_of(p, (size_t)(q - p));
	r = expect_crlf(&q, end);
	if (r < 0)
		return r;
	*pp = q;
	return 0;
}

/* field-line = field-name ":" OWS field-value OWS CRLF. No whitespace before the colon and
 * no obs-fold (a line starting with SP/HTAB has an empty name): both are errors. */
static int parse_header_line(const char **pp, const char *end, struct http1_header *h)
{
	const char *p = *pp;
	const char *q = token_scan_scalar(p, end);

	if (q == end)
		return HTTP1_INCOMPLETE;
	if (*q != ':' || q == p)
		return HTTP1_E_BAD;
	h->name = slice_of(p, (size_t)(q - p));

	p = q + 1;
	while (p < end && is_ows(*p))
		p++;
	q = scan->value(p, end);
	if (q == end)
		return HTTP1_INCOMPLETE;
	const char *value_end = q;
	while (value_end > p && is_ows(value_end[-1]))
		value_end--;
	h->value = slice_of(p, (size_t)(value_end - p));
	int r = expect_crlf(&q, end);
	if (r < 0)
		return r;
	*pp = q;
	return 0;
}

/* ---- framing (RFC 9112 6) --------------------------------------------------------------- */

/* What the header fields say about framing and persistence, gathered line by line and
 * judged once the head is complete, so that errors stay positional. */
struct framing {
	int err; /* first field-value error, reported after the head is complete */
	bool has_cl;
	bool has_te;
	bool close;
	bool keep_alive;
	bool expect_continue;
	uint64_t cl;
	unsigned te_codings; /* transfer codings listed across all Transfer-Encoding lines */
	unsigned te_chunked; /* how many of them are "chunked" */
	bool te_last_chunked;
};

/* Next non-empty element of a comma-separated list, OWS trimmed (RFC 9110 5.6.1: recipients
 * accept and ignore empty elements). */
static bool list_next(struct slice *list, struct slice *elem)
{
	while (list->n) {
		const char *comma = memchr(list->p, ',', list->n);
		size_t n = comma ? (size_t)(comma - list->p) : list->n;
		const char *p = list->p;

		list->p += comma ? n + 1 : n;
		list->n -= comma ? n + 1 : n;
		while (n && is_ows(*p))
			p++, n--;
		while (n && is_ows(p[n - 1]))
			n--;
		if (n) {
			*elem = slice_of(p, n);
			return true;
		}
	}
	return false;
}

/* Content-Length = 1*DIGIT. Lists ("5, 5") and values that overflow are rejected; repeated
 * fields must agree. */
static int content_length(struct framing *fr, struct slice v)
{
	uint64_t n = 0;

	if (v.n == 0)
		return HTTP1_E_BAD;
	for (size_t i = 0; i < v.n; i++) {
		if (!is_digit(v.p[i]))
			return HTTP1_E_BAD;
		unsigned d = (unsigned)(v.p[i] - '0');
		if (n > (UINT64_MAX - d) / 10)
			return HTTP1_E_BAD;
		n = n * 10 + d;
	}
	if (fr->has_cl && fr->cl != n)
		return HTTP1_E_BAD;
	fr->has_cl = true;
	fr->cl = n;
	return 0;
}

static void transfer_encoding(struct framing *fr, struct slice v)
{
	struct slice coding;

	fr->has_te = true;
	while (list_next(&v, &coding)) {
		fr->te_codings++;
		fr->te_last_chunked = IEQ(coding, "chunked");
		fr->te_chunked += fr->te_last_chunked;
	}
}

static void connection(struct framing *fr, struct slice v)
{
	struct slice opt;

	while (list_next(&v, &opt)) {
		if (IEQ(opt, "close"))
			fr->close = true;
		else if (IEQ(opt, "keep-alive"))
			fr->keep_alive = true;
	}
}

/* Dispatch on length first: most fields are none of these and cost one switch. */
static void framing_field(struct framing *fr, const struct http1_header *h)
{
	switch (h->name.n) {
	case 6:
		if (IEQ(h->name, "expect") && IEQ(h->value, "100-continue"))
			fr->expect_continue = true;
		break;
	case 10:
		if (IEQ(h->name, "connection"))
			connection(fr, h->value);
		break;
	case 14:
		if (IEQ(h->name, "content-length")) {
			int r = content_length(fr, h->value);
			if (r < 0 && fr->err == 0)
				fr->err = r;
		}
		break;
	case 17:
		if (IEQ(h->name, "transfer-encoding"))
			transfer_encoding(fr, h->value);
		break;
	}
}

/* Checks common to requests and responses. RFC 9112 6.1: TE in an HTTP/1.0 message means
 * faulty framing; chunked applied twice is an error; CL with TE is a smuggling signature. */
static int framing_check(const struct framing *fr, int minor)
{
	if (fr->err)
		return fr->err;
	if (fr->has_cl && fr->has_te)
		return HTTP1_E_BAD;
	if (fr->has_te && (minor == 0 || fr->te_codings == 0 || fr->te_chunked > 1))
		return HTTP1_E_BAD;
	return 0;
}

/* ---- heads ------------------------------------------------------------------------------ */

struct head_limits {
	const char *end;   /* scanning stops here: min(len, max_header_bytes) */
	bool capped;       /* end is the header byte limit, not the end of the data */
	unsigned max_headers;
};

/* A zero limit means none: max_header_bytes 0 is INT_MAX (the result is an int),
 * max_headers 0 leaves only the caller's array, max_body_bytes 0 any Content-Length. */
static struct head_limits head_limits(const char *buf, size_t len, const struct http1_limits *lim,
				      unsigned max_headers)
{
	size_t max_bytes = lim->max_header_bytes && lim->max_header_bytes < INT_MAX ?
				   lim->max_header_bytes : INT_MAX;
	struct head_limits hl = {
		.end = buf + (len < max_bytes ? len : max_bytes),
		.capped = len >= max_bytes,
		.max_headers = max_headers,
	};

	if (lim->max_headers && lim->max_headers < max_headers)
		hl.max_headers = lim->max_headers;
	return hl;
}

/* Header lines up to and including the empty line. */
static int parse_fields(const char **pp, const struct head_limits *hl, struct http1_header *headers,
			unsigned *nheaders, struct framing *fr)
{
	const char *p = *pp;
	unsigned n = 0;

	for (;;) {
		if (p == hl->end)
			return HTTP1_INCOMPLETE;
		if (*p == '\r')
			break;
		if (n == hl->max_headers)
			return HTTP1_E_HEADER_TOO_BIG;
		int r = parse_header_line(&p, hl->end, &headers[n]);
		if (r < 0)
			return r;
		framing_field(fr, &headers[n]);
		n++;
	}
	int r = expect_crlf(&p, hl->end);
	if (r < 0)
		return r;
	*nheaders = n;
	*pp = p;
	return 0;
}

/* A head that does not fit before the byte limit is too big, not incomplete. */
static int head_result(int r, const struct head_limits *hl)
{
	return r == HTTP1_INCOMPLETE && hl->capped ? HTTP1_E_HEADER_TOO_BIG : r;
}

/* Body framing and persistence of a request whose head parsed. */
static int request_framing(const struct framing *fr, const struct http1_limits *lim,
			   struct http1_request *req)
{
	int r = framing_check(fr, req->minor_version);

	if (r < 0)
		return r;
	if (fr->has_te) {
		/* RFC 9112 6.3: chunked must be final, else 400; other codings we cannot undo. */
		if (!fr->te_last_chunked)
			return HTTP1_E_BAD;
		if (fr->te_codings > 1)
			return HTTP1_E_NOT_IMPLEMENTED;
		req->body = HTTP1_BODY_CHUNKED;
	} else if (fr->has_cl) {
		if (lim->max_body_bytes && fr->cl > lim->max_body_bytes)
			return HTTP1_E_BODY_TOO_BIG;
		req->body = HTTP1_BODY_LENGTH;
		req->content_length = fr->cl;
	}
	req->keep_alive = !fr->close && (req->minor_version == 1 || fr->keep_alive);
	req->expect_continue = fr->expect_continue && req->minor_version == 1;
	return 0;
}

int http1_parse_request(const char *buf, size_t len, const struct http1_limits *lim,
			struct http1_request *req, struct http1_header *headers,
			unsigned max_headers)
{
	assert(buf != NULL || len == 0);
	assert(lim != NULL && req != NULL);
	assert(headers != NULL || max_headers == 0);

	*req = (struct http1_request){ .headers = headers };
	if (len == 0) /* buf may be NULL: no pointer arithmetic on it */
		return HTTP1_INCOMPLETE;

	const struct head_limits hl = head_limits(buf, len, lim, max_headers);
	struct framing fr = { 0 };
	const char *p = buf;
	int r = skip_empty_lines(&p, hl.end);

	if (r == 0)
		r = parse_request_line(&p, hl.end, req);
	if (r == 0)
		r = parse_fields(&p, &hl, headers, &req->nheaders, &fr);
	if (r < 0)
		return head_result(r, &hl);
	r = request_framing(&fr, lim, req);
	if (r < 0)
		return r;
	req->head_len = (size_t)(p - buf);
	assert(req->head_len <= len && req->nheaders <= hl.max_headers);
	return (int)req->head_len;
}

static bool status_has_no_body(int status)
{
	return status < 200 || status == 204 || status == 304;
}

/* RFC 9112 6.3: no body whatever the fields say after HEAD and for 1xx/204/304; a final
 * coding other than chunked means the body runs until the server closes. */
static int response_framing(const struct framing *fr, bool request_was_head,
			    struct http1_response *res)
{
	int r = framing_check(fr, res->minor_version);

	if (r < 0)
		return r;
	if (request_was_head || status_has_no_body(res->status)) {
		res->body = HTTP1_BODY_NONE;
	} else if (fr->has_te) {
		res->body = fr->te_last_chunked ? HTTP1_BODY_CHUNKED : HTTP1_BODY_CLOSE;
	} else if (fr->has_cl) {
		res->body = HTTP1_BODY_LENGTH;
		res->content_length = fr->cl;
	} else {
		res->body = HTTP1_BODY_CLOSE;
	}
	res->keep_alive = !fr->close && (res->minor_version == 1 || fr->keep_alive) &&
			  res->body != HTTP1_BODY_CLOSE;
	return 0;
}

int http1_parse_response(const char *buf, size_t len, const struct http1_limits *lim,
			 bool request_was_head, struct http1_response *res,
			 struct http1_header *headers, unsigned max_headers)
{
	assert(buf != NULL || len == 0);
	assert(lim != NULL && res != NULL);
	assert(headers != NULL || max_headers == 0);

	*res = (struct http1_response){ .headers = headers };
	if (len == 0)
		return HTTP1_INCOMPLETE;

	const struct head_limits hl = head_limits(buf, len, lim, max_headers);
	struct framing fr = { 0 };
	const char *p = buf;
	int r = parse_status_line(&p, hl.end, res);

	if (r == 0)
		r = parse_fields(&p, &hl, headers, &res->nheaders, &fr);
	if (r < 0)
		return head_result(r, &hl);
	r = response_framing(&fr, request_was_head, res);
	if (r < 0)
		return r;
	res->head_len = (size_t)(p - buf);
	assert(res->head_len <= len && res->nheaders <= hl.max_headers);
	return (int)res->head_len;
}

const struct http1_header *http1_find_header(const struct http1_header *headers, unsigned n,
					     const char *name)
{
	size_t len = strlen(name);

	for (unsigned i = 0; i < n; i++)
		if (headers[i].name.n == len && strncasecmp(headers[i].name.p, name, len) == 0)
			return &headers[i];
	return NULL;
}

/* ---- chunked decoder (RFC 9112 7.1) ----------------------------------------------------- */

enum chunk_state {
	CH_SIZE = 0,      /* chunk-size digits; a zeroed decoder starts here */
	CH_SIZE_BWS,      /* whitespace after the size: only ";" may follow */
	CH_EXT,           /* chunk-ext up to CR */
	CH_SIZE_LF,
	CH_DATA,
	CH_DATA_CR,
	CH_DATA_LF,
	CH_TRAILER_START, /* a trailer field or the final CRLF */
	CH_TRAILER_NAME,
	CH_TRAILER_VALUE,
	CH_TRAILER_LF,
	CH_FINAL_LF,
	CH_DONE,
	CH_ERR_BAD,
	CH_ERR_TOO_BIG,
};

static int hex_value(char c)
{
	if (is_digit(c))
		return c - '0';
	c = ascii_lower(c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* End of the chunk-size digits (line_bytes of them): the size is known, check it against
 * the body limit. */
static unsigned size_end(struct http1_chunked *d, char c)
{
	if (d->line_bytes == 0)
		return CH_ERR_BAD;
	if (d->max_body && d->remaining > d->max_body - d->total)
		return CH_ERR_TOO_BIG;
	if (c == '\r')
		return CH_SIZE_LF;
	if (c == ';')
		return CH_EXT;
	return is_ows(c) ? CH_SIZE_BWS : CH_ERR_BAD;
}

static unsigned size_digit(struct http1_chunked *d, char c)
{
	int v = hex_value(c);

	if (v < 0)
		return size_end(d, c);
	if (d->remaining > UINT64_MAX >> 4)
		return CH_ERR_BAD;
	d->remaining = d->remaining << 4 | (unsigned)v;
	return CH_SIZE;
}

static unsigned trailer_byte(struct http1_chunked *d, char c)
{
	if (++d->trailer_bytes > CHUNK_TRAILER_MAX)
		return CH_ERR_BAD;
	switch (d->state) {
	case CH_TRAILER_START:
		if (c == '\r')
			return CH_FINAL_LF;
		return is_tchar(c) ? CH_TRAILER_NAME : CH_ERR_BAD; /* SP here is obs-fold */
	case CH_TRAILER_NAME:
		if (c == ':')
			return CH_TRAILER_VALUE;
		return is_tchar(c) ? CH_TRAILER_NAME : CH_ERR_BAD;
	case CH_TRAILER_VALUE:
		if (c == '\r')
			return CH_TRAILER_LF;
		return is_value_char(c) ? CH_TRAILER_VALUE : CH_ERR_BAD;
	case CH_TRAILER_LF:
		return c == '\n' ? CH_TRAILER_START : CH_ERR_BAD;
	default: /* CH_FINAL_LF */
		return c == '\n' ? CH_DONE : CH_ERR_BAD;
	}
}

/* A byte of the chunk-size line, extensions and its CR included. */
static unsigned size_line_byte(struct http1_chunked *d, char c)
{
	unsigned next;

	if (d->line_bytes == CHUNK_LINE_MAX)
		return CH_ERR_BAD;
	if (d->state == CH_SIZE)
		next = size_digit(d, c);
	else if (d->state == CH_SIZE_BWS)
		next = c == ';' ? CH_EXT : is_ows(c) ? CH_SIZE_BWS : CH_ERR_BAD;
	else if (c == '\r')
		next = CH_SIZE_LF;
	else
		next = is_value_char(c) ? CH_EXT : CH_ERR_BAD;
	d->line_bytes++;
	return next;
}

/* One framing byte: the state that follows it. */
static unsigned chunk_byte(struct http1_chunked *d, char c)
{
	switch (d->state) {
	case CH_SIZE:
	case CH_SIZE_BWS:
	case CH_EXT:
		return size_line_byte(d, c);
	case CH_SIZE_LF:
		if (c != '\n')
			return CH_ERR_BAD;
		return d->remaining ? CH_DATA : CH_TRAILER_START;
	case CH_DATA_CR:
		return c == '\r' ? CH_DATA_LF : CH_ERR_BAD;
	case CH_DATA_LF:
		if (c != '\n')
			return CH_ERR_BAD;
		d->line_bytes = 0;
		return CH_SIZE;
	default:
		return trailer_byte(d, c);
	}
}

int http1_chunked_next(struct http1_chunked *d, const char *buf, size_t len, size_t *consumed,
		       struct slice *data)
{
	assert(d != NULL && consumed != NULL && data != NULL);
	assert(buf != NULL || len == 0);

	size_t i = 0;

	*data = (struct slice){ buf, 0 };
	while (i < len && d->state < CH_DONE) {
		if (d->state == CH_DATA) {
			size_t n = d->remaining < len - i ? (size_t)d->remaining : len - i;
			*data = slice_of(buf + i, n);
			d->remaining -= n;
			d->total += n;
			if (d->remaining == 0)
				d->state = CH_DATA_CR;
			*consumed = i + n;
			assert(n > 0);
			return HTTP1_CHUNK_DATA;
		}
		unsigned next = chunk_byte(d, buf[i]);
		if (next >= CH_ERR_BAD) {
			d->state = next;
			break;
		}
		d->state = next;
		i++;
	}
	*consumed = i;
	switch (d->state) {
	case CH_DONE:
		return HTTP1_CHUNK_DONE;
	case CH_ERR_BAD:
		return HTTP1_E_BAD;
	case CH_ERR_TOO_BIG:
		return HTTP1_E_BODY_TOO_BIG;
	default:
		assert(i == len);
		return HTTP1_CHUNK_MORE;
	}
}
