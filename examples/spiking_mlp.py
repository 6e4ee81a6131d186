"""A spiking MLP for `arch: spiking_mlp:spiking_mlp`, built from isnm.layers (docs/own-network.md).

The first layer sees the image (flattened), so it runs once per image; each hidden layer is ISNM neurons that
turn current into spikes, then a linear layer and batch norm that turn the spikes into the next current; a
linear readout's current, averaged over the T steps, gives the logits.
"""
from torch import nn

from isnm.layers import ISNM, NetSpec, SpikingNet, TimeFolded


def spiking_mlp(spec: NetSpec, hidden: int = 128, layers: int = 2) -> SpikingNet:
    """Images [B, C, H, H] -> logits [B, classes] through `layers` spiking layers of `hidden` neurons (times
    spec.width)."""
    width = max(1, round(hidden * spec.width))
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(spec.in_channels * spec.image_size ** 2, width, bias=False),
                            nn.BatchNorm1d(width))
    body: list[nn.Module] = [ISNM(**spec.neuron)]
    for _ in range(layers - 1):
        body += [TimeFolded(nn.Linear(width, width, bias=False), nn.BatchNorm1d(width)), ISNM(**spec.neuron)]
    head = TimeFolded(nn.Linear(width, spec.num_classes))
    return SpikingNet(encoder, nn.Sequential(*body), head, spec.timesteps)
