"""What the Trainer-based stages (sft, dpo) share: arguments from params, MLflow logging,
resume from the last checkpoint, and finishing (atomic save, then registration)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from components.config import Config, TrainerSection


def total_steps(s: TrainerSection, n_train: int) -> int:
    return s.total_steps(n_train, s.batch_size * s.grad_accum)


def trainer_kwargs(cfg: Config, s: TrainerSection, out: Path, n_train: int) -> dict:
    """TrainingArguments keywords from a params section: every setting explicit (TRL's defaults are for GPUs)."""
    import torch

    from components.base_model import bf16_supported

    return dict(
        output_dir=str(out), num_train_epochs=s.epochs, max_steps=s.max_steps, learning_rate=s.lr,
        warmup_steps=math.ceil(s.warmup_ratio * total_steps(s, n_train)), weight_decay=s.weight_decay,
        per_device_train_batch_size=s.batch_size, per_device_eval_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum, max_length=s.max_length,
        gradient_checkpointing=s.gradient_checkpointing, bf16=cfg.common.bf16 and bf16_supported(),
        logging_steps=s.logging_steps, save_strategy="steps", save_steps=s.save_steps,
        save_total_limit=s.save_total_limit, eval_strategy="no", report_to="none", seed=cfg.common.seed,
        data_seed=cfg.common.seed, dataloader_num_workers=0, disable_tqdm=False, lr_scheduler_type="linear",
        use_cpu=not torch.cuda.is_available(),
    )


def mlflow_callback(stage: str):
    """Trainer callback: each Trainer log line -> MLflow metrics ``<stage>/<name>``."""
    from transformers import TrainerCallback

    from components.tracking import log_metrics

    class MlflowStageLogger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            log_metrics(stage, {k: v for k, v in (logs or {}).items() if k != "epoch"}, step=state.global_step)

    return MlflowStageLogger()


def last_checkpoint(ckpt_dir: Path) -> Path | None:
    ckpts = sorted(ckpt_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])) if ckpt_dir.exists() else []
    return ckpts[-1] if ckpts else None


def train_resuming(trainer, ckpt_dir: Path, stage: str):
    """trainer.train(), resuming from the newest checkpoint a killed run left; refuses a non-finite loss."""
    resume = last_checkpoint(ckpt_dir)
    if resume:
        print(f"[{stage}] resuming from {resume}", flush=True)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if not math.isfinite(result.training_loss):
        raise FloatingPointError(f"[{stage}] training loss is {result.training_loss}; checkpoints kept in {ckpt_dir}")
    return result


def finish(trainer, tokenizer, cfg: Config, stage: str, registered_name: str, description: str) -> int:
    """Save the model folder atomically, register it, then drop the resume checkpoints. Returns the version."""
    from components.base_model import save_model_dir
    from components.tracking import register_model

    out = cfg.out_dir(stage)
    save_model_dir(trainer.model, tokenizer, out)
    version = register_model(out, registered_name, cfg, stage, description=description)
    shutil.rmtree(cfg.out_dir("checkpoints") / stage, ignore_errors=True)
    return int(version.version)
