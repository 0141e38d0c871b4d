"""What a pipeline run leaves for its user: a Prefect markdown artifact (each stage's status, seconds
and metrics with a link to its MLflow run, the alignment-tax table, the promotion verdict) and a
table printed at the end of ``rlhf run``."""

from __future__ import annotations

from components.core.tracking import tracking_uri


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
