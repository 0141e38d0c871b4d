"""The PPO loop on the tiny model: a learnable reward rises; a killed run resumes to the same parameters."""

from __future__ import annotations

import pytest
import torch

from components import ppo
from components.config import PPOConfig

PROMPTS = [f"Tell me a number {i}." for i in range(16)]
TEXTS = ["The capital of France is Paris.", "Water boils at 100 degrees.", "Seven plus five is twelve."] * 4


class EvenTokenScorer:
    """A trivially learnable reward: the share of the response's tokens whose id is even.

    A random tiny model samples almost uniformly from 49k tokens, so the reward must be one it
    already earns half the time; with top-k sampling the policy can lift the even candidates.
    """

    def __init__(self, tokenizer):
        self.tok = tokenizer

    def score(self, prompts, responses):
        ids = [self.tok(r, add_special_tokens=False)["input_ids"] or [1] for r in responses]
        return torch.tensor([sum(i % 2 == 0 for i in x) / len(x) for x in ids])


def models(tiny_dir):
    from components.base_model import load_model_dir
    from components.reward import load_reward_backbone

    torch.manual_seed(0)  # the value model's fresh scalar head is drawn from the global RNG
    policy, tok = load_model_dir(tiny_dir)
    ref, _ = load_model_dir(tiny_dir)
    ref.requires_grad_(False)
    value, _ = load_reward_backbone(tiny_dir)
    return ppo.Models(policy, ref, value, EvenTokenScorer(tok), tok)


def test_reward_rises_within_a_few_dozen_updates(tiny_model_dir):
    torch.manual_seed(0)
    m = models(tiny_model_dir)
    pc = PPOConfig(updates=20, batch_size=8, minibatch_size=4, ppo_epochs=2, lr=3e-3, value_lr=1e-3,
                   max_new_tokens=8, kl_coef=0.0, missing_eos_penalty=0.0, top_k=16)
    hist = ppo.train(m, PROMPTS, TEXTS, pc, ptx_coef=0.0, seed=0)
    first = sum(h["reward"] for h in hist[:3]) / 3
    last = sum(h["reward"] for h in hist[-5:]) / 5
    assert len(hist) == 20 and first < 0.7 and last > first + 0.2, (first, last)
    for key in ("kl", "entropy", "clipfrac", "approx_kl", "vf_loss", "explained_variance", "tokens_per_second"):
        assert key in hist[-1]


def test_ptx_term_is_logged_and_kl_is_zero_at_the_start(tiny_model_dir):
    m = models(tiny_model_dir)
    pc = PPOConfig(updates=1, batch_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=6)
    (h,) = ppo.train(m, PROMPTS, TEXTS, pc, ptx_coef=1.0, seed=0)
    assert h["ptx_loss"] > 0
    assert h["kl"] == pytest.approx(0.0, abs=1e-4)  # policy == reference before the first step
    (h0,) = ppo.train(models(tiny_model_dir), PROMPTS, TEXTS, pc, ptx_coef=0.0, seed=0)
    assert "ptx_loss" not in h0


def test_killed_run_resumes_to_the_same_parameters(tiny_model_dir, tmp_path):
    pc = PPOConfig(updates=4, batch_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=6, save_every=2,
                   target_kl=0.01)
    a = models(tiny_model_dir)
    ppo.train(a, PROMPTS, TEXTS, pc, ptx_coef=0.5, seed=3)

    class Killed(Exception):
        pass

    def kill_at_3(metrics, step):
        if step == 3:
            raise Killed

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Killed):
        ppo.train(models(tiny_model_dir), PROMPTS, TEXTS, pc, ptx_coef=0.5, seed=3, ckpt_dir=ckpt, log=kill_at_3)
    assert [p.name for p in ckpt.iterdir()] == ["update-2"]
    b = models(tiny_model_dir)
    hist = ppo.train(b, PROMPTS, TEXTS, pc, ptx_coef=0.5, seed=3, ckpt_dir=ckpt)
    assert [h["update"] for h in hist] == [1, 2, 3, 4]
    for (name, pa), pb in zip(a.policy.named_parameters(), b.policy.parameters()):
        assert torch.equal(pa, pb), name
    for pa, pb in zip(a.value.parameters(), b.value.parameters()):
        assert torch.equal(pa, pb)
