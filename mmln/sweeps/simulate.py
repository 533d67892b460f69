"""A discrete-event simulator of a successive-halving sweep spread over W workers (issue 27, item 4).

It runs mmln's real halving machinery on in-memory Optuna studies: `mmln.halving.load_study` (the
GridSampler and the pruner of `--halving-rule sync` or `async`), `grid_trials` (the grid's trial
numbers, hence the point order), `rung_steps` (where the rungs end) and `decide_rung` (the
pruner's decisions, a pruned trial told PRUNED), so the survivors are those the real sweep would
choose on the same proxy values. Only training is simulated: a work item (one point trained from
its previous rung to its next one) takes `steps x step time x noise + overheads` seconds.

Scheduling (what a pool of workers on one shared study storage would do): every point of every
study is queued at rung 0; a free worker takes the runnable item first in the sweep's point order
(studies in `mmln.halving.study_groups` order, then trial number); when an item ends, its proxy is
reported at the rung's step and the study's pruner is asked, and a promoted point is queued for its
next rung. Under `sync` a rung is decided only once all its points reported (the barrier); under
`async` (Optuna's SuccessiveHalvingPruner, ASHA-like) each point is decided when it reports.

Reported per run (`Result`): wall time, busy worker-seconds, utilization, the idle worker-seconds
spent while points waited at a rung barrier, up to one worker per waiting point (`barrier_idle_s`:
work held back by the synchronous rule), the rest of the idle time (`drain_idle_s`: nothing
runnable), the training steps spent and each study's final survivors. `grid_wall`: the full grid
on the same workers. `replay`: one study's decisions on known proxies (no clock).
"""
from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from typing import Callable

from mmln.sweeps.rungs import rung_steps
from mmln.sweeps.study import Options, decide_rung, grid_trials, load_study

Proxy = Callable[[str, float, int], float]  # (study name, lr, step) -> proxy value


@dataclass
class Costs:
    """Seconds a point costs: `step_s[strategy]` per optimizer step (times a lognormal factor of
    sigma `noise` drawn once per point: a slow node stays slow), `restart_s` to start a trainer and
    load a checkpoint for every rung after the first, `proxy_s` per proxy evaluation, `final_eval_s`
    for the full evaluation of a point that reaches the end."""
    step_s: dict[str, float]
    total_steps: int
    restart_s: float = 0.0
    proxy_s: float = 0.0
    final_eval_s: float = 0.0
    noise: float = 0.0


@dataclass
class Result:
    rule: str
    workers: int
    wall_s: float
    busy_s: float
    barrier_idle_s: float
    drain_idle_s: float
    steps: int
    steps_full_grid: int
    survivors: dict[str, list[float]] = field(default_factory=dict)

    @property
    def utilization(self) -> float:
        return self.busy_s / (self.workers * self.wall_s) if self.wall_s else float("nan")

    def row(self) -> dict:
        lost = self.workers * self.wall_s
        return {"rule": self.rule, "workers": self.workers, "wall_h": round(self.wall_s / 3600, 3),
                "worker_h": round(self.busy_s / 3600, 2),
                "utilization": round(self.utilization, 4), "barrier_idle_frac": round(self.barrier_idle_s / lost, 4),
                "drain_idle_frac": round(self.drain_idle_s / lost, 4),
                "steps_fraction": round(self.steps / self.steps_full_grid, 4)}


@dataclass
class _Point:
    """One grid point in its study: the study, its trial number, lr, strategy, speed factor."""
    study: int
    trial: int
    lr: float
    strategy: str
    speed: float
    done_steps: int = 0


def replay(proxies: dict[float, dict[int, float]], steps: list[int], eta: int, maximize: bool,
           rule: str = "sync") -> list[set[float]]:
    """Halving on known proxy values, one study, every point reporting each rung before its decision
    (as the one-process sweep does): the lrs alive at each rung, the last entry the points that
    train to the end. `proxies[lr][step]` for every rung end but the last."""
    lrs = sorted(proxies, reverse=True)
    study = _study("replay", lrs, eta, rule, steps, maximize)
    number = grid_trials(study, lrs)
    alive = [number[lr] for lr in lrs]
    lr_of = {n: lr for lr, n in number.items()}
    out = [{lr_of[n] for n in alive}]
    for k, step in enumerate(steps[:-1]):
        for n in sorted(alive):
            _report(study, n, proxies[lr_of[n]][step], step)
        decided = decide_rung(study, alive, step, k)
        alive = [n for n in alive if not decided.get(n, True)]
        out.append({lr_of[n] for n in alive})
    return out


