// SPDX-License-Identifier: Apache-2.0
/* Test-only: runs bpf/lib/flowhash.h on words given in the frame, so the tests can hold the C hash
 * against tests/unit/flowhash_vectors.json and rusty_rail.model.flowhash through
 * BPF_PROG_TEST_RUN.
 *
 * Frame in: u64 seed, u32 word count (up to MAX_WORDS), u32 mode, MAX_WORDS u32 words.
 * Mode 0 hashes the words with mix_word/mix_finish; mode 1 reads the first 16 bytes of the
 * words as a struct flow_key and runs the balancer's flow_key_mix; mode 2 reads the first 40
 * bytes as a struct flow6_key and runs flow6_key_mix. The u64 result replaces the seed. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "../../../src/rusty_rail/bpf/balancer_parse.h"
#include "../../../src/rusty_rail/bpf/lib/flowhash.h"

#define MAX_WORDS 16

struct probe {
	__u64 seed;
	__u32 count;
	__u32 mode;
	__u32 words[MAX_WORDS];
};

SEC("xdp")
int hash_probe(struct xdp_md *ctx)
{
	struct probe *probe = (void *)(long)ctx->data;
	struct flow_key flow;
	struct flow6_key flow6;
	__u64 state;

	if ((void *)(probe + 1) > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	if (probe->mode == 1) {
		__builtin_memcpy(&flow, probe->words, sizeof(flow));
		probe->seed = flow_key_mix(&flow, probe->seed);
		return XDP_PASS;
	}
	if (probe->mode == 2) {
		__builtin_memcpy(&flow6, probe->words, sizeof(flow6));
		probe->seed = flow6_key_mix(&flow6, probe->seed);
		return XDP_PASS;
	}
	state = probe->seed;
	for (__u32 i = 0; i < MAX_WORDS; i++) {
		if (i >= probe->count)
			break;
		state = mix_word(state, probe->words[i]);
	}
	probe->seed = mix_finish(state);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
