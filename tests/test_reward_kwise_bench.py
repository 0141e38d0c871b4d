"""benchmarks/reward_kwise_vs_pairwise.py: TRL's batch that matches ours' optimiser steps per epoch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("kwise_bench", ROOT / "benchmarks" / "reward_kwise_vs_pairwise.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_matched_pairs_per_batch_hand_values():
    bench = _bench()
    full4 = {"ranks": [0, 1, 2, 3]}          # C(4,2) = 6 pairs
    tie4 = {"ranks": [0, 1, 1, 2]}           # the tie gives no pair: 5 pairs
    full9 = {"ranks": list(range(9))}        # 36 pairs
    assert bench.matched_pairs_per_batch([full4, full4], 2) == 12
    assert bench.matched_pairs_per_batch([full4, tie4], 2) == 11       # 2 x 5.5
    assert bench.matched_pairs_per_batch([full9] * 3, 2) == 72
    assert bench.matched_pairs_per_batch([{"ranks": [0, 0]}], 1) == 1  # never 0 pairs per step