def _report(study, number: int, value: float, step: int) -> None:
    """Report a trial's proxy at a rung's step, as a worker does (`mmln.sweeps.halving.train_and_score`)."""
    import optuna

    trial_id = next(t._trial_id for t in study.get_trials(deepcopy=False) if t.number == number)
    optuna.trial.Trial(study, trial_id).report(value, step)


def _study(name: str, lrs: list[float], eta: int, rule: str, steps: list[int], maximize: bool):
    """An in-memory study with the real sampler and pruner (the direction set by the proxy's name)."""
    opts = Options(eta=eta, rule=rule, proxy_metric="eval/x_score" if maximize else "val/loss", proxy_bench="x")
    study = load_study(name, None, lrs, opts, steps[0])
    study.set_user_attr("rung_steps", steps)
    return study


def simulate(groups: list[tuple[str, str, list[float]]], workers: int, costs: Costs, proxy: Proxy,
             rule: str = "sync", eta: int = 3, first_rung: float = 1 / 12, seed: int = 0,
             maximize: bool = True) -> Result:
    """Halving over `groups` [(study name, strategy, lrs)] on `workers` workers."""
    steps = rung_steps(costs.total_steps, first_rung, eta)
    rnd = random.Random(seed)
    studies, points = [], []
    for i, (name, strategy, lrs) in enumerate(groups):
        study = _study(name, lrs, eta, rule, steps, maximize)
        studies.append(study)
        for lr, n in sorted(grid_trials(study, lrs).items(), key=lambda x: x[1]):
            points.append(_Point(i, n, lr, strategy, math.exp(rnd.gauss(0.0, costs.noise)) if costs.noise else 1.0))
    ready = [((p.study, p.trial), 0, p) for p in points]  # (point order, rung, point): a heap
    heapq.heapify(ready)
    ev = _Events(workers)
    waiting: dict[tuple[int, int], list[_Point]] = {}  # (study, rung) -> reported, undecided (sync barrier)
    while ready or ev.running:
        while ready and ev.free:
            _, rung, p = heapq.heappop(ready)
            ev.start(rung, p, _duration(p, rung, steps, costs))
        rung, p = ev.next(blocked=sum(len(v) for v in waiting.values()))
        p.done_steps = steps[rung]
        if rung == len(steps) - 1:
            _finish(studies[p.study], p.trial, proxy(groups[p.study][0], p.lr, steps[rung]))
            continue
        study = studies[p.study]
        _report(study, p.trial, proxy(groups[p.study][0], p.lr, steps[rung]), steps[rung])
        members = waiting.setdefault((p.study, rung), [])
        members.append(p)
        decided = decide_rung(study, [q.trial for q in members], steps[rung], rung)
        for q in [q for q in members if q.trial in decided]:
            members.remove(q)
            if not decided[q.trial]:
                heapq.heappush(ready, ((q.study, q.trial), rung + 1, q))
    full = len(points) * costs.total_steps
    survivors = {g[0]: sorted(p.lr for p in points if p.study == i and p.done_steps == costs.total_steps)
                 for i, g in enumerate(groups)}
    return Result(rule, workers, ev.now, ev.busy, ev.barrier_idle, ev.drain_idle,
                  sum(p.done_steps for p in points), full, survivors)


def _finish(study, number: int, value: float) -> None:
    """A point at the end of its run: the trial is told its final score (NaN: failed), as in `train_and_score`."""
    import optuna

    ok = not math.isnan(value)
    study.tell(number, value if ok else None, state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL)


def _duration(p: _Point, rung: int, steps: list[int], costs: Costs) -> float:
    """Seconds to train p from the end of rung-1 to the end of `rung`, with its evaluation."""
    start = steps[rung - 1] if rung > 0 else 0
    last = rung == len(steps) - 1
    return ((steps[rung] - start) * costs.step_s[p.strategy] * p.speed + (costs.restart_s if rung > 0 else 0.0)
            + (costs.final_eval_s if last else costs.proxy_s))


