"""Shared fixtures: offline environment, the real data folder, and a tiny model built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components.core.env import set_offline_env

set_offline_env()
ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_file(*parts: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random SmolLM2-family model with the real tokenizer (built once per session)."""
    from components.stages import base_model
    from components.core.config import load_config

    out = tmp_path_factory.mktemp("tiny")
    cfg = load_config(overrides=["common.profile=test", f"common.outputs_dir={out}"])
    base_model.run(cfg)
    return out / "base_model"


@pytest.fixture
def isolated_mlflow(tmp_path, monkeypatch):
    """MLflow store in a temp dir, so tests never touch the project's mlflow.db."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("RLHF_PARENT_RUN_ID", raising=False)
    return uri
