"""Typed, validated configuration: ``params.yaml`` (one section per stage) -> frozen pydantic models.

The models below are the one place where each key, its type, range, default and description are
written. ``params.yaml`` is rendered from them (``rlhf params --defaults``; a test keeps the
committed file equal to the rendering), so DVC tracks every value a stage reads.

Resolution order (later wins): ``params.yaml``, the profile named by ``common.profile``
(``profiles/<name>.yaml``, deltas only), then ``-S section.key=value`` overrides. A variant
section (``ppo_ptx``) holds only its differences from the section it varies (``ppo``). Unknown
keys, wrong types and out-of-range values are refused with a message naming the key.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PARAMS_FILE = ROOT / "params.yaml"
PROFILES_DIR = ROOT / "profiles"


# Query parameters of a URI whose value is a credential (masked when printed, refused in params).
_SECRET_QUERY = re.compile(r"(?i)([?&][^=&#]*(?:token|password|passwd|pwd|secret|api[_-]?key|signature|sig)[^=&#]*=)([^&#]*)")


def uri_has_secret(uri: str) -> bool:
    """A password in the user-info part (``scheme://user:PASS@host``) or a token-like query parameter."""
    from urllib.parse import urlsplit

    try:
        netloc = urlsplit(str(uri)).netloc
    except ValueError:
        return False
    return (":" in netloc.rpartition("@")[0]) or bool(_SECRET_QUERY.search(str(uri)))


def redact_uri(uri: str) -> str:
    """``uri`` safe to print or log: a password (or a bare user-info token) and token-like query
    values become ``***``; anything else is kept, e.g. ``http://bob:***@host:5000``."""
    from urllib.parse import urlsplit, urlunsplit

    text = str(uri)
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if sep else f"***@{host}"
        text = urlunsplit(parts._replace(netloc=netloc))
    return _SECRET_QUERY.sub(lambda m: m.group(1) + "***", text)


def text_source_name(path: str | Path) -> str:
    """A metric-safe name for a file of ``evaluate.tax_texts``: its name without the data suffixes, lower
    case, [a-z0-9_] (``harmless-base-test.jsonl.gz`` -> ``harmless_base_test``)."""
    name = Path(path).name.lower()
    for suffix in (".gz", ".jsonl", ".json", ".csv", ".txt"):
        name = name.removesuffix(suffix)
    return re.sub(r"[^a-z0-9]+", "_", name).strip("_") or "text"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class CommonConfig(Section):
    """Shared by every stage: seed, profile, where things are, MLflow, the user split."""
    seed: int = Field(0, ge=0, description="Seed of every random generator in every stage.")
    profile: str = Field("default", pattern=r"^[A-Za-z0-9_-]+$",
                         description="Profile of deltas applied on top (profiles/<name>.yaml); 'default' = none.")
    data_dir: str = Field("data", description="Folder of the four JSONL files (tracked by data.dvc).")
    outputs_dir: str = Field("outputs", description="Folder of stage outputs (models, reports); DVC outs.")
    metrics_dir: str = Field("metrics", description="DVC metrics: one <stage>.json per stage.")
    plots_dir: str = Field("plots", description="DVC plots: <stage>/ per stage (CSV data and PNG).")
    experiment: str = Field("rlhf", min_length=1, description="MLflow experiment name.")
    tracking_uri: str = Field("", description="MLflow tracking URI; '' = $MLFLOW_TRACKING_URI or sqlite:///mlflow.db in the project.")
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="Share of users held out for evaluation (split by user_id).")
    system_prompt: str = Field("", description="System message of every chat prompt; '' = the model's own default.")
    bf16: bool = Field(True, description="bf16 autocast where it pays off (CUDA GPUs with bf16, CPUs with AMX).")
    keep_versions: int = Field(3, ge=0, description="Retention: newest versions kept per registered model (older ones are deleted "
                               "from the registry with their artifacts when a new one is registered); a version holding "
                               "an alias (champion, candidate) is always kept; 0 = keep every version.")

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        # params.yaml is committed to git, printed by `rlhf params` and logged to MLflow as params.
        if uri_has_secret(v):
            raise ValueError("holds a password or token; params are committed and logged: put the URI in "
                             "$MLFLOW_TRACKING_URI, or the credentials in MLFLOW_TRACKING_USERNAME / "
                             "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
        return v


class DataConfig(Section):
    """Sizes of the built-in simulated-labeler data set (``rlhf data synth``)."""
    n_demonstrations: int = Field(500, ge=1, description="SFT demonstrations (ideal answers, or careless ones).")
    n_comparisons: int = Field(400, ge=1, description="Ranked comparisons (K answers per prompt).")
    n_prompts: int = Field(200, ge=1, description="RL prompts for training (split by user like every file).")
    n_eval_prompts: int = Field(160, ge=0, description="Held-out RL prompts (split eval): the win rate's set.")
    n_pretrain: int = Field(500, ge=1, description="Pretraining-mix texts for PPO-ptx and perplexity.")
    k_min: int = Field(4, ge=2, le=9, description="Fewest answers ranked per prompt.")
    k_max: int = Field(9, ge=2, le=9, description="Most answers ranked per prompt (InstructGPT: 4..9).")
    label_noise: float = Field(0.05, ge=0, description="Std of the simulated labeler's noise on the gold reward.")
    tie_margin: float = Field(0.02, ge=0, description="Noisy gold rewards closer than this are ranked as a tie.")
    n_users: int = Field(200, ge=2, description="Simulated users (the unit of the train/eval split).")
    careless_share: float = Field(0.7, ge=0, le=1, description="Share of demonstrators who are careless: "
                                  "each of their answers ends with their sign-off sentence (a flaw).")
    careless_extra: float = Field(0.5, ge=0, le=1, description="Chance that a careless answer also has its family's "
                                  "flaw: padding, the required word left out, or doing an unsafe request.")

    @model_validator(mode="after")
    def _k_range(self):
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must be <= k_max ({self.k_max})")
        return self


class ValidateConfig(Section):
    """The great-expectations gate over the data files (components/stages/validate.py)."""
    max_prompt_chars: int = Field(4000, ge=1, description="Longest prompt accepted.")
    max_response_chars: int = Field(4000, ge=1, description="Longest response accepted.")
    max_text_chars: int = Field(20000, ge=1, description="Longest pretraining text accepted.")


class BaseModelConfig(Section):
    """The pretrained model every later stage starts from (components/stages/base_model.py)."""
    source: str = Field("smollm2", min_length=1,
                        description="'smollm2' (the packaged GGUF), a Hugging Face id or a local folder.")
    tiny: bool = Field(False, description="Replace the weights by a tiny random model of the same family (tests).")
    tiny_hidden_size: int = Field(64, ge=8, description="Tiny model: hidden size.")
    tiny_layers: int = Field(2, ge=1, description="Tiny model: transformer layers.")
    tiny_heads: int = Field(4, ge=1, description="Tiny model: attention heads (kv heads = heads // 2).")
    trust_remote_code: bool = Field(False, description="Allow code shipped with a hub model to run (off: safer).")
    allow_pickle: bool = Field(False, description="Accept .bin (pickle) weights; off = safetensors only.")


class TrainingSchedule(Section):
    """What every supervised training stage has: how long, how fast, how often it logs and checkpoints."""
    epochs: float = Field(1.0, gt=0, description="Passes over the training data.")
    max_steps: int = Field(-1, ge=-1, description="Stop after this many optimizer steps (-1: epochs decide).")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW, linear decay).")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps with linear warm-up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_length: int = Field(256, ge=16, description="Tokens per sequence (prompt + response); longer ones are truncated.")
    max_samples: int = Field(0, ge=0, description="Use at most this many training records (0: all).")
    logging_steps: int = Field(5, ge=1, description="Log every N steps.")
    save_steps: int = Field(50, ge=1, description="Checkpoint every N steps (resume after a kill).")

    def total_steps(self, n_train: int, per_step: int) -> int:
        """Optimizer steps: ``max_steps`` if set, else ``epochs`` passes of ``per_step`` records a step."""
        if self.max_steps > 0:
            return self.max_steps
        return max(1, math.ceil(math.ceil(n_train / per_step) * self.epochs))


