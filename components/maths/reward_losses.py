"""K-wise reward-model losses: InstructGPT and the reward-collapse paper's prompt-aware utilities.

A prompt with K ranked answers (rank 0 = best, equal ranks = tie) contributes every pair
(w, l) of real answers with ``rank_w < rank_l``; ties give no pair. Per prompt b

    loss_b = -(1 / P_b) * sum_{(w, l)} U(d_wl),        P_b = number of pairs of prompt b,

and the batch loss is the mean of loss_b over the prompts with P_b >= 1.

* ``"logsigmoid"`` is InstructGPT (Ouyang et al. 2022, eq. 1): U(d) = log sigmoid(d) on the raw
  reward difference d = r_w - r_l, with the 1/C(K,2) normalisation (P_b = C(K,2) without ties).
* The other names are the prompt-aware utilities of "Reward Collapse in Aligning Large Language
  Models" (Song et al. 2023): rewards are squashed, s = sigmoid(r), and U acts on
  x = s_w - s_l in (-1, 1). The paper defines U on x > 0 (correctly ordered pairs); below, each is
  extended to x < 0 so that mis-ordered pairs keep a positive gradient (see ``utility``).

Everything is vectorised over a (B, K, K) pair tensor: no Python loop over prompts or pairs.
"""

from __future__ import annotations

import math

import torch

UTILITIES = ("logsigmoid", "linear", "log", "inv", "square", "inv_square")


def utility(name: str, x: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """Elementwise utility U(x), same shape as ``x``.

    For ``"logsigmoid"`` x is a raw reward difference r_w - r_l (InstructGPT eq. 1); for the
    others x = sigmoid(r_w) - sigmoid(r_l) (reward-collapse paper, Song et al. 2023), eps = ``eps``:

    =============  ======================  ===========================================
    name           U(x), x >= 0            U(x), x < 0
    =============  ======================  ===========================================
    logsigmoid     log sigmoid(x)          log sigmoid(x)  (defined everywhere)
    linear         x                       x               (defined everywhere)
    log            log(x + eps)            log(eps) + x / eps
    inv            -1 / (x + eps)          -1/eps + x / eps^2
    inv_square     -1 / (x + eps)^2        -1/eps^2 + 2 x / eps^3
    square         x^2 + x                 -x^2 + x        (i.e. x|x| + x everywhere)
    =============  ======================  ===========================================

    log / inv / inv_square use the C^1 tangent line at x0 = 0, U(0) + U'(0) x, below 0: U stays
    concave and increasing, and a mis-ordered pair gets the largest gradient U'(0). No constant
    shift is added to inv / inv_square (constants do not change gradients).
    For square, U'(0) = 0 for x^2 would give no gradient at 0, and x^2 decreases below 0, so we
    use x|x| + x: C^1, odd, U'(x) = 2|x| + 1 >= 1. On sorted rewards in [0, 1] it has the same
    maximiser as x^2 (both terms are convex, maximised by the half-0 / half-1 step).
    """
    if name == "logsigmoid":
        return torch.nn.functional.logsigmoid(x)
    if name == "linear":
        return x
    if name == "square":
        return x * x.abs() + x
    xp = x.clamp(min=0.0)  # the x >= 0 branch never sees x + eps <= 0 (no nan in its gradient)
    if name == "log":
        pos, u0, du0 = torch.log(xp + eps), math.log(eps), 1.0 / eps
    elif name == "inv":
        pos, u0, du0 = -1.0 / (xp + eps), -1.0 / eps, 1.0 / eps**2
    elif name == "inv_square":
        pos, u0, du0 = -1.0 / (xp + eps) ** 2, -1.0 / eps**2, 2.0 / eps**3
    else:
        raise ValueError(f"unknown utility {name!r}; expected one of {UTILITIES}")
    return torch.where(x >= 0, pos, u0 + du0 * x)


def pairs_from_ranks(ranks: list[int]) -> list[tuple[int, int]]:
    """All (winner, loser) index pairs of one ranking; rank 0 = best, ties give no pair."""
    return [
        (i, j)
        for i in range(len(ranks))
        for j in range(len(ranks))
        if ranks[i] < ranks[j]
    ]


def pair_mask(ranks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, K, K) bool: [b, i, j] is True when i beats j, i.e. both real and ranks[b,i] < ranks[b,j]."""
    both = mask[:, :, None] & mask[:, None, :]
    return both & (ranks[:, :, None] < ranks[:, None, :])


def kwise_loss(r: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor, utility_ids: torch.Tensor,
               utilities: tuple[str, ...], eps: float = 0.01) -> tuple[torch.Tensor, dict]:
    """K-wise ranking loss (InstructGPT eq. 1, generalised to the reward-collapse utilities).

    Args:
        r: (B, K) float raw rewards; padded slots are ignored (any finite value).
        ranks: (B, K) long, 0 = best; equal ranks are ties and form no pair.
        mask: (B, K) bool, True for real answers (mixed K per batch via padding).
        utility_ids: (B,) long, prompt b uses ``utilities[utility_ids[b]]``.
        utilities: names from ``UTILITIES``.
        eps: epsilon of the log / inv / inv_square utilities.

    Returns ``(loss, diag)``: the scalar loss = mean over prompts with >= 1 pair of
    loss_b = -(1/P_b) sum_{w beats l} U(d_wl), where d = r_w - r_l for "logsigmoid" and
    sigmoid(r_w) - sigmoid(r_l) otherwise; and ``diag`` with "accuracy" (share of pairs with
    r_w > r_l, nan when there are none), "pairs" (number of pairs) and "margin" (mean r_w - r_l).
    """
    if r.dtype not in (torch.float32, torch.float64):
        r = r.float()
    valid = pair_mask(ranks, mask)                                   # (B, K, K)
    d_raw = r[:, :, None] - r[:, None, :]                            # r_i - r_j
    s = torch.sigmoid(r)
    d_sig = s[:, :, None] - s[:, None, :]
    u = torch.zeros_like(d_raw)
    for k, name in enumerate(utilities):
        rows = (utility_ids == k)[:, None, None]
        if not bool(rows.any()):
            continue
        d = d_raw if name == "logsigmoid" else d_sig
        d = torch.where(valid, d, torch.zeros_like(d))               # keep padded pairs finite
        u = torch.where(rows, utility(name, d, eps), u)
    u = torch.where(valid, u, torch.zeros_like(u))
    pairs_b = valid.sum(dim=(1, 2))                                  # (B,) P_b
    has = pairs_b > 0
    loss_b = -u.sum(dim=(1, 2)) / pairs_b.clamp(min=1)
    n_prompts = has.sum()
    if int(n_prompts) == 0:
        loss = (r * 0).sum()                                         # zero, but still in the graph
    else:
        loss = (loss_b * has).sum() / n_prompts
    with torch.no_grad():
        total = int(pairs_b.sum())
        gap = d_raw[valid]
        acc = float((gap > 0).sum()) / total if total else float("nan")
        margin = float(gap.mean()) if total else float("nan")
    return loss, {"accuracy": acc, "pairs": total, "margin": margin}


def pairwise_accuracy(r: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor) -> tuple[int, int]:
    """(correct, total) over the pairs of ``pair_mask`` (ties excluded); correct means r_w > r_l strictly.

    Shapes as in ``kwise_loss``: r (B, K), ranks (B, K) long, mask (B, K) bool.
    """
    with torch.no_grad():
        valid = pair_mask(ranks, mask)
        gap = (r[:, :, None] - r[:, None, :])[valid]
        return int((gap > 0).sum()), int(valid.sum())
