"""A tuned LLM as a PEFT adapter directory: `PeftModel.from_pretrained(base_llm, DIR)` reproduces it.

Generic over PEFT methods: the strategy gives its PEFT config (`Strategy.peft_config`); PEFT
itself builds the adapter structure on a weightless (meta-device) copy of the LLM, mmln's tuned
tensors are put into it by name, and PEFT's own `save_pretrained` writes the directory (keys
with PEFT's `base_model.model.` prefix, `adapter_config.json`). A trained input embedding or LM
head goes into the adapter as PEFT `modules_to_save` (as do the norms `layernorm_lora` trains beside
its LoRA adapters, named by its config). Every tensor the run trained inside the
LLM must land in the adapter, and every adapter tensor must come from the run: anything else is
an error, never a silently partial adapter. The connector is not part of the LLM: it travels
beside the adapter as LLaVA's `mm_projector.bin`.
"""
from __future__ import annotations

import re
from pathlib import Path

PEFT_PREFIX = "base_model.model."
_WRAPPED = re.compile(r"\.[A-Za-z_0-9]+\.default(?=\.)")  # ln_tuning_layers.default, modules_to_save.default


def _trio_modules(llm) -> list[str]:
    """Names (relative to the LLM) of the input embedding / LM head when they train."""
    out = []
    for module in (llm.get_input_embeddings(), llm.get_output_embeddings()):
        if module is not None and module.weight.requires_grad:
            out.append(next(n for n, m in llm.named_modules() if m is module).rsplit(".", 1)[-1])
    return out


def injected_peft_config(mllm):
    """The PEFT config of the adapters a strategy injected itself (DoRA, IA3, VeRA), for a causal LM;
    None when nothing was injected."""
    import copy

    configs = getattr(mllm.llm, "peft_config", None) or {}
    if "default" not in configs:
        return None
    config = copy.deepcopy(configs["default"])
    config.task_type = "CAUSAL_LM"
    return config


def peft_config_of(mllm, tune):
    """The PEFT config a strategy's adapter is written with: its own (`Strategy.peft_config`), else
    the config of what it injected; a ValueError when the strategy has no PEFT form."""
    from mmln.tuning import get_strategy

    strategy = get_strategy(tune.strategy)
    config = strategy.peft_config(mllm, tune) if strategy.peft_config else injected_peft_config(mllm)
    if config is None:
        raise ValueError(f"tune.strategy={tune.strategy!r} has no PEFT form: export it merged "
                         "(python -m mmln.export --format hf-llava) instead")
    return config


def save_peft_adapter(mllm, tune, out: str | Path, base_path: str | None = None, connector: bool = False) -> Path:
    """Write the LLM part of a tuned `mllm` as a PEFT adapter directory `out` (with the connector as
    `mm_projector.bin` when `connector`); returns it. `out` must be new, empty or an earlier adapter
    mmln wrote: the new one is built beside it and swapped in, its manifest last (`mmln.base.outputs`)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from mmln.model import save_mm_projector
    from mmln.base.outputs import claim, replacing

    claim(out, "peft-adapter", "the adapter folder")

    llm = mllm.llm
    # every name of a trained tensor, tied ones too (a tied head is the trained embedding under a second name)
    trained = {n: p for n, p in llm.named_parameters(remove_duplicate=False) if p.requires_grad}
    config = peft_config_of(mllm, tune)
    trio = _trio_modules(llm)
    if trio:
        config.modules_to_save = sorted(set(config.modules_to_save or []) | set(trio))
    config.base_model_name_or_path = base_path
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(llm.config)
    pm = get_peft_model(skeleton, config)
    state, left = _adapter_state(pm, config.peft_type, trained, llm.named_parameters())
    if left:
        raise ValueError(f"the {config.peft_type} adapter would not carry {len(left)} tensors the run trained, "
                         f"e.g. {left[:4]}: the strategy's PEFT config misses them")
    pm.load_state_dict(state, strict=False, assign=True)
    out = Path(out)
    with replacing(out, "peft-adapter", "the adapter folder") as tmp:
        pm.save_pretrained(tmp)
        if connector:
            save_mm_projector(mllm.connector, tmp / "mm_projector.bin")
    return out


def adapter_dir_name(config) -> str:
    """`lora_adapter`, `ln_tuning_adapter`, ...: the PEFT type, lower-case."""
    return f"{str(getattr(config.peft_type, 'value', config.peft_type)).lower()}_adapter"


def export_peft_adapter(mllm, cfg, run_dir: str | Path) -> Path | None:
    """`<run_dir>/<type>_adapter/` for a strategy with a PEFT form (else None), with the connector
    beside the adapter weights as LLaVA's `mm_projector.bin` when the run trained it."""
    from mmln.tuning import get_strategy

    strategy = get_strategy(cfg.tune.strategy)
    if strategy.peft_config is None and injected_peft_config(mllm) is None:
        return None
    out = Path(run_dir) / (strategy.adapter_dir or (f"{strategy.name}_adapter" if strategy.peft_config is None
                                                    else adapter_dir_name(strategy.peft_config(mllm, cfg.tune))))
    return save_peft_adapter(mllm, cfg.tune, out, base_path=cfg.model.llm.path,
                             connector=any(p.requires_grad for p in mllm.connector.parameters()))


