"""`python -m study.evaluate RUN_ID --timesteps 1 2 5`: a trained trial's test accuracy at other numbers of time steps.

The weights do not depend on T, so the network a trial trained can run for any T. This loads the run's
final weights (`model.pt`) and config (`config.yaml`), evaluates the test set at each T as the training
evaluates (batch-norm statistics recalibrated at that T when the config recalibrates, in the training's
precision, on the run's thread count), prints a table and logs each accuracy as `test_acc_T<n>` on the
run, where `study.report` finds it (`table: {columns: [eval_timesteps]}`). At the trained T it is the
run's own final test_acc. Exit 0, or 2 on bad input.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from typing import TYPE_CHECKING

from mlflow.entities import Metric

from isnm import metrics
from study.errors import StudyError, user_error_exit
from study.markdown import markdown_table
from study.records import at_timesteps, history
from study.tracking.recorded import fetch_weights, recorded_run

if TYPE_CHECKING:
    from isnm import Dataset, TrainConfig


def accuracies(cfg: TrainConfig, data: Dataset, weights: dict, timesteps: list[int]) -> dict[int, float]:
    """T -> test accuracy of `weights` run for T time steps, evaluated as `isnm.train` evaluates."""
    from isnm import evaluate, precision_of, prepared_model, recalibrate_batch_norm, resolve_device

    device = resolve_device(cfg.device)
    precision = precision_of(cfg, device)
    out = {}
    for t in timesteps:
        model, _ = prepared_model(dataclasses.replace(cfg, timesteps=t), data, device)
        model.load_state_dict(weights)
        if cfg.bn_recalibration:  # the statistics in model.pt are of spikes over the trained T, not this one
            recalibrate_batch_norm(model, data.train_x[:cfg.bn_recalibration], cfg.batch_size, precision)
        out[t] = evaluate(model, data.test_x, data.test_y, precision)[0]
    return out


def evaluate_run(client, run_id: str, timesteps: list[int]) -> int:
    from isnm import DataError, PluginError, check_sources, load_dataset, resolve_device

    run, _, cfg = recorded_run(client, run_id)
    weights = fetch_weights(client, run)
    try:
        check_sources(cfg)  # the weights fit the network they trained in: the code must be that code
        data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, resolve_device(cfg.device), cfg.validation,
                            cfg.dataset_args)
    except (DataError, PluginError) as exc:
        raise StudyError(f"run {run_id}: {exc}") from None
    epoch = max((m.step for m in history(client, run_id, metrics.TEST_ACC)), default=0)
    recalibrated = (f"batch-norm statistics recalibrated at each T on the first "
                    f"{len(data.train_x[:cfg.bn_recalibration])} training images, as the training does before it "
                    f"evaluates" if cfg.bn_recalibration else
                    "batch-norm statistics as the training left them (bn_recalibration: 0)")
    print(f"evaluating run {run_id} ({run.info.run_name}): {cfg.arch} on {cfg.dataset}, trained at T={cfg.timesteps}, "
          f"epoch {epoch} weights\n{recalibrated}")
    found = accuracies(cfg, data, weights, timesteps)
    rows = [[f"{t} (trained)" if t == cfg.timesteps else str(t), f"{100 * acc:.2f}"] for t, acc in found.items()]
    print("\n" + markdown_table(["T", "test accuracy (%)"], rows) + "\n")
    recorded = run.data.metrics.get(metrics.TEST_ACC)
    if cfg.timesteps in found and recorded is not None:
        here = found[cfg.timesteps]
        print(f"at the trained T={cfg.timesteps}: {here:.6f}, " + (
            "equal to the run's final test_acc to the last bit" if here == recorded else
            f"the run's final test_acc is {recorded:.6f}: the code, device, thread count or data "
            f"here are not the run's "
            f"(`python -m study.reproduce {run_id}` says which)"))
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(at_timesteps(t), acc, now, epoch) for t, acc in found.items()])
    print(f"logged {', '.join(at_timesteps(t) for t in found)} on run {run_id}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("run_id", metavar="RUN_ID", help="the MLflow run of a trial (its id, in the UI or a report's "
                                                         "<study>.runs.csv)")
    parser.add_argument("--timesteps", type=int, nargs="+", required=True, metavar="T",
                        help="the numbers of time steps to evaluate at, e.g. 1 2 5")
    parser.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    args = parser.parse_args(argv)
    from study.tracking.store import read_client, tracking_uri

    try:
        for t in args.timesteps:
            if t < 1:
                raise StudyError(f"--timesteps: got {t}, expected integers >= 1")
        return evaluate_run(read_client(tracking_uri(args.tracking_uri)), args.run_id, sorted(set(args.timesteps)))
    except Exception as exc:
        return user_error_exit(exc)

