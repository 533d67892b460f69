"""Atomic writes: a failed write leaves the old file untouched and no temp file behind."""
from __future__ import annotations

import json

import pytest

from mmln.base.io import atomic_path, write_json, write_text


def test_write_replaces_whole_and_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "sub" / "scores.json"
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["scores.json"]
    write_text(target, "new\n")
    assert target.read_text() == "new\n"
