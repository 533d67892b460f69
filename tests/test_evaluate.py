"""Evaluation: the inference runner, the benchmark glue and `python -m mmln.evaluate`, on the tiny
model and the synthetic benchmarks in their official on-disk formats."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY, tiny_config

HAS_JAVA = shutil.which("java") is not None


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Synthetic benchmarks (64 px) and a tiny LLaMA-style tokenizer where " Yes" / " No" are tokens."""
    from mmln.data.synth import synthesize, text_corpus
    from mmln.data.tokenizer import train_tiny_tokenizer

    root = tmp_path_factory.mktemp("eval_synth")
    paths = synthesize(root / "data", image_size=64, n_pretrain=0, n_instruct=0, n_mme_per_subtask=2,
                       n_pope_images=2, n_vqa_images=3, n_caption_images=10)
    tok = train_tiny_tokenizer(text_corpus(2000) + ["Yes. No."] * 300, root / "tok", vocab_size=500)
    return {"paths": paths, "tok": tok}


def eval_overrides(synth, *extra: str) -> list[str]:
    p = synth["paths"]
    pope = ",".join(str(p[f"pope_{s}"]) for s in ("random", "popular", "adversarial"))
    return [
        f"model.llm.tokenizer={synth['tok']}", "model.max_length=512", "data.num_workers=0",
        "eval.max_new_tokens=4", "eval.batch_size=4",
        f"eval.mme_dir={p['mme_root']}", f"eval.pope_files=[{pope}]", f"eval.pope_images={p['coco_val2014']}",
        f"eval.vqav2_questions={p['vqa_questions']}", f"eval.vqav2_annotations={p['vqa_annotations']}",
        f"eval.vqav2_images={p['coco_val2014']}",
        f"eval.coco_karpathy={p['karpathy_coco']}", f"eval.coco_images={p['coco_val2014'].parent}",
        f"eval.flickr30k_karpathy={p['karpathy_flickr30k']}", f"eval.flickr30k_images={p['flickr30k_images']}",
        *extra,
    ]


def make_runner(cfg, mllm=None, **kw):
    from mmln.data.images import build_image_processor
    from mmln.eval.runner import Runner, decoding_for
    from mmln.model import build_mllm
    from mmln.model.llm import load_tokenizer

    mllm = mllm if mllm is not None else build_mllm(cfg.model).eval()
    return Runner(mllm, load_tokenizer(cfg.model.llm), build_image_processor(cfg.model.vision),
                  decoding_for(cfg), batch_size=kw.pop("batch_size", cfg.eval.batch_size), **kw)


def mixed_queries(synth):
    """Yes/no questions of several prompt lengths (MME subtasks + POPE), so batches are padded."""
    from mmln.eval.mme import read_mme
    from mmln.eval.benchmarks import short_answer
    from mmln.eval.runner import Query, human

    rows = read_mme(synth["paths"]["mme_root"])
    qs = [Query([human("<image>\n" + short_answer(r.question))], r.image) for r in rows[::3]]
    images = synth["paths"]["coco_val2014"]
    for line in synth["paths"]["pope_random"].read_text().splitlines()[:6]:
        r = json.loads(line)
        qs.append(Query([human("<image>\n" + r["text"])], images / r["image"]))
    return qs


