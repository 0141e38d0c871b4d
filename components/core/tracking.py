"""MLflow conventions in one place (docs/architecture.md, "MLflow").

- One experiment (``common.experiment``); the flow opens a parent run and hands its id to the
  stage processes in ``RLHF_PARENT_RUN_ID``; each stage is a nested run named after it.
- Metrics are named ``<stage>/<name>``; params are the dotted keys of params.yaml.
- Every run is tagged with the git commit, the data version (the md5 in data.dvc) and a hash
  of the params the stage reads (those its dvc.yaml entry lists, also the params it logs).
- A model version is registered only after its stage wrote complete files.
- A run's process is recorded in its tags (host, boot, pid, start time): a process killed with SIGKILL
  (out of memory, a dying machine) cannot end its run, so the next run on that host marks a RUNNING run
  whose process is gone FAILED, with the reason (``mark_abandoned_runs``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from components.core import pipeline
from components.core.config import ROOT, Config, params_hash
from components.core.env import set_offline_env

PARENT_RUN_ENV = "RLHF_PARENT_RUN_ID"
# Tags naming the process that owns a run (``process_tags``) and, on a run it left RUNNING, why it was closed.
HOST_TAG, BOOT_TAG, PID_TAG, STARTED_TAG = "rlhf_host", "rlhf_boot_id", "rlhf_pid", "rlhf_pid_start"
ABANDONED_TAG = "rlhf_failure"
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# The dataset context of each stage's data inputs (the runs table's Dataset column).
DATA_CONTEXT = {"validate": "validation", "evaluate": "evaluation", "promote": "evaluation"}


def tracking_uri(cfg: Config) -> str:
    """``common.tracking_uri``, else $MLFLOW_TRACKING_URI, else the project's sqlite store."""
    return cfg.common.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlflow.db'}"


def git_commit() -> str:
    """HEAD's sha, suffixed ``-dirty`` when tracked files differ; 'unknown' outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def data_version(root: Path = ROOT) -> str:
    """The md5 of ``data/`` recorded in data.dvc (the data version every run is tagged with)."""
    dvc_file = root / "data.dvc"
    if not dvc_file.exists():
        return "untracked"
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    return str(outs[0].get("md5", "unknown"))


def declared_params(cfg: Config, stage: str) -> dict[str, Any]:
    """The dotted params a stage reads, with their values: what its dvc.yaml entry lists (a whole
    section, or single keys); every param for a name that is not a stage (the pipeline's parent run)."""
    flat = cfg.flat()
    if stage not in pipeline.stages():
        return flat
    declared = pipeline.stage_params(stage)
    return {k: v for k, v in flat.items() if k in declared or k.split(".", 1)[0] in declared}


def params_hash_of(cfg: Config, stage: str) -> str:
    """A hash of the params a stage reads (its lineage tag, and the key its checkpoints are resumed by)."""
    return params_hash(declared_params(cfg, stage))


def lineage_tags(cfg: Config, stage: str) -> dict[str, str]:
    return {
        "stage": stage,
        "git_commit": git_commit(),
        "data_version": data_version(),
        "params_hash": params_hash_of(cfg, stage),
        "profile": cfg.common.profile,
    }


def _boot_id() -> str:
    """This boot of the machine: the kernel's boot id on Linux (unlike the boot time, which is the wall clock
    minus the uptime, it does not move when the clock is set, e.g. when a VM is resumed from a snapshot);
    elsewhere the boot time to the second."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        import psutil

        return f"boot-{psutil.boot_time():.0f}"


def _process_start(pid: int) -> str:
    """When process ``pid`` started, as a string that is the same for as long as that process lives: on Linux its
    start in clock ticks since boot (/proc/<pid>/stat field 22; the wall clock plays no part), elsewhere its
    creation time. Raises ``psutil.NoSuchProcess`` when there is no such process."""
    import psutil

    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        raise psutil.NoSuchProcess(pid) from None
    except OSError:  # no procfs: not Linux
        return f"{psutil.Process(pid).create_time():.2f}"
    return "ticks-" + stat[stat.rindex(")") + 2:].split()[19]  # fields after the command name start at field 3


def _same_start(a: str, b: str) -> bool:
    if a.startswith("ticks-") or b.startswith("ticks-"):
        return a == b
    try:
        return abs(float(a) - float(b)) <= 1
    except ValueError:
        return False


def process_tags() -> dict[str, str]:
    """This process, as the tags of a run it opens: host name, boot id, pid and the pid's start (a pid is reused
    after its process ended; the pair is not)."""
    import socket

    return {HOST_TAG: socket.gethostname(), BOOT_TAG: _boot_id(), PID_TAG: str(os.getpid()),
            STARTED_TAG: _process_start(os.getpid())}


def _gone(tags: dict[str, str]) -> str | None:
    """Why the process a run's tags name has certainly ended (None: it may still run, or it is not known here)."""
    import socket

    import psutil

    if (tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit()
            or BOOT_TAG not in tags or STARTED_TAG not in tags):
        return None  # another machine's process (or no process tags, or an older project's): not ours to judge
    if tags[BOOT_TAG] != _boot_id():
        return "the machine rebooted since"
    pid = int(tags[PID_TAG])
    try:
        started = _process_start(pid)
    except psutil.NoSuchProcess:
        return f"process {pid} no longer exists"
    if not _same_start(started, tags[STARTED_TAG]):
        return f"process {pid} no longer exists (the pid now belongs to another process)"
    return None


