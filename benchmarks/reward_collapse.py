"""Reward collapse, side by side: trained reward models (e.g. the prompt-aware utilities vs
log-sigmoid for every prompt) scored on the same held-out rankings. For each model: pairwise
accuracy (ties excluded), the open and closed curves by level (mean sorted sigmoid(r)) and by shape
(each prompt min-max scaled), and the open-closed distance of each; one PNG with every model.

    .venv/bin/python benchmarks/reward_collapse.py --data data \
        --model "closed linear, open log=outputs/reward" --model "logsigmoid for all=/tmp/ls/reward"

Trains nothing: train the models first, e.g. `rlhf run` (default utilities) and
`python -m components.stages.reward 'reward.utility={closed: logsigmoid, open: logsigmoid, unknown: logsigmoid}'`
with common.outputs_dir pointing elsewhere.

`--probe SFT_FOLDER` asks what the utilities do when training runs to (near) its optimum, which the
stage's 60 steps do not reach: the SFT model's last-token features of every answer are computed once
(frozen backbone), then a linear reward head is trained on them full-batch for `--probe-steps`
Adam steps, once per utility setting, from the same seed; only `kwise_loss`'s utilities differ.
Curves are reported on the training prompts (what the paper's optimum is about) and held out:

    .venv/bin/python benchmarks/reward_collapse.py --data data --probe outputs/sft \
        --out benchmarks/results/reward_collapse_probe.json --png benchmarks/results/reward_collapse_probe.png

With `outputs/rank/comparisons.jsonl` present (`--ranked`), the probe trains on the reward stage's
own mix (the SFT model's ranked samples plus a share of corruptions) and reports the held-out
on-policy prompts separately.
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

    from components.core.config import load_config
    from components.core.data import FILES, read_jsonl, split_records
    from components.core.models import autocast_for
    from components.maths.collapse import collapse_curves, curve_distance
    from components.stages import reward

    cfg = load_config(overrides=[f"common.data_dir={data_dir}"])
    recs = read_jsonl(data_dir / FILES["comparisons"])
    _, eval_recs = split_records(recs, cfg.common.eval_fraction, cfg.common.seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True)
    utilities, type_to_id = reward.utilities_of(cfg)
    items, _ = reward.encode_comparisons(eval_recs, tokenizer, cfg, type_to_id)
    torch.manual_seed(0)
    ev = reward.evaluate(model, items, tokenizer.pad_token_id, utilities, cfg.reward, autocast_for(False))
    per_prompt = ev.pop("per_prompt")
    level, shape = collapse_curves(per_prompt), collapse_curves(per_prompt, shape=True)
    return {"folder": str(folder), "utility": getattr(model.config, "rlhf_reward", {}).get("utility"),
            "accuracy": round(ev["accuracy"], 4), "pairs": ev["pairs"], "prompts": len(items),
            "distance_level": round(curve_distance(level), 4),
            "distance_shape": round(curve_distance(shape), 4), "level": level, "shape": shape}


SETTINGS = {"prompt-aware (closed linear, open log)": {"closed": "linear", "open": "log", "unknown": "logsigmoid"},
            "logsigmoid for all (default)": {"closed": "logsigmoid", "open": "logsigmoid", "unknown": "logsigmoid"}}


def features(folder: Path, recs: list[dict], cfg) -> tuple:
    """(B, K, d) last-token hidden states of every answer (frozen SFT backbone), (B, K) ranks and
    mask, and the prompt types; one forward pass per answer, length-bucketed."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from components.core.encode import pad_batch
    from components.core.scoring import length_buckets
    from components.stages import reward

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, use_safetensors=True).eval()
    items, _ = reward.encode_comparisons(recs, tokenizer, cfg, {t: 0 for t in reward.PROMPT_TYPES})
    b = reward.collate(items)  # the (B, K) layout the stage trains on
    feats = [None] * len(b.seqs)
    with torch.no_grad():
        for group in length_buckets([len(x) for x in b.seqs], cfg.reward.micro_batch_tokens):
            ids, attn = pad_batch([b.seqs[i] for i in group], tokenizer.pad_token_id)
            h = model(input_ids=ids, attention_mask=attn).last_hidden_state
            last = attn.sum(1) - 1
            for row, i in enumerate(group):
                feats[i] = h[row, last[row]].float()
    x = torch.stack(feats)[b.slot] * b.mask[..., None]  # padded answers: zeros
    return x, b.ranks, b.mask, [it["prompt_type"] for it in items]


