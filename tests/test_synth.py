"""mmln.data.synth: real on-disk formats, compositions, determinism and truthfulness."""
from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmln.data import synth
from mmln.data.synth import COLORS, LABELS, MME_SUBTASKS, SHAPES, Scene

SMALL = dict(image_size=64, n_pretrain=12, n_instruct=40, n_mme_per_subtask=3, n_pope_images=6,
             n_vqa_images=6, n_caption_images=10)
TINY = dict(image_size=32, n_pretrain=3, n_instruct=6, n_mme_per_subtask=1, n_pope_images=2,
            n_vqa_images=2, n_caption_images=5)
LABEL_RE = re.compile(rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b")


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("synth")
    synth.synthesize(d, seed=1, **SMALL)
    return d


@pytest.fixture(scope="module")
def scenes(out: Path) -> dict[str, Scene]:
    rows = [json.loads(line) for line in (out / "scenes.jsonl").read_text().splitlines()]
    return {r["image"]: Scene.from_dict(r["scene"]) for r in rows}


def load(p: Path) -> list:
    return json.loads(p.read_text())


def all_files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- truth checker
def _obj(scene: Scene, label: str):
    o = scene.find(label)
    assert o is not None, f"{label!r} is not in the scene {scene.labels}"
    return o


def check_qa(scene: Scene, q: str, a: str) -> bool | None:
    """True/False when the answer to a known question pattern is right/wrong; None if unknown."""
    q = q.replace("<image>", "").replace(synth.SHORT, "").replace(synth.YN, "").strip()
    a = a.strip().lower()
    yes = a.startswith("yes")
    yes_no = yes or a.startswith("no")
    shape, color = "|".join(synth.SHAPES), "|".join(synth.COLORS)
    if m := re.fullmatch(r"(?:Is there|Does the image contain) an? (\w+ \w+)(?: in (?:the|this) (?:image|picture))?\?", q):
        return yes == (m[1] in scene.labels) and yes_no
    if m := re.fullmatch(r"Is the background(?: of this image| color)? (\w+)\?", q):
        return yes == (m[1] == scene.background) and yes_no
    if m := re.fullmatch(rf"Is the ({shape})(?: (.+?))??(?: in this image)? ({color})(?: in color)?\?", q):
        objs = [o for o in scene.objects if o.shape == m[1] and m[2] in (None, synth.where(o))]
        return len(objs) == 1 and yes == (objs[0].color == m[3]) and yes_no
    if m := re.fullmatch(rf"Is the ({color}) object(?: (.+?))? an? ({shape})\?", q):
        objs = [o for o in scene.objects if o.color == m[1] and m[2] in (None, synth.where(o))]
        return len(objs) == 1 and yes == (objs[0].shape == m[3]) and yes_no
    if m := re.fullmatch(r"Is this an? (?:picture|photo|image) of an? (\w+ \w+)\?", q):
        return len(scene.objects) == 1 and yes == (scene.labels == [m[1]]) and yes_no
    if m := re.fullmatch(r"(?:Are there|Is there a total of|Does the image contain|Is there) (\w+) objects?"
                         r"(?: in (?:the|this) image)?\?", q):
        return yes == (synth.NUM.index(m[1]) == len(scene.objects)) and yes_no
    if m := re.fullmatch(r"What color is the (\w+)(?: (.+))?\?", q):
        if m[1] == "background":
            return a.rstrip(".").split()[-1] == scene.background
        objs = [o for o in scene.objects if o.shape == m[1] and m[2] in (None, synth.where(o))]
        return len(objs) == 1 and a.rstrip(".").split()[-1] == objs[0].color
    if m := re.fullmatch(r"What shape is the (\w+) object(?: (.+))?\?", q):
        objs = [o for o in scene.objects if o.color == m[1] and m[2] in (None, synth.where(o))]
        return len(objs) == 1 and a.rstrip(".").split()[-1] == objs[0].shape
    if m := re.fullmatch(r"How many (\w+) are there in the image\?", q):
        k = len(scene.objects) if m[1] == "objects" else sum(synth.plural(o.shape) == m[1] for o in scene.objects)
        return a == str(k) or a.startswith(f"there {'is' if k == 1 else 'are'} {synth.NUM[k]} ")
    if m := re.fullmatch(r"Where is the (\w+ \w+) in the image\?", q):
        o = _obj(scene, m[1])
        return a in (synth.spot_name(o), f"the {m[1]} is {synth.where(o)} of the image.")
    if m := re.fullmatch(r"Is the (\w+ \w+) (?:to the )?(left|right|above|below) (?:of )?the (\w+ \w+)\?", q):
        o, b = _obj(scene, m[1]), _obj(scene, m[3])
        truth = {"left": o.col < b.col, "right": o.col > b.col, "above": o.row < b.row, "below": o.row > b.row}
        return yes == truth[m[2]] and yes_no
    return None


def test_checker_can_fail() -> None:
    s = synth.sample_scene(random.Random(3), 2)
    absent = next(lab for lab in LABELS if lab not in s.labels)
    assert check_qa(s, f"Is there {synth.article(absent)} in the image?", "Yes") is False
    assert check_qa(s, f"Is there {synth.article(s.labels[0])} in the image?", "Yes") is True
    assert check_qa(s, "How many objects are there in the image?", "7") is False
    assert check_qa(s, "What color is the background?", "The background is purple.") is False
    other_bg = next(b for b in synth.BACKGROUNDS if b != s.background)
    assert check_qa(s, f"Is the background of this image {other_bg}?", "Yes") is False
    assert check_qa(s, f"Is the background color {s.background}?", "Yes") is True
    assert check_qa(s, f"Are there {synth.NUM[len(s.objects) + 1]} objects in the image?", "Yes") is False
    assert check_qa(s, f"Does the image contain {synth.article(absent)}?", "No") is True


# --------------------------------------------------------------------------- formats
def check_record(r: dict, id_re: str, image_dir: Path) -> None:
    assert set(r) == {"id", "image", "conversations"}
    assert isinstance(r["id"], str) and re.fullmatch(id_re, r["id"]), r["id"]
    assert r["image"] == r["id"] + ".jpg" and (image_dir / r["image"]).is_file()
    conv = r["conversations"]
    assert len(conv) >= 2 and len(conv) % 2 == 0
    for i, t in enumerate(conv):
        assert set(t) == {"from", "value"} and t["from"] == ("human" if i % 2 == 0 else "gpt")
        assert isinstance(t["value"], str) and t["value"].strip()
    first = conv[0]["value"]
    assert first.startswith("<image>\n") or first.endswith("\n<image>"), first
    assert sum(t["value"].count("<image>") for t in conv) == 1


def test_returned_paths_and_no_temp_files(out: Path) -> None:
    paths = synth.synthesize(out / "again", seed=1, **TINY)
    assert all(p.exists() for p in paths.values())
    assert {"cc3m_chat", "instruct_80k", "instruct_150k", "instruct_short_vqa", "mme_root", "pope_random", "vqa_questions",
            "vqa_annotations", "karpathy_coco", "karpathy_flickr30k", "scenes"} <= set(paths)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_cc3m_format_and_truth(out: Path, scenes: dict[str, Scene]) -> None:
    recs = load(out / "cc3m/chat.json")
    assert isinstance(recs, list) and len(recs) == SMALL["n_pretrain"]
    for r in recs:
        check_record(r, r"GCC_train_\d{9}", out / "cc3m/images")
        assert len(r["conversations"]) == 2
        assert r["conversations"][0]["value"].replace("<image>", "").strip() in synth.BRIEF_PROMPTS
        cap = r["conversations"][1]["value"]
        assert cap == cap.lower() and cap.endswith(" .")
        assert set(LABEL_RE.findall(cap)) == {tuple(lab.split()) for lab in scenes[f"cc3m/images/{r['image']}"].labels}
    with Image.open(out / "cc3m/images" / recs[0]["image"]) as im:
        assert im.format == "JPEG" and im.size == (64, 64)
    starts = {r["conversations"][0]["value"].startswith("<image>") for r in recs}
    assert starts == {True, False}  # <image> at the start and at the end both occur


def test_instruct_compositions(out: Path) -> None:
    d = out / "llava_instruct"
    files = {k: load(d / f"{k}.json") for k in ("conversation_58k", "detail_23k", "complex_reasoning_77k",
                                                 "llava_instruct_150k", "llava_instruct_80k")}
    for recs in files.values():
        for r in recs:
            check_record(r, r"\d{12}", out / "coco/train2017")
    conv, detail, cr = files["conversation_58k"], files["detail_23k"], files["complex_reasoning_77k"]
    assert conv and detail and cr
    assert all(len(r["conversations"]) >= 4 for r in conv)
    assert all(len(r["conversations"]) == 2 for r in detail + cr)
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, files["llava_instruct_150k"])) == sorted(map(key, conv + detail + cr))
    m80 = files["llava_instruct_80k"]
    ids = [r["id"] for r in m80]
    assert len(ids) == len(set(ids))  # disjoint images
    conv_k, cr_k, det_k = set(map(key, conv)), set(map(key, cr)), set(map(key, detail))
    assert sum(key(r) in conv_k for r in m80) == sum(key(r) in cr_k for r in m80) == len(m80) // 2 > 0
    assert not any(key(r) in det_k for r in m80)
    per_id = Counter(r["id"] for r in conv + detail + cr)
    assert max(per_id.values()) >= 2  # the same image occurs in several type files


