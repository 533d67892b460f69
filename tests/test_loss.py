"""Chunked cross-entropy equals the full-logits loss, with the same gradient on every trainable
tensor, for every registered tuning strategy (fp32, tiny model, ragged chunks)."""
from __future__ import annotations

import pytest
import torch

from mmln.model import build_mllm
from mmln.model.mllm import IGNORE_INDEX, IMAGE_TOKEN_INDEX, chunked_cross_entropy
from mmln.tuning import apply_strategy
from tests.conftest import tiny_config


def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 512, (3, 21), generator=g)
    ids[:, 0], ids[:, 1] = 1, IMAGE_TOKEN_INDEX
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX
    labels[mask == 0] = IGNORE_INDEX
    return ids, mask, labels, torch.randn(3, 3, 64, 64, generator=g)


@pytest.mark.parametrize("strategy,arch", [("finetune", "llama"), ("lora", "llama"), ("layernorm", "llama"),
                                           ("layernorm_simple", "llama"), ("finetune", "gemma2"), ("layernorm", "qwen2")])
def test_chunked_loss_and_gradients_equal_the_full_logits_loss(strategy, arch):
    """Head, embeddings, adapters, norms; Gemma-2's logit soft-capping and tied head; Qwen2's sdpa path."""
    archs = {"gemma2": ["model.llm.tie_word_embeddings=true", "model.llm.head_dim=16", "model.attn_implementation=eager"],
             "qwen2": ["model.llm.tie_word_embeddings=true"]}
    cfg = tiny_config(f"tune.strategy={strategy}", f"model.llm.arch={arch}", *archs.get(arch, []))
    m = build_mllm(cfg.model).train()
    apply_strategy(m, cfg.tune)
    ids, mask, labels, px = batch()
    grads, losses = [], []
    for chunk in (0, 7):  # 7 does not divide 3 x (16 + 20 - 1) positions: a ragged last chunk
        m.loss_chunk = chunk
        m.zero_grad()
        torch.manual_seed(1)  # the same LoRA dropout masks in both passes
        out = m(ids, mask, labels, pixel_values=px)
        assert (out.logits is None) == (chunk > 0) and int(out.n_tokens) == 17 + 11 + 17
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad})
    assert torch.allclose(losses[0], losses[1], rtol=1e-6, atol=0)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for k, g in grads[0].items():
        assert torch.allclose(g, grads[1][k], rtol=1e-5, atol=1e-7), k


def test_nothing_supervised_gives_zero_loss_with_a_graph():
    head = torch.nn.Linear(8, 11)
    loss, n = chunked_cross_entropy(torch.randn(2, 5, 8), head, torch.full((2, 5), IGNORE_INDEX), 3)
    loss.backward()
    assert loss.item() == 0 and int(n) == 0 and torch.count_nonzero(head.weight.grad) == 0


def test_chunking_does_not_keep_full_fp32_logits():
    """Saved-for-backward bytes of the loss: the full path keeps (B*T, V) fp32 log-probs; the chunked
    one keeps only the hidden states (the chunks are rebuilt in backward)."""
    B, T, D, V = 2, 64, 16, 4000
    head = torch.nn.Linear(D, V, bias=False)
    hidden = torch.randn(B, T, D, requires_grad=True)
    labels = torch.randint(0, V, (B, T))

    def saved_bytes(fn):
        sizes = []

        def pack(t):
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return sum(sizes)

    full = saved_bytes(lambda: torch.nn.functional.cross_entropy(
        head(hidden)[:, :-1].float().reshape(-1, V), labels[:, 1:].reshape(-1)))
    chunked = saved_bytes(lambda: chunked_cross_entropy(hidden, head, labels, 32))
    assert full > B * (T - 1) * V * 4 > 20 * chunked


@pytest.mark.parametrize("strategy", ["finetune", "lora", "layernorm", "layernorm_simple"])
def test_bf16_mixed_keeps_every_block_in_bf16_while_trainables_stay_fp32(strategy):
    """The GPU precision setting on CPU: bf16 frozen weights, fp32 trainables, bf16 autocast."""
    cfg = tiny_config("model.dtype=bfloat16", f"tune.strategy={strategy}")
    m = build_mllm(cfg.model).train()
    apply_strategy(m, cfg.tune)
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    seen = []
    hooks = [layer.register_forward_hook(lambda mod, i, o: seen.append(
        (i[0].dtype, (o[0] if isinstance(o, tuple) else o).dtype))) for layer in m.decoder_layers()]
    ids, mask, labels, px = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(ids, mask, labels, pixel_values=px)
    out.loss.backward()
    for h in hooks:
        h.remove()
    assert len(seen) == len(m.decoder_layers()) and all(a == b == torch.bfloat16 for a, b in seen), seen
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable)
