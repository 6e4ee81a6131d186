"""Where a report's numbers come from: its provenance line, `<study>.runs.csv` with every run it used, and (with
`--format csv`) `<study>.csv` with every trial run of the study as MLflow holds it."""
from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import pandas as pd

from study.records import RunRecord, Tag
from study.report.cells import Cell
from study.design.config import Table


def counted(values: list[str]) -> str:
    """'a', or when they differ 'a (2 runs), b (1 runs)', in order of first appearance."""
    counts = Counter(values)
    return ", ".join(f"{value} ({n} runs)" if len(counts) > 1 else value for value, n in counts.items())


def provenance_line(by_metric: dict[str, list[Cell]], sidecar: str) -> str:
    """Where the numbers come from: commits, torch versions and devices of the runs used (by any metric's
    table), flagged when mixed."""
    sources = list({s.run_id: s for cells in by_metric.values() for c in cells for s in c.sources}.values())
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
                    "cell": " / ".join(table.label(v) for v in cell.key), Tag.VARIANT: source.variant,
                    Tag.SEED: source.seed, "run_id": source.run_id, Tag.CONFIG_HASH: source.config_hash,
                    Tag.GIT_COMMIT: source.git_commit, "torch": source.torch, "device": source.device})
                row[metric] = source.value
    columns = ["cell", Tag.VARIANT, Tag.SEED, "run_id", Tag.CONFIG_HASH, Tag.GIT_COMMIT, "torch", "device", *by_metric]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows(rows.values())


def runs_frame(runs: list[RunRecord]) -> pd.DataFrame:
    """The runs one row each, in the columns of `mlflow.search_runs` (run_id, status, start_time, ..., metrics.*,
    params.*, tags.*; missing metrics NaN, missing params and tags None)."""
    data: dict[str, list] = {
        "run_id": [r.run_id for r in runs], "experiment_id": [r.experiment_id for r in runs],
        "status": [r.status for r in runs], "artifact_uri": [r.artifact_uri for r in runs],
        "start_time": [pd.to_datetime(r.start_time, unit="ms", utc=True) for r in runs],
        "end_time": [pd.to_datetime(r.end_time, unit="ms", utc=True) for r in runs]}
    for prefix, missing in (("metrics", math.nan), ("params", None), ("tags", None)):
        logged = [getattr(r, prefix) for r in runs]
        for key in dict.fromkeys(k for values in logged for k in values):
            data[f"{prefix}.{key}"] = [values.get(key, missing) for values in logged]
    return pd.DataFrame(data)
