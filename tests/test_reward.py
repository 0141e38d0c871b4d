"""The reward stage's own mechanics on the tiny model: bucketed forward passes and a loop that learns."""

from __future__ import annotations

import pytest
import torch

from components.stages import reward
from components.core.config import RewardConfig
from components.core import models
from components.core import encode
from components.core import scoring


def test_length_buckets_cover_every_index_once_within_budget():
    lengths = [5, 90, 12, 7, 40, 41, 300, 6]
    groups = scoring.length_buckets(lengths, max_tokens=100)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= 100
    assert [300] in [[lengths[i] for i in g] for g in groups]  # too long for the budget: alone


def test_bucketing_does_not_change_rewards(tiny_model_dir):
    model, tok = reward.load_reward_backbone(tiny_model_dir)
    model.eval()
    seqs = [encode.encode_pair(tok, "What is 2 + 3?", a, "", 128)[0]
            for a in ("5.", "2 + 3 = 5.", "It is five, I think, or maybe six. " * 3, "six")]
    with torch.no_grad():
        small = scoring.raw_rewards(model, seqs, tok.pad_token_id, max_tokens=16)   # one sequence per pass
        big = scoring.raw_rewards(model, seqs, tok.pad_token_id, max_tokens=10**6)  # one padded pass
    torch.testing.assert_close(small, big, atol=1e-5, rtol=1e-4)


def test_kwise_training_learns_a_ranking(tiny_model_dir):
    """Answers ranked by how many times they say 'good': 40 steps must order held-out prompts."""
    torch.manual_seed(0)  # the fresh scalar head is drawn from the global RNG: not from whatever ran before
    model, tok = reward.load_reward_backbone(tiny_model_dir)
    answers = ["good good good", "good good", "good", "bad"]

    def items(prompts):
        return [{"ids": [encode.encode_pair(tok, p, a, "", 64)[0] for a in answers], "ranks": [0, 1, 2, 3],
                 "utility_id": 0, "prompt_type": "unknown"} for p in prompts]

    train_items = items([f"Say something about item {i}." for i in range(16)])
    eval_items = items([f"Tell me about thing {i}." for i in range(8)])
    rc = RewardConfig(max_steps=40, lr=3e-3, head_lr=3e-3, prompts_per_batch=4, warmup_ratio=0.0,
                      utility={"closed": "logsigmoid", "open": "logsigmoid", "unknown": "logsigmoid"})
    autocast = models.autocast_for(False)
    before = reward.evaluate(model, eval_items, tok.pad_token_id, ("logsigmoid",), rc, autocast)
    stats = reward.train(model, train_items, rc, tok.pad_token_id, ("logsigmoid",), 0, autocast=autocast)
    after = reward.evaluate(model, eval_items, tok.pad_token_id, ("logsigmoid",), rc, autocast)
    assert stats["steps"] == 40 and stats["answers"] == 40 * 4 * 4
    assert after["pairs"] == 8 * 6
    assert after["accuracy"] >= 0.9 > before["accuracy"], (before["accuracy"], after["accuracy"])


def test_collapse_curves_by_level_and_by_shape():
    """Hand-computed: a closed prompt with a two-point reward and an open one with a ramp, on a
    4-point grid; `shape=True` min-max scales each prompt (a flat prompt has no shape: left out)."""
    from components.maths.collapse import collapse_curves, curve_distance

    prompts = [("closed", [0.1, 0.9, 0.1, 0.9]), ("open", [0.2, 0.8, 0.4, 0.6]), ("open", [0.5, 0.5, 0.5])]
    level = collapse_curves(prompts[:2], grid=4)
    assert level["closed"] == pytest.approx([0.9, 0.9, 0.1, 0.1]) and level["open"] == pytest.approx([0.8, 0.6, 0.4, 0.2])
    assert curve_distance(level) == pytest.approx((0.1 + 0.3 + 0.3 + 0.1) / 4)
    shape = collapse_curves(prompts, grid=4, shape=True)
    assert shape["closed"] == pytest.approx([1, 1, 0, 0]) and shape["open"] == pytest.approx([1, 2 / 3, 1 / 3, 0])
    assert curve_distance(shape) == pytest.approx((0 + 1 / 3 + 1 / 3 + 0) / 4)
    assert collapse_curves(prompts, grid=4)["open"] == pytest.approx([0.65, 0.55, 0.45, 0.35])  # the flat one counts by level


def test_two_point_share_hand_computed():
    """Two-point rewards: all at the extremes (1.0); an even ramp of 5: only its ends (2/5); a value
    0.05 above the minimum after scaling counts as at it (tol 0.1); flat and two-answer prompts say nothing."""
    from components.maths.collapse import two_point_share

    prompts = [("closed", [0.1, 0.9, 0.1, 0.9]), ("open", [0.0, 0.25, 0.5, 0.75, 1.0]),
               ("open", [0.0, 0.05, 0.5, 1.0]), ("open", [0.3, 0.3, 0.3]), ("closed", [0.2, 0.7])]
    share = two_point_share(prompts)
    assert share == pytest.approx({"closed": 1.0, "open": (2 / 5 + 3 / 4) / 2})
