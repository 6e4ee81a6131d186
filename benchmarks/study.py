"""Parallel efficiency of a real study: 8 digits trials of about 20 s, one CPU each, on this machine.

python -m benchmarks.study [--trials 8] [--epochs 15]
efficiency = (sum of trial compute / CPUs) / wall time of the trials; overhead = what each trial
costs beyond its own epochs (worker start, data loading, checkpoints, reporting).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import print_table

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        study = {"name": "bench", "base": {"dataset": "digits", "arch": "tiny", "epochs": args.epochs},
                 "variants": {"ISNM+GSG": {}}, "seeds": list(range(args.trials)), "resources": {"cpu": 1}}
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(study))
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "study.run", str(path)], cwd=tmp, check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
        command_wall = time.perf_counter() - began
        from mlflow.tracking import MlflowClient

        from isnm import metrics
        from study.records import Kind, histories, read_runs
        from study.tracking.recorded import study_experiment

        client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        runs = list(read_runs(client, [study_experiment(client, "bench", tmp)], Kind.TRIAL))
        logged = histories(client, [r.run_id for r in runs], metrics.EPOCH_SECONDS)
        compute = [sum(m.value for m in epochs) for epochs in logged.values()]
        first = min(r.start_time for r in runs) / 1000
        last = max(r.end_time for r in runs) / 1000
    wall = last - first
    efficiency = sum(compute) / cpus / wall
    overhead = (cpus * wall - sum(compute)) / len(runs)
    print_table(f"Study of {len(runs)} digits trials x {args.epochs} epochs, resources {{cpu: 1}}, {cpus} CPUs",
                ["trials", "mean trial compute", "trials' wall time", "efficiency", "overhead per trial",
                 "whole command"],
                [[str(len(runs)), f"{sum(compute) / len(runs):.1f} s", f"{wall:.1f} s", f"{efficiency:.2f}",
                  f"{overhead:.1f} s", f"{command_wall:.1f} s"]])


if __name__ == "__main__":
    main()
