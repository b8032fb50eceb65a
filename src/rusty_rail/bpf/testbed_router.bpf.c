// SPDX-License-Identifier: Apache-2.0
/* The test bed's router (not part of the product), the GRE + ECMP half of the deployment in
 * README.md, in XDP: IPv4 or IPv6 to a VIP prefix is wrapped in outer IPv4 or outer IPv6 + GRE
 * (protocol 0x0800 or 0x86DD; the outer family is the LB set's) towards one live LB, chosen
 * per flow by rendezvous hashing, and sent out of the LB-side interface. Everything else goes
 * to the router's own stack, which routes the servers' direct replies back to the clients.
 *
 * FIB mode (the set's `fib`, the test bed's --cluster): no LB list; the kernel's FIB is asked
 * (bpf_fib_lookup) for the inner packet's route, with its addresses, protocol and ports, so
 * that the kernel's multipath hash picks one of the ECMP next hops BGP installed; the gateway
 * it returns is the outer destination, its family the outer family.
 * Loaded and fed by rusty_rail/testbed/router.py. */

/* The router takes untagged frames only: a VLAN tag makes a frame the stack's. */
#define VLAN_MAX_TAGS 0

#include "lib/csum.h"
#include "lib/flowhash.h"
#include "lib/lpm.h"
#include "lib/parse.h"
#include "lib/stats.h"
#include "lib/uapi.h"

/* Per-reason outcomes, the index into router_stats (rusty_rail.testbed.router.RouterStat). */
enum router_stat {
	ROUTER_ENCAPSULATED = 0,
	ROUTER_PASS_NOT_IP = 1,	    /* not untagged IPv4 or IPv6 (ARP, VLAN-tagged, short) */
	ROUTER_PASS_MALFORMED = 2,  /* an IPv4 or IPv6 header the stack may judge */
	ROUTER_PASS_NOT_VIP = 3,    /* destination outside router_vips / router_vips_v6 */
	ROUTER_PASS_TTL_EXPIRED = 4, /* TTL or hop limit <= 1: the stack sends the ICMP error */
	ROUTER_DROP_NO_LB = 5,	    /* the live LB set is empty */
	ROUTER_DROP_TOO_BIG = 6,    /* the GRE packet would exceed the LB link's MTU */
	ROUTER_DROP_ERROR = 7,	    /* the kernel refused to grow the frame's head */
	ROUTER_DROP_NO_NEIGH = 8,   /* FIB mode: the gateway has no neighbour entry */
	ROUTER_STAT_COUNT = 9,
};

#define ROUTER_MAX_LBS 32
#define ROUTER_MAX_VIPS 1024
#define GRE_OVERHEAD (sizeof(struct iphdr) + sizeof(struct gre_header))
#define GRE6_OVERHEAD (sizeof(struct ipv6hdr) + sizeof(struct gre_header))
#define OUTER_IPV4 4
#define OUTER_IPV6 6
/* <sys/socket.h> does not compile for -target bpf (lib/uapi.h); the two families, as there. */
#define AF_INET 2
#define AF_INET6 10

/* An LB's or the router's address as 16 bytes in network order: an IPv6 address, or an IPv4
 * one mapped (::ffff:a.b.c.d, the IPv4 address in word 3). */
struct router_addr {
	__be32 words[4];
};

/* One LB: the outer destination and how frames reach it. */
struct router_lb {
	struct router_addr addr;
	__u32 ifindex;	   /* egress interface; the ingress one means XDP_TX */
	__u8 dst_mac[ETH_ALEN];
	__u8 src_mac[ETH_ALEN];
	__u32 mtu;	   /* of the egress link; 0 = not checked */
};

/* A whole LB set. Two of these (banks) exist; userspace fills the idle bank, then points
 * router_active at it, so a packet sees the old set or the new one, never a mix. */
