"""`python -m study.report`: the paper's tables, as Markdown, from the runs in MLflow.

It never runs anything: the study file comes from the latest parent run's artifacts, the values
from the experiment's runs, read through the client of the store named. Each cell is the mean ±
sample std over seeds of one planned cell. The parts: `cells` (runs to cells), `stats`, `tables`
(their Markdown), `sources` (provenance), `plots`, `leaderboard` (search studies).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from isnm import metrics
from study.errors import StudyError, store_message, user_error_exit
from study.records import Artifact, Kind, METRICS, TABULATED, Tag, read_runs
from study.report.cells import Cell, table_cells
from study.report.front import front_section
from study.report.leaderboard import leaderboard
from study.report.plots import plot_curves, plot_firing, plot_schedule, plot_tradeoff
from study.report.population import population_report
from study.report.sources import provenance_line, runs_frame, write_sources
from study.report.tables import (counts_line, differences, not_learned_line, paper_figure, paper_setting, render_table,
                                 setting_line)
from study.design.adaptive import SeedRule
from study.design.config import Study
from study.design.strict_yaml import read_yaml
from study.design.plan import plan_trials
from study.tracking.recorded import Stored, stored, study_names

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


def table_note(found: Stored) -> str:
    """A note when the study file study.run was given has another `table:` now than the one stored with the runs,
    which the report uses; else ""."""
    given = found.parent.tags.get(Tag.STUDY_FILE)
    if not given or not Path(given).is_file():
        return ""
    try:
        edited = read_yaml(Path(given)).get("table") != found.data.get("table")
    except StudyError:  # a file being edited may not parse now: the stored one is what counts
        return ""
    if not edited:
        return ""
    return (f"note: the table: in {given} has changed since study.run stored it with these runs; this report uses "
            f"the stored one, and `python -m study.report {found.data.get('name')} --file {given}` the file's "
            f"(nothing trains again)")


def what_each_run_gives(stat: str, metric: str) -> str:
    """How a cell's number is taken from each run, for the caption: the epoch of --stat best is never chosen on the
    test data (study.report.cells.metric_value)."""
    if stat == "final":
        return f"Final {metric}"
    if metric == metrics.TEST_ACC:
        return f"{metric} at each run's epoch of best {metrics.VAL_ACC} (chosen on validation data, not on test)"
    return f"Best {metric} over each run's epochs"


@dataclass(frozen=True)
class Asked:
    """What the command line asks of every study's report."""
    metric: Optional[str] = None  # the one metric to tabulate; None: the study file's
    stat: str = "final"  # each run's last-epoch value, or "best"
    write_csv: bool = False  # also every run's row, as <study>.csv
    layout: Optional[Path] = None  # a study file whose `table:` replaces the stored one


def report_study(client: MlflowClient, uri: str, name: str, out: Path, asked: Asked = Asked()) -> tuple[str, str]:
    """(the Markdown report of one study, a note for the terminal or ""); writes the report (and its plots, and the
    CSV when asked) into `out`. Reads only through `client` (`uri` names the store in messages): nothing
    process-wide is set."""
    found = stored(client, name, uri, asked.layout)
    study, parent_id, note = found.study, found.parent.run_id, "" if asked.layout else table_note(found)
    children = [run for run in read_runs(client, [found.exp_id], Kind.TRIAL) if run.parent_id]
    trials, verdicts = plan_trials(study) if study.spec.search is None else [], None
    if study.adaptive is not None:  # the trials are those the study's results asked for, as its driver decided
        decision, trials = SeedRule(study, trials).decided(children)
        verdicts = {(v.comparison.reference, v.comparison.cell): v for v in decision.verdicts}
    head = [f"# {study.name}", study.spec.description, setting_line(study, trials)]
    search = study.spec.search
    if search is not None and search.algorithm == "pbt":
        parts, plots = population_section(client, found.exp_id, study, out)
    elif search is not None:
        parts, plots = [f"## Leaderboard (ranked by final {search.primary}; test accuracy of the final epoch beside "
                        f"it)\n\n" + leaderboard(client, children, study)], []
        if len(search.objectives) == 2:  # a trade-off: the front comes first
            front, plots = front_section(children, study, out)
            parts = front + parts
    else:
        parts, plots = table_sections(client, study, trials, children, verdicts, out, asked)
    text = "\n\n".join(p for p in head + parts if p) + "\n"
    (out / f"{study.name}.md").write_text(text)
    if asked.write_csv:
        runs_frame(children).to_csv(out / f"{study.name}.csv", index=False)
    try:
        for plot in plots:
            client.log_artifact(parent_id, str(plot), Artifact.REPORT)
    except Exception as exc:  # the report is written; attaching its plots to the parent run is a convenience
        print(f"warning: the plots were not attached to the study's parent run in MLflow ({type(exc).__name__}: "
              f"{store_message(exc)}); the report's files are in {out}", file=sys.stderr)
    return text, note


def population_section(client: MlflowClient, exp_id: str, study: Study, out: Path) -> tuple[list[str], list[Path]]:
    """A PBT study's report: its population, and the plot of the schedules its members trained with."""
    schedule = out / f"{study.name}-schedule.png"
    text, drawn = population_report(client, exp_id, study, schedule)
    return (["## Population (its members' final weights, each by the schedule it trained with)\n\n" + text],
            [schedule] if drawn else [])


