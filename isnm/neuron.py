"""The Internal Spiking Neuron Model (paper eq. 4-5): current in, spikes out, state inside."""
from __future__ import annotations

import torch
from torch import nn

from isnm.config import RESETS
from isnm.surrogate import spike



def isnm_spikes(current: torch.Tensor, tau: float, threshold: float, reset: str,
                alpha: float, beta: float) -> torch.Tensor:
    """Spikes [T, B, ...] of a layer of ISNM neurons driven by `current` [T, B, ...].

    u[0] = s[0] = 0; hard reset u[t] = u[t-1]/tau * (1 - s[t-1]) + I[t]; soft reset (eq. 4)
    u[t] = u[t-1]/tau - theta * s[t-1] + I[t]; s[t] = H(u[t] - theta).
    """
    decay = 1.0 / tau
    u = torch.zeros_like(current[0])
    s = torch.zeros_like(current[0])
    out = []
    for t in range(current.shape[0]):
        if reset == "soft":
            u = decay * u - threshold * s + current[t]
        else:
            u = decay * u * (1.0 - s) + current[t]
        s = spike(u - threshold, alpha, beta)
        out.append(s)
    return torch.stack(out)


class ISNM(nn.Module):
    """A layer of ISNM neurons. State starts at zero in every forward, so no reset calls exist.

    `alpha` and `beta` (the surrogate's shape) are plain attributes read on every forward, so a
    schedule can change them between epochs with `set_surrogate`.
    """

    def __init__(self, tau: float = 2.0, threshold: float = 1.0, reset: str = "hard"):
        super().__init__()
        if not tau > 0:
            raise ValueError(f"ISNM tau must be > 0, got {tau!r}")
        if not threshold > 0:
            raise ValueError(f"ISNM threshold must be > 0, got {threshold!r}")
        if reset not in RESETS:
            raise ValueError(f"ISNM reset must be one of {RESETS}, got {reset!r}")
        self.tau, self.threshold, self.reset = float(tau), float(threshold), reset
        self.alpha, self.beta = 1.0, 1.0

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        if current.dim() < 2:
            raise ValueError(f"ISNM expects current shaped [T, B, ...], got shape {tuple(current.shape)}")
        return isnm_spikes(current, self.tau, self.threshold, self.reset, self.alpha, self.beta)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, threshold={self.threshold}, reset={self.reset}"


def set_surrogate(model: nn.Module, alpha: float, beta: float) -> None:
    """Set the surrogate's alpha and beta on every ISNM layer of `model`."""
    for module in model.modules():
        if isinstance(module, ISNM):
            module.alpha, module.beta = float(alpha), float(beta)
