"""MLflow tracking of a study: one parent run per invocation, one child run per trial.

A Ray Tune callback on the driver owns every write, so a trial that is retried, or an experiment
that is restored after the driver died, keeps one MLflow run with each epoch logged exactly once.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray.tune import Callback, Checkpoint

from isnm.config import LAYER_RATE
from study.cli import first_line, last_line, redacted
from study.cells import every_run
from study.config import METRICS, Study, StudyError, flat
from study.plan import Trial
from study.provenance import (CONFIG_ARTIFACT, DIFF_ARTIFACT, ENVIRONMENT_PREFIX, WEIGHTS_ARTIFACT, CodeState,
                              environment_tags)
from study.retry import DEFAULT_PATIENCE_S, Backlog, PatientClient
from study.storage import STATE_FILE

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PARENT = "mlflow.parentRunId"
LOGGED_METRICS = METRICS + ("energy_ann", "beta", "alpha", "epoch_seconds")  # and LAYER_RATE + each spiking layer
MAX_PARAM_LENGTH = 6000


def tracking_uri(cli_value: Optional[str]) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory."""
    return cli_value or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a `sqlite:///` store, None for any other kind."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def read_client(uri: str) -> MlflowClient:
    """A client for reading a store that must already hold runs; a sqlite file that is not there is one line
    (MLflow would create an empty one)."""
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise StudyError(f"no MLflow store at {db.resolve()}; run `python -m study.run FILE` first, or pass --tracking-uri")
    return MlflowClient(uri)


def served(uri: str) -> bool:
    """Whether `uri` is a tracking server's (which shows the runs itself), rather than a store `mlflow ui` opens."""
    return uri.startswith(("http://", "https://"))


def ui_command(uri: str) -> str:
    if served(uri):
        return f"the tracking server, {redacted(uri)}"
    return f"mlflow ui --host 127.0.0.1 --backend-store-uri {redacted(uri)}"


def ui_base(uri: str) -> str:
    """Where the UI showing the runs of `uri` answers: the tracking server itself, else `mlflow ui`'s default."""
    return redacted(uri).rstrip("/") if served(uri) else "http://127.0.0.1:5000"


def ui_url(exp_id: str, base: str = "http://127.0.0.1:5000") -> str:
    """The page of `mlflow ui` (at `base`) that shows a study at first glance: the chart view of its experiment's
    runs, the trial runs grouped by their `variant` tag (a mean curve with a min-max band per variant, the runs
    listed under their group) and the accuracy charts; the saved view that `experiment_id` stores on the
    experiment, in the UI's model-training layout."""
    return (f"{base}/#/experiments/{exp_id}/runs?viewStateShareKey={VIEW_KEY}&compareRunsMode=CHART"
            f"&workflowType=machine_learning")


