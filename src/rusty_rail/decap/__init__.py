"""The server side of the deployment: the decapsulation agent (``agent``, the `rusty-rail decap`
command's functions) that runs bpf/decap.bpf.c on a backend's interface; its maps (``maps``)
and the methods it takes (``methods``).
"""
