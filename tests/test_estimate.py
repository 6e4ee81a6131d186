"""study.run.estimate: the arithmetic of a study's cost from given figures (no clock read), the figures a compile is
counted at, and a real compile recorded and then used. How close an estimate comes to the study it estimates is
measured, not tested: benchmarks/estimate.py, docs/performance.md."""
import re
import shutil

import pytest
from mlflow.tracking import MlflowClient

import study.run.estimate
from isnm.kernels import (CompileTimer, compile_record, compile_seconds, compiled_marker, measured_source,
                          note_compiled)
from study.run.cli import main
from study.run.estimate import compile_costs, placed
from study.design.load import load_study
from study.design.plan import plan_trials
from study.tracking.provenance import CodeState
from study.tracking.store import experiment_id
from study.tracking.writers import create_trial_run, log_epoch, start_parent_run
from tests.studies import ROOT, run_study, small_study, trial_runs


@pytest.mark.parametrize("durations, slots, wall", [([10, 10, 10], 2, 20), ([5, 1, 1, 1], 2, 5), ([3, 3], 4, 3),
                                                    ([], 2, 0)])
def test_trials_start_in_order_on_the_first_free_slot(durations, slots, wall):
    assert placed(durations, slots) == (wall, 0)


def test_a_slot_compiles_kernels_the_first_time_one_of_its_trials_runs_them():
    seconds = {("tiny", 2): 30.0, ("tiny", 4): 40.0}
    wall, compiling = placed([10, 5, 10, 10], 2, [("tiny", 2), None, ("tiny", 2), ("tiny", 4)], seconds)
    # slot 0: compiles T=2 and trains (40); slot 1: the eager trial (5), then the third, which compiles T=2 there
    # too (45); the fourth on slot 0, free first, compiles T=4 (40 + 40 + 10)
    assert (wall, compiling) == (90, 100)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """An empty Inductor cache of this test's own, as a machine has before its first compile."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    return tmp_path / "inductor"


def test_a_compile_is_counted_at_this_machines_recorded_seconds_where_there_are_any(cache):
    keys = [("tiny", 5), None, ("tiny", 5)]
    first = compile_seconds("tiny", cached=False)
    assert compile_costs(keys, local=True) == ({("tiny", 5): first}, (
        f"compiling, once per worker: tiny T=5 {round(first)} s (first run on this machine, measured on the "
        "project's 2-core CPU)"))
    compile_record("tiny", 2, cached=False).parent.mkdir(parents=True)
    compile_record("tiny", 2, cached=False).write_text("20.0\n")
    compile_record("tiny", 8, cached=False).write_text("33.0\n")
    compile_record("tiny", 4, cached=True).write_text("9.0\n")
    assert compile_costs(keys, local=True) == ({("tiny", 5): 20.0}, (  # the nearest T, the smaller on a tie: T=2
        "compiling, once per worker: tiny T=5 20 s (first run on this machine, measured here at T=2)"))
    compile_record("tiny", 5, cached=False).write_text("25.5\n")
    assert compile_costs(keys, local=True)[1].endswith("tiny T=5 26 s (first run on this machine, measured here)")
    note_compiled("tiny", 5)  # the kernels are in the cache: a cached compile, measured at T=4 only
    assert compile_costs(keys, local=True) == ({("tiny", 5): 9.0}, (
        "compiling, once per worker: tiny T=5 9 s (cached on this machine, measured here at T=4)"))
    # a cluster's nodes have caches of their own: the first compile, as measured on the project's CPU
    assert compile_costs(keys, local=False)[0] == {("tiny", 5): first}


def test_the_compile_timer_records_the_first_compiled_epoch_over_the_next_once_per_process(cache):
    timer = CompileTimer("vgg_small", 3, "compiled")
    timer.epoch_ended(50.0, "compiled")
    assert compiled_marker("vgg_small", 3).is_file() and not compile_record("vgg_small", 3, cached=False).exists()
    timer.epoch_ended(1.5, "compiled")
    timer.epoch_ended(0.5, "compiled")  # later epochs change nothing
    assert compile_record("vgg_small", 3, cached=False).read_text() == "48.50\n"
    again = CompileTimer("vgg_small", 3, "compiled")  # a second trial in this worker: its kernels are in memory
    again.epoch_ended(2.0, "compiled")
    again.epoch_ended(1.0, "compiled")
    assert compile_record("vgg_small", 3, cached=False).read_text() == "48.50\n"
    assert not compile_record("vgg_small", 3, cached=True).exists()
    fell_back = CompileTimer("resnet18", 3, "compiled")  # a compiler that failed: eager epochs, nothing compiled
    fell_back.epoch_ended(5.0, "eager")
    fell_back.epoch_ended(4.0, "eager")
    eager = CompileTimer("tiny", 3, "eager")
    eager.epoch_ended(1.0, "eager")
    eager.epoch_ended(0.5, "eager")
    assert sorted(p.name for p in (cache / "isnm").iterdir()) == ["vgg_small-T3-cold.seconds", "vgg_small-T3.compiled"]


def estimate_lines(capsys, *args) -> list[str]:
    assert main([*args, "--dry-run", "--estimate"]) == 0
    return capsys.readouterr().out.split("estimate for", 1)[1].splitlines()


@pytest.mark.slow  # trains a few steps and starts a Python process
def test_estimate_times_a_few_steps_here_when_the_store_has_no_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = small_study(tmp_path, epochs=3)
    lines = estimate_lines(capsys, str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}")
    assert lines[0] == " itest: 4 trials to run, 0 cached"
    setting = next(line for line in lines if line.startswith("| tiny digits"))
    assert re.fullmatch(r"\| tiny digits T=2 b=128 fp32 auto \| 4 \| [0-9.]+ \| timed here \|", setting)
    trials = [line for line in lines if line.startswith("| ISNM")]
    assert len(trials) == 4 and all(re.fullmatch(r"\| ISNM\S* seed=[01] \| 3 \| [0-9]+ s \|", t) for t in trials)
    assert any(line.startswith("compute: ") for line in lines)
    assert any(re.match(r"wall clock: ~.+, 2 trials at a time on this machine", line) for line in lines)


def test_estimate_reads_finished_runs_and_skips_cached_trials(tmp_path, capsys, monkeypatch, mlflow_uri):
    """Two trials finished in the store at 2.5 s an epoch after a first of 4 s (a worker's one-off costs, left out):
    the other two cost 3 epochs of that and their start, these nothing; the start and the workers' imports are
    given, so the sums are known to the second."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(study.run.estimate, "setup", lambda config: (None, None, 1.2))
    monkeypatch.setattr(study.run.estimate, "worker_start_seconds", lambda: 2.0)
    path = small_study(tmp_path, epochs=3)
    spec = load_study(path)
    client = MlflowClient(mlflow_uri)
    exp = experiment_id(client, spec.name, mlflow_uri)
    code = CodeState("0" * 40, False, "")
    parent = start_parent_run(client, exp, spec, code, "ray-exp")
    trials = plan_trials(spec)
    for trial in trials[:2]:
        run = create_trial_run(client, exp, parent, spec.name, trial, code)
        for epoch, seconds in ((1, 4.0), (2, 2.5), (3, 2.5)):
            log_epoch(client, run, {"epoch": epoch, "test_acc": 0.5, "epoch_seconds": seconds})
        client.set_terminated(run, "FINISHED")
    lines = estimate_lines(capsys, str(path), "--tracking-uri", mlflow_uri, "--max-concurrent", "1")
    assert lines[0] == " itest: 2 trials to run, 2 cached"
    assert "| tiny digits T=2 b=128 fp32 auto | 2 | 2.50 | 2 finished runs |" in lines
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[2][:-2] for line in lines if line.startswith("| ISNM")}
    assert rows[trials[0].name] == rows[trials[1].name] == "cached"
    assert [rows[t.name] for t in trials[2:]] == ["9 s", "9 s"]  # 1.2 + 3 x 2.5
    # one after the other (8.7 + 8.7), after Ray's start (RAY_START_S) and a worker's imports (2)
    assert "compute: 17 s of trials (0.00 CPU-hours)" in lines
    assert any(line.startswith(f"wall clock: ~{round(17.4 + study.run.estimate.RAY_START_S + 2)} s, 1 trial at a "
                               "time on this machine: ") and line.endswith(", at most 1 at once") for line in lines)


