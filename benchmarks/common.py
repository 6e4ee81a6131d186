"""Timing for side-by-side benchmarks: alternating runs in one process, medians, a printed table."""
from __future__ import annotations

import importlib.util
import platform
import statistics
import sys
import time
from typing import Callable

import torch


def require_spikingjelly() -> None:
    """The peer these benchmarks compare against, or one line and exit code 2 saying how to install it."""
    if importlib.util.find_spec("spikingjelly") is None:
        print("error: SpikingJelly is not installed; pip install -e '.[bench]' (the bench extra)", file=sys.stderr)
        raise SystemExit(2)


def synchronized() -> None:
    """Wait for queued GPU work, so that a timer stops when the work is done, not when it is queued."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def alternating_medians(contenders: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                        clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds of each contender, runs interleaved so that machine noise hits all alike; `clock`
    time.process_time counts this process's CPU time instead of wall time (on one thread, what other
    processes on the machine take from it no longer counts)."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            synchronized()
            began = clock()
            fn()
            synchronized()
            times[name].append(clock() - began)
    return {name: statistics.median(values) for name, values in times.items()}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{torch.get_num_threads()} CPU threads"
    return f"{cpu}; {device}; torch {torch.__version__}"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(f"\n{title}\n")
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    print(f"\nmachine: {machine()}\ncommand: python -m {sys.modules['__main__'].__spec__.name} {' '.join(sys.argv[1:])}")
