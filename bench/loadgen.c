/* loadgen: an open- or closed-loop HTTP/1.1 load generator on io_uring, for the penstock bench. */
#include "hdrhist.h"
#include "respparse.h"
#include "ssetiming.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Limits: every input and every loop is bounded. */
#define LOADGEN_MAX_CONNECTIONS	50000
#define LOADGEN_MAX_THREADS	64
#define LOADGEN_MAX_HEADERS	64
#define LOADGEN_MAX_BODY_BYTES	(16u << 20)
#define LOADGEN_MAX_DURATION_S	3600.0
#define LOADGEN_MAX_RATE	10e6
#define LOADGEN_MAX_STALL_MS	3600e3
#define LOADGEN_MAX_EXPECT_EVENTS 1e9
/* Per connection; also the largest response header block we accept. */
#define LOADGEN_RECV_BUFFER_BYTES 16384
/* How long the start waits for every connection to open before it goes on without them. */
#define LOADGEN_CONNECT_WAIT_NS	(5 * NS_PER_S)
/* A failed connect is retried after this, so a dead target is not hammered in a tight loop. */
#define LOADGEN_RETRY_NS	(10 * NS_PER_MS)

#define NS_PER_S	UINT64_C(1000000000)
#define NS_PER_MS	UINT64_C(1000000)

struct options {
	char host[64];
	uint16_t port;
	const char *path;
	struct sockaddr_in addr;
	const char *method;
	const char *body_file;
	const char *headers[LOADGEN_MAX_HEADERS];
	unsigned header_count;
	unsigned connections;
	unsigned threads;
	double duration_s;
	double warmup_s;
	double rate;		/* requests per second over all connections; 0: closed loop */
	bool stream;
	double stall_ms;	/* --stream: a gap between events over this is a stall; 0: off */
	uint32_t expect_events;	/* --stream: a response with fewer events lost some; 0: off */
	const char *json_path;
	const char *url;
};

struct stats {
	uint64_t completed;		/* responses that ended inside the measured window */
	uint64_t status_class[6];	/* [status / 100]; [0] for anything out of 100..599 */
	uint64_t errors_connect;
	uint64_t errors_read;		/* reset, or closed before the response ended */
	uint64_t errors_write;
	uint64_t errors_parse;		/* malformed response, or bytes nobody asked for */
	uint64_t reconnects;
	uint64_t bytes_received;
	uint64_t events;		/* SSE events in completed responses */
	uint64_t responses_without_events; /* in --stream mode: a sign of a wrong endpoint */
	uint64_t events_arrived;	/* SSE events that arrived inside the measured window */
	uint64_t stalls;		/* gaps between events over --stall-ms, open ones at the end too */
	uint64_t responses_stalled;	/* ended streams with at least one stall */
	uint64_t responses_short;	/* ended streams with fewer than --expect-events events */
	uint64_t events_lost;		/* what those lacked, in all */
	uint64_t responses_without_done; /* ended streams whose last event was not [DONE] */
	uint64_t streams_cut;		/* streams whose connection failed after their head */
	uint64_t backlog_at_end;	/* open loop: requests due but never sent */
	uint64_t in_flight_at_end;
	uint64_t connections_open_at_start;
	struct hdrhist latency;		/* ns: intended (open) or real (closed) send to end */
	struct hdrhist ttfb;		/* ns: to the first body byte */
	struct hdrhist ttfe;		/* ns: to the first complete SSE event */
	struct hdrhist send_lag;	/* ns: actual send minus intended send (open loop) */
	struct hdrhist event_gap;	/* ns: between consecutive SSE events of a response */
	struct hdrhist latency_uncorrected; /* ns: actual send to end (open loop): CO hides here */
};

/* What every worker reads and nobody writes once the workers run. */
struct shared {
	const struct options *opt;
	const char *request;
	size_t request_len;
	bool head_request;
	uint64_t stall_ns;		/* --stall-ms; 0: off */
	pthread_barrier_t barrier;
	uint64_t t0_ns;			/* schedule origin, after all connections opened */
	uint64_t t_measure_ns;		/* end of warmup */
	uint64_t t_end_ns;
	bool abort;
};

enum conn_state {
	CONN_CONNECTING,
	CONN_IDLE,		/* open, no request outstanding */
	CONN_BUSY,		/* request sent or being sent, response not yet complete */
	CONN_CLOSING,		/* shut down, waiting for its ops to complete before close() */
	CONN_WAIT_RETRY,	/* connect failed, retry timer armed */
	CONN_DEAD,		/* closed at the end of the run */
};

enum op {
	OP_CONNECT = 1,
	OP_RECV,
	OP_SEND,
	OP_RETRY,
};

struct conn {
	int fd;
	uint32_t id;
	enum conn_state state;
	bool connect_pending;
	bool recv_pending;
	bool send_pending;
	bool retry_pending;
	bool send_queued;	/* a request waits for the previous send's completion */
	int idle_pos;		/* index in the worker's idle stack, -1 when not there */
	size_t sent;
	uint64_t start_ns;	/* intended send (open loop) or actual send (closed loop) */
	uint64_t send_ns;	/* when the send was actually submitted */
	uint64_t ttfb_ns;	/* 0 until the first body byte */
	uint64_t ttfe_ns;	/* 0 until the first event */
	size_t rfill;
	struct respparse parser;
	struct ssetiming sse;
	struct __kernel_timespec retry_ts;
	char *rbuf;
};

enum phase {
	PHASE_CONNECT,
	PHASE_RUN,
	PHASE_STOP,
};

struct worker {
	unsigned index;
	const struct shared *sh;
	struct io_uring ring;
	bool ring_ready;
	enum phase phase;
	struct conn *conns;
	unsigned nconns;
	unsigned *idle;		/* stack of idle connection ids (open loop) */
	unsigned nidle;
	uint64_t sched_k;	/* open loop: this worker's next request is its k-th */
	uint64_t next_due_ns;
	struct stats st;
	int error;		/* negative errno from setup */
	pthread_t thread;
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static bool open_loop(const struct worker *w)
{
	return w->sh->opt->rate > 0;
}

static bool in_window(const struct worker *w, uint64_t now)
{
	return w->phase == PHASE_RUN && now >= w->sh->t_measure_ns;
}

/* ---- submission helpers ---- */

static uint64_t pack_user_data(const struct conn *c, enum op op)
{
	return (uint64_t)c->id << 8 | (uint64_t)op;
}

static struct io_uring_sqe *get_sqe(struct worker *w)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
	if (!sqe) {
		/* SQ full: hand what we have to the kernel, then there is room */
		io_uring_submit(&w->ring);
		sqe = io_uring_get_sqe(&w->ring);
	}
	assert(sqe);
	return sqe;
}

