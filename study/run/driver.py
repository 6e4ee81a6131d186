"""One invocation of `python -m study.run` on the driver: open the store, start its parent run, copy cached
runs, run the rest on Ray Tune, summarise.

Imports Ray and MLflow: `study.run.cli` loads it only once the study file is known to be valid."""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Optional

import ray
from mlflow.tracking import MlflowClient

from study.errors import StudyError, duration, first_line, last_line, plural
from isnm import metrics
from study.records import Kind, METRICS, Reported, RunRecord, RunStatus, Tag, history, read_runs, stopped_by
from study.locks import held
from study.run.cluster import cluster_ready, start_ray
from study.run.lock import lock_path
from study.run.estimate import slots_of
from study.run.progress import Progress
from study.run.seeds import AdaptiveSeeds, settled_lines
from study.run.signals import Interrupts
from study.run.storage import Experiment, experiment_at
from study.run.trust import StateLedger, recorded_state, record_tuner, shared_storage_warning, unrestorable_files
from study.design.plugins import Sources
from study.run.tuner import TrialBook, TunePlan, new_tuner, resumable, restored_tuner, tune_environment
from study.design.config import Study
from study.design.adaptive import SeedRule
from study.design.plan import Trial
from study.tracking.cache import copy_cached_runs, finished_runs
from study.tracking.callback import MlflowTracker
from study.tracking.provenance import CodeState, slurm_tags, warn_if_dirty
from study.tracking.store import UI_PORT, open_store, served, show_layout, ui_base, ui_command, ui_url
from study.tracking.writers import close_dangling_runs, log_summary, place_tags, start_parent_run


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
        status = f"{metrics.TEST_ACC} {METRICS[metrics.TEST_ACC].printed(reported[metrics.TEST_ACC])}"
    else:
        status = "not started"
    seconds = reported.get(Reported.SECONDS)
    return describe(result.config).name, status, duration(seconds) if seconds is not None else "-"


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


@dataclass(frozen=True)
class RunOptions:
    """What the command line decides for one invocation (study.run.cli fills it in)."""
    tracking_uri: str
    address: Optional[str]  # a Ray cluster to join; None: start Ray here
    max_concurrent: Optional[int]
    tracking_patience: float  # seconds a tracking server may be away before the study stops
    fresh: bool  # start the Ray experiment over rather than resume it
    rerun: bool  # train every trial, also those with a finished run of their config
    verbose: bool = False  # Ray's and Tune's own output, and the trials', beside the progress lines
    ui_port: int = UI_PORT  # where the user's `mlflow ui` will answer, for the page printed at the end
    nodes: int = 1  # Ray nodes to wait for in the cluster joined before the trials start


@dataclass(frozen=True)
class Invocation:
    """What this invocation writes to: the store, the study's experiment in it, its parent run."""
    client: MlflowClient
    exp_id: str
    parent: str
    code: CodeState
    experiment: Experiment


def running_elsewhere(client: MlflowClient, exp_id: str) -> list[tuple[str, str]]:
    """(Ray experiment, parent run) of each invocation of this study whose driver runs now: its parent run RUNNING
    and its experiment's lock held (on this host, or on NFS; a lock on another host counts when its file is here to
    say so). Another --storage, or another plan, is another lock: nothing else stops the two from training the same
    trials. Folders only (and file:// URIs)."""
    found = []
    for run in read_runs(client, [exp_id], Kind.STUDY, RunStatus.RUNNING):
        uri = run.tags.get(Tag.RAY_EXPERIMENT)
        if not uri or "/" not in uri or ("://" in uri and not uri.startswith("file://")):
            continue  # a bucket's lock is on the host of its driver: nothing to read here without reaching out
        lock = lock_path(experiment_at(*uri.rsplit("/", 1)))
        holds = held(lock)
        if holds or (holds is None and lock.is_file()):
            found.append((uri, run.run_id))
    return found


