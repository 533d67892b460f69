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
def chat_template(template: str, bos: bool = False) -> str:
    """A Jinja chat template rendering transformers' messages exactly as `mmln.data.templates` does
    (the image first in its turn, the text stripped), starting with `bos_token` when `bos` (see
    `bos_for_consumers`)."""
    from mmln.data.templates import get_template

    return ("{{- bos_token -}}" if bos else "") + _chat_template_body(get_template(template), template)


def _chat_template_body(t, template: str) -> str:
    text = ("{%- set ns = namespace(text='', image=false) -%}"
            "{%- if m.content is string -%}{%- set ns.text = m.content -%}{%- else -%}"
            "{%- for c in m.content -%}{%- if c.type == 'image' -%}{%- set ns.image = true -%}"
            "{%- elif c.type == 'text' -%}{%- set ns.text = ns.text + c.text -%}{%- endif -%}{%- endfor -%}"
            "{%- endif -%}")
    user_text = "{{- ('<image>\\n' if ns.image else '') + (ns.text | trim if ns.image else ns.text) -}}"
    if t.style == "plain":
        return ("{%- for m in messages -%}" + text +
                "{%- if m.role == 'user' -%}{{- '<image>' if ns.image or '<image>' in ns.text else '' -}}"
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
    # consumers pick the LLM class from it (vLLM: "No model architectures are specified" without it);
    # an LLM built from a config (an original LLaVA checkpoint's, a preset) has none of its own
    text["architectures"] = text.get("architectures") or [type(mllm.llm).__name__]
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


BOS_MOVED = "mmln_bos_in_chat_template"  # tokenizer_config.json: BOS moved from the tokenizer into the template


def save_tokenizer(tokenizer, out: str | Path, bos_moved: bool = False) -> None:
    """`save_pretrained`, then the LLaMA `legacy` flag the tokenizer runs with written back
    (transformers 5 drops it, and a reload would tokenize text after `</s>` differently), and,
    when the export moved BOS into the chat template (`bos_for_consumers`), a note of it, so that
    `mmln.model.llm.load_tokenizer` gives training with LLaVA's templates its BOS back."""
    from mmln.base.io import read_json, write_json

    out = Path(out)
    tokenizer.save_pretrained(out)
    legacy = getattr(tokenizer, "legacy", None)
    extra = ({} if legacy is None else {"legacy": bool(legacy)}) | ({BOS_MOVED: True} if bos_moved else {})
    if extra:
        cfg_file = out / "tokenizer_config.json"
        write_json(cfg_file, {**read_json(cfg_file), **extra}, indent=2)


def image_processor_for(vision, image_aspect: str):
    from transformers import LlavaImageProcessorPil

    from mmln.data.images import CLIP_MEAN, CLIP_STD

    if vision.preprocess != "clip":
        raise ValueError("hf-llava export: model.vision.preprocess must be 'clip' (a CLIP tower)")
    s = int(vision.image_size)
    return LlavaImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                  image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
                                  do_pad=image_aspect == "pad")


def bos_for_consumers(tokenizer, template: str) -> bool:
    """Whether the exported chat template writes BOS itself, the exported tokenizer then adding none.

    Consumers apply the chat template and tokenize the text: lmms-eval's `llava_hf` with the
    processor's defaults (special tokens added), vLLM's chat path without them. Both give the
    training ids only when BOS is in the text and the tokenizer adds none: chat-template runs are
    trained that way (the template's own BOS; `tokenizer.add_bos_token` is switched off, which
    Llama-3's post-processor would otherwise add a second time). LLaVA's templates train with the
    tokenizer's BOS: it moves into the template when the text after it tokenizes the same
    (checked here; not so for a non-legacy SentencePiece tokenizer, which drops its "▁" after a
    special token): then the template writes it, else the tokenizer keeps adding it (vLLM's chat
    path then needs `add_special_tokens=True`)."""
    from mmln.data.templates import get_template, render_segments

    bos = tokenizer.bos_token_id
    if get_template(template).style == "chat" or bos is None or tokenizer("x").input_ids[:1] != [bos]:
        return False
    text = "".join(s for s, _ in render_segments(template, [("human", "<image>\nWhat is it?"), ("gpt", "A cat.")]))
    head = text.split(IMAGE_TOKEN)[0] or text
    trained = tokenizer(head).input_ids
    return tokenizer(tokenizer.bos_token + head, add_special_tokens=False).input_ids == trained


def save_llava_hf(mllm, cfg: Any, out: str | Path) -> Path:
    """Write a merged, frozen `mllm` (see `mmln.export.merged_model`) as a llava-hf directory."""
    import torch
    from transformers import GenerationConfig, LlavaForConditionalGeneration, LlavaProcessor

    from mmln.model.llm import load_tokenizer
    from mmln.base.outputs import claim, replacing

    claim(out, "hf-llava")  # before anything is computed: a folder that is not mmln's is never touched
    if cfg.model.vision.backend != "hf_clip":
        raise ValueError("hf-llava export needs model.vision.backend=hf_clip (transformers' LLaVA holds a CLIP tower)")
    tokenizer = load_tokenizer(cfg.model.llm)
    bos_in_text = bos_for_consumers(tokenizer, cfg.data.template)
    chat = cfg.data.template == "chat_template"
    if chat or bos_in_text:  # the chat template's text holds BOS (or none is trained): the tokenizer adds none
        tokenizer.add_bos_token = False
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    llm_sd = mllm.llm.state_dict()
    emb, head = llm_sd["model.embed_tokens.weight"], llm_sd["lm_head.weight"]
    added = max(0, image_id + 1 - emb.shape[0])
    tied = bool(mllm.llm.config.tie_word_embeddings)  # one tensor: the head's rows ARE the embedding's
    if added:
        emb = torch.cat([emb, emb.mean(0, keepdim=True).expand(added, -1)])
        head = emb if tied else torch.cat([head, head.new_zeros(added, head.shape[1])])
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
        chat_template=tokenizer.chat_template if chat else chat_template(cfg.data.template, bos_in_text),
        image_token=IMAGE_TOKEN, num_additional_image_tokens=1,
    )
    out = Path(out)
    with replacing(out, "hf-llava") as tmp:  # built beside `out`, manifest last, swapped in whole
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        # the image processor on its own too, as llava-hf checkpoints ship it: transformers 4.x (the
        # lmms-eval / vLLM pins) reads preprocessor_config.json, 5.x the copy in processor_config.json
        processor.image_processor.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp, bos_moved=bos_in_text)
    return out
