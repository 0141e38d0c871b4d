"""What the Trainer-based stages (sft, dpo) share: arguments from params, MLflow logging,
resume from the last checkpoint, and finishing (atomic save, then registration).

A Trainer checkpoint is resumed from only when it was written with the run's ``resume_key`` (the
stage's params hash and the data version, as ``core/checkpoints.py`` keys the reward and PPO ones):
each ``checkpoint-N`` folder gets a ``rlhf_resume_key.json`` once Trainer has written it, and a
checkpoint of other params or data is dropped with a line saying so, never resumed from.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from components.core import faults
from components.core.config import Config, TrainerSection
from components.core.distributed import world_size
from components.core.encode import chat_ids, control_pattern, control_tokens
from components.core.errors import ConfigError, DataError
from components.core.models import bf16_supported, merged, save_model_dir
from components.core.registry import register_model
from components.core.tracking import data_version, log_metrics, params_hash_of

KEY_FILE = "rlhf_resume_key.json"


def total_steps(s: TrainerSection, n_train: int) -> int:
    return s.total_steps(n_train, s.batch_size * s.grad_accum)


def per_device_batch(s: TrainerSection) -> int:
    """``batch_size`` is the global batch (per optimizer step, before grad_accum): under ``accelerate
    launch`` each of N processes takes batch_size / N, so N processes train on the same batches as one."""
    n = world_size()
    if s.batch_size % n:
        raise ConfigError(f"batch_size={s.batch_size} (the global batch) does not split over {n} processes: "
                          f"make it a multiple of {n}")
    return s.batch_size // n


def trainer_kwargs(cfg: Config, s: TrainerSection, out: Path, n_train: int) -> dict:
    """TrainingArguments keywords from a params section: every setting explicit (TRL's defaults are for GPUs)."""
    import torch

    batch = per_device_batch(s)
    return dict(
        output_dir=str(out), num_train_epochs=s.epochs, max_steps=s.max_steps, learning_rate=s.lr,
        warmup_steps=math.ceil(s.warmup_ratio * total_steps(s, n_train)), weight_decay=s.weight_decay,
        per_device_train_batch_size=batch, per_device_eval_batch_size=batch,
        gradient_accumulation_steps=s.grad_accum, max_length=s.max_length,
        gradient_checkpointing=s.gradient_checkpointing, bf16=cfg.common.bf16 and bf16_supported(),
        logging_steps=s.logging_steps, save_strategy="steps", save_steps=s.save_steps,
        save_total_limit=s.save_total_limit, eval_strategy="no", report_to="none", seed=cfg.common.seed,
        data_seed=cfg.common.seed, dataloader_num_workers=0, disable_tqdm=False, lr_scheduler_type="linear",
        use_cpu=not torch.cuda.is_available(),
        logging_nan_inf_filter=False,  # Trainer's default hides a NaN/inf step loss; nonfinite_callback stops on it
    )


ANSWER_KEYS = ("completion", "chosen", "rejected")
CUT_MARK = "… "  # starts a prompt whose beginning was cut by fit_prompts


def fit_prompt(tokenizer, row: dict, max_length: int) -> tuple[dict, bool]:
    """Left-truncate the last user turn of a TRL conversational row whose prompt + longest answer pass
    ``max_length`` tokens, so that the answer fits, but never below ``max_length // 2`` prompt tokens (a
    longer answer then loses its end to TRL, as before). The kept text is the end of the turn (a long
    conversation rendered into one turn keeps its latest exchanges), after ``CUT_MARK``. Returns
    (row, whether it was cut); a row that fits is returned as it is."""
    prompt = row["prompt"]
    p = len(chat_ids(tokenizer, prompt, add_generation_prompt=True))
    a = max(len(chat_ids(tokenizer, prompt + row[k])) for k in ANSWER_KEYS if k in row) - p
    target = max(max_length - a, max_length // 2)
    users = [i for i, m in enumerate(prompt) if m["role"] == "user"]
    if p + a <= max_length or p <= target or not users:
        return row, False
    u = users[-1]
    ids = tokenizer(prompt[u]["content"], add_special_tokens=False)["input_ids"]
    cut, new = p - target, prompt
    for _ in range(4):  # re-encoding the cut text can merge tokens differently: cut again by the excess
        cut = min(cut, len(ids) - 1)
        content = CUT_MARK + tokenizer.decode(ids[cut:]).lstrip()
        new = prompt[:u] + [{**prompt[u], "content": content}] + prompt[u + 1:]
        excess = len(chat_ids(tokenizer, new, add_generation_prompt=True)) - target
        if excess <= 0 or cut >= len(ids) - 1:
            break
        cut += excess
    return {**row, "prompt": new}, True


def fit_prompts(stage: str, tokenizer, rows: list[dict], max_length: int) -> list[dict]:
    """``fit_prompt`` on every row, with a line saying how many prompts lost their beginning."""
    fitted = [fit_prompt(tokenizer, r, max_length) for r in rows]
    n = sum(cut for _, cut in fitted)
    if n:
        print(f"[{stage}] {n} of {len(rows)} rows are longer than {stage}.max_length={max_length} tokens: their prompt "
              f"keeps its end (the latest turns, after '{CUT_MARK.strip()}') so that the answer fits, down to half of "
              "max_length", flush=True)
    return [r for r, _ in fitted]


def check_lengths(stage: str, tokenizer, rows: list[dict], max_length: int, source: Path,
                  ids: list[str] | None = None) -> dict[str, int]:
    """Sequences longer than ``<stage>.max_length`` tokens, before TRL truncates them silently.

    TRL keeps a sequence's start: a row whose prompt + answer is too long loses the end of its answer
    (a warning), and a row whose prompt alone fills ``max_length`` has no answer token left and is
    dropped (a warning naming the rows). When every row would be dropped the stage is refused.
    ``rows`` are TRL conversational rows (``prompt`` + ``completion``, or ``chosen``/``rejected``).
    Rows whose text holds a control token are refused first (``check_control_tokens``).
    """
    check_control_tokens(stage, tokenizer, rows, source, ids)
    cut, dropped = [], []
    for i, row in enumerate(rows):
        name = str(ids[i]) if ids else f"#{i + 1}"
        if len(chat_ids(tokenizer, row["prompt"], add_generation_prompt=True)) >= max_length:
            dropped.append(name)
        elif any(len(chat_ids(tokenizer, row["prompt"] + row[k])) > max_length
                 for k in ANSWER_KEYS if k in row):
            cut.append(name)
    if cut:
        print(f"[{stage}] warning: {len(cut)} of {len(rows)} training rows of {source} are longer than "
              f"{stage}.max_length={max_length} tokens: the end of their answer is cut (first: {', '.join(cut[:5])})",
              flush=True)
    if dropped and len(dropped) == len(rows):
        raise DataError(f"{source}: every training prompt fills {stage}.max_length={max_length} tokens, so no answer "
                        f"token is left to train on (raise {stage}.max_length or shorten the prompts)")
    if dropped:
        print(f"[{stage}] warning: {len(dropped)} of {len(rows)} training rows of {source} have a prompt of "
              f"{stage}.max_length={max_length} tokens or more: no answer token is left, they are dropped "
              f"(first: {', '.join(dropped[:5])})", flush=True)
    return {"truncated": len(cut), "dropped": len(dropped)}


# Which data field a TRL row's messages come from (the system message is common.system_prompt).
ROW_FIELDS = {"completion": "response", "chosen": "responses (chosen)", "rejected": "responses (rejected)"}


def check_control_tokens(stage: str, tokenizer, rows: list[dict], source: Path, ids: list[str] | None = None) -> None:
    """Refuse rows whose text holds a control token of ``tokenizer`` (DataError naming the file, row, field and token).

    TRL's trainers tokenise the rows themselves, with the chat template: text holding ``<|im_start|>``
    would become that token, so a demonstration could write its own system turn. The data gate refuses
    such text (rule ``no_control_tokens``); this is the same rule where the gate was bypassed (a stage run
    alone on other data). The ids the project builds itself never hold one (``core/encode.py``).
    """
    pattern = control_pattern(control_tokens(tokenizer))
    bad = []
    for i, row in enumerate(rows):
        for key in ("prompt", "completion", "chosen", "rejected"):
            for msg in row.get(key) or []:
                m = pattern.search(msg.get("content") or "")
                if m:
                    field = "common.system_prompt" if msg.get("role") == "system" else ROW_FIELDS.get(key, key)
                    bad.append((str(ids[i]) if ids else f"row {i + 1}", field, m))
    if bad:
        name, field, m = bad[0]
        more = f" ({len(bad)} texts hold one)" if len(bad) > 1 else ""
        raise DataError(f"{source} [{name}] {field}: holds the control token {m.group()!r} at position {m.start()}, "
                        f"which the chat template would encode as that token (only the template may write it){more}; "
                        "`rlhf validate` lists every such record (rule no_control_tokens)")


def mlflow_callback(stage: str):
    """Trainer callback: each Trainer log line -> MLflow metrics ``<stage>/<name>``."""
    from transformers import TrainerCallback

    class MlflowStageLogger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero:  # the other ranks of a launch have no MLflow run
                return
            log_metrics(stage, {k: v for k, v in (logs or {}).items() if k != "epoch"}, step=state.global_step)

    return MlflowStageLogger()


def nonfinite_callback(trainer, ckpt_dir: Path, stage: str):
    """Trainer callback: a non-finite loss or gradient stops training at once with FloatingPointError,
    before the optimizer applies it and before that step's checkpoint; checkpoints already written stay."""
    import torch
    from transformers import TrainerCallback

    def fail(what: str, step: int, before_update: bool = True):
        kept = last_checkpoint(ckpt_dir)
        raise FloatingPointError(f"[{stage}] non-finite {what} at step {step}"
                                 + ("; the weights were not updated with it" if before_update else "")
                                 + f"; last good checkpoint: {kept or 'none yet'} (kept in {ckpt_dir})")

    class NonFiniteGuard(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            step = state.global_step + 1
            loss = getattr(trainer, "_tr_loss", None)  # this step's loss summed since the last log line
            if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss).all()):
                fail(f"training loss ({loss.item()})", step)
            grads = [p.grad for p in (model if model is not None else trainer.model).parameters() if p.grad is not None]
            if grads:
                norm = torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)
                if not bool(torch.isfinite(norm)):
                    fail(f"gradient norm ({norm.item()})", step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "grad_norm"):
                v = (logs or {}).get(key)
                if isinstance(v, (int, float)) and not math.isfinite(v):
                    fail(f"{key} ({v}) in the log", state.global_step, before_update=False)

    return NonFiniteGuard()


