"""Session affinity (docs/flow-hash.md, "Session affinity"): the hash a VIP's Maglev pick uses,
over the flow fields its mode names, the others hashed as zero. The twin of bpf/affinity.h.

Only the pick of a new flow depends on it: the connection table keys on the whole flow and
places it by the 5-tuple hash, and the outer UDP source port of VXLAN and GENEVE is the
5-tuple hash too (per connection, for the underlay's ECMP spread).
"""

from __future__ import annotations

from dataclasses import replace

from rusty_rail.model.flowhash import DEFAULT_SEED, Flow, flow_hash
from rusty_rail.model.state import Affinity

#: The configuration's names of the modes (config.enums.Affinity's values).
AFFINITY_NAMES = {
    Affinity.FIVE_TUPLE: "5-tuple",
    Affinity.SOURCE_IP: "source-ip",
    Affinity.SOURCE_IP_PROTO: "source-ip+proto",
    Affinity.NO_SOURCE_PORT: "no-source-port",
}


def affinity_flow(flow: Flow, mode: Affinity) -> Flow:
    """``flow`` with the fields ``mode`` does not hash set to zero."""
    if mode is Affinity.SOURCE_IP:
        return replace(flow, dst=bytes(len(flow.dst)), proto=0, sport=0, dport=0)
    if mode is Affinity.SOURCE_IP_PROTO:
        return replace(flow, dst=bytes(len(flow.dst)), sport=0, dport=0)
    if mode is Affinity.NO_SOURCE_PORT:
        return replace(flow, sport=0)
    return flow


def affinity_hash(flow: Flow, mode: Affinity, seed: int = DEFAULT_SEED) -> int:
    """The 32-bit hash a VIP of affinity ``mode`` picks ``flow``'s backend with."""
    return flow_hash(affinity_flow(flow, mode), seed)
