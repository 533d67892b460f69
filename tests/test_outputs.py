"""Exports never touch what is not theirs (issue 22, item 1): refusal before a byte is written, a
manifest written last, a whole-folder swap that survives kill -9 at every filesystem step, leftovers
cleaned, loaders that refuse an export whose files do not match its manifest, the user's umask."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from mmln.export import export
from mmln.export import main as export_main
from mmln.model.checkpoint import save_trainable
from mmln.base.outputs import MANIFEST, OutputError, read_manifest, verify
from tests.conftest import TINY, tiny_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny tokenizer and two different "trained" checkpoints A and B of one layernorm config."""
    from mmln.run.build import build_model
    from mmln.data.tokenizer import train_tiny_tokenizer

    tmp = tmp_path_factory.mktemp("outputs")
    tok = train_tiny_tokenizer([f"a red circle number {i} on the left ." for i in range(200)], tmp / "tok",
                               vocab_size=320)
    overrides = [f"model.llm.tokenizer={tok}", "model.llm.vocab_size=320"]
    ckpts = []
    for seed in (1, 2):
        m = build_model(tiny_config(*overrides))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=g) * 0.05)
        ckpts.append(str(save_trainable(m, tmp / f"ckpt{seed}" / "trainable.safetensors")))
    return overrides, ckpts


def one_line(err: str) -> str:
    lines = [ln for ln in err.replace("\r", "\n").splitlines()  # progress bars and MLflow's store INFO: no errors
             if ln.strip() and "it/s]" not in ln and " INFO mlflow" not in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"", p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("fmt", ["llava", "hf-llava"])
def test_a_folder_mmln_did_not_write_is_refused_before_a_byte_is_written(world, tmp_path, monkeypatch, capsys, fmt):
    overrides, (ckpt, _) = world
    checkout = tmp_path / "checkout"  # `--out .` in a user's checkout
    (checkout / ".git").mkdir(parents=True)
    (checkout / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (checkout / "train.py").write_text("print('my work')\n")
    before, around = snapshot(checkout), sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.chdir(checkout)
    for out in (".", str(checkout), "train.py"):
        assert export_main(["--config", str(TINY), "--ckpt", ckpt, "--out", out, "--format", fmt, *overrides]) == 2
        line = one_line(capsys.readouterr().err)
        assert "mmln did not write" in line or "is not a folder" in line, line
    assert snapshot(checkout) == before and sorted(p.name for p in tmp_path.iterdir()) == around
    # an export of the other format is not replaced either
    other = "hf-llava" if fmt == "llava" else "llava"
    export(tiny_config(*overrides), ckpt, tmp_path / "other", other)
    kept, _ = snapshot(tmp_path / "other"), capsys.readouterr()
    assert export_main(["--config", str(TINY), "--ckpt", ckpt, "--out", str(tmp_path / "other"),
                        "--format", fmt, *overrides]) == 2
    assert f"'{other}' output, not '{fmt}'" in one_line(capsys.readouterr().err)
    assert snapshot(tmp_path / "other") == kept


def test_re_export_replaces_its_own_export_whole_with_the_users_umask(world, tmp_path):
    overrides, (a, b) = world
    cfg = tiny_config(*overrides)
    old_mask = os.umask(0o022)
    try:
        out = export(cfg, a, tmp_path / "exp")
        first = read_manifest(out)
        assert first["kind"] == "llava" and "mm_projector.bin" in first["files"] and "llm/config.json" in first["files"]
        export(cfg, b, tmp_path / "exp")  # the same folder: replaced as a whole
    finally:
        os.umask(old_mask)
    second = verify(out, "llava")
    assert second["files"]["mm_projector.bin"]["sha256"] != first["files"]["mm_projector.bin"]["sha256"]
    modes = {p.relative_to(out): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert set(modes.values()) == {0o644, 0o755}, modes
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # nothing left beside it
    # a user's file added into an earlier export: it is no longer mmln's to replace
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt is not in the manifest"):
        export(cfg, a, out)
    assert (out / "notes.txt").read_text() == "mine"


def test_loaders_refuse_an_export_whose_files_do_not_match_its_manifest(world, tiny_world, tmp_path, capsys):
    import mmln
    from mmln.evaluate import main as evaluate_main

    overrides, (a, b) = world
    out = export(tiny_config(*overrides), a, tmp_path / "exp")
    mmln.load(out / "config.yaml")  # whole: loads
    other = export(tiny_config(*overrides), b, tmp_path / "exp_b")
    (out / "mm_projector.bin").write_bytes((other / "mm_projector.bin").read_bytes())  # a mixed export, same size
    with pytest.raises(OutputError, match="mm_projector.bin has other contents"):
        mmln.load(out / "config.yaml")
    capsys.readouterr()
    paths = tiny_world[1]
    pope = ",".join(str(paths[f"pope_{s}"]) for s in ("random", "popular", "adversarial"))
    assert evaluate_main(["--config", str(out / "config.yaml"), "--ckpt", "none", "--bench", "pope",
                          f"eval.pope_files=[{pope}]", f"eval.pope_images={paths['coco_val2014']}"]) == 2
    assert "do not match its mmln-manifest.json" in one_line(capsys.readouterr().err)
    (out / MANIFEST).unlink()  # no manifest: a half copy, or not mmln's
    with pytest.raises(OutputError, match=f"without {MANIFEST}"):
        mmln.load(out / "config.yaml")


def test_hf_llava_exports_are_verified_and_third_party_llava_hf_dirs_still_load(world, tmp_path):
    from mmln.model import build_mllm

    overrides, (a, _) = world
    out = export(tiny_config(*overrides), a, tmp_path / "hf", "hf-llava")
    cfg = tiny_config(*overrides, f"model.init_from={out}")
    build_mllm(cfg.model)
    cfg_json = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg_json, "note": "edited"}))
    with pytest.raises(OutputError, match="config.json has"):
        build_mllm(cfg.model)
    (out / MANIFEST).unlink()  # now it is any llava-hf directory, e.g. one from the hub: loaded as it is
    build_mllm(tiny_config(*overrides, f"model.init_from={out}").model)


