"""Ray Tune on the driver: the param space, the Tune settings, each trial's resources, and restoring an
interrupted experiment."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.search.basic_variant import BasicVariantGenerator

from isnm import config_hash, metrics
from study.errors import StudyError, first_line
from study.run.seeds import AdaptiveSeeds
from study.run.storage import Experiment
from study.run.worker import trainable
from study.design.config import Study, with_overrides
from study.run.pbt import MEMBER, SEARCHED, SyncPBT
from study.design.plan import SEARCH_VARIANT, Trial, cell_label, pbt_member, search_base

TESTED_RAY = "2.60"  # the Ray whose private Tuner attribute replace_callbacks sets (see there)


class TrialBook:
    """Maps a Tune trial's config (a planned trial's name, or a search sample) to the trial it is.

    Tune's param space holds only trial names, so its progress table shows them readably.
    """

    def __init__(self, study: Study, trials: list[Trial], experiment: str = "",
                 aliases: Optional[dict[str, str]] = None, carried: Optional[dict[str, str]] = None,
                 carried_with: Optional[dict[str, float]] = None):
        """`experiment`: the Ray experiment's storage URI (a PBT member prunes its checkpoints there). `aliases`: the
        names a restored experiment was planned with (name -> config hash), which stand for the trials of the same
        configs now (a variant renamed in the study file is the same trial). `carried`: trial name -> the checkpoint
        (a storage URI) its interrupted trial of an earlier experiment left, and `carried_with` the resources those
        trials started with (study.run.driver.carried_over)."""
        self.base = search_base(study) if study.spec.search is not None else {}
        self.pbt = study.spec.search if study.spec.search is not None and study.spec.search.algorithm == "pbt" else None
        self.trials = {t.name: t for t in trials}
        by_hash = {t.config_hash: t for t in trials}
        for name, digest in (aliases or {}).items():
            if name not in self.trials and digest in by_hash:
                self.trials[name] = by_hash[digest]
        self.experiment = experiment
        self.carried = dict(carried or {})
        self.carried_with = carried_with

    def describe(self, tune_config: dict) -> Trial:
        """The trial a Tune config stands for: a planned one, or a search sample made a Trial."""
        if tune_config.get("trial") in self.trials:
            return self.trials[tune_config["trial"]]
        if "search" not in tune_config or not self.base:
            raise StudyError(f"the Ray experiment holds a trial this study did not plan ({tune_config}), so its "
                             f"saved state is damaged or from another plan; run again with --fresh")
        overrides = dict(tune_config[SEARCHED])
        config = with_overrides(self.base, overrides)
        if self.pbt is not None:
            return pbt_member(self.base, self.pbt, tune_config[MEMBER], overrides)
        return Trial(cell_label(overrides), SEARCH_VARIANT, overrides, config["seed"], config, config_hash(config))


def trial_folder(trial) -> str:
    return trial.trial_id  # Tune's default folder name repeats the whole config


def distribution(spec: dict):
    """A study file's distribution as Tune's."""
    (kind, arg), = spec.items()
    if kind == "loguniform":
        return tune.loguniform(*arg)
    if kind == "uniform":
        return tune.uniform(*arg)
    if kind == "randint":
        return tune.randint(arg[0], arg[1] + 1)  # the study file's bounds are inclusive
    return tune.choice(arg)


def param_space(study: Study, trials: list[Trial]) -> dict:
    search = study.spec.search
    if search is not None and search.algorithm == "pbt":  # each member's first values drawn from the mutation's range
        return {MEMBER: tune.grid_search(list(range(search.population))),
                SEARCHED: {key: distribution(spec) for key, spec in search.mutations.items()}}
    if search is not None:
        return {SEARCHED: {key: distribution(spec) for key, spec in search.space.items()}}
    if study.adaptive is not None:
        return {}  # the searcher proposes {"trial": name}
    return {"trial": tune.grid_search([t.name for t in trials])}


def tune_config(study: Study, max_concurrent: Optional[int], seeds: Optional[AdaptiveSeeds] = None) -> tune.TuneConfig:
    """Tune's settings; --max-concurrent, else the study file's max_concurrent, caps trials at once. `seeds`: the
    searcher of a study with adaptive seeds."""
    max_concurrent = max_concurrent or study.spec.max_concurrent
    search = study.spec.search
    if seeds is not None:
        return tune.TuneConfig(search_alg=seeds, num_samples=len(seeds.rule.trials),
                               max_concurrent_trials=max_concurrent, trial_dirname_creator=trial_folder,
                               reuse_actors=True)
    if search is None:
        return tune.TuneConfig(max_concurrent_trials=max_concurrent, trial_dirname_creator=trial_folder,
                               reuse_actors=True)
    if search.algorithm == "pbt":
        scheduler = SyncPBT(search, study.seeds[0], study.base["epochs"],  # a choice's values: Tune shifts along them
                            {k: v.get("choice") or distribution(v) for k, v in search.mutations.items()})
        return tune.TuneConfig(scheduler=scheduler, num_samples=1, max_concurrent_trials=max_concurrent,
                               search_alg=BasicVariantGenerator(random_state=study.seeds[0]),  # the first values
                               trial_dirname_creator=trial_folder, reuse_actors=True)
    algorithm = None
    if search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch
        algorithm = OptunaSearch(metric=search.metric, mode=search.mode, seed=study.seeds[0])  # lists for two
    scheduler = None
    if search.scheduler is not None and search.scheduler.asha is not None:
        options = search.scheduler.asha
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr=metrics.EPOCH, max_t=study.base["epochs"], grace_period=options.grace_period,
            reduction_factor=options.reduction_factor)
    single = len(search.objectives) == 1  # Tune itself takes one metric: two go to the searcher alone
    return tune.TuneConfig(metric=search.metric if single else None, mode=search.mode if single else None,
                           num_samples=search.num_samples,
                           search_alg=algorithm, scheduler=scheduler, max_concurrent_trials=max_concurrent,
                           trial_dirname_creator=trial_folder, reuse_actors=True)


def resumable(experiment: Experiment, to_run: list[Trial], search: bool) -> tuple[bool, str]:
    """(whether to restore the experiment, why not when it exists but cannot serve).

    A grid experiment serves only when it was created for every trial now to run: when the tracking
    store lost runs (a deleted mlflow.db, another --tracking-uri), more trials are to run than the
    interrupted experiment holds, and restoring it would leave those out.
    """
    if not tune.Tuner.can_restore(experiment.uri):
        return False, ""
    if search:
        return True, ""
    hashes = experiment.planned_hashes()
    planned = set(hashes.values()) if hashes is not None else experiment.planned_trials()
    left_out = [t.name for t in to_run if planned is None or (t.config_hash if hashes is not None else t.name) not in planned]
    if left_out:
        return False, (f"the Ray experiment {experiment.uri} was made for fewer trials than are to run now "
                       f"({', '.join(left_out[:3])}{' ...' if len(left_out) > 3 else ''} not among them; "
                       f"the tracking store has lost their runs); starting a new one")
    return True, ""


def replace_callbacks(tuner: tune.Tuner, callbacks: list, verbose: Optional[int],
                      seeds: Optional[AdaptiveSeeds] = None) -> None:
    """Restore unpickles the callbacks and the verbosity of the interrupted driver, and its searcher; this
    invocation's replace them (its tracker writes to its own parent run; its searcher, whose progress this driver
    prints, takes the saved one's state as Tune restores the experiment). Ray offers no public setter for this
    (ray-project/ray#41364), so this is the one place that reaches into the Tuner's private parts, and a Ray that
    changed them ends in one line saying so."""
    try:
        run_config = tuner._local_tuner.get_run_config()
        run_config.callbacks, run_config.verbose = callbacks, verbose
        took = tuner._local_tuner.get_run_config().callbacks is callbacks  # a copy handed out would drop them
        if seeds is not None:
            tuner._local_tuner._tune_config.search_alg = seeds
            took = took and tuner._local_tuner._tune_config.search_alg is seeds
    except AttributeError:
        took = False
    if not took:
        raise StudyError(f"this Ray ({ray.__version__}) no longer lets a restored Tuner's callbacks and searcher be "
                         f"replaced through Tuner._local_tuner, which resuming needs (tested with Ray "
                         f"{TESTED_RAY}); run with --fresh, or install the tested versions with `make venv`")


def config_key(tune_config: dict) -> str:
    return json.dumps(tune_config, sort_keys=True, default=str)


class TrialResources:
    """Each trial's Ray resources, decided per Tune config: a trial that resumes from a checkpoint of the
    interrupted experiment keeps those it started with, whatever the study file says now, since its thread count
    is its CPUs (`trainable`) and CPU reductions depend on the thread count: its remaining epochs on other threads
    would change its numbers silently. A trial that has trained nothing yet takes the study file's, `now`, for
    all of its epochs (its run records them)."""

    def __init__(self, now: dict[str, float], started_with: Optional[dict[str, float]] = None,
                 resumed: tuple[dict, ...] = ()):
        self.now = now
        self.started_with = now if started_with is None else started_with
        self.resumed = {config_key(c) for c in resumed}

    def __call__(self, tune_config: dict) -> dict[str, float]:
        return self.started_with if config_key(tune_config) in self.resumed else self.now

    def kept_note(self, names: list[str]) -> str:
        """The line a resume prints when the resources changed since the experiment began; "" if not."""
        if self.started_with == self.now or not names:
            return ""

        def spelled(r: dict) -> str:
            return ", ".join(f"{k} {v:g}" for k, v in r.items())

        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return (f"resuming: {len(names)} trial(s) keep the resources they started with ({spelled(self.started_with)} "
                f"per trial; the study file now says {spelled(self.now)}), so their threads and numbers stay as they "
                f"were: {shown}; new trials take the new resources, and --fresh starts every trial over with them")


def with_loggers(callbacks: list) -> list:
    """`callbacks` and the result files Tune's ExperimentAnalysis reads (result.json, progress.csv), without the
    TensorBoard logger Tune adds by default (`tune_environment` turns its defaults off): tensorboardX imports torch
    into the driver (about 2 s of every launch) and Tune then prints a TensorBoard hint; the runs are in MLflow."""
    return [*callbacks, JsonLoggerCallback(), CSVLoggerCallback()]


@contextmanager
def tune_environment(verbose: bool):
    """Tune's settings that only the environment carries, set while a Tuner is made and fits (Tune reads them then:
    the Tuner checks its verbosity, fit builds its default loggers and picks its output) and restored after: no
    TensorBoard logger (`with_loggers`) and, unless `verbose`, the older output, since the newer one prints its header
    box and results folder even at verbose=0."""
    wanted = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", **({} if verbose else {"RAY_AIR_NEW_OUTPUT": "0"})}
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass(frozen=True)
class TunePlan:
    """What one invocation hands to Ray Tune: the study, all its trials, those to run (the others are cached), how
    many may run at once (--max-concurrent; None: the study file's), and an adaptive study's `seeds`, which propose
    the trials its results ask for."""
    study: Study
    trials: list[Trial]
    to_run: list[Trial]
    max_concurrent: Optional[int] = None
    seeds: Optional[AdaptiveSeeds] = None


def restored_tuner(plan: TunePlan, book: TrialBook, experiment: Experiment, callbacks: list,
                   verbose: bool) -> tune.Tuner:
    """The Tuner of this plan's interrupted experiment, restored, its unfinished trials on the resources they
    started with. Tune prints nothing of its own unless `verbose`. Made inside `tune_environment`."""
    now = {"cpu": plan.study.spec.resources.cpu, "gpu": plan.study.spec.resources.gpu}
    try:
        resumed = [t for t in tune.ExperimentAnalysis(experiment.uri).trials
                   if t.status != "TERMINATED" and t.checkpoint is not None]
        # an experiment made before its resources were recorded runs on the study file's, as it did then
        resources = TrialResources(now, experiment.planned_resources(), tuple(t.config for t in resumed))
        fn = tune.with_resources(tune.with_parameters(trainable, book=book), resources)
        tuner = tune.Tuner.restore(experiment.uri, trainable=fn, resume_unfinished=True, resume_errored=True)
    except Exception as exc:  # a damaged experiment state fails in many ways; all end the same for the user
        raise StudyError(f"cannot resume the Ray experiment {experiment.uri} ({type(exc).__name__}: "
                         f"{first_line(str(exc))}); "
                         f"run again with --fresh to start it over (the old folder is kept aside)") from None
    print(resume_line(plan, [int((t.last_result or {}).get(metrics.EPOCH, 0)) for t in resumed], experiment.uri))
    note = resources.kept_note([book.describe(t.config).name for t in resumed])
    if note:
        print(note)
    replace_callbacks(tuner, with_loggers(callbacks), None if verbose else 0, plan.seeds)
    return tuner


def resume_line(plan: TunePlan, epochs_done: list[int], uri: str) -> str:
    """What a resume says first: the trials finished before (in the store), those that go on from a checkpoint (and
    from which epoch), and those still to come."""
    done, going = len(plan.trials) - len(plan.to_run), len(epochs_done)
    starts = ", ".join(str(e + 1) for e in sorted(set(epochs_done)))
    return (f"resuming the interrupted study ({uri}): {done} trial(s) done, {going} in progress"
            + (f" (from epoch {starts})" if going else "") + f", {max(len(plan.to_run) - going, 0)} to come")


def new_tuner(plan: TunePlan, book: TrialBook, experiment: Experiment, callbacks: list, verbose: bool) -> tune.Tuner:
    """A Tuner over `plan.to_run` (or the search, or the trials adaptive seeds propose), in a new experiment folder:
    an earlier one of this plan is set aside. Tune prints nothing of its own unless `verbose` (None: its default
    tables; study.run.progress prints the trials' events). Made inside `tune_environment`."""
    study = plan.study
    now = {"cpu": study.spec.resources.cpu, "gpu": study.spec.resources.gpu}
    # trials carrying on from an earlier experiment's checkpoints keep that experiment's resources, as restored ones do
    resources = TrialResources(now, book.carried_with, tuple({"trial": name} for name in book.carried))
    note = resources.kept_note(list(book.carried))
    if note:
        print(note)
    fn = tune.with_resources(tune.with_parameters(trainable, book=book), resources)
    if experiment.exists():  # an earlier, finished or abandoned, experiment of this plan: keep it aside
        experiment.set_aside()
    experiment.write_plan(plan.to_run, now)
    run_config = tune.RunConfig(
        name=experiment.name, storage_path=experiment.storage, callbacks=with_loggers(callbacks),
        verbose=None if verbose else 0,
        # a PBT member's checkpoints are pruned by the member itself (study.run.worker.prune_member_checkpoints)
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None if book.pbt else 2),
        failure_config=tune.FailureConfig(max_failures=study.spec.retries))
    return tune.Tuner(fn, param_space=param_space(study, plan.to_run),
                      tune_config=tune_config(study, plan.max_concurrent, plan.seeds), run_config=run_config)
