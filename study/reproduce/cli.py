"""`python -m study.reproduce RUN_ID`: train a recorded trial again here and compare, epoch by epoch.

It fetches the run's config (its `config.yaml`), says how this code and environment differ from the
recorded ones, trains the same config (all epochs, or the first `--epochs N`), compares every logged
metric, prints both side by side with a verdict, and logs the reproduction as a run tagged
`reproduces=RUN_ID`. With the same code and environment the verdict is bit identity; with another
commit, uncommitted diff, numeric package, device, thread count or data it is closeness within
`--tolerance`, and it says so. Exit 0 when they agree, 1 when they differ, 2 on bad input."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from study.errors import StudyError, user_error_exit
from study.reproduce.compare import DEFAULT_TOLERANCE, reproduce

if TYPE_CHECKING:
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("run_id", metavar="RUN_ID", help="the MLflow run of a trial (its id, in the UI or a report's "
                                                         "<study>.runs.csv)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--epochs", type=int, help="train and compare only the first N epochs (default: all)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"absolute tolerance when code or environment differ (default {DEFAULT_TOLERANCE})")
    args = parser.parse_args(argv)
    from study.tracking.store import read_client, tracking_uri

    try:
        if args.epochs is not None and args.epochs < 1:
            raise StudyError(f"--epochs: got {args.epochs}, expected an integer >= 1")
        return reproduce(read_client(tracking_uri(args.tracking_uri)), args.run_id, args.epochs, args.tolerance)
    except Exception as exc:
        return user_error_exit(exc)

