"""A real full disk (issue 22, item 7): a small tmpfs mounted for the test (root only; skipped where
mounting is not allowed). ENOSPC anywhere in export / fit / evaluate is one line, "no space left on
device while writing X", exit 2, with nothing half-written left; a resumed run that finishes clears
the failed attempt's error tags."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mmln.export import main as export_main
from tests.conftest import TINY


@pytest.fixture
def disk(tmp_path):
    """A 4 MiB tmpfs at tmp_path/disk, unmounted afterwards; fill(n) leaves about n bytes free."""
    where = tmp_path / "disk"
    where.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()[:100]}): needs root")

    def fill(leave: int) -> Path:
        import os

        st = os.statvfs(where)
        filler = where / "filler"
        filler.write_bytes(b"\0" * max(0, st.f_bfree * st.f_frsize - leave))
        return filler

    try:
        yield where, fill
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def error_lines(err: str) -> list[str]:
    """stderr without progress bars and MLflow's INFO lines about creating its store (not errors)."""
    return [ln for ln in err.replace("\r", "\n").splitlines()
            if ln.strip() and "it/s]" not in ln and " INFO mlflow" not in ln and not ln.startswith("INFO")]


def test_export_onto_a_full_disk_is_one_line_and_leaves_nothing(tiny_world, disk, capsys):
    where, fill = disk
    fill(300 << 10)  # an export of the tiny model is about 1.1 MB
    out = where / "export"
    assert export_main(["--config", str(TINY), "--ckpt", "none", "--out", str(out),
                        f"model.llm.tokenizer={tiny_world[2]}"]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"no space left on device while writing {out}" in lines[0], lines
    assert sorted(p.name for p in where.iterdir()) == ["filler"]  # no half export, no hidden .tmp


def test_evaluate_onto_a_full_disk_is_one_line(tiny_world, disk, capsys):
    from mmln.evaluate import main as evaluate_main

    where, fill = disk
    fill(0)
    root, p, tok = tiny_world
    pope = ",".join(str(p[f"pope_{s}"]) for s in ("random", "popular", "adversarial"))
    code = evaluate_main(["--config", str(TINY), "--ckpt", "none", "--bench", "pope", "--out", str(where / "eval"),
                          f"model.llm.tokenizer={tok}", "eval.max_new_tokens=2", "eval.limit=2",
                          f"eval.pope_files=[{pope}]", f"eval.pope_images={p['coco_val2014']}", "data.num_workers=0"])
    lines = error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1 and "no space left on device while writing" in lines[0], lines
    assert str(where / "eval") in lines[0]


def test_a_full_disk_at_a_checkpoint_fails_the_run_in_one_line_and_a_resume_clears_its_error(tiny_world, disk,
                                                                                          tmp_path, capsys):
    """Two tiny fits (20 s on a loaded machine): the step-4 checkpoint does not fit, the run
    is FAILED with the error; with room again the same command resumes from step 2 and finishes."""
    from tests.test_fit import stage_overrides
    from mmln.fit import main

    where, fill = disk
    filler = fill(1300 << 10)  # room for the step-2 last.ckpt (about 840 KB), not for a second one beside it
    args = ["--config", str(TINY), *stage_overrides(tiny_world, tmp_path, "instruct", f"output_dir={where}",
                                                    "run_name=full", "train.max_steps=4", "train.save_every_n_steps=2")]
    assert main(args) == 2
    lines = error_lines(capsys.readouterr().err)
    ckpt = where / "tiny_ln" / "full" / "checkpoints" / "last.ckpt"
    assert len(lines) == 1 and f"error: no space left on device while writing {ckpt}" in lines[0], lines
    run_id = (where / "tiny_ln" / "full" / "mlflow_run_id").read_text().strip()
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED" and "no space left on device" in run.data.tags["error"]
    assert not [p for p in ckpt.parent.iterdir() if p.name != "last.ckpt"]  # no half-written temp file
    filler.unlink()
    assert main(args) == 0
    run = MlflowClient().get_run(run_id)  # the same run, resumed
    assert run.info.status == "FINISHED" and "error" not in run.data.tags, run.data.tags
