/* test_spsc.c - the SPSC ring: edges on one thread, then millions of records between two
 * real threads that must arrive whole and in order. */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/spsc.h"

/* A record that shows corruption: seq plus a value derived from it, and an odd size so
 * copies across the end of the slot array are not whole words. */
struct rec {
	uint64_t seq;
	uint64_t check;
	unsigned char pad[13];
};

static uint64_t check_of(uint64_t seq)
{
	return seq * 0x9E3779B97F4A7C15ull ^ 0x5bd1e995;
}

static struct rec rec_make(uint64_t seq)
{
	struct rec r;
	memset(&r, 0, sizeof(r));
	r.seq = seq;
	r.check = check_of(seq);
	memset(r.pad, (int)(seq & 0xff), sizeof(r.pad));
	return r;
}

static void rec_assert(const struct rec *r, uint64_t want_seq)
{
	assert_int_equal(r->seq, want_seq);
	assert_int_equal(r->check, check_of(want_seq));
	for (size_t i = 0; i < sizeof(r->pad); i++)
		assert_int_equal(r->pad[i], want_seq & 0xff);
}

static struct spsc *ring_new(size_t capacity, size_t rec_size)
{
	struct spsc *q = aligned_alloc(SPSC_CACHE_LINE, sizeof(*q));
	assert_non_null(q);
	assert_int_equal(spsc_init(q, capacity, rec_size), 0);
	return q;
}

static void ring_free(struct spsc *q)
{
	spsc_fini(q);
	free(q);
}

static void test_init_rejects(void **state)
{
	struct spsc *q = aligned_alloc(SPSC_CACHE_LINE, sizeof(*q));
	assert_non_null(q);
	assert_int_equal(spsc_init(q, 0, 8), -EINVAL);
	assert_int_equal(spsc_init(q, 1, 8), -EINVAL);
	assert_int_equal(spsc_init(q, 3, 8), -EINVAL);
	assert_int_equal(spsc_init(q, 1000, 8), -EINVAL);
	assert_int_equal(spsc_init(q, 16, 0), -EINVAL);
	assert_int_equal(spsc_init(q, SPSC_CAPACITY_MAX * 2, 8), -EINVAL);
	assert_int_equal(spsc_init(q, 2, 8), 0);
	assert_int_equal(spsc_capacity(q), 2);
	spsc_fini(q);
	free(q);
}

static void test_empty(void **state)
{
	struct spsc *q = ring_new(8, sizeof(struct rec));
	struct rec out[4];
	assert_false(spsc_pop(q, &out[0]));
	assert_int_equal(spsc_pop_n(q, out, 4), 0);
	assert_int_equal(spsc_count(q), 0);
	struct rec r = rec_make(1);
	assert_true(spsc_push(q, &r));
	assert_int_equal(spsc_count(q), 1);
	assert_true(spsc_pop(q, &out[0]));
	rec_assert(&out[0], 1);
	assert_false(spsc_pop(q, &out[0]));
	ring_free(q);
}

static void test_full(void **state)
{
	struct spsc *q = ring_new(16, sizeof(struct rec));
	uint64_t next_in = 0, next_out = 0;
	for (int i = 0; i < 16; i++) {
		struct rec r = rec_make(next_in++);
		assert_true(spsc_push(q, &r));
	}
	struct rec r = rec_make(next_in);
	assert_false(spsc_push(q, &r)); /* full: refused, nothing overwritten */
	assert_int_equal(spsc_count(q), 16);
	assert_int_equal(spsc_fill_bound(q), 16);
	struct rec out;
	assert_true(spsc_pop(q, &out));
	rec_assert(&out, next_out++);
	assert_true(spsc_push(q, &r)); /* one slot freed, one more fits */
	next_in++;
	assert_false(spsc_push(q, &r));
	while (spsc_pop(q, &out))
		rec_assert(&out, next_out++);
	assert_int_equal(next_out, next_in);
	ring_free(q);
}

static void test_push_n_all_or_nothing(void **state)
{
	struct spsc *q = ring_new(8, sizeof(struct rec));
	struct rec in[9], out[9];
	for (uint64_t i = 0; i < 9; i++)
		in[i] = rec_make(i);
	assert_false(spsc_push_n(q, in, 9)); /* more than the capacity */
	assert_true(spsc_push_n(q, in, 5));
	assert_false(spsc_push_n(q, in + 5, 4)); /* 3 free: none of the 4 go in */
	assert_int_equal(spsc_count(q), 5);
	assert_true(spsc_push_n(q, in + 5, 3));
	assert_false(spsc_push_n(q, in + 8, 1));
	assert_int_equal(spsc_pop_n(q, out, 9), 8);
	for (uint64_t i = 0; i < 8; i++)
		rec_assert(&out[i], i);
	assert_true(spsc_push_n(q, in, 0)); /* an empty unit is fine */
	assert_int_equal(spsc_count(q), 0);
	ring_free(q);
}

