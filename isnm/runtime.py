"""How a training config runs on this machine: the device, the ISNM kernel, the memory layout, the precision,
the allocator, and the network prepared with them."""
from __future__ import annotations

import ctypes

import torch
from torch import nn

from isnm.config import TrainConfig
from isnm.conv import set_conv_backward
from isnm.data import Dataset
from isnm.kernels import kernel_for
from isnm.models import BUILT_IN, NetSpec, check_output, network
from isnm.neuron import set_kernel


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_kernel(cfg: TrainConfig, device: torch.device) -> str:
    """The ISNM loops to run: the config's, or for `auto` compiled where compiling pays for itself
    (isnm.kernels.compiling_pays: on GPUs, and on the CPU for enough epochs of enough work)."""
    return kernel_for(cfg, device.type)


def channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether convolutions run on channels_last weights (and so produce channels_last outputs): the config's
    choice, by default on CUDA only."""
    return cfg.memory_format == "channels_last" or (cfg.memory_format == "auto" and device.type == "cuda")


def precision_of(cfg: TrainConfig, device: torch.device) -> torch.autocast:
    """The autocast the config trains and evaluates under: bf16 on the device trained on, the CPU too (slow
    there, but the same code path as on a GPU); neurons keep their potentials in float32 either way
    (isnm.neuron.wide)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


def reuse_freed_memory() -> None:
    """Make glibc's malloc keep freed blocks for reuse instead of handing them back to the OS.

    glibc serves blocks over 32 MiB with mmap, so each such tensor (VGG's first layers at T*B = 160
    are 42 MiB) is faulted in and zeroed page by page on every step: a fresh 42 MiB product took
    16 ms instead of 3, and the CPU training step 1.4x longer (benchmarks/step.py). A no-op
    without glibc. Process-wide, like torch's thread count: memory stays with the process.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 1 << 30)


def net_spec(cfg: TrainConfig, data: Dataset) -> NetSpec:
    """What `data` and `cfg` decide of the network every architecture callable builds."""
    return NetSpec(data.num_classes, data.in_channels, data.image_size, cfg.timesteps, cfg.neuron.tau,
                   cfg.neuron.threshold, cfg.neuron.reset, cfg.width)


def prepared_model(cfg: TrainConfig, data: Dataset, device: torch.device) -> tuple[nn.Module, str]:
    """(the config's network for `data` on `device`, the ISNM kernel it runs): built, its ISNM kernel and
    SpikeConv2d backward set, in the config's memory layout."""
    spec = net_spec(cfg, data)
    model = network(cfg.arch, spec, cfg.arch_args).to(device)
    if cfg.arch not in BUILT_IN:
        check_output(model, cfg.arch, spec)
    kernel = resolve_kernel(cfg, device)
    set_kernel(model, kernel)
    set_conv_backward(model, cfg.conv_backward)
    if channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    return model, kernel
