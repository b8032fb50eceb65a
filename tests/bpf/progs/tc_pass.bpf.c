// SPDX-License-Identifier: Apache-2.0
/* Test-only tc program for the tc attach tests: lets every packet through (TC_ACT_OK). */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int tc_pass(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
