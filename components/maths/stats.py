"""Preference statistics: win rates (ties half) with a standard error and a seeded bootstrap interval.

A win rate compares two models' answers to the same prompts. Each prompt gives one score in
[0, 1]: 1 when model A's answer is better, 0.5 for a tie, 0 when worse; with several answers per
prompt (sampled), the mean over every (A answer, B answer) pair of that prompt. The win rate is
the mean over prompts; its standard error is the sample standard deviation of the prompt scores
over sqrt(n); the interval resamples prompts (the unit the data was drawn in) with replacement.
"""

from __future__ import annotations

import math
import random


def compare(x: float, y: float) -> float:
    """1 if x beats y, 0.5 for a tie, 0 otherwise."""
    return 1.0 if x > y else 0.5 if x == y else 0.0


def win_rate(a: list[float], b: list[float]) -> float:
    """Share of prompts where a beats b; ties count half (nan when empty)."""
    if not a:
        return float("nan")
    return sum(compare(x, y) for x, y in zip(a, b)) / len(a)


def prompt_scores(a: list[list[float]], b: list[list[float]]) -> list[float]:
    """Per prompt, the mean of ``compare`` over every pair of its A and B scores (A and B: one list of
    answer scores per prompt, the same prompts in the same order)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} prompts for A but {len(b)} for B")
    return [sum(compare(x, y) for x in xs for y in ys) / (len(xs) * len(ys)) for xs, ys in zip(a, b)]


def mean(xs) -> float:
    """The mean of ``xs`` (nan when empty)."""
    xs = list(xs)
    return float(sum(xs) / len(xs)) if xs else float("nan")


def standard_error(xs: list[float]) -> float:
    """sd(xs, ddof=1) / sqrt(n); nan for fewer than two values."""
    n = len(xs)
    if n < 2:
        return float("nan")
    m = sum(xs) / n
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)


def quantile(sorted_xs: list[float], q: float) -> float:
    """The q-quantile of sorted values by linear interpolation between order statistics (numpy's default)."""
    pos = q * (len(sorted_xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (pos - lo) * (sorted_xs[hi] - sorted_xs[lo])


def bootstrap_interval(xs: list[float], *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``xs``: ``n_boot`` resamples of len(xs) values with
    replacement, drawn by ``random.Random(seed)``; (nan, nan) when empty."""
    if not xs:
        return float("nan"), float("nan")
    rng, n = random.Random(seed), len(xs)
    means = sorted(sum(xs[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    tail = (1 - level) / 2
    return quantile(means, tail), quantile(means, 1 - tail)


def win_rate_summary(scores: list[float], *, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """``{"rate", "se", "lo", "hi", "n"}`` of per-prompt scores (``prompt_scores`` or ``compare``)."""
    lo, hi = bootstrap_interval(scores, n_boot=n_boot, seed=seed)
    return {"rate": mean(scores), "se": standard_error(scores), "lo": lo, "hi": hi, "n": len(scores)}


def paired_difference(a: list[float], b: list[float]) -> dict[str, float]:
    """``{"mean", "se", "n"}`` of the paired differences a_i - b_i (the same items measured twice):
    their mean and its standard error sd(d, ddof=1) / sqrt(n) (nan for fewer than two pairs)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} values for A but {len(b)} for B")
    d = [x - y for x, y in zip(a, b)]
    return {"mean": mean(d), "se": standard_error(d), "n": len(d)}


def difference_se(pop_sd_a: float, n_a: int, pop_sd_b: float, n_b: int) -> float:
    """Standard error of mean(A) - mean(B) for two independent samples given by their population (ddof 0)
    standard deviations and sizes: sqrt(sd_a² / (n_a - 1) + sd_b² / (n_b - 1)); nan when a side has < 2."""
    if n_a < 2 or n_b < 2:
        return float("nan")
    return math.sqrt(pop_sd_a ** 2 / (n_a - 1) + pop_sd_b ** 2 / (n_b - 1))
