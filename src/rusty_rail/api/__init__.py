"""The REST API of `rusty-rail run`: VIPs, backends, the whole configuration, dry runs, flows,
/healthz and /metrics, described by the OpenAPI document at /openapi.json (docs/api.md).
"""
