"""One driver per study at a time: a second launch of the same study on the same storage is refused while
the first runs (one line, exit 2), rather than waiting, which would look like a hang.

The lock is an flock on `<storage>/<experiment>.lock`, beside the experiment folder (which --fresh
moves aside): the OS drops it when its process ends, however it ends, so a driver killed with
SIGKILL leaves nothing that blocks the next launch. The file holds who has it, as text. On NFS, Linux
takes an flock as a lock on the server, so it holds across hosts; an object store has no locks, and
for one the lock file lies on this host and guards against a second launch from this host only.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow.fs as pafs

from study.errors import StudyError
from study.locks import holder_text, lock_file
from study.run.storage import Experiment

HOLDER_WAIT_S = 2.0  # how long to wait for a lock's new holder to write its name in


def lock_path(experiment: Experiment) -> Path:
    """The experiment's lock file: beside its folder when the storage is a local (or NFS) folder."""
    if isinstance(experiment.fs, pafs.LocalFileSystem):
        return lock_file(experiment.fs_root, experiment.name)
    digest = hashlib.sha256(experiment.uri.encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "isnm-study" / "locks" / f"{experiment.name}-{digest}.lock"


def holder(fd: int) -> str:
    """Who holds the lock on `fd`, as its holder wrote it: "PID 12 on host h, started at ..."."""
    deadline = time.monotonic() + HOLDER_WAIT_S
    while True:  # the holder writes right after it takes the lock; an empty file is that moment
        text = os.pread(fd, 1000, 0).decode(errors="replace").strip()
        if text or time.monotonic() > deadline:
            return text or "another process"
        time.sleep(0.1)


@contextmanager
def study_lock(experiment: Experiment, study_name: str) -> Iterator[None]:
    """Hold the lock of `experiment` while the body runs; a StudyError naming the holder when another has it."""
    path = lock_path(experiment)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by Ray's processes (O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyError(f"study {study_name} is already running from {holder(fd)} (lock {path}); wait for "
                             f"it to end or stop it, then run the same command again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_text().encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, since removing it would race with a new holder
