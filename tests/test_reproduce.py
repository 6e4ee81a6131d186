"""study.reproduce against runs recorded as the tracker records them (real training, a temp sqlite store)."""
import sqlite3
from pathlib import Path

import yaml

from isnm.__main__ import main as train_main
from isnm.config import config_hash, parse_config, to_dict
from study.reproduce.cli import main
from study.tracking.provenance import CodeState, code_state
from tests.stores import TRAINED_CONFIG as CONFIG, record


def test_a_recorded_run_reproduces_bit_for_bit_and_is_logged(store, trained, capsys):
    client, exp, uri = store
    run_id = record(client, exp, CONFIG, trained, code_state())
    assert main([run_id, "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "same code, versions, device, threads and data" in out
    assert "verdict: bit-identical: 16 values over 2 epoch(s)" in out
    assert "| 2 | " in out  # the side-by-side table
    (again,) = client.search_runs([exp], f"tags.reproduces = '{run_id}'")
    assert again.data.tags["kind"] == "reproduction" and again.data.tags["verdict"].startswith("bit-identical")
    assert [m.step for m in client.get_metric_history(again.info.run_id, "test_acc")] == [1, 2]


def test_a_metric_edited_in_the_store_is_found_and_exits_1(store, trained, capsys):
    client, exp, uri = store
    run_id = record(client, exp, CONFIG, trained, code_state())
    with sqlite3.connect(uri[len("sqlite:///"):]) as db:
        db.execute("UPDATE metrics SET value = value + 1e-9 WHERE run_uuid = ? AND key = 'train_loss' AND step = 2",
                   (run_id,))
    assert main([run_id, "--tracking-uri", uri]) == 1
    out = capsys.readouterr().out
    assert "verdict: different: epoch 2, train_loss: recorded" in out and "with the same code and environment" in out


def test_a_different_seed_recorded_in_a_copied_run_is_found(store, trained, capsys):
    client, exp, uri = store
    run_id = record(client, exp, {**CONFIG, "seed": 1}, trained, code_state(), "A seed=1")  # seed 0's numbers
    assert main([run_id, "--tracking-uri", uri]) == 1
    assert "verdict: different: epoch 1, train_loss" in capsys.readouterr().out


def test_another_commit_is_said_plainly_and_checked_for_closeness(store, trained, capsys):
    client, exp, uri = store
    run_id = record(client, exp, CONFIG, trained, CodeState("f" * 40, False, ""))
    assert main([run_id, "--tracking-uri", uri, "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "commit" in out.split("differences from the recorded run:")[1].splitlines()[1]
    assert "verdict: bit-identical: 8 values over 1 epoch(s) equal the recorded ones to the last bit, although " \
           "these differ: commit" in out
    with sqlite3.connect(uri[len("sqlite:///"):]) as db:  # what another commit might change a little
        db.execute("UPDATE metrics SET value = value + 1e-4 WHERE run_uuid = ? AND key = 'test_acc'", (run_id,))
    assert main([run_id, "--tracking-uri", uri, "--epochs", "1", "--tolerance", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "checking closeness within an absolute tolerance of 0.001" in out
    assert "verdict: close: 8 values over 1 epoch(s) within 0.001" in out
    assert main([run_id, "--tracking-uri", uri, "--epochs", "1", "--tolerance", "1e-5"]) == 1
    assert "verdict: different: epoch 1, test_acc" in capsys.readouterr().out


def test_unknown_run_and_missing_store_are_one_line_exit_2(store, tmp_path, capsys):
    _, _, uri = store
    assert main(["0" * 32, "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no run '000") and err.count("\n") == 1
    assert main(["0" * 32, "--tracking-uri", f"sqlite:///{tmp_path / 'absent.db'}"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err


def test_training_from_a_runs_config_yaml_gives_its_config_hash(store, trained, capsys):
    client, exp, uri = store
    run_id = record(client, exp, CONFIG, trained, code_state())
    path = Path(client.download_artifacts(run_id, "config.yaml", "."))
    assert parse_config(yaml.safe_load(path.read_text())) == parse_config(CONFIG)
    assert train_main(["--config", str(path), "--set", "epochs=1"]) == 0  # --set still applies on top
    out = capsys.readouterr().out
    assert f"config_hash {config_hash(to_dict(parse_config({**CONFIG, 'epochs': 1})))}" in out
    assert train_main(["--config", str(path)]) == 0
    assert f"config_hash {client.get_run(run_id).data.tags['config_hash']}" in capsys.readouterr().out


def test_a_bad_config_file_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("neuron: {tau: -1}\n")
    assert train_main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {bad}: neuron.tau: got -1.0, expected a number > 0\n"
    assert train_main(["--config", str(tmp_path / "none.yaml")]) == 2
    assert "cannot read it" in capsys.readouterr().err
