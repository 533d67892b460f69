"""Every strategy trains exactly what its registry entry says (docs/paper.md, "Strategies"), gets gradients there and nowhere else."""
import pytest
import torch

from mmln.model import build_mllm
from mmln.tuning import REGISTRY, apply_strategy, count_params
from mmln.model.layout import is_norm
from tests.conftest import tiny_config

L = 2  # tiny preset: 2 decoder layers
TRIO = {"connector.weight", "connector.bias", "llm.model.embed_tokens.weight", "llm.lm_head.weight"}
NORMS = {f"llm.model.layers.{i}.{n}.weight" for i in range(L) for n in ("input_layernorm", "post_attention_layernorm")}
FINAL = {"llm.model.norm.weight"}


def proj(*names, kind):
    sub = "self_attn" if kind == "attn" else "mlp"
    return {f"llm.model.layers.{i}.{sub}.{n}.weight" for i in range(L) for n in names}


def lora_names():
    out = set()
    for i in range(L):
        for sub, names in (("self_attn", "qkvo"), ("mlp", ("gate", "up", "down"))):
            for n in names:
                for ab in "AB":
                    out.add(f"llm.model.layers.{i}.{sub}.{n}_proj.lora_{ab}.default.weight")
    return out


def adapter_names(kind, modules):
    """Names PEFT gives its per-layer tensors: kind "lora_magnitude_vector" -> ...q_proj.lora_magnitude_vector.default.weight."""
    out = set()
    for i in range(L):
        for m in modules:
            sub = "mlp" if m in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            base = f"llm.model.layers.{i}.{sub}.{m}"
            if kind == "lora_magnitude_vector":
                out.add(f"{base}.lora_magnitude_vector.default.weight")
            elif kind == "ia3":
                out.add(f"{base}.ia3_l.default")
            else:  # vera
                out |= {f"{base}.vera_lambda_b.default", f"{base}.vera_lambda_d.default"}
    return out


ALL7 = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def all_llm(mllm):
    return {n for n, _ in mllm.named_parameters() if n.startswith("llm.")}


EXPECTED = {
    "pretrain": lambda m: {"connector.weight", "connector.bias"},
    "connector": lambda m: {"connector.weight", "connector.bias"},
    "finetune": lambda m: all_llm(m) | {"connector.weight", "connector.bias"},
    "lora": lambda m: lora_names() | TRIO,
    "attn_qv": lambda m: proj("q_proj", "v_proj", kind="attn") | TRIO,
    "attn_mlp": lambda m: proj("gate_proj", "up_proj", "down_proj", kind="mlp") | TRIO,
    "layernorm": lambda m: NORMS | FINAL | TRIO,
    "layernorm_simple": lambda m: NORMS | FINAL,
    "layernorm_no_connector": lambda m: NORMS | FINAL | TRIO - {"connector.weight", "connector.bias"},
    "dora": lambda m: lora_names() | adapter_names("lora_magnitude_vector", ALL7) | TRIO,
    "ia3": lambda m: adapter_names("ia3", ("k_proj", "v_proj", "down_proj")) | TRIO,
    "vera": lambda m: adapter_names("vera", ALL7) | TRIO,
    "layernorm_lora": lambda m: lora_names() | NORMS | FINAL | TRIO,
}


def test_every_registered_strategy_is_covered():
    # bitfit trains biases, which this LLaMA has none of: refused here, tested on Qwen2 (test_tuning_archs.py)
    assert set(REGISTRY) == set(EXPECTED) | {"bitfit"}


def test_bitfit_refused_on_bias_free_llama():
    cfg = tiny_config("tune.strategy=bitfit")
    with pytest.raises(ValueError, match=r"bitfit: the LLM \(llama\) has no bias parameters"):
        apply_strategy(build_mllm(cfg.model), cfg.tune)


def batch(cfg, n=2):
    ids = torch.tensor([[1, 9, -200, 17, 28, 39, 40, 2], [1, -200, 44, 55, 2, 0, 0, 0]])[:n]
    mask = (torch.arange(8) < torch.tensor([[8], [5]])[:n]).long()
    labels = torch.where(mask.bool(), ids, -100)
    labels[:, :3] = -100
    px = torch.randn(n, 3, cfg.model.vision.image_size, cfg.model.vision.image_size)
    return dict(input_ids=ids, attention_mask=mask, labels=labels, pixel_values=px)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "grad-ckpt"])
