"""The executable specification of the data plane, in plain Python values: no kernel, no file
descriptors.

``state`` is what the BPF maps hold (VIPs, backends, tables, the connection table), ``icmp``
the ICMP watch and its reports, ``pipeline`` the packet path of docs/packet-path.md (``parse``
its sections 1-4), ``flowhash`` the flow hash and ``maglev`` the lookup tables. The XDP program
is tested against these byte for byte. ``rusty_rail.dataplane`` is the kernel layer, which
encodes these values into the BPF maps.
"""
