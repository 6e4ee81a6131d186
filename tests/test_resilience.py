"""Crashes, restarts, divergence and caching, with real processes killed by real signals."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from isnm import train
from study.records import read_runs
from study.design.adaptive import MAX, SeedRule
from study.design.load import load_study
from study.design.plan import plan_trials
from tests.studies import checkpoints, finished_output, loopback_env, run_study, small_study, start_study, steps, trial_runs, wait_for

pytestmark = pytest.mark.slow  # real Ray, MLflow and processes


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def trial_workers(driver: int) -> list[int]:
    """PIDs of the driver's Ray workers running a trial (their process title names the trainable's actor)."""
    out = subprocess.run(["pgrep", "-f", "ray::ImplicitFunc"], capture_output=True, text=True).stdout
    mine = []
    for pid in map(int, out.split()):
        ancestor = pid
        while ancestor > 1 and ancestor != driver:
            ancestor = parent_of(ancestor)
        if ancestor == driver:
            mine.append(pid)
    return mine


def test_killed_trial_worker_resumes_from_its_checkpoint(tmp_path):
    path = small_study(tmp_path, name="killworker", epochs=5, variants={"GSG": {"surrogate.schedule": "gradual"}},
                       seeds=[3])
    db = tmp_path / "mlflow.db"
    driver = start_study(tmp_path, str(path))
    try:
        wait_for(lambda: checkpoints(tmp_path), 240, "the first epoch's checkpoint", driver)
        workers = wait_for(lambda: trial_workers(driver.pid), 30, "the trial's worker", driver)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        output = finished_output(driver, 300)
    finally:
        driver.kill()
    assert driver.returncode == 0, output[-3000:]
    (run,) = trial_runs(db, "killworker")
    assert run.info.status == "FINISHED" and run.data.tags.get("retries") == "1"
    assert steps(db, run) == [1, 2, 3, 4, 5]  # every epoch exactly once
    (trial,) = plan_trials(load_study(path))
    torch.set_num_threads(1)  # the trial had one CPU
    reference = train(trial.config)
    assert run.data.metrics["test_acc"] == reference["test_acc"]
    assert run.data.metrics["train_loss"] == pytest.approx(reference["train_loss"], rel=0, abs=1e-12)


def test_killed_driver_resumes_on_rerun_without_repeating_work(tmp_path):
    # one trial at a time: the kill follows the first trial's end, and the second, of 3 epochs, remains
    path = small_study(tmp_path, name="killdriver", epochs=3, max_concurrent=1, seeds=[0])
    db = tmp_path / "mlflow.db"
    driver = start_study(tmp_path, str(path))
    try:
        wait_for(lambda: checkpoints(tmp_path), 240, "the first checkpoint", driver)  # the store exists by now
        wait_for(lambda: [r for r in trial_runs(db, "killdriver") if r.info.status == "FINISHED"], 300,
                 "a finished trial", driver)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        driver.kill()
    before = {r.info.run_id: r.info.end_time for r in trial_runs(db, "killdriver") if r.info.status == "FINISHED"}
    assert len(before) < 2, "the study ended before the driver was killed"
    status = subprocess.run([sys.executable, "-m", "study.status", "killdriver"], cwd=tmp_path, env=loopback_env(),
                            capture_output=True, text=True, timeout=120).stdout
    assert "RUNNING, but no driver runs it now (killed)" in status, status  # nobody stopped it cleanly
    done = run_study(tmp_path, str(path))
    assert "resuming the interrupted study (" in done.stdout and "1 trial(s) done" in done.stdout, done.stdout[-3000:]
    runs = trial_runs(db, "killdriver")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 2 and len({r.data.tags["config_hash"] for r in finished}) == 2
    assert not [r for r in runs if r.info.status == "RUNNING"]
    for run in finished:
        assert steps(db, run) == [1, 2, 3]
        if run.info.run_id in before:  # finished before the kill: not trained again
            assert run.info.end_time == before[run.info.run_id]
    assert "0 failed" in done.stdout


def test_finished_configs_are_cached_across_invocations_and_study_files(tmp_path, shared_ray):
    one_variant = {"GSG": {"surrogate.schedule": "gradual"}}
    first = small_study(tmp_path, name="first", epochs=1, variants=one_variant)
    db = tmp_path / "mlflow.db"
    run_study(tmp_path, str(first), cluster=shared_ray)
    again = run_study(tmp_path, str(first), cluster=shared_ray)
    assert "2 trials (2 cached)" in again.stdout and " started\n" not in again.stdout  # nothing trained
    assert len(trial_runs(db, "first")) == 2

    second = small_study(tmp_path, name="second", epochs=1, variants=one_variant, seeds=[1, 2])  # seed 1 overlaps
    out = run_study(tmp_path, str(second), cluster=shared_ray).stdout
    assert "2 trials (1 cached)" in out
    runs = trial_runs(db, "second")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    copies = [r for r in runs if "cached_from" in r.data.tags]
    assert len(copies) == 1 and all(steps(db, r) == [1] for r in copies)

    rerun = run_study(tmp_path, str(first), "--rerun", cluster=shared_ray)
    assert "2 trials (0 cached)" in rerun.stdout
    assert len([r for r in trial_runs(db, "first") if r.info.status == "FINISHED"]) == 4


def test_diverged_trial_fails_alone_and_is_counted(tmp_path, shared_ray):
    path = small_study(tmp_path, name="diverge", epochs=2, seeds=[0],
                       variants={"sane": {}, "wild": {"lr": 1e37}})
    done = run_study(tmp_path, str(path), check=False, cluster=shared_ray)
    assert done.returncode == 1
    assert "failed: training diverged: loss nan at epoch 1, step 2" in done.stdout and "1 failed" in done.stdout
    runs = {r.info.run_name: r for r in trial_runs(tmp_path / "mlflow.db", "diverge")}
    assert runs["sane seed=0"].info.status == "FINISHED"
    assert runs["wild seed=0"].info.status == "FAILED"
    assert runs["wild seed=0"].data.tags["error"] == "training diverged: loss nan at epoch 1, step 2"
    from study.report.cli import main as report
    assert report(["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--out", str(tmp_path / "r")]) == 0
    assert "2 trials planned: 1 finished, 1 failed" in (tmp_path / "r/diverge.md").read_text()


def test_killed_adaptive_study_resumes_and_its_stopping_rule_holds(tmp_path):
    """A driver SIGKILLed after the searcher asked for seeds beyond `min`: the same command resumes the experiment
    (its searcher's state restored with it); every trial the results ask for runs once, none twice, and at the end
    every comparison has stopped where the rule says, on the seeds the store holds."""
    path = small_study(tmp_path, name="killadaptive", epochs=1, max_concurrent=1,
                       variants={"hard": {}, "soft": {"neuron.reset": "soft"}},
                       seeds={"min": 2, "max": 4, "target": 0.01})  # a target no seeds reach: every row runs to max
    db = tmp_path / "mlflow.db"

    def status() -> str:  # python -m study.status, as a user on another machine would ask
        from study.status.cli import study_status
        return study_status(MlflowClient(f"sqlite:///{db}"), "killadaptive", str(db))

    driver = start_study(tmp_path, str(path))
    try:
        wait_for(lambda: "more seeds:" in driver.log.read_text(), 300, "a seed added", driver)
        running = wait_for(lambda: (lambda now: now if "1 running" in now else None)(status()), 60,
                           "a running trial in study.status", driver)
        assert "asked for so far (adaptive seeds: 4 to 8)" in running and "RUNNING" in running.splitlines()[0]
        wait_for(lambda: len([r for r in trial_runs(db, "killadaptive") if r.info.status == "FINISHED"]) >= 5, 300,
                 "five finished trials", driver)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        driver.kill()
    before = {r.data.tags["config_hash"]: r.info.end_time for r in trial_runs(db, "killadaptive")
              if r.info.status == "FINISHED"}
    assert 5 <= len(before) < 8, "the kill came too late"
    # the killed driver's trial runs stay RUNNING in the store until the next study.run closes them; status sees that
    # no driver holds the study's lock and counts them interrupted
    after = status()
    assert f"{len(before)} finished" in after and "0 running" in after, after
    assert after.splitlines()[0].endswith("RUNNING, but no driver runs it now (killed)") and "nothing runs now" in after
    done = run_study(tmp_path, str(path))
    runs = trial_runs(db, "killadaptive")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    hashes = [r.data.tags["config_hash"] for r in finished]
    assert len(hashes) == len(set(hashes)) == 8  # none twice; 2 rows x 4 seeds, as the target asks
    assert not [r for r in runs if r.info.status == "RUNNING"]
    for run in finished:
        assert steps(db, run) == [1]
        if run.data.tags["config_hash"] in before:  # finished before the kill: not trained again
            assert run.info.end_time == before[run.data.tags["config_hash"]]
    study = load_study(path)
    rule = SeedRule(study, plan_trials(study))
    client = MlflowClient(f"sqlite:///{db}")
    decision = rule.decide(rule.recorded(list(read_runs(client, [client.get_experiment_by_name("killadaptive")
                                                                 .experiment_id], "trial")), failed=True))
    assert decision.settled and {t.config_hash for t in rule.needed(decision)} == set(hashes)
    assert [v.state for v in decision.verdicts] == [MAX]
    assert "soft vs hard: 4 seeds" in done.stdout and "8 trials" in done.stdout, done.stdout
    from study.report.cli import main as report
    assert report(["--tracking-uri", f"sqlite:///{db}", "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r/killadaptive.md").read_text()
    assert status().splitlines()[1:] == ["  trials  8 asked for (adaptive seeds: 4 to 8): 8 finished, 0 failed, "
                                         "0 running, 0 not run", "  epochs  8 of 8 (100%)", "  left    nothing"]
    assert "adaptive seeds: 2 to 4 per table cell" in text and "8 trials planned: 8 finished" in text
    assert "| paired | 4 | max reached |" in text  # the comparison's seeds, and why it stopped
