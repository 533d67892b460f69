"""The demo's stages after the stand-in pretraining: its folder and caches (`demo_dir`, `check_recipe`,
`make_data`), the quiet run's environment and heartbeat, and the training and evaluation of stage 1
and stage 2 (`train_stages`, `evaluate_both`)."""
from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from pathlib import Path

from mmln.config import ConfigError
from mmln.demo.pretrain import CONF, HEARTBEAT_S, say
from mmln.base.io import write_text
from mmln.base.progress import quiet_third_party, steps_line

BENCHES = ["mme", "pope", "vqav2", "coco", "flickr30k"]
CACHES = ("data", "vision", "base_lm", "outputs")  # what a demo dir holds, built by one recipe
RECIPE = "2"  # bump when the data, vision tower or base LM a demo dir caches would come out different
# chance on the benchmarks that have one: MME answers at random (acc 0.5, acc+ 0.25), POPE's yes/no at 50%
CHANCE = {"eval/mme_perception": 100.0 * 10 * 0.75, "eval/mme_cognition": 100.0 * 4 * 0.75,
          **{f"eval/pope_{s}_accuracy": 50.0 for s in ("random", "popular", "adversarial")}}


def demo_dir() -> Path:
    return Path(os.environ.get("MMLN_DEMO_DIR", "demo"))


def check_recipe(root: Path, recipe: str) -> None:
    """Caches built by another recipe (an older demo, or --quick vs full) are deleted, not reused. Without
    the `RECIPE` marker the demo did not make them: refused in one line (exit 2), nothing deleted."""
    marker = root / "RECIPE"
    built = marker.read_text().strip() if marker.is_file() else None
    stale = [d for d in CACHES if (root / d).exists()]
    if built is None and stale:  # said in one line by the demo's main (exit 2), as every bad input is
        raise ConfigError(f"{root} holds {', '.join(stale)} but no RECIPE marker, so the demo did not write them: "
                          "set MMLN_DEMO_DIR to an empty or demo-made folder (nothing was deleted)")
    if built != recipe and stale:
        say(f"{root} holds {', '.join(stale)} built by demo recipe {built or '(unknown)'}, not {recipe}: rebuilding")
        for d in stale:
            shutil.rmtree(root / d)
    write_text(marker, recipe + "\n")


@contextlib.contextmanager
def heartbeat(label: str, every: float = HEARTBEAT_S):
    """A line every `every` seconds while the block runs (the quiet demo's sign of life): the training
    run's `step k/n, ETA` when one is in progress (`mmln.base.progress.STEPS`), else the time so far."""
    stop, t0 = threading.Event(), time.time()

    def beat() -> None:
        while not stop.wait(every):
            say(f"{label}: {steps_line() or 'still running'} ({time.time() - t0:.0f}s)")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def setup_env() -> None:
    """The demo's defaults (each kept when already set): the local MLflow store, quiet logs (the demo
    prints its own progress; MMLN_QUIET=0 shows Lightning's) and only mmln's own lines."""
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path('mlflow.db').resolve()}")
    os.environ.setdefault("MMLN_QUIET", "1")
    quiet_third_party()


def make_data(root: Path, quick: bool) -> None:
    from mmln.data.synth import synthesize

    if (root / "data" / ".done").is_file():
        return say(f"data: cached in {root / 'data'}")
    sizes = dict(n_pretrain=1200, n_instruct=300, n_mme_per_subtask=6, n_pope_images=20, n_vqa_images=30,
                 n_caption_images=40) if quick else dict(n_instruct=3000, n_mme_per_subtask=30)
    synthesize(root / "data", image_size=64, seed=0, **sizes)
    write_text(root / "data" / ".done", "ok\n")
    say(f"data: synthesized in {root / 'data'}")


def prepare_dir(quick: bool, fresh: bool, prepare_only: bool) -> Path:
    """The demo dir, its caches checked against this recipe (`--prepare-only` reuses what it caches,
    whatever built it: the experiments' SCALE=tiny targets prepare a dir that may be the full
    demo's) and, with `fresh`, its runs deleted."""
    root = demo_dir()
    root.mkdir(parents=True, exist_ok=True)
    if not prepare_only or not any((root / d).exists() for d in CACHES):
        check_recipe(root, f"{RECIPE}{'-quick' if quick else ''}")
    if fresh and (root / "outputs").exists():
        shutil.rmtree(root / "outputs")
    return root


def train_stages(quick: bool):
    """Stage 1 (the connector) then stage 2 (LayerNorm tuning): stage 2's run and its config."""
    from mmln.config import load_config
    from mmln.fit import fit

    over = ["train.epochs=1"] if quick else []
    say("stage 1: pretraining the connector")
    with heartbeat("stage 1"):
        s1 = fit(load_config(CONF / "stage1.yaml", over), str(CONF / "stage1.yaml"))
    say(f"stage 1 done: {s1.run_dir}")
    say("stage 2: LayerNorm tuning")
    s2cfg = load_config(CONF / "stage2.yaml", over)
    with heartbeat("stage 2"):
        s2 = fit(s2cfg, str(CONF / "stage2.yaml"))
    say(f"stage 2 done: {s2.run_dir}  ({s2.metrics.get('perf/tokens_per_s', 0):,.0f} tokens/s, "
        f"{s2.metrics['params/trainable']:,} of {s2.metrics['params/total']:,} parameters trained)")
    return s2, s2cfg


def evaluate_both(s2, quick: bool) -> tuple[dict, dict]:
    """The metrics of the untuned model (base LM + stage-1 connector) and of stage 2's."""
    from mmln.config import load_config
    from mmln.evaluate import evaluate

    limit = ["eval.limit=200"] if quick else []
    say("evaluating the untuned model (base LM + stage-1 connector)")
    with heartbeat("evaluating the untuned model"):
        untuned = evaluate(load_config(CONF / "stage2.yaml", limit), None, BENCHES, s2.run_dir / "eval_untuned")["metrics"]
    say("evaluating the LayerNorm-tuned model")
    with heartbeat("evaluating the LayerNorm-tuned model"):
        tuned = evaluate(load_config(CONF / "stage2.yaml", limit), str(s2.run_dir / "trainable.safetensors"), BENCHES,
                         s2.run_dir / "eval", run_id=s2.run_id)["metrics"]
    return untuned, tuned


def dashboard(run) -> str:
    """The `mmln.ui.dashboard_line` of the demo's experiment (its strategies x learning rates in MLflow)."""
    from mmln.tracking import Tracker
    from mmln.ui import dashboard_line

    client = Tracker(os.environ["MLFLOW_TRACKING_URI"])
    return dashboard_line(client, client.get_run(run.run_id).info.experiment_id)
