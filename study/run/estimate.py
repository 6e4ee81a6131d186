"""`python -m study.run FILE --dry-run --estimate`: what a study will cost, before it runs.

Trials whose epochs cost the same share a *setting*: the config keys that set an epoch's work (COST_KEYS).
A setting's seconds per epoch come from the finished runs of that setting in the tracking store (their
logged `epoch_seconds`) when there are any, else from timing training steps and an evaluation pass here, at
the trial's thread count. A trial then costs its epochs times that, plus its start (loading the data,
building the network); the study's wall-clock time is its trials placed in plan order on as many slots as
the resources allow, plus starting Ray and its workers (each imports torch once, then trains trial after trial),
plus compiling where trials run the compiled kernels: a worker compiles an architecture's kernels at a T the first
time one of its trials runs them, for as long as this machine's own compiles took (recorded in its Inductor cache,
on an empty cache or a filled one), or where it has none, the figures measured on the project's CPU (isnm.kernels).
Nothing is compiled for the estimate itself: a compiled setting's steps are timed eager and scaled by the
measured ratio of a compiled epoch to an eager one.
"""
from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Hashable, Mapping, Optional, Sequence

from isnm import (HASHED_WHEN_SET, compile_seconds, compile_seconds_here, compiled_here, device_type_of, figures,
                  kernel_for, measured_source, metrics, parse_config)
from study.records import RunStatus, history
from study.errors import plural
from study.markdown import markdown_table
from study.design.config import Study
from study.design.plan import Trial

COST_KEYS = ("dataset", "arch", "width", "timesteps", "batch_size", "precision", "device", "kernel", "validation",
             "bn_recalibration", "memory_format", "conv_backward")
TIMED_STEPS = 5  # after WARMUP_STEPS: the median of these is a step's time
WARMUP_STEPS = 2
# Starting Ray and the Tune run before the first trial: measured 8 to 12 s for a local Ray on this 2-core
# machine (`time python -c "import ray; ray.init()"` and the study's own start, docs/running.md, "Cost estimate before launch")
RAY_START_S = 10.0
CIFAR_SIZES = {"cifar10": (50_000, 10_000, 10), "cifar100": (50_000, 10_000, 100)}  # train, test, classes


@dataclass(frozen=True)
class EpochCost:
    seconds: float  # one epoch: training steps, batch-norm recalibration, test and validation passes
    start: float  # a trial's start before its first epoch
    source: str  # where the figures come from


def setting_of(config: dict) -> tuple:
    return tuple(config[k] for k in COST_KEYS)


def setting_label(config: dict) -> str:
    width = f" x{config['width']:g}" if config["width"] != 1 else ""
    return (f"{config['arch']}{width} {config['dataset']} T={config['timesteps']} b={config['batch_size']} "
            f"{config['precision']} {config['device']}")


def from_store(client, config: dict) -> Optional[EpochCost]:
    """Seconds per epoch of the finished runs of this setting (the median over runs of each run's mean), None if
    there are none; cached copies are left out (their epochs ran elsewhere, once)."""
    from study.records import Kind, Tag, read_runs

    experiments = [e.experiment_id for e in client.search_experiments()]
    means = []
    for run in read_runs(client, experiments, Kind.TRIAL, RunStatus.FINISHED):
        # a key added after the run was made is absent from its params: it ran at that key's old default
        params = {**{k: str(v) for k, v in HASHED_WHEN_SET.items()}, **run.params}
        if Tag.CACHED_FROM not in run.tags and all(params.get(k) == str(config[k]) for k in COST_KEYS):
            logged = history(client, run.run_id, metrics.EPOCH_SECONDS)
            if logged:  # a first epoch carries a worker's one-off costs (compiling): counted apart, where it is known
                means.append(statistics.mean(m.value for m in logged[1:] or logged))
    if not means:
        return None
    return EpochCost(statistics.median(means), setup(config)[2], f"{len(means)} finished runs")


