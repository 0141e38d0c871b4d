"""Resumable training state for the loops written here (reward model, PPO): ``<dir>/<prefix>-<N>/state.pt``.

A checkpoint is written to a temp file and renamed (a kill mid-write keeps the previous one), the
oldest beyond ``keep`` are deleted, and it is resumed from only when the ``key`` it was written with
(params hash, data version, ...) matches the run's: a checkpoint of other params or data is ignored.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def _step(p: Path) -> int:
    return int(p.name.rsplit("-", 1)[1])


def atomic_save(path: Path, state: dict) -> None:
    """torch.save to a temp file, then rename: a kill mid-write keeps the previous file."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def save(ckpt_dir: Path, step: int, state: dict, *, prefix: str = "step", keep: int = 1) -> Path:
    """Write ``<ckpt_dir>/<prefix>-<step>/state.pt``; keep the newest ``keep`` checkpoints."""
    path = ckpt_dir / f"{prefix}-{step}" / "state.pt"
    atomic_save(path, state)
    for old in sorted(ckpt_dir.glob(f"{prefix}-*"), key=_step)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def latest(ckpt_dir: Path, prefix: str = "step") -> Path | None:
    """The newest complete checkpoint folder (one whose state.pt exists), or None."""
    done = sorted((p for p in ckpt_dir.glob(f"{prefix}-*") if (p / "state.pt").exists()),
                  key=_step) if ckpt_dir.exists() else []
    return done[-1] if done else None


def resume(ckpt_dir: Path | None, key: dict, stage: str, *, prefix: str = "step") -> dict | None:
    """The state of the newest checkpoint when it was written with ``key``, else None (with a line
    saying which checkpoint is resumed or why it is ignored)."""
    import torch

    last = latest(ckpt_dir, prefix) if ckpt_dir is not None else None
    if last is None:
        return None
    state = torch.load(last / "state.pt", weights_only=False)  # our own file: RNG states and lists inside
    if any(state.get(k) != v for k, v in key.items()):
        print(f"[{stage}] ignoring {last}: params or data changed since it was written", flush=True)
        return None
    print(f"[{stage}] resuming from {last} at {prefix} {_step(last) + 1}", flush=True)
    return state
