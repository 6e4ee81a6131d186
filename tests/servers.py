"""MLflow's web server (`mlflow server`, `mlflow ui`) as a process of a test's own: started on a loopback port and
returned once it answers, or stopped with an error that says why not."""
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.studies import loopback_env

MLFLOW = Path(sys.executable).parent / "mlflow"
POLL_S = 0.5


def start_mlflow(command: str, port: int, *args: str, log: Path, cwd: Path | None = None,
                 timeout: float = 120) -> subprocess.Popen:
    """`mlflow COMMAND ARGS` on 127.0.0.1:`port` with one worker, in a process group of its own (stop() ends its
    workers too), its output appended to `log`; returned once /health answers. If it exits first, or has not
    answered after `timeout` s (a deadline only to end a hang), it is stopped and an AssertionError says which, with
    the end of `log`."""
    env = {**loopback_env(), "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",  # it reaches nothing outside
           # no job runner: five huey consumers, each importing MLflow, for GenAI scorers no study uses
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "a") as out:
        server = subprocess.Popen([str(MLFLOW), command, "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                   *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}/health"
    deadline = time.monotonic() + timeout
    for tries in range(1, math.ceil(timeout / POLL_S) + 1):
        try:
            with urllib.request.urlopen(url, timeout=2):
                return server
        except OSError as exc:
            last = exc
        if server.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    code = server.poll()
    stop(server)
    why = (f"exited with code {code} before it answered" if code is not None else
           f"did not answer {url} in {timeout:g} s ({tries} tries, the last: {last})")
    raise AssertionError(f"mlflow {command} on 127.0.0.1:{port} {why}; the end of {log}:\n{log.read_text()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    """The server and its workers (its process group): SIGTERM, then SIGKILL after 30 s."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    except ProcessLookupError:
        server.wait(timeout=30)
