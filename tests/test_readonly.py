"""Folders that cannot be written: each is one line naming the option to change and exit code 2, before anything
starts, or (attaching a report's plots to MLflow) a warning after the report is written.

Root ignores permission bits, so the folders are made read-only by a read-only bind mount in a mount namespace of
the test's own (`unshare`): the host's mounts never change."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stores import STUDY, write_store
from tests.studies import loopback_env, small_study

# each case: a command's main called in this process, its exit code and last stderr line printed as JSON
PROBE = """
import contextlib, io, json, sys
from study.run.cli import main as run
from study.report.cli import main as report
for name, command, argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = {"run": run, "report": report}[command](argv)
    print(json.dumps([name, rc, err.getvalue().strip().splitlines()[-1:]]), flush=True)
"""


def under_read_only(folder: Path, cases: list, cwd: Path) -> dict:
    """{case: (exit code, last stderr line)} of `cases` run in one process that sees `folder` read-only."""
    script = (f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} {folder} && "
              f'exec "$0" -c "$1" "$2"')
    done = subprocess.run(["unshare", "--mount", "--map-root-user", "--propagation", "private", "sh", "-c", script,
                           sys.executable, PROBE, json.dumps(cases)], cwd=cwd, env=loopback_env(),
                          capture_output=True, text=True, timeout=120)  # a deadline only to end a hang
    assert done.returncode == 0, done.stderr[-3000:]
    return {name: (rc, line[0] if line else "") for name, rc, line in map(json.loads, done.stdout.splitlines())}


@pytest.fixture()
def folders(tmp_path, empty_mlflow_db):
    """(a read-only folder, a writable one holding a store with a study's runs and the study file)."""
    locked, free = tmp_path / "locked", tmp_path / "free"
    locked.mkdir()
    free.mkdir()
    shutil.copy(empty_mlflow_db, free / "mlflow.db")
    write_store(free, STUDY, {"A seed=0": 0.9, "B seed=0": 0.8}, f"sqlite:///{free / 'mlflow.db'}")
    return locked, free


@pytest.mark.slow  # real processes
def test_study_run_refuses_folders_it_cannot_write_before_starting_anything(folders):
    locked, free = folders
    spec = str(small_study(free))
    shutil.copy(free / "mlflow.db", locked / "mlflow.db")
    (free / "a-file").write_text("")
    got = under_read_only(locked, [
        ["storage", "run", [spec, "--storage", str(locked / "ray")]],
        ["storage under a file", "run", [spec, "--storage", str(free / "a-file" / "ray")]],
        ["store", "run", [spec, "--tracking-uri", f"sqlite:///{locked / 'mlflow.db'}", "--storage", str(free / "ray")]],
        ["new store", "run", [spec, "--tracking-uri", f"sqlite:///{locked / 'new.db'}", "--storage", str(free / "ray")]],
    ], free)
    # MLflow alone retried an unwritable store for about 100 s and then said so in its words: these are the checks'
    assert got["storage"] == (2, f"error: --storage {locked / 'ray'}: the trials' checkpoints cannot be written "
                                 "there (Read-only file system); pass --storage DIR")
    assert got["storage under a file"] == (2, f"error: --storage {free / 'a-file' / 'ray'}: the trials' checkpoints "
                                              "cannot be written there (Not a directory); pass --storage DIR")
    for case in ("store", "new store"):
        rc, line = got[case]
        assert rc == 2 and line.startswith("error: --tracking-uri sqlite:///") and (
            "the MLflow store cannot be written (Read-only file system)" in line), line
    assert not (free / "ray").exists()  # no lock file, no experiment: nothing was started


@pytest.mark.slow  # real processes
def test_report_goes_beside_the_store_and_plots_it_cannot_attach_are_a_warning(folders):
    locked, free = folders
    shutil.move(free / "mlartifacts", locked / "mlartifacts")
    (free / "mlartifacts").symlink_to(locked / "mlartifacts")  # the store's artifact folder, read-only
    name = STUDY["name"]
    got = under_read_only(locked, [
        ["from a read-only folder", "report", [name, "--tracking-uri", f"sqlite:///{free / 'mlflow.db'}"]],
        ["out read-only", "report", [name, "--tracking-uri", f"sqlite:///{free / 'mlflow.db'}",
                                     "--out", str(locked / "reports")]],
    ], locked)
    rc, line = got["from a read-only folder"]
    assert rc == 0 and line.startswith("warning: the plots were not attached to the study's parent run in MLflow ("), line
    assert (free / "reports" / f"{name}.md").read_text().startswith(f"# {name}")
    assert (free / "reports" / f"{name}-curves.png").stat().st_size > 0
    assert got["out read-only"] == (2, f"error: --out {locked / 'reports'}: the report cannot be written there "
                                       "(Read-only file system); pass --out DIR")
