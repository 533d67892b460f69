"""How `--compare`'s learning rates were chosen: a successive-halving sweep on the demo itself, and its record.

The sweep (`commands()`; docs/demo.md has the measured run): per strategy, `python -m mmln.sweep
--search halving` over `GRIDS` on `conf/demo/sweep.yaml` (the demo's stage-2 recipe, same stage-1
connector, plus a held-out set), proxy and selection metric the held-out loss (`val/loss`), eta 3,
first rung 1/12. Then

    python -m mmln.demo.lrsweep --storage sqlite:///optuna.db [--out conf/demo/compare_lrs.json]

reads the sweep's Optuna studies (one per strategy, `mmln.sweeps.study`) and writes, per strategy,
the learning rates tried, each one's proxy at every rung it reached, the chosen learning rate (the
one the halving kept to the end) and the time the study took: the record that
`mmln.demo.compare.COMPARE` must equal (tests/test_demo_compare.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmln.demo.pretrain import CONF

NORM = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]  # 10x either side of the demo's LayerNorm lr (3e-3), half-decades
GRIDS = {"layernorm": NORM, "layernorm_simple": NORM, "lora": NORM,
         "finetune": [5e-5, 1.5e-4, 5e-4, 1.5e-3, 5e-3]}  # 10x either side of the base LM's chat-tuning lr
SWEEP = ("python -m mmln.sweep --config conf/demo/sweep.yaml --search halving --strategies {strategy} --lrs {lrs} "
         "--proxy-metric val/loss --select-metric val/loss --bench none train.epochs={epochs}")
EPOCHS = 1  # the sweep's only change to the stage-2 recipe (6 epochs): it had to fit a shared 2-core machine
RECORD = CONF / "compare_lrs.json"


def commands(epochs: int = EPOCHS) -> dict[str, str]:
    """strategy -> the sweep command that chooses its learning rate."""
    return {s: SWEEP.format(strategy=s, lrs=" ".join(f"{lr:g}" for lr in lrs), epochs=epochs) for s, lrs in GRIDS.items()}


def study_record(study) -> dict:
    """One strategy's study as data: rung ends, lrs tried, proxy per lr and rung, the chosen lr, seconds."""
    import optuna

    trials = [t for t in study.get_trials(deepcopy=False) if "lr" in t.params]
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) != 1:
        raise SystemExit(f"error: study {study.study_name}: {len(done)} trials ran to the end, not 1 "
                         "(an unfinished sweep, or not a synchronous halving sweep): run the sweep to its end first")
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    return {"study": study.study_name, "rung_steps": study.user_attrs.get("rung_steps"),
            "lrs": sorted(t.params["lr"] for t in trials),
            "proxies": {f"{t.params['lr']:g}": {str(k): v for k, v in sorted(t.intermediate_values.items())}
                        for t in sorted(trials, key=lambda t: t.params["lr"])},
            "final": {f"{done[0].params['lr']:g}": done[0].value},
            "chosen_lr": done[0].params["lr"], "seconds": round((max(ends) - min(starts)).total_seconds())}


def replay(rec: dict, eta: int = 3) -> list[float]:
    """The learning rates the synchronous rule (`mmln.sweeps.rungs.survivors`, lowest loss first) keeps
    to the end, recomputed from a record's proxies: a record is consistent when this is [chosen_lr]."""
    from mmln.sweeps.rungs import survivors

    alive = list(rec["lrs"])
    for step in rec["rung_steps"][:-1]:
        alive = survivors({lr: rec["proxies"][f"{lr:g}"][str(step)] for lr in alive}, eta, maximize=False)
    return alive


def find_study(storage: str, strategy: str, lrs: list[float]) -> str:
    """The one study on `storage` of `strategy` over exactly `lrs` (the sweep names it
    mmln-<sweep id>-<strategy>-seed<S>)."""
    import optuna

    def of(name: str) -> str:  # mmln-<sweep id>-<strategy>-seed<S> -> strategy
        parts = name.split("-", 2)
        return parts[2].rsplit("-seed", 1)[0] if len(parts) == 3 and parts[0] == "mmln" else ""

    def lrs_of(name: str) -> list[float]:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        return sorted({t.params["lr"] for t in trials if "lr" in t.params})

    fits = [n for n in optuna.get_all_study_names(storage) if of(n) == strategy and lrs_of(n) == sorted(lrs)]
    if len(fits) != 1:
        raise SystemExit(f"error: {storage}: {len(fits)} halving studies of {strategy} over lrs "
                         f"{', '.join(f'{x:g}' for x in lrs)} ({', '.join(fits) or 'none'}); expected one: "
                         f"run `{commands()[strategy]}` first")
    return fits[0]


def record(storage: str, epochs: int = EPOCHS, note: str = "") -> dict:
    import optuna

    from mmln.sweeps.study import quiet_optuna

    quiet_optuna()
    out = {"commands": commands(epochs), "select_metric": "val/loss", "eta": 3, "first_rung": "1/12",
           "epochs": epochs, "note": note, "strategies": {}}
    for strategy, lrs in GRIDS.items():
        study = optuna.load_study(study_name=find_study(storage, strategy, lrs), storage=storage)
        rec = out["strategies"][strategy] = study_record(study)
        if replay(rec, out["eta"]) != [rec["chosen_lr"]]:
            raise SystemExit(f"error: study {study.study_name}: its recorded proxies keep {replay(rec, out['eta'])} "
                             f"to the end, not the lr that finished ({rec['chosen_lr']:g}): not a sync eta-3 halving study")
    return out


def main(argv: list[str] | None = None) -> int:
    from mmln.base.io import write_json

    ap = argparse.ArgumentParser(prog="python -m mmln.demo.lrsweep", description=__doc__.splitlines()[0])
    ap.add_argument("--storage", required=True, help="the sweep's Optuna storage, e.g. sqlite:///optuna.db")
    ap.add_argument("--out", type=Path, default=RECORD, help=f"default: {RECORD}")
    ap.add_argument("--epochs", type=int, default=EPOCHS, help="the sweep's train.epochs")
    ap.add_argument("--note", default="", help="when and where it ran (recorded as is)")
    args = ap.parse_args(argv)
    rec = record(args.storage, args.epochs, args.note)
    write_json(args.out, rec, indent=1)
    for s, r in rec["strategies"].items():
        print(f"{s}: lr {r['chosen_lr']:g} of {', '.join(f'{x:g}' for x in r['lrs'])} ({r['seconds']} s)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
