"""The LLaVA assembly: mmln's own CLIP/timm tower + linear/MLP connector + causal LLM
(`mmln.model.build_mllm`, `mmln.model.mllm.MLLM`), also built from a llava-hf or an original LLaVA
checkpoint (`mmln.formats.init_from`). Its parts are attributes of `MLLM`: vision, connector, llm."""
from mmln.families.registry import Family, register

register(Family(
    name="llava", model_types=("llava", "llava_llama"), hf_class="",
    description="LLaVA-1.5 shape (mmln's assembly; llava-hf and original LLaVA checkpoints)",
))
