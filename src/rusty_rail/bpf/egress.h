/* SPDX-License-Identifier: Apache-2.0 */
/* The egress methods other than GRE passthrough (docs/packet-path.md section 8b): the headers
 * in front of the inner packet go (the outer IP and GRE that came in) and the method's come
 * (outer IP, then GRE, nothing, or UDP with VXLAN or GENEVE and an inner Ethernet header; or
 * nothing at all for `route`). The inner packet and whatever follows it stay where they are. */
#ifndef RUSTY_RAIL_EGRESS_H
#define RUSTY_RAIL_EGRESS_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>

#include "balancer_maps.h"
#include "balancer_types.h"
#include "encap.h"
#include "lib/csum.h"

#define VXLAN_PORT 4789
#define GENEVE_PORT 6081
#define VXLAN_FLAGS_I 0x08000000u
#define GENEVE_WORD0 0x00006558u /* version 0, no options, O and C clear, protocol 0x6558 */
#define TUNNEL_SPORT_BASE 49152
#define TUNNEL_SPORT_MASK 0x3FFF /* 16384 ports: the hash modulo a power of two */
/* UDP, the VXLAN or GENEVE header, the inner Ethernet header. */
#define UDP_TUNNEL_LEN (8 + 8 + ETH_HLEN)

/* What the egress writers need to know about the inner packet, read before the frame moves. */
struct inner_info {
	__u32 len;    /* the inner packet's own length: IPv4 total length, 40 + IPv6 payload */
	__u8 tos;     /* TOS, or the IPv6 traffic class */
	__u8 ipproto; /* 4 or 41: what an outer IP header says is inside */
	__be16 ethertype;
};

static __always_inline int inner_info_of(void *inner, int inner_v6, void *data_end,
					 struct inner_info *info)
{
	if (inner_v6) {
		struct ipv6hdr *ip6 = inner;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		info->len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
		info->tos = bpf_ntohl(*(const __be32 *)ip6) >> 20;
		info->ipproto = IPPROTO_IPV6;
		info->ethertype = bpf_htons(ETH_P_IPV6);
		return 0;
	}
	struct iphdr *ip = inner;

	if ((void *)(ip + 1) > data_end)
		return -1;
	info->len = bpf_ntohs(ip->tot_len);
	info->tos = ip->tos;
	info->ipproto = IPPROTO_IPIP;
	info->ethertype = bpf_htons(ETH_P_IP);
	return 0;
}

/* The frame's start moves by `delta` (bpf_xdp_adjust_head: negative grows it); the `l2_len`
 * bytes of Ethernet and VLAN tags move with it, readdressed to `macs` (destination and source,
 * 12 bytes, 4-byte aligned), their last EtherType `ethertype`. Only the VLAN tags are carried
 * over (the addresses and the EtherType are written anew), so that what follows the link layer
 * (the inner packet, for `route`) stays intact. Returns the start of what follows, or NULL. */
static __always_inline void *egress_move_link(struct xdp_md *ctx, __u32 l2_len, int delta,
					      __be16 ethertype, const __u8 *macs)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 tag0 = 0, tag1 = 0; /* the VLAN tags' bytes 12-19, as they sit in the frame */

	if (data + ENCAP_L2_MAX > data_end) /* true: an IP header follows the link layer */
		return NULL;
	if (l2_len != ETH_HLEN) {
		tag0 = *(__u32 *)(data + 12);
		tag1 = *(__u32 *)(data + 16);
	}
	if (delta && bpf_xdp_adjust_head(ctx, delta))
		return NULL;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + ENCAP_L2_MAX > data_end)
		return NULL;
	if (l2_len == ETH_HLEN) {
		l2_len = ETH_HLEN;
	} else if (l2_len == ETH_HLEN + 4) {
		*(__u32 *)(data + 12) = tag0;
		l2_len = ETH_HLEN + 4;
	} else {
		*(__u32 *)(data + 12) = tag0;
		*(__u32 *)(data + 16) = tag1;
		l2_len = ETH_HLEN + 8;
	}
	((__u32 *)data)[0] = ((const __u32 *)macs)[0];
	((__u32 *)data)[1] = ((const __u32 *)macs)[1];
	((__u32 *)data)[2] = ((const __u32 *)macs)[2];
	*(__be16 *)(data + l2_len - 2) = ethertype;
	return data + l2_len;
}

