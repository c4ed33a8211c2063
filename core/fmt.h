/* fmt.h - text built by hand where a request pays for it: decimal numbers, and appends
 * into a fixed buffer with snprintf's contract.
 *
 * snprintf parses its format at run time on every call (a few hundred instructions even
 * for "%s\r\n"); the response and upstream heads, the gateway's own headers and the
 * records of every request are built from a handful of strings and numbers, so they
 * append those directly. A struct fmt behaves like one snprintf(p, cap, ...) call: it
 * writes what fits, keeps the text NUL-terminated (when cap > 0) and counts the length the
 * whole text would have had, so a caller checks `f.n < cap` where it checked snprintf's
 * result, and a cut text is the same bytes snprintf would have left.
 */
#ifndef PENSTOCK_FMT_H
#define PENSTOCK_FMT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FMT_U64_MAX 20 /* digits of UINT64_MAX */
#define FMT_I64_MAX 20 /* '-' and the 19 digits of INT64_MIN */

/* v in decimal, no NUL; the length (1..FMT_U64_MAX). */
static inline size_t fmt_u64(char *out, uint64_t v)
{
	char tmp[FMT_U64_MAX];
	size_t i = sizeof(tmp);
	do {
		tmp[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	memcpy(out, tmp + i, sizeof(tmp) - i);
	return sizeof(tmp) - i;
}

/* v in decimal with a '-' when negative, no NUL; the length (1..FMT_I64_MAX). */
static inline size_t fmt_i64(char *out, int64_t v)
{
	if (v >= 0)
		return fmt_u64(out, (uint64_t)v);
	out[0] = '-';
	return 1 + fmt_u64(out + 1, 0 - (uint64_t)v);
}

struct fmt {
	char *p;
	size_t cap; /* bytes at p, the NUL included */
	size_t n;   /* the length of the text so far, cut or not: as snprintf would return */
};

static inline struct fmt fmt_into(char *p, size_t cap)
{
	if (cap)
		p[0] = '\0';
	return (struct fmt){ .p = p, .cap = cap, .n = 0 };
}

/* n bytes of s, as much as fits before the NUL. */
static inline void fmt_mem(struct fmt *f, const void *s, size_t n)
{
	if (f->n + 1 < f->cap) {
		size_t room = f->cap - 1 - f->n, k = n < room ? n : room;
		memcpy(f->p + f->n, s, k);
		f->p[f->n + k] = '\0';
	}
	f->n += n;
}

#define fmt_lit(f, s) fmt_mem((f), (s), sizeof(s) - 1)

/* "%s" */
static inline void fmt_str(struct fmt *f, const char *s) { fmt_mem(f, s, strlen(s)); }

/* "%.*s": at most max bytes of s, and none from its first NUL on. */
static inline void fmt_strn(struct fmt *f, const char *s, size_t max)
{
	fmt_mem(f, s, strnlen(s, max));
}

/* snprintf(out, cap, "%.*s", max, s): a bounded copy, cut to fit and NUL-terminated. */
static inline size_t fmt_copy(char *out, size_t cap, const char *s, size_t max)
{
	struct fmt f = fmt_into(out, cap);
	fmt_strn(&f, s, max);
	return f.n;
}

/* "%" PRIu64, "%u" */
static inline void fmt_dec(struct fmt *f, uint64_t v)
{
	char tmp[FMT_U64_MAX];
	fmt_mem(f, tmp, fmt_u64(tmp, v));
}

/* "%" PRId64, "%d" */
static inline void fmt_sdec(struct fmt *f, int64_t v)
{
	char tmp[FMT_I64_MAX];
	fmt_mem(f, tmp, fmt_i64(tmp, v));
}

#endif
