/* SPDX-License-Identifier: Apache-2.0 */
/* Cursor-style parsers for Ethernet, outer IPv4/IPv6, GRE and the inner IPv4 flow, one
 * per header, each checking the rules of docs/packet-path.md sections 1-4 in their order. */
#ifndef RUSTY_RAIL_PARSE_H
#define RUSTY_RAIL_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "shared.h"

/* A parser's answer when the packet goes on to the next step; anything else is the
 * enum stat that ends the packet's journey. */
#define PARSE_OK 0xFF

#define ETH_P_8021Q_BE bpf_htons(0x8100)
#define ETH_P_8021AD_BE bpf_htons(0x88A8)
#define MAX_VLAN_TAGS 2

#define IP_FRAGMENT_MASK_BE bpf_htons(0x3FFF) /* more-fragments flag and offset */

#define GRE_FLAG_C bpf_htons(0x8000)
#define GRE_FLAG_R bpf_htons(0x4000)
#define GRE_FLAG_K bpf_htons(0x2000)
#define GRE_FLAG_S bpf_htons(0x1000)
#define GRE_FLAG_SSR bpf_htons(0x0800)
#define GRE_RECURSION bpf_htons(0x0700)
#define GRE_VERSION bpf_htons(0x0007)

/* Where parsing stands. `end` is the frame's end, the only bound the verifier accepts;
 * `left` is what the enclosing header allows from `pos` (up to the outer IPv4 total
 * length, the "GRE end"), the bound the spec checks against. */
struct cursor {
	void *pos;
	void *end;
	__u32 left;
};

struct vlan_tag {
	__be16 tci;
	__be16 ethertype;
};

struct gre_base {
	__be16 flags_version;
	__be16 protocol;
};

/* The transport ports as they sit on the wire, source first. */
struct l4_ports {
	__be16 source;
	__be16 dest;
};

static __always_inline void cursor_advance(struct cursor *c, __u32 bytes)
{
	c->pos += bytes;
	c->left -= bytes;
}

/* Ethernet and up to two VLAN tags. Returns the EtherType after the tags (network
 * order), or -1 when the frame is too short or carries a third tag. */
static __always_inline int parse_ethernet(struct cursor *c, struct ethhdr **eth_out)
{
	struct ethhdr *eth = c->pos;
	__be16 ethertype;

	if ((void *)(eth + 1) > c->end)
		return -1;
	*eth_out = eth;
	ethertype = eth->h_proto;
	c->pos = eth + 1;

#pragma unroll
	for (int i = 0; i < MAX_VLAN_TAGS; i++) {
		struct vlan_tag *tag = c->pos;

		if (ethertype != ETH_P_8021Q_BE && ethertype != ETH_P_8021AD_BE)
			break;
		if ((void *)(tag + 1) > c->end)
			return -1;
		ethertype = tag->ethertype;
		c->pos = tag + 1;
	}
	if (ethertype == ETH_P_8021Q_BE || ethertype == ETH_P_8021AD_BE)
		return -1;
	return ethertype;
}

/* Outer IPv6 is recognised, not balanced yet: section 2b. */
static __always_inline __u32 outer_ipv6_stat(struct cursor *c)
{
	struct ipv6hdr *ip6 = c->pos;

	if ((void *)(ip6 + 1) > c->end)
		return STAT_PASS_OUTER_MALFORMED;
	if (ip6->nexthdr != IPPROTO_GRE)
		return STAT_PASS_NOT_GRE;
	return STAT_PASS_UNSUPPORTED;
}

/* The outer IPv4 header (section 2a): sane and carrying GRE. The frame's end is the
 * spec's l3_len bound here, so plain pointer checks say it all. *ip_out is set for a sane
 * header, GRE or not (the ICMP learning of section 9 reads the others). */
