"""`python -m study.run FILE`: run a study's trials on Ray Tune and log them to MLflow."""
from __future__ import annotations

import argparse
import os
import sys
import time

from typing import Optional

from study.config import Study, StudyError, load_study, user_error_exit
from study.plan import Trial, plan_trials, trial_table


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
    parser.add_argument("--rerun", action="store_true",
                        help="run every trial, also those with a FINISHED run of the same config in MLflow")
    return parser.parse_args(argv)


def summary_lines(rows: list[tuple[str, str, str]]) -> list[str]:
    width = max((len(r[0]) for r in rows), default=0)
    return [f"  {name.ljust(width)}  {status}  {secs}" for name, status, secs in rows]


def result_row(result, describe) -> tuple[str, str, str]:
    metrics = result.metrics or {}
    if result.error:
        status = "failed: " + str(result.error).strip().splitlines()[-1][:120]
    elif metrics.get("diverged"):
        status = f"failed: training diverged at epoch {int(metrics['epoch'])}, step {int(metrics['diverged_step'])}"
    elif "test_acc" in metrics:
        status = f"test_acc {metrics['test_acc']:.4f}"
    else:
        status = "no result"
    seconds = metrics.get("time_total_s")
    return describe(result.config)["name"], status, f"{seconds:.0f}s" if seconds is not None else "-"


def check_before_start(study: Study, trials: list[Trial], address: Optional[str]) -> None:
    """Mistakes found without starting anything: data that is missing, GPUs this machine lacks, a Ray
    address where nothing listens."""
    from isnm.train import missing_data  # torch loads only here, after the file itself is known good

    configs = [t.config for t in trials] or [study.base]
    for config in configs:
        why = missing_data(config)
        if why:
            raise StudyError(f"{study.path}: {why}")
    if address or os.environ.get("RAY_ADDRESS"):
        from study.execute import check_head
        check_head(address)
    if study.spec.resources.gpu > 0 and not (address or os.environ.get("RAY_ADDRESS")):
        import torch
        if torch.cuda.device_count() < study.spec.resources.gpu:
            raise StudyError(f"{study.path}: resources.gpu: {study.spec.resources.gpu:g} per trial, but this machine "
                             f"has {torch.cuda.device_count()} GPUs; set resources.gpu: 0 (a profile such as "
                             f"demo does) or pass --address of a cluster with GPUs")


def set_ray_environment(address: Optional[str]) -> None:
    """Settings Ray reads once, on import: call before anything imports ray."""
    # Every epoch checkpoints by design (that is what resuming needs); Tune warns about it on short epochs.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune saves its experiment state at least 10 s apart by default, and only the last two trial
    # checkpoints are kept: with epochs of a second (digits) a killed driver's state could name a
    # checkpoint already deleted, and that trial could not resume
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    if address or os.environ.get("RAY_ADDRESS"):
        # `ray start` turns token authentication on, but a joining driver follows only when told
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def run(study: Study, trials: list[Trial], args: argparse.Namespace) -> int:
    # Ray and MLflow load only once the study is known to be valid, so a bad file fails in a second.
    import ray
    from mlflow.tracking import MlflowClient

    from study import execute, tracking

    uri = tracking.tracking_uri(args.tracking_uri)
    client = MlflowClient(uri)
    exp_id = tracking.experiment_id(client, study.name, uri)
    commit = tracking.git_commit()
    path = execute.experiment_path(study, trials, args.storage)
    closed = tracking.close_dangling_runs(client, exp_id, str(path))
    if closed:
        print(f"closed {closed} run(s) left RUNNING by an interrupted driver")
    book = execute.TrialBook(study, trials)
    parent = tracking.start_parent_run(client, exp_id, study, commit, str(path))
    cached = {} if args.rerun else tracking.finished_runs(client, {t.config_hash for t in trials})
    for trial in trials:
        source = cached.get(trial.config_hash)
        if source is not None and source.info.experiment_id != exp_id:
            tracking.copy_cached_run(client, source, exp_id, parent, study.name, trial.as_dict(), commit)
    to_run = [t for t in trials if t.config_hash not in cached]
    resume = not (args.fresh or args.rerun) and execute.can_resume(path)
    rows = {t.name: (t.name, "cached", "-") for t in trials if t.config_hash in cached}
    failed = 0
    began = time.perf_counter()
    if to_run or study.spec.search is not None:
        execute.start_ray(args.address, study.spec.resources)
        tracker = tracking.MlflowTracker(uri, exp_id, parent, study, commit, book.describe, str(path))
        try:
            tuner = execute.build_tuner(study, to_run, book, path, [tracker], args.max_concurrent, resume)
            results = tuner.fit()
            tracker.reconcile(results)
        except KeyboardInterrupt:
            client.set_terminated(parent, "KILLED")
            print(f"\ninterrupted; run the same command again to resume ({path})", file=sys.stderr)
            return 130
        except BaseException:
            client.set_terminated(parent, "FAILED")
            raise
        finally:
            ray.shutdown()
        # a restored experiment also returns trials that finished before: their result replaces "cached"
        rows.update((row[0], row) for row in (result_row(r, book.describe) for r in results))
        failed = sum(1 for _, status, _ in rows.values() if status.startswith("failed"))
    client.set_terminated(parent, "FAILED" if failed else "FINISHED")
    reused = sum(1 for _, status, _ in rows.values() if status == "cached")
    print(f"\n{study.name}: {len(rows)} trials ({reused} cached) in {time.perf_counter() - began:.0f}s, "
          f"{failed} failed")
    print("\n".join(summary_lines(list(rows.values()))))
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
        set_ray_environment(args.address)
        check_before_start(study, trials, args.address)
        return run(study, trials, args)
    except Exception as exc:
        return user_error_exit(exc)


if __name__ == "__main__":
    sys.exit(main())
