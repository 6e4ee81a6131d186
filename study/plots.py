"""A report's figures (PNG): each metric per epoch for every line of the table, and the surrogate's schedule."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from study.cells import Cell
from study.config import Table
from study.tables import METRIC_HEADERS, label, scaled

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
        for cell in cells:
            if not cell.run_ids:
                continue
            histories = [sorted(client.get_metric_history(r, metric), key=lambda m: m.step) for r in cell.run_ids]
            series = [[scaled(m.value, metric) for m in history] for history in histories]
            length = min(len(s) for s in series)
            data = np.array([s[:length] for s in series])
            epochs = np.arange(1, length + 1)
            mean = data.mean(0)
            line, = ax.plot(epochs, mean, label=" ".join(label(table, v) for v in cell.key))
            if len(series) > 1:
                std = data.std(0, ddof=1)
                ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel(METRIC_HEADERS[metric])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_schedule(client: MlflowClient, cells: list[Cell], path: Path) -> None:
    """The surrogate's beta and alpha per epoch, once per variant, as the runs logged them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    seen = set()
    for cell in cells:
        for source in cell.sources:
            if source.variant in seen:
                continue
            seen.add(source.variant)
            for ax, key in ((top, "beta"), (bottom, "alpha")):
                history = sorted(client.get_metric_history(source.run_id, key), key=lambda m: m.step)
                ax.plot([m.step for m in history], [m.value for m in history], marker=".", label=source.variant)
    top.set_ylabel("beta (eq. 7)")
    top.set_yscale("log")
    bottom.set_ylabel("alpha (eq. 8)")
    bottom.set_xlabel("epoch")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    top.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
