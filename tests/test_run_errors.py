"""Every user mistake at the command line: one line, exit code 2, nothing started or written."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from study.run.cli import main
from tests.studies import ROOT, free_port, loopback_env
from tests.study_files import BAD, GOOD

CLI_ONLY = [
    ("missing file", None, ["nope.yaml"], "nope.yaml: no such study file"),
    ("unknown profile", GOOD, ["--profile", "fast"], "profiles: no profile 'fast'"),
    ("cifar missing, download off", {**GOOD, "base": {"dataset": "cifar10", "data_dir": "cifar", "download": False}},
     [], "cifar10: files data_batch_1, .* not found in .*cifar/cifar-10-batches-py; set download: true"),
    ("gpu on a machine without", {**GOOD, "resources": {"gpu": 1}}, [], "resources.gpu: 1 per trial, but this machine"),
    ("max concurrent", GOOD, ["--max-concurrent", "0"], "--max-concurrent: got 0"),
    ("no ray cluster at the address", GOOD, ["--address", f"127.0.0.1:{free_port()}"],
     r"--address 127\.0\.0\.1:\d+: no Ray cluster answers there \(Connection refused\)"),
    ("estimate for a cluster not there", GOOD, ["--dry-run", "--estimate", "--address", f"127.0.0.1:{free_port()}"],
     r"--address 127\.0\.0\.1:\d+: no Ray cluster answers there \(Connection refused\)"),
    ("ray client address", GOOD, ["--address", "ray://127.0.0.1:10001"],
     r"--address ray://127\.0\.0\.1:10001: Ray Client \(ray://\) is not supported"),
    ("tracking server not there", GOOD, ["--tracking-uri", f"http://127.0.0.1:{free_port()}", "--tracking-patience", "300"],
     r"--tracking-uri http://127\.0\.0\.1:\d+: no tracking server answers there \(connection refused\)"),
    ("storage uri pyarrow cannot open", GOOD, ["--storage", "nosuchscheme://bucket/x"],
     r"--storage nosuchscheme://bucket/x: pyarrow cannot open it"),
]


def arguments(tmp_path: Path, data, extra: list[str]) -> list[str]:
    if data is None:
        return extra
    path = tmp_path / "study.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return [str(path), *[e for e in extra if e != "PROFILE"]]


CASES = [(name, data, ["--profile", "fast"] if data == "PROFILE" else [], words)
         for name, data, words in BAD] + CLI_ONLY


@pytest.mark.parametrize("name, data, extra, words", CASES, ids=[c[0] for c in CASES])
def test_mistake_is_one_line_exit_2_nothing_written(tmp_path, monkeypatch, capsys, name, data, extra, words):
    import re

    monkeypatch.chdir(tmp_path)
    data = GOOD if data == "PROFILE" else data
    args = arguments(tmp_path, data, extra)
    before = set(tmp_path.iterdir())
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and re.search(words, err), err
    assert set(tmp_path.iterdir()) == before  # no mlflow.db, no ray_results


def test_mistake_in_a_fresh_process_is_fast_and_starts_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**GOOD, "variants": {"ISNM+GSG": {"surrogate.beta_min": 9.0}}}))
    probe = ("import sys; from study.run.cli import main; rc = main(sys.argv[1:]); "
             "print(rc, *(m in sys.modules for m in ('ray', 'mlflow', 'torch')))")
    done = subprocess.run([sys.executable, "-c", probe, str(bad)], cwd=tmp_path, env=loopback_env(),
                          capture_output=True, text=True, timeout=60)
    # fast because nothing heavy loads: neither Ray, MLflow nor torch is even imported
    assert done.stdout.split() == ["2", "False", "False", "False"]
    assert done.stderr == (f"error: {bad}: variants.ISNM+GSG.surrogate.beta_max: got 5.0, "
                           "expected a number >= beta_min (9.0)\n")
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_password_in_a_tracking_uri_never_reaches_the_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    uri = f"postgresql://lab:s3cret@127.0.0.1:{free_port()}/runs"
    assert main([str(path), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: MLflow store postgresql://lab:***@127.0.0.1:") and err.count("\n") == 1, err
    assert "s3cret" not in err


@pytest.mark.slow
def test_parent_run_ends_failed_when_ray_cannot_serve_the_study(tmp_path):
    from mlflow.tracking import MlflowClient

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**GOOD, "resources": {"cpu": 64}}))
    done = subprocess.run([sys.executable, "-m", "study.run", str(path)], cwd=tmp_path, env=loopback_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "resources.cpu: 64.0 per trial, but the Ray cluster has" in done.stderr.strip().splitlines()[-1]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (parent,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert parent.info.status == "FAILED"


@pytest.mark.slow  # real processes
def test_an_alias_bomb_is_refused_in_bounded_memory_and_time(tmp_path):
    import resource

    bomb = next(data for name, data, _ in BAD if name == "an alias bomb")
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb)
    limit = 1 << 30  # expanded, the file is 10^9 values: gigabytes and minutes

    def capped():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run([sys.executable, "-m", "study.run", str(path), "--dry-run"], cwd=tmp_path, env=loopback_env(),
                          capture_output=True, text=True, timeout=20, preexec_fn=capped)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert "more than 100,000 values (seeds, grid values, each YAML alias *name counted as expanded)" in done.stderr


def test_a_grid_of_a_million_trials_is_refused_before_any_is_made_and_a_large_dry_run_is_summarised(tmp_path, capsys,
                                                                                                      monkeypatch):
    import study.run.cli

    def plan_refused(study):
        raise AssertionError(f"{len(study.seeds)} seeds of a grid too large were planned one by one")

    grid = {f"surrogate.beta_{end}": [float(v) for v in range(1, 11)] for end in ("min",)}
    grid |= {"lr": [10.0 ** -k for k in range(1, 11)], "batch_size": list(range(16, 26)), "neuron.tau": [1.5 + k for k in range(10)],
             "neuron.threshold": [0.5 + 0.1 * k for k in range(10)]}
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump({**GOOD, "variants": {"A": {}}, "grid": grid, "seeds": list(range(10)),
                                    "base": {**GOOD["base"], "surrogate": {"beta_max": 20.0}}}))
    with monkeypatch.context() as patched:  # counted from the grid's sizes, never by making its trials
        patched.setattr(study.run.cli, "plan_trials", plan_refused)
        assert main([str(path), "--dry-run"]) == 2
    assert capsys.readouterr().err == (f"error: {path}: 1,000,000 trials (1 variant x 10 batch_size x 10 lr x "
                                       "10 neuron.tau x 10 neuron.threshold x 10 surrogate.beta_min x 10 seeds), more than "
                                       "10,000; pass --max-trials 1000000 if you mean it\n")
    path.write_text(yaml.safe_dump({**GOOD, "grid": {"lr": [10.0 ** -k for k in range(1, 31)]}, "seeds": list(range(5))}))
    assert main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "t: 300 trials (too many to list: the values of each key)" and len(out) == 4, out
    assert out[1].split()[:3] == ["variant", "2", "values"] and out[3].split()[:3] == ["seed", "5", "values"]


def test_every_command_says_at_once_that_no_tracking_server_answers(tmp_path, capsys):
    """A refused connection is an answer: one line, not MLflow's minutes of silent retries (the subprocess-free calls
    and pytest's own timeout only stop a hang)."""
    from study.evaluate.cli import main as evaluate
    from study.report.cli import main as report
    from study.reproduce.cli import main as reproduce
    from study.status.cli import main as status

    uri = f"http://127.0.0.1:{free_port()}"
    for command, args in ((report, ["itest"]), (status, ["itest"]), (reproduce, ["0123abcd"]),
                          (evaluate, ["0123abcd", "--timesteps", "2"])):
        assert command([*args, "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no tracking server answers there (connection refused)" in err, err


SHIPPED = sorted([*(ROOT / "search_spaces").glob("*.yaml"), *(ROOT / "examples").glob("*.yaml")])


@pytest.mark.slow  # each estimate times a few training steps here
@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.stem)
def test_every_shipped_study_dry_runs_and_estimates_on_a_fresh_store(path, tmp_path, monkeypatch, capsys):
    """What a newcomer tries first, on a machine with no store yet: searches and PBT list what they will train and
    what it costs; a {from_study: NAME} that has not run is planned with a placeholder and names the command."""
    monkeypatch.chdir(tmp_path)
    profile = ["--profile", "demo"] if "demo" in (yaml.safe_load(path.read_text()).get("profiles") or {}) else []
    assert main([str(path), *profile, "--dry-run", "--estimate"]) == 0, capsys.readouterr().err
    out, err = capsys.readouterr()
    assert "wall clock: ~" in out and "compute: " in out, out
    if "from_study" in path.read_text():
        assert "has not run yet, so its rows are planned with a placeholder" in err and "schedules_pbt.yaml" in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()
