/* report.h - spend reports from the ledger: what each team, key or model cost over a range
 * of days, summed from the daily records policy/gov persists (store scopes
 * STORE_SCOPE_LEDGER_TEAM / _KEY / _MODEL, period DAY).
 *
 * Shared by the admin API (GET /admin/spend, in the gateway) and penstockctl (which opens
 * the store read-only and reads the same records while the gateway runs), so both give the
 * same numbers in the same JSON. A report reads one snapshot: the caller holds one read
 * (store_read_begin) around report_spend() and report_name_keys_from_store().
 */
#ifndef PENSTOCK_REPORT_H
#define PENSTOCK_REPORT_H

#include <stddef.h>
#include <stdint.h>

#include "policy/keys.h"
#include "policy/store.h"

enum report_by { REPORT_BY_TEAM, REPORT_BY_KEY, REPORT_BY_MODEL };

/* "team", "key", "model". 0 or -EINVAL. */
int report_by_parse(const char *s, enum report_by *out);
const char *report_by_name(enum report_by by);

/* "YYYY-MM-DD" (a real calendar date) -> UTC seconds at its midnight. 0 or -EINVAL. */
int report_parse_date(const char *s, int64_t *out);

struct report_row {
	uint8_t id[STORE_ID_MAX]; /* the ledger's id: a key's SHA-256, a team's or model's name */
	uint8_t id_len;
	struct store_spend sum;
	/* Key reports: the key's public id, name and team when known (malloc'd, else NULL). */
	char *key_id, *key_name, *key_team;
};

struct report {
	enum report_by by;
	int64_t since, until; /* UTC day starts, both included; INT64_MIN / INT64_MAX: open */
	struct report_row *rows; /* most expensive first, then by id */
	size_t n, cap;
	struct store_spend total;
};

/* Within a read: sum every daily ledger record of `by` whose day lies in [since, until]
 * (until is a day start too: that whole day counts). Fills *rep (report_free it, also on
 * error). 0, -ENOMEM or the store's error. */
int report_spend(struct store_reader *r, enum report_by by, int64_t since, int64_t until,
		 struct report *rep);
/* Key reports: name the rows whose key is in the store's keys database (issued keys; a
 * bootstrap key is not there). Within a read. 0 or the store's error. */
int report_name_keys_from_store(struct store_reader *r, struct report *rep);
/* Name one row by a key record (the admin plane walks its in-memory table with this). */
int report_name_key(struct report *rep, const struct key_rec *rec);
void report_free(struct report *rep);

/* The report as JSON text (malloc'd, newline-terminated; NULL when out of memory):
 * {"by","since","until","data":[{team|model|key,...,"micro_usd","usd","input_tokens",
 * "output_tokens","requests"}],"total":{...}}. A key row carries "key" (its public id, or
 * null when the key is unknown here), "name", "team" and, when unknown, "key_sha256_prefix"
 * (16 hex digits: enough to tell keys apart, never the whole hash). */
char *report_json(const struct report *rep);

#endif
