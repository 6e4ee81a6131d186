"""The Ray Tune callback on the driver that owns every MLflow write of a study's trials.

A trial that is retried, or an experiment that is restored after the driver died, keeps one MLflow run
with each epoch logged exactly once."""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from mlflow.tracking import MlflowClient
from ray.tune import Callback, Checkpoint

from isnm import metrics
from study.errors import StudyError, last_line
from study.records import Artifact, PbtExploit, Reported, RunRecord, RunStatus, Tag, history, read_runs
from study.design.config import Study
from study.design.plan import Trial
from study.tracking.provenance import CodeState, environment_tags, slurm_tags
from study.tracking.retry import DEFAULT_PATIENCE_S, Backlog, PatientClient
from study.design.plugins import Sources, plugins_of
from study.tracking.writers import create_trial_run, log_epoch, log_text, place_tags


def finite_metrics(row: dict) -> dict:
    """A result with the columns a trial did not report (NaN in Ray's result table) left out."""
    return {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}


def trial_traceback(trial) -> str:
    """A failed trial's error, its traceback whole (what the user's code raised, where). When the callback runs, Ray
    may not yet have copied the error file to the storage folder that `Trial.get_error` reads, but it has written it
    in the trial's local folder."""
    error = trial.get_error()
    if error is not None:
        return str(error)
    local = trial.error_file
    if local and Path(local).is_file():
        return Path(local).read_text()
    return "unknown error"


def trial_error(trial) -> str:
    """The last line of a failed trial's error: the exception and its message."""
    return last_line(trial_traceback(trial))


@dataclass
class TrialLog:
    """What the tracker knows of one Ray trial: the run it logs to, and what that run holds."""
    run_id: str
    trial: Trial
    tune_config: dict
    logged: set[int] = field(default_factory=set)  # the epochs in the run
    nodes: list[str] = field(default_factory=list)  # the Ray nodes it ran on, in order (tag ray_nodes)
    tags: dict[str, str] = field(default_factory=dict)  # the tags this tracker set, as it last set them
    finished_before: bool = False  # its run was FINISHED before this driver: a restore replays it, untouched
    checkpoint: Optional[Checkpoint] = None  # the last one Tune reported
    diverged: str = ""  # why training diverged
    stopped_at: Optional[int] = None  # the epoch at which the scheduler stopped it
    betas: dict[int, float] = field(default_factory=dict)  # a PBT member's: the beta its run holds for each epoch

    @property
    def planned_epochs(self) -> int:
        """The epochs the trial must log to be FINISHED: all, or those before the scheduler stopped it."""
        return self.stopped_at or self.trial.config["epochs"]

    @property
    def missing_epochs(self) -> list[int]:
        return [e for e in range(1, self.planned_epochs + 1) if e not in self.logged]


def continued(client, existing: RunRecord, trial: Trial, tune_config: dict, parent_id: str) -> TrialLog:
    """The log of a trial whose run an interrupted driver left unfinished, reopened under `parent_id` to go on in: its
    name and variant as the study file says now (a renamed variant is the same config, so the same trial), the
    Slurm restart it trains in, the epochs (and a PBT member's betas) it holds."""
    client.update_run(existing.run_id, status=RunStatus.RUNNING)
    client.set_tag(existing.run_id, Tag.PARENT, parent_id)
    if existing.name != trial.name:
        client.update_run(existing.run_id, name=trial.name)
        client.set_tag(existing.run_id, Tag.VARIANT, trial.variant)
    if Tag.INTERRUPTED in existing.tags:
        client.delete_tag(existing.run_id, Tag.INTERRUPTED)
    for key, value in slurm_tags().items():  # a requeued job: the restart it trains in now
        client.set_tag(existing.run_id, key, value)
    nodes = existing.tags.get(Tag.RAY_NODES)
    log = TrialLog(existing.run_id, trial, tune_config,
                   {m.step for m in history(client, existing.run_id, metrics.TEST_ACC)},
                   nodes.split(", ") if nodes else [])
    if trial.varying:
        log.betas = {m.step: m.value for m in history(client, existing.run_id, metrics.BETA)}
    return log


