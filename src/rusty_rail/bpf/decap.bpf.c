// SPDX-License-Identifier: Apache-2.0
/* Server-side GRE decapsulation in XDP, for hosts without (or instead of) kernel GRE tunnels:
 * GRE from an allowed LB prefix to a local address loses its outer IPv4 + GRE headers and
 * goes on to the kernel stack as the inner packet, on the same interface. Everything else
 * passes untouched. docs/decap.md is the operator's page; rusty_rail/decap.py loads this. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "gre_parse.h"

/* Per-reason outcomes, the index into decap_stats (rusty_rail.decap.DecapStat). Every frame
 * counts once, by one packet and its length as received. */
enum decap_stat {
	DECAP_DECAPSULATED = 0,
	DECAP_PASS_NOT_IP = 1,	       /* not IPv4 or IPv6, or an Ethernet header cut short */
	DECAP_PASS_NOT_GRE = 2,	       /* IP, but not protocol 47 */
	DECAP_PASS_NOT_LOCAL = 3,      /* GRE to an address outside decap_local */
	DECAP_PASS_SOURCE_DENIED = 4,  /* GRE from an address outside decap_allowed */
	DECAP_PASS_OUTER_FRAGMENT = 5, /* a fragment of a GRE packet: only the stack reassembles */
	DECAP_PASS_MALFORMED = 6,      /* outer IPv4, GRE or inner IPv4 cut short or inconsistent */
	DECAP_PASS_UNSUPPORTED = 7,    /* GRE version != 0, payload not IPv4, outer IPv6 */
	DECAP_PASS_ERROR = 8,	       /* the kernel refused to move the packet start */
	DECAP_STAT_COUNT = 9,
};

struct decap_counter {
	__u64 packets;
	__u64 bytes;
};

/* An IPv4 prefix as LPM tries key it: the prefix length, then the address in network order. */
struct decap_prefix {
	__u32 prefixlen;
	__be32 addr_be;
};

#define DECAP_MAX_ALLOWED 1024
#define DECAP_MAX_LOCAL 256

#define ECN_MASK 0x03
#define ECN_NOT_ECT 0x00
#define ECN_CE 0x03

/* Outer sources whose GRE is decapsulated: the LB nodes' prefixes. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, DECAP_MAX_ALLOWED);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct decap_prefix);
	__type(value, __u32);
} decap_allowed SEC(".maps");

/* Outer destinations that are this host: its tunnel endpoint addresses, or 0.0.0.0/0. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, DECAP_MAX_LOCAL);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct decap_prefix);
	__type(value, __u32);
} decap_local SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DECAP_STAT_COUNT);
	__type(key, __u32);
	__type(value, struct decap_counter);
} decap_stats SEC(".maps");

static __always_inline int count(enum decap_stat stat, __u64 frame_len, int verdict)
{
	__u32 key = stat;
	struct decap_counter *counter = bpf_map_lookup_elem(&decap_stats, &key);

	if (counter) {
		counter->packets++;
		counter->bytes += frame_len;
	}
	return verdict;
}

static __always_inline int prefix_match(void *trie, __be32 addr)
{
	struct decap_prefix key = { .prefixlen = 32, .addr_be = addr };

	return bpf_map_lookup_elem(trie, &key) != NULL;
}

/* The inner IPv4 packet must be whole within the GRE payload (`avail` bytes): the stack
 * would otherwise receive a packet that its outer header said was something else. */
static __always_inline int inner_ipv4_ok(struct gp_cursor *c, __u32 avail)
{
	struct iphdr *inner = c->pos;
	__u32 total_len;

	if (avail < sizeof(*inner) || (void *)(inner + 1) > c->end)
		return 0;
	if (inner->version != 4 || inner->ihl < 5)
		return 0;
	total_len = bpf_ntohs(inner->tot_len);
	return total_len >= inner->ihl * 4u && total_len <= avail;
}

/* RFC 6040 (normal mode): congestion marked on the outer header between the LB and here
 * must not be lost with it. Only an ECN-capable inner packet can carry the mark; a Not-ECT
 * one is left as it is (RFC 6040 would drop it; this program never drops). */
static __always_inline void copy_congestion_mark(struct iphdr *inner, __u8 outer_tos)
{
	__u8 inner_ecn = inner->tos & ECN_MASK;
	__be16 old_word, new_word;

	if ((outer_tos & ECN_MASK) != ECN_CE || inner_ecn == ECN_NOT_ECT || inner_ecn == ECN_CE)
		return;
	old_word = *(__be16 *)inner; /* version/IHL and TOS */
	inner->tos |= ECN_CE;
	new_word = *(__be16 *)inner;
	inner->check = gp_csum_replace(inner->check, old_word, new_word);
}

