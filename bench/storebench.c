/* storebench.c - the per-request cost of the spend ledger and the audit trail, measured
 * in-process without the rest of the gateway.
 *
 * One producer thread does what gov_settle does at a request's end (budget and ledger
 * ADD records, the audit record encoded and handed over, one store unit) at a fixed rate,
 * and the store thread commits as the gateway's does. Whole-gateway load runs on a shared
 * machine are noisy; this drives the exact calls and reads the CPU time of each thread
 * (the producer's own clock around its work, the store thread's from schedstat), so a
 * change to policy/store or policy/audit shows up as microseconds per request. Not a test:
 * built on demand (ninja -C build bench/storebench), run by hand, see bench/README.md.
 */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "policy/audit.h"
#include "policy/store.h"

#define CHUNK 32 /* requests between pacing and clock reads */

struct opts {
	const char *dir;
	uint64_t requests;
	uint64_t rate;
	unsigned budgets; /* budget records per request (policy-full: a team budget) */
	bool audit;
	size_t body;      /* bytes of request and response body kept (0: none) */
	size_t ws, touch; /* the producer's own working set, and the bytes of it each request
			   * reads (the rest of a worker's request: does the store evict it?) */
	enum store_durability durability;
};

static uint64_t clock_ns(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The store thread's CPU time so far (ns), from its schedstat; 0 if it cannot be read. */
static uint64_t store_thread_ns(void)
{
	DIR *d = opendir("/proc/self/task");
	uint64_t ns = 0;
	struct dirent *e;
	while (d && (e = readdir(d))) {
		char path[300], comm[32] = "";
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		bool ours = fgets(comm, sizeof(comm), f) && strncmp(comm, "penstock-store", 14) == 0;
		fclose(f);
		if (!ours)
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/schedstat", e->d_name);
		f = fopen(path, "r");
		if (f && fscanf(f, "%" SCNu64, &ns) != 1)
			ns = 0;
		if (f)
			fclose(f);
		break;
	}
	if (d)
		closedir(d);
	return ns;
}

static uint64_t process_ns(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ((uint64_t)ru.ru_utime.tv_sec + (uint64_t)ru.ru_stime.tv_sec) * 1000000000u +
	       ((uint64_t)ru.ru_utime.tv_usec + (uint64_t)ru.ru_stime.tv_usec) * 1000u;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

/* What the pipeline fills for a served OpenAI request: one attempt, provider usage; the
 * request id as core/engine makes it (20 hex digits), a key id as policy/keys does. */
static void fill_audit(struct audit_rec *a, uint64_t i, char id[24], const char *body)
{
	static const char hex[] = "0123456789abcdef";
	uint64_t v = i * 0x9e3779b97f4a7c15u;
	for (int d = 19; d >= 0; d--, v >>= 4)
		id[d] = hex[v & 15];
	id[20] = 0;
	*a = (struct audit_rec){
		.time_ns = (int64_t)clock_ns(CLOCK_REALTIME) - 180000,
		.request_id = slice_cstr(id),
		.key_id = slice_cstr("k_7f3a9c01d2e4b5a6"),
		.team = slice_cstr("search"),
		.client = slice_cstr("127.0.0.1:53124"),
		.dialect = AUDIT_DIALECT_OPENAI,
		.model = slice_cstr("gpt-4o-mini"),
		.provider = slice_cstr("openai"),
		.upstream_model = slice_cstr("gpt-4o-mini"),
		.status = 200,
		.usage = AUDIT_USAGE_PROVIDER,
		.prompt_tokens = 200 + i % 500,
		.completion_tokens = 20 + i % 300,
		.cost_micro_usd = 150 + (int64_t)(i % 400),
		.total_us = 180 + i % 50,
		.first_byte_us = 120,
		.upstream_us = 150,
		.nattempts = 1,
	};
	a->attempts[0] = (struct audit_attempt){ slice_cstr("openai"),
						 slice_cstr("gpt-4o-mini"), 200,
						 slice_cstr("") };
	if (body) {
		a->has_request_body = a->has_response_body = true;
		a->request_body = a->response_body = slice_cstr(body);
	}
}

static void spend_key(struct store_spend_key *k, enum store_scope scope,
		      enum store_period period, uint64_t start, const void *id, size_t len)
{
	*k = (struct store_spend_key){ .scope = (uint8_t)scope, .period = (uint8_t)period,
				       .start = start, .id_len = (uint8_t)len };
	memcpy(k->id, id, len);
}

/* gov_settle's unit: budgets, then the ledger (key, team, model), then the audit record,
 * encoded as gov.c's audit_record() does: into small (AUDIT_CONTENT_MAX bytes), which the
 * record borrows until it is submitted, or for bodies into a blob. The number of records,
 * 0 if one failed. */
static unsigned settle_unit(const struct opts *o, uint64_t i, struct store_rec *recs,
			    const char *body, uint8_t *small)
{
	static const uint8_t key_hash[32] = { 0x7f, 0x3a, 0x9c, 0x01, 0xd2, 0xe4, 0xb5, 0xa6 };
	uint64_t day = (uint64_t)time(NULL) / 86400 * 86400;
	struct store_spend d = { .micro_usd = 150 + (int64_t)(i % 400),
				 .input_tokens = 200 + (int64_t)(i % 500),
				 .output_tokens = 20 + (int64_t)(i % 300), .requests = 1 };
	struct store_spend_key k;
	unsigned n = 0;
	for (unsigned b = 0; b < o->budgets; b++) {
		spend_key(&k, STORE_SCOPE_TEAM, STORE_PERIOD_MONTH, day, "search", 6);
		k.id[0] = (uint8_t)('s' + b);
		if (store_rec_spend_add(&recs[n++], &k, &d))
			return 0;
	}
	spend_key(&k, STORE_SCOPE_LEDGER_KEY, STORE_PERIOD_DAY, day, key_hash, 32);
	if (store_rec_spend_add(&recs[n++], &k, &d))
		return 0;
	spend_key(&k, STORE_SCOPE_LEDGER_TEAM, STORE_PERIOD_DAY, day, "search", 6);
	if (store_rec_spend_add(&recs[n++], &k, &d))
		return 0;
	spend_key(&k, STORE_SCOPE_LEDGER_MODEL, STORE_PERIOD_DAY, day, "gpt-4o-mini", 11);
	if (store_rec_spend_add(&recs[n++], &k, &d))
		return 0;
	if (!o->audit)
		return n;
	struct audit_rec a;
	char id[24];
	fill_audit(&a, i, id, body);
	size_t cap = audit_encode_bound(&a);
	if (cap <= AUDIT_CONTENT_MAX) {
		size_t len = audit_encode(&a, small, cap);
		return len && store_rec_audit_ref(&recs[n], small, len) == 0 ? n + 1 : 0;
	}
	uint8_t *content = malloc(cap);
	size_t len = content ? audit_encode(&a, content, cap) : 0;
	bool ok = len && store_rec_audit(&recs[n], content, len) == 0;
	free(content);
	return ok ? n + 1 : 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: storebench [--requests N] [--rate R] [--budgets N] [--no-audit]\n"
			"                  [--body BYTES] [--durability batch|strict|none] [--dir D]\n"
			"                  [--working-set-kb KB --touch-kb KB]\n");
	exit(2);
}

static void parse(int argc, char **argv, struct opts *o)
{
	static const struct option longs[] = {
		{ "requests", required_argument, NULL, 'n' }, { "rate", required_argument, NULL, 'r' },
		{ "budgets", required_argument, NULL, 'b' },  { "no-audit", no_argument, NULL, 'A' },
		{ "body", required_argument, NULL, 'B' },
		{ "durability", required_argument, NULL, 'd' },
		{ "dir", required_argument, NULL, 'D' },
		{ "working-set-kb", required_argument, NULL, 'W' },
		{ "touch-kb", required_argument, NULL, 'T' },  { NULL, 0, NULL, 0 },
	};
	*o = (struct opts){ .requests = 500000, .rate = 50000, .budgets = 1, .audit = true,
			    .durability = STORE_DURABILITY_BATCH };
	int c;
	while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
		switch (c) {
		case 'n': o->requests = strtoull(optarg, NULL, 10); break;
		case 'r': o->rate = strtoull(optarg, NULL, 10); break;
		case 'b': o->budgets = (unsigned)atoi(optarg); break;
		case 'A': o->audit = false; break;
		case 'B': o->body = strtoull(optarg, NULL, 10); break;
		case 'D': o->dir = optarg; break;
		case 'W': o->ws = strtoull(optarg, NULL, 10) << 10; break;
		case 'T': o->touch = strtoull(optarg, NULL, 10) << 10; break;
		case 'd':
			if (strcmp(optarg, "batch") == 0)
				o->durability = STORE_DURABILITY_BATCH;
			else if (strcmp(optarg, "strict") == 0)
				o->durability = STORE_DURABILITY_STRICT;
			else if (strcmp(optarg, "none") == 0)
				o->durability = STORE_DURABILITY_NONE;
			else
				usage();
			break;
		default: usage();
		}
	}
	if (!o->requests || !o->rate || o->budgets > 4 || o->body > AUDIT_BODY_MAX ||
	    o->touch > o->ws)
		usage();
}