static __always_inline __u32 parse_outer_ipv4(struct cursor *c, struct iphdr **ip_out)
{
	struct iphdr *ip = c->pos;
	__u32 total_len;

	if ((void *)(ip + 1) > c->end)
		return STAT_PASS_OUTER_MALFORMED;
	total_len = bpf_ntohs(ip->tot_len);
	if (ip->version != 4 || ip->ihl < 5 || total_len < ip->ihl * 4 ||
	    c->pos + total_len > c->end)
		return STAT_PASS_OUTER_MALFORMED;
	*ip_out = ip;
	if (ip->protocol != IPPROTO_GRE)
		return STAT_PASS_NOT_GRE;
	return PARSE_OK;
}

/* The rest of section 2a, once the packet is GRE: addressed to this node and whole. On
 * PARSE_OK the cursor is at the GRE header and `left` ends at the GRE end. Separate from
 * the parse so that traffic for the host leaves before the settings are read. */
static __always_inline __u32 outer_ipv4_to_us(struct cursor *c, const struct iphdr *ip,
					      const struct settings *settings)
{
	__u32 header_len = ip->ihl * 4;

	if (ip->daddr != settings->lb_ipv4_be)
		return STAT_PASS_NOT_LOCAL;
	if (ip->frag_off & IP_FRAGMENT_MASK_BE)
		return STAT_PASS_OUTER_FRAGMENT;
	c->pos += header_len;
	c->left = bpf_ntohs(ip->tot_len) - header_len;
	return PARSE_OK;
}

/* The GRE header (section 3). On PARSE_OK the cursor is past the optional fields, at the
 * inner IPv4 header; the optional fields are neither read nor changed. */
static __always_inline __u32 parse_gre(struct cursor *c)
{
	struct gre_base *gre = c->pos;
	__be16 flags;
	__u32 header_len;

	if (c->left < sizeof(*gre) || (void *)(gre + 1) > c->end)
		return STAT_GRE_MALFORMED;
	flags = gre->flags_version;
	if (flags & GRE_VERSION)
		return STAT_PASS_UNSUPPORTED;
	if (flags & (GRE_FLAG_R | GRE_FLAG_SSR | GRE_RECURSION))
		return STAT_GRE_MALFORMED;
	/* 4 bytes each for checksum, key and sequence number, without a branch per flag. */
	header_len = sizeof(*gre) + 4 * (!!(flags & GRE_FLAG_C) + !!(flags & GRE_FLAG_K) +
					 !!(flags & GRE_FLAG_S));
	if (header_len > c->left)
		return STAT_GRE_MALFORMED;
	if (gre->protocol != bpf_htons(ETH_P_IP))
		return STAT_PASS_UNSUPPORTED;

	cursor_advance(c, header_len);
	return PARSE_OK;
}

/* The inner IPv4 header and the flow it carries (section 4). Fragments and protocols
 * without ports are 3-tuple flows: `flow` arrives zeroed and the ports stay 0;
 * `has_ports` says which kind the flow is (the VIP match needs to know). */
static __always_inline __u32 parse_inner_ipv4(struct cursor *c, struct flow_key *flow,
					      int *has_ports)
{
	struct iphdr *ip = c->pos;
	struct l4_ports *ports;
	__u32 header_len, total_len;

	if (c->left < sizeof(*ip) || (void *)(ip + 1) > c->end)
		return STAT_INNER_MALFORMED;
	header_len = ip->ihl * 4;
	total_len = bpf_ntohs(ip->tot_len);
	if (ip->version != 4 || header_len < sizeof(*ip) || total_len < header_len ||
	    total_len > c->left)
		return STAT_INNER_MALFORMED;

	flow->src_be = ip->saddr;
	flow->dst_be = ip->daddr;
	flow->proto = ip->protocol;
	*has_ports = 0;
	if (ip->frag_off & IP_FRAGMENT_MASK_BE)
		return PARSE_OK;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return PARSE_OK;

	ports = c->pos + header_len;
	if (header_len + sizeof(*ports) > total_len || (void *)(ports + 1) > c->end)
		return STAT_INNER_L4_TRUNCATED;
	flow->sport_be = ports->source;
	flow->dport_be = ports->dest;
	*has_ports = 1;
	return PARSE_OK;
}

#endif /* RUSTY_RAIL_PARSE_H */
