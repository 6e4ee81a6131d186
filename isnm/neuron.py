"""The Internal Spiking Neuron Model (paper eq. 4-5): current in, spikes out, state inside."""
from __future__ import annotations

import torch
from torch import nn

from isnm.config import RESETS
from isnm.surrogate import spike


def isnm_spikes_reference(current: torch.Tensor, tau: float, threshold: float, reset: str,
                alpha: float, beta: float) -> torch.Tensor:
    """Spikes [T, B, ...] of a layer of ISNM neurons driven by `current` [T, B, ...], step by step.

    u[0] = s[0] = 0; hard reset u[t] = u[t-1]/tau * (1 - s[t-1]) + I[t]; soft reset (eq. 4)
    u[t] = u[t-1]/tau - theta * s[t-1] + I[t]; s[t] = H(u[t] - theta). Autograd records every step;
    `isnm_spikes` computes the same with one autograd node, and the tests hold the two together.
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


def forward_loop(current: torch.Tensor, decay: float, threshold: float, soft: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(spikes, potentials) [T, B, ...], in the reference's order of operations (same rounding)."""
    u = current[0]  # u[0] = 0: 0/tau and resets add nothing
    s = (u >= threshold).to(current.dtype)  # u - theta >= 0 exactly when u >= theta (no flush to zero)
    spikes, potentials = [s], [u]
    for t in range(1, current.shape[0]):
        u = decay * u - threshold * s + current[t] if soft else decay * u * (1.0 - s) + current[t]
        s = (u >= threshold).to(current.dtype)
        spikes.append(s)
        potentials.append(u)
    return torch.stack(spikes), torch.stack(potentials)


def backward_loop(grad_spikes: torch.Tensor, potentials: torch.Tensor, decay: float, threshold: float,
                  soft: bool, alpha_beta: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """dL/dcurrent by backpropagation through time; alpha_beta and beta are 0-dim tensors, so a
    compiled loop is not recompiled when the schedule changes them."""
    v = potentials - threshold
    slope = alpha_beta * (1.0 - torch.tanh(beta * v) ** 2)  # eq. 9 at every step at once
    steps = potentials.shape[0]
    grad_u = grad_spikes[steps - 1] * slope[steps - 1]
    grads = [grad_u]
    for t in range(steps - 2, -1, -1):  # s[t] and u[t] both shape u[t+1]
        if soft:
            grad_s = grad_spikes[t] - grad_u * threshold
            grad_u = grad_s * slope[t] + grad_u * decay
        else:
            grad_s = grad_spikes[t] - grad_u * (decay * potentials[t])
            grad_u = grad_s * slope[t] + grad_u * (1.0 - (v[t] >= 0).to(v.dtype)) * decay
        grads.append(grad_u)
    return torch.stack(grads[::-1])


KERNELS = ("eager", "compiled")
_compiled: dict[str, object] = {}


def loops(kernel: str):
    """The (forward, backward) loops to run: compiled once per process on first use, or eager.

    Where torch.compile cannot run (no C++ compiler, an unsupported platform) the eager loops are
    used, with one warning.
    """
    if kernel == "eager" or _compiled.get("failed"):
        return forward_loop, backward_loop
    if "loops" not in _compiled:
        _compiled["loops"] = (torch.compile(forward_loop, dynamic=True), torch.compile(backward_loop, dynamic=True))
    return _compiled["loops"]


def compile_failed(exc: Exception) -> None:
    import warnings
    warnings.warn(f"torch.compile of the ISNM loops failed ({type(exc).__name__}: {exc}); using the eager loops")
    _compiled["failed"] = True


class ISNMFunction(torch.autograd.Function):
    """The whole time loop as one autograd node, with backpropagation through time written out.

    Only the membrane potential u [T, B, ...] is kept for backward; spikes and surrogate slopes are
    recomputed from it, where per-step autograd keeps several tensors a step.
    """

    @staticmethod
    def forward(ctx, current: torch.Tensor, decay: float, threshold: float, soft: bool, alpha: float,
                beta: float, kernel: str) -> torch.Tensor:
        try:
            spikes, potentials = loops(kernel)[0](current, decay, threshold, soft)
        except Exception as exc:  # compilation errors come in many types; the eager loop always works
            if kernel == "eager":
                raise
            compile_failed(exc)
            spikes, potentials = forward_loop(current, decay, threshold, soft)
        ctx.save_for_backward(potentials)
        ctx.decay, ctx.threshold, ctx.soft, ctx.kernel = decay, threshold, soft, kernel
        ctx.alpha_beta, ctx.beta = alpha * beta, beta
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes: torch.Tensor):
        (potentials,) = ctx.saved_tensors
        scalars = (torch.tensor(ctx.alpha_beta, dtype=potentials.dtype, device=potentials.device),
                   torch.tensor(ctx.beta, dtype=potentials.dtype, device=potentials.device))
        grad = loops(ctx.kernel)[1](grad_spikes.contiguous(), potentials, ctx.decay, ctx.threshold, ctx.soft, *scalars)
        return grad, None, None, None, None, None, None


def isnm_spikes(current: torch.Tensor, tau: float, threshold: float, reset: str, alpha: float, beta: float,
                kernel: str = "eager") -> torch.Tensor:
    """Spikes [T, B, ...] of a layer of ISNM neurons driven by `current` [T, B, ...], as one fused op."""
    return ISNMFunction.apply(current, 1.0 / tau, threshold, reset == "soft", alpha, beta, kernel)


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
        self.kernel = "eager"  # or "compiled" (torch.compile), chosen per network by set_kernel

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        if current.dim() < 2:
            raise ValueError(f"ISNM expects current shaped [T, B, ...], got shape {tuple(current.shape)}")
        return isnm_spikes(current, self.tau, self.threshold, self.reset, self.alpha, self.beta, self.kernel)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, threshold={self.threshold}, reset={self.reset}"


def set_kernel(model: nn.Module, kernel: str) -> None:
    """Run every ISNM layer of `model` with the "eager" or "compiled" time loops."""
    if kernel not in KERNELS:
        raise ValueError(f"ISNM kernel must be one of {KERNELS}, got {kernel!r}")
    for module in model.modules():
        if isinstance(module, ISNM):
            module.kernel = kernel


def set_surrogate(model: nn.Module, alpha: float, beta: float) -> None:
    """Set the surrogate's alpha and beta on every ISNM layer of `model`."""
    for module in model.modules():
        if isinstance(module, ISNM):
            module.alpha, module.beta = float(alpha), float(beta)
