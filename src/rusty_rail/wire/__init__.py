"""Packet bytes: the wire formats' numbers (``constants``), header fields (``fields``),
checksums (``checksum``), frame builders (``build``), the balancer's GRE input frames
(``frames``) and the dissector (``describe``). Pure byte work, no kernel.

Import from the module that holds a name; this package re-exports nothing.
"""
