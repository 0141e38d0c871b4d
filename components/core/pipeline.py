"""The pipeline as ``dvc.yaml`` declares it, read in one place: the stages in order, the command,
deps and params of each; and the ``dvc`` command line of this environment.

dvc.yaml is the single declaration of which params a stage reads: ``stage_params`` gives them to
the stage's MLflow run (logged params, ``params_hash``) and ``components.core.stage`` lets a stage
read nothing else.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import yaml

from components.core.config import ROOT

DVC_YAML = "dvc.yaml"


@functools.cache
def _stages(root: Path) -> dict[str, dict]:
    return (yaml.safe_load((root / DVC_YAML).read_text(encoding="utf-8")) or {}).get("stages") or {}


def stages(root: Path = ROOT) -> list[str]:
    """The stage names in dvc.yaml's order (the order the flow runs them in)."""
    return list(_stages(root))


def stage(name: str, root: Path = ROOT) -> dict:
    try:
        return _stages(root)[name]
    except KeyError:
        raise KeyError(f"{root / DVC_YAML}: no stage {name!r} (stages: {', '.join(_stages(root))})") from None


def stage_params(name: str, root: Path = ROOT) -> list[str]:
    """The params a stage reads, as dvc.yaml lists them: whole sections (``sft``) or dotted keys (``common.seed``)."""
    return [p if isinstance(p, str) else next(iter(p)) for p in stage(name, root).get("params") or []]


def stage_deps(name: str, root: Path = ROOT) -> list[str]:
    return [str(d) for d in stage(name, root).get("deps") or []]


def dvc(*args: str, check: bool = True, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run the dvc of this environment (next to this Python) in the project."""
    exe = Path(sys.executable).with_name("dvc")
    cmd = [str(exe) if exe.exists() else "dvc", *args]
    return subprocess.run(cmd, cwd=cwd, check=check, text=True, capture_output=True)