def run(study: Study, trials: list[Trial], options: RunOptions, experiment: Experiment, interrupts: Interrupts,
        code: CodeState) -> int:
    """Open the store, start this invocation's parent run, run the trials; the parent run ends KILLED,
    FAILED or FINISHED with them, whatever stops the invocation."""
    if not options.verbose:  # MLflow's INFO lines (a new store's tables made and migrated) are not the user's business
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        # nor its database errors, each logged with a traceback before it is raised: what raised it says it in a line
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        # nor Tune's traceback of a failed trial: its progress line says why, and its run keeps it whole (error.txt)
        logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    with interrupts.deferred():
        client, exp_id = open_store(options.tracking_uri, study.name)
    warn_if_dirty(code)
    closed = close_dangling_runs(client, exp_id, experiment.uri)
    if closed:
        print(f"closed {closed} run(s) left RUNNING by an interrupted driver")
    for uri, run_id in running_elsewhere(client, exp_id):
        print(f"warning: study {study.name} is running now in another Ray experiment, {uri} (its parent run {run_id}, "
              f"whose driver holds that experiment's lock): a trial both plan trains in each, twice; one driver per "
              f"study, on one --storage, trains each trial once", file=sys.stderr)
    parent = None
    try:
        with interrupts.deferred():  # a Ctrl-C while the parent run is made (its study file logged) waits for it
            parent = start_parent_run(client, exp_id, study, code, experiment.uri)
        status = run_trials(study, trials, options, Invocation(client, exp_id, parent, code, experiment), interrupts)
    except BaseException as exc:
        if parent is not None:
            try:  # best effort: the store itself may be what failed
                if isinstance(exc, KeyboardInterrupt):
                    client.set_tag(parent, Tag.STOPPED, stopped_by(interrupts.received or "SIGINT", slurm_tags().get(Tag.SLURM_JOB, "")))
                client.set_terminated(parent, RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED)
            except Exception:
                pass
        raise
    if status == 130 and interrupts.received:
        client.set_tag(parent, Tag.STOPPED, stopped_by(interrupts.received, slurm_tags().get(Tag.SLURM_JOB, "")))
    client.set_terminated(parent, {0: RunStatus.FINISHED, 130: RunStatus.KILLED}.get(status, RunStatus.FAILED))
    return status



def run_trials(study: Study, trials: list[Trial], options: RunOptions, here: Invocation, interrupts: Interrupts) -> int:
    """Cached trials copied, the rest run on Ray Tune; prints the summary; returns the exit code."""
    began = time.perf_counter()
    cached = {} if options.rerun else finished_runs(here.client, {t.config_hash for t in trials})
    to_run = [t for t in trials if t.config_hash not in cached]
    seeds = None
    if study.adaptive is not None:
        rule = SeedRule(study, trials)
        known = rule.recorded(list(cached.values()), failed=False)
        seeds = AdaptiveSeeds(rule, known)
        wanted = rule.needed(seeds.decision)
        if all(t.config_hash in seeds.outcomes for t in wanted):
            to_run = []  # the store already settles every comparison
        copy_cached(study, wanted, cached, here)
        copied = {t.config_hash for t in wanted}
    else:
        copy_cached(study, trials, cached, here)
    rows = {t.name: (t.name, "cached" if t.config_hash in cached else "not started", "-") for t in trials}
    if to_run or study.spec.search is not None:
        rows.update(run_on_tune(TunePlan(study, trials, to_run, options.max_concurrent, seeds), options, here,
                                interrupts))
    if study.adaptive is not None:  # the study is the trials its results asked for, as the report will count them
        final, wanted = rule.decided(list(read_runs(here.client, [here.exp_id], Kind.TRIAL)), known)
        copy_cached(study, [t for t in wanted if t.config_hash not in copied], cached, here)  # asked for after all
        trials, rows = wanted, {t.name: rows[t.name] for t in wanted}
    # also when all were cached
    log_summary(here.client, here.exp_id, here.parent, {t.config_hash: place_tags(study, t) for t in trials},
                study.spec.description)
    show_layout(here.client, here.exp_id, bool(study.table.column_keys), study.table.metrics[0])
    notes = [] if study.adaptive is None else [
        f"adaptive seeds ({study.adaptive.min} to {study.adaptive.max}, target ±{study.adaptive.target:g}{rule.unit}):",
        *settled_lines(rule, final)]
    return summarise(study, rows, options, here, interrupts, time.perf_counter() - began, notes)


