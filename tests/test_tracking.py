import json
import sys
from pathlib import Path

import pytest

from components.core import tracking
from components.core.config import load_config
from components.core import registry


def test_stage_run_is_nested_tagged_and_registers_with_lineage(isolated_mlflow, tiny_model_dir, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    cfg = load_config(overrides=["common.experiment=test-tracking"])
    tracking.setup(cfg)
    with mlflow.start_run(run_name="pipeline") as parent:
        pass
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, parent.info.run_id)
    with tracking.stage_run(cfg, "base_model") as run:
        tracking.log_metrics("base_model", {"n_params": 3.0, "bad": float("nan"), "name": "x"})
        version = registry.register_model(tiny_model_dir, cfg, "base_model", name="test-model", description="tiny", aliases=("candidate",))
    client = MlflowClient()
    got = client.get_run(run.info.run_id)
    assert got.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert got.data.tags["data_version"] == tracking.data_version()
    assert got.data.tags["params_hash"] == tracking.params_hash_of(cfg, "base_model")
    assert got.data.metrics == {"base_model/n_params": 3.0}  # nan and strings are not logged
    assert got.data.params["base_model.source"] == "smollm2" and "data.n_users" not in got.data.params
    mv = client.get_model_version_by_alias("test-model", "candidate")
    assert mv.version == version.version and mv.run_id == run.info.run_id
    assert mv.tags["git_commit"] == got.data.tags["git_commit"] and mv.description == "tiny"
    loaded = mlflow.pyfunc.load_model("models:/test-model@candidate")
    assert loaded.metadata.flavors["transformers"]["task"] == "text-generation"


def test_stage_runs_log_their_data_as_datasets_and_the_experiment_opens_on_model_training(isolated_mlflow, tmp_path):
    """The runs table's Dataset column: each data file a stage depends on (dvc.yaml) is a dataset input
    named after it, with DVC's md5 as digest and its path as source; the experiment is tagged as a
    model-training one, so the MLflow UI opens on runs rather than on (empty) GenAI traces."""
    import hashlib

    from mlflow import MlflowClient

    from components.core.data import write_jsonl

    demos = tmp_path / "data" / "demonstrations.jsonl"
    write_jsonl(demos, [{"id": "d1", "prompt": "Hi?", "response": "Hello."}])
    cfg = load_config(overrides=["common.experiment=test-datasets", f"common.data_dir={tmp_path / 'data'}"])
    with tracking.stage_run(cfg, "sft") as run:
        pass
    client = MlflowClient()
    (inp,) = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert inp.dataset.name == "demonstrations" and inp.dataset.digest == hashlib.md5(demos.read_bytes()).hexdigest()
    assert str(demos) in inp.dataset.source and [t.value for t in inp.tags if t.key == "mlflow.data.context"] == ["training"]
    exp = client.get_experiment_by_name("test-datasets")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_failed_stage_run_is_marked_failed(isolated_mlflow):
    from mlflow import MlflowClient

    cfg = load_config(overrides=["common.experiment=test-failure"])
    with pytest.raises(RuntimeError):
        with tracking.stage_run(cfg, "validate") as run:
            raise RuntimeError("bad data")
    assert MlflowClient().get_run(run.info.run_id).info.status == "FAILED"


def test_write_metrics_is_json(tmp_path):
    tracking.write_metrics(tmp_path / "m" / "x.json", {"b": 1, "a": 0.5})
    assert json.loads((tmp_path / "m" / "x.json").read_text()) == {"a": 0.5, "b": 1}


@pytest.mark.slow
def test_registration_through_a_tracking_server_with_database_and_artifact_store(tiny_model_dir, tmp_path, monkeypatch):
    """Running at scale: `mlflow server` with a database backend and an artifact store behind it
    (proxied artifacts); a stage logs and registers through it, and the version loads back."""
    import mlflow
    from mlflow import MlflowClient

    from components.core import procs

    port = procs.free_port()
    log = tmp_path / "server.log"
    server = procs.start([str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                          "--port", str(port), "--workers", "1",
                          "--backend-store-uri", f"sqlite:///{tmp_path / 'db.sqlite'}",
                          "--artifacts-destination", str(tmp_path / "artifact-store")],
                         env=procs.child_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}), log=log)
    try:
        procs.wait_healthy(f"http://127.0.0.1:{port}/health", server, timeout=120, what="mlflow server", log=log)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        monkeypatch.delenv(tracking.PARENT_RUN_ENV, raising=False)
        cfg = load_config(overrides=["common.experiment=test-server"])
        with tracking.stage_run(cfg, "sft"):
            version = registry.register_model(tiny_model_dir, cfg, "sft", name="sft", aliases=("candidate",))
        mv = MlflowClient().get_model_version_by_alias("sft", "candidate")
        assert mv.version == version.version and mv.tags["params_hash"] == tracking.params_hash_of(cfg, "sft")
        assert list((tmp_path / "artifact-store").rglob("model.safetensors"))  # the weights went to the store
        local = mlflow.artifacts.download_artifacts("models:/sft@candidate", dst_path=str(tmp_path / "dl"))
        assert (Path(local) / "model" / "model.safetensors").exists()
    finally:
        procs.stop(server)