def quoted(value: str) -> str:
    """`value` as a string in an MLflow search filter, which has no escapes: in the quotes it lacks."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise StudyError(f"{value!r}: MLflow search filters cannot hold a value with both kinds of quote; "
                     f"rename the folder or path")


def open_store(uri: str, study_name: str) -> tuple[MlflowClient, str]:
    """(a client, the study's experiment id) for the store at `uri`; one line if it cannot be used."""
    try:
        client = MlflowClient(uri)
        return client, experiment_id(client, study_name, uri)
    except Exception as exc:  # a store fails in its own ways (sqlalchemy, http, permissions); each is the user's setting
        raise StudyError(f"MLflow store {uri} cannot be used ({type(exc).__name__}: "
                         f"{first_line(str(exc))}); check --tracking-uri or MLFLOW_TRACKING_URI") from None


EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow 3's UI opens an experiment without it in its GenAI layout
MODEL_TRAINING = "custom_model_development"
VIEW_KEY = "by-variant"  # the saved view `ui_url` opens: tag mlflow.sharedViewState.<key> on the experiment
VIEW_TAG = "mlflow.sharedViewState."


def variant_view() -> str:
    """The UI's saved-view envelope for a view grouping the runs by their `variant` tag (MLflow 3.17's
    `{name, createdAt, updatedAt, state}`, the state being its search facets and UI state as JSON)."""
    state = {"groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "variant"}]},
             "useGroupedValuesInCharts": True, "runsHiddenMode": "SHOW_ALL",
             "chartsSearchFilter": "acc"}  # the accuracy charts first; the rest: the UI's defaults
    now = int(time.time() * 1000)
    return json.dumps({"name": "Trials by variant", "createdAt": now, "updatedAt": now, "state": json.dumps(state)})


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The study's MLflow experiment, made on first use; artifacts sit beside a sqlite store. It is tagged as
    model training (MLflow's UI then shows runs and charts, not traces and prompts), and holds the saved view
    `ui_url` opens; an experiment made before either is given what it lacks, never overwritten."""
    found = client.get_experiment_by_name(name)
    tags = {EXPERIMENT_KIND: MODEL_TRAINING, VIEW_TAG + VIEW_KEY: variant_view()}
    if found is None:
        db = sqlite_path(uri)
        location = (db.resolve().parent / "mlartifacts" / name).as_uri() if db is not None else None
        return client.create_experiment(name, artifact_location=location, tags=tags)
    for key, value in tags.items():
        if key not in found.tags:
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


def code_tags(code: CodeState) -> dict[str, str]:
    return {"git_commit": code.commit, "git_dirty": str(code.dirty).lower()}


def log_text(client: MlflowClient, run_id: str, name: str, text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(text)
        client.log_artifact(run_id, str(path))


def start_parent_run(client: MlflowClient, exp_id: str, study: Study, code: CodeState, ray_path: str) -> str:
    tags = {"kind": "study", "study": study.name, "profile": study.profile or "", **code_tags(code),
            "ray_experiment": ray_path, "mlflow.note.content": study.spec.description}
    run = client.create_run(exp_id, run_name=f"{study.name} {time.strftime('%Y-%m-%d %H:%M:%S')}", tags=tags)
    client.log_artifact(run.info.run_id, study.path)
    if code.dirty:
        log_text(client, run.info.run_id, DIFF_ARTIFACT, code.diff)
    return run.info.run_id


def create_trial_run(client: MlflowClient, exp_id: str, parent_id: str, study_name: str, trial: Trial, code: CodeState,
                     extra_tags: dict | None = None) -> str:
    """A child run for one trial: its readable name, tags, the flat config as params, the
    config as `config.yaml` (what `python -m isnm.train --config` takes) and, from a dirty tree, its diff."""
    tags = {PARENT: parent_id, "kind": "trial", "study": study_name, "variant": trial.variant, "seed": str(trial.seed),
            "config_hash": trial.config_hash, **code_tags(code), **(extra_tags or {})}
    run_id = client.create_run(exp_id, run_name=trial.name, tags=tags).info.run_id
    params = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in flat(trial.config).items()]
    client.log_batch(run_id, params=params)
    log_text(client, run_id, CONFIG_ARTIFACT, yaml.safe_dump(trial.config, sort_keys=False))
    if code.dirty:
        log_text(client, run_id, DIFF_ARTIFACT, code.diff)
    return run_id


def log_epoch(client: MlflowClient, run_id: str, metrics: dict) -> None:
    """One epoch's metrics, at step = epoch."""
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(metrics[k]), now, int(metrics["epoch"]))
                                      for k in metrics if k in LOGGED_METRICS or k.startswith(LAYER_RATE)])


def close_dangling_runs(client: MlflowClient, exp_id: str, ray_path: str) -> int:
    """Runs of this Ray experiment still RUNNING belong to a driver that died: mark them KILLED.

    A restored trial reopens its own run; the count of closed runs is returned.
    """
    runs = client.search_runs([exp_id], f"tags.ray_experiment = {quoted(ray_path)} and attributes.status = 'RUNNING'")
    for run in runs:
        client.set_terminated(run.info.run_id, "KILLED")
    return len(runs)


