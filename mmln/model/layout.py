"""Where the parts of a model are: norms found by type, the LLM under a PEFT wrapper, its decoder.

Shared by the tuning strategies (what trains) and the analyses (what is measured), so both see
the same modules.
"""
from __future__ import annotations

from torch import nn
from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and the RMSNorm classes of Hugging Face architectures (by type, never by name)."""
    norm_types = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, *ALL_LAYERNORM_LAYERS)
    return isinstance(module, norm_types) or type(module).__name__.endswith(("RMSNorm", "LayerNorm"))


def base_llm(llm: nn.Module) -> nn.Module:
    """The Hugging Face model itself: `llm`, or the model inside a PEFT wrapper (LoRA)."""
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm


def llm_decoder(mllm) -> nn.Module:
    """The decoder stack of an MLLM's (possibly PEFT-wrapped) LLM: embeddings, `.layers`, final norm."""
    return base_llm(mllm.llm).get_decoder()
