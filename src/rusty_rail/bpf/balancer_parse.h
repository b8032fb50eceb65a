/* SPDX-License-Identifier: Apache-2.0 */
/* The balancer's parsing rules, docs/packet-path.md sections 2-4b in their order, on top of
 * the parsers of lib/parse.h: which stat ends a packet that is not the balancer's, and the
 * inner IPv4 or IPv6 flow (and its hash) of one that is. */
#ifndef RUSTY_RAIL_BALANCER_PARSE_H
#define RUSTY_RAIL_BALANCER_PARSE_H

#include "balancer_types.h"
#include "lib/flowhash.h"
#include "lib/parse.h"

/* A step's answer when the packet goes on to the next step; anything else is the enum stat
 * that ends the packet's journey. */
#define STEP_OK 0xFF
/* balanced_gre's answer for GRE carrying IPv6: go on with section 4b. */
#define STEP_INNER_IPV6 0xFE

/* The outer IPv6 header (section 2b): sane, whole and carrying GRE (extension headers are not
 * walked). The cursor stays at the header: the ICMP learning of section 9b reads the others. */
static __always_inline __u32 parse_outer_ipv6(struct cursor *c, struct ipv6hdr **ip6_out)
{
	struct ipv6hdr *ip6;

	if (parse_ipv6(c, &ip6) != PARSE_OK || ip6->version != 6 ||
	    sizeof(*ip6) + bpf_ntohs(ip6->payload_len) > (__u32)(c->end - c->pos))
		return STAT_PASS_OUTER_MALFORMED;
	*ip6_out = ip6;
	if (ip6->nexthdr != IPPROTO_GRE)
		return STAT_PASS_NOT_GRE;
	return STEP_OK;
}

/* The rest of section 2b, once the packet is GRE: addressed to this node (an all-zero lb_ipv6
 * is nobody's). On STEP_OK the cursor is at the GRE header and `left` ends at the GRE end. */
static __always_inline __u32 outer_ipv6_to_us(struct cursor *c, const struct ipv6hdr *ip6,
					      const struct settings *settings)
{
	const __u64 *dst = (const __u64 *)&ip6->daddr, *lb = (const __u64 *)settings->lb_ipv6;

	if (dst[0] != lb[0] || dst[1] != lb[1] || (lb[0] | lb[1]) == 0)
		return STAT_PASS_NOT_LOCAL;
	if (ipv6_enter_payload(c, ip6) != PARSE_OK)
		return STAT_PASS_OUTER_MALFORMED; /* cannot happen: checked by parse_outer_ipv6 */
	return STEP_OK;
}

/* The outer IPv4 header (section 2a): sane and carrying GRE. The cursor's bound is the frame
 * here, the spec's l3_len. *ip_out is set for a sane header, GRE or not (the ICMP learning of
 * section 9 reads the others). */
static __always_inline __u32 parse_outer_ipv4(struct cursor *c, struct iphdr **ip_out)
{
	if (parse_ipv4(c, ip_out) != PARSE_OK)
		return STAT_PASS_OUTER_MALFORMED;
	if ((*ip_out)->protocol != IPPROTO_GRE)
		return STAT_PASS_NOT_GRE;
	return STEP_OK;
}

/* The rest of section 2a, once the packet is GRE: addressed to this node and whole. On
 * STEP_OK the cursor is at the GRE header and `left` ends at the GRE end. Separate from
 * the parse so that traffic for the host leaves before the settings are read. */
static __always_inline __u32 outer_ipv4_to_us(struct cursor *c, const struct iphdr *ip,
					      const struct settings *settings)
{
	if (ip->daddr != settings->lb_ipv4_be)
		return STAT_PASS_NOT_LOCAL;
	if (ipv4_is_fragment(ip))
		return STAT_PASS_OUTER_FRAGMENT;
	ipv4_enter_payload(c, ip);
	return STEP_OK;
}

/* The GRE header (section 3). On STEP_OK (inner IPv4) or STEP_INNER_IPV6 the cursor is past
 * the optional fields, at the inner header. */
