/* SPDX-License-Identifier: Apache-2.0 */
/* GRE passthrough (docs/packet-path.md section 8): readdress the Ethernet and outer headers to
 * the backend, in the backend's family (a new outer header when the family changes); the GRE
 * header and the inner packet go on byte for byte. */
#ifndef RUSTY_RAIL_ENCAP_H
#define RUSTY_RAIL_ENCAP_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>

#include "balancer_types.h"
#include "lib/csum.h"

_Static_assert(__builtin_offsetof(struct backend, nexthop_src_mac) ==
		       __builtin_offsetof(struct backend, nexthop_dst_mac) + ETH_ALEN,
	       "the next hop's MACs are copied as one 12-byte Ethernet address pair");
_Static_assert(__builtin_offsetof(struct backend, nexthop_dst_mac) % 4 == 0,
	       "the MAC pair is copied in 4-byte words");

/* Destination and source MAC, in Ethernet order; VLAN tags follow untouched. */
static __always_inline void rewrite_macs(struct ethhdr *eth, const struct backend *backend)
{
	const __u32 *macs = (const __u32 *)backend->nexthop_dst_mac;
	__u32 *eth_words = (__u32 *)eth;

	eth_words[0] = macs[0];
	eth_words[1] = macs[1];
	eth_words[2] = macs[2];
}

/* Outer IPv4 to an IPv4 backend: the incremental rewrite. */
static __always_inline void rewrite_gre_passthrough(struct ethhdr *eth, struct iphdr *ip,
						    const struct backend *backend,
						    const struct settings *settings)
{
	__u16 *ttl_protocol = (__u16 *)&ip->ttl;
	__u32 sum = (__u16)~ip->check;
	__u16 old_ttl_protocol = *ttl_protocol;

	rewrite_macs(eth, backend);

	sum = csum_add_change32(sum, ip->saddr, settings->lb_ipv4_be);
	sum = csum_add_change32(sum, ip->daddr, backend->addr_be[0]);
	ip->saddr = settings->lb_ipv4_be;
	ip->daddr = backend->addr_be[0];
	ip->ttl = settings->outer_ttl;
	sum = csum_add_change16(sum, old_ttl_protocol, *ttl_protocol);
	ip->check = (__u16)~csum_fold(sum);
}

/* Outer IPv6 to an IPv6 backend: addresses and hop limit; nothing to checksum. */
static __always_inline void rewrite_ipv6_passthrough(struct ethhdr *eth, struct ipv6hdr *ip6,
						     const struct backend *backend,
						     const struct settings *settings)
{
	rewrite_macs(eth, backend);
	__builtin_memcpy(&ip6->saddr, settings->lb_ipv6, sizeof(ip6->saddr));
	__builtin_memcpy(&ip6->daddr, backend->addr_be, sizeof(ip6->daddr));
	ip6->hop_limit = settings->outer_ttl;
}

#define ENCAP_L2_MAX (ETH_HLEN + 8) /* Ethernet and two VLAN tags */

/* A family change: the outer header of `old_len` bytes after the `l2_len` bytes of Ethernet
 * and VLAN tags becomes one of `new_len` bytes. The link-layer header moves with the start of
 * the frame (bpf_xdp_adjust_head), readdressed, its last EtherType `ethertype`. Returns the new
 * outer header (new_len bytes inside the frame), or NULL when the kernel refused. The copies
 * have constant sizes because the verifier wants them so. */
static __always_inline void *move_link_header(struct xdp_md *ctx, __u32 l2_len, __u32 old_len,
					      __u32 new_len, __be16 ethertype,
					      const struct backend *backend)
{
	__u8 l2[ENCAP_L2_MAX];
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	void *outer;

	if (data + sizeof(l2) > data_end) /* true here: an outer IP header and GRE follow */
		return NULL;
	__builtin_memcpy(l2, data, sizeof(l2));
	if (bpf_xdp_adjust_head(ctx, (int)old_len - (int)new_len))
		return NULL;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + sizeof(l2) > data_end)
		return NULL;
	__builtin_memcpy(data, l2, sizeof(l2)); /* the bytes past l2_len are written over below */
	rewrite_macs(data, backend);
	if (l2_len == ETH_HLEN)
		l2_len = ETH_HLEN;
	else if (l2_len == ETH_HLEN + 4)
		l2_len = ETH_HLEN + 4;
	else
		l2_len = ETH_HLEN + 8;
	*(__be16 *)(data + l2_len - 2) = ethertype;
	outer = data + l2_len;
	if (outer + sizeof(struct ipv6hdr) > data_end)
		return NULL;
	return outer;
}

/* Outer IPv4 to an IPv6 backend: the IPv4 header (options included) becomes an IPv6 one. */
static __always_inline int rewrite_ipv4_to_ipv6(struct xdp_md *ctx, const struct iphdr *ip,
						__u32 l2_len, const struct backend *backend,
						const struct settings *settings)
{
	__u32 header_len = ip->ihl * 4;
	__u16 payload_len = bpf_ntohs(ip->tot_len) - header_len;
	__u8 tos = ip->tos;
	struct ipv6hdr *ip6;

	ip6 = move_link_header(ctx, l2_len, header_len, sizeof(*ip6), bpf_htons(ETH_P_IPV6),
			       backend);
	if (!ip6)
		return -1;
	*(__be32 *)ip6 = bpf_htonl(6 << 28 | (__u32)tos << 20); /* flow label 0 */
	ip6->payload_len = bpf_htons(payload_len);
	ip6->nexthdr = IPPROTO_GRE;
	ip6->hop_limit = settings->outer_ttl;
	__builtin_memcpy(&ip6->saddr, settings->lb_ipv6, sizeof(ip6->saddr));
	__builtin_memcpy(&ip6->daddr, backend->addr_be, sizeof(ip6->daddr));
	return 0;
}

/* Outer IPv6 to an IPv4 backend: the IPv6 header becomes a 20-byte IPv4 one. */
static __always_inline int rewrite_ipv6_to_ipv4(struct xdp_md *ctx, const struct ipv6hdr *ip6,
						__u32 l2_len, const struct backend *backend,
						const struct settings *settings)
{
	__u16 total_len = sizeof(struct iphdr) + bpf_ntohs(ip6->payload_len);
	__u8 tos = bpf_ntohl(*(const __be32 *)ip6) >> 20;
	struct iphdr *ip;

	ip = move_link_header(ctx, l2_len, sizeof(*ip6), sizeof(*ip), bpf_htons(ETH_P_IP), backend);
	if (!ip)
		return -1;
	ipv4_header_write(ip, tos, total_len, settings->outer_ttl, IPPROTO_GRE, settings->lb_ipv4_be,
			  backend->addr_be[0]);
	return 0;
}

#endif /* RUSTY_RAIL_ENCAP_H */