struct router_lb_set {
	__u32 count;
	__u8 family;	  /* of the outer header and of every address here: OUTER_IPV4 or _IPV6 */
	__u8 outer_ttl;	  /* the outer TTL or hop limit */
	__u8 fib;	  /* 1: the next hop comes from the kernel's FIB; count and lbs unused */
	__u8 pad;
	struct router_addr source; /* outer source: the router's LB-side address */
	__u64 seed;		   /* of the flow hash */
	struct router_addr source6; /* FIB mode: the outer IPv6 source (source is then IPv4) */
	struct router_lb lbs[ROUTER_MAX_LBS];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, ROUTER_MAX_VIPS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipv4_lpm_key);
	__type(value, __u32);
} router_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, ROUTER_MAX_VIPS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipv6_lpm_key);
	__type(value, __u32);
} router_vips_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct router_lb_set);
} router_lb_sets SEC(".maps");

/* The bank in use: 0 or 1. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} router_active SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ROUTER_STAT_COUNT);
	__type(key, __u32);
	__type(value, struct counter);
} router_stats SEC(".maps");

/* Packets sent to each LB, keyed by its 16-byte address. Userspace creates the entries with the set;
 * the program only adds to them (an LB without an entry is simply not counted). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4 * ROUTER_MAX_LBS);
	__type(key, struct router_addr);
	__type(value, struct counter);
} router_lb_stats SEC(".maps");

/* Ends the journey of a frame that is not encapsulated: counted by reason. */
static __always_inline int finish(enum router_stat stat, __u64 frame_len, int verdict)
{
	return count_verdict(&router_stats, stat, frame_len, verdict);
}

/* mix64(seed, flow words) of docs/flow-hash.md: addresses and ports as they sit in the
 * packet, loaded as little-endian words; ports 0 for fragments, for protocols other than TCP
 * and UDP, and for ports cut short (such a packet is still forwarded, hashed without them). */
static __always_inline __u64 flow_state(const struct iphdr *ip, void *end, __u64 seed)
{
	struct l4_ports *l4;
	__u32 ports = 0;

	if (ipv4_l4_ports(ip, end, &l4) == PARSE_OK)
		__builtin_memcpy(&ports, l4, sizeof(ports));
	return flow_mix_ipv4(seed, ip->saddr, ip->daddr, ports, ip->protocol);
}

/* The IPv6 twin: the ports are taken when TCP or UDP follows the fixed header directly and
 * its ports lie within the payload; otherwise the flow is (source, destination, next header)
 * with ports 0, so every fragment of a datagram (next header 44) and every packet behind an
 * extension header goes to one LB per address pair. The router only spreads; the balancer
 * walks extension headers itself. */
static __always_inline __u64 flow_state_v6(const struct ipv6hdr *ip6, void *end, __u64 seed)
{
	const struct l4_ports *l4 = (const void *)(ip6 + 1);
	__u32 ports = 0;

	if ((ip6->nexthdr == IPPROTO_TCP || ip6->nexthdr == IPPROTO_UDP) &&
	    bpf_ntohs(ip6->payload_len) >= sizeof(*l4) && (void *)(l4 + 1) <= end)
		__builtin_memcpy(&ports, l4, sizeof(ports));
	return flow_mix_ipv6(seed, ip6->saddr.in6_u.u6_addr32, ip6->daddr.in6_u.u6_addr32, ports,
			     ip6->nexthdr);
}

/* An LB's rendezvous score: mix64(flow state, its address words), the IPv4 address's one word
 * in an IPv4 set, the IPv6 address's four in an IPv6 set. */
static __always_inline __u64 lb_score(const struct router_addr *addr, __u8 family, __u64 flow)
{
	if (family == OUTER_IPV4)
		return mix_finish(mix_word(flow, addr->words[3]));
#pragma unroll
	for (int i = 0; i < 4; i++)
		flow = mix_word(flow, addr->words[i]);
	return mix_finish(flow);
}

/* Whether address a is above b, as unsigned 128-bit numbers (a mapped IPv4 address compares
 * as its IPv4 address, its first 12 bytes being every mapped address's). */
static __always_inline int addr_above(const struct router_addr *a, const struct router_addr *b)
{
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u32 x = bpf_ntohl(a->words[i]), y = bpf_ntohl(b->words[i]);

		if (x != y)
			return x > y;
	}
	return 0;
}

