"""The base layer: what every other layer may use and which imports nothing of mmln above it.

`constants` (limits and names shared across layers), `io` (atomic writes: write beside, then swap),
`outputs` (output folders and their manifests), `locks` (file locks), `progress` (quiet-aware logs),
`memtrack` (peak memory). No torch, transformers or Lightning at import.
"""
