// SPDX-License-Identifier: Apache-2.0
/* Benchmark only: the floor forwarder of `rusty-rail bench e2e`, the least a forwarding program
 * does: parse Ethernet and IPv4, rewrite the outer destination (checksum updated) and the
 * MACs, redirect through a devmap as the balancer does. Anything else passes. */
#include "lib/uapi.h"
#include "lib/csum.h"

/* Where to send: the new outer destination, the next hop's MAC and the egress port's. */
struct forward_to {
	__be32 daddr;
	__u8 dst_mac[ETH_ALEN];
	__u8 src_mac[ETH_ALEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct forward_to);
} forward_to SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} forward_port SEC(".maps");

SEC("xdp")
int xdp_floor_forward(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct forward_to *to;
	__u32 zero = 0;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    ip->version != 4 || ip->ihl < 5)
		return XDP_PASS;
	to = bpf_map_lookup_elem(&forward_to, &zero);
	if (!to)
		return XDP_ABORTED;
	ip->check = (__sum16)(__u16)~csum_fold(
		csum_add_change32((__u16)~ip->check, ip->daddr, to->daddr));
	ip->daddr = to->daddr;
	__builtin_memcpy(eth->h_dest, to->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, to->src_mac, ETH_ALEN);
	return bpf_redirect_map(&forward_port, 0, XDP_DROP);
}

char LICENSE[] SEC("license") = "GPL";
