"""Gradual surrogate gradient (paper section 2.2): the beta schedule, the alpha rule, the spike op."""
from __future__ import annotations

import math

import torch

from isnm.config import ALPHA_RULES



def beta_at(epoch: float, max_epoch: float, beta_min: float, beta_max: float) -> float:
    """Eq. 7: beta grows log-linearly from beta_min (epoch 0) to beta_max (epoch max_epoch)."""
    if max_epoch <= 0:
        return beta_max
    frac = epoch / max_epoch
    return math.exp(math.log(beta_min) + (math.log(beta_max) - math.log(beta_min)) * frac)


def alpha_for(beta: float, rule: str | float = "paper") -> float:
    """Eq. 8 is rule "paper": max(1/beta, 1), so a wide surrogate (beta < 1) keeps peak slope 1.

    "unit_peak" is min(1/beta, 1): the peak gradient alpha*beta is 1 whenever beta >= 1.
    A number is a constant alpha, for ablating the rule itself.
    """
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        return float(rule)
    if rule == "paper":
        return max(1.0 / beta, 1.0)
    if rule == "unit_peak":
        return min(1.0 / beta, 1.0)
    raise ValueError(f"alpha rule {rule!r} unknown; expected one of {ALPHA_RULES} or a number")


def surrogate_grad(v: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Eq. 9: d s / d u at v = u - theta."""
    return alpha * beta * (1.0 - torch.tanh(beta * v) ** 2)


class Spike(torch.autograd.Function):
    """Heaviside forward (H(0) = 1), eq. 9 backward."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
        ctx.save_for_backward(v)
        ctx.alpha, ctx.beta = alpha, beta
        return (v >= 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (v,) = ctx.saved_tensors
        return grad * surrogate_grad(v, ctx.alpha, ctx.beta), None, None


def spike(v: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Spikes H(v) of v = u - theta, with the GSG surrogate gradient."""
    return Spike.apply(v, alpha, beta)
