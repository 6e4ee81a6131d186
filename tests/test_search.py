"""A search study end to end: Optuna samples, ASHA stops, the tracker logs, the report ranks by val_acc."""
import pytest
import yaml
from mlflow.tracking import MlflowClient

from study.report.cli import main as report
from tests.studies import run_study

pytestmark = pytest.mark.slow  # real Ray, Optuna and MLflow

STUDY = {
    "name": "search", "base": {"dataset": "digits", "arch": "tiny", "epochs": 3, "timesteps": 2, "batch_size": 128,
                               "validation": 0.1, "surrogate": {"schedule": "gradual"}},
    "search": {"algorithm": "optuna", "num_samples": 4, "metric": "val_acc", "mode": "max",
               "space": {"lr": {"loguniform": [1e-4, 1e-2]}, "surrogate.alpha": {"choice": ["paper", "unit_peak"]}},
               "scheduler": {"asha": {"grace_period": 1, "reduction_factor": 2}}},
    "seeds": [5], "resources": {"cpu": 1}, "max_concurrent": 2,
}


def searched(tmp_path, study: dict, shared_ray) -> tuple[MlflowClient, list, str]:
    """(a client, the trial runs, the store's URI) of search `study`, run on the session's cluster."""
    path = tmp_path / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    run_study(tmp_path, str(path), cluster=shared_ray)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    return client, client.search_runs([client.get_experiment_by_name(study["name"]).experiment_id],
                                      "tags.kind = 'trial'"), uri


def test_a_search_samples_stops_early_and_ranks_on_validation(tmp_path, shared_ray):
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(STUDY, sort_keys=False))
    run_study(tmp_path, str(path), cluster=shared_ray)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("search").experiment_id
    trials = client.search_runs([exp], "tags.kind = 'trial'")
    assert len(trials) == 4 and {r.info.status for r in trials} == {"FINISHED"}
    assert {r.data.tags["variant"] for r in trials} == {"search"} and {r.data.params["seed"] for r in trials} == {"5"}
    assert len({r.data.tags["config_hash"] for r in trials}) == 4  # four distinct samples
    for run in trials:  # what TrialBook's search branch made of each sample: its name says its values
        assert run.info.run_name.startswith("lr=") and f"alpha={run.data.params['surrogate.alpha']}" in run.info.run_name
        logged = len(client.get_metric_history(run.info.run_id, "val_acc"))
        assert logged == 3 or run.data.tags["stopped_early"] == f"by the scheduler after epoch {logged} of 3"

    assert report(["--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r/search.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    ranked = sorted(trials, key=lambda r: -r.data.metrics["val_acc"])
    assert [float(line.split(" | ")[3]) for line in table] == [round(100 * r.data.metrics["val_acc"], 2) for r in ranked]
    overlay = yaml.safe_load(text.split("```yaml")[1].split("```")[0])
    best = ranked[0].data.params
    assert overlay == {"base": {"lr": float(best["lr"]), "surrogate": {"alpha": best["surrogate.alpha"]}}}


def test_a_search_for_sparse_networks_ranks_on_the_validation_passs_firing(tmp_path, shared_ray):
    study = {**STUDY, "name": "sparse", "search": {"algorithm": "random", "num_samples": 3, "metric": "val_spike_rate",
                                                   "mode": "min", "space": {"neuron.tau": {"uniform": [1.5, 4.0]}}}}
    study["base"] = {**STUDY["base"], "epochs": 2}
    client, trials, uri = searched(tmp_path, study, shared_ray)
    assert len(trials) == 3 and all(len(client.get_metric_history(r.info.run_id, "val_spike_rate")) == 2
                                    for r in trials)  # logged every epoch, as every selectable metric is
    assert report(["--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r/sparse.md").read_text()
    assert "No finished search trials yet" not in text and "Validation spike rate (%)" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    ranked = sorted(trials, key=lambda r: r.data.metrics["val_spike_rate"])  # the sparsest first
    assert [float(line.split(" | ")[2]) for line in table] == [round(100 * r.data.metrics["val_spike_rate"], 2)
                                                              for r in ranked]