def check_retrained(log: TrialLog, epoch: int, result: dict) -> None:
    """A PBT member that trains a logged epoch again (resumed from a checkpoint before it) must train it with the
    beta its run holds: the exploit decisions are seeded, and one made otherwise would leave a run whose epochs
    are not its final weights' past."""
    before, now = log.betas.get(epoch), result.get(metrics.BETA)
    if before is not None and now is not None and float(now) != before:
        raise StudyError(f"{log.trial.name} trained epoch {epoch} again with beta {float(now):.6g}, but its run "
                         f"holds {before:.6g} from before the study was interrupted: its record would not be its "
                         f"weights' past; run the study again with --fresh")


def reported_tags(result: dict) -> dict[str, str]:
    """The tags a trial's result sets on its run: the GPUs Ray gave it, the ISNM loops that ran (with why they are not
    the compiled ones asked for: a worker reused between trials keeps a fallback for the trials after), the
    environment (versions, device, threads, determinism; `env.*`) and the data set's fingerprint; those it reports."""
    tags = {Tag.GPU_IDS: result.get(Reported.GPU_IDS), Tag.KERNEL: result.get(metrics.KERNEL),
            Tag.KERNEL_FALLBACK: str(result.get(metrics.KERNEL_FALLBACK) or "")[:5000],
            Tag.DATA_FINGERPRINT: result.get(metrics.DATA_FINGERPRINT)}
    if result.get(Reported.ENVIRONMENT):
        tags.update(environment_tags(json.loads(result[Reported.ENVIRONMENT])))
    return {key: str(value) for key, value in tags.items() if value}