# ------------------------------------------------------------------------------- runner
def test_logits_answers_agree_with_greedy_first_token(synth):
    """The LM head is rewritten so that greedy's first token is always " Yes" or " No" (logits
    +h.w / -h.w, every other token 0), with w chosen so that the sign varies between queries.
    Logits mode must then give exactly greedy's first token, on left-padded mixed batches."""
    cfg = tiny_config(*eval_overrides(synth, "eval.max_new_tokens=1"))
    runner = make_runner(cfg)
    queries = mixed_queries(synth)
    assert len({len(runner.encode(q)) for q in queries}) > 2  # batches hold prompts of different lengths
    yes, no = runner.yes_no_token_ids()
    head = runner.mllm.llm.get_output_embeddings()
    states = []
    hook = head.register_forward_hook(lambda mod, args, out: states.append(args[0][:, -1].detach()))
    runner.answer_yes_no(queries)
    hook.remove()
    h = torch.cat(states)
    mean = h.mean(0)
    w = torch.linalg.svd(h - mean, full_matrices=False).Vh[0]
    w = w - (w @ mean) / (mean @ mean) * mean  # h.w = (h - mean).w: positive for some, negative for others
    with torch.no_grad():
        head.weight.zero_()
        head.weight[yes], head.weight[no] = w, -w
    greedy = runner.generate(queries)
    logits = runner.answer_yes_no(queries)
    assert set(greedy) == {"Yes", "No"}  # both answers occur: the comparison is not trivial
    assert logits == greedy


def test_batched_generation_equals_one_at_a_time(synth):
    from mmln.eval.runner import Query, with_examples

    cfg = tiny_config(*eval_overrides(synth, "eval.max_new_tokens=6", "eval.batch_size=5"))
    batched = make_runner(cfg)
    with torch.no_grad():  # larger random weights: answers that differ from query to query
        for p in batched.mllm.llm.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    single = make_runner(cfg, mllm=batched.mllm, batch_size=1)
    caption_image = next(Path(synth["paths"]["coco_val2014"]).glob("*.jpg"))
    queries = mixed_queries(synth)[:9] + [
        Query(with_examples([("What is this?", "A red circle."), ("Describe it.", "Two shapes.")], "And this?"),
              caption_image)]
    assert len({len(batched.encode(q)) for q in queries}) > 2
    answers = batched.generate(queries)
    assert len(set(answers)) > 1  # a mix-up of the order would show
    assert answers == [single.generate([q])[0] for q in queries]


def test_v0_output_is_cut_at_separator(synth):
    from mmln.eval.runner import PAPER_DECODING, Runner

    r = make_runner(tiny_config(*eval_overrides(synth)))
    runner = Runner(r.mllm, r.tokenizer, r.image_processor, PAPER_DECODING)
    assert runner.clean(" Yes###Human: more") == "Yes"
    assert runner.decoding.do_sample and runner.decoding.top_k == 50 and runner.decoding.max_new_tokens == 10


# -------------------------------------------------------------------------------- glue
class OracleRunner:
    """Answers every query from the benchmark's ground truth: a perfect model, so any mix-up
    between questions, answers and answer files shows up as a lost point."""

    def __init__(self, truth):
        self.truth = truth  # (image file name, last human turn) -> answer
        self.seen = []

    def _answer(self, q):
        self.seen.append(q)
        return self.truth.get((q.image.name, q.conversations[-1]["value"]), "")

    def generate(self, queries):
        return [self._answer(q) for q in queries]

    answer_yes_no = generate


def test_glue_scores_a_perfect_answerer_perfectly(synth, tmp_path):
    from mmln.eval.mme import read_mme
    from mmln.eval import benchmarks as B

    p = synth["paths"]
    cfg = tiny_config(*eval_overrides(synth))
    truth = {(r.image.name, "<image>\n" + B.short_answer(r.question.replace(B.YES_NO_SUFFIX, ""))): r.gt
             for r in read_mme(p["mme_root"])}
    for split in ("random", "popular", "adversarial"):
        for line in p[f"pope_{split}"].read_text().splitlines():
            r = json.loads(line)
            truth[(r["image"], "<image>\n" + B.short_answer(r["text"]))] = r["label"]
    questions = {q["question_id"]: q for q in json.loads(p["vqa_questions"].read_text())["questions"]}
    for a in json.loads(p["vqa_annotations"].read_text())["annotations"]:
        q = questions[a["question_id"]]
        truth[(f"COCO_val2014_{q['image_id']:012d}.jpg", "<image>\n" + B.short_answer(q["question"]))] = \
            a["multiple_choice_answer"]
    oracle = OracleRunner(truth)

    mme = B.run_benchmark("mme", oracle, cfg, tmp_path)
    assert (mme["perception"], mme["cognition"]) == (2000, 800)
    assert len(list((tmp_path / "mme").glob("*.txt"))) == 14
    pope = B.run_benchmark("pope", oracle, cfg, tmp_path)
    assert set(pope) == {"random", "popular", "adversarial"}
    assert all(m["accuracy"] == 1 and m["f1"] == 1 for m in pope.values())
    lines = [json.loads(x) for x in (tmp_path / "pope/answers.jsonl").read_text().splitlines()]
    assert {x["category"] for x in lines} == set(pope) and len(lines) == 36
    vqa = B.run_benchmark("vqav2", oracle, cfg, tmp_path)
    assert vqa["overall"] == pytest.approx(100) and vqa["n"] == 9
    metrics = {**B.table_metrics("mme", mme), **B.table_metrics("pope", pope), **B.table_metrics("vqav2", vqa)}
    assert metrics["eval/pope_adversarial_f1"] == 100 and metrics["eval/mme_cognition"] == 800


