"""Stage ppo / ppo_ptx — PPO-ptx (InstructGPT step 3), written in-house, CleanRL style.

The policy starts from SFT; a frozen copy of SFT is the reference; the value model starts from
the reward model (its scalar head read at every token); the reward model scores each finished
response. ``train`` runs one update as six named calls, in CleanRL's order:

    1. rollout      sample one response per prompt (KV-cache generation; temperature, top-k/top-p,
                    stop at EOS; each row from its own seeded generator), keep the response mask up to
                    and including EOS
    2. score_and_kl reward model score (bias-corrected) - missing_eos_penalty if no EOS, and the
                    per-token KL(pi || pi_SFT) estimate (k1 / k2 / k3) -> shaped rewards (InstructGPT eq. 2)
    2b. gather      data-parallel only: the processes' shares of the rollout become the whole rollout
    3. advantages   GAE from the value model's per-token values; advantages whitened
    4. optimise     ppo_epochs x minibatches: clipped surrogate + vf_coef x clipped value loss
                    - ent_coef x entropy + ptx_coef x pretraining LM loss (PPO-ptx; 0 = plain PPO)
    5. update_log   per-update metrics to MLflow and plots/<stage>/curves.csv; KL controller update
    6. checkpoint   every ``save_every`` updates (core.checkpoints, as the reward loop)

The maths lives in ``components/maths/ppo_losses.py`` (pure functions, hand-computed tests). Two
stages share this module: ``ppo`` (params section ``ppo``, registered as ``policy``) and
``ppo_ptx`` (section ``ppo_ptx``: ``ppo`` plus its own differences, ptx_coef 1; registered as
``policy-ptx``). With ``rl.algorithm`` rloo or grpo the ``ppo`` stage trains with TRL instead
(components/core/trl_rl.py). Checkpoints hold everything needed to continue bit-for-bit: both
models, both optimisers, the KL controller, every RNG state and the data position.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from components.core import checkpoints, distributed, faults, trl_rl
from components.core import trainers as tu
from components.core.config import Config, PPOConfig
from components.core.data import FILES, next_indices, read_jsonl, split_records
from components.core.encode import encode_prompts, encode_texts, pad_batch
from components.core.env import reexec_with_malloc_env, set_offline_env
from components.core.errors import ConfigError, DataError
from components.core.models import (autocast_for, bf16_supported, freeze_bottom, generate, load_model_dir,
                                    lora_config, merged, save_model_dir)
from components.core.plots import write_curves
from components.core.registry import register_model
from components.core.scoring import RewardScorer, heldout_nll, lm_nll
from components.core.stage import stage_main
from components.core.tracking import data_version, log_metrics, params_hash_of
from components.datasets import eval_sets, synth
from components.maths import ppo_losses as L
from components.maths.stats import win_rate

STAGES = ("ppo", "ppo_ptx")  # each reads the params section of its own name


# ------------------------------------------------------------------------------------ models
def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generation used them: (B, L)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logits(model, input_ids, attention_mask, prompt_len: int, temperature: float = 1.0) -> torch.Tensor:
    """(B, T, V) logits that predict each response token (position t predicts token t + 1), divided by the
    sampling temperature (the policy is the distribution the rollouts were drawn from). The LM head
    runs on those T positions only (``logits_to_keep``), not on the prompt's."""
    keep = input_ids.shape[1] - prompt_len + 1  # positions prompt_len - 1 .. end
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                logits_to_keep=keep)
    logits = out.logits[:, :-1].float()
    return logits / temperature if temperature != 1.0 else logits


def trim(attention_mask: torch.Tensor, prompt_len: int) -> tuple[int, int]:
    """Columns ``[start, end)`` of a minibatch that hold a real token of any of its rows: the left
    padding all its prompts share and the right padding after its longest response are cut
    before the forward pass (same result, fewer tokens). ``start <= prompt_len - 1 < end``."""
    real = attention_mask.bool().any(dim=0)
    start = int(real.float().argmax())
    end = real.numel() - int(real.flip(0).float().argmax())
    return min(start, prompt_len - 1), max(end, prompt_len + 1)


def response_values(value_model, input_ids, attention_mask, prompt_len: int, scale=None) -> torch.Tensor:
    """(B, T) V(s_t): the reward model's scalar head read at the last token of each prefix, on the
    reward's own scale (``scale``: the scorer's sigmoid and demonstration bias), so that the critic
    predicts returns made of the quantity the reward is (InstructGPT initialises it from the RM)."""
    hidden = value_model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                    position_ids=position_ids(attention_mask)).last_hidden_state
    head = value_model.score(hidden).squeeze(-1)[:, prompt_len - 1: -1].float()
    return scale(head) if scale is not None else head


@dataclass
class Models:
    policy: torch.nn.Module
    ref: torch.nn.Module | None  # None: the policy is a LoRA adapter on SFT, the reference is it with the adapter off
    value: torch.nn.Module
    scorer: object               # score(prompts, responses) -> (B,) tensor (RewardScorer)
    tokenizer: object
    value_scale: object = None   # raw value head -> the reward's scale (RewardScorer.scale); None: raw


