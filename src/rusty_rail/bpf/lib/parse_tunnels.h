/* SPDX-License-Identifier: Apache-2.0 */
/* The UDP-based tunnel headers, parsed the way parse.h parses GRE: VXLAN (RFC 7348) and GENEVE
 * (RFC 8926), each after parse_udp, and the inner Ethernet header they may carry. Each checks
 * its header against the cursor once, says whether it is sound, and leaves the cursor at what
 * follows it. decap.bpf.c reads them (docs/decap.md). */
#ifndef RUSTY_RAIL_LIB_PARSE_TUNNELS_H
#define RUSTY_RAIL_LIB_PARSE_TUNNELS_H

#include "parse.h"

/* The IANA ports (the destination port names the tunnel). */
#define VXLAN_PORT 4789
#define GENEVE_PORT 6081

/* The VXLAN header: flags (I = 0x08: the VNI is valid), 24 reserved bits, the 24-bit VNI, 8
 * reserved bits. uapi has no struct for it (struct vxlanhdr is kernel-internal, net/vxlan.h). */
struct vxlan_header {
	__u8 flags;
	__u8 reserved[3];
	__be32 vni_reserved;
};

#define VXLAN_FLAG_VNI 0x08

/* The GENEVE base header: version (2 bits) and option length (6 bits, in 4-byte units), the O
 * (control) and C (critical options) bits, the protocol of the payload (an EtherType), the
 * 24-bit VNI, 8 reserved bits. Options follow. */
struct geneve_header {
	__u8 version_optlen;
	__u8 flags;
	__be16 protocol;
	__be32 vni_reserved;
};

#define GENEVE_FLAG_OAM 0x80
#define GENEVE_FLAG_CRITICAL 0x40
#define GENEVE_OPTLEN_MASK 0x3F

/* The 24-bit VNI of the word that holds it above 8 reserved bits, in host order. */
static __always_inline __u32 tunnel_vni(__be32 vni_reserved)
{
	return bpf_ntohl(vni_reserved) >> 8;
}

/* A VXLAN header within c->left. PARSE_MALFORMED when it is cut short or the I flag is clear
 * (no valid VNI); PARSE_UNSUPPORTED when another flag is set (group policy, GPE and the like:
 * extensions this parser does not read). The reserved fields are ignored (RFC 7348). On
 * PARSE_OK the cursor is at the inner Ethernet header and *vni is set. */
static __always_inline enum parse_result parse_vxlan(struct cursor *c, __u32 *vni)
{
	struct vxlan_header *vxlan = c->pos;

	if (c->left < sizeof(*vxlan) || (void *)(vxlan + 1) > c->end)
		return PARSE_MALFORMED;
	if (!(vxlan->flags & VXLAN_FLAG_VNI))
		return PARSE_MALFORMED;
	if (vxlan->flags != VXLAN_FLAG_VNI)
		return PARSE_UNSUPPORTED;
	*vni = tunnel_vni(vxlan->vni_reserved);
	cursor_advance(c, sizeof(*vxlan));
	return PARSE_OK;
}

/* A GENEVE header and its options within c->left. PARSE_MALFORMED when cut short;
 * PARSE_UNSUPPORTED for a version other than 0, a control message (O) or critical options
 * (C), which a receiver that reads no options must not deliver. The options are skipped,
 * neither read nor changed. On PARSE_OK the cursor is at the payload, *protocol is its
 * EtherType (network order) and *vni is set. */
static __always_inline enum parse_result parse_geneve(struct cursor *c, __be16 *protocol,
						      __u32 *vni)
{
	struct geneve_header *geneve = c->pos;
	__u32 header_len;

	if (c->left < sizeof(*geneve) || (void *)(geneve + 1) > c->end)
		return PARSE_MALFORMED;
	if (geneve->version_optlen >> 6)
		return PARSE_UNSUPPORTED;
	if (geneve->flags & (GENEVE_FLAG_OAM | GENEVE_FLAG_CRITICAL))
		return PARSE_UNSUPPORTED;
	header_len = sizeof(*geneve) + (geneve->version_optlen & GENEVE_OPTLEN_MASK) * 4;
	if (header_len > c->left)
		return PARSE_MALFORMED;
	*protocol = geneve->protocol;
	*vni = tunnel_vni(geneve->vni_reserved);
	cursor_advance(c, header_len);
	return PARSE_OK;
}

/* An inner Ethernet header without VLAN tags within c->left (its addresses are not read).
 * PARSE_MALFORMED when cut short. On PARSE_OK the cursor is past it and *ethertype is its
 * EtherType (network order); a VLAN tag is an EtherType like another, which the caller will
 * not take. */
static __always_inline enum parse_result parse_inner_ethernet(struct cursor *c, __be16 *ethertype)
{
	struct ethhdr *eth = c->pos;

	if (c->left < sizeof(*eth) || (void *)(eth + 1) > c->end)
		return PARSE_MALFORMED;
	*ethertype = eth->h_proto;
	cursor_advance(c, sizeof(*eth));
	return PARSE_OK;
}

#endif /* RUSTY_RAIL_LIB_PARSE_TUNNELS_H */
