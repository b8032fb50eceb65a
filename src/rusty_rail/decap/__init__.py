"""The server side of the deployment: the GRE decapsulation agent (``agent``, the
`rusty-rail decap` command's functions) that runs bpf/decap.bpf.c on a backend's interface.
"""
