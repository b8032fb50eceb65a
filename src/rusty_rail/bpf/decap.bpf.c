// SPDX-License-Identifier: Apache-2.0
/* Server-side decapsulation in XDP, for hosts without (or instead of) kernel tunnels: GRE,
 * IPIP, VXLAN or GENEVE (the methods the agent turned on) from an allowed LB prefix to a local
 * address loses its outer IPv4 or IPv6 and tunnel headers (and the inner Ethernet header of
 * VXLAN and GENEVE) and goes on to the kernel stack as the inner IPv4 or IPv6 packet, on the
 * same interface. Everything else passes untouched. docs/decap.md is the operator's page;
 * rusty_rail/decap/agent.py loads this. */
#include "lib/csum.h"
#include "lib/lpm.h"
#include "lib/parse.h"
#include "lib/parse_tunnels.h"
#include "lib/stats.h"
#include "lib/uapi.h"

/* Per-reason outcomes, the index into decap_stats (rusty_rail.decap.agent.DecapStat). Every
 * frame counts once, by one packet and its length as received. */
enum decap_stat {
	DECAP_DECAPSULATED = 0,
	DECAP_PASS_NOT_IP = 1,	       /* not IPv4 or IPv6, or an Ethernet header cut short */
	DECAP_PASS_NOT_GRE = 2,	       /* IP, but not of a method that is on (the name is older) */
	DECAP_PASS_NOT_LOCAL = 3,      /* GRE to an address outside decap_local */
	DECAP_PASS_SOURCE_DENIED = 4,  /* GRE from an address outside decap_allowed */
	DECAP_PASS_OUTER_FRAGMENT = 5, /* a fragment of a GRE packet: only the stack reassembles */
	DECAP_PASS_MALFORMED = 6,      /* outer IP, tunnel or inner IP cut short or inconsistent */
	DECAP_PASS_UNSUPPORTED = 7,    /* a tunnel version, flag or payload this does not take */
	DECAP_PASS_ERROR = 8,	       /* the kernel refused to move the packet start */
	DECAP_PASS_EXTENSION_HEADERS = 9, /* outer IPv6 with an extension header: not walked */
	DECAP_PASS_VNI_DENIED = 10,	  /* VXLAN or GENEVE with a VNI outside decap_vnis */
	DECAP_STAT_COUNT = 11,
};

#define DECAP_MAX_ALLOWED 1024
#define DECAP_MAX_LOCAL 256
#define DECAP_MAX_VNIS 4096

/* The methods taken, bits of decap_config.methods (rusty_rail.decap.maps.METHOD_BITS). A map
 * never written holds 0: GRE alone, what the versions before the other methods took. */
#define DECAP_GRE_OFF (1u << 0)
#define DECAP_IPIP (1u << 1)
#define DECAP_VXLAN (1u << 2)
#define DECAP_GENEVE (1u << 3)

struct decap_config {
	__u32 methods;	  /* DECAP_* bits */
	__u32 vni_filter; /* 1: only the VNIs in decap_vnis are taken; 0: any */
};

/* The one entry (key 0) of the agent's settings. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct decap_config);
} decap_config SEC(".maps");

/* The VNIs taken when decap_config.vni_filter is set (VXLAN and GENEVE alike). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DECAP_MAX_VNIS);
	__type(key, __u32);
	__type(value, __u32);
} decap_vnis SEC(".maps");

/* What an outer packet is, by its protocol (and UDP port): which method will unwrap it. */
enum decap_method {
	METHOD_NONE = 0, /* not a tunnel of a method that is on */
	METHOD_GRE,
	METHOD_IPIP,
	METHOD_VXLAN,
	METHOD_GENEVE,
	METHOD_MALFORMED, /* UDP whose header is cut short: its port cannot be read */
};

/* The ECN field of the TOS byte (RFC 3168). uapi has no names for it (INET_ECN_* live in the
 * kernel's internal net/inet_ecn.h). */
#define ECN_MASK 0x03
#define ECN_NOT_ECT 0x00
#define ECN_CE 0x03

/* The fragment offset of an IPv4 frag_off, network order: non-zero past the first fragment. */
#define IPV4_OFFSET_BE bpf_htons(0x1FFF)

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

