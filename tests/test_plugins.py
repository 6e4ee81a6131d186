"""Your own network and data set: found next to the study file (then on sys.path, then by a name an installed package
registers), hashed by their source into the config hash, and refused in one line at --dry-run when they are not
what they must be, before anything is written."""
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from isnm import ConfigError, PluginError, config_hash, default_config, parse_config
from isnm.activity import ActivityMonitor
from isnm.layers import ISNM, NetSpec, SpikingNet, TimeFolded
from isnm.plugins import check_source, source_digest, source_of
from study.design.load import load_study
from study.design.plan import plan_trials
from study.run.cli import main

NET = '''
from torch import nn
from isnm.layers import ISNM, NetSpec, SpikingNet, TimeFolded


def net(spec: NetSpec, hidden: int = 16) -> SpikingNet:
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(spec.in_channels * spec.image_size ** 2, hidden))
    body = nn.Sequential(ISNM(**spec.neuron), TimeFolded(nn.Linear(hidden, hidden)), ISNM(**spec.neuron))
    return SpikingNet(encoder, body, TimeFolded(nn.Linear(hidden, spec.num_classes)), spec.timesteps)
'''
DATA = '''
import torch
from isnm.data import Images


def load(n: int = 40, classes: int = 3):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 4, 4, generator=g), torch.arange(n) % classes
    return Images(x[:n // 2], y[:n // 2], x[n // 2:], y[n // 2:], num_classes=classes)
'''


def study_with(tmp_path: Path, modules: dict[str, str], **base) -> Path:
    """A study file in a folder of its own, beside `modules` (name -> source), with `base` over a small base."""
    folder = tmp_path / "mine"
    folder.mkdir(exist_ok=True)
    for name, source in modules.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
    study = {"name": "mine", "base": {"epochs": 1, "timesteps": 2, "batch_size": 8, "validation": 0.2, **base},
             "variants": {"A": {}}, "seeds": [0]}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def unique(tmp_path: Path) -> str:
    """A module name no other test imported: modules stay in sys.modules once imported."""
    return "m" + re.sub(r"\W", "", tmp_path.name)


def test_plugin_names_validate_and_built_in_configs_hash_without_the_new_keys():
    defaults = default_config()
    assert config_hash(defaults) == config_hash({k: v for k, v in defaults.items()
                                                 if k not in ("arch_args", "dataset_args", "arch_source", "dataset_source")})
    parse_config({"arch": "my_nets:spiking_mlp", "dataset": "my_data.sets:load", "arch_args": {"hidden": 8}})
    with pytest.raises(ConfigError, match="arch: got 'my nets:x', expected module:callable"):
        parse_config({"arch": "my nets:x"})
    with pytest.raises(ConfigError, match="dataset: got 'mnist', expected 'digits' or 'cifar10' or 'cifar100', a name"):
        parse_config({"dataset": "mnist"})
    with pytest.raises(ConfigError, match="arch_args: .* expected nothing for the built-in arch 'tiny'"):
        parse_config({"arch_args": {"hidden": 8}})


def test_the_module_next_to_the_study_file_is_found_first_and_its_digest_follows_its_source(tmp_path, monkeypatch):
    name = unique(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / f"{name}.py").write_text("def net(spec): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))
    path = study_with(tmp_path, {name: NET}, arch=f"{name}:net")
    found = source_of("arch", f"{name}:net", path.parent)
    assert found.path == str(path.parent / f"{name}.py") and found.reference == f"{name}:net"
    assert source_of("arch", f"{name}:net").path == str(tmp_path / "elsewhere" / f"{name}.py")  # then sys.path
    study = load_study(path)
    [trial] = plan_trials(study)
    assert trial.config["arch_source"] == found.digest == source_digest(path.parent / f"{name}.py")
    (path.parent / f"{name}.py").write_text(textwrap.dedent(NET) + "# an edit\n")
    [edited] = plan_trials(load_study(path))
    assert edited.config_hash != trial.config_hash  # never answered from the cache with the old code's runs
    sys.path.insert(0, str(path.parent))
    try:
        with pytest.raises(PluginError, match=f"its source here .* has digest {edited.config['arch_source']}, the "
                                              f"trial was planned with {trial.config['arch_source']}"):
            check_source("arch", f"{name}:net", trial.config["arch_source"])
    finally:
        sys.path.remove(str(path.parent))


def test_a_package_is_hashed_whole_and_a_registered_name_resolves(tmp_path, monkeypatch):
    name = unique(tmp_path)
    package = tmp_path / "site" / name
    (package / "__pycache__").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent(NET))
    (package / "__pycache__" / "nets.cpython-311.pyc").write_bytes(b"stale")
    dist = tmp_path / "site" / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[isnm_study.archs]\nmlp_{name} = {name}.nets:net\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    parse_config({"arch": f"mlp_{name}"})  # a registered name is a valid arch
    found = source_of("arch", f"mlp_{name}")
    assert found.reference == f"{name}.nets:net" and found.path == str(package)
    before = found.digest
    (package / "__pycache__" / "nets.cpython-311.pyc").write_bytes(b"other")  # caches are not source
    assert source_digest(package) == before
    (package / "helpers.py").write_text("X = 1\n")  # any file of the package is
    assert source_digest(package) != before


