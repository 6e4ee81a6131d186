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
from study.records import METRICS, Status, states_text
from study.report.cells import Cell
from study.design.adaptive import Verdict
from study.design.layout import comparisons, layout
from study.stats import ALPHA, Difference, Seeded, compared, detectable, holm, mean_std
from study.design.config import Study, Table
from study.design.plan import Trial

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


def cell_text(values: list[float], planned: int, metric: str, counted: bool = False) -> str:
    """mean ± std over a cell's seeds, n when fewer than the `planned` seeds finished, or always when `counted`
    (adaptive seeds: cells have as many as their comparisons needed)."""
    if not values:
        return DASH
    mean, std = mean_std([scaled(v, metric) for v in values])
    text = number(mean, metric) if math.isnan(std) else f"{number(mean, metric)} ± {number(std, metric)}"
    return text if len(values) == planned and not counted else f"{text} (n={len(values)})"


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


def render_table(cells: list[Cell], table: Table, metric: str, split_value: tuple, paper: dict,
                 counted: bool = False) -> str:
    """One Markdown table in the paper's shape (docs/reports.md, "Tables"): Method?, the row keys (a value repeated
    from the line above left blank), the constants, then for each column (a table of rows has one) the cell's value,
    the paper's figure and Δ, the test accuracy at each T study.evaluate measured, and the extra metrics. `counted`:
    each cell's value says its seeds (n)."""
    placed = layout([c.key for c in cells], table, len(split_value))
    by_key = {c.key: c for c in cells}
    has_paper = any(paper_figure(paper, c.key) is not None for c in cells)
    beside = table.eval_timesteps and metric == metrics.TEST_ACC  # they are test accuracies: beside test_acc only
    evaluated = sorted({t for c in cells for t in c.at_timesteps}) if beside else []
    means = {c.key: mean_std([scaled(v, metric) for v in c.values])[0] for c in cells if c.values}
    best = (max if METRICS[metric].maximize else min)(means.values()) if means else None
    names = ([METRICS[metric].header] + (["Paper (%)", "Δ"] if has_paper else [])
             + [f"Accuracy at T={t} (%)" for t in evaluated] + [METRICS[m].header for m in table.extra])

    def shown(cell: Optional[Cell]) -> list[str]:
        """A cell's group of columns; dashes where the plan has no such cell."""
        if cell is None:
            return [DASH] * len(names)
        value = cell_text(cell.values, cell.planned, metric, counted)
        out = [f"**{value}**" if best is not None and means.get(cell.key) == best else value]
        if has_paper:
            figure = paper_figure(paper, cell.key)
            if figure is None:
                out += [DASH, DASH]
            else:
                mean, std = figure
                out.append(f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}")
                out.append(DASH if cell.key not in means else f"{means[cell.key] - mean:+.2f}")
        out += [cell_text(cell.at_timesteps.get(t, []), cell.planned, metric) for t in evaluated]
        return out + [extra_text(cell, m) for m in table.extra]

    head = ((["Method"] if table.method else []) + [table.header(k) for k in table.row_keys]
            + [table.header(k) for k in table.constants])
    if placed.pivot:  # the columns side by side, then each other part (paper, Δ, extras) for each column in turn
        columns = [table.values_label(table.column_keys, c) for c in placed.columns]
        head += columns + [f"{n}, {c}" for n in names[1:] for c in columns]
    else:
        head += names
    lines, previous = [], None
    for line in placed.lines:
        labels = [table.label(v) for v in line]
        if previous is not None:  # blank repeated leading row values, as the paper prints them
            for i in range(len(line)):
                if line[:i + 1] != previous[:i + 1]:
                    break
                labels[i] = ""
        previous = line
        row = [by_key.get(placed.keys.get((line, column))) for column in placed.columns]
        constants = next(c for c in row if c is not None).constants
        parts = [shown(c) for c in row]
        lines.append(([table.method] if table.method else []) + labels
                     + [table.label(constants[k]) for k in table.constants]
                     + [part[i] for i in range(len(names)) for part in parts])
    return markdown_table(head, lines)


def seeded(cell: Cell, metric: str) -> Seeded:
    return {s.seed: (scaled(s.value, metric), s.pairing) for s in cell.sources}


