"""Fixtures shared by the test modules."""
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its tables made (MLflow's migrations take seconds), copied by `mlflow_uri`."""
    from study.tracking.store import created_store

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    created_store(f"sqlite:///{path}")
    return path


@pytest.fixture()
def mlflow_uri(tmp_path, empty_mlflow_db) -> str:
    """A fresh, empty MLflow store in this test's folder, ready in milliseconds: `sqlite:///<tmp>/mlflow.db`."""
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
