"""The best-lr rule shared by mmln.sweep and mmln.report, seed statistics, --seeds grids, and the
report's mean +- 95% CI cells."""
from __future__ import annotations

import math

import pytest
from scipy import stats

from mmln import report, sweep
from mmln.eval.selection import best_lr, higher_is_better, mean_ci
from tests.conftest import TINY


def test_mean_ci_is_the_student_t_interval():
    mean, half, n = mean_ci([1.0, 2.0, 3.0, None, float("nan")])
    lo, hi = stats.t.interval(0.95, 2, loc=2.0, scale=stats.sem([1.0, 2.0, 3.0]))
    assert (mean, n) == (2.0, 3) and half == pytest.approx((hi - lo) / 2) and half == pytest.approx(2.4841, abs=1e-4)
    assert mean_ci([5.0])[:2] == (5.0, pytest.approx(math.nan, nan_ok=True)) and mean_ci([])[2] == 0


def test_best_lr_by_the_mean_over_seeds_tie_to_the_higher_lr():
    assert best_lr({1e-3: [1.0, 3.0], 1e-4: [2.5, 2.5]}) == 1e-4  # the single best seed (3.0) does not decide
    assert best_lr({1e-3: [2.0], 1e-4: [2.0]}) == 1e-3
    assert best_lr({1e-3: [float("nan")], 1e-4: []}) is None and best_lr({1e-3: [float("nan"), 1.0], 1e-4: [0.5]}) == 1e-3


def test_seeds_multiply_the_grid_and_the_best_lr_uses_the_mean():
    points = sweep.plan(str(TINY), ["layernorm"], [1e-3, 1e-4], ["train.max_steps=2"], seeds=[0, 1])
    assert [(p.name, p.cfg.train.seed, p.seed) for p in points] == [
        ("layernorm-lr0.001-seed0", 0, 0), ("layernorm-lr0.001-seed1", 1, 1),
        ("layernorm-lr0.0001-seed0", 0, 0), ("layernorm-lr0.0001-seed1", 1, 1)]
    assert len({p.hash for p in points}) == 4
    assert [p.name for p in sweep.plan(str(TINY), ["layernorm"], [1e-3], [])] == ["layernorm-lr0.001"]  # one seed: as before
    for p, v in zip(points, [1.0, 3.0, 2.5, 2.5]):
        p.value = v
    best = sweep.pick_best(points, "m")
    assert best["layernorm"].lr == 1e-4
    assert "lr=0.0001 (m=2.5 +- 0 (95% CI, 2 seeds)" in sweep.report_text(points, best, "m", "h")
    assert sweep.parse_args(["--config", "c", "--seeds", "3"]).seeds == 3


def test_report_cells_are_mean_and_ci_over_seeds():
    def run(lr, seed, value, i):
        return report.Run(f"r{i}", "tiny", "layernorm", lr, "", "all", "CLIP (hf_clip)", i,
                          {"eval/flickr30k_cider": value, "eval/mme_perception": 10.0 * value}, str(seed))

    runs = [run(1e-3, s, v, i) for i, (s, v) in enumerate([(0, 1.0), (1, 3.0)])]
    runs += [run(1e-4, s, v, 9 + i) for i, (s, v) in enumerate([(0, 2.5), (1, 2.5), (2, 2.5)])]
    t1 = report.table1(runs, "eval/flickr30k_cider")
    assert t1.rows[0][2] == "0.0001"
    cell = t1.rows[0][t1.header.index("Flickr30k")]
    assert float(cell) == 2.5 and cell.n == 3 and cell.half == 0.0
    a1 = report.tableA1(runs, "eval/flickr30k_cider")
    c = a1.rows[0][a1.header.index("0.001")]
    assert float(c) == 2.0 and c.half == pytest.approx(mean_ci([1.0, 3.0])[1])
    md = report.markdown(a1)
    assert f"2.00 ± {report.fmt(c.half)}" in md and "2.50 ± 0" in md
    assert report.best(runs, "eval/flickr30k_cider")[0].lr == 1e-4


def test_lr_curves_mark_the_pruned_learning_rates(tmp_path):
    from PIL import Image

    runs = [report.Run(f"r{i}", "tiny", "layernorm", lr, "", "all", "CLIP (hf_clip)", i, {"m": v}, str(seed))
            for i, (lr, seed, v) in enumerate([(1e-3, 0, 1.0), (1e-3, 1, 2.0), (1e-4, 0, 3.0), (1e-4, 1, 3.5)])]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = report.lr_curves(runs, "m", tmp_path / "a")[0]
    marked = report.lr_curves(runs, "m", tmp_path / "b", {("tiny", "layernorm"): {1e-5, 1e-6}})[0]
    assert plain.name == marked.name == "lr_curves_tiny.png"
    a, b = Image.open(plain), Image.open(marked)
    assert a.size != b.size or a.tobytes() != b.tobytes()  # the crosses (and their ticks and legend entry) are drawn
    only_pruned = report.lr_curves([], "m", tmp_path, {("tiny", "lora"): {1e-3}})  # a strategy with no score yet
    assert [p.name for p in only_pruned] == ["lr_curves_tiny.png"]


def test_a_loss_selects_its_lowest_learning_rate_everywhere_a_best_lr_is_picked():
    """`--select-metric val/loss` picked the highest loss (the worst lr) as best: the rule always maximized."""
    assert not higher_is_better("val/loss") and not higher_is_better("train/loss") and higher_is_better("eval/pope_f1")
    assert best_lr({1e-3: [2.0], 1e-4: [1.0]}, maximize=False) == 1e-4
    assert best_lr({1e-3: [1.0], 1e-4: [1.0]}, maximize=False) == 1e-3  # tie: the higher lr, either way
    points = sweep.plan(str(TINY), ["layernorm"], [1e-3, 1e-4], ["train.max_steps=2"], seeds=[0, 1])
    for p, v in zip(points, [3.0, 2.0, 1.0, 1.5]):
        p.value = v
    best = sweep.pick_best(points, "val/loss")
    assert (best["layernorm"].lr, best["layernorm"].value) == (1e-4, 1.0)

    def run(lr, value, i):
        return report.Run(f"r{i}", "tiny", "layernorm", lr, "", "all", "CLIP (hf_clip)", i, {"val/loss": value}, "0")

    assert report.best([run(1e-3, 3.0, 0), run(1e-4, 1.0, 1)], "val/loss")[0].lr == 1e-4