/* The same two sets for outer IPv6: sources the LB nodes' IPv6 prefixes, destinations this
 * host's IPv6 tunnel endpoints (or ::/0). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, DECAP_MAX_ALLOWED);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipv6_lpm_key);
	__type(value, __u32);
} decap_allowed6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, DECAP_MAX_LOCAL);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipv6_lpm_key);
	__type(value, __u32);
} decap_local6 SEC(".maps");

/* Sized DECAP_STAT_COUNT; an agent adopting the smaller array of an earlier version (9 entries
 * before DECAP_PASS_EXTENSION_HEADERS, 10 before DECAP_PASS_VNI_DENIED) keeps it, and the
 * reasons past its end then go uncounted. */
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

/* The ECN field of an IPv6 header: the low two bits of the traffic class, which straddles
 * the first two bytes (version 4 bits, traffic class 8 bits, flow label 20 bits). */
static __always_inline __u8 ipv6_ecn(const struct ipv6hdr *ip6)
{
	return (ip6->flow_lbl[0] >> 4) & ECN_MASK;
}

/* RFC 6040 (normal mode): congestion marked on the outer header between the LB and here
 * must not be lost with it. Only an ECN-capable inner packet can carry the mark; a Not-ECT
 * one is left as it is (RFC 6040 would drop it; this program never drops). */
static __always_inline void copy_congestion_mark(struct iphdr *inner, __u8 outer_ecn)
{
	__u8 inner_ecn = inner->tos & ECN_MASK;
	__be16 old_word, new_word;

	if (outer_ecn != ECN_CE || inner_ecn == ECN_NOT_ECT || inner_ecn == ECN_CE)
		return;
	old_word = *(__be16 *)inner; /* version/IHL and TOS */
	inner->tos |= ECN_CE;
	new_word = *(__be16 *)inner;
	inner->check = csum_replace16(inner->check, old_word, new_word);
}

/* The same for an inner IPv6 packet, which has no header checksum to update. */
static __always_inline void copy_congestion_mark6(struct ipv6hdr *inner, __u8 outer_ecn)
{
	__u8 inner_ecn = ipv6_ecn(inner);

	if (outer_ecn != ECN_CE || inner_ecn == ECN_NOT_ECT || inner_ecn == ECN_CE)
		return;
	inner->flow_lbl[0] |= ECN_CE << 4;
}

/* The method an outer packet is of, from its IPv4 protocol or IPv6 next header and, for UDP,
 * its destination port, whether that method is on or not (method_taken says); the cursor is
 * at the outer payload and stays there. `later_fragment`: an IPv4 fragment past the first,
 * which has no UDP header. The settings are looked up only after this, so that the host's own
 * traffic pays nothing for them. */
static __always_inline enum decap_method method_of(const struct cursor *c, __u8 protocol,
						   int later_fragment)
{
	struct udphdr *udp = c->pos;

	if (protocol == IPPROTO_GRE)
		return METHOD_GRE;
	if (protocol == IPPROTO_IPIP || protocol == IPPROTO_IPV6)
		return METHOD_IPIP;
	if (protocol != IPPROTO_UDP || later_fragment)
		return METHOD_NONE;
	if (c->left < sizeof(*udp) || (void *)(udp + 1) > c->end)
		return METHOD_MALFORMED;
	if (udp->dest == bpf_htons(VXLAN_PORT))
		return METHOD_VXLAN;
	if (udp->dest == bpf_htons(GENEVE_PORT))
		return METHOD_GENEVE;
	return METHOD_NONE;
}

/* Whether decap_config.methods takes `method`: DECAP_DECAPSULATED to go on, or the reason to
 * pass. A UDP header cut short is malformed only when a UDP method is on; otherwise it is
 * host traffic like any other, not decap's business. */
static __always_inline enum decap_stat method_taken(enum decap_method method, __u32 methods)
{
	int on;

	switch (method) {
	case METHOD_GRE:
		on = !(methods & DECAP_GRE_OFF);
		break;
	case METHOD_IPIP:
		on = methods & DECAP_IPIP;
		break;
	case METHOD_VXLAN:
		on = methods & DECAP_VXLAN;
		break;
	case METHOD_GENEVE:
		on = methods & DECAP_GENEVE;
		break;
	case METHOD_MALFORMED:
		return methods & (DECAP_VXLAN | DECAP_GENEVE) ? DECAP_PASS_MALFORMED
							   : DECAP_PASS_NOT_GRE;
	default:
		on = 0;
	}
	return on ? DECAP_DECAPSULATED : DECAP_PASS_NOT_GRE;
}

