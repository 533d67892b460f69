"""Size on disk of the PEFT adapters mmln exports, at the paper's 7B shape (Vicuna-7B / LLaMA-7B).

The LLM skeleton is built on the meta device (no weights, no memory); only the tensors a strategy
trains are materialised (as fp32, the dtype trainable tensors are kept in), and the real exporter
(`mmln.formats.peft_adapter.save_peft_adapter`, PEFT's own `save_pretrained`) writes the adapter.
Prints one JSON line per strategy: python benchmarks/bench_adapter_size.py
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace


def one(strategy: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from mmln.config import load_config
    from mmln.formats.peft_adapter import save_peft_adapter
    from mmln.model.llm import llm_config
    from mmln.tuning import get_strategy

    root = Path(__file__).resolve().parent.parent
    cfg = load_config(root / "conf" / "vicuna7b_ln.yaml", [f"tune.strategy={strategy}", "model.llm.path=null"])
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(llm_config(cfg.model.llm))
    llm.requires_grad_(False)
    holder = SimpleNamespace(llm=llm, decoder_layers=lambda: llm.model.layers)
    s = get_strategy(strategy)
    if s.prepare is not None:
        s.prepare(holder, cfg.tune)
        llm.requires_grad_(False)
    params = list(s.select(holder, cfg.tune))
    owners = {id(p): m for m in llm.modules() for p in m.parameters(recurse=False)}
    for p in params:
        owners[id(p)].to_empty(device="cpu")  # materialise only the trained modules
    params = list(s.select(holder, cfg.tune))
    with torch.no_grad():
        for p in params:
            p.normal_(1.0, 0.01)
            p.requires_grad_(True)
    with tempfile.TemporaryDirectory() as tmp:
        out = save_peft_adapter(holder, cfg.tune, Path(tmp) / "adapter")
        size = sum(f.stat().st_size for f in out.glob("adapter_model.*"))
    return {"bench": "adapter_size", "model": "vicuna7b", "strategy": strategy,
            "tensors": len(params), "values": sum(p.numel() for p in params), "bytes": size}


if __name__ == "__main__":
    for name in ("layernorm_simple",):  # LoRA (340M values at r=32) is left out: ~1.4 GB of fp32 to materialise
        print(json.dumps(one(name)), flush=True)