/* Rendezvous (highest random weight) hashing: every live LB gets its score and the highest
 * wins, ties to the higher address. The choice depends only on the set, not its order, and
 * losing an LB moves only its flows. */
static __always_inline const struct router_lb *choose_lb(const struct router_lb_set *set,
							  __u64 flow)
{
	const struct router_lb *best = NULL;
	__u64 best_score = 0;

	for (__u32 i = 0; i < ROUTER_MAX_LBS; i++) {
		const struct router_lb *lb = &set->lbs[i];
		__u64 score;

		if (i >= set->count)
			break;
		score = lb_score(&lb->addr, set->family, flow);
		if (!best || score > best_score ||
		    (score == best_score && addr_above(&lb->addr, &best->addr))) {
			best = lb;
			best_score = score;
		}
	}
	return best;
}

static __always_inline const struct router_lb_set *active_set(void)
{
	__u32 zero = 0, *bank = bpf_map_lookup_elem(&router_active, &zero);
	__u32 key;

	if (!bank)
		return NULL;
	key = *bank & 1;
	return bpf_map_lookup_elem(&router_lb_sets, &key);
}

/* Forwarding the inner packet is a router's hop: TTL - 1, checksum updated (RFC 1624). */
static __always_inline void decrement_ttl(struct iphdr *ip)
{
	__be16 *ttl_protocol = (__be16 *)&ip->ttl;
	__be16 old_word = *ttl_protocol;

	ip->ttl--;
	ip->check = csum_replace16(ip->check, old_word, *ttl_protocol);
}

/* Write the Ethernet header towards the LB and GRE in front of the inner packet, which begins
 * `outer_len` bytes behind the Ethernet header, and lower the inner TTL or hop limit
 * (`inner_proto` ETH_P_IP or ETH_P_IPV6, in host order). Returns a pointer to the outer
 * header, or NULL when the frame is too short (it never is: the caller grew it). */
static __always_inline void *write_frame(struct xdp_md *ctx, const struct router_lb *lb,
					 __u16 outer_proto, __u32 outer_len, __u16 inner_proto)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct gre_header *gre;
	struct ipv6hdr *inner6;
	struct iphdr *inner;

	if (outer_len != sizeof(struct iphdr) && outer_len != sizeof(struct ipv6hdr))
		return NULL;
	gre = (void *)(eth + 1) + outer_len;
	inner = (void *)(gre + 1);
	inner6 = (void *)(gre + 1);
	if ((void *)(inner + 1) > data_end)
		return NULL;
	__builtin_memcpy(eth->h_dest, lb->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, lb->src_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(outer_proto);
	gre->flags_version = 0;
	gre->protocol = bpf_htons(inner_proto);
	if (inner_proto == ETH_P_IP) {
		decrement_ttl(inner);
		return eth + 1;
	}
	if ((void *)(inner6 + 1) > data_end)
		return NULL;
	inner6->hop_limit--; /* no header checksum in IPv6 */
	return eth + 1;
}

/* Grow the frame by the outer IPv4 + GRE headers and write Ethernet / IPv4 / GRE in front of
 * the inner packet. Returns 0, or -1 when the kernel refused. */
static __always_inline int encapsulate_ipv4(struct xdp_md *ctx, const struct router_lb_set *set,
					    const struct router_addr *source,
					    const struct router_lb *lb, __u16 inner_len,
					    __u8 inner_tos, __u16 inner_proto)
{
	struct iphdr *outer;
	struct iphdr header = {
		.version = 4,
		.ihl = 5,
		.tos = inner_tos, /* DSCP and ECN carried out (RFC 6040 normal mode) */
		.tot_len = bpf_htons(inner_len + GRE_OVERHEAD),
		.id = 0,
		/* Like Linux tunnels by default: DF always, so the path MTU is discovered, not
		 * fragmented around; with DF, ID 0 is fine (RFC 6864). */
		.frag_off = IPV4_DONT_FRAGMENT_BE,
		.ttl = set->outer_ttl,
		.protocol = IPPROTO_GRE,
		.check = 0,
		.saddr = source->words[3],
		.daddr = lb->addr.words[3],
	};

	header.check = ipv4_header_checksum(&header);
	if (bpf_xdp_adjust_head(ctx, -(int)GRE_OVERHEAD))
		return -1;
	outer = write_frame(ctx, lb, ETH_P_IP, sizeof(*outer), inner_proto);
	if (!outer)
		return -1;
	__builtin_memcpy(outer, &header, sizeof(header));
	return 0;
}

