"""RLOO or GRPO through TRL, the ``ppo`` stage's alternatives to our PPO (``rl.algorithm``).

The same task as components/stages/ppo.py: the policy starts from SFT, samples answers to the RL
prompts, and is pushed towards the reward model's score (the same RewardScorer: bounded, the
demonstration bias removed, minus ``ppo.missing_eos_penalty`` when an answer never ends), with a
KL penalty of ``ppo.kl_coef`` to the frozen SFT model. What differs: no value model — the
baseline is the other answers to the same prompt (``rl.num_generations`` of them):

    rloo   advantage = r_i - mean of the other k-1 rewards; beta x KL (k1, summed) taken off r_i
    grpo   advantage = (r_i - group mean) / group std; beta x KL (k3, per token) added to the loss

and no pretraining mix (PPO-ptx exists only in components/stages/ppo.py). How each ``ppo.*`` key maps to
TRL's config is in components/core/config.py (RLConfig). Resumable (Trainer checkpoints), logged to
MLflow; the ppo stage saves and registers the result as ``policy`` with tag ``algorithm``.
"""

from __future__ import annotations

import torch

from components.core import trainers as tu
from components.core.config import Config
from components.core.encode import chat_ids, chat_messages
from components.core.errors import ConfigError, DataError
from components.core.models import bf16_supported, freeze_bottom, lora_config

STAGE = "ppo"  # the stage these algorithms stand in for


def _text(x) -> str:
    """A TRL prompt or completion -> its text: a plain string, or the last message of a conversation."""
    return x if isinstance(x, str) else x[-1]["content"]


class RewardFunc:
    """TRL reward function: ``(prompts, completions, completion_ids, **kw) -> list[float]``, the score PPO uses."""

    __name__ = "reward_model"  # TRL names the metric rewards/<__name__>/mean

    def __init__(self, scorer, eos_token_id: int, missing_eos_penalty: float, gold=None):
        self.scorer, self.eos, self.penalty, self.gold = scorer, eos_token_id, missing_eos_penalty, gold

    def __call__(self, prompts, completions, completion_ids=None, log_metric=None, **kwargs) -> list[float]:
        ps, rs = [_text(p) for p in prompts], [_text(c) for c in completions]
        score = self.scorer.score(ps, rs).float()
        if not bool(torch.isfinite(score).all()):
            bad = int((~torch.isfinite(score)).nonzero()[0, 0])
            raise FloatingPointError(f"[{STAGE}] non-finite reward {score[bad].item()} from the reward model "
                                     f"(completion {bad}: {rs[bad][:80]!r})")
        if log_metric is not None:  # TRL's own `reward` includes the penalty; PPO's `reward` is this score
            log_metric("score", score.mean().item())
            if self.gold is not None:
                log_metric("gold_reward", sum(self.gold(p, r) for p, r in zip(ps, rs)) / len(ps))
        if completion_ids is not None:  # TRL keeps each completion up to and including its first EOS
            ended = torch.tensor([bool(ids) and ids[-1] == self.eos for ids in completion_ids])
            score = score - self.penalty * (~ended).float()
        return score.tolist()


def trl_config(cfg: Config, out, use_bf16: bool, **overrides):
    """RLOOConfig / GRPOConfig from the ppo and rl sections; every setting explicit (``overrides`` on top)."""
    from trl import GRPOConfig, RLOOConfig

    pc, rl = cfg.ppo, cfg.rl
    if pc.batch_size % rl.num_generations:
        raise ConfigError(f"rl.num_generations={rl.num_generations} must divide ppo.batch_size={pc.batch_size} "
                          "(responses per update, in whole groups of one prompt)")
    if pc.target_kl is not None:
        print(f"[{STAGE}] warning: ppo.target_kl={pc.target_kl} is ignored by {rl.algorithm}: TRL's beta is fixed "
              f"(ppo.kl_coef={pc.kl_coef})", flush=True)
    return (RLOOConfig if rl.algorithm == "rloo" else GRPOConfig)(**{**dict(
        output_dir=str(out), max_steps=pc.updates, learning_rate=pc.lr, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=pc.max_grad_norm,
        per_device_train_batch_size=pc.batch_size, gradient_accumulation_steps=1,
        steps_per_generation=1, num_iterations=1,  # one rollout, one on-policy step: an update
        num_generations=rl.num_generations, max_completion_length=pc.max_new_tokens,
        temperature=pc.temperature, top_k=pc.top_k, top_p=pc.top_p,
        beta=pc.kl_coef, epsilon=pc.clip_coef, disable_dropout=True,
        activation_checkpointing=False,  # TRL defaults it on (as gradient_checkpointing)
        bf16=use_bf16, use_cpu=not torch.cuda.is_available(),
        logging_steps=1, logging_nan_inf_filter=False, log_completions=False, report_to="none",
        save_strategy="steps", save_steps=pc.save_every, save_total_limit=pc.save_total_limit,
        seed=cfg.common.seed, data_seed=cfg.common.seed, dataloader_num_workers=0,
    ), **overrides})


