"""study.evaluate on a run recorded as the tracker records it (real training, a temp sqlite store), and the
report's eval_timesteps columns."""
import sqlite3
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from isnm.config import merged
from study.errors import StudyError
from study.evaluate.cli import main
from study.report.cli import main as report_main
from study.design.load import load_study
from study.tracking.provenance import code_state
from tests.stores import STUDY, TRAINED_CONFIG as CONFIG, record, write_store


def log_weights(client: MlflowClient, run_id: str, weights: dict) -> None:
    """`weights` as the run's model.pt, as study.tracking.callback.log_weights logs a finished trial's."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        torch.save(weights, path)
        client.log_artifact(run_id, str(path))


def test_the_trained_T_gives_the_runs_test_acc_and_every_T_is_logged_on_the_run(store, trained, capsys):
    client, exp, uri = store
    run_id = record(client, exp, CONFIG, trained, code_state())
    log_weights(client, run_id, trained["weights"])
    assert main([run_id, "--timesteps", "5", "2", "1", "--tracking-uri", uri]) == 0
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_acc_T5"] == run.data.metrics["test_acc"] == trained["epochs"][-1]["test_acc"]
    assert all(0 <= run.data.metrics[f"test_acc_T{t}"] <= 1 for t in (1, 2))
    assert [m.step for m in client.get_metric_history(run_id, "test_acc_T1")] == [2]  # the weights' epoch
    out = capsys.readouterr().out
    table = out.split("| T | test accuracy (%) |\n|---|---|\n")[1].split("\n\n")[0].splitlines()
    assert [line.split(" | ")[0] for line in table] == ["| 1", "| 2", "| 5 (trained)"]
    assert table[2] == f"| 5 (trained) | {100 * run.data.metrics['test_acc']:.2f} |"
    assert "at the trained T=5: " in out and "equal to the run's final test_acc to the last bit" in out
    assert f"logged test_acc_T1, test_acc_T2, test_acc_T5 on run {run_id}" in out


def test_a_test_acc_other_than_the_runs_at_the_trained_T_is_said(store, trained, capsys):
    client, exp, uri = store
    run_id = record(client, exp, CONFIG, trained, code_state())
    log_weights(client, run_id, trained["weights"])
    with sqlite3.connect(uri[len("sqlite:///"):]) as db:
        db.execute("UPDATE latest_metrics SET value = value + 1e-9 WHERE run_uuid = ? AND key = 'test_acc'", (run_id,))
    assert main([run_id, "--timesteps", "5", "--tracking-uri", uri]) == 0
    assert "the run's final test_acc is" in capsys.readouterr().out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    return err


def test_unknown_run_a_T_below_1_and_missing_artifacts_are_one_line_exit_2(store, trained, capsys):
    client, exp, uri = store
    assert main(["0" * 32, "--timesteps", "1", "--tracking-uri", uri]) == 2
    assert one_line_error(capsys).startswith("error: no run '000")
    run_id = record(client, exp, CONFIG, trained, code_state())  # config.yaml, no model.pt
    assert main([run_id, "--timesteps", "1", "0", "--tracking-uri", uri]) == 2
    assert one_line_error(capsys) == "error: --timesteps: got 0, expected integers >= 1\n"
    assert main([run_id, "--timesteps", "1", "--tracking-uri", uri]) == 2
    assert f"run {run_id} finished, but its model.pt is missing from the store's artifacts" in one_line_error(capsys)
    client.set_terminated(run_id, "KILLED")
    assert main([run_id, "--timesteps", "1", "--tracking-uri", uri]) == 2
    assert f"run {run_id} holds no model.pt: it ended KILLED" in one_line_error(capsys)
    bare = client.create_run(exp).info.run_id  # neither config.yaml nor params
    assert main([bare, "--timesteps", "1", "--tracking-uri", uri]) == 2
    assert f"run {bare} holds neither config.yaml nor params" in one_line_error(capsys)
    assert "test_acc_T1" not in client.get_run(run_id).data.metrics
    damaged = record(client, exp, CONFIG, trained, code_state())
    with tempfile.TemporaryDirectory() as tmp:  # a model.pt cut short, as a full disk leaves one
        path = Path(tmp) / "model.pt"
        torch.save({"w": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:100])
        client.log_artifact(damaged, str(path))
    assert main([damaged, "--timesteps", "1", "--tracking-uri", uri]) == 2
    assert f"run {damaged}: its model.pt cannot be read (" in one_line_error(capsys)
    empty = Path(uri.removeprefix("sqlite:///")).with_name("empty.db")
    empty.touch()  # a 0-byte file: MLflow would make its tables in it
    assert main([run_id, "--timesteps", "1", "--tracking-uri", f"sqlite:///{empty}"]) == 2
    assert "no MLflow store at" in one_line_error(capsys) and empty.stat().st_size == 0


def test_a_cached_copy_is_evaluated_with_the_weights_of_the_run_it_copies(store, trained, capsys):
    client, exp, uri = store
    source = record(client, exp, CONFIG, trained, code_state())
    log_weights(client, source, trained["weights"])
    copy = record(client, exp, CONFIG, trained, code_state(), "copy")
    client.set_tag(copy, "cached_from", source)
    assert main([copy, "--timesteps", "5", "--tracking-uri", uri]) == 0
    assert client.get_run(copy).data.metrics["test_acc_T5"] == trained["epochs"][-1]["test_acc"]
    assert "test_acc_T5" not in client.get_run(source).data.metrics


def test_the_report_puts_a_column_per_evaluated_T_beside_test_acc(tmp_path, monkeypatch, mlflow_uri):
    monkeypatch.chdir(tmp_path)
    spec = merged(STUDY, {"table": {"columns": ["eval_timesteps"], "metric": ["test_acc", "train_loss"]}})
    outcome = {"A seed=0": 0.90, "A seed=1": 0.92, "B seed=0": 0.95, "B seed=1": 0.97}
    uri = write_store(tmp_path, spec, outcome, mlflow_uri)
    client = MlflowClient(uri)
    evaluated = {"A seed=0": {1: 0.50, 2: 0.80}, "A seed=1": {1: 0.54, 2: 0.82}, "B seed=0": {2: 0.90}}
    for run in client.search_runs([client.get_experiment_by_name("tiny_table").experiment_id], "tags.kind = 'trial'"):
        for t, acc in evaluated.get(run.info.run_name, {}).items():
            client.log_metric(run.info.run_id, f"test_acc_T{t}", acc, step=2)
    assert report_main(["--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    accuracy, loss = (tmp_path / "r/tiny_table.md").read_text().split("## Accuracy (%)")[1].split("## Train loss")
    assert """
| Method | Accuracy (%) | Paper (%) | Δ | Accuracy at T=1 (%) | Accuracy at T=2 (%) |
|---|---|---|---|---|---|
| A | 91.00 ± 1.41 | 90.00 | +1.00 | 52.00 ± 2.83 | 81.00 ± 1.41 |
| B | **96.00 ± 1.41** | 95.00 ± 0.50 | +1.00 | — | 90.00 (n=1) |
| C | — | 80.00 | — | — | — |
""" in accuracy
    assert "| Method | Train loss |\n" in loss  # they are test accuracies: beside test_acc only


def test_eval_timesteps_needs_test_acc_among_the_metrics(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(merged(STUDY, {"table": {"columns": ["eval_timesteps"], "metric": "train_loss",
                                                            "paper": {}}})))
    with pytest.raises(StudyError, match=r"table\.metric: got 'train_loss', expected test_acc among the metrics"):
        load_study(path)
    path.write_text(yaml.safe_dump(merged(STUDY, {"table": {"columns": ["eval_timesteps"]}})))
    assert load_study(path).spec.table.keys == ["variant"]