static __always_inline enum decap_stat stat_of(enum parse_result result)
{
	return result == PARSE_UNSUPPORTED ? DECAP_PASS_UNSUPPORTED : DECAP_PASS_MALFORMED;
}

/* Through the method's own headers, from the outer payload to the inner packet. Returns
 * DECAP_DECAPSULATED when they are sound, with the cursor at the inner packet and
 * *inner_proto its EtherType (network order; the caller takes 0x0800 and 0x86DD only), or the
 * reason to pass the frame. */
static __always_inline enum decap_stat enter_tunnel(struct cursor *c, enum decap_method method,
						    __u8 protocol, __u32 vni_filter,
						    __be16 *inner_proto)
{
	enum parse_result result;
	__be16 payload_proto;
	struct udphdr *udp;
	__u32 vni = 0;

	if (method == METHOD_IPIP) {
		*inner_proto = protocol == IPPROTO_IPIP ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
		return DECAP_DECAPSULATED;
	}
	if (method == METHOD_GRE) {
		result = parse_gre(c, inner_proto);
		return result == PARSE_OK ? DECAP_DECAPSULATED : stat_of(result);
	}
	/* VXLAN and GENEVE: UDP (its checksum not verified, zero taken in both families). */
	if (parse_udp(c, &udp) != PARSE_OK)
		return DECAP_PASS_MALFORMED;
	if (method == METHOD_VXLAN) {
		result = parse_vxlan(c, &vni);
		payload_proto = bpf_htons(ETH_P_TEB);
	} else {
		result = parse_geneve(c, &payload_proto, &vni);
	}
	if (result != PARSE_OK)
		return stat_of(result);
	if (vni_filter && !bpf_map_lookup_elem(&decap_vnis, &vni))
		return DECAP_PASS_VNI_DENIED;
	if (payload_proto != bpf_htons(ETH_P_TEB)) {
		*inner_proto = payload_proto; /* GENEVE straight to IP */
		return DECAP_DECAPSULATED;
	}
	/* The inner Ethernet header goes with the rest: its addresses are not looked at. */
	if (parse_inner_ethernet(c, inner_proto) != PARSE_OK)
		return DECAP_PASS_MALFORMED;
	return DECAP_DECAPSULATED;
}

/* Move the Ethernet header (and its VLAN tags, `l2_len` bytes) forward by `strip` bytes onto
 * the start of the inner packet, then drop what is before it; its last EtherType becomes
 * `inner_ethertype` (the inner packet's family: 0x0800 or 0x86DD). The copies have constant sizes
 * because the verifier wants them so. Returns 0, or -1 when the kernel refused. */
static __always_inline int strip_outer(struct xdp_md *ctx, __u32 l2_len, __u32 strip,
				       __be16 inner_ethertype)
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
	if (data + sizeof(l2) > data_end) /* the inner IP header alone is 20 bytes or more */
		return -1;
	if (l2_len == ETH_HLEN) {
		__builtin_memcpy(data, l2, ETH_HLEN);
		*(__be16 *)(data + ETH_HLEN - 2) = inner_ethertype;
	} else if (l2_len == ETH_HLEN + 4) {
		__builtin_memcpy(data, l2, ETH_HLEN + 4);
		*(__be16 *)(data + ETH_HLEN + 4 - 2) = inner_ethertype;
	} else {
		__builtin_memcpy(data, l2, ETH_HLEN + 8);
		*(__be16 *)(data + ETH_HLEN + 8 - 2) = inner_ethertype;
	}
	return 0;
}