/* Move the Ethernet header (and its VLAN tags, `l2_len` bytes) forward by `strip` bytes onto
 * the start of the inner packet, then drop what is before it. The copies have constant sizes
 * because the verifier wants them so. Returns 0, or -1 when the kernel refused. */
static __always_inline int strip_outer(struct xdp_md *ctx, __u32 l2_len, __u32 strip)
{
	__u8 l2[ETH_HLEN + GP_MAX_VLAN_TAGS * 4];
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (data + sizeof(l2) > data_end) /* true whenever we get here: outer IP + GRE follow */
		return -1;
	__builtin_memcpy(l2, data, sizeof(l2));
	if (bpf_xdp_adjust_head(ctx, (int)strip))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + sizeof(l2) > data_end) /* the inner IPv4 header alone is 20 bytes */
		return -1;
	/* The EtherType stays 0x0800: inner IPv4 is all that is decapsulated so far. */
	if (l2_len == ETH_HLEN)
		__builtin_memcpy(data, l2, ETH_HLEN);
	else if (l2_len == ETH_HLEN + 4)
		__builtin_memcpy(data, l2, ETH_HLEN + 4);
	else
		__builtin_memcpy(data, l2, ETH_HLEN + 8);
	return 0;
}

SEC("xdp")
int xdp_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 frame_len = data_end - data;
	struct gp_cursor c = { .pos = data, .end = data_end };
	struct iphdr *outer;
	__u32 l2_len = 0, ip_payload, gre_len = 0, strip;
	__be16 gre_protocol = 0;
	enum gp_result result;
	int ethertype;

	ethertype = gp_parse_ethernet(&c, &l2_len);
	if (ethertype == bpf_htons(ETH_P_IPV6)) {
		__u8 *next_header = c.pos + 6;

		if ((void *)(next_header + 1) <= c.end && *next_header == GP_IPPROTO_GRE)
			return count(DECAP_PASS_UNSUPPORTED, frame_len, XDP_PASS);
		return count(DECAP_PASS_NOT_GRE, frame_len, XDP_PASS);
	}
	if (ethertype != bpf_htons(ETH_P_IP))
		return count(DECAP_PASS_NOT_IP, frame_len, XDP_PASS);

	if (gp_parse_ipv4(&c, &outer, &ip_payload) != GP_OK)
		return count(DECAP_PASS_MALFORMED, frame_len, XDP_PASS);
	if (outer->protocol != GP_IPPROTO_GRE)
		return count(DECAP_PASS_NOT_GRE, frame_len, XDP_PASS);
	if (!prefix_match(&decap_local, outer->daddr))
		return count(DECAP_PASS_NOT_LOCAL, frame_len, XDP_PASS);
	if (!prefix_match(&decap_allowed, outer->saddr))
		return count(DECAP_PASS_SOURCE_DENIED, frame_len, XDP_PASS);
	if (outer->frag_off & GP_IP_FRAGMENT)
		return count(DECAP_PASS_OUTER_FRAGMENT, frame_len, XDP_PASS);

	result = gp_parse_gre(&c, ip_payload, &gre_protocol, &gre_len);
	if (result == GP_UNSUPPORTED)
		return count(DECAP_PASS_UNSUPPORTED, frame_len, XDP_PASS);
	if (result != GP_OK)
		return count(DECAP_PASS_MALFORMED, frame_len, XDP_PASS);
	if (gre_protocol != bpf_htons(ETH_P_IP))
		return count(DECAP_PASS_UNSUPPORTED, frame_len, XDP_PASS);
	if (!inner_ipv4_ok(&c, ip_payload - gre_len))
		return count(DECAP_PASS_MALFORMED, frame_len, XDP_PASS);

	/* Past this point the frame is ours: nothing above modified it. */
	if ((void *)c.pos + sizeof(struct iphdr) <= c.end)
		copy_congestion_mark(c.pos, outer->tos);
	strip = outer->ihl * 4 + gre_len;
	if (strip_outer(ctx, l2_len, strip))
		return count(DECAP_PASS_ERROR, frame_len, XDP_PASS);
	return count(DECAP_DECAPSULATED, frame_len, XDP_PASS);
}

char LICENSE[] SEC("license") = "GPL";
