"""Population-based training over beta: the record of exploits read back into the schedule a member's final weights
trained with (fast), and a real PBT study on Ray and MLflow, its driver SIGKILLed and resumed, its best schedule
replayed from scratch (slow)."""
import re
import signal
import tempfile
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from isnm import betas_text, config_hash, surrogate_at, to_dict
from isnm.config import parse_config
from study.errors import StudyError
from study.records import PbtExploit, Tag, read_runs
from study.design.load import load_study
from study.design.config import with_overrides
from study.design.plan import pbt_member, plan_trials
from study.tracking.pbt import Segment, ancestry
from study.tracking.recorded import stored_study
from tests.studies import run_study, start_study, steps, trial_runs, wait_for


def exploit(epoch: int, source: str, beta: float) -> PbtExploit:
    return PbtExploit(epoch, source, {"surrogate.beta": beta})


def test_ancestry_follows_exploits_back_to_the_first_epoch():
    # b trained 1-2 at 2.0, then took a's epoch 2 and went on at 3.0; c took b's epoch 4 and went on at 4.0
    betas = {"a": {e: 1.0 for e in range(1, 7)}, "b": {1: 2.0, 2: 2.0, 3: 3.0, 4: 3.0, 5: 3.0, 6: 3.0},
             "c": {1: 9.0, 2: 9.0, 3: 9.0, 4: 9.0, 5: 4.0, 6: 4.0}}
    exploits = {"b": [exploit(2, "a", 3.0)], "c": [exploit(4, "b", 4.0)]}
    assert ancestry("c", 6, betas, exploits) == [Segment("a", 1, 2, (1.0, 1.0)), Segment("b", 3, 4, (3.0, 3.0)),
                                                 Segment("c", 5, 6, (4.0, 4.0))]
    # b's later exploit (at 4, from a) does not reach back into what c took from b at 4
    exploits["b"].append(exploit(4, "a", 5.0))
    assert ancestry("c", 6, betas, exploits)[1] == Segment("b", 3, 4, (3.0, 3.0))
    assert ancestry("a", 6, betas, exploits) == [Segment("a", 1, 6, (1.0,) * 6)]


def test_ancestry_names_an_epoch_no_run_logged():
    with pytest.raises(StudyError, match="run a logged no beta for epoch.s. 2"):
        ancestry("b", 3, {"a": {1: 1.0}, "b": {3: 2.0}}, {"b": [exploit(2, "a", 2.0)]})


def test_exploit_tags_sort_by_epoch_and_read_back():
    key, text = exploit(12, "r1", 2.5).tag
    assert key == "pbt.exploit.000012"
    record = type("R", (), {"tags": {key: text, exploit(4, "r0", 1.5).tag[0]: exploit(4, "r0", 1.5).tag[1]}})
    assert PbtExploit.of(record) == [exploit(4, "r0", 1.5), exploit(12, "r1", 2.5)]


def test_a_member_is_itself_whatever_beta_it_has_and_never_a_fixed_trial():
    study = load_study(Path("search_spaces/schedules_pbt.yaml"), "demo")
    base, search = with_overrides(study.base, {"seed": 0}), study.spec.search
    first, later = pbt_member(base, search, 1, {"surrogate.beta": 2.0}), pbt_member(base, search, 1, {"surrogate.beta": 3.0})
    assert first.config_hash == later.config_hash != pbt_member(base, search, 2, {"surrogate.beta": 2.0}).config_hash
    assert first.config_hash != config_hash(first.config)  # the fixed-schedule trial of the same beta
    assert first.config["surrogate"]["beta"] == 2.0 and first.varying == ("surrogate.beta",)


