/* accesslog.c - per-worker JSON line buffers written whole with write(2); reopen by
 * generations, so an old descriptor closes only after every worker has left it. */
#include "accesslog.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"

/* The longest line: every string field at its cut, the keys, numbers and punctuation. */
#define STRING_FIELDS 9
#define LINE_BOUND (STRING_FIELDS * (ACCESSLOG_FIELD_MAX + 2) + 1024)
static_assert(LINE_BOUND <= ACCESSLOG_LINE_MAX, "a line fits one atomic pipe write");
static_assert(ACCESSLOG_LINE_MAX <= PIPE_BUF, "lines are cut to PIPE_BUF for pipes");
static_assert(ACCESSLOG_BATCH_MAX >= 2 * ACCESSLOG_LINE_MAX, "a batch holds lines");
#define EINTR_RETRIES 16

enum al_kind { AL_OFF, AL_STDOUT, AL_FILE };

/* The descriptor workers write to, published as one word: generation, pipe-like, fd. */
#define CUR_FD(c) ((int)(uint32_t)(c))
#define CUR_CHUNKED(c) ((bool)(((c) >> 32) & 1))
#define CUR_GEN(c) ((c) >> 33)
static uint64_t cur_pack(int fd, bool chunked, uint64_t gen)
{
	return gen << 33 | (uint64_t)chunked << 32 | (uint32_t)fd;
}

struct al_worker {
	alignas(64) char *buf;   /* ACCESSLOG_BATCH_MAX bytes of whole lines */
	size_t len;
	uint64_t oldest_ms;      /* monotonic, when the first buffered line was formatted */
	uint64_t cur;            /* the descriptor word this worker writes with */
	_Atomic uint64_t acked;  /* the generation it moved to: it no longer uses older ones */
	_Atomic uint64_t lines, dropped, write_errors; /* written by this worker only */
	bool failing;            /* the last write failed: log the next failure only after a
				  * success */
	int64_t sec;             /* the second sec_text shows */
	char sec_text[24];       /* "2025-01-31T12:34:56" */
};

struct retired {
	int fd;
	uint64_t gen;
};

struct accesslog {
	enum al_kind kind;
	char *path;
	unsigned workers;
	struct al_worker *w;
	_Atomic uint64_t cur;
	_Atomic uint64_t reopens;
	pthread_mutex_t lock;    /* reopen and close: the retired list */
	struct retired *retired; /* descriptors replaced, open until every worker left them */
	size_t nretired;
};

/* ---------------------------------------------------------------- open and close */

static bool pipe_like(int fd)
{
	struct stat st;
	return fstat(fd, &st) != 0 || !S_ISREG(st.st_mode);
}

static int open_path(const char *path)
{
	return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
}

static void free_parts(struct accesslog *al)
{
	for (unsigned i = 0; al->w && i < al->workers; i++)
		free(al->w[i].buf);
	free(al->w);
	free(al->retired);
	free(al->path);
	pthread_mutex_destroy(&al->lock);
	free(al);
}

struct accesslog *accesslog_open(const struct config *cfg, unsigned workers, char *err,
				 size_t errlen)
{
	assert(cfg);
	assert(workers > 0);
	const char *dest = cfg->access_log.destination ? cfg->access_log.destination : "stdout";
	struct accesslog *al = calloc(1, sizeof *al);
	if (!al) {
		snprintf(err, errlen, "access_log: out of memory");
		return NULL;
	}
	pthread_mutex_init(&al->lock, NULL);
	al->workers = workers;
	al->kind = strcmp(dest, "off") == 0 ? AL_OFF
		 : strcmp(dest, "stdout") == 0 ? AL_STDOUT : AL_FILE;
	al->w = aligned_alloc(alignof(struct al_worker), workers * sizeof *al->w);
	if (al->w)
		memset(al->w, 0, workers * sizeof *al->w);
	for (unsigned i = 0; al->w && al->kind != AL_OFF && i < workers; i++)
		if (!(al->w[i].buf = malloc(ACCESSLOG_BATCH_MAX)))
			break;
	if (!al->w || (al->kind != AL_OFF && !al->w[workers - 1].buf) ||
	    (al->kind == AL_FILE && !(al->path = strdup(dest)))) {
		free_parts(al);
		snprintf(err, errlen, "access_log: out of memory");
		return NULL;
	}
	int fd = STDOUT_FILENO;
	if (al->kind == AL_FILE && (fd = open_path(dest)) < 0) {
		snprintf(err, errlen, "access_log: cannot open %s: %s", dest, strerror(errno));
		free_parts(al);
		return NULL;
	}
	atomic_init(&al->cur, cur_pack(fd, pipe_like(fd), 0));
	for (unsigned i = 0; i < workers; i++) {
		al->w[i].cur = atomic_load(&al->cur);
		al->w[i].sec = -1;
	}
	return al;
}

