"""The rankings a preference learner (the reward model, DPO) trains on, by source.

- ``on_policy``: the rank stage's rankings of the SFT model's own samples (InstructGPT step 2);
- ``human``: rankings from the labeling page (``labeled_at``) or imported real ones;
- ``corruption``: the built-in controlled corruptions of ideal answers (``synth``).

Each source is split train/eval by user; training takes every human and on-policy ranking plus
corruptions making up ``corruption_share`` of the training set (all corruptions when there is
nothing else, e.g. before the first on-policy ranking), at most ``max_samples`` (human first).
"""

from __future__ import annotations

from pathlib import Path

from components.core.data import read_jsonl, split_records, take
from components.datasets import synth

SOURCES = ("on_policy", "human", "corruption")
SOURCE = "_source"  # the key a record's source is kept under (never written back to a file)


def sources(comparisons: Path, ranked: Path | None = None) -> dict[str, list[dict]]:
    """The records of ``comparisons`` (the data) and ``ranked`` (the rank stage's output, when it
    exists), each tagged with its source."""
    out: dict[str, list[dict]] = {name: [] for name in SOURCES}
    for rec in read_jsonl(ranked) if ranked is not None and ranked.exists() else []:
        out["on_policy"].append(rec | {SOURCE: "on_policy"})
    for rec in read_jsonl(comparisons):
        built_in = "labeled_at" not in rec and synth.parse_task(rec["prompt"]) is not None
        name = "corruption" if built_in else "human"
        out[name].append(rec | {SOURCE: name})
    return out


def training_split(by_source: dict[str, list[dict]], eval_fraction: float, seed: int, corruption_share: float,
                   max_samples: int) -> tuple[list[dict], list[dict]]:
    """(train, eval) records: see the module docstring. Eval holds every source's held-out users."""
    split = {name: split_records(recs, eval_fraction, seed) for name, recs in by_source.items()}
    train = split["human"][0] + split["on_policy"][0]
    corruptions = split["corruption"][0]
    if train and corruption_share < 1:
        corruptions = corruptions[: round(corruption_share / (1 - corruption_share) * len(train))]
    train = take(train + corruptions, max_samples)
    return train, [r for name in by_source for r in split[name][1]]
