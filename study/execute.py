"""Trials on Ray Tune: one trainable that calls `isnm.train.train` and reports every epoch."""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import socket
import tempfile
from pathlib import Path
from typing import Optional

import pyarrow.fs as pafs
import ray
import torch
from ray import tune

from isnm.config import parse_config
from isnm.train import TrainingDiverged, resolve_device, train
from study.cli import first_line
from study.config import Study, StudyError, with_overrides
from study.plan import SEARCH_VARIANT, Trial, cell_label, config_hash, search_base
from study.provenance import environment
from study.storage import STATE_FILE, Experiment

TESTED_RAY = "2.60"  # the Ray whose private Tuner attribute replace_callbacks sets (see there)


class TrialBook:
    """Maps a Tune trial's config (a planned trial's name, or a search sample) to the trial it is.

    Tune's param space holds only trial names, so its progress table shows them readably.
    """

    def __init__(self, study: Study, trials: list[Trial]):
        self.base = search_base(study) if study.spec.search is not None else {}
        self.trials = {t.name: t for t in trials}

    def describe(self, tune_config: dict) -> Trial:
        """The trial a Tune config stands for: a planned one, or a search sample made a Trial."""
        if tune_config.get("trial") in self.trials:
            return self.trials[tune_config["trial"]]
        if "search" not in tune_config or not self.base:
            raise StudyError(f"the Ray experiment holds a trial this study did not plan ({tune_config}), so its "
                             f"saved state is damaged or from another plan; run again with --fresh")
        overrides = dict(tune_config["search"])
        config = with_overrides(self.base, overrides)
        return Trial(cell_label(overrides), SEARCH_VARIANT, overrides, config["seed"], config, config_hash(config))


def checkpoint_states(checkpoint: tune.Checkpoint) -> list[tune.Checkpoint]:
    """This trial's kept checkpoints, newest first, beginning with `checkpoint` (Tune's latest)."""
    fs, folder = checkpoint.filesystem, checkpoint.path.rstrip("/")
    parent, name = folder.rsplit("/", 1)
    older = [info.path for info in fs.get_file_info(pafs.FileSelector(parent))
             if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_")
             and info.base_name < name]
    return [checkpoint] + [tune.Checkpoint(path, fs) for path in sorted(older, reverse=True)]


