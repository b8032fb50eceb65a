/* SPDX-License-Identifier: Apache-2.0 */
/* Learning from ICMP (docs/packet-path.md section 9): a destination unreachable addressed to
 * this node that quotes GRE this node sent to a watched backend becomes a report for the
 * control plane. The ICMP itself goes on to the host unchanged, like all host traffic. */
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

/* Writes a report. (The mirror test finds struct icmp_report in btf_anchor.bpf.o, so this
 * need not be a function of its own to bring it into BTF.) */
static __always_inline void icmp_report_write(struct icmp_report *report, __be32 backend,
					 __be32 reporter, __u8 type, __u8 code)
{
	__builtin_memset(report, 0, sizeof(*report));
	report->backend_be[0] = backend;
	report->reporter_be[0] = reporter;
	report->family = 4;
	report->type = type;
	report->code = code;
}

/* Reports one watched backend, if its report is armed, and disarms it. A report that finds
 * the ring full is counted lost and leaves the backend armed, so the next ICMP can tell. */
static __always_inline __u32 icmp_report(struct icmp_watch *watch, __be32 backend,
					 __be32 reporter, const struct icmp_error *icmp)
{
	struct icmp_report *report;

	if (!watch->armed)
		return ICMP_STAT_HELD;
	report = bpf_ringbuf_reserve(&icmp_reports, sizeof(*report), 0);
	if (!report)
		return ICMP_STAT_LOST;
	watch->armed = 0;
	icmp_report_write(report, backend, reporter, icmp->type, icmp->code);
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
	return icmp_report(watch, quoted->daddr, ip->saddr, icmp);
}

/* ICMPv6 destination unreachable or packet too big quoting IPv6 GRE (section 9b): counted,
 * not acted on, as this node sends no GRE over IPv6 yet. `ip6` is a whole IPv6 header. */
static __always_inline __u32 icmp_ipv6_stat(const struct ipv6hdr *ip6, void *end)
{
	__u32 payload_len = bpf_ntohs(ip6->payload_len);
	struct icmp_error *icmp;
	struct ipv6hdr *quoted;

	if (ip6->nexthdr != IPPROTO_ICMPV6)
		return ICMP_STAT_COUNT;
	icmp = (void *)(ip6 + 1);
	quoted = (void *)(icmp + 1);
	if (payload_len < sizeof(*icmp) + sizeof(*quoted) || (void *)icmp + payload_len > end)
		return ICMP_STAT_COUNT;
	if ((void *)(quoted + 1) > end) /* known already; the verifier needs it said */
		return ICMP_STAT_COUNT;
	if (icmp->type != ICMPV6_DEST_UNREACH && icmp->type != ICMPV6_PKT_TOOBIG)
		return ICMP_STAT_COUNT;
	if (quoted->version != 6 || quoted->nexthdr != IPPROTO_GRE)
		return ICMP_STAT_COUNT;
	return ICMP_STAT_V6_GRE;
}

static __always_inline void icmp_count(__u32 icmp_stat, __u32 len)
{
	if (icmp_stat < ICMP_STAT_COUNT)
		count_stat(&icmp_stats, icmp_stat, len);
}

#endif /* RUSTY_RAIL_ICMP_H */
