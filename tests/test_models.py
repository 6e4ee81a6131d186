import pytest
import torch

from isnm.models import ARCHS, build_model
from isnm.neuron import ISNM


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("timesteps", [1, 5])
def test_logits_shape_for_every_arch(arch, timesteps):
    size = 8 if arch == "tiny" else 32
    model = build_model(arch, num_classes=7, in_channels=3, timesteps=timesteps, image_size=size)
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 7)
    logits.sum().backward()
    for name, p in model.named_parameters():  # the surrogate carries a gradient to every layer
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.encoder[0].weight.grad.abs().sum() > 0


def test_encoder_runs_once_per_image_not_per_step():
    model = build_model("tiny", 10, in_channels=1, timesteps=5, image_size=8)
    calls = []
    model.encoder.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    model(torch.randn(3, 1, 8, 8))
    assert calls == [torch.Size([3, 32, 8, 8])]


def test_neurons_see_time_major_current():
    model = build_model("vgg_small", 10, timesteps=4)
    shapes = []
    for m in model.modules():
        if isinstance(m, ISNM):
            m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[:2])))
    model(torch.randn(2, 3, 32, 32))
    assert len(shapes) == 8 and set(shapes) == {(4, 2)}  # coding layer + VGG-9's seven convs


def test_resnet18_has_the_cifar_layout():
    model = build_model("resnet18", 100)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 17  # stem + 8 BasicBlocks x 2
    assert model.head[-1].in_features == 512


def test_neuron_settings_reach_every_neuron():
    model = build_model("resnet18", 10, tau=3.0, threshold=0.5, reset="soft")
    neurons = [m for m in model.modules() if isinstance(m, ISNM)]
    assert len(neurons) == 17 and {(n.tau, n.threshold, n.reset) for n in neurons} == {(3.0, 0.5, "soft")}


def test_unknown_arch_lists_the_known_ones():
    with pytest.raises(ValueError, match="vgg_small"):
        build_model("vgg16", 10)


@pytest.mark.parametrize("arch", ARCHS)
def test_width_scales_every_layer_and_keeps_the_depth(arch):
    full, quarter = (build_model(arch, 10, width=w) for w in (1.0, 0.25))

    def out_channels(model):
        return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]

    def neurons(model):
        return sum(isinstance(m, ISNM) for m in model.modules())

    assert out_channels(quarter) == [c // 4 for c in out_channels(full)]
    assert neurons(quarter) == neurons(full)
    assert quarter(torch.randn(2, 3, 32, 32)).shape == (2, 10)
