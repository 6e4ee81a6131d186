"""A half-trained trial never counts as finished: Ctrl-C, a damaged checkpoint, a wiped tracking store,
a store that fails mid-study, a full disk, a relative data folder. Real processes, real signals, real Ray and MLflow."""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from isnm import train
from study.design.load import load_study
from study.design.plan import plan_trials
from tests.cifar_files import write_fake_cifar
from tests.studies import finished_output, loopback_env, run_study, small_study, start_study, steps, trial_runs, wait_for, with_store

pytestmark = pytest.mark.slow


def parent_runs(db: Path, study: str) -> list:
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(study)
    return [] if exp is None else client.search_runs([exp.experiment_id], "tags.kind = 'study'")


def parent_run_started(db: Path) -> bool:
    """Read with sqlite3 itself: an MlflowClient would create MLflow's tables alongside the driver's."""
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as store:
            return store.execute("select count(*) from tags where key = 'kind' and value = 'study'").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and lines[-1].startswith("error: "), stderr[-3000:]
    return lines[-1]


def test_sigint_leaves_unfinished_trials_unfinished_and_the_rerun_completes_them_on_their_own_resources(
        tmp_path, shared_ray):
    epochs = 5  # the interrupt follows the second epoch: three are left to cut
    path = small_study(tmp_path, name="sigint", epochs=epochs, variants={"A": {}, "B": {"neuron.reset": "soft"}},
                       seeds=[0], max_concurrent=1)
    db = tmp_path / "mlflow.db"
    driver = start_study(tmp_path, str(path), cluster=shared_ray)  # the signal goes to the driver, a process of its own
    try:
        wait_for(lambda: [r for r in trial_runs(db, "sigint") if len(steps(db, r)) >= 2], 240,
                 "two epochs of a trial", driver)
        driver.send_signal(signal.SIGINT)
        output = finished_output(driver, 120)
    finally:
        driver.kill()
    assert driver.returncode == 130, output[-3000:]
    assert "interrupted (SIGINT); run the same command again to resume" in output and "Traceback" not in output
    runs = trial_runs(db, "sigint")
    assert all(steps(db, r) == list(range(1, epochs + 1)) for r in runs if r.info.status == "FINISHED")
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert killed and all(f"of {epochs} epochs logged" in r.data.tags["interrupted"] for r in killed)
    assert [p.info.status for p in parent_runs(db, "sigint")] == ["KILLED"]
    status = subprocess.run([sys.executable, "-m", "study.status", "sigint"], cwd=tmp_path, env=loopback_env(),
                            capture_output=True, text=True, timeout=120).stdout
    assert "last invocation " in status and ", interrupted (Ctrl-C)" in status and "KILLED" not in status, status
    logged = sum(len(steps(db, r)) for r in runs)  # the interrupted trials' epochs count too (they read 0 before)
    assert f"  epochs  {logged} of {2 * epochs} (" in status and logged > 0, status

    # the checkpoint the interrupted trial resumes from (its last logged epoch's; Tune numbers them from 0)
    # is cut short, as a full disk would leave it
    interrupted = max(killed, key=lambda r: len(steps(db, r)))
    trial_folder = next(tmp_path.glob(f"ray_results/*/{interrupted.data.tags['ray_trial_id']}"))
    newest = trial_folder / f"checkpoint_{len(steps(db, interrupted)) - 1:06d}" / "state.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    # and the study file now asks for 2 CPUs a trial: the trial that resumes from a checkpoint keeps the 1 it started
    # with, since its thread count is its CPUs, and another thread count would change its numbers; the trial that
    # had not started trains all of its epochs on 2
    path.write_text(path.read_text().replace("cpu: 1", "cpu: 2"))

    done = run_study(tmp_path, str(path), cluster=shared_ray)
    runs = trial_runs(db, "sigint")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:  # one run per trial, every epoch exactly once
        assert steps(db, run) == list(range(1, epochs + 1))
    resumed = next(r for r in runs if r.info.run_id == interrupted.info.run_id)
    assert f"{newest.parent.name} unreadable" in resumed.data.tags["checkpoint_fallback"]
    assert "unreadable" in done.stdout + done.stderr
    # the resume says so first, and the trial that goes on from its checkpoint says where
    assert "resuming the interrupted study (" in done.stdout and "trial(s) done, 1 in progress (from epoch " \
        in done.stdout, done.stdout[-3000:]
    assert f"{interrupted.info.run_name}  resumed at epoch " in done.stdout, done.stdout[-3000:]
    assert (f"resuming: 1 trial(s) keep the resources they started with (cpu 1, gpu 0 per trial; the study file now "
            f"says cpu 2, gpu 0), so their threads and numbers stay as they were: {interrupted.info.run_name};"
            in done.stdout), done.stdout[-3000:]
    assert {r.info.run_name: r.data.tags["env.threads"] for r in runs} == {"A seed=0": "1", "B seed=0": "2"}
    trial = next(t for t in plan_trials(load_study(path)) if t.name == resumed.info.run_name)
    torch.set_num_threads(1)  # the trial had one CPU
    reference = train(trial.config)
    assert resumed.data.metrics["test_acc"] == reference["test_acc"]
    assert resumed.data.metrics["train_loss"] == pytest.approx(reference["train_loss"], rel=0, abs=1e-12)


