/* fuzz_json.c - libFuzzer harness for core/json: the scanner never reads outside its
 * input, returned slices lie inside it, and a found value is itself well-formed (wrapped
 * in an object, it scans again). Build and run with tests/fuzz/run. */
/* fuzz-sources: core/json.c */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const keys[] = { "model", "stream", "messages", "" };
	char *copy = malloc(size ? size : 1);
	memcpy(copy, data, size);
	struct slice v[4];
	int rc = json_scan_object(slice_of(copy, size), keys, v, 4);
	for (int i = 0; rc == 0 && i < 4; i++) {
		if (!v[i].p)
			continue;
		if (v[i].p < copy || v[i].p + v[i].n > copy + size)
			abort();
		/* {"k":VALUE} must scan too */
		size_t n = v[i].n + 6;
		char *wrap = malloc(n);
		memcpy(wrap, "{\"k\":", 5);
		memcpy(wrap + 5, v[i].p, v[i].n);
		wrap[n - 1] = '}';
		struct slice w;
		static const char *const k[] = { "k" };
		if (json_scan_object(slice_of(wrap, n), k, &w, 1) != 0 || w.n != v[i].n)
			abort();
		free(wrap);
	}
	char esc[256];
	json_escape(esc, sizeof(esc), slice_of(copy, size > 40 ? 40 : size));
	free(copy);
	return 0;
}