static __always_inline void write_outer_ipv4(struct iphdr *ip, __u8 tos, __u32 payload_len,
					     __u8 protocol, const struct backend *backend,
					     const struct settings *settings)
{
	ipv4_header_write(ip, tos, sizeof(*ip) + payload_len, settings->outer_ttl, protocol,
			  settings->lb_ipv4_be, backend->addr_be[0]);
}

static __always_inline void write_outer_ipv6(struct ipv6hdr *ip6, __u8 tos, __u32 payload_len,
					     __u8 nexthdr, const struct backend *backend,
					     const struct settings *settings)
{
	*(__be32 *)ip6 = bpf_htonl(6 << 28 | (__u32)tos << 20); /* flow label 0 */
	ip6->payload_len = bpf_htons(payload_len);
	ip6->nexthdr = nexthdr;
	ip6->hop_limit = settings->outer_ttl;
	__builtin_memcpy(&ip6->saddr, settings->lb_ipv6, sizeof(ip6->saddr));
	__builtin_memcpy(&ip6->daddr, backend->addr_be, sizeof(ip6->daddr));
}

/* UDP, the VXLAN or GENEVE header and the inner Ethernet header (section 8b). */
static __always_inline void write_udp_tunnel(__u8 *p, __u8 egress, __be32 vni_be,
					     __u32 flow_hash, const struct inner_info *info)
{
	struct udphdr *udp = (struct udphdr *)p;
	__be32 *header = (__be32 *)(p + 8);
	__u8 *eth = p + 16;

	udp->source = bpf_htons(TUNNEL_SPORT_BASE + (flow_hash & TUNNEL_SPORT_MASK));
	udp->dest = bpf_htons(egress == EGRESS_VXLAN ? VXLAN_PORT : GENEVE_PORT);
	udp->len = bpf_htons(UDP_TUNNEL_LEN + info->len);
	udp->check = 0; /* section 8b: none over IPv4, RFC 6935 over IPv6 */
	header[0] = bpf_htonl(egress == EGRESS_VXLAN ? VXLAN_FLAGS_I : GENEVE_WORD0);
	header[1] = vni_be;
	/* 02:72:72:00:00:01 then 02:72:72:00:00:02 (wire/constants.py TUNNEL_INNER_*_MAC) */
	eth[0] = 0x02, eth[1] = 0x72, eth[2] = 0x72, eth[3] = 0, eth[4] = 0, eth[5] = 0x01;
	eth[6] = 0x02, eth[7] = 0x72, eth[8] = 0x72, eth[9] = 0, eth[10] = 0, eth[11] = 0x02;
	*(__be16 *)(eth + 12) = info->ethertype;
}

/* Where the frame's parts are and what egress_send needs beside the backend and settings (a
 * BPF call takes five arguments at most). */
struct egress_args {
	void *eth;   /* the Ethernet header */
	void *l3;    /* the IP header after the link layer */
	void *inner; /* the inner IP header (l3 itself for routed ingress) */
	__u32 inner_v6;
	__u32 flow_hash;     /* the UDP source port comes from it */
	__u32 backend_index; /* for its VNI and MTU */
	__u32 client_mtu;    /* set when egress_send says EGRESS_TOO_BIG (section 8c) */
};

/* egress_send's answer when the packet does not fit the next hop's MTU (section 8c). */
#define EGRESS_TOO_BIG 1

