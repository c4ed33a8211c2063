/* test_http1.c - table-driven tests of core/http1: own tables plus the http-parser corpus.
 *
 * Every input is parsed from an exact-size heap copy (ASan reports a read past its end) and
 * from a copy that ends at a PROT_NONE page (a read past the end faults without ASan too).
 * Heads are fed whole and as every prefix (the parser is stateless, so a prefix is what a
 * split delivers first): a prefix of a good head must be INCOMPLETE, a prefix of a bad one
 * INCOMPLETE or the same error. Chunked bodies are fed whole, byte by byte, and split in two
 * and three pieces at every offset. Everything runs once per scanner the CPU has.
 * Run from the project root (the corpus is tests/data/http1/http_parser_cases.txt).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/http1.h"

#define CHECK(cond, ...)                                                                     \
	do {                                                                                 \
		if (!(cond))                                                                 \
			fail_msg(__VA_ARGS__);                                               \
	} while (0)

#define R(s) s, sizeof(s) - 1 /* a literal and its length: inputs may hold NUL */
#define HDR_CAP 256
#define GUARD_SPACE (1u << 20)
#define CORPUS_PATH "tests/data/http1/http_parser_cases.txt"
#define CORPUS_CASES 76

static const struct http1_limits default_limits = {
	.max_header_bytes = 8192,
	.max_headers = 64,
	.max_body_bytes = 1 << 20,
};

static const char *scanner = "scalar"; /* the scanner under test, for messages */

/* ---- placing inputs ----------------------------------------------------------------- */

static char *guard_area; /* GUARD_SPACE bytes, then a PROT_NONE page */

static int setup_guard(void **state)
{
	long page = sysconf(_SC_PAGESIZE);
	char *map = mmap(NULL, GUARD_SPACE + (size_t)page, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (map == MAP_FAILED || mprotect(map + GUARD_SPACE, (size_t)page, PROT_NONE) != 0)
		return -1;
	guard_area = map;
	return 0;
}

/* Copies n bytes so that the last one sits just before the guard page. */
static const char *at_guard(const void *data, size_t n)
{
	assert_true(n <= GUARD_SPACE);
	char *p = guard_area + GUARD_SPACE - n;
	if (n)
		memmove(p, data, n);
	return p;
}

/* An exact-size heap copy (free with free()). */
static char *heap_copy(const void *data, size_t n)
{
	char *p = malloc(n ? n : 1);
	assert_non_null(p);
	if (n)
		memcpy(p, data, n);
	return p;
}

/* Request head from both placements; the fields returned point into the guard copy. */
static int parse_req(const char *raw, size_t n, const struct http1_limits *lim,
		     struct http1_request *req, struct http1_header *h, unsigned cap)
{
	static struct http1_header heap_h[HDR_CAP];
	struct http1_request heap_req;
	char *heap = heap_copy(raw, n);
	int rh = http1_parse_request(heap, n, lim, &heap_req, heap_h, cap);

	free(heap);
	int r = http1_parse_request(at_guard(raw, n), n, lim, req, h, cap);
	CHECK(r == rh, "[%s] heap and guard copies disagree: %d vs %d", scanner, rh, r);
	return r;
}

static int parse_res(const char *raw, size_t n, const struct http1_limits *lim, bool head,
		     struct http1_response *res, struct http1_header *h, unsigned cap)
{
	static struct http1_header heap_h[HDR_CAP];
	struct http1_response heap_res;
	char *heap = heap_copy(raw, n);
	int rh = http1_parse_response(heap, n, lim, head, &heap_res, heap_h, cap);

	free(heap);
	int r = http1_parse_response(at_guard(raw, n), n, lim, head, res, h, cap);
	CHECK(r == rh, "[%s] heap and guard copies disagree: %d vs %d", scanner, rh, r);
	return r;
}

static bool slice_is(struct slice s, const char *want)
{
	return s.n == strlen(want) && memcmp(s.p, want, s.n) == 0;
}

/* ---- scanners ----------------------------------------------------------------------- */

static void for_each_scanner(void (*fn)(void))
{
	static const char *const names[] = { "scalar", "sse4.2", "avx2" };
	unsigned ran = 0;

	for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		setenv("PENSTOCK_HTTP1_SCAN", names[i], 1);
		scanner = http1_init();
		if (strcmp(scanner, names[i]) != 0)
			continue; /* this CPU lacks it */
		fn();
		ran++;
	}
	unsetenv("PENSTOCK_HTTP1_SCAN");
	scanner = http1_init();
	assert_true(ran >= 1);
}

static void test_init_picks_best(void **state)
{
	unsetenv("PENSTOCK_HTTP1_SCAN");
	const char *best = http1_init();
	assert_true(strcmp(best, "scalar") == 0 || strcmp(best, "sse4.2") == 0 ||
		    strcmp(best, "avx2") == 0);
	setenv("PENSTOCK_HTTP1_SCAN", "scalar", 1);
	assert_string_equal(http1_init(), "scalar");
	setenv("PENSTOCK_HTTP1_SCAN", "no-such-scanner", 1);
	assert_string_equal(http1_init(), best);
	unsetenv("PENSTOCK_HTTP1_SCAN");
	print_message("http1 scanner on this CPU: %s\n", http1_init());
}

/* ---- prefixes ----------------------------------------------------------------------- */

/* Every proper prefix of a good head is INCOMPLETE; with anything after the head (body,
 * next request) the answer is the same head. */
static void req_prefixes_ok(const char *why, const char *raw, size_t len, size_t head_len,
			    const struct http1_limits *lim)
{
	static struct http1_header h[HDR_CAP];
	struct http1_request req;

	for (size_t k = 0; k <= len; k++) {
		int r = parse_req(raw, k, lim, &req, h, HDR_CAP);
		int want = k < head_len ? HTTP1_INCOMPLETE : (int)head_len;
		CHECK(r == want, "[%s] %s: prefix %zu of %zu gives %d, want %d", scanner, why, k,
		      len, r, want);
	}
}

static void res_prefixes_ok(const char *why, const char *raw, size_t len, size_t head_len,
			    bool head)
{
	static struct http1_header h[HDR_CAP];
	struct http1_response res;

	for (size_t k = 0; k <= len; k++) {
		int r = parse_res(raw, k, &default_limits, head, &res, h, HDR_CAP);
		int want = k < head_len ? HTTP1_INCOMPLETE : (int)head_len;
		CHECK(r == want, "[%s] %s: prefix %zu of %zu gives %d, want %d", scanner, why, k,
		      len, r, want);
	}
}

/* A bad head: every prefix is INCOMPLETE or the whole input's error. */
static void req_prefixes_bad(const char *why, const char *raw, size_t len, int err,
			     const struct http1_limits *lim)
{
	static struct http1_header h[HDR_CAP];
	struct http1_request req;

	for (size_t k = 0; k < len; k++) {
		int r = parse_req(raw, k, lim, &req, h, HDR_CAP);
		CHECK(r == HTTP1_INCOMPLETE || r == err, "[%s] %s: prefix %zu gives %d, want %d",
		      scanner, why, k, r, err);
	}
}

static void res_prefixes_bad(const char *why, const char *raw, size_t len, int err, bool head)
{
	static struct http1_header h[HDR_CAP];
	struct http1_response res;

	for (size_t k = 0; k < len; k++) {
		int r = parse_res(raw, k, &default_limits, head, &res, h, HDR_CAP);
		CHECK(r == HTTP1_INCOMPLETE || r == err, "[%s] %s: prefix %zu gives %d, want %d",
		      scanner, why, k, r, err);
	}
}

/* ---- requests that parse -------------------------------------------------------------- */

enum { NONE = HTTP1_BODY_NONE, LEN = HTTP1_BODY_LENGTH, CHUNKED = HTTP1_BODY_CHUNKED,
       CLOSE = HTTP1_BODY_CLOSE };

struct req_case {
	const char *why;
	const char *raw;
	size_t len;
	size_t tail; /* bytes after the head (body, next request) */
	const char *method;
	const char *target;
	int minor;
	unsigned nheaders;
	int body;
	uint64_t content_length;
	bool keep_alive;
	bool expect_continue;
};

#define CHAT_HEAD                                                                            \
	"POST /v1/chat/completions HTTP/1.1\r\nHost: api.example.com\r\n"                     \
	"User-Agent: OpenAI/Python 1.40.0\r\nAccept: application/json\r\n"                    \
	"Content-Type: application/json\r\n"                                                  \
	"Authorization: Bearer sk-proj-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ\r\n"    \
	"X-Stainless-Lang: python\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n"

