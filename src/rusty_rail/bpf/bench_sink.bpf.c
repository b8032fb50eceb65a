// SPDX-License-Identifier: Apache-2.0
/* Benchmark only: the counting sink of `rusty-rail bench e2e`, on the server's end of a veth.
 * Every frame is counted on the CPU that received it, then dropped. */
#include "lib/uapi.h"

struct sink_count {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sink_count);
} sink_count SEC(".maps");

SEC("xdp")
int xdp_bench_sink(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct sink_count *count = bpf_map_lookup_elem(&sink_count, &zero);

	if (count) {
		count->packets++;
		count->bytes += ctx->data_end - ctx->data;
	}
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