COPIES_PER_LINE = 100  # a progress line while copying cached runs: a thousand take minutes


def copy_cached(study: Study, trials: list[Trial], cached: dict[str, RunRecord], here: Invocation) -> None:
    """Copy into this study's experiment each of `trials` whose `cached` run (by config hash, in any experiment) is
    another study's; say when another code trained those it takes from the store."""
    warn_if_cached_elsewhere(here.code, [cached[t.config_hash] for t in trials if t.config_hash in cached])
    copies = [(t, cached[t.config_hash]) for t in trials
              if t.config_hash in cached and cached[t.config_hash].experiment_id != here.exp_id]
    if copies:
        print(f"copying {plural(len(copies), 'finished run')} of the same configs from other studies", flush=True)
    began = time.monotonic()

    def copied(done: int) -> None:
        if done % COPIES_PER_LINE == 0 and done < len(copies):
            print(f"  {done} of {len(copies)} copied, {time.monotonic() - began:.0f}s", flush=True)

    copy_cached_runs(here.client, copies, here.exp_id, here.parent, study.name, copied)


def carried_over(here: Invocation, study: Study, trials: list[Trial], to_run: list[Trial],
                 aside: Optional[Experiment] = None) -> tuple[dict[str, tuple[str, str]], Optional[dict[str, float]]]:
    """({trial name: (its run, its checkpoint)}, the resources those trials started with) for each trial to run whose
    config an interrupted trial of an earlier Ray experiment of this study had: the study file changed since (a seed
    added, another trial's value, a variant renamed), so this invocation has a plan, and an experiment, of its own,
    but that trial's config is unchanged. It carries on from the checkpoint of its last logged epoch, in its own run,
    on the resources it started with (its thread count is its CPUs: study.run.tuner.TrialResources). What the
    previous invocation left interrupted and no longer planned (its config changed, or its trial was removed) is
    said, and stays KILLED.

    "The same trial" is the same config hash, whatever its name: that is what a run is cached and resumed by. When
    this plan's own experiment was set `aside` unread (`trusted`), its trials carry on the same way, from there."""
    wanted = {t.config_hash: t for t in to_run}
    carried: dict[str, tuple[str, str]] = {}
    epochs: dict[str, int] = {}
    started_with: Optional[dict[str, float]] = None
    now = {"cpu": study.spec.resources.cpu, "gpu": study.spec.resources.gpu}
    for run in read_runs(here.client, [here.exp_id], Kind.TRIAL, RunStatus.KILLED, newest_first=True):
        source, trial_id = run.tags.get(Tag.RAY_EXPERIMENT), run.tags.get(Tag.RAY_TRIAL_ID)
        trial = wanted.get(run.config_hash)
        if trial is None or trial.name in carried or not source or not trial_id or (
                source == here.experiment.uri and aside is None):
            continue
        earlier = aside if source == here.experiment.uri else experiment_at(*source.rsplit("/", 1))
        resources = earlier.planned_resources() or now
        logged = len(history(here.client, run.run_id, metrics.TEST_ACC))
        # the checkpoint of the last epoch logged: a later one's epochs never reached the run (the interrupt came
        # first), and are trained again, to the same numbers on the same machine
        checkpoint = earlier.checkpoint_at(trial_id, logged) if logged else None
        if checkpoint is not None and resources == (started_with or resources):
            carried[trial.name] = (run.run_id, checkpoint)
            epochs[trial.name] = logged
            started_with = resources
    if carried:
        by_name = {t.name: t for t in to_run}
        why = "" if aside else (f"the study file changed since it was interrupted, but not the configs of "
                                f"{plural(len(carried), 'trial')}: ")
        print(f"{why}carrying on from the last checkpoint, in the same run: "
              + ", ".join(f"{name} ({epochs[name]} of {by_name[name].config['epochs']} epochs)" for name in carried))
    planned = {t.config_hash for t in trials}
    invocations = list(read_runs(here.client, [here.exp_id], Kind.STUDY, newest_first=True, limit=2))
    previous = next((p for p in invocations if p.run_id != here.parent), None)
    if previous is not None:
        dropped = [run.name for run in read_runs(here.client, [here.exp_id], Kind.TRIAL, RunStatus.KILLED)
                   if run.parent_id == previous.run_id and run.config_hash not in planned]
        if dropped:
            print(f"no longer planned (the study file changed their configs, or removed them): "
                  f"{', '.join(dropped)}; their runs stay KILLED, with the epochs they logged")
    return carried, started_with