int main(int argc, char **argv)
{
	struct opts o;
	parse(argc, argv, &o);
	char dirbuf[64];
	if (!o.dir) {
		snprintf(dirbuf, sizeof(dirbuf), "/tmp/storebench-%d", (int)getpid());
		o.dir = dirbuf;
	}
	nftw(o.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	char *body = NULL;
	if (o.body) {
		body = malloc(o.body + 1);
		for (size_t i = 0; body && i < o.body; i++)
			body[i] = (char)('a' + i % 26);
		if (!body)
			return 1;
		body[o.body] = 0;
	}
	uint8_t *ws = o.ws ? calloc(1, o.ws) : NULL;
	size_t ws_at = 0;
	uint64_t ws_sum = 0;
	if (o.ws && !ws)
		return 1;
	struct store_options so = { .dir = o.dir, .producers = 2, .durability = o.durability };
	int err = 0;
	struct store *s = store_open(&so, &err);
	if (!s) {
		fprintf(stderr, "storebench: %s: %s\n", o.dir, store_strerror(err));
		return 1;
	}
	uint64_t store0 = store_thread_ns(), proc0 = process_ns();
	uint64_t wall0 = clock_ns(CLOCK_MONOTONIC), prod_ns = 0, dropped = 0, last = 0;
	uint64_t audit_bytes = 0;
	for (uint64_t i = 0; i < o.requests;) {
		uint64_t due = wall0 + i * 1000000000u / o.rate;
		uint64_t now = clock_ns(CLOCK_MONOTONIC);
		if (due > now) {
			struct timespec ts = { (time_t)(due / 1000000000u), (long)(due % 1000000000u) };
			clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
		}
		uint64_t t0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
		for (unsigned j = 0; j < CHUNK && i < o.requests; j++, i++) {
			for (size_t b = 0; b < o.touch; b += 64, ws_at = (ws_at + 64) % o.ws)
				ws_sum += ws[ws_at]++;
			struct store_rec recs[STORE_UNIT_MAX];
			uint8_t small[AUDIT_CONTENT_MAX];
			unsigned n = settle_unit(&o, i, recs, body, small);
			if (n == 0) {
				fprintf(stderr, "storebench: a record could not be made\n");
				return 1;
			}
			if (o.audit)
				audit_bytes += recs[n - 1].val_len;
			uint64_t seq;
			if (store_submit(s, 0, recs, n, &seq) == 0) {
				last = seq;
				continue;
			}
			for (unsigned r = 0; r < n; r++)
				store_rec_release(&recs[r]);
			dropped++;
		}
		prod_ns += clock_ns(CLOCK_THREAD_CPUTIME_ID) - t0;
	}
	int rc = last ? store_wait(s, 0, last, 60000) : 0;
	uint64_t wall = clock_ns(CLOCK_MONOTONIC) - wall0;
	uint64_t store_ns = store_thread_ns() - store0, proc_ns = process_ns() - proc0;
	struct store_stats st;
	store_stats(s, &st);
	store_close(s);
	nftw(o.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(body);
	free(ws);
	double n = (double)o.requests;
	printf("requests %" PRIu64 " at %" PRIu64 "/s (%.2f s), audit %s, budgets %u, body %zu, "
	       "%s; last outcome %d, dropped %" PRIu64 "\n",
	       o.requests, o.rate, (double)wall / 1e9, o.audit ? "on" : "off", o.budgets, o.body,
	       o.durability == STORE_DURABILITY_BATCH ? "batch"
	       : o.durability == STORE_DURABILITY_STRICT ? "strict" : "none",
	       rc, dropped);
	printf("commits %" PRIu64 ", records %" PRIu64 " (%.0f per commit), commit mean %.0f us, "
	       "audit record %.0f bytes\n",
	       st.commits, st.records, st.commits ? (double)st.records / (double)st.commits : 0,
	       st.commits ? (double)st.commit_us_sum / (double)st.commits : 0,
	       (double)audit_bytes / n);
	if (o.ws)
		printf("working set %zu KiB, %zu KiB read per request (%" PRIu64 ")\n", o.ws >> 10,
		       o.touch >> 10, ws_sum);
	printf("cpu per request: producer %.3f us, store thread %.3f us, process %.3f us\n",
	       (double)prod_ns / n / 1e3, (double)store_ns / n / 1e3, (double)proc_ns / n / 1e3);
	return rc == 0 && dropped == 0 ? 0 : 1;
}