BAD_NETS = {
    "no such module": (None, "nowhere:net", "no module named 'nowhere' next to the study file"),
    "no such callable": (NET, "{m}:nothing", "has no callable 'nothing'"),
    "import fails": ("import not_a_module_anywhere\n", "{m}:net", "importing {m} .* failed: ModuleNotFoundError"),
    "wrong signature": ("def net():\n    pass\n", "{m}:net", r"calling it with arch_args \{\} failed: TypeError"),
    "not a SpikingNet": ("from torch import nn\ndef net(spec):\n    return nn.Linear(2, 2)\n", "{m}:net",
                         "returned Linear, expected an isnm.layers.SpikingNet"),
    "no ISNM layer": (NET.replace("ISNM(**spec.neuron)", "nn.Identity()"), "{m}:net", "has no ISNM layer"),
    "output not [batch, classes]": (NET.replace("spec.num_classes)", "spec.num_classes + 1)"), "{m}:net",
                                    r"gave an output of shape \[2, 11\], expected \[2, 10\]"),
}


@pytest.mark.parametrize("case", BAD_NETS, ids=list(BAD_NETS))
def test_a_bad_network_is_one_line_at_the_dry_run_and_writes_nothing(tmp_path, monkeypatch, capsys, case):
    source, arch, words = BAD_NETS[case]
    m = unique(tmp_path)
    path = study_with(tmp_path, {m: source} if source else {}, arch=arch.format(m=m))
    monkeypatch.chdir(tmp_path)
    before = set(tmp_path.rglob("*"))
    assert main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and err.count("\n") == 1 and re.search(words.replace("{m}", m), err), err
    assert {p for p in tmp_path.rglob("*") if "__pycache__" not in p.parts} == before


BAD_DATA = {
    "labels mismatched": ("Images(x[:20], y[:19], x[20:], y[20:], num_classes=3)", "holds 20 images but train_y 19"),
    "float labels": ("Images(x[:20], y[:20].float(), x[20:], y[20:], num_classes=3)",
                     r"train_y: a float32 tensor of shape \[20\], expected integer labels \[N\]"),
    "integer images": ("Images(x[:20].long(), y[:20], x[20:], y[20:], num_classes=3)",
                       "train_x: a int64 tensor .*, expected square float images"),
    "a label out of range": ("Images(x[:20], y[:20] + 1, x[20:], y[20:], num_classes=3)",
                             "train_y: labels from 1 to 3, expected 0 to 2"),
    "too few for the split": ("Images(x[:1], y[:1], x[20:], y[20:], num_classes=3)",
                              "1 training and 20 test images: too few to hold out validation 0.2"),
    "not Images": ("(x, y)", "returned tuple, expected isnm.data.Images"),
    "raises": ("1 / 0", r"calling it with dataset_args \{\} failed: ZeroDivisionError"),
}


@pytest.mark.parametrize("case", BAD_DATA, ids=list(BAD_DATA))
def test_a_bad_data_set_is_one_line_at_the_dry_run(tmp_path, monkeypatch, capsys, case):
    made, words = BAD_DATA[case]
    m = unique(tmp_path)
    source = DATA.replace("    return Images(x[:n // 2], y[:n // 2], x[n // 2:], y[n // 2:], num_classes=classes)",
                          f"    return {made}")
    path = study_with(tmp_path, {m: source}, dataset=f"{m}:load")
    monkeypatch.chdir(tmp_path)
    before = set(tmp_path.rglob("*"))
    assert main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: dataset {m}:load: ") and err.count("\n") == 1 and re.search(words, err), err
    assert {p for p in tmp_path.rglob("*") if "__pycache__" not in p.parts} == before


def test_a_good_plugin_dry_runs_and_its_arguments_are_hashed_and_swept(tmp_path, monkeypatch, capsys):
    m = unique(tmp_path)
    path = study_with(tmp_path, {f"{m}n": NET, f"{m}d": DATA}, arch=f"{m}n:net", dataset=f"{m}d:load",
                      dataset_args={"classes": 4})
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "grid": {"arch_args.hidden": [8, 12]}}))
    monkeypatch.chdir(tmp_path)
    assert main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "A hidden=8 seed=0   arch_args.hidden=8" in out and "A hidden=12 seed=0  arch_args.hidden=12" in out, out
    hashes = {t.config["arch_args"]["hidden"]: t.config_hash for t in plan_trials(load_study(path))}
    assert len(set(hashes.values())) == 2


def test_synops_count_the_spikes_into_a_spiking_mlps_hidden_layer():
    spec = NetSpec(num_classes=3, in_channels=1, image_size=2, timesteps=2)
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 5))
    body = torch.nn.Sequential(ISNM(**spec.neuron), TimeFolded(torch.nn.Linear(5, 6)), ISNM(**spec.neuron))
    model = SpikingNet(encoder, body, TimeFolded(torch.nn.Linear(6, 3)), spec.timesteps).eval()
    images = 3 * torch.randn(7, 1, 2, 2)
    seen = []
    hooks = [body[0].register_forward_hook(lambda m, i, o: seen.append(o)),
             body[2].register_forward_hook(lambda m, i, o: seen.append(o))]
    with torch.no_grad(), ActivityMonitor(model) as activity:
        model(images)
    for hook in hooks:
        hook.remove()
    first, second = seen
    assert first.sum() > 0 and second.sum() > 0
    # each spike into the hidden layer drives its 6 outputs, each into the readout its 3 classes
    assert activity.synops == pytest.approx(float(first.sum() * 6 + second.sum() * 3))
    assert activity.encoder_macs == 7 * 4 * 5  # the encoder's linear layer sees the image, once per image
