"""python -m mmln.plan --config CFG [--strategy all|NAME] [--json] [key=value ...]

Predicts peak GPU memory per tuning strategy before a run, from the architecture alone: the
model is built on the meta device (no weights read, no memory used) and one steady-state
optimizer step (forward, backward, AdamW) is run there under mmln.base.memtrack.PeakMemory, which
counts every tensor the step allocates until it is freed: what autograd saves (frozen linears
keep no input), what gradient checkpointing recomputes, the chunked loss's buffers, the
gradients as they appear, backward's temporaries and AdamW's. Terms, per rank:

  weights      frozen parameters in `model.dtype` (bf16 on GPU); trainable ones as fp32 masters
  grads        fp32, one per trainable parameter
  optimizer    AdamW exp_avg + exp_avg_sq, fp32 (8 bytes per trainable parameter)
  activations  what the forward leaves saved for backward (micro-batch B x T positions after image
               expansion, the loss's saved inputs included); shown, part of the next term
  f+b          the simulated peak of forward + backward above weights and optimizer state
  step         the simulated peak of the AdamW step: the grads + its temporaries (CUDA's foreach
               kernels: about one fp32 copy of the trainables; CPU's per-tensor loop: two of the
               largest tensor)
  vision       the frozen vision tower runs under no_grad: its weights only (in `weights`)

peak = weights + optimizer + max(f+b, step). On the GPU path the step is simulated in bf16 (what
autocast computes in), so gradients and AdamW temporaries are widened to fp32 and autocast's bf16
copies of fp32 trainable matmul weights (saved for backward) are added.
Sharding (`--world W`): DDP replicates everything (plus gradient buckets, one more fp32 copy of
the grads, with more than one rank); ZeRO-2 shards grads + optimizer state over W (the grads
at each moment of the simulated backward); ZeRO-3 and FSDP2 shard every parameter too (plus
one gathered decoder layer). Attention runs as the fused kernels keep it (mask, q, k, v, output,
log-sum-exp; never the T x T probabilities): meta tensors would otherwise take the math fallback.

What is checked and what is not: on CPU (fp32, no autocast) the prediction is compared with the
peak of a real step measured by `mmln.base.memtrack.PeakMemory` (tests/test_plan.py; the meter itself
against the allocator's events from torch.profiler). bf16-mixed activations, the CUDA caching
allocator's rounding and fragmentation, cuBLAS / SDPA workspaces and what CUDA's attention
kernels keep, NCCL buffers, grad-norm clipping's buffers and DeepSpeed / FSDP2 sharding
overheads are modelled, not measured, until a GPU run (benchmarks/gpu_table2.py).
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
    activations: float  # saved for backward when the forward ends (loss included)
    backward: float  # peak extra bytes of forward + backward (activations, loss buffers, grads, temporaries)
    step: float  # peak extra bytes of the AdamW step (grads + its temporaries)
    peak: float

    def gb(self) -> dict:
        return {k: (round(v / GB, 2) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class _FusedAttention(torch.autograd.Function):
    """Scaled-dot-product attention on the meta device as the fused kernels keep it for backward
    (CPU flash and CUDA memory-efficient attention alike): the mask converted to the compute dtype,
    q, k, v, the output and an fp32 log-sum-exp per row; never the (T x T) probabilities, which
    the math fallback that meta tensors would otherwise take saves. Backward makes dq, dk, dv."""

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
    def backward(ctx, grad):
        q, k, v = ctx.saved_tensors[:3]
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), None


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


_MODELS: dict = {}
_SIMS: dict = {}


def _meta_model(cfg, strategy: str, checkpointing: bool, gpu: bool):
    """(model, AdamW with its state already made, facts) on the meta device, built as a run builds it."""
    from mmln.config import to_yaml
    from mmln.model import build_mllm
    from mmln.tuning import apply_strategy

    key = (to_yaml(cfg), strategy, checkpointing, gpu)
    if key not in _MODELS:
        cfg = cfg.copy()
        cfg.tune.strategy = strategy
        if strategy == "pretrain":
            cfg.stage = "pretrain"
        cfg.model.dtype = "bfloat16" if gpu else "float32"
        cfg.model.gradient_checkpointing = checkpointing
        with torch.device("meta"):
            mllm = build_mllm(cfg.model, load_weights=False)
            apply_strategy(mllm, cfg.tune)
        trainable = [p for p in mllm.parameters() if p.requires_grad]
        facts = {"trainable": sum(p.numel() for p in trainable),
                 "frozen": sum(p.numel() * p.element_size() for p in mllm.parameters() if not p.requires_grad),
                 "layers": len(mllm.decoder_layers()),
                 # trainable matmul weights: under autocast each gets a bf16 copy, saved for backward
                 "linear_trainable": sum(m.weight.numel() for m in mllm.modules()
                                         if isinstance(m, torch.nn.Linear) and m.weight.requires_grad)}
        if gpu:  # activations as autocast computes them: every weight in bf16 for the simulation
            mllm.to(torch.bfloat16)
        mllm.train()
        # CUDA's AdamW runs foreach kernels (one temporary per tensor list); CPU's runs tensor by tensor
        opt = torch.optim.AdamW(trainable, lr=1e-5, foreach=gpu)
        for p in trainable:
            p.grad = torch.empty_like(p)
        opt.step()  # the state exists before the step that is measured, as in a steady-state step
        opt.zero_grad(set_to_none=True)
        _MODELS[key] = mllm, opt, facts
    return _MODELS[key]


def _sample_batch(mllm, batch: int, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(input_ids, image features) of `batch` samples that are `seq_len` positions after image
    expansion, each with one image (as LLaVA's instruction data) where the length allows, every
    text position supervised. The features are the vision tower's output: the frozen tower runs
    under no_grad and keeps nothing, so the step's memory starts at the connector."""
    from mmln.base.constants import IMAGE_TOKEN_INDEX

    P = mllm.vision.num_patches
    if seq_len < P + 2:
        return torch.full((batch, seq_len), 5, dtype=torch.long), None
    ids = torch.full((batch, seq_len - P + 1), 5, dtype=torch.long)
    ids[:, 1] = IMAGE_TOKEN_INDEX
    dtype = next(mllm.vision.parameters()).dtype
    return ids, torch.zeros(batch, P, mllm.vision.hidden_size, dtype=dtype, device=device)


