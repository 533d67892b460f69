"""Language about a scene: captions, descriptions, reasoning, and the question builders (open,
yes/no), each true of the scene it is asked about. The benchmarks' items (MME, POPE) are
`mmln.data.synth.bench_items`."""
from __future__ import annotations

import random
from collections import Counter
from typing import Any, Sequence

from mmln.base.constants import SHORT_ANSWER, YES_NO_SUFFIX
from mmln.data.synth.world import BACKGROUNDS, COLORS, COLS, LABELS, NUM, ROWS, SHAPES, Obj, Scene
from mmln.eval.mme import COGNITION as MME_COGNITION, PERCEPTION as MME_PERCEPTION


MME_SUBTASKS = MME_PERCEPTION + MME_COGNITION
YN, SHORT = YES_NO_SUFFIX, SHORT_ANSWER
BRIEF_PROMPTS = (
    "Describe the image concisely.", "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Write a terse but informative summary of the picture.")
DETAIL_PROMPTS = (
    "Describe the following image in detail.", "Provide a detailed description of the given image.",
    "Give an elaborate explanation of the image you see.", "Offer a thorough analysis of the image.",
    "Explain the various aspects of the image before you.",
    "Walk through the important details of the image.",
    "What do you see happening in this image?", "What is going on in this image?")

def article(w: str) -> str:
    return ("an " if w[0] in "aeiou" else "a ") + w


def plural(w: str) -> str:
    return w + ("es" if w.endswith(("ss", "x")) else "s")


def count_phrase(k: int, noun: str) -> str:
    return f"{NUM[k]} {noun if k == 1 else plural(noun)}"


def capitalize(s: str) -> str:
    return s[:1].upper() + s[1:]


def where(o: Obj) -> str:
    """Position phrase: 'in the center', 'on the left', 'at the top', 'at the bottom right'..."""
    if (o.row, o.col) == (1, 1):
        return "in the center"
    if o.row == 1:
        return f"on the {COLS[o.col]}"
    return f"at the {ROWS[o.row]}" + ("" if o.col == 1 else f" {COLS[o.col]}")


def spot_name(o: Obj) -> str:  # 'left', 'top left', 'center'
    return where(o).split(" ", 2)[2]


def join_list(parts: list[str], sep: str = ", ") -> str:
    return parts[0] if len(parts) == 1 else sep.join(parts[:-1]) + " and " + parts[-1]


def object_phrase(o: Obj, rnd: random.Random) -> str:
    p = article(f"{o.size} {o.name}" if rnd.random() < 0.3 else o.name)
    return p + (f" {where(o)}" if rnd.random() < 0.6 else "")


def caption(scene: Scene, rnd: random.Random) -> str:
    """CC3M-style caption: lowercase, space before punctuation ('a red circle and a blue star .')."""
    body = join_list([object_phrase(o, rnd) for o in rnd.sample(scene.objects, len(scene.objects))], " , ")
    form, bg, n = rnd.randrange(4), scene.background, len(scene.objects)
    if form == 1:
        body = f"{body} on a {bg} background"
    elif form == 2:
        body = f"{rnd.choice(('an illustration of', 'a picture of', 'a drawing of'))} {body}"
    elif form == 3:
        body = f"{count_phrase(n, 'shape')} on a {bg} background : {body}"
    return body + " ."


def sentence(scene: Scene, rnd: random.Random) -> str:
    """A COCO-style reference caption ('A red circle on the left and a blue star.')."""
    return capitalize(caption(scene, rnd)[:-2].replace(" , ", ", ").replace(" : ", ": ")) + "."


def absent_label(scene: Scene, rnd: random.Random, similar: float = 0.5) -> str:
    """A label not in the scene; with probability ``similar`` one sharing a shape or colour."""
    absent = [lab for lab in LABELS if lab not in scene.labels]
    near = [lab for lab in absent if any(set(lab.split()) & set(o.name.split()) for o in scene.objects)]
    return rnd.choice(near if near and rnd.random() < similar else absent)


QA = tuple[str, str, str]  # question, full answer, short answer


def qa_color(s: Scene, rnd: random.Random, o: Obj) -> QA:
    ref = f"the {o.shape}" + (f" {where(o)}" if s.count(shape=o.shape) > 1 else "")
    return f"What color is {ref}?", f"{capitalize(ref)} is {o.color}.", o.color


def qa_shape(s: Scene, rnd: random.Random, o: Obj) -> QA:
    ref = f"the {o.color} object" + (f" {where(o)}" if s.count(color=o.color) > 1 else "")
    return f"What shape is {ref}?", f"{capitalize(ref)} is {article(o.shape)}.", o.shape


