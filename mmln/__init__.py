"""mmln: LayerNorm tuning of LLaVA-style multimodal LLMs, and the baselines it is compared with."""

import os as _os

__version__ = "0.1.0"

# Before torch loads OpenMP: waiting threads sleep instead of spinning. Spinning threads make a CPU step
# 20-70x slower when other processes compete for the cores (benchmarks/bench_contention.py,
# docs/measured.md); OMP_WAIT_POLICY=ACTIVE (or any value) set by the user is kept.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def load(config, ckpt=None, overrides=()):
    """`mmln.load(config, ckpt)` -> a model with `.ask(image, question)` (see `mmln.api`)."""
    from mmln.api import load as _load

    return _load(config, ckpt, overrides)