/* Close the replaced descriptors that no worker uses any more. Under al->lock. */
static void reap_retired(struct accesslog *al, bool all)
{
	uint64_t min_acked = UINT64_MAX;
	for (unsigned i = 0; i < al->workers; i++) {
		uint64_t a = atomic_load_explicit(&al->w[i].acked, memory_order_acquire);
		if (a < min_acked)
			min_acked = a;
	}
	size_t kept = 0;
	for (size_t i = 0; i < al->nretired; i++) {
		if (all || al->retired[i].gen < min_acked)
			close(al->retired[i].fd);
		else
			al->retired[kept++] = al->retired[i];
	}
	al->nretired = kept;
}

void accesslog_close(struct accesslog *al)
{
	if (!al)
		return;
	for (unsigned i = 0; i < al->workers; i++)
		accesslog_flush(al, i);
	pthread_mutex_lock(&al->lock);
	reap_retired(al, true);
	pthread_mutex_unlock(&al->lock);
	if (al->kind == AL_FILE)
		close(CUR_FD(atomic_load(&al->cur)));
	free_parts(al);
}

int accesslog_reopen(struct accesslog *al)
{
	if (!al || al->kind != AL_FILE)
		return 0;
	pthread_mutex_lock(&al->lock);
	int fd = open_path(al->path);
	if (fd < 0) {
		int e = errno;
		pthread_mutex_unlock(&al->lock);
		log_error("access_log: cannot reopen %s: %s (still writing to the old file)",
			  al->path, strerror(e));
		return -e;
	}
	struct retired *r = realloc(al->retired, (al->nretired + 1) * sizeof *r);
	if (!r) {
		close(fd);
		pthread_mutex_unlock(&al->lock);
		return -ENOMEM;
	}
	al->retired = r;
	uint64_t old = atomic_load_explicit(&al->cur, memory_order_relaxed);
	r[al->nretired++] = (struct retired){ CUR_FD(old), CUR_GEN(old) };
	atomic_store_explicit(&al->cur, cur_pack(fd, pipe_like(fd), CUR_GEN(old) + 1),
			      memory_order_release);
	atomic_fetch_add_explicit(&al->reopens, 1, memory_order_relaxed);
	reap_retired(al, false);
	pthread_mutex_unlock(&al->lock);
	return 0;
}

/* ---------------------------------------------------------------- writing out */

static inline void bump(_Atomic uint64_t *c, uint64_t n)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
			      memory_order_relaxed);
}

/* Take up a reopened descriptor; from here on this worker never touches the old one. */
static void follow_reopen(struct accesslog *al, struct al_worker *w)
{
	uint64_t cur = atomic_load_explicit(&al->cur, memory_order_acquire);
	if (cur == w->cur)
		return;
	w->cur = cur;
	atomic_store_explicit(&w->acked, CUR_GEN(cur), memory_order_release);
}

static uint64_t count_lines(const char *p, size_t n)
{
	uint64_t k = 0;
	for (const char *e = p + n; (p = memchr(p, '\n', (size_t)(e - p))); p++)
		k++;
	return k;
}

/* Write the buffer out whole lines at a time: one write for a file (O_APPEND keeps it
 * whole), PIPE_BUF-sized pieces cut after a newline for a pipe or socket. */
static void write_out(struct accesslog *al, struct al_worker *w)
{
	follow_reopen(al, w);
	if (!w->len)
		return;
	int fd = CUR_FD(w->cur);
	bool chunked = CUR_CHUNKED(w->cur);
	const char *p = w->buf;
	size_t left = w->len;
	unsigned eintr = 0;
	while (left) {
		size_t n = left;
		if (chunked && n > PIPE_BUF) {
			const char *nl = memrchr(p, '\n', PIPE_BUF);
			assert(nl); /* every line is at most PIPE_BUF bytes */
			n = (size_t)(nl - p) + 1;
		}
		ssize_t k = write(fd, p, n);
		if (k < 0 && errno == EINTR && ++eintr < EINTR_RETRIES)
			continue;
		if (k <= 0) {
			int e = k < 0 ? errno : EIO;
			uint64_t lost = count_lines(p, left);
			bump(&w->write_errors, 1);
			bump(&w->dropped, lost);
			if (!w->failing)
				log_warn("access_log: write failed: %s (%llu lines dropped; more are "
					 "dropped until a write succeeds)", strerror(e),
					 (unsigned long long)lost);
			w->failing = true;
			break;
		}
		/* A short write (a full disk, a signal) goes on with the rest of the line. */
		p += k;
		left -= (size_t)k;
		if (!left)
			w->failing = false;
	}
	w->len = 0;
}

void accesslog_flush(struct accesslog *al, unsigned worker)
{
	if (!al || worker >= al->workers || al->kind == AL_OFF)
		return;
	write_out(al, &al->w[worker]);
}

