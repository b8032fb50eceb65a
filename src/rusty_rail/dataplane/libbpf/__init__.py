"""A thin ctypes binding of the system libbpf (libbpf.so.1): objects, programs, maps, ring
buffers, XDP links, tc filters and pins. Everything above it passes bytes and names.

One module per concern: ``objects`` (BpfObject, Program), ``bpfmap`` (Map, create_map),
``ringbuf``, ``links`` (XDP), ``attached`` (what the kernel has attached, by id), ``tc``,
``pins`` (bpffs); ``errors`` holds LibbpfError. The private ``_ffi`` is the C surface,
``_messages`` routes libbpf's messages, ``_fd`` is the handle every class is. Import from
here: the split is this package's own business.
"""

from rusty_rail.dataplane.libbpf.attached import (
    AttachedProgram,
    attach_xdp_netlink,
    xdp_link_holding,
)
from rusty_rail.dataplane.libbpf.bpfmap import (
    BPF_ANY,
    BPF_EXIST,
    BPF_F_INNER_MAP,
    BPF_F_MMAPABLE,
    BPF_F_NO_PREALLOC,
    BPF_NOEXIST,
    Map,
    MapType,
    bpf_unavailable_reason,
    create_map,
    num_possible_cpus,
)
from rusty_rail.dataplane.libbpf.errors import LibbpfError
from rusty_rail.dataplane.libbpf.links import (
    Link,
    XdpAttachment,
    XdpMode,
    attach_xdp,
    detach_xdp,
    query_xdp,
)
from rusty_rail.dataplane.libbpf.objects import (
    LIVE_MAX_BATCH,
    BpfObject,
    Program,
    TestRun,
    bpf_object_path,
)
from rusty_rail.dataplane.libbpf.pins import (
    BPFFS,
    PIN_ROOT,
    ensure_bpffs,
    lock_pin_dir,
    pin_dir,
    pins_outlive_process,
    remove_pin_dir,
)
from rusty_rail.dataplane.libbpf.ringbuf import RingBuffer
from rusty_rail.dataplane.libbpf.tc import TcDirection, TcFilter, attach_tc, detach_tc, query_tc

__all__ = [
    "BPFFS",
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_F_INNER_MAP",
    "BPF_F_MMAPABLE",
    "BPF_F_NO_PREALLOC",
    "BPF_NOEXIST",
    "LIVE_MAX_BATCH",
    "PIN_ROOT",
    "AttachedProgram",
    "BpfObject",
    "LibbpfError",
    "Link",
    "Map",
    "MapType",
    "Program",
    "RingBuffer",
    "TcDirection",
    "TcFilter",
    "TestRun",
    "XdpAttachment",
    "XdpMode",
    "attach_tc",
    "attach_xdp",
    "attach_xdp_netlink",
    "bpf_object_path",
    "bpf_unavailable_reason",
    "create_map",
    "detach_tc",
    "detach_xdp",
    "ensure_bpffs",
    "lock_pin_dir",
    "num_possible_cpus",
    "pin_dir",
    "pins_outlive_process",
    "query_tc",
    "query_xdp",
    "remove_pin_dir",
    "xdp_link_holding",
]