def test_instruct_truth(out: Path, scenes: dict[str, Scene]) -> None:
    checked = 0
    for r in load(out / "llava_instruct/conversation_58k.json"):
        s, turns = scenes[f"coco/train2017/{r['image']}"], r["conversations"]
        for q, a in zip(turns[::2], turns[1::2], strict=True):
            ok = check_qa(s, q["value"], a["value"])
            assert ok is not False, (s, q["value"], a["value"])
            checked += ok is True
    assert checked >= 50
    for r in load(out / "llava_instruct/detail_23k.json"):
        s, text = scenes[f"coco/train2017/{r['image']}"], r["conversations"][1]["value"]
        assert set(LABEL_RE.findall(text)) == {tuple(lab.split()) for lab in s.labels}
        assert f"{synth.NUM[len(s.objects)]} shape" in text and s.background in text


def test_short_answer_vqa_format_and_truth(out: Path, scenes: dict[str, Scene]) -> None:
    recs = load(out / "llava_instruct/short_answer_vqa.json")
    images = {r["image"] for r in load(out / "llava_instruct/llava_instruct_150k.json")}
    assert {r["image"] for r in recs} == images  # the instruct images, one-word questions about each
    kinds, checked = Counter(), 0
    for r in recs:
        assert re.fullmatch(r"\d{12}_(vqa\d|cap)", r["id"]) and r["image"] == r["id"][:12] + ".jpg"
        (q, a), s = (t["value"] for t in r["conversations"]), scenes[f"coco/train2017/{r['image']}"]
        assert len(r["conversations"]) == 2 and q.count("<image>") == 1
        if r["id"].endswith("cap"):
            assert set(LABEL_RE.findall(a)) == {tuple(lab.split()) for lab in s.labels}
            continue
        assert q.endswith((synth.SHORT, synth.YN, "\n<image>")) and len(a.split()) == 1
        kinds[a in ("Yes", "No")] += 1
        ok = check_qa(s, q, a)
        assert ok is not False, (s, q, a)
        checked += ok is True
    assert kinds[True] > 2 * kinds[False] > 0 and checked > 0.8 * sum(kinds.values())