def test_sigint_before_any_trial_is_one_line_and_exit_130(tmp_path):
    path = small_study(tmp_path, name="early", epochs=1, seeds=[0])
    driver = start_study(tmp_path, str(path))
    try:
        wait_for(lambda: parent_run_started(tmp_path / "mlflow.db"), 120, "the study's parent run", driver)
        driver.send_signal(signal.SIGINT)  # Ray is starting now, or the trials have just begun
        output = finished_output(driver, 120)
    finally:
        driver.kill()
    assert driver.returncode == 130 and "Traceback" not in output, output[-3000:]
    assert "run the same command again to resume" in output.strip().splitlines()[-1]
    runs = {f"{kind} {r.info.run_name}": r.info.status for kind, found in (
        ("parent", parent_runs(tmp_path / "mlflow.db", "early")), ("trial", trial_runs(tmp_path / "mlflow.db", "early")))
        for r in found}
    assert "RUNNING" not in runs.values(), runs


def hit_after_the_first_epoch(tmp_path: Path, name: str, hit, cluster) -> tuple[int, str, Path]:
    """A one-trial study of 30 epochs, `hit(driver, db)` once its first epoch is logged:
    (the driver's exit code, its output, the store)."""
    path = small_study(tmp_path, name=name, epochs=30, variants={"A": {}}, seeds=[0])
    db = tmp_path / "mlflow.db"
    driver = start_study(tmp_path, str(path), cluster=cluster)
    try:
        wait_for(lambda: [r for r in trial_runs(db, name) if steps(db, r)], 240, "an epoch logged", driver)
        hit(driver, db)
        output = finished_output(driver, 120)
    finally:
        driver.kill()
    return driver.returncode, output, db


def test_a_second_ctrl_c_stops_at_once_and_leaves_no_run_running(tmp_path, shared_ray):
    def twice(driver, _):
        driver.send_signal(signal.SIGINT)  # the first asks Tune to stop after the trials' checkpoints
        time.sleep(0.5)
        driver.send_signal(signal.SIGINT)  # the second, impatient: at once

    code, output, db = hit_after_the_first_epoch(tmp_path, "twice", twice, shared_ray)
    assert code == 130 and "Traceback" not in output, output[-3000:]
    assert "run the same command again to resume" in output.strip().splitlines()[-1]
    (run,) = trial_runs(db, "twice")
    assert run.info.status == "KILLED" and 0 < len(steps(db, run)) < 30
    assert [p.info.status for p in parent_runs(db, "twice")] == ["KILLED"]


