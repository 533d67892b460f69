"""Checkpoints from a stranger (issue 22, item 5): every refusal on a load path is exit 2 with one line
naming the file and the key, never suggesting weights_only=False; integer / bool and NaN / Inf
weights are refused by default; no code runs."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmln.export import main as export_main
from tests.conftest import TINY, tiny_config
from tests.test_reliability import Evil


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    from mmln.model import build_mllm

    d = tmp_path_factory.mktemp("llm") / "llm"
    build_mllm(tiny_config().model).llm.save_pretrained(d)
    return d


def error_lines(err: str) -> list[str]:
    """stderr's lines, without transformers' progress bars (they are not errors)."""
    return [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "it/s]" not in ln]


def _rewrite_header(file: Path, edit) -> None:
    """Re-serialise `file` with `edit(header)` applied to its JSON header, data bytes unchanged."""
    raw = file.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    edit(header)
    new = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


def _first_weight(header: dict) -> str:
    return sorted(k for k in header if k != "__metadata__" and k.endswith("weight"))[0]


def _tensors(file: Path, change) -> None:
    state = load_file(str(file))
    change(state)
    save_file(state, str(file))


ATTACKS = {
    "auto_map": ("config.json", "auto_map", lambda d: (d / "config.json").write_text(json.dumps(
        {**json.loads((d / "config.json").read_text()), "auto_map": {"AutoModelForCausalLM": "evil.EvilModel"}}))),
    "header_longer_than_file": ("model.safetensors", "claims", lambda d: (d / "model.safetensors").write_bytes(
        struct.pack("<Q", 10**12) + (d / "model.safetensors").read_bytes()[8:])),
    "header_not_json": ("model.safetensors", "not JSON", lambda d: (d / "model.safetensors").write_bytes(
        struct.pack("<Q", 16) + b"{not json at all" + b"\0" * 64)),
    "huge_lying_shape": ("model.safetensors", "lying header", lambda d: _rewrite_header(
        d / "model.safetensors", lambda h: h[_first_weight(h)].__setitem__("shape", [1 << 40, 1 << 40]))),
    "truncated": ("model.safetensors", "truncated", lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:-4096])),
    "int8_weights": ("model.safetensors", "is I8", lambda d: _tensors(
        d / "model.safetensors", lambda s: s.update({k: s[k].to(torch.int8) for k in s if k.endswith("proj.weight")}))),
    "bool_weights": ("model.safetensors", "is BOOL", lambda d: _tensors(
        d / "model.safetensors", lambda s: s.update({k: s[k] > 0 for k in s if k.endswith("norm.weight")}))),
    "nan_weights": ("model.llm.path", "NaN/Inf", lambda d: _tensors(
        d / "model.safetensors", lambda s: s[sorted(s)[3]].view(-1).__setitem__(0, float("nan")))),
    "inf_weights": ("model.llm.path", "NaN/Inf", lambda d: _tensors(
        d / "model.safetensors", lambda s: s[sorted(s)[-1]].view(-1).__setitem__(-1, float("inf")))),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_strangers_llm_directory_is_one_line_naming_file_and_key(llm_dir, tmp_path, capsys, attack):
    import shutil

    d = tmp_path / "llm"
    shutil.copytree(llm_dir, d)
    names, needle, plant = ATTACKS[attack]
    plant(d)
    code = export_main(["--config", str(TINY), "--ckpt", "none", "--out", str(tmp_path / "out"),
                        f"model.llm.path={d}"])
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "model.llm.path" in lines[0] and names in lines[0] and needle in lines[0], lines[0]
    assert "weights_only=False" not in err and not (tmp_path / "out").exists()


def test_a_pickled_llm_weights_file_never_runs_and_never_suggests_weights_only_false(llm_dir, tmp_path, capsys):
    import shutil

    d = tmp_path / "llm"
    shutil.copytree(llm_dir, d)
    (d / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"model.embed_tokens.weight": Evil(marker)}, d / "pytorch_model.bin")
    assert export_main(["--config", str(TINY), "--ckpt", "none", "--out", str(tmp_path / "out"),
                        f"model.llm.path={d}"]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "pytorch_model.bin" in err and "would run code" in err, err
    assert "weights_only=False" not in err and not marker.exists()


@pytest.mark.parametrize("bad", ["int", "bool", "nan", "inf", "lying"])
def test_a_checkpoint_with_integer_or_non_finite_tensors_is_refused(tmp_path, capsys, bad):
    from mmln.run.build import build_model
    from mmln.model.checkpoint import save_trainable

    cfg = tiny_config()
    ckpt = save_trainable(build_model(cfg), tmp_path / "trainable.safetensors")
    key = sorted(load_file(str(ckpt)))[0]
    if bad == "lying":
        _rewrite_header(ckpt, lambda h: h[key].__setitem__("shape", [1 << 31, 1 << 31]))
    else:
        _tensors(ckpt, lambda s: s.update({key: {"int": s[key].to(torch.int32), "bool": s[key] > 0,
                                                 "nan": s[key] * float("nan"), "inf": s[key] + float("inf")}[bad]}))
    assert export_main(["--config", str(TINY), "--ckpt", str(ckpt), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "Traceback" not in err, err
    assert f"--ckpt: {ckpt}" in err and key in err and "weights_only=False" not in err, err