def test_glue_limit_and_paper_prompts(synth, tmp_path):
    """eval.limit keeps every MME subtask / POPE split; the paper profile puts 3 text-only
    examples from other images before the VQAv2 question; captions always get 3 text-only shots."""
    from mmln.eval import benchmarks as B

    cfg = tiny_config(*eval_overrides(synth, "eval.limit=1", "eval.profile=paper"))
    oracle = OracleRunner({})
    assert len(B.run_benchmark("mme", oracle, cfg, tmp_path)["details"]) == 14  # 1 -> one whole pair each
    assert len(oracle.seen) == 28
    assert {m["n"] for m in B.run_benchmark("pope", oracle, cfg, tmp_path).values()} == {1}
    oracle.seen.clear()
    B.run_benchmark("vqav2", oracle, cfg, tmp_path)
    (q,) = oracle.seen
    turns = q.conversations
    assert [t["from"] for t in turns] == ["human", "gpt"] * 3 + ["human"]
    assert all("<image>" not in t["value"] for t in turns[:-1]) and turns[-1]["value"].startswith("<image>\n")
    assert B.SHORT_ANSWER not in turns[-1]["value"]
    questions = {q["question_id"]: q for q in json.loads(synth["paths"]["vqa_questions"].read_text())["questions"]}
    image_id = int(q.image.stem.rsplit("_", 1)[1])
    other_images = {(questions[a["question_id"]]["question"], a["multiple_choice_answer"])
                    for a in json.loads(synth["paths"]["vqa_annotations"].read_text())["annotations"]
                    if questions[a["question_id"]]["image_id"] != image_id}
    examples = [(turns[k]["value"], turns[k + 1]["value"]) for k in range(0, 6, 2)]
    assert len(set(examples)) == 3 and set(examples) <= other_images
    if HAS_JAVA:
        oracle.seen.clear()
        B.run_benchmark("coco", oracle, cfg, tmp_path)
        (q,) = oracle.seen
        data = json.loads(synth["paths"]["karpathy_coco"].read_text())["images"]
        train_caps = {s["raw"] for i in data if i["split"] == "train" for s in i["sentences"]}
        turns = q.conversations
        assert [t["value"] for t in turns[::2]] == [B.CAPTION_QUERY] * 3 + ["<image>\n" + B.CAPTION_QUERY]
        assert all(t["value"] in train_caps for t in turns[1::2])
        assert q.image.parent.name == "val2014"


def test_missing_benchmark_path_exits_2_naming_the_key(synth, capsys):
    from mmln.evaluate import main

    assert main(["--config", str(TINY), "--ckpt", "none", "--bench", "mme"]) == 2
    err = capsys.readouterr().err
    assert "eval.mme_dir" in err and "MME" in err and len(err.strip().splitlines()) == 1
    args = ["--config", str(TINY), "--ckpt", "none", "--bench", "pope,vqav2", *eval_overrides(synth)]
    assert main([*args, "eval.vqav2_images=/no/such/dir"]) == 2
    assert "eval.vqav2_images=/no/such/dir" in capsys.readouterr().err
    assert main([*args, "eval.pope_files=[]"]) == 2
    assert "eval.pope_files" in capsys.readouterr().err


