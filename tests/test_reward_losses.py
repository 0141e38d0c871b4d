"""K-wise reward losses: hand-computed values, an explicit pairwise reference, and the
reward-collapse paper's optimal reward profiles (Song et al. 2023, found numerically here)."""

from __future__ import annotations

import math

import pytest
import torch

from components.maths.reward_losses import UTILITIES, kwise_loss, pairwise_accuracy, utility

torch.set_num_threads(2)


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# A reference written independently of the module: one Python scalar expression per pair.
# ---------------------------------------------------------------------------------------------
def ref_u(name: str, rw: torch.Tensor, rl: torch.Tensor, eps: float) -> torch.Tensor:
    if name == "logsigmoid":
        return -torch.log1p(torch.exp(-(rw - rl)))
    x = 1 / (1 + torch.exp(-rw)) - 1 / (1 + torch.exp(-rl))
    if name == "linear":
        return x
    if name == "square":
        return x**2 + x if x >= 0 else -(x**2) + x
    if name == "log":
        return torch.log(x + eps) if x >= 0 else math.log(eps) + x / eps
    if name == "inv":
        return -1 / (x + eps) if x >= 0 else -1 / eps + x / eps**2
    if name == "inv_square":
        return -1 / (x + eps) ** 2 if x >= 0 else -1 / eps**2 + 2 * x / eps**3
    raise AssertionError(name)


def ref_loss(r, ranks, mask, utility_ids, utilities, eps):
    per_prompt = []
    for b in range(r.shape[0]):
        terms = [ref_u(utilities[int(utility_ids[b])], r[b, i], r[b, j], eps)
                 for i in range(r.shape[1]) for j in range(r.shape[1])
                 if mask[b, i] and mask[b, j] and ranks[b, i] < ranks[b, j]]
        if terms:
            per_prompt.append(-sum(terms) / len(terms))
    return sum(per_prompt) / len(per_prompt)


def random_batch(seed: int, ks=(4, 6, 9), kmax=9):
    """B = len(ks) prompts, K_b answers each (padding masked), ranks with ties, rewards ~ N(0, 2)."""
    g = torch.Generator().manual_seed(seed)
    b = len(ks)
    r = 2 * torch.randn(b, kmax, generator=g, dtype=torch.float64)
    ranks = torch.randint(0, 4, (b, kmax), generator=g)  # only 4 rank levels -> many ties
    mask = torch.arange(kmax)[None, :] < torch.tensor(ks)[:, None]
    r = r * mask  # padded slots hold 0, as in reward.batch_rewards
    return r, ranks, mask


