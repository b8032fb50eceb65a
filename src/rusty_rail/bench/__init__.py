"""Benchmarks behind `rusty-rail bench ...`: each returns plain data and renders a table.

Every timing is reported next to a baseline measured in the same run, as a ratio.
"""
