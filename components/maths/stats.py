"""Preference statistics: win rates (ties half)."""

from __future__ import annotations


def win_rate(a: list[float], b: list[float]) -> float:
    """Share of prompts where a beats b; ties count half (nan when empty)."""
    if not a:
        return float("nan")
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / len(a)


def mean(xs) -> float:
    """The mean of ``xs`` (nan when empty)."""
    xs = list(xs)
    return float(sum(xs) / len(xs)) if xs else float("nan")
