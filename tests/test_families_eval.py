"""`mmln.evaluate`, `mmln.predict` and `mmln.load(...).ask` on native families, on tiny random
checkpoints written by the real classes: batched generation through the family's own processor,
chat template and `generate` (`mmln.eval.family_runner`), scored by the same scorers."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mmln.config import load_config
from tests.conftest import ROOT

FAMILIES = ("qwen2_5_vl", "qwen2_vl", "idefics3", "llava_onevision", "gemma3")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from mmln.data.synth import synthesize

    root = tmp_path_factory.mktemp("feval")
    (root / "img").mkdir()
    rng = np.random.RandomState(0)
    for i, (h, w) in enumerate([(40, 28), (32, 32), (24, 48)]):
        Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8")).save(root / "img" / f"{i}.png")
    root.joinpath("paths.json").write_text(json.dumps({k: str(v) for k, v in synthesize(
        root / "bench", image_size=64, n_pretrain=0, n_instruct=0, n_mme_per_subtask=1, n_pope_images=2,
        n_vqa_images=2, n_caption_images=4).items()}))
    return root


@pytest.fixture(scope="module")
def dirs(root):
    from mmln.model.families.tiny import write_tiny

    return {f: write_tiny(f, root / f) for f in FAMILIES}


def cfg_of(d, *extra):
    return load_config(None, [f"model.init_from={d}", "model.dtype=float32", "data.num_workers=0",
                              "eval.max_new_tokens=5", "eval.batch_size=2", *extra])


def queries(root):
    from mmln.eval.runner import Query, human

    return [Query([human("<image>\nWhat is in the image?")], root / "img" / "0.png"),
            Query([human("Is it red?")]),
            Query([human("<image>\nIs there a dog? Answer the question using a single word or phrase.")],
                  root / "img" / "2.png"),
            Query([human("<image>\nDescribe it.")], root / "img" / "1.png")]


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_generation_equals_the_family_generate(root, dirs, family):
    """Per batch (left-padded, prompts of different lengths, images apart from text-only ones): the
    processor inputs equal the processor's own on the template's rendering, and mmln's new ids equal
    `AutoModelForImageTextToText.generate` on them, greedy; answers come back in the input order."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmln.run.build import build_model
    from mmln.model.families.answer import end_of_turn_ids, family_runner

    runner = family_runner(cfg_of(dirs[family]), build_model(cfg_of(dirs[family])))
    qs = queries(root)
    processor = AutoProcessor.from_pretrained(dirs[family])
    ref = AutoModelForImageTextToText.from_pretrained(dirs[family]).eval()
    order, batches = runner.batches(qs)
    assert [len(b) for b in batches] == [2, 1, 1]  # 3 image queries by 2, then the text-only one
    want: dict[int, str] = {}
    for batch in batches:
        msgs = [[{"role": "user", "content": ([{"type": "image"}] if q.image else []) + [
            {"type": "text", "text": q.conversations[-1]["value"].replace("<image>\n", "")}]}] for q in batch]
        texts = [processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in msgs]
        images = [[Image.open(q.image).convert("RGB")] for q in batch if q.image]
        enc = processor(text=texts, images=images or None, add_special_tokens=False, padding=True,
                        padding_side="left", return_tensors="pt")
        ours_enc = runner.encode(batch)
        assert set(ours_enc) == set(enc) and all(torch.equal(ours_enc[k], enc[k]) for k in enc)
        if len(batch) == 2:
            assert (enc["attention_mask"][:, 0] == 0).any()  # really left-padded
        mine = runner.generate_ids(ours_enc)
        with torch.no_grad():
            theirs = ref.generate(**enc, max_new_tokens=5, do_sample=False, eos_token_id=end_of_turn_ids(processor),
                                  pad_token_id=processor.tokenizer.pad_token_id)[:, enc["input_ids"].shape[1]:]
        assert torch.equal(mine, theirs), (mine, theirs)
        for q, row in zip(batch, theirs):
            want[next(i for i in range(len(qs)) if qs[i] is q)] = processor.tokenizer.decode(
                row, skip_special_tokens=True).strip()
    assert runner.generate(qs) == [want[i] for i in range(len(qs))]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "idefics3", "llava_onevision"])
def test_yes_no_logits_agree_with_greedy_first_token(root, dirs, family):
    """Logits mode picks between the template's first tokens of "Yes" and "No": when greedy's first
    token is one of them, both modes agree (the LM head is rewritten so that it always is)."""
    from mmln.run.build import build_model
    from mmln.eval.family_runner import answer_token
    from mmln.model.families.answer import family_runner

    cfg = cfg_of(dirs[family], "eval.max_new_tokens=1")
    mllm = build_model(cfg)
    assert mllm.llm.lm_head.weight is not mllm.llm.get_input_embeddings().weight  # the head is rewritten below
    runner = family_runner(cfg, mllm)
    yes, no = answer_token(runner.processor, "Yes"), answer_token(runner.processor, "No")
    assert yes != no
    head = mllm.llm.lm_head.weight
    with torch.no_grad():
        w = torch.randn(head.shape[1], generator=torch.Generator().manual_seed(3))
        head.zero_()
        head[yes], head[no] = w, -w
    qs = queries(root)
    logits = runner.answer_yes_no(qs)
    greedy = [runner.tokenizer.convert_ids_to_tokens(runner.generate_ids(runner.encode([q]))[0, 0].item()) for q in qs]
    tokens = {runner.tokenizer.convert_ids_to_tokens(yes): "Yes", runner.tokenizer.convert_ids_to_tokens(no): "No"}
    assert [tokens[g] for g in greedy] == logits and set(logits) <= {"Yes", "No"}


