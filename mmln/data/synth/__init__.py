"""Synthetic data sets in the real on-disk formats (training data and benchmarks), drawn from a tiny shape world.

Every image is a plain background with 1-3 objects (shape x colour x size) in distinct cells of a
3x3 grid, drawn with PIL plus colour jitter and pixel noise. Every caption, question and answer is
derived from the scene that was drawn, so it is true of its image, and the vocabulary is small
enough for a tiny LM to learn in minutes on CPU. Everything is seeded: the same arguments give
byte-identical files. Each item has its own RNG (seed, data set, index), so item ``i`` does not
depend on the other size options. ``scenes.jsonl`` (one ``{"image", "scene"}`` per image, paths
relative to ``--out``) records the ground truth of every drawn image.

Modules: ``world`` (scenes, drawing, per-item RNGs), ``qa`` (captions, descriptions and question
builders), ``writers`` (each data set in its on-disk format, :func:`synthesize`), ``corpus`` (plain
text for the tiny tokenizer and LM). Reading an MME release folder is ``mmln.eval.mme.read_mme``.

Layout written under ``--out`` (sizes = defaults of :func:`synthesize`)::

    cc3m/chat.json, cc3m/images/GCC_train_<9 digits>.jpg           stage 1 (LLaVA-CC3M-Pretrain)
    coco/train2017/<12 digits>.jpg                                   stage 2 images
    llava_instruct/{conversation_58k,detail_23k,complex_reasoning_77k,
                    llava_instruct_150k,llava_instruct_80k}.json     stage 2 (LLaVA-Instruct)
    llava_instruct/short_answer_vqa.json                             LLaVA-1.5-style one-word VQA (demo stage 2)
    mme/MME_Benchmark_release_version/<subtask>/...                  MME release layout
    pope/coco_pope_{random,popular,adversarial}.json                 POPE (JSON lines)
    coco/val2014/COCO_val2014_<12 digits>.jpg                        POPE, VQAv2, Karpathy val/test
    vqav2/v2_OpenEnded_mscoco_val2014_questions.json, vqav2/v2_mscoco_val2014_annotations.json
    coco/train2014/COCO_train2014_<12 digits>.jpg                    Karpathy COCO train split
    karpathy/dataset_coco.json, karpathy/dataset_flickr30k.json, flickr30k/<10 digits>.jpg
    scenes.jsonl                                                     ground truth per image
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mmln.eval.mme import COGNITION as MME_COGNITION, PERCEPTION as MME_PERCEPTION, MMERow, read_mme  # noqa: F401
from mmln.base.io import write_json  # noqa: F401  (part of this package's API)
# every name of the former single module mmln/data/synth.py, so `from mmln.data.synth import X` keeps working
from mmln.data.synth.world import (
    BACKGROUNDS, COLORS, COLS, LABELS, NUM, ROWS, SHAPES, SIZES, Obj, Scene, draw, font_of, seeded_ids, ink_of, jitter,
    seeded_rng, sample_scene,
)
from mmln.data.synth.qa import (
    BRIEF_PROMPTS, CONV_QA, DETAIL_PROMPTS, MME_SUBTASKS, OPEN_QA, QA, SHORT, YES_NO_QA, YN,
    article, absent_label, asked_option, capitalize, caption, describe, join_list, count_phrase, object_phrase, pick_qa,
    plural, qa_background, qa_background_yn, qa_color, qa_color_yn, qa_count, qa_count_yn,
    qa_exist, qa_picture_yn, qa_relation, qa_shape, qa_shape_yn, qa_turns, qa_where, reasoning, sentence,
    short_qa, spot_name, where, yes_no_qa,
)
from mmln.data.synth.bench_items import FRENCH, OCR_WORDS, adversarial_key, mme_item, pope_questions
from mmln.data.synth.writers import (
    BAD_REASONS, MME_IMAGES_DIR, VQA_INFO, VQA_LICENSE, Writer, bad_samples, write_cc3m, conversation_of, write_instruct,
    write_karpathy, MIX665K_SOURCES, mix665k, write_mme, write_pope, record_of, short_vqa_records, synthesize, write_vqa, vqa_answers, with_image, write_jsonl,
)
from mmln.data.synth.corpus import text_corpus


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mmln.data synth", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-pretrain", type=int, default=3000, help="CC3M-style records (= images)")
    p.add_argument("--n-instruct", type=int, default=1000, help="train2017 images for LLaVA-Instruct")
    p.add_argument("--n-mme-per-subtask", type=int, default=10)
    p.add_argument("--n-pope-images", type=int, default=50)
    p.add_argument("--n-vqa-images", type=int, default=100)
    p.add_argument("--n-caption-images", type=int, default=100, help="per Karpathy data set")
    p.add_argument("--bad-samples", action="store_true", help="also write OUT/bad/ (loader robustness)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    paths = synthesize(a.out, image_size=a.image_size, n_pretrain=a.n_pretrain, n_instruct=a.n_instruct,
                       n_mme_per_subtask=a.n_mme_per_subtask, n_pope_images=a.n_pope_images,
                       n_vqa_images=a.n_vqa_images, n_caption_images=a.n_caption_images, seed=a.seed)
    if a.bad_samples:
        paths["bad_samples"] = bad_samples(Path(a.out) / "bad")
    for k, v in paths.items():
        print(f"{k:28s} {v}")
    print(f"wrote {len(paths)} outputs in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
