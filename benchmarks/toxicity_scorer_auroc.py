"""How well does the offline toxicity scorer separate toxic from non-toxic comments?

Scores the labelled Wikipedia talk-page test set (``../shared/data/toxicity/
toxicity_nonfuzzed_testset.csv``: 1,492 comments, 248 toxic) with a scorer from
``components.core.toxicity.make_scorer`` and reports AUROC, accuracy / precision / recall at 0.5,
counts and throughput.

    python benchmarks/toxicity_scorer_auroc.py                       # profanity-check (default)
    python benchmarks/toxicity_scorer_auroc.py --scorer path/to/hf-model

Prints a table and writes JSON to benchmarks/results/toxicity_scorer_auroc.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "toxicity" / "toxicity_nonfuzzed_testset.csv"
OUT = ROOT / "benchmarks" / "results" / "toxicity_scorer_auroc.json"


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="labelled CSV (rev_id,comment,toxic)")
    ap.add_argument("--scorer", default="profanity-check", help="'profanity-check' or a HF model folder")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if not args.data.exists():
        print(f"skipped: {args.data} is absent")
        return 1

    from components.datasets.eval_sets import load_toxicity_labelled
    from components.core.toxicity import make_scorer

    rows = load_toxicity_labelled(args.data)
    texts = [r["text"] for r in rows]
    labels = np.array([r["toxic"] for r in rows], dtype=bool)
    score = make_scorer(args.scorer)
    t0 = time.perf_counter()
    probs = score(texts)
    seconds = time.perf_counter() - t0
    pred = probs >= 0.5
    tp, fp = int((pred & labels).sum()), int((pred & ~labels).sum())
    fn, tn = int((~pred & labels).sum()), int((~pred & ~labels).sum())
    result = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "data": str(args.data.relative_to(ROOT.parent)) if args.data.is_relative_to(ROOT.parent) else str(args.data),
        "scorer": args.scorer,
        "n": len(rows), "n_toxic": int(labels.sum()), "n_non_toxic": int((~labels).sum()),
        "auroc": float(roc_auc_score(labels, probs)),
        "accuracy_at_0.5": (tp + tn) / len(rows),
        "precision_at_0.5": tp / (tp + fp) if tp + fp else 0.0,
        "recall_at_0.5": tp / (tp + fn) if tp + fn else 0.0,
        "confusion_at_0.5": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "majority_class_accuracy": float(max(labels.mean(), 1 - labels.mean())),
        "score_seconds": seconds, "texts_per_second": len(rows) / seconds if seconds else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    print(f"{result['date']}  {result['machine']['cpu']} ({result['machine']['cores']} cores)")
    print(f"{args.data.name}: {result['n']} comments, {result['n_toxic']} toxic\n")
    print("| scorer | AUROC | accuracy@0.5 | precision@0.5 | recall@0.5 | majority baseline | texts/s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.scorer} | {result['auroc']:.3f} | {result['accuracy_at_0.5']:.3f} | {result['precision_at_0.5']:.3f} "
          f"| {result['recall_at_0.5']:.3f} | {result['majority_class_accuracy']:.3f} | {result['texts_per_second']:,.0f} |")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
