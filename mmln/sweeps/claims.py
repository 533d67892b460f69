"""Claims on a halving sweep's work, held in its Optuna storage, so that workers on any machine that
shares the storage (a journal file on a shared file system, or an RDB such as PostgreSQL) never
do one piece of work twice at once and take over the work of a dead one.

A claim is an Optuna study named `mmln-claim|<study>|<item>|<epoch>`: creating a study whose name
exists fails in every Optuna storage (a unique column in an RDB; the first record in a journal
file's total order), so exactly one worker wins an item (`Claims.acquire`). Its user attributes
name the holder (host, pid, the pid's start time, the launch) and a heartbeat counter that a
daemon thread of the holder bumps every `beat_s` seconds (`Claim`).

A claim is dead when its holder is: on the same host, when that process has gone (killed, or its
pid reused); on another host, when its heartbeat has not moved for `timeout_s` seconds of the
observer's own clock (clocks need not agree). A dead claim's item is taken over by creating the
next epoch (again exactly one winner, which deletes the dead epochs). A holder whose claim was
taken over (it froze for longer than the timeout) finds its claim gone at its next beat and exits
at once. A released claim is deleted. A claim whose work failed is kept, marked with the launch
(`MMLN_SWEEP_LAUNCH`, or the SLURM array job): the workers of that launch leave it alone (a
failing point is tried once a launch), a later launch takes it over.

A host is its name and boot id; `MMLN_WORKER_HOST` overrides it (e.g. two workers on one machine
judged as if on two: by their heartbeats only; or containers that share a machine's name and
kernel but not its pids, which must not be judged by pid).
"""
from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

PREFIX = "mmln-claim"
SEP = "|"


def host() -> str:
    """This machine as claims name it: its host name and boot id (two machines of one host name
    differ; so does a machine after a reboot, whose old pids mean nothing)."""
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()[:8]
    except OSError:
        boot = "?"
    return os.environ.get("MMLN_WORKER_HOST") or f"{socket.gethostname()}/{boot}"


def launch_id() -> str:
    """The launch a worker belongs to: `--workers N`'s launcher, a SLURM array job, or this process."""
    return (os.environ.get("MMLN_SWEEP_LAUNCH") or os.environ.get("SLURM_ARRAY_JOB_ID")
            or f"{host()}:{os.getpid()}:{started(os.getpid())}")


def started(pid: int) -> Optional[str]:
    """The start time of process `pid` (clock ticks since boot; None when it is gone or a zombie)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]


@dataclass
class Claim:
    """A held claim: the storage's study of it and the heartbeat thread."""
    storage: Any
    name: str
    study_id: int
    beat_s: float
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> "Claim":
        threading.Thread(target=self.beat, daemon=True, name=f"heartbeat {self.name}").start()
        return self

    def beat(self) -> None:
        n = 0
        while not self.stop.wait(self.beat_s):
            n += 1
            try:
                self.storage.set_study_user_attr(self.study_id, "beat", n)
            except KeyError:  # our claim was deleted: another worker took the item over
                if not self.stop.is_set():
                    print(f"mmln.sweep: {self.name} was taken over (no heartbeat for too long); exiting",
                          flush=True)
                    os._exit(3)
            except Exception:  # the storage unreachable for a moment: the next beat tries again
                pass


class Claims:
    """The claims of one storage (an optuna.storages object) under the prefix of one sweep."""

    def __init__(self, storage, timeout_s: float = 180.0, beat_s: float = 30.0):
        self.storage, self.timeout_s, self.beat_s = storage, timeout_s, beat_s
        self.launch = launch_id()
        self.seen: dict[str, tuple[Any, float]] = {}  # claim name -> (beat, when we first saw it)

    def held(self, scope: str) -> dict[str, tuple[int, Any]]:
        """item -> (epoch, FrozenStudy) of the newest claim on each item of `scope` (a study name)."""
        out: dict[str, tuple[int, Any]] = {}
        for s in self.storage.get_all_studies():
            parts = s.study_name.split(SEP)
            if len(parts) == 4 and parts[0] == PREFIX and parts[1] == scope:
                epoch = int(parts[3])
                if parts[2] not in out or out[parts[2]][0] < epoch:
                    out[parts[2]] = (epoch, s)
        return out

    def dead(self, s) -> bool:
        """Whether the holder of claim `s` (a FrozenStudy) is gone (see the module's doc)."""
        a = s.user_attrs
        if "failed" in a:
            return a.get("launch") != self.launch
        if a.get("host") == host():  # written last: pid and start time are there
            return started(int(a["pid"])) != a.get("started")
        beat, now = a.get("beat", -1), time.monotonic()
        first = self.seen.setdefault(s.study_name, (beat, now))
        if first[0] != beat:
            self.seen[s.study_name] = (beat, now)
            return False
        return now - first[1] > self.timeout_s

    def busy(self, scope: str) -> set[str]:
        """The items of `scope` a live worker is working on now (not the failed ones)."""
        return {item for item, (_, s) in self.held(scope).items() if "failed" not in s.user_attrs and not self.dead(s)}

    def acquire(self, scope: str, item: str) -> Optional[Claim]:
        """Claim `item` of `scope` (never blocks): the Claim, heartbeating, or None when a live
        worker holds it (or it failed in this launch)."""
        from optuna.exceptions import DuplicatedStudyError
        from optuna.study import StudyDirection

        current = self.held(scope).get(item)
        if current is not None and not self.dead(current[1]):
            return None
        epoch = 0 if current is None else current[0] + 1
        name = SEP.join([PREFIX, scope, item, str(epoch)])
        try:
            sid = self.storage.create_new_study([StudyDirection.MINIMIZE], name)
        except DuplicatedStudyError:  # another worker won it
            return None
        for key, value in {"pid": os.getpid(), "started": started(os.getpid()), "launch": self.launch,
                           "beat": 0, "host": host()}.items():  # a claim without a host: judged by its beat
            self.storage.set_study_user_attr(sid, key, value)
        for e in range(epoch):  # the dead holders' claims
            self.forget(SEP.join([PREFIX, scope, item, str(e)]))
        return Claim(self.storage, name, sid, self.beat_s).start()

    def release(self, claim: Claim, failed: Optional[str] = None) -> None:
        """The work is done (the claim is deleted), or failed (kept, marked with this launch)."""
        claim.stop.set()
        if failed is None:
            self.forget(claim.name)
        else:
            self.storage.set_study_user_attr(claim.study_id, "failed", failed[:2000])

    def forget(self, name: str) -> None:
        try:
            self.storage.delete_study(self.storage.get_study_id_from_name(name))
        except KeyError:  # gone already
            pass

    def clear_dead(self, scope: str) -> None:
        """Delete the claims of `scope` whose holders are dead (e.g. killed after their work was
        reported, before they released it); a failed one stays for the next launch."""
        for item, (_, s) in self.held(scope).items():
            if "failed" not in s.user_attrs and self.dead(s):
                self.forget(s.study_name)
