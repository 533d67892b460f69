"""Help texts a newcomer reads: every option explained, the examples and defaults shown, and `make
help` listing the variables the targets take."""
from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import ROOT


def help_of(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_score_help_shows_its_examples(capsys):
    from mmln.score import main

    text = help_of(main, [], capsys)
    assert "examples:" in text and "--bench pope --answers answers.jsonl --annotations" in text


def test_every_export_option_is_explained(capsys):
    from mmln.export import main

    text = help_of(main, [], capsys)
    for opt in ("--config CONFIG", "--ckpt CKPT", "--out OUT", "overrides"):
        line = next(line for line in text.splitlines() if line.strip().startswith(opt))
        assert len(line.strip()) > len(opt) + 5, f"{opt} has no explanation:\n{text}"


def test_analyze_compare_says_it_takes_run_dirs_or_run_ids(capsys):
    from mmln.analyze import main

    assert "run directory or MLflow run id" in help_of(main, ["compare"], capsys)


def test_evaluate_help_names_the_default_benchmarks(capsys):
    from mmln.evaluate import main

    text = re.sub(r"\s+", " ", help_of(main, [], capsys))
    assert "mme,pope,vqav2,coco,flickr30k (default: all of them)" in text


def test_make_help_lists_the_variables_targets_take():
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for var in ("SCALE=", "LRS=", "MODELS=", "STRATEGIES=", "PORT=", "CONFIG="):
        assert var in out, out


@pytest.mark.parametrize("scale", ["full", "tiny"])
def test_make_report_and_the_experiments_targets_write_reports_to_one_place(scale):
    def out_of(target: str) -> str:
        cmd = subprocess.run(["make", "-n", target, f"SCALE={scale}", "STAMP="], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.replace("\\\n", " ")
        line = next(line for line in cmd.splitlines() if "mmln.report" in line)
        return re.search(r"mmln\.report .*?--out (\S+)", line).group(1)  # table1's line also evaluates the untuned model

    report, table1 = out_of("report"), out_of("table1")
    assert report.rsplit("/", 1)[0] == table1.rsplit("/", 1)[0], (report, table1)
    assert report.endswith("/report-vicuna7b_ln") and table1.endswith("/table1")