def table_sections(client: MlflowClient, study: Study, trials: list, children: list, verdicts: Optional[dict],
                   out: Path, asked: Asked) -> tuple[list[str], list[Path]]:
    """A study of planned trials: its table per metric (and per split), the differences it makes, the counts, the
    provenance (and its sidecar file), the plots."""
    table = study.table
    shown = [asked.metric] if asked.metric else table.metrics
    level = "###" if len(shown) > 1 else "##"  # with several metrics, a section each above the splits
    parts: list[str] = []
    by_metric: dict[str, list[Cell]] = {}
    for metric in shown:
        cells, counts = table_cells(client, trials, children, table, metric, asked.stat)
        by_metric[metric] = cells
        if len(shown) > 1:
            parts.append(f"## {METRICS[metric].header}")
        # the published figures are of the table's own (first) metric, never of another one asked for
        paper = table.paper if metric == table.metrics[0] else {}
        compared = any(paper_figure(paper, c.key) is not None for c in cells)
        splits = list(dict.fromkeys(c.key[:1] for c in cells)) if table.split else [()]
        found = []
        for split_value in splits:
            mine = [c for c in cells if c.key[:len(split_value)] == split_value]
            title = f"{level} {table.label(split_value[0])}\n\n" if split_value else ""
            parts.append(title + render_table(mine, table, metric, split_value, paper, verdicts is not None,
                                              paper_setting(study)))
            where = f" ({table.label(split_value[0])})" if split_value else ""
            for heading, text in differences(mine, table, metric, split_value,  # the seeds went by the first metric
                                             verdicts if metric == table.metrics[0] else None):
                found.append(f"### {heading}{where}\n\n{text}")
        seeds = ("n = seeds, as many as the cell's comparisons needed" if verdicts is not None else
                 "n = finished seeds where fewer than planned")
        elsewhere = paper_setting(study)
        parts.append(f"{what_each_run_gives(asked.stat, metric)}, mean ± sample std over seeds; {seeds}; best in bold"
                     + ("." if not compared else f"; the paper's figures are of {elsewhere}, not ours, so no Δ is drawn."
                        if elsewhere else "; Δ = ours − paper."))
        stalled = not_learned_line(children, cells, table)
        if stalled and metric == table.metrics[0]:
            parts.append(stalled)
        parts += found
    parts.append(counts_line(counts))
    sidecar = out / f"{study.name}.runs.csv"
    write_sources(sidecar, table, by_metric)
    parts.append(provenance_line(by_metric, sidecar.name))
    drawn, plots = plotted(client, study, trials, children, cells, shown, out)
    return parts + drawn, plots


def plotted(client: MlflowClient, study: Study, trials: list, children: list, cells: list[Cell], shown: list[str],
            out: Path) -> tuple[list[str], list[Path]]:
    """(the report's image lines, the plot files drawn): the metrics' curves, the surrogate's schedule and, where
    the runs logged them, the firing rate per layer and accuracy against energy; none where no cell has a run."""
    if not any(c.run_ids for c in cells):
        return [], []
    curves, schedule = out / f"{study.name}-curves.png", out / f"{study.name}-schedule.png"
    firing = out / f"{study.name}-firing.png"
    plot_curves(client, cells, study.table, shown, curves)
    plot_schedule(client, cells, {t.config_hash: t.config for t in trials}, schedule)
    lines, plots = [f"![{', '.join(shown)} per epoch]({curves.name})\n\n![surrogate schedule]({schedule.name})"], [
        curves, schedule]
    if plot_firing(children, cells, study.table, firing):
        plots.append(firing)
        lines.append(f"![firing rate per spiking layer]({firing.name})")
    tradeoff = out / f"{study.name}-tradeoff.png"
    if plot_tradeoff(children, cells, study.table, tradeoff):
        plots.append(tradeoff)
        lines.append(f"![test accuracy against energy per image, non-dominated cells ringed]({tradeoff.name})")
    return lines, plots


def report_folder(out: Optional[Path], uri: str) -> Path:
    """--out, else reports/ beside a sqlite store's file (the working directory for a tracking server), made now:
    one line if it cannot be written, before a run is read."""
    from study.tracking.store import sqlite_path

    db = sqlite_path(uri)
    folder = out or ((db.parent if db is not None else Path()) / "reports")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise StudyError(f"--out {folder}: the report cannot be written there ({exc.strerror}); pass --out DIR") from None
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.report", description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="*", metavar="STUDY", help="study names (default: every study in the store)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--out", type=Path, help="folder for <study>.md and plots (default: reports/ beside a sqlite "
                                                 "store's file, else in the working directory)")
    parser.add_argument("--metric", choices=TABULATED, help="metric to tabulate (default: the study file's)")
    parser.add_argument("--stat", choices=("final", "best"), default="final",
                        help="each run's last-epoch value, or its best epoch (default final)")
    parser.add_argument("--format", choices=("md", "csv"), default="md", help="csv also writes every run's row")
    parser.add_argument("--file", type=Path, metavar="FILE",
                        help="lay the study out by this study file's table: (its study, by default), not the one "
                             "stored with the runs; nothing trains again")
    args = parser.parse_args(argv)

    from study.tracking.store import read_client, tracking_uri

    uri = tracking_uri(args.tracking_uri)
    try:
        client = read_client(uri)
        out = report_folder(args.out, uri)
        names = args.studies or ([str(read_yaml(args.file).get("name"))] if args.file else study_names(client))
        if not names:
            raise StudyError(f"no studies in {uri}; run `python -m study.run FILE` first")
        for name in names:
            text, note = report_study(client, uri, name, out, Asked(args.metric, args.stat, args.format == "csv",
                                                                    args.file))
            print(text)
            print(f"(written to {out / (name + '.md')})\n")
            if note:
                print(note, file=sys.stderr)
    except Exception as exc:
        return user_error_exit(exc)
    return 0