@contextlib.contextmanager
def reference(m: Models):
    """The frozen SFT policy: the reference model, or the LoRA policy with its adapter disabled."""
    if m.ref is not None:
        yield m.ref
    else:
        with m.policy.disable_adapter():
            yield m.policy


# ------------------------------------------------------------------------------------ 1. rollout
@dataclass
class Rollout:
    input_ids: torch.Tensor       # (B, P + T) left-padded prompt + right-padded response
    attention_mask: torch.Tensor  # (B, P + T) 1 on prompt tokens and response tokens up to EOS
    prompt_len: int               # P
    mask: torch.Tensor            # (B, T) response tokens up to and including EOS
    has_eos: torch.Tensor         # (B,) bool
    prompts: list[str]
    responses: list[str]
    logprobs: torch.Tensor        # (B, T) log pi_old(token) of the sampled tokens, from the generation's logits

    @property
    def tokens(self) -> torch.Tensor:
        """(B, T) the sampled response tokens."""
        return self.input_ids[:, self.prompt_len:]


class RowSampler:
    """Draws each row's next token from the row's own seeded generator (temperature, then top-k and
    top-p, then inverse-CDF sampling), and hands ``generate`` scores that are -inf but at the drawn token,
    so greedy decoding keeps it. A response then depends on its row's seed alone, not on the other rows
    of the batch: data-parallel ranks, each sampling its share of a rollout, draw the tokens one process
    draws for the whole rollout."""

    def __init__(self, seeds: list[int], pc: PPOConfig, device):
        from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

        self.gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.temperature = pc.temperature
        self.warpers = ([TopKLogitsWarper(pc.top_k)] if pc.top_k else []) + \
                       ([TopPLogitsWarper(pc.top_p)] if pc.top_p < 1.0 else [])

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        s = scores.float() / self.temperature
        for warp in self.warpers:
            s = warp(input_ids, s)
        cdf = torch.softmax(s, dim=-1).cumsum(-1)
        u = torch.cat([1.0 - torch.rand(1, generator=g, device=s.device) for g in self.gens])  # (0, 1]: never a 0-prob token
        token = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp(max=s.shape[-1] - 1)
        return torch.full_like(scores, -float("inf")).scatter_(1, token, 0.0)


@torch.no_grad()
def rollout(policy, tokenizer, prompts: list[str], prompt_ids: list[list[int]], pc: PPOConfig, autocast,
            seeds: list[int] | None = None) -> Rollout:
    """Sample one response per prompt with the KV cache, row i from the generator seeded ``seeds[i]`` (by
    default drawn from torch's global generator); mask everything after the first EOS. The policy's
    log-probs of the sampled tokens come from the generation's own logits (no second forward)."""
    from transformers import LogitsProcessorList

    device = next(policy.parameters()).device
    ids, attn = pad_batch(prompt_ids, tokenizer.pad_token_id, left=True)
    ids, attn = ids.to(device), attn.to(device)
    seeds = torch.randint(2 ** 62, (len(prompts),)).tolist() if seeds is None else seeds
    with autocast():
        out = policy.generate(input_ids=ids, attention_mask=attn, do_sample=False, max_new_tokens=pc.max_new_tokens,
                              logits_processor=LogitsProcessorList([RowSampler(seeds, pc, device)]),
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                              use_cache=True, return_dict_in_generate=True, output_logits=True)
    seq = out.sequences
    resp = seq[:, ids.shape[1]:]
    # old log-probs: log pi(token) under the tempered policy (what was sampled from, before top-k/top-p),
    # one step at a time so the (B, T, V) stack is never built
    logprobs = torch.stack([L.logprobs_from_logits(step.float()[:, None] / pc.temperature, resp[:, t: t + 1])[:, 0]
                            for t, step in enumerate(out.logits)], dim=1)
    is_eos = resp == tokenizer.eos_token_id
    has_eos = is_eos.any(dim=1)
    # response mask: up to and including the first EOS (the template's <|im_end|> ends the turn)
    first_eos = torch.where(has_eos, is_eos.float().argmax(dim=1), torch.full_like(has_eos, resp.shape[1], dtype=torch.long))
    mask = torch.arange(resp.shape[1], device=device)[None, :] <= first_eos[:, None]
    texts = [tokenizer.decode(r[m], skip_special_tokens=True).strip() for r, m in zip(resp, mask)]
    return Rollout(seq, torch.cat([attn, mask.long()], dim=1), ids.shape[1], mask, has_eos, prompts, texts, logprobs)


def row_seeds(seed: int, update: int, rows) -> list[int]:
    """The sampling seed of each global row of an update's rollout (the same in every process)."""
    return [(seed * 1_000_003 + update) * 1_000_033 + j for j in rows]


# ------------------------------------------------------------------------------------ 2. score + KL
@dataclass
class Scored:
    raw_score: torch.Tensor   # (B,) the reward model's (bias-corrected) score
    ref_logp: torch.Tensor    # (B, T) log pi_SFT of the sampled tokens
    values: torch.Tensor      # (B, T) V(s_t) before the update
    kl: torch.Tensor          # (B, T) per-token KL(pi || pi_SFT) estimate
    rewards: torch.Tensor     # (B, T) shaped: -kl_coef x kl per token, + score at the last real token


