/* buf.h - a growable byte buffer with a bound on its size. */
#ifndef PENSTOCK_BUF_H
#define PENSTOCK_BUF_H

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct buf {
	char *p;
	size_t len, cap;
};

/* Room for more bytes after len, doubling from 4 KiB but never past max bytes in all.
 * False (buffer unchanged) if that would pass max or memory ran out. */
static inline bool buf_reserve(struct buf *b, size_t more, size_t max)
{
	if (more > max || b->len > max - more)
		return false;
	if (b->len + more <= b->cap)
		return true;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + more)
		cap *= 2;
	if (cap > max)
		cap = max;
	char *p = realloc(b->p, cap);
	if (!p)
		return false;
	b->p = p;
	b->cap = cap;
	return true;
}

static inline bool buf_append(struct buf *b, const void *p, size_t n, size_t max)
{
	if (!buf_reserve(b, n, max))
		return false;
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
	return true;
}

/* Drop the first n bytes. */
static inline void buf_consume(struct buf *b, size_t n)
{
	memmove(b->p, b->p + n, b->len - n);
	b->len -= n;
}

static inline void buf_free(struct buf *b)
{
	free(b->p);
	*b = (struct buf){ 0 };
}

#endif
