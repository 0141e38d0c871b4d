"""TruthfulQA MC1/MC2: our scorer (question encoded once, its choices batched on the KV cache) vs
naive per-choice scoring (one full forward pass of question + choice per choice), side by side on
the same model and the same token ids. The numbers must be identical (to float tolerance); the
target (issue 5) is >= 2x faster.

    python benchmarks/truthfulqa_mc.py                      # base SmolLM2, all 817 questions
    python benchmarks/truthfulqa_mc.py --model outputs/sft --limit 100

The model defaults to outputs/base_model (built from the packaged SmolLM2 when absent).
Prints a table and writes benchmarks/results/truthfulqa_mc.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MC_TASK = ROOT.parent / "shared" / "data" / "truthfulqa" / "mc_task.json"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "outputs" / "base_model"))
    ap.add_argument("--data", default=str(MC_TASK))
    ap.add_argument("--limit", type=int, default=0, help="questions (0: all)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "truthfulqa_mc.json"))
    args = ap.parse_args()

    from components.core.env import set_offline_env

    set_offline_env()
    import torch

    from components.datasets import eval_sets
    from components.stages import evaluate
    from components.core.models import load_model_dir

    if not Path(args.data).exists():
        print(f"{args.data}: absent (TruthfulQA's mc_task.json from ../shared/data)", file=sys.stderr)
        return 1
    model_dir = Path(args.model)
    if not (model_dir / "config.json").exists():
        from components.stages import base_model
        from components.core.config import load_config

        print(f"{model_dir}: absent; building it from the packaged SmolLM2 ...", flush=True)
        base_model.run(load_config(overrides=[f"common.outputs_dir={model_dir.parent}"]))
    torch.set_num_threads(torch.get_num_threads())
    model, tok = load_model_dir(model_dir)
    items = eval_sets.load_truthfulqa(Path(args.data), limit=args.limit or None)
    n_choices = sum(len({t for t, _ in it["mc1"]} | {t for t, _ in it["mc2"]}) for it in items)
    print(f"{len(items)} questions, {n_choices} distinct choices, model {model_dir}", flush=True)

    results = {}
    for name, scorer in (("ours", evaluate.choice_logprobs), ("naive", evaluate.choice_logprobs_naive)):
        t0 = time.time()
        m = evaluate.truthfulqa(model, tok, items, "", scorer=scorer)
        results[name] = {**m, "seconds": round(time.time() - t0, 1)}
        print(f"{name}: MC1 {m['truthfulqa_mc1']:.4f}  MC2 {m['truthfulqa_mc2']:.4f}  {results[name]['seconds']} s", flush=True)
    ours, naive = results["ours"], results["naive"]
    same = (ours["truthfulqa_mc1"] == naive["truthfulqa_mc1"]
            and abs(ours["truthfulqa_mc2"] - naive["truthfulqa_mc2"]) < 1e-4)
    speedup = naive["seconds"] / ours["seconds"]
    record = {
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {cpu_name()}, {torch.get_num_threads()} threads",
        "model": str(model_dir), "questions": len(items), "choices": n_choices, "ours": ours, "naive": naive,
        "identical": same, "speedup": round(speedup, 2), "target_speedup": 2.0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print("\n| scorer | MC1 | MC2 | seconds |\n|---|---|---|---|")
    for name in ("ours", "naive"):
        r = results[name]
        print(f"| {name} | {r['truthfulqa_mc1']:.4f} | {r['truthfulqa_mc2']:.4f} | {r['seconds']} |")
    print(f"\nspeed-up {speedup:.2f}x (target 2x); identical numbers: {same}; written {args.out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
