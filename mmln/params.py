"""python -m mmln.params --config CFG [key=value ...] [--strategy all|NAME] [--json]

Trainable-parameter report built on the meta device: no weights are read and no memory is
allocated, so it takes seconds for 7B and 13B on a laptop. Percent follows the paper: trainable /
all parameters of the whole MLLM (vision encoder included, LoRA adapters added to the total).
Each row also splits the trainable count by group: norms / connector / embeddings / head /
adapters / other (LLM weights and biases outside those groups).
"""
from __future__ import annotations

import argparse
import json
import sys

from mmln.config import ConfigError, load_config


def report(cfg, strategies: list[str]) -> list[dict]:
    """One row per strategy; a strategy the model refuses (bitfit on a bias-free LLM) is a row
    {"strategy", "refused": why} when several are asked for, a ValueError when it is the only one."""
    import torch

    from mmln.model import build_mllm
    from mmln.tuning import apply_strategy, count_params

    rows = []
    for name in strategies:
        cfg.tune.strategy = name
        with torch.device("meta"):
            mllm = build_mllm(cfg.model, load_weights=False)
            try:
                apply_strategy(mllm, cfg.tune)
            except ValueError as e:
                if len(strategies) == 1 or "has no bias parameters" not in str(e):
                    raise
                rows.append({"strategy": name, "refused": str(e)})
                continue
        c = count_params(mllm)
        rows.append({"strategy": name, "total": c.total, "trainable": c.trainable, "percent": c.percent,
                     "groups": c.groups})
    return rows


def fallbacks(cfg) -> list[str]:
    """One line per model part whose `path` is set but holds no config.json (e.g. the demo's base LM
    before `python -m mmln.demo --prepare-only` made it): that part is counted from the config's preset
    fields instead, which may be another model than the one the path will hold."""
    from pathlib import Path

    out = []
    for key, part in (("model.llm", cfg.model.llm), ("model.vision", cfg.model.vision)):
        if getattr(part, "path", None) and not (Path(part.path) / "config.json").is_file() and not cfg.model.init_from:
            out.append(f"note: {key}.path={part.path} has no config.json (not made yet?): counting the shape of the "
                       f"config's {key}.* fields instead, which may differ from the model that path will hold")
    return out


def format_table(rows: list[dict], title: str = "") -> str:
    """One line per strategy: total, trainable, percent, and the trainable count of each group."""
    groups = next((list(r["groups"]) for r in rows if "groups" in r), [])
    lines = [title] if title else []
    lines.append(f"{'strategy':<24}{'total':>16}{'trainable':>16}{'percent':>11}" + "".join(f"{g:>15}" for g in groups))
    for r in rows:
        if "refused" in r:
            lines.append(f"{r['strategy']:<24}refused: {r['refused']}")
            continue
        lines.append(f"{r['strategy']:<24}{r['total']:>16,}{r['trainable']:>16,}{r['percent']:>10.4f}%"
                     + "".join(f"{r['groups'][g]:>15,}" for g in groups))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmln.params", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="run config YAML (default: schema defaults)")
    ap.add_argument("--strategy", help="'all', or one strategy name (default: the config's tune.strategy)")
    ap.add_argument("--json", action="store_true", help="print a JSON list of {strategy,total,trainable,percent,groups}")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = ap.parse_args(argv)
    from mmln.tuning import REGISTRY  # after --help: the registry imports torch

    try:
        cfg = load_config(args.config, args.overrides)
        names = list(REGISTRY) if args.strategy == "all" else [args.strategy or cfg.tune.strategy]
        rows = report(cfg, names)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in fallbacks(cfg):
        print(line, file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(format_table(rows, f"model: {cfg.model.name}  (meta device; percent of the whole MLLM)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
