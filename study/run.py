"""`python -m study.run FILE`: run a study's trials on Ray Tune and log them to MLflow."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from contextlib import contextmanager
from typing import Optional

from study.cli import first_line, last_line, user_error_exit
from study.config import Study, StudyError, load_study
from study.lock import study_lock
from study.plan import Trial, plan_trials, trial_table
from study.provenance import CodeState, code_state
from study.retry import DEFAULT_PATIENCE_S
from study.storage import Experiment, experiment_for


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.run", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("file", help="study file (YAML), e.g. search_spaces/ablation.yaml")
    parser.add_argument("--profile", help="named overlay from the file's profiles:, e.g. demo")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the trials; start nothing")
    parser.add_argument("--estimate", action="store_true",
                        help="with --dry-run: each trial's time and the study's, from finished runs in the tracking "
                             "store or a few steps timed here")
    parser.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--storage", default="./ray_results", help="Ray results and checkpoints (default ./ray_results)")
    parser.add_argument("--tracking-patience", type=float, default=DEFAULT_PATIENCE_S, metavar="SECONDS",
                        help=f"how long the tracking server may not answer before the study stops, resumable; "
                             f"the trials train on meanwhile (default {DEFAULT_PATIENCE_S})")
    parser.add_argument("--max-concurrent", type=int, help="at most N trials at once (default: as resources allow)")
    parser.add_argument("--fresh", action="store_true", help="start over instead of resuming an interrupted run")
    parser.add_argument("--rerun", action="store_true",
                        help="run every trial, also those with a FINISHED run of the same config in MLflow")
    return parser.parse_args(argv)


def summary_lines(rows: list[tuple[str, str, str]]) -> list[str]:
    width = max((len(r[0]) for r in rows), default=0)
    return [f"  {name.ljust(width)}  {status}  {secs}" for name, status, secs in rows]


def result_row(result, describe) -> tuple[str, str, str]:
    metrics = result.metrics or {}
    if result.error:
        status = "failed: " + last_line(str(result.error))[:120]
    elif metrics.get("diverged"):
        status = f"failed: {metrics['diverged']}"
    elif "test_acc" in metrics:
        status = f"test_acc {metrics['test_acc']:.4f}"
    else:
        status = "not started"
    seconds = metrics.get("time_total_s")
    return describe(result.config).name, status, f"{seconds:.0f}s" if seconds is not None else "-"


def cluster_address(cli_value: Optional[str]) -> Optional[str]:
    """--address, else RAY_ADDRESS, else None (a local Ray)."""
    return cli_value or os.environ.get("RAY_ADDRESS") or None


def check_before_start(study: Study, trials: list[Trial], address: Optional[str]) -> None:
    """Mistakes found without starting anything: data that is missing or damaged, GPUs this machine
    lacks, a Ray address where nothing listens. CIFAR is fetched here, once, when the study may."""
    from isnm.data import DataError  # torch loads only here, after the file itself is known good
    from isnm.train import check_data
    from study.execute import check_address

    check_address(address)
    configs = [t.config for t in trials] or [study.base]
    for config in {(c["dataset"], c["data_dir"], c["download"]): c for c in configs}.values():
        try:
            check_data(config)
        except DataError as exc:
            raise StudyError(f"{study.path}: {exc}") from None
    if study.spec.resources.gpu > 0 and address is None:
        import torch
        if torch.cuda.device_count() < study.spec.resources.gpu:
            raise StudyError(f"{study.path}: resources.gpu: {study.spec.resources.gpu:g} per trial, but this machine "
                             f"has {torch.cuda.device_count()} GPUs; set resources.gpu: 0 (a profile such as "
                             f"demo does) or pass --address of a cluster with GPUs")


def set_ray_environment(address: Optional[str]) -> None:
    """Settings Ray reads once, on import: call before anything imports ray."""
    # Every epoch checkpoints by design (that is what resuming needs); Tune warns about it on short epochs.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune saves its experiment state at least 10 s apart by default, and only the last two trial
    # checkpoints are kept: with epochs of a second (digits) a killed driver's state could name a
    # checkpoint already deleted, and that trial could not resume
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Ctrl-C is handled by `Interrupts`, which knows it happened (Tune's own handler returns from fit
    # as if the study were done)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    if address:
        # `ray start` turns token authentication on, but a joining driver follows only when told
        os.environ.setdefault("RAY_AUTH_MODE", "token")


class Interrupts:
    """Ctrl-C (SIGINT) and SIGTERM, as the driver handles them.

    The first one while Tune runs trials asks Tune to stop after saving its experiment state (Tune
    stops so on SIGUSR1), so that the unfinished trials can be told apart and resumed; `received`
    then names the signal. Any other one raises KeyboardInterrupt at once.
    """

    def __init__(self):
        self.received: Optional[str] = None
        self.in_fit = False
        self.deferring = False
        self.previous: dict = {}

    def handle(self, signum: int, frame) -> None:
        first = self.received is None
        self.received = signal.Signals(signum).name
        if self.deferring:
            return  # raised once the section that must not be cut is done
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if first and self.in_fit and callable(tune_stop):
            print(f"\n{self.received}: stopping after the trials' last checkpoints; press Ctrl-C again to stop at "
                  f"once", file=sys.stderr)
            tune_stop(signal.SIGUSR1, frame)
            return
        raise KeyboardInterrupt

    @contextmanager
    def deferred(self):
        """A section an interrupt must not cut in two (MLflow creating its database tables: a store
        interrupted there is left unusable); a signal in it takes effect when it ends."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        self.raise_if_received()

    def raise_if_received(self) -> None:
        """Before the trials start: an interrupt whose KeyboardInterrupt a library swallowed still stops."""
        if self.received:
            raise KeyboardInterrupt

    def take_back_sigterm(self) -> None:
        """ray.init makes SIGTERM exit the driver at once; take it back, so it stops the study cleanly."""
        signal.signal(signal.SIGTERM, self.handle)

    def __enter__(self) -> "Interrupts":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


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


