"""A shared tracking server, for real: Debian's PostgreSQL, `mlflow server` on it with a proxied artifact store,
and two project copies running the test-profile pipeline (`rlhf run`) against it at the same time.

Every model version is registered once, the version numbers do not clash, the aliases point at versions that
exist and agree with their promotion tags, and each copy's runs and versions carry that copy's lineage (git
commit, data version, params hash). `make test` installs PostgreSQL with apt-get when it runs as root and it
is missing (target postgres-deps); otherwise the test skips, saying why.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from components.core import procs
from components.core.config import set_params
from components.core.procs import project_copy

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
MODELS = ("sft", "reward-model", "dpo-policy", "policy", "policy-ptx")


def pg_bin() -> Path:
    """The folder of Debian's PostgreSQL server programs, or skip the test with the reason."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): `make test` installs it "
                    "with apt-get when it runs as root, or `apt-get install postgresql`")
    try:
        import psycopg2  # noqa: F401  (MLflow's PostgreSQL driver)
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install -e '.[test]' installs psycopg2-binary)")
    return Path(found[-1]).parent


def as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the `postgres` user when we are root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL cluster on 127.0.0.1 (trust authentication, a free port); its URI."""
    bindir = pg_bin()
    # not under pytest's basetemp, which only root may enter
    work = Path(tempfile.mkdtemp(prefix="rlhf-pg-"))
    data, port = work / "data", procs.free_port()
    if os.geteuid() == 0:
        shutil.chown(work, "postgres", "postgres")
    log = work / "postgres.log"

    def pg(*args: str) -> subprocess.CompletedProcess:
        p = subprocess.run(as_postgres([str(bindir / args[0]), *args[1:]]), capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, f"{args}: {p.stdout[-2000:]}{p.stderr[-2000:]}"
        return p

    try:
        pg("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        pg("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
           f"-p {port} -k {work} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow")
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
                       capture_output=True, timeout=120)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = procs.free_port()
    log = tmp / "server.log"
    server = procs.start([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                          "--backend-store-uri", postgres, "--artifacts-destination", str(tmp / "artifact-store")],
                         env=procs.child_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}), log=log)
    try:
        procs.wait_healthy(f"http://127.0.0.1:{port}/health", server, timeout=180, what="mlflow server", log=log)
        yield f"http://127.0.0.1:{port}", tmp / "artifact-store"
    finally:
        procs.stop(server)


def env_for(proj: Path, uri: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(proj),
           "MLFLOW_TRACKING_URI": uri, "PREFECT_HOME": str(proj / ".prefect-home"), "PYTHONUNBUFFERED": "1"}
    for k in ("RLHF_PARENT_RUN_ID", "PREFECT_API_URL"):
        env.pop(k, None)
    return env


def sh(cmd: list[str], proj: Path, uri: str, timeout: int = 600) -> str:
    p = subprocess.run(cmd, cwd=proj, env=env_for(proj, uri), text=True, capture_output=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def prepare(proj: Path, seed: int, uri: str) -> dict:
    """The copy with the test profile and its own seed (so its data, data version and params hash are its
    own), committed, so its runs' git_commit is a clean sha; its expected lineage."""
    set_params(proj / "params.yaml", ["common.profile=test", f"common.seed={seed}"])
    sh([str(BIN / "rlhf"), "data", "synth"], proj, uri)
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", f"seed {seed}"]):
        subprocess.run(cmd, cwd=proj, check=True, capture_output=True)
    code = ("import json\n"
            "from components.core.config import load_config\n"
            "from components.core import tracking\n"
            "cfg = load_config()\n"
            "print(json.dumps({'git_commit': tracking.git_commit(), 'data_version': tracking.data_version(),\n"
            "                  'params_hash': {s: tracking.params_hash_of(cfg, s) for s in\n"
            "                                  ('sft', 'reward', 'dpo', 'ppo', 'ppo_ptx')}}))\n")
    return json.loads(sh([str(BIN / "python"), "-c", code], proj, uri).strip().splitlines()[-1])


