import contextlib
import math

import pytest
import torch

import isnm.runtime
from isnm.config import ConfigError
from isnm.config import default_config, parse_config
from isnm.data import batches, load_dataset
from isnm.models import build_model
from isnm.training import TrainingDiverged, recalibrate_batch_norm, train


def test_defaults_are_the_papers_recipe():
    cfg = parse_config({})
    assert (cfg.lr, cfg.weight_decay, cfg.surrogate.alpha) == (1e-3, 1e-4, "paper")


@pytest.mark.parametrize("config, path, words", [
    ({"epocs": 3}, "epocs", "did you mean 'epochs'"),
    ({"epochs": "ten"}, "epochs", "expected an integer"),
    ({"epochs": 0}, "epochs", ">= 1"),
    ({"timesteps": 2.5}, "timesteps", "an integer"),
    ({"neuron": {"tau": 0}}, "neuron.tau", "> 0"),
    ({"neuron": {"reset": "medium"}}, "neuron.reset", "'hard' or 'soft'"),
    ({"surrogate": {"beta_min": 3.0, "beta_max": 2.0}}, "surrogate.beta_max", ">= beta_min"),
    ({"surrogate": {"alpha": "steep"}}, "surrogate.alpha", "'paper' or 'unit_peak' or a number"),
    ({"dataset": "mnist"}, "dataset", "'digits' or 'cifar10' or 'cifar100'"),
    ({"arch": "vgg16"}, "arch", "'tiny' or 'vgg_small' or 'resnet18'"),
])
def test_bad_config_names_the_key(config, path, words):
    with pytest.raises(ConfigError, match=words) as info:
        parse_config(config)
    assert info.value.path == path


@pytest.mark.slow  # training runs of several epochs: make test, not make test-fast
def test_tiny_learns_digits_with_gsg():
    history = []
    final = train({"epochs": 10, "seed": 0}, on_epoch=lambda m, s: history.append(m))
    assert final["test_acc"] >= 0.97
    assert [m["epoch"] for m in history] == list(range(1, 11))
    assert 0 < final["spike_rate"] < 1 and history[0]["beta"] == pytest.approx(0.5)
    assert set(final) == {"epoch", "train_loss", "train_acc", "val_acc", "val_spike_rate", "val_synops", "val_energy",
                          "test_acc", "beta", "alpha",
                          "epoch_seconds", "spike_rate", "spike_rate/body.0", "spike_rate/body.2", "synops", "energy",
                          "energy_ann", "kernel", "data_fingerprint"}
    assert final["kernel"] == "eager" and 0.9 < final["val_acc"] <= 1 and 0 < final["val_spike_rate"] < 1


def test_per_step_schedule_reaches_beta_max_on_the_last_step():
    config = {"epochs": 2, "seed": 0, "batch_size": 512, "surrogate": {"update": "step", "shape": "linear"}}
    history = []
    train(config, on_epoch=lambda m, s: history.append(m["beta"]))
    steps = 3  # 1213 training images (digits less its test and validation splits) in batches of 512
    assert history[-1] == pytest.approx(5.0)  # the last step's beta
    assert history[0] == pytest.approx(0.5 + 4.5 * (steps - 1) / (2 * steps - 1))  # the first epoch's last step


def test_a_learned_beta_trains_per_layer_from_beta_min_and_is_logged():
    config = {"epochs": 3, "seed": 0, "surrogate": {"schedule": "learned", "beta_min": 1.0, "beta_lr": 0.05}}
    history, states = [], []
    final = train(config, on_epoch=lambda m, s: (history.append(m), states.append(s)))
    layers = {k: v for k, v in final.items() if k.startswith("beta/")}
    assert set(layers) == {"beta/body.0", "beta/body.2"} and final["test_acc"] >= 0.9
    assert all(b != pytest.approx(1.0, abs=1e-3) for b in layers.values())  # the gradient moved every layer's beta
    assert final["beta"] == pytest.approx(math.exp(sum(math.log(b) for b in layers.values()) / 2))
    assert final["alpha"] == pytest.approx(max(1 / final["beta"], 1.0))
    # the betas are parameters in the checkpoint, their group at their own rate without weight decay
    assert {k for k in states[-1]["model"] if k.endswith("log_beta")} == {"body.0.log_beta", "body.2.log_beta"}
    groups = states[-1]["optimizer"]["param_groups"]
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(1e-3, 1e-4), (0.05, 0.0)]


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run():
    config = {"epochs": 3, "seed": 1, "batch_size": 128}
    states = {}
    whole = train(config, on_epoch=lambda m, s: states.setdefault(m["epoch"], s))
    resumed_history = []
    resumed = train(config, on_epoch=lambda m, s: resumed_history.append((m, s)), resume_state=states[1])
    assert [m["epoch"] for m, _ in resumed_history] == [2, 3]
    assert {k: v for k, v in resumed.items() if k != "epoch_seconds"} == \
        {k: v for k, v in whole.items() if k != "epoch_seconds"}
    final_state = resumed_history[-1][1]["model"]
    for key, value in states[3]["model"].items():
        assert torch.equal(value, final_state[key]), key


