"""Writers of every synthetic data set in its real on-disk format (CC3M, LLaVA-Instruct, MME,
POPE, VQAv2, Karpathy captions) and of the bad-sample set the loader tests use."""
from __future__ import annotations

import io
import json
import random
import re
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmln.data.synth.bench_items import mme_item, pope_questions
from mmln.data.synth.qa import (
    BRIEF_PROMPTS, DETAIL_PROMPTS, MME_SUBTASKS, OPEN_QA, SHORT, YES_NO_QA, YN, article, absent_label, capitalize, caption,
    describe, pick_qa, plural, qa_color, qa_exist, qa_turns, reasoning, sentence,
    short_qa,
)
from mmln.data.synth.world import NUM, SHAPES, Scene, draw, seeded_ids, seeded_rng, sample_scene
from mmln.eval.mme import COGNITION as MME_COGNITION
from mmln.base.io import write_bytes, write_json, write_text


MME_IMAGES_DIR = {"artwork", "celebrity", "landmark", "posters", "scene"}  # images/ + questions_answers_YN/
VQA_INFO = {"description": "Synthetic shape-world stand-in for VQA v2.0 (mmln).",
            "url": "http://visualqa.org", "version": "2.0", "year": 2017,
            "contributor": "mmln synth", "date_created": "2017-04-26 17:07:13"}
VQA_LICENSE = {"url": "http://creativecommons.org/licenses/by/4.0/",
               "name": "Creative Commons Attribution 4.0 International License"}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


class Writer:
    def __init__(self, out: Path, size: int) -> None:
        self.out, self.size = out, size
        self.bar: Any = None  # a progress bar over the images (synthesize sets it)
        self.scenes: list[dict[str, Any]] = []  # ground truth of every image written, for scenes.jsonl

    def image(self, rel: str, scene: Scene, rnd: random.Random) -> Path:
        if self.bar is not None:
            self.bar.update(1)
        img, buf = draw(scene, self.size, np.random.default_rng(rnd.getrandbits(64))), io.BytesIO()
        if rel.endswith(".png"):
            img.save(buf, format="PNG")
        else:
            img.save(buf, format="JPEG", quality=90)
        write_bytes(self.out / rel, buf.getvalue())
        self.scenes.append({"image": rel, "scene": scene.to_dict()})
        return self.out / rel


def conversation_of(*turns: str) -> list[dict[str, str]]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]


def record_of(sid: str, *turns: str) -> dict[str, Any]:
    return {"id": sid, "image": f"{sid}.jpg", "conversations": conversation_of(*turns)}


def with_image(q: str, rnd: random.Random) -> str:
    return f"<image>\n{q}" if rnd.random() < 0.5 else f"{q}\n<image>"


def write_cc3m(w: Writer, n: int, seed: int) -> dict[str, Path]:
    recs = []
    for i, gid in enumerate(seeded_ids(seed, "cc3m", 0, 3_318_333, n)):
        rnd = seeded_rng(seed, "cc3m", i)
        scene, name = sample_scene(rnd), f"GCC_train_{gid:09d}"
        w.image(f"cc3m/images/{name}.jpg", scene, rnd)
        recs.append({"id": name, "image": f"{name}.jpg",
                     "conversations": conversation_of(with_image(rnd.choice(BRIEF_PROMPTS), rnd), caption(scene, rnd))})
    return {"cc3m_chat": write_json(w.out / "cc3m/chat.json", recs), "cc3m_images": w.out / "cc3m/images"}


def short_vqa_records(sid: str, scene: Scene, rnd: random.Random) -> list[dict[str, Any]]:
    """LLaVA-1.5-style short-answer records for one image (not part of LLaVA-Instruct), each a
    single turn: two existence questions (POPE's kind), two other yes/no questions, (one image in
    two) an open question asking for one word and (one in five) a one-sentence caption."""
    out = []
    kinds_per_record = ((qa_exist,),) * 2 + (YES_NO_QA,) * 2 + ((OPEN_QA,) if rnd.random() < 0.5 else ())
    for k, kinds in enumerate(kinds_per_record):
        q, _, short = pick_qa(kinds, scene, rnd)
        q += YN if short in ("yes", "no") and rnd.random() < 1 / 3 else SHORT
        out.append({"id": f"{sid}_vqa{k}", "image": f"{sid}.jpg",
                    "conversations": conversation_of(with_image(q, rnd), capitalize(short))})
    if rnd.random() < 0.2:
        out.append({"id": f"{sid}_cap", "image": f"{sid}.jpg",
                    "conversations": conversation_of(with_image(rnd.choice(BRIEF_PROMPTS), rnd), sentence(scene, rnd))})
    return out


