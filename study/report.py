"""`python -m study.report`: the paper's tables, as Markdown, from the runs in MLflow.

It never runs anything: the study file comes from the latest parent run's artifacts, the values
from `mlflow.search_runs`. Each cell is the mean ± sample std over seeds of one planned cell.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import yaml

from study.cli import user_error_exit
from study.config import MAXIMIZED, METRICS, Study, StudyError, Table, flat, load_study, nested
from study.plan import SEARCH_VARIANT, Trial, plan_trials

HEADERS = {"variant": "Method", "dataset": "Dataset", "arch": "Architecture", "timesteps": "TimeStep"}
METRIC_HEADERS = {"test_acc": "Accuracy (%)", "val_acc": "Validation accuracy (%)", "train_acc": "Train accuracy (%)",
                  "spike_rate": "Spike rate (%)", "train_loss": "Train loss"}
PERCENT = ("test_acc", "val_acc", "train_acc", "spike_rate")
DASH = "—"
LEADERBOARD_SIZE = 10


# ---------------------------------------------------------------- statistics

def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; nan for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


def welch(a: list[float], b: list[float]) -> tuple[float, float, float, float]:
    """mean(b) - mean(a), its 95% confidence interval (low, high) and the two-sided p-value, by Welch's t."""
    from scipy import stats

    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    va, vb = sa ** 2 / len(a), sb ** 2 / len(b)
    diff, se = mb - ma, math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff, (1.0 if diff == 0 else 0.0)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf(0.975, df) * se
    return diff, diff - half, diff + half, float(2 * stats.t.sf(abs(diff / se), df))


# ---------------------------------------------------------------- runs

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

    @property
    def values(self) -> list[float]:
        return [s.value for s in self.sources]

    @property
    def run_ids(self) -> list[str]:
        return [s.run_id for s in self.sources]


@dataclass
class Counts:
    planned: int = 0
    finished: int = 0
    failed: int = 0
    running: int = 0
    interrupted: int = 0  # a KILLED run: its driver was interrupted; the same command resumes it
    missing: int = 0

    def line(self) -> str:
        interrupted = f"{self.interrupted} interrupted, " if self.interrupted else ""
        return (f"{self.planned} trials planned: {self.finished} finished, {self.failed} failed, "
                f"{self.running} running, {interrupted}{self.missing} not run.")


def key_value(trial: Trial, key: str) -> Any:
    return trial.variant if key == "variant" else flat(trial.config)[key]


def metric_value(client, run: pd.Series, metric: str, stat: str, maximize: bool) -> float:
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


def trial_status(runs: pd.DataFrame) -> tuple[str, Optional[pd.Series]]:
    """A trial's state from its runs (any invocation): the newest FINISHED run wins."""
    if runs.empty:
        return "missing", None
    states = {"FINISHED": "finished", "RUNNING": "running", "SCHEDULED": "running", "KILLED": "interrupted"}
    for status, state in states.items():
        hits = runs[runs["status"] == status]
        if not hits.empty:
            return state, hits.sort_values("start_time").iloc[-1]
    return "failed", None


def table_cells(client, study: Study, children: pd.DataFrame, table: Table, metric: str,
                stat: str) -> tuple[list[Cell], Counts]:
    cells: dict[tuple, Cell] = {}
    counts = Counts()
    maximize = metric in MAXIMIZED
    for trial in plan_trials(study):
        key = tuple(key_value(trial, k) for k in table.keys)
        cell = cells.setdefault(key, Cell(key))
        cell.planned += 1
        counts.planned += 1
        runs = children[children["tags.config_hash"] == trial.config_hash] if not children.empty else children
        status, run = trial_status(runs)
        setattr(counts, status, getattr(counts, status) + 1)
        if run is not None and status == "finished" and not pd.isna(run.get(f"metrics.{metric}")):
            cell.sources.append(source_of(run, trial, metric_value(client, run, metric, stat, maximize)))
    return list(cells.values()), counts


# ---------------------------------------------------------------- Markdown

def scaled(value: float, metric: str) -> float:
    return value * 100 if metric in PERCENT else value


def number(value: float, metric: str) -> str:
    return f"{value:.2f}" if metric in PERCENT else f"{value:.4f}"


def signed(value: float, metric: str) -> str:
    return f"{value:+.2f}" if metric in PERCENT else f"{value:+.4f}"


def cell_text(cell: Cell, metric: str) -> str:
    if not cell.values:
        return DASH
    mean, std = mean_std([scaled(v, metric) for v in cell.values])
    text = number(mean, metric) if math.isnan(std) else f"{number(mean, metric)} ± {number(std, metric)}"
    return text if len(cell.values) == cell.planned else f"{text} (n={len(cell.values)})"


