"""PPO-ptx maths (InstructGPT, Ouyang et al. 2022): KL-shaped rewards, GAE, clipped losses, KL control.

Per-token tensors are (B, T) over response tokens with a ``mask`` (B, T), float or bool, nonzero
for real response tokens and 0 after EOS / padding. The mask is binary (not a weight) and every
reduction is masked: values at masked positions never change a result, even when inf / nan.
An all-zero mask gives a nan mean (the mean of nothing), as ``torch.mean`` of an empty tensor.

InstructGPT eq. 2: reward = RM score at the last real token - ``kl_coef`` * KL(pi || pi_SFT) per
token, optimised with PPO (value function, GAE), plus ``ptx_coef`` (gamma) * pretraining NLL.
"""

from __future__ import annotations

import math

import torch

KL_KINDS = ("k1", "k2", "k3")


def _m(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x * mask) / sum(mask), over all entries (``dim=None``) or along ``dim``; x, mask same shape."""
    m = _m(mask)
    xs = torch.where(m, x, torch.zeros_like(x))
    return xs.sum() / m.sum() if dim is None else xs.sum(dim) / m.sum(dim)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries of x (scalar); ``unbiased`` applies Bessel's n / (n - 1) when n > 1."""
    m = _m(mask)
    x = torch.where(m, x, torch.zeros_like(x))          # no inf / nan from masked entries, even in grads
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m)
    if unbiased:
        n = m.sum().to(var.dtype)
        var = var * torch.where(n > 1, n / (n - 1).clamp(min=1), torch.ones_like(n))
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over masked entries, masked ones 0; shift_mean=False re-adds the mean."""
    m = _m(mask)
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, torch.zeros_like(out))


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimator of KL(pi || ref) from samples of pi; lr = logp - ref_logp; any shape.

    Schulman, "Approximating KL divergence" (2020): k1 = lr (unbiased, can be < 0);
    k2 = lr^2 / 2 (biased, low variance); k3 = (exp(-lr) - 1) + lr (unbiased and >= 0).
    """
    lr = logp - ref_logp
    if kind == "k1":
        return lr
    if kind == "k2":
        return 0.5 * lr**2
    if kind == "k3":
        return torch.expm1(-lr) + lr
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_KINDS}")


def shaped_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                   kl_coef: float | torch.Tensor) -> torch.Tensor:
    """(B, T) rewards r_t = -kl_coef * kl_t on real tokens, plus score (B,) at each row's last real token.

    InstructGPT eq. 2 / Ziegler et al. 2019: R = r_theta(x, y) - beta * KL. The last real token is
    the largest index with mask != 0 (rows may differ in length); a row without one gets nothing.
    """
    m = _m(mask)
    rewards = torch.where(m, -kl_coef * kl, torch.zeros_like(kl))
    pos = torch.arange(m.shape[1], device=m.device).expand_as(m)
    last = torch.where(m, pos, torch.full_like(pos, -1)).amax(dim=1, keepdim=True)   # (B, 1), -1 = none
    at_end = (pos == last) & m
    return rewards + torch.where(at_end, score.to(rewards.dtype)[:, None], torch.zeros_like(rewards))


