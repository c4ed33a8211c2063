/* redact.c - one alternation of secret shapes, compiled once (pthread_once), JIT when the
 * platform has it; match data per thread (a pthread key frees it when the thread ends). */
#include "policy/redact.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdint.h>
#include <stdbool.h>
#include <string.h>

/* Text past the bound is cut anyway: only this much more is searched, so that a secret that
 * straddles the cut is still seen whole. */
#define REDACT_SLACK 8192

/* \K keeps a label ("Authorization: Bearer ", "\"password\": \"") and redacts what follows.
 * A quote may come escaped (\"): bodies are JSON, and a prompt's quotes are inside one. */
static const char pattern[] =
	/* OpenAI-style keys: sk-..., sk-proj-..., sk-ant-api03-... */
	"\\bsk-[A-Za-z0-9_-]{20,}"
	/* penstock keys */
	"|\\bpsk-[A-Za-z0-9_-]{16,}"
	/* AWS access key ids (long-term and temporary) */
	"|\\b(?:AKIA|ASIA)[0-9A-Z]{16}\\b"
	/* GitHub tokens */
	"|\\bgh[pousr]_[A-Za-z0-9]{36,}"
	/* Slack tokens */
	"|\\bxox[abposr]-[A-Za-z0-9-]{10,}"
	/* JWTs: two base64url JSON parts and a signature */
	"|\\beyJ[A-Za-z0-9_-]{4,}\\.eyJ[A-Za-z0-9_-]{4,}\\.[A-Za-z0-9_-]*"
	/* PEM private key blocks; one that is cut off is redacted to the end */
	"|-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?s:.*?)(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\\z)"
	/* Authorization: Bearer <token> (a header, or "Authorization": "Bearer ...") */
	"|(?i:authorization)(?:\\\\?\")?\\s*[:=]\\s*(?:\\\\?\")?\\s*(?i:bearer)\\s+\\K"
	"[A-Za-z0-9._~+/=-]+"
	/* "api_key": "...", "password": "...", ... (JSON, or JSON inside a JSON string) */
	"|\\\\?\"(?i:api[_-]?key|password|passwd|secret|client_secret|access_token|token)"
	"\\\\?\"\\s*:\\s*\\\\?\"\\K(?:[^\"\\\\]|\\\\[^\"])+";

static pcre2_code *code;
static bool jit;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_key_t md_key;
static bool md_key_ok;

static void md_free(void *md) { pcre2_match_data_free(md); }

static void compile(void)
{
	int err;
	PCRE2_SIZE where;
	code = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, 0, &err, &where, NULL);
	if (!code)
		return;
	jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
	md_key_ok = pthread_key_create(&md_key, md_free) == 0;
}

static pcre2_match_data *match_data(void)
{
	pthread_once(&once, compile);
	if (!code || !md_key_ok)
		return NULL;
	pcre2_match_data *md = pthread_getspecific(md_key);
	if (md)
		return md;
	md = pcre2_match_data_create_from_pattern(code, NULL);
	if (md && pthread_setspecific(md_key, md) != 0) {
		pcre2_match_data_free(md);
		md = NULL;
	}
	return md;
}

static int next_match(pcre2_match_data *md, const char *s, size_t n, size_t off)
{
	/* Bodies need not be valid UTF-8: the patterns are ASCII, so subjects are bytes. */
	if (jit)
		return pcre2_jit_match(code, (PCRE2_SPTR)s, n, off, 0, md, NULL);
	return pcre2_match(code, (PCRE2_SPTR)s, n, off, 0, md, NULL);
}

/* Append up to lim bytes in all: past the bound only the fact that it was passed matters. */
static bool put_upto(struct buf *out, const char *p, size_t n, size_t lim)
{
	if (out->len >= lim)
		return true;
	return buf_append(out, p, n < lim - out->len ? n : lim - out->len, SIZE_MAX);
}

int redact(struct slice text, size_t max, struct buf *out)
{
	size_t cut_len = sizeof(REDACT_CUT) - 1;
	if (max <= cut_len)
		return -EINVAL;
	pcre2_match_data *md = match_data();
	if (!md)
		return -EIO;
	size_t base = out->len, n = text.n, off = 0;
	size_t lim = base + max + 1; /* one byte over says: cut */
	if (n > max + REDACT_SLACK)
		n = max + REDACT_SLACK;
	bool ok = true;
	while (ok && off < n && out->len < lim && next_match(md, text.p, n, off) >= 0) {
		const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
		size_t start = ov[0], end = ov[1];
		if (start < off || end > n || end <= start) /* empty (cannot be), or \K oddity */
			break;
		ok = put_upto(out, text.p + off, start - off, lim) &&
		     put_upto(out, REDACT_MARK, sizeof(REDACT_MARK) - 1, lim);
		off = end;
	}
	if (ok && off < n)
		ok = put_upto(out, text.p + off, n - off, lim);
	size_t len = out->len - base;
	if (ok && len <= max && n == text.n)
		return 0;
	size_t keep = len < max - cut_len ? len : max - cut_len;
	while (keep > 0 && keep < len && ((unsigned char)out->p[base + keep] & 0xc0) == 0x80)
		keep--; /* not inside a UTF-8 sequence */
	out->len = base + keep;
	if (ok && buf_append(out, REDACT_CUT, cut_len, SIZE_MAX))
		return 0;
	out->len = base;
	return -ENOMEM;
}
