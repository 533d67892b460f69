"""Benchmark glue: benchmark files -> queries -> `Runner` -> official answer files -> scores.

Prompts follow LLaVA's evaluation scripts (`scripts/v1_5/eval/*.sh` with their question files):

- MME (`llava_mme.jsonl`): the MME question without its " Please answer yes or no.", then
  "\\nAnswer the question using a single word or phrase."; the answer file keeps the official
  question text.
- POPE (`llava_pope_test.jsonl`): the question, then "\\nAnswer the question using a single word
  or phrase."; answers carry `"category": <split>` so one file holds every split.
- VQAv2 (`llava_vqav2_mscoco_test-dev2015.jsonl`): the question, then the same short-answer
  instruction. Profile `paper` instead puts 3 text-only (question, answer) examples before the
  question (other images' questions of the same file with their most common human answer,
  drawn per question with `eval.seed`) and no instruction.
- COCO / Flickr30k captions (Karpathy `test` split, both profiles): 3 text-only
  examples, each the query "Please provide a description of the picture." answered by one
  reference caption of a random Karpathy `train` image (drawn per test image with
  `eval.seed`), then the same query with the image.

Yes/no benchmarks (MME, POPE) answer from the "Yes" vs "No" next-token logits when
`eval.yes_no=logits`. `eval.limit=N` evaluates the first N questions of every MME subtask
(rounded up to whole image pairs) and of every POPE split, the first N VQAv2 questions, the
first N caption test images; the scores cover exactly the evaluated questions.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from mmln.config import ConfigError
from mmln.base.constants import SHORT_ANSWER, YES_NO_SUFFIX
from mmln.eval import caption, mme, pope, vqav2

if TYPE_CHECKING:  # the runner imports torch: only when a benchmark runs
    from mmln.eval.runner import Runner

BENCHES = ("mme", "pope", "vqav2", "coco", "flickr30k")
CAPTION_QUERY = "Please provide a description of the picture."
N_SHOTS = 3

# per benchmark: (eval.<key>, kind, what it must be)
INPUTS: dict[str, list[tuple[str, str, str]]] = {
    "mme": [("mme_dir", "dir", "the MME release folder (MME_Benchmark_release_version/ or its parent), one "
             "folder per subtask with the images and the question files <image>.txt")],
    "pope": [("pope_files", "files", "the POPE annotation files coco_pope_<split>.json (JSON lines with "
              "question_id, image, text, label), e.g. [coco_pope_random.json, coco_pope_popular.json, "
              "coco_pope_adversarial.json]"),
             ("pope_images", "dir", "the folder of COCO val2014 images the POPE files name")],
    "vqav2": [("vqav2_questions", "file", "the official questions JSON (v2_OpenEnded_mscoco_val2014_questions.json)"),
              ("vqav2_annotations", "file", "the official annotations JSON (v2_mscoco_val2014_annotations.json)"),
              ("vqav2_images", "dir", "the folder of COCO images the questions name (val2014/)")],
    "coco": [("coco_karpathy", "file", "the Karpathy split file dataset_coco.json"),
             ("coco_images", "dir", "the COCO image folder holding val2014/ and train2014/")],
    "flickr30k": [("flickr30k_karpathy", "file", "the Karpathy split file dataset_flickr30k.json"),
                  ("flickr30k_images", "dir", "the folder of Flickr30k images")],
}


class MissingBenchmarkData(ConfigError):
    """A benchmark's input is not configured or not on disk; the message names the eval.* key."""


def check_inputs(cfg: Any, benches: list[str]) -> None:
    """Every configured path the benchmarks need exists, else `MissingBenchmarkData` naming the key."""
    for bench in benches:
        if bench not in INPUTS:
            raise ConfigError(f"unknown benchmark {bench!r}; choose from {', '.join(BENCHES)}")
        for key, kind, what in INPUTS[bench]:
            value = cfg.eval[key]
            values = list(value) if kind == "files" else [value]
            if not values or any(v in (None, "") for v in values):
                raise MissingBenchmarkData(f"--bench {bench} needs eval.{key}: set it to {what} "
                                           f"(e.g. eval.{key}=PATH on the command line)")
            for v in values:
                ok = Path(v).is_dir() if kind == "dir" else Path(v).is_file()
                if not ok:
                    raise MissingBenchmarkData(f"eval.{key}={v} does not exist or is not a "
                                               f"{'folder' if kind == 'dir' else 'file'}: it must be {what}")