def _mutations_hook(kill_at: int, counter: list[int]):
    """An audit hook that kill -9s this process at its `kill_at`-th filesystem mutation (open for
    writing, mkdir, rename/replace, remove, rmdir, rmtree, chmod, and the ctypes call of renameat2)."""
    names = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "shutil.rmtree", "os.chmod",
             "ctypes.call_function"}

    def hook(event, args):
        if event == "open":
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            if not ((isinstance(mode, str) and any(c in mode for c in "wax+"))
                    or (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))):
                return
        elif event not in names:
            return
        counter[0] += 1
        if counter[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return hook


def _child(cfg, ckpt: str, out: Path, kill_at: int, fmt: str, conn) -> None:
    counter = [0]
    sys.addaudithook(_mutations_hook(kill_at, counter))
    export(cfg, ckpt, out, fmt)
    conn.send(counter[0])


def _export_in_child(cfg, ckpt: str, out: Path, kill_at: int, fmt: str) -> tuple[int, int]:
    """Export in a child process with the kill hook; (exit code, its count of mutations). The child
    comes from a forkserver (a clean single-threaded process with torch and mmln preloaded), not a
    fork of pytest: a fork of a process whose OpenMP / library threads hold a lock can hang forever."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "mmln.export", "tests.test_outputs"])
    r, w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(cfg, ckpt, out, kill_at, fmt, w))
    proc.start()
    w.close()
    proc.join(timeout=300)
    assert proc.exitcode is not None, f"the export child hung (kill_at={kill_at})"
    count = r.recv() if proc.exitcode == 0 and r.poll() else 0
    return proc.exitcode, count


def _state(out: Path, old: dict, new: dict) -> str:
    m = read_manifest(out)
    assert m is not None, f"{out}: no manifest: a half export is at the user's path"
    verify(out)
    assert m["files"] in (old["files"], new["files"]), "a mix of the old and new export"
    return "old" if m["files"] == old["files"] else "new"


@pytest.mark.parametrize("fmt,every", [("llava", False), ("hf-llava", False),
                                       pytest.param("llava", True, marks=pytest.mark.slow),
                                       pytest.param("hf-llava", True, marks=pytest.mark.slow)])
def test_kill_9_during_a_re_export_leaves_the_old_or_the_new_export_whole(world, tmp_path, fmt, every):
    """A real SIGKILL at the re-export's k-th filesystem mutation (children of a forkserver): at every k
    (slow, about 2 min per format on a loaded machine), or at 8 seeded ones plus the last 4 (the swap)."""
    import random

    overrides, (a, b) = world
    cfg = tiny_config(*overrides)
    out = tmp_path / "exp"
    assert _export_in_child(cfg, b, out, 0, fmt)[0] == 0  # uninterrupted: the new export's manifest
    new = read_manifest(out)
    status, total = _export_in_child(cfg, a, out, 0, fmt)  # and the old one's; count the steps of a re-export
    assert status == 0 and total > 10, (status, total)
    old = read_manifest(out)
    assert old["files"] != new["files"]
    seen = set()
    steps = range(1, total + 1)
    if not every:
        steps = sorted(set(random.Random(fmt).sample(steps, 8)) | set(steps[-4:]))
    for k in steps:
        status, _ = _export_in_child(cfg, b, out, k, fmt)
        assert status == -signal.SIGKILL, (k, status)
        seen.add(_state(out, old, new))
        if seen == {"new"}:  # the swap happened: export A again to test the next step against an old A
            assert _export_in_child(cfg, a, out, 0, fmt)[0] == 0
            seen = {"old"}
    # the next export into that folder removes whatever the kills left beside it, and succeeds
    assert _export_in_child(cfg, b, out, 0, fmt)[0] == 0
    assert _state(out, old, new) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


def test_leftovers_of_a_killed_export_are_removed_by_the_next_one(world, tmp_path):
    overrides, (a, _) = world
    dead = tmp_path / ".exp.mmln-999999999.tmp"  # no such pid: its export was killed
    (dead / "llm").mkdir(parents=True)
    (dead / "llm" / "model.safetensors").write_bytes(b"\0" * 1000)
    alive = tmp_path / f".exp.mmln-{os.getppid()}.tmp"  # a live process's export in progress: left alone
    alive.mkdir()
    export(tiny_config(*overrides), a, tmp_path / "exp")
    assert not dead.exists() and alive.is_dir()


def test_peft_adapter_folders_carry_a_manifest_and_refuse_a_foreign_folder(tmp_path):
    from mmln.run.build import build_model
    from mmln.formats.peft_adapter import export_peft_adapter

    cfg = tiny_config("tune.strategy=lora", "tune.lora.r=4")
    m = build_model(cfg)
    out = export_peft_adapter(m, cfg, tmp_path)
    assert verify(out, "peft-adapter")["files"].keys() >= {"adapter_config.json", "adapter_model.safetensors"}
    assert export_peft_adapter(m, cfg, tmp_path) == out  # its own: replaced
    foreign = tmp_path / "lora_adapter"
    (foreign / MANIFEST).unlink()
    (foreign / "mine.txt").write_text("x")
    with pytest.raises(OutputError, match="mmln did not write"):
        export_peft_adapter(m, cfg, tmp_path)
    assert (foreign / "mine.txt").read_text() == "x"


def test_evaluate_and_report_refuse_a_folder_mmln_did_not_write(tmp_path, capsys):
    from mlflow import MlflowClient

    from mmln.evaluate import main as evaluate_main
    from mmln.report import main as report_main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = snapshot(mine)
    assert evaluate_main(["--config", str(TINY), "--ckpt", "none", "--bench", "pope", "--out", str(mine)]) == 2
    assert "mmln did not write" in one_line(capsys.readouterr().err)
    assert report_main(["--experiment", "x", "--out", str(mine), "--no-log"]) == 2
    assert "mmln did not write" in one_line(capsys.readouterr().err)
    assert snapshot(mine) == before
    # a report into a new folder carries a manifest, and the next report replaces it whole
    MlflowClient().create_experiment("empty")
    for _ in range(2):
        assert report_main(["--experiment", "empty", "--out", str(tmp_path / "rep"), "--no-log"]) == 0
        assert "report.md" in verify(tmp_path / "rep", "report")["files"]
    capsys.readouterr()
    # an evaluation never writes into a finished mmln output (its manifest would stop matching)
    assert evaluate_main(["--config", str(TINY), "--ckpt", "none", "--bench", "pope", "--out",
                          str(tmp_path / "rep")]) == 2
    assert "is a finished mmln output" in one_line(capsys.readouterr().err)


def test_a_kill_between_the_two_renames_of_the_fallback_swap_is_repaired_by_the_next_write(tmp_path):
    """Where renameat2 cannot exchange, the old folder is moved to `.<name>.mmln-old` first; a kill
    right then leaves no `out`: the next `replacing` puts the old one back, checks it, and replaces it."""
    from mmln.base.outputs import replacing

    out = tmp_path / "rep"
    with replacing(out, "report") as tmp:
        (tmp / "report.md").write_text("old")
    os.replace(out, tmp_path / ".rep.mmln-old")  # the state a kill after the first rename leaves
    with replacing(out, "report") as tmp:
        assert (out / "report.md").read_text() == "old" and verify(out, "report")  # restored before the swap
        (tmp / "report.md").write_text("new")
    assert (out / "report.md").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["rep"]
