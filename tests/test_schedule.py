import dataclasses
import math

import pytest

from isnm.config import SCHEDULE_SHAPES, ConfigError, parse_config
from isnm.schedule import alpha_for, beta_at, surrogate_at

LOW, HIGH = 0.5, 8.0
# beta at the start, midway and at the end of training, worked out by hand from each shape's definition
ENDS_AND_MIDPOINT = {
    "loglinear": (LOW, 2.0, HIGH),  # eq. 7: the geometric mean midway
    "linear": (LOW, 4.25, HIGH),
    "cosine": (LOW, 4.25, HIGH),  # (1 - cos(pi/2)) / 2 = 1/2 of the way midway
    "step": (LOW, HIGH, HIGH),  # beta_max from the midpoint on
}


def test_every_shape_is_tested():
    assert set(ENDS_AND_MIDPOINT) == set(SCHEDULE_SHAPES)


@pytest.mark.parametrize("shape", SCHEDULE_SHAPES)
def test_shape_at_its_ends_and_midpoint(shape):
    start, middle, end = ENDS_AND_MIDPOINT[shape]
    assert beta_at(0, 10, LOW, HIGH, shape) == pytest.approx(start)
    assert beta_at(5, 10, LOW, HIGH, shape) == pytest.approx(middle)
    assert beta_at(10, 10, LOW, HIGH, shape) == pytest.approx(end)


@pytest.mark.parametrize("shape", SCHEDULE_SHAPES)
def test_shape_never_falls_and_stays_in_range(shape):
    betas = [beta_at(e / 4, 20, LOW, HIGH, shape) for e in range(81)]
    assert all(a <= b for a, b in zip(betas, betas[1:]))
    assert LOW <= min(betas) and max(betas) <= HIGH * (1 + 1e-12)


def test_loglinear_grows_by_the_same_factor_each_epoch():
    logs = [math.log(beta_at(e, 8, 0.1, 30.0)) for e in range(9)]
    steps = [b - a for a, b in zip(logs, logs[1:])]
    assert steps == pytest.approx([math.log(300.0) / 8] * 8)


def test_cosine_is_slow_at_the_ends_fast_in_the_middle():
    quarter = beta_at(2.5, 10, LOW, HIGH, "cosine")
    assert quarter == pytest.approx(LOW + (HIGH - LOW) * (1 - math.cos(math.pi / 4)) / 2)
    first, middle = (beta_at(e + 1, 10, LOW, HIGH, "cosine") - beta_at(e, 10, LOW, HIGH, "cosine") for e in (0, 5))
    assert first < middle


def test_step_switches_at_the_midpoint():
    assert beta_at(4.99, 10, LOW, HIGH, "step") == LOW
    assert beta_at(5, 10, LOW, HIGH, "step") == HIGH


def test_a_single_epoch_trains_at_beta_max():
    for shape in SCHEDULE_SHAPES:
        assert beta_at(0, 0, LOW, HIGH, shape) == HIGH


def test_unknown_shape_is_rejected():
    with pytest.raises(ValueError, match="schedule shape"):
        beta_at(1, 2, LOW, HIGH, "exponential")
    with pytest.raises(ConfigError, match="surrogate.shape"):
        parse_config({"surrogate": {"shape": "exponential"}})


@pytest.mark.parametrize("beta, paper, unit_peak", [(0.25, 4.0, 1.0), (1.0, 1.0, 1.0), (8.0, 1.0, 0.125)])
def test_alpha_rules(beta, paper, unit_peak):
    assert alpha_for(beta, "paper") == pytest.approx(paper)  # eq. 8
    assert alpha_for(beta, "unit_peak") == pytest.approx(unit_peak)
    assert alpha_for(beta, 0.3) == 0.3


def test_unknown_alpha_rule_is_rejected():
    with pytest.raises(ValueError, match="alpha rule"):
        alpha_for(2.0, "steep")


def test_gradual_schedule_spans_beta_min_to_beta_max():
    cfg = parse_config({"surrogate": {"beta_min": 0.2, "beta_max": 20.0}}).surrogate
    assert surrogate_at(cfg, 0, 5) == pytest.approx((5.0, 0.2))  # eq. 8: alpha = 1/beta below 1
    assert surrogate_at(cfg, 4, 5) == pytest.approx((1.0, 20.0))
    fixed = dataclasses.replace(cfg, schedule="fixed", beta=3.0)
    assert surrogate_at(fixed, 0, 5) == surrogate_at(fixed, 4, 5) == (1.0, 3.0)


def test_the_paper_schedule_is_bit_for_bit_eq_7():
    # the defaults must compute what runs made before `shape` and `update` existed computed
    cfg = parse_config({}).surrogate
    for epoch in range(6):
        frac = epoch / 5
        eq7 = math.exp(math.log(cfg.beta_min) + (math.log(cfg.beta_max) - math.log(cfg.beta_min)) * frac)
        assert surrogate_at(cfg, epoch, 6)[1] == eq7


@pytest.mark.parametrize("shape", SCHEDULE_SHAPES)
def test_per_step_updates_span_the_whole_run(shape):
    cfg = parse_config({"surrogate": {"update": "step", "shape": shape, "beta_min": LOW, "beta_max": HIGH}}).surrogate
    epochs, steps = 3, 7
    betas = [surrogate_at(cfg, e, epochs, s, steps)[1] for e in range(epochs) for s in range(steps)]
    assert betas[0] == pytest.approx(LOW) and betas[-1] == pytest.approx(HIGH)
    assert all(a <= b for a, b in zip(betas, betas[1:]))
    per_epoch = dataclasses.replace(cfg, update="epoch")
    assert betas[steps] != surrogate_at(per_epoch, 1, epochs)[1] or shape == "step"  # not held for an epoch
    assert len(set(betas)) > epochs or shape == "step"
