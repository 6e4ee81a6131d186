"""A report's figures (PNG): each metric per epoch for every line of the table, the surrogate's schedule, and
each spiking layer's firing rate."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from isnm import betas_text, metrics
from study.records import LAYER_RATE, METRICS, RunRecord, histories, history
from study.report.cells import Cell
from study.report.tables import scaled
from study.stats import mean_std, non_dominated
from study.design.config import Table

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


def plot_curves(client: MlflowClient, cells: list[Cell], table: Table, metrics: list[str], path: Path) -> None:
    """Each metric per epoch (one panel each) for every line of the table: mean over seeds, band of ± std."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(metrics), figsize=(7 * len(metrics), 4.2), squeeze=False)
    for metric, ax in zip(metrics, axes[0]):
        logged = histories(client, [r for cell in cells for r in cell.run_ids], metric)
        for cell in cells:
            if not cell.run_ids:
                continue
            series = [[scaled(m.value, metric) for m in logged[r]] for r in cell.run_ids]
            length = min(len(s) for s in series)
            data = np.array([s[:length] for s in series])
            epochs = np.arange(1, length + 1)
            mean = data.mean(0)
            line, = ax.plot(epochs, mean, label=table.values_label(table.keys, cell.key))
            if len(series) > 1:
                std = data.std(0, ddof=1)
                ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel(METRICS[metric].header)
        whole_epochs(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def whole_epochs(ax) -> None:
    """Epoch ticks on whole numbers only (matplotlib puts them at 1.25, 1.75 for a few epochs), the axis ending
    at the data's last epoch."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(x=0)


def layer_order(name: str) -> list:
    """A sort key putting spiking layers in network order: body.2 before body.10, branch before neuron."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def plot_firing(runs: list[RunRecord], cells: list[Cell], table: Table, path: Path) -> bool:
    """Each spiking layer's final firing rate, in network order, for every line of the table (mean over seeds,
    bars of ± std); False, and no figure, when the runs logged no per-layer rates (made before they were)."""
    columns = sorted({k for run in runs for k in run.metrics if k.startswith(LAYER_RATE)}, key=layer_order)
    if not columns:
        return False
    finals = pd.DataFrame([{"run_id": run.run_id, **run.metrics} for run in runs], columns=["run_id", *columns])
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [c.removeprefix(LAYER_RATE) for c in columns]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.45 * len(layers) + 3), 4.2))
    for cell in cells:
        rates = finals[finals["run_id"].isin(cell.run_ids)][columns] * 100
        if rates.empty:
            continue
        ax.errorbar(range(len(layers)), rates.mean(), yerr=rates.std(ddof=1) if len(rates) > 1 else None,
                    marker="o", capsize=3, label=table.values_label(table.keys, cell.key))
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=8)
    saved(fig, ax, "spiking layer (input to output)", "firing rate, final epoch (% of neurons per step)", path)
    return True


def plot_tradeoff(runs: list[RunRecord], cells: list[Cell], table: Table, path: Path) -> bool:
    """Each cell's final test accuracy against its energy per image (mean ± std over its seeds on both axes), the
    non-dominated cells (no other both as accurate and as cheap, and better in one) ringed and joined: the figure an
    SNN paper puts beside its table. False, and no figure, where the runs logged no energy."""
    by_id = {run.run_id: run.metrics for run in runs}
    placed = []
    for cell in cells:
        finals = [by_id[i] for i in cell.run_ids if metrics.ENERGY in by_id.get(i, {}) and metrics.TEST_ACC in by_id[i]]
        if finals:
            placed.append((table.values_label(table.keys, cell.key),
                           mean_std([100 * m[metrics.TEST_ACC] for m in finals]),
                           mean_std([m[metrics.ENERGY] for m in finals])))
    if not placed:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = non_dominated([(acc[0], -energy[0]) for _, acc, energy in placed])
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    for i, (label, (acc, acc_sd), (energy, energy_sd)) in enumerate(placed):
        ax.errorbar(energy, acc, xerr=None if math.isnan(energy_sd) else energy_sd,
                    yerr=None if math.isnan(acc_sd) else acc_sd, marker="o", capsize=3, label=label)
        if i in front:
            ax.plot(energy, acc, marker="o", markersize=14, fillstyle="none", color="black", linestyle="none")
    edge = sorted((placed[i][2][0], placed[i][1][0]) for i in front)
    ax.plot(*zip(*edge), color="black", linewidth=1, alpha=0.6, label="non-dominated (ringed)")
    saved(fig, ax, "energy per image (µJ), final epoch", "test accuracy (%), final epoch", path)
    return True


