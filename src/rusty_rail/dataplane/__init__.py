"""The kernel-facing layer of the data plane: libbpf (ctypes) and netlink (pyroute2).

The only package that holds file descriptors; the pure core never imports it.
"""
