"""README and docs/: the generated reference is current, every figure quoted from a report is in that report,
README stays short, links lead somewhere inside the repository, and no page tells the project's history.
No Ray, no MLflow, no torch."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 160

QUOTE_START = re.compile(r"^<!-- from (reports/\S+) -->$")
QUOTE_END = "<!-- end -->"
RESULT = re.compile(r"\d\s*±\s*\d")
HISTORY = re.compile(r"\bissue\s+#?[1-9][0-9]?\b|\bprevious demo\b|\bthis session\b", re.IGNORECASE)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def load_reference_script():
    spec = importlib.util.spec_from_file_location("docs_reference", DOCS / "reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_reference_is_what_the_script_writes():
    expected = load_reference_script().render()
    current = (DOCS / "reference.md").read_text()
    assert current == expected, ("docs/reference.md is not what the config types say now: "
                                 "run `python docs/reference.py` and commit docs/reference.md")


def test_the_reference_script_needs_neither_ray_nor_mlflow_nor_torch():
    probe = ("import runpy, sys; runpy.run_path('docs/reference.py', run_name='probe'); "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'mlflow', 'torch', 'optuna', 'pandas'}))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"docs/reference.py imported {done.stdout.strip()}"


def quoted_blocks(path: Path) -> list[tuple[str, int, list[str]]]:
    """(report path, line number of the marker, the quoted lines) for each <!-- from reports/... --> block."""
    blocks, current = [], None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        start = QUOTE_START.match(line.strip())
        if start:
            assert current is None, f"{page_id(path)}:{number}: a quote starts inside another"
            current = (start.group(1), number, [])
        elif line.strip() == QUOTE_END:
            assert current is not None, f"{page_id(path)}:{number}: {QUOTE_END} without a start"
            blocks.append(current)
            current = None
        elif current is not None and line.strip() and not line.strip().startswith("```"):
            current[2].append(line.rstrip())
    assert current is None, f"{page_id(path)}:{current[1]}: a quote of {current[0]} has no {QUOTE_END}"
    return blocks


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_every_quoted_line_is_a_line_of_its_report(path):
    for report, number, lines in quoted_blocks(path):
        source = ROOT / report
        assert source.is_file(), f"{page_id(path)}:{number}: quotes {report}, which does not exist"
        assert lines, f"{page_id(path)}:{number}: an empty quote of {report}"
        have = {line.rstrip() for line in source.read_text().splitlines()}
        missing = [line for line in lines if line not in have]
        assert not missing, (f"{page_id(path)}:{number}: these lines are not in {report} (it changed: quote it "
                             f"again):\n" + "\n".join(missing))


def test_the_demo_tables_are_quoted_from_their_reports():
    quoted = {report for path in PAGES for report, _, _ in quoted_blocks(path)}
    assert {"reports/ablation.md", "reports/surrogates.md"} <= quoted


def outside_code(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of the page's lines that are not in a fenced code block."""
    out, fenced = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_results_stand_inside_a_quote(path):
    """A figure with its spread (`46.24 ± 3.27`) is a result: it comes from a report, inside a checked quote."""
    spans, current = [], None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if QUOTE_START.match(line.strip()):
            current = number
        elif line.strip() == QUOTE_END and current is not None:
            spans.append((current, number))
            current = None
    stray = [f"{page_id(path)}:{n}: {line}" for n, line in outside_code(path)
             if RESULT.search(line) and not any(a < n < b for a, b in spans)]
    assert not stray, "results outside a <!-- from reports/... --> quote:\n" + "\n".join(stray)


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; at most {README_MAX_LINES} (move detail to docs/)"


