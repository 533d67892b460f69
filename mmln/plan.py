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
max(activations + loss + one layer's saved tensors that require grad (the gradient temporaries
of the first layer backward runs through), grads + one layer's activations, grads + AdamW's step temporaries).
Attention is traced as the fused kernels save it (mask, q, k, v, output, log-sum-exp; never the
T x T probabilities): meta tensors would otherwise take the math fallback, which saves them.

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
PAPER = {"7B": PAPER_7B}
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


class _FusedAttention(torch.autograd.Function):
    """Scaled-dot-product attention on the meta device as the fused kernels keep it for backward
    (CPU flash and CUDA memory-efficient attention alike): the mask converted to the compute dtype,
    q, k, v, the output and an fp32 log-sum-exp per row; never the (T x T) probabilities, which
    the math fallback that meta tensors would otherwise take saves."""

    @staticmethod
    def forward(ctx, q, k, v, mask):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        saved = [q, k, v, out, lse]
        if mask is not None:
            saved.append(q.new_empty(mask.shape) if mask.dtype == torch.bool else mask)
        ctx.save_for_backward(*saved)
        return out

    @staticmethod
    def backward(ctx, grad):  # never run: the trace only counts what forward saves
        raise NotImplementedError


class fused_attention_on_meta:
    """Within the context, `F.scaled_dot_product_attention` on meta tensors is `_FusedAttention`."""

    def __enter__(self):
        import torch.nn.functional as F

        self._orig = orig = F.scaled_dot_product_attention

        def sdpa(query, key, value, attn_mask=None, *args, **kwargs):
            if query.device.type != "meta":
                return orig(query, key, value, attn_mask, *args, **kwargs)
            return _FusedAttention.apply(query, key, value, attn_mask)

        F.scaled_dot_product_attention = sdpa
        return self

    def __exit__(self, *exc):
        import torch.nn.functional as F

        F.scaled_dot_product_attention = self._orig


def trace_activations(mllm, batch: int, seq_len: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(saved bytes of the whole forward, of one decoder layer, of each layer's input, of one
    decoder layer's saved tensors that require grad) for a right-padded micro-batch of `seq_len`
    text positions, traced on the meta device without checkpointing. The last one sizes the
    gradient temporaries of a layer's backward (the attention mask, saved too, gets none)."""
    params = {p.untyped_storage()._cdata for p in mllm.parameters()}  # storages of weights: not activations
    seen: dict[int, int] = {}
    graded: dict[int, int] = {}
    keep: list = []

    def pack(t):
        st = t.untyped_storage()
        if st._cdata not in params and st._cdata not in seen:
            seen[st._cdata] = st.nbytes()
            keep.append(st)
            if t.requires_grad:
                graded[st._cdata] = st.nbytes()
        return t

    layers = mllm.decoder_layers()
    marks = {}

    def mark(i):
        def hook(mod, args, kwargs):
            marks.setdefault(i, (sum(seen.values()), sum(graded.values())))
        return hook

    hooks = [layer.register_forward_pre_hook(mark(i), with_kwargs=True) for i, layer in enumerate(layers)]
    ids = torch.full((batch, seq_len), 5, dtype=torch.long)
    labels = ids.clone()
    host_ids = ids.clone()
    from mmln.model.mllm import HostBatch

    emb = mllm.llm.get_input_embeddings()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), fused_attention_on_meta():
        e = emb(ids.to("meta")).to(dtype)
        e.requires_grad_(True)
        s = mllm.splice  # the loss path of forward, from inputs_embeds (the image rows are text rows here)
        del s
        base = mllm.llm.get_base_model() if hasattr(mllm.llm, "get_base_model") else mllm.llm
        mask = torch.ones(batch, seq_len, dtype=torch.long, device="meta")
        from mmln.model.mllm import Spliced

        sp = Spliced(e, mask, labels.to("meta"), torch.zeros(batch, seq_len, dtype=torch.bool, device="meta"))
        hidden = base.get_decoder()(inputs_embeds=e, attention_mask=mllm._train_mask(sp), use_cache=False).last_hidden_state
        after_layers, after_graded = sum(seen.values()), sum(graded.values())
    for h in hooks:
        h.remove()
    del host_ids, hidden
    per_layer = (after_layers - marks[0][0]) / len(layers)
    per_layer_graded = (after_graded - marks[0][1]) / len(layers)
    layer_input = batch * seq_len * e.shape[-1] * e.element_size()
    return int(after_layers), int(per_layer), int(layer_input), int(per_layer_graded)


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
    out["total"], out["per_layer"], out["layer_in"], out["per_layer_graded"] = trace_activations(mllm, 1, seq_len, dtype)
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
    # backward starts with every activation and the loss's buffers alive; the last layer's backward
    # then adds gradient temporaries of about one layer's saved tensors that require grad
    peak = weights + o + max(act + loss + B * t["per_layer_graded"], g + per_layer, g + step_tmp)
    return Plan(strategy, micro_batch, seq_len, checkpointing, sharding, world, weights, g, o, float(act), float(loss),
                float(per_layer), peak)


def cpu_check(cfg, strategy: str, *, micro_batch: int, seq_len: int, checkpointing: bool) -> tuple[float, int]:
    """(predicted, measured) extra bytes of one steady-state optimizer step on CPU (fp32): forward,
    backward and AdamW on a real model built from `cfg`, measured by mmln.memtrack.PeakMemory on
    the second step (weights and Adam state already exist, so they are left out of both)."""
    from mmln.memtrack import PeakMemory
    from mmln.model import build_mllm
    from mmln.tuning import apply_strategy

    cfg = cfg.copy()
    cfg.tune.strategy = strategy
    cfg.model.gradient_checkpointing = checkpointing
    p = plan(cfg, strategy, micro_batch=micro_batch, seq_len=seq_len, checkpointing=checkpointing, gpu=False)
    torch.manual_seed(0)
    m = build_mllm(cfg.model).train()
    apply_strategy(m, cfg.tune)
    opt = torch.optim.AdamW([q for q in m.parameters() if q.requires_grad], lr=1e-5)
    ids = torch.randint(3, int(cfg.model.llm.vocab_size), (micro_batch, seq_len))
    for _ in range(2):
        with PeakMemory() as pm:
            m(ids, None, ids).loss.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)
    return p.peak - p.weights - p.optimizer, pm.peak_bytes()


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
    ap.add_argument("--table2", action="store_true", help="Table 2's strategies at 7B and 13B side by side "
                    "(the 7B / 13B presets; overrides apply to both)")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = ap.parse_args(argv)
    if args.table2:
        return table2(args)
    skipped = []
    try:
        cfg = load_config(args.config, args.overrides)
        names = [n for n in REGISTRY if n != "pretrain"] if args.strategy == "all" else [args.strategy or cfg.tune.strategy]
        for n in names:
            if n not in REGISTRY:
                raise ConfigError(f"unknown strategy '{n}'; registered: {', '.join(REGISTRY)}")
        T = args.seq_len or int(cfg.model.max_length)
        mb, ckpt = int(cfg.train.micro_batch_size), bool(cfg.model.gradient_checkpointing)
        kw = dict(sharding=args.sharding, world=args.world)
        rows = []
        for n in names:
            try:
                rows.append(plan(cfg, n, micro_batch=mb, seq_len=T, checkpointing=ckpt, **kw))
            except (ConfigError, ValueError) as e:
                if args.strategy != "all":
                    raise
                skipped.append(f"{n} ({str(e).split(';')[0]})")  # a strategy this model has nothing for (bitfit on LLaMA)
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
    for n in skipped:
        print(f"not applicable here: {n}")
    return 0


