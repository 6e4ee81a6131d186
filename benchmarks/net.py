"""One VGG-small training step of this project against the same network built from SpikingJelly's layers.

python -m benchmarks.net [--batch 16] [--repeats 20] [--profile 5] [--threads N] [--cpu-time]
                         [--precision fp32|bf16] [--also KEY=VALUE ...]

T=5, CIFAR-sized random images, Adam with the training's lr and weight decay. Ours is built as training
prepares a CIFAR run (`prepared_model`), with the kernel `resolve_kernel` picks for the CIFAR networks
(compiled), and again with the other one (eager). SpikingJelly's is the same `SpikingNet`: the same encoder
(conv + BN) run once per image and broadcast over T, the same readout (the mean over T of the last layer's
current), and SpikingJelly's layers in the body: each conv, and each BN with its pool, folded over time by
`layer.SeqToANNContainer`; `neuron.LIFNode(step_mode="m", decay_input=False, tau=2, v_reset=0)`, whose
dynamics are ISNM's at tau=2; its `surrogate.Sigmoid` at alpha = 2*beta, which is eq. 9's tanh surrogate at
half its height, so our alpha is set to 0.5 and the two gradients are the same function. What differs:
SpikingJelly's own examples repeat the image T times and fold the encoder over time too (T times its work);
here it runs once, as ours, since LIFNode takes the broadcast view. On the CPU, SpikingJelly 2.0's LIFNode
is a registered op whose forward and backward loop over T in Python with torch operations (its fused
kernels are CUDA's). Both networks start from the same weights, and the first step's logits and gradients
are compared before timing (in bf16 they differ by more: our batch-norm currents stay float32, its
are bf16). `--also KEY=VALUE` adds our
network trained with that config option (e.g. memory_format=channels_last) as one more contender.
`--precision bf16` runs all three under the training's bf16 autocast (`precision_of`); with AMX
the convolutions take a third of the time. `--profile N` adds where each network's time goes
(torch.profiler, the median of N steps each): by layer and by operator.
Needs the `bench` extra: pip install -e '.[bench]'.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict
from typing import Callable

import torch
from torch import nn

from benchmarks.common import alternating_medians, print_table, require_spikingjelly, synchronized
from isnm.bn_neuron import BNISNM
from isnm.config import ConfigError, parse_config, with_setting
from isnm.data import Dataset
from isnm.models import SpikingNet
from isnm.neuron import ISNM, set_kernel, set_surrogate
from isnm.runtime import precision_of, prepared_model, resolve_device, resolve_kernel, reuse_freed_memory
from isnm.training import train_step

TIMESTEPS, BETA, ALPHA = 5, 5.0, 0.5  # alpha 0.5: our surrogate equals SpikingJelly's Sigmoid(alpha=2*beta)
SJ = "spikingjelly"
ADAM = "optimizer: Adam"
ADAM_EVENT = "Optimizer.step#Adam.step"  # the profiler's record of Adam's step, torch.optim's own
OTHER = "other: broadcast over T, mean over T, loss, zero_grad"


def ours(cfg, images: torch.Tensor, labels: torch.Tensor) -> tuple[SpikingNet, str]:
    """(our network for a CIFAR-shaped batch, its kernel), as training builds it, with a fixed surrogate."""
    empty = images[:0]
    data = Dataset(images, labels, empty, labels[:0], empty, labels[:0], num_classes=10, augment=False)
    torch.manual_seed(cfg.seed)
    model, kernel = prepared_model(cfg, data, images.device)
    set_surrogate(model, ALPHA, BETA)
    return model, kernel


def spikingjelly_twin(model: SpikingNet) -> SpikingNet:
    """`model` with its body and head made of SpikingJelly's layers, holding a copy of its weights."""
    from spikingjelly.activation_based import layer, neuron, surrogate

    def lif(isnm: ISNM) -> nn.Module:
        return neuron.LIFNode(tau=isnm.tau, decay_input=False, v_threshold=isnm.threshold, v_reset=0.0,
                              surrogate_function=surrogate.Sigmoid(alpha=2 * BETA), step_mode="m")

    body: list[nn.Module] = []
    for child in model.body:
        if isinstance(child, BNISNM):
            pool = [nn.MaxPool2d(2)] if child.pool else []
            body += [layer.SeqToANNContainer(nn.BatchNorm2d(child.bn.num_features), *pool), lif(child)]
        elif isinstance(child, ISNM):
            body.append(lif(child))
        else:  # TimeFolded(SpikeConv2d)
            conv = child[0]
            body.append(layer.SeqToANNContainer(nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                                                          conv.stride, conv.padding, bias=False)))
    head = layer.SeqToANNContainer(*[type(m)(*([m.in_features, m.out_features] if isinstance(m, nn.Linear) else []))
                                     for m in model.head])
    encoder = nn.Sequential(*[type(m)(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, bias=False)
                              if isinstance(m, nn.Conv2d) else nn.BatchNorm2d(m.num_features) for m in model.encoder])
    twin = SpikingNet(encoder, nn.Sequential(*body), head, model.timesteps).to(next(model.parameters()).device)
    theirs, mine = twin.state_dict(), model.state_dict()
    if [v.shape for v in theirs.values()] != [v.shape for v in mine.values()]:
        raise RuntimeError("the SpikingJelly twin's parameters do not line up with ours")
    twin.load_state_dict(dict(zip(theirs, mine.values())))
    return twin


