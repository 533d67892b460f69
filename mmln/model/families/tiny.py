"""Tiny random checkpoints of the native families, written by the real transformers classes:
`<Family>Config(...)` small + `save_pretrained`, a tiny byte-level BPE tokenizer carrying the
family's real chat template and special tokens, and the family's own image processor at a tiny
resolution, saved together as the family's processor. What tests, `make bench` and
`make experiments SCALE=tiny` run on (no hub download).

`write_tiny(family, out_dir, texts)` -> out_dir, loadable by `AutoModelForImageTextToText` /
`AutoProcessor` and by `model.init_from=out_dir`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from mmln.model.families.templates import TOKENS

TINY_FAMILIES = ("qwen2_5_vl", "qwen2_vl", "idefics3", "llava_onevision", "gemma3")
_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=1024)
_CORPUS = ["What is in the image? A red cat sits on a mat.", "Is there a dog? Yes No", "You are a helpful assistant.",
           "system user assistant model User Assistant Describe the picture. A blue square and a green circle."]


def tiny_tokenizer(family: str, out_dir: Path, texts: Iterable[str] = ()):
    """A byte-level BPE tokenizer (any text encodes losslessly, with offsets) trained on `texts` + a
    small corpus, with the family's special tokens as single ids and its real chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    template, bos, eos, pad, extra, named = TOKENS[family]
    specials = list(dict.fromkeys(t for t in ("<unk>", bos, eos, pad, *extra) if t))
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([*_CORPUS, *texts], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token="<unk>",
                                   additional_special_tokens=[t for t in extra], extra_special_tokens=named,
                                   model_max_length=4096, padding_side="right", clean_up_tokenization_spaces=False)
    fast.chat_template = template
    return fast


def _image_processor(family: str):
    from transformers import (Gemma3ImageProcessor, Idefics3ImageProcessor, LlavaOnevisionImageProcessor,
                              Qwen2VLImageProcessor)

    if family in ("qwen2_vl", "qwen2_5_vl"):  # dynamic resolution: 32x32 px -> 8x8 patches of 4 px -> 16 tokens
        return Qwen2VLImageProcessor(patch_size=4, merge_size=2, temporal_patch_size=2,
                                     min_pixels=16 * 16, max_pixels=48 * 48)
    if family == "idefics3":
        return Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": 32},
                                      max_image_size={"longest_edge": 32})
    if family == "llava_onevision":  # AnyRes tiles of 16 px
        return LlavaOnevisionImageProcessor(size={"height": 16, "width": 16}, crop_size={"height": 16, "width": 16},
                                            image_grid_pinpoints=[[16, 16], [16, 32], [32, 16], [32, 32]])
    return Gemma3ImageProcessor(size={"height": 16, "width": 16})


def _processor(family: str, tokenizer, image_processor):
    from transformers import Gemma3Processor, Idefics3Processor, LlavaOnevisionProcessor, Qwen2_5_VLProcessor
    from transformers import Qwen2VLProcessor, Qwen2VLVideoProcessor

    template = TOKENS[family][0]
    if family in ("qwen2_vl", "qwen2_5_vl"):
        cls = Qwen2_5_VLProcessor if family == "qwen2_5_vl" else Qwen2VLProcessor
        video = Qwen2VLVideoProcessor(patch_size=4, merge_size=2, temporal_patch_size=2)
        return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video, chat_template=template)
    if family == "idefics3":
        return Idefics3Processor(image_processor, tokenizer, image_seq_len=16, chat_template=template)
    if family == "llava_onevision":
        from transformers import LlavaOnevisionVideoProcessor

        video = LlavaOnevisionVideoProcessor(size={"height": 16, "width": 16})
        return LlavaOnevisionProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video,
                                       num_image_tokens=16,
                                       vision_feature_select_strategy="full", chat_template=template)
    return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=4,
                           chat_template=template)


def tiny_config(family: str, tokenizer, text_size: dict | None = None):
    """The family's own config class, small (`text_size` overrides the language model's shape);
    token ids from `tokenizer`."""
    from transformers import (Gemma3Config, Idefics3Config, LlavaOnevisionConfig, Qwen2_5_VLConfig, Qwen2VLConfig)

    tid = tokenizer.convert_tokens_to_ids
    V = len(tokenizer)
    text = dict(_TEXT, **(text_size or {}), vocab_size=V, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        half = text["hidden_size"] // text["num_attention_heads"] // 2  # M-RoPE sections (t, h, w) sum to head_dim / 2
        hw = half * 3 // 8
        rope = {"rope_type": "default", "mrope_section": [half - 2 * hw, hw, hw], "rope_theta": 10000.0}
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, in_channels=3, patch_size=4,
                      spatial_merge_size=2, temporal_patch_size=2)
        if family == "qwen2_5_vl":  # the merger maps the tower's width to the language model's
            vision |= dict(out_hidden_size=text["hidden_size"], window_size=16, fullatt_block_indexes=[1])
            cls = Qwen2_5_VLConfig
        else:
            vision |= dict(embed_dim=32, mlp_ratio=2, hidden_size=text["hidden_size"])
            cls = Qwen2VLConfig
        return cls(text_config=dict(text, rope_parameters=rope), vision_config=vision,
                   image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
                   vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"))
    siglip = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, patch_size=4)
    if family == "idefics3":
        return Idefics3Config(text_config=dict(text, model_type="llama"), scale_factor=2,
                              vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                 num_attention_heads=4, image_size=32, patch_size=4),
                              image_token_id=tid("<image>"))
    if family == "llava_onevision":
        return LlavaOnevisionConfig(text_config=dict(text, model_type="qwen2"), vision_config=dict(siglip, image_size=16),
                                    image_token_index=tid("<image>"), video_token_index=tid("<video>"),
                                    image_grid_pinpoints=[[16, 16], [16, 32], [32, 16], [32, 32]],
                                    vision_feature_select_strategy="full", vision_feature_layer=-1)
    return Gemma3Config(text_config=dict(text, model_type="gemma3_text", head_dim=8, query_pre_attn_scalar=8,
                                         sliding_window=16),
                        vision_config=dict(siglip, image_size=16), mm_tokens_per_image=4,
                        boi_token_index=tid("<start_of_image>"), eoi_token_index=tid("<end_of_image>"),
                        image_token_index=tid("<image_soft_token>"))


def write_tiny(family: str, out_dir: str | Path, texts: Iterable[str] = (), seed: int = 0,
               text_size: dict | None = None) -> Path:
    """A tiny random `family` checkpoint directory (model + processor + tokenizer + template)."""
    import torch
    from transformers import AutoModelForImageTextToText

    if family not in TINY_FAMILIES:
        raise ValueError(f"no tiny checkpoint for family {family!r}; tiny families: {', '.join(TINY_FAMILIES)}")
    out = Path(out_dir)
    tokenizer = tiny_tokenizer(family, out, texts)
    processor = _processor(family, tokenizer, _image_processor(family))
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(tiny_config(family, tokenizer, text_size))
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mmln.model.families.tiny",
                                 description="write a tiny random checkpoint of a native model family")
    ap.add_argument("family", choices=TINY_FAMILIES)
    ap.add_argument("out")
    args = ap.parse_args(argv)
    print(write_tiny(args.family, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
