#!/usr/bin/env python3
"""Convert the requests[] and responses[] tables of nodejs/http-parser's test.c into
http_parser_cases.txt, the corpus that tests/unit/test_http1.c runs.

Usage: convert.py HTTP_PARSER_SOURCE_DIR > http_parser_cases.txt

The tables are C designated initialisers. Rather than parse C, this compiles the part of
test.c that defines them (up to the end of responses[]) together with a small dumper, with
the system C compiler, so every string comes out exactly as the C compiler reads it. Nothing
of http-parser is linked or kept: only the data ends up in the output.

Where penstock deliberately differs from http-parser, the case carries penstock's
expectation and a `deviation` line saying why (tables REJECTED and DIFFERENT below).
"""
import os
import subprocess
import sys
import tempfile

# Cases http-parser accepts and penstock rejects on purpose: (expected error, reason).
OBS_FOLD = "obs-fold (a field line continued on the next line) is rejected, as RFC 9112 5.2 allows; " \
           "folding is a request smuggling vector"
REJECTED = {
    ("requests", 19): ("BAD", "HTTP/0.9 request line without a version: penstock speaks only "
                              "HTTP/1.0 and HTTP/1.1 (RFC 9112 3)"),
    ("requests", 21): ("BAD", OBS_FOLD),
    ("requests", 34): ("BAD", "bare LF line endings: penstock requires CRLF (RFC 9112 2.2 lets a "
                              "recipient reject bare LF; it is a smuggling vector); also obs-fold"),
    ("requests", 35): ("BAD", OBS_FOLD),
    ("requests", 37): ("BAD", OBS_FOLD),
    ("requests", 43): ("BAD", "ICE/1.0 is not an HTTP version"),
    ("requests", 44): ("NOT_IMPLEMENTED", "the deflate transfer coding: penstock decodes only "
                                          "chunked, and answers other codings with 501 "
                                          "(RFC 9112 6.1)"),
    ("requests", 45): ("BAD", OBS_FOLD),
    ("responses", 4): ("BAD", "whitespace after a chunk-size without a chunk-ext is not in the "
                              "RFC 9112 7.1 grammar; lenient chunk parsing is a smuggling vector"),
    ("responses", 5): ("BAD", "bare LF line endings: penstock requires CRLF (RFC 9112 2.2)"),
    ("responses", 11): ("VERSION", "HTTP/0.9: penstock speaks only HTTP/1.0 and HTTP/1.1"),
    ("responses", 19): ("BAD", "whitespace inside a field name (RFC 9112 5.1 forbids whitespace "
                               "between the field name and the colon)"),
}

# Cases penstock accepts with different results: overridden fields and the reason.
DIFFERENT = {
    ("requests", 39): ({"body": b"blarfcicle", "upgrade": b""},
                       "CONNECT with Content-Length: penstock frames a request body by its "
                       "Content-Length whatever the method (RFC 9112 6.3); http-parser treats "
                       "everything after a CONNECT head as tunnel data"),
    ("responses", 6): ({"keep_alive": 1},
                       "Proxy-Connection is not a standard field (RFC 9110 7.6.1): penstock "
                       "ignores it, so the HTTP/1.1 connection stays open"),
    ("responses", 24): ({"body": b"", "upgrade": b"bodyproto"},
                        "a 1xx response has no body whatever its fields say (RFC 9112 6.3 rule "
                        "1): the bytes after the head belong to the upgraded protocol"),
    ("responses", 25): ({"body": b"", "upgrade": b"2\r\nbo\r\n2\r\ndy\r\n0\r\n\r\nproto",
                         "chunks": None},
                        "a 1xx response has no body whatever its fields say (RFC 9112 6.3 rule "
                        "1): the bytes after the head belong to the upgraded protocol"),
}

DUMPER = r'''
static const char *method_name(int m)
{
	switch (m) {
#define XX(num, name, string) case num: return #string;
	HTTP_METHOD_MAP(XX)
#undef XX
	}
	return "?";
}

static void hex(const char *s, size_t n)
{
	putchar('\t');
	if (!s) {
		putchar('-');
		return;
	}
	putchar('=');
	for (size_t i = 0; i < n; i++)
		printf("%02x", (unsigned char)s[i]);
}

static void dump(const char *array, const struct message *m, int idx)
{
	printf("%s\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d", array, idx, method_name(m->method),
	       m->status_code, m->http_major, m->http_minor, m->should_keep_alive,
	       m->message_complete_on_eof, m->num_headers, m->num_chunks_complete);
	hex(m->name, strlen(m->name));
	hex(m->raw, strlen(m->raw));
	hex(m->response_status, strlen(m->response_status));
	hex(m->request_url, strlen(m->request_url));
	hex(m->body, strlen(m->body));
	hex(m->upgrade, m->upgrade ? strlen(m->upgrade) : 0);
	for (int i = 0; i < MAX_CHUNKS; i++)
		printf("%s%d", i ? "," : "\t", m->chunk_lengths[i]);
	for (int i = 0; i < m->num_headers; i++) {
		hex(m->headers[i][0], strlen(m->headers[i][0]));
		hex(m->headers[i][1], strlen(m->headers[i][1]));
	}
	putchar('\n');
}

int main(void)
{
	for (size_t i = 0; i < ARRAY_SIZE(requests); i++)
		dump("requests", &requests[i], (int)i);
	for (size_t i = 0; i < ARRAY_SIZE(responses); i++)
		dump("responses", &responses[i], (int)i);
	return 0;
}
'''


