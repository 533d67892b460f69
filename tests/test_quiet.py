"""Quiet means quiet: under MMLN_QUIET=1 a tiny sweep prints only mmln's own lines (no Lightning tips,
no MLflow INFO lines or "Downloading artifacts" bars, no DeepSpeed accelerator guess, no third-party
warnings), and the line count stays what the sweep itself says."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_data_helpers import tok_dirs  # noqa: F401  (fixture)
from tests.conftest import ROOT, TINY, make_world

NOISE = ("Downloading artifacts", "INFO mlflow", "litlogger", "Tip:", "accelerator", "site-packages", "alembic",
         "it/s]")
OURS = re.compile(r"^(\[sweep \d\d:\d\d:\d\d\] |sweep \w+: |  \S+ +(trained|skipped|failed)|best \w+: lr=|dashboard \(serve it with `[^`]+`\): http://)")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("quiet_world"), n_pretrain=4, n_instruct=8, n_mme_per_subtask=1,
                      n_pope_images=2, n_vqa_images=1, n_caption_images=5)[0]


def quiet_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_ENABLE_ARTIFACTS", "MLFLOW_LOGGING",
                                                                     "HF_HUB_DISABLE_PROGRESS"))}
    return {**env, "MMLN_QUIET": "1", "PYTHONPATH": str(ROOT)}


def test_a_quiet_tiny_sweep_prints_only_mmlns_lines(world: Path, tmp_path):
    w, db = world, tmp_path / "mlflow.db"
    args = ["--config", str(TINY), "--strategies", "layernorm", "--lrs", "1e-3", "1e-4", "--bench", "pope",
            "--select-metric", "eval/pope_random_accuracy",
            f"model.llm.tokenizer={w / 'tokenizer'}", f"output_dir={tmp_path / 'outputs'}", f"tracking.uri=sqlite:///{db}",
            "tracking.experiment=quiet_sweep", "stage=instruct", "data.template=vicuna_v1", "data.num_workers=0",
            f"data.train.files=[{w / 'llava_instruct/llava_instruct_80k.json'}]",
            f"data.train.image_folder={w / 'coco/train2017'}", "train.global_batch_size=4", "train.micro_batch_size=4",
            "train.max_steps=2", "train.save_every_n_steps=2", "model.max_length=512", "analysis.grad_norms=[all]",
            "analysis.grad_every_n_steps=1", "analysis.similarity_samples=2", "eval.limit=4", "eval.yes_no=logits",
            f"eval.pope_files=[{w / 'pope/coco_pope_random.json'}]", f"eval.pope_images={w / 'coco/val2014'}"]
    proc = subprocess.run([sys.executable, "-m", "mmln.sweep", *args], cwd=tmp_path, env=quiet_env(),
                          capture_output=True, text=True, timeout=600)
    lines = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode == 0, "\n".join(lines[-30:])
    noisy = [line for line in lines if any(n in line for n in NOISE) or not OURS.match(line)]
    assert not noisy, "\n".join(noisy[:20])
    # 1 header, per point: its line, training, evaluating; 1 summary, 2 rows, 1 best, its scale, the dashboard
    # link, where the outputs went
    assert len(lines) == 1 + 2 * 3 + 1 + 2 + 1 + 1 + 1 + 1, "\n".join(lines)
    assert [x for x in lines if x.startswith("sweep scale")] == ["sweep scale: 2 optimizer steps, 8 samples seen, eval.limit 4; smoke scale: not evidence (fewer than 100 optimizer steps, 1,000 samples seen or eval.limit 100)"], lines
    last = proc.stdout.splitlines()[-1]
    assert last.startswith(f"sweep outputs: run dirs in {(tmp_path / 'outputs').resolve()}") and str(db) in last, last
    assert "experiment 'quiet_sweep', sweep run " in last, last


def test_quiet_silences_deepspeeds_accelerator_guess_and_mlflows_store_creation(tmp_path):
    code = ("from mmln.base.progress import quiet_third_party; quiet_third_party()\n"
            "import deepspeed\n"
            "from mmln.tracking import Tracker\n"
            f"Tracker('sqlite:///{tmp_path}/fresh.db')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=quiet_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stderr[-2000:]


def test_importing_mmln_makes_openmp_threads_sleep_not_spin_unless_the_user_chose():
    """Spinning OpenMP threads made a demo step 20-70x slower under two busy processes
    (benchmarks/bench_contention.py): every mmln entry point sets OMP_WAIT_POLICY=PASSIVE before torch."""
    env = {k: v for k, v in quiet_env().items() if k != "OMP_WAIT_POLICY"}
    code = "import mmln, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert got.strip() == "PASSIVE"
    kept = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True,
                          text=True, check=True).stdout
    assert kept.strip() == "ACTIVE"


def test_the_contention_benchmark_still_runs_every_setting():
    """benchmarks/bench_contention.py is the evidence behind the default above; a rename in mmln broke it
    once without any test noticing (1 step per setting, no busy processes: seconds)."""
    import json

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_contention.py"), "--busy", "0", "--steps", "1",
                           "--rounds", "1"], cwd=ROOT, env=quiet_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [r["setting"] for r in rows] == ["default", "threads1", "passive", "passive1", "spin10k", "spin1k"]
    assert all(r["median_s_per_step"] > 0 for r in rows)
    assert rows[1]["threads"] == rows[3]["threads"] == 1


def test_the_demos_verdict_names_exactly_the_benchmarks_it_beats():
    from mmln.demo.tables import judge

    chance = {"eval/mme_perception": 750.0, "eval/mme_cognition": 300.0, "eval/pope_random_accuracy": 50.0}
    untuned = {"eval/mme_perception": 545.0, "eval/mme_cognition": 196.7, "eval/coco_cider": 49.8,
               "eval/pope_random_accuracy": 51.7}
    tuned = {"eval/mme_perception": 941.7, "eval/mme_cognition": 196.7, "eval/coco_cider": 103.6,
             "eval/pope_random_accuracy": 66.0}
    text, ok = judge(tuned, untuned, chance)
    assert ok and "on MME-P, COCO (no chance level), POPE-ran acc; it does not on MME-C" in text, text
    text, ok = judge({**tuned, "eval/pope_random_accuracy": 49.0}, untuned, chance)
    assert not ok and text.startswith("WARNING") and "does not on MME-C, POPE-ran acc" in text, text


def test_quiet_disables_the_tqdm_bars_transformers_gguf_loader_makes(tmp_path):
    """The fast sibling of the GGUF load below: the loader's own `tqdm` is disabled under MMLN_QUIET=1,
    imported after quiet_third_party or before it, and not otherwise."""
    code = ("import sys\n{first}from mmln.base.progress import quiet_third_party; quiet_third_party()\n"
            "import transformers.modeling_gguf_pytorch_utils as g\nprint(g.tqdm(range(2)).disable)\n")
    env = quiet_env()
    for first, want in (("", "True"), ("import transformers.modeling_gguf_pytorch_utils\n", "True")):
        got = subprocess.run([sys.executable, "-c", code.format(first=first)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert got.stdout.strip() == want and got.stderr.strip() == "", (first, got.stdout, got.stderr[-2000:])
    loud = subprocess.run([sys.executable, "-c", code.format(first="")], cwd=tmp_path, capture_output=True, text=True,
                          env={k: v for k, v in env.items() if k != "MMLN_QUIET"}, timeout=300)
    assert loud.stdout.strip() == "False", loud.stderr[-2000:]


@pytest.mark.slow
def test_a_quiet_gguf_load_prints_no_progress_bar(tok_dirs, tmp_path):  # noqa: F811
    """transformers' "Converting and de-quantizing GGUF tensors" bar comes from tqdm itself, past
    transformers' own progress-bar switch: quiet_third_party silences it, whether transformers' GGUF
    module was imported before or after; without MMLN_QUIET the bar is there (what the count would see)."""
    gguf = pytest.importorskip("gguf")
    import sentencepiece as spm

    from mmln.run.build import build_model
    from tests.conftest import tiny_config
    from tests.test_gguf import write_gguf

    sp_file = tok_dirs[True] / "tokenizer.model"
    vocab = spm.SentencePieceProcessor(model_file=str(sp_file)).get_piece_size()
    path = tmp_path / "smol" / "tiny-Q8_0.gguf"
    path.parent.mkdir()
    write_gguf(build_model(tiny_config(f"model.llm.vocab_size={vocab}")).llm, sp_file, path,
               gguf.GGMLQuantizationType.Q8_0)
    load = f"import torch; from pathlib import Path; from mmln.model.llm import load_gguf\n" \
           f"load_gguf(Path({str(path)!r}), torch.float32, 'eager')\n"
    quiet = "from mmln.base.progress import quiet_third_party; quiet_third_party()\n"
    early = "import transformers.modeling_gguf_pytorch_utils\n"
    out = {}
    for name, code, env in (("loud", load, {k: v for k, v in quiet_env().items() if k != "MMLN_QUIET"}),
                            ("quiet", quiet + load, quiet_env()), ("quiet, imported first", early + quiet + load,
                                                                    quiet_env())):
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[name] = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert any("Converting and de-quantizing" in line for line in out["loud"]), out["loud"]
    assert out["quiet"] == [] and out["quiet, imported first"] == [], out


@pytest.mark.parametrize("quiet", ["1", "0"])
def test_quiet_drops_the_java_tokenizers_line_and_keeps_everything_else(quiet):
    """The PTB tokenizer (Java, a child process) writes "PTBTokenizer tokenized N tokens at ..." to the
    stderr it inherits: under MMLN_QUIET=1 that line is dropped, other child output is kept."""
    code = ("import subprocess, sys\n"
            "from mmln.base.progress import quiet_child_stderr\n"
            "from mmln.eval.caption import ptb_tokenize\n"
            "print(ptb_tokenize({1: ['A red cat.']}))\n"
            "with quiet_child_stderr('PTBTokenizer tokenized'):\n"
            "    subprocess.run(['sh', '-c', 'echo kept line >&2'])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**quiet_env(), "MMLN_QUIET": quiet},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "['a', 'red', 'cat']" in out.stdout.replace('"', "'") or "a red cat" in out.stdout, out.stdout
    assert ("PTBTokenizer tokenized" in out.stderr) == (quiet == "0"), out.stderr
    assert "kept line" in out.stderr


def test_the_demo_says_bad_input_in_one_line(monkeypatch, capsys):
    """A demo dir copied from elsewhere: its stage-1 checkpoint was trained on the old dir's paths, and
    resuming it is refused (mmln.fit's ConfigError). The demo printed that as a traceback; now one line
    naming it, exit 2, as `mmln.fit` says it. A bug (any other error) still shows its traceback."""
    import mmln.demo.__main__ as demo
    from mmln.config import ConfigError

    def refused(args):
        raise ConfigError("resume: /x/outputs/demo_stage1/stage1/checkpoints/last.ckpt was trained with other settings")

    monkeypatch.setattr(demo, "run", refused)
    assert demo.main([]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["mmln.demo: error: resume: /x/outputs/demo_stage1/stage1/checkpoints/last.ckpt was "
                                "trained with other settings"]
    monkeypatch.setattr(demo, "run", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        demo.main([])
