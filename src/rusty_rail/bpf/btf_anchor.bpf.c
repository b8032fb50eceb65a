// SPDX-License-Identifier: Apache-2.0
/* Not a program: one variable of every struct the Python side mirrors, so that each reaches
 * this object's BTF, where tests/bpf/test_structs.py compares it with its ctypes mirror
 * (dataplane/structs.py). The balancer's own object carries only the types its code and maps
 * happen to use, and packet-path code should not be shaped to change that. */
#include "balancer_types.h"
#include "lib/stats.h"

struct mirrored_types {
	struct settings settings;
	struct vip_key vip_key;
	struct vip6_key vip6_key;
	struct vip_value vip_value;
	struct backend backend;
	struct backend_tunnel backend_tunnel;
	struct backend_mtu backend_mtu;
	struct vip_affinity vip_affinity;
	struct too_big_bucket too_big_bucket;
	struct flow_key flow_key;
	struct conntrack_entry conntrack_entry;
	struct flow_entry flow_entry;
	struct flow_set flow_set;
	struct flow6_key flow6_key;
	struct flow6_entry flow6_entry;
	struct flow6_set flow6_set;
	struct icmp_watch icmp_watch;
	struct icmp_report icmp_report;
	struct counter counter;
};

struct mirrored_types btf_anchor;
