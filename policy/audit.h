/* audit.h - the audit trail: one record per request that reached authentication (refused
 * ones included: 401, 403, 429 are what a security team asks about), its compact encoding,
 * queries, exports (JSON lines, CSV) and the chain check.
 *
 * The pipeline fills a struct audit_rec from the request's state; policy/gov encodes it
 * and submits it with the request's spend records as one store unit, so the audit trail
 * and the spend ledger commit together or not at all. The store thread keys each record
 * by its commit stamp (UTC nanoseconds, strictly increasing: a time-range scan is a cursor
 * range) and chains it: value = SHA-256(previous hash | stamp | content) | content
 * (policy/store, STORE_OP_AUDIT). Readers (the admin plane, penstockctl) decode with
 * audit_decode() inside short read transactions. docs/audit.md has the layout.
 */
#ifndef PENSTOCK_AUDIT_H
#define PENSTOCK_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/str.h"
#include "policy/store.h"

#define AUDIT_VERSION 2        /* 2 added the bodies; version 1 records still decode */
#define AUDIT_ATTEMPTS_MAX 8
#define AUDIT_STR_MAX 255      /* longer strings are cut (names, ids, addresses) */
#define AUDIT_CONTENT_MAX 4096 /* an encoded record without bodies is never longer */
#define AUDIT_BODY_MAX 512000  /* longer bodies are cut (the config bounds them lower) */

enum audit_usage {
	AUDIT_USAGE_NONE = 0,     /* nothing billed (refused, or no provider answered 2xx) */
	AUDIT_USAGE_PROVIDER = 1, /* the provider's usage figures */
	AUDIT_USAGE_GATEWAY = 2,  /* the gateway's own count (no usage reported, stream cut) */
};

enum audit_dialect { AUDIT_DIALECT_OPENAI = 0, AUDIT_DIALECT_ANTHROPIC = 1 };

struct audit_attempt {
	struct slice provider, model; /* the target: provider name, upstream model */
	uint16_t status;              /* the provider's, 0 if it never answered */
	struct slice error;           /* how it failed ("refused", "reset", ...), empty if not */
};

/* A decoded record: the slices point into the encoded bytes (or the caller's strings). */
struct audit_rec {
	int64_t time_ns;            /* the request's arrival, UTC */
	struct slice request_id;    /* x-request-id */
	struct slice key_id;        /* the key's public id (never its secret); empty: none */
	struct slice team;
	struct slice client;        /* the peer's address: "ip:port", "[ip6]:port" */
	uint8_t dialect;            /* enum audit_dialect */
	struct slice model;         /* the model the client asked for */
	struct slice provider;      /* who served (the last attempt's target); empty: none */
	struct slice upstream_model;
	uint16_t status;            /* sent to the client */
	bool stream;
	uint8_t usage;              /* enum audit_usage */
	uint64_t prompt_tokens, completion_tokens, cached_tokens;
	int64_t cost_micro_usd;
	uint64_t total_us;          /* arrival to the end of the response */
	uint64_t first_byte_us;     /* arrival to the serving provider's first byte; 0: none */
	uint64_t upstream_us;       /* the serving attempt, start to end; 0: none */
	unsigned nattempts;
	struct audit_attempt attempts[AUDIT_ATTEMPTS_MAX];
	/* Bodies, only for a team with audit_bodies, already redacted and bounded (policy/
	 * redact): the request as the client sent it, the answer as the client got it. */
	bool has_request_body, has_response_body;
	bool response_streamed; /* the answer was a stream: no response body is kept */
	struct slice request_body, response_body;
};

/* Encode into out (cap >= audit_encode_bound(a) always suffices). The length, or 0. */
size_t audit_encode(const struct audit_rec *a, uint8_t *out, size_t cap);
/* AUDIT_CONTENT_MAX, plus room for a's bodies. */
size_t audit_encode_bound(const struct audit_rec *a);
/* 0, or -EBADMSG for bytes that are not a record of a version this build reads. */
int audit_decode(const void *p, size_t n, struct audit_rec *a);

/* A stored entry: its key (the commit stamp), chain hash and decoded content. */
struct audit_entry {
	uint64_t stamp;
	const uint8_t *hash; /* STORE_AUDIT_HASH_LEN bytes */
	struct audit_rec rec;
};

/* ---- queries ---- */

struct audit_filter {
	uint64_t since_ns, until_ns; /* commit stamps, since included, until excluded; 0: open */
	const char *key_id, *team, *model; /* NULL: any; model matches the one asked for */
	uint16_t status_lo, status_hi;     /* both 0: any */
};

/* "200", "4xx" (a class) -> status_lo/hi. 0 or -EINVAL. */
int audit_status_parse(const char *s, struct audit_filter *f);
/* "2024-05-01", "2024-05-01T12:00:00Z" (RFC 3339, any offset) or UTC nanoseconds -> ns. */
int audit_time_parse(const char *s, uint64_t *ns);

typedef int (*audit_entry_fn)(void *arg, const struct audit_entry *e);

/* Within a read: fn for each entry that passes f, in commit order, starting after *cursor
 * (0: from f->since_ns). At most `budget` entries are looked at, so that a caller can end
 * the read and begin another (keeping reads short) and go on from *cursor. Returns 1 when
 * more entries may follow, 0 at the end, what fn returned if not 0, or the store's error. */
int audit_query(struct store_reader *r, const struct audit_filter *f, uint64_t *cursor,
		size_t budget, audit_entry_fn fn, void *arg);

/* ---- formats ---- */

/* One JSON object and a newline. false if out of memory (or past max bytes). */
bool audit_json(const struct audit_entry *e, struct buf *out, size_t max);
/* The CSV header line, and one row (RFC 4180 quoting). */
const char *audit_csv_header(void);
bool audit_csv(const struct audit_entry *e, struct buf *out, size_t max);

/* ---- the chain ---- */

struct audit_verify {
	uint64_t checked;       /* records whose link was checked */
	uint64_t anchor_stamp;  /* where the walk began: the last pruned record, 0: none */
	uint64_t bad_stamp;     /* the first broken record; 0: the chain is whole */
	char why[128];
};

/* Walk the whole chain from the anchor in one read (begun here): each record's hash must
 * be SHA-256(previous hash | stamp | content) and stamps must increase. 0 whether the
 * chain is whole or not (v says); an error when the store cannot be read. */
int audit_verify_chain(struct store_reader *r, struct audit_verify *v);

#endif
