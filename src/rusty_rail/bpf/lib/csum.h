/* SPDX-License-Identifier: Apache-2.0 */
/* The Internet checksum (RFC 1071) and its incremental update (RFC 1624 equation 3:
 * HC' = ~(~HC + ~m + m')). Ones'-complement sums do not care about byte order, so words are
 * summed as loaded and the result is in network order. */
#ifndef RUSTY_RAIL_LIB_CSUM_H
#define RUSTY_RAIL_LIB_CSUM_H

#include <linux/ip.h>
#include <linux/types.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/* Adds the change of one 32-bit field (two 16-bit words) to a running sum. */
static __always_inline __u32 csum_add_change32(__u32 sum, __u32 old, __u32 new)
{
	old = ~old;
	return sum + (old & 0xFFFF) + (old >> 16) + (new & 0xFFFF) + (new >> 16);
}

/* Adds the change of one 16-bit word to a running sum. */
static __always_inline __u32 csum_add_change16(__u32 sum, __u16 old, __u16 new)
{
	return sum + (__u16)~old + new;
}

/* Folds the carries back in; two rounds suffice for a sum of a few dozen 16-bit words. The
 * result is the sum, not yet complemented. */
static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	return (__u16)sum;
}

/* A checksum field after one 16-bit word it covers changed from `old` to `new` (all three as
 * they sit in the packet). */
static __always_inline __sum16 csum_replace16(__sum16 check, __be16 old, __be16 new)
{
	return (__sum16)(__u16)~csum_fold(csum_add_change16((__u16)~check, old, new));
}

/* The header checksum of a 20-byte IPv4 header (no options) whose checksum field is 0. */
static __always_inline __sum16 ipv4_header_checksum(const struct iphdr *ip)
{
	const __u16 *words = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += words[i];
	return (__sum16)(__u16)~csum_fold(sum);
}

/* The two 16-bit words of a 32-bit value as it sits in the packet, summed. */
static __always_inline __u32 csum_halves(__u32 word)
{
	return (word & 0xFFFF) + (word >> 16);
}

/* Writes an option-less IPv4 header with DF set and ID 0 (an atomic datagram, RFC 6864) as
 * whole words, its checksum summed from the values in registers instead of read back from the
 * packet after field-by-field stores: the balancer's outer headers and ICMP errors. */
static __always_inline void ipv4_header_write(struct iphdr *ip, __u8 tos, __u16 tot_len,
					      __u8 ttl, __u8 protocol, __be32 saddr,
					      __be32 daddr)
{
	__be32 word0 = bpf_htonl(0x45000000u | (__u32)tos << 16 | tot_len);
	__be32 word1 = bpf_htonl(0x4000u);
	__be16 ttl_protocol = bpf_htons((__u16)ttl << 8 | protocol);
	__u32 sum = csum_halves(word0) + csum_halves(word1) + ttl_protocol + csum_halves(saddr) +
		    csum_halves(daddr);

	((__be32 *)ip)[0] = word0;
	((__be32 *)ip)[1] = word1;
	((__be16 *)ip)[4] = ttl_protocol;
	ip->check = (__sum16)(__u16)~csum_fold(sum);
	ip->saddr = saddr;
	ip->daddr = daddr;
}

#endif /* RUSTY_RAIL_LIB_CSUM_H */
