"""The strategy registry: each strategy declares what it makes trainable (PEFT's habit).

A strategy is (a) an optional `prepare` step that changes the model (LoRA injects adapters),
(b) `select`, the LLM-internal parameters it trains, and (c) its defaults for the "shared trio"
(connector, input embeddings, LM head), which `tune.train_connector|train_embeddings|train_head`
override. The vision encoder is always frozen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from torch import nn

Selector = Callable[[nn.Module, object], Iterable[nn.Parameter]]


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    select: Selector  # (mllm, tune_cfg) -> LLM parameters to train
    connector: bool = True  # shared-trio defaults
    embeddings: bool = True
    head: bool = True
    prepare: Optional[Callable[[nn.Module, object], None]] = None


REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    if strategy.name in REGISTRY:
        raise ValueError(f"tuning strategy '{strategy.name}' is already registered")
    REGISTRY[strategy.name] = strategy
    return strategy


def get_strategy(name: str) -> Strategy:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown tuning strategy '{name}' (tune.strategy); registered: {', '.join(REGISTRY)}"
        ) from None
