"""Bit-identity check for refactors: sha256 of every file a tiny, seeded pipeline writes.

    PYTHONPATH=$PWD python benchmarks/hash_outputs.py --out hashes.json [--work DIR]

Runs only the public commands (`python -m mmln.data synth`, `python -m mmln.fit`,
`python -m mmln.export`, `python -m mmln.evaluate`) plus the tokenizer trainer and the MLflow
client, so the same script runs on trees from before and after a move of modules. Steps:
synthetic data (seed 0), a tiny tokenizer, a 3-step `layernorm` fit and a 3-step `lora` fit
(fp32, CPU, seeded), the layernorm run exported as `llava` and `hf-llava`, the lora run's PEFT
adapter (written by fit), and an evaluation of the layernorm run on POPE and MME. The JSON holds
{relative path: sha256} per file and the pinned values (train losses read from MLflow, scores).

Files or fields that legitimately change from one run to the next are left out, and listed in
the JSON under "skipped": files that record timings or wall-clock times (efficiency.json,
manifests' time fields, MLflow's store, Lightning checkpoints which embed the loop's timers,
the mlflow_run_id pointer). JSON files are hashed after dropping the keys named in VOLATILE_KEYS
(anywhere in the tree), so a manifest still counts with its time fields removed.
Takes about 2-4 minutes on 2 loaded CPU cores.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "conf" / "model" / "tiny.yaml"
SKIP_NAMES = {"mlflow.db", "mlflow_run_id", "efficiency.json"}  # wall-clock timings / random run ids
SKIP_SUFFIXES = (".ckpt", ".log", ".lock")  # Lightning checkpoints embed loop timers; logs hold times
SKIP_DIRS = {"mlruns", "mlartifacts", "__pycache__", ".locks"}
VOLATILE_KEYS = {"time", "created", "created_at", "finished", "finished_at", "started", "started_at",
                 "timestamp", "wall_s", "seconds", "duration_s", "elapsed_s", "run_id", "mlflow_run_id",
                 "host", "hostname", "pid", "date", "python", "versions", "git", "commit", "questions_per_s"}


def run(*args: str, cwd: Path) -> str:
    env = dict(os.environ, MMLN_QUIET="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONHASHSEED="0", CUBLAS_WORKSPACE_CONFIG=":4096:8")
    p = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(args)}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p.stdout


def scrub(obj, dropped: set[str]):
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in VOLATILE_KEYS:
                dropped.add(k)
                continue
            out[k] = scrub(v, dropped)
        return out
    if isinstance(obj, list):
        return [scrub(v, dropped) for v in obj]
    return obj


def digest(path: Path, dropped: set[str]) -> str:
    data = path.read_bytes()
    if path.suffix == ".json":
        try:
            obj = json.loads(data)
        except ValueError:
            return hashlib.sha256(data).hexdigest()
        data = json.dumps(scrub(obj, dropped), sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


def hash_tree(work: Path) -> tuple[dict[str, str], list[str], list[str]]:
    hashes, skipped, dropped = {}, [], set()
    for p in sorted(work.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(work).as_posix()
        if p.name in SKIP_NAMES or p.suffix in SKIP_SUFFIXES or SKIP_DIRS & set(p.relative_to(work).parts):
            skipped.append(rel)
            continue
        hashes[rel] = digest(p, dropped)
    return hashes, skipped, sorted(dropped)


def fit_overrides(data: Path, tok: Path, out: Path, strategy: str, name: str) -> list[str]:
    return [f"model.llm.tokenizer={tok}", f"output_dir={out}", "data.num_workers=0", "quiet=true",
            "train.log_every_n_steps=1", "analysis.grad_every_n_steps=0", "analysis.similarity=false",
            "stage=instruct", "data.template=vicuna_v1", f"run_name={name}", "tracking.experiment=hash",
            f"data.train.files=[{data / 'llava_instruct/llava_instruct_80k.json'}]",
            f"data.train.image_folder={data / 'coco/train2017'}", "train.global_batch_size=4",
            "train.micro_batch_size=2", "train.epochs=1", "train.max_steps=3", "train.precision=32-true",
            f"tune.strategy={strategy}", "train.lr=1e-3"]


def losses(store: str, experiment: str) -> dict[str, list[float]]:
    from mlflow import MlflowClient

    client = MlflowClient(store)
    exp = client.get_experiment_by_name(experiment)
    out = {}
    for r in client.search_runs([exp.experiment_id]):
        hist = client.get_metric_history(r.info.run_id, "train/loss")
        out[r.info.run_name] = [m.value for m in sorted(hist, key=lambda m: m.step)]
    return dict(sorted(out.items()))


def pipeline(work: Path) -> dict:
    data, out = work / "data", work / "outputs"
    run("-m", "mmln.data", "synth", "--out", str(data), "--seed", "0", "--n-pretrain", "8", "--n-instruct", "12",
        "--n-mme-per-subtask", "1", "--n-pope-images", "2", "--n-vqa-images", "2", "--n-caption-images", "2", cwd=ROOT)
    code = ("import sys; from pathlib import Path; from mmln.data.synth import text_corpus; "
            "from mmln.data.tokenizer import train_tiny_tokenizer; "
            "train_tiny_tokenizer(text_corpus(2000, seed=0), Path(sys.argv[1]), vocab_size=512)")
    tok = work / "tokenizer"
    run("-c", code, str(tok), cwd=ROOT)
    for strategy in ("layernorm", "lora"):
        run("-m", "mmln.fit", "--config", str(TINY), *fit_overrides(data, tok, out, strategy, strategy), cwd=ROOT)
    ln = out / "hash" / "layernorm"
    for fmt in ("llava", "hf-llava"):
        run("-m", "mmln.export", "--config", str(ln / "config.yaml"), "--ckpt", str(ln / "trainable.safetensors"),
            "--out", str(work / f"export-{fmt}"), "--format", fmt, cwd=ROOT)
    pope = ",".join(str(data / f"pope/coco_pope_{s}.json") for s in ("random", "popular", "adversarial"))
    run("-m", "mmln.evaluate", "--config", str(ln / "config.yaml"), "--ckpt", str(ln / "trainable.safetensors"),
        "--bench", "pope,mme", "--out", str(work / "eval"), "eval.max_new_tokens=4", "eval.batch_size=4",
        f"eval.pope_files=[{pope}]", f"eval.pope_images={data / 'coco/val2014'}",
        f"eval.mme_dir={data / 'mme/MME_Benchmark_release_version'}", cwd=ROOT)
    scores = json.loads((work / "eval" / "scores.json").read_text()) if (work / "eval" / "scores.json").exists() else {}
    return {"losses": losses(os.environ["MLFLOW_TRACKING_URI"], "hash"), "scores": scrub(scores, set())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON to write")
    ap.add_argument("--work", default=None, help="new or empty work folder; use the same path for both trees, "
                    "since configs and manifests record absolute paths (default: a new temporary one)")
    args = ap.parse_args()
    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="mmln-hash-"))
    if work.exists() and any(work.iterdir()):
        sys.exit(f"--work {work}: not empty; give a new folder (the same path on both trees: configs record paths)")
    work.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    pinned = pipeline(work)
    hashes, skipped, dropped = hash_tree(work)
    result = {"tree": str(ROOT), "work": str(work), "pinned": pinned, "files": hashes,
              "skipped": skipped, "json_keys_dropped": dropped}
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(json.dumps(pinned, sort_keys=True))
    print(f"{len(hashes)} files hashed, {len(skipped)} skipped -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
