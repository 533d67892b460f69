"""The synthetic benchmarks' items: MME's yes/no question pairs per subtask and POPE's sampling of
absent objects (random / popular / adversarial), each true of the scene it is asked about."""
from __future__ import annotations

import random
from collections import Counter
from functools import partial

from mmln.data.synth.qa import absent_label, article, count_phrase, plural
from mmln.data.synth.world import BACKGROUNDS, COLORS, LABELS, NUM, SHAPES, Obj, Scene, sample_scene

OCR_WORDS = ("CAT", "DOG", "SUN", "MAP", "BOX", "HAT", "CUP", "PEN", "KEY", "BUS")
FRENCH = {"red": "ROUGE", "green": "VERT", "blue": "BLEU", "yellow": "JAUNE",
          "purple": "VIOLET", "orange": "ORANGE"}


MME_OBJECT_TASKS = ("existence", "count", "color", "position", "celebrity")
MME_PICTURE_TASKS = ("posters", "landmark", "scene", "artwork")


def mme_item(task: str, rnd: random.Random) -> tuple[Scene, str, str]:
    """(scene, question whose answer is Yes, question whose answer is No), without the YN suffix."""
    bg = rnd.choice(tuple(BACKGROUNDS))  # drawn for every task: the draws that follow stay as they were
    if task in MME_OBJECT_TASKS:
        return mme_object_item(task, rnd)
    if task in MME_PICTURE_TASKS:
        return mme_picture_item(task, bg, rnd)
    return mme_text_item(task, bg, rnd)


def mme_object_item(task: str, rnd: random.Random) -> tuple[Scene, str, str]:
    """`mme_item` of the tasks about the objects of a scene: existence, count, color, position, celebrity."""
    while True:
        s = sample_scene(rnd, None if task in ("existence", "count") else rnd.randint(2, 3))
        unique = [o for o in s.objects if s.count(shape=o.shape) == 1]
        if task != "color" or unique:
            break
    o = rnd.choice(unique if task == "color" else s.objects)
    if task == "existence":
        return s, f"Is there {article(o.name)} in this image?", f"Is there {article(absent_label(s, rnd))} in this image?"
    if task == "count":
        k = len(s.objects)
        k_wrong = rnd.choice([j for j in (k - 1, k + 1, k + 2) if j >= 1])
        q = "Is there a total of {} in this image?"
        return s, q.format(count_phrase(k, "object")), q.format(count_phrase(k_wrong, "object"))
    if task == "color":
        other = rnd.choice([c for c in COLORS if c != o.color])
        return s, f"Is the {o.shape} in this image {o.color}?", f"Is the {o.shape} in this image {other}?"
    if task == "celebrity":
        s = Scene(s.background, s.objects, box=s.objects.index(o))
        wrong = rnd.choice([b.name for b in s.objects if b is not o])
        q = "Is the object inside the box {}?"
        return s, q.format(article(o.name)), q.format(article(wrong))
    b = rnd.choice([b for b in s.objects if b is not o])
    if o.col != b.col:
        true, false = ("left", "right") if o.col < b.col else ("right", "left")
        q = f"Is the {o.name} on the {{}} side of the {b.name}?"
    else:
        true, false = ("above", "below") if o.row < b.row else ("below", "above")
        q = f"Is the {o.name} {{}} the {b.name}?"
    return s, q.format(true), q.format(false)


