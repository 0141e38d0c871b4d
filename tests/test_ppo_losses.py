"""PPO-ptx maths: hand-computed values (written out with plain floats), properties, and references."""

from __future__ import annotations

import math

import pytest
import torch

from components.maths.ppo_losses import AdaptiveKLController, FixedKLController, entropy_from_logits, explained_variance, gae, kl_controller, kl_estimate, logprobs_from_logits, masked_mean, masked_var, masked_whiten, policy_loss, ppo_ptx_objective, ptx_loss, shaped_rewards, value_loss

torch.set_num_threads(2)
NAN, INF = float("nan"), float("inf")


def t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def close(a, b, tol=1e-9):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          atol=tol, rtol=0)


# ------------------------------------------------------------------------------------ masked stats
def test_masked_mean_and_var_ignore_masked_entries():
    x = t([[1.0, 2.0, NAN], [3.0, INF, -INF]])
    mask = t([[1, 1, 0], [1, 0, 0]])
    assert close(masked_mean(x, mask), 2.0)
    assert close(masked_mean(x, mask.bool(), dim=1), [1.5, 3.0])
    assert close(masked_var(x, mask), 1.0)                       # ((1-2)^2 + 0 + (3-2)^2) / (3 - 1)
    assert close(masked_var(x, mask, unbiased=False), 2.0 / 3.0)


def test_masked_whiten_ignores_masked_entries_and_normalises():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64) * 3 + 5
    mask = torch.ones(4, 6)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    out = masked_whiten(x, mask)
    x2 = x.clone()
    x2[mask == 0] = 1e6
    x2[3, 5] = NAN
    assert torch.equal(masked_whiten(x2, mask), out)
    assert (out[mask == 0] == 0).all()
    assert close(masked_mean(out, mask), 0.0)
    assert close(masked_var(out, mask), 1.0, tol=1e-6)
    sel = x[mask.bool()]
    assert close(out[mask.bool()], (sel - sel.mean()) / sel.std(), tol=1e-6)
    kept = masked_whiten(x, mask, shift_mean=False)
    assert close(masked_mean(kept, mask), masked_mean(x, mask))


# ------------------------------------------------------------------------------------ KL
def test_kl_estimators_hand_values():
    logp, ref = t([0.0, 0.5, -1.0]), t([0.0, 0.0, 0.0])
    assert close(kl_estimate(logp, ref, "k1"), [0.0, 0.5, -1.0])
    assert close(kl_estimate(logp, ref, "k2"), [0.0, 0.125, 0.5])
    assert close(kl_estimate(logp, ref, "k3"), [0.0, math.exp(-0.5) - 1 + 0.5, math.e - 1 - 1])
    lr = torch.linspace(-20, 20, 401, dtype=torch.float64)
    assert (kl_estimate(lr, torch.zeros_like(lr), "k3") >= 0).all()
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k4")


def test_kl_estimators_monte_carlo_unbiased():
    p, q = [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]
    exact = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))             # KL(p || q) = 0.27489...
    k2_exact = sum(pi * 0.5 * math.log(pi / qi) ** 2 for pi, qi in zip(p, q))
    g = torch.Generator().manual_seed(1234)
    x = torch.multinomial(t(p), 200_000, replacement=True, generator=g)
    logp, logq = torch.log(t(p))[x], torch.log(t(q))[x]
    assert abs(kl_estimate(logp, logq, "k1").mean().item() - exact) < 0.01
    assert abs(kl_estimate(logp, logq, "k3").mean().item() - exact) < 0.01
    k2 = kl_estimate(logp, logq, "k2").mean().item()
    assert abs(k2 - k2_exact) < 0.005 and abs(k2 - exact) > 0.01           # k2 is biased (0.294 vs 0.275)


