"""A team tracking server, for real: PostgreSQL started here, `mlflow server` on it with artifacts proxied
(`mlflow-artifacts:`), two studies run through it at the same time from two drivers (each with its own local
Ray), and the server killed while their trials train and started again once one study has given up and the
other has trained on.

One scenario serves every test (a PostgreSQL, a server and two drivers take most of a minute): study A waits
for the server (the default patience) and finishes; study B, given 8 s of patience, stops with one line and
is resumed by the same command once the server is back.
"""
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
import torch
import yaml
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from study.report.tables import cell_text
from study.tracking.retry import DEFAULT_PATIENCE_S, PatientClient
from tests.servers import start_mlflow
from tests.studies import free_port, loopback_env, small_study, start_study, wait_for

pytestmark = pytest.mark.slow  # real PostgreSQL, MLflow server, Ray and processes

EPOCH_METRICS = ("test_acc", "train_acc", "train_loss", "spike_rate", "beta", "alpha", "epoch_seconds")
PATIENCE_B = 8  # study B's --tracking-patience: the server stays away until B has given up
AWAY_EPOCHS = 3  # and until Ray has recorded this many epochs of study A (or OUTAGE_LIMIT_S has passed)
OUTAGE_LIMIT_S = 300  # only a Tune loop blocked by its tracker records fewer: then the test says so, in time


