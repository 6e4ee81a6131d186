"""Study files: every shipped one validates; every user mistake is one clear line."""
from pathlib import Path

import pytest
import yaml

from study.errors import StudyError
from study.design.load import load_study
from tests.study_files import BAD, GOOD, shipped_pbt_schedule, with_change

SHIPPED = sorted(Path(__file__).resolve().parent.parent.glob("search_spaces/*.yaml"))


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def test_four_paper_studies_ship():
    assert {p.stem for p in SHIPPED} >= {"ablation", "timesteps", "comparison", "beta_search"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
@pytest.mark.parametrize("profile", [None, "demo"])
def test_shipped_study_validates(path, profile):
    study = load_study(path, profile, shipped_pbt_schedule)
    if profile == "demo":
        assert study.base["dataset"] == "digits" or all(
            v.get("dataset") == "digits" for v in study.variants.values())
        assert study.spec.resources.gpu == 0
    else:
        assert study.base["dataset"].startswith("cifar")


def test_the_demo_ablation_is_deep_enough_for_the_surrogate_to_matter():
    from isnm.models import build_model
    from isnm.neuron import ISNM

    config = load_study(SHIPPED[[p.stem for p in SHIPPED].index("ablation")], "demo").base
    model = build_model(config["arch"], 10, 1, image_size=8, width=config["width"])
    assert sum(isinstance(m, ISNM) for m in model.modules()) >= 5


def test_nested_and_dotted_overrides_plan_the_same_trial(tmp_path):
    from study.design.plan import plan_trials

    nested = plan_trials(load_study(write(tmp_path, with_change(variants={"A": {"neuron": {"reset": "soft"}}}))))
    dotted = plan_trials(load_study(write(tmp_path, with_change(variants={"A": {"neuron.reset": "soft"}}))))
    assert [t.config_hash for t in nested] == [t.config_hash for t in dotted]
    assert nested[0].config["neuron"]["reset"] == "soft"


def test_profile_overlays_base_and_replaces_the_trial_set(tmp_path):
    data = with_change(profiles={"quick": {"base": {"epochs": 1}, "variants": {"only": {}}, "seeds": [3]}})
    study = load_study(write(tmp_path, data), "quick")
    assert study.base["epochs"] == 1 and study.base["arch"] == "tiny"
    assert list(study.variants) == ["only"] and study.spec.seeds == [3]


@pytest.mark.parametrize("name, data, words", BAD, ids=[b[0] for b in BAD])
def test_bad_study_is_one_clear_line(tmp_path, name, data, words):
    from study.design.plan import plan_trials

    path = write(tmp_path, GOOD if data == "PROFILE" else data)
    with pytest.raises(StudyError, match=words) as info:
        plan_trials(load_study(path, "fast" if data == "PROFILE" else None))
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message


def test_profile_argument_must_be_a_safe_name(tmp_path):
    with pytest.raises(StudyError, match="profiles: got '../../etc', expected a profile name"):
        load_study(write(tmp_path, GOOD), "../../etc")


def test_relative_data_dir_is_made_absolute_on_the_driver_and_not_hashed(tmp_path, monkeypatch):
    from study.design.plan import plan_trials

    monkeypatch.chdir(tmp_path)
    trials = plan_trials(load_study(write(tmp_path, with_change(base__data_dir="./cifar"))))
    assert {t.config["data_dir"] for t in trials} == {str(tmp_path / "cifar")}
    elsewhere = plan_trials(load_study(write(tmp_path, with_change(base__data_dir="/srv/data"))))
    assert [t.config_hash for t in trials] == [t.config_hash for t in elsewhere]


def test_the_beta_search_ranks_on_val_acc_and_asha_late_in_the_schedule():
    from study.run.tuner import tune_config

    study = load_study(Path(__file__).resolve().parent.parent / "search_spaces/beta_search.yaml")
    tune = tune_config(study, None)
    assert tune.metric == tune.search_alg.metric == "val_acc"  # ASHA takes TuneConfig's metric
    assert study.spec.search.scheduler.asha.grace_period >= 0.75 * study.base["epochs"]


def test_missing_file(tmp_path):
    with pytest.raises(StudyError, match="no such study file"):
        load_study(tmp_path / "nope.yaml")


def test_a_yaml_merge_key_may_be_overridden_where_a_repeated_key_may_not(tmp_path):
    """`base: {<<: *demo, epochs: 4}` (a profile reusing another's settings) is YAML's own override, not a key twice."""
    path = tmp_path / "merge.yaml"
    path.write_text("name: t\nbase: &b {dataset: digits, arch: tiny, epochs: 2}\nprofiles:\n"
                    "  short: {base: {<<: *b, epochs: 1}}\n")
    assert load_study(path, "short").base["epochs"] == 1 and load_study(path).base["epochs"] == 2
    path.write_text("name: t\nbase: {<<: {epochs: 3}, epochs: 1, epochs: 2}\n")
    with pytest.raises(StudyError, match="key 'epochs' appears twice"):
        load_study(path)
