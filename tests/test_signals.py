"""SIGTERM (what a process supervisor sends) or SIGINT (Ctrl-C) to `rlhf ui`, `rlhf serve`, `rlhf label` or
`rlhf schedule` stops every child server the command started: no process left, the port free."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from pathlib import Path

import pytest

from components.core import procs
from components.core.config import ROOT
from test_serve import champion  # noqa: F401  (a fixture: the tiny model registered as policy@champion)

pytestmark = pytest.mark.slow  # each starts a real server

SIGNALS = [signal.SIGTERM, signal.SIGINT]


@pytest.fixture(autouse=True)
def sigint_delivered():
    """A suite started in the background of a non-interactive shell (`make test &`) has SIGINT ignored, and every
    command it starts inherits that: Python then never raises KeyboardInterrupt (as a shell's background job
    should not), and a SIGINT test would wait for nothing. A handler here instead becomes the default in a child."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _alive(pids: set[int]) -> list[int]:
    import psutil

    left = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
    return left


def stop_with(proc, sig: int, port: int, log: Path, timeout: float = 60) -> None:
    """Send ``sig`` to the command only (it runs in its own session, its children too, so nothing else
    gets it), then check it exited and left no process and no listener behind."""
    import psutil

    family = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=timeout)
    except Exception:
        procs.stop(proc)
        raise
    deadline = time.monotonic() + 10
    while _alive(family) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _alive(family)
    for pid in left:  # do not leave them to the next test
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    assert not left, f"{signal.Signals(sig).name}: processes left behind {left}\n{procs.tail(log, 30)}"
    assert code is not None and not procs.port_in_use(port), procs.tail(log, 30)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_rlhf_ui_stops_its_mlflow_ui(sig, tmp_path):
    import psutil

    port = procs.free_port()
    log = tmp_path / "ui.log"
    env = procs.child_env({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    proc = procs.start([sys.executable, "-m", "components.apps.cli", "ui", "--port", str(port)], env=env, log=log, cwd=ROOT)
    try:
        procs.wait_healthy(f"http://127.0.0.1:{port}/health", proc, timeout=180, what="rlhf ui", log=log)
        assert psutil.Process(proc.pid).children(recursive=True), "mlflow ui runs as a child of rlhf ui"
    except BaseException:
        procs.stop(proc)
        raise
    stop_with(proc, sig, port, log)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_rlhf_label_stops_its_ranking_server(sig, tmp_path):
    from test_label import write_queue

    write_queue(tmp_path)
    port = procs.free_port()
    log = tmp_path / "label.log"
    proc = procs.start([sys.executable, "-m", "components.apps.cli", "label", "--queue", str(tmp_path / "queue.jsonl"),
                        "--out", str(tmp_path / "comparisons.jsonl"), "--port", str(port)],
                       env=procs.child_env(), log=log, cwd=ROOT)
    try:
        procs.wait_healthy(f"http://127.0.0.1:{port}/api/next?labeler=alice", proc, timeout=120, what="rlhf label", log=log)
    except BaseException:
        procs.stop(proc)
        raise
    stop_with(proc, sig, port, log)
    assert "Traceback" not in log.read_text(), log.read_text()  # uvicorn shuts down gracefully, then exits by the signal


def test_rlhf_serve_stops_its_model_server_on_sigint(champion, tmp_path):  # noqa: F811 (SIGTERM: tests/test_serve.py)
    port = procs.free_port()
    log = tmp_path / "serve.log"
    proc = procs.start([sys.executable, "-m", "components.apps.cli", "serve", "--port", str(port)],
                       env=procs.child_env(), log=log, cwd=ROOT)
    try:
        procs.wait_healthy(f"http://127.0.0.1:{port}/health", proc, timeout=240, what="rlhf serve", log=log)
    except BaseException:
        procs.stop(proc)
        raise
    stop_with(proc, signal.SIGINT, port, log)
    assert proc.returncode == 130


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_rlhf_schedule_stops_its_prefect_server(sig, tmp_path):
    """The cron (Feb 29, 03:00) keeps the pipeline itself from running during the test."""
    from test_schedule import Served

    port = procs.free_port()
    log = tmp_path / "schedule.log"
    env = procs.child_env({"PREFECT_HOME": str(tmp_path / "prefect-home")})
    for k in ("PREFECT_API_URL", "PREFECT_PROFILES_PATH", "PREFECT_PROFILE"):
        env.pop(k, None)
    proc = procs.start([sys.executable, "-m", "components.apps.cli", "schedule", "--cron", "0 3 29 2 *", "--name",
                        "signal-test", "--server-port", str(port)], env=env, log=log, cwd=tmp_path)
    served = Served(proc, f"http://127.0.0.1:{port}/api", port, tmp_path / "unused", log)
    try:
        def deployment():
            with served.client() as c:
                return c.read_deployment_by_name("rlhf/signal-test")

        served.wait_for("the rlhf/signal-test deployment", deployment, timeout=150)
    except BaseException:
        procs.stop(proc)
        raise
    stop_with(proc, sig, port, log, timeout=90)
