// SPDX-License-Identifier: Apache-2.0
/* The balancer: GRE traffic for a VIP, and (routed ingress) plain packets to a VIP, go on to one
 * backend, chosen by the flow's connection-table entry or the VIP's Maglev table, by the
 * backend's egress method; everything else goes to the host.
 * docs/packet-path.md is the contract, rusty_rail/model/pipeline.py its executable twin. */
#include "affinity.h"
#include "balancer_maps.h"
#include "balancer_parse.h"
#include "balancer_types.h"
#include "conntrack.h"
#include "egress.h"
#include "encap.h"
#include "icmp.h"
#include "pmtu.h"
#include "lib/flowhash.h"
#include "lib/parse.h"
#include "lib/stats.h"
#include "lib/uapi.h"

/* What the rest of the path needs from the parsers. */
struct packet {
	struct ethhdr *eth;
	struct iphdr *outer;    /* the outer IPv4 header, when !outer_v6 */
	struct ipv6hdr *outer6; /* the outer IPv6 header, when outer_v6 */
	int outer_v6;           /* a flag, not the pointers' nullness: the verifier follows it */
	void *inner;            /* the inner IP header (the outer one for routed ingress) */
	int inner_v6;
	int routed; /* routed ingress (section 2c): `inner` is the packet itself */
	struct flow_key flow;
	__u32 len; /* the frame's length as received, for the byte counters */
};

static __always_inline int action_verdict(__u8 action)
{
	return action == ACTION_DROP ? XDP_DROP : XDP_PASS;
}

/* The verdict of every packet that is not forwarded: the table at the end of
 * docs/packet-path.md. `settings` may be NULL for the stats that pass regardless. */
static __always_inline int unforwarded_verdict(__u32 stat, const struct settings *settings)
{
	switch (stat) {
	case STAT_GRE_MALFORMED:
	case STAT_INNER_MALFORMED:
	case STAT_INNER_L4_TRUNCATED:
	case STAT_INNER_EXT_TOO_DEEP:
		return action_verdict(settings->malformed_action);
	case STAT_NO_VIP:
		return action_verdict(settings->no_vip_action);
	case STAT_DROP_NO_BACKEND:
	case STAT_DROP_NO_NEXTHOP:
		return XDP_DROP;
	default:
		return XDP_PASS;
	}
}

/* Ends the journey of a packet that is not forwarded: counted by reason, unchanged. */
static __always_inline int finish_unforwarded(__u32 stat, const struct packet *pkt,
					      const struct settings *settings)
{
	count_stat(&stats, stat, pkt->len);
	return unforwarded_verdict(stat, settings);
}

/* A drop after the VIP is known (DROP_NO_BACKEND, DROP_NO_NEXTHOP): counted by reason and for
 * the VIP too. */
static __always_inline int finish_vip_drop(__u32 stat, __u32 vip_index, const struct packet *pkt,
					   const struct settings *settings)
{
	count_vip_flow(vip_index,
		       stat == STAT_DROP_NO_BACKEND ? VIP_FLOW_DROP_NO_BACKEND :
						      VIP_FLOW_DROP_NO_NEXTHOP,
		       pkt->len);
	return finish_unforwarded(stat, pkt, settings);
}

/* Section 6: the (address, protocol, port) VIP, the address-wide VIP, the default set.
 * Only TCP and UDP that are not fragments have ports to match; other flows have none. */
static __always_inline __u32 match_vip(const struct flow_key *flow, int has_ports,
				       const struct settings *settings)
{
	struct vip_key key = { .addr_be = flow->dst_be };
	struct vip_value *vip;

	if (has_ports) {
		key.port_be = flow->dport_be;
		key.proto = flow->proto;
		vip = bpf_map_lookup_elem(&vips, &key);
		if (vip)
			return vip->vip_index;
		key.port_be = 0;
		key.proto = 0;
	}
	vip = bpf_map_lookup_elem(&vips, &key);
	if (vip)
		return vip->vip_index;
	return settings->default_vip;
}

/* Section 2c: a routed packet's valid connection-table hit on a VIP's slot (not the default
 * set's) takes it without a VIP lookup. */
