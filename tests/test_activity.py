import itertools

import pytest
import torch
from torch import nn

from isnm.activity import PJ_PER_AC, PJ_PER_MAC, ActivityMonitor, receptive_field_spikes
from isnm.bn_neuron import BNISNM
from isnm.conv import SpikeConv2d
from isnm.models import SpikingNet, TimeFolded, build_model, image_encoder
from isnm.neuron import ISNM


def outputs_reached(i: int, j: int, size: int, kernel: int, stride: int, padding: int) -> int:
    """How many output positions of a conv have input (i, j) in their receptive field: counted one by one."""
    out = (size + 2 * padding - kernel) // stride + 1
    return sum(1 for oi, oj in itertools.product(range(out), repeat=2)
               if 0 <= i + padding - oi * stride < kernel and 0 <= j + padding - oj * stride < kernel)


@pytest.mark.parametrize("where, reached", [((0, 0), 4), ((0, 2), 6), ((2, 2), 9), ((4, 4), 4)])
def test_one_spike_drives_the_weights_of_every_output_that_sees_it(where, reached):
    conv = SpikeConv2d(3, 7, 3, 1, 1)
    spikes = torch.zeros(1, 3, 5, 5)
    spikes[0, 1, where[0], where[1]] = 1.0
    assert receptive_field_spikes(spikes, conv).item() == reached  # 3x3, padding 1: corner 4, edge 6, inside 9


@pytest.mark.parametrize("stride, padding, kernel", [(1, 1, 3), (2, 1, 3), (2, 0, 1)])
def test_receptive_field_sum_equals_a_count_spike_by_spike(stride, padding, kernel):
    torch.manual_seed(0)
    conv = SpikeConv2d(4, 5, kernel, stride, padding)
    spikes = (torch.rand(2, 4, 6, 6) < 0.3).float()
    by_hand = sum(outputs_reached(i, j, 6, kernel, stride, padding) for _, _, i, j in spikes.nonzero().tolist())
    assert receptive_field_spikes(spikes, conv).item() == by_hand


def tiny_net(timesteps: int = 3) -> SpikingNet:
    """encoder 1->2 on 4x4, ISNM, conv 2->3, BN, pool, ISNM, linear 12->4."""
    body = nn.Sequential(ISNM(), TimeFolded(SpikeConv2d(2, 3, 3, 1, 1)), BNISNM(3, pool=True))
    head = TimeFolded(nn.Flatten(), nn.Linear(3 * 2 * 2, 4))
    return SpikingNet(image_encoder(1, 2), body, head, timesteps)


def test_synaptic_operations_of_a_tiny_network_against_a_hand_count():
    torch.manual_seed(0)
    model = tiny_net().eval()
    seen = {}
    model.body[0].register_forward_hook(lambda m, i, out: seen.__setitem__("first", out))
    model.body[2].register_forward_hook(lambda m, i, out: seen.__setitem__("second", out))
    images = torch.randn(6, 1, 4, 4) * 3
    with torch.no_grad(), ActivityMonitor(model) as activity:
        model(images)
    first, second = seen["first"], seen["second"]  # [T, B, C, H, W] spikes
    assert first.sum() > 0 and second.sum() > 0
    # each spike of the first layer drives 3 output channels at every position whose 3x3 window holds it
    conv_acs = sum(3 * outputs_reached(i, j, 4, 3, 1, 1) for *_, i, j in first.nonzero().tolist())
    readout_acs = 4 * second.sum().item()  # each pooled spike drives one weight per class
    assert activity.synops == conv_acs + readout_acs
    assert activity.images == 6
    assert activity.fired == {"body.0": first.sum().item(), "body.2": second.sum().item()}
    assert activity.layer_rates["body.0"] == first.sum().item() / first.numel()
    # the same network as an ANN, per image: encoder 2*1*9*16, conv 3*2*9*16, linear 12*4 multiply-accumulates
    assert activity.encoder_macs / 6 == 2 * 9 * 16
    assert activity.ann_macs / 6 == 2 * 9 * 16 + 3 * 2 * 9 * 16 + 12 * 4
    energy, energy_ann = activity.energy_uj()
    assert energy == pytest.approx((activity.synops / 6 * PJ_PER_AC + 2 * 9 * 16 * PJ_PER_MAC) * 1e-6)
    assert energy_ann == pytest.approx((2 * 9 * 16 + 3 * 2 * 9 * 16 + 12 * 4) * PJ_PER_MAC * 1e-6)


def test_silent_network_costs_only_its_encoder():
    model = tiny_net().eval()
    for module in model.modules():
        if isinstance(module, ISNM):
            module.threshold = 1e9
    with torch.no_grad(), ActivityMonitor(model) as activity:
        model(torch.randn(2, 1, 4, 4))
    assert activity.synops == 0 and activity.spike_rate == 0
    assert activity.metrics()["energy"] == pytest.approx(2 * 9 * 16 * PJ_PER_MAC * 1e-6)


def test_resnet_identity_shortcut_adds_each_spike_once():
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 1, 2, image_size=8, width=0.125).eval()
    shortcut = model.body[2].shortcut  # the second block of 8 -> 8 channels, stride 1: an identity shortcut
    assert isinstance(shortcut, nn.Identity)
    seen = {}
    with torch.no_grad(), ActivityMonitor(model) as activity:  # the monitor's hooks run before these
        shortcut.register_forward_pre_hook(lambda m, i: seen.update(before=activity.synops, spikes=i[0].sum().item()))
        shortcut.register_forward_hook(lambda m, i, o: seen.update(after=activity.synops))
        model(torch.randn(3, 1, 8, 8) * 3)
    assert seen["spikes"] > 0
    assert seen["after"] - seen["before"] == seen["spikes"]
    assert set(activity.layer_rates) == {n for n, m in model.named_modules() if isinstance(m, ISNM)}


def test_monitor_leaves_the_network_as_it_was():
    torch.manual_seed(0)
    model = build_model("vgg_small", 10, 1, 2, image_size=8, width=0.125).eval()
    images = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        plain = model(images)
        with ActivityMonitor(model):
            monitored = model(images)
        after = model(images)
    assert torch.equal(plain, monitored) and torch.equal(plain, after)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
