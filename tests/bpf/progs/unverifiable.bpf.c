// SPDX-License-Identifier: Apache-2.0
/* Test-only program the verifier must reject: it reads the packet without a bounds check. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_unverifiable(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;

	return data[100];
}

char LICENSE[] SEC("license") = "GPL";