def test_estimate_without_dry_run_is_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(small_study(tmp_path)), "--estimate"]) == 2
    assert "--estimate: only with --dry-run" in capsys.readouterr().err


@pytest.mark.slow  # compiles a one-layer network's kernels in a real study on an empty cache
def test_a_compile_in_a_study_is_recorded_and_the_next_estimate_counts_it_compiling_nothing(tmp_path):
    """The study's worker, the first on this machine, is announced at the project's CPU's figures and records its
    compile (its first epoch over its second, as the run logged them); an estimate at another T then counts this
    machine's compile, and compiles nothing itself. The network is the smallest that compiles the ISNM loops (a
    spiking MLP of one layer, your own network's way): tiny's kernels took 50 CPU-seconds more to compile."""
    cache = tmp_path / "inductor"  # empty: the first run on this machine
    env = {"TORCHINDUCTOR_CACHE_DIR": str(cache)}
    shutil.copy(ROOT / "examples" / "spiking_mlp.py", tmp_path)
    arch, one_layer = "spiking_mlp:spiking_mlp", {"kernel": "compiled", "arch_args": {"layers": 1, "hidden": 16}}
    path = small_study(tmp_path, name="cc", epochs=2, variants={"A": {"arch": arch, **one_layer}}, seeds=[0])
    done = run_study(tmp_path, str(path), env=env)
    first = round(compile_seconds(arch, cached=False))
    assert (f"A seed=0  compiling kernels for {arch} at T=2 (first run on this machine: about {first} s "
            f"{measured_source(arch)}; cached afterwards)") in done.stdout, done.stdout
    [run] = trial_runs(tmp_path / "mlflow.db", "cc")
    epochs = sorted(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(run.info.run_id,
                                                                                              "epoch_seconds"),
                    key=lambda m: m.step)
    recorded = float((cache / "isnm" / f"{arch}-T2-cold.seconds").read_text())
    assert recorded == pytest.approx(epochs[0].value - epochs[1].value, abs=0.006)
    kernels = sorted(cache.rglob("*.so"))
    other_t = small_study(tmp_path, name="cc3", epochs=2, variants={"A": {"arch": arch, **one_layer, "timesteps": 3}},
                          seeds=[0])
    after = run_study(tmp_path, str(other_t), "--dry-run", "--estimate", env=env).stdout
    seconds = study.run.estimate.duration(recorded)
    assert (f"compiling, once per worker: {arch} T=3 {seconds} (first run on this machine, measured here at T=2)"
            in after), after
    assert sorted(cache.rglob("*.so")) == kernels and not (cache / "isnm" / f"{arch}-T3.compiled").exists()
