"""python -m mmln.export --config CFG --ckpt RUN/trainable.safetensors --out DIR [--format llava|hf-llava|hf|peft]

A merged, self-contained export for evaluation and serving. The model is built as every command
builds it (`mmln.run.build.build_model`), then the strategy's merge hook folds what it added into
plain weights (LoRA adapters into their base Linear layers; norm tuning changes no structure and
needs no merge). Formats:

- `llava` (default): the tuned LLM as a Hugging Face directory `llm/` (tuned norms / embeddings /
  head written in place) with its tokenizer, the vision encoder in `vision/`, the connector in
  LLaVA's `mm_projector.bin`, and `config.yaml`, a run config pointing at those files, so
  `python -m mmln.evaluate --config DIR/config.yaml --ckpt none ...` evaluates it as it is.
- `hf`: the model family's own transformers class directory (a native VLM: Qwen2.5-VL, SmolVLM,
  LLaVA-OneVision, Gemma-3, see `mmln.families`; the llava family: `hf-llava`), with its
  processor, tokenizer and chat template, loadable by `AutoModelForImageTextToText` / `AutoProcessor`.
- `hf-llava`: one transformers `LlavaForConditionalGeneration` directory (config, safetensors,
  tokenizer with the run's chat template, image processor) that `from_pretrained`,
  `AutoProcessor.from_pretrained`, lmms-eval's `llava_hf` model and vLLM load as they are.
- `peft`: the run's strategy as a PEFT adapter directory, not merged (`ln_tuning`, LoRA, ...; trained
  embeddings / head / projector as modules_to_save): for a native family over its whole transformers
  class (`PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), DIR)`), for
  LLaVA over the LLM with `mm_projector.bin` beside it.

`--out` must be new, empty, or an earlier mmln export of the same format (checked before the model
is built; anything else is refused, exit 2). The export is built beside `--out` and swapped in
whole, with `mmln-manifest.json` written last (`mmln.base.outputs`): a kill at any moment leaves the
old complete export or the new one, and loaders refuse an export whose files do not match it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from mmln.config import ConfigError, load_config, to_yaml
from mmln.base.io import as_disk_full, write_text
from mmln.model.errors import MissingWeightsError
from mmln.base.outputs import claim, replacing


FORMATS = ("llava", "hf-llava", "hf", "peft")


def merge_lora(llm) -> int:
    """The one PEFT merge (`mmln.tuning.lora.merge_lora`), imported where it is used."""
    from mmln.tuning.lora import merge_lora as merge

    return merge(llm)


def merged_model(cfg, ckpt: str | None):
    """The tuned model with the strategy's additions merged into plain weights, frozen, eval mode."""
    from mmln.run.build import build_model
    from mmln.tuning import get_strategy

    mllm = build_model(cfg, ckpt)
    merge = get_strategy(cfg.tune.strategy).merge or merge_lora  # any injected PEFT tuner layer; none: no-op
    merge(mllm.llm)
    mllm.requires_grad_(False).eval()
    mllm.llm.config.use_cache = True
    return mllm


def export(cfg, ckpt: str | None, out: str | Path, fmt: str = "llava") -> Path:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    from mmln.families import native_family

    native = native_family(cfg.model)
    if fmt == "peft":
        return export_peft(cfg, ckpt, out, native)
    if native and fmt != "hf":
        raise ConfigError(f"--format {fmt}: model family {native.name!r} exports only as --format hf "
                          "(its own transformers class directory)")
    fmt = "hf-llava" if fmt == "hf" and not native else fmt  # the llava family's own class: LlavaForConditionalGeneration
    out = claim(out, fmt)  # before the model is built: a folder that is not ours is never touched
    mllm = merged_model(cfg, ckpt)
    if native:
        from mmln.formats.native_hf import save_native_hf

        return save_native_hf(mllm, cfg, out)
    if fmt == "hf-llava":
        from mmln.formats.llava_hf import save_llava_hf

        return save_llava_hf(mllm, cfg, out)
    with replacing(out, fmt) as tmp:
        _export_llava(mllm, cfg, out, ckpt, tmp)
    return out