def qa_count(s: Scene, rnd: random.Random, o: Obj) -> QA:
    noun, k = ("object", len(s.objects)) if rnd.random() < 0.5 else (o.shape, s.count(shape=o.shape))
    if rnd.random() < 0.3:  # a shape that may be absent
        noun = rnd.choice(SHAPES)
        k = s.count(shape=noun)
    return (f"How many {plural(noun)} are there in the image?",
            f"There {'is' if k == 1 else 'are'} {count_phrase(k, noun)} in the image.", str(k))


def qa_where(s: Scene, rnd: random.Random, o: Obj) -> QA:
    return f"Where is the {o.name} in the image?", f"The {o.name} is {where(o)} of the image.", spot_name(o)


def qa_exist(s: Scene, rnd: random.Random, o: Obj) -> QA:
    q = rnd.choice(("Is there {} in the image?", "Is there {} in this image?", "Does the image contain {}?"))
    if rnd.random() < 0.5:
        return q.format(article(o.name)), f"Yes, there is {article(o.name)} {where(o)}.", "yes"
    lab = absent_label(s, rnd)
    return q.format(article(lab)), f"No, there is no {lab} in the image.", "no"


def qa_background(s: Scene, rnd: random.Random, o: Obj) -> QA:
    return "What color is the background?", f"The background is {s.background}.", s.background


def qa_relation(s: Scene, rnd: random.Random, o: Obj) -> QA | None:
    others = [b for b in s.objects if b is not o]
    if not others:
        return None
    b = rnd.choice(others)
    if o.col != b.col and (o.row == b.row or rnd.random() < 0.5):
        asked, true = rnd.choice(("left", "right")), "left" if o.col < b.col else "right"
        q, rel = f"Is the {o.name} to the {asked} of the {b.name}?", f"to the {true} of"
    else:
        asked, true = rnd.choice(("above", "below")), "above" if o.row < b.row else "below"
        q, rel = f"Is the {o.name} {asked} the {b.name}?", true
    yes = asked == true
    return q, f"{'Yes' if yes else 'No'}, the {o.name} is {rel} the {b.name}.", "yes" if yes else "no"


def yes_no_qa(yes: bool, question: str, fact: str) -> QA:
    return question, f"{'Yes' if yes else 'No'}, {fact}.", "yes" if yes else "no"


def asked_option(true: Any, options: Sequence[Any], rnd: random.Random) -> Any:
    """The true value or (half the time) another one of ``options``."""
    return true if rnd.random() < 0.5 else rnd.choice([x for x in options if x != true])


def qa_background_yn(s: Scene, rnd: random.Random, o: Obj) -> QA:
    q = rnd.choice(("Is the background {}?", "Is the background of this image {}?", "Is the background color {}?"))
    bg = asked_option(s.background, tuple(BACKGROUNDS), rnd)
    return yes_no_qa(bg == s.background, q.format(bg), f"the background is {s.background}")


def qa_color_yn(s: Scene, rnd: random.Random, o: Obj) -> QA:
    q = rnd.choice(("Is {} {}?", "Is {} in this image {}?", "Is {} {} in color?"))
    ref = f"the {o.shape}" + (f" {where(o)}" if s.count(shape=o.shape) > 1 else "")
    color = asked_option(o.color, tuple(COLORS), rnd)
    return yes_no_qa(color == o.color, q.format(ref, color), f"{ref} is {o.color}")


def qa_shape_yn(s: Scene, rnd: random.Random, o: Obj) -> QA:
    ref = f"the {o.color} object" + (f" {where(o)}" if s.count(color=o.color) > 1 else "")
    shape = asked_option(o.shape, SHAPES, rnd)
    return yes_no_qa(shape == o.shape, f"Is {ref} {article(shape)}?", f"{ref} is {article(o.shape)}")


def qa_picture_yn(s: Scene, rnd: random.Random, o: Obj) -> QA | None:
    if len(s.objects) > 1:
        return None
    q = rnd.choice(("Is this a picture of {}?", "Is this a photo of {}?", "Is this an image of {}?"))
    if rnd.random() < 0.5:  # ask about a wrong shape or a wrong colour, not both
        color, shape = o.color, asked_option(o.shape, SHAPES, rnd)
    else:
        color, shape = asked_option(o.color, tuple(COLORS), rnd), o.shape
    return yes_no_qa(f"{color} {shape}" == o.name, q.format(article(f"{color} {shape}")), f"it is a picture of {article(o.name)}")


def qa_count_yn(s: Scene, rnd: random.Random, o: Obj) -> QA:
    q = rnd.choice(("Are there {} in the image?", "Is there a total of {} in this image?", "Does the image contain {}?"))
    k = len(s.objects)
    n = asked_option(k, [j for j in (k - 1, k + 1, k + 2) if j >= 1], rnd)
    fact = f"there {'is' if k == 1 else 'are'} {count_phrase(k, 'object')} in the image"
    return yes_no_qa(n == k, q.format(count_phrase(n, "object")), fact)


