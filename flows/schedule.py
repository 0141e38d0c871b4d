"""``rlhf schedule``: run the pipeline on a cron schedule, served by this process.

``flow.serve(cron=...)`` creates a deployment and polls for its scheduled runs, but only a real
Prefect server schedules them (an ephemeral server does not). So ``serve_on_schedule`` uses
``PREFECT_API_URL`` when it is set (environment or Prefect profile), and otherwise starts
``prefect server start --host 127.0.0.1`` itself, waits for ``/api/health``, and stops the server
when serving ends (Ctrl-C or SIGTERM; the runner pauses the deployment's schedule first).

For workers on Docker or Kubernetes, deploy ``prefect.yaml`` instead (``prefect deploy``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.core.errors import ServiceError
from components.core.procs import child_env, free_port, http_ok, port_in_use, start, stopped_on_exit, wait_healthy
from components.core.env import set_offline_env

DEFAULT_SERVER_PORT = 4200  # Prefect's own default
DEFAULT_DEPLOYMENT = "scheduled"


class ScheduleError(ValueError):
    """A bad cron string or time zone; the message says which."""


def check_cron(cron: str, timezone: str | None = None) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        first = next((line.strip() for line in str(e).splitlines() if "error" in line.lower() and "validation" not in line.lower()), str(e))
        first = first.split(" [type=")[0].removeprefix("Value error, ")
        raise ScheduleError(f"invalid schedule (cron {cron!r}, timezone {timezone or 'UTC'}): {first}") from e


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` from the environment or the active Prefect profile (None: not set)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


@contextlib.contextmanager
def prefect_server(api_url: str | None = None, *, port: int | None = None,
                   startup_timeout: float = 120.0) -> Iterator[str]:
    """Yield the API URL of a Prefect server that schedules runs.

    ``api_url`` (or a configured ``PREFECT_API_URL``) must answer ``/health``; otherwise a local
    server is started on 127.0.0.1 (``port``, else 4200 when free, else any free port; database
    and log in ``PREFECT_HOME``) and stopped when the block ends.
    """
    api_url = api_url or configured_api_url()
    if api_url:
        api_url = api_url.rstrip("/")
        if not http_ok(f"{api_url}/health", timeout=10):
            raise ServiceError(f"no Prefect server answers at {api_url}/health (PREFECT_API_URL); start one with "
                               "`prefect server start --host 127.0.0.1`, or unset PREFECT_API_URL to let "
                               "`rlhf schedule` start its own")
        yield api_url
        return
    from prefect.settings import get_current_settings

    if port is None:
        port = DEFAULT_SERVER_PORT if not port_in_use(DEFAULT_SERVER_PORT) else free_port()
    elif port_in_use(port):
        raise ServiceError(f"port {port} on 127.0.0.1 is already in use: choose another, or point "
                           f"PREFECT_API_URL at the Prefect server listening there (http://127.0.0.1:{port}/api)")
    home = Path(get_current_settings().home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    log = home / f"rlhf-server-{port}.log"
    api_url = f"http://127.0.0.1:{port}/api"
    env = child_env({"PREFECT_HOME": str(home)})
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
           "--scheduler", "--analytics-off"]
    print(f"Starting a Prefect server: {api_url} (UI http://127.0.0.1:{port}, log {log})", flush=True)
    proc = start(cmd, env=env, log=log)
    with stopped_on_exit(proc):
        seconds = wait_healthy(f"{api_url}/health", proc, timeout=startup_timeout, what="prefect server start", log=log)
        print(f"Prefect server ready after {seconds:.0f} s", flush=True)
        try:
            yield api_url
        finally:
            print(f"Stopping the Prefect server on port {port}", flush=True)


def serve_on_schedule(flow: Any, name: str = DEFAULT_DEPLOYMENT, cron: str = "0 3 * * *", *,
                      api_url: str | None = None, port: int | None = None, timezone: str | None = None,
                      parameters: dict[str, Any] | None = None, startup_timeout: float = 120.0) -> None:
    """Serve a deployment ``<flow name>/<name>`` of ``flow`` on ``cron`` until Ctrl-C / SIGTERM.

    The server is ``api_url``, else ``PREFECT_API_URL``, else a local one this call starts and
    stops (see ``prefect_server``). Runs execute in subprocesses of this process.
    """
    check_cron(cron, timezone)
    set_offline_env()
    from prefect.schedules import Cron
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with prefect_server(api_url, port=port, startup_timeout=startup_timeout) as url:
        os.environ["PREFECT_API_URL"] = url  # the flow-run subprocesses inherit it
        with temporary_settings(updates={PREFECT_API_URL: url}):
            print(f"Serving '{flow.name}/{name}' on cron {cron!r}" + (f" ({timezone})" if timezone else " (UTC)")
                  + f" against {url}; Ctrl-C to stop", flush=True)
            try:
                flow.serve(name=name, schedules=[Cron(cron, timezone=timezone)], parameters=parameters or {},
                           pause_on_shutdown=True)
            except KeyboardInterrupt:
                pass

