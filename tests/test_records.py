"""study.records: the one spelling of the MLflow record. Its registry agrees with what training reports and what
the tables print, and no other module of study/ spells a tag key, run kind, metric name or artifact name."""
import ast
import re
from pathlib import Path

import pytest

from isnm import metrics
from study.records import (AT_TIMESTEPS, METRICS, SELECTABLE, Artifact, ExperimentTag, Kind, Reported, RunRecord,
                           RunStatus, Tag, at_timesteps, code_label, logged_per_epoch, newest_finished,
                           run_filter)

STUDY = Path(__file__).resolve().parent.parent / "study"
BENCHMARKS = STUDY.parent / "benchmarks"


def constants(cls: type) -> dict[str, str]:
    return {k: v for k, v in vars(cls).items() if k.isupper() and isinstance(v, str)}


RECORD_WORDS = {*constants(Kind).values(), *constants(Tag).values(), *constants(ExperimentTag).values(),
                *constants(Artifact).values(), *constants(Reported).values(), *METRICS}
# Words of the record that are also the names of other things, each spelled where that thing is defined:
ALSO_ELSEWHERE = {
    "seed": "a config key (the trial config's seed, set by the study's seeds list)",
    "variant": "a table key (study.design.config.VARIANT_KEY: the rows of a table are the variants)",
    "kernel": "a config key (TrainConfig.kernel)",
    "study": "the study itself, in messages and file names",
    "trial": "Tune's param-space key naming a planned trial (study.run.tuner; old experiments hold it)",
    "error": "a word of messages",
    "beta": "a config key (surrogate.beta, the fixed schedule's)",
    "alpha": "a config key (surrogate.alpha)",
    "retries": "a study-file key (StudyFile.retries)",
    "interrupted": "a trial state the report counts (study.records.Status)",
}


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


RUN_STATUSES = set(constants(RunStatus).values())
# the MLflow client's readers that stand for a decision made once: a metric's history (study.records.history,
# histories), a study found by its name (study.tracking.recorded.study_experiment; study.tracking.store opens one to
# write in)
READERS = {"get_metric_history": {"records.py"}, "get_experiment_by_name": {"records.py", "recorded.py", "store.py"}}


def slurm_names(tree: ast.AST) -> set[int]:
    """ids of the nodes inside an assignment to a SLURM_* name: Slurm's job states share words with MLflow's."""
    return {id(n) for node in ast.walk(tree) if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id.startswith("SLURM_") for t in node.targets)
            for n in ast.walk(node.value)}


def stray_literals(path: Path) -> list[str]:
    """'file:line: text' for each string literal (or f-string part) in `path` that spells a word of the record, an
    MLflow run status, or a tag or metric in an MLflow filter (tags.KEY, metrics.NAME); and each call of an MLflow
    reader that `READERS` gives one place."""
    tree = ast.parse(path.read_text())
    skip = docstrings(tree) | slurm_names(tree)
    strays = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and path.name not in READERS.get(node.attr, {path.name}):
            strays.append(f"{path.relative_to(STUDY.parent)}:{node.lineno}: .{node.attr}")
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
            continue
        text = node.value
        word = (text in RECORD_WORDS and text not in ALSO_ELSEWHERE) or text in RUN_STATUSES
        in_filter = re.search(r"\b(tags|metrics)\.[a-z_]+", text)
        if word or in_filter:
            strays.append(f"{path.relative_to(STUDY.parent)}:{node.lineno}: {text!r}")
    return sorted(strays, key=lambda s: int(s.split(":")[1]))


def test_no_module_but_records_spells_the_record():
    paths = [*sorted(STUDY.rglob("*.py")), *sorted(BENCHMARKS.glob("*.py"))]
    strays = [s for path in paths if path != STUDY / "records.py" for s in stray_literals(path)]
    assert strays == [], "spell these through study.records:\n" + "\n".join(strays)


def test_the_scan_finds_a_stray_literal(tmp_path):
    (tmp_path / "stray.py").write_text(
        'TAGS = {"config_hash": "x"}\nQUERY = "tags.kind = \'trial\'"\n'
        'def f(client):\n    """Mentions config_hash in prose."""\n    return "test_acc"\n'
        'def g(client, run):\n    client.set_terminated(run, "KILLED")\n    return client.get_metric_history(run, "x")\n'
        'def h(client):\n    return client.get_experiment_by_name("a")\n'
        'SLURM_ENDED = {"FAILED", "COMPLETED"}\n')
    global STUDY
    saved, STUDY = STUDY, tmp_path
    try:
        assert [s.split(": ", 1)[1] for s in stray_literals(tmp_path / "stray.py")] == [
            "'config_hash'", "\"tags.kind = 'trial'\"", "'test_acc'", "'KILLED'", ".get_metric_history",
            ".get_experiment_by_name"]
    finally:
        STUDY = saved


