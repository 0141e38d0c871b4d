"""Stage 4 — PPO-ptx (InstructGPT step 3), written in-house, CleanRL style.

The policy starts from SFT; a frozen copy of SFT is the reference; the value model starts from
the reward model (its scalar head read at every token); the reward model scores each finished
response. One update:

    1. rollout   sample one response per prompt (KV-cache generation; temperature, top-k/top-p,
                 stop at EOS), keep the response mask up to and including EOS
    2. score     reward model score (bias-corrected) - missing_eos_penalty if no EOS
    3. KL        per-token KL(pi || pi_SFT) estimate (k1 / k3) -> shaped rewards (eq. 2 of InstructGPT)
    4. GAE       advantages and returns from the value model's per-token values; advantages whitened
    5. optimise  ppo_epochs x minibatches: clipped surrogate + vf_coef x clipped value loss
                 - ent_coef x entropy + ptx_coef x pretraining LM loss (PPO-ptx; 0 = plain PPO)
    6. log       per-update metrics to MLflow and plots/<variant>/curves.csv; KL controller update

The maths lives in ``components/ppo_losses.py`` (pure functions, hand-computed tests). Two
variants share this module: ``ppo`` (ptx_coef forced to 0, registered as ``policy``) and
``ppo_ptx`` (``ppo.ptx_coef``, registered as ``policy-ptx``). Checkpoints every ``save_every``
updates hold everything needed to continue bit-for-bit: both models, both optimisers, the KL
controller, every RNG state and the data position.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from components import faults
from components import ppo_losses as L
from components.config import Config, PPOConfig
from components.base_model import generate, pad_batch
from components.data import FILES, DataError, next_indices, read_jsonl, split_records

VARIANTS = {"ppo": "policy", "ppo_ptx": "policy-ptx"}  # stage name -> registered model name


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


def response_values(value_model, input_ids, attention_mask, prompt_len: int) -> torch.Tensor:
    """(B, T) V(s_t): the reward model's scalar head read at the last token of each prefix."""
    hidden = value_model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                    position_ids=position_ids(attention_mask)).last_hidden_state
    return value_model.score(hidden).squeeze(-1)[:, prompt_len - 1: -1].float()


# ------------------------------------------------------------------------------------ rollouts
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


def encode_prompts(tokenizer, prompts: list[str], system_prompt: str, max_len: int) -> tuple[list[list[int]], int]:
    """Chat-template ids ending with the assistant header, left-truncated to max_len; (ids, n_truncated)."""
    from components.base_model import chat_ids, chat_messages

    out, cut = [], 0
    for p in prompts:
        ids = chat_ids(tokenizer, chat_messages(p, system_prompt), add_generation_prompt=True)
        cut += len(ids) > max_len
        out.append(ids[-max_len:])
    return out, cut


@torch.no_grad()
def rollout(policy, tokenizer, prompts: list[str], prompt_ids: list[list[int]], pc: PPOConfig, autocast) -> Rollout:
    """Sample one response per prompt with the KV cache; mask everything after the first EOS. The
    policy's log-probs of the sampled tokens come from the generation's own logits (no second forward)."""
    device = next(policy.parameters()).device
    ids, attn = pad_batch(prompt_ids, tokenizer.pad_token_id, left=True)
    ids, attn = ids.to(device), attn.to(device)
    with autocast():
        out = policy.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=pc.temperature,
                              top_k=pc.top_k, top_p=pc.top_p, max_new_tokens=pc.max_new_tokens,
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


