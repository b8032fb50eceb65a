/* SPDX-License-Identifier: Apache-2.0 */
/* The flow hash of docs/flow-hash.md, the C twin of rusty_rail/flowhash.py: a keyed
 * multiply-rotate over 32-bit words and MurmurHash3's fmix64. Bit-identical by test. */
#ifndef RUSTY_RAIL_HASH_H
#define RUSTY_RAIL_HASH_H

#include <linux/types.h>

#include "shared.h"

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

/* mix64 of the flow's words: source, destination and both ports (source first, as on
 * the wire), each a 4-byte load of the key's bytes (little-endian, as the spec says),
 * then the protocol number. Its low half is the flow hash (flow_hash32); the high half
 * places the flow in the connection table. */
static __always_inline __u64 flow_mix_ipv4(const struct flow_key *flow, __u64 seed)
{
	const __u32 *words = (const __u32 *)flow;
	__u64 state = seed;

	state = mix_word(state, words[0]);
	state = mix_word(state, words[1]);
	state = mix_word(state, words[2]);
	state = mix_word(state, flow->proto);
	return mix_finish(state);
}

/* The flow hash of docs/flow-hash.md: Maglev slot = flow_hash32 % M. */
static __always_inline __u32 flow_hash32(__u64 mix)
{
	return (__u32)mix;
}

#endif /* RUSTY_RAIL_HASH_H */