def test_a_beta_per_epoch_trains_as_given_and_is_hashed():
    config = parse_config({"epochs": 3, "surrogate": {"schedule": {"beta": [0.5, 2.0, 2.0]}}})
    assert [surrogate_at(config.surrogate, e, 3)[1] for e in range(3)] == [0.5, 2.0, 2.0]
    assert surrogate_at(config.surrogate, 0, 3)[0] == 2.0  # eq. 8: alpha = max(1/beta, 1)
    other = {"epochs": 3, "surrogate": {"schedule": {"beta": [0.5, 2.0, 2.5]}}}
    assert config_hash({"epochs": 3, "surrogate": {"schedule": {"beta": [0.5, 2.0, 2.0]}}}) != config_hash(other)
    assert betas_text([0.5, 2.0, 2.0]) == "0.5, 2 x2"


def test_from_study_is_resolved_by_the_caller_and_refused_without_it(tmp_path):
    asked = []

    def found(name, profile):
        asked.append((name, profile))
        return [1.0] * 6

    study = load_study(Path("search_spaces/schedules.yaml"), "demo", found)
    assert asked == [("schedules_pbt", "demo")]
    replay = next(t for t in plan_trials(study) if t.variant == "PBT-found")
    assert replay.config["surrogate"]["schedule"] == {"beta": [1.0] * 6}
    assert study.resolved["variants"]["PBT-found"] == {"surrogate.schedule": {"beta": [1.0] * 6}}
    with pytest.raises(StudyError, match=r"variants.PBT-found.surrogate.schedule: \{from_study: schedules_pbt\} is the "
                                         r"schedule PBT study 'schedules_pbt' found, read from the tracking store"):
        load_study(Path("search_spaces/schedules.yaml"), "demo")


PBT = {"name": "pbt", "base": {"dataset": "digits", "arch": "tiny", "epochs": 6, "timesteps": 2, "batch_size": 128,
                               "kernel": "eager", "surrogate": {"schedule": "fixed"}},
       "search": {"algorithm": "pbt", "population": 4, "interval": 2, "mutate": {"surrogate.beta": [0.5, 10]},
                  "metric": "val_acc"},
       "seeds": [0], "resources": {"cpu": 1}}
REPLAY = {"name": "replay", "base": PBT["base"] | {"surrogate": {"schedule": "gradual"}},
          "variants": {"PBT-found": {"surrogate.schedule": {"from_study": "pbt"}}},  # GSG beside it: schedules.yaml
          "seeds": [0], "resources": {"cpu": 1}}


def beta_history(client: MlflowClient, run_id: str) -> dict[int, float]:
    history = client.get_metric_history(run_id, "beta")
    assert len(history) == len({m.step for m in history}), "an epoch logged twice"
    return {m.step: m.value for m in history}


