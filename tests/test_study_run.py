"""End to end on real Ray and a real MLflow sqlite store: local Ray, a Ray cluster, an MLflow server."""
import json
import re
import subprocess
import sys
import urllib.request

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.servers import start_mlflow, stop
from tests.studies import free_port, loopback_env, run_study, small_study

pytestmark = pytest.mark.slow  # real Ray, MLflow and processes

EPOCH_METRICS = {"test_acc", "train_acc", "train_loss", "spike_rate", "spike_rate/body.0", "spike_rate/body.2", "synops",
                 "energy", "energy_ann", "beta", "alpha", "epoch_seconds"}


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """The 2 x 2 study, run once on a local Ray with the default store (sqlite:///mlflow.db in cwd)."""
    cwd = tmp_path_factory.mktemp("study")
    path = small_study(cwd)
    done = run_study(cwd, str(path))
    return cwd, done


def child_runs(client: MlflowClient, name: str):
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id])
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags], [r for r in runs if
                                                                       "mlflow.parentRunId" not in r.data.tags]


def test_every_trial_is_a_finished_child_run(finished_study):
    cwd, _ = finished_study
    assert (cwd / "mlflow.db").is_file() and (cwd / "ray_results").is_dir()
    children, parents = child_runs(MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}"), "itest")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}
    assert {r.info.run_name for r in children} == {"ISNM seed=0", "ISNM seed=1", "ISNM+GSG seed=0", "ISNM+GSG seed=1"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}


def test_runs_carry_tags_params_metrics_per_epoch_and_weights(finished_study):
    cwd, _ = finished_study
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    children, _ = child_runs(client, "itest")
    gsg = next(r for r in children if r.info.run_name == "ISNM+GSG seed=1")
    tags = gsg.data.tags
    assert (tags["study"], tags["variant"], tags["seed"]) == ("itest", "ISNM+GSG", "1")
    assert len(tags["config_hash"]) == 12 and len(tags["git_commit"]) in (40, len("unknown"))
    assert gsg.data.params["surrogate.schedule"] == "gradual" and gsg.data.params["seed"] == "1"
    assert EPOCH_METRICS <= set(gsg.data.metrics)
    for key in EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(gsg.info.run_id, key)] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(gsg.info.run_id)}
    assert artifacts == {"model.pt", "config.yaml"} | ({"code.diff"} if tags["git_dirty"] == "true" else set())
    # provenance, read in the trial's own process: versions, device, threads, determinism, the data
    assert tags["env.torch"] == torch.__version__ and tags["env.threads"] == "1"
    assert tags["env.device"].startswith("CPU ") and "deterministic_algorithms=" in tags["env.determinism"]
    assert len(tags["data_fingerprint"]) == 16 and len({r.data.tags["data_fingerprint"] for r in children}) == 1
    assert tags["kernel"] == "eager" and "kernel_fallback" not in tags
    node_id, ip = tags["ray_node"].split()  # where it ran: Ray's node id (12 hex digits) and the node's address
    assert len(node_id) == 12 and ip.count(".") == 3 and tags["ray_nodes"] == tags["ray_node"]
    assert len({r.data.tags["config_hash"] for r in children}) == 4


def test_the_study_files_max_concurrent_caps_tune(tmp_path):
    from study.run.tuner import tune_config
    from study.design.load import load_study

    study = load_study(small_study(tmp_path, max_concurrent=1))
    assert tune_config(study, None).max_concurrent_trials == 1
    assert tune_config(study, 3).max_concurrent_trials == 3  # --max-concurrent wins


