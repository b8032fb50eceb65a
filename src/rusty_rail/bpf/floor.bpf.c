// SPDX-License-Identifier: Apache-2.0
/* The benchmark floor: the cheapest forwarding program there is. `rusty-rail bench
 * dataplane` reports every case as a ratio to this, measured in the same run. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_floor(struct xdp_md *ctx)
{
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
