"""One pipeline run per project at a time: ``.rlhf-run.lock``, an OS file lock (flock).

A second run waits for the first (or fails at once with ``flow.wait_for_lock: false``), so two
runs with different params clobber neither params.yaml, outputs/ nor the registry. The lock is
released even when its holder is killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator

from components.core.config import ROOT

LOCK_FILE = ROOT / ".rlhf-run.lock"
_depth = 0  # re-entrant within one process: `rlhf run` takes the lock, then calls the flow


class ProjectBusy(RuntimeError):
    """Another pipeline run holds this project's lock (flow.wait_for_lock: false)."""


@contextlib.contextmanager
def project_lock(wait: bool = True) -> Iterator[None]:
    """Hold the project's lock for the block; wait for another holder, or raise ProjectBusy when
    ``wait`` is false. The file holds the holder's pid and start time, shown to whoever waits."""
    global _depth
    if _depth:
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown process"
            if not wait:
                raise ProjectBusy(f"{LOCK_FILE}: another pipeline run holds this project ({holder}); "
                                  "wait for it, or set flow.wait_for_lock: true to queue behind it") from None
            print(f"another pipeline run holds {LOCK_FILE} ({holder}); waiting for it to finish ...", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        _depth = 1
        try:
            yield
        finally:
            _depth = 0
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock
