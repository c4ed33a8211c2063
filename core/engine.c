/* engine.c - workers, connections, provided buffers, timers, response output.
 *
 * Connection life: accept -> READING (header timer) -> request parsed -> HANDLING
 * (handler owns it) -> RESPONDING (output queue drains) -> back to READING for the next
 * request (idle timer) or closed. A request that fits in one receive buffer is parsed
 * and handled in place (zero copy); one that spans buffers is gathered into a
 * per-connection buffer, which is freed again when the connection goes idle.
 */
#include "engine.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "fmt.h"
#include "log.h"

#define RING_ENTRIES 1024
#define PENDING_BIDS_STOP 4     /* receive buffers queued behind a busy exchange */
#define MAX_PENDING_BIDS 16     /* room for what arrives before the recv is cancelled */
#define OUT_LOW_WATER (64 * 1024)
#define SEND_IOV_MAX 64

enum conn_state { C_READING, C_HANDLING, C_RESPONDING, C_CLOSING };

struct outseg {
	const char *p;
	size_t n;
	void (*release)(void *arg, uint64_t arg2);
	void *arg;
	uint64_t arg2;
	char pre[12]; /* chunk-size line */
	uint8_t pre_n;
	bool crlf; /* chunk data is followed by CRLF */
};

/* What a connection needs only while it serves a request; recycled per worker so
 * that idle keep-alive connections hold none of it. */
struct busy {
	struct busy *next_free;
	struct exchange ex;
	struct outseg *segs;
	unsigned seg_cap, seg_head, seg_count;
	size_t seg_off;      /* bytes of segs[seg_head] already sent */
	size_t pending;      /* bytes queued and not yet sent */
	struct buf head;     /* response head (and small bodies) */
	struct iovec iov[SEND_IOV_MAX];
	struct msghdr msg;
	struct http1_header headers[];
};

struct conn {
	struct ev ev_recv, ev_send, ev_timeout;
	struct timer timer;
	struct worker *w;
	struct conn *prev, *next; /* worker's list */
	struct conn *next_starved;
	int fd;
	unsigned refs;
	enum conn_state state;
	bool recv_armed, sending, finished, close_after, rejecting, starved, head_seen;
	bool continue_sent, timeout_armed, drain_wanted, flush_queued;
	unsigned holds;    /* ex_hold: the response's last byte waits */
	char *peer;        /* "ip:port", made on the first ex_peer (keep-alive: asked once) */
	struct conn *next_flush;
	uint8_t timer_q;   /* which queue the connection timer is in */
	int8_t framing;    /* response body: 0 length-delimited, -1 chunked, -2 close */
	void (*drain_fn)(struct exchange *ex);
	void (*timeout_fn)(struct exchange *ex);
	struct __kernel_timespec timeout_ts;

	/* input: either one held receive buffer (fast path) or the gathered buffer */
	bool held;
	uint16_t held_bid;
	const char *held_p;
	size_t held_len;
	struct buf in;
	uint16_t pend_bid[MAX_PENDING_BIDS];
	uint32_t pend_len[MAX_PENDING_BIDS];
	unsigned npend;
	size_t req_len; /* bytes of input the current request used */

	/* chunked request body, de-chunked into its own buffer */
	struct http1_chunked chunked;
	size_t dec_off;
	struct buf body;

	struct busy *busy;
};

struct worker {
	struct engine *e;
	unsigned id;
	int cpu;
	pthread_t thread;
	struct io_uring ring;
	int listen_fd;
	struct ev ev_accept, ev_wake;
	bool accept_armed, wake_armed;
	uint64_t wake_buf;
	int wake_fd;

	struct io_uring_buf_ring *br;
	char *bufs;
	size_t br_size;
	unsigned nbufs, buf_size, bufs_free, br_pending;
	uint16_t *buf_refs;

	struct timer tq[TQ_COUNT];      /* list heads (sentinels) */
	uint32_t tq_ms[TQ_COUNT];
	uint64_t now_ms;

	struct conn conns;              /* sentinel */
	unsigned nconns;
	struct conn *starved;
	struct conn *flush;             /* connections with output to send this turn */
	struct busy *busy_free;
	unsigned live;                  /* objects with operations in flight */
	unsigned exchanges;             /* requests being handled or answered */
	bool stopping;
	uint64_t stop_deadline;
	uint64_t req_seq;
	void *state;
	/* read by other threads (stats): written only by this worker */
	_Atomic uint64_t stat_accepted, stat_open;
};

struct engine {
	struct engine_options opt;
	struct worker *workers;
	unsigned nworkers;
	uint16_t port;
	uint32_t salt;
	uint64_t busy_poll_ns;
	atomic_bool stop;
};

static void noop_fn(struct worker *w, struct ev *ev, struct io_uring_cqe *cqe) { }
static struct ev ev_noop = { noop_fn };

static uint64_t clock_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---------------------------------------------------------------- worker services */

unsigned worker_id(const struct worker *w) { return w->id; }
void *worker_state(const struct worker *w) { return w->state; }
uint64_t worker_now_ms(const struct worker *w) { return w->now_ms; }
bool worker_stopping(const struct worker *w) { return w->stopping; }
int worker_buffer_group(const struct worker *w) { return 0; }
char *worker_buffer(struct worker *w, uint16_t bid) { return w->bufs + (size_t)bid * w->buf_size; }
size_t worker_buffer_size(const struct worker *w) { return w->buf_size; }

struct io_uring_sqe *worker_sqe(struct worker *w)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
	while (!sqe) {
		io_uring_submit(&w->ring);
		sqe = io_uring_get_sqe(&w->ring);
	}
	return sqe;
}

void worker_buffer_ref(struct worker *w, uint16_t bid) { w->buf_refs[bid]++; }

void worker_buffer_unref(struct worker *w, uint16_t bid)
{
	if (--w->buf_refs[bid])
		return;
	io_uring_buf_ring_add(w->br, worker_buffer(w, bid), w->buf_size, bid,
			      io_uring_buf_ring_mask(w->nbufs), (int)w->br_pending);
	w->br_pending++;
	w->bufs_free++;
}

uint16_t worker_buffer_take(struct worker *w, const struct io_uring_cqe *cqe)
{
	uint16_t bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
	w->buf_refs[bid] = 1;
	w->bufs_free--;
	return bid;
}

static void buffers_publish(struct worker *w)
{
	if (w->br_pending) {
		io_uring_buf_ring_advance(w->br, (int)w->br_pending);
		w->br_pending = 0;
	}
}