class _Events:
    """The workers' clock: running items by end time; idle worker-seconds split by whether some point
    waits at a rung barrier."""

    def __init__(self, workers: int):
        self.workers, self.now, self.busy = workers, 0.0, 0.0
        self.barrier_idle = self.drain_idle = 0.0
        self.running: list = []
        self._seq = 0

    @property
    def free(self) -> int:
        return self.workers - len(self.running)

    def start(self, rung: int, p: _Point, seconds: float) -> None:
        self._seq += 1
        self.busy += seconds
        heapq.heappush(self.running, (self.now + seconds, self._seq, rung, p))

    def next(self, blocked: int) -> tuple[int, _Point]:
        end, _, rung, p = heapq.heappop(self.running)
        idle = self.free - 1  # the popped worker was busy until `end`
        held = min(idle, blocked)  # idle workers that points held at a barrier could have used
        self.barrier_idle += held * (end - self.now)
        self.drain_idle += (idle - held) * (end - self.now)
        self.now = end
        return rung, p


def grid_wall(groups: list[tuple[str, str, list[float]]], workers: int, costs: Costs, seed: int = 0
              ) -> tuple[float, float]:
    """(wall, busy worker-seconds) of the full grid (every point to the end in one go) on `workers`
    workers, in the sweep's point order."""
    rnd = random.Random(seed)
    free, busy = [0.0] * workers, 0.0
    for _, strategy, lrs in groups:
        for _ in lrs:
            speed = math.exp(rnd.gauss(0.0, costs.noise)) if costs.noise else 1.0
            seconds = costs.total_steps * costs.step_s[strategy] * speed + costs.final_eval_s
            busy += seconds
            heapq.heappush(free, heapq.heappop(free) + seconds)
    return max(free), busy


def paper_groups(strategies: list[str], lrs: list[float], seeds: list[int]) -> list[tuple[str, str, list[float]]]:
    """One study per (strategy, seed) in the sweep's point order (strategy, then seed)."""
    return [(f"{s}-seed{seed}", s, list(lrs)) for s in strategies for seed in seeds]


def random_proxy(seed: int = 0, noise: float = 0.3) -> Proxy:
    """Seeded proxy values: each (study, lr) has a quality, each rung adds noise that shrinks with the
    step (a later rung ranks more like the end); higher is better."""
    def value(study: str, lr: float, step: int) -> float:
        q = random.Random(f"{seed}:{study}:{lr!r}").random()
        return q + random.Random(f"{seed}:{study}:{lr!r}:{step}").gauss(0.0, noise / math.sqrt(step))
    return value


# The paper's 7B stage 2 (docs/paper.md "Recipe"): 80K instruct records, one epoch, global batch 128.
PAPER_STEPS = 80_000 // 128  # 625 optimizer steps a run
PAPER_STRATEGIES = ("layernorm", "lora", "finetune")
PAPER_SEEDS = (42, 43, 44)


def modelled_step_s(strategy: str, params: float = 7.05e9, tokens_per_step: int = 128 * 1024, gpus: int = 8,
                    peak_flops: float = 312e12, mfu: float = 0.4) -> float:
    """Seconds per optimizer step of one worker (`gpus` A100s, bf16 dense peak 312 TFLOP/s, at `mfu`),
    *modelled* from FLOPs, not measured (no 7B step time has been measured in this repository: the
    GPU check, benchmarks/gpu_table2.py, has not run on a GPU yet): forward 2N per token, backward
    2N for activation gradients + 2N for weight gradients (finetune only: the other strategies train
    a fraction of a percent to a few percent of N), + 2N recomputation under activation
    checkpointing. N = Vicuna-7B + CLIP-L (7,045,793,792 params, docs/paper.md), 1,024 tokens a sample
    (256 image tokens + the text, an assumption)."""
    per_token = 8 if strategy in ("finetune", "attn_mlp") else 6
    return per_token * params * tokens_per_step / (gpus * peak_flops * mfu)


def paper_costs(noise: float = 0.1, restart_s: float = 120.0, proxy_s: float = 60.0,
                final_eval_s: float = 600.0) -> Costs:
    """The paper's grid at 7B: modelled step times (`modelled_step_s`), 625 steps a run; overheads
    (assumptions, not measurements): 2 min to start a trainer and load a 7B checkpoint at each later
    rung, 1 min for a 100-image CIDEr proxy, 10 min for the full Flickr30k evaluation of a finisher,
    and a per-point speed factor of lognormal sigma `noise`."""
    return Costs({s: modelled_step_s(s) for s in PAPER_STRATEGIES}, PAPER_STEPS, restart_s, proxy_s,
                 final_eval_s, noise)
