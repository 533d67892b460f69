"""Successive halving (mmln.halving): paused runs continue exactly, the synchronous (default) and
Optuna's asynchronous decisions from known proxy values, a tiny halving sweep end to end (kill -9
mid-rung 1 and mid-rung 2, resume, the promoted run equals the full-grid run of the same point bit
for bit)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from mmln import sweep
from mmln.fit import fit
from mmln.sweeps.study import storage_of
from tests.conftest import ROOT, TINY, make_world
from tests.test_fit import cfg_for


def test_a_paused_run_continues_bit_exact(tiny_world, tmp_path):
    base = ["tune.strategy=layernorm", "train.lr=1e-3", "train.save_every_n_steps=5", "train.warmup_ratio=0.2",
            "train.global_batch_size=8", "train.micro_batch_size=4"]  # 96 records / 8 -> 12 steps, accumulation 2
    ref = fit(cfg_for(tiny_world, tmp_path, "instruct", *base, "run_name=straight"))
    cfg = cfg_for(tiny_world, tmp_path, "instruct", *base, "run_name=paused")
    first = fit(cfg, stop_at=lambda total: total // 9)
    assert (first.total_steps, first.paused_at) == (12, 1) and not (first.run_dir / "trainable.safetensors").exists()
    ckpt = torch.load(first.run_dir / "checkpoints/last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 1 and ckpt["lr_schedulers"][0]["last_epoch"] == 1
    second = fit(cfg, stop_at=lambda total: 3 * (total // 9))
    assert second.paused_at == 3 and second.run_id == first.run_id
    last = fit(cfg)
    assert last.paused_at is None and last.run_id == first.run_id
    a, b = load_file(str(ref.run_dir / "trainable.safetensors")), load_file(str(last.run_dir / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ Optuna's decisions, no training
def asha(values: list[float], eta: int) -> list[bool]:
    """The rule, written out independently: in trial order, a trial is promoted when its value is in
    the top max(1, seen // eta) of the values seen so far at the rung (itself included)."""
    out = []
    for i, v in enumerate(values):
        seen = sorted(values[: i + 1], reverse=True)
        out.append(v < seen[max(1, (i + 1) // eta) - 1])  # pruned?
    return out


def synchronous(values: dict[float, float], eta: int) -> set[float]:
    """The synchronous rule, written out independently: the best ceil(n / eta) of the n learning
    rates by value (higher is better), a tie going to the higher learning rate."""
    keep = -(-len(values) // eta)
    ranked = sorted(values, key=lambda lr: (values[lr], lr))[::-1]
    return set(ranked[:keep])


def test_synchronous_decisions_from_known_proxy_values(rdb_storage):
    import optuna

    from mmln import halving

    lrs = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8]
    storage = rdb_storage  # sqlite, and a real PostgreSQL server (tests/pg.py)
    study = halving.load_study("s", storage, lrs, halving.Options(eta=3))  # the default rule: sync
    by_lr = halving.grid_trials(study, lrs)
    study.set_user_attr("rung_steps", [1, 3, 9, 20])
    trial = {lr: optuna.trial.Trial(study, study.trials[n]._trial_id) for lr, n in by_lr.items()}
    # rung 0: 7 points, ceil(7/3) = 3 go on; 1e-3 and 1e-5 tie at 0.5 for the third place: the higher lr wins
    r0 = {1e-2: 0.1, 1e-3: 0.5, 1e-4: 0.9, 1e-5: 0.5, 1e-6: 0.7, 1e-7: 0.2, 1e-8: 0.3}
    assert synchronous(r0, 3) == {1e-4, 1e-6, 1e-3}
    order = sorted(by_lr, key=by_lr.get)  # trial order; the best is reported last, the worst first
    for lr in sorted(order, key=r0.get)[:-1]:
        trial[lr].report(r0[lr], 1)
    assert halving.decide_rung(study, list(by_lr.values()), step=1, rung=0) == {}  # one point still to report
    with pytest.raises(halving.RungIncomplete, match="rung 0"):
        trial[1e-2].should_prune()
    assert all(t.state == optuna.trial.TrialState.RUNNING and not t.user_attrs for t in study.trials)
    trial[1e-4].report(r0[1e-4], 1)
    decided = halving.decide_rung(study, list(by_lr.values()), step=1, rung=0)
    assert decided == {by_lr[lr]: lr not in synchronous(r0, 3) for lr in lrs}
    # a restarted process (a new study object on the same storage) decides nothing twice, and its
    # pruner, asked again, gives the same answers from the stored values
    again = halving.load_study("s", storage, lrs, halving.Options(eta=3))
    assert halving.decide_rung(again, list(by_lr.values()), step=1, rung=0) == {}
    assert {t.number: again.pruner.prune(again, t) for t in again.trials} == decided
    pruned = {t.params["lr"] for t in again.trials if t.state == optuna.trial.TrialState.PRUNED}
    assert pruned == set(lrs) - {1e-4, 1e-6, 1e-3}
    # rung 1: the 3 promoted, ceil(3/3) = 1 goes on; rung 2 (1 point): it goes on to the full run
    r1 = {1e-3: 0.8, 1e-4: 0.6, 1e-6: float("nan")}  # NaN is the worst
    for lr in r1:
        trial[lr].report(r1[lr], 3)
    assert halving.decide_rung(again, list(by_lr.values()), step=3, rung=1) == {
        by_lr[1e-3]: False, by_lr[1e-4]: True, by_lr[1e-6]: True}
    trial[1e-3].report(0.1, 9)
    assert halving.decide_rung(again, [by_lr[1e-3]], step=9, rung=2) == {by_lr[1e-3]: False}
    # minimising (a loss proxy): the lowest values go on
    loss = halving.load_study("l", storage, lrs, halving.Options(eta=3, proxy_metric="val/loss"))
    ids = halving.grid_trials(loss, lrs)
    loss.set_user_attr("rung_steps", [1, 3])
    for lr, n in ids.items():
        optuna.trial.Trial(loss, loss.trials[n]._trial_id).report(r0[lr], 1)
    kept = {t.params["lr"] for t in loss.trials if not halving.decide_rung(loss, [t.number], 1, 0)[t.number]}
    assert kept == synchronous({lr: -v for lr, v in r0.items()}, 3) == {1e-2, 1e-7, 1e-8}


def test_rungs_and_async_decisions_from_known_proxy_values(rdb_storage):
    from mmln import halving

    assert halving.rung_steps(9, 1 / 9, 3) == [1, 3, 9] and halving.rung_steps(100, 1 / 9, 3) == [11, 33, 99, 100]
    assert halving.rung_steps(2, 1 / 9, 3) == [1, 2] and halving.fraction("1/9") == 1 / 9
    lrs = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7]
    opts = halving.Options(eta=3, rule="async")
    storage = rdb_storage
    study = halving.load_study("s", storage, lrs, opts, min_resource=1)
    by_lr = halving.grid_trials(study, lrs)
    assert sorted(by_lr) == sorted(lrs) and len(study.trials) == 6
    assert halving.grid_trials(study, lrs) == by_lr  # asking again: the same trials
    import optuna

    proxy = {1e-2: 0.1, 1e-3: 0.5, 1e-4: 0.9, 1e-5: 0.7, 1e-6: 0.3, 1e-7: 0.2}
    order = sorted(by_lr, key=by_lr.get)  # trial order (GridSampler's seeded shuffle of the grid)
    for lr in order:
        optuna.trial.Trial(study, study.trials[by_lr[lr]]._trial_id).report(proxy[lr], 1)
    decided = halving.decide_rung(study, list(by_lr.values()), step=1, rung=0)
    expected = dict(zip((by_lr[lr] for lr in order), asha([proxy[lr] for lr in order], 3)))
    assert decided == expected and any(decided.values()) and not all(decided.values())
    assert not decided[by_lr[1e-4]]  # the best is never pruned
    again = halving.load_study("s", storage, lrs, opts, min_resource=1)  # the state lives in the RDB
    states = {t.number: t.state for t in again.trials}
    assert {n for n, s in states.items() if s == optuna.trial.TrialState.PRUNED} == {n for n, p in decided.items() if p}
    assert halving.decide_rung(again, list(by_lr.values()), step=1, rung=0) == {}  # decided once


# ------------------------------------------------------------------------ a halving sweep, end to end
LRS = ["3e-2", "1e-2", "3e-3", "1e-3", "1e-4"]
METRIC = "eval/pope_random_accuracy"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("halving_world"), n_pretrain=2, n_instruct=36,
                      n_mme_per_subtask=1, n_pope_images=2, n_vqa_images=1, n_caption_images=1)[0]


def overrides(w: Path, root: Path) -> list[str]:
    """36 records / global batch 4 = 9 steps: rungs end at steps 1, 3 and 9 (first rung 1/9, eta 3)."""
    return [f"model.llm.tokenizer={w / 'tokenizer'}", f"output_dir={root / 'outputs'}", f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
            "tracking.experiment=tiny_halving", "stage=instruct", "data.template=vicuna_v1", "data.num_workers=0",
            f"data.train.files=[{w / 'llava_instruct/llava_instruct_80k.json'}]", f"data.train.image_folder={w / 'coco/train2017'}",
            f"data.val.files=[{w / 'llava_instruct/short_answer_vqa.json'}]", "data.val.limit=8",
            "train.global_batch_size=4", "train.micro_batch_size=1", "train.epochs=1", "train.warmup_ratio=0.2",
            "train.save_every_n_steps=1", "train.log_every_n_steps=1", "model.max_length=512", "tune.strategy=layernorm",
            "analysis.grad_every_n_steps=0", "analysis.similarity=false", "eval.limit=8", "eval.yes_no=logits",
            f"eval.pope_files=[{w / 'pope/coco_pope_random.json'}]", f"eval.pope_images={w / 'coco/val2014'}"]


def halving_args(w: Path, root: Path) -> list[str]:
    return ["--config", str(TINY), "--search", "halving", "--lrs", *LRS, "--bench", "pope", "--select-metric", METRIC,
            "--proxy-metric", "val/loss", "--first-rung", "1/9", *overrides(w, root)]


def run_until_killed(args: list[str], root: Path, rung: int) -> tuple[str, int, str]:
    """`python -m mmln.sweep ARGS` in a subprocess, killed with SIGKILL in the middle of halving rung
    `rung`: after the first checkpoint the first point of that rung writes. (point, its checkpoint's
    step, its MLflow run id) at the kill."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMLN_QUIET": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mmln.sweep", *args], cwd=root, env=env,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    log, killed = [], None
    try:
        for line in proc.stderr:
            log.append(line)
            m = re.search(rf"\] (\S+): halving rung {rung}", line)
            if m:
                ckpt = root / "outputs" / "tiny_halving" / m.group(1) / "checkpoints" / "last.ckpt"
                before = ckpt.stat().st_mtime_ns
                deadline = time.time() + 120
                while ckpt.stat().st_mtime_ns == before and proc.poll() is None and time.time() < deadline:
                    time.sleep(0.001)
                os.kill(proc.pid, signal.SIGKILL)
                killed = m.group(1)
                break
    finally:
        if proc.poll() is None and killed is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert killed and proc.returncode == -signal.SIGKILL, "".join(log)[-3000:]
    run = root / "outputs/tiny_halving" / killed
    step = torch.load(run / "checkpoints/last.ckpt", weights_only=False)["global_step"]
    return killed, step, (run / "mlflow_run_id").read_text()


@pytest.fixture(scope="module")
def halved(world, tmp_path_factory):
    """The sweep in a subprocess, killed with SIGKILL in the middle of rung 1 (after the step-2
    checkpoint of its first point: the rung is then half reported), run again in a subprocess and
    killed in the middle of rung 2 (the full run of the one survivor), then run here to the end.
    ~80 s: three sweeps' worth of startup plus 5 + 2 + 1 short trainings and a reference run."""
    root = tmp_path_factory.mktemp("halving_run")
    kills = [run_until_killed(halving_args(world, root), root, rung) for rung in (1, 2)]
    rc = sweep.main(halving_args(world, root))
    return dict(root=root, rc=rc, kills=kills, world=world)


def test_halving_sweep_survives_kill_and_decides_by_the_proxy(halved):
    import optuna

    root = halved["root"]
    (first, first_step, first_run), (last, last_step, last_run) = halved["kills"]
    assert halved["rc"] == 0 and first_step == 2 and 3 < last_step < 9  # killed between rung ends 1 and 3, 3 and 9
    storage = storage_of(str(root / "outputs/tiny_halving/optuna.journal"))  # the default: a journal file
    assert not (root / "optuna.db").exists()
    studies = optuna.get_all_study_summaries(storage)
    assert len(studies) == 1, [s.study_name for s in studies]  # the workers' claims released, none left
    study = optuna.load_study(study_name=studies[0].study_name, storage=storage)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert len(trials) == len(LRS) and sorted(t.params["lr"] for t in trials) == sorted(float(x) for x in LRS)
    assert study.user_attrs["rung_steps"] == [1, 3, 9]
    # rung 0: every point, the best ceil(5/3) = 2 go on; rung 1: those 2, the best 1 goes on to the
    # full run; decisions = the synchronous rule applied to the stored proxies (loss: lower wins)
    promoted = {t.params["lr"] for t in trials if t.user_attrs["rung0"] == "promoted"}
    assert promoted == synchronous({t.params["lr"]: -t.intermediate_values[1] for t in trials}, 3) and len(promoted) == 2
    r1 = [t for t in trials if t.params["lr"] in promoted]
    assert all(t.user_attrs["rung0"] == "pruned" and set(t.intermediate_values) == {1} for t in trials if t not in r1)
    survivor = {t.params["lr"] for t in r1 if t.user_attrs["rung1"] == "promoted"}
    assert survivor == synchronous({t.params["lr"]: -t.intermediate_values[3] for t in r1}, 3)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert {t.params["lr"] for t in done} == survivor and len(pruned) == len(LRS) - 1

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny_halving")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("kind") == "sweep")
    children = {float(r.data.tags["lr"]): r for r in runs if r.data.tags.get("kind") != "sweep"}
    assert len(children) == len(LRS)
    for t in trials:
        r = children[t.params["lr"]]
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id and r.data.tags["optuna/trial"] == str(t.number)
        history = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "halving/proxy")}
        assert history == {s: v for s, v in t.intermediate_values.items()}
        if t.state == optuna.trial.TrialState.PRUNED:
            assert r.data.tags["halving/state"] == "pruned" and r.info.status == "KILLED" and METRIC not in r.data.metrics
        else:
            assert r.data.tags["halving/state"] == "finished" and r.info.status == "FINISHED"
            assert r.data.metrics[METRIC] == t.value
    spent = sum(9 if t.state == optuna.trial.TrialState.COMPLETE else max(t.intermediate_values) for t in trials)
    assert spent == 3 * 1 + 1 * 3 + 9  # 3 pruned at step 1, 1 at step 3, the survivor's 9 steps
    assert parent.data.metrics["halving/steps_spent"] == spent and parent.data.metrics["halving/steps_full_grid"] == 45
    assert parent.data.metrics["halving/budget_fraction"] == spent / 45 < 1 and parent.data.tags["search"] == "halving"
    best = max(done, key=lambda t: (t.value, t.params["lr"]))
    assert parent.data.tags["best_lr/layernorm"] == f"{best.params['lr']:g}"
    # the killed points continued their own runs: the first one (killed mid-rung 1, before the other
    # point of the rung had reported) was scored at rung 1 after the restart; the second is the survivor
    by_name = {r.info.run_name: r for r in runs}
    assert by_name[first].info.run_id == first_run and by_name[last].info.run_id == last_run
    assert float(by_name[first].data.tags["lr"]) in promoted and float(by_name[last].data.tags["lr"]) in survivor
    assert parent.data.tags["halving/rule"] == "sync"
    # the dashboard's parent: the comparison marks the pruned points, the LR curve is beside it
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert logged == {"comparison/comparison.md", "comparison/lr_curves_tiny.png"}
    md = Path(client.download_artifacts(parent.info.run_id, "comparison/comparison.md", str(root))).read_text()
    assert md.count("| pruned") == len(pruned) and f"**{best.value:.4g}**" in md
    # --summarize afterwards: the pruned points are pruned, not missing (exit 0), the same best lr
    assert sweep.main(halving_args(halved["world"], root) + ["--summarize"]) == 0
    parent = client.get_run(parent.info.run_id)
    assert parent.data.tags["best_lr/layernorm"] == f"{best.params['lr']:g}" and parent.data.metrics["sweep/n_failed"] == 0
    (root / "again").mkdir(exist_ok=True)
    again = client.download_artifacts(parent.info.run_id, "comparison/comparison.md", str(root / "again"))
    assert Path(again).read_text().count("| pruned") == len(pruned)


def test_the_promoted_run_equals_the_full_grid_run(halved, world, tmp_path):
    """The survivor, killed in the middle of its full run (the last rung), went through two pauses,
    two promotions, kill -9 and resume, and must still end bit-identical to the same point trained
    straight through, as the full grid does."""
    root = halved["root"]
    killed = halved["kills"][1][0]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny_halving")
    done = {r.info.run_name: r for r in client.search_runs([exp.experiment_id], "tags.`halving/state` = 'finished'")}
    assert list(done) == [killed]
    lr = float(done[killed].data.tags["lr"])
    grid = sweep.plan(str(TINY), ["layernorm"], [lr], overrides(world, tmp_path))[0]  # the full grid's point
    ref = fit(grid.cfg)
    a = load_file(str(ref.run_dir / "trainable.safetensors"))
    b = load_file(str(root / "outputs/tiny_halving" / killed / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
