"""A small sweep of PPO settings against the same SFT model and reward model: which learning rate,
KL coefficient and parameterisation (full fine-tuning, LoRA, frozen layers) make the policy beat
SFT on the held-out prompts per CPU-second.

Each setting is ``ppo.*`` overrides on top of params.yaml (+ profile). For each: the ppo stage's own
training loop (``components.stages.ppo.train``, the models as ``load_models`` builds them) from
``outputs/sft`` against ``outputs/reward``; then greedy answers of the policy and of SFT to the
held-out RL prompts, judged by the simulated labeler's gold reward: the win rate vs SFT with its
standard error and bootstrap 95% interval, the flaw rates, and the per-update curves (RM score,
gold reward, KL). One process, settings in turn, nothing else should run meanwhile.

    .venv/bin/python benchmarks/ppo_sweep.py --set "lr=1e-5" --set "lora_rank=16 lr=3e-4" --out benchmarks/results/ppo_sweep.json
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


def evaluate_policy(model, tok, prompts: list[str], cfg, ref_answers: list[str] | None = None):
    from components.core.encode import encode_prompts
    from components.core.models import generate

    ids, _ = encode_prompts(tok, prompts, cfg.common.system_prompt, cfg.evaluate.max_prompt_length)
    return generate(model, tok, ids, cfg.evaluate.max_new_tokens, batch=cfg.evaluate.batch_size, by_length=True)


def summarise(prompts: list[str], answers: list[str], ref: list[str], seed: int) -> dict:
    from components.datasets import synth
    from components.maths.stats import compare, mean, win_rate_summary

    gold = [synth.gold_reward(p, a) for p, a in zip(prompts, answers)]
    gref = [synth.gold_reward(p, a) for p, a in zip(prompts, ref)]
    out = {"win_rate": win_rate_summary([compare(x, y) for x, y in zip(gold, gref)], seed=seed),
           "gold": mean(gold), "gold_sft": mean(gref)}
    tasks = [synth.parse_task(p) for p in prompts]
    for f in synth.FLAWS:
        out[f"{f}_rate"] = mean(f in synth.flaws(t, a) for t, a in zip(tasks, answers))
        out[f"{f}_rate_sft"] = mean(f in synth.flaws(t, a) for t, a in zip(tasks, ref))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", action="append", required=True,
                   help="one setting: space-separated ppo.<key>=<value> overrides without the 'ppo.' (repeatable)")
    p.add_argument("-S", dest="common", action="append", default=[], help="an override for every setting (section.key=value)")
    p.add_argument("--eval-prompts", type=int, default=0, help="held-out prompts judged (0: all)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ppo_sweep.json"))
    p.add_argument("--plot", help="also draw each setting's RM score and gold reward per update and against KL (PNG path; one file per setting, -<i> added)")
    args = p.parse_args()

    import torch

    from components.core.config import load_config
    from components.core.data import FILES, read_jsonl, split_records
    from components.core.env import set_offline_env
    from components.core.models import autocast_for, bf16_supported, load_model_dir
    from components.datasets import synth
    from components.stages import ppo

    set_offline_env()
    torch.set_num_threads(torch.get_num_threads())
    base = load_config(overrides=args.common)
    train_p, eval_p = split_records(read_jsonl(base.data_dir / FILES["prompts"]), base.common.eval_fraction,
                                    base.common.seed)
    prompts = [r["prompt"] for r in (eval_p[: args.eval_prompts] if args.eval_prompts else eval_p)]
    sft, tok = load_model_dir(base.out_dir("sft"))
    t0 = time.time()
    ref = evaluate_policy(sft, tok, prompts, base)
    print(f"SFT: {len(prompts)} held-out greedy answers in {time.time() - t0:.0f} s", flush=True)
    del sft
    results = {"date": str(date.today()), "machine": platform.processor() or platform.machine(),
               "threads": torch.get_num_threads(), "n_prompts": len(prompts), "common": args.common, "settings": []}
    for setting in args.set:
        cfg = load_config(overrides=args.common + [f"ppo.{kv}" for kv in setting.split()])
        pc = cfg.ppo
        torch.manual_seed(cfg.common.seed)
        m = ppo.load_models(cfg, pc)
        t0 = time.time()
        history = ppo.train(m, [r["prompt"] for r in train_p], [], pc, seed=cfg.common.seed,
                            system_prompt=cfg.common.system_prompt, autocast=autocast_for(cfg.common.bf16 and bf16_supported()),
                            gold=synth.gold_reward)
        seconds = time.time() - t0
        answers = evaluate_policy(m.policy, tok, prompts, cfg)
        row = {"setting": setting, "train_seconds": round(seconds, 1), **summarise(prompts, answers, ref, cfg.common.seed),
               "curves": [{k: h[k] for k in ("update", "reward", "gold_reward", "kl") if k in h} for h in history],
               "examples": [{"prompt": p_, "policy": a, "sft": r} for p_, a, r in list(zip(prompts, answers, ref))[:6]]}
        results["settings"].append(row)
        w = row["win_rate"]
        print(f"{setting}: {seconds:.0f} s; win rate {w['rate']:.3f} [{w['lo']:.3f}, {w['hi']:.3f}] n={w['n']}; gold "
              f"{row['gold']:.3f} vs SFT {row['gold_sft']:.3f}; signoff {row['signoff_rate']:.2f} (SFT "
              f"{row['signoff_rate_sft']:.2f}), padding {row['padding_rate']:.2f} ({row['padding_rate_sft']:.2f}); "
              f"final KL {history[-1]['kl']:.2f}", flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        if args.plot:
            plot(results, Path(args.plot))
        del m


def plot(results: dict, png: Path) -> None:
    """Gao et al. 2022's picture per setting (``core.plots.overoptimisation_plot``): the proxy (RM
    score) and the truth (gold reward) of the rollouts per update and against the KL to SFT; one PNG
    per setting, ``<png stem>-<i>.png``."""
    from components.core.plots import overoptimisation_plot

    png.parent.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(results["settings"]):
        w = row["win_rate"]
        overoptimisation_plot(row["curves"], png.with_name(f"{png.stem}-{i}{png.suffix}"),
                              f"{row['setting']}; held-out win rate {w['rate']:.2f} [{w['lo']:.2f}, {w['hi']:.2f}]")


if __name__ == "__main__":
    main()
