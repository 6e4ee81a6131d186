import copy

import pytest
import torch
from torch.nn import functional as F

from isnm.bn_neuron import BNISNM, BNISNMFunction
from isnm.config import SURROGATES
from isnm.neuron import ISNM

# T=3: the time loop's first, middle and last steps. A compiled graph unrolls the loop, so T is what a compile
# costs: this file took 61 CPU-seconds on an empty Inductor cache at T=3, 89 at T=5 (Intel Xeon, 2 cores)
T, B, C, H = 3, 4, 6, 8


def pair(pool: bool, reset: str, dtype: torch.dtype, kernel: str = "compiled", function: str = "tanh"
         ) -> tuple[BNISNM, torch.nn.BatchNorm2d, ISNM]:
    """A BNISNM and the same layers unfused (BN, max pool, ISNM) with equal parameters."""
    fused = BNISNM(C, pool, 2.0, 1.0, reset).to(dtype)
    fused.kernel = kernel
    with torch.no_grad():
        fused.bn.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(2))
        fused.bn.bias.uniform_(-0.3, 0.3, generator=torch.Generator().manual_seed(3))
    neuron = ISNM(2.0, 1.0, reset)
    for m in (fused, neuron):
        m.alpha, m.beta, m.function = 1.0, 3.0, function
    return fused, copy.deepcopy(fused.bn), neuron


def unfused(bn, neuron, pool: bool, x: torch.Tensor) -> torch.Tensor:
    current = bn(x.flatten(0, 1))
    if pool:
        current = F.max_pool2d(current, 2)
    return neuron(current.unflatten(0, x.shape[:2]))


def run(fn, x: torch.Tensor, upstream: torch.Tensor, params) -> tuple[torch.Tensor, ...]:
    x.grad = None
    spikes = fn(x)
    spikes.backward(upstream)
    return (spikes.detach(), x.grad.clone(), *[p.grad.clone() for p in params])


