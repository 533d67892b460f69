"""Output folders as transactions: mmln writes a folder only when it is new, empty, or mmln's own.

Every folder mmln writes as a whole (an export, a PEFT adapter, an evaluation's answers, a report)
ends with `mmln-manifest.json`, written last: what it is (`kind`) and every file in it with its
size and sha256. Then:

- `claim(out, kind)`, called before anything is computed or written: `out` must be missing, empty,
  or a complete earlier mmln output of the same kind (its manifest matches its files). Anything
  else (`--out .` in a checkout, a folder of someone else's files, an export of another format, an
  export a user has added files to) is an `OutputError`, one line, and nothing is touched.
- `replacing(out, kind)` yields a fresh folder beside `out` (`.<name>.mmln-<pid>.tmp`) to build the
  new output in; on success the manifest is written into it and it is swapped with `out` in one
  step (Linux `renameat2(RENAME_EXCHANGE)`; elsewhere two renames, with the old one kept as
  `.<name>.mmln-old` until the new one is in place and restored by the next call if a kill fell
  between them). A kill at any moment leaves the old complete output or the new complete one;
  the next `replacing` into that folder removes what a killed one left beside it.
- `verify(path)` (loaders): the folder's manifest must match its files (names, sizes, sha256).
- Files and folders get the user's umask (0644 / 0755 normally), never mkstemp's 0600 / 0700.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from mmln.base.io import DiskFullError, OutputError, no_space, user_mode, write_json  # noqa: F401 (OutputError: API)

MANIFEST = "mmln-manifest.json"
VERSION = 1


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir() and p != folder / MANIFEST)


def write_manifest(folder: str | os.PathLike[str], kind: str) -> Path:
    """Record every file under `folder` (size, sha256) as an mmln output of `kind`; written last."""
    folder = Path(folder)
    files = {rel: {"bytes": (folder / rel).stat().st_size, "sha256": sha256(folder / rel)} for rel in _files(folder)}
    return write_json(folder / MANIFEST, {"mmln_manifest": VERSION, "kind": kind, "files": files}, indent=1)


def read_manifest(folder: str | os.PathLike[str]) -> Optional[dict]:
    """The folder's manifest, or None when it has none; an unreadable one is an OutputError."""
    f = Path(folder) / MANIFEST
    if not f.is_file():
        return None
    try:
        m = json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise OutputError(f"{f}: not a readable mmln manifest ({e})") from None
    if not isinstance(m, dict) or not isinstance(m.get("files"), dict) or not isinstance(m.get("kind"), str):
        raise OutputError(f"{f}: not an mmln manifest (no 'kind' and 'files')")
    return m


def problems(folder: str | os.PathLike[str], manifest: dict, hashes: bool = True) -> list[str]:
    """How `folder`'s files differ from `manifest` (empty: they match)."""
    folder = Path(folder)
    listed, present = manifest["files"], set(_files(folder))
    out = [f"{rel} is missing" for rel in sorted(set(listed) - present)]
    out += [f"{rel} is not in the manifest" for rel in sorted(present - set(listed))]
    for rel in sorted(set(listed) & present):
        size = (folder / rel).stat().st_size
        if size != listed[rel].get("bytes"):
            out.append(f"{rel} has {size} bytes, the manifest says {listed[rel].get('bytes')}")
        elif hashes and sha256(folder / rel) != listed[rel].get("sha256"):
            out.append(f"{rel} has other contents than the manifest's sha256")
    return out


def verify(folder: str | os.PathLike[str], kind: Optional[str] = None, what: str = "an mmln output") -> dict:
    """A loader's check: `folder` holds a manifest (of `kind`, when given) that matches its files."""
    folder = Path(folder)
    m = read_manifest(folder)
    if m is None:
        raise OutputError(f"{folder}: {what} without {MANIFEST} (an interrupted copy, or not written by this "
                          "mmln): export it again")
    if kind is not None and m["kind"] != kind:
        raise OutputError(f"{folder}: its {MANIFEST} says it is a '{m['kind']}' output, not '{kind}'")
    bad = problems(folder, m)
    if bad:
        raise OutputError(f"{folder}: its files do not match its {MANIFEST} ({'; '.join(bad[:3])}"
                          f"{f'; {len(bad) - 3} more' if len(bad) > 3 else ''}): it was altered or copied "
                          "incompletely; export it again")
    return m


LLAVA_EXPORT = ("config.yaml", "llm", "mm_projector.bin")  # what `python -m mmln.export --format llava` writes


