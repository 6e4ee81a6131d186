"""One training run of an ISNM network: `train(config, on_epoch, resume_state) -> final metrics`.

Also a command line: `python -m isnm.train --set arch=tiny --set epochs=5`.
"""
from __future__ import annotations

import argparse
import ast
import copy
import ctypes
import sys
import time
from typing import Any, Callable

import torch
from torch import nn

from isnm.config import ConfigError, TrainConfig, config_hash, merged, nested, parse_config, to_dict
from isnm.data import CIFAR, DataError, Dataset, batches, check_cifar, fingerprint, load_dataset, train_batches
from isnm.models import build_model
from isnm.activity import Activity, ActivityMonitor
from isnm.conv import set_conv_backward
from isnm.neuron import kernel_fallback, set_kernel, set_surrogate
from isnm.schedule import surrogate_at

EVAL_BATCH_SIZE = 1000


def check_data(config: dict) -> None:
    """Make sure this config's data set can be read, fetching it first where allowed; raises DataError.

    Run before any trial starts, so a missing or damaged data set is one line rather than a failed
    trial (and, with download on, so that one process fetches it, not every trial)."""
    cfg = parse_config(config)
    if cfg.dataset in CIFAR:
        check_cifar(cfg.dataset, cfg.data_dir, cfg.download)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, loss: float):
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(f"training diverged: loss {loss} at epoch {epoch}, step {step}")


def resolve_kernel(cfg: TrainConfig, device: torch.device) -> str:
    """The ISNM loops to run: compiling pays off on GPUs and for the CIFAR networks, not for tiny ones."""
    if cfg.kernel != "auto":
        return cfg.kernel
    return "compiled" if cfg.timesteps > 1 and (device.type == "cuda" or cfg.arch != "tiny") else "eager"


def reuse_freed_memory() -> None:
    """Make glibc's malloc keep freed blocks for reuse instead of handing them back to the OS.

    glibc serves blocks over 32 MiB with mmap, so each such tensor (VGG's first layers at T*B = 160
    are 42 MiB) is faulted in and zeroed page by page on every step: a fresh 42 MiB product took
    16 ms instead of 3, and the CPU training step 1.4x longer (benchmarks/step.py). A no-op
    without glibc. Process-wide, like torch's thread count: memory stays with the process.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 1 << 30)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether convolutions run on channels_last weights (and so produce channels_last outputs): the config's
    choice, by default on CUDA only."""
    return cfg.memory_format == "channels_last" or (cfg.memory_format == "auto" and device.type == "cuda")


def prepared_model(cfg: TrainConfig, data: Dataset, device: torch.device) -> tuple[nn.Module, str]:
    """(the config's network for `data` on `device`, the ISNM kernel it runs): built, its ISNM kernel and
    SpikeConv2d backward set, in the config's memory layout."""
    model = build_model(cfg.arch, data.num_classes, data.in_channels, cfg.timesteps, cfg.neuron.tau,
                        cfg.neuron.threshold, cfg.neuron.reset, data.image_size, cfg.width).to(device)
    kernel = resolve_kernel(cfg, device)
    set_kernel(model, kernel)
    set_conv_backward(model, cfg.conv_backward)
    if channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    return model, kernel


