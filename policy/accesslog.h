/* accesslog.h - the access log: one JSON line per request, to stdout (journald) or a file.
 *
 * Each worker formats its lines into its own buffer (no lock, no allocation per line) and
 * hands whole lines to the kernel with write(2): when the buffer reaches 64 KiB, when a line
 * is written and the oldest buffered one is 100 ms old, and whenever the worker calls
 * accesslog_flush(). A line is never split between writes, so lines from different workers
 * never interleave mid-line: a file is opened O_APPEND and gets one write per batch (the
 * kernel appends each write whole); a pipe or socket (journald's stdout) gets writes of at
 * most PIPE_BUF bytes cut on line boundaries, which the kernel keeps whole. A line is at
 * most ACCESSLOG_LINE_MAX bytes: long fields are cut.
 *
 * accesslog_reopen() (SIGHUP, after logrotate renamed the file) opens the path again and
 * publishes the new descriptor; each worker moves to it at its next flush, and the old one
 * is closed once every worker has moved, so no line is lost, split or written to a closed
 * descriptor. A line is never a secret: callers pass the key's id, never the key, and no
 * bodies. docs/observability.md describes the fields.
 */
#ifndef PENSTOCK_ACCESSLOG_H
#define PENSTOCK_ACCESSLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/str.h"

#define ACCESSLOG_LINE_MAX 4096   /* PIPE_BUF: a line is one atomic write to a pipe */
#define ACCESSLOG_BATCH_MAX 65536 /* a worker's buffer */
#define ACCESSLOG_FLUSH_MS 100    /* the oldest buffered line waits at most this long */
#define ACCESSLOG_FIELD_MAX 256   /* bytes of one escaped string field; longer ones are cut */

struct accesslog;

/* Open cfg->access_log.destination for this many workers: "stdout", "off" (a log that
 * writes nothing; every call is cheap) or a file path, created 0640 if missing and opened
 * O_WRONLY | O_APPEND | O_CLOEXEC. NULL with err filled when the file cannot be opened or
 * memory ran out. */
struct accesslog *accesslog_open(const struct config *cfg, unsigned workers, char *err,
				 size_t errlen);
/* After the workers have stopped: flushes every worker's buffer, closes the file. */
void accesslog_close(struct accesslog *al);

enum accesslog_usage {
	ACCESSLOG_USAGE_NONE,     /* not billed */
	ACCESSLOG_USAGE_PROVIDER,
	ACCESSLOG_USAGE_GATEWAY,
};

/* One request. Slices are only read during accesslog_write(); an empty slice (n == 0)
 * is written as null. */
struct accesslog_entry {
	int64_t time_ms;          /* wall clock (Unix ms) when the request arrived; 0: now */
	struct slice request_id;  /* the x-request-id sent to the client */
	struct slice key_id;      /* the key's id or bootstrap name: NEVER its secret */
	struct slice team;
	struct slice dialect;     /* "openai" | "anthropic" */
	struct slice model;       /* as the client asked */
	struct slice provider;    /* the last attempt's */
	struct slice upstream_model;
	int status;               /* sent to the client; 499 when it went away first */
	uint64_t prompt_tokens, completion_tokens, cached_tokens;
	int64_t cost_micro_usd;   /* written as cost_usd with 6 decimals */
	enum accesslog_usage usage;
	int64_t duration_us;      /* arrival to the last byte */
	int64_t ttfb_us;          /* arrival to the first byte sent; -1: none (null) */
	bool stream;
	struct slice client;      /* the client's address, "ip:port" */
	unsigned attempts;        /* upstream attempts made */
	unsigned fallbacks;       /* of them, on a fallback model */
	struct slice error;       /* a short kind ("upstream_timeout", "rate_limited"); empty:
				   * none */
};

/* Format e into the worker's buffer, writing the buffer out first if the line would not
 * fit and afterwards if the oldest line has waited ACCESSLOG_FLUSH_MS. Only worker's
 * thread calls this for worker (and flush); an out-of-range worker or a NULL al is a
 * no-op. */
void accesslog_write(struct accesslog *al, unsigned worker, const struct accesslog_entry *e);

/* Write out what the worker has buffered, and move to a reopened file. The worker calls it
 * at least every ACCESSLOG_FLUSH_MS while accesslog_pending() is nonzero (a timer), and
 * before it stops; when nothing is pending it only checks for a reopen (one load). */
void accesslog_flush(struct accesslog *al, unsigned worker);

/* Bytes the worker has buffered and not yet written (the worker's own thread). */
size_t accesslog_pending(const struct accesslog *al, unsigned worker);

/* Reopen the file at the configured path (logrotate's postrotate: SIGHUP). Any one thread,
 * not a signal handler. 0, or -errno when the path cannot be opened (the log goes on
 * into the old file). stdout and off: 0, nothing to do. */
int accesslog_reopen(struct accesslog *al);

/* Counters for the operator (any thread). */
struct accesslog_stats {
	uint64_t lines;        /* formatted */
	uint64_t dropped;      /* lost to write errors */
	uint64_t write_errors; /* failed write(2) calls */
	uint64_t reopens;
};
void accesslog_stats(const struct accesslog *al, struct accesslog_stats *out);

#endif
