"""The Ray Tune callback on the driver that owns every MLflow write of a study's trials.

A trial that is retried, or an experiment that is restored after the driver died, keeps one MLflow run
with each epoch logged exactly once."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch
from mlflow.tracking import MlflowClient
from ray.tune import Callback, Checkpoint

from study.errors import last_line
from study.run.storage import STATE_FILE
from study.spec.config import Study
from study.tracking.provenance import WEIGHTS_ARTIFACT, CodeState, environment_tags
from study.tracking.retry import DEFAULT_PATIENCE_S, Backlog, PatientClient
from study.tracking.store import quoted
from study.tracking.writers import PARENT, create_trial_run, log_epoch


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
