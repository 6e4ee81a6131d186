"""Where Ray Tune keeps a study's experiments and checkpoints: a local folder, or any URI pyarrow
opens (`s3://`, `gs://`, `abfs://`, `hdfs://`, `file://`), as Ray itself does.

Every node of a cluster must reach it (docs/clusters.md, "Shared storage"); the driver reads and moves
experiment folders through pyarrow, so the same code serves a folder and a bucket.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pyarrow.fs as pafs

from isnm import config_hash
from study.errors import StudyError, first_line
from study.design.config import Study
from study.design.plan import Trial, search_base

PLAN_FILE = "study_plan.json"  # the trial names a Ray experiment was created with, and each trial's resources


@dataclass(frozen=True)
class Experiment:
    """One Ray experiment folder, `<storage>/<name>`."""
    storage: str  # what Ray's RunConfig.storage_path gets: an absolute local path or the URI as given
    name: str
    fs: pafs.FileSystem
    fs_root: str  # the storage's path inside `fs`

    @property
    def uri(self) -> str:
        """What Tuner.restore takes, and what runs are tagged with (`ray_experiment`)."""
        return f"{self.storage}/{self.name}"

    @property
    def fs_path(self) -> str:
        return f"{self.fs_root}/{self.name}"

    def exists(self) -> bool:
        return self.fs.get_file_info(self.fs_path).type != pafs.FileType.NotFound

    def set_aside(self) -> Experiment:
        """Rename the folder with a time stamp (a finished or abandoned run of this plan); the experiment it now is."""
        aside = Experiment(self.storage, f"{self.name}.{time.strftime('%Y%m%d-%H%M%S')}", self.fs, self.fs_root)
        self.fs.move(self.fs_path, aside.fs_path)
        return aside

    def write_plan(self, trials: list[Trial], resources: dict[str, float]) -> None:
        self.fs.create_dir(self.fs_path, recursive=True)
        plan = {"trials": [t.name for t in trials], "hashes": {t.name: t.config_hash for t in trials},
                "resources": resources}
        with self.fs.open_output_stream(f"{self.fs_path}/{PLAN_FILE}") as out:
            out.write(json.dumps(plan).encode())

    def plan(self) -> dict:
        """The plan file's contents; {} when the experiment holds none (or it does not read)."""
        try:
            with self.fs.open_input_stream(f"{self.fs_path}/{PLAN_FILE}") as stream:
                plan = json.loads(stream.read().decode())
        except (OSError, ValueError):
            return {}
        return plan if isinstance(plan, dict) else {}

    def planned_trials(self) -> Optional[set[str]]:
        """The trial names this experiment was created with; None when it holds no plan (or a search)."""
        trials = self.plan().get("trials")
        return set(trials) if isinstance(trials, list) else None

    def planned_hashes(self) -> Optional[dict[str, str]]:
        """Each trial name's config hash as the experiment was created; None for one made before they were recorded."""
        hashes = self.plan().get("hashes")
        return hashes if isinstance(hashes, dict) else None

    def checkpoint_at(self, ray_trial_id: str, epoch: int) -> Optional[str]:
        """The newest checkpoint a trial of this experiment (its folder: `study.run.tuner.trial_folder`) saved at or
        before `epoch` (Tune numbers them from 0), as a URI (a path for a local storage); None if there is none."""
        try:
            found = self.fs.get_file_info(pafs.FileSelector(f"{self.fs_path}/{ray_trial_id}"))
        except (OSError, FileNotFoundError):
            return None
        names = sorted(i.base_name for i in found if i.type == pafs.FileType.Directory
                       and i.base_name.startswith("checkpoint_") and i.base_name <= f"checkpoint_{epoch - 1:06d}")
        return f"{self.uri}/{ray_trial_id}/{names[-1]}" if names else None

    def planned_resources(self) -> Optional[dict[str, float]]:
        """Each trial's resources ({"cpu": 1.0, "gpu": 0.0}) as the experiment was created with them; None for
        an experiment made before they were recorded."""
        resources = self.plan().get("resources")
        return resources if isinstance(resources, dict) else None


def experiment_at(storage: str, name: str) -> Experiment:
    """The experiment `name` under --storage `storage`: a local path (made absolute) or a URI."""
    if "://" not in storage:
        root = str(Path(storage).expanduser().resolve())
        return Experiment(root, name, pafs.LocalFileSystem(), root)
    try:
        fs, root = pafs.FileSystem.from_uri(storage)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError or its own import errors per scheme
        raise StudyError(f"--storage {storage}: pyarrow cannot open it ({type(exc).__name__}: "
                         f"{first_line(str(exc))}); expected a folder or a URI such as s3://bucket/path") from None
    return Experiment(storage.rstrip("/"), name, fs, root.rstrip("/"))


def writable_storage(experiment: Experiment) -> None:
    """One line if a local --storage cannot be made or written (a bucket is pyarrow's and Ray's to reach)."""
    if not isinstance(experiment.fs, pafs.LocalFileSystem):
        return
    try:
        Path(experiment.fs_root).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=experiment.fs_root).close()
    except OSError as exc:
        raise StudyError(f"--storage {experiment.storage}: the trials' checkpoints cannot be written there "
                         f"({exc.strerror or type(exc).__name__}); pass --storage DIR") from None


def experiment_for(study: Study, trials: list[Trial], storage: str) -> Experiment:
    """Ray's experiment folder: the same plan maps to the same folder, so a rerun can resume it."""
    plan = [t.config_hash for t in trials] or [json.dumps(study.spec.search.settings, sort_keys=True, default=str),
                                                 config_hash(search_base(study))]
    digest = hashlib.sha256("\n".join(plan).encode()).hexdigest()[:8]
    return experiment_at(storage, "-".join(part for part in (study.name, study.profile, digest) if part))