size_t accesslog_pending(const struct accesslog *al, unsigned worker)
{
	if (!al || worker >= al->workers)
		return 0;
	return al->w[worker].len;
}

void accesslog_stats(const struct accesslog *al, struct accesslog_stats *out)
{
	*out = (struct accesslog_stats){ 0 };
	if (!al)
		return;
	for (unsigned i = 0; i < al->workers; i++) {
		out->lines += atomic_load_explicit(&al->w[i].lines, memory_order_relaxed);
		out->dropped += atomic_load_explicit(&al->w[i].dropped, memory_order_relaxed);
		out->write_errors +=
			atomic_load_explicit(&al->w[i].write_errors, memory_order_relaxed);
	}
	out->reopens = atomic_load_explicit(&al->reopens, memory_order_relaxed);
}

/* ---------------------------------------------------------------- formatting */

/* A line under construction; the buffer always has LINE_BOUND bytes of room. */
struct line {
	char *p;
	size_t n;
};

static void put(struct line *l, const char *s, size_t n)
{
	memcpy(l->p + l->n, s, n);
	l->n += n;
}

#define PUT_LIT(l, s) put((l), (s), sizeof(s) - 1)

static void put_u64(struct line *l, uint64_t v)
{
	char tmp[20];
	size_t i = sizeof tmp;
	do {
		tmp[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	put(l, tmp + i, sizeof tmp - i);
}

/* v / 10^digits with exactly `digits` decimals, e.g. micro-USD as USD. */
static void put_fixed(struct line *l, int64_t v, unsigned digits, uint64_t scale)
{
	uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
	if (v < 0)
		PUT_LIT(l, "-");
	put_u64(l, u / scale);
	PUT_LIT(l, ".");
	char frac[8];
	uint64_t f = u % scale;
	for (unsigned i = digits; i-- > 0; f /= 10)
		frac[i] = (char)('0' + f % 10);
	put(l, frac, digits);
}

/* The length of the valid UTF-8 sequence at p (1..4), or 0 if it is not one (overlong
 * forms, surrogates and code points past U+10FFFF are not). */
static size_t utf8_len(const unsigned char *p, size_t avail)
{
	unsigned char c = p[0];
	size_t n;
	uint32_t cp, min;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2, cp = c & 0x1f, min = 0x80;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3, cp = c & 0x0f, min = 0x800;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4, cp = c & 0x07, min = 0x10000;
	else
		return 0;
	if (avail < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

/* A JSON string (with its quotes) of at most ACCESSLOG_FIELD_MAX escaped bytes, cut on a
 * character boundary; control bytes escaped, invalid UTF-8 as U+FFFD. Empty: null. */
static void put_str(struct line *l, struct slice s)
{
	static const char hex[] = "0123456789abcdef";
	if (s.n == 0 || !s.p) {
		PUT_LIT(l, "null");
		return;
	}
	PUT_LIT(l, "\"");
	const unsigned char *p = (const unsigned char *)s.p, *end = p + s.n;
	size_t used = 0;
	while (p < end) {
		/* A run of printable ASCII that needs no escape goes in one copy: most fields
		 * (ids, names, addresses) are nothing else. */
		size_t run = 0, most = (size_t)(end - p);
		if (most > ACCESSLOG_FIELD_MAX - used)
			most = ACCESSLOG_FIELD_MAX - used;
		while (run < most && p[run] >= 0x20 && p[run] < 0x7f && p[run] != '"' &&
		       p[run] != '\\')
			run++;
		if (run) {
			put(l, (const char *)p, run);
			used += run;
			p += run;
			continue;
		}
		char esc[6];
		const char *out = esc;
		size_t n, adv = 1;
		unsigned char c = *p;
		if (c == '"' || c == '\\') {
			esc[0] = '\\', esc[1] = (char)c, n = 2;
		} else if (c == '\n') {
			esc[0] = '\\', esc[1] = 'n', n = 2;
		} else if (c == '\r') {
			esc[0] = '\\', esc[1] = 'r', n = 2;
		} else if (c == '\t') {
			esc[0] = '\\', esc[1] = 't', n = 2;
		} else if (c < 0x20 || c == 0x7f) {
			memcpy(esc, "\\u00", 4);
			esc[4] = hex[c >> 4], esc[5] = hex[c & 15], n = 6;
		} else if (c < 0x80) {
			out = (const char *)p, n = 1;
		} else if ((adv = utf8_len(p, (size_t)(end - p)))) {
			out = (const char *)p, n = adv;
		} else {
			out = "\\ufffd", n = 6, adv = 1;
		}
		if (used + n > ACCESSLOG_FIELD_MAX)
			break;
		put(l, out, n);
		used += n;
		p += adv;
	}
	PUT_LIT(l, "\"");
}

/* "2025-01-31T12:34:56.789Z", the date part kept per second. */
static void put_time(struct line *l, struct al_worker *w, int64_t ms)
{
	int64_t sec = ms >= 0 ? ms / 1000 : (ms - 999) / 1000;
	if (sec != w->sec) {
		struct tm tm;
		time_t t = (time_t)sec;
		if (!gmtime_r(&t, &tm) ||
		    strftime(w->sec_text, sizeof w->sec_text, "%Y-%m-%dT%H:%M:%S", &tm) == 0)
			snprintf(w->sec_text, sizeof w->sec_text, "1970-01-01T00:00:00");
		w->sec = sec;
	}
	unsigned milli = (unsigned)(ms - sec * 1000);
	PUT_LIT(l, "\"");
	put(l, w->sec_text, strlen(w->sec_text));
	char frac[6] = { '.', (char)('0' + milli / 100), (char)('0' + milli / 10 % 10),
			 (char)('0' + milli % 10), 'Z', '"' };
	put(l, frac, sizeof frac);
}

static uint64_t now_ms(clockid_t clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void format(struct line *l, struct al_worker *w, const struct accesslog_entry *e)
{
	static const char *const usage[] = {
		[ACCESSLOG_USAGE_NONE] = "null",
		[ACCESSLOG_USAGE_PROVIDER] = "\"provider\"",
		[ACCESSLOG_USAGE_GATEWAY] = "\"gateway\"",
	};
	int64_t t = e->time_ms ? e->time_ms : (int64_t)now_ms(CLOCK_REALTIME);

	PUT_LIT(l, "{\"time\":");
	put_time(l, w, t);
	PUT_LIT(l, ",\"request_id\":");
	put_str(l, e->request_id);
	PUT_LIT(l, ",\"key_id\":");
	put_str(l, e->key_id);
	PUT_LIT(l, ",\"team\":");
	put_str(l, e->team);
	PUT_LIT(l, ",\"dialect\":");
	put_str(l, e->dialect);
	PUT_LIT(l, ",\"model\":");
	put_str(l, e->model);
	PUT_LIT(l, ",\"provider\":");
	put_str(l, e->provider);
	PUT_LIT(l, ",\"upstream_model\":");
	put_str(l, e->upstream_model);
	PUT_LIT(l, ",\"status\":");
	put_u64(l, e->status > 0 ? (uint64_t)e->status : 0);
	PUT_LIT(l, ",\"prompt_tokens\":");
	put_u64(l, e->prompt_tokens);
	PUT_LIT(l, ",\"completion_tokens\":");
	put_u64(l, e->completion_tokens);
	PUT_LIT(l, ",\"cached_tokens\":");
	put_u64(l, e->cached_tokens);
	PUT_LIT(l, ",\"cost_usd\":");
	put_fixed(l, e->cost_micro_usd, 6, 1000000);
	PUT_LIT(l, ",\"usage_source\":");
	const char *u = (unsigned)e->usage <= ACCESSLOG_USAGE_GATEWAY ? usage[e->usage] : "null";
	put(l, u, strlen(u));
	PUT_LIT(l, ",\"duration_ms\":");
	put_fixed(l, e->duration_us > 0 ? e->duration_us : 0, 3, 1000);
	PUT_LIT(l, ",\"ttfb_ms\":");
	if (e->ttfb_us >= 0)
		put_fixed(l, e->ttfb_us, 3, 1000);
	else
		PUT_LIT(l, "null");
	if (e->stream)
		PUT_LIT(l, ",\"stream\":true");
	else
		PUT_LIT(l, ",\"stream\":false");
	PUT_LIT(l, ",\"client\":");
	put_str(l, e->client);
	PUT_LIT(l, ",\"attempts\":");
	put_u64(l, e->attempts);
	PUT_LIT(l, ",\"fallbacks\":");
	put_u64(l, e->fallbacks);
	PUT_LIT(l, ",\"error\":");
	put_str(l, e->error);
	PUT_LIT(l, "}\n");
}

void accesslog_write(struct accesslog *al, unsigned worker, const struct accesslog_entry *e)
{
	if (!al || worker >= al->workers || al->kind == AL_OFF)
		return;
	struct al_worker *w = &al->w[worker];
	if (ACCESSLOG_BATCH_MAX - w->len < LINE_BOUND)
		write_out(al, w);
	uint64_t now = now_ms(CLOCK_MONOTONIC_COARSE);
	if (!w->len)
		w->oldest_ms = now;
	struct line l = { w->buf + w->len, 0 };
	format(&l, w, e);
	assert(l.n <= LINE_BOUND);
	w->len += l.n;
	bump(&w->lines, 1);
	if (now - w->oldest_ms >= ACCESSLOG_FLUSH_MS)
		write_out(al, w);
}
