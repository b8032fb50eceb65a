/* SPDX-License-Identifier: Apache-2.0 */
/* Session affinity (docs/flow-hash.md, "Session affinity"; rusty_rail/model/affinity.py): the
 * hash a VIP's Maglev table is indexed with, over the flow fields its mode names, the others
 * taken as zero. Only a new flow's pick reads it; the connection table and the outer UDP
 * source port keep the 5-tuple hash. And the per-VIP flow counters (vip_flows). */
#ifndef RUSTY_RAIL_AFFINITY_H
#define RUSTY_RAIL_AFFINITY_H

#include "balancer_maps.h"
#include "balancer_types.h"
#include "lib/flowhash.h"
#include "lib/stats.h"

/* The VIP's mode; an index without a value (cannot happen: an array) is 5-tuple. */
static __always_inline __u32 vip_affinity_mode(__u32 vip_index)
{
	struct vip_affinity *affinity = bpf_map_lookup_elem(&vip_affinity, &vip_index);

	return affinity ? affinity->mode : AFFINITY_FIVE_TUPLE;
}

/* The ports word of a flow key (its 4 bytes at sport_be loaded as one word) without the
 * source port: the destination port's two bytes stay where they sit. */
static __always_inline __u32 ports_without_source(__u32 ports)
{
	__u16 halves[2];

	__builtin_memcpy(halves, &ports, sizeof(halves));
	halves[0] = 0; /* the first two bytes on the wire: the source port */
	__builtin_memcpy(&ports, halves, sizeof(ports));
	return ports;
}

/* The Maglev pick's hash of an IPv4 flow: flow_mix is the 5-tuple's mix64 (flow_key_mix). */
static __always_inline __u32 affinity_hash(const struct flow_key *flow, __u64 flow_mix,
					   __u32 mode, __u64 seed)
{
	const __u32 *words = (const __u32 *)flow;

	switch (mode) {
	case AFFINITY_SOURCE_IP:
		return flow_hash32(flow_mix_ipv4(seed, flow->src_be, 0, 0, 0));
	case AFFINITY_SOURCE_IP_PROTO:
		return flow_hash32(flow_mix_ipv4(seed, flow->src_be, 0, 0, flow->proto));
	case AFFINITY_NO_SOURCE_PORT:
		return flow_hash32(flow_mix_ipv4(seed, flow->src_be, flow->dst_be,
						 ports_without_source(words[2]), flow->proto));
	default:
		return flow_hash32(flow_mix);
	}
}

/* The same for an IPv6 flow (flow6_key_mix). */
static __always_inline __u32 affinity_hash6(const struct flow6_key *flow, __u64 flow_mix,
					    __u32 mode, __u64 seed)
{
	const __u32 *words = (const __u32 *)flow;
	const __be32 zero[4] = {};

	switch (mode) {
	case AFFINITY_SOURCE_IP:
		return flow_hash32(flow_mix_ipv6(seed, flow->src_be, zero, 0, 0));
	case AFFINITY_SOURCE_IP_PROTO:
		return flow_hash32(flow_mix_ipv6(seed, flow->src_be, zero, 0, flow->proto));
	case AFFINITY_NO_SOURCE_PORT:
		return flow_hash32(flow_mix_ipv6(seed, flow->src_be, flow->dst_be,
						 ports_without_source(words[8]), flow->proto));
	default:
		return flow_hash32(flow_mix);
	}
}

/* Counts a packet of `len` bytes for the VIP under `what` (enum vip_flow). */
static __always_inline void count_vip_flow(__u32 vip_index, __u32 what, __u32 len)
{
	count_stat(&vip_flows, vip_index * VIP_FLOW_COUNT + what, len);
}

#endif /* RUSTY_RAIL_AFFINITY_H */
