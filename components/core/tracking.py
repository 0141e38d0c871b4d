"""MLflow conventions in one place (docs/architecture.md, "MLflow").

- One experiment (``common.experiment``); the flow opens a parent run and hands its id to the
  stage processes in ``RLHF_PARENT_RUN_ID``; each stage is a nested run named after it.
- Metrics are named ``<stage>/<name>``; params are the dotted keys of params.yaml.
- Every run is tagged with the git commit, the data version (the md5 in data.dvc) and a hash
  of the params the stage reads (those its dvc.yaml entry lists, also the params it logs).
- A model version is registered only after its stage wrote complete files.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from components.core import pipeline
from components.core.config import ROOT, Config, params_hash
from components.core.env import set_offline_env

PARENT_RUN_ENV = "RLHF_PARENT_RUN_ID"
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


def setup(cfg: Config):
    """Point MLflow at the project's store and experiment; returns the mlflow module."""
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
    return mlflow


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str) -> Iterator[Any]:
    """A (nested, when the flow gave a parent) MLflow run for one stage, params and tags logged.

    On an exception the run ends FAILED and the exception propagates.
    """
    mlflow = setup(cfg)
    parent = os.environ.get(PARENT_RUN_ENV)
    tags = lineage_tags(cfg, stage)
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
        ds = MetaDataset(source=resolve_dataset_source(str(path)), name=name, digest=md5)
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