def write_instruct(w: Writer, n: int, seed: int) -> dict[str, Path]:
    conv: list[dict[str, Any]] = []
    detail: list[dict[str, Any]] = []
    cr: list[dict[str, Any]] = []
    vqa: list[dict[str, Any]] = []
    for i, cid in enumerate(seeded_ids(seed, "instruct", 1, 300_000, n)):
        rnd = seeded_rng(seed, "instruct", i)
        scene, sid = sample_scene(rnd), f"{cid:012d}"
        w.image(f"coco/train2017/{sid}.jpg", scene, rnd)
        rec = partial(record_of, sid)
        has_c, has_d, has_r = rnd.random() < 0.72, rnd.random() < 0.28, rnd.random() < 0.95
        vqa += short_vqa_records(sid, scene, seeded_rng(seed, "instruct-vqa", i))
        if has_c or not (has_d or has_r):
            turns = [t for qa in qa_turns(scene, rnd, rnd.randint(2, 4)) for t in short_qa(qa, rnd)]
            conv.append(rec(with_image(turns[0], rnd), *turns[1:]))
        if has_d:
            detail.append(rec(with_image(rnd.choice(DETAIL_PROMPTS), rnd), describe(scene, rnd)))
        if has_r:
            q, a = reasoning(scene, rnd)
            cr.append(rec(with_image(q, rnd), a))
    mix = random.Random(f"mmln-synth:{seed}:instruct-mix")
    # 80K recipe (LLaVA issue #488): exclusive images first, shared images split to balance, then
    # trim both halves to the same size: conversation + complex reasoning on disjoint images.
    c_ids, r_ids = {r["id"] for r in conv}, {r["id"] for r in cr}
    both = sorted(c_ids & r_ids)
    mix.shuffle(both)
    c_take, r_take = sorted(c_ids - r_ids), sorted(r_ids - c_ids)
    for sid in both:
        (c_take if len(c_take) <= len(r_take) else r_take).append(sid)
    k = min(len(c_take), len(r_take))
    c80, r80 = set(mix.sample(c_take, k)), set(mix.sample(r_take, k))
    m80 = [r for r in conv if r["id"] in c80] + [r for r in cr if r["id"] in r80]
    m150 = conv + detail + cr
    mix.shuffle(m80)
    mix.shuffle(m150)
    d = w.out / "llava_instruct"
    return {"instruct_conversation": write_json(d / "conversation_58k.json", conv),
            "instruct_detail": write_json(d / "detail_23k.json", detail),
            "instruct_complex_reasoning": write_json(d / "complex_reasoning_77k.json", cr),
            "instruct_150k": write_json(d / "llava_instruct_150k.json", m150),
            "instruct_80k": write_json(d / "llava_instruct_80k.json", m80),
            "instruct_short_vqa": write_json(d / "short_answer_vqa.json", vqa),
            "coco_train2017": w.out / "coco/train2017"}


def write_mme(w: Writer, n: int, seed: int) -> dict[str, Path]:
    root = w.out / "mme/MME_Benchmark_release_version"
    for task in MME_SUBTASKS:
        coco = task in ("existence", "count", "position", "color")
        ids = seeded_ids(seed, f"mme-{task}", 560_000, 581_930, n) if coco else range(1, n + 1)
        ext = ".png" if task in MME_COGNITION else ".jpg"
        img_dir, qa_dir = ((root / task / "images", root / task / "questions_answers_YN")
                           if task in MME_IMAGES_DIR else (root / task, root / task))
        for i, iid in enumerate(ids):
            rnd = seeded_rng(seed, f"mme-{task}", i)
            scene, q_yes, q_no = mme_item(task, rnd)
            stem = f"{iid:012d}" if coco else f"{iid:04d}"
            w.image(str((img_dir / (stem + ext)).relative_to(w.out)), scene, rnd)
            write_bytes(qa_dir / f"{stem}.txt", f"{q_yes}{YN}\tYes\n{q_no}{YN}\tNo\n".encode())
    return {"mme_root": root}


