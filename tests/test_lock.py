"""The study lock with real processes: held, it refuses a second holder with one line naming the first;
its holder killed with SIGKILL, it is free at once. (A real study.run refused: test_cluster; a real driver killed
with SIGKILL and run again: test_resilience.)"""
import os
import signal
import socket
import subprocess
import sys

import pyarrow.fs as pafs
import pytest

from study.errors import StudyError
from study.run.lock import lock_path, study_lock
from study.run.storage import Experiment, experiment_at
from tests.studies import ROOT, wait_for

HOLD = """
import sys, time
from study.run.lock import study_lock
from study.run.storage import experiment_at
with study_lock(experiment_at(sys.argv[1], "s-1234"), "s"):
    time.sleep(120)
"""


def test_a_held_lock_names_its_holder_and_a_killed_holders_lock_is_free(tmp_path):
    experiment = experiment_at(str(tmp_path / "storage"), "s-1234")
    lock = tmp_path / "storage/s-1234.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "storage")], cwd=ROOT)
    try:
        wait_for(lambda: lock.is_file() and f"PID {holder.pid} " in lock.read_text(), 60, "the lock taken")
        with pytest.raises(StudyError) as refused:
            with study_lock(experiment, "s"):
                pass
        assert str(refused.value).startswith(f"study s is already running from PID {holder.pid} on host "
                                             f"{socket.gethostname()}, started at ")
        assert f"(lock {lock})" in str(refused.value)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    with study_lock(experiment, "s"):
        assert lock.read_text().startswith(f"PID {os.getpid()} on host ")


def test_an_object_stores_lock_lies_on_this_host():
    bucket = Experiment("s3://bucket/studies", "s-1234", pafs.SubTreeFileSystem("/bucket", pafs.LocalFileSystem()),
                        "studies")
    path = lock_path(bucket)
    assert str(path.parent) == os.path.expanduser("~/.cache/isnm-study/locks") and path.name.startswith("s-1234-")


def test_a_run_elsewhere_of_the_same_study_is_found_while_its_driver_holds_its_lock(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    from study.records import Kind, RunStatus, Tag
    from study.run.driver import running_elsewhere
    from study.run.lock import study_lock
    from study.run.storage import experiment_at

    client = MlflowClient(mlflow_uri)
    exp = client.create_experiment("twice")
    other = experiment_at(str(tmp_path / "elsewhere"), "twice-12345678")  # the same study, another --storage
    parent = client.create_run(exp, tags={Tag.KIND: Kind.STUDY, Tag.RAY_EXPERIMENT: other.uri}).info.run_id
    assert running_elsewhere(client, exp) == []  # no lock file: nothing says a driver runs it
    with study_lock(other, "twice"):
        assert running_elsewhere(client, exp) == [(other.uri, parent)]
    # its driver ended: no flock, and the process the lock names is gone
    lock_path(other).write_text(f"PID {2 ** 22 + 1} on host {socket.gethostname()}, started at then")
    assert running_elsewhere(client, exp) == []
    with study_lock(other, "twice"):
        client.set_terminated(parent, RunStatus.FINISHED)
        assert running_elsewhere(client, exp) == []  # not RUNNING: ended, whatever holds the lock
