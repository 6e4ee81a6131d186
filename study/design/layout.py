"""Where a study's table cells sit (lines and columns) and which cells the table compares: one definition for the
report, which prints the differences, and for adaptive seeds, which add seeds where a difference is still imprecise.

A cell's key is its values of the table's keys (split, rows, columns: `Table.keys`), as `cell_key` reads them off a
planned trial. Pure: no Ray, no MLflow.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from study.design.config import Table
from study.design.plan import Trial, key_value


def cell_key(table: Table, trial: Trial) -> tuple:
    return tuple(key_value(trial, k) for k in table.keys)


@dataclass
class Layout:
    """One table's cells placed: its lines (the row keys' values, grouped by the leading keys, each key's values in the
    order the plan first meets them) and its columns (the column keys' values; one, (), for a table of rows)."""
    lines: list[tuple]
    columns: list[tuple]
    keys: dict[tuple[tuple, tuple], tuple]  # (line, column) -> the cell's key
    compare: str = "rows"  # which differences: "columns", "rows" or "both" (Table.compare); a table of rows: rows

    @property
    def pivot(self) -> bool:
        return self.columns != [()]

    def groups(self) -> list[list[tuple]]:
        """The lines by the leading row keys' values they share: each group's lines are compared with its first."""
        grouped: dict[tuple, list[tuple]] = {}
        for line in self.lines:
            grouped.setdefault(line[:-1], []).append(line)
        return list(grouped.values())


def layout(keys: list[tuple], table: Table, offset: int) -> Layout:
    """Cell `keys` (`offset` split values, then row and column values), in plan order, as lines and columns."""
    n_rows = len(table.row_keys)
    seen: list[dict] = [{} for _ in range(n_rows)]
    placed: dict[tuple[tuple, tuple], tuple] = {}
    for key in keys:
        line, column = key[offset:offset + n_rows], key[offset + n_rows:]
        for level, value in enumerate(line):
            seen[level].setdefault(value, len(seen[level]))
        placed[line, column] = key
    lines = sorted(dict.fromkeys(line for line, _ in placed),
                   key=lambda line: tuple(seen[level][v] for level, v in enumerate(line)))
    columns = list(dict.fromkeys(column for _, column in placed))
    return Layout(lines, columns, placed, table.compare or ("columns" if columns != [()] else "rows"))


@dataclass(frozen=True)
class Comparison:
    """A cell against its reference: in a pivot, a line's cell in another column against its first column's; in a
    table of rows, a line against the first line of its group (the lines that share the leading row keys' values).
    A pivot's line may lack either cell (None)."""
    line: tuple
    column: tuple
    reference: Optional[tuple]
    cell: Optional[tuple]
    across: str = "rows"  # "columns": a cell against its line's first column; "rows": against its group's first line


def comparisons(placed: Layout) -> list[Comparison]:
    """The comparisons one table makes, in the order it prints them: in a table with columns, each line's cells
    against its first column's (compare: columns), then each column's lines against the first of their group
    (compare: rows); in a table of rows, the lines."""
    made = []
    if placed.pivot and placed.compare in ("columns", "both"):
        first, *others = placed.columns
        made += [Comparison(line, column, placed.keys.get((line, first)), placed.keys.get((line, column)), "columns")
                 for line in placed.lines for column in others]
    if not placed.pivot or placed.compare in ("rows", "both"):
        made += [Comparison(line, column, placed.keys.get((lines[0], column)), placed.keys.get((line, column)))
                 for column in placed.columns for lines in placed.groups() for line in lines[1:]]
    return made


@dataclass(frozen=True)
class Interaction:
    """Does line B's difference to line A (the first of its group) change from the first column to `column`? The four
    cells' keys, any of which may be missing (None)."""
    line: tuple
    column: tuple
    a: Optional[tuple]
    b: Optional[tuple]
    a_j: Optional[tuple]
    b_j: Optional[tuple]


def interactions(placed: Layout) -> list[Interaction]:
    """The interactions a table with columns has: each line against the first of its group, each column against the
    first; none without two lines in a group and two columns."""
    if not placed.pivot:
        return []
    first, *others = placed.columns
    k = placed.keys
    return [Interaction(line, column, k.get((lines[0], first)), k.get((line, first)), k.get((lines[0], column)),
                        k.get((line, column)))
            for lines in placed.groups() for line in lines[1:] for column in others]


def split_keys(table: Table, keys: list[tuple]) -> dict[tuple, list[tuple]]:
    """Cell keys by the table they are in: one per value of the split key (a single one, (), without a split)."""
    tables: dict[tuple, list[tuple]] = {}
    for key in keys:
        tables.setdefault(key[:1] if table.split else (), []).append(key)
    return tables


def study_comparisons(table: Table, trials: list[Trial]) -> list[Comparison]:
    """Every comparison of a study's tables (one per split value), each between two planned cells."""
    keys = list(dict.fromkeys(cell_key(table, t) for t in trials))
    return [c for split, part in split_keys(table, keys).items() for c in comparisons(layout(part, table, len(split)))
            if c.reference is not None and c.cell is not None]
