"""Copying a finished run of another study into this one (the cache): whole or not at all."""
import pytest

from study.records import Kind, Tag, read_runs
from study.design.load import load_study
from study.design.plan import plan_trials
from study.tracking.cache import copy_cached_runs, finished_runs
from study.tracking.store import experiment_id
from study.tracking.writers import close_dangling_runs, start_parent_run
from tests.stores import CODE, STUDY, write_spec, write_store


def test_a_copy_cut_short_is_removed_and_one_left_running_is_removed_by_the_next_invocation(store, tmp_path):
    client, _, uri = store
    write_store(tmp_path, STUDY, {"A seed=0": 0.9}, uri)
    study = load_study(write_spec(tmp_path, {**STUDY, "name": "other"}))
    trial = next(t for t in plan_trials(study) if t.name == "A seed=0")
    source = finished_runs(client, {trial.config_hash})[trial.config_hash]
    exp = experiment_id(client, "other", uri)
    parent = start_parent_run(client, exp, study, CODE, "ray-exp")

    calls = {"n": 0}
    log_batch = client.log_batch

    def interrupted(*args, **kwargs):  # Ctrl-C once the copy's run is made (its params: a first batch), in its metrics
        calls["n"] += 1
        log_batch(*args, **kwargs)
        if "metrics" in kwargs:
            raise KeyboardInterrupt

    client.log_batch = interrupted
    with pytest.raises(KeyboardInterrupt):
        copy_cached_runs(client, [(trial, source)], exp, parent, "other")
    client.log_batch = log_batch
    assert calls["n"] == 2 and list(read_runs(client, [exp], Kind.TRIAL)) == []  # nothing half made is left

    # a driver killed outright leaves its half copy RUNNING: the next invocation removes it
    client.delete_run = lambda run_id: (_ for _ in ()).throw(ConnectionError("store away"))
    with pytest.raises(KeyboardInterrupt):
        client.log_batch = interrupted
        copy_cached_runs(client, [(trial, source)], exp, parent, "other")
    client.log_batch = log_batch
    del client.delete_run
    (half,) = read_runs(client, [exp], Kind.TRIAL)
    assert half.status == "RUNNING" and half.tags[Tag.CACHED_FROM] == source.run_id
    assert close_dangling_runs(client, exp, "a later ray experiment") == 1
    assert list(read_runs(client, [exp], Kind.TRIAL)) == []
    copy_cached_runs(client, [(trial, source)], exp, parent, "other")
    (copy,) = [run.run_id for run in read_runs(client, [exp], Kind.TRIAL)]
    assert client.get_run(copy).info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(copy, "test_acc")] == [
        (m.step, m.value) for m in client.get_metric_history(source.run_id, "test_acc")]