def test_every_selectable_metric_is_logged_every_epoch_has_a_header_and_comes_from_training():
    for name in SELECTABLE:
        assert logged_per_epoch(name) and METRICS[name].header and name in metrics.PER_EPOCH, name
        assert name != metrics.TEST_ACC and "test" not in METRICS[name].header.lower()  # never test data


def test_every_metric_training_reports_is_logged_and_every_registered_one_comes_from_training():
    assert set(metrics.PER_EPOCH) - {metrics.EPOCH} == set(METRICS)
    assert all(logged_per_epoch(name) for name in METRICS)
    assert logged_per_epoch(metrics.LAYER_RATE + "body.0") and not logged_per_epoch(metrics.EPOCH)
    assert not logged_per_epoch(Reported.NODE) and not logged_per_epoch(metrics.KERNEL)


def test_printed_values_follow_the_registry():
    assert METRICS[metrics.TEST_ACC].text(METRICS[metrics.TEST_ACC].shown(0.93815)) == "93.81"
    assert METRICS[metrics.SYNOPS].text(METRICS[metrics.SYNOPS].shown(457322.5)) == "0.46"
    assert METRICS[metrics.TRAIN_LOSS].signed(-0.125) == "-0.1250"
    assert METRICS[metrics.TEST_ACC].percent and not METRICS[metrics.ENERGY].percent


def test_evaluated_timesteps_names_round_trip():
    assert at_timesteps(4) == "test_acc_T4" and AT_TIMESTEPS.fullmatch(at_timesteps(12))[1] == "12"


def test_filters_quote_values_and_name_tags_through_the_registry():
    assert run_filter(Kind.TRIAL, "FINISHED", ray_experiment="/r/x'y") == (
        "tags.kind = 'trial' and tags.ray_experiment = \"/r/x'y\" and attributes.status = 'FINISHED'")
    with pytest.raises(AttributeError):
        run_filter(no_such_tag="x")


def record(run_id: str, start: int, status: str = "FINISHED", kind: str = Kind.TRIAL, config_hash: str = "h1",
           dirty: bool = False) -> RunRecord:
    return RunRecord(run_id, "1", run_id, status, start, None, "", kind, "A", 0, config_hash, "a" * 40, dirty,
                     {}, {}, {})


def test_newest_finished_takes_each_hash_newest_finished_trial_run():
    runs = [record("old", 1), record("new", 2), record("running", 3, "RUNNING"),
            record("reproduction", 4, kind=Kind.REPRODUCTION), record("other", 1, config_hash="h2")]
    assert {k: r.run_id for k, r in newest_finished(runs).items()} == {"h1": "new", "h2": "other"}


def test_code_labels():
    assert code_label("0123456789" * 4, False) == "0123456"
    assert record("r", 1, dirty=True).code == "aaaaaaa+dirty"


def test_histories_read_in_bulk_equal_a_run_a_call(store):
    from study.records import histories

    client, exp, _ = store
    runs = [client.create_run(exp).info.run_id for _ in range(3)]
    for i, run in enumerate(runs):
        for step in (3, 1, 2):  # logged out of order: histories come back by step
            client.log_metric(run, "test_acc", 0.1 * step + i, step=step)
    empty = client.create_run(exp).info.run_id
    one_call_each = {r: sorted(client.get_metric_history(r, "test_acc"), key=lambda m: m.step) for r in runs + [empty]}

    class OneRunACall:  # a client whose store reads no bulk (a tracking server's)
        get_metric_history = staticmethod(client.get_metric_history)

    for reader in (client, OneRunACall()):
        read = histories(reader, runs + [empty], "test_acc")
        assert {r: [(m.step, m.value) for m in h] for r, h in read.items()} == {
            r: [(m.step, m.value) for m in h] for r, h in one_call_each.items()}
    assert [m.step for m in histories(client, runs, "test_acc")[runs[0]]] == [1, 2, 3]
    # the bulk read a report on a sqlite or PostgreSQL store takes; gone in a new MLflow, reports slow down 2x
    assert callable(client._tracking_client.store.get_metric_history_bulk)


def test_a_difference_that_rounds_to_nothing_prints_without_a_minus():
    from study.records import METRICS

    assert METRICS["test_acc"].signed(-0.00001) == "+0.00" and METRICS["test_acc"].signed(-0.01) == "-0.01"
    assert METRICS["train_loss"].signed(-0.00004) == "+0.0000"
