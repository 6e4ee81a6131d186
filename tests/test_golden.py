"""Each shipped study's report, rendered from runs with known values, against its golden Markdown in tests/golden/:
any later change to how a table is laid out shows here as a diff. `UPDATE_GOLDEN=1 python -m pytest
tests/test_golden.py` rewrites them; read the diff before committing it. (beta_search.yaml is a search: its report
is a leaderboard of the trials the search sampled, tested in tests/test_search.py.)"""
import os

import pytest
import yaml

from study.report.cli import main
from study.design.load import load_study
from study.design.plan import plan_trials
from tests.stores import write_spec, write_store
from tests.study_files import shipped_pbt_schedule
from tests.studies import ROOT

SHIPPED = sorted(path for path in (ROOT / "search_spaces").glob("*.yaml") if "search" not in yaml.safe_load(
    path.read_text()))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.stem)
def test_a_shipped_study_renders_as_its_golden_file(path, tmp_path, monkeypatch, mlflow_uri):
    monkeypatch.chdir(tmp_path)
    spec = load_study(path, None, shipped_pbt_schedule).resolved or yaml.safe_load(path.read_text())  # as study.run stores it
    trials = plan_trials(load_study(write_spec(tmp_path, spec)))
    # values that differ from cell to cell and seed to seed, the same on every run of the test
    outcome = {t.name: round(0.6 + 0.3 * (i * 7 % 11) / 11 + 0.004 * t.seed, 4) for i, t in enumerate(trials)}
    activity = {t.name: {"spike_rate": 0.1 + 0.01 * (i % 5), "synops": 1e6 * (1 + i % 3), "energy": 1.0 + i % 4,
                         "energy_ann": 10.0} for i, t in enumerate(trials)}
    uri = write_store(tmp_path, spec, outcome, mlflow_uri, activity)
    assert main(["--tracking-uri", uri, "--out", str(tmp_path / "reports")]) == 0
    text = (tmp_path / "reports" / f"{spec['name']}.md").read_text()
    golden = ROOT / "tests" / "golden" / f"{spec['name']}.md"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"{spec['name']}'s report changed: see {golden}'s docstring in this module"