def trusted(here: Invocation, study: Study) -> tuple[bool, Optional[Experiment]]:
    """(whether the interrupted experiment may be restored, where it was set aside if not). Restoring unpickles what
    Tune saved, so it is restored only as this study's drivers recorded it (study.run.trust): otherwise it is set
    aside unread, and the study carries on from the store's record, each trial from its last logged epoch's
    checkpoint (a search starts over)."""
    experiment = here.experiment
    unread = unrestorable_files(experiment, recorded_state(here.client, here.exp_id, experiment.uri))
    if not unread:
        return True, None
    aside = experiment.set_aside()
    shown = ", ".join(unread[:3]) + (f" and {len(unread) - 3} more" if len(unread) > 3 else "")
    went_on = "the search starts over" if study.spec.search else "each trial goes on from its last logged epoch"
    print(f"warning: not restoring the Ray experiment {experiment.uri}: {shown} not as this study's driver saved "
          f"and recorded it (changed or cut short since, or the driver was killed before it recorded it), and "
          f"restoring would unpickle it, which runs any code in it; set aside unread as {aside.uri}; {went_on} "
          f"from the tracking store's record", file=sys.stderr)
    return False, aside


def close_quietly(tracker: MlflowTracker) -> None:
    """A Ctrl-C that reached fit itself (before Tune could take it, or a second one), or the closing of the runs after
    it: the runs of the trials begun end KILLED now rather than RUNNING until the next invocation; best effort, since
    the store may be what failed, and a second signal must not be held up by it."""
    try:
        tracker.backlog.drain()  # a run still being made is made first, then closed with the others
        tracker.close_interrupted()
    except Exception:
        pass


