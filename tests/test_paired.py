"""Paired tests: per-item terms read back from a real evaluation's answer files recompute every
Table-1 column exactly (the official scorers give the same numbers), the paired bootstrap against
known answers (identical evaluations; a constructed difference; SciPy's own paired bootstrap), and
the report's paired table from MLflow runs."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from conftest import tiny_config
from mmln.eval import caption, mme, pope, vqav2
from mmln.eval.benchmarks import BENCHES, table_metrics
from mmln.eval.items import Items, evaluation_items
from mmln.eval.selection import paired_bootstrap

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="CIDEr needs Java")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """An untuned tiny model evaluated on every synthetic benchmark (A), and a copy of its answer
    files with answers changed on purpose (B), both with their official scores. ~10 s."""
    from mmln.data.synth import synthesize, text_corpus
    from mmln.data.tokenizer import train_tiny_tokenizer
    from mmln.evaluate import evaluate

    root = tmp_path_factory.mktemp("paired")
    p = synthesize(root / "data", image_size=64, n_pretrain=0, n_instruct=0, n_mme_per_subtask=2,
                   n_pope_images=3, n_vqa_images=4, n_caption_images=10)
    tok = train_tiny_tokenizer(text_corpus(2000) + ["Yes. No."] * 300, root / "tok", vocab_size=500)
    pope_files = [str(p[f"pope_{s}"]) for s in ("random", "popular", "adversarial")]
    cfg = tiny_config(
        f"model.llm.tokenizer={tok}", "model.max_length=512", "data.num_workers=0", "eval.max_new_tokens=4",
        f"eval.mme_dir={p['mme_root']}", f"eval.pope_files=[{','.join(pope_files)}]",
        f"eval.pope_images={p['coco_val2014']}", f"eval.vqav2_questions={p['vqa_questions']}",
        f"eval.vqav2_annotations={p['vqa_annotations']}", f"eval.vqav2_images={p['coco_val2014']}",
        f"eval.coco_karpathy={p['karpathy_coco']}", f"eval.coco_images={p['coco_val2014'].parent}",
        f"eval.flickr30k_karpathy={p['karpathy_flickr30k']}", f"eval.flickr30k_images={p['flickr30k_images']}")
    a = evaluate(cfg, None, list(BENCHES), root / "A", log=False)

    # B: the same files, answers changed: POPE random all right, MME's first subtask all right,
    # VQAv2 the annotators' most common answer on every other question, captions = a reference
    b_dir = root / "B"
    shutil.copytree(root / "A", b_dir)
    rows = pope.read_pope_answers(b_dir / "pope/answers.jsonl")
    labels = {x["question_id"]: x["label"] for x in pope.read_pope_annotations(p["pope_random"])}
    pope.write_pope_answers(b_dir / "pope/answers.jsonl",
                            [{**r, "text": labels[r["question_id"]].capitalize()} if r["category"] == "random" else r
                             for r in rows])
    task = sorted((b_dir / "mme").glob("*.txt"))[0]
    mme.write_mme_answers(b_dir / "mme", [{"subtask": task.stem, "image": x.image, "question": x.question, "gt": x.gt,
                                            "response": x.gt} for x in mme.read_mme_answers(task)])
    anns = {x["question_id"]: x for x in vqav2.read_vqav2_annotations(p["vqa_annotations"])}
    res = vqav2.read_vqav2_results(b_dir / "vqav2/results.json")
    vqav2.write_vqav2_results(b_dir / "vqav2/results.json", [
        {"question_id": q, "answer": anns[q]["multiple_choice_answer"] if i % 2 == 0 else ans}
        for i, (q, ans) in enumerate(res.items())])
    for bench in ("coco", "flickr30k"):
        refs = caption.read_karpathy_split(p[f"karpathy_{bench}"])
        caps = caption.read_caption_results(b_dir / bench / "results.json")
        caption.write_caption_results(b_dir / bench / "results.json",
                                      [{"image_id": i, "caption": refs[i][0] if n % 3 else c}
                                       for n, (i, c) in enumerate(caps.items())])
    b = {**a, "inputs": {k: {**v, "answers": str(b_dir / k)} for k, v in a["inputs"].items()}}
    official = {**table_metrics("mme", mme.score_mme_dir(b_dir / "mme")),
                **table_metrics("pope", pope.score_pope_files(b_dir / "pope/answers.jsonl", pope_files)),
                **table_metrics("vqav2", vqav2.score_vqav2_files(b_dir / "vqav2/results.json", p["vqa_questions"],
                                                                 p["vqa_annotations"])),
                **{m: v for bench in ("coco", "flickr30k") for m, v in table_metrics(bench, caption.score_caption_files(
                    b_dir / bench / "results.json", p[f"karpathy_{bench}"])).items()}}
    b["metrics"] = official
    return {"a": a, "b": b, "root": root}


def test_items_recompute_every_table1_column(evaluated):
    from mmln.eval.columns import TABLE1_COLUMNS

    for scores in (evaluated["a"], evaluated["b"]):
        items = evaluation_items(scores)
        assert set(items) == {m for _, m in TABLE1_COLUMNS} == set(scores["metrics"])
        for m, value in scores["metrics"].items():
            assert items[m].value() == pytest.approx(value, rel=1e-12, abs=1e-9), m
    a, b = evaluation_items(evaluated["a"]), evaluation_items(evaluated["b"])
    changed = [m for m in a if a[m].value() != b[m].value()]
    assert {"eval/pope_random_accuracy", "eval/vqav2", "eval/coco_cider", "eval/flickr30k_cider"} <= set(changed)
    assert len(a["eval/mme_perception"].ids) == 20 and len(a["eval/pope_random_accuracy"].ids) == 18


def test_paired_bootstrap_known_answers(evaluated):
    a, b = evaluation_items(evaluated["a"]), evaluation_items(evaluated["b"])
    for m in a:  # identical evaluations: exactly no difference, an interval of width 0
        assert paired_bootstrap(a[m], a[m]) == (0.0, 0.0, 0.0)
        d, lo, hi = paired_bootstrap(a[m], b[m].aligned(a[m].ids))  # the constructed differences
        assert d == pytest.approx(evaluated["a"]["metrics"][m] - evaluated["b"]["metrics"][m], abs=1e-9)
        assert lo <= d <= hi
    # a mean difference: SciPy's paired bootstrap (index resampling) and the normal interval agree
    from scipy import stats

    rng = np.random.default_rng(3)
    x = 100.0 * (rng.random(2000) < 0.7)
    y = np.where(rng.random(2000) < 0.2, 100.0 - x, x)
    ia, ib = Items(list(range(2000)), x, np.ones(2000)), Items(list(range(2000)), y, np.ones(2000))
    d, lo, hi = paired_bootstrap(ia, ib)
    ref = stats.bootstrap((x, y), lambda p, q, axis=-1: p.mean(axis) - q.mean(axis), paired=True, vectorized=True,
                          method="percentile", rng=1).confidence_interval
    se = np.std(x - y, ddof=1) / np.sqrt(len(x))
    assert d == pytest.approx(np.mean(x - y)) and lo < d < hi
    assert lo == pytest.approx(ref.low, abs=0.3 * se) and hi == pytest.approx(ref.high, abs=0.3 * se)  # Monte Carlo noise
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.1)
    with pytest.raises(ValueError, match="different items"):
        ia.aligned(list(range(1999)))


def test_report_marks_significant_differences(evaluated, tmp_path):
    from mmln import report
    from mmln.tracking import get_or_create_experiment, tracking_uri

    c = MlflowClient(tracking_uri())
    exp = get_or_create_experiment(c, "paired", tracking_uri())
    for strategy, scores in (("finetune", evaluated["a"]), ("layernorm", evaluated["a"]), ("lora", evaluated["b"])):
        run = c.create_run(exp, run_name=strategy, tags={"model": "m", "strategy": strategy, "lr": "0.001",
                                                         "stage": "instruct"}).info.run_id
        c.log_batch(run, metrics=[Metric(k, v, 0, 0) for k, v in scores["metrics"].items()])
        path = tmp_path / strategy / "scores.json"
        path.parent.mkdir()
        path.write_text(json.dumps(scores, default=str))
        c.log_artifact(run, str(path), artifact_path="eval")
        c.set_terminated(run, "FINISHED")
    out = tmp_path / "report"
    assert report.main(["--experiment", "paired", "--out", str(out), "--no-log", "--tables", "table1,paired"]) == 0
    rows = list(csv.DictReader((out / "paired.csv").open()))
    same = [r for r in rows if (r["A"], r["B"]) == ("finetune", "layernorm")]
    assert len(same) == 11 and all(float(r["difference"]) == float(r["low"]) == float(r["high"]) == 0.0
                                   and r["significant"] == "False" for r in same)
    flipped = next(r for r in rows if (r["A"], r["B"]) == ("finetune", "lora") and r["metric"] == "eval/pope_random_accuracy")
    want = evaluated["a"]["metrics"]["eval/pope_random_accuracy"] - evaluated["b"]["metrics"]["eval/pope_random_accuracy"]
    assert float(flipped["difference"]) == pytest.approx(want) and float(flipped["low"]) <= want <= float(flipped["high"])
    assert flipped["significant"] == str(float(flipped["low"]) > 0 or float(flipped["high"]) < 0)
    md = (out / "report.md").read_text()
    assert "Paired tests" in md and "finetune (lr 0.001)" in md and "0 [0, 0]" in md