static int buffers_setup(struct worker *w, unsigned nbufs, unsigned size)
{
	w->nbufs = nbufs;
	w->buf_size = size;
	w->br_size = nbufs * sizeof(struct io_uring_buf);
	void *mem = mmap(NULL, w->br_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return -errno;
	w->br = mem;
	io_uring_buf_ring_init(w->br);
	struct io_uring_buf_reg reg = { .ring_addr = (uintptr_t)mem, .ring_entries = nbufs, .bgid = 0 };
	int rc = io_uring_register_buf_ring(&w->ring, &reg, 0);
	if (rc)
		return rc;
	/* Pages of the buffers are touched only as traffic needs them. */
	w->bufs = mmap(NULL, (size_t)nbufs * size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (w->bufs == MAP_FAILED)
		return -errno;
	w->buf_refs = calloc(nbufs, sizeof(*w->buf_refs));
	if (!w->buf_refs)
		return -ENOMEM;
	for (unsigned i = 0; i < nbufs; i++)
		io_uring_buf_ring_add(w->br, worker_buffer(w, (uint16_t)i), size, (uint16_t)i,
				      io_uring_buf_ring_mask(nbufs), (int)i);
	io_uring_buf_ring_advance(w->br, (int)nbufs);
	w->bufs_free = nbufs;
	return 0;
}

/* ---------------------------------------------------------------- timers */

void timer_arm(struct worker *w, enum timer_queue q, struct timer *t)
{
	if (timer_armed(t))
		timer_disarm(t);
	struct timer *head = &w->tq[q];
	t->deadline_ms = w->now_ms + w->tq_ms[q];
	t->next = head;
	t->prev = head->prev;
	head->prev->next = t;
	head->prev = t;
}

void timer_disarm(struct timer *t)
{
	if (!timer_armed(t))
		return;
	t->prev->next = t->next;
	t->next->prev = t->prev;
	t->next = t->prev = NULL;
}

static void timers_expire(struct worker *w)
{
	for (int q = 0; q < TQ_COUNT; q++) {
		struct timer *head = &w->tq[q];
		while (head->next != head && head->next->deadline_ms <= w->now_ms) {
			struct timer *t = head->next;
			timer_disarm(t);
			t->fn(w, t);
		}
	}
}

static uint64_t timers_next_deadline(struct worker *w)
{
	uint64_t next = UINT64_MAX;
	for (int q = 0; q < TQ_COUNT; q++) {
		struct timer *head = &w->tq[q];
		if (head->next != head && head->next->deadline_ms < next)
			next = head->next->deadline_ms;
	}
	return next;
}

/* ---------------------------------------------------------------- connections */

static void conn_recv_arm(struct conn *c);
static void conn_close(struct conn *c);
static void conn_try_request(struct conn *c);
static void out_flush(struct conn *c);
static void out_kick(struct conn *c);

static struct conn *ev_conn(struct ev *ev, size_t off) { return (struct conn *)((char *)ev - off); }
#define EV_CONN(ev, field) ev_conn((ev), offsetof(struct conn, field))

static void conn_unref(struct conn *c)
{
	if (--c->refs || c->state != C_CLOSING)
		return;
	struct worker *w = c->w;
	close(c->fd);
	c->prev->next = c->next;
	c->next->prev = c->prev;
	w->nconns--;
	w->live--;
	atomic_store_explicit(&w->stat_open, w->nconns, memory_order_relaxed);
	free(c->peer);
	free(c);
}

static struct busy *busy_get(struct worker *w)
{
	struct busy *b = w->busy_free;
	if (b) {
		w->busy_free = b->next_free;
	} else {
		size_t hdrs = w->e->opt.limits.max_headers;
		b = calloc(1, sizeof(*b) + hdrs * sizeof(struct http1_header));
		if (!b)
			return NULL;
	}
	return b;
}

static void busy_put(struct worker *w, struct busy *b)
{
	b->next_free = w->busy_free;
	w->busy_free = b;
}

static void conn_release_input(struct conn *c)
{
	if (c->held) {
		worker_buffer_unref(c->w, c->held_bid);
		c->held = false;
	}
	for (unsigned i = 0; i < c->npend; i++)
		worker_buffer_unref(c->w, c->pend_bid[i]);
	c->npend = 0;
	buf_free(&c->in);
	buf_free(&c->body);
}

/* Append bytes to the gathered input, within the request size limit. */
static bool conn_in_append(struct conn *c, const char *p, size_t n)
{
	const struct http1_limits *lim = &c->w->e->opt.limits;
	return buf_append(&c->in, p, n, lim->max_header_bytes + lim->max_body_bytes + 8192);
}

static void out_release_all(struct busy *b)
{
	while (b->seg_count) {
		struct outseg *s = &b->segs[b->seg_head];
		if (s->release)
			s->release(s->arg, s->arg2);
		b->seg_head = (b->seg_head + 1) % b->seg_cap;
		b->seg_count--;
	}
	b->pending = 0;
	b->seg_off = 0;
}

static void conn_abort_exchange(struct conn *c)
{
	struct worker *w = c->w;
	if (!c->busy)
		return;
	if (c->state == C_HANDLING || (c->state == C_RESPONDING && !c->finished)) {
		if (!c->rejecting && w->e->opt.handler->on_abort)
			w->e->opt.handler->on_abort(&c->busy->ex);
	}
	if (c->timeout_armed) {
		struct io_uring_sqe *sqe = worker_sqe(w);
		io_uring_prep_timeout_remove(sqe, (uint64_t)(uintptr_t)&c->ev_timeout, 0);
		io_uring_sqe_set_data(sqe, &ev_noop);
	}
	/* Segments still referenced by an in-flight send are released when it completes. */
	if (!c->sending)
		out_release_all(c->busy);
}

static void conn_close(struct conn *c)
{
	if (c->state == C_CLOSING)
		return;
	conn_abort_exchange(c);
	if (c->state == C_HANDLING || c->state == C_RESPONDING)
		c->w->exchanges--;
	c->state = C_CLOSING;
	timer_disarm(&c->timer);
	if (c->starved) {
		struct conn **pp = &c->w->starved;
		while (*pp != c)
			pp = &(*pp)->next_starved;
		*pp = c->next_starved;
		c->starved = false;
	}
	/* shutdown wakes the pending multishot recv and any send; they complete and drop
	 * their references; the fd is closed with the last one. */
	shutdown(c->fd, SHUT_RDWR);
	if (!c->sending && c->busy) {
		busy_put(c->w, c->busy);
		c->busy = NULL;
	}
	conn_release_input(c);
	c->refs++;
	conn_unref(c);
}

static void conn_timer(struct conn *c, enum timer_queue q)
{
	c->timer_q = (uint8_t)q;
	timer_arm(c->w, q, &c->timer);
}

static void conn_timer_fired(struct worker *w, struct timer *t)
{
	struct conn *c = (struct conn *)((char *)t - offsetof(struct conn, timer));
	log_debug("conn fd %d: timeout in state %d, closing", c->fd, c->state);
	conn_close(c);
}

/* The exchange is finished and its output sent: get ready for the next request. */
static void conn_exchange_done(struct conn *c)
{
	struct worker *w = c->w;
	struct busy *b = c->busy;
	out_release_all(b);
	c->busy = NULL;
	busy_put(w, b);
	w->exchanges--;
	c->state = C_READING;
	c->finished = c->head_seen = c->continue_sent = c->drain_wanted = false;
	c->drain_fn = NULL;
	buf_free(&c->body);
	memset(&c->chunked, 0, sizeof(c->chunked));
	c->dec_off = 0;

	if (c->close_after || w->stopping) {
		conn_close(c);
		return;
	}
	/* Move what follows the request (pipelined bytes) to the front of the input. */
	if (c->held) {
		size_t rest = c->held_len - c->req_len;
		c->held = false;
		if (rest && !conn_in_append(c, c->held_p + c->req_len, rest)) {
			worker_buffer_unref(w, c->held_bid);
			conn_close(c);
			return;
		}
		worker_buffer_unref(w, c->held_bid);
	} else if (c->in.p) {
		buf_consume(&c->in, c->req_len);
	}
	c->req_len = 0;
	for (unsigned i = 0; i < c->npend; i++) {
		bool ok = conn_in_append(c, worker_buffer(w, c->pend_bid[i]), c->pend_len[i]);
		worker_buffer_unref(w, c->pend_bid[i]);
		if (!ok) {
			c->npend = 0;
			conn_close(c);
			return;
		}
	}
	c->npend = 0;
	if (!c->recv_armed)
		conn_recv_arm(c);
	if (c->in.len) {
		conn_timer(c, TQ_HEADER);
		conn_try_request(c);
	} else {
		buf_free(&c->in);
		conn_timer(c, TQ_IDLE);
	}
}

static const char hex_digits[16] = "0123456789abcdef";

/* v's low 4*digits bits in lowercase hex, exactly `digits` digits. */
static void hex_fixed(char *out, uint64_t v, unsigned digits)
{
	for (unsigned i = digits; i-- > 0; v >>= 4)
		out[i] = hex_digits[v & 15];
}

/* v in lowercase hex without leading zeros; returns the digit count (1..16). */
static size_t hex_min(char *out, uint64_t v)
{
	unsigned digits = 1;
	while (digits < 16 && (v >> (4 * digits)))
		digits++;
	hex_fixed(out, v, digits);
	return digits;
}

/* v in decimal; returns the digit count (1..20). */
static size_t dec_u64(char *out, uint64_t v)
{
	char tmp[20];
	size_t n = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	for (size_t i = 0; i < n; i++)
		out[i] = tmp[n - 1 - i];
	return n;
}

static void conn_begin_exchange(struct conn *c)
{
	struct worker *w = c->w;
	struct busy *b = c->busy;
	c->state = C_HANDLING;
	w->exchanges++;
	timer_disarm(&c->timer);
	b->ex.conn = c;
	b->ex.user = NULL;
	b->ex.start_ms = w->now_ms;
	/* worker, process salt, sequence: 20 hex digits (the sequence wraps after 2^48) */
	hex_fixed(b->ex.id, w->id & 0xff, 2);
	hex_fixed(b->ex.id + 2, w->e->salt & 0xffffff, 6);
	hex_fixed(b->ex.id + 8, ++w->req_seq, 12);
	b->ex.id[20] = '\0';
	c->framing = 0;
}

static void conn_dispatch(struct conn *c)
{
	conn_begin_exchange(c);
	if (!c->busy->ex.req.keep_alive)
		c->close_after = true;
	c->w->e->opt.handler->on_request(&c->busy->ex);
}

static void conn_reject(struct conn *c, int status, const char *why)
{
	struct busy *b = c->busy;
	memset(&b->ex.req, 0, sizeof(b->ex.req));
	b->ex.req.headers = b->headers;
	b->ex.req.minor_version = 1;
	b->ex.body = (struct slice){ "", 0 };
	c->rejecting = true;
	c->close_after = true;
	conn_begin_exchange(c);
	c->w->e->opt.handler->on_reject(&b->ex, status, why);
	c->rejecting = false;
}

/* Queue a static or owned segment (helper for heads and 100-continue). */
static bool out_push(struct conn *c, const struct outseg *seg)
{
	struct busy *b = c->busy;
	if (b->seg_count == b->seg_cap) {
		unsigned cap = b->seg_cap ? b->seg_cap * 2 : 8;
		struct outseg *segs = malloc(cap * sizeof(*segs));
		if (!segs)
			return false;
		for (unsigned i = 0; i < b->seg_count; i++)
			segs[i] = b->segs[(b->seg_head + i) % b->seg_cap];
		free(b->segs);
		b->segs = segs;
		b->seg_cap = cap;
		b->seg_head = 0;
	}
	b->segs[(b->seg_head + b->seg_count) % b->seg_cap] = *seg;
	b->seg_count++;
	b->pending += seg->pre_n + seg->n + (seg->crlf ? 2 : 0);
	return true;
}

/* Try to complete a request from the current input (held buffer or gathered). */
static void conn_try_request(struct conn *c)
{
	struct worker *w = c->w;
	const struct engine_options *opt = &w->e->opt;
	const char *buf = c->held ? c->held_p : c->in.p;
	size_t len = c->held ? c->held_len : c->in.len;

	if (!c->busy && !(c->busy = busy_get(w))) {
		conn_close(c);
		return;
	}
	struct busy *b = c->busy;
	struct http1_request *req = &b->ex.req;
	int r = http1_parse_request(buf, len, &opt->limits, req, b->headers, opt->limits.max_headers);
	if (r == HTTP1_INCOMPLETE)
		return;
	if (r < 0) {
		conn_reject(c, http1_error_status(r), http1_error_text(r));
		return;
	}
	if (!c->head_seen) {
		c->head_seen = true;
		if (req->body != HTTP1_BODY_NONE)
			conn_timer(c, TQ_BODY);
	}
	size_t head = req->head_len;
	switch (req->body) {
	case HTTP1_BODY_NONE:
		b->ex.body = (struct slice){ buf + head, 0 };
		c->req_len = head;
		break;
	case HTTP1_BODY_LENGTH:
		if (len - head < req->content_length)
			goto need_body;
		b->ex.body = (struct slice){ buf + head, req->content_length };
		c->req_len = head + req->content_length;
		break;
	case HTTP1_BODY_CHUNKED:
		c->chunked.max_body = opt->limits.max_body_bytes;
		if (c->dec_off < head)
			c->dec_off = head;
		for (;;) {
			size_t used;
			struct slice data;
			int d = http1_chunked_next(&c->chunked, buf + c->dec_off, len - c->dec_off, &used, &data);
			c->dec_off += used;
			if (d == HTTP1_CHUNK_DATA) {
				/* the decoder enforces max_body_bytes; this bound only backs it */
				if (!buf_append(&c->body, data.p, data.n, SIZE_MAX)) {
					conn_close(c);
					return;
				}
				continue;
			}
			if (d == HTTP1_CHUNK_MORE)
				goto need_body;
			if (d < 0) {
				conn_reject(c, http1_error_status(d), http1_error_text(d));
				return;
			}
			break; /* DONE */
		}
		b->ex.body = (struct slice){ c->body.p ? c->body.p : "", c->body.len };
		c->req_len = c->dec_off;
		break;
	default:
		conn_reject(c, 400, "unsupported request framing");
		return;
	}
	conn_dispatch(c);
	return;

need_body:
	if (req->body == HTTP1_BODY_LENGTH) {
		/* Size the gathered input once, not by doubling through a large body; only up
		 * to 1 MiB ahead of the bytes, so a claimed length costs nothing unsent. */
		size_t whole = head + req->content_length;
		if (whole > c->in.len + (1u << 20))
			whole = c->in.len + (1u << 20);
		if (whole > c->in.cap)
			buf_reserve(&c->in, whole - c->in.len,
				    opt->limits.max_header_bytes + opt->limits.max_body_bytes + 8192);
	}
	if (req->expect_continue && !c->continue_sent && req->minor_version == 1) {
		static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
		c->continue_sent = true;
		struct outseg s = { .p = cont, .n = sizeof(cont) - 1 };
		if (out_push(c, &s))
			out_kick(c);
	}
}

static void conn_on_data(struct conn *c, uint16_t bid, size_t n)
{
	struct worker *w = c->w;
	const char *p = worker_buffer(w, bid);
	if (c->state != C_READING) {
		/* An exchange is in flight: queue behind it, and stop reading when too much
		 * is waiting (the client is pipelining faster than we answer). */
		c->pend_bid[c->npend] = bid;
		c->pend_len[c->npend] = (uint32_t)n;
		if (c->npend == MAX_PENDING_BIDS) {
			worker_buffer_unref(w, bid);
			conn_close(c);
			return;
		}
		if (++c->npend == PENDING_BIDS_STOP && c->recv_armed) {
			struct io_uring_sqe *sqe = worker_sqe(w);
			io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)&c->ev_recv, 0);
			io_uring_sqe_set_data(sqe, &ev_noop);
		}
		return;
	}
	if (c->in.len == 0 && !c->held && c->timer_q == TQ_IDLE)
		conn_timer(c, TQ_HEADER); /* first byte of a request after keep-alive idle */
	if (c->in.len == 0 && !c->held) {
		c->held = true;
		c->held_bid = bid;
		c->held_p = p;
		c->held_len = n;
		conn_try_request(c);
		if (c->state == C_READING && c->held) {
			/* Not complete in one buffer: gather. */
			c->held = false;
			bool ok = conn_in_append(c, p, n);
			worker_buffer_unref(w, bid);
			if (!ok)
				conn_close(c);
		}
		return;
	}
	bool ok = conn_in_append(c, p, n);
	worker_buffer_unref(w, bid);
	if (!ok) {
		/* Over the size limits before a complete head or body was seen. */
		if (!c->busy && !(c->busy = busy_get(w))) {
			conn_close(c);
			return;
		}
		conn_reject(c, c->head_seen ? 413 : 431, c->head_seen ? "request body too large"
								      : "request header too large");
		return;
	}
	conn_try_request(c);
}