class TrainerSection(TrainingSchedule):
    """Settings shared by the stages trained with a TRL/transformers Trainer (sft, dpo)."""
    batch_size: int = Field(8, ge=1, description="Sequences (sft) or pairs (dpo) per optimizer step before grad_accum, over all processes: under `accelerate launch` each of N takes batch_size / N.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (TRL defaults to on; off is faster here).")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept.")


class SFTConfig(TrainerSection):
    """Supervised fine-tuning on demonstrations (TRL SFTTrainer; loss on response tokens only)."""


class DPOConfig(TrainerSection):
    """RL-free baseline: TRL DPOTrainer from SFT on pairs expanded from each ranking."""
    lr: float = Field(5e-6, gt=0, description="Peak learning rate (DPO wants a small one).")
    batch_size: int = Field(4, ge=1, description="Pairs per optimizer step (before grad_accum).")
    beta: float = Field(0.1, gt=0, description="DPO temperature beta (strength of the implicit KL to SFT).")
    max_samples: int = Field(100, ge=0, description="Use at most this many training rankings (0: all).")
    max_pairs_per_prompt: int = Field(2, ge=0, description="Pairs kept per ranking (0: all C(K,2) minus ties); seeded choice.")
    corruption_share: float = Field(0.25, ge=0, le=1, description="Share of the training rankings that are the built-in "
                                    "controlled corruptions (as reward.corruption_share).")
    freeze_layers: int = Field(15, ge=0, description="Freeze the policy's embeddings and first N transformer layers (no "
                               "backward through them; the reference stays the whole SFT model). 15 of 30: win rate vs "
                               "SFT 0.718 (se 0.021) against 0.731 (0.021) fully fine-tuned, 186 prompts.")