/* Batches of every size from 1 to 7 against a capacity of 8 cross the end of the slot
 * array at every offset; the indices go around thousands of times. */
static void test_wraparound(void **state)
{
	struct spsc *q = ring_new(8, sizeof(struct rec));
	struct rec batch[8], out[8];
	uint64_t next_in = 0, next_out = 0;
	for (int round = 0; round < 5000; round++) {
		size_t n = 1 + (size_t)round % 7;
		for (size_t i = 0; i < n; i++)
			batch[i] = rec_make(next_in + i);
		assert_true(spsc_push_n(q, batch, n));
		next_in += n;
		size_t want = 1 + (size_t)(round * 3) % 8;
		size_t got = spsc_pop_n(q, out, want);
		assert_true(got <= want);
		assert_true(got > 0);
		for (size_t i = 0; i < got; i++)
			rec_assert(&out[i], next_out++);
		size_t next_n = 1 + (size_t)(round + 1) % 7;
		while (spsc_count(q) > 8 - next_n) { /* room for the next batch, in odd bites */
			got = spsc_pop_n(q, out, 1 + (size_t)round % 3);
			for (size_t i = 0; i < got; i++)
				rec_assert(&out[i], next_out++);
		}
	}
	size_t got;
	while ((got = spsc_pop_n(q, out, 3)) > 0)
		for (size_t i = 0; i < got; i++)
			rec_assert(&out[i], next_out++);
	assert_int_equal(next_out, next_in);
	assert_true(next_in > 8 * 1000);
	ring_free(q);
}

static void test_pointer_ring(void **state)
{
	struct spsc *q = ring_new(4, sizeof(void *));
	int a = 1, b = 2;
	void *p = &a;
	assert_true(spsc_push(q, &p));
	p = &b;
	assert_true(spsc_push(q, &p));
	void *got[4];
	assert_int_equal(spsc_pop_n(q, got, 4), 2);
	assert_ptr_equal(got[0], &a);
	assert_ptr_equal(got[1], &b);
	ring_free(q);
}

/* Two threads: the producer pushes single records and units of varying size, spinning
 * when full; the consumer takes single records and batches and checks every one. */
struct threaded {
	struct spsc *q;
	uint64_t records;
	uint64_t full_spins;
	uint64_t empty_spins;
	uint64_t received;
};

static void *producer_main(void *arg)
{
	struct threaded *t = arg;
	struct rec unit[5];
	uint64_t next = 0;
	while (next < t->records) {
		size_t n = 1 + (size_t)(next % 5);
		if (n > t->records - next)
			n = (size_t)(t->records - next);
		for (size_t i = 0; i < n; i++)
			unit[i] = rec_make(next + i);
		while (!spsc_push_n(t->q, unit, n)) {
			if (++t->full_spins % 256 == 0)
				sched_yield();
		}
		next += n;
	}
	return NULL;
}

static void *consumer_main(void *arg)
{
	struct threaded *t = arg;
	struct rec batch[37];
	uint64_t next = 0;
	while (next < t->records) {
		size_t got;
		if (next % 3 == 0)
			got = spsc_pop(t->q, &batch[0]) ? 1 : 0;
		else
			got = spsc_pop_n(t->q, batch, 1 + (size_t)(next % 37));
		if (got == 0) {
			if (++t->empty_spins % 256 == 0)
				sched_yield(); /* the producer may share our core (parallel tests) */
			continue;
		}
		for (size_t i = 0; i < got; i++) {
			/* cmocka's asserts are not for threads: stop; the main one checks */
			if (batch[i].seq != next || batch[i].check != check_of(next) ||
			    batch[i].pad[12] != (next & 0xff))
				return NULL;
			next++;
		}
	}
	t->received = next;
	return NULL;
}

static void run_threaded(size_t capacity, uint64_t records)
{
	struct threaded t = { .q = ring_new(capacity, sizeof(struct rec)), .records = records };
	pthread_t prod, cons;
	assert_int_equal(pthread_create(&cons, NULL, consumer_main, &t), 0);
	assert_int_equal(pthread_create(&prod, NULL, producer_main, &t), 0);
	pthread_join(prod, NULL);
	pthread_join(cons, NULL);
	assert_int_equal(t.received, records);
	assert_int_equal(spsc_count(t.q), 0);
	ring_free(t.q);
}

static void test_two_threads_small_ring(void **state)
{
	run_threaded(8, 2000000); /* mostly full or empty: the edges, under contention */
}

static void test_two_threads_large_ring(void **state)
{
	run_threaded(4096, 10000000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_init_rejects),
		cmocka_unit_test(test_empty),
		cmocka_unit_test(test_full),
		cmocka_unit_test(test_push_n_all_or_nothing),
		cmocka_unit_test(test_wraparound),
		cmocka_unit_test(test_pointer_ring),
		cmocka_unit_test(test_two_threads_small_ring),
		cmocka_unit_test(test_two_threads_large_ring),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
