"""The example of your own network and data set (examples/), run as a user runs it, on real Ray and a real sqlite
store: a study of it runs, its report prints firing, SynOps and energy; a rerun is all cached until the network's
source is edited; a run reproduces bit for bit; an exception in the user's code fails its trials alone."""
import shutil

import pytest
import yaml
from mlflow.tracking import MlflowClient

from study.records import Artifact, Tag
from study.evaluate.cli import main as evaluate_main
from study.reproduce.cli import main as reproduce_main
from tests.studies import ROOT, run_study, steps, trial_runs
from tests.test_pbt import run_report

EXPLODING = '''
import torch
from torch import nn
from isnm.layers import ISNM, SpikingNet, TimeFolded


class Exploding(nn.Module):
    """Raises in its second epoch's training, also when a retry resumes it (its count is in its checkpoint): a bug in
    the user's code, mid-training."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        self.calls += self.training
        if self.calls > 45:  # an epoch is 19 steps and 19 passes that recalibrate batch norm
            raise RuntimeError("the user's layer broke")
        return x


def exploding_mlp(spec, hidden=32, **unused):
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(spec.in_channels * spec.image_size ** 2, hidden))
    body = nn.Sequential(ISNM(**spec.neuron), Exploding())
    return SpikingNet(encoder, body, TimeFolded(nn.Linear(hidden, spec.num_classes)), spec.timesteps)
'''


@pytest.mark.slow
def test_the_example_runs_caches_until_edited_reproduces_and_a_users_exception_fails_its_trials_alone(
        tmp_path, shared_ray, capsys):
    code = tmp_path / "mine"  # the study's folder, not the driver's: the workers import the code Ray ships them
    code.mkdir()
    for name in ("spiking_mlp.py", "noisy_digits.py"):
        shutil.copy(ROOT / "examples" / name, code / name)
    (code / "exploding.py").write_text(EXPLODING)
    study = yaml.safe_load((ROOT / "examples" / "own_network.yaml").read_text())
    study |= {"seeds": [0, 1], "grid": {"timesteps": [2]}, "base": {**study["base"], "epochs": 2}, "retries": 0,
              "profiles": {"broken": {"variants": {**study["variants"], "broken": {"arch": "exploding:exploding_mlp"}}}}}
    path = code / "own_network.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    db = tmp_path / "mlflow.db"

    broken = run_study(tmp_path, str(path), "--profile", "broken", cluster=shared_ray, check=False)
    assert broken.returncode == 1 and "0 cached" in broken.stdout, broken.stdout[-3000:]
    progress, _, summary = broken.stdout.partition("own_network: 6 trials (0 cached)")
    failed = [line for line in progress.splitlines() if "failed: RuntimeError: the user's layer broke" in line]
    assert len(failed) == 2 and "2 failed" in summary, broken.stdout[-3000:]  # one line each; the study went on
    client = MlflowClient(f"sqlite:///{db}")
    for run in trial_runs(db, "own_network"):
        if run.data.tags[Tag.VARIANT] == "broken":
            assert run.info.status == "FAILED" and steps(db, run) == [1]
            traceback = client.download_artifacts(run.info.run_id, Artifact.ERROR, str(tmp_path))
            assert "exploding.py" in open(traceback).read()  # where in the user's code
        else:
            assert run.info.status == "FINISHED" and steps(db, run) == [1, 2]
            plugins = yaml.safe_load(run.data.tags[Tag.PLUGINS])
            assert plugins["arch spiking_mlp:spiking_mlp"]["path"] == str(code / "spiking_mlp.py")
            assert run.data.params["arch_source"] == plugins["arch spiking_mlp:spiking_mlp"]["source"]

    before_edit = next(r for r in trial_runs(db, "own_network") if r.info.status == "FINISHED")
    again = run_study(tmp_path, str(path), cluster=shared_ray)
    assert "own_network: 4 trials (4 cached)" in again.stdout, again.stdout[-2000:]

    (code / "spiking_mlp.py").write_text((code / "spiking_mlp.py").read_text() + "\n# an edit\n")
    edited = run_study(tmp_path, str(path), cluster=shared_ray)
    assert "own_network: 4 trials (0 cached)" in edited.stdout and "0 failed" in edited.stdout, edited.stdout[-2000:]

    table = run_report(tmp_path, "own_network")  # planned with the code the latest invocation ran
    for header in ("Spike rate (%)", "SynOps (M/image)", "Energy (µJ/image)"):
        assert header in table, table
    assert "spiking_mlp:spiking_mlp" in table

    newest = max((r for r in trial_runs(db, "own_network") if r.info.status == "FINISHED"),
                 key=lambda r: r.info.start_time)
    uri = f"sqlite:///{db}"
    capsys.readouterr()
    assert reproduce_main([newest.info.run_id, "--tracking-uri", uri]) == 0
    assert "verdict: bit-identical" in capsys.readouterr().out
    assert evaluate_main([newest.info.run_id, "--timesteps", "1", "4", "--tracking-uri", uri]) == 0
    evaluated = MlflowClient(uri).get_run(newest.info.run_id).data.metrics
    assert {"test_acc_T1", "test_acc_T4"} <= set(evaluated)  # its own network, at other T
    assert reproduce_main([before_edit.info.run_id, "--tracking-uri", uri]) == 2  # trained by the code before the edit
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"has digest {newest.data.params['arch_source']}, the trial was planned with " \
        f"{before_edit.data.params['arch_source']}" in err, err