static void arm_recv(struct worker *w, struct conn *c)
{
	assert(!c->recv_pending);
	assert(c->rfill < LOADGEN_RECV_BUFFER_BYTES);
	struct io_uring_sqe *sqe = get_sqe(w);
	io_uring_prep_recv(sqe, c->fd, c->rbuf + c->rfill, LOADGEN_RECV_BUFFER_BYTES - c->rfill, 0);
	/* the response is never there yet when we arm: skip the first, futile attempt */
	sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
	io_uring_sqe_set_data64(sqe, pack_user_data(c, OP_RECV));
	c->recv_pending = true;
}

static void arm_send(struct worker *w, struct conn *c)
{
	const struct shared *sh = w->sh;

	assert(!c->send_pending);
	assert(c->sent < sh->request_len);
	struct io_uring_sqe *sqe = get_sqe(w);
	io_uring_prep_send(sqe, c->fd, sh->request + c->sent, sh->request_len - c->sent,
			   MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, pack_user_data(c, OP_SEND));
	c->send_pending = true;
}

static void arm_retry(struct worker *w, struct conn *c)
{
	assert(!c->retry_pending);
	c->retry_ts.tv_sec = 0;
	c->retry_ts.tv_nsec = (long long)LOADGEN_RETRY_NS;
	struct io_uring_sqe *sqe = get_sqe(w);
	io_uring_prep_timeout(sqe, &c->retry_ts, 0, 0);
	io_uring_sqe_set_data64(sqe, pack_user_data(c, OP_RETRY));
	c->retry_pending = true;
	c->state = CONN_WAIT_RETRY;
}

/* ---- connection life cycle ---- */

static void idle_push(struct worker *w, struct conn *c)
{
	assert(c->idle_pos < 0);
	assert(w->nidle < w->nconns);
	c->idle_pos = (int)w->nidle;
	w->idle[w->nidle++] = c->id;
}

static struct conn *idle_pop(struct worker *w)
{
	assert(w->nidle > 0);
	struct conn *c = &w->conns[w->idle[--w->nidle]];
	assert(c->idle_pos == (int)w->nidle);
	c->idle_pos = -1;
	return c;
}

static void idle_remove(struct worker *w, struct conn *c)
{
	if (c->idle_pos < 0)
		return;
	unsigned pos = (unsigned)c->idle_pos, last = w->idle[--w->nidle];
	w->idle[pos] = last;
	w->conns[last].idle_pos = (int)pos;
	c->idle_pos = -1;
}

static void conn_open(struct worker *w, struct conn *c)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		/* out of fds here, not the target's fault: run with fewer connections */
		c->state = CONN_DEAD;
		return;
	}
	int one = 1;
	/* one send per request already; NODELAY keeps a short tail send from waiting on an ACK */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->fd = fd;
	c->state = CONN_CONNECTING;
	c->rfill = 0;
	c->send_queued = false;
	struct io_uring_sqe *sqe = get_sqe(w);
	io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&w->sh->opt->addr,
			      sizeof(w->sh->opt->addr));
	io_uring_sqe_set_data64(sqe, pack_user_data(c, OP_CONNECT));
	c->connect_pending = true;
}

static bool conn_has_ops(const struct conn *c)
{
	return c->connect_pending || c->recv_pending || c->send_pending;
}

/* All of a closing connection's ops have completed: its buffer is ours again. */
static void conn_finish_close(struct worker *w, struct conn *c)
{
	assert(c->state == CONN_CLOSING);
	assert(!conn_has_ops(c));
	close(c->fd);
	c->fd = -1;
	if (w->phase == PHASE_STOP) {
		c->state = CONN_DEAD;
		return;
	}
	w->st.reconnects += in_window(w, now_ns());
	conn_open(w, c);
}

/*
 * Close and reopen. Ops still in flight hold the socket and point into rbuf, so shutdown()
 * makes them complete now, and close() waits until they have.
 */
static void conn_close(struct worker *w, struct conn *c)
{
	assert(c->state != CONN_CLOSING && c->state != CONN_DEAD);
	idle_remove(w, c);
	c->state = CONN_CLOSING;
	shutdown(c->fd, SHUT_RDWR);
	if (!conn_has_ops(c))
		conn_finish_close(w, c);
}

static void request_start(struct worker *w, struct conn *c, uint64_t start_ns, uint64_t now)
{
	assert(c->state == CONN_IDLE);
	assert(c->idle_pos < 0);
	assert(start_ns <= now);
	c->state = CONN_BUSY;
	c->start_ns = start_ns;
	c->send_ns = now;
	c->ttfb_ns = 0;
	c->ttfe_ns = 0;
	c->sent = 0;
	respparse_reset(&c->parser, w->sh->head_request);
	ssetiming_reset(&c->sse);
	if (c->send_pending)
		c->send_queued = true;	/* the last request's send CQE is not reaped yet */
	else
		arm_send(w, c);
}

static void conn_became_idle(struct worker *w, struct conn *c, uint64_t now)
{
	c->state = CONN_IDLE;
	if (w->phase != PHASE_RUN)
		return;
	if (open_loop(w))
		idle_push(w, c);
	else
		request_start(w, c, now, now);
}

/* A stream ended, whole or cut off after its head (inside the window): what did it lack? */
static void stream_ended(struct worker *w, const struct conn *c)
{
	struct stats *st = &w->st;
	const struct respparse *p = &c->parser;
	uint32_t want = w->sh->opt->expect_events;

	assert(c->state == CONN_BUSY);
	assert(p->rp_headers_done);
	st->responses_stalled += c->sse.sti_stalls > 0;
	st->responses_without_done += !p->rp_sse_last_done;
	if (p->rp_sse_events < want) {
		st->responses_short++;
		st->events_lost += want - p->rp_sse_events;
	}
}

static void response_complete(struct worker *w, struct conn *c, uint64_t now)
{
	struct stats *st = &w->st;
	const struct respparse *p = &c->parser;

	assert(c->state == CONN_BUSY);
	if (!in_window(w, now))
		return;
	st->completed++;
	st->status_class[p->rp_status >= 100 && p->rp_status < 600 ? p->rp_status / 100 : 0]++;
	hdrhist_record(&st->latency, now - c->start_ns);
	if (open_loop(w))
		hdrhist_record(&st->latency_uncorrected, now - c->send_ns);
	if (!w->sh->opt->stream)
		return;
	if (c->ttfb_ns)
		hdrhist_record(&st->ttfb, c->ttfb_ns);
	if (c->ttfe_ns)
		hdrhist_record(&st->ttfe, c->ttfe_ns);
	st->events += p->rp_sse_events;
	st->responses_without_events += p->rp_sse_events == 0;
	stream_ended(w, c);
}

