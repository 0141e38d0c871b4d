"""What a pipeline run leaves for its user: a Prefect markdown artifact (each stage's status, seconds
and metrics with a link to its MLflow run, the alignment-tax table, the promotion verdict) and a
table printed at the end of ``rlhf run``."""

from __future__ import annotations

import logging

from components.core.tracking import tracking_uri
from flows.cache import StageFailed


def mlflow_links(cfg, parent) -> tuple[str, dict[str, str]]:
    """UI links to the pipeline's MLflow run and to each stage run nested under it: on the tracking
    server when the store is one, else where `rlhf ui` serves it (http://127.0.0.1:5000)."""
    from urllib.parse import urlsplit

    from mlflow import MlflowClient

    uri = tracking_uri(cfg)
    parts = urlsplit(uri)
    base = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path.rstrip('/')}" \
        if parts.scheme in ("http", "https") else "http://127.0.0.1:5000"  # no credentials in a link
    exp = parent.info.experiment_id
    kids = MlflowClient(uri).search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    link = f"{base}/#/experiments/{exp}/runs/{{}}".format
    return link(parent.info.run_id), {k.data.tags.get("stage"): link(k.info.run_id) for k in kids}


def summary_markdown(results: list[dict], run_url: str, links: dict[str, str] | None = None) -> str:
    """The run summary: one row per stage (linked to its MLflow run when it ran)."""
    links = links or {}
    lines = ["# RLHF pipeline run", "", f"MLflow parent run: {run_url}", "",
             "| stage | status | seconds | metrics |", "|---|---|---|---|"]
    for r in results:
        numbers = {k: v for k, v in r["metrics"].items() if isinstance(v, (int, float))}
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items())
        if len(numbers) > 12:
            shown = f"{len(numbers)} metrics (table below, metrics/{r['stage']}.json)"
        stage = f"[{r['stage']}]({links[r['stage']]})" if r["stage"] in links else r["stage"]  # cached: no new run
        lines.append(f"| {stage} | {r['status']} | {r['seconds']} | {shown} |")
    return "\n".join(lines)


def publish(cfg, results: list[dict], parent, run_url: str) -> None:
    """The Prefect artifact ``rlhf-run-summary`` (+ the evaluation and promotion reports of stages that
    ran), then the stage / status / seconds table on stdout."""
    from prefect.artifacts import create_markdown_artifact

    parent_link, links = mlflow_links(cfg, parent)
    markdown = summary_markdown(results, f"[{parent.info.run_id}]({parent_link}) ({run_url})", links)
    for extra in (cfg.out_dir("evaluate") / "alignment_tax.md", cfg.out_dir("promote") / "report.md"):
        if extra.exists() and any(r["stage"] == extra.parent.name for r in results):
            markdown += "\n\n" + extra.read_text()
    create_markdown_artifact(markdown=markdown, key="rlhf-run-summary",
                             description="Stages, status and metrics of this pipeline run; alignment tax; promotion")
    print("stage        status                              seconds")
    for r in results:
        print(f"{r['stage']:<12} {r['status']:<34} {r['seconds']:>8.1f}")
    print(f"Validation report: {cfg.out_dir('validate') / 'report.html'}")
    print(f"MLflow: {run_url}  (browse with: rlhf ui)")


def failure_report(e: StageFailed) -> str:
    """What `rlhf run` prints when a stage failed: which stage and how, then the stage's own error lines
    (from its ``error:`` line on; the report lines it printed before it) or, for a crash, the end of its
    output; where the traceback is."""
    lines = e.output.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("error:")), None)
    if first is None:
        shown = lines
    else:
        shown = [line for line in lines[:first] if "report:" in line] + lines[first:]
    body = "\n".join(f"  {line}" for line in shown)
    return (f"error: {e.summary}" + (f"\n{body}" if body else "")
            + "\n(Prefect's traceback of the failure is in the flow run's log; `rlhf run --debug` prints it here)")


class _NoStageTraceback(logging.Filter):
    """On the console, a StageFailed is logged by its message only; its traceback goes to the Prefect log
    (the API handler, which formats a record before it reaches the console handler) but not to the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], StageFailed):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_stage_tracebacks() -> None:
    """Keep Prefect's tracebacks of a failed stage off the terminal (``_NoStageTraceback`` on its console
    handlers). Call after Prefect configured its logging (importing ``prefect.flow`` does)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(isinstance(f, _NoStageTraceback) for f in handler.filters):
            handler.addFilter(_NoStageTraceback())
