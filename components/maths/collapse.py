"""Reward-collapse diagnostics (Song et al. 2023): how a reward model spreads the K rewards of a prompt.

Inputs are ``(prompt_type, rewards)`` pairs, one per prompt, ``rewards`` its K answers' rewards.
"""

from __future__ import annotations


def _interp(x: float, xp: list[float], fp: list[float]) -> float:
    """Piecewise-linear interpolation of the points (xp, fp) at x, xp increasing (as numpy.interp)."""
    if x <= xp[0]:
        return fp[0]
    for i in range(1, len(xp)):
        if x <= xp[i]:
            t = (x - xp[i - 1]) / (xp[i] - xp[i - 1])
            return fp[i - 1] + t * (fp[i] - fp[i - 1])
    return fp[-1]


def _grid(n: int) -> list[float]:
    return [i / (n - 1) for i in range(n)] if n > 1 else [0.0]


def collapse_curves(rewards_by_prompt: list[tuple[str, list[float]]], grid: int = 9,
                    shape: bool = False) -> dict[str, list[float]]:
    """Mean sorted reward profile per prompt type (the reward-collapse diagnostic).

    Each prompt's rewards are sorted best-first and interpolated onto ``grid`` positions in [0, 1]
    (0 = best answer, 1 = worst), then averaged per prompt type. A closed-ended prompt trained with
    its utility should look like a step; an open-ended one like a ramp. ``shape=True`` min-max
    scales each prompt's rewards to [1 .. 0] first, so the curve shows the shape of the
    distribution alone, not its level or how saturated sigmoid(r) is (prompts whose K rewards are
    all equal have no shape and are left out).
    """
    xs = _grid(grid)
    acc: dict[str, list[list[float]]] = {}
    for ptype, rewards in rewards_by_prompt:
        if len(rewards) < 2:
            continue
        r = sorted((float(x) for x in rewards), reverse=True)
        if shape:
            span = r[0] - r[-1]
            if span <= 0:
                continue
            r = [(v - r[-1]) / span for v in r]
        xp = _grid(len(r))
        acc.setdefault(ptype, []).append([_interp(x, xp, r) for x in xs])
    return {t: [round(sum(col) / len(col), 6) for col in zip(*v)] for t, v in acc.items()}


def two_point_share(rewards_by_prompt: list[tuple[str, list[float]]], tol: float = 0.1) -> dict[str, float]:
    """Per prompt type, the mean share of a prompt's rewards at its extremes: within ``tol`` of its
    lowest or highest reward after min-max scaling. 1.0 is a two-point distribution (the paper's
    optimum of U = x for a closed prompt); 2/9 is nine evenly spread rewards. Prompts with fewer
    than 3 answers, or all-equal rewards, say nothing and are left out."""
    acc: dict[str, list[float]] = {}
    for ptype, r in rewards_by_prompt:
        if len(r) < 3 or max(r) <= min(r):
            continue
        lo, hi = min(r), max(r)
        z = [(x - lo) / (hi - lo) for x in r]
        acc.setdefault(ptype, []).append(sum(v <= tol or v >= 1 - tol for v in z) / len(z))
    return {t: sum(v) / len(v) for t, v in sorted(acc.items())}


def curve_distance(curves: dict[str, list[float]]) -> float:
    """Mean absolute gap between the open and closed curves (nan when one type is missing)."""
    if "open" not in curves or "closed" not in curves:
        return float("nan")
    return float(sum(abs(a - b) for a, b in zip(curves["open"], curves["closed"])) / len(curves["open"]))
