"""A convolution whose input is spikes: kept for backward as one byte per spike instead of four.

A conv layer after an ISNM layer sees T times the ANN's batch and, through autograd, would keep
that whole float input for its weight gradient. Spikes are exactly 0 or 1, so uint8 holds them
without loss and the gradients are those of `nn.Conv2d`.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# On the CPU the backward runs on chunks of samples whose spikes take at most this many bytes as
# float32: oneDNN's conv backward slows down per sample once T*B samples no longer fit in cache
# (VGG-small's 64x32x32 layer, 2 cores: 160 samples took 7.2x the time of 32, five chunks of 32
# 5.9x), while small inputs in chunks only pay per-call overhead.
CPU_BACKWARD_CHUNK_BYTES = 8 << 20
CONV_BACKWARDS = ("auto", "chunked", "whole")  # auto: whole on CUDA, chunked elsewhere


def backward_chunk(grad_out: torch.Tensor, sample_bytes: int, mode: str) -> int:
    """Samples per convolution_backward call: all of them, or as many as CPU_BACKWARD_CHUNK_BYTES hold."""
    if mode == "whole" or (mode == "auto" and grad_out.is_cuda):
        return grad_out.shape[0]
    return max(1, CPU_BACKWARD_CHUNK_BYTES // sample_bytes)


class SpikeConvFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, spikes: torch.Tensor, weight: torch.Tensor, stride: tuple, padding: tuple, backward: str
                ) -> torch.Tensor:
        ctx.save_for_backward(spikes.to(torch.uint8), weight)
        ctx.conv = (stride, padding, spikes.dtype, backward)
        return F.conv2d(spikes, weight.to(spikes.dtype), None, stride, padding)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        packed, weight = ctx.saved_tensors
        stride, padding, dtype, backward = ctx.conv
        spikes, kernel = packed.to(grad_out.dtype), weight.to(grad_out.dtype)
        chunk = backward_chunk(grad_out, spikes[0].numel() * 4, backward)
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False]
        grads_in, grad_w = [], None
        for g, s in zip(grad_out.split(chunk), spikes.split(chunk)):
            gi, gw, _ = torch.ops.aten.convolution_backward(g, s, kernel, None, stride, padding, (1, 1), False,
                                                            (0, 0), 1, mask)
            grads_in.append(gi)
            grad_w = gw if grad_w is None else grad_w + gw
        grad_in = (grads_in[0] if len(grads_in) == 1 else torch.cat(grads_in)).to(dtype) if mask[0] else None
        return grad_in, grad_w.to(weight.dtype) if mask[1] else None, None, None, None


class SpikeConv2d(nn.Conv2d):
    """`nn.Conv2d` (no bias, no dilation or groups) for inputs that are spikes, exactly 0 or 1.

    `backward_mode` (one of CONV_BACKWARDS, set by `set_conv_backward`) says how its backward splits the batch."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__(cin, cout, kernel, stride, padding, bias=False)
        self.backward_mode = "auto"

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return super().forward(spikes)
        return SpikeConvFunction.apply(spikes, self.weight, self.stride, self.padding, self.backward_mode)


def set_conv_backward(model: nn.Module, mode: str) -> None:
    """Run every SpikeConv2d of `model` with the backward `mode`, one of CONV_BACKWARDS."""
    if mode not in CONV_BACKWARDS:
        raise ValueError(f"conv backward must be one of {CONV_BACKWARDS}, got {mode!r}")
    for module in model.modules():
        if isinstance(module, SpikeConv2d):
            module.backward_mode = mode
