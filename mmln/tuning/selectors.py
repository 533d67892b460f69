"""Parameter selectors for the strategies: the norms (by module type) and the projections (by block
structure) a strategy trains. torch is imported only when a selector runs, so that importing the
strategy registry (as config validation does for `tune.strategy`) stays light."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from torch import nn


def is_norm(module: nn.Module) -> bool:
    """`mmln.model.layout.is_norm` (norms by type), imported on first use."""
    from mmln.model.layout import is_norm as by_type

    return by_type(module)


def llm_decoder(mllm) -> nn.Module:
    from mmln.model.layout import llm_decoder as decoder

    return decoder(mllm)

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


def vision_norm_params(mllm) -> list[nn.Parameter]:
    """The norms of the vision tower, outside the connector (a projector inside the tower, as
    Qwen's merger, keeps its own role): what `tune.vision_norms=true` adds to any strategy."""
    skip = {id(p) for p in mllm.connector.parameters()}
    return [p for m in mllm.vision.modules() if is_norm(m) for p in m.parameters(recurse=False) if id(p) not in skip]


# "other": LLM weights, biases; "vision_norms": the tower's norms (tune.vision_norms)
GROUPS = ("norms", "connector", "embeddings", "head", "adapters", "vision_norms", "other")


def param_groups_of(mllm) -> dict[int, str]:
    """id(parameter) -> its group (GROUPS, or "vision"); a tied head is the embeddings' tensor, so
    it is in "embeddings" and "head" stays empty. Adapters = tensors PEFT injected into the LLM."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = {id(p): "vision" for p in mllm.vision.parameters()}
    out.update({id(p): "other" for p in mllm.llm.parameters()})
    for m in mllm.llm.modules():
        if is_norm(m):
            out.update({id(p): "norms" for p in m.parameters(recurse=False)})
        if isinstance(m, BaseTunerLayer):
            for name in m.adapter_layer_names:
                sub = getattr(m, name, None)
                out.update({id(p): "adapters" for p in (sub.parameters() if sub is not None else ())})
    out.update({id(p): "vision_norms" for p in vision_norm_params(mllm)})
    out[id(mllm.llm.get_output_embeddings().weight)] = "head"
    out[id(mllm.llm.get_input_embeddings().weight)] = "embeddings"
    out.update({id(p): "connector" for p in mllm.connector.parameters()})
    return out