def p_text(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def comparison_cells(d: Optional[Difference], adjusted: Optional[float], metric: str) -> list[str]:
    if d is None:
        return [DASH] * 5
    return [signed(d.diff, metric), f"[{signed(d.low, metric)}, {signed(d.high, metric)}]", p_text(d.p),
            p_text(adjusted), d.test]


def detectable_line(found: list[Difference], metric: str) -> str:
    """The smallest difference every comparison of the table detects with 80% power at Holm's strictest level
    (alpha / k), from each comparison's observed spread and seeds; and how many differences are smaller."""
    k = len(found)
    smallest = max(detectable(d, ALPHA / k) for d in found)
    strictest = f"α = {ALPHA:g}" if k == 1 else f"Holm's strictest α = {ALPHA:g}/{k}"
    pp = " pp" if unit(metric) else ""
    line = (f"Smallest difference each comparison detects with 80% power ({strictest}, two-sided; from the observed "
            f"spread and seeds): {number(smallest, metric)}{pp}.")
    under = sum(abs(d.diff) < smallest for d in found)
    if under:
        which = "The difference is" if k == 1 else ("All the differences are" if under == k else
                                                     f"{under} of the {k} differences are")
        line += (f" {which} smaller: with these seeds a real difference of that size is missed more often than "
                 f"not, so a p-value above the level says little.")
    return line


def differences(cells: list[Cell], table: Table, metric: str, split_value: tuple,
                verdicts: Optional[dict[tuple[tuple, tuple], Verdict]] = None) -> Optional[tuple[str, str]]:
    """(its title, the Markdown table and the detectable-difference line) of the differences a table makes
    (`study.design.layout.comparisons`), or None when no reference has two seeds. Each comparison is paired or Welch
    (`study.stats.compared`); the table's p-values are adjusted together (Holm). With adaptive seeds' `verdicts`
    (by reference and cell key), each line says how many seeds its comparison got, and why it stopped."""
    placed = layout([c.key for c in cells], table, len(split_value))
    by_key = {c.key: c for c in cells}
    made = comparisons(placed)
    pp = unit(metric)
    rows: list[tuple[list[str], Optional[Difference]]] = []
    if not made:  # one column (or one row): nothing to compare it with
        return None
    if placed.pivot:
        names = [table.values_label(table.column_keys, c) for c in placed.columns]
        several = len(placed.columns) > 2
        for c in made:
            reference, cell = by_key.get(c.reference), by_key.get(c.cell)
            rows.append(([table.label(v) for v in c.line] + ([table.values_label(table.column_keys, c.column)]
                                                             if several else []),
                         compared(seeded(reference, metric), seeded(cell, metric)) if reference and cell else None))
        head = [table.header(k) for k in table.row_keys] + (
            [f"Δ {names[1]} − {names[0]}{pp}"] if not several else ["Column", f"Δ vs {names[0]}{pp}"])
        title = f"Differences between the {' · '.join(table.header(k) for k in table.column_keys)} columns, row by row"
    else:
        rows = [([table.label(v) for v in c.line], compared(seeded(by_key[c.reference], metric),
                                                             seeded(by_key[c.cell], metric))) for c in made]
        firsts = {table.values_label(table.row_keys[-1:], c.reference[-1:]) for c in made}
        versus = next(iter(firsts)) if len(firsts) == 1 else "the first"
        head = [table.header(k) for k in table.row_keys] + [f"Δ vs {versus}{pp}"]
        *leading, last = table.row_keys
        title = ("Differences to the first row" if not leading else
                 f"Differences to the first {table.header(last)} of each {' · '.join(table.header(k) for k in leading)}")
    references = [by_key.get(c.reference) for c in made]
    if not rows or not any(r is not None and len(r.values) >= 2 for r in references):
        return None
    found = [d for _, d in rows if d is not None]
    adjusted = iter(holm([d.p for d in found]))
    body = [labels + comparison_cells(d, next(adjusted) if d is not None else None, metric) for labels, d in rows]
    head += [f"95% CI{pp}", "p", "p (Holm)", "test"]
    if verdicts is not None:
        head += ["seeds", "stopped"]
        for line, c in zip(body, made):
            v = verdicts.get((c.reference, c.cell))
            line += [DASH, DASH] if v is None else [str(v.seeds), v.state]
    table_text = markdown_table(head, body)
    return title, table_text + (f"\n\n{detectable_line(found, metric)}" if found else "")


def setting_line(study: Study, trials: list[Trial]) -> str:
    """What our numbers were trained on, over the planned `trials` (a search, which plans none: its base)."""
    configs = [t.config for t in trials] or [study.base]

    def values(key: str) -> str:
        return "/".join(str(v) for v in dict.fromkeys(c[key] for c in configs))

    def networks() -> str:
        return "/".join(dict.fromkeys(c["arch"] + (f" (width {c['width']:g})" if c["width"] != 1 else "")
                                      for c in configs))

    profile = f" with profile `{study.profile}`" if study.profile else ""
    rule = study.adaptive
    seeds = (f"seeds {', '.join(map(str, study.spec.seeds))}" if rule is None else
             f"adaptive seeds: {rule.min} to {rule.max} per table cell, more only while a comparison's 95% interval of "
             f"{study.table.metrics[0]} is wider than ±{rule.target:g}{' pp' if METRICS[study.table.metrics[0]].percent else ''}")
    return (f"Ours{profile}: {values('dataset')}, {networks()}, T={values('timesteps')}, "
            f"{values('epochs')} epochs, {seeds}.")


def counts_line(counts: Counter[Status]) -> str:
    """'6 trials planned: 3 finished, 1 failed, 1 running, 1 interrupted, 0 not run.' (interrupted only if any)"""
    return f"{counts.total()} trials planned: {states_text(counts)}."