static __always_inline int routed_hit(const struct backend *backend,
				      const struct settings *settings)
{
	return backend && backend->vip_index != settings->default_vip;
}

/* Section 6 for an inner IPv6 flow: the same order over the IPv6 VIPs. */
static __always_inline __u32 match_vip6(const struct flow6_key *flow, int has_ports,
					const struct settings *settings)
{
	struct vip6_key key = {};
	struct vip_value *vip;

	__builtin_memcpy(key.addr_be, flow->dst_be, sizeof(key.addr_be));
	if (has_ports) {
		key.port_be = flow->dport_be;
		key.proto = flow->proto;
		vip = bpf_map_lookup_elem(&vips_v6, &key);
		if (vip)
			return vip->vip_index;
		key.port_be = 0;
		key.proto = 0;
	}
	vip = bpf_map_lookup_elem(&vips_v6, &key);
	if (vip)
		return vip->vip_index;
	return settings->default_vip;
}

/* Section 7: slot hash % M of the VIP's table, whose element 0 is M. Reading M from the
 * table itself means a concurrent swap shows this packet one whole table. */
static __always_inline __u32 maglev_pick(__u32 vip_index, __u32 hash)
{
	__u32 size_index = 0, slot_index, *size, *slot;
	void *table;

	table = bpf_map_lookup_elem(&tables, &vip_index);
	if (!table)
		return NONE_INDEX;
	size = bpf_map_lookup_elem(table, &size_index);
	if (!size || *size == 0)
		return NONE_INDEX;
	slot_index = 1 + hash % *size;
	slot = bpf_map_lookup_elem(table, &slot_index);
	if (!slot)
		return NONE_INDEX;
	return *slot;
}

/* Section 8c for GRE passthrough that changes the outer family: the new outer header of
 * `outer_len` bytes and the GRE header as it came go in front of the inner packet. 1 when the
 * packet fits (or the MTU is unknown); else 0 and `client_mtu` says what would fit. */
static __always_inline int passthrough_fits(struct xdp_md *ctx, const struct packet *pkt,
					    __u32 backend_index, __u32 outer_len, __u32 *client_mtu)
{
	void *l3 = pkt->outer_v6 ? (void *)pkt->outer6 : (void *)pkt->outer;
	__u32 old_len = pkt->outer_v6 ? sizeof(struct ipv6hdr) : pkt->outer->ihl * 4;
	__u32 added = outer_len + (__u32)(pkt->inner - l3) - old_len;
	struct backend_mtu *mtu = bpf_map_lookup_elem(&backend_mtu, &backend_index);
	struct inner_info info;

	if (!mtu || !mtu->mtu ||
	    inner_info_of(pkt->inner, pkt->inner_v6, (void *)(long)ctx->data_end, &info) ||
	    info.len + added <= mtu->mtu)
		return 1;
	*client_mtu = mtu->mtu - added;
	return 0;
}

/* passthrough_fits's answer when it does not: the ICMP error or the drop of section 8c. */
static __always_inline int passthrough_too_big(struct xdp_md *ctx, const struct packet *pkt,
					       __u32 vip_index, __u32 client_mtu)
{
	void *l3 = pkt->outer_v6 ? (void *)pkt->outer6 : (void *)pkt->outer;

	return too_big_answer(ctx,
			      TOO_BIG_LAYOUT(l3 - (void *)pkt->eth, pkt->inner - l3, pkt->inner_v6),
			      vip_index, client_mtu);
}

/* Section 8's rewrite: GRE passthrough by the backend's family for GRE that came in, section
 * 8b's egress methods otherwise. Returns 0, or -1 when the kernel refused the headroom, or a
 * STAT_TOO_BIG_* (section 8c, egress_send). */