def test_nan_loss_raises_training_diverged(monkeypatch):
    real = isnm.runtime.network

    def poisoned(*args, **kwargs):
        model = real(*args, **kwargs)
        torch.nn.init.constant_(model.head[-1].bias, math.nan)
        return model

    monkeypatch.setattr(isnm.runtime, "network", poisoned)
    with pytest.raises(TrainingDiverged, match="epoch 1, step 1"):
        train({"epochs": 2})


def test_default_config_round_trips():
    assert parse_config(default_config()) == parse_config({})


def test_recalibration_sets_running_statistics_to_the_current_weights():
    torch.manual_seed(0)
    model = build_model("tiny", 10, 1, timesteps=2, image_size=8)
    images = torch.randn(96, 1, 8, 8)
    bn = model.encoder[1]
    bn.momentum = 0.3
    recalibrate_batch_norm(model, images, 32, contextlib.nullcontext())
    current = model.encoder[0](images).detach()
    # the cumulative average of three equal batches: their means' mean, their unbiased variances' mean
    parts = current.split(32)
    torch.testing.assert_close(bn.running_mean, torch.stack([p.mean((0, 2, 3)) for p in parts]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([p.var((0, 2, 3)) for p in parts]).mean(0))
    assert bn.momentum == 0.3 and bn.num_batches_tracked == 3
    body = model.body[2].bn  # the fused BN -> ISNM layer's statistics are recalibrated too
    assert body.num_batches_tracked == 3


@pytest.mark.slow
def test_evaluation_measures_the_network_that_trained():
    # VGG-small on digits after one epoch (21 steps): batch norm's running averages lag weights that still
    # move fast, and the deep spiking network evaluated with them scored 22% on the test set, against 95%
    # with its batches' own statistics (issue 15). Evaluation must see the network that trained.
    states = []
    config = {"arch": "vgg_small", "epochs": 1, "seed": 0, "kernel": "eager", "validation": 0,
              "surrogate": {"schedule": "fixed", "beta": 1.0}}  # wide enough to learn in one epoch
    final = train(config, on_epoch=lambda m, s: states.append(s))
    data = load_dataset("digits", "./data", False, torch.device("cpu"))
    model = build_model("vgg_small", 10, 1, 5, image_size=8)
    model.load_state_dict(states[-1]["model"])
    model.train()  # each batch normalized with its own statistics, as in training
    with torch.no_grad():
        batch_stats = sum((model(x).argmax(1) == y).sum().item() for x, y in batches(data.test_x, data.test_y, 64))
    assert final["test_acc"] > 0.9
    assert abs(final["test_acc"] - batch_stats / len(data.test_y)) < 0.03


def test_a_seed_pairs_two_variants_same_initial_weights_same_batches(monkeypatch):
    """What makes the report's paired test right (study.design.plan.pairing_of): variants of one seed, network and
    data start from identical weights and see identical batches, in the same order."""
    import isnm.training

    seen = []

    def step(model, optimizer, x, y, loss_fn, precision):
        if not seen[-1]["weights"]:  # the weights before the first step
            seen[-1]["weights"] = {k: v.clone() for k, v in model.state_dict().items()}
        seen[-1]["batches"].append((x.clone(), y.clone()))
        return train_step(model, optimizer, x, y, loss_fn, precision)

    train_step = isnm.training.train_step
    monkeypatch.setattr(isnm.training, "train_step", step)
    base = {"dataset": "digits", "arch": "tiny", "width": 0.25, "timesteps": 2, "epochs": 2, "batch_size": 256,
            "kernel": "eager", "bn_recalibration": 0}
    for overrides in ({"seed": 3}, {"seed": 3, "neuron": {"reset": "soft"}, "surrogate": {"schedule": "fixed"}},
                      {"seed": 4}):
        seen.append({"weights": {}, "batches": []})
        train({**base, **overrides})
    hard, soft, other_seed = seen
    for a, b, same in ((hard, soft, True), (hard, other_seed, False)):
        assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"]) == same
        assert len(a["batches"]) == len(b["batches"]) == 2 * 5  # 2 epochs of 5 batches (1,213 images, 256 a batch)
        assert all(torch.equal(xa, xb) and torch.equal(ya, yb)
                   for (xa, ya), (xb, yb) in zip(a["batches"], b["batches"])) == same
