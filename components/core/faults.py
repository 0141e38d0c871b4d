"""Fault-injection hooks for the kill-and-resume tests (tests/test_faults.py).

``RLHF_KILL_AFTER_CHECKPOINT=N`` makes a training stage (sft, dpo, reward, ppo, ppo_ptx) SIGKILL
itself right after its checkpoint of step (update) N is complete on disk: a deterministic stand-in
for a machine or container dying mid-stage, without timing races. ``RLHF_KILL_AT=<point>`` does the
same at a named point (``register:logged``, ``register:created``: inside a model registration).
Unset, which is always the case outside those tests, the hooks do nothing.
"""

from __future__ import annotations

import os
import signal
import sys

KILL_ENV = "RLHF_KILL_AFTER_CHECKPOINT"
POINT_ENV = "RLHF_KILL_AT"


def checkpoint_written(step: int) -> None:
    """Call once the checkpoint of ``step`` is complete; kills this process if the hook asks for it."""
    if os.environ.get(KILL_ENV) == str(step):
        print(f"[faults] {KILL_ENV}={step}: SIGKILL after checkpoint {step}", flush=True)
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def point(name: str) -> None:
    """Call at a named point of a stage; kills this process if ``RLHF_KILL_AT`` names it."""
    if os.environ.get(POINT_ENV) == name:
        print(f"[faults] {POINT_ENV}={name}: SIGKILL", flush=True)
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