static void conn_recv_done(struct worker *w, struct ev *ev, struct io_uring_cqe *cqe)
{
	struct conn *c = EV_CONN(ev, ev_recv);
	/* The completed operation's reference guards c until we return: the handler may
	 * close the connection from inside conn_on_data. */
	if (cqe->flags & IORING_CQE_F_MORE)
		c->refs++;
	else
		c->recv_armed = false;
	if (c->state == C_CLOSING) {
		if (cqe->flags & IORING_CQE_F_BUFFER)
			worker_buffer_unref(w, worker_buffer_take(w, cqe));
	} else if (cqe->res > 0) {
		conn_on_data(c, worker_buffer_take(w, cqe), (size_t)cqe->res);
	} else if (cqe->res == -ENOBUFS) {
		if (!c->starved) {
			c->starved = true;
			c->next_starved = w->starved;
			w->starved = c;
		}
	} else if (cqe->res != -ECANCELED) {
		/* EOF or an error. A client that closes while its request is in flight has
		 * gone (as nginx sees it too): abort the exchange so that the upstream stops
		 * generating for nobody, rather than treat it as a half-close. */
		conn_close(c);
	}
	if (!c->recv_armed && c->state != C_CLOSING && !c->starved &&
	    c->npend < PENDING_BIDS_STOP)
		conn_recv_arm(c);
	conn_unref(c);
}