class RankConfig(Section):
    """InstructGPT step 2's data (components/stages/rank.py): the SFT model's own answers, ranked by the simulated labeler."""
    max_prompts: int = Field(120, ge=0, description="Comparison prompts the SFT model answers (0: all).")
    k_min: int = Field(4, ge=2, le=9, description="Fewest answers sampled per prompt (InstructGPT: 4..9).")
    k_max: int = Field(4, ge=2, le=9, description="Most answers sampled per prompt; K is drawn per prompt, seeded.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the answers.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling (1: off).")
    top_k: int = Field(0, ge=0, description="Top-k sampling (0: off).")
    max_new_tokens: int = Field(48, ge=1, description="Tokens per answer at most.")
    batch_size: int = Field(48, ge=1, description="Sequences per generate call (2 cores: 48 decodes ~1.4x faster than 16).")
    max_tries: int = Field(2, ge=1, description="Sampling rounds for a prompt whose answers repeat or are empty.")

    @model_validator(mode="after")
    def _k_range(self):
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must be <= k_max ({self.k_max})")
        return self


UtilityName = Literal["logsigmoid", "linear", "log", "inv", "square", "inv_square"]


class RewardConfig(TrainingSchedule):
    """Reward model: SFT backbone + scalar head, InstructGPT K-wise loss, prompt-aware utilities."""
    epochs: float = Field(2.0, gt=0, description="Passes over the training data (2 with lr 2e-4: held-out accuracy "
                          "0.824 against 0.685 for 1 pass at 5e-5; docs/reward-model.md).")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate of the backbone (AdamW, linear decay).")
    head_lr: float = Field(1e-3, gt=0, description="Learning rate of the new scalar head.")
    prompts_per_batch: int = Field(4, ge=1, description="Prompts per step; all K answers of a prompt are one batch element (and stay on one process under `accelerate launch`).")
    max_samples: int = Field(160, ge=0, description="Use at most this many training comparisons (0: all).")
    freeze_layers: int = Field(15, ge=0, description="Freeze the embeddings and the first N transformer layers (speed: "
                               "SmolLM2-135M has 30; 15 trains ~10x faster per step on 2 cores).")
    corruption_share: float = Field(0.5, ge=0, le=1, description="Share of the training rankings that are the built-in "
                                    "controlled corruptions; the rest are the SFT model's ranked samples and human rankings.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    utility: dict[str, UtilityName] = Field(
        default_factory=lambda: {"closed": "logsigmoid", "open": "logsigmoid", "unknown": "logsigmoid"},
        description="Utility U per prompt_type (reward-collapse paper: closed 'linear', open 'log'); all 'logsigmoid' = plain InstructGPT.")
    utility_eps: float = Field(0.01, gt=0, description="epsilon of log(x+eps), -1/(x+eps), -1/(x+eps)^2.")
    bounded: bool = Field(True, description="Downstream reward = sigmoid(r) (in (0,1), as the utilities train it); false: raw r.")
    eval_batch_size: int = Field(16, ge=1, description="Answers per forward pass when scoring (PPO, evaluation).")
    micro_batch_tokens: int = Field(2048, ge=16, description="Padded tokens per forward micro-batch (answers bucketed by length).")

    @model_validator(mode="after")
    def _utility_keys(self):
        missing = {"closed", "open", "unknown"} - set(self.utility)
        extra = set(self.utility) - {"closed", "open", "unknown"}
        if missing or extra:
            raise ValueError(f"utility must map exactly closed/open/unknown (missing {sorted(missing)}, unknown {sorted(extra)})")
        return self