/* A request failed with the connection: count it and start over on a new connection. */
static void conn_fail(struct worker *w, struct conn *c, uint64_t *counter, uint64_t now)
{
	if (in_window(w, now)) {
		(*counter)++;
		if (w->sh->opt->stream && c->state == CONN_BUSY && c->parser.rp_headers_done) {
			w->st.streams_cut++;
			stream_ended(w, c);
		}
	}
	conn_close(w, c);
}

/* ---- completions ---- */

static void on_connect(struct worker *w, struct conn *c, int res, uint64_t now)
{
	c->connect_pending = false;
	if (c->state == CONN_CLOSING)
		return;
	assert(c->state == CONN_CONNECTING);
	if (res < 0) {
		if (in_window(w, now))
			w->st.errors_connect++;
		close(c->fd);
		c->fd = -1;
		if (w->phase != PHASE_STOP)
			arm_retry(w, c);
		return;
	}
	arm_recv(w, c);
	conn_became_idle(w, c, now);
}

static void on_send(struct worker *w, struct conn *c, int res, uint64_t now)
{
	c->send_pending = false;
	if (c->state != CONN_BUSY)
		return;
	if (c->send_queued) {
		/* the previous request's send, which its response proves was whole */
		c->send_queued = false;
		arm_send(w, c);
		return;
	}
	if (res <= 0) {
		conn_fail(w, c, &w->st.errors_write, now);
		return;
	}
	c->sent += (size_t)res;
	assert(c->sent <= w->sh->request_len);
	if (c->sent < w->sh->request_len)
		arm_send(w, c);
}

static void note_first_bytes(struct conn *c, uint64_t now)
{
	const struct respparse *p = &c->parser;

	if (!c->ttfb_ns && p->rp_body_bytes > 0)
		c->ttfb_ns = now - c->start_ns ? now - c->start_ns : 1;
	if (!c->ttfe_ns && p->rp_sse_events > 0)
		c->ttfe_ns = now - c->start_ns ? now - c->start_ns : 1;
}

/* --stream: the events this receive completed arrived now; time them against the last. */
static void note_events(struct worker *w, struct conn *c, uint64_t now)
{
	uint32_t events = c->parser.rp_sse_events;
	if (events == c->sse.sti_events)
		return;
	if (!in_window(w, now)) {
		ssetiming_note(&c->sse, events, now, w->sh->stall_ns, NULL);
		return;
	}
	w->st.events_arrived += events - c->sse.sti_events;
	w->st.stalls += ssetiming_note(&c->sse, events, now, w->sh->stall_ns, &w->st.event_gap);
}

/* Feed what the buffer holds to the parser; re-arms recv unless the connection closes. */
static void process_input(struct worker *w, struct conn *c, uint64_t now)
{
	size_t consumed = 0;
	enum respparse_result r = respparse_feed(&c->parser, c->rbuf, c->rfill, &consumed);

	assert(consumed <= c->rfill);
	note_first_bytes(c, now);
	if (w->sh->opt->stream)
		note_events(w, c, now);
	if (r == RESPPARSE_ERROR) {
		conn_fail(w, c, &w->st.errors_parse, now);
		return;
	}
	if (r == RESPPARSE_MORE) {
		/* only an unfinished header block is left unconsumed; keep it at the front */
		memmove(c->rbuf, c->rbuf + consumed, c->rfill - consumed);
		c->rfill -= consumed;
		if (c->rfill == LOADGEN_RECV_BUFFER_BYTES) {
			conn_fail(w, c, &w->st.errors_parse, now);	/* header block too big */
			return;
		}
		arm_recv(w, c);
		return;
	}
	response_complete(w, c, now);
	if (consumed < c->rfill) {
		/* we never pipeline, so bytes after the response are a framing bug */
		c->state = CONN_IDLE;	/* that response itself ended and was counted */
		conn_fail(w, c, &w->st.errors_parse, now);
		return;
	}
	c->rfill = 0;
	if (!c->parser.rp_keep_alive) {
		c->state = CONN_IDLE;
		conn_close(w, c);
		return;
	}
	arm_recv(w, c);
	conn_became_idle(w, c, now);
}

static void on_recv(struct worker *w, struct conn *c, int res, uint64_t now)
{
	c->recv_pending = false;
	if (c->state == CONN_CLOSING || c->state == CONN_CONNECTING)
		return;
	if (res == -EINTR || res == -EAGAIN || res == -ENOBUFS) {
		arm_recv(w, c);
		return;
	}
	if (res <= 0) {
		if (c->state != CONN_BUSY) {
			conn_close(w, c);	/* the server closed an idle connection */
			return;
		}
		if (res == 0 && respparse_eof(&c->parser) == RESPPARSE_DONE) {
			response_complete(w, c, now);
			conn_close(w, c);
			return;
		}
		conn_fail(w, c, &w->st.errors_read, now);
		return;
	}
	w->st.bytes_received += (uint64_t)res;
	if (c->state != CONN_BUSY) {
		conn_fail(w, c, &w->st.errors_parse, now);	/* bytes nobody asked for */
		return;
	}
	c->rfill += (size_t)res;
	process_input(w, c, now);
}

static void on_retry(struct worker *w, struct conn *c)
{
	c->retry_pending = false;
	assert(c->state == CONN_WAIT_RETRY);
	if (w->phase == PHASE_STOP) {
		c->state = CONN_DEAD;
		return;
	}
	conn_open(w, c);
}

static void handle_cqe(struct worker *w, const struct io_uring_cqe *cqe, uint64_t now)
{
	uint64_t data = io_uring_cqe_get_data64(cqe);
	enum op op = (enum op)(data & 0xff);
	uint64_t id = data >> 8;

	assert(id < w->nconns);
	struct conn *c = &w->conns[id];
	if (w->phase == PHASE_STOP) {
		/* draining: note the op is done, start nothing new */
		c->connect_pending &= op != OP_CONNECT;
		c->recv_pending &= op != OP_RECV;
		c->send_pending &= op != OP_SEND;
		c->retry_pending &= op != OP_RETRY;
		return;
	}
	switch (op) {
	case OP_CONNECT:
		on_connect(w, c, cqe->res, now);
		break;
	case OP_RECV:
		on_recv(w, c, cqe->res, now);
		break;
	case OP_SEND:
		on_send(w, c, cqe->res, now);
		break;
	case OP_RETRY:
		on_retry(w, c);
		break;
	default:
		assert(!"unknown op in user_data");
	}
	if (c->state == CONN_CLOSING && !conn_has_ops(c))
		conn_finish_close(w, c);
}