def resume_key(cfg: Config, stage: str) -> dict[str, str]:
    """What a checkpoint must have been written with to be resumed from: the params the stage declares
    (their hash) and the data version."""
    return {"stage": stage, "params_hash": params_hash_of(cfg, stage), "data_version": data_version()}


def _checkpoints(ckpt_dir: Path) -> list[Path]:
    return sorted((p for p in ckpt_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                  key=lambda p: int(p.name.split("-")[-1])) if ckpt_dir.exists() else []


def _written_with(ckpt: Path) -> dict | None:
    try:
        return json.loads((ckpt / KEY_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def last_checkpoint(ckpt_dir: Path, key: dict | None = None) -> Path | None:
    """The newest complete checkpoint (written with ``key``, when one is given). Trainer writes
    trainer_state.json last and ``rlhf_resume_key.json`` comes after it, so a folder without them is one
    a kill interrupted mid-write (resuming from it would fail; the previous one is used)."""
    done = [p for p in _checkpoints(ckpt_dir) if (p / "trainer_state.json").exists()
            and (key is None or _written_with(p) == key)]
    return done[-1] if done else None


def drop_stale_checkpoints(ckpt_dir: Path, key: dict, stage: str) -> list[Path]:
    """Delete the checkpoints not written with ``key`` (other params or data, or no key: an older
    version's): they cannot be resumed from, and Trainer's rotation (save_total_limit) would keep them
    in place of this run's. Returns them."""
    stale = [p for p in _checkpoints(ckpt_dir) if (p / "trainer_state.json").exists() and _written_with(p) != key]
    for p in stale:
        was = _written_with(p)
        why = "params or data changed since it was written" if was else "it carries no resume key"
        print(f"[{stage}] ignoring {p}: {why}; deleting it", flush=True)
        shutil.rmtree(p)
    return stale


def resume_callback(key: dict):
    """Trainer callback for exact resumes: a log line at every checkpoint step, so a checkpoint's
    log history accounts for every step before it (``whole_run_loss``), and at the last step (so that
    train_loss is the mean over all processes under ``accelerate launch``); ``key`` written into each
    checkpoint once Trainer has saved it (``rlhf_resume_key.json``, temp file + rename); and the
    fault-injection hook (components/core/faults.py) once a checkpoint is on disk."""
    from transformers import TrainerCallback

    class ResumeHooks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save:  # set by DefaultFlowCallback, which runs first
                control.should_log = True
            if state.global_step >= state.max_steps:  # logged losses are averaged over all processes; the
                control.should_log = True             # unlogged rest of train_loss would be rank 0's alone

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                tmp = folder / f".{KEY_FILE}.tmp"
                tmp.write_text(json.dumps(key, sort_keys=True) + "\n")
                tmp.replace(folder / KEY_FILE)
            faults.checkpoint_written(state.global_step)

    return ResumeHooks()


def whole_run_loss(result, log_history: list[dict], resumed_at: int, total_steps: int, stage: str) -> float:
    """Mean train loss over every step, also for a resumed run (Trainer's own covers the steps since
    the resume only): the logged losses up to the checkpoint, weighted by their steps, plus the rest."""
    if not resumed_at:
        return result.training_loss
    done, prev = 0.0, 0
    for h in log_history:
        if "loss" in h and prev < h["step"] <= resumed_at:
            done, prev = done + h["loss"] * (h["step"] - prev), h["step"]
    if prev != resumed_at:
        print(f"[{stage}] warning: the checkpoint's log history stops at step {prev}, not {resumed_at}; "
              "train_loss covers the steps since the resume only", flush=True)
        return result.training_loss
    return (done + result.training_loss * (total_steps - resumed_at)) / total_steps


def train_resuming(trainer, ckpt_dir: Path, stage: str, key: dict):
    """trainer.train(), resuming from the newest checkpoint a killed run left with the same ``key``
    (``resume_key``: params hash and data version; others are dropped); refuses a non-finite loss."""
    drop_stale_checkpoints(ckpt_dir, key, stage)
    resume = last_checkpoint(ckpt_dir, key)
    if resume:
        print(f"[{stage}] resuming from {resume}", flush=True)
        # read now: with save_total_limit 1 the next checkpoint deletes this one during train()
        resumed_at = int(json.loads((resume / "trainer_state.json").read_text())["global_step"])
    trainer.add_callback(resume_callback(key))
    trainer.add_callback(nonfinite_callback(trainer, ckpt_dir, stage))
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if resume:
        loss = whole_run_loss(result, trainer.state.log_history, resumed_at, trainer.state.global_step, stage)
        result = result._replace(training_loss=loss, metrics={**result.metrics, "train_loss": loss})
    if not math.isfinite(result.training_loss):
        raise FloatingPointError(f"[{stage}] training loss is {result.training_loss}; checkpoints kept in {ckpt_dir}")
    return result


def finish(trainer, tokenizer, cfg: Config, stage: str, description: str, tags: dict[str, str] | None = None) -> int:
    """Save the model folder atomically, register it (``tags`` added to the version's), then drop the
    resume checkpoints. Returns the version."""
    out = cfg.out_dir(stage)
    save_model_dir(merged(trainer.model), tokenizer, out)
    version = register_model(out, cfg, stage, description=description, tags=tags)
    shutil.rmtree(cfg.out_dir("checkpoints") / stage, ignore_errors=True)
    return int(version.version)
