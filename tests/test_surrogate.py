import math

import pytest
import torch

from isnm.config import SURROGATES, ConfigError, parse_config
from isnm.surrogate import SHAPES, spike, surrogate_grad, surrogate_grads
from tests.surrogates import BY_HAND


# each g's step G (G' = g, from -1 to 1): a surrogate is the derivative of alpha * G(beta * v)
STEPS = {
    "tanh": torch.tanh,
    "sigmoid": lambda x: 2.0 * torch.sigmoid(2.0 * x) - 1.0,
    "arctan": lambda x: 2.0 / math.pi * torch.atan(math.pi / 2.0 * x),
    "fast_sigmoid": lambda x: x / (1.0 + x.abs()),
    "rectangular": lambda x: x.clamp(-1.0, 1.0),
    "triangle": lambda x: x.sign() * (1.0 - (1.0 - x.abs().clamp(max=2.0) / 2.0) ** 2),
}
# x = beta * v off every kink of G and g (0, +-1, +-2), where finite differences would straddle one
SMOOTH_POINTS = [-3.7, -2.5, -1.6, -0.8, -0.3, 0.2, 0.6, 1.3, 2.3, 4.1]


def test_forward_is_heaviside_with_h0_equal_one():
    v = torch.tensor([-1.0, -1e-6, 0.0, 1e-6, 2.0])
    assert spike(v, 1.0, 1.0).tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("alpha, beta", [(2.0, 0.5), (1.0, 5.0), (0.3, 12.0)])
def test_backward_is_eq9_the_derivative_of_the_smooth_function(alpha, beta):
    v = torch.linspace(-3, 3, 101, dtype=torch.float64, requires_grad=True)
    spike(v, alpha, beta).sum().backward()
    ours = v.grad.clone()
    v.grad = None
    (alpha * (torch.tanh(beta * v) + 1.0)).sum().backward()  # eq. 6 with c = 1
    torch.testing.assert_close(ours, v.grad)


def test_the_configs_names_are_the_functions():
    assert tuple(SHAPES) == SURROGATES == tuple(BY_HAND) == tuple(STEPS)


def test_the_default_is_eq9_in_its_own_arithmetic():
    """The tanh path computes what it did before other functions existed, so defaults move no number."""
    v = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    for alpha, beta in [(2.0, 0.5), (1.0, 5.0)]:
        assert torch.equal(surrogate_grad(v, alpha * beta, beta), alpha * beta * (1.0 - torch.tanh(beta * v) ** 2))


@pytest.mark.parametrize("function", SURROGATES)
def test_every_shape_has_peak_one_and_area_two(function):
    """The convention: g(0) = 1 (peak alpha*beta) and integral 2 (a step of 2*alpha), as eq. 9's tanh."""
    # fine where rectangular jumps, far out for the heavy tails (beyond 1e4 fast_sigmoid has 2e-4 left)
    tail = torch.linspace(4, 1e4, 1_000_000, dtype=torch.float64)[1:]
    x = torch.cat([-tail.flip(0), torch.linspace(-4, 4, 800_001, dtype=torch.float64), tail])
    g = SHAPES[function](x)
    assert SHAPES[function](torch.zeros((), dtype=torch.float64)).item() == 1.0
    assert torch.trapezoid(g, x).item() == pytest.approx(2.0, abs=5e-4)


@pytest.mark.parametrize("function", SURROGATES)
@pytest.mark.parametrize("alpha, beta", [(2.0, 0.5), (1.0, 5.0), (0.3, 12.0)])
def test_backward_is_the_closed_form(function, alpha, beta):
    v = torch.linspace(-3, 3, 101, dtype=torch.float64, requires_grad=True)
    spike(v, alpha, beta, function).sum().backward()
    expected = [alpha * beta * BY_HAND[function](beta * x) for x in v.tolist()]
    torch.testing.assert_close(v.grad, torch.tensor(expected, dtype=torch.float64))


