"""python -m mmln.plan --config CFG [--strategy all|NAME] [--json] [key=value ...]

Predicts peak GPU memory per tuning strategy before a run, from the architecture alone: the
model is built on the meta device (no weights read, no memory used) and one training forward is
traced there to count exactly what autograd saves for backward (so frozen linears, which keep no
input, are counted as they behave). Terms, per rank:

  weights      frozen parameters in `model.dtype` (bf16 on GPU); trainable ones as fp32 masters
  grads        fp32, one per trainable parameter
  optimizer    AdamW exp_avg + exp_avg_sq, fp32 (8 bytes per trainable parameter)
  activations  saved-for-backward tensors of the micro-batch (B x T positions after image
               expansion); with gradient checkpointing: each decoder layer's input plus one
               layer's recompute, the rest as traced
  loss         the logits and their fp32 copy without `model.loss_chunk`, one chunk's with it,
               plus a trainable LM head's gradient (it exists while the loss runs backward)
  vision       the frozen vision tower runs under no_grad: its weights only (in `weights`)

Sharding (`--world W`): DDP replicates everything (plus gradient buckets, one more fp32 copy of
the grads, with more than one rank); ZeRO-2 shards grads + optimizer state over W; ZeRO-3 and FSDP2 shard every
parameter too (plus one gathered decoder layer). The peak is taken as weights + optimizer +
max(activations + loss, grads + one layer's activations, grads + AdamW's step temporaries).

What is checked and what is not: on CPU (fp32, no autocast) the prediction is compared with peaks
measured by `mmln.memtrack.PeakMemory` (tests/test_plan.py). bf16-mixed activations (traced
here with every weight in bf16, which is what autocast computes in), the CUDA caching allocator's
rounding and fragmentation, cuBLAS / SDPA workspaces, NCCL buffers and DeepSpeed / FSDP2
sharding overheads are modelled, not measured, until a GPU run (benchmarks/gpu_table2.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

import torch

from mmln.config import ConfigError, load_config

GB = 1e9
PAPER_7B = {"layernorm": 24.2, "layernorm_simple": 18.9, "lora": 29.4}  # Table 2, A100-80GB, GB
GPUS = (24, 40, 80, 141)


@dataclass
class Plan:
    strategy: str
    micro_batch: int
    seq_len: int
    checkpointing: bool
    sharding: str
    world: int
    weights: float
    grads: float
    optimizer: float
    activations: float
    loss: float
    layer_activations: float
    peak: float

    def gb(self) -> dict:
        return {k: (round(v / GB, 2) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def trace_activations(mllm, batch: int, seq_len: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(saved bytes of the whole forward, of one decoder layer, of each layer's input) for a
    right-padded micro-batch of `seq_len` text positions, traced on the meta device without
    checkpointing."""
    params = {p.untyped_storage()._cdata for p in mllm.parameters()}  # storages of weights: not activations
    seen: dict[int, int] = {}
    keep: list = []

    def pack(t):
        st = t.untyped_storage()
        if st._cdata not in params and st._cdata not in seen:
            seen[st._cdata] = st.nbytes()
            keep.append(st)
        return t

    layers = mllm.decoder_layers()
    marks = {}

    def mark(i):
        def hook(mod, args, kwargs):
            marks.setdefault(i, sum(seen.values()))
        return hook

    hooks = [layer.register_forward_pre_hook(mark(i), with_kwargs=True) for i, layer in enumerate(layers)]
    ids = torch.full((batch, seq_len), 5, dtype=torch.long)
    labels = ids.clone()
    host_ids = ids.clone()
    from mmln.model.mllm import HostBatch

    emb = mllm.llm.get_input_embeddings()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        e = emb(ids.to("meta")).to(dtype)
        e.requires_grad_(True)
        s = mllm.splice  # the loss path of forward, from inputs_embeds (the image rows are text rows here)
        del s
        base = mllm.llm.get_base_model() if hasattr(mllm.llm, "get_base_model") else mllm.llm
        mask = torch.ones(batch, seq_len, dtype=torch.long, device="meta")
        from mmln.model.mllm import Spliced

        sp = Spliced(e, mask, labels.to("meta"), torch.zeros(batch, seq_len, dtype=torch.bool, device="meta"))
        hidden = base.get_decoder()(inputs_embeds=e, attention_mask=mllm._train_mask(sp), use_cache=False).last_hidden_state
        after_layers = sum(seen.values())
    for h in hooks:
        h.remove()
    del host_ids, hidden
    per_layer = (after_layers - marks[0]) / len(layers)
    layer_input = batch * seq_len * e.shape[-1] * e.element_size()
    return int(after_layers), int(per_layer), int(layer_input)


