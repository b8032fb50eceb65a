// SPDX-License-Identifier: Apache-2.0
/* Server-side GRE decapsulation in XDP, for hosts without (or instead of) kernel GRE tunnels:
 * GRE from an allowed LB prefix to a local address loses its outer IPv4 + GRE headers and
 * goes on to the kernel stack as the inner packet, on the same interface. Everything else
 * passes untouched. docs/decap.md is the operator's page; rusty_rail/decap/agent.py loads this. */
#include "lib/csum.h"
#include "lib/lpm.h"
#include "lib/parse.h"
#include "lib/stats.h"
#include "lib/uapi.h"

/* Per-reason outcomes, the index into decap_stats (rusty_rail.decap.agent.DecapStat). Every
 * frame counts once, by one packet and its length as received. */
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

#define DECAP_MAX_ALLOWED 1024
#define DECAP_MAX_LOCAL 256

/* The ECN field of the TOS byte (RFC 3168). uapi has no names for it (INET_ECN_* live in the
 * kernel's internal net/inet_ecn.h). */
#define ECN_MASK 0x03
#define ECN_NOT_ECT 0x00
#define ECN_CE 0x03

/* Outer sources whose GRE is decapsulated: the LB nodes' prefixes. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, DECAP_MAX_ALLOWED);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipv4_lpm_key);
	__type(value, __u32);
} decap_allowed SEC(".maps");

/* Outer destinations that are this host: its tunnel endpoint addresses, or 0.0.0.0/0. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, DECAP_MAX_LOCAL);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipv4_lpm_key);
	__type(value, __u32);
} decap_local SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DECAP_STAT_COUNT);
	__type(key, __u32);
	__type(value, struct counter);
} decap_stats SEC(".maps");

/* Ends the journey of a frame: counted by reason, passed on. */
static __always_inline int pass(enum decap_stat stat, __u64 frame_len)
{
	return count_verdict(&decap_stats, stat, frame_len, XDP_PASS);
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
	inner->check = csum_replace16(inner->check, old_word, new_word);
}

/* Move the Ethernet header (and its VLAN tags, `l2_len` bytes) forward by `strip` bytes onto
 * the start of the inner packet, then drop what is before it. The copies have constant sizes
 * because the verifier wants them so. Returns 0, or -1 when the kernel refused. */
static __always_inline int strip_outer(struct xdp_md *ctx, __u32 l2_len, __u32 strip)
{
	__u8 l2[ETH_HLEN + VLAN_MAX_TAGS * sizeof(struct vlan_tag)];
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
	struct cursor c = cursor_start(data, data_end);
	struct iphdr *outer, *inner;
	struct ipv6hdr *ip6;
	struct ethhdr *eth;
	enum parse_result result;
	__u32 l2_len, strip;
	__be16 gre_protocol = 0;
	int ethertype;

	ethertype = parse_ethernet(&c, &eth);
	if (ethertype == bpf_htons(ETH_P_IPV6)) {
		if (parse_ipv6(&c, &ip6) == PARSE_OK && ip6->nexthdr == IPPROTO_GRE)
			return pass(DECAP_PASS_UNSUPPORTED, frame_len);
		return pass(DECAP_PASS_NOT_GRE, frame_len);
	}
	if (ethertype != bpf_htons(ETH_P_IP))
		return pass(DECAP_PASS_NOT_IP, frame_len);
	l2_len = c.pos - data;

	if (parse_ipv4(&c, &outer) != PARSE_OK)
		return pass(DECAP_PASS_MALFORMED, frame_len);
	if (outer->protocol != IPPROTO_GRE)
		return pass(DECAP_PASS_NOT_GRE, frame_len);
	if (!ipv4_lpm_contains(&decap_local, outer->daddr))
		return pass(DECAP_PASS_NOT_LOCAL, frame_len);
	if (!ipv4_lpm_contains(&decap_allowed, outer->saddr))
		return pass(DECAP_PASS_SOURCE_DENIED, frame_len);
	if (ipv4_is_fragment(outer))
		return pass(DECAP_PASS_OUTER_FRAGMENT, frame_len);
	ipv4_enter_payload(&c, outer);

	result = parse_gre(&c, &gre_protocol);
	if (result == PARSE_UNSUPPORTED)
		return pass(DECAP_PASS_UNSUPPORTED, frame_len);
	if (result != PARSE_OK)
		return pass(DECAP_PASS_MALFORMED, frame_len);
	if (gre_protocol != bpf_htons(ETH_P_IP))
		return pass(DECAP_PASS_UNSUPPORTED, frame_len);
	/* The inner IPv4 packet must be whole within the GRE payload: the stack would otherwise
	 * receive a packet that its outer header said was something else. */
	if (parse_ipv4(&c, &inner) != PARSE_OK)
		return pass(DECAP_PASS_MALFORMED, frame_len);

	/* Past this point the frame is ours: nothing above modified it. */
	copy_congestion_mark(inner, outer->tos);
	strip = c.pos - (void *)outer;
	if (strip_outer(ctx, l2_len, strip))
		return pass(DECAP_PASS_ERROR, frame_len);
	return pass(DECAP_DECAPSULATED, frame_len);
}

char LICENSE[] SEC("license") = "GPL";
