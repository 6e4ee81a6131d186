"""Which of a Ray experiment folder's files the driver lets Tune's restore read.

Restoring an interrupted experiment, Tune unpickles what it saved: `tuner.pkl`, the experiment, searcher and
callback states beside it (the experiment state's trials carry pickles, hex-encoded, in its JSON) and a failed
trial's `error.pkl`. Unpickling runs whatever code the file names, and on a cluster the storage folder is shared:
whoever can write there could run code as the next driver. So the driver records a digest of each of these files
as Tune writes them (`StateLedger`) where only the user writes: in the tracking store, and in a file of the user's
own (`LOCAL_RECORDS`: a store that is away or was wiped keeps no record), and an experiment is restored only when
every such file in it has a digest recorded in either (`unrestorable_files`). Anything else is set aside
unread and the study carries on from the store's record (docs/clusters.md, "Who may write the storage").

The checkpoints are outside this: only the trainable reads them, with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickletools
import stat
from pathlib import Path
from typing import Optional

import pyarrow.fs as pafs
import ray.cloudpickle
from ray.tune import Callback

from study.records import Kind, Tag, read_runs
from study.run.storage import PLAN_FILE, Experiment

TUNER_FILE = "tuner.pkl"  # Tune writes it once, when the Tuner is made, straight into the storage
TRIAL_STATE_FILES = ("error.pkl",)  # what restore unpickles inside a trial's folder (never params.pkl)
RECENT_DIGESTS = 4  # versions of a file kept per invocation: a sync still under way lags a save or two
LOCAL_RECORDS = Path.home() / ".cache" / "isnm-study" / "tune-state"  # a file per experiment, the user's alone
LOCAL_DIGESTS = 16  # versions of a file the local record keeps: a few invocations' last ones


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def state_files(fs: pafs.FileSystem, root: str) -> list[str]:
    """The paths, relative to `root`, of the files under it that Tune's restore unpickles: the folder's own .pkl and
    .json files (but the plan this project writes and reads as JSON) and each trial folder's error.pkl."""
    try:
        found = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    except (OSError, FileNotFoundError):
        return []
    files = [i.base_name for i in found if i.type == pafs.FileType.File
             and i.base_name.endswith((".pkl", ".json")) and i.base_name != PLAN_FILE]
    folders = [i.base_name for i in found if i.type == pafs.FileType.Directory]
    inside = fs.get_file_info([f"{root}/{d}/{name}" for d in folders for name in TRIAL_STATE_FILES])
    return sorted(files) + sorted(i.path[len(root) + 1:] for i in inside if i.type == pafs.FileType.File)


def state_contents(fs: pafs.FileSystem, root: str) -> dict[str, bytes]:
    """Each of `state_files`' bytes, as the files are now (one removed while listed is left out)."""
    contents = {}
    for name in state_files(fs, root):
        try:
            with fs.open_input_stream(f"{root}/{name}") as stream:
                contents[name] = stream.read()
        except (OSError, FileNotFoundError):
            continue
    return contents


def state_digests(fs: pafs.FileSystem, root: str) -> dict[str, str]:
    """Each of `state_files`' digest, as the files are now."""
    return {name: digest(data) for name, data in state_contents(fs, root).items()}


def whole(data: bytes) -> bool:
    """Whether a state file reads to its end, read without running anything: a pickle's opcodes up to its STOP
    (Tune pickles some files it names .json), else JSON. A write cut short (a full disk) is not."""
    try:
        if data[:1] == b"\x80":  # a pickle's PROTO opcode
            return any(op.name == "STOP" for op, _, _ in pickletools.genops(data))
        json.loads(data)
        return True
    except (ValueError, UnicodeDecodeError):
        return False


def unrestorable_files(experiment: Experiment, recorded: dict[str, set[str]]) -> list[str]:
    """The files of `experiment` that Tune would unpickle and that no driver of it recorded as they are now
    (changed since, planted, or written after the last record by a driver that was killed), or that do not read to
    their end (a write cut short)."""
    return [name for name, data in state_contents(experiment.fs, experiment.fs_path).items()
            if digest(data) not in recorded.get(name, set()) or not whole(data)]