def write_pope(w: Writer, n: int, seed: int) -> dict[str, Path]:
    scenes, names = [], []
    for i, cid in enumerate(seeded_ids(seed, "pope", 300_000, 340_000, n)):
        rnd = seeded_rng(seed, "pope", i)
        scenes.append(sample_scene(rnd, 3))
        names.append(f"COCO_val2014_{cid:012d}.jpg")
        w.image(f"coco/val2014/{names[-1]}", scenes[-1], rnd)
    paths = {}
    for split in ("random", "popular", "adversarial"):
        rows = pope_questions(scenes, split, random.Random(f"mmln-synth:{seed}:pope-{split}"))
        paths[f"pope_{split}"] = write_jsonl(w.out / f"pope/coco_pope_{split}.json", [
            {"question_id": k + 1, "image": names[i], "text": f"Is there {article(lab)} in the image?", "label": y}
            for k, (i, lab, y) in enumerate(rows)])
    return paths | {"coco_val2014": w.out / "coco/val2014"}


def vqa_answers(canon: str, variants: Sequence[str], rnd: random.Random) -> list[dict[str, Any]]:
    ans = [canon if not variants or rnd.random() < 0.75 else rnd.choice(variants) for _ in range(10)]
    return [{"answer": a, "answer_confidence": "yes" if rnd.random() < 0.9 else "maybe", "answer_id": k + 1}
            for k, a in enumerate(ans)]


def write_vqa(w: Writer, n: int, seed: int) -> dict[str, Path]:
    qs, anns = [], []
    for i, cid in enumerate(seeded_ids(seed, "vqa", 340_000, 420_000, n)):
        rnd = seeded_rng(seed, "vqa", i)
        s = sample_scene(rnd)
        w.image(f"coco/val2014/COCO_val2014_{cid:012d}.jpg", s, rnd)
        o = rnd.choice(s.objects)
        lab = o.name if rnd.random() < 0.5 else absent_label(s, rnd)
        k, shape = len(s.objects), rnd.choice(SHAPES)
        items = [(f"Is there {article(lab)} in the picture?", "is there a", "yes/no", "yes" if s.find(lab) else "no", ()),
                 (("How many objects are there?", "how many", "number", str(k), (NUM[k],)) if rnd.random() < 0.5 else
                  (f"How many {plural(shape)} are in the image?", "how many", "number", str(s.count(shape=shape)),
                   (NUM[s.count(shape=shape)],)))]
        if s.count(shape=o.shape) == 1:
            items.append((f"What color is the {o.shape}?", "what color is the", "other", o.color,
                          (f"{o.color} color", f"bright {o.color}")))
        else:
            items.append(("What color is the background?", "what color is the", "other", s.background,
                          (f"{s.background} color", "plain " + s.background)))
        for j, (q, qtype, atype, canon, var) in enumerate(items):
            qid = cid * 1000 + j
            answers = vqa_answers(canon, var, rnd)
            votes = Counter(a["answer"] for a in answers)
            mc = max(votes, key=lambda a: (votes[a], a == canon))
            qs.append({"image_id": cid, "question": q, "question_id": qid})
            anns.append({"question_type": qtype, "multiple_choice_answer": mc, "answers": answers,
                         "image_id": cid, "answer_type": atype, "question_id": qid})
    d, meta = w.out / "vqav2", {"info": VQA_INFO, "license": VQA_LICENSE, "data_subtype": "val2014"}
    return {"vqa_questions": write_json(d / "v2_OpenEnded_mscoco_val2014_questions.json",
                                        {**meta, "task_type": "Open-Ended", "data_type": "mscoco", "questions": qs}),
            "vqa_annotations": write_json(d / "v2_mscoco_val2014_annotations.json",
                                          {**meta, "data_type": "mscoco", "annotations": anns})}


