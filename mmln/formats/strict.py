"""Loud loading: a load that leaves an expected weight at random init, or ignores weights it was
given, is an error naming the path, the config key, a few keys, and what the directory looks like."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from mmln.config.checkpoint import KINDS, describe_dir, model_type  # noqa: F401  (re-exported: loaders use them)
from mmln.model.errors import MissingWeightsError, WeightsMismatchError


def check_kind(path: str | Path, key: str, allowed: Iterable[str]) -> None:
    """Refuse a directory whose config.json says it is another kind of model than `key` loads."""
    kind = model_type(path)
    allowed = tuple(allowed)
    if kind is not None and kind not in allowed:
        raise WeightsMismatchError(f"{key}={path}: expected a {' or '.join(allowed)} directory, but "
                                   f"{describe_dir(path)}", key, str(path))


def mismatch(path: str | Path, key: str, missing: Iterable[str], unexpected: Iterable[str],
             shapes: Iterable[str] = ()) -> None:
    """Raise `WeightsMismatchError` when anything is missing, unused or of the wrong shape."""
    missing, unexpected, shapes = sorted(missing), sorted(unexpected), sorted(shapes)
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights the model needs are not in it (e.g. {missing[:3]}; they would stay random)")
    if unexpected:
        parts.append(f"{len(unexpected)} of its weights fit nothing in the model (e.g. {unexpected[:3]})")
    if shapes:
        parts.append(f"{len(shapes)} have another shape (e.g. {shapes[:3]})")
    raise WeightsMismatchError(f"{key}={path}: " + "; ".join(parts) + f". {describe_dir(path)}", key, str(path))


def check_loading_info(info: Mapping, path: str | Path, key: str) -> None:
    """transformers' `from_pretrained(..., output_loading_info=True)` report, made loud."""
    mismatch(path, key, info.get("missing_keys", ()), info.get("unexpected_keys", ()),
             [str(k) for k in info.get("mismatched_keys", ())])


def load_strict(module, state: Mapping, path: str | Path, key: str) -> None:
    """Copy `state` into `module`: every parameter and persistent buffer filled, every tensor used."""
    import torch

    expected = module.state_dict()
    shapes = [f"{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state.items()
              if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    mismatch(path, key, set(expected) - set(state), set(state) - set(expected), shapes)
    with torch.no_grad():
        module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def read_weights(path: str | Path, key: str) -> dict:
    """Every tensor of a Hugging Face weights directory (safetensors shards, else pytorch_model*.bin)."""
    import torch
    from safetensors.torch import load_file

    p = Path(path)
    files = sorted(p.glob("*.safetensors")) or sorted(p.glob("pytorch_model*.bin"))
    if not files:
        raise MissingWeightsError(key, str(p), "the weights (*.safetensors or pytorch_model*.bin) with config.json")
    state: dict = {}
    for f in files:
        state.update(load_file(str(f)) if f.suffix == ".safetensors"
                     else torch.load(f, map_location="cpu", weights_only=True))
    return state
