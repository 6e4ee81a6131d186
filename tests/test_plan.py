from pathlib import Path

import yaml

from isnm.config import config_hash
from study.run.cli import main
from study.design.load import load_study
from study.design.plan import plan_trials, search_base, trial_table

ROOT = Path(__file__).resolve().parent.parent


def test_ablation_is_four_variants_by_three_seeds_with_distinct_hashes():
    trials = plan_trials(load_study(ROOT / "search_spaces/ablation.yaml"))
    assert len(trials) == 12 and len({t.config_hash for t in trials}) == 12
    assert [t.name for t in trials[:4]] == ["ISNM seed=0", "ISNM seed=1", "ISNM seed=2", "ISNM+Soft Reset seed=0"]
    gsg_soft = trials[-1]
    assert gsg_soft.config["neuron"]["reset"] == "soft" and gsg_soft.config["surrogate"]["schedule"] == "gradual"
    assert gsg_soft.seed == 2 and gsg_soft.config["seed"] == 2


def test_grid_crosses_variants_and_seeds():
    trials = plan_trials(load_study(ROOT / "search_spaces/timesteps.yaml"))
    assert len(trials) == 2 * 2 * 2 * 3
    assert trials[0].name == "CIFAR-10 arch=vgg_small timesteps=1 seed=0"
    assert trials[0].overrides == {"dataset": "cifar10", "epochs": 200, "arch": "vgg_small", "timesteps": 1}
    assert {t.config["epochs"] for t in trials if t.config["dataset"] == "cifar100"} == {300}


def test_hash_ignores_where_data_lives_but_not_what_is_trained():
    config = plan_trials(load_study(ROOT / "search_spaces/ablation.yaml"))[0].config
    assert config_hash({**config, "data_dir": "/elsewhere", "download": False}) == config_hash(config)
    assert config_hash({**config, "epochs": 199}) != config_hash(config)


def test_search_trials_start_from_the_first_seed(tmp_path):
    data = yaml.safe_load((ROOT / "search_spaces/beta_search.yaml").read_text())
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({**data, "seeds": [7, 3]}))  # not the default seed 0
    assert search_base(load_study(path))["seed"] == 7


def test_dry_run_prints_the_trial_table(capsys):
    assert main([str(ROOT / "search_spaces/ablation.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ablation: 12 trials") and "ISNM+GSG+Soft Reset seed=2" in out
    assert out.count("surrogate.schedule=gradual") == 6


def test_trial_table_columns():
    trials = plan_trials(load_study(ROOT / "search_spaces/ablation.yaml"))
    header, first = trial_table(trials).splitlines()[:2]
    assert header.split() == ["trial", "overrides", "seed", "config_hash"]
    assert first.split() == ["ISNM", "seed=0", "-", "0", trials[0].config_hash]


def test_an_option_added_later_keeps_old_hashes_at_its_default():
    config = plan_trials(load_study(ROOT / "search_spaces/ablation.yaml", "demo"))[0].config
    assert config_hash(config) == "d1f6f908d094"  # ISNM seed=0 in reports/ablation.runs.csv, before `function`
    for key, value in (("function", "arctan"), ("shape", "cosine"), ("update", "step")):
        changed = {**config, "surrogate": {**config["surrogate"], key: value}}
        assert config_hash(changed) != config_hash(config)


def test_surrogate_study_is_every_function_fixed_and_gradual_over_three_seeds():
    from isnm.config import SURROGATES
    study = load_study(ROOT / "search_spaces/surrogates.yaml")
    trials = plan_trials(study)
    assert len(trials) == len(SURROGATES) * 2 * 3
    cells = {(t.config["surrogate"]["function"], t.config["surrogate"]["schedule"]) for t in trials}
    assert cells == {(f, s) for f in SURROGATES for s in ("fixed", "gradual")}
    first = trials[0].config
    assert (first["dataset"], first["arch"], first["epochs"], first["timesteps"]) == ("cifar10", "vgg_small", 200, 5)
    table = study.spec.table
    assert (table.row_keys, table.column_keys, table.extra) == (
        ["surrogate.function"], ["surrogate.schedule"], ["spike_rate", "energy"])
    demo = plan_trials(load_study(ROOT / "search_spaces/surrogates.yaml", "demo"))
    assert {t.config["dataset"] for t in demo} == {"digits"} and len({t.seed for t in demo}) == 3