def precision_of(cfg: TrainConfig, device: torch.device) -> torch.autocast:
    """The autocast the config trains and evaluates under: bf16 on the device trained on, the CPU too (slow
    there, but the same code path as on a GPU); neurons keep their potentials in float32 either way
    (isnm.neuron.wide)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, images: torch.Tensor, batch_size: int, precision) -> None:
    """Set every batch norm's running statistics to their average over `images` under the current weights.

    Training-mode forward passes with momentum None (nn.BatchNorm2d's cumulative average), in batches of
    the training's size and precision, so the statistics are those the network normalizes with while it
    trains. Uses no random numbers: a resumed run recalibrates to the same bits.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    try:
        for x in images.split(batch_size):
            with precision:
                model(x)
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision) -> tuple[float, Activity]:
    """(accuracy, what the network did: firing per layer, synaptic operations, energy) on images x with labels
    y, in the training's precision (`precision` is its autocast context), so what is measured is the network
    that trained."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    with ActivityMonitor(model) as activity:
        for images, labels in batches(x, y, EVAL_BATCH_SIZE):
            with precision:
                correct += (model(images).argmax(1) == labels).sum()
    return correct.item() / max(len(y), 1), activity


def rng_state(generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "data": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(config: dict, on_epoch: Callable[[dict, dict], None] | None = None,
          resume_state: dict | None = None, last_epoch: int | None = None) -> dict:
    """Train one ISNM network; returns the last epoch's metrics.

    `on_epoch(metrics, state)` runs after every epoch; `state` (model, optimizer, epoch, RNG states)
    is a copy that `resume_state` accepts, and resuming from it reproduces the uninterrupted run.
    `last_epoch` stops after that epoch, on the schedule of the config's `epochs` (a reproduction of a
    run's first epochs). Metrics include `data_fingerprint` (isnm.data.fingerprint).
    Raises ConfigError (bad config), DataError (data set missing) or TrainingDiverged.
    """
    cfg = parse_config(config)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, device, cfg.validation)
    data_fingerprint = fingerprint(data)
    model, kernel = prepared_model(cfg, data, device)
    if device.type == "cuda":  # an algorithm search that is faster on GPUs and means nothing on the CPU
        torch.backends.cudnn.benchmark = True
    else:
        reuse_freed_memory()
    autocast = precision_of(cfg, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    start = 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        restore_rng(resume_state["rng"], generator)
        start = resume_state["epoch"]
    loss_fn = nn.CrossEntropyLoss()
    steps_per_epoch = -(-len(data.train_y) // cfg.batch_size)  # train_batches keeps the last partial batch
    metrics: dict = {}
    for epoch in range(start + 1, min(cfg.epochs, last_epoch or cfg.epochs) + 1):
        began = time.perf_counter()
        alpha, beta = surrogate_at(cfg.surrogate, epoch - 1, cfg.epochs)
        set_surrogate(model, alpha, beta, cfg.surrogate.function)
        per_step = cfg.surrogate.schedule == "gradual" and cfg.surrogate.update == "step"
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        first_bad = torch.zeros((), dtype=torch.int64, device=device)  # step of the first non-finite loss
        bad_loss = torch.zeros((), dtype=torch.float64, device=device)
        for step, (x, y) in enumerate(train_batches(data, cfg.batch_size, generator), start=1):
            if per_step:
                alpha, beta = surrogate_at(cfg.surrogate, epoch - 1, cfg.epochs, step - 1, steps_per_epoch)
                set_surrogate(model, alpha, beta, cfg.surrogate.function)
            with autocast:
                logits = model(x)
                loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # Divergence is noted on the device and checked once an epoch: no host sync inside the step.
            newly_bad = ~torch.isfinite(loss.detach()) & (first_bad == 0)
            first_bad = torch.where(newly_bad, step, first_bad)
            bad_loss = torch.where(newly_bad, loss.detach().double(), bad_loss)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
        if first_bad.item():
            raise TrainingDiverged(epoch, first_bad.item(), bad_loss.item())
        n = len(data.train_y)
        if cfg.bn_recalibration:
            recalibrate_batch_norm(model, data.train_x[:cfg.bn_recalibration], cfg.batch_size, autocast)
        test_acc, activity = evaluate(model, data.test_x, data.test_y, autocast)
        val = {}
        if len(data.val_y):  # what a search may select on: the validation pass's accuracy and firing
            val_acc, val_activity = evaluate(model, data.val_x, data.val_y, autocast)
            val = {"val_acc": val_acc, "val_spike_rate": val_activity.spike_rate}
        # the loops that really ran: a compilation that failed falls back to eager, and says why
        ran = {"kernel": "eager", "kernel_fallback": kernel_fallback()} if kernel_fallback() else {"kernel": kernel}
        metrics = {"epoch": epoch, "train_loss": loss_sum.item() / n, "train_acc": correct.item() / n, **val,
                   "test_acc": test_acc, "beta": beta, "alpha": alpha,  # per step: the epoch's last step's
                   "epoch_seconds": time.perf_counter() - began, **activity.metrics(), **ran,
                   "data_fingerprint": data_fingerprint}
        if on_epoch is not None:
            state = {"model": copy.deepcopy(model.state_dict()),
                     "optimizer": copy.deepcopy(optimizer.state_dict()),
                     "epoch": epoch, "rng": rng_state(generator)}
            on_epoch(dict(metrics), state)
    return metrics


def value_of(text: str) -> Any:
    """A --set value: true/false, a number, a list, else the text itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def config_file(path: str) -> dict:
    """A training config from a YAML file (a study run's config.yaml artifact is one); raises ConfigError."""
    import yaml  # only this command reads YAML; the library takes plain dicts

    try:
        with open(path) as file:
            data = yaml.safe_load(file)
    except OSError as exc:
        raise ConfigError("", f"cannot read it: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError("", f"not YAML{where}: {getattr(exc, 'problem', None) or type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise ConfigError("", f"holds {type(data).__name__}, expected a mapping of config keys")
    parse_config(data)
    return data


def with_setting(config: dict, item: str) -> dict:
    """`config` with one command-line override KEY=VALUE (a dotted key; the value as `value_of` reads it)."""
    key, sep, text = item.partition("=")
    if not sep:
        raise ConfigError(item, "expected KEY=VALUE")
    return merged(config, nested({key: value_of(text)}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m isnm.train", description="Train one ISNM network.")
    parser.add_argument("--config", metavar="FILE.yaml", help="start from this config (e.g. a run's config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override on top of --config, dotted keys, e.g. --set surrogate.schedule=fixed")
    args = parser.parse_args(argv)
    try:
        config = config_file(args.config) if args.config else {}
    except ConfigError as exc:
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    try:
        for item in args.set:
            config = with_setting(config, item)
        cfg = parse_config(config)
    except ConfigError as exc:
        print(f"error: --set {exc}", file=sys.stderr)
        return 2
    print(f"training {cfg.arch} on {cfg.dataset}, T={cfg.timesteps}, {cfg.epochs} epochs, "
          f"surrogate {cfg.surrogate.schedule}, reset {cfg.neuron.reset}; config_hash {config_hash(to_dict(cfg))}")

    def progress(metrics: dict, state: dict) -> None:
        done = metrics["epoch"]
        bar = "#" * round(30 * done / cfg.epochs)
        print(f"\r[{bar:<30}] epoch {done}/{cfg.epochs}  loss {metrics['train_loss']:.4f}  "
              f"test_acc {metrics['test_acc']:.4f}  beta {metrics['beta']:.3f}  "
              f"{metrics['epoch_seconds']:.1f}s", end="" if done < cfg.epochs else "\n", flush=True)

    try:
        final = train(config, on_epoch=progress)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("final: " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in final.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
