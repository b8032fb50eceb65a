// SPDX-License-Identifier: Apache-2.0
/* Test-only program for the loader's tests: one map of each kind the data plane uses, and a
 * program that reads them so that a test can see the kernel's side of what Python wrote.
 *
 * Input frame (at least 14 bytes, the test run's minimum): u32 table index, u32 slot, u32 spare,
 * in host byte order. The program counts the packet in `counters` (per CPU), follows
 * `tables[table index]` to an inner array and writes that array's element `slot` over the
 * spare word: XDP_TX. A missing inner map is XDP_DROP, a slot beyond the inner map's size
 * XDP_ABORTED, a frame shorter than 12 bytes XDP_PASS. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct inner_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); /* a template: real inner maps have any size (BPF_F_INNER_MAP) */
	__uint(map_flags, BPF_F_INNER_MAP);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 4);
	__type(key, __u32);
	__array(values, struct inner_table);
} tables SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8);
	__type(key, __u64);
	__type(value, __u32);
} settings SEC(".maps");

SEC("xdp")
int xdp_maps(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 *words = data;
	__u32 counter = 0;
	__u64 *count;
	void *table;
	__u32 *value;

	count = bpf_map_lookup_elem(&counters, &counter);
	if (count)
		*count += 1;
	if ((void *)(words + 3) > data_end)
		return XDP_PASS;
	table = bpf_map_lookup_elem(&tables, &words[0]);
	if (!table)
		return XDP_DROP;
	value = bpf_map_lookup_elem(table, &words[1]);
	if (!value)
		return XDP_ABORTED;
	words[2] = *value;
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