def log_weights(client, run_id: str, checkpoint: Checkpoint) -> None:
    """A trial's final checkpoint's model weights logged as its run's weights artifact: the file the trial's last
    planned epoch writes, else taken from the whole training state (a trial stopped early by a scheduler, or a
    checkpoint of a version that wrote only the state)."""
    with checkpoint.as_directory() as folder:
        weights = Path(folder) / Artifact.WEIGHTS
        if weights.is_file():
            client.log_artifact(run_id, str(weights))
            return
        import torch  # only here

        state = torch.load(Path(folder) / Reported.STATE_FILE, map_location="cpu", weights_only=True)
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(state["model"], Path(tmp) / Artifact.WEIGHTS)
            client.log_artifact(run_id, str(Path(tmp) / Artifact.WEIGHTS))


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
                 describe: Callable[[dict], Trial], ray_path: str, patience_s: float = DEFAULT_PATIENCE_S,
                 carried: Optional[dict[str, str]] = None):
        self.uri, self.exp_id, self.parent_id = uri, exp_id, parent_id
        self.study, self.code, self.describe, self.ray_path = study, code, describe, ray_path
        self.patience_s, self.sources = patience_s, Sources(study)
        self.carried = dict(carried or {})  # trial name -> the run its interrupted trial left, to carry on in
        self.client: Optional[PatientClient] = None  # made by `setup`, in Tune's loop: the tracker is pickled before
        self.backlog: Optional[Backlog] = None
        self.trials: dict[str, TrialLog] = {}  # by Ray trial id

    def setup(self, **info) -> None:
        advice = (f", and its checkpoints are kept in {self.ray_path}: once the store answers, run the same command "
                  f"again to resume")
        self.client = PatientClient(MlflowClient(self.uri), self.uri, self.patience_s, advice)
        self.backlog = Backlog(lambda: self.client.away)

    def log_of(self, trial_id: str, tune_config: dict) -> TrialLog:
        """The trial's log: its run found in the store (a restored experiment's) or made now."""
        if trial_id in self.trials:
            return self.trials[trial_id]
        trial = self.describe(tune_config)
        existing = next(read_runs(self.client, [self.exp_id], limit=1, ray_trial_id=trial_id,
                                  ray_experiment=self.ray_path), None)
        if existing is None and trial.name in self.carried:  # carries on from a checkpoint of an earlier plan
            existing = RunRecord.of(self.client.get_run(self.carried[trial.name]))
            self.client.set_tag(existing.run_id, Tag.RAY_TRIAL_ID, trial_id)
            self.client.set_tag(existing.run_id, Tag.RAY_EXPERIMENT, self.ray_path)
        if existing is None:
            extra = {Tag.RAY_TRIAL_ID: trial_id, Tag.RAY_EXPERIMENT: self.ray_path, Tag.PROFILE: self.study.profile or "",
                     **place_tags(self.study, trial), **self.sources.tags(plugins_of(trial.config))}
            log = TrialLog(create_trial_run(self.client, self.exp_id, self.parent_id, self.study.name, trial, self.code,
                                            extra), trial, tune_config)
        elif existing.status == RunStatus.FINISHED:
            # Ray's last snapshot predates the trial's end, so the restored trial replays its final
            # checkpoint (no epoch is trained again); its run is complete and stays untouched.
            log = TrialLog(existing.run_id, trial, tune_config, finished_before=True)
        else:  # the experiment was restored after its driver stopped: continue that run
            log = continued(self.client, existing, trial, tune_config, self.parent_id)
        self.trials[trial_id] = log
        return log

    def tag_if_changed(self, log: TrialLog, key: str, value: str) -> None:
        if log.tags.get(key) != value:
            self.client.set_tag(log.run_id, key, value)
            log.tags[key] = value

    def on_step_begin(self, iteration, trials, **info) -> None:
        self.backlog.check()  # a write that failed while the loop went on (the server away too long) stops it here

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.backlog.submit(self.log_of, trial.trial_id, trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.backlog.submit(self.record, trial.trial_id, trial.config, result)

    def record(self, trial_id: str, tune_config: dict, result: dict) -> None:
        """One result of a trial: its epoch's metrics logged unless already there, where it ran, why it stopped."""
        log = self.log_of(trial_id, tune_config)
        if log.finished_before:
            return
        self.note_where(log, result)
        if result.get(Reported.CHECKPOINT_NOTE):
            self.tag_if_changed(log, Tag.CHECKPOINT_FALLBACK, str(result[Reported.CHECKPOINT_NOTE])[:5000])
        if result.get(Reported.DIVERGED):
            log.diverged = str(result[Reported.DIVERGED])
            return
        epoch = int(result.get(metrics.EPOCH, 0))
        if result.get(Reported.EXPLOITED):
            self.note_exploit(log, str(result[Reported.EXPLOITED]), epoch - 1, tune_config)
        if result.get("done") and epoch < log.trial.config["epochs"]:
            # Tune marks a result done before the callbacks see it only when a scheduler stopped the trial
            log.stopped_at = epoch
        if epoch < 1 or epoch in log.logged:  # a retried or restored trial re-reporting an epoch already logged
            check_retrained(log, epoch, result)
            return
        log_epoch(self.client, log.run_id, result)
        log.logged.add(epoch)
        if log.trial.varying and metrics.BETA in result:
            log.betas[epoch] = float(result[metrics.BETA])

    def note_where(self, log: TrialLog, result: dict) -> None:
        """Tag where the trial reports from now, `ray_node` and every node it used (`ray_nodes`), and with what
        (`reported_tags`). A trial that moves to another node reports, and is tagged with, that node's."""
        node = result.get(Reported.NODE)
        if node and (not log.nodes or log.nodes[-1] != node):
            log.nodes.append(node)
            self.tag_if_changed(log, Tag.RAY_NODE, node)
            self.tag_if_changed(log, Tag.RAY_NODES, ", ".join(log.nodes))
        for key, value in reported_tags(result).items():
            self.tag_if_changed(log, key, value)

    def note_exploit(self, log: TrialLog, source_trial: str, epoch: int, tune_config: dict) -> None:
        """Tag a PBT member's run with its exploit: after `epoch` it took the checkpoint of `source_trial` (a Ray trial
        id), whose run is named, and trains on with the values its config has now."""
        source = next(read_runs(self.client, [self.exp_id], limit=1, ray_trial_id=source_trial,
                                ray_experiment=self.ray_path), None)
        trial = self.describe(tune_config)
        key, text = PbtExploit(epoch, source.run_id if source else source_trial,
                               {k: trial.overrides[k] for k in trial.varying}).tag
        self.tag_if_changed(log, key, text)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        self.backlog.submit(self.note_checkpoint, trial.trial_id, trial.config, checkpoint)

    def note_checkpoint(self, trial_id: str, tune_config: dict, checkpoint: Checkpoint) -> None:
        self.log_of(trial_id, tune_config).checkpoint = checkpoint

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.backlog.submit(self.finish, trial.trial_id, trial.config, trial.checkpoint)

    def finish(self, trial_id: str, tune_config: dict, checkpoint: Optional[Checkpoint]) -> bool:
        """End a trial's run: FAILED if it diverged, FINISHED with its final weights if every epoch it was
        to train is logged; else leave it open (for `reconcile`). Returns whether the run is FINISHED."""
        log = self.log_of(trial_id, tune_config)
        if log.finished_before:
            return True
        if log.diverged:
            self.client.set_tag(log.run_id, Tag.ERROR, log.diverged)
            self.client.set_terminated(log.run_id, RunStatus.FAILED)
            return False
        if log.missing_epochs:
            return False
        checkpoint = log.checkpoint or checkpoint
        if checkpoint is not None:
            log_weights(self.client, log.run_id, checkpoint)
        if log.stopped_at:
            self.client.set_tag(log.run_id, Tag.STOPPED_EARLY, f"by the scheduler after epoch {log.stopped_at} of "
                                                               f"{log.trial.config['epochs']}")
        self.client.set_terminated(log.run_id, RunStatus.FINISHED)
        return True

    def reconcile(self, results) -> list[str]:
        """After fit: every trial's run ends FINISHED, FAILED or KILLED, never half-logged as FINISHED.

        Epochs MLflow lacks (a wiped or another store) are logged from Ray's own record of the trial's
        results when it has them. Returns the names of the trials left unfinished (interrupted).
        """
        self.backlog.drain()  # the writes still waiting for the server, first
        for result in results:
            if result.error is not None or metrics.EPOCH not in (result.metrics or {}):
                continue  # failed (on_trial_error logged it), or no epoch reported
            trial_id = result.metrics["trial_id"]
            log = self.log_of(trial_id, result.config)
            if log.finished_before or self.client.get_run(log.run_id).info.status in (RunStatus.FINISHED, RunStatus.FAILED):
                continue
            history = result.metrics_dataframe
            rows = [] if history is None else history.sort_values(metrics.EPOCH).to_dict("records")
            for row in rows + [result.metrics]:
                self.record(trial_id, result.config, finite_metrics(row))
            self.finish(trial_id, result.config, result.checkpoint)
        return self.close_interrupted()

    def close_interrupted(self) -> list[str]:
        """The runs of the trials cut off (some before their first epoch) ended KILLED, with how far they got, so
        that the same command resumes them; their trials' names. After `reconcile`, or on its own when fit
        itself was interrupted (a Ctrl-C before Tune could take it, or a second one)."""
        unfinished = []
        for log in self.trials.values():
            if log.finished_before or self.client.get_run(log.run_id).info.status != RunStatus.RUNNING:
                continue
            logged = log.planned_epochs - len(log.missing_epochs)
            self.client.set_tag(log.run_id, Tag.INTERRUPTED, f"{logged} of {log.planned_epochs} epochs logged")
            self.client.set_terminated(log.run_id, RunStatus.KILLED)
            unfinished.append(log.trial.name)
        return unfinished

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self.backlog.submit(self.note_retries, trial.trial_id, trial.config, trial.num_failures)

    def note_retries(self, trial_id: str, tune_config: dict, failures: int) -> None:
        self.client.set_tag(self.log_of(trial_id, tune_config).run_id, Tag.RETRIES, str(failures))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.backlog.submit(self.fail, trial.trial_id, trial.config, trial_traceback(trial))

    def fail(self, trial_id: str, tune_config: dict, traceback: str) -> None:
        run_id = self.log_of(trial_id, tune_config).run_id
        self.client.set_tag(run_id, Tag.ERROR, last_line(traceback))
        log_text(self.client, run_id, Artifact.ERROR, traceback)  # the user's code's traceback, in the run
        self.client.set_terminated(run_id, RunStatus.FAILED)
