"""The PEFT method zoo next to LayerNorm tuning, all through PEFT's own layers, injected in place:
DoRA, IA3, VeRA, LayerNorm + LoRA, and BitFit (the LLM's biases; refused on bias-free models).

Every method trains the shared trio (connector, embeddings, head) like `lora`, so that the
methods differ only in what they do inside the LLM; `tune.train_*` switch the trio off.
Adapter parameters are added to the total (`count_params`), as for LoRA.
`layernorm_lora` exports through `mmln.formats.peft_adapter` like `lora`: a LoRA adapter whose
`modules_to_save` are the trained norms (and embeddings / head when they train), so that
`PeftModel.from_pretrained(base_llm, layernorm_lora_adapter/)` reproduces the whole tuned LLM.
"""
from __future__ import annotations

from itertools import chain

from mmln.tuning.layernorm import norms, trained_norm_modules
from mmln.tuning.lora import inject_lora, lora_peft_config
from mmln.tuning.registry import Strategy, register


def adapter_params(mllm, tune=None):
    """The trainable tensors PEFT injected into the LLM (its layers' `adapter_layer_names`)."""
    # PEFT (and so torch) is imported when a model is built, not when a config names a strategy.
    from peft.tuners.tuners_utils import BaseTunerLayer

    for m in mllm.llm.modules():
        if isinstance(m, BaseTunerLayer):
            for name in m.adapter_layer_names:
                sub = getattr(m, name, None)
                if sub is not None:
                    yield from sub.parameters()


def inject_dora(mllm, tune) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    lc = tune.lora
    inject_adapter_in_model(LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, use_dora=True,
                                       target_modules=list(lc.target_modules), bias="none"), mllm.llm)


def inject_ia3(mllm, tune) -> None:
    from peft import IA3Config, inject_adapter_in_model

    inject_adapter_in_model(IA3Config(target_modules=list(tune.ia3.target_modules),
                                      feedforward_modules=list(tune.ia3.feedforward_modules)), mllm.llm)


def inject_vera(mllm, tune) -> None:
    # PEFT keeps VeRA's shared random projections on its tuner, which `inject_adapter_in_model`
    # refuses; the tuner injects in place all the same and its layers hold the projections. They
    # are not saved: PEFT regenerates them from projection_prng_key when it loads the adapter.
    from peft import VeraConfig
    from peft.tuners.vera import VeraModel

    cfg = VeraConfig(r=tune.vera.r, target_modules=list(tune.vera.target_modules), d_initial=tune.vera.d_initial,
                     projection_prng_key=tune.vera.seed, save_projection=False)
    VeraModel(mllm.llm, cfg, "default")


def layernorm_lora_peft_config(mllm, tune):
    """LoRA's PEFT config with the trained norm modules as `modules_to_save` (full module paths)."""
    cfg = lora_peft_config(mllm, tune)
    cfg.modules_to_save = trained_norm_modules(mllm)
    return cfg


def llm_biases(mllm, tune=None):
    biases = [p for n, p in mllm.llm.named_parameters() if n.endswith(".bias")]
    if not biases:
        raise ValueError(f"tune.strategy=bitfit: the LLM ({mllm.llm.config.model_type}) has no bias parameters "
                         f"(LLaMA-style models are bias-free); use a model with biases (e.g. Qwen2's q/k/v) "
                         f"or another strategy")
    return biases


register(Strategy(
    name="dora",
    description="DoRA (PEFT LoRA with magnitude vectors, tune.lora settings) + connector, embeddings, head",
    select=adapter_params, prepare=inject_dora,
))
register(Strategy(
    name="ia3",
    description="IA3 (PEFT) scaling vectors on tune.ia3.target_modules + connector, embeddings, head",
    select=adapter_params, prepare=inject_ia3,
))
register(Strategy(
    name="vera",
    description="VeRA (PEFT): per-layer scaling vectors over shared frozen random projections + connector, embeddings, head",
    select=adapter_params, prepare=inject_vera,
))
register(Strategy(
    name="layernorm_lora",
    description="LoRA adapters (tune.lora) and every norm + connector, embeddings, head",
    select=lambda mllm, tune: chain(adapter_params(mllm), norms(mllm, tune)), prepare=inject_lora,
    peft_config=layernorm_lora_peft_config, adapter_dir="layernorm_lora_adapter",
))
register(Strategy(
    name="bitfit",
    description="every bias of the LLM (e.g. Qwen2's q/k/v biases); refused on bias-free LLMs + connector, embeddings, head",
    select=llm_biases,
))
