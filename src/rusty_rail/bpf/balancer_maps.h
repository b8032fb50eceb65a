/* SPDX-License-Identifier: Apache-2.0 */
/* The balancer's maps: what the control plane writes (rusty_rail/dataplane/maps.py) and
 * the program reads. docs/dataplane.md gives the layout and the memory each one costs. */
#ifndef RUSTY_RAIL_BALANCER_MAPS_H
#define RUSTY_RAIL_BALANCER_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "balancer_types.h"
#include "lib/stats.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_VIPS * 4);
	__type(key, struct vip_key);
	__type(value, struct vip_value);
} vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_VIPS * 4);
	__type(key, struct vip6_key);
	__type(value, struct vip_value);
} vips_v6 SEC(".maps");

/* A Maglev table: element 0 holds the table size M, elements 1..M the backend indices.
 * BPF_F_INNER_MAP lets tables of different sizes share the outer map; userspace creates
 * each one at run time, fills it through mmap (BPF_F_MMAPABLE) and swaps it in with a
 * single update of `tables`. Inner maps must carry exactly these flags. */
struct maglev_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, MAX_VIPS);
	__type(key, __u32);
	__array(values, struct maglev_table);
} tables SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend);
} backends SEC(".maps");

/* The VNI of each backend slot whose egress is VXLAN or GENEVE (struct backend_tunnel). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend_tunnel);
} backend_tunnels SEC(".maps");

/* The egress interface's MTU of each backend slot (struct backend_mtu, section 8c). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend_mtu);
} backend_mtu SEC(".maps");

/* Section 8c: the too-big packets of each VIP by reason (index vip_index * TOO_BIG_COUNT +
 * reason), and each VIP's token bucket for the ICMP errors. Not pinned: a new program starts
 * them afresh. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_VIPS * TOO_BIG_COUNT);
	__type(key, __u32);
	__type(value, struct counter);
} vip_too_big SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_VIPS);
	__type(key, __u32);
	__type(value, struct too_big_bucket);
} too_big_buckets SEC(".maps");

/* The connection table: a set-associative array of flow_set, indexed by the flow hash
 * (docs/dataplane.md says why not an LRU hash). The loader sizes it (a power of two) and
 * writes the matching mask into the settings; userspace reads it through mmap. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, DEFAULT_CONNTRACK_ENTRIES / CONNTRACK_WAYS);
	__type(key, __u32);
	__type(value, struct flow_set);
} conntrack SEC(".maps");

/* The IPv6 flows' connection table: the same design with 56-byte ways. The loader gives it
 * as many sets as `conntrack`, so one mask (settings.conntrack_mask) serves both. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, DEFAULT_CONNTRACK_ENTRIES / CONNTRACK_WAYS);
	__type(key, __u32);
	__type(value, struct flow6_set);
} conntrack_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_COUNT);
	__type(key, __u32);
	__type(value, struct counter);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_VIPS);
	__type(key, __u32);
	__type(value, struct counter);
} vip_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct counter);
} backend_stats SEC(".maps");

/* Per VIP: its new flows and its drops by reason (enum vip_flow), pinned like the packet
 * counters; the control plane zeroes a VIP index's entries when it gives the index to a VIP. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_VIPS * VIP_FLOW_COUNT);
	__type(key, __u32);
	__type(value, struct counter);
} vip_flows SEC(".maps");

/* Per VIP: the flow fields its Maglev pick hashes (struct vip_affinity; affinity.h). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_VIPS);
	__type(key, __u32);
	__type(value, struct vip_affinity);
} vip_affinity SEC(".maps");

/* Egress interfaces for XDP_REDIRECT, keyed by ifindex. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, MAX_TX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} tx_ports SEC(".maps");

/* ICMP learning (icmp.h): the backend addresses watched, what was made of each ICMP
 * destination unreachable, and the reports for the control plane. The ring holds a report
 * for every watched backend at once (36 bytes + an 8-byte header each; the backends of both
 * families are at most MAX_BACKENDS), so with reports disarming their backend it cannot
 * overflow unless the control plane stops reading. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __be32);
	__type(value, struct icmp_watch);
} icmp_watch SEC(".maps");

/* The IPv6 backends watched (section 9b), keyed by the 16-byte address. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, struct in6_addr);
	__type(value, struct icmp_watch);
} icmp_watch_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ICMP_STAT_COUNT);
	__type(key, __u32);
	__type(value, struct counter);
} icmp_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, ICMP_REPORT_RING_BYTES);
} icmp_reports SEC(".maps");

static __always_inline const struct settings *settings_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&settings, &zero);
}

#endif /* RUSTY_RAIL_BALANCER_MAPS_H */
