"""The pipeline as a Prefect flow — it reads like InstructGPT's Figure 2:

    data ─► validate ─► base_model ─► sft ─► reward ─► ppo, ppo_ptx ─► evaluate ─► promote
                                          └──► dpo ─────────────────────┘
    (InstructGPT steps 1, 2, 3; DPO is the RL-free baseline; evaluate compares every model with
    SFT, and promote's gate decides which policy becomes `champion` in the MLflow registry)

Each task runs its stage through DVC (``dvc repro --single-item <stage>``), so the stage logic
exists once (``components/<stage>.py``, also what ``dvc repro`` runs), DVC skips a stage whose
deps and params did not change, and after ``rlhf run`` the lock file is current: ``dvc status``
says everything is up to date. The flow is the scheduler and the observer: logs, the MLflow
parent run whose id the stages receive, and a markdown artifact summarising the run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from components.config import ROOT, load_config
from components.tracking import PARENT_RUN_ENV, lineage_tags, set_offline_env, setup, tracking_uri

# Order of execution; each name is a stage of dvc.yaml and a module components/<name>.py.
STAGES = ("validate", "base_model", "sft", "reward", "dpo", "ppo", "ppo_ptx", "evaluate", "promote")


class StageFailed(RuntimeError):
    """A stage exited non-zero; the message carries the end of its output."""


def _stage_env(parent_run_id: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` in dvc.yaml = ours
    env["PYTHONUNBUFFERED"] = "1"
    if parent_run_id:
        env[PARENT_RUN_ENV] = parent_run_id
    return env


_BAR = re.compile(r"^(?P<desc>.*?):?\s*(?P<pct>\d{1,3})%\|")


def _worth_logging(line: str, shown: dict[str, int]) -> bool:
    """A tqdm bar redraws many times a second: log each bar at 0, 10, 20 ... 100% only."""
    m = _BAR.match(line)
    if not m:
        return True
    decile = int(m["pct"]) // 10
    if shown.get(m["desc"]) == decile:
        return False
    shown[m["desc"]] = decile
    return True


@task(name="stage", task_run_name="{stage}")
def run_stage(stage: str, parent_run_id: str | None = None) -> dict:
    """``dvc repro --single-item <stage>``, its output streamed to the Prefect log."""
    logger = get_run_logger()
    dvc = Path(sys.executable).with_name("dvc")
    cmd = [str(dvc) if dvc.exists() else "dvc", "repro", "--single-item", stage]
    t0 = time.time()
    tail: list[str] = []
    with subprocess.Popen(cmd, cwd=ROOT, env=_stage_env(parent_run_id), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        shown: dict[str, int] = {}
        for line in proc.stdout:
            line = line.rstrip()
            if line and _worth_logging(line, shown):
                logger.info("%s | %s", stage, line)
            tail = (tail + [line])[-40:]
    seconds = round(time.time() - t0, 1)
    if proc.returncode != 0:
        raise StageFailed(f"stage '{stage}' failed (exit {proc.returncode}) after {seconds} s:\n" + "\n".join(tail[-25:]))
    skipped = any("didn't change, skipping" in l or "is cached" in l for l in tail)
    metrics_file = load_config().metrics_file(stage)
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return {"stage": stage, "status": "up to date (skipped)" if skipped else "ran", "seconds": seconds, "metrics": metrics}


@task(name="data")
def prepare_data() -> str:
    """data/ from the DVC cache or the built-in generator (a no-op when present)."""
    from components.cli import ensure_data

    what = ensure_data(load_config())
    get_run_logger().info("data/: %s", what)
    return what


def _summary_markdown(results: list[dict], run_url: str) -> str:
    lines = ["# RLHF pipeline run", "", f"MLflow parent run: {run_url}", "",
             "| stage | status | seconds | metrics |", "|---|---|---|---|"]
    for r in results:
        numbers = {k: v for k, v in r["metrics"].items() if isinstance(v, (int, float))}
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items())
        if len(numbers) > 12:
            shown = f"{len(numbers)} metrics (table below, metrics/{r['stage']}.json)"
        lines.append(f"| {r['stage']} | {r['status']} | {r['seconds']} | {shown} |")
    return "\n".join(lines)


@flow(name="rlhf", log_prints=True)
def rlhf_pipeline(stages: tuple[str, ...] = STAGES) -> list[dict]:
    """Validate the data, then run each stage in order; stop at the first failure."""
    set_offline_env()
    cfg = load_config()
    prepare_data()
    mlflow = setup(cfg)
    results = []
    with mlflow.start_run(run_name="pipeline", tags={**lineage_tags(cfg, "common"), "stage": "pipeline"}) as parent:
        mlflow.log_params(cfg.flat())
        for stage in stages:
            results.append(run_stage(stage, parent.info.run_id))
        run_url = f"{tracking_uri(cfg)} experiment '{cfg.common.experiment}', run {parent.info.run_id}"
    markdown = _summary_markdown(results, run_url)
    for extra in (cfg.out_dir("evaluate") / "alignment_tax.md", cfg.out_dir("promote") / "report.md"):
        if extra.exists() and any(r["stage"] == extra.parent.name for r in results):
            markdown += "\n\n" + extra.read_text()
    create_markdown_artifact(markdown=markdown, key="rlhf-run-summary",
                             description="Stages, status and metrics of this pipeline run; alignment tax; promotion")
    report = cfg.out_dir("validate") / "report.html"
    print(f"Validation report: {report}")
    print(f"MLflow: {run_url}  (browse with: mlflow ui --backend-store-uri {tracking_uri(cfg)})")
    return results
