"""study.report on real MLflow runs written by the tracking code into a temp sqlite store."""
from collections import Counter

import mlflow
import pytest
import numpy as np
import yaml
from mlflow.tracking import MlflowClient

from study.records import read_runs
from study.records import Status
from study.report.sources import runs_frame
from study.report.cli import main
from study.report.tables import counts_line
from study.design.load import load_study
from study.design.plan import plan_trials
from tests.stores import STUDY, write_spec, write_store

# final test_acc per trial, or the run's fate
OUTCOME = {"A seed=0": 0.90, "A seed=1": 0.92, "B seed=0": 0.95, "B seed=1": "FAILED", "C seed=0": "RUNNING",
           "C seed=1": "KILLED"}


@pytest.fixture()
def tiny_table_store(tmp_path, monkeypatch, mlflow_uri):
    """(this test's folder, the store's URI): one invocation of STUDY recorded with OUTCOME, the test in that folder."""
    monkeypatch.chdir(tmp_path)
    return tmp_path, write_store(tmp_path, STUDY, OUTCOME, mlflow_uri)


def test_table_is_exact(tiny_table_store, capsys):
    folder, uri = tiny_table_store
    global_uri = mlflow.get_tracking_uri()
    assert main(["--tracking-uri", uri, "--out", str(folder / "reports")]) == 0
    assert mlflow.get_tracking_uri() == global_uri  # the report reads through its own client only
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
    assert "| B | — | — | — | — | — |" in text  # one finished seed: no interval
    assert (folder / "reports/tiny_table-curves.png").stat().st_size > 0
    assert "![test_acc per epoch](tiny_table-curves.png)" in text


def test_best_stat_chooses_each_runs_epoch_by_val_acc_not_test_acc(tiny_table_store):
    folder, uri = tiny_table_store
    assert main(["--tracking-uri", uri, "--out", str(folder / "r"), "--stat", "best", "--format", "csv"]) == 0
    text = (folder / "r/tiny_table.md").read_text()
    assert "| A | 91.00 ± 1.41 |" in text  # epoch 2's test_acc, not 92.00
    assert "test_acc at each run's epoch of best val_acc (chosen on validation data, not on test), mean ± " in text
    assert main(["--tracking-uri", uri, "--out", str(folder / "v"), "--stat", "best", "--metric", "val_acc"]) == 0
    assert "| A | 91.00 ± 1.41 |" in (folder / "v/tiny_table.md").read_text()
    assert "Best val_acc over each run's epochs, mean ± " in (folder / "v/tiny_table.md").read_text()
    assert (folder / "r/tiny_table.csv").read_text().count("\n") == 7  # header + 6 trial runs


def test_plots_are_logged_to_the_parent_run(tiny_table_store):
    folder, uri = tiny_table_store
    main(["--tracking-uri", uri, "--out", str(folder / "reports")])
    client = MlflowClient(uri)
    parent = client.search_runs([client.get_experiment_by_name("tiny_table").experiment_id], "tags.kind = 'study'")[0]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {
        "report/tiny_table-curves.png", "report/tiny_table-schedule.png"}