def readable_state(checkpoint: tune.Checkpoint) -> tuple[Optional[dict], str]:
    """(the newest checkpoint state that loads, a note naming each newer one that did not, or "").

    A checkpoint cut short (a full disk, a node lost while writing) would otherwise fail every retry
    and every rerun the same way; the older kept checkpoint costs an epoch. None when none loads:
    the trial then starts over, which on the CPU reproduces the same epochs.
    """
    notes = []
    for candidate in checkpoint_states(checkpoint):
        try:
            with candidate.as_directory() as folder:
                return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True), "; ".join(notes)
        except (OSError, EOFError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as exc:
            notes.append(f"{candidate.path.rsplit('/', 1)[-1]} unreadable ({type(exc).__name__}: "
                         f"{first_line(str(exc))[:200]})")
    return None, "; ".join(notes) + "; starting the trial over"


def usable_gpus(ids: list, visible: Optional[str], torch_sees: int, device: str, node: str) -> str:
    """The GPU ids Ray gave a trial ("0", "0,1"; "" for none), once the trial is sure to train on them alone.

    CUDA must see exactly them (Ray sets CUDA_VISIBLE_DEVICES so; unset, every trial would train on GPU 0),
    and torch must see them, unless the config asks for the CPU (as a simulation with logical GPUs does): a
    trial never falls back to the CPU silently, tens of times slower. `visible` is CUDA_VISIBLE_DEVICES,
    `torch_sees` torch.cuda.device_count(), `device` the config's device. The message leads with what went
    wrong, since the study's summary shows a failed trial's first 120 characters.
    """
    gpus = ",".join(str(i) for i in ids)
    if not gpus:
        return ""
    if visible != gpus:
        raise StudyError(f"CUDA_VISIBLE_DEVICES is {visible!r} on node {node}, but Ray gave this trial GPU {gpus}: "
                         f"it would use other trials' GPUs; unset RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES")
    if device != "cpu" and torch_sees < len(ids):
        remedy = ("its torch is a CPU build: install a CUDA build there" if torch.version.cuda is None else
                  f"its torch is built for CUDA {torch.version.cuda}: check the node's NVIDIA driver (nvidia-smi)")
        raise StudyError(f"torch sees {torch_sees} GPU(s) on node {node}, but Ray gave this trial GPU {gpus}; "
                         f"{remedy}, or set device: cpu to train on its CPUs (torch {torch.__version__})")
    return gpus


def trainable(tune_config: dict, book: TrialBook) -> None:
    """One trial: train, report metrics and a checkpoint every epoch, resume from Tune's checkpoint."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" line per epoch is noise
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))  # trials sharing a machine must not fight over cores
    config = book.describe(tune_config).config
    where = {"node": f"{ray.get_runtime_context().get_node_id()[:12]} {ray.util.get_node_ip_address()}"}
    gpus = usable_gpus(ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count(),
                       parse_config(config).device, where["node"])
    if gpus:
        where["gpu_ids"] = gpus
    resume_state, note = None, ""
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        resume_state, note = readable_state(checkpoint)
        if note:
            print(f"warning: {note}")
            where["checkpoint_note"] = note

    def report(metrics: dict, state: dict) -> None:
        if "environment" not in where:  # read once training has set its threads and backends up
            where["environment"] = json.dumps(environment(str(resolve_device(parse_config(config).device))))
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            tune.report({**metrics, **where}, checkpoint=tune.Checkpoint.from_directory(folder))

    try:
        train(config, on_epoch=report, resume_state=resume_state)
    except TrainingDiverged as exc:
        # Divergence is a result, not a crash: retrying the same seed would diverge again.
        tune.report({"epoch": exc.epoch, "diverged": str(exc), **where})  # the one wording, isnm.train's


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
    """Tune's settings; --max-concurrent, else the study file's max_concurrent, caps trials at once."""
    max_concurrent = max_concurrent or study.spec.max_concurrent
    search = study.spec.search
    if search is None:
        return tune.TuneConfig(max_concurrent_trials=max_concurrent, trial_dirname_creator=trial_folder,
                               reuse_actors=True)
    algorithm = None
    if search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch
        algorithm = OptunaSearch(metric=search.metric, mode=search.mode, seed=study.spec.seeds[0])
    scheduler = None
    if search.scheduler is not None and search.scheduler.asha is not None:
        options = search.scheduler.asha
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="epoch", max_t=study.base["epochs"], grace_period=options.grace_period,
            reduction_factor=options.reduction_factor)
    return tune.TuneConfig(metric=search.metric, mode=search.mode, num_samples=search.num_samples,
                           search_alg=algorithm, scheduler=scheduler, max_concurrent_trials=max_concurrent,
                           trial_dirname_creator=trial_folder, reuse_actors=True)


def no_cluster(where: str, reason: str) -> StudyError:
    return StudyError(f"--address {where}: no Ray cluster answers there ({reason}); "
                      f"start one with `ray start --head`, or leave --address out for a local Ray")


def check_address(address: Optional[str]) -> None:
    """Refuse a Ray Client address, and a host:port where nothing listens, in seconds rather than after
    Ray's own connection timeout of minutes. "auto" is left to Ray."""
    if address is None:
        return
    if address.startswith("ray://"):
        raise StudyError(f"--address {address}: Ray Client (ray://) is not supported, since Tune's driver must "
                         f"run inside the cluster; run study.run on a node of it with --address HEAD_IP:6379")
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise no_cluster(address, exc.strerror or str(exc)) from None


def token_refusal(exc: BaseException) -> Optional[str]:
    """Why the cluster refused this driver's token, if that is what `exc` comes from. A driver without a
    token gets an AuthenticationError; one with another token gets a ConnectionError ("Failed to connect
    to Ray cluster") caused by a RuntimeError whose text holds the AuthenticationError's traceback."""
    link: BaseException | None = exc
    for _ in range(8):  # the chain is short; bounded all the same
        if link is None:
            return None
        if isinstance(link, ray.exceptions.AuthenticationError):
            text = link.message
        else:
            quoted = re.search(r"^ray\.exceptions\.AuthenticationError: (.*)$", str(link), re.M)
            text = quoted.group(1) if quoted else ""
        if text:
            return first_line(text).split(". ")[0]  # then Ray's advice on where tokens live, which ours replaces
        link = link.__cause__ or link.__context__
    return None


def start_ray(address: Optional[str], resources) -> None:
    """Join `address`, else start Ray on this machine; fail early on resources the cluster lacks.

    A local Ray cannot be confined to 127.0.0.1: Ray 2.60 binds its servers to every interface and
    resolves a loopback node address to the routable one. Token authentication (on by default) is
    what keeps other hosts out; the dashboard stays off.
    """
    try:
        ray.init(address=address, include_dashboard=False, logging_level="WARNING")
    except (ConnectionError, ray.exceptions.AuthenticationError) as exc:
        refused = token_refusal(exc)
        if refused is None:
            raise no_cluster(address, first_line(str(exc))) from None
        raise StudyError(f"--address {address}: the Ray cluster refused this driver's token "
                         f"({refused}); copy the head node's ~/.ray/auth_token here "
                         f"or set RAY_AUTH_TOKEN") from None
    total = ray.cluster_resources()
    if resources.gpu > total.get("GPU", 0):
        ray.shutdown()
        raise StudyError(f"resources.gpu: {resources.gpu} per trial, but the Ray cluster has "
                         f"{total.get('GPU', 0):g} GPUs; set resources.gpu: 0 or join a cluster with GPUs")
    if resources.cpu > total.get("CPU", 0):
        ray.shutdown()
        raise StudyError(f"resources.cpu: {resources.cpu} per trial, but the Ray cluster has "
                         f"{total.get('CPU', 0):g} CPUs; lower resources.cpu")


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
    planned = experiment.planned_trials()
    left_out = [t.name for t in to_run if planned is None or t.name not in planned]
    if left_out:
        return False, (f"the Ray experiment {experiment.uri} was made for fewer trials than are to run now "
                       f"({', '.join(left_out[:3])}{' ...' if len(left_out) > 3 else ''} not among them; "
                       f"the tracking store has lost their runs); starting a new one")
    return True, ""


def replace_callbacks(tuner: tune.Tuner, callbacks: list) -> None:
    """Restore unpickles the callbacks of the interrupted driver; this invocation's tracker (its own parent
    run) replaces them. Ray offers no public setter for this (ray-project/ray#41364), so this is the one place
    that reaches into the Tuner's private parts, and a Ray that changed them ends in one line saying so."""
    try:
        local = tuner._local_tuner
        local.get_run_config().callbacks = callbacks
        took = local.get_run_config().callbacks is callbacks  # a Ray that hands out a copy would drop them silently
    except AttributeError:
        took = False
    if not took:
        raise StudyError(f"this Ray ({ray.__version__}) no longer lets a restored Tuner's callbacks be replaced "
                         f"through Tuner._local_tuner.get_run_config(), which resuming needs (tested with Ray "
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


def build_tuner(study: Study, to_run: list[Trial], book: TrialBook, experiment: Experiment, callbacks: list,
                max_concurrent: Optional[int], resume: bool) -> tune.Tuner:
    """The restored Tuner of this plan's interrupted experiment, or a new one over `to_run`."""
    now = {"cpu": study.spec.resources.cpu, "gpu": study.spec.resources.gpu}
    if resume:
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
        note = resources.kept_note([book.describe(t.config).name for t in resumed])
        if note:
            print(note)
        replace_callbacks(tuner, callbacks)
        return tuner
    fn = tune.with_resources(tune.with_parameters(trainable, book=book), now)
    if experiment.exists():  # an earlier, finished or abandoned, experiment of this plan: keep it aside
        experiment.set_aside()
    experiment.write_plan([t.name for t in to_run], now)
    run_config = tune.RunConfig(
        name=experiment.name, storage_path=experiment.storage, callbacks=callbacks,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        failure_config=tune.FailureConfig(max_failures=study.spec.retries))
    return tune.Tuner(fn, param_space=param_space(study, to_run), tune_config=tune_config(study, max_concurrent),
                      run_config=run_config)
