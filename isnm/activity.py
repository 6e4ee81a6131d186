"""What a network does on a test pass: each spiking layer's firing rate, synaptic operations, and energy.

Synaptic operations (SynOps) count what a spike costs on event-driven hardware: each spike triggers one
accumulate (AC) in every weight it drives, so a layer fed spikes costs spikes x fan-out ACs. They are
counted exactly, border effects included, where spikes meet weights:
- a convolution in the body (`SpikeConv2d`, or any `nn.Conv2d` there): the ACs are those of the convolution
  with every weight 1, which is C_out times the sum over each output position of the spikes in its receptive
  field;
- a linear layer in the body (a spiking MLP's): each spike drives every output, spikes x out_features;
- the readout (`SpikingNet.head`): one AC per spike per class (ResNet's average pool folds into the
  linear layer's weights);
- an identity shortcut (ResNet): one AC per spike, the addition of the spike to the block's current.
The encoder sees the image, not spikes: its convolution is multiply-accumulates (MACs), run once per image.

The ANN it is held against is the same network with ReLU for ISNM, run once: every conv and linear
layer's MACs per image. Batch norm is folded into the weights at inference in both, pooling is free.
Energies are 45 nm CMOS figures (Horowitz, ISSCC 2014), 0.9 pJ per 32-bit float AC, 4.6 pJ per MAC:
the usual assumptions of SNN papers, which leave out memory access and data movement (docs/model.md, "Firing
and energy").
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from isnm.metrics import ENERGY, ENERGY_ANN, LAYER_RATE, SPIKE_RATE, SYNOPS
from isnm.neuron import ISNM

PJ_PER_AC = 0.9
PJ_PER_MAC = 4.6


@dataclass
class Activity:
    """Totals over a test pass; per image and per layer through the properties."""
    images: int = 0
    fired: dict[str, float] = field(default_factory=dict)  # spiking layer -> spikes emitted
    neuron_steps: dict[str, int] = field(default_factory=dict)  # spiking layer -> neurons x T x images
    synops: float = 0.0  # accumulates triggered by spikes
    encoder_macs: float = 0.0  # multiply-accumulates of the layers that see images
    ann_macs: float = 0.0  # multiply-accumulates of the same network as an ANN

    @property
    def spike_rate(self) -> float:
        """Spikes per neuron per time step, over every spiking layer."""
        return sum(self.fired.values()) / max(sum(self.neuron_steps.values()), 1)

    @property
    def layer_rates(self) -> dict[str, float]:
        return {name: self.fired[name] / max(self.neuron_steps[name], 1) for name in self.fired}

    def energy_uj(self) -> tuple[float, float]:
        """(this network's, the ANN's) energy per image in microjoules."""
        per_image = max(self.images, 1) * 1e6
        return ((self.synops * PJ_PER_AC + self.encoder_macs * PJ_PER_MAC) / per_image,
                self.ann_macs * PJ_PER_MAC / per_image)

    def metrics(self) -> dict[str, float]:
        """spike_rate, spike_rate/<layer> per spiking layer, synops and energy (uJ) per image, energy_ann (uJ)."""
        energy, energy_ann = self.energy_uj()
        return {SPIKE_RATE: self.spike_rate, **{LAYER_RATE + k: v for k, v in self.layer_rates.items()},
                SYNOPS: self.synops / max(self.images, 1), ENERGY: energy, ENERGY_ANN: energy_ann}


def receptive_field_spikes(spikes: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Sum over output positions of the spikes in each one's receptive field: the ACs per output channel."""
    ones = torch.ones(1, 1, *conv.kernel_size, dtype=torch.float32, device=spikes.device)
    summed = spikes.sum(1, keepdim=True, dtype=torch.float32)  # a spike drives every input channel's kernel once
    return F.conv2d(summed, ones, None, conv.stride, conv.padding).sum(dtype=torch.float64)


def macs_per_sample(module: nn.Module, out: torch.Tensor) -> int:
    """Multiply-accumulates of a conv or linear layer for one sample of its (possibly time-folded) batch."""
    if isinstance(module, nn.Conv2d):
        fan_in = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
    else:
        fan_in = module.in_features
    return out[0].numel() * fan_in


class ActivityMonitor:
    """Counts `Activity` while a `SpikingNet` runs inside `with ActivityMonitor(model) as activity:`; hooks only,
    so the network computes what it computes without it."""

    def __init__(self, model: nn.Module):
        self.model, self.activity, self.hooks = model, Activity(), []
        self.batch = 0  # images in the forward pass under way
        self.sees_images: set[int] = set()  # the encoder's layers: multiply-accumulates on the image
        self.in_head: set[int] = set()  # the readout's layers: counted once, by the head's own hook

    def count_images(self, model, inputs) -> None:
        self.batch = len(inputs[0])
        self.activity.images += self.batch

    def count_spikes(self, name: str):
        def hook(module, inputs, spikes):
            fired, steps = self.activity.fired, self.activity.neuron_steps
            fired[name] = fired.get(name, 0.0) + spikes.sum(dtype=torch.float64).item()
            steps[name] = steps.get(name, 0) + spikes.numel()
        return hook

    def count_weights(self, module, inputs, out) -> None:
        macs = macs_per_sample(module, out) * self.batch  # a folded sample is one image at one step; an ANN has one
        self.activity.ann_macs += macs
        if id(module) in self.sees_images:
            self.activity.encoder_macs += macs
        elif id(module) in self.in_head:
            return
        elif isinstance(module, nn.Conv2d):
            self.activity.synops += module.out_channels * receptive_field_spikes(inputs[0], module).item()
        else:
            self.activity.synops += inputs[0].sum(dtype=torch.float64).item() * module.out_features

    def count_fan_out(self, fan_out: int):
        def hook(module, inputs, out):
            self.activity.synops += inputs[0].sum(dtype=torch.float64).item() * fan_out
        return hook

    def __enter__(self) -> Activity:
        model = self.model
        readout = next(m for m in model.head.modules() if isinstance(m, nn.Linear))
        self.sees_images = {id(m) for m in model.encoder.modules()}
        self.in_head = {id(m) for m in model.head.modules()}
        self.hooks = [model.register_forward_pre_hook(self.count_images),
                      model.head.register_forward_hook(self.count_fan_out(readout.out_features))]
        for name, module in model.named_modules():
            if isinstance(module, ISNM):
                self.hooks.append(module.register_forward_hook(self.count_spikes(name)))
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                self.hooks.append(module.register_forward_hook(self.count_weights))
            elif isinstance(module, nn.Identity) and name.endswith("shortcut"):
                self.hooks.append(module.register_forward_hook(self.count_fan_out(1)))
        return self.activity

    def __exit__(self, *exc) -> None:
        for hook in self.hooks:
            hook.remove()
