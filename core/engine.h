/* engine.h - thread-per-core io_uring server engine.
 *
 * One worker thread per core, each pinned, with its own io_uring, its own SO_REUSEPORT
 * listener (multishot accept), its own connections and a provided buffer ring that
 * multishot recv fills. A connection lives on one worker for its whole life; nothing
 * here takes a lock on the request path.
 *
 * The engine knows HTTP/1.1 framing but nothing of LLMs: it parses a request (head and
 * whole body, within the configured limits) and hands it to the handler as an exchange.
 * The handler answers with ex_respond() or streams with ex_begin()/ex_write()/ex_finish(),
 * possibly later, from completions of its own (upstream calls, timers) on the same worker.
 *
 * Every in-flight io_uring operation carries a pointer to a struct ev as user_data; its
 * fn runs on completion. Objects owning evs stay alive until those complete.
 */
#ifndef PENSTOCK_ENGINE_H
#define PENSTOCK_ENGINE_H

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "http1.h"
#include "str.h"

struct worker;
struct exchange;

/* A pending io_uring operation: user_data points here. */
struct ev {
	void (*fn)(struct worker *w, struct ev *ev, struct io_uring_cqe *cqe);
};

/* Deadlines with one fixed duration per queue: appending keeps a queue sorted, so arming,
 * disarming and expiring are O(1). */
enum timer_queue {
	TQ_HEADER,       /* a request head must arrive within timeouts.header_read */
	TQ_BODY,         /* its body within timeouts.body_read */
	TQ_IDLE,         /* keep-alive idle, and a client that stops reading our response */
	TQ_UP_CONNECT,
	TQ_UP_FIRST_BYTE,
	TQ_UP_IDLE,
	TQ_POOL_IDLE,    /* idle upstream connection kept in a pool */
	TQ_COUNT
};

struct timer {
	struct timer *prev, *next;
	uint64_t deadline_ms;
	void (*fn)(struct worker *w, struct timer *t);
};

struct engine_timeouts { /* milliseconds */
	uint32_t header_read, body_read, idle;
	uint32_t upstream_connect, upstream_first_byte, upstream_idle, pool_idle;
	uint32_t shutdown_grace;
};

struct engine_handler {
	/* Per-worker state for the handler (upstream pools, counters); may be NULL. */
	void *(*worker_init)(struct worker *w, void *ctx);
	void (*worker_fini)(struct worker *w, void *state);
	/* Shutdown began: close what is idle (pooled upstream connections). */
	void (*worker_stop)(struct worker *w, void *state);
	/* Each turn of the worker's loop, before it waits: the handler's own work that is due
	 * (flushing buffered log lines). Returns how long the worker may wait before the next
	 * call, in ms (UINT32_MAX: until something else happens). May be NULL. */
	uint32_t (*worker_tick)(struct worker *w, void *state);
	/* A whole request arrived. The handler must finish the exchange: ex_respond(),
	 * or ex_begin() ... ex_finish(), now or later on this worker. */
	void (*on_request)(struct exchange *ex);
	/* The exchange is going away before the handler finished it (client gone, engine
	 * stopping). Release what refers to it; no ex_* call is allowed after this. */
	void (*on_abort)(struct exchange *ex);
	/* A request the engine rejected itself (malformed, too large, unsupported). The
	 * handler writes the error body in its API's shape with ex_respond(); the engine
	 * closes the connection afterwards. */
	void (*on_reject)(struct exchange *ex, int status, const char *why);
	void *ctx;
};

struct engine_options {
	const char *host; /* numeric address or "localhost" */
	uint16_t port;
	unsigned workers;     /* 0 = one per online core */
	uint32_t busy_poll_us; /* poll this long before sleeping (0: sleep at once) */
	bool pin;             /* pin worker i to the i-th allowed CPU */
	unsigned buffers;     /* provided receive buffers per worker (power of two) */
	unsigned buffer_size; /* bytes each */
	struct http1_limits limits;
	unsigned max_connections; /* per worker */
	struct engine_timeouts timeouts;
	const struct engine_handler *handler;
	const char *name; /* for log lines */
};

struct engine;

/* Bind listeners and start the workers. Returns NULL (logged) on failure. */
struct engine *engine_start(const struct engine_options *opt);
struct engine_stats {
	uint64_t accepted; /* connections accepted since start */
	uint64_t open;     /* connections open now */
};
/* Summed over workers; any thread may call it. */
void engine_stats(const struct engine *e, struct engine_stats *st);

/* The port actually bound (when opt->port was 0). */
uint16_t engine_port(const struct engine *e);
/* Stop accepting; let exchanges in flight finish up to timeouts.shutdown_grace, then
 * close what remains. Async-signal-safe. */
void engine_stop(struct engine *e);
/* Make every worker turn its loop once (the handler's worker_tick runs), e.g. to take a
 * new configuration while idle. Any thread. */
