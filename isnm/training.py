"""One training run of an ISNM network: `train(config, on_epoch, resume_state) -> final metrics`, in its parts:
the set-up (`set_up`), a resume (`resume`, `state_of`), an epoch (`train_epoch`, of `train_step`s) and what is
measured after it (`measured`, of `evaluate`)."""
from __future__ import annotations

import copy
import math
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from isnm.activity import Activity, ActivityMonitor
from isnm.config import TrainConfig, parse_config
from isnm.data import Dataset, batches, fingerprint, load_dataset, train_batches
from isnm.kernels import CompileTimer
from isnm.metrics import (ALPHA, BETA, DATA_FINGERPRINT, EPOCH, EPOCH_SECONDS, KERNEL, KERNEL_FALLBACK, TEST_ACC,
                          TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_SPIKE_RATE, VAL_SYNOPS, VAL_ENERGY, SYNOPS, ENERGY)
from isnm.metrics import LAYER_BETA
from isnm.plugins import check_sources
from isnm.neuron import kernel_fallback, learn_beta, learned_betas, set_surrogate
from isnm.runtime import precision_of, prepared_model, resolve_device, reuse_freed_memory
from isnm.schedule import alpha_for, surrogate_at

EVAL_BATCH_SIZE = 1000


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, loss: float):
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(f"training diverged: loss {loss} at epoch {epoch}, step {step}")


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


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               loss_fn: nn.Module, precision: AbstractContextManager) -> tuple[torch.Tensor, torch.Tensor]:
    """(the batch's loss, its logits), both detached, of one optimizer step on images x with labels y under
    `precision` (an autocast, `precision_of`). The step `train` takes and the benchmarks time."""
    with precision:
        logits = model(x)
        loss = loss_fn(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()


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


@dataclass
class Training:
    """What a run trains with, made once by `set_up`: the parsed config, the data on its device, the model, its
    optimizer and the data order's generator. `learned`: the surrogate's betas are parameters."""
    cfg: TrainConfig
    device: torch.device
    data: Dataset
    data_fingerprint: str
    model: nn.Module
    kernel: str
    precision: AbstractContextManager
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    learned: bool


def set_up(config: dict) -> Training:
    """The run `config` asks for, at epoch 0. Raises ConfigError (bad config), DataError (data set missing) or
    PluginError (your network or data set: not found, not what it must be, or not the code the trial was planned
    with)."""
    cfg = parse_config(config)
    check_sources(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, device, cfg.validation, cfg.dataset_args)
    model, kernel = prepared_model(cfg, data, device)
    if device.type == "cuda":  # an algorithm search that is faster on GPUs and means nothing on the CPU
        torch.backends.cudnn.benchmark = True
    else:
        reuse_freed_memory()
    learned = cfg.surrogate.schedule == "learned"
    betas = learn_beta(model, cfg.surrogate.beta_min, cfg.surrogate.alpha, cfg.surrogate.function) if learned else []
    weights = [p for p in model.parameters() if all(p is not b for b in betas)]
    optimizer = torch.optim.Adam([{"params": weights},  # the learned betas: their own rate, no decay toward 0
                                  *([{"params": betas, "lr": cfg.surrogate.beta_lr, "weight_decay": 0.0}] * learned)],
                                 lr=cfg.lr, weight_decay=cfg.weight_decay)
    return Training(cfg, device, data, fingerprint(data), model, kernel, precision_of(cfg, device), optimizer,
                    torch.Generator(device=device).manual_seed(cfg.seed), learned)


def resume(run: Training, state: dict) -> int:
    """The epoch `state` (an `on_epoch` state) ended; `run` continues from it."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    restore_rng(state["rng"], run.generator)
    return state["epoch"]


def state_of(run: Training, epoch: int) -> dict:
    """A copy of what `resume` needs to continue `run` after `epoch`."""
    return {"model": copy.deepcopy(run.model.state_dict()), "optimizer": copy.deepcopy(run.optimizer.state_dict()),
            "epoch": epoch, "rng": rng_state(run.generator)}


def train_epoch(run: Training, epoch: int) -> tuple[float, float, float, float]:
    """(mean training loss, training accuracy, the surrogate's alpha and beta as the epoch ends) of one epoch of
    `run`, numbered from 1. Raises TrainingDiverged."""
    cfg, device, data = run.cfg, run.device, run.data
    steps_per_epoch = -(-len(data.train_y) // cfg.batch_size)  # train_batches keeps the last partial batch
    alpha, beta = surrogate_at(cfg.surrogate, epoch - 1, cfg.epochs)
    set_surrogate(run.model, alpha, beta, cfg.surrogate.function)
    per_step = cfg.surrogate.schedule == "gradual" and cfg.surrogate.update == "step"
    run.model.train()
    loss_fn = nn.CrossEntropyLoss()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    first_bad = torch.zeros((), dtype=torch.int64, device=device)  # step of the first non-finite loss
    bad_loss = torch.zeros((), dtype=torch.float64, device=device)
    for step, (x, y) in enumerate(train_batches(data, cfg.batch_size, run.generator), start=1):
        if per_step:
            alpha, beta = surrogate_at(cfg.surrogate, epoch - 1, cfg.epochs, step - 1, steps_per_epoch)
            set_surrogate(run.model, alpha, beta, cfg.surrogate.function)
        loss, logits = train_step(run.model, run.optimizer, x, y, loss_fn, run.precision)
        # Divergence is noted on the device and checked once an epoch: no host sync inside the step.
        newly_bad = ~torch.isfinite(loss) & (first_bad == 0)
        first_bad = torch.where(newly_bad, step, first_bad)
        bad_loss = torch.where(newly_bad, loss.double(), bad_loss)
        loss_sum += loss * len(y)
        correct += (logits.argmax(1) == y).sum()
    if first_bad.item():
        raise TrainingDiverged(epoch, first_bad.item(), bad_loss.item())
    n = len(data.train_y)
    return loss_sum.item() / n, correct.item() / n, alpha, beta


def measured(run: Training, alpha: float, beta: float) -> dict:
    """What the network does after an epoch that ended at the surrogate's (alpha, beta): the test pass's accuracy
    and activity, the validation pass's accuracy and firing where the data has one, the kernel that really ran,
    and the learned betas' (alpha, beta) in place of the given ones where the betas are learned."""
    cfg, data = run.cfg, run.data
    if cfg.bn_recalibration:
        recalibrate_batch_norm(run.model, data.train_x[:cfg.bn_recalibration], cfg.batch_size, run.precision)
    test_acc, activity = evaluate(run.model, data.test_x, data.test_y, run.precision)
    val = {}
    if len(data.val_y):  # what a search may select on: the validation pass's accuracy and firing
        val_acc, val_activity = evaluate(run.model, data.val_x, data.val_y, run.precision)
        measured_val = val_activity.metrics()
        val = {VAL_ACC: val_acc, VAL_SPIKE_RATE: val_activity.spike_rate, VAL_SYNOPS: measured_val[SYNOPS],
               VAL_ENERGY: measured_val[ENERGY]}
    # the loops that really ran: a compilation that failed falls back to eager, and says why
    ran = {KERNEL: "eager", KERNEL_FALLBACK: kernel_fallback()} if kernel_fallback() else {KERNEL: run.kernel}
    if run.learned:  # the layers' betas as they end the epoch, and their geometric mean as the study's beta
        layers = learned_betas(run.model)
        beta = math.exp(sum(math.log(b) for b in layers.values()) / len(layers))
        alpha = alpha_for(beta, cfg.surrogate.alpha)
        val.update({LAYER_BETA + name: b for name, b in layers.items()})  # reported beside val_acc, per epoch
    return {**val, TEST_ACC: test_acc, BETA: beta, ALPHA: alpha,  # per step: the epoch's last step's
            **activity.metrics(), **ran, DATA_FINGERPRINT: run.data_fingerprint}


def train(config: dict, on_epoch: Callable[[dict, dict], None] | None = None,
          resume_state: dict | None = None, last_epoch: int | None = None) -> dict:
    """Train one ISNM network; returns the last epoch's metrics (their names: isnm.metrics).

    `on_epoch(metrics, state)` runs after every epoch; `state` (model, optimizer, epoch, RNG states)
    is a copy that `resume_state` accepts, and resuming from it reproduces the uninterrupted run.
    `last_epoch` stops after that epoch, on the schedule of the config's `epochs` (a reproduction of a
    run's first epochs).
    Raises ConfigError (bad config), DataError (data set missing) or TrainingDiverged.
    """
    run = set_up(config)
    start = resume(run, resume_state) if resume_state is not None else 0
    compile_timer = CompileTimer(run.cfg.arch, run.cfg.timesteps, run.kernel)
    metrics: dict = {}
    for epoch in range(start + 1, min(run.cfg.epochs, last_epoch or run.cfg.epochs) + 1):
        began = time.perf_counter()
        loss, accuracy, alpha, beta = train_epoch(run, epoch)
        after = measured(run, alpha, beta)
        metrics = {EPOCH: epoch, TRAIN_LOSS: loss, TRAIN_ACC: accuracy, **after,
                   EPOCH_SECONDS: time.perf_counter() - began}
        compile_timer.epoch_ended(metrics[EPOCH_SECONDS], metrics[KERNEL])
        if on_epoch is not None:
            on_epoch(dict(metrics), state_of(run, epoch))
    return metrics
