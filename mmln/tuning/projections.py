"""The `attn_qv` and `attn_mlp` strategies: full weights of chosen projections in every block (the
paper's attention-QV and MLP baselines)."""
from mmln.tuning.selectors import block_linear_params
from mmln.tuning.registry import Strategy, register

register(Strategy(
    name="attn_qv",
    description="q_proj and v_proj of every block + connector, embeddings, head",
    select=lambda mllm, tune: block_linear_params(mllm, ("q_proj", "v_proj")),
))
register(Strategy(
    name="attn_mlp",
    description="gate/up/down projections of every block + connector, embeddings, head",
    select=lambda mllm, tune: block_linear_params(mllm, ("gate_proj", "up_proj", "down_proj")),
))
