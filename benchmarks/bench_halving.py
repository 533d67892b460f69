"""What successive halving saves, and what it costs, against the full learning-rate grid.

On the tiny model of the tests (conf/model/tiny.yaml, random init) and synthetic data
(mmln.data.synth: captioning records to train on, a Flickr30k Karpathy file to score), for each of
3 strategies x 3 training seeds: the paper's 11-point lr grid trained to the end
(`python -m mmln.sweep`, every point scored by Flickr30k CIDEr on the whole test split) and the
same grid by successive halving (`--search halving`, the default synchronous rule, eta 3, first
rung 1/12 (the sweep's default; `--first-rungs 1/9,1/12` runs one search per first rung), proxy = Flickr30k CIDEr on the first PROXY_IMAGES test images, Optuna's study in sqlite), in separate MLflow
experiments so that nothing is reused. Reports, as JSON lines, per (strategy, seed) the best lr
of each, the full grid's CIDEr at the lr halving picked and the regret (best - that), and a
summary: training steps spent (halving / full grid), k of N same best lr, mean and max regret,
and the wall time of both (proxy evaluations and the per-rung restarts included).

A survivor of the halving is bit-identical to the same point of the full grid, so its CIDEr must
equal the grid's at that lr: checked (`survivor_equals_grid`).

python benchmarks/bench_halving.py [--quick] [--first-rungs 1/9,1/12]   (one core at a time; 14 min
of wall time for one first rung when measured on a shared 2-core machine; --quick: 1 strategy x 1
seed, about 1/9 of it; --first-rungs: one halving search per first rung, against the same full grid,
each with its summary line)
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MMLN_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STRATEGIES = ["layernorm", "lora", "finetune"]
SEEDS = 3
METRIC = "eval/flickr30k_cider"
N_TRAIN, GLOBAL_BATCH, EPOCHS = 144, 8, 2  # 18 steps an epoch, 36 a run: rungs end at steps 4, 12, 36
N_CAPTION_IMAGES = 160  # 40 Flickr30k test images (Karpathy splits test/val/train/train by index)
PROXY_IMAGES = 12


def world(root: Path) -> list[str]:
    from mmln.data.synth import synthesize, text_corpus
    from mmln.data.tokenizer import train_tiny_tokenizer

    p = synthesize(root / "data", image_size=64, n_pretrain=N_TRAIN, n_instruct=0, n_mme_per_subtask=0,
                   n_pope_images=0, n_vqa_images=0, n_caption_images=N_CAPTION_IMAGES, seed=0)
    tok = train_tiny_tokenizer(text_corpus(2000, seed=0), root / "tokenizer", vocab_size=512)
    return [f"model.llm.tokenizer={tok}", f"output_dir={root / 'outputs'}", f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
            "stage=instruct", "data.template=vicuna_v1", "data.num_workers=0",
            f"data.train.files=[{p['cc3m_chat']}]", f"data.train.image_folder={p['cc3m_images']}",
            f"train.global_batch_size={GLOBAL_BATCH}", f"train.micro_batch_size={GLOBAL_BATCH}", f"train.epochs={EPOCHS}",
            "train.warmup_ratio=0.1", "train.save_every_n_steps=1000", "train.log_every_n_steps=10",
            "analysis.grad_every_n_steps=0", "analysis.similarity=false", "eval.max_new_tokens=16", "eval.batch_size=40",
            f"eval.flickr30k_karpathy={p['karpathy_flickr30k']}", f"eval.flickr30k_images={p['flickr30k_images']}"]


def sweep(args: list[str]) -> float:
    from mmln import sweep as sweep_cli

    t0 = time.time()
    with contextlib.redirect_stdout(sys.stderr):  # its report text: stdout is for the JSON lines
        rc = sweep_cli.main(args)
    if rc != 0:
        raise SystemExit(f"mmln.sweep {' '.join(args[:8])} ... exited {rc}")
    return time.time() - t0


def results(client, experiment: str) -> dict:
    """(strategy, seed) -> {lr: CIDEr} of the finished points; and the parent's metrics."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    parent = next(r for r in runs if r.data.tags.get("kind") == "sweep")
    out: dict = {}
    for r in runs:
        if r.data.tags.get("kind") or r.info.status != "FINISHED" or METRIC not in r.data.metrics:
            continue
        key = (r.data.tags["strategy"], int(r.data.params["train.seed"]))
        out.setdefault(key, {})[float(r.data.tags["lr"])] = r.data.metrics[METRIC]
    return {"scores": out, "parent": parent.data.metrics}


