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

    @property
    def pivot(self) -> bool:
        return self.columns != [()]


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
    return Layout(lines, list(dict.fromkeys(column for _, column in placed)), placed)


@dataclass(frozen=True)
class Comparison:
    """A cell against its reference: in a pivot, a line's cell in another column against its first column's; in a
    table of rows, a line against the first line of its group (the lines that share the leading row keys' values).
    A pivot's line may lack either cell (None)."""
    line: tuple
    column: tuple
    reference: Optional[tuple]
    cell: Optional[tuple]


def comparisons(placed: Layout) -> list[Comparison]:
    """The comparisons one table makes, in the order it prints them."""
    if placed.pivot:
        first, *others = placed.columns
        return [Comparison(line, column, placed.keys.get((line, first)), placed.keys.get((line, column)))
                for line in placed.lines for column in others]
    groups: dict[tuple, list[tuple]] = {}
    for line in placed.lines:
        groups.setdefault(line[:-1], []).append(line)
    return [Comparison(line, (), placed.keys[lines[0], ()], placed.keys[line, ()])
            for lines in groups.values() for line in lines[1:]]


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
