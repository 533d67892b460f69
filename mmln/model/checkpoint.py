"""Trainable-only checkpoints: write them atomically, read them back strictly."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mmln.io import atomic_path


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
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
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
    with torch.no_grad():
        for n in expected:
            params[n].copy_(state[n].to(params[n].dtype))
