import math

import pytest
import torch

from isnm.surrogate import alpha_for, beta_at, spike


def test_beta_schedule_end_points():
    assert beta_at(0, 10, 0.5, 5.0) == pytest.approx(0.5)
    assert beta_at(10, 10, 0.5, 5.0) == pytest.approx(5.0)


def test_beta_schedule_is_log_linear():
    logs = [math.log(beta_at(e, 8, 0.1, 30.0)) for e in range(9)]
    steps = [b - a for a, b in zip(logs, logs[1:])]
    assert steps == pytest.approx([math.log(300.0) / 8] * 8)


@pytest.mark.parametrize("beta, paper, unit_peak", [(0.25, 4.0, 1.0), (1.0, 1.0, 1.0), (8.0, 1.0, 0.125)])
def test_alpha_rules(beta, paper, unit_peak):
    assert alpha_for(beta, "paper") == pytest.approx(paper)  # eq. 8
    assert alpha_for(beta, "unit_peak") == pytest.approx(unit_peak)
    assert alpha_for(beta, 0.3) == 0.3


def test_unknown_alpha_rule_is_rejected():
    with pytest.raises(ValueError, match="alpha rule"):
        alpha_for(2.0, "steep")


def test_forward_is_heaviside_with_h0_equal_one():
    v = torch.tensor([-1.0, -1e-6, 0.0, 1e-6, 2.0])
    assert spike(v, 1.0, 1.0).tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("alpha, beta", [(2.0, 0.5), (1.0, 5.0), (0.3, 12.0)])
def test_backward_is_eq9_the_derivative_of_the_smooth_function(alpha, beta):
    v = torch.linspace(-3, 3, 101, dtype=torch.float64, requires_grad=True)
    spike(v, alpha, beta).sum().backward()
    ours = v.grad.clone()
    v.grad = None
    (alpha * (torch.tanh(beta * v) + 1.0)).sum().backward()  # eq. 6 with c = 1
    torch.testing.assert_close(ours, v.grad)