SEC("xdp")
int xdp_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 frame_len = data_end - data;
	struct cursor c = cursor_start(data, data_end);
	struct decap_config *config;
	struct ipv6hdr *outer6, *inner6;
	struct iphdr *outer, *inner;
	enum decap_method method;
	enum decap_stat stat;
	struct ethhdr *eth;
	__u32 l2_len, strip;
	__be16 inner_proto = 0;
	void *outer_start;
	__u8 outer_ecn, protocol;
	__u32 zero = 0;
	int ethertype;

	ethertype = parse_ethernet(&c, &eth);
	l2_len = c.pos - data;
	if (ethertype == bpf_htons(ETH_P_IP)) {
		if (parse_ipv4(&c, &outer) != PARSE_OK)
			return pass(DECAP_PASS_MALFORMED, frame_len);
		protocol = outer->protocol;
		ipv4_enter_payload(&c, outer);
		method = method_of(&c, protocol, (outer->frag_off & IPV4_OFFSET_BE) != 0);
		if (method == METHOD_NONE)
			return pass(DECAP_PASS_NOT_GRE, frame_len);
		config = bpf_map_lookup_elem(&decap_config, &zero);
		if (!config) /* an array's entry 0 is always there */
			return pass(DECAP_PASS_ERROR, frame_len);
		stat = method_taken(method, config->methods);
		if (stat != DECAP_DECAPSULATED)
			return pass(stat, frame_len);
		if (!ipv4_lpm_contains(&decap_local, outer->daddr))
			return pass(DECAP_PASS_NOT_LOCAL, frame_len);
		if (!ipv4_lpm_contains(&decap_allowed, outer->saddr))
			return pass(DECAP_PASS_SOURCE_DENIED, frame_len);
		if (ipv4_is_fragment(outer))
			return pass(DECAP_PASS_OUTER_FRAGMENT, frame_len);
		outer_start = outer;
		outer_ecn = outer->tos & ECN_MASK;
	} else if (ethertype == bpf_htons(ETH_P_IPV6)) {
		if (parse_ipv6_packet(&c, &outer6) != PARSE_OK)
			return pass(DECAP_PASS_MALFORMED, frame_len);
		/* parse_ipv6_packet checked the payload length: this cannot refuse. */
		(void)ipv6_enter_payload(&c, outer6);
		protocol = outer6->nexthdr;
		/* The tunnel directly after the fixed header only: extension headers (a fragment
		 * header among them) are not walked, and whatever follows them goes to the stack. */
		method = method_of(&c, protocol, 0);
		if (method == METHOD_NONE)
			return pass(ipv6_nexthdr_is_extension(protocol) ? DECAP_PASS_EXTENSION_HEADERS
									: DECAP_PASS_NOT_GRE,
				    frame_len);
		config = bpf_map_lookup_elem(&decap_config, &zero);
		if (!config) /* an array's entry 0 is always there */
			return pass(DECAP_PASS_ERROR, frame_len);
		stat = method_taken(method, config->methods);
		if (stat != DECAP_DECAPSULATED)
			return pass(stat, frame_len);
		if (!ipv6_lpm_contains(&decap_local6, &outer6->daddr))
			return pass(DECAP_PASS_NOT_LOCAL, frame_len);
		if (!ipv6_lpm_contains(&decap_allowed6, &outer6->saddr))
			return pass(DECAP_PASS_SOURCE_DENIED, frame_len);
		outer_start = outer6;
		outer_ecn = ipv6_ecn(outer6);
	} else {
		return pass(DECAP_PASS_NOT_IP, frame_len);
	}

	stat = enter_tunnel(&c, method, protocol, config->vni_filter, &inner_proto);
	if (stat != DECAP_DECAPSULATED)
		return pass(stat, frame_len);
	/* The inner packet must be whole within the tunnel's payload: the stack would otherwise
	 * receive a packet that its outer header said was something else. Past each check the
	 * frame is ours: nothing before it modified the frame. */
	if (inner_proto == bpf_htons(ETH_P_IP)) {
		if (parse_ipv4(&c, &inner) != PARSE_OK)
			return pass(DECAP_PASS_MALFORMED, frame_len);
		copy_congestion_mark(inner, outer_ecn);
	} else if (inner_proto == bpf_htons(ETH_P_IPV6)) {
		if (parse_ipv6_packet(&c, &inner6) != PARSE_OK)
			return pass(DECAP_PASS_MALFORMED, frame_len);
		copy_congestion_mark6(inner6, outer_ecn);
	} else {
		return pass(DECAP_PASS_UNSUPPORTED, frame_len);
	}

	strip = c.pos - outer_start;
	if (strip_outer(ctx, l2_len, strip, inner_proto))
		return pass(DECAP_PASS_ERROR, frame_len);
	return pass(DECAP_DECAPSULATED, frame_len);
}

char LICENSE[] SEC("license") = "GPL";
