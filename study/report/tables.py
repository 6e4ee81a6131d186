"""A report's Markdown from its cells: the paper-shaped table, the differences by Welch's t, the lines around them.

Values print as the metric registry (`study.records.METRICS`) says, as the paper prints them: accuracies and
rates in percent with 2 decimals, synaptic operations in millions with 2, the rest with 4.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Optional

from isnm import metrics
from study.markdown import markdown_table
from study.records import METRICS
from study.report.cells import ROW_KEY, Cell, Status
from study.report.stats import mean_std, welch
from study.spec.config import Study, Table
from study.spec.plan import plan_trials

HEADERS = {ROW_KEY: "Method", "dataset": "Dataset", "arch": "Architecture", "timesteps": "TimeStep",
           "surrogate.function": "Surrogate", "surrogate.schedule": "Schedule", "surrogate.shape": "Shape"}
DASH = "—"


def scaled(value: float, metric: str) -> float:
    return METRICS[metric].shown(value)


def number(value: float, metric: str) -> str:
    return METRICS[metric].text(value)


def signed(value: float, metric: str) -> str:
    return METRICS[metric].signed(value)


def unit(metric: str) -> str:
    """A difference's unit: percentage points for a metric printed in percent."""
    return " (pp)" if METRICS[metric].percent else ""


def label(table: Table, value: Any) -> str:
    """A key's value as the table prints it: its `labels:` name, else itself."""
    return table.labels.get(str(value), str(value))


def cell_text(values: list[float], planned: int, metric: str) -> str:
    """mean ± std over a cell's seeds, n when fewer than the `planned` seeds finished."""
    if not values:
        return DASH
    mean, std = mean_std([scaled(v, metric) for v in values])
    text = number(mean, metric) if math.isnan(std) else f"{number(mean, metric)} ± {number(std, metric)}"
    return text if len(values) == planned else f"{text} (n={len(values)})"


def extra_text(cell: Cell, metric: str) -> str:
    """An `extra` column's cell: the final `metric` over the cell's seeds; energy with its ratio to the ANN's."""
    values = cell.extras.get(metric, [])
    text = cell_text(values, cell.planned, metric)
    ann = cell.extras.get(metrics.ENERGY_ANN, [])
    if metric == metrics.ENERGY and values and ann:
        text += f" ({mean_std(values)[0] / mean_std(ann)[0]:.2f}× ANN)"
    return text


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


def render_table(cells: list[Cell], table: Table, metric: str, split_value: tuple, paper: dict) -> str:
    """One Markdown table in the paper's shape: method?, rows (repeats blank), columns, value, paper, Δ, and
    with `eval_timesteps` the test accuracy at each T that study.evaluate measured."""
    offset = len(split_value)
    n_rows = len(table.row_keys)
    has_paper = any(paper_figure(paper, c.key) is not None for c in cells)
    beside = table.eval_timesteps and metric == metrics.TEST_ACC  # they are test accuracies: beside test_acc only
    evaluated = sorted({t for c in cells for t in c.at_timesteps}) if beside else []
    header = (["Method"] if table.method else []) + [HEADERS.get(k, k) for k in table.row_keys + table.column_keys]
    header += [METRICS[metric].header] + (["Paper (%)", "Δ"] if has_paper else [])
    header += [f"Accuracy at T={t} (%)" for t in evaluated] + [METRICS[m].header for m in table.extra]
    means = {c.key: mean_std([scaled(v, metric) for v in c.values])[0] for c in cells if c.values}
    best = (max if METRICS[metric].maximize else min)(means.values()) if means else None
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
        value = cell_text(cell.values, cell.planned, metric)
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
        line += [cell_text(cell.at_timesteps.get(t, []), cell.planned, metric) for t in evaluated]
        line += [extra_text(cell, m) for m in table.extra]
        lines.append(line)
    return markdown_table(header, lines)


def welch_cells(reference: Cell, cell: Cell, metric: str) -> list[str]:
    """[difference of cell's mean to reference's, its 95% CI (Welch), p-value], dashes if either has < 2 seeds."""
    a, b = ([scaled(v, metric) for v in c.values] for c in (reference, cell))
    if len(a) < 2 or len(b) < 2:
        return [DASH, DASH, DASH]
    diff, low, high, p = welch(a, b)
    return [signed(diff, metric), f"[{signed(low, metric)}, {signed(high, metric)}]",
            "< 0.001" if p < 0.001 else f"{p:.3f}"]


def render_welch(cells: list[Cell], metric: str) -> Optional[str]:
    """Each row against the first: difference, 95% CI (Welch) and p-value; None if too few seeds."""
    first = cells[0]
    if len(cells) < 2 or len(first.values) < 2:
        return None
    rows = [[str(cell.key[-1]), *welch_cells(first, cell, metric)] for cell in cells[1:]]
    header = ["Method", f"Δ vs {first.key[-1]}{unit(metric)}", f"95% CI{unit(metric)}", "p (Welch)"]
    return markdown_table(header, rows)


def render_column_welch(cells: list[Cell], table: Table, metric: str) -> Optional[str]:
    """With one column key of two values (fixed, gradual), each row's second value against its first: difference,
    95% CI (Welch), p-value. None for other layouts, or if no row has both with 2 seeds or more."""
    if table.split or len(table.column_keys) != 1:
        return None
    rows: dict[tuple, list[Cell]] = {}
    for cell in cells:
        rows.setdefault(cell.key[:-1], []).append(cell)
    columns = list(dict.fromkeys(c.key[-1] for c in cells))
    if len(columns) != 2 or any(len(pair) != 2 for pair in rows.values()):
        return None
    lines = [[label(table, v) for v in key] + welch_cells(first, second, metric) for key, (first, second) in rows.items()]
    if all(line[-1] == DASH for line in lines):
        return None
    first, second = (label(table, v) for v in columns)
    header = [HEADERS.get(k, k) for k in table.row_keys] + [f"Δ {second} − {first}{unit(metric)}",
                                                           f"95% CI{unit(metric)}", "p (Welch)"]
    return markdown_table(header, lines)


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


def counts_line(counts: Counter[Status]) -> str:
    """'6 trials planned: 3 finished, 1 failed, 1 running, 1 interrupted, 0 not run.' (interrupted only if any)"""
    shown = [f"{counts[s]} {s.value}" for s in Status if s is not Status.INTERRUPTED or counts[s]]
    return f"{counts.total()} trials planned: {', '.join(shown)}."
