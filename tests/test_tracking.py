import json

import pytest

from components import tracking
from components.config import load_config


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
        version = tracking.register_model(tiny_model_dir, "test-model", cfg, "base_model", description="tiny", aliases=("candidate",))
    client = MlflowClient()
    got = client.get_run(run.info.run_id)
    assert got.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert got.data.tags["data_version"] == tracking.data_version()
    assert got.data.tags["params_hash"] == cfg.section_hash("base_model")
    assert got.data.metrics == {"base_model/n_params": 3.0}  # nan and strings are not logged
    assert got.data.params["base_model.source"] == "smollm2" and "data.n_users" not in got.data.params
    mv = client.get_model_version_by_alias("test-model", "candidate")
    assert mv.version == version.version and mv.run_id == run.info.run_id
    assert mv.tags["git_commit"] == got.data.tags["git_commit"] and mv.description == "tiny"
    loaded = mlflow.pyfunc.load_model("models:/test-model@candidate")
    assert loaded.metadata.flavors["transformers"]["task"] == "text-generation"


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
