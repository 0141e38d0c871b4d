"""`rlhf schedule`'s code path (flows.schedule.serve_on_schedule) really schedules and runs flows,
and prefect.yaml is a deployment file Prefect accepts."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from components.core import procs
from components.core.config import ROOT

FLOW_NAME, DEPLOYMENT = "schedule-test", "every-minute"

# A cheap flow served exactly as `rlhf schedule` serves the pipeline; with no PREFECT_API_URL,
# serve_on_schedule starts (and on exit stops) its own Prefect server on the given port.
SCRIPT = textwrap.dedent(f'''
    import sys
    from pathlib import Path

    from prefect import flow

    from flows.schedule import serve_on_schedule


    @flow(name="{FLOW_NAME}")
    def tick(marker: str) -> str:
        with open(marker, "a") as f:
            f.write("ran\\n")
        return "ok"


    if __name__ == "__main__":
        serve_on_schedule(tick, "{DEPLOYMENT}", "* * * * *", port=int(sys.argv[1]),
                          parameters={{"marker": sys.argv[2]}})
''')


class Served:
    def __init__(self, proc: subprocess.Popen, api_url: str, port: int, marker: Path, log: Path):
        self.proc, self.api_url, self.port, self.marker, self.log = proc, api_url, port, marker, log

    @contextlib.contextmanager
    def client(self):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.api_url}), get_client(sync_client=True) as c:
            yield c

    def runs(self):
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        with self.client() as c:
            dep = c.read_deployment_by_name(f"{FLOW_NAME}/{DEPLOYMENT}")
            return dep, c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))

    def wait_for(self, what: str, predicate, timeout: float):
        t0 = time.monotonic()
        last = None
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                pytest.fail(f"the serving process exited ({self.proc.returncode}):\n{procs.tail(self.log, 40)}")
            try:
                last = predicate()
            except Exception as e:  # the deployment may not exist yet
                last = e
            if last and not isinstance(last, Exception):
                return last, time.monotonic() - t0
            time.sleep(2)
        pytest.fail(f"{what}: not within {timeout} s (last: {last!r}); log:\n{procs.tail(self.log, 40)}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schedule")
    (tmp / "tick_flow.py").write_text(SCRIPT)
    port = procs.free_port()
    marker, log = tmp / "marker.txt", tmp / "serve.log"
    env = procs.child_env({"PREFECT_HOME": str(tmp / "prefect-home"), "PYTHONPATH": str(ROOT)})
    for k in ("PREFECT_API_URL", "PREFECT_PROFILES_PATH", "PREFECT_PROFILE"):
        env.pop(k, None)
    proc = procs.start([sys.executable, "tick_flow.py", str(port), str(marker)], env=env, log=log, cwd=tmp)
    try:
        yield Served(proc, f"http://127.0.0.1:{port}/api", port, marker, log)
    finally:
        procs.stop(proc)


@pytest.mark.slow
def test_served_deployment_gets_scheduled_runs(served):
    import datetime

    from prefect.client.schemas.objects import StateType

    procs.wait_healthy(f"{served.api_url}/health", served.proc, timeout=120, what="the local Prefect server", log=served.log)

    def scheduled():
        dep, runs = served.runs()
        future = [r for r in runs if r.state_type == StateType.SCHEDULED]
        return (dep, future) if future else None

    (dep, future), seconds = served.wait_for("scheduled flow runs of the deployment", scheduled, timeout=90)
    assert [s.schedule.cron for s in dep.schedules] == ["* * * * *"] and all(s.active for s in dep.schedules)
    assert dep.parameters == {"marker": str(served.marker)}
    starts = sorted(r.expected_start_time for r in future)
    assert starts[0] <= datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=1, seconds=5)
    assert all((b - a).total_seconds() == 60 for a, b in zip(starts, starts[1:])), "one run per minute"
    print(f"{len(future)} scheduled runs {seconds:.0f} s after the server answered")


@pytest.mark.slow
def test_a_scheduled_run_completes(served):
    """The first cron tick is at most a minute away; the runner executes it in a subprocess."""
    from prefect.client.schemas.objects import StateType

    def completed():
        return [r for r in served.runs()[1] if r.state_type == StateType.COMPLETED]

    runs, seconds = served.wait_for("a completed scheduled flow run", completed, timeout=150)
    assert runs[0].deployment_id is not None and runs[0].auto_scheduled
    assert served.marker.read_text().startswith("ran")
    print(f"first scheduled run completed after {seconds:.0f} s of waiting")


@pytest.mark.slow
def test_stopping_the_served_flow_stops_its_server(served):
    import psutil

    children = [p.pid for p in psutil.Process(served.proc.pid).children(recursive=True)]
    served.proc.terminate()  # SIGTERM: the runner pauses the schedule, then the server is stopped
    served.proc.wait(timeout=60)
    time.sleep(1)
    left = [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    for pid in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    assert not left, f"processes left behind: {left}"
    assert not procs.port_in_use(served.port)
    # (The log's "Stopping the Prefect server" line is not asserted: a SIGTERM that lands while a
    # scheduled run is executing ends the runner without it, and the checks above are what matter.)


@pytest.mark.slow
def test_rlhf_schedule_serves_the_pipeline(tmp_path):
    """The real command: a deployment of flows/rlhf.py:rlhf_pipeline with the cron, then a clean stop.
    The cron (Feb 29, 03:00) keeps the real pipeline from running during the test."""
    port = procs.free_port()
    log = tmp_path / "schedule.log"
    env = procs.child_env({"PREFECT_HOME": str(tmp_path / "prefect-home")})
    for k in ("PREFECT_API_URL", "PREFECT_PROFILES_PATH", "PREFECT_PROFILE"):
        env.pop(k, None)
    proc = procs.start([sys.executable, "-m", "components.apps.cli", "schedule", "--cron", "0 3 29 2 *", "--name", "cli-test",
                        "--server-port", str(port)], env=env, log=log, cwd=tmp_path)
    served = Served(proc, f"http://127.0.0.1:{port}/api", port, tmp_path / "unused", log)
    try:
        def deployment():
            with served.client() as c:
                return c.read_deployment_by_name("rlhf/cli-test")

        dep, _ = served.wait_for("the rlhf/cli-test deployment", deployment, timeout=120)
        assert dep.entrypoint == "flows/rlhf.py:rlhf_pipeline"
        assert [s.schedule.cron for s in dep.schedules] == ["0 3 29 2 *"]
        proc.terminate()
        assert proc.wait(timeout=60) == 0
        assert not procs.port_in_use(port), "the Prefect server it started is stopped"
    finally:
        procs.stop(proc)


def test_bad_cron_is_refused_before_any_server_starts(capsys):
    from components.apps.cli import main

    assert main(["schedule", "--cron", "61 * * * *", "--server-port", str(procs.free_port())]) == 2
    assert "invalid schedule" in capsys.readouterr().err


def test_configured_but_unreachable_api_url_is_a_clear_error(monkeypatch):
    from flows.schedule import prefect_server

    port = procs.free_port()
    with pytest.raises(procs.ServiceError, match=f"no Prefect server answers at http://127.0.0.1:{port}/api"):
        with prefect_server(f"http://127.0.0.1:{port}/api"):
            pass


def test_prefect_yaml_is_a_deployment_file_prefect_accepts():
    """Validated with the models `prefect deploy` itself loads prefect.yaml with."""
    from prefect.cli.deploy._models import PrefectYamlModel, RawScheduleConfig
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.importtools import import_object

    raw = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    model = PrefectYamlModel.model_validate(raw)
    assert model.deployments, "at least one deployment"
    for step in (model.pull or []):
        (fn,) = step.keys()
        assert callable(import_object(fn)), fn
    from flows.schedule import check_cron

    for dep in model.deployments:
        assert dep.entrypoint == "flows/rlhf.py:rlhf_pipeline"
        path, name = dep.entrypoint.split(":")
        assert load_flow_from_entrypoint(f"{ROOT / path}:{name}").name == "rlhf"
        assert dep.schedules and all(isinstance(s, RawScheduleConfig) and s.cron for s in dep.schedules)
        for s in dep.schedules:
            check_cron(s.cron, s.timezone)
        assert dep.work_pool and dep.work_pool.name and dep.work_pool.job_variables["image"]
        env = dep.work_pool.job_variables["env"]
        assert env["HF_HUB_OFFLINE"] == "1" and env["MLFLOW_TRACKING_URI"].startswith("http")
    assert "docker" in model.deployments[0].work_pool.name
