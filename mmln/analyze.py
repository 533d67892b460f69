"""python -m mmln.analyze similarity --config CFG [--ckpt PATH] [--out DIR] [key=value ...]
python -m mmln.analyze compare RUN_A RUN_B [--out DIR]

`similarity`: the layer-similarity analysis (docs/paper.md, "Analyses") of a model built from CFG with the trained
tensors of a checkpoint (trainable.safetensors or a .ckpt of this project; none = the base
model), on the same fixed sample set the training callback uses (`analysis.similarity_samples`
chosen by `analysis.similarity_seed` from the validation set, else the training set). Writes
layer_similarity.npz + .png to --out (default: `<run dir of the checkpoint>/analysis/posthoc-<time>`,
beside the run's training-time analysis, never over it; an --out already holding an analysis is
refused) and prints the metrics as JSON, then where the files went. A model part without a weights path (the tiny test model) is rebuilt with
the run's seed (`train.seed`), as `mmln.fit` builds it.

`compare`: a side-by-side figure of two runs (e.g. finetune vs layernorm): both layer-similarity
heatmaps and both LayerNorm-gradient variance curves, from the files their analysis callbacks
recorded. RUN_x is a run directory (`outputs/<experiment>/<run>`) or an MLflow run id (its
`analysis/` artifacts are downloaded from the tracking store).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

from mmln.analysis import GRADS_FILE, SIMILARITY_FILE, figures, similarity_metric
from mmln.analysis.gradients import load_grads, variances
from mmln.analysis.similarity import (
    layer_similarity, load_similarity, pick_indices, sample_batches, save_similarity, scalars,
)


def default_out(ckpt: Optional[str]) -> Path:
    """`<run dir>/analysis/posthoc-<time>`: beside, never over, the run's training-time analysis files."""
    import time

    stamp = f"posthoc-{time.strftime('%Y%m%d-%H%M%S')}"
    if not ckpt:
        return Path("analysis") / stamp
    parent = Path(ckpt).resolve().parent
    return (parent.parent if parent.name == "checkpoints" else parent) / "analysis" / stamp


def check_out(out: Path) -> None:
    """An --out that already holds a layer-similarity analysis (a run's own, recorded in training, or an
    earlier one) is refused: nothing is replaced."""
    if (out / SIMILARITY_FILE).exists():
        raise FileExistsError(f"--out {out} already holds {SIMILARITY_FILE} (another analysis, maybe the run's "
                              "training-time one): choose another --out, or leave it out for <run dir>/analysis/posthoc-<time>")


def similarity(cfg, ckpt: Optional[str], out: Path, device: Optional[str] = None) -> dict[str, float]:
    import torch

    from mmln.run.build import build_model
    from mmln.data import Collator, build_datasets, pad_token_id
    from mmln.model.llm import load_tokenizer

    tokenizer = load_tokenizer(cfg.model.llm)
    mllm = build_model(cfg, ckpt)  # seeded: frozen weights without a path are rebuilt as mmln.fit built them
    train, val = build_datasets(cfg, tokenizer, mllm.vision.num_patches)
    ds = val if val is not None and len(val) else train
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mllm.to(dev)
    low = any(p.dtype in (torch.bfloat16, torch.float16) for p in mllm.parameters())
    ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if low else nullcontext
    a = cfg.analysis
    batches = sample_batches(ds, Collator(pad_token_id(tokenizer)), pick_indices(len(ds), a.similarity_samples,
                             a.similarity_seed), int(cfg.train.micro_batch_size))
    acc = layer_similarity(mllm, batches, dev, ctx)
    if not acc.num_samples:
        raise ValueError("no usable samples for the layer-similarity analysis")
    matrices = acc.matrices()
    save_similarity(out / SIMILARITY_FILE, matrices, acc.num_samples)
    figures.similarity_heatmap(matrices["token"], out / "layer_similarity.png",
                               f"layer similarity ({acc.num_samples} samples)")
    return {similarity_metric(v): s for v, s in scalars(matrices).items()} | {"num_samples": acc.num_samples}


def load_run(ref: str, tracking_uri: Optional[str] = None) -> dict:
    """A run's recorded analysis: {"name", "similarity" (L, L) or None, "steps", "variance"}."""
    path = Path(ref)
    if path.is_dir():
        name, d = path.name, (path / "analysis" if (path / "analysis").is_dir() else path)
    else:
        from mmln.tracking import Tracker

        client = Tracker(tracking_uri)
        if (run := client.find_run(ref)) is None:
            raise FileNotFoundError(f"'{ref}' is neither a run directory nor a run id in the MLflow store {client.uri}")
        name = run.info.run_name or ref
        d = client.download(ref, "analysis", tempfile.mkdtemp(prefix="mmln-analyze-"))
    sim = d / SIMILARITY_FILE
    grads = d / GRADS_FILE
    if not sim.is_file() and not grads.is_file():
        raise FileNotFoundError(f"{ref}: no {SIMILARITY_FILE} or {GRADS_FILE} in {d}")
    steps, arrays = load_grads(grads) if grads.is_file() else ([], {})
    return {"name": name, "similarity": load_similarity(sim)["token"] if sim.is_file() else None,
            "steps": steps, "variance": variances(arrays)}


def compare(ref_a: str, ref_b: str, out: Path, tracking_uri: Optional[str] = None) -> Path:
    a, b = load_run(ref_a, tracking_uri), load_run(ref_b, tracking_uri)
    slug = "_vs_".join(re.sub(r"[^A-Za-z0-9_.-]", "_", r["name"]) for r in (a, b))
    return figures.comparison(a, b, out / f"compare_{slug}.png")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmln.analyze",
                                 description="Layer-similarity and LayerNorm-gradient analyses (the paper's Table 6, Fig. 3 and 4).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("similarity", help="layer similarity of a checkpoint")
    s.add_argument("--config", required=True)
    s.add_argument("--ckpt", default=None, help="trainable.safetensors or .ckpt (default: the base model)")
    s.add_argument("--out", default=None, help="output folder (default: <run dir>/analysis/posthoc-<time>, beside the "
                   "run's training-time analysis; a folder already holding one is refused)")
    s.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    s.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    c = sub.add_parser("compare", help="side-by-side figure of two runs (run directories or MLflow run ids)",
                       description="Side-by-side layer-similarity heatmaps and LayerNorm-gradient variance curves of "
                                   "two runs. Each run is a run directory (outputs/<experiment>/<run>, its analysis/ "
                                   "files) or an MLflow run id (its analysis/ artifacts, downloaded). Prints the PNG's path.")
    c.add_argument("run_a", help="run directory or MLflow run id, e.g. outputs/demo_stage2/finetune-lr0.0005")
    c.add_argument("run_b", help="run directory or MLflow run id")
    c.add_argument("--out", default=".", help="output folder (default: .)")
    c.add_argument("--tracking-uri", default=None, help="MLflow store for run ids (default: as mmln.fit)")
    args = ap.parse_args(argv)

    from mmln.config import ConfigError, load_config
    from mmln.model.errors import MissingWeightsError

    try:
        if args.cmd == "similarity":
            cfg = load_config(args.config, args.overrides, require=("model", "data"))
            out = Path(args.out) if args.out else default_out(args.ckpt)
            check_out(out)
            print(json.dumps(similarity(cfg, args.ckpt, out, args.device), indent=1))
            print(f"wrote {out / SIMILARITY_FILE} and {out / 'layer_similarity.png'}", file=sys.stderr)
        else:
            print(compare(args.run_a, args.run_b, Path(args.out), args.tracking_uri))
    except (ConfigError, MissingWeightsError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
