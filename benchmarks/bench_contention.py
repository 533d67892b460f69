"""Why a busy machine slows the demo far more than its fair share: one demo stage's training step
(the stand-in vision tower's, `mmln.demo.pretrain.pretrain_vision_encoder`: a tiny CLIP ViT and its
linear head, batch 64, AdamW) timed under a fixed background load of `--busy` processes that spin
(`python -c 'while 1: pass'`), for each thread setting, interleaved round by round so a drifting
machine load hits every setting alike.

    python benchmarks/bench_contention.py [--busy 2] [--steps 20] [--rounds 3] [--configs default threads1 passive]

Settings: `default` (torch's intra-op threads = the cores it sees, OpenMP's default wait policy),
`threads1` (one intra-op thread), `passive` (OMP_WAIT_POLICY=PASSIVE: waiting threads sleep instead of
spinning), `passive1` (both), `spin10k` / `spin1k` (libgomp's GOMP_SPINCOUNT: spin that many rounds
before sleeping; its default is 300k, a fraction of a millisecond). Prints one JSON line per
setting: median seconds per step and every round's figure, plus the machine's core count and load.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "default": {},  # OpenMP's own wait policy (libgomp: spin, then sleep), as before mmln set PASSIVE
    "threads1": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "passive1": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "spin10k": {"GOMP_SPINCOUNT": "10000"},  # libgomp: spin 10k rounds (default 300k), then sleep
    "spin1k": {"GOMP_SPINCOUNT": "1000"},
}


def child(steps: int) -> None:
    """Time `steps` training steps of the demo's vision tower (after 3 warm-up steps); print s/step."""
    import torch
    import torch.nn.functional as F
    from transformers import CLIPVisionModel

    sys.path.insert(0, str(ROOT))
    from mmln.config import load_config
    from mmln.demo.pretrain import CONF
    from mmln.model.vision import VisionEncoder, hf_clip_config

    torch.manual_seed(0)
    vcfg = load_config(CONF / "base.yaml", ["model.vision.path=null"]).model.vision
    backbone = CLIPVisionModel(hf_clip_config(vcfg))
    n = VisionEncoder(vcfg, backbone).num_patches
    head = torch.nn.Linear(n * vcfg.hidden_size, 64)
    x = torch.randn(256, 3, vcfg.image_size, vcfg.image_size)
    y = torch.randint(0, 64, (256,))
    params = [*backbone.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)

    def step() -> None:
        rows = torch.randint(0, len(x), (64,))
        feats = backbone(pixel_values=x[rows], output_hidden_states=True).hidden_states[vcfg.select_layer][:, 1:]
        F.cross_entropy(head(feats.flatten(1)), y[rows]).backward()
        opt.step(), opt.zero_grad()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    print(json.dumps({"s_per_step": (time.perf_counter() - t0) / steps, "threads": torch.get_num_threads()}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--busy", type=int, default=2, help="spinning background processes (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.steps)
        return 0
    busy = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(args.busy)]
    results: dict[str, list] = {c: [] for c in args.configs}
    load_before = os.getloadavg()[0]
    try:
        for _ in range(args.rounds):
            for c in args.configs:
                env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                                         "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
                out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps)],
                                     env={**env, **SETTINGS[c]}, capture_output=True, text=True, check=True)
                results[c].append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        for p in busy:
            p.kill()
            p.wait()
    for c, rs in results.items():
        per = [r["s_per_step"] for r in rs]
        print(json.dumps({"bench": "contention", "setting": c, "busy": args.busy, "cores": os.cpu_count(),
                          "threads": rs[0]["threads"], "median_s_per_step": round(statistics.median(per), 4),
                          "rounds": [round(p, 4) for p in per], "loadavg_1m_at_start": round(load_before, 1),
                          "loadavg_1m_at_end": round(os.getloadavg()[0], 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
