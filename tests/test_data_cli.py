"""`python -m mmln.data synth|check|inspect` on synthetic data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_data_helpers import synth_data, tok_dirs  # noqa: F401  (fixtures)

from mmln.data.__main__ import main

ROOT = Path(__file__).resolve().parent.parent


def args(tok_dir, files, folder, *extra):
    return [f"model.llm.tokenizer={tok_dir}", f"data.train.files=[{','.join(map(str, files))}]",
            f"data.train.image_folder={folder}", "model.vision.image_size=64", "model.max_length=512", *extra]


def test_check_passes_on_synth(synth_data, tok_dirs, capsys):
    rc = main(["check", "--workers", "0", *args(tok_dirs[True], [synth_data["cc3m_chat"]], synth_data["cc3m_images"],
                                                 "data.template=plain")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "train: 24 records" in out and "24 ok, 0 bad" in out and "check: OK" in out
    rc = main(["check", "--workers", "0", *args(tok_dirs[False], [synth_data["instruct_80k"]],
                                                 synth_data["coco_train2017"], "data.val_fraction=0.2")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "train:" in out and "val:" in out and "template=vicuna_v1" in out and " 0 bad" in out


def test_check_fails_on_bad_samples_and_lists_them(synth_data, tok_dirs, capsys):
    bad = synth_data["bad_samples"]
    rc = main(["check", "--workers", "2", "--show", "5", *args(tok_dirs[True], [bad], bad.parent / "images")])
    out = capsys.readouterr().out
    assert rc == 1
    recs = json.loads(bad.read_text())
    n_bad = sum(r["id"].startswith("bad_") for r in recs)
    assert f"{len(recs) - n_bad} ok, {n_bad} bad" in out and "check: FAILED" in out
    for reason in ("missing_image", "corrupt_image", "truncated_image", "malformed", "no_assistant",
                   "missing_image_token", "repeated_image_token"):
        assert f"  {reason}: " in out
    for r in recs:
        assert (r["id"] in out) == r["id"].startswith("bad_")


def test_check_reports_over_length_samples(synth_data, tok_dirs, capsys):
    rc = main(["check", "--workers", "0", *args(tok_dirs[True], [synth_data["instruct_80k"]],
                                                 synth_data["coco_train2017"], "model.max_length=60")])
    out = capsys.readouterr().out
    assert rc == 1 and "no_supervised_tokens: " in out


def test_inspect_json(synth_data, tok_dirs, capsys):
    rc = main(["inspect", "--index", "1", "--json", *args(tok_dirs[True], [synth_data["cc3m_chat"]],
                                                           synth_data["cc3m_images"], "data.template=plain")])
    assert rc == 0
    got = json.loads(capsys.readouterr().out)
    rec = json.loads(synth_data["cc3m_chat"].read_text())[1]
    assert set(got) == {"id", "input_ids", "labels", "supervised_text"} and got["id"] == rec["id"]
    assert got["supervised_text"] == rec["conversations"][1]["value"] + "\n"
    assert got["input_ids"][:2] == [1, -200] and got["labels"][:2] == [-100, -100]
    assert len(got["input_ids"]) == len(got["labels"]) and all(x != -100 for x in got["labels"][2:])


def test_inspect_table(synth_data, tok_dirs, capsys):
    rc = main(["inspect", "--index", "0", *args(tok_dirs[False], [synth_data["instruct_80k"]],
                                                 synth_data["coco_train2017"])])
    out = capsys.readouterr().out
    assert rc == 0
    assert "<image: 1 slot -> 16 positions>" in out and " * " in out and "supervised text:" in out
    assert "'</s>'" in out


def test_usage_errors_exit_2(synth_data, tmp_path, capsys):
    rc = main(["check", f"data.train.files=[{synth_data['cc3m_chat']}]"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.llm.tokenizer" in err and "tokenizer files" in err
    rc = main(["check", f"model.llm.path={tmp_path / 'missing'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.llm.path" in err and "not a directory" in err
    rc = main(["inspect", "--index", "0", "data.trian.files=[x]"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown config key 'data.trian'" in err and "Traceback" not in err
    rc = main(["check", "--config", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err
    assert rc == 2 and "config file not found" in err


def test_synth_subcommand_and_module_entry(tmp_path, tok_dirs):
    out = tmp_path / "s"
    assert main(["synth", "--out", str(out), "--n-pretrain", "3", "--n-instruct", "3", "--n-mme-per-subtask", "1",
                 "--n-pope-images", "1", "--n-vqa-images", "1", "--n-caption-images", "1"]) == 0
    assert (out / "cc3m" / "chat.json").is_file()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "mmln.data", "check", "--workers", "0",
                        *args(tok_dirs[True], [out / "cc3m" / "chat.json"], out / "cc3m" / "images",
                              "data.template=plain")],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "3 ok, 0 bad" in p.stdout