static const struct req_case req_ok[] = {
	{ "minimal", R("GET / HTTP/1.1\r\n\r\n"), 0, "GET", "/", 1, 0, NONE, 0, true, false },
	{ "HTTP/1.0 closes by default", R("GET / HTTP/1.0\r\n\r\n"), 0, "GET", "/", 0, 0, NONE, 0,
	  false, false },
	{ "HTTP/1.0 keep-alive", R("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"), 0, "GET",
	  "/", 0, 1, NONE, 0, true, false },
	{ "HTTP/1.0 keep-alive and close", R("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n"
	  "\r\n"), 0, "GET", "/", 0, 1, NONE, 0, false, false },
	{ "close", R("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"), 0, "GET", "/", 1, 1, NONE, 0,
	  false, false },
	{ "close among tokens, any case", R("GET / HTTP/1.1\r\nConnection: Upgrade , CLOSE\r\n"
	  "\r\n"), 0, "GET", "/", 1, 1, NONE, 0, false, false },
	{ "close in a second Connection line", R("GET / HTTP/1.1\r\nConnection: te\r\n"
	  "connection: close\r\n\r\n"), 0, "GET", "/", 1, 2, NONE, 0, false, false },
	{ "closed is not close", R("GET / HTTP/1.1\r\nConnection: closed, x-close\r\n\r\n"), 0,
	  "GET", "/", 1, 1, NONE, 0, true, false },
	{ "close wins over keep-alive", R("GET / HTTP/1.1\r\nConnection: keep-alive\r\n"
	  "Connection: close\r\n\r\n"), 0, "GET", "/", 1, 2, NONE, 0, false, false },
	{ "empty lines before the request line", R("\r\n\r\nGET / HTTP/1.1\r\n\r\n"), 0, "GET",
	  "/", 1, 0, NONE, 0, true, false },
	{ "body by Content-Length", R("POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"), 5,
	  "POST", "/a", 1, 1, LEN, 5, true, false },
	{ "Content-Length 0", R("POST /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), 0, "POST", "/a",
	  1, 1, LEN, 0, true, false },
	{ "Content-Length at the body limit", R("POST /a HTTP/1.1\r\ncontent-length: 1048576\r\n"
	  "\r\n"), 0, "POST", "/a", 1, 1, LEN, 1048576, true, false },
	{ "repeated identical Content-Length", R("POST /a HTTP/1.1\r\nContent-Length: 5\r\n"
	  "Content-Length: 5\r\n\r\n"), 0, "POST", "/a", 1, 2, LEN, 5, true, false },
	{ "Content-Length with leading zeros and OWS", R("POST /a HTTP/1.1\r\nContent-Length: "
	  "\t007 \r\n\r\n"), 0, "POST", "/a", 1, 1, LEN, 7, true, false },
	{ "chunked", R("POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 5,
	  "POST", "/a", 1, 1, CHUNKED, 0, true, false },
	{ "chunked in any case, OWS, empty list elements", R("POST /a HTTP/1.1\r\n"
	  "transfer-encoding: , ChunKed \r\n\r\n"), 0, "POST", "/a", 1, 1, CHUNKED, 0, true,
	  false },
	{ "Expect: 100-continue", R("PUT /a HTTP/1.1\r\nExpect: 100-Continue\r\n"
	  "Content-Length: 3\r\n\r\n"), 0, "PUT", "/a", 1, 2, LEN, 3, true, true },
	{ "Expect ignored in HTTP/1.0", R("PUT /a HTTP/1.0\r\nExpect: 100-continue\r\n"
	  "Content-Length: 3\r\n\r\n"), 0, "PUT", "/a", 0, 2, LEN, 3, false, false },
	{ "other expectations", R("PUT /a HTTP/1.1\r\nExpect: 100-continue, x\r\n\r\n"), 0,
	  "PUT", "/a", 1, 1, NONE, 0, true, false },
	{ "absolute-form target", R("GET http://a.example:8080/p?q=1#f HTTP/1.1\r\n\r\n"), 0,
	  "GET", "http://a.example:8080/p?q=1#f", 1, 0, NONE, 0, true, false },
	{ "authority-form target", R("CONNECT a.example:443 HTTP/1.1\r\n\r\n"), 0, "CONNECT",
	  "a.example:443", 1, 0, NONE, 0, true, false },
	{ "asterisk-form target", R("OPTIONS * HTTP/1.1\r\n\r\n"), 0, "OPTIONS", "*", 1, 0, NONE,
	  0, true, false },
	{ "raw UTF-8 in the target", R("GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n"), 0, "GET",
	  "/caf\xc3\xa9", 1, 0, NONE, 0, true, false },
	{ "method made of every tchar", R("!#$%&'*+-.^_`|~09azAZ / HTTP/1.1\r\n\r\n"), 0,
	  "!#$%&'*+-.^_`|~09azAZ", "/", 1, 0, NONE, 0, true, false },
	{ "field name made of every tchar", R("GET / HTTP/1.1\r\n!#$%&'*+-.^_`|~09azAZ: v\r\n"
	  "\r\n"), 0, "GET", "/", 1, 1, NONE, 0, true, false },
	{ "long target", R("GET /0123456789012345678901234567890123456789012345678901234567890123"
	  "456789?x=0123456789012345678901234567890123456789 HTTP/1.1\r\n\r\n"), 0, "GET",
	  "/0123456789012345678901234567890123456789012345678901234567890123456789?x=012345678901"
	  "2345678901234567890123456789", 1, 0, NONE, 0, true, false },
	{ "pipelined: first of two", R("GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"), 19,
	  "GET", "/1", 1, 0, NONE, 0, true, false },
	{ "chat completions head", R(CHAT_HEAD "{}"), 2, "POST", "/v1/chat/completions", 1, 8,
	  LEN, 2, true, false },
};

static void check_req(const struct req_case *c)
{
	static struct http1_header h[HDR_CAP];
	struct http1_request req;
	size_t head_len = c->len - c->tail;
	int r = parse_req(c->raw, c->len, &default_limits, &req, h, HDR_CAP);

	CHECK(r == (int)head_len, "[%s] %s: result %d, want %zu", scanner, c->why, r, head_len);
	CHECK(req.head_len == head_len, "[%s] %s: head_len %zu", scanner, c->why, req.head_len);
	CHECK(slice_is(req.method, c->method), "[%s] %s: method", scanner, c->why);
	CHECK(slice_is(req.target, c->target), "[%s] %s: target", scanner, c->why);
	CHECK(req.minor_version == c->minor, "[%s] %s: version", scanner, c->why);
	CHECK(req.nheaders == c->nheaders, "[%s] %s: %u headers", scanner, c->why, req.nheaders);
	CHECK(req.headers == h, "[%s] %s: headers array", scanner, c->why);
	CHECK((int)req.body == c->body, "[%s] %s: body kind %d", scanner, c->why, req.body);
	CHECK(req.body != HTTP1_BODY_LENGTH || req.content_length == c->content_length,
	      "[%s] %s: content_length %llu", scanner, c->why,
	      (unsigned long long)req.content_length);
	CHECK(req.keep_alive == c->keep_alive, "[%s] %s: keep_alive", scanner, c->why);
	CHECK(req.expect_continue == c->expect_continue, "[%s] %s: expect", scanner, c->why);
	req_prefixes_ok(c->why, c->raw, c->len, head_len, &default_limits);
}

static void run_req_ok(void)
{
	for (size_t i = 0; i < sizeof(req_ok) / sizeof(req_ok[0]); i++)
		check_req(&req_ok[i]);
}

static void test_requests(void **state) { for_each_scanner(run_req_ok); }

/* ---- field values --------------------------------------------------------------------- */

struct value_case {
	const char *line; /* a field line, CRLF included */
	size_t len;
	const char *name;
	const char *value;
};

static const struct value_case values[] = {
	{ R("X: a\r\n"), "X", "a" },
	{ R("X:a\r\n"), "X", "a" },
	{ R("X: \t a \t \r\n"), "X", "a" },
	{ R("X:\r\n"), "X", "" },
	{ R("X: \t \r\n"), "X", "" },
	{ R("X: a \t b\r\n"), "X", "a \t b" },
	{ R("X: \"quoted, list\"; p=1\r\n"), "X", "\"quoted, list\"; p=1" },
	{ R("X: obs-text \x80\xff\r\n"), "X", "obs-text \x80\xff" },
	{ R("Long-Value: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef !\r\n"),
	  "Long-Value", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef !" },
};

static void run_values(void)
{
	static struct http1_header h[HDR_CAP];
	char buf[256];

	for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
		const struct value_case *c = &values[i];
		struct http1_request req;
		size_t n = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\n%.*s\r\n",
					    (int)c->len, c->line);
		int r = parse_req(buf, n, &default_limits, &req, h, HDR_CAP);
		CHECK(r == (int)n, "[%s] %s: result %d", scanner, c->line, r);
		CHECK(slice_is(h[0].name, c->name), "[%s] %s: name", scanner, c->line);
		CHECK(slice_is(h[0].value, c->value), "[%s] %s: value '%.*s'", scanner, c->line,
		      SLICE_ARG(h[0].value));
	}
}

static void test_field_values(void **state) { for_each_scanner(run_values); }

/* Stop bytes at every offset of values and targets of every length up to 100: covers the
 * 16- and 32-byte SIMD blocks and the scalar tails, with the head ending at the guard. */
static void run_scan_positions(void)
{
	static struct http1_header h[HDR_CAP];
	static const char bad[] = { 0x00, 0x01, 0x08, 0x0b, 0x1f, 0x7f, '\n', '\r' };
	char buf[512];
	struct http1_request req;

	for (size_t n = 0; n <= 100; n++) {
		char v[128];
		for (size_t i = 0; i < n; i++)
			v[i] = (char)(i % 7 == 3 ? '\t' : i % 5 == 1 ? ' ' : 'a' + i % 26);
		v[n] = 0;
		size_t len = (size_t)snprintf(buf, sizeof(buf),
					      "GET /x HTTP/1.1\r\nV: %s\r\n\r\n", v);
		int r = parse_req(buf, len, &default_limits, &req, h, HDR_CAP);
		CHECK(r == (int)len, "[%s] value of %zu bytes: %d", scanner, n, r);
		for (size_t pos = 0; pos < n; pos++) {
			for (size_t b = 0; b < sizeof(bad); b++) {
				char save = buf[20 + pos];
				buf[20 + pos] = bad[b];
				r = parse_req(buf, len, &default_limits, &req, h, HDR_CAP);
				CHECK(r == HTTP1_E_BAD, "[%s] byte %#x at %zu of a %zu-byte value",
				      scanner, bad[b], pos, n);
				buf[20 + pos] = save;
			}
		}
	}
	for (size_t n = 1; n <= 100; n++) {
		char t[128];
		for (size_t i = 0; i < n; i++)
			t[i] = (char)(i == 0 ? '/' : '!' + i % 90);
		t[n] = 0;
		size_t len = (size_t)snprintf(buf, sizeof(buf), "GET %s HTTP/1.1\r\n\r\n", t);
		int r = parse_req(buf, len, &default_limits, &req, h, HDR_CAP);
		CHECK(r == (int)len && req.target.n == n, "[%s] target of %zu bytes: %d", scanner,
		      n, r);
		for (size_t pos = 1; pos < n; pos++) {
			for (size_t b = 0; b < sizeof(bad); b++) {
				char save = buf[4 + pos];
				buf[4 + pos] = bad[b];
				r = parse_req(buf, len, &default_limits, &req, h, HDR_CAP);
				CHECK(r == HTTP1_E_BAD, "[%s] byte %#x at %zu of a %zu-byte target",
				      scanner, bad[b], pos, n);
				buf[4 + pos] = save;
			}
		}
	}
}

/* The same for field names: bytes that are not tchars, at every offset of every length. */
static void run_name_positions(void)
{
	static struct http1_header h[HDR_CAP];
	static const char tchars[] = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"
				     "KLMNOPQRSTUVWXYZ";
	static const char bad[] = { 0x00, '\t', ' ', '"', '(', ',', '/', ';', '@', '[', '{', '}',
				    0x7f, (char)0x80, (char)0xff, '\r', '\n' };
	char buf[512];
	struct http1_request req;

	for (size_t n = 1; n <= 100; n++) {
		char name[128];
		for (size_t i = 0; i < n; i++)
			name[i] = tchars[(i * 7 + n) % (sizeof(tchars) - 1)];
		name[n] = 0;
		size_t len = (size_t)snprintf(buf, sizeof(buf), "GET /x HTTP/1.1\r\n%s: v\r\n\r\n",
					      name);
		int r = parse_req(buf, len, &default_limits, &req, h, HDR_CAP);
		CHECK(r == (int)len && h[0].name.n == n, "[%s] %zu-byte name: %d", scanner, n, r);
		for (size_t pos = 0; pos < n; pos++) {
			for (size_t b = 0; b < sizeof(bad); b++) {
				char save = buf[17 + pos];
				buf[17 + pos] = bad[b];
				r = parse_req(buf, len, &default_limits, &req, h, HDR_CAP);
				CHECK(r == HTTP1_E_BAD, "[%s] byte %#x at %zu of a %zu-byte name",
				      scanner, (unsigned char)bad[b], pos, n);
				buf[17 + pos] = save;
			}
		}
	}
}

static void test_scan_positions(void **state)
{
	for_each_scanner(run_scan_positions);
	for_each_scanner(run_name_positions);
}

/* ---- requests that fail ----------------------------------------------------------------- */

struct bad_case {
	const char *why;
	const char *raw;
	size_t len;
	int err;
};

#define BAD HTTP1_E_BAD
#define POST "POST / HTTP/1.1\r\n"

static const struct bad_case req_bad[] = {
	/* framing: request smuggling */
	{ "Content-Length and Transfer-Encoding", R(POST "Content-Length: 5\r\n"
	  "Transfer-Encoding: chunked\r\n\r\n"), BAD },
	{ "Transfer-Encoding and Content-Length", R(POST "Transfer-Encoding: chunked\r\n"
	  "Content-Length: 5\r\n\r\n"), BAD },
	{ "conflicting Content-Length", R(POST "Content-Length: 5\r\nContent-Length: 6\r\n\r\n"),
	  BAD },
	{ "Content-Length list", R(POST "Content-Length: 5, 5\r\n\r\n"), BAD },
	{ "Content-Length list without space", R(POST "Content-Length: 5,5\r\n\r\n"), BAD },
	{ "Content-Length sign", R(POST "Content-Length: +5\r\n\r\n"), BAD },
	{ "Content-Length negative", R(POST "Content-Length: -1\r\n\r\n"), BAD },
	{ "Content-Length hex", R(POST "Content-Length: 0x5\r\n\r\n"), BAD },
	{ "Content-Length decimal point", R(POST "Content-Length: 5.0\r\n\r\n"), BAD },
	{ "Content-Length inner space", R(POST "Content-Length: 5 5\r\n\r\n"), BAD },
	{ "Content-Length empty", R(POST "Content-Length:\r\n\r\n"), BAD },
	{ "Content-Length letters", R(POST "Content-Length: abc\r\n\r\n"), BAD },
	{ "Content-Length overflows 64 bits", R(POST "Content-Length: 18446744073709551616\r\n"
	  "\r\n"), BAD },
	{ "Content-Length far over 64 bits", R(POST "Content-Length: 99999999999999999999999\r\n"
	  "\r\n"), BAD },
	{ "chunked twice", R(POST "Transfer-Encoding: chunked, chunked\r\n\r\n"), BAD },
	{ "chunked twice over two lines", R(POST "Transfer-Encoding: chunked\r\n"
	  "Transfer-Encoding: chunked\r\n\r\n"), BAD },
	{ "chunked not last", R(POST "Transfer-Encoding: chunked, gzip\r\n\r\n"), BAD },
	{ "chunked not last over two lines", R(POST "Transfer-Encoding: chunked\r\n"
	  "Transfer-Encoding: gzip\r\n\r\n"), BAD },
	{ "no chunked", R(POST "Transfer-Encoding: gzip\r\n\r\n"), BAD },
	{ "identity", R(POST "Transfer-Encoding: identity\r\n\r\n"), BAD },
	{ "chunked look-alike", R(POST "Transfer-Encoding: xchunked\r\n\r\n"), BAD },
	{ "chunked with a parameter", R(POST "Transfer-Encoding: chunked;q=1\r\n\r\n"), BAD },
	{ "chunked with a vertical tab", R(POST "Transfer-Encoding: \x0b" "chunked\r\n\r\n"), BAD },
	{ "empty Transfer-Encoding", R(POST "Transfer-Encoding:\r\n\r\n"), BAD },
	{ "Transfer-Encoding of empty elements", R(POST "Transfer-Encoding: , ,\r\n\r\n"), BAD },
	{ "Transfer-Encoding in HTTP/1.0", R("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n"
	  "\r\n"), BAD },
	{ "other coding before chunked", R(POST "Transfer-Encoding: gzip, chunked\r\n\r\n"),
	  HTTP1_E_NOT_IMPLEMENTED },
	{ "other coding in an earlier line", R(POST "Transfer-Encoding: deflate\r\n"
	  "Transfer-Encoding: chunked\r\n\r\n"), HTTP1_E_NOT_IMPLEMENTED },
	{ "Content-Length over the body limit", R(POST "Content-Length: 1048577\r\n\r\n"),
	  HTTP1_E_BODY_TOO_BIG },
	{ "largest Content-Length", R(POST "Content-Length: 18446744073709551615\r\n\r\n"),
	  HTTP1_E_BODY_TOO_BIG },
	/* field lines */
	{ "obs-fold", R(POST "X: a\r\n b\r\n\r\n"), BAD },
	{ "obs-fold with a tab", R(POST "X: a\r\n\tb\r\n\r\n"), BAD },
	{ "obs-fold of Transfer-Encoding", R(POST "Transfer-Encoding:\r\n chunked\r\n\r\n"), BAD },
	{ "first field line indented", R(POST " Host: a\r\n\r\n"), BAD },
	{ "space before the colon", R(POST "Content-Length : 5\r\n\r\n"), BAD },
	{ "tab before the colon", R(POST "Transfer-Encoding\t: chunked\r\n\r\n"), BAD },
	{ "space in the name", R(POST "Content Length: 5\r\n\r\n"), BAD },
	{ "empty name", R(POST ": v\r\n\r\n"), BAD },
	{ "no colon", R(POST "Host\r\n\r\n"), BAD },
	{ "separator in the name", R(POST "X(y): 1\r\n\r\n"), BAD },
	{ "slash in the name", R(POST "X/y: 1\r\n\r\n"), BAD },
	{ "obs-text in the name", R(POST "X\xc3\xa9: 1\r\n\r\n"), BAD },
	{ "NUL in the name", R(POST "Content-Length\0: 5\r\n\r\n"), BAD },
	{ "NUL in a value", R(POST "X: a\0b\r\n\r\n"), BAD },
	{ "DEL in a value", R(POST "X: a\x7f\r\n\r\n"), BAD },
	{ "bare CR in a value", R(POST "X: a\rb\r\n\r\n"), BAD },
	{ "bare LF in a value", R(POST "X: a\nb\r\n\r\n"), BAD },
	{ "field line ends in bare LF", R(POST "X: a\n\r\n"), BAD },
	{ "head ends in bare LF", R(POST "X: a\r\n\n"), BAD },
	{ "head ends in CR CR", R(POST "X: a\r\n\r\r"), BAD },
	/* request line */
	{ "bare LF after the request line", R("GET / HTTP/1.1\n\n"), BAD },
	{ "CR CR after the request line", R("GET / HTTP/1.1\r\r\n\r\n"), BAD },
	{ "leading bare LF", R("\nGET / HTTP/1.1\r\n\r\n"), BAD },
	{ "leading bare CR", R("\r\rGET / HTTP/1.1\r\n\r\n"), BAD },
	{ "empty method", R(" / HTTP/1.1\r\n\r\n"), BAD },
	{ "separator in the method", R("GE(T / HTTP/1.1\r\n\r\n"), BAD },
	{ "NUL in the method", R("GE\0T / HTTP/1.1\r\n\r\n"), BAD },
	{ "tab after the method", R("GET\t/ HTTP/1.1\r\n\r\n"), BAD },
	{ "two spaces after the method", R("GET  / HTTP/1.1\r\n\r\n"), BAD },
	{ "two spaces after the target", R("GET /  HTTP/1.1\r\n\r\n"), BAD },
	{ "space after the version", R("GET / HTTP/1.1 \r\n\r\n"), BAD },
	{ "NUL in the target", R("GET /a\0b HTTP/1.1\r\n\r\n"), BAD },
	{ "control byte in the target", R("GET /a\x01 HTTP/1.1\r\n\r\n"), BAD },
	{ "DEL in the target", R("GET /a\x7f HTTP/1.1\r\n\r\n"), BAD },
	{ "tab in the target", R("GET /a\tb HTTP/1.1\r\n\r\n"), BAD },
	{ "HTTP/0.9 request", R("GET /\r\n\r\n"), BAD },
	{ "lowercase version", R("GET / http/1.1\r\n\r\n"), BAD },
	{ "not HTTP", R("GET / ICE/1.0\r\n\r\n"), BAD },
	{ "two-digit minor", R("GET / HTTP/1.10\r\n\r\n"), BAD },
	{ "no dot", R("GET / HTTP/11\r\n\r\n"), BAD },
	{ "HTTP/2.0", R("GET / HTTP/2.0\r\n\r\n"), HTTP1_E_VERSION },
	{ "HTTP/0.9", R("GET / HTTP/0.9\r\n\r\n"), HTTP1_E_VERSION },
	{ "HTTP/1.2", R("GET / HTTP/1.2\r\n\r\n"), HTTP1_E_VERSION },
	{ "HTTP/3.0 before the line ends", R("GET / HTTP/3.0"), HTTP1_E_VERSION },
};

static void run_req_bad(void)
{
	static struct http1_header h[HDR_CAP];

	for (size_t i = 0; i < sizeof(req_bad) / sizeof(req_bad[0]); i++) {
		const struct bad_case *c = &req_bad[i];
		struct http1_request req;
		int r = parse_req(c->raw, c->len, &default_limits, &req, h, HDR_CAP);
		CHECK(r == c->err, "[%s] %s: result %d, want %d", scanner, c->why, r, c->err);
		req_prefixes_bad(c->why, c->raw, c->len, c->err, &default_limits);
	}
}

static void test_requests_rejected(void **state) { for_each_scanner(run_req_bad); }

/* ---- pipelining ----------------------------------------------------------------------- */

static void run_pipeline(void)
{
	static struct http1_header h[HDR_CAP];
	static const char raw[] = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
				  "POST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
				  "POST /3 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
				  "3\r\nxyz\r\n0\r\n\r\n"
				  "\r\nGET /4 HTTP/1.1\r\nConnection: close\r\n\r\n";
	static const char *const targets[] = { "/1", "/2", "/3", "/4" };
	static const size_t head_lens[] = { 28, 39, 48, 40 };
	const size_t len = sizeof(raw) - 1;
	const char *buf = at_guard(raw, len);
	size_t off = 0;

	for (unsigned i = 0; i < 4; i++) {
		struct http1_request req;
		int r = http1_parse_request(buf + off, len - off, &default_limits, &req, h,
					    HDR_CAP);
		CHECK(r == (int)head_lens[i], "[%s] request %u: %d", scanner, i + 1, r);
		CHECK(slice_is(req.target, targets[i]), "[%s] request %u target", scanner, i + 1);
		off += (size_t)r;
		if (req.body == HTTP1_BODY_LENGTH)
			off += req.content_length;
		if (req.body == HTTP1_BODY_CHUNKED) {
			struct http1_chunked d = { 0 };
			struct slice data;
			size_t used;
			assert_int_equal(http1_chunked_next(&d, buf + off, len - off, &used, &data),
					 HTTP1_CHUNK_DATA);
			assert_true(slice_is(data, "xyz"));
			off += used;
			assert_int_equal(http1_chunked_next(&d, buf + off, len - off, &used, &data),
					 HTTP1_CHUNK_DONE);
			off += used;
		}
		CHECK(req.keep_alive == (i < 3), "[%s] request %u keep-alive", scanner, i + 1);
	}
	assert_int_equal(off, len);
}

static void test_pipelining(void **state) { for_each_scanner(run_pipeline); }

/* ---- limits --------------------------------------------------------------------------- */

/* A head of n header lines "H%03u: v" that is exactly `bytes` long (padding the last). */
static size_t build_head(char *buf, size_t cap, unsigned n, size_t pad)
{
	size_t len = (size_t)snprintf(buf, cap, "GET / HTTP/1.1\r\n");

	for (unsigned i = 0; i < n; i++)
		len += (size_t)snprintf(buf + len, cap - len, "H%03u: v\r\n", i);
	len += (size_t)snprintf(buf + len, cap - len, "Pad: ");
	memset(buf + len, 'p', pad);
	len += pad;
	len += (size_t)snprintf(buf + len, cap - len, "\r\n\r\n");
	return len;
}

static void run_limits(void)
{
	static struct http1_header h[HDR_CAP];
	static char buf[70000];
	struct http1_request req;
	struct http1_limits lim = default_limits;

	/* bytes: a head exactly at the limit passes, one byte over is 431, and a head that
	 * is not complete within the limit is 431 once that many bytes are in */
	size_t len = build_head(buf, sizeof(buf), 3, 1000);
	lim.max_header_bytes = len;
	assert_int_equal(parse_req(buf, len, &lim, &req, h, HDR_CAP), (int)len);
	req_prefixes_ok("head at the byte limit", buf, len, len, &lim);
	lim.max_header_bytes = len - 1;
	assert_int_equal(parse_req(buf, len, &lim, &req, h, HDR_CAP), HTTP1_E_HEADER_TOO_BIG);
	assert_int_equal(parse_req(buf, len - 2, &lim, &req, h, HDR_CAP), HTTP1_INCOMPLETE);
	assert_int_equal(parse_req(buf, len - 1, &lim, &req, h, HDR_CAP), HTTP1_E_HEADER_TOO_BIG);
	req_prefixes_bad("head one byte over", buf, len, HTTP1_E_HEADER_TOO_BIG, &lim);

	/* bytes: a 64 KiB head against the default 8 KiB, and with no byte limit */
	len = build_head(buf, sizeof(buf), 10, 65536);
	lim = default_limits;
	assert_int_equal(parse_req(buf, len, &lim, &req, h, HDR_CAP), HTTP1_E_HEADER_TOO_BIG);
	lim.max_header_bytes = 0;
	assert_int_equal(parse_req(buf, len, &lim, &req, h, HDR_CAP), (int)len);

	/* count: max_headers lines pass, one more is 431, whichever of the limit and the
	 * caller's array is smaller */
	lim = default_limits;
	lim.max_headers = 20;
	len = build_head(buf, sizeof(buf), 19, 1); /* 19 + Pad = 20 */
	assert_int_equal(parse_req(buf, len, &lim, &req, h, HDR_CAP), (int)len);
	assert_int_equal(req.nheaders, 20);
	assert_int_equal(parse_req(buf, len, &lim, &req, h, 19), HTTP1_E_HEADER_TOO_BIG);
	lim.max_headers = 19;
	assert_int_equal(parse_req(buf, len, &lim, &req, h, HDR_CAP), HTTP1_E_HEADER_TOO_BIG);
	req_prefixes_bad("one header too many", buf, len, HTTP1_E_HEADER_TOO_BIG, &lim);
	lim.max_headers = 0; /* no limit but the array */
	assert_int_equal(parse_req(buf, len, &lim, &req, h, 20), (int)len);
	assert_int_equal(parse_req(buf, len, &lim, &req, h, 0), HTTP1_E_HEADER_TOO_BIG);

	/* body: Content-Length against max_body_bytes; 0 means no limit */
	static const char cl[] = "POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n";
	lim = default_limits;
	lim.max_body_bytes = 100;
	assert_int_equal(parse_req(R(cl), &lim, &req, h, HDR_CAP), (int)sizeof(cl) - 1);
	lim.max_body_bytes = 99;
	assert_int_equal(parse_req(R(cl), &lim, &req, h, HDR_CAP), HTTP1_E_BODY_TOO_BIG);
	req_prefixes_bad("Content-Length over", R(cl), HTTP1_E_BODY_TOO_BIG, &lim);
	lim.max_body_bytes = 0;
	static const char huge[] = "POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n"
				   "\r\n";
	assert_int_equal(parse_req(R(huge), &lim, &req, h, HDR_CAP), (int)sizeof(huge) - 1);
	assert_true(req.content_length == UINT64_MAX);
}

static void test_limits(void **state) { for_each_scanner(run_limits); }

/* ---- responses ------------------------------------------------------------------------ */

struct res_case {
	const char *why;
	const char *raw;
	size_t len;
	size_t tail;
	bool head; /* the request was HEAD */
	int status;
	const char *reason;
	int minor;
	unsigned nheaders;
	int body;
	uint64_t content_length;
	bool keep_alive;
};

static const struct res_case res_ok[] = {
	{ "200 with a body", R("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"), 2, false, 200,
	  "OK", 1, 1, LEN, 2, true },
	{ "reason with spaces, tab, obs-text", R("HTTP/1.1 500 Internal\tServer \xc3\xa9rror\r\n"
	  "Content-Length: 0\r\n\r\n"), 0, false, 500, "Internal\tServer \xc3\xa9rror", 1, 1, LEN,
	  0, true },
	{ "no reason and no space", R("HTTP/1.1 204\r\n\r\n"), 0, false, 204, "", 1, 0, NONE, 0,
	  true },
	{ "empty reason", R("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n"), 0, false, 200, "", 1, 1,
	  LEN, 0, true },
	{ "chunked", R("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 5,
	  false, 200, "OK", 1, 1, CHUNKED, 0, true },
	{ "gzip then chunked", R("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), 0,
	  false, 200, "OK", 1, 1, CHUNKED, 0, true },
	{ "chunked not last: until close", R("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip"
	  "\r\n\r\nxx"), 2, false, 200, "OK", 1, 1, CLOSE, 0, false },
	{ "no length: until close", R("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nabc"), 3,
	  false, 200, "OK", 1, 1, CLOSE, 0, false },
	{ "HTTP/1.0 with a length", R("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"), 0, false,
	  200, "OK", 0, 1, LEN, 0, false },
	{ "HTTP/1.0 keep-alive", R("HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: "
	  "keep-alive\r\n\r\n"), 0, false, 200, "OK", 0, 2, LEN, 0, true },
	{ "HTTP/1.0 keep-alive but until close", R("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
	  "\r\n"), 0, false, 200, "OK", 0, 1, CLOSE, 0, false },
	{ "close", R("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"), 0, false,
	  200, "OK", 1, 2, LEN, 0, false },
	{ "204 ignores Content-Length", R("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
	  0, false, 204, "No Content", 1, 1, NONE, 0, true },
	{ "304 ignores Transfer-Encoding", R("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: "
	  "chunked\r\n\r\n"), 0, false, 304, "Not Modified", 1, 1, NONE, 0, true },
	{ "100 Continue", R("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), 17, false, 100,
	  "Continue", 1, 0, NONE, 0, true },
	{ "101", R("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"), 0, false, 101,
	  "Switching Protocols", 1, 1, NONE, 0, true },
	{ "HEAD with a length", R("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"), 0, true,
	  200, "OK", 1, 1, NONE, 0, true },
	{ "HEAD without a length", R("HTTP/1.1 200 OK\r\n\r\n"), 0, true, 200, "OK", 1, 0, NONE, 0,
	  true },
	{ "no body limit on responses", R("HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n"
	  "\r\n"), 0, false, 200, "OK", 1, 1, LEN, 99999999999, true },
	{ "599", R("HTTP/1.1 599 x\r\nContent-Length: 0\r\n\r\n"), 0, false, 599, "x", 1, 1, LEN, 0,
	  true },
};

static void check_res(const struct res_case *c)
{
	static struct http1_header h[HDR_CAP];
	struct http1_response res;
	size_t head_len = c->len - c->tail;
	int r = parse_res(c->raw, c->len, &default_limits, c->head, &res, h, HDR_CAP);

	CHECK(r == (int)head_len, "[%s] %s: result %d, want %zu", scanner, c->why, r, head_len);
	CHECK(res.head_len == head_len, "[%s] %s: head_len", scanner, c->why);
	CHECK(res.status == c->status, "[%s] %s: status %d", scanner, c->why, res.status);
	CHECK(slice_is(res.reason, c->reason), "[%s] %s: reason '%.*s'", scanner, c->why,
	      SLICE_ARG(res.reason));
	CHECK(res.minor_version == c->minor, "[%s] %s: version", scanner, c->why);
	CHECK(res.nheaders == c->nheaders, "[%s] %s: headers", scanner, c->why);
	CHECK((int)res.body == c->body, "[%s] %s: body kind %d", scanner, c->why, res.body);
	CHECK(res.body != HTTP1_BODY_LENGTH || res.content_length == c->content_length,
	      "[%s] %s: content_length", scanner, c->why);
	CHECK(res.keep_alive == c->keep_alive, "[%s] %s: keep_alive", scanner, c->why);
	res_prefixes_ok(c->why, c->raw, c->len, head_len, c->head);
}

static const struct bad_case res_bad[] = {
	{ "two-digit status", R("HTTP/1.1 20 OK\r\n\r\n"), BAD },
	{ "four-digit status", R("HTTP/1.1 2000 OK\r\n\r\n"), BAD },
	{ "status under 100", R("HTTP/1.1 099 OK\r\n\r\n"), BAD },
	{ "status over 599", R("HTTP/1.1 600 OK\r\n\r\n"), BAD },
	{ "letters for a status", R("HTTP/1.1 abc OK\r\n\r\n"), BAD },
	{ "two spaces before the status", R("HTTP/1.1  200 OK\r\n\r\n"), BAD },
	{ "tab before the status", R("HTTP/1.1\t200 OK\r\n\r\n"), BAD },
	{ "no status", R("HTTP/1.1\r\n\r\n"), BAD },
	{ "bare LF status line", R("HTTP/1.1 200 OK\n\r\n"), BAD },
	{ "NUL in the reason", R("HTTP/1.1 200 O\0K\r\n\r\n"), BAD },
	{ "bare CR in the reason", R("HTTP/1.1 200 O\rK\r\n\r\n"), BAD },
	{ "empty line first", R("\r\nHTTP/1.1 200 OK\r\n\r\n"), BAD },
	{ "HTTP/2 without minor", R("HTTP/2 200 OK\r\n\r\n"), BAD },
	{ "not HTTP", R("ICY 200 OK\r\n\r\n"), BAD },
	{ "HTTP/2.0", R("HTTP/2.0 200 OK\r\n\r\n"), HTTP1_E_VERSION },
	{ "HTTP/0.9", R("HTTP/0.9 200 OK\r\n\r\n"), HTTP1_E_VERSION },
	{ "Content-Length and Transfer-Encoding", R("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
	  "Transfer-Encoding: chunked\r\n\r\n"), BAD },
	{ "conflicting Content-Length", R("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
	  "Content-Length: 4\r\n\r\n"), BAD },
	{ "Content-Length list", R("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n"), BAD },
	{ "bad Content-Length on a 204", R("HTTP/1.1 204 OK\r\nContent-Length: x\r\n\r\n"), BAD },
	{ "chunked twice", R("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
	  BAD },
	{ "empty Transfer-Encoding", R("HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n"), BAD },
	{ "Transfer-Encoding in HTTP/1.0", R("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n"
	  "\r\n"), BAD },
	{ "obs-fold", R("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n"), BAD },
	{ "space before the colon", R("HTTP/1.1 200 OK\r\nContent-Length : 3\r\n\r\n"), BAD },
};

static void run_responses(void)
{
	static struct http1_header h[HDR_CAP];

	for (size_t i = 0; i < sizeof(res_ok) / sizeof(res_ok[0]); i++)
		check_res(&res_ok[i]);
	for (size_t i = 0; i < sizeof(res_bad) / sizeof(res_bad[0]); i++) {
		const struct bad_case *c = &res_bad[i];
		struct http1_response res;
		int r = parse_res(c->raw, c->len, &default_limits, false, &res, h, HDR_CAP);
		CHECK(r == c->err, "[%s] %s: result %d, want %d", scanner, c->why, r, c->err);
		res_prefixes_bad(c->why, c->raw, c->len, c->err, false);
	}
}

static void test_responses(void **state) { for_each_scanner(run_responses); }

/* ---- chunked decoder ------------------------------------------------------------------ */

struct decoded {
	int result;     /* DONE, MORE or an error */
	size_t used;    /* input bytes consumed in all */
	char body[8192];
	size_t body_len;
	unsigned nslices;
	size_t slices[64]; /* slice sizes, the first 64 */
};

/* Feeds raw[0..len) cut at cuts[0..ncuts) (increasing), each piece in its own buffer that
 * ends at the guard page. Stops at DONE or an error. */
static void feed_chunked(const char *raw, size_t len, const size_t *cuts, unsigned ncuts,
			 uint64_t max_body, struct decoded *out)
{
	struct http1_chunked d = { .max_body = max_body };
	size_t start = 0;

	memset(out, 0, offsetof(struct decoded, body));
	out->body_len = 0;
	out->nslices = 0;
	for (unsigned piece = 0; piece <= ncuts; piece++) {
		size_t stop = piece < ncuts ? cuts[piece] : len;
		const char *p = at_guard(raw + start, stop - start);
		size_t n = stop - start;
		for (;;) {
			struct slice data;
			size_t used = (size_t)-1;
			int r = http1_chunked_next(&d, p, n, &used, &data);
			CHECK(used <= n, "consumed %zu of %zu", used, n);
			out->used += used;
			out->result = r;
			if (r != HTTP1_CHUNK_DATA) {
				CHECK(r != HTTP1_CHUNK_MORE || used == n, "MORE left bytes");
				if (r != HTTP1_CHUNK_MORE)
					return;
				break;
			}
			CHECK(data.n > 0 && data.p >= p && data.p + data.n == p + used,
			      "slice outside the consumed bytes");
			CHECK(out->body_len + data.n <= sizeof(out->body), "body too long");
			memcpy(out->body + out->body_len, data.p, data.n);
			out->body_len += data.n;
			if (out->nslices < 64)
				out->slices[out->nslices] = data.n;
			out->nslices++;
			CHECK(d.total == out->body_len, "total %llu, slices %zu",
			      (unsigned long long)d.total, out->body_len);
			p += used;
			n -= used;
		}
		start = stop;
	}
}

static bool same_decoding(const struct decoded *a, const struct decoded *b)
{
	return a->result == b->result && a->used == b->used && a->body_len == b->body_len &&
	       memcmp(a->body, b->body, a->body_len) == 0;
}

/* Whole, byte by byte, and in two and three pieces at every offset: all must agree. */
static void feed_every_way(const char *why, const char *raw, size_t len, uint64_t max_body,
			   struct decoded *whole)
{
	static struct decoded other;
	size_t cuts[8192];

	feed_chunked(raw, len, NULL, 0, max_body, whole);
	for (size_t i = 0; i + 1 < len && i < 8192; i++)
		cuts[i] = i + 1;
	if (len > 1 && len <= 8192) {
		feed_chunked(raw, len, cuts, (unsigned)(len - 1), max_body, &other);
		CHECK(same_decoding(whole, &other), "%s: byte by byte differs", why);
	}
	for (size_t i = 0; i <= len; i++) {
		cuts[0] = i;
		feed_chunked(raw, len, cuts, 1, max_body, &other);
		CHECK(same_decoding(whole, &other), "%s: split at %zu differs (result %d vs %d)",
		      why, i, other.result, whole->result);
		for (size_t j = i; len <= 160 && j <= len; j++) {
			cuts[1] = j;
			feed_chunked(raw, len, cuts, 2, max_body, &other);
			CHECK(same_decoding(whole, &other), "%s: split at %zu,%zu differs", why, i,
			      j);
		}
	}
}

struct chunk_case {
	const char *why;
	const char *raw;
	size_t len;
	int result;
	const char *body;
	size_t used; /* for DONE: where the body ends; 0: the whole input */
	uint64_t max_body;
};

#define DONE HTTP1_CHUNK_DONE
#define MORE HTTP1_CHUNK_MORE

static const struct chunk_case chunked[] = {
	{ "last chunk only", R("0\r\n\r\n"), DONE, "", 0, 0 },
	{ "one chunk", R("5\r\nhello\r\n0\r\n\r\n"), DONE, "hello", 0, 0 },
	{ "hex sizes, both cases", R("a\r\n0123456789\r\nA\r\nabcdefghij\r\n0\r\n\r\n"), DONE,
	  "0123456789abcdefghij", 0, 0 },
	{ "leading zeros", R("0005\r\nhello\r\n000\r\n\r\n"), DONE, "hello", 0, 0 },
	{ "data holding CRLF", R("4\r\n\r\n\r\n\r\n0\r\n\r\n"), DONE, "\r\n\r\n", 0, 0 },
	{ "extensions", R("5;name=value;flag\r\nhello\r\n6 ; a=\"q;\\\"x\" \r\n world\r\n"
	  "0;last\r\n\r\n"), DONE, "hello world", 0, 0 },
	{ "trailers", R("5\r\nhello\r\n0\r\nX-Sum: abc\r\nY:\r\nZ: a b\t\r\n\r\n"), DONE, "hello",
	  0, 0 },
	{ "bytes after the body", R("3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n"), DONE, "abc", 13,
	  0 },
	{ "body at the limit", R("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), DONE, "abcde", 0, 5 },
	{ "unfinished data", R("5\r\nhel"), MORE, "hel", 0, 0 },
	{ "unfinished size line", R("5\r\nhello\r\n1"), MORE, "hello", 0, 0 },
	{ "unfinished trailer", R("0\r\nX: y\r\n"), MORE, "", 0, 0 },
	{ "largest size", R("ffffffffffffffff\r\nab"), MORE, "ab", 0, 0 },
	{ "body over the limit", R("3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"), HTTP1_E_BODY_TOO_BIG,
	  "abc", 0, 5 },
	{ "size over the limit", R("10\r\n"), HTTP1_E_BODY_TOO_BIG, "", 0, 15 },
	{ "size overflows 64 bits", R("10000000000000000\r\n"), BAD, "", 0, 0 },
	{ "no size", R("\r\n\r\n"), BAD, "", 0, 0 },
	{ "not hex", R("g\r\n"), BAD, "", 0, 0 },
	{ "0x prefix", R("0x5\r\nhello\r\n0\r\n\r\n"), BAD, "", 0, 0 },
	{ "negative", R("-5\r\n"), BAD, "", 0, 0 },
	{ "sign", R("+5\r\n"), BAD, "", 0, 0 },
	{ "space before the size", R(" 5\r\nhello\r\n0\r\n\r\n"), BAD, "", 0, 0 },
	{ "space after the size, no extension", R("5 \r\nhello\r\n0\r\n\r\n"), BAD, "", 0, 0 },
	{ "tab after the size, no extension", R("5\t\r\nhello\r\n0\r\n\r\n"), BAD, "", 0, 0 },
	{ "bare LF after the size", R("5\nhello\r\n0\r\n\r\n"), BAD, "", 0, 0 },
	{ "bare CR after the size", R("5\rhello\r\n0\r\n\r\n"), BAD, "", 0, 0 },
	{ "LF inside an extension", R("5;a\nb\r\nhello\r\n0\r\n\r\n"), BAD, "", 0, 0 },
	{ "NUL inside an extension", R("5;a\0\r\nhello\r\n0\r\n\r\n"), BAD, "", 0, 0 },
	{ "data longer than its size", R("5\r\nhelloX\r\n0\r\n\r\n"), BAD, "hello", 0, 0 },
	{ "data shorter than its size", R("5\r\nhell\r\n0\r\n\r\n"), BAD, "hell\r", 0, 0 },
	{ "bare LF after data", R("5\r\nhello\n0\r\n\r\n"), BAD, "hello", 0, 0 },
	{ "CR CR after data", R("5\r\nhello\r\r0\r\n\r\n"), BAD, "hello", 0, 0 },
	{ "bare LF ends the body", R("0\r\n\n"), BAD, "", 0, 0 },
	{ "trailer obs-fold", R("0\r\nX: a\r\n b\r\n\r\n"), BAD, "", 0, 0 },
	{ "trailer space before the colon", R("0\r\nX : a\r\n\r\n"), BAD, "", 0, 0 },
	{ "trailer without a name", R("0\r\n: a\r\n\r\n"), BAD, "", 0, 0 },
	{ "trailer without a colon", R("0\r\nX\r\n\r\n"), BAD, "", 0, 0 },
	{ "trailer bare LF", R("0\r\nX: a\n\r\n"), BAD, "", 0, 0 },
	{ "trailer NUL", R("0\r\nX: a\0\r\n\r\n"), BAD, "", 0, 0 },
};

static void run_chunked(void)
{
	static struct decoded out;

	for (size_t i = 0; i < sizeof(chunked) / sizeof(chunked[0]); i++) {
		const struct chunk_case *c = &chunked[i];
		feed_every_way(c->why, c->raw, c->len, c->max_body, &out);
		CHECK(out.result == c->result, "%s: result %d, want %d", c->why, out.result,
		      c->result);
		CHECK(out.body_len == strlen(c->body) &&
		      memcmp(out.body, c->body, out.body_len) == 0,
		      "%s: body '%.*s'", c->why, (int)out.body_len, out.body);
		size_t used = c->used ? c->used : c->len;
		CHECK(c->result != DONE || out.used == used, "%s: used %zu, want %zu", c->why,
		      out.used, used);
	}
}

static void test_chunked(void **state) { run_chunked(); }

static void test_chunked_after_end(void **state)
{
	struct http1_chunked d = { 0 };
	struct slice data;
	size_t used;

	assert_int_equal(http1_chunked_next(&d, R("0\r\n\r\nxyz"), &used, &data), DONE);
	assert_int_equal(used, 5);
	assert_int_equal(http1_chunked_next(&d, R("xyz"), &used, &data), DONE);
	assert_int_equal(used, 0);

	struct http1_chunked e = { 0 };
	assert_int_equal(http1_chunked_next(&e, R("z\r\n"), &used, &data), BAD);
	assert_int_equal(used, 0);
	assert_int_equal(http1_chunked_next(&e, R("0\r\n\r\n"), &used, &data), BAD);

	struct http1_chunked f = { 0 };
	assert_int_equal(http1_chunked_next(&f, NULL, 0, &used, &data), MORE);
	assert_int_equal(used, 0);
	assert_int_equal(http1_chunked_next(&f, R("3\r\nab"), &used, &data), HTTP1_CHUNK_DATA);
	assert_int_equal(f.remaining, 1);
	assert_int_equal(f.total, 2);
}

/* The 4 KiB bounds on a chunk-size line (extensions) and on the trailer section. */
static void test_chunked_limits(void **state)
{
	static char buf[16384];
	static struct decoded out;
	size_t n;

	/* size line: "1;" + extension + CR is 4096 bytes: fine; one more byte is not */
	for (size_t ext = 4093; ext <= 4094; ext++) {
		n = 0;
		buf[n++] = '1';
		buf[n++] = ';';
		memset(buf + n, 'e', ext);
		n += ext;
		memcpy(buf + n, "\r\nx\r\n0\r\n\r\n", 10);
		n += 10;
		feed_chunked(buf, n, NULL, 0, 0, &out);
		assert_int_equal(out.result, ext == 4093 ? DONE : BAD);
	}
	/* leading zeros count too */
	memset(buf, '0', 5000);
	memcpy(buf + 5000, "\r\n\r\n", 4);
	feed_chunked(buf, 5004, NULL, 0, 0, &out);
	assert_int_equal(out.result, BAD);

	/* trailers: 4096 bytes including the final CRLF are fine, one more is not */
	for (size_t pad = 4089; pad <= 4090; pad++) { /* "T: " pad CRLF CRLF */
		n = (size_t)snprintf(buf, sizeof(buf), "0\r\nT: ");
		memset(buf + n, 't', pad);
		n += pad;
		memcpy(buf + n, "\r\n\r\n", 4);
		n += 4;
		feed_chunked(buf, n, NULL, 0, 0, &out);
		assert_int_equal(out.result, pad == 4089 ? DONE : BAD);
	}
}

/* ---- small functions ----------------------------------------------------------------- */

static void test_error_status(void **state)
{
	assert_int_equal(http1_error_status(HTTP1_E_BAD), 400);
	assert_int_equal(http1_error_status(HTTP1_E_HEADER_TOO_BIG), 431);
	assert_int_equal(http1_error_status(HTTP1_E_BODY_TOO_BIG), 413);
	assert_int_equal(http1_error_status(HTTP1_E_VERSION), 505);
	assert_int_equal(http1_error_status(HTTP1_E_NOT_IMPLEMENTED), 501);
	assert_int_equal(http1_error_status(-100), 400);
	assert_string_equal(http1_error_text(HTTP1_E_HEADER_TOO_BIG), "header section too large");
	assert_string_equal(http1_error_text(-100), "unknown error");
	for (int e = HTTP1_INCOMPLETE; e >= HTTP1_E_NOT_IMPLEMENTED; e--)
		assert_string_not_equal(http1_error_text(e), "unknown error");
}

static void test_find_header(void **state)
{
	static const char raw[] = "GET / HTTP/1.1\r\nHost: a\r\nX-Api-Key: k1\r\n"
				  "x-api-key: k2\r\n\r\n";
	struct http1_header h[8];
	struct http1_request req;

	assert_int_equal(http1_parse_request(R(raw), &default_limits, &req, h, 8), sizeof(raw) - 1);
	const struct http1_header *f = http1_find_header(h, req.nheaders, "x-API-key");
	assert_non_null(f);
	assert_true(slice_is(f->value, "k1"));
	assert_ptr_equal(http1_find_header(h, req.nheaders, "HOST"), &h[0]);
	assert_null(http1_find_header(h, req.nheaders, "Hos"));
	assert_null(http1_find_header(h, req.nheaders, "Hostx"));
	assert_null(http1_find_header(h, 0, "Host"));
}

/* ---- the http-parser corpus ------------------------------------------------------------- */

struct bytes {
	char *p;
	size_t n;
};

struct corpus_case {
	char name[160];
	bool response;
	struct bytes raw;
	int expect; /* 1: parses, else an error */
	bool deviation;
	int major, minor, status, keep_alive, until_close;
	struct bytes method, target, status_text, body, upgrade;
	bool has_upgrade;
	unsigned nheaders, ntrailers;
	struct bytes hname[32], hvalue[32], tname[8], tvalue[8];
	bool has_chunks;
	unsigned nchunks;
	size_t chunks[16];
};

static int hex_digit(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static struct bytes unescape(const char *s, size_t n)
{
	struct bytes b = { malloc(n + 1), 0 };

	assert_non_null(b.p);
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (c == '\\') {
			CHECK(i + 1 < n, "corpus: trailing backslash");
			c = s[++i];
			if (c == 'r')
				c = '\r';
			else if (c == 'n')
				c = '\n';
			else if (c == 't')
				c = '\t';
			else if (c == 'x') {
				CHECK(i + 2 < n, "corpus: short \\x escape");
				CHECK(hex_digit(s[i + 1]) >= 0 && hex_digit(s[i + 2]) >= 0,
				      "corpus: bad \\x escape");
				c = (char)(hex_digit(s[i + 1]) * 16 + hex_digit(s[i + 2]));
				i += 2;
			} else
				CHECK(c == '\\', "corpus: unknown escape \\%c", c);
		}
		b.p[b.n++] = c;
	}
	return b;
}

static int error_by_name(const char *s)
{
	static const struct { const char *name; int err; } errs[] = {
		{ "ok", 1 }, { "BAD", HTTP1_E_BAD }, { "VERSION", HTTP1_E_VERSION },
		{ "NOT_IMPLEMENTED", HTTP1_E_NOT_IMPLEMENTED },
		{ "HEADER_TOO_BIG", HTTP1_E_HEADER_TOO_BIG },
		{ "BODY_TOO_BIG", HTTP1_E_BODY_TOO_BIG },
	};
	for (size_t i = 0; i < sizeof(errs) / sizeof(errs[0]); i++)
		if (strcmp(s, errs[i].name) == 0)
			return errs[i].err;
	fail_msg("corpus: unknown expectation '%s'", s);
	return 0;
}

/* "NAME: VALUE" into a header or trailer slot. */
static void corpus_field(const char *v, size_t n, struct bytes *name, struct bytes *value)
{
	const char *colon = memchr(v, ':', n);

	CHECK(colon != NULL, "corpus: bad field '%.*s'", (int)n, v);
	const char *val = colon + 1 < v + n && colon[1] == ' ' ? colon + 2 : colon + 1;
	*name = unescape(v, (size_t)(colon - v));
	*value = unescape(val, (size_t)(v + n - val));
}

static void corpus_line(struct corpus_case *c, const char *key, const char *v, size_t n)
{
	char text[64];

	snprintf(text, sizeof(text), "%.*s", (int)(n < 63 ? n : 63), v);
	if (!strcmp(key, "type"))
		c->response = !strcmp(text, "response");
	else if (!strcmp(key, "raw"))
		c->raw = unescape(v, n);
	else if (!strcmp(key, "expect"))
		c->expect = error_by_name(text);
	else if (!strcmp(key, "deviation"))
		c->deviation = true;
	else if (!strcmp(key, "version"))
		CHECK(sscanf(text, "%d.%d", &c->major, &c->minor) == 2, "corpus: version");
	else if (!strcmp(key, "method"))
		c->method = unescape(v, n);
	else if (!strcmp(key, "target"))
		c->target = unescape(v, n);
	else if (!strcmp(key, "status"))
		c->status = atoi(text);
	else if (!strcmp(key, "status_text"))
		c->status_text = unescape(v, n);
	else if (!strcmp(key, "header") && c->nheaders < 32) {
		corpus_field(v, n, &c->hname[c->nheaders], &c->hvalue[c->nheaders]);
		c->nheaders++;
	} else if (!strcmp(key, "trailer") && c->ntrailers < 8) {
		corpus_field(v, n, &c->tname[c->ntrailers], &c->tvalue[c->ntrailers]);
		c->ntrailers++;
	} else if (!strcmp(key, "keep_alive"))
		c->keep_alive = atoi(text);
	else if (!strcmp(key, "body_until_close"))
		c->until_close = atoi(text);
	else if (!strcmp(key, "body"))
		c->body = unescape(v, n);
	else if (!strcmp(key, "upgrade")) {
		c->upgrade = unescape(v, n);
		c->has_upgrade = true;
	} else if (!strcmp(key, "chunks")) {
		c->has_chunks = true;
		for (char *s = text; *s && c->nchunks < 16; s += *s == ',') {
			char *e;
			c->chunks[c->nchunks++] = strtoul(s, &e, 10);
			CHECK(e != s, "corpus: chunks");
			s = e;
		}
	} else
		fail_msg("corpus: unknown key '%s'", key);
}

static void free_case(struct corpus_case *c)
{
	struct bytes *all[] = { &c->raw, &c->method, &c->target, &c->status_text, &c->body,
				&c->upgrade };
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		free(all[i]->p);
	for (unsigned i = 0; i < c->nheaders; i++)
		free(c->hname[i].p), free(c->hvalue[i].p);
	for (unsigned i = 0; i < c->ntrailers; i++)
		free(c->tname[i].p), free(c->tvalue[i].p);
}

static bool bytes_eq(struct slice s, struct bytes b)
{
	return s.n == b.n && (b.n == 0 || memcmp(s.p, b.p, b.n) == 0);
}

/* The body after a head, per the framing the parser found; returns where it ends. */
static size_t corpus_body(const struct corpus_case *c, const char *buf, size_t head_len,
			  int body, uint64_t cl, struct decoded *out)
{
	const char *rest = buf + head_len;
	size_t left = c->raw.n - head_len;

	out->result = 0;
	out->body_len = 0;
	out->nslices = 0;
	switch (body) {
	case HTTP1_BODY_LENGTH:
		CHECK(cl <= left, "%s: Content-Length %llu beyond the input", c->name,
		      (unsigned long long)cl);
		memcpy(out->body, rest, cl);
		out->body_len = cl;
		return head_len + cl;
	case HTTP1_BODY_CHUNKED:
		feed_every_way(c->name, rest, left, 0, out);
		return head_len + out->used;
	case HTTP1_BODY_CLOSE:
		memcpy(out->body, rest, left);
		out->body_len = left;
		return c->raw.n;
	default:
		return head_len;
	}
}

static void corpus_check_fields(const struct corpus_case *c, const struct http1_header *h,
				unsigned nheaders, int minor, bool keep_alive)
{
	CHECK(c->major == 1 && c->minor == minor, "%s: version 1.%d", c->name, minor);
	CHECK(nheaders == c->nheaders, "%s: %u headers, want %u", c->name, nheaders, c->nheaders);
	for (unsigned i = 0; i < nheaders; i++) {
		CHECK(bytes_eq(h[i].name, c->hname[i]), "%s: header %u name", c->name, i);
		CHECK(bytes_eq(h[i].value, c->hvalue[i]), "%s: header %u value '%.*s'", c->name, i,
		      SLICE_ARG(h[i].value));
	}
	CHECK(keep_alive == (c->keep_alive != 0), "%s: keep_alive %d", c->name, keep_alive);
}

/* Trailers are not returned, but they must be in the bytes the decoder consumed. */
static void corpus_check_trailers(const struct corpus_case *c, const char *from, size_t n)
{
	for (unsigned i = 0; i < c->ntrailers; i++) {
		char line[256];
		int len = snprintf(line, sizeof(line), "\r\n%.*s: %.*s\r\n", (int)c->tname[i].n,
				   c->tname[i].p, (int)c->tvalue[i].n, c->tvalue[i].p);
		CHECK(memmem(from, n, line, (size_t)len) != NULL, "%s: trailer %u", c->name, i);
	}
}

static void corpus_ok(const struct corpus_case *c)
{
	static struct http1_header h[HDR_CAP];
	static struct decoded out;
	struct http1_request req;
	struct http1_response res;
	int r, body;
	uint64_t cl;

	if (c->response) {
		r = parse_res(c->raw.p, c->raw.n, &default_limits, false, &res, h, HDR_CAP);
		CHECK(r > 0, "%s: result %d", c->name, r);
		CHECK(res.status == c->status, "%s: status %d", c->name, res.status);
		CHECK(bytes_eq(res.reason, c->status_text), "%s: reason", c->name);
		corpus_check_fields(c, h, res.nheaders, res.minor_version, res.keep_alive);
		body = res.body;
		cl = res.content_length;
		res_prefixes_ok(c->name, c->raw.p, c->raw.n, (size_t)r, false);
	} else {
		r = parse_req(c->raw.p, c->raw.n, &default_limits, &req, h, HDR_CAP);
		CHECK(r > 0, "%s: result %d", c->name, r);
		CHECK(bytes_eq(req.method, c->method), "%s: method", c->name);
		CHECK(bytes_eq(req.target, c->target), "%s: target", c->name);
		corpus_check_fields(c, h, req.nheaders, req.minor_version, req.keep_alive);
		body = req.body;
		cl = req.content_length;
		req_prefixes_ok(c->name, c->raw.p, c->raw.n, (size_t)r, &default_limits);
	}
	CHECK((body == HTTP1_BODY_CLOSE) == (c->until_close != 0), "%s: body kind %d", c->name,
	      body);

	size_t end = corpus_body(c, c->raw.p, (size_t)r, body, cl, &out);
	CHECK(body != HTTP1_BODY_CHUNKED || out.result == DONE, "%s: chunked %d", c->name,
	      out.result);
	CHECK(out.body_len == c->body.n && memcmp(out.body, c->body.p, c->body.n) == 0,
	      "%s: body '%.*s'", c->name, (int)out.body_len, out.body);
	if (c->has_chunks) {
		CHECK(out.nslices == c->nchunks, "%s: %u chunks", c->name, out.nslices);
		for (unsigned i = 0; i < c->nchunks && i < out.nslices; i++)
			CHECK(out.slices[i] == c->chunks[i], "%s: chunk %u", c->name, i);
	}
	corpus_check_trailers(c, c->raw.p + r, end - (size_t)r);

	struct slice rest = slice_of(c->raw.p + end, c->raw.n - end);
	if (c->has_upgrade) {
		CHECK(bytes_eq(rest, c->upgrade), "%s: after the message '%.*s'", c->name,
		      SLICE_ARG(rest));
	} else if (rest.n) { /* only empty lines before a next request */
		CHECK(!c->response, "%s: bytes after the response", c->name);
		r = parse_req(rest.p, rest.n, &default_limits, &req, h, HDR_CAP);
		CHECK(r == HTTP1_INCOMPLETE, "%s: bytes after the request: %d", c->name, r);
	}
}

static void corpus_rejected(const struct corpus_case *c)
{
	static struct http1_header h[HDR_CAP];
	static struct decoded out;
	struct http1_request req;
	struct http1_response res;
	int r, body;

	if (c->response) {
		r = parse_res(c->raw.p, c->raw.n, &default_limits, false, &res, h, HDR_CAP);
		body = res.body;
	} else {
		r = parse_req(c->raw.p, c->raw.n, &default_limits, &req, h, HDR_CAP);
		body = req.body;
	}
	if (r > 0) { /* a good head: the error must come from the chunked body */
		CHECK(body == HTTP1_BODY_CHUNKED, "%s: accepted (%d), want %d", c->name, r,
		      c->expect);
		feed_every_way(c->name, c->raw.p + r, c->raw.n - (size_t)r, 0, &out);
		r = out.result;
	} else if (c->response) {
		res_prefixes_bad(c->name, c->raw.p, c->raw.n, c->expect, false);
	} else {
		req_prefixes_bad(c->name, c->raw.p, c->raw.n, c->expect, &default_limits);
	}
	CHECK(r == c->expect, "%s: result %d, want %d", c->name, r, c->expect);
}

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	CHECK(f != NULL, "cannot open %s (run from the project root)", path);
	char *buf = malloc(1 << 20);
	assert_non_null(buf);
	*len = fread(buf, 1, (1 << 20) - 1, f);
	buf[*len] = 0;
	fclose(f);
	return buf;
}

struct corpus_stats {
	unsigned cases, ok, rejected, deviations;
};

/* Runs each "case ... end" block of the corpus; returns the counts. */
static void run_corpus_file(struct corpus_stats *st)
{
	size_t len;
	char *text = read_file(CORPUS_PATH, &len);
	struct corpus_case *c = NULL;

	memset(st, 0, sizeof(*st));
	for (char *line = text, *next; line < text + len; line = next) {
		char *nl = memchr(line, '\n', (size_t)(text + len - line));
		next = nl ? nl + 1 : text + len;
		size_t n = (size_t)((nl ? nl : text + len) - line);
		if (n == 0 || line[0] == '#')
			continue;
		char *sp = memchr(line, ' ', n);
		char key[32];
		snprintf(key, sizeof(key), "%.*s", (int)(sp ? sp - line : (long)n), line);
		const char *v = sp ? sp + 1 : line + n;
		size_t vn = (size_t)(line + n - v);
		if (!strcmp(key, "case")) {
			CHECK(c == NULL, "corpus: case inside a case");
			c = calloc(1, sizeof(*c));
			assert_non_null(c);
			snprintf(c->name, sizeof(c->name), "%.*s", (int)vn, v);
			continue;
		}
		CHECK(c != NULL, "corpus: '%s' outside a case", key);
		if (strcmp(key, "end") != 0) {
			corpus_line(c, key, v, vn);
			continue;
		}
		CHECK(c->raw.p != NULL && c->expect != 0, "%s: no raw or expect", c->name);
		CHECK(c->expect == 1 || c->deviation, "%s: rejected without a deviation", c->name);
		if (c->expect == 1)
			corpus_ok(c);
		else
			corpus_rejected(c);
		st->cases++;
		st->ok += c->expect == 1;
		st->rejected += c->expect != 1;
		st->deviations += c->deviation;
		free_case(c);
		free(c);
		c = NULL;
	}
	CHECK(c == NULL, "corpus: last case has no end");
	free(text);
}

static void run_corpus(void)
{
	struct corpus_stats st;

	run_corpus_file(&st);
	CHECK(st.cases == CORPUS_CASES, "corpus: %u cases, want %d", st.cases, CORPUS_CASES);
	print_message("http-parser corpus [%s]: %u cases, %u parse as expected, %u rejected "
			      "on purpose, %u with a stated deviation\n", scanner, st.cases, st.ok,
			      st.rejected, st.deviations);
}

static void test_corpus(void **state) { for_each_scanner(run_corpus); }

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_init_picks_best),
		cmocka_unit_test(test_requests),
		cmocka_unit_test(test_field_values),
		cmocka_unit_test(test_scan_positions),
		cmocka_unit_test(test_requests_rejected),
		cmocka_unit_test(test_pipelining),
		cmocka_unit_test(test_limits),
		cmocka_unit_test(test_responses),
		cmocka_unit_test(test_chunked),
		cmocka_unit_test(test_chunked_after_end),
		cmocka_unit_test(test_chunked_limits),
		cmocka_unit_test(test_error_status),
		cmocka_unit_test(test_find_header),
		cmocka_unit_test(test_corpus),
	};

	return cmocka_run_group_tests(tests, setup_guard, NULL);
}