class Step(torch.autograd.Function):
    """alpha * G(beta * v) forward, the library's surrogate backward: gradcheck holds the two together."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, alpha: float, beta: float, function: str) -> torch.Tensor:
        ctx.save_for_backward(v)
        ctx.args = (alpha * beta, beta, function)
        return alpha * STEPS[function](beta * v)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (v,) = ctx.saved_tensors
        return grad * surrogate_grad(v, *ctx.args), None, None, None


@pytest.mark.parametrize("function", SURROGATES)
@pytest.mark.parametrize("alpha, beta", [(2.0, 0.5), (1.0, 5.0)])
def test_gradcheck_the_surrogate_is_the_derivative_of_its_step(function, alpha, beta):
    """Checked in float64 at points away from kinks (rectangular's step, triangle's and fast_sigmoid's g)."""
    v = (torch.tensor(SMOOTH_POINTS, dtype=torch.float64) / beta).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: Step.apply(v, alpha, beta, function), (v,))
    assert torch.autograd.gradcheck(lambda v: surrogate_grad(v, alpha * beta, beta, function), (v,))  # g itself


def test_sigmoid_is_tanh_in_other_arithmetic():
    """sigma(2x) = (1 + tanh x) / 2, so at equal peak and area the logistic surrogate is eq. 9's."""
    x = torch.linspace(-8, 8, 1601, dtype=torch.float64)
    torch.testing.assert_close(SHAPES["sigmoid"](x), SHAPES["tanh"](x), rtol=0, atol=1e-15)


@pytest.mark.parametrize("function", SURROGATES)
def test_larger_beta_is_narrower_and_taller(function):
    v = torch.linspace(-10, 10, 200_001, dtype=torch.float64)
    step = (v[1] - v[0]).item()
    peaks, widths = [], []
    for beta in (0.5, 2.0, 8.0):
        grad = surrogate_grad(v, 1.0 * beta, beta, function)  # alpha = 1
        peaks.append(grad.max().item())
        widths.append((grad >= grad.max() / 2).sum().item() * step)  # full width at half maximum
    assert peaks == pytest.approx([0.5, 2.0, 8.0])  # alpha * beta
    assert widths[0] > widths[1] > widths[2]
    assert [w * b for w, b in zip(widths, (0.5, 2.0, 8.0))] == pytest.approx([widths[0] * 0.5] * 3, rel=2e-3)


def test_unknown_function_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"^surrogate\.function: got 'relu', expected 'tanh' or 'sigmoid'"):
        parse_config({"surrogate": {"function": "relu"}})


class SmoothStep(torch.autograd.Function):
    """alpha * G(beta * v) forward, the spike's backward (`surrogate_grads`): gradcheck then checks the spike's
    gradients, to v and to a learned beta, against finite differences of the smooth step they stand for."""

    @staticmethod
    def forward(ctx, v, beta, alpha, function):
        ctx.save_for_backward(v, beta)
        ctx.args = (alpha, function)
        return alpha * STEPS[function](beta * v)

    @staticmethod
    def backward(ctx, grad):
        v, beta = ctx.saved_tensors
        alpha, function = ctx.args
        dv, dbeta = surrogate_grads(grad, v, alpha, beta, function, beta_grad=True)
        return dv, dbeta, None, None


@pytest.mark.parametrize("function", SURROGATES)
@pytest.mark.parametrize("alpha, beta", [(2.0, 0.5), (1.0, 1.7)])
def test_a_learned_betas_gradient_is_the_smooth_steps_by_gradcheck(function, alpha, beta):
    v = (torch.tensor(SMOOTH_POINTS, dtype=torch.float64) / beta).requires_grad_()
    b = torch.tensor(beta, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, b: SmoothStep.apply(v, b, alpha, function), (v, b))


def test_the_spike_passes_the_same_gradient_to_a_learned_beta_and_none_to_a_fixed_one():
    v = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    b = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (spike(v, 0.5, b) * upstream).sum().backward()
    dv, dbeta = surrogate_grads(upstream, v.detach(), 0.5, b.detach(), "tanh", beta_grad=True)
    torch.testing.assert_close(v.grad, dv)
    torch.testing.assert_close(b.grad, dbeta)
    fixed = v.detach().clone().requires_grad_()
    (spike(fixed, 0.5, 2.0) * upstream).sum().backward()
    torch.testing.assert_close(fixed.grad, dv)  # a float beta: the same gradient to v, none to beta
