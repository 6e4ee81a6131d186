"""MlflowTracker's branches on a temp sqlite store, fed results shaped as Ray Tune hands them over.

The Tune side is stood in for by plain objects with the attributes the tracker reads (a trial's id and
config; a result's metrics, config, error, history and checkpoint); the MLflow side is real. The same
paths run end to end, with real Ray, in test_integrity.py and test_resilience.py (slow).
"""
from dataclasses import dataclass
from typing import Optional

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from study.design.load import load_study
from study.design.plan import plan_trials
from study.tracking.callback import MlflowTracker
from study.tracking.provenance import CodeState
from study.tracking.store import experiment_id
from study.tracking.writers import start_parent_run
from tests.studies import small_study

CODE = CodeState("0" * 40, False, "")
RAY_PATH = "/tmp/ray_results/itest-x"


@dataclass
class TuneTrial:
    trial_id: str
    config: dict
    checkpoint: Optional[object] = None


@dataclass
class TuneResult:
    metrics: dict
    config: dict
    error: Optional[Exception] = None
    metrics_dataframe: Optional[pd.DataFrame] = None
    checkpoint: Optional[object] = None


def epoch(n: int, trial_id: str, **extra) -> dict:
    return {"epoch": n, "test_acc": 0.5 + n / 100, "train_loss": 1.0 / n, "trial_id": trial_id,
            "node": "abcdef012345 127.0.0.1", "kernel": "eager", **extra}


@pytest.fixture()
def setup(tmp_path, mlflow_uri):
    study = load_study(small_study(tmp_path, epochs=3))
    trials = {t.name: t for t in plan_trials(study)}
    uri = mlflow_uri
    client = MlflowClient(uri)
    exp = experiment_id(client, study.name, uri)

    def tracker() -> MlflowTracker:
        """A tracker as one driver invocation makes it: its own parent run."""
        parent = start_parent_run(client, exp, study, CODE, RAY_PATH)
        made = MlflowTracker(uri, exp, parent, study, CODE, lambda config: trials[config["trial"]], RAY_PATH)
        made.setup()
        return made

    return client, exp, tracker


def started(tracker: MlflowTracker, name: str) -> tuple[MlflowTracker, TuneTrial]:
    """`tracker` told that the planned trial `name` started, as Tune's trial "t1"."""
    trial = TuneTrial("t1", {"trial": name})
    tracker.on_trial_start(0, [], trial)
    return tracker, trial


def runs(client, exp) -> dict:
    return {r.info.run_name: r for r in client.search_runs([exp], "tags.kind = 'trial'")}


def steps(client, run) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, "test_acc"))


def test_a_trial_that_reports_every_epoch_finishes(setup):
    client, exp, tracker = setup
    first, trial = started(tracker(), "ISNM seed=0")
    for n in (1, 2, 2, 3):  # epoch 2 re-reported, as a retried trial does after its restore
        first.on_trial_result(0, [], trial, epoch(n, "t1"))
    first.on_trial_complete(0, [], trial)
    run = runs(client, exp)["ISNM seed=0"]
    assert run.info.status == "FINISHED" and steps(client, run) == [1, 2, 3]
    assert run.data.tags["ray_node"] == "abcdef012345 127.0.0.1" and run.data.tags["kernel"] == "eager"


def test_a_trial_ending_short_of_its_epochs_is_never_finished(setup):
    client, exp, tracker = setup
    first, trial = started(tracker(), "ISNM seed=0")
    first.on_trial_result(0, [], trial, epoch(1, "t1"))
    first.on_trial_complete(0, [], trial)  # what an interrupted fit reports for a trial it stopped
    assert first.reconcile([]) == ["ISNM seed=0"]
    run = runs(client, exp)["ISNM seed=0"]
    assert run.info.status == "KILLED" and run.data.tags["interrupted"] == "1 of 3 epochs logged"


def test_a_restored_trial_continues_its_run_and_logs_each_epoch_once(setup):
    client, exp, tracker = setup
    first, trial = started(tracker(), "ISNM seed=0")
    first.on_trial_result(0, [], trial, epoch(1, "t1"))
    first.reconcile([])  # the driver stops: KILLED, interrupted
    second = tracker()  # the rerun restores the same Ray experiment: same trial id
    second.on_trial_start(0, [], trial)
    for n in (1, 2, 3):
        second.on_trial_result(0, [], trial, epoch(n, "t1", node="fedcba987654 127.0.0.2"))
    second.on_trial_complete(0, [], trial)
    (run,) = runs(client, exp).values()
    assert run.info.status == "FINISHED" and steps(client, run) == [1, 2, 3]
    assert "interrupted" not in run.data.tags
    assert run.data.tags["mlflow.parentRunId"] == second.parent_id  # the invocation that finished it
    assert run.data.tags["ray_nodes"] == "abcdef012345 127.0.0.1, fedcba987654 127.0.0.2"


def test_a_finished_run_replayed_by_a_restore_stays_untouched(setup):
    client, exp, tracker = setup
    first, trial = started(tracker(), "ISNM seed=0")
    for n in (1, 2, 3):
        first.on_trial_result(0, [], trial, epoch(n, "t1"))
    first.on_trial_complete(0, [], trial)
    before = runs(client, exp)["ISNM seed=0"]
    second = tracker()
    second.on_trial_start(0, [], trial)
    second.on_trial_result(0, [], trial, epoch(3, "t1", test_acc=0.0))
    second.on_trial_complete(0, [], trial)
    after = runs(client, exp)["ISNM seed=0"]
    assert after.info.end_time == before.info.end_time and after.data.metrics["test_acc"] == pytest.approx(0.53)
    assert after.data.tags["mlflow.parentRunId"] == first.parent_id


def test_reconcile_backfills_epochs_the_store_lacks_from_rays_history(setup):
    client, exp, tracker = setup
    first, trial = started(tracker(), "ISNM+GSG seed=1")
    first.on_trial_result(0, [], trial, epoch(3, "t1"))  # epochs 1 and 2 went to a store since wiped
    history = pd.DataFrame([epoch(n, "t1") for n in (1, 2, 3)])
    result = TuneResult(epoch(3, "t1"), trial.config, metrics_dataframe=history)
    assert first.reconcile([result]) == []
    run = runs(client, exp)["ISNM+GSG seed=1"]
    assert run.info.status == "FINISHED" and steps(client, run) == [1, 2, 3]


def test_a_trial_stopped_by_the_scheduler_finishes_with_the_reason(setup):
    client, exp, tracker = setup
    first, trial = started(tracker(), "ISNM seed=1")
    first.on_trial_result(0, [], trial, epoch(1, "t1"))
    first.on_trial_result(0, [], trial, epoch(2, "t1", done=True))  # ASHA's stop: done before the last epoch
    first.on_trial_complete(0, [], trial)
    run = runs(client, exp)["ISNM seed=1"]
    assert run.info.status == "FINISHED" and run.data.tags["stopped_early"] == "by the scheduler after epoch 2 of 3"


def test_a_diverged_trial_fails_with_the_trainings_own_words(setup):
    client, exp, tracker = setup
    first, trial = started(tracker(), "ISNM seed=0")
    first.on_trial_result(0, [], trial, {"epoch": 1, "diverged": "training diverged: loss nan at epoch 1, step 2",
                                         "trial_id": "t1"})
    first.on_trial_complete(0, [], trial)
    run = runs(client, exp)["ISNM seed=0"]
    assert run.info.status == "FAILED" and run.data.tags["error"] == "training diverged: loss nan at epoch 1, step 2"
