"""Model: vision encoders, connector, the MLLM, and building it from a config (local paths only).

The package itself imports no torch: `mmln.model.errors` (and so every CLI's `--help` and config
error) stays light. The names below are loaded from their modules on first use.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from mmln.config import ModelConfig

if TYPE_CHECKING:
    import torch

    from mmln.model.mllm import MLLM

__all__ = [
    "IGNORE_INDEX", "IMAGE_TOKEN_INDEX", "MLLM", "MLLMOutput", "MissingWeightsError", "VisionEncoder",
    "build_mllm", "frozen_dtype", "save_mm_projector",
]
_LAZY = {
    "IGNORE_INDEX": "mmln.base.constants", "IMAGE_TOKEN_INDEX": "mmln.base.constants",
    "MLLM": "mmln.model.mllm", "MLLMOutput": "mmln.model.mllm",
    "MissingWeightsError": "mmln.model.errors", "VisionEncoder": "mmln.model.vision",
    "save_mm_projector": "mmln.model.connector",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmln.model' has no attribute '{name}'")


def frozen_dtype(name: str) -> "torch.dtype":
    """dtype of the frozen weights: `auto` = bf16 where a GPU runs bf16, else fp32."""
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def build_mllm(cfg: ModelConfig, *, load_weights: bool = True):
    """Vision + connector + LLM. Frozen weights in `cfg.dtype`; the connector is built in fp32.

    `load_weights=False` builds the architecture only (random init; under `torch.device("meta")`
    no memory at all), which is how `mmln.params` counts 7B and 13B models on a laptop.
    The tuning strategy decides what trains and upcasts it to fp32 (`mmln.tuning.apply_strategy`).
    """
    from mmln.model.connector import build_connector, load_connector
    from mmln.model.llm import build_llm
    from mmln.model.mllm import MLLM
    from mmln.model.vision import build_vision

    dtype = frozen_dtype(cfg.dtype)
    sources = {"llm": ("model.llm.path", cfg.llm.path), "vision": ("model.vision.path", cfg.vision.path),
               "connector": ("model.connector.path", cfg.connector.path)}
    if cfg.init_from:  # the parts without a path of their own come from the one checkpoint
        sources = {part: (key, path) if path and part != "llm" else ("model.init_from", cfg.init_from)
                   for part, (key, path) in sources.items()}
    if load_weights:  # a stranger's weights: no code, no damaged header, no integer weights (one line each)
        from mmln.formats.trust import check_source

        for key, path in dict(sources.values()).items():
            check_source(path, key)
    from mmln.families import native_family

    family = native_family(cfg)
    if family is not None:  # a native transformers VLM (mmln.model.families)
        from mmln.model.families.native import build_native

        return build_native(cfg, family, dtype, load_weights=load_weights)
    if cfg.init_from and load_weights:  # one checkpoint holds every part (llava-hf / original LLaVA)
        from mmln.formats.init_from import build_parts
        from mmln.model.vision import VisionEncoder

        backbone, connector, llm = build_parts(cfg, dtype)
        vision = VisionEncoder(cfg.vision, backbone.to(dtype))
        connector = connector.float()
    else:
        vision = build_vision(cfg.vision, load_weights=load_weights).to(dtype)
        llm = build_llm(cfg.llm, dtype=dtype, load_weights=load_weights, attn_implementation=cfg.attn_implementation)
        connector = build_connector(cfg.connector.type, vision.hidden_size, llm.config.hidden_size)
    if cfg.connector.path and load_weights:
        load_connector(connector, cfg.connector.path)
    if cfg.gradient_checkpointing:
        # non-reentrant: with frozen embeddings and connector, reentrant checkpointing drops the norms' grads
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    llm.config.use_cache = False
    if load_weights:  # NaN / Inf in loaded weights: refused, naming the tensor and where it came from
        from mmln.formats.trust import check_finite

        for part, module in (("llm", llm), ("vision", vision), ("connector", connector)):
            key, path = sources[part]
            if path:
                check_finite(module.state_dict(), key, path)
    return MLLM(vision, connector, llm, max_length=cfg.max_length, loss_chunk=cfg.loss_chunk)
