"""A study file's YAML, read as `yaml.safe_load` would but refusing what it lets through silently: a key repeated in
one mapping, aliases that expand past any study's size; every failure one line that names the file and the line."""
from __future__ import annotations

from pathlib import Path

import yaml

from isnm import shown
from study.errors import StudyError, first_line


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key repeated in one mapping, where YAML would keep the last silently."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden here, as YAML says
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {shown(key)} appears twice in one mapping (YAML "
                                                        f"would keep the last one silently)", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


MAX_NODES = 100_000  # a study file's values, counted with YAML's aliases expanded: studies are hundreds
MAX_DEPTH = 64  # mappings and lists within one another: a study file nests a few deep
MAX_BYTES = 1_000_000  # a study file is a few kilobytes; it is stored with every invocation's parent run


def expanded_nodes(node: yaml.Node, counted: dict[int, int], open_nodes: set[int]) -> int:
    """How many nodes `node` is with every alias in it expanded, without expanding them: an alias is the node it names,
    counted once (`counted`); a node that holds itself, or lies more than MAX_DEPTH deep, counts as too many."""
    if id(node) in counted:
        return counted[id(node)]
    if id(node) in open_nodes or len(open_nodes) > MAX_DEPTH:
        return MAX_NODES + 1
    open_nodes.add(id(node))
    children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else (
        node.value if isinstance(node, yaml.SequenceNode) else [])
    total = 1
    for child in children:
        total = min(total + expanded_nodes(child, counted, open_nodes), MAX_NODES + 1)
    open_nodes.discard(id(node))
    counted[id(node)] = total
    return total


def bounded_yaml(text: str, path: Path):
    """The YAML document in `text`, refused when its aliases would expand it past MAX_NODES (an "alias bomb": a few
    lines that are gigabytes once walked)."""
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and expanded_nodes(node, {}, set()) > MAX_NODES:
            raise StudyError(f"{path}: more than {MAX_NODES:,} values (seeds, grid values, each YAML alias *name "
                             f"counted as expanded), or values nested more than {MAX_DEPTH} deep; a study file has "
                             f"hundreds, a few deep")
        return None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise StudyError(f"{path}: no such study file")
    if path.stat().st_size > MAX_BYTES:
        raise StudyError(f"{path}: {path.stat().st_size:,} bytes; a study file is a few kilobytes (at most "
                         f"{MAX_BYTES:,} are read)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:  # unreadable: permissions, not text
        raise StudyError(f"{path}: cannot be read ({type(exc).__name__}: {first_line(str(exc))})") from None
    try:
        data = bounded_yaml(text, path)
    except RecursionError:  # nested past what YAML's composer recurses through, before the depth is counted
        raise StudyError(f"{path}: values nested more than {MAX_DEPTH} deep; a study file nests a few deep") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where, line = "", ""
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
            lines = text.splitlines()
            line = f": {shown(lines[mark.line].strip())}" if mark.line < len(lines) and lines[mark.line].strip() else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StudyError(f"{path}: YAML error{where}{line}: {problem}") from None
    if data is None:
        raise StudyError(f"{path}: the file is empty; expected a study (name, base, variants, seeds, ...)")
    if not isinstance(data, dict):
        raise StudyError(f"{path}: expected a mapping of study keys at the top, got {type(data).__name__}")
    return data
