"""`model.init_from=DIR`: start from one directory holding a whole MLLM.

- a llava-hf directory (`LlavaForConditionalGeneration`, `config.json` with `vision_config` /
  `text_config`): vision tower, connector and LLM all come from it;
- an original LLaVA checkpoint (`LlavaLlamaForCausalLM`, `model_type: llava_llama`, with
  `mm_projector_type`, `mm_vision_select_layer`, the projector inside the LLM weights as
  `model.mm_projector.*`): LLM and connector from it, the vision tower from `model.vision.path`
  (a local CLIP directory; LLaVA names it only by hub id in `mm_vision_tower`), or from the
  checkpoint itself when it holds `model.vision_tower.vision_tower.*`.

`model_fields(dir)` (JSON only, no torch; applied when the config loads) gives the `model.*`
fields the checkpoint implies: image size, patch, feature layer and selection, connector type,
LLM shape, and the tokenizer directory. `build_parts(cfg)` builds the modules from the
checkpoint's own configs and fills every weight strictly (`mmln.formats.strict`).
A llava-hf projector with activation `linear` (how mmln exports LLaVA v1's single linear
connector) is folded back into one `nn.Linear` (W2 W1, W2 b1 + b2).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmln.formats.strict import WeightsMismatchError, describe_dir, load_strict, model_type, read_weights

KEY = "model.init_from"


def _config(path: str | Path) -> dict:
    f = Path(path) / "config.json"
    if not f.is_file():
        raise WeightsMismatchError(f"{KEY}={path}: no config.json there ({describe_dir(path)})", KEY, str(path))
    return json.loads(f.read_text())


def model_fields(path: str | Path, vision_path: str | None = None) -> dict[str, Any]:
    """Nested `model.*` overrides for a config whose `model.init_from` is `path`."""
    c = _config(path)
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
        from mmln.model.families import family_for_model_type, supported_model_types

        family = family_for_model_type(kind)
        if family is None:
            raise WeightsMismatchError(f"{KEY}={path}: expected a checkpoint of a supported model family (model "
                                       f"types: {', '.join(supported_model_types())}), but {describe_dir(path)}",
                                       KEY, str(path))
        return {"llm": {"path": None}}  # a native VLM (mmln.model.families): its config.json is the architecture
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


# ---------------------------------------------------------------------------------------------- build
def build_parts(cfg, dtype):
    """(vision backbone, connector, llm) filled from `cfg.init_from`; every weight checked."""
    kind = model_type(cfg.init_from)
    if kind == "llava":
        return _llava_hf_parts(cfg, dtype)
    if kind == "llava_llama":
        return _llava_orig_parts(cfg, dtype)
    model_fields(cfg.init_from)  # raises with what the directory is
    raise AssertionError("unreachable")


def _connector_state(proj: dict, linear: bool) -> dict:
    """llava-hf projector tensors (linear_1/linear_2) -> mmln connector tensors."""
    if linear:  # activation "linear": two affine maps compose into one
        w1, b1, w2, b2 = (proj[k].float() for k in ("linear_1.weight", "linear_1.bias", "linear_2.weight",
                                                     "linear_2.bias"))
        return {"weight": w2 @ w1, "bias": w2 @ b1 + b2}
    from mmln.formats.llava_hf import PROJECTOR

    return {ours + k[len(theirs):]: v for k, v in proj.items() for theirs, ours in PROJECTOR.items()
            if k.startswith(theirs)}


def _llava_hf_parts(cfg, dtype):
    from transformers import AutoModelForCausalLM, LlavaForConditionalGeneration

    from mmln.formats.strict import check_loading_info
    from mmln.model.connector import build_connector

    path = str(cfg.init_from)
    hf, info = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype, local_files_only=True,
                                                             output_loading_info=True)
    check_loading_info(info, path, KEY)
    backbone = hf.model.vision_tower
    llm = AutoModelForCausalLM.from_config(hf.config.text_config, dtype=dtype,
                                           attn_implementation=cfg.attn_implementation)
    state = {"model." + k: v for k, v in hf.model.language_model.state_dict().items()}
    state |= {"lm_head." + k: v for k, v in hf.lm_head.state_dict().items()}
    if llm.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    load_strict(llm, state, path, KEY)
    connector = build_connector(cfg.connector.type, backbone.config.hidden_size, llm.config.hidden_size)
    load_strict(connector, _connector_state(hf.model.multi_modal_projector.state_dict(),
                                            cfg.connector.type == "linear"), path, KEY)
    return backbone, connector, llm


def _llava_orig_parts(cfg, dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from mmln.model.connector import build_connector
    from mmln.model.vision import build_vision

    path = str(cfg.init_from)
    raw = {k: v for k, v in _config(path).items() if not k.startswith("mm_") and k not in ("model_type", "architectures")}
    llm = AutoModelForCausalLM.from_config(LlamaConfig(**raw), dtype=dtype, attn_implementation=cfg.attn_implementation)
    state = read_weights(path, KEY)
    tower = {k[len("model.vision_tower.vision_tower."):]: state.pop(k) for k in list(state)
             if k.startswith("model.vision_tower.vision_tower.")}
    proj = {k[len("model.mm_projector."):]: state.pop(k) for k in list(state) if k.startswith("model.mm_projector.")}
    if not cfg.vision.path and not tower:
        raise WeightsMismatchError(
            f"{KEY}={path}: an original LLaVA checkpoint names its vision tower only by hub id; set "
            "model.vision.path to a local CLIP directory (e.g. clip-vit-large-patch14)", "model.vision.path", None)
    backbone = build_vision(cfg.vision, load_weights=not tower).backbone.to(dtype)
    if tower:
        load_strict(backbone, {k.removeprefix("vision_model."): v for k, v in tower.items()}
                    if not any(k.startswith("vision_model.") for k in backbone.state_dict()) else tower, path, KEY)
    load_strict(llm, state, path, KEY)
    connector = build_connector(cfg.connector.type, backbone.config.hidden_size, llm.config.hidden_size)
    load_strict(connector, proj, path, KEY)
    return backbone, connector, llm
