/* SPDX-License-Identifier: Apache-2.0 */
/* The flow hash of docs/flow-hash.md, the C twin of rusty_rail/model/flowhash.py: a keyed
 * multiply-rotate over 32-bit words and MurmurHash3's fmix64. Bit-identical by test
 * (tests/bpf/test_differential.py, through tests/bpf/progs/hash_probe.bpf.c). */
#ifndef RUSTY_RAIL_LIB_FLOWHASH_H
#define RUSTY_RAIL_LIB_FLOWHASH_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#define HASH_WORD_MULTIPLIER 0x9E3779B97F4A7C15ULL
#define HASH_WORD_ROTATION 31
#define HASH_FINAL_MULTIPLIER_1 0xFF51AFD7ED558CCDULL
#define HASH_FINAL_MULTIPLIER_2 0xC4CEB9FE1A85EC53ULL

static __always_inline __u64 mix_word(__u64 state, __u32 word)
{
	state = (state ^ word) * HASH_WORD_MULTIPLIER;
	return (state << HASH_WORD_ROTATION) | (state >> (64 - HASH_WORD_ROTATION));
}

static __always_inline __u64 mix_finish(__u64 state)
{
	state ^= state >> 33;
	state *= HASH_FINAL_MULTIPLIER_1;
	state ^= state >> 33;
	state *= HASH_FINAL_MULTIPLIER_2;
	state ^= state >> 33;
	return state;
}

/* mix64 of an IPv4 flow's words: source, destination and both ports (source first, as on
 * the wire; `ports` is their 4 bytes loaded little-endian, as the spec says, 0 for a flow
 * without ports), then the protocol number. Its low half is the flow hash (flow_hash32); the
 * balancer's high half places the flow in the connection table. */
static __always_inline __u64 flow_mix_ipv4(__u64 seed, __be32 src, __be32 dst, __u32 ports,
					   __u8 proto)
{
	__u64 state = seed;

	state = mix_word(state, src);
	state = mix_word(state, dst);
	state = mix_word(state, ports);
	state = mix_word(state, proto);
	return mix_finish(state);
}

/* mix64 of an IPv6 flow's words: the source's four words, the destination's four, the ports
 * and the protocol, as flow_mix_ipv4 takes them. */
static __always_inline __u64 flow_mix_ipv6(__u64 seed, const __be32 *src, const __be32 *dst,
					   __u32 ports, __u8 proto)
{
	__u64 state = seed;

#pragma unroll
	for (int i = 0; i < 4; i++)
		state = mix_word(state, src[i]);
#pragma unroll
	for (int i = 0; i < 4; i++)
		state = mix_word(state, dst[i]);
	state = mix_word(state, ports);
	state = mix_word(state, proto);
	return mix_finish(state);
}

/* The flow hash of docs/flow-hash.md: Maglev slot = flow_hash32 % M. */
static __always_inline __u32 flow_hash32(__u64 mix)
{
	return (__u32)mix;
}

#endif /* RUSTY_RAIL_LIB_FLOWHASH_H */
