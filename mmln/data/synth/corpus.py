"""Plain sentences in the shape-world vocabulary, for the tiny tokenizer and the tiny base LM."""
from __future__ import annotations

from mmln.data.synth.bench_items import mme_item
from mmln.data.synth.qa import (
    BRIEF_PROMPTS, DETAIL_PROMPTS, MME_SUBTASKS, YN, caption, describe, qa_turns, reasoning,
    sentence, short_qa,
)
from mmln.data.synth.world import seeded_rng, sample_scene


def text_corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` plain sentences in the shape-world vocabulary (captions, Q&A, descriptions, prompts),
    for training a tiny tokenizer and pretraining a tiny base LM."""
    out: list[str] = []
    for i in range(n):
        rnd = seeded_rng(seed, "corpus", i)
        s, kind = sample_scene(rnd), rnd.randrange(8)
        if kind == 0:
            out.append(caption(s, rnd))
        elif kind == 1:
            out.append(sentence(s, rnd))
        elif kind in (2, 3):
            out.append(" ".join(" ".join(short_qa(qa, rnd)) for qa in qa_turns(s, rnd, rnd.randint(1, 3))))
        elif kind == 4:
            out.append(rnd.choice(DETAIL_PROMPTS) + " " + describe(s, rnd))
        elif kind == 5:
            out.append(" ".join(reasoning(s, rnd)))
        elif kind == 6:
            out.append(rnd.choice(BRIEF_PROMPTS) + " " + caption(s, rnd))
        else:
            _, q_yes, q_no = mme_item(rnd.choice(MME_SUBTASKS), rnd)
            out.append(f"{q_yes}{YN} Yes" if rnd.random() < 0.5 else f"{q_no}{YN} No")
    return out