def finished_runs(client: MlflowClient, hashes: set[str]) -> dict[str, object]:
    """config hash -> the newest FINISHED trial run with that hash, in any experiment of the store."""
    found: dict[str, object] = {}
    experiments = [e.experiment_id for e in client.search_experiments()]
    for run in every_run(client, experiments, "tags.kind = 'trial' and attributes.status = 'FINISHED'",
                         ["attributes.start_time DESC"]):
        key = run.data.tags.get("config_hash")
        if key in hashes and key not in found:
            found[key] = run
    return found


def source_code(client: MlflowClient, run) -> CodeState:
    """The code a finished run was trained with, as its tags and diff artifact record it."""
    dirty = run.data.tags.get("git_dirty") == "true"
    diff = ""
    if dirty:
        with tempfile.TemporaryDirectory() as tmp:
            diff = Path(client.download_artifacts(run.info.run_id, DIFF_ARTIFACT, tmp)).read_text()
    return CodeState(run.data.tags.get("git_commit", "unknown"), dirty, diff)


def copy_cached_run(client: MlflowClient, source, exp_id: str, parent_id: str, study_name: str, trial: Trial) -> str:
    """A FINISHED child run in this study holding another study's result for the same config hash, with the
    source's provenance (code, environment, data, kernel): its numbers come from there, not from this tree."""
    kept = {k: v for k, v in source.data.tags.items() if k.startswith(ENVIRONMENT_PREFIX)
            or k in ("data_fingerprint", "kernel", "kernel_fallback", "ray_node", "gpu_ids")}
    run_id = create_trial_run(client, exp_id, parent_id, study_name, trial, source_code(client, source),
                              {"cached_from": source.info.run_id, **kept})
    metrics = [m for key in source.data.metrics for m in client.get_metric_history(source.info.run_id, key)]
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a batch
        client.log_batch(run_id, metrics=metrics[start:start + 1000])
    client.set_terminated(run_id, "FINISHED")
    return run_id


