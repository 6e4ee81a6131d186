"""Trial runs written into an MLflow store as study.run records them, without running a study: a config trained in
this process recorded as one finished run (`record`, for study.evaluate and study.reproduce), or a whole study's
invocation with chosen outcomes (`write_store`, for study.report)."""
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from isnm.config import config_hash, default_config, merged
from study.design.load import load_study
from study.design.plan import Trial, plan_trials
from study.tracking.provenance import CodeState, environment_tags
from study.tracking.store import experiment_id
from study.tracking.writers import create_trial_run, log_epoch, start_parent_run

CODE = CodeState("0" * 40, False, "")

# trained once per test process (tests/conftest.py, `trained`) for two modules: at T=5 for study.evaluate to go
# below, for 2 epochs for study.reproduce to compare epoch by epoch, at a quarter of the width so that the dozen
# epochs study.reproduce trains again cost less than at T=2 and full width
TRAINED_CONFIG = merged(default_config(), {"arch": "tiny", "width": 0.25, "epochs": 2, "timesteps": 5,
                                           "batch_size": 256, "seed": 0, "kernel": "eager"})

STUDY = {
    "name": "tiny_table", "description": "A 3-row study with known values",
    "base": {"dataset": "digits", "arch": "tiny", "epochs": 2},
    "variants": {"A": {}, "B": {"neuron.reset": "soft"}, "C": {"surrogate.schedule": "fixed"}},
    "seeds": [0, 1],
    "table": {"rows": "variant", "metric": "test_acc", "paper": {"A": 90.0, "B": [95.0, 0.5], "C": 80.0}},
}


def record(client: MlflowClient, exp: str, config: dict, trained: dict, code: CodeState, name: str = "A seed=0") -> str:
    """A FINISHED trial run holding `trained`'s epochs (a config trained elsewhere) under `config`."""
    trial = Trial(name, "A", {}, config["seed"], config, config_hash(config))
    run_id = create_trial_run(client, exp, "parent", "repro", trial, code)
    for metrics in trained["epochs"]:
        log_epoch(client, run_id, metrics)
    tags = {**environment_tags(trained["env"]), "data_fingerprint": trained["epochs"][-1]["data_fingerprint"]}
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def write_spec(folder: Path, spec: dict) -> Path:
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def write_store(folder: Path, spec: dict, outcome: dict[str, float | str], uri: str,
                activity: dict[str, dict[str, float]] | None = None) -> str:
    """The (empty) store at `uri` made to hold one invocation of the study `spec`, as study.run records it: a run
    per trial named in `outcome`, FINISHED with that final test_acc, or ended FAILED or KILLED, or left
    RUNNING (0.5), and logging each epoch the metrics `activity` names for it; trials not named never started.
    Returns the store's URI."""
    study = load_study(write_spec(folder, spec))
    client = MlflowClient(uri)
    exp = experiment_id(client, study.name, uri)
    parent = start_parent_run(client, exp, study, CODE, "ray-exp")
    for trial in plan_trials(study):
        fate = outcome.get(trial.name)
        if fate is None:
            continue
        run = create_trial_run(client, exp, parent, study.name, trial, CODE)
        final = fate if isinstance(fate, float) else 0.5
        # epoch 1 has the best test_acc, epoch 2 the best val_acc
        for epoch, acc, val in ((1, final + 0.01, final - 0.05), (2, final, final)):
            log_epoch(client, run, {"epoch": epoch, "test_acc": acc, "val_acc": val, "train_loss": 1 - val,
                                    "beta": 5.0, "alpha": 1.0, **(activity or {}).get(trial.name, {})})
        if fate != "RUNNING":
            client.set_terminated(run, fate if fate in ("FAILED", "KILLED") else "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return uri
