"""Full finetuning: every LLM parameter and the connector."""
from mmln.tuning.registry import Strategy, register

register(Strategy(
    name="finetune",
    description="every LLM parameter + connector",
    select=lambda mllm, tune: mllm.llm.parameters(),
))
