"""One prepared GPU check: correctness on the device, training throughput and peak memory, packing, the paper's cost.

python -m benchmarks.gpu [--device cuda|cpu] [--out reports/gpu-check.md]

On one GPU it takes at most 8 minutes, compiling included, and prints (and writes to --out) a Markdown report:
1. correctness on the device: the compiled ISNM and BN-ISNM kernels against the eager ones (spikes equal,
   gradients close), and a bf16 training step against fp32 (the first neurons' current within bf16 rounding);
2. training throughput (images/s) and peak memory of VGG-small and ResNet-18 at T=1 and T=5, fp32 and bf16;
3. packing: 1, 2 and 4 trial processes sharing the GPU at once (as Ray places trials of `gpu: 1/k`), total images/s;
4. the GPU-hours of the paper's Table 1 (12 trials x 200 epochs x 50k images) at the fastest setting found.
`--device cpu` runs the same code at small sizes (a quarter of the channels, 16x16 images, batch 16, eager
kernels, packing 1 and 2) in under a minute; tests/test_gpu_check.py runs it, so the script is known to work before a GPU sees it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import machine, synchronized
from isnm.bn_neuron import BNISNM, BNISNMFunction
from isnm.config import parse_config
from isnm.data import Dataset
from isnm.neuron import isnm_spikes, set_surrogate
from isnm.runtime import precision_of, prepared_model, reuse_freed_memory
from isnm.training import train_step
from study.markdown import markdown_table

ARCHS = ("vgg_small", "resnet18")
TIMESTEPS = (1, 5)
PRECISIONS = ("fp32", "bf16")
TABLE1_IMAGES = 12 * 200 * 50_000  # 4 rows x 3 seeds, 200 epochs of CIFAR-10's 50k training images
BF16_CURRENT_TOLERANCE = 4 * 2.0 ** -8  # tests/test_precision.py: four roundings to bf16's 8 significant bits


@dataclass(frozen=True)
class Sizes:
    width: float  # channels, times the paper's
    image: int  # pixels a side
    batch: int
    steps: int  # timed training steps per setting
    warmup: int  # untimed steps first (compiling happens there)
    kernel: str  # the ISNM kernel, as the training config names it
    packing: tuple[int, ...]  # how many trial processes share the device at once, one measurement each


# auto: compiled on CUDA, as training runs it. On the CPU, packing stops at 2: two cores run two trials at most,
# and each packing process costs a second and a half of torch's import
SIZES = {"cuda": Sizes(1.0, 32, 64, 20, 3, "auto", (1, 2, 4)),
         "cpu": Sizes(0.25, 16, 16, 2, 1, "eager", (1, 2))}


@dataclass(frozen=True)
class Setting:
    arch: str
    timesteps: int
    precision: str

    def name(self) -> str:
        return f"{self.arch} T={self.timesteps} {self.precision}"


def synthetic(sizes: Sizes, device: torch.device) -> Dataset:
    """CIFAR-shaped random images: the step's cost does not depend on what the pixels show."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(sizes.batch, 3, sizes.image, sizes.image, generator=gen).to(device)
    y = torch.randint(0, 10, (sizes.batch,), generator=gen).to(device)
    return Dataset(x, y, x[:0], y[:0], x, y, num_classes=10, augment=False)


