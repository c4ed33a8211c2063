/* respparse: incremental HTTP/1.1 response parsing for the load generator (framing, SSE). */
#include "respparse.h"

#include <assert.h>
#include <string.h>
#include <strings.h>

enum framing {
	FRAMING_NONE,		/* headers not parsed yet */
	FRAMING_LENGTH,		/* Content-Length */
	FRAMING_CHUNKED,
	FRAMING_UNTIL_CLOSE,	/* neither: the body ends when the server closes */
};

enum chunk_state {
	CHUNK_SIZE,		/* hex digits of the size line */
	CHUNK_SIZE_TAIL,	/* extensions / whitespace up to LF */
	CHUNK_DATA,
	CHUNK_DATA_CR,		/* the CRLF that ends chunk data */
	CHUNK_DATA_LF,
	CHUNK_TRAILER_START,	/* start of a trailer line, or the final empty line */
	CHUNK_TRAILER_LINE,
	CHUNK_TRAILER_END_LF,
};

/* Limits: a server that exceeds them is broken or hostile, and the bench should say so. */
#define CHUNK_SIZE_MAX_DIGITS	15	/* 60 bits */
#define CHUNK_LINE_MAX_BYTES	1024	/* extensions on a size line, or one trailer line */
#define CONTENT_LENGTH_MAX_DIGITS 18

void respparse_reset(struct respparse *p, bool head_request)
{
	memset(p, 0, sizeof(*p));
	p->rp_head_request = head_request;
	p->rp_framing = FRAMING_NONE;
}

/*
 * SSE event counting (WHATWG "event stream interpretation", reduced to what we count): an
 * event is dispatched by a blank line after at least one data line. We also note whether its
 * data is exactly "[DONE]" (one data line), the sentinel that ends an OpenAI stream.
 */
static const char sse_done_value[] = "[DONE]";
#define SSE_DONE_LEN (sizeof(sse_done_value) - 1)

static void sse_dispatch(struct respparse *p)
{
	if (p->rp_sse_event_data_lines > 0) {
		p->rp_sse_events++;
		p->rp_sse_last_done = p->rp_sse_event_data_lines == 1 && p->rp_sse_event_done;
	}
	p->rp_sse_event_data_lines = 0;
	p->rp_sse_event_done = false;
}

static void sse_line_end(struct respparse *p)
{
	if (p->rp_sse_line_len == 0) {
		sse_dispatch(p);
	} else if (!p->rp_sse_not_data && p->rp_sse_line_len >= 4) {
		/* "data" alone or "data:..." is a data field; "data2:" failed the match earlier */
		if (p->rp_sse_event_data_lines < 2)
			p->rp_sse_event_data_lines++;
		p->rp_sse_event_done = p->rp_sse_line_len == 5 && !p->rp_sse_value_not_done &&
				       p->rp_sse_value_len == SSE_DONE_LEN;
	}
	p->rp_sse_line_len = 0;
	p->rp_sse_not_data = false;
	p->rp_sse_value_len = 0;
	p->rp_sse_value_space = false;
	p->rp_sse_value_not_done = false;
}

/* One character of a data field's value (after "data:"): does the value spell "[DONE]"? */
static void sse_value_char(struct respparse *p, char c)
{
	assert(!p->rp_sse_value_not_done);	/* a settled line is skipped, not scanned */
	if (c == ' ' && p->rp_sse_value_len == 0 && !p->rp_sse_value_space) {
		p->rp_sse_value_space = true;	/* the spec drops one leading space */
		return;
	}
	if (p->rp_sse_value_len >= SSE_DONE_LEN || c != sse_done_value[p->rp_sse_value_len])
		p->rp_sse_value_not_done = true;
	else
		p->rp_sse_value_len++;
}

/* Nothing more on this line can change what we count: not a data line, or not [DONE]. */
static bool sse_line_settled(const struct respparse *p)
{
	return p->rp_sse_not_data || (p->rp_sse_line_len == 5 && p->rp_sse_value_not_done);
}

/* Index of the next CR or LF at or after i, or n: SIMD memchr beats a loop on ~200-byte lines. */
static size_t sse_next_break(const char *data, size_t i, size_t n)
{
	const char *lf = memchr(data + i, '\n', n - i);
	size_t end = lf ? (size_t)(lf - data) : n;
	const char *cr = memchr(data + i, '\r', end - i);
	return cr ? (size_t)(cr - data) : end;
}

