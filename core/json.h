/* json.h - a targeted, zero-copy JSON scanner.
 *
 * The gateway does not parse request bodies into trees when it only needs a few
 * fields: json_scan_object walks one object once, checks its structure and returns
 * the raw value slices of the keys asked for. Translation between dialects (a full
 * parse) is the providers' business, not this module's.
 */
#ifndef PENSTOCK_JSON_H
#define PENSTOCK_JSON_H

#include <stdbool.h>
#include <stdint.h>

#include "str.h"

/* Scan the JSON object in text (surrounding whitespace allowed). For each keys[i]
 * found at the top level, vals[i] is its raw value (a string keeps its quotes);
 * absent keys get {NULL, 0}. A repeated key keeps its last value, as most parsers do.
 * Returns 0, or -1 if text is not one well-formed JSON object (nesting is bounded
 * to 64 levels). Keys are compared on their raw bytes (an escaped key never matches). */
int json_scan_object(struct slice text, const char *const *keys, struct slice *vals, unsigned nkeys);

/* Interpretations of a raw value slice. */
bool json_is_true(struct slice v);
bool json_is_null(struct slice v);
/* A string value without its quotes, if it contains no escapes; false otherwise. */
bool json_plain_string(struct slice v, struct slice *out);
/* An integer value; false if v is not an integer in int64 range. */
bool json_int(struct slice v, int64_t *out);

/* Append s to out as a JSON string body (without quotes), escaping as needed.
 * Returns the bytes written, or 0 if it did not fit (out is then unspecified). */
size_t json_escape(char *out, size_t cap, struct slice s);

#endif
