"""MLflow writes that outlive a tracking server away for a while (restarted, upgraded, its host rebooted).

`PatientClient` retries each call with backoff while the server cannot be reached, for up to a limit;
a request that did reach it but whose answer was lost is recognised before it is sent again, so a
retry never makes a second run or a second copy of an epoch. `Backlog` runs the driver's writes on
one thread, so that while they wait the Tune loop, and with it the trials, keep going.
"""
from __future__ import annotations

import errno
import os
import queue
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from study.records import history
from study.errors import StudyError, redacted

if TYPE_CHECKING:  # study.run reads the default patience before a study is known to be valid: MLflow loads later
    from mlflow.entities import Metric, Run
    from mlflow.tracking import MlflowClient


DEFAULT_PATIENCE_S = 600  # a restart or an upgrade of the server; beyond that, someone has to look
FIRST_WAIT_S, LONGEST_WAIT_S = 1.0, 15.0  # the backoff doubles between these: a server back is seen within 15 s
BUSY_STATUS = {429, 502, 503, 504}  # the server, or a proxy before it, asks to be tried again later


def unreachable_reason(exc: BaseException) -> str:
    """Why `exc` says the server could not be reached, or asked to be tried later ("no connection", "timed out",
    "HTTP 503"); "" when the server refused the request itself (a bad value, a missing run): a retry would not
    change that."""
    import requests
    from mlflow.exceptions import MlflowException

    seen: Optional[BaseException] = exc
    while seen is not None:
        if isinstance(seen, requests.exceptions.Timeout):
            return "timed out"
        if isinstance(seen, requests.exceptions.ConnectionError):
            return "no connection"
        if isinstance(seen, requests.exceptions.ChunkedEncodingError):  # the server went away while it answered
            return "connection broken"
        if isinstance(seen, MlflowException) and seen.get_http_status_code() in BUSY_STATUS:
            return f"HTTP {seen.get_http_status_code()}"
        seen = seen.__cause__ or seen.__context__
    return ""


def local_store_fault(uri: str, exc: BaseException) -> str:
    """Why a write to a sqlite store failed where waiting would not help, as the start of a line: its file deleted,
    or its disk full ("" for anything else: sqlite's own "database is locked" passes as another writer finishes)."""
    from study.tracking.store import sqlite_path  # MLflow's: loaded once a store is in use

    db = sqlite_path(uri)
    if db is None:
        return ""
    if not db.exists():
        return f"the MLflow store {db.resolve()} was deleted while the study ran (put it back, or pass --tracking-uri)"
    seen: Optional[BaseException] = exc
    while seen is not None:
        if "disk is full" in str(seen) or getattr(seen, "errno", None) == errno.ENOSPC:
            return f"the disk holding the MLflow store {db.resolve()} is full"
        seen = seen.__cause__ or seen.__context__
    return ""


class ServerAway(StudyError):
    """The tracking server did not answer within the patience given."""


class Landed(Exception):
    """A request sent before the connection failed had reached the server: `result` is what it gave."""

    def __init__(self, result: Any):
        super().__init__()
        self.result = result


