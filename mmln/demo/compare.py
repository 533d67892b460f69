"""`python -m mmln.demo --compare`: the paper's comparison in miniature. Every strategy trained by the
demo's stage-2 recipe from the same stage-1 connector, each at its own learning rate (`COMPARE`), and
one table of trainable share, planned memory, step time, scores, layer similarity and
LayerNorm-gradient variance, next to the untuned model and chance."""
from __future__ import annotations

from mmln.demo.pretrain import CONF, say
from mmln.demo.stages import BENCHES, heartbeat

# strategy -> learning rate: each strategy's own, chosen by successive halving on the demo itself (recorded
# in conf/demo/compare_lrs.json by `python -m mmln.demo.lrsweep`; tests/test_demo_compare.py fails when
# these differ from that record). The sweep, 2026-12-05 (docs/demo.md): per strategy
#   python -m mmln.sweep --config conf/demo/sweep.yaml --search halving --strategies S --lrs <5 lrs> \
#     --proxy-metric val/loss --select-metric val/loss --bench none train.epochs=1
# over 3e-4..3e-2 (finetune 5e-5..5e-3), held-out loss at rungs 74/222/666/882 steps, eta 3. Chosen:
# layernorm 3e-4 (end loss 0.523), layernorm_simple 3e-2 (0.532, the grid's top: its loss still fell),
# lora 3e-4 (0.521), finetune 1.5e-4 (0.520). LayerNorm's differs from the demo's stage-2 lr (3e-3),
# so --compare trains it once more at 3e-4.
COMPARE = {"layernorm": 3e-4, "layernorm_simple": 3e-2, "lora": 3e-4, "finetune": 1.5e-4}
HOW = ("lr: each strategy's own, chosen by successive halving on the demo's stage-2 recipe at 1 epoch by held-out "
       "loss (conf/demo/compare_lrs.json, docs/demo.md)")


def train_and_score(strategy: str, lr: float, quick: bool):
    """One stage-2 run of `strategy` at `lr` and its evaluation: (run, metrics)."""
    from mmln.config import load_config
    from mmln.evaluate import evaluate
    from mmln.fit import fit

    over = [f"tune.strategy={strategy}", f"train.lr={lr}"]
    epochs, limit = (["train.epochs=1"], ["eval.limit=200"]) if quick else ([], [])
    say(f"comparison: {strategy} (lr {lr:g})")
    with heartbeat(f"comparison: {strategy}"):
        run = fit(load_config(CONF / "stage2.yaml", epochs + over), str(CONF / "stage2.yaml"))
        scores = evaluate(load_config(CONF / "stage2.yaml", limit + over), str(run.run_dir / "trainable.safetensors"),
                          BENCHES, run.run_dir / "eval", run_id=run.run_id)["metrics"]
    return run, scores


def compare(s2, s2lr: float, tuned: dict, quick: bool, lrs: dict[str, float] = COMPARE) -> dict[str, dict]:
    """Each strategy's row at its lr in `lrs`; LayerNorm's is the demo's own stage-2 run when that used
    the same lr (`s2`, `tuned`), else one more run, and the demo's own run follows it as
    "layernorm (stage 2)": the sweep's pick by 1-epoch held-out loss is not the best lr by every score."""
    from mmln.demo.tables import comparison_row

    rows = {}
    for strategy, lr in lrs.items():
        if strategy == "layernorm" and lr == s2lr:
            rows[strategy] = comparison_row(s2, tuned, lr)
        else:
            rows[strategy] = comparison_row(*train_and_score(strategy, lr, quick), lr)
        if strategy == "layernorm" and lr != s2lr:
            rows["layernorm (stage 2)"] = comparison_row(s2, tuned, s2lr)
    return rows


def print_comparison(compared: dict[str, dict], untuned: dict, chance: dict) -> None:
    from mmln.demo.tables import comparison_table

    print("\n" + comparison_table({**compared, "untuned (stage 1)": untuned, "chance": chance}))
    print(f"({HOW}; layernorm (stage 2): the demo's own run at its stage-2 lr; same data, epochs and stage-1 "
          "connector for every strategy; plan GB: mmln.plan's peak for a "
          "micro-batch padded to model.max_length, fp32; step ms: mean micro-step; layer sim: mean off-diagonal "
          "similarity of the blocks' outputs; LN grad var: mean variance of the tracked norms' gradients, none "
          "where norms are frozen)")
