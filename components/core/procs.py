"""Child servers (the MLflow model server, a local Prefect server): start, wait until healthy, stop.

A server is started in its own session (process group), so a Ctrl-C in the terminal reaches only
the command that started it, which then stops the server's whole process tree (MLflow's model
server runs uvicorn as a child; a Prefect server may have children of its own).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from components.core.config import ROOT
from components.core.env import OFFLINE_ENV
from components.core.errors import ServiceError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment + the project's offline defaults (the user's values win) + ``extra``, with
    this Python's bin folder first on PATH (``mlflow models serve`` runs ``uvicorn`` by name)."""
    env = {**OFFLINE_ENV, **os.environ, **(extra or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def start(cmd: list[str], *, env: dict[str, str], log: Path | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` in a new session; its output goes to ``log`` (appended) or to ours."""
    out = open(log, "ab") if log else None  # noqa: SIM115 (the child owns it; closed below)
    try:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT if out else None,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        if out:
            out.close()


def tail(log: Path | None, n: int = 25) -> str:
    if not log or not log.exists():
        return ""
    lines = log.read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:])


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_healthy(url: str, proc: subprocess.Popen | None, *, timeout: float, what: str, log: Path | None = None) -> float:
    """Poll ``url`` until it answers 2xx; returns the seconds it took. Raises ServiceError when the
    process exits first or ``timeout`` seconds pass (with the end of its log)."""
    t0 = time.monotonic()
    while True:
        if http_ok(url):
            return time.monotonic() - t0
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{what} exited with code {proc.returncode} before {url} answered"
                               + (f"; end of {log}:\n{tail(log)}" if log else ""))
        if time.monotonic() - t0 > timeout:
            raise ServiceError(f"{what}: no answer from {url} within {timeout:.0f} s"
                               + (f"; end of {log}:\n{tail(log)}" if log else ""))
        time.sleep(0.5)


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop ``proc`` and every descendant: SIGTERM, then SIGKILL to whatever is left after ``timeout``."""
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1)


@contextlib.contextmanager
def stopped_on_exit(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """Stop ``proc``'s tree however the block ends (return, exception, Ctrl-C or SIGTERM to us)."""
    import threading

    previous = None
    if threading.current_thread() is threading.main_thread():
        def on_sigterm(signum, frame):
            raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield proc
    finally:
        stop(proc)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# What a pipeline run leaves in the checkout beside the ignored outputs/ (DVC metrics, plots and
# lock file): never part of a copy, so a test's project starts as a fresh clone does, even in a
# checkout where `rlhf run` has run.
RUN_RECORDS = ("metrics/", "plots/", "dvc.lock")


def project_copy(dest: Path, root: Path | None = None) -> Path:
    """What a fresh clone of the project at ``root`` would hold (tracked + untracked-not-ignored
    files, less the untracked ``RUN_RECORDS`` of a pipeline run), as a new one-commit git
    repository at ``dest``: for tests and benchmarks."""
    import shutil

    root = root or ROOT
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, text=True,
                           capture_output=True, check=True).stdout.split("\n")
    untracked = set(subprocess.run(["git", "ls-files", "-o", "--exclude-standard"], cwd=root, text=True,
                                   capture_output=True, check=True).stdout.split("\n"))
    for f in filter(None, files):
        if f in untracked and any(f == r or f.startswith(r) for r in RUN_RECORDS):
            continue
        if (root / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / f, dest / f)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest
