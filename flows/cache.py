"""The flow's Prefect cache key for a stage, and its retry rule.

The key hashes a stage's inputs in the form dvc.lock records them: its command, the md5 of every
dep (the data files = the data version, the upstream stages' outputs = the upstream model
versions, its code) and the values of its params. When DVC says the stage is not up to date (an
input changed, or its outputs are missing or edited), the flow refreshes the cache entry instead
of trusting it, so a deleted output is restored or rebuilt, never skipped.
"""

from __future__ import annotations

import hashlib
import json

from components.core.config import ROOT
from components.core.errors import EXIT_BAD_INPUT, EXIT_BAD_PARAMS
from flows import stage_runner


class StageFailed(RuntimeError):
    """A stage exited non-zero. The message's first line says which stage and how (``str()`` is that line:
    what Prefect's state and error lines show, the stage's lines being in the log already); the lines after
    it, the end of the stage's output, are ``output`` (``flows.summary.failure_report`` prints them)."""

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        summary, _, self.output = message.partition("\n")
        self.summary = summary.rstrip(":")
        self.exit_code = exit_code  # the stage command's own code (negative: killed by that signal)

    def __str__(self) -> str:
        return self.summary

    def __repr__(self) -> str:
        return f"StageFailed({self.summary!r})"

    def __reduce__(self):  # pickled with its exit code (Prefect may persist a failed task's exception)
        return type(self), (self.args[0], self.exit_code)


def stage_inputs(stage: str) -> tuple[str, bool]:
    """(the cache key of ``stage``, whether DVC says it is up to date); see the module docstring."""
    from dvc.stage.serialize import to_single_stage_lockfile

    with stage_runner.open_repo(ROOT) as repo, repo.lock:
        (st,) = repo.stage.collect(stage)
        up_to_date = not st.status()  # compares deps, params and outs with dvc.lock
        st.save_deps()  # md5 of each dep now (DVC's state cache makes this cheap)
        entry = to_single_stage_lockfile(st)
    inputs = {k: entry.get(k) for k in ("cmd", "deps", "params")}
    digest = hashlib.sha256(json.dumps([str(ROOT), inputs], sort_keys=True, default=str).encode()).hexdigest()
    return f"{stage}-{digest[:16]}", up_to_date


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
