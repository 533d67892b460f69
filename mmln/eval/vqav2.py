"""VQAv2 scoring, mirroring the official VQA evaluation ``vqaEval.py`` (GT-Vision-Lab/VQA master,
the same code OpenFlamingo vendors).

What the official ``evaluate`` does per question, reproduced here:

1. every human answer and the model answer: newlines/tabs -> spaces, strip;
2. only if the 10 human answers are NOT all identical: ``processPunctuation`` then
   ``processDigitArticle`` on every human answer and on the model answer. When they are
   unanimous nothing else happens, so the comparison is exact and case-sensitive
   ("Yes" scores 0 against ten "yes");
3. accuracy = mean over the 10 leave-one-out subsets of min(1, #matches / 3);
4. overall / per answer type / per question type = 100 * mean (the official tool then rounds to
   2 decimals for display; the values here are unrounded).

Profile ``paper`` first applies ``paper_postprocess`` to every model answer.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmln.eval.profiles import check_profile
from mmln.base.io import read_json, read_results, write_results


# The official contraction table (keys with capitals never match: the text is lower-cased first;
# "somebody'd" -> "somebodyd" is the official table's own oddity).
CONTRACTIONS: dict[str, str] = dict(
    pair.split("=")
    for pair in """
    aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
    couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
    hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
    howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd
    itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
    mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
    neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
    'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
    shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
    somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's
    someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll
    someones=someone's somethingd=something'd somethingd've=something'd've
    something'dve=something'd've somethingll=something'll thats=that's thered=there'd
    thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
    theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas
    wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll
    whatre=what're whats=what's whatve=what've whens=when's whered=where'd wheres=where's
    whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's
    whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
    wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
    yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
    you'dve=you'd've youll=you'll youre=you're youve=you've
    """.split()
)
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})
# Order matters only for the output, not the result; ":" and "'" are NOT in the official list.
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# The official pattern "(?!<=\d)(\.)(?!\d)" has a typo'd look-behind (it is a look-ahead for the
# literal "<=<digit>", always true at a "."), so it removes every "." not followed by a digit.
_PERIOD = re.compile(r"\.(?!\d)")
# The official call passes re.UNICODE (= 32) as the *count* argument of sub(): at most 32 periods go.
_PERIOD_COUNT = 32
_PAPER_STOP = re.compile(r"Question|Answer|###|</s>")
_WORD = re.compile(r"[a-z]+")


def process_punctuation(text: str) -> str:
    """Official ``processPunctuation``.

    For each punctuation mark: if it touches a space anywhere in the ORIGINAL text, or the text
    contains a digit-comma-digit ("1,000") anywhere, the mark is deleted; otherwise it becomes a
    space ("red/blue" -> "red blue", "red / blue" -> "red  blue", "1,000 x-ray" -> "1000 xray").
    Then up to 32 periods not followed by a digit are deleted ("0.5" keeps its dot, "5." loses it).
    """
    out = text
    strip_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in PUNCTUATION:
        if strip_all or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Official ``processDigitArticle``: lower-case, split on whitespace, number words
    "none"/"zero".."ten" -> digits, drop "a"/"an"/"the", restore contractions ("dont" -> "don't"),
    join with single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(text: str) -> str:
    """``process_digit_article(process_punctuation(text))``: the full official normalization."""
    return process_digit_article(process_punctuation(text))


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_accuracy(answer: str, human_answers: Sequence[str]) -> float:
    """Soft accuracy of one answer in [0, 1], exactly as the official ``evaluate`` loop.

    Normalization is applied (to both sides) only when the human answers are not all identical.
    Accuracy = mean over the leave-one-out subsets (one per human answer, removed by position) of
    min(1, #answers in the subset equal to the model answer / 3).
    """
    if not human_answers:
        raise ValueError("no human answers")
    humans = [_clean(h) for h in human_answers]
    res = _clean(answer)
    if len(set(humans)) > 1:
        humans = [normalize_answer(h) for h in humans]
        res = normalize_answer(res)
    matches = sum(h == res for h in humans)
    # leaving out a matching answer leaves matches-1, leaving out another one leaves matches
    subsets = [min(1.0, (matches - (h == res)) / 3) for h in humans]
    return sum(subsets) / len(subsets)


def paper_postprocess(text: str) -> str:
    """The paper harness's clean-up of a raw generation (applied before scoring).

    Cut at the first "Question", "Answer", "###" or "</s>", strip; then an output that contains
    the word "yes" or "no" (case-insensitive, whole words; the first one wins) becomes "Yes"/"No".
    """
    text = _PAPER_STOP.split(text, maxsplit=1)[0].strip()
    for word in _WORD.findall(text.lower()):
        if word in ("yes", "no"):
            return word.capitalize()
    return text


def score_vqav2(
    results: Mapping[Any, str],
    annotations: Sequence[Mapping[str, Any]],
    profile: str = "official",
) -> dict[str, Any]:
    """VQA accuracy of ``results`` (question_id -> answer) over every annotated question.

    Returns ``{"overall", "per_answer_type", "per_question_type", "n"}`` in percent. A question
    without a result, or a result for a question that is not annotated, is an error (the official
    ``loadRes`` asserts the two id sets are equal).
    """
    check_profile(profile)
    annotated = {a["question_id"] for a in annotations}
    missing = [a["question_id"] for a in annotations if a["question_id"] not in results]
    if missing:
        raise ValueError(f"no result for {len(missing)} question(s), e.g. question_id {missing[0]}")
    extra = [q for q in results if q not in annotated]
    if extra:
        raise ValueError(f"{len(extra)} result(s) for questions not in the annotations, e.g. question_id {extra[0]}")
    if not annotations:
        raise ValueError("no annotated questions")
    scores: list[float] = []
    by_answer: dict[str, list[float]] = {}
    by_question: dict[str, list[float]] = {}
    for ann in annotations:
        answer = results[ann["question_id"]]
        if profile == "paper":
            answer = paper_postprocess(answer)
        acc = vqa_accuracy(answer, [h["answer"] for h in ann["answers"]])
        scores.append(acc)
        by_answer.setdefault(ann["answer_type"], []).append(acc)
        by_question.setdefault(ann["question_type"], []).append(acc)

    def pct(values: list[float]) -> float:
        return 100 * sum(values) / len(values)

    return {
        "overall": pct(scores),
        "per_answer_type": {k: pct(v) for k, v in by_answer.items()},
        "per_question_type": {k: pct(v) for k, v in by_question.items()},
        "n": len(scores),
    }


def read_vqav2_questions(path: str | os.PathLike[str]) -> dict[Any, dict[str, Any]]:
    """Official questions file ``{"questions": [{"image_id", "question", "question_id"}]}`` ->
    question_id -> question."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise ValueError(f"{path}: expected a JSON object with a 'questions' list")
    try:
        return {q["question_id"]: q for q in data["questions"]}
    except (KeyError, TypeError):
        raise ValueError(f"{path}: every question needs a question_id") from None


def read_vqav2_annotations(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Official annotations file ``{"annotations": [{"question_id", "question_type",
    "answer_type", "answers": [{"answer", ...}] x 10, ...}]}``."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: expected a JSON object with an 'annotations' list")
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or not {"question_id", "question_type", "answer_type", "answers"} <= ann.keys():
            raise ValueError(
                f"{path}: every annotation needs question_id, question_type, answer_type and answers; "
                f"got {str(ann)[:200]}"
            )
        humans = ann["answers"]
        if not humans or not all(isinstance(h, dict) and isinstance(h.get("answer"), str) for h in humans):
            raise ValueError(f"{path}: question_id {ann['question_id']}: 'answers' must be a list of {{'answer': str}}")
    return data["annotations"]


def read_vqav2_results(path: str | os.PathLike[str]) -> dict[Any, str]:
    """Official results file ``[{"question_id", "answer"}]`` -> question_id -> answer."""
    return read_results(path, "question_id", "answer", "results")


def score_vqav2_files(
    results_path: str | os.PathLike[str],
    questions_path: str | os.PathLike[str],
    annotations_path: str | os.PathLike[str],
    profile: str = "official",
) -> dict[str, Any]:
    """``score_vqav2`` from the three official files; errors name the file at fault."""
    questions = read_vqav2_questions(questions_path)
    annotations = read_vqav2_annotations(annotations_path)
    results = read_vqav2_results(results_path)
    for ann in annotations:
        if ann["question_id"] not in questions:
            raise ValueError(f"{questions_path}: no question for annotated question_id {ann['question_id']}")
    try:
        return score_vqav2(results, annotations, profile)
    except ValueError as e:
        raise ValueError(f"{results_path}: {e}") from None


def write_vqav2_results(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write an official results file ``[{"question_id": int, "answer": str}]`` atomically."""
    return write_results(path, rows, "question_id", "answer")
