"""Out in a native family's own format: the transformers class directory (LoRA merged before this
is called), with the checkpoint's processor, tokenizer and chat template, so that
`AutoModelForImageTextToText` / `AutoProcessor` (and lmms-eval's and vLLM's loaders, which read the
same files) load it as they load the original. Written beside the destination and swapped in."""
from __future__ import annotations

from pathlib import Path


def save_native_hf(mllm, cfg, out: str | Path) -> Path:
    from transformers import AutoProcessor

    from mmln.base.outputs import replacing

    processor = AutoProcessor.from_pretrained(cfg.model.init_from)
    model = mllm.model
    model.config.use_cache = True
    out = Path(out)
    with replacing(out, "hf") as tmp:  # built beside `out`, manifest last, swapped in whole
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out
