/* test_accesslog.c - every line the access log writes is one JSON object (parsed back with
 * jansson), odd bytes come back escaped or replaced, long fields are cut, batches stay
 * within their bound and go out on size and age, and lines are never lost, torn or
 * interleaved: writer threads race logrotate-style renames with reopen (file), and batches
 * larger than PIPE_BUF go through a pipe (stdout) from several threads at once. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "core/buf.h"
#include "policy/accesslog.h"

static char dir[64];
static char path[128];

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof dir, "/tmp/penstock-accesslog-XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	snprintf(path, sizeof path, "%s/access.log", dir);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	DIR *d = opendir(dir);
	struct dirent *de;
	char p[512];
	while (d && (de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
		unlink(p);
	}
	if (d)
		closedir(d);
	rmdir(dir);
	return 0;
}

static struct accesslog *open_log(const char *dest, unsigned workers)
{
	char yaml[256], err[CONFIG_ERR_MAX];
	struct config cfg;
	snprintf(yaml, sizeof yaml, "access_log: { destination: '%s' }\n", dest);
	if (config_load_string(yaml, strlen(yaml), "t.yaml", &cfg, err, sizeof err) != 0)
		fail_msg("config: %s", err);
	struct accesslog *al = accesslog_open(&cfg, workers, err, sizeof err);
	if (!al)
		fail_msg("open: %s", err);
	config_free(&cfg);
	return al;
}

static char *read_file(const char *p, size_t *len)
{
	FILE *f = fopen(p, "rb");
	assert_non_null(f);
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *s = malloc((size_t)n + 1);
	assert_non_null(s);
	assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
	s[n] = '\0';
	fclose(f);
	*len = (size_t)n;
	return s;
}

/* Each line of text as a JSON object; fn sees each; returns the line count. */
static size_t each_line(const char *text, size_t len, void (*fn)(json_t *o, void *arg),
			void *arg)
{
	size_t lines = 0;
	const char *p = text, *end = text + len;
	if (len)
		assert_int_equal(text[len - 1], '\n');
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		assert_non_null(nl);
		assert_true((size_t)(nl - p) + 1 <= ACCESSLOG_LINE_MAX);
		json_error_t je;
		json_t *o = json_loadb(p, (size_t)(nl - p), JSON_ALLOW_NUL, &je);
		if (!o || !json_is_object(o))
			fail_msg("line %zu is not a JSON object (%s): %.*s", lines + 1, je.text,
				 (int)(nl - p), p);
		if (fn)
			fn(o, arg);
		json_decref(o);
		lines++;
		p = nl + 1;
	}
	return lines;
}

static const char *jstr(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);
	if (!json_is_string(v))
		fail_msg("%s is not a string", k);
	return json_string_value(v);
}

static json_int_t jint(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);
	if (!json_is_integer(v))
		fail_msg("%s is not an integer", k);
	return json_integer_value(v);
}

static double jreal(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);
	if (!json_is_number(v))
		fail_msg("%s is not a number", k);
	return json_number_value(v);
}

#define S(lit) SLICE_LIT(lit)

static const struct accesslog_entry full = {
	.time_ms = 1738326896789, /* 2025-01-31T12:34:56.789Z */
	.request_id = S("0123456789abcdef0123"),
	.key_id = S("key_7Hq2"),
	.team = S("search"),
	.dialect = S("anthropic"),
	.model = S("claude-sonnet"),
	.provider = S("openai"),
	.upstream_model = S("gpt-4o"),
	.status = 200,
	.prompt_tokens = 1234, .completion_tokens = 56, .cached_tokens = 7,
	.cost_micro_usd = 1500042,
	.usage = ACCESSLOG_USAGE_PROVIDER,
	.duration_us = 1234567, .ttfb_us = 89,
	.stream = true,
	.client = S("127.0.0.1:51234"),
	.attempts = 3, .fallbacks = 1,
	.error = S("upstream_timeout"),
};