# ---------------------------------------------------------------------------------------------
# a. hand-computed value with a tie; f. reduction
# ---------------------------------------------------------------------------------------------
def test_logsigmoid_k3_with_tie_hand_value():
    r, ranks, mask = t([[1.0, 0.0, 0.5]]), torch.tensor([[0, 1, 1]]), torch.ones(1, 3, dtype=torch.bool)
    loss, diag = kwise_loss(r, ranks, mask, torch.tensor([0]), ("logsigmoid",))
    expected = -(math.log(1 / (1 + math.exp(-1.0))) + math.log(1 / (1 + math.exp(-0.5)))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert diag["pairs"] == 2 and diag["accuracy"] == 1.0
    assert diag["margin"] == pytest.approx(0.75)


def test_linear_utility_uses_sigmoid_rewards_hand_value():
    r, ranks, mask = t([[1.0, 0.0, 0.5]]), torch.tensor([[0, 1, 2]]), torch.ones(1, 3, dtype=torch.bool)
    loss, _ = kwise_loss(r, ranks, mask, torch.tensor([0]), ("linear",))
    s = [sig(1.0), sig(0.0), sig(0.5)]
    expected = -((s[0] - s[1]) + (s[0] - s[2]) + (s[1] - s[2])) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_reduction_is_mean_over_prompts_of_mean_over_pairs():
    r = t([[2.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    ranks = torch.tensor([[0, 1, 0], [0, 1, 2]])
    mask = torch.tensor([[True, True, False], [True, True, True]])  # K = 2 and K = 3
    loss, diag = kwise_loss(r, ranks, mask, torch.tensor([0, 0]), ("logsigmoid",))
    loss0 = -logsig(2.0)
    loss1 = -(logsig(-1.0) + logsig(1.0) + logsig(2.0)) / 3
    pooled = -(logsig(2.0) + logsig(-1.0) + logsig(1.0) + logsig(2.0)) / 4
    assert loss.item() == pytest.approx((loss0 + loss1) / 2, abs=1e-12)
    assert abs((loss0 + loss1) / 2 - pooled) > 1e-3  # the check can tell the two reductions apart
    assert diag["pairs"] == 4


# ---------------------------------------------------------------------------------------------
# b. value and gradient equal the explicit pairwise expansion
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("utilities,eps", [
    (("logsigmoid", "linear", "log"), 0.05),
    (("inv", "square", "inv_square"), 0.1),
    (("log", "logsigmoid", "inv"), 0.01),
])
@pytest.mark.parametrize("seed", [0, 1])
def test_value_and_gradient_match_pairwise_reference(utilities, eps, seed):
    r, ranks, mask = random_batch(seed)
    uid = torch.tensor([0, 1, 2])
    r1 = r.clone().requires_grad_()
    loss, _ = kwise_loss(r1, ranks, mask, uid, utilities, eps=eps)
    (g1,) = torch.autograd.grad(loss, r1)
    r2 = r.clone().requires_grad_()
    ref = ref_loss(r2, ranks, mask, uid, utilities, eps)
    (g2,) = torch.autograd.grad(ref, r2)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-10)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-9)
    assert torch.all(g1[~mask] == 0)


def test_random_batches_exercise_misordered_pairs():
    """Guard for the test above: its batches contain pairs on both sides of x = 0."""
    r, ranks, mask = random_batch(0)
    c, n = pairwise_accuracy(r, ranks, mask)
    assert 0 < c < n


# ---------------------------------------------------------------------------------------------
# c. ties and padding
# ---------------------------------------------------------------------------------------------
def test_ties_give_no_pair():
    r = t([[0.3, -1.0, 2.0], [1.0, 0.0, 0.0]]).requires_grad_()
    ranks = torch.tensor([[1, 1, 1], [0, 1, 2]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    loss, diag = kwise_loss(r, ranks, mask, torch.tensor([0, 0]), ("logsigmoid",))
    assert diag["pairs"] == 3  # the all-tied prompt adds no pair ...
    assert loss.item() == pytest.approx(-(logsig(1.0) + logsig(1.0) + logsig(0.0)) / 3, abs=1e-12)
    (g,) = torch.autograd.grad(loss, r)  # ... and is left out of the mean over prompts
    assert torch.all(g[0] == 0)


def test_only_ties_gives_zero_loss_with_graph():
    r = t([[0.3, -1.0]]).requires_grad_()
    loss, diag = kwise_loss(r, torch.tensor([[0, 0]]), torch.ones(1, 2, dtype=torch.bool), torch.tensor([0]), ("log",))
    assert loss.item() == 0.0 and diag["pairs"] == 0 and math.isnan(diag["accuracy"])
    (g,) = torch.autograd.grad(loss, r)
    assert torch.all(g == 0)


@pytest.mark.parametrize("name", UTILITIES)
def test_padding_with_garbage_changes_nothing(name):
    r, ranks, mask = random_batch(3, ks=(3, 5), kmax=5)
    uid = torch.tensor([0, 0])
    r1 = r.clone().requires_grad_()
    loss1, d1 = kwise_loss(r1, ranks, mask, uid, (name,), eps=0.05)
    (g1,) = torch.autograd.grad(loss1, r1)
    # three extra slots with garbage rewards and ranks that would beat / lose to real answers
    junk = t([[1e3, -50.0, 7.0], [-1e3, 0.0, 3.0]])
    r2 = torch.cat([r, junk], 1).requires_grad_()
    ranks2 = torch.cat([ranks, torch.tensor([[0, 5, -1], [9, 0, 0]])], 1)
    mask2 = torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], 1)
    loss2, d2 = kwise_loss(r2, ranks2, mask2, uid, (name,), eps=0.05)
    (g2,) = torch.autograd.grad(loss2, r2)
    assert loss2.item() == pytest.approx(loss1.item(), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(g2[:, :5], g1, rtol=0, atol=1e-12)
    assert torch.all(g2[:, 5:] == 0) and torch.all(g2[~mask2] == 0)
    assert d1 == d2


# ---------------------------------------------------------------------------------------------
# d. accuracy
# ---------------------------------------------------------------------------------------------
def test_pairwise_accuracy_hand_example():
    r = t([[3.0, 1.0, 2.0, 0.0], [0.5, 0.5, 1.0, 9.0]])
    ranks = torch.tensor([[0, 1, 2, 0], [0, 1, 1, 0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, False]])
    # prompt 0: 3>1 yes, 3>2 yes, 1>2 no; prompt 1: 0.5>0.5 no (strict), 0.5>1 no; (1,2) tied
    assert pairwise_accuracy(r, ranks, mask) == (2, 5)
    _, diag = kwise_loss(r, ranks, mask, torch.tensor([0, 0]), ("logsigmoid",))
    assert diag["accuracy"] == pytest.approx(0.4) and diag["pairs"] == 5
    assert diag["margin"] == pytest.approx((2 + 1 - 1 + 0 - 0.5) / 5)


# ---------------------------------------------------------------------------------------------
# utility shape: C^1 at 0, increasing on (-1, 1), the paper's U on x > 0
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [u for u in UTILITIES if u != "logsigmoid"])
def test_utility_is_c1_and_increasing(name):
    eps = 0.05
    x = torch.linspace(-0.999, 0.999, 2001, dtype=torch.float64).requires_grad_()
    (g,) = torch.autograd.grad(utility(name, x, eps).sum(), x)
    assert torch.all(g > 0)
    h = torch.tensor([-1e-7, 1e-7], dtype=torch.float64, requires_grad=True)
    u = utility(name, h, eps)
    (gh,) = torch.autograd.grad(u.sum(), h)
    secant = (u[1] - u[0]).item() / 2e-7  # no jump in U: the secant across 0 is the slope U'(0)
    assert secant == pytest.approx(float(gh[0]), rel=1e-4)
    assert float(gh[1]) == pytest.approx(float(gh[0]), rel=1e-4)


def test_utility_on_positive_x_is_the_papers():
    x, eps = 0.3, 0.01
    xs = torch.tensor([x], dtype=torch.float64)
    assert float(utility("linear", xs, eps)) == pytest.approx(x)
    assert float(utility("log", xs, eps)) == pytest.approx(math.log(x + eps))
    assert float(utility("inv", xs, eps)) == pytest.approx(-1 / (x + eps))
    assert float(utility("inv_square", xs, eps)) == pytest.approx(-1 / (x + eps) ** 2)
    with pytest.raises(ValueError):
        utility("cubic", xs, eps)


# ---------------------------------------------------------------------------------------------
# e. the reward-collapse paper's optimal profiles for n = 8
# ---------------------------------------------------------------------------------------------
PAPER = {
    "linear": [0, 0, 0, 0, 1, 1, 1, 1],
    "log": [0, 0.064, 0.204, 0.395, 0.605, 0.796, 0.936, 1],
    "inv": [0, 0.121, 0.267, 0.421, 0.579, 0.733, 0.879, 1],
    "square": [0, 0, 0, 0, 1, 1, 1, 1],  # convex U: same two-point step as x (not in the paper's table)
}


def optimal_profile(name: str, n: int = 8, steps: int = 1500) -> list[float]:
    """argmax over 0 <= s_1 <= ... <= s_n <= 1 of sum_{i<j} U(s_j - s_i), by Adam in float64.

    All n points are free: s = cumsum(softmax(z))[:n] with n + 1 gaps (the first and last gap
    are the slack below s_1 and above s_n), so the endpoints 0 and 1 are found, not imposed.
    Gaps are > 0, so log / inv see x > 0 only (eps = 1e-6 makes them the pure log x, -1/x).
    """
    z = torch.zeros(n + 1, dtype=torch.float64, requires_grad=True)  # start: evenly spread
    i, j = torch.triu_indices(n, n, 1)
    opt = torch.optim.Adam([z], lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        s = torch.cumsum(torch.softmax(z, 0), 0)[:n]
        loss = -utility(name, s[j] - s[i], 1e-6).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return s.detach().sort().values.tolist()


@pytest.mark.parametrize("name", list(PAPER))
def test_optimal_reward_profile_matches_paper(name):
    got = optimal_profile(name)
    assert got == pytest.approx(PAPER[name], abs=0.01), [round(v, 3) for v in got]
