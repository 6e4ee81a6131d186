"""study.locks: whether a driver holds a study's lock, told from /proc/locks and the holder's PID without taking it."""
import fcntl
import os
import socket
import subprocess

import pytest

from study.locks import held, holder_text, lock_file


def test_a_held_lock_is_told_from_a_released_one_without_taking_it(tmp_path):
    path = lock_file(str(tmp_path), "study-1a2b")
    assert path == tmp_path / "study-1a2b.lock" and held(path) is None  # no lock file: nothing to tell
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(fd, holder_text().encode(), 0)
        assert held(path) is True
        other = os.open(path, os.O_RDWR)  # and the holder still has it (held() read the file: it released nothing)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
    finally:
        os.close(fd)
    assert held(path) is None  # released, but its holder (this process) lives: a PID reused, or not shown here


def test_a_lock_whose_holder_is_gone_is_not_held(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    path = tmp_path / "s.lock"
    path.write_text(f"PID {gone.pid} on host {socket.gethostname()}, started at 2026-12-03 10:00:00 +0000")
    assert held(path) is False
    path.write_text("")  # its holder died before it wrote its name
    assert held(path) is False


def test_a_holder_on_another_host_cannot_be_told_here(tmp_path):
    path = tmp_path / "s.lock"
    path.write_text("PID 12 on host elsewhere-node-7, started at 2026-12-03 10:00:00 +0000")
    assert held(path) is None
