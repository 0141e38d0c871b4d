"""Reward collapse, side by side: trained reward models (e.g. the prompt-aware utilities vs
log-sigmoid for every prompt) scored on the same held-out rankings. For each model: pairwise
accuracy (ties excluded), the open and closed curves by level (mean sorted sigmoid(r)) and by shape
(each prompt min-max scaled), and the open-closed distance of each; one PNG with every model.

    .venv/bin/python benchmarks/reward_collapse.py --data data \
        --model "closed linear, open log=outputs/reward" --model "logsigmoid for all=/tmp/ls/reward"

Trains nothing: train the models first, e.g. `rlhf run` (default utilities) and
`python -m components.reward 'reward.utility={closed: logsigmoid, open: logsigmoid, unknown: logsigmoid}'`
with common.outputs_dir pointing elsewhere.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def score(folder: Path, data_dir: Path) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from components import reward
    from components.config import load_config
    from components.data import FILES, read_jsonl, split_records

    cfg = load_config(overrides=[f"common.data_dir={data_dir}"])
    recs = read_jsonl(data_dir / FILES["comparisons"])
    _, eval_recs = split_records(recs, cfg.common.eval_fraction, cfg.common.seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True)
    utilities, type_to_id = reward.utilities_of(cfg)
    items, _ = reward.encode_comparisons(eval_recs, tokenizer, cfg, type_to_id)
    torch.manual_seed(0)
    ev = reward.evaluate(model, items, tokenizer.pad_token_id, utilities, cfg.reward, reward.autocast_for(False))
    per_prompt = ev.pop("per_prompt")
    level, shape = reward.collapse_curves(per_prompt), reward.collapse_curves(per_prompt, shape=True)
    return {"folder": str(folder), "utility": getattr(model.config, "rlhf_reward", {}).get("utility"),
            "accuracy": round(ev["accuracy"], 4), "pairs": ev["pairs"], "prompts": len(items),
            "distance_level": round(reward.curve_distance(level), 4),
            "distance_shape": round(reward.curve_distance(shape), 4), "level": level, "shape": shape}


def plot(results: dict[str, dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(9, 3.2 * len(results)), squeeze=False)
    for row, (label, r) in zip(axes, results.items()):
        for ax, view, ylabel in ((row[0], "level", "sigmoid(r)"), (row[1], "shape", "min-max scaled per prompt")):
            for t, ys in r[view].items():
                ax.plot([i / (len(ys) - 1) for i in range(len(ys))], ys, marker="o", label=t)
            ax.set_title(f"{label}: accuracy {r['accuracy']:.3f}, open-closed gap {r['distance_' + view]:.3f}", fontsize=8)
            ax.set_xlabel("answer position, best (0) to worst (1)")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "data"), help="folder with comparisons.jsonl (its eval split is scored)")
    ap.add_argument("--model", action="append", required=True, metavar="LABEL=FOLDER")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reward_collapse.json"))
    ap.add_argument("--png", default=str(ROOT / "benchmarks" / "results" / "reward_collapse.png"))
    args = ap.parse_args()
    from components.tracking import set_offline_env

    set_offline_env()
    results = {}
    for spec in args.model:
        label, _, folder = spec.rpartition("=")
        if not label or not Path(folder, "config.json").exists():
            raise SystemExit(f"--model {spec!r}: expected LABEL=FOLDER with a reward-model folder (config.json)")
        results[label] = score(Path(folder), Path(args.data))
        r = results[label]
        print(f"{label:28s} accuracy {r['accuracy']:.3f} ({r['pairs']} pairs)  open-closed gap: level "
              f"{r['distance_level']:.3f}, shape {r['distance_shape']:.3f}", flush=True)
    plot(results, Path(args.png))
    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
                                          "models": results}, indent=2) + "\n")
    print(f"wrote {args.out} and {args.png}")


if __name__ == "__main__":
    main()