def probe(folder: Path, data_dir: Path, steps: int, lr: float, ranked: Path | None = None) -> dict:
    """``ranked``: the rank stage's rankings of SFT's own samples; the training set is then the
    reward stage's own (``preferences.training_split``), and the on-policy held-out prompts are
    also reported on their own."""
    import torch

    from components.core.config import load_config
    from components.core.data import FILES
    from components.datasets import preferences
    from components.maths.collapse import collapse_curves, curve_distance, two_point_share
    from components.maths.reward_losses import kwise_loss, pairwise_accuracy

    cfg = load_config(overrides=[f"common.data_dir={data_dir}"])
    by_source = preferences.sources(data_dir / FILES["comparisons"], ranked)
    train_recs, eval_recs = preferences.training_split(by_source, cfg.common.eval_fraction, cfg.common.seed,
                                                       cfg.reward.corruption_share, cfg.reward.max_samples)
    t0 = time.time()
    splits = {"train": features(folder, train_recs, cfg), "held_out": features(folder, eval_recs, cfg)}
    on_policy = [i for i, r in enumerate(eval_recs) if r[preferences.SOURCE] == "on_policy"]
    if on_policy:  # rows of the held-out features (one per record, in order): no second model load or forward
        x, ranks, mask, types = splits["held_out"]
        splits["held_out_on_policy"] = (x[on_policy], ranks[on_policy], mask[on_policy], [types[i] for i in on_policy])
    print(f"features of {sum(int(v[2].sum()) for v in splits.values())} answers: {time.time() - t0:.0f} s", flush=True)
    x_train = splits["train"][0][splits["train"][2]]
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6  # standardised features: one lr fits every setting
    results = {}
    for label, utility in SETTINGS.items():
        names = tuple(dict.fromkeys(utility.values()))
        uid = {split: torch.tensor([names.index(utility[t]) for t in v[3]]) for split, v in splits.items()}
        torch.manual_seed(0)
        head = torch.nn.Linear(x_train.shape[1], 1)
        opt = torch.optim.Adam(head.parameters(), lr=lr)
        x, ranks, mask, _ = splits["train"]
        for _ in range(steps):
            loss, _ = kwise_loss(head((x - mu) / sd).squeeze(-1), ranks, mask, uid["train"], names, cfg.reward.utility_eps)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out = {"utility": utility, "steps": steps, "final_train_loss": round(float(loss.detach()), 5)}
        with torch.no_grad():
            for split, (x, ranks, mask, types) in splits.items():
                r = head((x - mu) / sd).squeeze(-1)
                c, t = pairwise_accuracy(r, ranks, mask)
                per_prompt = [(types[b], torch.sigmoid(r[b][mask[b]]).tolist()) for b in range(len(types))]
                level = collapse_curves(per_prompt)
                shape = collapse_curves(per_prompt, shape=True)
                out[split] = {"accuracy": round(c / t, 4), "pairs": t, "prompts": len(types), "level": level,
                              "shape": shape, "distance_level": round(curve_distance(level), 4),
                              "distance_shape": round(curve_distance(shape), 4),
                              "two_point_share": {t: round(v, 4) for t, v in two_point_share(per_prompt).items()}}
        results[label] = out
        for split in splits:
            o = out[split]
            print(f"{label:34s} {split:8s} accuracy {o['accuracy']:.3f}  open-closed gap: level "
                  f"{o['distance_level']:.3f}, shape {o['distance_shape']:.3f}; share of rewards at 0 or 1 "
                  + ", ".join(f"{t} {v:.2f}" for t, v in o["two_point_share"].items()), flush=True)
    return results


COLORS = {"closed": "tab:orange", "open": "tab:blue", "unknown": "tab:gray"}


def plot(results: dict[str, dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(11, 3.2 * len(results)), squeeze=False)
    for row, (label, r) in zip(axes, results.items()):
        for ax, view, ylabel in ((row[0], "level", "sigmoid(r)"), (row[1], "shape", "min-max scaled per prompt")):
            for t, ys in sorted(r[view].items()):
                ax.plot([i / (len(ys) - 1) for i in range(len(ys))], ys, marker="o", label=t, color=COLORS.get(t))
            extremes = ", ".join(f"{t} {v:.2f}" for t, v in r.get("two_point_share", {}).items())
            ax.set_title(f"{label}\naccuracy {r['accuracy']:.3f}, open-closed gap {r['distance_' + view]:.3f}"
                         + (f"; at 0 or 1: {extremes}" if extremes and view == "shape" else ""), fontsize=8)
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
    ap.add_argument("--model", action="append", metavar="LABEL=FOLDER")
    ap.add_argument("--probe", metavar="SFT_FOLDER", help="linear heads on frozen SFT features, trained to the optimum")
    ap.add_argument("--probe-steps", type=int, default=3000)
    ap.add_argument("--probe-lr", type=float, default=0.01)
    ap.add_argument("--ranked", default=str(ROOT / "outputs" / "rank" / "comparisons.jsonl"),
                    help="--probe: the rank stage's rankings of SFT's samples (used when the file exists)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reward_collapse.json"))
    ap.add_argument("--png", default=str(ROOT / "benchmarks" / "results" / "reward_collapse.png"))
    args = ap.parse_args()
    from components.core.env import set_offline_env

    set_offline_env()
    if args.probe:
        ranked = Path(args.ranked) if Path(args.ranked).exists() else None
        res = probe(Path(args.probe), Path(args.data), args.probe_steps, args.probe_lr, ranked)
        plot({f"{label}, {split}": {**r[split], "utility": r["utility"]} for label, r in res.items()
              for split in ("train", "held_out")}, Path(args.png))
        Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
                                              "sft": args.probe, "probe": res}, indent=2) + "\n")
        print(f"wrote {args.out} and {args.png}")
        return
    if not args.model:
        ap.error("give --model LABEL=FOLDER (one or more) or --probe SFT_FOLDER")
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
