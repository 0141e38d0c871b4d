"""The MLflow model registry: which stage registers which model, under which name, and how a
registered version is written and read back.

``MODELS`` is the one table of names: a stage's registered model name, the short label it has in
evaluation tables and files (``outputs/evaluate/<label>.json``), and its MLflow task. The aliases
are ``candidate`` (set by the promotion gate on every candidate) and ``champion`` (only when the
gate holds). A version is registered only after its stage wrote complete files, and it is the last
thing the stage does before dropping its checkpoints: a failure before it leaves nothing registered.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.core import faults, tracking
from components.core.config import Config, redact_uri
from components.core.errors import ModelError
from components.core.models import load_model_dir
from components.core.retention import prune_registered_model

CANDIDATE = "candidate"
CHAMPION = "champion"


@dataclass(frozen=True)
class ModelEntry:
    stage: str                # the dvc.yaml stage whose outputs/<stage> folder holds the model
    registered: str | None    # the MLflow registered model name (None: not registered)
    label: str                # short name in evaluation tables and outputs/evaluate/<label>.json
    task: str = "text-generation"


MODELS: dict[str, ModelEntry] = {m.stage: m for m in (
    ModelEntry("base_model", None, "base"),
    ModelEntry("sft", "sft", "sft"),
    ModelEntry("reward", "reward-model", "reward", task="text-classification"),
    ModelEntry("dpo", "dpo-policy", "dpo"),
    ModelEntry("ppo", "policy", "ppo"),
    ModelEntry("ppo_ptx", "policy-ptx", "ppo_ptx"),
)}


def registered_name(stage: str) -> str:
    name = MODELS[stage].registered if stage in MODELS else None
    if name is None:
        raise ValueError(f"stage {stage!r} registers no model (those that do: "
                         f"{', '.join(s for s, m in MODELS.items() if m.registered)})")
    return name


def label(stage: str) -> str:
    """The model's short name in evaluation tables (``base`` for base_model; else the stage)."""
    return MODELS[stage].label if stage in MODELS else stage


def evaluation_file(cfg: Config, stage: str) -> Path:
    """Where the evaluate stage writes the metrics of ``stage``'s model."""
    return cfg.out_dir("evaluate") / f"{label(stage)}.json"


def pip_requirements() -> list[str]:
    """What a served model needs (explicit: MLflow's inference would pin torchvision, absent here)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("torch", "transformers", "accelerate", "safetensors", "mlflow")]


def register_model(model_dir: Path, cfg: Config, stage: str, *, name: str | None = None, description: str = "",
                   tags: dict[str, str] | None = None, aliases: tuple[str, ...] = ()):
    """Log a finished model folder to the active (stage) run and register it under the stage's name
    (``name``: another one, e.g. for a model registered outside the pipeline).

    Call only after the stage has written every file of ``model_dir``: the version is created
    last, so a failure before this point leaves no registered version behind.
    """
    import mlflow
    from mlflow import MlflowClient

    entry = MODELS[stage]
    name = name or registered_name(stage)
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError(f"register_model({name!r}) needs an active MLflow run (use tracking.stage_run)")
    # In-memory form: MLflow 3.17's local-checkpoint path breaks on transformers 5 pipelines.
    kind = "causal-lm" if entry.task == "text-generation" else "sequence-classification"
    model, tokenizer = load_model_dir(model_dir, kind=kind)
    # A causal LM with a chat template is logged as an MLflow chat model (the text-generation
    # pipeline behind MLflow's "llm/v1/chat" task): served (`rlhf serve`), it takes OpenAI-style
    # {"messages": [...]} and applies the tokenizer's chat template, as the stages do. Plain
    # "text-generation" would feed a raw prompt string to the model, without the template.
    task = "llm/v1/chat" if entry.task == "text-generation" and getattr(tokenizer, "chat_template", None) else entry.task
    info = mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        name="model",
        task=task,
        pip_requirements=pip_requirements(),
    )
    faults.point("register:logged")  # a kill here: the files are logged, no version points at them
    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
    version = client.create_model_version(
        name=name, source=info.model_uri, run_id=run.info.run_id, model_id=info.model_id, description=description,
        tags={**tracking.lineage_tags(cfg, stage), "model_dir": str(model_dir), **(tags or {})},
    )  # one call: the version comes with its tags, or not at all
    faults.point("register:created")  # a kill here: a complete version, no alias moved, nothing pruned yet
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version.version)
    prune_registered_model(name, cfg)  # common.keep_versions: old, alias-free versions and their artifacts go
    return version


def registered_version(uri: str, cfg: Config):
    """The registry's ModelVersion behind ``models:/<name>@<alias>`` or ``models:/<name>/<version>``;
    a clear ModelError when it is not there."""
    mlflow = tracking.setup(cfg)
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
        raise ModelError(f"{uri}: not in the registry at {redact_uri(tracking.tracking_uri(cfg))}: {e.message}") from e
    raise ModelError(f"{uri}: give a version or an alias, e.g. models:/{spec}@champion or models:/{spec}/1")


def resolve_model(ref: str | Path, cfg: Config) -> Path:
    """A model reference -> a local Hugging Face folder.

    ``ref`` is a folder, or a registry URI ``models:/<name>@<alias>`` / ``models:/<name>/<version>``.
    A registered version is immutable, so it is read from its logged artifacts (not from the
    stage's output folder, which a later run replaces) and cached under
    ``outputs/registry/<name>/v<version>``, tokenizer files beside the weights.
    """
    text = str(ref)
    if not text.startswith("models:/"):
        path = Path(text)
        if not (path / "config.json").exists():
            raise ModelError(f"{path}: not a model folder (no config.json) and not a models:/ URI")
        return path
    mlflow = tracking.setup(cfg)
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