def mark_abandoned_runs(experiment_id: str) -> list[str]:
    """Mark FAILED every RUNNING run of the experiment whose process (``process_tags``) ended without
    closing it — killed by SIGKILL, out of memory or a reboot — with the reason in its ``rlhf_failure``
    tag; runs of processes still alive, or on other hosts, are left alone. Returns the run ids marked."""
    import socket
    from datetime import datetime, timezone

    from mlflow import MlflowClient

    client = MlflowClient()
    host = socket.gethostname().replace("'", "")
    marked = []
    for run in client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and tags.{HOST_TAG} = '{host}'",
                                  max_results=1000):
        why = _gone(run.data.tags)
        if why is None or run.data.tags.get(PID_TAG) == str(os.getpid()):
            continue
        when = datetime.now(timezone.utc).isoformat(timespec="seconds")
        reason = (f"{why}: it ended without closing this run (killed: SIGKILL, out of memory or a reboot); "
                  f"marked FAILED at {when} by process {os.getpid()}")
        marked += _mark_failed(client, experiment_id, run, reason)
    return marked


def _mark_failed(client, experiment_id: str, run, reason: str) -> list[str]:
    """Mark ``run`` FAILED with ``reason``, and its RUNNING nested runs that were opened by the same process
    (no process tags of their own: e.g. the evaluate stage's eval-<model> runs); returns their ids."""
    client.set_tag(run.info.run_id, ABANDONED_TAG, reason)
    client.set_terminated(run.info.run_id, status="FAILED")
    print(f"[tracking] run {run.info.run_id} ({run.data.tags.get('stage', run.info.run_name)}) was left RUNNING: "
          f"{reason}", flush=True)
    marked = [run.info.run_id]
    kids = client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and "
                                               f"tags.mlflow.parentRunId = '{run.info.run_id}'", max_results=1000)
    for kid in kids:
        if PID_TAG not in kid.data.tags:
            marked += _mark_failed(client, experiment_id, kid, f"its parent run {run.info.run_id} was abandoned: {reason}")
    return marked


def setup(cfg: Config):
    """Point MLflow at the project's store and experiment (runs abandoned by a killed process there are
    marked FAILED first: ``mark_abandoned_runs``); returns the mlflow module."""
    set_offline_env()
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    if mlflow.get_experiment_by_name(cfg.common.experiment) is None:
        # Artifacts next to the store (not in whatever the working directory is).
        location = None
        if tracking_uri(cfg).startswith("sqlite:///"):
            location = (Path(tracking_uri(cfg)[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
        try:
            mlflow.create_experiment(cfg.common.experiment, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            if mlflow.get_experiment_by_name(cfg.common.experiment) is None:  # not a create race
                raise
    experiment = mlflow.set_experiment(cfg.common.experiment)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        # the UI opens the experiment on its model-training view (runs, metrics), not on GenAI traces
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mark_abandoned_runs(experiment.experiment_id)
    return mlflow


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str) -> Iterator[Any]:
    """A (nested, when the flow gave a parent) MLflow run for one stage, params and tags logged.

    On an exception the run ends FAILED and the exception propagates.
    """
    mlflow = setup(cfg)
    parent = os.environ.get(PARENT_RUN_ENV)
    tags = lineage_tags(cfg, stage) | process_tags()
    if parent:
        tags["mlflow.parentRunId"] = parent
    with mlflow.start_run(run_name=stage, tags=tags) as run:
        mlflow.log_params(declared_params(cfg, stage))
        mlflow.log_dict(cfg.to_dict(), "config/resolved_params.json")
        log_data_inputs(cfg, stage)
        yield run


def file_md5(path: Path) -> str:
    """The md5 DVC records for a file (of its bytes)."""
    import hashlib

    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_inputs(cfg: Config, stage: str) -> list[tuple[str, Path, str]]:
    """(name, path, DVC md5) of each data file a stage depends on (its dvc.yaml ``data/...`` deps, in
    ``common.data_dir``); the folder itself is data.dvc's md5, the data version."""
    out = []
    if stage not in pipeline.stages():
        return out
    for dep in pipeline.stage_deps(stage):
        first, _, rest = dep.partition("/")
        if first != "data":
            continue
        path = cfg.data_dir / rest if rest else cfg.data_dir
        if rest and path.is_file():
            out.append((path.stem, path, file_md5(path)))
        elif not rest and path.is_dir():
            out.append(("data", path, data_version()))
    return out


def log_data_inputs(cfg: Config, stage: str) -> None:
    """Each data input of the stage as an MLflow dataset (name, the DVC md5 as digest, the path as
    source), so the runs table's Dataset column shows the data version a run read."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    for name, path, md5 in data_inputs(cfg, stage):
        with warnings.catch_warnings():  # a local path matches two registered source types, both the same class
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
            source = resolve_dataset_source(str(path))
        ds = MetaDataset(source=source, name=name, digest=md5)
        mlflow.log_input(ds, context=DATA_CONTEXT.get(stage, "training"))


def log_metrics(stage: str, metrics: dict[str, float], step: int | None = None) -> None:
    """Log ``{name: value}`` as ``<stage>/<name>`` (only finite numbers; others are skipped by name)."""
    import math

    import mlflow

    clean = {f"{stage}/{k}": float(v) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    if clean:
        mlflow.log_metrics(clean, step=step)


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """DVC metrics file (JSON), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
