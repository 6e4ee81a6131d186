"""Work already done: the newest finished run of each config hash in the store, and its copy into another
study, so a config is trained once whatever study asks for it."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from mlflow.tracking import MlflowClient

from study.records import Artifact, RunRecord, RunStatus, Tag, finished_trials, histories
from study.design.plan import Trial
from study.tracking.provenance import CodeState
from study.tracking.writers import create_trial_run

# What a copy keeps of its source's tags besides its code: where and with what its numbers were made
PROVENANCE_TAGS = (Tag.DATA_FINGERPRINT, Tag.KERNEL, Tag.KERNEL_FALLBACK, Tag.RAY_NODE, Tag.GPU_IDS)
METRICS_PER_BATCH = 1000  # the most MLflow takes in one log_batch
COPIES_PER_READ = 100  # cached runs whose histories are read at once: a query per metric, not per run and metric


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


def copy_cached_runs(client: MlflowClient, copies: list[tuple[Trial, RunRecord]], exp_id: str, parent_id: str,
                     study_name: str, copied: Callable[[int], None] = lambda n: None) -> None:
    """Each (trial, source run of another study) copied into this study (`copy_cached_run`); the sources' histories
    are read COPIES_PER_READ sources a query per metric (`histories`), and `copied(n)` follows each copy."""
    for start in range(0, len(copies), COPIES_PER_READ):
        chunk = copies[start:start + COPIES_PER_READ]
        keys = sorted({key for _, source in chunk for key in source.metrics})
        logged = {key: histories(client, [source.run_id for _, source in chunk], key) for key in keys}
        for done, (trial, source) in enumerate(chunk, start=start + 1):
            copy_cached_run(client, source, exp_id, parent_id, study_name, trial,
                            [m for key in source.metrics for m in logged[key][source.run_id]])
            copied(done)


def copy_cached_run(client: MlflowClient, source: RunRecord, exp_id: str, parent_id: str, study_name: str,
                    trial: Trial, history: list) -> str:
    """A FINISHED child run in this study holding another study's result for the same config hash (its metrics'
    `history`), with the source's provenance (code, environment, data, kernel): its numbers come from there, not
    from this tree."""
    kept = {k: v for k, v in source.tags.items() if k.startswith(Tag.ENVIRONMENT) or k in PROVENANCE_TAGS}
    run_id = create_trial_run(client, exp_id, parent_id, study_name, trial, source_code(client, source),
                              {Tag.CACHED_FROM: source.run_id, **kept})
    try:
        for start in range(0, len(history), METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=history[start:start + METRICS_PER_BATCH])
        client.set_terminated(run_id, RunStatus.FINISHED)
    except BaseException:  # a copy is whole or not there: a half one would read as a run that stopped
        try:
            client.delete_run(run_id)
        except Exception:
            pass  # the store is what failed: the next invocation removes it (close_dangling_runs)
        raise
    return run_id