void engine_wake(struct engine *e);
/* Wait for the workers to finish and free everything. */
void engine_join(struct engine *e);

/* ---- worker services, for the handler and the modules it drives ---- */

unsigned worker_id(const struct worker *w);
void *worker_state(const struct worker *w); /* what handler->worker_init returned */
uint64_t worker_now_ms(const struct worker *w); /* monotonic, updated once per loop turn */
bool worker_stopping(const struct worker *w);
/* An SQE, submitting queued ones if the ring is full (never NULL). */
struct io_uring_sqe *worker_sqe(struct worker *w);
int worker_buffer_group(const struct worker *w);
/* Provided buffers: a CQE's buffer id is held until released. References let one
 * receive buffer back several outgoing slices. */
char *worker_buffer(struct worker *w, uint16_t bid);
size_t worker_buffer_size(const struct worker *w);
/* The buffer a completion carries (IORING_CQE_F_BUFFER): the caller owns it with one
 * reference. */
uint16_t worker_buffer_take(struct worker *w, const struct io_uring_cqe *cqe);
void worker_buffer_ref(struct worker *w, uint16_t bid);
void worker_buffer_unref(struct worker *w, uint16_t bid);

/* Objects outside the engine with operations in flight keep their worker running
 * through shutdown until they are released. */
void worker_hold(struct worker *w);
void worker_release(struct worker *w);

void timer_arm(struct worker *w, enum timer_queue q, struct timer *t);
void timer_disarm(struct timer *t);
static inline bool timer_armed(const struct timer *t) { return t->next != NULL; }

/* ---- exchanges: one request and its response ---- */

struct exchange {
	struct http1_request req;
	struct slice body;   /* whole request body (de-chunked), valid until the exchange ends */
	char id[24];         /* request id: NUL-terminated, 20 hex chars */
	uint64_t start_ms;
	void *user;          /* the handler's per-exchange state */
	/* engine-private */
	struct conn *conn;
};

struct worker *ex_worker(const struct exchange *ex);
/* Whole response with a small body (copied). extra_headers: zero or more complete
 * "Name: value\r\n" lines, or NULL. */
void ex_respond(struct exchange *ex, int status, const char *content_type,
		const char *extra_headers, struct slice body);

/* Streaming response. content_length < 0: chunked. */
void ex_begin(struct exchange *ex, int status, const char *content_type,
	      const char *extra_headers, int64_t content_length);
/* Queue body bytes (framed as a chunk when chunked). The bytes are not copied: release
 * runs (with arg) once they have been sent or the exchange is torn down. Returns false
 * when the connection is gone (release has been called already). */
bool ex_write(struct exchange *ex, struct slice data, void (*release)(void *arg, uint64_t arg2),
	      void *arg, uint64_t arg2);
/* Bytes queued for the client and not yet sent: callers stop producing above a limit. */
size_t ex_pending(const struct exchange *ex);
/* Called when pending output falls below the low-water mark after being above it. */
void ex_on_drain(struct exchange *ex, void (*fn)(struct exchange *ex));
void ex_finish(struct exchange *ex);
/* End the response without its proper ending: what is queued is still sent, then the
 * connection is reset, so the client sees a truncated body (chunked without its last
 * chunk, or short of its Content-Length), never a complete-looking one. */
void ex_truncate(struct exchange *ex);
/* Abort the connection now (e.g. upstream died mid-body and the framing can't be ended
 * honestly with Content-Length). The handler's on_abort is NOT called. */
void ex_close(struct exchange *ex);

/* A one-shot timer for the handler (kernel timeout); one per exchange at a time.
 * Cancelled when the exchange ends. */
void ex_after(struct exchange *ex, uint32_t ms, void (*fn)(struct exchange *ex));

/* The client's address as "ip:port" ("[ip6]:port"), for the audit trail; "" if the
 * socket cannot tell (one getpeername). */
void ex_peer(const struct exchange *ex, char *out, size_t cap);

/* Hold back the end of the response (its last byte) until ex_unhold(): everything else is
 * sent as usual, so the client cannot see the response complete before the handler says
 * so (strict audit durability: not before the request's record is on disk). Take it before
 * the response's last bytes are queued. The hold keeps the connection's memory alive and
 * outlives the exchange; NULL if the connection is already closing. */
struct ex_hold;
struct ex_hold *ex_hold(struct exchange *ex);
/* Let the response end (ok), or reset the connection so that the client sees it cut
 * short (!ok; no on_abort). Either way the hold is gone. */
void ex_unhold(struct ex_hold *h, bool ok);

/* Find a request header (case-insensitive). */
const struct http1_header *ex_header(const struct exchange *ex, const char *name);

/* The reason phrase for a status code. */
const char *http_reason(int status);

#endif
