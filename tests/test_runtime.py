import pytest
import torch

from isnm.config import parse_config
from isnm.conv import SpikeConv2d
from isnm.data import Dataset
from isnm.neuron import ISNM
from isnm.runtime import channels_last, precision_of, prepared_model, resolve_device, resolve_kernel

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_kernel_choice():
    assert resolve_kernel(parse_config({"arch": "tiny"}), CPU) == "eager"
    # on 2 cores VGG-small's compile (168 s) pays for itself after 401 quarter-width digits epochs (0.42 s saved
    # each), 101 at full width, and within the first CIFAR epoch
    quarter = {"arch": "vgg_small", "width": 0.25}
    assert resolve_kernel(parse_config({**quarter, "epochs": 6}), CPU) == "eager"  # the demo's
    assert resolve_kernel(parse_config({**quarter, "epochs": 405}), CPU) == "compiled"
    assert resolve_kernel(parse_config({**quarter, "epochs": 395}), CPU) == "eager"
    assert resolve_kernel(parse_config({"arch": "vgg_small", "epochs": 10}), CPU) == "eager"
    assert resolve_kernel(parse_config({"arch": "vgg_small", "epochs": 105}), CPU) == "compiled"
    assert resolve_kernel(parse_config({"arch": "vgg_small", "dataset": "cifar10", "epochs": 1}), CPU) == "compiled"
    assert resolve_kernel(parse_config({"arch": "resnet18", "dataset": "cifar10", "epochs": 1}), CPU) == "compiled"
    assert resolve_kernel(parse_config({"arch": "resnet18", "epochs": 1}), CUDA) == "compiled"
    assert resolve_kernel(parse_config({"arch": "vgg_small", "timesteps": 1}), CPU) == "eager"
    assert resolve_kernel(parse_config({"arch": "tiny"}), CUDA) == "compiled"
    assert resolve_kernel(parse_config({"arch": "tiny", "epochs": 700}), CPU) == "compiled"
    assert resolve_kernel(parse_config({"arch": "resnet18", "kernel": "eager"}), CPU) == "eager"


def test_auto_device_is_the_gpu_when_there_is_one():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("memory_format, on_cpu, on_cuda", [
    ("auto", False, True), ("channels_last", True, True), ("contiguous", False, False)])
def test_channels_last_by_default_on_cuda_only(memory_format, on_cpu, on_cuda):
    cfg = parse_config({"memory_format": memory_format})
    assert (channels_last(cfg, CPU), channels_last(cfg, CUDA)) == (on_cpu, on_cuda)


@pytest.mark.parametrize("precision, enabled", [("fp32", False), ("bf16", True)])
def test_precision_is_bf16_autocast_on_the_training_device(precision, enabled):
    autocast = precision_of(parse_config({"precision": precision}), CPU)
    with autocast:
        assert torch.is_autocast_enabled("cpu") == enabled
        if enabled:
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_prepared_model_runs_the_configs_kernel_backward_and_layout():
    images = torch.zeros(4, 3, 16, 16)
    labels = torch.zeros(4, dtype=torch.int64)
    data = Dataset(images, labels, images[:0], labels[:0], images, labels, num_classes=10, augment=False)
    cfg = parse_config({"arch": "vgg_small", "width": 0.25, "kernel": "eager", "conv_backward": "whole",
                        "memory_format": "channels_last"})
    model, kernel = prepared_model(cfg, data, CPU)
    assert kernel == "eager" and {m.kernel for m in model.modules() if isinstance(m, ISNM)} == {"eager"}
    convs = [m for m in model.modules() if isinstance(m, SpikeConv2d)]
    assert {m.backward_mode for m in convs} == {"whole"}
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert model(images).shape == (4, 10)


def test_the_inductor_cache_is_where_torch_keeps_it(monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    from isnm.kernels import inductor_cache

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert str(inductor_cache()) == cache_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/else")
    assert str(inductor_cache()) == cache_dir() == "/somewhere/else"
