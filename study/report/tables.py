"""A report's Markdown from its cells: the paper-shaped table, the differences by Welch's t, the lines around them.

Values print as the metric registry (`study.records.METRICS`) says, as the paper prints them: accuracies and
rates in percent with 2 decimals, synaptic operations in millions with 2, the rest with 4.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

from isnm import CLASSES, metrics
from study.markdown import markdown_table
from study.records import METRICS, Status, states_text
from study.report.cells import Cell
from study.design.adaptive import Verdict
from study.design.layout import Comparison, Layout, comparisons, interactions, layout
from study.stats import ALPHA, Difference, Seeded, compared, detectable, holm, interaction, mean_std
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
                 counted: bool = False, elsewhere: Optional[str] = None) -> str:
    """One Markdown table in the paper's shape (docs/reports.md, "Tables"): Method?, the row keys (a value repeated
    from the line above left blank), the constants, then for each column (a table of rows has one) the cell's value,
    the paper's figure and Δ, the test accuracy at each T study.evaluate measured, and the extra metrics. `counted`:
    each cell's value says its seeds (n). `elsewhere`: the paper's setting, where ours is another (a profile's):
    its column says which, and no Δ is drawn between the two."""
    placed = layout([c.key for c in cells], table, len(split_value))
    by_key = {c.key: c for c in cells}
    has_paper = any(paper_figure(paper, c.key) is not None for c in cells)
    beside = table.eval_timesteps and metric == metrics.TEST_ACC  # they are test accuracies: beside test_acc only
    evaluated = sorted({t for c in cells for t in c.at_timesteps}) if beside else []
    means = {c.key: mean_std([scaled(v, metric) for v in c.values])[0] for c in cells if c.values}
    best = (max if METRICS[metric].maximize else min)(means.values()) if means else None
    paper_columns = ["Paper (%)", "Δ"] if elsewhere is None else [f"Paper (%), {elsewhere}"]
    names = ([METRICS[metric].header] + (paper_columns if has_paper else [])
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
                out += [DASH] * len(paper_columns)
            else:
                mean, std = figure
                out.append(f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}")
                if elsewhere is None:
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


def detectable_line(found: list[Difference], metric: str, family: Optional[int] = None) -> str:
    """The smallest difference every test in `found` detects with 80% power at Holm's strictest level (alpha / k, k
    the tests adjusted together: `family`, else `found`'s), from each test's observed spread and seeds; and how
    many differences are smaller."""
    n, k = len(found), family or len(found)
    smallest = max(detectable(d, ALPHA / k) for d in found)
    strictest = f"α = {ALPHA:g}" if k == 1 else f"Holm's strictest α = {ALPHA:g}/{k}"
    pp = " pp" if unit(metric) else ""
    line = (f"Smallest difference each comparison detects with 80% power ({strictest}, two-sided; from the observed "
            f"spread and seeds): {number(smallest, metric)}{pp}.")
    under = sum(abs(d.diff) < smallest for d in found)
    if under:
        which = "The difference is" if n == 1 else ("All the differences are" if under == n else
                                                     f"{under} of the {n} differences are")
        line += (f" {which} smaller: with these seeds a real difference of that size is missed more often than "
                 f"not, so a p-value above the level says little.")
    return line


@dataclass
class Section:
    """One table of differences: its title, its header's leading columns, and a line per test (its labels, the
    difference where both sides have two runs, the comparison it makes: None for an interaction)."""
    title: str
    head: list[str]
    rows: list[tuple[list[str], Optional[Difference], Optional[Comparison]]]


def across_columns(made: list[Comparison], placed: Layout, by_key: dict, table: Table, metric: str) -> Section:
    """Each line's cells against its first column's."""
    names = [table.values_label(table.column_keys, c) for c in placed.columns]
    several = len(placed.columns) > 2
    rows = [([table.label(v) for v in c.line] + ([table.values_label(table.column_keys, c.column)] if several else []),
             both_compared(by_key, c.reference, c.cell, metric), c) for c in made]
    head = [table.header(k) for k in table.row_keys] + (
        [f"Δ {names[1]} − {names[0]}{unit(metric)}"] if not several else ["Column", f"Δ vs {names[0]}{unit(metric)}"])
    return Section(f"Differences between the {columns_named(table)} columns, row by row", head, rows)


def across_rows(made: list[Comparison], placed: Layout, by_key: dict, table: Table, metric: str) -> Section:
    """Each line against the first of its group (in each column, where the table has columns)."""
    firsts = {table.values_label(table.row_keys[-1:], lines[0][-1:]) for lines in placed.groups()}
    versus = next(iter(firsts)) if len(firsts) == 1 else "the first"
    pivot = placed.pivot
    rows = [([table.label(v) for v in c.line] + ([table.values_label(table.column_keys, c.column)] if pivot else []),
             both_compared(by_key, c.reference, c.cell, metric), c) for c in made]
    head = [table.header(k) for k in table.row_keys] + (["Column"] if pivot else []) + [f"Δ vs {versus}{unit(metric)}"]
    *leading, last = table.row_keys
    title = ("Differences to the first row" if not leading else
             f"Differences to the first {table.header(last)} of each {' · '.join(table.header(k) for k in leading)}")
    return Section(title + (", column by column" if pivot else ""), head, rows)


def interaction_section(placed: Layout, by_key: dict, table: Table, metric: str) -> Optional[Section]:
    """Does a line's difference to the first of its group change across the columns? One test per line and column
    after the first; None where the table has no two lines in a group and two columns."""
    made = interactions(placed)
    if not made:
        return None
    first = table.values_label(table.column_keys, placed.columns[0])
    rows = []
    for i in made:
        cells = [by_key.get(k) for k in (i.a, i.b, i.a_j, i.b_j)]
        d = interaction(*(seeded(c, metric) for c in cells)) if all(cells) else None
        rows.append(([table.label(v) for v in i.line] + [table.values_label(table.column_keys, i.column)], d, None))
    head = [table.header(k) for k in table.row_keys] + ["Column", f"Δ of Δ vs {first}{unit(metric)}"]
    title = (f"Interaction: does each {table.header(table.row_keys[-1])}'s difference to the first change across the "
             f"{columns_named(table)} columns?")
    return Section(title, head, rows)


def interaction_line(section: Section, adjusted: list[float], metric: str, family: int) -> str:
    """Whether the data shows an interaction, and what the seeds could have detected."""
    found = [d for _, d, _ in section.rows if d is not None]
    significant = sum(p < ALPHA for p in adjusted)
    said = (f"The data shows an interaction: {significant} of the {len(found)} changes have Holm p < {ALPHA:g}, so "
            f"the difference between these rows depends on the column." if significant else
            f"The data shows no interaction: no change has Holm p < {ALPHA:g}.")
    return (f"Each line: (the row − the first row, in the column) − (the same, in the first column). {said} "
            + detectable_line(found, metric, family))


def columns_named(table: Table) -> str:
    return " · ".join(table.header(k) for k in table.column_keys)


def both_compared(by_key: dict, reference: Optional[tuple], cell: Optional[tuple], metric: str) -> Optional[Difference]:
    """The cell's difference to its reference, where both have runs (study.stats.compared)."""
    a, b = by_key.get(reference), by_key.get(cell)
    return compared(seeded(a, metric), seeded(b, metric)) if a and b else None