def paper_figure(paper: dict, key: tuple) -> Optional[tuple[float, Optional[float]]]:
    """The published (mean, std) of a cell: `paper` nests by the cell's key and ends in a number or a
    [mean, std] pair (the paper prints 91.7 (± 0.31)); std is None where the paper gives none."""
    node: Any = {str(k): v for k, v in paper.items()}
    for part in key:
        if not isinstance(node, dict):
            return None
        node = {str(k): v for k, v in node.items()}.get(str(part))

    def is_number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if is_number(node):
        return float(node), None
    if isinstance(node, list) and len(node) == 2 and all(map(is_number, node)):
        return float(node[0]), float(node[1])
    return None


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def label(table: Table, value: Any) -> str:
    return table.labels.get(str(value), str(value))


def render_table(cells: list[Cell], table: Table, metric: str, split_value: tuple, paper: dict) -> str:
    """One Markdown table in the paper's shape: method?, rows (repeats blank), columns, value, paper, Δ."""
    offset = len(split_value)
    n_rows = len(table.row_keys)
    has_paper = any(paper_figure(paper, c.key) is not None for c in cells)
    header = (["Method"] if table.method else []) + [HEADERS.get(k, k) for k in table.row_keys + table.columns]
    header += [METRIC_HEADERS[metric]] + (["Paper (%)", "Δ"] if has_paper else [])
    means = {c.key: mean_std([scaled(v, metric) for v in c.values])[0] for c in cells if c.values}
    best = (max if metric in MAXIMIZED else min)(means.values()) if means else None
    lines, previous = [], None
    for cell in cells:
        own = cell.key[offset:]
        shown = [label(table, v) for v in own]
        if previous is not None:  # blank repeated leading row values, as the paper prints them
            for i in range(n_rows):
                if own[:i + 1] != previous[:i + 1]:
                    break
                shown[i] = ""
        previous = own
        value = cell_text(cell, metric)
        if best is not None and cell.key in means and means[cell.key] == best:
            value = f"**{value}**"
        line = ([table.method] if table.method else []) + shown + [value]
        if has_paper:
            figure = paper_figure(paper, cell.key)
            if figure is None:
                line += [DASH, DASH]
            else:
                mean, std = figure
                line.append(f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}")
                line.append(DASH if cell.key not in means else f"{means[cell.key] - mean:+.2f}")
        lines.append(line)
    return markdown_table(header, lines)


def render_welch(cells: list[Cell], metric: str) -> Optional[str]:
    """Each row against the first: difference, 95% CI (Welch) and p-value; None if too few seeds."""
    first = cells[0]
    if len(cells) < 2 or len(first.values) < 2:
        return None
    reference = [scaled(v, metric) for v in first.values]
    rows = []
    for cell in cells[1:]:
        values = [scaled(v, metric) for v in cell.values]
        if len(values) < 2:
            rows.append([str(cell.key[-1]), DASH, DASH, DASH])
            continue
        diff, low, high, p = welch(reference, values)
        rows.append([str(cell.key[-1]), signed(diff, metric), f"[{signed(low, metric)}, {signed(high, metric)}]",
                     "< 0.001" if p < 0.001 else f"{p:.3f}"])
    unit = " (pp)" if metric in PERCENT else ""
    header = ["Method", f"Δ vs {first.key[-1]}{unit}", f"95% CI{unit}", "p (Welch)"]
    return markdown_table(header, rows)


def setting_line(study: Study) -> str:
    """What our numbers were trained on, over all planned trials (a search: its base)."""
    configs = [t.config for t in plan_trials(study)] if study.spec.search is None else [study.base]

    def values(key: str) -> str:
        return "/".join(str(v) for v in dict.fromkeys(c[key] for c in configs))

    def networks() -> str:
        return "/".join(dict.fromkeys(c["arch"] + (f" (width {c['width']:g})" if c["width"] != 1 else "")
                                      for c in configs))

    profile = f" with profile `{study.profile}`" if study.profile else ""
    return (f"Ours{profile}: {values('dataset')}, {networks()}, T={values('timesteps')}, "
            f"{values('epochs')} epochs, seeds {', '.join(map(str, study.spec.seeds))}.")


# ---------------------------------------------------------------- provenance

def counted(values: list[str]) -> str:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return ", ".join(f"{value} ({n} runs)" if len(counts) > 1 else value for value, n in counts.items())


