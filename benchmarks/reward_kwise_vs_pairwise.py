"""K-wise reward-model training (ours) vs TRL's RewardTrainer on the expanded pairs, side by side.

The same ranked data, the same model, the same token ids and the same hyperparameters (learning
rate for every parameter, epochs, warm-up, weight decay, frozen layers, precision) and, by
default, the same number of optimiser steps per epoch: TRL's pairs per step are the pairs ours
sees per step (prompts per batch x C(K,2) at a fixed K). Only the batching differs by
construction: ours takes whole prompts (one forward pass per answer, every pair of the prompt in
the loss), TRL takes (chosen, rejected) pairs (two forward passes per pair). ``--pairs-per-batch 8``
gives TRL a fixed, smaller batch and so more steps per epoch (results/..._8pairs.json).
Each side runs in its own process (so peak RSS is its own) and is scored by the same held-out
pairwise accuracy (``components.stages.reward.evaluate``, ties excluded).

    python benchmarks/reward_kwise_vs_pairwise.py --model outputs/sft            # K = 4..9 built-in + oasst2
    python benchmarks/reward_kwise_vs_pairwise.py --model outputs/sft --ks 4 9 --n-train 8
    python benchmarks/reward_kwise_vs_pairwise.py --model outputs/sft --equal-time --pairs-per-batch 8 \
        --out benchmarks/results/reward_kwise_equal_time.json   # + ours for TRL's wall time (more epochs)

Prints a table and writes JSON to benchmarks/results/reward_kwise_vs_pairwise.json.
Target (issue 3): speed-up >= 0.8 x (K - 1) at each K in 4..9, with equal or better accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OASST = ROOT.parent / "shared" / "data" / "oasst2" / "oasst2_filtered.jsonl"


# ------------------------------------------------------------------------------------ workers
def _load(args):
    from components.stages import reward

    model, tokenizer = reward.load_reward_backbone(Path(args.model))
    reward.freeze_bottom(model, args.freeze_layers)
    forwards = {"sequences": 0}
    model.register_forward_pre_hook(  # counts every sequence that goes through the model
        lambda mod, a, kw: forwards.__setitem__("sequences", forwards["sequences"] + kw["input_ids"].shape[0]),
        with_kwargs=True)
    return model, tokenizer, forwards


def _items(path: Path, tokenizer, max_length: int) -> list[dict]:
    from components.core.data import read_jsonl
    from components.core.encode import encode_pair

    items = []
    for rec in read_jsonl(path):
        ids = [encode_pair(tokenizer, rec["prompt"], r, "", max_length)[0] for r in rec["responses"]]
        items.append({"ids": ids, "ranks": rec["ranks"], "utility_id": 0, "prompt_type": "unknown"})
    return items


def _rc(args):
    from components.core.config import RewardConfig

    return RewardConfig(epochs=args.epochs, lr=args.lr, head_lr=args.lr, warmup_ratio=0.0, weight_decay=0.0,
                        prompts_per_batch=args.prompts_per_batch, max_length=args.max_length,
                        utility={"closed": "logsigmoid", "open": "logsigmoid", "unknown": "logsigmoid"},
                        logging_steps=10**6, save_steps=10**6)


def worker(args) -> dict:
    import torch

    from components.core.models import autocast_for
    from components.maths.reward_losses import pairs_from_ranks
    from components.stages import reward

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model, tokenizer, forwards = _load(args)
    train_items = _items(Path(args.train), tokenizer, args.max_length)
    eval_items = _items(Path(args.eval), tokenizer, args.max_length)
    rc = _rc(args)
    autocast = autocast_for(False)
    t0 = time.time()
    if args.worker == "kwise":
        reward.train(model, train_items, rc, tokenizer.pad_token_id, ("logsigmoid",), 0, autocast=autocast)
    else:
        from datasets import Dataset
        from trl import RewardConfig, RewardTrainer

        rows = [{"chosen_ids": it["ids"][w], "rejected_ids": it["ids"][l]}
                for it in train_items for w, l in pairs_from_ranks(it["ranks"])]
        cfg = RewardConfig(output_dir=tempfile.mkdtemp(), num_train_epochs=1, learning_rate=args.lr,
                           warmup_steps=0, weight_decay=0.0, lr_scheduler_type="linear",
                           per_device_train_batch_size=args.pairs_per_batch, max_length=args.max_length,
                           gradient_checkpointing=False, bf16=False, use_cpu=True, report_to="none",
                           save_strategy="no", logging_steps=10**6, disable_tqdm=True, seed=0,
                           dataloader_num_workers=0, center_rewards_coefficient=None)
        trainer = RewardTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows),
                                processing_class=tokenizer)
        t0 = time.time()  # tokenisation is skipped (ids given); the clock covers training only
        trainer.train()
    seconds = time.time() - t0
    train_forwards = forwards["sequences"]
    ev = reward.evaluate(model, eval_items, tokenizer.pad_token_id, ("logsigmoid",), rc, autocast)
    return {"side": args.worker, "epoch_seconds": round(seconds, 2), "forward_sequences": train_forwards,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "val_accuracy": round(ev["accuracy"], 4), "val_pairs": ev["pairs"],
            "train_prompts": len(train_items),
            "train_pairs": sum(len(pairs_from_ranks(it["ranks"])) for it in train_items)}


# ------------------------------------------------------------------------------------ driver
def _builtin(k: int, n: int, seed: int) -> list[dict]:
    """n built-in comparisons with exactly K answers each (the simulated labeler ranks them)."""
    from components.datasets import synth
    from components.core.data import read_jsonl

    with tempfile.TemporaryDirectory() as d:
        synth.synthesize(d, seed=seed, n_demonstrations=1, n_comparisons=n, n_prompts=1, n_pretrain=1, k_min=k,
                         k_max=k, label_noise=0.05, tie_margin=0.02, n_users=max(2, n))
        return read_jsonl(Path(d) / "comparisons.jsonl")


def _oasst(n_train: int, n_eval: int) -> tuple[list[dict], list[dict]] | None:
    from components.datasets import importers

    if not OASST.exists():
        print(f"skipping oasst2: {OASST} is absent", flush=True)
        return None
    comps, _, _ = importers.import_oasst(OASST, max_chars=1500)
    comps = [c for c in comps if len(c["responses"]) >= 2]
    return comps[:n_train], comps[n_train: n_train + n_eval]


def matched_pairs_per_batch(train: list[dict], prompts_per_batch: int) -> int:
    """TRL's pairs per step that give it ours' number of steps per epoch: the pairs ours' steps see on
    average (prompts per batch x mean ranked pairs per prompt; C(K,2) per prompt at a fixed K without ties)."""
    from components.maths.reward_losses import pairs_from_ranks

    pairs = sum(len(pairs_from_ranks(rec["ranks"])) for rec in train)
    return max(1, round(prompts_per_batch * pairs / len(train)))


def run_side(side: str, train: list[dict], evals: list[dict], args, epochs: int = 1) -> dict:
    import math

    from components.core.data import write_jsonl

    pairs_per_batch = args.pairs_per_batch or matched_pairs_per_batch(train, args.prompts_per_batch)
    with tempfile.TemporaryDirectory() as d:
        write_jsonl(Path(d) / "train.jsonl", train)
        write_jsonl(Path(d) / "eval.jsonl", evals)
        cmd = [sys.executable, __file__, "--worker", side, "--train", f"{d}/train.jsonl", "--eval", f"{d}/eval.jsonl",
               "--model", args.model, "--freeze-layers", str(args.freeze_layers), "--lr", str(args.lr),
               "--max-length", str(args.max_length), "--prompts-per-batch", str(args.prompts_per_batch),
               "--pairs-per-batch", str(pairs_per_batch), "--threads", str(args.threads),
               "--epochs", str(epochs)]
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if p.returncode != 0:
            raise RuntimeError(f"{side} worker failed:\n{p.stderr[-3000:]}")
        res = json.loads(p.stdout.strip().splitlines()[-1])
    per_step = args.prompts_per_batch if side == "kwise" else pairs_per_batch
    res["batch"] = f"{per_step} {'prompts' if side == 'kwise' else 'pairs'}"
    res["steps_per_epoch"] = math.ceil((res["train_prompts"] if side == "kwise" else res["train_pairs"]) / per_step)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "outputs" / "sft"), help="causal-LM folder (the SFT model)")
    ap.add_argument("--ks", type=int, nargs="+", default=[4, 5, 6, 7, 8, 9])
    ap.add_argument("--n-train", type=int, default=16, help="training prompts per K")
    ap.add_argument("--n-eval", type=int, default=32, help="held-out prompts per K")
    ap.add_argument("--freeze-layers", type=int, default=24, help="frozen bottom layers (both sides)")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--prompts-per-batch", type=int, default=2, help="ours: whole prompts per step")
    ap.add_argument("--pairs-per-batch", type=int, default=0,
                    help="TRL: pairs per step; 0 = as many as ours sees per step (prompts per batch x the data's mean "
                         "pairs per prompt), so both sides make the same number of optimiser steps per epoch")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-oasst", action="store_true")
    ap.add_argument("--equal-time", action="store_true",
                    help="also train ours for as many epochs as fit in TRL's one-epoch time (floor of the speed-up)")
    ap.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reward_kwise_vs_pairwise.json"))
    ap.add_argument("--worker", choices=["kwise", "pairwise"], help=argparse.SUPPRESS)
    ap.add_argument("--train", help=argparse.SUPPRESS)
    ap.add_argument("--eval", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from components.core.env import set_offline_env

    set_offline_env()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    sets = []
    for k in args.ks:
        data = _builtin(k, args.n_train + args.n_eval, seed=k)
        sets.append((f"built-in K={k}", k, data[: args.n_train], data[args.n_train:]))
    if not args.no_oasst and (o := _oasst(args.n_train * 2, args.n_eval * 2)):
        sets.append(("oasst2 (K=2..7)", None, *o))
    rows = []
    print(f"{'data':18} {'side':16} {'batch':>10} {'steps':>6} {'s/epoch':>8} {'fwd seqs':>9} {'RSS MB':>8} "
          f"{'val acc':>8}", flush=True)
    for name, k, train, evals in sets:
        res = {side: run_side(side, train, evals, args) for side in ("kwise", "pairwise")}
        speedup = res["pairwise"]["epoch_seconds"] / res["kwise"]["epoch_seconds"]
        if args.equal_time and int(speedup) > 1:  # the same wall-clock budget as TRL's epoch
            res["kwise_equal_time"] = {**run_side("kwise", train, evals, args, epochs=int(speedup)), "epochs": int(speedup)}
        row = {"data": name, "k": k, "speedup": round(speedup, 2),
               "target_speedup": round(0.8 * (k - 1), 2) if k else None, **{s: res[s] for s in res}}
        rows.append(row)
        for side in res:
            r = res[side]
            print(f"{name:18} {side:16} {r['batch']:>10} {r['steps_per_epoch']:6d} {r['epoch_seconds']:8.1f} "
                  f"{r['forward_sequences']:9d} {r['peak_rss_mb']:8.0f} "
                  f"{r['val_accuracy']:8.3f}", flush=True)
        print(f"{'':18} speed-up {speedup:.2f}x" + (f" (target {0.8 * (k - 1):.1f}x)" if k else ""), flush=True)
    out = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
           f"{platform.processor() or platform.platform()}", "args": {k: v for k, v in vars(args).items()
                                                                       if k not in ("worker", "train", "eval")},
           "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