TABLE2 = ("finetune", "attn_mlp", "attn_qv", "lora", "layernorm", "layernorm_simple")
PRESETS = {"7B": "conf/vicuna7b_ln.yaml", "13B": "conf/llama2_13b_ln.yaml"}


def table2(args) -> int:
    """Table 2's shape: predicted peak per strategy at 7B and 13B side by side (each preset's
    micro-batch, checkpointing and max length, one GPU unless --sharding/--world), the paper's
    figures beside them, and the fit on an 80 GB card."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    try:
        cfgs = {k: load_config(root / v, args.overrides) for k, v in PRESETS.items()}
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    kw = dict(sharding=args.sharding, world=args.world)
    c7 = cfgs["7B"]
    say = (lambda *a: None) if args.json else print
    say(f"Table 2 (predicted, GB = 1e9 bytes): micro-batch {c7.train.micro_batch_size} x "
          f"{args.seq_len or c7.model.max_length} positions, checkpointing "
          f"{'on' if c7.model.gradient_checkpointing else 'off'}, {args.sharding} over {args.world}")
    say(f"{'strategy':<18}" + "".join(f"{k + ' peak':>10}{k + ' paper':>11}{k + ' on 80 GB':>14}" for k in cfgs))
    out = []
    for n in TABLE2:
        cells, row = "", {"strategy": n}
        for k, cfg in cfgs.items():
            T = args.seq_len or int(cfg.model.max_length)
            p = plan(cfg, n, micro_batch=int(cfg.train.micro_batch_size), seq_len=T,
                     checkpointing=bool(cfg.model.gradient_checkpointing), **kw)
            paper = PAPER.get(k, {}).get(n)
            row[k] = {"peak": round(p.peak / GB, 2), "paper": paper, "fit_80gb": fits(cfg, n, T, 80, **kw)}
            cells += f"{row[k]['peak']:>10}{(str(paper) if paper else '-'):>11}{row[k]['fit_80gb']:>14}"
        out.append(row)
        if not args.json:
            print(f"{n:<18}{cells}")
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print("paper: Table 2 (A100-80GB; '-' = not reported or not recorded here: full finetune and MLP tuning ran "
              "out of memory there, and its 13B figures are not in this repository).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