def write_karpathy(w: Writer, n: int, seed: int, coco: bool) -> Path:
    tag = "karpathy-coco" if coco else "karpathy-flickr"
    ids = seeded_ids(seed, tag, 420_000, 560_000, n) if coco else seeded_ids(seed, tag, 10**9, 10**10 - 1, n)
    splits = ("test", "val", "train", "train", "restval") if coco else ("test", "val", "train", "train")
    images, sentid = [], 0
    for i, iid in enumerate(ids):
        rnd = seeded_rng(seed, tag, i)
        s, split = sample_scene(rnd), splits[i % len(splits)]
        if coco:
            fp = "train2014" if split == "train" else "val2014"
            entry: dict[str, Any] = {"filepath": fp, "filename": f"COCO_{fp}_{iid:012d}.jpg"}
            w.image(f"coco/{fp}/{entry['filename']}", s, rnd)
        else:
            entry = {"filename": f"{iid}.jpg"}
            w.image(f"flickr30k/{iid}.jpg", s, rnd)
        raws: list[str] = []
        for _ in range(40):  # 5 distinct references when the scene allows it
            if (r := sentence(s, rnd)) not in raws and len(raws) < 5:
                raws.append(r)
        raws += [sentence(s, rnd) for _ in range(5 - len(raws))]
        sents = [{"tokens": re.findall(r"[a-z0-9]+", r.lower()), "raw": r, "imgid": i, "sentid": sentid + k}
                 for k, r in enumerate(raws)]
        entry |= {"imgid": i, "sentids": [x["sentid"] for x in sents], "split": split, "sentences": sents}
        if coco:
            entry["cocoid"] = iid
        images.append(entry)
        sentid += len(sents)
    name = "dataset_coco.json" if coco else "dataset_flickr30k.json"
    return write_json(w.out / "karpathy" / name, {"images": images, "dataset": "coco" if coco else "flickr30k"})


def synthesize(out: str | Path, *, image_size: int = 224, n_pretrain: int = 3000, n_instruct: int = 1000,
               n_mme_per_subtask: int = 10, n_pope_images: int = 50, n_vqa_images: int = 100,
               n_caption_images: int = 100, seed: int = 0) -> dict[str, Path]:
    """Write every synthetic data set under ``out``; return {name: path} of files and image folders.

    ``n_instruct`` counts train2017 images: each has a conversation (p=.72), detail (p=.28) and/or
    complex-reasoning (p=.95) record, so the 150K mix holds about 1.95 records per image.
    POPE: 6 questions per image (3 yes, 3 no) per split. VQAv2: 3 questions per image. Karpathy:
    ``n_caption_images`` images each for COCO (test/val/train/train/restval by index) and Flickr30k.
    MME: ``n_mme_per_subtask`` images x 2 questions for each of the 14 subtasks. Defaults take
    about 6 s on 2 CPU cores (about 4,700 images, 62 MB at 224 px). Files from an earlier run into
    the same folder are overwritten, not deleted.
    """
    from mmln.base.progress import bar

    out = Path(out)
    w = Writer(out, image_size)
    w.bar = bar(total=n_pretrain + n_instruct + 14 * n_mme_per_subtask + n_pope_images + n_vqa_images
                + 2 * n_caption_images, desc=f"synth {out.name}", unit="img")  # every image, one each
    paths = write_cc3m(w, n_pretrain, seed) | write_instruct(w, n_instruct, seed) | write_mme(w, n_mme_per_subtask, seed)
    paths |= write_pope(w, n_pope_images, seed) | write_vqa(w, n_vqa_images, seed)
    paths["karpathy_coco"] = write_karpathy(w, n_caption_images, seed, coco=True)
    paths["karpathy_flickr30k"] = write_karpathy(w, n_caption_images, seed, coco=False)
    paths |= {"coco_train2014": out / "coco/train2014", "flickr30k_images": out / "flickr30k"}
    paths["scenes"] = write_jsonl(out / "scenes.jsonl", w.scenes)
    w.bar.close()
    return paths


# id of each record bad_samples() writes -> the defect it carries (mmln.data.dataset.REASONS names)
BAD_REASONS = {"bad_missing_image": "missing_image", "bad_corrupt_image": "corrupt_image",
               "bad_truncated_image": "truncated_image", "bad_malformed_no_conversations": "malformed",
               "bad_malformed_types": "malformed", "bad_malformed_turn": "malformed",
               "bad_no_assistant": "no_assistant", "bad_missing_image_token": "missing_image_token",
               "bad_repeated_image_token": "repeated_image_token"}


