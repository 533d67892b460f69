"""Model families: one short module per family registers what it is and where its parts live
(`registry.Family`). Light on purpose (no torch): config loading asks it for a checkpoint's family.
Adding a family = one module here registering a `Family` (and a tiny writer in `tiny.py` for tests)."""
from mmln.model.families import gemma3, idefics3, llava, llava_onevision, qwen2_vl  # noqa: F401 (register)
from mmln.model.families.registry import (FAMILIES, Family, family_for_model_type, family_of_dir, get_family,
                                          native_family, refusal, register, supported_model_types)

__all__ = ["FAMILIES", "Family", "family_for_model_type", "family_of_dir", "get_family", "native_family", "refusal",
           "register", "supported_model_types"]
