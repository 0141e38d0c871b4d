"""Scoring text with a model: the reward model's scalar (``RewardScorer``, what PPO optimises and
evaluation reports) and a language model's per-token NLL (the ptx term, held-out LM loss)."""

from __future__ import annotations

from pathlib import Path

import torch

from components.core.encode import encode_pair, encode_texts, pad_batch
from components.core.models import load_model_dir
from components.maths.ppo_losses import ptx_loss

# The reward model's own settings, stored in its config (``rlhf_reward``) by the reward stage.
DEFAULT_MAX_LENGTH = 256
DEFAULT_MICRO_BATCH_TOKENS = 16 * 256


def length_buckets(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped by similar length, each group padded size (n x longest) <= max_tokens.

    Answers to one prompt differ a lot in length (a one-line answer vs. a padded, repeated one);
    padding them all to the longest wastes most of the compute on a CPU. Sorting first keeps
    padding small. A sequence longer than max_tokens gets a group of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[i] <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def raw_rewards(model, seqs: list[list[int]], pad_id: int, max_tokens: int = 2048) -> torch.Tensor:
    """N token-id lists -> (N,) scalar head output at each sequence's last real token.

    One forward pass per answer (never per pair), in length-bucketed micro-batches of right-padded
    sequences; the head reads the last token through the attention mask, not by a pad id.
    """
    device = next(model.parameters()).device
    out: list[torch.Tensor | None] = [None] * len(seqs)
    for group in length_buckets([len(s) for s in seqs], max_tokens):
        ids, attn = pad_batch([seqs[i] for i in group], pad_id)
        r = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.squeeze(-1).float()
        for row, i in enumerate(group):
            out[i] = r[row]
    return torch.stack(out) if out else torch.zeros(0, device=device)


@torch.no_grad()
def score_raw(model, tokenizer, prompts: list[str], responses: list[str], system_prompt: str, max_length: int,
              max_tokens: int) -> torch.Tensor:
    """(N,) raw scalar rewards of (prompt, response) pairs, on the CPU."""
    seqs = [encode_pair(tokenizer, p, r, system_prompt, max_length)[0] for p, r in zip(prompts, responses)]
    return raw_rewards(model, seqs, tokenizer.pad_token_id, max_tokens=max_tokens).cpu()


class RewardScorer:
    """A reward-model folder; ``score(prompts, responses)`` -> (N,) bias-corrected rewards.

    How the model is fed and scaled comes from its own config (``rlhf_reward``, written by the
    reward stage): ``max_length`` (answers are left-truncated to it), ``micro_batch_tokens``,
    ``bounded`` (the reward is sigmoid(r)) and ``bias`` (the demonstrations' mean, subtracted).
    """

    def __init__(self, path: str | Path, system_prompt: str = ""):
        self.model, self.tokenizer = load_model_dir(path, kind="sequence-classification")
        self.model.eval()
        meta = getattr(self.model.config, "rlhf_reward", None) or {}
        self.bounded = bool(meta.get("bounded", False))
        self.bias = float(meta.get("bias", 0.0))
        self.max_length = int(meta.get("max_length", DEFAULT_MAX_LENGTH))
        self.micro_batch_tokens = int(meta.get("micro_batch_tokens", DEFAULT_MICRO_BATCH_TOKENS))
        self.system_prompt = system_prompt

    def transform(self, r: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(r) if self.bounded else r

    def scale(self, r: torch.Tensor) -> torch.Tensor:
        """Raw head outputs -> the reward's own scale: ``transform(r) - bias`` (what ``score`` returns)."""
        return self.transform(r) - self.bias

    @torch.no_grad()
    def raw(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return score_raw(self.model, self.tokenizer, prompts, responses, self.system_prompt, self.max_length,
                         self.micro_batch_tokens)

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return self.scale(self.raw(prompts, responses))


def lm_nll(model, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of right-padded texts (the ptx term, and the held-out LM loss)."""
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
    return ptx_loss(logits, ids[:, 1:], attn[:, 1:])


@torch.no_grad()
def per_text_nll(model, tokenizer, texts: list[str], max_len: int, batch: int = 16) -> list[float]:
    """Each plain text's mean next-token NLL (cut to ``max_len`` tokens, EOS last), in batches; the
    paired alignment tax compares these text by text between two models."""
    dev = next(model.parameters()).device
    out: list[float] = []
    enc = encode_texts(tokenizer, texts, max_len)
    for i in range(0, len(enc), batch):
        ids, attn = pad_batch(enc[i: i + batch], tokenizer.pad_token_id)
        ids, attn = ids.to(dev), attn.to(dev)
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
        out += ptx_loss(logits, ids[:, 1:], attn[:, 1:], dim=1).tolist()
    return out


@torch.no_grad()
def heldout_nll(model, tokenizer, texts: list[str], max_len: int) -> float:
    """Mean per-token NLL of plain texts cut to ``max_len`` tokens (nan for no texts)."""
    if not texts:
        return float("nan")
    ids, attn = pad_batch(encode_texts(tokenizer, texts, max_len), tokenizer.pad_token_id)
    dev = next(model.parameters()).device
    return lm_nll(model, ids.to(dev), attn.to(dev)).item()
