/* SPDX-License-Identifier: Apache-2.0 */
/* Path MTU (docs/packet-path.md section 8c): a packet an egress method would make longer than
 * the next hop's MTU is not sent. The frame becomes an ICMP fragmentation-needed or ICMPv6
 * packet-too-big for the client, sent back where it came from, within the VIP's rate; or it is
 * dropped (inner IPv4 without DF, or the rate spent). rusty_rail/model/pmtu.py is its twin. */
#ifndef RUSTY_RAIL_PMTU_H
#define RUSTY_RAIL_PMTU_H

#include <linux/icmp.h>
#include <linux/icmpv6.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>

#include "balancer_maps.h"
#include "balancer_types.h"
#include "egress.h"
#include "lib/csum.h"

#define TOO_BIG_BURST 64
#define TOO_BIG_REFILL_SHIFT 20 /* one token every 2^20 ns */
#define ICMP_ERROR_TOS 0xC0
#define ICMP_ERROR_TTL 64
#define ICMP_ERROR_HLEN 8
#define IPV4_QUOTE_AFTER_HEADER 8
#define IPV6_QUOTE_MAX (1280 - 40 - ICMP_ERROR_HLEN) /* 1232: the error fits in 1280 */
#define QUOTE_WORDS_MAX ((ICMP_ERROR_HLEN + IPV6_QUOTE_MAX) / 4) /* the ICMPv6 header and quote */

/* The VIP's bucket on this CPU, refilled, gives a token: 1, or 0 when none is left. */
static __always_inline int too_big_token(__u32 vip_index)
{
	struct too_big_bucket *bucket = bpf_map_lookup_elem(&too_big_buckets, &vip_index);
	__u64 now, added;

	if (!bucket)
		return 0;
	now = bpf_ktime_get_ns();
	if (now > bucket->stamp_ns) {
		added = (now - bucket->stamp_ns) >> TOO_BIG_REFILL_SHIFT;
		if (added) {
			added += bucket->tokens;
			bucket->tokens = added > TOO_BIG_BURST ? TOO_BIG_BURST : added;
			bucket->stamp_ns = now;
		}
	}
	if (!bucket->tokens)
		return 0;
	bucket->tokens -= 1;
	return 1;
}

/* The ones'-complement sum, as loaded (lib/csum.h) and not yet folded, of `words` (at most
 * QUOTE_WORDS_MAX) 32-bit words from `offset` (at most 128) into the frame. A global function:
 * the verifier checks its loop once, not once for every path that calls it. */
__noinline __u64 too_big_sum(struct xdp_md *ctx, __u32 offset, __u32 words)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	__u64 sum = 0;
	__u8 *p;

	if (offset > 128)
		return 0;
	p = data + offset;
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < QUOTE_WORDS_MAX; i++) {
		const __u32 *word = (const __u32 *)(p + i * 4);

		if (i >= words || (const void *)(word + 1) > data_end)
			break;
		sum += *word;
	}
	return sum;
}

/* A 64-bit running sum folded to the 16-bit checksum to store. */
static __always_inline __sum16 csum_finish64(__u64 sum)
{
	sum = (sum & 0xFFFFFFFF) + (sum >> 32);
	sum = (sum & 0xFFFFFFFF) + (sum >> 32);
	return (__sum16)(__u16)~csum_fold((__u32)sum);
}

/* too_big_answer's `layout`: where the inner packet is in the frame. */
#define TOO_BIG_LAYOUT(l2_len, strip_len, inner_v6) ((l2_len) | (strip_len) << 8 | (inner_v6) << 16)

/* Section 8c: the inner packet is too big for the next hop; the client may send `client_mtu`.
 * `layout` (TOO_BIG_LAYOUT) says where the inner packet is: after `l2_len` bytes of Ethernet and
 * VLAN tags and `strip_len` bytes of outer headers (0 for routed ingress), IPv6 or not. Returns
 * the stat (STAT_TOO_BIG_*), or -1 when the frame cannot be read or moved (the caller aborts).
 * On STAT_TOO_BIG_ICMP the frame is the ICMP error. A global function: verified once, on a
 * stack of its own beside the balancer's (not below egress_send's). */
