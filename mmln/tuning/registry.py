"""The strategy registry: each strategy declares what it makes trainable (PEFT's habit).

A strategy is (a) an optional `prepare` step that changes the model (LoRA injects adapters),
(b) `select`, the LLM-internal parameters it trains, (c) its defaults for the "shared trio"
(connector, input embeddings, LM head), which `tune.train_connector|train_embeddings|train_head`
override, (d) the training `stage` it belongs to (`pretrain` = stage 1, `instruct` = stage 2),
and (e) its export hooks: `merge` folds what `prepare` added back into plain weights (LoRA; a
norm-only strategy changes no structure and needs none), and `peft_config` describes the
strategy as a PEFT config, so that `mmln.formats.peft_adapter` can write a PEFT adapter any
`PeftModel.from_pretrained` loads (LoRA -> `LoraConfig`, norms -> `LNTuningConfig`; a new PEFT
method plugs in by giving its config here). The vision encoder is always frozen.

This module and the strategy modules import torch / PEFT only inside functions, so that
checking `tune.strategy` when a config loads stays fast.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

if TYPE_CHECKING:
    from torch import nn

Selector = Callable[["nn.Module", Any], Iterable["nn.Parameter"]]
STAGES = ("pretrain", "instruct")


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    select: Selector  # (mllm, tune_cfg) -> LLM parameters to train
    connector: bool = True  # shared-trio defaults
    embeddings: bool = True
    head: bool = True
    prepare: Optional[Callable[["nn.Module", Any], None]] = None
    stage: str = "instruct"  # the stage (cfg.stage) this strategy trains in
    merge: Optional[Callable[["nn.Module"], int]] = None  # (llm) -> modules merged; None = nothing to merge
    peft_config: Optional[Callable[["nn.Module", Any], Any]] = None  # (mllm, tune) -> peft.PeftConfig
    adapter_dir: Optional[str] = None  # the PEFT export's directory name; None = `<peft type>_adapter`


REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    if strategy.name in REGISTRY:
        raise ValueError(f"tuning strategy '{strategy.name}' is already registered")
    if strategy.stage not in STAGES:
        raise ValueError(f"tuning strategy '{strategy.name}': stage {strategy.stage!r} is not one of {STAGES}")
    REGISTRY[strategy.name] = strategy
    return strategy


def strategy_problem(name: str, stage: Optional[str] = None) -> Optional[str]:
    """Why `tune.strategy=name` cannot run in `stage` (None = it can): unknown name or wrong stage."""
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, list(REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return f"unknown tuning strategy tune.strategy={name!r}.{hint} registered: {', '.join(REGISTRY)}"
    s = REGISTRY[name]
    if stage is not None and s.stage != stage:
        fits = [n for n, x in REGISTRY.items() if x.stage == stage]
        return (f"tune.strategy={name!r} is a stage-'{s.stage}' strategy but stage={stage!r}: set "
                f"stage={s.stage}, or pick one of {', '.join(fits)}")
    return None


def get_strategy(name: str) -> Strategy:
    problem = strategy_problem(name)
    if problem:
        raise ValueError(problem)
    return REGISTRY[name]
