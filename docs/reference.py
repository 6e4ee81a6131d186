"""Writes docs/reference.md, the study file's keys and the training config's, from their dataclasses.

    python docs/reference.py            # from the repository root; or `python -m docs.reference`

Every key (dotted), its type, its default and its comment come from the code: the types through
`isnm.config.describe`, the defaults from the dataclass fields, the comments from the source (the
trailing `# ...` on the field's line, or the comment lines right above the field). So the reference
changes when the code does, and `tests/test_docs.py` fails until this script is run again.
Needs neither Ray nor MLflow nor torch: only the config modules, which import none of them.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import sys
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Union

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python docs/reference.py`
    sys.path.insert(0, str(ROOT))

from isnm.config import HASHED_WHEN_SET, UNHASHED_KEYS, TrainConfig, describe  # noqa: E402
from study.design.config import FIXED_BY_STUDY, StudyFile  # noqa: E402  (the one line naming where the study file's types live)

OUT = ROOT / "docs" / "reference.md"


class Key(NamedTuple):
    path: str  # dotted
    type: str
    default: str
    comment: str


def field_comments(cls: type) -> tuple[str, dict[str, str]]:
    """(the comment lines above the first field, {field name: its comment}) read from `cls`'s source.

    A field's comment is the `# ...` after it on its line, or the block of comment lines right above it.
    A block between two fields that both have a comment after them continues the first field's comment.
    """
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, whole line)
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            text = tok.string[1:].strip()
            comments[row] = (text, not lines[row - 1][:col].strip())
    (node,) = ast.parse(source).body
    names = {f.name for f in dataclasses.fields(cls)}
    statements = [s for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                  and s.target.id in names]

    def trailing(s: ast.AnnAssign) -> str:
        return " ".join(comments[r][0] for r in range(s.lineno, s.end_lineno + 1)
                        if r in comments and not comments[r][1])

    def block_above(line: int) -> tuple[int, list[str]]:
        """The comment lines right above `line`: (the first one's line number, their texts)."""
        texts: list[str] = []
        row = line - 1
        while row in comments and comments[row][1]:
            texts.insert(0, comments[row][0])
            row -= 1
        return row + 1, texts

    class_note = ""
    found: dict[str, list[str]] = {s.target.id: [trailing(s)] if trailing(s) else [] for s in statements}
    for i, s in enumerate(statements):
        start, texts = block_above(s.lineno)
        if not texts:
            continue
        previous = statements[i - 1] if i else None
        if previous is None:
            class_note = " ".join(texts)  # above the first field: about the whole class
        elif previous.end_lineno == start - 1 and trailing(previous) and trailing(s):
            found[previous.target.id].extend(texts)
        else:
            found[s.target.id][:0] = texts
    return class_note, {name: " ".join(parts) for name, parts in found.items()}


def dataclass_in(tp: Any) -> type | None:
    """The dataclass an annotation holds (itself, or inside Optional), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return inner[0] if len(inner) == 1 else None
    return None


def type_text(tp: Any) -> str:
    text = describe(tp)
    if typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp):
        text += " or null"
    return text


def value_text(value: Any) -> str:
    """A default as it would be written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, list):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {value_text(v)}" for k, v in value.items()) + "}"
    return repr(value)


def default_text(spec: dataclasses.Field) -> str:
    if spec.default is not dataclasses.MISSING:
        value = spec.default
    elif spec.default_factory is not dataclasses.MISSING:
        value = spec.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return ""  # a section: its keys follow, each with its default
    return value_text(value)


def keys(cls: type, prefix: str = "") -> Iterator[Key]:
    """Every key of dataclass `cls`, depth first, nested dataclasses' keys after their own."""
    hints = typing.get_type_hints(cls)
    _, comments = field_comments(cls)
    for spec in dataclasses.fields(cls):
        path = f"{prefix}{spec.name}"
        tp = hints[spec.name]
        inner = dataclass_in(tp)
        comment = comments.get(spec.name, "")
        if not comment and inner is not None and inner.__doc__ and not inner.__doc__.startswith(inner.__name__ + "("):
            comment = " ".join(inner.__doc__.strip().split("\n\n")[0].split())  # its first paragraph, whole
        yield Key(path, type_text(tp), default_text(spec), comment)
        if inner is not None:
            yield from keys(inner, path + ".")


def hashed(path: str) -> str:
    if path in UNHASHED_KEYS:
        return "no"
    if path in HASHED_WHEN_SET:
        return f"when not `{value_text(HASHED_WHEN_SET[path])}`"
    return "yes"


def cell(text: str) -> str:
    """Text for a Markdown table cell: pipes escaped, and outside `code` the angle brackets too."""
    parts = text.replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;")
    return "`".join(parts)


def code(default: str) -> str:
    return f"`{default}`" if default and default != "required" else default


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows)]


def render() -> str:
    """The text of docs/reference.md."""
    study_note, _ = field_comments(StudyFile)
    train_note, _ = field_comments(TrainConfig)
    study = [[f"`{k.path}`", k.type, code(k.default), k.comment] for k in keys(StudyFile)]
    train = [[f"`{k.path}`", k.type, code(k.default), hashed(k.path),
              "; ".join(filter(None, [k.comment, FIXED_BY_STUDY.get(k.path, "")]))]
             for k in keys(TrainConfig) if k.default]
    lines = [
        "# Study file reference",
        "",
        "<!-- Generated by `python docs/reference.py` from the config types; edit the code, not this file. -->",
        "",
        "Every key a study file takes, and every key of the training config that its `base:`, `variants:`,",
        "`grid:` and `search.space:` set, with its type, its default and the comment beside it in the code.",
        "This page is generated from the dataclasses that validate them (`StudyFile` and `TrainConfig`):",
        "`python docs/reference.py` writes it, and `tests/test_docs.py` fails when it is out of date.",
        "How to write a study file: [Study files](study-files.md).",
        "",
        "## The study file",
        "",
        *([study_note, ""] if study_note else []),
        *table(["Key", "Type", "Default", "Comment"], study),
        "",
        "## The training config",
        "",
        "The keys of `base:` (nested, or dotted in `variants:`, `grid:` and `search.space:`). \"Hashed\" says",
        "whether the key is part of a trial's config hash, which decides what is cached and what a report",
        "finds: a key added after runs were made is left out of the hash at the default that computes what",
        "those runs computed.",
        "",
        *([train_note, ""] if train_note else []),
        *table(["Key", "Type", "Default", "Hashed", "Comment"], train),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
