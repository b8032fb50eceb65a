// SPDX-License-Identifier: Apache-2.0
/* Benchmark only: the packet generator of `rusty-rail bench e2e` (docs/benchmarks.md). Run with
 * BPF_PROG_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES), it turns every frame into a
 * GRE frame for the balancer and returns XDP_TX, which sends it out of the run's ingress
 * interface. The kernel reuses the frames' pages without writing the input again, and what
 * the frame met on its way (the balancer's rewrite) is still in the page, so every run writes
 * the whole header from the template, then the flow of this packet: inner source address and
 * port from a per-CPU counter. Flow n has the inner source 198.19.0.0 + (n >> 15) and the
 * source port 1024 + (n & 0x7fff) (rusty_rail.bench.e2e_bed). */
#include "lib/uapi.h"
#include "lib/csum.h"

/* Ethernet, outer IPv4, GRE (4 bytes), inner IPv4, TCP: the frame the balancer takes. */
#define GEN_FRAME_LEN 78
#define GEN_INNER_CHECK 48 /* the inner IPv4 header's checksum */
#define GEN_INNER_SRC_LOW 52 /* the low 16 bits of the inner source address */
#define GEN_SPORT 58
#define GEN_TCP_CHECK 74
#define GEN_PORT_BITS 15
#define GEN_PORT_BASE 1024

/* Written by the bench before a run: the template, its inner source address ending in 0.0
 * and its inner checksum for that. */
struct gen_config {
	__u8 frame[GEN_FRAME_LEN];
};

/* Per CPU: the flows this CPU sends, numbers first .. end - 1 in turn (end 0: no end, a new
 * flow every packet), the next one's number, and the frames made. */
struct gen_cursor {
	__u32 next;
	__u32 first;
	__u32 end;
	__u32 _pad;
	__u64 sent;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_config);
} gen_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_cursor);
} gen_cursor SEC(".maps");

SEC("xdp")
int xdp_bench_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct gen_config *config = bpf_map_lookup_elem(&gen_config, &zero);
	struct gen_cursor *cursor = bpf_map_lookup_elem(&gen_cursor, &zero);
	__u32 flow;
	__u16 host, sport;

	if (!config || !cursor || data + GEN_FRAME_LEN > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(data, config->frame, GEN_FRAME_LEN);
	flow = cursor->next;
	cursor->next = flow + 1 == cursor->end ? cursor->first : flow + 1;
	cursor->sent++;

	host = bpf_htons((__u16)(flow >> GEN_PORT_BITS));
	sport = bpf_htons(GEN_PORT_BASE + (flow & ((1 << GEN_PORT_BITS) - 1)));
	*(__u16 *)(data + GEN_INNER_SRC_LOW) = host;
	*(__u16 *)(data + GEN_SPORT) = sport;
	/* The template's checksums cover a zero word where `host` now is (the TCP one through
	 * its pseudo-header) and flow 0's port: update them (RFC 1624). */
	*(__sum16 *)(data + GEN_INNER_CHECK) =
		csum_replace16(*(__sum16 *)(data + GEN_INNER_CHECK), 0, host);
	*(__sum16 *)(data + GEN_TCP_CHECK) = csum_replace16(
		csum_replace16(*(__sum16 *)(data + GEN_TCP_CHECK), 0, host),
		bpf_htons(GEN_PORT_BASE), sport);
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
