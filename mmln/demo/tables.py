"""The demo's printed tables and verdict: the headline table (`table`), which benchmarks the tuned
model beats (`judge`), and `--compare`'s strategy table (`comparison_row`, `comparison_table`)."""
from __future__ import annotations

STRICT = ("eval/mme_perception", "eval/pope_random_accuracy")  # what --strict requires the tuned model to beat


def judge(tuned: dict, untuned: dict, chance: dict) -> tuple[str, bool]:
    """(verdict, ok): each benchmark column by name, beaten or not (the untuned model, and chance where a
    benchmark has one); ok = every STRICT column beaten."""
    from mmln.eval.columns import MAIN_COLUMNS, pope_columns

    beats, misses = [], []
    for name, key in MAIN_COLUMNS + pope_columns(measures=("accuracy",)):
        if key in tuned and key in untuned:
            won = tuned[key] > max(untuned[key], chance.get(key, float("-inf")))
            (beats if won else misses).append(name + ("" if key in chance else " (no chance level)"))
    ok = all(tuned.get(k, 0) > max(untuned.get(k, 0), chance.get(k, 0)) for k in STRICT)
    text = (f"the tuned model beats the untuned one (and chance, where there is one) on {', '.join(beats) or 'nothing'}"
            + (f"; it does not on {', '.join(misses)}" if misses else ""))
    return (text if ok else f"WARNING: {text} (a known limitation of this tiny model: docs/demo.md)"), ok


def table(rows: dict[str, dict]) -> str:
    from mmln.eval.columns import MAIN_COLUMNS, pope_columns

    cols = MAIN_COLUMNS + pope_columns(measures=("accuracy",))
    lines = ["model".ljust(22) + "".join(c[0].rjust(13) for c in cols)]
    for name, m in rows.items():
        lines.append(name.ljust(22) + "".join((f"{m[key]:.1f}" if key in m else "-").rjust(13) for _, key in cols))
    return "\n".join(lines)


def comparison_row(run, scores: dict, lr: float) -> dict:
    """A strategy's row of the comparison: its scores, parameter share, efficiency and analysis
    summaries (from the run's own files: analysis/layer_similarity.npz, analysis/ln_grads.npz)."""
    import numpy as np

    from mmln.analysis.gradients import load_grads, variances
    from mmln.analysis.similarity import load_similarity, off_diagonal_mean
    from mmln.config import load_config
    from mmln.plan import GB, plan

    m, cfg = run.metrics, load_config(run.run_dir / "config.yaml")
    # memory: the planner's prediction (a CPU's peak RSS only grows across the runs of one process)
    planned = plan(cfg, cfg.tune.strategy, micro_batch=int(cfg.train.micro_batch_size), seq_len=int(cfg.model.max_length),
                   checkpointing=bool(cfg.model.gradient_checkpointing), gpu=False).peak / GB
    row = {**scores, "lr": lr, "trainable %": m.get("params/percent"), "plan GB": planned,
           "step ms": 1000 * m["perf/micro_step_s"] if "perf/micro_step_s" in m else None}
    sim, grads = run.run_dir / "analysis" / "layer_similarity.npz", run.run_dir / "analysis" / "ln_grads.npz"
    if sim.is_file():
        row["layer sim"] = off_diagonal_mean(load_similarity(sim)["token"])
    if grads.is_file():  # recorded only where the norms train (finetune, layernorm, layernorm_simple)
        row["LN grad var"] = float(np.mean([v.mean() for v in variances(load_grads(grads)[1]).values()]))
    return row


def comparison_table(rows: dict[str, dict]) -> str:
    cols = [("lr", "lr", "{:g}"), ("train %", "trainable %", "{:.1f}"), ("plan GB", "plan GB", "{:.3f}"),
            ("step ms", "step ms", "{:.0f}"), ("MME-P", "eval/mme_perception", "{:.1f}"),
            ("POPE-ran", "eval/pope_random_accuracy", "{:.1f}"), ("COCO", "eval/coco_cider", "{:.1f}"),
            ("Flickr30k", "eval/flickr30k_cider", "{:.1f}"), ("layer sim", "layer sim", "{:.3f}"),
            ("LN grad var", "LN grad var", "{:.2e}")]
    lines = ["strategy".ljust(22) + "".join(c[0].rjust(12) for c in cols)]
    for name, r in rows.items():
        lines.append(name.ljust(22) + "".join((f.format(r[k]) if r.get(k) is not None else "-").rjust(12)
                                              for _, k, f in cols))
    return "\n".join(lines)
