"""The temporary Prefect server of ``rlhf run`` when no ``PREFECT_API_URL`` is set: on a port of its own.

Left to itself, Prefect starts its temporary ("ephemeral") server on a port drawn at random from
8000-8999, checked free, and takes the first ``/api/health`` answer on that port as its server's.
Two runs started together (two project copies on one tracking server, tests/test_postgres.py) can
draw the same port before either server is up: one server fails to bind, its run's health check
is answered by the other run's server, and the run works against that server until the other run
ends and stops it, then fails with "Connection refused" (seen in CI on 2026-12-01).

``start_temporary_server`` asks the OS for a free port instead (anywhere in its ephemeral range),
starts Prefect's server there, and then checks that the server process it started is the one
listening on the port; a server that lost its port is stopped and started again on another one.
Prefect's own calls (flow runs, logs, events) find it because it is registered as Prefect's default
temporary server, the way ``prefect.testing.utilities.prefect_test_harness`` registers its own.
"""

from __future__ import annotations

import time

from components.core.errors import ServiceError
from components.core.procs import free_port
from flows.schedule import configured_api_url


def listening_pid_ok(pid: int, port: int, timeout: float) -> bool:
    """Whether process ``pid`` listens on TCP ``port`` within ``timeout`` s (False: it exited first,
    or someone else holds the port). Where the OS does not let us look, True (Prefect's check stands)."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        try:
            proc = psutil.Process(pid)
            conns = proc.net_connections(kind="tcp")  # psutil >= 6 (pyproject)
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:
            return True
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def start_temporary_server(attempts: int = 3, timeout: float | None = None) -> str | None:
    """Start the temporary Prefect server the flow will use; its API URL. None when a server is
    configured (``PREFECT_API_URL``) or Prefect's temporary server is switched off: nothing to do."""
    if configured_api_url():
        return None
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if not settings.server.ephemeral.enabled:
        return None
    timeout = timeout or settings.server.ephemeral.startup_timeout_seconds
    taken = []
    for _ in range(attempts):
        server = SubprocessASGIServer(port=free_port())
        server.start(timeout=int(timeout))
        if server.server_process is not None and listening_pid_ok(server.server_process.pid, server.port, timeout):
            SubprocessASGIServer._instances[None] = server  # what Prefect's SubprocessASGIServer() returns from now on
            return server.api_url
        taken.append(server.port)
        server.stop()
    raise ServiceError(f"the temporary Prefect server could not keep a port of its own: another process answered on "
                       f"port{'s' if len(taken) > 1 else ''} {', '.join(map(str, taken))} ({attempts} attempts); "
                       "start a Prefect server (`prefect server start --host 127.0.0.1`) and set PREFECT_API_URL")
