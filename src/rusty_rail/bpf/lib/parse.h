/* SPDX-License-Identifier: Apache-2.0 */
/* Cursor-style header parsers for every program: Ethernet with VLAN tags, IPv4, IPv6 (and its
 * extension headers), GRE, UDP. Each checks its header's bounds once, says whether the header
 * is sound, and leaves the program's own rules (which counter, which verdict) to the program. */
#ifndef RUSTY_RAIL_LIB_PARSE_H
#define RUSTY_RAIL_LIB_PARSE_H

#include "uapi.h"

/* VLAN tags (802.1Q or 802.1ad) walked before the EtherType; a frame with more is refused.
 * A program may define it before including this header (0: untagged frames only). */
#ifndef VLAN_MAX_TAGS
#define VLAN_MAX_TAGS 2
#endif

/* The IPv4 flag and offset bits of frag_off, in network order. The uapi headers have none of
 * these (IP_DF, IP_MF and IP_OFFSET live in the kernel's internal net/ip.h). */
#define IPV4_DONT_FRAGMENT_BE bpf_htons(0x4000)
#define IPV4_FRAGMENT_BE bpf_htons(0x3FFF) /* more-fragments flag and fragment offset */

/* A parser's verdict on one header. */
enum parse_result {
	PARSE_OK = 0,
	PARSE_MALFORMED = 1,   /* cut short or contradicting itself */
	PARSE_UNSUPPORTED = 2, /* well formed, but not what the parser handles */
};

/* Where parsing stands. `pos` is the next header; `end` is the frame's end, the only bound the
 * verifier accepts; `left` is what the enclosing header allows from `pos` (an IPv4 total
 * length, a UDP length: link padding after it is not payload), or CURSOR_UNLIMITED before any
 * header set a length, when the frame's end is the only bound. Parsers check both. */
struct cursor {
	void *pos;
	void *end;
	__u32 left;
};

/* A constant, so that the compiler drops the `left` checks of the outermost headers. */
#define CURSOR_UNLIMITED 0xFFFFFFFFu

/* A VLAN tag as it sits after the MAC addresses. uapi has no struct for it (struct vlan_hdr
 * is kernel-internal, linux/if_vlan.h). */
struct vlan_tag {
	__be16 tci;
	__be16 ethertype;
};

/* The GRE base header of RFC 2784; the optional fields of RFC 2890 follow it. uapi has the
 * flags (linux/if_tunnel.h, network order) but no header struct. */
struct gre_header {
	__be16 flags_version;
	__be16 protocol;
};

/* The transport ports of TCP and UDP as they sit on the wire, source first. */
struct l4_ports {
	__be16 source;
	__be16 dest;
};

static __always_inline struct cursor cursor_start(void *data, void *data_end)
{
	struct cursor c = { .pos = data, .end = data_end, .left = CURSOR_UNLIMITED };

	return c;
}

static __always_inline void cursor_advance(struct cursor *c, __u32 bytes)
{
	c->pos += bytes;
	c->left -= bytes;
}

static __always_inline int is_vlan(__be16 ethertype)
{
	return ethertype == bpf_htons(ETH_P_8021Q) || ethertype == bpf_htons(ETH_P_8021AD);
}

/* Ethernet and up to VLAN_MAX_TAGS tags. Returns the EtherType after the tags (network
 * order), the cursor past them, or -1 when the frame is too short or has one tag too many. */
static __always_inline int parse_ethernet(struct cursor *c, struct ethhdr **eth_out)
{
	struct ethhdr *eth = c->pos;
	__be16 ethertype;

	if ((void *)(eth + 1) > c->end)
		return -1;
	*eth_out = eth;
	ethertype = eth->h_proto;
	c->pos = eth + 1; /* `left` stays unlimited: Ethernet declares no length */

#pragma unroll
	for (int i = 0; i < VLAN_MAX_TAGS; i++) {
		struct vlan_tag *tag = c->pos;

		if (!is_vlan(ethertype))
			break;
		if ((void *)(tag + 1) > c->end)
			return -1;
		ethertype = tag->ethertype;
		c->pos = tag + 1;
	}
	if (is_vlan(ethertype))
		return -1;
	return ethertype;
}

/* An IPv4 header whose fields agree with each other and with the cursor: version 4, IHL >= 5,
 * IHL * 4 <= total length <= c->left, and the total length within the frame. The cursor stays
 * at the header (ipv4_enter_payload moves it on), so a program can look at the header before
 * it decides. */
static __always_inline enum parse_result parse_ipv4(struct cursor *c, struct iphdr **ip_out)
{
	struct iphdr *ip = c->pos;
	__u32 header_len, total_len;

	if (c->left < sizeof(*ip) || (void *)(ip + 1) > c->end)
		return PARSE_MALFORMED;
	header_len = ip->ihl * 4;
	total_len = bpf_ntohs(ip->tot_len);
	if (ip->version != 4 || header_len < sizeof(*ip) || total_len < header_len ||
	    total_len > c->left || c->pos + total_len > c->end)
		return PARSE_MALFORMED;
	*ip_out = ip;
	return PARSE_OK;
}

