"""The layout docs/architecture.md describes: a package of study/ with a `__main__.py` is a command, and imports go
one way: the shared parts below, the commands above, no command importing another (running never imports
reporting)."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {"run", "report", "reproduce", "evaluate", "status", "submit"}
# each part of study/ and the parts it may import (besides itself)
PARTS = {"errors": set(), "markdown": set(), "stats": set(), "locks": set(), "records": {"errors"},
         "design": {"errors", "records", "markdown", "stats"},
         "tracking": {"errors", "records", "design", "markdown", "stats"}}


def unit(module: str) -> str:
    """study.run.driver -> run; study.records -> records."""
    return module.split(".")[1]


def study_imports(path: Path) -> set[str]:
    """The study modules `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("study."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("study."))
    return found


def test_the_commands_are_the_packages_with_a_main():
    assert {p.parent.name for p in (ROOT / "study").glob("*/__main__.py")} == COMMANDS
    assert {p.name for p in (ROOT / "study").iterdir() if p.is_dir() and p.name != "__pycache__"} == COMMANDS | {
        "design", "tracking"}


def test_imports_go_one_way():
    wrong = []
    for path in sorted((ROOT / "study").rglob("*.py")):
        here = unit(".".join(path.relative_to(ROOT).with_suffix("").parts)) if path.parent != ROOT / "study" or \
            path.stem != "__init__" else "study"
        allowed = (set(PARTS) if here in COMMANDS else PARTS.get(here, set())) | {here}
        for module in study_imports(path):
            if unit(module) not in allowed:
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert wrong == []


def test_a_trial_process_loads_neither_mlflow_nor_the_reporting_side():
    probe = "import sys, study.run.worker; print(*(m in sys.modules for m in ('mlflow', 'study.report')))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "False"], done.stderr[-2000:]


def test_a_driver_loads_no_torch():
    """study.run's driver checks its data and runs Tune without torch (1.5 s of every launch); the trials load it."""
    probe = ("import sys, study.run.cli, study.run.driver; from isnm import check_data; check_data({}); "
             "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False"], done.stderr[-2000:]


def study_trees() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text()) for path in sorted((ROOT / "study").rglob("*.py"))}


def test_objects_are_constructed_whole():
    """An object of study/ (a class with an __init__: the tracker, the trial book, the interrupts) gets its fields in
    its constructor or its own methods, never assigned from outside, so that no order of calls is needed to make one
    whole. Data records (dataclasses: a trial's log, a table cell) are data, filled by their owner."""
    trees = study_trees()
    fields: dict[str, str] = {}  # a field an object sets on self -> its class
    record_fields: set[str] = set()
    for tree in trees.values():
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            body = [n.name for n in cls.body if isinstance(n, ast.FunctionDef)]
            if "__init__" not in body:
                record_fields.update(n.target.id for n in cls.body
                                     if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name))
                continue
            for node in ast.walk(cls):
                if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                        and isinstance(node.value, ast.Name) and node.value.id == "self"):
                    fields[node.attr] = cls.name
    assigned = []
    for path, tree in trees.items():
        inside = {id(n) for cls in ast.walk(tree) if isinstance(cls, ast.ClassDef) for n in ast.walk(cls)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and id(node) not in inside
                    and node.attr in fields and node.attr not in record_fields):
                assigned.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)} ({fields[node.attr]})")
    assert not assigned, assigned


# a template (bash in a string, with its named substitutions) may run longer
TEMPLATES = {("study/submit/script.py", "script")}


def test_no_class_over_200_lines_and_no_function_over_80():
    long = []
    for path, tree in study_trees().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                lines, limit = node.end_lineno - node.lineno + 1, 200 if isinstance(node, ast.ClassDef) else 80
                if lines > limit and (str(path.relative_to(ROOT)), node.name) not in TEMPLATES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, long


def test_study_uses_isnm_through_its_public_api():
    """docs/architecture.md: isnm/__init__.py is the public API (lazy: the config code never loads torch), and
    study/ uses isnm only through it."""
    inside = []
    for path, tree in study_trees().items():
        for node in ast.walk(tree):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            inside += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in names if name.startswith("isnm.")]
    assert not inside, inside
