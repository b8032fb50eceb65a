/* SPDX-License-Identifier: Apache-2.0 */
/* The kernel's uapi headers every program takes its protocol constants from (ETH_P_*,
 * IPPROTO_*, ICMP_*, ICMPV6_*, the GRE flags), included once, here. */
#ifndef RUSTY_RAIL_LIB_UAPI_H
#define RUSTY_RAIL_LIB_UAPI_H

/* <linux/icmp.h> and <linux/if_tunnel.h> include <linux/if.h> for IFNAMSIZ alone, and
 * <linux/if.h> includes glibc's <sys/socket.h>, which does not compile for -target bpf (it asks
 * for the 32-bit glibc stubs). So <linux/if.h> counts as included, with the one name they use. */
#ifndef _LINUX_IF_H
#define _LINUX_IF_H
#define IFNAMSIZ 16
#endif

#include <linux/bpf.h>
#include <linux/icmp.h>
#include <linux/icmpv6.h>
#include <linux/if_ether.h>
#include <linux/if_tunnel.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#endif /* RUSTY_RAIL_LIB_UAPI_H */