static void conn_recv_arm(struct conn *c)
{
	struct io_uring_sqe *sqe = worker_sqe(c->w);
	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = 0;
	io_uring_sqe_set_data(sqe, &c->ev_recv);
	c->recv_armed = true;
	c->refs++;
}

static void starved_rearm(struct worker *w)
{
	if (!w->starved || w->bufs_free < w->nbufs / 4)
		return;
	while (w->starved) {
		struct conn *c = w->starved;
		w->starved = c->next_starved;
		c->starved = false;
		if (!c->recv_armed && c->state != C_CLOSING && c->npend < PENDING_BIDS_STOP)
			conn_recv_arm(c);
	}
}

/* ---------------------------------------------------------------- output */

static void out_send_done(struct worker *w, struct ev *ev, struct io_uring_cqe *cqe);
static void out_sent(struct conn *c, size_t sent);

/* Output is sent once per loop turn, so that a response head and the body bytes that
 * follow it in the same turn leave in one sendmsg (one TCP segment, not two). */
static void out_kick(struct conn *c)
{
	if (c->sending || c->flush_queued)
		return;
	c->flush_queued = true;
	c->refs++;
	c->next_flush = c->w->flush;
	c->w->flush = c;
}

static void out_flush_queued(struct worker *w)
{
	while (w->flush) {
		struct conn *c = w->flush;
		w->flush = c->next_flush;
		c->flush_queued = false;
		if (c->state != C_CLOSING && !c->sending && c->busy && c->busy->seg_count)
			out_flush(c);
		conn_unref(c);
	}
}