def metric_name(text: str) -> str:
    """`text` as (part of) an MLflow metric name, which takes letters, digits and `_ - . / space` only (a colon
    too, but not on Windows): anything else, `+` in "ISNM+GSG" say, becomes `_`, and `/` too (a path)."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "_-. ") else "_" for c in text)


def log_summary(client: MlflowClient, exp_id: str, parent_id: str, hashes: set[str]) -> dict[str, float]:
    """Each variant's mean final test_acc, as `test_acc.mean.<variant>` on the parent run, so that it has numbers
    to chart (named so that the UI, which orders charts by name, draws the trials' `test_acc` before them). Over
    the newest FINISHED trial run of each config hash that is a child of this parent (run now, or a cached copy)
    or a planned trial's (a trial cached in this same experiment is not copied). Returns them by name."""
    newest: dict[str, object] = {}
    for run in every_run(client, [exp_id], "tags.kind = 'trial' and attributes.status = 'FINISHED'",
                         ["attributes.start_time DESC"]):
        key = run.data.tags.get("config_hash")
        if (run.data.tags.get(PARENT) == parent_id or key in hashes) and key not in newest:
            newest[key] = run
    finals: dict[str, list[float]] = {}
    for run in newest.values():
        if "test_acc" in run.data.metrics:
            finals.setdefault(run.data.tags.get("variant", ""), []).append(run.data.metrics["test_acc"])
    summary: dict[str, float] = {}
    for variant in sorted(finals):
        name = base = f"test_acc.mean.{metric_name(variant)}"
        for n in range(2, len(finals) + 2):  # variants that differ only in what `metric_name` replaced
            if name not in summary:
                break
            name = f"{base}_{n}"
        summary[name] = sum(finals[variant]) / len(finals[variant])
    now = int(time.time() * 1000)
    if summary:
        client.log_batch(parent_id, metrics=[Metric(k, v, now, 0) for k, v in summary.items()])
    return summary


def finite_metrics(row: dict) -> dict:
    """A result with the columns a trial did not report (NaN in Ray's result table) left out."""
    return {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}


def trial_error(trial) -> str:
    """The last line of a failed trial's error. When the callback runs, Ray may not yet have copied the error
    file to the storage folder that `Trial.get_error` reads, but it has written it in the trial's local folder."""
    error = trial.get_error()
    if error is not None:
        return last_line(str(error))
    local = trial.error_file
    if local and Path(local).is_file():
        return last_line(Path(local).read_text())
    return "unknown error"


class MlflowTracker(Callback):
    """Logs trials to MLflow as nested child runs of `parent_id`, each epoch exactly once.

    `describe(tune_config)` gives the `Trial` a Tune config stands for. A run is
    FINISHED only once every epoch it was to train is logged: all of them, or up to the epoch where
    the scheduler (ASHA) stopped it, which the run's `stopped_early` tag then says. A trial cut off
    by an interrupt keeps its epochs so far, ends KILLED, and continues in the same run on a rerun.

    Its writes wait, in order, on a `Backlog` while the tracking server is away, for up to `patience_s`: the
    Tune loop goes on meanwhile, so the trials keep training and reporting (a trial's report waits for the
    driver to take it).
    """

    def __init__(self, uri: str, exp_id: str, parent_id: str, study: Study, code: CodeState,
                 describe: Callable[[dict], dict], ray_path: str, patience_s: float = DEFAULT_PATIENCE_S):
        self.uri, self.exp_id, self.parent_id = uri, exp_id, parent_id
        self.study, self.code, self.describe, self.ray_path = study, code, describe, ray_path
        self.patience_s = patience_s
        self.client: Optional[PatientClient] = None
        self.backlog: Optional[Backlog] = None
        self.runs: dict[str, str] = {}  # Ray trial id -> MLflow run id
        self.logged: dict[str, set[int]] = {}  # MLflow run id -> epochs logged
        self.nodes: dict[str, list[str]] = {}  # MLflow run id -> Ray nodes the trial ran on, in order
        self.gpus: dict[str, str] = {}  # MLflow run id -> the GPU ids its `gpu_ids` tag holds
        self.checkpoints: dict[str, Checkpoint] = {}  # Ray trial id -> last checkpoint
        self.diverged: dict[str, str] = {}  # Ray trial id -> why
        self.stopped_at: dict[str, int] = {}  # Ray trial id -> epoch at which the scheduler stopped it
        self.done: set[str] = set()  # Ray trial ids whose run was already FINISHED before this driver
        self.configs: dict[str, dict] = {}  # Ray trial id -> its Tune config
        self.kernels: dict[str, dict] = {}  # MLflow run id -> its kernel tags as last set
        self.environments: dict[str, str] = {}  # MLflow run id -> the environment (JSON) its tags hold

    def setup(self, **info) -> None:
        advice = (f", and its checkpoints are kept in {self.ray_path}: once the server answers, run the same command "
                  f"again to resume")
        self.client = PatientClient(MlflowClient(self.uri), self.uri, self.patience_s, advice)
        self.backlog = Backlog(lambda: self.client.away)

    def run_for(self, trial_id: str, tune_config: dict) -> str:
        if trial_id in self.runs:
            return self.runs[trial_id]
        existing = self.client.search_runs(
            [self.exp_id], f"tags.ray_trial_id = {quoted(trial_id)} and tags.ray_experiment = {quoted(self.ray_path)}")
        if existing and existing[0].info.status == "FINISHED":
            # Ray's last snapshot predates the trial's end, so the restored trial replays its final
            # checkpoint (no epoch is trained again); its run is complete and stays untouched.
            run_id = existing[0].info.run_id
            self.done.add(trial_id)
        elif existing:  # the experiment was restored after its driver stopped: continue that run
            run_id = existing[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, PARENT, self.parent_id)
            if "interrupted" in existing[0].data.tags:
                self.client.delete_tag(run_id, "interrupted")
        else:
            extra = {"ray_trial_id": trial_id, "ray_experiment": self.ray_path, "profile": self.study.profile or ""}
            run_id = create_trial_run(self.client, self.exp_id, self.parent_id, self.study.name,
                                      self.describe(tune_config), self.code, extra)
        self.logged[run_id] = {m.step for m in self.client.get_metric_history(run_id, "test_acc")} if existing else set()
        self.nodes[run_id] = (existing[0].data.tags.get("ray_nodes", "").split(", ")
                              if existing and existing[0].data.tags.get("ray_nodes") else [])
        self.runs[trial_id] = run_id
        self.configs[trial_id] = tune_config
        return run_id

    def planned_epochs(self, trial_id: str, tune_config: dict) -> int:
        """The epochs the trial must log to be FINISHED: all, or those before the scheduler stopped it."""
        return self.stopped_at.get(trial_id) or self.describe(tune_config).config["epochs"]

    def missing_epochs(self, trial_id: str, tune_config: dict) -> list[int]:
        logged = self.logged[self.run_for(trial_id, tune_config)]
        return [e for e in range(1, self.planned_epochs(trial_id, tune_config) + 1) if e not in logged]

    def on_step_begin(self, iteration, trials, **info) -> None:
        self.backlog.check()  # a write that failed while the loop went on (the server away too long) stops it here

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.backlog.submit(self.run_for, trial.trial_id, trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.backlog.submit(self.record, trial.trial_id, trial.config, result)

    def record(self, trial_id: str, tune_config: dict, result: dict) -> None:
        """One result of a trial: its epoch's metrics logged unless already there, where it ran, why it stopped."""
        run_id = self.run_for(trial_id, tune_config)
        if trial_id in self.done:
            return
        self.note_node(run_id, result)
        self.note_kernel(run_id, result)
        self.note_environment(run_id, result)
        if result.get("checkpoint_note"):
            self.client.set_tag(run_id, "checkpoint_fallback", str(result["checkpoint_note"])[:5000])
        if result.get("diverged"):
            self.diverged[trial_id] = str(result["diverged"])
            return
        epoch = int(result.get("epoch", 0))
        if result.get("done") and epoch < self.describe(tune_config).config["epochs"]:
            # Tune marks a result done before the callbacks see it only when a scheduler stopped the trial
            self.stopped_at[trial_id] = epoch
        if epoch < 1 or epoch in self.logged[run_id]:
            return  # a retried or restored trial re-reporting an epoch already logged
        log_epoch(self.client, run_id, result)
        self.logged[run_id].add(epoch)

    def note_node(self, run_id: str, result: dict) -> None:
        """Tag `ray_node` with where the trial reports from now, `ray_nodes` with every node it used, and `gpu_ids`
        with the GPUs Ray gave it there, if any."""
        gpus = result.get("gpu_ids")
        if gpus and self.gpus.get(run_id) != gpus:
            self.gpus[run_id] = gpus
            self.client.set_tag(run_id, "gpu_ids", str(gpus))
        node = result.get("node")
        nodes = self.nodes[run_id]
        if not node or (nodes and nodes[-1] == node):
            return
        nodes.append(node)
        self.client.set_tag(run_id, "ray_node", node)
        self.client.set_tag(run_id, "ray_nodes", ", ".join(nodes))

    def note_kernel(self, run_id: str, result: dict) -> None:
        """Tag `kernel` with the ISNM loops that ran, and `kernel_fallback` with why they are not the compiled
        ones asked for (a worker reused between trials keeps a fallback for the trials after)."""
        if not result.get("kernel"):
            return
        tags = {"kernel": str(result["kernel"])}
        if result.get("kernel_fallback"):
            tags["kernel_fallback"] = str(result["kernel_fallback"])[:5000]
        if self.kernels.get(run_id) != tags:
            self.kernels[run_id] = tags
            for key, value in tags.items():
                self.client.set_tag(run_id, key, value)

    def note_environment(self, run_id: str, result: dict) -> None:
        """Tag the environment the trial reports (versions, device, threads, determinism; `env.*`) and the data
        set's fingerprint; a trial that moves to another node reports, and is tagged with, that node's."""
        text = result.get("environment")
        if text and self.environments.get(run_id) != text:
            self.environments[run_id] = text
            tags = environment_tags(json.loads(text))
            if result.get("data_fingerprint"):
                tags["data_fingerprint"] = str(result["data_fingerprint"])
            for key, value in tags.items():
                self.client.set_tag(run_id, key, value)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        self.checkpoints[trial.trial_id] = checkpoint

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.backlog.submit(self.finish, trial.trial_id, trial.config,
                            self.checkpoints.get(trial.trial_id) or trial.checkpoint)

    def finish(self, trial_id: str, tune_config: dict, checkpoint: Optional[Checkpoint]) -> bool:
        """End a trial's run: FAILED if it diverged, FINISHED with its final weights if every epoch it was
        to train is logged; else leave it open (for `reconcile`). Returns whether the run is FINISHED."""
        run_id = self.run_for(trial_id, tune_config)
        if trial_id in self.done:
            return True
        if trial_id in self.diverged:
            self.client.set_tag(run_id, "error", self.diverged[trial_id])
            self.client.set_terminated(run_id, "FAILED")
            return False
        if self.missing_epochs(trial_id, tune_config):
            return False
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                self.log_weights(run_id, Path(folder) / STATE_FILE)
        if trial_id in self.stopped_at:
            self.client.set_tag(run_id, "stopped_early", f"by the scheduler after epoch {self.stopped_at[trial_id]} "
                                                         f"of {self.describe(tune_config).config['epochs']}")
        self.client.set_terminated(run_id, "FINISHED")
        return True

    def reconcile(self, results) -> list[str]:
        """After fit: every trial's run ends FINISHED, FAILED or KILLED, never half-logged as FINISHED.

        Epochs MLflow lacks (a wiped or another store) are logged from Ray's own record of the trial's
        results when it has them. Returns the names of the trials left unfinished (interrupted).
        """
        self.backlog.drain()  # the writes still waiting for the server, first
        for result in results:
            if result.error is not None or "epoch" not in (result.metrics or {}):
                continue  # failed (on_trial_error logged it), or no epoch reported
            trial_id = result.metrics["trial_id"]
            run_id = self.run_for(trial_id, result.config)
            if trial_id in self.done or self.client.get_run(run_id).info.status in ("FINISHED", "FAILED"):
                continue
            history = result.metrics_dataframe
            rows = [] if history is None else history.sort_values("epoch").to_dict("records")
            for row in rows + [result.metrics]:
                self.record(trial_id, result.config, finite_metrics(row))
            self.finish(trial_id, result.config, result.checkpoint)
        unfinished = []
        for trial_id, run_id in self.runs.items():  # trials cut off, some before their first epoch
            if trial_id in self.done or self.client.get_run(run_id).info.status != "RUNNING":
                continue
            config = self.configs[trial_id]
            planned = self.planned_epochs(trial_id, config)
            logged = planned - len(self.missing_epochs(trial_id, config))
            self.client.set_tag(run_id, "interrupted", f"{logged} of {planned} epochs logged")
            self.client.set_terminated(run_id, "KILLED")
            unfinished.append(self.describe(config).name)
        return unfinished

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self.backlog.submit(self.note_retries, trial.trial_id, trial.config, trial.num_failures)

    def note_retries(self, trial_id: str, tune_config: dict, failures: int) -> None:
        self.client.set_tag(self.run_for(trial_id, tune_config), "retries", str(failures))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        why = trial_error(trial)
        self.backlog.submit(self.fail, trial.trial_id, trial.config, why)

    def fail(self, trial_id: str, tune_config: dict, error: str) -> None:
        run_id = self.run_for(trial_id, tune_config)
        self.client.set_tag(run_id, "error", error)
        self.client.set_terminated(run_id, "FAILED")

    def log_weights(self, run_id: str, state_file: Path) -> None:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / WEIGHTS_ARTIFACT
            torch.save(state["model"], weights)
            self.client.log_artifact(run_id, str(weights))