def test_process_tags_tell_a_live_process_from_a_dead_or_reused_pid():
    import os

    tags = tracking.process_tags()
    assert tags[tracking.PID_TAG] == str(os.getpid())
    assert tracking._gone(tags) is None  # this process: alive
    assert tracking._gone({**tags, tracking.STARTED_TAG: "ticks-12"}) == \
        f"process {os.getpid()} no longer exists (the pid now belongs to another process)"
    assert tracking._gone({**tags, tracking.BOOT_TAG: "1"}) == "the machine rebooted since"
    assert tracking._gone({**tags, tracking.HOST_TAG: "another-machine"}) is None  # not ours to judge
    assert tracking._gone({}) is None  # a run without process tags (opened by other code)
    assert tracking._gone({k: v for k, v in tags.items() if k != tracking.BOOT_TAG}) is None  # an older version's
    free = max(int(p) for p in os.listdir("/proc") if p.isdigit()) + 10_000
    assert tracking._gone({**tags, tracking.PID_TAG: str(free)}) == f"process {free} no longer exists"


@pytest.mark.skipif(not Path("/proc/sys/kernel/random/boot_id").exists(), reason="Linux's boot id and procfs")
def test_a_live_process_stays_alive_when_the_wall_clock_jumps(monkeypatch):
    """The boot time and a process's creation time are the wall clock minus an uptime: both move when the clock
    is set (a VM resumed from a snapshot, NTP). A live run must not be taken for a rebooted or a dead one."""
    import psutil

    tags = tracking.process_tags()
    real_boot, real_create = psutil.boot_time(), psutil.Process.create_time
    monkeypatch.setattr(psutil, "boot_time", lambda: real_boot + 3600)
    monkeypatch.setattr(psutil.Process, "create_time", lambda self: real_create(self) + 3600)
    assert tracking._gone(tags) is None


KILLED_STAGE = """
import os, signal, sys
import mlflow
from components.core import tracking
from components.core.config import load_config
cfg = load_config(overrides=["common.experiment=test-abandoned"])
with tracking.stage_run(cfg, sys.argv[1]) as run:
    with mlflow.start_run(run_name="eval-x", nested=True) as kid:  # nested, same process (as evaluate's)
        print(run.info.run_id, kid.info.run_id, flush=True)
        if sys.argv[2] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        sys.stdin.read()  # the live one: runs until its stdin closes
"""


@pytest.mark.slow
def test_a_run_left_running_by_a_killed_process_is_marked_failed_with_the_reason(isolated_mlflow, tmp_path):
    import subprocess

    from mlflow import MlflowClient

    from components.core.config import ROOT

    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    live = subprocess.Popen([sys.executable, "-c", KILLED_STAGE, "reward", "live"], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        live_run, live_kid = live.stdout.readline().split()
        killed = subprocess.run([sys.executable, "-c", KILLED_STAGE, "sft", "kill"], env=env, capture_output=True,
                                text=True, timeout=300)
        assert killed.returncode == -9, killed.stderr[-2000:]
        dead_run, dead_kid = killed.stdout.split()
        client = MlflowClient(isolated_mlflow)
        assert client.get_run(dead_run).info.status == "RUNNING"  # what SIGKILL leaves
        cfg = load_config(overrides=["common.experiment=test-abandoned"])
        with tracking.stage_run(cfg, "sft") as rerun:  # the next run of any stage on this host
            pass
        got = client.get_run(dead_run)
        assert got.info.status == "FAILED" and got.info.end_time
        reason = got.data.tags[tracking.ABANDONED_TAG]
        assert reason.startswith(f"process {got.data.tags[tracking.PID_TAG]} no longer exists: it ended without closing "
                                 "this run (killed: SIGKILL, out of memory or a reboot)")
        kid = client.get_run(dead_kid)
        assert kid.info.status == "FAILED" and kid.data.tags[tracking.ABANDONED_TAG].startswith(f"its parent run {dead_run}")
        assert client.get_run(live_run).info.status == client.get_run(live_kid).info.status == "RUNNING"  # alive: kept
        assert client.get_run(rerun.info.run_id).info.status == "FINISHED"
    finally:
        live.stdin.close()
        live.wait(timeout=120)
    assert client.get_run(live_run).info.status == "FINISHED"
