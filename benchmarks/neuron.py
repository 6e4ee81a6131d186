"""ISNM neuron forward + backward against SpikingJelly's multi-step LIFNode on the same tensors.

Contenders: our loops under torch.compile, our fused op run eagerly, the per-step autograd reference,
and SpikingJelly's LIFNode (torch backend, decay_input=False, the same reset).

python -m benchmarks.neuron [--batch 16] [--repeats 20] [--reset hard|soft]
Needs the `bench` extra: pip install -e '.[bench]'.
"""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import alternating_medians, print_table, require_spikingjelly
from isnm.neuron import isnm_spikes, isnm_spikes_reference
from isnm.runtime import resolve_device, reuse_freed_memory

# (channels, size) of VGG-small's ISNM layers on 32x32 CIFAR images
VGG_SMALL_LAYERS = [(64, 32), (64, 16), (128, 16), (128, 8), (256, 8), (256, 4)]
TIMESTEPS, TAU, THRESHOLD, BETA = 5, 2.0, 1.0, 5.0


def spikingjelly_lif(reset: str):
    from spikingjelly.activation_based import neuron, surrogate

    # decay_input=False: H[t] = V[t-1] * (1 - 1/tau) + X[t], which at tau = 2 is ISNM's V[t-1]/tau + I[t]
    return neuron.LIFNode(tau=TAU, decay_input=False, v_threshold=THRESHOLD,
                          v_reset=0.0 if reset == "hard" else None, surrogate_function=surrogate.ATan(),
                          step_mode="m")  # the torch backend: SpikingJelly 2 has no other on the CPU


def forward_backward(fn, current: torch.Tensor, grad: torch.Tensor) -> None:
    current.grad = None
    fn(current).backward(grad)


def main() -> None:
    require_spikingjelly()
    reuse_freed_memory()  # as training does on the CPU
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--reset", choices=("hard", "soft"), default="hard")
    args = parser.parse_args()
    lif = spikingjelly_lif(args.reset)
    from spikingjelly.activation_based import functional

    def jelly(x):
        functional.reset_net(lif)
        return lif(x)

    contenders = {
        "isnm compiled": lambda x: isnm_spikes(x, TAU, THRESHOLD, args.reset, 1.0, BETA, "compiled"),
        "isnm fused": lambda x: isnm_spikes(x, TAU, THRESHOLD, args.reset, 1.0, BETA),
        "isnm per-step autograd": lambda x: isnm_spikes_reference(x, TAU, THRESHOLD, args.reset, 1.0, BETA),
        "spikingjelly LIFNode": jelly,
    }
    on = resolve_device("auto")
    lif.to(on)
    warm = (torch.randn(TIMESTEPS, 2, 3, 4, 4, device=on) * 1.5).requires_grad_()
    began = time.perf_counter()
    forward_backward(contenders["isnm compiled"], warm, torch.ones_like(warm))
    compile_seconds = time.perf_counter() - began  # once per process (dynamic shapes); cached on disk after
    rows = []
    for channels, size in VGG_SMALL_LAYERS:
        current = (torch.randn(TIMESTEPS, args.batch, channels, size, size, device=on) * 1.5).requires_grad_()
        grad = torch.randn_like(current)
        medians = alternating_medians({k: (lambda f=f: forward_backward(f, current, grad)) for k, f in contenders.items()},
                                      args.repeats)
        base = medians["spikingjelly LIFNode"]
        rows.append([f"[{TIMESTEPS}, {args.batch}, {channels}, {size}, {size}]"]
                    + [f"{medians[k] * 1e3:.2f} ms" for k in contenders]
                    + [f"{medians[k] / base:.2f}" for k in ("isnm compiled", "isnm fused", "isnm per-step autograd")])
    print_table(f"ISNM neuron forward+backward vs SpikingJelly LIFNode ({args.reset} reset, median of "
                f"{args.repeats} alternating runs; compiling took {compile_seconds:.0f} s once)",
                ["current"] + list(contenders) + ["compiled / SJ", "fused / SJ", "per-step / SJ"], rows)


if __name__ == "__main__":
    main()
