"""What every config key allows, as one table: `RULES[key]` is a `Rule` (a test and the words that say
what is allowed). `mmln.config.load_config` checks every key against it when the config loads,
before anything heavy is imported, and raises one line naming the key, the bad value and `allowed`.

Types are OmegaConf's (the dataclass schema in `mmln.config`); this table adds what a type cannot
say: enumerations, signs, ranges, finiteness, non-empty names. Relations between keys (epochs and
max_steps, the connector lr alias, ...) stay in `mmln.config.validate`. Paths are checked for
existence only by the commands that read them (`PATHS`, `missing_paths`): a preset may name a
stage-1 output that does not exist yet when `python -m mmln.params` reads it.
Plain Python: no third-party import, and of mmln only the constants.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from mmln.base.constants import CONVERSATION_TYPES, PROFILES


@dataclass(frozen=True)
class Rule:
    ok: Callable[[Any], bool]
    allowed: str  # completes "allowed: ..."
    # a check of the value as written, before OmegaConf converts it to the key's type (which turns 2 into true)
    as_written: Optional[Callable[[Any], bool]] = None

    def problem(self, key: str, value: Any, written: bool = False) -> Optional[str]:
        """None when `value` (`written`: as written in a file or override) is allowed, else the one line
        that says so."""
        test = self.as_written if written else self.ok
        if test is None:
            return None
        try:
            fine = test(value)
        except (TypeError, ValueError):
            fine = False
        return None if fine else f"{key}={_show(value)} is not allowed: {self.allowed}"


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def choice(*values: str) -> Rule:
    return Rule(lambda v: v in values, "one of " + ", ".join(values))


def at_least(lo: float, what: str = "a number", note: str = "") -> Rule:
    return Rule(lambda v: _number(v) and v >= lo, f"{what} >= {lo:g}{note}")


def above(lo: float, note: str = "") -> Rule:
    return Rule(lambda v: _number(v) and v > lo, f"a finite number > {lo:g}{note}")


def within(lo: float, hi: float, hi_open: bool = False, note: str = "") -> Rule:
    return Rule(lambda v: _number(v) and lo <= v and (v < hi if hi_open else v <= hi),
                f"a number in [{lo:g}, {hi:g}{')' if hi_open else ']'}{note}")


def optional(rule: Rule, none_means: str) -> Rule:
    written = rule.as_written and (lambda v: v is None or rule.as_written(v))
    return Rule(lambda v: v is None or rule.ok(v), f"{rule.allowed}, or null ({none_means})", written)


def one_of_or(rule: Rule, *values: Any) -> Rule:
    return Rule(lambda v: v in values or rule.ok(v), f"{' or '.join(map(_show, values))}, or {rule.allowed}")


SIZE = at_least(1, "a whole number")
COUNT = at_least(0, "a whole number")
SEED = Rule(lambda v: isinstance(v, int) and 0 <= v < 2**32, "a whole number in [0, 2^32)")
_BOOLS = ("true", "false", "yes", "no", "on", "off", "0", "1")
FLAG = Rule(lambda v: isinstance(v, bool), "true or false",
            lambda v: isinstance(v, bool) or str(v).lower() in _BOOLS)
MAYBE_FLAG = optional(FLAG, "the default")
LR = above(0)
NAME = Rule(lambda v: isinstance(v, str) and v.strip() != "", "a non-empty text")
MAYBE_NAME = optional(NAME, "the default")
NAMES = Rule(lambda v: all(isinstance(x, str) and x.strip() for x in v), "a list of non-empty names")
SOME_NAMES = Rule(lambda v: len(v) > 0 and NAMES.ok(v), "a non-empty list of non-empty names")
PATH = MAYBE_NAME  # what a path key allows as a value; whether it must exist: PATHS
PATH_LIST = NAMES


def _devices(v: Any) -> bool:
    if v == "auto" or v == -1:
        return True
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return v >= 1
    if isinstance(v, str):
        v = [x for x in v.split(",") if x.strip()]
    return len(v) > 0 and all(str(x).strip().isdigit() for x in v)


def _lightning_strategy(v: Any) -> bool:
    return v in TRAIN_STRATEGIES or (isinstance(v, str) and v.endswith(".json") and os.path.isfile(v))


# Lightning 2.x's precision names and their aliases (lightning.fabric.plugins.precision.precision's
# _PRECISION_INPUT_STR and _PRECISION_INPUT_STR_ALIAS, compared in tests/test_config_rules.py)
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "32", "bf16", "16", "64")
TRAIN_STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp2", "deepspeed_stage_1",
                    "deepspeed_stage_2", "deepspeed_stage_3")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


def _each(prefix: str, names: str, rule: Rule) -> dict[str, Rule]:
    return {prefix + n: rule for n in names.split()}


def _split(prefix: str) -> dict[str, Rule]:
    return {prefix + "files": PATH_LIST, prefix + "image_folder": PATH,
            prefix + "types": Rule(lambda v: all(t in CONVERSATION_TYPES for t in v),
                                     "a list of " + ", ".join(CONVERSATION_TYPES)),
            prefix + "type_files": PATH, prefix + "limit": optional(SIZE, "every record"), prefix + "seed": SEED}


RULES: dict[str, Rule] = {
    "stage": choice("pretrain", "instruct"), "run_name": MAYBE_NAME, "output_dir": NAME,
    "resume": NAME,  # auto | never | an http(s) URL | a checkpoint file (PATHS["resume"])
    "resume_changed_config": FLAG, "quiet": FLAG,
    # model
    "model.name": NAME, "model.init_from": PATH, "model.dtype": choice("auto", "float32", "bfloat16"),
    "model.max_length": SIZE, "model.gradient_checkpointing": FLAG,
    "model.loss_chunk": COUNT, "model.attn_implementation": choice(*ATTENTION),
    "model.vision.backend": choice("hf_clip", "timm"), "model.vision.name": NAME, "model.vision.path": PATH,
    **_each("model.vision.", "image_size patch_size hidden_size intermediate_size num_layers num_heads", SIZE),
    "model.vision.select_layer": Rule(lambda v: isinstance(v, int) and v < 0, "a negative layer index (-2: LLaVA's)"),
    "model.vision.select_feature": choice("patch", "cls_patch"), "model.vision.preprocess": choice("clip", "timm"),
    "model.connector.type": choice("linear", "mlp2x_gelu"), "model.connector.path": PATH,
    "model.llm.path": PATH, "model.llm.tokenizer": PATH, "model.llm.tokenizer_legacy": MAYBE_FLAG,
    "model.llm.arch": NAME, "model.llm.rms_norm_eps": above(0), "model.llm.tie_word_embeddings": FLAG,
    **_each("model.llm.", "hidden_size intermediate_size num_layers num_heads vocab_size max_position_embeddings",
            SIZE),
    **_each("model.llm.", "num_kv_heads head_dim", optional(SIZE, "the architecture's default")),
    # tune (tune.strategy: also checked against the strategy registry)
    "tune.strategy": NAME, "tune.final_norm": FLAG, "tune.vision_norms": FLAG, "tune.exclude_norms": NAMES,
    **_each("tune.", "train_connector train_embeddings train_head", optional(FLAG, "the strategy's default")),
    "tune.lora.r": SIZE, "tune.lora.alpha": SIZE, "tune.lora.dropout": within(0, 1, hi_open=True),
    "tune.lora.target_modules": SOME_NAMES, "tune.ia3.target_modules": SOME_NAMES,
    "tune.ia3.feedforward_modules": NAMES, "tune.vera.r": SIZE, "tune.vera.d_initial": above(0),
    "tune.vera.seed": SEED, "tune.vera.target_modules": SOME_NAMES,
    # data
    "data.template": choice("plain", "vicuna_v1", "llava_llama_2", "chat_template"),
    **_split("data.train."), **_split("data.val."),
    "data.val_fraction": within(0, 1, hi_open=True), "data.image_aspect": choice("square", "pad"),
    "data.on_bad_sample": choice("skip", "error"), "data.num_workers": COUNT,
    "data.batching": choice("length_grouped", "random", "packed"), "data.megabatch": SIZE,
    "data.max_image_pixels": SIZE, "data.max_image_aspect": at_least(1), "data.max_padded_pixels": SIZE,
    # train
    "train.lr": LR, "train.connector_lr": optional(LR, "train.lr"),
    **_each("train.group_lr.", "norms connector embeddings head adapters other vision_norms", optional(LR, "train.lr")),
    "train.weight_decay": at_least(0), "train.warmup_ratio": within(0, 1, hi_open=True),
    "train.epochs": one_of_or(SIZE, -1), "train.max_steps": one_of_or(SIZE, -1),
    "train.global_batch_size": SIZE, "train.micro_batch_size": SIZE, "train.grad_clip": at_least(0, note=" (0: off)"),
    "train.precision": choice(*PRECISIONS),
    "train.strategy": Rule(_lightning_strategy, "one of " + ", ".join(TRAIN_STRATEGIES) + ", or an existing "
                           "DeepSpeed .json file"),
    "train.accelerator": choice(*ACCELERATORS),
    "train.devices": Rule(_devices, "auto, -1 (all), a number >= 1, or a list of device indices"),
    "train.num_nodes": SIZE, "train.seed": SEED, "train.log_every_n_steps": SIZE, "train.save_every_n_steps": SIZE,
    "train.val_every_n_steps": optional(SIZE, "once per epoch"), "train.nonfinite": choice("stop", "skip_step"),
    "train.nonfinite_limit": COUNT,
    # tracking, analysis, eval, debug
    "tracking.uri": MAYBE_NAME, "tracking.experiment": MAYBE_NAME, "tracking.offline": FLAG,
    "tracking.artifact_max_mb": at_least(0),
    "analysis.grad_norms": NAMES, "analysis.grad_every_n_steps": COUNT, "analysis.similarity": FLAG,
    "analysis.similarity_samples": SIZE, "analysis.similarity_seed": SEED,
    "eval.profile": choice(*PROFILES),
    "eval.batch_size": SIZE, "eval.max_new_tokens": SIZE, "eval.yes_no": choice("generate", "logits"),
    "eval.limit": optional(SIZE, "every question"), "eval.seed": SEED, "eval.pope_files": PATH_LIST,
    **_each("eval.", "mme_dir pope_images vqav2_questions vqav2_annotations vqav2_images coco_karpathy coco_images "
            "flickr30k_karpathy flickr30k_images", PATH),
    "debug.fail_at_step": optional(SIZE, "off"), "debug.pause_at_steps": Rule(lambda v: all(SIZE.ok(x) for x in v),
                                                                              "a list of steps >= 1"),
}

# Paths that must exist when a command reads them: group -> {key: "dir" | "file" | "any"}
PATHS: dict[str, dict[str, str]] = {
    "model": {"model.init_from": "dir", "model.llm.path": "dir", "model.llm.tokenizer": "dir",
              "model.vision.path": "any", "model.connector.path": "file"},
    "data": {"data.train.files": "file", "data.train.image_folder": "dir", "data.train.type_files": "dir",
             "data.val.files": "file", "data.val.image_folder": "dir", "data.val.type_files": "dir"},
    "resume": {"resume": "file"},  # unless auto, never or a URL
}
_NOT_PATHS = ("auto", "never")
HINTS = {"model.init_from": "a llava-hf or original LLaVA checkpoint directory",
         "model.llm.path": "the LLM's directory: config.json, weights, tokenizer",
         "model.llm.tokenizer": "a directory with the tokenizer files",
         "model.vision.path": "a local CLIP / timm checkpoint",
         "model.connector.path": "stage 1's mm_projector.bin or trainable.safetensors: run the stage-1 config first",
         "resume": "or auto, never, an http(s) URL"}
_IS = {"dir": os.path.isdir, "file": os.path.isfile, "any": os.path.exists}


def written_problem(key: str, value: Any) -> Optional[str]:
    """The problem of `value` as written for `key` (a leaf given a mapping, a flag given 2), or None."""
    rule = RULES.get(key)
    if rule is None:
        return None
    if isinstance(value, dict):
        return f"{key}={_show(value)} is not allowed: {rule.allowed}"
    return rule.problem(key, value, written=True)


def problems(values: dict[str, Any]) -> Iterable[str]:
    """The one-line problem of each flattened `key: value` a rule refuses, in table order."""
    for key, rule in RULES.items():
        if key in values:
            problem = rule.problem(key, values[key])
            if problem:
                yield problem


def missing_paths(values: dict[str, Any], groups: Iterable[str]) -> Iterable[str]:
    """One line per set path of `groups` (keys of `PATHS`) that is not there."""
    for group in groups:
        for key, kind in PATHS[group].items():
            value = values.get(key)
            for p in value if isinstance(value, (list, tuple)) else [value] if value is not None else []:
                if key == "resume" and (p in _NOT_PATHS or "://" in str(p)):
                    continue
                if not _IS[kind](str(p)):
                    what = {"dir": "directory", "file": "file", "any": "file or directory"}[kind]
                    also = f"; {HINTS[key]}" if key in HINTS else ""
                    yield f"{key}={_show(p)} is not allowed: no such {what} (the path must exist{also})"
