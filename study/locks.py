"""A study's lock file, which `study.run` holds (an flock) while it drives the study, and whether a driver holds it
now: what study.status needs to tell a study that runs from one whose driver was killed outright (its runs left
RUNNING in the store)."""
from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Optional


def lock_file(root: str, experiment: str) -> Path:
    """The lock of the Ray experiment folder `<root>/<experiment>`, beside it (which --fresh moves aside)."""
    return Path(root) / f"{experiment}.lock"


def holder_text() -> str:
    """What a driver writes into the lock it takes: who it is."""
    return f"PID {os.getpid()} on host {socket.gethostname()}, started at {time.strftime('%Y-%m-%d %H:%M:%S %z')}"


def held(path: Path) -> Optional[bool]:
    """Whether a driver holds the lock at `path`: read from /proc/locks, never by taking it (taking it even for a
    moment could refuse a driver starting then). None where this host cannot tell: no such file here, or a holder on
    another host (NFS keeps its locks on the server)."""
    try:
        stat, text = path.stat(), path.read_text(errors="replace")
    except OSError:
        return None
    host = re.search(r" on host (\S+),", text)
    if host and host.group(1) != socket.gethostname():
        return None
    inode = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    # "1: FLOCK  ADVISORY  WRITE 4242 00:2e:123 0 EOF"; a process waiting for it is listed with "->" before the type
    return any("FLOCK" in line.split() and inode in line.split() and "->" not in line
               for line in Path("/proc/locks").read_text().splitlines())
