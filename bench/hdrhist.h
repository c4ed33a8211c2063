/* hdrhist: a log-linear latency histogram (HDR style) with fixed memory and ~0.4% precision. */
#ifndef PENSTOCK_BENCH_HDRHIST_H
#define PENSTOCK_BENCH_HDRHIST_H

#include <stdint.h>

/*
 * Values below 256 have a bucket each; above that every power of two is split into 128
 * sub-buckets, so a bucket is never wider than 1/128 of its value (0.78%; reporting the
 * midpoint halves that). Values are unitless; the load generator records nanoseconds,
 * so the top of the range, 2^37 - 1, is about 137 s. Larger values are clamped to it.
 */
#define HDRHIST_SUB_BUCKETS	128
#define HDRHIST_MAX_MSB		36
#define HDRHIST_MAX_VALUE	((UINT64_C(1) << (HDRHIST_MAX_MSB + 1)) - 1)
#define HDRHIST_BUCKETS \
	((HDRHIST_MAX_MSB - 7) * HDRHIST_SUB_BUCKETS + 2 * HDRHIST_SUB_BUCKETS)

struct hdrhist {
	uint64_t hh_count;
	uint64_t hh_min;	/* exact, UINT64_MAX while empty */
	uint64_t hh_max;	/* exact (after clamping) */
	double hh_sum;		/* for the mean; a double never overflows */
	uint64_t hh_buckets[HDRHIST_BUCKETS];
};

void hdrhist_init(struct hdrhist *h);
void hdrhist_record(struct hdrhist *h, uint64_t value);
/* Record the same value n times (n may be 0). */
void hdrhist_record_n(struct hdrhist *h, uint64_t value, uint64_t n);
void hdrhist_merge(struct hdrhist *dst, const struct hdrhist *src);

/*
 * The value at percentile pct (0 < pct <= 100): the midpoint of the bucket holding the
 * ceil(pct/100 * count)-th smallest value, clamped to [min, max]. 0 when empty.
 */
uint64_t hdrhist_percentile(const struct hdrhist *h, double pct);
double hdrhist_mean(const struct hdrhist *h);

/* Bucket arithmetic, public so that tests can check the precision bound. */
unsigned hdrhist_bucket_of(uint64_t value);
uint64_t hdrhist_bucket_low(unsigned bucket);
uint64_t hdrhist_bucket_high(unsigned bucket);

#endif
