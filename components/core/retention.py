"""Retention of registered model versions (``common.keep_versions``).

Every registration logs a full copy of the model folder to MLflow's artifact store, so a pipeline
that runs on a schedule would fill the disk. After each registration the registry keeps, per
registered model, the newest ``keep_versions`` versions plus every version that holds an alias
(``champion``, ``candidate`` or any other); older versions are deleted from the registry, their
logged model's artifacts are deleted, and so is their local copy under ``outputs/registry``.
The runs that produced them stay (metrics, params, lineage tags): only the weights go.

Training checkpoints are bounded separately: ``save_total_limit`` per stage, and every stage
deletes its checkpoints once its model is registered.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from components.core.config import Config


def versions_to_prune(versions: Iterable[tuple[int, Iterable[str]]], keep: int) -> list[int]:
    """The rule, pure: ``(version, aliases)`` pairs -> the versions to delete, oldest first.

    Kept: the ``keep`` highest version numbers, and every version with at least one alias.
    ``keep <= 0`` keeps everything.
    """
    versions = [(int(v), set(aliases)) for v, aliases in versions]
    if keep <= 0:
        return []
    newest = set(sorted(v for v, _ in versions)[-keep:])
    return sorted(v for v, aliases in versions if v not in newest and not aliases)


def prune_registered_model(name: str, cfg: Config) -> list[int]:
    """Apply ``versions_to_prune`` to registered model ``name``; returns the deleted version numbers.

    The registry entry goes first (so nothing resolves a version whose files are being deleted),
    then the logged model's artifacts, unless a kept version points at the same logged model.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.utils.file_utils import local_file_uri_to_path

    keep = cfg.common.keep_versions
    if keep <= 0:
        return []
    client = MlflowClient()
    aliases: dict[int, set[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(int(version), set()).add(alias)
    found = {int(mv.version): mv for mv in client.search_model_versions(f"name='{name}'")}
    doomed = versions_to_prune(((v, aliases.get(v, set()) | set(mv.aliases or ())) for v, mv in found.items()), keep)
    kept_sources = {mv.source for v, mv in found.items() if v not in doomed}
    for v in doomed:
        mv = found[v]
        client.delete_model_version(name, str(v))
        if mv.source.startswith("models:/") and mv.source not in kept_sources:
            model_id = mv.source[len("models:/"):]
            try:
                location = client.get_logged_model(model_id).artifact_location
            except mlflow.exceptions.MlflowException as e:
                if "RESOURCE_DOES_NOT_EXIST" not in str(e.error_code):
                    raise
                location = None  # the logged model is gone already (deleted by hand): nothing to free
            if location:
                get_artifact_repository(location).delete_artifacts()
                if location.startswith("file:"):
                    parent = Path(local_file_uri_to_path(location)).parent
                    if parent.is_dir() and not any(parent.iterdir()):
                        parent.rmdir()  # the empty models/<model_id> folder
                client.delete_logged_model(model_id)
        cache = cfg.out_dir("registry") / name / f"v{v}"
        if cache.exists():
            shutil.rmtree(cache)
    if doomed:
        print(f"[retention] {name}: deleted version{'s' if len(doomed) > 1 else ''} {', '.join(map(str, doomed))} "
              "with artifacts "
              f"(common.keep_versions={keep}; versions holding an alias are kept)", flush=True)
    return doomed
