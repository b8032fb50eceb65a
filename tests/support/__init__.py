"""Helpers the test tiers share: case tables, the balancer harness, the control-plane bed,
the root-test policy and the veth pair. Plain code only; fixtures live in the conftest files.
"""