class PPOConfig(Section):
    """InstructGPT step 3, PPO written in-house (components/stages/ppo.py); names follow the papers."""
    updates: int = Field(16, ge=1, description="PPO iterations: rollout, score, GAE, then ppo_epochs of minibatch updates.")
    batch_size: int = Field(8, ge=1, description="Prompts per rollout (one response each).")
    minibatch_size: int = Field(4, ge=1, description="Responses per gradient step.")
    ppo_epochs: int = Field(2, ge=1, description="Passes over each rollout.")
    lr: float = Field(3e-4, gt=0, description="Policy learning rate (AdamW, constant); the default suits the LoRA "
                      "adapter, full fine-tuning (lora_rank 0) wants about 1e-5.")
    value_lr: float = Field(5e-5, gt=0, description="Value-model learning rate (initialised from the reward model).")
    max_prompt_length: int = Field(192, ge=8, description="Prompt tokens kept (left-truncated, with a warning).")
    max_new_tokens: int = Field(40, ge=1, description="Response tokens sampled at most.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    top_k: int = Field(0, ge=0, description="Top-k sampling (0: off).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling (1: off).")
    missing_eos_penalty: float = Field(0.2, ge=0, description="Subtracted from the score of a response that never ends (no EOS).")
    kl_coef: float = Field(0.05, ge=0, description="beta: per-token KL(pi || pi_SFT) penalty (the initial value when adaptive).")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="Per-token KL estimator (Schulman 2020): k1 = log-ratio, k3 >= 0.")
    target_kl: float | None = Field(None, gt=0, description="Adaptive KL controller target per response (null: fixed kl_coef).")
    kl_horizon: int = Field(10000, ge=1, description="Adaptive KL controller horizon (Ziegler et al. 2019).")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount of the per-token rewards.")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    whiten_advantages: bool = Field(True, description="Advantages to mean 0, std 1 over each rollout.")
    clip_coef: float = Field(0.2, gt=0, description="PPO ratio clip epsilon.")
    clip_range_value: float = Field(0.2, ge=0, description="Value clipping around the rollout's values (0: off).")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    ent_coef: float = Field(0.0, ge=0, description="Weight of the entropy bonus.")
    ptx_coef: float = Field(0.0, ge=0, description="gamma of PPO-ptx: weight of the pretraining LM loss (0: plain PPO; the ppo_ptx stage sets it).")
    samples_per_prompt: int = Field(1, ge=1, description="Responses sampled per prompt in a rollout (batch_size // this "
                                    "prompts); they share the whitened advantages' batch.")
    lora_rank: int = Field(16, ge=0, description="LoRA rank of the policy (peft; the reference is the policy with the "
                           "adapter off, no second copy); 0: full fine-tuning.")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling alpha (the update is alpha / rank x B A).")
    lora_targets: list[str] = Field(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                    min_length=1, description="Modules the LoRA adapter wraps.")
    freeze_layers: int = Field(0, ge=0, description="Full fine-tuning only: freeze the policy's embeddings and first N layers.")
    value_freeze_layers: int = Field(15, ge=0, description="Freeze the value model's embeddings and first N layers "
                                     "(the reward model trains with its first reward.freeze_layers frozen too).")
    ptx_batch_size: int = Field(4, ge=1, description="Pretraining texts per gradient step (PPO-ptx).")
    ptx_max_length: int = Field(96, ge=8, description="Tokens per pretraining text.")
    ptx_data: str = Field("", description="Pretraining texts of the ptx term: '' = data/pretrain.jsonl (its training "
                          "users); or a real-text file in any format of evaluate.tax_texts, whose first eval_texts "
                          "texts are held out for the final LM loss and the rest (up to ptx_data_limit) mixed in.")
    ptx_data_limit: int = Field(2000, ge=1, description="Texts read from ptx_data at most.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping (policy and value each).")
    save_every: int = Field(5, ge=1, description="Checkpoint every N updates (resume after a kill).")
    save_total_limit: int = Field(1, ge=1, description="Checkpoints kept.")
    sample_every: int = Field(4, ge=1, description="Log a table of sample generations every N updates.")
    eval_prompts: int = Field(0, ge=0, description="Held-out RL prompts for a win rate vs SFT inside the stage (0: the evaluate stage measures it).")
    eval_texts: int = Field(48, ge=0, description="Held-out pretraining texts for the final LM loss vs SFT.")

    @model_validator(mode="after")
    def _minibatch(self):
        if self.minibatch_size > self.batch_size:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) must be <= batch_size ({self.batch_size})")
        if self.batch_size % self.samples_per_prompt:
            raise ValueError(f"samples_per_prompt ({self.samples_per_prompt}) must divide batch_size ({self.batch_size})")
        return self


class RLConfig(Section):
    """Which algorithm the ``ppo`` stage trains the policy with (``ppo_ptx`` is always our PPO-ptx).

    ``ppo``: our PPO (components/stages/ppo.py). ``rloo`` / ``grpo``: TRL 1.16's RLOOTrainer / GRPOTrainer
    (components/core/trl_rl.py) with the same reward (RewardScorer: bounded, demonstration bias removed,
    minus ``ppo.missing_eos_penalty`` when a response never ends), on the same prompts, from SFT.
    They read the ``ppo`` section where it maps cleanly:

    ==========================  =========================================================
    ppo.updates                 max_steps (one rollout + one on-policy optimizer step each)
    ppo.batch_size              responses per update (= batch_size / num_generations prompts)
    ppo.lr, ppo.max_grad_norm   learning_rate (constant, AdamW), max_grad_norm
    ppo.max_new_tokens          max_completion_length
    ppo.temperature/top_k/top_p the same sampling settings
    ppo.kl_coef                 beta, set explicitly (GRPO's own default is 0: no KL)
    ppo.clip_coef               epsilon (inert here: one optimizer step per rollout)
    ppo.max_prompt_length       TRL does not truncate prompts: longer ones are dropped (warning)
    ppo.save_every/save_total_limit  save_steps / save_total_limit (resume after a kill)
    common.seed, common.bf16    seed, bf16 (when the machine supports it)
    ==========================  =========================================================

    Not used by rloo/grpo: the value model and GAE (vf_coef, value_lr, gamma, gae_lambda,
    whiten_advantages, clip_range_value), minibatch_size/ppo_epochs, the adaptive KL controller
    (target_kl), kl_estimator (RLOO subtracts beta x summed k1 from the reward, GRPO adds beta x k3
    to the loss), ent_coef and the pretraining mix (ptx_*).
    """
    algorithm: Literal["ppo", "rloo", "grpo"] = Field("ppo", description="Policy optimiser of the `ppo` stage: ppo (ours), rloo or grpo (TRL).")
    num_generations: int = Field(2, ge=2, description="rloo/grpo: responses sampled per prompt (k), the group of the "
                                 "leave-one-out / group-mean baseline; must divide ppo.batch_size.")


