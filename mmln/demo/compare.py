"""`python -m mmln.demo --compare`: the paper's comparison in miniature. Every strategy trained by the
demo's stage-2 recipe from the same stage-1 connector, each at its own learning rate (`COMPARE`), and
one table of trainable share, planned memory, step time, scores, layer similarity and
LayerNorm-gradient variance, next to the untuned model and chance."""
from __future__ import annotations

from mmln.demo.pretrain import CONF, say
from mmln.demo.stages import BENCHES, heartbeat

# strategy -> learning rate. Not swept on the demo (one guess each: the norm strategies at the demo's
# LayerNorm rate, LoRA likewise, full finetuning at the base LM's chat-tuning rate); layernorm's is the
# demo's own stage-2 run. A real comparison sweeps each (`make sweep`), as the paper does.
COMPARE = {"layernorm": 3e-3, "layernorm_simple": 3e-3, "lora": 3e-3, "finetune": 5e-4}
HOW = "one learning rate each, not swept: mmln.demo.compare.COMPARE"


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
    the same lr (`s2`, `tuned`), else one more run."""
    from mmln.demo.tables import comparison_row

    rows = {}
    for strategy, lr in lrs.items():
        if strategy == "layernorm" and lr == s2lr:
            rows[strategy] = comparison_row(s2, tuned, lr)
        else:
            rows[strategy] = comparison_row(*train_and_score(strategy, lr, quick), lr)
    return rows


def print_comparison(compared: dict[str, dict], untuned: dict, chance: dict) -> None:
    from mmln.demo.tables import comparison_table

    print("\n" + comparison_table({**compared, "untuned (stage 1)": untuned, "chance": chance}))
    print(f"({HOW}; same data, epochs and stage-1 connector for every strategy; plan GB: mmln.plan's peak for a "
          "micro-batch padded to model.max_length, fp32; step ms: mean micro-step; layer sim: mean off-diagonal "
          "similarity of the blocks' outputs; LN grad var: mean variance of the tracked norms' gradients, none "
          "where norms are frozen)")
