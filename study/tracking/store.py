"""The MLflow store: where it is, opening it, the study's experiment in it, and the UI page that shows it."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from mlflow.tracking import MlflowClient

from isnm import metrics
from study.errors import StudyError, redacted, store_message
from study.records import ExperimentTag, Tag

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri(cli_value: Optional[str]) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory."""
    return cli_value or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a `sqlite:///` store, None for any other kind."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def quiet_downloads() -> None:
    """MLflow draws a progress bar for every artifact it downloads (a cached run's code diff, a stored study file, a
    run's weights): noise in a terminal that prints one line per event. Off for this process, from the moment a
    command opens its store, unless the user set the variable."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


ANSWER_S = 5.0  # seconds a tracking server has to accept a connection when a command starts


def server_answers(uri: str) -> None:
    """One line (StudyError) if nothing accepts a connection at an http(s) store's host and port: a refused
    connection, an unknown host or no answer within ANSWER_S is an answer, and MLflow's own retries would take
    minutes, silent, to give it. A server that answers now and goes away later is what --tracking-patience waits
    for (study.tracking.retry)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=ANSWER_S).close()
    except OSError as exc:
        why = ("connection refused" if isinstance(exc, ConnectionRefusedError) else
               f"no answer within {ANSWER_S:g} s" if isinstance(exc, TimeoutError) else
               "unknown host" if isinstance(exc, socket.gaierror) else exc.strerror or type(exc).__name__)
        raise StudyError(f"--tracking-uri {redacted(uri)}: no tracking server answers there ({why}); start it "
                         f"(docs/clusters.md, 'A team tracking server') or check the address") from None


