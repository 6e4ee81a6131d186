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
    """Whether a driver holds the lock at `path`, told without taking it (taking it even for a moment could refuse a
    driver starting then): True when /proc/locks lists an flock on the file; False when its holder, by the PID it
    wrote, is gone; None where this host cannot tell: no such file here, a holder on another host (NFS keeps its
    locks on the server), or one whose PID lives on while /proc/locks does not show its lock (another PID
    namespace, a file system whose device numbers /proc/locks spells otherwise)."""
    try:
        stat, text = path.stat(), path.read_text(errors="replace")
    except OSError:
        return None
    holder = re.search(r"^PID (\d+) on host (\S+),", text)
    if holder and holder.group(2) != socket.gethostname():
        return None
    inode = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    # "1: FLOCK  ADVISORY  WRITE 4242 00:2e:123 0 EOF"; a process waiting for it is listed with "->" before the type
    if any("FLOCK" in line.split() and inode in line.split() and "->" not in line
           for line in Path("/proc/locks").read_text().splitlines()):
        return True
    if holder is None:
        return False  # an empty file: never held, or its holder died before it wrote its name
    return None if Path(f"/proc/{holder.group(1)}").exists() else False