def training_step(model: nn.Module, cfg, images: torch.Tensor, labels: torch.Tensor, reset: bool
                  ) -> Callable[[], object]:
    """Training's step (`train_step`) of `model`, in the config's precision; `reset`: clear SpikingJelly's
    neuron states first (ISNM keeps none)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    autocast = precision_of(cfg, images.device)
    if reset:
        from spikingjelly.activation_based import functional

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        if reset:
            functional.reset_net(model)
        return train_step(model, optimizer, images, labels, loss_fn, autocast)
    return step


def first_step_agreement(a: nn.Module, b: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                         reset_b: bool, autocast) -> str:
    """How far apart two networks with the same weights are on one forward and backward (no update)."""
    outputs = []
    for model, reset in ((a, False), (b, reset_b)):
        if reset:
            from spikingjelly.activation_based import functional
            functional.reset_net(model)
        model.zero_grad(set_to_none=True)
        with autocast:
            logits = model(images).float()
        nn.functional.cross_entropy(logits, labels).backward()
        outputs.append((logits.detach(), [p.grad for p in model.parameters()]))
    (la, ga), (lb, gb) = outputs
    grad_err = max(((x - y).norm() / y.norm().clamp_min(1e-30)).item() for x, y in zip(ga, gb))
    for model in (a, b):
        model.zero_grad(set_to_none=True)
    return f"logits differ by at most {(la - lb).abs().max().item():.1e}, gradients by {grad_err:.1e} (relative)"


def layer_units(model: SpikingNet) -> list[tuple[str, nn.Module]]:
    """(unit, module) pairs a profile is broken down by: the encoder, the first neuron, each block's conv and
    its BN + pool + neuron (one BNISNM in ours, two modules in SpikingJelly's), the head."""
    units, block, pool = [("encoder", model.encoder)], 0, False
    for child in model.body:
        inner = child[0] if isinstance(child, nn.Sequential) else child
        if isinstance(inner, nn.Conv2d):
            block, pool = block + 1, False
            units.append((f"block {block} conv {inner.in_channels}->{inner.out_channels}", child))
        elif block == 0:
            units.append(("neuron on the encoder's current", child))
        else:  # SpikingJelly's pool sits in the BN container, before the block's neuron
            pool = pool or isinstance(child, BNISNM) and child.pool or any(isinstance(m, nn.MaxPool2d)
                                                                           for m in child.modules())
            units.append((f"block {block} bn{' + pool' if pool else ''} + neuron", child))
    units.append(("head (linear)", model.head))
    return units


def operator(event) -> str:
    """An operator's name in the profile, Inductor's kernels (named by hash) grouped as forward or backward."""
    if not event.name.startswith("## Call CompiledFxGraph"):
        return event.name
    while event is not None and not event.name.startswith("autograd::engine"):
        event = event.cpu_parent
    return f"Inductor kernels (compiled loops), {'backward' if event is not None else 'forward'}"


def profiled(step: Callable[[], object], model: SpikingNet) -> tuple[dict[str, float], dict[str, float]]:
    """({"unit fwd" or "unit bwd": ms}, {operator: self ms}) of one step under torch.profiler. Forward time is
    the unit's module call; backward time goes to the unit whose forward recorded the autograd node (by
    sequence number); the rest (broadcast, mean, loss, Adam) has rows of its own."""
    handles, ranges = [], {}
    for name, module in layer_units(model):
        def enter(module, _in, name=name):
            ranges[module] = torch.autograd.profiler.record_function(f"unit: {name}")
            ranges[module].__enter__()

        def leave(module, _in, _out):
            ranges.pop(module).__exit__(None, None, None)
        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step()
            synchronized()
    finally:
        for handle in handles:
            handle.remove()
    events = prof.events()
    unit_of_seq: dict[int, str] = {}
    times: dict[str, float] = defaultdict(float)

    def unit_of(event) -> str | None:
        while event is not None and not event.name.startswith("unit: "):
            event = event.cpu_parent
        return None if event is None else event.name.removeprefix("unit: ")

    for event in events:
        if event.name.startswith("unit: "):
            times[f"{event.name.removeprefix('unit: ')} fwd"] += event.cpu_time_total
        elif event.name == ADAM_EVENT:
            times[f"{ADAM} fwd"] += event.cpu_time_total
        elif event.sequence_nr >= 0 and not event.name.startswith("autograd::engine") and unit_of(event):
            unit_of_seq.setdefault(event.sequence_nr, unit_of(event))
    for event in events:  # the backward nodes the engine ran, not the nested calls inside them
        if event.name.startswith("autograd::engine::evaluate_function") and (
                event.cpu_parent is None or not event.cpu_parent.name.startswith("autograd::engine")):
            rest = "other: grad accumulation" if "AccumulateGrad" in event.name else OTHER
            times[f"{unit_of_seq.get(event.sequence_nr, rest)} bwd"] += event.cpu_time_total
    total = sum(e.cpu_time_total for e in events if e.cpu_parent is None)
    times[f"{OTHER} fwd"] += total - sum(times.values())
    ops: dict[str, float] = defaultdict(float)
    for event in events:
        ops[operator(event)] += event.self_cpu_time_total / 1e3
    return {k: v / 1e3 for k, v in times.items()}, ops


def medians(samples: list[dict[str, float]]) -> dict[str, float]:
    keys = dict.fromkeys(k for sample in samples for k in sample)
    return {k: statistics.median(sample.get(k, 0.0) for sample in samples) for k in keys}


def profile_tables(steps: dict[str, Callable[[], object]], models: dict[str, SpikingNet], repeats: int) -> None:
    """Print where each network's step goes, by layer and by operator: medians of `repeats` profiled steps,
    the networks alternating."""
    names = list(steps)
    samples: dict[str, list] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            samples[name].append(profiled(steps[name], models[name]))
    units = {name: medians([s[0] for s in samples[name]]) for name in names}
    ops = {name: medians([s[1] for s in samples[name]]) for name in names}
    order = list(dict.fromkeys(k.removesuffix(" fwd").removesuffix(" bwd") for n in names for k in units[n]))
    rows = [[unit] + [f"{units[n].get(f'{unit} {part}', 0.0):.1f}" for n in names for part in ("fwd", "bwd")]
            for unit in order]
    rows.append(["total (sum of medians)"] + [f"{sum(v for k, v in units[n].items() if not k.endswith(' bwd')):.1f}"
                                              if part == "fwd" else
                                              f"{sum(v for k, v in units[n].items() if k.endswith(' bwd')):.1f}"
                                              for n in names for part in ("fwd", "bwd")])
    print_table(f"Where a step's time goes, by layer (ms, median of {repeats} profiled steps, alternating; backward "
                "time assigned by autograd sequence number)",
                ["layer"] + [f"{n} {part}" for n in names for part in ("fwd", "bwd")], rows)
    top = sorted(set().union(*[sorted(o, key=lambda k: -o[k])[:12] for o in ops.values()]),
                 key=lambda k: -max(o.get(k, 0.0) for o in ops.values()))
    print_table(f"Where a step's time goes, by operator (self CPU ms, median of {repeats} profiled steps; the "
                "twelve largest of each)", ["operator"] + names,
                [[k] + [f"{ops[n].get(k, 0.0):.1f}" for n in names] for k in top]
                + [["all operators"] + [f"{sum(ops[n].values()):.1f}" for n in names]])


def main() -> None:
    require_spikingjelly()
    reuse_freed_memory()  # as training does on the CPU
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="also profile STEPS steps of each network (by layer, by operator)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch's CPU threads (default: torch's own choice, as training leaves it)")
    parser.add_argument("--also", action="append", default=[], metavar="KEY=VALUE",
                        help="also time our network with this config option (dotted keys, as python -m isnm's --set)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="the training's `precision`: bf16 runs all three under autocast (on the CPU too)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time steps by this process's CPU time, not wall time: with --threads 1, other "
                             "processes on a busy machine no longer count")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    on = resolve_device("auto")
    config = {"arch": "vgg_small", "dataset": "cifar10", "timesteps": TIMESTEPS, "batch_size": args.batch,
              "device": on.type, "precision": args.precision}
    cfg = parse_config(config)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, 32, 32, device=on)
    labels = torch.randint(0, 10, (args.batch,), device=on)
    default, kernel = ours(cfg, images, labels)
    if kernel != resolve_kernel(cfg, on):
        raise RuntimeError(f"prepared_model chose {kernel!r}, resolve_kernel {resolve_kernel(cfg, on)!r}")
    other = "eager" if kernel == "compiled" else "compiled"
    alternative, _ = ours(cfg, images, labels)
    set_kernel(alternative, other)
    twin = spikingjelly_twin(default)
    models = {f"isnm {kernel} (default)": (default, cfg), f"isnm {other}": (alternative, cfg)}
    for option in args.also:
        try:
            varied = parse_config(with_setting(config, option))
        except ConfigError as exc:
            parser.error(f"--also {exc}")
        models[f"isnm {kernel}, {option}"] = (ours(varied, images, labels)[0], varied)
    models[SJ] = (twin, cfg)
    steps = {name: training_step(model, config_of, images, labels, reset=name == SJ)
             for name, (model, config_of) in models.items()}
    began = time.perf_counter()
    # compiles what is not cached
    agreement = first_step_agreement(default, twin, images, labels, True, precision_of(cfg, on))
    first = time.perf_counter() - began
    load_before = os.getloadavg()[0]
    clock = time.process_time if args.cpu_time else time.perf_counter
    seconds = alternating_medians(steps, args.repeats, clock=clock)
    load_after = os.getloadavg()[0]
    rows = [[name, f"{seconds[name] * 1e3:.0f} ms", f"{args.batch / seconds[name]:.1f}",
             f"{seconds[name] / seconds[SJ]:.2f}x"] for name in steps]
    timed = "CPU time" if args.cpu_time else "wall time"
    print_table(f"VGG-small training step (forward, backward, Adam), T={TIMESTEPS}, batch {args.batch}, 3x32x32, "
                f"{args.precision}: "
                f"median {timed} of {args.repeats} alternating runs; load average {load_before:.1f} before, "
                f"{load_after:.1f} after; first step, compiling included, {first:.0f} s; against SpikingJelly "
                f"with the same weights, {agreement}",
                ["network", "step", "images/s", "time / SpikingJelly's"], rows)
    if args.profile:
        profile_tables({name: steps[name] for name in (f"isnm {kernel} (default)", SJ)},
                       {name: models[name][0] for name in (f"isnm {kernel} (default)", SJ)}, args.profile)


if __name__ == "__main__":
    main()