@pytest.mark.parametrize("strategy", sorted(EXPECTED))
def test_strategy_trains_exactly_its_parameters(strategy, checkpointing):
    cfg = tiny_config(f"stage={REGISTRY[strategy].stage}", f"tune.strategy={strategy}",
                      f"model.gradient_checkpointing={checkpointing}")
    mllm = build_mllm(cfg.model)
    names = set(apply_strategy(mllm, cfg.tune))
    assert names == EXPECTED[strategy](mllm)
    assert not any(p.requires_grad for p in mllm.vision.parameters())
    if strategy in ("lora", "dora", "layernorm_lora", "vera"):
        # PEFT inits lora_B (VeRA: lambda_b) to 0, which makes the other factor's first gradient 0: perturb it
        with torch.no_grad():
            for n, p in mllm.named_parameters():
                if "lora_B" in n or "vera_lambda_b" in n:
                    p.normal_(0, 0.02)
    mllm.train()
    before = {n: p.detach().clone() for n, p in mllm.named_parameters()}
    out = mllm(**batch(cfg))
    out.loss.backward()
    for n, p in mllm.named_parameters():
        if n in names:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{strategy}: no gradient for {n}"
            assert p.dtype == torch.float32
        else:
            assert p.grad is None, f"{strategy}: frozen {n} got a gradient"
    opt = torch.optim.AdamW([p for p in mllm.parameters() if p.requires_grad], lr=1e-2)
    opt.step()
    for n, p in mllm.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == (n in names), f"{strategy}: {n} changed={changed}"


def test_shared_trio_switches_override_defaults():
    cfg = tiny_config("tune.strategy=layernorm_simple", "tune.train_connector=true", "tune.final_norm=false")
    names = set(apply_strategy(build_mllm(cfg.model), cfg.tune))
    assert names == NORMS | {"connector.weight", "connector.bias"}
    cfg = tiny_config("tune.strategy=layernorm", "tune.train_embeddings=false", "tune.train_head=false")
    assert set(apply_strategy(build_mllm(cfg.model), cfg.tune)) == NORMS | FINAL | {"connector.weight", "connector.bias"}


def test_unknown_strategy_lists_registered():
    from mmln.config import ConfigError

    with pytest.raises(ConfigError, match="registered: .*layernorm_simple"):  # when the config loads
        tiny_config("tune.strategy=no_such_strategy")
    cfg = tiny_config()
    cfg.tune.strategy = "no_such_strategy"  # set after validation: apply_strategy still refuses it
    with pytest.raises(ValueError, match="registered: .*layernorm_simple"):
        apply_strategy(build_mllm(cfg.model), cfg.tune)


@pytest.mark.parametrize("arch", ["mistral", "qwen2", "gemma"])
def test_norms_found_by_type_in_other_architectures(arch):
    cfg = tiny_config(f"model.llm.arch={arch}", "tune.strategy=layernorm_simple")
    mllm = build_mllm(cfg.model)
    names = set(apply_strategy(mllm, cfg.tune))
    norm_modules = {n for n, m in mllm.llm.named_modules() if is_norm(m)}
    assert names == {f"llm.{n}.weight" for n in norm_modules}
    assert len(norm_modules) == 2 * L + 1


def test_a_linear_named_like_a_norm_is_not_a_norm():
    assert not is_norm(torch.nn.Linear(2, 2))
    assert is_norm(torch.nn.LayerNorm(2)) and is_norm(torch.nn.RMSNorm(2))


def test_bf16_frozen_weights_fp32_trainables():
    cfg = tiny_config("model.dtype=bfloat16", "tune.strategy=layernorm")
    mllm = build_mllm(cfg.model)
    names = set(apply_strategy(mllm, cfg.tune))
    for n, p in mllm.named_parameters():
        assert p.dtype == (torch.float32 if n in names else torch.bfloat16), n


def test_lora_adapters_are_added_to_the_total():
    base = tiny_config("tune.strategy=layernorm")
    m = build_mllm(base.model)
    apply_strategy(m, base.tune)
    lora = tiny_config("tune.strategy=lora", "tune.lora.r=4")
    ml = build_mllm(lora.model)
    apply_strategy(ml, lora.tune)
    h, f, L_ = 64, 128, 2
    adapters = L_ * 4 * (4 * (h + h)) + L_ * (4 * (h + f) + 4 * (h + f) + 4 * (f + h))
    assert count_params(ml).total == count_params(m).total + adapters
