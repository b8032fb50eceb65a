/* SPDX-License-Identifier: Apache-2.0 */
/* Learning from ICMP (docs/packet-path.md section 9): an ICMP or ICMPv6 destination
 * unreachable addressed to this node that quotes GRE this node sent to a watched backend
 * becomes a report for the control plane. The ICMP itself goes on to the host unchanged, like all host traffic. */
#ifndef RUSTY_RAIL_ICMP_H
#define RUSTY_RAIL_ICMP_H

#include "balancer_maps.h"
#include "balancer_types.h"
#include "lib/parse.h"
#include "lib/stats.h"
#include "lib/uapi.h"

/* The fixed part of an ICMP (v4 or v6) error message; the quoted packet follows it. uapi has
 * one struct per family (icmphdr, icmp6hdr) with unions for the rest; the 8 bytes they share
 * are all the learning reads, for both families. */
struct icmp_error {
	__u8 type;
	__u8 code;
	__be16 checksum;
	__be32 rest;
};

/* An IPv4 header is quoted with at least the first 8 bytes of what followed it (RFC 792):
 * here the GRE header. Those bytes are required present, never read. */
#define QUOTED_PAYLOAD_MIN 8

/* Writes a report about an IPv4 (addr_len 4) or IPv6 (16) backend. (The mirror test finds
 * struct icmp_report in btf_anchor.bpf.o, so this need not be a function of its own to bring
 * it into BTF.) */
static __always_inline void icmp_report_write(struct icmp_report *report, const void *backend,
					      const void *reporter, __u32 addr_len, __u8 type,
					      __u8 code)
{
	__builtin_memset(report, 0, sizeof(*report));
	__builtin_memcpy(report->backend_be, backend, addr_len);
	__builtin_memcpy(report->reporter_be, reporter, addr_len);
	report->family = addr_len == 4 ? 4 : 6;
	report->type = type;
	report->code = code;
}

/* Reports one watched backend, if its report is armed, and disarms it. A report that finds
 * the ring full is counted lost and leaves the backend armed, so the next ICMP can tell.
 * `addr_len` is a constant: 4 or 16. */
static __always_inline __u32 icmp_report(struct icmp_watch *watch, const void *backend,
					 const void *reporter, __u32 addr_len,
					 const struct icmp_error *icmp)
{
	struct icmp_report *report;

	if (!watch->armed)
		return ICMP_STAT_HELD;
	report = bpf_ringbuf_reserve(&icmp_reports, sizeof(*report), 0);
	if (!report)
		return ICMP_STAT_LOST;
	watch->armed = 0;
	icmp_report_write(report, backend, reporter, addr_len, icmp->type, icmp->code);
	bpf_ringbuf_submit(report, 0);
	return ICMP_STAT_REPORTED;
}

/* What an ICMPv4 destination unreachable to this node says (section 9a), or ICMP_STAT_COUNT for
 * a message that is none of the balancer's business. `ip` passed parse_outer_ipv4. */
static __always_inline __u32 icmp_ipv4_stat(const struct iphdr *ip, void *end)
{
	__u32 header_len = ip->ihl * 4, total_len = bpf_ntohs(ip->tot_len), quote_len;
	const struct settings *settings;
	struct icmp_error *icmp;
	struct icmp_watch *watch;
	struct iphdr *quoted;

	if (ip->protocol != IPPROTO_ICMP)
		return ICMP_STAT_COUNT;
	settings = settings_get();
	if (!settings || ip->daddr != settings->lb_ipv4_be)
		return ICMP_STAT_COUNT;
	if (ipv4_is_fragment(ip))
		return ICMP_STAT_COUNT;
	icmp = (void *)ip + header_len;
	if (header_len + sizeof(*icmp) > total_len || (void *)(icmp + 1) > end)
		return ICMP_STAT_COUNT;
	if (icmp->type != ICMP_DEST_UNREACH)
		return ICMP_STAT_COUNT;

	quoted = (void *)(icmp + 1);
	quote_len = total_len - header_len - sizeof(*icmp);
	if (quote_len < sizeof(*quoted) || (void *)(quoted + 1) > end)
		return ICMP_STAT_MALFORMED;
	if (quoted->version != 4 || quoted->ihl < 5 ||
	    quoted->ihl * 4 + QUOTED_PAYLOAD_MIN > quote_len)
		return ICMP_STAT_MALFORMED;
	if (quoted->protocol != IPPROTO_GRE || quoted->saddr != settings->lb_ipv4_be)
		return ICMP_STAT_NOT_OUR_GRE;
	watch = bpf_map_lookup_elem(&icmp_watch, &quoted->daddr);
	if (!watch)
		return ICMP_STAT_UNKNOWN_BACKEND;
	if (icmp->code == ICMP_FRAG_NEEDED)
		return ICMP_STAT_FRAG_NEEDED;
	return icmp_report(watch, &quoted->daddr, &ip->saddr, 4, icmp);
}

