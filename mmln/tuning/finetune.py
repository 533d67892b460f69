"""The `finetune` strategy: every LLM parameter and the connector (full finetuning)."""
from mmln.tuning.registry import Strategy, register

register(Strategy(
    name="finetune",
    description="every LLM parameter + connector",
    select=lambda mllm, tune: mllm.llm.parameters(),
))