def worker_start_seconds() -> float:
    """Seconds a fresh Python process takes to import what a trial imports: each Ray worker does it once (Tune
    reuses a worker for the next trial, study.execute)."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import isnm.training, study.run.worker"], check=True, timeout=300,
                   capture_output=True)
    return time.perf_counter() - began


def setup(config: dict) -> tuple:
    """(data set, network, seconds they took): what a trial does before its first epoch. CIFAR that is not
    here yet is stood in for by random images of its shape, which is all a timing needs."""
    import torch

    from isnm import DataError, Dataset, load_dataset, prepared_model, resolve_device

    cfg = parse_config(config)
    device = resolve_device(cfg.device)
    began = time.perf_counter()
    try:
        data = load_dataset(cfg.dataset, cfg.data_dir, False, device, cfg.validation, cfg.dataset_args)
    except DataError:
        train, test, classes = CIFAR_SIZES[cfg.dataset]
        n_val = round(train * cfg.validation)
        x = torch.randn(train - n_val, 3, 32, 32, device=device)
        y = torch.randint(0, classes, (train - n_val,), device=device)
        data = Dataset(x, y, x[:n_val], y[:n_val], x[:test], y[:test], classes, augment=False)
    model, _ = prepared_model(cfg, data, device)
    return data, model, time.perf_counter() - began


def timed_here(config: dict, threads: float, gpus: float) -> EpochCost:
    """Seconds per epoch of this setting from a few training steps and an evaluation pass timed here, on the
    trial's thread count."""
    import torch

    from isnm import EVAL_BATCH_SIZE, evaluate, precision_of, train_step

    cfg = parse_config(config)
    compiled = kernel_for(cfg, device_type_of(cfg, gpus)) == "compiled"
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        data, model, start = setup({**config, "kernel": "eager"})
        device = data.train_x.device
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        autocast, loss_fn = precision_of(cfg, device), torch.nn.CrossEntropyLoss()
        x, y = data.train_x[:cfg.batch_size], data.train_y[:cfg.batch_size]
        times = []
        for _ in range(WARMUP_STEPS + TIMED_STEPS):
            began = time.perf_counter()
            train_step(model, optimizer, x, y, loss_fn, autocast)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
        n = min(EVAL_BATCH_SIZE, len(data.test_y))
        began = time.perf_counter()
        evaluate(model, data.test_x[:n], data.test_y[:n], autocast)
        per_image = (time.perf_counter() - began) / n
    finally:
        torch.set_num_threads(previous)
    steps = math.ceil(len(data.train_y) / cfg.batch_size)
    evaluated = len(data.test_y) + len(data.val_y) + min(cfg.bn_recalibration, len(data.train_y))
    seconds = steps * statistics.median(times[WARMUP_STEPS:]) + evaluated * per_image
    if not compiled:
        return EpochCost(seconds, start, "timed here")
    f = figures(cfg.arch)
    return EpochCost(seconds * f.compiled / f.eager, start, f"timed here eager, x {f.compiled / f.eager:.2f} compiled")


def slots(study: Study, max_concurrent: Optional[int], address: Optional[str]) -> tuple[int, str]:
    """(trials that run at once, what decides it): the cluster's (or this machine's) CPUs and GPUs over each
    trial's resources, capped by max_concurrent."""
    if address:
        import ray

        from study.run.cluster import cluster_ready, start_ray

        start_ray(address)
        cluster_ready(address, study.spec.resources)  # a token refused, too few GPUs: one line each
        try:
            total = ray.cluster_resources()
        finally:
            ray.shutdown()
        cpus, gpus, where = total.get("CPU", 0), total.get("GPU", 0), f"the cluster at {address}"
    else:
        import torch

        cpus, gpus, where = os.cpu_count() or 1, torch.cuda.device_count(), "this machine"
    resources = study.spec.resources
    cap = max_concurrent or study.spec.max_concurrent
    return (slots_of(study, cpus, gpus, max_concurrent),
            f"{where}: {cpus:g} CPUs, {gpus:g} GPUs; {resources.cpu:g} CPU and {resources.gpu:g} GPU per trial"
            + (f", at most {cap} at once" if cap else ""))


def slots_of(study: Study, cpus: float, gpus: float, max_concurrent: Optional[int]) -> int:
    """Trials of `study` that run at once on `cpus` and `gpus`: each trial's resources, capped by max_concurrent
    (else the study file's)."""
    resources = study.spec.resources
    fit = [math.floor(cpus / resources.cpu)] + ([math.floor(gpus / resources.gpu)] if resources.gpu else [])
    cap = max_concurrent or study.spec.max_concurrent
    return max(1, min(fit + ([cap] if cap else [])))


def placed(durations: Sequence[float], n_slots: int, compiles: Sequence[Optional[Hashable]] = (),
           compile_s: Optional[Mapping[Hashable, float]] = None) -> tuple[float, float]:
    """(seconds until the last trial ends, seconds spent compiling) when each trial starts, in order, on the first
    slot to come free, and a slot first compiles the kernels its trial runs (`compiles[i]`, a key of `compile_s`;
    None: none) where it has not compiled them before: a worker keeps its kernels from trial to trial."""
    free = [0.0] * n_slots
    kept: list[set] = [set() for _ in range(n_slots)]
    compiling = 0.0
    for i, seconds in enumerate(durations):
        slot = free.index(min(free))
        key = compiles[i] if i < len(compiles) else None
        if key is not None and key not in kept[slot]:
            kept[slot].add(key)
            free[slot] += compile_s[key]
            compiling += compile_s[key]
        free[slot] += seconds
    return max(free, default=0.0), compiling


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds / 3600:.1f} h"


