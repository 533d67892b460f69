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


def val_loss(cfg, ckpt: str) -> float:
    """Mean loss (per sample) of the checkpoint on the run's validation records (`data.val`)."""
    import torch
    from torch.utils.data import DataLoader

    from mmln.data.dataset import Collator, build_datasets, pad_token_id
    from mmln.evaluate import load_model

    mllm, tokenizer, _ = load_model(cfg, ckpt)
    _, val = build_datasets(cfg, tokenizer, mllm.vision.num_patches)
    if val is None or len(val) == 0:
        raise ConfigError(f"--proxy-metric {VAL_LOSS}: the run has no validation records: set data.val.files "
                          "(held-out LLaVA records; data.val.limit=N for a fixed subset) or another proxy")
    device = next(mllm.parameters()).device
    total = count = 0.0
    with torch.no_grad():
        for b in DataLoader(val, batch_size=cfg.eval.batch_size, collate_fn=Collator(pad_token_id(tokenizer))):
            if b["empty"]:
                continue
            out = mllm(b["input_ids"].to(device), b["attention_mask"].to(device), b["labels"].to(device),
                       b["pixel_values"].to(device))
            total, count = total + float(out.loss) * len(b["ids"]), count + len(b["ids"])
    return total / count
