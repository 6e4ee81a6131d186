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
PARTS = {"errors": set(), "markdown": set(), "moved": set(), "stats": set(), "locks": set(), "records": {"errors"},
         "spec": {"errors", "records", "markdown", "stats"},
         "tracking": {"errors", "records", "moved", "spec", "markdown", "stats"}}


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
        "spec", "tracking"}


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