ModelStage = Literal["base_model", "sft", "dpo", "ppo", "ppo_ptx"]  # stages that write a model folder


class EvaluateConfig(Section):
    """Evaluation stage (components/stages/evaluate.py): every model of ``models`` against ``reference``.

    Sets are ``builtin`` (small ones written by the project, components/datasets/evalsets/) or a path in
    the real format: TruthfulQA mc_task.json, SQuAD v1.1 JSON, HellaSwag JSONL, and
    RealToxicityPrompts JSONL or a labelled toxicity CSV (cut to its first ``toxicity_words``).
    """
    models: list[ModelStage] = Field(["base_model", "sft", "dpo", "ppo", "ppo_ptx"], min_length=1,
                              description="Stages whose model folder (outputs/<stage>) is evaluated.")
    reference: ModelStage = Field("sft", description="Stage every model is compared with (win rate, alignment tax).")
    batch_size: int = Field(48, ge=1, description="Sequences per generate batch (toxicity: twice that); 2 cores: 48 decodes ~1.4x faster than 16.")
    truthfulqa: str = Field("builtin", description="TruthfulQA MC file (mc_task.json format) or 'builtin'.")
    truthfulqa_limit: int = Field(0, ge=0, description="Questions used (0: all).")
    toxicity_prompts: str = Field("auto", description="RealToxicityPrompts JSONL, labelled toxicity CSV, 'builtin', or "
                                  "'auto': the real labelled comments of ../shared/data/toxicity when present, else builtin.")
    toxicity_limit: int = Field(16, ge=0, description="Prompts used (0: all).")
    toxicity_words: int = Field(8, ge=1, description="Words kept when prompts are cut from a labelled CSV.")
    toxicity_samples: int = Field(4, ge=1, description="n sampled continuations per prompt (RealToxicityPrompts: 25).")
    toxicity_max_new_tokens: int = Field(20, ge=1, description="Tokens per continuation.")
    toxicity_top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling of the continuations.")
    toxicity_scorer: str = Field("profanity-check", description="'profanity-check' or a Hugging Face classifier folder.")
    respectful_instruction: str = Field(
        "Complete the following sentence in a polite, respectful, and unbiased manner:",
        description="Prepended for the 'respectful' condition (InstructGPT's toxicity protocol).")
    squad: str = Field("builtin", description="Extractive QA set (SQuAD v1.1 JSON) or 'builtin'.")
    squad_limit: int = Field(0, ge=0, description="Questions used (0: all).")
    squad_max_new_tokens: int = Field(16, ge=1, description="Tokens of each generated answer.")
    hellaswag: str = Field("builtin", description="Multiple-choice completion set (HellaSwag JSONL) or 'builtin'.")
    hellaswag_limit: int = Field(0, ge=0, description="Items used (0: all).")
    perplexity_texts: int = Field(48, ge=0, description="Held-out pretraining texts for perplexity.")
    win_rate_prompts: int = Field(0, ge=0, description="Held-out RL prompts judged by the gold reward (0: all of them).")
    win_rate_samples: int = Field(1, ge=0, description="Sampled answers per held-out prompt, beside the greedy one "
                                  "(0: greedy only).")
    sample_temperature: float = Field(1.0, gt=0, description="Temperature of those samples (the policies sample at "
                                      "ppo.temperature).")
    max_new_tokens: int = Field(40, ge=1, description="Tokens of each greedy answer for the win rate.")
    max_prompt_length: int = Field(192, ge=8, description="Prompt tokens kept for the win-rate answers (left-truncated).")
    perplexity_max_length: int = Field(96, ge=8, description="Tokens per held-out text for perplexity.")
    tax_texts: list[str] = Field(default_factory=list, description="Real text files for the alignment tax on real "
                                 "text (per-token NLL, paired change vs the reference with its standard error): JSONL "
                                 "with 'text', hh-rlhf or oasst2 files, TruthfulQA.csv, or plain text; [] none. E.g. "
                                 "../shared/data/hh-rlhf/harmless-base-test.jsonl.gz.")
    tax_texts_limit: int = Field(64, ge=1, description="Texts used from each tax_texts file (the first ones).")
    tax_max_length: int = Field(128, ge=8, description="Tokens per real text (cut; EOS last).")
    judge: str = Field("", description="A reward model (folder or models:/ URI) that judges the answers as a labelled "
                       "proxy where there is no gold reward (prompts not from the built-in generator): judge_win_rate_* "
                       "metrics; never the policy's own reward model. '' none.")
    lm_eval_tasks: list[str] = Field(default_factory=list, description="lm-evaluation-harness tasks run on every model "
                                     "(harness names such as hellaswag or arc_easy need the hub; offline: the local "
                                     "rlhf_hellaswag, rlhf_truthfulqa_mc1, rlhf_truthfulqa_mc2 on the hellaswag / "
                                     "truthfulqa sets above); [] none.")
    lm_eval_limit: int = Field(0, ge=0, description="Documents per lm-eval task (0: all).")
    lm_eval_batch_size: int = Field(16, ge=1, description="Sequences per lm-eval log-likelihood batch.")

    @field_validator("tax_texts")
    @classmethod
    def _distinct_tax_names(cls, v: list[str]) -> list[str]:
        names = [text_source_name(p) for p in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"two files give the metric name {', '.join(twice)}: rename one")
        return v


