"""Whether and from where a run continues: `resolve_resume` reads the run folder (`resume=auto`,
`never`, a path or a URL) before anything heavy; `check_same_config` refuses a checkpoint trained
with other settings; `prior_run_id` is the MLflow run a resumed run continues."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

from mmln.config import ConfigError, flatten


def is_rank0() -> bool:
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def resolve_resume(cfg, run_dir: Path) -> Optional[str]:
    """The checkpoint to continue from (checked now, before anything heavy), or None to start fresh.

    `auto`: `checkpoints/last.ckpt` when present. `never`: old checkpoints are moved aside to
    `checkpoints.old-<time>/` (so a later `auto` cannot pick up a stale run). A path or an
    http(s) URL (downloaded into the run folder): that checkpoint. Leftover temp files of a killed
    run are removed first."""
    from mmln.lit.safety import read_resume_checkpoint

    ckpt_dir = run_dir / "checkpoints"
    rank0 = is_rank0()
    if rank0 and ckpt_dir.is_dir():
        for tmp in ckpt_dir.glob(".*.tmp*"):  # mmln.base.io.atomic_path's temp files
            tmp.unlink(missing_ok=True)
    resume: Optional[str] = None
    if cfg.resume == "auto":
        resume = str(ckpt_dir / "last.ckpt") if (ckpt_dir / "last.ckpt").is_file() else None
    elif cfg.resume == "never":
        if rank0 and ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
            aside = ckpt_dir.with_name(f"checkpoints.old-{time.strftime('%Y%m%d-%H%M%S')}")
            ckpt_dir.rename(aside)
            print(f"resume=never: moved the old checkpoints aside to {aside}", file=sys.stderr)
    elif cfg.resume.startswith(("http://", "https://")):
        import torch

        local = run_dir / "resume_download.ckpt"
        if rank0:
            run_dir.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(cfg.resume, str(local), progress=False)
        resume = str(local)
    else:
        resume = cfg.resume
    if resume is not None:
        read_resume_checkpoint(resume)  # weights_only; damaged or foreign files end here, naming the file
        check_same_config(cfg, Path(resume))
    return resume


# settings that may change between a run and its resumption: where and how it is run and logged,
# not what it computes (data.num_workers included: train iterators draw from their own generator)
RESUME_VOLATILE = ("resume", "resume_changed_config", "quiet", "output_dir", "debug.", "data.num_workers",
                   "tracking.", "eval.", "train.log_every_n_steps", "train.save_every_n_steps")


def check_same_config(cfg, ckpt: Path) -> None:
    """The checkpoint's run (its folder's config.yaml) must have been configured as this one."""
    from omegaconf import OmegaConf

    saved = ckpt.parent.parent / "config.yaml" if ckpt.parent.name == "checkpoints" else ckpt.parent / "config.yaml"
    if not saved.is_file():
        return
    old, new = flatten(OmegaConf.load(saved)), flatten(cfg)
    changed = sorted(k for k in old.keys() & new.keys()  # a key newer than the checkpoint is its default
                     if old.get(k) != new.get(k) and not k.startswith(RESUME_VOLATILE))
    if changed and not cfg.resume_changed_config:
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
        raise ConfigError(f"resume: {ckpt} was trained with other settings ({diff}{', ...' if len(changed) > 8 else ''}"
                          f"; from {saved}): use them, or resume=never to start over, or "
                          "resume_changed_config=true to continue anyway")
    if changed:
        print(f"warning: resume_changed_config=true: continuing {ckpt} with changed {', '.join(changed)}",
              file=sys.stderr)


def prior_run_id(run_dir: Path) -> Optional[str]:
    f = run_dir / "mlflow_run_id"
    return f.read_text().strip() if f.is_file() else None
