"""python -m mmln.evaluate --config CFG --ckpt PATH|none --bench mme,pope,vqav2,coco,flickr30k [key=value ...]

Builds the model from the config (`mmln.run.build.build_model`: the MLLM, its strategy, the tuned tensors of
`--ckpt`: a run's `trainable.safetensors` or `checkpoints/last.ckpt`; `--ckpt none` evaluates the
untuned model), answers the benchmarks (`mmln.eval.benchmarks`, profile `eval.profile`), and

- writes the official answer files into `OUT/<bench>/` and every score into `OUT/scores.json`,
  OUT = `--out`, else the checkpoint's run directory (beside `trainable.safetensors` or
  `checkpoints/`), else `<output_dir>/eval/<model.name>-untuned`;
- prints the paper's Table 1 columns (MME perception / cognition, VQAv2, COCO and Flickr30k
  CIDEr, POPE accuracy / F1 per split, all in percent or points);
- logs them to MLflow as `eval/mme_perception`, `eval/mme_cognition`, `eval/vqav2`,
  `eval/coco_cider`, `eval/flickr30k_cider`, `eval/pope_<split>_accuracy`, `eval/pope_<split>_f1`
  into `--run-id`, else the run named by the run directory's `mlflow_run_id` file, else a new
  run of experiment `tracking.experiment` (default "mmln-eval"). Never replacing a result
  (`plan_logging`): the same evaluation (limit, profile, yes/no mode, checkpoint content) only adds
  the metrics a run lacks; another one goes to a child run of it, tagged with what differs.

Runs on one device (the first GPU when there is one), or data parallel under torchrun
(`torchrun --nproc_per_node 8 -m mmln.evaluate ...`: one GPU per process, gloo on CPU): each rank
answers a shard of every benchmark; rank 0 writes the files, logs to MLflow and prints.
Exit codes: 0 done; 2 a problem the user fixes (missing benchmark path, naming its eval.* key;
bad config; missing checkpoint or weights; no Java for CIDEr), one line on stderr.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from mmln.config import ConfigError, load_config
from mmln.eval.benchmarks import BENCHES, answer_inputs, check_inputs, run_benchmark, table_metrics
from mmln.base.io import write_json
from mmln.base.progress import quiet_third_party

DEFAULT_EXPERIMENT = "mmln-eval"


def run_dir_of(ckpt: str | os.PathLike[str]) -> Path:
    """`<run>/trainable.safetensors` -> `<run>`; `<run>/checkpoints/last.ckpt` -> `<run>`."""
    parent = Path(ckpt).resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def default_out_dir(cfg: Any, ckpt: Optional[str]) -> Path:
    return run_dir_of(ckpt) if ckpt else Path(cfg.output_dir) / "eval" / f"{cfg.model.name}-untuned"


def load_model(cfg: Any, ckpt: Optional[str]):
    """(mllm in eval mode on the device, tokenizer, image processor)."""
    import torch

    from mmln.run.build import build_model
    from mmln.data.images import ImageLimits, build_image_processor
    from mmln.model.llm import load_tokenizer

    tokenizer = load_tokenizer(cfg.model.llm)
    mllm = build_model(cfg, ckpt)
    mllm.requires_grad_(False).eval()
    mllm.to("cuda" if torch.cuda.is_available() else "cpu")  # under torchrun: this rank's GPU (init_distributed)
    return mllm, tokenizer, build_image_processor(cfg.model.vision, cfg.data.image_aspect,
                                                                   ImageLimits.of(cfg.data))


def make_runner(cfg: Any, ckpt: Optional[str]):
    """The answering runner of `cfg`'s model with `ckpt`'s tuned tensors: `mmln.eval.runner.Runner`
    (mmln's LLaVA assembly), or a native family's `FamilyRunner` (its processor, template, generate)."""
    from mmln.families import native_family

    if native_family(cfg.model) is not None:
        from mmln.run.build import build_model
        from mmln.model.families.answer import family_runner

        return family_runner(cfg, build_model(cfg, ckpt))
    from mmln.eval.runner import Runner, decoding_for

    mllm, tokenizer, image_processor = load_model(cfg, ckpt)
    return Runner(mllm, tokenizer, image_processor, decoding_for(cfg), batch_size=cfg.eval.batch_size,
                  num_workers=cfg.data.num_workers, seed=cfg.eval.seed)


def init_distributed() -> int:
    """Join the process group torchrun describes (WORLD_SIZE > 1) and return this rank (0 alone)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank()


def evaluate(cfg: Any, ckpt: Optional[str], benches: list[str], out_dir: Path,
             run_id: Optional[str] = None, log: bool = True, out_given: bool = False) -> dict[str, Any]:
    """Answer and score `benches`; write `out_dir/<bench>/*` and `out_dir/scores.json`; log the
    `eval/*` metrics to MLflow. Returns the scores.json content:
    `{"metrics": {eval/*: value}, "benches": {bench: scorer result}, "seconds", "questions_per_s",
    "profile", "yes_no", "ckpt", "mlflow_run_id"}`.
    `ckpt` None (or "none") = the untuned model. Under torchrun every rank calls this; ranks > 0
    answer their shards and score into a temporary folder, and neither keep files nor log.
    `log=False` logs nothing (a sweep's cheap proxy score, which it records itself).
    `out_given` (the user's --out): the files go exactly there, and a folder holding another
    evaluation's scores.json is refused (FileExistsError); else such a folder gets an
    `eval-<time>/` subfolder. `scores["out_dir"]` is where they went."""
    from mmln.eval.caption import require_java

    ckpt = None if ckpt is None or str(ckpt).lower() == "none" else str(ckpt)
    benches = list(dict.fromkeys(benches))
    check_inputs(cfg, benches)
    if {"coco", "flickr30k"} & set(benches):
        require_java()  # fail before the model runs, not after
    rank = init_distributed()
    if rank > 0:  # the answers are all-gathered, so every rank could write them: only rank 0 does
        with tempfile.TemporaryDirectory() as scratch:
            return _evaluate(cfg, ckpt, benches, Path(scratch), run_id, log=False)
    return _evaluate(cfg, ckpt, benches, Path(out_dir), run_id, log=log, out_given=out_given)


def file_sha256(path: str) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def eval_identity(cfg: Any, ckpt: Optional[str]) -> dict[str, str]:
    """What makes two evaluations' numbers comparable: the checkpoint (by content), the limit and
    the prompt profile. Recorded as tags on the run the metrics go to."""
    return {"eval_limit": str(cfg.eval.limit) if cfg.eval.limit else "none", "eval_profile": str(cfg.eval.profile),
            "eval_yes_no": str(cfg.eval.yes_no), "eval_ckpt": ckpt or "none",
            "eval_ckpt_sha256": file_sha256(ckpt)[:16] if ckpt else "none"}


def plan_logging(cfg: Any, ckpt: Optional[str], run_id: Optional[str]) -> tuple[Optional[str], str, dict[str, str]]:
    """(run, mode, identity): where an evaluation's metrics go, never replacing a result.

    mode `new`: no run given (`--run-id` / the run dir's `mlflow_run_id`): a new run. `merge`: the
    run has no evaluation yet, or one with the same identity (`eval_identity`): only metrics it
    lacks are added. `child`: the run holds an evaluation of another identity (a limited one, a
    full one, another checkpoint): a child run of it (tag `kind=eval`, `mlflow.parentRunId`)."""
    from mmln.tracking import Tracker

    client = Tracker(cfg.tracking.uri)
    identity = eval_identity(cfg, ckpt)
    id_file = run_dir_of(ckpt) / "mlflow_run_id" if ckpt else None
    run = None
    if run_id is not None:
        if (run := client.find_run(run_id)) is None:
            raise ConfigError(f"--run-id {run_id}: no such run in the MLflow store {client.uri}")
    elif id_file is not None and id_file.is_file():
        run_id = id_file.read_text().strip() or None
        if run_id and (run := client.find_run(run_id)) is None:
            _note(f"{id_file}: run {run_id} is not in the MLflow store {client.uri}; logging to a new run")
            run_id = None
    if run is None:
        return None, "new", identity
    has_eval = any(k.startswith("eval/") for k in run.data.metrics)
    same = all(run.data.tags.get(k) == v for k, v in identity.items() if k != "eval_ckpt")
    return run_id, "merge" if same or not has_eval else "child", identity


def new_run_name(cfg: Any, ckpt: Optional[str], identity: dict[str, str]) -> str:
    """`eval-<model>-<strategy>` for a checkpoint, `eval-<model>-untuned` for the bare model, and
    `eval-<model>-export-<run>` for an export (its config's run_name names what was exported)."""
    exported = str(cfg.run_name or "").startswith("export-")
    what = cfg.tune.strategy if ckpt else (cfg.run_name if exported else "untuned")
    return f"eval-{cfg.model.name}-{what}" + ("" if identity["eval_limit"] == "none" else f"-limit{identity['eval_limit']}")


def child_suffix(identity: dict[str, str], parent_tags: dict[str, str]) -> str:
    """`limit16`, `full`, `ckpt-<sha8>`, `paper`: how the child's evaluation differs from its parent's."""
    parts = []
    if identity["eval_ckpt_sha256"] != parent_tags.get("eval_ckpt_sha256", identity["eval_ckpt_sha256"]):
        parts.append(f"ckpt-{identity['eval_ckpt_sha256'][:8]}")
    parts.append("full" if identity["eval_limit"] == "none" else f"limit{identity['eval_limit']}")
    if identity["eval_profile"] != "official":
        parts.append(identity["eval_profile"])
    return "-".join(parts)


def _merge_scores(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Scores of the same evaluation identity: what was there stays, what is new is added."""
    out = dict(new)
    for key in ("metrics", "benches", "seconds", "questions_per_s", "inputs"):
        out[key] = {**new.get(key, {}), **old.get(key, {})}
    return out


def _evaluate(cfg: Any, ckpt: Optional[str], benches: list[str], out_dir: Path, run_id: Optional[str],
              log: bool, out_given: bool = False) -> dict[str, Any]:
    quiet_third_party()
    runner = make_runner(cfg, ckpt)  # a bad checkpoint fails before the store is touched
    target, mode, identity = plan_logging(cfg, ckpt, run_id) if log else (None, "new", {})
    old_scores = out_dir / "scores.json"
    if out_given and old_scores.is_file() and mode != "merge":  # never overwrite another evaluation's files
        raise FileExistsError(f"--out {out_dir} holds another evaluation's scores.json: choose another --out "
                              "(or leave it out: a new eval-<time>/ folder beside it)")
    if not out_given and (mode == "child" or (mode == "new" and old_scores.is_file())):
        out_dir = out_dir / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
        _say(f"another evaluation's results are in {old_scores.parent}: writing this one to {out_dir}")

    scores: dict[str, Any] = {"profile": cfg.eval.profile, "yes_no": cfg.eval.yes_no, "ckpt": ckpt,
                              "metrics": {}, "benches": {}, "seconds": {}, "questions_per_s": {}, "inputs": {}}
    for bench in benches:
        t0 = time.perf_counter()
        runner.desc = f"eval {bench}"  # a progress bar per benchmark (per call: POPE's splits, MME's subtasks)
        result = run_benchmark(bench, runner, cfg, out_dir)
        seconds = time.perf_counter() - t0
        scores["benches"][bench] = result
        scores["inputs"][bench] = answer_inputs(cfg, bench, out_dir)  # per-item results for paired tests
        scores["metrics"].update(table_metrics(bench, result))
        scores["seconds"][bench] = seconds
        n = _n_questions(bench, result)
        scores["questions_per_s"][bench] = n / seconds if seconds > 0 else 0.0
        _note(f"{bench}: {n} questions in {seconds:.1f}s")
    if mode == "merge" and old_scores.is_file():
        import json

        try:
            scores = _merge_scores(json.loads(old_scores.read_text()), scores)
        except (ValueError, OSError):
            pass  # an unreadable older scores.json is replaced by this evaluation's
    scores["out_dir"] = str(out_dir)
    write_json(out_dir / "scores.json", scores, indent=1, default=str)  # the scores survive a tracking failure
    scores["mlflow_run_id"] = log_to_mlflow(cfg, scores, ckpt, target, mode, identity) if log else None
    write_json(out_dir / "scores.json", scores, indent=1, default=str)
    return scores


def _n_questions(bench: str, result: dict[str, Any]) -> int:
    if bench == "mme":
        return sum(d["n_questions"] for d in result["details"].values())
    if bench == "pope":
        return sum(m["n"] for m in result.values())
    return result["n"] if bench == "vqav2" else result["n_images"]


def log_to_mlflow(cfg: Any, scores: dict[str, Any], ckpt: Optional[str], run_id: Optional[str] = None,
                  mode: Optional[str] = None, identity: Optional[dict[str, str]] = None) -> str:
    """Log `scores["metrics"]` as `plan_logging` decided (run_id/mode None: decide here): into a new
    run, merged into `run_id` (only metrics it lacks), or into a new child run of `run_id`."""
    from mmln.tracking import Tags, Tracker

    if mode is None:
        run_id, mode, identity = plan_logging(cfg, ckpt, run_id)
    client = Tracker(cfg.tracking.uri)
    tags = {**identity, "eval_benches": ",".join(scores["benches"])}
    metrics = scores["metrics"]
    if mode == "new":
        experiment = client.experiment_id(cfg.tracking.experiment or DEFAULT_EXPERIMENT)
        run_id = client.start_run(experiment, new_run_name(cfg, ckpt, identity), {
            Tags.MODEL: cfg.model.name, Tags.STRATEGY: cfg.tune.strategy, "ckpt": ckpt or "none", **tags})
    elif mode == "child":
        parent = client.get_run(run_id)
        name = f"{parent.info.run_name}-eval-{child_suffix(identity, parent.data.tags)}"
        run_id = client.start_run(parent.info.experiment_id, name, {
            Tags.KIND: "eval", Tags.PARENT: parent.info.run_id, Tags.MODEL: cfg.model.name,
            Tags.STRATEGY: cfg.tune.strategy, Tags.STAGE: "eval", **tags})
        _say(f"run {parent.info.run_id} holds another evaluation ({parent.data.tags.get('eval_limit', '?')} limit, "
              f"checkpoint {parent.data.tags.get('eval_ckpt_sha256', '?')}): logging to its child run '{name}'")
    else:  # merge: add what the run lacks, keep what it has
        have = client.get_run(run_id).data
        kept = sorted(k for k in metrics if k in have.metrics)
        if kept:
            _note(f"run {run_id} already has {len(kept)} of these metrics (same evaluation): kept its values")
        metrics = {k: v for k, v in metrics.items() if k not in have.metrics}
        done = [b for b in have.tags.get("eval_benches", "").split(",") if b]
        tags["eval_benches"] = ",".join(dict.fromkeys(done + list(scores["benches"])))
        # the run's eval/scores.json keeps all ({} at the first evaluation)
        scores = _merge_scores(client.read_json(run_id, "eval/scores.json") or {}, scores)
    client.log_metrics(run_id, metrics)
    client.set_tags(run_id, tags)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scores.json"
        write_json(path, {**scores, "mlflow_run_id": run_id}, indent=1, default=str)
        client.log_artifact(run_id, str(path), artifact_path="eval")
    if mode != "merge":
        client.end(run_id, "FINISHED")
    return run_id


def format_table(metrics: dict[str, float]) -> str:
    """The paper's Table 1 columns present in `metrics` as a two-line table."""
    from mmln.eval.columns import MAIN_COLUMNS, pope_columns

    splits = [k.split("_")[1] for k in metrics if k.startswith("eval/pope_") and k.endswith("_accuracy")]
    cols = MAIN_COLUMNS + pope_columns(splits)
    cols = [(h, k) for h, k in cols if k in metrics]
    width = [max(len(h), 7) for h, _ in cols]
    head = "  ".join(h.rjust(w) for (h, _), w in zip(cols, width))
    row = "  ".join(f"{metrics[k]:.2f}".rjust(w) for (_, k), w in zip(cols, width))
    return head + "\n" + row


def _say(msg: str) -> None:
    """A line the user must see even under MMLN_QUIET=1 (where a result went, and why)."""
    print(f"mmln.evaluate: {msg}", file=sys.stderr, flush=True)


def _note(msg: str) -> None:
    if os.environ.get("MMLN_QUIET") != "1":
        print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmln.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="run config YAML (the one the checkpoint was trained with)")
    ap.add_argument("--ckpt", required=True, help="trainable.safetensors or checkpoints/last.ckpt of a run; "
                                                  "'none' = the untuned model")
    ap.add_argument("--bench", default=",".join(BENCHES),
                    help=f"comma-separated subset of {','.join(BENCHES)} (default: all of them)")
    ap.add_argument("--out", help="folder for answer files and scores.json, used as given; refused if it holds "
                                  "another evaluation (default: the checkpoint's run dir, or "
                                  "<output_dir>/eval/<model>-untuned; an eval-<time>/ subfolder there when it "
                                  "already holds another evaluation)")
    ap.add_argument("--run-id", help="MLflow run to log into (default: the run dir's mlflow_run_id, else a new run)")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. eval.limit=100 eval.mme_dir=...")
    args = ap.parse_args(argv)
    from mmln.eval.caption import JavaNotFoundError
    from mmln.base.io import as_disk_full
    from mmln.model.errors import CheckpointError, MissingWeightsError
    from mmln.base.outputs import OutputError, claim_eval

    try:
        cfg = load_config(args.config, args.overrides, require=("model",))
        benches = [b.strip() for b in args.bench.split(",") if b.strip()]
        unknown = [b for b in benches if b not in BENCHES]
        if unknown or not benches:
            raise ConfigError(f"--bench {args.bench!r}: choose from {', '.join(BENCHES)}")
        ckpt = None if args.ckpt.lower() == "none" else args.ckpt
        if ckpt and not Path(ckpt).is_file():
            raise FileNotFoundError(f"--ckpt {ckpt}: no such file (a run's trainable.safetensors or "
                                    "checkpoints/last.ckpt; 'none' for the untuned model)")
        out = claim_eval(args.out) if args.out else default_out_dir(cfg, ckpt)  # --out: refused if not mmln's
        try:
            scores = evaluate(cfg, ckpt, benches, out, run_id=args.run_id, out_given=bool(args.out))
        finally:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
    except (ConfigError, MissingWeightsError, FileNotFoundError, FileExistsError, JavaNotFoundError, CheckpointError,
            OutputError) as e:
        print(f"mmln.evaluate: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # an image over the data.max_image_* limits (its class lives with torch: imported now)
        from mmln.data.images import ImageTooLargeError

        if not isinstance(e, ImageTooLargeError):
            raise
        print(f"mmln.evaluate: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if (full := as_disk_full(e)) is None:
            raise
        print(f"mmln.evaluate: error: {full}", file=sys.stderr)
        return 2
    if scores["mlflow_run_id"] is not None:  # rank 0 (or the only process)
        from mmln.eval.evidence import limit_note

        print(format_table(scores["metrics"]) + f"\n({limit_note(cfg.eval.limit)})")
        print(f"answers and scores.json in {scores['out_dir']}; MLflow run {scores['mlflow_run_id']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
