// SPDX-License-Identifier: Apache-2.0
/* Benchmark only: the floor, the cheapest forwarding program there is. `rusty-rail bench
 * dataplane` reports every case as a ratio to this, measured in the same run. */
#include "lib/uapi.h"

SEC("xdp")
int xdp_floor(struct xdp_md *ctx)
{
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