def links(path: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in outside_code(path):
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        found += [(number, target) for target in LINK.findall(line)]
        found += [(number, target) for target in REFERENCE_LINK.findall(line)]
    return found


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_links_lead_to_files_inside_the_repository(path):
    bad = []
    for number, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # a URL, or an anchor on the same page
        file_part = target.split("#", 1)[0]
        resolved = (path.parent / file_part).resolve()
        where = f"{page_id(path)}:{number}: {target}"
        if not resolved.is_relative_to(ROOT):
            bad.append(f"{where} leaves the repository")
        elif not resolved.exists():
            bad.append(f"{where} does not exist")
        elif path.parent == DOCS and not resolved.is_relative_to(DOCS):
            bad.append(f"{where} leaves docs/, which is all mkdocs builds (name the file as `code` instead)")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_no_page_tells_the_projects_history(path):
    hits = [f"{page_id(path)}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
            if HISTORY.search(line)]
    assert not hits, "history belongs in CHANGELOG.md:\n" + "\n".join(hits)


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The rules themselves, on pages made to break them."""
    page = tmp_path / "page.md"
    page.write_text("<!-- from reports/ablation.md -->\n| ISNM | 46.25 ± 3.27 | 84.63 | -38.39 |\n<!-- end -->\n")
    ((report, _, lines),) = quoted_blocks(page)
    assert report == "reports/ablation.md" and lines[0] not in (ROOT / report).read_text().splitlines()
    assert RESULT.search("| ISNM | 46.24 ± 3.27 |") and not RESULT.search("mean ± std")
    assert HISTORY.search("as in issue 12") and HISTORY.search("The previous demo") and not HISTORY.search(
        "issue 123 tissues")
    page.write_text("[a](../../x.md) `[b](nowhere.md)`\n```\n[c](inside-code.md)\n```\n[d]: ref.md\n")
    assert [t for _, t in links(page)] == ["../../x.md", "ref.md"]
    assert resolves("isnm.config.HASHED_WHEN_SET") and not resolves("isnm.config.NO_SUCH_NAME")
    assert not resolves("study.no_such_module") and not resolves("isnm.train.no_such_name")


DOTTED = re.compile(r"(?<![\w./<-])((?:isnm|study)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def defines(module_file: Path, name: str) -> bool:
    """Whether `name` is defined at the top of the module's source, or (a package) exported by name."""
    text = module_file.read_text()
    return bool(re.search(rf"^(?:def|class)\s+{name}\b|^{name}\s*[:=]|^from\s+\S+\s+import\s+.*\b{name}\b", text,
                          re.MULTILINE)) or (module_file.name == "__init__.py" and f'"{name}"' in text)


def resolves(dotted: str) -> bool:
    """`isnm.runtime.reuse_freed_memory` -> a module file of the repository, then names defined in it."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        module = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if base.is_dir() or module.is_file():
            rest = parts[cut:]
            if not rest:
                return True
            return module.is_file() and len(rest) == 1 and defines(module, rest[0])
    return False


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_named_modules_and_functions_exist(path):
    """Every `isnm.x` or `study.x.y` a page names is a module of this tree, or a name defined in one."""
    text = re.sub(r"https?://\S+", "", path.read_text())
    stale = sorted({d for d in DOTTED.findall(text) if not resolves(d.rstrip("."))})
    assert not stale, f"{page_id(path)} names what the code no longer has: {', '.join(stale)}"


def study_examples() -> list:
    """Every YAML example in the docs that is a study file (`name:` first) or a bare `search:` section, one param
    each, named page:n."""
    found = []
    for page in PAGES:
        blocks = re.findall(r"^```yaml\n(.*?)^```", page.read_text(), re.MULTILINE | re.DOTALL)
        for n, text in enumerate(blocks):
            if text.startswith(("name:", "search:")):
                found.append(pytest.param(text, id=f"{page_id(page)}:{n}"))
    return found


@pytest.mark.parametrize("text", study_examples())
def test_example_study_files_validate(text, tmp_path):
    """The example loads, under each of its profiles; a bare `search:` section loads inside a minimal study."""
    from study.design.load import load_study

    file = tmp_path / "example.yaml"
    file.write_text(text if text.startswith("name:") else "name: example\n" + text)
    study = load_study(file)
    for profile in study.spec.profiles:
        load_study(file, profile)


def test_the_docs_hold_study_file_examples():
    assert len(study_examples()) >= 4  # a page's examples moved elsewhere would otherwise leave nothing tested


COMMANDS = ("run", "report", "status", "submit", "reproduce", "evaluate")


def command_options(command: str) -> list[str]:
    """The long options study.<command>'s parser declares (read from its source: no import, no --help process)."""
    import ast

    tree = ast.parse((ROOT / "study" / command / "cli.py").read_text())
    return [arg.value for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "attr", "") == "add_argument"
            for arg in node.args if isinstance(arg, ast.Constant) and str(arg.value).startswith("--")]


@pytest.mark.parametrize("command", COMMANDS)
def test_the_readme_table_names_every_option_of_each_command(command):
    """README's row of each command lists its options; a row that ends in "..." (study.submit) leaves the rest to
    docs/clusters.md, which must name them."""
    (row,) = [line for line in README.read_text().splitlines() if line.startswith(f"| `python -m study.{command} ")]
    options = command_options(command)
    assert options, command
    missing = [o for o in options if o not in row]
    if " ...]` |" in row or " ...` |" in row:
        missing = [o for o in missing if o not in (DOCS / "clusters.md").read_text()]
    assert not missing, f"study.{command}: {missing} in neither README's row nor the page it points to"


@pytest.mark.parametrize("command", COMMANDS)
def test_each_commands_help_reads_whole(command, capsys):
    """--help's description is a whole sentence: study.status's once stopped at its docstring's first line break,
    inside a parenthesis."""
    import importlib

    module = importlib.import_module(f"study.{command}.cli")
    with pytest.raises(SystemExit):
        module.main(["--help"])
    text = capsys.readouterr().out
    description = text.split("\n\n")[1]
    assert description.count("(") == description.count(")"), description


def test_every_shipped_study_file_is_in_the_study_files_table():
    text = (ROOT / "docs" / "study-files.md").read_text()
    for path in [*sorted((ROOT / "search_spaces").glob("*.yaml")), *sorted((ROOT / "examples").glob("*.yaml"))]:
        assert f"| `{path.relative_to(ROOT)}` |" in text, path