@pytest.mark.slow
def test_pbt_study_survives_a_driver_kill_and_its_best_schedule_replays_to_the_bit(tmp_path, shared_ray):
    path, db = tmp_path / "pbt.yaml", tmp_path / "mlflow.db"
    path.write_text(yaml.safe_dump(PBT))
    driver = start_study(tmp_path, str(path))
    try:  # killed once the first exploit step is done: members mid-way, some on other members' checkpoints
        wait_for(lambda: "exploit:" in driver.log.read_text(), 300, "the first exploit", driver)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        driver.kill()
    assert len([r for r in trial_runs(db, "pbt") if r.info.status == "FINISHED"]) < 4, "ended before the kill"
    # on a Ray of its own, as the killed driver's was: on the session's cluster a killed job's members outlive it a
    # moment, and one trained an epoch into the storage the rerun restored from (seen in CI)
    done = run_study(tmp_path, str(path))
    assert "0 failed" in done.stdout
    # a member's seconds are its own training's, the same in its progress line and the summary (not its waits)
    ended = dict(re.findall(r"^  (member \d)  finished  val_acc \S+  (\S+)  \[", done.stdout, re.M))
    summed = dict(re.findall(r"^  (member \d)  test_acc \S+  (\S+)$", done.stdout, re.M))
    assert ended and all(summed[name] == seconds for name, seconds in ended.items()), done.stdout

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("pbt").experiment_id
    runs = list(read_runs(client, [exp], "trial"))
    assert sorted(r.name for r in runs) == [f"member {i}" for i in range(4)]  # one run per member, across the kill
    assert {r.status for r in runs} == {"FINISHED"}
    by_id = {r.run_id: r for r in runs}
    exploits = 0
    for run in runs:
        assert steps(db, client.get_run(run.run_id)) == [1, 2, 3, 4, 5, 6]
        betas = beta_history(client, run.run_id)
        assert sorted(betas) == [1, 2, 3, 4, 5, 6]
        assert all(betas[e] == betas[e + 1] for e in (1, 3, 5)), f"beta changed inside an interval: {betas}"
        assert "surrogate.beta" not in run.params  # a param cannot change: beta is the per-epoch metric
        for x in PbtExploit.of(run):
            exploits += 1
            assert x.epoch in (2, 4) and x.source in by_id and x.source != run.run_id
            assert betas[x.epoch + 1] == pytest.approx(x.values["surrogate.beta"], rel=1e-12)
            assert 0.5 <= x.values["surrogate.beta"] <= 10
    assert exploits >= 2  # a quarter of 4 members (one) exploits at each of epochs 2 and 4

    replay = tmp_path / "replay.yaml"
    replay.write_text(yaml.safe_dump(REPLAY))
    run_study(tmp_path, str(replay), cluster=shared_ray)
    replayed = next(r for r in read_runs(client, [client.get_experiment_by_name("replay").experiment_id], "trial")
                    if r.variant == "PBT-found")
    best = sorted(runs, key=lambda r: (-r.metrics["val_acc"], r.name))[0]  # as study.tracking.pbt ranks them
    # the same seed, data order and betas as the best member's final weights, exploits and all: the same numbers
    assert replayed.metrics["val_acc"] == best.metrics["val_acc"]
    assert replayed.metrics["test_acc"] == best.metrics["test_acc"]
    replay_betas = beta_history(client, replayed.run_id)
    with tempfile.TemporaryDirectory() as tmp:  # the parent run holds the file as trained: the list, not the name
        data, _, _ = stored_study(client, client.get_experiment_by_name("replay").experiment_id, Path(tmp))
    assert data["variants"]["PBT-found"]["surrogate.schedule"]["beta"] == [replay_betas[e] for e in range(1, 7)]
    listed = with_overrides(data["base"] | {"seed": 0}, {"surrogate.schedule": {"beta": [replay_betas[e] for e in range(1, 7)]}})
    assert replayed.tags[Tag.CONFIG_HASH] == config_hash(to_dict(parse_config(listed)))  # the hash covers the list

    report = run_report(tmp_path, "pbt")
    assert "| 1 | " + best.name in report and (tmp_path / "reports" / "pbt-schedule.png").stat().st_size > 10_000


def run_report(cwd: Path, name: str) -> str:
    import subprocess
    import sys

    from tests.studies import loopback_env

    done = subprocess.run([sys.executable, "-m", "study.report", name], cwd=cwd, env=loopback_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_search_without_pbt_keeps_the_folder_it_had_before_pbt():
    search = load_study(Path("search_spaces/beta_search.yaml")).spec.search
    assert set(search.settings) == {"space", "algorithm", "num_samples", "metric", "mode", "scheduler"}
    assert {"population", "interval", "mutate"} <= set(load_study(Path("search_spaces/schedules_pbt.yaml")).spec.search.settings)


def test_a_choice_is_mutated_along_its_values_and_a_range_within_it(tmp_path):
    from study.run.pbt import SEARCHED, within
    from study.run.tuner import tune_config

    data = yaml.safe_load(Path("search_spaces/schedules_pbt.yaml").read_text())
    data["search"]["mutate"] = {"surrogate.beta": {"choice": [1.0, 2.0, 5.0]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    scheduler = tune_config(load_study(tmp_path / "s.yaml"), None).scheduler
    assert scheduler._hyperparam_mutations == {SEARCHED: {"surrogate.beta": [1.0, 2.0, 5.0]}}  # Tune shifts along a list
    assert within(12.0, {"loguniform": [0.5, 10]}) == 10.0 and within(0.3, {"loguniform": [0.5, 10]}) == 0.5
