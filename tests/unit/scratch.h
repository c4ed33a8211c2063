/* scratch.h - a temporary directory per test for the unit tests that put LMDB on disk:
 * root is made at once, root/data is left for the store to create. Include after
 * <cmocka.h>. */
#ifndef PENSTOCK_TEST_SCRATCH_H
#define PENSTOCK_TEST_SCRATCH_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>

struct scratch {
	char root[64];
	char dir[96]; /* root/data: does not exist until the store makes it */
};

static inline void scratch_make(struct scratch *t)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(t->root, sizeof(t->root), "%s/penstock-test-XXXXXX", tmp ? tmp : "/tmp");
	assert_non_null(mkdtemp(t->root));
	snprintf(t->dir, sizeof(t->dir), "%s/data", t->root);
}

static inline int scratch_rm_one(const char *path, const struct stat *st, int flag,
				 struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	return remove(path);
}

static inline void scratch_remove(struct scratch *t)
{
	nftw(t->root, scratch_rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

#endif
