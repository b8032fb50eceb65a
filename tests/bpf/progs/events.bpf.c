// SPDX-License-Identifier: Apache-2.0
/* Test-only program for the ring buffer reader: every frame of at least 16 bytes sends its
 * first 16 bytes as one record to `events` (XDP_TX); a shorter frame is XDP_PASS, a full ring
 * XDP_DROP. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define RECORD_SIZE 16

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} events SEC(".maps");

SEC("xdp")
int xdp_events(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	void *record;

	if (data + RECORD_SIZE > data_end)
		return XDP_PASS;
	record = bpf_ringbuf_reserve(&events, RECORD_SIZE, 0);
	if (!record)
		return XDP_DROP;
	__builtin_memcpy(record, data, RECORD_SIZE);
	bpf_ringbuf_submit(record, 0);
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
