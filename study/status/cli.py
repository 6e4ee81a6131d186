"""python -m study.status: where a study stands, from the tracking store (and Slurm's queue when the study runs
there): its trials by state, epochs done of planned, what remains, and the invocation or job running it.

    ablation (profile demo): last invocation 2026-12-03 17:05 UTC, FINISHED
      trials  20 planned: 20 finished, 0 failed, 0 running, 0 not run
      epochs  120 of 120 (100%)
      left    nothing

Reads the store only: it works from any machine that reaches it, also while the study runs on another.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from collections import Counter
from typing import TYPE_CHECKING, Optional

from isnm import metrics
from study.errors import StudyError, duration, first_line, user_error_exit
from study.locks import held, lock_file
from study.records import (Kind, RunRecord, RunStatus, Status, Tag, history, newest_finished, read_runs, states_text,
                           trial_status)
from study.design.adaptive import SeedRule
from study.design.plan import Trial, plan_trials
from study.tracking.recorded import stored, study_names

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


SLURM_ACTIVE = {"RUNNING", "COMPLETING"}  # Slurm's job states while its job runs (not MLflow's run statuses)


def driver_alive(parent: RunRecord) -> Optional[bool]:
    """Whether the study's driver runs now: its Slurm job running, else a driver holding the study's lock on this
    host; None where neither tells (runs then count as the store has them)."""
    job = parent.tags.get(Tag.SLURM_JOB)
    if job:
        state = slurm_state(job)
        return None if state.startswith("state unknown") else state in SLURM_ACTIVE
    experiment = parent.tags.get(Tag.RAY_EXPERIMENT, "")
    if not experiment or "://" in experiment:
        return None  # an object store's lock lies on the driver's host
    root, _, name = experiment.rpartition("/")
    return held(lock_file(root, name))


def slurm_state(job: str) -> str:
    """The job's state in Slurm's queue (RUNNING, PENDING, ...), or why it cannot be told."""
    if shutil.which("squeue") is None:
        return "state unknown here (no squeue)"
    try:
        done = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "state unknown (squeue did not answer in 20 s)"
    state = done.stdout.strip()
    if done.returncode == 0:
        return state or "not in the queue (ended)"
    if "Invalid job id" in done.stderr:  # ended longer ago than Slurm keeps jobs (MinJobAge)
        return "not in the queue (ended)"
    return f"state unknown (squeue: {first_line(done.stderr) or f'exit {done.returncode}'})"


def epochs_done(client: MlflowClient, trial: Trial, runs: list[RunRecord], finished: Optional[RunRecord]) -> int:
    """Epochs a trial has logged: all of them once finished, else the most its runs got to (the last step of their
    per-epoch test accuracy: an epoch's number is its step, not a metric)."""
    if finished is not None:
        return trial.config["epochs"]
    return max((max((int(m.step) for m in history(client, r.run_id, metrics.TEST_ACC)), default=0) for r in runs),
               default=0)


def study_status(client: MlflowClient, name: str, uri: str) -> str:
    found = stored(client, name, uri)
    study, parent = found.study, found.parent
    children = [run for run in read_runs(client, [found.exp_id], Kind.TRIAL) if run.parent_id]
    began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(parent.start_time / 1000))
    profile = f" (profile {study.profile})" if study.profile else ""
    gone = parent.status == RunStatus.RUNNING and driver_alive(parent) is False  # killed outright: SIGKILL, scancel, a node
    # KILLED, as MLflow says it, is also what a driver stopped cleanly ends its run with: say which
    state = parent.tags.get(Tag.STOPPED) or ("killed" if parent.status == RunStatus.KILLED else parent.status)
    lines = [f"{study.name}{profile}: last invocation {began}, {state}"
             + (", but no driver runs it now (killed)" if gone else "")]
    if study.spec.search is not None:
        states = Counter(run.status for run in children)
        what = (f"population of {study.spec.search.population}" if study.spec.search.algorithm == "pbt" else
                f"search of {study.spec.search.num_samples} samples")
        lines.append(f"  trials  {what}: " + (", ".join(f"{n} {state.lower()}" for state, n in sorted(states.items()))
                                               if states else "none run yet"))
        return "\n".join(lines + slurm_lines(parent))
    trials = plan_trials(study)
    planned = f"{len(trials)} planned"
    if study.adaptive is not None:
        rule = SeedRule(study, trials)
        decision, trials = rule.decided(children)
        planned = (f"{len(trials)} {'asked for' if decision.settled else 'asked for so far'} (adaptive seeds: "
                   f"{len(rule.first())} to {len(rule.trials)})")
    by_hash: dict[str, list[RunRecord]] = {}
    for run in children:
        by_hash.setdefault(run.config_hash, []).append(run)
    finished = newest_finished(children)
    counts: Counter[Status] = Counter()
    done = total = 0
    for trial in trials:
        runs, run = by_hash.get(trial.config_hash, []), finished.get(trial.config_hash)
        state = trial_status(runs, run)
        counts[Status.INTERRUPTED if gone and state is Status.RUNNING else state] += 1  # left RUNNING
        done += epochs_done(client, trial, runs, run)
        total += trial.config["epochs"]
    lines.append(f"  trials  {planned}: {states_text(counts)}")
    lines.append(f"  epochs  {done} of {total} ({100 * done / total:.0f}%)" if total else "  epochs  none planned")
    lines.append(f"  left    {left(children, total - done, counts)}")
    return "\n".join(lines + slurm_lines(parent))


def left(children: list[RunRecord], epochs: int, counts: Counter[Status]) -> str:
    """What remains: the epochs left at the seconds an epoch has taken so far, shared by the trials running now."""
    if epochs <= 0:
        return "nothing"
    seconds = [r.metrics[metrics.EPOCH_SECONDS] for r in children if metrics.EPOCH_SECONDS in r.metrics]
    if not seconds:
        return f"{epochs} epochs; no epoch has finished yet to time them by"
    per_epoch = sum(seconds) / len(seconds)
    running = counts[Status.RUNNING]
    if not running:
        return (f"{epochs} epochs, about {duration(epochs * per_epoch)} of trial time; nothing runs now: the same "
                f"study.run command resumes it")
    return f"{epochs} epochs, about {duration(epochs * per_epoch / running)} at {running} trial(s) at a time"


def slurm_lines(parent: RunRecord) -> list[str]:
    job = parent.tags.get(Tag.SLURM_JOB)
    if not job:
        return []
    return [f"  slurm   job {job}, {slurm_state(job)}; restart {parent.tags.get(Tag.SLURM_RESTARTS, '0')}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.status", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("studies", nargs="*", metavar="STUDY", help="study names (default: every study in the store)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    args = parser.parse_args(argv)
    from study.tracking.store import read_client, tracking_uri

    uri = tracking_uri(args.tracking_uri)
    try:
        client = read_client(uri)
        names = args.studies or study_names(client)
        if not names:
            raise StudyError(f"no studies in {uri}; run `python -m study.run FILE` first")
        print("\n\n".join(study_status(client, name, uri) for name in names))
    except Exception as exc:
        return user_error_exit(exc)
    return 0
