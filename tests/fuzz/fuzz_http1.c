/* fuzz_http1.c - libFuzzer harness for core/http1: request and response heads, prefixes,
 * scalar against SIMD scanners, and the chunked decoder whole and in two pieces.
 *
 * Input: one control byte, then the message. Control bits: 0 = the request was HEAD,
 * 1-2 = limits profile, 3-7 = where to split the message (in 31ths of its length).
 * Build and run with tests/fuzz/run.
 */
/* fuzz-sources: core/http1.c */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/http1.h"

#define FUZZ_CHECK(cond)                                                                     \
	do {                                                                                 \
		if (!(cond)) {                                                               \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);  \
			abort();                                                             \
		}                                                                            \
	} while (0)

#define MAX_HEADERS 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct http1_limits profiles[4] = {
	{ .max_header_bytes = 8192, .max_headers = MAX_HEADERS, .max_body_bytes = 1 << 20 },
	{ .max_header_bytes = 256, .max_headers = 4, .max_body_bytes = 64 },
	{ .max_header_bytes = 0, .max_headers = 0, .max_body_bytes = 0 },
	{ .max_header_bytes = 32, .max_headers = 1, .max_body_bytes = 1 },
};

/* putenv keeps these strings: no allocation per input. */
static char env_scalar[] = "PENSTOCK_HTTP1_SCAN=scalar";
static char env_sse42[] = "PENSTOCK_HTTP1_SCAN=sse4.2";
static char env_avx2[] = "PENSTOCK_HTTP1_SCAN=avx2";
static char *const scanner_env[] = { env_scalar, env_sse42, env_avx2 };

/* Everything one parse returns, with slices as offsets so that copies compare. */
struct head {
	int r;
	size_t a[8];
	unsigned nheaders;
	size_t h[MAX_HEADERS][4];
	int body;
	uint64_t cl;
	int keep_alive, expect;
};

static size_t off(struct slice s, const char *buf, size_t len)
{
	FUZZ_CHECK(s.n <= len);
	if (s.n)
		FUZZ_CHECK(s.p >= buf && s.p + s.n <= buf + len);
	return s.p && s.n ? (size_t)(s.p - buf) : 0;
}

static void record_headers(struct head *o, const struct http1_header *h, unsigned n,
			   const char *buf, size_t head_len)
{
	FUZZ_CHECK(n <= MAX_HEADERS);
	o->nheaders = n;
	for (unsigned i = 0; i < n; i++) {
		FUZZ_CHECK(h[i].name.n > 0);
		o->h[i][0] = off(h[i].name, buf, head_len);
		o->h[i][1] = h[i].name.n;
		o->h[i][2] = off(h[i].value, buf, head_len);
		o->h[i][3] = h[i].value.n;
	}
}

static void check_result(int r, size_t len)
{
	FUZZ_CHECK(r >= HTTP1_E_NOT_IMPLEMENTED);
	FUZZ_CHECK(r < 0 || (size_t)r <= len);
	FUZZ_CHECK(r != 0);
}

/* Parses an exact-size copy of buf[0..len), so ASan sees any read past len. */
static void parse_request(const char *src, size_t len, const struct http1_limits *lim,
			  struct head *o)
{
	struct http1_header h[MAX_HEADERS];
	struct http1_request req;
	char *buf = malloc(len ? len : 1);

