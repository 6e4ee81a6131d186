"""ISNM networks: a conv encoder run once per image, ISNM blocks over time, a mean-current readout.

A block is conv -> BN -> (max-pool) -> ISNM: pooling and batch norm act on current, which is what
ISNM makes possible (paper section 2.1). Tensors with time are [T, B, ...]; the stateless layers
fold T into the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from isnm.config import ARCHS
from isnm.plugins import PluginError, first_line, loaded
from isnm.bn_neuron import BNISNM
from isnm.conv import SpikeConv2d
from isnm.neuron import ISNM


@dataclass(frozen=True)
class NetSpec:
    """What the data and the config decide of a network, given to every architecture callable, built in or
    yours (`arch: module:callable`, called as `callable(spec, **arch_args)` and returning a `SpikingNet`):
    images [B, in_channels, image_size, image_size] in, logits [B, num_classes] out, over `timesteps` steps;
    every ISNM layer's neuron (`ISNM(**spec.neuron)`); `width` scales the channels (1: the paper's networks)."""
    num_classes: int
    in_channels: int
    image_size: int
    timesteps: int
    tau: float = 2.0
    threshold: float = 1.0
    reset: str = "hard"
    width: float = 1.0

    @property
    def neuron(self) -> dict:
        """The keyword arguments of `ISNM` and `BNISNM` for this network's neurons."""
        return {"tau": self.tau, "threshold": self.threshold, "reset": self.reset}


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


def vgg_small(spec: NetSpec) -> SpikingNet:
    # VGG-9 (64 64 M 128 128 M 256 256 256 M) after one conv coding layer, one FC layer (paper 3.1)
    neuron, width = spec.neuron, spec.width
    plan = [channels(c, width) if c != "M" else c for c in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]]
    layers: list[nn.Module] = [ISNM(**neuron)]
    cin, size = channels(64, width), spec.image_size
    for i, item in enumerate(plan):
        if item == "M":
            continue
        pool = i + 1 < len(plan) and plan[i + 1] == "M"
        layers += conv_bn_isnm(cin, item, neuron, pool=pool)
        cin, size = item, size // 2 if pool else size
    head = TimeFolded(nn.Flatten(), nn.Linear(cin * size * size, spec.num_classes))
    return SpikingNet(image_encoder(spec.in_channels, channels(64, width)), nn.Sequential(*layers), head,
                      spec.timesteps)


def resnet18(spec: NetSpec) -> SpikingNet:
    # CIFAR ResNet-18: 3x3 stem as the encoder, BasicBlocks [2, 2, 2, 2]
    neuron, width = spec.neuron, spec.width
    layers: list[nn.Module] = [ISNM(**neuron)]
    cin = channels(64, width)
    for cout, stride in [(channels(c, width), s) for c, s in [(64, 1), (128, 2), (256, 2), (512, 2)]]:
        layers += [SpikingBasicBlock(cin, cout, stride, neuron), SpikingBasicBlock(cout, cout, 1, neuron)]
        cin = cout
    head = TimeFolded(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, spec.num_classes))
    return SpikingNet(image_encoder(spec.in_channels, channels(64, width)), nn.Sequential(*layers), head,
                      spec.timesteps)


def tiny(spec: NetSpec) -> SpikingNet:
    # two conv layers, for 8x8 digits and for tests
    neuron, width = spec.neuron, spec.width
    c1, c2 = channels(32, width), channels(64, width)
    body = nn.Sequential(ISNM(**neuron), *conv_bn_isnm(c1, c2, neuron, pool=True))
    head = TimeFolded(nn.Flatten(), nn.Linear(c2 * (spec.image_size // 2) ** 2, spec.num_classes))
    return SpikingNet(image_encoder(spec.in_channels, c1), body, head, spec.timesteps)


BUILT_IN = {"tiny": tiny, "vgg_small": vgg_small, "resnet18": resnet18}


def network(arch: str, spec: NetSpec, arch_args: dict | None = None, folder: str | Path | None = None) -> SpikingNet:
    """The network `arch` names for `spec`: built in, registered by an installed package, or module:callable (found
    in `folder`, the study file's, first); PluginError for code that cannot be found, called, or gives no
    spiking network."""
    if arch in BUILT_IN:
        return BUILT_IN[arch](spec)
    build = loaded("arch", arch, folder)
    try:
        model = build(spec, **(arch_args or {}))
    except Exception as exc:  # the user's code (or a signature that does not take (spec, **arch_args))
        raise PluginError(f"arch {arch}: calling it with arch_args {arch_args or {}} failed: {type(exc).__name__}: "
                          f"{first_line(exc)}") from exc
    if not isinstance(model, SpikingNet):
        raise PluginError(f"arch {arch}: returned {type(model).__name__}, expected an isnm.layers.SpikingNet "
                          f"(encoder, body, head, timesteps)")
    if not any(isinstance(m, ISNM) for m in model.modules()):
        raise PluginError(f"arch {arch}: the network has no ISNM layer, so the surrogate and its schedule would "
                          f"change nothing; build it from isnm.layers")
    return model


@torch.no_grad()
def check_output(model: SpikingNet, arch: str, spec: NetSpec) -> None:
    """PluginError unless `model` maps two images to logits [2, num_classes]; in eval mode, so no statistic moves."""
    was_training = model.training
    model.eval()
    try:
        out = model(torch.zeros(2, spec.in_channels, spec.image_size, spec.image_size,
                                device=next(model.parameters()).device))
    except Exception as exc:
        raise PluginError(f"arch {arch}: a forward pass of two images [2, {spec.in_channels}, {spec.image_size}, "
                          f"{spec.image_size}] failed: {type(exc).__name__}: {first_line(exc)}") from exc
    finally:
        model.train(was_training)
    if tuple(out.shape) != (2, spec.num_classes):
        raise PluginError(f"arch {arch}: two images gave an output of shape {list(out.shape)}, expected "
                          f"[2, {spec.num_classes}] ([batch, classes])")


def build_model(arch: str, num_classes: int, in_channels: int = 3, timesteps: int = 5, tau: float = 2.0,
                threshold: float = 1.0, reset: str = "hard", image_size: int = 32, width: float = 1.0) -> SpikingNet:
    """A built-in ISNM network mapping images [B, C, H, W] (H = W = image_size) to logits [B, num_classes];
    `width` scales every layer's channels (1 = the paper's networks)."""
    if arch not in BUILT_IN:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    return BUILT_IN[arch](NetSpec(num_classes, in_channels, image_size, timesteps, tau, threshold, reset, width))