/* The IPv6 twin: Ethernet / IPv6 / GRE, the traffic class carried as the IPv4 TOS is, flow
 * label 0 (a Linux ip6gre tunnel's default), hop limit the set's; no DF to set (IPv6 routers
 * never fragment). */
static __always_inline int encapsulate_ipv6(struct xdp_md *ctx, const struct router_lb_set *set,
					    const struct router_addr *source,
					    const struct router_lb *lb, __u16 inner_len,
					    __u8 inner_tos, __u16 inner_proto)
{
	struct ipv6hdr *outer;

	if (bpf_xdp_adjust_head(ctx, -(int)GRE6_OVERHEAD))
		return -1;
	outer = write_frame(ctx, lb, ETH_P_IPV6, sizeof(*outer), inner_proto);
	if (!outer)
		return -1;
	outer->version = 6;
	outer->priority = inner_tos >> 4;
	outer->flow_lbl[0] = (inner_tos & 0x0F) << 4;
	outer->flow_lbl[1] = 0;
	outer->flow_lbl[2] = 0;
	outer->payload_len = bpf_htons(inner_len + sizeof(struct gre_header));
	outer->nexthdr = IPPROTO_GRE;
	outer->hop_limit = set->outer_ttl;
	__builtin_memcpy(&outer->saddr, source, sizeof(outer->saddr));
	__builtin_memcpy(&outer->daddr, &lb->addr, sizeof(outer->daddr));
	return 0;
}

