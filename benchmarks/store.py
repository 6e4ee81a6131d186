"""A lab's tracking store after a year, and what reading it costs: `study.report` and the cache lookup at two sizes.

python -m benchmarks.store [--runs 1500 3000] [--folder DIR]

For each size it builds (once, kept in --folder) a sqlite store holding one study of that many finished trial runs,
written by the tool's own writers (`create_trial_run`, `log_epoch`) with synthetic values: 20 epochs of the 13
metrics a trial logs. Then, each in a fresh process, it times `python -m study.report` (its peak memory too), the
cache lookup `study.run` makes (`finished_runs` over every planned config hash), and, in a copy of the store,
copying every run into another study of the same configs as `study.run` does, and prints the seconds, the memory
and the growth ratio t(larger) / t(smaller): 2 is linear in the runs.
"""
from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from isnm import metrics

EPOCHS = 20
VARIANTS = {"ISNM": {}, "ISNM+Soft Reset": {"neuron.reset": "soft"}, "ISNM+GSG": {"surrogate.schedule": "gradual"},
            "ISNM+GSG+Soft Reset": {"neuron.reset": "soft", "surrogate.schedule": "gradual"}}


def study_file(folder: Path, runs: int) -> Path:
    spec = {"name": "year", "description": "a year of a lab's runs", "base": {"dataset": "digits", "arch": "tiny",
            "epochs": EPOCHS, "validation": 0.1, "surrogate": {"schedule": "fixed"}}, "variants": VARIANTS, "seeds": list(range(runs // len(VARIANTS))),
            "table": {"rows": "variant", "metric": metrics.TEST_ACC}}
    path = folder / f"year-{runs}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def build(folder: Path, runs: int) -> tuple[str, Path]:
    """(the store's URI, the study file) of `runs` finished trials, built unless it is there."""
    from mlflow.tracking import MlflowClient

    from study.design.load import load_study
    from study.design.plan import plan_trials
    from study.records import RunStatus
    from study.tracking.provenance import CodeState
    from study.tracking.store import created_store, experiment_id
    from study.tracking.writers import create_trial_run, log_epoch, start_parent_run

    db, path = folder / f"year-{runs}.db", study_file(folder, runs)
    uri = f"sqlite:///{db}"
    if db.exists():
        return uri, path
    began = time.perf_counter()
    partial = db.with_suffix(".partial.db")
    partial.unlink(missing_ok=True)
    created_store(f"sqlite:///{partial}")
    client, study = MlflowClient(f"sqlite:///{partial}"), load_study(path)
    exp = experiment_id(client, study.name, f"sqlite:///{partial}")
    code = CodeState("0" * 40, False, "")
    parent = start_parent_run(client, exp, study, code, "ray-exp")
    rng = random.Random(0)
    for trial in plan_trials(study):
        run = create_trial_run(client, exp, parent, study.name, trial, code)
        for epoch in range(1, EPOCHS + 1):
            acc = min(0.99, 0.5 + 0.02 * epoch + rng.gauss(0, 0.01))
            log_epoch(client, run, {metrics.EPOCH: epoch, metrics.TRAIN_LOSS: 1 - acc, metrics.TRAIN_ACC: acc,
                                    metrics.VAL_ACC: acc - 0.01, metrics.TEST_ACC: acc, metrics.BETA: 5.0,
                                    metrics.ALPHA: 1.0, metrics.EPOCH_SECONDS: 1.0 + rng.random(),
                                    metrics.SPIKE_RATE: 0.2, metrics.SYNOPS: 1e6, metrics.ENERGY: 0.5,
                                    metrics.VAL_SPIKE_RATE: 0.2})
        client.set_terminated(run, RunStatus.FINISHED)
    client.set_terminated(parent, RunStatus.FINISHED)
    shutil.move(partial, db)
    print(f"built {db} ({runs} runs) in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    return uri, path


CACHE_LOOKUP = """
import sys, time
from mlflow.tracking import MlflowClient
from study.design.load import load_study
from study.design.plan import plan_trials
from study.tracking.cache import finished_runs
began = time.perf_counter()
hashes = {t.config_hash for t in plan_trials(load_study(sys.argv[2]))}
found = finished_runs(MlflowClient(sys.argv[1]), hashes)
assert len(found) == len(hashes), (len(found), len(hashes))
print(time.perf_counter() - began)
"""


REPORT = """
import resource, runpy, sys, time
began = time.perf_counter()
sys.argv = ["study.report", *sys.argv[1:]]
try:
    runpy.run_module("study.report", run_name="__main__")
except SystemExit as done:
    assert not done.code, done.code
print(time.perf_counter() - began, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def report_cost(uri: str, out: Path) -> tuple[float, float]:
    """(seconds, peak MiB of resident memory) of `python -m study.report year` in a fresh process, imports included."""
    done = subprocess.run([sys.executable, "-c", REPORT, "year", "--tracking-uri", uri, "--out", str(out)], check=True,
                          capture_output=True, text=True, timeout=1800)
    seconds, memory = done.stdout.split()[-2:]
    return float(seconds), float(memory)


COPIES = """
import shutil, sys, tempfile, time
from pathlib import Path
import yaml
from mlflow.tracking import MlflowClient
from study.design.load import load_study
from study.design.plan import plan_trials
from study.tracking.cache import copy_cached_runs, finished_runs
from study.tracking.provenance import CodeState
from study.tracking.store import experiment_id
from study.tracking.writers import start_parent_run
folder = Path(tempfile.mkdtemp())
shutil.copy(sys.argv[1], folder / "mlflow.db")  # the benchmark's store stays as built
uri = f"sqlite:///{folder / 'mlflow.db'}"
spec = {**yaml.safe_load(Path(sys.argv[2]).read_text()), "name": "another"}
(folder / "another.yaml").write_text(yaml.safe_dump(spec))
study, client = load_study(folder / "another.yaml"), MlflowClient(uri)
trials = plan_trials(study)
began = time.perf_counter()
cached = finished_runs(client, {t.config_hash for t in trials})
parent = start_parent_run(client, experiment_id(client, "another", uri), study, CodeState("0" * 40, False, ""), "x")
copy_cached_runs(client, [(t, cached[t.config_hash]) for t in trials], client.get_experiment_by_name("another").experiment_id,
                 parent, "another")
print(time.perf_counter() - began)
shutil.rmtree(folder)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs=2, default=[1500, 3000])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/isnm-store-benchmark"))
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for runs in args.runs:
        uri, path = build(args.folder, runs)
        report, memory = report_cost(uri, args.folder / "reports")
        lookup = float(subprocess.run([sys.executable, "-c", CACHE_LOOKUP, uri, str(path)], check=True,
                                      capture_output=True, text=True, timeout=1800).stdout.split()[-1])
        copies = float(subprocess.run([sys.executable, "-c", COPIES, str(uri[len("sqlite:///"):]), str(path)],
                                      check=True, capture_output=True, text=True, timeout=3600).stdout.split()[-1])
        rows.append((runs, report, memory, lookup, copies))
        print(f"{runs} runs: study.report {report:.1f} s (peak {memory:.0f} MiB), cache lookup {lookup:.2f} s, "
              f"every run copied into another study {copies:.0f} s ({1000 * copies / runs:.0f} ms a copy)", flush=True)
    (small, t_small, _, l_small, c_small), (large, t_large, _, l_large, c_large) = rows
    print(f"growth t({large}) / t({small}): study.report {t_large / t_small:.2f}, cache lookup {l_large / l_small:.2f}, "
          f"copies {c_large / c_small:.2f}")


if __name__ == "__main__":
    main()
