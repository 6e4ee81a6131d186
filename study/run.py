"""`python -m study.run FILE`: run a study's trials on Ray Tune and log them to MLflow."""
from __future__ import annotations

import argparse
import os
import sys
import time

from study.config import Study, StudyError, load_study
from study.plan import plan_trials, trial_table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.run", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("file", help="study file (YAML), e.g. search_spaces/ablation.yaml")
    parser.add_argument("--profile", help="named overlay from the file's profiles:, e.g. demo")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the trials; start nothing")
    parser.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--storage", default="./ray_results", help="Ray results and checkpoints (default ./ray_results)")
    parser.add_argument("--max-concurrent", type=int, help="at most N trials at once (default: as resources allow)")
    parser.add_argument("--fresh", action="store_true", help="start over instead of resuming an interrupted run")
    return parser.parse_args(argv)


def summary_lines(results, describe) -> list[str]:
    rows = []
    for result in results:
        info = describe(result.config)
        acc = result.metrics.get("test_acc") if result.metrics else None
        seconds = result.metrics.get("time_total_s") if result.metrics else None
        status = "failed: " + str(result.error).strip().splitlines()[-1][:120] if result.error else (
            f"test_acc {acc:.4f}" if acc is not None else "no result")
        rows.append((info["name"], status, f"{seconds:.0f}s" if seconds is not None else "-"))
    width = max((len(r[0]) for r in rows), default=0)
    return [f"  {name.ljust(width)}  {status}  {secs}" for name, status, secs in rows]


def run(study: Study, args: argparse.Namespace) -> int:
    # Every epoch checkpoints by design (that is what resuming needs); Tune warns about it on short epochs.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if args.address or os.environ.get("RAY_ADDRESS"):
        # `ray start` turns token authentication on, but a joining driver follows only when told, and
        # Ray reads this once, on import
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    # Ray and MLflow load only once the study is known to be valid, so a bad file fails in milliseconds.
    import ray
    from mlflow.tracking import MlflowClient

    from study import execute, tracking

    trials = plan_trials(study) if study.spec.search is None else []
    uri = tracking.tracking_uri(args.tracking_uri)
    execute.start_ray(args.address, study.spec.resources)
    try:
        client = MlflowClient(uri)
        exp_id = tracking.experiment_id(client, study.name, uri)
        commit = tracking.git_commit()
        name = execute.experiment_name(study, trials)
        parent = tracking.start_parent_run(client, exp_id, study, commit, name)
        book = execute.TrialBook(study, trials)
        tracker = tracking.MlflowTracker(uri, exp_id, parent, study, commit, book.describe)
        tuner, path = execute.build_tuner(study, trials, book, args.storage, [tracker], args.max_concurrent,
                                          args.fresh)
        began = time.perf_counter()
        try:
            results = tuner.fit()
        except KeyboardInterrupt:
            client.set_terminated(parent, "KILLED")
            print(f"\ninterrupted; run the same command again to resume ({path})", file=sys.stderr)
            return 130
        except BaseException:
            client.set_terminated(parent, "FAILED")
            raise
        failed = sum(1 for r in results if r.error)
        client.set_terminated(parent, "FAILED" if failed else "FINISHED")
    finally:
        ray.shutdown()
    print(f"\n{study.name}: {len(results)} trials in {time.perf_counter() - began:.0f}s, {failed} failed")
    print("\n".join(summary_lines(results, book.describe)))
    print(f"\nruns: {tracking.ui_command(uri)}   (experiment {study.name!r})")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        study = load_study(args.file, args.profile)
        trials = plan_trials(study) if study.spec.search is None else []
        if args.max_concurrent is not None and args.max_concurrent < 1:
            raise StudyError(f"--max-concurrent: got {args.max_concurrent}, expected an integer >= 1")
        if args.dry_run:
            if trials:
                print(f"{study.name}: {len(trials)} trials\n{trial_table(trials)}")
            else:
                search = study.spec.search
                print(f"{study.name}: search, {search.num_samples} samples ({search.algorithm}) over "
                      f"{', '.join(search.space)}; {search.metric} {search.mode}")
            return 0
        return run(study, args)
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