def dump_tables(srcdir):
    with open(os.path.join(srcdir, "test.c"), encoding="latin-1") as f:
        src = f.read()
    start = src.index("const struct message responses[]")
    end = src.index("\n};\n", start) + 4
    with tempfile.TemporaryDirectory() as tmp:
        c_path = os.path.join(tmp, "dump.c")
        exe = os.path.join(tmp, "dump")
        with open(c_path, "w", encoding="latin-1") as f:
            f.write(src[:end] + DUMPER)
        # http-parser's default build is not strict: its !HTTP_PARSER_STRICT cases count.
        subprocess.run(["cc", "-w", "-DHTTP_PARSER_STRICT=0", "-I", srcdir, c_path, "-o", exe],
                       check=True)
        out = subprocess.run([exe], check=True, capture_output=True).stdout
    return out.decode("ascii").splitlines()


def unhex(field):
    return None if field == "-" else bytes.fromhex(field[1:])


def escape(b):
    out = []
    for i, c in enumerate(b):
        if c == 0x5c:
            out.append("\\\\")
        elif c == 0x0d:
            out.append("\\r")
        elif c == 0x0a:
            out.append("\\n")
        elif c == 0x09:
            out.append("\\t")
        elif 0x20 < c < 0x7f or (c == 0x20 and 0 < i < len(b) - 1):
            out.append(chr(c))
        else:
            out.append("\\x%02x" % c)
    return "".join(out)


def kv(key, value):
    """A "key value" line; no trailing space when the value is empty."""
    return key + " " + value if value else key


def ows_trim(b):
    return b.strip(b" \t")


def head_field_lines(raw):
    """Number of field lines in the head of a CRLF message (for telling trailers apart)."""
    head = raw.split(b"\r\n\r\n", 1)[0].lstrip(b"\r\n")
    return len(head.split(b"\r\n")) - 1


def convert(line):
    f = line.split("\t")
    array, idx = f[0], int(f[1])
    method, status, major, minor, keep_alive, eof, nheaders, nchunks = f[2:10]
    name, raw, status_text, url, body, upgrade = (unhex(x) for x in f[10:16])
    chunk_lengths = [int(x) for x in f[16].split(",")]
    hv = [unhex(x) for x in f[17:]]
    headers = [(hv[i], hv[i + 1]) for i in range(0, len(hv), 2)]
    assert len(headers) == int(nheaders)
    key = (array, idx)

    out = ["case %s[%d] %s" % (array, idx, name.decode("latin-1")),
           "type " + ("request" if array == "requests" else "response"),
           "raw " + escape(raw)]
    if key in REJECTED:
        err, why = REJECTED[key]
        out += ["expect " + err, "deviation " + why, "end", ""]
        return out

    fields = {"body": body, "upgrade": upgrade, "keep_alive": int(keep_alive),
              "chunks": chunk_lengths[:int(nchunks) - 1] if int(nchunks) > 0 else None}
    deviation = None
    if key in DIFFERENT:
        override, deviation = DIFFERENT[key]
        for k in override:
            v = fields[k]
            text = escape(v) if isinstance(v, bytes) else ",".join(map(str, v)) \
                if isinstance(v, list) else str(v)
            out.append("# http-parser expects " + kv(k, text))
        fields.update(override)

    out.append("expect ok")
    if deviation:
        out.append("deviation " + deviation)
    out.append("version %s.%s" % (major, minor))
    if array == "requests":
        out += [kv("method", method), kv("target", escape(url))]
    else:
        out += [kv("status", status), kv("status_text", escape(status_text))]
    nhead = len(headers)
    if fields["chunks"] is not None and len(headers) > head_field_lines(raw):
        nhead = head_field_lines(raw)
    for i, (hname, hvalue) in enumerate(headers):
        kind = "header" if i < nhead else "trailer"
        out.append(kv(kind, ("%s: %s" % (escape(hname), escape(ows_trim(hvalue)))).rstrip()))
    out.append("keep_alive %d" % fields["keep_alive"])
    out.append("body_until_close " + eof)
    out.append(kv("body", escape(fields["body"])))
    if fields["chunks"] is not None:
        out.append(kv("chunks", ",".join(str(n) for n in fields["chunks"])))
    if fields["upgrade"] is not None:
        out.append(kv("upgrade", escape(fields["upgrade"])))
    out += ["end", ""]
    return out


HEADER = """\
# http_parser_cases.txt - the requests[] and responses[] tables of nodejs/http-parser
# v2.9.4 test.c (MIT licence, see README.md), converted by convert.py. Do not edit by hand:
# change convert.py (its REJECTED and DIFFERENT tables hold penstock's deviations) and rerun.
#
# One block per case, from "case" to "end". Values are escaped: \\\\ \\r \\n \\t \\xHH.
#   case ARRAY[INDEX] NAME   type request|response   raw BYTES
#   expect ok|BAD|VERSION|NOT_IMPLEMENTED|HEADER_TOO_BIG|BODY_TOO_BIG
#   deviation WHY            (where penstock deliberately differs from http-parser)
#   version, method, target (requests), status, status_text (responses)
#   header NAME: VALUE       (in order; values OWS-trimmed)
#   trailer NAME: VALUE      (fields of the chunked trailer section)
#   keep_alive 0|1   body_until_close 0|1   body BYTES (decoded)
#   chunks N,N...            (sizes of the data chunks, when chunked)
#   upgrade BYTES            (what follows the message; absent: nothing, or only CRLFs)
"""


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: convert.py HTTP_PARSER_SOURCE_DIR > http_parser_cases.txt")
    lines = dump_tables(sys.argv[1])
    seen = set()
    out = [HEADER]
    for line in lines:
        f = line.split("\t")
        seen.add((f[0], int(f[1])))
        out += convert(line)
    missing = (set(REJECTED) | set(DIFFERENT)) - seen
    if missing:
        sys.exit("deviation tables name cases that do not exist: %s" % sorted(missing))
    sys.stdout.write("\n".join(out))


if __name__ == "__main__":
    main()
