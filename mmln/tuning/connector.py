"""Connector-only strategies: stage 1 pretraining, and the Table 4 ablation in stage 2.

`pretrain` and `connector` select the same parameters (the connector alone, embeddings and head
frozen); they differ in their stage: `pretrain` is stage 1 (`stage=pretrain`), `connector` is
the same selection run as a stage-2 strategy, where the trio switches may turn on more.
"""
from mmln.tuning.registry import Strategy, register

register(Strategy(
    name="pretrain",
    description="stage 1: the connector only",
    select=lambda mllm, tune: (), embeddings=False, head=False, stage="pretrain",
))
register(Strategy(
    name="connector",
    description="stage 2: the connector (+ embeddings and head when switched on); Table 4 ablation",
    select=lambda mllm, tune: (), embeddings=False, head=False,
))
