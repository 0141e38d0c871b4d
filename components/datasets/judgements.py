"""Blind A/B judgements (``judgements.jsonl``): one answer of each of two models per prompt, the better
one or a tie, written by ``rlhf label --compare`` (components/apps/ab.py) and read by ``--report`` and
the promotion gate.

A record: ``{"id", "prompt", "responses": [answer of model A, answer of model B], "model_versions":
[A, B], "winner": "a" | "b" | "tie", "shown_first": "a" | "b", "prompt_type"?, "labeled_at",
"queue_item", "labeler"}``. The great-expectations suite of the file is in rules.py (``SCHEMAS``).

The win rate of A over B counts a tie as half. The unit is the queue item (one prompt, one answer
per model): an item judged by several labelers scores the mean of their verdicts, so its labelers
do not count as independent prompts; the standard error and the bootstrap interval are over items.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from pathlib import Path

from components.core.data import iter_jsonl
from components.maths.stats import win_rate_summary

FILE = "judgements.jsonl"
WINNERS = ("a", "b", "tie")
SCORE = {"a": 1.0, "tie": 0.5, "b": 0.0}  # model A's score for a verdict


def read(path: str | Path) -> list[dict]:
    """The records of a judgements file (none when it does not exist); a line that is not a JSON
    object stops with its file and line (rules.py's suite checks the fields)."""
    path = Path(path)
    return [rec for _, rec in iter_jsonl(path)] if path.exists() else []


def pairs(records: list[dict]) -> list[tuple[str, str]]:
    """The (model A, model B) version pairs judged, in first-seen order."""
    return list(dict.fromkeys(tuple(r["model_versions"]) for r in records))


def item_scores(records: list[dict], version_a: str, version_b: str) -> dict[str, float]:
    """Queue item -> A's score against B (1 win, 0.5 tie, 0 loss), the mean over the item's labelers.

    Records of the pair in the other order (B judged as the queue's first model) count with the score
    flipped; records of other pairs are left out."""
    by_item: dict[str, list[float]] = defaultdict(list)
    for r in records:
        versions = tuple(r["model_versions"])
        if versions == (version_a, version_b):
            by_item[r["queue_item"]].append(SCORE[r["winner"]])
        elif versions == (version_b, version_a):
            by_item[r["queue_item"]].append(1.0 - SCORE[r["winner"]])
    return {item: sum(s) / len(s) for item, s in by_item.items()}


def agreement(records: list[dict]) -> dict:
    """Inter-labeler agreement: over every item judged by two or more labelers and every pair of its
    labelers, the share that gave the same verdict (A, B or tie). ``{"agreement": share or None,
    "pairs", "items"}``."""
    by_item: dict[str, dict[str, str]] = defaultdict(dict)
    for r in records:
        by_item[r["queue_item"]][r["labeler"]] = r["winner"]
    same = n = items = 0
    for verdicts in by_item.values():
        if len(verdicts) < 2:
            continue
        items += 1
        for x, y in combinations(sorted(verdicts), 2):
            n += 1
            same += verdicts[x] == verdicts[y]
    return {"agreement": same / n if n else None, "pairs": n, "items": items}


def summary(records: list[dict], version_a: str, version_b: str, *, seed: int = 0) -> dict:
    """A's win rate over B from the judgements of that pair: ``{"rate", "se", "lo", "hi", "n"
    (items), "judgements", "ties", "labelers", "agreement", "agreement_pairs"}``."""
    mine = [r for r in records if set(r["model_versions"]) == {version_a, version_b}]
    scores = item_scores(mine, version_a, version_b)
    ag = agreement(mine)
    return win_rate_summary(list(scores.values()), seed=seed) | {
        "judgements": len(mine), "ties": sum(r["winner"] == "tie" for r in mine),
        "labelers": len({r["labeler"] for r in mine}), "agreement": ag["agreement"], "agreement_pairs": ag["pairs"]}
