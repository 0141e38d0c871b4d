"""The PPO loop on the tiny model: a learnable reward rises; a killed run resumes to the same parameters."""

from __future__ import annotations

import pytest
import torch

from components.stages import ppo
from components.core.config import PPOConfig
from components.core import encode

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
    from components.core.models import load_model_dir
    from components.stages.reward import load_reward_backbone

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
    hist = ppo.train(m, PROMPTS, TEXTS, pc, seed=0)
    first = sum(h["reward"] for h in hist[:3]) / 3
    last = sum(h["reward"] for h in hist[-5:]) / 5
    assert len(hist) == 20 and first < 0.7 and last > first + 0.2, (first, last)
    for key in ("kl", "entropy", "clipfrac", "approx_kl", "vf_loss", "explained_variance", "tokens_per_second"):
        assert key in hist[-1]


def test_ptx_term_is_logged_and_kl_is_zero_at_the_start(tiny_model_dir):
    m = models(tiny_model_dir)
    pc = PPOConfig(updates=1, batch_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=6)
    (h,) = ppo.train(m, PROMPTS, TEXTS, pc.model_copy(update={"ptx_coef": 1.0}), seed=0)
    assert h["ptx_loss"] > 0
    assert h["kl"] == pytest.approx(0.0, abs=1e-4)  # policy == reference before the first step
    (h0,) = ppo.train(models(tiny_model_dir), PROMPTS, TEXTS, pc, seed=0)  # ptx_coef 0: plain PPO
    assert "ptx_loss" not in h0


def test_killed_run_resumes_to_the_same_parameters(tiny_model_dir, tmp_path):
    pc = PPOConfig(updates=4, batch_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=6, save_every=2,
                   target_kl=0.01, ptx_coef=0.5)
    a = models(tiny_model_dir)
    ppo.train(a, PROMPTS, TEXTS, pc, seed=3)

    class Killed(Exception):
        pass

    def kill_at_3(metrics, step):
        if step == 3:
            raise Killed

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Killed):
        ppo.train(models(tiny_model_dir), PROMPTS, TEXTS, pc, seed=3, ckpt_dir=ckpt, log=kill_at_3)
    assert [p.name for p in ckpt.iterdir()] == ["update-2"]
    b = models(tiny_model_dir)
    hist = ppo.train(b, PROMPTS, TEXTS, pc, seed=3, ckpt_dir=ckpt)
    assert [h["update"] for h in hist] == [1, 2, 3, 4]
    for (name, pa), pb in zip(a.policy.named_parameters(), b.policy.parameters()):
        assert torch.equal(pa, pb), name
    for pa, pb in zip(a.value.parameters(), b.value.parameters()):
        assert torch.equal(pa, pb)


def test_trim_keeps_every_real_column_of_the_minibatch():
    # 2 rows, prompt_len 3 (left-padded), 4 response columns; row 0: prompt 2 + response 1, row 1: prompt 1 + response 2
    attn = torch.tensor([[0, 1, 1, 1, 0, 0, 0],
                         [0, 0, 1, 1, 1, 0, 0]])
    assert ppo.trim(attn, 3) == (1, 5)
    assert ppo.trim(torch.ones(2, 7, dtype=torch.long), 3) == (0, 7)
    assert ppo.trim(torch.tensor([[0, 0, 1, 0, 0]]), 3) == (2, 4)  # keeps prompt_len - 1 and one response column


def test_trimmed_forward_equals_the_full_one(tiny_model_dir):
    """The minibatch forward on the trimmed columns gives the same log-probs and values on every real
    response token as the forward on the whole padded rollout (LM head only on response positions)."""
    m = models(tiny_model_dir)
    torch.manual_seed(0)
    pc = PPOConfig(max_new_tokens=6, temperature=1.0)
    ids, _ = encode.encode_prompts(m.tokenizer, PROMPTS[:4] + ["A much longer prompt " * 3], "", 64)
    ro = ppo.rollout(m.policy, m.tokenizer, PROMPTS[:4] + ["x"], ids, pc, lambda: torch.autocast("cpu", enabled=False))
    resp = ro.input_ids[:, ro.prompt_len:]
    with torch.no_grad():
        full_lp = torch.log_softmax(ppo.response_logits(m.policy, ro.input_ids, ro.attention_mask, ro.prompt_len), -1)
        full_v = ppo.response_values(m.value, ro.input_ids, ro.attention_mask, ro.prompt_len)
        every = m.policy(input_ids=ro.input_ids, attention_mask=ro.attention_mask,
                         position_ids=ppo.position_ids(ro.attention_mask)).logits  # the head on every position
        torch.testing.assert_close(full_lp, torch.log_softmax(every[:, ro.prompt_len - 1: -1].float(), -1))
        mb = torch.tensor([0, 1])  # two short prompts: the long one's left padding is cut
        start, end = ppo.trim(ro.attention_mask[mb], ro.prompt_len)
        assert start > 0
        t = end - ro.prompt_len
        lp = torch.log_softmax(ppo.response_logits(m.policy, ro.input_ids[mb, start:end], ro.attention_mask[mb, start:end],
                                                   ro.prompt_len - start), -1)
        v = ppo.response_values(m.value, ro.input_ids[mb, start:end], ro.attention_mask[mb, start:end], ro.prompt_len - start)
    mask = ro.mask[mb, :t]
    got = lp.gather(-1, resp[mb, :t, None]).squeeze(-1)[mask]
    want = full_lp[mb, :t].gather(-1, resp[mb, :t, None]).squeeze(-1)[mask]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v[mask], full_v[mb, :t][mask], atol=1e-5, rtol=1e-5)
    assert not ro.mask[mb, t:].any()  # nothing real was cut on the right


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_logprobs_equal_a_forward_of_the_tempered_policy(tiny_model_dir, temperature):
    """The old log-probs the rollout takes from the generation's logits (KV cache, one token at a time)
    equal those of a full forward over the finished sequences, at the sampling temperature."""
    m = models(tiny_model_dir)
    torch.manual_seed(1)
    pc = PPOConfig(max_new_tokens=8, temperature=temperature)
    ids, _ = encode.encode_prompts(m.tokenizer, PROMPTS[:3] + ["A much longer prompt " * 3], "", 64)
    ro = ppo.rollout(m.policy, m.tokenizer, PROMPTS[:4], ids, pc, lambda: torch.autocast("cpu", enabled=False))
    resp = ro.input_ids[:, ro.prompt_len:]
    assert ro.logprobs.shape == resp.shape
    with torch.no_grad():
        logits = ppo.response_logits(m.policy, ro.input_ids, ro.attention_mask, ro.prompt_len, temperature)
    want = torch.log_softmax(logits, -1).gather(-1, resp[..., None]).squeeze(-1)
    torch.testing.assert_close(ro.logprobs[ro.mask], want[ro.mask], atol=1e-4, rtol=1e-4)
    if temperature != 1.0:  # the temperature is applied, not ignored
        untempered = torch.log_softmax(logits * temperature, -1).gather(-1, resp[..., None]).squeeze(-1)
        assert (ro.logprobs[ro.mask] - untempered[ro.mask]).abs().max() > 1e-3