def test_mme_layout_reader_and_truth(out: Path, scenes: dict[str, Scene]) -> None:
    root = out / "mme/MME_Benchmark_release_version"
    assert sorted(p.name for p in root.iterdir()) == sorted(MME_SUBTASKS)
    for task in MME_SUBTASKS:
        nested = task in {"artwork", "celebrity", "landmark", "posters", "scene"}
        assert (root / task / "images").is_dir() == nested == (root / task / "questions_answers_YN").is_dir()
        txts = sorted((root / task / ("questions_answers_YN" if nested else "")).glob("*.txt"))
        assert len(txts) == SMALL["n_mme_per_subtask"]
        for t in txts:
            lines = t.read_text().split("\n")
            assert lines[2:] == [""] and [ln.split("\t")[1] for ln in lines[:2]] == ["Yes", "No"]
    rows = synth.read_mme(out / "mme")  # the parent folder works too
    assert rows == synth.read_mme(root)
    assert len(rows) == 14 * 2 * SMALL["n_mme_per_subtask"]
    assert [r.subtask for r in rows] == [t for t in MME_SUBTASKS for _ in range(2 * SMALL["n_mme_per_subtask"])]
    assert [r.gt for r in rows] == ["Yes", "No"] * (len(rows) // 2)
    for a, b in zip(rows[::2], rows[1::2], strict=True):
        assert a.image == b.image and a.image.is_file() and a.question != b.question
    for task in MME_SUBTASKS:
        imgs = [r.image.name for r in rows if r.subtask == task][::2]
        assert imgs == sorted(imgs)
        assert all(n.endswith(".png" if task in synth.MME_COGNITION else ".jpg") for n in imgs)
    for r in rows:
        assert r.question.endswith(" Please answer yes or no.")
        s = scenes[str(r.image.relative_to(out))]
        q, yes = r.question.replace(synth.YN, ""), r.gt == "Yes"
        if r.subtask in ("existence", "position"):
            assert check_qa(s, q.replace("this image", "the image").replace(" side", "")
                            .replace("on the left", "to the left").replace("on the right", "to the right"),
                            r.gt) is True, r
        elif r.subtask == "count":
            assert (f"total of {synth.NUM[len(s.objects)]} object" in q) == yes
        elif r.subtask == "color":
            shape, color = re.fullmatch(r"Is the (\w+) in this image (\w+)\?", q).groups()
            assert (next(o.color for o in s.objects if o.shape == shape) == color) == yes
        elif r.subtask == "scene":
            assert q.endswith(f" {s.background}?") == yes
        elif r.subtask == "celebrity":
            assert q.endswith(f"{s.objects[s.box].name}?") == yes
        elif r.subtask == "OCR":
            assert (f'"{s.text}"' in q) == yes
        elif r.subtask == "numerical_calculation":
            add, total = re.fullmatch(r".* plus (\w+) equal to (\d+)\?", q).groups()
            assert (len(s.objects) + synth.NUM.index(add) == int(total)) == yes


def test_mme_reader_official_order(tmp_path: Path) -> None:
    root = tmp_path / "MME_Benchmark_release_version"
    (root / "scene/images").mkdir(parents=True)
    (root / "scene/questions_answers_YN").mkdir()
    (root / "count").mkdir()
    for name in ("b", "a"):
        (root / f"scene/images/{name}.jpg").write_bytes(b"x")
        (root / f"scene/questions_answers_YN/{name}.txt").write_text(f"{name}1?\tYes\r\n{name}2?\tNo\r\n")
    (root / "count/0001.jpg").write_bytes(b"x")
    (root / "count/0001.txt").write_text("c1?\tYes\nc2?\tNo\n")
    rows = synth.read_mme(tmp_path)
    assert [(r.subtask, r.image.name, r.question, r.gt) for r in rows] == [
        ("count", "0001.jpg", "c1?", "Yes"), ("count", "0001.jpg", "c2?", "No"),
        ("scene", "a.jpg", "a1?", "Yes"), ("scene", "a.jpg", "a2?", "No"),
        ("scene", "b.jpg", "b1?", "Yes"), ("scene", "b.jpg", "b2?", "No")]
    (root / "count/0001.jpg").unlink()
    with pytest.raises(FileNotFoundError):
        synth.read_mme(root)


def test_pope(out: Path, scenes: dict[str, Scene]) -> None:
    negs = {}
    for split in ("random", "popular", "adversarial"):
        lines = (out / f"pope/coco_pope_{split}.json").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        assert len(rows) == 6 * SMALL["n_pope_images"]
        assert [r["question_id"] for r in rows] == list(range(1, len(rows) + 1))
        assert sum(r["label"] == "yes" for r in rows) * 2 == len(rows)
        for r in rows:
            assert set(r) == {"question_id", "image", "text", "label"} and r["label"] in ("yes", "no")
            assert re.fullmatch(r"COCO_val2014_\d{12}\.jpg", r["image"])
            s = scenes[f"coco/val2014/{r['image']}"]
            assert check_qa(s, r["text"], r["label"]) is True, r
            if split == "adversarial" and r["label"] == "no":
                assert any(set(r["text"].split()) & set(lab.split()) for lab in s.labels)
        negs[split] = [r["text"] for r in rows if r["label"] == "no"]
    assert negs["random"] != negs["popular"] != negs["adversarial"]


def test_vqav2(out: Path, scenes: dict[str, Scene]) -> None:
    qf = load(out / "vqav2/v2_OpenEnded_mscoco_val2014_questions.json")
    af = load(out / "vqav2/v2_mscoco_val2014_annotations.json")
    assert {"info", "task_type", "data_type", "data_subtype", "license", "questions"} <= set(qf)
    assert qf["task_type"] == "Open-Ended" and qf["data_subtype"] == "val2014"
    anns = {a["question_id"]: a for a in af["annotations"]}
    assert len(qf["questions"]) == len(anns) == 3 * SMALL["n_vqa_images"]
    for q in qf["questions"]:
        assert set(q) == {"image_id", "question", "question_id"}
        a = anns[q["question_id"]]
        assert a["image_id"] == q["image_id"] and a["question_id"] // 1000 == q["image_id"]
        assert a["answer_type"] in ("yes/no", "number", "other") and isinstance(a["question_type"], str)
        assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
        assert all(x["answer_confidence"] in ("yes", "maybe", "no") for x in a["answers"])
        votes = Counter(x["answer"] for x in a["answers"])
        assert votes[a["multiple_choice_answer"]] == max(votes.values()) >= 5
        s = scenes[f"coco/val2014/COCO_val2014_{q['image_id']:012d}.jpg"]
        text = q["question"].replace("How many objects are there?", "How many objects are there in the image?")
        text = re.sub(r"How many (\w+) are in the image\?", r"How many \1 are there in the image?", text)
        assert check_qa(s, text, a["multiple_choice_answer"]) is True, (s, q, a["multiple_choice_answer"])


def test_karpathy(out: Path, scenes: dict[str, Scene]) -> None:
    for name, coco in (("dataset_coco.json", True), ("dataset_flickr30k.json", False)):
        data = load(out / "karpathy" / name)
        assert data["dataset"] == ("coco" if coco else "flickr30k")
        imgs = data["images"]
        assert len(imgs) == SMALL["n_caption_images"] and "test" in {i["split"] for i in imgs}
        sentids = [s["sentid"] for i in imgs for s in i["sentences"]]
        assert len(sentids) == len(set(sentids))
        for i in imgs:
            assert ("cocoid" in i) == ("filepath" in i) == coco
            assert i["split"] in (("train", "val", "test", "restval") if coco else ("train", "val", "test"))
            if coco:
                assert i["filename"] == f"COCO_{i['filepath']}_{i['cocoid']:012d}.jpg"
                assert i["filepath"] == ("train2014" if i["split"] == "train" else "val2014")
                rel = f"coco/{i['filepath']}/{i['filename']}"
            else:
                rel = f"flickr30k/{i['filename']}"
            assert (out / rel).is_file()
            assert len(i["sentences"]) == 5 and i["sentids"] == [s["sentid"] for s in i["sentences"]]
            assert len({s["raw"] for s in i["sentences"]}) >= 2
            for s in i["sentences"]:
                assert s["imgid"] == i["imgid"] and s["tokens"] == re.findall(r"[a-z0-9]+", s["raw"].lower())
                assert set(LABEL_RE.findall(s["raw"].lower())) == {tuple(x.split()) for x in scenes[rel].labels}


def test_images_show_the_scene(out: Path, scenes: dict[str, Scene]) -> None:
    """The written JPEGs show each object's colour at its centre and the background in a corner."""
    palette = {**COLORS, **synth.BACKGROUNDS}

    def nearest(rgb: np.ndarray, names) -> str:
        return min(names, key=lambda c: float(np.sum((rgb - np.array(palette[c])) ** 2)))

    n = 0
    for rel, s in scenes.items():
        if not rel.startswith(("cc3m/", "coco/")):
            continue
        arr = np.asarray(Image.open(out / rel).convert("RGB"), dtype=np.float64)
        size = arr.shape[0]
        assert nearest(arr[0, 0], synth.BACKGROUNDS) == s.background
        for o in s.objects:
            x, y = int(o.x * size), int(o.y * size)
            assert nearest(arr[y - 1:y + 2, x - 1:x + 2].mean((0, 1)), palette) == o.color, (rel, o)
            n += 1
    assert n > 100


def test_deterministic(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synth.synthesize(a, seed=5, **TINY)
    synth.synthesize(b, seed=5, **TINY)
    synth.synthesize(c, seed=6, **TINY)
    fa = all_files(a)
    assert fa == all_files(b) and len(fa) > 50
    assert fa["cc3m/chat.json"] != all_files(c)["cc3m/chat.json"]
    # item i does not depend on the other size options
    d = tmp_path / "d"
    synth.synthesize(d, seed=5, **{**TINY, "n_pretrain": 5, "n_vqa_images": 4})
    assert load(d / "cc3m/chat.json")[0] == load(a / "cc3m/chat.json")[0]
    assert all_files(d)["llava_instruct/llava_instruct_150k.json"] == fa["llava_instruct/llava_instruct_150k.json"]


def test_atomic_write_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "x.json"
    synth.write_json(p, {"v": 1})

    def boom(*a: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        synth.write_json(p, {"v": 2})
    assert load(p) == {"v": 1} and [q.name for q in tmp_path.iterdir()] == ["x.json"]


def test_bad_samples(tmp_path: Path) -> None:
    path = synth.bad_samples(tmp_path)
    recs = load(path)
    ids = [r.get("id") for r in recs]
    assert sorted(i for i in ids if i.startswith("bad")) == sorted(synth.BAD_REASONS)
    assert sum(i.startswith("good") for i in ids) >= 3
    by = {r["id"]: r for r in recs}
    imgs = path.parent / "images"
    assert not (imgs / by["bad_missing_image"]["image"]).exists()
    for bad in ("bad_corrupt_image", "bad_truncated_image"):
        with pytest.raises(OSError):
            Image.open(imgs / by[bad]["image"]).convert("RGB")
    for r in recs:
        if r["id"].startswith("good"):
            check_record({**r, "id": r["image"][:-4]}, r"good_\d", imgs)
            Image.open(imgs / r["image"]).convert("RGB")
    assert "conversations" not in by["bad_malformed_no_conversations"]
    assert [t["from"] for t in by["bad_no_assistant"]["conversations"]] == ["human"]
    assert "<image>" not in json.dumps(by["bad_missing_image_token"]["conversations"])
    assert json.dumps(by["bad_repeated_image_token"]).count("<image>") == 2


def test_text_corpus() -> None:
    a = synth.text_corpus(300, seed=2)
    assert a == synth.text_corpus(300, seed=2) and a != synth.text_corpus(300, seed=3)
    assert len(a) == 300 and all(isinstance(t, str) and t for t in a)
    words = Counter(w for t in a for w in re.findall(r"[a-z]+", t.lower()))
    assert set(COLORS) | set(SHAPES) | {"yes", "no", "left", "background"} <= set(words)
    assert len(words) < 400  # a small vocabulary


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--out", str(tmp_path), "--image-size", "32", "--seed", "3", "--n-pretrain", "2", "--n-instruct", "4",
            "--n-mme-per-subtask", "1", "--n-pope-images", "1", "--n-vqa-images", "1", "--n-caption-images", "2",
            "--bad-samples"]
    assert synth.main(args) == 0
    printed = capsys.readouterr().out
    assert "cc3m/chat.json" in printed and "bad_instruct.json" in printed
    assert (tmp_path / "pope/coco_pope_random.json").is_file() and (tmp_path / "bad/bad_instruct.json").is_file()
