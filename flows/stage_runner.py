"""Run one dvc.yaml stage exactly as ``dvc repro --single-item <stage>`` would, minus two start-ups.

Through the DVC CLI a stage pays for two fresh processes: ``dvc`` itself (~0.8 s) and the stage's
``python -m components.stages.<stage>``, which imports torch, transformers, TRL and MLflow again (~6.7 s
on 2 cores, more than most tiny stages take to run). Here:

* the DVC bookkeeping is DVC's own Python API, called in the flow's process (``reproduce``): skip
  when up to date, remove the old outputs, restore from DVC's run cache when it has this exact
  run, else run the command; then hash the outputs into the DVC cache and write ``dvc.lock``.
  That is the sequence of ``dvc.stage.Stage.reproduce/run``, so ``dvc status`` afterwards is clean;
* the command, when it is ``python -m <module> [args]`` (every stage of dvc.yaml), runs in a child
  forked from a warm interpreter that imported the heavy libraries once (multiprocessing's
  forkserver, ``PRELOAD``). The child is still a process of its own: its memory goes back when
  it ends, a crash or a kill stays inside it, and it runs the very module ``python -m`` runs
  (``runpy``), with the environment and working directory DVC would give it. Other commands are
  refused with a clear error (no shell here; ``dvc repro`` still runs them).
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from components.core.env import MALLOC_ENV

# Imported once by the forkserver, then shared by every stage it forks (copy-on-write).
# Third-party only: the project's own modules are imported fresh by each stage, so an edit between
# two runs is always seen.
# Beyond the packages, the submodules every stage reaches lazily (measured with python -X importtime:
# ~2.8 s per stage on 2 cores): MLflow's SQL stores, transformers' model layers and Trainer, pyplot.
PRELOAD = ["torch", "transformers", "trl", "datasets", "accelerate", "mlflow", "pandas",
           "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store",
           "transformers.utils.type_validators", "transformers.modeling_layers", "transformers.trainer",
           "matplotlib.pyplot", "git"]

_ctx = multiprocessing.get_context("forkserver")
_ctx.set_forkserver_preload(PRELOAD)


def warm_up() -> None:
    """Start the forkserver (once), so its imports overlap with the flow's own start-up. It starts
    with ``MALLOC_ENV`` (glibc reads it only at process start; forked stages inherit it)."""
    from multiprocessing import forkserver

    if not os.environ.get("RLHF_NO_MALLOC_TUNING"):
        os.environ.update(MALLOC_ENV)
    forkserver.ensure_running()


def python_module(cmd: str) -> tuple[str, list[str]] | None:
    """``"python -m components.stages.ppo ppo_ptx"`` -> ``("components.stages.ppo", ["ppo_ptx"])``; None for any
    other command."""
    parts = shlex.split(cmd)
    if len(parts) >= 3 and parts[0] in ("python", "python3") and parts[1] == "-m":
        return parts[2], parts[3:]
    return None


def _child(module: str, args: list[str], env: dict[str, str], cwd: str, out) -> None:
    """In the forked child: become ``python -m module args`` with stdout and stderr on ``out``."""
    import runpy

    os.dup2(out.fileno(), 1)
    os.dup2(out.fileno(), 2)
    out.close()
    sys.stdout.reconfigure(line_buffering=True)
    os.chdir(cwd)
    started_with = {k: os.environ[k] for k in MALLOC_ENV if k in os.environ}  # the forkserver's malloc settings
    os.environ.clear()
    os.environ.update({**env, **started_with})
    if len(started_with) < len(MALLOC_ENV):  # a forked child cannot restart itself to apply them
        os.environ["RLHF_NO_MALLOC_TUNING"] = "1"
    sys.argv = [module, *args]
    sys.path.insert(0, cwd)  # what `python -m` puts first
    # SystemExit (a stage's exit code) and tracebacks are handled by multiprocessing as python does.
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def run_command(cmd: str, env: dict[str, str], cwd: Path, on_line: Callable[[str], None]) -> int:
    """Run a stage command, each output line (tqdm's carriage returns count as line ends) passed
    to ``on_line``; returns its exit code (negative: killed by that signal)."""
    target = python_module(cmd)
    if target is None:
        raise ValueError(f"dvc.yaml cmd {cmd!r}: the flow runs `python -m <module> [args]` commands only "
                         "(every stage of this project's dvc.yaml is one); run other commands with `dvc repro`")
    warm_up()
    reader, writer = _ctx.Pipe(duplex=False)
    child = _ctx.Process(target=_child, args=(*target, env, str(cwd), writer), name=target[0])
    child.start()
    writer.close()  # the child holds the only write end now: EOF when it (and its children) end
    with io.TextIOWrapper(io.FileIO(reader.fileno(), closefd=False), newline=None,
                          errors="replace") as lines:  # newline=None: "\r" ends a line too
        for line in lines:
            on_line(line.rstrip("\n"))
    reader.close()
    child.join()
    return child.exitcode


@contextlib.contextmanager
def open_repo(root: Path):
    """DVC's ``Repo`` of the project at ``root``, with the cwd at ``root`` meanwhile: DVC resolves a
    stage name like ``sft`` against the dvc.yaml of the cwd, whatever folder it was opened at."""
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(str(root)) as repo:
        yield repo


def reproduce(root: Path, stage: str, run: Callable[[str], None]) -> str:
    """``dvc repro --single-item <stage>`` through DVC's API, the command run by ``run(cmd)``
    (which raises when it fails: then nothing is committed and dvc.lock keeps the last good run).

    Returns "up to date (skipped)", "restored from the DVC run cache" or "ran"."""
    from dvc.stage.cache import RunCacheNotFoundError

    with open_repo(root) as repo:
        with repo.lock:
            (st,) = repo.stage.collect(stage)
            if not st.changed():
                return "up to date (skipped)"
            st.remove_outs(ignore_remove=False, force=False)
            try:
                repo.stage_cache.restore(st)
                status = "restored from the DVC run cache"
            except RunCacheNotFoundError:
                st.save_deps()
                status = "ran"
        if status == "ran":  # without DVC's lock, as DVC runs commands (other dvc readers may proceed)
            for cmd in st.cmd if isinstance(st.cmd, list) else [st.cmd]:  # dvc.yaml allows a list
                run(cmd)
        with repo.lock:
            uncached = any(not o.use_cache for o in st.outs if not (o.is_metric or o.is_plot))
            st.save(run_cache=not uncached)  # hash deps and outs; the run cache learns this run
            st.commit()  # outs into .dvc/cache
            st.dump(update_pipeline=False)  # dvc.lock
    return status
