"""The halving scheduler simulator (mmln.sweeps.simulate): its rung decisions are the real rule's (checked
against the rule written out independently, and against a real tiny halving sweep's survivors on the
same proxies), and its clock adds up (a schedule worked out by hand; busy + idle = workers x wall)."""
from __future__ import annotations

import math
import random

import pytest

from mmln.halving import rung_steps
from mmln.sweeps.simulate import Costs, grid_wall, paper_groups, random_proxy, replay, simulate


def by_hand(values: dict[float, float], eta: int, maximize: bool) -> set[float]:
    """The synchronous rule written out: the best ceil(n / eta) by value, NaN last, a tie to the higher lr."""
    def key(lr):
        v = values[lr]
        return (not math.isnan(v), (v if maximize else -v) if not math.isnan(v) else 0.0, lr)
    return set(sorted(values, key=key, reverse=True)[: -(-len(values) // eta)])


def table(seed: int, lrs: list[float], steps: list[int]) -> dict[float, dict[int, float]]:
    """Proxy values with ties (rounded to one decimal) and one NaN per rung."""
    rnd = random.Random(seed)
    out = {lr: {s: round(rnd.random(), 1) for s in steps[:-1]} for lr in lrs}
    for s in steps[:-1]:
        out[rnd.choice(lrs)][s] = float("nan")
    return out


LRS = [2e-3, 1e-3, 6e-4, 3e-4, 1e-4, 5e-5, 2e-5, 1e-5, 6e-6, 1e-6, 1e-7]


@pytest.mark.parametrize("maximize", [True, False])
def test_replay_and_simulation_take_the_synchronous_rules_survivors(maximize):
    steps = rung_steps(36, 1 / 12, 3)
    assert steps == [3, 9, 27, 36]
    for seed in range(4):
        proxies = table(seed, LRS, steps)
        expected, alive = [set(LRS)], set(LRS)
        for s in steps[:-1]:
            alive = by_hand({lr: proxies[lr][s] for lr in alive}, 3, maximize)
            expected.append(alive)
        assert [len(x) for x in expected] == [11, 4, 2, 1]
        assert replay(proxies, steps, 3, maximize) == expected
        costs = Costs({"layernorm": 1.0}, 36, noise=0.3)
        for workers in (1, 4, 11, 64):  # the schedule changes with the workers, the survivors must not
            sim = simulate([("s", "layernorm", LRS)], workers, costs, lambda _, lr, step: proxies[lr].get(step, 0.0),
                           first_rung=1 / 12, seed=seed, maximize=maximize)
            assert sim.survivors == {"s": sorted(expected[-1])}
            assert sim.steps == 11 * 3 + 4 * 6 + 2 * 18 + 1 * 9  # 102 of 396: 0.258 of the grid


def test_a_schedule_worked_out_by_hand():
    # 2 studies x 3 lrs, 9 steps (rungs end at 1, 3, 9), 1 s a step, 0.5 s a restart, 0.25 s a
    # proxy, 1 s the final evaluation; 2 workers; proxy: the lower lr is better
    costs = Costs({"a": 1.0, "b": 1.0}, 9, restart_s=0.5, proxy_s=0.25, final_eval_s=1.0)
    groups = [("A", "a", [3e-1, 2e-1, 1e-1]), ("B", "b", [3e-1, 2e-1, 1e-1])]
    sim = simulate(groups, 2, costs, lambda _, lr, step: -lr, first_rung=1 / 9)
    assert sim.survivors == {"A": [1e-1], "B": [1e-1]}
    # rung 0 items take 1.25 s: A's three on 2 workers end at 1.25, 1.25, 2.5 (the second worker
    # takes B's first at 1.25); A decided at 2.5; A's survivor (rung 1: 2 + 0.5 + 0.25 = 2.75 s)
    # goes before B's other points (point order): 2.5 -> 5.25; B's points end at 2.5, 3.75, 5.0
    # (B decided at 5.0); B's rung 1 5.0 -> 7.75; A's rung 2 (6 + 0.5 + 1 = 7.5 s) 5.25 -> 12.75;
    # B's rung 2 7.75 -> 15.25
    assert sim.wall_s == pytest.approx(15.25)
    assert sim.busy_s == pytest.approx(2 * (3 * 1.25 + 2.75 + 7.5))
    # idle: none until 12.75, then one worker until 15.25, with nothing waiting at a barrier
    assert sim.barrier_idle_s == 0 and sim.drain_idle_s == pytest.approx(2.5)
    assert grid_wall(groups, 2, costs) == pytest.approx((3 * 10, 6 * 10))  # 6 runs of 9 s + 1 s evaluation, 2 workers


@pytest.mark.parametrize("rule", ["sync", "async"])
def test_the_clock_adds_up_and_async_never_waits(rule):
    costs = Costs({"layernorm": 2.0, "finetune": 3.0}, 625, restart_s=60, proxy_s=30, final_eval_s=300, noise=0.2)
    groups = paper_groups(["layernorm", "finetune"], LRS, [42, 43])
    for workers in (1, 8, 64):
        sim = simulate(groups, workers, costs, random_proxy(1), rule=rule, seed=1)
        assert sim.busy_s + sim.barrier_idle_s + sim.drain_idle_s == pytest.approx(workers * sim.wall_s)
        assert all(len(s) >= 1 for s in sim.survivors.values())
        if rule == "sync":
            assert all(len(s) == 1 for s in sim.survivors.values()) and sim.steps == 4 * (11 * 52 + 4 * 104 + 2 * 312 + 157)  # rungs end at 52, 156, 468, 625
        else:
            assert sim.barrier_idle_s == 0
        if workers == 1:
            assert sim.wall_s == pytest.approx(sim.busy_s)
        if workers == 64 and rule == "sync":
            assert sim.barrier_idle_s > 0  # 44 points on 64 workers: a rung waits for its slowest point


@pytest.mark.slow
def test_the_simulator_picks_a_real_halving_sweeps_survivors(tmp_path_factory):
    """A real tiny halving sweep (5 lrs, 9 steps, proxy val/loss, one process): the simulator, on the
    proxies that sweep stored in its Optuna study, promotes the same points at every rung and ends
    with the same survivor, whatever the number of workers. ~1 min on a loaded 2-core machine."""
    import optuna

    from mmln import sweep
    from tests.conftest import make_world
    from tests.test_halving import LRS as SWEEP_LRS
    from tests.test_halving import halving_args

    world = make_world(tmp_path_factory.mktemp("sim_world"), n_pretrain=2, n_instruct=36, n_mme_per_subtask=1,
                       n_pope_images=2, n_vqa_images=1, n_caption_images=1)[0]
    root = tmp_path_factory.mktemp("sim_run")
    assert sweep.main(halving_args(world, root)) == 0
    from mmln.sweeps.study import storage_of

    storage = storage_of(str(root / "outputs/tiny_halving/optuna.journal"))  # the default storage
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    steps = study.user_attrs["rung_steps"]
    trials = study.trials
    proxies = {t.params["lr"]: dict(t.intermediate_values) for t in trials}
    real = [set(proxies)] + [{t.params["lr"] for t in trials if t.user_attrs.get(f"rung{k}") == "promoted"}
                             for k in range(len(steps) - 1)]
    finished = sorted(t.params["lr"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert steps == [1, 3, 9] and [len(x) for x in real] == [5, 2, 1] and len(finished) == 1
    assert replay(proxies, steps, 3, maximize=False) == real
    costs = Costs({"layernorm": 1.0}, steps[-1], noise=0.5)
    for workers in (1, 2, 5):
        sim = simulate([("s", "layernorm", [float(x) for x in SWEEP_LRS])], workers, costs,
                       lambda _, lr, step: proxies[lr].get(step, 0.0), first_rung=1 / 9, seed=workers, maximize=False)
        assert sim.survivors == {"s": finished}