# -------------------------------------------------------------------------- end to end
def test_evaluate_end_to_end_writes_answers_scores_and_mlflow(synth, tmp_path, capsys):
    from mlflow import MlflowClient

    from mmln.evaluate import main
    from mmln.model import build_mllm
    from mmln.model.checkpoint import save_trainable
    from mmln.tracking import get_or_create_experiment, tracking_uri
    from mmln.tuning import apply_strategy

    overrides = eval_overrides(synth, "eval.limit=2", "tune.strategy=layernorm")
    cfg = tiny_config(*overrides)
    run_dir = tmp_path / "outputs" / "exp" / "run"
    mllm = build_mllm(cfg.model)
    apply_strategy(mllm, cfg.tune)
    ckpt = save_trainable(mllm, run_dir / "trainable.safetensors")
    uri = tracking_uri()
    client = MlflowClient(uri)
    run_id = client.create_run(get_or_create_experiment(client, "train-exp", uri)).info.run_id
    (run_dir / "mlflow_run_id").write_text(run_id)

    benches = ["mme", "pope", "vqav2"] + (["coco", "flickr30k"] if HAS_JAVA else [])
    rc = main(["--config", str(TINY), "--ckpt", str(ckpt), "--bench", ",".join(benches), *overrides])
    out = capsys.readouterr().out
    assert rc == 0
    assert "MME-P" in out and "POPE-adv F1" in out
    assert "(Scale: eval.limit 2 (items per benchmark); smoke scale: not evidence (eval.limit under 100))" in out

    assert len(list((run_dir / "mme").glob("*.txt"))) == 14
    assert (run_dir / "pope/answers.jsonl").is_file() and (run_dir / "vqav2/results.json").is_file()
    scores = json.loads((run_dir / "scores.json").read_text())
    metrics = scores["metrics"]
    expected = {"eval/mme_perception", "eval/mme_cognition", "eval/vqav2"} | {
        f"eval/pope_{s}_{m}" for s in ("random", "popular", "adversarial") for m in ("accuracy", "f1")}
    if HAS_JAVA:
        expected |= {"eval/coco_cider", "eval/flickr30k_cider"}
        karpathy = json.loads(synth["paths"]["karpathy_coco"].read_text())["images"]
        test_ids = [i["cocoid"] for i in karpathy if i["split"] == "test"][:2]
        assert [r["image_id"] for r in json.loads((run_dir / "coco/results.json").read_text())] == test_ids
        flickr = json.loads((run_dir / "flickr30k/results.json").read_text())
        assert all(isinstance(r["image_id"], int) and r["image_id"] < 10 for r in flickr)  # imgid
    assert set(metrics) == expected
    assert scores["mlflow_run_id"] == run_id
    logged = client.get_run(run_id).data
    assert {k: v for k, v in logged.metrics.items() if k.startswith("eval/")} == pytest.approx(metrics)
    assert logged.tags["eval_profile"] == "official"


