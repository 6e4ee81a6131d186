"""study.retry against real stores: a loopback port where no server listens, and a sqlite store that refuses.
A server that goes away and comes back, and answers lost on the way, are in test_server.py (slow)."""
import errno
import socket
import threading
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from study.errors import StudyError
from study.tracking.retry import Backlog, PatientClient, ServerAway, local_store_fault
from tests.studies import free_port


@pytest.fixture(autouse=True)
def http_retries(monkeypatch):
    """PatientClient turns MLflow's own HTTP retries off for the process; here, only for the test."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def away_client(patience_s: float) -> PatientClient:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    return PatientClient(MlflowClient(uri), uri, patience_s, "; run it again")


class Clock:
    """Stands in for the `time` module of study.tracking.retry: its sleeps advance its clock, and are kept."""

    def __init__(self):
        self.now, self.sleeps = 1000.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def time(self) -> float:
        return self.now


def test_a_server_that_never_answers_is_given_up_after_the_patience_in_one_line(capsys, monkeypatch):
    import study.tracking.retry

    clock = Clock()
    monkeypatch.setattr(study.tracking.retry, "time", clock)
    client = away_client(2.5)
    with pytest.raises(ServerAway) as raised:
        client.get_experiment_by_name("any")
    # the backoff doubles from 1 s, and the last wait is cut to the patience: not given up before it, nor after
    assert clock.sleeps == [1.0, 1.5] and clock.now - 1000.0 == 2.5
    assert str(raised.value) == (f"the MLflow server {client.uri} did not answer for 2.5 s (--tracking-patience); "
                                 f"the study stopped; run it again")
    waiting = capsys.readouterr().err.strip().splitlines()
    assert waiting == [f"MLflow server {client.uri} does not answer (no connection); the trials keep training and "
                       f"their results wait here; retrying for up to 2.5 s (--tracking-patience)"]


def test_an_answer_cut_short_is_waited_out_as_a_server_away(capsys):
    # a server that dies while it answers: headers promising a body, then the connection closed
    listener = socket.create_server(("127.0.0.1", 0))
    uri = f"http://127.0.0.1:{listener.getsockname()[1]}"

    def cut_short() -> None:
        for _ in range(50):  # a few requests at most; bounded all the same
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n")

    threading.Thread(target=cut_short, daemon=True).start()
    try:
        with pytest.raises(ServerAway):
            PatientClient(MlflowClient(uri), uri, 1.5).set_tag("0" * 32, "k", "v")
    finally:
        listener.close()
    assert "does not answer (connection broken)" in capsys.readouterr().err


def test_a_request_the_store_refuses_is_raised_at_once(mlflow_uri, capsys):
    client = PatientClient(MlflowClient(mlflow_uri), mlflow_uri, 60)
    with pytest.raises(MlflowException, match="not found"):
        client.get_run("0" * 32)
    assert not client.away and capsys.readouterr().err == ""  # never waited: no "does not answer" line


def test_a_backlog_returns_at_once_while_the_server_is_away_and_raises_its_failure_later():
    client = away_client(2)
    backlog = Backlog(lambda: client.away)
    done = []
    # a submit that waited for its task would raise ServerAway itself, once the 2 s patience ran out
    backlog.submit(client.get_experiment_by_name, "any")
    backlog.submit(done.append, "after")  # queued behind the one waiting
    assert client.away and done == []
    with pytest.raises(ServerAway):
        backlog.drain()
    assert done == []  # the first failure stops the rest
    with pytest.raises(ServerAway):
        backlog.check()


def test_a_backlog_runs_in_place_while_the_server_answers(mlflow_uri):
    client = PatientClient(MlflowClient(mlflow_uri), mlflow_uri, 60)
    backlog = Backlog(lambda: client.away)
    order = []
    for n in range(3):
        backlog.submit(order.append, n)
        assert order == list(range(n + 1))  # done before submit returned
    backlog.submit(client.get_run, "0" * 32)  # its error is kept for the loop's next check, not raised here,
    backlog.submit(order.append, "after")  # where Tune would log it with a traceback; the tasks after it do not run
    with pytest.raises(MlflowException):
        backlog.check()
    assert order == [0, 1, 2]


def test_a_deleted_sqlite_store_stops_at_once_in_one_line(tmp_path, mlflow_uri, capsys):
    db = Path(mlflow_uri[len("sqlite:///"):])
    client = PatientClient(MlflowClient(mlflow_uri), mlflow_uri, patience_s=600, advice=", and so on")
    run_id = client.create_run(client.create_experiment("gone")).info.run_id
    db.unlink()  # the store's file removed while the study runs: no server to wait for
    with pytest.raises(StudyError) as raised:
        client.log_metric(run_id, "test_acc", 0.5)
    assert str(raised.value) == (f"the MLflow store {db.resolve()} was deleted while the study ran (put it back, or "
                                 f"pass --tracking-uri); the study stopped, and so on")
    assert not client.away and "does not answer" not in capsys.readouterr().err  # never waited for


def test_only_a_vanished_file_or_a_full_disk_is_a_local_stores_fault(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    full = MlflowException("(sqlite3.OperationalError) database or disk is full")
    assert local_store_fault(uri, full).startswith("the MLflow store ") and "deleted" in local_store_fault(uri, full)
    db.write_bytes(b"")
    assert local_store_fault(uri, full) == f"the disk holding the MLflow store {db} is full"
    assert local_store_fault(uri, OSError(errno.ENOSPC, "No space left on device")).startswith("the disk holding")
    assert local_store_fault(uri, MlflowException("(sqlite3.OperationalError) database is locked")) == ""
    assert local_store_fault("http://127.0.0.1:5000", full) == ""  # a server's disk is the server's to report