def simulate(cfg, strategy: str, *, micro_batch: int, seq_len: int, checkpointing: bool, gpu: bool) -> dict:
    """One steady-state optimizer step (forward, backward, AdamW) of a right-padded micro-batch of
    `seq_len` text positions, run on the meta device under mmln.base.memtrack.PeakMemory: every
    tensor it allocates is counted until freed, exactly as autograd, checkpointing and the
    chunked loss allocate and free them (one image per sample where `seq_len` allows; the frozen
    vision tower runs under no_grad before and keeps nothing: the step starts from its
    features). Returns bytes on top of weights
    and optimizer state: `saved` (alive when the forward ends), `timeline` ((allocated, of which
    parameter gradients) after each allocation of forward + backward), `grads`, `step` (peak of
    the AdamW step)."""
    from mmln.base.memtrack import PeakMemory
    from mmln.model.mllm import HostBatch

    mllm, opt, facts = _meta_model(cfg, strategy, checkpointing, gpu)
    key = (id(mllm), micro_batch, seq_len)
    if key in _SIMS:
        return _SIMS[key]
    grad_bytes = [0]
    timeline: list[tuple[int, int]] = []
    hooks = [p.register_post_accumulate_grad_hook(
             lambda p: grad_bytes.__setitem__(0, grad_bytes[0] + p.grad.untyped_storage().nbytes()))
             for p in mllm.parameters() if p.requires_grad]
    ids, features = _sample_batch(mllm, micro_batch, seq_len, "meta")
    meta = ids.to("meta")
    pm = PeakMemory(on_alloc=lambda dev, cur: timeline.append((cur, grad_bytes[0])) if dev == "meta" else None)
    try:
        with fused_attention_on_meta(), pm:
            loss = mllm(meta, None, meta, image_features=features, host=HostBatch(ids, None, ids)).loss
            saved = pm.current["meta"]
            loss.backward()
            del loss
            grads = pm.current["meta"]
            pm.reset_peak("meta")
            opt.step()
            step = pm.peak_bytes("meta")
    finally:
        for h in hooks:
            h.remove()
        opt.zero_grad(set_to_none=True)
    _SIMS[key] = out = {"saved": saved, "timeline": timeline, "grads": grads, "step": step, **facts}
    return out