def saved(fig, ax, xlabel: str, ylabel: str, path: Path) -> None:
    """The report's look for a figure of points (axis labels, a light grid, a small legend), written to `path` and
    closed."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def schedule_label(surrogate: dict) -> str:
    """'fixed, beta 5' or 'gradual 0.5 to 5, loglinear, per epoch'."""
    if isinstance(surrogate["schedule"], dict):
        text = betas_text(surrogate["schedule"]["beta"])
        return f"given per epoch: {text if len(text) <= 60 else text[:57] + '...'}"
    if surrogate["schedule"] == "fixed":
        return f"fixed, beta {surrogate['beta']:g}"
    if surrogate["schedule"] == "learned":
        return f"learned per layer from {surrogate['beta_min']:g} (lr {surrogate.get('beta_lr', 0.01):g}): geometric mean"
    return (f"gradual {surrogate['beta_min']:g} to {surrogate['beta_max']:g}, {surrogate['shape']}, "
            f"per {surrogate['update']}")


def plot_schedule(client: MlflowClient, cells: list[Cell], configs: dict[str, dict], path: Path) -> None:
    """The surrogate's beta and alpha over training, once per distinct schedule (whatever the surrogate function):
    the curve each config's shape and update define (isnm.schedule, what the training computed), and the values
    the runs logged on it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from isnm import parse_config, surrogate_at

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    seen = set()
    lengths = {configs[s.config_hash]["epochs"] for c in cells for s in c.sources}
    for cell in cells:
        for source in cell.sources:
            config = configs[source.config_hash]
            cfg = parse_config(config)
            schedule = (epochs := config["epochs"], repr(sorted((k, v) for k, v in config["surrogate"].items()
                                                                 if k != "function")))
            if schedule in seen:
                continue
            seen.add(schedule)
            # x: epochs trained so far, 0 to `epochs`; epoch e trains over (e - 1, e], and its run logs the value it
            # ended with at step e
            per_step = cfg.surrogate.update == "step" and cfg.surrogate.schedule == "gradual"
            name = schedule_label(config["surrogate"]) + (f", {epochs} epochs" if len(lengths) > 1 else "")
            if cfg.surrogate.schedule == "learned":  # no curve to draw: what one run's layers learned, as logged
                for ax, key, start in zip((top, bottom), (metrics.BETA, metrics.ALPHA), surrogate_at(cfg.surrogate, 0,
                                                                                                    epochs)[::-1]):
                    logged = history(client, source.run_id, key)
                    ax.plot([0] + [m.step for m in logged], [start] + [m.value for m in logged], ".-", label=name)
                continue
            if per_step:
                steps = 100  # a smooth curve; the training's steps per epoch are as many as its batches
                x = np.arange(1, epochs * steps + 1) / steps
                curve = [surrogate_at(cfg.surrogate, i // steps, epochs, i % steps, steps) for i in range(len(x))]
            else:  # each epoch's value held through it
                x = np.arange(0, epochs + 1)
                curve = [surrogate_at(cfg.surrogate, min(e, epochs - 1), epochs) for e in x]
            for ax, key, values in ((top, metrics.BETA, [b for _, b in curve]),
                                    (bottom, metrics.ALPHA, [a for a, _ in curve])):
                line, = ax.plot(x, values, drawstyle="default" if per_step else "steps-post", label=name)
                logged = history(client, source.run_id, key)
                ax.plot([m.step for m in logged], [m.value for m in logged], ".", color=line.get_color())
    top.set_ylabel("beta (eq. 7)")
    top.set_yscale("log")
    bottom.set_ylabel("alpha (eq. 8)")
    bottom.set_xlabel("epochs trained (dots: the values the runs logged, at each epoch's end)")
    for ax in (top, bottom):
        whole_epochs(ax)
        ax.grid(alpha=0.3)
    top.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
