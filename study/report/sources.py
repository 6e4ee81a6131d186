"""Where a report's numbers come from: its provenance line, and `<study>.runs.csv` with every run it used."""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from study.report.cells import Cell
from study.report.tables import label
from study.spec.config import Table


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
                    "cell": " / ".join(label(table, v) for v in cell.key), "variant": source.variant,
                    "seed": source.seed, "run_id": source.run_id, "config_hash": source.config_hash,
                    "git_commit": source.git_commit, "torch": source.torch, "device": source.device})
                row[metric] = source.value
    columns = ["cell", "variant", "seed", "run_id", "config_hash", "git_commit", "torch", "device", *by_metric]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows(rows.values())
