"""`model.init_from=DIR`: start from one directory holding a whole MLLM.

- a llava-hf directory (`LlavaForConditionalGeneration`, `config.json` with `vision_config` /
  `text_config`): vision tower, connector and LLM all come from it;
- an original LLaVA checkpoint (`LlavaLlamaForCausalLM`, `model_type: llava_llama`, with
  `mm_projector_type`, `mm_vision_select_layer`, the projector inside the LLM weights as
  `model.mm_projector.*`): LLM and connector from it, the vision tower from `model.vision.path`
  (a local CLIP directory; LLaVA names it only by hub id in `mm_vision_tower`), or from the
  checkpoint itself when it holds `model.vision_tower.vision_tower.*`.

`mmln.config.checkpoint.model_fields(dir)` (JSON only, no torch; applied when the config loads)
gives the `model.*` fields the checkpoint implies. `build_parts(cfg)` builds the modules from the
checkpoint's own configs and fills every weight strictly (`mmln.formats.strict`).
A llava-hf projector with activation `linear` (how mmln exports LLaVA v1's single linear
connector) is folded back into one `nn.Linear` (W2 W1, W2 b1 + b2).
"""
from __future__ import annotations

from mmln.config.checkpoint import KEY, model_fields, read_config
from mmln.formats.strict import WeightsMismatchError, load_strict, model_type, read_weights


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


def check_tied(llm, state: dict, path) -> None:
    """A tied LLM (`tie_word_embeddings`: one tensor is both the input embedding and the LM head,
    e.g. Qwen2-0.5B) is filled from both names; they must then hold the same values, or one of
    the two would silently overwrite the other."""
    import torch

    if not llm.config.tie_word_embeddings:
        return
    emb, head = state.get("model.embed_tokens.weight"), state.get("lm_head.weight")
    if emb is not None and head is not None and (emb.shape != head.shape or not torch.equal(emb, head)):
        raise WeightsMismatchError(f"{KEY}={path}: text_config.tie_word_embeddings is true but lm_head.weight differs "
                                   "from embed_tokens.weight; set tie_word_embeddings to false in its config.json "
                                   "if the head is its own tensor", KEY, str(path))


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
    check_tied(llm, state, path)
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
    raw = {k: v for k, v in read_config(path).items() if not k.startswith("mm_") and k not in ("model_type", "architectures")}
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