def provenance_line(cells: list[Cell], sidecar: str) -> str:
    """Where the numbers come from: commits, torch versions and devices of the runs used, flagged when mixed."""
    sources = [s for c in cells for s in c.sources]
    if not sources:
        return ""
    commits = {s.git_commit for s in sources}
    mixed = f"**cells come from {len(commits)} commits**: " if len(commits) > 1 else "commit "
    return (f"Provenance: {len(sources)} runs; {mixed}{counted([s.git_commit for s in sources])}; torch "
            f"{counted([s.torch for s in sources])}; {counted([s.device for s in sources])}. Each run, its id and "
            f"config hash: `{sidecar}` (re-train one with `python -m study.reproduce RUN_ID`).")


def write_sources(path: Path, table: Table, by_metric: dict[str, list[Cell]]) -> None:
    """`<study>.runs.csv`: one line per run the report used (cell, variant, seed, run id, config hash, commit,
    torch, device) and its value of each reported metric."""
    rows: dict[str, dict] = {}
    for metric, cells in by_metric.items():
        for cell in cells:
            for source in cell.sources:
                row = rows.setdefault(source.run_id, {
                    "cell": " / ".join(label(table, v) for v in cell.key), "variant": source.variant,
                    "seed": source.seed, "run_id": source.run_id, "config_hash": source.config_hash,
                    "git_commit": source.git_commit, "torch": source.torch, "device": source.device})
                row[metric] = source.value
    columns = ["cell", "variant", "seed", "run_id", "config_hash", "git_commit", "torch", "device", *by_metric]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows(rows.values())


# ---------------------------------------------------------------- plots

def plot_curves(client, cells: list[Cell], table: Table, metrics: list[str], path: Path) -> None:
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
            series = [[m.value for m in sorted(client.get_metric_history(r, metric), key=lambda m: m.step)]
                      for r in cell.run_ids]
            length = min(len(s) for s in series)
            data = np.array([s[:length] for s in series]) * (100 if metric in PERCENT else 1)
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


def plot_schedule(client, cells: list[Cell], path: Path) -> None:
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


# ---------------------------------------------------------------- search studies

def short(param: str) -> str:
    """A logged parameter for a table: numbers to 4 significant digits (the YAML keeps them whole)."""
    value = yaml.safe_load(param)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def leaderboard(client, children: pd.DataFrame, study: Study) -> str:
    """The top trials of a search, ranked by the search's own metric (val_acc, never test data), with their
    sampled values and final test accuracy, and the best as a `base:` overlay."""
    keys = list(study.spec.search.space)
    metric = study.spec.search.metric
    done = children[(children["status"] == "FINISHED") & (children["tags.variant"] == SEARCH_VARIANT)
                    & (children["tags.profile"].fillna("") == (study.profile or ""))]
    if done.empty or f"metrics.{metric}" not in done:
        return "No finished search trials yet."
    top = done.sort_values(f"metrics.{metric}", ascending=study.spec.search.mode == "min").head(LEADERBOARD_SIZE)
    header = ["#"] + keys + [METRIC_HEADERS[metric], METRIC_HEADERS["test_acc"], "epochs"]
    rows = []
    for i, (_, run) in enumerate(top.iterrows(), start=1):
        epochs = len(client.get_metric_history(run["run_id"], metric))  # fewer when the scheduler stopped it
        rows.append([str(i)] + [short(run[f"params.{k}"]) for k in keys]
                    + [number(scaled(run[f"metrics.{m}"], m), m) for m in (metric, "test_acc")] + [str(epochs)])
    best = top.iloc[0]
    overlay = {"base": nested({k: yaml.safe_load(str(best[f"params.{k}"])) for k in keys})}
    return (markdown_table(header, rows) + "\n\nBest configuration, ready to paste into a study file:\n\n"
            "```yaml\n" + yaml.safe_dump(overlay, sort_keys=False).strip() + "\n```")


# ---------------------------------------------------------------- the command

def study_names(client) -> list[str]:
    """Studies in the store: experiments with at least one parent run of study.run."""
    names = []
    for exp in client.search_experiments():
        if client.search_runs([exp.experiment_id], "tags.kind = 'study'", max_results=1):
            names.append(exp.name)
    return sorted(names)


def latest_study(client, exp_id: str, workdir: Path) -> tuple[Study, str]:
    """The study file (and profile) of the latest invocation, from its parent run's artifacts."""
    parents = client.search_runs([exp_id], "tags.kind = 'study'", order_by=["attributes.start_time DESC"],
                                 max_results=1)
    if not parents:
        raise StudyError(f"experiment {client.get_experiment(exp_id).name!r} has no run of study.run")
    parent = parents[0]
    files = [a.path for a in client.list_artifacts(parent.info.run_id) if a.path.endswith((".yaml", ".yml"))]
    if not files:
        raise StudyError(f"run {parent.info.run_id} holds no study file; was it made by study.run?")
    local = client.download_artifacts(parent.info.run_id, files[0], str(workdir))
    return load_study(local, parent.data.tags.get("profile") or None), parent.info.run_id


