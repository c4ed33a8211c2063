/* spsc.h - a bounded lock-free ring between exactly one producer thread and exactly one
 * consumer thread, carrying fixed-size records by copy.
 *
 * Indices run free (64-bit, they never wrap in practice) and the slot is index & mask, so
 * the capacity is a power of two and "full" is tail - head == capacity, no slot wasted.
 * Each side writes only its own cache line: the producer tail, the consumer head. Each side
 * keeps a private copy of the other side's index and reloads it only when the copy says
 * the ring is full (producer) or empty (consumer), so in steady state a push or a pop does
 * not touch the other side's line at all.
 *
 * Ordering: the producer writes the slots, then publishes tail with a release store; the
 * consumer loads tail with acquire before it reads the slots, then publishes head with
 * release; the producer loads head with acquire before it overwrites freed slots.
 *
 * A struct spsc must sit at a 64-byte aligned address (aligned_alloc, or a static or
 * stack object): its members are aligned to cache lines.
 */
#ifndef PENSTOCK_SPSC_H
#define PENSTOCK_SPSC_H

#include <errno.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SPSC_CACHE_LINE 64
#define SPSC_CAPACITY_MAX ((size_t)1 << 30)

struct spsc {
	/* The producer's line. head_seen: its last view of head (head_seen <= head). */
	alignas(SPSC_CACHE_LINE) _Atomic uint64_t tail;
	uint64_t head_seen;
	/* The consumer's line. tail_seen: its last view of tail (tail_seen <= tail). */
	alignas(SPSC_CACHE_LINE) _Atomic uint64_t head;
	uint64_t tail_seen;
	/* Read-only after spsc_init: shared by both sides without ping-pong. */
	alignas(SPSC_CACHE_LINE) uint64_t mask;
	size_t rec_size;
	unsigned char *slots;
};

/* capacity: records, a power of two in [2, SPSC_CAPACITY_MAX]; rec_size: bytes per record.
 * 0, -EINVAL or -ENOMEM. Not thread-safe: set up before the threads start. */
static inline int spsc_init(struct spsc *q, size_t capacity, size_t rec_size)
{
	if (capacity < 2 || capacity > SPSC_CAPACITY_MAX || (capacity & (capacity - 1)))
		return -EINVAL;
	if (rec_size == 0 || rec_size > SIZE_MAX / capacity - SPSC_CACHE_LINE)
		return -EINVAL;
	size_t bytes = capacity * rec_size;
	bytes = (bytes + SPSC_CACHE_LINE - 1) & ~(size_t)(SPSC_CACHE_LINE - 1);
	unsigned char *slots = aligned_alloc(SPSC_CACHE_LINE, bytes);
	if (!slots)
		return -ENOMEM;
	memset(q, 0, sizeof(*q));
	atomic_init(&q->tail, 0);
	atomic_init(&q->head, 0);
	q->mask = capacity - 1;
	q->rec_size = rec_size;
	q->slots = slots;
	return 0;
}

static inline void spsc_fini(struct spsc *q)
{
	free(q->slots);
	q->slots = NULL;
}

static inline size_t spsc_capacity(const struct spsc *q)
{
	return (size_t)q->mask + 1;
}

/* Copy n records between a linear buffer and the ring starting at index idx, across the
 * end of the slot array when needed. */
static inline void spsc__copy_in(struct spsc *q, uint64_t idx, const void *src, size_t n)
{
	size_t at = (size_t)(idx & q->mask), cap = spsc_capacity(q);
	size_t first = n < cap - at ? n : cap - at;
	memcpy(q->slots + at * q->rec_size, src, first * q->rec_size);
	if (n > first)
		memcpy(q->slots, (const unsigned char *)src + first * q->rec_size,
		       (n - first) * q->rec_size);
}

static inline void spsc__copy_out(const struct spsc *q, uint64_t idx, void *dst, size_t n)
{
	size_t at = (size_t)(idx & q->mask), cap = spsc_capacity(q);
	size_t first = n < cap - at ? n : cap - at;
	memcpy(dst, q->slots + at * q->rec_size, first * q->rec_size);
	if (n > first)
		memcpy((unsigned char *)dst + first * q->rec_size, q->slots,
		       (n - first) * q->rec_size);
}

/* Producer only. Queue n records (n * rec_size bytes at recs), all or none: false, and
 * nothing queued, when fewer than n slots are free. The consumer sees the n records
 * appear together (one release store). What to do on false is the caller's choice:
 * push back on its own source, or drop and count. */
static inline bool spsc_push_n(struct spsc *q, const void *recs, size_t n)
{
	uint64_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
	if (n > spsc_capacity(q))
		return false;
	if (tail - q->head_seen > spsc_capacity(q) - n) {
		q->head_seen = atomic_load_explicit(&q->head, memory_order_acquire);
		if (tail - q->head_seen > spsc_capacity(q) - n)
			return false;
	}
	spsc__copy_in(q, tail, recs, n);
	atomic_store_explicit(&q->tail, tail + n, memory_order_release);
	return true;
}

static inline bool spsc_push(struct spsc *q, const void *rec)
{
	return spsc_push_n(q, rec, 1);
}

/* Consumer only. Take up to max records into recs, oldest first; the number taken. */
static inline size_t spsc_pop_n(struct spsc *q, void *recs, size_t max)
{
	uint64_t head = atomic_load_explicit(&q->head, memory_order_relaxed);
	if (q->tail_seen - head < max)
		q->tail_seen = atomic_load_explicit(&q->tail, memory_order_acquire);
	uint64_t avail = q->tail_seen - head;
	size_t n = avail < max ? (size_t)avail : max;
	if (n == 0)
		return 0;
	spsc__copy_out(q, head, recs, n);
	atomic_store_explicit(&q->head, head + n, memory_order_release);
	return n;
}

static inline bool spsc_pop(struct spsc *q, void *rec)
{
	return spsc_pop_n(q, rec, 1) == 1;
}

/* Producer only, no shared access: an upper bound on the records queued (exact as of the
 * producer's last refresh of head). Used to decide when the consumer needs a nudge. */
static inline size_t spsc_fill_bound(const struct spsc *q)
{
	return (size_t)(atomic_load_explicit(&q->tail, memory_order_relaxed) - q->head_seen);
}

/* Producer only: the records queued now, refreshing the producer's view of head (one
 * read of the consumer's line). */
static inline size_t spsc_fill_refresh(struct spsc *q)
{
	q->head_seen = atomic_load_explicit(&q->head, memory_order_acquire);
	return (size_t)(atomic_load_explicit(&q->tail, memory_order_relaxed) - q->head_seen);
}

/* Any thread: the records queued at some instant during the call (a snapshot; exact only
 * when neither side is moving). Reads both shared lines: not for a hot loop. */
static inline size_t spsc_count(struct spsc *q)
{
	uint64_t head = atomic_load_explicit(&q->head, memory_order_acquire);
	uint64_t tail = atomic_load_explicit(&q->tail, memory_order_acquire);
	return tail >= head ? (size_t)(tail - head) : 0;
}

#endif
