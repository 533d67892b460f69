"""Atomic file writes: every file mmln writes appears whole or not at all (temp file + `os.replace`)."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `path` (same folder, same suffix) for a writer to fill; on success it
    replaces `path` in one step, on any error it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")
    return Path(path)


def save_figure(fig: Any, path: str | os.PathLike[str], **savefig_kwargs: Any) -> Path:
    """`fig.savefig` through a temp file (the format follows `path`'s suffix)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or None, **savefig_kwargs)
    return path


def write_json(path: str | os.PathLike[str], obj: Any, **dumps_kwargs: Any) -> Path:
    return write_text(path, json.dumps(obj, ensure_ascii=False, **dumps_kwargs))


def read_json(path: str | os.PathLike[str]) -> Any:
    """json.load with an error that names the file and the line."""
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def read_results(path: str | os.PathLike[str], key: str, value: str, noun: str = "results") -> dict[Any, str]:
    """An official results file, a JSON list of ``{key: id, value: str}`` -> id -> value; errors name
    the file and the offending row (``noun`` words the duplicate error: "two captions for ...")."""
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {{{key}, {value}}}")
    out: dict[Any, str] = {}
    for row in data:
        if not isinstance(row, dict) or key not in row or not isinstance(row.get(value), str):
            raise ValueError(f"{path}: every result needs a {key} and a {value} string; got {str(row)[:200]}")
        if row[key] in out:
            raise ValueError(f"{path}: two {noun} for {key} {row[key]}")
        out[row[key]] = row[value]
    return out


def write_results(path: str | os.PathLike[str], rows: Any, key: str, value: str) -> Path:
    """Write an official results file, ``[{key: id, value: str}]`` (other keys dropped), atomically."""
    data = []
    for row in rows:
        if key not in row or not isinstance(row.get(value), str):
            raise ValueError(f"a result row needs {key} and a {value} string: {dict(row)!r}")
        data.append({key: row[key], value: row[value]})
    return write_json(path, data)


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp folder beside `path` for a writer to fill; on success it takes `path`'s place
    (a previous folder there is removed first), on any error it is removed and `path` is untouched."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