def interrupted_after_an_epoch(tmp_path: Path, name: str, cluster) -> tuple[Path, Path]:
    """(the study file, the store) of a one-trial study of 4 epochs (variant A, seed 0) stopped with Ctrl-C once
    an epoch is logged."""
    path = small_study(tmp_path, name=name, epochs=4, variants={"A": {}}, seeds=[0])
    db = tmp_path / "mlflow.db"
    driver = start_study(tmp_path, str(path), cluster=cluster)
    try:
        wait_for(lambda: [r for r in trial_runs(db, name) if steps(db, r)], 240, "an epoch logged", driver)
        driver.send_signal(signal.SIGINT)
        output = finished_output(driver, 120)
    finally:
        driver.kill()
    assert driver.returncode == 130, output[-3000:]
    (run,) = trial_runs(db, name)
    assert run.info.status == "KILLED" and len(steps(db, run)) < 4
    return path, db


def test_an_edited_study_file_carries_on_the_unchanged_interrupted_trials_in_their_runs(tmp_path, shared_ray):
    path, db = interrupted_after_an_epoch(tmp_path, "edited", shared_ray)
    (interrupted,) = trial_runs(db, "edited")
    logged = len(steps(db, interrupted))
    # a seed added and the variant renamed: another plan, so another Ray experiment; the trial's config is the same
    path.write_text(path.read_text().replace("  A: {}", "  Base: {}").replace("- 0\n", "- 0\n- 1\n"))
    done = run_study(tmp_path, str(path), cluster=shared_ray)
    assert (f"but not the configs of 1 trial: carrying on from the last checkpoint, in the same run: Base seed=0 "
            f"({logged} of 4 epochs)" in done.stdout), done.stdout[-3000:]
    assert "  Base seed=0  epoch 1/4" not in done.stdout  # it trained on from its checkpoint, not from the start
    runs = {r.info.run_name: r for r in trial_runs(db, "edited")}
    assert sorted(runs) == ["Base seed=0", "Base seed=1"] and {r.info.status for r in runs.values()} == {"FINISHED"}
    assert runs["Base seed=0"].info.run_id == interrupted.info.run_id  # one run per trial
    assert all(steps(db, r) == [1, 2, 3, 4] for r in runs.values())  # each epoch exactly once
    assert runs["Base seed=0"].data.tags["variant"] == "Base" and "interrupted" not in runs["Base seed=0"].data.tags


def test_a_renamed_variant_resumes_its_experiment(tmp_path, shared_ray):
    path, db = interrupted_after_an_epoch(tmp_path, "renamed", shared_ray)
    (interrupted,) = trial_runs(db, "renamed")
    path.write_text(path.read_text().replace("  A: {}", "  Base: {}"))  # the same configs: the same plan
    done = run_study(tmp_path, str(path), cluster=shared_ray)
    assert "lost their runs" not in done.stdout and "carrying on" not in done.stdout, done.stdout[-3000:]
    (run,) = trial_runs(db, "renamed")
    assert run.info.run_id == interrupted.info.run_id and run.info.run_name == "Base seed=0"
    assert run.info.status == "FINISHED" and steps(db, run) == [1, 2, 3, 4]


def test_wiped_store_beside_a_finished_experiment_on_a_file_uri(tmp_path, shared_ray):
    path = small_study(tmp_path, name="wiped", epochs=2, variants={"A": {}}, seeds=[0, 1])
    storage = f"file://{tmp_path / 'shared'}"
    run_study(tmp_path, str(path), "--storage", storage, cluster=shared_ray)
    assert list((tmp_path / "shared").glob("wiped-*/*/checkpoint_*")) and not (tmp_path / "file:").exists()
    before = {r.info.run_name: r.data.metrics for r in trial_runs(tmp_path / "mlflow.db", "wiped")}

    def in_new_store(name: str, *extra: str, check: bool = True):
        """A store with none of the runs (mlflow.db deleted, or another --tracking-uri). A new file each
        time: this process's MLflow keeps its connection to a deleted one."""
        return with_store(tmp_path, name), run_study(tmp_path, str(path), "--storage", storage, "--tracking-uri",
                                                     f"sqlite:///{tmp_path / name}", *extra, check=check,
                                                     cluster=shared_ray)

    db, done = in_new_store("wiped.db")  # the finished Ray experiment is all that is left
    assert "2 trials (0 cached)" in done.stdout
    client = MlflowClient(f"sqlite:///{db}")
    runs = trial_runs(db, "wiped")
    assert {r.info.run_name: r.data.metrics for r in runs} == before  # logged again from Ray's own record
    for run in runs:
        assert run.info.status == "FINISHED" and steps(db, run) == [1, 2]
        assert {"model.pt", "config.yaml"} <= {a.path for a in client.list_artifacts(run.info.run_id)}

    (tuner,) = (tmp_path / "shared").glob("wiped-*/tuner.pkl")
    tuner.write_bytes(tuner.read_bytes()[:100])  # cut short (a full disk): not restored; nothing fails
    db, cut = in_new_store("damaged.db")
    warning = [line for line in cut.stderr.splitlines() if "not restoring the Ray experiment" in line]
    assert len(warning) == 1 and "tuner.pkl" in warning[0] and "Traceback" not in cut.stderr, cut.stderr[-3000:]
    assert "2 trials (0 cached)" in cut.stdout and "0 failed" in cut.stdout  # trained again, to the same numbers
    assert {r.info.run_name: r.data.metrics["test_acc"] for r in trial_runs(db, "wiped")} == {
        name: metrics["test_acc"] for name, metrics in before.items()}


