"""A recorded trial trained again and compared with its run, epoch by epoch: the differences in code and
environment, the side-by-side table, the verdict, and the reproduction's own run."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import yaml

from isnm import metrics
from study.errors import StudyError
from study.markdown import markdown_table
from study.records import Artifact, Kind, REPRODUCED, RunRecord, RunStatus, Tag, history
from study.tracking.provenance import (CodeState, code_state, differences, environment, environment_tags,
                                       recorded_environment)
from study.design.plan import PBT_VARIANT
from study.tracking.recorded import recorded_run

SHOWN = (metrics.TRAIN_LOSS, metrics.TEST_ACC)  # the side-by-side columns; the verdict covers every REPRODUCED one
NOT_NUMERIC = ("ray", "mlflow", "optuna")  # versions that cannot change a trained number
DEFAULT_TOLERANCE = 0.02  # absolute, on accuracies (fractions), losses and rates alike


@dataclass
class Mismatch:
    epoch: int
    metric: str
    recorded: float
    here: float


def code_differences(recorded: CodeState, here: CodeState) -> list[tuple[str, str, str]]:
    rows = []
    if recorded.commit != here.commit:
        rows.append(("commit", recorded.commit[:12], here.commit[:12]))
    if recorded.diff != here.diff:
        rows.append(("uncommitted diff", f"{len(recorded.diff.splitlines())} lines" if recorded.dirty else "none",
                     f"{len(here.diff.splitlines())} lines" if here.dirty else "none"))
    return rows


def logged_values(client, run_id: str, epochs: int) -> dict[str, dict[int, float]]:
    """metric -> {epoch: value} as logged, for the compared metrics the run has."""
    out = {}
    for key in REPRODUCED:
        values = {m.step: m.value for m in history(client, run_id, key) if 1 <= m.step <= epochs}
        if values:
            out[key] = values
    return out


def first_mismatch(recorded: dict[str, dict[int, float]], here: list[dict], tolerance: Optional[float]
                   ) -> Optional[Mismatch]:
    """The first epoch (then metric) where the reproduction differs: at all (tolerance None) or by more."""
    for measured in here:
        epoch = measured[metrics.EPOCH]
        for key, values in recorded.items():
            if epoch not in values:
                continue
            a, b = values[epoch], float(measured[key])
            if (a != b) if tolerance is None else abs(a - b) > tolerance:
                return Mismatch(epoch, key, a, b)
    return None


def side_by_side(recorded: dict[str, dict[int, float]], here: list[dict]) -> str:
    shown = [k for k in SHOWN if k in recorded]
    header = [metrics.EPOCH] + [f"{k} {side}" for k in shown for side in ("recorded", "here")] + ["largest Δ of all metrics"]
    rows = []
    for measured in here:
        epoch = measured[metrics.EPOCH]
        cells = [str(epoch)]
        for key in shown:
            cells += [f"{recorded[key].get(epoch, float('nan')):.6f}", f"{float(measured[key]):.6f}"]
        gaps = [abs(v[epoch] - float(measured[k])) for k, v in recorded.items() if epoch in v]
        cells.append(f"{max(gaps):.2e}" if gaps else "-")
        rows.append(cells)
    return markdown_table(header, rows)


def log_reproduction(client, run, config: dict, here: list[dict], code: CodeState, env: dict, verdict: str) -> str:
    from study.tracking.writers import code_tags, log_epoch, log_text

    tags = {Tag.KIND: Kind.REPRODUCTION, Tag.REPRODUCES: run.info.run_id, Tag.VERDICT: verdict, **code_tags(code),
            **environment_tags(env), Tag.CONFIG_HASH: run.data.tags.get(Tag.CONFIG_HASH, "")}
    if here:
        tags[Tag.DATA_FINGERPRINT] = str(here[-1][metrics.DATA_FINGERPRINT])
    new = client.create_run(run.info.experiment_id, run_name=f"reproduce {run.info.run_name}", tags=tags)
    run_id = new.info.run_id
    for measured in here:
        log_epoch(client, run_id, measured)
    log_text(client, run_id, Artifact.CONFIG, yaml.safe_dump(config, sort_keys=False))
    if code.dirty:
        log_text(client, run_id, Artifact.DIFF, code.diff)
    client.set_terminated(run_id, RunStatus.FINISHED)
    return run_id


def reproduce(client, run_id: str, epochs: Optional[int], tolerance: float) -> int:
    from isnm import DataError, PluginError, config_hash, resolve_device, to_dict, train
    from study.tracking.cache import source_code

    run, config, cfg = recorded_run(client, run_id)
    if run.data.tags.get(Tag.VARIANT) == PBT_VARIANT:
        raise StudyError(f"run {run_id} is a member of a population-based search: its beta changed as it trained and "
                         f"it took other members' checkpoints, so no one config trains it again; a study row "
                         f"`surrogate: {{schedule: {{from_study: {run.data.tags.get(Tag.STUDY)}}}}}` replays the "
                         f"schedule its best member found")
    recorded_hash, hash_here = run.data.tags.get(Tag.CONFIG_HASH), config_hash(to_dict(cfg))
    logged = max((m.step for m in history(client, run_id, metrics.TEST_ACC)), default=0)
    if logged == 0:
        raise StudyError(f"run {run_id} logged no epoch; nothing to compare")
    last = min(epochs or logged, logged)
    recorded_env = recorded_environment(run.data.tags)
    print(f"reproducing run {run_id} ({run.info.run_name}), config_hash {recorded_hash}: {cfg.arch} on {cfg.dataset}, "
          f"epochs 1-{last} of {cfg.epochs}")
    if recorded_hash and recorded_hash != hash_here:
        print(f"note: this code hashes the config as {hash_here}, the run recorded {recorded_hash}")

    code, recorded_code = code_state(), source_code(client, RunRecord.of(run))
    here: list[dict] = []
    began = time.perf_counter()

    def collect(measured: dict, state: dict) -> None:
        here.append(measured)
        print(f"  epoch {measured[metrics.EPOCH]}/{last}  {metrics.TRAIN_LOSS} {measured[metrics.TRAIN_LOSS]:.6f}  "
              f"{metrics.TEST_ACC} {measured[metrics.TEST_ACC]:.6f}  {measured[metrics.EPOCH_SECONDS]:.1f}s",
              flush=True)

    try:
        train(config, on_epoch=collect, last_epoch=last)
    except (DataError, PluginError) as exc:  # a plugin: missing here, or its source not the one the run trained
        raise StudyError(f"run {run_id}: {exc}") from None
    env = environment(str(resolve_device(cfg.device)))
    recorded_env = {**recorded_env, "data": run.data.tags.get(Tag.DATA_FINGERPRINT, "-")}
    env_here = {**env, "data": str(here[-1][metrics.DATA_FINGERPRINT])}
    changes = code_differences(recorded_code, code) + differences(recorded_env, env_here)
    print(f"trained {len(here)} epoch(s) in {time.perf_counter() - began:.0f}s\n")
    if changes:
        print("differences from the recorded run:")
        width = max(len(k) for k, _, _ in changes)
        for key, before, after in changes:
            print(f"  {key.ljust(width)}  recorded {before}  |  here {after}")
    else:
        print("same code, versions, device, threads and data as the recorded run")
    numeric = [k for k, _, _ in changes if k not in NOT_NUMERIC]
    exact = not numeric
    recorded = logged_values(client, run_id, last)
    print("\n" + side_by_side(recorded, here) + "\n")
    compared = sum(1 for m in here for values in recorded.values() if m[metrics.EPOCH] in values)
    mismatch = first_mismatch(recorded, here, None)
    if mismatch is None:
        despite = "" if exact else f", although these differ: {', '.join(numeric)}"
        verdict = f"bit-identical: {compared} values over {len(here)} epoch(s) equal the recorded ones to the last bit{despite}"
    elif exact:
        verdict = (f"different: epoch {mismatch.epoch}, {mismatch.metric}: recorded {mismatch.recorded!r}, here "
                   f"{mismatch.here!r} (Δ = {mismatch.here - mismatch.recorded:+.3g}), with the same code and environment")
    else:
        print(f"not the same code or environment ({', '.join(numeric)}), so bit identity is not expected; "
              f"checking closeness within an absolute tolerance of {tolerance:g}")
        mismatch = first_mismatch(recorded, here, tolerance)
        verdict = (f"close: {compared} values over {len(here)} epoch(s) within {tolerance:g} of the recorded ones"
                   if mismatch is None else
                   f"different: epoch {mismatch.epoch}, {mismatch.metric}: recorded {mismatch.recorded:.6g}, here "
                   f"{mismatch.here:.6g} (Δ = {mismatch.here - mismatch.recorded:+.3g}, tolerance {tolerance:g})")
    new = log_reproduction(client, run, config, here, code, env, verdict)
    print(f"verdict: {verdict}\nlogged as run {new} (tag reproduces={run_id})")
    return 0 if mismatch is None else 1
