"""The code paths training takes on CUDA, run on the CPU: bf16 autocast, channels_last, SpikeConv2d's
one-call backward, batch statistics under autocast. What only CUDA has (cudnn.benchmark) is in README."""
import copy

import pytest
import torch
from torch.nn import functional as F

from isnm.bn_neuron import BNISNM, BNISNMFunction
from isnm.config import parse_config
from isnm.conv import SpikeConv2d
from isnm.data import load_dataset
from isnm.neuron import ISNM, forward_loop, set_surrogate
from isnm.runtime import prepared_model
from isnm.training import train

BF16_UNIT_ROUNDOFF = 2.0 ** -8  # bf16 keeps 8 significant bits
# The first neurons' current under bf16 autocast went through four roundings to bf16 (the image, the conv's
# output, batch norm's output, and the cancellation when batch norm subtracts the mean of numbers rounded so);
# relative to the largest current each costs at most a unit roundoff. Measured: 0.0055 of the largest.
CURRENT_TOLERANCE = 4 * BF16_UNIT_ROUNDOFF


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "./data", False, torch.device("cpu"), 0.1)


def tiny_model(digits, **config):
    """The tiny network as train() prepares it for `config`, at a fixed initialization and a wide surrogate."""
    torch.manual_seed(0)
    model, _ = prepared_model(parse_config({"arch": "tiny", "kernel": "eager", **config}), digits, torch.device("cpu"))
    set_surrogate(model, 1.0, 1.0)
    return model


def step(model, x, y, autocast: bool = False):
    """(logits, each parameter's gradient, each ISNM layer's (input current, spikes)) of one training step."""
    model.zero_grad()
    model.train()
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, (i[0].detach(), o.detach())))
             for n, m in model.named_modules() if isinstance(m, ISNM)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    loss.backward()
    for hook in hooks:
        hook.remove()
    return logits.detach().float(), {n: p.grad.float() for n, p in model.named_parameters()}, seen


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_bf16_moves_a_spike_only_where_fp32_was_within_rounding_of_the_threshold(digits):
    x, y = digits.train_x[:256], digits.train_y[:256]
    fp32 = tiny_model(digits)
    bf16 = copy.deepcopy(fp32)
    logits, grads, seen = step(fp32, x, y)
    logits16, grads16, seen16 = step(bf16, x, y, autocast=True)
    (current, spikes), (current16, spikes16) = seen["body.0"], seen16["body.0"]
    scale = current.abs().max()
    assert current16.dtype == torch.bfloat16
    assert (current16.float() - current).abs().max() <= CURRENT_TOLERANCE * scale
    # a potential sums at most 1 + 1/2 + 1/4 + ... = 2 currents (tau 2), so its error is at most twice theirs:
    # a neuron's first spike that differs must come from a potential that close to the threshold
    potentials = torch.stack(forward_loop(current, 0.5, 1.0, False)[1])
    flipped = spikes16.float() != spikes
    first = flipped & (flipped.cumsum(0) == 1)
    assert first.any()  # bf16 does move some: the check below is not empty
    assert ((potentials[first] - 1.0).abs() <= 2 * CURRENT_TOLERANCE * scale).all()
    # over the network, moved spikes (0.1% and 2.7% of the two layers') change the gradient's size by about 7%
    # but not its direction (measured cosine >= 0.997 for every parameter), and the logits, each a mean of
    # 5 steps of spikes through the readout, by 12% of their norm at this initialization
    for name, grad in grads.items():
        assert F.cosine_similarity(grads16[name].flatten(), grad.flatten(), dim=0) > 0.99, name
    assert relative(logits16, logits) < 0.25


def test_batch_statistics_under_bf16_autocast_are_float32_of_the_bf16_input():
    torch.manual_seed(0)
    layer = BNISNM(6, pool=True)
    x = torch.randn(5, 4, 6, 8, 8).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, mean, var = BNISNMFunction.apply(x, layer.bn.weight, layer.bn.bias, layer.bn.eps, True, layer)
    wide = x.float().flatten(0, 1)
    assert mean.dtype == var.dtype == torch.float32
    torch.testing.assert_close(mean, wide.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var, wide.var((0, 2, 3), unbiased=False), rtol=1e-5, atol=1e-6)
    layer.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the eager path: nn.BatchNorm2d on the widened input
        layer(x)
    assert layer.bn.running_mean.dtype == torch.float32
    torch.testing.assert_close(layer.bn.running_mean, 0.1 * wide.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)


def test_channels_last_computes_what_contiguous_computes(digits):
    x, y = digits.train_x[:256], digits.train_y[:256]
    contiguous = tiny_model(digits, memory_format="contiguous")
    last = tiny_model(digits, memory_format="channels_last")
    conv = next(m for m in last.modules() if isinstance(m, SpikeConv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    logits, grads, seen = step(contiguous, x, y)
    logits_cl, grads_cl, seen_cl = step(last, x, y)
    # oneDNN sums in another order in the other layout: currents agree to float32 rounding, and a potential
    # that close to the threshold may fire in one and not the other (1 spike in 330 000 here, 10 logits of 2560
    # moved in a fresh venv)
    for name, (current, spikes) in seen.items():
        torch.testing.assert_close(seen_cl[name][0], current, rtol=1e-5, atol=1e-5)
        assert (seen_cl[name][1] != spikes).float().mean() < 1e-4
    # a spike that fired in one layout only moves its image's logits by its readout weight over T (0.006 seen)
    assert relative(logits_cl, logits) < 1e-2
    for name, grad in grads.items():
        assert relative(grads_cl[name], grad) < 1e-3, name


def test_one_call_backward_computes_what_the_chunked_one_does(digits):
    x, y = digits.train_x[:256], digits.train_y[:256]
    chunked = tiny_model(digits, conv_backward="chunked")
    whole = tiny_model(digits, conv_backward="whole")
    assert {m.backward_mode for m in whole.modules() if isinstance(m, SpikeConv2d)} == {"whole"}
    logits, grads, _ = step(chunked, x, y)
    logits_w, grads_w, _ = step(whole, x, y)
    assert torch.equal(logits, logits_w)  # forward is the same call
    for name, grad in grads.items():  # the weight gradient sums its chunks in another order
        torch.testing.assert_close(grads_w[name], grad, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_tiny_learns_digits_in_bf16():
    # 3 epochs (0.971 on an AMD EPYC): a CPU without native bf16 (AVX2 only) emulates it, 20 s an epoch
    final = train({"arch": "tiny", "epochs": 3, "seed": 0, "precision": "bf16"})
    assert final["test_acc"] >= 0.95
