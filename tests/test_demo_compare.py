"""`python -m mmln.demo --compare` trains each strategy at the learning rate a successive-halving sweep
on the demo chose (issue 26 item 4): `mmln.demo.compare.COMPARE` must equal the sweep's record,
`conf/demo/compare_lrs.json`, which `python -m mmln.demo.lrsweep` writes from the sweep's Optuna studies."""
from __future__ import annotations

import json

import pytest

from mmln.demo import lrsweep
from mmln.demo.compare import COMPARE

VAL = "val/loss"


def test_compare_uses_the_lrs_the_recorded_halving_sweep_chose():
    rec = json.loads(lrsweep.RECORD.read_text())
    chosen = {s: r["chosen_lr"] for s, r in rec["strategies"].items()}
    assert COMPARE == chosen, f"mmln.demo.compare.COMPARE differs from the sweep's record {lrsweep.RECORD}: {chosen}"
    assert rec["commands"] == lrsweep.commands(rec["epochs"])  # the record is of the sweep the code documents
    for strategy, r in rec["strategies"].items():
        assert r["lrs"] == sorted(lrsweep.GRIDS[strategy]), strategy
        # the record is internally consistent: the rule, replayed on its proxies, keeps the chosen lr
        assert lrsweep.replay(r, rec["eta"]) == [r["chosen_lr"]], (strategy, r)
    for s in ("layernorm", "layernorm_simple", "lora"):  # 10x either side of the lr the demo used to guess
        assert min(lrsweep.GRIDS[s]) <= 3e-4 and max(lrsweep.GRIDS[s]) >= 3e-2
    assert min(lrsweep.GRIDS["finetune"]) <= 5e-5 and max(lrsweep.GRIDS["finetune"]) >= 5e-3


def halving_study(storage: str, name: str, curves: dict[float, list[float]], total: int = 24):
    """A study driven by mmln's real halving pieces (sampler, sync pruner, rung decisions) as
    `mmln.sweeps.halving.halve` drives it, with known proxies instead of training: `curves[lr][k]` is
    the lr's held-out loss at rung k (the last entry: its final score)."""
    import optuna

    from mmln.sweeps.rungs import rung_steps
    from mmln.sweeps.study import Options, decide_rung, grid_trials, load_study

    lrs = sorted(curves)
    steps = rung_steps(total, 1 / 12, 3)
    study = load_study(name, storage, lrs, Options(proxy_metric=VAL), steps[0])
    study.set_user_attr("rung_steps", steps)
    trial_of = grid_trials(study, lrs)
    alive = [trial_of[lr] for lr in lrs]
    lr_of = {n: lr for lr, n in trial_of.items()}
    ids = {t.number: t._trial_id for t in study.get_trials(deepcopy=False)}
    for k, step in enumerate(steps[:-1]):
        for n in alive:
            optuna.trial.Trial(study, ids[n]).report(curves[lr_of[n]][k], step)
        decided = decide_rung(study, alive, step, k)
        alive = [n for n in alive if not decided[n]]
    for n in alive:
        study.tell(n, curves[lr_of[n]][-1])
    return study


def test_the_record_is_read_from_a_real_halving_study(tmp_path, monkeypatch):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    lrs = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
    # rung 0 keeps 1e-3 and 3e-3 (lowest losses); rung 1 keeps 1e-3; it finishes alone
    curves = {3e-4: [2.0], 1e-3: [1.2, 0.9, 0.8, 0.7], 3e-3: [1.1, 1.0], 1e-2: [1.5], 3e-2: [3.0]}
    halving_study(storage, "mmln-aaaa1111-layernorm-seed0", curves)
    halving_study(storage, "mmln-bbbb2222-layernorm_simple-seed0", {lr: [1.0, 1.0, 1.0, 1.0] for lr in lrs})
    monkeypatch.setattr(lrsweep, "GRIDS", {"layernorm": lrs})
    rec = lrsweep.record(storage)["strategies"]["layernorm"]
    assert rec["study"] == "mmln-aaaa1111-layernorm-seed0" and rec["lrs"] == lrs
    assert rec["chosen_lr"] == 1e-3 and rec["final"] == {"0.001": 0.7}
    assert rec["rung_steps"] == [2, 6, 18, 24]
    assert rec["proxies"]["0.001"] == {"2": 1.2, "6": 0.9, "18": 0.8} and rec["proxies"]["0.03"] == {"2": 3.0}
    assert lrsweep.replay(rec) == [1e-3]
    # a hand-edited record (the chosen lr not the one the proxies keep) fails the replay
    assert lrsweep.replay({**rec, "proxies": {**rec["proxies"], "0.003": {"2": 1.1, "6": 0.5, "18": 0.4}}}) == [3e-3]

    # two studies of one strategy over the same lrs: which sweep is meant is not guessed
    halving_study(storage, "mmln-cccc3333-layernorm-seed0", curves)
    with pytest.raises(SystemExit, match="2 halving studies of layernorm"):
        lrsweep.record(storage)


def test_the_comparison_table_prints_each_lr_as_chosen():
    """finetune's 1.5e-4 once printed as 1e-04 (one significant digit): not the lr that trained."""
    from mmln.demo.tables import comparison_table

    text = comparison_table({s: {"lr": lr} for s, lr in COMPARE.items()})
    for s, lr in COMPARE.items():
        assert next(line for line in text.splitlines() if line.startswith(s + " ")).split()[1] == f"{lr:g}", text


def test_a_demo_dir_without_the_recipe_marker_is_refused_and_nothing_deleted(tmp_path, capsys, monkeypatch):
    """Folders named like the demo's caches but without its RECIPE marker are the user's: one line, exit 2,
    nothing deleted (through the demo's own main); with a marker of another recipe they are the demo's
    own and are rebuilt."""
    import mmln.demo.__main__ as demo
    from mmln.demo.stages import check_recipe

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.json").write_text("{}")
    monkeypatch.setenv("MMLN_DEMO_DIR", str(tmp_path))
    assert demo.main([]) == 2 and (tmp_path / "data" / "mine.json").is_file()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mmln.demo: error: ") and "no RECIPE marker" in err, err
    (tmp_path / "RECIPE").write_text("1\n")
    check_recipe(tmp_path, "2")
    assert not (tmp_path / "data").exists() and (tmp_path / "RECIPE").read_text() == "2\n"
