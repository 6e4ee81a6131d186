"""What the store holds, read back: a study's stored study file, and a finished trial's config and final weights (to
train or evaluate it again)."""
from __future__ import annotations

import dataclasses
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import yaml
from mlflow.exceptions import MlflowException

from isnm import nested
from study.errors import StudyError, first_line
from study.records import Artifact, Kind, RunRecord, RunStatus, Tag, read_runs
from study.design.plugins import recorded_plugins
from study.design.strict_yaml import read_yaml
from study.tracking.provenance import recorded_environment

if TYPE_CHECKING:
    from isnm import TrainConfig
    from study.design.config import Study


def study_names(client) -> list[str]:
    """Studies in the store: experiments with at least one parent run of study.run."""
    return sorted(exp.name for exp in client.search_experiments()
                  if next(read_runs(client, [exp.experiment_id], Kind.STUDY, limit=1), None))


def stored_study(client, exp_id: str, workdir: Path) -> tuple[dict, RunRecord, Path]:
    """(the study file of the experiment's latest invocation, as stored with its parent run; that parent run; the
    file, downloaded into `workdir`)."""
    parent = next(read_runs(client, [exp_id], Kind.STUDY, newest_first=True, limit=1), None)
    if parent is None:
        raise StudyError(f"experiment {client.get_experiment(exp_id).name!r} has no run of study.run")
    files = [a.path for a in client.list_artifacts(parent.run_id) if a.path.endswith((".yaml", ".yml"))]
    if not files:
        raise StudyError(f"run {parent.run_id} holds no study file; was it made by study.run?")
    local = Path(client.download_artifacts(parent.run_id, files[0], str(workdir)))
    return read_yaml(local), parent, local


def study_experiment(client, name: str, where: str) -> str:
    """The id of study `name`'s experiment; one line naming the studies the store (`where`, in the message) has if
    there is none."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise StudyError(f"no study {name!r} in {where}; studies there: {', '.join(study_names(client)) or 'none'}")
    return exp.experiment_id


@dataclass(frozen=True)
class Stored:
    """A study as the store holds it."""
    study: Study  # from its latest invocation's study file, under that invocation's profile
    parent: RunRecord  # that invocation's parent run
    exp_id: str
    data: dict  # the study file as stored, before `table_from`


def stored(client, name: str, where: str, table_from: Optional[Path] = None) -> Stored:
    """Study `name` from the store (`where` names it in messages): what study.status, study.report and a
    `{from_study: NAME}` read. `table_from`: a study file whose `table:` replaces the stored one (a layout is in no
    config hash: the runs stay the same, only the table changes); errors then name that file."""
    from study.design.load import study_from

    exp_id = study_experiment(client, name, where)
    with tempfile.TemporaryDirectory() as tmp:
        data, parent, local = stored_study(client, exp_id, Path(tmp))
        profile = parent.tags.get(Tag.PROFILE) or None
        if table_from is not None:
            study = study_from({**data, "table": read_yaml(table_from).get("table")}, table_from, profile)
        else:
            study = study_from(data, local, profile)
    # planned with the code it ran (its plugins' digests as recorded), wherever and however that code is now
    return Stored(dataclasses.replace(study, plugins=recorded_plugins(parent.tags)), parent, exp_id, data)


def fetch_config(client, run) -> dict:
    """The run's config: its config.yaml artifact, or, for runs logged before there was one, its params."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run.info.run_id, Artifact.CONFIG, tmp)
            return yaml.safe_load(Path(path).read_text())
        except (OSError, MlflowException):  # an older run without the artifact: its params hold the config, flattened
            if not run.data.params:
                raise StudyError(f"run {run.info.run_id} holds neither {Artifact.CONFIG} nor params; was it made by "
                                 f"study.run?") from None
            return nested({k: yaml.safe_load(v) for k, v in run.data.params.items()})


def recorded_run(client, run_id: str) -> tuple[object, dict, TrainConfig]:
    """(the run, its config as recorded, that config parsed) with torch's thread count set to the trial's, as
    CPU reductions depend on it, and the folders of its own network's and data set's code (as recorded) first on
    sys.path; an unknown run or a config this code refuses is a StudyError."""
    import torch

    from isnm import ConfigError, parse_config

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise StudyError(f"no run {run_id!r} in this store ({exc.error_code})") from None
    config = fetch_config(client, run)
    try:
        cfg = parse_config(config)
    except ConfigError as exc:
        raise StudyError(f"run {run_id}: its config is not one this code accepts: {exc}") from None
    for plugin in (recorded_plugins(run.data.tags) or {}).values():  # its own code: where it was, first
        folder = str(Path(plugin["path"]).parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
    threads = recorded_environment(run.data.tags).get("threads", "")
    if threads.isdigit():
        torch.set_num_threads(int(threads))
    return run, config, cfg


def fetch_weights(client, run) -> dict:
    """The run's final weights; a cached copy's are those of the run it copies (its numbers come from there)."""
    import torch

    source = run.data.tags.get(Tag.CACHED_FROM) or run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(source, Artifact.WEIGHTS, tmp)
        except (OSError, MlflowException):
            status = client.get_run(source).info.status
            if status == RunStatus.FINISHED:
                raise StudyError(f"run {source} finished, but its {Artifact.WEIGHTS} is missing from the store's "
                                 f"artifacts ({client.get_run(source).info.artifact_uri}): deleted or moved; "
                                 f"`python -m study.run FILE --rerun` trains the trial again") from None
            raise StudyError(f"run {source} holds no {Artifact.WEIGHTS}: it ended {status}, and only a trial run that "
                             f"finished has its final weights") from None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # cut short, damaged, or not torch's: what it would load is not the run's network
            raise StudyError(f"run {source}: its {Artifact.WEIGHTS} cannot be read ({type(exc).__name__}: "
                             f"{first_line(str(exc))}); `python -m study.run FILE --rerun` trains the trial "
                             f"again") from None
