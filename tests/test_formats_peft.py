"""PEFT adapters out: PeftModel.from_pretrained(base, adapter) reproduces mmln's tuned LLM logits."""
import pytest
import torch

from mmln.run.build import build_model
from mmln.formats.peft_adapter import export_peft_adapter, save_peft_adapter
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def base_llm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("base") / "llm"
    build_model(tiny_config()).llm.save_pretrained(d)
    return d


def _trained(strategy, base, *extra):
    cfg = tiny_config(f"tune.strategy={strategy}", "tune.lora.r=4", f"model.llm.path={base}", *extra)
    m = build_model(cfg).eval()
    with torch.no_grad():  # a "trained" state: every trainable tensor moved
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return cfg, m


IDS = torch.tensor([[1, 5, 6, 7, 8, 9], [1, 10, 11, 12, 0, 0]])  # single + padded rows
MASK = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]])


@pytest.mark.parametrize("strategy, adapter, trio", [
    ("lora", "lora_adapter", True),  # LoRA + trained embeddings and head (modules_to_save)
    ("layernorm", "ln_tuning_adapter", True),
    ("layernorm_simple", "ln_tuning_adapter", False),
])
def test_adapter_round_trips_through_peft(tmp_path, base_llm_dir, strategy, adapter, trio):
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    cfg, m = _trained(strategy, base_llm_dir)
    out = export_peft_adapter(m, cfg, tmp_path)
    assert out.name == adapter and (out / "mm_projector.bin").is_file() == (strategy != "layernorm_simple")
    pc = PeftConfig.from_pretrained(out)
    assert bool(pc.modules_to_save) == trio and pc.base_model_name_or_path == str(base_llm_dir)
    base = AutoModelForCausalLM.from_pretrained(base_llm_dir).eval()
    with torch.no_grad():
        untuned = base(input_ids=IDS, attention_mask=MASK).logits
        pm = PeftModel.from_pretrained(base, out).eval()
        ours = m.llm(input_ids=IDS, attention_mask=MASK).logits
        theirs = pm(input_ids=IDS, attention_mask=MASK).logits
    valid = MASK.bool()
    assert (ours - untuned)[valid].abs().max() > 1e-2  # the adapter carries a real change ...
    assert (ours - theirs)[valid].abs().max() <= 1e-5  # ... and PEFT reproduces it
    assert torch.equal(ours[valid].argmax(-1), theirs[valid].argmax(-1))


def test_strategy_without_peft_form_is_refused(tmp_path, base_llm_dir):
    cfg, m = _trained("finetune", base_llm_dir)
    assert export_peft_adapter(m, cfg, tmp_path) is None
    with pytest.raises(ValueError, match="no PEFT form"):
        save_peft_adapter(m, cfg.tune, tmp_path / "x")


def test_adapter_missing_a_trained_tensor_is_an_error(tmp_path, base_llm_dir):
    cfg, m = _trained("layernorm_simple", base_llm_dir)
    m.llm.model.layers[0].self_attn.q_proj.weight.requires_grad_(True)  # trained, but no LN-tuning form
    with pytest.raises(ValueError, match="would not carry 1 tensors"):
        save_peft_adapter(m, cfg.tune, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_tied_embeddings_travel_as_modules_to_save(tmp_path):
    """A tied head is the trained embedding under a second name: both go into the adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tied = ("model.llm.arch=qwen2", "model.llm.tie_word_embeddings=true")
    build_model(tiny_config(*tied)).llm.save_pretrained(tmp_path / "llm")
    cfg, m = _trained("layernorm", tmp_path / "llm", *tied)
    assert m.llm.lm_head.weight is m.llm.get_input_embeddings().weight
    out = export_peft_adapter(m, cfg, tmp_path)
    pm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "llm"), out).eval()
    with torch.no_grad():
        assert (m.llm(input_ids=IDS, attention_mask=MASK).logits
                - pm(input_ids=IDS, attention_mask=MASK).logits)[MASK.bool()].abs().max() <= 1e-5
