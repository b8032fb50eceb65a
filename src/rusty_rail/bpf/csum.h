/* SPDX-License-Identifier: Apache-2.0 */
/* Incremental Internet checksum update, RFC 1624 equation 3: HC' = ~(~HC + ~m + m').
 * One's complement sums do not care about byte order, so words are used as loaded. */
#ifndef RUSTY_RAIL_CSUM_H
#define RUSTY_RAIL_CSUM_H

#include <linux/types.h>

/* Adds the change of one 32-bit field (two 16-bit words) to a running sum. */
static __always_inline __u32 csum_add_change32(__u32 sum, __u32 old, __u32 new)
{
	old = ~old;
	return sum + (old & 0xFFFF) + (old >> 16) + (new & 0xFFFF) + (new >> 16);
}

/* Adds the change of one 16-bit word to a running sum. */
static __always_inline __u32 csum_add_change16(__u32 sum, __u16 old, __u16 new)
{
	return sum + (__u16)~old + new;
}

/* Folds the carries back in; two rounds suffice for a sum of a dozen 16-bit words. */
static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	return (__u16)sum;
}

#endif /* RUSTY_RAIL_CSUM_H */
