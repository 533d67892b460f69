"""What mmln needs to know about a checkpoint directory, read as data from its `config.json`: what
kind of model it is (`model_type`, `describe_dir`) and, for `model.init_from`, the `model.*` fields
it implies (`model_fields`: image size, patch, feature layer and selection, connector type, LLM
shape). JSON only: no torch, no loader. The config reads checkpoints through this module, and the
loaders (`mmln.formats`) use it too; it imports nothing above the config.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmln.model.errors import WeightsMismatchError

# config.json model_type -> (what it is, the key that loads it)
KINDS = {
    "llava": ("a llava-hf checkpoint (LlavaForConditionalGeneration)", "model.init_from"),
    "llava_llama": ("an original LLaVA checkpoint (LlavaLlamaForCausalLM)", "model.init_from"),
    "clip": ("a CLIP model (text + vision)", "model.vision.path"),
    "clip_vision_model": ("a CLIP vision tower", "model.vision.path"),
}


def model_type(path: str | Path) -> str | None:
    f = Path(path) / "config.json"
    try:
        return json.loads(f.read_text()).get("model_type") if f.is_file() else None
    except (OSError, ValueError):
        return None


def describe_dir(path: str | Path) -> str:
    """What a weights directory looks like, e.g. "this is a llava-hf checkpoint ...: use model.init_from"."""
    p = Path(path)
    if not p.exists():
        return f"'{p}' does not exist"
    kind = model_type(p)
    if kind in KINDS:
        what, key = KINDS[kind]
        return f"this is {what}: use {key}={p}"
    if kind:
        return f"this is a '{kind}' checkpoint (config.json model_type)"
    files = sorted(x.name for x in p.iterdir())[:8] if p.is_dir() else [p.name]
    return f"it holds {files}"


KEY = "model.init_from"


def read_config(path: str | Path) -> dict:
    f = Path(path) / "config.json"
    if not f.is_file():
        raise WeightsMismatchError(f"{KEY}={path}: no config.json there ({describe_dir(path)})", KEY, str(path))
    return json.loads(f.read_text())


def model_fields(path: str | Path, vision_path: str | None = None) -> dict[str, Any]:
    """Nested `model.*` overrides for a config whose `model.init_from` is `path`."""
    c = read_config(path)
    kind = c.get("model_type")
    if kind == "llava":
        v, t = c.get("vision_config") or {}, c.get("text_config") or {}
        act = c.get("projector_hidden_act", "gelu")
        if act not in ("gelu", "linear"):
            raise WeightsMismatchError(f"{KEY}={path}: projector_hidden_act={act!r}; mmln's connectors are "
                                       "mlp2x_gelu (gelu) and linear", KEY, str(path))
        layer = c.get("vision_feature_layer", -2)
        if not isinstance(layer, int):
            raise WeightsMismatchError(f"{KEY}={path}: vision_feature_layer={layer} (several layers) is not "
                                       "supported; mmln selects one layer", KEY, str(path))
        vision = {"backend": "hf_clip", "path": None, "select_layer": layer,  # the tower is in the checkpoint
                  "select_feature": "patch" if c.get("vision_feature_select_strategy", "default") == "default"
                  else "cls_patch", **_vision_fields(v)}
        llm = {"arch": t.get("model_type", "llama"), **_llm_fields(t)}
        connector = {"type": "mlp2x_gelu" if act == "gelu" else "linear", "path": None}
    elif kind == "llava_llama":
        vision = {"backend": "hf_clip", "select_layer": c.get("mm_vision_select_layer", -2),
                  "select_feature": c.get("mm_vision_select_feature", "patch")}
        if vision_path and (Path(vision_path) / "config.json").is_file():
            vc = json.loads((Path(vision_path) / "config.json").read_text())
            vision |= _vision_fields(vc.get("vision_config", vc))
        ptype = c.get("mm_projector_type", "linear")
        if ptype not in ("linear", "mlp2x_gelu"):
            raise WeightsMismatchError(f"{KEY}={path}: mm_projector_type={ptype!r}; mmln has linear and mlp2x_gelu",
                                       KEY, str(path))
        llm = {"arch": "llama", **_llm_fields(c)}
        connector = {"type": ptype, "path": None}
    else:
        from mmln.families import family_for_model_type, supported_model_types

        if family_for_model_type(kind) is None:
            raise WeightsMismatchError(f"{KEY}={path}: expected a checkpoint of a supported model family (model "
                                       f"types: {', '.join(supported_model_types())}), but {describe_dir(path)}",
                                       KEY, str(path))
        return {"llm": {"path": None}}  # a native VLM (mmln.families): its config.json is the architecture
    llm |= {"path": None}
    return {"vision": vision, "connector": connector, "llm": llm}


def _vision_fields(v: dict) -> dict:
    names = {"image_size": "image_size", "patch_size": "patch_size", "hidden_size": "hidden_size",
             "intermediate_size": "intermediate_size", "num_hidden_layers": "num_layers",
             "num_attention_heads": "num_heads"}
    return {ours: v[theirs] for theirs, ours in names.items() if theirs in v}


def _llm_fields(t: dict) -> dict:
    names = {"hidden_size": "hidden_size", "intermediate_size": "intermediate_size",
             "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
             "num_key_value_heads": "num_kv_heads", "vocab_size": "vocab_size",
             "max_position_embeddings": "max_position_embeddings", "rms_norm_eps": "rms_norm_eps",
             "tie_word_embeddings": "tie_word_embeddings"}
    return {ours: t[theirs] for theirs, ours in names.items() if theirs in t}
