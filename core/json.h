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

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "str.h"

/* Scan the JSON object in text (surrounding whitespace allowed). For each keys[i]
 * found at the top level, vals[i] is its raw value (a string keeps its quotes);
 * absent keys get {NULL, 0}. A repeated key keeps its last value, as most parsers do.
 * Returns 0, or -1 if text is not one well-formed JSON object (nesting is bounded
 * to 64 levels). Keys are compared on their raw bytes (an escaped key never matches). */
int json_scan_object(struct slice text, const char *const *keys, struct slice *vals, unsigned nkeys);

/* Walk the elements of a JSON array without a tree: json_array_begin takes the array's raw
 * value (a slice from json_scan_object, brackets included; false if it is not an array),
 * then each json_array_next stores the next element's raw value in *elem and returns 1,
 * 0 after the last one, or -1 if the array is malformed (then stop). */
struct json_iter {
	const char *p, *end;
	bool first;
};
bool json_array_begin(struct json_iter *it, struct slice array);
int json_array_next(struct json_iter *it, struct slice *elem);

/* Interpretations of a raw value slice. */
bool json_is_true(struct slice v);
bool json_is_null(struct slice v);
/* A string value without its quotes, if it contains no escapes; false otherwise. */
bool json_plain_string(struct slice v, struct slice *out);
/* An integer value; false if v is not an integer in int64 range. */
bool json_int(struct slice v, int64_t *out);

/* The first byte in [p, end) that is '"', '\\' or a control character, or end: where a
 * JSON string's plain run stops (16 bytes a step with SSE2). Inline: the strings of provider
 * events are mostly short keys, for which a call costs as much as the scan. */
static inline const char *json_string_stop(const char *p, const char *end)
{
#ifdef __SSE2__
	const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\');
	const __m128i ctl = _mm_set1_epi8(0x1f);
	while (end - p >= 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
		__m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
					   _mm_cmpeq_epi8(_mm_min_epu8(v, ctl), v)); /* v <= 0x1f */
		int mask = _mm_movemask_epi8(hit);
		if (mask)
			return p + __builtin_ctz((unsigned)mask);
		p += 16;
	}
#endif
	for (; p < end; p++)
		if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
			return p;
	return end;
}


/* Append s to out as a JSON string body (without quotes), escaping as needed.
 * Returns the bytes written, or 0 if it did not fit (out is then unspecified). */
size_t json_escape(char *out, size_t cap, struct slice s);

#endif
