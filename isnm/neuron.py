"""The Internal Spiking Neuron Model (paper eq. 4-5): current in, spikes out, state inside."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from isnm.config import RESETS, SURROGATES
from isnm.surrogate import spike, surrogate_grad


def isnm_spikes_reference(current: torch.Tensor, tau: float, threshold: float, reset: str,
                alpha: float, beta: float, function: str = "tanh") -> torch.Tensor:
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
        s = spike(u - threshold, alpha, beta, function)
        out.append(s)
    return torch.stack(out)


def wide(x: torch.Tensor) -> torch.Tensor:
    """x in at least float32: potentials, surrogate slopes and batch statistics are never computed in
    bf16, whatever autocast hands a layer (bf16's 8-bit mantissa would move spikes across the threshold)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def packed_bits(spikes: torch.Tensor) -> torch.Tensor:
    """Spikes (0 or 1) as bits, 8 to a byte, spike 8i + k in bit k of byte i: what backward needs of forward's
    firing, at N/8 bytes.

    Each byte is its eight spikes shifted and or-ed, elementwise over the bytes: compiled, Inductor vectorizes
    that, whereas a sum of the spikes times their bit weights over rows of 8 became a scalar loop with a branch
    per bit (VGG-small's first layer, [5, 16, 64, 32, 32], one thread: 348 ms a compiled forward, now 8)."""
    flat = spikes.reshape(-1).to(torch.uint8)
    rows = torch.nn.functional.pad(flat, (0, -flat.numel() % 8)).view(-1, 8)
    packed = rows[:, 0]
    for bit in range(1, 8):
        packed = packed | (rows[:, bit] << bit)
    return packed


def unpacked_bits(packed: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """The spikes `packed_bits` packed, shaped `shape`, as `dtype` (elementwise too, for the same reason)."""
    bits = torch.stack([(packed >> bit) & 1 for bit in range(8)], dim=1)
    return bits.view(-1)[:shape.numel()].view(shape).to(dtype)


def forward_loop(current: Sequence[torch.Tensor], decay: float, threshold: float, soft: bool,
                 spikes: Sequence[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(spikes, potentials), one tensor per step, in the reference's order of operations (same rounding).

    `current` is a tensor [T, B, ...] or a list of T steps. Lists, not stacked tensors: compiled, a
    step's current and potential then live in registers, never in memory. Given `spikes` (forward's,
    in backward), the resets follow them rather than a fresh comparison with the threshold: a
    recomputed potential one ulp off (a fused multiply-add in another compiled graph) can then change
    a surrogate slope by that ulp, but never which neurons fired, so the gradient is that of the
    network that ran.
    """
    u = current[0]  # u[0] = 0: 0/tau and resets add nothing
    s = (u >= threshold).to(u.dtype) if spikes is None else spikes[0]  # u - theta >= 0 exactly when u >= theta
    fired, potentials = [s], [u]
    for t in range(1, len(current)):
        u = decay * u - threshold * s + current[t] if soft else decay * u * (1.0 - s) + current[t]
        s = (u >= threshold).to(u.dtype) if spikes is None else spikes[t]
        fired.append(s)
        potentials.append(u)
    return fired, potentials


def backward_loop(grad_spikes: torch.Tensor, potentials: list[torch.Tensor], spikes: Sequence[torch.Tensor],
                  decay: float, threshold: float, soft: bool, alpha_beta: torch.Tensor, beta: torch.Tensor,
                  function: str, beta_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dL/dcurrent [T, B, ...], dL/dbeta or None) by backpropagation through time; alpha_beta and beta are 0-dim
    tensors, so a compiled loop is not recompiled when the schedule changes them (it is once per surrogate
    `function`). With `beta_grad` (a learned beta) also beta's gradient, as isnm.surrogate.surrogate_grads defines
    it: each step's gradient into its potential, times (u - theta) / beta, summed."""
    def slope(t: int) -> torch.Tensor:
        return surrogate_grad(potentials[t] - threshold, alpha_beta, beta, function)

    steps = len(potentials)
    grad_u = grad_spikes[steps - 1] * slope(steps - 1)
    grads = [grad_u]
    dbeta = (grad_u * (potentials[steps - 1] - threshold)).sum() if beta_grad else None
    for t in range(steps - 2, -1, -1):  # s[t] and u[t] both shape u[t+1]
        if soft:
            grad_s = grad_spikes[t] - grad_u * threshold
            through_spike = grad_s * slope(t)
            grad_u = through_spike + grad_u * decay
        else:
            grad_s = grad_spikes[t] - grad_u * (decay * potentials[t])
            through_spike = grad_s * slope(t)
            grad_u = through_spike + grad_u * (1.0 - spikes[t]) * decay
        if beta_grad:
            dbeta = dbeta + (through_spike * (potentials[t] - threshold)).sum()
        grads.append(grad_u)
    return torch.stack(grads[::-1]), (dbeta / beta if beta_grad else None)


KERNELS = ("eager", "compiled")
_compiled: dict[object, object] = {}


def kernel_fn(fn, kernel: str):
    """`fn` itself for the "eager" kernel; for "compiled", `fn` under torch.compile, compiled once per process.

    Where torch.compile cannot run (no C++ compiler, an unsupported platform) `fn` itself is used,
    with one warning (see `run_kernel`).
    """
    if kernel == "eager" or kernel_fallback():
        return fn
    if fn not in _compiled:
        # dynamo compiles `fn` anew for each surrogate function (a string argument, guarded by value) on top of
        # its own specializations (reset, rank, dtype), and past `recompile_limit` graphs it runs `fn` eagerly
        # with only a log line; a Ray worker trains trial after trial in one process, so an ablation over the
        # functions would pass the default of 8. Raised once for the process (never lowered), not patched
        # around each call: a patch costs 25 us, 40% of a small compiled call's 60 us on the CPU
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, 8 * len(SURROGATES))
        # Inductor builds kernels on a pool of processes, one per core of the machine, whatever this process may
        # use: a trial given 1 of 2 cores started a second Python (about 4 CPU-seconds) to compete with the other
        # trial for its core. As many as torch's threads, which a trial sets to its CPUs (study.run.worker)
        torch._inductor.config.compile_threads = torch.get_num_threads()
        _compiled[fn] = torch.compile(fn, dynamic=True, options={"cpp.dynamic_threads": True})
    return _compiled[fn]


def compile_failed(exc: Exception) -> bool:
    """Whether `exc` says torch.compile could not build a kernel (and not that running one failed)."""
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import CppCompileError, InvalidCxxCompiler

    if isinstance(exc, BackendCompilerFailed):  # out of memory while autotuning is not a compiler's fault
        return not isinstance(getattr(exc, "inner_exception", None), torch.OutOfMemoryError)
    return isinstance(exc, (CppCompileError, InvalidCxxCompiler))


def kernel_fallback() -> str | None:
    """Why this process runs the eager loops although the compiled ones were asked for, or None."""
    return _compiled.get("failed")


def run_kernel(fn, kernel: str, *args):
    """fn(*args) through `kernel_fn`. A compilation failure switches this process to the eager loops,
    with a warning and `kernel_fallback()` saying why; any other error (out of memory, a bug) is raised."""
    try:
        return kernel_fn(fn, kernel)(*args)
    except Exception as exc:
        if kernel == "eager" or kernel_fallback() or not compile_failed(exc):
            raise
        import warnings
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        _compiled["failed"] = f"torch.compile failed ({type(exc).__name__}: {first[:300]})"
        warnings.warn(f"{_compiled['failed']}; this process runs the eager ISNM loops from now on")
        return fn(*args)


def surrogate_scalars(alpha: float, beta: float | torch.Tensor, like: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha*beta and beta as 0-dim tensors of `like`'s device, at least float32: a compiled loop is not
    recompiled when the schedule moves them, and bf16 would round them. A learned beta (a tensor) is taken as it
    stands now, detached: its gradient is the backward's own."""
    dtype = torch.promote_types(like.dtype, torch.float32)
    if isinstance(beta, torch.Tensor):
        beta = beta.detach().to(dtype=dtype, device=like.device)
        return alpha * beta, beta
    # alpha*beta rounded once, from Python's double: the number a fixed schedule has always trained with
    return (torch.tensor(alpha * beta, dtype=dtype, device=like.device),
            torch.tensor(beta, dtype=dtype, device=like.device))


def spike_train(current: torch.Tensor, decay: float, threshold: float, soft: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(spikes [T, B, ...], the same packed as bits): compiled, the potentials are never written to memory."""
    spikes = torch.stack(forward_loop(wide(current), decay, threshold, soft)[0])
    return spikes, packed_bits(spikes)


def current_grad(grad_spikes: torch.Tensor, current: Sequence[torch.Tensor], spikes: torch.Tensor, decay: float,
                 threshold: float, soft: bool, alpha_beta: torch.Tensor, beta: torch.Tensor, function: str,
                 beta_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dL/dcurrent, dL/dbeta or None): the potentials recomputed from the current and forward's spikes, then
    backpropagation through time; all in at least float32."""
    _, potentials = forward_loop(current, decay, threshold, soft, spikes)
    return backward_loop(wide(grad_spikes), potentials, spikes, decay, threshold, soft, alpha_beta, beta, function,
                         beta_grad)


def isnm_backward(grad_spikes: torch.Tensor, current: torch.Tensor, packed: torch.Tensor, decay: float,
                  threshold: float, soft: bool, alpha_beta: torch.Tensor, beta: torch.Tensor, function: str,
                  beta_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`current_grad` for the whole [T, B, ...] current, its spikes given as bits."""
    current = wide(current)
    spikes = unpacked_bits(packed, current.shape, current.dtype)
    return current_grad(grad_spikes, current, spikes, decay, threshold, soft, alpha_beta, beta, function, beta_grad)


class ISNMFunction(torch.autograd.Function):
    """The whole time loop as one autograd node, with backpropagation through time written out.

    Kept for backward: the input current (often the very tensor an earlier layer keeps anyway) and
    forward's spikes as bits (1/32 of the current's bytes in float32). Potentials and surrogate slopes
    are recomputed from the current with the same functions as forward, and the resets follow the
    saved spikes, so backward sees the network that ran. Per-step autograd keeps several tensors a
    step. Compiled, the recomputation is fused into the backward kernel: fewer bytes move than if u
    were stored. Potentials are float32 whatever the current's dtype (bf16 under autocast).
    """

    @staticmethod
    def forward(ctx, current: torch.Tensor, decay: float, threshold: float, soft: bool, alpha: float,
                beta: float | torch.Tensor, function: str, kernel: str) -> torch.Tensor:
        spikes, packed = run_kernel(spike_train, kernel, current, decay, threshold, soft)
        ctx.save_for_backward(current, packed)
        ctx.args = (decay, threshold, soft, alpha, beta, function, kernel)
        return spikes.to(current.dtype)

    @staticmethod
    def backward(ctx, grad_spikes: torch.Tensor):
        current, packed = ctx.saved_tensors
        decay, threshold, soft, alpha, beta, function, kernel = ctx.args
        learned = isinstance(beta, torch.Tensor) and ctx.needs_input_grad[5]
        grad, dbeta = run_kernel(isnm_backward, kernel, grad_spikes.contiguous(), current, packed, decay, threshold,
                                 soft, *surrogate_scalars(alpha, beta, current), function, learned)
        if learned:
            dbeta = dbeta.to(beta.dtype).reshape(beta.shape)
        return grad.to(current.dtype), None, None, None, None, dbeta, None, None


def isnm_spikes(current: torch.Tensor, tau: float, threshold: float, reset: str, alpha: float,
                beta: float | torch.Tensor, kernel: str = "eager", function: str = "tanh") -> torch.Tensor:
    """Spikes [T, B, ...] of a layer of ISNM neurons driven by `current` [T, B, ...], as one fused op; a beta tensor
    that requires grad (a learned beta) gets its gradient."""
    return ISNMFunction.apply(current, 1.0 / tau, threshold, reset == "soft", alpha, beta, function, kernel)


class ISNM(nn.Module):
    """A layer of ISNM neurons. State starts at zero in every forward, so no reset calls exist.

    `alpha`, `beta` and `function` (the surrogate) are plain attributes read on every forward, so a
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
        self.alpha, self.beta, self.function = 1.0, 1.0, "tanh"
        self.log_beta: nn.Parameter | None = None  # a learned beta, as its log (so beta stays > 0): `learn_beta`
        self.alpha_rule: str | float = "paper"  # eq. 8's alpha from a learned beta
        self.kernel = "eager"  # or "compiled" (torch.compile), chosen per network by set_kernel

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        if current.dim() < 2:
            raise ValueError(f"ISNM expects current shaped [T, B, ...], got shape {tuple(current.shape)}")
        alpha, beta = self.surrogate()
        return isnm_spikes(current, self.tau, self.threshold, self.reset, alpha, beta, self.kernel, self.function)

    def surrogate(self) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """(alpha, beta) this forward trains with: the schedule's floats, or a learned beta (a tensor with a
        gradient) and its alpha by the rule, held constant (a detached tensor: no host sync in the step)."""
        if self.log_beta is None:
            return self.alpha, self.beta
        beta = self.log_beta.exp()
        return learned_alpha(beta.detach(), self.alpha_rule), beta

    def extra_repr(self) -> str:
        return f"tau={self.tau}, threshold={self.threshold}, reset={self.reset}"


def learned_alpha(beta: torch.Tensor, rule: str | float) -> torch.Tensor | float:
    """isnm.schedule.alpha_for on a beta tensor, without leaving the device."""
    if rule == "paper":
        return torch.clamp(1.0 / beta, min=1.0)
    if rule == "unit_peak":
        return torch.clamp(1.0 / beta, max=1.0)
    return float(rule)


def learn_beta(model: nn.Module, beta: float, alpha_rule: str | float, function: str) -> list[nn.Parameter]:
    """Give every ISNM layer of `model` a learned beta starting at `beta` (its log a parameter); returns them, for
    an optimizer group of their own."""
    learned, device = [], next(model.parameters()).device
    for module in model.modules():
        if isinstance(module, ISNM):
            module.log_beta = nn.Parameter(torch.tensor(math.log(beta), device=device))
            module.alpha_rule, module.function = alpha_rule, function
            learned.append(module.log_beta)
    return learned


def learned_betas(model: nn.Module) -> dict[str, float]:
    """Each spiking layer's learned beta now, by module name (none without a learned beta)."""
    return {name: module.log_beta.exp().item() for name, module in model.named_modules()
            if isinstance(module, ISNM) and module.log_beta is not None}


def set_kernel(model: nn.Module, kernel: str) -> None:
    """Run every ISNM layer of `model` with the "eager" or "compiled" time loops."""
    if kernel not in KERNELS:
        raise ValueError(f"ISNM kernel must be one of {KERNELS}, got {kernel!r}")
    for module in model.modules():
        if isinstance(module, ISNM):
            module.kernel = kernel


def set_surrogate(model: nn.Module, alpha: float, beta: float, function: str = "tanh") -> None:
    """Set the surrogate's alpha, beta and function (one of SURROGATES) on every ISNM layer of `model`."""
    if function not in SURROGATES:
        raise ValueError(f"ISNM surrogate function must be one of {SURROGATES}, got {function!r}")
    for module in model.modules():
        if isinstance(module, ISNM):
            module.alpha, module.beta, module.function = float(alpha), float(beta), function
