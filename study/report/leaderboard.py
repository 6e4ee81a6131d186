"""A search study's report: its best trials, ranked by the search's own metric, and the best as a `base:` overlay."""
from __future__ import annotations

from typing import TYPE_CHECKING

import yaml

from isnm import metrics, nested
from study.markdown import markdown_table
from study.records import METRICS, RunRecord, RunStatus, Tag, history
from study.report.tables import number, scaled
from study.design.config import Study
from study.design.plan import SEARCH_VARIANT

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


LEADERBOARD_SIZE = 10


def short(param: str) -> str:
    """A logged parameter for a table: numbers to 4 significant digits (the YAML keeps them whole)."""
    value = yaml.safe_load(param)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def finished_samples(children: list[RunRecord], study: Study) -> list[RunRecord]:
    """The search's trials that finished, under this report's profile."""
    return [run for run in children if run.status == RunStatus.FINISHED and run.variant == SEARCH_VARIANT
            and run.tags.get(Tag.PROFILE, "") == (study.profile or "")]


def leaderboard(client: MlflowClient, children: list[RunRecord], study: Study) -> str:
    """The top trials of a search, ranked by the search's own metric (val_acc, never test data), with their
    sampled values and final test accuracy, and the best as a `base:` overlay."""
    keys = list(study.spec.search.space)
    metric, mode = study.spec.search.objectives[0]
    done = [run for run in finished_samples(children, study) if metric in run.metrics]
    if not done:
        return "No finished search trials yet."
    top = sorted(done, key=lambda run: run.metrics[metric], reverse=mode == "max")[:LEADERBOARD_SIZE]
    header = ["#"] + keys + [METRICS[metric].header, METRICS[metrics.TEST_ACC].header, "epochs"]
    rows = []
    for i, run in enumerate(top, start=1):
        epochs = len(history(client, run.run_id, metric))  # fewer when the scheduler stopped it
        rows.append([str(i)] + [short(run.params[k]) for k in keys]
                    + [number(scaled(run.metrics[m], m), m) if m in run.metrics else "—"
                       for m in (metric, metrics.TEST_ACC)] + [str(epochs)])
    overlay = {"base": nested({k: yaml.safe_load(top[0].params[k]) for k in keys})}
    return (markdown_table(header, rows) + "\n\nBest configuration, ready to paste into a study file:\n\n"
            "```yaml\n" + yaml.safe_dump(overlay, sort_keys=False).strip() + "\n```")
