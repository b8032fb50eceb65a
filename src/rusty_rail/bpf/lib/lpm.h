/* SPDX-License-Identifier: Apache-2.0 */
/* IPv4 and IPv6 prefix sets in BPF_MAP_TYPE_LPM_TRIE maps (decap's allowed and local
 * prefixes of both families, the test-bed router's VIP prefixes). */
#ifndef RUSTY_RAIL_LIB_LPM_H
#define RUSTY_RAIL_LIB_LPM_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

/* An IPv4 prefix as LPM tries key it: the prefix length (host order), then the address in
 * network order. Userspace writes the same 8 bytes (rusty_rail/decap/agent.py,
 * testbed/router.py). */
struct ipv4_lpm_key {
	__u32 prefixlen;
	__be32 addr_be;
};

/* Whether some prefix of `trie` holds `addr`. */
static __always_inline int ipv4_lpm_contains(void *trie, __be32 addr)
{
	struct ipv4_lpm_key key = { .prefixlen = 32, .addr_be = addr };

	return bpf_map_lookup_elem(trie, &key) != NULL;
}

/* An IPv6 prefix as LPM tries key it: the prefix length (host order), then the 16 address
 * bytes in network order. Userspace writes the same 20 bytes (rusty_rail/decap/agent.py). */
struct ipv6_lpm_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Whether some prefix of `trie` (keyed by struct ipv6_lpm_key) holds the 16-byte address at
 * `addr` (a struct in6_addr, network order). */
static __always_inline int ipv6_lpm_contains(void *trie, const void *addr)
{
	struct ipv6_lpm_key key = { .prefixlen = 128 };

	__builtin_memcpy(key.addr, addr, sizeof(key.addr));
	return bpf_map_lookup_elem(trie, &key) != NULL;
}

#endif /* RUSTY_RAIL_LIB_LPM_H */
