"""MLflow writes of a study: one parent run per invocation, one child run per trial, each epoch's metrics, the
parent's per-variant summary."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from isnm import flat
from isnm.metrics import LAYER_RATE
from study.records import every_run
from study.spec.config import METRICS, Study
from study.spec.plan import Trial
from study.tracking.provenance import CONFIG_ARTIFACT, DIFF_ARTIFACT, CodeState
from study.tracking.store import quoted

PARENT = "mlflow.parentRunId"


LOGGED_METRICS = METRICS + ("energy_ann", "beta", "alpha", "epoch_seconds")  # and LAYER_RATE + each spiking layer


MAX_PARAM_LENGTH = 6000


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
    config as `config.yaml` (what `python -m isnm --config` takes) and, from a dirty tree, its diff."""
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
