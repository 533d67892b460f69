"""Atomic file writes: every file mmln writes appears whole or not at all (temp file + `os.replace`),
with the user's umask (0644 normally, not mkstemp's 0600); a write that fails for want of space is a
`DiskFullError` naming the file ("no space left on device while writing X")."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


class OutputError(ValueError):
    """A folder mmln must not write into, or an mmln output that is incomplete or altered (`mmln.base.outputs`)."""


class DiskFullError(OSError):
    """ENOSPC while mmln wrote a file: one line naming it."""

    def __init__(self, path: str | os.PathLike[str]):
        super().__init__(errno.ENOSPC, f"no space left on device while writing {path}")
        self.path = str(path)

    def __str__(self) -> str:
        return self.strerror


def umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc), else set-and-restore."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def user_mode(path: str | os.PathLike[str]) -> None:
    """chmod `path` to what a plain open()/mkdir() would give it (0666 / 0777 minus the umask)."""
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~umask())


def no_space(e: BaseException, where: str | os.PathLike[str] | None = None) -> bool:
    """Whether `e` (or what caused it) is a full disk: ENOSPC / EDQUOT, or a library's wrapped write
    failure (torch's "file write failed" / "unexpected pos", SQLite's "disk is full") while `where` has
    less than 1 MiB left."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e).lower()
        if "no space left on device" in text or "disk is full" in text:
            return True
        short_write = any(m in text for m in ("write failed", "failed writing", "unexpected pos"))  # torch's
        if where is not None and short_write and free_bytes(where) < 1 << 20:
            return True
        e = e.__cause__ or e.__context__
    return False


def as_disk_full(e: BaseException) -> "DiskFullError | None":
    """`e` as the one-line DiskFullError when a full disk caused it (anywhere in its chain), else None."""
    seen: set[int] = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen:
        if isinstance(x, DiskFullError):
            return x
        seen.add(id(x))
        x = x.__cause__ or x.__context__
    if not no_space(e):
        return None
    x, seen = e, set()
    while x is not None and id(x) not in seen:  # the innermost file name the error names
        seen.add(id(x))
        if getattr(x, "filename", None):
            return DiskFullError(x.filename)
        x = x.__cause__ or x.__context__
    return DiskFullError("the MLflow store" if "disk is full" in str(e).lower() else "an output file")


def free_bytes(where: str | os.PathLike[str]) -> int:
    """Bytes this process may still write under `where` (its nearest existing folder)."""
    p = Path(where)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return 1 << 62
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `path` (same folder, same suffix) for a writer to fill; on success it
    replaces `path` in one step, on any error it is removed and `path` is left as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
        os.close(fd)
    except OSError as e:
        if no_space(e, path.parent):
            raise DiskFullError(path) from None
        raise
    try:
        yield Path(tmp)
        user_mode(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        full = not isinstance(e, DiskFullError) and no_space(e, tmp)
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise DiskFullError(path) from None
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
