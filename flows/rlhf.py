"""The pipeline as a Prefect flow — it reads like InstructGPT's Figure 2:

    data ─► validate ─► base_model ─► sft ─► reward ─► ppo, ppo_ptx ─► evaluate ─► promote
                                          └──► dpo ─────────────────────┘
    (InstructGPT steps 1, 2, 3; DPO is the RL-free baseline; evaluate compares every model with
    SFT, and promote's gate decides which policy becomes `champion` in the MLflow registry)

Each task runs its stage the way ``dvc repro --single-item <stage>`` does (``stage_runner``: DVC's
Python API for the bookkeeping, the stage's dvc.yaml command forked from a warm interpreter), so the
stage logic exists once (``components/<stage>.py``, also what ``dvc repro`` runs), and after
``rlhf run`` the lock file is current: ``dvc status`` says everything is up to date. The flow is the scheduler and
the observer: retries (``flow.retries``; a retried stage resumes from its checkpoint), a Prefect
cache keyed on each stage's inputs (``stage_inputs``: the data, params, upstream models and code
exactly as DVC records them), logs, the MLflow parent run whose id the stages receive, and a
markdown artifact summarising the run. One run per project at a time (``project_lock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS, NO_CACHE

from components.config import ROOT, load_config, redact_uri
from components.tracking import (EXIT_BAD_INPUT, EXIT_BAD_PARAMS, PARENT_RUN_ENV, lineage_tags,
                                 set_offline_env, setup, tracking_uri)
from flows import stage_runner

# Order of execution; each name is a stage of dvc.yaml and a module components/<name>.py.
STAGES = ("validate", "base_model", "sft", "reward", "dpo", "ppo", "ppo_ptx", "evaluate", "promote")


class StageFailed(RuntimeError):
    """A stage exited non-zero; the message carries the end of its output."""

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        self.exit_code = exit_code  # the stage command's own code (negative: killed by that signal)


def worth_retrying(task, task_run, state) -> bool:
    """Prefect retry condition: not for bad params, bad input or a non-finite value (the stage
    exits 2 or 3: the same input fails the same way); yes for anything else (a kill, a crash)."""
    try:
        state.result()
    except StageFailed as e:
        return e.exit_code not in (EXIT_BAD_PARAMS, EXIT_BAD_INPUT)
    except Exception:
        return True
    return True


class ProjectBusy(RuntimeError):
    """Another pipeline run holds this project's lock (flow.wait_for_lock: false)."""


LOCK_FILE = ROOT / ".rlhf-run.lock"
_lock_depth = 0  # re-entrant within one process: `rlhf run` takes the lock, then calls the flow


