// SPDX-License-Identifier: Apache-2.0
/* XDP_PASS for the far end of a veth: frames that XDP_TX or XDP_REDIRECT sends into a
 * veth are dropped unless the receiving end has an XDP program attached. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
