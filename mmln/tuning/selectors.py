"""Parameter selectors for the strategies: the norms (by module type) and the projections (by block
structure) a strategy trains."""
from __future__ import annotations

from typing import Iterator

from torch import nn

from mmln.model.layout import is_norm, llm_decoder

__all__ = ["block_linear_params", "block_norm_params", "final_norm_params", "is_norm"]


def _params(modules: Iterator[nn.Module]) -> Iterator[nn.Parameter]:
    for m in modules:
        yield from m.parameters()


def block_norm_params(mllm) -> Iterator[nn.Parameter]:
    """Every norm inside every decoder block (LLaMA: input_layernorm, post_attention_layernorm)."""
    return _params(m for layer in mllm.decoder_layers() for m in layer.modules() if is_norm(m))


def final_norm_params(mllm) -> Iterator[nn.Parameter]:
    """Norms of the decoder outside its blocks (LLaMA: model.norm)."""
    decoder = mllm.decoder_layers()
    return _params(m for m in llm_decoder(mllm).children() if m is not decoder and is_norm(m))


def block_linear_params(mllm, names: tuple[str, ...]) -> Iterator[nn.Parameter]:
    """Full weights of the projections called `names` (e.g. q_proj, v_proj) in every decoder block."""
    return _params(
        m for layer in mllm.decoder_layers() for n, m in layer.named_modules() if n.rsplit(".", 1)[-1] in names
    )
