"""LoRA through PEFT: adapters injected in place into the LLM (no wrapper class, plain state-dict names)."""
from __future__ import annotations

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from mmln.tuning.registry import Strategy, register


def inject_lora(mllm, tune) -> None:
    cfg = LoraConfig(
        r=tune.lora.r, lora_alpha=tune.lora.alpha, lora_dropout=tune.lora.dropout,
        target_modules=list(tune.lora.target_modules), bias="none",
    )
    inject_adapter_in_model(cfg, mllm.llm)


def lora_params(mllm, tune):
    for m in mllm.llm.modules():
        if isinstance(m, LoraLayer):
            yield from m.lora_A.parameters()
            yield from m.lora_B.parameters()


register(Strategy(
    name="lora",
    description="LoRA adapters on q,k,v,o,gate,up,down (PEFT) + connector, embeddings, head",
    select=lora_params,
    prepare=inject_lora,
))