def warn_if_dirty(code: CodeState) -> None:
    if code.dirty:
        print(f"warning: the working tree has uncommitted changes (on {code.commit[:7]}); each run records them "
              f"(tag git_dirty, artifact code.diff), but a number from them is hard to trace: commit first",
              file=sys.stderr)


def warn_if_cached_elsewhere(code: CodeState, sources: list) -> None:
    """Cached results trained by other code than this tree's: say so, since the table will mix them."""
    others: dict[str, int] = {}
    for run in sources:
        commit, dirty = run.data.tags.get("git_commit", "unknown"), run.data.tags.get("git_dirty") == "true"
        if commit != code.commit or dirty or code.dirty:
            label = commit[:7] + ("+dirty" if dirty else "")
            others[label] = others.get(label, 0) + 1
    if others:
        where = ", ".join(f"{label}: {n}" for label, n in others.items())
        print(f"warning: {sum(others.values())} cached trial(s) were trained by other code than this tree "
              f"({code.short}): {where}; --rerun trains them again with it", file=sys.stderr)


def run(study: Study, trials: list[Trial], args: argparse.Namespace, address: Optional[str], experiment: Experiment,
        interrupts: Interrupts) -> int:
    """Open the store, start this invocation's parent run, run the trials; the parent run ends KILLED,
    FAILED or FINISHED with them, whatever stops the invocation."""
    # Ray and MLflow load only once the study is known to be valid, so a bad file fails in a second.
    from study import tracking

    uri = tracking.tracking_uri(args.tracking_uri)
    with interrupts.deferred():
        client, exp_id = tracking.open_store(uri, study.name)
    code = code_state()
    warn_if_dirty(code)
    closed = tracking.close_dangling_runs(client, exp_id, experiment.uri)
    if closed:
        print(f"closed {closed} run(s) left RUNNING by an interrupted driver")
    parent = tracking.start_parent_run(client, exp_id, study, code, experiment.uri)
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
    import ray

    from study import execute, tracking

    cached = {} if args.rerun else tracking.finished_runs(client, {t.config_hash for t in trials})
    warn_if_cached_elsewhere(code, [cached[t.config_hash] for t in trials if t.config_hash in cached])
    for trial in trials:
        source = cached.get(trial.config_hash)
        if source is not None and source.info.experiment_id != exp_id:
            tracking.copy_cached_run(client, source, exp_id, parent, study.name, trial)
    to_run = [t for t in trials if t.config_hash not in cached]
    rows = {t.name: (t.name, "cached" if t.config_hash in cached else "not started", "-") for t in trials}
    began = time.perf_counter()
    if to_run or study.spec.search is not None:
        book = execute.TrialBook(study, trials)
        resume, why_not = (False, "") if args.fresh or args.rerun else execute.resumable(
            experiment, to_run, study.spec.search is not None)
        if why_not:
            print(why_not)
        tracker = tracking.MlflowTracker(uri, exp_id, parent, study, code, book.describe, experiment.uri,
                                         args.tracking_patience)
        try:
            with interrupts.deferred():  # cut inside ray.init, Ray is left half started and the driver crashes at exit
                execute.start_ray(address, study.spec.resources)
                interrupts.take_back_sigterm()
            tuner = execute.build_tuner(study, to_run, book, experiment, [tracker], args.max_concurrent, resume)
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
    tracking.log_summary(client, exp_id, parent, {t.config_hash for t in trials})  # also when every trial was cached
    failed = sum(1 for _, status, _ in rows.values() if status.startswith("failed"))
    reused = sum(1 for _, status, _ in rows.values() if status == "cached")
    incomplete = sum(1 for _, status, _ in rows.values() if status in ("unfinished", "not started"))
    print(f"\n{study.name}: {len(rows)} trials ({reused} cached) in {time.perf_counter() - began:.0f}s, "
          f"{failed} failed{f', {incomplete} unfinished' if incomplete else ''}")
    print("\n".join(summary_lines(list(rows.values()))))
    print(f"\nruns: {tracking.ui_command(uri)}   (experiment {study.name!r})\n"
          f"then open {tracking.ui_url(exp_id, tracking.ui_base(uri))}   (the trials' charts, grouped by variant)")
    if incomplete:
        print(f"\ninterrupted ({interrupts.received or 'trials left unfinished'}); run the same command again "
              f"to resume ({experiment.uri})", file=sys.stderr)
        return 130
    return 1 if failed else 0