def test_untuned_model_logs_to_a_new_eval_run(synth, tmp_path, capsys):
    from mlflow import MlflowClient

    from mmln.evaluate import main
    from mmln.tracking import tracking_uri

    rc = main(["--config", str(TINY), "--ckpt", "none", "--bench", "vqav2", "--out", str(tmp_path / "base"),
               *eval_overrides(synth, "eval.limit=2", "eval.yes_no=logits")])
    assert rc == 0, capsys.readouterr().err
    scores = json.loads((tmp_path / "base/scores.json").read_text())
    client = MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name("mmln-eval")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_id == scores["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.data.metrics["eval/vqav2"] == pytest.approx(scores["metrics"]["eval/vqav2"])


def test_run_dir_of():
    from mmln.evaluate import run_dir_of

    assert run_dir_of("/x/run/trainable.safetensors") == Path("/x/run")
    assert run_dir_of("/x/run/checkpoints/last.ckpt") == Path("/x/run")


def test_torchrun_data_parallel_equals_one_process(synth, tmp_path):
    """2 CPU processes (gloo) under torchrun answer shards of every benchmark; the all-gathered
    answers, the files rank 0 writes and the scores equal a single process's, and only rank 0
    logs one MLflow run."""
    import os
    import subprocess
    import sys

    from mlflow import MlflowClient

    from conftest import ROOT

    overrides = eval_overrides(synth, "eval.limit=3", "eval.batch_size=2", "tracking.experiment=dp")
    common = ["-m", "mmln.evaluate", "--config", str(TINY), "--ckpt", "none", "--bench", "mme,pope,vqav2"]
    env = {**os.environ, "MMLN_QUIET": "1", "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one"), *overrides],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    dp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29513",
                         *common, "--out", str(tmp_path / "two"), *overrides],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert dp.returncode == 0, dp.stderr[-3000:]
    assert dp.stdout.count("MME-P") == 1  # only rank 0 prints the table

    for rel in ["pope/answers.jsonl", "vqav2/results.json", *(p.relative_to(tmp_path / "one").as_posix()
                                                              for p in (tmp_path / "one/mme").glob("*.txt"))]:
        assert (tmp_path / "two" / rel).read_text() == (tmp_path / "one" / rel).read_text(), rel
    one, two = (json.loads((tmp_path / d / "scores.json").read_text()) for d in ("one", "two"))
    assert one["metrics"] == two["metrics"]
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("dp").experiment_id])
    assert len(runs) == 2  # one per invocation, none from rank 1