/* Section 8b: send the inner packet by the backend's method. 0, or -1 when the kernel refused
 * the room (the caller aborts), or EGRESS_TOO_BIG when it would not fit the next hop's MTU
 * (section 8c; the frame is unchanged and args->client_mtu says what would fit). A function
 * of its own (noinline), so that the GRE passthrough path, the established flow's, keeps its
 * code as it was. */
static __noinline int egress_send(struct xdp_md *ctx, struct egress_args *args,
				  const struct backend *backend, const struct settings *settings)
{
	__u32 l2_len = args->l3 - args->eth, strip_len = args->inner - args->l3, outer_len, extra;
	__u32 index = args->backend_index;
	__u8 egress = backend->egress;
	int outer_v6 = backend->family == BACKEND_FAMILY_IPV6;
	struct backend_tunnel *tunnel;
	struct backend_mtu *mtu;
	struct inner_info info;
	__be32 vni_be = 0;
	void *data_end;
	__u8 *out;

	if (inner_info_of(args->inner, args->inner_v6, (void *)(long)ctx->data_end, &info))
		return -1;
	outer_len = outer_v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	switch (egress) {
	case EGRESS_ROUTE:
		outer_len = 0;
		extra = 0;
		break;
	case EGRESS_IPIP:
		extra = 0;
		break;
	case EGRESS_VXLAN:
	case EGRESS_GENEVE:
		extra = UDP_TUNNEL_LEN;
		tunnel = bpf_map_lookup_elem(&backend_tunnels, &index);
		if (tunnel)
			vni_be = tunnel->vni_be;
		break;
	default:
		egress = EGRESS_GRE; /* a fresh 4-byte GRE header: routed ingress */
		extra = 4;
		break;
	}

	mtu = bpf_map_lookup_elem(&backend_mtu, &index);
	if (mtu && mtu->mtu && info.len + outer_len + extra > mtu->mtu) {
		args->client_mtu = mtu->mtu - (outer_len + extra);
		return EGRESS_TOO_BIG;
	}

	out = egress_move_link(ctx, l2_len, (int)strip_len - (int)(outer_len + extra),
			       egress == EGRESS_ROUTE ? info.ethertype
			       : outer_v6	      ? bpf_htons(ETH_P_IPV6)
						      : bpf_htons(ETH_P_IP),
			       backend->nexthop_dst_mac);
	if (!out)
		return -1;
	if (egress == EGRESS_ROUTE)
		return 0;
	data_end = (void *)(long)ctx->data_end;
	if (outer_v6) {
		if (out + sizeof(struct ipv6hdr) > (__u8 *)data_end)
			return -1;
		write_outer_ipv6((struct ipv6hdr *)out, info.tos, extra + info.len,
				 egress == EGRESS_IPIP ? info.ipproto
				 : egress == EGRESS_GRE ? IPPROTO_GRE
							: IPPROTO_UDP,
				 backend, settings);
		out += sizeof(struct ipv6hdr);
	} else {
		if (out + sizeof(struct iphdr) > (__u8 *)data_end)
			return -1;
		write_outer_ipv4((struct iphdr *)out, info.tos, extra + info.len,
				 egress == EGRESS_IPIP ? info.ipproto
				 : egress == EGRESS_GRE ? IPPROTO_GRE
							: IPPROTO_UDP,
				 backend, settings);
		out += sizeof(struct iphdr);
	}
	if (egress == EGRESS_GRE) {
		if (out + 4 > (__u8 *)data_end)
			return -1;
		*(__be32 *)out = bpf_htonl(bpf_ntohs(info.ethertype)); /* flags 0, the protocol */
	} else if (egress != EGRESS_IPIP) {
		if (out + UDP_TUNNEL_LEN > (__u8 *)data_end)
			return -1;
		write_udp_tunnel(out, egress, vni_be, args->flow_hash, &info);
	}
	return 0;
}

#endif /* RUSTY_RAIL_EGRESS_H */
