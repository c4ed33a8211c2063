/* ratelimit.h - requests-per-minute and tokens-per-minute limits for any subject (a key, a
 * team, a model), lock-free across workers.
 *
 * Each subject has a shared pool per dimension (requests, tokens): a token bucket that holds
 * up to one minute's limit and refills continuously at limit/60 s, kept as ONE atomic int64
 * (GCRA's "theoretical arrival time", in monotonic nanoseconds) and changed only by CAS.
 * Workers do not touch the pool for every request: each worker keeps a private credit per
 * subject and dimension, borrowed from the pool a chunk at a time, and admits from it with
 * plain loads and stores. The pool sees one CAS per chunk, not per request.
 *
 * Accuracy bound. A worker's credit never exceeds one chunk (what it borrows is what it needs
 * plus at most a chunk; what comes back above a chunk goes back to the pool). Units admitted
 * within a window were either taken from the pool within it or held as credit at its start,
 * so over ANY window of length w, for each subject and dimension:
 *
 *     admitted <= limit + limit * w / 60 s + workers * chunk
 *
 * where limit + limit * w / 60 s is what one exact token bucket of capacity `limit` admits
 * (a burst of a full minute, then the refill), and workers * chunk is the cost of not
 * sharing a counter. chunk = max(1, limit / (workers * RATELIMIT_CHUNK_DIV)), so the slack
 * is at most limit / RATELIMIT_CHUNK_DIV (about 3%) once limit >= workers * 32; below that
 * chunk is 1 and the slack is `workers` units. Nothing is lost either: credit stranded on an
 * idle worker is at most a chunk, so a busy subject gets at least limit * (1 + w / 60 s) -
 * workers * chunk. Tokens settled above the estimate (ratelimit_settle) are charged, as debt
 * when the pool is empty, so the bound holds for real token counts, not only estimates.
 *
 * Threads: ratelimit_acquire/cancel/settle are called by worker `worker` only (its credit is
 * private); any number of workers concurrently; no locks, no syscalls, no allocation.
 * ratelimit_add/ratelimit_set are the control thread's (one at a time). Time is a
 * parameter (CLOCK_MONOTONIC nanoseconds in the gateway, anything monotonic in tests).
 */
#ifndef PENSTOCK_RATELIMIT_H
#define PENSTOCK_RATELIMIT_H

#include <stdint.h>

#define RATELIMIT_CHUNK_DIV 32        /* chunk = limit / (workers * this), at least 1 */
#define RATELIMIT_PERIOD_NS 60000000000LL /* the limits are per minute */
#define RATELIMIT_LIMIT_MAX (1ull << 40) /* per minute; larger is refused by add/set */

struct ratelimit_spec {
	uint64_t rpm; /* requests per minute, 0 = unlimited */
	uint64_t tpm; /* tokens per minute, 0 = unlimited */
};

enum ratelimit_verdict {
	RATELIMIT_ADMIT = 0,
	RATELIMIT_REQUESTS,  /* the requests-per-minute pool is empty: 429, retry later */
	RATELIMIT_TOKENS,    /* the tokens-per-minute pool cannot cover the estimate yet */
	RATELIMIT_TOO_LARGE, /* the estimate alone exceeds tpm: it never fits (429, no retry) */
};

/* What a 429 (or a 200, if the gateway chooses to send them) needs. Limits are 0 and
 * remaining figures UINT64_MAX for an unlimited dimension. */
struct ratelimit_info {
	uint64_t limit_requests, remaining_requests; /* x-ratelimit-*-requests */
	uint64_t limit_tokens, remaining_tokens;     /* x-ratelimit-*-tokens */
	uint32_t retry_after_s;   /* refused: whole seconds (rounded up, >= 1) until it fits */
	uint32_t reset_requests_ms, reset_tokens_ms; /* until the pool would be full again */
};

/* One limiter for `workers` workers and up to subjects_max subjects, every subject
 * unlimited until ratelimit_add() gives it limits; now_ns is the clock's current reading
 * (pools start full). NULL with *err = -EINVAL (0 workers or subjects, too many) or
 * -ENOMEM. Memory: 64 B per subject plus 16 B per subject per worker. */
struct ratelimit *ratelimit_new(unsigned workers, uint32_t subjects_max, int64_t now_ns,
				int *err);
void ratelimit_free(struct ratelimit *rl);

/* Control thread. A new subject with these limits; its index in *subject. 0, -ENOSPC when
 * subjects_max are in use, -EINVAL for a limit over RATELIMIT_LIMIT_MAX. The index must
 * reach workers through a release/acquire publication (a config snapshot, a key record). */
int ratelimit_add(struct ratelimit *rl, const struct ratelimit_spec *spec, uint32_t *subject);
/* Control thread (config reload). New limits for a subject; the pool keeps its fill as a
 * fraction of a minute, so a half-empty pool stays half empty at the new limit. */
int ratelimit_set(struct ratelimit *rl, uint32_t subject, const struct ratelimit_spec *spec);

/* Worker `worker`, at admission: take `requests` from the RPM pool and `tokens` (the prompt
 * estimate plus what the caller budgets for the completion, its choice) from the TPM pool,
 * both or neither. info may be NULL; when given it is filled whatever the verdict (the
 * remaining figures include this worker's credit, not other workers'). */
enum ratelimit_verdict ratelimit_acquire(struct ratelimit *rl, unsigned worker, uint32_t subject,
					 uint32_t requests, uint64_t tokens, int64_t now_ns,
					 struct ratelimit_info *info);
/* Worker: give back an admission that did not go ahead (e.g. another subject of the same
 * request refused it): the request and tokens return to the worker's credit. */
void ratelimit_cancel(struct ratelimit *rl, unsigned worker, uint32_t subject, uint32_t requests,
		      uint64_t tokens);
/* Worker, at the end of a request: charge the real token count instead of what acquire
 * took. Fewer tokens return to credit; more are taken, as debt if the pool is empty (the
 * next admissions wait for it to refill). */
void ratelimit_settle(struct ratelimit *rl, unsigned worker, uint32_t subject,
		      uint64_t estimate, uint64_t actual, int64_t now_ns);

/* The borrow chunk of a subject's dimension (0 requests, 1 tokens): the bound's `chunk`. */
uint64_t ratelimit_chunk(const struct ratelimit *rl, uint32_t subject, unsigned dimension);

#endif
