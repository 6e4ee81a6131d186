"""Work already done: the newest finished run of each config hash in the store, and its copy into another
study, so a config is trained once whatever study asks for it."""
from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from study.records import Artifact, RunRecord, Tag, finished_trials
from study.spec.plan import Trial
from study.tracking.provenance import CodeState
from study.tracking.writers import create_trial_run

# What a copy keeps of its source's tags besides its code: where and with what its numbers were made
PROVENANCE_TAGS = (Tag.DATA_FINGERPRINT, Tag.KERNEL, Tag.KERNEL_FALLBACK, Tag.RAY_NODE, Tag.GPU_IDS)
METRICS_PER_BATCH = 1000  # the most MLflow takes in one log_batch


def finished_runs(client: MlflowClient, hashes: set[str]) -> dict[str, RunRecord]:
    """config hash -> the newest FINISHED trial run with that hash, in any experiment of the store."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {key: run for key, run in finished_trials(client, experiments).items() if key in hashes}


def source_code(client: MlflowClient, run: RunRecord) -> CodeState:
    """The code a finished run was trained with, as its tags and diff artifact record it."""
    dirty = run.tags.get(Tag.GIT_DIRTY) == "true"
    diff = ""
    if dirty:
        with tempfile.TemporaryDirectory() as tmp:
            diff = Path(client.download_artifacts(run.run_id, Artifact.DIFF, tmp)).read_text()
    return CodeState(run.tag(Tag.GIT_COMMIT), dirty, diff)


def copy_cached_run(client: MlflowClient, source: RunRecord, exp_id: str, parent_id: str, study_name: str,
                    trial: Trial) -> str:
    """A FINISHED child run in this study holding another study's result for the same config hash, with the
    source's provenance (code, environment, data, kernel): its numbers come from there, not from this tree."""
    kept = {k: v for k, v in source.tags.items() if k.startswith(Tag.ENVIRONMENT) or k in PROVENANCE_TAGS}
    run_id = create_trial_run(client, exp_id, parent_id, study_name, trial, source_code(client, source),
                              {Tag.CACHED_FROM: source.run_id, **kept})
    try:
        history = [m for key in source.metrics for m in client.get_metric_history(source.run_id, key)]
        for start in range(0, len(history), METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=history[start:start + METRICS_PER_BATCH])
        client.set_terminated(run_id, "FINISHED")
    except BaseException:  # a copy is whole or not there: a half one would read as a run that stopped
        try:
            client.delete_run(run_id)
        except Exception:
            pass  # the store is what failed: the next invocation removes it (close_dangling_runs)
        raise
    return run_id
