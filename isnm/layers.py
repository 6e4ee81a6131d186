"""The layers a spiking network is built from. The built-in networks (isnm.models) are made of them, and a network
of yours made of them gets, with no code of its own: the surrogate and its schedule (every ISNM layer's alpha and
beta set each epoch, or learned, or PBT's), the eager and compiled kernels, firing rate, SynOps and energy, and
evaluation at another T (docs/own-network.md).

Shapes: a tensor that carries time is [T, B, ...]; stateless layers fold T into the batch (`TimeFolded`).

- `SpikingNet(encoder, body, head, timesteps)`: images [B, C, H, W] -> `encoder` (once per image: its current does
  not change over time) -> broadcast to [T, B, ...] -> `body` (ISNM layers turn current into spikes, the layers
  between them spikes into current) -> `head` (the readout's current, [T, B, classes]) -> mean over T: logits
  [B, classes]. The head's last `nn.Linear` is the readout that SynOps count.
- `ISNM(tau, threshold, reset)`: current [T, B, ...] -> spikes of the same shape, exactly 0 or 1; the time loop is
  inside, and its kernel (eager or compiled) is set for the whole network by the trainer.
- `BNISNM(channels, pool, tau, threshold, reset)`: a conv's current [T, B, C, H, W] -> batch norm -> (2x2 max pool
  if `pool`) -> ISNM: spikes [T, B, C, H', W'], fused into one op when compiled.
- `SpikeConv2d(cin, cout, kernel, stride, padding)`: `nn.Conv2d` without bias for spikes [N, cin, H, W] (wrap it in
  `TimeFolded` for [T, B, ...]); its backward keeps one byte per spike.
- `TimeFolded(*layers)`: `nn.Sequential` on [T, B, ...] run as one [T*B, ...] batch.
- `conv_bn_isnm(cin, cout, neuron, stride=1, pool=False)`: [TimeFolded(SpikeConv2d 3x3), BNISNM], a VGG block.
- `image_encoder(cin, cout)`: conv 3x3 + batch norm on images, the usual coding layer.
- `NetSpec`: what the data and config decide (classes, input shape, T, the neuron's tau, threshold and reset, width),
  given to every architecture callable; `spec.neuron` is the keyword arguments of `ISNM` and `BNISNM`.

In the body, `nn.Linear` and `nn.Conv2d` layers are fed spikes and counted as synaptic operations (accumulates); in
the encoder they see the image and are counted as multiply-accumulates.
"""
from isnm.bn_neuron import BNISNM
from isnm.conv import SpikeConv2d
from isnm.models import NetSpec, SpikingNet, TimeFolded, conv_bn_isnm, image_encoder
from isnm.neuron import ISNM

__all__ = ["BNISNM", "ISNM", "NetSpec", "SpikeConv2d", "SpikingNet", "TimeFolded", "conv_bn_isnm", "image_encoder"]
