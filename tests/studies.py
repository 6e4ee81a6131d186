"""Helpers for tests that run real studies: small study files and `python -m study.run` as a process."""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
STORE_TEMPLATE: Path | None = None  # a migrated empty store (tests/conftest.py sets it): copied, not made again


def small_study(tmp_path: Path, name: str = "itest", epochs: int = 2, **extra) -> Path:
    """A 2-variant x 2-seed digits study of `epochs` epochs (4 trials, a few seconds each)."""
    study = {"name": name, "base": {"dataset": "digits", "arch": "tiny", "epochs": epochs, "timesteps": 2,
                                    "batch_size": 128},
             "variants": {"ISNM": {}, "ISNM+GSG": {"surrogate.schedule": "gradual"}},
             "seeds": [0, 1], "resources": {"cpu": 1}, **extra}
    study["base"]["surrogate"] = {"schedule": "fixed"}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def loopback_env() -> dict:
    """The environment for Ray processes in tests: every Ray address on 127.0.0.1, never the host's IP."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    return env


def with_store(cwd: Path, name: str = "mlflow.db") -> Path:
    """The folder's store `name` (by default the default store, sqlite:///mlflow.db) made from the template if it is
    not there: a test of a study does not pay MLflow's migrations each time (a test of a store's creation passes a
    --tracking-uri where none is). Returns its path."""
    if STORE_TEMPLATE is not None and not (cwd / name).exists():
        shutil.copy(STORE_TEMPLATE, cwd / name)
    return cwd / name


def on(cluster) -> tuple[tuple[str, ...], dict]:
    """(study.run's arguments, its environment) to join `cluster` (tests.ray_cluster.Cluster), or a local Ray."""
    return (("--address", cluster.address), cluster.env) if cluster is not None else ((), {})


def run_study(cwd: Path, *args: str, timeout: float = 600, check: bool = True, env: dict | None = None,
              where: tuple[str, ...] = (), cluster=None) -> subprocess.CompletedProcess:
    """`python -m study.run ARGS`, run by the command `where` (e.g. `ip netns exec NS`: on another host) if given,
    on `cluster` if given (tests.ray_cluster.Cluster), else on a Ray of its own."""
    with_store(cwd)
    joining, cluster_env = on(cluster)
    done = subprocess.run([*where, sys.executable, "-m", "study.run", *args, *joining], cwd=cwd,
                          env={**loopback_env(), **cluster_env, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"study.run exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trial_runs(db: Path, study: str) -> list:
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(study)
    return [] if exp is None else client.search_runs([exp.experiment_id], "tags.kind = 'trial'")


def steps(db: Path, run, key: str = "test_acc") -> list[int]:
    return sorted(m.step for m in MlflowClient(f"sqlite:///{db}").get_metric_history(run.info.run_id, key))


def checkpoints(cwd: Path) -> list[Path]:
    return list(cwd.glob("ray_results/*/*/checkpoint_*"))


def start_study(cwd: Path, *args: str, env: dict | None = None, cluster=None) -> subprocess.Popen:
    """`python -m study.run` in the background (on `cluster` if given, as `run_study`), its output (stdout and
    stderr) into cwd/driver.log: a file, not a pipe, so the driver never blocks on output nobody reads while the
    test waits. `env`, if given, is the driver's whole environment."""
    with_store(cwd)
    joining, cluster_env = on(cluster)
    with open(cwd / "driver.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "study.run", *args, *joining], cwd=cwd,
                                   env=env or {**loopback_env(), **cluster_env}, stdout=log, stderr=subprocess.STDOUT,
                                   text=True)
    process.log = cwd / "driver.log"
    return process


def finished_output(process: subprocess.Popen, timeout: float) -> str:
    """The driver's whole output once it has exited (killed if it outlives `timeout`)."""
    try:
        process.wait(timeout=timeout)
    finally:
        process.kill()
    return process.log.read_text()


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None):
    """`condition()` once it is true, polled; `timeout` is a deadline only to end a test that would otherwise hang
    (no test asserts how fast this machine is: docs/testing.md)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"study ended before {what}:\n{process.log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
