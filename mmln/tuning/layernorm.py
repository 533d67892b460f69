"""LayerNorm tuning (the paper's method) and its ablations.

`tune.final_norm` (default on) adds the decoder's final norm to the per-block norms;
`tune.exclude_norms` leaves block norms of those names frozen (e.g. Qwen3's [q_norm, k_norm],
Gemma-2's [pre_feedforward_layernorm, post_feedforward_layernorm]).
Norm tuning changes no structure, so an export needs no merge; its PEFT form is an
`LNTuningConfig` adapter over exactly the tuned norm modules.
"""
from itertools import chain

from mmln.tuning.selectors import block_norm_params, final_norm_params, is_norm
from mmln.tuning.registry import Strategy, register


def norms(mllm, tune):
    return chain(block_norm_params(mllm, getattr(tune, "exclude_norms", None) or ()),
                 final_norm_params(mllm) if tune.final_norm else ())


def trained_norm_modules(mllm) -> list[str]:
    """Full module paths (relative to the LLM) of the norms whose weights train."""
    return [n for n, m in mllm.llm.named_modules()
            if is_norm(m) and any(p.requires_grad for p in m.parameters(recurse=False))]


def ln_peft_config(mllm, tune):
    """PEFT's LN tuning over the norm modules of the LLM whose weights train (full module paths)."""
    from peft import LNTuningConfig

    return LNTuningConfig(target_modules=trained_norm_modules(mllm), task_type="CAUSAL_LM")


register(Strategy(
    name="layernorm",
    description="norms of every block (+ final norm) + connector, embeddings, head",
    select=norms, peft_config=ln_peft_config,
))
register(Strategy(
    name="layernorm_simple",
    description="norms only; connector, embeddings and head frozen",
    select=norms, peft_config=ln_peft_config, connector=False, embeddings=False, head=False,
))
register(Strategy(
    name="layernorm_no_connector",
    description="layernorm with the connector frozen (Table 4 ablation)",
    select=norms, peft_config=ln_peft_config, connector=False,
))