def family_peft_config(mllm, tune):
    """The strategy's PEFT config for a native family's whole transformers model (`mllm.model`):
    its targets named by their full paths in that model (LoRA targets by name would also match the
    vision tower's projections), the trained embeddings / head / projector as modules_to_save; no
    task type (the base is the family's image-text-to-text class, not a causal LM)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    try:
        config = peft_config_of(mllm, tune)
    except ValueError:
        raise ValueError(f"tune.strategy={tune.strategy!r} has no PEFT form: export it merged "
                         "(python -m mmln.export --format hf) instead") from None
    full = {id(m): n for n, m in mllm.model.named_modules()}
    view = dict(mllm.llm.named_modules())
    if isinstance(config.target_modules, (list, set, tuple)) and all(t in view for t in config.target_modules):
        config.target_modules = sorted(full[id(view[t])] for t in config.target_modules)  # LN tuning: norm paths
    else:  # LoRA and the like: the modules the strategy injected adapters into
        config.target_modules = sorted(full[id(m)] for m in mllm.llm.modules() if isinstance(m, BaseTunerLayer))
    ff = getattr(config, "feedforward_modules", None)  # IA3: a subset of the targets, by the same full paths
    if ff:
        short = {ff} if isinstance(ff, str) else set(ff)
        config.feedforward_modules = [t for t in config.target_modules if t.rsplit(".", 1)[-1] in short]
    save = [full[id(m)] for m in (mllm.llm.get_input_embeddings(), mllm.llm.get_output_embeddings())
            if m is not None and m.weight.requires_grad]
    for name in config.modules_to_save or []:  # the strategy's own (layernorm_lora's norms): by full path
        save += [full[id(m)] for n, m in view.items() if n == name or n.endswith("." + name)]
    for path in mllm.family.connector:  # the projector when it trained (a bare parameter cannot be saved: left over)
        module = mllm.model.get_submodule(path) if path in full.values() else None
        if module is not None and any(p.requires_grad for p in module.parameters()):
            save.append(path)
    config.modules_to_save = sorted(set(save)) or None
    config.task_type = None
    return config


def save_family_peft_adapter(mllm, cfg, out: str | Path) -> Path:
    """A native family's tuned model as a PEFT adapter directory over its transformers class:
    `PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(init_from), out)` is the
    tuned model. Every trained tensor must land in the adapter and every adapter tensor come from
    the run (else a ValueError naming them); built beside `out` and swapped in (`mmln.base.outputs`)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForImageTextToText

    from mmln.base.outputs import claim, replacing

    claim(out, "peft-adapter", "the adapter folder")
    trained = {n: p for n, p in mllm.model.named_parameters(remove_duplicate=False) if p.requires_grad}
    config = family_peft_config(mllm, cfg.tune)
    config.base_model_name_or_path = str(cfg.model.init_from)
    with torch.device("meta"):
        skeleton = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(cfg.model.init_from))
    pm = get_peft_model(skeleton, config)
    state, left = _adapter_state(pm, config.peft_type, trained, mllm.model.named_parameters())
    if left:
        raise ValueError(f"model family {mllm.family.name!r}: a PEFT adapter cannot carry {len(left)} tensors the run "
                         f"trained, e.g. {left[:4]}: export it merged (python -m mmln.export --format hf) instead")
    pm.load_state_dict(state, strict=False, assign=True)
    out = Path(out)
    with replacing(out, "peft-adapter", "the adapter folder") as tmp:
        pm.save_pretrained(tmp)
    return out


def export_family_peft_adapter(mllm, cfg, run_dir: str | Path) -> Path | None:
    """`<run_dir>/<type>_adapter/` of a native family's run whose strategy has a PEFT form (else None,
    also when PEFT cannot carry a tensor the run trained: the run's note says so, and
    `python -m mmln.export --format hf` exports it merged)."""
    import warnings

    from mmln.tuning import get_strategy

    strategy = get_strategy(cfg.tune.strategy)
    if strategy.peft_config is None and injected_peft_config(mllm) is None:
        return None
    config = family_peft_config(mllm, cfg.tune)
    out = Path(run_dir) / (strategy.adapter_dir or (f"{strategy.name}_adapter" if strategy.peft_config is None
                                                    else adapter_dir_name(config)))
    try:
        return save_family_peft_adapter(mllm, cfg, out)
    except ValueError as e:
        warnings.warn(f"no PEFT adapter written for this run: {e}")
        return None


def _adapter_state(pm, peft_type, trained: dict, run_params) -> tuple[dict, list[str]]:
    """The PEFT model `pm`'s trainable tensors, each filled from its counterpart among the run's `trained`
    tensors (fp32 copies), and the names of the run's trainable `run_params` the adapter does not carry.
    A PEFT tensor with no trained counterpart is an error naming both."""
    import torch

    state, used = {}, set()
    for name in (n for n, p in pm.named_parameters() if p.requires_grad):
        rel = name.removeprefix(PEFT_PREFIX)
        src = rel if rel in trained else _WRAPPED.sub("", rel)
        if src not in trained:
            raise ValueError(f"PEFT adapter tensor '{name}' ({peft_type}) has no trained counterpart "
                             f"in the run (looked for '{src}'): the strategy's PEFT config does not describe it")
        state[name] = trained[src].detach().to(torch.float32).clone()
        used.add(id(trained[src]))
    return state, sorted(n for n, p in run_params if p.requires_grad and id(p) not in used)
