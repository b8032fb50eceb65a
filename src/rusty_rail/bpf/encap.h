/* SPDX-License-Identifier: Apache-2.0 */
/* GRE passthrough (docs/packet-path.md section 8): readdress the Ethernet and outer IPv4
 * headers to the backend; the GRE header and the inner packet go on byte for byte. */
#ifndef RUSTY_RAIL_ENCAP_H
#define RUSTY_RAIL_ENCAP_H

#include <linux/if_ether.h>
#include <linux/ip.h>

#include "balancer_types.h"
#include "lib/csum.h"

_Static_assert(__builtin_offsetof(struct backend, nexthop_src_mac) ==
		       __builtin_offsetof(struct backend, nexthop_dst_mac) + ETH_ALEN,
	       "the next hop's MACs are copied as one 12-byte Ethernet address pair");
_Static_assert(__builtin_offsetof(struct backend, nexthop_dst_mac) % 4 == 0,
	       "the MAC pair is copied in 4-byte words");

static __always_inline void rewrite_gre_passthrough(struct ethhdr *eth, struct iphdr *ip,
						    const struct backend *backend,
						    const struct settings *settings)
{
	const __u32 *macs = (const __u32 *)backend->nexthop_dst_mac;
	__u32 *eth_words = (__u32 *)eth;
	__u16 *ttl_protocol = (__u16 *)&ip->ttl;
	__u32 sum = (__u16)~ip->check;
	__u16 old_ttl_protocol = *ttl_protocol;

	/* Destination and source MAC, in Ethernet order; VLAN tags follow untouched. */
	eth_words[0] = macs[0];
	eth_words[1] = macs[1];
	eth_words[2] = macs[2];

	sum = csum_add_change32(sum, ip->saddr, settings->lb_ipv4_be);
	sum = csum_add_change32(sum, ip->daddr, backend->addr_be[0]);
	ip->saddr = settings->lb_ipv4_be;
	ip->daddr = backend->addr_be[0];
	ip->ttl = settings->outer_ttl;
	sum = csum_add_change16(sum, old_ttl_protocol, *ttl_protocol);
	ip->check = (__u16)~csum_fold(sum);
}

#endif /* RUSTY_RAIL_ENCAP_H */