# ------------------------------------------------------------------------------------ rewards
def test_shaped_rewards_score_on_last_real_token():
    kl = t([[0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 9.0, 9.0], [5.0, 5.0, 5.0, 5.0]])
    mask = t([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    score = t([1.0, 2.0, 3.0])
    expected = [[-0.01, -0.02, -0.03, -0.04 + 1.0],
                [-0.1, -0.2 + 2.0, 0.0, 0.0],
                [0.0, 0.0, 0.0, 0.0]]
    assert close(shaped_rewards(score, kl, mask, 0.1), expected)
    assert close(shaped_rewards(score, kl, mask.bool(), 0.1), expected)
    assert close(shaped_rewards(score, kl, mask, 0.0), [[0, 0, 0, 1.0], [0, 2.0, 0, 0], [0, 0, 0, 0]])


# ------------------------------------------------------------------------------------ GAE
def test_gae_hand_computed_with_short_row():
    rewards = t([[0.0, 0.0, 1.0], [0.2, 1.0, 99.0]])
    values = t([[0.5, 0.6, 0.7], [0.4, 0.8, 5.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, gae_lambda=0.95)
    # row 0: delta_2 = 1 - 0.7 = 0.3, delta_1 = 0 + 0.7 - 0.6 = 0.1, delta_0 = 0 + 0.6 - 0.5 = 0.1
    a2 = 0.3
    a1 = 0.1 + 0.95 * a2                    # 0.385
    a0 = 0.1 + 0.95 * a1                    # 0.46575
    # row 1 ends at t = 1: no bootstrap from V_2 = 5.0, reward 99 ignored
    b1 = 1.0 + 0.0 - 0.8                    # 0.2
    b0 = (0.2 + 0.8 - 0.4) + 0.95 * b1      # 0.6 + 0.19 = 0.79
    assert close(adv, [[a0, a1, a2], [b0, b1, 0.0]])
    assert close(ret, [[a0 + 0.5, a1 + 0.6, a2 + 0.7], [b0 + 0.4, b1 + 0.8, 0.0]])


def test_gae_hand_computed_discounted():
    adv, _ = gae(t([[1.0, 2.0]]), t([[0.5, 1.0]]), t([[1, 1]]), gamma=0.9, gae_lambda=0.5)
    d1 = 2.0 - 1.0                          # last token: no bootstrap
    d0 = 1.0 + 0.9 * 1.0 - 0.5              # 1.4
    assert close(adv, [[d0 + 0.9 * 0.5 * d1, d1]])   # [1.85, 1.0]


def test_gae_lambda_limits():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(3, 5, generator=g, dtype=torch.float64)
    v = torch.randn(3, 5, generator=g, dtype=torch.float64)
    mask = t([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    m = mask.bool()
    # lambda = 1, gamma = 1: A_t = sum_{k >= t} r_k - V_t (Monte-Carlo return minus value)
    adv, ret = gae(r, v, mask, gamma=1.0, gae_lambda=1.0)
    rz = torch.where(m, r, 0.0)
    to_go = rz.flip(1).cumsum(1).flip(1)
    assert close(adv, torch.where(m, to_go - v, 0.0))
    assert close(ret, torch.where(m, to_go, 0.0))
    # lambda = 0: A_t = delta_t = r_t + gamma V_{t+1} - V_t, V = 0 past the end
    gamma = 0.9
    adv0, _ = gae(r, v, mask, gamma=gamma, gae_lambda=0.0)
    vz = torch.where(m, v, 0.0)
    v_next = torch.cat([vz[:, 1:], torch.zeros(3, 1, dtype=vz.dtype)], dim=1)
    assert close(adv0, torch.where(m, rz + gamma * v_next - v, 0.0))


# ------------------------------------------------------------------------------------ policy loss
def test_policy_loss_ratio_one_is_minus_mean_advantage():
    adv = t([[1.0, -2.0, 4.0], [3.0, 0.5, 100.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    logp = t([[-1.0, -2.0, -0.5], [-0.1, -3.0, -1.0]])
    loss, stats = policy_loss(logp, logp.clone(), adv, mask, clip_coef=0.2)
    assert close(loss, -(1.0 - 2.0 + 4.0 + 3.0 + 0.5) / 5)
    assert stats["clipfrac"] == 0.0 and abs(stats["approx_kl"]) < 1e-12


def test_policy_loss_clipping_hand_numbers_and_gradient():
    ratios = [1.5, 0.5, 1.1, 1.5]
    adv = t([[2.0, -1.0, 1.0, -1.0, 7.0]])
    old = t([[-1.0, -1.0, -1.0, -1.0, -1.0]])
    logp = (old + t([[math.log(r) for r in ratios] + [0.0]])).clone()
    logp[0, 4] = INF                                                       # masked garbage
    logp.requires_grad_(True)
    mask = t([[1, 1, 1, 1, 0]])
    loss, stats = policy_loss(logp, old, adv, mask, clip_coef=0.2)
    # token 0: A>0, ratio 1.5 -> max(-3.0, -2.4) = -2.4 (clipped)
    # token 1: A<0, ratio 0.5 -> max(0.5, 0.8) = 0.8 (clipped)
    # token 2: ratio 1.1 inside -> -1.1;  token 3: A<0, ratio 1.5 -> max(1.5, 1.2) = 1.5 (unclipped)
    assert close(loss, (-2.4 + 0.8 - 1.1 + 1.5) / 4)
    assert stats["clipfrac"] == pytest.approx(0.75)                          # tokens 0, 1, 3
    assert stats["approx_kl"] == pytest.approx(sum((r - 1) - math.log(r) for r in ratios) / 4)
    loss.backward()
    # d/dlogp of -A * ratio is -A * ratio; clipped tokens (and the masked one) get exactly 0
    assert close(logp.grad, [[0.0, 0.0, -1.0 * 1.1 / 4, 1.0 * 1.5 / 4, 0.0]])


# ------------------------------------------------------------------------------------ value loss
def test_value_loss_clipped_and_unclipped():
    values = t([[1.3, 2.0, 0.5, 0.5, 42.0]])
    old = t([[0.8, 1.0, 1.0, 0.4, -7.0]])
    ret = t([[1.5, 1.0, 0.0, 0.0, 0.0]])
    mask = t([[1, 1, 1, 1, 0]])
    # token 0: v_clip = 1.0 -> max(0.04, 0.25) = 0.25 (clipped larger); token 1: v_clip = 1.2 ->
    # max(1.0, 0.04) = 1.0 (unclipped larger); token 2: v_clip = 0.8 -> max(0.25, 0.64) = 0.64
    # (clipped larger); token 3: |0.1| <= 0.2, both 0.25
    loss, stats = value_loss(values, old, ret, mask, clip_range_value=0.2)
    assert close(loss, 0.5 * (0.25 + 1.0 + 0.64 + 0.25) / 4)
    assert stats["vf_clipfrac"] == pytest.approx(2 / 4)
    mse_half = 0.5 * (0.04 + 1.0 + 0.25 + 0.25) / 4
    for c in (None, 0.0, -1.0):
        loss_u, stats_u = value_loss(values, old, ret, mask, clip_range_value=c)
        assert close(loss_u, mse_half) and stats_u["vf_clipfrac"] == 0.0


# ------------------------------------------------------------------------------------ logits
def test_entropy_and_logprobs_match_categorical():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 7, generator=g, dtype=torch.float64) * 4
    logits[1, 2] *= 1e3                                                    # very peaked: stability
    logits[0, 1, 3] = -INF                                                 # impossible token
    tokens = torch.randint(0, 7, (2, 3), generator=g)
    tokens[0, 1] = 2
    dist = torch.distributions.Categorical(logits=logits)
    ent = entropy_from_logits(logits)
    assert torch.isfinite(ent).all()
    assert close(ent, dist.entropy(), tol=1e-9)
    assert close(logprobs_from_logits(logits, tokens), dist.log_prob(tokens), tol=1e-9)
    assert entropy_from_logits(logits.to(torch.bfloat16)).dtype == torch.float32   # half is upcast
    uniform = torch.zeros(1, 1, 5)
    assert close(entropy_from_logits(uniform), [[math.log(5)]], tol=1e-6)


# ------------------------------------------------------------------------------------ ptx
def test_ptx_loss_hand_nll_and_objective():
    logits = t([[[0.0, math.log(2.0), 0.0], [0.0, 0.0, 0.0], [9.0, -9.0, 3.0]]])
    labels = torch.tensor([[1, 2, -100]])
    mask = t([[1, 1, 0]])
    nll = ptx_loss(logits, labels, mask)
    assert close(nll, (math.log(2.0) + math.log(3.0)) / 2)               # p = 1/2, then 1/3
    two = t([[[0.0, math.log(2.0), 0.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [9.0, -9.0, 3.0]]])
    per_row = ptx_loss(two, torch.tensor([[1, 2], [0, -100]]), t([[1, 1], [1, 0]]), dim=1)
    assert close(per_row, [(math.log(2.0) + math.log(3.0)) / 2, math.log(3.0)])  # one mean per sequence
    pg, vf = t(0.3), t(2.0)
    assert close(ppo_ptx_objective(pg, vf, nll, vf_coef=0.1, ptx_coef=0.0), 0.3 + 0.1 * 2.0)
    assert close(ppo_ptx_objective(pg, vf, t(NAN), vf_coef=0.1, ptx_coef=0.0), 0.5)
    assert close(ppo_ptx_objective(pg, vf, nll, vf_coef=0.1, ptx_coef=2.0), 0.5 + 2.0 * nll)


# ------------------------------------------------------------------------------------ explained var
def test_explained_variance():
    ret = t([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    garbage = t([[0.0, 0.0, 0.0], [0.0, 0.0, 1e9]])
    assert explained_variance(ret + garbage, ret, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(ret, 3.0) + garbage, ret, mask) == pytest.approx(0.0)
    assert explained_variance(ret, ret - ret + 2.0, mask) != explained_variance(ret, ret - ret + 2.0, mask)


# ------------------------------------------------------------------------------------ KL control
def test_adaptive_kl_controller_hand_update_and_clip():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert c.update(7.0, 256) == pytest.approx(0.1 * (1 + (7 / 6 - 1) * 256 / 10000))
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert c.update(100.0, 256) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))     # error clipped at +0.2
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(0.0, 256)
    assert c.value == pytest.approx(0.1 * (1 - 0.2 * 256 / 10000))                  # error clipped at -0.2


def test_kl_controller_state_dict_round_trip_and_factory():
    a = kl_controller(0.2, target=1.0, horizon=500)
    assert isinstance(a, AdaptiveKLController)
    for kl in (1.5, 0.3, 1.1):
        a.update(kl, 64)
    b = AdaptiveKLController(9.0, target=3.0, horizon=7)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    assert b.update(2.0, 32) == a.update(2.0, 32)
    f = kl_controller(0.05)
    assert isinstance(f, FixedKLController) and not isinstance(f, AdaptiveKLController)
    assert f.update(123.0, 1000) == 0.05 and f.value == 0.05
    g = FixedKLController(1.0)
    g.load_state_dict(f.state_dict())
    assert g.value == 0.05
