"""A study's table cells from its runs in MLflow: each planned trial's state, and the value of each finished one.

A cell is one line of a table (the values of its split, row and column keys); it holds the runs its
number comes from. Reads only through the MLflow client it is given.
"""
from __future__ import annotations

import enum
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import pandas as pd

from isnm import flat
from study.errors import StudyError
from study.records import every_run
from study.spec.config import MAXIMIZED, Study, Table
from study.spec.plan import Trial, plan_trials

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


AT_TIMESTEPS = re.compile(r"metrics\.test_acc_T([0-9]+)")  # a runs_frame column that study.evaluate fills


def metric_at(timesteps: int) -> str:
    """The metric study.evaluate logs: test_acc of a run's final weights run for `timesteps` time steps."""
    return f"test_acc_T{timesteps}"


class Status(enum.Enum):
    """A planned trial's state, from its runs in any invocation; the value is how the report counts it."""
    FINISHED = "finished"
    FAILED = "failed"
    RUNNING = "running"
    INTERRUPTED = "interrupted"  # a KILLED run: its driver was interrupted; the same command resumes it
    MISSING = "not run"


# MLflow run statuses in the order they decide a trial's state; a trial with runs of none of them FAILED
DECIDING = {"FINISHED": Status.FINISHED, "RUNNING": Status.RUNNING, "SCHEDULED": Status.RUNNING,
            "KILLED": Status.INTERRUPTED}


@dataclass(frozen=True)
class Source:
    """One run a cell's number comes from, and what it was made with."""
    run_id: str
    variant: str
    seed: int
    config_hash: str
    git_commit: str  # 7 hex digits, "+dirty" when trained from uncommitted changes
    torch: str
    device: str
    value: float


@dataclass
class Cell:
    key: tuple  # values of the table's keys (split, rows, columns)
    planned: int = 0
    sources: list[Source] = field(default_factory=list)  # one per finished seed
    at_timesteps: dict[int, list[float]] = field(default_factory=dict)  # T -> its finished seeds' metric_at(T)
    extras: dict[str, list[float]] = field(default_factory=dict)  # metric -> its finished seeds' final values

    @property
    def values(self) -> list[float]:
        return [s.value for s in self.sources]

    @property
    def run_ids(self) -> list[str]:
        return [s.run_id for s in self.sources]


def runs_frame(client: MlflowClient, exp_id: str) -> pd.DataFrame:
    """Every active run of the experiment, one row each, in the columns of `mlflow.search_runs` (run_id,
    status, start_time, ..., metrics.*, params.*, tags.*; missing metrics NaN, missing params and tags
    None), read through `client`: `mlflow.search_runs` reads the process-wide tracking URI instead."""
    runs = list(every_run(client, [exp_id]))
    data: dict[str, list] = {
        "run_id": [r.info.run_id for r in runs], "experiment_id": [r.info.experiment_id for r in runs],
        "status": [r.info.status for r in runs], "artifact_uri": [r.info.artifact_uri for r in runs],
        "start_time": [pd.to_datetime(r.info.start_time, unit="ms", utc=True) for r in runs],
        "end_time": [pd.to_datetime(r.info.end_time, unit="ms", utc=True) for r in runs]}
    for prefix, missing in (("metrics", math.nan), ("params", None), ("tags", None)):
        logged = [getattr(r.data, prefix) for r in runs]
        for key in dict.fromkeys(k for values in logged for k in values):
            data[f"{prefix}.{key}"] = [values.get(key, missing) for values in logged]
    return pd.DataFrame(data)


def key_value(trial: Trial, key: str) -> Any:
    return trial.variant if key == "variant" else flat(trial.config)[key]


def metric_value(client: MlflowClient, run: pd.Series, metric: str, stat: str, maximize: bool) -> float:
    """A run's final value of `metric`, or its best epoch's. The best epoch of test_acc is the one with the
    best val_acc (the earliest of ties): choosing it by test accuracy would report a number selected on
    the very data that measures it."""
    if stat == "final":
        return float(run[f"metrics.{metric}"])
    if metric != "test_acc":
        history = [m.value for m in client.get_metric_history(run["run_id"], metric)]
        return max(history) if maximize else min(history)
    val = sorted(client.get_metric_history(run["run_id"], "val_acc"), key=lambda m: m.step)
    if not val:
        raise StudyError(f"--stat best picks each run's epoch by val_acc, which run {run['run_id']} lacks (trained "
                         f"with validation: 0); use --stat final")
    chosen = max(val, key=lambda m: m.value).step  # max keeps the first of equal values
    test = {m.step: m.value for m in client.get_metric_history(run["run_id"], "test_acc")}
    return test[chosen]


def tag(run: pd.Series, key: str) -> str:
    value = run.get(f"tags.{key}")
    return "unknown" if value is None or pd.isna(value) else str(value)


def source_of(run: pd.Series, trial: Trial, value: float) -> Source:
    commit = tag(run, "git_commit")[:7] + ("+dirty" if tag(run, "git_dirty") == "true" else "")
    return Source(run["run_id"], trial.variant, trial.seed, trial.config_hash, commit, tag(run, "env.torch"),
                  tag(run, "env.device"), value)


def trial_status(runs: pd.DataFrame) -> tuple[Status, Optional[pd.Series]]:
    """A trial's state from its runs (any invocation), and the newest run of the status that decided it."""
    if runs.empty:
        return Status.MISSING, None
    for status, state in DECIDING.items():
        hits = runs[runs["status"] == status]
        if not hits.empty:
            return state, hits.sort_values("start_time").iloc[-1]
    return Status.FAILED, None


def extra_metrics(table: Table) -> list[str]:
    """The final metrics a table's `extra` columns show: those named, and with energy the ANN's, its yardstick."""
    return table.extra + (["energy_ann"] if "energy" in table.extra else [])


def table_cells(client: MlflowClient, study: Study, children: pd.DataFrame, table: Table, metric: str,
                stat: str) -> tuple[list[Cell], Counter[Status]]:
    """The table's cells in plan order, each with its finished runs' values of `metric` (and of `metric_at` each
    T they were evaluated at, and the final `extra_metrics`), and how many of the planned trials are in each
    state."""
    cells: dict[tuple, Cell] = {}
    counts: Counter[Status] = Counter()
    maximize = metric in MAXIMIZED
    evaluated = {int(m[1]): m[0] for m in map(AT_TIMESTEPS.fullmatch, children.columns) if m}
    for trial in plan_trials(study):
        key = tuple(key_value(trial, k) for k in table.keys)
        cell = cells.setdefault(key, Cell(key))
        cell.planned += 1
        runs = children[children["tags.config_hash"] == trial.config_hash] if not children.empty else children
        status, run = trial_status(runs)
        counts[status] += 1
        if status is not Status.FINISHED:
            continue
        if not pd.isna(run.get(f"metrics.{metric}")):
            cell.sources.append(source_of(run, trial, metric_value(client, run, metric, stat, maximize)))
        for name in extra_metrics(table):
            if not pd.isna(run.get(f"metrics.{name}")):
                cell.extras.setdefault(name, []).append(float(run[f"metrics.{name}"]))
        for timesteps, column in evaluated.items():
            if not pd.isna(run[column]):
                cell.at_timesteps.setdefault(timesteps, []).append(float(run[column]))
    return list(cells.values()), counts
