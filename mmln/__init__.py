"""mmln: LayerNorm tuning of LLaVA-style multimodal LLMs, and the baselines it is compared with."""

__version__ = "0.1.0"


def load(config, ckpt=None, overrides=()):
    """`mmln.load(config, ckpt)` -> a model with `.ask(image, question)` (see `mmln.api`)."""
    from mmln.api import load as _load

    return _load(config, ckpt, overrides)