def curves(log_history: list[dict]) -> list[dict]:
    """Trainer log lines -> one row per update with PPO's column names: ``reward`` is the reward
    model's score (before the missing-EOS penalty, as PPO logs it; TRL's own is ``reward_with_penalty``);
    TRL logs KL as a per-token mean, ``kl`` is per response (x mean length), as PPO reports it."""
    nan = float("nan")
    rows = []
    for h in log_history:
        if "reward" not in h:
            continue
        length = h.get("completions/mean_length", nan)
        kl_tok = h.get("kl") if h.get("kl") is not None else nan
        row = {"update": h["step"], "reward": h.get("score", nan), "kl": kl_tok * length, "kl_per_token": kl_tok,
               "reward_with_penalty": h["reward"], "reward_std": h.get("reward_std", nan), "response_length": length,
               "eos_rate": 1.0 - h.get("completions/clipped_ratio", nan)}
        if "gold_reward" in h:
            row["gold_reward"] = h["gold_reward"]
        rows.append(row)
    return rows


def build_trainer(cfg: Config, policy, tokenizer, prompts: list[str], scorer, out_dir, gold=None, callbacks=(),
                  **args_overrides):
    """TRL's RLOO or GRPO trainer (``rl.algorithm``) for ``policy`` on ``prompts`` against ``scorer``, its
    arguments from ``trl_config`` with ``args_overrides`` (e.g. ``save_strategy="no"``) on top.

    The policy is what the ppo section makes it for our PPO: ``ppo.lora_rank`` > 0 trains that LoRA adapter
    (``peft_config``; TRL's reference is then the adapter disabled, no second copy), else every weight above
    the bottom ``ppo.freeze_layers`` (TRL's reference: a copy of the SFT model)."""
    from datasets import Dataset
    from trl import GRPOTrainer, RLOOTrainer

    pc, algo, sp = cfg.ppo, cfg.rl.algorithm, cfg.common.system_prompt
    # TRL does not truncate prompts: drop those longer than ppo.max_prompt_length (PPO left-truncates them).
    rows = [{"prompt": chat_messages(p, sp)} for p in prompts]
    kept = [r for r in rows if len(chat_ids(tokenizer, r["prompt"], add_generation_prompt=True)) <= pc.max_prompt_length]
    if len(kept) < len(rows):
        print(f"[{STAGE}] warning: {len(rows) - len(kept)} of {len(rows)} prompts are longer than "
              f"ppo.max_prompt_length={pc.max_prompt_length} tokens and are left out", flush=True)
    if not kept:
        raise DataError(f"no training prompts of {len(rows)} fit ppo.max_prompt_length={pc.max_prompt_length}")
    reward = RewardFunc(scorer, tokenizer.eos_token_id, pc.missing_eos_penalty, gold)
    peft = lora_config(pc.lora_rank, pc.lora_alpha, pc.lora_targets) if pc.lora_rank else None
    if peft is None:
        freeze_bottom(policy, pc.freeze_layers)
    args = trl_config(cfg, out_dir, cfg.common.bf16 and bf16_supported(), **args_overrides)
    trainer = (RLOOTrainer if algo == "rloo" else GRPOTrainer)(
        model=policy, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(kept),
        processing_class=tokenizer, callbacks=list(callbacks), peft_config=peft)
    what = f"LoRA rank {pc.lora_rank}" if peft else f"full fine-tuning above {pc.freeze_layers} frozen layers"
    print(f"[{STAGE}] {algo} (TRL): {len(kept)} train prompts, {args.max_steps} updates x {pc.batch_size} responses "
          f"({cfg.rl.num_generations} per prompt), {what}, lr {pc.lr}, beta {pc.kl_coef}, bf16={args.bf16}", flush=True)
    return trainer


def train(cfg: Config, policy, tokenizer, prompts: list[str], scorer, ckpt_dir, gold=None):
    """Train ``policy`` with TRL's RLOO or GRPO (``rl.algorithm``) on ``prompts`` against ``scorer``;
    returns (the trainer, one curve row per update, training seconds). Resumes from ``ckpt_dir``.

    ``gold(prompt, response)`` (optional) is logged beside the reward model's score.
    """
    import time

    trainer = build_trainer(cfg, policy, tokenizer, prompts, scorer, ckpt_dir, gold,
                            callbacks=[tu.mlflow_callback(STAGE)])
    t0 = time.time()
    tu.train_resuming(trainer, ckpt_dir, STAGE, key=tu.resume_key(cfg, STAGE))
    return trainer, curves(trainer.state.log_history), time.time() - t0