@torch.no_grad()
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16); returns (advantages, returns), (B, T).

    delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lambda * A_{t+1},
    with V and A taken as 0 beyond the last real token (the episode ends there: no bootstrap).
    returns = advantages + values. Masked positions are 0 in both; outputs are detached.
    """
    m = _m(mask)
    zeros = torch.zeros_like(values)
    r = torch.where(m, rewards.to(values.dtype), zeros)
    v = torch.where(m, values, zeros)
    adv = torch.zeros_like(v)
    next_v = next_a = torch.zeros_like(v[:, 0])                     # V, A beyond the end are 0
    for t in reversed(range(v.shape[1])):
        delta = r[:, t] + gamma * next_v - v[:, t]
        a_t = torch.where(m[:, t], delta + gamma * gae_lambda * next_a, next_a.new_zeros(()))
        adv[:, t] = a_t
        next_v, next_a = v[:, t], a_t
    return adv, torch.where(m, adv + v, zeros)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_coef: float) -> tuple[torch.Tensor, dict]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), negated for minimisation; inputs (B, T).

    ratio = exp(logp - old_logp); loss = masked_mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))).
    stats (floats): ``clipfrac`` = share of real tokens with |ratio - 1| > eps; ``approx_kl`` =
    masked mean of the k3 estimator of KL(old || new), (ratio - 1) - log ratio.
    """
    m = _m(mask)
    log_ratio = torch.where(m, logp - old_logp, torch.zeros_like(logp))   # masked: ratio 1, no inf/nan grads
    ratio = torch.exp(log_ratio)
    adv = torch.where(m, advantages, torch.zeros_like(advantages))
    pg = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef))
    loss = masked_mean(pg, m)
    with torch.no_grad():
        clipfrac = masked_mean(((ratio - 1.0).abs() > clip_coef).to(ratio.dtype), m)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, m)
    return loss, {"clipfrac": float(clipfrac), "approx_kl": float(approx_kl)}


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip_range_value: float | None) -> tuple[torch.Tensor, dict]:
    """PPO2-style clipped value loss; inputs (B, T).

    v_clip = old_values + clamp(values - old_values, -c, c);
    loss = 0.5 * masked_mean(max((values - R)^2, (v_clip - R)^2)). With c None or <= 0: 0.5 * masked MSE.
    stats: ``vf_clipfrac`` = share of real tokens where the clipped term is strictly larger (is used).
    """
    m = _m(mask)
    zeros = torch.zeros_like(values)
    values, old_values = torch.where(m, values, zeros), torch.where(m, old_values, zeros)
    returns = torch.where(m, returns.to(values.dtype), zeros)
    err = (values - returns) ** 2
    if clip_range_value is None or clip_range_value <= 0:
        return 0.5 * masked_mean(err, m), {"vf_clipfrac": 0.0}
    v_clip = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    err_clip = (v_clip - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(err, err_clip), m)
    with torch.no_grad():
        frac = masked_mean((err_clip > err).to(err.dtype), m)
    return loss, {"vf_clipfrac": float(frac)}


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """(B, T, V) -> (B, T): H = -sum_v p_v log p_v via log_softmax (logsumexp); -inf logits add 0."""
    logp = torch.log_softmax(_upcast(logits), dim=-1)
    p = logp.exp()
    return -(p * logp.clamp(min=torch.finfo(logp.dtype).min)).sum(-1)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(B, T, V), (B, T) long -> (B, T): log softmax(logits)[tokens] = z_token - logsumexp(z)."""
    z = _upcast(logits)
    return z.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)


def ptx_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Pretraining NLL -masked_mean(log p(labels)) (InstructGPT eq. 2); logits (B, T, V), labels (B, T).
    ``dim=None``: over every token of the batch; ``dim=1``: one mean per sequence, (B,).

    Logits are already aligned with labels (the caller shifts); masked labels may be anything (e.g. -100).
    """
    m = _m(mask)
    safe = torch.where(m, labels, torch.zeros_like(labels))
    return -masked_mean(logprobs_from_logits(logits, safe), m, dim)


def ppo_ptx_objective(pg_loss: torch.Tensor, vf_loss: torch.Tensor, ptx_nll: torch.Tensor,
                      vf_coef: float, ptx_coef: float) -> torch.Tensor:
    """pg_loss + vf_coef * vf_loss + ptx_coef * ptx_nll (gamma of InstructGPT eq. 2); ptx_coef = 0: PPO."""
    total = pg_loss + vf_coef * vf_loss
    return total if ptx_coef == 0 else total + ptx_coef * ptx_nll


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[R - V] / Var[R] over masked entries (1 = perfect, 0 = the mean); nan if Var[R] = 0."""
    var_r = float(masked_var(returns, mask))
    if not var_r > 0:                                               # 0 or nan
        return math.nan
    return 1.0 - float(masked_var(returns - values, mask)) / var_r


class FixedKLController:
    """Constant KL coefficient beta; same interface as ``AdaptiveKLController`` (update is a no-op)."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Adaptive beta (Ziegler et al. 2019, sec. 2.2): proportional control of the measured KL to ``target``.

    e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_steps / horizon).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target}, {horizon}")
        super().__init__(init_kl_coef)
        self.target, self.horizon = float(target), float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        err = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + err * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = (float(state[k]) for k in ("value", "target", "horizon"))


def kl_controller(kl_coef: float, target: float | None = None, horizon: float = 10000) -> FixedKLController:
    """``AdaptiveKLController(kl_coef, target, horizon)`` if ``target`` is set, else ``FixedKLController``."""
    return FixedKLController(kl_coef) if target is None else AdaptiveKLController(kl_coef, target, horizon)