def test_function_by_schedule_table_with_firing_and_energy_columns(tmp_path, monkeypatch, mlflow_uri):
    monkeypatch.chdir(tmp_path)
    spec = {"name": "shapes", "base": {"dataset": "digits", "arch": "tiny", "epochs": 2,
                                       "surrogate": {"shape": "cosine", "update": "step"}},
            "grid": {"surrogate.function": ["tanh", "arctan"], "surrogate.schedule": ["fixed", "gradual"]},
            "seeds": [0, 1],
            "table": {"rows": "surrogate.function", "columns": ["surrogate.schedule"], "extra": ["spike_rate", "energy"]}}
    trials = plan_trials(load_study(write_spec(tmp_path, spec)))
    outcome = {t.name: 0.5 + 0.05 * i for i, t in enumerate(trials) if t.name != "base function=arctan schedule=gradual seed=1"}
    # layer rates 10% and 30% (+1 point per seed), energy 1 or 3 uJ against the ANN's 10
    activity = {t.name: {"spike_rate": 0.2 + 0.01 * t.seed, "spike_rate/body.0": 0.1 + 0.01 * t.seed,
                         "spike_rate/body.2": 0.3 + 0.01 * t.seed, "synops": 1e6, "energy": 1.0 + 2 * t.seed,
                         "energy_ann": 10.0} for t in trials}
    uri = write_store(tmp_path, spec, outcome, mlflow_uri, activity)
    assert main(["--tracking-uri", uri, "--out", str(tmp_path / "reports")]) == 0
    text = (tmp_path / "reports/shapes.md").read_text()
    # a pivot: a column per schedule, then the extra metrics for each schedule in turn
    assert """| Surrogate | fixed | gradual | Spike rate (%), fixed | Spike rate (%), gradual | Energy (µJ/image), fixed | \
Energy (µJ/image), gradual |
|---|---|---|---|---|---|---|
| tanh | 52.50 ± 3.54 | 62.50 ± 3.54 | 20.50 ± 0.71 | 20.50 ± 0.71 | 2.0000 ± 1.4142 (0.20× ANN) | \
2.0000 ± 1.4142 (0.20× ANN) |
| arctan | 72.50 ± 3.54 | **80.00 (n=1)** | 20.50 ± 0.71 | 20.00 (n=1) | 2.0000 ± 1.4142 (0.20× ANN) | \
1.0000 (n=1) (0.10× ANN) |""" in text
    # paired: the same seeds a side, each seed's two runs 10 points apart, so no spread at all; 1 seed: none
    assert """| Surrogate | Δ gradual − fixed (pp) | 95% CI (pp) | p | p (Holm) | test |
|---|---|---|---|---|---|
| tanh | +10.00 | [+10.00, +10.00] | < 0.001 | < 0.001 | paired |
| arctan | — | — | — | — | — |""" in text
    assert "![firing rate per spiking layer](shapes-firing.png)" in text
    assert (tmp_path / "reports/shapes-firing.png").stat().st_size > 0
    assert (tmp_path / "reports/shapes-schedule.png").stat().st_size > 0  # the per-step cosine curve
    # accuracy against energy, the figure beside an SNN paper's table: every cell, the non-dominated ones ringed
    assert "![test accuracy against energy per image, non-dominated cells ringed](shapes-tradeoff.png)" in text
    assert (tmp_path / "reports/shapes-tradeoff.png").stat().st_size > 10_000


def test_unknown_study_and_missing_store_are_one_line_errors(tiny_table_store, tmp_path, capsys):
    folder, uri = tiny_table_store
    assert main(["nope", "--tracking-uri", uri]) == 2
    assert "no study 'nope'" in capsys.readouterr().err
    assert main(["--tracking-uri", f"sqlite:///{tmp_path / 'absent.db'}"]) == 2
    err = capsys.readouterr().err
    assert "no MLflow store at" in err and err.count("\n") == 1 and not (tmp_path / "absent.db").exists()


def test_several_metrics_are_a_table_each_with_their_differences(tiny_table_store):
    folder, uri = tiny_table_store
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
    assert "| Method | Δ vs A | 95% CI | p | p (Holm) | test |" in loss
    assert "![test_acc, train_loss per epoch](tiny_table-curves.png)" in text


def test_the_runs_sidecar_lists_every_run_used_as_mlflow_holds_it(tiny_table_store):
    import csv

    folder, uri = tiny_table_store
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