static void check_full(json_t *o, void *arg)
{
	(void)arg;
	assert_string_equal(jstr(o, "time"), "2025-01-31T12:34:56.789Z");
	assert_string_equal(jstr(o, "request_id"), "0123456789abcdef0123");
	assert_string_equal(jstr(o, "key_id"), "key_7Hq2");
	assert_string_equal(jstr(o, "team"), "search");
	assert_string_equal(jstr(o, "dialect"), "anthropic");
	assert_string_equal(jstr(o, "model"), "claude-sonnet");
	assert_string_equal(jstr(o, "provider"), "openai");
	assert_string_equal(jstr(o, "upstream_model"), "gpt-4o");
	assert_int_equal(jint(o, "status"), 200);
	assert_int_equal(jint(o, "prompt_tokens"), 1234);
	assert_int_equal(jint(o, "completion_tokens"), 56);
	assert_int_equal(jint(o, "cached_tokens"), 7);
	assert_true(jreal(o, "cost_usd") == 1.500042);
	assert_string_equal(jstr(o, "usage_source"), "provider");
	assert_true(jreal(o, "duration_ms") == 1234.567);
	assert_true(jreal(o, "ttfb_ms") == 0.089);
	assert_true(json_is_true(json_object_get(o, "stream")));
	assert_string_equal(jstr(o, "client"), "127.0.0.1:51234");
	assert_int_equal(jint(o, "attempts"), 3);
	assert_int_equal(jint(o, "fallbacks"), 1);
	assert_string_equal(jstr(o, "error"), "upstream_timeout");
	assert_int_equal(json_object_size(o), 21);
}

static void test_fields(void **state)
{
	(void)state;
	struct accesslog *al = open_log(path, 1);
	accesslog_write(al, 0, &full);
	assert_true(accesslog_pending(al, 0) > 0);
	accesslog_flush(al, 0);
	assert_int_equal(accesslog_pending(al, 0), 0);
	accesslog_close(al);
	size_t len;
	char *text = read_file(path, &len);
	assert_int_equal(each_line(text, len, check_full, NULL), 1);
	/* the whole line, byte for byte: field order and number formats are the contract */
	assert_string_equal(text,
		"{\"time\":\"2025-01-31T12:34:56.789Z\",\"request_id\":\"0123456789abcdef0123\","
		"\"key_id\":\"key_7Hq2\",\"team\":\"search\",\"dialect\":\"anthropic\","
		"\"model\":\"claude-sonnet\",\"provider\":\"openai\",\"upstream_model\":\"gpt-4o\","
		"\"status\":200,\"prompt_tokens\":1234,\"completion_tokens\":56,"
		"\"cached_tokens\":7,\"cost_usd\":1.500042,\"usage_source\":\"provider\","
		"\"duration_ms\":1234.567,\"ttfb_ms\":0.089,\"stream\":true,"
		"\"client\":\"127.0.0.1:51234\",\"attempts\":3,\"fallbacks\":1,"
		"\"error\":\"upstream_timeout\"}\n");
	free(text);
}

static void check_nulls(json_t *o, void *arg)
{
	(void)arg;
	static const char *const nulls[] = { "request_id", "key_id", "team", "dialect", "model",
					     "provider", "upstream_model", "usage_source",
					     "ttfb_ms", "client", "error" };
	for (size_t i = 0; i < sizeof nulls / sizeof nulls[0]; i++)
		if (!json_is_null(json_object_get(o, nulls[i])))
			fail_msg("%s is not null", nulls[i]);
	assert_true(json_is_false(json_object_get(o, "stream")));
	assert_int_equal(jint(o, "status"), 401);
	assert_true(jreal(o, "cost_usd") == 0);
	assert_true(jreal(o, "duration_ms") == 0.004);
	/* no time given: now, within a minute */
	const char *t = jstr(o, "time");
	assert_int_equal(strlen(t), 24);
	struct tm tm = { 0 };
	assert_non_null(strptime(t, "%Y-%m-%dT%H:%M:%S", &tm));
	time_t when = timegm(&tm);
	assert_true(llabs((long long)(when - time(NULL))) < 60);
}

static void test_absent_fields_are_null(void **state)
{
	(void)state;
	struct accesslog *al = open_log(path, 2);
	struct accesslog_entry e = { .status = 401, .duration_us = 4, .ttfb_us = -1 };
	accesslog_write(al, 1, &e);
	accesslog_close(al); /* close writes out what is buffered */
	size_t len;
	char *text = read_file(path, &len);
	assert_int_equal(each_line(text, len, check_nulls, NULL), 1);
	free(text);
}

/* Odd bytes in client-controlled fields (model, client) come back as JSON that decodes to
 * the same text, or with U+FFFD for bytes that are not UTF-8. */
