"""Progress bars for long work (tqdm, on stderr, with rate and ETA), silent under MMLN_QUIET=1.

Used by evaluation (one bar per benchmark, in batches), `mmln.data synth` (images) and `mmln.data
check` (records); training shows Lightning's own bar, the sweep prints `point k/n` with an ETA.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Any, Iterable, Iterator, Optional


# The training run in progress in this process, `{"done": optimizer steps, "total": steps, "t0": time}`:
# written by mmln.callbacks.progress.StepCounter, read by heartbeats (the quiet demo's `step k/n, ETA`).
STEPS: dict = {}


def steps_line() -> str:
    """`step k/n, ETA 3m 2s` of the training run in progress, or "" when none is."""
    import time

    done, total, t0 = STEPS.get("done"), STEPS.get("total"), STEPS.get("t0")
    if done is None or not total:
        return ""
    start = STEPS.get("start", 0)  # a resumed run's first step: the ETA counts this process's steps
    return f"step {done}/{total}, ETA {eta(done - start, total - start, time.time() - t0)}"


def quiet() -> bool:
    return os.environ.get("MMLN_QUIET") == "1"


# Known, harmless third-party warnings a quiet run drops (each explained where it comes from):
QUIET_WARNINGS = (
    ".*overridden `on_before_batch_transfer`.*",  # Lightning: mmln's module hook is used, as intended
    ".*Unsupported layer type .*RMSNorm.*",  # PEFT's LNTuning on LLaMA's RMSNorm (mmln's norm strategies test it)
    ".*`is_gradient_checkpointing` is deprecated.*",  # transformers 5, called from inside PEFT
    ".*smaller than the logging interval.*",  # Lightning, on a run shorter than train.log_every_n_steps
)


def quiet_third_party() -> None:
    """Under MMLN_QUIET=1 only mmln's own lines reach the terminal: Lightning's banners and tips,
    MLflow's INFO lines and artifact-download bars, DeepSpeed's accelerator guess, transformers'
    progress bars and the harmless warnings in `QUIET_WARNINGS` are silenced (errors still show).
    Safe to call more than once, before or after those libraries are imported."""
    if not quiet():
        return
    import logging
    import warnings

    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # read at each download
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    for name in ("mlflow", "alembic", "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # DeepSpeed resets its logger's level on import: a filter survives that
    ds = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _ErrorsOnly) for f in ds.filters):
        ds.addFilter(_ErrorsOnly())
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers reads it when imported
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    quiet_tqdm()


def quiet_tqdm() -> None:
    """Third-party bars made straight from `tqdm.auto.tqdm` (transformers' GGUF "Converting and
    de-quantizing" bar is one; transformers' own switch does not reach it) are disabled: a module that
    imports `tqdm.auto.tqdm` after this gets the disabled class, and transformers' GGUF module, when
    already imported, is pointed at it. mmln's own `bar` is disabled when quiet anyway."""
    import tqdm.auto

    if not getattr(tqdm.auto.tqdm, "mmln_quiet", False):
        loud = tqdm.auto.tqdm

        class QuietTqdm(loud):
            mmln_quiet = True
            mmln_loud = loud  # the class it replaced, for mmln's own `bar`

            def __init__(self, *args, **kwargs):
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)

        tqdm.auto.tqdm = QuietTqdm
    gguf_module = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
    if gguf_module is not None:
        gguf_module.tqdm = tqdm.auto.tqdm


@contextlib.contextmanager
def quiet_child_stderr(chatter: str) -> Iterator[None]:
    """Under MMLN_QUIET=1, lines starting with `chatter` that a child process writes to the inherited
    stderr inside this block are dropped (the Java PTB tokenizer's "PTBTokenizer tokenized N tokens at
    ..."); every other line is passed on when the block ends, also when it raises. A no-op otherwise."""
    if not quiet():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not line.startswith(chatter))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


class _ErrorsOnly:
    def filter(self, record) -> bool:
        return record.levelno >= 40  # logging.ERROR


def bar(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = "", unit: str = "it") -> Any:
    """A tqdm bar over `iterable` (or a manual one: `.update(n)`, `.close()`), disabled when quiet."""
    from tqdm.auto import tqdm

    tqdm = getattr(tqdm, "mmln_loud", tqdm)  # not quiet_tqdm's always-disabled class: `quiet()` decides
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=quiet(), mininterval=0.5,
                dynamic_ncols=True, leave=True)


def eta(done: int, total: int, elapsed: float) -> str:
    """`"12m 3s"`-style estimate of the time left after `done` of `total` items took `elapsed` s."""
    if done <= 0 or done >= total:
        return "-"
    left = int(elapsed / done * (total - done))
    return f"{left // 3600}h {left % 3600 // 60}m" if left >= 3600 else f"{left // 60}m {left % 60}s"