def test_cells_from_several_commits_are_flagged(tiny_table_store):
    folder, uri = tiny_table_store
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny_table").experiment_id
    run = client.search_runs([exp], "attributes.run_name = 'A seed=1'")[0]
    client.set_tag(run.info.run_id, "git_commit", "1" * 40)
    client.set_tag(run.info.run_id, "git_dirty", "true")
    assert main(["--tracking-uri", uri, "--out", str(folder / "c")]) == 0
    text = (folder / "c/tiny_table.md").read_text()
    assert "**cells come from 2 commits**: 0000000 (2 runs), 1111111+dirty (1 runs)" in text


def test_the_csv_of_every_run_is_what_mlflow_search_runs_gives(tiny_table_store, monkeypatch):
    folder, uri = tiny_table_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # mlflow.search_runs takes no store: it reads this
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny_table").experiment_id
    ours, theirs = runs_frame(list(read_runs(client, [exp]))), mlflow.search_runs([exp])
    assert sorted(ours.columns) == sorted(theirs.columns) and len(ours) == 7  # 6 trial runs and the parent
    assert ours.equals(theirs[ours.columns])


def test_counts_line_names_interrupted_trials_only_when_there_are_some():
    counts = {Status.FINISHED: 3, Status.FAILED: 1, Status.RUNNING: 1, Status.MISSING: 0}
    assert counts_line(Counter(counts)) == "5 trials planned: 3 finished, 1 failed, 1 running, 0 not run."
    assert counts_line(Counter({**counts, Status.INTERRUPTED: 2})) == (
        "7 trials planned: 3 finished, 1 failed, 1 running, 2 interrupted, 0 not run.")


# Paper Tables 2 and 3 (search_spaces/comparison.yaml): a table per data set, a constant Method column,
# the published mean ± std beside ours. The report only reads: cifar10 needs no files here.
COMPARISON = {
    "name": "comparison_shape", "base": {"dataset": "digits", "arch": "tiny", "epochs": 2, "timesteps": 5},
    "variants": {"digits": {"dataset": "digits"}, "CIFAR-10": {"dataset": "cifar10"}},
    "grid": {"arch": ["tiny", "vgg_small"]},
    "seeds": [0, 1],
    "table": {"split": "dataset", "method": "This work", "rows": ["arch"], "constants": ["timesteps"],
              "labels": {"digits": "Digits", "cifar10": "CIFAR-10", "tiny": "Tiny", "vgg_small": "VGG-small"},
              "paper": {"digits": {"tiny": [91.7, 0.31], "vgg_small": 93.0},
                        "cifar10": {"vgg_small": [90.83, 0.26]}}},
}
COMPARISON_OUTCOME = {
    "digits arch=tiny seed=0": 0.90, "digits arch=tiny seed=1": 0.92,
    "digits arch=vgg_small seed=0": 0.95, "digits arch=vgg_small seed=1": 0.96,
    "CIFAR-10 arch=tiny seed=0": 0.60, "CIFAR-10 arch=tiny seed=1": "FAILED",
    "CIFAR-10 arch=vgg_small seed=0": 0.70, "CIFAR-10 arch=vgg_small seed=1": 0.74,
}