def loss_bytes(batch: int, seq_len: int, vocab: int, act_bytes: int, chunk: int) -> int:
    """Logits + fp32 log-probs + their gradients at the loss's peak (a chunk's with chunking)."""
    n = min(chunk, batch * seq_len) if chunk else batch * seq_len
    upcast = act_bytes != 4  # bf16 logits get an fp32 copy and a bf16 gradient besides the fp32 ones
    return n * vocab * (4 + 4 + 4 + (2 * act_bytes if upcast else 0))


_TRACES: dict = {}


def _trace(cfg, strategy: str, seq_len: int, gpu: bool) -> dict:
    """Parameter bytes and traced activations of one sample (activations scale with the micro-batch)."""
    from mmln.config import to_yaml
    from mmln.model import build_mllm
    from mmln.tuning import apply_strategy

    key = (to_yaml(cfg), strategy, seq_len, gpu)
    if key in _TRACES:
        return _TRACES[key]
    cfg = cfg.copy()
    cfg.tune.strategy = strategy
    if strategy == "pretrain":
        cfg.stage = "pretrain"
    cfg.model.dtype = "bfloat16" if gpu else "float32"
    cfg.model.gradient_checkpointing = False  # traced without; checkpointing is applied to the counts
    dtype = torch.bfloat16 if gpu else torch.float32
    with torch.device("meta"):
        mllm = build_mllm(cfg.model, load_weights=False)
        apply_strategy(mllm, cfg.tune)
    out = {"trainable": sum(p.numel() for p in mllm.parameters() if p.requires_grad),
           "frozen": sum(p.numel() * p.element_size() for p in mllm.parameters() if not p.requires_grad),
           "layers": len(mllm.decoder_layers()), "vocab": mllm.llm.get_output_embeddings().weight.shape[0],
           "act_bytes": dtype.itemsize,
           "head_trainable": sum(p.numel() for p in mllm.llm.get_output_embeddings().parameters() if p.requires_grad)}
    if gpu:  # activations as autocast computes them: every weight in bf16 for the trace
        mllm.to(torch.bfloat16)
    out["total"], out["per_layer"], out["layer_in"] = trace_activations(mllm, 1, seq_len, dtype)
    _TRACES[key] = out
    return out


def plan(cfg, strategy: str, *, micro_batch: int, seq_len: int, checkpointing: bool, sharding: str = "ddp",
         world: int = 1, gpu: bool = True) -> Plan:
    """One strategy's per-rank prediction. `gpu=True`: bf16 frozen weights and activations (the
    bf16-mixed setting); `gpu=False`: everything fp32, as a CPU run."""
    t = _trace(cfg, strategy, seq_len, gpu)
    B, L, trainable = micro_batch, t["layers"], t["trainable"]
    per_layer = B * t["per_layer"]
    outside = B * (t["total"] - t["per_layer"] * L)
    act = outside + (L * B * t["layer_in"] + per_layer if checkpointing else per_layer * L)
    # a trainable head's fp32 gradient (and its per-chunk addend) exist while the loss runs backward
    loss = loss_bytes(B, seq_len, t["vocab"], t["act_bytes"], int(cfg.model.loss_chunk)) + 8.0 * t["head_trainable"]
    w_tr, g, o = 4.0 * trainable, 4.0 * trainable, 8.0 * trainable
    frozen = float(t["frozen"])
    if sharding == "ddp":
        g = 2 * g if world > 1 else g  # DDP's gradient buckets (gradient_as_bucket_view is off by default)
    elif sharding == "zero2":
        w_tr = (2.0 if gpu else 4.0) * trainable + 4.0 * trainable / world  # bf16 working copy + fp32 master shard
        g, o = g / world, o / world
    elif sharding in ("zero3", "fsdp2"):
        layer_w = (frozen + w_tr) / max(L, 1)
        frozen, w_tr, g, o = frozen / world + layer_w, w_tr / world, g / world, o / world
    else:
        raise ConfigError(f"unknown sharding '{sharding}' (ddp | zero2 | zero3 | fsdp2)")
    weights = frozen + w_tr
    # AdamW's step allocates temporaries: ~1 fp32 copy of the (local) trainables with CUDA's fused
    # foreach kernels (modelled), 3.5 measured on CPU, where foreach falls back to per-tensor ops
    step_tmp = (1.0 if gpu else 3.5) * 4.0 * trainable / (world if sharding != "ddp" else 1)
    peak = weights + o + max(act + loss, g + per_layer, g + step_tmp)
    return Plan(strategy, micro_batch, seq_len, checkpointing, sharding, world, weights, g, o, float(act), float(loss),
                float(per_layer), peak)