# yes/no questions, as LLaVA's conversations (and MME, POPE) ask them, a few phrasings each
YES_NO_QA = (qa_exist, qa_background_yn, qa_color_yn, qa_shape_yn, qa_picture_yn, qa_count_yn)
OPEN_QA = (qa_color, qa_shape, qa_count, qa_where, qa_background)
CONV_QA = (*OPEN_QA, qa_relation, *YES_NO_QA)


def pick_qa(kinds: Sequence[Any], scene: Scene, rnd: random.Random) -> QA:
    """One question of a kind drawn from ``kinds`` about a random object of ``scene``; a kind that
    does not apply to the scene (it returns None) is drawn again."""
    qa = None
    while qa is None:
        qa = rnd.choice(kinds)(scene, rnd, rnd.choice(scene.objects))
    return qa


def qa_turns(scene: Scene, rnd: random.Random, k: int) -> list[QA]:
    """``k`` question/answer pairs of different kinds, each true of ``scene``."""
    out: list[QA] = []
    for gen in rnd.sample(CONV_QA, len(CONV_QA)):
        qa = gen(scene, rnd, rnd.choice(scene.objects))
        if qa is not None and len(out) < k:
            out.append(qa)
    return out


def short_qa(qa: QA, rnd: random.Random) -> tuple[str, str]:
    """The question with its full answer or (yes/no questions 60%, others 30%) a one-word answer
    asked for with LLaVA-1.5's suffixes (yes/no: " Please answer yes or no." a third of the time)."""
    q, long, short = qa
    yes_no = short in ("yes", "no")
    if rnd.random() >= (0.6 if yes_no else 0.3):
        return q, long
    return q + (YN if yes_no and rnd.random() < 1 / 3 else SHORT), capitalize(short)


def describe(scene: Scene, rnd: random.Random) -> str:
    """Detailed paragraph naming every object, its size, colour and position."""
    n = len(scene.objects)
    out = [f"The image shows {count_phrase(n, 'shape')} on a plain {scene.background} background."]
    for o in sorted(scene.objects, key=lambda o: (o.row, o.col)):
        thing = article(f"{o.size} {o.name}")
        out.append(rnd.choice((f"{capitalize(where(o))}, there is {thing}.", f"There is {thing} {where(o)}.",
                               f"{capitalize(thing)} can be seen {where(o)}.")))
    if n > 1:
        rel = qa_relation(scene, rnd, scene.objects[0])
        out.append(rel[1].split(", ", 1)[1].capitalize() if rel else "")
    out.append("There are no other objects in the image.")
    return " ".join(t for t in out if t)


def reasoning(scene: Scene, rnd: random.Random) -> tuple[str, str]:
    """One question that needs inference over the scene, with a long true answer."""
    objs, n = scene.objects, len(scene.objects)
    opts: list[tuple[str, str]] = []
    for edge, key in (("left", lambda o: o.col), ("right", lambda o: -o.col),
                      ("top", lambda o: o.row), ("bottom", lambda o: -o.row)):
        best = min(key(o) for o in objs)
        win = [o for o in objs if key(o) == best]
        if len(win) == 1:
            o = win[0]
            rest = (f" The other object, the {next(b for b in objs if b is not o).name}, is farther from "
                    "that edge." if n == 2 else " The other objects are farther from that edge." if n > 2 else "")
            opts.append((f"Which object is closest to the {edge} edge of the image, and what color is it?",
                         f"The object closest to the {edge} edge is the {o.size} {o.name}, which is "
                         f"{where(o)} of the image. It is {o.color}.{rest}"))
    large = [o for o in objs if o.size == "large"]
    if n > 1 and len(large) == 1:
        small = join_list([f"the {o.name}" for o in objs if o.size == "small"])
        opts.append(("Which object appears to be the largest in the image?",
                     f"The largest object is the {large[0].name} {where(large[0])}. "
                     f"Compared with it, {small} {'is' if n == 2 else 'are'} small."))
    o = rnd.choice(objs)
    left = [f"the {b.name}" for b in objs if b is not o]
    opts.append((f"If the {o.name} were removed, how many objects would remain in the image?",
                 f"The image contains {count_phrase(n, 'object')}. Removing the {o.name} would leave "
                 + (f"{count_phrase(n - 1, 'object')}: {join_list(left)}." if left else
                    f"no objects, only the plain {scene.background} background.")))
    if n > 1:
        by = Counter(b.color for b in objs)
        color, k = by.most_common(1)[0]
        same = [b.name for b in objs if b.color == color]
        opts.append(("Do any of the objects in the image share the same color?",
                     f"Yes. The {join_list(same)} are all {color}." if k > 1 else
                     "No. Every object has a different color: "
                     + join_list([f"the {b.shape} is {b.color}" for b in objs]) + "."))
    return rnd.choice(opts)
