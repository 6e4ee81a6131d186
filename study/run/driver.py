"""One invocation of `python -m study.run` on the driver: open the store, start its parent run, copy cached
runs, run the rest on Ray Tune, summarise.

Imports Ray and MLflow: `study.run.cli` loads it only once the study file is known to be valid."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

import ray

from study.errors import StudyError, first_line, last_line
from isnm import metrics
from study.records import Reported, RunRecord
from study.run.cluster import start_ray
from study.run.signals import Interrupts
from study.run.storage import Experiment
from study.run.tuner import TrialBook, build_tuner, resumable
from study.spec.config import Study
from study.spec.plan import Trial
from study.tracking.cache import copy_cached_run, finished_runs
from study.tracking.callback import MlflowTracker
from study.tracking.provenance import CodeState, warn_if_dirty
from study.tracking.store import open_store, tracking_uri, ui_base, ui_command, ui_url
from study.tracking.writers import close_dangling_runs, log_summary, start_parent_run


def summary_lines(rows: list[tuple[str, str, str]]) -> list[str]:
    width = max((len(r[0]) for r in rows), default=0)
    return [f"  {name.ljust(width)}  {status}  {secs}" for name, status, secs in rows]


def result_row(result, describe) -> tuple[str, str, str]:
    reported = result.metrics or {}
    if result.error:
        status = "failed: " + last_line(str(result.error))[:120]
    elif reported.get(Reported.DIVERGED):
        status = f"failed: {reported[Reported.DIVERGED]}"
    elif metrics.TEST_ACC in reported:
        status = f"{metrics.TEST_ACC} {reported[metrics.TEST_ACC]:.4f}"
    else:
        status = "not started"
    seconds = reported.get("time_total_s")
    return describe(result.config).name, status, f"{seconds:.0f}s" if seconds is not None else "-"


def fit_failure(exc: BaseException, experiment: Experiment) -> Optional[StudyError]:
    """Why a Tune run stopped, as one line, when the cause is the user's: a StudyError raised on the
    driver (a damaged experiment), or an MLflow write that failed (the store). Tune passes these on,
    at times wrapped in a TuneError. None for anything else, which is a bug."""
    cause: Optional[BaseException] = exc
    while cause is not None and not (isinstance(cause, StudyError) or type(cause).__module__.startswith("mlflow")):
        cause = cause.__cause__ or cause.__context__
    if cause is None or isinstance(cause, StudyError):
        return cause
    return StudyError(f"the study stopped: writing to MLflow failed ({type(cause).__name__}: "
                      f"{first_line(str(cause))}); the checkpoints are kept in {experiment.uri}: "
                      f"once the store works, run the same command again to resume")


def warn_if_cached_elsewhere(code: CodeState, sources: list[RunRecord]) -> None:
    """Cached results trained by other code than this tree's: say so, since the table will mix them."""
    others: dict[str, int] = {}
    for run in sources:
        if run.commit != code.commit or run.dirty or code.dirty:
            others[run.code] = others.get(run.code, 0) + 1
    if others:
        where = ", ".join(f"{label}: {n}" for label, n in others.items())
        print(f"warning: {sum(others.values())} cached trial(s) were trained by other code than this tree "
              f"({code.short}): {where}; --rerun trains them again with it", file=sys.stderr)


