"""MLflow conventions in one place (see DESIGN.md).

- One experiment (``common.experiment``); the flow opens a parent run and hands its id to the
  stage processes in ``RLHF_PARENT_RUN_ID``; each stage is a nested run named after it.
- Metrics are named ``<stage>/<name>``; params are the dotted keys of params.yaml.
- Every run is tagged with the git commit, the data version (the md5 in data.dvc) and a hash
  of the stage's params section.
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

from components.config import ROOT, Config, redact_uri

PARENT_RUN_ENV = "RLHF_PARENT_RUN_ID"

# Offline, quiet defaults the project sets for itself (the user's values win).
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


# glibc malloc: keep freed memory instead of returning it to the OS after every large tensor.
# Training steps spent ~40% of their time in page faults; with these a SmolLM2 train step went
# from 3.66 s to 2.78 s on 2 cores (measured 2026-11-22). glibc reads them at process start only.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296",
              "MALLOC_TOP_PAD_": "1073741824"}


def reexec_with_malloc_env() -> None:
    """Restart this very command once with MALLOC_ENV set (Linux/glibc only; a no-op when set)."""
    import platform
    import sys

    if (sys.platform != "linux" or platform.libc_ver()[0] != "glibc" or os.environ.get("RLHF_NO_MALLOC_TUNING")
            or all(k in os.environ for k in MALLOC_ENV)):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**os.environ, **MALLOC_ENV})


def set_offline_env() -> None:
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


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


# Stages that read another stage's params section (a variant of it).
SECTION_OF = {"ppo_ptx": "ppo"}
# Further sections a stage reads, logged with its own (the ppo stage: rl.algorithm picks PPO, RLOO or GRPO).
ALSO_READS = {"ppo": ("rl",)}


def section_of(cfg: Config, stage: str) -> str:
    """The params section a stage reads: its own, its variant's, or ``common`` (validate's data gate)."""
    name = SECTION_OF.get(stage, stage)
    return name if name in cfg.to_dict() else "common"


def lineage_tags(cfg: Config, stage: str) -> dict[str, str]:
    return {
        "stage": stage,
        "git_commit": git_commit(),
        "data_version": data_version(),
        "params_hash": cfg.section_hash(section_of(cfg, stage)),
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
    mlflow.set_experiment(cfg.common.experiment)
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
        sections = {"common", section_of(cfg, stage), *ALSO_READS.get(stage, ())}
        mlflow.log_params({k: v for k, v in cfg.flat().items() if k.split(".", 1)[0] in sections})
        mlflow.log_dict(cfg.to_dict(), "config/resolved_params.json")
        yield run


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


def register_model(
    model_dir: Path,
    name: str,
    cfg: Config,
    stage: str,
    *,
    task: str = "text-generation",
    description: str = "",
    tags: dict[str, str] | None = None,
    aliases: tuple[str, ...] = (),
):
    """Log a finished Hugging Face model folder to the active (stage) run and register it as ``name``.

    Call only after the stage has written every file of ``model_dir``: the version is created
    last, so a failure before this point leaves no registered version behind.
    """
    import mlflow
    from mlflow import MlflowClient

    from components.base_model import load_model_dir

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError(f"register_model({name!r}) needs an active MLflow run (use tracking.stage_run)")
    # In-memory form: MLflow 3.17's local-checkpoint path breaks on transformers 5 pipelines.
    model, tokenizer = load_model_dir(model_dir, kind="causal-lm" if task == "text-generation" else "sequence-classification")
    # A causal LM with a chat template is logged as an MLflow chat model (the text-generation
    # pipeline behind MLflow's "llm/v1/chat" task): served (`rlhf serve`), it takes OpenAI-style
    # {"messages": [...]} and applies the tokenizer's chat template, as the stages do. Plain
    # "text-generation" would feed a raw prompt string to the model, without the template.
    mlflow_task = "llm/v1/chat" if task == "text-generation" and getattr(tokenizer, "chat_template", None) else task
    info = mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        name="model",
        task=mlflow_task,
        pip_requirements=pip_requirements(),
    )
    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
    version = client.create_model_version(
        name=name, source=info.model_uri, run_id=run.info.run_id, model_id=info.model_id, description=description,
        tags={**lineage_tags(cfg, stage), "model_dir": str(model_dir), **(tags or {})},
    )
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version.version)
    from components.retention import prune_registered_model

    prune_registered_model(name, cfg)  # common.keep_versions: old, alias-free versions and their artifacts go
    return version


def pip_requirements() -> list[str]:
    """What a served model needs (explicit: MLflow's inference would pin torchvision, absent here)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("torch", "transformers", "accelerate", "safetensors", "mlflow")]


EXIT_BAD_PARAMS = 2  # a stage's exit code for invalid params
EXIT_BAD_INPUT = 3  # ... for bad data or model files, or a non-finite loss/reward/gradient


def stage_main(stage: str, run_fn, argv: list[str] | None = None) -> int:
    """The ``python -m components.<stage>`` entry point DVC calls: params.yaml (+ ``-S`` args) ->
    ``run_fn(cfg)`` inside the stage's MLflow run; its numeric results are logged as metrics and
    written to ``metrics/<stage>.json`` for DVC. Bad input or a non-finite value exits 3 (bad
    params: 2) with one ``error: [stage] ...`` line naming the file, record or key; the flow does
    not retry those (the same input fails the same way). A bug exits 1 with its traceback."""
    import sys

    from components import distributed
    from components.config import ConfigError, load_config

    if argv is None:
        distributed.relaunch_under_accelerate(stage)  # only with $RLHF_ACCELERATE_CONFIG set
        reexec_with_malloc_env()
    if distributed.world_size() > 1 and stage not in distributed.STAGES:
        raise SystemExit(f"error: [{stage}] trains in one process: run it with python -m, not accelerate launch "
                         f"(data-parallel stages: {', '.join(distributed.STAGES)})")
    try:
        cfg = load_config(overrides=argv if argv is not None else sys.argv[1:])
        if not distributed.is_main():  # another rank of a launch: trains its share; rank 0 logs and writes
            run_fn(cfg)
            distributed.wait_for_main()
            return 0
        with stage_run(cfg, stage):  # an exception ends the MLflow run FAILED, then comes here
            result = run_fn(cfg)
            log_metrics(stage, result)
    except input_errors() as e:
        # Bad input (params, data, model files) or a non-finite loss: one clear line, no traceback,
        # non-zero exit; nothing was registered and no metrics file is written.
        msg = str(e)
        print(f"error: {msg if msg.startswith(f'[{stage}]') else f'[{stage}] {msg}'}", file=sys.stderr, flush=True)
        return EXIT_BAD_PARAMS if isinstance(e, ConfigError) else EXIT_BAD_INPUT
    write_metrics(cfg.metrics_file(stage),
                  {k: v for k, v in result.items() if isinstance(v, (int, float, bool, str))})
    distributed.wait_for_main()  # the other ranks of a launch exit once the outputs are complete
    return 0


def input_errors() -> tuple[type[BaseException], ...]:
    """The errors a stage raises for bad input or a numerical failure; their messages name the key,
    file, record or step. Anything else is a bug and keeps its traceback."""
    from components.base_model import ModelError
    from components.config import ConfigError
    from components.data import DataError
    from components.toxicity import ToxicityScorerError
    from components.validate import ValidationFailed

    return (ConfigError, DataError, ModelError, ValidationFailed, ToxicityScorerError, FloatingPointError)


def registered_version(uri: str, cfg: Config):
    """The registry's ModelVersion behind ``models:/<name>@<alias>`` or ``models:/<name>/<version>``;
    a clear ModelError when it is not there."""
    from components.base_model import ModelError

    mlflow = setup(cfg)
    from mlflow import MlflowClient

    spec = uri[len("models:/"):]
    client = MlflowClient()
    try:
        if "@" in spec:
            name, alias = spec.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        if "/" in spec:
            name, number = spec.split("/", 1)
            return client.get_model_version(name, number)
    except mlflow.exceptions.MlflowException as e:
        raise ModelError(f"{uri}: not in the registry at {redact_uri(tracking_uri(cfg))}: {e.message}") from e
    raise ModelError(f"{uri}: give a version or an alias, e.g. models:/{spec}@champion or models:/{spec}/1")


def resolve_model(ref: str | Path, cfg: Config) -> Path:
    """A model reference -> a local Hugging Face folder.

    ``ref`` is a folder, or a registry URI ``models:/<name>@<alias>`` / ``models:/<name>/<version>``.
    A registered version is immutable, so it is read from its logged artifacts (not from the
    stage's output folder, which a later run replaces) and cached under
    ``outputs/registry/<name>/v<version>``, tokenizer files beside the weights.
    """
    import shutil
    import tempfile

    from components.base_model import ModelError

    text = str(ref)
    if not text.startswith("models:/"):
        path = Path(text)
        if not (path / "config.json").exists():
            raise ModelError(f"{path}: not a model folder (no config.json) and not a models:/ URI")
        return path
    mlflow = setup(cfg)
    version = registered_version(text, cfg)
    cache = cfg.out_dir("registry") / version.name / f"v{version.version}"
    if (cache / "config.json").exists():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".v{version.version}."))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(tmp / "dl")))
        for sub in ("model", "components/tokenizer"):
            for f in (local / sub).glob("*"):
                if f.is_file():
                    shutil.move(str(f), tmp / f.name)
        shutil.rmtree(tmp / "dl")
        if not (tmp / "config.json").exists():
            raise ModelError(f"{text}: version {version.version} holds no Hugging Face model (source {version.source})")
        tmp.rename(cache)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return cache