static void out_flush(struct conn *c)
{
	struct busy *b = c->busy;
	unsigned niov = 0;
	size_t skip = b->seg_off;
	unsigned i;
	for (i = 0; i < b->seg_count && niov + 3 <= SEND_IOV_MAX; i++) {
		struct outseg *s = &b->segs[(b->seg_head + i) % b->seg_cap];
		struct iovec parts[3] = {
			{ s->pre, s->pre_n }, { (void *)s->p, s->n }, { "\r\n", s->crlf ? 2 : 0 } };
		for (int k = 0; k < 3; k++) {
			if (parts[k].iov_len <= skip) {
				skip -= parts[k].iov_len;
				continue;
			}
			b->iov[niov].iov_base = (char *)parts[k].iov_base + skip;
			b->iov[niov].iov_len = parts[k].iov_len - skip;
			skip = 0;
			niov++;
		}
	}
	if (c->holds && i == b->seg_count) { /* all of it is here: the last byte waits */
		while (niov && b->iov[niov - 1].iov_len == 0)
			niov--;
		if (niov && --b->iov[niov - 1].iov_len == 0)
			niov--;
	}
	if (!niov)
		return;
	memset(&b->msg, 0, sizeof(b->msg));
	b->msg.msg_iov = b->iov;
	b->msg.msg_iovlen = niov;
	struct io_uring_sqe *sqe = worker_sqe(c->w);
	io_uring_prep_sendmsg(sqe, c->fd, &b->msg, MSG_NOSIGNAL);
	io_uring_sqe_set_data(sqe, &c->ev_send);
	c->sending = true;
	c->refs++;
	if (c->state != C_READING)
		conn_timer(c, TQ_IDLE);
}

static void out_send_done(struct worker *w, struct ev *ev, struct io_uring_cqe *cqe)
{
	struct conn *c = EV_CONN(ev, ev_send);
	struct busy *b = c->busy;
	c->sending = false;
	if (c->state == C_CLOSING) {
		if (b) {
			out_release_all(b);
			c->busy = NULL;
			busy_put(w, b);
		}
		conn_unref(c);
		return;
	}
	if (c->state != C_READING)
		timer_disarm(&c->timer);
	if (cqe->res < 0) {
		conn_close(c);
		conn_unref(c);
		return;
	}
	out_sent(c, (size_t)cqe->res);
	conn_unref(c);
}

/* Account for bytes the kernel took; release finished segments; go on. */
static void out_sent(struct conn *c, size_t sent)
{
	struct busy *b = c->busy;
	b->pending -= sent;
	while (sent && b->seg_count) {
		struct outseg *s = &b->segs[b->seg_head];
		size_t total = s->pre_n + s->n + (s->crlf ? 2 : 0);
		size_t left = total - b->seg_off;
		if (sent < left) {
			b->seg_off += sent;
			break;
		}
		sent -= left;
		b->seg_off = 0;
		if (s->release)
			s->release(s->arg, s->arg2);
		b->seg_head = (b->seg_head + 1) % b->seg_cap;
		b->seg_count--;
	}
	if (b->seg_count) {
		out_flush(c);
	} else if (c->state == C_RESPONDING && c->finished) {
		conn_exchange_done(c);
		return;
	}
	if (c->drain_wanted && b->pending < OUT_LOW_WATER && c->drain_fn) {
		c->drain_wanted = false;
		c->drain_fn(&b->ex);
	}
}

/* ---------------------------------------------------------------- exchange API */

struct worker *ex_worker(const struct exchange *ex) { return ex->conn->w; }

const struct http1_header *ex_header(const struct exchange *ex, const char *name)
{
	return http1_find_header(ex->req.headers, ex->req.nheaders, name);
}

void ex_peer(const struct exchange *ex, char *out, size_t cap)
{
	struct conn *c = ex->conn;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char ip[INET6_ADDRSTRLEN], text[INET6_ADDRSTRLEN + 16] = "";
	if (c->peer) { /* a connection's peer does not change: one getpeername per connection */
		struct fmt f = fmt_into(out, cap); /* not snprintf: per request (access log, audit) */
		fmt_str(&f, c->peer);
		return;
	}
	out[0] = 0;
	if (getpeername(c->fd, (struct sockaddr *)&ss, &sl) != 0)
		return;
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
		if (inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip)))
			snprintf(text, sizeof(text), "%s:%u", ip, ntohs(in->sin_port));
	} else if (ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;
		if (inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip)))
			snprintf(text, sizeof(text), "[%s]:%u", ip, ntohs(in6->sin6_port));
	}
	c->peer = strdup(text);
	snprintf(out, cap, "%s", text);
}

const char *http_reason(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 200: return "OK";
	case 201: return "Created";
	case 204: return "No Content";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 411: return "Length Required";
	case 413: return "Content Too Large";
	case 415: return "Unsupported Media Type";
	case 422: return "Unprocessable Content";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	case 529: return "Overloaded";
	default: return "Unknown";
	}
}

/* Write the response head into busy->head (followed by room for body bytes). framing:
 * >= 0 content length, -1 chunked, -2 close-delimited. Returns head length or 0. */
static size_t head_format(struct conn *c, int status, const char *ctype, const char *extra,
			  int64_t framing, size_t body_room)
{
	struct busy *b = c->busy;
	size_t extra_len = extra ? strlen(extra) : 0;
	size_t need = 256 + (ctype ? strlen(ctype) : 0) + extra_len + body_room;
	b->head.len = 0;
	if (!buf_reserve(&b->head, need, SIZE_MAX))
		return 0;
	if (c->w->stopping)
		c->close_after = true;
	/* built by hand: the head goes out with every response, snprintf costs ~1% */
	char *h = b->head.p;
	size_t n = 0;
#define PUT(str, len) (memcpy(h + n, (str), (len)), n += (len))
#define PUT_LIT(lit) PUT(lit, sizeof(lit) - 1)
	PUT_LIT("HTTP/1.1 ");
	n += dec_u64(h + n, status >= 100 && status <= 999 ? (uint64_t)status : 500);
	h[n++] = ' ';
	const char *reason = http_reason(status);
	PUT(reason, strlen(reason));
	PUT_LIT("\r\n");
	if (ctype) {
		PUT_LIT("Content-Type: ");
		PUT(ctype, strlen(ctype));
		PUT_LIT("\r\n");
	}
	if (framing >= 0) {
		PUT_LIT("Content-Length: ");
		n += dec_u64(h + n, (uint64_t)framing);
		PUT_LIT("\r\n");
	} else if (framing == -1) {
		PUT_LIT("Transfer-Encoding: chunked\r\n");
	}
	PUT_LIT("x-request-id: ");
	PUT(b->ex.id, strlen(b->ex.id));
	PUT_LIT("\r\n");
	if (c->close_after || framing == -2)
		PUT_LIT("Connection: close\r\n");
	if (extra_len)
		PUT(extra, extra_len);
	PUT_LIT("\r\n");
#undef PUT_LIT
#undef PUT
	return n;
}

