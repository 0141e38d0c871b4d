"""The evaluation metrics as local ``evaluate`` modules (``<name>/<name>.py``, an ``evaluate.Metric``).

Each delegates to the function of the same name in ``components.maths.metrics``, which is what
hot code calls (``import evaluate`` takes ~10 s), so both always agree; ``load_metric(name)``
loads one offline.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from components.core.env import set_offline_env

METRICS_DIR = Path(__file__).resolve().parent
DATA_DIRS = ("squad_em_f1", "mc_accuracy", "toxicity_summary")  # loaded by path (dvc.yaml deps: core/codedeps.py)
METRICS = DATA_DIRS


@functools.cache
def load_metric(name: str) -> Any:
    """The local ``evaluate`` module ``name`` (one of METRICS), loaded offline (once per process)."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    set_offline_env()
    import evaluate

    return evaluate.load(str(METRICS_DIR / name))
