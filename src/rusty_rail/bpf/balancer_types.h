/* SPDX-License-Identifier: Apache-2.0 */
/* The structs and constants the balancer shares with userspace. Each struct here (and
 * struct counter, lib/stats.h) has one ctypes mirror in rusty_rail/dataplane/structs.py, and
 * tests/bpf/test_structs.py checks sizes and offsets against the object's BTF. Fixed-width
 * types, explicit padding; a field in network byte order ends in _be. */
#ifndef RUSTY_RAIL_BALANCER_TYPES_H
#define RUSTY_RAIL_BALANCER_TYPES_H

#include <linux/types.h>

#include "lib/stats.h"

/* Capacities. The VIP and backend indices the control plane hands out stay below these. */
#define MAX_VIPS 1024
#define MAX_BACKENDS 16384
#define DEFAULT_CONNTRACK_ENTRIES (1 << 20)
#define CONNTRACK_WAYS 4
#define MAX_TX_PORTS 64
/* Room for one report per backend slot: 16384 records of 48 bytes fit in 1 MiB. */
#define ICMP_REPORT_RING_BYTES (1 << 20)

/* "No backend" in a table slot, "no default VIP" in the settings (model.state.NONE_INDEX). */
#define NONE_INDEX 0xFFFFFFFFu

/* What to do with a packet the balancer will not forward (model.state.Action). Zeroed
 * settings therefore mean PASS, the safe default before the control plane wrote any. */
enum action {
	ACTION_PASS = 0,
	ACTION_DROP = 1,
};

/* struct backend's family (dataplane/structs.py FAMILY_IPV4, FAMILY_IPV6). */
#define BACKEND_FAMILY_IPV4 4
#define BACKEND_FAMILY_IPV6 6

/* A backend slot's state (model.state.BackendState). */
enum backend_state {
	BACKEND_UNUSED = 0,
	BACKEND_UP = 1,
	BACKEND_DRAIN = 2,
	BACKEND_DOWN = 3,
};

/* Per-reason packet outcomes, the index into the stats array (model.state.Stat). */
enum stat {
	STAT_CT_HIT = 0,
	STAT_CT_MISS = 1,
	STAT_CT_STALE = 2,
	STAT_PASS_NOT_IP = 3,
	STAT_PASS_NOT_GRE = 4,
	STAT_PASS_NOT_LOCAL = 5,
	STAT_PASS_OUTER_FRAGMENT = 6,
	STAT_PASS_OUTER_MALFORMED = 7,
	STAT_PASS_UNSUPPORTED = 8,
	STAT_NO_VIP = 9,
	STAT_GRE_MALFORMED = 10,
	STAT_INNER_MALFORMED = 11,
	STAT_INNER_L4_TRUNCATED = 12,
	STAT_DROP_NO_BACKEND = 13,
	STAT_DROP_NO_NEXTHOP = 14,
	STAT_INNER_EXT_TOO_DEEP = 15,
	STAT_TOO_BIG_ICMP = 16,    /* section 8c: answered with an ICMP error (TX) */
	STAT_TOO_BIG_LIMITED = 17, /* section 8c: the VIP's ICMP rate spent, dropped */
	STAT_TOO_BIG_NO_DF = 18,   /* section 8c: inner IPv4 without DF, dropped */
	STAT_COUNT = 19,
};

/* Why a too-big packet was not sent (section 8c; model.pmtu.TooBig): vip_too_big is indexed
 * vip_index * TOO_BIG_COUNT + reason. */
enum too_big {
	TOO_BIG_ICMP = 0,
	TOO_BIG_LIMITED = 1,
	TOO_BIG_NO_DF = 2,
	TOO_BIG_COUNT = 3,
};

/* The per-VIP flow counters (vip_flows, indexed vip_index * VIP_FLOW_COUNT + this;
 * model.state.VipFlow): new flows (connection-table misses and stale hits the VIP's table
 * decided, forwarded or not) and the drops of packets whose VIP was known. */