void ex_respond(struct exchange *ex, int status, const char *content_type,
		const char *extra_headers, struct slice body)
{
	struct conn *c = ex->conn;
	struct busy *b = c->busy;
	size_t n = head_format(c, status, content_type, extra_headers, (int64_t)body.n, body.n);
	if (!n) {
		conn_close(c);
		return;
	}
	/* A response to HEAD keeps its Content-Length but carries no body. */
	if (slice_eq_cstr(ex->req.method, "HEAD"))
		body.n = 0;
	if (slice_eq_cstr(b->ex.req.method, "HEAD"))
		body.n = 0; /* the head says how long the body would be; none follows */
	if (body.n)
		memcpy(b->head.p + n, body.p, body.n);
	struct outseg s = { .p = b->head.p, .n = n + body.n };
	c->state = C_RESPONDING;
	c->finished = true;
	if (!out_push(c, &s)) {
		conn_close(c);
		return;
	}
	out_kick(c);
}

/* Per-connection framing of a streamed body. */
static bool ex_chunked(const struct conn *c) { return c->busy->ex.req.minor_version >= 1; }

void ex_begin(struct exchange *ex, int status, const char *content_type,
	      const char *extra_headers, int64_t content_length)
{
	struct conn *c = ex->conn;
	int64_t framing = content_length;
	if (framing < 0)
		framing = ex_chunked(c) ? -1 : -2;
	if (framing == -2)
		c->close_after = true;
	size_t n = head_format(c, status, content_type, extra_headers, framing, 0);
	struct outseg s = { .p = c->busy->head.p, .n = n };
	c->state = C_RESPONDING;
	c->framing = (int8_t)(framing < 0 ? framing : 0);
	if (!n || !out_push(c, &s)) {
		conn_close(c);
		return;
	}
	out_kick(c);
}

bool ex_write(struct exchange *ex, struct slice data, void (*release)(void *arg, uint64_t arg2),
	      void *arg, uint64_t arg2)
{
	struct conn *c = ex->conn;
	if (c->state == C_CLOSING || !data.n) {
		if (release)
			release(arg, arg2);
		return c->state != C_CLOSING;
	}
	struct outseg s = { .p = data.p, .n = data.n, .release = release, .arg = arg, .arg2 = arg2 };
	if (c->framing == -1) {
		size_t k = hex_min(s.pre, data.n); /* at most 11 digits fit: bodies are far smaller */
		memcpy(s.pre + k, "\r\n", 2);
		s.pre_n = (uint8_t)(k + 2);
		s.crlf = true;
	}
	if (!out_push(c, &s)) {
		if (release)
			release(arg, arg2);
		conn_close(c);
		return false;
	}
	out_kick(c);
	return true;
}

size_t ex_pending(const struct exchange *ex) { return ex->conn->busy->pending; }

void ex_on_drain(struct exchange *ex, void (*fn)(struct exchange *ex))
{
	ex->conn->drain_fn = fn;
	ex->conn->drain_wanted = true;
}

void ex_finish(struct exchange *ex)
{
	struct conn *c = ex->conn;
	if (c->framing == -1) {
		static const char last[] = "0\r\n\r\n";
		struct outseg s = { .p = last, .n = sizeof(last) - 1 };
		if (!out_push(c, &s)) {
			conn_close(c);
			return;
		}
	}
	c->finished = true;
	if (c->busy->seg_count == 0) {
		conn_exchange_done(c);
		return;
	}
	out_kick(c);
}

void ex_truncate(struct exchange *ex)
{
	struct conn *c = ex->conn;
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	c->framing = 0; /* no terminating chunk: the client must see the cut */
	c->close_after = true;
	c->finished = true;
	if (c->busy->seg_count == 0)
		conn_exchange_done(c);
}

void ex_close(struct exchange *ex)
{
	struct conn *c = ex->conn;
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	c->rejecting = true; /* the handler asked for it: no on_abort */
	conn_close(c);
}

struct ex_hold *ex_hold(struct exchange *ex)
{
	struct conn *c = ex->conn;
	if (c->state == C_CLOSING)
		return NULL;
	c->holds++;
	c->refs++;
	return (struct ex_hold *)c;
}

void ex_unhold(struct ex_hold *h, bool ok)
{
	struct conn *c = (struct conn *)h;
	c->holds--;
	if (c->state != C_CLOSING && !ok) {
		struct linger lg = { .l_onoff = 1, .l_linger = 0 };
		setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		c->rejecting = true; /* the handler let go of the exchange: no on_abort */
		conn_close(c);
	} else if (c->state != C_CLOSING && !c->holds && c->busy && c->busy->seg_count) {
		out_kick(c);
	}
	conn_unref(c);
}

static void ex_timeout_done(struct worker *w, struct ev *ev, struct io_uring_cqe *cqe)
{
	struct conn *c = EV_CONN(ev, ev_timeout);
	c->timeout_armed = false;
	void (*fn)(struct exchange *) = c->timeout_fn;
	c->timeout_fn = NULL;
	if (c->state != C_CLOSING && cqe->res != -ECANCELED && c->busy && fn)
		fn(&c->busy->ex);
	conn_unref(c);
}

void ex_after(struct exchange *ex, uint32_t ms, void (*fn)(struct exchange *ex))
{
	struct conn *c = ex->conn;
	c->timeout_ts.tv_sec = ms / 1000;
	c->timeout_ts.tv_nsec = (long long)(ms % 1000) * 1000000;
	c->timeout_fn = fn;
	c->timeout_armed = true;
	struct io_uring_sqe *sqe = worker_sqe(c->w);
	io_uring_prep_timeout(sqe, &c->timeout_ts, 0, 0);
	io_uring_sqe_set_data(sqe, &c->ev_timeout);
	c->refs++;
}

/* ---------------------------------------------------------------- accept and loop */

