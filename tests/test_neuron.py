import pytest
import torch
from torch import nn

from isnm.config import SURROGATES
from isnm.neuron import ISNM, isnm_spikes, isnm_spikes_reference, set_surrogate
from tests.surrogates import BY_HAND


def reference_spikes(current: list[float], tau: float, theta: float, reset: str) -> list[float]:
    """DESIGN.md's equations, one scalar neuron, step by step."""
    u, s, out = 0.0, 0.0, []
    for i in current:
        u = u / tau * (1 - s) + i if reset == "hard" else u / tau - theta * s + i
        s = 1.0 if u - theta >= 0 else 0.0
        out.append(s)
    return out


@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("tau, theta", [(2.0, 1.0), (1.5, 0.7), (4.0, 0.3)])
def test_dynamics_match_the_step_by_step_reference(reset, tau, theta):
    current = torch.rand(12, 3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.5
    spikes = ISNM(tau, theta, reset)(current)
    assert spikes.shape == current.shape
    for b in range(3):
        for n in range(4):
            assert spikes[:, b, n].tolist() == reference_spikes(current[:, b, n].tolist(), tau, theta, reset)


def test_soft_reset_keeps_the_residue_that_hard_reset_drops():
    current = torch.tensor([[3.0], [0.0], [0.0]], dtype=torch.float64)
    # tau = 1: hard u = 3 (fire), 0, 0; soft u = 3 (fire), 3 - 1 = 2 (fire), 2 - 1 = 1 (fire)
    assert ISNM(1.0, 1.0, "hard")(current).flatten().tolist() == [1, 0, 0]
    assert ISNM(1.0, 1.0, "soft")(current).flatten().tolist() == [1, 1, 1]


def test_state_starts_at_zero_on_every_call():
    neuron = ISNM()
    current = torch.rand(5, 2, 3)
    assert torch.equal(neuron(current), neuron(current))


def test_gradient_flows_through_time():
    current = torch.rand(5, 2, 3, requires_grad=True)
    ISNM()(current).sum().backward()
    assert current.grad is not None and current.grad.abs().sum() > 0


def test_set_surrogate_reaches_every_neuron():
    model = nn.Sequential(ISNM(), nn.Sequential(nn.Identity(), ISNM()))
    assert [m.function for m in model.modules() if isinstance(m, ISNM)] == ["tanh"] * 2
    set_surrogate(model, 0.5, 7.0, "arctan")
    assert [(m.alpha, m.beta, m.function) for m in model.modules() if isinstance(m, ISNM)] == [(0.5, 7.0, "arctan")] * 2
    with pytest.raises(ValueError, match="surrogate function must be one of"):
        set_surrogate(model, 0.5, 7.0, "relu")


@pytest.mark.parametrize("function", SURROGATES)
@pytest.mark.parametrize("fn", [isnm_spikes, isnm_spikes_reference])
def test_one_step_gradient_is_the_surrogate_by_hand(function, fn):
    """T = 1: u = I, so dL/dI = ds/du = alpha * beta * g(beta * (I - theta)), one neuron a point."""
    alpha, beta, theta = 0.5, 4.0, 1.0
    current = torch.linspace(0.2, 1.8, 33, dtype=torch.float64).view(1, 1, -1).requires_grad_()
    fn(current, 2.0, theta, "hard", alpha, beta, function=function).sum().backward()
    expected = [alpha * beta * BY_HAND[function](beta * (i - theta)) for i in current.flatten().tolist()]
    torch.testing.assert_close(current.grad.flatten(), torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("kwargs, message", [({"tau": 0.0}, "tau"), ({"threshold": -1.0}, "threshold"),
                                             ({"reset": "medium"}, "reset")])
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ISNM(**kwargs)


def test_input_without_time_axis_is_rejected():
    with pytest.raises(ValueError, match=r"\[T, B, ...\]"):
        ISNM()(torch.rand(7))


@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("tau, theta, alpha, beta", [(2.0, 1.0, 1.0, 5.0), (1.5, 0.7, 2.0, 0.5), (3.0, 0.3, 0.1, 20.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("function", SURROGATES)
def test_fused_op_equals_the_per_step_reference_bit_for_bit(reset, tau, theta, alpha, beta, dtype, function):
    gen = torch.Generator().manual_seed(7)
    current = (torch.randn(6, 4, 8, 5, 5, generator=gen, dtype=dtype) * 1.3).requires_grad_()
    upstream = torch.randn(current.shape, generator=gen, dtype=dtype)
    grads = []
    for fn in (isnm_spikes, isnm_spikes_reference):
        current.grad = None
        spikes = fn(current, tau, theta, reset, alpha, beta, function=function)
        spikes.backward(upstream)
        grads.append((spikes.detach(), current.grad.clone()))
    (fused, g_fused), (ref, g_ref) = grads
    assert torch.equal(fused, ref)
    assert torch.equal(g_fused, g_ref)
    assert 0 < fused.mean() < 1  # the test sees both spikes and silence
    assert g_ref.count_nonzero() > 0  # and gradients, also where a surrogate has compact support


# other functions change only the slope, so one reset each (compiling costs a few seconds a graph on 2 cores). T=3:
# the unrolled loop's first, middle and last steps, at a compile's lowest cost (the file: 46 CPU-s cold, 54 at T=5)
@pytest.mark.parametrize("function, resets", [("tanh", ("hard", "soft"))] + [  # a compile each: the others are slow
    pytest.param(f, ("hard",), marks=pytest.mark.slow) for f in SURROGATES[1:]])
def test_compiled_loops_match_the_reference(function, resets):
    """torch.compile fuses the loops (and may use fused multiply-adds): spikes equal, gradients to rounding.
    Every function compiles (one graph each); past dynamo's recompile limit it would run eagerly unseen, so
    hitting the limit fails the test."""
    gen = torch.Generator().manual_seed(3)
    for reset in resets:
        current = (torch.randn(3, 3, 4, 6, 6, generator=gen) * 1.3).requires_grad_()
        upstream = torch.randn(current.shape, generator=gen)
        results = []
        for fn, kwargs in ((isnm_spikes, {"kernel": "compiled"}), (isnm_spikes_reference, {})):
            current.grad = None
            with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                spikes = fn(current, 2.0, 1.0, reset, 1.0, 4.0, function=function, **kwargs)
                spikes.backward(upstream)
            results.append((spikes.detach(), current.grad.clone()))
        assert torch.equal(results[0][0], results[1][0])
        torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-5)


def test_only_the_current_and_the_spikes_as_bits_are_kept_for_backward():
    """The encoder's current, broadcast over T, is kept at its own size, not T times over as u would be;
    forward's spikes at one bit each (5 * 4 * 3 = 60 spikes in 8 bytes)."""
    current = torch.rand(4, 3, requires_grad=True)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        ISNM()(current.expand(5, 4, 3))
    assert [t.untyped_storage().nbytes() for t in kept] == [current.untyped_storage().nbytes(), 8]


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (3, 5, 11)])
def test_spikes_round_trip_through_bits(shape):
    from isnm.neuron import packed_bits, unpacked_bits

    spikes = (torch.rand(shape, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    packed = packed_bits(spikes)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-spikes.numel() // 8)
    assert torch.equal(unpacked_bits(packed, spikes.shape, torch.float32), spikes)


@pytest.mark.parametrize("kernel", ["eager", "compiled"])
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_backward_uses_the_spikes_forward_fired(kernel, reset):
    """Potentials exactly at the threshold, and one float32 ulp to either side: the spikes backward resets
    with (unpacked from what forward saved) are forward's, and the gradient matches the reference."""
    theta = 1.0
    edge = torch.tensor([theta, torch.nextafter(torch.tensor(theta), torch.tensor(0.0)).item(),
                         torch.nextafter(torch.tensor(theta), torch.tensor(2.0)).item(), 0.5])
    current = torch.stack([edge, edge * 0.5, edge]).view(3, 1, 4).repeat(1, 2, 1).requires_grad_()
    upstream = torch.randn(current.shape, generator=torch.Generator().manual_seed(1))
    grads = []
    for fn, kwargs in ((isnm_spikes, {"kernel": kernel}), (isnm_spikes_reference, {})):
        current.grad = None
        kept = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
            spikes = fn(current, 2.0, theta, reset, 1.0, 3.0, **kwargs)
        spikes.backward(upstream)
        grads.append((spikes.detach(), current.grad.clone(), kept))
    (fused, g_fused, kept), (ref, g_ref, _) = grads
    assert torch.equal(fused[0, 0], torch.tensor([1.0, 0.0, 1.0, 0.0]))  # H(0) = 1, one ulp below is silent
    saved = next(t for t in kept if t.dtype == torch.uint8)
    from isnm.neuron import unpacked_bits
    assert torch.equal(unpacked_bits(saved, fused.shape, fused.dtype), fused) and torch.equal(fused, ref)
    torch.testing.assert_close(g_fused, g_ref, rtol=1e-6, atol=1e-6)


def test_potentials_and_slopes_are_float32_under_bf16_autocast():
    """A bf16 current whose float32 potential stays below the threshold, but whose bf16 potential would
    round onto it: 0.5 * 0.99609375 + 0.5 = 0.998046875, a tie that bf16 rounds to 1.0."""
    current = torch.tensor([0.99609375, 0.5], dtype=torch.bfloat16).view(2, 1, 1).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spikes = isnm_spikes(current, 2.0, 1.0, "hard", 1.0, 5.0)
    assert spikes.flatten().tolist() == [0.0, 0.0]
    # the surrogate at beta (u - theta) = -3 (u = 0.4): 5 * (1 - tanh(3)^2) in float32, not flushed in bf16
    far = torch.tensor([0.4], dtype=torch.bfloat16).view(1, 1, 1).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        isnm_spikes(far, 2.0, 1.0, "hard", 1.0, 5.0).sum().backward()
    expected = 5.0 * (1 - torch.tanh(torch.tensor(5.0 * (far.item() - 1.0))) ** 2)
    assert far.grad.item() > 0
    torch.testing.assert_close(far.grad.float().flatten(), expected.view(1), rtol=1e-2, atol=0)


def test_out_of_memory_in_a_compiled_kernel_is_raised_not_swallowed():
    """Only a compiler's failure falls back to eager; an OOM (or a bug) must reach the trial, which then
    fails or is retried, rather than every later trial of the worker running eager without a word."""
    from isnm import neuron

    def out_of_memory(x):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    with pytest.raises(torch.OutOfMemoryError, match="injected"):
        neuron.run_kernel(out_of_memory, "compiled", torch.ones(2))
    assert neuron.kernel_fallback() is None


@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("function", ["tanh", "arctan", "triangle"])
def test_a_learned_betas_gradient_in_the_fused_loop_is_the_references(reset, function):
    """The fused eager loop's gradient to a learned beta equals per-step autograd through `spike` (the reference),
    in float64; and a float beta gives the same gradient to the current as before, none to beta."""
    g = torch.Generator().manual_seed(3)
    current = (torch.randn(4, 8, 16, generator=g, dtype=torch.float64) * 1.5).requires_grad_()
    upstream = torch.randn(4, 8, 16, generator=g, dtype=torch.float64)
    beta = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    (isnm_spikes_reference(current, 2.0, 1.0, reset, 0.6, beta, function) * upstream).sum().backward()
    want_current, want_beta = current.grad.clone(), beta.grad.clone()
    current.grad, beta.grad = None, None
    (isnm_spikes(current, 2.0, 1.0, reset, 0.6, beta, "eager", function) * upstream).sum().backward()
    torch.testing.assert_close(current.grad, want_current)
    torch.testing.assert_close(beta.grad, want_beta)
    current.grad = None
    (isnm_spikes(current, 2.0, 1.0, reset, 0.6, 1.7, "eager", function) * upstream).sum().backward()
    torch.testing.assert_close(current.grad, want_current)


@pytest.mark.slow
def test_a_learned_betas_gradient_compiled_is_the_eager_loops():
    g = torch.Generator().manual_seed(4)
    current = (torch.randn(3, 4, 32, generator=g) * 1.5).requires_grad_()
    upstream = torch.randn(3, 4, 32, generator=g)
    got = {}
    for kernel in ("eager", "compiled"):
        beta = torch.tensor(2.3, requires_grad=True)
        current.grad = None
        (isnm_spikes(current, 2.0, 1.0, "hard", 0.5, beta, kernel) * upstream).sum().backward()
        got[kernel] = (current.grad.clone(), beta.grad.clone())
    torch.testing.assert_close(got["compiled"][0], got["eager"][0])
    torch.testing.assert_close(got["compiled"][1], got["eager"][1], rtol=1e-5, atol=1e-6)