enum vip_flow {
	VIP_FLOW_NEW = 0,
	VIP_FLOW_DROP_NO_BACKEND = 1,
	VIP_FLOW_DROP_NO_NEXTHOP = 2,
	VIP_FLOW_COUNT = 3,
};

/* Which flow fields a VIP's Maglev pick hashes (model.state.Affinity); 0, the 5-tuple, is
 * what every VIP did before the field. */
enum affinity {
	AFFINITY_FIVE_TUPLE = 0,
	AFFINITY_SOURCE_IP = 1,
	AFFINITY_SOURCE_IP_PROTO = 2,
	AFFINITY_NO_SOURCE_PORT = 3,
};

/* The value of vip_affinity, indexed by VIP index: enum affinity. */
struct vip_affinity {
	__u32 mode;
};

/* What the balancer made of an ICMP destination unreachable addressed to it
 * (docs/packet-path.md section 9; model.icmp.IcmpStat): the index into icmp_stats. ICMP_STAT_,
 * not ICMP_: <linux/icmp.h> names the codes ICMP_* (ICMP_FRAG_NEEDED is code 4). */
enum icmp_stat {
	ICMP_STAT_REPORTED = 0,
	ICMP_STAT_HELD = 1,
	ICMP_STAT_LOST = 2,
	ICMP_STAT_FRAG_NEEDED = 3,
	ICMP_STAT_UNKNOWN_BACKEND = 4,
	ICMP_STAT_NOT_OUR_GRE = 5,
	ICMP_STAT_MALFORMED = 6,
	ICMP_STAT_PACKET_TOO_BIG = 7,
	ICMP_STAT_COUNT = 8,
};

/* The one entry of the settings array. */
struct settings {
	__be32 lb_ipv4_be;     /* the outer destination this node balances for */
	__u8 lb_ipv6[16];      /* the outer IPv6 destination; all zero: none */
	__u32 default_vip;     /* VIP index for GRE that matches no VIP, or NONE_INDEX */
	__u64 hash_seed;       /* the cluster-wide flow-hash seed */
	__u32 conntrack_mask;  /* conntrack sets - 1; written by the loader, not the state */
	__u8 outer_ttl;        /* TTL of the rewritten outer header */
	__u8 no_vip_action;    /* enum action */
	__u8 malformed_action; /* enum action */
	__u8 ingress_flags;    /* INGRESS_*; 0: GRE ingress only (docs/packet-path.md 2c) */
};

/* struct settings' ingress_flags. Zero means what the settings meant before the field. */
#define INGRESS_ROUTED 0x1 /* plain packets to a VIP are balanced */
#define INGRESS_NO_GRE 0x2 /* GRE to this node is not balanced */

/* Key of the vips hash. proto and port 0: the address-wide VIP. IPv6 VIPs have their own
 * map (vip6_key), so this key stays 8 bytes. */
struct vip_key {
	__be32 addr_be;
	__be16 port_be;
	__u8 proto;
	__u8 pad;
};

/* Key of the vips_v6 hash: an IPv6 VIP, matched by inner IPv6 flows. */
struct vip6_key {
	__be32 addr_be[4];
	__be16 port_be;
	__u8 proto;
	__u8 pad;
};

struct vip_value {
	__u32 vip_index;
};

/* One backend slot, indexed by backend index. The next hop's two MAC addresses sit in
 * Ethernet header order (destination, then source) so the rewrite copies 12 bytes. */
struct backend {
	__be32 addr_be[4];        /* IPv4 in addr_be[0]; IPv6 in all four words */
	__u32 generation;         /* changes when the slot is given to another backend */
	__u32 vip_index;          /* the VIP this slot serves; counted on conntrack hits */
	__u8 state;               /* enum backend_state */
	__u8 family;              /* 4 (IPv4) or 6 (IPv6): the outer header sent to it */
	__u8 nexthop_resolved;    /* 0 until the control plane resolved the next hop */
	__u8 egress;              /* enum egress: how packets leave (section 8b) */
	__u32 nexthop_ifindex;    /* egress interface; 0 = the ingress interface */
	__u8 nexthop_dst_mac[6];
	__u8 nexthop_src_mac[6];
};

