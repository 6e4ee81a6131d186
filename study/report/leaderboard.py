"""A search study's report: its best trials, ranked by the search's own metric, and the best as a `base:` overlay."""
from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import yaml

from isnm import nested
from study.markdown import markdown_table
from study.report.tables import METRIC_HEADERS, number, scaled
from study.spec.config import Study
from study.spec.plan import SEARCH_VARIANT

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


LEADERBOARD_SIZE = 10


def short(param: str) -> str:
    """A logged parameter for a table: numbers to 4 significant digits (the YAML keeps them whole)."""
    value = yaml.safe_load(param)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def leaderboard(client: MlflowClient, children: pd.DataFrame, study: Study) -> str:
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