/* Whether `addr` is settings.lb_ipv6 (an all-zero lb_ipv6 is nobody's). */
static __always_inline int icmp_is_lb_ipv6(const struct in6_addr *addr,
					   const struct settings *settings)
{
	const __u64 *a = (const __u64 *)addr, *lb = (const __u64 *)settings->lb_ipv6;

	return a[0] == lb[0] && a[1] == lb[1] && (lb[0] | lb[1]) != 0;
}

/* What an ICMPv6 destination unreachable or packet too big to this node says (section 9b), or
 * ICMP_STAT_COUNT for a message that is none of the balancer's business. `ip6` is a whole
 * IPv6 header that passed parse_outer_ipv6. A function of its own (not inlined), so that its
 * lookup and report do not weigh on the register allocation of the balancing path. */
static __noinline __u32 icmp_ipv6_stat(const struct ipv6hdr *ip6, void *end)
{
	__u32 payload_len = bpf_ntohs(ip6->payload_len), quote_len;
	const struct settings *settings;
	struct icmp_error *icmp;
	struct icmp_watch *watch;
	struct ipv6hdr *quoted;

	if (ip6->nexthdr != IPPROTO_ICMPV6)
		return ICMP_STAT_COUNT;
	settings = settings_get();
	if (!settings || !icmp_is_lb_ipv6(&ip6->daddr, settings))
		return ICMP_STAT_COUNT;
	icmp = (void *)(ip6 + 1);
	if (payload_len < sizeof(*icmp) || (void *)icmp + payload_len > end ||
	    (void *)(icmp + 1) > end)
		return ICMP_STAT_COUNT;
	if (icmp->type != ICMPV6_DEST_UNREACH && icmp->type != ICMPV6_PKT_TOOBIG)
		return ICMP_STAT_COUNT;

	quoted = (void *)(icmp + 1);
	quote_len = payload_len - sizeof(*icmp);
	if (quote_len < sizeof(*quoted) + QUOTED_PAYLOAD_MIN || (void *)(quoted + 1) > end)
		return ICMP_STAT_MALFORMED;
	if (quoted->version != 6)
		return ICMP_STAT_MALFORMED;
	if (quoted->nexthdr != IPPROTO_GRE || !icmp_is_lb_ipv6(&quoted->saddr, settings))
		return ICMP_STAT_NOT_OUR_GRE;
	watch = bpf_map_lookup_elem(&icmp_watch_v6, &quoted->daddr);
	if (!watch)
		return ICMP_STAT_UNKNOWN_BACKEND;
	if (icmp->type == ICMPV6_PKT_TOOBIG)
		return ICMP_STAT_PACKET_TOO_BIG;
	return icmp_report(watch, &quoted->daddr, &ip6->saddr, 16, icmp);
}

static __always_inline void icmp_count(__u32 icmp_stat, __u32 len)
{
	if (icmp_stat < ICMP_STAT_COUNT)
		count_stat(&icmp_stats, icmp_stat, len);
}

#endif /* RUSTY_RAIL_ICMP_H */