class PatientClient:
    """An MlflowClient whose calls are retried, with backoff, while its server cannot be reached: for up to
    `patience_s` from the first failure, after which `ServerAway` is raised (its message ends with `advice`).
    Any other failure is raised at once. The calls whose repetition would not be harmless are checked on the
    server before they are sent again: `create_run`, `log_batch` (its metrics) and `delete_tag`."""

    def __init__(self, client: MlflowClient, uri: str, patience_s: float = DEFAULT_PATIENCE_S, advice: str = ""):
        # MLflow's own retries (7, over minutes, each sending the request again unchecked) give way to these
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        self.once, self.uri, self.patience_s, self.advice = client, uri, patience_s, advice
        self.away_since: Optional[float] = None  # monotonic time of the first failed call of this absence

    @property
    def away(self) -> bool:
        return self.away_since is not None

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.once, name)
        if not callable(method):
            return method
        return lambda *args, **kwargs: self.patiently(lambda: method(*args, **kwargs))

    def patiently(self, send: Callable[[], Any], landed: Optional[Callable[[], None]] = None) -> Any:
        """What `send()` returns, sent until the server answers. After a failed send, `landed()` (when given)
        asks the server whether the request had arrived all the same, and if so raises `Landed` with what to
        return instead of sending it again."""
        failed = False
        delay = FIRST_WAIT_S
        while True:
            try:
                if failed and landed is not None:
                    landed()
                result = send()
            except Landed as done:
                result = done.result
            except Exception as exc:
                fault = local_store_fault(self.uri, exc)
                if fault:  # no server to wait for: the file itself failed
                    raise StudyError(f"{fault}; the study stopped{self.advice}") from None
                reason = unreachable_reason(exc)
                if not reason:
                    raise
                failed = True
                self.wait(reason, delay)
                delay = min(2 * delay, LONGEST_WAIT_S)
                continue
            self.note_back()
            return result

    def wait(self, reason: str, delay: float) -> None:
        now = time.monotonic()
        if self.away_since is None:
            self.away_since = now
            print(f"MLflow server {redacted(self.uri)} does not answer ({reason}); the trials keep training and their "
                  f"results wait here; retrying for up to {self.patience_s:g} s (--tracking-patience)",
                  file=sys.stderr, flush=True)
        left = self.away_since + self.patience_s - now
        if left <= 0:
            raise ServerAway(f"the MLflow server {self.uri} did not answer for {self.patience_s:g} s "
                             f"(--tracking-patience); the study stopped{self.advice}") from None
        time.sleep(min(delay, left))

    def note_back(self) -> None:
        if self.away_since is not None:
            print(f"MLflow server {redacted(self.uri)} answers again after {time.monotonic() - self.away_since:.0f} s; "
                  f"writing the results kept meanwhile", file=sys.stderr, flush=True)
            self.away_since = None

    def create_run(self, experiment_id: str, start_time: Optional[int] = None, tags: Optional[dict] = None,
                   run_name: Optional[str] = None) -> Run:
        """A new run; one whose creation reached the server before the answer was lost is found by its start
        time (fixed here, so that every send carries the same), name and tags, and returned instead."""
        start_time = start_time or int(time.time() * 1000)

        def landed() -> None:
            for run in self.once.search_runs([experiment_id], f"attributes.start_time = {start_time}"):
                if run.info.run_name == run_name and all(run.data.tags.get(k) == v for k, v in (tags or {}).items()):
                    raise Landed(run)

        return self.patiently(lambda: self.once.create_run(experiment_id, start_time, tags, run_name), landed)

    def log_batch(self, run_id: str, metrics: Sequence[Metric] = (), params: Sequence = (),
                  tags: Sequence = ()) -> None:
        """One batch; the metrics of a batch that reached the server (they are stored all or none) are not sent
        again, even to a store that would keep both copies (params and tags may be: the same value is a no-op)."""
        def landed() -> None:
            first = metrics[0]
            if any((m.step, m.timestamp, m.value) == (first.step, first.timestamp, first.value)
                   for m in history(self.once, run_id, first.key)):
                raise Landed(self.once.log_batch(run_id, params=params, tags=tags) if params or tags else None)

        return self.patiently(lambda: self.once.log_batch(run_id, metrics=metrics, params=params, tags=tags),
                              landed if metrics else None)

    def delete_tag(self, run_id: str, key: str) -> None:
        def landed() -> None:
            if key not in self.once.get_run(run_id).data.tags:
                raise Landed(None)

        self.patiently(lambda: self.once.delete_tag(run_id, key), landed)


class Backlog:
    """Tasks run in order on one thread, so that a Tune callback does not hold the trials up while the tracking
    server is away: `submit` returns when its task is done, or at once while `away()`, the task then waiting behind
    the others. The first task that fails stops the rest; its error is raised by the next `check` or `drain`, never
    by `submit`: Tune logs an error raised in a trial's event callback with its traceback, while one raised by the
    check at the start of its loop's step (`MlflowTracker.on_step_begin`) ends the study as one line."""

    def __init__(self, away: Callable[[], bool]):
        self.away = away
        self.tasks: queue.Queue = queue.Queue()
        self.failed: Optional[BaseException] = None
        threading.Thread(target=self.work, name="mlflow-writes", daemon=True).start()

    def submit(self, task: Callable, *args: Any) -> None:
        done = threading.Event()
        self.tasks.put((task, args, done))
        while not done.wait(0.05):
            if self.away():
                return

    def work(self) -> None:
        while True:
            task, args, done = self.tasks.get()
            try:
                if self.failed is None:
                    task(*args)
            except BaseException as exc:  # raised on the driver's thread by the next check
                self.failed = exc
            finally:
                done.set()
                self.tasks.task_done()

    def check(self) -> None:
        if self.failed is not None:
            raise self.failed

    def drain(self) -> None:
        """Wait until every task submitted is done; raise the first failure."""
        self.tasks.join()
        self.check()