__noinline int too_big_answer(struct xdp_md *ctx, __u32 layout, __u32 vip_index,
			      __u32 client_mtu)
{
	__u32 l2_len = layout & 0xFF, strip_len = (layout >> 8) & 0xFF, inner_v6 = layout >> 16;
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	__u32 inner_off = l2_len + strip_len, header_len, quote_len, inner_len, frame_len;
	__u32 macs[3];
	__u64 sum;
	__u8 *out;

	if (inner_v6) {
		struct ipv6hdr *ip6 = data + inner_off;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		inner_len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
		header_len = sizeof(struct ipv6hdr) + ICMP_ERROR_HLEN;
		quote_len = inner_len < IPV6_QUOTE_MAX ? inner_len : IPV6_QUOTE_MAX;
	} else {
		struct iphdr *ip = data + inner_off;

		if ((void *)(ip + 1) > data_end)
			return -1;
		if (!(ip->frag_off & bpf_htons(0x4000)))
			return STAT_TOO_BIG_NO_DF;
		inner_len = bpf_ntohs(ip->tot_len);
		header_len = sizeof(struct iphdr) + ICMP_ERROR_HLEN;
		quote_len = ip->ihl * 4 + IPV4_QUOTE_AFTER_HEADER;
		if (quote_len > inner_len)
			quote_len = inner_len;
	}
	if (!too_big_token(vip_index))
		return STAT_TOO_BIG_LIMITED;
	quote_len &= ~3u;

	/* Back where it came from: the arriving frame's MAC addresses swapped. */
	if (data + ETH_HLEN > data_end)
		return -1;
	__builtin_memcpy(macs, data + ETH_ALEN, ETH_ALEN);
	__builtin_memcpy((__u8 *)macs + ETH_ALEN, data, ETH_ALEN);

	/* Cut the frame after the quote, then put the headers in front of it. */
	frame_len = data_end - data;
	if (inner_off + quote_len > frame_len)
		return -1;
	if (inner_off + quote_len < frame_len &&
	    bpf_xdp_adjust_tail(ctx, (int)(inner_off + quote_len) - (int)frame_len))
		return -1;
	out = egress_move_link(ctx, l2_len, (int)strip_len - (int)header_len,
			       inner_v6 ? bpf_htons(ETH_P_IPV6) : bpf_htons(ETH_P_IP),
			       (const __u8 *)macs);
	if (!out)
		return -1;
	data_end = (void *)(long)ctx->data_end;

	if (inner_v6) {
		struct ipv6hdr *ip6 = (struct ipv6hdr *)out;
		struct icmp6hdr *icmp6 = (struct icmp6hdr *)(ip6 + 1);
		struct ipv6hdr *quoted = (struct ipv6hdr *)(icmp6 + 1);
		__u32 *addrs;

		if ((void *)(quoted + 1) > data_end)
			return -1;
		*(__be32 *)ip6 = bpf_htonl(6 << 28);
		ip6->payload_len = bpf_htons(ICMP_ERROR_HLEN + quote_len);
		ip6->nexthdr = IPPROTO_ICMPV6;
		ip6->hop_limit = ICMP_ERROR_TTL;
		ip6->saddr = quoted->daddr;
		ip6->daddr = quoted->saddr;
		icmp6->icmp6_type = ICMPV6_PKT_TOOBIG;
		icmp6->icmp6_code = 0;
		icmp6->icmp6_cksum = 0;
		icmp6->icmp6_mtu = bpf_htonl(client_mtu);
		addrs = (__u32 *)&ip6->saddr;
		sum = (__u64)addrs[0] + addrs[1] + addrs[2] + addrs[3] + addrs[4] + addrs[5] +
		      addrs[6] + addrs[7];
		sum += (__u64)bpf_htonl(ICMP_ERROR_HLEN + quote_len) + bpf_htonl(IPPROTO_ICMPV6);
		sum += too_big_sum(ctx, l2_len + sizeof(*ip6), (ICMP_ERROR_HLEN + quote_len) / 4);
		icmp6->icmp6_cksum = csum_finish64(sum);
		return STAT_TOO_BIG_ICMP;
	}
	struct iphdr *ip = (struct iphdr *)out;
	struct icmphdr *icmp = (struct icmphdr *)(ip + 1);
	struct iphdr *quoted = (struct iphdr *)(icmp + 1);

	if ((void *)(quoted + 1) > data_end)
		return -1;
	ipv4_header_write(ip, ICMP_ERROR_TOS, header_len + quote_len, ICMP_ERROR_TTL, IPPROTO_ICMP,
			  quoted->daddr, quoted->saddr);
	icmp->type = ICMP_DEST_UNREACH;
	icmp->code = ICMP_FRAG_NEEDED;
	icmp->checksum = 0;
	icmp->un.frag.__unused = 0;
	icmp->un.frag.mtu = bpf_htons(client_mtu);
	sum = too_big_sum(ctx, l2_len + sizeof(*ip), (ICMP_ERROR_HLEN + quote_len) / 4);
	icmp->checksum = csum_finish64(sum);
	return STAT_TOO_BIG_ICMP;
}

#endif /* RUSTY_RAIL_PMTU_H */