static void accept_arm(struct worker *w)
{
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_multishot_accept(sqe, w->listen_fd, NULL, NULL, 0);
	io_uring_sqe_set_data(sqe, &w->ev_accept);
	w->accept_armed = true;
}

static void accept_done(struct worker *w, struct ev *ev, struct io_uring_cqe *cqe)
{
	if (!(cqe->flags & IORING_CQE_F_MORE))
		w->accept_armed = false;
	if (cqe->res >= 0) {
		int fd = cqe->res;
		if (w->stopping || w->nconns >= w->e->opt.max_connections) {
			close(fd);
		} else {
			struct conn *c = calloc(1, sizeof(*c));
			if (!c) {
				close(fd);
			} else {
				int one = 1;
				setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
				c->w = w;
				c->fd = fd;
				c->ev_recv.fn = conn_recv_done;
				c->ev_send.fn = out_send_done;
				c->ev_timeout.fn = ex_timeout_done;
				c->timer.fn = conn_timer_fired;
				c->state = C_READING;
				c->next = w->conns.next;
				c->prev = &w->conns;
				w->conns.next->prev = c;
				w->conns.next = c;
				w->nconns++;
				w->live++;
				atomic_store_explicit(&w->stat_open, w->nconns, memory_order_relaxed);
				atomic_store_explicit(&w->stat_accepted,
						      atomic_load_explicit(&w->stat_accepted, memory_order_relaxed) + 1,
						      memory_order_relaxed);
				conn_timer(c, TQ_HEADER);
				conn_recv_arm(c);
			}
		}
	} else if (cqe->res != -ECANCELED && !w->stopping) {
		log_warn("%s worker %u: accept: %s", w->e->opt.name, w->id, strerror(-cqe->res));
	}
	if (!w->accept_armed && !w->stopping)
		accept_arm(w);
}

static void wake_arm(struct worker *w)
{
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_read(sqe, w->wake_fd, &w->wake_buf, sizeof(w->wake_buf), 0);
	io_uring_sqe_set_data(sqe, &w->ev_wake);
	w->wake_armed = true;
}

static void worker_begin_stop(struct worker *w)
{
	if (w->stopping)
		return;
	w->stopping = true;
	w->stop_deadline = w->now_ms + w->e->opt.timeouts.shutdown_grace;
	if (w->accept_armed) {
		struct io_uring_sqe *sqe = worker_sqe(w);
		io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)&w->ev_accept, 0);
		io_uring_sqe_set_data(sqe, &ev_noop);
	}
	/* Stop listening at once: new connections are refused rather than left in the
	 * backlog, unanswered, until the process exits. */
	shutdown(w->listen_fd, SHUT_RDWR);
	/* Idle connections go now; busy ones close after their response. */
	for (struct conn *c = w->conns.next, *next; c != &w->conns; c = next) {
		next = c->next;
		if (c->state == C_READING && !c->in.len && !c->held)
			conn_close(c);
		else
			c->close_after = true;
	}
	const struct engine_handler *h = w->e->opt.handler;
	if (h->worker_stop)
		h->worker_stop(w, w->state);
}

static void wake_done(struct worker *w, struct ev *ev, struct io_uring_cqe *cqe)
{
	w->wake_armed = false;
	if (atomic_load(&w->e->stop))
		worker_begin_stop(w);
	else
		wake_arm(w);
}

static void worker_force_close(struct worker *w)
{
	for (struct conn *c = w->conns.next, *next; c != &w->conns; c = next) {
		next = c->next;
		conn_close(c);
	}
}

static uint64_t clock_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Busy polling: run the ring's pending work without sleeping for up to busy_poll_ns,
 * because waking an idle (virtual) CPU costs tens of microseconds (measured: about
 * 60 us of the gateway's added latency on the reference VM). It costs CPU time. */
static bool worker_poll(struct worker *w)
{
	uint64_t until = clock_ns() + w->e->busy_poll_ns;
	do {
		io_uring_submit_and_get_events(&w->ring);
		if (io_uring_cq_ready(&w->ring))
			return true;
	} while (clock_ns() < until);
	return false;
}

static int ring_init(struct worker *w)
{
	struct io_uring_params p;
	/* SINGLE_ISSUER + DEFER_TASKRUN: completions are processed only when this thread
	 * waits, with no IPIs; COOP_TASKRUN is the fallback for older kernels. */
	unsigned flags[] = { IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
			     IORING_SETUP_COOP_TASKRUN, 0 };
	int rc = -EINVAL;
	for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
		memset(&p, 0, sizeof(p));
		p.flags = flags[i] | IORING_SETUP_CQSIZE;
		p.cq_entries = RING_ENTRIES * 8;
		rc = io_uring_queue_init_params(RING_ENTRIES, &w->ring, &p);
		if (rc == 0)
			return 0;
	}
	return rc;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	const struct engine_options *opt = &w->e->opt;
	if (opt->pin && w->cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(w->cpu, &set);
		pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	}
	char name[16];
	snprintf(name, sizeof(name), "%.8s-w%u", opt->name, w->id);
	pthread_setname_np(pthread_self(), name);

	int rc = ring_init(w);
	if (rc == 0)
		rc = buffers_setup(w, opt->buffers, opt->buffer_size);
	if (rc) {
		log_error("%s worker %u: io_uring setup failed: %s", opt->name, w->id, strerror(-rc));
		exit(1);
	}
	w->now_ms = clock_ms();
	if (opt->handler->worker_init)
		w->state = opt->handler->worker_init(w, opt->handler->ctx);
	accept_arm(w);
	wake_arm(w);

	for (;;) {
		if (w->stopping && w->nconns == 0 && w->live == 0 && !w->accept_armed)
			break;
		out_flush_queued(w);
		buffers_publish(w);
		uint64_t deadline = timers_next_deadline(w);
		uint32_t tick = opt->handler->worker_tick ? opt->handler->worker_tick(w, w->state)
							  : UINT32_MAX;
		if (tick != UINT32_MAX && w->now_ms + tick < deadline)
			deadline = w->now_ms + tick;
		if (w->stopping && w->stop_deadline < deadline)
			deadline = w->stop_deadline;
		struct __kernel_timespec ts, *tsp = NULL;
		if (deadline != UINT64_MAX) {
			uint64_t wait = deadline > w->now_ms ? deadline - w->now_ms : 0;
			ts.tv_sec = (long long)(wait / 1000);
			ts.tv_nsec = (long long)(wait % 1000) * 1000000;
			tsp = &ts;
		}
		struct io_uring_cqe *cqe;
		if (w->e->busy_poll_ns && worker_poll(w))
			rc = 0;
		else
			rc = io_uring_submit_and_wait_timeout(&w->ring, &cqe, 1, tsp, NULL);
		if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY)
			log_warn("%s worker %u: io_uring wait: %s", opt->name, w->id, strerror(-rc));
		w->now_ms = clock_ms();
		unsigned head, n = 0;
		io_uring_for_each_cqe(&w->ring, head, cqe) {
			struct ev *ev = io_uring_cqe_get_data(cqe);
			n++;
			if (ev)
				ev->fn(w, ev, cqe);
		}
		io_uring_cq_advance(&w->ring, n);
		timers_expire(w);
		starved_rearm(w);
		if (w->stopping && w->now_ms >= w->stop_deadline && w->nconns)
			worker_force_close(w);
	}
	if (opt->handler->worker_fini)
		opt->handler->worker_fini(w, w->state);
	while (w->busy_free) {
		struct busy *b = w->busy_free;
		w->busy_free = b->next_free;
		free(b->segs);
		buf_free(&b->head);
		free(b);
	}
	close(w->listen_fd);
	close(w->wake_fd);
	io_uring_queue_exit(&w->ring);
	munmap(w->bufs, (size_t)w->nbufs * w->buf_size);
	munmap(w->br, w->br_size);
	free(w->buf_refs);
	return NULL;
}

