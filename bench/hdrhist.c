/* hdrhist: a log-linear latency histogram (HDR style) with fixed memory and ~0.4% precision. */
#include "hdrhist.h"

#include <assert.h>
#include <string.h>

_Static_assert(HDRHIST_SUB_BUCKETS == 128, "the bucket arithmetic below assumes 7 sub-bucket bits");

unsigned hdrhist_bucket_of(uint64_t value)
{
	if (value > HDRHIST_MAX_VALUE)
		value = HDRHIST_MAX_VALUE;
	if (value < 2 * HDRHIST_SUB_BUCKETS)
		return (unsigned)value;

	unsigned msb = 63u - (unsigned)__builtin_clzll(value);
	unsigned shift = msb - 7;	/* keeps value >> shift in [128, 255] */
	unsigned bucket = shift * HDRHIST_SUB_BUCKETS + (unsigned)(value >> shift);

	assert(shift >= 1 && msb <= HDRHIST_MAX_MSB);
	assert(bucket < HDRHIST_BUCKETS);
	return bucket;
}

uint64_t hdrhist_bucket_low(unsigned bucket)
{
	assert(bucket < HDRHIST_BUCKETS);
	if (bucket < 2 * HDRHIST_SUB_BUCKETS)
		return bucket;
	unsigned shift = bucket / HDRHIST_SUB_BUCKETS - 1;
	uint64_t mantissa = bucket - shift * HDRHIST_SUB_BUCKETS;

	assert(mantissa >= HDRHIST_SUB_BUCKETS && mantissa < 2 * HDRHIST_SUB_BUCKETS);
	return mantissa << shift;
}

uint64_t hdrhist_bucket_high(unsigned bucket)
{
	if (bucket < 2 * HDRHIST_SUB_BUCKETS)
		return bucket;
	unsigned shift = bucket / HDRHIST_SUB_BUCKETS - 1;
	return hdrhist_bucket_low(bucket) + (UINT64_C(1) << shift) - 1;
}

void hdrhist_init(struct hdrhist *h)
{
	memset(h, 0, sizeof(*h));
	h->hh_min = UINT64_MAX;
}

void hdrhist_record_n(struct hdrhist *h, uint64_t value, uint64_t n)
{
	if (n == 0)
		return;
	if (value > HDRHIST_MAX_VALUE)
		value = HDRHIST_MAX_VALUE;
	h->hh_buckets[hdrhist_bucket_of(value)] += n;
	h->hh_count += n;
	h->hh_sum += (double)value * (double)n;
	if (value < h->hh_min)
		h->hh_min = value;
	if (value > h->hh_max)
		h->hh_max = value;
}

void hdrhist_record(struct hdrhist *h, uint64_t value)
{
	hdrhist_record_n(h, value, 1);
}

void hdrhist_merge(struct hdrhist *dst, const struct hdrhist *src)
{
	assert(dst != src);
	for (unsigned i = 0; i < HDRHIST_BUCKETS; i++)
		dst->hh_buckets[i] += src->hh_buckets[i];
	dst->hh_count += src->hh_count;
	dst->hh_sum += src->hh_sum;
	if (src->hh_min < dst->hh_min)
		dst->hh_min = src->hh_min;
	if (src->hh_max > dst->hh_max)
		dst->hh_max = src->hh_max;
}

uint64_t hdrhist_percentile(const struct hdrhist *h, double pct)
{
	if (h->hh_count == 0)
		return 0;
	if (pct >= 100.0)
		return h->hh_max;

	/*
	 * Rank of the wanted value, 1-based: ceil(pct/100 * count), at least 1. The tolerance
	 * keeps 99.9% of 10000 at 9990 although 99.9 has no exact binary form.
	 */
	double exact = pct / 100.0 * (double)h->hh_count;
	uint64_t rank = (uint64_t)exact;
	if (exact - (double)rank > 1e-6)
		rank++;
	if (rank == 0)
		rank = 1;

	uint64_t seen = 0;
	for (unsigned i = 0; i < HDRHIST_BUCKETS; i++) {
		seen += h->hh_buckets[i];
		if (seen < rank)
			continue;
		uint64_t low = hdrhist_bucket_low(i), high = hdrhist_bucket_high(i);
		uint64_t mid = low + (high - low) / 2;
		if (mid < h->hh_min)
			mid = h->hh_min;
		if (mid > h->hh_max)
			mid = h->hh_max;
		return mid;
	}
	assert(!"bucket counts add up to less than hh_count");
	return h->hh_max;
}

double hdrhist_mean(const struct hdrhist *h)
{
	return h->hh_count ? h->hh_sum / (double)h->hh_count : 0.0;
}
