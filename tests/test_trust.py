"""A Ray experiment's saved state is restored only as its drivers recorded it: a pickle planted in the storage folder
never runs (study.run.trust)."""
import json
import pickle
import shutil
import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.run.storage import PLAN_FILE, experiment_at
from study.run.trust import digest, recorded_state, shared_storage_warning, state_files, unrestorable_files, whole
from tests.studies import finished_output, run_study, small_study, start_study, steps, trial_runs, wait_for


class Planted:
    """What an attacker writes: unpickled, it creates `marker` (a shell command could do anything)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def experiment_folder(tmp_path: Path) -> Path:
    root = tmp_path / "ray_results" / "exp"
    (root / "t_00000" / "checkpoint_000001").mkdir(parents=True)
    (root / "tuner.pkl").write_bytes(pickle.dumps({"a": 1}))
    (root / "experiment_state-1.json").write_text(json.dumps({"trial_data": []}))
    (root / PLAN_FILE).write_text("{}")
    (root / ".validate_storage_marker").write_text("")
    (root / "t_00000" / "error.pkl").write_bytes(pickle.dumps(ValueError("x")))
    (root / "t_00000" / "params.pkl").write_bytes(pickle.dumps({}))  # Ray never reads it back
    (root / "t_00000" / "checkpoint_000001" / "state.pt").write_bytes(b"weights")  # read with weights_only
    return root


def test_state_files_are_the_folders_pickles_and_json_and_the_trials_errors(tmp_path):
    root = experiment_folder(tmp_path)
    experiment = experiment_at(str(root.parent), "exp")
    assert state_files(experiment.fs, experiment.fs_path) == ["experiment_state-1.json", "tuner.pkl",
                                                              "t_00000/error.pkl"]


def test_only_recorded_whole_files_are_restorable(tmp_path):
    root = experiment_folder(tmp_path)
    experiment = experiment_at(str(root.parent), "exp")
    names = state_files(experiment.fs, experiment.fs_path)
    recorded = {name: {digest((root / name).read_bytes())} for name in names}
    assert unrestorable_files(experiment, recorded) == []
    assert unrestorable_files(experiment, {}) == names  # a driver killed before it recorded anything
    (root / "tuner.pkl").write_bytes(pickle.dumps(Planted(tmp_path / "marker")))
    (root / "searcher-state-9.pkl").write_bytes(pickle.dumps({}))  # a file no driver wrote
    assert unrestorable_files(experiment, recorded) == ["searcher-state-9.pkl", "tuner.pkl"]
    assert not (tmp_path / "marker").exists()


def test_a_file_cut_short_is_not_whole_though_recorded(tmp_path):
    root = experiment_folder(tmp_path)
    experiment = experiment_at(str(root.parent), "exp")
    data = (root / "tuner.pkl").read_bytes()
    assert whole(data) and whole(b'{"a": 1}')
    assert not whole(data[:-3]) and not whole(b'{"a": ') and not whole(b"")
    (root / "tuner.pkl").write_bytes(data[:-3])  # the disk filled while it was written, and the driver recorded that
    recorded = {name: {digest((root / name).read_bytes())} for name in state_files(experiment.fs, experiment.fs_path)}
    assert unrestorable_files(experiment, recorded) == ["tuner.pkl"]


def test_a_storage_others_may_write_is_warned_of(tmp_path):
    root = experiment_folder(tmp_path)
    experiment = experiment_at(str(root.parent), "exp")
    root.parent.chmod(0o755)
    assert shared_storage_warning(experiment) == ""
    root.parent.chmod(0o777)
    assert "is writable by other users (mode drwxrwxrwx)" in shared_storage_warning(experiment)


def planted_state(state_file: Path, marker: Path) -> None:
    """Every pickle Tune keeps, hex-encoded, in its experiment state's trials replaced by `Planted`."""
    state = json.loads(state_file.read_text())

    def plant(node):
        if isinstance(node, dict):
            if node.get("_type") == "CLOUDPICKLE_FALLBACK":
                return {**node, "value": pickle.dumps(Planted(marker)).hex()}
            return {k: plant(v) for k, v in node.items()}
        return [plant(v) for v in node] if isinstance(node, list) else node

    state["trial_data"] = [[json.dumps(plant(json.loads(trial))), *rest] for trial, *rest in state["trial_data"]]
    state_file.write_text(json.dumps(state))


@pytest.mark.slow
def test_a_pickle_planted_in_a_stopped_studys_storage_never_runs(tmp_path, shared_ray):
    path = small_study(tmp_path, name="planted", epochs=10, variants={"A": {}}, seeds=[0])
    db, marker = tmp_path / "mlflow.db", tmp_path / "marker"
    driver = start_study(tmp_path, str(path), cluster=shared_ray)
    try:  # a batch system's stop, after ray.init set a SIGTERM handler of its own, late: the reruns train the rest
        wait_for(lambda: [r for r in trial_runs(db, "planted") if len(steps(db, r)) >= 2], 240, "2 epochs", driver)
        driver.send_signal(signal.SIGTERM)
        output = finished_output(driver, 120)
    finally:
        driver.kill()
    assert driver.returncode == 130 and "interrupted (SIGTERM)" in output, output[-3000:]  # as Ctrl-C stops it
    (run,) = trial_runs(db, "planted")
    assert run.info.status == "KILLED" and 2 <= len(steps(db, run)) < 10
    (experiment,) = [p for p in (tmp_path / "ray_results").iterdir() if p.is_dir()]
    client = MlflowClient(f"sqlite:///{db}")
    recorded = recorded_state(client, client.get_experiment_by_name("planted").experiment_id, str(experiment))
    assert {"tuner.pkl"} < set(recorded) and unrestorable_files(experiment_at(str(experiment.parent),
                                                                               experiment.name), recorded) == []
    stopped = tmp_path.parent / f"{tmp_path.name}-stopped"
    shutil.copytree(tmp_path, stopped)

    def again() -> None:  # the folder as the study stopped (the store's paths name it)
        shutil.rmtree(tmp_path)
        shutil.copytree(stopped, tmp_path)

    for planted in ("tuner.pkl", "experiment_state"):
        if planted == "tuner.pkl":
            (experiment / "tuner.pkl").write_bytes(pickle.dumps(Planted(marker)))
        else:
            again()
            planted_state(next(experiment.glob("experiment_state-*.json")), marker)
        done = run_study(tmp_path, str(path), cluster=shared_ray)
        assert not marker.exists()
        warning = [line for line in done.stderr.splitlines() if "not restoring" in line]
        assert len(warning) == 1 and planted in warning[0] and "set aside unread" in warning[0], done.stderr
        assert "Traceback" not in done.stderr and "carrying on from the last checkpoint, in the same run" in done.stdout
        (run,) = trial_runs(db, "planted")
        assert run.info.status == "FINISHED" and steps(db, run) == list(range(1, 11))  # each epoch once
    again()
    (experiment / "tuner.pkl").write_bytes(pickle.dumps(Planted(marker)))
    planted_state(next(experiment.glob("experiment_state-*.json")), marker)
    done = run_study(tmp_path, str(path), "--fresh", cluster=shared_ray)
    assert not marker.exists() and "not restoring" not in done.stderr and "0 failed" in done.stdout
