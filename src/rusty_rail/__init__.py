"""rusty-rail: a Maglev-style, line-rate, distributed layer-4 load balancer.

The control plane is this Python package; the packet path is an XDP program in bpf/.
"""

__version__ = "0.1.0"