def export_peft(cfg, ckpt: str | None, out: str | Path, native) -> Path:
    """`--format peft`: the run's strategy as a PEFT adapter directory (not merged): over the family's
    transformers class for a native family, over the LLM (connector beside it) for mmln's LLaVA."""
    from mmln.run.build import build_model
    from mmln.formats.peft_adapter import save_family_peft_adapter, save_peft_adapter

    if ckpt is None:
        raise ConfigError("--format peft needs --ckpt: an untuned model has no adapter")
    out = claim(out, "peft-adapter")
    mllm = build_model(cfg, ckpt)  # the strategy's trainable tensors (requires_grad) say what the adapter holds
    if native:
        return save_family_peft_adapter(mllm, cfg, out)
    return save_peft_adapter(mllm, cfg.tune, out, base_path=cfg.model.llm.path,
                             connector=any(p.requires_grad for p in mllm.connector.parameters()))


def _export_llava(mllm, cfg, out: Path, ckpt: str | None, dest: Path) -> None:
    """Write the `llava` format into `dest`, its config.yaml pointing at the files' final place `out`."""
    from mmln.evaluate import run_dir_of
    from mmln.formats.llava_hf import save_tokenizer
    from mmln.base.io import atomic_path
    from mmln.model import save_mm_projector
    from mmln.model.llm import load_tokenizer

    mllm.llm.save_pretrained(dest / "llm")
    save_tokenizer(load_tokenizer(cfg.model.llm), dest / "llm")
    overrides = {"model": {"llm": {"path": str((out / "llm").resolve()), "tokenizer": None},
                           "connector": {"path": str((out / "mm_projector.bin").resolve())}},
                 "stage": "instruct", "tune": {"strategy": "layernorm"},  # merged: nothing left to load on top
                 # evaluations of the export are named after what was exported, not "untuned"
                 "run_name": f"export-{run_dir_of(ckpt).name if ckpt else 'untuned'}"}
    if ckpt and (run_dir_of(ckpt) / "mlflow_run_id").is_file():  # a run's checkpoint: outputs/<experiment>/<run>/
        overrides["tracking"] = {"experiment": run_dir_of(ckpt).parent.name}  # its evaluations go beside the run
    save_mm_projector(mllm.connector, dest / "mm_projector.bin")
    if cfg.model.vision.backend == "hf_clip":
        mllm.vision.backbone.save_pretrained(dest / "vision")
        if cfg.model.vision.preprocess == "clip":  # the tower's image processor beside it, as CLIP directories ship it
            from mmln.formats.llava_hf import image_processor_for

            image_processor_for(cfg.model.vision, cfg.data.image_aspect).save_pretrained(dest / "vision")
    else:
        from safetensors.torch import save_file

        (dest / "vision").mkdir(parents=True, exist_ok=True)
        with atomic_path(dest / "vision" / "model.safetensors") as tmp:
            save_file(mllm.vision.backbone.state_dict(), str(tmp))
    overrides["model"]["vision"] = {"path": str((out / "vision").resolve())}
    write_text(dest / "config.yaml", to_yaml(OmegaConf.merge(cfg, overrides)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmln.export", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="the run's config YAML (the one the checkpoint was trained with)")
    ap.add_argument("--ckpt", required=True, help="trainable.safetensors or checkpoints/last.ckpt; 'none' = untuned")
    ap.add_argument("--out", required=True, help="folder to write the export into (its layout: --format)")
    ap.add_argument("--format", default="llava", choices=FORMATS,
                    help="llava: llm/ + vision/ + mm_projector.bin + config.yaml (default); "
                         "hf-llava: one LlavaForConditionalGeneration directory; "
                         "hf: the model family's own transformers class directory; "
                         "peft: a PEFT adapter directory of the run's strategy (ln_tuning, LoRA, ...)")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides of the config, e.g. model.dtype=bf16")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides, require=("model",))
        path = export(cfg, None if args.ckpt == "none" else args.ckpt, args.out, args.format)
    except (ConfigError, MissingWeightsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if (full := as_disk_full(e)) is None:
            raise
        print(f"error: {full}", file=sys.stderr)  # the half-built export beside --out is already removed
        return 2
    if args.format == "llava":
        print(f"exported to {path} (evaluate with: python -m mmln.evaluate --config {path}/config.yaml --ckpt none)")
    else:
        print(f"exported to {path} (load with: AutoModelForImageTextToText.from_pretrained('{path}'))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
