import pytest
import torch
from torch import nn

import isnm.conv
from isnm.conv import SpikeConv2d


def saved_tensors(fn) -> list[torch.Tensor]:
    """The tensors autograd keeps for backward while fn() runs."""
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        fn()
    return kept


@pytest.mark.parametrize("mode", ["chunked", "whole"])  # the CPU's default, and CUDA's
@pytest.mark.parametrize("kernel, stride", [(3, 1), (3, 2), (1, 2)])
def test_equals_nn_conv2d_on_spikes(kernel, stride, mode, monkeypatch):
    monkeypatch.setattr(isnm.conv, "CPU_BACKWARD_CHUNK_BYTES", 3 * 4 * 9 * 9 * 4)  # 7 samples: chunks of 3, 3, 1
    gen = torch.Generator().manual_seed(0)
    spikes = (torch.rand(7, 4, 9, 9, generator=gen, dtype=torch.float64) < 0.3).to(torch.float64)
    ours = SpikeConv2d(4, 5, kernel, stride, kernel // 2).double()
    isnm.conv.set_conv_backward(ours, mode)
    plain = nn.Conv2d(4, 5, kernel, stride, kernel // 2, bias=False).double()
    plain.weight.data.copy_(ours.weight.data)
    results = []
    for conv in (ours, plain):
        x = spikes.clone().requires_grad_()
        y = conv(x)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
        results.append((y.detach(), x.grad, conv.weight.grad))
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[0][2], results[1][2], rtol=1e-12, atol=1e-12)


def test_backward_splits_the_batch_as_its_mode_says():
    grad = torch.zeros(80, 64, 32, 32)
    sample = 64 * 32 * 32 * 4  # 256 KiB of float32 spikes: 32 fit CPU_BACKWARD_CHUNK_BYTES
    assert isnm.conv.backward_chunk(grad, sample, "chunked") == isnm.conv.backward_chunk(grad, sample, "auto") == 32
    assert isnm.conv.backward_chunk(grad, sample, "whole") == 80
    with pytest.raises(ValueError, match="conv backward"):
        isnm.conv.set_conv_backward(SpikeConv2d(1, 1, 3), "halves")


def test_input_is_kept_as_one_byte_per_spike():
    conv = SpikeConv2d(8, 8, 3, 1, 1)
    spikes = (torch.rand(10, 8, 6, 6) < 0.5).float()
    kept = saved_tensors(lambda: conv(spikes))
    assert sorted(t.dtype for t in kept if t.shape == spikes.shape) == [torch.uint8]


def test_without_grad_it_is_a_plain_convolution():
    conv = SpikeConv2d(3, 4, 3, 1, 1)
    spikes = (torch.rand(2, 3, 5, 5) < 0.5).float()
    with torch.no_grad():
        assert torch.equal(conv(spikes), nn.functional.conv2d(spikes, conv.weight, None, 1, 1))
