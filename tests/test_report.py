"""study.report on real MLflow runs written by the tracking code into a temp sqlite store."""
import math

import pytest
import yaml
from mlflow.tracking import MlflowClient

from study.config import load_study
from study.plan import plan_trials
from study.report import main, mean_std, welch
from study.provenance import CodeState
from study.tracking import create_trial_run, experiment_id, log_epoch, start_parent_run

CODE = CodeState("0" * 40, False, "")

STUDY = {
    "name": "tiny_table", "description": "A 3-row study with known values",
    "base": {"dataset": "digits", "arch": "tiny", "epochs": 2},
    "variants": {"A": {}, "B": {"neuron.reset": "soft"}, "C": {"surrogate.schedule": "fixed"}},
    "seeds": [0, 1],
    "table": {"rows": "variant", "metric": "test_acc", "paper": {"A": 90.0, "B": [95.0, 0.5], "C": 80.0}},
}
# final test_acc per trial, or the run's fate
OUTCOME = {"A seed=0": 0.90, "A seed=1": 0.92, "B seed=0": 0.95, "B seed=1": "FAILED", "C seed=0": "RUNNING",
           "C seed=1": "KILLED"}


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "tiny_table.yaml"
    path.write_text(yaml.safe_dump(STUDY, sort_keys=False))
    study = load_study(path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = experiment_id(client, study.name, uri)
    parent = start_parent_run(client, exp, study, CODE, "ray-exp")
    for trial in plan_trials(study):
        outcome = OUTCOME.get(trial.name)
        if outcome is None:
            continue  # never started
        run = create_trial_run(client, exp, parent, study.name, trial.as_dict(), CODE)
        final = outcome if isinstance(outcome, float) else 0.5
        # epoch 1 has the best test_acc, epoch 2 the best val_acc
        for epoch, acc, val in ((1, final + 0.01, final - 0.05), (2, final, final)):
            log_epoch(client, run, {"epoch": epoch, "test_acc": acc, "val_acc": val, "train_loss": 1 - val,
                                    "beta": 5.0, "alpha": 1.0})
        if outcome != "RUNNING":
            client.set_terminated(run, outcome if outcome in ("FAILED", "KILLED") else "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return tmp_path, uri


def test_table_is_exact(store, capsys):
    folder, uri = store
    assert main(["--tracking-uri", uri, "--out", str(folder / "reports")]) == 0
    text = (folder / "reports/tiny_table.md").read_text()
    assert text == capsys.readouterr().out.split("(written to")[0].rstrip("\n") + "\n"
    expected = """| Method | Accuracy (%) | Paper (%) | Δ |
|---|---|---|---|
| A | 91.00 ± 1.41 | 90.00 | +1.00 |
| B | **95.00 (n=1)** | 95.00 ± 0.50 | +0.00 |
| C | — | 80.00 | — |

Final test_acc, mean ± sample std over seeds; n = finished seeds where fewer than planned; best in bold; \
Δ = ours − paper."""
    assert expected in text
    assert "\n\n6 trials planned: 3 finished, 1 failed, 1 running, 1 interrupted, 0 not run.\n" in text
    assert "| B | — | — | — |" in text  # one finished seed: no interval
    assert (folder / "reports/tiny_table-curves.png").stat().st_size > 0
    assert "![test_acc per epoch](tiny_table-curves.png)" in text


def test_best_stat_chooses_each_runs_epoch_by_val_acc_not_test_acc(store):
    folder, uri = store
    assert main(["--tracking-uri", uri, "--out", str(folder / "r"), "--stat", "best", "--format", "csv"]) == 0
    assert "| A | 91.00 ± 1.41 |" in (folder / "r/tiny_table.md").read_text()  # epoch 2's test_acc, not 92.00
    assert main(["--tracking-uri", uri, "--out", str(folder / "v"), "--stat", "best", "--metric", "val_acc"]) == 0
    assert "| A | 91.00 ± 1.41 |" in (folder / "v/tiny_table.md").read_text()
    assert (folder / "r/tiny_table.csv").read_text().count("\n") == 7  # header + 6 trial runs


def test_plots_are_logged_to_the_parent_run(store):
    folder, uri = store
    main(["--tracking-uri", uri, "--out", str(folder / "reports")])
    client = MlflowClient(uri)
    parent = client.search_runs([client.get_experiment_by_name("tiny_table").experiment_id], "tags.kind = 'study'")[0]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {
        "report/tiny_table-curves.png", "report/tiny_table-schedule.png"}


def test_unknown_study_and_missing_store_are_one_line_errors(store, tmp_path, capsys):
    folder, uri = store
    assert main(["nope", "--tracking-uri", uri]) == 2
    assert "no study 'nope'" in capsys.readouterr().err
    assert main(["--tracking-uri", f"sqlite:///{tmp_path / 'absent.db'}"]) == 2
    err = capsys.readouterr().err
    assert "no MLflow store at" in err and err.count("\n") == 1 and not (tmp_path / "absent.db").exists()


@pytest.mark.parametrize("a, b", [([90.1, 91.3, 90.7], [92.0, 91.1, 93.4]), ([1.0, 2.0, 4.0, 8.0], [3.0, 3.5])])
def test_welch_agrees_with_scipy(a, b):
    from scipy import stats

    diff, low, high, p = welch(a, b)
    result = stats.ttest_ind(b, a, equal_var=False)
    interval = result.confidence_interval(0.95)
    assert diff == pytest.approx(sum(b) / len(b) - sum(a) / len(a))
    assert p == pytest.approx(result.pvalue)
    assert (low, high) == pytest.approx((interval.low, interval.high))


def test_sample_std():
    assert mean_std([90.0, 92.0]) == pytest.approx((91.0, math.sqrt(2)))
    assert math.isnan(mean_std([5.0])[1])


def test_several_metrics_are_a_table_each_with_their_differences(store):
    folder, uri = store
    path = folder / "tiny_table.yaml"
    path.write_text(path.read_text().replace("metric: test_acc", "metric: [test_acc, train_loss]"))
    client = MlflowClient(uri)
    parent = client.search_runs([client.get_experiment_by_name("tiny_table").experiment_id], "tags.kind = 'study'")[0]
    client.log_artifact(parent.info.run_id, str(path))  # the report reads the study file the parent run holds
    assert main(["--tracking-uri", uri, "--out", str(folder / "m")]) == 0
    text = (folder / "m/tiny_table.md").read_text()
    accuracy, loss = text.split("## Accuracy (%)")[1].split("## Train loss")
    assert "| A | 91.00 ± 1.41 | 90.00 | +1.00 |" in accuracy
    # the paper's figures are accuracies: no Paper column beside the loss
    assert "| Method | Train loss |\n" in loss and "| A | 0.0900 ± 0.0141 |" in loss
    assert "| B | **0.0500 (n=1)** |" in loss and "Δ = ours − paper" not in loss
    for section in (accuracy, loss):
        assert section.count("### Differences to the first row") == 1
    assert "| Method | Δ vs A | 95% CI | p (Welch) |" in loss
    assert "![test_acc, train_loss per epoch](tiny_table-curves.png)" in text


def test_the_runs_sidecar_lists_every_run_used_as_mlflow_holds_it(store):
    import csv

    folder, uri = store
    assert main(["--tracking-uri", uri, "--out", str(folder / "p")]) == 0
    client = MlflowClient(uri)
    with (folder / "p/tiny_table.runs.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 3  # the finished runs: A seeds 0 and 1, B seed 0
    for row in rows:
        run = client.get_run(row["run_id"])
        assert run.info.status == "FINISHED" and run.info.run_name == f"{row['variant']} seed={row['seed']}"
        assert row["config_hash"] == run.data.tags["config_hash"] and row["git_commit"] == "0000000"
        assert float(row["test_acc"]) == run.data.metrics["test_acc"] and row["cell"] == row["variant"]
    text = (folder / "p/tiny_table.md").read_text()
    assert "Provenance: 3 runs; commit 0000000; torch unknown;" in text and "`tiny_table.runs.csv`" in text


def test_cells_from_several_commits_are_flagged(store):
    folder, uri = store
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny_table").experiment_id
    run = client.search_runs([exp], "attributes.run_name = 'A seed=1'")[0]
    client.set_tag(run.info.run_id, "git_commit", "1" * 40)
    client.set_tag(run.info.run_id, "git_dirty", "true")
    assert main(["--tracking-uri", uri, "--out", str(folder / "c")]) == 0
    text = (folder / "c/tiny_table.md").read_text()
    assert "**cells come from 2 commits**: 0000000 (2 runs), 1111111+dirty (1 runs)" in text