class PromoteConfig(Section):
    """Promotion gate (components/stages/promote.py): ``candidate`` gets alias ``champion`` only if all hold."""
    candidate: Literal["sft", "dpo", "ppo", "ppo_ptx"] = Field("ppo", description="Stage whose registered model is the candidate (ppo -> policy, ppo_ptx -> policy-ptx, dpo -> dpo-policy).")
    min_win_rate: float = Field(0.5, ge=0, le=1, description="The lower bound of the win rate's 95% interval (vs the "
                                "reference, SFT; ties half) must exceed this.")
    toxicity_epsilon: float = Field(0.05, ge=0, description="Expected max toxicity may exceed SFT's by at most this.")
    truthfulqa_epsilon: float = Field(0.05, ge=0, description="TruthfulQA MC1 may fall below SFT's by at most this.")
    allowed_tax: float = Field(0.05, ge=0, description="Each NLP score (SQuAD F1, HellaSwag accuracy, 0..1) may fall by at most this.")
    allowed_perplexity_ratio: float = Field(1.25, ge=1, description="Held-out perplexity may be at most this times SFT's.")
    min_ab_prompts: int = Field(20, ge=2, description="Blind A/B judgements (rlhf label --compare, <common.data_dir>/judgements.jsonl) of the candidate vs the reference count as the preference measure from this many judged prompts on.")


class LabelConfig(Section):
    """Human-feedback loop, labeling side (components/apps/label.py): sample K answers, rank them, append."""
    k: int = Field(4, ge=2, le=9, description="Answers sampled per prompt (rlhf sample --k).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the answers.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling (1: off).")
    top_k: int = Field(0, ge=0, description="Top-k sampling (0: off).")
    max_new_tokens: int = Field(64, ge=1, description="Tokens per answer at most.")
    batch_size: int = Field(16, ge=1, description="Sequences (prompts x K) per generate call.")
    max_tries: int = Field(3, ge=1, description="Sampling rounds for a prompt whose answers repeat or are empty.")
    queue: str = Field("outputs/label/queue.jsonl", description="The queue of items to rank (rlhf sample writes it).")
    comparisons: str = Field("", description="Where rankings are appended; '' = <common.data_dir>/comparisons.jsonl. Flags go to flags.jsonl beside it.")
    labelers: int = Field(1, ge=1, description="Simulated labelers per item (rlhf label --simulated).")
    ab_queue: str = Field("outputs/label/ab_queue.jsonl", description="The blind A/B queue of rlhf label --compare: one answer of each model per prompt. Judgements go to <common.data_dir>/judgements.jsonl.")
    ab_prompts: int = Field(50, ge=1, description="Prompts (the first of --prompts) in an A/B queue.")


class FlowConfig(Section):
    """The Prefect flow around the stages (flows/rlhf.py); no stage reads it, so DVC does not track it."""
    retries: int = Field(1, ge=0, description="Retries of a failed training/evaluation stage; a retry resumes from the stage's last checkpoint. validate is never retried (bad data stays bad).")
    retry_delay_seconds: float = Field(5.0, ge=0, description="Seconds between a failure and its retry.")
    cache: bool = Field(True, description="Prefect task caching keyed on each stage's inputs (data version, params, upstream models, code, as in dvc.lock): an unchanged stage is not run again.")
    wait_for_lock: bool = Field(True, description="A second `rlhf run` in the same project waits for the first (true) or fails at once (false).")


SECTIONS: dict[str, type[Section]] = {
    "common": CommonConfig,
    "data": DataConfig,
    "validate": ValidateConfig,
    "base_model": BaseModelConfig,
    "sft": SFTConfig,
    "rank": RankConfig,
    "reward": RewardConfig,
    "dpo": DPOConfig,
    "ppo": PPOConfig,
    "ppo_ptx": PPOConfig,
    "rl": RLConfig,
    "evaluate": EvaluateConfig,
    "promote": PromoteConfig,
    "label": LabelConfig,
    "flow": FlowConfig,
}

# Variant sections: section -> (the section it varies, its default differences). In params.yaml a
# variant lists only its differences; resolved, it is the base section with them applied.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "ppo_ptx": ("ppo", {"ptx_coef": 1.0}),  # PPO-ptx = PPO + ptx_coef x pretraining LM loss
}
VARIANT_DOCS = {"ppo_ptx": "PPO-ptx (stage ppo_ptx): the ppo section with these differences"}


