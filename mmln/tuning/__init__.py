"""Tuning strategies: what trains, and in which dtype.

`apply_strategy(mllm, cfg.tune)` freezes everything, lets the strategy prepare the model (LoRA),
marks its parameters and the shared trio trainable, and upcasts exactly those to fp32: frozen
weights may stay bf16, but a bf16 norm gain near 1.0 cannot take updates below ~2^-8 of its value.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# import order = registry order (what `--strategy all` lists)
from mmln.tuning import connector, finetune, lora, projections, layernorm  # noqa: F401,I001  (registers the strategies)
from mmln.tuning import peft_zoo  # noqa: F401,E402  (DoRA, IA3, VeRA, LayerNorm + LoRA, BitFit)
from mmln.tuning.selectors import GROUPS, param_groups_of, vision_norm_params
from mmln.tuning.registry import REGISTRY, Strategy, get_strategy, register, strategy_problem

__all__ = ["REGISTRY", "Strategy", "apply_strategy", "count_params", "get_strategy", "register",
           "strategy_problem", "trainable_names"]


def apply_strategy(mllm, tune) -> list[str]:
    import torch

    strategy = get_strategy(tune.strategy)
    mllm.requires_grad_(False)
    if strategy.prepare is not None:
        strategy.prepare(mllm, tune)
        mllm.requires_grad_(False)
    chosen = list(strategy.select(mllm, tune))

    def switch(value, default):
        return default if value is None else bool(value)

    if switch(tune.train_connector, strategy.connector):
        chosen += list(mllm.connector.parameters())
    if switch(tune.train_embeddings, strategy.embeddings):
        chosen.append(mllm.llm.get_input_embeddings().weight)
    if switch(tune.train_head, strategy.head):
        chosen.append(mllm.llm.get_output_embeddings().weight)
    vision = {id(p) for p in mllm.vision.parameters()}
    allowed = {id(p) for p in mllm.connector.parameters()}  # a connector inside the tower (Qwen's merger)
    if getattr(tune, "vision_norms", False):
        tower_norms = vision_norm_params(mllm)
        chosen += tower_norms
        allowed |= {id(p) for p in tower_norms}
    for p in chosen:  # the vision tower stays frozen but for those
        if id(p) not in vision or id(p) in allowed:
            p.requires_grad_(True)
    for p in mllm.parameters():
        if p.requires_grad and p.dtype != torch.float32 and p.device.type != "meta":
            p.data = p.data.float()
    return trainable_names(mllm)


def trainable_names(mllm) -> list[str]:
    return [n for n, p in mllm.named_parameters() if p.requires_grad]


@dataclass
class ParamCount:
    total: int
    trainable: int
    groups: dict[str, int] = field(default_factory=dict)  # trainable per group (mmln.tuning.selectors.GROUPS)

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0


def count_params(mllm) -> ParamCount:
    """The paper's accounting: the whole MLLM (vision encoder included, adapters added) is the total;
    `groups` splits the trainable count into norms / connector / embeddings / head / adapters / other."""
    params = {id(p): p for p in mllm.parameters()}.values()  # tied weights count once
    group_of = param_groups_of(mllm)
    groups = dict.fromkeys(GROUPS, 0)
    for p in params:
        if p.requires_grad:
            groups[group_of[id(p)]] += p.numel()
    return ParamCount(sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad), groups)
