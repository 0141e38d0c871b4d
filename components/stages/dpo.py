"""Stage dpo — the RL-free baseline: Direct Preference Optimization from SFT on the same comparisons.

It learns from the same rankings as the reward model (``datasets/preferences.py``: the SFT model's
ranked samples, human rankings, a share of controlled corruptions). Each K-way ranking is
expanded into (chosen, rejected) pairs (ties give none); at most
``dpo.max_pairs_per_prompt`` pairs per ranking, chosen with the seed, so K = 9 rankings do not
dominate. TRL's DPOTrainer trains it; registered as ``dpo-policy``, so evaluation can compare
RL (PPO) with supervised preference learning on equal data.
"""

from __future__ import annotations

import random
import sys
import time

from components.core import trainers as tu
from components.core.config import Config
from components.core.data import FILES
from components.core.encode import chat_messages
from components.core.env import set_offline_env
from components.core.errors import DataError
from components.core.models import freeze_bottom, load_model_dir
from components.core.stage import stage_main
from components.datasets import preferences
from components.maths.reward_losses import pairs_from_ranks

STAGE = "dpo"


def expand_pairs(recs: list[dict], max_pairs: int, seed: int, system_prompt: str) -> list[dict]:
    """Rankings -> DPO rows ``{prompt, chosen, rejected}`` in conversational form."""
    rng = random.Random(seed)
    rows = []
    for rec in recs:
        pairs = pairs_from_ranks(rec["ranks"])
        if max_pairs and len(pairs) > max_pairs:
            pairs = rng.sample(pairs, max_pairs)
        for w, l in pairs:
            rows.append({"prompt": chat_messages(rec["prompt"], system_prompt),
                         "chosen": [{"role": "assistant", "content": rec["responses"][w]}],
                         "rejected": [{"role": "assistant", "content": rec["responses"][l]}]})
    return rows


def run(cfg: Config) -> dict:
    """DPO from ``outputs/sft``; write ``outputs/dpo``; register ``dpo-policy``."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    set_offline_env()
    d = cfg.dpo
    path = cfg.data_dir / FILES["comparisons"]
    # the same rankings as the reward model: the SFT model's ranked samples, human rankings, corruptions
    sources = preferences.sources(path, cfg.out_dir("rank") / FILES["comparisons"])
    train, evals = preferences.training_split(sources, cfg.common.eval_fraction, cfg.common.seed,
                                              d.corruption_share, d.max_samples)
    rows = expand_pairs(train, d.max_pairs_per_prompt, cfg.common.seed, cfg.common.system_prompt)
    eval_rows = expand_pairs(evals, d.max_pairs_per_prompt, cfg.common.seed, cfg.common.system_prompt)
    if not rows:
        raise DataError(f"{path}: no training pairs after the user split (is the file empty?)")
    model, tokenizer = load_model_dir(cfg.out_dir("sft"))
    freeze_bottom(model, d.freeze_layers)
    rows = tu.fit_prompts(STAGE, tokenizer, rows, d.max_length)
    eval_rows = [tu.fit_prompt(tokenizer, r, d.max_length)[0] for r in eval_rows]
    tu.check_lengths(STAGE, tokenizer, rows, d.max_length, path)
    ckpt_dir = cfg.out_dir("checkpoints") / STAGE
    args = DPOConfig(**tu.trainer_kwargs(cfg, d, ckpt_dir, len(rows)), beta=d.beta)
    trainer = DPOTrainer(model=model, args=args, processing_class=tokenizer, callbacks=[tu.mlflow_callback(STAGE)],
                         train_dataset=Dataset.from_list(rows),
                         eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None)
    print(f"[dpo] {len(rows)} pairs from {len(train)} rankings, {tu.total_steps(d, len(rows))} steps, beta={d.beta}, "
          f"bf16={args.bf16}", flush=True)
    t0 = time.time()
    result = tu.train_resuming(trainer, ckpt_dir, STAGE, key=tu.resume_key(cfg, STAGE))
    seconds = time.time() - t0
    metrics = {"train_loss": result.training_loss, "train_seconds": round(seconds, 1), "n_pairs": len(rows)}
    if eval_rows:
        ev = trainer.evaluate()
        metrics.update({"val_loss": ev["eval_loss"], "val_pair_accuracy": ev.get("eval_rewards/accuracies", float("nan")),
                        "val_reward_margin": ev.get("eval_rewards/margins", float("nan"))})
    metrics["model_version"] = tu.finish(trainer, tokenizer, cfg, STAGE, (
        f"DPO (beta={d.beta}) from sft on {len(rows)} pairs; train loss {result.training_loss:.3f}"))
    print(f"[dpo] done in {seconds:.0f} s; registered dpo-policy v{metrics['model_version']}", flush=True)
    return metrics


if __name__ == "__main__":
    sys.exit(stage_main(STAGE, run))