def bad_samples(out: str | Path) -> Path:
    """Write ``out/bad_instruct.json`` (images in ``out/images/``): 3 good records (ids ``good_<i>``)
    and one record of each bad-input kind, ids as in ``BAD_REASONS``. Returns the JSON path."""
    out = Path(out)
    rnd = seeded_rng(0, "bad", 0)
    w = Writer(out, 64)
    good = []
    for i in range(3):
        s = sample_scene(rnd)
        w.image(f"images/good_{i}.jpg", s, rnd)
        q, a, _ = qa_color(s, rnd, s.objects[0])
        good.append({"id": f"good_{i}", "image": f"good_{i}.jpg", "conversations": conversation_of(f"<image>\n{q}", a)})
    jpeg = (out / "images/good_0.jpg").read_bytes()
    write_bytes(out / "images/corrupt.jpg", bytes(rnd.getrandbits(8) for _ in range(2048)))
    write_bytes(out / "images/truncated.jpg", jpeg[: len(jpeg) // 2])
    ok = conversation_of("<image>\nDescribe the image concisely.", "some simple shapes .")
    bad = [
        {"id": "bad_missing_image", "image": "does_not_exist.jpg", "conversations": ok},
        {"id": "bad_corrupt_image", "image": "corrupt.jpg", "conversations": ok},
        {"id": "bad_truncated_image", "image": "truncated.jpg", "conversations": ok},
        {"id": "bad_malformed_no_conversations", "image": "good_0.jpg"},
        {"id": "bad_malformed_types", "image": 7, "conversations": "What color is the circle?"},
        {"id": "bad_malformed_turn", "image": "good_0.jpg",
         "conversations": [{"from": "human", "value": None}, {"speaker": "gpt", "text": "Red."}]},
        {"id": "bad_no_assistant", "image": "good_1.jpg", "conversations": ok[:1]},
        {"id": "bad_missing_image_token", "image": "good_1.jpg",
         "conversations": conversation_of("Describe the image concisely.", "some simple shapes .")},
        {"id": "bad_repeated_image_token", "image": "good_2.jpg",
         "conversations": conversation_of("<image>\nDescribe the image concisely.\n<image>", "some simple shapes .")},
    ]
    return write_json(out / "bad_instruct.json", good[:2] + bad + good[2:])


# LLaVA-1.5's llava_v1_5_mix665k.json: image paths under one root, by source; ShareGPT records text-only
MIX665K_SOURCES = (("coco/train2017", "{:012d}"), ("gqa/images", "{:d}"), ("ocr_vqa/images", "{:d}"),
                   ("textvqa/train_images", "{:016x}"), ("vg/VG_100K", "{:d}"))


def mix665k(out: str | Path, n_per_source: int = 2, n_text: int = 2, image_size: int = 64, seed: int = 0) -> Path:
    """Write ``out/llava_v1_5_mix665k.json`` in LLaVA-1.5's format: ``n_per_source`` image records
    for each source folder (images written under ``out/`` at the record's sub-folder path, so the
    one image root is ``out``) and ``n_text`` multi-turn text-only records (no ``image`` key, as
    the ShareGPT part). Returns the JSON path."""
    out, w, recs = Path(out), Writer(Path(out), image_size), []
    for folder, fmt in MIX665K_SOURCES:
        for i in range(n_per_source):
            rnd = seeded_rng(seed, f"mix665k:{folder}", i)
            scene, sid = sample_scene(rnd), fmt.format(rnd.getrandbits(40))
            w.image(f"{folder}/{sid}.jpg", scene, rnd)
            turns = [t for q, a, _ in qa_turns(scene, rnd, 2) for t in (q, a)]
            recs.append({"id": sid, "image": f"{folder}/{sid}.jpg",
                         "conversations": conversation_of(with_image(turns[0], rnd), *turns[1:])})
    for i in range(n_text):
        rnd = seeded_rng(seed, "mix665k:sharegpt", i)
        a, b = sample_scene(rnd), sample_scene(rnd)
        recs.append({"id": f"sg{rnd.getrandbits(24):06x}_{i}", "conversations": conversation_of(
            f"Describe a picture of {article(a.objects[0].name)}.", sentence(a, rnd),
            f"And one of {article(b.objects[0].name)}?", sentence(b, rnd))})
    return write_json(out / "llava_v1_5_mix665k.json", recs)
