/* str.h - byte slices: (pointer, length) views into buffers that someone else owns. */
#ifndef PENSTOCK_STR_H
#define PENSTOCK_STR_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

/* A slice never owns its bytes; its lifetime is that of the buffer it points into. */
struct slice {
	const char *p;
	size_t n;
};

#define SLICE_LIT(s) ((struct slice){ (s), sizeof(s) - 1 })
#define SLICE_FMT "%.*s"
#define SLICE_ARG(s) (int)(s).n, (s).p

static inline struct slice slice_of(const char *p, size_t n) { return (struct slice){ p, n }; }
static inline struct slice slice_cstr(const char *s) { return (struct slice){ s, strlen(s) }; }

static inline bool slice_eq(struct slice a, struct slice b)
{
	return a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0);
}

static inline bool slice_eq_cstr(struct slice a, const char *s) { return slice_eq(a, slice_cstr(s)); }

/* ASCII case-insensitive equality, for header names and tokens. */
static inline bool slice_ieq_cstr(struct slice a, const char *s)
{
	size_t n = strlen(s);
	return a.n == n && strncasecmp(a.p, s, n) == 0;
}

#endif
