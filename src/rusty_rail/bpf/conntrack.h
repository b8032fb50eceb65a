/* SPDX-License-Identifier: Apache-2.0 */
/* The connection table (docs/packet-path.md section 5): which backend slot a flow went
 * to. A set-associative array, not a kernel LRU hash: docs/dataplane.md has the numbers. */
#ifndef RUSTY_RAIL_CONNTRACK_H
#define RUSTY_RAIL_CONNTRACK_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "balancer_maps.h"
#include "balancer_types.h"

#define CONNTRACK_CHECK_MULTIPLIER 0x9E3779B97F4A7C15ULL

/* UP and DRAIN forward; DRAIN only keeps its flows because no table names it. */
static __always_inline int backend_forwards(const struct backend *backend)
{
	return backend->state == BACKEND_UP || backend->state == BACKEND_DRAIN;
}

static __always_inline struct backend *backend_get(__u32 backend_index)
{
	return bpf_map_lookup_elem(&backends, &backend_index);
}

/* The digest an entry carries: ways are written field by field, by CPUs and by userspace
 * at once, so a reader may meet one flow's key beside another's target. Such an entry
 * fails this check and is treated as stale, then rewritten. Never 0 (0 marks empty). */
static __always_inline __u32 conntrack_check(__u64 flow_mix, __u64 target)
{
	return (__u32)(((flow_mix ^ target) * CONNTRACK_CHECK_MULTIPLIER) >> 32) | 1;
}

static __always_inline __u64 target_word(const struct conntrack_entry *target)
{
	return *(const __u64 *)target;
}

/* The set a flow belongs in: the high half of its hash, masked to the table's size. */
static __always_inline struct flow_set *conntrack_set(__u64 flow_mix,
						      const struct settings *settings)
{
	__u32 index = (flow_mix >> 32) & settings->conntrack_mask;

	return bpf_map_lookup_elem(&conntrack, &index);
}

static __always_inline int flow_equal(const struct flow_key *a, const struct flow_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return x[0] == y[0] && x[1] == y[1];
}

/* The way that holds `flow`, or NULL: a hit, valid or not. */
static __always_inline struct flow_entry *conntrack_find(struct flow_set *set,
							 const struct flow_key *flow)
{
#pragma unroll
	for (int i = 0; i < CONNTRACK_WAYS; i++) {
		struct flow_entry *entry = &set->way[i];

		if (flow_equal(&entry->flow, flow) && entry->check)
			return entry;
	}
	return NULL;
}

/* The backend of a valid hit: the entry is whole (its check holds), its slot forwards and
 * still belongs to the backend the flow was recorded with. NULL for a stale hit. A hit
 * marks the entry recently used (written only when the bit changes). */
static __always_inline struct backend *way_backend(__u32 check, struct conntrack_entry target,
						   __u32 *recent, __u64 flow_mix,
						   __u32 *backend_index)
{
	struct backend *backend;

	if (check != conntrack_check(flow_mix, target_word(&target)))
		return NULL;
	*backend_index = target.backend_index;
	backend = backend_get(target.backend_index);
	if (!backend || !backend_forwards(backend) || backend->generation != target.generation)
		return NULL;
	if (!*recent)
		*recent = 1;
	return backend;
}

static __always_inline struct backend *conntrack_backend(struct flow_entry *entry, __u64 flow_mix,
							 __u32 *backend_index)
{
	return way_backend(entry->check, entry->target, &entry->recent, flow_mix, backend_index);
}

/* The two steps that write a way are the same for both tables (flow_set of flow_key, and
 * flow6_set of flow6_key): CONNTRACK_WRITERS makes them for one table, as PREFIX_victim and
 * PREFIX_record.
 *
 * PREFIX_victim: the way a new flow takes: an empty one; else one not used since it was
 * recorded or since the last sweep, searched from a way the flow's hash names (so that no way
 * is always the first to go); else, every way being in use, the sweep: clear every bit and
 * take the hash's way. A not-recently-used policy, the CLOCK family's cheapest member.
 *
 * PREFIX_record: records the flow's backend: in place over a stale entry, else in a victim
 * way. The check goes last, so until it lands readers see a mismatch, never a wrong target. */
#define CONNTRACK_WRITERS(PREFIX, SET, ENTRY, KEY)                                             \
	static __always_inline ENTRY *PREFIX##_victim(SET *set, __u64 flow_mix)                \
	{                                                                                      \
		__u32 start = flow_mix & (CONNTRACK_WAYS - 1), i;                              \
                                                                                               \
		_Pragma("unroll") for (i = 0; i < CONNTRACK_WAYS; i++)                         \
			if (!set->way[i].check)                                                \
				return &set->way[i];                                           \
		_Pragma("unroll") for (i = 0; i < CONNTRACK_WAYS; i++)                         \
		{                                                                              \
			ENTRY *entry = &set->way[(start + i) & (CONNTRACK_WAYS - 1)];          \
                                                                                               \
			if (!entry->recent)                                                    \
				return entry;                                                  \
		}                                                                              \
		_Pragma("unroll") for (i = 0; i < CONNTRACK_WAYS; i++)                         \
			set->way[i].recent = 0;                                                \
		return &set->way[start];                                                       \
	}                                                                                      \
                                                                                               \
	static __always_inline void PREFIX##_record(SET *set, ENTRY *stale, const KEY *flow,   \
						    __u64 flow_mix, __u32 backend_index,       \
						    __u32 generation)                          \
	{                                                                                      \
		struct conntrack_entry target = {                                              \
			.backend_index = backend_index,                                        \
			.generation = generation,                                              \
		};                                                                             \
		ENTRY *entry = stale;                                                          \
                                                                                               \
		if (!entry) {                                                                  \
			entry = PREFIX##_victim(set, flow_mix);                                \
			entry->check = 0;                                                      \
			entry->flow = *flow;                                                   \
			entry->recent = 0;                                                     \
		}                                                                              \
		*(__u64 *)&entry->target = target_word(&target);                               \
		entry->check = conntrack_check(flow_mix, target_word(&target));                \
	}

CONNTRACK_WRITERS(conntrack, struct flow_set, struct flow_entry, struct flow_key)

/* The IPv6 flows' table, conntrack_v6: the same rules over flow6_set, the same mask. */

static __always_inline struct flow6_set *conntrack6_set(__u64 flow_mix,
							const struct settings *settings)
{
	__u32 index = (flow_mix >> 32) & settings->conntrack_mask;

	return bpf_map_lookup_elem(&conntrack_v6, &index);
}

static __always_inline int flow6_equal(const struct flow6_key *a, const struct flow6_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] && x[4] == y[4];
}

static __always_inline struct flow6_entry *conntrack6_find(struct flow6_set *set,
							   const struct flow6_key *flow)
{
#pragma unroll
	for (int i = 0; i < CONNTRACK_WAYS; i++) {
		struct flow6_entry *entry = &set->way[i];

		if (flow6_equal(&entry->flow, flow) && entry->check)
			return entry;
	}
	return NULL;
}

static __always_inline struct backend *conntrack6_backend(struct flow6_entry *entry,
							  __u64 flow_mix, __u32 *backend_index)
{
	return way_backend(entry->check, entry->target, &entry->recent, flow_mix, backend_index);
}

CONNTRACK_WRITERS(conntrack6, struct flow6_set, struct flow6_entry, struct flow6_key)

#endif /* RUSTY_RAIL_CONNTRACK_H */
