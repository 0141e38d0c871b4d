"""EleutherAI's lm-evaluation-harness (``lm-eval``) on a loaded model: the field's public-NLP regressions.

``run_tasks`` runs any harness task by name (``hellaswag``, ``arc_easy``, ``lambada_openai``, ... need the
Hugging Face hub to fetch their data) on a model already in memory, through the harness's own ``HFLM``
wrapper, so the numbers are the harness's, comparable with anyone's. Offline, ``write_local_tasks``
writes local task definitions that ``run_tasks`` finds through ``include_path``: each one *includes the
harness's own task YAML* (prompt, choices, target, metrics, its ``process_docs`` / ``process_results``)
and swaps only the data for a local JSON file (``dataset_path: json``), so the protocol is the harness's:

- ``rlhf_hellaswag`` (harness ``hellaswag``: "activity: ctx_a Ctx_b" -> an ending; ``acc`` by summed
  log-likelihood, ``acc_norm`` per byte) on a HellaSwag-format JSONL (``evaluate.hellaswag``: the built-in
  set, or a file with ``activity_label``, ``ctx_a``, ``ctx_b``, ``endings``, ``label``);
- ``rlhf_truthfulqa_mc1`` / ``rlhf_truthfulqa_mc2`` (harness ``truthfulqa_mc1`` / ``_mc2``: its six-question
  "Q: ... A:" primer, then the question) on ``evaluate.truthfulqa`` (the built-in set, or TruthfulQA's
  ``mc_task.json``, e.g. ``../shared/data/truthfulqa/mc_task.json``), rewritten in the harness's format.

Metrics come back as ``lm_eval_<task>_<metric>`` floats (``acc``, ``acc_stderr``, ``acc_norm``, ...) and
``lm_eval_<task>_n`` (documents scored).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from components.core.errors import ConfigError

LOCAL_TASKS = ("rlhf_hellaswag", "rlhf_truthfulqa_mc1", "rlhf_truthfulqa_mc2")


def _harness_yaml(*parts: str) -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks" / Path(*parts)


def _local_yaml(task: str, include: Path, data_file: Path) -> str:
    # json.dumps quotes a path as YAML reads it (a JSON string is a YAML double-quoted scalar)
    return (f"include: {json.dumps(str(include))}\ntask: {task}\ntag: rlhf_local\ndataset_path: json\n"
            f"dataset_name: null\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data_file))}\n"
            "training_split: null\nvalidation_split: null\ntest_split: test\n")


def write_local_tasks(out_dir: Path, hellaswag_file: Path, truthfulqa: list[dict[str, Any]]) -> Path:
    """The project's sets as harness tasks under ``out_dir`` (returned: the ``include_path``).

    ``hellaswag_file``: a HellaSwag-format JSONL (used as it is); ``truthfulqa``: ``eval_sets.load_truthfulqa``
    items, written in the harness's format with the true answers first (its ``doc_to_target: 0`` and its MC2
    scoring assume so).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "rlhf_hellaswag.yaml").write_text(
        _local_yaml("rlhf_hellaswag", _harness_yaml("hellaswag", "hellaswag.yaml"), Path(hellaswag_file).resolve()))

    def targets(pairs):
        ordered = [p for p in pairs if p[1]] + [p for p in pairs if not p[1]]
        return {"choices": [t for t, _ in ordered], "labels": [int(y) for _, y in ordered]}

    tq = out_dir / "rlhf_truthfulqa.jsonl"
    tq.write_text("".join(json.dumps({"question": it["question"], "mc1_targets": targets(it["mc1"]),
                                      "mc2_targets": targets(it["mc2"])}) + "\n" for it in truthfulqa))
    for mc in ("mc1", "mc2"):
        (out_dir / f"rlhf_truthfulqa_{mc}.yaml").write_text(
            _local_yaml(f"rlhf_truthfulqa_{mc}", _harness_yaml("truthfulqa", f"truthfulqa_{mc}.yaml"), tq))
    return out_dir


def check_tasks(tasks: list[str], include_path: Path | None = None):
    """The harness's task index (local tasks under ``include_path`` included); ConfigError naming unknown tasks."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"evaluate.lm_eval_tasks: unknown to lm-eval: {', '.join(unknown)} (local tasks here: "
                          f"{', '.join(LOCAL_TASKS)}; `lm-eval ls tasks` lists the harness's)")
    return manager


def run_tasks(model, tokenizer, tasks: list[str], *, include_path: Path | None = None, limit: int = 0,
              batch_size: int = 16, seed: int = 0, manager=None) -> dict[str, float]:
    """Every task of ``tasks`` (harness names, or the local ones under ``include_path``) on ``model``.

    ``limit``: documents per task (0: all); ``manager``: a ``check_tasks`` index to reuse (else built here).
    Returns ``{"lm_eval_<task>_<metric>": value, "lm_eval_<task>_n": n}``. Raises ConfigError naming the tasks
    the harness does not know.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    manager = manager or check_tasks(tasks, include_path)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(next(model.parameters()).device))
    res = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit or None, log_samples=False,
                          random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    out: dict[str, float] = {}
    for task, metrics in res["results"].items():
        for key, value in metrics.items():
            name, _, _filter = key.partition(",")
            if name in ("alias", "sample_len") or not isinstance(value, (int, float)):
                continue
            out[f"lm_eval_{task}_{name}"] = float(value) if math.isfinite(float(value)) else float("nan")
        n = res.get("n-samples", {}).get(task, {})
        if "effective" in n:
            out[f"lm_eval_{task}_n"] = float(n["effective"])
    return out