def mme_picture_item(task: str, bg: str, rnd: random.Random) -> tuple[Scene, str, str]:
    """`mme_item` of the tasks about the picture as a whole: posters, landmark, scene, artwork."""
    if task in ("posters", "landmark"):
        o = Obj(rnd.choice(SHAPES), rnd.choice(tuple(COLORS)), "large", 1, 1, 0.5, 0.5)
        s = Scene(bg, (o,), frame=task == "posters")
        if task == "posters":
            wrong = f"{o.color} {rnd.choice([x for x in SHAPES if x != o.shape])}"
            return s, f"Is this a poster of {article(o.name)}?", f"Is this a poster of {article(wrong)}?"
        wrong = f"{rnd.choice([c for c in COLORS if c != o.color])} {o.shape}"
        return s, f"Is this a photo of {article(o.name)}?", f"Is this a photo of {article(wrong)}?"
    if task == "scene":
        s = sample_scene(rnd, background=bg)
        other = rnd.choice([b for b in BACKGROUNDS if b != bg])
        return s, f"Is the background of this image {bg}?", f"Is the background of this image {other}?"
    assert task == "artwork", task
    shape = rnd.choice(SHAPES)
    s = sample_scene(rnd, rnd.randint(2, 3), shapes=(shape,), background=bg)
    other = rnd.choice([x for x in SHAPES if x != shape])
    q = "Does this artwork consist only of {}?"
    return s, q.format(plural(shape)), q.format(plural(other))


def mme_text_item(task: str, bg: str, rnd: random.Random) -> tuple[Scene, str, str]:
    """`mme_item` of the tasks read or reasoned from the image: OCR, commonsense reasoning, numerical
    calculation, text translation, code reasoning."""
    if task == "OCR":
        word, wrong = rnd.sample(OCR_WORDS, 2)
        return Scene(bg, text=word), f'Is the word in this image "{word}"?', f'Is the word in this image "{wrong}"?'
    if task == "commonsense_reasoning":
        color = rnd.choice(("red", "green"))
        s = Scene("black", (Obj("circle", color, "large", 1, 1, 0.5, 0.5),))
        stop, go = "This is a traffic light. Should you stop?", "This is a traffic light. Is it safe to go?"
        return (s, stop, go) if color == "red" else (s, go, stop)
    if task == "numerical_calculation":
        s = sample_scene(rnd, background=bg)
        k, add = len(s.objects), rnd.randint(1, 4)
        q = f"Is the number of objects in this image plus {NUM[add]} equal to {{}}?"
        return s, q.format(k + add), q.format(k + add + rnd.choice((-1, 1, 2)))
    if task == "text_translation":
        color, wrong = rnd.sample(tuple(COLORS), 2)
        s = Scene(bg, text=FRENCH[color], ink=color)
        q = "Is it appropriate to translate the French word in the image into English as '{}'?"
        return s, q.format(color), q.format(wrong)
    assert task == "code_reasoning", task
    x, y, op = rnd.randint(1, 9), rnd.randint(1, 9), rnd.choice("+*")
    res = x + y if op == "+" else x * y
    s = Scene(bg, text=f"a = {x}\nb = {y}\nprint(a {op} b)")
    q = "The image shows a python code. Is the output of the code '{}'?"
    return s, q.format(res), q.format(res + rnd.choice((-2, -1, 1, 3)))


def adversarial_key(lab: str, present: list[str], cooc: Counter[tuple[str, str]]) -> tuple[bool, int, str]:
    similar = any(set(lab.split()) & set(p.split()) for p in present)
    return (not similar, -sum(cooc[(p, lab)] for p in present), lab)


def pope_questions(scenes: list[Scene], strategy: str, rnd: random.Random) -> list[tuple[int, str, str]]:
    """POPE sampling for each image (index, label, yes|no): its 3 objects (yes) interleaved with
    3 absent labels (no) sampled at random / most frequent overall / co-occurring or similar."""
    freq = Counter(lab for s in scenes for lab in s.labels)
    cooc = Counter((a, b) for s in scenes for a in s.labels for b in s.labels if a != b)
    popular = sorted(LABELS, key=lambda lab: (-freq[lab], lab))
    rows = []
    for i, s in enumerate(scenes):
        absent = [lab for lab in LABELS if lab not in s.labels]
        if strategy == "random":
            neg = rnd.sample(absent, 3)
        elif strategy == "popular":
            neg = [lab for lab in popular if lab not in s.labels][:3]
        else:  # adversarial: same shape or colour as a present object first, then most co-occurring
            neg = sorted(absent, key=partial(adversarial_key, present=s.labels, cooc=cooc))[:3]
        pos = rnd.sample(s.labels, 3)
        for p, q in zip(pos, neg, strict=True):
            rows += [(i, p, "yes"), (i, q, "no")]
    return rows