def test_a_split_table_is_one_table_per_value_with_method_labels_and_paper(tmp_path, monkeypatch, mlflow_uri):
    monkeypatch.chdir(tmp_path)
    uri = write_store(tmp_path, COMPARISON, COMPARISON_OUTCOME, mlflow_uri)
    assert main(["--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r/comparison_shape.md").read_text() == """\
# comparison_shape

Ours: digits/cifar10, tiny/vgg_small, T=5, 2 epochs, seeds 0, 1.

## Digits

| Method | Architecture | TimeStep | Accuracy (%) | Paper (%) | Δ |
|---|---|---|---|---|---|
| This work | Tiny | 5 | 91.00 ± 1.41 | 91.70 ± 0.31 | -0.70 |
| This work | VGG-small | 5 | **95.50 ± 0.71** | 93.00 | +2.50 |

## CIFAR-10

| Method | Architecture | TimeStep | Accuracy (%) | Paper (%) | Δ |
|---|---|---|---|---|---|
| This work | Tiny | 5 | 60.00 (n=1) | — | — |
| This work | VGG-small | 5 | **72.00 ± 2.83** | 90.83 ± 0.26 | -18.83 |

Final test_acc, mean ± sample std over seeds; n = finished seeds where fewer than planned; best in bold; \
Δ = ours − paper.

### Differences to the first row (Digits)

| Architecture | Δ vs Tiny (pp) | 95% CI (pp) | p | p (Holm) | test |
|---|---|---|---|---|---|
| VGG-small | +4.50 | [-2.42, +11.42] | 0.092 | 0.092 | Welch |

Smallest difference each comparison detects with 80% power (α = 0.05, two-sided; from the observed spread and \
seeds): 9.00 pp. The difference is smaller: with these seeds a real difference of that size is missed more often \
than not, so a p-value above the level says little.

8 trials planned: 7 finished, 1 failed, 0 running, 0 not run.

Provenance: 7 runs; commit 0000000; torch unknown; unknown. Each run, its id and config hash: \
`comparison_shape.runs.csv` (re-train one with `python -m study.reproduce RUN_ID`).

![test_acc per epoch](comparison_shape-curves.png)

![surrogate schedule](comparison_shape-schedule.png)
"""


# Paper Table 4 (search_spaces/timesteps.yaml): rows data set then network, a column of time steps; a row
# value repeated from the line above is left blank, as the paper prints it.
TIMESTEPS = {
    "name": "timesteps_shape", "base": {"dataset": "digits", "arch": "tiny", "epochs": 2},
    "variants": {"digits": {"dataset": "digits"}, "CIFAR-10": {"dataset": "cifar10"}},
    "grid": {"arch": ["tiny", "vgg_small"], "timesteps": [1, 5]},
    "seeds": [0],
    "table": {"rows": ["dataset", "arch", "timesteps"],
              "labels": {"digits": "Digits", "cifar10": "CIFAR-10", "tiny": "Tiny", "vgg_small": "VGG"},
              "paper": {"cifar10": {"vgg_small": {1: 91.25, 5: 91.7}}}},
}
TIMESTEPS_OUTCOME = {
    "digits arch=tiny timesteps=1 seed=0": 0.80, "digits arch=tiny timesteps=5 seed=0": 0.85,
    "digits arch=vgg_small timesteps=1 seed=0": 0.82, "digits arch=vgg_small timesteps=5 seed=0": 0.88,
    "CIFAR-10 arch=tiny timesteps=5 seed=0": 0.50, "CIFAR-10 arch=vgg_small timesteps=1 seed=0": 0.60,
    "CIFAR-10 arch=vgg_small timesteps=5 seed=0": "RUNNING",  # and CIFAR-10 tiny T=1 never started
}


def test_repeated_row_values_are_blank_and_labelled(tmp_path, monkeypatch, mlflow_uri):
    monkeypatch.chdir(tmp_path)
    uri = write_store(tmp_path, TIMESTEPS, TIMESTEPS_OUTCOME, mlflow_uri)
    assert main(["--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r/timesteps_shape.md").read_text()
    assert text.startswith("""\
# timesteps_shape

Ours: digits/cifar10, tiny/vgg_small, T=1/5, 2 epochs, seeds 0.

| Dataset | Architecture | TimeStep | Accuracy (%) | Paper (%) | Δ |
|---|---|---|---|---|---|
| Digits | Tiny | 1 | 80.00 | — | — |
|  |  | 5 | 85.00 | — | — |
|  | VGG | 1 | 82.00 | — | — |
|  |  | 5 | **88.00** | — | — |
| CIFAR-10 | Tiny | 1 | — | — | — |
|  |  | 5 | 50.00 | — | — |
|  | VGG | 1 | 60.00 | 91.25 | -31.25 |
|  |  | 5 | — | 91.70 | — |

Final test_acc, mean ± sample std over seeds; n = finished seeds where fewer than planned; best in bold; \
Δ = ours − paper.

8 trials planned: 6 finished, 0 failed, 1 running, 1 not run.
""")
    with (tmp_path / "r/timesteps_shape.runs.csv").open() as file:
        assert [line.split(",")[0] for line in file][1:] == [
            "Digits / Tiny / 1", "Digits / Tiny / 5", "Digits / VGG / 1", "Digits / VGG / 5", "CIFAR-10 / Tiny / 5",
            "CIFAR-10 / VGG / 1"]  # the sidecar names every cell in full


# tau x reset over two seeds, grid only: rows grouped by tau whatever the grid's order, a column per reset
TAU_RESET = {
    "name": "tau_reset", "base": {"dataset": "digits", "arch": "tiny", "epochs": 2},
    "grid": {"neuron.reset": ["hard", "soft"], "neuron.tau": [1.5, 2.0, 3.0]}, "seeds": [0, 1],
    "table": {"rows": "neuron.tau", "columns": ["neuron.reset"], "labels": {"neuron.tau": "τ"}},
}


def test_rows_and_columns_are_a_pivot_with_each_rows_differences(tmp_path, monkeypatch, mlflow_uri):
    monkeypatch.chdir(tmp_path)
    trials = plan_trials(load_study(write_spec(tmp_path, TAU_RESET)))
    tau = {1.5: 0.80, 2.0: 0.85, 3.0: 0.90}
    outcome = {t.name: tau[t.config["neuron"]["tau"]] + (0.04 + 0.005 * t.seed if t.config["neuron"]["reset"] == "soft"
                                                          else 0) + 0.01 * t.seed for t in trials}
    uri = write_store(tmp_path, TAU_RESET, outcome, mlflow_uri)
    assert main(["--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r/tau_reset.md").read_text()
    assert """| τ | hard | soft |
|---|---|---|
| 1.5 | 80.50 ± 0.71 | 84.75 ± 1.06 |
| 2.0 | 85.50 ± 0.71 | 89.75 ± 1.06 |
| 3.0 | 90.50 ± 0.71 | **94.75 ± 1.06** |""" in text
    assert """### Differences between the neuron.reset columns, row by row

| τ | Δ soft − hard (pp) | 95% CI (pp) | p | p (Holm) | test |
|---|---|---|---|---|---|
| 1.5 | +4.25 | [+1.07, +7.43] | 0.037 | 0.187 | paired |""" in text  # scipy: ttest_rel([84, 85.5], [80, 81]); Holm: x5
    # (with the 2 interactions, which are none: soft - hard is the same at every tau, to the last bit of rounding)
    assert "| 3.0 | soft | +0.00 | [+0.00, +0.00] | 1.000 | 1.000 | paired |" in text
    assert "The data shows no interaction: no change has Holm p < 0.05." in text




def test_a_table_compares_rows_columns_or_both_and_prints_the_interaction_held_to_a_hand_computation(
        tmp_path, monkeypatch, mlflow_uri):
    """Does soft reset's benefit depend on tau? Soft helps more at larger tau here: an interaction."""
    from scipy import stats

    monkeypatch.chdir(tmp_path)
    both = {**TAU_RESET, "table": {**TAU_RESET["table"], "compare": "both"}, "seeds": [0, 1, 2]}
    trials = plan_trials(load_study(write_spec(tmp_path, both)))
    tau = {1.5: 0.80, 2.0: 0.85, 3.0: 0.90}
    soft = {1.5: 0.01, 2.0: 0.03, 3.0: 0.06}
    noise = {0: 0.0, 1: 0.013, 2: -0.007}

    def value(t):
        cfg = t.config["neuron"]
        return tau[cfg["tau"]] + (soft[cfg["tau"]] + noise[t.seed] * cfg["tau"] if cfg["reset"] == "soft" else 0) \
            + 0.01 * t.seed

    uri = write_store(tmp_path, both, {t.name: value(t) for t in trials}, mlflow_uri)
    assert main(["--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r/tau_reset.md").read_text()
    assert "### Differences between the neuron.reset columns, row by row" in text
    assert "### Differences to the first row, column by column\n\n| τ | Column | Δ vs τ=1.5 (pp) |" in text
    assert "### Interaction: does each τ's difference to the first change across the neuron.reset columns?" in text
    # the 3.0 row: (soft - hard at 3.0) - (soft - hard at 1.5), per seed, as a one-sample t-test
    per_seed = [100 * ((soft[3.0] + noise[s] * 3.0) - (soft[1.5] + noise[s] * 1.5)) for s in (0, 1, 2)]
    result = stats.ttest_1samp(per_seed, 0.0)
    low, high = result.confidence_interval(0.95)
    interactions = text.split("### Interaction: ")[1].split("###")[0]
    line = next(line for line in interactions.splitlines() if line.startswith("| 3.0 | soft | "))
    assert line.startswith(f"| 3.0 | soft | {np.mean(per_seed):+.2f} | [{low:+.2f}, {high:+.2f}] | "
                           f"{result.pvalue:.3f} |"), line
    assert "The data shows an interaction: " in text or "The data shows no interaction: " in text
    assert "Holm's strictest α = 0.05/9" in text  # 3 column, 4 row and 2 interaction tests adjusted together

def test_a_table_of_one_column_has_no_column_differences(tmp_path, monkeypatch, mlflow_uri):
    """A column key with one value (a grid narrowed to T=2, say) left nothing to compare, and the report crashed."""
    monkeypatch.chdir(tmp_path)
    one = {**TAU_RESET, "grid": {"neuron.reset": ["hard"], "neuron.tau": [1.5, 2.0]}}
    trials = plan_trials(load_study(write_spec(tmp_path, one)))
    uri = write_store(tmp_path, one, {t.name: 0.8 + 0.01 * t.seed for t in trials}, mlflow_uri)
    assert main(["--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r/tau_reset.md").read_text()
    assert "| τ | hard |" in text and "Differences between" not in text

def test_an_edited_table_is_reported_and_rendered_with_file(tmp_path, monkeypatch, mlflow_uri, capsys):
    monkeypatch.chdir(tmp_path)
    trials = plan_trials(load_study(write_spec(tmp_path, TAU_RESET)))
    uri = write_store(tmp_path, TAU_RESET, {t.name: 0.8 + 0.01 * t.seed for t in trials}, mlflow_uri)
    edited = yaml.safe_load((tmp_path / "tau_reset.yaml").read_text())  # the file study.run was given (tag study_file)
    edited["table"] = {"rows": "neuron.reset", "columns": ["neuron.tau"]}
    (tmp_path / "tau_reset.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    assert main(["--tracking-uri", uri, "--out", str(tmp_path / "stored")]) == 0
    out, err = capsys.readouterr()
    assert "| τ | hard | soft |" in out  # the layout stored with the runs
    assert err == (f"note: the table: in {tmp_path / 'tau_reset.yaml'} has changed since study.run stored it with "
                   f"these runs; this report uses the stored one, and `python -m study.report tau_reset --file "
                   f"{tmp_path / 'tau_reset.yaml'}` the file's (nothing trains again)\n")
    assert main(["--tracking-uri", uri, "--out", str(tmp_path / "edited"), "--file", "tau_reset.yaml"]) == 0
    out, err = capsys.readouterr()
    assert "| neuron.reset | neuron.tau=1.5 | neuron.tau=2.0 | neuron.tau=3.0 |" in out and err == ""


def test_plots_tick_whole_epochs_and_end_at_the_last(tiny_table_store, monkeypatch):
    import matplotlib.pyplot as plt

    folder, uri = tiny_table_store
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # each plot, kept for a look once drawn
    assert main(["--tracking-uri", uri, "--out", str(folder / "reports")]) == 0
    curves, schedule = figures  # the runs logged 2 epochs (tests/stores.py)
    for ax in (curves.axes[0], *schedule.axes):
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(t == int(t) for t in ticks), ticks
        assert high == 2
    assert curves.axes[0].get_xlim()[0] == 1 and schedule.axes[0].get_xlim()[0] == 0


@pytest.mark.slow
def test_a_learned_beta_study_logs_each_layers_beta_and_the_report_draws_what_it_learned(tmp_path, shared_ray):
    from tests.studies import run_study, small_study, steps, trial_runs

    path = small_study(tmp_path, name="learnedbeta", epochs=2, seeds=[0],
                       variants={"GSG": {"surrogate.schedule": "gradual"},
                                 "learned": {"surrogate.schedule": "learned", "surrogate.beta_lr": 0.05}})
    run_study(tmp_path, str(path), cluster=shared_ray)
    runs = {r.data.tags["variant"]: r for r in trial_runs(tmp_path / "mlflow.db", "learnedbeta")}
    learned = runs["learned"]
    layers = {k for k in learned.data.metrics if k.startswith("beta/")}
    assert layers == {"beta/body.0", "beta/body.2"}
    assert all(steps(tmp_path / "mlflow.db", learned, key) == [1, 2] for key in layers)  # every epoch
    assert not any(k.startswith("beta/") for k in runs["GSG"].data.metrics)
    assert main(["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r/learnedbeta-schedule.png").stat().st_size > 0


def test_under_a_profile_the_paper_column_names_the_papers_setting_and_a_row_at_chance_is_flagged(tmp_path):
    """The demo trains digits at a quarter width for 6 epochs; the paper's figures are CIFAR-10's at 200: no Δ between
    the two. A row whose training loss stayed at ln 10 did not learn, and its accuracy says nothing."""
    from types import SimpleNamespace

    from study.design.config import Table
    from study.report.cells import Cell, Source
    from study.report.tables import not_learned_line, paper_setting, render_table

    spec = {"name": "p", "base": {"dataset": "cifar10", "arch": "vgg_small", "epochs": 200}, "seeds": [0, 1],
            "variants": {"A": {}, "B": {"neuron.reset": "soft"}},
            "profiles": {"demo": {"base": {"dataset": "digits", "width": 0.25, "epochs": 6}}}}
    path = write_spec(tmp_path, spec)
    assert paper_setting(load_study(path, "demo")) == "CIFAR-10, VGG-small, T=5, 200 epochs"
    assert paper_setting(load_study(path)) is None  # the file's own setting: the paper's, Δ drawn
    table = Table(paper={"A": 80.0, "B": 81.0})
    cells = [Cell(("A",), 2, [Source(f"a{s}", "A", s, "h", "c", "t", "cpu", 0.9) for s in (0, 1)]),
             Cell(("B",), 2, [Source(f"b{s}", "B", s, "h", "c", "t", "cpu", 0.1) for s in (0, 1)])]
    text = render_table(cells, table, "test_acc", (), table.paper, elsewhere="CIFAR-10, VGG-small, T=5, 200 epochs")
    assert text.splitlines()[0] == "| Method | Accuracy (%) | Paper (%), CIFAR-10, VGG-small, T=5, 200 epochs |"
    assert "| A | **90.00 ± 0.00** | 80.00 |" in text  # no Δ column
    runs = [SimpleNamespace(run_id=f"{v}{s}", params={"dataset": "digits"},
                            metrics={"train_loss": 0.3 if v == "a" else 2.28}) for v in "ab" for s in (0, 1)]
    assert not_learned_line(runs, cells, table).startswith(
        "Did not learn: B (final training loss 2.28; ln 10 = 2.30).")
    assert not_learned_line(runs[:2], cells[:1], table) == ""