def run_on_tune(plan: TunePlan, options: RunOptions, here: Invocation,
                interrupts: Interrupts) -> dict[str, tuple[str, str, str]]:
    """Run the plan's trials (or its search, or those its adaptive seeds ask for) on Ray Tune, resuming the
    interrupted experiment of this plan when there is one; the summary's row of each trial Tune returned, and of
    each it left unfinished."""
    study, trials, to_run, seeds = plan.study, plan.trials, plan.to_run, plan.seeds
    experiment = here.experiment
    resume, why_not = (False, "") if options.fresh or options.rerun else resumable(
        experiment, to_run, study.spec.search is not None)
    if why_not:
        print(why_not)
    warning = shared_storage_warning(experiment)
    if warning:
        print(warning, file=sys.stderr)
    aside = None
    if resume:
        resume, aside = trusted(here, study)
    carried, started_with = {}, None
    if not (resume or options.fresh or options.rerun or study.spec.search):
        carried, started_with = carried_over(here, study, trials, to_run, aside)
    book = TrialBook(study, trials, experiment.uri, aliases=experiment.planned_hashes() if resume else None,
                     carried={name: checkpoint for name, (_, checkpoint) in carried.items()}, carried_with=started_with)
    tracker = MlflowTracker(options.tracking_uri, here.exp_id, here.parent, study, here.code, book.describe,
                            experiment.uri, options.tracking_patience,
                            carried={name: run_id for name, (run_id, _) in carried.items()})
    try:
        with interrupts.deferred():  # cut inside ray.init, Ray is left half started and the driver crashes at exit
            start_ray(options.address, options.verbose, Sources(study).paths([t.config for t in trials] or [book.base]))
            interrupts.take_back_sigterm()
        cluster_ready(options.address, study.spec.resources, options.nodes)  # minutes, maybe: Ctrl-C stops it
        search = study.spec.search
        total = ray.cluster_resources()
        on = {"gpus": study.spec.resources.gpu, "local": options.address is None,
              "slots": slots_of(study, total.get("CPU", 0), total.get("GPU", 0), options.max_concurrent)}
        if search:
            progress = Progress(search.samples, 0, search.primary, book.describe, **on)
        elif seeds is not None:  # the trials planned grow as the results ask for seeds
            progress = Progress(lambda: len(seeds.rule.needed(seeds.decision)), seeds.done(),
                                study.table.metrics[0], book.describe, max(len(t.name) for t in trials), **on)
        else:
            progress = Progress(len(trials), len(trials) - len(to_run), study.table.metrics[0], book.describe,
                                max(len(t.name) for t in trials), planned=to_run, **on)
        with tune_environment(options.verbose):
            made = restored_tuner if resume else new_tuner
            tuner = made(plan, book, experiment, [tracker, StateLedger(tracker), progress], options.verbose)
            if not resume:
                record_tuner(here.client, here.parent, tuner, experiment.uri)
            try:
                with interrupts.fitting():
                    results = tuner.fit()
                unfinished = tracker.reconcile(results)
            except KeyboardInterrupt:  # a second signal while Tune stops, or one while the runs are closed after it
                close_quietly(tracker)
                raise
            except Exception as exc:
                stopped = fit_failure(exc, experiment)
                if stopped is None:
                    raise
                raise stopped from None
    finally:
        with interrupts.deferred():
            ray.shutdown()
    # a restored experiment also returns trials that finished before: their result replaces "cached"
    # (a trial cut off before it reported anything comes back without its config: it stays "not started")
    rows = {row[0]: row for row in (result_row(r, book.describe) for r in results if r.config is not None)}
    for name in unfinished:
        rows[name] = (name, "unfinished", rows.get(name, (name, "", "-"))[2])
    return rows


def summarise(study: Study, rows: dict[str, tuple[str, str, str]], options: RunOptions, here: Invocation,
              interrupts: Interrupts, seconds: float, notes: tuple[str, ...] = ()) -> int:
    """Print the summary (a line per trial, `notes`, where the runs are); the exit code: 0, 1 if a trial failed, 130
    if some were left unfinished."""
    failed = sum(1 for _, status, _ in rows.values() if status.startswith("failed"))
    reused = sum(1 for _, status, _ in rows.values() if status == "cached")
    incomplete = sum(1 for _, status, _ in rows.values() if status in ("unfinished", "not started"))
    print(f"\n{study.name}: {plural(len(rows), 'trial')} ({reused} cached) in {seconds:.0f}s, "
          f"{failed} failed{f', {incomplete} unfinished' if incomplete else ''}")
    print("\n".join([*summary_lines(list(rows.values())), *notes]))
    port = " (another port: --ui-port)" if not served(options.tracking_uri) else ""
    print(f"\nruns: {ui_command(options.tracking_uri, options.ui_port)}   (experiment {study.name!r})\n"
          f"then open {ui_url(here.exp_id, ui_base(options.tracking_uri, options.ui_port))}   (the trials' charts, "
          f"grouped by table row){port}")
    if incomplete:
        print(f"\ninterrupted ({interrupts.received or 'trials left unfinished'}); run the same command again "
              f"to resume ({here.experiment.uri})", file=sys.stderr)
        return 130
    return 1 if failed else 0
