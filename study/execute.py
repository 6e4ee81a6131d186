"""Trials on Ray Tune: one trainable that calls `isnm.train.train` and reports every epoch."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Optional

import ray
import torch
from ray import tune

from isnm.train import TrainingDiverged, train
from study.config import Study, StudyError, with_overrides
from study.plan import SEARCH_VARIANT, Trial, cell_label, config_hash, search_base
from study.tracking import STATE_FILE

class TrialBook:
    """Maps a Tune trial's config (a planned trial's name, or a search sample) to the trial it is.

    Tune's param space holds only trial names, so its progress table shows them readably.
    """

    def __init__(self, study: Study, trials: list[Trial]):
        self.base = search_base(study) if study.spec.search is not None else {}
        self.trials = {t.name: t.as_dict() for t in trials}

    def describe(self, tune_config: dict) -> dict:
        """name, variant, seed, overrides, config and config_hash of a trial."""
        if "trial" in tune_config:
            return self.trials[tune_config["trial"]]
        overrides = dict(tune_config["search"])
        config = with_overrides(self.base, overrides)
        return {"name": cell_label(overrides), "variant": SEARCH_VARIANT, "seed": config["seed"], "overrides": overrides,
                "config": config, "config_hash": config_hash(config)}


def trainable(tune_config: dict, book: TrialBook) -> None:
    """One trial: train, report metrics and a checkpoint every epoch, resume from Tune's checkpoint."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" line per epoch is noise
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))  # trials sharing a machine must not fight over cores
    config = book.describe(tune_config)["config"]
    resume_state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume_state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)

    def report(metrics: dict, state: dict) -> None:
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    try:
        train(config, on_epoch=report, resume_state=resume_state)
    except TrainingDiverged as exc:
        # Divergence is a result, not a crash: retrying the same seed would diverge again.
        tune.report({"epoch": exc.epoch, "diverged": 1, "diverged_step": exc.step})


# reuse_actors: a worker that finished a trial takes the next one, so Python, torch and the data set
# load once per worker rather than once per trial (seconds each on a small machine).


def trial_folder(trial) -> str:
    return trial.trial_id  # Tune's default folder name repeats the whole config


def distribution(spec: dict):
    (kind, arg), = spec.items()
    if kind == "loguniform":
        return tune.loguniform(*arg)
    if kind == "uniform":
        return tune.uniform(*arg)
    if kind == "randint":
        return tune.randint(arg[0], arg[1] + 1)  # the study file's bounds are inclusive
    return tune.choice(arg)


def param_space(study: Study, trials: list[Trial]) -> dict:
    if study.spec.search is not None:
        return {"search": {key: distribution(spec) for key, spec in study.spec.search.space.items()}}
    return {"trial": tune.grid_search([t.name for t in trials])}


def tune_config(study: Study, max_concurrent: Optional[int]) -> tune.TuneConfig:
    search = study.spec.search
    if search is None:
        return tune.TuneConfig(max_concurrent_trials=max_concurrent, trial_dirname_creator=trial_folder,
                               reuse_actors=True)
    algorithm = None
    if search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch
        algorithm = OptunaSearch(metric=search.metric, mode=search.mode, seed=study.spec.seeds[0])
    scheduler = None
    if search.scheduler and "asha" in search.scheduler:
        options = search.scheduler["asha"]
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="epoch", max_t=study.base["epochs"], grace_period=options.get("grace_period", 1),
            reduction_factor=options.get("reduction_factor", 3))
    return tune.TuneConfig(metric=search.metric, mode=search.mode, num_samples=search.num_samples,
                           search_alg=algorithm, scheduler=scheduler, max_concurrent_trials=max_concurrent,
                           trial_dirname_creator=trial_folder, reuse_actors=True)


def experiment_path(study: Study, trials: list[Trial], storage: str) -> Path:
    """Ray's experiment folder: the same plan maps to the same folder, so a rerun can resume it."""
    plan = [t.config_hash for t in trials] or [json.dumps(study.spec.search.__dict__, sort_keys=True, default=str),
                                                 config_hash(search_base(study))]
    digest = hashlib.sha256("\n".join(plan).encode()).hexdigest()[:8]
    return Path(storage).resolve() / "-".join(part for part in (study.name, study.profile, digest) if part)


def no_cluster(where: str, reason: str) -> StudyError:
    return StudyError(f"--address {where}: no Ray cluster answers there ({reason}); "
                      f"start one with `ray start --head`, or leave --address out for a local Ray")


def check_head(address: Optional[str]) -> None:
    """Refuse a host:port (from --address or RAY_ADDRESS) where nothing listens, in seconds rather than
    after Ray's own connection timeout of minutes. "auto" and ray:// addresses are left to Ray."""
    where = address or os.environ.get("RAY_ADDRESS")
    host, sep, port = (where or "").rpartition(":")
    if "://" in (where or "") or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise no_cluster(where, exc.strerror or str(exc)) from None


def start_ray(address: Optional[str], resources) -> None:
    """Join `address` (or RAY_ADDRESS), else start Ray on this machine; fail early on resources it lacks."""
    try:
        ray.init(address=address, include_dashboard=False, logging_level="WARNING")
    except ConnectionError as exc:
        raise no_cluster(address or os.environ.get("RAY_ADDRESS"), str(exc).splitlines()[0]) from None
    total = ray.cluster_resources()
    if resources.gpu > total.get("GPU", 0):
        ray.shutdown()
        raise StudyError(f"resources.gpu: {resources.gpu} per trial, but the Ray cluster has "
                         f"{total.get('GPU', 0):g} GPUs; set resources.gpu: 0 or join a cluster with GPUs")
    if resources.cpu > total.get("CPU", 0):
        ray.shutdown()
        raise StudyError(f"resources.cpu: {resources.cpu} per trial, but the Ray cluster has "
                         f"{total.get('CPU', 0):g} CPUs; lower resources.cpu")


def can_resume(path: Path) -> bool:
    return tune.Tuner.can_restore(str(path))


def build_tuner(study: Study, to_run: list[Trial], book: TrialBook, path: Path, callbacks: list,
                max_concurrent: Optional[int], resume: bool) -> tune.Tuner:
    """The restored Tuner of this plan's interrupted experiment, or a new one over `to_run`."""
    resources = {"cpu": study.spec.resources.cpu, "gpu": study.spec.resources.gpu}
    fn = tune.with_resources(tune.with_parameters(trainable, book=book), resources)
    if resume:
        tuner = tune.Tuner.restore(str(path), trainable=fn, resume_unfinished=True, resume_errored=True)
        # Restore unpickles the callbacks of the interrupted driver; this invocation's tracker (its own
        # parent run) replaces them. Ray offers no public setter for this.
        tuner._local_tuner.get_run_config().callbacks = callbacks
        return tuner
    if path.exists():  # an earlier, finished or abandoned, experiment of this plan: keep it aside
        path.rename(path.with_name(f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}"))
    run_config = tune.RunConfig(
        name=path.name, storage_path=str(path.parent), callbacks=callbacks,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        failure_config=tune.FailureConfig(max_failures=study.spec.retries))
    return tune.Tuner(fn, param_space=param_space(study, to_run), tune_config=tune_config(study, max_concurrent),
                      run_config=run_config)
