"""The one way to build a model from a run config (+ a checkpoint of its trainable tensors).

`build_model(cfg, ckpt)`: seed `train.seed` (parts without a weights path are random init, and
must come out as `mmln.fit` built them), build the MLLM (`mmln.model.build_mllm`), apply the
tuning strategy (`mmln.tuning.apply_strategy`), then load the checkpoint's trainable tensors
strictly (a run's `trainable.safetensors` or `checkpoints/last.ckpt`). Used by fit, evaluate,
analyze and export. The number of positions one image takes comes from the built vision
encoder only (`mllm.vision.num_patches`); the data side is handed that number.
"""
from __future__ import annotations

from typing import Any, Optional


# the tune.* settings a strategy's checkpoint tensors depend on beyond their names and shapes
ADAPTER_SETTINGS = {
    "lora": ("lora.r", "lora.alpha", "lora.target_modules"),
    "dora": ("lora.r", "lora.alpha", "lora.target_modules"),
    "layernorm_lora": ("lora.r", "lora.alpha", "lora.target_modules"),
    "vera": ("vera.r", "vera.seed", "vera.target_modules"),
    "ia3": ("ia3.target_modules", "ia3.feedforward_modules"),
}


def check_adapter_settings(cfg: Any, ckpt: str) -> None:
    """A checkpoint whose run (config.yaml beside it, or beside its checkpoints/ folder) used other
    adapter settings than `cfg` (e.g. LoRA alpha, which no tensor shape shows) is a ConfigError
    naming both values."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from mmln.config import ConfigError

    p = Path(ckpt).resolve().parent
    saved = (p.parent if p.name == "checkpoints" else p) / "config.yaml"
    if not saved.is_file():
        return
    old = OmegaConf.load(saved)
    if OmegaConf.select(old, "tune.strategy") != cfg.tune.strategy:
        return  # another strategy: the tensor names differ and load_trainable says so
    for key in ADAPTER_SETTINGS.get(cfg.tune.strategy, ()):
        was, now = OmegaConf.select(old, f"tune.{key}"), OmegaConf.select(cfg, f"tune.{key}")
        was = OmegaConf.to_container(was) if OmegaConf.is_config(was) else was
        now = OmegaConf.to_container(now) if OmegaConf.is_config(now) else now
        if was is not None and was != now:
            raise ConfigError(f"--ckpt {ckpt} was trained with tune.{key}={was} (its {saved}), the config says "
                              f"tune.{key}={now}: use the run's settings (--config {saved})")


def build_model(cfg: Any, ckpt: Optional[str] = None):
    """Seeded MLLM with the strategy applied and `ckpt`'s trainable tensors loaded (None = untuned).

    A checkpoint whose tensors do not match the strategy raises `mmln.config.ConfigError`.
    """
    import torch

    from mmln.config import ConfigError
    from mmln.model import build_mllm
    from mmln.model.checkpoint import load_trainable, read_trainable
    from mmln.formats.trust import UntrustedWeightsError, check_checkpoint_file, check_loaded
    from mmln.tuning import apply_strategy

    from mmln.families import native_family, refusal

    family = native_family(cfg.model)
    if family is not None and cfg.data.batching == "packed" and refusal(family, "packing"):
        raise ConfigError(f"data.batching=packed: {refusal(family, 'packing')}")
    torch.manual_seed(cfg.train.seed)
    mllm = build_mllm(cfg.model)
    apply_strategy(mllm, cfg.tune)
    mllm.pack_samples = cfg.data.batching == "packed"  # training micro-batches share rows (MLLM.pack)
    if ckpt:
        check_adapter_settings(cfg, ckpt)
        try:
            check_checkpoint_file(ckpt, "--ckpt")  # a bounded header check before safetensors maps the file
            state = read_trainable(ckpt)
            check_loaded(state, "--ckpt", ckpt)  # no integer / bool / NaN / Inf tensors
        except (FileNotFoundError, UntrustedWeightsError):  # already one line naming the file and tensor
            raise
        except Exception as e:  # not a safetensors file / not a Lightning checkpoint of this project
            first = str(e).splitlines()[0][:200] if str(e) else "-"
            raise ConfigError(f"--ckpt {ckpt}: not a checkpoint ({type(e).__name__}: {first}); give a run's "
                              "trainable.safetensors or checkpoints/last.ckpt, or 'none'") from None
        try:
            load_trainable(mllm, state, source=str(ckpt))
        except ValueError as e:  # the checkpoint's tensors do not match the configured strategy
            raise ConfigError(str(e)) from None
    return mllm