static __always_inline __u32 balanced_gre(struct cursor *c)
{
	__be16 protocol;

	switch (parse_gre(c, &protocol)) {
	case PARSE_OK:
		break;
	case PARSE_UNSUPPORTED:
		return STAT_PASS_UNSUPPORTED;
	default:
		return STAT_GRE_MALFORMED;
	}
	if (protocol == bpf_htons(ETH_P_IP))
		return STEP_OK;
	if (protocol == bpf_htons(ETH_P_IPV6))
		return STEP_INNER_IPV6;
	return STAT_PASS_UNSUPPORTED;
}

/* The flow of an IPv4 header parse_ipv4 accepted (section 4): GRE's inner packet, or a routed
 * packet, whose header parse_ipv4 accepted as the outer one under the same bounds (the frame).
 * Fragments and protocols without ports are 3-tuple flows: `flow` arrives zeroed and the ports
 * stay 0; `has_ports` says which kind the flow is (the VIP match needs to know). */
static __always_inline __u32 ipv4_flow(const struct iphdr *ip, void *end, struct flow_key *flow,
				       int *has_ports)
{
	struct l4_ports *ports;

	flow->src_be = ip->saddr;
	flow->dst_be = ip->daddr;
	flow->proto = ip->protocol;
	*has_ports = 0;
	switch (ipv4_l4_ports(ip, end, &ports)) {
	case PARSE_OK:
		break;
	case PARSE_UNSUPPORTED:
		return STEP_OK;
	default:
		return STAT_INNER_L4_TRUNCATED;
	}
	flow->sport_be = ports->source;
	flow->dport_be = ports->dest;
	*has_ports = 1;
	return STEP_OK;
}

/* The inner IPv4 header and the flow it carries (section 4). */
static __always_inline __u32 parse_inner_ipv4(struct cursor *c, struct flow_key *flow,
					      int *has_ports)
{
	struct iphdr *ip;

	if (parse_ipv4(c, &ip) != PARSE_OK)
		return STAT_INNER_MALFORMED;
	return ipv4_flow(ip, c->end, flow, has_ports);
}

/* The inner IPv6 header, its extension headers and the flow it carries (section 4b). As
 * parse_inner_ipv4: `flow` arrives zeroed, `has_ports` says whether it has real ports. */
static __always_inline __u32 parse_inner_ipv6(struct cursor *c, struct flow6_key *flow,
					      int *has_ports)
{
	struct l4_ports *ports;
	struct ipv6hdr *ip6;
	int fragment;
	__u8 proto;

	if (parse_ipv6(c, &ip6) != PARSE_OK || ip6->version != 6 ||
	    ipv6_enter_payload(c, ip6) != PARSE_OK)
		return STAT_INNER_MALFORMED;
	__builtin_memcpy(flow->src_be, &ip6->saddr, sizeof(flow->src_be));
	__builtin_memcpy(flow->dst_be, &ip6->daddr, sizeof(flow->dst_be));
	proto = ip6->nexthdr;
	switch (ipv6_walk_extensions(c, &proto, &fragment)) {
	case PARSE_OK:
		break;
	case PARSE_UNSUPPORTED:
		return STAT_INNER_EXT_TOO_DEEP;
	default:
		return STAT_INNER_MALFORMED;
	}
	flow->proto = proto;
	*has_ports = 0;
	if (fragment || (proto != IPPROTO_TCP && proto != IPPROTO_UDP))
		return STEP_OK;
	ports = c->pos;
	if (c->left < sizeof(*ports) || (void *)(ports + 1) > c->end)
		return STAT_INNER_L4_TRUNCATED;
	flow->sport_be = ports->source;
	flow->dport_be = ports->dest;
	*has_ports = 1;
	return STEP_OK;
}

/* The flow hash's mix64 of a flow key (lib/flowhash.h): its ports are the 4 bytes at
 * sport_be, loaded as one word. */
static __always_inline __u64 flow_key_mix(const struct flow_key *flow, __u64 seed)
{
	const __u32 *words = (const __u32 *)flow;

	return flow_mix_ipv4(seed, flow->src_be, flow->dst_be, words[2], flow->proto);
}

/* The same for an IPv6 flow key: its ports are the 4 bytes at sport_be. */
static __always_inline __u64 flow6_key_mix(const struct flow6_key *flow, __u64 seed)
{
	const __u32 *words = (const __u32 *)flow;

	return flow_mix_ipv6(seed, flow->src_be, flow->dst_be, words[8], flow->proto);
}

#endif /* RUSTY_RAIL_BALANCER_PARSE_H */