/* Submit, wait for at least one completion or until timeout_ns passes, reap them all. */
static void wait_and_reap(struct worker *w, uint64_t timeout_ns)
{
	struct __kernel_timespec ts = {
		.tv_sec = (long long)(timeout_ns / NS_PER_S),
		.tv_nsec = (long long)(timeout_ns % NS_PER_S),
	};
	struct io_uring_cqe *cqe = NULL;
	int rc = io_uring_submit_and_wait_timeout(&w->ring, &cqe, 1, &ts, NULL);
	if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
		fprintf(stderr, "loadgen: io_uring wait: %s\n", strerror(-rc));
		w->phase = PHASE_STOP;
		return;
	}
	/* one timestamp per batch: every CQE in it was complete by now */
	uint64_t now = now_ns();
	unsigned head, seen = 0;
	io_uring_for_each_cqe(&w->ring, head, cqe) {
		handle_cqe(w, cqe, now);
		seen++;
	}
	io_uring_cq_advance(&w->ring, seen);
}

/* ---- the schedule ---- */

/* Open loop: the k-th request of worker i of n is due at t0 + (k*n + i) / rate. */
static uint64_t due_time(const struct worker *w, uint64_t k)
{
	const struct shared *sh = w->sh;
	double slot = (double)k * sh->opt->threads + w->index;
	return sh->t0_ns + (uint64_t)(slot * 1e9 / sh->opt->rate);
}

/* Send every request that is due and has a free connection; the rest wait, and that counts. */
static void dispatch_due(struct worker *w, uint64_t now)
{
	while (w->next_due_ns <= now && w->nidle > 0) {
		struct conn *c = idle_pop(w);
		if (in_window(w, now))
			hdrhist_record(&w->st.send_lag, now - w->next_due_ns);
		request_start(w, c, w->next_due_ns, now);
		w->next_due_ns = due_time(w, ++w->sched_k);
	}
}

static unsigned count_state(const struct worker *w, enum conn_state state)
{
	unsigned n = 0;
	for (unsigned i = 0; i < w->nconns; i++)
		n += w->conns[i].state == state;
	return n;
}

static void worker_connect(struct worker *w)
{
	uint64_t deadline = now_ns() + LOADGEN_CONNECT_WAIT_NS;

	for (unsigned i = 0; i < w->nconns; i++)
		conn_open(w, &w->conns[i]);
	for (;;) {
		uint64_t now = now_ns();
		unsigned settled = count_state(w, CONN_IDLE) + count_state(w, CONN_DEAD);
		if (now >= deadline || settled == w->nconns)
			break;
		wait_and_reap(w, deadline - now);
	}
	w->st.connections_open_at_start = count_state(w, CONN_IDLE);
}

static void worker_run(struct worker *w)
{
	const struct shared *sh = w->sh;

	w->phase = PHASE_RUN;
	for (unsigned i = 0; i < w->nconns; i++) {
		struct conn *c = &w->conns[i];
		if (c->state == CONN_IDLE)
			conn_became_idle(w, c, sh->t0_ns);
	}
	w->sched_k = 0;
	w->next_due_ns = due_time(w, 0);
	while (w->phase == PHASE_RUN) {
		uint64_t now = now_ns();
		if (now >= sh->t_end_ns)
			break;
		if (open_loop(w))
			dispatch_due(w, now);
		uint64_t wake = sh->t_end_ns;
		if (open_loop(w) && w->nidle > 0 && w->next_due_ns < wake)
			wake = w->next_due_ns;
		wait_and_reap(w, wake > now ? wake - now : 0);
	}
}

static bool worker_has_ops(const struct worker *w)
{
	for (unsigned i = 0; i < w->nconns; i++)
		if (conn_has_ops(&w->conns[i]) || w->conns[i].retry_pending)
			return true;
	return false;
}

static void worker_stop(struct worker *w)
{
	const struct shared *sh = w->sh;

	w->phase = PHASE_STOP;
	if (open_loop(w) && w->next_due_ns <= sh->t_end_ns) {
		uint64_t k_end = w->sched_k;
		while (due_time(w, k_end) <= sh->t_end_ns)
			k_end++;
		w->st.backlog_at_end = k_end - w->sched_k;
	}
	w->st.in_flight_at_end = count_state(w, CONN_BUSY);
	if (sh->opt->stream) {
		/* a stream that hangs until the end never closes its gap: count it here */
		uint64_t now = now_ns();
		for (unsigned i = 0; i < w->nconns; i++)
			if (w->conns[i].state == CONN_BUSY)
				w->st.stalls += ssetiming_open_stall(&w->conns[i].sse, now,
								     sh->stall_ns);
	}

	/* shutdown() completes every op still in flight; reap them before buffers can go */
	for (unsigned i = 0; i < w->nconns; i++)
		if (w->conns[i].fd >= 0)
			shutdown(w->conns[i].fd, SHUT_RDWR);
	uint64_t deadline = now_ns() + NS_PER_S;
	for (uint64_t now = now_ns(); worker_has_ops(w) && now < deadline; now = now_ns())
		wait_and_reap(w, deadline - now);
	io_uring_queue_exit(&w->ring);
	w->ring_ready = false;
	for (unsigned i = 0; i < w->nconns; i++) {
		if (w->conns[i].fd >= 0)
			close(w->conns[i].fd);
		w->conns[i].fd = -1;
		w->conns[i].state = CONN_DEAD;
	}
}

static int worker_setup_ring(struct worker *w)
{
	struct io_uring_params params;
	unsigned entries = 64;

	while (entries < 2 * w->nconns + 16 && entries < 16384)
		entries *= 2;
	memset(&params, 0, sizeof(params));
	/* a connection has at most three ops in flight; size the CQ so it never overflows */
	params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER |
		       IORING_SETUP_DEFER_TASKRUN;
	params.cq_entries = entries * 2;
	int rc = io_uring_queue_init_params(entries, &w->ring, &params);
	if (rc == -EINVAL) {
		/* kernels before 6.1 lack DEFER_TASKRUN; it only saves wake-ups */
		memset(&params, 0, sizeof(params));
		params.flags = IORING_SETUP_CQSIZE;
		params.cq_entries = entries * 2;
		rc = io_uring_queue_init_params(entries, &w->ring, &params);
	}
	if (rc < 0)
		return rc;
	io_uring_register_ring_fd(&w->ring);	/* optional: saves an fd lookup per enter */
	w->ring_ready = true;
	return 0;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct shared *sh = (struct shared *)w->sh;

	/* hrtimer slack would add up to 50 us to every scheduled send */
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
	w->phase = PHASE_CONNECT;
	w->error = worker_setup_ring(w);
	if (w->error == 0)
		worker_connect(w);
	pthread_barrier_wait(&sh->barrier);	/* all connected: main sets the clock */
	pthread_barrier_wait(&sh->barrier);
	if (w->error == 0 && !sh->abort) {
		worker_run(w);
		worker_stop(w);
	} else if (w->ring_ready) {
		worker_stop(w);
	}
	return NULL;
}