@torch.no_grad()
def score_and_kl(m: Models, ro: Rollout, pc: PPOConfig, kl_coef: float, autocast, where: str) -> Scored:
    """The reward model on the decoded text minus the missing-EOS penalty, and the KL to the frozen
    SFT policy per token (old log-probs: from the rollout) -> InstructGPT eq. 2's shaped rewards."""
    with autocast():
        raw_score = m.scorer.score(ro.prompts, ro.responses).to(ro.tokens.device).float()
        if not bool(torch.isfinite(raw_score).all()):
            bad = int((~torch.isfinite(raw_score)).nonzero()[0, 0])
            raise FloatingPointError(f"[ppo] non-finite reward {raw_score[bad].item()} from the reward model at {where} "
                                     f"(response {bad} of the rollout)")
        score = raw_score - pc.missing_eos_penalty * (~ro.has_eos).float()
        with reference(m) as ref:
            ref_logp = L.logprobs_from_logits(response_logits(ref, ro.input_ids, ro.attention_mask, ro.prompt_len,
                                                              pc.temperature), ro.tokens)
        values = response_values(m.value, ro.input_ids, ro.attention_mask, ro.prompt_len, m.value_scale)
    kl = L.kl_estimate(ro.logprobs, ref_logp, pc.kl_estimator)
    return Scored(raw_score, ref_logp, values, kl, L.shaped_rewards(score, kl, ro.mask, kl_coef))