def overwritten(driver, db: Path) -> None:
    with open(db, "r+b") as store:
        store.write(b"\0" * 16384)


def deleted(driver, db: Path) -> None:
    db.unlink()


@pytest.mark.parametrize("hit, said", [(overwritten, "the study stopped: writing to MLflow failed"),
                                       (deleted, "was deleted while the study ran")])
def test_store_failing_mid_study_stops_with_one_line(tmp_path, shared_ray, hit, said):
    # ended within hit_after_the_first_epoch's 120 s (a deleted store was waited for, --tracking-patience's 600 s)
    code, output, _ = hit_after_the_first_epoch(tmp_path, "broken", hit, shared_ray)
    assert code == 2, output[-3000:]
    line = one_line_error(output)  # and no traceback: MLflow's logging of database errors is off
    assert said in line and "run the same command again" in line


def test_relative_data_dir_is_the_drivers(tmp_path, shared_ray):
    write_fake_cifar(tmp_path / "cifar", "cifar10", per_file=20)
    path = small_study(tmp_path, name="cifar", epochs=1, variants={"A": {}}, seeds=[0])
    path.write_text(path.read_text().replace("dataset: digits", "dataset: cifar10\n  data_dir: cifar\n  kernel: eager"))
    done = run_study(tmp_path, str(path), "--storage", str(tmp_path / "it's here"),  # a quote in MLflow filters
                     cluster=shared_ray)
    assert "0 failed" in done.stdout and list((tmp_path / "it's here").glob("cifar-*/*/checkpoint_*"))
    (run,) = trial_runs(tmp_path / "mlflow.db", "cifar")
    assert run.info.status == "FINISHED" and run.data.params["data_dir"] == str(tmp_path / "cifar")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")
def test_a_full_disk_ends_in_one_line_and_the_rerun_finishes_every_run(tmp_path, shared_ray):
    """The store, the checkpoints and the artifacts on a 2 MB tmpfs: the study fills it; once there is room again,
    the same command finishes the study, each epoch logged once, nothing left RUNNING."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        path = small_study(small, name="full", epochs=10, variants={"A": {}}, seeds=[0])  # full within a few epochs
        done = run_study(small, str(path), check=False, cluster=shared_ray)
        assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
        assert "is full" in one_line_error(done.stderr), done.stderr[-3000:]
        subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
        again = run_study(small, str(path), cluster=shared_ray)
        assert "Traceback" not in again.stderr and "0 failed" in again.stdout, again.stderr[-3000:]
        (run,) = trial_runs(small / "mlflow.db", "full")
        assert run.info.status == "FINISHED" and steps(small / "mlflow.db", run) == list(range(1, 11))
        assert [p.info.status for p in parent_runs(small / "mlflow.db", "full")].count("RUNNING") == 0
    finally:
        subprocess.run(["umount", "--lazy", str(small)], check=False)
