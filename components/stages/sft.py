"""Stage sft — supervised fine-tuning on human demonstrations (InstructGPT step 1).

TRL's SFTTrainer on ``demonstrations.jsonl`` as conversational prompt/completion pairs, so the
model's own chat template formats them and the loss covers the response tokens only
(``completion_only_loss``). Users are split train/eval by ``user_id``. The finished model is
written atomically to ``outputs/sft`` and registered in MLflow as ``sft``; Trainer checkpoints
(``outputs/checkpoints/sft``) let a killed run resume.
"""

from __future__ import annotations

import json
import math
import sys
import time

from components.core import trainers as tu
from components.core.config import Config
from components.core.data import FILES, read_jsonl, split_records, take
from components.core.encode import chat_messages
from components.core.env import set_offline_env
from components.core.errors import DataError
from components.core.models import load_model_dir
from components.core.stage import stage_main

STAGE = "sft"


def to_conversation(rec: dict, system_prompt: str) -> dict:
    """A demonstration as TRL's conversational prompt/completion row."""
    return {"prompt": chat_messages(rec["prompt"], system_prompt),
            "completion": [{"role": "assistant", "content": rec["response"]}]}


def _base_source(cfg: Config) -> str:
    """What the base model stage loaded (its summary file), for the registered version's description."""
    summary = cfg.out_dir("base_model") / "rlhf_base_model.json"
    return json.loads(summary.read_text()).get("source", "the base model") if summary.exists() else "the base model"


def run(cfg: Config) -> dict:
    """Fine-tune ``outputs/base_model`` on the demonstrations; write ``outputs/sft``; register ``sft``."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    set_offline_env()
    path = cfg.data_dir / FILES["demonstrations"]
    train, evals = split_records(read_jsonl(path), cfg.common.eval_fraction, cfg.common.seed)
    train = take(train, cfg.sft.max_samples)
    if not train:
        raise DataError(f"{path}: no training demonstrations after the user split (is the file empty?)")
    model, tokenizer = load_model_dir(cfg.out_dir("base_model"))
    sp, max_length = cfg.common.system_prompt, cfg.sft.max_length
    rows = tu.fit_prompts(STAGE, tokenizer, [to_conversation(r, sp) for r in train], max_length)
    eval_rows = [tu.fit_prompt(tokenizer, to_conversation(r, sp), max_length)[0] for r in evals]
    tu.check_lengths(STAGE, tokenizer, rows, max_length, path, ids=[r.get("id", f"line {i + 1}") for i, r in enumerate(train)])
    ckpt_dir = cfg.out_dir("checkpoints") / STAGE
    args = SFTConfig(**tu.trainer_kwargs(cfg, cfg.sft, ckpt_dir, len(train)), completion_only_loss=True, packing=False)
    trainer = SFTTrainer(
        model=model, args=args, processing_class=tokenizer, callbacks=[tu.mlflow_callback(STAGE)],
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
    )
    print(f"[sft] {len(train)} train / {len(evals)} eval demonstrations, {tu.total_steps(cfg.sft, len(train))} steps, "
          f"bf16={args.bf16}", flush=True)
    t0 = time.time()
    result = tu.train_resuming(trainer, ckpt_dir, STAGE, key=tu.resume_key(cfg, STAGE))
    seconds = time.time() - t0
    metrics = {"train_loss": result.training_loss, "train_seconds": round(seconds, 1),
               "train_samples_per_second": result.metrics.get("train_samples_per_second", 0.0),
               "n_train": len(train), "n_eval": len(evals)}
    if evals:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50))
    if not trainer.is_world_process_zero():  # another rank of `accelerate launch`: rank 0 saves and registers
        return metrics
    metrics["model_version"] = tu.finish(trainer, tokenizer, cfg, STAGE, (
        f"SFT of {_base_source(cfg)} on {len(train)} demonstrations; train loss {result.training_loss:.3f}"
        + (f", eval loss {metrics['eval_loss']:.3f}" if "eval_loss" in metrics else "")))
    print(f"[sft] done in {seconds:.0f} s: train loss {result.training_loss:.3f}; registered sft v{metrics['model_version']}",
          flush=True)
    return metrics


if __name__ == "__main__":
    sys.exit(stage_main(STAGE, run))
