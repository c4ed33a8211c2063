/* redact.h - secrets out of stored text: the audit trail may keep prompt and response bodies
 * (per team, off by default, docs/audit.md), and a body is the last place a key pasted into
 * a prompt should live on. Known secret shapes are replaced with "[REDACTED]": OpenAI-style
 * keys (sk-, sk-proj-, sk-ant-), penstock keys (psk-), AWS access key ids, GitHub and Slack
 * tokens, JWTs, PEM private key blocks, "Authorization: Bearer" values and "api_key",
 * "password", "secret", "token" assignments. Then the text is bounded.
 *
 * The patterns are one PCRE2 alternation, compiled (JIT) once on first use and shared
 * read-only by every thread; each thread has its own match data. Fails closed: when the
 * patterns cannot be compiled nothing is returned, never the text as it was.
 */
#ifndef PENSTOCK_REDACT_H
#define PENSTOCK_REDACT_H

#include <stddef.h>

#include "core/buf.h"
#include "core/str.h"

#define REDACT_MARK "[REDACTED]"
#define REDACT_CUT "[TRUNCATED]" /* ends a text cut at its bound */

/* Append text, secrets replaced, to out, at most max bytes of it (max >= sizeof(REDACT_CUT)):
 * a longer result is cut on a UTF-8 boundary and ends with REDACT_CUT. 0, -ENOMEM, or -EIO
 * when the patterns are unavailable (out is then as it was). */
int redact(struct slice text, size_t max, struct buf *out);

#endif
