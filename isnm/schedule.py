"""The surrogate's schedule (paper eq. 7-8): beta as a pure function of training progress, alpha from beta.

No torch: the report draws the same curves the training used from these functions.
"""
from __future__ import annotations

import math

from isnm.config import ALPHA_RULES, SCHEDULE_SHAPES, EpochBetas, SurrogateConfig


def beta_at(epoch: float, max_epoch: float, beta_min: float, beta_max: float, shape: str = "loglinear") -> float:
    """beta at `epoch` of 0..max_epoch (fractional for per-step updates), from beta_min at 0 to beta_max at the end.

    loglinear is eq. 7 (beta grows by the same factor each epoch); linear by the same amount; cosine is
    half a cosine wave (slow at both ends, fastest midway); step is beta_min for the first half and
    beta_max from the midpoint on.
    """
    if max_epoch <= 0:  # a single epoch (or step) trains at the end point
        return beta_max
    frac = epoch / max_epoch
    if shape == "loglinear":
        return math.exp(math.log(beta_min) + (math.log(beta_max) - math.log(beta_min)) * frac)
    if shape == "linear":
        return beta_min + (beta_max - beta_min) * frac
    if shape == "cosine":
        return beta_min + (beta_max - beta_min) * (1.0 - math.cos(math.pi * frac)) / 2.0
    if shape == "step":
        return beta_min if frac < 0.5 else beta_max
    raise ValueError(f"schedule shape {shape!r} unknown; expected one of {SCHEDULE_SHAPES}")


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


def surrogate_at(cfg: SurrogateConfig, epoch_index: int, epochs: int, step: int = 0, steps: int = 1
                 ) -> tuple[float, float]:
    """(alpha, beta) for 0-based `step` of `steps` in 0-based epoch `epoch_index` of `epochs`.

    Updated per epoch (the paper), GSG spans beta_min on the first epoch to beta_max on the last; per step,
    beta_min on the first optimizer step to beta_max on the last, a new beta every step.
    """
    if isinstance(cfg.schedule, EpochBetas):  # given per epoch: held through it, whatever cfg.update says
        beta = cfg.schedule.beta[epoch_index]
    elif cfg.schedule == "fixed":
        beta = cfg.beta
    elif cfg.schedule == "learned":  # where the learned beta starts; then it is a parameter, not a schedule
        beta = cfg.beta_min
    elif cfg.update == "step":
        beta = beta_at(epoch_index * steps + step, epochs * steps - 1, cfg.beta_min, cfg.beta_max, cfg.shape)
    else:
        beta = beta_at(epoch_index, epochs - 1, cfg.beta_min, cfg.beta_max, cfg.shape)
    return alpha_for(beta, cfg.alpha), beta


def betas_text(betas: list[float]) -> str:
    """A per-epoch beta list as runs of one value: '2.037 x2, 1.63 x4' (PBT's schedules hold beta for intervals)."""
    runs: list[list] = []
    for beta in betas:
        if runs and runs[-1][0] == beta:
            runs[-1][1] += 1
        else:
            runs.append([beta, 1])
    return ", ".join(f"{beta:.4g}" + (f" x{n}" if n > 1 else "") for beta, n in runs)