/* ---- setup ---- */

static void stats_init(struct stats *st)
{
	memset(st, 0, offsetof(struct stats, latency));
	hdrhist_init(&st->latency);
	hdrhist_init(&st->ttfb);
	hdrhist_init(&st->ttfe);
	hdrhist_init(&st->send_lag);
	hdrhist_init(&st->event_gap);
	hdrhist_init(&st->latency_uncorrected);
}

static void stats_merge(struct stats *dst, const struct stats *src)
{
	for (unsigned i = 0; i < 6; i++)
		dst->status_class[i] += src->status_class[i];
	dst->completed += src->completed;
	dst->errors_connect += src->errors_connect;
	dst->errors_read += src->errors_read;
	dst->errors_write += src->errors_write;
	dst->errors_parse += src->errors_parse;
	dst->reconnects += src->reconnects;
	dst->bytes_received += src->bytes_received;
	dst->events += src->events;
	dst->responses_without_events += src->responses_without_events;
	dst->events_arrived += src->events_arrived;
	dst->stalls += src->stalls;
	dst->responses_stalled += src->responses_stalled;
	dst->responses_short += src->responses_short;
	dst->events_lost += src->events_lost;
	dst->responses_without_done += src->responses_without_done;
	dst->streams_cut += src->streams_cut;
	dst->backlog_at_end += src->backlog_at_end;
	dst->in_flight_at_end += src->in_flight_at_end;
	dst->connections_open_at_start += src->connections_open_at_start;
	hdrhist_merge(&dst->latency, &src->latency);
	hdrhist_merge(&dst->ttfb, &src->ttfb);
	hdrhist_merge(&dst->ttfe, &src->ttfe);
	hdrhist_merge(&dst->send_lag, &src->send_lag);
	hdrhist_merge(&dst->event_gap, &src->event_gap);
	hdrhist_merge(&dst->latency_uncorrected, &src->latency_uncorrected);
}

static int worker_init(struct worker *w, unsigned index, unsigned nconns,
		       const struct shared *sh)
{
	memset(w, 0, sizeof(*w));
	w->index = index;
	w->sh = sh;
	w->nconns = nconns;
	w->conns = calloc(nconns, sizeof(*w->conns));
	w->idle = calloc(nconns, sizeof(*w->idle));
	if (!w->conns || !w->idle)
		return -ENOMEM;
	for (unsigned i = 0; i < nconns; i++) {
		struct conn *c = &w->conns[i];
		c->id = i;
		c->fd = -1;
		c->idle_pos = -1;
		c->state = CONN_DEAD;
		c->rbuf = malloc(LOADGEN_RECV_BUFFER_BYTES);
		if (!c->rbuf)
			return -ENOMEM;
	}
	stats_init(&w->st);
	return 0;
}

static void worker_free(struct worker *w)
{
	for (unsigned i = 0; w->conns && i < w->nconns; i++)
		free(w->conns[i].rbuf);
	free(w->conns);
	free(w->idle);
}

static _Noreturn void usage(int code)
{
	fprintf(code ? stderr : stdout,
		"usage: loadgen --url http://127.0.0.1:PORT/path [options]\n"
		"  --method M          request method (default GET, or POST with --body)\n"
		"  --body FILE         request body\n"
		"  --header 'K: V'     extra request header (repeatable)\n"
		"  --connections N     keep-alive connections, all opened first (default 64)\n"
		"  --threads N         threads, each with its own ring (default 1)\n"
		"  --duration S        measured seconds (default 10)\n"
		"  --warmup S          seconds before measuring (default 1)\n"
		"  --rate R            open loop at R requests/s in all; 0: closed loop (default)\n"
		"  --stream            record time to first body byte, first SSE event, the gaps\n"
		"                      between events and events per second\n"
		"  --stall-ms MS       (--stream) count gaps between events over MS as stalls\n"
		"  --expect-events N   (--stream) count responses that end with fewer events\n"
		"  --json FILE         write the results as JSON\n"
		"Only loopback targets are accepted.\n");
	exit(code);
}

static int parse_url(struct options *o, const char *url)
{
	const char *prefix = "http://";
	if (strncmp(url, prefix, strlen(prefix)) != 0)
		return -1;
	const char *host = url + strlen(prefix);
	const char *colon = strchr(host, ':');
	const char *slash = strchr(host, '/');
	if (!slash)
		slash = host + strlen(host);
	const char *host_end = colon && colon < slash ? colon : slash;
	size_t host_len = (size_t)(host_end - host);
	if (host_len == 0 || host_len >= sizeof(o->host))
		return -1;
	memcpy(o->host, host, host_len);
	o->host[host_len] = '\0';

	long port = 80;
	if (colon && colon < slash) {
		char *end;
		port = strtol(colon + 1, &end, 10);
		if (end != slash || port < 1 || port > 65535)
			return -1;
	}
	o->port = (uint16_t)port;
	o->path = *slash ? slash : "/";

	const char *literal = strcmp(o->host, "localhost") == 0 ? "127.0.0.1" : o->host;
	memset(&o->addr, 0, sizeof(o->addr));
	o->addr.sin_family = AF_INET;
	o->addr.sin_port = htons(o->port);
	if (inet_pton(AF_INET, literal, &o->addr.sin_addr) != 1)
		return -1;
	return 0;
}

static bool is_loopback(const struct sockaddr_in *addr)
{
	return (ntohl(addr->sin_addr.s_addr) >> 24) == 127;
}

static double parse_number(const char *arg, const char *name, double lo, double hi)
{
	char *end;
	double v = strtod(arg, &end);
	if (*arg == '\0' || *end != '\0' || !(v >= lo && v <= hi)) {
		fprintf(stderr, "loadgen: --%s wants a number in [%g, %g], got '%s'\n", name, lo,
			hi, arg);
		exit(2);
	}
	return v;
}

enum {
	OPT_STALL_MS = 256,	/* long-only options */
	OPT_EXPECT_EVENTS,
};

