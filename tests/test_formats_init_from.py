"""model.init_from: llava-hf (both key layouts) and original LLaVA checkpoints written by the real
transformers classes, loaded by mmln, logits equal to transformers' own LLaVA forward (fp32, <= 1e-5),
single and padded batches; and loud loading: every mismatch is an error naming path, key and kind."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmln.run.build import build_model
from mmln.config import ConfigError
from mmln.model.errors import MissingWeightsError
from tests.conftest import tiny_config

NP = 16  # tiny: (64 / 16)^2 patches


def tiny_llava(select="default", layer=-2):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    parts = build_model(tiny_config("model.llm.vocab_size=300"))
    cfg = LlavaConfig(vision_config=parts.vision.backbone.config.to_dict(), text_config=parts.llm.config.to_dict(),
                      image_token_index=299, vision_feature_layer=layer, vision_feature_select_strategy=select)
    torch.manual_seed(1)
    return LlavaForConditionalGeneration(cfg).eval()


def batches(n_img):
    """mmln ids (one -200 slot) and transformers ids (NP image tokens), right-padded to one length."""
    rows = [[1, 5, 6, -200, 7, 8, 9, 10], [1, 11, -200, 12]]
    out = []
    for b in ([rows[0]], rows):
        L = max(len(r) for r in b)
        ours = torch.tensor([r + [0] * (L - len(r)) for r in b])
        mask = torch.tensor([[1] * len(r) + [0] * (L - len(r)) for r in b])
        exp = [sum(([299] * n_img if t == -200 else [t] for t in r), []) for r in b]
        E = max(len(r) for r in exp)
        theirs = torch.tensor([r + [0] * (E - len(r)) for r in exp])
        tmask = torch.tensor([[1] * len(r) + [0] * (E - len(r)) for r in exp])
        out.append((ours, mask, theirs, tmask, torch.randn(len(b), 3, 64, 64)))
    return out


def assert_same(m, hf, n_img):
    for ours, mask, theirs, tmask, px in batches(n_img):
        with torch.no_grad():
            a = m(ours, attention_mask=mask, pixel_values=px).logits
            b = hf(input_ids=theirs, attention_mask=tmask, pixel_values=px).logits
        valid = tmask.bool()
        assert a.shape[:2] == b.shape[:2] and (a - b)[valid].abs().max() <= 1e-5
        assert torch.equal(a[valid].argmax(-1), b[valid].argmax(-1))


def new_layout(src, dst):
    """The same checkpoint in transformers 5's in-memory key layout (model.language_model.*, ...)."""
    dst.mkdir()
    state = load_file(str(src / "model.safetensors"))
    ren = {"language_model.model.": "model.language_model.", "language_model.lm_head.": "lm_head.",
           "vision_tower.": "model.vision_tower.", "multi_modal_projector.": "model.multi_modal_projector."}
    out = {}
    for k, v in state.items():
        new = next((n + k[len(o):] for o, n in ren.items() if k.startswith(o)), k)
        out[new] = v
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text((src / "config.json").read_text())
    return dst


@pytest.mark.parametrize("select, layer", [("default", -2), ("full", -1)])
def test_llava_hf_both_layouts(tmp_path, select, layer):
    from transformers import LlavaForConditionalGeneration

    hf = tiny_llava(select, layer)
    hf.save_pretrained(tmp_path / "old")
    for d in (tmp_path / "old", new_layout(tmp_path / "old", tmp_path / "new")):
        cfg = tiny_config(f"model.init_from={d}", "model.vision.image_size=999")  # the checkpoint's size wins
        assert cfg.model.vision.image_size == 64 and cfg.model.connector.type == "mlp2x_gelu"
        assert cfg.model.vision.select_layer == layer and cfg.model.llm.tokenizer == str(d)
        m = build_model(cfg).eval()
        ref = LlavaForConditionalGeneration.from_pretrained(d).eval()
        assert_same(m, ref, NP + (select == "full"))


def test_original_llava_checkpoint(tmp_path):
    """LlavaLlamaForCausalLM layout: LLaMA weights + model.mm_projector.*, CLIP from model.vision.path."""
    hf = tiny_llava()
    hf.model.vision_tower.save_pretrained(tmp_path / "clip")
    llm_state = {"model." + k: v for k, v in hf.model.language_model.state_dict().items()}
    llm_state["lm_head.weight"] = hf.lm_head.weight
    proj = hf.model.multi_modal_projector.state_dict()
    llm_state |= {"model.mm_projector." + k.replace("linear_1.", "0.").replace("linear_2.", "2."): v
                  for k, v in proj.items()}
    d = tmp_path / "llava-v1.5"
    d.mkdir()
    save_file({k: v.contiguous() for k, v in llm_state.items()}, str(d / "model.safetensors"), metadata={"format": "pt"})
    conf = hf.config.text_config.to_dict() | {
        "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"], "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_vision_tower": "openai/clip-vit-large-patch14"}
    (d / "config.json").write_text(json.dumps(conf, default=str))
    with pytest.raises(MissingWeightsError, match="set model.vision.path to a local CLIP directory"):
        build_model(tiny_config(f"model.init_from={d}"))
    cfg = tiny_config(f"model.init_from={d}", f"model.vision.path={tmp_path / 'clip'}")
    assert cfg.model.connector.type == "mlp2x_gelu"
    assert_same(build_model(cfg).eval(), hf, NP)
    save_file({**load_file(str(d / "model.safetensors")), "model.extra.weight": torch.zeros(2)}, str(d / "model.safetensors"))
    with pytest.raises(MissingWeightsError, match=r"1 of its weights fit nothing.*model.extra.weight"):
        build_model(cfg)


def test_loud_loading_names_path_key_and_kind(tmp_path):
    hf = tiny_llava()
    hf.save_pretrained(tmp_path / "llava")
    with pytest.raises(MissingWeightsError, match=r"model.vision.path=.*llava-hf checkpoint.*use model.init_from"):
        build_model(tiny_config(f"model.vision.path={tmp_path / 'llava'}", "model.vision.num_layers=3"))
    with pytest.raises(MissingWeightsError, match=r"model.llm.path=.*llava-hf checkpoint.*use model.init_from"):
        build_model(tiny_config(f"model.llm.path={tmp_path / 'llava'}"))
    base = build_model(tiny_config())
    base.llm.save_pretrained(tmp_path / "llm")
    with pytest.raises(ConfigError, match=r"model.init_from=.*supported model family.*llava_llama.*'llama'"):
        tiny_config(f"model.init_from={tmp_path / 'llm'}")
    state = load_file(str(tmp_path / "llm" / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(tmp_path / "llm" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MissingWeightsError, match=r"model.llm.path=.*1 weights the model needs.*up_proj.*stay random"):
        build_model(tiny_config(f"model.llm.path={tmp_path / 'llm'}"))
    base.vision.backbone.save_pretrained(tmp_path / "clip")
    state = load_file(str(tmp_path / "clip" / "model.safetensors"))
    save_file({**state, "surplus.weight": torch.zeros(1)}, str(tmp_path / "clip" / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(MissingWeightsError, match=r"model.vision.path=.*fit nothing.*surplus"):
        build_model(tiny_config(f"model.vision.path={tmp_path / 'clip'}"))
    state = load_file(str(tmp_path / "llava" / "model.safetensors"))
    del state["multi_modal_projector.linear_2.bias"]
    save_file(state, str(tmp_path / "llava" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MissingWeightsError, match=r"model.init_from=.*linear_2.bias"):
        build_model(tiny_config(f"model.init_from={tmp_path / 'llava'}"))