def shared_storage_warning(experiment: Experiment) -> str:
    """A warning when a local storage folder is writable by other users ("" if not): what they write there is only
    restored once recorded, but they can still delete or damage checkpoints."""
    if not isinstance(experiment.fs, pafs.LocalFileSystem):
        return ""
    try:
        mode = Path(experiment.fs_root).stat().st_mode
    except OSError:
        return ""
    if not mode & (stat.S_IWGRP | stat.S_IWOTH):
        return ""
    return (f"warning: --storage {experiment.fs_root} is writable by other users (mode {stat.filemode(mode)}): the "
            f"driver restores only state it recorded itself, but they can delete or damage the checkpoints "
            f"(docs/clusters.md, \"Who may write the storage\")")


def local_record(ray_experiment: str) -> Path:
    return LOCAL_RECORDS / f"{hashlib.sha256(ray_experiment.encode()).hexdigest()[:16]}.json"


def read_local(ray_experiment: str) -> dict[str, list[str]]:
    """The digests this user's drivers recorded on this host (or a home shared with it), by file; {} if none."""
    try:
        found = json.loads(local_record(ray_experiment).read_text())
    except (OSError, ValueError):
        return {}
    return found.get("files", {}) if isinstance(found, dict) and found.get("experiment") == ray_experiment else {}


def write_local(ray_experiment: str, digests: dict[str, str]) -> None:
    """Add `digests` (file -> digest) to the local record: made private, replaced whole (a reader never sees half);
    best effort."""
    files = read_local(ray_experiment)
    for name, d in digests.items():
        files[name] = [*(k for k in files.get(name, []) if k != d), d][-LOCAL_DIGESTS:]
    path = local_record(ray_experiment)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"experiment": ray_experiment, "files": files}))
        temporary.chmod(0o600)
        temporary.replace(path)
    except OSError:  # a home that cannot be written: the store's record alone serves
        pass


def recorded_state(client, exp_id: str, ray_experiment: str) -> dict[str, set[str]]:
    """Every digest any driver of `ray_experiment` recorded, by file: in the tracking store, and locally."""
    recorded = {name: set(ds) for name, ds in read_local(ray_experiment).items()}
    for run in read_runs(client, [exp_id], Kind.STUDY, ray_experiment=ray_experiment):
        for key, value in run.tags.items():
            if key.startswith(Tag.TUNE_STATE):
                recorded.setdefault(key[len(Tag.TUNE_STATE):], set()).update(value.split())
    return recorded


def record_tuner(client, parent_id: str, tuner, ray_experiment: str) -> None:
    """Record the `tuner.pkl` a new Tuner has just written: the digest of its state pickled again here as Tune pickles
    it (what Tune wrote, byte for byte) rather than of the file, which another writer could have replaced by now.
    Reaches into the Tuner's private `_local_tuner`, as study.run.tuner.replace_callbacks does; without it nothing is
    recorded, and the experiment is then never restored but carried on from the store's record."""
    local = getattr(tuner, "_local_tuner", None)
    if local is not None:
        pickled = digest(ray.cloudpickle.dumps(local.__getstate__()))
        write_local(ray_experiment, {TUNER_FILE: pickled})
        client.set_tag(parent_id, Tag.TUNE_STATE + TUNER_FILE, pickled)


class StateLedger(Callback):
    """Records each state file Tune saves, before Tune copies it to the storage: Tune asks the callbacks for their
    state (`get_state`) last when it saves the experiment into its driver-local staging folder, and uploads that
    folder once they have answered. The local record is written at once; the store's goes through the tracker's
    backlog, in order with the runs' writes (holding the save up while it waits, unless the server is away)."""

    def __init__(self, tracker):
        self.tracker = tracker
        self.staging: Optional[str] = None  # the driver-local folder Tune saves the experiment in
        self.seen: dict[str, list[str]] = {}  # file -> the digests recorded by this driver, newest last

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self.staging is None and trials:
            self.staging = trials[0].storage.experiment_driver_staging_path

    def get_state(self) -> Optional[dict]:
        if self.staging is not None:
            changed, new = {}, {}
            for name, d in state_digests(pafs.LocalFileSystem(), self.staging).items():
                kept = self.seen.setdefault(name, [])
                if d not in kept:
                    kept[:] = (kept + [d])[-RECENT_DIGESTS:]
                    changed[Tag.TUNE_STATE + name], new[name] = " ".join(kept), d
            if changed:
                write_local(self.tracker.ray_path, new)  # at once: the store's write may wait for its server
                self.tracker.backlog.submit(self.write, changed)
        return None  # nothing of its own to restore: Tune then writes no callback state for it

    def write(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.tracker.client.set_tag(self.tracker.parent_id, key, value)