/* A backend slot's egress method (model.state.Egress); 0, GRE, is what a slot meant before
 * the field. */
enum egress {
	EGRESS_GRE = 0,
	EGRESS_IPIP = 1,
	EGRESS_VXLAN = 2,
	EGRESS_GENEVE = 3,
	EGRESS_ROUTE = 4,
};

/* The value of backend_tunnels, indexed like backends: the slot's VNI as the second word of
 * its VXLAN or GENEVE header (VNI << 8, network order). A map of its own, so that struct
 * backend, and a pinned backends map, keep their layout. */
struct backend_tunnel {
	__be32 vni_be;
};

/* The value of backend_mtu, indexed like backends: the IP MTU of the slot's egress interface;
 * 0: unknown, not checked (section 8c). A map of its own, like backend_tunnels. */
struct backend_mtu {
	__u32 mtu;
};

/* The value of too_big_buckets (per CPU, indexed by VIP): the VIP's token bucket for ICMP
 * errors about too-big packets (section 8c). All zero: full at first use. */
struct too_big_bucket {
	__u64 stamp_ns; /* when tokens were last added (bpf_ktime_get_ns) */
	__u32 tokens;
	__u32 pad;
};

/* The inner IPv4 flow, as it sits in the packet: the connection table's key. Ports are 0
 * for a 3-tuple flow. IPv6 flows have their own table (flow6_key), so that this one keeps
 * its 16-byte key and two cache lines a set. */
struct flow_key {
	__be32 src_be;
	__be32 dst_be;
	__be16 sport_be;
	__be16 dport_be;
	__u8 proto;
	__u8 pad[3];
};

/* Where a flow goes: written and read as one 8-byte word. */
struct conntrack_entry {
	__u32 backend_index;
	__u32 generation; /* the slot's generation when the flow was recorded */
};

/* One way of a connection-table set (docs/dataplane.md, "Connection table"). */
struct flow_entry {
	struct flow_key flow;
	struct conntrack_entry target;
	__u32 check;  /* 0: empty; else a keyed digest of (flow hash, target), see conntrack.h */
	__u32 recent; /* CLOCK bit: set by a hit, cleared when the set needs a victim */
};

/* A set of the connection table: the ways a flow's hash can land in, two cache lines. */
struct flow_set {
	struct flow_entry way[CONNTRACK_WAYS];
};

/* The inner IPv6 flow: the key of the IPv6 connection table, conntrack_v6. Ports are 0 for a
 * 3-tuple flow; proto is the upper-layer protocol after the extension headers (a fragment's:
 * its fragment header's next header). */
struct flow6_key {
	__be32 src_be[4];
	__be32 dst_be[4];
	__be16 sport_be;
	__be16 dport_be;
	__u8 proto;
	__u8 pad[3];
};

/* One way of an IPv6 connection-table set: flow_entry with the 40-byte key. */
struct flow6_entry {
	struct flow6_key flow;
	struct conntrack_entry target;
	__u32 check;
	__u32 recent;
};

struct flow6_set {
	struct flow6_entry way[CONNTRACK_WAYS];
};

/* Value of icmp_watch and icmp_watch_v6, keyed by a backend's IPv4 or IPv6 address (network
 * order). `armed` is cleared
 * by the report it allows and set again by the control plane: at most one report per backend
 * is outstanding, however many ICMP messages arrive (two CPUs racing may both report). */
struct icmp_watch {
	__u32 armed;
};

/* A record of the icmp_reports ring buffer: the GRE this node sent to `backend` could not be
 * delivered, says `reporter` (the backend, or a router on the way). */
struct icmp_report {
	__be32 backend_be[4];  /* IPv4 in backend_be[0] */
	__be32 reporter_be[4]; /* IPv4 in reporter_be[0] */
	__u8 family;           /* 4 or 6 */
	__u8 type;
	__u8 code;
	__u8 pad;
};

#endif /* RUSTY_RAIL_BALANCER_TYPES_H */
