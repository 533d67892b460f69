"""Tied input embedding / LM head (`tie_word_embeddings`, as Qwen2-0.5B and small LLaMAs ship): llava-hf
directories and plain LLM directories import, hf-llava exports reload in transformers (still tied) and
import back, with transformers' logits (fp32, <= 1e-5), for LLaMA- and Qwen2-shaped tiny models."""
import pytest
import torch
from safetensors.torch import load_file

from mmln.run.build import build_model
from mmln.export import export
from mmln.model.checkpoint import save_trainable
from test_data_helpers import tok_dirs  # noqa: F401  (fixture)
from test_formats_init_from import NP, assert_same
from tests.conftest import tiny_config

ARCHS = ["llama", "qwen2"]


def tied(model) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


@pytest.mark.parametrize("arch", ARCHS)
def test_tied_llava_hf_directory_imports(tmp_path, arch):
    # fails on main: "1 weights the model needs are not in it (e.g. ['lm_head.weight']...)"
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    parts = build_model(tiny_config("model.llm.vocab_size=300", f"model.llm.arch={arch}",
                                    "model.llm.tie_word_embeddings=true"))
    cfg = LlavaConfig(vision_config=parts.vision.backbone.config.to_dict(), text_config=parts.llm.config.to_dict(),
                      image_token_index=299, tie_word_embeddings=True)
    torch.manual_seed(1)
    hf = LlavaForConditionalGeneration(cfg).eval()
    hf.save_pretrained(tmp_path / "llava")
    assert not any(k.startswith("lm_head") for k in load_file(str(tmp_path / "llava" / "model.safetensors")))
    m = build_model(tiny_config(f"model.init_from={tmp_path / 'llava'}")).eval()
    assert m.llm.config.model_type == arch and tied(m.llm)
    assert_same(m, hf, NP)


@pytest.mark.parametrize("arch", ARCHS)
def test_tied_plain_llm_directory_imports(tmp_path, arch):
    from transformers import AutoModelForCausalLM

    src = build_model(tiny_config(f"model.llm.arch={arch}", "model.llm.tie_word_embeddings=true")).llm
    with torch.no_grad():
        src.get_input_embeddings().weight.normal_(0, 0.5)
    src.save_pretrained(tmp_path / "llm")
    m = build_model(tiny_config(f"model.llm.path={tmp_path / 'llm'}", f"model.llm.arch={arch}")).eval()
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "llm", dtype=torch.float32).eval()
    ids = torch.randint(3, 512, (2, 9))
    assert tied(m.llm) and tied(ref)
    with torch.no_grad():
        assert (m.llm(ids).logits - ref(ids).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_tied_export_round_trips(tmp_path, arch, tok_dirs):  # noqa: F811
    from transformers import LlavaForConditionalGeneration

    from mmln.model.llm import load_tokenizer

    tok = load_tokenizer(tiny_config(f"model.llm.tokenizer={tok_dirs[True]}").model.llm)
    cfg = tiny_config(f"model.llm.arch={arch}", "model.llm.tie_word_embeddings=true", "tune.strategy=layernorm",
                      f"model.llm.tokenizer={tok_dirs[True]}", f"model.llm.vocab_size={len(tok)}")
    m = build_model(cfg).eval()
    assert tied(m.llm) and m.llm.get_input_embeddings().weight.requires_grad  # the trio trains: one tensor
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    save_trainable(m, tmp_path / "trainable.safetensors")
    out = export(cfg, str(tmp_path / "trainable.safetensors"), tmp_path / "export", "hf-llava")
    hf = LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.config.text_config.model_type == arch and tied(hf)
    V = m.llm.config.vocab_size
    ours = torch.tensor([[1, 5, 6, -200, 7, 8, 9]])
    theirs = torch.tensor([[1, 5, 6] + [hf.config.image_token_index] * NP + [7, 8, 9]])
    px = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = m(ours, pixel_values=px).logits
        b = hf(input_ids=theirs, pixel_values=px).logits[..., :V]
        assert (a - b).abs().max() <= 1e-5
        again = build_model(tiny_config(f"model.init_from={out}")).eval()  # and back into mmln
        assert tied(again.llm)
        assert (a - again(ours, pixel_values=px).logits[..., :V]).abs().max() <= 1e-5
