/* SPDX-License-Identifier: Apache-2.0 */
/* Counters by reason: every program keeps per-CPU arrays (or hashes) of struct counter and
 * counts each packet once, by one packet and its length as received. */
#ifndef RUSTY_RAIL_LIB_STATS_H
#define RUSTY_RAIL_LIB_STATS_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

/* The value of every counter map. Shared with userspace: the balancer's is mirrored as
 * CCounter in rusty_rail/dataplane/structs.py, decap and the test-bed router read the same
 * two words. Per-CPU, so plain additions suffice; userspace sums the CPUs. */
struct counter {
	__u64 packets;
	__u64 bytes;
};

/* Adds one packet of `bytes` to entry `key` of a counter map. A missing entry (a hash whose
 * key userspace did not create) is not counted. */
static __always_inline void count_stat(void *counters, __u32 key, __u64 bytes)
{
	struct counter *counter = bpf_map_lookup_elem(counters, &key);

	if (counter) {
		counter->packets += 1;
		counter->bytes += bytes;
	}
}

/* count_stat, then the verdict: `return count_verdict(...)` ends a packet's journey counted. */
static __always_inline int count_verdict(void *counters, __u32 key, __u64 bytes, int verdict)
{
	count_stat(counters, key, bytes);
	return verdict;
}

#endif /* RUSTY_RAIL_LIB_STATS_H */