def test_two_pipelines_at_once_on_one_postgresql_backed_server(tracking_server, tmp_path_factory):
    uri, artifacts = tracking_server
    a = project_copy(tmp_path_factory.mktemp("copy-a"))
    b = project_copy(tmp_path_factory.mktemp("copy-b"))
    expected = {"a": prepare(a, 0, uri), "b": prepare(b, 1, uri)}
    assert expected["a"]["git_commit"] != expected["b"]["git_commit"] and "-dirty" not in expected["a"]["git_commit"]
    assert expected["a"]["data_version"] != expected["b"]["data_version"]

    logs = {name: open(proj / "run.log", "w") for name, proj in (("a", a), ("b", b))}  # noqa: SIM115
    try:
        runs = {name: subprocess.Popen([str(BIN / "rlhf"), "run"], cwd=proj, env=env_for(proj, uri), text=True,
                                       stdout=logs[name], stderr=subprocess.STDOUT)
                for name, proj in (("a", a), ("b", b))}
        codes = {name: p.wait(timeout=3000) for name, p in runs.items()}
    finally:
        for f in logs.values():
            f.close()
        for p in runs.values():
            if p.poll() is None:
                p.kill()
    for name, proj in (("a", a), ("b", b)):
        assert codes[name] == 0, f"copy {name}:\n{(proj / 'run.log').read_text()[-5000:]}"

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("rlhf")
    pipelines = client.search_runs([exp.experiment_id], "tags.stage = 'pipeline'")
    assert sorted(r.info.status for r in pipelines) == ["FINISHED", "FINISHED"]
    owner = {}  # pipeline run id -> copy
    for r in pipelines:
        copy = next(n for n, e in expected.items() if r.data.tags["git_commit"] == e["git_commit"])
        assert r.data.tags["data_version"] == expected[copy]["data_version"]
        owner[r.info.run_id] = copy
    assert sorted(owner.values()) == ["a", "b"]

    stage_of = {"sft": "sft", "reward-model": "reward", "dpo-policy": "dpo", "policy": "ppo", "policy-ptx": "ppo_ptx"}
    version_of: dict[str, dict[str, str]] = {}  # registered model -> copy -> its version
    for name in MODELS:
        versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
        assert [v.version for v in versions] == ["1", "2"], f"{name}: versions {[v.version for v in versions]}"
        copies = []
        for v in versions:
            run = client.get_run(v.run_id)
            copy = owner[run.data.tags["mlflow.parentRunId"]]  # the stage run is nested under its copy's pipeline
            copies.append(copy)
            version_of.setdefault(name, {})[copy] = v.version
            for tags in (v.tags, run.data.tags):
                assert tags["git_commit"] == expected[copy]["git_commit"], (name, v.version)
                assert tags["data_version"] == expected[copy]["data_version"], (name, v.version)
                assert tags["params_hash"] == expected[copy]["params_hash"][stage_of[name]], (name, v.version)
                assert tags["stage"] == stage_of[name]
            assert v.status == "READY" and v.source.startswith("models:/")
        assert sorted(copies) == ["a", "b"], f"{name}: each copy registers it once ({copies})"

    # aliases: set by each copy's promotion gate on its own candidate; they point at versions that exist and
    # agree with those versions' verdicts
    policy = client.get_registered_model("policy")
    versions = {v.version: v for v in client.search_model_versions("name='policy'")}
    assert set(policy.aliases) >= {"candidate"} and set(policy.aliases.values()) <= set(versions)
    assert all("promotion" in v.tags for v in versions.values())
    if "champion" in policy.aliases:
        assert versions[policy.aliases["champion"]].tags["promotion"] == "champion"
    assert list(artifacts.rglob("model.safetensors")), "the weights went to the server's artifact store"
    for copy, proj in (("a", a), ("b", b)):  # each copy's gate judged its own version
        candidate = json.loads((proj / "metrics" / "promote.json").read_text())["candidate"]
        assert candidate == f"policy/{version_of['policy'][copy]}"