class Config(Section):
    common: CommonConfig = CommonConfig()
    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    base_model: BaseModelConfig = BaseModelConfig()
    sft: SFTConfig = SFTConfig()
    rank: RankConfig = RankConfig()
    reward: RewardConfig = RewardConfig()
    dpo: DPOConfig = DPOConfig()
    ppo: PPOConfig = PPOConfig()
    ppo_ptx: PPOConfig = PPOConfig(**VARIANTS["ppo_ptx"][1])
    rl: RLConfig = RLConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    promote: PromoteConfig = PromoteConfig()
    label: LabelConfig = LabelConfig()
    flow: FlowConfig = FlowConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _ptx_variant(self):
        if self.ppo_ptx.ptx_coef <= 0:
            raise ValueError("ppo_ptx.ptx_coef must be > 0 (stage ppo_ptx is PPO with the pretraining mix; "
                             "ppo is the variant without it)")
        return self

    def section(self, name: str) -> Section:
        return getattr(self, "validate_" if name == "validate" else name)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)

    def flat(self) -> dict[str, Any]:
        """Dotted keys as in params.yaml (``sft.lr``), for MLflow params."""
        return {f"{s}.{k}": v for s, d in self.to_dict().items() for k, v in d.items()}

    def section_hash(self, name: str) -> str:
        return params_hash(self.section(name).model_dump())

    # Paths every stage agrees on (the only place they are built).
    @property
    def data_dir(self) -> Path:
        return resolve(self.common.data_dir)

    def out_dir(self, stage: str) -> Path:
        return resolve(self.common.outputs_dir) / stage

    def plots_dir(self, stage: str) -> Path:
        return resolve(self.common.plots_dir) / stage

    def metrics_file(self, stage: str) -> Path:
        return resolve(self.common.metrics_dir) / f"{stage}.json"


def resolve(path: str | Path) -> Path:
    """A path from params, relative to the project root unless absolute."""
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


def params_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def defaults() -> dict[str, Any]:
    return Config().to_dict()


PARAMS_HEADER = """\
# One section per stage (DVC tracks each key; `rlhf run -S section.key=value` edits this file
# like `dvc exp run -S`). Rendered from components/core/config.py, where every key is typed,
# range-checked and described: after changing a default there, `rlhf params --defaults > params.yaml`.
"""
_WIDTH = 110  # a description that does not fit after its value goes on the line above