# ------------------------------------------------------------------------------------ pretraining mix
def encode_texts(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    """Plain texts (no chat template) -> ids cut to max_len, each ending with EOS."""
    return [tokenizer(t, add_special_tokens=False)["input_ids"][: max_len - 1] + [tokenizer.eos_token_id] for t in texts]


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


def lm_nll(model, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of right-padded texts (the ptx term, and the held-out LM loss)."""
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
    return L.ptx_loss(logits, ids[:, 1:], attn[:, 1:])


# ------------------------------------------------------------------------------------ the loop
@dataclass
class Models:
    policy: torch.nn.Module
    ref: torch.nn.Module
    value: torch.nn.Module
    scorer: object          # score(prompts, responses) -> (B,) tensor (RewardScorer)
    tokenizer: object


def train(m: Models, prompts: list[str], pretrain: list[str], pc: PPOConfig, *, ptx_coef: float, seed: int,
          system_prompt: str = "", autocast=None, ckpt_dir: Path | None = None, ckpt_key: dict | None = None,
          log=None, on_samples=None, gold=None) -> list[dict]:
    """Run ``pc.updates`` PPO(-ptx) updates; returns one metrics dict per update (a resumed run's included).

    ``log(metrics, step)`` gets each update's metrics; ``on_samples(rows, step)`` a few generations
    every ``sample_every`` updates; ``gold(prompt, response)`` (optional) adds the true reward.
    """
    autocast = autocast or (lambda: torch.autocast("cpu", enabled=False))
    tok = m.tokenizer
    torch.manual_seed(seed)
    rng = random.Random(seed)
    prompt_ids, cut = encode_prompts(tok, prompts, system_prompt, pc.max_prompt_length)
    if cut:
        print(f"[ppo] warning: {cut} prompts longer than ppo.max_prompt_length={pc.max_prompt_length} tokens "
              "were left-truncated", flush=True)
    stream = PretrainStream(pretrain, tok, pc.ptx_batch_size, pc.ptx_max_length, seed) if ptx_coef > 0 else None
    # fused: one kernel per step instead of a loop over parameter tensors (CPU and CUDA)
    opt_pi = torch.optim.AdamW([p for p in m.policy.parameters() if p.requires_grad], lr=pc.lr, weight_decay=0.0, fused=True)
    opt_v = torch.optim.AdamW([p for p in m.value.parameters() if p.requires_grad], lr=pc.value_lr, weight_decay=0.0,
                              fused=True)
    kl_ctl = L.kl_controller(pc.kl_coef, pc.target_kl, pc.kl_horizon)
    order: list[int] = []
    history: list[dict] = []
    start = 1
    if ckpt_dir is not None and (last := _last_checkpoint(ckpt_dir)) is not None:
        state = torch.load(last / "state.pt", weights_only=False)
        if all(state.get(k) == v for k, v in (ckpt_key or {}).items()):
            m.policy.load_state_dict(state["policy"])
            m.value.load_state_dict(state["value"])
            opt_pi.load_state_dict(state["opt_pi"])
            opt_v.load_state_dict(state["opt_v"])
            kl_ctl.load_state_dict(state["kl_ctl"])
            if stream is not None:
                stream.load_state_dict(state["stream"])
            rng.setstate(state["rng"])
            torch.set_rng_state(state["torch_rng"])
            if state.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])  # rollouts sample on the GPU's generator
            order, start, history = state["order"], state["update"] + 1, state["history"]
            print(f"[ppo] resuming from {last} at update {start}", flush=True)
        else:
            print(f"[ppo] ignoring {last}: params or data changed since it was written", flush=True)
    from tqdm.auto import tqdm

    for update in tqdm(range(start, pc.updates + 1), desc="ppo", unit="update", mininterval=2):
        t0 = time.time()
        # 1. rollout: the next batch_size prompts of a seeded shuffle
        idx, order = next_indices(order, len(prompts), pc.batch_size, rng)
        m.policy.eval()
        ro = rollout(m.policy, tok, [prompts[i] for i in idx], [prompt_ids[i] for i in idx], pc, autocast)
        n_tokens = int(ro.mask.sum())
        resp_tokens = ro.input_ids[:, ro.prompt_len:]
        with torch.no_grad(), autocast():
            # 2. score: the reward model on the decoded text, minus the missing-EOS penalty
            raw_score = m.scorer.score(ro.prompts, ro.responses).to(resp_tokens.device).float()
            if not bool(torch.isfinite(raw_score).all()):
                bad = int((~torch.isfinite(raw_score)).nonzero()[0, 0])
                raise FloatingPointError(f"[ppo] non-finite reward {raw_score[bad].item()} from the reward model at update "
                                         f"{update} (response {bad} of the rollout); checkpoints kept in {ckpt_dir}")
            score = raw_score - pc.missing_eos_penalty * (~ro.has_eos).float()
            # 3. KL to the frozen SFT policy, per token -> shaped rewards (old log-probs: from the rollout)
            old_logp = ro.logprobs
            ref_logp = L.logprobs_from_logits(response_logits(m.ref, ro.input_ids, ro.attention_mask, ro.prompt_len,
                                                              pc.temperature), resp_tokens)
            old_values = response_values(m.value, ro.input_ids, ro.attention_mask, ro.prompt_len)
        kl = L.kl_estimate(old_logp, ref_logp, pc.kl_estimator)
        rewards = L.shaped_rewards(score, kl, ro.mask, kl_ctl.value)
        # 4. GAE ("bootstrap" stops at EOS: the episode is the response) + whitening
        advantages, returns = L.gae(rewards, old_values, ro.mask, pc.gamma, pc.gae_lambda)
        if pc.whiten_advantages:
            advantages = L.masked_whiten(advantages, ro.mask)
        # 5. optimise: ppo_epochs x minibatches
        m.policy.train()
        m.value.train()
        stats: dict[str, list[float]] = {}
        for _ in range(pc.ppo_epochs):
            perm = torch.randperm(len(idx))
            for mb in perm.split(pc.minibatch_size):
                start, end = trim(ro.attention_mask[mb], ro.prompt_len)
                mb_ids, mb_attn, p_len = ro.input_ids[mb, start:end], ro.attention_mask[mb, start:end], ro.prompt_len - start
                t = end - ro.prompt_len  # response columns kept
                mask = ro.mask[mb, :t]
                with autocast():
                    logits = response_logits(m.policy, mb_ids, mb_attn, p_len, pc.temperature)
                    values = response_values(m.value, mb_ids, mb_attn, p_len)
                logp = L.logprobs_from_logits(logits, resp_tokens[mb, :t])
                pg_loss, pg_stats = L.policy_loss(logp, old_logp[mb, :t], advantages[mb, :t], mask, pc.clip_coef)
                vf_loss, vf_stats = L.value_loss(values, old_values[mb, :t], returns[mb, :t], mask, pc.clip_range_value)
                # entropy: in the graph only when it is in the loss (a (B, T, V) softmax the backward would skip)
                with torch.set_grad_enabled(pc.ent_coef != 0):
                    entropy = L.masked_mean(L.entropy_from_logits(logits), mask)
                ptx_nll = torch.zeros(())
                if stream is not None:
                    ids, attn = stream.next()
                    with autocast():
                        ptx_nll = lm_nll(m.policy, ids.to(logits.device), attn.to(logits.device))
                loss = L.ppo_ptx_objective(pg_loss - pc.ent_coef * entropy, vf_loss, ptx_nll, pc.vf_coef, ptx_coef)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"[ppo] non-finite loss at update {update}: pg {pg_loss.item()}, "
                                             f"vf {vf_loss.item()}, ptx {ptx_nll.item()}")
                loss.backward()
                # foreach: one fused norm over all of a model's gradients (the default loops over tensors on CPU)
                gn_pi = torch.nn.utils.clip_grad_norm_(m.policy.parameters(), pc.max_grad_norm, foreach=True)
                gn_v = torch.nn.utils.clip_grad_norm_(m.value.parameters(), pc.max_grad_norm, foreach=True)
                if not (torch.isfinite(gn_pi) and torch.isfinite(gn_v)):
                    raise FloatingPointError(f"[ppo] non-finite gradient at update {update}")
                opt_pi.step()
                opt_v.step()
                # free the gradients now, not at the next step: they would sit through the next rollout
                opt_pi.zero_grad(set_to_none=True)
                opt_v.zero_grad(set_to_none=True)
                for k, v in {"pg_loss": pg_loss.item(), "vf_loss": vf_loss.item(), "entropy": entropy.item(),
                             "ptx_loss": ptx_nll.item(), **pg_stats, **vf_stats}.items():
                    stats.setdefault(k, []).append(v)
        # 6. log, then let the controller move beta towards the target KL
        seq_kl = torch.where(ro.mask, kl, 0.0).sum(1).mean().item()  # KL per response, mean over the rollout
        metrics = {
            "reward": raw_score.mean().item(), "reward_with_kl": (rewards * ro.mask).sum(1).mean().item(),
            "kl": seq_kl, "kl_coef": kl_ctl.value, "response_length": ro.mask.float().sum(1).mean().item(),
            "eos_rate": ro.has_eos.float().mean().item(),
            "explained_variance": L.explained_variance(old_values, returns, ro.mask),
            "tokens_per_second": n_tokens / (time.time() - t0),
            **{k: sum(v) / len(v) for k, v in stats.items() if k != "ptx_loss" or stream is not None},
        }
        if gold is not None:
            metrics["gold_reward"] = sum(gold(p, r) for p, r in zip(ro.prompts, ro.responses)) / len(ro.prompts)
        kl_ctl.update(seq_kl, len(idx))
        history.append({"update": update, **metrics})
        if log is not None:
            log(metrics, update)
        if on_samples is not None and (update % pc.sample_every == 0 or update == pc.updates):
            on_samples([{"update": update, "prompt": p, "response": r, "reward": round(s, 4)}
                        for p, r, s in zip(ro.prompts[:4], ro.responses[:4], raw_score[:4].tolist())], update)
        if ckpt_dir is not None and update % pc.save_every == 0 and update < pc.updates:
            _save_checkpoint(ckpt_dir, update, pc.save_total_limit, {
                "policy": m.policy.state_dict(), "value": m.value.state_dict(), "opt_pi": opt_pi.state_dict(),
                "opt_v": opt_v.state_dict(), "kl_ctl": kl_ctl.state_dict(),
                "stream": stream.state_dict() if stream is not None else None, "rng": rng.getstate(),
                "torch_rng": torch.get_rng_state(), "order": order, "update": update, "history": history,
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                **(ckpt_key or {})})
            faults.checkpoint_written(update)
    return history


def _last_checkpoint(ckpt_dir: Path) -> Path | None:
    done = sorted((p for p in ckpt_dir.glob("update-*") if (p / "state.pt").exists()),
                  key=lambda p: int(p.name.split("-")[1])) if ckpt_dir.exists() else []
    return done[-1] if done else None


def _save_checkpoint(ckpt_dir: Path, update: int, keep: int, state: dict) -> None:
    """Write update-N/state.pt via a temp file (a kill mid-write keeps the previous one), prune old ones."""
    from components.reward import save_checkpoint

    save_checkpoint(ckpt_dir / f"update-{update}" / "state.pt", state)
    for old in sorted(ckpt_dir.glob("update-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------ held-out checks
def win_rate(a: list[float], b: list[float]) -> float:
    """Share of prompts where a beats b; ties count half (nan when empty)."""
    if not a:
        return float("nan")
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / len(a)


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[str], system_prompt: str, pc: PPOConfig, batch: int = 8) -> list[str]:
    """Greedy responses (deterministic), for held-out comparisons."""
    ids, _ = encode_prompts(tokenizer, prompts, system_prompt, pc.max_prompt_length)
    return generate(model, tokenizer, ids, pc.max_new_tokens, batch=batch)


@torch.no_grad()
def heldout_nll(model, tokenizer, texts: list[str], pc: PPOConfig) -> float:
    if not texts:
        return float("nan")
    ids, attn = pad_batch(encode_texts(tokenizer, texts, pc.ptx_max_length), tokenizer.pad_token_id)
    return lm_nll(model, ids, attn).item()


# ------------------------------------------------------------------------------------ the stage
def _load(cfg: Config):
    from components.base_model import load_model_dir
    from components.reward import RewardScorer

    policy, tok = load_model_dir(cfg.out_dir("sft"))
    ref, _ = load_model_dir(cfg.out_dir("sft"))
    ref.requires_grad_(False).eval()
    value, _ = load_model_dir(cfg.out_dir("reward"), kind="sequence-classification")
    scorer = RewardScorer(cfg.out_dir("reward"), cfg.common.system_prompt, cfg.reward.max_length,
                          cfg.reward.eval_batch_size)
    scorer.model.requires_grad_(False)
    return Models(policy, ref, value, scorer, tok)


def write_curves(history: list[dict], out_dir: Path, title: str) -> tuple[Path, Path]:
    """DVC plot data (CSV, one row per update) and a PNG of the main curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    keys = [k for k in history[0] if k != "update"] if history else []
    csv = out_dir / "curves.csv"
    csv.write_text("update," + ",".join(keys) + "\n" + "".join(
        f"{h['update']}," + ",".join(f"{h.get(k, float('nan')):.6g}" for k in keys) + "\n" for h in history))
    shown = [k for k in ("reward", "gold_reward", "kl", "reward_with_kl", "ptx_loss", "entropy") if k in keys]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * max(1, len(shown)), 3), squeeze=False)
    for ax, k in zip(axes[0], shown):
        ax.plot([h["update"] for h in history], [h[k] for h in history], marker=".")
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("update")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    png = out_dir / "curves.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return csv, png


def run(cfg: Config, stage: str = "ppo") -> dict:
    """Train the policy with PPO (stage ``ppo``) or PPO-ptx (``ppo_ptx``); write outputs/<stage>; register it.
    With ``rl.algorithm`` rloo or grpo the ``ppo`` stage trains with TRL instead (components/rl_trl.py)."""
    if stage == "ppo" and cfg.rl.algorithm != "ppo":  # ppo_ptx is always ours: the pretraining mix is only here
        from components import rl_trl

        return rl_trl.run(cfg)
    import mlflow

    from components import synth
    from components.base_model import bf16_supported, save_model_dir
    from components.reward import autocast_for
    from components.tracking import data_version, log_metrics, register_model, set_offline_env

    set_offline_env()
    pc = cfg.ppo
    ptx_coef = pc.ptx_coef if stage == "ppo_ptx" else 0.0
    if stage == "ppo_ptx" and ptx_coef == 0:
        raise ValueError("stage ppo_ptx needs ppo.ptx_coef > 0 (ppo is the variant without the pretraining mix)")
    seed = cfg.common.seed
    train_p, eval_p = split_records(read_jsonl(cfg.data_dir / FILES["prompts"]), cfg.common.eval_fraction, seed)
    train_t, eval_t = split_records(read_jsonl(cfg.data_dir / FILES["pretrain"]), cfg.common.eval_fraction, seed)
    if not train_p:
        raise DataError(f"{cfg.data_dir / FILES['prompts']}: no training prompts after the user split (is the file empty?)")
    m = _load(cfg)
    use_bf16 = cfg.common.bf16 and bf16_supported()
    if torch.cuda.is_available():
        for model in (m.policy, m.ref, m.value, m.scorer.model):
            model.cuda()
    autocast = autocast_for(use_bf16)
    print(f"[{stage}] {len(train_p)} train prompts, {pc.updates} updates x {pc.batch_size} responses, "
          f"kl_coef {pc.kl_coef} ({pc.kl_estimator}{', adaptive' if pc.target_kl else ''}), ptx_coef {ptx_coef}, "
          f"bf16={use_bf16}", flush=True)
    def gold(prompt: str, response: str) -> float:
        return synth.gold_reward(prompt, response)

    has_gold = all(synth.parse_task(r["prompt"]) is not None for r in train_p[:20])
    tables = []

    def on_samples(rows, step):
        tables.extend(rows)
        mlflow.log_table({k: [r[k] for r in tables] for k in tables[0]}, artifact_file="samples/generations.json")

    t0 = time.time()
    history = train(m, [r["prompt"] for r in train_p], [r["text"] for r in train_t], pc, ptx_coef=ptx_coef, seed=seed,
                    system_prompt=cfg.common.system_prompt, autocast=autocast,
                    ckpt_dir=cfg.out_dir("checkpoints") / stage,
                    ckpt_key={"params_hash": cfg.section_hash("ppo"), "data_version": data_version(), "stage": stage},
                    log=lambda mt, step: log_metrics(stage, mt, step=step), on_samples=on_samples,
                    gold=gold if has_gold else None)
    seconds = time.time() - t0
    csv, png = write_curves(history, cfg.plots_dir(stage), f"{stage}: kl_coef {pc.kl_coef}, ptx_coef {ptx_coef}")
    mlflow.log_artifact(str(png), artifact_path="plots")
    mlflow.log_artifact(str(csv), artifact_path="plots")

    # Held-out: greedy answers of the policy vs SFT on eval prompts (gold reward), LM loss on eval texts.
    prompts = [r["prompt"] for r in eval_p[: pc.eval_prompts]]
    final = {}
    if prompts and has_gold:
        ours = greedy_answers(m.policy, m.tokenizer, prompts, cfg.common.system_prompt, pc)
        sft = greedy_answers(m.ref, m.tokenizer, prompts, cfg.common.system_prompt, pc)
        g_ours, g_sft = [gold(p, r) for p, r in zip(prompts, ours)], [gold(p, r) for p, r in zip(prompts, sft)]
        final.update({"heldout_win_rate_vs_sft": win_rate(g_ours, g_sft),
                      "heldout_gold_reward": sum(g_ours) / len(g_ours), "heldout_gold_reward_sft": sum(g_sft) / len(g_sft)})
    texts = [r["text"] for r in eval_t[: pc.eval_texts]]
    final.update({"heldout_lm_loss": heldout_nll(m.policy, m.tokenizer, texts, pc),
                  "heldout_lm_loss_sft": heldout_nll(m.ref, m.tokenizer, texts, pc)})
    last = history[-1] if history else {}
    out = cfg.out_dir(stage)
    save_model_dir(m.policy, m.tokenizer, out, extra={"rlhf_ppo.json": json.dumps(
        {"stage": stage, "ptx_coef": ptx_coef, "updates": pc.updates, **final}, indent=2) + "\n"})
    name = VARIANTS[stage]
    version = register_model(out, name, cfg, stage, description=(
        f"{'PPO-ptx' if ptx_coef else 'PPO'} from sft, {pc.updates} updates, kl_coef {pc.kl_coef}, ptx_coef {ptx_coef}; "
        + ", ".join(f"{k} {v:.3f}" for k, v in final.items())), tags={"algorithm": "ppo-ptx" if ptx_coef else "ppo"})
    shutil.rmtree(cfg.out_dir("checkpoints") / stage, ignore_errors=True)
    metrics = {"final_kl": last.get("kl", float("nan")), "final_reward": last.get("reward", float("nan")),
               "train_seconds": round(seconds, 1), "updates": pc.updates, "ptx_coef": ptx_coef, **final,
               "model_version": int(version.version)}
    print(f"[{stage}] done in {seconds:.0f} s: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                                                            if isinstance(v, float)) + f"; registered {name} v{version.version}", flush=True)
    return metrics


if __name__ == "__main__":
    from components.tracking import reexec_with_malloc_env, stage_main

    reexec_with_malloc_env()
    stage = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] in VARIANTS else "ppo"
    args = sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] in VARIANTS else sys.argv[1:]
    sys.exit(stage_main(stage, lambda cfg: run(cfg, stage), args))
