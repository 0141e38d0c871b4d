"""The pipeline as a Prefect flow. Its body is InstructGPT's Figure 2, one named step per stage:

    data ─► validate ─► base_model ─► sft ─► rank ─► reward ─► ppo, ppo_ptx ─► evaluate ─► promote
                                                  └──► dpo ─────────────────────┘

Each step runs its dvc.yaml stage the way ``dvc repro --single-item <stage>`` does
(``stage_runner``: DVC's Python API for the bookkeeping, the stage's command forked from a warm
interpreter), so the stage logic exists once (``components/stages/<stage>.py``, also what
``dvc repro`` runs) and after ``rlhf run`` ``dvc status`` says everything is up to date. The flow
adds what DVC does not: retries (``flow.retries``; a retried stage resumes from its checkpoint), a
Prefect cache keyed on each stage's inputs (``flows/cache.py``), logs, the MLflow parent run whose
id the stages receive, a run summary (``flows/summary.py``), and one run per project at a time
(``flows/lock.py``).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import INPUTS, NO_CACHE

from components.core import pipeline
from components.core.config import ROOT, load_config, redact_uri
from components.core.env import set_offline_env
from components.core.tracking import PARENT_RUN_ENV, lineage_tags, process_tags, setup, tracking_uri
from components.datasets.synth import ensure_data
from flows import stage_runner, summary
from flows.cache import StageFailed, stage_inputs, worth_retrying
from flows.lock import project_lock

STAGES = tuple(pipeline.stages())  # dvc.yaml's order, which the flow body follows (tests/test_flow_logging.py)


@flow(name="rlhf", log_prints=True)
def rlhf_pipeline() -> list[dict]:
    """InstructGPT's Figure 2 on this project's data: every stage in order; stops at the first failure."""
    set_offline_env()
    with project_lock(load_config().flow.wait_for_lock):
        cfg = load_config()  # read under the lock: a queued run sees its own params
        stage_runner.warm_up()  # the stages' libraries import in the background meanwhile
        prepare_data()
        mlflow = setup(cfg)
        results: list[dict] = []
        with mlflow.start_run(run_name="pipeline", tags={**lineage_tags(cfg, "pipeline"), "stage": "pipeline",
                                                         **process_tags()}) as run:
            mlflow.log_params(cfg.flat())

            def step(stage: str) -> None:
                results.append(run_step(cfg, stage, run.info.run_id))

            step("validate")    # data/*.jsonl pass the great-expectations gate, or nothing trains
            step("base_model")  # the pretrained model (SmolLM2-135M-Instruct) every stage starts from
            step("sft")         # step 1: demonstrations -> supervised fine-tuning
            step("rank")        # step 2: the SFT model answers the comparison prompts K times; labelers rank them
            step("reward")      # step 2: those rankings (+ human ones, + corruptions) + SFT -> reward model
            step("dpo")         # the RL-free baseline: the same rankings + SFT -> DPO policy
            step("ppo")         # step 3: RL prompts + reward model -> PPO from SFT, KL to SFT
            step("ppo_ptx")     # step 3 with the pretraining mix (PPO-ptx)
            step("evaluate")    # every model vs SFT: truthfulness, toxicity, NLP regressions, win rate
            step("promote")     # the gate: the candidate becomes `champion` only if every check holds
        run_url = f"{redact_uri(tracking_uri(cfg))} experiment '{cfg.common.experiment}', run {run.info.run_id}"
        summary.publish(cfg, results, run, run_url)
        return results


@task(name="data")
def prepare_data() -> str:
    """data/ from the DVC cache or the built-in generator (a no-op when present)."""
    what = ensure_data(load_config())
    get_run_logger().info("data/: %s", what)
    return what


def run_step(cfg, stage: str, parent_run_id: str) -> dict:
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


def _stage_env(parent_run_id: str | None, stage: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` in dvc.yaml = ours
    env["PYTHONUNBUFFERED"] = "1"
    env.update(DVC_ROOT=str(ROOT), DVC_STAGE=stage)  # as DVC sets them
    if parent_run_id:
        env[PARENT_RUN_ENV] = parent_run_id
    return env


@task(name="stage", task_run_name="{stage}", cache_policy=INPUTS - "parent_run_id", persist_result=True)
def run_stage(stage: str, inputs_key: str, parent_run_id: str | None = None) -> dict:
    """The stage as ``dvc repro --single-item <stage>`` runs it (``stage_runner``: DVC's API here,
    the command forked from a warm interpreter), its output streamed to the Prefect log. Cached on
    (stage, inputs_key): see ``flows/cache.py``."""
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
        code = stage_runner.run_command(cmd, _stage_env(parent_run_id, stage), ROOT, on_line)
        if code != 0:
            raise StageFailed(f"stage '{stage}' failed (exit {code}) after {round(time.time() - t0, 1)} s:\n"
                              + "\n".join(tail[-25:]), code)

    status = stage_runner.reproduce(ROOT, stage, run)
    metrics_file = load_config().metrics_file(stage)
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return {"stage": stage, "status": status, "seconds": round(time.time() - t0, 1), "metrics": metrics}
