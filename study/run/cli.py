"""`python -m study.run FILE`: run a study's trials on Ray Tune and log them to MLflow."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from study.errors import StudyError, plural, user_error_exit
from study.run.cluster import cluster_address, set_ray_environment
from study.run.lock import study_lock
from study.run.signals import Interrupts
from study.run.storage import experiment_for, writable_storage
from study.records import METRICS
from study.design.adaptive import SeedRule
from study.design.config import Study
from study.design.load import load_study
from study.design.plan import (Trial, check_data_of, plan_summary, plan_trials, search_base, stand_ins, trial_count,
                               trial_table)
from study.design.plugins import check_plugins_of
from study.tracking.pbt import schedules_in
from study.tracking.provenance import code_state, warn_if_dirty
from study.tracking.retry import DEFAULT_PATIENCE_S


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.run", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("file", help="study file (YAML), e.g. search_spaces/ablation.yaml")
    parser.add_argument("--profile", help="named overlay from the file's profiles:, e.g. demo")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the trials; start nothing")
    parser.add_argument("--estimate", action="store_true",
                        help="with --dry-run: each trial's time and the study's, from finished runs in the tracking "
                             "store or a few steps timed here")
    parser.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--wait-for-nodes", type=int, default=1, metavar="N",
                        help="with --address: wait (up to 5 min) until N nodes have joined the cluster before the "
                             "trials start (study.submit's script passes its job's node count)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--storage", default="./ray_results", help="Ray results and checkpoints (default ./ray_results)")
    parser.add_argument("--tracking-patience", type=float, default=DEFAULT_PATIENCE_S, metavar="SECONDS",
                        help=f"how long the tracking server may not answer before the study stops, resumable; "
                             f"the trials train on meanwhile (default {DEFAULT_PATIENCE_S})")
    parser.add_argument("--max-trials", type=int, metavar="N",
                        help=f"allow a plan of up to N trials (default {MAX_TRIALS:,}: a larger one is refused)")
    parser.add_argument("--max-concurrent", type=int, help="at most N trials at once (default: as resources allow)")
    parser.add_argument("--fresh", action="store_true", help="start over instead of resuming an interrupted run")
    parser.add_argument("--rerun", action="store_true",
                        help="run every trial, also those with a FINISHED run of the same config in MLflow")
    parser.add_argument("--ui-port", type=int, default=5000, metavar="PORT",
                        help="the port your `mlflow ui` will use, for the page printed at the end (default 5000)")
    parser.add_argument("--verbose", action="store_true",
                        help="also Ray Tune's tables, Ray's warnings and the trials' own output")
    return parser.parse_args(argv)


MAX_TRIALS = 10_000  # a plan larger than this is more likely a typo in a grid than a study; --max-trials allows it
LISTED_TRIALS = 200  # a dry run lists every trial up to this many, else how many values each key takes


def planned(study: Study, max_trials: Optional[int]) -> list[Trial]:
    """The study's trials (none for a search, which samples them as it runs), counted before they are made."""
    if study.spec.search is not None:
        return []
    n, limit = trial_count(study), max_trials or MAX_TRIALS
    if n > limit:
        raise StudyError(f"{study.path}: {n:,} trials ({plural(len(study.variants), 'variant')} x "
                         + "".join(f"{len(v)} {k} x " for k, v in study.spec.grid.items())
                         + f"{plural(len(study.seeds), 'seed')}), more than {limit:,}; pass --max-trials {n} if "
                         "you mean it")
    return plan_trials(study)


def adaptive_plan(study: Study, trials: list[Trial]) -> str:
    """The dry run of a study with adaptive seeds: the trials it runs at least (every cell's first `min` seeds), and
    how many it runs at most."""
    rule, first = study.adaptive, SeedRule(study, trials).first()
    unit = " pp" if METRICS[study.table.metrics[0]].percent else ""
    return (f"{study.name}: {len(first)} to {len(trials)} trials (adaptive seeds: {rule.min} to {rule.max} per table cell, more "
            f"only where a comparison's 95% interval of {study.table.metrics[0]} is wider than ±{rule.target:g}{unit})\n"
            f"{trial_table(first) if len(first) <= LISTED_TRIALS else plan_summary(study, first)}\n"
            f"then seeds {rule.min} to {rule.max - 1} as the results ask for them (--estimate counts all {len(trials)})")


def search_plan(study: Study) -> str:
    """The dry run of a search: what it samples, or what its population changes and how often; what each trains."""
    search, epochs, seed = study.spec.search, study.base["epochs"], study.seeds[0]
    if search.algorithm == "pbt":
        steps = list(range(search.interval, epochs, search.interval))
        return (f"{study.name}: population-based training, {search.population} members over {epochs} epochs on seed "
                f"{seed}; after epochs {', '.join(map(str, steps)) or 'none'} the worst quarter by {search.metric} "
                f"({search.mode}) go on from the best quarter's checkpoints with "
                + ", ".join(f"{k} perturbed within {spec}" for k, spec in search.mutations.items()))
    stopping = " (ASHA may stop a sample early)" if search.scheduler is not None else ""
    return (f"{study.name}: search, {search.num_samples} samples ({search.algorithm}) over "
            f"{', '.join(search.space)}; " + ", ".join(f"{m} {mode}" for m, mode in search.objectives)
            + f"; each trains up to {epochs} epochs on seed {seed}{stopping}")


