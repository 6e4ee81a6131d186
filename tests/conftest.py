"""Fixtures shared by the test modules: the costly services, started once per test process."""
import os
import shutil
from pathlib import Path

import pytest

from tests import studies

# The test files that take longest under `make test`, longest first (docs/testing.md): they start first, so that the
# two workers end together. xdist's loadfile hands whole files out in collection order, and collected by name the
# Slurm test's file (about 3 minutes, most of it Slurm's clock) came late and ran on alone while the other worker
# idled.
LONGEST_FIRST = ("test_submit.py", "test_integrity.py", "test_resilience.py", "test_cluster.py", "test_pbt.py",
                 "test_bn_neuron.py", "test_estimate.py", "test_server.py", "test_study_run.py", "test_browser.py",
                 "test_gpu_check.py", "test_search.py", "test_neuron.py", "test_training.py")


def pytest_collection_modifyitems(items) -> None:
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its tables made (MLflow's migrations take seconds), copied by `mlflow_uri`
    and by every study launched into a folder without a store (tests.studies)."""
    from study.tracking.store import created_store

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    created_store(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session", autouse=True)
def store_template(empty_mlflow_db):
    studies.STORE_TEMPLATE = empty_mlflow_db


@pytest.fixture()
def mlflow_uri(tmp_path, empty_mlflow_db) -> str:
    """A fresh, empty MLflow store in this test's folder, ready in milliseconds: `sqlite:///<tmp>/mlflow.db`."""
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def shared_ray(tmp_path_factory):
    """A Ray cluster of this test process's own (a head with 2 CPUs, token authentication on), joined with
    --address by the studies that test neither Ray's start nor its shutdown nor a killed process: each such
    launch skips starting and stopping a local Ray (about 5 s and 5 CPU-seconds here). Under pytest-xdist
    every worker has its own, so no test waits on another's trials."""
    from tests.ray_cluster import Cluster

    cluster = Cluster(tmp_path_factory.mktemp("shared_ray"))
    try:
        cluster.start_nodes({"head": ("--num-cpus", "2")})
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session", autouse=True)
def one_core_per_worker():
    """Under pytest-xdist (`make test`: two workers on two cores), torch in each worker on one thread: two workers'
    OpenMP pools of two threads each, spinning for each other's cores, made an in-process training 6x slower."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def trained() -> dict:
    """tests.stores.TRAINED_CONFIG trained in this process, once for every module that records it as a run
    (tests.stores.record): its per-epoch metrics, its final weights and the environment it trained in."""
    from isnm import train
    from study.tracking.provenance import environment
    from tests.stores import TRAINED_CONFIG

    epochs, models = [], []

    def keep(metrics: dict, state: dict) -> None:
        epochs.append(metrics)
        models.append(state["model"])

    train(TRAINED_CONFIG, on_epoch=keep)
    return {"epochs": epochs, "env": environment("cpu"), "weights": models[-1]}


@pytest.fixture()
def store(tmp_path, monkeypatch, mlflow_uri) -> tuple:
    """(client, experiment id, URI): an experiment in this test's fresh store, and the test in its folder, where
    what a command downloads or writes beside itself lands."""
    from mlflow.tracking import MlflowClient

    from study.tracking.store import experiment_id

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(mlflow_uri)
    return client, experiment_id(client, "runs", mlflow_uri), mlflow_uri