	memcpy(buf, src, len);
	memset(o, 0, sizeof(*o));
	o->r = http1_parse_request(buf, len, lim, &req, h, MAX_HEADERS);
	check_result(o->r, len);
	if (o->r > 0) {
		size_t hl = (size_t)o->r;
		FUZZ_CHECK(req.head_len == hl);
		FUZZ_CHECK(req.method.n > 0 && req.target.n > 0);
		o->a[0] = off(req.method, buf, hl);
		o->a[1] = req.method.n;
		o->a[2] = off(req.target, buf, hl);
		o->a[3] = req.target.n;
		o->a[4] = (size_t)req.minor_version;
		FUZZ_CHECK(req.minor_version == 0 || req.minor_version == 1);
		FUZZ_CHECK(req.body != HTTP1_BODY_CLOSE);
		record_headers(o, h, req.nheaders, buf, hl);
		o->body = req.body;
		o->cl = req.body == HTTP1_BODY_LENGTH ? req.content_length : 0;
		o->keep_alive = req.keep_alive;
		o->expect = req.expect_continue;
		if (lim->max_body_bytes && req.body == HTTP1_BODY_LENGTH)
			FUZZ_CHECK(req.content_length <= lim->max_body_bytes);
		if (lim->max_header_bytes)
			FUZZ_CHECK(hl <= lim->max_header_bytes);
	}
	free(buf);
}

static void parse_response(const char *src, size_t len, const struct http1_limits *lim,
			   bool head, struct head *o)
{
	struct http1_header h[MAX_HEADERS];
	struct http1_response res;
	char *buf = malloc(len ? len : 1);

	memcpy(buf, src, len);
	memset(o, 0, sizeof(*o));
	o->r = http1_parse_response(buf, len, lim, head, &res, h, MAX_HEADERS);
	check_result(o->r, len);
	if (o->r > 0) {
		size_t hl = (size_t)o->r;
		FUZZ_CHECK(res.head_len == hl);
		FUZZ_CHECK(res.status >= 100 && res.status <= 599);
		o->a[0] = (size_t)res.status;
		o->a[1] = off(res.reason, buf, hl);
		o->a[2] = res.reason.n;
		o->a[4] = (size_t)res.minor_version;
		record_headers(o, h, res.nheaders, buf, hl);
		o->body = res.body;
		o->cl = res.body == HTTP1_BODY_LENGTH ? res.content_length : 0;
		o->keep_alive = res.keep_alive;
		if (head || res.status < 200 || res.status == 204 || res.status == 304)
			FUZZ_CHECK(res.body == HTTP1_BODY_NONE);
		if (res.body == HTTP1_BODY_CLOSE)
			FUZZ_CHECK(!res.keep_alive);
	}
	free(buf);
}

static bool same_head(const struct head *a, const struct head *b)
{
	return memcmp(a, b, sizeof(*a)) == 0;
}

/* A prefix answers INCOMPLETE or what the whole answers; from head_len on, the same head. */
static void check_prefix(const struct head *whole, const struct head *part, size_t k)
{
	if (whole->r > 0 && k >= (size_t)whole->r)
		FUZZ_CHECK(same_head(whole, part));
	else if (whole->r > 0)
		FUZZ_CHECK(part->r == HTTP1_INCOMPLETE);
	else
		FUZZ_CHECK(part->r == HTTP1_INCOMPLETE || part->r == whole->r);
}

static void fuzz_heads(const char *msg, size_t len, const struct http1_limits *lim, bool head,
		       size_t split)
{
	static struct head whole_req, whole_res, other;

	/* every scanner the CPU has must agree with the scalar one */
	for (unsigned s = 0; s < 3; s++) {
		putenv(scanner_env[s]);
		const char *name = http1_init();
		if (strcmp(name, scanner_env[s] + strlen("PENSTOCK_HTTP1_SCAN=")) != 0)
			continue;
		parse_request(msg, len, lim, s ? &other : &whole_req);
		if (s)
			FUZZ_CHECK(same_head(&whole_req, &other));
		parse_response(msg, len, lim, head, s ? &other : &whole_res);
		if (s)
			FUZZ_CHECK(same_head(&whole_res, &other));
	}
	/* the best scanner stays selected for the prefix checks */
	size_t cuts[3] = { split, len / 2, len ? len - 1 : 0 };
	for (unsigned i = 0; i < 3; i++) {
		parse_request(msg, cuts[i], lim, &other);
		check_prefix(&whole_req, &other, cuts[i]);
		parse_response(msg, cuts[i], lim, head, &other);
		check_prefix(&whole_res, &other, cuts[i]);
	}
}

