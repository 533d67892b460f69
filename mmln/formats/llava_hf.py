"""transformers' LLaVA (`LlavaForConditionalGeneration`, "llava-hf") directories, out and in.

Out, `save_llava_hf(mllm, cfg, out)` (`python -m mmln.export --format hf-llava`): config.json
(`vision_config` = the CLIP tower, `text_config` = the LLM, `vision_feature_layer` /
`vision_feature_select_strategy` = `model.vision.select_layer` / `select_feature`), the weights
as safetensors in transformers 5's key layout, the tokenizer with an `<image>` token, the run's
chat template and its LLaMA `legacy` flag written back, and a PIL-backend `LlavaImageProcessor`
config with the run's resize / crop / pad-to-square. transformers' projector is
Linear-act-Linear: LLaVA-1.5's `mlp2x_gelu` maps onto it as it is; LLaVA v1's single `linear`
connector is written exactly as `linear_1` = the connector, activation `linear` (identity) and
`linear_2` = the identity matrix. When the `<image>` id is past the LLM's vocabulary, one
embedding row (the mean) and one zero LM-head row are appended, and the generation config
suppresses that id (mmln's model has no such row to produce).

In: `model.init_from=DIR` (`mmln.formats.init_from`), which reads both key layouts through
transformers' own loader.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

IMAGE_TOKEN = "<image>"

PROJECTOR = {"linear_1.": "0.", "linear_2.": "2."}  # llava-hf projector -> mmln's nn.Sequential


# ---------------------------------------------------------------------------------------- chat template
def chat_template(template: str) -> str:
    """A Jinja chat template rendering transformers' messages exactly as `mmln.data.templates` does
    (the image first in its turn, the text stripped), without BOS (the tokenizer adds it)."""
    from mmln.data.templates import get_template

    t = get_template(template)
    text = ("{%- set ns = namespace(text='', image=false) -%}"
            "{%- if m.content is string -%}{%- set ns.text = m.content -%}{%- else -%}"
            "{%- for c in m.content -%}{%- if c.type == 'image' -%}{%- set ns.image = true -%}"
            "{%- elif c.type == 'text' -%}{%- set ns.text = ns.text + c.text -%}{%- endif -%}{%- endfor -%}"
            "{%- endif -%}")
    user_text = "{{- ('<image>\\n' if ns.image else '') + (ns.text | trim if ns.image else ns.text) -}}"
    if t.style == "plain":
        return ("{%- for m in messages -%}" + text +
                "{%- if m.role == 'user' -%}{{- '<image>' if ns.image else '' -}}"
                "{%- else -%}{{- ns.text + '\\n' -}}{%- endif -%}{%- endfor -%}")
    if t.style == "two":
        r0, r1 = t.roles
        return (f"{{{{- {json.dumps(t.system + t.sep)} -}}}}{{%- for m in messages -%}}" + text +
                f"{{%- if m.role == 'user' -%}}{{{{- '{r0}: ' -}}}}" + user_text + f"{{{{- {json.dumps(t.sep)} -}}}}"
                f"{{%- else -%}}{{{{- '{r1}: ' + ns.text + {json.dumps(t.sep2)} -}}}}{{%- endif -%}}{{%- endfor -%}}"
                f"{{%- if add_generation_prompt -%}}{{{{- '{r1}:' -}}}}{{%- endif -%}}")
    if t.style == "llama_2":
        sys_block = f"<<SYS>>\n{t.system}\n<</SYS>>\n\n" if t.system else ""
        return ("{%- for m in messages -%}" + text +
                "{%- if m.role == 'user' -%}"
                f"{{{{- ('' if loop.first else {json.dumps(t.sep)}) + '[INST] ' "
                f"+ ({json.dumps(sys_block)} if loop.first else '') -}}}}" + user_text + "{{- ' [/INST]' -}}"
                f"{{%- else -%}}{{{{- ' ' + ns.text + ' ' + {json.dumps(t.sep2)} -}}}}{{%- endif -%}}{{%- endfor -%}}")
    raise ValueError(f"data.template={template!r} has no chat-template form")


# ---------------------------------------------------------------------------------------------- export
def _llava_config(mllm, image_token_id: int, act: str):
    from transformers import LlavaConfig

    v = mllm.vision.cfg
    text = mllm.llm.config.to_dict()
    return LlavaConfig(
        vision_config=mllm.vision.backbone.config.to_dict(), text_config=text,
        image_token_index=image_token_id, image_seq_length=mllm.vision.num_patches,
        projector_hidden_act=act, vision_feature_layer=int(v.select_layer),
        vision_feature_select_strategy="default" if v.select_feature == "patch" else "full",
        multimodal_projector_bias=True, tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),
    )


def _projector_state(connector) -> tuple[dict, str]:
    import torch
    from torch import nn

    if isinstance(connector, nn.Linear):
        d = connector.out_features
        return ({"linear_1.weight": connector.weight, "linear_1.bias": connector.bias,
                 "linear_2.weight": torch.eye(d, dtype=connector.weight.dtype),
                 "linear_2.bias": torch.zeros(d, dtype=connector.weight.dtype)}, "linear")
    sd = connector.state_dict()
    return ({new + k[len(old):]: sd[k] for k in sd for new, old in PROJECTOR.items() if k.startswith(old)}, "gelu")


def save_tokenizer(tokenizer, out: str | Path) -> None:
    """`save_pretrained`, then the LLaMA `legacy` flag the tokenizer runs with written back
    (transformers 5 drops it, and a reload would tokenize text after `</s>` differently)."""
    from mmln.io import read_json, write_json

    out = Path(out)
    tokenizer.save_pretrained(out)
    legacy = getattr(tokenizer, "legacy", None)
    if legacy is not None:
        cfg_file = out / "tokenizer_config.json"
        write_json(cfg_file, {**read_json(cfg_file), "legacy": bool(legacy)}, indent=2)


def image_processor_for(vision, image_aspect: str):
    from transformers import LlavaImageProcessorPil

    from mmln.data.images import CLIP_MEAN, CLIP_STD

    if vision.preprocess != "clip":
        raise ValueError("hf-llava export: model.vision.preprocess must be 'clip' (a CLIP tower)")
    s = int(vision.image_size)
    return LlavaImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                  image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
                                  do_pad=image_aspect == "pad")


def save_llava_hf(mllm, cfg: Any, out: str | Path) -> Path:
    """Write a merged, frozen `mllm` (see `mmln.export.merged_model`) as a llava-hf directory."""
    import torch
    from transformers import GenerationConfig, LlavaForConditionalGeneration, LlavaProcessor

    from mmln.model.llm import load_tokenizer
    from mmln.outputs import claim, replacing

    claim(out, "hf-llava")  # before anything is computed: a folder that is not mmln's is never touched
    if cfg.model.vision.backend != "hf_clip":
        raise ValueError("hf-llava export needs model.vision.backend=hf_clip (transformers' LLaVA holds a CLIP tower)")
    tokenizer = load_tokenizer(cfg.model.llm)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    llm_sd = mllm.llm.state_dict()
    emb, head = llm_sd["model.embed_tokens.weight"], llm_sd["lm_head.weight"]
    added = max(0, image_id + 1 - emb.shape[0])
    if added:
        emb = torch.cat([emb, emb.mean(0, keepdim=True).expand(added, -1)])
        head = torch.cat([head, head.new_zeros(added, head.shape[1])])
    state = {("model.language_model." + k[len("model."):] if k.startswith("model.") else k): v
             for k, v in llm_sd.items()}
    state["model.language_model.embed_tokens.weight"], state["lm_head.weight"] = emb, head
    state |= {"model.vision_tower." + k: v for k, v in mllm.vision.backbone.state_dict().items()}
    proj, act = _projector_state(mllm.connector)
    state |= {"model.multi_modal_projector." + k: v for k, v in proj.items()}
    config = _llava_config(mllm, image_id, act)
    config.text_config.vocab_size = emb.shape[0]
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.load_state_dict({k: v.detach().clone().contiguous() for k, v in state.items()}, strict=True, assign=True)
    from mmln.data.templates import stop_token_ids

    gen = GenerationConfig(bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=stop_token_ids(cfg.data.template, tokenizer) or tokenizer.eos_token_id,
                           suppress_tokens=[image_id] if added else None)
    model.generation_config = gen
    processor = LlavaProcessor(
        image_processor=image_processor_for(cfg.model.vision, cfg.data.image_aspect), tokenizer=tokenizer,
        patch_size=int(cfg.model.vision.patch_size),
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=(tokenizer.chat_template if cfg.data.template == "chat_template"  # the tokenizer's own
                       else chat_template(cfg.data.template)),
        image_token=IMAGE_TOKEN, num_additional_image_tokens=1,
    )
    out = Path(out)
    with replacing(out, "hf-llava") as tmp:  # built beside `out`, manifest last, swapped in whole
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
    return out