def run(study: Study, trials: list[Trial], args: argparse.Namespace, address: Optional[str], experiment: Experiment,
        interrupts: Interrupts, code: CodeState) -> int:
    """Open the store, start this invocation's parent run, run the trials; the parent run ends KILLED,
    FAILED or FINISHED with them, whatever stops the invocation."""
    uri = tracking_uri(args.tracking_uri)
    with interrupts.deferred():
        client, exp_id = open_store(uri, study.name)
    warn_if_dirty(code)
    closed = close_dangling_runs(client, exp_id, experiment.uri)
    if closed:
        print(f"closed {closed} run(s) left RUNNING by an interrupted driver")
    parent = start_parent_run(client, exp_id, study, code, experiment.uri)
    try:
        status = run_trials(study, trials, args, address, interrupts, client, exp_id, parent, code, uri, experiment)
    except BaseException as exc:
        try:  # best effort: the store itself may be what failed
            client.set_terminated(parent, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        except Exception:
            pass
        raise
    client.set_terminated(parent, {0: "FINISHED", 130: "KILLED"}.get(status, "FAILED"))
    return status


def run_trials(study: Study, trials: list[Trial], args: argparse.Namespace, address: Optional[str],
               interrupts: Interrupts, client, exp_id: str, parent: str, code: CodeState, uri: str,
               experiment: Experiment) -> int:
    """Cached trials copied, the rest run on Ray Tune; prints the summary; returns the exit code."""
    cached = {} if args.rerun else finished_runs(client, {t.config_hash for t in trials})
    warn_if_cached_elsewhere(code, [cached[t.config_hash] for t in trials if t.config_hash in cached])
    for trial in trials:
        source = cached.get(trial.config_hash)
        if source is not None and source.experiment_id != exp_id:
            copy_cached_run(client, source, exp_id, parent, study.name, trial)
    to_run = [t for t in trials if t.config_hash not in cached]
    rows = {t.name: (t.name, "cached" if t.config_hash in cached else "not started", "-") for t in trials}
    began = time.perf_counter()
    if to_run or study.spec.search is not None:
        book = TrialBook(study, trials)
        resume, why_not = (False, "") if args.fresh or args.rerun else resumable(
            experiment, to_run, study.spec.search is not None)
        if why_not:
            print(why_not)
        tracker = MlflowTracker(uri, exp_id, parent, study, code, book.describe, experiment.uri,
                                         args.tracking_patience)
        try:
            with interrupts.deferred():  # cut inside ray.init, Ray is left half started and the driver crashes at exit
                start_ray(address, study.spec.resources)
                interrupts.take_back_sigterm()
            tuner = build_tuner(study, to_run, book, experiment, [tracker], args.max_concurrent, resume)
            interrupts.raise_if_received()
            interrupts.in_fit = True
            try:
                results = tuner.fit()
            except Exception as exc:
                stopped = fit_failure(exc, experiment)
                if stopped is None:
                    raise
                raise stopped from None
            finally:
                interrupts.in_fit = False
            unfinished = tracker.reconcile(results)
        finally:
            ray.shutdown()
        # a restored experiment also returns trials that finished before: their result replaces "cached"
        # (a trial cut off before it reported anything comes back without its config: it stays "not started")
        rows.update((row[0], row) for row in (result_row(r, book.describe) for r in results if r.config is not None))
        for name in unfinished:
            rows[name] = (name, "unfinished", rows.get(name, (name, "", "-"))[2])
    log_summary(client, exp_id, parent, {t.config_hash for t in trials})  # also when every trial was cached
    failed = sum(1 for _, status, _ in rows.values() if status.startswith("failed"))
    reused = sum(1 for _, status, _ in rows.values() if status == "cached")
    incomplete = sum(1 for _, status, _ in rows.values() if status in ("unfinished", "not started"))
    print(f"\n{study.name}: {len(rows)} trials ({reused} cached) in {time.perf_counter() - began:.0f}s, "
          f"{failed} failed{f', {incomplete} unfinished' if incomplete else ''}")
    print("\n".join(summary_lines(list(rows.values()))))
    print(f"\nruns: {ui_command(uri)}   (experiment {study.name!r})\n"
          f"then open {ui_url(exp_id, ui_base(uri))}   (the trials' charts, grouped by variant)")
    if incomplete:
        print(f"\ninterrupted ({interrupts.received or 'trials left unfinished'}); run the same command again "
              f"to resume ({experiment.uri})", file=sys.stderr)
        return 130
    return 1 if failed else 0
