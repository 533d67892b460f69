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


def block_norms(mllm) -> Iterator[tuple[str, nn.Module]]:
    """(name inside the block, module) of every norm in every decoder block: LLaMA / Mistral /
    Qwen2 input_layernorm, post_attention_layernorm; Gemma-2 also pre_ and post_feedforward_layernorm;
    Qwen3 also self_attn.q_norm, self_attn.k_norm."""
    return ((n, m) for layer in mllm.decoder_layers() for n, m in layer.named_modules() if is_norm(m))


def block_norm_params(mllm, exclude: tuple[str, ...] | list[str] = ()) -> Iterator[nn.Parameter]:
    """Every norm inside every decoder block, but those whose last name is in `exclude`
    (e.g. ("q_norm", "k_norm")); a name that matches no norm of the model is a ValueError."""
    exclude = tuple(exclude)
    if exclude:
        present = {n.rsplit(".", 1)[-1] for n, _ in block_norms(mllm)}
        unknown = sorted(set(exclude) - present)
        if unknown:
            raise ValueError(f"tune.exclude_norms: {', '.join(unknown)} name no norm of this model's blocks; "
                             f"its block norms are {', '.join(sorted(present))}")
    return _params(m for n, m in block_norms(mllm) if n.rsplit(".", 1)[-1] not in exclude)


def final_norm_params(mllm) -> Iterator[nn.Parameter]:
    """Norms of the decoder outside its blocks (LLaMA: model.norm)."""
    decoder = mllm.decoder_layers()
    return _params(m for m in llm_decoder(mllm).children() if m is not decoder and is_norm(m))


def block_linear_params(mllm, names: tuple[str, ...]) -> Iterator[nn.Parameter]:
    """Full weights of the projections called `names` (e.g. q_proj, v_proj) in every decoder block."""
    return _params(
        m for layer in mllm.decoder_layers() for n, m in layer.named_modules() if n.rsplit(".", 1)[-1] in names
    )
