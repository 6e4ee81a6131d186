"""One training step (forward, backward, Adam) of ISNM networks at T=5 against the same network as an ANN.

python -m benchmarks.step [--batch 32] [--repeats 10]
R = t_isnm / (5 * t_ann): below 1 means the ISNM network costs less than five ANN passes. The same ratio for
the time spent in convolutions alone (torch.profiler) shows how much of R is the conv library's doing.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch import nn

from benchmarks.common import alternating_medians, print_table, synchronized
from isnm.bn_neuron import BNISNM
from isnm.conv import SpikeConv2d
from isnm.models import TimeFolded, build_model
from isnm.neuron import ISNM, set_kernel
from isnm.runtime import resolve_device, reuse_freed_memory
from isnm.training import train_step

TIMESTEPS = 5


def as_ann(model: nn.Module) -> nn.Module:
    """The same network with plain layers: ReLU for ISNM, BN (and pool) + ReLU for BNISNM, nn.Conv2d (timesteps=1)."""
    for name, child in model.named_children():
        if isinstance(child, BNISNM):
            setattr(model, name, TimeFolded(child.bn, *([nn.MaxPool2d(2)] if child.pool else []), nn.ReLU()))
        elif isinstance(child, ISNM):
            setattr(model, name, nn.ReLU())
        elif isinstance(child, SpikeConv2d):
            conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                             bias=False)
            setattr(model, name, conv)
        else:
            as_ann(child)
    return model


def step_fn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    """Training's step (`train_step`) of `model` on one batch, in float32."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    return lambda: train_step(model, optimizer, images, labels, loss_fn, contextlib.nullcontext())


def saved_activation_bytes(model: nn.Module, images: torch.Tensor) -> int:
    """Bytes autograd keeps for backward in one forward pass (what training memory grows with)."""
    total = 0
    seen: set = set()

    def pack(tensor: torch.Tensor):
        nonlocal total
        key = (tensor.untyped_storage().data_ptr(), tensor.dtype)
        if key not in seen and not isinstance(tensor, nn.Parameter):
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(images).sum()
    return total


CONV_OPS = {"aten::mkldnn_convolution", "aten::convolution_backward", "aten::cudnn_convolution"}


def conv_seconds(step) -> float:
    """Seconds one step spends in convolutions (forward and backward; GPU time on a GPU), from torch.profiler."""
    cuda = torch.cuda.is_initialized()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        step()
        synchronized()
    events = [e for e in prof.key_averages() if e.key in CONV_OPS]
    return sum(e.device_time_total if cuda else e.self_cpu_time_total for e in events) / 1e6


def main() -> None:
    reuse_freed_memory()  # as training does on the CPU
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    on = resolve_device("auto")
    layout = torch.channels_last if on.type == "cuda" else torch.contiguous_format  # as training (memory_format: auto)
    images = torch.randn(args.batch, 3, 32, 32, device=on).contiguous(memory_format=layout)
    labels = torch.randint(0, 10, (args.batch,), device=on)
    rows, first_steps = [], []
    for arch in ("vgg_small", "resnet18"):
        snn = build_model(arch, 10, timesteps=TIMESTEPS).to(on, memory_format=layout)
        set_kernel(snn, "compiled")  # what training runs for these networks (kernel: auto)
        ann = as_ann(build_model(arch, 10, timesteps=1)).to(on, memory_format=layout)
        for model in (snn, ann):
            for m in model.modules():
                if isinstance(m, ISNM):
                    m.beta = 5.0
        steps = {"isnm": step_fn(snn, images, labels), "ann": step_fn(ann, images, labels)}
        began = time.perf_counter()
        steps["isnm"]()  # compiles what the inductor cache (TORCHINDUCTOR_CACHE_DIR) does not hold yet
        synchronized()
        first_steps.append(f"{arch} {time.perf_counter() - began:.0f} s")
        medians = alternating_medians(steps, args.repeats)
        conv = {name: statistics.median(conv_seconds(step) for _ in range(3)) for name, step in steps.items()}
        mem_snn, mem_ann = saved_activation_bytes(snn, images), saved_activation_bytes(ann, images)
        rows.append([arch, f"{medians['isnm'] * 1e3:.0f} ms", f"{medians['ann'] * 1e3:.0f} ms",
                     f"{medians['isnm'] / (TIMESTEPS * medians['ann']):.2f}",
                     f"{conv['isnm'] / (TIMESTEPS * conv['ann']):.2f}",
                     f"{mem_snn / 2**20:.0f} MiB", f"{mem_ann / 2**20:.0f} MiB", f"{mem_snn / mem_ann:.2f}x"])
    print_table(f"Training step, batch {args.batch}, 32x32 images: ISNM at T={TIMESTEPS} vs the same net as an ANN "
                f"(first ISNM step, compiling included: {', '.join(first_steps)})",
                ["arch", "ISNM step", "ANN step", "R = isnm / (5 ann)", "R of the convolutions alone",
                 "ISNM activations", "ANN activations", "ratio"], rows)


if __name__ == "__main__":
    main()
