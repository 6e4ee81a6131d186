"""A damaged sqlite store (a file cut short: a full disk, a copy stopped half-way) in every command that reads one:
one line naming the store, exit code 2, and the file left as it was."""
import hashlib
import shutil

import pytest

from study.evaluate.cli import main as evaluate_main
from study.report.cli import main as report_main
from study.reproduce.cli import main as reproduce_main
from study.run.cli import main as run_main
from tests.stores import STUDY, write_spec, write_store

COMMANDS = {
    "report": lambda uri, spec: report_main([STUDY["name"], "--tracking-uri", uri]),
    "evaluate": lambda uri, spec: evaluate_main(["0" * 32, "--timesteps", "1", "--tracking-uri", uri]),
    "reproduce": lambda uri, spec: reproduce_main(["0" * 32, "--tracking-uri", uri]),
    "estimate": lambda uri, spec: run_main([str(spec), "--dry-run", "--estimate", "--tracking-uri", uri]),
}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, empty_mlflow_db):
    """A store holding a study's runs, then cut to half its size."""
    folder = tmp_path_factory.mktemp("damaged")
    shutil.copy(empty_mlflow_db, folder / "whole.db")
    write_store(folder, STUDY, {"A seed=0": 0.9, "B seed=0": 0.8}, f"sqlite:///{folder / 'whole.db'}")
    data = (folder / "whole.db").read_bytes()
    (folder / "half.db").write_bytes(data[:len(data) // 2])
    return folder, write_spec(folder, STUDY)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_truncated_store_is_one_line_and_is_not_written(damaged, command, tmp_path, monkeypatch, capsys):
    folder, spec = damaged
    db = tmp_path / "half.db"
    shutil.copy(folder / "half.db", db)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    monkeypatch.chdir(tmp_path)
    assert COMMANDS[command](f"sqlite:///{db}", spec) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error: ") == 1 and err.endswith("\n"), err
    err = err.splitlines()[-1]  # after the warning that the working tree has uncommitted changes, if it has
    assert err.startswith("error: the MLflow store ") and f"{db} is damaged (database disk image is malformed)" in err, err
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert not (tmp_path / "reports").exists()