# ------------------------------------------------------------------------------------ 2b. the global rollout
def gather_rollout(ro: Rollout, sc: Scored, pad_id: int) -> tuple[Rollout, Scored]:
    """Data-parallel: every rank's share of the rollout (rank r sampled global rows r, r + N, ...) put
    back into one global rollout on every rank, rows in global order, prompts left-padded and
    responses right-padded to the longest of all ranks. Everything after this (GAE, advantage
    whitening, metrics, the KL controller) then sees the global batch, as in one process."""
    world = distributed.world_size()
    if world == 1:
        return ro, sc
    p = ro.prompt_len
    mine = {"prompt_ids": ro.input_ids[:, :p], "prompt_attn": ro.attention_mask[:, :p], "tokens": ro.tokens,
            "mask": ro.mask, "logprobs": ro.logprobs, "ref_logp": sc.ref_logp, "values": sc.values, "kl": sc.kl,
            "rewards": sc.rewards, "has_eos": ro.has_eos, "raw_score": sc.raw_score}
    parts = distributed.all_gather_object({"tensors": {k: v.cpu() for k, v in mine.items()},
                                           "prompts": ro.prompts, "responses": ro.responses})
    P = max(x["tensors"]["prompt_ids"].shape[1] for x in parts)
    T = max(x["tensors"]["tokens"].shape[1] for x in parts)
    fill = {"prompt_ids": pad_id, "tokens": pad_id}  # everything else pads with 0 / False

    def padded(k: str, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 1:
            return x
        width = P if k.startswith("prompt") else T
        pad = x.new_full((x.shape[0], width - x.shape[1]), fill.get(k, 0))
        return torch.cat([pad, x] if k.startswith("prompt") else [x, pad], dim=1)  # prompts: left; responses: right

    n = sum(len(x["prompts"]) for x in parts)
    where = [(j % world, j // world) for j in range(n)]  # global row j is row j // N of rank j % N
    t = {k: torch.stack([padded(k, parts[r]["tensors"][k])[i] for r, i in where]).to(ro.input_ids.device)
         for k in mine}
    prompts = [parts[r]["prompts"][i] for r, i in where]
    responses = [parts[r]["responses"][i] for r, i in where]
    ro = Rollout(torch.cat([t["prompt_ids"], t["tokens"]], 1), torch.cat([t["prompt_attn"], t["mask"].long()], 1), P,
                 t["mask"], t["has_eos"], prompts, responses, t["logprobs"])
    return ro, Scored(t["raw_score"], t["ref_logp"], t["values"], t["kl"], t["rewards"])


# ------------------------------------------------------------------------------------ 3. GAE
def advantages(sc: Scored, ro: Rollout, pc: PPOConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), (B, T): GAE ("bootstrap" stops at EOS: the episode is the response),
    advantages whitened over the rollout when ``whiten_advantages``."""
    adv, returns = L.gae(sc.rewards, sc.values, ro.mask, pc.gamma, pc.gae_lambda)
    return (L.masked_whiten(adv, ro.mask) if pc.whiten_advantages else adv), returns


# ------------------------------------------------------------------------------------ pretraining mix
class PretrainStream:
    """Seeded, endless batches of pretraining texts for the ptx term; its position is checkpointed."""

    def __init__(self, texts: list[str], tokenizer, batch_size: int, max_len: int, seed: int):
        self.ids = encode_texts(tokenizer, texts, max_len)
        self.batch_size, self.pad_id = batch_size, tokenizer.pad_token_id
        self.rng = random.Random(seed)
        self.order: list[int] = []

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        pick, self.order = next_indices(self.order, len(self.ids), self.batch_size, self.rng)
        return pad_batch([self.ids[i] for i in pick], self.pad_id)

    def state_dict(self) -> dict:
        return {"order": self.order, "rng": self.rng.getstate()}

    def load_state_dict(self, s: dict) -> None:
        self.order = s["order"]
        self.rng.setstate(s["rng"])


# ------------------------------------------------------------------------------------ 4. optimise
@dataclass
class TrainState:
    """Everything an update changes besides the weights; checkpointed whole."""
    opt_pi: torch.optim.Optimizer
    opt_v: torch.optim.Optimizer
    kl_ctl: L.FixedKLController
    stream: PretrainStream | None
    rng: random.Random                                   # prompt order
    order: list[int] = field(default_factory=list)       # the rest of this epoch's prompt order
    history: list[dict] = field(default_factory=list)    # one metrics row per update


def optimise(m: Models, st: TrainState, ro: Rollout, sc: Scored, adv: torch.Tensor, returns: torch.Tensor,
             pc: PPOConfig, ptx_coef: float, autocast, where: str) -> dict[str, list[float]]:
    """ppo_epochs passes over the rollout in shuffled minibatches: one optimiser step of the policy and
    the value model per minibatch. Returns each loss and statistic per minibatch.

    Data-parallel (N ranks, each holding the whole rollout): rank r trains on rows r, r + N, ... of each
    minibatch (and of each pretraining batch) and weighs its token means by its share of the minibatch's
    tokens, so that the ranks' losses and gradients SUM (all-reduced) to one process's on the whole
    minibatch; every rank then takes the same optimiser step."""
    rank, world = distributed.rank(), distributed.world_size()
    m.policy.train()
    m.value.train()
    stats: dict[str, list[float]] = {}
    for _ in range(pc.ppo_epochs):
        perm = torch.randperm(len(ro.prompts))
        for mb_all in perm.split(pc.minibatch_size):
            mb = mb_all[rank::world]  # this rank's rows of the minibatch (all of them in one process)
            share = float(ro.mask[mb].sum()) / float(ro.mask[mb_all].sum())  # of the minibatch's response tokens
            if len(mb):
                start, end = trim(ro.attention_mask[mb], ro.prompt_len)
                mb_ids, mb_attn, p_len = ro.input_ids[mb, start:end], ro.attention_mask[mb, start:end], ro.prompt_len - start
                t = end - ro.prompt_len  # response columns kept
                mask = ro.mask[mb, :t]
                with autocast():
                    logits = response_logits(m.policy, mb_ids, mb_attn, p_len, pc.temperature)
                    values = response_values(m.value, mb_ids, mb_attn, p_len, m.value_scale)
                logp = L.logprobs_from_logits(logits, ro.tokens[mb, :t])
                pg_loss, pg_stats = L.policy_loss(logp, ro.logprobs[mb, :t], adv[mb, :t], mask, pc.clip_coef)
                vf_loss, vf_stats = L.value_loss(values, sc.values[mb, :t], returns[mb, :t], mask, pc.clip_range_value)
                # entropy: in the graph only when it is in the loss (a (B, T, V) softmax the backward would skip)
                with torch.set_grad_enabled(pc.ent_coef != 0):
                    entropy = L.masked_mean(L.entropy_from_logits(logits), mask)
            else:  # more ranks than rows in this minibatch: this rank adds nothing but takes the step
                zero = torch.zeros(())
                pg_loss, vf_loss, entropy = zero, zero, zero
                pg_stats, vf_stats = {"clipfrac": 0.0, "approx_kl": 0.0}, {"vf_clipfrac": 0.0}
            ptx_nll, ptx_share = torch.zeros(()), 0.0
            if st.stream is not None:
                ids, attn = st.stream.next()  # the same batch on every rank; this rank's rows of it
                ptx_share = float(attn[rank::world, 1:].sum()) / float(attn[:, 1:].sum())  # of its predicted tokens
                ids, attn = ids[rank::world], attn[rank::world]
                if len(ids):
                    dev = next(m.policy.parameters()).device
                    with autocast():
                        ptx_nll = lm_nll(m.policy, ids.to(dev), attn.to(dev))
            loss = L.ppo_ptx_objective(share * (pg_loss - pc.ent_coef * entropy), share * vf_loss, ptx_share * ptx_nll,
                                       pc.vf_coef, ptx_coef)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"[ppo] non-finite loss at {where}: pg {pg_loss.item()}, "
                                         f"vf {vf_loss.item()}, ptx {ptx_nll.item()}")
            if loss.requires_grad:
                loss.backward()
            if world > 1:
                distributed.all_reduce_grads(m.policy)
                distributed.all_reduce_grads(m.value)
            # foreach: one fused norm over all of a model's gradients (the default loops over tensors on CPU)
            gn_pi = torch.nn.utils.clip_grad_norm_(m.policy.parameters(), pc.max_grad_norm, foreach=True)
            gn_v = torch.nn.utils.clip_grad_norm_(m.value.parameters(), pc.max_grad_norm, foreach=True)
            if not (torch.isfinite(gn_pi) and torch.isfinite(gn_v)):
                raise FloatingPointError(f"[ppo] non-finite gradient at {where}")
            st.opt_pi.step()
            st.opt_v.step()
            # free the gradients now, not at the next step: they would sit through the next rollout
            st.opt_pi.zero_grad(set_to_none=True)
            st.opt_v.zero_grad(set_to_none=True)
            # each rank's token-weighted share; their sum is the minibatch's value
            mine = {"pg_loss": share * pg_loss.item(), "vf_loss": share * vf_loss.item(),
                    "entropy": share * entropy.item(), "ptx_loss": ptx_share * ptx_nll.item(),
                    **{k: share * v for k, v in {**pg_stats, **vf_stats}.items()}}
            for k, v in zip(mine, distributed.all_reduce_sum(list(mine.values()))):
                stats.setdefault(k, []).append(v)
    return stats


# ------------------------------------------------------------------------------------ 5. log
def update_log(st: TrainState, ro: Rollout, sc: Scored, returns: torch.Tensor, stats: dict[str, list[float]],
               seconds: float, gold=None) -> dict[str, float]:
    """One update's metrics (CleanRL's names: kl, explained_variance, clipfrac, approx_kl, ...); then
    the KL controller moves beta towards its target."""
    seq_kl = torch.where(ro.mask, sc.kl, 0.0).sum(1).mean().item()  # KL per response, mean over the rollout
    metrics = {
        "reward": sc.raw_score.mean().item(), "reward_with_kl": (sc.rewards * ro.mask).sum(1).mean().item(),
        "kl": seq_kl, "kl_coef": st.kl_ctl.value, "response_length": ro.mask.float().sum(1).mean().item(),
        "eos_rate": ro.has_eos.float().mean().item(),
        "explained_variance": L.explained_variance(sc.values, returns, ro.mask),
        "tokens_per_second": int(ro.mask.sum()) / seconds,
        **{k: sum(v) / len(v) for k, v in stats.items() if k != "ptx_loss" or st.stream is not None},
    }
    if gold is not None:
        metrics["gold_reward"] = sum(gold(p, r) for p, r in zip(ro.prompts, ro.responses)) / len(ro.prompts)
    st.kl_ctl.update(seq_kl, len(ro.prompts))
    return metrics


# ------------------------------------------------------------------------------------ 6. checkpoint
def checkpoint_state(m: Models, st: TrainState, update: int, key: dict) -> dict:
    return {"policy": m.policy.state_dict(), "value": m.value.state_dict(), "opt_pi": st.opt_pi.state_dict(),
            "opt_v": st.opt_v.state_dict(), "kl_ctl": st.kl_ctl.state_dict(),
            "stream": st.stream.state_dict() if st.stream is not None else None, "rng": st.rng.getstate(),
            "torch_rng": torch.get_rng_state(), "order": st.order, "update": update, "history": st.history,
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None, **key}


def restore(m: Models, st: TrainState, state: dict) -> int:
    """Load a checkpoint's state into the models and ``st``; returns the next update."""
    m.policy.load_state_dict(state["policy"])
    m.value.load_state_dict(state["value"])
    st.opt_pi.load_state_dict(state["opt_pi"])
    st.opt_v.load_state_dict(state["opt_v"])
    st.kl_ctl.load_state_dict(state["kl_ctl"])
    if st.stream is not None:
        st.stream.load_state_dict(state["stream"])
    st.rng.setstate(state["rng"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])  # anything random on the GPU (rollouts have their own seeds)
    st.order, st.history = state["order"], state["history"]
    return state["update"] + 1


# ------------------------------------------------------------------------------------ the loop
def train(m: Models, prompts: list[str], pretrain: list[str], pc: PPOConfig, *, seed: int, system_prompt: str = "",
          autocast=None, ckpt_dir: Path | None = None, ckpt_key: dict | None = None, log=None, on_samples=None,
          gold=None, stage: str = "ppo") -> list[dict]:
    """Run ``pc.updates`` PPO(-ptx) updates (``pc.ptx_coef`` > 0: PPO-ptx); returns one metrics dict per
    update (a resumed run's included).

    ``log(metrics, step)`` gets each update's metrics; ``on_samples(rows, step)`` a few generations
    every ``sample_every`` updates; ``gold(prompt, response)`` (optional) adds the true reward.

    Data-parallel under ``accelerate launch`` (N ranks, the same seed): every rank draws the same prompts,
    samples and scores its rows of the rollout (row j from the generator seeded ``row_seeds``, so the
    tokens do not depend on N), gathers the whole rollout (``gather_rollout``: advantages are whitened
    over the global batch), trains on its rows of each minibatch with gradients summed over the ranks
    (``optimise``), and takes the same steps as one process; rank 0 alone writes checkpoints.
    """
    from tqdm.auto import tqdm

    autocast = autocast or (lambda: torch.autocast("cpu", enabled=False))
    tok, ptx_coef = m.tokenizer, pc.ptx_coef
    if pc.batch_size < distributed.world_size():
        raise ConfigError(f"{stage}.batch_size={pc.batch_size} is less than the {distributed.world_size()} processes: "
                          "each samples at least one response per update")
    torch.manual_seed(seed)
    prompt_ids, cut = encode_prompts(tok, prompts, system_prompt, pc.max_prompt_length)
    if cut:
        print(f"[{stage}] warning: {cut} prompts longer than {stage}.max_prompt_length={pc.max_prompt_length} tokens "
              "were left-truncated", flush=True)
    # fused: one kernel per step instead of a loop over parameter tensors (CPU and CUDA)
    st = TrainState(
        opt_pi=torch.optim.AdamW([p for p in m.policy.parameters() if p.requires_grad], lr=pc.lr, weight_decay=0.0,
                                 fused=True),
        opt_v=torch.optim.AdamW([p for p in m.value.parameters() if p.requires_grad], lr=pc.value_lr,
                                weight_decay=0.0, fused=True),
        kl_ctl=L.kl_controller(pc.kl_coef, pc.target_kl, pc.kl_horizon),
        stream=PretrainStream(pretrain, tok, pc.ptx_batch_size, pc.ptx_max_length, seed) if ptx_coef > 0 else None,
        rng=random.Random(seed))
    key = ckpt_key or {}
    state = checkpoints.resume(ckpt_dir, key, stage, prefix="update")
    first = restore(m, st, state) if state is not None else 1

    n = pc.samples_per_prompt  # responses per prompt, from one prompt each: batch_size // n prompts per rollout
    rank, world = distributed.rank(), distributed.world_size()  # data-parallel: rank r samples rows r, r + N, ...
    for update in tqdm(range(first, pc.updates + 1), desc=stage, unit="update", mininterval=2, disable=rank > 0):
        t0, where = time.time(), f"update {update}"
        idx, st.order = next_indices(st.order, len(prompts), pc.batch_size // n, st.rng)  # the next prompts, seeded
        rows = list(range(len(idx) * n))[rank::world]
        idx = [idx[j // n] for j in rows]  # global row j answers prompt idx[j // n]
        m.policy.eval()
        ro = rollout(m.policy, tok, [prompts[i] for i in idx], [prompt_ids[i] for i in idx], pc, autocast,  # 1.
                     seeds=row_seeds(seed, update, rows))
        sc = score_and_kl(m, ro, pc, st.kl_ctl.value, autocast, where)                                      # 2.
        ro, sc = gather_rollout(ro, sc, tok.pad_token_id)                                                  # 2b.
        adv, returns = advantages(sc, ro, pc)                                                                # 3.
        stats = optimise(m, st, ro, sc, adv, returns, pc, ptx_coef, autocast, where)                         # 4.
        metrics = update_log(st, ro, sc, returns, stats, time.time() - t0, gold)                             # 5.
        st.history.append({"update": update, **metrics})
        if log is not None:
            log(metrics, update)
        if on_samples is not None and (update % pc.sample_every == 0 or update == pc.updates):
            on_samples([{"update": update, "prompt": p, "response": r, "reward": round(s, 4)}
                        for p, r, s in zip(ro.prompts[:4], ro.responses[:4], sc.raw_score[:4].tolist())], update)
        if ckpt_dir is not None and rank == 0 and update % pc.save_every == 0 and update < pc.updates:       # 6.
            checkpoints.save(ckpt_dir, update, checkpoint_state(m, st, update, key), prefix="update",
                             keep=pc.save_total_limit)
            faults.checkpoint_written(update)
    return st.history


# ------------------------------------------------------------------------------------ held-out checks
@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[str], system_prompt: str, pc: PPOConfig, batch: int = 8) -> list[str]:
    """Greedy responses (deterministic), for held-out comparisons."""
    ids, _ = encode_prompts(tokenizer, prompts, system_prompt, pc.max_prompt_length)
    return generate(model, tokenizer, ids, pc.max_new_tokens, batch=batch)


# ------------------------------------------------------------------------------------ the stage
def load_models(cfg: Config, pc: PPOConfig) -> Models:
    """Policy and reference from SFT, value model and scorer from the reward model.

    ``pc.lora_rank`` > 0: the policy is a LoRA adapter (peft) on the SFT model, and the reference
    is the same network with the adapter disabled (no second copy); else the policy is the SFT
    model with its bottom ``pc.freeze_layers`` frozen, and the reference a frozen copy. The value
    model is the reward model with its bottom ``pc.value_freeze_layers`` frozen, on the reward's scale.
    """
    policy, tok = load_model_dir(cfg.out_dir("sft"))
    if pc.lora_rank:
        from peft import get_peft_model

        torch.manual_seed(cfg.common.seed)  # LoRA's A is drawn from the global RNG: the same adapter in every run
        policy = get_peft_model(policy, lora_config(pc.lora_rank, pc.lora_alpha, pc.lora_targets))
        ref = None
    else:
        freeze_bottom(policy, pc.freeze_layers)
        ref, _ = load_model_dir(cfg.out_dir("sft"))
        ref.requires_grad_(False).eval()
    value, _ = load_model_dir(cfg.out_dir("reward"), kind="sequence-classification")
    freeze_bottom(value, pc.value_freeze_layers)
    scorer = RewardScorer(cfg.out_dir("reward"), cfg.common.system_prompt)
    scorer.model.requires_grad_(False)
    return Models(policy, ref, value, scorer, tok, value_scale=scorer.scale)


def _gold_if_builtin(prompt_records: list[dict]):
    """The simulated labeler's gold reward when the prompts are the built-in tasks, else None."""
    return synth.gold_reward if all(synth.parse_task(r["prompt"]) is not None for r in prompt_records[:20]) else None


def pretrain_texts(cfg: Config, pc: PPOConfig) -> tuple[list[str], list[str]]:
    """(mixed-in, held-out) pretraining texts: data/pretrain.jsonl split by user, or with ``ptx_data``
    a real-text file whose first ``eval_texts`` texts are held out and the rest mixed in."""
    if not pc.ptx_data:
        train_t, eval_t = split_records(read_jsonl(cfg.data_dir / FILES["pretrain"]), cfg.common.eval_fraction,
                                        cfg.common.seed)
        return [r["text"] for r in train_t], [r["text"] for r in eval_t]
    texts = eval_sets.load_texts(pc.ptx_data, pc.ptx_data_limit)
    if len(texts) <= pc.eval_texts:
        raise DataError(f"{pc.ptx_data}: {len(texts)} texts, none left to mix in after the {pc.eval_texts} held out "
                        f"(ppo.eval_texts)")
    return texts[pc.eval_texts:], texts[: pc.eval_texts]


def run(cfg: Config, stage: str = "ppo") -> dict:
    """Train the policy with PPO (stage ``ppo``) or PPO-ptx (``ppo_ptx``); write outputs/<stage>; register it.
    With ``rl.algorithm`` rloo or grpo the ``ppo`` stage trains with TRL instead."""
    if stage == "ppo" and cfg.rl.algorithm != "ppo":  # ppo_ptx is always ours: the pretraining mix is only here
        if distributed.world_size() > 1:
            raise ConfigError(f"rl.algorithm={cfg.rl.algorithm} (TRL) trains the ppo stage in one process here: run it "
                              "with python -m, or rl.algorithm=ppo under accelerate launch")
        return run_trl(cfg)
    import mlflow

    set_offline_env()
    pc: PPOConfig = cfg.section(stage)
    seed = cfg.common.seed
    train_p, eval_p = split_records(read_jsonl(cfg.data_dir / FILES["prompts"]), cfg.common.eval_fraction, seed)
    train_t, eval_t = pretrain_texts(cfg, pc)
    if not train_p:
        raise DataError(f"{cfg.data_dir / FILES['prompts']}: no training prompts after the user split (is the file empty?)")
    device = distributed.state().device  # joins the process group under `accelerate launch`
    m = load_models(cfg, pc)
    use_bf16 = cfg.common.bf16 and bf16_supported()
    for model in (m.policy, m.ref, m.value, m.scorer.model):
        if model is not None:
            model.to(device)
    autocast = autocast_for(use_bf16)
    main, world = distributed.is_main(), distributed.world_size()
    if main:
        print(f"[{stage}] {len(train_p)} train prompts, {pc.updates} updates x {pc.batch_size} responses"
              f"{f' over {world} processes' if world > 1 else ''}, kl_coef {pc.kl_coef} "
              f"({pc.kl_estimator}{', adaptive' if pc.target_kl else ''}), ptx_coef {pc.ptx_coef}, bf16={use_bf16}", flush=True)
    gold = _gold_if_builtin(train_p)
    tables = []

    def on_samples(rows, step):
        tables.extend(rows)
        mlflow.log_table({k: [r[k] for r in tables] for k in tables[0]}, artifact_file="samples/generations.json")

    t0 = time.time()
    history = train(m, [r["prompt"] for r in train_p], train_t, pc, seed=seed,
                    system_prompt=cfg.common.system_prompt, autocast=autocast,
                    ckpt_dir=cfg.out_dir("checkpoints") / stage,
                    ckpt_key={"params_hash": params_hash_of(cfg, stage), "data_version": data_version(), "stage": stage},
                    log=(lambda mt, step: log_metrics(stage, mt, step=step)) if main else None,
                    on_samples=on_samples if main else None, gold=gold, stage=stage)
    seconds = time.time() - t0
    if not main:  # another rank of `accelerate launch`: rank 0 evaluates, saves and registers
        return {}
    csv, png = write_curves(history, cfg.plots_dir(stage), f"{stage}: kl_coef {pc.kl_coef}, ptx_coef {pc.ptx_coef}")
    for f in (png, csv, png.with_name("overoptimisation.png")):
        if f.exists():
            mlflow.log_artifact(str(f), artifact_path="plots")

    # Held-out: greedy answers of the policy vs SFT on eval prompts (gold reward), LM loss on eval texts.
    prompts = [r["prompt"] for r in eval_p[: pc.eval_prompts]]
    final = {}
    if prompts and gold is not None:
        ours = greedy_answers(m.policy, m.tokenizer, prompts, cfg.common.system_prompt, pc)
        with reference(m) as ref:
            sft = greedy_answers(ref, m.tokenizer, prompts, cfg.common.system_prompt, pc)
        g_ours, g_sft = [gold(p, r) for p, r in zip(prompts, ours)], [gold(p, r) for p, r in zip(prompts, sft)]
        final.update({"heldout_win_rate_vs_sft": win_rate(g_ours, g_sft),
                      "heldout_gold_reward": sum(g_ours) / len(g_ours), "heldout_gold_reward_sft": sum(g_sft) / len(g_sft)})
    texts = eval_t[: pc.eval_texts]
    final["heldout_lm_loss"] = heldout_nll(m.policy, m.tokenizer, texts, pc.ptx_max_length)
    with reference(m) as ref:
        final["heldout_lm_loss_sft"] = heldout_nll(ref, m.tokenizer, texts, pc.ptx_max_length)
    last = history[-1] if history else {}
    out = cfg.out_dir(stage)
    save_model_dir(merged(m.policy), m.tokenizer, out, extra={"rlhf_ppo.json": json.dumps(
        {"stage": stage, "ptx_coef": pc.ptx_coef, "updates": pc.updates, **final}, indent=2) + "\n"})
    version = register_model(out, cfg, stage, description=(
        f"{'PPO-ptx' if pc.ptx_coef else 'PPO'} from sft, {pc.updates} updates, kl_coef {pc.kl_coef}, "
        f"ptx_coef {pc.ptx_coef}; " + ", ".join(f"{k} {v:.3f}" for k, v in final.items())),
        tags={"algorithm": "ppo-ptx" if pc.ptx_coef else "ppo"})
    shutil.rmtree(cfg.out_dir("checkpoints") / stage, ignore_errors=True)
    metrics = {"final_kl": last.get("kl", float("nan")), "final_reward": last.get("reward", float("nan")),
               "train_seconds": round(seconds, 1), "updates": pc.updates, "ptx_coef": pc.ptx_coef, **final,
               "model_version": int(version.version)}
    print(f"[{stage}] done in {seconds:.0f} s: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                                                            if isinstance(v, float)) + f"; registered v{version.version}",
          flush=True)
    return metrics


def run_trl(cfg: Config) -> dict:
    """The ``ppo`` stage with ``rl.algorithm`` rloo or grpo: TRL trains the policy (core.trl_rl) from SFT
    against the same reward model; saved and registered as ``policy`` like ours."""
    import mlflow

    from components.core.config import params_hash

    set_offline_env()
    pc, algo, stage = cfg.ppo, cfg.rl.algorithm, "ppo"
    path = cfg.data_dir / FILES["prompts"]
    train_p, _ = split_records(read_jsonl(path), cfg.common.eval_fraction, cfg.common.seed)
    if not train_p:
        raise DataError(f"{path}: no training prompts after the user split (is the file empty?)")
    policy, tok = load_model_dir(cfg.out_dir("sft"))
    scorer = RewardScorer(cfg.out_dir("reward"), cfg.common.system_prompt)
    scorer.model.requires_grad_(False)
    if torch.cuda.is_available():
        scorer.model.cuda()
    # Checkpoints of other params, data or algorithm are never resumed: they live in another folder.
    key = params_hash([cfg.ppo.model_dump(), cfg.rl.model_dump(), cfg.common.seed, data_version()])
    ckpt_dir = cfg.out_dir("checkpoints") / stage / f"{algo}-{key}"
    trainer, history, seconds = trl_rl.train(cfg, policy, tok, [r["prompt"] for r in train_p], scorer, ckpt_dir,
                                             gold=_gold_if_builtin(train_p))
    csv, png = write_curves(history, cfg.plots_dir(stage), f"{stage} ({algo}, TRL): beta {pc.kl_coef}")
    mlflow.log_artifact(str(png), artifact_path="plots")
    mlflow.log_artifact(str(csv), artifact_path="plots")
    last = history[-1] if history else {}
    version = tu.finish(trainer, tok, cfg, stage, (
        f"{algo.upper()} (TRL) from sft, {pc.updates} updates x {pc.batch_size} responses "
        f"({cfg.rl.num_generations} per prompt), beta {pc.kl_coef}; final reward {last.get('reward', float('nan')):.3f}"),
        tags={"algorithm": algo})
    metrics = {"final_reward": last.get("reward", float("nan")), "final_kl": last.get("kl", float("nan")),
               "final_kl_per_token": last.get("kl_per_token", float("nan")), "train_seconds": round(seconds, 1),
               "updates": pc.updates, "algorithm": algo, "model_version": version}
    print(f"[{stage}] {algo} done in {seconds:.0f} s: final reward {metrics['final_reward']:.3f}, "
          f"final kl {metrics['final_kl']:.3f}; registered policy v{version}", flush=True)
    return metrics


if __name__ == "__main__":
    stage = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] in STAGES else "ppo"
    distributed.relaunch_under_accelerate(stage)  # only with $RLHF_ACCELERATE_CONFIG set (stage_main does it for the others)
    reexec_with_malloc_env()
    args = sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] in STAGES else sys.argv[1:]
    sys.exit(stage_main(stage, lambda cfg: run(cfg, stage), args))