def differences(cells: list[Cell], table: Table, metric: str, split_value: tuple,
                verdicts: Optional[dict[tuple[tuple, tuple], Verdict]] = None) -> list[tuple[str, str]]:
    """(title, Markdown) of each table of differences a table makes (`study.design.layout.comparisons`: across its
    columns, its rows, or both), and, with two lines and two columns, of its interactions; none when no reference has
    two seeds. Each test is paired or Welch (`study.stats`); every p-value of the table is adjusted together (Holm).
    With adaptive seeds' `verdicts` (by reference and cell key), each comparison says how many seeds it got, and why
    it stopped."""
    placed = layout([c.key for c in cells], table, len(split_value))
    by_key = {c.key: c for c in cells}
    made = comparisons(placed)
    if not made or not any(len(getattr(by_key.get(c.reference), "values", [])) >= 2 for c in made):
        return []  # one column (or row): nothing to compare it with; or no reference with two seeds
    sections = [make([c for c in made if c.across == across], placed, by_key, table, metric)
                for across, make in (("columns", across_columns), ("rows", across_rows))
                if any(c.across == across for c in made)]
    mixed = interaction_section(placed, by_key, table, metric)
    tests = [d for section in sections + [mixed] * bool(mixed) for _, d, _ in section.rows if d is not None]
    adjusted = iter(holm([d.p for d in tests]))
    out = []
    for section in sections + [mixed] * bool(mixed):
        p_holm = [next(adjusted) if d is not None else None for _, d, _ in section.rows]
        head = section.head + [f"95% CI{unit(metric)}", "p", "p (Holm)", "test"]
        body = [labels + comparison_cells(d, p, metric) for (labels, d, _), p in zip(section.rows, p_holm)]
        if verdicts is not None and section is not mixed:
            head += ["seeds", "stopped"]
            for line, (_, _, c) in zip(body, section.rows):
                v = verdicts.get((c.reference, c.cell))
                line += [DASH, DASH] if v is None else [str(v.seeds), v.state]
        text = markdown_table(head, body)
        found = [d for _, d, _ in section.rows if d is not None]
        if section is mixed and found:
            text += "\n\n" + interaction_line(section, [p for p in p_holm if p is not None], metric, len(tests))
        elif found and section is sections[-1]:
            compared_found = [d for s in sections for _, d, _ in s.rows if d is not None]
            text += f"\n\n{detectable_line(compared_found, metric, len(tests))}"
        out.append((section.title, text))
    return out


