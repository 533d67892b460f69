"""Evaluation profiles, shared by every scorer, the inference runner and the config schema.

- `official`: each benchmark's own tools and the model's own chat template, greedy decoding;
- `paper`:    the harness the paper describes (its v0 prompt, sampling, 3-shot text, MME without
              the landmark and artwork subtasks), so its numbers can be compared like with like.
"""
from __future__ import annotations

from mmln.base.constants import PROFILES  # noqa: F401  (the one definition; re-exported here)


def check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