static int listener_open(const char *host, uint16_t port, uint16_t *bound)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_NUMERICSERV | AI_PASSIVE };
	struct addrinfo *ai;
	char portstr[8];
	snprintf(portstr, sizeof(portstr), "%u", port);
	int rc = getaddrinfo(host, portstr, &hints, &ai);
	if (rc) {
		log_error("listen %s:%u: %s", host, port, gai_strerror(rc));
		return -1;
	}
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 4096)) {
		log_error("listen %s:%u: %s", host, port, strerror(errno));
		if (fd >= 0)
			close(fd);
		freeaddrinfo(ai);
		return -1;
	}
	freeaddrinfo(ai);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	getsockname(fd, (struct sockaddr *)&ss, &sl);
	*bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						: ((struct sockaddr_in *)&ss)->sin_port);
	return fd;
}

/* Each client connection may hold an upstream one too: take all the descriptors the
 * hard limit allows (systemd's default hard limit is 512Ki). */
static void raise_fd_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

struct engine *engine_start(const struct engine_options *opt)
{
	raise_fd_limit();
	struct engine *e = calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	e->opt = *opt;
	if (!e->opt.name)
		e->opt.name = "penstock";
	if (!e->opt.buffers)
		e->opt.buffers = 4096;
	if (!e->opt.buffer_size)
		e->opt.buffer_size = 16384;
	e->busy_poll_ns = (uint64_t)opt->busy_poll_us * 1000;
	if (getrandom(&e->salt, sizeof(e->salt), 0) != sizeof(e->salt))
		e->salt = (uint32_t)clock_ms();
	cpu_set_t allowed;
	sched_getaffinity(0, sizeof(allowed), &allowed);
	int ncpu = CPU_COUNT(&allowed);
	e->nworkers = opt->workers ? opt->workers : (unsigned)ncpu;
	e->workers = calloc(e->nworkers, sizeof(*e->workers));
	if (!e->workers) {
		free(e);
		return NULL;
	}
	uint16_t port = opt->port;
	for (unsigned i = 0; i < e->nworkers; i++) {
		struct worker *w = &e->workers[i];
		w->e = e;
		w->id = i;
		w->listen_fd = listener_open(opt->host, port, &port);
		if (w->listen_fd < 0)
			return NULL; /* the process exits on this path */
		w->wake_fd = eventfd(0, EFD_CLOEXEC);
		w->ev_accept.fn = accept_done;
		w->ev_wake.fn = wake_done;
		w->conns.next = w->conns.prev = &w->conns;
		uint32_t ms[TQ_COUNT] = {
			[TQ_HEADER] = opt->timeouts.header_read, [TQ_BODY] = opt->timeouts.body_read,
			[TQ_IDLE] = opt->timeouts.idle, [TQ_UP_CONNECT] = opt->timeouts.upstream_connect,
			[TQ_UP_FIRST_BYTE] = opt->timeouts.upstream_first_byte,
			[TQ_UP_IDLE] = opt->timeouts.upstream_idle, [TQ_POOL_IDLE] = opt->timeouts.pool_idle,
		};
		for (int q = 0; q < TQ_COUNT; q++) {
			w->tq[q].next = w->tq[q].prev = &w->tq[q];
			w->tq_ms[q] = ms[q];
		}
		/* i-th allowed CPU */
		w->cpu = -1;
		for (int cpu = 0, seen = 0; cpu < CPU_SETSIZE; cpu++) {
			if (!CPU_ISSET(cpu, &allowed))
				continue;
			if (seen++ == (int)(i % (unsigned)ncpu)) {
				w->cpu = cpu;
				break;
			}
		}
	}
	e->port = port;
	for (unsigned i = 0; i < e->nworkers; i++)
		pthread_create(&e->workers[i].thread, NULL, worker_main, &e->workers[i]);
	log_info("%s: listening on %s:%u with %u worker%s", e->opt.name, opt->host, port,
		 e->nworkers, e->nworkers == 1 ? "" : "s");
	return e;
}

uint16_t engine_port(const struct engine *e) { return e->port; }

void engine_stats(const struct engine *e, struct engine_stats *st)
{
	*st = (struct engine_stats){ 0 };
	for (unsigned i = 0; i < e->nworkers; i++) {
		st->accepted += atomic_load_explicit(&e->workers[i].stat_accepted, memory_order_relaxed);
		st->open += atomic_load_explicit(&e->workers[i].stat_open, memory_order_relaxed);
	}
}

void engine_wake(struct engine *e)
{
	uint64_t one = 1;
	for (unsigned i = 0; i < e->nworkers; i++) {
		ssize_t r = write(e->workers[i].wake_fd, &one, sizeof(one));
		(void)r;
	}
}

void engine_stop(struct engine *e)
{
	atomic_store(&e->stop, true);
	uint64_t one = 1;
	for (unsigned i = 0; i < e->nworkers; i++) {
		ssize_t r = write(e->workers[i].wake_fd, &one, sizeof(one));
		(void)r;
	}
}

void engine_join(struct engine *e)
{
	for (unsigned i = 0; i < e->nworkers; i++)
		pthread_join(e->workers[i].thread, NULL);
	free(e->workers);
	free(e);
}

void worker_hold(struct worker *w) { w->live++; }
void worker_release(struct worker *w) { w->live--; }