struct decoded {
	int result;
	size_t used;
	uint64_t total;
	size_t body_len;
	char *body; /* at most the input's length */
};

/* Decodes buf[0..len) in two pieces cut at `cut` (cut == len: whole). */
static void decode(const char *src, size_t len, size_t cut, uint64_t max_body,
		   struct decoded *out)
{
	struct http1_chunked d = { .max_body = max_body };
	size_t start = 0;

	out->result = HTTP1_CHUNK_MORE;
	out->used = 0;
	out->body_len = 0;
	for (unsigned piece = 0; piece < 2; piece++) {
		size_t stop = piece == 0 ? cut : len;
		size_t n = stop - start;
		char *buf = malloc(n ? n : 1);
		const char *p = buf;
		memcpy(buf, src + start, n);
		for (;;) {
			struct slice data;
			size_t used = SIZE_MAX;
			int r = http1_chunked_next(&d, p, n, &used, &data);
			FUZZ_CHECK(used <= n);
			FUZZ_CHECK(r >= HTTP1_E_NOT_IMPLEMENTED && r <= HTTP1_CHUNK_DONE);
			out->used += used;
			out->result = r;
			if (r == HTTP1_CHUNK_DATA) {
				FUZZ_CHECK(data.n > 0 && data.p >= p);
				FUZZ_CHECK(data.p + data.n == p + used);
				FUZZ_CHECK(out->body_len + data.n <= len);
				memcpy(out->body + out->body_len, data.p, data.n);
				out->body_len += data.n;
				FUZZ_CHECK(d.total == out->body_len);
				FUZZ_CHECK(!max_body || d.total <= max_body);
				p += used;
				n -= used;
				continue;
			}
			FUZZ_CHECK(r != HTTP1_CHUNK_MORE || used == n);
			break;
		}
		free(buf);
		start = stop;
		if (out->result != HTTP1_CHUNK_MORE)
			break;
	}
	out->total = d.total;
	FUZZ_CHECK(out->total == out->body_len);
	FUZZ_CHECK(out->used <= len);
}

static void fuzz_chunked(const char *msg, size_t len, uint64_t max_body, size_t split)
{
	struct decoded whole = { .body = malloc(len + 1) };
	struct decoded parts = { .body = malloc(len + 1) };

	decode(msg, len, len, max_body, &whole);
	decode(msg, len, split, max_body, &parts);
	FUZZ_CHECK(whole.result == parts.result);
	FUZZ_CHECK(whole.used == parts.used);
	FUZZ_CHECK(whole.body_len == parts.body_len);
	FUZZ_CHECK(memcmp(whole.body, parts.body, whole.body_len) == 0);
	if (whole.result == HTTP1_CHUNK_MORE)
		FUZZ_CHECK(whole.used == len);
	free(whole.body);
	free(parts.body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;

	unsigned ctl = data[0];
	const char *msg = (const char *)data + 1;
	size_t len = size - 1;
	const struct http1_limits *lim = &profiles[(ctl >> 1) & 3];
	size_t split = len * (ctl >> 3) / 31;

	fuzz_heads(msg, len, lim, ctl & 1, split);
	fuzz_chunked(msg, len, lim->max_body_bytes, split);

	/* and the chunked body that follows a request head, as the engine would see it */
	struct http1_header h[MAX_HEADERS];
	struct http1_request req;
	int r = http1_parse_request(msg, len, lim, &req, h, MAX_HEADERS);
	if (r > 0 && req.body == HTTP1_BODY_CHUNKED) {
		size_t rest = len - (size_t)r;
		fuzz_chunked(msg + r, rest, lim->max_body_bytes, rest * (ctl >> 3) / 31);
	}
	return 0;
}