def yaml_for(tmp_path, d):
    cfg = tmp_path / "family.yaml"
    cfg.write_text(f"model:\n  name: tiny_family\n  init_from: {d}\n")
    return str(cfg)


def test_evaluate_in_process_scores_pope_from_logits(root, dirs, tmp_path):
    """The fast sibling of the CLI test below: `mmln.evaluate.evaluate` on a tiny SmolVLM (Idefics3)."""
    from mmln.evaluate import evaluate

    p = json.loads((root / "paths.json").read_text())
    cfg = cfg_of(dirs["idefics3"], "eval.yes_no=logits", f"eval.pope_files=[{p['pope_random']}]",
                 f"eval.pope_images={p['coco_val2014']}")
    scores = evaluate(cfg, None, ["pope"], tmp_path / "ev", log=False)
    assert 0 <= scores["metrics"]["eval/pope_random_accuracy"] <= 100
    answers = (tmp_path / "ev" / "pope" / "answers.jsonl").read_text().splitlines()
    assert answers and all(json.loads(a)["text"] in ("Yes", "No") for a in answers)


@pytest.mark.slow
def test_evaluate_scores_a_family_with_the_same_scorers(root, dirs, tmp_path):
    """`python -m mmln.evaluate` on a tiny Qwen2.5-VL: MME and POPE (yes/no from logits and from
    generation) and VQAv2 are answered, written in the official files and scored."""
    p = json.loads((root / "paths.json").read_text())
    pope = ",".join(p[f"pope_{s}"] for s in ("random", "popular", "adversarial"))
    conf = yaml_for(tmp_path, dirs["qwen2_5_vl"])
    args = ["model.dtype=float32", "data.num_workers=0",
            "eval.max_new_tokens=3", "eval.batch_size=3", f"eval.mme_dir={p['mme_root']}",
            f"eval.pope_files=[{pope}]", f"eval.pope_images={p['coco_val2014']}",
            f"eval.vqav2_questions={p['vqa_questions']}", f"eval.vqav2_annotations={p['vqa_annotations']}",
            f"eval.vqav2_images={p['coco_val2014']}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"output_dir={tmp_path}/out"]
    out = subprocess.run([sys.executable, "-m", "mmln.evaluate", "--config", conf, "--ckpt", "none",
                          "--bench", "mme,pope,vqav2", "--out", str(tmp_path / "ev"), *args, "eval.yes_no=logits"],
                         cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    scores = json.loads((tmp_path / "ev" / "scores.json").read_text())
    assert {"eval/mme_perception", "eval/vqav2", "eval/pope_random_accuracy"} <= set(scores["metrics"])
    assert scores["benches"]["vqav2"]["n"] == len(json.loads(open(p["vqa_questions"]).read())["questions"])
    answers = [json.loads(line) for line in (tmp_path / "ev" / "pope" / "answers.jsonl").read_text().splitlines()]
    assert answers and all(a["text"] in ("Yes", "No") for a in answers)
    gen = subprocess.run([sys.executable, "-m", "mmln.evaluate", "--config", conf, "--ckpt", "none",
                          "--bench", "pope", "--out", str(tmp_path / "ev2"), *args, "eval.yes_no=generate"], cwd=ROOT,
                         capture_output=True, text=True)
    assert gen.returncode == 0, gen.stderr[-3000:]
    generated = (tmp_path / "ev2" / "pope" / "answers.jsonl").read_text().splitlines()
    assert len(generated) == len(answers)  # free text from the family's generate, scored by the same scorer
    assert "eval/pope_random_accuracy" in json.loads((tmp_path / "ev2" / "scores.json").read_text())["metrics"]


def test_predict_and_load_ask_answer_on_a_family(root, dirs, tmp_path):
    import mmln

    d = dirs["gemma3"]
    img = str(root / "img" / "0.png")
    model = mmln.load(cfg_of(d))
    both = model.ask([img, None], ["What is in the image?", "Is it red?"])
    assert both == [model.ask(img, "What is in the image?"), model.ask(None, "Is it red?")]
    out = subprocess.run([sys.executable, "-m", "mmln.predict", "--config", yaml_for(tmp_path, d), "--ckpt", "none",
                          "--image", img, "--question", "What is in the image?",
                          "model.dtype=float32", "eval.max_new_tokens=5"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == [both[0]]


def test_load_a_checkpoint_directory_and_its_hf_export_then_ask(root, dirs, tmp_path):
    """`mmln.load(DIR)`: a family's checkpoint directory is the model (no config file); an export
    (`--format hf`) of a tuned run loads the same way and answers as the run does."""
    import mmln
    from mmln.run.build import build_model
    from mmln.export import export
    from mmln.model.checkpoint import save_trainable

    d, img = dirs["qwen2_5_vl"], root / "img" / "0.png"
    ovr = ["model.dtype=float32", "eval.max_new_tokens=5"]
    assert mmln.load(str(d), overrides=ovr).ask(img, "What is it?") == mmln.load(cfg_of(d)).ask(img, "What is it?")
    cfg = cfg_of(d, "tune.strategy=layernorm")
    mllm = build_model(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in mllm.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    ckpt = save_trainable(mllm, tmp_path / "run" / "trainable.safetensors")
    out = export(cfg, str(ckpt), tmp_path / "hf", "hf")
    tuned = mmln.load(cfg, ckpt).ask([img, None], ["What is it?", "Is it red?"])
    assert mmln.load(out, overrides=ovr).ask([img, None], ["What is it?", "Is it red?"]) == tuned
    assert tuned != mmln.load(cfg_of(d)).ask([img, None], ["What is it?", "Is it red?"])  # the tuning shows
