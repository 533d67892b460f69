"""python -m mmln.export --config CFG --ckpt RUN/trainable.safetensors --out DIR

A merged, self-contained export for evaluation and serving: the tuned LLM as a Hugging Face
directory (LoRA adapters merged into the base weights, tuned norms / embeddings / head written in
place), its tokenizer, the vision encoder, the connector in LLaVA's `mm_projector.bin`, and
`config.yaml`, a run config pointing at those files, so `python -m mmln.evaluate --config
DIR/config.yaml --ckpt none ...` evaluates it with no checkpoint on top.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mmln.config import ConfigError, load_config, to_yaml
from mmln.io import atomic_path, write_text
from mmln.model.errors import MissingWeightsError


def merge_lora(llm: torch.nn.Module) -> int:
    """Fold injected LoRA adapters into their base Linear layers and remove them; returns how many."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, module in list(llm.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent = llm.get_submodule(name.rsplit(".", 1)[0]) if "." in name else llm
            setattr(parent, name.rsplit(".", 1)[-1], module.get_base_layer())
            merged += 1
    return merged


def export(cfg, ckpt: str | None, out: str | Path) -> Path:
    from mmln.model import build_mllm, save_mm_projector
    from mmln.model.checkpoint import load_trainable, read_trainable
    from mmln.model.llm import load_tokenizer
    from mmln.tuning import apply_strategy

    out = Path(out)
    mllm = build_mllm(cfg.model)
    apply_strategy(mllm, cfg.tune)
    if ckpt:
        load_trainable(mllm, read_trainable(ckpt), source=str(ckpt))
    merge_lora(mllm.llm)
    mllm.requires_grad_(False)
    mllm.llm.config.use_cache = True
    mllm.llm.save_pretrained(out / "llm")
    load_tokenizer(cfg.model.llm).save_pretrained(out / "llm")
    overrides = {"model": {"llm": {"path": str((out / "llm").resolve()), "tokenizer": None},
                           "connector": {"path": str((out / "mm_projector.bin").resolve())}},
                 "tune": {"strategy": "layernorm"}}
    save_mm_projector(mllm.connector, out / "mm_projector.bin")
    if cfg.model.vision.backend == "hf_clip":
        mllm.vision.backbone.save_pretrained(out / "vision")
        overrides["model"]["vision"] = {"path": str((out / "vision").resolve())}
    else:
        from safetensors.torch import save_file

        (out / "vision").mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "vision" / "model.safetensors") as tmp:
            save_file(mllm.vision.backbone.state_dict(), str(tmp))
        overrides["model"]["vision"] = {"path": str((out / "vision").resolve())}
    merged = OmegaConf.merge(cfg, overrides)
    write_text(out / "config.yaml", to_yaml(merged))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmln.export", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--ckpt", required=True, help="trainable.safetensors or checkpoints/last.ckpt; 'none' = untuned")
    ap.add_argument("--out", required=True)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        path = export(cfg, None if args.ckpt == "none" else args.ckpt, args.out)
    except (ConfigError, MissingWeightsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported to {path} (evaluate with: python -m mmln.evaluate --config {path}/config.yaml --ckpt none)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
