"""mmln: LayerNorm tuning of LLaVA-style multimodal LLMs, and the baselines it is compared with."""

import os as _os

__version__ = "0.1.0"

# Before torch loads OpenMP: waiting threads sleep instead of spinning. Spinning threads made a demo step
# 20-70x slower when other jobs loaded the cores (load 11-14), and the whole demo at least 2x slower beside
# two busy processes; sleeping costs ~34% of a small step on an idle machine (docs/demo.md, "On a busy
# machine"; benchmarks/bench_contention.py). OMP_WAIT_POLICY=ACTIVE (or any value) set by the user is kept.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def load(config, ckpt=None, overrides=()):
    """`mmln.load(config, ckpt)` -> a model with `.ask(image, question)` (see `mmln.api`)."""
    from mmln.api import load as _load

    return _load(config, ckpt, overrides)