def report_study(client, uri: str, name: str, out: Path, metric: Optional[str], stat: str,
                 write_csv: bool) -> str:
    """The Markdown report of one study; writes it (and its plots, and the CSV when asked) into `out`."""
    import mlflow

    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise StudyError(f"no study {name!r} in {uri}; studies there: {', '.join(study_names(client)) or 'none'}")
    with tempfile.TemporaryDirectory() as tmp:
        study, parent_id = latest_study(client, exp.experiment_id, Path(tmp))
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs([exp.experiment_id])
    children = runs[runs["tags.mlflow.parentRunId"].notna()] if "tags.mlflow.parentRunId" in runs else runs.iloc[0:0]
    table = study.spec.table or Table()
    metrics = [metric] if metric else table.metrics
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# {study.name}", study.spec.description, setting_line(study)]
    plots: list[Path] = []
    if study.spec.search is not None:
        parts.append(f"## Leaderboard (ranked by final {study.spec.search.metric}; test accuracy of the final "
                     f"epoch beside it)\n\n" + leaderboard(client, children, study))
    else:
        level = "###" if len(metrics) > 1 else "##"  # with several metrics, a section each above the splits
        by_metric: dict[str, list[Cell]] = {}
        for metric in metrics:
            cells, counts = table_cells(client, study, children, table, metric, stat)
            by_metric[metric] = cells
            if len(metrics) > 1:
                parts.append(f"## {METRIC_HEADERS[metric]}")
            # the published figures are of the table's own (first) metric, never of another one asked for
            paper = table.paper if metric == table.metrics[0] else {}
            compared = any(paper_figure(paper, c.key) is not None for c in cells)
            splits = list(dict.fromkeys(c.key[:1] for c in cells)) if table.split else [()]
            for split_value in splits:
                mine = [c for c in cells if c.key[:len(split_value)] == split_value]
                title = f"{level} {label(table, split_value[0])}\n\n" if split_value else ""
                parts.append(title + render_table(mine, table, metric, split_value, paper))
            parts.append(f"{stat.capitalize()} {metric}, mean ± sample std over seeds; n = finished seeds where "
                         f"fewer than planned; best in bold" + ("; Δ = ours − paper." if compared else "."))
            if table.keys == ["variant"]:
                stats = render_welch(cells, metric)
                if stats:
                    parts.append("### Differences to the first row\n\n" + stats)
        parts.append(counts.line())
        sidecar = out / f"{study.name}.runs.csv"
        write_sources(sidecar, table, by_metric)
        parts.append(provenance_line(cells, sidecar.name))
        curves, schedule = out / f"{study.name}-curves.png", out / f"{study.name}-schedule.png"
        if any(c.run_ids for c in cells):
            plot_curves(client, cells, table, metrics, curves)
            plot_schedule(client, cells, schedule)
            plots = [curves, schedule]
            parts.append(f"![{', '.join(metrics)} per epoch]({curves.name})\n\n![surrogate schedule]({schedule.name})")
    text = "\n\n".join(p for p in parts if p) + "\n"
    (out / f"{study.name}.md").write_text(text)
    if write_csv:
        children.to_csv(out / f"{study.name}.csv", index=False)
    for plot in plots:
        client.log_artifact(parent_id, str(plot), "report")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.report", description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="*", metavar="STUDY", help="study names (default: every study in the store)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--out", default="reports", help="folder for <study>.md and plots (default reports/)")
    parser.add_argument("--metric", choices=METRICS, help="metric to tabulate (default: the study file's)")
    parser.add_argument("--stat", choices=("final", "best"), default="final",
                        help="each run's last-epoch value, or its best epoch (default final)")
    parser.add_argument("--format", choices=("md", "csv"), default="md", help="csv also writes every run's row")
    args = parser.parse_args(argv)

    import os
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from study.tracking import read_client, tracking_uri

    uri = tracking_uri(args.tracking_uri)
    try:
        client = read_client(uri)
        names = args.studies or study_names(client)
        if not names:
            raise StudyError(f"no studies in {uri}; run `python -m study.run FILE` first")
        for name in names:
            print(report_study(client, uri, name, Path(args.out), args.metric, args.stat, args.format == "csv"))
            print(f"(written to {Path(args.out) / (name + '.md')})\n")
    except Exception as exc:
        return user_error_exit(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
