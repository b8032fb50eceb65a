// SPDX-License-Identifier: Apache-2.0
/* Test bed only: XDP_PASS for the far end of a veth. Frames that XDP_TX or XDP_REDIRECT
 * sends into a veth are dropped unless the receiving end has an XDP program attached. */
#include "lib/uapi.h"

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