def store_client(uri: str):
    """A client of the tracking store, or None where there is none yet (a sqlite file not made); a store that is
    there and cannot be read is one line (StudyError)."""
    from study.tracking.store import read_client, sqlite_path

    db = sqlite_path(uri)
    return None if db is not None and not db.is_file() else read_client(uri)


def estimate(study: Study, trials: list[Trial], client, cached: set[str], max_concurrent: Optional[int],
             address: Optional[str]) -> str:
    """The estimate's text: per setting, per trial, the compute, the wall-clock time. `client` reads the
    tracking store (None: there is none), `cached` holds the config hashes study.run will not train again."""
    n_slots, why = slots(study, max_concurrent, address)  # first: a cluster that refuses fails before timing
    threads = study.spec.resources.cpu
    costs: dict[tuple, EpochCost] = {}
    for trial in trials:
        key = setting_of(trial.config)
        if trial.config_hash not in cached and key not in costs:
            costs[key] = ((client and from_store(client, trial.config))
                          or timed_here(trial.config, threads, study.spec.resources.gpu))
    per_trial = {t.name: 0.0 if t.config_hash in cached else
                 costs[setting_of(t.config)].start + t.config["epochs"] * costs[setting_of(t.config)].seconds
                 for t in trials}
    settings = markdown_table(["setting", "trials", "s/epoch", "from"], [
        [setting_label(next(t.config for t in trials if setting_of(t.config) == key)),
         str(sum(setting_of(t.config) == key and t.config_hash not in cached for t in trials)),
         f"{cost.seconds:.2f}", cost.source] for key, cost in costs.items()])
    rows = [[t.name, str(t.config["epochs"]), "cached" if t.config_hash in cached else duration(per_trial[t.name])]
            for t in trials]
    running = [t for t in trials if t.config_hash not in cached]
    resources = study.spec.resources
    keys = [compile_key(t.config, resources.gpu) for t in running]
    compile_s, compile_line = compile_costs(keys, address is None)
    wall, compiling = placed([per_trial[t.name] for t in running], n_slots, keys, compile_s)
    compute = sum(per_trial[t.name] for t in running) + compiling
    wall += RAY_START_S + worker_start_seconds() if running else 0.0
    return "\n\n".join([
        f"estimate for {study.name}: {plural(len(running), 'trial')} to run, {len(trials) - len(running)} cached",
        settings, markdown_table(["trial", "epochs", "estimated"], rows),
        f"compute: {duration(compute)} of trials{' and compiling' if compiling else ''} "
        f"({compute * resources.cpu / 3600:.2f} CPU-hours"
        + (f", {compute * resources.gpu / 3600:.2f} GPU-hours" if resources.gpu else "") + ")",
        f"wall clock: ~{duration(wall)}, {plural(n_slots, 'trial')} at a time on {why}"
        + (f"; {compile_line}, {duration(compiling)} in all" if compiling else "")])


def compile_key(config: dict, gpus: float) -> Optional[tuple[str, int]]:
    """(architecture, T) of the kernels a trial of `config` compiles before it trains (given `gpus` GPUs), None
    where it runs the eager loops: each T is a graph of its own."""
    cfg = parse_config(config)
    return (cfg.arch, cfg.timesteps) if kernel_for(cfg, device_type_of(cfg, gpus)) == "compiled" else None


def compile_costs(keys: Sequence[Optional[tuple[str, int]]], local: bool) -> tuple[dict, str]:
    """({(arch, T): seconds a worker compiles them}, what they are and where the figures come from): this machine's
    recorded compiles on the cache it has (`local`), else the figures of the project's CPU on an empty cache (a
    cluster's nodes, whose caches are theirs). Workers compile at once without slowing each other: two cold
    VGG-small compiles on 2 cores took 168 s each, as one alone does (a compile waits on its compiler processes
    more than it computes)."""
    seconds, parts = {}, []
    for arch, timesteps in dict.fromkeys(k for k in keys if k is not None):
        if local:
            cached = compiled_here(arch, timesteps)
            figure, source = compile_seconds_here(arch, timesteps, cached)
            state = "cached on this machine" if cached else "first run on this machine"
        else:
            figure, source, state = compile_seconds(arch, cached=False), measured_source(arch), "each node's first"
        seconds[arch, timesteps] = figure
        parts.append(f"{arch} T={timesteps} {duration(figure)} ({state}, {source})")
    return seconds, ("compiling, once per worker: " + ", ".join(parts)) if parts else ""
