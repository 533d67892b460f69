"""Exclusive locks between processes: `fcntl.flock` on a lock file.

The kernel releases a flock when its holder exits in any way (return, exception, SIGKILL, a crash
of the machine's process), so a lock is never stale after a kill and nothing needs cleaning up; the
lock file stays (it holds the last holder's pid, host and start time, for the message a waiting or
refused process prints). flock works on local file systems and on NFS (Linux emulates it with
NFS byte-range locks); every process that shares the folders must see the same file system.

`mmln.sweep` holds one per sweep (a second run of the same sweep is refused) and one per point's
run folder (a sweep that reaches a point another sweep is training waits for it, then finds it
done), so no point is trained twice at once and no loss step is logged twice.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional


class Busy(RuntimeError):
    """The lock is held by another process (and the caller asked not to wait)."""


def holder(path: Path) -> str:
    """Who holds (or last held) the lock at `path`, as the holder wrote it."""
    try:
        return path.read_text().strip() or "another process"
    except OSError:
        return "another process"


@contextmanager
def exclusive(path: Path, wait: bool = True, say: Optional[Callable[[str], None]] = None) -> Iterator[None]:
    """Hold the lock file `path` (created if missing) for the block. Held by another process: wait
    for it (saying so once through `say`), or with `wait=False` raise Busy naming the holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise Busy(f"{holder(path)} holds {path}") from None
            if say:
                say(f"waiting for {holder(path)}, which holds {path}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                 .encode())
        yield
    finally:
        os.close(fd)  # releases the lock
