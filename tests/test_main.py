"""The command line, `python -m isnm`."""
import subprocess
import sys

import pytest

from isnm.__main__ import main


def test_command_line_trains_and_prints_the_final_metrics(capsys):
    assert main(["--set", "epochs=1", "--set", "neuron.reset=soft", "--set", "timesteps=2"]) == 0
    out = capsys.readouterr().out
    assert "reset soft" in out and "final: epoch 1" in out and "test_acc" in out


def test_command_line_bad_value_is_one_line_and_exit_2(capsys):
    assert main(["--set", "neuron.tau=-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neuron.tau" in err and "> 0" in err


def test_command_line_without_equals_is_one_line_and_exit_2(capsys):
    assert main(["--set", "epochs"]) == 2
    assert capsys.readouterr().err == "error: --set epochs: expected KEY=VALUE\n"


def test_runs_as_python_dash_m_isnm():
    done = subprocess.run([sys.executable, "-m", "isnm", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m isnm")


def test_help_lists_every_config_key_with_its_default(capsys):
    from isnm.config import default_config, flat

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for key, value in flat(default_config()).items():
        assert f"\n  {key}={value}\n" in out + "\n", key