static __always_inline int rewrite_outer(struct xdp_md *ctx, const struct packet *pkt,
					 const struct settings *settings,
					 const struct backend *backend, __u32 backend_index,
					 __u32 vip_index, __u64 flow_mix)
{
	__u32 client_mtu = 0;

	if (backend->egress != EGRESS_GRE || pkt->routed) {
		struct egress_args args = {
			.eth = pkt->eth,
			.l3 = pkt->outer_v6 ? (void *)pkt->outer6 : (void *)pkt->outer,
			.inner = pkt->inner,
			.inner_v6 = pkt->inner_v6,
			.flow_hash = flow_hash32(flow_mix),
			.backend_index = backend_index,
		};
		int sent = egress_send(ctx, &args, backend, settings);

		if (sent != EGRESS_TOO_BIG)
			return sent;
		return too_big_answer(ctx,
				      TOO_BIG_LAYOUT(args.l3 - args.eth, args.inner - args.l3,
						     args.inner_v6),
				      vip_index, args.client_mtu);
	}
	if (backend->family != BACKEND_FAMILY_IPV6) {
		if (!pkt->outer_v6) {
			rewrite_gre_passthrough(pkt->eth, pkt->outer, backend, settings);
			return 0;
		}
		if (!passthrough_fits(ctx, pkt, backend_index, sizeof(struct iphdr), &client_mtu))
			return passthrough_too_big(ctx, pkt, vip_index, client_mtu);
		return rewrite_ipv6_to_ipv4(ctx, pkt->outer6,
					    (void *)pkt->outer6 - (void *)pkt->eth, backend,
					    settings);
	}
	if (pkt->outer_v6) {
		rewrite_ipv6_passthrough(pkt->eth, pkt->outer6, backend, settings);
		return 0;
	}
	if (!passthrough_fits(ctx, pkt, backend_index, sizeof(struct ipv6hdr), &client_mtu))
		return passthrough_too_big(ctx, pkt, vip_index, client_mtu);
	return rewrite_ipv4_to_ipv6(ctx, pkt->outer, (void *)pkt->outer - (void *)pkt->eth,
				    backend, settings);
}

/* Section 8c: a too-big packet counted (its stat, and the reason for its VIP) and its verdict:
 * TX for the ICMP error the frame now is, DROP otherwise. */
static __noinline int too_big_finish(__u32 stat, __u32 vip_index, __u32 len)
{
	count_stat(&stats, stat, len);
	count_stat(&vip_too_big, vip_index * TOO_BIG_COUNT + (stat - STAT_TOO_BIG_ICMP), len);
	return stat == STAT_TOO_BIG_ICMP ? XDP_TX : XDP_DROP;
}

