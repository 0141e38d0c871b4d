"""Plots every stage writes: the data as CSV (DVC plots) and a PNG beside it (MLflow artifacts)."""

from __future__ import annotations

import textwrap
from pathlib import Path

PROMPT_TYPES = ("closed", "open", "unknown")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_curves(history: list[dict], out_dir: Path, title: str) -> tuple[Path, Path]:
    """DVC plot data (CSV, one row per update) and a PNG of the main curves."""
    plt = _pyplot()

    out_dir.mkdir(parents=True, exist_ok=True)
    keys = [k for k in history[0] if k != "update"] if history else []
    csv = out_dir / "curves.csv"
    csv.write_text("update," + ",".join(keys) + "\n" + "".join(
        f"{h['update']}," + ",".join(f"{h.get(k, float('nan')):.6g}" for k in keys) + "\n" for h in history))
    shown = [k for k in ("reward", "gold_reward", "kl", "reward_with_kl", "explained_variance", "vf_loss", "ptx_loss",
                         "entropy") if k in keys]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * max(1, len(shown)), 3), squeeze=False)
    for ax, k in zip(axes[0], shown):
        ax.plot([h["update"] for h in history], [h[k] for h in history], marker=".")
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("update")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    png = out_dir / "curves.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    if "gold_reward" in keys:
        overoptimisation_plot(history, out_dir / "overoptimisation.png", title)
    return csv, png


def overoptimisation_plot(history: list[dict], png: Path, title: str) -> Path:
    """Gao et al. 2022's picture: the proxy (reward-model score) and the truth (gold reward) per update
    and against the KL to the reference; over-optimisation is the proxy rising while the gold falls."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, x, xlabel in ((axes[0], [h["update"] for h in history], "update"),
                          (axes[1], [h["kl"] for h in history], "KL(policy || SFT) per response")):
        ax.plot(x, [h["reward"] for h in history], marker=".", label="reward model score (proxy)")
        ax.plot(x, [h["gold_reward"] for h in history], marker=".", label="gold reward (truth)")
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=8)
    fig.suptitle(f"over-optimisation: {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def write_collapse_plot(curves: dict[str, list[float]], shapes: dict[str, list[float]], out_dir: Path,
                        title: str) -> tuple[Path, Path]:
    """DVC plot data (CSV: position, <type> = mean sigmoid(r), <type>_shape = min-max scaled) and a
    PNG with both views side by side."""
    plt = _pyplot()

    out_dir.mkdir(parents=True, exist_ok=True)
    types = [t for t in PROMPT_TYPES if t in curves]
    n = len(next(iter(curves.values()))) if curves else 0
    xs = [i / max(1, n - 1) for i in range(n)]
    cols = [(t, curves[t]) for t in types] + [(f"{t}_shape", shapes[t]) for t in types if t in shapes]
    csv = out_dir / "collapse.csv"
    rows = ["position," + ",".join(c for c, _ in cols)]
    rows += [f"{x:.4f}," + ",".join(f"{v[i]:.6f}" for _, v in cols) for i, x in enumerate(xs)]
    csv.write_text("\n".join(rows) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, data, ylabel in ((axes[0], curves, "reward, sigmoid(r)"),
                             (axes[1], shapes, "reward, min-max scaled per prompt")):
        for t in types:
            if t in data:
                ax.plot(xs, data[t], marker="o", label=t)
        ax.set_xlabel("answer position, best (0) to worst (1)")
        ax.set_ylabel(ylabel)
        ax.legend()
    fig.suptitle(textwrap.fill(title, 100), fontsize=8)
    fig.tight_layout()
    png = out_dir / "collapse.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return csv, png


def bar_chart(results: dict[str, dict], metrics: list[tuple[str, str]], path: Path) -> Path:
    """Bars of ``metrics`` ((key, label) pairs, the ones some model has) for each model of ``results``."""
    plt = _pyplot()

    keys = [(k, label) for k, label in metrics if any(k in r for r in results.values())]
    names = list(results)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(keys)), 4.5))
    for i, n in enumerate(names):
        ax.bar([j + i * width for j in range(len(keys))], [results[n].get(k, float("nan")) for k, _ in keys],
               width, label=n)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], [label for _, label in keys],
                  rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score")
    ax.set_title("Evaluation by model (↑ better except toxicity)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_table_csv(results: dict[str, dict], keys: list[str], path: Path) -> None:
    """DVC plot data: one row per model of ``results``, one column per key some model has."""
    keys = [k for k in keys if any(k in r for r in results.values())]
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ["model," + ",".join(keys)] + [n + "," + ",".join(f"{m.get(k, float('nan')):.6g}" for k in keys)
                                         for n, m in results.items()]
    path.write_text("\n".join(rows) + "\n")