def main(argv: list[str]) -> int:
    from mlflow import MlflowClient

    quick = "--quick" in argv
    rungs = argv[argv.index("--first-rungs") + 1].split(",") if "--first-rungs" in argv else ["1/12"]
    strategies, seeds = (STRATEGIES[:1], 1) if quick else (STRATEGIES, SEEDS)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.time()
        overrides = world(root)
        synth_s = time.time() - t0
        common = ["--config", str(ROOT / "conf/model/tiny.yaml"), "--strategies", *strategies,
                  "--bench", "flickr30k", "--select-metric", METRIC] + (["--seeds", str(seeds)] if seeds > 1 else [])
        grid_s = sweep(common + [*overrides, "tracking.experiment=bench_grid"])
        halvings = {}
        for i, first in enumerate(rungs):  # each schedule in its own experiment: nothing reused between them
            halving_s = sweep(common + ["--search", "halving", "--first-rung", first, "--proxy-bench", "flickr30k",
                                        "--proxy-metric", METRIC, "--proxy-overrides", f"eval.limit={PROXY_IMAGES}",
                                        *overrides, f"tracking.experiment=bench_halving_{i}"])
            halvings[first] = halving_s
        client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
        grid = results(client, "bench_grid")
        found = {first: results(client, f"bench_halving_{i}") for i, first in enumerate(rungs)}
    for first, halving in found.items():
        for line in summary(grid, halving, first, strategies, seeds, grid_s, halvings[first], synth_s):
            print(json.dumps(line), flush=True)
    return 0


def summary(grid: dict, halving: dict, first: str, strategies: list[str], seeds: int, grid_s: float,
            halving_s: float, synth_s: float) -> list[dict]:
    """Per (strategy, seed): the best lr of each search and the regret; then the summary line."""
    from mmln.config import PAPER_LRS
    from mmln.eval.selection import best_lr

    lines, same, regrets = [], 0, []
    equal = True
    for key, scores in sorted(grid["scores"].items()):
        full_best = best_lr({lr: [v] for lr, v in scores.items()})
        survivors = halving["scores"].get(key, {})
        picked = best_lr({lr: [v] for lr, v in survivors.items()})
        equal &= all(scores.get(lr) == v for lr, v in survivors.items())  # bit-identical survivors
        regret = scores[full_best] - scores[picked] if picked is not None else float("nan")
        same += picked == full_best
        regrets.append(regret)
        lines.append({"bench": "halving", "first_rung": first, "strategy": key[0], "seed": key[1],
                      "full_grid_best_lr": full_best, "full_grid_best_cider": round(scores[full_best], 3),
                      "halving_best_lr": picked,
                      "full_grid_cider_at_halving_lr": None if picked is None else round(scores[picked], 3),
                      "regret": round(regret, 3), "survivors": sorted(survivors),
                      "cider_spread_over_lrs": round(max(scores.values()) - min(scores.values()), 3)})
    steps_h, steps_f = halving["parent"]["halving/steps_spent"], halving["parent"]["halving/steps_full_grid"]
    lines.append({"bench": "halving_summary", "first_rung": first, "strategies": strategies, "seeds": seeds,
                  "lrs": len(PAPER_LRS), "steps_halving": int(steps_h), "steps_full_grid": int(steps_f),
                  "steps_fraction": round(steps_h / steps_f, 4), "same_best_lr": f"{same} of {len(grid['scores'])}",
                  "mean_regret_cider": round(sum(regrets) / len(regrets), 3), "max_regret_cider": round(max(regrets), 3),
                  "survivor_equals_grid": equal, "wall_s_full_grid": round(grid_s, 1),
                  "wall_s_halving": round(halving_s, 1), "wall_fraction": round(halving_s / grid_s, 3),
                  "synth_s": round(synth_s, 1), "proxy_images": PROXY_IMAGES, "rule": "sync (the sweep's default)",
                  "steps_per_run": int(steps_f / (len(PAPER_LRS) * len(grid["scores"])))})
    return lines


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