/* Section 8: readdress the frame to the backend's next hop, count it, send it. */
static __always_inline int forward_to_backend(struct xdp_md *ctx, const struct packet *pkt,
					      const struct settings *settings,
					      const struct backend *backend, __u32 backend_index,
					      __u32 vip_index, __u32 outcome, __u64 flow_mix)
{
	__u32 ifindex = backend->nexthop_ifindex;
	int sent = rewrite_outer(ctx, pkt, settings, backend, backend_index, vip_index, flow_mix);

	if (sent)
		return sent < 0 ? XDP_ABORTED : too_big_finish(sent, vip_index, pkt->len);
	count_stat(&stats, outcome, pkt->len);
	count_stat(&vip_stats, vip_index, pkt->len);
	count_stat(&backend_stats, backend_index, pkt->len);
	if (ifindex == 0 || ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	/* An egress port missing from tx_ports drops instead of aborting. */
	return bpf_redirect_map(&tx_ports, ifindex, XDP_DROP);
}

/* Sections 4b-8 for inner IPv6 (the cursor at the inner header): the same decisions as the
 * IPv4 path below, over the IPv6 VIPs and connection table; the same rewrite. For a routed
 * packet (section 2c) a stop or no VIP ends it with `routed_stat`, the stat of section 2. */
static __always_inline int balance_inner_ipv6(struct xdp_md *ctx, struct cursor *cur,
					      struct packet *pkt, const struct settings *settings,
					      __u32 routed_stat)
{
	struct flow6_key flow __attribute__((aligned(8))) = {};
	__u32 stat, vip_index, backend_index = 0, outcome;
	struct flow6_entry *entry = NULL;
	struct backend *backend;
	struct flow6_set *set;
	__u64 flow_mix;
	int has_ports;

	pkt->inner = cur->pos;
	pkt->inner_v6 = 1;
	stat = parse_inner_ipv6(cur, &flow, &has_ports);
	if (stat != STEP_OK)
		return finish_unforwarded(pkt->routed ? routed_stat : stat, pkt, settings);

	flow_mix = flow6_key_mix(&flow, settings->hash_seed);
	set = conntrack6_set(flow_mix, settings);
	if (set)
		entry = conntrack6_find(set, &flow);
	backend = entry ? conntrack6_backend(entry, flow_mix, &backend_index) : NULL;
	if (pkt->routed && !routed_hit(backend, settings)) {
		struct settings none = { .default_vip = NONE_INDEX };

		if (match_vip6(&flow, has_ports, &none) == NONE_INDEX)
			return finish_unforwarded(routed_stat, pkt, settings);
	}
	if (backend) {
		outcome = STAT_CT_HIT;
		vip_index = backend->vip_index;
	} else {
		outcome = entry ? STAT_CT_STALE : STAT_CT_MISS;
		vip_index = match_vip6(&flow, has_ports, settings);
		if (vip_index == NONE_INDEX)
			return finish_unforwarded(STAT_NO_VIP, pkt, settings);
		backend_index = maglev_pick(vip_index,
					    affinity_hash6(&flow, flow_mix, vip_affinity_mode(vip_index),
							   settings->hash_seed));
		backend = backend_get(backend_index);
		if (!backend || !backend_forwards(backend))
			return finish_vip_drop(STAT_DROP_NO_BACKEND, vip_index, pkt, settings);
	}

	if (!backend->nexthop_resolved)
		return finish_vip_drop(STAT_DROP_NO_NEXTHOP, vip_index, pkt, settings);
	if (outcome != STAT_CT_HIT) {
		count_vip_flow(vip_index, VIP_FLOW_NEW, pkt->len);
		if (set)
			conntrack6_record(set, entry, &flow, flow_mix, backend_index,
					  backend->generation);
	}
	return forward_to_backend(ctx, pkt, settings, backend, backend_index, vip_index, outcome,
				  flow_mix);
}

SEC("xdp")
int xdp_balancer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct cursor cur = cursor_start(data, data_end);
	struct packet pkt = { .len = data_end - data };
	__u32 stat, vip_index, backend_index = 0, outcome;
	__u32 routed_stat = 0; /* a routed packet's stat if not taken (never 0, CT_HIT) */
	const struct settings *settings;
	struct flow_entry *entry = NULL;
	struct backend *backend;
	struct flow_set *set;
	int ethertype, has_ports;
	__u64 flow_mix;

	/* Parse: Ethernet, the outer IPv4 or IPv6 header to this node, GRE, the inner flow (inner
	 * IPv6 goes its own way, balance_inner_ipv6). ICMP about GRE this node sent is learnt
	 * from on its way to the host (section 9). A packet that is not GRE to this node may be
	 * routed to a VIP (section 2c). */
	ethertype = parse_ethernet(&cur, &pkt.eth);
	if (ethertype == bpf_htons(ETH_P_IP)) {
		stat = parse_outer_ipv4(&cur, &pkt.outer);
		if (stat == STAT_PASS_NOT_GRE)
			icmp_count(icmp_ipv4_stat(pkt.outer, data_end), pkt.len);
	} else if (ethertype == bpf_htons(ETH_P_IPV6)) {
		pkt.outer_v6 = 1;
		stat = parse_outer_ipv6(&cur, &pkt.outer6);
		if (stat == STAT_PASS_NOT_GRE)
			icmp_count(icmp_ipv6_stat(cur.pos, data_end), pkt.len);
	} else {
		stat = STAT_PASS_NOT_IP;
	}
	if (stat == STAT_PASS_NOT_GRE) {
		/* Host traffic unless routed ingress takes it: one flag read on the way. */
		settings = settings_get();
		if (!settings || !(settings->ingress_flags & INGRESS_ROUTED))
			return finish_unforwarded(STAT_PASS_NOT_GRE, &pkt, NULL);
		routed_stat = STAT_PASS_NOT_GRE;
	} else {
		if (stat != STEP_OK)
			return finish_unforwarded(stat, &pkt, NULL);
		settings = settings_get();
		if (!settings)
			return XDP_PASS; /* cannot happen: an array always has its entry 0 */
		if (!pkt.outer_v6)
			stat = outer_ipv4_to_us(&cur, pkt.outer, settings);
		else
			stat = outer_ipv6_to_us(&cur, pkt.outer6, settings);
		if (stat == STEP_OK && (settings->ingress_flags & INGRESS_NO_GRE))
			routed_stat = STAT_PASS_UNSUPPORTED; /* GRE ingress off */
		else if (stat == STAT_PASS_NOT_LOCAL)
			routed_stat = STAT_PASS_NOT_LOCAL;
		else if (stat != STEP_OK)
			return finish_unforwarded(stat, &pkt, settings);
		if (routed_stat && !(settings->ingress_flags & INGRESS_ROUTED))
			return finish_unforwarded(routed_stat, &pkt, settings);
	}
	if (routed_stat) {
		/* Section 2c: the packet itself is the inner packet, bounded by the frame. */
		pkt.routed = 1;
		cur.pos = pkt.outer_v6 ? (void *)pkt.outer6 : (void *)pkt.outer;
		cur.left = CURSOR_UNLIMITED;
		if (pkt.outer_v6)
			return balance_inner_ipv6(ctx, &cur, &pkt, settings, routed_stat);
	} else {
		stat = balanced_gre(&cur);
		if (stat == STEP_INNER_IPV6)
			return balance_inner_ipv6(ctx, &cur, &pkt, settings, 0);
		if (stat != STEP_OK)
			return finish_unforwarded(stat, &pkt, settings);
	}
	pkt.inner = cur.pos;
	if (pkt.routed) /* the outer parse accepted this header under the same bounds */
		stat = ipv4_flow(pkt.outer, data_end, &pkt.flow, &has_ports);
	else
		stat = parse_inner_ipv4(&cur, &pkt.flow, &has_ports);
	if (stat != STEP_OK)
		return finish_unforwarded(pkt.routed ? routed_stat : stat, &pkt, settings);

	/* Find the flow: a valid connection-table hit goes straight to its backend. */
	flow_mix = flow_key_mix(&pkt.flow, settings->hash_seed);
	set = conntrack_set(flow_mix, settings);
	if (set)
		entry = conntrack_find(set, &pkt.flow);
	backend = entry ? conntrack_backend(entry, flow_mix, &backend_index) : NULL;
	if (pkt.routed && !routed_hit(backend, settings)) {
		struct settings none = { .default_vip = NONE_INDEX };

		if (match_vip(&pkt.flow, has_ports, &none) == NONE_INDEX)
			return finish_unforwarded(routed_stat, &pkt, settings);
	}
	if (backend) {
		outcome = STAT_CT_HIT;
		vip_index = backend->vip_index;
	} else {
		/* A miss or a stale hit: match the VIP, pick from its Maglev table by the hash of
		 * the fields its affinity names. */
		outcome = entry ? STAT_CT_STALE : STAT_CT_MISS;
		vip_index = match_vip(&pkt.flow, has_ports, settings);
		if (vip_index == NONE_INDEX)
			return finish_unforwarded(STAT_NO_VIP, &pkt, settings);
		backend_index = maglev_pick(vip_index,
					    affinity_hash(&pkt.flow, flow_mix,
							  vip_affinity_mode(vip_index),
							  settings->hash_seed));
		backend = backend_get(backend_index);
		if (!backend || !backend_forwards(backend))
			return finish_vip_drop(STAT_DROP_NO_BACKEND, vip_index, &pkt, settings);
	}

	/* Rewrite and send, recording (and counting for its VIP) a new decision first. */
	if (!backend->nexthop_resolved)
		return finish_vip_drop(STAT_DROP_NO_NEXTHOP, vip_index, &pkt, settings);
	if (outcome != STAT_CT_HIT) {
		count_vip_flow(vip_index, VIP_FLOW_NEW, pkt.len);
		if (set)
			conntrack_record(set, entry, &pkt.flow, flow_mix, backend_index,
					 backend->generation);
	}
	return forward_to_backend(ctx, &pkt, settings, backend, backend_index, vip_index, outcome,
				  flow_mix);
}

char LICENSE[] SEC("license") = "GPL";
