/* SPDX-License-Identifier: Apache-2.0 */
/* The parsing the test-bed router (router.bpf.c) and the server decap (decap.bpf.c) share:
 * Ethernet with VLAN tags, a validated IPv4 header, the GRE base header, IPv4 checksums.
 * Names carry a gp_ prefix so this header never collides with the balancer's parse.h. */
#ifndef RUSTY_RAIL_GRE_PARSE_H
#define RUSTY_RAIL_GRE_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define GP_MAX_VLAN_TAGS 2
#define GP_IPPROTO_GRE 47

#define GP_IP_DF bpf_htons(0x4000)
#define GP_IP_FRAGMENT bpf_htons(0x3FFF) /* more-fragments flag and fragment offset */

/* GRE flags in host order (RFC 2784, RFC 2890; R, s and recursion from RFC 1701). */
#define GP_GRE_C 0x8000
#define GP_GRE_R 0x4000
#define GP_GRE_K 0x2000
#define GP_GRE_S 0x1000
#define GP_GRE_SSR 0x0800
#define GP_GRE_RECURSION 0x0700
#define GP_GRE_VERSION 0x0007

/* A parser's verdict on a header. */
enum gp_result {
	GP_OK = 0,
	GP_MALFORMED = 1,   /* cut short or contradicting itself */
	GP_UNSUPPORTED = 2, /* well formed, but nothing this program handles */
};

/* Where parsing stands: `pos` the next header, `end` the frame's end (the bound the verifier
 * accepts). Bounds the headers themselves set (an IPv4 total length) are checked as lengths. */
struct gp_cursor {
	void *pos;
	void *end;
};

struct gp_vlan_tag {
	__be16 tci;
	__be16 ethertype;
};

struct gp_gre_base {
	__be16 flags_version;
	__be16 protocol;
};

/* Ethernet and up to GP_MAX_VLAN_TAGS tags. Returns the EtherType after the tags (network
 * order) and the header length in *l2_len, or -1 for a short frame or a third tag. */
static __always_inline int gp_parse_ethernet(struct gp_cursor *c, __u32 *l2_len)
{
	struct ethhdr *eth = c->pos;
	__be16 ethertype;
	__u32 len = sizeof(*eth);

	if ((void *)(eth + 1) > c->end)
		return -1;
	ethertype = eth->h_proto;
	c->pos = eth + 1;

#pragma unroll
	for (int i = 0; i < GP_MAX_VLAN_TAGS; i++) {
		struct gp_vlan_tag *tag = c->pos;

		if (ethertype != bpf_htons(ETH_P_8021Q) && ethertype != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(tag + 1) > c->end)
			return -1;
		ethertype = tag->ethertype;
		c->pos = tag + 1;
		len += sizeof(*tag);
	}
	if (ethertype == bpf_htons(ETH_P_8021Q) || ethertype == bpf_htons(ETH_P_8021AD))
		return -1;
	*l2_len = len;
	return ethertype;
}

/* An IPv4 header whose fields agree with the frame: version 4, IHL >= 5, the header and the
 * total length inside the frame (bytes after the total length are link padding). On GP_OK
 * the cursor is past the header (options included), *ip points at it and *payload_len is
 * total length - header length. */
static __always_inline enum gp_result gp_parse_ipv4(struct gp_cursor *c, struct iphdr **ip_out,
						      __u32 *payload_len)
{
	struct iphdr *ip = c->pos;
	__u32 header_len, total_len, avail;

	if ((void *)(ip + 1) > c->end)
		return GP_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return GP_MALFORMED;
	header_len = ip->ihl * 4;
	avail = c->end - (void *)ip;
	total_len = bpf_ntohs(ip->tot_len);
	if (header_len > avail || total_len < header_len || total_len > avail)
		return GP_MALFORMED;
	if ((void *)ip + header_len > c->end) /* known already; the verifier needs it said */
		return GP_MALFORMED;
	c->pos = (void *)ip + header_len;
	*ip_out = ip;
	*payload_len = total_len - header_len;
	return GP_OK;
}

/* The GRE header of RFC 2784 with the RFC 2890 key and sequence fields, within `avail`
 * bytes. Version != 0 is unsupported (PPTP's enhanced GRE belongs to the host); R, s or
 * recursion bits are malformed (RFC 2784 says discard). The optional fields are skipped, not
 * interpreted. On GP_OK the cursor is past the header and *header_len says how long it was. */
static __always_inline enum gp_result gp_parse_gre(struct gp_cursor *c, __u32 avail,
						     __be16 *protocol, __u32 *header_len)
{
	struct gp_gre_base *gre = c->pos;
	__u16 flags;
	__u32 len = sizeof(*gre);

	if (avail < sizeof(*gre) || (void *)(gre + 1) > c->end)
		return GP_MALFORMED;
	flags = bpf_ntohs(gre->flags_version);
	if (flags & GP_GRE_VERSION)
		return GP_UNSUPPORTED;
	if (flags & (GP_GRE_R | GP_GRE_SSR | GP_GRE_RECURSION))
		return GP_MALFORMED;
	if (flags & GP_GRE_C)
		len += 4;
	if (flags & GP_GRE_K)
		len += 4;
	if (flags & GP_GRE_S)
		len += 4;
	if (len > avail || (void *)gre + len > c->end)
		return GP_MALFORMED;
	*protocol = gre->protocol;
	*header_len = len;
	c->pos = (void *)gre + len;
	return GP_OK;
}

/* The ones'-complement sum folded to 16 bits, complemented: the value to store. */
static __always_inline __u16 gp_csum_fold(__u32 sum)
{
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	return (__u16)~sum;
}

/* The header checksum of a 20-byte IPv4 header (built on the stack, checksum field 0). */
static __always_inline __be16 gp_ipv4_checksum(const struct iphdr *ip)
{
	const __u16 *words = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += words[i];
	/* Summing words as loaded (not byte-swapped) gives the checksum in network order. */
	return (__be16)gp_csum_fold(sum);
}

/* RFC 1624 equation 3: the checksum after one 16-bit word changed from `old` to `new`
 * (all three in network order, as they sit in the packet). */
static __always_inline __be16 gp_csum_replace(__be16 check, __be16 old, __be16 new)
{
	__u32 sum = (__u16)~check + (__u32)(__u16)~old + (__u32)new;

	return (__be16)gp_csum_fold(sum);
}

#endif /* RUSTY_RAIL_GRE_PARSE_H */
