"""Strategies on the architectures beyond LLaMA, built tiny from their transformers config classes:
Qwen2 (q/k/v biases, tied embeddings), Mistral, Gemma-2 (four norms a block, `1 + weight` gains,
tied), Qwen3 (q_norm / k_norm inside attention, tied). What each strategy trains is stated by
name, and the parameter counts are computed here by hand from the shapes (tied weights once)."""
import pytest
import torch

from mmln.model import build_mllm
from mmln.tuning import REGISTRY, apply_strategy, count_params
from tests.conftest import tiny_config

H, I, L, NH, KV, HD, V = 64, 128, 2, 4, 2, 16, 512  # hidden, MLP, layers, heads, kv heads, head dim, vocab
ARCHS = {  # arch: (tied embeddings, q/k/v biases, block norms)
    "qwen2": (True, True, ("input_layernorm", "post_attention_layernorm")),
    "mistral": (False, False, ("input_layernorm", "post_attention_layernorm")),
    "gemma2": (True, False, ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                             "post_feedforward_layernorm")),
    "qwen3": (True, False, ("input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm")),
}
CONNECTOR = {"connector.weight", "connector.bias"}


def build(arch, *overrides):
    tied = ARCHS[arch][0]
    cfg = tiny_config(f"model.llm.arch={arch}", f"model.llm.tie_word_embeddings={tied}", f"model.llm.num_kv_heads={KV}",
                      f"model.llm.head_dim={HD}", "model.attn_implementation=eager", *overrides)
    return cfg, build_mllm(cfg.model)


def norm_size(name):
    return HD if name.endswith(("q_norm", "k_norm")) else H


def llm_params(arch) -> int:
    """The LLM's parameter count from its shapes, a tied embedding counted once."""
    tied, bias, norms = ARCHS[arch]
    attn = H * NH * HD + 2 * H * KV * HD + NH * HD * H + (NH * HD + 2 * KV * HD if bias else 0)
    block = attn + 3 * H * I + sum(norm_size(n) for n in norms)
    return V * H * (1 if tied else 2) + L * block + H


def expected_names(arch, strategy, mllm):
    tied, bias, norms = ARCHS[arch]
    emb = {"llm.model.embed_tokens.weight"}
    head = set() if tied else {"llm.lm_head.weight"}
    block_norms = {f"llm.model.layers.{i}.{n}.weight" for i in range(L) for n in norms}
    all_norms = block_norms | {"llm.model.norm.weight"}
    names = {n for n, _ in mllm.named_parameters()}

    def proj(sub, *ps):
        return {n for n in names if n.startswith("llm.") and any(f".{sub}.{p}." in n for p in ps) and "lora" not in n}

    trio = CONNECTOR | emb | head
    return {
        "pretrain": CONNECTOR,
        "connector": CONNECTOR,
        "finetune": {n for n in names if n.startswith("llm.")} | CONNECTOR,
        "lora": {n for n in names if ".lora_" in n} | trio,
        "attn_qv": proj("self_attn", "q_proj", "v_proj") | trio,  # biases too where the model has them
        "attn_mlp": proj("mlp", "gate_proj", "up_proj", "down_proj") | trio,
        "layernorm": all_norms | trio,
        "layernorm_simple": all_norms,
        "layernorm_no_connector": all_norms | emb | head,
        "dora": {n for n in names if ".lora_" in n} | trio,  # lora_A, lora_B, lora_magnitude_vector
        "ia3": {n for n in names if ".ia3_l." in n} | trio,
        "vera": {n for n in names if ".vera_lambda_" in n} | trio,
        "layernorm_lora": {n for n in names if ".lora_" in n} | all_norms | trio,
        "bitfit": ({n for n in names if n.startswith("llm.") and n.endswith(".bias")} | trio) if bias else "refused",
    }[strategy]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_strategies_and_accounting(arch):
    tied, bias, norms = ARCHS[arch]
    _, probe = build(arch)
    vision = sum(p.numel() for p in probe.vision.parameters())
    connector = H * H + H
    total = vision + connector + llm_params(arch)
    assert count_params(probe).total == total  # tied embeddings counted once...
    with_dups = sum(p.numel() for _, p in probe.named_parameters(remove_duplicate=False))
    assert with_dups - total == (V * H if tied else 0)  # ...though the module lists them twice
    assert (probe.llm.get_input_embeddings().weight is probe.llm.get_output_embeddings().weight) == tied
    n_norm = L * sum(norm_size(n) for n in norms) + H
    for strategy in REGISTRY:
        cfg, mllm = build(arch, f"stage={REGISTRY[strategy].stage}", f"tune.strategy={strategy}", "tune.vera.r=8")
        if expected_names(arch, strategy, mllm) == "refused":
            with pytest.raises(ValueError, match="has no bias parameters"):
                apply_strategy(mllm, cfg.tune)
            continue
        names = set(apply_strategy(mllm, cfg.tune))
        assert names == expected_names(arch, strategy, mllm), strategy
        if strategy == "bitfit":  # exactly the q/k/v biases
            assert len(names - CONNECTOR) == 3 * L + 1 and count_params(mllm).groups["other"] == L * (NH + 2 * KV) * HD
        c = count_params(mllm)
        if strategy == "layernorm_simple":
            assert c.trainable == n_norm and c.total == total
        if strategy == "layernorm":
            assert c.trainable == n_norm + connector + V * H * (1 if tied else 2)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_norm_gains_get_gradients(arch):
    cfg, mllm = build(arch, "tune.strategy=layernorm_simple")
    names = set(apply_strategy(mllm, cfg.tune))
    if arch == "gemma2":  # Gemma-2 norms scale by (1 + weight): the gain parameters start at 0
        assert all(float(p.detach().abs().max()) == 0 for n, p in mllm.named_parameters() if n in names)
    ids = torch.tensor([[1, 9, -200, 17, 28, 39, 40, 2]])
    labels = ids.clone()
    labels[:, :3] = -100
    px = torch.randn(1, 3, 64, 64)
    mllm(input_ids=ids, labels=labels, pixel_values=px).loss.backward()
    for n, p in mllm.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) == (n in names), n


def test_exclude_norms_switch():
    cfg, mllm = build("qwen3", "tune.strategy=layernorm_simple", "tune.exclude_norms=[q_norm,k_norm]")
    names = set(apply_strategy(mllm, cfg.tune))
    assert names == {f"llm.model.layers.{i}.{n}.weight" for i in range(L)
                     for n in ("input_layernorm", "post_attention_layernorm")} | {"llm.model.norm.weight"}
    cfg, mllm = build("mistral", "tune.strategy=layernorm", "tune.exclude_norms=[q_norm]")
    with pytest.raises(ValueError, match="q_norm name no norm of this model's blocks"):
        apply_strategy(mllm, cfg.tune)
