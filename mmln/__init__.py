"""mmln: LayerNorm tuning of LLaVA-style multimodal LLMs, and the baselines it is compared with."""

__version__ = "0.1.0"