def estimated(study: Study, trials: list[Trial], args: argparse.Namespace) -> str:
    """--estimate's text; the trials study.run would take from the store (not with --rerun) cost nothing."""
    from study import tracking
    from study.estimate import estimate, store_client

    address = cluster_address(args.address)
    if address:  # to join it as study.run would (a local Ray is not started for an estimate)
        set_ray_environment(address)
    client = store_client(tracking.tracking_uri(args.tracking_uri))
    cached = set() if args.rerun or client is None else set(tracking.finished_runs(client, {t.config_hash for t in trials}))
    return estimate(study, trials, client, cached, args.max_concurrent, address)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        study = load_study(args.file, args.profile)
        trials = plan_trials(study) if study.spec.search is None else []
        if args.max_concurrent is not None and args.max_concurrent < 1:
            raise StudyError(f"--max-concurrent: got {args.max_concurrent}, expected an integer >= 1")
        if args.tracking_patience < 0:
            raise StudyError(f"--tracking-patience: got {args.tracking_patience:g}, expected seconds >= 0")
        if args.estimate and not (args.dry_run and trials):
            raise StudyError("--estimate: only with --dry-run, and for studies of variants and grids (a search "
                             "samples its trials as it runs)")
        if args.estimate:
            from study.execute import check_address

            check_address(cluster_address(args.address))  # before any output: a cluster not there fails in seconds
        if args.dry_run:
            warn_if_dirty(code_state())
            if trials:
                print(f"{study.name}: {len(trials)} trials\n{trial_table(trials)}")
            else:
                search = study.spec.search
                print(f"{study.name}: search, {search.num_samples} samples ({search.algorithm}) over "
                      f"{', '.join(search.space)}; {search.metric} {search.mode}")
            if args.estimate:
                print("\n" + estimated(study, trials, args))
            return 0
        address = cluster_address(args.address)
        set_ray_environment(address)
        with Interrupts() as interrupts:
            check_before_start(study, trials, address)
            experiment = experiment_for(study, trials, args.storage)
            with study_lock(experiment, study.name):
                return run(study, trials, args, address, experiment, interrupts)
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        return user_error_exit(exc)


if __name__ == "__main__":
    sys.exit(main())
