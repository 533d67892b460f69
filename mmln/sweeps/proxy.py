"""Successive halving's cheap proxy score of a paused point, from its checkpoint: an eval/* metric of
`--proxy-bench` on a fixed subset (`--proxy-overrides`), or the loss on the run's validation records
(`val/loss`)."""
from __future__ import annotations

from omegaconf import OmegaConf

from mmln.config import ConfigError
from mmln.sweeps.study import VAL_LOSS, Options


def proxy(p, opts: Options, rung: int) -> float:
    """The cheap proxy score of a paused point, from its checkpoint, logged nowhere but the trial."""
    from mmln.evaluate import evaluate

    cfg = OmegaConf.merge(p.cfg, OmegaConf.from_dotlist(list(opts.proxy_overrides)))
    ckpt = str(p.run_dir / "checkpoints" / "last.ckpt")
    if opts.proxy_metric == VAL_LOSS:
        return val_loss(cfg, ckpt)
    scores = evaluate(cfg, ckpt, [opts.proxy_bench],
                      p.run_dir / "halving" / f"rung{rung}", log=False)
    if opts.proxy_metric not in scores["metrics"]:
        raise ConfigError(f"--proxy-metric {opts.proxy_metric}: {opts.proxy_bench} gave only "
                          f"{', '.join(sorted(scores['metrics']))}")
    return float(scores["metrics"][opts.proxy_metric])


def val_data(cfg, ckpt: str):
    """(model on its device in eval mode, validation dataset, its collate) of the run's config."""
    from mmln.families import native_family

    if native_family(cfg.model) is not None:  # a native family: its processor's datasets (mmln.lit.datamodule)
        from transformers import AutoTokenizer

        from mmln.run.build import build_model
        from mmln.lit.datamodule import MMLNDataModule

        import torch

        dm = MMLNDataModule(cfg, AutoTokenizer.from_pretrained(cfg.model.init_from))
        dm.setup()
        mllm = build_model(cfg, ckpt).requires_grad_(False).eval()
        return mllm.to("cuda" if torch.cuda.is_available() else "cpu"), dm.val_set, dm.collate
    from mmln.data.dataset import Collator, build_datasets, pad_token_id
    from mmln.evaluate import load_model

    mllm, tokenizer, _ = load_model(cfg, ckpt)
    return mllm, build_datasets(cfg, tokenizer, mllm.vision.num_patches)[1], Collator(pad_token_id(tokenizer))


def val_loss(cfg, ckpt: str) -> float:
    """Mean loss (per sample) of the checkpoint on the run's validation records (`data.val`)."""
    import torch
    from torch.utils.data import DataLoader

    mllm, val, collate = val_data(cfg, ckpt)
    if val is None or len(val) == 0:
        raise ConfigError(f"--proxy-metric {VAL_LOSS}: the run has no validation records: set data.val.files "
                          "(held-out LLaVA records; data.val.limit=N for a fixed subset) or another proxy")
    device = next(mllm.parameters()).device
    total = count = 0.0
    with torch.no_grad():
        for b in DataLoader(val, batch_size=cfg.eval.batch_size, collate_fn=collate):
            if b["empty"]:
                continue
            pix = b["pixel_values"]
            pix = {k: v.to(device) for k, v in pix.items()} if isinstance(pix, dict) else (
                pix.to(device) if pix is not None else None)
            out = mllm(b["input_ids"].to(device), b["attention_mask"].to(device), b["labels"].to(device), pix)
            total, count = total + float(out.loss) * len(b["ids"]), count + len(b["ids"])
    return total / count