def fits(cfg, strategy: str, seq_len: int, gpu_gb: float, **kw) -> str:
    """The largest micro-batch (1..16) that fits `gpu_gb`, preferring no checkpointing."""
    for ckpt in (False, True):
        best = None
        for b in (16, 8, 4, 2, 1):
            if plan(cfg, strategy, micro_batch=b, seq_len=seq_len, checkpointing=ckpt, **kw).peak <= gpu_gb * GB * 0.95:
                best = b
                break
        if best:
            return f"mb {best}{' +ckpt' if ckpt else ''}"
    return "no fit"


def main(argv: list[str] | None = None) -> int:
    from mmln.tuning import REGISTRY

    ap = argparse.ArgumentParser(prog="python -m mmln.plan", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="run config YAML (default: schema defaults)")
    ap.add_argument("--strategy", help="'all', or one strategy name (default: the config's tune.strategy)")
    ap.add_argument("--sharding", default="ddp", help="ddp | zero2 | zero3 | fsdp2 (default ddp)")
    ap.add_argument("--world", type=int, default=1, help="ranks the sharding spans")
    ap.add_argument("--seq-len", type=int, default=None, help="positions per sample (default model.max_length)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        names = [n for n in REGISTRY if n != "pretrain"] if args.strategy == "all" else [args.strategy or cfg.tune.strategy]
        for n in names:
            if n not in REGISTRY:
                raise ConfigError(f"unknown strategy '{n}'; registered: {', '.join(REGISTRY)}")
        T = args.seq_len or int(cfg.model.max_length)
        mb, ckpt = int(cfg.train.micro_batch_size), bool(cfg.model.gradient_checkpointing)
        kw = dict(sharding=args.sharding, world=args.world)
        rows = [plan(cfg, n, micro_batch=mb, seq_len=T, checkpointing=ckpt, **kw) for n in names]
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.gb() for r in rows], indent=1))
        return 0
    print(f"model: {cfg.model.name}  micro-batch {mb} x {T} positions, checkpointing {'on' if ckpt else 'off'}, "
          f"{args.sharding} over {args.world}  (GB = 1e9 bytes; predicted, meta device)")
    head = f"{'strategy':<24}{'weights':>9}{'grads':>8}{'adam':>8}{'activ.':>8}{'loss':>7}{'peak':>8}{'paper':>7}"
    print(head + "".join(f"{str(g) + ' GB':>18}" for g in GPUS))
    for r in rows:
        g = r.gb()
        paper = PAPER_7B.get(r.strategy) if "7b" in str(cfg.model.name).lower() else None
        cells = "".join(f"{fits(cfg, r.strategy, T, gb, **kw):>18}" for gb in GPUS)
        print(f"{r.strategy:<24}{g['weights']:>9}{g['grads']:>8}{g['optimizer']:>8}{g['activations']:>8}{g['loss']:>7}"
              f"{g['peak']:>8}{(str(paper) if paper else '-'):>7}{cells}")
    print("paper: Table 2 (A100-80GB). Fit columns: the largest micro-batch that fits 95% of the card, "
          "checkpointing added only when needed.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
