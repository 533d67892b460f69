"""Trainable-only checkpoints: write them atomically, read them back strictly and safely.

Every torch-format file mmln reads goes through `torch_load`: `weights_only=True`, so a pickle
that would run code (a `__reduce__` calling `os.system`, say) is refused before anything runs.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mmln.base.io import atomic_path
from mmln.model.errors import CheckpointError

CONVERT_HINT = "ask its source for the weights as a .safetensors file (plain tensors, no code)"


def torch_load(path: str | Path, what: str = "checkpoint") -> Any:
    """`torch.load(path, weights_only=True)` on CPU; a refused or damaged file is a one-line
    CheckpointError naming it and what to do."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"unsupported GLOBAL (\S+)", str(e))
        if found:
            raise CheckpointError(
                f"{what} '{path}' was refused: loading it would run code ({found.group(1)}), which mmln never "
                "does. " + ("mmln's own checkpoints never need that: resume from another one" if what.startswith("resume")
                            else CONVERT_HINT)) from None
        raise damaged_checkpoint(path, what, "not a torch checkpoint") from None
    except FileNotFoundError:
        raise
    except Exception as e:  # damaged bytes surface as RuntimeError, EOFError, IndexError, KeyError, UnicodeDecodeError, ...
        raise damaged_checkpoint(path, what, (str(e).splitlines() or [type(e).__name__])[0][:120] or "empty file") from None


def damaged_checkpoint(path: Path, what: str, why: str) -> CheckpointError:
    return CheckpointError(f"{what} '{path}' is damaged or not a torch checkpoint ({why}): delete it to start "
                           "over, or point resume= at an older checkpoint")


def trainable_state(mllm) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in mllm.named_parameters() if p.requires_grad}


def save_trainable(mllm, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        save_file(trainable_state(mllm), str(tmp), metadata={"format": "mmln-trainable"})
    return Path(path)


def read_trainable(path: str | Path) -> dict[str, torch.Tensor]:
    """From trainable.safetensors, or a Lightning .ckpt of this project (keys prefixed `mllm.`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' not found (expected trainable.safetensors or a .ckpt)")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    ckpt = torch_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise damaged_checkpoint(path, "checkpoint", "no 'state_dict' in it")
    state = ckpt["state_dict"]
    return {k.removeprefix("mllm."): v for k, v in state.items()}


def load_trainable(mllm, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load exactly the model's trainable tensors; any missing or unexpected key is an error."""
    params = dict(mllm.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match the configured strategy: missing {missing[:5]} "
            f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}). Use the tune.* settings "
            "the checkpoint was trained with (see config.yaml beside it)."
        )
    shapes = [n for n in sorted(expected) if tuple(state[n].shape) != tuple(params[n].shape)]
    if shapes:
        n = shapes[0]
        got, want = tuple(state[n].shape), tuple(params[n].shape)
        rank = _adapter_rank(n, got, want)
        raise ValueError(
            f"{source} does not match the configured model: {n} has shape {got} in the checkpoint but {want} in the "
            f"model the config builds ({len(shapes)} such tensors){rank}. Use the tune.* / model.* settings the "
            "checkpoint was trained with (see config.yaml beside it)."
        )
    with torch.no_grad():
        for n in expected:
            params[n].copy_(state[n].to(params[n].dtype))


def _adapter_rank(name: str, got: tuple, want: tuple) -> str:
    """", LoRA rank 8 in the checkpoint vs tune.lora.r=4" for a LoRA / VeRA rank mismatch, else ""."""
    axis = 0 if ".lora_A." in name or "vera_lambda_d" in name else 1 if ".lora_B." in name else None
    if axis is None or len(got) != len(want) or len(got) <= axis:
        return ""
    key = "tune.vera.r" if "vera_" in name else "tune.lora.r"
    return f"; its rank is {got[axis]} in the checkpoint, {key}={want[axis]} in the config"
