"""ISNM networks: a conv encoder run once per image, ISNM blocks over time, a mean-current readout.

A block is conv -> BN -> (max-pool) -> ISNM: pooling and batch norm act on current, which is what
ISNM makes possible (paper section 2.1). Tensors with time are [T, B, ...]; the stateless layers
fold T into the batch.
"""
from __future__ import annotations

import torch
from torch import nn

from isnm.config import ARCHS
from isnm.bn_neuron import BNISNM
from isnm.conv import SpikeConv2d
from isnm.neuron import ISNM


class TimeFolded(nn.Sequential):
    """Stateless layers applied to [T, B, ...] as one [T*B, ...] batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x.flatten(0, 1))
        return y.view(x.shape[0], x.shape[1], *y.shape[1:])


def conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> TimeFolded:
    """Conv + BN on spikes, for a current that is summed before it reaches a neuron (ResNet)."""
    return TimeFolded(SpikeConv2d(cin, cout, kernel, stride, kernel // 2), nn.BatchNorm2d(cout))


def conv_bn_isnm(cin: int, cout: int, neuron: dict, stride: int = 1, pool: bool = False) -> list[nn.Module]:
    """Conv -> BN -> (max pool) -> ISNM on spikes; BN, pool and neuron run fused (isnm.bn_neuron)."""
    return [TimeFolded(SpikeConv2d(cin, cout, 3, stride, 1)), BNISNM(cout, pool, **neuron)]


def image_encoder(cin: int, cout: int) -> nn.Module:
    """Conv + BN on images: the coding layer, run once per image."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))


class SpikingNet(nn.Module):
    """encoder (once per image) -> broadcast over T -> body (spikes) -> head (current) -> mean over T."""

    def __init__(self, encoder: nn.Module, body: nn.Module, head: nn.Module, timesteps: int):
        super().__init__()
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps!r}")
        self.encoder, self.body, self.head, self.timesteps = encoder, body, head, timesteps

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        current = self.encoder(images)
        current = current.unsqueeze(0).expand(self.timesteps, *current.shape)
        return self.head(self.body(current)).mean(0)


class SpikingBasicBlock(nn.Module):
    """ResNet BasicBlock with ISNM in place of ReLU; the shortcut adds to the second current."""

    def __init__(self, cin: int, cout: int, stride: int, neuron: dict):
        super().__init__()
        self.branch = nn.Sequential(*conv_bn_isnm(cin, cout, neuron, stride), conv_bn(cout, cout))
        self.shortcut = conv_bn(cin, cout, stride, kernel=1) if stride != 1 or cin != cout else nn.Identity()
        self.neuron = ISNM(**neuron)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        return self.neuron(self.branch(spikes) + self.shortcut(spikes))


def channels(base: int, width: float) -> int:
    return max(1, round(base * width))


def vgg_small(num_classes: int, in_channels: int, image_size: int, timesteps: int, neuron: dict,
              width: float = 1.0) -> SpikingNet:
    # VGG-9 (64 64 M 128 128 M 256 256 256 M) after one conv coding layer, one FC layer (paper 3.1)
    plan = [channels(c, width) if c != "M" else c for c in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]]
    layers: list[nn.Module] = [ISNM(**neuron)]
    cin, size = channels(64, width), image_size
    for i, item in enumerate(plan):
        if item == "M":
            continue
        pool = i + 1 < len(plan) and plan[i + 1] == "M"
        layers += conv_bn_isnm(cin, item, neuron, pool=pool)
        cin, size = item, size // 2 if pool else size
    head = TimeFolded(nn.Flatten(), nn.Linear(cin * size * size, num_classes))
    return SpikingNet(image_encoder(in_channels, channels(64, width)), nn.Sequential(*layers), head, timesteps)


def resnet18(num_classes: int, in_channels: int, image_size: int, timesteps: int, neuron: dict,
             width: float = 1.0) -> SpikingNet:
    # CIFAR ResNet-18: 3x3 stem as the encoder, BasicBlocks [2, 2, 2, 2]
    layers: list[nn.Module] = [ISNM(**neuron)]
    cin = channels(64, width)
    for cout, stride in [(channels(c, width), s) for c, s in [(64, 1), (128, 2), (256, 2), (512, 2)]]:
        layers += [SpikingBasicBlock(cin, cout, stride, neuron), SpikingBasicBlock(cout, cout, 1, neuron)]
        cin = cout
    head = TimeFolded(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))
    return SpikingNet(image_encoder(in_channels, channels(64, width)), nn.Sequential(*layers), head, timesteps)


def tiny(num_classes: int, in_channels: int, image_size: int, timesteps: int, neuron: dict,
         width: float = 1.0) -> SpikingNet:
    # two conv layers, for 8x8 digits and for tests
    c1, c2 = channels(32, width), channels(64, width)
    body = nn.Sequential(ISNM(**neuron), *conv_bn_isnm(c1, c2, neuron, pool=True))
    head = TimeFolded(nn.Flatten(), nn.Linear(c2 * (image_size // 2) ** 2, num_classes))
    return SpikingNet(image_encoder(in_channels, c1), body, head, timesteps)


def build_model(arch: str, num_classes: int, in_channels: int = 3, timesteps: int = 5, tau: float = 2.0,
                threshold: float = 1.0, reset: str = "hard", image_size: int = 32, width: float = 1.0) -> SpikingNet:
    """An ISNM network mapping images [B, C, H, W] (H = W = image_size) to logits [B, num_classes]; `width`
    scales every layer's channels (1 = the paper's networks)."""
    builders = {"tiny": tiny, "vgg_small": vgg_small, "resnet18": resnet18}
    if arch not in builders:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    neuron = {"tau": tau, "threshold": threshold, "reset": reset}
    return builders[arch](num_classes, in_channels, image_size, timesteps, neuron, width)
