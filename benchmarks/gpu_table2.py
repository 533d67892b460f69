"""The GPU check of Table 2: measured peak memory, step time, tokens/s and MFU per tuning strategy at
7B and 13B, each next to `mmln.plan`'s prediction; plus two-process DeepSpeed ZeRO-2 / FSDP2 smoke runs.

    python benchmarks/gpu_table2.py --out gpu_table2.json            # one H100 / H200, < 10 minutes
    python benchmarks/gpu_table2.py --tiny --out /tmp/t2.json         # CPU, tiny model, seconds (the test)

No weights are downloaded: each model is built from its preset (conf/vicuna7b_ln.yaml,
conf/llama2_13b_ln.yaml) on the meta device, materialised on the device with `to_empty` and
given random weights by the models' own initialisers (`initialize_weights`, which also rebuilds
the non-persistent buffers: rotary frequencies, CLIP position ids); then the tuning strategy is
applied as in a run (trainables fp32, frozen weights bf16). Each row trains `--steps` optimizer
steps (after one warm-up step) on full-length micro-batches: the preset's micro-batch of
`model.max_length` positions after image expansion (one image each), bf16 autocast, the run's
AdamW parameter groups and grad-norm clipping, gradient checkpointing on and off.

Per row: `peak_gb` (max_memory_allocated over build + steps: weights, optimizer state,
activations; `reserved_gb` beside it), `step_s` (median), `tokens_per_s`, `mfu` (model FLOPs
per step / step time / the card's dense bf16 peak: forward 2 x every matmul weight per token,
backward 2 x per token for input gradients through the LLM plus 2 x the trainable matmul
weights, attention 4 x L x T^2 x d forward and twice that backward; recomputation under
checkpointing is not counted), and `planned_gb` (`mmln.plan.plan(...).peak`). A row the planner
predicts over 1.05 x the card is skipped and says so; one that runs out of memory says "oom";
rows are run in priority order and those left when `--budget-s` is spent say "time budget".

On CPU (`--tiny`, conf/model/tiny.yaml, fp32, no autocast) the peak comes from
mmln.base.memtrack.PeakMemory and the planner is asked for its CPU (fp32) prediction; the smoke runs
use 2 gloo processes with `train.strategy=ddp` (DeepSpeed needs CUDA) and `fsdp2`.
Writes one JSON file ({"device", "rows": [...], "smoke": [...]}) and prints each row as a JSON line.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from mmln.base.io import write_json  # noqa: E402

GB = 1e9
STRATEGIES = ["layernorm", "layernorm_simple", "lora", "attn_qv", "attn_mlp", "finetune"]
MODELS = {"7b": ROOT / "conf/vicuna7b_ln.yaml", "13b": ROOT / "conf/llama2_13b_ln.yaml"}
TINY = ROOT / "conf/model/tiny.yaml"
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}  # dense bf16


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def rows_to_run(models: list[str], strategies: list[str]) -> list[tuple[str, str, bool]]:
    """Priority order: the paper's measured strategies with checkpointing (its setting) at 7B first,
    then the rest, then checkpointing off, then 13B in the same order."""
    out = []
    for model in models:
        for ckpt in (True, False):
            out += [(model, s, ckpt) for s in strategies]
    return out


def materialise(mllm, device: torch.device) -> None:
    """Meta tensors -> random weights on `device`: every Hugging Face sub-model through its own
    initialiser (weights and non-persistent buffers), the rest (the connector) as nn.Linear does."""
    from transformers import PreTrainedModel

    mllm.to_empty(device=device)
    with torch.no_grad():
        for m in mllm.modules():
            if isinstance(m, torch.nn.Linear):
                m.reset_parameters()
        done = set()
        for name, m in mllm.named_modules():
            if isinstance(m, PreTrainedModel) and not any(name.startswith(d + ".") for d in done):
                m.initialize_weights()
                done.add(name)


def model_flops(mllm, batch: int, seq_len: int) -> float:
    """Model FLOPs of one training step on a (batch, seq_len) micro-batch (see the module docstring)."""
    def linear_numel(module, trainable_only=False):
        return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear)
                   and (m.weight.requires_grad or not trainable_only))

    tokens = batch * seq_len
    llm, tr = linear_numel(mllm.llm), linear_numel(mllm, trainable_only=True)
    cfg = mllm.llm.config
    attn_fwd = 4.0 * cfg.num_hidden_layers * batch * seq_len ** 2 * cfg.hidden_size
    v = mllm.vision
    vision = 2.0 * batch * (v.num_patches + 1) * linear_numel(v) + 2.0 * batch * linear_numel(mllm.connector) * v.num_patches
    return tokens * (2.0 * llm + 2.0 * llm + 2.0 * tr) + 3.0 * attn_fwd + vision


def one_row(cfg, strategy: str, ckpt: bool, device: torch.device, steps: int, flops_peak: float | None) -> dict:
    from mmln.base.constants import IMAGE_TOKEN_INDEX
    from mmln.lit.module import param_groups
    from mmln.base.memtrack import PeakMemory
    from mmln.model import build_mllm
    from mmln.model.mllm import HostBatch
    from mmln.tuning import apply_strategy

    cfg = cfg.copy()
    cfg.tune.strategy = strategy
    cfg.model.gradient_checkpointing = ckpt
    B, T = int(cfg.train.micro_batch_size), int(cfg.model.max_length)
    gpu = device.type == "cuda"
    meter = None if gpu else PeakMemory()
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        meter.__enter__()
    try:
        torch.manual_seed(0)
        with torch.device("meta"):
            mllm = build_mllm(cfg.model, load_weights=False)
        materialise(mllm, device)
        apply_strategy(mllm, cfg.tune)  # on the device: trainables become fp32 masters, LoRA is injected
        mllm.train()
        opt = torch.optim.AdamW(param_groups(mllm, 1e-5, 0.0), lr=1e-5, betas=(0.9, 0.999), eps=1e-8)
        trainable = [p for p in mllm.parameters() if p.requires_grad]
        P = mllm.vision.num_patches
        ids = torch.randint(3, int(cfg.model.llm.vocab_size), (B, T - P + 1))
        ids[:, 1] = IMAGE_TOKEN_INDEX  # one image each: exactly T positions after expansion
        mask = torch.ones_like(ids)
        host = HostBatch(ids, mask, ids)
        size = int(cfg.model.vision.image_size)
        vdtype = next(mllm.vision.parameters()).dtype
        px = torch.randn(B, 3, size, size, device=device, dtype=vdtype)
        ids_d, mask_d = ids.to(device), mask.to(device)
        times, losses = [], []
        for i in range(steps + 1):  # the first step warms up (allocator, kernels) and is not timed
            if gpu:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
                loss = mllm(ids_d, mask_d, ids_d, px, host=host).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if gpu:
                torch.cuda.synchronize(device)
            if i:
                times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
        step = statistics.median(times)
        flops = model_flops(mllm, B, T)
        row = {"micro_batch": B, "seq_len": T, "trainable": sum(p.numel() for p in trainable),
               "step_s": round(step, 4), "tokens_per_s": round(B * T / step, 1),
               "tflops_per_s": round(flops / step / 1e12, 2),
               "mfu": round(flops / step / (flops_peak * 1e12), 4) if flops_peak else None,
               "loss_finite": all(map(lambda x: x == x and abs(x) != float("inf"), losses))}
        if gpu:
            row["peak_bytes"] = torch.cuda.max_memory_allocated(device) - base
            row["peak_gb"] = round(row["peak_bytes"] / GB, 3)
            row["reserved_gb"] = round(torch.cuda.max_memory_reserved(device) / GB, 3)
    finally:
        if meter is not None:
            meter.__exit__(None, None, None)
    if meter is not None:
        row["peak_bytes"] = meter.peak_bytes("cpu")
        row["peak_gb"] = round(row["peak_bytes"] / GB, 6)
    del mllm, opt, trainable, loss
    return row


def smoke(strategy: str, tiny: bool, workdir: Path) -> dict:
    """Two ranks of `python -m mmln.fit` on the tiny model and synthetic data, 2 optimizer steps."""
    out = {"smoke": strategy, "processes": 2}
    if not tiny and torch.cuda.device_count() < 2:
        return {**out, "status": "skipped: needs 2 GPUs (NCCL does not put two ranks on one device)"}
    from mmln.data.synth import synthesize, text_corpus
    from mmln.data.tokenizer import train_tiny_tokenizer

    world = workdir / "world"
    if not (world / "tokenizer").exists():
        synthesize(world, image_size=64, n_pretrain=8, n_instruct=16, n_mme_per_subtask=1, n_pope_images=2,
                   n_vqa_images=2, n_caption_images=2, seed=0)
        train_tiny_tokenizer(text_corpus(500, seed=0), world / "tokenizer", vocab_size=512)
    args = [f"model.llm.tokenizer={world / 'tokenizer'}", f"output_dir={workdir / 'outputs'}", "data.num_workers=0",
            "stage=instruct", "data.template=vicuna_v1", "tune.strategy=finetune",
            f"data.train.files=[{world / 'llava_instruct/llava_instruct_80k.json'}]",
            f"data.train.image_folder={world / 'coco/train2017'}", "train.global_batch_size=4",
            "train.micro_batch_size=2", "train.max_steps=2", "train.devices=2", f"train.strategy={strategy}",
            f"run_name=smoke-{strategy.replace('/', '_')}", "tracking.experiment=gpu_table2_smoke",
            f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", "analysis.grad_every_n_steps=0",
            "analysis.similarity=false", "quiet=true"]
    if tiny:
        args.append("train.accelerator=cpu")
    env = {**os.environ, "MMLN_QUIET": "1", "MASTER_PORT": str(free_port()), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mmln.fit", "--config", str(TINY), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    if proc.returncode:
        return {**out, "status": f"failed (exit {proc.returncode})", "stderr_tail": proc.stderr[-1500:]}
    run = workdir / "outputs/gpu_table2_smoke" / f"smoke-{strategy.replace('/', '_')}"
    eff = run / "efficiency.json"
    return {**out, "status": "ok", "trainable_saved": (run / "trainable.safetensors").is_file(),
            "efficiency": json.loads(eff.read_text()) if eff.is_file() else None}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    from mmln.config import load_config
    from mmln.fit import lightning_strategy  # noqa: F401  (a missing Lightning fails here, not mid-run)
    from mmln.plan import plan

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_table2.json", help="the JSON file written (default ./gpu_table2.json)")
    ap.add_argument("--tiny", action="store_true", help="CPU, conf/model/tiny.yaml: the test's end-to-end path")
    ap.add_argument("--models", default="7b,13b", help="comma list of 7b,13b")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--steps", type=int, default=None, help="timed steps per row (default 3; 1 with --tiny)")
    ap.add_argument("--budget-s", type=float, default=480, help="no new row starts after this many seconds")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak (MFU); "
                    "known for " + ", ".join(PEAK_BF16_TFLOPS))
    ap.add_argument("--no-smoke", action="store_true", help="skip the two-process smoke runs")
    ap.add_argument("--smoke", default="deepspeed_stage_2,fsdp2", help="train.strategy of each smoke run")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    if not args.tiny and not torch.cuda.is_available():
        print("error: no CUDA device; pass --tiny for the CPU check", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.tiny else torch.device("cuda", 0)
    gpu = device.type == "cuda"
    steps = args.steps or (3 if gpu else 1)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True  # as mmln.fit sets for its runs
    capacity = torch.cuda.get_device_properties(device).total_memory if gpu else None
    tflops = peak_tflops(device, args.peak_tflops)
    strategies = [s for s in args.strategies.split(",") if s]
    models = ["tiny"] if args.tiny else [m for m in args.models.split(",") if m]
    cfgs = {"tiny": load_config(TINY, ["model.loss_chunk=64"])} if args.tiny else \
        {m: load_config(MODELS[m], ["model.dtype=bfloat16"]) for m in models}
    report = {"device": torch.cuda.get_device_name(device) if gpu else "cpu", "torch": torch.__version__,
              "capacity_gb": round(capacity / GB, 2) if capacity else None, "peak_tflops": tflops,
              "steps": steps, "rows": [], "smoke": []}
    with tempfile.TemporaryDirectory(prefix="mmln-gpu-table2-") as tmp:
        if not args.no_smoke:
            for s in [s for s in args.smoke.split(",") if s]:
                s = "ddp" if args.tiny and s.startswith("deepspeed") else s
                r = smoke(s, args.tiny, Path(tmp))
                print(json.dumps(r), flush=True)
                report["smoke"].append(r)
        for model, strategy, ckpt in rows_to_run(models, strategies):
            cfg = cfgs[model]
            row = {"model": model, "strategy": strategy, "checkpointing": ckpt}
            p = plan(cfg, strategy, micro_batch=int(cfg.train.micro_batch_size), seq_len=int(cfg.model.max_length),
                     checkpointing=ckpt, gpu=gpu)
            row["planned_gb"] = round(p.peak / GB, 3 if gpu else 6)
            if time.perf_counter() - t_start > args.budget_s:
                row["status"] = "skipped: time budget"
            elif capacity and p.peak > 1.05 * capacity:
                row["status"] = f"skipped: planned {p.peak / GB:.1f} GB > the card's {capacity / GB:.1f} GB"
            else:
                try:
                    row.update(one_row(cfg, strategy, ckpt, device, steps, tflops), status="ok")
                    row["planned_over_measured"] = round(p.peak / row["peak_bytes"], 3)
                except torch.OutOfMemoryError:
                    row["status"] = "oom"
                gc.collect()
                if gpu:
                    torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)
            report["rows"].append(row)
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    write_json(args.out, report, indent=1)
    print(f"wrote {args.out} ({report['wall_s']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