static void parse_options(struct options *o, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "url", required_argument, NULL, 'u' },
		{ "method", required_argument, NULL, 'm' },
		{ "body", required_argument, NULL, 'b' },
		{ "header", required_argument, NULL, 'H' },
		{ "connections", required_argument, NULL, 'c' },
		{ "threads", required_argument, NULL, 't' },
		{ "duration", required_argument, NULL, 'd' },
		{ "warmup", required_argument, NULL, 'w' },
		{ "rate", required_argument, NULL, 'r' },
		{ "stream", no_argument, NULL, 's' },
		{ "stall-ms", required_argument, NULL, OPT_STALL_MS },
		{ "expect-events", required_argument, NULL, OPT_EXPECT_EVENTS },
		{ "json", required_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	memset(o, 0, sizeof(*o));
	o->connections = 64;
	o->threads = 1;
	o->duration_s = 10;
	o->warmup_s = 1;

	int ch;
	while ((ch = getopt_long(argc, argv, "u:m:b:H:c:t:d:w:r:sj:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'u': o->url = optarg; break;
		case 'm': o->method = optarg; break;
		case 'b': o->body_file = optarg; break;
		case 'H':
			if (o->header_count == LOADGEN_MAX_HEADERS || !strchr(optarg, ':') ||
			    strpbrk(optarg, "\r\n")) {
				fprintf(stderr, "loadgen: bad or too many --header '%s'\n", optarg);
				exit(2);
			}
			o->headers[o->header_count++] = optarg;
			break;
		case 'c':
			o->connections = (unsigned)parse_number(optarg, "connections", 1,
								LOADGEN_MAX_CONNECTIONS);
			break;
		case 't':
			o->threads = (unsigned)parse_number(optarg, "threads", 1,
							    LOADGEN_MAX_THREADS);
			break;
		case 'd':
			o->duration_s = parse_number(optarg, "duration", 0.01,
						     LOADGEN_MAX_DURATION_S);
			break;
		case 'w':
			o->warmup_s = parse_number(optarg, "warmup", 0, LOADGEN_MAX_DURATION_S);
			break;
		case 'r': o->rate = parse_number(optarg, "rate", 0, LOADGEN_MAX_RATE); break;
		case 's': o->stream = true; break;
		case OPT_STALL_MS:
			o->stall_ms = parse_number(optarg, "stall-ms", 0, LOADGEN_MAX_STALL_MS);
			break;
		case OPT_EXPECT_EVENTS:
			o->expect_events = (uint32_t)parse_number(optarg, "expect-events", 0,
								  LOADGEN_MAX_EXPECT_EVENTS);
			break;
		case 'j': o->json_path = optarg; break;
		case 'h': usage(0);
		default: usage(2);
		}
	}
	if (optind != argc || !o->url)
		usage(2);
	if (parse_url(o, o->url) < 0) {
		fprintf(stderr, "loadgen: --url must be http://IPV4-OR-localhost[:PORT][/path]\n");
		exit(2);
	}
	if (!is_loopback(&o->addr)) {
		fprintf(stderr, "loadgen: only loopback targets (127.0.0.0/8) are allowed\n");
		exit(2);
	}
	if (!o->stream && (o->stall_ms > 0 || o->expect_events > 0)) {
		fprintf(stderr, "loadgen: --stall-ms and --expect-events need --stream\n");
		exit(2);
	}
	if (o->threads > o->connections) {
		fprintf(stderr, "loadgen: --threads must not exceed --connections\n");
		exit(2);
	}
	if (!o->method)
		o->method = o->body_file ? "POST" : "GET";
}

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	char *buf = malloc(LOADGEN_MAX_BODY_BYTES + 1);
	size_t n = buf ? fread(buf, 1, LOADGEN_MAX_BODY_BYTES + 1, f) : 0;
	bool bad = !buf || ferror(f) || n > LOADGEN_MAX_BODY_BYTES;
	fclose(f);
	if (bad) {
		free(buf);
		return NULL;
	}
	*len = n;
	return buf;
}

static bool has_header(const struct options *o, const char *name)
{
	size_t n = strlen(name);
	for (unsigned i = 0; i < o->header_count; i++)
		if (strncasecmp(o->headers[i], name, n) == 0 && o->headers[i][n] == ':')
			return true;
	return false;
}

/* The one request every connection sends, built once. */
static char *build_request(const struct options *o, size_t *len)
{
	size_t body_len = 0;
	char *body = NULL;
	if (o->body_file) {
		body = read_file(o->body_file, &body_len);
		if (!body) {
			fprintf(stderr, "loadgen: cannot read --body %s (or over %u bytes)\n",
				o->body_file, LOADGEN_MAX_BODY_BYTES);
			return NULL;
		}
	}
	size_t cap = body_len + 4096;
	for (unsigned i = 0; i < o->header_count; i++)
		cap += strlen(o->headers[i]) + 2;
	cap += strlen(o->path) + strlen(o->method);
	char *req = malloc(cap);
	if (!req) {
		free(body);
		return NULL;
	}
	size_t n = (size_t)snprintf(req, cap, "%s %s HTTP/1.1\r\nHost: %s:%u\r\n"
				    "User-Agent: penstock-loadgen\r\n",
				    o->method, o->path, o->host, o->port);
	for (unsigned i = 0; i < o->header_count; i++)
		n += (size_t)snprintf(req + n, cap - n, "%s\r\n", o->headers[i]);
	if (body && !has_header(o, "content-type"))
		n += (size_t)snprintf(req + n, cap - n, "Content-Type: application/json\r\n");
	if (body || strcmp(o->method, "POST") == 0 || strcmp(o->method, "PUT") == 0)
		n += (size_t)snprintf(req + n, cap - n, "Content-Length: %zu\r\n", body_len);
	n += (size_t)snprintf(req + n, cap - n, "\r\n");
	assert(n + body_len < cap);
	if (body_len)
		memcpy(req + n, body, body_len);
	free(body);
	*len = n + body_len;
	return req;
}

/* ---- report ---- */

struct cpu_usage {
	double user_s;
	double sys_s;
};