/* Moves the cursor past a header parse_ipv4 accepted (options included); `left` becomes the
 * payload the total length declares. */
static __always_inline void ipv4_enter_payload(struct cursor *c, const struct iphdr *ip)
{
	__u32 header_len = ip->ihl * 4;

	c->pos += header_len;
	c->left = bpf_ntohs(ip->tot_len) - header_len;
}

static __always_inline int ipv4_is_fragment(const struct iphdr *ip)
{
	return (ip->frag_off & IPV4_FRAGMENT_BE) != 0;
}

/* The ports of an IPv4 packet parse_ipv4 accepted: PARSE_OK with *ports_out for TCP and UDP
 * that is not a fragment, PARSE_UNSUPPORTED for a packet without ports (a fragment or another
 * protocol), PARSE_MALFORMED when the total length or the frame ends before them. */
static __always_inline enum parse_result ipv4_l4_ports(const struct iphdr *ip, void *end,
						       struct l4_ports **ports_out)
{
	__u32 header_len = ip->ihl * 4;
	struct l4_ports *ports;

	if (ipv4_is_fragment(ip))
		return PARSE_UNSUPPORTED;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return PARSE_UNSUPPORTED;
	ports = (void *)ip + header_len;
	if (header_len + sizeof(*ports) > bpf_ntohs(ip->tot_len) || (void *)(ports + 1) > end)
		return PARSE_MALFORMED;
	*ports_out = ports;
	return PARSE_OK;
}

/* The fixed IPv6 header, present within the frame and the cursor; the cursor stays at it. The
 * caller reads nexthdr, version and payload_len as its rules need. */
static __always_inline enum parse_result parse_ipv6(struct cursor *c, struct ipv6hdr **ip6_out)
{
	struct ipv6hdr *ip6 = c->pos;

	if (c->left < sizeof(*ip6) || (void *)(ip6 + 1) > c->end)
		return PARSE_MALFORMED;
	*ip6_out = ip6;
	return PARSE_OK;
}

/* Moves the cursor past a header parse_ipv6 accepted; `left` becomes the payload length.
 * PARSE_MALFORMED when the payload length says more than the cursor allows. A payload length
 * of 0 is taken as it reads, no payload: a jumbogram (RFC 2675) needs more than 65535 bytes,
 * which no enclosing IPv4 packet carries. */
static __always_inline enum parse_result ipv6_enter_payload(struct cursor *c,
							    const struct ipv6hdr *ip6)
{
	__u32 payload_len = bpf_ntohs(ip6->payload_len);

	if (sizeof(*ip6) + payload_len > c->left)
		return PARSE_MALFORMED;
	c->pos += sizeof(*ip6);
	c->left = payload_len;
	return PARSE_OK;
}

/* The extension headers walked (RFC 8200 section 4): hop-by-hop, destination options,
 * routing and fragment, at most IPV6_EXT_MAX of them: the order RFC 8200 recommends puts
 * all four before the upper layer, and each round is verifier work on every path.
 * model/parse.py IPV6_EXT_MAX must agree. */
#define IPV6_EXT_MAX 4

/* The first 8 bytes every walked header has: next header, then its length in 8-byte units
 * beyond the first (the fragment header's byte 1 is reserved: it is always 8 bytes), then
 * for a fragment header the offset and more-fragments bits. uapi's struct frag_hdr is
 * kernel-internal (net/ipv6.h). */
struct ipv6_ext_header {
	__u8 nexthdr;
	__u8 hdrlen;
	__be16 frag_off;
	__be32 rest;
};

/* The offset (0xFFF8) and more-fragments (0x0001) bits of a fragment header, network order. */
#define IPV6_FRAGMENT_BE bpf_htons(0xFFF9)

static __always_inline int ipv6_is_walked_ext(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_FRAGMENT;
}

/* From the cursor (after ipv6_enter_payload) through the extension headers to the upper
 * layer. *proto comes in as the fixed header's next header and goes out as the upper-layer
 * protocol; *fragment says a fragment header with an offset or more-fragments ended the walk
 * (then *proto is that header's next header, the same in every fragment of a datagram). On
 * PARSE_OK the cursor is at the upper-layer header. PARSE_MALFORMED: a header cut short by
 * `left`; PARSE_UNSUPPORTED: more than IPV6_EXT_MAX headers. */
static __always_inline enum parse_result ipv6_walk_extensions(struct cursor *c, __u8 *proto,
							      int *fragment)
{
	__u8 nexthdr = *proto;
	__u32 len;

	*fragment = 0;
#pragma unroll
	for (int i = 0; i < IPV6_EXT_MAX; i++) {
		struct ipv6_ext_header *ext = c->pos;

		if (!ipv6_is_walked_ext(nexthdr))
			break;
		if (c->left < sizeof(*ext) || (void *)(ext + 1) > c->end)
			return PARSE_MALFORMED;
		if (nexthdr == IPPROTO_FRAGMENT) {
			len = sizeof(*ext);
			if (ext->frag_off & IPV6_FRAGMENT_BE) {
				*fragment = 1;
				*proto = ext->nexthdr;
				cursor_advance(c, len);
				return PARSE_OK;
			}
		} else {
			len = (ext->hdrlen + 1) * 8;
			if (len > c->left)
				return PARSE_MALFORMED;
		}
		nexthdr = ext->nexthdr;
		cursor_advance(c, len);
	}
	if (ipv6_is_walked_ext(nexthdr))
		return PARSE_UNSUPPORTED;
	*proto = nexthdr;
	return PARSE_OK;
}

