"""What compiling the ISNM kernels costs and saves, from figures measured on this project's 2-core CPU: which kernel
`kernel: auto` runs (those figures only, so a config runs the same kernel on every machine), how long a compile will
take (the seconds this machine's own compiles took, recorded in its Inductor cache, where there are any), and whether
this machine has compiled an architecture at a T before.

No torch: the study driver announces a compile and the estimate counts it without loading torch or compiling.
"""
from __future__ import annotations

import getpass
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from isnm.config import TrainConfig


@dataclass(frozen=True)
class KernelFigures:
    """Seconds of training epochs of the measured setting, per kernel."""
    cold_first: float  # the first compiled epoch in a process, on an empty Inductor cache: compiling included
    warm_first: float  # the same on a cache that already holds the kernels: tracing, and loading them
    compiled: float  # a later compiled epoch
    eager_first: float  # the first eager epoch (its one-off start: allocations, oneDNN's primitives)
    eager: float  # a later eager epoch


# digits, VGG-small's and ResNet-18's layers at a quarter of their channels, T=5, the default batch (64). A compile
# is counted the same at any T, near enough above T=2: tiny compiled in 34 s at T=2, 48 s at T=5 and at T=8
MEASURED_SETTING = {"dataset": "digits", "width": 0.25, "timesteps": 5, "validation": 0.1, "device": "cpu"}
# python -m benchmarks.compile on the 2-core CPU machine this project is built on (docs/performance.md)
MEASURED = {
    "tiny": KernelFigures(cold_first=51.2, warm_first=12.3, compiled=0.29, eager_first=0.41, eager=0.37),
    "vgg_small": KernelFigures(cold_first=169.5, warm_first=31.8, compiled=1.12, eager_first=1.57, eager=1.54),
    "resnet18": KernelFigures(cold_first=104.2, warm_first=25.7, compiled=2.43, eager_first=3.60, eager=3.30),
}
# training images and pixels an epoch sees, per data set (before the validation split): the work an epoch of
# another setting does relative to the measured one, which its seconds saved scale with
EPOCH_IMAGES = {"digits": (1348, 64), "cifar10": (50_000, 1024), "cifar100": (50_000, 1024)}


def epoch_scale(cfg: TrainConfig) -> float:
    """An epoch of `cfg`'s neuron steps (images x pixels x channels x T) over the measured setting's."""
    def work(dataset: str, width: float, timesteps: int, validation: float) -> float:
        images, pixels = EPOCH_IMAGES[dataset]
        return images * (1 - validation) * pixels * width * timesteps

    m = MEASURED_SETTING
    return (work(cfg.dataset, cfg.width, cfg.timesteps, cfg.validation)
            / work(m["dataset"], m["width"], m["timesteps"], m["validation"]))


UNMEASURED_AS = "vgg_small"  # your own network, never measured: the estimate counts the costliest compile measured


def figures(arch: str) -> KernelFigures:
    """MEASURED's figures of `arch`; of UNMEASURED_AS for a network not measured (your own)."""
    return MEASURED.get(arch, MEASURED[UNMEASURED_AS])


def compile_seconds(arch: str, cached: bool) -> float:
    """Seconds a process spends compiling `arch`'s kernels, on a cache that holds them or an empty one: the one-off
    part of its first compiled epoch (over a later one) beyond the one-off part of a first eager epoch."""
    f = figures(arch)
    return max(0.0, (f.warm_first if cached else f.cold_first) - f.compiled - (f.eager_first - f.eager))


def compiling_pays(cfg: TrainConfig, device_type: str) -> bool:
    """Whether `kernel: auto` compiles: always on a GPU (eager, the time loops are one small kernel launch after
    another), never at T=1 (no time loop), and on the CPU when the epochs save more than the compile costs on an
    empty cache: epochs x (eager - compiled) x epoch_scale >= compile_seconds; never on the CPU for a network not
    measured (your own: what compiling saves it is unknown). A pure function of the config, so that the same config
    runs the same kernel whatever this machine's cache holds."""
    if cfg.timesteps == 1:
        return False
    if device_type == "cuda":
        return True
    if cfg.arch not in MEASURED or cfg.dataset not in EPOCH_IMAGES:
        return False
    f = MEASURED[cfg.arch]
    return cfg.epochs * (f.eager - f.compiled) * epoch_scale(cfg) >= compile_seconds(cfg.arch, cached=False)


def kernel_for(cfg: TrainConfig, device_type: str) -> str:
    """The ISNM loops `cfg` runs on a device of `device_type`: its `kernel`, or for auto as `compiling_pays` says."""
    if cfg.kernel != "auto":
        return cfg.kernel
    return "compiled" if compiling_pays(cfg, device_type) else "eager"


def device_type_of(cfg: TrainConfig, gpus: float) -> str:
    """The device a trial of `cfg` given `gpus` GPUs trains on, known before it starts: `device: auto` takes CUDA
    exactly when it can see a GPU, and a trial sees those it is given."""
    return cfg.device.split(":")[0] if cfg.device != "auto" else ("cuda" if gpus > 0 else "cpu")


def inductor_cache() -> Path:
    """The folder where torch.compile keeps its kernels on this machine: TORCHINDUCTOR_CACHE_DIR, else torch's
    default (torch._inductor.runtime.cache_dir_utils.default_cache_dir, spelled out: it is torch's)."""
    user = re.sub(r'[\\/:*?"<>|]', "_", getpass.getuser())
    return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or Path(tempfile.gettempdir()) / f"torchinductor_{user}")