@contextlib.contextmanager
def project_lock(wait: bool = True) -> Iterator[None]:
    """One pipeline run per project at a time, so two runs with different params clobber neither
    params.yaml, outputs/ nor the registry: a second run waits for the first (or fails at once when
    ``wait`` is false). An OS file lock (flock), released even when the holder is killed."""
    global _lock_depth
    if _lock_depth:
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
        return
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown process"
            if not wait:
                raise ProjectBusy(f"{LOCK_FILE}: another pipeline run holds this project ({holder}); "
                                  "wait for it, or set flow.wait_for_lock: true to queue behind it") from None
            print(f"another pipeline run holds {LOCK_FILE} ({holder}); waiting for it to finish ...", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        _lock_depth = 1
        try:
            yield
        finally:
            _lock_depth = 0
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def stage_inputs(stage: str) -> tuple[str, bool]:
    """The cache key of a stage and whether DVC says it is up to date.

    The key hashes the stage's inputs in the form dvc.lock records them: its command, the md5 of
    every dep (the data files = the data version, the upstream stages' outputs = the upstream model
    versions, its code) and the values of its params sections. When DVC says the stage is not up to
    date (an input changed, or its outputs are missing or edited), the flow refreshes the cache
    entry instead of trusting it."""
    from dvc.stage.serialize import to_single_stage_lockfile

    with stage_runner.open_repo(ROOT) as repo, repo.lock:
        (st,) = repo.stage.collect(stage)
        up_to_date = not st.status()  # compares deps, params and outs with dvc.lock
        st.save_deps()  # md5 of each dep now (DVC's state cache makes this cheap)
        entry = to_single_stage_lockfile(st)
    inputs = {k: entry.get(k) for k in ("cmd", "deps", "params")}
    digest = hashlib.sha256(json.dumps([str(ROOT), inputs], sort_keys=True, default=str).encode()).hexdigest()
    return f"{stage}-{digest[:16]}", up_to_date


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


@task(name="stage", task_run_name="{stage}", cache_policy=INPUTS - "parent_run_id", persist_result=True)
def run_stage(stage: str, inputs_key: str, parent_run_id: str | None = None) -> dict:
    """The stage as ``dvc repro --single-item <stage>`` runs it (``stage_runner``: DVC's API here,
    the command forked from a warm interpreter), its output streamed to the Prefect log. Cached on
    (stage, inputs_key): see ``stage_inputs``."""
    logger = get_run_logger()
    t0 = time.time()
    tail: list[str] = []
    shown: dict[str, int] = {}

    def on_line(line: str) -> None:
        nonlocal tail
        if line and _worth_logging(line, shown):
            logger.info("%s | %s", stage, line)
        tail = (tail + [line])[-40:]

    def run(cmd: str) -> None:
        logger.info("%s | > %s", stage, cmd)
        env = {**_stage_env(parent_run_id), "DVC_ROOT": str(ROOT), "DVC_STAGE": stage}  # as DVC sets them
        code = stage_runner.run_command(cmd, env, ROOT, on_line)
        if code != 0:
            raise StageFailed(f"stage '{stage}' failed (exit {code}) after {round(time.time() - t0, 1)} s:\n"
                              + "\n".join(tail[-25:]), code)

    status = stage_runner.reproduce(ROOT, stage, run)
    metrics_file = load_config().metrics_file(stage)
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return {"stage": stage, "status": status, "seconds": round(time.time() - t0, 1), "metrics": metrics}


@task(name="data")
def prepare_data() -> str:
    """data/ from the DVC cache or the built-in generator (a no-op when present)."""
    from components.cli import ensure_data

    what = ensure_data(load_config())
    get_run_logger().info("data/: %s", what)
    return what


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


def _summary_markdown(results: list[dict], run_url: str, links: dict[str, str] | None = None) -> str:
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


def _run_cached(cfg, stage: str, parent_run_id: str) -> dict:
    """One stage with the flow's retries, skipped by the Prefect cache when its inputs are unchanged."""
    key, up_to_date = stage_inputs(stage)
    get_run_logger().info("%s: inputs %s, %s", stage, key, "up to date" if up_to_date else "changed: will run")
    task_ = run_stage.with_options(
        retries=0 if stage == "validate" else cfg.flow.retries,  # bad data stays bad: no retry
        retry_delay_seconds=cfg.flow.retry_delay_seconds, retry_condition_fn=worth_retrying,
        cache_policy=INPUTS - "parent_run_id" if cfg.flow.cache else NO_CACHE,
        refresh_cache=not up_to_date)
    state = task_(stage, key, parent_run_id, return_state=True)
    result = dict(state.result())  # raises the stage's error when it failed
    if state.name == "Cached":
        result.update(status="cached (inputs unchanged)", seconds=0.0)
    return result


@flow(name="rlhf", log_prints=True)
def rlhf_pipeline(stages: tuple[str, ...] = STAGES) -> list[dict]:
    """Validate the data, then run each stage in order; stop at the first failure."""
    set_offline_env()
    with project_lock(load_config().flow.wait_for_lock):
        return _pipeline(stages)


def _pipeline(stages: tuple[str, ...]) -> list[dict]:
    cfg = load_config()  # read under the lock: a queued run sees its own params
    stage_runner.warm_up()  # the stages' libraries import in the background meanwhile
    prepare_data()
    mlflow = setup(cfg)
    results = []
    with mlflow.start_run(run_name="pipeline", tags={**lineage_tags(cfg, "common"), "stage": "pipeline"}) as parent:
        mlflow.log_params(cfg.flat())
        for stage in stages:
            results.append(_run_cached(cfg, stage, parent.info.run_id))
        run_url = f"{redact_uri(tracking_uri(cfg))} experiment '{cfg.common.experiment}', run {parent.info.run_id}"
        parent_link, links = mlflow_links(cfg, parent)
    markdown = _summary_markdown(results, f"[{parent.info.run_id}]({parent_link}) ({run_url})", links)
    for extra in (cfg.out_dir("evaluate") / "alignment_tax.md", cfg.out_dir("promote") / "report.md"):
        if extra.exists() and any(r["stage"] == extra.parent.name for r in results):
            markdown += "\n\n" + extra.read_text()
    create_markdown_artifact(markdown=markdown, key="rlhf-run-summary",
                             description="Stages, status and metrics of this pipeline run; alignment tax; promotion")
    print("stage        status                              seconds")
    for r in results:
        print(f"{r['stage']:<12} {r['status']:<34} {r['seconds']:>8.1f}")
    report = cfg.out_dir("validate") / "report.html"
    print(f"Validation report: {report}")
    print(f"MLflow: {run_url}  (browse with: rlhf ui)")
    return results