/* The GRE header of RFC 2784 with the RFC 2890 key and sequence fields, within c->left.
 * Version != 0 is PARSE_UNSUPPORTED (PPTP's enhanced GRE belongs to the host); the R, s or
 * recursion bits of RFC 1701 are PARSE_MALFORMED (RFC 2784 says discard). The optional fields
 * are skipped, neither read nor changed. On PARSE_OK the cursor is past them, at the payload,
 * and *protocol is its EtherType (network order). */
static __always_inline enum parse_result parse_gre(struct cursor *c, __be16 *protocol)
{
	struct gre_header *gre = c->pos;
	__be16 flags;
	__u32 header_len;

	if (c->left < sizeof(*gre) || (void *)(gre + 1) > c->end)
		return PARSE_MALFORMED;
	flags = gre->flags_version;
	if (flags & GRE_VERSION)
		return PARSE_UNSUPPORTED;
	if (flags & (GRE_ROUTING | GRE_STRICT | GRE_REC))
		return PARSE_MALFORMED;
	/* 4 bytes each for checksum, key and sequence number, without a branch per flag. */
	header_len = sizeof(*gre) + 4 * (!!(flags & GRE_CSUM) + !!(flags & GRE_KEY) +
					 !!(flags & GRE_SEQ));
	if (header_len > c->left)
		return PARSE_MALFORMED;
	*protocol = gre->protocol;
	cursor_advance(c, header_len);
	return PARSE_OK;
}

/* A UDP header within the cursor whose length covers itself and fits what the enclosing
 * header allows (UDP always follows an IP header, which sets `left`). On PARSE_OK the cursor
 * is at the payload and `left` is the UDP payload.
 *
 * UDP-BASED ENCAPSULATIONS are recognised after parse_udp, by udp->dest, each with a
 * parse_<name>() that leaves the cursor at what it carries the way parse_gre does: VXLAN and
 * GENEVE in lib/parse_tunnels.h (decap.bpf.c reads them). */
static __always_inline enum parse_result parse_udp(struct cursor *c, struct udphdr **udp_out)
{
	struct udphdr *udp = c->pos;
	__u32 len;

	if (c->left < sizeof(*udp) || (void *)(udp + 1) > c->end)
		return PARSE_MALFORMED;
	len = bpf_ntohs(udp->len);
	if (len < sizeof(*udp) || len > c->left || c->pos + len > c->end)
		return PARSE_MALFORMED;
	*udp_out = udp;
	c->pos += sizeof(*udp);
	c->left = len - sizeof(*udp);
	return PARSE_OK;
}

/* An IPv6 packet whose fixed header agrees with the cursor: version 6, the 40-byte header and
 * the payload length it declares within c->left and within the frame. For a program that
 * takes the packet apart (decap, for the outer and the inner packet); parse_ipv6 only looks
 * at the header. The cursor stays at the header (ipv6_enter_payload moves it on; after this
 * check it cannot refuse). */
static __always_inline enum parse_result parse_ipv6_packet(struct cursor *c,
							   struct ipv6hdr **ip6_out)
{
	struct ipv6hdr *ip6 = c->pos;
	__u32 payload_len;

	if (c->left < sizeof(*ip6) || (void *)(ip6 + 1) > c->end)
		return PARSE_MALFORMED;
	payload_len = bpf_ntohs(ip6->payload_len);
	if (ip6->version != 6 || payload_len > c->left - sizeof(*ip6) ||
	    (void *)(ip6 + 1) + payload_len > c->end)
		return PARSE_MALFORMED;
	*ip6_out = ip6;
	return PARSE_OK;
}

/* Whether an IPv6 next-header value names an extension header of any kind (RFC 8200
 * section 4 and the IANA list: hop-by-hop, routing, fragment, destination options, AH,
 * mobility, HIP, shim6, and the two experimental values) rather than an upper-layer protocol;
 * ipv6_is_walked_ext names the four the walk takes. ESP is not counted: nothing after it can
 * be read. */
static __always_inline int ipv6_nexthdr_is_extension(__u8 nexthdr)
{
	switch (nexthdr) {
	case IPPROTO_HOPOPTS:
	case IPPROTO_ROUTING:
	case IPPROTO_FRAGMENT:
	case IPPROTO_DSTOPTS:
	case IPPROTO_AH:
	case IPPROTO_MH:
	case 139: /* HIP; uapi has no name for it */
	case 140: /* shim6 */
	case 253: /* experimentation and testing (RFC 3692) */
	case 254:
		return 1;
	default:
		return 0;
	}
}

#endif /* RUSTY_RAIL_LIB_PARSE_H */