def check_before_start(study: Study, trials: list[Trial], address: Optional[str]) -> None:
    """Mistakes found without starting anything: data that is missing or damaged, GPUs this machine
    lacks, a Ray address where nothing listens. CIFAR is fetched here, once, when the study may."""
    from study.run.cluster import check_address

    check_address(address)
    check_data_of(study, trials)  # torch loads only here, after the file itself is known good
    if study.spec.resources.gpu > 0 and address is None:
        import torch
        if torch.cuda.device_count() < study.spec.resources.gpu:
            raise StudyError(f"{study.path}: resources.gpu: {study.spec.resources.gpu:g} per trial, but this machine "
                             f"has {torch.cuda.device_count()} GPUs; set resources.gpu: 0 (a profile such as "
                             f"demo does) or pass --address of a cluster with GPUs")


def estimated(study: Study, trials: list[Trial], args: argparse.Namespace) -> str:
    """--estimate's text; the trials study.run would take from the store (not with --rerun) cost nothing."""
    from study.run.estimate import estimate, store_client
    from study.tracking.cache import finished_runs
    from study.tracking.store import tracking_uri

    address = cluster_address(args.address)
    if address:  # to join it as study.run would (a local Ray is not started for an estimate)
        set_ray_environment(address)
    client = store_client(tracking_uri(args.tracking_uri))
    if not trials:  # a search: its samples are drawn as it runs, so each is counted at its base config's cost
        return estimate(study, stand_ins(study), client, set(), args.max_concurrent, address) + (
            "\n\n(a search's samples are not known before it runs: each is counted at the cost of the base config; "
            "samples that change T, width or the network cost more or less)")
    cached = set() if args.rerun or client is None else set(finished_runs(client, {t.config_hash for t in trials}))
    return estimate(study, trials, client, cached, args.max_concurrent, address)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        placeholders: list[str] = []  # a dry run plans a {from_study: NAME} that has not run with a stand-in
        study = load_study(args.file, args.profile,
                           schedules_in(args.tracking_uri, args.file, placeholders if args.dry_run else None))
        trials = planned(study, args.max_trials)
        if args.max_concurrent is not None and args.max_concurrent < 1:
            raise StudyError(f"--max-concurrent: got {args.max_concurrent}, expected an integer >= 1")
        if not 1 <= args.ui_port <= 65535:
            raise StudyError(f"--ui-port: got {args.ui_port}, expected a port from 1 to 65535")
        if args.wait_for_nodes < 1:
            raise StudyError(f"--wait-for-nodes: got {args.wait_for_nodes}, expected an integer >= 1")
        if args.tracking_patience < 0:
            raise StudyError(f"--tracking-patience: got {args.tracking_patience:g}, expected seconds >= 0")
        if args.estimate and not args.dry_run:
            raise StudyError("--estimate: only with --dry-run (it plans and times, and runs nothing)")
        if args.estimate:
            from study.run.cluster import check_address

            check_address(cluster_address(args.address))  # before any output: a cluster not there fails in seconds
        check_plugins_of(study, [t.config for t in trials] or [search_base(study)])
        code = code_state()
        if args.dry_run:
            warn_if_dirty(code)
            if len(trials) > LISTED_TRIALS:
                print(f"{study.name}: {len(trials):,} trials (too many to list: the values of each key)\n"
                      f"{plan_summary(study, trials)}")
            elif study.adaptive is not None:
                print(adaptive_plan(study, trials))
            elif trials:
                print(f"{study.name}: {plural(len(trials), 'trial')}\n{trial_table(trials)}")
            else:
                print(search_plan(study))
            if placeholders:
                print("\n".join(placeholders), file=sys.stderr)
            if args.estimate:
                print("\n" + estimated(study, trials, args))
            return 0
        address = cluster_address(args.address)
        set_ray_environment(address)
        with Interrupts() as interrupts:
            check_before_start(study, trials, address)
            experiment = experiment_for(study, trials, args.storage)
            from study.run.driver import RunOptions, run  # Ray and MLflow load only now: a bad file fails in a second
            from study.tracking.store import tracking_uri, writable_store

            options = RunOptions(tracking_uri(args.tracking_uri), address, args.max_concurrent,
                                 args.tracking_patience, args.fresh, args.rerun, args.verbose, args.ui_port,
                                 args.wait_for_nodes)
            writable_store(options.tracking_uri)  # before the lock file is made, and before Ray starts
            writable_storage(experiment)
            with study_lock(experiment, study.name):
                return run(study, trials, options, experiment, interrupts, code)
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        return user_error_exit(exc)

