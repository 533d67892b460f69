"""Model families, as data: one short module per family registers what it is and where its parts live
(`registry.Family`). Light on purpose (no torch): config loading asks it for a checkpoint's family.
Adding a family = one module here registering a `Family` (and a tiny writer in `mmln/model/families/tiny.py` for tests; the torch side lives there too)."""
from mmln.families import gemma3, idefics3, llava, llava_onevision, qwen2_vl  # noqa: F401 (register)
from mmln.families.registry import (FAMILIES, Family, family_for_model_type, family_of_dir, get_family,
                                          native_family, refusal, register, supported_model_types)

__all__ = ["FAMILIES", "Family", "family_for_model_type", "family_of_dir", "get_family", "native_family", "refusal",
           "register", "supported_model_types"]