def read_client(uri: str) -> MlflowClient:
    """A client for reading a store that must already hold runs; a sqlite file that is not there is one line
    (MLflow would create an empty one), and so is a server that does not answer."""
    quiet_downloads()
    server_answers(uri)
    db = sqlite_path(uri)
    if db is not None and (not db.is_file() or db.stat().st_size == 0):  # empty: MLflow would make its tables in it
        raise StudyError(f"no MLflow store at {db.resolve()}{' (an empty file)' if db.is_file() else ''}; run "
                         f"`python -m study.run FILE` first, or pass --tracking-uri")
    refuse_damaged(uri)
    client = MlflowClient(uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as exc:  # a server that refuses, a database of another program: nothing can be read
        raise StudyError(f"the MLflow store {redacted(uri)} cannot be read ({type(exc).__name__}: "
                         f"{store_message(exc)}); check --tracking-uri or MLFLOW_TRACKING_URI") from None
    return client


def writable_store(uri: str) -> None:
    """One line if `uri` is a sqlite file that cannot be written, or made (its folder, where sqlite writes its journal
    and the runs' artifacts go), or a server that does not answer: MLflow would retry for minutes before it failed."""
    server_answers(uri)
    db = sqlite_path(uri)
    if db is None:
        return
    folder = db.resolve().parent
    try:
        if not folder.is_dir():
            raise FileNotFoundError(2, f"no folder {folder}")
        tempfile.TemporaryFile(dir=folder).close()
        if db.exists() and not os.access(db, os.W_OK):
            raise PermissionError(13, f"{db.name} is read-only")
    except OSError as exc:
        raise StudyError(f"--tracking-uri {uri}: the MLflow store cannot be written ({exc.strerror}); pass "
                         "--tracking-uri sqlite:///PATH/mlflow.db in a folder you can write") from None


def refuse_damaged(uri: str) -> None:
    """One line (StudyError) if `uri` is a sqlite file that sqlite finds damaged, before MLflow reads or migrates it."""
    db = sqlite_path(uri)
    problem = db is not None and db.is_file() and damage(db)
    if problem:
        raise StudyError(f"the MLflow store {db.resolve()} is damaged ({problem}); nothing was written to it: restore it "
                         "from a copy, or pass --tracking-uri")


def damage(db: Path) -> Optional[str]:
    """What sqlite finds wrong with the database file `db` (read-only, its pages' structure: a file cut short,
    overwritten), or None; a read of every page, a fraction of a second for a year of a lab's runs."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as con:
            found = [row[0] for row in con.execute("PRAGMA quick_check(3)")]
    except sqlite3.Error as exc:
        return str(exc)
    return None if found == ["ok"] else "; ".join(found)[:200]


def served(uri: str) -> bool:
    """Whether `uri` is a tracking server's (which shows the runs itself), rather than a store `mlflow ui` opens."""
    return uri.startswith(("http://", "https://"))


UI_PORT = 5000  # mlflow ui's own default


def ui_command(uri: str, port: int = UI_PORT) -> str:
    if served(uri):
        return f"the tracking server, {redacted(uri)}"
    return f"mlflow ui --host 127.0.0.1{f' --port {port}' if port != UI_PORT else ''} --backend-store-uri {redacted(uri)}"


def ui_base(uri: str, port: int = UI_PORT) -> str:
    """Where the UI showing the runs of `uri` answers: the tracking server itself, else `mlflow ui` on `port`."""
    return redacted(uri).rstrip("/") if served(uri) else f"http://127.0.0.1:{port}"


def ui_url(exp_id: str, base: str) -> str:
    """The page of `mlflow ui` (at `base`) that shows a study at first glance: the chart view of its experiment's
    runs, the trial runs grouped by their table row and column (tags `row`, `column`: a mean curve with a min-max
    band per group, the runs listed under it) and the accuracy charts; the saved view that `experiment_id` stores
    on the experiment, in the UI's model-training layout."""
    return (f"{base}/#/experiments/{exp_id}/runs?viewStateShareKey={VIEW_KEY}&compareRunsMode=CHART"
            f"&workflowType=machine_learning")


def created_store(uri: str) -> MlflowClient:
    """A client of the store at `uri`, made now if it is not there yet: MLflow creates a database's tables, and
    migrates them, on the first call that reads it (seconds for sqlite). The one place a store is created: for a
    sqlite file under an flock beside it, since two migrations at once on one file fail one of them."""
    refuse_damaged(uri)
    db = sqlite_path(uri)
    with creation_lock(db) if db is not None else contextlib.nullcontext():
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
    return client


CREATION_WAIT_S = 300.0  # a migration takes seconds; one that holds the lock this long has hung


@contextlib.contextmanager
def creation_lock(db: Path):
    """Hold `<db>.lock` (the OS drops it with its process, however that ends) while the store is made or checked."""
    import fcntl

    fd = os.open(db.with_name(db.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + CREATION_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StudyError(f"the MLflow store {db} was being made by another process for over "
                                     f"{CREATION_WAIT_S:.0f} s (lock {db.name}.lock); check that process") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def open_store(uri: str, study_name: str) -> tuple[MlflowClient, str]:
    """(a client, the study's experiment id) for the store at `uri`, created if need be; one line if it cannot
    be used."""
    quiet_downloads()
    try:
        client = created_store(uri)
        return client, experiment_id(client, study_name, uri)
    except StudyError:
        raise
    except Exception as exc:  # a store fails in its own ways (sqlalchemy, http, permissions); each is the user's setting
        raise StudyError(f"MLflow store {uri} cannot be used ({type(exc).__name__}: {store_message(exc)}); "
                         "check --tracking-uri or MLFLOW_TRACKING_URI") from None


MODEL_TRAINING = "custom_model_development"  # the experiment kind whose UI shows runs and charts
VIEW_KEY = "by-row"  # the saved view `ui_url` opens: tag ExperimentTag.VIEW + VIEW_KEY on the experiment


def row_view(columns: bool = False, metric: str = metrics.TEST_ACC) -> str:
    """The UI's saved-view envelope for a view grouping the runs by their table row tag, and column tag when the table
    has `columns`, its charts searched for the table's `metric` (MLflow 3.17's `{name, createdAt, updatedAt, state}`,
    the state being its search facets and UI state as JSON)."""
    keys = [Tag.ROW, Tag.COLUMN] if columns else [Tag.ROW]
    state = {"groupBy": {"aggregateFunction": "average",
                         "groupByKeys": [{"mode": "tag", "groupByData": key} for key in keys]},
             "useGroupedValuesInCharts": True, "runsHiddenMode": "SHOW_ALL",
             # the table's metric alone: with every metric's chart the cards narrow until their titles are cut
             "chartsSearchFilter": metric}
    now = int(time.time() * 1000)
    return json.dumps({"name": "Trials by table cell" if columns else "Trials by table row", "createdAt": now,
                       "updatedAt": now, "state": json.dumps(state)})


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The study's MLflow experiment, made on first use; artifacts sit beside a sqlite store. It is tagged as
    model training (MLflow's UI then shows runs and charts, not traces and prompts), and holds the saved view
    `ui_url` opens; an experiment made before either is given what it lacks, never overwritten."""
    found = client.get_experiment_by_name(name)
    tags = {ExperimentTag.KIND: MODEL_TRAINING, ExperimentTag.VIEW + VIEW_KEY: row_view()}
    if found is None:
        db = sqlite_path(uri)
        location = (db.resolve().parent / "mlartifacts" / name).as_uri() if db is not None else None
        return client.create_experiment(name, artifact_location=location, tags=tags)
    for key, value in tags.items():
        if key not in found.tags:
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


def show_layout(client: MlflowClient, exp_id: str, columns: bool, metric: str = metrics.TEST_ACC) -> None:
    """The saved view `ui_url` opens, grouped as this invocation's table lays the study out (its runs' row and column
    tags follow the same layout: `log_summary`), its charts those of the table's `metric`."""
    client.set_experiment_tag(exp_id, ExperimentTag.VIEW + VIEW_KEY, row_view(columns, metric))
