"""`make family` (experiments/families.mk): the paper's question on a native family, runnable on a
user's local checkpoint and data. Fast: the target's plan (`make -n`) at both scales, the one-line
refusal without a checkpoint, and every `conf/families/<family>.yaml` planning 4 strategies x lrs x
seeds on a tiny checkpoint of its family. Slow: `make family SCALE=tiny` end to end."""
from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from tests.conftest import ROOT

FAMILIES = ("qwen2_5_vl", "qwen2_vl", "idefics3", "llava_onevision", "gemma3")
STRATEGIES = ["layernorm", "layernorm_simple", "lora", "finetune"]


def make(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # -o: never (re)build the shared virtualenv from a test
    return subprocess.run(["make", "-s", "-C", str(ROOT), "-o", ".venv/.installed", *args],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=1800)


def commands(plan: str, module: str) -> list[list[str]]:
    """The argv of every `python -m <module>` line in a `make -n` plan (continuations joined)."""
    text = plan.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        for part in line.split(";"):
            words = shlex.split(part.replace("|| fail=1", "").replace("fail=0", ""))
            if "-m" in words and words[words.index("-m") + 1] == module:
                out.append(words[words.index("-m") + 2:])
    return out


def flag(argv: list[str], name: str) -> list[str]:
    """The values after `--name` up to the next flag."""
    i = argv.index(name) + 1
    vals = []
    while i < len(argv) and not argv[i].startswith("--") and "=" not in argv[i]:
        vals.append(argv[i])
        i += 1
    return vals


def overrides(argv: list[str]) -> list[str]:
    return [a for a in argv if "=" in a and not a.startswith("--")]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "gemma3"])
def test_tiny_plan_writes_a_tiny_checkpoint_and_runs_the_paper_comparison(family):
    proc = make("-n", "family", "SCALE=tiny", f"FAMILY={family}", "XP_OUT=/tmp/xp")
    assert proc.returncode == 0, proc.stderr
    assert f"-m mmln.model.families.tiny {family} /tmp/xp/family-tiny/{family}" in proc.stdout
    assert "-m mmln.data synth --out /tmp/xp/family-tiny/data" in proc.stdout
    (sweep,) = commands(proc.stdout, "mmln.sweep")
    (report,) = commands(proc.stdout, "mmln.report")
    assert flag(sweep, "--config") == [f"conf/families/{family}.yaml"] == flag(report, "--config")
    assert flag(sweep, "--search") == ["halving"] and flag(sweep, "--proxy-metric") == ["val/loss"]
    assert flag(sweep, "--strategies") == STRATEGIES and flag(sweep, "--seeds") == ["2"]
    assert flag(sweep, "--lrs") == ["1e-2", "1e-3", "1e-4"]
    assert flag(sweep, "--select-metric") == flag(report, "--select-metric") == ["eval/pope_random_accuracy"]
    assert flag(report, "--tables") == ["table1,paired,tableA1"] and flag(report, "--out") == [f"/tmp/xp/family-{family}"]
    # the report reads the runs with exactly the overrides they were trained with
    assert overrides(sweep) == overrides(report) and f"model.init_from=/tmp/xp/family-tiny/{family}" in overrides(sweep)
    assert f"tracking.experiment=family_{family}_tiny" in overrides(sweep)


def test_full_plan_uses_the_users_checkpoint_and_data():
    proc = make("-n", "family", "FAMILY=qwen2_5_vl", "CKPT=/models/Qwen2.5-VL-7B-Instruct", "DATA=/data/r.json",
                "IMAGES=/data/img", "VAL=/data/v.json", "SEEDS=3", "LRS=1e-4 2e-5")
    assert proc.returncode == 0, proc.stderr
    (sweep,) = commands(proc.stdout, "mmln.sweep")
    assert "-m mmln.model.families.tiny" not in proc.stdout and "mmln.data synth" not in proc.stdout
    assert {"model.init_from=/models/Qwen2.5-VL-7B-Instruct", "data.train.files=[/data/r.json]",
            "data.train.image_folder=/data/img", "data.val.files=[/data/v.json]"} <= set(overrides(sweep))
    assert flag(sweep, "--seeds") == ["3"] and flag(sweep, "--lrs") == ["1e-4", "2e-5"]
    assert flag(sweep, "--proxy-metric") == ["val/loss"] and flag(sweep, "--final-bench") == ["mme,pope,vqav2,coco"]
    assert flag(sweep, "--select-metric") == ["eval/flickr30k_cider"]
    # no held-out records: the proxy is the selection metric on a fixed 200-question subset
    proc = make("-n", "family", "FAMILY=gemma3", "CKPT=/m", "DATA=/d.json", "BENCH=pope",
                "SELECT=eval/pope_random_accuracy")
    (sweep,) = commands(proc.stdout, "mmln.sweep")
    assert flag(sweep, "--proxy-bench") == ["pope"] and flag(sweep, "--proxy-metric") == ["eval/pope_random_accuracy"]
    assert sweep[sweep.index("--proxy-overrides") + 1] == "eval.limit=200"


def test_without_a_checkpoint_the_target_says_what_to_set():
    proc = make("family", "FAMILY=gemma3")
    ours = [line for line in proc.stderr.splitlines() if line.startswith("make family:")]
    assert proc.returncode != 0 and len(ours) == 1 and "CKPT=" in ours[0] and "DATA=" in ours[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_config_plans_the_comparison_on_its_family(family, tmp_path):
    from mmln.config import load_config
    from mmln.families import native_family
    from mmln.model.families.tiny import write_tiny
    from mmln.sweeps.plan import plan

    d = write_tiny(family, tmp_path / family)
    conf = ROOT / "conf" / "families" / f"{family}.yaml"
    cfg = load_config(conf, [f"model.init_from={d}"])
    assert native_family(cfg.model).name == family and cfg.tracking.experiment == f"family_{family}"
    points = plan(str(conf), STRATEGIES, [1e-3], [f"model.init_from={d}"], seeds=[42, 43])
    assert len(points) == 8 and {p.strategy for p in points} == set(STRATEGIES)
    assert {p.cfg.tune.strategy for p in points} == set(STRATEGIES)


@pytest.mark.slow
def test_family_target_at_tiny_scale_answers_the_question(tmp_path):
    """SmolVLM (Idefics3), tiny: 4 strategies x 3 lrs x 2 seeds by successive halving, POPE at the
    survivors, the report with Table 1, the lr table and the paired tests."""
    env = {"PYTHONPATH": str(ROOT), "MMLN_QUIET": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    proc = make("family", "SCALE=tiny", "FAMILY=idefics3", f"XP_OUT={tmp_path}", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (tmp_path / "family-idefics3" / "report.md").read_text()
    for s in STRATEGIES:
        assert f"| idefics3 | {s} |" in md
    assert "Paired tests" in md and "Table A1" in md
    paired = (tmp_path / "family-idefics3" / "paired.csv").read_text().splitlines()
    assert len(paired) > 1
