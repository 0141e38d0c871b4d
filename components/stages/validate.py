"""Stage validate — the data gate: great-expectations suites over the four data files.

Writes ``outputs/validate/report.json`` and ``report.html`` whatever the outcome, logs them to
MLflow, and raises ``ValidationFailed`` (non-zero exit) when any rule fails, so that nothing
downstream runs and nothing gets registered. The rules live in ``components/datasets/rules.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from components.core.config import Config
from components.core.errors import ValidationFailed
from components.core.stage import stage_main
from components.datasets import rules


def run(cfg: Config, data_dir: str | Path | None = None, report_dir: str | Path | None = None) -> dict:
    data_dir = Path(data_dir) if data_dir else cfg.data_dir
    report_dir = Path(report_dir) if report_dir else cfg.out_dir("validate")
    v = cfg.validate_
    print(f"[validate] checking {data_dir} ...", flush=True)
    report = rules.validate_dir(
        data_dir, max_prompt_chars=v.max_prompt_chars, max_response_chars=v.max_response_chars,
        max_text_chars=v.max_text_chars, eval_fraction=cfg.common.eval_fraction, seed=cfg.common.seed,
        control_tokens=rules.control_tokens_for(cfg),
    )
    json_path, html_path = rules.write_report(report, report_dir)
    _log_report(json_path, html_path)
    records = {name: f["records"] for name, f in report["files"].items()}
    print(f"[validate] report: {json_path}\n[validate] readable report: {html_path}", flush=True)
    if not report["success"]:
        n = len(report["failures"])
        raise ValidationFailed(
            f"data validation failed: {n} problem{'s' if n != 1 else ''} in {data_dir} "
            f"(report: {json_path})\n{rules.format_failures(report)}"
        )
    print(f"[validate] OK: {', '.join(f'{k} {n}' for k, n in records.items())}", flush=True)
    return {"records_" + k.removesuffix(".jsonl"): n for k, n in records.items()} | {
        "failures": 0, "report": str(json_path)}


def _log_report(*paths: Path) -> None:
    """Attach the report to the active MLflow run (the stage run), if there is one."""
    import mlflow

    if mlflow.active_run() is not None:
        for p in paths:
            mlflow.log_artifact(str(p), artifact_path="validation")


if __name__ == "__main__":
    sys.exit(stage_main("validate", run))