def _limit(rows: list, n: int | None) -> list:
    return rows if n is None else rows[: int(n)]


def _yes_no(runner: Runner, cfg: Any, queries: list[Query]) -> list[str]:
    return runner.answer_yes_no(queries) if cfg.eval.yes_no == "logits" else runner.generate(queries)


def short_answer(question: str) -> str:
    return question + SHORT_ANSWER


# ----------------------------------------------------------------------------------- MME
def run_mme(runner: Runner, cfg: Any, out: Path) -> dict[str, Any]:
    from mmln.eval.runner import Query, human

    from mmln.eval.mme import read_mme  # the release-layout reader (real or synthetic MME)

    rows, per_task = [], {}
    for row in read_mme(cfg.eval.mme_dir):
        per_task.setdefault(row.subtask, []).append(row)
    n = cfg.eval.limit
    for task_rows in per_task.values():
        rows += _limit(task_rows, None if n is None else 2 * ((int(n) + 1) // 2))
    queries = [Query([human("<image>\n" + short_answer(r.question.replace(YES_NO_SUFFIX, "").strip()))], r.image)
               for r in rows]
    answers = _yes_no(runner, cfg, queries)
    written = mme.write_mme_answers(out, [{"subtask": r.subtask, "image": r.image.name, "question": r.question,
                                           "gt": r.gt, "response": a} for r, a in zip(rows, answers, strict=True)])
    return mme.score_mme({p.stem: mme.read_mme_answers(p) for p in written}, cfg.eval.profile)


# ---------------------------------------------------------------------------------- POPE
def run_pope(runner: Runner, cfg: Any, out: Path) -> dict[str, Any]:
    from mmln.eval.runner import Query, human

    annotations = {}
    for path in cfg.eval.pope_files:
        split = pope.split_name(path)
        if split in annotations:
            raise ConfigError(f"eval.pope_files: split '{split}' given twice ({path})")
        annotations[split] = _limit(pope.read_pope_annotations(path), cfg.eval.limit)
    rows = [(split, r) for split, split_rows in annotations.items() for r in split_rows]
    images = Path(cfg.eval.pope_images)
    queries = [Query([human("<image>\n" + short_answer(r["text"]))], images / r["image"]) for _, r in rows]
    answers = _yes_no(runner, cfg, queries)
    answer_rows = [{"question_id": r["question_id"], "prompt": r["text"], "text": a, "category": split}
                   for (split, r), a in zip(rows, answers, strict=True)]
    path = pope.write_pope_answers(out / "answers.jsonl", answer_rows)
    return pope.score_pope(pope.read_pope_answers(path), annotations, cfg.eval.profile, answers_name=str(path))


# --------------------------------------------------------------------------------- VQAv2
def run_vqav2(runner: Runner, cfg: Any, out: Path) -> dict[str, Any]:
    from mmln.eval.runner import Query, human, with_examples

    with open(cfg.eval.vqav2_questions, encoding="utf-8") as f:
        subtype = json.load(f).get("data_subtype", "val2014")
    questions = vqav2.read_vqav2_questions(cfg.eval.vqav2_questions)
    annotations = vqav2.read_vqav2_annotations(cfg.eval.vqav2_annotations)
    evaluated = _limit(annotations, cfg.eval.limit)
    images = Path(cfg.eval.vqav2_images)
    pool = [(questions[a["question_id"]], a.get("multiple_choice_answer") or a["answers"][0]["answer"])
            for a in annotations if a["question_id"] in questions]
    queries = []
    for a in evaluated:
        q = questions[a["question_id"]]
        image = images / f"COCO_{subtype}_{q['image_id']:012d}.jpg"
        if cfg.eval.profile == "paper":
            rnd = random.Random(f"{cfg.eval.seed}:vqav2:{q['question_id']}")
            queries.append(Query(with_examples(_draw_examples(pool, q["image_id"], rnd), q["question"]), image))
        else:
            queries.append(Query([human("<image>\n" + short_answer(q["question"]))], image))
    answers = runner.generate(queries)
    vqav2.write_vqav2_results(out / "results.json", [{"question_id": a["question_id"], "answer": ans}
                                                     for a, ans in zip(evaluated, answers, strict=True)])
    results = vqav2.read_vqav2_results(out / "results.json")
    return vqav2.score_vqav2(results, evaluated, cfg.eval.profile)


def _draw_examples(pool: list[tuple[dict, str]], image_id: Any, rnd: random.Random) -> list[tuple[str, str]]:
    """N_SHOTS distinct (question, answer) pairs about images other than `image_id`."""
    picked: list[tuple[str, str]] = []
    for k in rnd.sample(range(len(pool)), min(len(pool), 100)):
        q, a = pool[k]
        if q["image_id"] != image_id and (q["question"], a) not in picked:
            picked.append((q["question"], a))
        if len(picked) == N_SHOTS:
            break
    return picked


# ------------------------------------------------------------------------------ captions
def _karpathy_images(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: expected a Karpathy split file with an 'images' list")
    return data["images"]


def run_caption(runner: Runner, cfg: Any, out: Path, bench: str) -> dict[str, Any]:
    from mmln.eval.runner import Query, with_examples

    karpathy, folder = ((cfg.eval.coco_karpathy, cfg.eval.coco_images) if bench == "coco"
                        else (cfg.eval.flickr30k_karpathy, cfg.eval.flickr30k_images))
    images = _karpathy_images(karpathy)
    test = _limit([i for i in images if i.get("split") == "test"], cfg.eval.limit)
    train = [i for i in images if i.get("split") == "train" and i.get("sentences")]
    if not test:
        raise ValueError(f"{karpathy}: no image in split 'test'")
    if not train:
        raise ValueError(f"{karpathy}: no image in split 'train' to draw the in-context captions from")
    queries = []
    for image in test:
        image_id = caption.karpathy_image_id(image)
        rnd = random.Random(f"{cfg.eval.seed}:{bench}:{image_id}")
        shots = [(CAPTION_QUERY, rnd.choice(t["sentences"])["raw"]) for t in rnd.sample(train, min(N_SHOTS, len(train)))]
        path = Path(folder) / image.get("filepath", "") / image["filename"]
        queries.append(Query(with_examples(shots, CAPTION_QUERY), path))
    answers = runner.generate(queries)
    ids = [caption.karpathy_image_id(i) for i in test]
    path = caption.write_caption_results(out / "results.json", [{"image_id": i, "caption": c}
                                                               for i, c in zip(ids, answers, strict=True)])
    references = {i: [s["raw"] for s in image["sentences"]] for i, image in zip(ids, test)}
    return caption.score_captions(caption.read_caption_results(path), references, cfg.eval.profile)


RUNNERS: dict[str, Callable[[Runner, Any, Path], dict[str, Any]]] = {
    "mme": run_mme, "pope": run_pope, "vqav2": run_vqav2,
    "coco": lambda r, c, o: run_caption(r, c, o, "coco"),
    "flickr30k": lambda r, c, o: run_caption(r, c, o, "flickr30k"),
}


def run_benchmark(bench: str, runner: Runner, cfg: Any, out_dir: Path) -> dict[str, Any]:
    """Answer `bench`, write its official answer file(s) into `out_dir/<bench>/`, return its scores."""
    out = Path(out_dir) / bench
    out.mkdir(parents=True, exist_ok=True)
    return RUNNERS[bench](runner, cfg, out)


def answer_inputs(cfg: Any, bench: str, out_dir: Path) -> dict[str, Any]:
    """Where `run_benchmark` put `bench`'s answer files (`answers`) and the ground truth they are
    scored against (its `eval.*` inputs), as absolute paths: what `mmln.eval.items` reads back."""
    def absolute(v: Any) -> Any:
        return [absolute(x) for x in v] if isinstance(v, (list, tuple)) else str(Path(v).resolve())

    return {"answers": absolute(Path(out_dir) / bench),
            **{key: absolute(list(cfg.eval[key]) if kind == "files" else cfg.eval[key]) for key, kind, _ in INPUTS[bench]}}


def table_metrics(bench: str, result: dict[str, Any]) -> dict[str, float]:
    """The paper's Table 1 columns of one benchmark under their stable MLflow names
    (POPE accuracy / F1 in percent, like every other column)."""
    if bench == "mme":
        return {"eval/mme_perception": result["perception"], "eval/mme_cognition": result["cognition"]}
    if bench == "pope":
        return {f"eval/pope_{split}_{k}": 100 * m[k] for split, m in result.items() for k in ("accuracy", "f1")}
    if bench == "vqav2":
        return {"eval/vqav2": result["overall"]}
    return {f"eval/{bench}_cider": result["CIDEr"]}
