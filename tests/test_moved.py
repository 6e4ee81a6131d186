"""A Ray experiment interrupted before study/ became packages by concern resumes after the move.

`Tuner.restore` unpickles by module path what Tune pickled (the tracker callback with its study, trials
and code state, the trial folder namer); `study.moved` keeps those paths importable. The experiment in
tests/fixtures/premove was made by commit 9edd4fc (the last before the move): `premove.yaml` run with
`python -m study.run`, stopped with Ctrl-C while the second trial trained its third epoch (the first had
finished); the checkpoints Ray's saved state does not name, and the TensorBoard files, were deleted to keep
the fixture small.
"""
import shutil
from pathlib import Path

import pytest
import torch

from isnm import train
from study import moved
from study.design.load import load_study
from study.design.plan import plan_trials
from tests.studies import run_study, steps, trial_runs

FIXTURE = Path(__file__).parent / "fixtures" / "premove"
EXPERIMENT = "premove-2b480e57"


@pytest.mark.slow
def test_an_experiment_interrupted_before_the_move_resumes_after_it(tmp_path, shared_ray):
    shutil.copytree(FIXTURE / EXPERIMENT, tmp_path / "ray_results" / EXPERIMENT)
    shutil.copy(FIXTURE / "premove.yaml", tmp_path)
    done = run_study(tmp_path, "premove.yaml", cluster=shared_ray)
    assert "starting a new one" not in done.stdout and "cannot resume" not in done.stderr, done.stdout[-3000:]
    assert [p.name for p in (tmp_path / "ray_results").iterdir() if p.is_dir()] == [EXPERIMENT]  # none set aside
    db = tmp_path / "mlflow.db"
    runs = {r.info.run_name: r for r in trial_runs(db, "premove")}
    assert sorted(runs) == ["A seed=0", "A seed=1"] and {r.info.status for r in runs.values()} == {"FINISHED"}
    resumed = runs["A seed=1"]
    assert resumed.data.tags["ray_trial_id"] == "c3381_00001"  # the fixture's trial, not a new experiment's
    for run in runs.values():  # the fresh store gets the epochs trained before from Ray's own record
        assert steps(db, run) == [1, 2, 3]
    trial = next(t for t in plan_trials(load_study(tmp_path / "premove.yaml")) if t.name == "A seed=1")
    torch.set_num_threads(1)  # the trial had one CPU
    assert resumed.data.metrics["test_acc"] == train(trial.config)["test_acc"]  # its epoch 3 trained on from epoch 2's checkpoint


def test_a_study_pickled_under_study_spec_loads_from_study_design(tmp_path):
    """study.design was study.spec until the tree-mapping tools, which read a spec/ folder as tests, left it off their
    maps: a Tune experiment pickled before the rename holds its Study and trials under the old paths."""
    import io
    import pickle

    from study.design.config import Study
    from study.design.plan import Trial

    class Before(pickle._Pickler):  # pickles study.design's classes by the module paths they had
        def save_global(self, obj, name=None):
            module = getattr(obj, "__module__", "")
            if not module.startswith("study.design."):
                return super().save_global(obj, name)
            self.write(pickle.GLOBAL + f"study.spec.{module.rsplit('.', 1)[1]}\n{obj.__qualname__}\n".encode())
            self.memoize(obj)

    study = load_study(FIXTURE / "premove.yaml")
    trial = plan_trials(study)[0]
    saved = io.BytesIO()
    Before(saved, protocol=4).dump((study, trial))
    assert b"study.spec.config" in saved.getvalue() and b"study.design" not in saved.getvalue()
    moved.install()  # as study.run.tuner does before a restore: importing study installs nothing
    loaded, again = pickle.loads(saved.getvalue())
    assert isinstance(loaded, Study) and isinstance(again, Trial)
    assert loaded == study and again == trial