def test_an_evaluation_never_replaces_a_result(synth, tmp_path, capsys):
    """An evaluation (limit 3) in a training run; then one with another limit and one of another
    checkpoint go to child runs, and the same evaluation of another benchmark only adds its metrics."""
    from mlflow import MlflowClient

    from mmln.evaluate import main
    from mmln.model import build_mllm
    from mmln.model.checkpoint import save_trainable
    from mmln.tracking import get_or_create_experiment, tracking_uri
    from mmln.tuning import apply_strategy

    overrides = eval_overrides(synth, "tune.strategy=layernorm", "eval.yes_no=logits",
                               f"eval.pope_files=[{synth['paths']['pope_random']}]")
    cfg = tiny_config(*overrides)
    run_dir = tmp_path / "outputs" / "exp" / "run"
    mllm = build_mllm(cfg.model)
    apply_strategy(mllm, cfg.tune)
    ckpt = save_trainable(mllm, run_dir / "trainable.safetensors")
    client = MlflowClient(tracking_uri())
    exp = get_or_create_experiment(client, "train-exp", tracking_uri())
    run_id = client.create_run(exp, run_name="layernorm-lr1").info.run_id
    (run_dir / "mlflow_run_id").write_text(run_id)
    ev = ["--config", str(TINY), "--ckpt", str(ckpt)]

    overrides.append("eval.limit=3")
    assert main([*ev, "--bench", "pope", *overrides]) == 0
    full = client.get_run(run_id).data
    pope = {k: v for k, v in full.metrics.items() if k.startswith("eval/pope")}
    assert len(pope) == 2 and full.tags["eval_limit"] == "3" and full.tags["eval_benches"] == "pope"

    # another limit: a child run, tagged; the training run and its files keep the first evaluation
    assert main([*ev, "--bench", "pope,vqav2", *overrides, "eval.limit=2"]) == 0
    assert "child run 'layernorm-lr1-eval-limit2'" in capsys.readouterr().err
    parent = client.get_run(run_id).data
    assert {k: v for k, v in parent.metrics.items() if k.startswith("eval/")} == pope
    (child,) = client.search_runs([exp], "tags.kind = 'eval'")
    t = child.data.tags
    assert t["mlflow.parentRunId"] == run_id and t["eval_limit"] == "2" and t["eval_benches"] == "pope,vqav2"
    assert t["eval_ckpt"] == str(ckpt) and len(t["eval_ckpt_sha256"]) == 16
    assert "eval/vqav2" in child.data.metrics
    on_disk = json.loads((run_dir / "scores.json").read_text())
    assert on_disk["metrics"] == pytest.approx(pope) and on_disk["mlflow_run_id"] == run_id

    # the same evaluation, another benchmark: merged into the training run, nothing replaced
    assert main([*ev, "--bench", "pope,vqav2", *overrides]) == 0
    merged = client.get_run(run_id).data
    assert {k: v for k, v in merged.metrics.items() if k.startswith("eval/pope")} == pope
    assert "eval/vqav2" in merged.metrics and merged.tags["eval_benches"] == "pope,vqav2"
    with open(client.download_artifacts(run_id, "eval/scores.json", str(tmp_path))) as f:
        assert set(json.load(f)["benches"]) == {"pope", "vqav2"}

    # another checkpoint in the same run dir (other tensor values): its own child run
    with torch.no_grad():
        next(p for p in mllm.parameters() if p.requires_grad).add_(1.0)
    other = save_trainable(mllm, run_dir / "checkpoints" / "step1.safetensors")
    assert main(["--config", str(TINY), "--ckpt", str(other), "--bench", "vqav2", "--run-id", run_id, *overrides]) == 0
    children = client.search_runs([exp], "tags.kind = 'eval'")
    assert len(children) == 2 and any("-eval-ckpt-" in r.info.run_name for r in children)
    assert client.get_run(run_id).data.metrics["eval/vqav2"] == merged.metrics["eval/vqav2"]

    # the last line names the folder written: for a child evaluation, an eval-<time>/ subfolder of the run dir
    capsys.readouterr()
    assert main([*ev, "--bench", "vqav2", *overrides, "eval.limit=1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    written = Path(last.split(" in ", 1)[1].split(";")[0])
    assert written.parent == run_dir and written.name.startswith("eval-") and (written / "scores.json").is_file(), last
    # an explicit --out is used as given (no eval-<time>/ in it); one holding another evaluation is refused
    given = tmp_path / "given"
    assert main([*ev, "--bench", "vqav2", *overrides, "eval.limit=1", "--out", str(given)]) == 0
    assert (given / "scores.json").is_file() and not list(given.glob("eval-*"))
    assert f"in {given};" in capsys.readouterr().out
    before = (given / "scores.json").read_bytes()
    assert main([*ev, "--bench", "vqav2", *overrides, "eval.limit=2", "--out", str(given)]) == 2
    assert "holds another evaluation's scores.json" in capsys.readouterr().err
    assert (given / "scores.json").read_bytes() == before


def test_a_file_that_is_not_a_checkpoint_is_one_line_exit_2(synth, tmp_path, capsys):
    from mmln.evaluate import main

    bad = tmp_path / "run" / "last.ckpt"
    bad.parent.mkdir()
    bad.write_text("not a checkpoint\n")
    rc = main(["--config", str(TINY), "--ckpt", str(bad), "--bench", "vqav2", *eval_overrides(synth, "eval.limit=1")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"mmln.evaluate: error: --ckpt {bad}: not a checkpoint")


def test_a_benchmark_image_over_the_size_limits_is_one_line_exit_2(synth, tmp_path, capsys):
    from mmln.evaluate import main

    rc = main(["--config", str(TINY), "--ckpt", "none", "--bench", "vqav2", "--out", str(tmp_path / "e"),
               *eval_overrides(synth, "eval.limit=2", "data.max_image_pixels=1000", "data.num_workers=1")])  # 64x64 images; in a worker
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "error" in x.lower()]  # MLflow's own INFO lines aside
    assert rc == 2 and "Traceback" not in err, err
    assert "64x64 is 4096 pixels, over data.max_image_pixels=1000" in line and ".jpg: " in line