def claimed_root(path: str | os.PathLike[str]) -> Optional[Path]:
    """The mmln output a weights path belongs to (the path itself or its folder, holding a manifest
    or laid out as mmln's `llava` export), or None: a third-party checkpoint, loaded as it is."""
    p = Path(path).absolute()
    for d in ([p] if p.is_dir() else []) + [p.parent]:
        if (d / MANIFEST).is_file() or all((d / n).exists() for n in LLAVA_EXPORT):
            return d
    return None


def claim(out: str | os.PathLike[str], kind: str, flag: str = "--out") -> Path:
    """Refuse (OutputError, before anything is written) unless `out` is missing, empty, or a complete
    mmln output of `kind` that `replacing` may replace."""
    out = Path(out).absolute()
    if not out.exists() and not out.is_symlink():
        return out
    if not out.is_dir() or out.is_symlink():
        raise OutputError(f"{flag} {out}: is not a folder; give a new or empty folder")
    if not any(out.iterdir()):
        return out
    m = read_manifest(out)
    if m is None:
        raise OutputError(f"{flag} {out}: this folder holds files mmln did not write (no {MANIFEST}); "
                          "mmln writes only into a new or empty folder or over its own earlier output: "
                          "give another folder")
    if m["kind"] != kind:
        raise OutputError(f"{flag} {out}: holds an mmln '{m['kind']}' output, not '{kind}'; give another folder")
    bad = problems(out, m, hashes=False)
    if bad:
        raise OutputError(f"{flag} {out}: an earlier mmln '{kind}' output whose files changed since "
                          f"({'; '.join(bad[:3])}); mmln will not replace it: give another folder")
    return out


def claim_eval(out: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Where an evaluation may write its answer files and scores.json: a new or empty folder, an mmln
    run folder (`mlflow_run_id`) or an earlier evaluation's (`scores.json`), never an mmln output
    with a manifest (its files would stop matching it) nor a folder of someone else's files."""
    out = Path(out).absolute()
    if not out.exists():
        return out
    if not out.is_dir():
        raise OutputError(f"{flag} {out}: is not a folder; give a new or empty folder")
    if (out / MANIFEST).is_file():
        raise OutputError(f"{flag} {out}: is a finished mmln output ({MANIFEST}); evaluations write elsewhere: "
                          "give another folder")
    if any(out.iterdir()) and not ((out / "mlflow_run_id").is_file() or (out / "scores.json").is_file()):
        raise OutputError(f"{flag} {out}: this folder holds files mmln did not write (no scores.json, not a run "
                          "folder); give a new or empty folder")
    return out


def _tmp_name(out: Path, pid: int) -> Path:
    return out.parent / f".{out.name}.mmln-{pid}.tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(out: Path) -> list[Path]:
    """What killed `replacing` calls into `out` left beside it: a half-built `.tmp` of a process
    that is gone is removed; an `.mmln-old` (a kill between two renames) goes back when `out` is gone."""
    removed = []
    old = out.parent / f".{out.name}.mmln-old"
    if old.is_dir():
        if not out.exists():
            os.replace(old, out)
        else:
            shutil.rmtree(old)
            removed.append(old)
    for p in out.parent.glob(f".{out.name}.mmln-*.tmp"):
        pid = p.name[len(f".{out.name}.mmln-"):-len(".tmp")]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (38, 22, 95):  # ENOSYS, EINVAL (a filesystem without it), EOPNOTSUPP
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_in(new: Path, out: Path) -> None:
    """Put the complete folder `new` at `out`; an earlier `out` ends up at `new`'s name (to delete)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        os.replace(new, out)  # rename(2) may replace an empty folder
        return
    if _exchange(new, out):
        return
    old = out.parent / f".{out.name}.mmln-old"
    os.replace(out, old)
    os.replace(new, out)
    os.replace(old, new)


@contextmanager
def replacing(out: str | os.PathLike[str], kind: str, flag: str = "--out") -> Iterator[Path]:
    """Build a new `kind` output in a folder beside `out`, then swap it in whole (see the module doc)."""
    out = claim(out, kind, flag)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)
    out = claim(out, kind, flag)  # a restored .mmln-old is checked like any earlier output
    tmp = _tmp_name(out, os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    user_mode(tmp)
    try:
        yield tmp
        for p in [tmp, *tmp.rglob("*")]:  # libraries' own temp files come out 0600 (transformers' safetensors)
            if not p.is_symlink():
                user_mode(p)
        write_manifest(tmp, kind)
        swap_in(tmp, out)
    except Exception as e:  # a full disk while any library wrote into the folder: name the output
        if no_space(e, tmp):
            raise DiskFullError(out) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the half-built one, or after the swap the old one
