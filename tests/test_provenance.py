"""What a run records of its code and environment: git state from a real repository, the environment here."""
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.tracking.provenance import code_state, differences, environment
from tests.studies import ROOT, run_study, small_study


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture()
def repo(tmp_path):
    git("init", "-q", cwd=tmp_path)
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py", cwd=tmp_path)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one", cwd=tmp_path)
    return tmp_path


def test_a_clean_tree_records_its_commit_and_no_diff(repo):
    state = code_state(repo)
    assert len(state.commit) == 40 and not state.dirty and state.diff == ""


def test_an_edited_file_makes_the_tree_dirty_and_its_diff_rebuilds_the_code(repo):
    (repo / "code.py").write_text("x = 2\n")
    state = code_state(repo)
    assert state.dirty and "-x = 1\n+x = 2" in state.diff and state.short.endswith("+dirty")
    git("checkout", "-q", "code.py", cwd=repo)
    (repo / "patch.diff").write_text(state.diff)
    git("apply", "patch.diff", cwd=repo)  # the recorded commit plus the recorded diff is the code that ran
    assert (repo / "code.py").read_text() == "x = 2\n"


def test_reports_and_prose_cannot_change_a_number_so_they_leave_the_tree_clean(repo):
    (repo / "reports").mkdir()
    for name in ("reports/table.md", "reports/runs.csv", "README.md"):
        (repo / name).write_text("one\n")
    git("add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "two", cwd=repo)
    for name in ("reports/table.md", "reports/runs.csv", "README.md"):
        (repo / name).write_text("two\n")  # what make demo and an edit of the docs do
    assert not code_state(repo).dirty


def test_outside_a_repository_the_commit_is_unknown(tmp_path):
    assert code_state(tmp_path).commit == "unknown"


def test_environment_names_versions_device_threads_and_determinism():
    import torch

    env = environment("cpu")
    assert env["torch"] == torch.__version__ and env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert {"torchvision", "ray", "mlflow", "optuna", "numpy"} <= set(env)
    assert env["device"].startswith("CPU ") and env["threads"] == str(torch.get_num_threads())
    assert differences(env, {**env, "threads": "7"}) == [("threads", env["threads"], "7")]


@pytest.mark.slow
def test_a_study_run_from_a_dirty_tree_records_it(tmp_path, shared_ray):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    with (clone / "isnm/surrogate.py").open("a") as file:
        file.write("# an uncommitted edit\n")
    path = small_study(tmp_path, epochs=1, variants={"ISNM": {}}, seeds=[0])
    done = run_study(tmp_path, str(path), env={"PYTHONPATH": str(clone)}, cluster=shared_ray)  # the driver's code
    assert "warning: the working tree has uncommitted changes" in done.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = [r for r in client.search_runs([client.get_experiment_by_name("itest").experiment_id])
              if r.data.tags.get("kind") == "trial"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    assert run.data.tags["git_dirty"] == "true" and run.data.tags["git_commit"] == head
    folder = tmp_path / "artifacts"
    folder.mkdir()
    diff = Path(client.download_artifacts(run.info.run_id, "code.diff", str(folder))).read_text()
    assert "+# an uncommitted edit" in diff
