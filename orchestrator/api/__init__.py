"""The Python API (`import shardctl` re-exports it): jobs (job), `--set` overrides (overrides) and sweeps (sweep).
The CLI is a thin layer over it.
"""
