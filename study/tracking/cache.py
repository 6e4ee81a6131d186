"""Work already done: the newest finished run of each config hash in the store, and its copy into another
study, so a config is trained once whatever study asks for it."""
from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from study.records import every_run
from study.spec.plan import Trial
from study.tracking.provenance import DIFF_ARTIFACT, ENVIRONMENT_PREFIX, CodeState
from study.tracking.writers import create_trial_run


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