SETTING_KEYS = ("dataset", "arch", "width", "timesteps", "epochs")  # what makes our numbers and the paper's comparable
PAPER_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "vgg_small": "VGG-small", "resnet18": "ResNet-18"}


def paper_setting(study: Study) -> Optional[str]:
    """The study file's own setting (the paper's figures are of it), where its profile trains another; else None."""
    own = study.unprofiled
    if own is None or all(own[k] == study.base[k] for k in SETTING_KEYS):
        return None
    def name(value: str) -> str:  # the table's label, else the name papers use
        return study.table.labels.get(value) or PAPER_NAMES.get(value, value)

    width = f" (width {own['width']:g})" if own["width"] != 1 else ""
    return f"{name(own['dataset'])}, {name(own['arch'])}{width}, T={own['timesteps']}, {own['epochs']} epochs"


def not_learned_line(runs: list, cells: list[Cell], table: Table) -> str:
    """The cells whose final training loss stayed within 10% of ln(classes), what guessing gives: they did not learn,
    and their accuracy is chance's, not a measure of the method; "" where every cell learned (or its data set is
    one of yours, whose classes the runs do not record)."""
    by_id = {run.run_id: run for run in runs}
    flagged = []
    for cell in cells:
        mine = [by_id[i] for i in cell.run_ids if i in by_id and metrics.TRAIN_LOSS in by_id[i].metrics]
        classes = CLASSES.get(mine[0].params.get("dataset", "")) if mine else None
        if not classes:
            continue
        loss, guess = mean_std([r.metrics[metrics.TRAIN_LOSS] for r in mine])[0], math.log(classes)
        if loss >= 0.9 * guess:
            flagged.append(f"{table.values_label(table.keys, cell.key)} (final training loss {loss:.2f}; "
                           f"ln {classes} = {guess:.2f})")
    if not flagged:
        return ""
    return ("Did not learn: " + "; ".join(flagged) + ". A loss that stays near ln(classes) is what guessing gives: "
            "such a row's accuracy is chance's, not a measure of what the table compares.")


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