static double timeval_s(struct timeval tv)
{
	return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static struct cpu_usage cpu_now(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (struct cpu_usage){ timeval_s(ru.ru_utime), timeval_s(ru.ru_stime) };
}

static void sleep_until(uint64_t t)
{
	struct timespec ts = { (time_t)(t / NS_PER_S), (long)(t % NS_PER_S) };
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

static const double report_pcts[] = { 50, 90, 99, 99.9, 99.99 };
static const char *const report_names[] = { "p50", "p90", "p99", "p99_9", "p99_99" };
#define REPORT_PCTS (sizeof(report_pcts) / sizeof(report_pcts[0]))

static void print_hist_line(const char *label, const struct hdrhist *h)
{
	printf("  %-12s", label);
	if (h->hh_count == 0) {
		printf(" (none)\n");
		return;
	}
	for (unsigned i = 0; i < REPORT_PCTS; i++)
		printf(" %s %.1f", report_names[i], hdrhist_percentile(h, report_pcts[i]) / 1e3);
	printf(" max %.1f mean %.1f us\n", h->hh_max / 1e3, hdrhist_mean(h) / 1e3);
}

static uint64_t errors_total(const struct stats *st)
{
	return st->errors_connect + st->errors_read + st->errors_write + st->errors_parse;
}

static double events_per_response(const struct stats *st)
{
	return st->completed ? (double)st->events / (double)st->completed : 0.0;
}

static void print_stream_losses(const struct options *o, const struct stats *st)
{
	if (o->stall_ms > 0)
		printf("  stalls over %.1f ms: %llu, in %llu responses\n", o->stall_ms,
		       (unsigned long long)st->stalls, (unsigned long long)st->responses_stalled);
	if (o->expect_events > 0)
		printf("  expecting %u events: %llu responses short, %llu events lost\n",
		       o->expect_events, (unsigned long long)st->responses_short,
		       (unsigned long long)st->events_lost);
	printf("  responses not ending in [DONE] %llu, streams cut after their head %llu\n",
	       (unsigned long long)st->responses_without_done, (unsigned long long)st->streams_cut);
}

static void print_text(const struct options *o, const struct stats *st, struct cpu_usage cpu)
{
	uint64_t non2xx = st->completed - st->status_class[2];

	printf("loadgen: %s %s, %u connections, %u thread%s, %.1f s (+%.1f s warmup)\n", o->method,
	       o->url, o->connections, o->threads, o->threads > 1 ? "s" : "", o->duration_s,
	       o->warmup_s);
	if (o->rate > 0)
		printf("  open loop at %.0f req/s, latency from the intended send time\n", o->rate);
	else
		printf("  closed loop (saturation), latency from the actual send time\n");
	printf("  requests %llu, %.1f req/s, non-2xx %llu, errors %llu (connect %llu, read %llu, "
	       "write %llu, parse %llu), reconnects %llu\n",
	       (unsigned long long)st->completed, st->completed / o->duration_s,
	       (unsigned long long)non2xx, (unsigned long long)errors_total(st),
	       (unsigned long long)st->errors_connect, (unsigned long long)st->errors_read,
	       (unsigned long long)st->errors_write, (unsigned long long)st->errors_parse,
	       (unsigned long long)st->reconnects);
	print_hist_line("latency", &st->latency);
	if (o->stream) {
		print_hist_line("first byte", &st->ttfb);
		print_hist_line("first event", &st->ttfe);
		printf("  events %llu (%.2f per response, %.1f/s), responses without events %llu\n",
		       (unsigned long long)st->events, events_per_response(st),
		       st->events_arrived / o->duration_s,
		       (unsigned long long)st->responses_without_events);
		print_hist_line("event gap", &st->event_gap);
		print_stream_losses(o, st);
	}
	if (o->rate > 0) {
		print_hist_line("send lag", &st->send_lag);
		print_hist_line("uncorrected", &st->latency_uncorrected);
		/* a request or two per thread fall due in the last wake-up before the end */
		uint64_t noise = 2 * o->threads + (uint64_t)(o->rate * o->duration_s / 1000);
		if (st->backlog_at_end > noise)
			printf("  WARNING: %llu requests were due but never sent: the target (or "
			       "this generator) did not keep up with %.0f req/s\n",
			       (unsigned long long)st->backlog_at_end, o->rate);
	}
	printf("  cpu: user %.2f s, sys %.2f s, %.0f%% of one core over the measured window\n",
	       cpu.user_s, cpu.sys_s, 100.0 * (cpu.user_s + cpu.sys_s) / o->duration_s);
}

static void json_hist(FILE *f, const char *name, const struct hdrhist *h)
{
	fprintf(f, "  \"%s\": {\"count\": %llu", name, (unsigned long long)h->hh_count);
	for (unsigned i = 0; i < REPORT_PCTS; i++)
		fprintf(f, ", \"%s\": %.3f", report_names[i],
			hdrhist_percentile(h, report_pcts[i]) / 1e3);
	fprintf(f, ", \"min\": %.3f, \"max\": %.3f, \"mean\": %.3f},\n",
		h->hh_count ? h->hh_min / 1e3 : 0.0, h->hh_max / 1e3, hdrhist_mean(h) / 1e3);
}

/* The URL and method come from our own command line; quote them plainly. */
static void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fputc('\\', f);
		if ((unsigned char)*s >= 0x20)
			fputc(*s, f);
	}
	fputc('"', f);
}