static void sse_scan(struct respparse *p, const char *data, size_t n)
{
	static const char field[] = "data:";

	for (size_t i = 0; i < n; i++) {
		if (sse_line_settled(p)) {
			/* the char before was neither CR nor LF, so rp_sse_after_cr is false */
			assert(!p->rp_sse_after_cr);
			i = sse_next_break(data, i, n);
			if (i == n)
				break;
		}
		char c = data[i];

		if (c == '\n' && p->rp_sse_after_cr) {
			p->rp_sse_after_cr = false;	/* the LF of a CRLF: the line ended */
			continue;
		}
		p->rp_sse_after_cr = c == '\r';
		if (c == '\r' || c == '\n') {
			sse_line_end(p);
			continue;
		}
		if (p->rp_sse_line_len < 5) {
			if (c != field[p->rp_sse_line_len])
				p->rp_sse_not_data = true;
			p->rp_sse_line_len++;
		} else {
			sse_value_char(p, c);
		}
	}
}

static void body_bytes(struct respparse *p, const char *data, size_t n)
{
	p->rp_body_bytes += n;
	if (p->rp_event_stream)
		sse_scan(p, data, n);
}

/*
 * Find the end of the header block (an empty line, CRLF or bare LF endings).
 * Returns its length, or 0 while incomplete (rp_header_scan remembers how far we looked).
 */
static size_t header_block_end(struct respparse *p, const char *buf, size_t len)
{
	size_t i = p->rp_header_scan;

	while (i < len) {
		const char *nl = memchr(buf + i, '\n', len - i);
		if (!nl)
			break;
		i = (size_t)(nl - buf);
		if (i + 1 < len && buf[i + 1] == '\n')
			return i + 2;
		if (i + 2 < len && buf[i + 1] == '\r' && buf[i + 2] == '\n')
			return i + 3;
		if (i + 1 >= len || (i + 2 >= len && buf[i + 1] == '\r')) {
			p->rp_header_scan = i;	/* decided by bytes still to come */
			return 0;
		}
		i++;
	}
	p->rp_header_scan = len;
	return 0;
}

static bool token_list_has(const char *v, size_t n, const char *token)
{
	size_t tlen = strlen(token);
	size_t i = 0;

	while (i < n) {
		while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
			i++;
		size_t start = i;
		while (i < n && v[i] != ',')
			i++;
		size_t end = i;
		while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t'))
			end--;
		if (end - start == tlen && strncasecmp(v + start, token, tlen) == 0)
			return true;
	}
	return false;
}

/* The last coding in a Transfer-Encoding list, e.g. "gzip, chunked" -> chunked. */
static bool last_coding_is_chunked(const char *v, size_t n)
{
	while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
		n--;
	return n >= 7 && strncasecmp(v + n - 7, "chunked", 7) == 0 &&
	       (n == 7 || v[n - 8] == ',' || v[n - 8] == ' ' || v[n - 8] == '\t');
}

struct header_facts {
	bool has_length;
	uint64_t length;
	bool has_transfer_encoding;
	bool chunked;
};

static int parse_content_length(const char *v, size_t n, struct header_facts *f)
{
	uint64_t value = 0;

	if (n == 0 || n > CONTENT_LENGTH_MAX_DIGITS)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (v[i] < '0' || v[i] > '9')
			return -1;
		value = value * 10 + (uint64_t)(v[i] - '0');
	}
	if (f->has_length && f->length != value)
		return -1;	/* conflicting lengths: a framing attack or a bug */
	f->has_length = true;
	f->length = value;
	return 0;
}

static bool name_is(const char *name, size_t n, const char *want)
{
	return n == strlen(want) && strncasecmp(name, want, n) == 0;
}

