"""Batch norm -> (2x2 max pool) -> ISNM as one op, keeping only the conv output for backward.

Run as separate layers, batch norm keeps its input, the pool its input and indices, and the neuron
its membrane potential: three float tensors of T times the ANN's batch. Fused, only the batch
norm's input x is kept; backward recomputes the current from x (elementwise, the same functions as
forward, so the same bits) and the potentials from the current, then runs backpropagation through
time, the pool's backward and batch norm's.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from isnm.neuron import (ISNM, current_grad, forward_loop, packed_bits, run_kernel, surrogate_scalars, unpacked_bits,
                         wide)

POOL = ([2, 2], [2, 2])  # kernel, stride


def step_currents(x: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor) -> list[torch.Tensor]:
    """Batch norm's output for each step of x [T, B, C, H, W] given the batch statistics.

    One tensor per step, so that under torch.compile the normalization fuses into the time loop.
    """
    shape = (1, -1, 1, 1)
    scale, shift = (invstd * weight).view(shape), bias.view(shape)
    return [(wide(x[t]) - mean.view(shape)) * scale + shift for t in range(x.shape[0])]


def pooled_steps(currents: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pooled currents [T, B, C, H/2, W/2], the currents [T*B, C, H, W], max indices): one pooling call for
    all steps, which in eager mode costs a tenth of T calls on small images."""
    unpooled = torch.stack(currents).flatten(0, 1)
    pooled, indices = torch.ops.aten.max_pool2d_with_indices(unpooled, *POOL)
    return pooled.unflatten(0, (len(currents), -1)), unpooled, indices


def fused_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, pool: bool,
                  decay: float, threshold: float, soft: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(spikes [T, B, C, H', W'], the spikes as bits, batch mean, variance, 1/sqrt(variance + eps) [C]) for the
    conv output x [T, B, C, H, W]."""
    # native batch norm's statistics: in eager mode 2x faster than var_mean even though it also
    # writes an output we do not use (compiled, that output is dropped)
    _, mean, invstd = torch.ops.aten.native_batch_norm(wide(x).flatten(0, 1), None, None, None, None, True, 0.0, eps)
    currents = step_currents(x, mean, invstd, weight, bias)
    if pool:
        currents = pooled_steps(currents)[0]
    spikes = torch.stack(forward_loop(currents, decay, threshold, soft)[0])
    return spikes.to(x.dtype), packed_bits(spikes), mean, invstd.pow(-2) - eps, invstd


def fused_backward(grad_spikes: torch.Tensor, x: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor, pool: bool, decay: float,
                   threshold: float, soft: bool, alpha_beta: torch.Tensor, beta: torch.Tensor, function: str,
                   beta_grad: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(dL/dx, dL/dweight, dL/dbias, dL/dbeta of a learned beta or None): recompute the currents and potentials
    (resets as forward's spikes had them), then BPTT, pool and BN backward."""
    currents = step_currents(x, mean, invstd, weight, bias)
    if pool:
        pooled, unpooled, indices = pooled_steps(currents)
    steps = pooled if pool else currents
    spikes = unpacked_bits(packed, grad_spikes.shape, steps[0].dtype)
    grad, grad_beta = current_grad(grad_spikes, steps, spikes, decay, threshold, soft, alpha_beta, beta, function,
                                   beta_grad)
    if pool:
        grad = torch.ops.aten.max_pool2d_with_indices_backward(grad.flatten(0, 1), unpooled, *POOL, [0, 0], [1, 1],
                                                               False, indices).unflatten(0, grad.shape[:2])
    shape = (1, 1, -1, 1, 1)
    x_hat = (wide(x) - mean.view(shape)) * invstd.view(shape)
    dims = (0, 1, 3, 4)
    grad_bias = grad.sum(dims)
    grad_weight = (grad * x_hat).sum(dims)
    count = x.numel() // x.shape[2]
    grad_x = (weight * invstd).view(shape) / count * (count * grad - grad_bias.view(shape) - x_hat * grad_weight.view(shape))
    return grad_x.to(x.dtype), grad_weight, grad_bias, grad_beta


class BNISNMFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, pool: bool,
                neuron: ISNM, beta: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(spikes, batch mean, batch variance); the statistics are for the running averages. `beta`, the neuron's
        learned beta if it has one, is an input so that it gets its gradient."""
        decay, soft = 1.0 / neuron.tau, neuron.reset == "soft"
        spikes, packed, mean, var, invstd = run_kernel(fused_forward, neuron.kernel, x, weight, bias, eps, pool, decay,
                                                       neuron.threshold, soft)
        ctx.save_for_backward(x, packed, weight, bias, mean, invstd)
        alpha, own = neuron.surrogate()
        ctx.args = (pool, decay, neuron.threshold, soft, alpha, own if beta is None else beta, neuron.function,
                    neuron.kernel)
        ctx.mark_non_differentiable(mean, var)
        return spikes, mean, var

    @staticmethod
    def backward(ctx, grad_spikes: torch.Tensor, _grad_mean, _grad_var):
        x, packed, weight, bias, mean, invstd = ctx.saved_tensors
        pool, decay, threshold, soft, alpha, beta, function, kernel = ctx.args
        learned = isinstance(beta, torch.Tensor) and ctx.needs_input_grad[6]
        *grads, grad_beta = run_kernel(fused_backward, kernel, grad_spikes.contiguous(), x, packed, weight, bias, mean,
                                       invstd, pool, decay, threshold, soft, *surrogate_scalars(alpha, beta, mean),
                                       function, learned)
        if learned:
            grad_beta = grad_beta.to(beta.dtype).reshape(beta.shape)
        return *grads, None, None, None, grad_beta


class BNISNM(ISNM):
    """`nn.BatchNorm2d` -> (`nn.MaxPool2d(2)` if pool) -> ISNM on a conv output [T, B, C, H, W].

    In training with the compiled kernel the three run fused (`BNISNMFunction`). With the eager
    kernel, and in evaluation, they run as the plain layers: eagerly, the fused op's many small
    elementwise calls cost more than native batch norm (tiny on digits: 103 ms a step against 84),
    and memory matters for the CIFAR networks, which compile. Buffers and parameters are those of
    `nn.BatchNorm2d`, under `bn.`.
    """

    def __init__(self, channels: int, pool: bool, tau: float = 2.0, threshold: float = 1.0, reset: str = "hard"):
        super().__init__(tau, threshold, reset)
        self.bn, self.pool = nn.BatchNorm2d(channels), pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"BNISNM expects a conv output shaped [T, B, C, H, W], got shape {tuple(x.shape)}")
        if not self.training or self.kernel == "eager":
            current = self.bn(wide(x).flatten(0, 1))  # float32 statistics and current, as the fused op has them
            if self.pool:
                current = F.max_pool2d(current, *POOL)
            return super().forward(current.unflatten(0, x.shape[:2]))
        bn = self.bn
        beta = self.surrogate()[1]
        learned = beta if isinstance(beta, torch.Tensor) else None
        spikes, mean, var = BNISNMFunction.apply(x, bn.weight, bn.bias, bn.eps, self.pool, self, learned)
        with torch.no_grad():  # running statistics as nn.BatchNorm2d keeps them (unbiased variance)
            count = x.numel() // x.shape[2]
            bn.num_batches_tracked += 1
            # momentum None is nn.BatchNorm2d's cumulative average: the n-th batch weighs 1/n
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
            bn.running_var.lerp_((var * count / max(count - 1, 1)).to(bn.running_var.dtype), momentum)
        return spikes

    def extra_repr(self) -> str:
        return f"pool={self.pool}, " + super().extra_repr()
