"""The registry of model families: for a checkpoint's `config.json`, which family it is and where
its parts live. JSON-only (no torch): a config loads and an unknown family fails in milliseconds.

A family answers, as data: the transformers class (`hf_class`), the module paths inside it of the
language model (its `.layers` are the decoder blocks, its `.norm` the final norm), the vision tower,
the projector (`connector`: modules or parameters), the LM head; which processor outputs the model
takes besides `input_ids` / `attention_mask` (`text_aligned`: those shaped like `input_ids`, padded
like them); and what it cannot do yet (`refuses`: feature -> one line). Roles, never paths, are
what strategies, analyses and exports ask for (`mmln.model.families.native.NativeVLM`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.json `model_type` values of this family
    hf_class: str  # the transformers class of the whole model ("" = mmln's own LLaVA assembly)
    language_model: str = ""  # dotted paths inside the transformers model
    vision: str = ""
    connector: tuple[str, ...] = ()  # modules or parameters (e.g. LLaVA-OneVision's image_newline)
    head: str = "lm_head"
    text_aligned: tuple[str, ...] = ()  # processor outputs shaped (B, T) like input_ids
    refuses: dict[str, str] = field(default_factory=dict)  # feature -> why, one line
    description: str = ""

    @property
    def native(self) -> bool:
        """True for a transformers image-text-to-text class; False for mmln's LLaVA assembly."""
        return bool(self.hf_class)


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


def supported_model_types() -> list[str]:
    return [t for f in FAMILIES.values() for t in f.model_types]


def get_family(name: Optional[str]) -> Family:
    """The family named `name` (None = "llava", mmln's assembly)."""
    name = name or "llava"
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; supported: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_for_model_type(model_type: Optional[str]) -> Optional[Family]:
    return next((f for f in FAMILIES.values() if model_type in f.model_types), None)


def family_of_dir(path: str | Path) -> Family:
    """The family of a checkpoint directory from its config.json `model_type` (ValueError: one line
    naming the directory, its model_type and the supported families)."""
    f = Path(path) / "config.json"
    if not f.is_file():
        raise ValueError(f"{path}: no config.json there (a transformers checkpoint directory is expected)")
    kind = json.loads(f.read_text()).get("model_type")
    family = family_for_model_type(kind)
    if family is None:
        raise ValueError(f"{f}: model_type {kind!r} is not a supported model family; supported model types: "
                         f"{', '.join(supported_model_types())}")
    return family


def native_family(model_cfg) -> Optional[Family]:
    """The native family of a run's `model` config (its `init_from` directory's config.json), or
    None for mmln's LLaVA assembly (no init_from, or a llava-hf / original LLaVA checkpoint)."""
    path = getattr(model_cfg, "init_from", None)
    if not path:
        return None
    family = family_of_dir(path)
    return family if family.native else None


def refusal(family: Family, feature: str) -> Optional[str]:
    """Why `family` cannot do `feature` (e.g. "packing"), or None."""
    why = family.refuses.get(feature)
    return f"model family {family.name!r} cannot do {feature}: {why}" if why else None