def compiled_marker(arch: str, timesteps: int) -> Path:
    """A file in the Inductor cache that training leaves once `arch`'s kernels at T=`timesteps` compiled (the time
    loop is unrolled: each T is a graph of its own): gone with the cache."""
    return inductor_cache() / "isnm" / f"{arch}-T{timesteps}.compiled"


def compile_record(arch: str, timesteps: int, cached: bool) -> Path:
    """The file in the Inductor cache that holds the seconds a compile of `arch` at T=`timesteps` took on this
    machine, on an empty cache or (`cached`) on one that held its kernels."""
    return inductor_cache() / "isnm" / f"{arch}-T{timesteps}-{'cached' if cached else 'cold'}.seconds"


def best_effort_write(path: Path, text: str) -> None:
    """Write `text` to `path` whole (a reader never sees half of it). Best effort: a cache folder that cannot be
    written only leaves the next estimate on the measured figures."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text(text)
        partial.replace(path)
    except OSError:
        pass


def note_compiled(arch: str, timesteps: int) -> None:
    """Leave `compiled_marker(arch, timesteps)`: the kernels are in the cache now."""
    best_effort_write(compiled_marker(arch, timesteps), "")


def compiled_here(arch: str, timesteps: int) -> bool:
    """Whether this machine's Inductor cache holds `arch`'s compiled kernels at T=`timesteps`."""
    return compiled_marker(arch, timesteps).is_file()


def recorded_compile(arch: str, timesteps: int, cached: bool) -> Optional[tuple[float, int]]:
    """(seconds, T) of the compile of `arch` recorded on this machine at the T nearest `timesteps` (the smaller on a
    tie), on an empty cache or a filled one as `cached` says; None where none is recorded."""
    found = []
    for path in compile_record(arch, timesteps, cached).parent.glob(f"{arch}-T*-{'cached' if cached else 'cold'}.seconds"):
        match = re.fullmatch(rf"{re.escape(arch)}-T(\d+)-\w+\.seconds", path.name)
        try:
            if match:
                found.append((abs(int(match[1]) - timesteps), int(match[1]), float(path.read_text())))
        except (OSError, ValueError):  # being replaced, or damaged: the others, or the measured figures
            continue
    if not found:
        return None
    _, t, seconds = min(found)
    return seconds, t


def compile_seconds_here(arch: str, timesteps: int, cached: bool) -> tuple[float, str]:
    """(seconds, where they come from: "measured here", "measured here at T=4" or "measured on the project's 2-core
    CPU"): a compile of `arch` at T=`timesteps` on this machine, as this machine's last compile of that kind took
    (at the nearest T), else as `compile_seconds` says."""
    recorded = recorded_compile(arch, timesteps, cached)
    if recorded is None:
        return compile_seconds(arch, cached), measured_source(arch)
    seconds, t = recorded
    return seconds, f"measured here{'' if t == timesteps else f' at T={t}'}"


def measured_source(arch: str) -> str:
    """Where `compile_seconds(arch)` comes from, for the estimate's line."""
    if arch in MEASURED:
        return "measured on the project's 2-core CPU"
    return f"{UNMEASURED_AS}'s, measured on the project's 2-core CPU: none of this network yet"


class CompileTimer:
    """Times the compile of a trial's kernels where this process compiles them: the first compiled epoch of an
    (architecture, T) in the process over its next epoch (the one-off part of a first eager epoch, 0.03 to 0.3 s
    in MEASURED, is counted with it), recorded on an empty cache or a filled one as it was when the trial began.
    A trial of one epoch records nothing: there is no later epoch to tell compiling from training."""

    def __init__(self, arch: str, timesteps: int, kernel: str):
        self.arch, self.timesteps = arch, timesteps
        self.timing = kernel == "compiled" and (arch, timesteps) not in _COMPILED_IN_PROCESS
        self.cached = compiled_here(arch, timesteps)
        self.first: Optional[float] = None

    def epoch_ended(self, seconds: float, kernel: str) -> None:
        """An epoch of `seconds` ran the `kernel` loops (eager after a compile that failed)."""
        if not self.timing or kernel != "compiled":
            self.timing = False
            return
        if self.first is None:
            self.first = seconds
            _COMPILED_IN_PROCESS.add((self.arch, self.timesteps))
            note_compiled(self.arch, self.timesteps)
            return
        compiling = max(0.0, self.first - seconds)
        best_effort_write(compile_record(self.arch, self.timesteps, self.cached), f"{compiling:.2f}\n")
        self.timing = False


_COMPILED_IN_PROCESS: set[tuple[str, int]] = set()  # (arch, T) whose kernels this process compiled: in memory now


def compile_note(arch: str, timesteps: int, here: bool = True) -> str:
    """What compiling `arch` at T=`timesteps` will take: on this machine (`here`), "first run on this machine:
    about 48 s as measured here; cached afterwards" or "cached on this machine: about 12 s as measured on the
    project's 2-core CPU"; on a cluster's nodes, whose caches this machine cannot see, both figures of the
    project's CPU."""
    if not here:
        cold, warm = compile_seconds(arch, cached=False), compile_seconds(arch, cached=True)
        return f"on each node: about {cold:.0f} s the first time, {warm:.0f} s once cached, on 2 CPU cores"
    cached = compiled_here(arch, timesteps)
    seconds, source = compile_seconds_here(arch, timesteps, cached)
    if cached:
        return f"cached on this machine: about {seconds:.0f} s {source}"
    return f"first run on this machine: about {seconds:.0f} s {source}; cached afterwards"
