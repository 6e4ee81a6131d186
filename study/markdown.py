"""A Markdown table from a header and rows: the one renderer of every Markdown table the commands print
(the report's tables and leaderboard, study.reproduce's side by side).

Standard library only, so `study.plan` and any other light module can use it without Ray or MLflow.
"""
from __future__ import annotations


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A pipe table of the cells as given: no padding (a diff of two reports shows changed cells only)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