def fused_op(module: BNISNM):
    """The module's forward through BNISNMFunction whatever its kernel (eager: the fallback path)."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        spikes, _, _ = BNISNMFunction.apply(x, module.bn.weight, module.bn.bias, module.bn.eps, module.pool, module)
        return spikes
    return forward


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("function", SURROGATES)
def test_fused_op_equals_the_unfused_layers(pool, reset, function):
    fused, bn, neuron = pair(pool, reset, torch.float64, "eager", function)
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(T, B, C, H, H, generator=gen, dtype=torch.float64) * 2 + 0.5).requires_grad_()
    size = H // 2 if pool else H
    upstream = torch.randn(T, B, C, size, size, generator=gen, dtype=torch.float64)
    ours = run(fused_op(fused), x, upstream, (fused.bn.weight, fused.bn.bias))
    ref = run(lambda x: unfused(bn, neuron, pool, x), x, upstream, (bn.weight, bn.bias))
    assert torch.equal(ours[0], ref[0]) and 0 < ours[0].mean() < 1
    for a, b in zip(ours[1:], ref[1:]):  # dx, dgamma, dbeta: other summation orders, fp64
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_running_statistics_follow_nn_batchnorm():
    # eager: the running statistics are batch norm's, outside the ISNM loops (a float64 compile of its own cost 7 s)
    fused, bn, neuron = pair(True, "hard", torch.float64, "eager")
    x = torch.randn(T, B, C, H, H, dtype=torch.float64) * 2 + 0.5
    fused(x), unfused(bn, neuron, True, x)
    torch.testing.assert_close(fused.bn.running_mean, bn.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused.bn.running_var, bn.running_var, rtol=1e-12, atol=1e-12)
    assert fused.bn.num_batches_tracked == bn.num_batches_tracked == 1


def test_momentum_none_is_the_cumulative_average_as_in_nn_batchnorm():
    fused, bn, neuron = pair(True, "hard", torch.float64)
    fused.bn.momentum = bn.momentum = None
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        x = torch.randn(T, B, C, H, H, dtype=torch.float64, generator=gen) * 2 + 0.5
        fused(x), unfused(bn, neuron, True, x)
    torch.testing.assert_close(fused.bn.running_mean, bn.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused.bn.running_var, bn.running_var, rtol=1e-12, atol=1e-12)
    assert fused.bn.num_batches_tracked == bn.num_batches_tracked == 3


def test_evaluation_uses_the_running_statistics():
    fused, bn, neuron = pair(True, "hard", torch.float32, "eager")  # as above: what it checks is batch norm's
    x = torch.randn(T, B, C, H, H) * 2
    fused(x), unfused(bn, neuron, True, x)  # one training step moves the running statistics
    fused.eval(), bn.eval()
    assert torch.equal(fused(x), unfused(bn, neuron, True, x))


def test_only_the_conv_output_and_the_spikes_as_bits_are_kept_for_backward():
    fused, _, _ = pair(True, "hard", torch.float32)
    x = torch.randn(T, B, C, H, H, requires_grad=True)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        fused(x)
    big = [t for t in kept if t.numel() > C]
    assert [t.shape for t in big] == [(T, B, C, H, H), (-(-T * B * C * (H // 2) ** 2 // 8),)]
    assert big[1].dtype == torch.uint8  # one bit a spike of the pooled output


# about 8 s a graph on 2 cores; test_neuron compiles every function's slope in the cheaper ISNM loop
@pytest.mark.parametrize("function", ["tanh", *(pytest.param(f, marks=pytest.mark.slow) for f in SURROGATES[1:])])
def test_compiled_matches_eager(function):
    """One compiled graph per function; failing rather than running eagerly past dynamo's recompile limit."""
    results = []
    for kernel in ("eager", "compiled"):
        fused, _, _ = pair(True, "hard", torch.float32, kernel, function)
        gen = torch.Generator().manual_seed(4)
        x = (torch.randn(T, B, C, H, H, generator=gen) * 2).requires_grad_()
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            results.append(run(fused_op(fused), x, torch.randn(T, B, C, H // 2, H // 2, generator=gen),
                               (fused.bn.weight, fused.bn.bias)))
    assert results[0][1].count_nonzero() > 0
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1:], results[1][1:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_input_must_be_a_time_major_conv_output():
    with pytest.raises(ValueError, match=r"\[T, B, C, H, W\]"):
        BNISNM(3, False)(torch.rand(2, 3, 4, 4))


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_a_learned_betas_gradient_through_the_fused_op_is_the_unfused_layers(pool, reset):
    fused, bn, neuron = pair(pool, reset, torch.float64, "eager")
    fused.beta = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    neuron.beta = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(T, B, C, H, H, generator=gen, dtype=torch.float64) * 2 + 0.5).requires_grad_()
    size = H // 2 if pool else H
    upstream = torch.randn(T, B, C, size, size, generator=gen, dtype=torch.float64)

    def through_fused(x):
        spikes, _, _ = BNISNMFunction.apply(x, fused.bn.weight, fused.bn.bias, fused.bn.eps, fused.pool, fused,
                                            fused.beta)
        return spikes
    ours = run(through_fused, x, upstream, (fused.bn.weight, fused.bn.bias, fused.beta))
    ref = run(lambda x: unfused(bn, neuron, pool, x), x, upstream, (bn.weight, bn.bias, neuron.beta))
    assert torch.equal(ours[0], ref[0])
    for a, b in zip(ours[1:], ref[1:]):  # dx, dgamma, dbias, and the learned beta's gradient
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.slow
def test_a_learned_beta_compiled_in_the_fused_layer_is_the_eager_layers():
    from isnm.neuron import learn_beta

    gen = torch.Generator().manual_seed(6)
    x = (torch.randn(T, B, C, H, H, generator=gen) * 2 + 0.5).requires_grad_()
    upstream = torch.randn(T, B, C, H // 2, H // 2, generator=gen)
    got = {}
    for kernel in ("eager", "compiled"):
        layer, _, _ = pair(True, "hard", torch.float32, kernel)
        (log_beta,) = learn_beta(layer, 2.0, "paper", "tanh")
        x.grad = None
        layer(x).backward(upstream)
        got[kernel] = (x.grad.clone(), log_beta.grad.clone())
    torch.testing.assert_close(got["compiled"][0], got["eager"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["compiled"][1], got["eager"][1], rtol=1e-4, atol=1e-5)
    assert got["eager"][1].abs() > 0