def test_a_compiler_that_fails_is_tagged_on_the_run(tmp_path):
    path = small_study(tmp_path, name="nocc", epochs=1, variants={"A": {"kernel": "compiled"}}, seeds=[0])
    done = run_study(tmp_path, str(path), env={"CXX": "/nonexistent/g++",  # Inductor's compiler, for the workers
                                               "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})
    assert "0 failed" in done.stdout and "torch.compile failed" in done.stdout + done.stderr
    (run,) = child_runs(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "nocc")[0]
    assert run.info.status == "FINISHED" and run.data.tags["kernel"] == "eager"
    assert run.data.tags["kernel_fallback"].startswith("torch.compile failed (InductorError: InvalidCxxCompiler")


def test_summary_names_each_trial_and_where_the_runs_are(finished_study):
    _, done = finished_study
    summary = done.stdout[done.stdout.index("\nitest: 4 trials (0 cached) in "):]
    assert "0 failed" in summary.splitlines()[1]
    for name in ("ISNM seed=0", "ISNM+GSG seed=1"):  # test_acc in percent, as the report prints it
        assert any(re.fullmatch(rf"  {re.escape(name)} +test_acc \d+\.\d\d  \d+s", line) for line in summary.splitlines())
    assert "mlflow ui --host 127.0.0.1 --backend-store-uri sqlite:///mlflow.db" in summary


def test_the_terminal_shows_each_trials_events_and_nothing_of_rays(finished_study):
    _, done = finished_study
    lines = (done.stdout + done.stderr).splitlines()
    assert len(lines) <= 4 * (2 + 3) + 15, done.stdout  # trials x (epochs + 3) + 15 at most
    running = done.stdout[:done.stdout.index("\nitest: 4 trials")].splitlines()  # before the summary
    for name in ("ISNM seed=0", "ISNM+GSG seed=1"):
        events = [line.split(name, 1)[1].strip() for line in running if line.startswith(f"  {name} ")]
        assert events[0] == "started" and len(events) == 4, events
        assert re.fullmatch(r"epoch 1/2  test_acc \d+\.\d\d", events[1]) and events[2].startswith("epoch 2/2  ")
        assert re.fullmatch(r"finished  test_acc \d+\.\d\d  \d+s  \[[1-4] of 4 done(, ETA (\d+m)?\d+s)?\]", events[3])
    assert any(line.endswith("[4 of 4 done]") for line in running)
    for noise in ("Trial status", "╭", "WARNING", "TensorBoard", "No CUDA runtime", "bottleneck", "trainable_"):
        assert noise not in done.stdout + done.stderr, noise


def test_runs_are_browsable_through_an_mlflow_server(finished_study):
    cwd, _ = finished_study
    port = free_port()
    server = start_mlflow("server", port, "--backend-store-uri", f"sqlite:///{cwd / 'mlflow.db'}",
                          log=cwd / "mlflow-server.log", cwd=cwd)
    try:
        base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        with urllib.request.urlopen(f"{base}/experiments/get-by-name?experiment_name=itest", timeout=10) as r:
            exp_id = json.load(r)["experiment"]["experiment_id"]
        request = urllib.request.Request(f"{base}/runs/search", method="POST",
                                         data=json.dumps({"experiment_ids": [exp_id]}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as r:
            runs = json.load(r)["runs"]
        names = sorted(run["info"]["run_name"] for run in runs)
        assert len(runs) == 5 and "ISNM+GSG seed=0" in names
    finally:
        stop(server)


def test_a_trial_reproduces_bit_for_bit_from_its_run(finished_study):
    cwd, _ = finished_study
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    run = next(r for r in child_runs(client, "itest")[0] if r.info.run_name == "ISNM+GSG seed=0")
    done = subprocess.run([sys.executable, "-m", "study.reproduce", run.info.run_id], cwd=cwd, env=loopback_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verdict: bit-identical" in done.stdout
    again = client.search_runs([run.info.experiment_id], f"tags.reproduces = '{run.info.run_id}'")
    assert len(again) == 1 and again[0].data.tags["kind"] == "reproduction"


def test_the_longest_variant_name_and_row_label_fit_mlflow(tmp_path, shared_ray):
    from study.records import Tag

    variant = ("ISNM+GSG+Soft Reset/" * 4)[:64]  # the longest name a study file may give, with marks MLflow refuses
    path = small_study(tmp_path, name="longest", epochs=1, variants={variant: {}}, seeds=[0],
                       grid={"neuron.tau": [1.5]}, table={"rows": ["variant", "neuron.tau"]})
    done = run_study(tmp_path, str(path), cluster=shared_ray)
    assert "0 failed" in done.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (trial,), (parent,) = child_runs(client, "longest")
    row = f"{variant} · neuron.tau=1.5"
    assert trial.data.tags["row"] == row and trial.info.status == "FINISHED"
    assert parent.info.status == "FINISHED" and not parent.data.metrics  # the row's mean: in its description
    assert f"| {row} | 1 | {100 * trial.data.metrics['test_acc']:.2f} |" in parent.data.tags[Tag.NOTE]