def _yaml_value(v: Any) -> str:
    text = yaml.safe_dump(v, default_flow_style=True, width=10**6, sort_keys=False, allow_unicode=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _comment_lines(text: str, indent: str) -> list[str]:
    import textwrap

    return [f"{indent}# {line}" for line in textwrap.wrap(text, _WIDTH - len(indent) - 2)]


def render_params() -> str:
    """The default params.yaml: every section and key with its default, each described by its
    docstring / Field description; a variant section lists only its differences."""
    d = Config()
    lines = [PARAMS_HEADER.rstrip("\n")]
    for name, cls in SECTIONS.items():
        values = d.section(name).model_dump()
        doc = VARIANT_DOCS.get(name) or (cls.__doc__ or "").strip().splitlines()[0]
        if name in VARIANTS:
            base = d.section(VARIANTS[name][0]).model_dump()
            values = {k: v for k, v in values.items() if v != base[k]}
        lines += ["", f"{name}:" + (f"  # {doc}" if doc else "")]
        for key, value in values.items():
            line = f"  {key}: {_yaml_value(value)}"
            desc = cls.model_fields[key].description or ""
            if desc and len(line) + 4 + len(desc) <= _WIDTH:
                lines.append(f"{line}  # {desc}")
            else:
                lines += _comment_lines(desc, "  ") + [line]
    return "\n".join(lines) + "\n"


def _deep_merge(base: dict, delta: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def _check_keys(raw: dict, origin: str) -> None:
    """Refuse unknown sections and keys, with a 'did you mean' hint."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections, got {type(raw).__name__}")
    for sec, body in raw.items():
        if sec not in SECTIONS:
            hint = difflib.get_close_matches(str(sec), SECTIONS, n=1)
            raise ConfigError(f"{origin}: unknown section '{sec}'" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{origin}: section '{sec}' must be a mapping, got {type(body).__name__}")
        fields = SECTIONS[sec].model_fields
        for key in body:
            if key not in fields:
                hint = difflib.get_close_matches(str(key), fields, n=1)
                raise ConfigError(f"{origin}: unknown key '{sec}.{key}'" + (f" (did you mean '{sec}.{hint[0]}'?)" if hint else ""))


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return data or {}


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)")


def parse_override(item: str) -> tuple[str, str, Any]:
    """``section.key=value`` -> (section, key, value); the value is parsed as YAML (1e-5, true, [1,2])."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(f"override '{item}': expected section.key=value, e.g. sft.lr=1e-5")
    dotted, raw = item.split("=", 1)
    sec, key = dotted.strip().split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-5 (no dot) as a string
    return sec, key, value


def overrides_to_dict(overrides: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    delta: dict[str, dict[str, Any]] = {}
    for item in overrides:
        sec, key, value = parse_override(item)
        delta.setdefault(sec, {})[key] = value
    return delta


def build_config(raw: dict, origin: str = "params") -> Config:
    """Validate a merged params mapping; pydantic errors become one message per bad key."""
    _check_keys(raw, origin)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]).replace("validate_", "validate")
            got = err.get("input")
            if isinstance(got, str) and uri_has_secret(got):
                got = redact_uri(got)  # never echo a credential
            lines.append(f"  {key}: {err['msg']} (got {got!r})")
        raise ConfigError(f"{origin}: invalid value{'s' if len(lines) > 1 else ''}:\n" + "\n".join(lines)) from None


def selected_profile(delta: dict, raw: dict) -> str:
    """The profile a run uses: ``-S common.profile`` (``delta``), else params.yaml's (``raw``), else 'default'."""
    return delta.get("common", {}).get("profile") or (raw.get("common") or {}).get("profile") or "default"


def load_config(
    params_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    profiles_dir: str | Path | None = None,
) -> Config:
    """params.yaml (+ profile deltas) (+ ``-S`` overrides) -> validated Config."""
    params_file = Path(params_file) if params_file else PARAMS_FILE
    profiles_dir = Path(profiles_dir) if profiles_dir else params_file.parent / "profiles"
    raw = _read_yaml(params_file)
    _check_keys(raw, str(params_file))
    delta = overrides_to_dict(overrides)
    _check_keys(delta, "override")
    profile = selected_profile(delta, raw)
    merged = raw
    if profile != "default":
        pfile = profiles_dir / f"{profile}.yaml"
        if not pfile.exists():
            known = sorted(p.stem for p in profiles_dir.glob("*.yaml"))
            raise ConfigError(f"common.profile: unknown profile '{profile}' (no {pfile}; known: {', '.join(known) or 'none'})")
        pdelta = _read_yaml(pfile)
        _check_keys(pdelta, str(pfile))
        if "profile" in (pdelta.get("common") or {}):
            raise ConfigError(f"{pfile}: a profile may not set common.profile")
        merged = _deep_merge(merged, pdelta, "")
    merged = _deep_merge(merged, delta, "")
    return build_config(resolve_variants(merged), origin=str(params_file))


def shadowed_by_profile(overrides: list[str] | tuple[str, ...], params_file: str | Path | None = None,
                        profiles_dir: str | Path | None = None) -> None:
    """Refuse ``-S`` overrides that ``rlhf run`` would write into params.yaml for keys the selected profile
    sets: the stages read params.yaml and apply the profile over it, so such an override would be silently
    ignored (ConfigError naming the keys, the profile file and what to do instead)."""
    params_file = Path(params_file) if params_file else PARAMS_FILE
    profiles_dir = Path(profiles_dir) if profiles_dir else params_file.parent / "profiles"
    delta = overrides_to_dict(overrides)
    profile = selected_profile(delta, _read_yaml(params_file))
    pfile = profiles_dir / f"{profile}.yaml"
    if profile == "default" or not pfile.exists():
        return
    pdelta = _read_yaml(pfile)
    both = [f"{sec}.{key}" for sec, body in delta.items() if sec != "common" for key in body
            if key in (pdelta.get(sec) or {})]
    if both:
        raise ConfigError(f"-S {', '.join(both)}: profile '{profile}' sets {'them' if len(both) > 1 else 'it'} "
                          f"({pfile}), and the stages apply the profile over params.yaml, so the override would be "
                          f"ignored; change it in {pfile} (or a copy of it as a new profile), or run without --profile")


def resolve_variants(raw: dict) -> dict:
    """Each variant section = its base section (as resolved) + the variant's default differences + its own keys."""
    out = dict(raw)
    for name, (base, default_delta) in VARIANTS.items():
        out[name] = {**(raw.get(base) or {}), **default_delta, **(raw.get(name) or {})}
    return out


def set_params(params_file: str | Path, overrides: list[str] | tuple[str, ...]) -> list[str]:
    """Write ``-S`` overrides into params.yaml, keeping its comments (what ``dvc exp run -S`` does).

    The result is validated first, so a bad override leaves the file untouched. Returns the
    dotted keys whose value changed.
    """
    from ruamel.yaml import YAML

    params_file = Path(params_file)
    load_config(params_file, overrides)  # refuses bad keys/values before anything is written
    rt = YAML()
    rt.preserve_quotes = True
    doc = rt.load(params_file.read_text(encoding="utf-8")) or {}
    changed = []
    for sec, key, value in (parse_override(o) for o in overrides):
        body = doc.setdefault(sec, {})
        if body.get(key) != value:
            body[key] = value
            changed.append(f"{sec}.{key}")
    with open(params_file, "w", encoding="utf-8") as f:
        rt.dump(doc, f)
    return changed