static int parse_header_line(struct respparse *p, const char *line, size_t n,
			     struct header_facts *f)
{
	const char *colon = memchr(line, ':', n);
	if (!colon || colon == line)
		return -1;
	size_t name_len = (size_t)(colon - line);
	for (size_t i = 0; i < name_len; i++) {
		unsigned char c = (unsigned char)line[i];
		if (c <= ' ' || c >= 0x7f)
			return -1;	/* also rejects obsolete line folding */
	}
	const char *v = colon + 1;
	size_t vlen = n - name_len - 1;
	while (vlen > 0 && (*v == ' ' || *v == '\t'))
		v++, vlen--;
	while (vlen > 0 && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
		vlen--;

	if (name_is(line, name_len, "content-length"))
		return parse_content_length(v, vlen, f);
	if (name_is(line, name_len, "transfer-encoding")) {
		f->has_transfer_encoding = true;
		f->chunked = last_coding_is_chunked(v, vlen);
	} else if (name_is(line, name_len, "connection")) {
		if (token_list_has(v, vlen, "close"))
			p->rp_keep_alive = false;
		else if (token_list_has(v, vlen, "keep-alive"))
			p->rp_keep_alive = true;
	} else if (name_is(line, name_len, "content-type")) {
		p->rp_event_stream = vlen >= 17 && strncasecmp(v, "text/event-stream", 17) == 0;
	}
	return 0;
}

/* "HTTP/1.1 200 OK": sets the status and the version's default for keep-alive. */
static int parse_status_line(struct respparse *p, const char *line, size_t n)
{
	if (n < 12 || memcmp(line, "HTTP/1.", 7) != 0 || line[8] != ' ')
		return -1;
	if (line[7] != '0' && line[7] != '1')
		return -1;
	int status = 0;
	for (int i = 9; i < 12; i++) {
		if (line[i] < '0' || line[i] > '9')
			return -1;
		status = status * 10 + (line[i] - '0');
	}
	if (status < 100 || (n > 12 && line[12] != ' '))
		return -1;
	p->rp_status = status;
	p->rp_keep_alive = line[7] == '1';
	return 0;
}

static int parse_header_block(struct respparse *p, const char *buf, size_t end)
{
	struct header_facts facts = { 0 };
	size_t pos = 0;
	unsigned lines = 0;

	while (pos < end) {
		const char *nl = memchr(buf + pos, '\n', end - pos);
		assert(nl);	/* the block ends with an empty line */
		size_t n = (size_t)(nl - (buf + pos));
		if (n > 0 && buf[pos + n - 1] == '\r')
			n--;
		if (n == 0)
			break;
		int rc = lines == 0 ? parse_status_line(p, buf + pos, n)
				    : parse_header_line(p, buf + pos, n, &facts);
		if (rc < 0 || ++lines > RESPPARSE_MAX_HEADERS + 1)
			return -1;
		pos = (size_t)(nl - buf) + 1;
	}
	if (lines == 0)
		return -1;

	int s = p->rp_status;
	if (p->rp_head_request || (s >= 100 && s < 200) || s == 204 || s == 304) {
		p->rp_framing = FRAMING_LENGTH;
		p->rp_remaining = 0;
	} else if (facts.has_transfer_encoding && facts.chunked) {
		p->rp_framing = FRAMING_CHUNKED;
		p->rp_chunk_state = CHUNK_SIZE;
	} else if (facts.has_transfer_encoding || !facts.has_length) {
		p->rp_framing = FRAMING_UNTIL_CLOSE;
		p->rp_keep_alive = false;
	} else {
		p->rp_framing = FRAMING_LENGTH;
		p->rp_remaining = facts.length;
	}
	return 0;
}

/* One byte of chunk framing (never chunk data). Returns -1 on error, 1 when the body ended. */
static int chunk_framing_byte(struct respparse *p, char c)
{
	switch (p->rp_chunk_state) {
	case CHUNK_SIZE: {
		int digit = c >= '0' && c <= '9' ? c - '0'
			  : c >= 'a' && c <= 'f' ? c - 'a' + 10
			  : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
		if (digit >= 0) {
			if (++p->rp_chunk_digits > CHUNK_SIZE_MAX_DIGITS)
				return -1;
			p->rp_remaining = p->rp_remaining * 16 + (uint64_t)digit;
			return 0;
		}
		if (p->rp_chunk_digits == 0)
			return -1;
		p->rp_chunk_state = CHUNK_SIZE_TAIL;
		p->rp_chunk_digits = 0;	/* now counts extension bytes */
		__attribute__((fallthrough));	/* c is the first byte after the digits */
	}
	case CHUNK_SIZE_TAIL:
		if (c == '\n') {
			p->rp_chunk_digits = 0;
			p->rp_chunk_state = p->rp_remaining ? CHUNK_DATA : CHUNK_TRAILER_START;
		} else if (++p->rp_chunk_digits > CHUNK_LINE_MAX_BYTES) {
			return -1;
		}
		return 0;
	case CHUNK_DATA_CR:
		if (c == '\n') {
			p->rp_chunk_state = CHUNK_SIZE;	/* tolerate a bare LF */
			return 0;
		}
		if (c != '\r')
			return -1;
		p->rp_chunk_state = CHUNK_DATA_LF;
		return 0;
	case CHUNK_DATA_LF:
		if (c != '\n')
			return -1;
		p->rp_chunk_state = CHUNK_SIZE;
		return 0;
	case CHUNK_TRAILER_START:
		if (c == '\n')
			return 1;
		p->rp_chunk_state = c == '\r' ? CHUNK_TRAILER_END_LF : CHUNK_TRAILER_LINE;
		p->rp_chunk_digits = 1;
		return 0;
	case CHUNK_TRAILER_LINE:
		if (c == '\n')
			p->rp_chunk_state = CHUNK_TRAILER_START;
		else if (++p->rp_chunk_digits > CHUNK_LINE_MAX_BYTES)
			return -1;
		return 0;
	case CHUNK_TRAILER_END_LF:
		return c == '\n' ? 1 : -1;
	default:
		assert(!"chunk data is not framing");
		return -1;
	}
}

static enum respparse_result feed_chunked(struct respparse *p, const char *buf, size_t len,
					  size_t *used)
{
	size_t i = 0;

	while (i < len) {
		if (p->rp_chunk_state == CHUNK_DATA) {
			size_t n = len - i;
			if (n > p->rp_remaining)
				n = (size_t)p->rp_remaining;
			body_bytes(p, buf + i, n);
			i += n;
			p->rp_remaining -= n;
			if (p->rp_remaining == 0)
				p->rp_chunk_state = CHUNK_DATA_CR;
			continue;
		}
		int rc = chunk_framing_byte(p, buf[i++]);
		if (rc < 0)
			return RESPPARSE_ERROR;
		if (rc > 0) {
			*used = i;
			return RESPPARSE_DONE;
		}
	}
	*used = i;
	return RESPPARSE_MORE;
}

static enum respparse_result feed_body(struct respparse *p, const char *buf, size_t len,
				       size_t *used)
{
	switch (p->rp_framing) {
	case FRAMING_LENGTH: {
		size_t n = len;
		if (n > p->rp_remaining)
			n = (size_t)p->rp_remaining;
		body_bytes(p, buf, n);
		p->rp_remaining -= n;
		*used = n;
		return p->rp_remaining == 0 ? RESPPARSE_DONE : RESPPARSE_MORE;
	}
	case FRAMING_CHUNKED:
		return feed_chunked(p, buf, len, used);
	case FRAMING_UNTIL_CLOSE:
		body_bytes(p, buf, len);
		*used = len;
		return RESPPARSE_MORE;
	default:
		assert(!"feed_body before the headers");
		return RESPPARSE_ERROR;
	}
}

enum respparse_result respparse_feed(struct respparse *p, const char *buf, size_t len,
				     size_t *consumed)
{
	size_t off = 0;

	*consumed = 0;
	while (!p->rp_headers_done) {
		size_t end = header_block_end(p, buf + off, len - off);
		if (end == 0)
			return RESPPARSE_MORE;
		if (parse_header_block(p, buf + off, end) < 0)
			return RESPPARSE_ERROR;
		off += end;
		*consumed = off;
		int s = p->rp_status;
		if (s == 101)
			return RESPPARSE_ERROR;	/* we never ask to upgrade */
		if (s >= 100 && s < 200) {
			/* interim response (100 Continue, 103 Early Hints): the real one follows */
			bool head = p->rp_head_request;
			respparse_reset(p, head);
			continue;
		}
		p->rp_headers_done = true;
	}

	size_t used = 0;
	enum respparse_result r = feed_body(p, buf + off, len - off, &used);
	assert(used <= len - off);
	*consumed = off + used;
	return r;
}

enum respparse_result respparse_eof(struct respparse *p)
{
	if (p->rp_headers_done && p->rp_framing == FRAMING_UNTIL_CLOSE)
		return RESPPARSE_DONE;
	return RESPPARSE_ERROR;
}
