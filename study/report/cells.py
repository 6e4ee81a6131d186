"""A study's table cells from its runs in MLflow: each planned trial's state, and the value of each finished one.

A cell is one line of a table (the values of its split, row and column keys); it holds the runs its
number comes from. Reads only through the MLflow client it is given.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from isnm import metrics
from study.errors import StudyError
from study.records import AT_TIMESTEPS, METRICS, RunRecord, Status, Tag, histories, newest_finished, trial_status
from study.design.config import Table
from study.design.plan import Trial, key_value, pairing_of

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

@dataclass(frozen=True)
class Source:
    """One run a cell's number comes from, and what it was made with."""
    run_id: str
    variant: str
    seed: int
    config_hash: str
    git_commit: str  # 7 hex digits, "+dirty" when trained from uncommitted changes (records.code_label)
    torch: str
    device: str
    value: float
    pairing: tuple = ()  # what must agree for two runs of one seed to be a matched pair (`pairing_of`)


@dataclass
class Cell:
    key: tuple  # values of the table's keys (split, rows, columns)
    planned: int = 0
    sources: list[Source] = field(default_factory=list)  # one per finished seed
    at_timesteps: dict[int, list[float]] = field(default_factory=dict)  # T -> its finished seeds' test_acc at T
    extras: dict[str, list[float]] = field(default_factory=dict)  # metric -> its finished seeds' final values
    constants: dict[str, Any] = field(default_factory=dict)  # the table's constants: key -> the study's one value

    @property
    def values(self) -> list[float]:
        return [s.value for s in self.sources]

    @property
    def run_ids(self) -> list[str]:
        return [s.run_id for s in self.sources]


def needed_histories(metric: str, stat: str) -> list[str]:
    """The metrics whose histories `metric_value` reads: none for the final value."""
    if stat == "final":
        return []
    return [metrics.VAL_ACC, metrics.TEST_ACC] if metric == metrics.TEST_ACC else [metric]


def metric_value(logged: dict[str, dict[str, list]], run: RunRecord, metric: str, stat: str) -> float:
    """A run's final value of `metric`, or its best epoch's, from the histories `logged` ({metric: {run id:
    history}}, those `needed_histories` names). The best epoch of test_acc is the one with the best val_acc (the
    earliest of ties): choosing it by test accuracy would report a number selected on the very data that measures
    it."""
    if stat == "final":
        return run.metrics[metric]
    if metric != metrics.TEST_ACC:
        history = [m.value for m in logged[metric][run.run_id]]
        return max(history) if METRICS[metric].maximize else min(history)
    val = logged[metrics.VAL_ACC][run.run_id]
    if not val:
        raise StudyError(f"--stat best picks each run's epoch by {metrics.VAL_ACC}, which run {run.run_id} lacks "
                         f"(trained with validation: 0); use --stat final")
    chosen = max(val, key=lambda m: m.value).step  # max keeps the first of equal values
    test = {m.step: m.value for m in logged[metrics.TEST_ACC][run.run_id]}
    return test[chosen]


def source_of(run: RunRecord, trial: Trial, value: float) -> Source:
    device = run.tag(Tag.ENVIRONMENT + "device")
    return Source(run.run_id, trial.variant, trial.seed, trial.config_hash, run.code,
                  run.tag(Tag.ENVIRONMENT + "torch"), device, value, pairing_of(trial.config, device))


def extra_metrics(table: Table) -> list[str]:
    """The final metrics a table's `extra` columns show: those named, and with energy the ANN's, its yardstick."""
    return table.extra + ([metrics.ENERGY_ANN] if metrics.ENERGY in table.extra else [])


def table_cells(client: MlflowClient, trials: list[Trial], children: list[RunRecord], table: Table, metric: str,
                stat: str) -> tuple[list[Cell], Counter[Status]]:
    """The table's cells in plan order, each with its finished runs' values of `metric` (and of test_acc at each
    T they were evaluated at, and the final `extra_metrics`), and how many of the planned `trials` are in each
    state. `children` are the study's trial runs."""
    cells: dict[tuple, Cell] = {}
    counts: Counter[Status] = Counter()
    by_hash: dict[str, list[RunRecord]] = {}
    for run in children:
        by_hash.setdefault(run.config_hash, []).append(run)
    finished = newest_finished(children)
    wanted = [finished[t.config_hash].run_id for t in trials if t.config_hash in finished]
    logged = {key: histories(client, wanted, key) for key in needed_histories(metric, stat)}
    for trial in trials:
        key = tuple(key_value(trial, k) for k in table.keys)
        cell = cells.setdefault(key, Cell(key, constants={k: key_value(trial, k) for k in table.constants}))
        cell.planned += 1
        run = finished.get(trial.config_hash)
        status = trial_status(by_hash.get(trial.config_hash, []), run)
        counts[status] += 1
        if run is None:
            continue
        if metric in run.metrics:
            cell.sources.append(source_of(run, trial, metric_value(logged, run, metric, stat)))
        for name in extra_metrics(table):
            if name in run.metrics:
                cell.extras.setdefault(name, []).append(run.metrics[name])
        for name, value in run.metrics.items():
            at = AT_TIMESTEPS.fullmatch(name)
            if at:
                cell.at_timesteps.setdefault(int(at[1]), []).append(value)
    return list(cells.values()), counts