def trainer(setting: Setting, sizes: Sizes, device: torch.device):
    """(the setting's network, a training step of it: forward, backward, Adam), as training builds and runs it."""
    cfg = parse_config({"dataset": "cifar10", "arch": setting.arch, "timesteps": setting.timesteps,
                        "precision": setting.precision, "width": sizes.width, "kernel": sizes.kernel,
                        "device": str(device), "batch_size": sizes.batch})
    data = synthetic(sizes, device)
    torch.manual_seed(0)
    model, _ = prepared_model(cfg, data, device)
    set_surrogate(model, 1.0, 5.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    autocast, loss_fn = precision_of(cfg, device), nn.CrossEntropyLoss()
    return model, lambda: train_step(model, optimizer, data.train_x, data.train_y, loss_fn, autocast)


def images_per_second(step, sizes: Sizes) -> float:
    """Median over the timed steps, after the warmup steps."""
    for _ in range(sizes.warmup):
        step()
    times = []
    for _ in range(sizes.steps):
        synchronized()
        began = time.perf_counter()
        step()
        synchronized()
        times.append(time.perf_counter() - began)
    return sizes.batch / statistics.median(times)


def kernel_rows(device: torch.device) -> list[list[str]]:
    """The compiled kernels against the eager ones on the device: ISNM's time loop and the fused BN-ISNM."""
    gen = torch.Generator().manual_seed(1)
    rows = []
    current = (torch.randn(3, 16, 8, 8, 8, generator=gen) * 1.5).to(device)  # T=3: the loop's first, middle, last step
    upstream = torch.randn(current.shape, generator=gen).to(device)
    for reset in ("hard", "soft"):
        out = {}
        for kernel in ("eager", "compiled"):
            x = current.clone().requires_grad_()
            spikes = isnm_spikes(x, 2.0, 1.0, reset, 1.0, 3.0, kernel)
            spikes.backward(upstream)
            out[kernel] = (spikes.detach(), x.grad)
        rows.append(compared(f"ISNM ({reset} reset): compiled = eager", out))
    out = {}
    for kernel in ("eager", "compiled"):
        layer = BNISNM(8, pool=True).to(device)
        layer.kernel, layer.alpha, layer.beta = kernel, 1.0, 3.0
        x = current.clone().requires_grad_()
        spikes, _, _ = BNISNMFunction.apply(x, layer.bn.weight, layer.bn.bias, layer.bn.eps, True, layer)
        spikes.backward(upstream[:, :, :, :4, :4])
        out[kernel] = (spikes.detach(), x.grad)
    rows.append(compared("BN-pool-ISNM fused: compiled = eager", out))
    return rows


def compared(check: str, out: dict) -> list[str]:
    (spikes, grad), (spikes_c, grad_c) = out["eager"], out["compiled"]
    rel = ((grad_c - grad).norm() / grad.norm()).item()
    ok = torch.equal(spikes, spikes_c) and rel < 1e-4
    return [check, f"spikes {'equal' if torch.equal(spikes, spikes_c) else 'DIFFER'}, gradient rel. diff {rel:.1e}",
            "spikes equal, < 1e-4", "pass" if ok else "FAIL"]


def bf16_row(sizes: Sizes, device: torch.device) -> list[str]:
    """A VGG-small step in bf16 against fp32 from the same weights: the first neurons' current within rounding."""
    seen = {}
    for precision in PRECISIONS:
        model, step = trainer(Setting("vgg_small", 5, precision), sizes, device)
        first = model.body[0]
        hook = first.register_forward_hook(lambda m, i, o, p=precision: seen.__setitem__(p, i[0].detach().float()))
        step()
        hook.remove()
    diff = ((seen["bf16"] - seen["fp32"]).abs().max() / seen["fp32"].abs().max()).item()
    return ["bf16 step: first ISNM current vs fp32", f"max diff {diff:.4f} of the largest",
            f"<= {BF16_CURRENT_TOLERANCE:.4f}", "pass" if diff <= BF16_CURRENT_TOLERANCE else "FAIL"]


def throughput_rows(sizes: Sizes, device: torch.device) -> tuple[list[list[str]], dict[Setting, float]]:
    rows, rates = [], {}
    for arch in ARCHS:
        for timesteps in TIMESTEPS:
            for precision in PRECISIONS:
                setting = Setting(arch, timesteps, precision)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                _, step = trainer(setting, sizes, device)
                rates[setting] = images_per_second(step, sizes)
                peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if device.type == "cuda" else "—"
                rows.append([arch, str(timesteps), precision, f"{rates[setting]:.0f}", peak])
                print(f"  {setting.name()}: {rates[setting]:.0f} images/s", flush=True)
    return rows, rates


def packed(setting: Setting, sizes: Sizes, device: torch.device, processes: int) -> float:
    """Total images/s of `processes` trial processes training `setting` at once on the one device."""
    env = dict(os.environ)
    if device.type == "cpu":  # as Ray gives each of k trials 1/k of the cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    job = json.dumps({"setting": asdict(setting), "sizes": asdict(sizes), "device": str(device)})
    workers = [subprocess.Popen([sys.executable, "-m", "benchmarks.gpu", "--worker", job], env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(processes)]
    try:
        for worker in workers:  # each has built its network and taken its warmup steps
            if worker.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a packing worker failed (exit {worker.wait(60)})")
        for worker in workers:  # then all time their steps together
            worker.stdin.write("go\n")
            worker.stdin.flush()
        return sum(float(worker.stdout.readline()) for worker in workers)
    finally:
        for worker in workers:
            worker.stdin.close()
            worker.wait(120)


def worker(job: str) -> None:
    spec = json.loads(job)
    sizes, device = Sizes(**spec["sizes"]), torch.device(spec["device"])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    _, step = trainer(Setting(**spec["setting"]), sizes, device)
    for _ in range(sizes.warmup):
        step()
    print("ready", flush=True)
    sys.stdin.readline()
    print(images_per_second(step, Sizes(**{**spec["sizes"], "warmup": 0})), flush=True)


def report(device: torch.device) -> str:
    sizes = SIZES[device.type]
    began = time.perf_counter()
    print("correctness ...", flush=True)
    checks = kernel_rows(device) + [bf16_row(sizes, device)]
    print("throughput ...", flush=True)
    speed_rows, rates = throughput_rows(sizes, device)
    paper = max((s for s in rates if s.arch == "vgg_small" and s.timesteps == 5), key=rates.get)  # Table 1's network
    print(f"packing {paper.name()} ...", flush=True)
    totals = {k: packed(paper, sizes, device, k) for k in sizes.packing}
    best = max(totals, key=totals.get)
    hours = TABLE1_IMAGES / totals[best] / 3600
    scale = "" if device.type == "cuda" else (" (at this mode's small sizes: not the paper's network, only the "
                                              "arithmetic of the estimate)")
    parts = [
        f"# GPU check: `python -m benchmarks.gpu --device {device.type}`",
        f"Machine: {machine()}. Sizes: width {sizes.width:g}, {sizes.image}x{sizes.image} images, batch "
        f"{sizes.batch}, {sizes.warmup} warmup + {sizes.steps} timed steps (median), ISNM kernel {sizes.kernel}. "
        f"Took {time.perf_counter() - began:.0f} s.",
        "## Correctness on the device\n\n" + markdown_table(["check", "measured", "required", ""], checks),
        "## Training throughput and peak memory\n\n" + markdown_table(
            ["network", "T", "precision", "images/s", "peak memory"], speed_rows),
        f"## Packing: {paper.name()}, k trial processes on one device at once\n\n" + markdown_table(
            ["k", "total images/s", "per trial"],
            [[str(k), f"{t:.0f}", f"{t / k:.0f}"] for k, t in totals.items()]),
        f"## Cost of the paper's Table 1\n\n12 trials x 200 epochs x 50,000 images at {totals[best]:.0f} images/s "
        f"({paper.name()}, {best} per device): **{hours:.1f} device-hours**{scale}."]
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="reports/gpu-check.md", help="where the Markdown report goes")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a packing process: JSON of what to train
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"error: --device cuda: torch {torch.__version__} sees no GPU here; use --device cpu", file=sys.stderr)
        return 2
    if args.device == "cpu":
        reuse_freed_memory()  # as training does on the CPU
    text = report(torch.device(args.device))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print("\n" + text + f"\n(written to {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