static int write_json(const char *path, const struct options *o, const struct stats *st,
		      struct cpu_usage cpu)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return -errno;
	fprintf(f, "{\n  \"url\": ");
	json_string(f, o->url);
	fprintf(f, ",\n  \"method\": ");
	json_string(f, o->method);
	fprintf(f, ",\n  \"mode\": \"%s\",\n  \"rate_target\": %.3f,\n",
		o->rate > 0 ? "open" : "closed", o->rate);
	fprintf(f, "  \"connections\": %u,\n  \"threads\": %u,\n  \"duration_s\": %.3f,\n"
		"  \"warmup_s\": %.3f,\n  \"stream\": %s,\n", o->connections, o->threads,
		o->duration_s, o->warmup_s, o->stream ? "true" : "false");
	fprintf(f, "  \"requests\": %llu,\n  \"throughput_rps\": %.3f,\n",
		(unsigned long long)st->completed, st->completed / o->duration_s);
	fprintf(f, "  \"status\": {\"1xx\": %llu, \"2xx\": %llu, \"3xx\": %llu, \"4xx\": %llu, "
		"\"5xx\": %llu, \"other\": %llu},\n", (unsigned long long)st->status_class[1],
		(unsigned long long)st->status_class[2], (unsigned long long)st->status_class[3],
		(unsigned long long)st->status_class[4], (unsigned long long)st->status_class[5],
		(unsigned long long)st->status_class[0]);
	fprintf(f, "  \"non_2xx\": %llu,\n",
		(unsigned long long)(st->completed - st->status_class[2]));
	fprintf(f, "  \"errors\": {\"total\": %llu, \"connect\": %llu, \"read\": %llu, "
		"\"write\": %llu, \"parse\": %llu},\n", (unsigned long long)errors_total(st),
		(unsigned long long)st->errors_connect, (unsigned long long)st->errors_read,
		(unsigned long long)st->errors_write, (unsigned long long)st->errors_parse);
	fprintf(f, "  \"reconnects\": %llu,\n  \"connections_open_at_start\": %llu,\n"
		"  \"bytes_received\": %llu,\n  \"backlog_at_end\": %llu,\n"
		"  \"in_flight_at_end\": %llu,\n", (unsigned long long)st->reconnects,
		(unsigned long long)st->connections_open_at_start,
		(unsigned long long)st->bytes_received, (unsigned long long)st->backlog_at_end,
		(unsigned long long)st->in_flight_at_end);
	fprintf(f, "  \"events\": %llu,\n  \"responses_without_events\": %llu,\n",
		(unsigned long long)st->events, (unsigned long long)st->responses_without_events);
	fprintf(f, "  \"events_per_response\": %.3f,\n  \"events_per_s\": %.3f,\n",
		events_per_response(st), st->events_arrived / o->duration_s);
	fprintf(f, "  \"stall_ms\": %.3f,\n  \"stalls\": %llu,\n  \"responses_stalled\": %llu,\n",
		o->stall_ms, (unsigned long long)st->stalls,
		(unsigned long long)st->responses_stalled);
	fprintf(f, "  \"expect_events\": %u,\n  \"responses_short\": %llu,\n"
		"  \"events_lost\": %llu,\n  \"responses_without_done\": %llu,\n"
		"  \"streams_cut\": %llu,\n", o->expect_events,
		(unsigned long long)st->responses_short, (unsigned long long)st->events_lost,
		(unsigned long long)st->responses_without_done,
		(unsigned long long)st->streams_cut);
	json_hist(f, "latency_us", &st->latency);
	json_hist(f, "ttfb_us", &st->ttfb);
	json_hist(f, "ttfe_us", &st->ttfe);
	json_hist(f, "send_lag_us", &st->send_lag);
	json_hist(f, "event_gap_us", &st->event_gap);
	json_hist(f, "latency_uncorrected_us", &st->latency_uncorrected);
	fprintf(f, "  \"cpu\": {\"user_s\": %.3f, \"sys_s\": %.3f, \"cores\": %.3f}\n}\n",
		cpu.user_s, cpu.sys_s, (cpu.user_s + cpu.sys_s) / o->duration_s);
	int rc = ferror(f) ? -EIO : 0;
	if (fclose(f) != 0 && rc == 0)
		rc = -errno;
	return rc;
}

/* ---- main ---- */

static int run(const struct options *o, struct shared *sh, struct worker *workers,
	       struct stats *total, struct cpu_usage *cpu)
{
	unsigned n = o->threads;

	if (pthread_barrier_init(&sh->barrier, NULL, n + 1) != 0)
		return -1;
	unsigned started = 0;
	for (; started < n; started++)
		if (pthread_create(&workers[started].thread, NULL, worker_main, &workers[started]))
			break;
	if (started < n) {
		fprintf(stderr, "loadgen: cannot start threads\n");
		exit(1);	/* the barrier would wait forever; exiting is the clean way out */
	}

	pthread_barrier_wait(&sh->barrier);
	uint64_t open = 0;
	for (unsigned i = 0; i < n; i++) {
		if (workers[i].error) {
			fprintf(stderr, "loadgen: io_uring setup: %s\n",
				strerror(-workers[i].error));
			sh->abort = true;
		}
		open += workers[i].st.connections_open_at_start;
	}
	if (open == 0 && !sh->abort) {
		fprintf(stderr, "loadgen: cannot connect to %s\n", o->url);
		sh->abort = true;
	} else if (open < o->connections && !sh->abort) {
		fprintf(stderr, "loadgen: only %llu of %u connections opened; going on\n",
			(unsigned long long)open, o->connections);
	}
	sh->t0_ns = now_ns();
	sh->t_measure_ns = sh->t0_ns + (uint64_t)(o->warmup_s * 1e9);
	sh->t_end_ns = sh->t_measure_ns + (uint64_t)(o->duration_s * 1e9);
	pthread_barrier_wait(&sh->barrier);

	struct cpu_usage before = { 0, 0 };
	if (!sh->abort) {
		sleep_until(sh->t_measure_ns);
		before = cpu_now();
	}
	for (unsigned i = 0; i < n; i++)
		pthread_join(workers[i].thread, NULL);
	struct cpu_usage after = cpu_now();
	pthread_barrier_destroy(&sh->barrier);
	if (sh->abort)
		return -1;

	cpu->user_s = after.user_s - before.user_s;
	cpu->sys_s = after.sys_s - before.sys_s;
	for (unsigned i = 0; i < n; i++)
		stats_merge(total, &workers[i].st);
	return 0;
}

/* One fd per connection plus a few: raise the soft limit as far as the hard one allows. */
static void raise_fd_limit(unsigned connections)
{
	struct rlimit rl;
	rlim_t want = (rlim_t)connections + 64;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want)
		return;
	rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
	setrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur < want)
		fprintf(stderr, "loadgen: the fd limit (%llu) is below %u connections\n",
			(unsigned long long)rl.rlim_cur, connections);
}

int main(int argc, char **argv)
{
	struct options opt;
	parse_options(&opt, argc, argv);
	signal(SIGPIPE, SIG_IGN);
	raise_fd_limit(opt.connections);

	struct shared sh = {
		.opt = &opt,
		.head_request = strcmp(opt.method, "HEAD") == 0,
		.stall_ns = (uint64_t)(opt.stall_ms * 1e6),
	};
	char *request = build_request(&opt, &sh.request_len);
	if (!request)
		return 1;
	sh.request = request;

	struct worker *workers = calloc(opt.threads, sizeof(*workers));
	struct stats *total = malloc(sizeof(*total));
	if (!workers || !total) {
		fprintf(stderr, "loadgen: out of memory\n");
		return 1;
	}
	for (unsigned i = 0; i < opt.threads; i++) {
		/* connection i belongs to thread i % threads */
		unsigned nconns = opt.connections / opt.threads +
				  (i < opt.connections % opt.threads);
		if (worker_init(&workers[i], i, nconns, &sh) < 0) {
			fprintf(stderr, "loadgen: out of memory\n");
			return 1;
		}
	}
	stats_init(total);

	struct cpu_usage cpu = { 0, 0 };
	int rc = run(&opt, &sh, workers, total, &cpu);
	if (rc == 0) {
		print_text(&opt, total, cpu);
		if (opt.json_path) {
			int jrc = write_json(opt.json_path, &opt, total, cpu);
			if (jrc < 0) {
				fprintf(stderr, "loadgen: writing %s: %s\n", opt.json_path,
					strerror(-jrc));
				rc = -1;
			}
		}
	}
	for (unsigned i = 0; i < opt.threads; i++)
		worker_free(&workers[i]);
	free(workers);
	free(total);
	free(request);
	return rc == 0 ? 0 : 1;
}
