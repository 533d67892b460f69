"""LoRA through PEFT: adapters injected in place into the LLM (no wrapper class, plain state-dict names).

Export hooks: `merge_lora` folds the adapters into their base Linear layers (the merged export),
`lora_peft_config` is the `LoraConfig` a PEFT adapter export is written with.
"""
from __future__ import annotations

from mmln.tuning.registry import Strategy, register


def lora_peft_config(mllm, tune):
    from peft import LoraConfig

    return LoraConfig(
        r=tune.lora.r, lora_alpha=tune.lora.alpha, lora_dropout=tune.lora.dropout,
        target_modules=list(tune.lora.target_modules), bias="none", task_type="CAUSAL_LM",
    )


def inject_lora(mllm, tune) -> None:
    from peft import inject_adapter_in_model

    cfg = lora_peft_config(mllm, tune)
    cfg.task_type = None  # injected in place: no task-specific wrapper
    inject_adapter_in_model(cfg, mllm.llm)


def lora_params(mllm, tune):
    from peft.tuners.lora import LoraLayer

    for m in mllm.llm.modules():
        if isinstance(m, LoraLayer):
            yield from m.lora_A.parameters()
            yield from m.lora_B.parameters()


def merge_lora(llm) -> int:
    """Fold injected PEFT adapters (LoRA, and DoRA / IA3 / VeRA alike: any PEFT tuner layer) into
    their base Linear layers and remove them; returns how many."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = 0
    for name, module in list(llm.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent = llm.get_submodule(name.rsplit(".", 1)[0]) if "." in name else llm
            setattr(parent, name.rsplit(".", 1)[-1], module.get_base_layer())
            merged += 1
    return merged


register(Strategy(
    name="lora",
    description="LoRA adapters on q,k,v,o,gate,up,down (PEFT) + connector, embeddings, head",
    select=lora_params,
    prepare=inject_lora,
    merge=merge_lora,
    peft_config=lora_peft_config,
))
