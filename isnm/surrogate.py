"""The surrogate gradients (paper eq. 9 and other shapes) and the spike op; their schedule is isnm.schedule."""
from __future__ import annotations

import math
from typing import Callable

import torch


# A surrogate is ds/du = alpha * beta * g(x) at x = beta * (u - theta). Every g has peak g(0) = 1 and area
# 2, as eq. 9's 1 - tanh(x)^2 has: the peak keeps alpha's meaning (slope alpha*beta at the threshold) and the
# area makes each ds/du the derivative of a step of height 2*alpha (eq. 6), whatever beta, so the functions
# differ in shape only (tails, support), not in the gradient's scale. Fixing both fixes each g's width in x.
# sigmoid is then 1 - tanh(x)^2 itself (sigma(2x) = (1 + tanh x) / 2): the logistic surrogate is eq. 9's in
# other arithmetic.
def tanh_shape(x: torch.Tensor) -> torch.Tensor:  # eq. 9; of the step tanh(x)
    return 1.0 - torch.tanh(x) ** 2


def sigmoid_shape(x: torch.Tensor) -> torch.Tensor:  # of the step 2 sigma(2x) - 1
    s = torch.sigmoid(2.0 * x)
    return 4.0 * s * (1.0 - s)


def arctan_shape(x: torch.Tensor) -> torch.Tensor:  # of the step (2/pi) arctan(pi x / 2)
    return 1.0 / (1.0 + (math.pi / 2.0 * x) ** 2)


def fast_sigmoid_shape(x: torch.Tensor) -> torch.Tensor:  # SuperSpike's; of the step x / (1 + |x|)
    return 1.0 / (1.0 + x.abs()) ** 2


def rectangular_shape(x: torch.Tensor) -> torch.Tensor:  # of the step clamp(x, -1, 1)
    return (x.abs() < 1.0).to(x.dtype)


def triangle_shape(x: torch.Tensor) -> torch.Tensor:  # of the step sign(x) (1 - (1 - min(|x|, 2)/2)^2)
    return (1.0 - x.abs() / 2.0).clamp(min=0.0)


SHAPES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": tanh_shape, "sigmoid": sigmoid_shape, "arctan": arctan_shape, "fast_sigmoid": fast_sigmoid_shape,
    "rectangular": rectangular_shape, "triangle": triangle_shape}


def surrogate_grad(v: torch.Tensor, alpha_beta: float | torch.Tensor, beta: float | torch.Tensor,
                   function: str = "tanh") -> torch.Tensor:
    """d s / d u at v = u - theta: alpha*beta * g(beta * v), g the `function`'s shape (eq. 9 for "tanh")."""
    return alpha_beta * SHAPES[function](beta * v)


def surrogate_grads(grad: torch.Tensor, v: torch.Tensor, alpha: float, beta: float | torch.Tensor, function: str,
                    beta_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gradients a spike passes back, to v and (when `beta_grad`, beta being learned) to beta.

    The forward is the Heaviside step, which beta does not move; both gradients are those of the smooth step
    alpha * G(beta * v) the surrogate is the derivative of (G' = g, a step from -1 to 1): d/dv = alpha*beta*g(beta*v),
    d/dbeta = alpha * v * g(beta*v) = (d/dv) * v / beta, summed over every neuron sharing beta. alpha is held
    constant: eq. 8's alpha = max(1/beta, 1) is not differentiated, so beta's gradient only reshapes the
    surrogate (narrower or wider at the same step height 2*alpha), never scales the step's height.
    """
    ds_dv = surrogate_grad(v, alpha * beta, beta, function)
    dv = grad * ds_dv
    if not beta_grad:
        return dv, None
    return dv, (dv * v).sum().div(beta).reshape(torch.as_tensor(beta).shape)


class Spike(torch.autograd.Function):
    """Heaviside forward (H(0) = 1), surrogate backward; beta a float, or a tensor that is learned."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, alpha: float, beta: float | torch.Tensor, function: str) -> torch.Tensor:
        if isinstance(beta, torch.Tensor):
            ctx.save_for_backward(v, beta)
        else:
            ctx.save_for_backward(v)
        ctx.args = (alpha, beta if not isinstance(beta, torch.Tensor) else None, function)
        return (v >= 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        v, *learned = ctx.saved_tensors
        alpha, beta, function = ctx.args
        beta = learned[0] if learned else beta
        dv, dbeta = surrogate_grads(grad, v, alpha, beta, function, bool(learned) and ctx.needs_input_grad[2])
        return dv, None, dbeta, None


def spike(v: torch.Tensor, alpha: float, beta: float | torch.Tensor, function: str = "tanh") -> torch.Tensor:
    """Spikes H(v) of v = u - theta, with the `function` surrogate gradient (GSG's tanh by default); a beta tensor
    that requires grad gets the gradient of `surrogate_grads`."""
    return Spike.apply(v, alpha, beta, function)
