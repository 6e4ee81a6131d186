"""MLflow writes of a study: one parent run per invocation, one child run per trial, each epoch's metrics, the
parent's per-row summary."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from isnm import flat, metrics
from study.records import (METRICS, Artifact, Kind, RunStatus, Tag, logged_per_epoch, newest_finished,
                           read_runs)
from study.design.config import Study
from study.design.plan import Trial, place
from study.design.plugins import Sources
from study.tracking.provenance import CodeState, slurm_tags

MAX_PARAM_LENGTH = 6000


def code_tags(code: CodeState) -> dict[str, str]:
    return {Tag.GIT_COMMIT: code.commit, Tag.GIT_DIRTY: str(code.dirty).lower()}


def log_text(client: MlflowClient, run_id: str, name: str, text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(text)
        client.log_artifact(run_id, str(path))


def start_parent_run(client: MlflowClient, exp_id: str, study: Study, code: CodeState, ray_path: str) -> str:
    sources = Sources(study)  # the code of its own the study names, as it is now: what the report plans with later
    tags = {Tag.KIND: Kind.STUDY, Tag.STUDY: study.name, Tag.PROFILE: study.profile or "", **code_tags(code),
            Tag.RAY_EXPERIMENT: ray_path, Tag.NOTE: study.spec.description,
            Tag.STUDY_FILE: str(Path(study.path).resolve()), **slurm_tags(),
            **sources.tags(sources.named())}
    run = client.create_run(exp_id, run_name=f"{study.name} {time.strftime('%Y-%m-%d %H:%M:%S')}", tags=tags)
    if study.resolved is None:
        client.log_artifact(run.info.run_id, study.path)
    else:  # what the runs trained: each {from_study: NAME} as the schedule read from the store now
        log_text(client, run.info.run_id, Path(study.path).name,
                 f"# {study.path}, with each surrogate.schedule: {{from_study: NAME}} replaced by the per-epoch betas "
                 f"study.run found\n" + yaml.safe_dump(study.resolved, sort_keys=False))
    if code.dirty:
        log_text(client, run.info.run_id, Artifact.DIFF, code.diff)
    return run.info.run_id


def create_trial_run(client: MlflowClient, exp_id: str, parent_id: str, study_name: str, trial: Trial, code: CodeState,
                     extra_tags: dict | None = None) -> str:
    """A child run for one trial: its readable name, tags, the flat config as params, the
    config as `config.yaml` (what `python -m isnm --config` takes) and, from a dirty tree, its diff."""
    tags = {Tag.PARENT: parent_id, Tag.KIND: Kind.TRIAL, Tag.STUDY: study_name, Tag.VARIANT: trial.variant,
            Tag.SEED: str(trial.seed), Tag.CONFIG_HASH: trial.config_hash, **code_tags(code), **slurm_tags(),
            **(extra_tags or {})}
    run_id = client.create_run(exp_id, run_name=trial.name, tags=tags).info.run_id
    params = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in flat(trial.config).items() if k not in trial.varying]
    client.log_batch(run_id, params=params)
    if not trial.varying:  # a PBT member's config changes as it trains: no one file trains it again
        log_text(client, run_id, Artifact.CONFIG, yaml.safe_dump(trial.config, sort_keys=False))
    if code.dirty:
        log_text(client, run_id, Artifact.DIFF, code.diff)
    return run_id


def log_epoch(client: MlflowClient, run_id: str, reported: dict) -> None:
    """One epoch's metrics from what a trial reported, at step = epoch."""
    now = int(time.time() * 1000)
    epoch = int(reported[metrics.EPOCH])
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, epoch) for k, v in reported.items() if logged_per_epoch(k)])


def close_dangling_runs(client: MlflowClient, exp_id: str, ray_path: str) -> int:
    """Runs of this Ray experiment still RUNNING belong to a driver that died: mark them KILLED; a cached copy still
    RUNNING is one whose copying was cut short: remove it (the next copy is whole).

    A restored trial reopens its own run; the count of closed runs is returned.
    """
    runs = list(read_runs(client, [exp_id], status=RunStatus.RUNNING, ray_experiment=ray_path))
    for run in runs:
        client.set_terminated(run.run_id, RunStatus.KILLED)
    half_copies = [run for run in read_runs(client, [exp_id], Kind.TRIAL, RunStatus.RUNNING) if Tag.CACHED_FROM in run.tags]
    for run in half_copies:
        client.delete_run(run.run_id)
    return len(runs) + len(half_copies)


def place_tags(study: Study, trial: Trial) -> dict[str, str]:
    """A trial's table row (and column) in `study`'s layout, as tags: MLflow's UI groups the runs by them."""
    row, column = place(study.table, trial)
    return {Tag.ROW: row, **({Tag.COLUMN: column} if column else {})}


def log_summary(client: MlflowClient, exp_id: str, parent_id: str, places: dict[str, dict[str, str]],
                description: str = "") -> dict[str, float]:
    """Each table row's mean final test_acc, as a table in the parent run's description below the study's own
    `description` (the UI shows it on the run's page; as metrics, the UI drew each as a one-bar chart labelled
    "Unassigned" among the trials' curves). Over the newest FINISHED trial run of each config hash that is a child of
    this parent (run now, or a cached copy) or a planned trial's (a trial cached in this same experiment is not
    copied), each tagged with its row and column in this invocation's layout (`places`: a planned config hash's
    `place_tags`), which may have changed since it ran; a search's samples: their variant. Returns the means by row."""
    mine = (run for run in read_runs(client, [exp_id], Kind.TRIAL, RunStatus.FINISHED)
            if run.parent_id == parent_id or run.config_hash in places)
    finals: dict[str, list[float]] = {}
    for run in newest_finished(mine).values():
        tags = places.get(run.config_hash, {Tag.ROW: run.variant})
        for key, value in tags.items():
            if run.tags.get(key) != value:
                client.set_tag(run.run_id, key, value)
        if metrics.TEST_ACC in run.metrics:
            finals.setdefault(tags[Tag.ROW], []).append(run.metrics[metrics.TEST_ACC])
    means = {row: sum(finals[row]) / len(finals[row]) for row in sorted(finals)}
    if means:
        shown = METRICS[metrics.TEST_ACC]
        table = "\n".join([f"Mean final {metrics.TEST_ACC} per table row (the newest finished run of each trial; "
                           f"`python -m study.report` for the tables with their spread and tests):", "",
                           f"| row | trials | {metrics.TEST_ACC} |", "| --- | ---: | ---: |",
                           *(f"| {row.replace('|', '/')} | {len(finals[row])} | {shown.printed(mean)} |"
                             for row, mean in means.items())])
        client.set_tag(parent_id, Tag.NOTE, f"{description}\n\n{table}" if description else table)
    return means
