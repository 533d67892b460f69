"""A real PostgreSQL server for tests, and an `mlflow server` on it: the cluster's databases, on this
machine's loopback.

`PostgresServer.start(folder)` runs Debian's `initdb` into a fresh data directory and `pg_ctl start`
on a free 127.0.0.1 port (no Unix socket, trust authentication: nothing but this machine's loopback
reaches it); `create_database()` gives each test its own database as a SQLAlchemy URL
(`postgresql://postgres@127.0.0.1:PORT/NAME`, driven by psycopg 3, SQLAlchemy's default PostgreSQL
driver); `stop()` stops it (`pg_ctl stop -m fast`) and removes the data directory. PostgreSQL refuses
to run as root: as root, its commands run as the `postgres` user that Debian's package creates
(`runuser -u postgres`). Where the binaries, that user or the driver are missing, or the server does
not start, `PostgresUnavailable` says which (tests/conftest.py's `postgres` fixture skips with it).

`mlflow_server(uri, folder)` is `mlflow server` on a tracking store (a PostgreSQL URL here) with its
artifacts under `folder`, on a free loopback port, answering `/health` before it returns."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator, Optional


class PostgresUnavailable(RuntimeError):
    """Why no PostgreSQL server can be started here (one line, for a skip message)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bindir() -> Optional[Path]:
    """The folder of `initdb` and `pg_ctl`: on PATH, else Debian's newest /usr/lib/postgresql/<major>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(dirs[-1]).parent if dirs else None


def as_user_prefix() -> list[str]:
    """The command prefix that runs PostgreSQL's programs as a non-root user ([] when not root)."""
    if os.geteuid() != 0:
        return []
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable("running as root and there is no `postgres` user to run PostgreSQL as "
                                  "(Debian's postgresql package creates it)") from None
    if not shutil.which("runuser"):
        raise PostgresUnavailable("running as root and `runuser` is missing (util-linux)")
    return ["runuser", "-u", "postgres", "--"]


class PostgresServer:
    def __init__(self, data: Path, port: int, prefix: list[str], bindir: Path):
        self.data, self.port, self.prefix, self.bindir = data, port, prefix, bindir
        self.host = "127.0.0.1"

    @classmethod
    def start(cls, parent: Optional[Path] = None) -> "PostgresServer":
        """initdb + pg_ctl start in a new folder under `parent` (default: the system's temp dir,
        which the `postgres` user can reach; pytest's own temp dirs are private to root)."""
        bindir = postgres_bindir()
        if bindir is None:
            raise PostgresUnavailable("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin): "
                                      "`apt-get install postgresql` (make install does)")
        try:
            import psycopg  # noqa: F401 (SQLAlchemy's postgresql:// driver)
        except ImportError:
            raise PostgresUnavailable("the psycopg driver is not installed (pip install -r requirements.lock)") from None
        prefix = as_user_prefix()
        root = Path(tempfile.mkdtemp(prefix="mmln-pg-", dir=parent))
        server = cls(root / "data", free_port(), prefix, bindir)
        try:
            if prefix:
                shutil.chown(root, "postgres", "postgres")
            server.run("initdb", "-D", str(server.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                       "--locale=C", "--no-sync")
            opts = f"-c listen_addresses={server.host} -p {server.port} -c unix_socket_directories='' -c fsync=off"
            server.run("pg_ctl", "-D", str(server.data), "-l", str(root / "server.log"), "-o", opts, "-w", "-t", "60",
                       "start")
        except PostgresUnavailable:
            server.stop()
            raise
        return server

    def run(self, program: str, *args: str) -> None:
        cmd = [*self.prefix, str(self.bindir / program), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = self.data.parent / "server.log"
            tail = log.read_text()[-1500:] if log.is_file() and os.access(log, os.R_OK) else ""
            raise PostgresUnavailable(f"{program} failed (exit {proc.returncode}): "
                                      f"{(proc.stderr or proc.stdout).strip()[-1500:]} {tail}".strip())

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def create_database(self, name: Optional[str] = None) -> str:
        """A new, empty database; its SQLAlchemy URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown: open connections are closed) and remove its folder."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(PostgresUnavailable, subprocess.TimeoutExpired):
                self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        shutil.rmtree(self.data.parent, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(uri: str, folder: Path, *options: str, timeout: float = 180) -> Iterator[str]:
    """`mlflow server --backend-store-uri URI` with its artifacts in `folder/artifacts`, on a free
    loopback port, with further `options`, until the block ends (SIGTERM to its process group,
    SIGKILL if it lingers).
    Yields its http URL once `/health` answers; its log is `folder/mlflow-server.log`."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "mlflow-server.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", uri,
           "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", *options]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server on {uri} did not answer on {base} (exit {proc.poll()}): "
                                   f"{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
