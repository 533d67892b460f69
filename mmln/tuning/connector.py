"""Connector-only strategies: stage 1 pretraining, and the Table 4 ablation."""
from mmln.tuning.registry import Strategy, register

register(Strategy(
    name="pretrain",
    description="stage 1: the connector only",
    select=lambda mllm, tune: (), embeddings=False, head=False,
))
register(Strategy(
    name="connector",
    description="connector (+ embeddings and head when switched on); Table 4 ablation",
    select=lambda mllm, tune: (), embeddings=False, head=False,
))
