"""What runs in a trial's own Ray worker process: the trainable, which calls `isnm.train` and reports
every epoch with a checkpoint, resuming from Tune's checkpoint.

torch (and isnm's training) load inside the functions, in the worker: the driver imports this module for
the trainable's name and stays without torch."""
from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import pyarrow.fs as pafs
import ray
from ray import tune

from isnm import metrics, parse_config
from study.errors import StudyError, first_line
from study.records import Artifact, Reported
from study.tracking.provenance import environment

if TYPE_CHECKING:  # the book travels to this process pickled; study.run.tuner imports this module
    from study.run.tuner import TrialBook


def checkpoint_states(checkpoint: tune.Checkpoint) -> list[tune.Checkpoint]:
    """This trial's kept checkpoints, newest first, beginning with `checkpoint` (Tune's latest)."""
    fs, folder = checkpoint.filesystem, checkpoint.path.rstrip("/")
    parent, name = folder.rsplit("/", 1)
    older = [info.path for info in fs.get_file_info(pafs.FileSelector(parent))
             if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_")
             and info.base_name < name]
    return [checkpoint] + [tune.Checkpoint(path, fs) for path in sorted(older, reverse=True)]


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(the file system, the path in it) of a storage URI or local path."""
    return pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)


def carried_checkpoint(uri: Optional[str]) -> Optional[tune.Checkpoint]:
    """The checkpoint at `uri` (a storage URI or path), of an interrupted trial of an earlier Ray experiment this
    trial carries on from (the study file changed, its config did not), or None."""
    return None if uri is None else tune.Checkpoint(*filesystem(uri)[::-1])


EPOCH_FILE = "epoch"  # in each checkpoint of a PBT member: the epoch it holds


def prune_member_checkpoints(experiment: str, trial_id: str, interval: int) -> None:
    """Delete a PBT member's checkpoints but the two newest and the two newest of exploit epochs (one of which other
    members may yet start from: none passes the next exploit epoch before all reach it). Tune keeps every checkpoint
    of a member (num_to_keep: None), since its own pruning, restored from a snapshot older than its last deletion,
    deletes a checkpoint again and fails the trial."""
    fs, path = filesystem(experiment)
    found = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(f"{path}/{trial_id}"))
                   if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_"))
    epochs = {}
    for folder in found:
        try:
            with fs.open_input_stream(f"{folder}/{EPOCH_FILE}") as stream:
                epochs[folder] = int(stream.read())
        except (OSError, ValueError):
            continue  # being written, or not a member's: left alone
    marked = [f for f in found if f in epochs]
    keep = set(marked[-2:]) | set(sorted((f for f in marked if epochs[f] % interval == 0), key=epochs.get)[-2:])
    for folder in marked:
        if folder not in keep:
            fs.delete_dir(folder)


def readable_state(checkpoint: tune.Checkpoint) -> tuple[Optional[dict], str]:
    """(the newest checkpoint state that loads, a note naming each newer one that did not, or "").

    A checkpoint cut short (a full disk, a node lost while writing) would otherwise fail every retry
    and every rerun the same way; the older kept checkpoint costs an epoch. None when none loads:
    the trial then starts over, which on the CPU reproduces the same epochs.
    """
    import torch

    notes = []
    for candidate in checkpoint_states(checkpoint):
        try:
            with candidate.as_directory() as folder:
                return torch.load(Path(folder) / Reported.STATE_FILE, map_location="cpu", weights_only=True), "; ".join(notes)
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
        import torch

        remedy = ("its torch is a CPU build: install a CUDA build there" if torch.version.cuda is None else
                  f"its torch is built for CUDA {torch.version.cuda}: check the node's NVIDIA driver (nvidia-smi)")
        raise StudyError(f"torch sees {torch_sees} GPU(s) on node {node}, but Ray gave this trial GPU {gpus}; "
                         f"{remedy}, or set device: cpu to train on its CPUs (torch {torch.__version__})")
    return gpus


def trainable(tune_config: dict, book: TrialBook) -> None:
    """One trial: train, report metrics and a checkpoint every epoch, resume from Tune's checkpoint."""
    import torch

    from isnm import TrainingDiverged, resolve_device, train

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" line per epoch is noise
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))  # trials sharing a machine must not fight over cores
    config = book.describe(tune_config).config
    node = f"{ray.get_runtime_context().get_node_id()[:12]} {ray.util.get_node_ip_address()}"
    where = {Reported.NODE: node}
    gpus = usable_gpus(ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count(),
                       parse_config(config).device, node)
    if gpus:
        where[Reported.GPU_IDS] = gpus
    resume_state, note = None, ""
    checkpoint = tune.get_checkpoint() or carried_checkpoint(book.carried.get(book.describe(tune_config).name))
    once = {}  # said with the first epoch only
    if checkpoint is not None:
        resume_state, note = readable_state(checkpoint)
        if note and book.pbt is not None:  # an older checkpoint, or none, is another member's past: never silently
            raise StudyError(f"a PBT member cannot go on from another checkpoint than the one it was given ({note}); "
                             f"run the study with --fresh")
        if note:
            print(f"warning: {note}")
            where[Reported.CHECKPOINT_NOTE] = note
        source = checkpoint.path.rstrip("/").rsplit("/", 2)[-2]  # the folder of the trial it is of (trial_folder)
        if book.pbt is not None and source != tune.get_context().get_trial_id():
            once[Reported.EXPLOITED] = source  # PBT's exploit: this member goes on from that member's checkpoint

    def report(measured: dict, state: dict) -> None:
        if Reported.ENVIRONMENT not in where:  # read once training has set its threads and backends up
            where[Reported.ENVIRONMENT] = json.dumps(environment(str(resolve_device(parse_config(config).device))))
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / Reported.STATE_FILE)
            if measured[metrics.EPOCH] == config["epochs"]:  # the run's model.pt, which the driver then logs as it is
                torch.save(state["model"], Path(folder) / Artifact.WEIGHTS)
            if book.pbt is not None:
                (Path(folder) / EPOCH_FILE).write_text(str(measured[metrics.EPOCH]))
            tune.report({**measured, **where, **once}, checkpoint=tune.Checkpoint.from_directory(folder))
            once.clear()
        if book.pbt is not None and book.experiment:
            prune_member_checkpoints(book.experiment, tune.get_context().get_trial_id(), book.pbt.interval)

    try:
        train(config, on_epoch=report, resume_state=resume_state)
    except TrainingDiverged as exc:
        # Divergence is a result, not a crash: retrying the same seed would diverge again.
        tune.report({metrics.EPOCH: exc.epoch, Reported.DIVERGED: str(exc), **where})  # isnm's one wording of it
