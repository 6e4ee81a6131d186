"""Every user mistake at the command line: one line, exit code 2, nothing started or written."""
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from study.run import main
from tests.studies import free_port, loopback_env
from tests.test_config import BAD, GOOD

CLI_ONLY = [
    ("missing file", None, ["nope.yaml"], "nope.yaml: no such study file"),
    ("unknown profile", GOOD, ["--profile", "fast"], "profiles: no profile 'fast'"),
    ("cifar missing, download off", {**GOOD, "base": {"dataset": "cifar10", "data_dir": "cifar", "download": False}},
     [], "cifar10: files data_batch_1, .* not found in .*cifar/cifar-10-batches-py; set download: true"),
    ("gpu on a machine without", {**GOOD, "resources": {"gpu": 1}}, [], "resources.gpu: 1 per trial, but this machine"),
    ("max concurrent", GOOD, ["--max-concurrent", "0"], "--max-concurrent: got 0"),
    ("no ray cluster at the address", GOOD, ["--address", f"127.0.0.1:{free_port()}"],
     r"--address 127\.0\.0\.1:\d+: no Ray cluster answers there \(Connection refused\)"),
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
    probe = ("import sys; from study.run import main; rc = main(sys.argv[1:]); "
             "print(rc, 'ray' in sys.modules, 'mlflow' in sys.modules)")
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", probe, str(bad)], cwd=tmp_path, env=loopback_env(),
                          capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - began
    assert done.stdout.split() == ["2", "False", "False"]  # neither Ray nor MLflow was even imported
    assert done.stderr == (f"error: {bad}: variants.ISNM+GSG.surrogate.beta_max: got 5.0, "
                           "expected a number >= beta_min (9.0)\n")
    assert "Traceback" not in done.stderr and elapsed < 3.0, elapsed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]
