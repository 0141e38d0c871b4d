"""Fault-injection hook for the kill-and-resume tests (tests/test_faults.py).

``RLHF_KILL_AFTER_CHECKPOINT=N`` makes a training stage (sft, dpo, reward, ppo, ppo_ptx) SIGKILL
itself right after its checkpoint of step (update) N is complete on disk: a deterministic stand-in
for a machine or container dying mid-stage, without timing races. Unset, which is always the case
outside those tests, ``checkpoint_written`` does nothing.
"""

from __future__ import annotations

import os
import signal
import sys

KILL_ENV = "RLHF_KILL_AFTER_CHECKPOINT"


def checkpoint_written(step: int) -> None:
    """Call once the checkpoint of ``step`` is complete; kills this process if the hook asks for it."""
    if os.environ.get(KILL_ENV) == str(step):
        print(f"[faults] {KILL_ENV}={step}: SIGKILL after checkpoint {step}", flush=True)
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
