"""Vision-language connector (LLaVA `mm_projector`) and LLaVA's `mm_projector.bin` interop.

`linear` is LLaVA v1's single `nn.Linear(vision_dim, llm_hidden)` with bias; `mlp2x_gelu` is
LLaVA-1.5's Linear-GELU-Linear. Parameter names match LLaVA's after the `model.mm_projector.`
prefix (`weight`/`bias`, or `0.weight`, `2.weight`, ...), so import/export is a key rename.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmln.base.io import atomic_path

LLAVA_PREFIX = "model.mm_projector."


def build_connector(kind: str, vision_dim: int, llm_dim: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(vision_dim, llm_dim)
    if kind == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))
    raise ValueError(f"model.connector.type={kind!r}: use 'linear' or 'mlp2x_gelu'")


def save_mm_projector(connector: nn.Module, path: str | Path) -> Path:
    """Write LLaVA's stage-1 format: {'model.mm_projector.<name>': tensor}; atomic."""
    state = {LLAVA_PREFIX + k: v.detach().cpu().clone() for k, v in connector.state_dict().items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: the same bytes whatever tmp's name
        torch.save(state, f)
    return Path(path)


def connector_state_from_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Connector weights from LLaVA's mm_projector.bin, this project's trainable.safetensors or a .ckpt.

    Returns keys relative to the connector module (`weight`, `bias`, `0.weight`, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model.connector.path: '{path}' not found. Point it at a stage-1 output: "
            "LLaVA's mm_projector.bin, or this project's trainable.safetensors / checkpoints/last.ckpt"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        from mmln.model.checkpoint import torch_load

        state = torch_load(path, "model.connector.path")
        if isinstance(state, dict) and "state_dict" in state:  # a Lightning checkpoint
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"model.connector.path: '{path}' holds a {type(state).__name__}, not a dict of tensors")
    out = {}
    for key, value in state.items():
        for prefix in (LLAVA_PREFIX, "mm_projector.", "model.connector.", "connector."):
            if key.startswith(prefix):
                out[key[len(prefix):]] = value
                break
    if not out:
        raise ValueError(
            f"model.connector.path: no connector weights in '{path}' (looked for keys starting with "
            f"'{LLAVA_PREFIX}' or 'connector.'; found e.g. {list(state)[:3]})"
        )
    return out


def load_connector(connector: nn.Module, path: str | Path) -> None:
    state = connector_state_from_file(path)
    expected = connector.state_dict()
    if set(state) != set(expected):
        raise ValueError(
            f"model.connector.path '{path}' holds {sorted(state)} but a "
            f"{type(connector).__name__} connector needs {sorted(expected)}: check model.connector.type"
        )
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise ValueError(
                f"model.connector.path '{path}': '{k}' has shape {tuple(v.shape)}, the model needs "
                f"{tuple(expected[k].shape)} (vision dim x LLM hidden): was it trained for another model?"
            )
    connector.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