/* The IPv6 traffic class (DSCP and ECN), which the outer IPv4 TOS carries. */
static __always_inline __u8 ipv6_traffic_class(const struct ipv6hdr *ip6)
{
	return (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
}

/* Wrap the inner packet towards `lb` (outer family `ipv6`, source `source`), or end it with a
 * counted drop. */
static __always_inline int send_to(struct xdp_md *ctx, __u64 frame_len,
				   const struct router_lb_set *set, const struct router_lb *lb,
				   int ipv6, const struct router_addr *source, __u16 inner_len,
				   __u8 inner_tos, __u16 inner_proto)
{
	__u32 overhead = ipv6 ? GRE6_OVERHEAD : GRE_OVERHEAD;
	struct counter *counter;
	struct router_addr key;
	int refused;

	if (lb->mtu && inner_len + overhead > lb->mtu)
		return finish(ROUTER_DROP_TOO_BIG, frame_len, XDP_DROP);
	key = lb->addr; /* the set may change under us; the key is this packet's LB */
	if (ipv6)
		refused = encapsulate_ipv6(ctx, set, source, lb, inner_len, inner_tos, inner_proto);
	else
		refused = encapsulate_ipv4(ctx, set, source, lb, inner_len, inner_tos, inner_proto);
	if (refused)
		return finish(ROUTER_DROP_ERROR, frame_len, XDP_DROP);

	/* Userspace creates an LB's entry with the set; one without is simply not counted. */
	counter = bpf_map_lookup_elem(&router_lb_stats, &key);
	if (counter) {
		counter->packets += 1;
		counter->bytes += frame_len;
	}
	count_stat(&router_stats, ROUTER_ENCAPSULATED, frame_len);
	if (lb->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(lb->ifindex, 0);
}

/* Rendezvous mode: wrap the inner packet towards the LB its flow state picks. */
static __always_inline int forward(struct xdp_md *ctx, __u64 frame_len, __u64 flow,
				   const struct router_lb_set *set, __u16 inner_len, __u8 inner_tos,
				   __u16 inner_proto)
{
	const struct router_lb *lb = choose_lb(set, flow);

	if (!lb)
		return finish(ROUTER_DROP_NO_LB, frame_len, XDP_DROP);
	return send_to(ctx, frame_len, set, lb, set->family == OUTER_IPV6, &set->source, inner_len,
		       inner_tos, inner_proto);
}

/* Whether `addr` is the address `words` (16 bytes, an IPv4 one mapped). */
static __always_inline int same_addr(const struct router_addr *addr, const __u32 words[4])
{
	return addr->words[0] == words[0] && addr->words[1] == words[1] &&
	       addr->words[2] == words[2] && addr->words[3] == words[3];
}

/* FIB mode: the kernel's route to the inner destination picks the LB. `params` holds the
 * inner flow (family, addresses, protocol, ports: the multipath hash's input with
 * fib_multipath_hash_policy 1), the ingress interface and the least length the outer packet
 * will have (the FIB checks it against the egress MTU and gives that MTU back in mtu_result);
 * `inner_dst` is the inner destination as 16 bytes (IPv4 mapped). On success the kernel has
 * put the chosen next hop's gateway in ipv4_dst or ipv6_dst (family AF_INET6 for an IPv6
 * gateway, whatever the inner family), the egress interface in ifindex and the MACs. A route
 * without a gateway (the destination itself on a link) has no LB behind it. */
static __always_inline int forward_fib(struct xdp_md *ctx, __u64 frame_len,
				       const struct router_lb_set *set,
				       struct bpf_fib_lookup *params, const __u32 inner_dst[4],
				       __u16 inner_len, __u8 inner_tos, __u16 inner_proto)
{
	struct router_lb lb = {};
	int rc, ipv6;

	params->ifindex = ctx->ingress_ifindex;
	params->tot_len = inner_len + GRE_OVERHEAD;
	rc = bpf_fib_lookup(ctx, params, sizeof(*params), 0);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return finish(ROUTER_DROP_TOO_BIG, frame_len, XDP_DROP);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return finish(ROUTER_DROP_NO_NEIGH, frame_len, XDP_DROP);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return finish(ROUTER_DROP_NO_LB, frame_len, XDP_DROP);
	ipv6 = params->family == AF_INET6;
	if (ipv6) {
		__builtin_memcpy(&lb.addr, params->ipv6_dst, sizeof(lb.addr));
	} else {
		lb.addr.words[2] = bpf_htonl(0xFFFF);
		lb.addr.words[3] = params->ipv4_dst;
	}
	if (same_addr(&lb.addr, inner_dst))
		return finish(ROUTER_DROP_NO_LB, frame_len, XDP_DROP);
	lb.ifindex = params->ifindex;
	lb.mtu = params->mtu_result; /* checked again with the outer IPv6 header's length */
	__builtin_memcpy(lb.dst_mac, params->dmac, ETH_ALEN);
	__builtin_memcpy(lb.src_mac, params->smac, ETH_ALEN);
	return send_to(ctx, frame_len, set, &lb, ipv6, ipv6 ? &set->source6 : &set->source,
		       inner_len, inner_tos, inner_proto);
}

/* FIB mode's IPv6 ports: those of TCP or UDP right behind the fixed header (as the flow
 * state takes them), else none. */
static __always_inline void fib_ports_v6(struct bpf_fib_lookup *params,
					 const struct ipv6hdr *ip6, void *end)
{
	const struct l4_ports *l4 = (const void *)(ip6 + 1);

	params->l4_protocol = ip6->nexthdr;
	if ((ip6->nexthdr == IPPROTO_TCP || ip6->nexthdr == IPPROTO_UDP) &&
	    bpf_ntohs(ip6->payload_len) >= sizeof(*l4) && (void *)(l4 + 1) <= end) {
		params->sport = l4->source;
		params->dport = l4->dest;
	}
}

/* IPv6 to an IPv6 VIP prefix: the same journey as IPv4, its own flow state. */
static __always_inline int route_ipv6(struct xdp_md *ctx, struct cursor *c, __u64 frame_len)
{
	const struct router_lb_set *set;
	struct ipv6hdr *ip6;

	if (parse_ipv6_packet(c, &ip6) != PARSE_OK)
		return finish(ROUTER_PASS_MALFORMED, frame_len, XDP_PASS);
	if (!ipv6_lpm_contains(&router_vips_v6, &ip6->daddr))
		return finish(ROUTER_PASS_NOT_VIP, frame_len, XDP_PASS);
	if (ip6->hop_limit <= 1)
		return finish(ROUTER_PASS_TTL_EXPIRED, frame_len, XDP_PASS);

	set = active_set();
	if (set && set->fib) {
		struct bpf_fib_lookup params = {
			.family = AF_INET6,
			.flowinfo = *(__be32 *)ip6 & bpf_htonl(0x0FFFFFFF),
		};
		__u32 dst[4];

		fib_ports_v6(&params, ip6, c->end);
		__builtin_memcpy(params.ipv6_src, &ip6->saddr, sizeof(params.ipv6_src));
		__builtin_memcpy(params.ipv6_dst, &ip6->daddr, sizeof(params.ipv6_dst));
		__builtin_memcpy(dst, &ip6->daddr, sizeof(dst));
		return forward_fib(ctx, frame_len, set, &params, dst,
				   sizeof(*ip6) + bpf_ntohs(ip6->payload_len),
				   ipv6_traffic_class(ip6), ETH_P_IPV6);
	}
	if (!set || set->count == 0)
		return finish(ROUTER_DROP_NO_LB, frame_len, XDP_DROP);
	return forward(ctx, frame_len, flow_state_v6(ip6, c->end, set->seed), set,
		       sizeof(*ip6) + bpf_ntohs(ip6->payload_len), ipv6_traffic_class(ip6),
		       ETH_P_IPV6);
}

SEC("xdp")
int xdp_router(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 frame_len = data_end - data;
	struct cursor c = cursor_start(data, data_end);
	const struct router_lb_set *set;
	struct ethhdr *eth;
	struct iphdr *ip;
	int ethertype;

	ethertype = parse_ethernet(&c, &eth);
	if (ethertype == bpf_htons(ETH_P_IPV6))
		return route_ipv6(ctx, &c, frame_len);
	if (ethertype != bpf_htons(ETH_P_IP))
		return finish(ROUTER_PASS_NOT_IP, frame_len, XDP_PASS);
	if (parse_ipv4(&c, &ip) != PARSE_OK)
		return finish(ROUTER_PASS_MALFORMED, frame_len, XDP_PASS);

	if (!ipv4_lpm_contains(&router_vips, ip->daddr))
		return finish(ROUTER_PASS_NOT_VIP, frame_len, XDP_PASS);
	if (ip->ttl <= 1)
		return finish(ROUTER_PASS_TTL_EXPIRED, frame_len, XDP_PASS);

	set = active_set();
	if (set && set->fib) {
		struct bpf_fib_lookup params = {
			.family = AF_INET,
			.tos = ip->tos,
			.l4_protocol = ip->protocol,
			.ipv4_src = ip->saddr,
			.ipv4_dst = ip->daddr,
		};
		__u32 dst[4] = {0, 0, bpf_htonl(0xFFFF), ip->daddr};
		struct l4_ports *l4;

		if (ipv4_l4_ports(ip, c.end, &l4) == PARSE_OK) {
			params.sport = l4->source;
			params.dport = l4->dest;
		}
		return forward_fib(ctx, frame_len, set, &params, dst, bpf_ntohs(ip->tot_len),
				   ip->tos, ETH_P_IP);
	}
	if (!set || set->count == 0)
		return finish(ROUTER_DROP_NO_LB, frame_len, XDP_DROP);
	return forward(ctx, frame_len, flow_state(ip, c.end, set->seed), set,
		       bpf_ntohs(ip->tot_len), ip->tos, ETH_P_IP);
}

char LICENSE[] SEC("license") = "GPL";