static void check_odd(json_t *o, void *arg)
{
	(void)arg;
	json_t *m = json_object_get(o, "model");
	assert_true(json_is_string(m));
	static const char want[] = "q\"b\\s\n\r\t\x01\x1f\x7f" "\0" "z\xc3\xa9\xf0\x9f\x98\x80";
	assert_int_equal(json_string_length(m), sizeof want - 1);
	assert_memory_equal(json_string_value(m), want, sizeof want - 1);
	assert_string_equal(jstr(o, "client"),
			    "\xef\xbf\xbd" "a" "\xef\xbf\xbd\xef\xbf\xbd" "b"   /* ff; c0 af */
			    "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd" "c"          /* ed a0 80 */
			    "\xef\xbf\xbd\xef\xbf\xbd");                        /* e2 82 at the end */
	assert_string_equal(jstr(o, "team"), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
}

static void test_odd_bytes(void **state)
{
	(void)state;
	struct accesslog *al = open_log(path, 1);
	struct accesslog_entry e = full;
	static const char model[] = "q\"b\\s\n\r\t\x01\x1f\x7f" "\0" "z\xc3\xa9\xf0\x9f\x98\x80";
	static const char client[] = "\xff" "a" "\xc0\xaf" "b" "\xed\xa0\x80" "c" "\xe2\x82";
	static const char team[] = "\xf4\x90\x80\x80"; /* past U+10FFFF */
	e.model = slice_of(model, sizeof model - 1);
	e.client = slice_of(client, sizeof client - 1);
	e.team = slice_of(team, sizeof team - 1);
	accesslog_write(al, 0, &e);
	accesslog_close(al);
	size_t len;
	char *text = read_file(path, &len);
	assert_int_equal(each_line(text, len, check_odd, NULL), 1);
	/* control bytes never reach the file raw */
	for (size_t i = 0; i + 1 < len; i++)
		assert_true((unsigned char)text[i] >= 0x20 && text[i] != 0x7f);
	free(text);
}

/* Fields far past the cut: the line stays within ACCESSLOG_LINE_MAX and valid, and a cut
 * never splits a character or an escape. */
static void check_cut(json_t *o, void *arg)
{
	(void)arg;
	const char *m = jstr(o, "model"), *c = jstr(o, "client"), *u = jstr(o, "upstream_model");
	assert_true(strlen(m) > 0 && strlen(m) <= ACCESSLOG_FIELD_MAX);
	assert_true(strlen(m) % 2 == 0); /* whole two-byte characters */
	assert_true(strlen(c) == ACCESSLOG_FIELD_MAX / 6); /* whole \u0001 escapes */
	assert_true(strlen(u) == ACCESSLOG_FIELD_MAX / 2); /* whole \" escapes */
}

static void test_long_fields_cut(void **state)
{
	(void)state;
	static char big_utf8[20000], big_ctl[20000], big_quote[20000];
	for (size_t i = 0; i < sizeof big_utf8; i += 2)
		big_utf8[i] = (char)0xc3, big_utf8[i + 1] = (char)0xa9;
	memset(big_ctl, 1, sizeof big_ctl);
	memset(big_quote, '"', sizeof big_quote);
	struct accesslog_entry e = full;
	e.model = slice_of(big_utf8, sizeof big_utf8);
	e.client = slice_of(big_ctl, sizeof big_ctl);
	e.upstream_model = slice_of(big_quote, sizeof big_quote);
	e.request_id = e.key_id = e.team = e.dialect = e.provider = e.error = e.client;
	struct accesslog *al = open_log(path, 1);
	accesslog_write(al, 0, &e);
	accesslog_close(al);
	size_t len;
	char *text = read_file(path, &len);
	assert_int_equal(each_line(text, len, check_cut, NULL), 1);
	free(text);
}

/* Plain text is copied a run at a time: the runs end where an escape begins and at the cut,
 * exactly where a byte-at-a-time copy would have stopped. The raw line is compared. */
static void test_plain_runs(void **state)
{
	(void)state;
	static char long_id[300], near_cut[ACCESSLOG_FIELD_MAX + 2];
	memset(long_id, 'x', sizeof long_id);
	memset(near_cut, 'y', sizeof near_cut);
	near_cut[ACCESSLOG_FIELD_MAX - 1] = '"'; /* its escape would pass the cut */
	static const char mixed[] = "ab\"cd\\e\x01" "f\x7fg\xc3\xa9h";
	struct accesslog_entry e = full;
	e.request_id = slice_of(long_id, sizeof long_id);
	e.key_id = slice_of(near_cut, sizeof near_cut);
	e.team = slice_of(mixed, sizeof mixed - 1);
	struct accesslog *al = open_log(path, 1);
	accesslog_write(al, 0, &e);
	accesslog_close(al);
	size_t len;
	char *text = read_file(path, &len);
	char want[3 * ACCESSLOG_FIELD_MAX];
	int n = snprintf(want, sizeof want, "\"request_id\":\"%.*s\",\"key_id\":\"%.*s\","
			 "\"team\":\"ab\\\"cd\\\\e\\u0001f\\u007fg\xc3\xa9h\",",
			 ACCESSLOG_FIELD_MAX, long_id, ACCESSLOG_FIELD_MAX - 1, near_cut);
	assert_true(n > 0 && (size_t)n < sizeof want);
	assert_non_null(strstr(text, want));
	free(text);
}

/* A worker's buffer never passes ACCESSLOG_BATCH_MAX; it goes out whole lines at a time
 * when full, and when a line finds the oldest one ACCESSLOG_FLUSH_MS old. */
static void test_batches_bounded(void **state)
{
	(void)state;
	struct accesslog *al = open_log(path, 1);
	struct stat st;
	size_t max_pending = 0, lines = 0;
	/* quickly enough that age does not trigger: at most ~100 lines of ~500 bytes */
	for (; lines < 300; lines++) {
		accesslog_write(al, 0, &full);
		size_t p = accesslog_pending(al, 0);
		if (p > max_pending)
			max_pending = p;
		assert_true(p <= ACCESSLOG_BATCH_MAX);
		assert_int_equal(stat(path, &st), 0);
		if (st.st_size > 0)
			break;
	}
	/* the batch went out when less than a line's room was left, the new line kept */
	assert_true(st.st_size > ACCESSLOG_BATCH_MAX - ACCESSLOG_LINE_MAX);
	assert_true((size_t)st.st_size <= ACCESSLOG_BATCH_MAX);
	assert_true(max_pending <= ACCESSLOG_BATCH_MAX);
	assert_true(accesslog_pending(al, 0) > 0);
	size_t len;
	char *text = read_file(path, &len);
	assert_int_equal(each_line(text, len, NULL, NULL), lines); /* whole lines only */
	free(text);

	/* age: a line that finds the oldest buffered one 100 ms old sends both */
	accesslog_flush(al, 0);
	accesslog_write(al, 0, &full);
	assert_true(accesslog_pending(al, 0) > 0);
	struct timespec ts = { 0, (ACCESSLOG_FLUSH_MS + 20) * 1000000L };
	nanosleep(&ts, NULL);
	accesslog_write(al, 0, &full);
	assert_int_equal(accesslog_pending(al, 0), 0);

	struct accesslog_stats stats;
	accesslog_stats(al, &stats);
	assert_int_equal(stats.lines, lines + 1 + 2);
	assert_int_equal(stats.dropped, 0);
	accesslog_close(al);
	text = read_file(path, &len);
	assert_int_equal(each_line(text, len, NULL, NULL), lines + 1 + 2);
	free(text);
}

/* ---- writer threads while the file is renamed and reopened ---- */

#define THREADS 4
#define PER_THREAD 20000
#define ROTATIONS 20

struct race {
	struct accesslog *al;
	atomic_uint finished;
};

struct writer_arg {
	struct race *race;
	unsigned worker;
};

static void *writer_run(void *arg)
{
	struct writer_arg *a = arg;
	char id[32], pad[600];
	memset(pad, 'x', sizeof pad);
	for (unsigned i = 0; i < PER_THREAD; i++) {
		struct accesslog_entry e = full;
		e.request_id = slice_of(id, (size_t)snprintf(id, sizeof id, "%u-%u", a->worker, i));
		e.model = slice_of(pad, i % sizeof pad); /* lines of many lengths */
		accesslog_write(a->race->al, a->worker, &e);
		if (i % 64 == 0)
			accesslog_flush(a->race->al, a->worker); /* the worker's timer */
	}
	accesslog_flush(a->race->al, a->worker);
	atomic_fetch_add(&a->race->finished, 1);
	return NULL;
}

struct seen {
	unsigned char *bits; /* [THREADS][PER_THREAD] */
	size_t dups;
};

static void mark_only(json_t *o, void *arg)
{
	struct seen *s = arg;
	unsigned w, i;
	assert_int_equal(sscanf(jstr(o, "request_id"), "%u-%u", &w, &i), 2);
	assert_true(w < THREADS && i < PER_THREAD);
	if (s->bits[w * PER_THREAD + i]++)
		s->dups++;
	assert_string_equal(jstr(o, "upstream_model"), "gpt-4o");
	assert_int_equal(jint(o, "completion_tokens"), 56);
}

static unsigned count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	unsigned n = 0;
	assert_non_null(d);
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static void test_reopen_while_writing(void **state)
{
	(void)state;
	unsigned fds_before = count_fds();
	struct race race = { .al = open_log(path, THREADS) };
	pthread_t t[THREADS];
	struct writer_arg args[THREADS];
	for (unsigned i = 0; i < THREADS; i++) {
		args[i] = (struct writer_arg){ &race, i };
		assert_int_equal(pthread_create(&t[i], NULL, writer_run, &args[i]), 0);
	}
	unsigned rotations = 0;
	char rotated[160];
	while (rotations < ROTATIONS && atomic_load(&race.finished) < THREADS) {
		struct timespec ts = { 0, 2 * 1000000L };
		nanosleep(&ts, NULL);
		snprintf(rotated, sizeof rotated, "%s.%u", path, rotations);
		assert_int_equal(rename(path, rotated), 0);
		assert_int_equal(accesslog_reopen(race.al), 0);
		rotations++;
	}
	for (unsigned i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	struct accesslog_stats st;
	accesslog_stats(race.al, &st);
	assert_int_equal(st.reopens, rotations);
	assert_int_equal(st.lines, THREADS * PER_THREAD);
	assert_int_equal(st.dropped, 0);
	accesslog_close(race.al);
	assert_int_equal(count_fds(), fds_before); /* every replaced descriptor was closed */

	struct seen s = { .bits = calloc(THREADS * PER_THREAD, 1) };
	size_t total = 0, len;
	for (unsigned r = 0; r <= rotations; r++) {
		if (r < rotations)
			snprintf(rotated, sizeof rotated, "%s.%u", path, r);
		else
			snprintf(rotated, sizeof rotated, "%s", path);
		char *text = read_file(rotated, &len);
		total += each_line(text, len, mark_only, &s);
		free(text);
	}
	print_message("%u rotations, %zu lines\n", rotations, total);
	assert_true(rotations >= 2);
	assert_int_equal(s.dups, 0);
	assert_int_equal(total, THREADS * PER_THREAD);
	for (size_t i = 0; i < THREADS * PER_THREAD; i++)
		assert_int_equal(s.bits[i], 1);
	free(s.bits);
}

/* The retirement protocol step by step: a replaced descriptor stays open while any worker
 * may still write to it (one that has not flushed since), and closes once all moved on. */
static void test_reopen_waits_for_every_worker(void **state)
{
	(void)state;
	unsigned base = count_fds();
	struct accesslog *al = open_log(path, 2);
	char rotated[160];
	assert_int_equal(count_fds(), base + 1);

	accesslog_write(al, 1, &full); /* worker 1 holds a line for the first file */
	snprintf(rotated, sizeof rotated, "%s.1", path);
	assert_int_equal(rename(path, rotated), 0);
	assert_int_equal(accesslog_reopen(al), 0);
	assert_int_equal(count_fds(), base + 2);
	accesslog_flush(al, 0);
	assert_int_equal(accesslog_reopen(al), 0); /* worker 1 has not moved: both stay */
	assert_int_equal(count_fds(), base + 3);
	accesslog_flush(al, 1); /* its line goes to the newest file */
	accesslog_flush(al, 0);
	assert_int_equal(accesslog_reopen(al), 0); /* everyone is past the first two */
	assert_int_equal(count_fds(), base + 2);
	accesslog_close(al);
	assert_int_equal(count_fds(), base);

	size_t len;
	char *text = read_file(rotated, &len);
	assert_int_equal(len, 0);
	free(text);
	text = read_file(path, &len);
	assert_int_equal(each_line(text, len, check_full, NULL), 1);
	free(text);
}

/* ---- stdout as a pipe (journald): batches over PIPE_BUF from several threads ---- */

static void test_stdout_pipe(void **state)
{
	(void)state;
	int pfd[2];
	assert_int_equal(pipe(pfd), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(pfd[0]);
		if (dup2(pfd[1], STDOUT_FILENO) < 0)
			_exit(2);
		close(pfd[1]);
		char err[CONFIG_ERR_MAX];
		struct config cfg;
		if (config_load_string("", 0, "t.yaml", &cfg, err, sizeof err) != 0)
			_exit(3);
		struct race race = { .al = accesslog_open(&cfg, THREADS, err, sizeof err) };
		if (!race.al)
			_exit(4);
		pthread_t t[THREADS];
		struct writer_arg args[THREADS];
		for (unsigned i = 0; i < THREADS; i++) {
			args[i] = (struct writer_arg){ &race, i };
			pthread_create(&t[i], NULL, writer_run, &args[i]);
		}
		for (unsigned i = 0; i < THREADS; i++)
			pthread_join(t[i], NULL);
		accesslog_close(race.al);
		config_free(&cfg);
		_exit(0);
	}
	close(pfd[1]);
	struct buf all = { 0 };
	char chunk[65536];
	for (;;) {
		ssize_t n = read(pfd[0], chunk, sizeof chunk);
		if (n < 0 && errno == EINTR)
			continue;
		assert_true(n >= 0);
		if (n == 0)
			break;
		assert_true(buf_append(&all, chunk, (size_t)n, 256u << 20));
	}
	close(pfd[0]);
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	struct seen s = { .bits = calloc(THREADS * PER_THREAD, 1) };
	size_t total = each_line(all.p, all.len, mark_only, &s);
	assert_int_equal(total, THREADS * PER_THREAD);
	assert_int_equal(s.dups, 0);
	free(s.bits);
	buf_free(&all);
}

static void test_off_and_errors(void **state)
{
	(void)state;
	struct accesslog *al = open_log("off", 2);
	accesslog_write(al, 0, &full);
	assert_int_equal(accesslog_pending(al, 0), 0);
	accesslog_flush(al, 1);
	assert_int_equal(accesslog_reopen(al), 0);
	accesslog_close(al);
	struct stat st;
	assert_int_equal(stat(path, &st), -1);

	/* NULL and out-of-range workers are no-ops */
	accesslog_write(NULL, 0, &full);
	accesslog_flush(NULL, 0);
	accesslog_close(NULL);
	al = open_log(path, 1);
	accesslog_write(al, 1, &full);
	assert_int_equal(accesslog_pending(al, 1), 0);
	assert_int_equal(accesslog_pending(al, 0), 0);

	/* reopen fails while the directory is gone: the old file goes on */
	char moved[160];
	snprintf(moved, sizeof moved, "%s.gone", dir);
	assert_int_equal(rename(dir, moved), 0);
	assert_int_equal(accesslog_reopen(al), -ENOENT);
	assert_int_equal(rename(moved, dir), 0);
	accesslog_write(al, 0, &full);
	accesslog_close(al);
	size_t len;
	char *text = read_file(path, &len);
	assert_int_equal(each_line(text, len, check_full, NULL), 1);
	free(text);

	/* a file that cannot be opened */
	char yaml[] = "access_log: { destination: /nonexistent-dir/penstock/access.log }\n";
	char err[CONFIG_ERR_MAX];
	struct config cfg;
	assert_int_equal(config_load_string(yaml, strlen(yaml), "t.yaml", &cfg, err, sizeof err),
			 0);
	assert_null(accesslog_open(&cfg, 1, err, sizeof err));
	assert_string_equal(err, "access_log: cannot open /nonexistent-dir/penstock/access.log: "
				 "No such file or directory");
	config_free(&cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_fields, setup, teardown),
		cmocka_unit_test_setup_teardown(test_absent_fields_are_null, setup, teardown),
		cmocka_unit_test_setup_teardown(test_odd_bytes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_long_fields_cut, setup, teardown),
		cmocka_unit_test_setup_teardown(test_plain_runs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_batches_bounded, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reopen_while_writing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reopen_waits_for_every_worker, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stdout_pipe, setup, teardown),
		cmocka_unit_test_setup_teardown(test_off_and_errors, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