def plan(cfg, strategy: str, *, micro_batch: int, seq_len: int, checkpointing: bool, sharding: str = "ddp",
         world: int = 1, gpu: bool = True) -> Plan:
    """One strategy's per-rank prediction. `gpu=True`: bf16 frozen weights and activations (the
    bf16-mixed setting); `gpu=False`: everything fp32, as a CPU run."""
    if sharding not in ("ddp", "zero2", "zero3", "fsdp2"):
        raise ConfigError(f"unknown sharding '{sharding}' (ddp | zero2 | zero3 | fsdp2)")
    s = simulate(cfg, strategy, micro_batch=micro_batch, seq_len=seq_len, checkpointing=checkpointing, gpu=gpu)
    L, trainable = s["layers"], s["trainable"]
    # simulated in bf16 on the GPU path, the gradients and AdamW's temporaries are fp32 in a run
    widen = 2 if gpu else 1
    shard = world if sharding != "ddp" else 1  # ranks the gradients and optimizer state are split over
    w_tr, g, o = 4.0 * trainable, 4.0 * trainable, 8.0 * trainable
    frozen = float(s["frozen"])
    if sharding == "zero2":
        w_tr = (2.0 if gpu else 4.0) * trainable + 4.0 * trainable / world  # bf16 working copy + fp32 master shard
    elif sharding in ("zero3", "fsdp2"):
        layer_w = (frozen + w_tr) / max(L, 1)
        frozen, w_tr = frozen / world + layer_w, w_tr / world
    g, o = g / shard, o / shard
    weights = frozen + w_tr
    # forward + backward: at each moment, what is allocated, gradients widened to fp32 and sharded
    backward = max(cur - gr + gr * widen / shard for cur, gr in s["timeline"]) if s["timeline"] else 0.0
    if gpu:  # autocast's bf16 copies of fp32 trainable matmul weights live from forward to backward
        backward += 2.0 * s["linear_trainable"]
    if sharding == "ddp" and world > 1:
        backward += g  # DDP's gradient buckets (gradient_as_bucket_view is off by default)
        g = 2 * g
    step = widen * s["step"] / shard
    peak = weights + o + max(backward, step)
    return Plan(strategy, micro_batch, seq_len, checkpointing, sharding, world, weights, g, o,
                float(s["saved"]), float(backward), float(step), peak)


def cpu_check(cfg, strategy: str, *, micro_batch: int, seq_len: int, checkpointing: bool) -> tuple[float, int]:
    """(predicted, measured) extra bytes of one steady-state optimizer step on CPU (fp32): forward,
    backward and AdamW on a real model built from `cfg`, measured by mmln.base.memtrack.PeakMemory on
    the second step (weights and Adam state already exist, so they are left out of both)."""
    from mmln.base.memtrack import PeakMemory
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
    ids, features = _sample_batch(m, micro_batch, seq_len, "cpu")
    ids = torch.where(ids == 5, torch.randint(3, int(cfg.model.llm.vocab_size), ids.shape), ids)
    for _ in range(2):
        with PeakMemory() as pm:
            m(ids, None, ids, image_features=features).loss.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)
    return p.peak - p.weights - p.optimizer, pm.peak_bytes()


def fits(cfg, strategy: str, seq_len: int, gpu_gb: float, **kw) -> str:
    """The largest micro-batch (1..16) that fits `gpu_gb`, preferring no checkpointing. The peak
    grows with the micro-batch, so each setting is bisected (at most 3 simulations, 1 if even a
    micro-batch of 1 does not fit)."""
    ok = lambda b, ckpt: plan(cfg, strategy, micro_batch=b, seq_len=seq_len, checkpointing=ckpt,  # noqa: E731
                              **kw).peak <= gpu_gb * GB * 0.95
    for ckpt in (False, True):
        if not ok(1, ckpt):
            continue
        sizes, lo, hi = (1, 2, 4, 8, 16), 0, 4  # sizes[lo] fits; find the largest that does
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if ok(sizes[mid], ckpt) else (lo, mid - 1)
        return f"mb {sizes[lo]}{' +ckpt' if ckpt else ''}"
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
    head = f"{'strategy':<24}{'weights':>9}{'grads':>8}{'adam':>8}{'activ.':>8}{'f+b':>7}{'step':>7}{'peak':>8}{'paper':>7}"
    print(head + "".join(f"{str(g) + ' GB':>18}" for g in GPUS))
    for r in rows:
        g = r.gb()
        paper = PAPER_7B.get(r.strategy) if "7b" in str(cfg.model.name).lower() else None
        cells = "".join(f"{fits(cfg, r.strategy, T, gb, **kw):>18}" for gb in GPUS)
        print(f"{r.strategy:<24}{g['weights']:>9}{g['grads']:>8}{g['optimizer']:>8}{g['activations']:>8}{g['backward']:>7}{g['step']:>7}"
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
    figures beside them, and whether that setting fits 95% of an 80 GB card."""
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
    say(f"{'strategy':<18}" + "".join(f"{k + ' peak':>10}{k + ' paper':>11}{k + ' fits 80 GB':>15}" for k in cfgs))
    out = []
    for n in TABLE2:
        cells, row = "", {"strategy": n}
        for k, cfg in cfgs.items():
            T = args.seq_len or int(cfg.model.max_length)
            p = plan(cfg, n, micro_batch=int(cfg.train.micro_batch_size), seq_len=T,
                     checkpointing=bool(cfg.model.gradient_checkpointing), **kw)
            paper = PAPER.get(k, {}).get(n)
            row[k] = {"peak": round(p.peak / GB, 2), "paper": paper, "fits_80gb": p.peak <= 80 * GB * 0.95}
            cells += f"{row[k]['peak']:>10}{(str(paper) if paper else '-'):>11}{'yes' if row[k]['fits_80gb'] else 'no':>15}"
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