def postgres_program(name: str) -> str:
    """A PostgreSQL program: on PATH, else Debian's /usr/lib/postgresql/<newest>/bin. Missing, the test fails
    (it is never skipped: .ci/run installs Debian's postgresql)."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                                                   key=lambda p: int(Path(p).parts[-3]), reverse=True)), None)
    assert found, f"PostgreSQL's {name} not found (on PATH or in /usr/lib/postgresql/*/bin): apt-get install postgresql"
    return found


@dataclass
class TeamServer:
    """`mlflow server` on PostgreSQL, artifacts proxied into `artifacts`, on 127.0.0.1:`port`."""
    port: int
    backend: str
    artifacts: Path
    log: Path
    process: Optional[subprocess.Popen] = field(default=None)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = start_mlflow("server", self.port, "--backend-store-uri", self.backend, "--artifacts-destination",
                                    str(self.artifacts), log=self.log)

    def kill(self) -> None:
        """Gone at once, as a crashed server or a lost host is (SIGTERM lets uvicorn linger, 30 s here)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def team_server(tmp_path_factory):
    """PostgreSQL in a folder of its own (initdb, pg_ctl start on a free loopback port, its socket there too),
    and an MLflow server on it; both stopped, and the folder removed, whatever happens."""
    root = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))  # pytest's folders are root's alone; postgres must enter
    as_postgres = []
    if os.geteuid() == 0:  # initdb refuses root: the database runs as the postgres user
        shutil.chown(root, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data, pg_port = root / "data", free_port()
    pg_ctl = [*as_postgres, postgres_program("pg_ctl"), "-D", str(data)]
    server = None
    try:
        subprocess.run([*as_postgres, postgres_program("initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
        subprocess.run([*pg_ctl, "-l", str(root / "postgres.log"), "-w", "-t", "60", "-o",
                        f"-h 127.0.0.1 -p {pg_port} -k {root} -F", "start"], check=True, capture_output=True,
                       timeout=90)
        subprocess.run([postgres_program("createdb"), "-h", "127.0.0.1", "-p", str(pg_port), "-U", "mlflow",
                        "mlflow"], check=True, capture_output=True, timeout=60)
        folder = tmp_path_factory.mktemp("server")
        server = TeamServer(free_port(), f"postgresql+psycopg2://mlflow@127.0.0.1:{pg_port}/mlflow",
                            folder / "artifacts", folder / "server.log")
        server.start()
        yield server
    finally:
        if server is not None:
            server.kill()
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


# Both studies' four trials at once on the session's Ray cluster of 2 CPUs: half a CPU each (a thread each)
AT_ONCE = {"cpu": 0.5}


def study_a(cwd: Path) -> Path:
    """Two variants, one seed, epochs enough to be training still while the server is away."""
    return small_study(cwd, name="teamA", epochs=6, seeds=[0], resources=AT_ONCE)


def study_b(cwd: Path) -> Path:
    """Another study: one variant (soft reset), two seeds."""
    return small_study(cwd, name="teamB", epochs=4, variants={"ISNM+Soft Reset": {"neuron.reset": "soft"}},
                       resources=AT_ONCE)


def ray_results(cwd: Path) -> dict[str, list[dict]]:
    """Each trial's results as Ray recorded them (result.json, appended to on a resume), by trial name."""
    found = {}
    for path in cwd.glob("ray_results/team*/*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            found[rows[0]["config"]["trial"]] = rows
    return found


def epochs_reported(cwd: Path) -> int:
    return sum(max(r["epoch"] for r in rows) for rows in ray_results(cwd).values())


@dataclass
class Scenario:
    server: TeamServer
    a: Path
    b: Path
    output_a: str = ""
    first_b: str = ""
    code_a: Optional[int] = None
    code_b: Optional[int] = None
    rerun_b: str = ""
    rerun_code_b: Optional[int] = None
    during_outage_a: int = 0  # epochs Ray recorded of study A's trials from the kill until the server answered


@pytest.fixture(scope="module")
def scenario(team_server, shared_ray, tmp_path_factory) -> Scenario:
    """Both studies started together; once each has logged an epoch, the server is killed, and started again on
    its port once B has given up and A has trained AWAY_EPOCHS epochs meanwhile; B is run again with the same
    command while A finishes."""
    done = Scenario(team_server, tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b"))
    client = MlflowClient(team_server.uri)
    args_b = [str(study_b(done.b)), "--tracking-uri", team_server.uri, "--tracking-patience", str(PATIENCE_B)]
    driver_a = start_study(done.a, str(study_a(done.a)), "--tracking-uri", team_server.uri, cluster=shared_ray)
    drivers_b = [start_study(done.b, *args_b, cluster=shared_ray)]
    try:
        def logged_epoch(name: str) -> bool:
            exp = client.get_experiment_by_name(name)
            return exp is not None and bool(client.search_runs([exp.experiment_id], "metrics.test_acc > 0"))

        wait_for(lambda: logged_epoch("teamA") and logged_epoch("teamB"), 300, "an epoch of each study in MLflow")
        before = epochs_reported(done.a)
        team_server.kill()
        # away until B gave up and A trained on (events, not a time): a deadline only to end a failing run
        deadline = time.monotonic() + OUTAGE_LIMIT_S
        while time.monotonic() < deadline and (drivers_b[0].poll() is None
                                               or epochs_reported(done.a) - before < AWAY_EPOCHS):
            time.sleep(0.5)
        done.during_outage_a = epochs_reported(done.a) - before
        team_server.start()
        done.code_b = drivers_b[0].wait(timeout=120)  # its patience ran out while the server was away
        done.first_b = drivers_b[0].log.read_text()
        drivers_b.append(start_study(done.b, *args_b, cluster=shared_ray))
        done.rerun_code_b = drivers_b[1].wait(timeout=600)
        done.rerun_b = drivers_b[1].log.read_text()
        done.code_a = driver_a.wait(timeout=600)
        done.output_a = driver_a.log.read_text()
    finally:
        for driver in (driver_a, *drivers_b):
            driver.kill()
    return done


def studies(scenario: Scenario) -> dict[str, Path]:
    return {"teamA": scenario.a, "teamB": scenario.b}


def trial_runs(client: MlflowClient, name: str) -> list:
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], "tags.kind = 'trial'")


def test_both_studies_ran_at_the_same_time_and_finished(scenario):
    assert scenario.code_a == 0, scenario.output_a[-3000:]
    assert scenario.rerun_code_b == 0, scenario.rerun_b[-3000:]
    client = MlflowClient(scenario.server.uri)
    spans = {}
    for name in ("teamA", "teamB"):
        runs = trial_runs(client, name)
        assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
        spans[name] = (min(r.info.start_time for r in runs), max(r.info.end_time for r in runs))
    assert max(s[0] for s in spans.values()) < min(s[1] for s in spans.values())  # their trials overlapped


def test_every_run_epoch_and_artifact_is_on_the_server_once(scenario):
    client = MlflowClient(scenario.server.uri)
    for name, cwd in studies(scenario).items():
        epochs = yaml.safe_load((cwd / f"{name}.yaml").read_text())["base"]["epochs"]
        for run in trial_runs(client, name):
            for key in EPOCH_METRICS:  # each epoch exactly once: no gap, no second copy
                assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == list(
                    range(1, epochs + 1)), (name, run.info.run_name, key)
            assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: no shared disk needed
            assert {"model.pt", "config.yaml"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
            with tempfile.TemporaryDirectory() as tmp:
                fetched = Path(client.download_artifacts(run.info.run_id, "", tmp))
                weights = torch.load(fetched / "model.pt", weights_only=True)
                config = yaml.safe_load((fetched / "config.yaml").read_text())
            assert weights and config["epochs"] == epochs and config["seed"] == int(run.data.tags["seed"])
            stored = list(scenario.server.artifacts.rglob(f"{run.info.run_id}/artifacts/model.pt"))
            assert len(stored) == 1  # where the server keeps it, in --artifacts-destination


def test_the_report_from_the_server_alone_matches_what_the_trials_reported(scenario, tmp_path):
    done = subprocess.run([sys.executable, "-m", "study.report", "--tracking-uri", scenario.server.uri, "--out", "out"],
                          cwd=tmp_path, env=loopback_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "mlflow.db").exists()  # nothing but the server was read
    for name, cwd in studies(scenario).items():
        finals: dict[str, list[float]] = {}
        for trial, rows in ray_results(cwd).items():  # Ray's record, not MLflow's
            finals.setdefault(trial.rsplit(" seed=", 1)[0], []).append(rows[-1]["test_acc"])
        table = (tmp_path / "out" / f"{name}.md").read_text()
        for variant, values in finals.items():
            cell = cell_text(values, len(values), "test_acc")
            assert re.search(rf"^\| {re.escape(variant)} \| (\*\*)?{re.escape(cell)}(\*\*)? \|", table, re.M), \
                (variant, cell, table)


def test_the_server_away_costs_no_epoch_and_no_training(scenario):
    output = scenario.output_a
    assert scenario.code_a == 0, output[-3000:]
    assert "does not answer" in output and f"retrying for up to {DEFAULT_PATIENCE_S} s (--tracking-patience)" in output
    assert re.search(r"answers again after \d+ s", output)
    # the Tune loop went on: a callback waiting for the server would have let Ray record 1 epoch at most meanwhile
    assert scenario.during_outage_a >= AWAY_EPOCHS, scenario.during_outage_a


def test_a_server_away_beyond_the_patience_stops_cleanly_and_the_same_command_resumes(scenario):
    assert scenario.code_b == 2, scenario.first_b[-3000:]
    assert "Traceback" not in scenario.first_b
    last = scenario.first_b.strip().splitlines()[-1]
    assert last.startswith(f"error: the MLflow server {scenario.server.uri} did not answer for {PATIENCE_B} s")
    assert "run the same command again to resume" in last
    assert len([p for p in scenario.b.glob("ray_results/teamB-*") if p.is_dir()]) == 1  # resumed, not set aside
    rerun = scenario.rerun_b
    assert "teamB: 2 trials (0 cached)" in rerun and "0 failed" in rerun
    for rows in ray_results(scenario.b).values():
        epochs = [r["epoch"] for r in rows]
        assert epochs[-1] == 4 and epochs.count(1) == 1  # continued from a checkpoint, never from epoch 1 again


class LosingProxy:
    """A loopback port in front of the server that passes everything on, except the answer to the first request
    whose request line holds `path`: once the server has answered it, the connection is closed instead (a
    request that arrived, its answer lost on the way back). Counts the requests for `path` that went through."""

    def __init__(self, server_port: int, path: str):
        self.server_port, self.path = server_port, path.encode()
        self.passed, self.lost = 0, False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self.relay, args=(conn,), daemon=True).start()

    def relay(self, conn: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.server_port))
        losing = threading.Event()

        def answers() -> None:
            try:
                while (data := upstream.recv(65536)) and not losing.is_set():
                    conn.sendall(data)
            except OSError:
                pass
            for end in (conn, upstream):  # shutdown, not only close: it wakes the thread reading the other way
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()

        threading.Thread(target=answers, daemon=True).start()
        try:
            while data := conn.recv(65536):
                if self.path in data.split(b"\r\n", 1)[0]:
                    self.passed += 1
                    if not self.lost:
                        self.lost = True
                        losing.set()
                upstream.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()


def test_a_write_whose_answer_was_lost_is_not_sent_again(team_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # as PatientClient sets it, for this test only
    exp = MlflowClient(team_server.uri).create_experiment(f"lost-answers-{time.time_ns()}")
    created = LosingProxy(team_server.port, "/runs/create")
    try:
        client = PatientClient(MlflowClient(created.uri), created.uri, 60)
        run = client.create_run(exp, tags={"kind": "trial"}, run_name="lost answer")
    finally:
        created.close()
    assert created.lost and created.passed == 1  # found on the server, not created again
    assert [r.info.run_id for r in MlflowClient(team_server.uri).search_runs([exp])] == [run.info.run_id]
    logged = LosingProxy(team_server.port, "/runs/log-batch")
    try:
        client = PatientClient(MlflowClient(logged.uri), logged.uri, 60)
        client.log_batch(run.info.run_id, metrics=[Metric("test_acc", 0.5, int(time.time() * 1000), 1)])
    finally:
        logged.close()
    assert logged.lost and logged.passed == 1
    assert len(MlflowClient(team_server.uri).get_metric_history(run.info.run_id, "test_acc")) == 1
